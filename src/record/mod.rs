//! Recording what tokens did (SPEC §6): usage counters per token (in
//! memory, flushed in batches), the audit log with its background writer
//! (requests wait only when its queue is full), and the Prometheus metrics.
//! The server runs the periodic jobs here ([`flush_usage`],
//! [`purge_expired`]) and [`flush`] at shutdown.

mod audit;
mod metrics;
mod throttled;
mod usage;

use std::borrow::Cow;

pub use audit::AuditLog;
pub use metrics::{Decision, LookupResult, Metrics};
pub use throttled::{Logged, RefusalLog, ThrottleTally};
pub use usage::{TokenUsage, UsageBook};

use crate::clock::{DAY_MS, EpochMs, day_of};
use crate::store::{AuditEntry, AuditKind, TokenStore};

/// Most bytes of path and query an audit entry or a log line keeps (SPEC §12).
pub const MAX_PATH_BYTES: usize = 2048;
/// Most bytes of a user name an audit entry or a log line keeps.
pub const MAX_USER_BYTES: usize = 256;
/// Most bytes of a method (an extension method can be long).
pub const MAX_METHOD_BYTES: usize = 32;

/// `text` cut to at most `max` bytes, on a character boundary, with `…` at
/// the cut (within the `max`), so that nobody fills the disk through
/// the records.
pub fn bounded(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    const MARK: &str = "…";
    let mut end = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}{MARK}", &text[..end]))
}

/// Cuts an owned field in place when it is too long.
fn bound(field: &mut Option<String>, max: usize) {
    if let Some(text) = field
        && let Cow::Owned(cut) = bounded(text, max)
    {
        *text = cut;
    }
}

/// An entry as it is stored and logged: every free-text field bounded.
pub fn bounded_entry(mut entry: AuditEntry) -> AuditEntry {
    bound(&mut entry.path, MAX_PATH_BYTES);
    bound(&mut entry.detail, MAX_PATH_BYTES);
    bound(&mut entry.user, MAX_USER_BYTES);
    bound(&mut entry.token_label, MAX_USER_BYTES);
    bound(&mut entry.method, MAX_METHOD_BYTES);
    entry
}

/// An audit entry as the management API's `audit` and `tokengate audit --json` show it.
pub fn audit_json(e: &AuditEntry) -> serde_json::Value {
    serde_json::json!({
        "time": e.at,
        "kind": match e.kind { AuditKind::Request => "request", AuditKind::Management => "management" },
        "tokenId": e.token_id,
        "tokenLabel": e.token_label,
        "user": e.user,
        "clientIp": e.client_ip,
        "method": e.method,
        "path": e.path,
        "status": e.status,
        "decision": e.decision,
        "reason": e.reason,
        "durationMs": e.duration_ms,
        "detail": e.detail,
    })
}

/// Writes pending usage counters to the store; what it does not take is kept
/// for the next flush.
pub async fn flush_usage(usage: &UsageBook, store: &dyn TokenStore) {
    let deltas = usage.drain();
    if deltas.is_empty() {
        return;
    }
    if let Err(e) = store.add_usage(&deltas).await {
        tracing::warn!(error = %e, tokens = deltas.len(), "cannot store usage counters; keeping them for the next flush");
        usage.restore(deltas);
    }
}

/// Revocations are kept this long: every running process polls them within
/// a second, so a day is a wide margin.
const REVOCATION_RETENTION_MS: i64 = DAY_MS;

/// How many days of calls per day are kept, today included: the most
/// `GET /usage` serves (SPEC §15.1).
pub const USAGE_DAYS_KEPT: i64 = 90;

/// Housekeeping: audit entries older than `audit_retention_days`, days of
/// usage older than [`USAGE_DAYS_KEPT`], and old revocations.
pub async fn purge_expired(store: &dyn TokenStore, now: EpochMs, audit_retention_days: u32) {
    let horizon = now - i64::from(audit_retention_days) * DAY_MS;
    match store.purge_audit(horizon).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(entries = n, "purged old audit entries"),
        Err(e) => tracing::warn!(error = %e, "cannot purge the audit log"),
    }
    match store.purge_usage_days(day_of(now) - (USAGE_DAYS_KEPT - 1)).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(days = n, "purged old days of usage"),
        Err(e) => tracing::warn!(error = %e, "cannot purge old days of usage"),
    }
    if let Err(e) = store.purge_revocations(now - REVOCATION_RETENTION_MS).await {
        tracing::warn!(error = %e, "cannot purge old revocations");
    }
}

/// Writes out everything pending: usage counters and queued audit entries.
pub async fn flush(usage: &UsageBook, audit: &AuditLog, store: &dyn TokenStore) {
    flush_usage(usage, store).await;
    audit.flush().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_on_a_character_boundary_with_a_mark() {
        assert_eq!(bounded("short", 8), "short");
        assert_eq!(bounded("12345678", 8), "12345678");
        assert_eq!(bounded("123456789", 8), "12345…");
        // `é` is two bytes: the cut never splits it.
        assert_eq!(bounded("aéééé", 7), "aé…");
        let long = "/".repeat(100_000);
        assert_eq!(bounded(&long, MAX_PATH_BYTES).len(), MAX_PATH_BYTES);
    }
}
