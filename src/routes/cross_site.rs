//! Refusing calls to the management API and the web page's own endpoints
//! that a browser was made to send by another site (cross-site request
//! forgery). A browser that once cached an admin's
//! password sends it with every request to this origin, whichever page
//! started it, so a form on any web page could otherwise create a token or
//! switch the audit log off. As Confluence does:
//!
//! - a request whose `Sec-Fetch-Site` or `Origin` says it comes from
//!   another site is refused;
//! - a `POST`, or any other state-changing call with a body, must declare
//!   `Content-Type: application/json` (which no HTML form can send, and no
//!   script of another site either without a CORS preflight the gateway
//!   never grants), or carry `X-Atlassian-Token: no-check`.
//!
//! Scripts (curl, Extender clients) send neither `Origin` nor
//! `Sec-Fetch-Site`, and send JSON: they are not affected. Every refusal is
//! audited, before any credential is checked.

use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, ORIGIN, TRANSFER_ENCODING};
use hyper::{HeaderMap, Method, Request, Uri};

use crate::app::App;
use crate::auth::RequestContext;
use crate::error::{GatewayError, Reason};
use crate::store::AuditEntry;

/// Most characters of a client's header value kept in the audit entry.
const MAX_QUOTED: usize = 120;

/// Refuses (403 `forbidden`, audited) a request that comes from another site.
pub async fn refuse<B>(app: &App, req: &Request<B>, cx: &RequestContext<'_>) -> Result<(), GatewayError> {
    let host = req
        .headers()
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let site = Site {
        host,
        public_authority: app.config.public_url.as_ref().map(|url| url.authority.as_str()),
    };
    let Some(why) = cross_site_reason(req.method(), req.headers(), &site) else {
        return Ok(());
    };
    let claimed = cx
        .basic_user()
        .map(|user| format!("; credentials for user {}", quote(user)))
        .unwrap_or_default();
    let mut entry = AuditEntry::management(app.clock.now_ms(), "", "refused_cross_site");
    entry.user = None;
    entry.client_ip = Some(cx.client_ip.to_string());
    entry.method = Some(req.method().to_string());
    entry.path = Some(cx.target.path.clone());
    entry.status = Some(403);
    entry.reason = Some(Reason::Forbidden.code().to_owned());
    entry.detail = Some(format!("{why}{claimed} (not checked)"));
    app.audit.record(entry).await;
    Err(GatewayError::new(
        Reason::Forbidden,
        format!("cross-site request refused: {why}"),
    ))
}

/// Where this gateway is: the request's own host, and `public_url`'s.
struct Site<'a> {
    host: Option<&'a str>,
    public_authority: Option<&'a str>,
}

impl Site<'_> {
    fn is_this(&self, authority: &str) -> bool {
        [self.host, self.public_authority]
            .into_iter()
            .flatten()
            .any(|own| own.eq_ignore_ascii_case(authority))
    }
}

/// Why the request looks sent by another site, if it does.
fn cross_site_reason(method: &Method, headers: &HeaderMap, site: &Site<'_>) -> Option<String> {
    if let Some(fetch_site) = headers.get("sec-fetch-site") {
        let fetch_site = fetch_site.to_str().unwrap_or("?");
        if !matches!(fetch_site, "same-origin" | "none") {
            return Some(format!("Sec-Fetch-Site is {}", quote(fetch_site)));
        }
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let origin = origin.to_str().unwrap_or("?");
        let authority = origin.parse::<Uri>().ok().and_then(|uri| uri.authority().cloned());
        if !authority.is_some_and(|authority| site.is_this(authority.as_str())) {
            return Some(format!("Origin {} is another site", quote(origin)));
        }
    }
    let changes_state = !matches!(*method, Method::GET | Method::HEAD);
    let has_body = headers.contains_key(TRANSFER_ENCODING)
        || headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|n| n.trim() != "0");
    let must_be_json = *method == Method::POST || (changes_state && has_body);
    if must_be_json && !declares_json(headers) && !no_check(headers) {
        let declared = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none");
        return Some(format!(
            "a {method} must declare Content-Type: application/json (or send X-Atlassian-Token: no-check), not {}",
            quote(declared)
        ));
    }
    None
}

