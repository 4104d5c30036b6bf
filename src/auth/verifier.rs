//! Token verification (SPEC §4): the verified cache, the cold path through
//! the store and argon2 (run by [`Hasher`]), and revocation.
//!
//! The warm path is one SHA-256 and one cache read: no argon2, no database.
//! Concurrent first uses of one secret share a single verification (the cache
//! coalesces them). A revoked token is flagged in place, so every cache entry
//! that points at it stops working at once; an updated one is flagged stale,
//! and its next use reads its record again (no argon2: the secret that
//! matched is the same). A rotation (SPEC §18) is an update: a copy verified
//! with the replaced secret becomes a [`SecretRole::Previous`] that stops at
//! the end of its grace period, checked on every use.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use ipnet::IpNet;
use moka::future::Cache;

use super::rate_limit::{Bucket, RateLimits};
use super::upstream::{self, UpstreamCredential};
use crate::clock::{Clock, EpochMs};
use crate::config::parse_ip_list;
use crate::confluence::Confluence;
use crate::error::GatewayError;
use crate::record::{Metrics, TokenUsage, UsageBook};
use crate::rules::RuleSet;
use crate::secrets::seal::{self, SealError, SealKey};
use crate::secrets::token::{self, SecretDigest};
use crate::secrets::{HashError, Hasher};
use crate::store::{ChangeKind, StoreError, TokenRecord, TokenStore};
use crate::tokens::{RateLimit, TokenCache};

/// Most verified secrets kept in memory at once.
const CACHE_CAPACITY: u64 = 200_000;
/// Revoked ids remembered to close the race with an in-flight verification.
const REVOKED_MEMORY: usize = 100_000;

/// Which of a token's secrets verified a copy of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretRole {
    /// The token's current secret.
    Current,
    /// The secret a rotation replaced, accepted until `until` (SPEC §18).
    Previous { until: EpochMs },
}

/// A verified token, as the checks need it. Immutable but for its flags
/// (revoked, stale) and Confluence's verdict on its PAT: an update makes a
/// new one from the record.
#[derive(Debug)]
pub struct ActiveToken {
    pub id: String,
    pub label: String,
    /// The bound user; `None` for an unbound token.
    pub user: Option<String>,
    pub valid_until: Option<EpochMs>,
    /// Allowed client networks (empty: any). `Err` when the stored list no
    /// longer parses: the token then refuses every client IP (fail closed).
    pub ip_allowlist: Result<Vec<IpNet>, String>,
    /// Compiled restriction rules. `Err` when the stored rules no longer
    /// compile: the token then denies every request (fail closed).
    pub rules: Result<RuleSet, String>,
    /// Shared by every verified copy of this token.
    pub usage: Arc<TokenUsage>,
    /// Its rate limit's bucket (shared likewise); `None` without a limit,
    /// `Err` when the stored limit no longer parses (fail closed).
    pub rate_limit: Result<Option<Arc<Bucket>>, String>,
    /// `false`: report-only, the rules and spaces refuse nothing (SPEC §16).
    pub enforce: bool,
    /// The spaces it is confined to (SPEC §17); `None`: any. `Err` when the
    /// stored list no longer parses: the token then refuses every request.
    pub spaces: Result<Option<crate::spaces::SpaceList>, String>,
    /// With `forward_as = "pat"`: the user's personal access token, unsealed
    /// with the secret that verified the token, and Confluence's verdict.
    /// `None` in header mode, or for a token that carries no PAT.
    pub upstream: Option<Arc<UpstreamCredential>>,
    /// Which secret verified this copy, and the stored hash it matched (an
    /// update read again keeps the copy only while that hash still stands).
    pub secret: SecretRole,
    verified_by: String,
    revoked: AtomicBool,
    /// Updated since verified: read the record again before use.
    stale: AtomicBool,
}

