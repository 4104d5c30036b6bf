//! The table of SPEC §17: which spaces a request touches, as far as the
//! request itself tells (pure). Content ids are named for lookup; what the
//! table does not list is [`Unknown`], never guessed.

use std::borrow::Cow;

use hyper::Method;
use serde_json::Value;

use crate::rules::JsonBody;

/// What a request touches, before its body is read and its content ids
/// are looked up.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Space keys the request names (path, `spaceKey`).
    pub keys: Vec<String>,
    /// Content ids whose spaces must be looked up.
    pub content: Vec<String>,
    pub body: BodyUse,
    pub query: QueryChange,
    /// A `PUT` or `DELETE` of content: its ids leave the lookup cache.
    pub forget: bool,
}

/// What the JSON body tells.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum BodyUse {
    #[default]
    Ignore,
    /// A change of content: `space.key`, `ancestors[].id` and
    /// `container.id` count; an upload (`multipart/form-data`) or an empty
    /// body has none.
    Inspect,
    /// `POST /rest/api/content`: as `Inspect`, and `space.key` is required.
    RequireSpace,
}

/// How the forwarded query changes (for an enforced token).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum QueryChange {
    #[default]
    Keep,
    /// `GET /rest/api/space` without `spaceKey`: one per allowed space.
    AddSpaceKeys,
    /// A search: the `cql` parameter (this text, decoded) is confined.
    ConfineCql(String),
}

/// What the resolver refuses, with the message for the token's holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 403 `space_unknown`: the request is not one the gateway understands.
    Unknown(Cow<'static, str>),
    /// 400 `bad_cql`.
    BadCql(String),
}

/// The rendered views an `expand` may not name: include macros pull other
/// spaces' content into them.
const RENDERED_VIEWS: [&str; 4] = ["view", "export_view", "styled_view", "anonymous_export_view"];

/// The spaces `method path?query` touches by the table of SPEC §17.
pub fn plan(method: &Method, path: &str, query: Option<&str>) -> Result<Plan, Refusal> {
    let params = Params::parse(query);
    params.check_expand()?;
    let reads = *method == Method::GET || *method == Method::HEAD;
    let path = path.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(path);
    if let Some(rest) = path.strip_prefix("/download/attachments/") {
        let page = rest.split('/').next().unwrap_or_default();
        return match reads && is_content_id(page) {
            true => Ok(Plan {
                content: vec![page.to_owned()],
                ..Plan::default()
            }),
            false => Err(unknown("only GET of /download/attachments/{pageId}/... is understood")),
        };
    }
    let Some(rest) = path.strip_prefix("/rest/api/") else {
        return Err(not_in_table());
    };
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        ["space"] if reads => {
            let keys = params.space_keys()?;
            let query = if keys.is_empty() {
                QueryChange::AddSpaceKeys
            } else {
                QueryChange::Keep
            };
            Ok(Plan {
                keys,
                query,
                ..Plan::default()
            })
        }
        ["space", key, ..] => Ok(Plan {
            keys: vec![(*key).to_owned()],
            ..Plan::default()
        }),
        ["content"] if reads => {
            if params.has("ids") {
                return Err(unknown(
                    "content listed by ids cannot be confined to spaces: name a spaceKey",
                ));
            }
            let keys = params.space_keys()?;
            if keys.is_empty() {
                return Err(unknown(
                    "a token confined to spaces lists content with a spaceKey parameter",
                ));
            }
            Ok(Plan {
                keys,
                ..Plan::default()
            })
        }
        ["content"] if *method == Method::POST => Ok(Plan {
            body: BodyUse::RequireSpace,
            ..Plan::default()
        }),
        ["content", "search"] | ["search"] if reads => Ok(Plan {
            query: QueryChange::ConfineCql(params.cql()?),
            ..Plan::default()
        }),
        ["content", id, sub @ ..] if is_content_id(id) => {
            let attachment = content_sub_path(sub)?;
            let content = std::iter::once(*id).chain(attachment).map(str::to_owned).collect();
            let body = match *method {
                Method::POST | Method::PUT => BodyUse::Inspect,
                _ => BodyUse::Ignore,
            };
            Ok(Plan {
                content,
                body,
                forget: *method == Method::PUT || *method == Method::DELETE,
                ..Plan::default()
            })
        }
        ["user"] | ["user", "current"] if reads => Ok(Plan::default()),
        _ => Err(not_in_table()),
    }
}

