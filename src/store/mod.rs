//! Persistent state behind one trait, [`TokenStore`], so the gateway and the
//! tests can use either backend: SQLite (default, one process) or PostgreSQL
//! (several replicas).
//!
//! Deleting or updating a token also appends a [`TokenChange`]; every
//! process polls [`TokenStore::revocations_after`] to drop deleted tokens
//! from its verified cache and re-read updated ones, whichever process (CLI,
//! API, another replica) changed them. A backend that can push changes as
//! they commit (PostgreSQL's NOTIFY) offers them through
//! [`TokenStore::revocation_feed`] as well; polling stays the fallback.

mod postgres;
mod shared;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::clock::{Day, EpochMs};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// A stored token (SPEC §4). Never contains the token value.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TokenRecord {
    pub id: String,
    pub label: String,
    /// The bound user; `None` for an unbound token.
    #[sqlx(rename = "user_name")]
    pub user: Option<String>,
    pub author: String,
    /// Rule lines joined with `\n`; empty for none.
    pub limit_to: String,
    /// Comma-separated IPs and CIDRs; empty for any.
    pub ip: String,
    pub created_at: EpochMs,
    pub valid_until: Option<EpochMs>,
    pub token_hash: String,
    pub lookup: String,
    pub counter: i64,
    pub last_used_at: Option<EpochMs>,
    pub last_ip: Option<String>,
    /// The user's Confluence personal access token, sealed under this token
    /// (SPEC §13); `None` for a token made in header mode.
    pub sealed_pat: Option<Vec<u8>>,
    /// Confluence's id of a personal access token the gateway minted.
    pub upstream_token_id: Option<String>,
    /// The rate limit as written (`60/min`); `None` for none (SPEC §16).
    pub rate_limit: Option<String>,
    /// Whether the rules and spaces refuse what they do not allow (`false`:
    /// report-only, SPEC §16).
    pub enforce: bool,
    /// The space keys the token may touch, joined with `,` (SPEC §17);
    /// `None`: any space.
    pub spaces: Option<String>,
    /// The secret the last rotation replaced (SPEC §18): its hash, lookup
    /// and sealed PAT, accepted until `grace_until`; all `None` without grace.
    pub previous_hash: Option<String>,
    pub previous_lookup: Option<String>,
    pub previous_sealed_pat: Option<Vec<u8>>,
    pub grace_until: Option<EpochMs>,
}

/// A rotation (SPEC §18): the new secret's hash, lookup and sealed PAT. It
/// applies only while the token's hash is still `replaces` (two rotations
/// racing cannot both win), and keeps the replaced secret until
/// `grace_until` (`None`: it stops at once).
#[derive(Debug, Clone)]
pub struct Rotation {
    pub replaces: String,
    pub token_hash: String,
    pub lookup: String,
    pub sealed_pat: Option<Vec<u8>>,
    pub grace_until: Option<EpochMs>,
}

/// A webhook event to queue (SPEC §18).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub id: String,
    pub event: String,
    /// The JSON body, as sent.
    pub body: String,
    pub created_at: EpochMs,
    /// An event that may be raised again (an expiry threshold, a throttled
    /// client in one minute) is queued once per key, by whichever process.
    pub once: Option<String>,
}

/// A queued webhook event, as a sender claims it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct EventRecord {
    pub id: String,
    pub event: String,
    pub body: String,
    pub created_at: EpochMs,
    pub attempts: i64,
}

/// What became of one delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// The webhook answered 2xx.
    Delivered { at: EpochMs },
    /// Try again at `next_at`.
    Retry { next_at: EpochMs },
    /// 24 h of retries are over.
    Abandoned { at: EpochMs },
}

/// How many tokens are in each state (`tokengate_tokens{state}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenStates {
    pub active: i64,
    /// Active, and expiring within the warning window.
    pub expiring: i64,
    pub expired: i64,
}

