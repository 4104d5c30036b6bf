//! SPEC §17 through the running gateway: tokens confined to spaces, against
//! a fake Confluence that knows a fixed content → space fixture
//! (`fake_confluence::CONTENT`). Every row of the table allowed and
//! refused, content ids in paths and bodies, lookups (as the token's user,
//! coalesced, cached, expired, dropped by changes), CQL confinement byte for
//! byte, and report-only tokens.

use hyper::Method;
use serde_json::{Value, json};
use tokengate::{ForwardAs, NewToken, TokenAuth};

use crate::common::fake_confluence::{ADMIN_PASSWORD, USERS};
use crate::common::process::cli;
use crate::common::{Gateway, Reply, basic, get, send};

const BASE: &str = "/rest/extender/1.0/tokenTools";

/// A gateway and a token of alice's confined to `spaces`, with `rules`;
/// returns the gateway and the token's Basic header.
pub async fn confined(spaces: &str, rules: &str, enforce: bool) -> (Gateway, String) {
    let gw = Gateway::start().await;
    let created = gw
        .create_token(NewToken {
            label: "docs-bot".into(),
            user: Some("alice".into()),
            limit_to: Some(rules.into()),
            spaces: Some(spaces.into()),
            enforce: Some(enforce),
            ..NewToken::default()
        })
        .await;
    let auth = basic("alice", &created.value);
    (gw, auth)
}

pub async fn call(gw: &Gateway, method: Method, target: &str, auth: &str, body: Option<Value>) -> Reply {
    let mut headers = vec![("authorization", auth)];
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    send(method, &gw.url(target), &headers, body).await
}

/// A status and reason code; the reason is empty for Confluence's own answer.
pub type Outcome = (u16, String);

/// `(status, reason)` of a reply: reason empty for Confluence's own answer.
pub fn outcome(reply: &Reply) -> Outcome {
    let reason = match reply.headers.contains_key("x-tokengate-reason") {
        true => reply.reason(),
        false => String::new(),
    };
    (reply.status.as_u16(), reason)
}

pub fn forwarded() -> Outcome {
    (200, String::new())
}

pub fn refused(status: u16, reason: &str) -> Outcome {
    (status, reason.to_owned())
}

/// Whether Confluence received `method target` (other than as a lookup).
pub fn reached(gw: &Gateway, method: &str, target: &str) -> bool {
    gw.upstream
        .requests()
        .iter()
        .any(|r| r.method == method && r.target == target)
}

