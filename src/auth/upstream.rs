//! A token's Confluence credential with `forward_as = "pat"` (SPEC §13):
//! the user's personal access token, unsealed when the token is verified,
//! as the `Authorization` value its forwarded requests carry, and
//! Confluence's latest word on whether it still acts as the token's user.
//!
//! The plaintext lives only here, beside the verified-cache entry, as the
//! header value [`crate::secrets::Pat::bearer`] builds over a buffer that is
//! zeroed when the last copy of it is dropped; every forwarded request
//! shares that buffer.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, Ordering};

use hyper::header::HeaderValue;

use crate::clock::EpochMs;
use crate::confluence::Confluence;
use crate::error::{GatewayError, Reason};

/// How often Confluence is asked again about a PAT in use (SPEC §13: at least every 60 s).
pub const RECHECK_MS: EpochMs = 60_000;

/// What Confluence said about a PAT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatVerdict {
    /// It authenticates the token's user.
    Accepted,
    /// Confluence does not accept it (revoked, expired): it would serve the
    /// request as anonymous.
    Rejected,
    /// It authenticates somebody else, named.
    OtherUser(String),
}

const ACCEPTED: u8 = 0;
const REJECTED: u8 = 1;
const OTHER_USER: u8 = 2;

/// A verified token's personal access token and Confluence's verdict on it.
pub struct UpstreamCredential {
    /// `Bearer <PAT>`, over a buffer zeroed when the last copy goes.
    authorization: HeaderValue,
    verdict: AtomicU8,
    /// Whom the PAT acts as when it is not the token's user (rarely read).
    other_user: Mutex<Option<String>>,
    checked_at: AtomicI64,
    /// A re-check is under way.
    checking: AtomicBool,
    /// Counts the rejections learnt from answers (SPEC §19), and the count
    /// when the re-check under way began: a re-check that began before a
    /// rejection may not overturn it.
    rejections: AtomicU64,
    checking_since: AtomicU64,
}

