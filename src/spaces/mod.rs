//! Space confinement (SPEC §17): a token with `spaces` may touch content in
//! those spaces only, whatever endpoint it calls, and change it only where
//! its access level lets it.
//!
//! - [`routes`] is the table of understood requests: each row's request
//!   shape and where each space it touches is named;
//! - [`resolve`] reads a request by that table, exactly as Confluence
//!   reads it (pure): the space keys it names, the content ids whose spaces
//!   must be asked, what its JSON body names, and how its query changes;
//! - [`list`] is a token's space list with its access levels;
//! - [`lookup`] asks Confluence for a content id's space as the token's
//!   user, through the forwarding path, cached and coalesced;
//! - [`cql`] confines a search's CQL: `(<cql>) AND space in (...)`.
//!
//! [`Spaces::confine`] runs them in that order: what the request names is
//! checked before anything is asked of Confluence, and a request the
//! gateway does not understand is refused, never guessed. The dry run
//! ([`dry_run`]) follows the same steps but for the lookups.

pub mod cql;
mod list;
mod lookup;
pub mod resolve;
pub mod routes;

use std::sync::Arc;

use bytes::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::http::uri::PathAndQuery;
use hyper::{Request, StatusCode};
use serde_json::Value;

use crate::body::{Forwarded, Reading, RequestBody, is_upload, is_upload_type, read_json};
use crate::clock::Clock;
use crate::config::Config;
use crate::confluence::Confluence;
use crate::error::{GatewayError, Reason};
use crate::proxy::{ConnInfo, Identity};
use crate::record::Metrics;
use crate::rules::{DryRun, JsonBody, RequestHead};
use crate::target::Target;
pub use list::{Access, SpaceList, entries, normalise};
pub use lookup::SpaceCache;
use resolve::{BodyRead, Plan, QueryChange, Refusal, is_change};

/// Whom a lookup asks as: the forwarded request's identity, user and
/// connection (so a lookup carries exactly what the request would).
pub struct AskAs<'a> {
    pub identity: &'a Identity,
    pub user: &'a str,
    pub conn: &'a ConnInfo,
}

/// What confining a request decided.
#[derive(Debug)]
pub enum Verdict {
    /// Every space it touches is allowed; forward it with this query (when
    /// it changed).
    Allowed { query: Option<String> },
    /// The spaces refuse it (a report-only token forwards it anyway, SPEC §16).
    Refused(GatewayError),
}

/// Headers that ask a server to run another method than the request's:
/// Confluence honours none today, but a confined request is checked for the
/// method it has, so one that asks for another is refused.
const METHOD_OVERRIDES: [&str; 3] = ["x-http-method-override", "x-http-method", "x-method-override"];

/// What a forwarded request may have changed, for the lookup cache.
#[derive(Debug, PartialEq, Eq)]
pub enum Changed {
    Nothing,
    /// The content ids its path names.
    Content(Vec<String>),
    /// It may have moved a tree of content ([`routes::MOVES`]).
    Anything,
}

impl Changed {
    /// What `method path` may change: nothing for a read.
    pub fn by(method: &str, path: &str) -> Changed {
        if !is_change(method) {
            return Changed::Nothing;
        }
        if routes::moves_content(path) {
            return Changed::Anything;
        }
        match resolve::content_in_path(method, path) {
            ids if ids.is_empty() => Changed::Nothing,
            ids => Changed::Content(ids),
        }
    }
}

/// A token's confinement, for the messages: its label and space list.
#[derive(Clone, Copy)]
pub struct Confined<'a> {
    pub label: &'a str,
    pub list: &'a SpaceList,
}

/// What a request names, checked against the space list before any lookup.
struct Named {
    /// Content ids whose spaces Confluence must be asked.
    content: Vec<String>,
    /// The query to forward, when confinement changes it.
    query: Option<String>,
    /// A search's CQL as confinement rewrote it (what the dry run shows).
    cql: Option<String>,
}

pub struct Spaces {
    cache: SpaceCache,
    upstream: Arc<Confluence>,
    max_json_body: usize,
}

