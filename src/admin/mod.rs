//! The management API (SPEC §5), wire-compatible with Extender's
//! `/rest/extender/1.0/tokenTools`. The gateway serves it itself and never
//! forwards it (SPEC §2.4).
//!
//! A request goes: [`route`](Endpoint::route) by method and path (404, 405),
//! then [`auth`] establishes the admin (401, 403), then one function of
//! [`handlers`] does the work. Only [`serve`] turns the outcome into a
//! response and logs it; every failure is an [`AdminError`]. Every change is
//! recorded through [`record_action`].
//!
//! | method | path | does |
//! |---|---|---|
//! | GET | `/get` | list tokens, paged and filtered (never their values) |
//! | POST | `/set` | create a token (the one time its value is shown), or switch settings |
//! | GET | `/settings` | read the settings |
//! | DELETE | `/delete` | delete one token by id, or all tokens of a user |
//! | GET | `/audit` | the audit log, newest first, paged and filtered |

pub mod auth;
mod error;
mod handlers;

use http_body_util::{BodyExt, Either, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value};

use crate::app::App;
use crate::pipeline::canonical::Target;
use crate::pipeline::client_ip;
use crate::proxy::{Body, ConnInfo};
use crate::routes::{TOKEN_TOOLS, json_response};
use crate::rules::JsonBody;
use crate::store::{AuditEntry, Settings, TokenRecord};
pub use auth::{Admin, Via};
pub use error::AdminError;

/// The largest request body the management API reads.
pub const MAX_BODY: usize = 64 << 10;

/// What the management API keeps between requests.
#[derive(Default)]
pub struct AdminState {
    /// Confluence's verdicts on admin passwords (SPEC §5: 60 s).
    pub passwords: auth::PasswordVerdicts,
    /// Serialises settings changes (read the store, change one switch, save),
    /// so two concurrent changes of different switches both land. A tokio
    /// mutex because it is held across the store's awaits; only settings
    /// changes take it, never a proxied request.
    settings_changes: tokio::sync::Mutex<()>,
}

/// The endpoints, each answering one method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    List,
    Set,
    Settings,
    Delete,
    Audit,
}

impl Endpoint {
    /// The endpoint `path` (the whole canonical path) names, if `method` is its method.
    fn route(method: &Method, path: &str) -> Result<Endpoint, AdminError> {
        let (endpoint, allowed) = match path.strip_prefix(TOKEN_TOOLS) {
            Some("/get") => (Endpoint::List, "GET"),
            Some("/set") => (Endpoint::Set, "POST"),
            Some("/settings") => (Endpoint::Settings, "GET"),
            Some("/delete") => (Endpoint::Delete, "DELETE"),
            Some("/audit") => (Endpoint::Audit, "GET"),
            _ => return Err(AdminError::NotFound(format!("no management endpoint {path}"))),
        };
        if method.as_str() != allowed {
            return Err(AdminError::MethodNotAllowed {
                path: path.to_owned(),
                allow: allowed,
            });
        }
        Ok(endpoint)
    }
}

/// The outer handler: answers every management request, and is the only
/// place that logs its outcome and builds its error response.
pub async fn serve(app: &App, conn: &ConnInfo, target: &Target, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    match answer(app, conn, target, req).await {
        Ok(json) => {
            tracing::debug!(http.method = %method, http.path = %target.path, "management request answered");
            json_response(StatusCode::OK, json.to_string())
        }
        Err(error) => {
            tracing::info!(
                http.method = %method,
                http.path = %target.path,
                client.peer = %conn.peer.ip(),
                http.status = error.status().as_u16(),
                reason = error.reason().code(),
                "management request refused: {error}"
            );
            error.into_response(app.config.token_auth).map(Either::Right)
        }
    }
}

/// The inner handler: route, authenticate, then the endpoint's work.
async fn answer(app: &App, conn: &ConnInfo, target: &Target, req: Request<Incoming>) -> Result<Value, AdminError> {
    let endpoint = Endpoint::route(req.method(), &target.path)?;
    let client_ip = client_ip::client_ip(conn.peer.ip(), req.headers(), &app.config.trusted_proxies);
    let (req, admin) = auth::authenticate(app, req, target, client_ip).await?;
    let query = target.query.as_deref();
    match endpoint {
        Endpoint::List => handlers::list_tokens(app, query).await,
        Endpoint::Settings => Ok(handlers::settings(app)),
        Endpoint::Audit => handlers::list_audit(app, query).await,
        Endpoint::Set => handlers::set(app, &admin, read_json_object(req).await?).await,
        Endpoint::Delete => handlers::delete(app, &admin, query, read_json_object(req).await?).await,
    }
}

