//! What only the PostgreSQL store does: deletions pushed to every handle
//! (LISTEN/NOTIFY) and the feed reconnecting, and a gateway that starts
//! while its database is unavailable, fails closed for new tokens during an
//! outage while verified ones keep working, and recovers. Outages come from
//! a TCP proxy between the store and the server. Skipped without
//! POSTGRES_TEST_URL, except what needs no server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::Connection;
use tokengate::{Actor, NewToken};
use tokengate::{ChangeKind, PgStore, Restrictions, Settings, StoreError, TokenRecord, TokenStore};
use tokio::sync::mpsc;

use crate::common::{Gateway, PgSchema, TcpProxy, basic, get};

const SPACE: &str = "/rest/api/space";
/// Generous: the store retries with backoff (capped at 5 s) and each
/// attempt may wait for a connection up to 3 s.
const RECOVERY: Duration = Duration::from_secs(20);

fn record(id: &str) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        label: id.into(),
        user: None,
        author: "test".into(),
        limit_to: String::new(),
        ip: String::new(),
        created_at: 0,
        valid_until: None,
        token_hash: "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaA".into(),
        lookup: "tgw_feedtest".into(),
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
    }
}

/// Deletes fresh tokens through `writer` until one arrives on `feed`: the
/// feed is listening (it connects in the background). Returns how many
/// tries it took. `prefix` makes the ids unique: the channel is shared by
/// every schema of the database, so other tests' deletions arrive too.
async fn until_feed_listens(
    prefix: &str,
    writer: &dyn TokenStore,
    feed: &mut mpsc::Receiver<(ChangeKind, String)>,
    deadline: Duration,
) -> usize {
    let give_up = Instant::now() + deadline;
    for attempt in 1.. {
        let id = format!("{prefix}-probe-{attempt}");
        writer.insert_token(&record(&id), None).await.unwrap();
        assert!(writer.delete_token(&id, 0).await.unwrap().is_some());
        if tokio::time::timeout(Duration::from_millis(200), announced(feed, &id))
            .await
            .is_ok()
        {
            return attempt;
        }
        assert!(Instant::now() < give_up, "the feed never announced a deletion");
    }
    unreachable!()
}

/// Waits for the deletion of `id` on the feed, passing over other ids (other tests').
async fn announced(feed: &mut mpsc::Receiver<(ChangeKind, String)>, id: &str) {
    announced_change(feed, ChangeKind::Delete, id).await;
}

async fn announced_change(feed: &mut mpsc::Receiver<(ChangeKind, String)>, kind: ChangeKind, id: &str) {
    while let Some((got_kind, got)) = feed.recv().await {
        if got == id {
            assert_eq!(got_kind, kind, "{id}");
            return;
        }
    }
    panic!("the feed ended");
}

