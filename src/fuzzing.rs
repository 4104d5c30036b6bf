//! The bodies of the fuzz targets in `fuzz/` and the invariants they check.
//! Not part of the gateway: it lives in the library so that the cargo-fuzz
//! targets and the corpus replay test (below, run by `cargo test`) share one
//! copy, and a regression input is checked exactly as the fuzzer checked it.
//!
//! Each function takes arbitrary bytes and panics, naming the broken
//! invariant, when the code under test misbehaves.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hyper::HeaderMap;
use hyper::header::{AUTHORIZATION, HeaderValue};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::auth::decode as credentials;
use crate::auth::{BadCredentials, Credentials, Scheme};
use crate::rules::{JsonBody, RequestHead, RuleSet, Verdict};
use crate::spaces::cql;
use crate::target::{self as canonical, BadPath};

/// One fuzz target's body: arbitrary bytes in, a panic when an invariant breaks.
pub type Target = fn(&[u8]);

/// Every target, by the name of its file under `fuzz/fuzz_targets` and its
/// directory under `tests/fuzz_corpus`.
pub const TARGETS: &[(&str, Target)] = &[
    ("credentials", credentials),
    ("canonical_path", canonical_path),
    ("rules_parse", rules_parse),
    ("json_body", json_body),
    ("cql", cql),
];

/// `data` as an `Authorization` value: through [`credentials::parse`] when
/// it is UTF-8, and through [`credentials::from_headers`] when it is a valid
/// header value, which must agree with `parse`.
pub fn credentials(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        check_credentials(text);
    }
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, value.clone());
    let from_headers = credentials::from_headers(&headers);
    match value.to_str() {
        Ok(text) => assert_eq!(
            from_headers,
            credentials::parse(text).map(Some),
            "from_headers and parse disagree"
        ),
        Err(_) => assert_eq!(from_headers, Err(BadCredentials::NotAscii)),
    }
    headers.append(AUTHORIZATION, value);
    assert_eq!(
        credentials::from_headers(&headers),
        Err(BadCredentials::Repeated),
        "two Authorization headers must be refused"
    );
}

fn check_credentials(value: &str) {
    let scheme_is = |name: &str| {
        let trimmed = value.trim();
        trimmed
            .get(..name.len())
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case(name))
    };
    let parsed = match credentials::parse(value) {
        Ok(parsed) => parsed,
        Err(_) => {
            assert!(scheme_is("basic"), "only Basic credentials can be malformed");
            return;
        }
    };
    match &parsed {
        Credentials::Basic { user, secret } => {
            assert!(scheme_is("basic"), "Basic from a value that does not start with it");
            assert!(!user.contains(':'), "the user ends at the first ':'");
            let again = credentials::parse(&format!("Basic {}", STANDARD.encode(format!("{user}:{secret}"))));
            assert_eq!(again.as_ref(), Ok(&parsed), "Basic does not round-trip");
            check_redacted(&parsed, secret, &format!("{user:?}"));
        }
        Credentials::Bearer { secret } => {
            assert!(scheme_is("bearer"), "Bearer from a value that does not start with it");
            assert_eq!(secret.trim(), secret, "a Bearer secret keeps surrounding whitespace");
            check_redacted(&parsed, secret, "");
        }
        Credentials::Other => {
            assert!(parsed.gateway_token().is_none());
        }
    }
    let secret = match &parsed {
        Credentials::Basic { secret, .. } | Credentials::Bearer { secret } => secret.as_str(),
        Credentials::Other => return,
    };
    let scheme = match parsed {
        Credentials::Basic { .. } => Scheme::Basic,
        _ => Scheme::Bearer,
    };
    let expected = secret.starts_with("tgw_").then_some((secret, scheme));
    assert_eq!(
        parsed.gateway_token(),
        expected,
        "gateway_token and the tgw_ prefix disagree"
    );
}

