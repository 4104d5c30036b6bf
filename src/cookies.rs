//! The gateway's session cookie as requests and answers carry it: found
//! among a request's cookies, taken out of what is forwarded, and kept out
//! of what Confluence sets. Pure functions over headers, for the sessions
//! ([`crate::auth`]) and the forwarder ([`crate::proxy`]) alike.

use hyper::HeaderMap;
use hyper::header::COOKIE;

/// The cookie's name.
pub const SESSION_COOKIE: &str = "tokengate_session";

/// The session cookie's value among a request's cookies, if there is exactly one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    let mut found = cookies(headers)
        .filter(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value);
    let first = found.next()?;
    // Two session cookies (one planted by a sibling domain): trust neither.
    found.next().is_none().then_some(first)
}

/// Whether a request carries the session cookie at all.
pub fn has_session_cookie(headers: &HeaderMap) -> bool {
    cookies(headers).any(|(name, _)| name == SESSION_COOKIE)
}

fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, value)| (name.trim(), value.trim().trim_matches('"')))
}

/// The `Cookie` header without the session cookie (`None` when nothing is
/// left), for what is forwarded to Confluence.
pub fn without_session_cookie(value: &str) -> Option<String> {
    let kept: Vec<&str> = value
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| pair.split_once('=').map_or(pair.trim(), |(name, _)| name.trim()) != SESSION_COOKIE)
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// Whether a `Set-Cookie` value would set the session cookie.
pub fn sets_session_cookie(value: &[u8]) -> bool {
    let name = value.split(|b| *b == b'=').next().unwrap_or_default();
    name.trim_ascii().eq_ignore_ascii_case(SESSION_COOKIE.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_and_removed_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, "JSESSIONID=1; tokengate_session=abc".parse().unwrap());
        headers.append(COOKIE, "other=2".parse().unwrap());
        assert_eq!(session_cookie(&headers), Some("abc"));
        assert!(has_session_cookie(&headers));
        headers.append(COOKIE, "tokengate_session=planted".parse().unwrap());
        assert_eq!(session_cookie(&headers), None, "two session cookies: neither");
        assert_eq!(
            without_session_cookie("JSESSIONID=1; tokengate_session=abc; x=y").as_deref(),
            Some("JSESSIONID=1; x=y")
        );
        assert_eq!(without_session_cookie("tokengate_session=abc"), None);
        assert_eq!(
            without_session_cookie("tokengate_sessionx=1").as_deref(),
            Some("tokengate_sessionx=1")
        );
        assert!(sets_session_cookie(b"tokengate_session=x; Path=/"));
        assert!(sets_session_cookie(b" TOKENGATE_SESSION =x"));
        assert!(!sets_session_cookie(b"JSESSIONID=tokengate_session"));
    }
}
