//! One request, start to end (SPEC §2): canonicalise the target, strip
//! protected headers, serve the gateway's own routes, read credentials,
//! resolve and check a token, then forward, or answer with a [`GatewayError`].

pub mod authorize;
pub mod canonical;
pub mod client_ip;

use std::net::IpAddr;

use http_body_util::Either;
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::app::App;
use crate::auth::credentials::{self, Credentials};
use crate::error::{GatewayError, Reason};
use crate::proxy::{Body, ConnInfo, Identity};
use authorize::CheckContext;
use canonical::Target;

/// The outer handler: the only place that turns a failure into a response.
pub async fn handle(app: &App, conn: ConnInfo, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    match process(app, conn, req).await {
        Ok(response) => response,
        Err(error) => {
            tracing::info!(
                http.method = %method,
                client.peer = %conn.peer.ip(),
                reason = error.reason.code(),
                "refused: {}", error.message
            );
            error.into_response(app.config.token_auth).map(Either::Right)
        }
    }
}

async fn process(app: &App, conn: ConnInfo, mut req: Request<Incoming>) -> Result<Response<Body>, GatewayError> {
    let target = canonical::canonicalise(req.uri()).map_err(|e| GatewayError::new(Reason::BadPath, e.to_string()))?;
    app.protected_headers.strip(req.headers_mut());
    if let Some(route) = crate::routes::own_route(&target.path) {
        return crate::routes::serve(app, route, req, &target, conn).await;
    }
    let client_ip = client_ip::client_ip(conn.peer.ip(), req.headers(), &app.config.trusted_proxies);
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
        Some(credentials) => authenticate(app, req, &target, &credentials, client_ip).await?,
    };
    app.upstream.forward(req, &target, &identity, conn).await
}

/// Token resolution (SPEC §2.6) and the checks of §2.7 for a request with credentials.
async fn authenticate(
    app: &App,
    req: Request<Incoming>,
    target: &Target,
    credentials: &Credentials,
    client_ip: IpAddr,
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
    let token = app
        .verifier
        .verify(secret)
        .await
        .map_err(|e| GatewayError::internal(&e))?
        .ok_or_else(|| GatewayError::new(Reason::InvalidToken, "invalid credentials"))?;
    if target.has_path_parameters {
        return Err(GatewayError::new(
            Reason::BadPath,
            "path parameters (';') are not allowed on token requests",
        ));
    }
    let cx = CheckContext {
        scheme,
        basic_user: credentials.basic_user(),
        method: req.method(),
        path: &target.path,
        client_ip,
        now: app.clock.now_ms(),
        token_auth: app.config.token_auth,
        scope: app.config.scope,
    };
    let user = authorize::check_token(&token, &cx)?;
    let req = authorize::check_rules(&token, req, &target.path, app.config.max_json_body).await?;
    tracing::debug!(token.id = %token.id, user = %user, scheme = scheme.name(), "token accepted");
    Ok((req, Identity::User(user)))
}
