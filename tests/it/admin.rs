//! The management API (SPEC §5) through the running gateway: each endpoint's
//! shape, paging and filters, every validation error, admin authentication
//! by token and by password (against the fake Confluence), settings that
//! survive a restart, deletion that takes effect at once, and a token value
//! that is shown once and never logged.

use hyper::Method;
use serde_json::{Value, json};
use tokengate::DAY_MS;
use tokengate::NewToken;
use tokengate::TokenAuth;

use crate::common::fake_confluence::ADMIN_PASSWORD;
use crate::common::process::GatewayProcess;
use crate::common::{FakeConfluence, Gateway, Reply, basic, get, send};

const BASE: &str = "/rest/extender/1.0/tokenTools";
const USER_CURRENT: &str = "/rest/api/user/current";
const SPACE: &str = "/rest/api/space";

fn admin_password() -> String {
    basic("admin", ADMIN_PASSWORD)
}

/// A management call with `auth` as `Authorization` and a JSON body.
async fn call(gw: &Gateway, method: Method, path: &str, auth: &str, body: &str) -> Reply {
    let headers = [("authorization", auth), ("content-type", "application/json")];
    send(method, &gw.url(&format!("{BASE}{path}")), &headers, body.to_owned()).await
}

async fn create(gw: &Gateway, body: Value) -> Reply {
    call(gw, Method::POST, "/set", &admin_password(), &body.to_string()).await
}

/// Asserts an error in the shape of SPEC §5 (and §10), with its field.
fn assert_error(reply: &Reply, status: u16, reason: &str, field: Option<&str>) {
    assert_eq!(reply.status.as_u16(), status, "{:?}", reply.body);
    assert_eq!(reply.reason(), reason);
    let json = reply.json();
    assert_eq!(json["status"], "error");
    assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()), "{json}");
    assert_eq!(json["field"].as_str(), field, "{json}");
}

/// Requests that reached Confluence other than the password checks.
fn forwarded(gw: &Gateway) -> usize {
    gw.upstream
        .requests()
        .iter()
        .filter(|r| r.target != USER_CURRENT)
        .count()
}

fn password_checks(gw: &Gateway) -> usize {
    gw.upstream
        .requests()
        .iter()
        .filter(|r| r.target == USER_CURRENT)
        .count()
}

