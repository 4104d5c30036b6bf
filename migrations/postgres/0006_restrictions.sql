-- Editable restrictions (SPEC §16), as in migrations/sqlite.
ALTER TABLE tokens ADD COLUMN rate_limit TEXT;
ALTER TABLE tokens ADD COLUMN enforce BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE revocations ADD COLUMN kind TEXT NOT NULL DEFAULT 'delete';
