//! The per-connection credentials memo (SPEC §11): a keep-alive connection
//! that sends the same `Authorization` value again skips decoding it, the
//! SHA-256 of its secret and the verified-cache lookup, and reuses the token
//! the last request of the connection verified. Never the checks: the
//! token's revocation, update and grace flags are read on every use (a
//! deletion or an update takes effect on the very next request), and
//! expiry, user, scope, IP list, rate limit, rules and spaces run as always.

use std::sync::{Arc, Mutex};

use hyper::HeaderMap;
use hyper::header::{AUTHORIZATION, HeaderValue};

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

/// A memo hit: the token and how it was presented.
pub struct Recalled {
    pub token: Arc<ActiveToken>,
    pub scheme: Scheme,
    basic_user: Option<Box<str>>,
}

impl Recalled {
    pub fn basic_user(&self) -> Option<&str> {
        self.basic_user.as_deref()
    }
}

/// One connection's memo. The lock is the connection's own (HTTP/2 streams
/// of one connection share it), held for a comparison or a swap.
#[derive(Default)]
pub struct CredentialMemo(Mutex<Option<Remembered>>);

impl CredentialMemo {
    /// The token the connection's last token request verified, when
    /// `headers` carry exactly the same single `Authorization` value and
    /// the token is neither revoked, updated since, past its grace period,
    /// nor remembered for longer than the verified cache would keep it.
    pub fn recall(&self, headers: &HeaderMap, now: EpochMs) -> Option<Recalled> {
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let (Some(presented), None) = (values.next(), values.next()) else {
            return None;
        };
        let memo = self.lock();
        let remembered = memo.as_ref()?;
        let usable = remembered.authorization.as_bytes() == presented.as_bytes()
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

    /// Remembers the token a request verified with `authorization`.
    pub fn remember(
        &self,
        authorization: &HeaderValue,
        token: &Arc<ActiveToken>,
        scheme: Scheme,
        basic_user: Option<&str>,
        until: EpochMs,
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
            until,
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Remembered>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(AUTHORIZATION, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn only_the_same_single_header_is_recalled_and_only_while_the_cache_would_keep_it() {
        let memo = CredentialMemo::default();
        let basic = HeaderValue::from_static("Basic YWxpY2U6dGd3X3g=");
        assert!(memo.recall(&headers(&["Basic YWxpY2U6dGd3X3g="]), 0).is_none(), "empty");
        memo.remember(&basic, &token(), Scheme::Basic, Some("alice"), 1_000);
        let hit = memo
            .recall(&headers(&["Basic YWxpY2U6dGd3X3g="]), 999)
            .expect("the same header");
        assert_eq!((hit.scheme, hit.basic_user()), (Scheme::Basic, Some("alice")));
        for other in [
            &["Basic YWxpY2U6dGd3X3k="][..],
            &["basic YWxpY2U6dGd3X3g="],
            &[],
            &["Basic YWxpY2U6dGd3X3g=", "Basic YWxpY2U6dGd3X3g="],
        ] {
            assert!(memo.recall(&headers(other), 0).is_none(), "{other:?}");
        }
        assert!(
            memo.recall(&headers(&["Basic YWxpY2U6dGd3X3g="]), 1_000).is_none(),
            "expired"
        );
    }

    #[test]
    fn a_secret_past_its_grace_is_not_recalled() {
        let memo = CredentialMemo::default();
        let mut copy = ActiveToken::from_record(
            &crate::store::test_record("t", Some("alice"), 0),
            Arc::default(),
            &RateLimits::local(ManualClock::starting_now()),
        );
        copy.secret = SecretRole::Previous { until: 500 };
        let bearer = HeaderValue::from_static("Bearer tgw_x");
        memo.remember(&bearer, &Arc::new(copy), Scheme::Bearer, None, 10_000);
        assert!(memo.recall(&headers(&["Bearer tgw_x"]), 499).is_some());
        assert!(memo.recall(&headers(&["Bearer tgw_x"]), 500).is_none());
    }
}
