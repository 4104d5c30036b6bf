//! SPEC §16 through the running gateway: rate limits per token (buckets on
//! the gateway's manual clock, Confluence's rate-limit headers), report-only
//! tokens, and restrictions changed by `POST /update` (at once, validated
//! like a create, audited, racing requests in flight).

use std::sync::Arc;

use hyper::Method;
use serde_json::{Value, json};
use tokengate::{Actor, AuditKind, NewToken, Restrictions};

use crate::common::fake_confluence::ADMIN_PASSWORD;
use crate::common::{Gateway, Reply, basic, get, send};

const BASE: &str = "/rest/extender/1.0/tokenTools";
const SPACE: &str = "/rest/api/space";
const CONTENT: &str = "/rest/api/content";
const RATE_HEADERS: [&str; 4] = [
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-interval-seconds",
    "x-ratelimit-fillrate",
];

fn admin() -> String {
    basic("admin", ADMIN_PASSWORD)
}

async fn call(gw: &Gateway, method: Method, path: &str, auth: &str, body: Value) -> Reply {
    let headers = [("authorization", auth), ("content-type", "application/json")];
    send(method, &gw.url(&format!("{BASE}{path}")), &headers, body.to_string()).await
}

/// Creates a token through the API as the admin; returns (id, Basic header).
async fn create(gw: &Gateway, body: Value) -> (String, String) {
    let reply = call(gw, Method::POST, "/set", &admin(), body).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let created = reply.json();
    let user = created["user"].as_str().unwrap_or("alice").to_owned();
    (
        created["id"].as_str().unwrap().to_owned(),
        basic(&user, created["token"].as_str().unwrap()),
    )
}

async fn update(gw: &Gateway, body: Value) -> Reply {
    call(gw, Method::POST, "/update", &admin(), body).await
}

fn rate_headers(reply: &Reply) -> Vec<Option<String>> {
    RATE_HEADERS
        .iter()
        .map(|name| reply.headers.get(*name).map(|v| v.to_str().unwrap().to_owned()))
        .collect()
}

fn some(values: [&str; 4]) -> Vec<Option<String>> {
    values.iter().map(|v| Some((*v).to_owned())).collect()
}

async fn metrics(gw: &Gateway) -> String {
    let reply = get(&gw.url("/tokengate/metrics"), &[]).await;
    String::from_utf8(reply.body.to_vec()).unwrap()
}

