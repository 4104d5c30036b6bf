//! Confluence's verdicts on passwords (SPEC §5): the gateway asks
//! `GET /rest/api/user/current` with the caller's own Basic header and keeps
//! the answer 60 s, keyed by a SHA-256 of the header, never the header itself.

use std::sync::Arc;
use std::time::Duration;

use hyper::header::HeaderValue;
use moka::future::Cache;
use sha2::{Digest, Sha256};

use crate::confluence::Confluence;
use crate::error::GatewayError;

/// How long Confluence's verdict on a password is kept (SPEC §5).
pub const PASSWORD_VERDICT_TTL: Duration = Duration::from_secs(60);
const PASSWORD_VERDICT_CAPACITY: u64 = 10_000;

/// What Confluence said about one `Authorization` value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// The user Confluence named, which matched the Basic user name.
    Accepted(String),
    Rejected,
}

/// Confluence's verdicts on passwords, kept [`PASSWORD_VERDICT_TTL`].
/// Failures to ask (Confluence down) are not verdicts and are not kept.
pub struct PasswordVerdicts {
    cache: Cache<[u8; 32], Verdict>,
}

impl Default for PasswordVerdicts {
    fn default() -> Self {
        PasswordVerdicts {
            cache: Cache::builder()
                .max_capacity(PASSWORD_VERDICT_CAPACITY)
                .time_to_live(PASSWORD_VERDICT_TTL)
                .build(),
        }
    }
}

impl PasswordVerdicts {
    /// The user, as Confluence spells it, when a kept verdict accepted this
    /// `Authorization` value. No call to Confluence.
    pub async fn accepted(&self, authorization: &HeaderValue) -> Option<String> {
        match self.cache.get(&key(authorization)).await? {
            Verdict::Accepted(name) => Some(name),
            Verdict::Rejected => None,
        }
    }

    /// The user Confluence accepts `authorization` for, when it names the same
    /// user as the Basic credentials (`user`); `None` when it does not.
    /// Concurrent first asks share one call.
    pub async fn check(
        &self,
        upstream: &Confluence,
        authorization: &HeaderValue,
        user: &str,
    ) -> Result<Option<String>, GatewayError> {
        let ask = async {
            let verdict = match upstream.current_user(authorization).await? {
                Some(name) if name.eq_ignore_ascii_case(user) => Verdict::Accepted(name),
                _ => Verdict::Rejected,
            };
            Ok::<_, GatewayError>(verdict)
        };
        match self.cache.try_get_with(key(authorization), ask).await {
            Ok(Verdict::Accepted(name)) => Ok(Some(name)),
            Ok(Verdict::Rejected) => Ok(None),
            Err(shared) => Err(Arc::unwrap_or_clone(shared)),
        }
    }
}

fn key(authorization: &HeaderValue) -> [u8; 32] {
    Sha256::digest(authorization.as_bytes()).into()
}
