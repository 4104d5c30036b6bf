-- Calls per day (SPEC §15.1): per token and UTC day (days since the epoch),
-- the calls forwarded and the calls refused, added by the usage flusher.
-- Days older than the retention are purged; a token's days go with it.
CREATE TABLE usage_days (
    token_id  TEXT NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
    day       INTEGER NOT NULL,
    calls     INTEGER NOT NULL DEFAULT 0,
    refused   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (token_id, day)
);
CREATE INDEX usage_days_day ON usage_days (day);
