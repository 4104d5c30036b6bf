//! The PostgreSQL store, so that several gateway replicas share one set of
//! tokens, settings, usage counters and audit log (SPEC §7). Same semantics
//! as the SQLite store; migrations from `migrations/postgres` are applied at
//! open. Every deletion is also announced with NOTIFY as it commits, and
//! [`TokenStore::revocation_feed`] follows those announcements (LISTEN on a
//! connection of its own, reconnecting with backoff).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use tokio::sync::mpsc;

use super::{
    AuditEntry, AuditKind, AuditQuery, ChangeKind, EventOutcome, EventRecord, Listing, NewEvent, OBSERVED_CALLS,
    ObservedCall, Page, Restrictions, Rotation, SessionRecord, Settings, StoreError, TokenChange, TokenQuery,
    TokenRecord, TokenStates, TokenStore, UsageDelta,
};
use crate::backoff::Backoff;
use crate::clock::EpochMs;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

const TOKEN_COLUMNS: &str = "id, label, user_name, author, limit_to, ip, created_at, valid_until, \
                             token_hash, lookup, counter, last_used_at, last_ip, sealed_pat, upstream_token_id, rate_limit, enforce, spaces, \
                             previous_hash, previous_lookup, previous_sealed_pat, grace_until";

const AUDIT_COLUMNS: &str = "at, kind, token_id, token_label, user_name, client_ip, method, path, status, \
                             decision, reason, duration_ms, detail";

/// The NOTIFY channel deletions and updates are announced on.
const REVOCATION_CHANNEL: &str = "tokengate_revocations";
/// The payload's prefix for an update (a deletion is the bare id).
const UPDATE_PREFIX: &str = "update:";
const MAX_CONNECTIONS: u32 = 10;
/// How long a call waits for a connection. Short, so that during an outage
/// a request whose token is not verified yet fails closed (500) promptly.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// Waits between attempts while the database does not answer: doubling from
/// the first to the cap.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_CAP: Duration = Duration::from_secs(5);
/// Announced deletions waiting for the gateway to apply them.
const FEED_QUEUE: usize = 1024;

pub struct PgStore {
    pool: PgPool,
    /// For the connections revocation feeds LISTEN on (one each, held for good).
    options: PgConnectOptions,
    /// Set once the migrations have run; every call fails with
    /// [`StoreError::NotReady`] before, whatever the database would answer.
    ready: Arc<AtomicBool>,
}

impl PgStore {
    /// Connects and applies the migrations; fails when the database does not answer.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let store = PgStore::lazy(url)?;
        MIGRATOR.run(&store.pool).await?;
        store.ready.store(true, Ordering::Release);
        Ok(store)
    }

    /// Connects and applies the migrations like [`open`](Self::open), but
    /// when the database does not answer returns anyway, not ready, and keeps
    /// trying in a background task with backoff. Needs a Tokio runtime.
    pub async fn open_for_serving(url: &str) -> Result<Self, StoreError> {
        let store = PgStore::lazy(url)?;
        match MIGRATOR.run(&store.pool).await {
            Ok(()) => store.ready.store(true, Ordering::Release),
            Err(e) => {
                tracing::warn!(error = %e, "database unavailable at start; not ready, retrying in the background");
                tokio::spawn(migrate_until_done(store.pool.clone(), store.ready.clone()));
            }
        }
        Ok(store)
    }

    fn lazy(url: &str) -> Result<Self, StoreError> {
        let mut options = PgConnectOptions::from_str(url)?;
        if options.get_application_name().is_none() {
            options = options.application_name("tokengate");
        }
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options.clone());
        Ok(PgStore {
            pool,
            options,
            ready: Arc::new(AtomicBool::new(false)),
        })
    }

    fn check_ready(&self) -> Result<(), StoreError> {
        if self.ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(StoreError::NotReady)
        }
    }

    /// Begins a transaction once the store is ready.
    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.check_ready()?;
        Ok(self.pool.begin().await?)
    }
}