/// The content sub-paths SPEC §17 lists, and the attachment id one names.
fn content_sub_path<'a>(sub: &[&'a str]) -> Result<Option<&'a str>, Refusal> {
    let understood = match sub {
        [] | ["child" | "descendant" | "label" | "property" | "version" | "history" | "restriction"] => true,
        ["child", "attachment", attachment] | ["child", "attachment", attachment, "data"] => {
            return match is_attachment_id(attachment) {
                true => Ok(Some(attachment)),
                false => Err(unknown("an attachment id is digits, or 'att' and digits")),
            };
        }
        ["child" | "descendant" | "label" | "property" | "version", name] => !name.is_empty(),
        ["restriction", ..] => true,
        _ => false,
    };
    match understood {
        true => Ok(None),
        false => Err(unknown(
            "of a content id's sub-paths only child, descendant, label, property, version, history and restriction are understood",
        )),
    }
}

/// What the body of a change of content names, by the one rule the gateway
/// and its dry run follow: an empty body names nothing (but new content must
/// name its space), and a body that is not JSON, or is compressed, cannot be
/// read.
pub fn names_in_body(
    body: &JsonBody,
    empty: bool,
    encoded: bool,
    use_: BodyUse,
) -> Result<(Option<String>, Vec<String>), Refusal> {
    match body {
        _ if empty && use_ == BodyUse::Inspect => Ok((None, Vec::new())),
        JsonBody::Json(json) if !encoded => body_names(json, use_),
        _ => Err(unknown(
            "the body of a change of content must be JSON (Content-Type: application/json) for the gateway to see which spaces it touches",
        )),
    }
}

/// What a change of content names in its JSON body: the space key, and the
/// ids of its ancestors and container. `Err` for a shape the gateway cannot
/// read with certainty.
pub fn body_names(body: &Value, use_: BodyUse) -> Result<(Option<String>, Vec<String>), Refusal> {
    let Value::Object(object) = body else {
        return match use_ {
            BodyUse::RequireSpace => Err(unknown("the body must be a JSON object with space.key")),
            _ => Ok((None, Vec::new())),
        };
    };
    let key = match object.get("space") {
        None | Some(Value::Null) => None,
        Some(space) => match space.get("key") {
            Some(Value::String(key)) => Some(key.clone()),
            _ => return Err(unknown("the body's space has no key")),
        },
    };
    if key.is_none() && use_ == BodyUse::RequireSpace {
        return Err(unknown("new content of a token confined to spaces names its space.key"));
    }
    let mut ids = Vec::new();
    match object.get("ancestors") {
        None | Some(Value::Null) => {}
        Some(Value::Array(ancestors)) => {
            for ancestor in ancestors {
                ids.push(id_of(ancestor).ok_or_else(|| unknown("an ancestor without a readable id"))?);
            }
        }
        Some(_) => return Err(unknown("the body's ancestors are not a list")),
    }
    match object.get("container") {
        None | Some(Value::Null) => {}
        Some(container) => ids.push(id_of(container).ok_or_else(|| unknown("the container has no readable id"))?),
    }
    Ok((key, ids))
}

/// The `id` of `{"id": "123"}` or `{"id": 123}`.
fn id_of(object: &Value) -> Option<String> {
    let id = match object.get("id")? {
        Value::String(id) => id.clone(),
        Value::Number(id) => id.as_u64()?.to_string(),
        _ => return None,
    };
    is_attachment_id(&id).then_some(id)
}

fn is_content_id(segment: &str) -> bool {
    (1..=19).contains(&segment.len()) && segment.bytes().all(|b| b.is_ascii_digit())
}

fn is_attachment_id(segment: &str) -> bool {
    is_content_id(segment.strip_prefix("att").unwrap_or(segment))
}

fn unknown(why: &'static str) -> Refusal {
    Refusal::Unknown(Cow::Borrowed(why))
}

fn not_in_table() -> Refusal {
    unknown(
        "the gateway cannot tell which spaces this endpoint touches (see the README's table of understood requests)",
    )
}

/// A query's parameters, names and values form-decoded, as Confluence reads them.
struct Params<'q>(Vec<(Cow<'q, str>, Cow<'q, str>)>);

impl<'q> Params<'q> {
    fn parse(query: Option<&'q str>) -> Self {
        Params(query.map_or_else(Vec::new, |q| form_urlencoded::parse(q.as_bytes()).collect()))
    }

