-- Rotation and the webhook's outbox (SPEC §18), as in migrations/sqlite.
ALTER TABLE tokens ADD COLUMN previous_hash TEXT;
ALTER TABLE tokens ADD COLUMN previous_lookup TEXT;
ALTER TABLE tokens ADD COLUMN previous_sealed_pat BYTEA;
ALTER TABLE tokens ADD COLUMN grace_until BIGINT;
CREATE INDEX tokens_previous_lookup ON tokens (previous_lookup) WHERE previous_lookup IS NOT NULL;
CREATE INDEX tokens_valid_until ON tokens (valid_until) WHERE valid_until IS NOT NULL;

CREATE TABLE events (
    id             TEXT PRIMARY KEY,
    event          TEXT NOT NULL,
    body           TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    attempts       BIGINT NOT NULL DEFAULT 0,
    next_at        BIGINT NOT NULL,
    claimed_until  BIGINT,
    delivered_at   BIGINT,
    abandoned_at   BIGINT,
    once           TEXT UNIQUE
);
CREATE INDEX events_due ON events (next_at) WHERE delivered_at IS NULL AND abandoned_at IS NULL;
