//! Which spaces a request touches, read from the request by the route table
//! ([`super::routes`]) exactly as Confluence reads it (pure). Content ids
//! are named for lookup; a request the table does not list, or that could
//! be read two ways, is refused, never guessed.

use std::borrow::Cow;

use serde_json::Value;

use super::routes::{self, Absent, Find, Route, canonical_id, field_name, is_any_content_id};
use crate::rules::JsonBody;

/// What a request touches, as far as the request itself tells: space keys
/// it names and content ids whose spaces must be asked. The body's names
/// join once it is read ([`names_in_body`]).
#[derive(Debug)]
pub struct Plan {
    pub route: &'static Route,
    pub keys: Vec<String>,
    pub content: Vec<String>,
    pub query: QueryChange,
    /// The path's content id a body `id` must equal ([`Find::BodySameId`]).
    same_id: Option<String>,
}

/// How the forwarded query changes (for an enforced token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryChange {
    Keep,
    /// No `spaceKey` was given: add one per allowed space, or (`only_one`)
    /// the allowed space when there is just one.
    AddSpaceKeys {
        only_one: bool,
    },
    /// A search: the `cql` parameter (this text, decoded) is confined.
    ConfineCql(String),
}

/// What the resolver refuses, with the message for the token's holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 403 `space_unknown`: the gateway cannot tell which spaces it touches.
    Unknown(Cow<'static, str>),
    /// 400 `bad_cql`.
    BadCql(String),
    /// 400 `bad_request`: the body contradicts the path.
    BadRequest(String),
}

/// The query parameters the gateway reads for confinement. Confluence reads
/// them by exact name; any other spelling of them is refused.
pub const READ_PARAMETERS: [&str; 8] = [
    "spaceKey",
    "cql",
    "cqlcontext",
    "ids",
    "expand",
    "containerId",
    "label",
    "pageId",
];

/// The rendered views an `expand` may not name: include macros pull other
/// spaces' content into them.
const RENDERED_VIEWS: [&str; 4] = ["view", "export_view", "styled_view", "anonymous_export_view"];

/// Whether a method changes what it touches (everything but `GET` and `HEAD`).
pub fn is_change(method: &str) -> bool {
    method != "GET" && method != "HEAD"
}

impl Plan {
    /// Whether the body must be read: a change on a row whose body names spaces.
    pub fn reads_body(&self, method: &str) -> bool {
        is_change(method) && self.route.finds.iter().any(Find::is_in_body)
    }
}

impl Find {
    fn is_in_body(&self) -> bool {
        matches!(
            self,
            Find::BodyKey(_) | Find::BodyContent(_) | Find::BodyContentList(_) | Find::BodySameId(_)
        )
    }
}

/// The spaces `method path?query` touches by the route table.
pub fn plan(method: &str, path: &str, query: Option<&str>) -> Result<Plan, Refusal> {
    let params = Params::parse(query)?;
    params.check_expand()?;
    let Some((route, captures)) = routes::route(method, path) else {
        return Err(unknown(
            "the gateway cannot tell which spaces this endpoint touches (see the README's table of understood requests)",
        ));
    };
    params.check_repeats(route)?;
    let mut plan = Plan {
        route,
        keys: Vec::new(),
        content: Vec::new(),
        query: QueryChange::Keep,
        same_id: None,
    };
    for find in route.finds {
        match *find {
            Find::PathKey => plan.keys.extend(captures.get("KEY").map(str::to_owned)),
            Find::PathContent(name) => plan.content.extend(captures.get(name).map(canonical_id)),
            Find::SpaceKeyParam { absent, .. } => {
                let keys = params.space_keys()?;
                if keys.is_empty() {
                    plan.query = match absent {
                        Absent::Refuse => return Err(unknown("this request names its space in a spaceKey parameter")),
                        Absent::AddAll => QueryChange::AddSpaceKeys { only_one: false },
                        Absent::AddIfOne => QueryChange::AddSpaceKeys { only_one: true },
                    };
                }
                plan.keys.extend(keys);
            }
            Find::ContentParam(name) => match params.first(name) {
                Some(id) if is_any_content_id(id) => plan.content.push(canonical_id(id)),
                _ => {
                    return Err(Refusal::Unknown(Cow::Owned(format!(
                        "this request names its content in a {name} parameter (a content id)"
                    ))));
                }
            },
            Find::Cql => plan.query = QueryChange::ConfineCql(params.cql()?),
            Find::RefuseParam(name) if params.first(name).is_some() => {
                return Err(Refusal::Unknown(Cow::Owned(format!(
                    "content listed by {name} cannot be confined to spaces: name a spaceKey instead"
                ))));
            }
            Find::BodySameId(name) => plan.same_id = captures.get(name).map(canonical_id),
            Find::RefuseParam(_) | Find::BodyKey(_) | Find::BodyContent(_) | Find::BodyContentList(_) => {}
        }
    }
    Ok(plan)
}

