-- Space confinement (SPEC §17): the space keys a token may touch, joined
-- with ','; NULL for no confinement.
ALTER TABLE tokens ADD COLUMN spaces TEXT;
