//! What Confluence receives and what the client gets back: forwarding
//! headers, Host, Location rewriting, streaming bodies, and the probes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};

use crate::common::{Gateway, basic, get, send};

#[tokio::test]
async fn forwarding_headers_and_host_are_set() {
    let gw = Gateway::start().await;
    let token = gw.token_for("alice").await;
    let headers = [
        ("authorization", basic("alice", &token)),
        ("host", "wiki.example.com".to_owned()),
        ("x-forwarded-for", "203.0.113.9".to_owned()),
        ("connection", "keep-alive, x-hop".to_owned()),
        ("x-hop", "secret".to_owned()),
        ("accept", "application/json".to_owned()),
    ];
    let headers: Vec<_> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        get(&gw.url("/rest/api/space?spaceKey=DOCS&x=a+b"), &headers)
            .await
            .status,
        200
    );
    let seen = gw.upstream.last();
    assert_eq!(seen.target, "/rest/api/space?spaceKey=DOCS&x=a+b");
    assert_eq!(seen.header("host"), Some("wiki.example.com"));
    assert_eq!(seen.header("x-forwarded-host"), Some("wiki.example.com"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-for"), Some("203.0.113.9, 127.0.0.1"));
    assert_eq!(seen.header("accept"), Some("application/json"));
    assert_eq!(seen.header("x-hop"), None);
}

#[tokio::test]
async fn host_is_replaced_when_not_preserved() {
    let gw = Gateway::start_with(|c| c.preserve_host = false).await;
    get(&gw.url("/rest/api/space"), &[("host", "wiki.example.com")]).await;
    let seen = gw.upstream.last();
    assert_eq!(seen.header("host"), Some(gw.upstream.addr.to_string().as_str()));
    assert_eq!(seen.header("x-forwarded-host"), Some("wiki.example.com"));
}

#[tokio::test]
async fn redirects_to_the_upstream_origin_point_at_the_gateway() {
    let gw = Gateway::start_with(|c| c.public_url = Some("https://wiki.example.com".parse().unwrap())).await;
    let reply = get(&gw.url("/redirect"), &[]).await;
    assert_eq!(reply.status, 302);
    assert_eq!(
        reply.headers["location"],
        "https://wiki.example.com/login.action?next=%2Fx"
    );
}

#[tokio::test]
async fn probes_answer_and_are_never_forwarded() {
    let gw = Gateway::start().await;
    let reply = get(&gw.url("/tokengate/healthz"), &[]).await;
    assert_eq!(
        (reply.status.as_u16(), reply.json()["status"].clone()),
        (200, "ok".into())
    );
    let reply = get(&gw.url("/tokengate/readyz"), &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        send(Method::POST, &gw.url("/tokengate/healthz"), &[], "").await.status,
        405
    );
    assert_eq!(gw.upstream.count(), 0);
    gw.app.store.close().await;
    assert_eq!(get(&gw.url("/tokengate/readyz"), &[]).await.status, 503);
}

#[tokio::test]
async fn management_routes_are_never_forwarded() {
    let gw = Gateway::start().await;
    let token = gw.token_for("admin").await;
    let reply = get(
        &gw.url("/rest/extender/1.0/tokenTools/get"),
        &[("authorization", &basic("admin", &token))],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["status"], "ok", "answered by the gateway itself");
    assert_eq!(gw.upstream.count(), 0);
}

/// 256 MiB generated on the fly; the second chunk is only produced once
/// Confluence has received the first, which a buffering gateway would never allow.
#[tokio::test]
async fn a_large_upload_streams_through_with_its_checksum() {
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 256;
    let gw = Gateway::start().await;
    let token = gw.token_for("alice").await;
    let received = gw.upstream.bytes_received.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
    let producer = tokio::spawn(async move {
        let mut hasher = Sha256::new();
        for i in 0..CHUNKS {
            let chunk = Bytes::from(vec![(i % 251) as u8; CHUNK]);
            hasher.update(&chunk);
            tx.send(chunk).await.unwrap();
            if i == 0 {
                let waited = tokio::time::timeout(Duration::from_secs(20), async {
                    while received.load(Ordering::SeqCst) == 0 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
                .await;
                assert!(
                    waited.is_ok(),
                    "the first chunk never reached Confluence: the body was buffered"
                );
            }
        }
        <[u8; 32]>::from(hasher.finalize())
    });
    let body = ChannelBody(rx);
    let client: Client<HttpConnector, _> = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let request = Request::put(gw.url("/rest/api/content/1/child/attachment"))
        .header("authorization", basic("alice", &token))
        .body(body)
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap();
    let sent = producer.await.unwrap();
    let seen = gw.upstream.last();
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.body_len, (CHUNK * CHUNKS) as u64);
    assert_eq!(seen.body_sha256, sent);
}

/// A request body fed from a channel, so the test controls when bytes are sent.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_refuses_new_ones() {
    let gw = Gateway::start().await;
    let (url, addr) = (gw.url("/delay"), gw.addr);
    let in_flight = tokio::spawn(async move { get(&url, &[]).await });
    while gw.upstream.count() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw.stop().await;
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["delayed"], true);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}