/// What an update changes of a token: its restrictions, all given (the
/// token manager merges a partial request with the stored record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restrictions {
    pub label: String,
    pub limit_to: String,
    pub ip: String,
    pub rate_limit: Option<String>,
    pub enforce: bool,
    pub spaces: Option<String>,
}

/// Filters, order and paging for listing tokens.
#[derive(Debug, Clone, Default)]
pub struct TokenQuery {
    /// Bound user, compared case-insensitively.
    pub user: Option<String>,
    /// Case-insensitive substring of the label.
    pub label: Option<String>,
    pub state: Option<TokenState>,
    pub order: TokenOrder,
    /// Oldest, smallest, first (by default, newest first).
    pub ascending: bool,
    /// When states are judged, and the last day of the recent calls.
    pub now: EpochMs,
    /// Until when an active token counts as expiring.
    pub soon: EpochMs,
    pub start_at: u64,
    pub max_results: u64,
}

/// A listing's state filter (SPEC §15.1), judged at the query's `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    /// Not expired.
    Active,
    /// Not expired, but by the query's `soon`.
    Expiring,
    Expired,
    /// Bound to no user.
    Unbound,
}

impl TokenState {
    pub const ALL: [TokenState; 4] = [
        TokenState::Active,
        TokenState::Expiring,
        TokenState::Expired,
        TokenState::Unbound,
    ];

    /// Its name in the API (`state=`) and in SQL.
    pub fn name(self) -> &'static str {
        match self {
            TokenState::Active => "active",
            TokenState::Expiring => "expiring",
            TokenState::Expired => "expired",
            TokenState::Unbound => "unbound",
        }
    }
}

/// What a token listing is sorted by (SPEC §15.1); ties by newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenOrder {
    #[default]
    Created,
    Label,
    User,
    Spaces,
    /// Never expiring sorts after every date.
    Expires,
    /// Never used sorts before every time.
    LastUsed,
    /// Calls of the last [`RECENT_DAYS`].
    Calls,
}

impl TokenOrder {
    pub const ALL: [TokenOrder; 7] = [
        TokenOrder::Created,
        TokenOrder::Label,
        TokenOrder::User,
        TokenOrder::Spaces,
        TokenOrder::Expires,
        TokenOrder::LastUsed,
        TokenOrder::Calls,
    ];

    /// Its name in the API (`orderBy=`).
    pub fn name(self) -> &'static str {
        match self {
            TokenOrder::Created => "created",
            TokenOrder::Label => "label",
            TokenOrder::User => "user",
            TokenOrder::Spaces => "spaces",
            TokenOrder::Expires => "expires",
            TokenOrder::LastUsed => "lastUsed",
            TokenOrder::Calls => "calls",
        }
    }

    /// The SQL it sorts by (a column of the listing, or an expression of
    /// one), text folded by the backend's `fold` (ASCII only, as the
    /// filters fold) and compared bytewise by its `text_order`, so both
    /// backends sort alike whatever the database's collation.
    fn sql(self, fold: &str, text_order: &str) -> String {
        match self {
            TokenOrder::Created => "created_at".into(),
            TokenOrder::Label => format!("{fold}(label){text_order}"),
            TokenOrder::User => format!("{fold}(coalesce(user_name, '')){text_order}"),
            TokenOrder::Spaces => format!("coalesce(spaces, ''){text_order}"),
            TokenOrder::Expires => "coalesce(valid_until, 9223372036854775807)".into(),
            TokenOrder::LastUsed => "coalesce(last_used_at, 0)".into(),
            TokenOrder::Calls => "recent_calls".into(),
        }
    }
}

/// How many days a listing's recent calls cover ("Calls (30 days)").
pub const RECENT_DAYS: i64 = 30;

/// A listed token, with its calls of the last [`RECENT_DAYS`].
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ListedToken {
    #[sqlx(flatten)]
    pub record: TokenRecord,
    pub recent_calls: i64,
}