#[tokio::test]
async fn create_shows_the_value_once_and_the_token_works() {
    let gw = Gateway::start().await;
    let reply = create(
        &gw,
        json!({"label": "ci-bot", "userName": "alice", "daysUntilExpiry": "30",
            "limitTo": "[get].*/rest/api/space.*\\n[post].*/rest/api/content/?<br/>.*/rest/api/user.*",
            "ip": "127.0.0.1, 10.0.0.0/8", "someExtenderField": {"ignored": true}}),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let created = reply.json();
    assert_eq!(created["status"], "ok");
    assert_eq!(
        (&created["label"], &created["user"]),
        (&json!("ci-bot"), &json!("alice"))
    );
    let value = created["token"].as_str().unwrap().to_owned();
    assert!(value.starts_with("tgw_") && value.len() == 44, "{value}");
    let created_at = created["dateCreated"].as_i64().unwrap();
    assert_eq!(created["validUntil"].as_i64(), Some(created_at + 30 * DAY_MS));
    let rules = json!([
        "[get].*/rest/api/space.*",
        "[post].*/rest/api/content/?",
        ".*/rest/api/user.*"
    ]);
    assert_eq!(created["rules"], rules);
    assert_eq!(
        created["limitTo"],
        "[get].*/rest/api/space.*<br>[post].*/rest/api/content/?<br>.*/rest/api/user.*"
    );
    assert_eq!(created["ip"], "127.0.0.1/32,10.0.0.0/8");

    let used = get(&gw.url(SPACE), &[("authorization", &basic("alice", &value))]).await;
    assert_eq!(used.status, 200);
    assert_eq!(gw.upstream.last().header("x-forwarded-user"), Some("alice"));
    let refused = get(
        &gw.url("/rest/api/group"),
        &[("authorization", &basic("alice", &value))],
    )
    .await;
    assert_eq!(refused.reason(), "rule_mismatch");

    let listed = call(&gw, Method::GET, "/get", &admin_password(), "").await;
    assert_eq!(listed.status, 200);
    let token = &listed.json()["tokens"][0];
    assert_eq!(token["id"], created["id"]);
    assert_eq!(token["authorKey"], "admin", "the author is the admin who created it");
    assert_eq!((&token["rules"], &token["limitTo"]), (&rules, &created["limitTo"]));
    assert_eq!(token["counter"].as_i64(), Some(0));
    let listed = String::from_utf8_lossy(&listed.body);
    assert!(!listed.contains(&value[4..]), "get shows a token value");
    // Three management calls with one password: Confluence was asked once.
    assert_eq!(password_checks(&gw), 1);
}

#[tokio::test]
async fn get_pages_filters_and_describes_each_token() {
    let gw = Gateway::start().await;
    for (label, user) in [
        ("alice-ci", "alice"),
        ("alice-backup", "Alice"),
        ("bob-ci", "bob"),
        ("alice-sync", "ALICE"),
        ("shared", ""),
    ] {
        gw.create_token(NewToken {
            label: label.into(),
            user: Some(user.into()),
            days_until_expiry: (label == "bob-ci").then_some(1),
            ..NewToken::default()
        })
        .await;
        gw.clock.advance_ms(1);
    }
    gw.clock.advance_ms(2 * DAY_MS);
    let list = |query: &'static str| {
        let gw = &gw;
        async move {
            let reply = call(gw, Method::GET, &format!("/get{query}"), &admin_password(), "").await;
            assert_eq!(reply.status, 200, "{query}: {:?}", reply.body);
            reply.json()
        }
    };
    let labels = |page: &Value| -> Vec<String> {
        let tokens = page["tokens"].as_array().unwrap();
        tokens.iter().map(|t| t["label"].as_str().unwrap().to_owned()).collect()
    };

    let all = list("").await;
    assert_eq!(
        (&all["total"], &all["pages"], &all["maxResults"], &all["startAt"]),
        (&json!(5), &json!(1), &json!(50), &json!(0))
    );
    assert_eq!(all["status"], "ok");
    assert_eq!(
        labels(&all),
        ["shared", "alice-sync", "bob-ci", "alice-backup", "alice-ci"],
        "newest first"
    );

    let page = list("?startAt=2&maxResults=2").await;
    assert_eq!(
        (&page["total"], &page["pages"], &page["maxResults"], &page["startAt"]),
        (&json!(5), &json!(3), &json!(2), &json!(2))
    );
    assert_eq!(labels(&page), ["bob-ci", "alice-backup"]);
    assert_eq!(labels(&list("?startAt=4&maxResults=2").await), ["alice-ci"]);
    assert_eq!(labels(&list("?startAt=9").await), Vec::<String>::new());
    assert_eq!(list("?maxResults=5000").await["maxResults"], 1000);

    let alice = list("?userName=aLiCe").await;
    assert_eq!((alice["total"].as_u64(), labels(&alice).len()), (Some(3), 3));
    assert_eq!(labels(&list("?label=CI").await), ["bob-ci", "alice-ci"]);
    assert_eq!(labels(&list("?userName=alice&label=sync").await), ["alice-sync"]);

    let tokens = all["tokens"].as_array().unwrap();
    let bob = tokens.iter().find(|t| t["label"] == "bob-ci").unwrap();
    let mut keys: Vec<_> = bob.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    let mut expected = [
        "id",
        "label",
        "user",
        "authorKey",
        "limitTo",
        "rules",
        "ip",
        "validUntil",
        "dateCreated",
        "counter",
        "lastUsed",
        "lastIp",
        "expired",
        "forwardAs",
        "upstreamTokenId",
        "rateLimit",
        "enforce",
        "spaces",
        "expiringSoon",
        "graceUntil",
        "calls30Days",
    ];
    expected.sort();
    assert_eq!(keys, expected);
    assert_eq!(bob["expired"], true);
    assert_eq!(
        (&bob["forwardAs"], &bob["upstreamTokenId"]),
        (&json!("header"), &json!(null))
    );
    assert_eq!((&bob["rateLimit"], &bob["enforce"]), (&json!(null), &json!(true)));
    assert_eq!(
        bob["validUntil"].as_i64(),
        Some(bob["dateCreated"].as_i64().unwrap() + DAY_MS)
    );
    let shared = tokens.iter().find(|t| t["label"] == "shared").unwrap();
    assert_eq!(
        (&shared["user"], &shared["validUntil"], &shared["expired"]),
        (&Value::Null, &Value::Null, &json!(false))
    );
    assert_eq!(
        (&shared["lastUsed"], &shared["lastIp"], &shared["rules"]),
        (&Value::Null, &Value::Null, &json!([]))
    );

    for (query, field) in [
        ("?startAt=-1", "startAt"),
        ("?startAt=ten", "startAt"),
        ("?maxResults=0", "maxResults"),
        ("?maxResults=1e3", "maxResults"),
        ("?label=a&label=b", "label"),
    ] {
        let reply = call(&gw, Method::GET, &format!("/get{query}"), &admin_password(), "").await;
        assert_error(&reply, 400, "bad_request", Some(field));
    }
}

