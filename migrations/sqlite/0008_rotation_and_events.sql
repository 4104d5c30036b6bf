-- Rotation (SPEC §18): the secret a rotation replaced, accepted until
-- grace_until (epoch ms), with its lookup prefix and the PAT sealed under it.
ALTER TABLE tokens ADD COLUMN previous_hash TEXT;
ALTER TABLE tokens ADD COLUMN previous_lookup TEXT;
ALTER TABLE tokens ADD COLUMN previous_sealed_pat BLOB;
ALTER TABLE tokens ADD COLUMN grace_until INTEGER;
CREATE INDEX tokens_previous_lookup ON tokens (previous_lookup) WHERE previous_lookup IS NOT NULL;
CREATE INDEX tokens_valid_until ON tokens (valid_until) WHERE valid_until IS NOT NULL;

-- The webhook's outbox (SPEC §18): an event stays until the webhook answers
-- 2xx (delivered_at) or 24 h of retries end (abandoned_at). A sender claims
-- due events by setting claimed_until; a claim that outlives its sender
-- lapses. `once` makes an event that may be raised again (an expiry
-- threshold, a throttled client) raise only one row, whichever process
-- raises it.
CREATE TABLE events (
    id             TEXT PRIMARY KEY,
    event          TEXT NOT NULL,
    body           TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    next_at        INTEGER NOT NULL,
    claimed_until  INTEGER,
    delivered_at   INTEGER,
    abandoned_at   INTEGER,
    once           TEXT UNIQUE
);
CREATE INDEX events_due ON events (next_at) WHERE delivered_at IS NULL AND abandoned_at IS NULL;
