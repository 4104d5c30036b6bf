-- Tokens (SPEC §4), as in migrations/sqlite. Times are epoch milliseconds.
-- Values are never stored: only the argon2id PHC string and the first 12
-- characters (`lookup`) that find candidate rows.

-- ASCII-only case folding, the same as SQLite's NOCASE and lower(): user
-- names compare ASCII case-insensitively (SPEC §2.7) whatever the database
-- locale, and both backends filter alike.
CREATE FUNCTION tokengate_fold(text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT translate($1, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz') $$;

CREATE TABLE tokens (
    id            TEXT PRIMARY KEY,
    label         TEXT NOT NULL,
    user_name     TEXT,
    author        TEXT NOT NULL,
    limit_to      TEXT NOT NULL DEFAULT '',
    ip            TEXT NOT NULL DEFAULT '',
    created_at    BIGINT NOT NULL,
    valid_until   BIGINT,
    token_hash    TEXT NOT NULL,
    lookup        TEXT NOT NULL,
    counter       BIGINT NOT NULL DEFAULT 0,
    last_used_at  BIGINT,
    last_ip       TEXT
);
CREATE INDEX tokens_lookup ON tokens (lookup);
CREATE INDEX tokens_user ON tokens (tokengate_fold(user_name));

-- Every deletion, so that each gateway process drops the deleted token from
-- its verified cache: processes poll for rows after the last seq they saw
-- (the fallback to the NOTIFY each deletion also sends). Deleting
-- transactions lock this table first, so seq order is commit order and a
-- poller never skips a row that commits late.
CREATE TABLE revocations (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_id    TEXT NOT NULL,
    revoked_at  BIGINT NOT NULL
);
