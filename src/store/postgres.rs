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

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use tokio::sync::mpsc;

use super::shared::{audit_columns, token_columns, token_store};
use super::{AuditEntry, AuditKind, ChangeKind, StoreError, TokenRecord, UsageDelta};
use crate::backoff::Backoff;
use crate::clock::{Day, EpochMs};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

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

token_store! {
    PgStore,
    user_is_3: "tokengate_fold(user_name) = tokengate_fold($3)",
    token_filter: "($1::text IS NULL OR tokengate_fold(user_name) = tokengate_fold($1)) \
                   AND ($2::text IS NULL OR strpos(tokengate_fold(label), tokengate_fold($2)) > 0)",
    audit_filter: "($1::text IS NULL OR token_id = $1) \
                   AND ($2::text IS NULL OR tokengate_fold(user_name) = tokengate_fold($2))",
    // Ids compare bytewise, as in SQLite, whatever the database collation.
    id_order: "id COLLATE \"C\"",
    // Sorted text folds and compares as SQLite's lower() and BINARY do.
    fold: "tokengate_fold",
    text_order: " COLLATE \"C\"",
    // Other senders skip the rows a claim locks.
    claim_lock: " FOR UPDATE SKIP LOCKED",
    {
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
            let sql = concat!("DELETE FROM tokens WHERE id = ANY($1) RETURNING ", token_columns!());
            let deleted: Vec<TokenRecord> = sqlx::query_as(sql).bind(&ids).fetch_all(&mut *tx).await?;
            record_changes(&mut tx, &ids, ChangeKind::Delete, at).await?;
            tx.commit().await?;
            Ok(deleted)
        }

        async fn add_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError> {
            if deltas.is_empty() {
                return Ok(());
            }
            // One row per token, in id order: the rows are locked in that order,
            // so replicas flushing at the same time wait for each other instead
            // of deadlocking, and `counter + calls` never loses an increment.
            let mut merged: BTreeMap<&str, (i64, EpochMs, &str)> = BTreeMap::new();
            // And one per token and day (a delta kept from a failed flush may
            // name an earlier day): ON CONFLICT may touch a row once.
            let mut days: BTreeMap<(&str, Day), (i64, i64)> = BTreeMap::new();
            for d in deltas {
                let day = days.entry((&d.token_id, d.day)).or_default();
                (day.0, day.1) = (day.0 + d.calls, day.1 + d.refused);
                if d.calls == 0 {
                    continue;
                }
                let entry = merged.entry(&d.token_id).or_insert((0, d.last_used_at, &d.last_ip));
                entry.0 += d.calls;
                if d.last_used_at >= entry.1 {
                    (entry.1, entry.2) = (d.last_used_at, &d.last_ip);
                }
            }
            let ids: Vec<&str> = days.keys().map(|(id, _)| *id).collect();
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
            .bind(merged.keys().copied().collect::<Vec<&str>>())
            .bind(merged.values().map(|v| v.0).collect::<Vec<i64>>())
            .bind(merged.values().map(|v| v.1).collect::<Vec<EpochMs>>())
            .bind(merged.values().map(|v| v.2).collect::<Vec<&str>>())
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO usage_days (token_id, day, calls, refused) \
                 SELECT d.id, d.day, d.calls, d.refused \
                 FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) AS d(id, day, calls, refused) \
                 WHERE EXISTS (SELECT 1 FROM tokens WHERE id = d.id) \
                 ON CONFLICT (token_id, day) DO UPDATE \
                 SET calls = usage_days.calls + excluded.calls, refused = usage_days.refused + excluded.refused",
            )
            .bind(&ids)
            .bind(days.keys().map(|(_, day)| *day).collect::<Vec<Day>>())
            .bind(days.values().map(|v| v.0).collect::<Vec<i64>>())
            .bind(days.values().map(|v| v.1).collect::<Vec<i64>>())
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
                concat!(
                    "INSERT INTO audit (",
                    audit_columns!(),
                    ") SELECT ",
                    audit_columns!(),
                    " FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                     $7::text[], $8::text[], $9::bigint[], $10::text[], $11::text[], $12::bigint[], $13::text[]) \
                     WITH ORDINALITY AS e(",
                    audit_columns!(),
                    ", n) ORDER BY n"
                ),
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

        fn revocation_feed(&self) -> Option<mpsc::Receiver<(ChangeKind, String)>> {
            let (feed, receiver) = mpsc::channel(FEED_QUEUE);
            tokio::spawn(follow_revocations(self.pool.clone(), self.options.clone(), feed));
            Some(receiver)
        }
    }
}

fn kind_name(kind: AuditKind) -> &'static str {
    match kind {
        AuditKind::Request => "request",
        AuditKind::Management => "management",
    }
}

/// One creation per user at a time, across replicas: the count of the
/// user's tokens then stays true until the transaction commits.
async fn lock_user(tx: &mut Transaction<'_, Postgres>, user: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tokengate user ' || tokengate_fold($1)))")
        .bind(user)
        .execute(&mut **tx)
        .await?;
    Ok(())
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
