-- Editable restrictions (SPEC §16): a rate limit ("N/min", NULL for none)
-- and report-only rules (enforce = 0). The revocations table now carries
-- every change other processes must apply: 'delete', or 'update' (the
-- token's restrictions changed: re-read it).
ALTER TABLE tokens ADD COLUMN rate_limit TEXT;
ALTER TABLE tokens ADD COLUMN enforce INTEGER NOT NULL DEFAULT 1;
ALTER TABLE revocations ADD COLUMN kind TEXT NOT NULL DEFAULT 'delete';