/// One token's calls on one UTC day (SPEC §15.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct UsageDay {
    pub day: Day,
    /// Forwarded to Confluence.
    pub calls: i64,
    /// Refused by the gateway.
    pub refused: i64,
}

/// One page of results and the total that matched.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub total: u64,
    pub items: Vec<T>,
}

impl<T> Default for Page<T> {
    /// Nothing matched.
    fn default() -> Self {
        Page {
            total: 0,
            items: Vec::new(),
        }
    }
}

/// A change every process must apply to what it has verified: a token
/// deleted or updated, in the order they happened. (Stored in the table
/// `revocations`, its name from when it held deletions only.)
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TokenChange {
    pub seq: i64,
    pub token_id: String,
    pub kind: ChangeKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "TEXT", rename_all = "lowercase")]
pub enum ChangeKind {
    /// Deleted: refuse it at once.
    Delete,
    /// Its restrictions changed: read it again.
    Update,
}

/// One audit log entry (SPEC §6).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditEntry {
    pub at: EpochMs,
    pub kind: AuditKind,
    pub token_id: Option<String>,
    pub token_label: Option<String>,
    /// For a request: who it acted as (or claimed to). For a management action: who did it.
    #[sqlx(rename = "user_name")]
    pub user: Option<String>,
    pub client_ip: Option<String>,
    pub method: Option<String>,
    /// The canonical path, never the query string.
    pub path: Option<String>,
    pub status: Option<i64>,
    /// `allow` or `deny` for a request; the action (`create`, `delete`, ...) for a management entry.
    pub decision: String,
    /// The reason code of a refusal.
    pub reason: Option<String>,
    pub duration_ms: Option<i64>,
    /// What a management action changed (never a token value).
    pub detail: Option<String>,
}

impl AuditEntry {
    /// A management action by `actor`; the caller fills in what it concerns.
    pub fn management(at: EpochMs, actor: &str, action: &str) -> AuditEntry {
        AuditEntry {
            at,
            kind: AuditKind::Management,
            token_id: None,
            token_label: None,
            user: Some(actor.to_owned()),
            client_ip: None,
            method: None,
            path: None,
            status: None,
            decision: action.to_owned(),
            reason: None,
            duration_ms: None,
            detail: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "TEXT", rename_all = "lowercase")]
pub enum AuditKind {
    Request,
    Management,
}

/// Calls of one method and path a token made, from the audit log.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ObservedCall {
    pub method: String,
    pub path: String,
    pub calls: i64,
}

/// Filters and paging for reading the audit log (newest first).
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub token_id: Option<String>,
    /// Case-insensitive.
    pub user: Option<String>,
    /// Requests with this outcome only (management entries have none).
    pub outcome: Option<AuditOutcome>,
    pub start_at: u64,
    pub max_results: u64,
}

/// What became of an audited request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditOutcome {
    /// Forwarded (decision `allow` or `report`).
    Allowed,
    /// Refused (decision `deny`).
    Refused,
}

impl AuditOutcome {
    pub const ALL: [AuditOutcome; 2] = [AuditOutcome::Allowed, AuditOutcome::Refused];

    /// Its name in the API (`outcome=`) and in SQL.
    pub fn name(self) -> &'static str {
        match self {
            AuditOutcome::Allowed => "allowed",
            AuditOutcome::Refused => "refused",
        }
    }
}

/// Usage of one token since the last flush (SPEC §6 usage details, §15.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    pub token_id: String,
    /// Calls forwarded.
    pub calls: i64,
    /// Calls refused.
    pub refused: i64,
    /// The latest forwarded call (0: none in this delta).
    pub last_used_at: EpochMs,
    pub last_ip: String,
    /// The day the calls and refusals count on.
    pub day: Day,
}

