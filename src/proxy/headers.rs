//! Header hygiene: hop-by-hop headers, the identity and secret headers no
//! client may set (SPEC §2.3), and what a token request may not carry to
//! Confluence or bring back from it.

use hyper::HeaderMap;
use hyper::header::{
    AUTHORIZATION, CONNECTION, COOKIE, HeaderName, HeaderValue, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, SET_COOKIE,
    TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};

use crate::cookies::{self, SESSION_COOKIE};

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded as received.
static HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Removed from a token request before it is forwarded: the gateway token
/// itself; a `Cookie`, so that the request cannot ride on somebody's
/// Confluence session (outside the token's restrictions); and the method
/// overrides some frameworks honour, so that a rule allowing `POST` cannot
/// let a `DELETE` through.
static TOKEN_REQUEST_STRIPPED: [HeaderName; 5] = [
    AUTHORIZATION,
    COOKIE,
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// What a token request must not carry upstream (see [`TOKEN_REQUEST_STRIPPED`]).
/// One scan over the names finds what is there; only that is removed (each
/// removal hashes a name).
pub fn strip_token_request(headers: &mut HeaderMap) {
    let mut present = [false; TOKEN_REQUEST_STRIPPED.len()];
    for name in headers.keys() {
        if let Some(i) = TOKEN_REQUEST_STRIPPED.iter().position(|stripped| stripped == name) {
            present[i] = true;
        }
    }
    for (name, present) in TOKEN_REQUEST_STRIPPED.iter().zip(present) {
        if present {
            headers.remove(name);
        }
    }
}

/// What a token request must not bring back: a Confluence session cookie
/// would then work without the token, outside its rules, IP list, expiry
/// and revocation.
pub fn strip_token_response(headers: &mut HeaderMap) {
    headers.remove(SET_COOKIE);
}

/// The web page's session cookie never reaches Confluence (SPEC §15): it is
/// cut out of a forwarded `Cookie` header, the other cookies kept.
pub fn strip_session_cookie(headers: &mut HeaderMap) {
    let has_session = headers
        .get_all(COOKIE)
        .iter()
        .any(|v| memchr::memmem::find(v.as_bytes(), SESSION_COOKIE.as_bytes()).is_some());
    if !has_session {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(cookies::without_session_cookie)
        .collect();
    headers.remove(COOKIE);
    for value in kept {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.append(COOKIE, value);
        }
    }
}

/// ...and Confluence cannot set it: a `Set-Cookie` naming it is dropped.
pub fn strip_session_set_cookie(headers: &mut HeaderMap) {
    if !headers
        .get_all(SET_COOKIE)
        .iter()
        .any(|v| cookies::sets_session_cookie(v.as_bytes()))
    {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(SET_COOKIE)
        .iter()
        .filter(|v| !cookies::sets_session_cookie(v.as_bytes()))
        .cloned()
        .collect();
    headers.remove(SET_COOKIE);
    for value in kept {
        headers.append(SET_COOKIE, value);
    }
}

/// Names stripped from every inbound request, matched ignoring case and
/// treating `_` as `-` (so `X_Forwarded_User` is stripped too: some servers
/// fold underscores into dashes).
#[derive(Debug, Clone)]
pub struct ProtectedHeaders {
    folded: Vec<String>,
}

impl ProtectedHeaders {
    pub fn new(names: &[&HeaderName]) -> Self {
        ProtectedHeaders {
            folded: names.iter().map(|n| fold(n.as_str())).collect(),
        }
    }

    fn matches(&self, name: &HeaderName) -> bool {
        let name = name.as_str();
        self.folded
            .iter()
            .any(|p| p.len() == name.len() && p.bytes().zip(name.bytes()).all(|(a, b)| a == fold_byte(b)))
    }

    /// Removes every header that matches a protected name.
    pub fn strip(&self, headers: &mut HeaderMap) {
        let doomed: Vec<HeaderName> = headers.keys().filter(|n| self.matches(n)).cloned().collect();
        for name in doomed {
            headers.remove(&name);
        }
    }
}

fn fold(name: &str) -> String {
    name.bytes().map(|b| char::from(fold_byte(b))).collect()
}

fn fold_byte(b: u8) -> u8 {
    if b == b'_' { b'-' } else { b.to_ascii_lowercase() }
}

fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|hop| hop.as_str().eq_ignore_ascii_case(name))
}