/// `application/json` or `application/<something>+json`, with any parameters.
fn declares_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Atlassian's way for a script to say it is not a browser form.
fn no_check(headers: &HeaderMap) -> bool {
    headers
        .get("x-atlassian-token")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"no-check"))
}

/// A client's value, shortened, in quotes, for a message and the audit log.
fn quote(value: &str) -> String {
    let mut short: String = value.chars().take(MAX_QUOTED).collect();
    if short.len() < value.len() {
        short.push('…');
    }
    format!("{short:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITE: Site<'static> = Site {
        host: Some("wiki.example.com"),
        public_authority: Some("gateway.example.com:8443"),
    };

    fn reason(method: Method, headers: &[(&'static str, &'static str)]) -> Option<String> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, value.parse().unwrap());
        }
        cross_site_reason(&method, &map, &SITE)
    }

    #[test]
    fn scripts_and_same_origin_pages_pass() {
        let json = [("content-type", "application/json")];
        assert_eq!(reason(Method::POST, &json), None);
        assert_eq!(
            reason(Method::POST, &[("content-type", "Application/JSON; charset=utf-8")]),
            None
        );
        assert_eq!(
            reason(Method::POST, &[("content-type", "application/vnd.api+json")]),
            None
        );
        assert_eq!(reason(Method::GET, &[]), None);
        assert_eq!(reason(Method::DELETE, &[]), None, "a DELETE without a body (?id=...)");
        assert_eq!(
            reason(
                Method::POST,
                &[("x-atlassian-token", "no-check"), ("content-type", "text/plain")]
            ),
            None
        );
        for same in [
            [
                ("origin", "https://wiki.example.com"),
                ("sec-fetch-site", "same-origin"),
            ],
            [
                ("origin", "https://gateway.example.com:8443"),
                ("sec-fetch-site", "none"),
            ],
        ] {
            let mut headers = same.to_vec();
            headers.push(("content-type", "application/json"));
            assert_eq!(reason(Method::POST, &headers), None, "{same:?}");
        }
    }

    #[test]
    fn other_sites_and_form_posts_are_refused() {
        let json = ("content-type", "application/json");
        for refused in [
            vec![("sec-fetch-site", "cross-site"), json],
            vec![("sec-fetch-site", "same-site"), json],
            vec![("origin", "https://evil.example"), json],
            vec![("origin", "https://wiki.example.com.evil.example"), json],
            vec![("origin", "null"), json],
            vec![
                ("origin", "https://wiki.example.com"),
                ("sec-fetch-site", "cross-site"),
                json,
            ],
        ] {
            assert!(reason(Method::POST, &refused).is_some(), "{refused:?}");
            assert!(reason(Method::GET, &refused).is_some(), "{refused:?}");
        }
        for form in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            let why = reason(Method::POST, &[("content-type", form)]).unwrap();
            assert!(why.contains("application/json"), "{why}");
        }
        assert!(reason(Method::POST, &[]).is_some(), "a POST without a type");
        assert!(
            reason(
                Method::POST,
                &[("x-atlassian-token", "nocheck"), ("content-type", "text/plain")]
            )
            .is_some()
        );
        assert!(
            reason(
                Method::DELETE,
                &[("content-length", "20"), ("content-type", "text/plain")]
            )
            .is_some()
        );
    }

    #[test]
    fn quoted_values_are_short() {
        assert_eq!(quote("a\"b"), r#""a\"b""#);
        assert!(quote(&"x".repeat(1000)).chars().count() < MAX_QUOTED + 5);
    }
}