/// A web page session (SPEC §15): never the session id, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionRecord {
    /// Hex SHA-256 of the session id the cookie carries.
    pub id_hash: String,
    /// The user as Confluence spells the name.
    #[sqlx(rename = "user_name")]
    pub user: String,
    pub created_at: EpochMs,
    pub last_seen_at: EpochMs,
    pub expires_at: EpochMs,
}

/// Gateway-wide switches (SPEC §5 `usageDetails`, `auditLog`); both default on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub usage_details: bool,
    pub audit_log: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            usage_details: true,
            audit_log: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot prepare the database file {path}: {source}")]
    File { path: String, source: std::io::Error },
    #[error("unsupported database URL: {0}")]
    Url(String),
    /// The database has not answered since start-up: its migrations have not run yet.
    #[error("the database is not ready yet (migrations pending)")]
    NotReady,
}

#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// Inserts a token, unless its user already holds `max_per_user` tokens
    /// (then `false`, nothing stored). Checked and inserted atomically, so
    /// concurrent creations cannot pass the limit together.
    async fn insert_token(&self, token: &TokenRecord, max_per_user: Option<u64>) -> Result<bool, StoreError>;
    /// Candidate rows for a presented secret (normally zero or one): by the
    /// current secret's lookup, or a replaced one's still in grace.
    async fn tokens_by_lookup(&self, lookup: &str) -> Result<Vec<TokenRecord>, StoreError>;
    async fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// In the query's order, with each token's recent calls.
    async fn list_tokens(&self, query: &TokenQuery) -> Result<Page<ListedToken>, StoreError>;
    /// Replaces a token's restrictions and records the change for the other
    /// processes; returns the token as it now is (`None`: no such token).
    async fn update_token(
        &self,
        id: &str,
        restrictions: &Restrictions,
        at: EpochMs,
    ) -> Result<Option<TokenRecord>, StoreError>;
    /// Gives a token a new secret (SPEC §18) and records the change for the
    /// other processes; returns the token as it now is, `None` when there
    /// is no such token or its secret is no longer `rotation.replaces`.
    async fn rotate_token(&self, id: &str, rotation: &Rotation, at: EpochMs)
    -> Result<Option<TokenRecord>, StoreError>;
    /// Deletes one token and records its revocation; returns what was
    /// deleted (`None` when there was no such token).
    async fn delete_token(&self, id: &str, at: EpochMs) -> Result<Option<TokenRecord>, StoreError>;
    /// Deletes every token bound to `user` (case-insensitively); returns them.
    async fn delete_user_tokens(&self, user: &str, at: EpochMs) -> Result<Vec<TokenRecord>, StoreError>;
    /// The newest revocation seq, the cursor a new process starts polling from.
    async fn revocation_cursor(&self) -> Result<i64, StoreError>;
    /// Deletions and updates after `seq`, in order.
    async fn revocations_after(&self, seq: i64) -> Result<Vec<TokenChange>, StoreError>;
    /// Forgets revocations older than `before`; no process needs them any more.
    async fn purge_revocations(&self, before: EpochMs) -> Result<u64, StoreError>;
    /// Adds usage to tokens' counters and days (tokens deleted meanwhile are skipped).
    async fn add_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError>;
    /// A token's days from `from` on, oldest first; days without calls have no row.
    async fn usage_days(&self, token_id: &str, from: Day) -> Result<Vec<UsageDay>, StoreError>;
    /// Forgets every token's days before `before`; returns how many.
    async fn purge_usage_days(&self, before: Day) -> Result<u64, StoreError>;
    /// Appends audit entries in one transaction.
    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError>;
    /// Newest first.
    async fn list_audit(&self, query: &AuditQuery) -> Result<Page<AuditEntry>, StoreError>;
    /// Deletes entries older than `before`; returns how many.
    async fn purge_audit(&self, before: EpochMs) -> Result<u64, StoreError>;
    /// A token's forwarded requests (decision `allow` or `report`) at or
    /// after `since`, counted per method and path, ordered by both (for
    /// suggested rules, SPEC §16).
    async fn observed_calls(&self, token_id: &str, since: EpochMs) -> Result<Vec<ObservedCall>, StoreError>;
    /// The stored settings; defaults for any never set.
    async fn settings(&self) -> Result<Settings, StoreError>;
    async fn save_settings(&self, settings: Settings) -> Result<(), StoreError>;
    async fn insert_session(&self, session: &SessionRecord) -> Result<(), StoreError>;
    async fn session(&self, id_hash: &str) -> Result<Option<SessionRecord>, StoreError>;
    /// Records that the session was used at `at`.
    async fn touch_session(&self, id_hash: &str, at: EpochMs) -> Result<(), StoreError>;
    /// Ends a session; false when there was none.
    async fn delete_session(&self, id_hash: &str) -> Result<bool, StoreError>;
    /// Deletes sessions that expired, or were last used, before `before`.
    async fn purge_sessions(&self, expired_before: EpochMs, idle_before: EpochMs) -> Result<u64, StoreError>;
    /// Queues a webhook event; one with `once` only if no event was ever
    /// queued with that key (`false`: it was, nothing queued).
    async fn enqueue_event(&self, event: &NewEvent) -> Result<bool, StoreError>;
    /// Claims up to `limit` events due at `now`, oldest first, until
    /// `lease_until`: no other sender gets them meanwhile (PostgreSQL: row
    /// locks skipped by the others), and a sender that dies lets them lapse.
    async fn claim_events(
        &self,
        now: EpochMs,
        lease_until: EpochMs,
        limit: i64,
    ) -> Result<Vec<EventRecord>, StoreError>;
    /// Records what a delivery attempt of a claimed event came to.
    async fn finish_event(&self, id: &str, outcome: EventOutcome) -> Result<(), StoreError>;
    /// Forgets delivered and abandoned events older than `before`.
    async fn purge_events(&self, before: EpochMs) -> Result<u64, StoreError>;
    /// Tokens whose expiry lies in `from..=to`.
    async fn tokens_expiring(&self, from: EpochMs, to: EpochMs) -> Result<Vec<TokenRecord>, StoreError>;
    /// How many tokens are active, expiring by `soon`, and expired at `now`.
    async fn token_states(&self, now: EpochMs, soon: EpochMs) -> Result<TokenStates, StoreError>;
    /// Whether the store answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
    async fn close(&self);
    /// Ids of tokens deleted by any process, pushed soon after each deletion
    /// commits, when the backend can push them (PostgreSQL: LISTEN/NOTIFY).
    /// Best effort: ids may be missed while the feed reconnects, so callers
    /// keep polling [`revocations_after`](Self::revocations_after) too.
    /// `None` when the backend only supports polling. Each call starts a new
    /// feed; it stops when the receiver is dropped or the store is closed.
    fn revocation_feed(&self) -> Option<mpsc::Receiver<(ChangeKind, String)>> {
        None
    }
}

