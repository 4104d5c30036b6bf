//! One request as the gateway sees it before it acts on it: where it goes
//! (the canonical target), who sent it (client IP, connection), and what it
//! presented: the `Authorization` header decoded once (SPEC §2.5) and the
//! page's session id. The pipeline builds it for every request; the
//! gateway's own routes and [`Authenticator::authenticate`](super::Authenticator::authenticate)
//! read it, so no stage decodes the credentials again. The body stays with
//! the request, read and parsed at most once by [`crate::body::read_json`].

use std::net::IpAddr;

use hyper::HeaderMap;
use hyper::header::{AUTHORIZATION, HeaderValue};

use super::credentials::{self, BadCredentials, Credentials};
use super::memo::CredentialMemo;
use crate::cookies;
use crate::proxy::ConnInfo;
use crate::target::Target;

/// A request's context: built once, read by every stage.
pub struct RequestContext<'a> {
    pub target: Target,
    pub client_ip: IpAddr,
    pub conn: &'a ConnInfo,
    /// The connection's memo of its last token request (forwarded requests).
    pub(super) memo: Option<&'a CredentialMemo>,
    presented: Result<Option<Presented>, BadCredentials>,
    session: Option<Box<str>>,
    session_cookie: bool,
}

/// Credentials as they were presented: decoded, with the header value that
/// carried them (a password is checked, and a PAT minted, with it).
pub struct Presented {
    pub credentials: Credentials,
    pub authorization: HeaderValue,
}

impl<'a> RequestContext<'a> {
    /// The context of a request with `headers`, its `Authorization` decoded.
    pub fn new(target: Target, client_ip: IpAddr, conn: &'a ConnInfo, headers: &HeaderMap) -> Self {
        let presented = credentials::from_headers(headers).map(|decoded| {
            decoded.and_then(|credentials| {
                let mut authorization = headers.get(AUTHORIZATION)?.clone();
                authorization.set_sensitive(true);
                Some(Presented {
                    credentials,
                    authorization,
                })
            })
        });
        RequestContext {
            target,
            client_ip,
            conn,
            memo: None,
            presented,
            session: None,
            session_cookie: false,
        }
    }

    /// The context, with the connection's memo for token requests.
    pub fn remembering(mut self, memo: &'a CredentialMemo) -> Self {
        self.memo = Some(memo);
        self
    }

    /// The context, with the page's session cookie read from `headers`:
    /// only the gateway's own routes accept a session.
    pub fn reading_session(mut self, headers: &HeaderMap) -> Self {
        self.session = cookies::session_cookie(headers).map(Box::from);
        self.session_cookie = self.session.is_some() || cookies::has_session_cookie(headers);
        self
    }

    /// The decoded credentials: `Ok(None)` without `Authorization`, `Err`
    /// for a malformed one.
    pub fn presented(&self) -> Result<Option<&Presented>, &BadCredentials> {
        self.presented.as_ref().map(Option::as_ref)
    }

    /// The credentials, when they were well-formed.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.presented.as_ref().ok()?.as_ref().map(|p| &p.credentials)
    }

    /// The gateway token presented, if the credentials are one.
    pub fn token_secret(&self) -> Option<&str> {
        self.credentials()?.gateway_token().map(|(secret, _)| secret)
    }

    /// The Basic user name presented, if any.
    pub fn basic_user(&self) -> Option<&str> {
        self.credentials()?.basic_user()
    }

    /// The page's session id (from the one session cookie), if read.
    pub fn session_id(&self) -> Option<&str> {
        self.session.as_deref()
    }

    /// Whether the request carries the session cookie at all (it came from the page).
    pub fn came_from_page(&self) -> bool {
        self.session_cookie
    }

    /// This request, presenting Basic `user:password` typed into the page's
    /// login form instead of its `Authorization`, to be authenticated as
    /// any other credentials.
    pub fn with_password(&self, user: &str, password: &str) -> Result<RequestContext<'a>, BadCredentials> {
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut authorization =
            HeaderValue::from_str(&format!("Basic {encoded}")).map_err(|_| BadCredentials::NotAscii)?;
        authorization.set_sensitive(true);
        let credentials = Credentials::Basic {
            user: user.to_owned(),
            secret: password.to_owned(),
        };
        Ok(RequestContext {
            target: self.target.clone(),
            client_ip: self.client_ip,
            conn: self.conn,
            memo: None,
            presented: Ok(Some(Presented {
                credentials,
                authorization,
            })),
            session: None,
            session_cookie: self.session_cookie,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context<'a>(conn: &'a ConnInfo, headers: &[(&str, &str)]) -> (RequestContext<'a>, HeaderMap) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let target = crate::target::canonicalise(&"/x".parse().unwrap()).unwrap();
        let cx = RequestContext::new(target, conn.peer.ip(), conn, &map);
        (cx, map)
    }

    #[test]
    fn credentials_are_decoded_once_and_kept_with_their_header() {
        let conn = ConnInfo::new("10.0.0.1:1".parse().unwrap(), false);
        // alice:tgw_x
        let (cx, _) = context(&conn, &[("authorization", "Basic YWxpY2U6dGd3X3g=")]);
        assert_eq!(cx.basic_user(), Some("alice"));
        assert_eq!(cx.token_secret(), Some("tgw_x"));
        let presented = cx.presented().unwrap().unwrap();
        assert!(presented.authorization.is_sensitive(), "never logged");
        let (cx, _) = context(&conn, &[("authorization", "Basic !!!")]);
        assert_eq!(cx.presented().err(), Some(&BadCredentials::BadBase64));
        assert_eq!(cx.credentials(), None);
        let (cx, _) = context(&conn, &[("authorization", "Bearer a"), ("authorization", "Bearer a")]);
        assert_eq!(cx.presented().err(), Some(&BadCredentials::Repeated));
        let (cx, _) = context(&conn, &[]);
        assert!(matches!(cx.presented(), Ok(None)));
    }

    #[test]
    fn the_session_is_read_only_when_asked_for_and_a_form_password_replaces_the_header() {
        let conn = ConnInfo::new("10.0.0.1:1".parse().unwrap(), false);
        let (cx, headers) = context(&conn, &[("cookie", "a=1; tokengate_session=abc")]);
        assert_eq!(cx.session_id(), None, "not read for a forwarded request");
        let cx = cx.reading_session(&headers);
        assert_eq!(cx.session_id(), Some("abc"));
        assert!(cx.came_from_page());
        let form = cx.with_password("bob", "pw").unwrap();
        assert_eq!(form.basic_user(), Some("bob"));
        assert_eq!(form.token_secret(), None);
        assert_eq!(form.session_id(), None, "a login is not a session");
        assert_eq!(cx.basic_user(), None, "the request's own credentials are unchanged");
        let (cx, headers) = context(&conn, &[("cookie", "tokengate_session=a; tokengate_session=b")]);
        let cx = cx.reading_session(&headers);
        assert_eq!(cx.session_id(), None, "two session cookies: neither");
        assert!(cx.came_from_page());
    }
}
