//! Token values: generation from the OS CSPRNG, validation of custom values,
//! the lookup prefix, argon2id hashing and the SHA-256 digest that keys the
//! verified cache (SPEC §4).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::distr::{Alphanumeric, SampleString};
use rand::rngs::OsRng;
use rand::{RngCore, TryRngCore};
use sha2::{Digest, Sha256};

use crate::config::Argon2Cost;

/// Every gateway token starts with this, valid or not.
pub const TOKEN_PREFIX: &str = "tgw_";
/// Characters of the value stored (indexed) to find candidate rows.
pub const LOOKUP_LEN: usize = 12;
/// Random base62 characters of a generated token.
const GENERATED_LEN: usize = 40;
const MIN_CUSTOM_LEN: usize = 32;
const MAX_CUSTOM_LEN: usize = 256;

/// SHA-256 of a token value: what the verified cache is keyed by, so the
/// cache never holds a usable secret.
pub type SecretDigest = [u8; 32];

pub fn digest(secret: &str) -> SecretDigest {
    Sha256::digest(secret.as_bytes()).into()
}

/// A new token value: `tgw_` and 40 base62 characters from the OS CSPRNG.
pub fn generate() -> String {
    let mut rng = OsRng.unwrap_err();
    format!("{TOKEN_PREFIX}{}", Alphanumeric.sample_string(&mut rng, GENERATED_LEN))
}

/// Checks a custom token value; the error says what is wrong (never the value).
pub fn validate_custom(value: &str) -> Result<(), String> {
    if !value.starts_with(TOKEN_PREFIX) {
        return Err(format!("a custom token must begin with `{TOKEN_PREFIX}`"));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a custom token may contain only visible ASCII characters, no whitespace".into());
    }
    if !(MIN_CUSTOM_LEN..=MAX_CUSTOM_LEN).contains(&value.len()) {
        return Err(format!(
            "a custom token must be {MIN_CUSTOM_LEN} to {MAX_CUSTOM_LEN} characters long"
        ));
    }
    Ok(())
}

/// Whether a presented secret could be a token at all; anything else is
/// refused without touching the store.
pub fn is_plausible(secret: &str) -> bool {
    validate_custom(secret).is_ok()
}

/// The indexed prefix of a value.
pub fn lookup_of(value: &str) -> &str {
    &value[..LOOKUP_LEN.min(value.len())]
}

/// argon2id with the configured cost.
pub fn hasher(cost: Argon2Cost) -> Argon2<'static> {
    let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
        .expect("argon2 cost is validated with the configuration");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The PHC string of a value. CPU-heavy: call it off the async threads.
pub fn hash(hasher: &Argon2<'_>, value: &str) -> Result<String, argon2::password_hash::Error> {
    let mut salt = [0u8; 16];
    OsRng.unwrap_err().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt)?;
    Ok(hasher.hash_password(value.as_bytes(), &salt)?.to_string())
}

/// Whether `value` matches a stored PHC string (whose own parameters apply).
/// CPU-heavy: call it off the async threads. A malformed hash never matches.
pub fn verify(value: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|hash| Argon2::default().verify_password(value.as_bytes(), &hash).is_ok())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_values_are_prefixed_base62_and_distinct() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(a.len(), TOKEN_PREFIX.len() + GENERATED_LEN);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert!(a[TOKEN_PREFIX.len()..].bytes().all(|c| c.is_ascii_alphanumeric()));
        assert!(is_plausible(&a));
    }

    #[test]
    fn custom_values_are_validated() {
        assert!(validate_custom(&format!("tgw_{}", "x".repeat(28))).is_ok());
        assert!(
            validate_custom(&format!("tgw_{}", "x".repeat(27)))
                .unwrap_err()
                .contains("32 to 256")
        );
        assert!(validate_custom(&format!("tgw_{}", "x".repeat(253))).is_err());
        assert!(validate_custom(&"x".repeat(40)).unwrap_err().contains("tgw_"));
        assert!(validate_custom(&format!("tgw_{} {}", "x".repeat(20), "y".repeat(20))).is_err());
        assert!(validate_custom(&format!("tgw_{}é", "x".repeat(30))).is_err());
    }

    #[test]
    fn hashes_are_argon2id_and_verify() {
        let value = generate();
        let phc = hash(&hasher(Argon2Cost::CHEAP), &value).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        assert!(!phc.contains(&value));
        assert!(verify(&value, &phc));
        assert!(!verify(&generate(), &phc));
        assert!(!verify(&value, "not a phc string"));
    }

    #[test]
    fn lookup_is_the_first_twelve_characters() {
        assert_eq!(lookup_of("tgw_abcdefghijk"), "tgw_abcdefgh");
        assert_eq!(lookup_of("tgw_"), "tgw_");
    }
}
