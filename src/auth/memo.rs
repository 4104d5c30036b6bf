//! The per-connection credentials memo (SPEC §11): a keep-alive connection
//! that sends the same `Authorization` value again skips decoding it, the
//! SHA-256 of its secret and the verified-cache lookup, and reuses the token
//! the last request of the connection verified. Never the checks: the
//! token's revocation, update and grace flags are read on every use (a
//! deletion or an update takes effect on the very next request), and
//! expiry, user, scope, IP list, rate limit, rules and spaces run as always.

use std::sync::{Arc, Mutex};

use hyper::header::HeaderValue;

use super::credentials::Scheme;
use super::verifier::ActiveToken;
use crate::clock::EpochMs;

/// What the last token request of a connection presented and verified.
struct Remembered {
    authorization: HeaderValue,
    token: Arc<ActiveToken>,
    scheme: Scheme,
    basic_user: Option<Box<str>>,
    /// After this the token is looked up again, as the verified cache's
    /// entries expire (`verify_cache_ttl_s`).
    until: EpochMs,
}

/// A memo hit: the token, and how the header that matched presented it.
#[derive(Debug)]
pub struct Recalled {
    pub token: Arc<ActiveToken>,
    pub scheme: Scheme,
    basic_user: Option<Box<str>>,
}

impl Recalled {
    /// The Basic user name typed next to the token, if it came as Basic.
    pub fn basic_user(&self) -> Option<&str> {
        self.basic_user.as_deref()
    }
}

/// One connection's memo. The lock is the connection's own (HTTP/2 streams
/// of one connection share it), held for a comparison or a swap.
pub struct CredentialMemo {
    last: Mutex<Option<Remembered>>,
    /// How long a token is remembered: as long as the verified cache keeps it.
    ttl_ms: EpochMs,
}

impl CredentialMemo {
    pub fn new(ttl_ms: EpochMs) -> Self {
        CredentialMemo {
            last: Mutex::new(None),
            ttl_ms,
        }
    }

    /// The token the connection's last token request verified, when
    /// `authorization` is exactly the same value and the token is neither
    /// revoked, updated since, past its grace period, nor remembered for
    /// longer than the verified cache would keep it.
    pub fn recall(&self, authorization: &HeaderValue, now: EpochMs) -> Option<Recalled> {
        let memo = self.lock();
        let remembered = memo.as_ref()?;
        let usable = remembered.authorization.as_bytes() == authorization.as_bytes()
            && now < remembered.until
            && !remembered.token.is_revoked()
            && !remembered.token.is_stale()
            && !remembered.token.grace_is_over(now);
        usable.then(|| Recalled {
            token: remembered.token.clone(),
            scheme: remembered.scheme,
            basic_user: remembered.basic_user.clone(),
        })
    }

    /// Remembers the token a request verified with `authorization` at
    /// `now`, and how it presented it.
    pub fn remember(
        &self,
        authorization: &HeaderValue,
        token: &Arc<ActiveToken>,
        scheme: Scheme,
        basic_user: Option<&str>,
        now: EpochMs,
    ) {
        let mut memo = self.lock();
        if memo
            .as_ref()
            .is_some_and(|r| Arc::ptr_eq(&r.token, token) && r.authorization == authorization)
        {
            return;
        }
        *memo = Some(Remembered {
            authorization: authorization.clone(),
            token: token.clone(),
            scheme,
            basic_user: basic_user.map(Box::from),
            until: now.saturating_add(self.ttl_ms),
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Remembered>> {
        self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::SecretRole;
    use crate::auth::rate_limit::RateLimits;
    use crate::clock::ManualClock;

    fn token() -> Arc<ActiveToken> {
        let record = crate::store::test_record("t", Some("alice"), 0);
        let limits = RateLimits::local(ManualClock::starting_now());
        Arc::new(ActiveToken::from_record(&record, Arc::default(), &limits))
    }

    #[test]
    fn only_the_same_header_value_is_recalled_and_only_while_the_cache_would_keep_it() {
        let memo = CredentialMemo::new(1_000);
        let basic = HeaderValue::from_static("Basic YWxpY2U6dGd3X3g=");
        assert!(memo.recall(&basic, 0).is_none(), "empty");
        let remembered = token();
        memo.remember(&basic, &remembered, Scheme::Basic, Some("alice"), 0);
        let hit = memo.recall(&basic, 999).expect("the same header");
        assert!(Arc::ptr_eq(&hit.token, &remembered));
        assert_eq!((hit.scheme, hit.basic_user()), (Scheme::Basic, Some("alice")));
        for other in [
            "Basic YWxpY2U6dGd3X3k=",
            "basic YWxpY2U6dGd3X3g=",
            "Basic YWxpY2U6dGd3X3g= ",
        ] {
            assert!(memo.recall(&HeaderValue::from_static(other), 0).is_none(), "{other:?}");
        }
        assert!(memo.recall(&basic, 1_000).is_none(), "expired");
    }

    #[test]
    fn a_secret_past_its_grace_is_not_recalled() {
        let memo = CredentialMemo::new(10_000);
        let mut copy = ActiveToken::from_record(
            &crate::store::test_record("t", Some("alice"), 0),
            Arc::default(),
            &RateLimits::local(ManualClock::starting_now()),
        );
        copy.secret = SecretRole::Previous { until: 500 };
        let bearer = HeaderValue::from_static("Bearer tgw_x");
        let copy = Arc::new(copy);
        memo.remember(&bearer, &copy, Scheme::Bearer, None, 0);
        assert!(memo.recall(&bearer, 499).is_some());
        assert!(memo.recall(&bearer, 500).is_none());
    }
}