    /// Parameter names compare ignoring case: a name Confluence might not
    /// read as the one checked must not slip past the check.
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }

    fn has(&self, name: &str) -> bool {
        self.values(name).next().is_some()
    }

    fn space_keys(&self) -> Result<Vec<String>, Refusal> {
        self.values("spaceKey")
            .map(|key| match key.trim() {
                "" => Err(unknown("an empty spaceKey")),
                key => Ok(key.to_owned()),
            })
            .collect()
    }

    fn cql(&self) -> Result<String, Refusal> {
        if self.has("cqlcontext") {
            return Err(Refusal::BadCql(
                "a cqlcontext cannot be confined to spaces: leave it out".into(),
            ));
        }
        let mut cql = self.values("cql");
        match (cql.next(), cql.next()) {
            (Some(cql), None) => Ok(cql.to_owned()),
            (None, _) => Err(Refusal::BadCql("a search needs a cql parameter".into())),
            (Some(_), Some(_)) => Err(Refusal::BadCql("more than one cql parameter".into())),
        }
    }

    /// Refuses an `expand` that names a rendered view, at any depth
    /// (`body.view`, `children.page.body.export_view`, ...).
    fn check_expand(&self) -> Result<(), Refusal> {
        for expand in self.values("expand") {
            for item in expand.split(',') {
                let parts: Vec<&str> = item.trim().split('.').collect();
                let rendered = parts.windows(2).any(|pair| {
                    pair[0].eq_ignore_ascii_case("body")
                        && RENDERED_VIEWS.iter().any(|view| pair[1].eq_ignore_ascii_case(view))
                });
                if rendered {
                    return Err(Refusal::Unknown(Cow::Owned(format!(
                        "expand={} renders content, which can include other spaces' pages: expand body.storage instead",
                        item.trim()
                    ))));
                }
            }
        }
        Ok(())
    }
}

