//! The SQL both backends share, written once. Both read `$N` placeholders
//! (sqlx binds SQLite's `$N` by number, as PostgreSQL does), so every
//! statement here is one text; what differs between them is their small
//! dialect, given to [`token_store!`]:
//!
//! - how a user name is compared (SQLite's `COLLATE NOCASE`, PostgreSQL's
//!   `tokengate_fold`), in the listing filters and the per-user limit;
//! - how ids and sorted text compare bytewise (`COLLATE "C"` on
//!   PostgreSQL), and how text is folded to sort (`lower`, `tokengate_fold`:
//!   both ASCII only);
//! - how an event is claimed by one sender (`FOR UPDATE SKIP LOCKED`);
//! - and, as functions of the backend's module: `lock_user` (the per-user
//!   limit across replicas), `lock_revocations` (change seqs in commit
//!   order), `record_changes` (the change log, and its announcement).
//!
//! Each backend keeps what cannot be one text: opening, batched writes
//! (usage, audit), deleting a user's tokens, and the revocation feed.

/// The columns of a token row, in [`TokenRecord`](super::TokenRecord)'s order.
macro_rules! token_columns {
    () => {
        "id, label, user_name, author, limit_to, ip, created_at, valid_until, token_hash, lookup, counter, \
         last_used_at, last_ip, sealed_pat, upstream_token_id, rate_limit, enforce, spaces, previous_hash, \
         previous_lookup, previous_sealed_pat, grace_until"
    };
}

/// The columns of an audit row, in [`AuditEntry`](super::AuditEntry)'s order.
macro_rules! audit_columns {
    () => {
        "at, kind, token_id, token_label, user_name, client_ip, method, path, status, decision, reason, \
         duration_ms, detail"
    };
}

/// Adds a token's calls and refusals on one day (`$1` token, `$2` day, `$3`
/// calls, `$4` refused), unless the token was deleted meanwhile.
pub(super) const ADD_USAGE_DAY: &str = "INSERT INTO usage_days (token_id, day, calls, refused) \
     SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM tokens WHERE id = $1) \
     ON CONFLICT (token_id, day) DO UPDATE \
     SET calls = usage_days.calls + excluded.calls, refused = usage_days.refused + excluded.refused";

