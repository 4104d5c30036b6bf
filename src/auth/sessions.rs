//! Web page sessions (SPEC §15): a random id in the `tokengate_session`
//! cookie, its SHA-256 in the store (so a session works through any replica
//! and a copy of the store opens none), a lifetime and an idle timeout, and
//! a CSRF token bound to the session.
//!
//! A session authenticates only the management API and the page: the
//! pipeline never reads it for a forwarded request, and the proxy removes
//! the cookie from everything it forwards.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::TryRngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::clock::{Clock, EpochMs};
use crate::store::{SessionRecord, StoreError, TokenStore};

pub use crate::cookies::SESSION_COOKIE;
/// The header the page sends its CSRF token in.
pub const CSRF_HEADER: &str = "x-tokengate-csrf";
/// How stale `last_seen_at` may get before a use writes it again: the
/// idle timeout is that precise, and a busy page costs one write a minute.
const TOUCH_AFTER_MS: EpochMs = 60_000;

/// A session just started: the cookie value (shown to the browser once,
/// stored nowhere) and its CSRF token.
pub struct NewSession {
    pub id: String,
    pub csrf: String,
    pub expires_at: EpochMs,
}

/// A live session. Its `Debug` shows the user only.
#[derive(Clone)]
pub struct Session {
    pub user: String,
    pub csrf: String,
    id_hash: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

pub struct Sessions {
    store: Arc<dyn TokenStore>,
    clock: Arc<dyn Clock>,
    lifetime_ms: EpochMs,
    idle_ms: EpochMs,
}

impl Sessions {
    pub fn new(store: Arc<dyn TokenStore>, clock: Arc<dyn Clock>, lifetime: Duration, idle: Duration) -> Self {
        let ms = |d: Duration| EpochMs::try_from(d.as_millis()).unwrap_or(EpochMs::MAX);
        Sessions {
            store,
            clock,
            lifetime_ms: ms(lifetime),
            idle_ms: ms(idle),
        }
    }

    /// How long a new session's cookie lives, in seconds.
    pub fn cookie_max_age(&self) -> i64 {
        self.lifetime_ms / 1000
    }

    /// Starts a session for `user` (as Confluence spells the name): a new id
    /// at every login.
    pub async fn start(&self, user: &str) -> Result<NewSession, StoreError> {
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut OsRng.unwrap_err(), &mut bytes);
        let id = URL_SAFE_NO_PAD.encode(bytes);
        let now = self.clock.now_ms();
        let record = SessionRecord {
            id_hash: id_hash(&id),
            user: user.to_owned(),
            created_at: now,
            last_seen_at: now,
            expires_at: now.saturating_add(self.lifetime_ms),
        };
        self.store.insert_session(&record).await?;
        Ok(NewSession {
            csrf: csrf_token(&id),
            expires_at: record.expires_at,
            id,
        })
    }

    /// The live session a cookie value names: not expired, not idle too
    /// long. A session past either is deleted on the way.
    pub async fn resolve(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let hash = id_hash(id);
        let Some(record) = self.store.session(&hash).await? else {
            return Ok(None);
        };
        let now = self.clock.now_ms();
        if now >= record.expires_at || now - record.last_seen_at >= self.idle_ms {
            self.store.delete_session(&hash).await?;
            return Ok(None);
        }
        if now - record.last_seen_at >= TOUCH_AFTER_MS {
            self.store.touch_session(&hash, now).await?;
        }
        Ok(Some(Session {
            user: record.user,
            csrf: csrf_token(id),
            id_hash: hash,
        }))
    }

    /// Ends a session (log out); it is refused from then on, by every replica.
    pub async fn end(&self, session: &Session) -> Result<(), StoreError> {
        self.store.delete_session(&session.id_hash).await.map(|_| ())
    }

    /// Forgets sessions that can no longer be used.
    pub async fn purge(&self) -> Result<u64, StoreError> {
        let now = self.clock.now_ms();
        self.store.purge_sessions(now, now - self.idle_ms).await
    }
}