#[tokio::test]
async fn every_row_of_the_table_allowed_and_refused() {
    let (gw, auth) = confined("DOCS", "", true).await;
    let rows: Vec<(Method, &str, Option<Value>, Outcome)> = vec![
        // /rest/api/space/{KEY} and below
        (Method::GET, "/rest/api/space/DOCS", None, forwarded()),
        (Method::GET, "/rest/api/space/docs/content/page", None, forwarded()),
        (
            Method::DELETE,
            "/rest/api/space/SECRET",
            None,
            refused(403, "space_not_allowed"),
        ),
        (
            Method::GET,
            "/rest/api/space/SECRET/content",
            None,
            refused(403, "space_not_allowed"),
        ),
        // GET /rest/api/space
        (Method::GET, "/rest/api/space?spaceKey=DOCS", None, forwarded()),
        (
            Method::GET,
            "/rest/api/space?spaceKey=DOCS&spaceKey=SECRET",
            None,
            refused(403, "space_not_allowed"),
        ),
        (
            Method::POST,
            "/rest/api/space",
            Some(json!({"key": "NEW"})),
            refused(403, "space_not_allowed"),
        ),
        (
            Method::POST,
            "/rest/api/space",
            Some(json!({"name": "no key"})),
            refused(403, "space_unknown"),
        ),
        // /rest/api/content/{id} and its sub-paths
        (Method::GET, "/rest/api/content/100", None, forwarded()),
        (Method::GET, "/rest/api/content/102", None, forwarded()),
        (
            Method::GET,
            "/rest/api/content/200",
            None,
            refused(403, "space_not_allowed"),
        ),
        (
            Method::DELETE,
            "/rest/api/content/200",
            None,
            refused(403, "space_not_allowed"),
        ),
        (Method::GET, "/rest/api/content/100/child/page", None, forwarded()),
        (Method::GET, "/rest/api/content/100/descendant", None, forwarded()),
        (Method::GET, "/rest/api/content/100/label", None, forwarded()),
        (Method::GET, "/rest/api/content/100/property/k", None, forwarded()),
        (Method::GET, "/rest/api/content/100/version/2", None, forwarded()),
        (Method::GET, "/rest/api/content/100/history", None, forwarded()),
        (
            Method::GET,
            "/rest/api/content/100/restriction/byOperation",
            None,
            forwarded(),
        ),
        (
            Method::GET,
            "/rest/api/content/100/child/attachment/att500",
            None,
            forwarded(),
        ),
        // An attachment of another space addressed under an allowed page.
        (
            Method::GET,
            "/rest/api/content/100/child/attachment/att600/data",
            None,
            refused(403, "space_not_allowed"),
        ),
        (
            Method::GET,
            "/rest/api/content/200/child/page",
            None,
            refused(403, "space_not_allowed"),
        ),
        // Sub-paths the table does not list.
        (
            Method::POST,
            "/rest/api/content/100/move/append/101",
            None,
            refused(403, "space_unknown"),
        ),
        (
            Method::POST,
            "/rest/api/content/100/pagehierarchy/copy",
            None,
            refused(403, "space_unknown"),
        ),
        (
            Method::GET,
            "/rest/api/content/scan",
            None,
            refused(403, "space_unknown"),
        ),
        (
            Method::POST,
            "/rest/api/content/blueprint/instance/100",
            None,
            refused(403, "space_unknown"),
        ),
        (
            Method::GET,
            "/rest/api/template/page",
            None,
            refused(403, "space_unknown"),
        ),
        // GET /rest/api/content
        (
            Method::GET,
            "/rest/api/content?spaceKey=DOCS&type=page",
            None,
            forwarded(),
        ),
        (
            Method::GET,
            "/rest/api/content?spaceKey=SECRET",
            None,
            refused(403, "space_not_allowed"),
        ),
        (
            Method::GET,
            "/rest/api/content?type=page&ids=100",
            None,
            refused(403, "space_unknown"),
        ),
        (
            Method::GET,
            "/rest/api/content?spaceKey=DOCS&ids=200",
            None,
            refused(403, "space_unknown"),
        ),
        // POST /rest/api/content
        (
            Method::POST,
            "/rest/api/content",
            Some(json!({"type": "page", "space": {"key": "DOCS"}, "ancestors": [{"id": "100"}]})),
            forwarded(),
        ),
        (
            Method::POST,
            "/rest/api/content",
            Some(json!({"type": "page", "space": {"key": "SECRET"}})),
            refused(403, "space_not_allowed"),
        ),
        (
            Method::POST,
            "/rest/api/content",
            Some(json!({"type": "page", "space": {"key": "DOCS"}, "ancestors": [{"id": 200}]})),
            refused(403, "space_not_allowed"),
        ),
        (
            Method::POST,
            "/rest/api/content",
            Some(json!({"type": "comment", "space": {"key": "DOCS"}, "container": {"id": "200", "type": "page"}})),
            refused(403, "space_not_allowed"),
        ),
        (
            Method::POST,
            "/rest/api/content",
            Some(json!({"type": "page", "title": "no space"})),
            refused(403, "space_unknown"),
        ),
        // PUT /rest/api/content/{id}: a move out of the space is refused.
        (
            Method::PUT,
            "/rest/api/content/101",
            Some(json!({"type": "page", "space": {"key": "DOCS"}, "version": {"number": 2}})),
            forwarded(),
        ),
        (
            Method::PUT,
            "/rest/api/content/101",
            Some(json!({"type": "page", "space": {"key": "PM"}, "version": {"number": 2}})),
            refused(403, "space_not_allowed"),
        ),
        (
            Method::PUT,
            "/rest/api/content/101",
            Some(json!({"type": "page", "ancestors": [{"id": "300"}]})),
            refused(403, "space_not_allowed"),
        ),
        // Searches, users, downloads.
        (
            Method::GET,
            "/rest/api/content/search?cql=type%3Dpage",
            None,
            forwarded(),
        ),
        (Method::GET, "/rest/api/search?cql=type%3Dpage", None, forwarded()),
        (Method::GET, "/rest/api/user/current", None, forwarded()),
        (Method::GET, "/rest/api/user?username=bob", None, forwarded()),
        (Method::GET, "/rest/api/group", None, forwarded()),
        (Method::GET, "/rest/api/longtask", None, refused(403, "space_unknown")),
        (Method::GET, "/download/attachments/100/report.pdf", None, forwarded()),
        (
            Method::GET,
            "/download/attachments/200/report.pdf",
            None,
            refused(403, "space_not_allowed"),
        ),
        // Rendered bodies pull in other spaces; storage is fine.
        (
            Method::GET,
            "/rest/api/content/100?expand=body.view",
            None,
            refused(403, "space_unknown"),
        ),
        (
            Method::GET,
            "/rest/api/content/100?expand=children.page.body.export_view",
            None,
            refused(403, "space_unknown"),
        ),
        (
            Method::GET,
            "/rest/api/content/100?expand=body.storage,version",
            None,
            forwarded(),
        ),
    ];
    let passed_on = |gw: &Gateway| {
        let requests = gw.upstream.requests();
        requests
            .iter()
            .filter(|r| !r.target.contains("expand=space&status=any"))
            .count()
    };
    for (method, target, body, expected) in rows {
        let before = passed_on(&gw);
        let reply = call(&gw, method.clone(), target, &auth, body).await;
        assert_eq!(outcome(&reply), expected, "{method} {target}: {:?}", reply.body);
        let passed = passed_on(&gw) > before;
        assert_eq!(
            passed,
            expected == forwarded(),
            "{method} {target}: forwarded only when allowed"
        );
    }
    // The refusal names the space, and the gateway's value never reaches Confluence.
    let reply = call(&gw, Method::GET, "/rest/api/content/200", &auth, None).await;
    let message = reply.json()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("content 200 is in space SECRET"), "{message}");
    assert!(message.contains("docs-bot"), "{message}");
    let token = auth.trim_start_matches("Basic ");
    assert!(gw.upstream.requests().iter().all(|r| !r.contains(token)));
    // Lookups are asked as the token's user, through the forwarding path.
    let lookup = gw
        .upstream
        .requests()
        .into_iter()
        .find(|r| r.target == "/rest/api/content/100?expand=space&status=any")
        .expect("content 100 was looked up");
    assert_eq!(lookup.header("x-forwarded-user"), Some("alice"));
    assert_eq!(lookup.header("authorization"), None);
}

