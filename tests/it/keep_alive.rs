//! The per-connection credentials memo (SPEC §11) on one real keep-alive
//! connection: a repeated `Authorization` skips the verified cache, and
//! still a deletion, an update or a rotation takes effect on the very next
//! request of that connection.

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http1::SendRequest;
use serde_json::json;
use tokengate::NewToken;

use crate::common::fake_confluence::ADMIN_PASSWORD;
use crate::common::{Gateway, basic, connect, get_on, send};

const BASE: &str = "/rest/extender/1.0/tokenTools";

/// `(status, reason)` of `GET path` on the connection.
async fn on(sender: &mut SendRequest<Empty<Bytes>>, path: &str, auth: &str) -> (u16, String) {
    let reply = get_on(sender, path, auth).await;
    let reason = reply
        .headers
        .get("x-tokengate-reason")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (reply.status.as_u16(), reason)
}

fn cache_hits(gw: &Gateway) -> u64 {
    gw.app.metrics.cache_hits.get()
}

async fn admin(gw: &Gateway, path: &str, body: serde_json::Value) {
    let auth = basic("admin", ADMIN_PASSWORD);
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let reply = send(
        hyper::Method::POST,
        &gw.url(&format!("{BASE}{path}")),
        &headers,
        body.to_string(),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
}

#[tokio::test]
async fn a_repeated_authorization_skips_the_cache_but_never_a_deletion_or_an_update() {
    let gw = Gateway::start().await;
    let created = gw
        .create_token(NewToken {
            label: "keep-alive".into(),
            user: Some("alice".into()),
            ..NewToken::default()
        })
        .await;
    let auth = basic("alice", &created.value);
    let mut conn = connect(&gw).await;
    assert_eq!(on(&mut conn, "/rest/api/space", &auth).await, (200, String::new()));
    let hits = cache_hits(&gw);
    for _ in 0..5 {
        assert_eq!(on(&mut conn, "/rest/api/space", &auth).await, (200, String::new()));
    }
    assert_eq!(cache_hits(&gw), hits, "recalled from the connection, not the cache");
    // Other credentials on the same connection are decoded as ever.
    assert_eq!(
        on(&mut conn, "/rest/api/space", &basic("bob", &created.value)).await,
        (401, "user_mismatch".into())
    );
    assert_eq!(on(&mut conn, "/rest/api/space", &auth).await, (200, String::new()));

    // An update: the very next request sees the new rules.
    admin(
        &gw,
        "/update",
        json!({"id": created.record.id, "limitTo": "[get].*/rest/api/content.*"}),
    )
    .await;
    assert_eq!(
        on(&mut conn, "/rest/api/space", &auth).await,
        (403, "rule_mismatch".into())
    );
    assert_eq!(on(&mut conn, "/rest/api/content/1", &auth).await, (200, String::new()));
    // A rotation without grace: the old value stops on the next request.
    admin(&gw, "/rotate", json!({"id": created.record.id, "graceHours": 0})).await;
    assert_eq!(
        on(&mut conn, "/rest/api/content/1", &auth).await,
        (401, "invalid_token".into())
    );

    // A deletion: the next request is refused.
    let other = gw
        .create_token(NewToken {
            label: "bob-bot".into(),
            user: Some("bob".into()),
            ..NewToken::default()
        })
        .await;
    let bob = basic("bob", &other.value);
    assert_eq!(on(&mut conn, "/rest/api/space", &bob).await, (200, String::new()));
    assert_eq!(on(&mut conn, "/rest/api/space", &bob).await, (200, String::new()));
    let admin_auth = basic("admin", ADMIN_PASSWORD);
    let id = other.record.id;
    let reply = send(
        hyper::Method::DELETE,
        &gw.url(&format!("{BASE}/delete?id={id}")),
        &[("authorization", &admin_auth)],
        "",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        on(&mut conn, "/rest/api/space", &bob).await,
        (401, "invalid_token".into())
    );
}

#[tokio::test]
async fn an_expired_token_is_refused_on_the_next_request_of_the_connection() {
    let gw = Gateway::start().await;
    let created = gw
        .create_token(NewToken {
            label: "short".into(),
            user: Some("alice".into()),
            days_until_expiry: Some(1),
            ..NewToken::default()
        })
        .await;
    let auth = basic("alice", &created.value);
    let mut conn = connect(&gw).await;
    assert_eq!(on(&mut conn, "/rest/api/space", &auth).await, (200, String::new()));
    assert_eq!(on(&mut conn, "/rest/api/space", &auth).await, (200, String::new()));
    gw.clock.advance_ms(86_400_000);
    assert_eq!(
        on(&mut conn, "/rest/api/space", &auth).await,
        (401, "token_expired".into())
    );
}