#[tokio::test]
async fn set_refuses_invalid_input_naming_the_field() {
    let gw = Gateway::start_with(|c| c.max_days_until_expiry = Some(30)).await;
    let custom = "tgw_my-own-value-that-is-long-enough";
    let reply = create(&gw, json!({"label": "custom", "token": custom})).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()["token"], custom);
    assert_eq!(
        reply.json()["validUntil"].as_i64(),
        Some(reply.json()["dateCreated"].as_i64().unwrap() + 30 * DAY_MS),
        "no expiry given: the configured maximum"
    );

    let auth = admin_password();
    let cases: Vec<(String, u16, &str, Option<&str>)> = vec![
        (r#"{"label": "x""#.into(), 400, "bad_request", None),
        (r#"["label"]"#.into(), 400, "bad_request", None),
        (r#"{"label": "a", "label": "b"}"#.into(), 400, "ambiguous_json", None),
        (
            r#"{"label": "a", "x": {"k": 1, "k": 2}}"#.into(),
            400,
            "ambiguous_json",
            None,
        ),
        ("{}".into(), 400, "bad_request", Some("label")),
        (r#"{"userName": "alice"}"#.into(), 400, "bad_request", Some("label")),
        (r#"{"label": "  "}"#.into(), 400, "bad_request", Some("label")),
        (r#"{"label": 7}"#.into(), 400, "bad_request", Some("label")),
        (
            r#"{"label": "x", "ip": "10.0.0.300"}"#.into(),
            400,
            "bad_request",
            Some("ip"),
        ),
        (
            r#"{"label": "x", "ip": "10.0.0.0/33"}"#.into(),
            400,
            "bad_request",
            Some("ip"),
        ),
        (
            r#"{"label": "x", "token": "tgw_short"}"#.into(),
            400,
            "bad_request",
            Some("token"),
        ),
        (
            r#"{"label": "x", "token": "abc_my-own-value-that-is-long-enough"}"#.into(),
            400,
            "bad_request",
            Some("token"),
        ),
        (
            json!({"label": "x", "token": custom}).to_string(),
            409,
            "conflict",
            Some("token"),
        ),
        (
            r#"{"label": "x", "daysUntilExpiry": 31}"#.into(),
            400,
            "bad_request",
            Some("daysUntilExpiry"),
        ),
        (
            r#"{"label": "x", "daysUntilExpiry": "31"}"#.into(),
            400,
            "bad_request",
            Some("daysUntilExpiry"),
        ),
        (
            r#"{"label": "x", "daysUntilExpiry": -1}"#.into(),
            400,
            "bad_request",
            Some("daysUntilExpiry"),
        ),
        (
            r#"{"label": "x", "daysUntilExpiry": "soon"}"#.into(),
            400,
            "bad_request",
            Some("daysUntilExpiry"),
        ),
        (
            r#"{"label": "x", "userName": "bob\r\nX-Forwarded-User: admin"}"#.into(),
            400,
            "bad_request",
            Some("userName"),
        ),
        (
            r#"{"usageDetails": "yes"}"#.into(),
            400,
            "bad_request",
            Some("usageDetails"),
        ),
        (
            format!(r#"{{"label": "{}"}}"#, "x".repeat(70_000)),
            413,
            "body_too_large",
            None,
        ),
    ];
    for (body, status, reason, field) in cases {
        let reply = call(&gw, Method::POST, "/set", &auth, &body).await;
        assert_error(&reply, status, reason, field);
    }

    // A rule error says where: line 3 (after a `<br>` and a literal `\n`), and the column.
    let limit_to = "[get].*/rest/api/space.*<br>.*/rest/api/user.*\\n[get].*/rest/(api";
    let reply = create(&gw, json!({"label": "x", "limitTo": limit_to})).await;
    assert_error(&reply, 400, "bad_request", Some("limitTo"));
    let expected = tokengate::RuleSet::parse(limit_to).unwrap_err();
    assert_eq!(expected.line, 3);
    assert_eq!(reply.json()["line"].as_u64(), Some(3));
    assert_eq!(reply.json()["column"].as_u64(), Some(expected.column as u64));
    // A method tag that names no HTTP method is an error at that name, in
    // a create as in an update (SPEC §9).
    let reply = create(&gw, json!({"label": "x", "limitTo": "[get]/a\n[gte].*/rest/api/.*"})).await;
    assert_error(&reply, 400, "bad_request", Some("limitTo"));
    assert_eq!((&reply.json()["line"], &reply.json()["column"]), (&json!(2), &json!(2)));
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("`gte` is not an HTTP method")
    );

    let listed = call(&gw, Method::GET, "/get", &auth, "").await;
    assert_eq!(listed.json()["total"], 1, "no refused request created a token");
    assert_eq!(forwarded(&gw), 0);
}

#[tokio::test]
async fn settings_switch_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}/tokengate.db", dir.path().display());
    let gw = Gateway::start_with(|c| c.database_url = database_url.clone()).await;
    let auth = admin_password();
    let settings = call(&gw, Method::GET, "/settings", &auth, "").await;
    assert_eq!(settings.status, 200);
    assert_eq!(
        settings.json(),
        json!({"status": "ok", "settings": {"usageDetails": true, "auditLog": true}})
    );

    let reply = call(&gw, Method::POST, "/set", &auth, r#"{"usageDetails": false}"#).await;
    assert_eq!(
        reply.json(),
        json!({"status": "ok", "settings": {"usageDetails": false, "auditLog": true}})
    );
    let reply = call(&gw, Method::POST, "/set", &auth, r#"{"auditLog": false}"#).await;
    assert_eq!(
        reply.json(),
        json!({"status": "ok", "settings": {"usageDetails": false, "auditLog": false}}),
        "a change of one switch keeps the other"
    );
    let live = gw.app.settings.get();
    assert!(
        !live.usage_details && !live.audit_log,
        "the running gateway uses the new settings"
    );
    let reply = call(&gw, Method::POST, "/set", &auth, r#"{"auditLog": true, "extra": 1}"#).await;
    assert_eq!(
        reply.json()["settings"],
        json!({"usageDetails": false, "auditLog": true})
    );
    gw.stop().await;

    let gw = Gateway::start_with(|c| c.database_url = database_url.clone()).await;
    let settings = call(&gw, Method::GET, "/settings", &admin_password(), "").await;
    assert_eq!(
        settings.json()["settings"],
        json!({"usageDetails": false, "auditLog": true})
    );
    assert!(!gw.app.settings.get().usage_details);
}

#[tokio::test]
async fn delete_by_id_and_by_user_refuses_the_tokens_at_once() {
    let gw = Gateway::start().await;
    let bound = |label: &str, user: &str| NewToken {
        label: label.into(),
        user: Some(user.into()),
        ..NewToken::default()
    };
    let alice = gw.create_token(bound("a", "alice")).await;
    let carol1 = gw.create_token(bound("c1", "carol")).await.value;
    let carol2 = gw.create_token(bound("c2", "Carol")).await.value;
    let dave = gw.create_token(bound("d", "dave")).await.value;
    let status = |user: &'static str, token: String| {
        let url = gw.url(SPACE);
        async move {
            get(&url, &[("authorization", &basic(user, &token))])
                .await
                .status
                .as_u16()
        }
    };
    // Every token is used once, so each sits in the verified cache.
    for (user, token) in [
        ("alice", &alice.value),
        ("carol", &carol1),
        ("carol", &carol2),
        ("dave", &dave),
    ] {
        assert_eq!(status(user, token.clone()).await, 200);
    }
    let auth = admin_password();

    let id = alice.record.id.clone();
    let reply = call(&gw, Method::DELETE, "/delete", &auth, &json!({"id": id}).to_string()).await;
    assert_eq!(reply.json(), json!({"status": "ok", "deleted": 1}));
    assert_eq!(status("alice", alice.value.clone()).await, 401);
    let reply = call(&gw, Method::DELETE, &format!("/delete?id={id}"), &auth, "").await;
    assert_error(&reply, 404, "not_found", None);

    let reply = call(&gw, Method::DELETE, "/delete", &auth, r#"{"userName": "CAROL"}"#).await;
    assert_eq!(reply.json(), json!({"status": "ok", "deleted": 2}));
    assert_eq!(status("carol", carol1).await, 401);
    assert_eq!(status("carol", carol2).await, 401);
    assert_eq!(status("dave", dave.clone()).await, 200, "other users keep their tokens");
    let reply = call(&gw, Method::DELETE, "/delete?userName=nobody", &auth, "").await;
    assert_eq!(reply.json(), json!({"status": "ok", "deleted": 0}));

    assert_eq!(gw.app.tokens.list(&Default::default()).await.unwrap().total, 1);
    for (path, body, field) in [
        ("/delete", "", "id"),
        ("/delete", r#"{"id": ""}"#, "id"),
        ("/delete", r#"{"id": "x", "userName": "dave"}"#, "id"),
        ("/delete?id=y", r#"{"id": "x"}"#, "id"),
        ("/delete", r#"{"id": 5}"#, "id"),
    ] {
        let reply = call(&gw, Method::DELETE, path, &auth, body).await;
        assert_error(&reply, 400, "bad_request", Some(field));
    }
    assert_eq!(status("dave", dave).await, 200);
}

#[tokio::test]
async fn only_admins_may_call_and_their_tokens_rules_apply() {
    let gw = Gateway::start_with(|c| c.token_auth = TokenAuth::Both).await;
    let get_tokens = |auth: String| {
        let gw = &gw;
        async move { call(gw, Method::GET, "/get", &auth, "").await }
    };

    let reply = send(Method::GET, &gw.url(&format!("{BASE}/get")), &[], "").await;
    assert_error(&reply, 401, "credentials_required", None);
    let schemes: Vec<_> = reply.headers.get_all("www-authenticate").iter().collect();
    assert_eq!(schemes, ["Basic realm=\"tokengate\"", "Bearer realm=\"tokengate\""]);

    // An admin token, with Basic or Bearer.
    let admin = gw.token_for("Admin").await;
    assert_eq!(get_tokens(basic("admin", &admin)).await.status, 200);
    assert_eq!(get_tokens(format!("Bearer {admin}")).await.status, 200);
    assert_error(&get_tokens(basic("bob", &admin)).await, 401, "user_mismatch", None);

    // A valid token of a non-admin; an unbound token typed next to "admin".
    let bob = gw.token_for("bob").await;
    assert_error(&get_tokens(basic("bob", &bob)).await, 403, "forbidden", None);
    let unbound = gw
        .create_token(NewToken {
            label: "shared".into(),
            ..NewToken::default()
        })
        .await
        .value;
    assert_error(&get_tokens(basic("admin", &unbound)).await, 403, "forbidden", None);

    // Not tokens: unknown, non-token Bearer, malformed Basic.
    let unknown = "tgw_unknown_unknown_unknown_unknown";
    assert_error(&get_tokens(basic("admin", unknown)).await, 401, "invalid_token", None);
    assert_error(
        &get_tokens("Bearer some-confluence-pat".into()).await,
        401,
        "invalid_token",
        None,
    );
    assert_error(&get_tokens("Basic !!!".into()).await, 400, "bad_credentials", None);

    // Passwords: Confluence decides, then admin_users does.
    assert_eq!(get_tokens(admin_password()).await.status, 200);
    let checks = password_checks(&gw);
    let reply = get_tokens(basic("admin", "wrong-password")).await;
    assert_error(&reply, 401, "invalid_token", None);
    assert_eq!(reply.json()["message"], "invalid credentials");
    assert_eq!(
        gw.upstream.last().header("authorization"),
        Some(basic("admin", "wrong-password").as_str())
    );
    assert_eq!(gw.upstream.last().header("x-forwarded-user"), None);
    assert_error(
        &get_tokens(basic("admin", "wrong-password")).await,
        401,
        "invalid_token",
        None,
    );
    assert_eq!(password_checks(&gw), checks + 1, "a rejection is cached too");
    assert_error(
        &get_tokens(basic("alice", ADMIN_PASSWORD)).await,
        401,
        "invalid_token",
        None,
    );
    assert_eq!(forwarded(&gw), 0, "no management request reached Confluence");
}

#[tokio::test]
async fn an_admin_tokens_rules_must_allow_the_call() {
    let gw = Gateway::start().await;
    let token = |limit_to: &str| {
        let new = NewToken {
            label: "admin-script".into(),
            user: Some("admin".into()),
            limit_to: Some(limit_to.into()),
            ..NewToken::default()
        };
        let gw = &gw;
        async move { basic("admin", &gw.create_token(new).await.value) }
    };

    let confluence_only = token(".*/rest/api/.*").await;
    let reply = call(&gw, Method::GET, "/get", &confluence_only, "").await;
    assert_error(&reply, 403, "rule_mismatch", None);

    let read_only = token("[get].*/rest/extender/1.0/tokenTools/(get|settings)").await;
    assert_eq!(call(&gw, Method::GET, "/get", &read_only, "").await.status, 200);
    assert_eq!(call(&gw, Method::GET, "/settings", &read_only, "").await.status, 200);
    let reply = call(&gw, Method::POST, "/set", &read_only, r#"{"label": "x"}"#).await;
    assert_error(&reply, 403, "rule_mismatch", None);

    // A JsonData rule reads the body; the handler still gets it whole.
    let ci_only = token("[post].*/tokenTools/set[JsonData::label==ci-.*]").await;
    let reply = call(
        &gw,
        Method::POST,
        "/set",
        &ci_only,
        r#"{"label": "ci-nightly", "userName": "ci"}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(
        (&reply.json()["label"], &reply.json()["user"]),
        (&json!("ci-nightly"), &json!("ci"))
    );
    let reply = call(&gw, Method::POST, "/set", &ci_only, r#"{"label": "other"}"#).await;
    assert_error(&reply, 403, "rule_mismatch", None);
    let reply = call(
        &gw,
        Method::POST,
        "/set",
        &ci_only,
        r#"{"label": "ci-a", "label": "x"}"#,
    )
    .await;
    assert_error(&reply, 400, "ambiguous_json", None);
}

#[tokio::test]
async fn password_admins_come_from_admin_users_and_confluence_must_answer() {
    let gw = Gateway::start_with(|c| {
        c.admin_users = vec!["root".into()];
        c.self_service = false;
    })
    .await;
    let reply = call(&gw, Method::GET, "/get", &admin_password(), "").await;
    assert_error(&reply, 403, "forbidden", None);
    // With self-service, a user not in admin_users manages their own tokens only.
    let gw = Gateway::start_with(|c| c.admin_users = vec!["root".into()]).await;
    gw.token_for("carol").await;
    let reply = call(&gw, Method::GET, "/get", &admin_password(), "").await;
    assert_eq!((reply.status.as_u16(), &reply.json()["total"]), (200, &json!(0)));
    let reply = call(&gw, Method::GET, "/settings", &admin_password(), "").await;
    assert_error(&reply, 403, "forbidden", None);

    let gw = Gateway::start_with(|c| c.upstream.authority = "127.0.0.1:1".parse().unwrap()).await;
    let reply = call(&gw, Method::GET, "/get", &admin_password(), "").await;
    assert_error(&reply, 502, "upstream_unavailable", None);
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods_are_answered_by_the_gateway() {
    let gw = Gateway::start().await;
    let auth = admin_password();
    for path in ["", "/", "/audit/x", "/nope", "/get/x"] {
        let reply = call(&gw, Method::GET, path, &auth, "").await;
        assert_error(&reply, 404, "not_found", None);
    }
    for (method, path, allow) in [
        (Method::POST, "/get", "GET"),
        (Method::GET, "/set", "POST"),
        (Method::PUT, "/settings", "GET"),
        (Method::GET, "/delete", "DELETE"),
    ] {
        let reply = call(&gw, method, path, &auth, "").await;
        assert_error(&reply, 405, "method_not_allowed", None);
        assert_eq!(reply.headers["allow"], allow);
    }
    assert_eq!(gw.upstream.count(), 0, "nothing under tokenTools is forwarded");
}

/// The real binary with `RUST_LOG=trace`: the value is in the create
/// response, and nowhere in `get` or the logs, while the audit events are.
#[tokio::test]
async fn the_token_value_is_shown_once_and_never_logged() {
    let upstream = FakeConfluence::start().await;
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}/tokengate.db", dir.path().display());
    let args = ["--upstream", &upstream.origin(), "--database", &database];
    let envs = [("RUST_LOG", "trace"), ("TOKENGATE_LOG_FORMAT", "json")];
    let mut gateway = GatewayProcess::spawn(dir.path(), &args, &envs).await;
    let port = gateway.addr.port();
    let url = |path: &str| format!("http://127.0.0.1:{port}{BASE}{path}");
    let auth = admin_password();
    let json_headers = [("authorization", auth.as_str()), ("content-type", "application/json")];

    let body = json!({"label": "logged?", "userName": "alice"}).to_string();
    let created = send(Method::POST, &url("/set"), &json_headers, body).await;
    assert_eq!(created.status, 200, "{:?}", created.body);
    let value = created.json()["token"].as_str().unwrap().to_owned();
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let space = format!("http://127.0.0.1:{port}{SPACE}");
    assert_eq!(
        get(&space, &[("authorization", &basic("alice", &value))]).await.status,
        200
    );
    let listed = get(&url("/get"), &json_headers).await;
    assert!(!String::from_utf8_lossy(&listed.body).contains(&value[4..]));
    let deleted = send(
        Method::DELETE,
        &url("/delete"),
        &json_headers,
        json!({"id": id}).to_string(),
    )
    .await;
    assert_eq!(deleted.json()["deleted"], 1);
    assert_eq!(
        get(&space, &[("authorization", &basic("alice", &value))]).await.status,
        401
    );

    assert!(gateway.terminate().await.success());
    let logs = gateway.logs();
    assert!(logs.contains("token accepted"), "debug events are captured");
    for secret in [&value[4..], &basic("alice", &value)[6..], ADMIN_PASSWORD, &auth[6..]] {
        assert!(!logs.contains(secret), "a secret is in the logs");
    }
    let audit: Vec<Value> = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["target"] == "tokengate::audit" && event["action"].is_string())
        .collect();
    let actions: Vec<_> = audit
        .iter()
        .map(|e| (e["action"].as_str(), e["token.id"].as_str()))
        .collect();
    assert_eq!(
        actions,
        [(Some("create"), Some(id.as_str())), (Some("delete"), Some(id.as_str()))]
    );
    assert!(
        audit
            .iter()
            .all(|e| e["actor"] == "admin" && e["detail"].as_str().is_some_and(|d| d.starts_with("via password")))
    );
}
