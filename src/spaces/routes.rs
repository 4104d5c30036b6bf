//! The route table of SPEC §17: every request shape a token confined to
//! spaces may send, and how each space it touches is found. The resolver
//! ([`super::resolve`]), the dry run and the README's table all read this
//! one table; adding an endpoint family is adding a row.
//!
//! Rows are tried in order; the first whose method and path match is the
//! request's. A request no row matches touches spaces the gateway cannot
//! tell: 403 `space_unknown`.

/// One understood request shape.
#[derive(Debug)]
pub struct Route {
    pub methods: Methods,
    /// Path patterns: literal segments, `{KEY}` (a space key), `{id}`,
    /// `{pageId}` and `{n}` (digits), `{attachmentId}` and `{contentId}`
    /// (digits, or `att` and digits: a page's or an attachment's id), `{type}`, `{name}` and `{key}` (any segment), and a final
    /// `**` (any further segments, or none).
    pub paths: &'static [&'static str],
    /// Where the spaces it touches are named.
    pub finds: &'static [Find],
    /// A change must name at least one space or content id in its body
    /// (new content, a new space, an inline comment).
    pub body_required: bool,
    /// A `multipart/form-data` body is an upload, which names nothing more
    /// (attachments); elsewhere such a body cannot be read and is refused.
    pub uploads: bool,
}

/// The methods a row takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Methods {
    /// `GET` and `HEAD`.
    Reads,
    /// These only.
    Only(&'static [&'static str]),
    Any,
}

