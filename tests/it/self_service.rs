//! Self-service (SPEC §14): every user Confluence accepts manages their own
//! tokens with their password; admins manage all; tokens of non-admins
//! manage nothing; `self_service = false` leaves the API to admins.

use hyper::Method;
use serde_json::{Value, json};
use tokengate::{Actor, AuditKind, AuditQuery, NewToken};

use crate::common::fake_confluence::USERS;
use crate::common::{Gateway, Reply, basic, get, send};

const BASE: &str = "/rest/extender/1.0/tokenTools";

fn password(user: &str) -> String {
    let (_, pass) = USERS.iter().find(|(name, _)| *name == user).unwrap();
    basic(user, pass)
}

async fn call(gw: &Gateway, method: Method, path: &str, auth: &str, body: Value) -> Reply {
    let headers = [("authorization", auth), ("content-type", "application/json")];
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    send(method, &gw.url(&format!("{BASE}{path}")), &headers, body).await
}

async fn create(gw: &Gateway, auth: &str, body: Value) -> Reply {
    call(gw, Method::POST, "/set", auth, body).await
}

fn labels(reply: &Reply) -> Vec<String> {
    let mut labels: Vec<String> = reply.json()["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["label"].as_str().unwrap().to_owned())
        .collect();
    labels.sort();
    labels
}

#[tokio::test]
async fn a_user_creates_lists_and_deletes_their_own_tokens_only() {
    let gw = Gateway::start().await;
    let (alice, bob) = (password("alice"), password("bob"));
    let bobs = gw.token_for("bob").await;

    // Create: for themselves, bound to them whatever case they type.
    let reply = create(&gw, &alice, json!({"label": "mine"})).await;
    assert_eq!((reply.status.as_u16(), &reply.json()["user"]), (200, &json!("alice")));
    let reply = create(&gw, &alice, json!({"label": "mine too", "userName": "ALICE"})).await;
    assert_eq!(reply.json()["user"], "alice");
    let mine = reply.json()["id"].as_str().unwrap().to_owned();
    let value = reply.json()["token"].as_str().unwrap().to_owned();
    for other in [
        json!({"label": "x", "userName": "bob"}),
        json!({"label": "x", "userName": "admin"}),
    ] {
        let reply = create(&gw, &alice, other).await;
        assert_eq!((reply.status.as_u16(), reply.reason()), (403, "forbidden".into()));
    }
    let reply = get(
        &gw.url("/rest/api/space"),
        &[("authorization", &basic("alice", &value))],
    )
    .await;
    assert_eq!(reply.status, 200, "a self-made token works");

    // List: only theirs, the filters within them.
    let list = |auth: &str, query: &str| {
        let url = gw.url(&format!("{BASE}/get{query}"));
        let auth = auth.to_owned();
        async move { get(&url, &[("authorization", &auth)]).await }
    };
    assert_eq!(labels(&list(&alice, "").await), ["mine", "mine too"]);
    assert_eq!(list(&alice, "").await.json()["total"], 2);
    assert_eq!(labels(&list(&alice, "?userName=bob").await), Vec::<String>::new());
    assert_eq!(labels(&list(&alice, "?userName=Alice&label=too").await), ["mine too"]);
    assert_eq!(labels(&list(&bob, "").await), ["bob-bot"]);
    assert_eq!(list(&password("admin"), "").await.json()["total"], 3, "admins see all");

    // Delete: another user's id is 404, as if it did not exist; their own goes.
    let bobs_id = gw.app.store.tokens_by_lookup(&bobs[..12]).await.unwrap()[0].id.clone();
    let reply = call(
        &gw,
        Method::DELETE,
        &format!("/delete?id={bobs_id}"),
        &alice,
        Value::Null,
    )
    .await;
    assert_eq!((reply.status.as_u16(), reply.reason()), (404, "not_found".into()));
    assert!(reply.json()["message"].as_str().unwrap().contains(&bobs_id));
    let reply = call(&gw, Method::DELETE, "/delete", &alice, json!({"userName": "bob"})).await;
    assert_eq!((reply.status.as_u16(), reply.reason()), (403, "forbidden".into()));
    assert_eq!(labels(&list(&bob, "").await), ["bob-bot"], "bob's token is untouched");
    let reply = call(&gw, Method::DELETE, &format!("/delete?id={mine}"), &alice, Value::Null).await;
    assert_eq!(reply.json(), json!({"status": "ok", "deleted": 1}));
    let reply = call(&gw, Method::DELETE, "/delete", &alice, json!({"userName": "ALICE"})).await;
    assert_eq!(reply.json()["deleted"], 1);
    assert_eq!(labels(&list(&alice, "").await), Vec::<String>::new());
}

#[tokio::test]
async fn settings_stay_with_admins_and_the_audit_log_shows_a_user_their_own() {
    let gw = Gateway::start().await;
    let alice = password("alice");
    let reply = call(&gw, Method::GET, "/settings", &alice, Value::Null).await;
    assert_eq!((reply.status.as_u16(), reply.reason()), (403, "forbidden".into()));
    let reply = create(&gw, &alice, json!({"auditLog": false})).await;
    assert_eq!((reply.status.as_u16(), reply.reason()), (403, "forbidden".into()));
    assert!(gw.app.settings.get().audit_log);

    let created = create(&gw, &alice, json!({"label": "mine"})).await.json();
    create(&gw, &password("bob"), json!({"label": "his"})).await;
    gw.app.flush_records().await;
    let entries = |auth: String, query: &'static str| {
        let url = gw.url(&format!("{BASE}/audit{query}"));
        async move {
            get(&url, &[("authorization", &auth)]).await.json()["entries"]
                .as_array()
                .unwrap()
                .clone()
        }
    };
    let own = entries(alice.clone(), "").await;
    assert_eq!(own.len(), 1);
    assert_eq!(
        (&own[0]["user"], &own[0]["decision"]),
        (&json!("alice"), &json!("create"))
    );
    assert!(
        own[0]["detail"].as_str().unwrap().starts_with("via password"),
        "{own:?}"
    );
    assert_eq!(own[0]["tokenId"], created["id"]);
    assert!(entries(alice.clone(), "?userName=bob").await.is_empty());
    assert_eq!(entries(password("admin"), "").await.len(), 2);
}

