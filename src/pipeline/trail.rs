//! What one request did, gathered on its way ([`Trail`]), and what is made
//! of it once it is answered: the refusal's log line, the metrics, the
//! throttle's count of failed attempts, and the audit entry.

use std::net::IpAddr;
use std::sync::Arc;

use hyper::{Method, Response};

use crate::app::App;
use crate::auth::{ActiveToken, RateState, throttle_key};
use crate::error::{Audience, GatewayError, Reason};
use crate::proxy::{ConnInfo, ResponseBody};
use crate::record::{Decision, Logged, MAX_PATH_BYTES, bounded};
use crate::routes::OwnRoute;
use crate::store::{AuditEntry, AuditKind};

/// What one request did, gathered on the way for the audit log, usage and metrics.
pub struct Trail {
    /// The request's span: fields are recorded into it as they become known.
    pub(super) span: tracing::Span,
    /// Whether the audit log is on: what only the audit entry needs is kept only then.
    pub(super) audit: bool,
    /// A `tgw_` credential was presented: the request is audited.
    pub(super) token_presented: bool,
    pub(super) token: Option<Arc<ActiveToken>>,
    pub(super) user: Option<String>,
    pub(super) client_ip: Option<IpAddr>,
    pub(super) path: Option<String>,
    pub(super) route: Option<OwnRoute>,
    /// The request came from the web page (it carries the session cookie).
    pub(super) from_page: bool,
    pub(super) decision: Option<Decision>,
    /// A limited token's bucket after this request: its headers go on the response.
    pub(super) rate: Option<RateState>,
    /// Why a report-only token's rules would have refused the request (SPEC §16).
    pub(super) reported: Option<Reason>,
    /// The audit entry's detail: what a report-only token's spaces would
    /// have done (SPEC §17), the refusal's message or the query they would
    /// have forwarded; or the space a space refusal concerns.
    pub(super) detail: Option<String>,
}

impl Trail {
    pub fn new(span: tracing::Span, audit: bool) -> Self {
        Trail {
            span,
            audit,
            token_presented: false,
            token: None,
            user: None,
            client_ip: None,
            path: None,
            route: None,
            from_page: false,
            decision: None,
            rate: None,
            reported: None,
            detail: None,
        }
    }

    pub(super) fn note_token(&mut self, token: Option<Arc<ActiveToken>>) {
        if let Some(token) = &token {
            self.span.record("token.id", token.id.as_str());
        }
        self.token = token;
    }

    /// Whom a refusal of this request is addressed to.
    pub(super) fn audience(&self, app: &App) -> Audience {
        match self.route {
            Some(OwnRoute::Ui) => Audience::Page,
            Some(OwnRoute::TokenTools) if self.from_page => Audience::Page,
            Some(OwnRoute::TokenTools) => Audience::Management(app.config.token_auth),
            _ => Audience::Proxy(app.config.token_auth),
        }
    }
}

/// Logs a refusal at `info`, its message bounded; a client's refusals only
/// up to a budget a minute, and a throttled client's not one by one
/// (they are counted), so that no client fills the disk through the log.
pub(super) fn log_refusal(app: &App, span: &tracing::Span, error: &GatewayError, client_ip: Option<IpAddr>) {
    if error.reason == Reason::TooManyFailures {
        return;
    }
    let logged = match client_ip {
        Some(ip) => app.refusal_log.log(throttle_key(ip), app.clock.now_ms()),
        None => Logged::Yes,
    };
    let message = bounded(&error.message, MAX_PATH_BYTES);
    let reason = error.reason.code();
    span.in_scope(|| match logged {
        Logged::Yes => tracing::info!(reason, "refused: {message}"),
        Logged::Last => tracing::info!(
            reason,
            "refused: {message} (this client's further refusals are not logged until the minute ends)"
        ),
        Logged::No => {}
    });
}

/// Metrics, the throttle's count of failed attempts, and the audit entry of
/// a token request. The audit entry waits for room when the writer's queue
/// is full, so recording is off the request path only while it keeps up.
pub(super) async fn record(
    app: &App,
    conn: &ConnInfo,
    trail: Trail,
    method: &Method,
    response: &Response<ResponseBody>,
    reason: Option<Reason>,
    elapsed: std::time::Duration,
) {
    if let (Some(reason), Some(ip)) = (reason, trail.client_ip)
        && reason.is_failed_attempt()
    {
        app.auth.record_failure(ip);
    }
    // A refusal is a denial whatever was decided before (Confluence may have
    // been unreachable); a report-only request is counted with the reason
    // its rules would have refused it for.
    let (decision, reason) = match (reason, trail.reported) {
        (Some(reason), _) => (Decision::Deny, Some(reason)),
        (None, reported) => (trail.decision.unwrap_or(Decision::Own), reported),
    };
    app.metrics.observe_request(decision, reason, elapsed);
    // A refusal of a known token counts on its day (SPEC §15.1); a request
    // refused after it was forwarded (Confluence unreachable, or served as
    // someone else) counted as a call already.
    if let (Some(_), Some(token)) = (reason, &trail.token)
        && !matches!(trail.decision, Some(Decision::Allow | Decision::Report))
        && app.settings.get().usage_details
    {
        token.usage.refuse(app.clock.now_ms());
    }
    trail.span.record("http.status", response.status().as_u16());
    trail.span.record("duration_ms", elapsed.as_millis() as u64);
    // A throttled client's refusals are one entry and one event per minute,
    // with their count (SPEC §12), whatever they presented.
    if let (Some(Reason::TooManyFailures), Some(ip)) = (reason, trail.client_ip) {
        app.throttled.count(throttle_key(ip), app.clock.now_ms());
        return;
    }
    if !(trail.token_presented && trail.audit) {
        return;
    }
    let entry = AuditEntry {
        at: app.clock.now_ms(),
        kind: AuditKind::Request,
        token_id: trail.token.as_ref().map(|t| t.id.clone()),
        token_label: trail.token.as_ref().map(|t| t.label.clone()),
        user: trail.user,
        client_ip: trail.client_ip.map(|ip| conn.ip_text(ip)),
        method: Some(method.as_str().to_owned()),
        path: trail.path,
        status: Some(i64::from(response.status().as_u16())),
        decision: decision.label().to_owned(),
        reason: reason.map(|r| r.code().to_owned()),
        duration_ms: Some(i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)),
        detail: trail.detail,
    };
    app.audit.record(entry).await;
}
