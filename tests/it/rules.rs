//! Restriction rules through the running gateway (SPEC §3): every example of
//! §3.6 allowed and refused, JSON bodies, fail-closed tokens, and the
//! `rules check` dry run.

use hyper::Method;
use tokengate::TokenRecord;
use tokengate::{Actor, NewToken, TokenError};

use crate::common::{Gateway, basic, send};

struct Case {
    method: Method,
    path: &'static str,
    body: &'static str,
    allowed: bool,
}

fn case(method: Method, path: &'static str, body: &'static str, allowed: bool) -> Case {
    Case {
        method,
        path,
        body,
        allowed,
    }
}

/// Creates a token with `rules` and checks each case end to end: allowed
/// requests reach Confluence with their body byte for byte, refused ones
/// are 403 `rule_mismatch` and reach nothing.
async fn check_cases(rules: &str, cases: &[Case]) {
    let gw = Gateway::start().await;
    let new = NewToken {
        label: "ci-bot".into(),
        user: Some("alice".into()),
        limit_to: Some(rules.into()),
        ..NewToken::default()
    };
    let token = gw.create_token(new).await.value;
    let auth = basic("alice", &token);
    for c in cases {
        let before = gw.upstream.count();
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
        let reply = send(c.method.clone(), &gw.url(c.path), &headers, c.body).await;
        let what = format!("{rules} | {} {} {}", c.method, c.path, c.body);
        if c.allowed {
            assert_eq!(reply.status, 200, "{what}: {:?}", reply.body);
            let seen = gw.upstream.last();
            assert_eq!(seen.body_head, c.body.as_bytes(), "{what}: body changed");
            assert_eq!(seen.header("x-forwarded-user"), Some("alice"));
        } else {
            assert_eq!(reply.status, 403, "{what}");
            assert_eq!(reply.reason(), "rule_mismatch", "{what}");
            assert_eq!(gw.upstream.count(), before, "{what}: reached Confluence");
        }
    }
}

#[tokio::test]
async fn example_all_space_endpoints() {
    check_cases(
        ".*/rest/api/space.*",
        &[
            case(Method::GET, "/rest/api/space", "", true),
            case(Method::DELETE, "/rest/api/space/DOCS", "", true),
            case(Method::GET, "/rest/api/content", "", false),
        ],
    )
    .await;
}

#[tokio::test]
async fn example_post_a_space_property() {
    check_cases(
        "[post].*/rest/api/space/EXTENDER/property.*",
        &[
            case(
                Method::POST,
                "/rest/api/space/EXTENDER/property",
                r#"{"key":"k"}"#,
                true,
            ),
            case(Method::GET, "/rest/api/space/EXTENDER/property", "", false),
            case(Method::POST, "/rest/api/space/OTHER/property", "{}", false),
        ],
    )
    .await;
}

#[tokio::test]
async fn example_query_param_prefix() {
    check_cases(
        "[get].*/rest/api/content.*[QueryParam::spaceKey==PM.*]",
        &[
            case(Method::GET, "/rest/api/content?spaceKey=PMO", "", true),
            case(Method::GET, "/rest/api/content/search?spaceKey=PM&limit=5", "", true),
            case(Method::GET, "/rest/api/content?spaceKey=DEV", "", false),
            case(Method::GET, "/rest/api/content", "", false),
            case(Method::GET, "/rest/api/content?spaceKey=PM1&spaceKey=DEV", "", false),
            case(Method::POST, "/rest/api/content?spaceKey=PMO", "{}", false),
        ],
    )
    .await;
}