/// A `tgw_` secret never shows in `{:?}`, unless the (unredacted) user name
/// holds it. A secret with a `"` could straddle the quoted user name and the
/// fixed text, so it is not checked.
fn check_redacted(credentials: &Credentials, secret: &str, user_debug: &str) {
    if secret.starts_with("tgw_") && !secret.contains('"') && !user_debug.contains(secret) {
        assert!(!format!("{credentials:?}").contains(secret), "Debug shows the secret");
    }
}

/// `data` as a request path through [`canonical::canonical_path`] (any
/// UTF-8), and as a request target through [`canonical::canonicalise`]
/// (when hyper parses it as a URI), checking what SPEC §2.2 promises of
/// the canonical path.
pub fn canonical_path(data: &[u8]) {
    if let Ok(raw) = std::str::from_utf8(data)
        && let Ok(path) = canonical::canonical_path(raw)
    {
        check_accepted_raw_path(raw);
        check_canonical(&path);
    }
    let Ok(uri) = hyper::Uri::try_from(data) else {
        return;
    };
    let target = canonical::canonicalise(&uri);
    assert_eq!(
        target.as_ref().map(|t| t.path.as_str()).map_err(|e| *e),
        canonical::canonical_path(uri.path()).as_deref().map_err(|e| *e),
        "canonicalise and canonical_path disagree"
    );
    let Ok(target) = target else { return };
    assert_eq!(
        target.query.as_deref(),
        uri.query(),
        "the query is not kept byte for byte"
    );
    assert_eq!(target.has_path_parameters, target.path.contains(';'));
    // SPEC §12: the forwarded path is the checked path.
    let forwarded = target
        .forwarded()
        .unwrap_or_else(|e| panic!("the canonical target {target:?} is not a valid URI: {e}"));
    assert_eq!(
        forwarded.path(),
        target.path,
        "the forwarded path is not the checked path"
    );
    assert_eq!(forwarded.query(), target.query.as_deref());
}

/// What an accepted raw path cannot have held (SPEC §2.2).
fn check_accepted_raw_path(raw: &str) {
    let lower = raw.to_ascii_lowercase();
    for encoded in ["%2f", "%5c", "%00"] {
        assert!(!lower.contains(encoded), "accepted a path with {encoded}");
    }
    assert!(!raw.contains('\\'), "accepted a path with '\\'");
    for segment in lower.split('/') {
        if segment.contains("%2e") {
            let decoded = segment.replace("%2e", ".");
            assert!(
                decoded != "." && decoded != "..",
                "accepted an encoded dot segment {segment:?}"
            );
        }
    }
}

/// The shape of every canonical path, and that it is a fixed point.
fn check_canonical(path: &str) {
    assert!(path.starts_with('/'), "{path:?} does not start with '/'");
    assert!(!path.contains("//"), "{path:?} has an empty segment");
    assert!(!path.contains('\\'), "{path:?} has a '\\'");
    for segment in path.split('/') {
        assert!(segment != "." && segment != "..", "{path:?} has a dot segment");
    }
    let bytes = path.as_bytes();
    for (at, _) in path.match_indices('%') {
        let pair = bytes
            .get(at + 1..at + 3)
            .unwrap_or_else(|| panic!("{path:?}: truncated '%'"));
        assert!(
            pair.iter().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)),
            "{path:?}: an encoding that is not two upper-case hex digits"
        );
        let byte = u8::from_str_radix(std::str::from_utf8(pair).expect("hex digits are ASCII"), 16).expect("hex");
        let unreserved = byte.is_ascii_alphanumeric() || b"-._~".contains(&byte);
        assert!(!unreserved, "{path:?}: an unreserved character left encoded");
        assert!(!b"/\\\0".contains(&byte), "{path:?}: an encoded separator or NUL");
    }
    assert_eq!(
        canonical::canonical_path(path),
        Ok::<_, BadPath>(path.to_owned()),
        "canonicalising {path:?} again changes it"
    );
}