/// Whether the request asks to switch to WebSocket (Synchrony's
/// collaborative editing), the only upgrade passed on: any other (`h2c`, ...)
/// is dropped, so a tunnel never carries requests the gateway did not check.
pub fn websocket_requested(headers: &HeaderMap) -> bool {
    let mut upgrades = headers.get_all(UPGRADE).iter();
    let websocket = match (upgrades.next(), upgrades.next()) {
        (Some(protocol), None) => protocol.as_bytes().eq_ignore_ascii_case(b"websocket"),
        _ => false,
    };
    websocket && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Removes hop-by-hop headers and those the `Connection` header names. With
/// `keep_upgrade`, an `Upgrade` handshake survives (`Connection: upgrade`).
///
/// Every message passes through here twice (request and response), and
/// most carry no hop-by-hop header at all: one scan over the names finds
/// that out without hashing or allocating.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| HOP_BY_HOP.contains(name))
        .cloned()
        .chain(
            connection_tokens(headers)
                // Hop-by-hop names (`keep-alive`, the usual token) are in `doomed` already.
                .filter(|t| !is_hop_by_hop(t))
                .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok()),
        )
        .collect();
    let upgrade = headers.get(UPGRADE).cloned();
    for name in doomed {
        headers.remove(name);
    }
    if keep_upgrade && let Some(protocol) = upgrade {
        headers.insert(UPGRADE, protocol);
        headers.insert(CONNECTION, hyper::header::HeaderValue::from_static("upgrade"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn strips_identity_headers_in_every_spelling() {
        let identity = HeaderName::from_static("x-forwarded-user");
        let secret = HeaderName::from_static("x-tokengate-secret");
        let protected = ProtectedHeaders::new(&[&identity, &secret]);
        let mut headers = HeaderMap::new();
        for name in [
            "X-Forwarded-User",
            "x_forwarded_user",
            "X_FORWARDED-USER",
            "x-tokengate_secret",
            "x-forwarded-users",
            "accept",
        ] {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("admin"),
            );
        }
        protected.strip(&mut headers);
        let mut left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x-forwarded-users"]);
    }

    #[test]
    fn removes_hop_by_hop_and_connection_named_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, X-Secret-Hop"));
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        remove_hop_by_hop(&mut headers, false);
        assert_eq!(headers.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["accept"]);
    }

    #[test]
    fn removes_hop_by_hop_headers_without_a_connection_header() {
        for name in ["proxy-connection", "keep-alive", "transfer-encoding", "upgrade"] {
            let mut headers = HeaderMap::new();
            headers.insert("accept", HeaderValue::from_static("*/*"));
            headers.insert(HeaderName::from_static(name), HeaderValue::from_static("x"));
            remove_hop_by_hop(&mut headers, false);
            assert_eq!(
                headers.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
                ["accept"],
                "{name}"
            );
        }
    }

    #[test]
    fn keeps_an_upgrade_handshake_when_asked() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(websocket_requested(&headers));
        remove_hop_by_hop(&mut headers, true);
        assert_eq!(headers[UPGRADE], "WebSocket");
        assert_eq!(headers[CONNECTION], "upgrade");
    }

    #[test]
    fn only_websocket_upgrades_are_passed_on() {
        let upgrade = |protocols: &[&'static str]| {
            let mut headers = HeaderMap::new();
            headers.insert(CONNECTION, HeaderValue::from_static("Upgrade, HTTP2-Settings"));
            for protocol in protocols {
                headers.append(UPGRADE, HeaderValue::from_static(protocol));
            }
            headers
        };
        for refused in [
            &["h2c"][..],
            &["websocket, h2c"],
            &["websocket", "h2c"],
            &["TLS/1.2"],
            &[],
        ] {
            let mut headers = upgrade(refused);
            assert!(!websocket_requested(&headers), "{refused:?}");
            let websocket = websocket_requested(&headers);
            remove_hop_by_hop(&mut headers, websocket);
            assert!(headers.is_empty(), "{refused:?}: {headers:?}");
        }
        let mut no_connection = HeaderMap::new();
        no_connection.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!websocket_requested(&no_connection));
    }

    #[test]
    fn the_pages_session_cookie_never_reaches_confluence_and_cannot_be_set_by_it() {
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            HeaderValue::from_static("JSESSIONID=1; tokengate_session=s3cret"),
        );
        headers.append(COOKIE, HeaderValue::from_static("tokengate_session=again"));
        headers.append(COOKIE, HeaderValue::from_static("seraph=2"));
        strip_session_cookie(&mut headers);
        let left: Vec<_> = headers.get_all(COOKIE).iter().collect();
        assert_eq!(left, ["JSESSIONID=1", "seraph=2"]);
        let mut untouched = HeaderMap::new();
        untouched.append(COOKIE, HeaderValue::from_static("JSESSIONID=1"));
        strip_session_cookie(&mut untouched);
        assert_eq!(untouched[COOKIE], "JSESSIONID=1");
        let mut response = HeaderMap::new();
        response.append(SET_COOKIE, HeaderValue::from_static("JSESSIONID=2; Path=/"));
        response.append(
            SET_COOKIE,
            HeaderValue::from_static("tokengate_session=planted; Path=/"),
        );
        strip_session_set_cookie(&mut response);
        let left: Vec<_> = response.get_all(SET_COOKIE).iter().collect();
        assert_eq!(left, ["JSESSIONID=2; Path=/"]);
    }

    #[test]
    fn a_token_request_carries_no_session_token_or_method_override() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Basic x"),
            ("cookie", "JSESSIONID=1"),
            ("x-http-method-override", "DELETE"),
            ("x-http-method", "DELETE"),
            ("x-method-override", "DELETE"),
            ("accept", "*/*"),
        ] {
            headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        strip_token_request(&mut headers);
        assert_eq!(headers.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["accept"]);
        let mut response = HeaderMap::new();
        response.append(SET_COOKIE, HeaderValue::from_static("JSESSIONID=1"));
        response.append(SET_COOKIE, HeaderValue::from_static("seraph.confluence=2"));
        response.append("content-type", HeaderValue::from_static("application/json"));
        strip_token_response(&mut response);
        assert_eq!(
            response.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["content-type"]
        );
    }
}
