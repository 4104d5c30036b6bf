//! The web page (SPEC §15) at `/tokengate/ui/`: a single page in plain
//! JavaScript whose every asset is compiled into the binary, and the three
//! endpoints that give it a session. Everything else it does goes through
//! the management API ([`super::admin`]) with that session.
//!
//! | method | path | does |
//! |---|---|---|
//! | GET | `/tokengate/ui/` | the page (and `app.js`, `app.css`, `icon.svg`) |
//! | POST | `/tokengate/ui/login` | `{"username","password"}` checked with Confluence; starts a session |
//! | GET | `/tokengate/ui/session` | who is logged in, their CSRF token, what the gateway offers |
//! | POST | `/tokengate/ui/logout` | ends the session, in every replica |

use bytes::Bytes;
use http_body_util::Either;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue, LOCATION, SET_COOKIE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::admin::read_json_object;
use crate::app::App;
use crate::auth::{Authenticated, Door, Principal, RequestContext, SESSION_COOKIE, Via};
use crate::body::RequestBody;
use crate::error::{GatewayError, Reason, json_response};
use crate::store::AuditEntry;
use crate::tokens::check_user_name;

/// Where the page lives.
pub const UI: &str = "/tokengate/ui";
/// The largest request body the page's endpoints read.
const MAX_BODY: usize = 8 << 10;

static INDEX: &str = include_str!("assets/index.html");
static APP_JS: &str = include_str!("assets/app.js");
static APP_CSS: &str = include_str!("assets/app.css");
static ICON: &str = include_str!("assets/icon.svg");

/// Answers a request under `/tokengate/ui`.
pub async fn serve<B: RequestBody>(
    app: &App,
    req: Request<B>,
    cx: &RequestContext<'_>,
) -> Result<Response<Full<Bytes>>, GatewayError> {
    if !app.config.ui {
        return Err(GatewayError::new(
            Reason::NotFound,
            "the web page is switched off here (ui = false)",
        ));
    }
    let sub = cx.target.path.strip_prefix(UI).unwrap_or_default();
    let method = req.method().clone();
    let asset = match sub {
        "" => return Ok(redirect(&format!("{UI}/"))),
        "/" => Some(("text/html; charset=utf-8", INDEX)),
        "/app.js" => Some(("text/javascript; charset=utf-8", APP_JS)),
        "/app.css" => Some(("text/css; charset=utf-8", APP_CSS)),
        "/icon.svg" => Some(("image/svg+xml", ICON)),
        _ => None,
    };
    if let Some((content_type, body)) = asset {
        only(&method, &[Method::GET, Method::HEAD], "GET, HEAD")?;
        return Ok(asset_response(content_type, body));
    }
    match sub {
        "/session" => {
            only(&method, &[Method::GET], "GET")?;
            let (principal, session) = session(app, cx, req, false).await?;
            Ok(json_response(
                StatusCode::OK,
                session_json(app, &principal.user, &session.csrf).to_string(),
            ))
        }
        "/login" => {
            only(&method, &[Method::POST], "POST")?;
            super::cross_site::refuse(app, &req, cx).await?;
            login(app, req, cx).await
        }
        "/logout" => {
            only(&method, &[Method::POST], "POST")?;
            super::cross_site::refuse(app, &req, cx).await?;
            logout(app, req, cx).await
        }
        _ => Err(GatewayError::new(
            Reason::NotFound,
            format!("no page {}", cx.target.path),
        )),
    }
}

fn only(method: &Method, allowed: &[Method], allow: &'static str) -> Result<(), GatewayError> {
    if allowed.contains(method) {
        Ok(())
    } else {
        Err(GatewayError::new(Reason::MethodNotAllowed, format!("this page answers {allow} only")).allowing(allow))
    }
}

fn asset_response(content_type: &'static str, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn redirect(to: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(location) = HeaderValue::from_str(to) {
        response.headers_mut().insert(LOCATION, location);
    }
    response
}

