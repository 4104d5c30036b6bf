-- A token's Confluence personal access token (SPEC §13, forward_as = "pat"):
-- only sealed (version | salt | nonce | XChaCha20-Poly1305 ciphertext, under a
-- key derived from the gateway token), never in clear; and the id Confluence
-- gave a PAT the gateway minted, so that its owner can revoke it.
ALTER TABLE tokens ADD COLUMN sealed_pat BLOB;
ALTER TABLE tokens ADD COLUMN upstream_token_id TEXT;
