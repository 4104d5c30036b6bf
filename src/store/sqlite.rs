//! The SQLite store: one file (mode 0600, WAL), created with its directory on
//! first start, migrations from `migrations/sqlite` applied at open.

use std::fs::{self, OpenOptions, Permissions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, Transaction};

use super::shared::{ADD_USAGE_DAY, audit_columns, token_columns, token_store};
use super::{AuditEntry, ChangeKind, StoreError, TokenRecord, UsageDelta};
use crate::clock::EpochMs;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database a `sqlite://PATH` URL names.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let path =
            crate::config::sqlite_path(url).ok_or_else(|| StoreError::Url(format!("{url}: expected sqlite://PATH")))?;
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

    /// Always: the file is there once opened.
    fn check_ready(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn begin(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.pool.begin().await?)
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

token_store! {
    SqliteStore,
    user_is_3: "user_name = $3 COLLATE NOCASE",
    token_filter: "($1 IS NULL OR user_name = $1 COLLATE NOCASE) AND ($2 IS NULL OR instr(lower(label), lower($2)) > 0)",
    audit_filter: "($1 IS NULL OR token_id = $1) AND ($2 IS NULL OR user_name = $2 COLLATE NOCASE)",
    id_order: "id",
    fold: "lower",
    text_order: "",
    // SQLite runs the claim under its write lock: no sender sees it half done.
    claim_lock: "",
    {
        async fn delete_user_tokens(&self, user: &str, at: EpochMs) -> Result<Vec<TokenRecord>, StoreError> {
            let mut tx = self.begin().await?;
            let sql = concat!("DELETE FROM tokens WHERE user_name = $1 COLLATE NOCASE RETURNING ", token_columns!());
            let deleted: Vec<TokenRecord> = sqlx::query_as(sql).bind(user).fetch_all(&mut *tx).await?;
            let ids: Vec<String> = deleted.iter().map(|token| token.id.clone()).collect();
            record_changes(&mut tx, &ids, ChangeKind::Delete, at).await?;
            tx.commit().await?;
            Ok(deleted)
        }

        async fn add_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError> {
            let mut tx = self.pool.begin().await?;
            for delta in deltas {
                if delta.calls > 0 {
                    sqlx::query(
                        "UPDATE tokens SET counter = counter + $1, \
                         last_ip = CASE WHEN $2 >= coalesce(last_used_at, 0) THEN $3 ELSE last_ip END, \
                         last_used_at = max(coalesce(last_used_at, 0), $2) WHERE id = $4",
                    )
                    .bind(delta.calls)
                    .bind(delta.last_used_at)
                    .bind(&delta.last_ip)
                    .bind(&delta.token_id)
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query(ADD_USAGE_DAY)
                    .bind(&delta.token_id)
                    .bind(delta.day)
                    .bind(delta.calls)
                    .bind(delta.refused)
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
    }
}

/// Nothing to do: SQLite runs one writer at a time, so the count of a
/// user's tokens and the insert cannot interleave with another creation.
async fn lock_user(_: &mut Transaction<'_, Sqlite>, _: &str) -> Result<(), StoreError> {
    Ok(())
}

/// Nothing to do: with one writer at a time, change seqs follow commit order.
async fn lock_revocations(_: &mut Transaction<'_, Sqlite>) -> Result<(), StoreError> {
    Ok(())
}

/// Records changes for the pollers (every process polls: SQLite announces nothing).
async fn record_changes(
    tx: &mut Transaction<'_, Sqlite>,
    ids: &[String],
    kind: ChangeKind,
    at: EpochMs,
) -> Result<(), StoreError> {
    for id in ids {
        sqlx::query("INSERT INTO revocations (token_id, revoked_at, kind) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(at)
            .bind(kind)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
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
        format!("INSERT INTO audit ({}) VALUES {values}", audit_columns!())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::TokenStore;
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
