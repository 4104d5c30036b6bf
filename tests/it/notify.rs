//! Token events and the webhook (SPEC §18) against a receiver in the test
//! suite: every event with its body and a verifiable signature, thresholds
//! on the gateway's manual clock, retries, an event that outlives a restart,
//! and two replicas on PostgreSQL sending each event once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use hyper::Method;
use serde_json::{Value, json};
use sha2::Sha256;
use tokengate::{Clock, Config, NewToken, PgStore};

use crate::common::fake_confluence::ADMIN_PASSWORD;
use crate::common::process::cli_with;
use crate::common::webhook::Receiver;
use crate::common::{Gateway, PgSchema, basic, get, send};

const BASE: &str = "/rest/extender/1.0/tokenTools";
const DAY_MS: i64 = 86_400_000;
const SECRET: &str = "team-webhook-secret";

fn notifying(receiver: &Receiver) -> impl FnOnce(&mut Config) {
    let url = receiver.url();
    move |c| {
        c.notify_url = Some(url.parse().unwrap());
        c.notify_secret = Some(SECRET.into());
        c.failed_auth_per_minute = 2;
    }
}

async fn api(gw: &Gateway, path: &str, body: Value) -> Value {
    let admin = basic("admin", ADMIN_PASSWORD);
    let headers = [("authorization", admin.as_str()), ("content-type", "application/json")];
    let reply = send(
        Method::POST,
        &gw.url(&format!("{BASE}{path}")),
        &headers,
        body.to_string(),
    )
    .await;
    assert_eq!(reply.status, 200, "{path}: {:?}", reply.body);
    reply.json()
}