/// Adds what a change's body names to `plan`, by the one rule the gateway
/// and its dry run follow: an upload (`multipart/form-data`) or an empty
/// body names nothing; a body that is not JSON, or is compressed, cannot be
/// read; a row whose body must name a space refuses a body that names none.
pub fn names_in_body(plan: &mut Plan, body: &BodyRead<'_>) -> Result<(), Refusal> {
    let before = plan.keys.len() + plan.content.len();
    match body {
        BodyRead::Upload if plan.route.uploads => {}
        BodyRead::Empty => {}
        BodyRead::Upload => {
            return Err(unknown(
                "this request takes a JSON body, not an upload (multipart/form-data): the gateway must read it to see which spaces it touches",
            ));
        }
        BodyRead::Json(json) => body_names(plan, json)?,
        BodyRead::Unreadable => {
            return Err(unknown(
                "the body of this change must be JSON (Content-Type: application/json, not compressed) for the gateway to see which spaces it touches",
            ));
        }
    }
    if plan.route.body_required && plan.keys.len() + plan.content.len() == before {
        let fields: Vec<String> = plan
            .route
            .finds
            .iter()
            .filter_map(|find| match find {
                Find::BodyKey(p) | Find::BodyContent(p) => Some(field_name(p)),
                Find::BodyContentList(p) => Some(format!("{}[].id", field_name(p))),
                _ => None,
            })
            .collect();
        return Err(Refusal::Unknown(Cow::Owned(format!(
            "the body of this request must name where it goes in a JSON body: {}",
            fields.join(", ")
        ))));
    }
    Ok(())
}

/// A change's body as [`names_in_body`] reads it.
pub enum BodyRead<'a> {
    Upload,
    Empty,
    Json(&'a Value),
    /// Not JSON, or with a content coding.
    Unreadable,
}

impl<'a> BodyRead<'a> {
    /// How a body read whole is seen: `upload` for `multipart/form-data`.
    pub fn of(json: &'a JsonBody, empty: bool, encoded: bool, upload: bool) -> Self {
        match json {
            _ if upload => BodyRead::Upload,
            _ if empty => BodyRead::Empty,
            JsonBody::Json(value) if !encoded => BodyRead::Json(value),
            _ => BodyRead::Unreadable,
        }
    }
}

