//! One request, start to end (SPEC §2). [`decide`] runs every stage but
//! forwarding, in order, generic over the request body (so the tests drive
//! it without sockets):
//!
//! 1. canonicalise the target ([`crate::target`]); refuse two `Host`s;
//! 2. strip the headers no client may set ([`crate::proxy::headers`]);
//! 3. find the client IP ([`client_ip`]);
//! 4. serve the gateway's own routes ([`crate::routes`]);
//! 5. refuse tokens outside `Authorization`, decode the credentials;
//! 6. authenticate a token ([`crate::auth::Authenticator`]): resolution,
//!    throttle, checks, rules; or pass other credentials through;
//! 7. confine a token with spaces to them ([`crate::spaces`]).
//!
//! [`handle`] forwards what `decide` lets through ([`crate::proxy`]),
//! withholds an answer Confluence served as anyone but the token's user
//! ([`crate::auth::IdentityCheck`], SPEC §19), opens the tunnel of a WebSocket upgrade,
//! answers a refusal in the one shape of [`crate::error`], and records the
//! outcome: metrics, failed attempts for the throttle (a throttled client's
//! refusals counted, not recorded one by one), and the audit entry.

pub mod client_ip;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::header::{AUTHORIZATION, HOST};
use hyper::{Method, Request, Response};
use tracing::Instrument;
use tracing::field::Empty;

use crate::app::App;
use crate::auth::credentials::{self, Credentials};
use crate::auth::memo::{CredentialMemo, Recalled};
use crate::auth::sessions;
use crate::auth::{ActiveToken, PresentedToken, RateState, Refused, ReportOnly, RuleCheck, Via};
use crate::body::{ClientBody, Forwarded, RequestBody};
use crate::clock::EpochMs;
use crate::config::ForwardAs;
use crate::error::{self, Audience, GatewayError, Reason};
use crate::proxy::{ConnInfo, Identity, Lease, ResponseBody};
use crate::record::{Decision, Logged, MAX_METHOD_BYTES, MAX_PATH_BYTES, MAX_USER_BYTES, bounded};
use crate::routes::{self, OwnRoute};
use crate::spaces::{AskAs, Changed, Confined, Verdict};
use crate::store::{AuditEntry, AuditKind};
use crate::target::{self, Target};
use tokio::sync::OwnedSemaphorePermit;

/// A client connection, as each of its requests sees it: what the forwarder
/// needs (who the client is, and the upstream connection its requests
/// reuse), and the memo of the credentials its last token request presented.
pub struct Connection {
    pub info: ConnInfo,
    pub upstream: Arc<Lease>,
    pub memo: CredentialMemo,
    /// How long the memo keeps a token: as long as the verified cache would.
    memo_ttl_ms: EpochMs,
    /// The connection's place under `max_connections`, which a tunnel it
    /// becomes keeps for as long as it lives.
    slot: Option<Arc<OwnedSemaphorePermit>>,
}

impl Connection {
    pub fn new(info: ConnInfo, app: &App) -> Self {
        Connection {
            info,
            upstream: app.upstream.lease(),
            memo: CredentialMemo::default(),
            memo_ttl_ms: EpochMs::try_from(app.config.verify_cache_ttl.as_millis()).unwrap_or(EpochMs::MAX),
            slot: None,
        }
    }

    /// The connection, holding its place under `max_connections`.
    pub fn holding(mut self, slot: OwnedSemaphorePermit) -> Self {
        self.slot = Some(Arc::new(slot));
        self
    }
}

/// What a request presented, as the authentication sees it.
enum Presented<'a> {
    /// The same `Authorization` as the connection's last token request.
    Recalled(Recalled),
    Decoded(&'a Credentials),
}

/// What to do with a request once every check is done.
// Boxing the forwarded request would cost an allocation on every forwarded
// request; the value is moved once.
#[allow(clippy::large_enum_variant)]
pub enum Next<B> {
    /// Forward it to Confluence (its body may have been read by a JSON rule).
    Forward {
        req: Request<Forwarded<B>>,
        target: Target,
        identity: Identity,
    },
    /// The gateway answered it itself (an own route).
    Answer(Response<Full<Bytes>>),
}