fn events(taken: &[Value]) -> Vec<&str> {
    taken.iter().map(|e| e["event"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn every_event_arrives_with_its_body_and_a_verifiable_signature() {
    let receiver = Receiver::start().await;
    let gw = Gateway::start_with(notifying(&receiver)).await;
    let created = api(
        &gw,
        "/set",
        json!({"label": "<@here> ci & co", "userName": "alice", "daysUntilExpiry": 30}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    api(&gw, "/update", json!({"id": id, "rateLimit": "10/min"})).await;
    api(&gw, "/rotate", json!({"id": id, "graceHours": 1})).await;
    let grace_until = gw.clock.now_ms() + 3_600_000;
    let started = gw.clock.now_ms();
    // A client that fails too often, refused three times over in one
    // minute: one event with the count, once the minute is over.
    for _ in 0..5 {
        let wrong = basic("alice", "tgw_wrongwrongwrongwrongwrongwrongwrong");
        get(&gw.url("/rest/api/space"), &[("authorization", &wrong)]).await;
    }
    assert_eq!(receiver.wait_for(3).await.len(), 3, "not yet: the minute is not over");
    gw.clock.advance_ms(60_000);
    receiver.wait_for(4).await;
    let admin = basic("admin", ADMIN_PASSWORD);
    let reply = send(
        Method::DELETE,
        &gw.url(&format!("{BASE}/delete?id={id}")),
        &[("authorization", &admin)],
        "",
    )
    .await;
    assert_eq!(reply.status, 200);

    let taken = receiver.wait_for(5).await;
    assert_eq!(
        events(&taken),
        [
            "token.created",
            "token.updated",
            "token.rotated",
            "auth.throttled",
            "token.deleted"
        ]
    );
    let created_event = &taken[0];
    assert_eq!(
        created_event["token"],
        json!({"id": id, "label": "<@here> ci & co", "user": "alice",
               "validUntil": created["validUntil"], "upstreamTokenId": null})
    );
    let text = created_event["text"].as_str().unwrap();
    assert!(
        text.starts_with("tokengate: token '&lt;@here&gt; ci &amp; co' of alice was created"),
        "{text}"
    );
    assert_eq!(taken[1]["detail"]["changes"], json!({"rateLimit": [null, "10/min"]}));
    assert_eq!(taken[2]["detail"]["graceUntil"], json!(grace_until));
    assert_eq!(taken[3]["token"], Value::Null);
    assert_eq!(taken[3]["detail"]["clientIp"], "127.0.0.1");
    assert_eq!(taken[3]["detail"]["refused"], 3);
    let text = taken[3]["text"].as_str().unwrap();
    assert!(text.contains("client 127.0.0.1 was refused 3 times"), "{text}");
    let ids: HashSet<&str> = taken.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 5, "each event its own id");

    for delivery in receiver.deliveries() {
        let timestamp = delivery.header("x-tokengate-timestamp").expect("signed");
        let seconds: i64 = timestamp.parse().unwrap();
        assert!(
            (started / 1000..=gw.clock.now_ms() / 1000).contains(&seconds),
            "{timestamp}"
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("{timestamp}.{}", delivery.body).as_bytes());
        let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            delivery.header("x-tokengate-signature"),
            Some(format!("sha256={expected}").as_str())
        );
        assert_eq!(delivery.header("content-type"), Some("application/json"));
    }
    // Changes made with the CLI are told too (the gateway's sender sends them).
    let dir = gw.dir.path().to_owned();
    let database = gw.app.config.database_url.clone();
    let out = cli_with(
        &dir,
        &[
            "token",
            "create",
            "--label",
            "from-cli",
            "--unbound",
            "--database",
            &database,
        ],
        &[("TOKENGATE_NOTIFY_URL", &receiver.url())],
        "",
    )
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The CLI stamps the event with the system clock; the gateway's clock is
    // a test's, which must reach that time for the event to be due.
    gw.clock.advance_ms(60_000);
    let taken = receiver.wait_for(6).await;
    assert_eq!(taken[5]["event"], "token.created");
    assert_eq!(taken[5]["token"]["label"], "from-cli");
    assert_eq!(taken[5]["token"]["user"], Value::Null);
}

#[tokio::test]
async fn expiry_warnings_fire_once_per_threshold_and_expiry_once() {
    let receiver = Receiver::start().await;
    let gw = Gateway::start_with(|c| {
        notifying(&receiver)(c);
        c.expiry_warning_days = vec![7, 1];
    })
    .await;
    let check = || async { gw.app.events.check_expiry(&gw.app.metrics).await.unwrap() };
    let token = gw
        .create_token(NewToken {
            label: "nightly".into(),
            user: Some("bob".into()),
            days_until_expiry: Some(10),
            ..NewToken::default()
        })
        .await;
    receiver.wait_for(1).await;
    check().await;
    gw.clock.advance_ms(3 * DAY_MS + DAY_MS / 2); // 6.5 days left
    check().await;
    check().await;
    let taken = receiver.wait_for(2).await;
    assert_eq!(taken[1]["event"], "token.expiring");
    assert_eq!(taken[1]["detail"], json!({"threshold": 7, "daysLeft": 7}));
    let text = taken[1]["text"].as_str().unwrap();
    assert!(
        text.starts_with("tokengate: token 'nightly' of bob expires in 7 days, on "),
        "{text}"
    );
    let listed = get(
        &gw.url(&format!("{BASE}/get")),
        &[("authorization", &basic("admin", ADMIN_PASSWORD))],
    )
    .await;
    assert_eq!(listed.json()["tokens"][0]["expiringSoon"], true);
    let metrics = String::from_utf8_lossy(&get(&gw.url("/tokengate/metrics"), &[]).await.body).into_owned();
    assert!(metrics.contains("tokengate_tokens{state=\"expiring\"} 1"), "{metrics}");

    gw.clock.advance_ms(6 * DAY_MS); // half a day left: the one-day warning
    check().await;
    gw.clock.advance_ms(DAY_MS); // expired
    check().await;
    check().await;
    let taken = receiver.wait_for(4).await;
    assert_eq!(
        events(&taken),
        ["token.created", "token.expiring", "token.expiring", "token.expired"]
    );
    assert_eq!(taken[2]["detail"]["threshold"], 1);
    assert_eq!(taken[3]["token"]["id"], token.record.id.as_str());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.taken().len(), 4, "nothing twice");
    let metrics = String::from_utf8_lossy(&get(&gw.url("/tokengate/metrics"), &[]).await.body).into_owned();
    assert!(metrics.contains("tokengate_tokens{state=\"expired\"} 1"), "{metrics}");

    // A token made with 3 days to live gets no 7-day warning (its creation
    // told when it expires), but the one-day one.
    gw.create_token(NewToken {
        label: "short".into(),
        user: Some("bob".into()),
        days_until_expiry: Some(3),
        ..NewToken::default()
    })
    .await;
    check().await;
    gw.clock.advance_ms(2 * DAY_MS + DAY_MS / 2);
    check().await;
    let taken = receiver.wait_for(6).await;
    assert_eq!(taken[5]["event"], "token.expiring");
    assert_eq!(taken[5]["detail"]["threshold"], 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.taken().len(), 6);
}

#[tokio::test]
async fn a_receiver_that_fails_is_retried_with_the_same_event() {
    let receiver = Receiver::start().await;
    receiver.fail_next.store(2, std::sync::atomic::Ordering::SeqCst);
    let gw = Gateway::start_with(notifying(&receiver)).await;
    gw.token_for("alice").await;
    let attempts = |n: usize| {
        let receiver = receiver.clone();
        async move {
            for _ in 0..500 {
                if receiver.deliveries().len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("attempt {n} did not come");
        }
    };
    attempts(1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        receiver.deliveries().len(),
        1,
        "not before its time (10 s on the gateway's clock)"
    );
    gw.clock.advance_ms(10_000);
    attempts(2).await;
    gw.clock.advance_ms(20_000);
    let taken = receiver.wait_for(1).await;
    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), 3);
    assert!(
        deliveries.iter().all(|d| d.body == deliveries[0].body),
        "the same body each time"
    );
    assert_eq!(taken[0]["event"], "token.created");
}

#[tokio::test]
async fn an_event_raised_while_the_receiver_is_down_arrives_after_a_restart() {
    let receiver = Receiver::start().await;
    receiver.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let gw = Gateway::start_with(notifying(&receiver)).await;
    gw.token_for("alice").await;
    while receiver.deliveries().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let gw = gw.reopen(|_| {}).await;
    receiver.down.store(false, std::sync::atomic::Ordering::SeqCst);
    gw.clock.advance_ms(60_000);
    let taken = receiver.wait_for(1).await;
    assert_eq!(taken[0]["event"], "token.created");
    assert_eq!(taken[0]["token"]["user"], "alice");
}

#[cfg_attr(not(have_postgres), ignore = "needs PostgreSQL: set POSTGRES_TEST_URL")]
#[tokio::test]
async fn two_replicas_on_postgres_send_each_event_once() {
    let schema = PgSchema::create().await;
    let receiver = Receiver::start().await;
    let a = Gateway::start_over_with(
        Arc::new(PgStore::open(&schema.url).await.unwrap()),
        notifying(&receiver),
    )
    .await;
    let b = Gateway::start_over_with(
        Arc::new(PgStore::open(&schema.url).await.unwrap()),
        notifying(&receiver),
    )
    .await;
    for n in 0..30 {
        let gw = if n % 2 == 0 { &a } else { &b };
        gw.create_token(NewToken {
            label: format!("bot-{n}"),
            ..NewToken::default()
        })
        .await;
    }
    let taken = receiver.wait_for(30).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let taken_again = receiver.taken();
    assert_eq!(taken_again.len(), 30, "each event once: {taken:#?}");
    let labels: HashSet<&str> = taken_again
        .iter()
        .map(|e| e["token"]["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels.len(), 30);
}

#[tokio::test]
async fn two_senders_and_a_slow_receiver_see_each_event_once() {
    let receiver = Receiver::start().await;
    let first = Gateway::start_with(notifying(&receiver)).await;
    let store = first.app.store.clone();
    let second = Gateway::start_over_with(store, notifying(&receiver)).await;
    // Each delivery takes the receiver 15 s (of both gateways' clocks; and
    // 200 ms of real time, so that both senders look for due events while a
    // delivery is under way): a batch of events claimed at once would
    // outlive its 60 s lease.
    *receiver.delay.lock().unwrap() = Duration::from_millis(200);
    let clocks = [first.clock.clone(), second.clock.clone()];
    *receiver.on_request.lock().unwrap() = Some(Box::new(move || {
        for clock in &clocks {
            clock.advance_ms(15_000);
        }
    }));
    // Sixteen events queued before either sender can claim them (the CLI
    // stamps them with the system clock, ahead of the gateways' clocks).
    let database = first.app.config.database_url.clone();
    for n in 0..16 {
        let label = format!("bot-{n}");
        let out = cli_with(
            first.dir.path(),
            &[
                "token",
                "create",
                "--label",
                &label,
                "--unbound",
                "--database",
                &database,
            ],
            &[("TOKENGATE_NOTIFY_URL", &receiver.url())],
            "",
        )
        .await;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    first.clock.advance_ms(60_000);
    second.clock.advance_ms(60_000);
    receiver.wait_for(16).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let deliveries = receiver.deliveries();
    let ids: HashSet<String> = deliveries
        .iter()
        .map(|d| d.json()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!((deliveries.len(), ids.len()), (16, 16), "each event once");
}

#[tokio::test]
async fn without_a_webhook_nothing_is_queued() {
    let gw = Gateway::start().await;
    gw.token_for("alice").await;
    gw.app.events.check_expiry(&gw.app.metrics).await.unwrap();
    let now = gw.clock.now_ms();
    assert!(
        gw.app
            .store
            .claim_events(now + DAY_MS, now + 2 * DAY_MS, 10)
            .await
            .unwrap()
            .is_empty()
    );
}
