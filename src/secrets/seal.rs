//! Sealing a user's Confluence personal access token (PAT) under the
//! gateway token that carries it (SPEC §13).
//!
//! The key is derived with HKDF-SHA256 from the gateway token's secret
//! (and the contents of `seal_key_file`, when one is configured), a random
//! salt per token, and the info `tokengate upstream pat v1`; the PAT is
//! encrypted with XChaCha20-Poly1305 under a random nonce, with the token id
//! as associated data. The store holds only the sealed bytes:
//!
//! ```text
//! version (1) | salt (16) | nonce (24) | ciphertext and tag
//! ```
//!
//! So a copy of the store yields no PAT without the gateway token, and with
//! a seal key not even with it; a sealed PAT moved to another row does not
//! open. The crypto is the RustCrypto crates'; nothing here is hand-made
//! but the envelope.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hyper::header::HeaderValue;
use rand::TryRngCore;
use rand::rngs::OsRng;
use sha2::Sha256;
use zeroize::Zeroizing;

const VERSION: u8 = 1;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = 1 + SALT_LEN + NONCE_LEN;
const INFO: &[u8] = b"tokengate upstream pat v1";

/// The contents of `seal_key_file`: a key kept outside the store, mixed into
/// every seal. Zeroed when the last copy is dropped; never printed.
#[derive(Clone)]
pub struct SealKey(Arc<Zeroizing<Vec<u8>>>);

impl SealKey {
    pub fn new(bytes: Vec<u8>) -> Self {
        SealKey(Arc::new(Zeroizing::new(bytes)))
    }
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(<redacted>)")
    }
}

/// A personal access token in clear: zeroed when dropped, never printed.
pub struct Pat(Zeroizing<String>);

impl Pat {
    pub fn new(value: String) -> Self {
        Pat(Zeroizing::new(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `Bearer <PAT>` as a header value whose bytes are zeroed once no
    /// request holds it any more. `None` when the PAT is not a valid header
    /// value.
    pub fn bearer(&self) -> Option<HeaderValue> {
        let mut value = Zeroizing::new(Vec::with_capacity(7 + self.0.len()));
        value.extend_from_slice(b"Bearer ");
        value.extend_from_slice(self.0.as_bytes());
        let mut header = HeaderValue::from_maybe_shared(Bytes::from_owner(ZeroizedBytes(value))).ok()?;
        header.set_sensitive(true);
        Some(header)
    }
}

/// A zeroizing buffer that `Bytes` can share.
struct ZeroizedBytes(Zeroizing<Vec<u8>>);

impl AsRef<[u8]> for ZeroizedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Pat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pat(<redacted>)")
    }
}

/// Why a sealed PAT does not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the sealed personal access token is malformed")]
    Malformed,
    #[error("the sealed personal access token has an unknown version {0}")]
    Version(u8),
    /// A wrong secret, seal key or token id, or bytes that were changed.
    #[error("the personal access token does not unseal (wrong seal key, or the store was tampered with)")]
    Open,
}

/// Seals `pat` for the token `token_id` whose value is `secret`.
pub fn seal(pat: &Pat, secret: &str, token_id: &str, seal_key: Option<&SealKey>) -> Vec<u8> {
    let mut rng = OsRng.unwrap_err();
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    rand::RngCore::fill_bytes(&mut rng, &mut salt);
    rand::RngCore::fill_bytes(&mut rng, &mut nonce);
    let payload = Payload {
        msg: pat.as_str().as_bytes(),
        aad: token_id.as_bytes(),
    };
    let ciphertext = cipher(secret, &salt, seal_key)
        .encrypt(XNonce::from_slice(&nonce), payload)
        .expect("XChaCha20-Poly1305 encrypts any message of this size");
    let mut sealed = Vec::with_capacity(HEADER_LEN + ciphertext.len());
    sealed.push(VERSION);
    sealed.extend_from_slice(&salt);
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&ciphertext);
    sealed
}

/// Opens what [`seal`] made, with the same secret, token id and seal key.
pub fn unseal(sealed: &[u8], secret: &str, token_id: &str, seal_key: Option<&SealKey>) -> Result<Pat, SealError> {
    let (&version, rest) = sealed.split_first().ok_or(SealError::Malformed)?;
    if version != VERSION {
        return Err(SealError::Version(version));
    }
    if rest.len() < SALT_LEN + NONCE_LEN {
        return Err(SealError::Malformed);
    }
    let (salt, rest) = rest.split_at(SALT_LEN);
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let payload = Payload {
        msg: ciphertext,
        aad: token_id.as_bytes(),
    };
    let plain = Zeroizing::new(
        cipher(secret, salt, seal_key)
            .decrypt(XNonce::from_slice(nonce), payload)
            .map_err(|_| SealError::Open)?,
    );
    let text = std::str::from_utf8(&plain).map_err(|_| SealError::Malformed)?;
    Ok(Pat::new(text.to_owned()))
}

