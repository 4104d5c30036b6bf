//! The gateway's own routes (SPEC §2.4), served here and never forwarded:
//! health and readiness probes, metrics, and the management API.

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::app::App;
use crate::error::{GatewayError, Reason};
use crate::pipeline::canonical::Target;
use crate::proxy::{Body, ConnInfo};

/// Base path of the Extender-compatible management API.
pub const TOKEN_TOOLS: &str = "/rest/extender/1.0/tokenTools";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnRoute {
    Health,
    Ready,
    Metrics,
    TokenTools,
}

/// Which own route a canonical path names, if any.
pub fn own_route(path: &str) -> Option<OwnRoute> {
    match path {
        "/tokengate/healthz" => Some(OwnRoute::Health),
        "/tokengate/readyz" => Some(OwnRoute::Ready),
        "/tokengate/metrics" => Some(OwnRoute::Metrics),
        _ if is_under(path, TOKEN_TOOLS) => Some(OwnRoute::TokenTools),
        _ => None,
    }
}

fn is_under(path: &str, base: &str) -> bool {
    path.strip_prefix(base)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

pub async fn serve(
    app: &App,
    route: OwnRoute,
    req: Request<Incoming>,
    target: &Target,
    conn: &ConnInfo,
) -> Result<Response<Body>, GatewayError> {
    match route {
        OwnRoute::Health => probe(&req, json_response(StatusCode::OK, r#"{"status":"ok"}"#)),
        OwnRoute::Ready => {
            let ready = app.store.ping().await;
            if let Err(e) = &ready {
                tracing::warn!(error = %e, "store unreachable: not ready");
            }
            let response = match ready {
                Ok(()) => json_response(StatusCode::OK, r#"{"status":"ready"}"#),
                Err(_) => json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"status":"unavailable","reason":"store"}"#,
                ),
            };
            probe(&req, response)
        }
        OwnRoute::Metrics => {
            app.metrics
                .audit_queue_depth
                .set(i64::try_from(app.audit.queue_depth()).unwrap_or(i64::MAX));
            let mut response = json_response(StatusCode::OK, app.metrics.render());
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            probe(&req, response)
        }
        OwnRoute::TokenTools => Ok(crate::admin::serve(app, conn, target, req).await),
    }
}

fn probe(req: &Request<Incoming>, response: Response<Body>) -> Result<Response<Body>, GatewayError> {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        Ok(response)
    } else {
        Err(GatewayError::new(
            Reason::MethodNotAllowed,
            "probes answer GET and HEAD only",
        ))
    }
}

/// A JSON response the gateway makes itself.
pub fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(body.into())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json;charset=UTF-8"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_routes_match_whole_segments() {
        assert_eq!(own_route("/tokengate/healthz"), Some(OwnRoute::Health));
        assert_eq!(own_route("/tokengate/readyz"), Some(OwnRoute::Ready));
        assert_eq!(own_route("/tokengate/metrics"), Some(OwnRoute::Metrics));
        assert_eq!(own_route("/rest/extender/1.0/tokenTools"), Some(OwnRoute::TokenTools));
        assert_eq!(
            own_route("/rest/extender/1.0/tokenTools/get"),
            Some(OwnRoute::TokenTools)
        );
        assert_eq!(own_route("/rest/extender/1.0/tokenToolsX"), None);
        assert_eq!(own_route("/rest/extender/1.0/other"), None);
        assert_eq!(own_route("/tokengate/healthz/x"), None);
    }
}