#[tokio::test]
async fn what_has_no_space_is_refused_and_not_passed_on() {
    let (gw, auth) = confined("DOCS", "", true).await;
    // Missing, hidden from alice, trashed, and an error of Confluence's.
    for id in ["12345", "700", "400", "999"] {
        let target = format!("/rest/api/content/{id}");
        let reply = call(&gw, Method::DELETE, &target, &auth, None).await;
        assert_eq!(outcome(&reply), refused(403, "space_unknown"), "{id}");
        assert!(!reached(&gw, "DELETE", &target), "{id} was passed on");
    }
    // Failures are not cached: each request asks again.
    call(&gw, Method::GET, "/rest/api/content/12345", &auth, None).await;
    assert_eq!(gw.upstream.lookups_of("12345"), 2);
    // A user who may see 700 gets it.
    let admin = gw
        .create_token(NewToken {
            label: "admin-docs".into(),
            user: Some("admin".into()),
            spaces: Some("DOCS".into()),
            ..NewToken::default()
        })
        .await;
    let reply = get(
        &gw.url("/rest/api/content/700"),
        &[("authorization", &basic("admin", &admin.value))],
    )
    .await;
    assert_eq!(outcome(&reply), forwarded());
}

#[tokio::test]
async fn lookups_are_coalesced_cached_expired_and_dropped_by_changes() {
    let (gw, auth) = confined("DOCS", "", true).await;
    let url = gw.url("/rest/api/content/800");
    let requests = (0..20).map(|_| {
        let (url, auth) = (url.clone(), auth.clone());
        tokio::spawn(async move { get(&url, &[("authorization", &auth)]).await.status })
    });
    for request in requests.collect::<Vec<_>>() {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(
        gw.upstream.lookups_of("800"),
        1,
        "one lookup for twenty concurrent requests"
    );
    get(&url, &[("authorization", &auth)]).await;
    assert_eq!(gw.upstream.lookups_of("800"), 1, "cached");
    gw.clock.advance_ms(59_000);
    get(&url, &[("authorization", &auth)]).await;
    assert_eq!(
        gw.upstream.lookups_of("800"),
        1,
        "still cached within space_cache_ttl_s"
    );
    gw.clock.advance_ms(1_000);
    get(&url, &[("authorization", &auth)]).await;
    assert_eq!(gw.upstream.lookups_of("800"), 2, "asked again after space_cache_ttl_s");
    // A change asks afresh, whatever is cached, and drops the id.
    let reply = call(
        &gw,
        Method::PUT,
        "/rest/api/content/800",
        &auth,
        Some(json!({"space": {"key": "DOCS"}})),
    )
    .await;
    assert_eq!(outcome(&reply), forwarded());
    assert_eq!(
        gw.upstream.lookups_of("800"),
        3,
        "a change is never decided from the cache"
    );
    get(&url, &[("authorization", &auth)]).await;
    assert_eq!(gw.upstream.lookups_of("800"), 4, "asked again after a PUT");
    let metrics = get(&gw.url("/tokengate/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("tokengate_space_lookups_total{result=\"miss\"} 4"),
        "{text}"
    );
    assert!(text.contains("tokengate_space_lookup_seconds_count 4"), "{text}");
}

#[tokio::test]
async fn cql_is_confined_byte_for_byte_and_what_cannot_be_confined_is_refused() {
    let (gw, auth) = confined("DOCS, pm", "", true).await;
    let sent =
        "/rest/api/content/search?limit=5&cql=type%3Dpage+and+title+~+%22a%5C%22b%22+order+by+title+desc&expand=space";
    let reply = call(&gw, Method::GET, sent, &auth, None).await;
    assert_eq!(outcome(&reply), forwarded());
    let expected = "/rest/api/content/search?limit=5&cql=%28type%3Dpage+and+title+%7E+%22a%5C%22b%22%29+AND+space+in+%28%22DOCS%22%2C%22pm%22%29+ORDER+BY+title+DESC&expand=space";
    assert_eq!(gw.upstream.last().target, expected);

    let before = gw.upstream.count();
    for cql in [
        "type=page) OR space=SECRET OR (type=page",
        "(type=page",
        "type=page)",
        r#"title ~ "abc\""#,
        r#"title = a\"b OR space = SECRET"#,
        "title ~ 'open",
        "ORDER BY title",
        "type=page ORDER BY title) OR (space=SECRET",
    ] {
        let encoded: String = form_urlencoded::byte_serialize(cql.as_bytes()).collect();
        let reply = call(
            &gw,
            Method::GET,
            &format!("/rest/api/search?cql={encoded}"),
            &auth,
            None,
        )
        .await;
        assert_eq!(outcome(&reply), refused(400, "bad_cql"), "{cql}");
    }
    for target in [
        "/rest/api/search?cql=type%3Dpage&cql=space%3DSECRET",
        "/rest/api/search?cql=type%3Dpage&cqlcontext=%7B%22spaceKey%22%3A%22SECRET%22%7D",
        "/rest/api/search",
    ] {
        let reply = call(&gw, Method::GET, target, &auth, None).await;
        assert_eq!(outcome(&reply), refused(400, "bad_cql"), "{target}");
    }
    assert_eq!(gw.upstream.count(), before, "nothing was forwarded");
    // The space list gets one spaceKey per allowed space.
    call(&gw, Method::GET, "/rest/api/space?limit=10", &auth, None).await;
    assert_eq!(
        gw.upstream.last().target,
        "/rest/api/space?limit=10&spaceKey=DOCS&spaceKey=pm"
    );
}

#[tokio::test]
async fn rules_and_spaces_must_both_allow() {
    let (gw, auth) = confined("DOCS", "[get].*/rest/api/content/[0-9]+", true).await;
    let cases = [
        ("/rest/api/content/100", forwarded()),
        ("/rest/api/content/200", refused(403, "space_not_allowed")),
        ("/rest/api/space/DOCS", refused(403, "rule_mismatch")),
    ];
    for (target, expected) in cases {
        let reply = call(&gw, Method::GET, target, &auth, None).await;
        assert_eq!(outcome(&reply), expected, "{target}");
    }
    // A rule refusal costs no lookup.
    assert_eq!(gw.upstream.lookups_of("300"), 0);
    let reply = call(&gw, Method::DELETE, "/rest/api/content/300", &auth, None).await;
    assert_eq!(outcome(&reply), refused(403, "rule_mismatch"));
    assert_eq!(gw.upstream.lookups_of("300"), 0);
}

#[tokio::test]
async fn report_only_tokens_report_space_refusals_and_are_never_rewritten() {
    let (gw, auth) = confined("DOCS", "", false).await;
    let reply = call(&gw, Method::GET, "/rest/api/content/200", &auth, None).await;
    assert_eq!(outcome(&reply), forwarded(), "reported, not refused");
    let reply = call(&gw, Method::GET, "/rest/api/longtask", &auth, None).await;
    assert_eq!(outcome(&reply), forwarded());
    for target in ["/rest/api/space?limit=3", "/rest/api/search?cql=space%3DSECRET"] {
        call(&gw, Method::GET, target, &auth, None).await;
        assert_eq!(gw.upstream.last().target, target, "forwarded as sent");
    }
    // A lookup that names no space is never waived.
    let reply = call(&gw, Method::GET, "/rest/api/content/12345", &auth, None).await;
    assert_eq!(outcome(&reply), refused(403, "space_unknown"));
    let audit = gw.request_audit().await;
    let decisions: Vec<(&str, Option<&str>, Option<&str>)> = audit
        .iter()
        .rev()
        .map(|e| {
            (
                e.path.as_deref().unwrap(),
                Some(e.decision.as_str()),
                e.reason.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        decisions,
        [
            ("/rest/api/content/200", Some("report"), Some("space_not_allowed")),
            ("/rest/api/longtask", Some("report"), Some("space_unknown")),
            ("/rest/api/space", Some("report"), None),
            ("/rest/api/search", Some("report"), None),
            ("/rest/api/content/12345", Some("deny"), Some("space_unknown")),
        ]
    );
    // What the spaces would have done is in the entry: the refusal, or the rewrite.
    let details: Vec<&str> = audit.iter().rev().filter_map(|e| e.detail.as_deref()).collect();
    assert!(details[0].contains("content 200 is in space SECRET"), "{details:?}");
    assert!(details[2].contains("spaceKey=DOCS"), "{details:?}");
    assert!(
        details[3].contains("cql=%28space%3DSECRET%29+AND+space+in+%28%22DOCS%22%29"),
        "{details:?}"
    );
}

#[tokio::test]
async fn with_forward_as_pat_lookups_carry_the_users_pat() {
    let gw = Gateway::start_with(|c| {
        c.forward_as = ForwardAs::Pat;
        c.token_auth = TokenAuth::Both;
    })
    .await;
    let (_, alice_password) = USERS.iter().find(|(u, _)| *u == "alice").unwrap();
    let headers = [
        ("authorization", basic("alice", alice_password)),
        ("content-type", "application/json".to_owned()),
    ];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let body = json!({"label": "docs", "spaces": ["DOCS"]}).to_string();
    let reply = send(Method::POST, &gw.url(&format!("{BASE}/set")), &headers, body).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let bearer = format!("Bearer {}", reply.json()["token"].as_str().unwrap());
    let pat = gw.upstream.pats().pop().unwrap().raw;
    let reply = get(&gw.url("/rest/api/content/100"), &[("authorization", &bearer)]).await;
    assert_eq!(outcome(&reply), forwarded());
    let lookup = gw
        .upstream
        .requests_to("/rest/api/content/100")
        .into_iter()
        .find(|r| r.target.contains("expand=space"))
        .unwrap();
    assert_eq!(lookup.header("authorization"), Some(format!("Bearer {pat}").as_str()));
    assert_eq!(lookup.header("x-forwarded-user"), None);
    // Hidden from alice (Confluence answers her PAT with 404): refused.
    let reply = get(&gw.url("/rest/api/content/700"), &[("authorization", &bearer)]).await;
    assert_eq!(outcome(&reply), refused(403, "space_unknown"));
}

#[tokio::test]
async fn spaces_are_set_listed_updated_and_checked_through_the_api() {
    let gw = Gateway::start().await;
    let admin = basic("admin", ADMIN_PASSWORD);
    let api = |path: &str, body: Value| {
        let (url, admin) = (gw.url(&format!("{BASE}{path}")), admin.clone());
        async move {
            let headers = [("authorization", admin.as_str()), ("content-type", "application/json")];
            send(Method::POST, &url, &headers, body.to_string()).await
        }
    };
    let reply = api(
        "/set",
        json!({"label": "x", "userName": "alice", "spaces": "DOCS, pm,docs"}),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let created = reply.json();
    assert_eq!(created["spaces"], json!(["DOCS", "pm"]));
    let id = created["id"].as_str().unwrap().to_owned();
    let auth = basic("alice", created["token"].as_str().unwrap());
    assert_eq!(
        outcome(&get(&gw.url("/rest/api/space/PM"), &[("authorization", &auth)]).await),
        forwarded()
    );
    // Invalid lists are refused with the field named, like every input.
    for spaces in [
        json!("DOCS PM"),
        json!("DO\"CS"),
        json!(["DOCS", 5]),
        json!(["A,B"]),
        json!(7),
    ] {
        let reply = api("/set", json!({"label": "y", "userName": "alice", "spaces": spaces})).await;
        assert_eq!(
            (reply.status.as_u16(), reply.json()["field"].clone()),
            (400, json!("spaces")),
            "{spaces}"
        );
        let reply = api("/update", json!({"id": id, "spaces": spaces})).await;
        assert_eq!(
            (reply.status.as_u16(), reply.json()["field"].clone()),
            (400, json!("spaces")),
            "{spaces}"
        );
    }
    // An update takes effect at once, and is audited with old and new.
    let reply = api("/update", json!({"id": id, "spaces": ["SECRET"]})).await;
    assert_eq!(reply.json()["spaces"], json!(["SECRET"]), "{:?}", reply.body);
    assert_eq!(
        outcome(&get(&gw.url("/rest/api/space/PM"), &[("authorization", &auth)]).await),
        refused(403, "space_not_allowed")
    );
    let listed = get(&gw.url(&format!("{BASE}/get")), &[("authorization", &admin)])
        .await
        .json();
    assert_eq!(listed["tokens"][0]["spaces"], json!(["SECRET"]));
    let audit = gw.audit().await;
    let detail = audit
        .iter()
        .find_map(|e| e.detail.as_deref().filter(|d| d.contains("spaces")))
        .unwrap();
    assert!(detail.contains(r#""spaces":[["DOCS","pm"],["SECRET"]]"#), "{detail}");
    // null lifts the confinement.
    let reply = api("/update", json!({"id": id, "spaces": null})).await;
    assert_eq!(reply.json()["spaces"], json!([]));
    assert_eq!(
        outcome(&get(&gw.url("/rest/api/group"), &[("authorization", &auth)]).await),
        forwarded()
    );

    // POST /check: rules and spaces both.
    let check = |url: &str, spaces: Value| json!({"limitTo": "", "method": "GET", "url": url, "spaces": spaces});
    let answer = api("/check", check("/rest/api/space/SECRET", json!("DOCS")))
        .await
        .json();
    assert_eq!(answer["allowed"], false, "{answer}");
    assert!(
        answer["explanation"].to_string().contains("space_not_allowed"),
        "{answer}"
    );
    let answer = api("/check", check("/rest/api/search?cql=type%3Dpage", json!("DOCS")))
        .await
        .json();
    assert_eq!(answer["allowed"], true, "{answer}");
    assert!(
        answer["explanation"]
            .to_string()
            .contains(r#"(type=page) AND space in (\"DOCS\")"#),
        "{answer}"
    );
    let answer = api("/check", check("/rest/api/content/123", json!("DOCS")))
        .await
        .json();
    assert!(answer["explanation"].to_string().contains("content 123"), "{answer}");
    let answer = api("/check", check("/rest/api/space/SECRET", Value::Null)).await.json();
    assert_eq!(answer["allowed"], true, "without spaces only the rules count: {answer}");
}

#[tokio::test]
async fn attachment_downloads_are_in_scope_for_reading_only() {
    let gw = Gateway::start().await;
    let auth = basic("alice", &gw.token_for("alice").await);
    for (method, target, expected) in [
        (Method::GET, "/download/attachments/100/a.pdf", forwarded()),
        (Method::HEAD, "/download/attachments/200/a.pdf", (200, String::new())),
        (
            Method::POST,
            "/download/attachments/100/a.pdf",
            refused(403, "out_of_scope"),
        ),
        (Method::GET, "/download/temp/a.pdf", refused(403, "out_of_scope")),
    ] {
        let reply = send(method.clone(), &gw.url(target), &[("authorization", &auth)], "").await;
        let reason = match method {
            Method::HEAD => String::new(),
            _ => outcome(&reply).1,
        };
        assert_eq!((reply.status.as_u16(), reason), expected, "{method} {target}");
    }
    assert_eq!(gw.upstream.lookups_of("100"), 0, "no lookups without spaces");
}

#[test]
fn the_cli_creates_updates_and_checks_spaces() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| cli(dir.path(), args);
    let out = run(&[
        "token", "create", "--label", "c", "--user", "alice", "--spaces", "DOCS,PM", "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["spaces"], json!(["DOCS", "PM"]));
    let id = created["id"].as_str().unwrap();
    let out = run(&["token", "update", id, "--spaces", "none", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["token", "list", "--json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["spaces"], json!([]));
    let out = run(&["token", "create", "--label", "c", "--unbound", "--spaces", "DO CS"]);
    assert_eq!(out.status.code(), Some(2), "invalid input, as for every field");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a space key"));

    let check = |url: &str| {
        run(&[
            "rules", "check", "--rules", "", "--method", "GET", "--url", url, "--spaces", "DOCS",
        ])
    };
    let out = check("/rest/api/search?cql=type%3Dpage");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.starts_with("ALLOW"), "{text}");
    assert!(text.contains(r#"(type=page) AND space in ("DOCS")"#), "{text}");
    let out = check("/rest/api/space/SECRET");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("DENY") && text.contains("space_not_allowed"), "{text}");
}

#[tokio::test]
async fn hostile_requests_cannot_escape_the_space() {
    let (gw, auth) = confined("DOCS", "", true).await;
    let json_type = ("content-type", "application/json");
    type Headers<'a> = Vec<(&'a str, &'a str)>;
    let cases: Vec<(Method, &str, Headers, &str, Outcome)> = vec![
        // Path tricks: resolved before the spaces see the path, or refused.
        (
            Method::GET,
            "/rest/api/space/DOCS/../SECRET",
            vec![],
            "",
            refused(403, "space_not_allowed"),
        ),
        (
            Method::GET,
            "/rest/api/space/DOCS/%2e%2e/SECRET",
            vec![],
            "",
            refused(400, "bad_path"),
        ),
        (
            Method::GET,
            "/rest/api/space/DOCS%2f..%2fSECRET",
            vec![],
            "",
            refused(400, "bad_path"),
        ),
        (
            Method::GET,
            "/rest/api/content/%32%30%30",
            vec![],
            "",
            refused(403, "space_not_allowed"),
        ),
        (
            Method::GET,
            "/rest/api/content/200;jsessionid=x",
            vec![],
            "",
            refused(400, "bad_path"),
        ),
        // Parameter names Confluence might read as the checked one.
        (
            Method::GET,
            "/rest/api/content?spaceKey=DOCS&SPACEKEY=SECRET",
            vec![],
            "",
            refused(403, "space_unknown"),
        ),
        (
            Method::GET,
            "/rest/api/content?spaceKey=DOCS&%73paceKey=SECRET",
            vec![],
            "",
            refused(403, "space_unknown"),
        ),
        (
            Method::GET,
            "/rest/api/search?cql=type%3Dpage&%63ql=space%3DSECRET",
            vec![],
            "",
            refused(403, "space_unknown"),
        ),
        // Bodies the gateway cannot read with certainty.
        (
            Method::POST,
            "/rest/api/content",
            vec![json_type],
            r#"{"space":{"key":"DOCS"},"space":{"key":"SECRET"}}"#,
            refused(400, "ambiguous_json"),
        ),
        (
            Method::POST,
            "/rest/api/content",
            vec![json_type, ("content-encoding", "gzip")],
            r#"{"space":{"key":"DOCS"}}"#,
            refused(403, "space_unknown"),
        ),
        (
            Method::PUT,
            "/rest/api/content/100",
            vec![("content-type", "text/plain")],
            r#"{"space":{"key":"SECRET"}}"#,
            refused(403, "space_unknown"),
        ),
        (
            Method::PUT,
            "/rest/api/content/100",
            vec![json_type],
            r#"{"space":{"key":"DOCS"},"ancestors":"200"}"#,
            refused(403, "space_unknown"),
        ),
        // An upload is not JSON, and names only its page.
        (
            Method::POST,
            "/rest/api/content/100/child/attachment",
            vec![
                ("content-type", "multipart/form-data; boundary=x"),
                ("x-atlassian-token", "no-check"),
            ],
            "--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\nhello\r\n--x--\r\n",
            forwarded(),
        ),
    ];
    for (method, target, extra, body, expected) in cases {
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend(extra);
        let reply = send(method.clone(), &gw.url(target), &headers, body.to_owned()).await;
        assert_eq!(outcome(&reply), expected, "{method} {target}: {:?}", reply.body);
    }
    // A body larger than the gateway reads is refused, not passed unread.
    let big = format!(r#"{{"space":{{"key":"DOCS"}},"body":"{}"}}"#, "x".repeat(2 << 20));
    let reply = send(
        Method::POST,
        &gw.url("/rest/api/content"),
        &[("authorization", &auth), json_type],
        big,
    )
    .await;
    assert_eq!(outcome(&reply), refused(413, "body_too_large"));
    // And the gateway keeps serving.
    let reply = call(&gw, Method::GET, "/rest/api/content/100", &auth, None).await;
    assert_eq!(outcome(&reply), forwarded());
}
