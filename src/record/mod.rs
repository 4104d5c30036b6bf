//! Recording what tokens did (SPEC §6), off the request path: usage
//! counters per token, the audit log with its background writer, and the
//! Prometheus metrics. [`flush`] writes out everything pending (at shutdown).

mod audit;
mod metrics;
mod usage;

pub use audit::AuditLog;
pub use metrics::{Decision, Metrics};
pub use usage::{TokenUsage, UsageBook};

use crate::app::App;
use crate::clock::DAY_MS;
use crate::store::{AuditEntry, AuditKind};

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

/// Writes pending usage counters to the store.
pub async fn flush_usage(app: &App) {
    let deltas = app.usage.drain();
    if deltas.is_empty() {
        return;
    }
    if let Err(e) = app.store.add_usage(&deltas).await {
        tracing::warn!(error = %e, tokens = deltas.len(), "cannot store usage counters; keeping them for the next flush");
        app.usage.restore(deltas);
    }
}

/// Revocations are kept this long: every running process polls them within
/// a second, so a day is a wide margin.
const REVOCATION_RETENTION_MS: i64 = DAY_MS;

/// Hourly housekeeping: old audit entries and revocations.
pub async fn purge_expired(app: &App) {
    purge_audit(app).await;
    let horizon = app.clock.now_ms() - REVOCATION_RETENTION_MS;
    if let Err(e) = app.store.purge_revocations(horizon).await {
        tracing::warn!(error = %e, "cannot purge old revocations");
    }
}

/// Deletes audit entries older than `audit_retention_days`.
pub async fn purge_audit(app: &App) {
    let horizon = app.clock.now_ms() - i64::from(app.config.audit_retention_days) * DAY_MS;
    match app.store.purge_audit(horizon).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(entries = n, "purged old audit entries"),
        Err(e) => tracing::warn!(error = %e, "cannot purge the audit log"),
    }
}

/// Writes out everything pending: usage counters and queued audit entries.
pub async fn flush(app: &App) {
    flush_usage(app).await;
    app.audit.flush().await;
}
