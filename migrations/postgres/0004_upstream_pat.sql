-- A token's Confluence personal access token (SPEC §13, forward_as = "pat"),
-- as in migrations/sqlite: only sealed, and the id of a PAT the gateway minted.
ALTER TABLE tokens ADD COLUMN sealed_pat BYTEA;
ALTER TABLE tokens ADD COLUMN upstream_token_id TEXT;
