-- The audit log (SPEC §6): one row per token-authenticated request and per
-- management action. Query strings are never stored (they can hold secrets).
CREATE TABLE audit (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           BIGINT NOT NULL,
    kind         TEXT NOT NULL,      -- 'request' or 'management'
    token_id     TEXT,
    token_label  TEXT,
    user_name    TEXT,               -- who the request acted as / who acted
    client_ip    TEXT,
    method       TEXT,
    path         TEXT,
    status       BIGINT,
    decision     TEXT NOT NULL,      -- 'allow' or 'deny'; the action for management rows
    reason       TEXT,
    duration_ms  BIGINT,
    detail       TEXT
);
CREATE INDEX audit_at ON audit (at);
CREATE INDEX audit_token ON audit (token_id, at);
CREATE INDEX audit_user ON audit (tokengate_fold(user_name), at);
