//! SPEC §17 as revised: access levels (`KEY:read`), parameters read exactly
//! as Confluence reads them, every id a request names placed, the endpoint
//! families of the table (each allowed, aimed at another space, and without
//! its id), changes looked up afresh, and the dry run saying what the
//! gateway does, scope included.

use hyper::Method;
use serde_json::{Value, json};

use crate::common::fake_confluence::ADMIN_PASSWORD;
use crate::common::process::cli;
use crate::common::{basic, send};
use crate::spaces::{Outcome, call, confined, forwarded, outcome, reached, refused};

#[tokio::test]
async fn a_read_only_space_is_read_and_never_changed() {
    let (gw, auth) = confined("DOCS,KB:read", "", true).await;
    let cases: Vec<(Method, &str, Option<Value>, Outcome)> = vec![
        (
            Method::GET,
            "/rest/api/content/900?expand=body.storage",
            None,
            forwarded(),
        ),
        (Method::GET, "/rest/api/space/KB/content", None, forwarded()),
        (
            Method::GET,
            "/rest/api/content?spaceKey=KB&type=page",
            None,
            forwarded(),
        ),
        (Method::GET, "/download/attachments/900/a.png", None, forwarded()),
        (
            Method::PUT,
            "/rest/api/content/900",
            Some(json!({"id": "900", "version": {"number": 2}})),
            refused(403, "space_read_only"),
        ),
        (
            Method::DELETE,
            "/rest/api/content/900",
            None,
            refused(403, "space_read_only"),
        ),
        (
            Method::POST,
            "/rest/api/content/900/label",
            Some(json!([{"name": "x"}])),
            refused(403, "space_read_only"),
        ),
        (
            Method::POST,
            "/rest/api/content",
            Some(json!({"type": "page", "space": {"key": "KB"}})),
            refused(403, "space_read_only"),
        ),
        (
            Method::POST,
            "/rest/api/content",
            Some(json!({"type": "comment", "container": {"id": "900"}})),
            refused(403, "space_read_only"),
        ),
        (
            Method::PUT,
            "/rest/api/content/100",
            Some(json!({"id": "100", "ancestors": [{"id": "900"}]})),
            refused(403, "space_read_only"),
        ),
        (
            Method::DELETE,
            "/rest/api/space/KB/property/x",
            None,
            refused(403, "space_read_only"),
        ),
        (
            Method::POST,
            "/rest/api/user/watch/space/KB",
            None,
            refused(403, "space_read_only"),
        ),
        (
            Method::DELETE,
            "/rest/api/content/100/child/attachment/att901",
            None,
            refused(403, "space_read_only"),
        ),
        // The writable space stays writable.
        (
            Method::PUT,
            "/rest/api/content/100",
            Some(json!({"id": "100", "space": {"key": "DOCS"}})),
            forwarded(),
        ),
        (
            Method::POST,
            "/rest/api/content",
            Some(json!({"type": "page", "space": {"key": "docs"}})),
            forwarded(),
        ),
        // With two spaces a listing must say which.
        (
            Method::GET,
            "/rest/api/content?type=page",
            None,
            refused(403, "space_unknown"),
        ),
    ];
    for (method, target, body, expected) in cases {
        let reply = call(&gw, method.clone(), target, &auth, body).await;
        assert_eq!(outcome(&reply), expected, "{method} {target}: {:?}", reply.body);
        if expected.1 == "space_read_only" {
            let message = reply.json()["message"].as_str().unwrap().to_owned();
            assert!(message.contains("may only read space KB"), "{message}");
        }
    }
    let reply = call(&gw, Method::GET, "/rest/api/content?type=page", &auth, None).await;
    assert!(
        String::from_utf8_lossy(&reply.body).contains("spaceKey"),
        "the refusal asks for a spaceKey"
    );
    call(&gw, Method::GET, "/rest/api/search?cql=type%3Dpage", &auth, None).await;
    assert_eq!(
        gw.upstream.last().target,
        "/rest/api/search?cql=%28type%3Dpage%29+AND+space+in+%28%22DOCS%22%2C%22KB%22%29",
        "searches include read-only spaces"
    );
    call(&gw, Method::GET, "/rest/api/space", &auth, None).await;
    assert_eq!(gw.upstream.last().target, "/rest/api/space?spaceKey=DOCS&spaceKey=KB");
}

