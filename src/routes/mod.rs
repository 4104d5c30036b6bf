//! The gateway's own routes (SPEC §2.4), served here and never forwarded:
//! health and readiness probes and metrics ([`probes`]), the management API
//! ([`admin`]) and the web page ([`ui`]), the latter two behind the
//! cross-site guard ([`cross_site`]). Each authenticates through
//! [`crate::auth`] at its own door. A refusal is returned as the
//! [`GatewayError`] it is, for the pipeline to answer and record.

mod admin;
mod cross_site;
mod probes;
mod ui;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};

use crate::app::App;
use crate::auth::RequestContext;
use crate::body::RequestBody;
use crate::error::GatewayError;
use admin::TOKEN_TOOLS;
use ui::UI;

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
        OwnRoute::Probe(probe) => probes::answer(app, probe, req.method()).await,
    }
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
