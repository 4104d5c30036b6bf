//! One request, start to end (SPEC §2): canonicalise the target, strip
//! protected headers, serve the gateway's own routes, read credentials,
//! resolve and check a token, then forward, or answer with a [`GatewayError`].

pub mod authorize;
pub mod canonical;
pub mod client_ip;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http_body_util::Either;
use hyper::body::Incoming;
use hyper::{Request, Response};
use tracing::Instrument;
use tracing::field::Empty;

use crate::app::App;
use crate::auth::ActiveToken;
use crate::auth::credentials::{self, Credentials};
use crate::error::{GatewayError, Reason};
use crate::proxy::{Body, ConnInfo, Identity};
use crate::record::Decision;
use crate::store::{AuditEntry, AuditKind};
use authorize::CheckContext;
use canonical::Target;

/// What one request did, gathered on the way for the audit log, usage and metrics.
struct Trail {
    /// The request's span: fields are recorded into it as they become known.
    span: tracing::Span,
    /// Whether the audit log is on: what only the audit entry needs is kept only then.
    audit: bool,
    /// A `tgw_` credential was presented: the request is audited.
    token_presented: bool,
    token: Option<Arc<ActiveToken>>,
    user: Option<String>,
    client_ip: Option<IpAddr>,
    path: Option<String>,
    decision: Option<Decision>,
    /// Why an own route (the management API) refused, if it did.
    own_refusal: Option<Reason>,
}

impl Trail {
    fn new(span: tracing::Span, audit: bool) -> Self {
        Trail {
            span,
            audit,
            token_presented: false,
            token: None,
            user: None,
            client_ip: None,
            path: None,
            decision: None,
            own_refusal: None,
        }
    }
}

/// The reason code a response the gateway made itself carries, if any.
fn own_refusal(response: &Response<Body>) -> Option<Reason> {
    let code = response.headers().get("x-tokengate-reason")?.to_str().ok()?;
    Reason::from_code(code)
}

/// The outer handler: the only place that turns a failure into a response,
/// and where every request's outcome is recorded.
pub async fn handle(app: &App, conn: &ConnInfo, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let span = tracing::info_span!(
        "request",
        http.method = %method,
        url.path = Empty,
        client.ip = Empty,
        token.id = Empty,
        user = Empty,
        http.status = Empty,
        duration_ms = Empty,
    );
    let mut trail = Trail::new(span.clone(), app.settings.get().audit_log);
    let result = process(app, conn, req, &mut trail).instrument(span.clone()).await;
    let (response, reason) = match result {
        Ok(response) => (response, trail.own_refusal),
        Err(error) => {
            span.in_scope(|| tracing::info!(reason = error.reason.code(), "refused: {}", error.message));
            let reason = error.reason;
            (
                error.into_response(app.config.token_auth).map(Either::Right),
                Some(reason),
            )
        }
    };
    let elapsed = started.elapsed();
    if let (Some(reason), Some(ip)) = (reason, trail.client_ip)
        && reason.is_failed_token_attempt()
    {
        app.throttle.record_failure(ip, app.clock.now_ms());
    }
    let decision = if reason.is_some() {
        Decision::Deny
    } else {
        trail.decision.unwrap_or(Decision::Own)
    };
    app.metrics.observe_request(decision, reason, elapsed);
    span.record("http.status", response.status().as_u16());
    span.record("duration_ms", elapsed.as_millis() as u64);
    if trail.token_presented && trail.audit {
        let entry = AuditEntry {
            at: app.clock.now_ms(),
            kind: AuditKind::Request,
            token_id: trail.token.as_ref().map(|t| t.id.clone()),
            token_label: trail.token.as_ref().map(|t| t.label.clone()),
            user: trail.user,
            client_ip: trail.client_ip.map(|ip| ip.to_string()),
            method: Some(method.to_string()),
            path: trail.path,
            status: Some(i64::from(response.status().as_u16())),
            decision: if reason.is_some() { "deny" } else { "allow" }.to_owned(),
            reason: reason.map(|r| r.code().to_owned()),
            duration_ms: Some(i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)),
            detail: None,
        };
        app.audit.record(entry).await;
    }
    response
}