impl Spaces {
    pub fn new(config: &Config, upstream: Arc<Confluence>, clock: Arc<dyn Clock>, metrics: Arc<Metrics>) -> Self {
        Spaces {
            cache: SpaceCache::new(config.space_cache_ttl, clock, metrics),
            upstream,
            max_json_body: config.max_json_body,
        }
    }

    /// Confines `req` to the token's spaces: the spaces it names, its JSON
    /// body's, and its content ids' (asked of Confluence, afresh for a
    /// change) must all be allowed, at the access the method needs; a
    /// search's CQL is confined and a listing gets the allowed keys. `Err`
    /// for what no report-only mode waives: a body that cannot be read, and
    /// a content id whose space Confluence does not name.
    pub async fn confine<B: RequestBody>(
        &self,
        token: Confined<'_>,
        req: Request<Forwarded<B>>,
        target: &Target,
        ask_as: AskAs<'_>,
    ) -> Result<(Request<Forwarded<B>>, Verdict), GatewayError> {
        let method = req.method().clone();
        let method = method.as_str();
        let refused = |refusal| {
            let line = format!("{method} {}", target.path);
            Verdict::Refused(refusal_error(token.label, refusal, &line))
        };
        let mut plan = match resolve::plan(method, &target.path, target.query.as_deref()) {
            Ok(plan) => plan,
            Err(refusal) => return Ok((req, refused(refusal))),
        };
        if let Some(header) = METHOD_OVERRIDES.iter().find(|h| req.headers().contains_key(**h)) {
            let why = format!("{header} could make Confluence run another method than the one checked");
            return Ok((req, refused(Refusal::Unknown(why.into()))));
        }
        let req = match plan.reads_body(method) {
            false => req,
            // Two Content-Types could be read as an upload here and as JSON upstream.
            true if req.headers().get_all(CONTENT_TYPE).iter().nth(1).is_some() => {
                return Ok((
                    req,
                    refused(Refusal::Unknown("the request has more than one Content-Type".into())),
                ));
            }
            true if is_upload(req.headers()) => match resolve::names_in_body(&mut plan, &BodyRead::Upload) {
                Ok(()) => req,
                Err(refusal) => return Ok((req, refused(refusal))),
            },
            true => {
                let purpose = "the most the gateway reads to find the spaces a change touches";
                // Boxed, as the lookups below: only changes and misses need
                // them, and a read of a cached id stays a small future.
                let (req, parsed) = Box::pin(read_json(req, self.max_json_body, purpose, Reading::Declared)).await?;
                let body = BodyRead::of(&parsed.json, parsed.empty, parsed.encoded, false);
                if let Err(refusal) = resolve::names_in_body(&mut plan, &body) {
                    return Ok((req, refused(refusal)));
                }
                req
            }
        };
        let named = match check_named(token, method, plan, target.query.as_deref(), &target.path) {
            Ok(named) => named,
            Err(error) => return Ok((req, Verdict::Refused(error))),
        };
        let write = is_change(method);
        if !named.content.is_empty() {
            let host = req.headers().get(HOST).cloned();
            for id in &named.content {
                let space = self
                    .cache
                    .space_of(id, ask_as.user, write, || Box::pin(self.ask(id, &ask_as, host.as_ref())))
                    .await
                    .map_err(|why| {
                        GatewayError::new(
                            Reason::SpaceUnknown,
                            format!("the space of content {id} cannot be found out ({why}), so token '{}', which is confined to spaces, may not use it", token.label),
                        )
                    })?;
                if let Err(error) = check_space(token, &space, write, || format!("content {id} is in space {space}")) {
                    return Ok((req, Verdict::Refused(error)));
                }
            }
        }
        Ok((req, Verdict::Allowed { query: named.query }))
    }

    /// Drops what a change answered through the gateway, whoever made it,
    /// leaves the lookup cache (SPEC §17).
    pub async fn forget(&self, changed: Changed) {
        match changed {
            Changed::Nothing => {}
            Changed::Content(ids) => {
                for id in &ids {
                    self.cache.forget(id).await;
                }
            }
            Changed::Anything => self.cache.forget_all(),
        }
    }