/// Runs the migrations until they succeed (or the store is closed), then
/// marks the store ready.
async fn migrate_until_done(pool: PgPool, ready: Arc<AtomicBool>) {
    let mut retry = backoff();
    loop {
        match MIGRATOR.run(&pool).await {
            Ok(()) => {
                ready.store(true, Ordering::Release);
                tracing::info!("database ready: migrations applied");
                return;
            }
            Err(_) if pool.is_closed() => return,
            Err(e) => {
                let delay = retry.next_delay();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis(), "database unavailable; not ready, retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn backoff() -> Backoff {
    Backoff::new(RETRY_FIRST, RETRY_CAP)
}

#[async_trait]
impl TokenStore for PgStore {
    async fn insert_token(&self, t: &TokenRecord, max_per_user: Option<u64>) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        if let (Some(user), Some(_)) = (&t.user, max_per_user) {
            // One creation per user at a time, across replicas: the count
            // below then stays true until this transaction commits.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tokengate user ' || tokengate_fold($1)))")
                .bind(user)
                .execute(&mut *tx)
                .await?;
        }
        let inserted = sqlx::query(
            "INSERT INTO tokens (id, label, user_name, author, limit_to, ip, created_at, valid_until, \
             token_hash, lookup, counter, last_used_at, last_ip, sealed_pat, upstream_token_id, rate_limit, enforce, spaces) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $17, $18, $19 \
             WHERE $16::bigint IS NULL OR $3::text IS NULL \
             OR (SELECT count(*) FROM tokens WHERE tokengate_fold(user_name) = tokengate_fold($3)) < $16",
        )
        .bind(&t.id)
        .bind(&t.label)
        .bind(&t.user)
        .bind(&t.author)
        .bind(&t.limit_to)
        .bind(&t.ip)
        .bind(t.created_at)
        .bind(t.valid_until)
        .bind(&t.token_hash)
        .bind(&t.lookup)
        .bind(t.counter)
        .bind(t.last_used_at)
        .bind(&t.last_ip)
        .bind(&t.sealed_pat)
        .bind(&t.upstream_token_id)
        .bind(max_per_user.map(|n| i64::try_from(n).unwrap_or(i64::MAX)))
        .bind(&t.rate_limit)
        .bind(t.enforce)
        .bind(&t.spaces)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(inserted == 1)
    }

    async fn update_token(&self, id: &str, r: &Restrictions, at: EpochMs) -> Result<Option<TokenRecord>, StoreError> {
        let mut tx = self.begin().await?;
        lock_revocations(&mut tx).await?;
        let sql = format!(
            "UPDATE tokens SET label = $1, limit_to = $2, ip = $3, rate_limit = $4, enforce = $5, spaces = $6 WHERE id = $7 \
             RETURNING {TOKEN_COLUMNS}"
        );
        let updated: Option<TokenRecord> = sqlx::query_as(&sql)
            .bind(&r.label)
            .bind(&r.limit_to)
            .bind(&r.ip)
            .bind(&r.rate_limit)
            .bind(r.enforce)
            .bind(&r.spaces)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if updated.is_some() {
            record_changes(&mut tx, &[id.to_owned()], ChangeKind::Update, at).await?;
        }
        tx.commit().await?;
        Ok(updated)
    }

    async fn tokens_by_lookup(&self, lookup: &str) -> Result<Vec<TokenRecord>, StoreError> {
        self.check_ready()?;
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE lookup = $1 OR previous_lookup = $1");
        Ok(sqlx::query_as(&sql).bind(lookup).fetch_all(&self.pool).await?)
    }

    async fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.check_ready()?;
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = $1");
        Ok(sqlx::query_as(&sql).bind(id).fetch_optional(&self.pool).await?)
    }

    async fn list_tokens(&self, q: &TokenQuery) -> Result<Page<TokenRecord>, StoreError> {
        self.check_ready()?;
        let listing = Listing {
            table: "tokens",
            columns: TOKEN_COLUMNS,
            filter: "($1::text IS NULL OR tokengate_fold(user_name) = tokengate_fold($1)) \
                     AND ($2::text IS NULL OR strpos(tokengate_fold(label), tokengate_fold($2)) > 0)",
            // Ids compare bytewise, as in SQLite, whatever the database collation.
            limit: "LIMIT $3 OFFSET $4",
            order: "created_at DESC, id COLLATE \"C\"",
        };
        listing
            .page(&self.pool, [&q.user, &q.label], q.start_at, q.max_results)
            .await
    }

    async fn rotate_token(&self, id: &str, r: &Rotation, at: EpochMs) -> Result<Option<TokenRecord>, StoreError> {
        let mut tx = self.begin().await?;
        lock_revocations(&mut tx).await?;
        // SET reads the row as it was: the replaced secret moves to previous_*.
        let sql = format!(
            "UPDATE tokens SET \
             previous_hash = CASE WHEN $1 IS NULL THEN NULL ELSE token_hash END, \
             previous_lookup = CASE WHEN $1 IS NULL THEN NULL ELSE lookup END, \
             previous_sealed_pat = CASE WHEN $1 IS NULL THEN NULL ELSE sealed_pat END, \
             grace_until = $1, token_hash = $2, lookup = $3, sealed_pat = $4 \
             WHERE id = $5 AND token_hash = $6 RETURNING {TOKEN_COLUMNS}"
        );
        let rotated: Option<TokenRecord> = sqlx::query_as(&sql)
            .bind(r.grace_until)
            .bind(&r.token_hash)
            .bind(&r.lookup)
            .bind(&r.sealed_pat)
            .bind(id)
            .bind(&r.replaces)
            .fetch_optional(&mut *tx)
            .await?;
        if rotated.is_some() {
            record_changes(&mut tx, &[id.to_owned()], ChangeKind::Update, at).await?;
        }
        tx.commit().await?;
        Ok(rotated)
    }

    async fn delete_token(&self, id: &str, at: EpochMs) -> Result<Option<TokenRecord>, StoreError> {
        let mut tx = self.begin().await?;
        lock_revocations(&mut tx).await?;
        let sql = format!("DELETE FROM tokens WHERE id = $1 RETURNING {TOKEN_COLUMNS}");
        let deleted: Option<TokenRecord> = sqlx::query_as(&sql).bind(id).fetch_optional(&mut *tx).await?;
        if deleted.is_some() {
            record_changes(&mut tx, &[id.to_owned()], ChangeKind::Delete, at).await?;
        }
        tx.commit().await?;
        Ok(deleted)
    }

    async fn delete_user_tokens(&self, user: &str, at: EpochMs) -> Result<Vec<TokenRecord>, StoreError> {
        let mut tx = self.begin().await?;
        lock_revocations(&mut tx).await?;
        // Row locks in id order, like add_usage, so the two never deadlock.
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM tokens WHERE tokengate_fold(user_name) = tokengate_fold($1) ORDER BY id FOR UPDATE",
        )
        .bind(user)
        .fetch_all(&mut *tx)
        .await?;
        let sql = format!("DELETE FROM tokens WHERE id = ANY($1) RETURNING {TOKEN_COLUMNS}");
        let deleted: Vec<TokenRecord> = sqlx::query_as(&sql).bind(&ids).fetch_all(&mut *tx).await?;
        record_changes(&mut tx, &ids, ChangeKind::Delete, at).await?;
        tx.commit().await?;
        Ok(deleted)
    }

    async fn revocation_cursor(&self) -> Result<i64, StoreError> {
        self.check_ready()?;
        let seq: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM revocations")
            .fetch_one(&self.pool)
            .await?;
        Ok(seq.unwrap_or(0))
    }

    async fn revocations_after(&self, seq: i64) -> Result<Vec<TokenChange>, StoreError> {
        self.check_ready()?;
        Ok(
            sqlx::query_as("SELECT seq, token_id, kind FROM revocations WHERE seq > $1 ORDER BY seq")
                .bind(seq)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn purge_revocations(&self, before: EpochMs) -> Result<u64, StoreError> {
        self.check_ready()?;
        // Keep the newest row, as the SQLite store does, so the cursor never goes back.
        let result =
            sqlx::query("DELETE FROM revocations WHERE revoked_at < $1 AND seq < (SELECT max(seq) FROM revocations)")
                .bind(before)
                .execute(&self.pool)
                .await?;
        Ok(result.rows_affected())
    }

    async fn add_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError> {
        if deltas.is_empty() {
            return Ok(());
        }
        // One row per token, in id order: the rows are locked in that order,
        // so replicas flushing at the same time wait for each other instead
        // of deadlocking, and `counter + calls` never loses an increment.
        let mut merged: BTreeMap<&str, (i64, EpochMs, &str)> = BTreeMap::new();
        for d in deltas {
            let entry = merged.entry(&d.token_id).or_insert((0, d.last_used_at, &d.last_ip));
            entry.0 += d.calls;
            if d.last_used_at >= entry.1 {
                (entry.1, entry.2) = (d.last_used_at, &d.last_ip);
            }
        }
        let ids: Vec<&str> = merged.keys().copied().collect();
        let calls: Vec<i64> = merged.values().map(|v| v.0).collect();
        let used_at: Vec<EpochMs> = merged.values().map(|v| v.1).collect();
        let ips: Vec<&str> = merged.values().map(|v| v.2).collect();
        let mut tx = self.begin().await?;
        sqlx::query("SELECT id FROM tokens WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE tokens AS t SET counter = t.counter + d.calls, \
             last_ip = CASE WHEN d.used_at >= coalesce(t.last_used_at, 0) THEN d.ip ELSE t.last_ip END, \
             last_used_at = GREATEST(coalesce(t.last_used_at, 0), d.used_at) \
             FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[]) AS d(id, calls, used_at, ip) \
             WHERE t.id = d.id",
        )
        .bind(&ids)
        .bind(&calls)
        .bind(&used_at)
        .bind(&ips)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.check_ready()?;
        let column = |f: fn(&AuditEntry) -> Option<&str>| entries.iter().map(f).collect::<Vec<_>>();
        let number = |f: fn(&AuditEntry) -> Option<i64>| entries.iter().map(f).collect::<Vec<_>>();
        // One statement for the batch; WITH ORDINALITY keeps the entries'
        // order in their ids, the tie-break of entries with the same time.
        sqlx::query(
            "INSERT INTO audit (at, kind, token_id, token_label, user_name, client_ip, method, path, \
             status, decision, reason, duration_ms, detail) \
             SELECT at, kind, token_id, token_label, user_name, client_ip, method, path, \
             status, decision, reason, duration_ms, detail \
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
             $8::text[], $9::bigint[], $10::text[], $11::text[], $12::bigint[], $13::text[]) WITH ORDINALITY \
             AS e(at, kind, token_id, token_label, user_name, client_ip, method, path, \
             status, decision, reason, duration_ms, detail, n) ORDER BY n",
        )
        .bind(entries.iter().map(|e| e.at).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| kind_name(e.kind)).collect::<Vec<_>>())
        .bind(column(|e| e.token_id.as_deref()))
        .bind(column(|e| e.token_label.as_deref()))
        .bind(column(|e| e.user.as_deref()))
        .bind(column(|e| e.client_ip.as_deref()))
        .bind(column(|e| e.method.as_deref()))
        .bind(column(|e| e.path.as_deref()))
        .bind(number(|e| e.status))
        .bind(entries.iter().map(|e| e.decision.as_str()).collect::<Vec<_>>())
        .bind(column(|e| e.reason.as_deref()))
        .bind(number(|e| e.duration_ms))
        .bind(column(|e| e.detail.as_deref()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_audit(&self, q: &AuditQuery) -> Result<Page<AuditEntry>, StoreError> {
        self.check_ready()?;
        let listing = Listing {
            table: "audit",
            columns: AUDIT_COLUMNS,
            filter: "($1::text IS NULL OR token_id = $1) \
                     AND ($2::text IS NULL OR tokengate_fold(user_name) = tokengate_fold($2))",
            limit: "LIMIT $3 OFFSET $4",
            order: "at DESC, id DESC",
        };
        listing
            .page(&self.pool, [&q.token_id, &q.user], q.start_at, q.max_results)
            .await
    }

    async fn observed_calls(&self, token_id: &str, since: EpochMs) -> Result<Vec<ObservedCall>, StoreError> {
        Ok(sqlx::query_as(OBSERVED_CALLS)
            .bind(token_id)
            .bind(since)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn purge_audit(&self, before: EpochMs) -> Result<u64, StoreError> {
        self.check_ready()?;
        let result = sqlx::query("DELETE FROM audit WHERE at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }

    async fn settings(&self) -> Result<Settings, StoreError> {
        self.check_ready()?;
        let rows: Vec<(String, String)> = sqlx::query_as("SELECT name, value FROM settings")
            .fetch_all(&self.pool)
            .await?;
        let stored = |name: &str, default: bool| {
            rows.iter()
                .find(|(n, _)| n == name)
                .map_or(default, |(_, value)| value == "true")
        };
        let defaults = Settings::default();
        Ok(Settings {
            usage_details: stored("usageDetails", defaults.usage_details),
            audit_log: stored("auditLog", defaults.audit_log),
        })
    }

    async fn save_settings(&self, settings: Settings) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        for (name, value) in [
            ("usageDetails", settings.usage_details),
            ("auditLog", settings.audit_log),
        ] {
            sqlx::query(
                "INSERT INTO settings (name, value) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )
            .bind(name)
            .bind(value.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn insert_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
        self.check_ready()?;
        sqlx::query(
            "INSERT INTO sessions (id_hash, user_name, created_at, last_seen_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&s.id_hash)
        .bind(&s.user)
        .bind(s.created_at)
        .bind(s.last_seen_at)
        .bind(s.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn session(&self, id_hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.check_ready()?;
        Ok(sqlx::query_as(
            "SELECT id_hash, user_name, created_at, last_seen_at, expires_at FROM sessions WHERE id_hash = $1",
        )
        .bind(id_hash)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn touch_session(&self, id_hash: &str, at: EpochMs) -> Result<(), StoreError> {
        self.check_ready()?;
        sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id_hash = $2 AND last_seen_at < $1")
            .bind(at)
            .bind(id_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn delete_session(&self, id_hash: &str) -> Result<bool, StoreError> {
        self.check_ready()?;
        let deleted = sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(deleted > 0)
    }

    async fn purge_sessions(&self, expired_before: EpochMs, idle_before: EpochMs) -> Result<u64, StoreError> {
        self.check_ready()?;
        let purged = sqlx::query("DELETE FROM sessions WHERE expires_at < $1 OR last_seen_at < $2")
            .bind(expired_before)
            .bind(idle_before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(purged)
    }

    async fn enqueue_event(&self, e: &NewEvent) -> Result<bool, StoreError> {
        self.check_ready()?;
        let inserted = sqlx::query(
            "INSERT INTO events (id, event, body, created_at, next_at, once) VALUES ($1, $2, $3, $4, $4, $5) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&e.id)
        .bind(&e.event)
        .bind(&e.body)
        .bind(e.created_at)
        .bind(&e.once)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    async fn claim_events(
        &self,
        now: EpochMs,
        lease_until: EpochMs,
        limit: i64,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.check_ready()?;
        // One statement: the claim is atomic, and other senders skip the rows it locks.
        let claimed: Vec<EventRecord> = sqlx::query_as(
            "UPDATE events SET claimed_until = $2 WHERE id IN (\
             SELECT id FROM events WHERE delivered_at IS NULL AND abandoned_at IS NULL AND next_at <= $1 \
             AND (claimed_until IS NULL OR claimed_until <= $1) ORDER BY created_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING id, event, body, created_at, attempts",
        )
        .bind(now)
        .bind(lease_until)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut claimed = claimed;
        claimed.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(claimed)
    }

    async fn finish_event(&self, id: &str, outcome: EventOutcome) -> Result<(), StoreError> {
        self.check_ready()?;
        let query = match outcome {
            EventOutcome::Delivered { at } => sqlx::query(
                "UPDATE events SET delivered_at = $1, attempts = attempts + 1, claimed_until = NULL WHERE id = $2",
            )
            .bind(at),
            EventOutcome::Retry { next_at } => sqlx::query(
                "UPDATE events SET next_at = $1, attempts = attempts + 1, claimed_until = NULL WHERE id = $2",
            )
            .bind(next_at),
            EventOutcome::Abandoned { at } => sqlx::query(
                "UPDATE events SET abandoned_at = $1, attempts = attempts + 1, claimed_until = NULL WHERE id = $2",
            )
            .bind(at),
        };
        query.bind(id).execute(&self.pool).await?;
        Ok(())
    }

    async fn purge_events(&self, before: EpochMs) -> Result<u64, StoreError> {
        self.check_ready()?;
        let purged = sqlx::query(
            "DELETE FROM events WHERE (delivered_at IS NOT NULL AND delivered_at < $1) \
             OR (abandoned_at IS NOT NULL AND abandoned_at < $1)",
        )
        .bind(before)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(purged)
    }

    async fn tokens_expiring(&self, from: EpochMs, to: EpochMs) -> Result<Vec<TokenRecord>, StoreError> {
        self.check_ready()?;
        let sql =
            format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE valid_until BETWEEN $1 AND $2 ORDER BY valid_until, id");
        Ok(sqlx::query_as(&sql).bind(from).bind(to).fetch_all(&self.pool).await?)
    }

    async fn token_states(&self, now: EpochMs, soon: EpochMs) -> Result<TokenStates, StoreError> {
        self.check_ready()?;
        let (active, expiring, expired): (i64, i64, i64) = sqlx::query_as(
            "SELECT \
             count(*) FILTER (WHERE valid_until IS NULL OR valid_until > $1), \
             count(*) FILTER (WHERE valid_until > $1 AND valid_until <= $2), \
             count(*) FILTER (WHERE valid_until <= $1) \
             FROM tokens",
        )
        .bind(now)
        .bind(soon)
        .fetch_one(&self.pool)
        .await?;
        Ok(TokenStates {
            active,
            expiring,
            expired,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.check_ready()?;
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    fn revocation_feed(&self) -> Option<mpsc::Receiver<(ChangeKind, String)>> {
        let (feed, receiver) = mpsc::channel(FEED_QUEUE);
        tokio::spawn(follow_revocations(self.pool.clone(), self.options.clone(), feed));
        Some(receiver)
    }
}

fn kind_name(kind: AuditKind) -> &'static str {
    match kind {
        AuditKind::Request => "request",
        AuditKind::Management => "management",
    }
}

/// Serialises deletions (the lock is self-exclusive; pollers' reads pass):
/// revocation seqs are then taken in commit order, so a poller that has
/// seen seq N has seen every revocation before it.
async fn lock_revocations(tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
    sqlx::query("LOCK TABLE revocations IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Records changes for the pollers and announces them to the listeners;
/// PostgreSQL delivers the announcements only if the transaction commits.
/// The payload is the token id for a deletion (as before updates were
/// announced too), `update:ID` for an update.
async fn record_changes(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[String],
    kind: ChangeKind,
    at: EpochMs,
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("INSERT INTO revocations (token_id, revoked_at, kind) SELECT id, $2, $3 FROM unnest($1::text[]) AS id")
        .bind(ids)
        .bind(at)
        .bind(kind)
        .execute(&mut **tx)
        .await?;
    let prefix = match kind {
        ChangeKind::Delete => "",
        ChangeKind::Update => UPDATE_PREFIX,
    };
    sqlx::query("SELECT pg_notify($1, $3 || id) FROM unnest($2::text[]) AS id")
        .bind(REVOCATION_CHANNEL)
        .bind(ids)
        .bind(prefix)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// What an announced change is: `update:ID`, else a deletion of `ID`.
fn parse_announcement(payload: &str) -> (ChangeKind, String) {
    match payload.strip_prefix(UPDATE_PREFIX) {
        Some(id) => (ChangeKind::Update, id.to_owned()),
        None => (ChangeKind::Delete, payload.to_owned()),
    }
}

/// Forwards announced deletions to `feed` until its receiver is dropped or
/// `pool` (the store) is closed. LISTENs on a connection of its own and
/// reconnects with backoff when it is lost; announcements made meanwhile
/// are missed, which is why the gateway polls as well.
async fn follow_revocations(pool: PgPool, options: PgConnectOptions, feed: mpsc::Sender<(ChangeKind, String)>) {
    let listen_pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with(options);
    let closed = pool.close_event();
    tokio::pin!(closed);
    let mut retry = backoff();
    loop {
        tokio::select! {
            () = feed.closed() => break,
            () = &mut closed => break,
            () = listen_until_lost(&listen_pool, &feed, &mut retry) => {}
        }
        tokio::select! {
            () = feed.closed() => break,
            () = &mut closed => break,
            () = tokio::time::sleep(retry.next_delay()) => {}
        }
    }
    listen_pool.close().await;
}

/// LISTENs and forwards announcements until the connection fails.
async fn listen_until_lost(pool: &PgPool, feed: &mpsc::Sender<(ChangeKind, String)>, retry: &mut Backoff) {
    let mut listener = match PgListener::connect_with(pool).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::warn!(error = %e, "cannot connect to listen for token deletions; retrying (polling meanwhile)");
            return;
        }
    };
    // Reconnections go through the caller's backoff.
    listener.eager_reconnect(false);
    if let Err(e) = listener.listen(REVOCATION_CHANNEL).await {
        tracing::warn!(error = %e, "cannot listen for token deletions; retrying (polling meanwhile)");
        return;
    }
    tracing::debug!("listening for token deletions");
    *retry = backoff();
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                if feed.send(parse_announcement(notification.payload())).await.is_err() {
                    return;
                }
            }
            Ok(None) => {
                tracing::warn!("lost the connection listening for token deletions; reconnecting (polling meanwhile)");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "listening for token deletions failed; reconnecting (polling meanwhile)");
                return;
            }
        }
    }
}
