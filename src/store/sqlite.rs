//! The SQLite store: one file (mode 0600, WAL), created with its directory on
//! first start, migrations from `migrations/sqlite` applied at open.

use std::fs::{self, OpenOptions, Permissions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::{
    AuditEntry, AuditQuery, ChangeKind, EventOutcome, EventRecord, Listing, NewEvent, OBSERVED_CALLS, ObservedCall,
    Page, Restrictions, Rotation, SessionRecord, Settings, StoreError, TokenChange, TokenQuery, TokenRecord,
    TokenStates, TokenStore, UsageDelta,
};
use crate::clock::EpochMs;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

const TOKEN_COLUMNS: &str = "id, label, user_name, author, limit_to, ip, created_at, valid_until, \
                             token_hash, lookup, counter, last_used_at, last_ip, sealed_pat, upstream_token_id, rate_limit, enforce, spaces, \
                             previous_hash, previous_lookup, previous_sealed_pat, grace_until";

pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database a `sqlite://PATH` URL names.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .filter(|p| !p.is_empty() && !p.contains('?'))
            .ok_or_else(|| StoreError::Url(format!("{url}: expected sqlite://PATH")))?;
        create_private_file(Path::new(path))?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(SqliteStore { pool })
    }
}

/// Creates the database file (and its directory) readable by its owner only,
/// before SQLite would create it with the process umask. SQLite gives the WAL
/// and shared-memory files the database file's mode.
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    let file_error = |source| StoreError::File {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(file_error)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(file_error)?;
    fs::set_permissions(path, Permissions::from_mode(0o600)).map_err(file_error)
}

#[async_trait]
impl TokenStore for SqliteStore {
    async fn insert_token(&self, t: &TokenRecord, max_per_user: Option<u64>) -> Result<bool, StoreError> {
        // One statement: SQLite runs it under its write lock, so the count
        // and the insert cannot interleave with another creation.
        let inserted = sqlx::query(
            "INSERT INTO tokens (id, label, user_name, author, limit_to, ip, created_at, valid_until, \
             token_hash, lookup, counter, last_used_at, last_ip, sealed_pat, upstream_token_id, rate_limit, enforce, spaces) \
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?17, ?18, ?19 \
             WHERE ?16 IS NULL OR ?3 IS NULL \
             OR (SELECT count(*) FROM tokens WHERE user_name = ?3 COLLATE NOCASE) < ?16",
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
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    async fn update_token(&self, id: &str, r: &Restrictions, at: EpochMs) -> Result<Option<TokenRecord>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let sql = format!(
            "UPDATE tokens SET label = ?, limit_to = ?, ip = ?, rate_limit = ?, enforce = ?, spaces = ? WHERE id = ? \
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
            record_change(&mut tx, id, ChangeKind::Update, at).await?;
        }
        tx.commit().await?;
        Ok(updated)
    }

    async fn tokens_by_lookup(&self, lookup: &str) -> Result<Vec<TokenRecord>, StoreError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE lookup = ?1 OR previous_lookup = ?1");
        Ok(sqlx::query_as(&sql).bind(lookup).fetch_all(&self.pool).await?)
    }