#[tokio::test]
async fn access_levels_through_the_api_the_cli_and_the_listing() {
    let gw = crate::common::Gateway::start().await;
    let admin = basic("admin", ADMIN_PASSWORD);
    let api = |path: &str, body: Value| {
        let (url, admin) = (gw.url(&format!("/rest/extender/1.0/tokenTools{path}")), admin.clone());
        async move {
            send(
                Method::POST,
                &url,
                &[("authorization", &admin), ("content-type", "application/json")],
                body.to_string(),
            )
            .await
        }
    };
    let reply = api(
        "/set",
        json!({"label": "agent", "userName": "alice", "spaces": ["DOCS", "KB:read"]}),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()["spaces"], json!(["DOCS", "KB:read"]));
    let id = reply.json()["id"].as_str().unwrap().to_owned();
    let reply = api("/update", json!({"id": id, "spaces": "DOCS:read, kb"})).await;
    assert_eq!(reply.json()["spaces"], json!(["DOCS:read", "kb"]), "{:?}", reply.body);
    for bad in [
        json!("DOCS,DOCS:read"),
        json!("KB:write"),
        json!(["KB:"]),
        json!([":read"]),
    ] {
        let reply = api("/update", json!({"id": id, "spaces": bad})).await;
        assert_eq!(
            (reply.status.as_u16(), reply.json()["field"].clone()),
            (400, json!("spaces")),
            "{bad}"
        );
    }
    let check =
        |url: &str, method: &str| json!({"limitTo": "", "method": method, "url": url, "spaces": "DOCS,KB:read"});
    let answer = api("/check", check("/rest/api/space/KB", "DELETE")).await.json();
    assert_eq!(answer["allowed"], false, "{answer}");
    assert!(
        answer["explanation"].to_string().contains("space_read_only"),
        "{answer}"
    );
    let answer = api("/check", check("/rest/api/space/KB", "GET")).await.json();
    assert_eq!(answer["allowed"], true, "{answer}");

    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| cli(dir.path(), args);
    let out = run(&[
        "token",
        "create",
        "--label",
        "c",
        "--user",
        "alice",
        "--spaces",
        "DOCS,KB:read",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["spaces"], json!(["DOCS", "KB:read"]));
    let id = created["id"].as_str().unwrap();
    let out = run(&["token", "update", id, "--spaces", "KB:read", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["token", "list", "--json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["spaces"], json!(["KB:read"]));
    let out = run(&[
        "token", "create", "--label", "d", "--user", "alice", "--spaces", "KB:write",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown access level"));
    let out = run(&[
        "rules",
        "check",
        "--rules",
        "",
        "--method",
        "PUT",
        "--url",
        "/rest/api/space/KB",
        "--spaces",
        "DOCS,KB:read",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("space_read_only"), "{text}");
}

#[tokio::test]
async fn the_one_character_bypasses_and_the_unplaced_ids_are_closed() {
    let (gw, auth) = confined("DOCS", "", true).await;
    let cases: Vec<(Method, &str, Option<Value>, Outcome)> = vec![
        (
            Method::GET,
            "/rest/api/content?spacekey=DOCS&expand=body.storage",
            None,
            refused(403, "space_unknown"),
        ),
        (
            Method::GET,
            "/rest/api/space?SpaceKey=DOCS",
            None,
            refused(403, "space_unknown"),
        ),
        (
            Method::GET,
            "/rest/api/content?%73paceKey=DOCS",
            None,
            refused(403, "space_unknown"),
        ),
        (
            Method::GET,
            "/rest/api/content?spaceKey=DOCS&spaceKey=SECRET",
            None,
            refused(403, "space_unknown"),
        ),
        (
            Method::GET,
            "/rest/api/content/100?expand=space&EXPAND=body.view",
            None,
            refused(403, "space_unknown"),
        ),
        (
            Method::POST,
            "/rest/api/content?status=draft",
            Some(json!({"id": "200", "type": "page"})),
            refused(403, "space_not_allowed"),
        ),
        (
            Method::PUT,
            "/rest/api/content/100",
            Some(json!({"id": "200", "type": "page"})),
            refused(400, "bad_request"),
        ),
        (
            Method::PUT,
            "/rest/api/space/DOCS",
            Some(json!({"key": "DOCS", "homepage": {"id": "200"}})),
            refused(403, "space_not_allowed"),
        ),
        (
            Method::GET,
            "/rest/api/user?username=bob&expand=personalSpace",
            None,
            refused(403, "space_unknown"),
        ),
        (
            Method::GET,
            "/rest/api/user/current?expand=personalSpace.homepage",
            None,
            refused(403, "space_unknown"),
        ),
    ];
    for (method, target, body, expected) in cases {
        let before = gw.upstream.count();
        let reply = call(&gw, method.clone(), target, &auth, body).await;
        assert_eq!(outcome(&reply), expected, "{method} {target}: {:?}", reply.body);
        let passed: Vec<_> = gw.upstream.requests()[before..]
            .iter()
            .filter(|r| !r.target.contains("expand=space&status=any"))
            .map(|r| r.target.clone())
            .collect();
        assert!(passed.is_empty(), "{method} {target} reached Confluence: {passed:?}");
    }
    let reply = call(&gw, Method::GET, "/rest/api/content?spacekey=DOCS", &auth, None).await;
    let message = reply.json()["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("\"spacekey\"") && message.contains("\"spaceKey\""),
        "names the parameter: {message}"
    );
    // Written exactly, the same requests are forwarded as sent.
    for target in [
        "/rest/api/content?spaceKey=DOCS&expand=body.storage",
        "/rest/api/space?spaceKey=DOCS",
    ] {
        let reply = call(&gw, Method::GET, target, &auth, None).await;
        assert_eq!(outcome(&reply), forwarded(), "{target}");
        assert!(reached(&gw, "GET", target), "{target}");
    }
}

/// One endpoint family of the table: a request inside DOCS, the same aimed
/// at SECRET, and one whose id is missing or unreadable.
struct Family {
    name: &'static str,
    method: Method,
    inside: &'static str,
    outside: &'static str,
    missing: &'static str,
    body: Option<fn(&str) -> Value>,
}

#[tokio::test]
async fn every_endpoint_family_allowed_aimed_elsewhere_and_without_its_id() {
    let (gw, auth) = confined("DOCS", "", true).await;
    let families = [
        Family {
            name: "inline comments, read",
            method: Method::GET,
            inside: "/rest/inlinecomments/1.0/comments?containerId=100",
            outside: "/rest/inlinecomments/1.0/comments?containerId=200",
            missing: "/rest/inlinecomments/1.0/comments",
            body: None,
        },
        Family {
            name: "inline comments, added",
            method: Method::POST,
            inside: "/rest/inlinecomments/1.0/comments#100",
            outside: "/rest/inlinecomments/1.0/comments#200",
            missing: "/rest/inlinecomments/1.0/comments#",
            body: Some(|id| match id {
                "" => json!({"body": "<p>x</p>"}),
                id => json!({"containerId": id, "body": "<p>x</p>", "originalSelection": "x"}),
            }),
        },
        Family {
            name: "likes",
            method: Method::POST,
            inside: "/rest/likes/1.0/content/100/likes",
            outside: "/rest/likes/1.0/content/200/likes",
            missing: "/rest/likes/1.0/content/x/likes",
            body: None,
        },
        Family {
            name: "attachment versions",
            method: Method::GET,
            inside: "/rest/experimental/content/att500/version",
            outside: "/rest/experimental/content/att600/version",
            missing: "/rest/experimental/content/att/version",
            body: None,
        },
        Family {
            name: "templates of the space",
            method: Method::GET,
            inside: "/rest/api/template/page?spaceKey=DOCS",
            outside: "/rest/experimental/template/blueprint?spaceKey=SECRET",
            missing: "/rest/api/template/page",
            body: None,
        },
        Family {
            name: "watching content",
            method: Method::POST,
            inside: "/rest/api/user/watch/content/100",
            outside: "/rest/api/user/watch/content/200",
            missing: "/rest/api/user/watch/content/",
            body: None,
        },
        Family {
            name: "unwatching content",
            method: Method::DELETE,
            inside: "/rest/api/user/watch/content/101",
            outside: "/rest/api/user/watch/content/200",
            missing: "/rest/api/user/watch/content/abc",
            body: None,
        },
        Family {
            name: "watching a space",
            method: Method::GET,
            inside: "/rest/api/user/watch/space/DOCS",
            outside: "/rest/api/user/watch/space/SECRET",
            missing: "/rest/api/user/watch/space",
            body: None,
        },
        Family {
            name: "a comment",
            method: Method::POST,
            inside: "/rest/api/content#100",
            outside: "/rest/api/content#200",
            missing: "/rest/api/content#",
            body: Some(|id| match id {
                "" => json!({"type": "comment", "body": {"storage": {"value": "x", "representation": "storage"}}}),
                id => json!({"type": "comment", "container": {"id": id, "type": "page"}}),
            }),
        },
        Family {
            name: "a page under a parent",
            method: Method::POST,
            inside: "/rest/api/content#101",
            outside: "/rest/api/content#200",
            missing: "/rest/api/content#x1",
            body: Some(|id| json!({"type": "page", "title": "t", "ancestors": [{"id": id}]})),
        },
        Family {
            name: "attachment data",
            method: Method::GET,
            inside: "/rest/api/content/100/child/attachment/att500/data",
            outside: "/rest/api/content/100/child/attachment/att600/data",
            missing: "/rest/api/content/100/child/attachment/attx/data",
            body: None,
        },
    ];
    for family in &families {
        for (which, target, expected) in [
            ("inside", family.inside, vec![forwarded()]),
            ("outside", family.outside, vec![refused(403, "space_not_allowed")]),
            ("missing", family.missing, vec![refused(403, "space_unknown")]),
        ] {
            let (path, id) = target.split_once('#').unwrap_or((target, ""));
            let body = family.body.map(|body| body(id));
            let reply = call(&gw, family.method.clone(), path, &auth, body).await;
            assert!(
                expected.contains(&outcome(&reply)),
                "{} {which}: {} {path}: {:?}",
                family.name,
                family.method,
                reply.body
            );
        }
    }
    // What touches no space: users, groups, their members, storage conversion.
    for (method, target, body) in [
        (Method::GET, "/rest/api/user?username=bob", None),
        (Method::GET, "/rest/api/group?limit=10", None),
        (Method::GET, "/rest/api/group/confluence-users/member?limit=200", None),
        (
            Method::POST,
            "/rest/api/contentbody/convert/storage",
            Some(json!({"value": "h1. x", "representation": "wiki"})),
        ),
    ] {
        let reply = call(&gw, method.clone(), target, &auth, body).await;
        assert_eq!(outcome(&reply), forwarded(), "{method} {target}");
    }
    let reply = call(
        &gw,
        Method::POST,
        "/rest/api/contentbody/convert/view",
        &auth,
        Some(json!({"value": "x"})),
    )
    .await;
    assert_eq!(outcome(&reply), refused(403, "space_unknown"), "a rendered conversion");
}

#[tokio::test]
async fn a_page_moved_elsewhere_cannot_be_changed_through_a_stale_answer() {
    let (gw, auth) = confined("DOCS", "", true).await;
    let page = "/rest/api/content/101";
    assert_eq!(outcome(&call(&gw, Method::GET, page, &auth, None).await), forwarded());
    // Someone moves the page to SECRET in Confluence itself.
    gw.upstream.move_content("101", "SECRET");
    let reply = call(&gw, Method::PUT, page, &auth, Some(json!({"id": "101", "title": "x"}))).await;
    assert_eq!(
        outcome(&reply),
        refused(403, "space_not_allowed"),
        "a change asks afresh"
    );
    assert_eq!(
        outcome(&call(&gw, Method::GET, page, &auth, None).await),
        refused(403, "space_not_allowed"),
        "and what it learnt is what reads see"
    );

    // A change through the gateway by anyone (here alice's password) drops
    // the id it names; a move of the tree above a page (the move names
    // only the parent) drops every cached answer.
    let password = basic("alice", "alice-password");
    let moves: [(Method, &str, Option<Value>); 2] = [
        (
            Method::PUT,
            page,
            Some(json!({"id": "101", "space": {"key": "SECRET"}})),
        ),
        (Method::POST, "/pages/movepage.action?pageId=100&spaceKey=SECRET", None),
    ];
    for (method, target, body) in moves {
        gw.upstream.move_content("101", "DOCS");
        gw.clock.advance_ms(61_000);
        assert_eq!(
            outcome(&call(&gw, Method::GET, page, &auth, None).await),
            forwarded(),
            "cached as DOCS"
        );
        gw.upstream.move_content("101", "SECRET");
        let reply = call(&gw, method.clone(), target, &password, body).await;
        assert_eq!(outcome(&reply), forwarded(), "a password passes through");
        assert_eq!(
            outcome(&call(&gw, Method::GET, page, &auth, None).await),
            refused(403, "space_not_allowed"),
            "{method} {target} dropped the cached answer"
        );
    }
    // Ids in other spellings are one id: att0500 is attachment 500.
    let lookups = gw.upstream.lookups_of("500");
    for spelling in ["att500", "att0500", "0500", "500"] {
        let target = format!("/rest/api/content/100/child/attachment/{spelling}/data");
        assert_eq!(
            outcome(&call(&gw, Method::GET, &target, &auth, None).await),
            forwarded(),
            "{spelling}"
        );
    }
    assert_eq!(
        gw.upstream.lookups_of("500"),
        lookups + 1,
        "one cache entry for every spelling"
    );
}

#[tokio::test]
async fn a_request_that_asks_for_another_method_is_refused() {
    let (gw, auth) = confined("DOCS,KB:read", "", true).await;
    for header in ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"] {
        let reply = send(
            Method::POST,
            &gw.url("/rest/api/space/DOCS/property"),
            &[
                ("authorization", auth.as_str()),
                (header, "PUT"),
                ("content-type", "application/json"),
            ],
            r#"{"key":"k","value":1}"#,
        )
        .await;
        assert_eq!(outcome(&reply), refused(403, "space_unknown"), "{header}");
    }
    let reply = call(&gw, Method::GET, "/rest/api/content/900?_method=DELETE", &auth, None).await;
    assert_eq!(outcome(&reply), refused(403, "space_unknown"));
    // A JSON body sent as an upload where no upload goes cannot be read.
    let reply = send(
        Method::PUT,
        &gw.url("/rest/api/content/100"),
        &[
            ("authorization", auth.as_str()),
            ("content-type", "multipart/form-data; boundary=x"),
        ],
        r#"{"id":"100","space":{"key":"SECRET"}}"#,
    )
    .await;
    assert_eq!(outcome(&reply), refused(403, "space_unknown"));
}

#[tokio::test]
async fn the_dry_run_applies_the_scope_as_the_gateway_does() {
    let (gw, auth) = confined("DOCS", "", true).await;
    let reply = call(
        &gw,
        Method::POST,
        "/pages/movepage.action?pageId=100&targetId=200",
        &auth,
        None,
    )
    .await;
    assert_eq!(outcome(&reply), refused(403, "out_of_scope"));
    let admin = basic("admin", ADMIN_PASSWORD);
    for spaces in [json!("DOCS"), Value::Null] {
        let body =
            json!({"limitTo": "", "method": "POST", "url": "/pages/movepage.action?pageId=100", "spaces": spaces});
        let reply = send(
            Method::POST,
            &gw.url("/rest/extender/1.0/tokenTools/check"),
            &[("authorization", &admin), ("content-type", "application/json")],
            body.to_string(),
        )
        .await;
        let answer = reply.json();
        assert_eq!(answer["allowed"], false, "{answer}");
        assert!(
            answer["explanation"][0].as_str().unwrap().contains("out_of_scope"),
            "{answer}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let out = cli(
        dir.path(),
        &[
            "rules",
            "check",
            "--rules",
            "",
            "--method",
            "POST",
            "--url",
            "/pages/movepage.action",
            "--spaces",
            "DOCS",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("scope or path parameters") && text.contains("out_of_scope"),
        "{text}"
    );
    let out = cli(
        dir.path(),
        &[
            "rules",
            "check",
            "--rules",
            "",
            "--method",
            "GET",
            "--url",
            "/rest/api/space/DOCS/content;x=1",
            "--spaces",
            "DOCS",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("bad_path"), "{text}");
    let reply = call(&gw, Method::GET, "/rest/api/space/DOCS/content;x=1", &auth, None).await;
    assert_eq!(outcome(&reply), refused(400, "bad_path"), "as the gateway does");
}

#[tokio::test]
async fn rules_and_spaces_read_one_body_the_same_way() {
    // A JSON rule and the spaces both read the body: once, and alike.
    let (gw, auth) = confined("DOCS", "[put].*/rest/api/content/[0-9]+[JsonData::type==page]", true).await;
    let body = r#"{"id":"100","type":"page","space":{"key":"DOCS"}}"#;
    for (encoding, expected) in [
        (None, forwarded()),
        (Some("identity"), forwarded()),
        (Some("gzip"), refused(403, "rule_mismatch")),
    ] {
        let mut headers = vec![("authorization", auth.as_str()), ("content-type", "application/json")];
        headers.extend(encoding.map(|e| ("content-encoding", e)));
        let reply = send(Method::PUT, &gw.url("/rest/api/content/100"), &headers, body).await;
        assert_eq!(outcome(&reply), expected, "{encoding:?}: {:?}", reply.body);
    }
    assert_eq!(gw.upstream.last().body_head, body.as_bytes(), "forwarded byte for byte");
    // Two Content-Types could be read two ways: refused.
    let (gw, auth) = confined("DOCS", "", true).await;
    let reply = send(
        Method::PUT,
        &gw.url("/rest/api/content/100"),
        &[
            ("authorization", auth.as_str()),
            ("content-type", "multipart/form-data; boundary=x"),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await;
    assert_eq!(outcome(&reply), refused(403, "space_unknown"), "{:?}", reply.body);
}

#[tokio::test]
async fn a_report_only_token_reports_a_change_in_a_read_only_space() {
    let (gw, auth) = confined("DOCS,KB:read", "", false).await;
    let reply = call(&gw, Method::DELETE, "/rest/api/content/900", &auth, None).await;
    assert_eq!(outcome(&reply), forwarded(), "reported, not refused");
    assert!(reached(&gw, "DELETE", "/rest/api/content/900"));
    let audit = gw.audit().await;
    let entry = audit.iter().find(|e| e.method.as_deref() == Some("DELETE")).unwrap();
    assert_eq!(
        (entry.decision.as_str(), entry.reason.as_deref()),
        ("report", Some("space_read_only"))
    );
    assert!(
        entry.detail.as_deref().unwrap().contains("may only read space KB"),
        "{entry:?}"
    );
}