/// Requests every parsed rule set is evaluated on.
const HEADS: &[RequestHead<'static>] = &[
    RequestHead {
        method: "GET",
        path: "/rest/api/space",
        query: None,
    },
    RequestHead {
        method: "POST",
        path: "/rest/api/content",
        query: Some("spaceKey=PM1&expand=history&spaceKey=PM%32"),
    },
    RequestHead {
        method: "PUT",
        path: "/rest/api/content/123/",
        query: Some("a=1&a=&b+c=%ZZ&="),
    },
    RequestHead {
        method: "get",
        path: "/",
        query: Some(""),
    },
];

const BODY: &str =
    r#"{"type":"page","title":"TEST x","space":{"key":"DOCS"},"ancestors":[{"id":1}],"n":1.50,"b":true,"z":null}"#;

/// `data` as `limitTo` text through [`RuleSet::parse`]. An error must point
/// at a line and column; a parsed set must survive being stored (lines
/// joined with `\n`, or `<br>` as the management API shows them) and read
/// back, and its passes must agree on a few fixed requests.
pub fn rules_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let rules = match RuleSet::parse(text) {
        Ok(rules) => rules,
        Err(error) => {
            assert!(error.line >= 1 && error.column >= 1, "{error}");
            assert!(!error.message.is_empty());
            return;
        }
    };
    assert_eq!(rules.is_empty(), rules.lines().is_empty());
    for line in rules.lines() {
        assert!(!line.is_empty() && line.trim() == line, "line {line:?} is not trimmed");
    }
    let body = match JsonBody::parse(Some("application/json"), BODY.as_bytes()) {
        Ok(body) => body,
        Err(error) => panic!("the fixed body is ambiguous: {error}"),
    };
    for separator in ["\n", "<br>"] {
        let stored = rules.lines().join(separator);
        let reloaded = RuleSet::parse(&stored)
            .unwrap_or_else(|error| panic!("the stored form {stored:?} does not parse: {error}"));
        assert_eq!(reloaded.lines(), rules.lines(), "storing changes the rules");
        for head in HEADS {
            assert_eq!(
                std::mem::discriminant(&reloaded.check(head)),
                std::mem::discriminant(&rules.check(head)),
                "storing changes the verdict on {head:?}"
            );
        }
    }
    for head in HEADS {
        for body in [&body, &JsonBody::NotJson] {
            check_passes_agree(&rules, head, body);
        }
    }
}

fn check_passes_agree(rules: &RuleSet, head: &RequestHead<'_>, body: &JsonBody) {
    let with_body = rules.check_with_body(head, body);
    let explained = rules.explain(head, Some(body));
    assert_eq!(
        with_body.is_ok(),
        explained.allowed,
        "check_with_body and explain disagree"
    );
    assert_eq!(with_body.as_ref().ok().and_then(|p| p.line()), explained.allowed_by);
    match rules.check(head) {
        Verdict::Permit(permit) => {
            assert!(
                with_body.is_ok_and(|p| p.line() <= permit.line()),
                "check permits, check_with_body does not"
            );
        }
        Verdict::Denied(_) => assert!(with_body.is_err(), "check denies, check_with_body permits"),
        Verdict::NeedsJsonBody => {}
    }
}