/// One place a request names a space, directly or through content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Find {
    /// The `{KEY}` path segment.
    PathKey,
    /// A content id in the path: the segment of this pattern name.
    PathContent(&'static str),
    /// The `spaceKey` parameter, and what happens without it.
    SpaceKeyParam { many: bool, absent: Absent },
    /// A parameter holding a content id, required.
    ContentParam(&'static str),
    /// A JSON body field (a JSON pointer) holding a space key.
    BodyKey(&'static str),
    /// A JSON body field holding a content id.
    BodyContent(&'static str),
    /// A JSON body field holding a list of `{"id": ...}`.
    BodyContentList(&'static str),
    /// The body's `id`, when given, is the content of this path segment
    /// (400 `bad_request` otherwise): a body cannot aim elsewhere.
    BodySameId(&'static str),
    /// The `cql` parameter, confined by adding `AND space in (...)`.
    Cql,
    /// This parameter cannot be confined: the request is refused.
    RefuseParam(&'static str),
}

/// What a request without `spaceKey` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absent {
    /// Refused: the parameter is required.
    Refuse,
    /// One `spaceKey` per allowed space is added.
    AddAll,
    /// The allowed space is added when there is one; with several, refused.
    AddIfOne,
}

const CHANGES_OF_CONTENT: &[Find] = &[
    Find::PathContent("id"),
    Find::BodyKey("/space/key"),
    Find::BodyContentList("/ancestors"),
    Find::BodyContent("/container/id"),
];

/// The table. Order matters where patterns overlap: the more specific row first.
pub static ROUTES: &[Route] = &[
    Route {
        methods: Methods::Only(&["POST"]),
        paths: &["/rest/api/space", "/rest/api/space/_private"],
        finds: &[Find::BodyKey("/key")],
        body_required: true,
        uploads: false,
    },
    Route {
        methods: Methods::Reads,
        paths: &["/rest/api/space"],
        finds: &[Find::SpaceKeyParam {
            many: true,
            absent: Absent::AddAll,
        }],
        body_required: false,
        uploads: false,
    },
    Route {
        methods: Methods::Only(&["PUT"]),
        paths: &["/rest/api/space/{KEY}"],
        finds: &[Find::PathKey, Find::BodyKey("/key"), Find::BodyContent("/homepage/id")],
        body_required: false,
        uploads: false,
    },
    Route {
        methods: Methods::Any,
        paths: &["/rest/api/space/{KEY}/**"],
        finds: &[Find::PathKey],
        body_required: false,
        uploads: false,
    },
    Route {
        methods: Methods::Reads,
        paths: &["/rest/api/content"],
        finds: &[
            Find::SpaceKeyParam {
                many: false,
                absent: Absent::AddIfOne,
            },
            Find::RefuseParam("ids"),
        ],
        body_required: false,
        uploads: false,
    },
    Route {
        methods: Methods::Only(&["POST"]),
        paths: &["/rest/api/content"],
        finds: &[
            Find::BodyKey("/space/key"),
            Find::BodyContentList("/ancestors"),
            Find::BodyContent("/container/id"),
            Find::BodyContent("/id"),
        ],
        body_required: true,
        uploads: false,
    },
    Route {
        methods: Methods::Reads,
        paths: &["/rest/api/content/search", "/rest/api/search"],
        finds: &[Find::Cql],
        body_required: false,
        uploads: false,
    },
    Route {
        methods: Methods::Only(&["PUT"]),
        paths: &["/rest/api/content/{id}"],
        finds: &[
            Find::PathContent("id"),
            Find::BodyKey("/space/key"),
            Find::BodyContentList("/ancestors"),
            Find::BodyContent("/container/id"),
            Find::BodySameId("id"),
        ],
        body_required: false,
        uploads: false,
    },
    Route {
        methods: Methods::Only(&["PUT"]),
        paths: &["/rest/api/content/{id}/child/attachment/{attachmentId}"],
        finds: &[
            Find::PathContent("id"),
            Find::PathContent("attachmentId"),
            Find::BodyContent("/container/id"),
            Find::BodySameId("attachmentId"),
        ],
        body_required: false,
        uploads: false,
    },
    Route {
        methods: Methods::Only(&["POST"]),
        paths: &["/rest/api/content/{id}/child/attachment/{attachmentId}/data"],
        finds: &[Find::PathContent("id"), Find::PathContent("attachmentId")],
        body_required: false,
        uploads: true,
    },
    Route {
        methods: Methods::Only(&["GET", "HEAD", "DELETE"]),
        paths: &[
            "/rest/api/content/{id}/child/attachment/{attachmentId}",
            "/rest/api/content/{id}/child/attachment/{attachmentId}/data",
        ],
        finds: &[Find::PathContent("id"), Find::PathContent("attachmentId")],
        body_required: false,
        uploads: false,
    },
    Route {
        methods: Methods::Only(&["POST", "PUT"]),
        paths: &["/rest/api/content/{id}/child/attachment"],
        finds: CHANGES_OF_CONTENT,
        body_required: false,
        uploads: true,
    },
    Route {
        methods: Methods::Any,
        paths: &[
            "/rest/api/content/{id}",
            "/rest/api/content/{id}/child",
            "/rest/api/content/{id}/child/{type}",
            "/rest/api/content/{id}/descendant",
            "/rest/api/content/{id}/descendant/{type}",
            "/rest/api/content/{id}/label",
            "/rest/api/content/{id}/label/{name}",
            "/rest/api/content/{id}/property",
            "/rest/api/content/{id}/property/{key}",
            "/rest/api/content/{id}/version",
            "/rest/api/content/{id}/version/{n}",
            "/rest/api/content/{id}/history",
            "/rest/api/content/{id}/restriction/**",
        ],
        finds: CHANGES_OF_CONTENT,
        body_required: false,
        uploads: false,
    },
    Route {
        methods: Methods::Any,
        paths: &[
            "/rest/experimental/content/{contentId}/version",
            "/rest/experimental/content/{contentId}/version/{n}",
        ],
        finds: &[Find::PathContent("contentId")],
        body_required: false,
        uploads: false,
    },
    Route {
        methods: Methods::Reads,
        paths: &["/rest/inlinecomments/1.0/comments"],
        finds: &[Find::ContentParam("containerId")],
        body_required: false,
        uploads: false,
    },
    Route {
        methods: Methods::Only(&["POST"]),
        paths: &["/rest/inlinecomments/1.0/comments"],
        finds: &[Find::BodyContent("/containerId"), Find::BodyContent("/parentCommentId")],
        body_required: true,
        uploads: false,
    },
    Route {
        methods: Methods::Any,
        paths: &["/rest/likes/1.0/content/{id}/likes"],
        finds: &[Find::PathContent("id")],
        body_required: false,
        uploads: false,
    },
    Route {
        methods: Methods::Reads,
        paths: &[
            "/rest/api/template/page",
            "/rest/api/template/blueprint",
            "/rest/experimental/template/page",
            "/rest/experimental/template/blueprint",
        ],
        finds: &[Find::SpaceKeyParam {
            many: false,
            absent: Absent::Refuse,
        }],
        body_required: false,
        uploads: false,
    },
    Route {
        methods: Methods::Only(&["POST"]),
        paths: &["/rest/api/contentbody/convert/storage"],
        finds: &[],
        body_required: false,
        uploads: false,
    },
    Route {
        methods: Methods::Reads,
        paths: &[
            "/rest/api/user/current",
            "/rest/api/user",
            "/rest/api/group",
            "/rest/api/group/{name}/member",
        ],
        finds: &[],
        body_required: false,
        uploads: false,
    },
    Route {
        methods: Methods::Only(&["GET", "HEAD", "POST", "DELETE"]),
        paths: &["/rest/api/user/watch/content/{id}"],
        finds: &[Find::PathContent("id")],
        body_required: false,
        uploads: false,
    },
    Route {
        methods: Methods::Only(&["GET", "HEAD", "POST", "DELETE"]),
        paths: &["/rest/api/user/watch/space/{KEY}"],
        finds: &[Find::PathKey],
        body_required: false,
        uploads: false,
    },
    Route {
        methods: Methods::Reads,
        paths: &["/download/attachments/{pageId}/**"],
        finds: &[Find::PathContent("pageId")],
        body_required: false,
        uploads: false,
    },
];

/// A path matched against a row: the value of each named segment (a
/// pattern names two at most).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Captures<'p>([Option<(&'static str, &'p str)>; 2]);

impl<'p> Captures<'p> {
    pub fn get(&self, name: &str) -> Option<&'p str> {
        self.0.iter().flatten().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    fn push(&mut self, name: &'static str, value: &'p str) -> Option<()> {
        let free = self.0.iter_mut().find(|slot| slot.is_none())?;
        *free = Some((name, value));
        Some(())
    }
}

impl Methods {
    pub fn allow(self, method: &str) -> bool {
        match self {
            Methods::Reads => method == "GET" || method == "HEAD",
            Methods::Only(methods) => methods.contains(&method),
            Methods::Any => true,
        }
    }
}

/// The row for `method path` and its path's captures; `None` when no row
/// understands the request.
pub fn route<'p>(method: &str, path: &'p str) -> Option<(&'static Route, Captures<'p>)> {
    let path = path.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(path);
    ROUTES
        .iter()
        .filter(|route| route.methods.allow(method))
        .find_map(|route| {
            route
                .paths
                .iter()
                .find_map(|pattern| matches(pattern, path))
                .map(|captures| (route, captures))
        })
}

/// Whether `path` fits `pattern`, and its captures. The literal start of
/// the pattern is compared first: most rows fail there, at once.
fn matches<'p>(pattern: &'static str, path: &'p str) -> Option<Captures<'p>> {
    let (literal, given) = (pattern.as_bytes(), path.as_bytes());
    let mut at = 0;
    while at < literal.len() && literal[at] != b'{' && literal[at] != b'*' {
        if given.get(at) != Some(&literal[at]) {
            return None;
        }
        at += 1;
    }
    if at == literal.len() {
        return (at == given.len()).then(Captures::default);
    }
    // The literal start ends with '/' (a pattern's names are whole
    // segments): the rest of each is compared segment by segment.
    let mut captures = Captures::default();
    let mut segments = path[at..].split('/');
    for part in pattern[at..].split('/') {
        if part == "**" {
            return Some(captures);
        }
        let segment = segments.next()?;
        match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            None if part == segment => {}
            None => return None,
            Some(name) if segment_fits(name, segment) => captures.push(name, segment)?,
            Some(_) => return None,
        }
    }
    segments.next().is_none().then_some(captures)
}

/// Changes after which no cached space can be trusted: they move content,
/// and every page below it with it. Any method but `GET` and `HEAD` on
/// these paths empties the lookup cache (SPEC §17: a change drops what it
/// names; a move names a whole tree).
pub static MOVES: &[&str] = &[
    "/rest/api/content/{id}",
    "/rest/api/content/{id}/move/**",
    "/rest/api/content/{id}/pagehierarchy/**",
    "/pages/movepage.action",
    "/json/movepage.action",
    "/pages/doremovepage.action",
    "/rpc/json-rpc/confluenceservice-v2",
    "/rpc/json-rpc/confluenceservice-v2/**",
];

/// Whether a change of `path` may move content ([`MOVES`]).
pub fn moves_content(path: &str) -> bool {
    let path = path.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(path);
    MOVES.iter().any(|pattern| matches(pattern, path).is_some())
}

/// A body field's JSON pointer as people write the field: `/space/key` as
/// `space.key`.
pub fn field_name(pointer: &str) -> String {
    pointer.trim_start_matches('/').replace('/', ".")
}

/// A content id in the one form Confluence reads it: without `att`, without
/// leading zeros (`att0123` is content 123).
pub fn canonical_id(id: &str) -> String {
    let digits = id.strip_prefix("att").unwrap_or(id).trim_start_matches('0');
    match digits {
        "" => "0".to_owned(),
        digits => digits.to_owned(),
    }
}

fn segment_fits(name: &str, segment: &str) -> bool {
    match name {
        "id" | "pageId" | "n" => is_content_id(segment),
        "attachmentId" | "contentId" => is_any_content_id(segment),
        "KEY" => !segment.is_empty() && segment.trim() == segment,
        _ => !segment.is_empty(),
    }
}

/// A content id: 1 to 19 digits (Confluence's ids are longs).
pub fn is_content_id(text: &str) -> bool {
    (1..=19).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit())
}

/// A content id or an attachment id (`att` and digits).
pub fn is_any_content_id(text: &str) -> bool {
    is_content_id(text.strip_prefix("att").unwrap_or(text))
}

/// The README's table, written from [`ROUTES`] (the README must hold it
/// as written here: a test compares them).
#[cfg(test)]
mod readme {
    use super::*;

    impl Methods {
        fn describe(self) -> String {
            match self {
                Methods::Reads => "GET".to_owned(),
                Methods::Only(methods) => methods
                    .iter()
                    .filter(|m| **m != "HEAD")
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", "),
                Methods::Any => "any".to_owned(),
            }
        }
    }

    impl Find {
        fn describe(self) -> String {
            match self {
                Find::PathKey => "the space `{KEY}`".into(),
                Find::PathContent(name) => format!("the space of content `{{{name}}}`"),
                Find::SpaceKeyParam { many: true, absent } => {
                    format!("each `spaceKey` parameter ({})", absent.describe())
                }
                Find::SpaceKeyParam { many: false, absent } => {
                    format!("the `spaceKey` parameter ({})", absent.describe())
                }
                Find::ContentParam(name) => format!("the space of the content id in parameter `{name}` (required)"),
                Find::BodyKey(pointer) => format!("body `{}`", field_name(pointer)),
                Find::BodyContent(pointer) => format!("the space of body `{}`", field_name(pointer)),
                Find::BodyContentList(pointer) => format!("the space of every body `{}[].id`", field_name(pointer)),
                Find::BodySameId(name) => format!("a body `id` other than `{{{name}}}` is 400 `bad_request`"),
                Find::Cql => "the `cql` is confined: `(<cql>) AND space in (...)`".into(),
                Find::RefuseParam(name) => format!("an `{name}` parameter is `space_unknown`"),
            }
        }
    }

    impl Absent {
        fn describe(self) -> &'static str {
            match self {
                Absent::Refuse => "required",
                Absent::AddAll => "none: one per allowed space is added",
                Absent::AddIfOne => "none: the allowed space is added when there is one",
            }
        }
    }

    /// The README's table of understood requests, as Markdown, from [`ROUTES`].
    pub(super) fn markdown_table() -> String {
        let mut out = String::from("| methods | paths | spaces it touches |\n|---|---|---|\n");
        for route in ROUTES {
            let paths: Vec<String> = route.paths.iter().map(|p| format!("`{p}`")).collect();
            let mut finds: Vec<String> = route.finds.iter().map(|f| f.describe()).collect();
            if finds.is_empty() {
                finds.push("none".into());
            }
            if route.body_required {
                finds.push("the body must name one".into());
            }
            if route.uploads {
                finds.push("an upload (`multipart/form-data`) names nothing more".into());
            }
            out.push_str(&format!(
                "| {} | {} | {} |\n",
                route.methods.describe(),
                paths.join("<br>"),
                finds.join("; ")
            ));
        }
        out.push_str("| | anything else | `space_unknown` |\n");
        out
    }

    #[test]
    fn the_readme_shows_this_table() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let (begin, end) = ("<!-- spaces-routes:begin -->\n", "<!-- spaces-routes:end -->");
        let start = readme.find(begin).expect("README.md marks the table's start") + begin.len();
        let stop = readme[start..].find(end).expect("README.md marks the table's end") + start;
        let table = markdown_table();
        assert!(
            readme[start..stop] == table,
            "README.md's table of understood requests differs from src/spaces/routes.rs; put this between the markers:\n{table}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(method: &str, path: &str) -> Option<usize> {
        let (found, _) = route(method, path)?;
        ROUTES.iter().position(|r| std::ptr::eq(r, found))
    }

    #[test]
    fn patterns_capture_their_segments() {
        let (_, captures) = route("POST", "/rest/api/content/12/child/attachment/att34/data").unwrap();
        assert_eq!(captures.get("id"), Some("12"));
        assert_eq!(captures.get("attachmentId"), Some("att34"));
        let (_, captures) = route("GET", "/download/attachments/5/a/b.png").unwrap();
        assert_eq!(captures.get("pageId"), Some("5"));
        assert!(
            route("GET", "/download/attachments/5").is_some(),
            "** matches nothing too"
        );
        assert_eq!(row("GET", "/rest/api/space/"), row("GET", "/rest/api/space"));
    }

    #[test]
    fn the_first_matching_row_wins_and_methods_count() {
        assert_ne!(row("POST", "/rest/api/space"), row("GET", "/rest/api/space"));
        assert_ne!(row("PUT", "/rest/api/space/DOCS"), row("GET", "/rest/api/space/DOCS"));
        assert_eq!(row("POST", "/rest/api/space/_private"), row("POST", "/rest/api/space"));
        assert_eq!(row("DELETE", "/rest/api/space"), None);
        assert_eq!(row("PATCH", "/rest/api/user/watch/content/1"), None);
        assert_eq!(row("POST", "/rest/api/user"), None);
        assert_eq!(row("GET", "/rest/api/Content/1"), None, "paths are case-sensitive");
        assert_eq!(row("GET", "/rest/api/content/1x"), None);
        assert_eq!(row("GET", "/rest/api/content/1/move"), None);
        assert_eq!(row("GET", "/rest/experimental/content/1/version/x"), None);
        assert_eq!(row("GET", "/rest/api/content/12345678901234567890"), None, "20 digits");
        assert_eq!(
            row("POST", "/rest/api/content/1/child/attachment/att2"),
            None,
            "no such endpoint"
        );
        assert_eq!(row("PUT", "/rest/api/content/1/child/attachment/att2/data"), None);
    }

    #[test]
    fn moves_and_canonical_ids() {
        for path in [
            "/rest/api/content/5",
            "/rest/api/content/5/move/append/6",
            "/rest/api/content/5/pagehierarchy/copy",
            "/pages/movepage.action",
            "/rpc/json-rpc/confluenceservice-v2",
        ] {
            assert!(moves_content(path), "{path}");
        }
        for path in [
            "/rest/api/content/5/label",
            "/rest/api/content",
            "/pages/viewpage.action",
        ] {
            assert!(!moves_content(path), "{path}");
        }
        assert_eq!(canonical_id("att0123"), "123");
        assert_eq!(canonical_id("000"), "0");
        assert_eq!(canonical_id("42"), "42");
    }
}
