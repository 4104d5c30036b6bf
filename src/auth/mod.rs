//! Authentication: decoding credentials (pure), token values and hashes, and
//! the [`Verifier`] that turns a presented secret into an [`ActiveToken`]
//! through the verified cache, the store and argon2.

pub mod credentials;
pub mod throttle;
pub mod token;
mod verifier;

pub use throttle::FailureThrottle;
pub use verifier::{ActiveToken, Verifier, VerifyError};
