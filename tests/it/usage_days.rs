//! Calls per day (SPEC §15.1) through the running gateway: forwarded and
//! refused calls counted per token and UTC day by the usage flush, served
//! by `GET /usage` (zero days included, own tokens or an admin's, bad input
//! refused) and summed in the listing's `calls30Days`, which `orderBy`
//! sorts; the listing's `state` and the audit log's `outcome` filters;
//! days purged after the retention and forgotten with their token.

use hyper::Method;
use serde_json::{Value, json};
use tokengate::{Clock, DAY_MS, NewToken, SettingsChange, day_of};

use crate::common::fake_confluence::ADMIN_PASSWORD;
use crate::common::{Gateway, Reply, basic, get, send};

const BASE: &str = "/rest/extender/1.0/tokenTools";

async fn call(gw: &Gateway, method: Method, path: &str, auth: &str) -> Reply {
    send(
        method,
        &gw.url(&format!("{BASE}{path}")),
        &[("authorization", auth)],
        "",
    )
    .await
}

async fn as_admin(gw: &Gateway, path: &str) -> Value {
    let reply = call(gw, Method::GET, path, &basic("admin", ADMIN_PASSWORD)).await;
    assert_eq!(reply.status, 200, "{path}: {:?}", reply.body);
    reply.json()
}

/// A token of alice that may read spaces only; returns its id and value.
async fn reader(gw: &Gateway, label: &str) -> (String, String) {
    let created = gw
        .create_token(NewToken {
            label: label.into(),
            user: Some("alice".into()),
            limit_to: Some("[get].*/rest/api/space.*".into()),
            ..NewToken::default()
        })
        .await;
    (created.record.id.clone(), created.value)
}

/// `n` calls the rules allow and `refused` they refuse.
async fn use_token(gw: &Gateway, value: &str, n: usize, refused: usize) {
    let auth = basic("alice", value);
    for _ in 0..n {
        assert_eq!(
            get(&gw.url("/rest/api/space"), &[("authorization", &auth)])
                .await
                .status,
            200
        );
    }
    for _ in 0..refused {
        assert_eq!(
            get(&gw.url("/rest/api/content"), &[("authorization", &auth)])
                .await
                .status,
            403
        );
    }
}

fn day_counts(usage: &Value) -> Vec<(i64, i64)> {
    let days = usage["days"].as_array().unwrap();
    days.iter()
        .map(|d| (d["calls"].as_i64().unwrap(), d["refused"].as_i64().unwrap()))
        .collect()
}

#[tokio::test]
async fn calls_and_refusals_count_per_day_and_usage_serves_every_day() {
    let gw = Gateway::start().await;
    let (id, value) = reader(&gw, "reader").await;
    use_token(&gw, &value, 3, 2).await;
    // A wrong secret of the token's user is no call of the token.
    let wrong = basic("alice", "tgw_wrongwrongwrongwrongwrongwrongwron");
    get(&gw.url("/rest/api/space"), &[("authorization", &wrong)]).await;
    gw.app.flush_records().await;

    let usage = as_admin(&gw, &format!("/usage?id={id}")).await;
    assert_eq!((&usage["status"], &usage["id"]), (&json!("ok"), &json!(id)));
    let days = usage["days"].as_array().unwrap();
    assert_eq!(days.len(), 30, "30 days by default");
    let today = day_of(gw.clock.now_ms());
    assert_eq!(days[29]["date"], date(today));
    assert_eq!(days[0]["date"], date(today - 29), "oldest first");
    assert_eq!(day_counts(&usage)[29], (3, 2));
    assert!(
        day_counts(&usage)[..29].iter().all(|&d| d == (0, 0)),
        "zero days are included"
    );

    // The next day counts apart; the listing sums the last 30 days.
    gw.clock.advance_ms(DAY_MS);
    use_token(&gw, &value, 1, 0).await;
    gw.app.flush_records().await;
    let usage = as_admin(&gw, &format!("/usage?id={id}&days=2")).await;
    assert_eq!(day_counts(&usage), [(3, 2), (1, 0)]);
    let listed = as_admin(&gw, "/get").await;
    assert_eq!(listed["tokens"][0]["calls30Days"], 4);
    assert_eq!(listed["tokens"][0]["counter"], 4);

    // Thirty days on, the first day has left the listing's window, not /usage's.
    gw.clock.advance_ms(29 * DAY_MS);
    let listed = as_admin(&gw, "/get").await;
    assert_eq!(listed["tokens"][0]["calls30Days"], 1);
    let usage = as_admin(&gw, &format!("/usage?id={id}&days=90")).await;
    assert_eq!(usage["days"].as_array().unwrap().len(), 90);
    assert_eq!(day_counts(&usage)[90 - 31], (3, 2));

    // Days older than the 90 kept are purged; the token keeps its counter.
    gw.clock.advance_ms(60 * DAY_MS);
    gw.app.purge_expired().await;
    let usage = as_admin(&gw, &format!("/usage?id={id}&days=90")).await;
    assert_eq!(day_counts(&usage).iter().map(|d| d.0).sum::<i64>(), 1);
    assert_eq!(gw.app.store.usage_days(&id, 0).await.unwrap().len(), 1);
    assert_eq!(as_admin(&gw, "/get").await["tokens"][0]["counter"], 4);

    // Deleting the token forgets its days.
    let deleted = call(
        &gw,
        Method::DELETE,
        &format!("/delete?id={id}"),
        &basic("admin", ADMIN_PASSWORD),
    )
    .await;
    assert_eq!(deleted.status, 200);
    assert!(gw.app.store.usage_days(&id, 0).await.unwrap().is_empty());
}

