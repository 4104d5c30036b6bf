//! The gateway's secret material, apart from what it is used for: token
//! values (made, hashed with argon2id, verified) in [`token`], the argon2
//! work off the async threads in [`hasher`], and a user's Confluence
//! personal access token sealed under its token's secret in [`seal`].
//! Authentication verifies with it; the token service makes it.

pub mod hasher;
pub mod seal;
pub mod token;

pub use hasher::{HashError, Hasher};
pub use seal::{Pat, SealKey};
pub use token::TOKEN_PREFIX;