fn body_names(plan: &mut Plan, body: &Value) -> Result<(), Refusal> {
    for find in plan.route.finds {
        match *find {
            Find::BodyKey(pointer) => match field(body, pointer)? {
                None => {}
                Some(Value::String(key)) if is_space_key(key) => plan.keys.push(key.clone()),
                Some(_) => return Err(unreadable(pointer, "a space key")),
            },
            Find::BodyContent(pointer) => match field(body, pointer)?.map(content_id) {
                None => {}
                Some(None) => return Err(unreadable(pointer, "a content id")),
                // Confluence reads id 0 as none (an inline comment's parentCommentId).
                Some(Some(id)) if id == "0" => {}
                Some(Some(id)) => plan.content.push(id),
            },
            Find::BodyContentList(pointer) => match field(body, pointer)? {
                None => {}
                Some(Value::Array(items)) => {
                    for item in items {
                        let id = item.get("id").and_then(content_id);
                        plan.content
                            .push(id.ok_or_else(|| unreadable(pointer, "a list of {\"id\": ...}"))?);
                    }
                }
                Some(_) => return Err(unreadable(pointer, "a list of {\"id\": ...}")),
            },
            Find::BodySameId(_) => {
                let (Some(path_id), Some(value)) = (&plan.same_id, field(body, "/id")?) else {
                    continue;
                };
                if content_id(value).as_ref() != Some(path_id) {
                    return Err(Refusal::BadRequest(format!(
                        "the body's id is not {path_id}, the content the path names: a change names one content"
                    )));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The value at a JSON pointer of object fields; `None` when a field on the
/// way is absent or `null`. `Err` when a field on the way is not an object
/// (the body has a shape the gateway cannot read with certainty). A body
/// that is not an object names nothing.
fn field<'v>(body: &'v Value, pointer: &'static str) -> Result<Option<&'v Value>, Refusal> {
    let mut current = body;
    for (depth, name) in pointer.trim_start_matches('/').split('/').enumerate() {
        current = match current {
            Value::Object(object) => match object.get(name) {
                None | Some(Value::Null) => return Ok(None),
                Some(value) => value,
            },
            _ if depth == 0 => return Ok(None),
            _ => return Err(unreadable(pointer, "an object")),
        };
    }
    Ok(Some(current))
}

/// A content id written as `"123"`, `"att123"` or `123`, in its canonical form.
fn content_id(value: &Value) -> Option<String> {
    match value {
        Value::String(id) if is_any_content_id(id) => Some(canonical_id(id)),
        Value::Number(id) => id.as_u64().map(|id| id.to_string()),
        _ => None,
    }
}

/// A space key as written: not empty, no spaces around it (Confluence would
/// read the spaces as part of the key; the gateway checks what it reads).
fn is_space_key(key: &str) -> bool {
    !key.is_empty() && key.trim() == key
}

fn unreadable(pointer: &str, what: &str) -> Refusal {
    Refusal::Unknown(Cow::Owned(format!("the body's {} is not {what}", field_name(pointer))))
}

fn unknown(why: &'static str) -> Refusal {
    Refusal::Unknown(Cow::Borrowed(why))
}

/// A query's parameters as Confluence (JAX-RS) reads them: names and values
/// form-decoded, names compared exactly; each with its name as written.
struct Params<'q>(Vec<Param<'q>>);

struct Param<'q> {
    raw_name: &'q str,
    name: Cow<'q, str>,
    value: Cow<'q, str>,
}

impl<'q> Params<'q> {
    /// Reads the query, refusing a parameter the gateway reads written any
    /// other way than exactly (`spacekey`, `%73paceKey`): Confluence might
    /// read it, or not, as the parameter checked.
    fn parse(query: Option<&'q str>) -> Result<Self, Refusal> {
        let mut params = Vec::new();
        for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let param = Param {
                raw_name,
                name: decode(raw_name),
                value: decode(raw_value),
            };
            if param.name.eq_ignore_ascii_case("_method") {
                return Err(unknown(
                    "the query parameter _method could make Confluence run another method than the one checked",
                ));
            }
            if let Some(read) = READ_PARAMETERS
                .iter()
                .find(|read| param.name.eq_ignore_ascii_case(read) && param.raw_name != **read)
            {
                return Err(Refusal::Unknown(Cow::Owned(format!(
                    "the query parameter {raw_name:?} is not written exactly {read:?}, which is how Confluence reads it: write it so"
                ))));
            }
            params.push(param);
        }
        Ok(Params(params))
    }

    /// Refuses a parameter Confluence reads once that is given more than
    /// once: the gateway would check one value and Confluence use another.
    fn check_repeats(&self, route: &Route) -> Result<(), Refusal> {
        let many_keys = route
            .finds
            .iter()
            .any(|f| matches!(f, Find::SpaceKeyParam { many: true, .. }));
        for name in READ_PARAMETERS {
            if self.values(name).nth(1).is_none() || (name == "spaceKey" && many_keys) {
                continue;
            }
            return Err(match name {
                "cql" => Refusal::BadCql("more than one cql parameter".into()),
                _ => Refusal::Unknown(Cow::Owned(format!(
                    "the query parameter {name:?} is given more than once, and Confluence reads only the first: give it once"
                ))),
            });
        }
        Ok(())
    }

    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |p| p.raw_name == name)
            .map(|p| p.value.as_ref())
    }

    fn first<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.values(name).next()
    }

    fn space_keys(&self) -> Result<Vec<String>, Refusal> {
        self.values("spaceKey")
            .map(|key| match is_space_key(key) {
                true => Ok(key.to_owned()),
                false => Err(unknown("a spaceKey is empty or has spaces around it")),
            })
            .collect()
    }

    fn cql(&self) -> Result<String, Refusal> {
        if self.first("cqlcontext").is_some() {
            return Err(Refusal::BadCql(
                "a cqlcontext cannot be confined to spaces: leave it out".into(),
            ));
        }
        self.first("cql")
            .map(str::to_owned)
            .ok_or_else(|| Refusal::BadCql("a search needs a cql parameter".into()))
    }

    /// Refuses an `expand` that names a rendered view at any depth
    /// (`body.view`, `children.page.body.export_view`, ...) or goes through
    /// a user's personal space.
    fn check_expand(&self) -> Result<(), Refusal> {
        for item in self.values("expand").flat_map(|expand| expand.split(',')) {
            let parts: Vec<&str> = item.trim().split('.').collect();
            let rendered = parts.windows(2).any(|pair| {
                pair[0].eq_ignore_ascii_case("body")
                    && RENDERED_VIEWS.iter().any(|view| pair[1].eq_ignore_ascii_case(view))
            });
            let personal = parts.iter().any(|part| part.eq_ignore_ascii_case("personalSpace"));
            let why = match (rendered, personal) {
                (true, _) => "renders content, which can include other spaces' pages: expand body.storage instead",
                (_, true) => "reaches into a personal space, which is another space",
                _ => continue,
            };
            return Err(Refusal::Unknown(Cow::Owned(format!("expand={} {why}", item.trim()))));
        }
        Ok(())
    }
}

