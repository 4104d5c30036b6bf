//! Space confinement (SPEC §17): a token with `spaces` may touch content in
//! those spaces only, whatever endpoint it calls.
//!
//! - [`resolve`] reads the table of understood requests (pure): the space
//!   keys a request names, the content ids whose spaces must be asked, what
//!   its JSON body names, and how its query changes;
//! - [`lookup`] asks Confluence for a content id's space as the token's
//!   user, through the forwarding path, cached and coalesced;
//! - [`cql`] confines a search's CQL: `(<cql>) AND space in (...)`.
//!
//! [`Spaces::confine`] runs them in that order: what the request names is
//! checked before anything is asked of Confluence, and a request the
//! gateway does not understand is refused, never guessed.

pub mod cql;
mod lookup;
pub mod resolve;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::header::{CONTENT_ENCODING, CONTENT_TYPE, HOST};
use hyper::http::uri::PathAndQuery;
use hyper::{Request, StatusCode};
use serde_json::Value;

use crate::body::{Forwarded, RequestBody, read_limited};
use crate::clock::Clock;
use crate::config::Config;
use crate::error::{GatewayError, Reason};
use crate::proxy::{ConnInfo, Identity, UpstreamClient};
use crate::record::Metrics;
use crate::rules::{DryRun, JsonBody, RequestHead};
use crate::target::Target;
use lookup::SpaceCache;
use resolve::{BodyUse, Plan, QueryChange, Refusal};

/// Space keys are compared ignoring ASCII case, and written as this many
/// characters at most (Confluence allows 255).
const MAX_KEY_CHARS: usize = 255;

/// A space list in its stored form: keys trimmed, without duplicates
/// (ignoring case), joined with `,`; `None` for an empty list. `Err` names
/// what is wrong, for the `spaces` field.
pub fn normalise(text: &str) -> Result<Option<String>, String> {
    let mut keys: Vec<&str> = Vec::new();
    for key in text.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        check_key(key)?;
        if !keys.iter().any(|k| k.eq_ignore_ascii_case(key)) {
            keys.push(key);
        }
    }
    Ok((!keys.is_empty()).then(|| keys.join(",")))
}

/// The keys of a stored space list.
pub fn keys(stored: &str) -> Vec<&str> {
    stored.split(',').filter(|k| !k.is_empty()).collect()
}

/// A Confluence space key: letters and digits (personal spaces: `~` and the
/// user name or key).
fn check_key(key: &str) -> Result<(), String> {
    let body = key.strip_prefix('~').unwrap_or(key);
    let valid = !body.is_empty()
        && key.chars().count() <= MAX_KEY_CHARS
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'));
    match valid {
        true => Ok(()),
        false => Err(format!(
            "{key:?} is not a space key: spaces are listed by key, separated by commas (DOCS,PM,~alice)"
        )),
    }
}

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
    /// it changed) and forget these content ids once it is answered.
    Allowed { query: Option<String>, forget: Vec<String> },
    /// The spaces refuse it (a report-only token forwards it anyway, SPEC §16).
    Refused(GatewayError),
}

pub struct Spaces {
    cache: SpaceCache,
    upstream: Arc<UpstreamClient>,
    max_json_body: usize,
}

impl Spaces {
    pub fn new(config: &Config, upstream: Arc<UpstreamClient>, clock: Arc<dyn Clock>, metrics: Arc<Metrics>) -> Self {
        Spaces {
            cache: SpaceCache::new(config.space_cache_ttl, clock, metrics),
            upstream,
            max_json_body: config.max_json_body,
        }
    }

