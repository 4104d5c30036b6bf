-- Web page sessions (SPEC §15). The cookie holds a random session id; only
-- its SHA-256 is stored, so a copy of the store opens no session. Any
-- process (replica) can check a session.
CREATE TABLE sessions (
    id_hash       TEXT PRIMARY KEY NOT NULL,
    user_name     TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    last_seen_at  INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL
);
CREATE INDEX sessions_expires ON sessions (expires_at);