/// `impl TokenStore for $store`: the shared methods, in the backend's
/// dialect, and the backend's own. The backend's module provides
/// `self.check_ready()`, `self.begin()`, `self.pool`, and the functions
/// `lock_user`, `lock_revocations` and `record_changes`.
macro_rules! token_store {
    (
        $store:ty,
        user_is_3: $user_is_3:literal,
        token_filter: $token_filter:literal,
        audit_filter: $audit_filter:literal,
        id_order: $id_order:literal,
        fold: $fold:literal,
        text_order: $text_order:literal,
        claim_lock: $claim_lock:literal,
        { $($own:tt)* }
    ) => {
        #[async_trait::async_trait]
        impl $crate::store::TokenStore for $store {
            async fn insert_token(
                &self,
                t: &$crate::store::TokenRecord,
                max_per_user: Option<u64>,
            ) -> Result<bool, $crate::store::StoreError> {
                let mut tx = self.begin().await?;
                if let (Some(user), Some(_)) = (&t.user, max_per_user) {
                    lock_user(&mut tx, user).await?;
                }
                let inserted = sqlx::query(concat!(
                    "INSERT INTO tokens (id, label, user_name, author, limit_to, ip, created_at, valid_until, \
                     token_hash, lookup, counter, last_used_at, last_ip, sealed_pat, upstream_token_id, rate_limit, \
                     enforce, spaces) \
                     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $17, $18, $19 \
                     WHERE $16 IS NULL OR $3 IS NULL OR (SELECT count(*) FROM tokens WHERE ",
                    $user_is_3,
                    ") < $16"
                ))
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

            async fn update_token(
                &self,
                id: &str,
                r: &$crate::store::Restrictions,
                at: $crate::clock::EpochMs,
            ) -> Result<Option<$crate::store::TokenRecord>, $crate::store::StoreError> {
                let mut tx = self.begin().await?;
                lock_revocations(&mut tx).await?;
                let updated: Option<$crate::store::TokenRecord> = sqlx::query_as(concat!(
                    "UPDATE tokens SET label = $1, limit_to = $2, ip = $3, rate_limit = $4, enforce = $5, \
                     spaces = $6 WHERE id = $7 RETURNING ",
                    token_columns!()
                ))
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
                    record_changes(&mut tx, &[id.to_owned()], $crate::store::ChangeKind::Update, at).await?;
                }
                tx.commit().await?;
                Ok(updated)
            }

            async fn tokens_by_lookup(
                &self,
                lookup: &str,
            ) -> Result<Vec<$crate::store::TokenRecord>, $crate::store::StoreError> {
                self.check_ready()?;
                let sql = concat!("SELECT ", token_columns!(), " FROM tokens WHERE lookup = $1 OR previous_lookup = $1");
                Ok(sqlx::query_as(sql).bind(lookup).fetch_all(&self.pool).await?)
            }

            async fn token(&self, id: &str) -> Result<Option<$crate::store::TokenRecord>, $crate::store::StoreError> {
                self.check_ready()?;
                let sql = concat!("SELECT ", token_columns!(), " FROM tokens WHERE id = $1");
                Ok(sqlx::query_as(sql).bind(id).fetch_optional(&self.pool).await?)
            }

            async fn list_tokens(
                &self,
                q: &$crate::store::TokenQuery,
            ) -> Result<$crate::store::Page<$crate::store::ListedToken>, $crate::store::StoreError> {
                self.check_ready()?;

                let direction = if q.ascending { "ASC" } else { "DESC" };
                let today = $crate::clock::day_of(q.now);
                let listing = $crate::store::Listing {
                    table: "tokens",
                    // $6 and $7: the first and last day of the recent calls.
                    columns: concat!(
                        token_columns!(),
                        ", CAST((SELECT coalesce(sum(u.calls), 0) FROM usage_days u \
                         WHERE u.token_id = tokens.id AND u.day >= $6 AND u.day <= $7) AS BIGINT) AS recent_calls"
                    ),
                    // $3: the state; $4 and $5: now and soon, as token_states counts them.
                    filter: concat!(
                        $token_filter,
                        " AND ($3 IS NULL \
                         OR ($3 = 'active' AND (valid_until IS NULL OR valid_until > $4)) \
                         OR ($3 = 'expiring' AND valid_until > $4 AND valid_until <= $5) \
                         OR ($3 = 'expired' AND valid_until <= $4) \
                         OR ($3 = 'unbound' AND user_name IS NULL))"
                    ),
                    order: format!(
                        "{} {direction}, created_at DESC, {}",
                        q.order.sql($fold, $text_order),
                        $id_order
                    ),
                    filter_params: &[
                        q.user.clone().into(),
                        q.label.clone().into(),
                        q.state.map($crate::store::TokenState::name).into(),
                        q.now.into(),
                        q.soon.into(),
                    ],
                    column_params: &[(today - ($crate::store::RECENT_DAYS - 1)).into(), today.into()],
                };
                listing.page(&self.pool, q.start_at, q.max_results).await
            }

            async fn usage_days(
                &self,
                token_id: &str,
                from: $crate::clock::Day,
            ) -> Result<Vec<$crate::store::UsageDay>, $crate::store::StoreError> {
                self.check_ready()?;
                let sql = "SELECT day, calls, refused FROM usage_days WHERE token_id = $1 AND day >= $2 ORDER BY day";
                Ok(sqlx::query_as(sql).bind(token_id).bind(from).fetch_all(&self.pool).await?)
            }

            async fn purge_usage_days(&self, before: $crate::clock::Day) -> Result<u64, $crate::store::StoreError> {
                self.check_ready()?;
                let result = sqlx::query("DELETE FROM usage_days WHERE day < $1")
                    .bind(before)
                    .execute(&self.pool)
                    .await?;
                Ok(result.rows_affected())
            }

            async fn rotate_token(
                &self,
                id: &str,
                r: &$crate::store::Rotation,
                at: $crate::clock::EpochMs,
            ) -> Result<Option<$crate::store::TokenRecord>, $crate::store::StoreError> {
                let mut tx = self.begin().await?;
                lock_revocations(&mut tx).await?;
                // SET reads the row as it was: the replaced secret moves to previous_*.
                let rotated: Option<$crate::store::TokenRecord> = sqlx::query_as(concat!(
                    "UPDATE tokens SET \
                     previous_hash = CASE WHEN $1 IS NULL THEN NULL ELSE token_hash END, \
                     previous_lookup = CASE WHEN $1 IS NULL THEN NULL ELSE lookup END, \
                     previous_sealed_pat = CASE WHEN $1 IS NULL THEN NULL ELSE sealed_pat END, \
                     grace_until = $1, token_hash = $2, lookup = $3, sealed_pat = $4 \
                     WHERE id = $5 AND token_hash = $6 RETURNING ",
                    token_columns!()
                ))
                .bind(r.grace_until)
                .bind(&r.token_hash)
                .bind(&r.lookup)
                .bind(&r.sealed_pat)
                .bind(id)
                .bind(&r.replaces)
                .fetch_optional(&mut *tx)
                .await?;
                if rotated.is_some() {
                    record_changes(&mut tx, &[id.to_owned()], $crate::store::ChangeKind::Update, at).await?;
                }
                tx.commit().await?;
                Ok(rotated)
            }

            async fn delete_token(
                &self,
                id: &str,
                at: $crate::clock::EpochMs,
            ) -> Result<Option<$crate::store::TokenRecord>, $crate::store::StoreError> {
                let mut tx = self.begin().await?;
                lock_revocations(&mut tx).await?;
                let sql = concat!("DELETE FROM tokens WHERE id = $1 RETURNING ", token_columns!());
                let deleted: Option<$crate::store::TokenRecord> =
                    sqlx::query_as(sql).bind(id).fetch_optional(&mut *tx).await?;
                if deleted.is_some() {
                    record_changes(&mut tx, &[id.to_owned()], $crate::store::ChangeKind::Delete, at).await?;
                }
                tx.commit().await?;
                Ok(deleted)
            }

            async fn revocation_cursor(&self) -> Result<i64, $crate::store::StoreError> {
                self.check_ready()?;
                let seq: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM revocations")
                    .fetch_one(&self.pool)
                    .await?;
                Ok(seq.unwrap_or(0))
            }

            async fn revocations_after(
                &self,
                seq: i64,
            ) -> Result<Vec<$crate::store::TokenChange>, $crate::store::StoreError> {
                self.check_ready()?;
                let sql = "SELECT seq, token_id, kind FROM revocations WHERE seq > $1 ORDER BY seq";
                Ok(sqlx::query_as(sql).bind(seq).fetch_all(&self.pool).await?)
            }

            async fn purge_revocations(&self, before: $crate::clock::EpochMs) -> Result<u64, $crate::store::StoreError> {
                self.check_ready()?;
                // Keep the newest row, so a cursor never goes back.
                let sql = "DELETE FROM revocations WHERE revoked_at < $1 AND seq < (SELECT max(seq) FROM revocations)";
                let result = sqlx::query(sql).bind(before).execute(&self.pool).await?;
                Ok(result.rows_affected())
            }

            async fn list_audit(
                &self,
                q: &$crate::store::AuditQuery,
            ) -> Result<$crate::store::Page<$crate::store::AuditEntry>, $crate::store::StoreError> {
                self.check_ready()?;
                let listing = $crate::store::Listing {
                    table: "audit",
                    columns: audit_columns!(),
                    // $3: the outcome of a request (a cross-site call the
                    // gateway refused is a refusal too).
                    filter: concat!(
                        $audit_filter,
                        " AND ($3 IS NULL \
                         OR ($3 = 'allowed' AND kind = 'request' AND decision IN ('allow', 'report')) \
                         OR ($3 = 'refused' AND ((kind = 'request' AND decision = 'deny') \
                         OR (kind = 'management' AND decision = 'refused_cross_site'))))"
                    ),
                    order: "at DESC, id DESC".into(),
                    filter_params: &[
                        q.token_id.clone().into(),
                        q.user.clone().into(),
                        q.outcome.map($crate::store::AuditOutcome::name).into(),
                    ],
                    column_params: &[],
                };
                listing.page(&self.pool, q.start_at, q.max_results).await
            }

            async fn observed_calls(
                &self,
                token_id: &str,
                since: $crate::clock::EpochMs,
            ) -> Result<Vec<$crate::store::ObservedCall>, $crate::store::StoreError> {
                self.check_ready()?;
                let sql = "SELECT method, path, COUNT(*) AS calls FROM audit \
                     WHERE token_id = $1 AND at >= $2 AND kind = 'request' AND decision IN ('allow', 'report') \
                     AND method IS NOT NULL AND path IS NOT NULL \
                     GROUP BY method, path ORDER BY method, path";
                Ok(sqlx::query_as(sql).bind(token_id).bind(since).fetch_all(&self.pool).await?)
            }

            async fn purge_audit(&self, before: $crate::clock::EpochMs) -> Result<u64, $crate::store::StoreError> {
                self.check_ready()?;
                let result = sqlx::query("DELETE FROM audit WHERE at < $1")
                    .bind(before)
                    .execute(&self.pool)
                    .await?;
                Ok(result.rows_affected())
            }

            async fn settings(&self) -> Result<$crate::store::Settings, $crate::store::StoreError> {
                self.check_ready()?;
                let rows: Vec<(String, String)> = sqlx::query_as("SELECT name, value FROM settings")
                    .fetch_all(&self.pool)
                    .await?;
                let stored = |name: &str, default: bool| {
                    rows.iter()
                        .find(|(n, _)| n == name)
                        .map_or(default, |(_, value)| value == "true")
                };
                let defaults = $crate::store::Settings::default();
                Ok($crate::store::Settings {
                    usage_details: stored("usageDetails", defaults.usage_details),
                    audit_log: stored("auditLog", defaults.audit_log),
                })
            }

            async fn save_settings(&self, settings: $crate::store::Settings) -> Result<(), $crate::store::StoreError> {
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

            async fn insert_session(&self, s: &$crate::store::SessionRecord) -> Result<(), $crate::store::StoreError> {
                self.check_ready()?;
                sqlx::query(
                    "INSERT INTO sessions (id_hash, user_name, created_at, last_seen_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5)",
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

            async fn session(
                &self,
                id_hash: &str,
            ) -> Result<Option<$crate::store::SessionRecord>, $crate::store::StoreError> {
                self.check_ready()?;
                let sql = "SELECT id_hash, user_name, created_at, last_seen_at, expires_at FROM sessions \
                           WHERE id_hash = $1";
                Ok(sqlx::query_as(sql).bind(id_hash).fetch_optional(&self.pool).await?)
            }

            async fn touch_session(&self, id_hash: &str, at: $crate::clock::EpochMs) -> Result<(), $crate::store::StoreError> {
                self.check_ready()?;
                sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id_hash = $2 AND last_seen_at < $1")
                    .bind(at)
                    .bind(id_hash)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn delete_session(&self, id_hash: &str) -> Result<bool, $crate::store::StoreError> {
                self.check_ready()?;
                let deleted = sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
                    .bind(id_hash)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                Ok(deleted > 0)
            }

            async fn purge_sessions(
                &self,
                expired_before: $crate::clock::EpochMs,
                idle_before: $crate::clock::EpochMs,
            ) -> Result<u64, $crate::store::StoreError> {
                self.check_ready()?;
                let purged = sqlx::query("DELETE FROM sessions WHERE expires_at < $1 OR last_seen_at < $2")
                    .bind(expired_before)
                    .bind(idle_before)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                Ok(purged)
            }

            async fn enqueue_event(&self, e: &$crate::store::NewEvent) -> Result<bool, $crate::store::StoreError> {
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
                now: $crate::clock::EpochMs,
                lease_until: $crate::clock::EpochMs,
                limit: i64,
            ) -> Result<Vec<$crate::store::EventRecord>, $crate::store::StoreError> {
                self.check_ready()?;
                // One statement: the claim is atomic (SQLite runs it under its
                // write lock; PostgreSQL's other senders skip the rows it locks).
                let mut claimed: Vec<$crate::store::EventRecord> = sqlx::query_as(concat!(
                    "UPDATE events SET claimed_until = $2 WHERE id IN (\
                     SELECT id FROM events WHERE delivered_at IS NULL AND abandoned_at IS NULL AND next_at <= $1 \
                     AND (claimed_until IS NULL OR claimed_until <= $1) ORDER BY created_at, id LIMIT $3",
                    $claim_lock,
                    ") RETURNING id, event, body, created_at, attempts"
                ))
                .bind(now)
                .bind(lease_until)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                claimed.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
                Ok(claimed)
            }

            async fn finish_event(
                &self,
                id: &str,
                outcome: $crate::store::EventOutcome,
            ) -> Result<(), $crate::store::StoreError> {
                use $crate::store::EventOutcome;
                self.check_ready()?;
                let (sql, at) = match outcome {
                    EventOutcome::Delivered { at } => (
                        "UPDATE events SET delivered_at = $1, attempts = attempts + 1, claimed_until = NULL WHERE id = $2",
                        at,
                    ),
                    EventOutcome::Retry { next_at } => (
                        "UPDATE events SET next_at = $1, attempts = attempts + 1, claimed_until = NULL WHERE id = $2",
                        next_at,
                    ),
                    EventOutcome::Abandoned { at } => (
                        "UPDATE events SET abandoned_at = $1, attempts = attempts + 1, claimed_until = NULL WHERE id = $2",
                        at,
                    ),
                };
                sqlx::query(sql).bind(at).bind(id).execute(&self.pool).await?;
                Ok(())
            }

            async fn purge_events(&self, before: $crate::clock::EpochMs) -> Result<u64, $crate::store::StoreError> {
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

            async fn tokens_expiring(
                &self,
                from: $crate::clock::EpochMs,
                to: $crate::clock::EpochMs,
            ) -> Result<Vec<$crate::store::TokenRecord>, $crate::store::StoreError> {
                self.check_ready()?;
                let sql = concat!(
                    "SELECT ",
                    token_columns!(),
                    " FROM tokens WHERE valid_until BETWEEN $1 AND $2 ORDER BY valid_until, ",
                    $id_order
                );
                Ok(sqlx::query_as(sql).bind(from).bind(to).fetch_all(&self.pool).await?)
            }

            async fn token_states(
                &self,
                now: $crate::clock::EpochMs,
                soon: $crate::clock::EpochMs,
            ) -> Result<$crate::store::TokenStates, $crate::store::StoreError> {
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
                Ok($crate::store::TokenStates {
                    active,
                    expiring,
                    expired,
                })
            }

            async fn ping(&self) -> Result<(), $crate::store::StoreError> {
                self.check_ready()?;
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn close(&self) {
                self.pool.close().await;
            }

            $($own)*
        }
    };
}

pub(super) use {audit_columns, token_columns, token_store};