impl Session {
    /// Whether `presented` (the CSRF header) is this session's token.
    pub fn csrf_matches(&self, presented: Option<&str>) -> bool {
        presented.is_some_and(|token| bool::from(token.as_bytes().ct_eq(self.csrf.as_bytes())))
    }
}

/// The store's key for a session: hex SHA-256 of its id.
fn id_hash(id: &str) -> String {
    Sha256::digest(id.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The CSRF token bound to a session id: readable by the page (unlike the
/// HttpOnly cookie), useless without the cookie, and no way back to the id.
fn csrf_token(id: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(format!("tokengate csrf v1:{id}").as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::SqliteStore;

    async fn sessions() -> (Sessions, Arc<ManualClock>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/s.db", dir.path().display());
        let store = Arc::new(SqliteStore::open(&url).await.unwrap());
        let clock = ManualClock::starting_now();
        let sessions = Sessions::new(
            store,
            clock.clone(),
            Duration::from_secs(8 * 3600),
            Duration::from_secs(30 * 60),
        );
        (sessions, clock, dir)
    }

    #[tokio::test]
    async fn a_session_lives_until_its_lifetime_or_its_idle_timeout() {
        let (sessions, clock, _dir) = sessions().await;
        let new = sessions.start("alice").await.unwrap();
        assert_eq!(new.id.len(), 43);
        let session = sessions.resolve(&new.id).await.unwrap().unwrap();
        assert_eq!(
            (session.user.as_str(), session.csrf.as_str()),
            ("alice", new.csrf.as_str())
        );
        // Used every 20 minutes: alive until its 8 hours are over.
        for _ in 0..23 {
            clock.advance_ms(20 * 60_000);
            assert!(sessions.resolve(&new.id).await.unwrap().is_some());
        }
        clock.advance_ms(20 * 60_000);
        assert!(sessions.resolve(&new.id).await.unwrap().is_none(), "past its lifetime");
        let idle = sessions.start("alice").await.unwrap();
        clock.advance_ms(30 * 60_000);
        assert!(sessions.resolve(&idle.id).await.unwrap().is_none(), "idle 30 minutes");
    }

    #[tokio::test]
    async fn every_login_is_a_new_session_and_logging_out_ends_it() {
        let (sessions, _, _dir) = sessions().await;
        let (a, b) = (
            sessions.start("alice").await.unwrap(),
            sessions.start("alice").await.unwrap(),
        );
        assert_ne!(a.id, b.id);
        assert_ne!(a.csrf, b.csrf);
        let session = sessions.resolve(&a.id).await.unwrap().unwrap();
        sessions.end(&session).await.unwrap();
        assert!(sessions.resolve(&a.id).await.unwrap().is_none());
        assert!(sessions.resolve(&b.id).await.unwrap().is_some());
        assert!(sessions.resolve("forged").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn the_csrf_token_is_bound_to_its_session() {
        let (sessions, _, _dir) = sessions().await;
        let a = sessions.start("alice").await.unwrap();
        let b = sessions.start("bob").await.unwrap();
        let session = sessions.resolve(&a.id).await.unwrap().unwrap();
        assert!(session.csrf_matches(Some(&a.csrf)));
        assert!(!session.csrf_matches(Some(&b.csrf)));
        assert!(!session.csrf_matches(None));
        assert!(!session.csrf_matches(Some("")));
        assert!(!a.csrf.contains(&a.id));
    }

    #[tokio::test]
    async fn expired_and_idle_sessions_are_purged() {
        let (sessions, clock, _dir) = sessions().await;
        sessions.start("alice").await.unwrap();
        assert_eq!(sessions.purge().await.unwrap(), 0);
        clock.advance_ms(31 * 60_000);
        assert_eq!(sessions.purge().await.unwrap(), 1);
    }
}
