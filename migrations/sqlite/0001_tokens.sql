-- Tokens (SPEC §4). Values are never stored: only the argon2id PHC string and
-- the first 12 characters (`lookup`) that find candidate rows.
CREATE TABLE tokens (
    id            TEXT PRIMARY KEY NOT NULL,
    label         TEXT NOT NULL,
    user_name     TEXT,
    author        TEXT NOT NULL,
    limit_to      TEXT NOT NULL DEFAULT '',
    ip            TEXT NOT NULL DEFAULT '',
    created_at    INTEGER NOT NULL,
    valid_until   INTEGER,
    token_hash    TEXT NOT NULL,
    lookup        TEXT NOT NULL,
    counter       INTEGER NOT NULL DEFAULT 0,
    last_used_at  INTEGER,
    last_ip       TEXT
);
CREATE INDEX tokens_lookup ON tokens (lookup);
CREATE INDEX tokens_user ON tokens (user_name COLLATE NOCASE);

-- Every deletion, so that each gateway process drops the deleted token from
-- its verified cache: processes poll for rows after the last seq they saw.
CREATE TABLE revocations (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    token_id    TEXT NOT NULL,
    revoked_at  INTEGER NOT NULL
);
