//! The gateway's own routes (SPEC §2.4), served here and never forwarded:
//! health and readiness probes, metrics, the management API ([`admin`]) and
//! the web page ([`ui`]).
//! A refusal is returned as the [`GatewayError`] it is, for the pipeline to
//! answer and record.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::admin::{self, TOKEN_TOOLS};
use crate::app::App;
use crate::auth::RequestContext;
use crate::body::RequestBody;
use crate::error::{GatewayError, Reason, json_response};
use crate::ui::{self, UI};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnRoute {
    Probe(Probe),
    TokenTools,
    Ui,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Health,
    Ready,
    Metrics,
}

/// Which own route a canonical path names, if any.
pub fn own_route(path: &str) -> Option<OwnRoute> {
    match path {
        "/tokengate/healthz" => Some(OwnRoute::Probe(Probe::Health)),
        "/tokengate/readyz" => Some(OwnRoute::Probe(Probe::Ready)),
        "/tokengate/metrics" => Some(OwnRoute::Probe(Probe::Metrics)),
        _ if is_under(path, TOKEN_TOOLS) => Some(OwnRoute::TokenTools),
        _ if is_under(path, UI) => Some(OwnRoute::Ui),
        _ => None,
    }
}

fn is_under(path: &str, base: &str) -> bool {
    path.strip_prefix(base)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Answers a request for an own route.
pub async fn serve<B: RequestBody>(
    app: &App,
    route: OwnRoute,
    req: Request<B>,
    cx: &RequestContext<'_>,
) -> Result<Response<Full<Bytes>>, GatewayError> {
    match route {
        OwnRoute::TokenTools => admin::serve(app, req, cx).await,
        OwnRoute::Ui => ui::serve(app, req, cx).await,
        OwnRoute::Probe(probe) => answer_probe(app, probe, req.method()).await,
    }
}

async fn answer_probe(app: &App, probe: Probe, method: &Method) -> Result<Response<Full<Bytes>>, GatewayError> {
    if !matches!(*method, Method::GET | Method::HEAD) {
        return Err(
            GatewayError::new(Reason::MethodNotAllowed, "probes answer GET and HEAD only").allowing("GET, HEAD"),
        );
    }
    Ok(match probe {
        Probe::Health => json_response(StatusCode::OK, r#"{"status":"ok"}"#),
        Probe::Ready => match app.store.ping().await {
            Ok(()) => json_response(StatusCode::OK, r#"{"status":"ready"}"#),
            Err(e) => {
                tracing::warn!(error = %e, "store unreachable: not ready");
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"status":"unavailable","reason":"store"}"#,
                )
            }
        },
        Probe::Metrics => {
            app.metrics
                .audit_queue_depth
                .set(i64::try_from(app.audit.queue_depth()).unwrap_or(i64::MAX));
            app.metrics
                .upstream_idle
                .set(i64::try_from(app.upstream.idle_connections()).unwrap_or(i64::MAX));
            let mut response = json_response(StatusCode::OK, app.metrics.render());
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            response
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_routes_match_whole_segments() {
        assert_eq!(own_route("/tokengate/healthz"), Some(OwnRoute::Probe(Probe::Health)));
        assert_eq!(own_route("/tokengate/readyz"), Some(OwnRoute::Probe(Probe::Ready)));
        assert_eq!(own_route("/tokengate/metrics"), Some(OwnRoute::Probe(Probe::Metrics)));
        assert_eq!(own_route("/rest/extender/1.0/tokenTools"), Some(OwnRoute::TokenTools));
        assert_eq!(
            own_route("/rest/extender/1.0/tokenTools/get"),
            Some(OwnRoute::TokenTools)
        );
        assert_eq!(own_route("/rest/extender/1.0/tokenToolsX"), None);
        assert_eq!(own_route("/rest/extender/1.0/other"), None);
        assert_eq!(own_route("/tokengate/healthz/x"), None);
        assert_eq!(own_route("/tokengate/ui"), Some(OwnRoute::Ui));
        assert_eq!(own_route("/tokengate/ui/app.js"), Some(OwnRoute::Ui));
        assert_eq!(own_route("/tokengate/uix"), None);
    }
}