#[tokio::test]
async fn example_two_query_params() {
    check_cases(
        "[get].*/rest/api/content[QueryParam::spaceKey==.*PM][QueryParam::expand==history]",
        &[
            case(Method::GET, "/rest/api/content?spaceKey=XPM&expand=history", "", true),
            case(Method::GET, "/rest/api/content?expand=history&spaceKey=%50M", "", true),
            case(Method::GET, "/rest/api/content?spaceKey=XPM&expand=body", "", false),
            case(Method::GET, "/rest/api/content?spaceKey=XPM", "", false),
            case(
                Method::GET,
                "/rest/api/content/1?spaceKey=XPM&expand=history",
                "",
                false,
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn example_create_pages_only() {
    check_cases(
        "[post].*/rest/api/content/?[JsonData::type==page]",
        &[
            case(
                Method::POST,
                "/rest/api/content",
                r#"{"type":"page","title":"x"}"#,
                true,
            ),
            case(
                Method::POST,
                "/rest/api/content/",
                r#" { "title" : "x" , "type":"page" } "#,
                true,
            ),
            case(Method::POST, "/rest/api/content", r#"{"type":"blogpost"}"#, false),
            case(Method::POST, "/rest/api/content", r#"{"title":"no type"}"#, false),
            case(Method::POST, "/rest/api/content", "not json", false),
            case(Method::PUT, "/rest/api/content", r#"{"type":"page"}"#, false),
        ],
    )
    .await;
}

#[tokio::test]
async fn example_create_test_pages_only() {
    check_cases(
        "[post].*/rest/api/content/?[JsonData::type==page][JsonData::title==TEST.*]",
        &[
            case(
                Method::POST,
                "/rest/api/content",
                r#"{"type":"page","title":"TEST-1"}"#,
                true,
            ),
            case(
                Method::POST,
                "/rest/api/content",
                r#"{"type":"page","title":"PROD"}"#,
                false,
            ),
            case(
                Method::POST,
                "/rest/api/content",
                r#"{"type":"blogpost","title":"TEST"}"#,
                false,
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn example_create_or_update_in_one_space() {
    check_cases(
        "[post|put].*/rest/api/content.*[JsonData::space.key==DOCS]",
        &[
            case(
                Method::POST,
                "/rest/api/content",
                r#"{"type":"page","space":{"key":"DOCS"}}"#,
                true,
            ),
            case(
                Method::PUT,
                "/rest/api/content/123",
                r#"{"space":{"key":"DOCS"},"version":{"number":2}}"#,
                true,
            ),
            case(
                Method::PUT,
                "/rest/api/content/123",
                r#"{"space":{"key":"OTHER"}}"#,
                false,
            ),
            case(
                Method::PUT,
                "/rest/api/content/123",
                r#"{"space":{"key":["DOCS"]}}"#,
                false,
            ),
            case(Method::DELETE, "/rest/api/content/123", "", false),
        ],
    )
    .await;
}

#[tokio::test]
async fn several_lines_allow_when_any_matches() {
    check_cases(
        "[get].*/rest/api/space.*\\n[post].*/rest/api/content[JsonData::ancestors.0.id==42]<br>[get]/rest/api/group/current",
        &[
            case(Method::GET, "/rest/api/space/X", "", true),
            case(Method::POST, "/rest/api/content", r#"{"ancestors":[{"id":42}]}"#, true),
            case(Method::POST, "/rest/api/content", r#"{"ancestors":[{"id":"42"}]}"#, true),
            case(Method::POST, "/rest/api/content", r#"{"ancestors":[{"id":43},{"id":42}]}"#, false),
            case(Method::GET, "/rest/api/group/current", "", true),
            case(Method::GET, "/rest/api/group/current/x", "", false),
        ],
    )
    .await;
}

/// A gateway with a JSON rule and a small body limit, and the token's auth header.
async fn json_gateway() -> (Gateway, String) {
    let gw = Gateway::start_with(|c| c.max_json_body = 64).await;
    let new = NewToken {
        label: "json".into(),
        user: Some("alice".into()),
        limit_to: Some("[post]/rest/api/content[JsonData::type==page]\n[get]/rest/api/.*".into()),
        ..NewToken::default()
    };
    let token = gw.create_token(new).await.value;
    (gw, basic("alice", &token))
}

#[tokio::test]
async fn json_bodies_over_the_limit_are_413() {
    let (gw, auth) = json_gateway().await;
    let big = format!(r#"{{"type":"page","title":"{}"}}"#, "x".repeat(100));
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let reply = send(Method::POST, &gw.url("/rest/api/content"), &headers, big.clone()).await;
    assert_eq!((reply.status.as_u16(), reply.reason()), (413, "body_too_large".into()));
    assert_eq!(gw.upstream.count(), 0);
    // A GET rule that matches without the body never buffers or limits it.
    let reply = send(Method::GET, &gw.url("/rest/api/content"), &headers, big.clone()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(gw.upstream.last().body_len, big.len() as u64);
}

#[tokio::test]
async fn duplicate_json_keys_are_ambiguous() {
    let (gw, auth) = json_gateway().await;
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json; charset=utf-8"),
    ];
    for body in [
        r#"{"type":"page","type":"blogpost"}"#,
        r#"{"type":"page","x":{"a":1,"a":2}}"#,
    ] {
        let reply = send(Method::POST, &gw.url("/rest/api/content"), &headers, body).await;
        assert_eq!(
            (reply.status.as_u16(), reply.reason()),
            (400, "ambiguous_json".into()),
            "{body}"
        );
    }
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn json_rules_need_a_json_content_type() {
    let (gw, auth) = json_gateway().await;
    let body = r#"{"type":"page"}"#;
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let headers = [("authorization", auth.as_str()), ("content-type", content_type)];
        let reply = send(Method::POST, &gw.url("/rest/api/content"), &headers, body).await;
        assert_eq!(reply.status, 403, "{content_type}");
    }
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/vnd.api+json"),
    ];
    assert_eq!(
        send(Method::POST, &gw.url("/rest/api/content"), &headers, body)
            .await
            .status,
        200
    );
    assert_eq!(gw.upstream.last().body_head, body.as_bytes());
}

#[tokio::test]
async fn the_refusal_names_token_method_and_path_but_not_the_query() {
    let (gw, auth) = json_gateway().await;
    let reply = send(
        Method::DELETE,
        &gw.url("/rest/api/content/9?os_password=hunter2"),
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(
        reply.json()["message"],
        "token 'json' may not DELETE /rest/api/content/9: no rule matches"
    );
    assert!(!String::from_utf8_lossy(&reply.body).contains("hunter2"));
}

#[tokio::test]
async fn invalid_rules_are_refused_at_creation_with_line_and_column() {
    let gw = Gateway::start().await;
    let new = NewToken {
        label: "bad".into(),
        limit_to: Some("[get]/rest/api/space.*\n[get]/rest/api/content[QueryParam::spaceKey=PM]".into()),
        ..NewToken::default()
    };
    match gw.app.tokens.create(new, &Actor::cli()).await {
        Err(TokenError::Invalid {
            field: "limitTo",
            line: Some(2),
            column: Some(_),
            message,
        }) => assert!(message.starts_with("line 2, column"), "{message}"),
        other => panic!("expected a limitTo error, got {:?}", other.err()),
    }
    let stored = gw.app.tokens.list(&Default::default()).await.unwrap();
    assert_eq!(stored.total, 0, "nothing stored");
}

#[tokio::test]
async fn a_stored_rule_that_no_longer_compiles_denies_everything() {
    let gw = Gateway::start().await;
    let value = "tgw_stored-rule-that-does-not-compile";
    let record = TokenRecord {
        id: "broken".into(),
        label: "broken".into(),
        user: Some("alice".into()),
        author: "admin".into(),
        limit_to: "[get]/rest/api/(unclosed".into(),
        ip: String::new(),
        created_at: 0,
        valid_until: None,
        token_hash: gw.app.tokens.hasher.hash(value).await.unwrap(),
        lookup: value[..12].into(),
        counter: 0,
        last_used_at: None,
        last_ip: None,
        sealed_pat: None,
        upstream_token_id: None,
        rate_limit: None,
        enforce: true,
        spaces: None,
        previous_hash: None,
        previous_lookup: None,
        previous_sealed_pat: None,
        grace_until: None,
    };
    gw.app.store.insert_token(&record, None).await.unwrap();
    let reply = send(
        Method::GET,
        &gw.url("/rest/api/x"),
        &[("authorization", &basic("alice", value))],
        "",
    )
    .await;
    assert_eq!((reply.status.as_u16(), reply.reason()), (403, "rule_mismatch".into()));
    assert!(reply.json()["message"].as_str().unwrap().contains("no longer compile"));
    assert_eq!(gw.upstream.count(), 0);
}

mod dry_run {
    use std::process::Output;

    fn rules_check(args: &[&str]) -> Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .args(["rules", "check"])
            .args(args)
            .output()
            .unwrap()
    }

    fn text(output: &Output) -> String {
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
    }

    #[test]
    fn allow_names_the_matching_line() {
        let rules = ".*/rest/api/space.*\n[get].*/rest/api/content.*[QueryParam::spaceKey==PM.*]";
        let out = rules_check(&[
            "--rules",
            rules,
            "--method",
            "get",
            "--url",
            "/rest/api/content?spaceKey=PMO",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert_eq!(
            text(&out).trim(),
            "ALLOW GET /rest/api/content: line 2: [get].*/rest/api/content.*[QueryParam::spaceKey==PM.*]"
        );
    }

    #[test]
    fn deny_says_why_each_line_fails() {
        let rules = ".*/rest/api/space.*<br>[get].*/rest/api/content.*[QueryParam::spaceKey==PM.*]";
        let out = rules_check(&[
            "--rules",
            rules,
            "--method",
            "GET",
            "--url",
            "/rest/api/content?spaceKey=DEV",
        ]);
        assert_eq!(out.status.code(), Some(1));
        let output = text(&out);
        assert!(output.starts_with("DENY GET /rest/api/content"), "{output}");
        assert!(output.contains("line 1:") && output.contains("line 2:"), "{output}");
        assert!(output.contains("DEV"), "the admin sees the value that failed: {output}");
    }

    #[test]
    fn json_bodies_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let rules_file = dir.path().join("rules.txt");
        std::fs::write(&rules_file, "[post].*/rest/api/content/?[JsonData::type==page]\n").unwrap();
        let body = dir.path().join("body.json");
        std::fs::write(&body, r#"{"type":"page"}"#).unwrap();
        let rules_arg = format!("@{}", rules_file.display());
        let body_arg = body.display().to_string();
        let args = [
            "--rules",
            &rules_arg,
            "--method",
            "POST",
            "--url",
            "/rest/api/content",
            "--body",
            &body_arg,
        ];
        assert_eq!(rules_check(&args).status.code(), Some(0));
        std::fs::write(&body, r#"{"type":"page","type":"blogpost"}"#).unwrap();
        let out = rules_check(&args);
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out).contains("ambiguous_json"));
        let out = rules_check(&["--rules", &rules_arg, "--method", "POST", "--url", "/rest/api/content"]);
        assert_eq!(out.status.code(), Some(1), "no body given: {}", text(&out));
    }

    #[test]
    fn invalid_rules_are_a_usage_error_with_position() {
        let out = rules_check(&[
            "--rules",
            "[get]/a\n[post]/b[JsonData::x==(]",
            "--method",
            "GET",
            "--url",
            "/a",
        ]);
        assert_eq!(out.status.code(), Some(2));
        assert!(text(&out).contains("line 2, column"), "{}", text(&out));
        let out = rules_check(&["--rules", "/a", "--method", "GET", "--url", "/a/%2e%2e/b"]);
        assert_eq!(out.status.code(), Some(2));
    }

    #[test]
    fn the_url_is_canonicalised_like_the_gateway_does() {
        let out = rules_check(&[
            "--rules",
            "[get]/rest/api/space",
            "--method",
            "GET",
            "--url",
            "/rest/x/../api/%73pace",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
}