/// Form-decodes one name or value (`+` is a space), as JAX-RS does.
fn decode(text: &str) -> Cow<'_, str> {
    if !text.contains(['%', '+']) {
        return Cow::Borrowed(text);
    }
    let bytes: Vec<u8> = form_urlencoded::parse(format!("{text}=").as_bytes())
        .next()
        .map(|(name, _)| name.into_owned().into_bytes())
        .unwrap_or_default();
    Cow::Owned(String::from_utf8_lossy(&bytes).into_owned())
}

/// `query` with the `cql` parameter's value replaced by `cql`, every other
/// byte as it was.
pub fn replace_cql(query: &str, cql: &str) -> String {
    let encoded: String = form_urlencoded::byte_serialize(cql.as_bytes()).collect();
    query
        .split('&')
        .map(|pair| {
            let name = pair.split_once('=').map_or(pair, |(name, _)| name);
            match name == "cql" {
                true => Cow::Owned(format!("{name}={encoded}")),
                false => Cow::Borrowed(pair),
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `query` with one `spaceKey` parameter per key appended.
pub fn add_space_keys(query: Option<&str>, keys: &[String]) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for key in keys {
        out.append_pair("spaceKey", key);
    }
    let added = out.finish();
    match query {
        Some(query) if !query.is_empty() => format!("{query}&{added}"),
        _ => added,
    }
}

/// The content ids a change names in its path (what leaves the lookup
/// cache once any client's change is answered).
pub fn content_in_path(method: &str, path: &str) -> Vec<String> {
    let Some((route, captures)) = routes::route(method, path) else {
        return Vec::new();
    };
    route
        .finds
        .iter()
        .filter_map(|find| match find {
            Find::PathContent(name) => captures.get(name).map(canonical_id),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn planned(method: &str, target: &str) -> Result<Plan, Refusal> {
        let (path, query) = target.split_once('?').map_or((target, None), |(p, q)| (p, Some(q)));
        plan(method, path, query)
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    /// What a plan says, without its row: keys, content ids, query change.
    fn summary(plan: &Plan) -> (Vec<String>, Vec<String>, QueryChange) {
        (plan.keys.clone(), plan.content.clone(), plan.query.clone())
    }

    /// Method, target, the keys and content ids it names, its query change.
    type Row = (
        &'static str,
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
        QueryChange,
    );

    #[test]
    fn every_family_of_the_table() {
        use QueryChange::*;
        let rows: Vec<Row> = vec![
            ("GET", "/rest/api/space/DOCS", &["DOCS"], &[], Keep),
            ("DELETE", "/rest/api/space/DOCS/property/x", &["DOCS"], &[], Keep),
            ("PUT", "/rest/api/space/DOCS", &["DOCS"], &[], Keep),
            (
                "GET",
                "/rest/api/space?spaceKey=DOCS&spaceKey=PM",
                &["DOCS", "PM"],
                &[],
                Keep,
            ),
            (
                "GET",
                "/rest/api/space?limit=5",
                &[],
                &[],
                AddSpaceKeys { only_one: false },
            ),
            ("GET", "/rest/api/space/", &[], &[], AddSpaceKeys { only_one: false }),
            ("POST", "/rest/api/space", &[], &[], Keep),
            ("GET", "/rest/api/content/123", &[], &["123"], Keep),
            ("PUT", "/rest/api/content/123", &[], &["123"], Keep),
            ("DELETE", "/rest/api/content/123", &[], &["123"], Keep),
            ("GET", "/rest/api/content/123/child/page", &[], &["123"], Keep),
            ("POST", "/rest/api/content/123/child/attachment", &[], &["123"], Keep),
            (
                "PUT",
                "/rest/api/content/123/child/attachment/att456",
                &[],
                &["123", "456"],
                Keep,
            ),
            (
                "POST",
                "/rest/api/content/123/child/attachment/456/data",
                &[],
                &["123", "456"],
                Keep,
            ),
            (
                "GET",
                "/rest/api/content/123/child/attachment/att456/data",
                &[],
                &["123", "456"],
                Keep,
            ),
            ("GET", "/rest/api/content/123/descendant/page", &[], &["123"], Keep),
            ("DELETE", "/rest/api/content/123/label/draft", &[], &["123"], Keep),
            ("PUT", "/rest/api/content/123/property/k", &[], &["123"], Keep),
            ("GET", "/rest/api/content/123/version/2", &[], &["123"], Keep),
            ("GET", "/rest/api/content/123/history", &[], &["123"], Keep),
            (
                "GET",
                "/rest/api/content/123/restriction/byOperation/read",
                &[],
                &["123"],
                Keep,
            ),
            ("GET", "/rest/experimental/content/att9/version", &[], &["9"], Keep),
            ("DELETE", "/rest/experimental/content/9/version/3", &[], &["9"], Keep),
            ("GET", "/rest/api/content?spaceKey=DOCS&type=page", &["DOCS"], &[], Keep),
            (
                "GET",
                "/rest/api/content?type=page",
                &[],
                &[],
                AddSpaceKeys { only_one: true },
            ),
            ("POST", "/rest/api/content", &[], &[], Keep),
            (
                "GET",
                "/rest/api/content/search?cql=type%3Dpage",
                &[],
                &[],
                ConfineCql("type=page".into()),
            ),
            (
                "GET",
                "/rest/api/search?cql=title+~+x",
                &[],
                &[],
                ConfineCql("title ~ x".into()),
            ),
            (
                "GET",
                "/rest/inlinecomments/1.0/comments?containerId=77",
                &[],
                &["77"],
                Keep,
            ),
            ("POST", "/rest/inlinecomments/1.0/comments", &[], &[], Keep),
            ("POST", "/rest/likes/1.0/content/5/likes", &[], &["5"], Keep),
            ("GET", "/rest/api/template/page?spaceKey=DOCS", &["DOCS"], &[], Keep),
            (
                "GET",
                "/rest/experimental/template/blueprint?spaceKey=DOCS",
                &["DOCS"],
                &[],
                Keep,
            ),
            ("POST", "/rest/api/contentbody/convert/storage", &[], &[], Keep),
            ("GET", "/rest/api/user/current", &[], &[], Keep),
            ("GET", "/rest/api/user?username=bob", &[], &[], Keep),
            ("GET", "/rest/api/group", &[], &[], Keep),
            ("GET", "/rest/api/group/confluence-users/member?limit=5", &[], &[], Keep),
            ("DELETE", "/rest/api/user/watch/content/5", &[], &["5"], Keep),
            ("POST", "/rest/api/user/watch/space/DOCS", &["DOCS"], &[], Keep),
            ("GET", "/download/attachments/123/file.pdf", &[], &["123"], Keep),
            (
                "HEAD",
                "/download/attachments/123/file.pdf?version=2",
                &[],
                &["123"],
                Keep,
            ),
        ];
        for (method, target, keys, content, query) in rows {
            let plan = planned(method, target).unwrap_or_else(|e| panic!("{method} {target}: {e:?}"));
            assert_eq!(
                summary(&plan),
                (strings(keys), strings(content), query),
                "{method} {target}"
            );
        }
    }

    #[test]
    fn what_the_table_does_not_list_is_unknown() {
        let unknown = [
            ("POST", "/rest/api/content/123/move/append/456"),
            ("GET", "/rest/api/content/123/pagehierarchy/copy"),
            ("GET", "/rest/api/content/scan"),
            ("POST", "/rest/api/content/blueprint/instance/123"),
            ("GET", "/rest/api/template/page"),
            ("GET", "/rest/api/template/123"),
            ("POST", "/rest/api/contentbody/convert/view"),
            ("GET", "/rest/api/content/123/history/2/macro/id/x"),
            ("GET", "/rest/api/content/123/notification/child-created"),
            ("GET", "/rest/api/content/12a"),
            ("GET", "/rest/api/content/att12"),
            ("GET", "/rest/api/content/123/child/attachment/x1/data"),
            ("GET", "/rest/api/content?ids=1,2"),
            ("GET", "/rest/api/content?spaceKey="),
            ("DELETE", "/rest/api/content"),
            ("POST", "/rest/api/user"),
            ("GET", "/rest/api/user/memberof"),
            ("GET", "/rest/api/longtask"),
            ("GET", "/rest/api/Content/123"),
            ("POST", "/download/attachments/123/file.pdf"),
            ("GET", "/download/attachments/x/file.pdf"),
            ("GET", "/rest/inlinecomments/1.0/comments"),
            ("GET", "/rest/inlinecomments/1.0/comments?containerId=x"),
            ("PUT", "/rest/likes/1.0/content/x/likes"),
            ("PATCH", "/rest/api/user/watch/content/5"),
            ("GET", "/rest/api/content/123?expand=body.view"),
            (
                "GET",
                "/rest/api/content/123?expand=space,body.storage,children.page.body.export_view",
            ),
            ("GET", "/rest/api/search?cql=x&expand=content.body.styled_view"),
            (
                "GET",
                "/rest/api/space/DOCS/content?expand=page.body.ANONYMOUS_EXPORT_VIEW",
            ),
            ("GET", "/rest/api/user?username=bob&expand=personalSpace"),
            ("GET", "/rest/api/group/g/member?expand=personalSpace.homepage"),
            ("GET", "/rest/api/content/1?expand=history.createdBy.personalSpace"),
            ("GET", "/rest/prototype/1/content/123"),
            ("GET", "/pages/viewpage.action?pageId=1"),
        ];
        for (method, target) in unknown {
            assert!(
                matches!(planned(method, target), Err(Refusal::Unknown(_))),
                "{method} {target}: {:?}",
                planned(method, target)
            );
        }
        assert!(planned("GET", "/rest/api/content/123?expand=body.storage,version").is_ok());
    }

    #[test]
    fn parameters_are_read_by_their_exact_names_and_once() {
        for target in [
            "/rest/api/content?spacekey=DOCS&expand=body.storage",
            "/rest/api/space?SpaceKey=DOCS",
            "/rest/api/content?%73paceKey=DOCS",
            "/rest/api/content?space%4Bey=DOCS",
            "/rest/api/content?spaceKey=DOCS&SPACEKEY=HR",
            "/rest/api/content/1?Expand=body.view",
            "/rest/api/content/1?expand=space&expand=version",
            "/rest/api/content?spaceKey=DOCS&spaceKey=HR",
            "/rest/api/template/page?spaceKey=DOCS&spaceKey=HR",
            "/rest/api/search?cql=x&CQL=y",
            "/rest/api/search?cql=x&cqlContext=%7B%7D",
            "/rest/inlinecomments/1.0/comments?containerId=1&containerId=2",
            "/rest/inlinecomments/1.0/comments?containerid=1",
            "/rest/api/content/1?pageid=2",
            "/rest/api/content?spaceKey=DOCS&Ids=1",
            "/rest/api/content/1?_method=DELETE",
            "/rest/api/content/1?_METHOD=PUT",
        ] {
            let refusal = planned("GET", target).unwrap_err();
            let Refusal::Unknown(why) = &refusal else {
                panic!("{target}: {refusal:?}")
            };
            assert!(why.contains("query parameter"), "{target}: {why}");
        }
        let Refusal::Unknown(why) = planned("GET", "/rest/api/content?spacekey=DOCS").unwrap_err() else {
            panic!()
        };
        assert!(why.contains("\"spacekey\"") && why.contains("\"spaceKey\""), "{why}");
        assert!(matches!(
            planned("GET", "/rest/api/search?cql=a&cql=b"),
            Err(Refusal::BadCql(_))
        ));
        assert!(matches!(
            planned("GET", "/rest/api/content/search?cql=a&cqlcontext=%7B%7D"),
            Err(Refusal::BadCql(_))
        ));
        assert!(matches!(planned("GET", "/rest/api/search"), Err(Refusal::BadCql(_))));
        for target in [
            "/rest/api/content?spaceKey=+DOCS",
            "/rest/api/space?spaceKey=DOCS%20",
            "/rest/api/content?spaceKey=",
        ] {
            assert!(
                matches!(planned("GET", target), Err(Refusal::Unknown(_))),
                "{target}: keys as written"
            );
        }
        let other_names = planned("GET", "/rest/api/content?spaceKey=DOCS&spaceKeys=HR&title=a&title=b").unwrap();
        assert_eq!(
            other_names.keys,
            strings(&["DOCS"]),
            "names the gateway does not read pass as they are"
        );
    }

    fn with_body(method: &str, target: &str, body: serde_json::Value) -> Result<Plan, Refusal> {
        let mut plan = planned(method, target)?;
        names_in_body(&mut plan, &BodyRead::Json(&body))?;
        Ok(plan)
    }

    #[test]
    fn bodies_name_spaces_and_content() {
        let page = json!({"type":"page","space":{"key":"DOCS"},"ancestors":[{"id":"10"},{"id":11}],"container":{"id":"12","type":"page"}});
        let plan = with_body("POST", "/rest/api/content", page).unwrap();
        assert_eq!(summary(&plan).0, strings(&["DOCS"]));
        assert_eq!(summary(&plan).1, strings(&["10", "11", "12"]));
        let comment = with_body(
            "POST",
            "/rest/api/content",
            json!({"type":"comment","container":{"id":"5"}}),
        )
        .unwrap();
        assert_eq!(comment.content, strings(&["5"]), "a comment names only its container");
        let draft = with_body(
            "POST",
            "/rest/api/content?status=draft",
            json!({"id":"77","type":"page"}),
        )
        .unwrap();
        assert_eq!(draft.content, strings(&["77"]), "publishing a draft names it by id");
        let update = with_body("PUT", "/rest/api/content/5", json!({"id":"5","version":{"number":2}})).unwrap();
        assert_eq!(update.content, strings(&["5"]));
        let homepage = with_body(
            "PUT",
            "/rest/api/space/DOCS",
            json!({"key":"DOCS","homepage":{"id":"9"}}),
        )
        .unwrap();
        assert_eq!(
            (homepage.keys.clone(), homepage.content.clone()),
            (strings(&["DOCS", "DOCS"]), strings(&["9"]))
        );
        let space = with_body("POST", "/rest/api/space/_private", json!({"key":"NEW","name":"New"})).unwrap();
        assert_eq!(space.keys, strings(&["NEW"]));
        let inline = with_body(
            "POST",
            "/rest/inlinecomments/1.0/comments",
            json!({"containerId": 42, "body":"x"}),
        )
        .unwrap();
        assert_eq!(inline.content, strings(&["42"]));
        let labels = with_body(
            "POST",
            "/rest/api/content/5/label",
            json!([{"prefix":"global","name":"x"}]),
        )
        .unwrap();
        assert_eq!(labels.content, strings(&["5"]), "a list of labels names nothing more");
        let moved = with_body(
            "PUT",
            "/rest/api/content/5/child/attachment/att6",
            json!({"id":"att6","container":{"id":"8"}}),
        )
        .unwrap();
        assert_eq!(moved.content, strings(&["5", "6", "8"]));
        let reply = with_body(
            "POST",
            "/rest/inlinecomments/1.0/comments",
            json!({"containerId": "5", "parentCommentId": 0}),
        )
        .unwrap();
        assert_eq!(reply.content, strings(&["5"]), "parentCommentId 0 is no parent");
        let reply = with_body(
            "POST",
            "/rest/inlinecomments/1.0/comments",
            json!({"containerId": "5", "parentCommentId": "77"}),
        )
        .unwrap();
        assert_eq!(reply.content, strings(&["5", "77"]), "a reply's parent is placed too");
    }

    #[test]
    fn bodies_the_gateway_cannot_read_with_certainty_are_refused() {
        for (method, target, body) in [
            ("POST", "/rest/api/content", json!({"title": "x"})),
            ("POST", "/rest/api/content", json!([])),
            ("POST", "/rest/api/space", json!({"name": "x"})),
            ("POST", "/rest/inlinecomments/1.0/comments", json!({"body": "x"})),
            ("PUT", "/rest/api/content/1", json!({"space": "DOCS"})),
            ("PUT", "/rest/api/content/1", json!({"space": {"key": 5}})),
            ("PUT", "/rest/api/content/1", json!({"space": {"key": " DOCS"}})),
            ("PUT", "/rest/api/content/1", json!({"ancestors": {"id": "1"}})),
            ("PUT", "/rest/api/content/1", json!({"ancestors": [{"id": "x1"}]})),
            ("PUT", "/rest/api/content/1", json!({"ancestors": [{}]})),
            ("PUT", "/rest/api/content/1", json!({"container": {"id": -1}})),
            ("PUT", "/rest/api/content/1", json!({"container": "12"})),
            ("POST", "/rest/api/content", json!({"id": {"x": 1}})),
            ("PUT", "/rest/api/space/DOCS", json!({"homepage": {"id": true}})),
        ] {
            assert!(
                matches!(with_body(method, target, body.clone()), Err(Refusal::Unknown(_))),
                "{method} {target} {body}"
            );
        }
        for (target, body) in [
            ("/rest/api/content/1001", json!({"id": "1002", "type": "page"})),
            ("/rest/api/content/1001", json!({"id": 1002})),
            ("/rest/api/content/1/child/attachment/att2", json!({"id": "att3"})),
        ] {
            assert!(
                matches!(with_body("PUT", target, body), Err(Refusal::BadRequest(_))),
                "{target}"
            );
        }
        let mut plan = planned("POST", "/rest/api/content").unwrap();
        assert!(
            names_in_body(&mut plan, &BodyRead::Empty).is_err(),
            "new content names its place"
        );
        assert!(names_in_body(&mut plan, &BodyRead::Unreadable).is_err());
        let mut plan = planned("PUT", "/rest/api/content/1").unwrap();
        assert!(
            names_in_body(&mut plan, &BodyRead::Empty).is_ok(),
            "an empty change names nothing more"
        );
        assert!(names_in_body(&mut plan, &BodyRead::Unreadable).is_err());
        let mut plan = planned("POST", "/rest/api/content/1/child/attachment").unwrap();
        assert!(names_in_body(&mut plan, &BodyRead::Upload).is_ok());
        let mut plan = planned("PUT", "/rest/api/content/1").unwrap();
        assert!(
            names_in_body(&mut plan, &BodyRead::Upload).is_err(),
            "an upload only where uploads go"
        );
        let mut plan = planned("PUT", "/rest/api/space/DOCS").unwrap();
        assert!(names_in_body(&mut plan, &BodyRead::Upload).is_err());
    }

    #[test]
    fn only_the_cql_parameter_is_rewritten() {
        assert_eq!(
            replace_cql("limit=5&cql=type%3Dpage&start=0", "(type=page) AND space in (\"DOCS\")"),
            "limit=5&cql=%28type%3Dpage%29+AND+space+in+%28%22DOCS%22%29&start=0"
        );
        assert_eq!(
            add_space_keys(Some("limit=5"), &strings(&["DOCS", "~bob"])),
            "limit=5&spaceKey=DOCS&spaceKey=%7Ebob"
        );
        assert_eq!(add_space_keys(None, &strings(&["DOCS"])), "spaceKey=DOCS");
        assert_eq!(
            content_in_path("PUT", "/rest/api/content/5/child/attachment/att6"),
            strings(&["5", "6"])
        );
        assert_eq!(
            content_in_path("POST", "/rest/api/content/5/move/append/6"),
            Vec::<String>::new()
        );
    }
}
