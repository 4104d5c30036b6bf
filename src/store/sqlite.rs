//! The SQLite store: one file (mode 0600, WAL), created with its directory on
//! first start, migrations from `migrations/sqlite` applied at open.

use std::fs::{self, OpenOptions, Permissions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::{
    AuditEntry, AuditQuery, Page, Revocation, Settings, StoreError, TokenQuery, TokenRecord, TokenStore, UsageDelta,
};
use crate::clock::EpochMs;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

const TOKEN_COLUMNS: &str = "id, label, user_name, author, limit_to, ip, created_at, valid_until, \
                             token_hash, lookup, counter, last_used_at, last_ip";

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
    async fn insert_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tokens (id, label, user_name, author, limit_to, ip, created_at, valid_until, \
             token_hash, lookup, counter, last_used_at, last_ip) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn tokens_by_lookup(&self, lookup: &str) -> Result<Vec<TokenRecord>, StoreError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE lookup = ?");
        Ok(sqlx::query_as(&sql).bind(lookup).fetch_all(&self.pool).await?)
    }

    async fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?");
        Ok(sqlx::query_as(&sql).bind(id).fetch_optional(&self.pool).await?)
    }

    async fn list_tokens(&self, q: &TokenQuery) -> Result<Page<TokenRecord>, StoreError> {
        // NULL filters match everything, so one statement serves every combination.
        const FILTER: &str = "(?1 IS NULL OR user_name = ?1 COLLATE NOCASE) \
                              AND (?2 IS NULL OR instr(lower(label), lower(?2)) > 0)";
        let (total,): (i64,) = sqlx::query_as(&format!("SELECT count(*) FROM tokens WHERE {FILTER}"))
            .bind(&q.user)
            .bind(&q.label)
            .fetch_one(&self.pool)
            .await?;
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE {FILTER} ORDER BY created_at DESC, id LIMIT ?3 OFFSET ?4"
        );
        let items = sqlx::query_as(&sql)
            .bind(&q.user)
            .bind(&q.label)
            .bind(i64::try_from(q.max_results).unwrap_or(i64::MAX))
            .bind(i64::try_from(q.start_at).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        Ok(Page {
            total: total.try_into().unwrap_or(0),
            items,
        })
    }

    async fn delete_token(&self, id: &str, at: EpochMs) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query("DELETE FROM tokens WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted > 0 {
            record_revocation(&mut tx, id, at).await?;
        }
        tx.commit().await?;
        Ok(deleted > 0)
    }

    async fn delete_user_tokens(&self, user: &str, at: EpochMs) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<(String,)> = sqlx::query_as("DELETE FROM tokens WHERE user_name = ? COLLATE NOCASE RETURNING id")
            .bind(user)
            .fetch_all(&mut *tx)
            .await?;
        for (id,) in &ids {
            record_revocation(&mut tx, id, at).await?;
        }
        tx.commit().await?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    async fn revocation_cursor(&self) -> Result<i64, StoreError> {
        let (seq,): (Option<i64>,) = sqlx::query_as("SELECT max(seq) FROM revocations")
            .fetch_one(&self.pool)
            .await?;
        Ok(seq.unwrap_or(0))
    }

    async fn revocations_after(&self, seq: i64) -> Result<Vec<Revocation>, StoreError> {
        Ok(
            sqlx::query_as("SELECT seq, token_id FROM revocations WHERE seq > ? ORDER BY seq")
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
        // One multi-row INSERT per chunk: each statement is a round trip to
        // SQLite's worker thread, which per row cost more than the rows.
        const ROWS_PER_STATEMENT: usize = 500;
        let mut tx = self.pool.begin().await?;
        for chunk in entries.chunks(ROWS_PER_STATEMENT) {
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO audit (at, kind, token_id, token_label, user_name, client_ip, method, path, \
                 status, decision, reason, duration_ms, detail) ",
            );
            insert.push_values(chunk, |mut row, e| {
                row.push_bind(e.at)
                    .push_bind(e.kind)
                    .push_bind(&e.token_id)
                    .push_bind(&e.token_label)
                    .push_bind(&e.user)
                    .push_bind(&e.client_ip)
                    .push_bind(&e.method)
                    .push_bind(&e.path)
                    .push_bind(e.status)
                    .push_bind(&e.decision)
                    .push_bind(&e.reason)
                    .push_bind(e.duration_ms)
                    .push_bind(&e.detail);
            });
            insert.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_audit(&self, q: &AuditQuery) -> Result<Page<AuditEntry>, StoreError> {
        const FILTER: &str = "(?1 IS NULL OR token_id = ?1) AND (?2 IS NULL OR user_name = ?2 COLLATE NOCASE)";
        let (total,): (i64,) = sqlx::query_as(&format!("SELECT count(*) FROM audit WHERE {FILTER}"))
            .bind(&q.token_id)
            .bind(&q.user)
            .fetch_one(&self.pool)
            .await?;
        let sql = format!(
            "SELECT at, kind, token_id, token_label, user_name, client_ip, method, path, status, decision, \
             reason, duration_ms, detail FROM audit WHERE {FILTER} ORDER BY at DESC, id DESC LIMIT ?3 OFFSET ?4"
        );
        let items = sqlx::query_as(&sql)
            .bind(&q.token_id)
            .bind(&q.user)
            .bind(i64::try_from(q.max_results).unwrap_or(i64::MAX))
            .bind(i64::try_from(q.start_at).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        Ok(Page {
            total: total.try_into().unwrap_or(0),
            items,
        })
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

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

async fn record_revocation(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    id: &str,
    at: EpochMs,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO revocations (token_id, revoked_at) VALUES (?, ?)")
        .bind(id)
        .bind(at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn record(id: &str, user: Option<&str>, created_at: EpochMs) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            label: format!("label {id}"),
            user: user.map(Into::into),
            author: "admin".into(),
            limit_to: String::new(),
            ip: String::new(),
            created_at,
            valid_until: None,
            token_hash: "$argon2id$...".into(),
            lookup: format!("tgw_{id:0>8}"),
            counter: 0,
            last_used_at: None,
            last_ip: None,
        }
    }

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
        store.insert_token(&record("a", None, 1)).await.unwrap();
        store.close().await;
        let store = SqliteStore::open(&url).await.unwrap();
        assert_eq!(store.token("a").await.unwrap(), Some(record("a", None, 1)));
    }

    #[tokio::test]
    async fn lists_newest_first_with_filters_and_paging() {
        let (_dir, store) = temp_store().await;
        for (i, user) in [Some("Alice"), Some("bob"), None, Some("alice")]
            .into_iter()
            .enumerate()
        {
            store
                .insert_token(&record(&format!("t{i}"), user, i as i64))
                .await
                .unwrap();
        }
        let all = store
            .list_tokens(&TokenQuery {
                max_results: 50,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(all.total, 4);
        let ids: Vec<_> = all.items.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["t3", "t2", "t1", "t0"]);

        let alice = TokenQuery {
            user: Some("ALICE".into()),
            max_results: 1,
            start_at: 1,
            ..Default::default()
        };
        let page = store.list_tokens(&alice).await.unwrap();
        assert_eq!((page.total, page.items[0].id.as_str()), (2, "t0"));

        let label = TokenQuery {
            label: Some("BEL T2".into()),
            max_results: 50,
            ..Default::default()
        };
        assert_eq!(store.list_tokens(&label).await.unwrap().items[0].id, "t2");
    }

    fn audit_entry(at: EpochMs, token: Option<&str>, user: &str) -> AuditEntry {
        AuditEntry {
            at,
            kind: super::super::AuditKind::Request,
            token_id: token.map(Into::into),
            token_label: None,
            user: Some(user.into()),
            client_ip: Some("10.0.0.1".into()),
            method: Some("GET".into()),
            path: Some("/rest/api/space".into()),
            status: Some(200),
            decision: "allow".into(),
            reason: None,
            duration_ms: Some(3),
            detail: None,
        }
    }

    #[tokio::test]
    async fn audit_entries_filter_page_and_purge() {
        let (_dir, store) = temp_store().await;
        let entries: Vec<_> = (0..5)
            .map(|i| {
                audit_entry(
                    i,
                    Some(if i % 2 == 0 { "even" } else { "odd" }),
                    if i < 3 { "Alice" } else { "bob" },
                )
            })
            .collect();
        store.append_audit(&entries).await.unwrap();
        let all = store
            .list_audit(&AuditQuery {
                max_results: 50,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(all.total, 5);
        assert_eq!(all.items.iter().map(|e| e.at).collect::<Vec<_>>(), [4, 3, 2, 1, 0]);
        assert_eq!(all.items[0], entries[4]);
        let even = AuditQuery {
            token_id: Some("even".into()),
            max_results: 1,
            start_at: 1,
            ..Default::default()
        };
        let page = store.list_audit(&even).await.unwrap();
        assert_eq!((page.total, page.items[0].at), (3, 2));
        let alice = AuditQuery {
            user: Some("alice".into()),
            max_results: 50,
            ..Default::default()
        };
        assert_eq!(store.list_audit(&alice).await.unwrap().total, 3);
        assert_eq!(store.purge_audit(2).await.unwrap(), 2);
        assert_eq!(
            store
                .list_audit(&AuditQuery {
                    max_results: 50,
                    ..Default::default()
                })
                .await
                .unwrap()
                .total,
            3
        );
    }

    #[tokio::test]
    async fn usage_adds_up_and_keeps_the_latest_ip() {
        let (_dir, store) = temp_store().await;
        store.insert_token(&record("a", None, 0)).await.unwrap();
        let delta = |calls, at, ip: &str| UsageDelta {
            token_id: "a".into(),
            calls,
            last_used_at: at,
            last_ip: ip.into(),
        };
        store.add_usage(&[delta(3, 100, "1.1.1.1")]).await.unwrap();
        store
            .add_usage(&[delta(2, 50, "2.2.2.2"), delta(1, 200, "3.3.3.3")])
            .await
            .unwrap();
        let stored = store.token("a").await.unwrap().unwrap();
        assert_eq!(
            (stored.counter, stored.last_used_at, stored.last_ip.as_deref()),
            (6, Some(200), Some("3.3.3.3"))
        );
        store
            .add_usage(&[UsageDelta {
                token_id: "gone".into(),
                ..delta(1, 1, "x")
            }])
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn settings_default_on_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let store = SqliteStore::open(&url).await.unwrap();
        assert_eq!(store.settings().await.unwrap(), Settings::default());
        let off = Settings {
            usage_details: false,
            audit_log: true,
        };
        store.save_settings(off).await.unwrap();
        store.close().await;
        let store = SqliteStore::open(&url).await.unwrap();
        assert_eq!(store.settings().await.unwrap(), off);
    }

    #[tokio::test]
    async fn deletions_are_recorded_as_revocations() {
        let (_dir, store) = temp_store().await;
        for (id, user) in [("a", Some("alice")), ("b", Some("ALICE")), ("c", Some("bob"))] {
            store.insert_token(&record(id, user, 0)).await.unwrap();
        }
        let cursor = store.revocation_cursor().await.unwrap();
        assert!(store.delete_token("c", 10).await.unwrap());
        assert!(!store.delete_token("c", 11).await.unwrap());
        let mut ids = store.delete_user_tokens("Alice", 12).await.unwrap();
        ids.sort();
        assert_eq!(ids, ["a", "b"]);
        let revoked: Vec<_> = store
            .revocations_after(cursor)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.token_id)
            .collect();
        assert_eq!(revoked.len(), 3);
        assert_eq!(revoked[0], "c");
        assert_eq!(store.purge_revocations(100).await.unwrap(), 2);
        assert_eq!(store.revocation_cursor().await.unwrap(), cursor + 3);
        assert!(store.tokens_by_lookup("tgw_0000000a").await.unwrap().is_empty());
    }
}