    /// Confines `req` to `allowed` (token `label`'s spaces): its named
    /// spaces, its JSON body's, and its content ids' (asked of Confluence)
    /// must all be allowed; a search's CQL is confined and `GET
    /// /rest/api/space` gets the allowed keys. `Err` for what no report-only
    /// mode waives: a body that cannot be read, and a content id whose space
    /// Confluence does not name.
    pub async fn confine<B: RequestBody>(
        &self,
        allowed: &[String],
        label: &str,
        req: Request<Forwarded<B>>,
        target: &Target,
        ask_as: AskAs<'_>,
    ) -> Result<(Request<Forwarded<B>>, Verdict), GatewayError> {
        let mut plan = match resolve::plan(req.method(), &target.path, target.query.as_deref()) {
            Ok(plan) => plan,
            Err(refusal) => {
                let line = req_line(&req, target);
                return Ok((req, Verdict::Refused(refusal_error(label, refusal, &line))));
            }
        };
        let (req, from_body) = match plan.body {
            BodyUse::Ignore => (req, Ok((None, Vec::new()))),
            use_ => self.read_body(req, use_).await?,
        };
        match from_body {
            Ok((key, ids)) => {
                plan.keys.extend(key);
                plan.content.extend(ids);
            }
            Err(refusal) => {
                let line = req_line(&req, target);
                return Ok((req, Verdict::Refused(refusal_error(label, refusal, &line))));
            }
        }
        if let Some(key) = plan.keys.iter().find(|key| !is_allowed(allowed, key)) {
            let error = not_allowed(label, allowed, &format!("this request touches space {key}"));
            return Ok((req, Verdict::Refused(error)));
        }
        let query = match &plan.query {
            QueryChange::Keep => None,
            QueryChange::AddSpaceKeys => Some(resolve::add_space_keys(target.query.as_deref(), allowed)),
            QueryChange::ConfineCql(text) => match cql::confine(text, allowed) {
                Ok(confined) => Some(resolve::replace_cql(
                    target.query.as_deref().unwrap_or_default(),
                    &confined,
                )),
                Err(e) => return Ok((req, Verdict::Refused(GatewayError::new(Reason::BadCql, e.to_string())))),
            },
        };
        let host = req.headers().get(HOST).cloned();
        for id in &plan.content {
            let space = self
                .cache
                .space_of(id, ask_as.user, || self.ask(id, &ask_as, host.as_ref()))
                .await
                .map_err(|why| {
                    GatewayError::new(
                        Reason::SpaceUnknown,
                        format!("the space of content {id} cannot be found out ({why}), so token '{label}', which is confined to spaces, may not use it"),
                    )
                })?;
            if !is_allowed(allowed, &space) {
                let error = not_allowed(label, allowed, &format!("content {id} is in space {space}"));
                return Ok((req, Verdict::Refused(error)));
            }
        }
        let forget = if plan.forget { plan.content } else { Vec::new() };
        Ok((req, Verdict::Allowed { query, forget }))
    }

    /// Drops content ids a request changed or deleted from the cache.
    pub async fn forget(&self, ids: &[String]) {
        for id in ids {
            self.cache.forget(id).await;
        }
    }

    /// Reads the body of a change of content and what it names. An upload
    /// (`multipart/form-data`) and an empty body name nothing.
    async fn read_body<B: RequestBody>(
        &self,
        req: Request<Forwarded<B>>,
        use_: BodyUse,
    ) -> Result<(Request<Forwarded<B>>, Result<(Option<String>, Vec<String>), Refusal>), GatewayError> {
        let content_type = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let upload = content_type.is_some_and(|t| {
            t.trim_start()
                .get(..19)
                .is_some_and(|t| t.eq_ignore_ascii_case("multipart/form-data"))
        });
        if upload && use_ == BodyUse::Inspect {
            return Ok((req, Ok((None, Vec::new()))));
        }
        let (parts, body) = req.into_parts();
        let bytes = match body {
            Either::Right(read) => read.collect().await.map(|c| c.to_bytes()).unwrap_or_default(),
            Either::Left(body) => {
                read_limited(
                    &parts.headers,
                    body,
                    self.max_json_body,
                    "the most the gateway reads to find the spaces a change touches",
                )
                .await?
            }
        };
        let encoded = parts.headers.contains_key(CONTENT_ENCODING);
        let content_type = parts.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let json = JsonBody::parse(content_type, &bytes)
            .map_err(|e| GatewayError::new(Reason::AmbiguousJson, e.to_string()))?;
        let names = resolve::names_in_body(&json, bytes.is_empty(), encoded, use_);
        Ok((Request::from_parts(parts, Either::Right(Full::new(bytes))), names))
    }