    async fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?");
        Ok(sqlx::query_as(&sql).bind(id).fetch_optional(&self.pool).await?)
    }

    async fn list_tokens(&self, q: &TokenQuery) -> Result<Page<TokenRecord>, StoreError> {
        let listing = Listing {
            table: "tokens",
            columns: TOKEN_COLUMNS,
            filter: "(?1 IS NULL OR user_name = ?1 COLLATE NOCASE) AND (?2 IS NULL OR instr(lower(label), lower(?2)) > 0)",
            limit: "LIMIT ?3 OFFSET ?4",
            order: "created_at DESC, id",
        };
        listing
            .page(&self.pool, [&q.user, &q.label], q.start_at, q.max_results)
            .await
    }

    async fn rotate_token(&self, id: &str, r: &Rotation, at: EpochMs) -> Result<Option<TokenRecord>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // SET reads the row as it was: the replaced secret moves to previous_*.
        let sql = format!(
            "UPDATE tokens SET \
             previous_hash = CASE WHEN ?1 IS NULL THEN NULL ELSE token_hash END, \
             previous_lookup = CASE WHEN ?1 IS NULL THEN NULL ELSE lookup END, \
             previous_sealed_pat = CASE WHEN ?1 IS NULL THEN NULL ELSE sealed_pat END, \
             grace_until = ?1, token_hash = ?2, lookup = ?3, sealed_pat = ?4 \
             WHERE id = ?5 AND token_hash = ?6 RETURNING {TOKEN_COLUMNS}"
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
            record_change(&mut tx, id, ChangeKind::Update, at).await?;
        }
        tx.commit().await?;
        Ok(rotated)
    }

    async fn delete_token(&self, id: &str, at: EpochMs) -> Result<Option<TokenRecord>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let sql = format!("DELETE FROM tokens WHERE id = ? RETURNING {TOKEN_COLUMNS}");
        let deleted: Option<TokenRecord> = sqlx::query_as(&sql).bind(id).fetch_optional(&mut *tx).await?;
        if deleted.is_some() {
            record_change(&mut tx, id, ChangeKind::Delete, at).await?;
        }
        tx.commit().await?;
        Ok(deleted)
    }

    async fn delete_user_tokens(&self, user: &str, at: EpochMs) -> Result<Vec<TokenRecord>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let sql = format!("DELETE FROM tokens WHERE user_name = ? COLLATE NOCASE RETURNING {TOKEN_COLUMNS}");
        let deleted: Vec<TokenRecord> = sqlx::query_as(&sql).bind(user).fetch_all(&mut *tx).await?;
        for token in &deleted {
            record_change(&mut tx, &token.id, ChangeKind::Delete, at).await?;
        }
        tx.commit().await?;
        Ok(deleted)
    }

    async fn revocation_cursor(&self) -> Result<i64, StoreError> {
        let (seq,): (Option<i64>,) = sqlx::query_as("SELECT max(seq) FROM revocations")
            .fetch_one(&self.pool)
            .await?;
        Ok(seq.unwrap_or(0))
    }

    async fn revocations_after(&self, seq: i64) -> Result<Vec<TokenChange>, StoreError> {
        Ok(
            sqlx::query_as("SELECT seq, token_id, kind FROM revocations WHERE seq > ? ORDER BY seq")
                .bind(seq)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn purge_revocations(&self, before: EpochMs) -> Result<u64, StoreError> {
        // Keep the newest row so AUTOINCREMENT cursors stay meaningful.
        let result =
            sqlx::query("DELETE FROM revocations WHERE revoked_at < ? AND seq < (SELECT max(seq) FROM revocations)")
                .bind(before)
                .execute(&self.pool)
                .await?;
        Ok(result.rows_affected())
    }

    async fn add_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for delta in deltas {
            sqlx::query(
                "UPDATE tokens SET counter = counter + ?1, \
                 last_ip = CASE WHEN ?2 >= coalesce(last_used_at, 0) THEN ?3 ELSE last_ip END, \
                 last_used_at = max(coalesce(last_used_at, 0), ?2) WHERE id = ?4",
            )
            .bind(delta.calls)
            .bind(delta.last_used_at)
            .bind(&delta.last_ip)
            .bind(&delta.token_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for chunk in statement_chunks(entries) {
            // Text is bound as borrowed `&str`: sqlx copies it no more than SQLite must.
            let mut insert = sqlx::query(audit_insert(chunk.len()));
            for e in chunk {
                insert = insert
                    .bind(e.at)
                    .bind(e.kind)
                    .bind(e.token_id.as_deref())
                    .bind(e.token_label.as_deref())
                    .bind(e.user.as_deref())
                    .bind(e.client_ip.as_deref())
                    .bind(e.method.as_deref())
                    .bind(e.path.as_deref())
                    .bind(e.status)
                    .bind(e.decision.as_str())
                    .bind(e.reason.as_deref())
                    .bind(e.duration_ms)
                    .bind(e.detail.as_deref());
            }
            insert.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_audit(&self, q: &AuditQuery) -> Result<Page<AuditEntry>, StoreError> {
        let listing = Listing {
            table: "audit",
            columns: "at, kind, token_id, token_label, user_name, client_ip, method, path, status, decision, \
                      reason, duration_ms, detail",
            filter: "(?1 IS NULL OR token_id = ?1) AND (?2 IS NULL OR user_name = ?2 COLLATE NOCASE)",
            limit: "LIMIT ?3 OFFSET ?4",
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
        let result = sqlx::query("DELETE FROM audit WHERE at < ?")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }

    async fn settings(&self) -> Result<Settings, StoreError> {
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
        let mut tx = self.pool.begin().await?;
        for (name, value) in [
            ("usageDetails", settings.usage_details),
            ("auditLog", settings.audit_log),
        ] {
            sqlx::query("INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value")
                .bind(name)
                .bind(value.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn insert_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sessions (id_hash, user_name, created_at, last_seen_at, expires_at) VALUES (?, ?, ?, ?, ?)",
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
        Ok(sqlx::query_as(
            "SELECT id_hash, user_name, created_at, last_seen_at, expires_at FROM sessions WHERE id_hash = ?",
        )
        .bind(id_hash)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn touch_session(&self, id_hash: &str, at: EpochMs) -> Result<(), StoreError> {
        sqlx::query("UPDATE sessions SET last_seen_at = ?1 WHERE id_hash = ?2 AND last_seen_at < ?1")
            .bind(at)
            .bind(id_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn delete_session(&self, id_hash: &str) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM sessions WHERE id_hash = ?")
            .bind(id_hash)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(deleted > 0)
    }

    async fn purge_sessions(&self, expired_before: EpochMs, idle_before: EpochMs) -> Result<u64, StoreError> {
        let purged = sqlx::query("DELETE FROM sessions WHERE expires_at < ? OR last_seen_at < ?")
            .bind(expired_before)
            .bind(idle_before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(purged)
    }

    async fn enqueue_event(&self, e: &NewEvent) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO events (id, event, body, created_at, next_at, once) VALUES (?1, ?2, ?3, ?4, ?4, ?5) \
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
        // One statement: the claim is atomic, and SQLite runs it under its write lock.
        let claimed: Vec<EventRecord> = sqlx::query_as(
            "UPDATE events SET claimed_until = ?2 WHERE id IN (\
             SELECT id FROM events WHERE delivered_at IS NULL AND abandoned_at IS NULL AND next_at <= ?1 \
             AND (claimed_until IS NULL OR claimed_until <= ?1) ORDER BY created_at, id LIMIT ?3) \
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
        let query = match outcome {
            EventOutcome::Delivered { at } => sqlx::query(
                "UPDATE events SET delivered_at = ?1, attempts = attempts + 1, claimed_until = NULL WHERE id = ?2",
            )
            .bind(at),
            EventOutcome::Retry { next_at } => sqlx::query(
                "UPDATE events SET next_at = ?1, attempts = attempts + 1, claimed_until = NULL WHERE id = ?2",
            )
            .bind(next_at),
            EventOutcome::Abandoned { at } => sqlx::query(
                "UPDATE events SET abandoned_at = ?1, attempts = attempts + 1, claimed_until = NULL WHERE id = ?2",
            )
            .bind(at),
        };
        query.bind(id).execute(&self.pool).await?;
        Ok(())
    }

    async fn purge_events(&self, before: EpochMs) -> Result<u64, StoreError> {
        let purged = sqlx::query(
            "DELETE FROM events WHERE (delivered_at IS NOT NULL AND delivered_at < ?1) \
             OR (abandoned_at IS NOT NULL AND abandoned_at < ?1)",
        )
        .bind(before)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(purged)
    }

    async fn tokens_expiring(&self, from: EpochMs, to: EpochMs) -> Result<Vec<TokenRecord>, StoreError> {
        let sql =
            format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE valid_until BETWEEN ?1 AND ?2 ORDER BY valid_until, id");
        Ok(sqlx::query_as(&sql).bind(from).bind(to).fetch_all(&self.pool).await?)
    }

    async fn token_states(&self, now: EpochMs, soon: EpochMs) -> Result<TokenStates, StoreError> {
        let (active, expiring, expired): (i64, i64, i64) = sqlx::query_as(
            "SELECT \
             count(*) FILTER (WHERE valid_until IS NULL OR valid_until > ?1), \
             count(*) FILTER (WHERE valid_until > ?1 AND valid_until <= ?2), \
             count(*) FILTER (WHERE valid_until <= ?1) \
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
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// Splits a batch into multi-row INSERTs of a few fixed sizes. One statement
/// per row costs a round trip to SQLite's worker thread each, more than the
/// row; one statement of any length would be prepared anew for every batch
/// length. Fixed sizes keep both costs down: every statement is a cached one.
fn statement_chunks<T>(mut rows: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let size = SIZES.into_iter().find(|size| *size <= rows.len())?;
        let (chunk, rest) = rows.split_at(size);
        rows = rest;
        Some(chunk)
    })
}

/// The row counts [`statement_chunks`] makes.
const SIZES: [usize; 4] = [256, 32, 8, 1];

/// The audit INSERT of `rows` rows (one of [`SIZES`]), written once per
/// process rather than once per batch.
fn audit_insert(rows: usize) -> &'static str {
    static STATEMENTS: [OnceLock<String>; SIZES.len()] = [const { OnceLock::new() }; SIZES.len()];
    let at = SIZES
        .iter()
        .position(|size| *size == rows)
        .expect("a statement_chunks size");
    STATEMENTS[at].get_or_init(|| {
        const ROW: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
        let values = vec![ROW; rows].join(", ");
        format!(
            "INSERT INTO audit (at, kind, token_id, token_label, user_name, client_ip, method, path, \
             status, decision, reason, duration_ms, detail) VALUES {values}"
        )
    })
}

async fn record_change(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    id: &str,
    kind: ChangeKind,
    at: EpochMs,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO revocations (token_id, revoked_at, kind) VALUES (?, ?, ?)")
        .bind(id)
        .bind(at)
        .bind(kind)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::test_record as record;

    async fn temp_store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/sub/dir/t.db", dir.path().display());
        let store = SqliteStore::open(&url).await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn creates_a_private_file_and_directory() {
        let (dir, store) = temp_store().await;
        store.ping().await.unwrap();
        let mode = fs::metadata(dir.path().join("sub/dir/t.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (journal,): (String,) = sqlx::query_as("PRAGMA journal_mode")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(journal, "wal");
    }

    #[tokio::test]
    async fn reopening_keeps_data_and_migrations_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let store = SqliteStore::open(&url).await.unwrap();
        store.insert_token(&record("a", None, 1), None).await.unwrap();
        store.close().await;
        let store = SqliteStore::open(&url).await.unwrap();
        assert_eq!(store.token("a").await.unwrap(), Some(record("a", None, 1)));
    }

    #[test]
    fn batches_split_into_fixed_statement_sizes() {
        let rows: Vec<u32> = (0..300).collect();
        let sizes: Vec<usize> = statement_chunks(&rows).map(<[u32]>::len).collect();
        assert_eq!(sizes, [256, 32, 8, 1, 1, 1, 1]);
        assert_eq!(statement_chunks(&rows).flatten().count(), 300);
        assert_eq!(statement_chunks::<u32>(&[]).count(), 0);
    }
}