/// What one request did, gathered on the way for the audit log, usage and metrics.
pub struct Trail {
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
    route: Option<OwnRoute>,
    /// The request came from the web page (it carries the session cookie).
    from_page: bool,
    decision: Option<Decision>,
    /// A limited token's bucket after this request: its headers go on the response.
    rate: Option<RateState>,
    /// Why a report-only token's rules would have refused the request (SPEC §16).
    reported: Option<Reason>,
    /// What a report-only token's spaces would have done (SPEC §17): the
    /// refusal's message, or the query they would have forwarded.
    report_detail: Option<String>,
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
            report_detail: None,
        }
    }

    fn note_token(&mut self, token: Option<Arc<ActiveToken>>) {
        if let Some(token) = &token {
            self.span.record("token.id", token.id.as_str());
        }
        self.token = token;
    }

    /// Whom a refusal of this request is addressed to.
    fn audience(&self, app: &App) -> Audience {
        match self.route {
            Some(OwnRoute::Ui) => Audience::Page,
            Some(OwnRoute::TokenTools) if self.from_page => Audience::Page,
            Some(OwnRoute::TokenTools) => Audience::Management(app.config.token_auth),
            _ => Audience::Proxy(app.config.token_auth),
        }
    }
}

/// The outer handler: the only place that turns a failure into a response,
/// logs it, and records every request's outcome.
pub async fn handle(app: &App, conn: &Connection, req: Request<ClientBody>) -> Response<ResponseBody> {
    let started = Instant::now();
    let method = req.method().clone();
    let span = tracing::info_span!(
        "request",
        http.method = %bounded(method.as_str(), MAX_METHOD_BYTES),
        url.path = Empty,
        client.ip = Empty,
        token.id = Empty,
        user = Empty,
        http.status = Empty,
        duration_ms = Empty,
    );
    let mut trail = Trail::new(span.clone(), app.settings.get().audit_log);
    let mut changed = Changed::Nothing;
    let result = async {
        match decide(app, conn, req, &mut trail).await? {
            Next::Answer(mut response) => {
                error::add_security_headers(response.headers_mut());
                Ok(response.map(Either::Right))
            }
            Next::Forward { req, target, identity } => {
                changed = Changed::by(method.as_str(), &target.path);
                forward(app, conn, req, &target, identity, &trail).await
            }
        }
    }
    .instrument(span.clone())
    .await;
    let (mut response, reason) = match result {
        Ok(response) => (response, None),
        Err(error) => {
            log_refusal(app, &span, &error, trail.client_ip);
            let reason = error.reason;
            let mut response = error.into_response(trail.audience(app));
            error::add_security_headers(response.headers_mut());
            (response.map(Either::Right), Some(reason))
        }
    };
    // Every answer to a limited token that got past its bucket carries the
    // bucket's headers, Confluence's answer and failure to answer alike.
    if let Some(rate) = &trail.rate {
        rate.apply(response.headers_mut());
    }
    // Any change through the gateway, whoever makes it, drops what it names
    // from the space lookups once it is answered (SPEC §17).
    app.spaces.forget(changed).await;
    record(app, &conn.info, trail, &method, &response, reason, started.elapsed()).await;
    response
}