    /// Asks Confluence for the space of content `id`, as the request's user.
    async fn ask(&self, id: &str, ask_as: &AskAs<'_>, host: Option<&hyper::header::HeaderValue>) -> lookup::Answer {
        let path = PathAndQuery::try_from(format!("/rest/api/content/{id}?expand=space&status=any"))
            .map_err(|_| Arc::<str>::from("not a content id"))?;
        let (status, body) = self
            .upstream
            .get_as(path, ask_as.identity, ask_as.conn, host)
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

fn is_allowed(allowed: &[String], key: &str) -> bool {
    allowed.iter().any(|a| a.eq_ignore_ascii_case(key))
}

fn not_allowed(label: &str, allowed: &[String], what: &str) -> GatewayError {
    GatewayError::new(
        Reason::SpaceNotAllowed,
        format!(
            "token '{label}' is confined to space{} {}: {what}",
            if allowed.len() == 1 { "" } else { "s" },
            allowed.join(", ")
        ),
    )
}

fn req_line<B>(req: &Request<B>, target: &Target) -> String {
    format!("{} {}", req.method(), target.path)
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
    }
}

/// A refusal as one line of an explanation.
fn refusal_line(refusal: Refusal) -> String {
    match refusal {
        Refusal::Unknown(why) => format!("spaces: space_unknown: {why}"),
        Refusal::BadCql(why) => format!("spaces: bad_cql: {why}"),
    }
}

/// The spaces' part of a dry run (`rules check --spaces`, `POST /check`
/// with `spaces`), without asking Confluence: `run` becomes a refusal when
/// the spaces refuse the request, and its explanation says what they
/// check, including which content ids Confluence would be asked about.
pub fn dry_run(allowed: &[String], head: &RequestHead<'_>, body: Option<(&[u8], Option<&str>)>, run: &mut DryRun) {
    let (refused, lines) = explain(allowed, head, body);
    if refused {
        run.allowed = false;
    }
    run.explanation.extend(lines);
}

fn explain(allowed: &[String], head: &RequestHead<'_>, body: Option<(&[u8], Option<&str>)>) -> (bool, Vec<String>) {
    let refuse = |line: String| (true, vec![line]);
    let method = hyper::Method::from_bytes(head.method.as_bytes()).unwrap_or(hyper::Method::GET);
    let mut plan: Plan = match resolve::plan(&method, head.path, head.query) {
        Ok(plan) => plan,
        Err(refusal) => return refuse(refusal_line(refusal)),
    };
    let mut lines = Vec::new();
    match (plan.body, body) {
        (BodyUse::Ignore, _) => {}
        (use_, Some((bytes, content_type))) => {
            let json = match JsonBody::parse(content_type.or(Some("application/json")), bytes) {
                Ok(json) => json,
                Err(duplicate) => return refuse(format!("spaces: {duplicate} (ambiguous_json)")),
            };
            match resolve::names_in_body(&json, bytes.is_empty(), false, use_) {
                Ok((key, ids)) => {
                    plan.keys.extend(key);
                    plan.content.extend(ids);
                }
                Err(refusal) => return refuse(refusal_line(refusal)),
            }
        }
        (BodyUse::RequireSpace, None) => {
            return refuse("spaces: space_unknown: new content names its space.key in a JSON body".into());
        }
        (BodyUse::Inspect, None) => {
            lines.push("spaces: no body given; the one sent may name more content (ancestors, container)".into())
        }
    }
    for key in &plan.keys {
        if !is_allowed(allowed, key) {
            return refuse(format!("spaces: space_not_allowed: the request touches space {key}"));
        }
        lines.push(format!("spaces: space {key} is allowed"));
    }
    match &plan.query {
        QueryChange::Keep => {}
        QueryChange::AddSpaceKeys => lines.push(format!(
            "spaces: forwarded with {}",
            resolve::add_space_keys(head.query, allowed)
        )),
        QueryChange::ConfineCql(text) => match cql::confine(text, allowed) {
            Ok(confined) => lines.push(format!("spaces: cql forwarded as {confined}")),
            Err(e) => return refuse(format!("spaces: bad_cql: {e}")),
        },
    }
    for id in &plan.content {
        lines.push(format!(
            "spaces: allowed only if content {id} is in {} (Confluence is asked at request time)",
            allowed.join(", ")
        ));
    }
    if lines.is_empty() {
        lines.push("spaces: the request touches no space".into());
    }
    (false, lines)
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
        dry_run(&["DOCS".to_owned()], &head, body, &mut run);
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