impl std::fmt::Debug for UpstreamCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamCredential")
            .field("verdict", &self.verdict.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl UpstreamCredential {
    pub fn new(authorization: HeaderValue, verdict: PatVerdict, now: EpochMs) -> Self {
        let credential = UpstreamCredential {
            authorization,
            verdict: AtomicU8::new(ACCEPTED),
            other_user: Mutex::new(None),
            checked_at: AtomicI64::new(now),
            checking: AtomicBool::new(false),
            rejections: AtomicU64::new(0),
            checking_since: AtomicU64::new(0),
        };
        credential.record(verdict, now);
        credential
    }

    /// The `Authorization` value a forwarded request carries, or the refusal
    /// of a PAT Confluence no longer takes as the token's user.
    pub fn authorization(&self, label: &str) -> Result<&HeaderValue, GatewayError> {
        let refuse = |message: String| Err(GatewayError::new(Reason::UpstreamCredentialRejected, message));
        match self.verdict.load(Ordering::Acquire) {
            ACCEPTED => Ok(&self.authorization),
            REJECTED => refuse(format!(
                "Confluence no longer accepts the personal access token of token '{label}': create a new token"
            )),
            _ => {
                let other = self.other_user.lock().expect("verdict lock poisoned").clone();
                let other = other.unwrap_or_else(|| "another user".to_owned());
                refuse(format!(
                    "the personal access token of token '{label}' acts as {other}, not as the token's user: create a new token"
                ))
            }
        }
    }

    /// The value to ask Confluence with (for a re-check).
    pub fn authorization_to_check(&self) -> &HeaderValue {
        &self.authorization
    }

    /// Whether Confluence should be asked again, claiming the re-check when
    /// so (only one runs at a time).
    pub fn claim_recheck(&self, now: EpochMs) -> bool {
        let claimed = now - self.checked_at.load(Ordering::Relaxed) >= RECHECK_MS
            && self
                .checking
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok();
        if claimed {
            self.checking_since
                .store(self.rejections.load(Ordering::Acquire), Ordering::Release);
        }
        claimed
    }

    /// Takes Confluence's new verdict (`None`: Confluence could not be
    /// asked; the last verdict stands and it is asked again later).
    pub fn finish_recheck(&self, verdict: Option<PatVerdict>, now: EpochMs) {
        let overtaken = self.rejections.load(Ordering::Acquire) != self.checking_since.load(Ordering::Acquire);
        if let Some(verdict) = verdict
            && !overtaken
        {
            self.record(verdict, now);
        }
        self.checking.store(false, Ordering::Release);
    }

    /// Counts the PAT as rejected at once: Confluence served a request sent
    /// with it as nobody (`None`) or as someone else (SPEC §19). Its next
    /// requests are refused until a check says it works again.
    pub fn reject(&self, served_as: Option<String>, now: EpochMs) {
        self.rejections.fetch_add(1, Ordering::AcqRel);
        self.record(served_as.map_or(PatVerdict::Rejected, PatVerdict::OtherUser), now);
    }

    fn record(&self, verdict: PatVerdict, now: EpochMs) {
        let code = match verdict {
            PatVerdict::Accepted => ACCEPTED,
            PatVerdict::Rejected => REJECTED,
            PatVerdict::OtherUser(name) => {
                *self.other_user.lock().expect("verdict lock poisoned") = Some(name);
                OTHER_USER
            }
        };
        self.verdict.store(code, Ordering::Release);
        self.checked_at.store(now, Ordering::Relaxed);
    }
}

/// Asks Confluence whom `authorization` (a `Bearer <PAT>`) acts as, and
/// whether that is `user`. Unreachable or failing is `Err` (502, 504), never
/// a verdict.
pub async fn ask(upstream: &Confluence, authorization: &HeaderValue, user: &str) -> Result<PatVerdict, GatewayError> {
    Ok(match upstream.current_user(authorization).await? {
        Some(name) if name.eq_ignore_ascii_case(user) => PatVerdict::Accepted,
        Some(name) => PatVerdict::OtherUser(name),
        None => PatVerdict::Rejected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::Pat;

    fn credential(verdict: PatVerdict) -> UpstreamCredential {
        let authorization = Pat::new("NjQ2MDc1NDk0OTQ6Zt".into()).bearer().unwrap();
        UpstreamCredential::new(authorization, verdict, 1_000)
    }

    #[test]
    fn only_an_accepted_pat_is_forwarded() {
        assert!(credential(PatVerdict::Accepted).authorization("ci").is_ok());
        let rejected = credential(PatVerdict::Rejected).authorization("ci").unwrap_err();
        assert_eq!(rejected.reason, Reason::UpstreamCredentialRejected);
        assert!(rejected.message.contains("no longer accepts"), "{}", rejected.message);
        let other = credential(PatVerdict::OtherUser("bob".into()))
            .authorization("ci")
            .unwrap_err();
        assert!(other.message.contains("acts as bob"), "{}", other.message);
    }

    #[test]
    fn rechecks_come_every_minute_one_at_a_time_and_can_revoke() {
        let credential = credential(PatVerdict::Accepted);
        assert!(!credential.claim_recheck(1_000 + RECHECK_MS - 1));
        assert!(credential.claim_recheck(1_000 + RECHECK_MS));
        assert!(!credential.claim_recheck(1_000 + RECHECK_MS), "one at a time");
        credential.finish_recheck(None, 70_000);
        assert!(credential.claim_recheck(70_000), "an unanswered check is tried again");
        credential.finish_recheck(Some(PatVerdict::Rejected), 70_000);
        assert!(credential.authorization("ci").is_err());
        assert!(!credential.claim_recheck(70_001));
        assert!(credential.claim_recheck(70_000 + RECHECK_MS));
        credential.finish_recheck(Some(PatVerdict::Accepted), 130_000);
        assert!(credential.authorization("ci").is_ok(), "a verdict can come back");
    }

    #[test]
    fn a_recheck_that_began_before_a_rejection_cannot_overturn_it() {
        let credential = credential(PatVerdict::Accepted);
        assert!(credential.claim_recheck(1_000 + RECHECK_MS));
        // While Confluence is asked, an answer is served as anonymous.
        credential.reject(None, 1_000 + RECHECK_MS + 5);
        credential.finish_recheck(Some(PatVerdict::Accepted), 1_000 + RECHECK_MS + 10);
        assert!(
            credential.authorization("ci").is_err(),
            "the older check's word does not count"
        );
        // The next check, begun after the rejection, does.
        let later = 1_000 + 2 * RECHECK_MS + 5;
        assert!(credential.claim_recheck(later));
        credential.finish_recheck(Some(PatVerdict::Accepted), later);
        assert!(credential.authorization("ci").is_ok());
    }
}
