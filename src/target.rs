//! Canonicalising the request target (SPEC §2.2). The canonical path is both
//! what the checks see and what is forwarded, so Confluence routes exactly the
//! path that was authorised.
//!
//! Decisions beyond the spec, chosen to match how Tomcat (Confluence's
//! container) routes: empty segments collapse (`//` is `/`), a raw `\` is
//! refused, and path parameters (`;jsessionid=..`, `..;`) are kept but flagged
//! so the pipeline can refuse them on token requests, where Tomcat's stripping
//! of `;...` would route a different path than the one checked.

use std::fmt::Write as _;

use hyper::http::uri::{InvalidUri, PathAndQuery};

/// Why a path cannot be canonicalised (400 `bad_path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadPath {
    #[error("the request path must begin with '/'")]
    NotAbsolute,
    #[error("the path contains an encoded '/' or '\\'")]
    EncodedSeparator,
    #[error("the path contains an encoded '.' in a dot segment")]
    EncodedDotSegment,
    #[error("the path contains an encoded NUL")]
    EncodedNul,
    #[error("the path contains an invalid percent-encoding")]
    BadEncoding,
    #[error("the path contains a '\\'")]
    Backslash,
    #[error("the path goes above the root with '..'")]
    AboveRoot,
}

/// A canonical request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Canonical path: dot segments resolved, unreserved characters decoded.
    pub path: String,
    /// The raw query (without `?`), forwarded byte for byte.
    pub query: Option<String>,
    /// Whether a segment carries `;` path parameters.
    pub has_path_parameters: bool,
    /// The request's own path and query, when canonicalising changed nothing
    /// (the usual case): forwarded as is, without building it again.
    received: Option<PathAndQuery>,
}

impl Target {
    /// Replaces the query forwarded (SPEC §17 confines `cql` and adds
    /// `spaceKey`); what the checks saw is the query as sent.
    pub fn set_query(&mut self, query: String) {
        self.query = Some(query);
        self.received = None;
    }

    /// The path and query to forward: the canonical path and the raw query.
    pub fn forwarded(&self) -> Result<PathAndQuery, InvalidUri> {
        if let Some(received) = &self.received {
            return Ok(received.clone());
        }
        match &self.query {
            Some(query) => PathAndQuery::try_from(format!("{}?{query}", self.path)),
            None => PathAndQuery::try_from(self.path.as_str()),
        }
    }
}

/// Canonicalises a request URI's path and keeps its query.
pub fn canonicalise(uri: &hyper::Uri) -> Result<Target, BadPath> {
    let path = canonical_path(uri.path())?;
    let received = uri.path_and_query().filter(|received| received.path() == path).cloned();
    Ok(Target {
        has_path_parameters: path.contains(';'),
        path,
        query: uri.query().map(str::to_owned),
        received,
    })
}

/// A target written as text (`/path?query`, as an admin types one): its
/// canonical path and raw query.
pub fn canonical_text_target(text: &str) -> Result<(String, Option<&str>), BadPath> {
    let (path, query) = text.split_once('?').map_or((text, None), |(p, q)| (p, Some(q)));
    Ok((canonical_path(path)?, query))
}

