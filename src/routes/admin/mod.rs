//! The management API (SPEC §5), wire-compatible with Extender's
//! `/rest/extender/1.0/tokenTools`. The gateway serves it itself and never
//! forwards it (SPEC §2.4).
//!
//! A request goes: [`route`](Endpoint::route) by method and path (404, 405),
//! then [`super::cross_site`] refuses what a browser was made to send from
//! another site (403), then [`caller`] establishes the caller and their role (401,
//! 403): an admin manages every token, any other user Confluence accepts
//! their own (self-service, SPEC §14). Then one function of [`handlers`]
//! does the work, within the caller's role. Every failure is a
//! [`GatewayError`], answered by the pipeline in Extender's error shape.
//! Every change to a token is recorded by the token service
//! ([`crate::tokens`]), naming the caller as its [`Actor`](crate::tokens::Actor).
//!
//! | method | path | does |
//! |---|---|---|
//! | GET | `/get` | list tokens, paged and filtered (never their values) |
//! | POST | `/set` | create a token (the one time its value is shown), or switch settings |
//! | GET | `/settings` | read the settings |
//! | DELETE | `/delete` | delete one token by id, or all tokens of a user |
//! | GET | `/audit` | the audit log, newest first, paged and filtered |
//! | POST | `/update` | change a token's label, rules, IP list, rate limit or mode |
//! | GET | `/suggest` | rules proposed from a token's audited calls |
//! | POST | `/check` | try rules against a request (any user Confluence accepts) |
//! | POST | `/rotate` | give a token a new secret, the old one kept for a grace period (also by the token itself) |

mod caller;
mod handlers;

pub use caller::is_admin;

use caller::Caller;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value};

use crate::app::App;
use crate::auth::{RequestContext, RuleCheck, Via};
use crate::body::{Forwarded, Reading, RequestBody, read_json};
use crate::error::{GatewayError, Reason, json_response};
use crate::rules::{JsonBody, RequestHead};
use crate::store::{AuditEntry, Settings};

/// Base path of the Extender-compatible management API.
pub const TOKEN_TOOLS: &str = "/rest/extender/1.0/tokenTools";

/// The largest request body the management API reads...
pub const MAX_BODY: usize = 64 << 10;
/// ... as its 413 says.
const READS: &str = "the most the management API reads";

/// The endpoints, each answering one method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    List,
    Set,
    Settings,
    Delete,
    Audit,
    Update,
    Suggest,
    Check,
    Rotate,
    Usage,
}

impl Endpoint {
    /// The endpoint `path` (the whole canonical path) names, if `method` is its method.
    fn route(method: &Method, path: &str) -> Result<Endpoint, GatewayError> {
        let (endpoint, allowed) = match path.strip_prefix(TOKEN_TOOLS) {
            Some("/get") => (Endpoint::List, "GET"),
            Some("/set") => (Endpoint::Set, "POST"),
            Some("/settings") => (Endpoint::Settings, "GET"),
            Some("/delete") => (Endpoint::Delete, "DELETE"),
            Some("/audit") => (Endpoint::Audit, "GET"),
            Some("/update") => (Endpoint::Update, "POST"),
            Some("/suggest") => (Endpoint::Suggest, "GET"),
            Some("/check") => (Endpoint::Check, "POST"),
            Some("/rotate") => (Endpoint::Rotate, "POST"),
            Some("/usage") => (Endpoint::Usage, "GET"),
            _ => {
                return Err(GatewayError::new(
                    Reason::NotFound,
                    format!("no management endpoint {path}"),
                ));
            }
        };
        if method.as_str() != allowed {
            return Err(
                GatewayError::new(Reason::MethodNotAllowed, format!("{path} answers {allowed} only")).allowing(allowed),
            );
        }
        Ok(endpoint)
    }
}

/// 401 when the caller's token no longer holds: deleted, expired, or its
/// secret rotated past its grace since the caller was checked.
async fn still_holds(app: &App, caller: &Caller) -> Result<(), GatewayError> {
    let Via::Token(token) = &caller.principal.via else {
        return Ok(());
    };
    match app.auth.verifier().still_holds(token).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(GatewayError::new(
            Reason::InvalidToken,
            "the token was deleted, expired or rotated while its request was read",
        )),
        Err(e) => Err(GatewayError::internal(&e)),
    }
}

