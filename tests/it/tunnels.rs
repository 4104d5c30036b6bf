//! Upgraded connections (WebSocket) stay under the gateway's limits (SPEC
//! §12): each counts toward `max_connections` for as long as it lives, is
//! closed when the gateway drains, and a tunnel opened with a token is
//! closed within 1 s of that token being deleted, rotated past its grace,
//! or expiring.

use std::time::{Duration, Instant};

use tokengate::{Actor, NewToken};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{Gateway, basic, open_tunnel};

const WS: &str = "/rest/ws";

/// A tunnel opened with `authorization`, checked to echo.
async fn tunnel(gw: &Gateway, authorization: Option<&str>) -> TcpStream {
    let (head, mut stream) = open_tunnel(gw, WS, authorization).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    echoes(&mut stream, b"ping").await;
    stream
}

/// Checks that `stream` is an open tunnel: `bytes` come back.
async fn echoes(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).await.unwrap();
    let mut echo = vec![0u8; bytes.len()];
    stream.read_exact(&mut echo).await.unwrap();
    assert_eq!(echo, bytes);
}

/// A token of alice's, expiring in `days` (or never).
async fn alice_s(gw: &Gateway, days: Option<i64>) -> tokengate::CreatedToken {
    gw.create_token(NewToken {
        label: "ws".into(),
        user: Some("alice".into()),
        days_until_expiry: days,
        ..NewToken::default()
    })
    .await
}

/// How long until the gateway closes `stream` (it must within `limit`).
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buf)).await {
            Err(_) => panic!("the tunnel was still open after {limit:?}"),
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn tunnels_count_toward_max_connections_for_as_long_as_they_live() {
    let gw = Gateway::start_with(|c| c.max_connections = 2).await;
    let first = tunnel(&gw, None).await;
    let _second = tunnel(&gw, None).await;
    assert_eq!(gw.app.tunnels.len(), 2);
    // Both places are taken by tunnels: a third connection is refused.
    assert!(healthz(&gw).await.starts_with("HTTP/1.1 503"));
    // Once a tunnel ends, its place is free again.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !healthz(&gw).await.starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "the ended tunnel kept its place");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET /tokengate/healthz` on a connection of its own: the whole answer.
async fn healthz(gw: &Gateway) -> String {
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let _ = stream
        .write_all(b"GET /tokengate/healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer).await;
    answer
}

#[tokio::test]
async fn tunnels_are_closed_when_the_gateway_drains() {
    let gw = Gateway::start().await;
    let token = gw.token_for("alice").await;
    let mut with_token = tunnel(&gw, Some(&basic("alice", &token))).await;
    let mut anonymous = tunnel(&gw, None).await;
    let stopped = Instant::now();
    gw.stop().await;
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "the drain waited on the tunnels"
    );
    closed_within(&mut with_token, Duration::from_secs(1)).await;
    closed_within(&mut anonymous, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_tunnel_closes_within_a_second_of_its_token_being_deleted() {
    let gw = Gateway::start().await;
    let created = alice_s(&gw, None).await;
    let mut stream = tunnel(&gw, Some(&basic("alice", &created.value))).await;
    let other = gw.token_for("bob").await;
    let mut untouched = tunnel(&gw, Some(&basic("bob", &other))).await;
    gw.app.tokens.delete(&created.record.id, &Actor::cli()).await.unwrap();
    closed_within(&mut stream, Duration::from_secs(1)).await;
    // Another token's tunnel lives on.
    echoes(&mut untouched, b"still").await;
}

#[tokio::test]
async fn a_tunnel_closes_within_a_second_of_its_token_expiring() {
    let gw = Gateway::start().await;
    let created = alice_s(&gw, Some(1)).await;
    let mut stream = tunnel(&gw, Some(&basic("alice", &created.value))).await;
    gw.clock.advance_ms(86_400_000 - 10_000);
    tokio::time::sleep(Duration::from_millis(500)).await;
    echoes(&mut stream, b"alive").await;
    gw.clock.advance_ms(10_000);
    closed_within(&mut stream, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_tunnel_closes_within_a_second_of_its_secret_s_grace_ending() {
    let gw = Gateway::start().await;
    let created = alice_s(&gw, None).await;
    let mut old = tunnel(&gw, Some(&basic("alice", &created.value))).await;
    let rotated = gw
        .app
        .tokens
        .rotate(&created.record.id, Some(1), None, &Actor::cli())
        .await
        .unwrap();
    let mut new = tunnel(&gw, Some(&basic("alice", &rotated.value))).await;
    // In grace, the old secret's tunnel lives on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    echoes(&mut old, b"grace").await;
    gw.clock.advance_ms(3_600_000);
    closed_within(&mut old, Duration::from_secs(1)).await;
    echoes(&mut new, b"fresh").await;
}