/// What the page needs to know: who, their CSRF token, and what this
/// gateway offers (so that it shows no control that would not work).
fn session_json(app: &App, user: &str, csrf: &str) -> Value {
    json!({
        "status": "ok",
        "user": user,
        "admin": super::admin::is_admin(&app.config.admin_users, user),
        "csrf": csrf,
        "forwardAs": app.config.forward_as.name(),
        "selfService": app.config.self_service,
        // The longest expiry a token may have (null: none), for the page's presets.
        "maxDaysUntilExpiry": app.config.max_days_until_expiry,
        // The parts of SPEC §15-18 this gateway serves; the page hides the rest.
        // Rotation re-seals a PAT with the token's own secret, which the page
        // never has: with forward_as = "pat" tokens rotate themselves.
        "features": {
            "update": true,
            "rotate": app.config.forward_as == crate::config::ForwardAs::Header,
            "rateLimit": true,
            "spaces": true,
            "reportOnly": true,
        },
    })
}

/// The page's session at the session door: 401 without one, 403 for a
/// state-changing call without its CSRF token.
async fn session<B: RequestBody>(
    app: &App,
    cx: &RequestContext<'_>,
    req: Request<B>,
    changes_state: bool,
) -> Result<(Principal, std::sync::Arc<crate::auth::Session>), GatewayError> {
    let door = Door::Session { changes_state };
    let Authenticated { principal, .. } = app.auth.authenticate(cx, req, door).await.map_err(|r| r.error)?;
    let unexpected = || GatewayError::internal(&"the session door let a request in without a session");
    let principal = principal.ok_or_else(unexpected)?;
    let Via::Session(session) = &principal.via else {
        return Err(unexpected());
    };
    let session = session.clone();
    Ok((principal, session))
}

/// `POST /login`: the password is checked with Confluence as for the
/// management API (and counts towards `failed_auth_per_minute` when wrong);
/// a new session id at every login.
async fn login<B: RequestBody>(
    app: &App,
    req: Request<B>,
    cx: &RequestContext<'_>,
) -> Result<Response<Full<Bytes>>, GatewayError> {
    let (req, form) = read_json_object(req.map(Either::Left), MAX_BODY, "the most the login reads").await?;
    let text = |name: &'static str| {
        form.get(name)
            .and_then(Value::as_str)
            .filter(|value| !value.is_empty())
            .ok_or_else(|| GatewayError::invalid(name, format!("{name} is required")))
    };
    let (username, password) = (text("username")?, text("password")?);
    check_user_name(username).map_err(|why| GatewayError::invalid("username", why))?;
    let typed = cx
        .with_password(username, password)
        .map_err(|_| GatewayError::new(Reason::InvalidToken, "invalid credentials"))?;
    let Authenticated { principal, .. } = app
        .auth
        .authenticate(&typed, req, Door::Login)
        .await
        .map_err(|refused| refused.error)?;
    let principal = principal.ok_or_else(|| GatewayError::internal(&"the login let a request in unauthenticated"))?;
    let admin = super::admin::is_admin(&app.config.admin_users, &principal.user);
    if !admin && !app.config.self_service {
        return Err(GatewayError::new(
            Reason::Forbidden,
            "only admins may use this page here (self-service is off)",
        ));
    }
    let session = app
        .auth
        .sessions()
        .start(&principal.user)
        .await
        .map_err(|e| GatewayError::internal(&e))?;
    record(app, &principal.user, "login", cx).await;
    let mut response = json_response(
        StatusCode::OK,
        session_json(app, &principal.user, &session.csrf).to_string(),
    );
    let cookie = format!(
        "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        session.id,
        app.auth.sessions().cookie_max_age(),
        secure(app, cx.conn)
    );
    set_cookie(&mut response, &cookie);
    Ok(response)
}

