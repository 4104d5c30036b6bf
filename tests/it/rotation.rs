//! Rotation (SPEC §18) through the running gateway: by an admin, by a user,
//! and by the token itself; the old secret in grace and after it, in this
//! process and another; with `forward_as = "pat"`, the PAT sealed again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{Value, json};
use tokengate::{Clock, ForwardAs, NewToken, SqliteStore, TokenAuth};

use crate::common::fake_confluence::{ADMIN_PASSWORD, USERS};
use crate::common::process::cli;
use crate::common::{Gateway, Reply, basic, get, send};

const BASE: &str = "/rest/extender/1.0/tokenTools";
const SPACE: &str = "/rest/api/space";
const HOUR_MS: i64 = 3_600_000;

fn password(user: &str) -> String {
    let (_, pass) = USERS.iter().find(|(name, _)| *name == user).unwrap();
    basic(user, pass)
}

async fn rotate(gw: &Gateway, auth: &str, body: Value) -> Reply {
    let headers = [("authorization", auth), ("content-type", "application/json")];
    send(
        Method::POST,
        &gw.url(&format!("{BASE}/rotate")),
        &headers,
        body.to_string(),
    )
    .await
}

/// `(status, reason)`; the reason empty for Confluence's own answer.
async fn use_token(gw: &Gateway, auth: &str) -> (u16, String) {
    let reply = get(&gw.url(SPACE), &[("authorization", auth)]).await;
    let reason = match reply.headers.contains_key("x-tokengate-reason") {
        true => reply.reason(),
        false => String::new(),
    };
    (reply.status.as_u16(), reason)
}

fn ok() -> (u16, String) {
    (200, String::new())
}

fn invalid() -> (u16, String) {
    (401, "invalid_token".into())
}

async fn alice_token(gw: &Gateway, rules: &str) -> (String, String) {
    let created = gw
        .create_token(NewToken {
            label: "nightly".into(),
            user: Some("alice".into()),
            days_until_expiry: Some(30),
            limit_to: Some(rules.into()),
            ..NewToken::default()
        })
        .await;
    (created.record.id, basic("alice", &created.value))
}

#[tokio::test]
async fn an_admin_rotates_a_token_and_the_old_secret_works_until_its_grace_ends() {
    let gw = Gateway::start().await;
    let (id, old) = alice_token(&gw, "[get].*/rest/api/space.*").await;
    assert_eq!(use_token(&gw, &old).await, ok());
    let before = gw.app.store.token(&id).await.unwrap().unwrap();

    let reply = rotate(&gw, &basic("admin", ADMIN_PASSWORD), json!({"id": id, "graceHours": 2})).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let answer = reply.json();
    let new = basic("alice", answer["token"].as_str().unwrap());
    assert_eq!(answer["id"], id.as_str(), "the id stays");
    assert_eq!(answer["rules"], json!(["[get].*/rest/api/space.*"]), "the rules stay");
    assert_eq!(answer["validUntil"], json!(before.valid_until), "the expiry stays");
    assert_eq!(answer["graceUntil"], json!(gw.clock.now_ms() + 2 * HOUR_MS));
    assert_ne!(new, old);

    assert_eq!(use_token(&gw, &new).await, ok(), "the new secret works at once");
    assert_eq!(use_token(&gw, &old).await, ok(), "the old one during the grace period");
    gw.app.flush_records().await;
    let after = gw.app.store.token(&id).await.unwrap().unwrap();
    assert_eq!(after.counter, 3, "usage stays with the token");
    gw.clock.advance_ms(2 * HOUR_MS);
    assert_eq!(use_token(&gw, &old).await, invalid(), "refused once the grace ends");
    assert_eq!(use_token(&gw, &new).await, ok());

    let audit = gw.audit().await;
    let rotation = audit.iter().find(|e| e.decision == "rotate").expect("audited");
    assert_eq!(rotation.token_id.as_deref(), Some(id.as_str()));
    assert!(rotation.detail.as_deref().unwrap().contains("via password"));
    // Never the value.
    let secret = answer["token"].as_str().unwrap();
    assert!(audit.iter().all(|e| !format!("{e:?}").contains(secret)));
}

