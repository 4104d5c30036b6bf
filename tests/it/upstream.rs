//! The upstream connection layer (SPEC §2.8, §11): connections to
//! Confluence are reused across requests and client connections, kept to
//! `upstream_max_idle` and `upstream_idle_timeout_s`, and made within
//! `connect_timeout_s`; a connection Confluence closed while idle costs no
//! request, and a request of which any byte was sent is never sent twice;
//! an HTTP/2 upstream (over TLS) carries every request on one connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokengate::Upstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{Gateway, basic, connect, get, get_on, send};

const SPACE: &str = "/rest/api/space";

/// Waits (up to 10 s) until `done` holds; false if it never does.
async fn until(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done()
}

fn pointing_at(addr: std::net::SocketAddr, https: bool) -> impl FnOnce(&mut tokengate::Config) {
    move |c| {
        c.upstream = Upstream {
            https,
            authority: addr.to_string().parse().unwrap(),
        }
    }
}

#[tokio::test]
async fn a_keep_alive_client_keeps_one_upstream_connection() {
    let gw = Gateway::start().await;
    let auth = basic("alice", &gw.token_for("alice").await);
    let mut client = connect(&gw).await;
    for _ in 0..5 {
        assert_eq!(get_on(&mut client, SPACE, &auth).await.status, 200);
    }
    // HEAD and an empty body give the connection back too.
    for path in [SPACE, "/rest/api/content/100"] {
        client.ready().await.unwrap();
        let head = hyper::Request::head(path)
            .header("host", "wiki")
            .header("authorization", &auth)
            .body(Empty::new())
            .unwrap();
        let response = client.send_request(head).await.unwrap();
        response.into_body().collect().await.unwrap();
    }
    assert_eq!(get_on(&mut client, SPACE, &auth).await.status, 200);
    assert_eq!(gw.upstream.connections_accepted(), 1);
    assert_eq!(gw.app.metrics.upstream_connects.get(), 1);
}

#[tokio::test]
async fn a_closed_client_connection_hands_its_upstream_connection_to_the_next() {
    let gw = Gateway::start().await;
    let auth = basic("alice", &gw.token_for("alice").await);
    for round in 0..4 {
        // `get` opens a client connection and closes it after the answer.
        assert_eq!(get(&gw.url(SPACE), &[("authorization", &auth)]).await.status, 200);
        assert!(
            until(|| gw.app.upstream.idle_connections() == 1).await,
            "round {round}: the connection did not return to the pool"
        );
    }
    assert_eq!(gw.upstream.connections_accepted(), 1);
}

#[tokio::test]
async fn the_pool_keeps_at_most_upstream_max_idle_connections() {
    let gw = Gateway::start_with(|c| c.upstream_max_idle = 2).await;
    let auth = basic("alice", &gw.token_for("alice").await);
    // Four open client connections hold four upstream connections.
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut client = connect(&gw).await;
        assert_eq!(get_on(&mut client, SPACE, &auth).await.status, 200);
        clients.push(client);
    }
    assert_eq!(gw.upstream.connections_accepted(), 4);
    drop(clients);
    assert!(
        until(|| gw.upstream.connections_open() == 2).await,
        "two were not closed"
    );
    assert_eq!(gw.app.upstream.idle_connections(), 2);
    // The two kept are reused.
    let (mut a, mut b) = (connect(&gw).await, connect(&gw).await);
    assert_eq!(get_on(&mut a, SPACE, &auth).await.status, 200);
    assert_eq!(get_on(&mut b, SPACE, &auth).await.status, 200);
    assert_eq!(gw.upstream.connections_accepted(), 4);
}

#[tokio::test]
async fn idle_connections_are_closed_after_upstream_idle_timeout() {
    let gw = Gateway::start_with(|c| c.upstream_idle_timeout = Duration::from_secs(1)).await;
    let auth = basic("alice", &gw.token_for("alice").await);
    // Pooled: closed by the pool once idle for a second.
    assert_eq!(get(&gw.url(SPACE), &[("authorization", &auth)]).await.status, 200);
    assert!(
        until(|| gw.upstream.connections_open() == 0).await,
        "the pooled connection stayed open"
    );
    assert_eq!(gw.app.upstream.idle_connections(), 0);
    // Leased: not used again once idle for longer.
    let mut client = connect(&gw).await;
    assert_eq!(get_on(&mut client, SPACE, &auth).await.status, 200);
    assert_eq!(gw.upstream.connections_accepted(), 2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get_on(&mut client, SPACE, &auth).await.status, 200);
    assert_eq!(gw.upstream.connections_accepted(), 3);
    assert!(until(|| gw.upstream.connections_open() <= 1).await);
}

/// An upstream speaking raw HTTP/1.1 on 127.0.0.1: `serve` handles each
/// connection and counts the requests it reads in `requests`; `open` counts
/// the connections not yet served to the end.
struct RawUpstream {
    addr: std::net::SocketAddr,
    requests: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
}