fn date(day: i64) -> Value {
    let usage_date = tokengate::day_text(day);
    json!(usage_date)
}

#[tokio::test]
async fn with_usage_details_off_nothing_is_counted() {
    let gw = Gateway::start().await;
    let (id, value) = reader(&gw, "reader").await;
    let off = SettingsChange {
        usage_details: Some(false),
        ..SettingsChange::default()
    };
    gw.app.settings.change(off).await.unwrap();
    use_token(&gw, &value, 2, 2).await;
    gw.app.flush_records().await;
    let usage = as_admin(&gw, &format!("/usage?id={id}&days=1")).await;
    assert_eq!(day_counts(&usage), [(0, 0)]);
}

#[tokio::test]
async fn usage_is_for_the_tokens_owner_or_an_admin_and_refuses_bad_input() {
    let gw = Gateway::start().await;
    let (id, value) = reader(&gw, "reader").await;
    use_token(&gw, &value, 1, 0).await;
    gw.app.flush_records().await;
    let alice = basic("alice", "alice-password");
    let bob = basic("bob", "bob-password");

    let own = call(&gw, Method::GET, &format!("/usage?id={id}&days=1"), &alice).await;
    assert_eq!((own.status.as_u16(), day_counts(&own.json())), (200, vec![(1, 0)]));
    // Alice's token through itself, too: a token may read its own usage.
    let itself = call(
        &gw,
        Method::GET,
        &format!("/usage?id={id}&days=1"),
        &basic("alice", &value),
    )
    .await;
    assert_eq!(itself.status, 403, "its rules allow spaces only: {:?}", itself.body);

    // Another user's token is as absent as an unknown one.
    let others = call(&gw, Method::GET, &format!("/usage?id={id}"), &bob).await;
    assert_eq!((others.status.as_u16(), others.reason()), (404, "not_found".to_owned()));
    assert!(others.json().get("days").is_none());
    let unknown = call(&gw, Method::GET, "/usage?id=nope", &basic("admin", ADMIN_PASSWORD)).await;
    assert_eq!(unknown.status, 404);

    for (query, field) in [
        ("", "id"),
        ("?id=", "id"),
        (&*format!("?id={id}&days=0"), "days"),
        (&*format!("?id={id}&days=91"), "days"),
        (&*format!("?id={id}&days=-1"), "days"),
        (&*format!("?id={id}&days=seven"), "days"),
        (&*format!("?id={id}&days=1&days=2"), "days"),
        (&*format!("?id={id}&id={id}"), "id"),
    ] {
        let reply = call(
            &gw,
            Method::GET,
            &format!("/usage{query}"),
            &basic("admin", ADMIN_PASSWORD),
        )
        .await;
        assert_eq!(reply.status, 400, "{query}: {:?}", reply.body);
        assert_eq!(reply.json()["field"], field, "{query}");
    }
    // A parameter in another case is not the parameter (Confluence reads names exactly).
    let other_case = call(
        &gw,
        Method::GET,
        &format!("/usage?ID={id}"),
        &basic("admin", ADMIN_PASSWORD),
    )
    .await;
    assert_eq!(other_case.json()["field"], "id");
    let post = call(
        &gw,
        Method::POST,
        &format!("/usage?id={id}"),
        &basic("admin", ADMIN_PASSWORD),
    )
    .await;
    assert_eq!(post.status, 405);
    let anonymous = send(Method::GET, &gw.url(&format!("{BASE}/usage?id={id}")), &[], "").await;
    assert_eq!(anonymous.status, 401);
}