async fn process(
    app: &App,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    trail: &mut Trail,
) -> Result<Response<Body>, GatewayError> {
    let target = canonical::canonicalise(req.uri()).map_err(|e| GatewayError::new(Reason::BadPath, e.to_string()))?;
    trail.span.record("url.path", target.path.as_str());
    app.protected_headers.strip(req.headers_mut());
    let client_ip = client_ip::client_ip(conn.peer.ip(), req.headers(), &app.config.trusted_proxies);
    trail.span.record("client.ip", tracing::field::display(client_ip));
    trail.client_ip = Some(client_ip);
    if let Some(route) = crate::routes::own_route(&target.path) {
        let response = Box::pin(crate::routes::serve(app, route, req, &target, conn)).await?;
        trail.own_refusal = own_refusal(&response);
        return Ok(response);
    }
    let credentials = credentials::from_headers(req.headers())
        .map_err(|e| GatewayError::new(Reason::BadCredentials, e.to_string()))?;
    let (req, identity) = match credentials {
        None if app.config.allow_anonymous => (req.map(Either::Left), Identity::Passthrough),
        None => {
            return Err(GatewayError::new(
                Reason::CredentialsRequired,
                "credentials are required",
            ));
        }
        Some(credentials) => authenticate(app, req, &target, &credentials, client_ip, trail).await?,
    };
    trail.decision = Some(match identity {
        Identity::User(_) => Decision::Allow,
        Identity::Passthrough => Decision::Passthrough,
    });
    app.upstream.forward(req, &target, &identity, conn).await
}

/// The token a `tgw_` secret belongs to: from the verified cache, else
/// (unless this client is throttled) through the store and argon2.
pub async fn resolve_token(app: &App, secret: &str, client_ip: IpAddr) -> Result<Arc<ActiveToken>, GatewayError> {
    if let Some(token) = app.verifier.cached(secret).await {
        return Ok(token);
    }
    if let Some(retry_after) = app.throttle.blocked(client_ip, app.clock.now_ms()) {
        let mut error = GatewayError::new(Reason::TooManyFailures, "too many failed token attempts; retry later");
        error.retry_after = Some(retry_after);
        return Err(error);
    }
    Box::pin(app.verifier.verify_uncached(secret))
        .await
        .map_err(|e| GatewayError::internal(&e))?
        .ok_or_else(|| GatewayError::new(Reason::InvalidToken, "invalid credentials"))
}

/// Token resolution (SPEC §2.6) and the checks of §2.7 for a request with credentials.
async fn authenticate(
    app: &App,
    req: Request<Incoming>,
    target: &Target,
    credentials: &Credentials,
    client_ip: IpAddr,
    trail: &mut Trail,
) -> Result<(Request<Body>, Identity), GatewayError> {
    let Some((secret, scheme)) = credentials.gateway_token() else {
        if app.config.passthrough {
            return Ok((req.map(Either::Left), Identity::Passthrough));
        }
        return Err(GatewayError::new(
            Reason::InvalidToken,
            "only gateway tokens are accepted here",
        ));
    };
    trail.token_presented = true;
    if trail.audit {
        trail.path = Some(target.path.clone());
        trail.user = credentials.basic_user().map(str::to_owned);
    }
    let token = resolve_token(app, secret, client_ip).await?;
    trail.span.record("token.id", token.id.as_str());
    trail.token = Some(token.clone());
    if target.has_path_parameters {
        return Err(GatewayError::new(
            Reason::BadPath,
            "path parameters (';') are not allowed on token requests",
        ));
    }
    let now = app.clock.now_ms();
    let cx = CheckContext {
        scheme,
        basic_user: credentials.basic_user(),
        method: req.method(),
        path: &target.path,
        client_ip,
        now,
        token_auth: app.config.token_auth,
        scope: app.config.scope,
    };
    let user = authorize::check_token(&token, &cx)?;
    trail.span.record("user", user.as_str());
    if trail.audit {
        trail.user = Some(user.clone());
    }
    let req = authorize::check_rules(&token, req, &target.path, app.config.max_json_body).await?;
    if app.settings.get().usage_details {
        token.usage.record(now, client_ip);
    }
    tracing::debug!(scheme = scheme.name(), "token accepted");
    Ok((req, Identity::User(user)))
}