#[tokio::test]
async fn tokens_of_non_admins_manage_nothing() {
    let gw = Gateway::start().await;
    let alices = basic("alice", &gw.token_for("alice").await);
    for (method, path, body) in [
        (Method::GET, "/get", Value::Null),
        (Method::GET, "/audit", Value::Null),
        (Method::POST, "/set", json!({"label": "x"})),
        (Method::DELETE, "/delete", json!({"userName": "alice"})),
    ] {
        let reply = call(&gw, method, path, &alices, body).await;
        assert_eq!(
            (reply.status.as_u16(), reply.reason()),
            (403, "forbidden".into()),
            "{path}"
        );
        assert!(reply.json()["message"].as_str().unwrap().contains("with your password"));
    }
    let admins = basic("admin", &gw.token_for("admin").await);
    assert_eq!(call(&gw, Method::GET, "/get", &admins, Value::Null).await.status, 200);
}

#[tokio::test]
async fn without_self_service_only_admins_get_in() {
    let gw = Gateway::start_with(|c| c.self_service = false).await;
    let alice = password("alice");
    for (method, path, body) in [
        (Method::GET, "/get", Value::Null),
        (Method::POST, "/set", json!({"label": "x"})),
        (Method::DELETE, "/delete", json!({"userName": "alice"})),
    ] {
        let reply = call(&gw, method, path, &alice, body).await;
        assert_eq!(
            (reply.status.as_u16(), reply.reason()),
            (403, "forbidden".into()),
            "{path}"
        );
    }
    assert_eq!(
        create(&gw, &password("admin"), json!({"label": "x", "userName": "alice"}))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn max_tokens_per_user_binds_users_and_admins_alike() {
    let gw = Gateway::start_with(|c| c.max_tokens_per_user = 2).await;
    let alice = password("alice");
    for label in ["one", "two"] {
        assert_eq!(create(&gw, &alice, json!({"label": label})).await.status, 200);
    }
    let reply = create(&gw, &alice, json!({"label": "three"})).await;
    assert_eq!(
        (reply.status.as_u16(), reply.json()["field"].clone()),
        (400, json!("userName"))
    );
    assert!(reply.json()["message"].as_str().unwrap().contains("delete one first"));
    let reply = create(&gw, &password("admin"), json!({"label": "three", "userName": "Alice"})).await;
    assert_eq!(
        (reply.status.as_u16(), reply.json()["field"].clone()),
        (400, json!("userName"))
    );
    // Unbound tokens belong to nobody: no limit.
    for n in 0..3 {
        let reply = create(&gw, &password("admin"), json!({"label": format!("shared {n}")})).await;
        assert_eq!(reply.status, 200);
    }
    // The CLI is bound by it too.
    let error = gw
        .app
        .tokens
        .create(
            NewToken {
                label: "cli".into(),
                user: Some("alice".into()),
                ..NewToken::default()
            },
            &Actor::cli(),
        )
        .await
        .err()
        .expect("over the limit");
    assert!(error.to_string().contains("max_tokens_per_user"), "{error}");
    gw.app.flush_records().await;
    let entries = gw
        .app
        .store
        .list_audit(&AuditQuery {
            max_results: 100,
            ..AuditQuery::default()
        })
        .await
        .unwrap()
        .items;
    let creations = entries
        .iter()
        .filter(|e| e.kind == AuditKind::Management && e.decision == "create");
    assert_eq!(creations.count(), 5, "refused creations are not recorded as made");
}
