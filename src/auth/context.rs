//! One request as the gateway sees it before it acts on it: where it goes
//! (the canonical target), who sent it (client IP, connection), and what it
//! presented: the `Authorization` header decoded once (SPEC §2.5) and the
//! page's session id. The pipeline builds it for every request; the
//! gateway's own routes and [`Authenticator::authenticate`](super::Authenticator::authenticate)
//! read it, so no stage decodes the credentials again. The body stays with
//! the request, read and parsed at most once by [`crate::body::read_json`].

use std::net::IpAddr;
use std::sync::OnceLock;

use hyper::HeaderMap;
use hyper::header::HeaderValue;

use super::credentials::{self, BadCredentials, Credentials, Scheme};
use super::memo::{CredentialMemo, Recalled};
use crate::clock::EpochMs;
use crate::cookies;
use crate::proxy::ConnInfo;
use crate::target::Target;

/// A request's context: built once, read by every stage.
pub struct RequestContext<'a> {
    pub target: Target,
    pub client_ip: IpAddr,
    pub conn: &'a ConnInfo,
    /// The connection's memo of its last token request (forwarded requests).
    memo: Option<&'a CredentialMemo>,
    /// The one `Authorization` value, as it came; `Err` when there are several.
    authorization: Result<Option<HeaderValue>, BadCredentials>,
    /// Its credentials, decoded when first asked for, at most once.
    decoded: OnceLock<Result<Option<Presented>, BadCredentials>>,
    /// What the connection's memo recognised the header as, if it did: then
    /// it is never decoded.
    recalled: OnceLock<Recalled>,
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
    /// The context of a request with `headers`.
    pub fn new(target: Target, client_ip: IpAddr, conn: &'a ConnInfo, headers: &HeaderMap) -> Self {
        RequestContext {
            target,
            client_ip,
            conn,
            memo: None,
            authorization: credentials::authorization(headers).map(Option::<&HeaderValue>::cloned),
            decoded: OnceLock::new(),
            recalled: OnceLock::new(),
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
    /// for a malformed one. Decoded here, once, for every stage.
    pub fn presented(&self) -> Result<Option<&Presented>, &BadCredentials> {
        let decoded = self.decoded.get_or_init(|| {
            let Some(value) = self.authorization.clone()? else {
                return Ok(None);
            };
            let credentials = credentials::decode(&value)?;
            let mut authorization = value;
            authorization.set_sensitive(true);
            Ok(Some(Presented {
                credentials,
                authorization,
            }))
        });
        decoded.as_ref().map(Option::as_ref)
    }

    /// The credentials, when they were well-formed.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.presented().ok()?.map(|p| &p.credentials)
    }

    /// The gateway token presented, if the credentials are one.
    pub fn token_secret(&self) -> Option<&str> {
        self.credentials()?.gateway_token().map(|(secret, _)| secret)
    }

    /// The Basic user name presented, if any.
    pub fn basic_user(&self) -> Option<&str> {
        self.credentials()?.basic_user()
    }

    /// How a gateway token was presented, if one was (its scheme, and the
    /// Basic user name typed next to it): from the memo when it recognised
    /// the header, else from the decoded credentials.
    pub fn token_claim(&self) -> Option<(Scheme, Option<&str>)> {
        if let Some(recalled) = self.recalled.get() {
            return Some((recalled.scheme, recalled.basic_user()));
        }
        let (_, scheme) = self.credentials()?.gateway_token()?;
        Some((scheme, self.basic_user()))
    }

    /// The token the connection's memo remembers for exactly this
    /// `Authorization` value, if it does (SPEC §11): the header then needs
    /// no decoding, its secret no hashing.
    pub(super) fn recall(&self, now: EpochMs) -> Option<&Recalled> {
        let value = self.authorization.as_ref().ok()?.as_ref()?;
        let recalled = self.memo?.recall(value, now)?;
        Some(self.recalled.get_or_init(|| recalled))
    }

    /// Remembers the token the presented credentials resolved to, for the
    /// connection's next request with the same header.
    pub(super) fn remember(&self, token: &std::sync::Arc<super::ActiveToken>, scheme: Scheme, now: EpochMs) {
        if let (Some(memo), Ok(Some(presented))) = (self.memo, self.presented()) {
            let basic_user = presented.credentials.basic_user();
            memo.remember(&presented.authorization, token, scheme, basic_user, now);
        }
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
        let presented = Presented {
            credentials,
            authorization: authorization.clone(),
        };
        Ok(RequestContext {
            target: self.target.clone(),
            client_ip: self.client_ip,
            conn: self.conn,
            memo: None,
            authorization: Ok(Some(authorization)),
            decoded: OnceLock::from(Ok(Some(presented))),
            recalled: OnceLock::new(),
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

    #[test]
    fn a_header_the_connections_memo_recognises_is_never_decoded() {
        use crate::auth::rate_limit::RateLimits;
        let conn = ConnInfo::new("10.0.0.1:1".parse().unwrap(), false);
        let memo = CredentialMemo::new(1_000);
        let record = crate::store::test_record("t", None, 0);
        let limits = RateLimits::local(crate::clock::ManualClock::starting_now());
        let token = std::sync::Arc::new(super::super::ActiveToken::from_record(
            &record,
            Default::default(),
            &limits,
        ));
        // bob:tgw_x
        let headers = [("authorization", "Basic Ym9iOnRnd194")];
        let (first, _) = context(&conn, &headers);
        let first = first.remembering(&memo);
        assert!(first.recall(0).is_none(), "nothing remembered yet");
        assert_eq!(first.token_claim(), Some((Scheme::Basic, Some("bob"))), "decoded");
        first.remember(&token, Scheme::Basic, 0);
        let (second, _) = context(&conn, &headers);
        let second = second.remembering(&memo);
        let recalled = second.recall(10).expect("the same header");
        assert!(std::sync::Arc::ptr_eq(&recalled.token, &token));
        assert_eq!(second.token_claim(), Some((Scheme::Basic, Some("bob"))));
        assert!(second.decoded.get().is_none(), "not decoded");
        let (other, _) = context(&conn, &[("authorization", "Basic Ym9iOnRnd195")]);
        assert!(other.remembering(&memo).recall(10).is_none(), "another header");
        let (alone, _) = context(&conn, &headers);
        assert!(alone.recall(10).is_none(), "no memo: the management API's requests");
    }
}