#[tokio::test]
async fn without_grace_the_old_secret_stops_at_once_and_a_rotation_ends_an_earlier_grace() {
    let gw = Gateway::start().await;
    let admin = basic("admin", ADMIN_PASSWORD);
    let (id, first) = alice_token(&gw, "").await;
    let reply = rotate(&gw, &admin, json!({"id": id})).await;
    let second = basic("alice", reply.json()["token"].as_str().unwrap());
    assert_eq!(use_token(&gw, &first).await, ok(), "24 h of grace by default");
    let reply = rotate(&gw, &admin, json!({"id": id, "graceHours": 0})).await;
    assert_eq!(reply.json()["graceUntil"], Value::Null);
    let third = basic("alice", reply.json()["token"].as_str().unwrap());
    assert_eq!(use_token(&gw, &first).await, invalid(), "the earlier grace ended");
    assert_eq!(use_token(&gw, &second).await, invalid(), "no grace: at once");
    assert_eq!(use_token(&gw, &third).await, ok());

    for (body, field) in [
        (json!({"id": id, "graceHours": 169}), "graceHours"),
        (json!({"id": id, "graceHours": -1}), "graceHours"),
        (json!({"id": id, "graceHours": "a day"}), "graceHours"),
        (json!({}), "id"),
    ] {
        let reply = rotate(&gw, &admin, body.clone()).await;
        assert_eq!(
            (reply.status.as_u16(), reply.json()["field"].clone()),
            (400, json!(field)),
            "{body}"
        );
    }
    let reply = rotate(&gw, &admin, json!({"id": "no-such-token"})).await;
    assert_eq!(reply.status, 404);
    assert_eq!(
        use_token(&gw, &third).await,
        ok(),
        "nothing changed by refused rotations"
    );
}

#[tokio::test]
async fn a_token_rotates_itself_with_its_current_secret_and_nothing_else() {
    let gw = Gateway::start().await;
    // Its rules do not allow the management API: rotating itself needs no rule.
    let (id, old) = alice_token(&gw, "[get].*/rest/api/space.*").await;
    let (other_id, _) = alice_token(&gw, "").await;
    let reply = rotate(&gw, &old, json!({"id": other_id})).await;
    assert_eq!(reply.status, 403, "a non-admin's token rotates only itself");
    let reply = rotate(&gw, &old, json!({"id": id, "graceHours": 1})).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let new = basic("alice", reply.json()["token"].as_str().unwrap());
    let reply = rotate(&gw, &old, json!({"id": id})).await;
    assert_eq!(
        (reply.status.as_u16(), reply.reason()),
        (403, "forbidden".into()),
        "a secret in grace"
    );
    assert_eq!(use_token(&gw, &old).await, ok(), "but it still works on Confluence");
    let reply = rotate(&gw, &new, json!({"id": id, "graceHours": 0})).await;
    assert_eq!(reply.status, 200);
    assert_eq!(use_token(&gw, &new).await, invalid());
    let audit = gw.audit().await;
    let rotations: Vec<_> = audit.iter().filter(|e| e.decision == "rotate").collect();
    assert_eq!(rotations.len(), 2);
    assert!(
        rotations[0]
            .detail
            .as_deref()
            .unwrap()
            .contains(&format!("via token {id}"))
    );

    // Every other check still applies: expiry, user, IP list.
    let current = basic("alice", reply.json()["token"].as_str().unwrap());
    let reply = rotate(&gw, &current.replace("Basic ", "Basic x"), json!({"id": id})).await;
    assert!(
        reply.status == 400 || reply.status == 401,
        "mangled credentials: {}",
        reply.status
    );
    gw.clock.advance_ms(31 * 24 * HOUR_MS);
    let reply = rotate(&gw, &current, json!({"id": id})).await;
    assert_eq!((reply.status.as_u16(), reply.reason()), (401, "token_expired".into()));
}

#[tokio::test]
async fn an_admin_token_rotating_another_needs_its_rules_to_allow_the_call() {
    let gw = Gateway::start().await;
    let (id, _) = alice_token(&gw, "").await;
    let admin_token = |rules: &str| {
        let rules = rules.to_owned();
        let gw = &gw;
        async move {
            let created = gw
                .create_token(NewToken {
                    label: "ops".into(),
                    user: Some("admin".into()),
                    limit_to: Some(rules),
                    ..NewToken::default()
                })
                .await;
            basic("admin", &created.value)
        }
    };
    let narrow = admin_token("[get].*/rest/extender/.*").await;
    let reply = rotate(&gw, &narrow, json!({"id": id})).await;
    assert_eq!((reply.status.as_u16(), reply.reason()), (403, "rule_mismatch".into()));
    let wide = admin_token("[post].*/rest/extender/1.0/tokenTools/rotate").await;
    assert_eq!(rotate(&gw, &wide, json!({"id": id})).await.status, 200);
}