/// The cipher under the key HKDF-SHA256 derives from the secret, the seal
/// key and the salt. The input keying material is length-prefixed, so that
/// no secret and seal key can be shifted into another pair.
fn cipher(secret: &str, salt: &[u8], seal_key: Option<&SealKey>) -> XChaCha20Poly1305 {
    let seal_key: &[u8] = seal_key.map_or(&[], |key| key.0.as_slice());
    let mut ikm = Zeroizing::new(Vec::with_capacity(16 + secret.len() + seal_key.len()));
    for part in [secret.as_bytes(), seal_key] {
        ikm.extend_from_slice(&(part.len() as u64).to_be_bytes());
        ikm.extend_from_slice(part);
    }
    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(salt), &ikm)
        .expand(INFO, key.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    XChaCha20Poly1305::new(key.as_ref().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "tgw_0123456789abcdefghijklmnopqrstuvwxyzAB";
    const PAT: &str = "NjQ2MDc1NDk0OTQ6ZtvzaA1oq9m1h3qp3TKB0zZcBtdP";

    fn sealed(key: Option<&SealKey>) -> Vec<u8> {
        seal(&Pat::new(PAT.into()), SECRET, "token-1", key)
    }

    #[test]
    fn the_bearer_value_is_sensitive_and_exact() {
        let value = Pat::new("NjQ2MDc1NDk0OTQ6Zt".into()).bearer().unwrap();
        assert_eq!(value, "Bearer NjQ2MDc1NDk0OTQ6Zt");
        assert!(value.is_sensitive());
        assert!(Pat::new("line\nbreak".into()).bearer().is_none());
    }

    #[test]
    fn a_sealed_pat_opens_with_the_same_secret_id_and_key_only() {
        let key = SealKey::new(b"kept outside the store".to_vec());
        for key in [None, Some(&key)] {
            let bytes = sealed(key);
            assert_eq!(unseal(&bytes, SECRET, "token-1", key).unwrap().as_str(), PAT);
            assert_eq!(bytes.len(), HEADER_LEN + PAT.len() + 16);
            assert!(
                !bytes.windows(8).any(|w| PAT.as_bytes().windows(8).any(|p| p == w)),
                "no run of the PAT in clear"
            );
        }
    }

    #[test]
    fn seals_are_randomised() {
        assert_ne!(sealed(None), sealed(None));
    }

    #[test]
    fn the_wrong_secret_token_id_or_seal_key_does_not_open() {
        let key = SealKey::new(b"kept outside the store".to_vec());
        let other_key = SealKey::new(b"another key".to_vec());
        let bytes = sealed(Some(&key));
        let other_secret = "tgw_0123456789abcdefghijklmnopqrstuvwxyzAC";
        assert_eq!(
            unseal(&bytes, other_secret, "token-1", Some(&key)).unwrap_err(),
            SealError::Open
        );
        assert_eq!(
            unseal(&bytes, SECRET, "token-2", Some(&key)).unwrap_err(),
            SealError::Open,
            "a swapped row"
        );
        assert_eq!(
            unseal(&bytes, SECRET, "token-1", Some(&other_key)).unwrap_err(),
            SealError::Open
        );
        assert_eq!(
            unseal(&bytes, SECRET, "token-1", None).unwrap_err(),
            SealError::Open,
            "a missing seal key"
        );
        let unkeyed = sealed(None);
        assert_eq!(
            unseal(&unkeyed, SECRET, "token-1", Some(&key)).unwrap_err(),
            SealError::Open
        );
    }

    #[test]
    fn tampered_bytes_do_not_open() {
        let bytes = sealed(None);
        for at in [1, 1 + SALT_LEN, HEADER_LEN, bytes.len() - 1] {
            let mut tampered = bytes.clone();
            tampered[at] ^= 0x01;
            assert_eq!(
                unseal(&tampered, SECRET, "token-1", None).unwrap_err(),
                SealError::Open,
                "byte {at}"
            );
        }
        assert_eq!(
            unseal(&bytes[..bytes.len() - 1], SECRET, "token-1", None).unwrap_err(),
            SealError::Open
        );
        assert_eq!(
            unseal(&bytes[..HEADER_LEN - 1], SECRET, "token-1", None).unwrap_err(),
            SealError::Malformed
        );
        assert_eq!(unseal(&[], SECRET, "token-1", None).unwrap_err(), SealError::Malformed);
        let mut future = bytes.clone();
        future[0] = 2;
        assert_eq!(
            unseal(&future, SECRET, "token-1", None).unwrap_err(),
            SealError::Version(2)
        );
    }

    #[test]
    fn a_secret_and_seal_key_cannot_be_shifted_into_each_other() {
        let key = SealKey::new(b"Bkey".to_vec());
        let bytes = seal(&Pat::new(PAT.into()), "tgw_A", "t", Some(&key));
        let shifted = SealKey::new(b"key".to_vec());
        assert_eq!(
            unseal(&bytes, "tgw_AB", "t", Some(&shifted)).unwrap_err(),
            SealError::Open
        );
    }

    #[test]
    fn nothing_secret_is_printed() {
        let key = SealKey::new(b"kept outside the store".to_vec());
        assert_eq!(format!("{key:?}"), "SealKey(<redacted>)");
        assert_eq!(format!("{:?}", Pat::new(PAT.into())), "Pat(<redacted>)");
    }
}