/// Reads a request body of at most [`MAX_BODY`] bytes as a JSON object; an
/// empty body is an empty object. The `Content-Type` is not insisted on:
/// scripts often send JSON with curl's form default.
async fn read_json_object(req: Request<Body>) -> Result<Map<String, Value>, AdminError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(AdminError::BodyTooLarge);
    }
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(AdminError::BodyTooLarge),
        Err(e) => return Err(AdminError::bad_request(format!("cannot read the request body: {e}"))),
    };
    parse_json_object(&bytes)
}

/// A JSON object without duplicate keys at any depth.
fn parse_json_object(bytes: &[u8]) -> Result<Map<String, Value>, AdminError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match JsonBody::parse(Some("application/json"), bytes) {
        Err(duplicate) => Err(AdminError::AmbiguousJson(duplicate.to_string())),
        Ok(JsonBody::Json(Value::Object(object))) => Ok(object),
        Ok(JsonBody::Json(_)) => Err(AdminError::bad_request("the request body must be a JSON object")),
        Ok(JsonBody::NotJson) => Err(AdminError::bad_request("the request body is not valid JSON")),
    }
}

/// A management action, as it is recorded.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// A token was created (the record holds no value).
    Create(&'a TokenRecord),
    Delete {
        token_id: &'a str,
    },
    DeleteUser {
        user: &'a str,
        deleted: usize,
    },
    Settings(Settings),
}

/// Records who did what: the one place every management action goes
/// through. An audit entry (also a `tracing` event with target
/// `tokengate::audit`), written whatever the `auditLog` setting says: it
/// switches the logging of token requests, not of changes to tokens.
/// Never a token value.
pub async fn record_action(app: &App, admin: &Admin, action: Action<'_>) {
    let via = match &admin.via {
        Via::Token(id) => format!("via token {id}"),
        Via::Password => "via password".to_owned(),
    };
    let mut entry = AuditEntry::management(app.clock.now_ms(), &admin.name, action.name());
    entry.client_ip = Some(admin.client_ip.to_string());
    match action {
        Action::Create(token) => {
            entry.token_id = Some(token.id.clone());
            entry.token_label = Some(token.label.clone());
            let user = token.user.as_deref().unwrap_or("(unbound)");
            entry.detail = Some(format!("{via}; token user {user}"));
        }
        Action::Delete { token_id } => {
            entry.token_id = Some(token_id.to_owned());
            entry.detail = Some(via);
        }
        Action::DeleteUser { user, deleted } => {
            entry.detail = Some(format!("{via}; {deleted} tokens of user {user}"));
        }
        Action::Settings(settings) => {
            entry.detail = Some(format!(
                "{via}; usageDetails={} auditLog={}",
                settings.usage_details, settings.audit_log
            ));
        }
    }
    app.audit.record(entry).await;
}

impl Action<'_> {
    /// The action as the audit log names it.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Create(_) => "create",
            Action::Delete { .. } => "delete",
            Action::DeleteUser { .. } => "delete_user",
            Action::Settings(_) => "settings",
        }
    }
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
    }

    #[test]
    fn unknown_paths_are_not_found() {
        assert_eq!(route(Method::GET, "/audit"), Ok(Endpoint::Audit));
        for sub in ["", "/", "/get/", "/GET", "/audit/x", "/get;x=1", "/set/x"] {
            assert_eq!(route(Method::GET, sub), Err(404), "{sub:?}");
        }
    }

    #[test]
    fn bodies_must_be_json_objects_without_duplicate_keys() {
        assert_eq!(parse_json_object(b"").unwrap(), Map::new());
        assert_eq!(parse_json_object(b" \n").unwrap(), Map::new());
        assert_eq!(parse_json_object(br#"{"label":"x"}"#).unwrap()["label"], "x");
        let status = |body: &[u8]| parse_json_object(body).unwrap_err().reason().code();
        assert_eq!(status(br#"{"label":"a","label":"b"}"#), "ambiguous_json");
        assert_eq!(status(br#"{"a":{"b":1,"b":2}}"#), "ambiguous_json");
        assert_eq!(status(b"{\"label\":"), "bad_request");
        assert_eq!(status(b"[1]"), "bad_request");
        assert_eq!(status(b"label=x"), "bad_request");
    }
}