/// Answers one management request: route, refuse cross-site calls,
/// authenticate, then the endpoint's work.
pub async fn serve<B: RequestBody>(
    app: &App,
    req: Request<B>,
    cx: &RequestContext<'_>,
) -> Result<Response<Full<Bytes>>, GatewayError> {
    let endpoint = Endpoint::route(req.method(), &cx.target.path)?;
    super::cross_site::refuse(app, &req, cx).await?;
    // A token rotating itself passes every check but its rules (SPEC §18);
    // rotating another token, its rules are checked once the body is read.
    let rule_check = match endpoint {
        Endpoint::Rotate => RuleCheck::Skip,
        _ => RuleCheck::Apply,
    };
    let (req, caller) = caller::authenticate(app, req, cx, rule_check).await?;
    let answer = answer(app, endpoint, req, cx, &caller).await;
    // A limited token's every answer carries its rate-limit headers (SPEC §16).
    match (answer, caller.rate) {
        (Ok(mut response), Some(rate)) => {
            rate.apply(response.headers_mut());
            Ok(response)
        }
        (Err(error), Some(rate)) => Err(error.with_headers(rate.headers())),
        (answer, None) => answer,
    }
}

/// The endpoint's work, within the caller's role.
async fn answer<B: RequestBody>(
    app: &App,
    endpoint: Endpoint,
    req: Request<Forwarded<B>>,
    cx: &RequestContext<'_>,
    caller: &Caller,
) -> Result<Response<Full<Bytes>>, GatewayError> {
    if !matches!(endpoint, Endpoint::Check | Endpoint::Rotate) {
        caller.may_manage()?;
    }
    let query = cx.target.query.as_deref();
    // What changes tokens or settings reads its body, then checks again
    // that a token caller's token still holds: a body sent slowly must not
    // outlive the token's deletion, expiry or rotation (SPEC §12).
    let body = |req| async {
        let body = read_json_object(req, MAX_BODY, READS).await?.1;
        still_holds(app, caller).await?;
        Ok::<_, GatewayError>(body)
    };
    let json = match endpoint {
        Endpoint::Check => handlers::check(read_json_object(req, MAX_BODY, READS).await?.1, app.config.scope)?,
        Endpoint::List => handlers::list_tokens(app, caller, query).await?,
        Endpoint::Settings => handlers::settings(app, caller)?,
        Endpoint::Audit => handlers::list_audit(app, caller, query).await?,
        Endpoint::Set => handlers::set(app, caller, body(req).await?).await?,
        Endpoint::Delete => handlers::delete(app, caller, query, body(req).await?).await?,
        Endpoint::Update => handlers::update(app, caller, body(req).await?).await?,
        Endpoint::Suggest => handlers::suggest(app, caller, query).await?,
        Endpoint::Usage => handlers::usage(app, caller, query).await?,
        Endpoint::Rotate => {
            let method = req.method().clone();
            let body = body(req).await?;
            let head = RequestHead {
                method: method.as_str(),
                path: &cx.target.path,
                query,
            };
            handlers::rotate(app, caller, &head, cx.token_secret(), body).await?
        }
    };
    Ok(json_response(StatusCode::OK, json.to_string()))
}

/// Reads a request body of at most [`MAX_BODY`] bytes as a JSON object,
/// whatever type it declares (the one read and parse a JSON rule may have
/// made already); an empty body is an empty object.
pub async fn read_json_object<B: RequestBody>(
    req: Request<Forwarded<B>>,
    limit: usize,
    purpose: &str,
) -> Result<(Request<Forwarded<B>>, Map<String, Value>), GatewayError> {
    let (req, parsed) = read_json(req, limit, purpose, Reading::Always).await?;
    Ok((req, json_object(&parsed.json, parsed.is_blank())?))
}

/// A parsed body as a JSON object (without duplicate keys at any depth,
/// which the parse refused); an empty or blank body is an empty object.
fn json_object(json: &JsonBody, blank: bool) -> Result<Map<String, Value>, GatewayError> {
    let bad = |message: &str| GatewayError::new(Reason::BadRequest, message);
    match json {
        JsonBody::Json(Value::Object(object)) => Ok(object.clone()),
        JsonBody::Json(_) => Err(bad("the request body must be a JSON object")),
        JsonBody::NotJson if blank => Ok(Map::new()),
        JsonBody::NotJson => Err(bad("the request body is not valid JSON")),
    }
}

