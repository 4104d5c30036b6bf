-- Web page sessions (SPEC §15), as in migrations/sqlite: only the SHA-256 of
-- the session id is stored.
CREATE TABLE sessions (
    id_hash       TEXT PRIMARY KEY,
    user_name     TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    last_seen_at  BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL
);
CREATE INDEX sessions_expires ON sessions (expires_at);
