//! Rate limits shared through Redis (SPEC §16, `rate_limit_redis`): two
//! gateways over one store share each token's bucket, so a limit of N holds
//! across replicas; when Redis cannot be reached (down from the start, or
//! stalled mid-way) each gateway answers from its own buckets, counts it in
//! `tokengate_rate_limit_fallback_total`, and never refuses or holds up a
//! request for it. Ignored unless REDIS_TEST_URL is set (see build.rs).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokengate::NewToken;

use crate::common::{Gateway, Reply, TcpProxy, basic, get};

const URL_VAR: &str = "REDIS_TEST_URL";
const SPACE: &str = "/rest/api/space";
/// A request that is held up by Redis would never finish: this only bounds
/// how long a failing test takes, it measures nothing.
const NEVER: Duration = Duration::from_secs(30);

/// The Redis to test against: the tests that need it are ignored unless
/// `REDIS_TEST_URL` was set when they were built (see build.rs).
fn redis_url() -> String {
    std::env::var(URL_VAR)
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| panic!("this test needs Redis: set {URL_VAR}"))
}

/// The address of the Redis server `url` names, for a proxy in front of it.
async fn redis_addr(url: &str) -> SocketAddr {
    let authority = url.trim_start_matches("redis://").split('/').next().unwrap();
    tokio::net::lookup_host(authority).await.unwrap().next().unwrap()
}

async fn limited_token(gw: &Gateway, limit: &str) -> String {
    let created = gw
        .create_token(NewToken {
            label: "shared".into(),
            user: Some("alice".into()),
            rate_limit: Some(limit.into()),
            ..NewToken::default()
        })
        .await;
    basic("alice", &created.value)
}

async fn call(gw: &Gateway, auth: &str) -> Reply {
    tokio::time::timeout(NEVER, get(&gw.url(SPACE), &[("authorization", auth)]))
        .await
        .expect("a request was held up by Redis")
}

fn remaining(reply: &Reply) -> u32 {
    reply.headers["x-ratelimit-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn fallbacks(gw: &Gateway) -> u64 {
    let text = String::from_utf8(get(&gw.url("/tokengate/metrics"), &[]).await.body.to_vec()).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("tokengate_rate_limit_fallback_total "))
        .map_or(0, |n| n.trim().parse().unwrap())
}

#[cfg_attr(not(have_redis), ignore = "needs Redis: set REDIS_TEST_URL")]
#[tokio::test]
async fn two_gateways_share_each_tokens_bucket_in_redis() {
    let url = redis_url();
    let a = Gateway::start_with(|c| c.rate_limit_redis = Some(url.clone())).await;
    let b = Gateway::start_over_with(a.app.store.clone(), |c| c.rate_limit_redis = Some(url.clone())).await;
    let auth = limited_token(&a, "3/min").await;
    let (first, second, third) = (call(&a, &auth).await, call(&b, &auth).await, call(&a, &auth).await);
    assert_eq!([first.status, second.status, third.status], [200, 200, 200]);
    assert_eq!(
        [remaining(&first), remaining(&second), remaining(&third)],
        [2, 1, 0],
        "one bucket"
    );
    for gw in [&a, &b] {
        let refused = call(gw, &auth).await;
        assert_eq!(
            (refused.status.as_u16(), refused.reason()),
            (429, "rate_limited".into())
        );
        let retry: u64 = refused.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=20).contains(&retry), "{retry}");
    }
    assert_eq!((fallbacks(&a).await, fallbacks(&b).await), (0, 0));
    // Another token's bucket is its own, in Redis too.
    let other = limited_token(&b, "3/min").await;
    assert_eq!(remaining(&call(&a, &other).await), 2);
}

#[cfg_attr(not(have_redis), ignore = "needs Redis: set REDIS_TEST_URL")]
#[tokio::test]
async fn a_stalled_redis_never_holds_up_a_request_and_is_used_again_when_it_answers() {
    let url = redis_url();
    let proxy = TcpProxy::start(redis_addr(&url).await, true).await;
    let via_proxy = format!("redis://{}/", proxy.addr);
    let gw = Gateway::start_with(|c| c.rate_limit_redis = Some(via_proxy)).await;
    let auth = limited_token(&gw, "3/min").await;
    let shared = call(&gw, &auth).await;
    assert_eq!((shared.status.as_u16(), remaining(&shared)), (200, 2));
    assert_eq!(fallbacks(&gw).await, 0);

    proxy.freeze(true);
    // Redis holds every answer: this replica's own bucket answers (full: it
    // never counted the call Redis did), and counts the fallback.
    let local = call(&gw, &auth).await;
    assert_eq!((local.status.as_u16(), remaining(&local)), (200, 2));
    assert_eq!(remaining(&call(&gw, &auth).await), 1);
    assert_eq!(remaining(&call(&gw, &auth).await), 0);
    assert_eq!(call(&gw, &auth).await.status, 429, "the limit holds locally meanwhile");
    assert!(fallbacks(&gw).await >= 4);

    proxy.freeze(false);
    // After the pause that spares a struggling Redis, Redis' bucket answers
    // again. It counted its first call and the one it was asked about when
    // it stalled (the script ran once the bytes got through): one call left,
    // where the local bucket has none.
    gw.clock.advance_ms(5_000);
    let again = call(&gw, &auth).await;
    assert_eq!((again.status.as_u16(), remaining(&again)), (200, 0), "Redis answered");
    assert_eq!(call(&gw, &auth).await.status, 429);
}

#[tokio::test]
async fn a_gateway_whose_redis_is_down_serves_from_its_own_buckets() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    // Needs no Redis: nothing listens there.
    let gw = Gateway::start_with(|c| c.rate_limit_redis = Some(format!("redis://{closed}/"))).await;
    let auth = limited_token(&gw, "2/hour").await;
    assert_eq!(remaining(&call(&gw, &auth).await), 1);
    assert_eq!(remaining(&call(&gw, &auth).await), 0);
    let refused = call(&gw, &auth).await;
    assert_eq!(
        (refused.status.as_u16(), refused.reason()),
        (429, "rate_limited".into())
    );
    assert_eq!(refused.headers["retry-after"], "1800");
    assert_eq!(fallbacks(&gw).await, 3);
    let unlimited = gw.token_for("bob").await;
    assert_eq!(call(&gw, &basic("bob", &unlimited)).await.status, 200);
    assert_eq!(fallbacks(&gw).await, 3, "unlimited tokens never ask Redis");
    let health: Value = get(&gw.url("/tokengate/readyz"), &[]).await.json();
    assert_eq!(health["status"], "ready", "Redis is not needed to be ready");
}