async fn wait_until(what: &str, deadline: Duration, mut done: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < deadline, "{what}: not within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

#[cfg_attr(not(have_postgres), ignore = "needs PostgreSQL: set POSTGRES_TEST_URL")]
#[tokio::test]
async fn the_feed_announces_deletions_made_through_another_handle() {
    let schema = PgSchema::create().await;
    let (a, b) = (
        tokengate::open_store(&schema.url).await.unwrap(),
        tokengate::open_store(&schema.url).await.unwrap(),
    );
    let mut feed = a.revocation_feed().expect("PostgreSQL pushes deletions");
    until_feed_listens(&schema.name, b.as_ref(), &mut feed, Duration::from_secs(10)).await;

    let id = |n: u8| format!("{}-x{n}", schema.name);
    for n in 1..=3 {
        b.insert_token(
            &TokenRecord {
                user: Some("Carol".into()),
                ..record(&id(n))
            },
            None,
        )
        .await
        .unwrap();
    }
    let started = Instant::now();
    assert!(b.delete_token(&id(1), 0).await.unwrap().is_some());
    tokio::time::timeout(Duration::from_secs(1), announced(&mut feed, &id(1)))
        .await
        .expect("announced within a second");
    eprintln!("deletion to announcement: {:?}", started.elapsed());
    assert_eq!(b.delete_user_tokens("carol", 0).await.unwrap().len(), 2);
    for n in [2, 3] {
        tokio::time::timeout(Duration::from_secs(1), announced(&mut feed, &id(n)))
            .await
            .expect("every deleted token is announced");
    }
    // An update is announced as one, and an update of nothing is not.
    b.insert_token(&record(&id(4)), None).await.unwrap();
    let restrictions = Restrictions {
        label: "renamed".into(),
        limit_to: "[get]/rest/api/space".into(),
        ip: String::new(),
        rate_limit: Some("10/min".into()),
        enforce: false,
        spaces: None,
    };
    let updated = b.update_token(&id(4), &restrictions, 0).await.unwrap().unwrap();
    assert_eq!(
        (updated.rate_limit.as_deref(), updated.enforce),
        (Some("10/min"), false)
    );
    tokio::time::timeout(
        Duration::from_secs(1),
        announced_change(&mut feed, ChangeKind::Update, &id(4)),
    )
    .await
    .expect("updates are announced within a second");
    assert!(b.update_token(&id(1), &restrictions, 0).await.unwrap().is_none());
    // A deletion that deletes nothing announces nothing.
    assert!(b.delete_token(&id(1), 0).await.unwrap().is_none());
    let again = tokio::time::timeout(Duration::from_millis(200), announced(&mut feed, &id(1))).await;
    assert!(again.is_err(), "announced a deletion that did not happen");
    a.close().await;
    b.close().await;
}

#[cfg_attr(not(have_postgres), ignore = "needs PostgreSQL: set POSTGRES_TEST_URL")]
#[tokio::test]
async fn the_feed_reconnects_after_losing_its_connection() {
    let schema = PgSchema::create().await;
    let proxy = TcpProxy::start(schema.server_addr().await, true).await;
    let listening = tokengate::open_store(&schema.url_via(proxy.addr)).await.unwrap();
    let writer = tokengate::open_store(&schema.url).await.unwrap();
    let mut feed = listening.revocation_feed().unwrap();
    until_feed_listens(&schema.name, writer.as_ref(), &mut feed, Duration::from_secs(10)).await;

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.forward(true);
    let again = format!("{}-again", schema.name);
    let tries = until_feed_listens(&again, writer.as_ref(), &mut feed, RECOVERY).await;
    eprintln!("the feed announced again after {tries} deletions");
    listening.close().await;
    writer.close().await;
}

/// The CLI's open fails when the database does not answer; the gateway's
/// returns at once and reports not ready. Needs no PostgreSQL server.
#[tokio::test]
async fn an_unreachable_database_fails_the_cli_and_leaves_the_gateway_not_ready() {
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("postgres://tokengate@127.0.0.1:{closed_port}/nowhere");
    assert!(tokengate::open_store(&url).await.is_err());
    let serving = tokengate::open_store_for_serving(&url).await.unwrap();
    assert!(matches!(serving.ping().await, Err(StoreError::NotReady)));
    assert!(matches!(
        serving.tokens_by_lookup("tgw_x").await,
        Err(StoreError::NotReady)
    ));
    serving.close().await;
}

#[cfg_attr(not(have_postgres), ignore = "needs PostgreSQL: set POSTGRES_TEST_URL")]
#[tokio::test]
async fn a_gateway_starts_without_its_database_and_becomes_ready_when_it_answers() {
    let schema = PgSchema::create().await;
    // What another replica stored before this one starts.
    let other = PgStore::open(&schema.url).await.unwrap();
    let stored = Settings {
        usage_details: true,
        audit_log: false,
    };
    other.save_settings(stored).await.unwrap();

    let proxy = TcpProxy::start(schema.server_addr().await, false).await;
    let store = Arc::new(PgStore::open_for_serving(&schema.url_via(proxy.addr)).await.unwrap());
    let gw = Gateway::start_over(store).await;
    assert_eq!(get(&gw.url("/tokengate/healthz"), &[]).await.status, 200);
    assert_eq!(get(&gw.url("/tokengate/readyz"), &[]).await.status, 503);
    assert_eq!(
        gw.app.settings.get(),
        Settings::default(),
        "defaults until the store answers"
    );
    // A token cannot be checked: refused with 500, never forwarded.
    let unknown = basic("alice", "tgw_0123456789abcdefghijklmnopqrstuvwxyz");
    let reply = get(&gw.url(SPACE), &[("authorization", &unknown)]).await;
    assert_eq!((reply.status.as_u16(), reply.reason()), (500, "internal_error".into()));
    assert_eq!(gw.upstream.count(), 0);

    proxy.forward(true);
    let took = wait_until("ready", RECOVERY, async || {
        get(&gw.url("/tokengate/readyz"), &[]).await.status == 200
    })
    .await;
    eprintln!("ready {took:?} after the database came back");
    wait_until("stored settings loaded", Duration::from_secs(5), async || {
        gw.app.settings.get() == stored
    })
    .await;
    let token = gw.token_for("alice").await;
    assert_eq!(
        get(&gw.url(SPACE), &[("authorization", &basic("alice", &token))])
            .await
            .status,
        200
    );
    gw.stop().await;
    other.close().await;
}

#[cfg_attr(not(have_postgres), ignore = "needs PostgreSQL: set POSTGRES_TEST_URL")]
#[tokio::test]
async fn during_an_outage_verified_tokens_keep_working_and_new_ones_fail_closed() {
    let schema = PgSchema::create().await;
    let proxy = TcpProxy::start(schema.server_addr().await, true).await;
    let store = Arc::new(PgStore::open(&schema.url_via(proxy.addr)).await.unwrap());
    let gw = Gateway::start_over(store).await;
    let warm = basic("alice", &gw.token_for("alice").await);
    let cold = basic("bob", &gw.token_for("bob").await);
    assert_eq!(get(&gw.url(SPACE), &[("authorization", &warm)]).await.status, 200);

    proxy.cut();
    assert_eq!(get(&gw.url(SPACE), &[("authorization", &warm)]).await.status, 200);
    let reply = get(&gw.url(SPACE), &[("authorization", &cold)]).await;
    assert_eq!((reply.status.as_u16(), reply.reason()), (500, "internal_error".into()));
    assert_eq!(get(&gw.url("/tokengate/readyz"), &[]).await.status, 503);
    assert_eq!(gw.upstream.count(), 2);

    proxy.forward(true);
    wait_until("ready again", RECOVERY, async || {
        get(&gw.url("/tokengate/readyz"), &[]).await.status == 200
    })
    .await;
    assert_eq!(get(&gw.url(SPACE), &[("authorization", &cold)]).await.status, 200);
    // Usage and audit of the outage were kept and written once it ended.
    gw.app.flush_records().await;
    let alice = gw
        .app
        .store
        .list_tokens(&tokengate::TokenQuery {
            user: Some("alice".into()),
            max_results: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(alice.items[0].record.counter, 2);
    assert_eq!(gw.request_audit().await.len(), 4);
    gw.stop().await;
}

/// A token created through one gateway and deleted through another (here
/// two in-process gateways on one schema): refused within a second,
/// warm cache included, through the pushed deletion.
#[cfg_attr(not(have_postgres), ignore = "needs PostgreSQL: set POSTGRES_TEST_URL")]
#[tokio::test]
async fn a_token_deleted_through_one_gateway_is_refused_by_another_within_a_second() {
    let schema = PgSchema::create().await;
    let a = Gateway::start_over(Arc::new(PgStore::open(&schema.url).await.unwrap())).await;
    let b = Gateway::start_over(Arc::new(PgStore::open(&schema.url).await.unwrap())).await;
    let created = a
        .create_token(NewToken {
            label: "shared".into(),
            user: Some("alice".into()),
            ..NewToken::default()
        })
        .await;
    let auth = basic("alice", &created.value);
    assert_eq!(get(&b.url(SPACE), &[("authorization", &auth)]).await.status, 200);
    a.app.tokens.delete(&created.record.id, &Actor::cli()).await.unwrap();
    let took = wait_until("refused by the other gateway", Duration::from_secs(1), async || {
        get(&b.url(SPACE), &[("authorization", &auth)]).await.status == 401
    })
    .await;
    eprintln!("refused by the other gateway after {took:?}");
    a.stop().await;
    b.stop().await;
}

/// `sslmode` in the URL is honoured: the store speaks TLS (rustls) to the server.
#[cfg_attr(not(have_postgres), ignore = "needs PostgreSQL: set POSTGRES_TEST_URL")]
#[tokio::test]
async fn the_store_connects_over_tls_when_the_url_requires_it() {
    let schema = PgSchema::create().await;
    let mut check = sqlx::PgConnection::connect(&schema.url).await.unwrap();
    let server_has_tls: String = sqlx::query_scalar("SHOW ssl").fetch_one(&mut check).await.unwrap();
    check.close().await.unwrap();
    if server_has_tls != "on" {
        eprintln!("skipping: the test server does not offer TLS");
        return;
    }
    let store = tokengate::open_store(&format!("{}&sslmode=require", schema.url))
        .await
        .unwrap();
    store.insert_token(&record("over-tls"), None).await.unwrap();
    assert!(store.token("over-tls").await.unwrap().is_some());
    store.close().await;
}