/// `POST /logout`: ends the session server-side (a replayed cookie then
/// fails) and clears the cookie. Needs the session's CSRF token.
async fn logout<B: RequestBody>(
    app: &App,
    req: Request<B>,
    cx: &RequestContext<'_>,
) -> Result<Response<Full<Bytes>>, GatewayError> {
    // Without a session there is nothing to end but the cookie.
    if cx.session_id().is_some() {
        let (principal, session) = session(app, cx, req, true).await?;
        app.auth
            .sessions()
            .end(&session)
            .await
            .map_err(|e| GatewayError::internal(&e))?;
        record(app, &principal.user, "logout", cx).await;
    }
    let mut response = json_response(StatusCode::OK, r#"{"status":"ok"}"#);
    let cookie = format!(
        "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        secure(app, cx.conn)
    );
    set_cookie(&mut response, &cookie);
    Ok(response)
}

/// `; Secure` when the page is served over TLS, here or in front (`public_url`).
fn secure(app: &App, conn: &crate::proxy::ConnInfo) -> &'static str {
    let public_https = app.config.public_url.as_ref().is_some_and(|url| url.https);
    if conn.tls || public_https { "; Secure" } else { "" }
}

fn set_cookie(response: &mut Response<Full<Bytes>>, cookie: &str) {
    let value = HeaderValue::from_str(cookie).expect("a session cookie is visible ASCII");
    response.headers_mut().insert(SET_COOKIE, value);
}

/// Logins and logouts go to the audit log like management actions.
async fn record(app: &App, user: &str, action: &str, cx: &RequestContext<'_>) {
    let mut entry = AuditEntry::management(app.clock.now_ms(), user, action);
    entry.client_ip = Some(cx.client_ip.to_string());
    entry.detail = Some("via the web page".to_owned());
    app.audit.record(entry).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_runs_no_inline_script() {
        for (name, text) in [("index.html", INDEX), ("app.js", APP_JS), ("app.css", APP_CSS)] {
            for foreign in ["http://", "https://", "//cdn", "@import", "fonts.googleapis"] {
                assert!(!text.contains(foreign), "{name} refers to {foreign}");
            }
        }
        let scripts: Vec<&str> = INDEX.split("<script").skip(1).collect();
        assert_eq!(scripts.len(), 1);
        assert!(
            scripts[0].starts_with(r#" src="/tokengate/ui/app.js""#),
            "only the script file"
        );
        let handler = regex::Regex::new(r"\son[a-z]+\s*=").unwrap();
        assert!(!handler.is_match(INDEX), "no inline event handlers");
        assert!(
            !APP_JS.contains("innerHTML") && !APP_JS.contains("eval("),
            "server values go in as text"
        );
    }

    #[test]
    fn every_accessible_name_of_the_spec_is_on_the_page() {
        let labels = [
            "Username",
            "Password",
            "Label",
            "Expires in days",
            "Rules",
            "IP addresses",
            "Rate limit",
            "Spaces",
            "Confluence password",
            "Method",
            "URL",
            "Body",
            "User",
            "Token",
        ];
        for label in labels {
            assert!(
                INDEX.contains(&format!(">{label}</label>")),
                "no field labelled {label:?}"
            );
        }
        for button in ["Log in", "Create token", "Copy", "Try", "Log out", "Save"] {
            assert!(INDEX.contains(&format!(">{button}</button>")), "no button {button:?}");
        }
        assert!(INDEX.contains(r#"aria-label="New token""#));
        assert!(INDEX.contains(">Audit log</a>"));
        for (id, switch) in [("setting-usage", "Usage details"), ("setting-audit", "Audit log")] {
            assert!(
                INDEX.contains(&format!(r#"role="switch" id="{id}"> {switch}</label>"#)),
                "{switch}"
            );
        }
        assert!(APP_JS.contains(r#""Delete")"#) && APP_JS.contains(r#""Edit")"#) && APP_JS.contains(r#""Rotate")"#));
    }
}