    /// Asks Confluence for the space of content `id`, as the request's user.
    async fn ask(&self, id: &str, ask_as: &AskAs<'_>, host: Option<&hyper::header::HeaderValue>) -> lookup::Answer {
        let path = PathAndQuery::try_from(format!("/rest/api/content/{id}?expand=space&status=any"))
            .map_err(|_| Arc::<str>::from("not a content id"))?;
        let (status, body) = self
            .upstream
            .get_as(path, ask_as.identity, ask_as.user, ask_as.conn, host)
            .await
            .map_err(|e| Arc::<str>::from(e.message))?;
        space_in_answer(status, &body).map_err(Arc::from)
    }
}

/// The space key in Confluence's answer about a content id; trashed content
/// has none (it can only be restored or purged, by a space admin).
fn space_in_answer(status: StatusCode, body: &Bytes) -> Result<Arc<str>, String> {
    match status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => {
            return Err("Confluence answered 404: it does not exist, or the token's user cannot see it".into());
        }
        status => return Err(format!("Confluence answered {status}")),
    }
    let json: Value = serde_json::from_slice(body).map_err(|_| "Confluence's answer is not JSON".to_owned())?;
    if json.get("status").and_then(Value::as_str) == Some("trashed") {
        return Err("it is in the trash".into());
    }
    match json.pointer("/space/key").and_then(Value::as_str) {
        Some(key) if !key.is_empty() => Ok(Arc::from(key)),
        _ => Err("Confluence's answer names no space".into()),
    }
}

/// Checks what a request names (its keys, and the query change) against
/// the token's spaces; the content ids are left for lookup.
fn check_named(
    token: Confined<'_>,
    method: &str,
    plan: Plan,
    query: Option<&str>,
    path: &str,
) -> Result<Named, GatewayError> {
    let write = is_change(method);
    for key in &plan.keys {
        check_space(token, key, write, || format!("{method} {path} touches space {key}"))?;
    }
    let mut cql = None;
    let query = match &plan.query {
        QueryChange::Keep => None,
        QueryChange::AddSpaceKeys { only_one: true } if token.list.len() > 1 => {
            return Err(GatewayError::new(
                Reason::SpaceUnknown,
                format!(
                    "token '{}' is confined to spaces {}: {method} {path} must name one of them in a spaceKey parameter",
                    token.label,
                    token.list.describe()
                ),
            ));
        }
        QueryChange::AddSpaceKeys { .. } => Some(resolve::add_space_keys(query, &token.list.keys())),
        QueryChange::ConfineCql(text) => {
            let confined =
                cql::confine(text, &token.list.keys()).map_err(|e| GatewayError::new(Reason::BadCql, e.to_string()))?;
            let query = resolve::replace_cql(query.unwrap_or_default(), &confined);
            cql = Some(confined);
            Some(query)
        }
    };
    Ok(Named {
        content: plan.content,
        query,
        cql,
    })
}

/// Whether the token may touch space `key` as the method needs: 403
/// `space_not_allowed` outside its spaces, `space_read_only` for a change
/// in a space it may only read. `what` says how the request touches it.
fn check_space(token: Confined<'_>, key: &str, write: bool, what: impl FnOnce() -> String) -> Result<(), GatewayError> {
    match token.list.access(key) {
        Some(Access::Write) => Ok(()),
        Some(Access::Read) if !write => Ok(()),
        Some(Access::Read) => Err(GatewayError::new(
            Reason::SpaceReadOnly,
            format!(
                "token '{}' may only read space {key}, and this request changes content there: {}",
                token.label,
                what()
            ),
        )
        .in_space(key)),
        None => Err(GatewayError::new(
            Reason::SpaceNotAllowed,
            format!(
                "token '{}' is confined to space{} {}: {}",
                token.label,
                if token.list.len() == 1 { "" } else { "s" },
                token.list.describe(),
                what()
            ),
        )
        .in_space(key)),
    }
}

fn refusal_error(label: &str, refusal: Refusal, line: &str) -> GatewayError {
    match refusal {
        Refusal::Unknown(why) => GatewayError::new(
            Reason::SpaceUnknown,
            format!(
                "token '{label}' is confined to spaces, and the gateway cannot tell which spaces {line} touches: {why}"
            ),
        ),
        Refusal::BadCql(why) => GatewayError::new(Reason::BadCql, why),
        Refusal::BadRequest(why) => GatewayError::new(Reason::BadRequest, why),
    }
}