/// Records a change of the settings (token changes are recorded by the
/// token service). An audit entry (also a `tracing` event with target
/// `tokengate::audit`), written whatever the `auditLog` setting says: it
/// switches the logging of token requests, not of the gateway's own changes.
async fn record_settings(app: &App, caller: &Caller, settings: Settings) {
    let actor = caller.actor();
    let mut entry = AuditEntry::management(app.clock.now_ms(), &actor.name, "settings");
    entry.client_ip = actor.client_ip.map(|ip| ip.to_string());
    entry.detail = Some(format!(
        "{}; usageDetails={} auditLog={}",
        actor.via(),
        settings.usage_details,
        settings.audit_log
    ));
    app.audit.record(entry).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: Method, sub: &str) -> Result<Endpoint, u16> {
        Endpoint::route(&method, &format!("{TOKEN_TOOLS}{sub}")).map_err(|e| e.status().as_u16())
    }

    #[test]
    fn each_endpoint_answers_its_method_only() {
        assert_eq!(route(Method::GET, "/get"), Ok(Endpoint::List));
        assert_eq!(route(Method::POST, "/set"), Ok(Endpoint::Set));
        assert_eq!(route(Method::GET, "/settings"), Ok(Endpoint::Settings));
        assert_eq!(route(Method::DELETE, "/delete"), Ok(Endpoint::Delete));
        assert_eq!(route(Method::POST, "/get"), Err(405));
        assert_eq!(route(Method::GET, "/set"), Err(405));
        assert_eq!(route(Method::HEAD, "/settings"), Err(405));
        assert_eq!(route(Method::POST, "/delete"), Err(405));
        assert_eq!(route(Method::POST, "/check"), Ok(Endpoint::Check));
        assert_eq!(route(Method::GET, "/check"), Err(405));
        assert_eq!(route(Method::POST, "/update"), Ok(Endpoint::Update));
        assert_eq!(route(Method::PUT, "/update"), Err(405));
        assert_eq!(route(Method::GET, "/suggest"), Ok(Endpoint::Suggest));
        assert_eq!(route(Method::POST, "/suggest"), Err(405));
    }

    #[test]
    fn unknown_paths_are_not_found() {
        assert_eq!(route(Method::GET, "/audit"), Ok(Endpoint::Audit));
        assert_eq!(route(Method::GET, "/usage"), Ok(Endpoint::Usage));
        assert_eq!(route(Method::POST, "/usage"), Err(405));
        for sub in ["", "/", "/get/", "/GET", "/audit/x", "/get;x=1", "/set/x"] {
            assert_eq!(route(Method::GET, sub), Err(404), "{sub:?}");
        }
    }

    async fn object(body: &[u8], content_type: &str) -> Result<Map<String, Value>, GatewayError> {
        let req = Request::builder()
            .header("content-type", content_type)
            .body(http_body_util::Either::Left(Full::new(Bytes::copy_from_slice(body))))
            .unwrap();
        read_json_object(req, MAX_BODY, READS).await.map(|(_, object)| object)
    }

    #[tokio::test]
    async fn bodies_must_be_json_objects_without_duplicate_keys_whatever_they_declare() {
        for content_type in ["application/json", "text/plain"] {
            assert_eq!(object(b"", content_type).await.unwrap(), Map::new());
            assert_eq!(object(b" \n", content_type).await.unwrap(), Map::new());
            assert_eq!(object(br#"{"label":"x"}"#, content_type).await.unwrap()["label"], "x");
            let reason = async |body: &'static [u8]| object(body, content_type).await.unwrap_err().reason.code();
            assert_eq!(reason(br#"{"label":"a","label":"b"}"#).await, "ambiguous_json");
            assert_eq!(reason(br#"{"a":{"b":1,"b":2}}"#).await, "ambiguous_json");
            assert_eq!(reason(b"{\"label\":").await, "bad_request");
            assert_eq!(reason(b"[1]").await, "bad_request");
            assert_eq!(reason(b"label=x").await, "bad_request");
        }
        let error = object(&[b' '; MAX_BODY + 1], "application/json").await.unwrap_err();
        assert_eq!(error.reason.code(), "body_too_large");
    }
}