async fn raw_upstream<F, Serving>(serve: F) -> RawUpstream
where
    F: Fn(TcpStream, Arc<AtomicUsize>) -> Serving + Send + 'static,
    Serving: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = RawUpstream {
        addr: listener.local_addr().unwrap(),
        requests: Arc::default(),
        open: Arc::default(),
    };
    let (requests, open) = (upstream.requests.clone(), upstream.open.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            open.fetch_add(1, Ordering::SeqCst);
            let (serving, open) = (serve(stream, requests.clone()), open.clone());
            tokio::spawn(async move {
                serving.await;
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    upstream
}

/// An upstream that answers one request per connection and then closes it
/// without saying so (no `Connection: close`), as a server does when its
/// keep-alive timeout ends.
async fn closing_upstream() -> RawUpstream {
    raw_upstream(|mut stream, requests| async move {
        read_head(&mut stream).await;
        requests.fetch_add(1, Ordering::SeqCst);
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok")
            .await;
        let _ = stream.shutdown().await;
    })
    .await
}

/// Reads a request head (the tests' requests have no body).
async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    head
}

#[tokio::test]
async fn an_upstream_closing_idle_connections_costs_no_request() {
    let upstream = closing_upstream().await;
    let requests = &upstream.requests;
    let gw = Gateway::start_with(pointing_at(upstream.addr, false)).await;
    let auth = basic("alice", &gw.token_for("alice").await);
    let mut client = connect(&gw).await;
    for n in 1..=5 {
        let reply = get_on(&mut client, SPACE, &auth).await;
        assert_eq!(
            (reply.status.as_u16(), &reply.body[..]),
            (200, &b"ok"[..]),
            "request {n}"
        );
    }
    assert_eq!(requests.load(Ordering::SeqCst), 5, "each request was sent once");
    // And on new client connections, through the pool.
    for _ in 0..3 {
        assert_eq!(get(&gw.url(SPACE), &[("authorization", &auth)]).await.status, 200);
    }
    assert_eq!(requests.load(Ordering::SeqCst), 8);
}

#[tokio::test]
async fn a_request_confluence_received_is_never_sent_twice() {
    // Reads the request, then drops the connection without an answer.
    let upstream = raw_upstream(|mut stream, requests| async move {
        let mut buffer = vec![0u8; 4096];
        let mut received = Vec::new();
        while !received.ends_with(b"page") {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
        requests.fetch_add(1, Ordering::SeqCst);
    })
    .await;
    let gw = Gateway::start_with(pointing_at(upstream.addr, false)).await;
    let auth = basic("alice", &gw.token_for("alice").await);
    let reply = send(
        hyper::Method::POST,
        &gw.url("/rest/api/content"),
        &[("authorization", &auth), ("content-type", "text/plain")],
        "create one page",
    )
    .await;
    assert_eq!(
        (reply.status.as_u16(), reply.reason()),
        (502, "upstream_unavailable".into())
    );
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 1);
    // The gateway goes on serving.
    assert_eq!(get(&gw.url("/tokengate/healthz"), &[]).await.status, 200);
}

/// A keep-alive upstream whose every connection ends when `restart` is
/// sent (as when Confluence restarts).
async fn restartable_upstream() -> (RawUpstream, tokio::sync::watch::Sender<u32>) {
    let (restart, restarts) = tokio::sync::watch::channel(0);
    let upstream = raw_upstream(move |mut stream, requests| {
        let mut restarts = restarts.clone();
        // Only a restart after this connection opened ends it.
        restarts.mark_unchanged();
        async move {
            loop {
                tokio::select! {
                    head = read_head(&mut stream) => {
                        if !head.ends_with(b"\r\n\r\n") {
                            return;
                        }
                        requests.fetch_add(1, Ordering::SeqCst);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    _ = restarts.changed() => return,
                }
            }
        }
    })
    .await;
    (upstream, restart)
}

#[tokio::test]
async fn a_restarted_confluence_is_reached_again() {
    let (upstream, restart) = restartable_upstream().await;
    let requests = &upstream.requests;
    let gw = Gateway::start_with(pointing_at(upstream.addr, false)).await;
    let auth = basic("alice", &gw.token_for("alice").await);
    // One connection leased by an open client, one in the pool.
    let mut client = connect(&gw).await;
    assert_eq!(get_on(&mut client, SPACE, &auth).await.status, 200);
    assert_eq!(get(&gw.url(SPACE), &[("authorization", &auth)]).await.status, 200);
    assert!(until(|| gw.app.upstream.idle_connections() == 1).await);
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    // Both die at once (a request sent while Confluence is closing them
    // may be lost, as with any proxy: the test waits until they are closed).
    restart.send(1).unwrap();
    assert!(until(|| upstream.open.load(Ordering::SeqCst) == 0).await);
    for _ in 0..3 {
        assert_eq!(get_on(&mut client, SPACE, &auth).await.status, 200);
        assert_eq!(get(&gw.url(SPACE), &[("authorization", &auth)]).await.status, 200);
    }
    assert_eq!(requests.load(Ordering::SeqCst), 8, "each request was sent once");
}

#[tokio::test]
async fn connecting_gives_up_after_connect_timeout() {
    // Accepts TCP but never answers the TLS handshake.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let holding = held.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            holding.lock().unwrap().push(stream);
        }
    });
    let gw = Gateway::start_with(|c| {
        pointing_at(addr, true)(c);
        c.connect_timeout = Duration::from_secs(1);
    })
    .await;
    let auth = basic("alice", &gw.token_for("alice").await);
    let reply = tokio::time::timeout(
        Duration::from_secs(30),
        get(&gw.url(SPACE), &[("authorization", &auth)]),
    )
    .await
    .expect("the gateway kept waiting for the connection");
    assert_eq!(
        (reply.status.as_u16(), reply.reason()),
        (502, "upstream_unavailable".into())
    );
    assert_eq!(held.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_websocket_takes_a_connection_of_its_own() {
    let gw = Gateway::start().await;
    let auth = basic("alice", &gw.token_for("alice").await);
    let mut client = connect(&gw).await;
    assert_eq!(get_on(&mut client, SPACE, &auth).await.status, 200);
    // The handshake goes on a new connection, which the upgrade keeps.
    let mut socket = TcpStream::connect(gw.addr).await.unwrap();
    let handshake = format!(
        "GET /rest/ws HTTP/1.1\r\nHost: wiki\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: {auth}\r\n\r\n"
    );
    socket.write_all(handshake.as_bytes()).await.unwrap();
    let head = String::from_utf8(read_head(&mut socket).await).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(gw.upstream.connections_accepted(), 2);
    // Other requests go on as before, on the first connection.
    assert_eq!(get_on(&mut client, SPACE, &auth).await.status, 200);
    assert_eq!(get(&gw.url(SPACE), &[("authorization", &auth)]).await.status, 200);
    socket.write_all(b"still echoing").await.unwrap();
    let mut echo = [0u8; 13];
    socket.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"still echoing");
    assert_eq!(gw.upstream.connections_accepted(), 3);
}

