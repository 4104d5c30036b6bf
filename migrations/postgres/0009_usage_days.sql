-- Calls per day (SPEC §15.1), as in migrations/sqlite.
CREATE TABLE usage_days (
    token_id  TEXT NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
    day       BIGINT NOT NULL,
    calls     BIGINT NOT NULL DEFAULT 0,
    refused   BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (token_id, day)
);
CREATE INDEX usage_days_day ON usage_days (day);