#[tokio::test]
async fn the_listing_sorts_by_calls_and_filters_by_state_and_the_audit_by_outcome() {
    let gw = Gateway::start().await;
    // Created a millisecond apart: ties sort newest first.
    let (_, busy) = reader(&gw, "busy").await;
    gw.clock.advance_ms(1);
    let (_, idle) = reader(&gw, "idle").await;
    gw.clock.advance_ms(1);
    gw.create_token(NewToken {
        label: "anyone".into(),
        user: None,
        ..NewToken::default()
    })
    .await;
    gw.clock.advance_ms(1);
    gw.create_token(NewToken {
        label: "soon".into(),
        user: Some("bob".into()),
        days_until_expiry: Some(3),
        ..NewToken::default()
    })
    .await;
    use_token(&gw, &busy, 3, 1).await;
    use_token(&gw, &idle, 1, 0).await;
    gw.app.flush_records().await;
    let labels = |page: &Value| -> String {
        let tokens = page["tokens"].as_array().unwrap();
        let labels: Vec<&str> = tokens.iter().map(|t| t["label"].as_str().unwrap()).collect();
        labels.join(",")
    };
    assert_eq!(
        labels(&as_admin(&gw, "/get?orderBy=-calls").await),
        "busy,idle,soon,anyone"
    );
    assert_eq!(
        labels(&as_admin(&gw, "/get?orderBy=label").await),
        "anyone,busy,idle,soon"
    );
    assert_eq!(
        labels(&as_admin(&gw, "/get?orderBy=-label&maxResults=2").await),
        "soon,idle"
    );
    assert_eq!(
        labels(&as_admin(&gw, "/get?orderBy=expires").await),
        "soon,anyone,idle,busy"
    );
    assert_eq!(labels(&as_admin(&gw, "/get?state=unbound").await), "anyone");
    assert_eq!(labels(&as_admin(&gw, "/get?state=expiring").await), "soon");
    assert_eq!(as_admin(&gw, "/get?state=active").await["total"], 4);
    assert_eq!(as_admin(&gw, "/get?state=all").await["total"], 4);
    gw.clock.advance_ms(4 * DAY_MS);
    assert_eq!(labels(&as_admin(&gw, "/get?state=expired").await), "soon");
    // A user's listing is filtered within their own tokens.
    let alice = call(
        &gw,
        Method::GET,
        "/get?state=unbound",
        &basic("alice", "alice-password"),
    )
    .await;
    assert_eq!(alice.json()["total"], 0);

    let entries = |outcome: &str| {
        let gw = &gw;
        let path = format!("/audit?outcome={outcome}");
        async move { as_admin(gw, &path).await["entries"].as_array().unwrap().clone() }
    };
    let refused = entries("refused").await;
    assert_eq!(refused.len(), 1);
    assert_eq!(
        (&refused[0]["decision"], &refused[0]["reason"]),
        (&json!("deny"), &json!("rule_mismatch"))
    );
    assert_eq!(entries("allowed").await.len(), 4);
    assert!(entries("all").await.len() > 5, "management entries too");

    for (query, field) in [
        ("/get?orderBy=calls30Days", "orderBy"),
        ("/get?orderBy=LABEL", "orderBy"),
        ("/get?orderBy=--label", "orderBy"),
        // A `+` in a query is a space.
        ("/get?orderBy=+label", "orderBy"),
        ("/get?orderBy=%2Blabel", "orderBy"),
        ("/get?orderBy=label;DROP%20TABLE%20tokens", "orderBy"),
        ("/get?state=Active", "state"),
        ("/get?state=revoked", "state"),
        ("/audit?outcome=denied", "outcome"),
    ] {
        let reply = call(&gw, Method::GET, query, &basic("admin", ADMIN_PASSWORD)).await;
        assert_eq!(reply.status, 400, "{query}: {:?}", reply.body);
        assert_eq!(reply.json()["field"], field, "{query}");
    }
    assert_eq!(as_admin(&gw, "/get").await["total"], 4, "nothing was dropped");
}

#[tokio::test]
async fn a_space_refusal_names_its_space_in_the_audit_log() {
    let gw = Gateway::start().await;
    let created = gw
        .create_token(NewToken {
            label: "docs only".into(),
            user: Some("alice".into()),
            spaces: Some("DOCS,KB:read".into()),
            ..NewToken::default()
        })
        .await;
    let auth = basic("alice", &created.value);
    let refused = get(&gw.url("/rest/api/space?spaceKey=SECRET"), &[("authorization", &auth)]).await;
    assert_eq!(refused.reason(), "space_not_allowed");
    gw.app.flush_records().await;
    let refused = as_admin(&gw, "/audit?outcome=refused").await;
    assert_eq!(refused["total"], 1);
    assert_eq!(refused["entries"][0]["detail"], "SECRET");
}
