-- The audit log (SPEC §6): one row per token-authenticated request and per
-- management action. Query strings are never stored (they can hold secrets).
CREATE TABLE audit (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           INTEGER NOT NULL,
    kind         TEXT NOT NULL,      -- 'request' or 'management'
    token_id     TEXT,
    token_label  TEXT,
    user_name    TEXT,               -- who the request acted as / who acted
    client_ip    TEXT,
    method       TEXT,
    path         TEXT,
    status       INTEGER,
    decision     TEXT,               -- 'allow' or 'deny'; the action for management rows
    reason       TEXT,
    duration_ms  INTEGER,
    detail       TEXT
);
CREATE INDEX audit_at ON audit (at);
CREATE INDEX audit_token ON audit (token_id, at);
CREATE INDEX audit_user ON audit (user_name COLLATE NOCASE, at);