/// Logs a refusal at `info`, its message bounded; a client's refusals only
/// up to a budget a minute, and a throttled client's not one by one
/// (they are counted), so that no client fills the disk through the log.
fn log_refusal(app: &App, span: &tracing::Span, error: &GatewayError, client_ip: Option<IpAddr>) {
    if error.reason == Reason::TooManyFailures {
        return;
    }
    let logged = match client_ip {
        Some(ip) => app.refusal_log.log(crate::auth::throttle_key(ip), app.clock.now_ms()),
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

/// Forwards a checked request and checks whom Confluence served it as
/// (SPEC §19): an answer to a token request served as anyone else is
/// dropped unread. A protocol switch Confluence agreed to becomes a tunnel
/// that keeps the connection's place and closes when its token ends.
async fn forward(
    app: &App,
    conn: &Connection,
    req: Request<crate::proxy::UpstreamBody>,
    target: &Target,
    identity: Identity,
    trail: &Trail,
) -> Result<Response<ResponseBody>, GatewayError> {
    // Whom Confluence must serve a token request as: the header's user, or
    // the PAT's, whose token is always bound (fail closed if not).
    let expected = match (&identity, &trail.token) {
        (Identity::Passthrough, _) => None,
        (Identity::User(user), Some(token)) => Some((user.clone(), token)),
        (Identity::Pat(_), Some(token)) => match &token.user {
            Some(user) => Some((user.clone(), token)),
            None => return Err(GatewayError::internal(&"a PAT-mode token without a user")),
        },
        (_, None) => return Err(GatewayError::internal(&"a token request forwarded without its token")),
    };
    let answer = app
        .upstream
        .forward(req, target, identity, &conn.info, &conn.upstream)
        .await?;
    if let Some((user, token)) = &expected {
        app.identity_check
            .check(&answer.served_as, user, token, app.clock.now_ms())?;
    }
    if let Some(tunnel) = answer.tunnel {
        // Switching now would leave the client a tunnel closed at once.
        if app.tunnels.is_closing() {
            return Err(GatewayError::new(Reason::Unavailable, "the gateway is shutting down").retry_after(1));
        }
        let ends = trail.token.clone().map(|token| token_ends(app.clone(), token));
        app.tunnels.open(tunnel, conn.slot.clone(), ends);
    }
    Ok(answer.response)
}

/// Completes within [`TUNNEL_CHECK`] of `token` no longer holding: deleted,
/// expired, or rotated past its grace.
async fn token_ends(app: App, mut token: Arc<ActiveToken>) {
    let mut every = tokio::time::interval(TUNNEL_CHECK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match app.auth.verifier().still_holds(&token).await {
            Ok(Some(fresh)) => token = fresh,
            Ok(None) => return,
            // The store did not answer: a deletion made here has flagged
            // the token already; one made elsewhere is seen once it answers.
            Err(e) => tracing::debug!(error = %e, "cannot read the tunnel's token again; will try again"),
        }
    }
}

/// How often a tunnel's token is looked at: well within the 1 s SPEC §12 allows.
const TUNNEL_CHECK: std::time::Duration = std::time::Duration::from_millis(200);

/// Every stage but forwarding, in SPEC order.
pub async fn decide<B: RequestBody>(
    app: &App,
    conn: &Connection,
    mut req: Request<B>,
    trail: &mut Trail,
) -> Result<Next<B>, GatewayError> {
    let mut target = target::canonicalise(req.uri()).map_err(|e| GatewayError::new(Reason::BadPath, e.to_string()))?;
    trail.span.record("url.path", &*bounded(&target.path, MAX_PATH_BYTES));
    if req.headers().get_all(HOST).iter().nth(1).is_some() {
        // RFC 9112 §3.2: a request with more than one Host is invalid.
        return Err(GatewayError::new(Reason::BadRequest, "more than one Host header"));
    }
    app.protected_headers.strip(req.headers_mut());
    let client_ip = client_ip::client_ip(conn.info.peer.ip(), req.headers(), &app.config.trusted_proxies);
    trail.span.record("client.ip", tracing::field::display(client_ip));
    trail.client_ip = Some(client_ip);
    if let Some(route) = routes::own_route(&target.path) {
        trail.route = Some(route);
        trail.decision = Some(Decision::Own);
        // Boxed: the management API's future is large and most requests never need it.
        trail.from_page = sessions::has_session_cookie(req.headers());
        let response = Box::pin(routes::serve(app, route, req, &target, &conn.info, client_ip)).await?;
        return Ok(Next::Answer(response));
    }
    credentials::refuse_tokens_elsewhere(req.headers(), target.query.as_deref())
        .map_err(|e| GatewayError::new(Reason::BadCredentials, e.to_string()))?;
    let (req, identity) = match conn.memo.recall(req.headers(), app.clock.now_ms()) {
        Some(recalled) => {
            let presented = Presented::Recalled(recalled);
            authenticate(app, conn, req, &mut target, presented, client_ip, trail).await?
        }
        None => match credentials::from_headers(req.headers())
            .map_err(|e| GatewayError::new(Reason::BadCredentials, e.to_string()))?
        {
            None if app.config.allow_anonymous => (req.map(Either::Left), Identity::Passthrough),
            None => {
                return Err(GatewayError::new(
                    Reason::CredentialsRequired,
                    "credentials are required",
                ));
            }
            Some(credentials) => {
                let presented = Presented::Decoded(&credentials);
                authenticate(app, conn, req, &mut target, presented, client_ip, trail).await?
            }
        },
    };
    trail.decision = Some(match identity {
        Identity::User(_) | Identity::Pat(_) if trail.reported.is_some() || trail.report_detail.is_some() => {
            Decision::Report
        }
        Identity::User(_) | Identity::Pat(_) => Decision::Allow,
        Identity::Passthrough => Decision::Passthrough,
    });
    Ok(Next::Forward { req, target, identity })
}

/// Token resolution (SPEC §2.6) and the checks of §2.7 for a request with
/// credentials; anything but a gateway token passes through (or is refused
/// with `passthrough = false`).
async fn authenticate<B: RequestBody>(
    app: &App,
    conn: &Connection,
    req: Request<B>,
    target: &mut Target,
    presented: Presented<'_>,
    client_ip: IpAddr,
    trail: &mut Trail,
) -> Result<(Request<Forwarded<B>>, Identity), GatewayError> {
    let (scheme, basic_user) = match &presented {
        Presented::Recalled(recalled) => (recalled.scheme, recalled.basic_user()),
        Presented::Decoded(credentials) => match credentials.gateway_token() {
            Some((_, scheme)) => (scheme, credentials.basic_user()),
            None if app.config.passthrough => return Ok((req.map(Either::Left), Identity::Passthrough)),
            None => {
                return Err(GatewayError::new(
                    Reason::InvalidToken,
                    "only gateway tokens are accepted here",
                ));
            }
        },
    };
    trail.token_presented = true;
    if trail.audit {
        trail.path = Some(target.path.clone());
        trail.user = basic_user.map(str::to_owned);
    }
    let (forward, checks) = (ReportOnly::Applies, RuleCheck::Apply);
    let authenticated = match &presented {
        Presented::Recalled(recalled) => {
            let token = recalled.token.clone();
            app.auth
                .authenticate_resolved(token, req, target, scheme, basic_user, client_ip, forward, checks)
                .await
        }
        Presented::Decoded(credentials) => {
            let authorization = req.headers().get(AUTHORIZATION).cloned();
            let presented = PresentedToken {
                secret: credentials
                    .gateway_token()
                    .map(|(secret, _)| secret)
                    .unwrap_or_default(),
                scheme,
                basic_user,
            };
            let authenticated = app
                .auth
                .authenticate_token(req, target, presented, client_ip, forward, checks)
                .await;
            // The next request of this connection with the same header skips
            // decoding and resolving it (never the checks).
            if let (Ok((_, principal, _)), Some(authorization)) = (&authenticated, authorization)
                && let Via::Token(token) = &principal.via
            {
                let until = app.clock.now_ms() + conn.memo_ttl_ms;
                conn.memo.remember(&authorization, token, scheme, basic_user, until);
            }
            authenticated
        }
    };
    let (req, principal, passage) = match authenticated {
        Ok(accepted) => accepted,
        Err(Refused { error, token }) => {
            trail.note_token(token);
            return Err(error);
        }
    };
    trail.rate = passage.rate;
    if let Some(waived) = passage.reported {
        tracing::info!(
            reason = waived.reason.code(),
            "report-only token: forwarded, though {}",
            bounded(&waived.message, MAX_PATH_BYTES)
        );
        trail.reported = Some(waived.reason);
    }
    trail.span.record("user", &*bounded(&principal.user, MAX_USER_BYTES));
    if trail.audit {
        trail.user = Some(principal.user.clone());
    }
    let Via::Token(token) = principal.via else {
        return Err(GatewayError::internal(
            &"a token request authenticated without its token",
        ));
    };
    trail.note_token(Some(token.clone()));
    let identity = match app.config.forward_as {
        ForwardAs::Header => Identity::User(principal.user),
        ForwardAs::Pat => Identity::Pat(app.auth.upstream_authorization(&token)?),
    };
    let req = confine(app, &conn.info, req, target, &token, &identity, trail).await?;
    if app.settings.get().usage_details {
        token.usage.record(app.clock.now_ms(), client_ip);
    }
    tracing::debug!(scheme = scheme.name(), "token accepted");
    Ok((req, identity))
}

/// The last check (SPEC §2.7): a token confined to spaces touches only
/// those (§17). An allowed request of an enforced token is forwarded with
/// its query confined; a report-only token's request is forwarded as sent,
/// and reported when the spaces would refuse it.
async fn confine<B: RequestBody>(
    app: &App,
    conn: &ConnInfo,
    req: Request<Forwarded<B>>,
    target: &mut Target,
    token: &ActiveToken,
    identity: &Identity,
    trail: &mut Trail,
) -> Result<Request<Forwarded<B>>, GatewayError> {
    let list = match &token.spaces {
        Ok(None) => return Ok(req),
        Ok(Some(list)) => list,
        Err(_) => {
            return Err(GatewayError::new(
                Reason::SpaceUnknown,
                format!(
                    "token '{}' has a space list that no longer parses; ask an admin to replace it",
                    token.label
                ),
            ));
        }
    };
    // Lookups are coalesced per user: the header's user, or a PAT's (whose
    // token is always bound).
    let user = match identity {
        Identity::User(user) => user.as_str(),
        _ => token.user.as_deref().unwrap_or_default(),
    };
    let ask_as = AskAs { identity, user, conn };
    let confined = Confined {
        label: &token.label,
        list,
    };
    // Not boxed: the confinement boxes what makes its future large (a body
    // read, a lookup), so a read of a cached id costs no allocation here.
    let (req, verdict) = app.spaces.confine(confined, req, target, ask_as).await?;
    match verdict {
        Verdict::Allowed { query: Some(query) } if token.enforce => target.set_query(query),
        Verdict::Allowed { query: Some(query) } => {
            let shown = bounded(&query, MAX_PATH_BYTES);
            tracing::info!("report-only token: forwarded as sent, though its spaces would forward the query {shown}");
            trail.report_detail = Some(format!("spaces would have forwarded the query {query}"));
        }
        Verdict::Allowed { query: None } => {}
        Verdict::Refused(error) if !token.enforce => {
            tracing::info!(
                reason = error.reason.code(),
                "report-only token: forwarded, though {}",
                bounded(&error.message, MAX_PATH_BYTES)
            );
            trail.report_detail = Some(error.message);
            trail.reported.get_or_insert(error.reason);
        }
        Verdict::Refused(error) => return Err(error),
    }
    Ok(req)
}

/// Metrics, the throttle's count of failed attempts, and the audit entry of
/// a token request. The audit entry waits for room when the writer's queue
/// is full, so recording is off the request path only while it keeps up.
async fn record(
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
    trail.span.record("http.status", response.status().as_u16());
    trail.span.record("duration_ms", elapsed.as_millis() as u64);
    // A throttled client's refusals are one entry and one event per minute,
    // with their count (SPEC §12), whatever they presented.
    if let (Some(Reason::TooManyFailures), Some(ip)) = (reason, trail.client_ip) {
        app.throttled.count(crate::auth::throttle_key(ip), app.clock.now_ms());
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
        detail: trail.report_detail,
    };
    app.audit.record(entry).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::test_app;
    use crate::tokens::NewToken;
    use base64::Engine;
    use http_body_util::BodyExt;

    fn basic(user: &str, secret: &str) -> String {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"));
        format!("Basic {encoded}")
    }

    fn conn(app: &App) -> Connection {
        Connection::new(ConnInfo::new("10.0.0.9:40000".parse().unwrap(), false), app)
    }

    async fn token(app: &App, limit_to: &str) -> String {
        let new = NewToken {
            label: "ci-bot".into(),
            user: Some("alice".into()),
            limit_to: Some(limit_to.into()),
            author: "admin".into(),
            ..NewToken::default()
        };
        app.tokens.create(new).await.unwrap().value
    }

    fn request(method: Method, target: &str, headers: &[(&str, &str)], body: &'static str) -> Request<Full<Bytes>> {
        let mut builder = Request::builder()
            .method(method)
            .uri(target)
            .header("host", "wiki.example.com");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(Full::new(Bytes::from_static(body.as_bytes()))).unwrap()
    }

    async fn decided(app: &App, req: Request<Full<Bytes>>) -> Result<Next<Full<Bytes>>, GatewayError> {
        let mut trail = Trail::new(tracing::Span::none(), true);
        decide(app, &conn(app), req, &mut trail).await
    }

    async fn refusal(app: &App, req: Request<Full<Bytes>>) -> &'static str {
        match decided(app, req).await {
            Err(error) => error.reason.code(),
            Ok(_) => panic!("the request was let through"),
        }
    }

    #[tokio::test]
    async fn a_token_request_is_forwarded_as_its_user_on_the_canonical_path() {
        let (app, _, _dir) = test_app(|_| {}).await;
        let secret = token(&app, "").await;
        let auth = basic("Alice", &secret);
        let req = request(
            Method::GET,
            "/rest/api/./space/../space?x=%2F",
            &[("authorization", &auth)],
            "",
        );
        let Ok(Next::Forward { req, target, identity }) = decided(&app, req).await else {
            panic!("not forwarded");
        };
        assert_eq!(identity, Identity::User("alice".into()));
        assert_eq!(target.forwarded().unwrap(), "/rest/api/space?x=%2F");
        assert!(matches!(req.body(), Either::Left(_)), "the body streams on");
    }

    #[tokio::test]
    async fn other_credentials_and_anonymous_requests_pass_through() {
        let (app, _, _dir) = test_app(|_| {}).await;
        let password = basic("alice", "password");
        for headers in [&[("authorization", password.as_str())][..], &[]] {
            let Ok(Next::Forward { identity, .. }) = decided(&app, request(Method::GET, "/x", headers, "")).await
            else {
                panic!("not forwarded");
            };
            assert_eq!(identity, Identity::Passthrough);
        }
        let (strict, _, _dir) = test_app(|c| {
            c.allow_anonymous = false;
            c.passthrough = false;
        })
        .await;
        assert_eq!(
            refusal(&strict, request(Method::GET, "/x", &[], "")).await,
            "credentials_required"
        );
        let req = request(Method::GET, "/x", &[("authorization", &password)], "");
        assert_eq!(refusal(&strict, req).await, "invalid_token");
    }

    #[tokio::test]
    async fn malformed_and_hostile_requests_are_refused_before_anything_is_forwarded() {
        let (app, _, _dir) = test_app(|_| {}).await;
        let secret = token(&app, "").await;
        let unknown = basic("alice", "tgw_unknownunknownunknownunknownunknown");
        let good = basic("alice", &secret);
        let cases: Vec<(Request<Full<Bytes>>, &str)> = vec![
            (
                request(Method::GET, "/rest/api/space", &[("authorization", &unknown)], ""),
                "invalid_token",
            ),
            (request(Method::GET, "/rest/%2e%2e/admin", &[], ""), "bad_path"),
            (
                request(Method::GET, "/rest/api/space", &[("authorization", "Basic !!!")], ""),
                "bad_credentials",
            ),
            (
                request(Method::GET, "/rest/api/space", &[("host", "evil.example")], ""),
                "bad_request",
            ),
            (
                request(Method::GET, "/rest/api/space", &[("x-api-key", &secret)], ""),
                "bad_credentials",
            ),
            (
                request(
                    Method::GET,
                    "/rest/api/space",
                    &[("cookie", &format!("t={secret}"))],
                    "",
                ),
                "bad_credentials",
            ),
            (
                request(
                    Method::GET,
                    &format!("/login.action?os_username=alice&os_password={secret}"),
                    &[],
                    "",
                ),
                "bad_credentials",
            ),
            (
                request(Method::GET, "/rest/api/space;x=1", &[("authorization", &good)], ""),
                "bad_path",
            ),
            (
                request(Method::GET, "/admin", &[("authorization", &good)], ""),
                "out_of_scope",
            ),
        ];
        for (req, reason) in cases {
            let what = format!("{} {:?}", req.uri(), req.headers().keys().collect::<Vec<_>>());
            assert_eq!(refusal(&app, req).await, reason, "{what}");
        }
    }

    #[tokio::test]
    async fn a_json_rule_reads_the_body_and_forwards_it_byte_for_byte() {
        let (app, _, _dir) = test_app(|_| {}).await;
        let secret = token(&app, "[post].*/rest/api/content/?[JsonData::type==page]").await;
        let auth = basic("alice", &secret);
        let json = ("content-type", "application/json");
        let body = r#"{"type":"page", "title":"x"}"#;
        let req = request(
            Method::POST,
            "/rest/api/content",
            &[("authorization", &auth), json],
            body,
        );
        let Ok(Next::Forward { req, .. }) = decided(&app, req).await else {
            panic!("not forwarded");
        };
        assert!(matches!(req.body(), Either::Right(_)), "buffered");
        assert_eq!(req.into_body().collect().await.unwrap().to_bytes(), body);
        let comment = request(
            Method::POST,
            "/rest/api/content",
            &[("authorization", &auth), json],
            r#"{"type":"comment"}"#,
        );
        assert_eq!(refusal(&app, comment).await, "rule_mismatch");
        let twice = request(
            Method::POST,
            "/rest/api/content",
            &[("authorization", &auth), json],
            r#"{"type":"page","type":"comment"}"#,
        );
        assert_eq!(refusal(&app, twice).await, "ambiguous_json");
        // Compressed bytes are never read as JSON text, whatever they hold.
        let gzip = request(
            Method::POST,
            "/rest/api/content",
            &[("authorization", &auth), json, ("content-encoding", "gzip")],
            body,
        );
        assert_eq!(refusal(&app, gzip).await, "rule_mismatch");
    }

    #[tokio::test]
    async fn own_routes_are_answered_by_the_gateway() {
        let (app, _, _dir) = test_app(|_| {}).await;
        let Ok(Next::Answer(response)) = decided(&app, request(Method::GET, "/tokengate/healthz", &[], "")).await
        else {
            panic!("not answered");
        };
        assert_eq!(response.status(), 200);
        let wrong = refusal(&app, request(Method::POST, "/tokengate/healthz", &[], "")).await;
        assert_eq!(wrong, "method_not_allowed");
    }

    #[tokio::test]
    async fn a_refused_token_is_named_in_the_trail() {
        let (app, clock, _dir) = test_app(|_| {}).await;
        let secret = token(&app, "").await;
        clock.advance_ms(1);
        let mut trail = Trail::new(tracing::Span::none(), true);
        let req = request(
            Method::GET,
            "/rest/api/space",
            &[("authorization", &basic("bob", &secret))],
            "",
        );
        let error = decide(&app, &conn(&app), req, &mut trail).await.err().unwrap();
        assert_eq!(error.reason, Reason::UserMismatch);
        assert!(trail.token_presented);
        assert_eq!(trail.token.as_ref().map(|t| t.label.as_str()), Some("ci-bot"));
        assert_eq!(trail.user.as_deref(), Some("bob"), "who it claimed to be");
    }
}
