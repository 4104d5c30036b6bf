//! A store wrapper that can be made slow or unavailable, to test
//! backpressure and outages against a real store underneath.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokengate::{
    AuditEntry, AuditQuery, ChangeKind, EventOutcome, EventRecord, NewEvent, ObservedCall, Page, Restrictions,
    Rotation, SessionRecord, Settings, StoreError, TokenChange, TokenQuery, TokenRecord, TokenStates, TokenStore,
    UsageDelta,
};
use tokengate::{Day, EpochMs, ListedToken, UsageDay};

pub struct FaultyStore {
    inner: Arc<dyn TokenStore>,
    /// Every call fails while set.
    pub down: AtomicBool,
    /// Milliseconds each audit write takes.
    pub audit_delay_ms: AtomicU64,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn TokenStore>) -> Self {
        FaultyStore {
            inner,
            down: AtomicBool::new(false),
            audit_delay_ms: AtomicU64::new(0),
        }
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Url("simulated outage".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl TokenStore for FaultyStore {
    async fn insert_token(&self, token: &TokenRecord, max_per_user: Option<u64>) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.insert_token(token, max_per_user).await
    }
    async fn tokens_by_lookup(&self, lookup: &str) -> Result<Vec<TokenRecord>, StoreError> {
        self.check()?;
        self.inner.tokens_by_lookup(lookup).await
    }
    async fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.check()?;
        self.inner.token(id).await
    }
    async fn list_tokens(&self, query: &TokenQuery) -> Result<Page<ListedToken>, StoreError> {
        self.check()?;
        self.inner.list_tokens(query).await
    }
    async fn update_token(
        &self,
        id: &str,
        restrictions: &Restrictions,
        at: EpochMs,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.check()?;
        self.inner.update_token(id, restrictions, at).await
    }
    async fn rotate_token(
        &self,
        id: &str,
        rotation: &Rotation,
        at: EpochMs,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.check()?;
        self.inner.rotate_token(id, rotation, at).await
    }
    async fn enqueue_event(&self, event: &NewEvent) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.enqueue_event(event).await
    }
    async fn claim_events(
        &self,
        now: EpochMs,
        lease_until: EpochMs,
        limit: i64,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.check()?;
        self.inner.claim_events(now, lease_until, limit).await
    }
    async fn finish_event(&self, id: &str, outcome: EventOutcome) -> Result<(), StoreError> {
        self.check()?;
        self.inner.finish_event(id, outcome).await
    }
    async fn purge_events(&self, before: EpochMs) -> Result<u64, StoreError> {
        self.check()?;
        self.inner.purge_events(before).await
    }
    async fn tokens_expiring(&self, from: EpochMs, to: EpochMs) -> Result<Vec<TokenRecord>, StoreError> {
        self.check()?;
        self.inner.tokens_expiring(from, to).await
    }
    async fn token_states(&self, now: EpochMs, soon: EpochMs) -> Result<TokenStates, StoreError> {
        self.check()?;
        self.inner.token_states(now, soon).await
    }
    async fn delete_token(&self, id: &str, at: EpochMs) -> Result<Option<TokenRecord>, StoreError> {
        self.check()?;
        self.inner.delete_token(id, at).await
    }
    async fn delete_user_tokens(&self, user: &str, at: EpochMs) -> Result<Vec<TokenRecord>, StoreError> {
        self.check()?;
        self.inner.delete_user_tokens(user, at).await
    }
    async fn revocation_cursor(&self) -> Result<i64, StoreError> {
        self.check()?;
        self.inner.revocation_cursor().await
    }
    async fn revocations_after(&self, seq: i64) -> Result<Vec<TokenChange>, StoreError> {
        self.check()?;
        self.inner.revocations_after(seq).await
    }
    async fn purge_revocations(&self, before: EpochMs) -> Result<u64, StoreError> {
        self.check()?;
        self.inner.purge_revocations(before).await
    }
    async fn add_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError> {
        self.check()?;
        self.inner.add_usage(deltas).await
    }
    async fn usage_days(&self, token_id: &str, from: Day) -> Result<Vec<UsageDay>, StoreError> {
        self.check()?;
        self.inner.usage_days(token_id, from).await
    }
    async fn purge_usage_days(&self, before: Day) -> Result<u64, StoreError> {
        self.check()?;
        self.inner.purge_usage_days(before).await
    }
    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        self.check()?;
        let delay = self.audit_delay_ms.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        self.inner.append_audit(entries).await
    }
    async fn list_audit(&self, query: &AuditQuery) -> Result<Page<AuditEntry>, StoreError> {
        self.check()?;
        self.inner.list_audit(query).await
    }
    async fn purge_audit(&self, before: EpochMs) -> Result<u64, StoreError> {
        self.check()?;
        self.inner.purge_audit(before).await
    }
    async fn observed_calls(&self, token_id: &str, since: EpochMs) -> Result<Vec<ObservedCall>, StoreError> {
        self.check()?;
        self.inner.observed_calls(token_id, since).await
    }
    async fn settings(&self) -> Result<Settings, StoreError> {
        self.check()?;
        self.inner.settings().await
    }
    async fn save_settings(&self, settings: Settings) -> Result<(), StoreError> {
        self.check()?;
        self.inner.save_settings(settings).await
    }
    async fn insert_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        self.check()?;
        self.inner.insert_session(session).await
    }
    async fn session(&self, id_hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.check()?;
        self.inner.session(id_hash).await
    }
    async fn touch_session(&self, id_hash: &str, at: EpochMs) -> Result<(), StoreError> {
        self.check()?;
        self.inner.touch_session(id_hash, at).await
    }
    async fn delete_session(&self, id_hash: &str) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.delete_session(id_hash).await
    }
    async fn purge_sessions(&self, expired_before: EpochMs, idle_before: EpochMs) -> Result<u64, StoreError> {
        self.check()?;
        self.inner.purge_sessions(expired_before, idle_before).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.check()?;
        self.inner.ping().await
    }
    async fn close(&self) {
        self.inner.close().await;
    }
    fn revocation_feed(&self) -> Option<tokio::sync::mpsc::Receiver<(ChangeKind, String)>> {
        self.inner.revocation_feed()
    }
}