/// `data` as a JSON request body through [`JsonBody::parse`], checked
/// against serde_json's own reading of the same bytes: the body is JSON
/// exactly when serde_json parses it, ambiguous exactly when an object in
/// it repeats a key (seen by counting every key serde_json reads against
/// the keys left in its tree, where a repeat overwrites), and otherwise the
/// same tree. A body not declared JSON is never read.
pub fn json_body(data: &[u8]) {
    for content_type in [None, Some("text/plain"), Some("application/jsonp")] {
        assert_eq!(JsonBody::parse(content_type, data), Ok(JsonBody::NotJson));
    }
    let ours = JsonBody::parse(Some("application/json"), data);
    let theirs = serde_json::from_slice::<Value>(data);
    let Ok(tree) = theirs else {
        assert!(
            !matches!(ours, Ok(JsonBody::Json(_))),
            "JSON by JsonBody but not by serde_json"
        );
        return;
    };
    let keys_read = count_keys_read(data).expect("serde_json parsed it once");
    let repeated = keys_read != count_keys_kept(&tree);
    match ours {
        Ok(JsonBody::Json(value)) => {
            assert!(!repeated, "a repeated key was not reported");
            assert_eq!(value, tree, "JsonBody and serde_json read different trees");
        }
        Ok(JsonBody::NotJson) => panic!("serde_json parses a body JsonBody calls not JSON"),
        Err(ambiguous) => {
            assert!(repeated, "ambiguous without a repeated key");
            assert!(has_key(&tree, ambiguous.key()), "the reported key is not in the body");
        }
    }
    // What serde_json writes never repeats a key.
    let written = serde_json::to_vec(&tree).expect("a Value always serialises");
    assert_eq!(
        JsonBody::parse(Some("application/vnd.api+json; charset=utf-8"), &written),
        Ok(JsonBody::Json(tree)),
        "serde_json's own output is not read back as the same tree"
    );
}

/// How many object keys a parse of `data` reads, repeats included.
fn count_keys_read(data: &[u8]) -> serde_json::Result<usize> {
    let mut deserializer = serde_json::Deserializer::from_slice(data);
    let count = KeyCounter.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(count)
}

fn count_keys_kept(value: &Value) -> usize {
    match value {
        Value::Object(object) => object.len() + object.values().map(count_keys_kept).sum::<usize>(),
        Value::Array(items) => items.iter().map(count_keys_kept).sum(),
        _ => 0,
    }
}

fn has_key(value: &Value, key: &str) -> bool {
    match value {
        Value::Object(object) => object.contains_key(key) || object.values().any(|v| has_key(v, key)),
        Value::Array(items) => items.iter().any(|v| has_key(v, key)),
        _ => false,
    }
}

/// Counts the object keys of any JSON value, ignoring everything else.
#[derive(Clone, Copy)]
struct KeyCounter;

impl<'de> DeserializeSeed<'de> for KeyCounter {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyCounter {
    type Value = usize;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_bool<E>(self, _: bool) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_i64<E>(self, _: i64) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_u64<E>(self, _: u64) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_f64<E>(self, _: f64) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_str<E>(self, _: &str) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut count = 0;
        while let Some(inner) = seq.next_element_seed(self)? {
            count += inner;
        }
        Ok(count)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        let mut count = 0;
        while map.next_key::<IgnoredAny>()?.is_some() {
            count += 1 + map.next_value_seed(self)?;
        }
        Ok(count)
    }
}

/// `data` as a search's `cql` confined to two spaces (SPEC §17): refused,
/// or rewritten to a query whose top level is the added `AND space in
/// (...)` (after the original query in parentheses, and before its `ORDER
/// BY`), whatever the input; see [`cql::check_invariants`].
pub fn cql(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        cql::check_invariants(text, &["DOCS".to_owned(), "PM".to_owned()]);
    }
}

#[cfg(test)]
mod tests {
    //! Replays the regression corpus, `tests/fuzz_corpus/<target>/*`: inputs
    //! the fuzzers found interesting, and any that once broke an invariant.

    use std::path::Path;

    use super::TARGETS;

    #[test]
    fn regression_corpus_replays_clean() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus");
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let mut files: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|entry| entry.expect("a directory entry").path())
                .collect();
            files.sort();
            assert!(!files.is_empty(), "{}: no corpus", dir.display());
            for file in files {
                let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                if let Err(panic) = std::panic::catch_unwind(|| target(&data)) {
                    let message = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("a panic");
                    panic!("{}: {message}", file.display());
                }
            }
        }
    }
}