/// `query` with the `cql` parameter's value replaced by `cql`, every other
/// byte as it was.
pub fn replace_cql(query: &str, cql: &str) -> String {
    let encoded: String = form_urlencoded::byte_serialize(cql.as_bytes()).collect();
    query
        .split('&')
        .map(|pair| {
            let name = pair.split_once('=').map_or(pair, |(name, _)| name);
            let decoded: String = form_urlencoded::parse(name.as_bytes())
                .next()
                .map(|(n, _)| n.into_owned())
                .unwrap_or_default();
            match decoded.eq_ignore_ascii_case("cql") {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn planned(method: Method, target: &str) -> Result<Plan, Refusal> {
        let (path, query) = target.split_once('?').map_or((target, None), |(p, q)| (p, Some(q)));
        plan(&method, path, query)
    }

    fn content(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|id| (*id).to_owned()).collect()
    }

    #[test]
    fn every_row_of_the_table() {
        let keys = |keys: &[&str]| content(keys);
        let rows: Vec<(Method, &str, Plan)> = vec![
            (
                Method::GET,
                "/rest/api/space/DOCS",
                Plan {
                    keys: keys(&["DOCS"]),
                    ..Plan::default()
                },
            ),
            (
                Method::DELETE,
                "/rest/api/space/DOCS/property/x",
                Plan {
                    keys: keys(&["DOCS"]),
                    ..Plan::default()
                },
            ),
            (
                Method::GET,
                "/rest/api/space?spaceKey=DOCS&spaceKey=PM",
                Plan {
                    keys: keys(&["DOCS", "PM"]),
                    ..Plan::default()
                },
            ),
            (
                Method::GET,
                "/rest/api/space?limit=5",
                Plan {
                    query: QueryChange::AddSpaceKeys,
                    ..Plan::default()
                },
            ),
            (
                Method::GET,
                "/rest/api/space/",
                Plan {
                    query: QueryChange::AddSpaceKeys,
                    ..Plan::default()
                },
            ),
            (
                Method::GET,
                "/rest/api/content/123",
                Plan {
                    content: content(&["123"]),
                    ..Plan::default()
                },
            ),
            (
                Method::PUT,
                "/rest/api/content/123",
                Plan {
                    content: content(&["123"]),
                    body: BodyUse::Inspect,
                    forget: true,
                    ..Plan::default()
                },
            ),
            (
                Method::DELETE,
                "/rest/api/content/123",
                Plan {
                    content: content(&["123"]),
                    forget: true,
                    ..Plan::default()
                },
            ),
            (
                Method::GET,
                "/rest/api/content/123/child",
                Plan {
                    content: content(&["123"]),
                    ..Plan::default()
                },
            ),
            (
                Method::GET,
                "/rest/api/content/123/child/page",
                Plan {
                    content: content(&["123"]),
                    ..Plan::default()
                },
            ),
            (
                Method::POST,
                "/rest/api/content/123/child/attachment",
                Plan {
                    content: content(&["123"]),
                    body: BodyUse::Inspect,
                    ..Plan::default()
                },
            ),
            (
                Method::PUT,
                "/rest/api/content/123/child/attachment/att456",
                Plan {
                    content: content(&["123", "att456"]),
                    body: BodyUse::Inspect,
                    forget: true,
                    ..Plan::default()
                },
            ),
            (
                Method::POST,
                "/rest/api/content/123/child/attachment/456/data",
                Plan {
                    content: content(&["123", "456"]),
                    body: BodyUse::Inspect,
                    ..Plan::default()
                },
            ),
            (
                Method::GET,
                "/rest/api/content/123/child/comment",
                Plan {
                    content: content(&["123"]),
                    ..Plan::default()
                },
            ),
            (
                Method::GET,
                "/rest/api/content/123/descendant/page",
                Plan {
                    content: content(&["123"]),
                    ..Plan::default()
                },
            ),
            (
                Method::DELETE,
                "/rest/api/content/123/label/draft",
                Plan {
                    content: content(&["123"]),
                    forget: true,
                    ..Plan::default()
                },
            ),
            (
                Method::PUT,
                "/rest/api/content/123/property/k",
                Plan {
                    content: content(&["123"]),
                    body: BodyUse::Inspect,
                    forget: true,
                    ..Plan::default()
                },
            ),
            (
                Method::GET,
                "/rest/api/content/123/version/2",
                Plan {
                    content: content(&["123"]),
                    ..Plan::default()
                },
            ),
            (
                Method::GET,
                "/rest/api/content/123/history",
                Plan {
                    content: content(&["123"]),
                    ..Plan::default()
                },
            ),
            (
                Method::GET,
                "/rest/api/content/123/restriction/byOperation/read",
                Plan {
                    content: content(&["123"]),
                    ..Plan::default()
                },
            ),
            (
                Method::GET,
                "/rest/api/content?spaceKey=DOCS&type=page",
                Plan {
                    keys: keys(&["DOCS"]),
                    ..Plan::default()
                },
            ),
            (
                Method::POST,
                "/rest/api/content",
                Plan {
                    body: BodyUse::RequireSpace,
                    ..Plan::default()
                },
            ),
            (
                Method::GET,
                "/rest/api/content/search?cql=type%3Dpage",
                Plan {
                    query: QueryChange::ConfineCql("type=page".into()),
                    ..Plan::default()
                },
            ),
            (
                Method::GET,
                "/rest/api/search?cql=title+~+x",
                Plan {
                    query: QueryChange::ConfineCql("title ~ x".into()),
                    ..Plan::default()
                },
            ),
            (Method::GET, "/rest/api/user/current", Plan::default()),
            (Method::GET, "/rest/api/user?username=bob", Plan::default()),
            (
                Method::GET,
                "/download/attachments/123/file.pdf",
                Plan {
                    content: content(&["123"]),
                    ..Plan::default()
                },
            ),
            (
                Method::HEAD,
                "/download/attachments/123/file.pdf?version=2",
                Plan {
                    content: content(&["123"]),
                    ..Plan::default()
                },
            ),
        ];
        for (method, target, expected) in rows {
            assert_eq!(planned(method.clone(), target), Ok(expected), "{method} {target}");
        }
    }

    #[test]
    fn what_the_table_does_not_list_is_unknown() {
        let unknown = [
            (Method::POST, "/rest/api/content/123/move/append/456"),
            (Method::GET, "/rest/api/content/123/pagehierarchy/copy"),
            (Method::GET, "/rest/api/content/scan"),
            (Method::POST, "/rest/api/content/blueprint/instance/123"),
            (Method::GET, "/rest/api/template/page"),
            (Method::GET, "/rest/api/content/123/history/2/macro/id/x"),
            (Method::GET, "/rest/api/content/123/notification/child-created"),
            (Method::GET, "/rest/api/content/12a"),
            (Method::GET, "/rest/api/content/123/child/attachment/x1/data"),
            (Method::GET, "/rest/api/content?ids=1,2"),
            (Method::GET, "/rest/api/content?spaceKey=DOCS&IDS=1"),
            (Method::GET, "/rest/api/content"),
            (Method::GET, "/rest/api/content?spaceKey="),
            (Method::DELETE, "/rest/api/content"),
            (Method::POST, "/rest/api/space"),
            (Method::POST, "/rest/api/user"),
            (Method::GET, "/rest/api/group"),
            (Method::GET, "/rest/api/longtask"),
            (Method::GET, "/rest/api/Content/123"),
            (Method::POST, "/download/attachments/123/file.pdf"),
            (Method::GET, "/download/attachments/x/file.pdf"),
            (Method::GET, "/rest/api/content/123?expand=body.view"),
            (
                Method::GET,
                "/rest/api/content/123?expand=space,body.storage,children.page.body.export_view",
            ),
            (Method::GET, "/rest/api/search?cql=x&expand=content.body.styled_view"),
            (
                Method::GET,
                "/rest/api/space/DOCS/content?Expand=page.body.ANONYMOUS_EXPORT_VIEW",
            ),
            (Method::GET, "/rest/prototype/1/content/123"),
        ];
        for (method, target) in unknown {
            assert!(
                matches!(planned(method.clone(), target), Err(Refusal::Unknown(_))),
                "{method} {target}: {:?}",
                planned(method.clone(), target)
            );
        }
        assert!(planned(Method::GET, "/rest/api/content/123?expand=body.storage,version").is_ok());
    }

    #[test]
    fn searches_need_exactly_one_cql_and_no_cqlcontext() {
        for target in [
            "/rest/api/search",
            "/rest/api/search?cql=a&cql=b",
            "/rest/api/search?cql=a&CQL=b",
            "/rest/api/content/search?cql=a&cqlcontext=%7B%7D",
        ] {
            assert!(
                matches!(planned(Method::GET, target), Err(Refusal::BadCql(_))),
                "{target}"
            );
        }
    }

    #[test]
    fn bodies_name_a_space_ancestors_and_a_container() {
        let body = json!({"type":"page","space":{"key":"DOCS"},"ancestors":[{"id":"10"},{"id":11}],"container":{"id":"12","type":"page"}});
        assert_eq!(
            body_names(&body, BodyUse::RequireSpace),
            Ok((Some("DOCS".into()), content(&["10", "11", "12"])))
        );
        assert_eq!(
            body_names(&json!([{"name": "x"}]), BodyUse::Inspect),
            Ok((None, vec![]))
        );
        assert_eq!(body_names(&json!({"title": "x"}), BodyUse::Inspect), Ok((None, vec![])));
        for (body, use_) in [
            (json!({"title": "x"}), BodyUse::RequireSpace),
            (json!([]), BodyUse::RequireSpace),
            (json!({"space": "DOCS"}), BodyUse::Inspect),
            (json!({"space": {"key": 5}}), BodyUse::Inspect),
            (json!({"ancestors": {"id": "1"}}), BodyUse::Inspect),
            (json!({"ancestors": [{"id": "x1"}]}), BodyUse::Inspect),
            (json!({"ancestors": [{}]}), BodyUse::Inspect),
            (json!({"container": {"id": -1}}), BodyUse::Inspect),
            (json!({"container": "12"}), BodyUse::Inspect),
        ] {
            assert!(body_names(&body, use_).is_err(), "{body}");
        }
    }

    #[test]
    fn only_the_cql_parameter_is_rewritten() {
        assert_eq!(
            replace_cql("limit=5&cql=type%3Dpage&start=0", "(type=page) AND space in (\"DOCS\")"),
            "limit=5&cql=%28type%3Dpage%29+AND+space+in+%28%22DOCS%22%29&start=0"
        );
        assert_eq!(replace_cql("%63ql=x", "y"), "%63ql=y");
        assert_eq!(
            add_space_keys(Some("limit=5"), &content(&["DOCS", "~bob"])),
            "limit=5&spaceKey=DOCS&spaceKey=%7Ebob"
        );
        assert_eq!(add_space_keys(None, &content(&["DOCS"])), "spaceKey=DOCS");
    }
}