#[tokio::test]
async fn a_rate_limit_lets_n_through_then_refuses_with_retry_after_and_refills() {
    let gw = Gateway::start().await;
    let (id, auth) = create(&gw, json!({"label": "ci", "userName": "alice", "rateLimit": "3 / MIN"})).await;
    let listed = call(&gw, Method::GET, "/get", &admin(), json!({})).await.json();
    assert_eq!(
        listed["tokens"][0]["rateLimit"], "3/min",
        "stored in its canonical form"
    );
    assert_eq!(listed["tokens"][0]["enforce"], true);

    for remaining in ["2", "1", "0"] {
        let reply = get(&gw.url(SPACE), &[("authorization", &auth)]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(rate_headers(&reply), some(["3", remaining, "60", "3"]));
    }
    let refused = get(&gw.url(SPACE), &[("authorization", &auth)]).await;
    assert_eq!(
        (refused.status.as_u16(), refused.reason()),
        (429, "rate_limited".into())
    );
    assert_eq!(
        refused.headers["retry-after"], "20",
        "one call's room comes back in 60/3 s"
    );
    assert_eq!(rate_headers(&refused), some(["3", "0", "60", "3"]));
    assert_eq!(
        gw.upstream.requests_to(SPACE).len(),
        3,
        "the refused call never reached Confluence"
    );

    gw.clock.advance_ms(19_001);
    let almost = get(&gw.url(SPACE), &[("authorization", &auth)]).await;
    assert_eq!(almost.headers["retry-after"], "1", "whole seconds, rounded up");
    gw.clock.advance_ms(1_000);
    assert_eq!(get(&gw.url(SPACE), &[("authorization", &auth)]).await.status, 200);
    gw.clock.advance_ms(3_600_000);
    let refilled = get(&gw.url(SPACE), &[("authorization", &auth)]).await;
    assert_eq!(
        rate_headers(&refilled),
        some(["3", "2", "60", "3"]),
        "full again, never fuller"
    );

    let refusals: Vec<_> = gw
        .audit()
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("rate_limited"))
        .collect();
    assert_eq!(refusals.len(), 2, "every refusal is audited");
    assert_eq!(
        (
            refusals[0].token_id.as_deref(),
            refusals[0].status,
            refusals[0].decision.as_str()
        ),
        (Some(id.as_str()), Some(429), "deny")
    );
    assert!(metrics(&gw).await.contains(r#"decision="deny",reason="rate_limited""#));
}

#[tokio::test]
async fn each_token_has_its_own_bucket_and_only_limited_tokens_get_the_headers() {
    let gw = Gateway::start().await;
    let (_, a) = create(&gw, json!({"label": "a", "userName": "alice", "rateLimit": "1/hour"})).await;
    let (_, b) = create(&gw, json!({"label": "b", "userName": "alice", "rateLimit": "1/hour"})).await;
    let (_, unlimited) = create(&gw, json!({"label": "c", "userName": "alice"})).await;
    assert_eq!(get(&gw.url(SPACE), &[("authorization", &a)]).await.status, 200);
    assert_eq!(get(&gw.url(SPACE), &[("authorization", &a)]).await.status, 429);
    let other = get(&gw.url(SPACE), &[("authorization", &b)]).await;
    assert_eq!(other.status, 200, "b's bucket is its own");
    assert_eq!(rate_headers(&other), some(["1", "0", "3600", "1"]));

    let plain = get(&gw.url(SPACE), &[("authorization", &unlimited)]).await;
    assert_eq!(plain.status, 200);
    assert_eq!(rate_headers(&plain), vec![None; 4], "no limit, no headers");
    let anonymous = get(&gw.url(SPACE), &[]).await;
    assert_eq!(rate_headers(&anonymous), vec![None; 4]);

    // Confluence's own headers pass through for an unlimited token, and are
    // replaced by the token's for a limited one.
    let path = "/rest/api/rate-limited-by-confluence";
    let theirs = get(&gw.url(path), &[("authorization", &unlimited)]).await;
    assert_eq!(rate_headers(&theirs), some(["100", "99", "1", "10"]));
    gw.clock.advance_ms(3_600_000);
    let ours = get(&gw.url(path), &[("authorization", &b)]).await;
    assert_eq!(ours.status, 200);
    assert_eq!(rate_headers(&ours), some(["1", "0", "3600", "1"]));
    assert_eq!(ours.headers.get_all("x-ratelimit-limit").iter().count(), 1);
}

#[tokio::test]
async fn a_limited_tokens_other_answers_carry_the_headers_too() {
    let gw = Gateway::start().await;
    let (_, reader) = create(
        &gw,
        json!({"label": "r", "userName": "alice", "rateLimit": "10/min", "limitTo": "[get]/rest/api/space"}),
    )
    .await;
    let refused = get(&gw.url(CONTENT), &[("authorization", &reader)]).await;
    assert_eq!(
        (refused.status.as_u16(), refused.reason()),
        (403, "rule_mismatch".into())
    );
    assert_eq!(
        rate_headers(&refused),
        some(["10", "9", "60", "10"]),
        "a refused call still counts"
    );

    let (_, admin_token) = create(&gw, json!({"label": "ops", "userName": "admin", "rateLimit": "2/min"})).await;
    let listed = call(&gw, Method::GET, "/get", &admin_token, json!({})).await;
    assert_eq!(listed.status, 200);
    assert_eq!(
        rate_headers(&listed),
        some(["2", "1", "60", "2"]),
        "the management API too"
    );
    let forbidden = call(&gw, Method::POST, "/set", &admin_token, json!({})).await;
    assert_eq!(forbidden.status, 400);
    assert_eq!(rate_headers(&forbidden), some(["2", "0", "60", "2"]));
    let limited = call(&gw, Method::GET, "/get", &admin_token, json!({})).await;
    assert_eq!(
        (limited.status.as_u16(), limited.reason()),
        (429, "rate_limited".into())
    );

    // And when Confluence cannot be reached.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let unreachable = Gateway::start_with(|c| c.upstream.authority = closed.to_string().parse().unwrap()).await;
    let created = unreachable
        .create_token(NewToken {
            label: "u".into(),
            user: Some("alice".into()),
            rate_limit: Some("5/s".into()),
            ..NewToken::default()
        })
        .await;
    let auth = basic("alice", &created.value);
    let failed = get(&unreachable.url(SPACE), &[("authorization", &auth)]).await;
    assert_eq!(
        (failed.status.as_u16(), failed.reason()),
        (502, "upstream_unavailable".into())
    );
    assert_eq!(rate_headers(&failed), some(["5", "4", "1", "5"]));
}

#[tokio::test]
async fn report_only_forwards_what_only_the_rules_refuse_and_audits_it_as_report() {
    let gw = Gateway::start_with(|c| c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    let (id, auth) = create(
        &gw,
        json!({"label": "rollout", "userName": "alice", "limitTo": "[get]/rest/api/space",
            "enforce": false, "ip": "10.0.0.0/8", "rateLimit": "3/min", "daysUntilExpiry": 1}),
    )
    .await;
    let send_as = |method: Method, path: &str, ip: &str, body: &'static str| {
        let (url, auth, ip) = (gw.url(path), auth.clone(), ip.to_owned());
        async move {
            send(
                method,
                &url,
                &[("authorization", &auth), ("x-forwarded-for", &ip)],
                body,
            )
            .await
        }
    };

    let allowed = send_as(Method::GET, SPACE, "10.1.1.1", "").await;
    assert_eq!(allowed.status, 200);
    let body = r#"{"type":"page","title":"x"}"#;
    let reported = send_as(Method::POST, CONTENT, "10.1.1.1", body).await;
    assert_eq!(reported.status, 200, "forwarded though no rule allows it");
    let received = gw.upstream.last();
    assert_eq!((received.method.as_str(), received.target.as_str()), ("POST", CONTENT));
    assert_eq!(received.body_head, body.as_bytes(), "forwarded as it was sent");
    assert_eq!(received.header("x-forwarded-user"), Some("alice"));

    // Every other check still refuses.
    let elsewhere = send_as(Method::GET, SPACE, "192.0.2.1", "").await;
    assert_eq!(
        (elsewhere.status.as_u16(), elsewhere.reason()),
        (403, "ip_not_allowed".into())
    );
    let out_of_scope = send_as(Method::GET, "/admin/users.action", "10.1.1.1", "").await;
    assert_eq!(
        (out_of_scope.status.as_u16(), out_of_scope.reason()),
        (403, "out_of_scope".into())
    );
    send_as(Method::GET, SPACE, "10.1.1.1", "").await;
    let limited = send_as(Method::GET, CONTENT, "10.1.1.1", "").await;
    assert_eq!(
        (limited.status.as_u16(), limited.reason()),
        (429, "rate_limited".into())
    );
    gw.clock.advance_ms(2 * 86_400_000);
    let expired = send_as(Method::GET, CONTENT, "10.1.1.1", "").await;
    assert_eq!(
        (expired.status.as_u16(), expired.reason()),
        (401, "token_expired".into())
    );

    let entries = gw.audit().await;
    let mine: Vec<_> = entries
        .iter()
        .rev()
        .filter(|e| e.kind == AuditKind::Request && e.token_id.as_deref() == Some(id.as_str()))
        .map(|e| (e.decision.as_str(), e.reason.as_deref(), e.status))
        .collect();
    assert_eq!(
        mine,
        [
            ("allow", None, Some(200)),
            ("report", Some("rule_mismatch"), Some(200)),
            ("deny", Some("ip_not_allowed"), Some(403)),
            ("deny", Some("out_of_scope"), Some(403)),
            ("allow", None, Some(200)),
            ("deny", Some("rate_limited"), Some(429)),
            ("deny", Some("token_expired"), Some(401)),
        ]
    );
    let text = metrics(&gw).await;
    assert!(
        text.contains(r#"tokengate_requests_total{decision="report",reason="rule_mismatch"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn report_only_never_applies_to_the_management_api_or_to_rules_that_do_not_compile() {
    let gw = Gateway::start().await;
    let (_, admin_token) = create(
        &gw,
        json!({"label": "ops", "userName": "admin", "limitTo": "[get].*/tokenTools/get", "enforce": false}),
    )
    .await;
    assert_eq!(
        call(&gw, Method::GET, "/get", &admin_token, json!({})).await.status,
        200
    );
    let settings = call(&gw, Method::GET, "/settings", &admin_token, json!({})).await;
    assert_eq!(
        (settings.status.as_u16(), settings.reason()),
        (403, "rule_mismatch".into())
    );

    // A stored rule that no longer compiles refuses everything, report-only or not.
    let (id, broken) = create(&gw, json!({"label": "b", "userName": "alice", "enforce": false})).await;
    let restrictions = Restrictions {
        label: "b".into(),
        limit_to: "[get](unclosed".into(),
        ip: String::new(),
        rate_limit: None,
        enforce: false,
        spaces: None,
    };
    gw.app.store.update_token(&id, &restrictions, 0).await.unwrap().unwrap();
    gw.app.auth.verifier().updated(&id);
    let reply = get(&gw.url(SPACE), &[("authorization", &broken)]).await;
    assert_eq!((reply.status.as_u16(), reply.reason()), (403, "rule_mismatch".into()));
    assert!(gw.upstream.requests_to(SPACE).is_empty(), "not forwarded");
}

#[tokio::test]
async fn an_update_takes_effect_at_once_and_is_audited_with_old_and_new_values() {
    let gw = Gateway::start().await;
    let (id, auth) = create(
        &gw,
        json!({"label": "reader", "userName": "alice", "limitTo": "[get]/rest/api/space"}),
    )
    .await;
    assert_eq!(get(&gw.url(SPACE), &[("authorization", &auth)]).await.status, 200);
    assert_eq!(get(&gw.url(CONTENT), &[("authorization", &auth)]).await.status, 403);

    let reply = update(
        &gw,
        json!({"id": id, "limitTo": "[get]/rest/api/content", "rateLimit": "2/min", "label": "writer"}),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let answer = reply.json();
    assert_eq!(answer["status"], "ok");
    assert_eq!(
        (answer["label"].as_str(), answer["rateLimit"].as_str()),
        (Some("writer"), Some("2/min"))
    );
    assert_eq!(answer["rules"], json!(["[get]/rest/api/content"]));
    assert_eq!(answer["user"], "alice", "unchanged");
    assert!(answer.get("token").is_none(), "never the value");

    let now = get(&gw.url(CONTENT), &[("authorization", &auth)]).await;
    assert_eq!(now.status, 200, "no wait: the next request sees the new rules");
    assert_eq!(rate_headers(&now), some(["2", "1", "60", "2"]));
    assert_eq!(get(&gw.url(SPACE), &[("authorization", &auth)]).await.status, 403);

    let removed = update(&gw, json!({"id": id, "rateLimit": null, "enforce": false})).await;
    assert_eq!(removed.json()["rateLimit"], Value::Null);
    let reply = get(&gw.url(SPACE), &[("authorization", &auth)]).await;
    assert_eq!(reply.status, 200, "report-only now");
    assert_eq!(rate_headers(&reply), vec![None; 4]);

    let updates: Vec<_> = gw
        .audit()
        .await
        .into_iter()
        .filter(|e| e.decision == "update")
        .collect();
    assert_eq!(updates.len(), 2);
    let first = &updates[1];
    assert_eq!(
        (first.user.as_deref(), first.token_id.as_deref()),
        (Some("admin"), Some(id.as_str()))
    );
    let detail = first.detail.as_deref().unwrap();
    let changes: Value = serde_json::from_str(detail.split_once("; ").unwrap().1).unwrap();
    assert_eq!(
        changes,
        json!({"label": ["reader", "writer"], "limitTo": ["[get]/rest/api/space", "[get]/rest/api/content"],
            "rateLimit": [null, "2/min"]}),
        "{detail}"
    );
    assert!(detail.starts_with("via password"), "{detail}");
}

#[tokio::test]
async fn an_update_is_validated_exactly_like_a_create_and_changes_nothing_when_refused() {
    let gw = Gateway::start().await;
    let (id, _) = create(&gw, json!({"label": "ci", "userName": "alice", "limitTo": "[get]/x"})).await;
    let stored = gw.app.store.token(&id).await.unwrap();
    for (field, bad) in [
        ("limitTo", json!("[get]/ok\n[post]/a(b")),
        ("limitTo", json!("[get]/x[QueryParam::a==(]")),
        ("ip", json!("10.0.0.300")),
        ("rateLimit", json!("60/fortnight")),
        ("rateLimit", json!("0/min")),
        ("rateLimit", json!(60)),
        ("label", json!("  ")),
        ("label", json!("x".repeat(256))),
        ("enforce", json!("yes")),
    ] {
        let mut create_body = json!({"label": "other", "userName": "bob"});
        create_body[field] = bad.clone();
        let created = call(&gw, Method::POST, "/set", &admin(), create_body).await;
        let updated = update(&gw, json!({"id": id, field: bad.clone()})).await;
        assert_eq!(updated.status, 400, "{field}: {bad}");
        let (c, u) = (created.json(), updated.json());
        for key in ["status", "reason", "field", "message", "line", "column"] {
            assert_eq!(c[key], u[key], "{field}={bad}: {key} differs: {c} vs {u}");
        }
        assert_eq!(u["field"], field, "{u}");
    }
    let rule_error = update(&gw, json!({"id": id, "limitTo": "[get]/ok\n[post]/a(b"}))
        .await
        .json();
    assert_eq!(
        (rule_error["line"].as_u64(), rule_error["column"].is_u64()),
        (Some(2), true)
    );

    for (body, status, field) in [
        (json!({"id": id, "userName": "bob"}), 400, Some("userName")),
        (json!({"id": id, "daysUntilExpiry": 5}), 400, Some("daysUntilExpiry")),
        (json!({"id": id, "token": "tgw_x"}), 400, Some("token")),
        (json!({"id": id, "limitto": ".*"}), 400, None),
        (json!({"id": id, "spaces": ["DO CS"]}), 400, Some("spaces")),
        (json!({"id": id, "graceHours": 1}), 400, None),
        (json!({"id": id}), 400, None),
        (json!({"limitTo": ".*"}), 400, Some("id")),
        (json!({"id": "no-such-token", "label": "x"}), 404, None),
    ] {
        let reply = update(&gw, body.clone()).await;
        assert_eq!(reply.status.as_u16(), status, "{body}: {:?}", reply.body);
        assert_eq!(reply.json()["field"].as_str(), field, "{body}");
    }
    assert_eq!(gw.app.store.token(&id).await.unwrap(), stored, "nothing changed");
}

#[tokio::test]
async fn users_update_their_own_tokens_only_and_never_with_a_token_of_someone_else() {
    let gw = Gateway::start().await;
    let alice = basic("alice", "alice-password");
    let reply = call(&gw, Method::POST, "/set", &alice, json!({"label": "mine"})).await;
    let mine = reply.json()["id"].as_str().unwrap().to_owned();
    let (bobs, _) = create(&gw, json!({"label": "bob's", "userName": "bob"})).await;
    let own = call(
        &gw,
        Method::POST,
        "/update",
        &alice,
        json!({"id": mine, "rateLimit": "1/s"}),
    )
    .await;
    assert_eq!(own.status, 200, "{:?}", own.body);
    let other = call(
        &gw,
        Method::POST,
        "/update",
        &alice,
        json!({"id": bobs, "limitTo": ".*"}),
    )
    .await;
    assert_eq!((other.status.as_u16(), other.reason()), (404, "not_found".into()));
    let (_, alices_token) = create(&gw, json!({"label": "script", "userName": "alice"})).await;
    let by_token = call(
        &gw,
        Method::POST,
        "/update",
        &alices_token,
        json!({"id": mine, "label": "x"}),
    )
    .await;
    assert_eq!(by_token.status, 403, "a non-admin's token manages nothing");
}

#[tokio::test]
async fn an_update_racing_requests_in_flight_is_seen_by_every_request_that_starts_after_it() {
    let gw = Arc::new(Gateway::start().await);
    let (id, auth) = create(
        &gw,
        json!({"label": "racer", "userName": "alice", "limitTo": "[get]/rest/api/space"}),
    )
    .await;
    assert_eq!(get(&gw.url(SPACE), &[("authorization", &auth)]).await.status, 200);
    for round in 0..6 {
        let (allowed, refused) = if round % 2 == 0 {
            (CONTENT, SPACE)
        } else {
            (SPACE, CONTENT)
        };
        let mut in_flight = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (gw, auth) = (gw.clone(), auth.clone());
            in_flight.spawn(async move {
                let status = get(&gw.url(SPACE), &[("authorization", &auth)]).await.status;
                assert!(status == 200 || status == 403, "{status}");
            });
        }
        let reply = update(&gw, json!({"id": id, "limitTo": format!("[get]{allowed}")})).await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            get(&gw.url(allowed), &[("authorization", &auth)]).await.status,
            200,
            "round {round}"
        );
        assert_eq!(
            get(&gw.url(refused), &[("authorization", &auth)]).await.status,
            403,
            "round {round}"
        );
        while let Some(done) = in_flight.join_next().await {
            done.unwrap();
        }
    }
    // An update racing a deletion: the deletion wins, the update finds nothing.
    let deleting = {
        let gw = gw.clone();
        let id = id.clone();
        tokio::spawn(async move { gw.app.tokens.delete(&id, &Actor::cli()).await })
    };
    let raced = update(&gw, json!({"id": id, "label": "late"})).await;
    deleting.await.unwrap().unwrap();
    assert!(raced.status == 200 || raced.status == 404, "{:?}", raced.status);
    assert_eq!(get(&gw.url(SPACE), &[("authorization", &auth)]).await.status, 401);
    assert!(gw.app.store.token(&id).await.unwrap().is_none(), "not brought back");
}

#[tokio::test]
async fn new_tokens_made_through_the_token_manager_take_the_same_fields() {
    let gw = Gateway::start().await;
    let created = gw
        .create_token(NewToken {
            label: "cli-like".into(),
            user: Some("alice".into()),
            rate_limit: Some("100/day".into()),
            enforce: Some(false),
            ..NewToken::default()
        })
        .await;
    assert_eq!(created.record.rate_limit.as_deref(), Some("100/day"));
    assert!(!created.record.enforce);
    let json = created.answer().to_json();
    assert_eq!(
        (json["rateLimit"].as_str(), json["enforce"].as_bool()),
        (Some("100/day"), Some(false))
    );
}
