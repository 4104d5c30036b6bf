-- Space confinement (SPEC §17), as in migrations/sqlite.
ALTER TABLE tokens ADD COLUMN spaces TEXT;