/// Opens the store a `database_url` names and applies its migrations; fails
/// when the database does not answer. For commands that run once (the CLI).
pub async fn open(database_url: &str) -> Result<Arc<dyn TokenStore>, StoreError> {
    match Backend::of(database_url)? {
        Backend::Sqlite => Ok(Arc::new(SqliteStore::open(database_url).await?)),
        Backend::Postgres => Ok(Arc::new(PgStore::open(database_url).await?)),
    }
}

/// Opens the store for a long-running gateway, which must start even when
/// its database is briefly unavailable: when PostgreSQL does not answer,
/// its migrations are retried in the background until it does (until then
/// every call fails with [`StoreError::NotReady`], so readiness is 503 and
/// new verifications fail closed). SQLite, a local file, opens as with [`open`].
pub async fn open_for_serving(database_url: &str) -> Result<Arc<dyn TokenStore>, StoreError> {
    match Backend::of(database_url)? {
        Backend::Sqlite => Ok(Arc::new(SqliteStore::open(database_url).await?)),
        Backend::Postgres => Ok(Arc::new(PgStore::open_for_serving(database_url).await?)),
    }
}

/// A filtered, ordered listing, paged. The filter's parameters come first
/// (`$1`..), and a NULL filter matches everything, so one statement serves
/// every combination of filters; the columns may use further parameters,
/// then LIMIT and OFFSET follow. The backends differ only in the filter's
/// functions ([`shared`]'s dialect).
struct Listing<'a> {
    table: &'static str,
    columns: &'static str,
    filter: &'static str,
    order: String,
    filter_params: &'a [Param],
    column_params: &'a [Param],
}