/// A TLS upstream speaking HTTP/2 and HTTP/1.1 (ALPN), answering with the
/// protocol, `:authority` (or `Host`) and identity header it received.
async fn h2_upstream(cert: &rcgen::CertifiedKey) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.key_pair.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let authority = req
                        .uri()
                        .authority()
                        .map(|a| a.to_string())
                        .or_else(|| req.headers().get("host").map(|h| h.to_str().unwrap().to_owned()))
                        .unwrap_or_default();
                    let user = req
                        .headers()
                        .get("x-forwarded-user")
                        .map(|v| v.to_str().unwrap().to_owned());
                    let body = format!("{:?} {authority} {}", req.version(), user.unwrap_or_default());
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn an_http2_upstream_carries_every_request_on_one_connection() {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let (addr, accepted) = h2_upstream(&cert).await;
    let trusting = |preserve_host: bool| {
        let ca = ca.clone();
        move |c: &mut tokengate::Config| {
            pointing_at(addr, true)(c);
            c.upstream_ca = Some(ca);
            c.preserve_host = preserve_host;
        }
    };
    let gw = Gateway::start_with(trusting(false)).await;
    let auth = basic("alice", &gw.token_for("alice").await);
    // The first request connects; the next ones, at once, share its connection.
    let first = get(&gw.url(SPACE), &[("authorization", &auth)]).await;
    assert_eq!(first.body, format!("HTTP/2.0 {addr} alice"));
    let requests = (0..8).map(|_| {
        let (url, auth) = (gw.url(SPACE), auth.clone());
        async move { get(&url, &[("authorization", &auth)]).await }
    });
    for reply in join_all(requests).await {
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, format!("HTTP/2.0 {addr} alice"));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // In use, it outlives the idle timeout; unused for longer, it is replaced.
    let gw = gw.reopen(|c| c.upstream_idle_timeout = Duration::from_secs(1)).await;
    let accepted_before = accepted.load(Ordering::SeqCst);
    for _ in 0..20 {
        assert_eq!(get(&gw.url(SPACE), &[("authorization", &auth)]).await.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), accepted_before + 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reply = tokio::time::timeout(
        Duration::from_secs(30),
        get(&gw.url(SPACE), &[("authorization", &auth)]),
    )
    .await
    .expect("a request after the idle timeout was stuck");
    assert_eq!(reply.status, 200);
    assert_eq!(accepted.load(Ordering::SeqCst), accepted_before + 2);

    // With preserve_host, the client's host is the request's authority.
    let gw = gw.reopen(trusting(true)).await;
    let reply = get(
        &gw.url(SPACE),
        &[("authorization", &auth), ("host", "wiki.example.com")],
    )
    .await;
    assert_eq!(reply.body, "HTTP/2.0 wiki.example.com alice");
}

/// Runs the futures concurrently and returns their outputs in order.
async fn join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for handle in handles {
        outputs.push(handle.await.unwrap());
    }
    outputs
}