impl ActiveToken {
    /// Compiles a stored record. Never fails: a defect in stored data becomes
    /// a token that refuses everything, and an error in the log.
    pub fn from_record(record: &TokenRecord, usage: Arc<TokenUsage>, limits: &RateLimits) -> Self {
        let ip_allowlist = parse_ip_list(&record.ip);
        let rules = RuleSet::parse(&record.limit_to).map_err(|e| e.to_string());
        let rate_limit = match &record.rate_limit {
            None => Ok(None),
            Some(text) => text
                .parse::<RateLimit>()
                .map(|limit| Some(limits.bucket_for(&record.id, limit))),
        };
        let spaces = record
            .spaces
            .as_deref()
            .map_or(Ok(None), crate::spaces::SpaceList::parse);
        for defect in [
            ip_allowlist.as_ref().err(),
            rules.as_ref().err(),
            rate_limit.as_ref().err(),
            spaces.as_ref().err(),
        ]
        .into_iter()
        .flatten()
        {
            tracing::error!(token.id = %record.id, error = %defect, "stored token no longer compiles; it will refuse every request");
        }
        ActiveToken {
            id: record.id.clone(),
            label: record.label.clone(),
            user: record.user.clone(),
            valid_until: record.valid_until,
            ip_allowlist,
            rules,
            usage,
            rate_limit,
            enforce: record.enforce,
            spaces,
            upstream: None,
            secret: SecretRole::Current,
            verified_by: record.token_hash.clone(),
            revoked: AtomicBool::new(false),
            stale: AtomicBool::new(false),
        }
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Acquire)
    }

    /// The stored hash the presented secret matched.
    pub fn verified_hash(&self) -> &str {
        &self.verified_by
    }

    /// Whether this copy's secret is a replaced one whose grace has ended.
    pub fn grace_is_over(&self, now: EpochMs) -> bool {
        matches!(self.secret, SecretRole::Previous { until } if until <= now)
    }

    /// This copy as verified by `record`'s replaced secret, when that is
    /// `hash` and its grace lasts beyond `now`.
    fn with_role(mut self, record: &TokenRecord, hash: &str, now: EpochMs) -> Option<Self> {
        if record.token_hash == hash {
            self.secret = SecretRole::Current;
        } else if record.previous_hash.as_deref() == Some(hash)
            && let Some(until) = record.grace_until.filter(|until| *until > now)
        {
            self.secret = SecretRole::Previous { until };
        } else {
            return None;
        }
        self.verified_by = hash.to_owned();
        Some(self)
    }

    pub fn is_expired(&self, now: EpochMs) -> bool {
        self.valid_until.is_some_and(|until| until <= now)
    }

    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        match &self.ip_allowlist {
            Ok(nets) => nets.is_empty() || nets.iter().any(|net| net.contains(&ip)),
            Err(_) => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hash(#[from] HashError),
    /// The failure of a verification another request was waiting on (the
    /// cache shares one outcome among them).
    #[error("{0}")]
    Shared(String),
    /// The token's PAT does not unseal: a wrong or missing `seal_key_file`,
    /// or a store that was tampered with.
    #[error("token {token_id}: {error}")]
    Unseal { token_id: String, error: SealError },
    /// Confluence could not be asked about the token's PAT (502, 504).
    #[error("{}", .0.message)]
    Upstream(GatewayError),
}

/// What a verification in `forward_as = "pat"` mode needs besides the store:
/// the seal key, and Confluence to ask about each unsealed PAT.
pub struct PatMode {
    pub upstream: Arc<Confluence>,
    pub seal_key: Option<SealKey>,
    pub clock: Arc<dyn Clock>,
}

/// Why a cold verification found no token; only `NotFound` is a normal outcome.
#[derive(Debug, thiserror::Error)]
enum ColdError {
    #[error("no token matches")]
    NotFound,
    #[error(transparent)]
    Failed(#[from] VerifyError),
}

pub struct Verifier {
    store: Arc<dyn TokenStore>,
    cache: Cache<SecretDigest, Arc<ActiveToken>>,
    /// Verified tokens by id, and recently revoked ids. A std mutex: it is
    /// held for a few map operations, only on cold verifications and
    /// revocations, never across an await.
    registry: Mutex<Registry>,
    hasher: Arc<Hasher>,
    metrics: Arc<Metrics>,
    usage: Arc<UsageBook>,
    limits: Arc<RateLimits>,
    pat_mode: Option<PatMode>,
    clock: Arc<dyn Clock>,
}

#[derive(Default)]
struct Registry {
    live: HashMap<String, Vec<Weak<ActiveToken>>>,
    revoked: HashSet<String>,
    revoked_order: VecDeque<String>,
    /// Counts updates made known to this process...
    epoch: u64,
    /// ...and when each updated id was last updated, so that a verification
    /// that read a record before its update does not keep it fresh.
    updated_at: HashMap<String, u64>,
    updated_order: VecDeque<String>,
}

impl Verifier {
    // Each collaborator is built once, in `App::with_store`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn TokenStore>,
        hasher: Arc<Hasher>,
        cache_ttl: Duration,
        metrics: Arc<Metrics>,
        usage: Arc<UsageBook>,
        limits: Arc<RateLimits>,
        pat_mode: Option<PatMode>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Verifier {
            store,
            cache: Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(cache_ttl)
                .build(),
            registry: Mutex::new(Registry::default()),
            hasher,
            metrics,
            usage,
            limits,
            pat_mode,
            clock,
        }
    }

    /// The token a presented secret belongs to, `None` when it is not a valid
    /// token (unknown, mistyped, deleted). `Err` only for internal failures.
    pub async fn verify(&self, secret: &str) -> Result<Option<Arc<ActiveToken>>, VerifyError> {
        if let Some(active) = self.cached(secret).await? {
            return Ok(Some(active));
        }
        self.verify_uncached(secret).await
    }

    /// The warm path: the token, if this secret was verified recently (read
    /// again from the store when it was updated since).
    pub async fn cached(&self, secret: &str) -> Result<Option<Arc<ActiveToken>>, VerifyError> {
        let digest = token::digest(secret);
        let Some(active) = self.cache.get(&digest).await else {
            return Ok(None);
        };
        if active.is_revoked() || active.grace_is_over(self.clock.now_ms()) {
            self.cache.invalidate(&digest).await;
            return Ok(None);
        }
        self.metrics.cache_hits.inc();
        if active.is_stale() {
            return Box::pin(self.reread(digest, &active)).await;
        }
        Ok(Some(active))
    }

    /// An updated token, from its record (see [`Verifier::reread_record`]),
    /// cached again under the secret's digest.
    async fn reread(&self, digest: SecretDigest, stale: &ActiveToken) -> Result<Option<Arc<ActiveToken>>, VerifyError> {
        let Some(active) = self.reread_record(stale).await? else {
            self.cache.invalidate(&digest).await;
            return Ok(None);
        };
        self.cache.insert(digest, active.clone()).await;
        tracing::debug!(token.id = %active.id, "updated token read again");
        Ok(Some(active))
    }

    /// An updated token, from its record: the secret matched a stored hash
    /// before, so no argon2, only whether that hash still stands (a rotation
    /// makes it the replaced one, in grace or not); the PAT stays unsealed.
    /// `None` when the token is gone or its secret no longer opens it.
    async fn reread_record(&self, stale: &ActiveToken) -> Result<Option<Arc<ActiveToken>>, VerifyError> {
        let epoch = self.epoch();
        let Some(record) = self.store.token(&stale.id).await? else {
            self.revoke(&stale.id);
            return Ok(None);
        };
        let active = ActiveToken::from_record(&record, self.usage.usage_for(&record.id), &self.limits);
        // Rotated away: this secret no longer opens the token (its new one does).
        let Some(mut active) = active.with_role(&record, &stale.verified_by, self.clock.now_ms()) else {
            return Ok(None);
        };
        active.upstream = stale.upstream.clone();
        let active = Arc::new(active);
        self.register(&active, epoch);
        if active.is_revoked() {
            return Ok(None);
        }
        Ok(Some(active))
    }

    /// Whether what `token` was verified with still opens it now: not
    /// deleted, not expired, not rotated past its grace (read again from
    /// the store when it was updated). For what outlives one request: a
    /// tunnel (SPEC §12).
    pub async fn still_holds(&self, token: &Arc<ActiveToken>) -> Result<Option<Arc<ActiveToken>>, VerifyError> {
        let now = self.clock.now_ms();
        let ended = |token: &ActiveToken| token.is_revoked() || token.is_expired(now) || token.grace_is_over(now);
        if ended(token) {
            return Ok(None);
        }
        if !token.is_stale() {
            return Ok(Some(token.clone()));
        }
        Ok(self.reread_record(token).await?.filter(|fresh| !ended(fresh)))
    }

    /// The cold path: store lookup and argon2, shared by concurrent callers
    /// presenting the same secret.
    pub async fn verify_uncached(&self, secret: &str) -> Result<Option<Arc<ActiveToken>>, VerifyError> {
        if !token::is_plausible(secret) {
            return Ok(None);
        }
        let digest = token::digest(secret);
        self.metrics.cache_misses.inc();
        match self.cache.try_get_with(digest, self.verify_cold(secret)).await {
            Ok(active) => Ok(Some(active)),
            Err(error) => match Arc::try_unwrap(error).unwrap_or_else(|shared| clone_cold(&shared)) {
                ColdError::NotFound => Ok(None),
                ColdError::Failed(e) => Err(e),
            },
        }
    }

    async fn verify_cold(&self, secret: &str) -> Result<Arc<ActiveToken>, ColdError> {
        let epoch = self.epoch();
        let (record, hash) = self.find_record(secret).await?.ok_or(ColdError::NotFound)?;
        let active = ActiveToken::from_record(&record, self.usage.usage_for(&record.id), &self.limits);
        let mut active = active
            .with_role(&record, &hash, self.clock.now_ms())
            .ok_or(ColdError::NotFound)?;
        let sealed = match active.secret {
            SecretRole::Current => &record.sealed_pat,
            SecretRole::Previous { .. } => &record.previous_sealed_pat,
        };
        if let (Some(pat_mode), Some(sealed)) = (&self.pat_mode, sealed) {
            active.upstream = Some(Arc::new(open_upstream(pat_mode, &record, sealed, secret).await?));
        }
        let active = Arc::new(active);
        self.register(&active, epoch);
        if active.is_revoked() {
            return Err(ColdError::NotFound);
        }
        Ok(active)
    }

    /// The stored record whose hash matches `secret`, and that hash (see
    /// [`Hasher::find`]).
    async fn find_record(&self, secret: &str) -> Result<Option<(TokenRecord, String)>, VerifyError> {
        let candidates = self.store.tokens_by_lookup(token::lookup_of(secret)).await?;
        Ok(self.hasher.find(candidates, secret, self.clock.now_ms()).await?)
    }

    fn epoch(&self) -> u64 {
        self.registry.lock().expect("verifier registry poisoned").epoch
    }

    /// Makes a token built from a record read at `epoch` known, so that
    /// revocations and updates reach it; one whose id was revoked, or
    /// updated after `epoch`, is flagged at once.
    fn register(&self, active: &Arc<ActiveToken>, epoch: u64) {
        let mut registry = self.registry.lock().expect("verifier registry poisoned");
        if registry.revoked.contains(&active.id) {
            active.revoked.store(true, Ordering::Release);
            return;
        }
        if registry.updated_at.get(&active.id).is_some_and(|at| *at > epoch) {
            active.stale.store(true, Ordering::Release);
        }
        let entries = registry.live.entry(active.id.clone()).or_default();
        entries.retain(|weak| weak.strong_count() > 0);
        entries.push(Arc::downgrade(active));
    }

    /// Makes an update of a token take effect in this process at once: every
    /// verified copy is flagged stale (its next use reads the record again),
    /// and a verification in flight that read the old record is flagged too.
    pub fn updated(&self, id: &str) {
        let mut registry = self.registry.lock().expect("verifier registry poisoned");
        registry.epoch += 1;
        let epoch = registry.epoch;
        for weak in registry.live.get(id).into_iter().flatten() {
            if let Some(active) = weak.upgrade() {
                active.stale.store(true, Ordering::Release);
            }
        }
        if registry.updated_at.insert(id.to_owned(), epoch).is_none() {
            registry.updated_order.push_back(id.to_owned());
            if registry.updated_order.len() > REVOKED_MEMORY
                && let Some(oldest) = registry.updated_order.pop_front()
            {
                registry.updated_at.remove(&oldest);
            }
        }
    }

    /// Stops a token working in this process at once: every cache entry that
    /// points at it is flagged, and a verification in flight will not cache it.
    pub fn revoke(&self, id: &str) {
        let mut registry = self.registry.lock().expect("verifier registry poisoned");
        for weak in registry.live.remove(id).unwrap_or_default() {
            if let Some(active) = weak.upgrade() {
                active.revoked.store(true, Ordering::Release);
            }
        }
        if registry.revoked.insert(id.to_owned()) {
            registry.revoked_order.push_back(id.to_owned());
            if registry.revoked_order.len() > REVOKED_MEMORY
                && let Some(oldest) = registry.revoked_order.pop_front()
            {
                registry.revoked.remove(&oldest);
            }
        }
    }
}

impl TokenCache for Verifier {
    /// Applies a deletion or an update, made here (through the token
    /// service) or elsewhere (read from the store's change feed).
    fn changed(&self, kind: ChangeKind, id: &str) {
        match kind {
            ChangeKind::Delete => self.revoke(id),
            ChangeKind::Update => self.updated(id),
        }
    }
}

/// Unseals a token's PAT with the secret that verified it, and asks
/// Confluence whether it still acts as the token's user (SPEC §13).
async fn open_upstream(
    pat_mode: &PatMode,
    record: &TokenRecord,
    sealed: &[u8],
    secret: &str,
) -> Result<UpstreamCredential, VerifyError> {
    let unseal_error = |error| VerifyError::Unseal {
        token_id: record.id.clone(),
        error,
    };
    let pat = seal::unseal(sealed, secret, &record.id, pat_mode.seal_key.as_ref()).map_err(unseal_error)?;
    let authorization = pat.bearer().ok_or_else(|| unseal_error(SealError::Malformed))?;
    let user = record.user.as_deref().unwrap_or_default();
    let verdict = upstream::ask(&pat_mode.upstream, &authorization, user)
        .await
        .map_err(VerifyError::Upstream)?;
    Ok(UpstreamCredential::new(authorization, verdict, pat_mode.clock.now_ms()))
}

/// Another waiter's error, when the cache shares one failure among them.
fn clone_cold(error: &ColdError) -> ColdError {
    match error {
        ColdError::NotFound => ColdError::NotFound,
        ColdError::Failed(VerifyError::Upstream(e)) => ColdError::Failed(VerifyError::Upstream(e.clone())),
        ColdError::Failed(e) => ColdError::Failed(VerifyError::Shared(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::Argon2Cost;
    use crate::store::{Restrictions, SqliteStore};

    /// A verifier over a throwaway SQLite store, with cheap argon2.
    struct Fixture {
        verifier: Verifier,
        hasher: Arc<Hasher>,
        store: Arc<dyn TokenStore>,
        metrics: Arc<Metrics>,
        clock: Arc<ManualClock>,
        _dir: tempfile::TempDir,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let store: Arc<dyn TokenStore> = Arc::new(SqliteStore::open(&url).await.unwrap());
        let metrics = Metrics::new();
        let clock = ManualClock::starting_now();
        let hasher = Arc::new(Hasher::new(Argon2Cost::CHEAP, metrics.clone()));
        let verifier = Verifier::new(
            store.clone(),
            hasher.clone(),
            Duration::from_secs(600),
            metrics.clone(),
            Arc::default(),
            Arc::new(RateLimits::local(ManualClock::starting_now())),
            None,
            clock.clone(),
        );
        Fixture {
            verifier,
            hasher,
            store,
            metrics,
            clock,
            _dir: dir,
        }
    }

    impl Fixture {
        /// Stores a token for `user`; returns its id and value.
        async fn token(&self, user: &str) -> (String, String) {
            let value = token::generate();
            let id = format!("id-{user}");
            let record = TokenRecord {
                label: format!("{user}-bot"),
                token_hash: self.hasher.hash(&value).await.unwrap(),
                lookup: token::lookup_of(&value).to_owned(),
                ..crate::store::test_record(&id, Some(user), 0)
            };
            self.store.insert_token(&record, None).await.unwrap();
            (id, value)
        }

        fn argon2_checks(&self) -> u64 {
            self.metrics.argon2_checks.get()
        }
    }

    #[tokio::test]
    async fn the_warm_path_needs_neither_argon2_nor_the_store() {
        let f = fixture().await;
        let (id, secret) = f.token("alice").await;
        assert!(f.verifier.cached(&secret).await.unwrap().is_none(), "not verified yet");
        let before = f.argon2_checks();
        let cold = f.verifier.verify(&secret).await.unwrap().expect("a valid token");
        assert_eq!((cold.id.as_str(), f.argon2_checks()), (id.as_str(), before + 1));
        f.store.close().await;
        let warm = f.verifier.verify(&secret).await.unwrap().expect("from the cache");
        assert!(Arc::ptr_eq(&cold, &warm));
        assert_eq!(f.argon2_checks(), before + 1);
    }

    #[tokio::test]
    async fn a_rotated_secret_works_until_its_grace_ends_and_the_new_one_at_once() {
        let f = fixture().await;
        let (id, old) = f.token("alice").await;
        let held = f.verifier.verify(&old).await.unwrap().unwrap();
        let rotate = |replaces: String, value: String, grace: Option<EpochMs>| {
            let (store, verifier, hasher) = (f.store.clone(), &f.verifier, &f.hasher);
            let id = id.clone();
            async move {
                let rotation = crate::store::Rotation {
                    replaces,
                    token_hash: hasher.hash(&value).await.unwrap(),
                    lookup: token::lookup_of(&value).to_owned(),
                    sealed_pat: None,
                    grace_until: grace,
                };
                let rotated = store.rotate_token(&id, &rotation, 0).await.unwrap().expect("rotated");
                verifier.updated(&id);
                rotated
            }
        };
        let new = token::generate();
        let now = f.clock.now_ms();
        let rotated = rotate(held.verified_by.clone(), new.clone(), Some(now + 60_000)).await;
        // The copy verified with the old secret is read again: in grace.
        let old_copy = f.verifier.verify(&old).await.unwrap().expect("in grace");
        assert_eq!(old_copy.secret, SecretRole::Previous { until: now + 60_000 });
        let new_copy = f
            .verifier
            .verify(&new)
            .await
            .unwrap()
            .expect("the new secret works at once");
        assert_eq!(new_copy.secret, SecretRole::Current);
        // A cold verification of the old secret (another process) finds it too.
        let cold = fixture_twin(&f).await;
        assert!(matches!(
            cold.verify(&old).await.unwrap().map(|t| t.secret),
            Some(SecretRole::Previous { .. })
        ));
        f.clock.advance_ms(60_000);
        assert!(f.verifier.verify(&old).await.unwrap().is_none(), "grace over: invalid");
        assert!(cold.verify(&old).await.unwrap().is_none(), "everywhere");
        assert!(f.verifier.verify(&new).await.unwrap().is_some());
        // A rotation without grace ends the old secret at once; only the
        // secret that is current may be replaced.
        let newer = token::generate();
        assert!(
            f.store
                .rotate_token(
                    &id,
                    &crate::store::Rotation {
                        replaces: held.verified_by.clone(),
                        token_hash: String::new(),
                        lookup: String::new(),
                        sealed_pat: None,
                        grace_until: None,
                    },
                    0
                )
                .await
                .unwrap()
                .is_none(),
            "a stale rotation changes nothing"
        );
        rotate(rotated.token_hash.clone(), newer.clone(), None).await;
        assert!(f.verifier.verify(&new).await.unwrap().is_none());
        assert!(f.verifier.verify(&newer).await.unwrap().is_some());
    }

    /// A second verifier over the same store, as another process has.
    async fn fixture_twin(f: &Fixture) -> Verifier {
        Verifier::new(
            f.store.clone(),
            f.hasher.clone(),
            Duration::from_secs(600),
            Metrics::new(),
            Arc::default(),
            Arc::new(RateLimits::local(ManualClock::starting_now())),
            None,
            f.clock.clone(),
        )
    }

    #[tokio::test]
    async fn concurrent_first_uses_share_one_argon2_check() {
        let f = Arc::new(fixture().await);
        let (_, secret) = f.token("alice").await;
        let before = f.argon2_checks();
        let mut uses = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (f, secret) = (f.clone(), secret.clone());
            uses.spawn(async move { f.verifier.verify(&secret).await.unwrap().is_some() });
        }
        while let Some(verified) = uses.join_next().await {
            assert!(verified.unwrap());
        }
        assert_eq!(f.argon2_checks(), before + 1);
    }

    #[tokio::test]
    async fn a_revoked_token_stops_at_once_and_is_not_verified_again() {
        let f = fixture().await;
        let (id, secret) = f.token("alice").await;
        let held = f.verifier.verify(&secret).await.unwrap().unwrap();
        let (_, other) = f.token("bob").await;
        f.verifier.verify(&other).await.unwrap().unwrap();
        f.verifier.revoke(&id);
        assert!(held.is_revoked(), "a copy held by a request in flight sees it");
        assert!(f.verifier.cached(&secret).await.unwrap().is_none());
        // The row is still in the store (another process deletes it): the
        // revocation is remembered, so a verification racing it cannot bring it back.
        assert!(f.verifier.verify(&secret).await.unwrap().is_none());
        assert!(
            f.verifier.cached(&other).await.unwrap().is_some(),
            "other tokens are untouched"
        );
    }

    #[tokio::test]
    async fn an_updated_token_is_read_again_without_argon2() {
        let f = fixture().await;
        let (id, secret) = f.token("alice").await;
        let held = f.verifier.verify(&secret).await.unwrap().unwrap();
        let restrictions = Restrictions {
            label: "renamed".into(),
            limit_to: "[get]/rest/api/space".into(),
            ip: String::new(),
            rate_limit: Some("5/min".into()),
            enforce: false,
            spaces: None,
        };
        f.store.update_token(&id, &restrictions, 1).await.unwrap().unwrap();
        let before = f.argon2_checks();
        f.verifier.updated(&id);
        assert!(held.is_stale(), "a copy held by a request in flight is flagged");
        let fresh = f.verifier.cached(&secret).await.unwrap().expect("still valid");
        assert_eq!(fresh.label, "renamed");
        assert!(!fresh.enforce);
        assert_eq!(
            fresh.rate_limit.as_ref().unwrap().as_ref().unwrap().limit().to_string(),
            "5/min"
        );
        assert!(fresh.rules.as_ref().unwrap().lines() == ["[get]/rest/api/space"]);
        assert!(Arc::ptr_eq(&held.usage, &fresh.usage), "usage counts on");
        assert_eq!(f.argon2_checks(), before, "the secret is not checked again");
        let again = f.verifier.cached(&secret).await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&fresh, &again), "read once, then cached");
    }

    #[tokio::test]
    async fn an_update_racing_a_verification_is_not_lost() {
        let f = fixture().await;
        let (id, secret) = f.token("alice").await;
        // A verification that read the record before the update registers after it.
        let epoch = f.verifier.epoch();
        let record = f.store.token(&id).await.unwrap().unwrap();
        f.verifier.updated(&id);
        let active = Arc::new(ActiveToken::from_record(
            &record,
            Arc::default(),
            &RateLimits::local(ManualClock::starting_now()),
        ));
        f.verifier.register(&active, epoch);
        assert!(active.is_stale(), "built from a record older than the update");
        let later = Arc::new(ActiveToken::from_record(
            &record,
            Arc::default(),
            &RateLimits::local(ManualClock::starting_now()),
        ));
        f.verifier.register(&later, f.verifier.epoch());
        assert!(!later.is_stale(), "read after the update");
        assert!(f.verifier.verify(&secret).await.unwrap().is_some());
        // A deletion found on re-reading revokes.
        f.verifier.verify(&secret).await.unwrap().unwrap();
        f.store.delete_token(&id, 2).await.unwrap();
        f.verifier.updated(&id);
        assert!(f.verifier.cached(&secret).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn implausible_and_unknown_secrets_cost_no_argon2() {
        let f = fixture().await;
        f.token("alice").await;
        let before = f.argon2_checks();
        for secret in [
            "tgw_short",
            "not-a-token-at-all-not-a-token-at-all",
            "tgw_unknownunknownunknownunknownunknown",
        ] {
            assert!(f.verifier.verify(secret).await.unwrap().is_none(), "{secret}");
        }
        assert_eq!(f.argon2_checks(), before);
    }

    #[tokio::test]
    async fn a_store_that_fails_is_an_error_not_an_invalid_token() {
        let f = fixture().await;
        let (_, secret) = f.token("alice").await;
        f.store.close().await;
        assert!(f.verifier.verify(&secret).await.is_err());
    }
}
