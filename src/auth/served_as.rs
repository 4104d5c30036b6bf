//! Every answer to a token request is served as the token's user (SPEC §19).
//!
//! Confluence's authentication layer (Seraph) names on every response the
//! user it served it as, in `X-AUSERNAME` (`anonymous` for nobody). A dead
//! personal access token, or an identity header Confluence does not honour,
//! is served as anonymous (CONFSERVER-98199): the script would read wrong
//! data without an error. An answer that names anyone but the token's user
//! is withheld: the caller drops it, body unread.

use std::sync::atomic::{AtomicI64, Ordering};

use hyper::header::{HeaderName, HeaderValue};
use prometheus_client::metrics::counter::Counter;

use super::ActiveToken;
use crate::clock::EpochMs;
use crate::config::ForwardAs;
use crate::confluence::served_as_other;
use crate::error::{GatewayError, Reason};

/// How often a Confluence that ignores the identity header is logged at error.
const LOG_EVERY_MS: EpochMs = 60_000;

/// The check, with what it reports to.
pub struct IdentityCheck {
    mode: ForwardAs,
    /// The identity header's name, for the message.
    identity_header: HeaderName,
    /// `tokengate_identity_mismatches_total{mode}` of this mode.
    mismatches: Counter,
    /// When an ignored identity header was last logged at error.
    last_logged: AtomicI64,
}

impl IdentityCheck {
    pub fn new(mode: ForwardAs, identity_header: HeaderName, mismatches: Counter) -> Self {
        IdentityCheck {
            mode,
            identity_header,
            mismatches,
            last_logged: AtomicI64::new(EpochMs::MIN),
        }
    }

    /// Whether an answer whose `X-AUSERNAME` values are `served` may be
    /// passed on to a request of `token` that Confluence should have served
    /// as `user`. An answer without one is passed on (a proxy in between
    /// may strip it); one with several must name the user in each. In PAT
    /// mode a mismatch marks the token's PAT rejected, so its next requests
    /// are refused without being forwarded.
    pub fn check(
        &self,
        served: &[HeaderValue],
        user: &str,
        token: &ActiveToken,
        now: EpochMs,
    ) -> Result<(), GatewayError> {
        let Some(served) = served_as_other(served, user) else {
            return Ok(());
        };
        self.mismatches.inc();
        let nobody = served.eq_ignore_ascii_case("anonymous");
        match self.mode {
            ForwardAs::Pat => {
                tracing::warn!(token.id = %token.id, served_as = %served, "Confluence served a request of the token as someone else; its personal access token counts as rejected");
                if let Some(credential) = &token.upstream {
                    credential.reject((!nobody).then(|| served.clone()), now);
                }
                Err(GatewayError::new(
                    Reason::UpstreamCredentialRejected,
                    format!(
                        "Confluence served this request as {served}, not as {user}: it no longer accepts the personal access token of token '{}'; create a new token",
                        token.label
                    ),
                ))
            }
            ForwardAs::Header => {
                let last = self.last_logged.load(Ordering::Relaxed);
                if now.saturating_sub(last) >= LOG_EVERY_MS
                    && self
                        .last_logged
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    tracing::error!(
                        served_as = %served,
                        identity_header = %self.identity_header,
                        "Confluence does not honour the identity header: token requests are answered 502 until its header authenticator works, or forward_as = \"pat\" is set (logged once a minute)"
                    );
                }
                Err(GatewayError::new(
                    Reason::UpstreamIdentityIgnored,
                    format!(
                        "Confluence served this request as {served}, not as {user}: it does not honour the identity header {}; the admin must install or configure its header authenticator, or set forward_as = \"pat\"",
                        self.identity_header
                    ),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::rate_limit::RateLimits;
    use super::*;
    use crate::clock::ManualClock;

    fn token() -> ActiveToken {
        let record = crate::store::test_record("t", Some("alice"), 0);
        ActiveToken::from_record(
            &record,
            Default::default(),
            &RateLimits::local(ManualClock::starting_now()),
        )
    }

    fn served(name: &'static str) -> Vec<HeaderValue> {
        vec![HeaderValue::from_static(name)]
    }

    #[test]
    fn in_header_mode_an_answer_served_as_someone_else_is_a_502_that_says_what_to_do() {
        let mismatches = Counter::default();
        let check = IdentityCheck::new(
            ForwardAs::Header,
            HeaderName::from_static("x-forwarded-user"),
            mismatches.clone(),
        );
        let token = token();
        assert_eq!(check.check(&served("Alice"), "alice", &token, 0), Ok(()));
        assert_eq!(check.check(&[], "alice", &token, 0), Ok(()), "no header: passed on");
        let error = check.check(&served("anonymous"), "alice", &token, 1_000).unwrap_err();
        assert_eq!(error.reason, Reason::UpstreamIdentityIgnored);
        assert!(
            error.message.contains("as anonymous, not as alice"),
            "{}",
            error.message
        );
        assert!(
            error.message.contains("identity header x-forwarded-user"),
            "{}",
            error.message
        );
        let mut twice = served("alice");
        twice.push(HeaderValue::from_static("anonymous"));
        assert!(
            check.check(&twice, "alice", &token, 1_500).is_err(),
            "one of two names someone else"
        );
        let error = check.check(&served("bob"), "alice", &token, 2_000).unwrap_err();
        assert!(error.message.contains("as bob, not as alice"), "{}", error.message);
        assert_eq!(mismatches.get(), 3);
        // Logged at error once a minute: the first mismatch set the time.
        assert_eq!(check.last_logged.load(Ordering::Relaxed), 1_000);
        check
            .check(&served("bob"), "alice", &token, 1_000 + LOG_EVERY_MS)
            .unwrap_err();
        assert_eq!(check.last_logged.load(Ordering::Relaxed), 1_000 + LOG_EVERY_MS);
    }

    #[test]
    fn a_served_name_is_cut_before_it_is_repeated() {
        let check = IdentityCheck::new(ForwardAs::Header, HeaderName::from_static("x-u"), Counter::default());
        let long: &'static str = Box::leak("b".repeat(5_000).into_boxed_str());
        let error = check.check(&served(long), "alice", &token(), 0).unwrap_err();
        assert!(error.message.len() < 600, "{}", error.message.len());
    }
}
