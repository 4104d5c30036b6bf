//! One request, start to end (SPEC §2). [`decide`] runs every stage but
//! forwarding, in order, generic over the request body (so the tests drive
//! it without sockets):
//!
//! 1. canonicalise the target ([`crate::target`]); refuse two `Host`s;
//! 2. strip the headers no client may set ([`crate::proxy::headers`]);
//! 3. find the client IP ([`client_ip`]);
//! 4. serve the gateway's own routes ([`crate::routes`]);
//! 5. authenticate at the proxy door ([`crate::auth::Authenticator::authenticate`],
//!    with the request's [`RequestContext`]: its credentials decoded
//!    once): a token resolved, throttled, checked, its rules applied; other
//!    credentials passed through;
//! 6. confine a token with spaces to them ([`confine`], [`crate::spaces`]).
//!
//! [`handle`] forwards what `decide` lets through ([`forward`]: withholding
//! an answer Confluence served as anyone but the token's user, SPEC §19,
//! and opening the tunnel of a WebSocket upgrade), answers a refusal in the
//! one shape of [`crate::error`], and records the outcome ([`trail`]):
//! metrics, failed attempts for the throttle (a throttled client's refusals
//! counted, not recorded one by one), and the audit entry.

pub mod client_ip;
mod confine;
mod forward;
mod trail;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::header::HOST;
use hyper::{Request, Response};
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;
use tracing::field::Empty;

use crate::app::App;
use crate::auth::{Authenticated, CredentialMemo, Door, RequestContext, Via};
use crate::body::{ClientBody, Forwarded, RequestBody};
use crate::clock::EpochMs;
use crate::config::ForwardAs;
use crate::error::{self, GatewayError, Reason};
use crate::proxy::{ConnInfo, Identity, Lease, ResponseBody};
use crate::record::{Decision, MAX_METHOD_BYTES, MAX_PATH_BYTES, MAX_USER_BYTES, bounded};
use crate::routes;
use crate::spaces::Changed;
use crate::target::{self, Target};
pub use trail::Trail;

/// A client connection, as each of its requests sees it: what the forwarder
/// needs (who the client is, and the upstream connection its requests
/// reuse), and the memo of the credentials its last token request presented.
pub struct Connection {
    pub info: ConnInfo,
    pub upstream: Arc<Lease>,
    pub memo: CredentialMemo,
    /// The connection's place under `max_connections`, which a tunnel it
    /// becomes keeps for as long as it lives.
    slot: Option<Arc<OwnedSemaphorePermit>>,
}

impl Connection {
    pub fn new(info: ConnInfo, app: &App) -> Self {
        // The memo keeps a token as long as the verified cache would.
        let memo_ttl_ms = EpochMs::try_from(app.config.verify_cache_ttl.as_millis()).unwrap_or(EpochMs::MAX);
        Connection {
            info,
            upstream: app.upstream.lease(),
            memo: CredentialMemo::new(memo_ttl_ms),
            slot: None,
        }
    }

    /// The connection, holding its place under `max_connections`.
    pub fn holding(mut self, slot: OwnedSemaphorePermit) -> Self {
        self.slot = Some(Arc::new(slot));
        self
    }
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
                forward::forward(app, conn, req, &target, identity, &trail).await
            }
        }
    }
    .instrument(span.clone())
    .await;
    let (mut response, reason) = match result {
        Ok(response) => (response, None),
        Err(error) => {
            trail::log_refusal(app, &span, &error, trail.client_ip);
            if trail.audit && trail.detail.is_none() {
                // A space refusal's entry names the space (SPEC §15.1).
                trail.detail = error.space().map(str::to_owned);
            }
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
    trail::record(app, &conn.info, trail, &method, &response, reason, started.elapsed()).await;
    response
}

/// Every stage but forwarding, in SPEC order.
pub async fn decide<B: RequestBody>(
    app: &App,
    conn: &Connection,
    mut req: Request<B>,
    trail: &mut Trail,
) -> Result<Next<B>, GatewayError> {
    let target = target::canonicalise(req.uri()).map_err(|e| GatewayError::new(Reason::BadPath, e.to_string()))?;
    trail.span.record("url.path", &*bounded(&target.path, MAX_PATH_BYTES));
    if req.headers().get_all(HOST).iter().nth(1).is_some() {
        // RFC 9112 §3.2: a request with more than one Host is invalid.
        return Err(GatewayError::new(Reason::BadRequest, "more than one Host header"));
    }
    app.protected_headers.strip(req.headers_mut());
    let client_ip = client_ip::client_ip(conn.info.peer.ip(), req.headers(), &app.config.trusted_proxies);
    trail.span.record("client.ip", tracing::field::display(client_ip));
    trail.client_ip = Some(client_ip);
    let cx = RequestContext::new(target, client_ip, &conn.info, req.headers());
    if let Some(route) = routes::own_route(&cx.target.path) {
        let cx = cx.reading_session(req.headers());
        trail.route = Some(route);
        trail.decision = Some(Decision::Own);
        trail.from_page = cx.came_from_page();
        // Boxed: the management API's future is large and most requests never need it.
        let response = Box::pin(routes::serve(app, route, req, &cx)).await?;
        return Ok(Next::Answer(response));
    }
    let cx = cx.remembering(&conn.memo);
    let authenticated = app.auth.authenticate(&cx, req, Door::Proxy).await;
    // A token request is audited, but for one refused as malformed (a token
    // outside Authorization too): that 400 never throttles the client, so
    // its entries could fill the store (SPEC §12).
    let malformed = matches!(&authenticated, Err(refused) if refused.error.reason == Reason::BadCredentials);
    if let Some((_, basic_user)) = cx.token_claim().filter(|_| !malformed) {
        trail.token_presented = true;
        if trail.audit {
            trail.path = Some(cx.target.path.clone());
            trail.user = basic_user.map(str::to_owned);
        }
    }
    let Authenticated {
        req,
        principal,
        passage,
    } = match authenticated {
        Ok(authenticated) => authenticated,
        Err(refused) => {
            trail.note_token(refused.token);
            return Err(refused.error);
        }
    };
    let mut target = cx.target;
    let Some(principal) = principal else {
        trail.decision = Some(Decision::Passthrough);
        return Ok(Next::Forward {
            req,
            target,
            identity: Identity::Passthrough,
        });
    };
    trail.rate = passage.rate;
    if let Some(waived) = passage.reported {
        let message = bounded(&waived.message, MAX_PATH_BYTES);
        tracing::info!(
            reason = waived.reason.code(),
            "report-only token: forwarded, though {message}"
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
    let req = confine::confine(app, &conn.info, req, &mut target, &token, &identity, trail).await?;
    if app.settings.get().usage_details {
        token.usage.record(app.clock.now_ms(), client_ip);
    }
    tracing::debug!("token accepted");
    let reported = trail.reported.is_some() || trail.detail.is_some();
    trail.decision = Some(if reported { Decision::Report } else { Decision::Allow });
    Ok(Next::Forward { req, target, identity })
}

#[cfg(test)]
mod tests;