/// Resolves `.`/`..`, collapses empty segments and decodes unreserved
/// percent-encodings; refuses encodings that could route differently.
pub fn canonical_path(raw: &str) -> Result<String, BadPath> {
    let rest = raw.strip_prefix('/').ok_or(BadPath::NotAbsolute)?;
    if is_already_canonical(rest) {
        return Ok(raw.to_owned());
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let mut out: Vec<String> = Vec::with_capacity(segments.len());
    let mut trailing_slash = false;
    for (i, raw_segment) in segments.iter().enumerate() {
        let is_last = i + 1 == segments.len();
        let (segment, encoded_dot) = decode_segment(raw_segment)?;
        let is_dot_segment = segment == "." || segment == "..";
        if is_dot_segment && encoded_dot {
            return Err(BadPath::EncodedDotSegment);
        }
        if segment == ".." && out.pop().is_none() {
            return Err(BadPath::AboveRoot);
        }
        if segment.is_empty() || is_dot_segment {
            trailing_slash = is_last;
        } else {
            out.push(segment);
        }
    }
    let mut path = String::with_capacity(raw.len());
    for segment in &out {
        path.push('/');
        path.push_str(segment);
    }
    if out.is_empty() || trailing_slash {
        path.push('/');
    }
    Ok(path)
}

/// The common case, checked without allocating: no encodings, no
/// backslash, no empty or dot segments (a trailing slash is fine).
fn is_already_canonical(rest: &str) -> bool {
    !rest.is_empty()
        && !rest.starts_with('/')
        && !rest.contains(['%', '\\'])
        && !rest.contains("//")
        && !rest.split('/').any(|segment| segment == "." || segment == "..")
}

/// Decodes percent-encoded unreserved characters and normalises other
/// encodings to upper-case hex. Returns whether an encoded `.` was decoded.
fn decode_segment(raw: &str) -> Result<(String, bool), BadPath> {
    if !raw.contains(['%', '\\']) {
        return Ok((raw.to_owned(), false));
    }
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut encoded_dot = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(BadPath::Backslash),
            b'%' => {
                let byte = bytes
                    .get(i + 1..i + 3)
                    .and_then(decode_hex_pair)
                    .ok_or(BadPath::BadEncoding)?;
                match byte {
                    b'/' | b'\\' => return Err(BadPath::EncodedSeparator),
                    0 => return Err(BadPath::EncodedNul),
                    b'.' => {
                        encoded_dot = true;
                        out.push('.');
                    }
                    b if is_unreserved(b) => out.push(char::from(b)),
                    b => write!(out, "%{b:02X}").expect("writing to a String cannot fail"),
                }
                i += 3;
            }
            _ => {
                // Everything else is copied as it came (the URI parser has
                // already limited it to valid path characters).
                let end = raw[i..].find(['%', '\\']).map_or(raw.len(), |n| i + n);
                out.push_str(&raw[i..end]);
                i = end;
            }
        }
    }
    Ok((out, encoded_dot))
}