/// The label a dry run's messages carry, replaced by "the token".
const DRY_RUN: &str = "(dry run)";

/// The spaces' part of a dry run (`rules check --spaces`, `POST /check`
/// with `spaces`), without asking Confluence: `run` becomes a refusal when
/// the spaces refuse the request, and its explanation says what they
/// check, including which content ids Confluence would be asked about.
pub fn dry_run(list: &SpaceList, head: &RequestHead<'_>, body: Option<(&[u8], Option<&str>)>, run: &mut DryRun) {
    match explain(list, head, body) {
        Ok(lines) => run.explanation.extend(lines),
        Err(error) => {
            run.allowed = false;
            let message = error.message.replace(&format!("token '{DRY_RUN}'"), "the token");
            run.explanation
                .push(format!("spaces: {}: {message}", error.reason.code()));
        }
    }
}

fn explain(
    list: &SpaceList,
    head: &RequestHead<'_>,
    body: Option<(&[u8], Option<&str>)>,
) -> Result<Vec<String>, GatewayError> {
    let token = Confined { label: DRY_RUN, list };
    let line = format!("{} {}", head.method, head.path);
    let mut plan = resolve::plan(head.method, head.path, head.query).map_err(|r| refusal_error(DRY_RUN, r, &line))?;
    let mut lines = Vec::new();
    if plan.reads_body(head.method) {
        let upload = body.is_some_and(|(_, content_type)| content_type.is_some_and(is_upload_type));
        let parsed = body
            .map(|(bytes, content_type)| {
                JsonBody::parse(content_type.or(Some("application/json")), bytes).map(|json| (json, bytes.is_empty()))
            })
            .transpose()
            .map_err(|e| GatewayError::new(Reason::AmbiguousJson, e.to_string()))?;
        let read = match &parsed {
            Some((json, empty)) => BodyRead::of(json, *empty, false, upload),
            None if plan.route.body_required => BodyRead::Empty,
            None => {
                lines
                    .push("spaces: no body given; the one sent may name more (space.key, ancestors, container)".into());
                BodyRead::Empty
            }
        };
        resolve::names_in_body(&mut plan, &read).map_err(|r| refusal_error(DRY_RUN, r, &line))?;
    }
    let write = is_change(head.method);
    lines.extend(plan.keys.iter().map(|key| match (list.access(key), write) {
        (Some(Access::Read), false) => format!("spaces: space {key} is allowed (read only)"),
        _ => format!("spaces: space {key} is allowed"),
    }));
    let content = plan.content.clone();
    let named = check_named(token, head.method, plan, head.query, head.path)?;
    match (&named.cql, &named.query) {
        (Some(cql), _) => lines.push(format!("spaces: cql forwarded as {cql}")),
        (None, Some(query)) => lines.push(format!("spaces: forwarded with the query {query}")),
        (None, None) => {}
    }
    let access = match write {
        true => "in a space it may change",
        false => "in",
    };
    for id in &content {
        lines.push(format!(
            "spaces: allowed only if content {id} is {access} {} (Confluence is asked at request time{})",
            list.describe(),
            if write { ", afresh for a change" } else { "" }
        ));
    }
    if lines.is_empty() {
        lines.push("spaces: the request touches no space".into());
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request body as a dry run takes it: bytes and `Content-Type`.
    type Body<'a> = Option<(&'a [u8], Option<&'a str>)>;

    fn dry(method: &str, path: &str, body: Body<'_>) -> DryRun {
        let mut run = DryRun {
            allowed: true,
            line: None,
            explanation: Vec::new(),
        };
        let head = RequestHead {
            method,
            path,
            query: None,
        };
        let list = SpaceList::parse("DOCS").unwrap().unwrap();
        dry_run(&list, &head, body, &mut run);
        run
    }

    #[test]
    fn the_dry_run_reads_bodies_as_the_gateway_does() {
        let docs: &[u8] = br#"{"space":{"key":"DOCS"},"ancestors":[{"id":"5"}]}"#;
        let run = dry("POST", "/rest/api/content", Some((docs, None)));
        assert!(run.allowed, "{:?}", run.explanation);
        assert!(
            run.explanation.iter().any(|l| l.contains("content 5")),
            "{:?}",
            run.explanation
        );
        let cases: [(&str, &str, Body<'_>, &str); 5] = [
            (
                "POST",
                "/rest/api/content",
                Some((br#"{"space":{"key":"HR"}}"#, None)),
                "space_not_allowed",
            ),
            (
                "POST",
                "/rest/api/content",
                Some((b"space=DOCS", Some("text/plain"))),
                "space_unknown",
            ),
            ("POST", "/rest/api/content", Some((b"", None)), "space_unknown"),
            ("POST", "/rest/api/content", None, "space_unknown"),
            (
                "PUT",
                "/rest/api/content/1",
                Some((br#"{"a":1,"a":2}"#, None)),
                "ambiguous_json",
            ),
        ];
        for (method, path, body, reason) in cases {
            let run = dry(method, path, body);
            assert!(
                !run.allowed && run.explanation[0].contains(reason),
                "{method} {path}: {:?}",
                run.explanation
            );
        }
        let run = dry("PUT", "/rest/api/content/1", Some((b"", None)));
        assert!(run.allowed, "an empty body names nothing: {:?}", run.explanation);
        let run = dry("PUT", "/rest/api/content/1", None);
        assert!(
            run.explanation.iter().any(|l| l.contains("no body given")),
            "{:?}",
            run.explanation
        );
    }
}

/// The gateway against a model of Confluence's reading of a query (JAX-RS:
/// names and values form-decoded, names compared exactly, a single-valued
/// parameter's first value): for random queries built from the names the
/// table reads, in random case and encodings, repeated and in any order.
#[cfg(test)]
mod reading {
    use super::*;
    use proptest::prelude::*;

    const ROUTES: [(&str, &str); 4] = [
        ("GET", "/rest/api/content"),
        ("GET", "/rest/api/space"),
        ("GET", "/rest/api/template/page"),
        ("GET", "/rest/api/search"),
    ];
    const NAMES: [&str; 8] = [
        "spaceKey",
        "expand",
        "ids",
        "cql",
        "cqlcontext",
        "containerId",
        "type",
        "limit",
    ];
    const VALUES: [&str; 11] = [
        "DOCS",
        "docs",
        "KB",
        "SECRET",
        "",
        " DOCS",
        "body.storage",
        "body.view",
        "space,history.personalSpace",
        "type=page",
        "space=SECRET",
    ];

    fn list() -> SpaceList {
        SpaceList::parse("DOCS,KB:read").unwrap().unwrap()
    }

    /// A name or value as a client might write it: some letters in the
    /// other case, some characters percent-encoded, spaces as `+`.
    fn spelling(text: &'static str) -> impl Strategy<Value = String> {
        proptest::collection::vec((0u8..10, 0u8..10), text.len()).prop_map(move |dice| {
            text.chars()
                .zip(dice)
                .map(|(c, (case, encode))| {
                    let c = match case {
                        0 if c.is_ascii_lowercase() => c.to_ascii_uppercase(),
                        0 => c.to_ascii_lowercase(),
                        _ => c,
                    };
                    match (c, encode) {
                        (' ', _) => "+".to_owned(),
                        (c, 0) | (c @ ('=' | '&' | '+' | '%' | ','), _) => format!("%{:02X}", c as u32),
                        (c, _) => c.to_string(),
                    }
                })
                .collect()
        })
    }

    fn query() -> impl Strategy<Value = String> {
        let pair = (proptest::sample::select(&NAMES[..]), proptest::sample::select(&VALUES[..]))
            .prop_flat_map(|(name, value)| {
                let exact_name = Just(name.to_owned());
                let name = prop_oneof![3 => exact_name, 1 => spelling(name)];
                let value = prop_oneof![3 => Just(form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>()), 1 => spelling(value)];
                (name, value)
            });
        proptest::collection::vec(pair, 0..5).prop_map(|pairs| {
            pairs
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join("&")
        })
    }

    /// The query Confluence would receive, or `None` when the gateway refuses.
    fn gateway(method: &str, path: &str, query: &str) -> Option<String> {
        let list = list();
        let token = Confined {
            label: "t",
            list: &list,
        };
        let plan = resolve::plan(method, path, Some(query)).ok()?;
        let named = check_named(token, method, plan, Some(query), "line").ok()?;
        Some(named.query.unwrap_or_else(|| query.to_owned()))
    }

    /// The query as JAX-RS reads it: every pair, decoded.
    fn jaxrs(query: &str) -> Vec<(String, String)> {
        form_urlencoded::parse(query.as_bytes())
            .map(|(n, v)| (n.into_owned(), v.into_owned()))
            .collect()
    }

    fn all<'a>(read: &'a [(String, String)], name: &'a str) -> Vec<&'a str> {
        read.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn allowed_key(key: &str) -> bool {
        !key.is_empty() && key.trim() == key && list().access(key).is_some()
    }

    fn safe_expand(read: &[(String, String)]) -> bool {
        all(read, "expand").into_iter().flat_map(|e| e.split(',')).all(|item| {
            let lower = item.to_ascii_lowercase();
            !lower.contains("personalspace")
                && !["view", "export_view", "styled_view", "anonymous_export_view"]
                    .iter()
                    .any(|v| {
                        lower
                            .split('.')
                            .collect::<Vec<_>>()
                            .windows(2)
                            .any(|w| w[0] == "body" && w[1] == *v)
                    })
        })
    }

    /// Whether Confluence, reading `query` on `path`, would stay in the
    /// token's spaces, by the model: a query that could be read two ways
    /// is refused first, by the rule of SPEC §17.
    fn model_allows(path: &str, query: &str) -> bool {
        let raw_names: Vec<&str> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split('=').next().unwrap_or(p))
            .collect();
        let read = jaxrs(query);
        let ambiguous = read.iter().zip(&raw_names).any(|((decoded, _), raw)| {
            resolve::READ_PARAMETERS
                .iter()
                .any(|name| decoded.eq_ignore_ascii_case(name) && raw != name)
        });
        let many_keys = path == "/rest/api/space";
        let repeated = resolve::READ_PARAMETERS
            .iter()
            .any(|name| all(&read, name).len() > 1 && !(many_keys && *name == "spaceKey"));
        if ambiguous || repeated || !safe_expand(&read) {
            return false;
        }
        let keys = all(&read, "spaceKey");
        match path {
            "/rest/api/content" => all(&read, "ids").is_empty() && keys.first().is_some_and(|k| allowed_key(k)),
            "/rest/api/space" => keys.iter().all(|k| allowed_key(k)),
            "/rest/api/template/page" => keys.first().is_some_and(|k| allowed_key(k)),
            // The CQL itself is the tokenizer's to judge (tested and fuzzed on its own).
            _ => {
                let cql = all(&read, "cql");
                all(&read, "cqlcontext").is_empty() && cql.len() == 1 && cql::confine(cql[0], &list().keys()).is_ok()
            }
        }
    }

    /// What Confluence reads from a forwarded query stays in the spaces.
    fn confined(path: &str, forwarded: &str) -> bool {
        let read = jaxrs(forwarded);
        let keys = all(&read, "spaceKey");
        safe_expand(&read)
            && match path {
                "/rest/api/content" | "/rest/api/template/page" => keys.first().is_some_and(|k| allowed_key(k)),
                "/rest/api/space" => !keys.is_empty() && keys.iter().all(|k| allowed_key(k)),
                _ => all(&read, "cql")
                    .first()
                    .is_some_and(|cql| cql.ends_with(r#") AND space in ("DOCS","KB")"#)),
            }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn the_gateway_decides_as_a_model_of_confluences_reading(route in 0..ROUTES.len(), query in query()) {
            let (method, path) = ROUTES[route];
            let decided = gateway(method, path, &query);
            prop_assert_eq!(decided.is_some(), model_allows(path, &query), "{} {}?{}", method, path, query);
            if let Some(forwarded) = decided {
                prop_assert!(confined(path, &forwarded), "{} {}?{} forwarded as {}", method, path, query, forwarded);
            }
        }
    }
}