/// A value bound to a listing's statement.
#[derive(Debug, Clone)]
enum Param {
    Text(Option<String>),
    Number(i64),
}

impl From<Option<String>> for Param {
    fn from(text: Option<String>) -> Self {
        Param::Text(text)
    }
}

impl From<Option<&str>> for Param {
    fn from(text: Option<&str>) -> Self {
        Param::Text(text.map(str::to_owned))
    }
}

impl From<i64> for Param {
    fn from(number: i64) -> Self {
        Param::Number(number)
    }
}

/// Binds each [`Param`] to a query, in order.
macro_rules! bind {
    ($query:expr, $params:expr) => {{
        let mut query = $query;
        for param in $params {
            query = match param {
                Param::Text(text) => query.bind(text.clone()),
                Param::Number(number) => query.bind(*number),
            };
        }
        query
    }};
}

impl Listing<'_> {
    /// The total that matches, and one page of it.
    async fn page<DB, T>(&self, pool: &sqlx::Pool<DB>, start_at: u64, max_results: u64) -> Result<Page<T>, StoreError>
    where
        DB: sqlx::Database,
        for<'q> Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB> + sqlx::Decode<'q, DB>,
        for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
        for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
        usize: sqlx::ColumnIndex<DB::Row>,
        T: for<'r> sqlx::FromRow<'r, DB::Row> + Send + Unpin,
    {
        let Listing {
            table,
            columns,
            filter,
            order,
            filter_params,
            column_params,
        } = self;
        let count = format!("SELECT count(*) FROM {table} WHERE {filter}");
        let (total,) = bind!(sqlx::query_as::<DB, (i64,)>(&count), filter_params.iter())
            .fetch_one(pool)
            .await?;
        let limit = filter_params.len() + column_params.len() + 1;
        let select = format!(
            "SELECT {columns} FROM {table} WHERE {filter} ORDER BY {order} LIMIT ${limit} OFFSET ${}",
            limit + 1
        );
        let items = bind!(
            sqlx::query_as::<DB, T>(&select),
            filter_params.iter().chain(column_params.iter())
        )
        .bind(i64::try_from(max_results).unwrap_or(i64::MAX))
        .bind(i64::try_from(start_at).unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await?;
        Ok(Page {
            total: total.try_into().unwrap_or(0),
            items,
        })
    }
}

enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn of(database_url: &str) -> Result<Backend, StoreError> {
        if database_url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            // Only what follows the credentials: the URL may hold a password.
            Err(StoreError::Url(format!(
                "{}: expected sqlite:// or postgres://",
                database_url.split('@').next_back().unwrap_or_default()
            )))
        }
    }
}

/// A stored token for unit tests: no secret matches its hash.
#[cfg(test)]
pub(crate) fn test_record(id: &str, user: Option<&str>, created_at: EpochMs) -> TokenRecord {
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
        sealed_pat: None,
        upstream_token_id: None,
        rate_limit: None,
        enforce: true,
        spaces: None,
        previous_hash: None,
        previous_lookup: None,
        previous_sealed_pat: None,
        grace_until: None,
    }
}