/// Two hex digits as a byte; anything else (including a sign) is `None`.
fn decode_hex_pair(pair: &[u8]) -> Option<u8> {
    let digit = |b: u8| char::from(b).to_digit(16);
    Some(u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).expect("two hex digits fit a byte"))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        canonical_path(raw).unwrap_or_else(|e| panic!("{raw}: {e}"))
    }

    #[test]
    fn dot_segments_resolve() {
        assert_eq!(ok("/rest/api/../api/space"), "/rest/api/space");
        assert_eq!(ok("/rest/./api/space"), "/rest/api/space");
        assert_eq!(ok("/rest/api/space/.."), "/rest/api/");
        assert_eq!(ok("/rest/api/."), "/rest/api/");
        assert_eq!(ok("/a/b/../../c"), "/c");
    }

    #[test]
    fn the_fast_path_agrees_with_the_full_one() {
        for raw in ["/", "/rest/api/space", "/rest/api/", "/a", "/a/b.c/d..e/.f", "/a/b/c/"] {
            let rest = &raw[1..];
            assert!(is_already_canonical(rest) || rest.is_empty(), "{raw}");
            assert_eq!(ok(raw), raw);
        }
        for raw in ["//", "/a//b", "/a/./b", "/a/..", "/a/.", "/%61", "/a\\b", "//a"] {
            assert!(!is_already_canonical(&raw[1..]), "{raw}");
        }
    }

    #[test]
    fn root_and_trailing_slashes() {
        assert_eq!(ok("/"), "/");
        assert_eq!(ok("/rest/api/"), "/rest/api/");
        assert_eq!(ok("/rest//api///space"), "/rest/api/space");
        assert_eq!(ok("/a/.."), "/");
    }

    #[test]
    fn going_above_the_root_is_refused() {
        assert_eq!(canonical_path("/.."), Err(BadPath::AboveRoot));
        assert_eq!(canonical_path("/rest/../../etc"), Err(BadPath::AboveRoot));
    }

    #[test]
    fn unreserved_encodings_are_decoded_others_kept() {
        assert_eq!(ok("/rest/%61pi/sp%61ce"), "/rest/api/space");
        assert_eq!(ok("/rest/api/content/My%20Page"), "/rest/api/content/My%20Page");
        assert_eq!(ok("/x/%7e%2D%5f"), "/x/~-_");
        assert_eq!(ok("/x/%3b%3A"), "/x/%3B%3A");
        assert_eq!(ok("/x/file%2etxt"), "/x/file.txt");
    }

    #[test]
    fn encoded_dot_segments_are_refused() {
        for raw in [
            "/rest/%2e%2e/admin",
            "/rest/%2E%2E/admin",
            "/rest/.%2e/x",
            "/rest/%2e/x",
            "/%2e",
        ] {
            assert_eq!(canonical_path(raw), Err(BadPath::EncodedDotSegment), "{raw}");
        }
    }

    #[test]
    fn encoded_separators_nul_and_backslashes_are_refused() {
        assert_eq!(canonical_path("/rest/api%2fspace"), Err(BadPath::EncodedSeparator));
        assert_eq!(canonical_path("/rest/api%2Fspace"), Err(BadPath::EncodedSeparator));
        assert_eq!(canonical_path("/rest/api%5cspace"), Err(BadPath::EncodedSeparator));
        assert_eq!(canonical_path("/rest/api%00"), Err(BadPath::EncodedNul));
        assert_eq!(canonical_path("/rest\\..\\admin"), Err(BadPath::Backslash));
    }

    #[test]
    fn double_encoding_stays_literal() {
        assert_eq!(ok("/rest/%252e%252e/admin"), "/rest/%252e%252e/admin");
        assert_eq!(ok("/rest/%252f"), "/rest/%252f");
    }

    #[test]
    fn bad_encodings_are_refused() {
        for raw in ["/x/%", "/x/%2", "/x/%zz", "/x/%+1"] {
            assert_eq!(canonical_path(raw), Err(BadPath::BadEncoding), "{raw}");
        }
        assert_eq!(canonical_path("rest/api"), Err(BadPath::NotAbsolute));
        assert_eq!(canonical_path("*"), Err(BadPath::NotAbsolute));
    }

    #[test]
    fn path_parameters_are_flagged() {
        let uri: hyper::Uri = "/rest/api/space/..;/admin?x=1".parse().unwrap();
        let target = canonicalise(&uri).unwrap();
        assert!(target.has_path_parameters);
        assert_eq!(target.path, "/rest/api/space/..;/admin");
        let plain = canonicalise(&"/rest/api/space?a=%2F&b".parse().unwrap()).unwrap();
        assert!(!plain.has_path_parameters);
        assert_eq!(plain.forwarded().unwrap(), "/rest/api/space?a=%2F&b");
    }

    #[test]
    fn the_forwarded_target_is_the_canonical_path_and_the_raw_query() {
        for (raw, forwarded) in [
            ("/rest/api/space?a=%2F&b", "/rest/api/space?a=%2F&b"),
            ("/rest//api/./x/../space?q=%2e%2e", "/rest/api/space?q=%2e%2e"),
            ("/rest/api/%73pace", "/rest/api/space"),
            ("/rest/api/space?", "/rest/api/space?"),
            ("/", "/"),
        ] {
            let target = canonicalise(&raw.parse().unwrap()).unwrap();
            assert_eq!(target.forwarded().unwrap(), forwarded, "{raw}");
        }
    }
}