#[tokio::test]
async fn users_rotate_their_own_tokens_only() {
    let gw = Gateway::start().await;
    let (id, _) = alice_token(&gw, "").await;
    let reply = rotate(&gw, &password("bob"), json!({"id": id})).await;
    assert_eq!(reply.status, 404, "another user's token is not there for bob");
    let reply = rotate(&gw, &password("alice"), json!({"id": id})).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
}

#[tokio::test]
async fn a_rotation_reaches_another_process_within_a_second() {
    let a = Gateway::start().await;
    let store = Arc::new(SqliteStore::open(&a.app.config.database_url).await.unwrap());
    let b = Gateway::start_over(store).await;
    let (id, old) = alice_token(&a, "").await;
    assert_eq!(use_token(&b, &old).await, ok(), "verified in b");
    let reply = rotate(&a, &basic("admin", ADMIN_PASSWORD), json!({"id": id, "graceHours": 0})).await;
    let new = basic("alice", reply.json()["token"].as_str().unwrap());
    let started = Instant::now();
    while use_token(&b, &old).await != invalid() {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "b still takes the old secret"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(use_token(&b, &new).await, ok());
}

#[tokio::test]
async fn with_forward_as_pat_the_token_rotates_itself_and_its_pat_is_sealed_again() {
    let gw = Gateway::start_with(|c| {
        c.forward_as = ForwardAs::Pat;
        c.token_auth = TokenAuth::Both;
    })
    .await;
    let headers = [
        ("authorization", password("alice")),
        ("content-type", "application/json".into()),
    ];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let body = json!({"label": "bot", "daysUntilExpiry": 30}).to_string();
    let created = send(Method::POST, &gw.url(&format!("{BASE}/set")), &headers, body)
        .await
        .json();
    let id = created["id"].as_str().unwrap().to_owned();
    let old = format!("Bearer {}", created["token"].as_str().unwrap());
    let pat = gw.upstream.pats().pop().unwrap().raw;

    let reply = rotate(&gw, &basic("admin", ADMIN_PASSWORD), json!({"id": id})).await;
    assert_eq!(
        (reply.status.as_u16(), reply.json()["field"].clone()),
        (400, json!("id"))
    );
    assert!(reply.json()["message"].as_str().unwrap().contains("only by itself"));
    let reply = rotate(&gw, &old, json!({"id": id, "graceHours": 1})).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let new = format!("Bearer {}", reply.json()["token"].as_str().unwrap());
    assert_eq!(gw.upstream.pats().len(), 1, "the same PAT, sealed again");

    // After a restart nothing is unsealed in memory: both secrets open the PAT.
    let gw = gw.reopen(|_| {}).await;
    for auth in [&new, &old] {
        assert_eq!(use_token(&gw, auth).await, ok());
        assert_eq!(
            gw.upstream.last().header("authorization"),
            Some(format!("Bearer {pat}").as_str())
        );
    }
    gw.clock.advance_ms(HOUR_MS);
    assert_eq!(use_token(&gw, &old).await, invalid());
    assert_eq!(use_token(&gw, &new).await, ok());
}

#[test]
fn the_cli_rotates_with_a_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let out = cli(
        dir.path(),
        &["token", "create", "--label", "c", "--user", "alice", "--json"],
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = created["id"].as_str().unwrap();
    let out = cli(dir.path(), &["token", "rotate", id, "--grace-hours", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let value = String::from_utf8(out.stdout).unwrap();
    assert!(value.trim().starts_with("tgw_") && value.trim() != created["token"].as_str().unwrap());
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 more hours"));
    let out = cli(dir.path(), &["token", "rotate", id, "--grace-hours", "200"]);
    assert_eq!(out.status.code(), Some(2));
    let out = cli(dir.path(), &["token", "rotate", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    let audit = String::from_utf8(cli(dir.path(), &["audit", "--token", id]).stdout).unwrap();
    assert!(audit.contains("rotate"), "{audit}");
}
