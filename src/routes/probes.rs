//! The probes and the metrics (SPEC §2.4, §10): `/tokengate/healthz`,
//! `/tokengate/readyz` (the store answers) and `/tokengate/metrics`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Response, StatusCode};

use super::Probe;
use crate::app::App;
use crate::error::{GatewayError, Reason, json_response};

/// Answers a probe: GET and HEAD only.
pub(super) async fn answer(app: &App, probe: Probe, method: &Method) -> Result<Response<Full<Bytes>>, GatewayError> {
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
