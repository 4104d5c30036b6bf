//! Hostile clients and failing upstreams (SPEC §2.2, §12): throttling,
//! connection and header limits, slow clients, broken and TLS upstreams.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokengate::{TokenAuth, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{Gateway, basic, get};

const SPACE: &str = "/rest/api/space";

#[tokio::test]
async fn failed_token_attempts_are_throttled_per_client_ip() {
    let gw = Gateway::start_with(|c| {
        c.failed_auth_per_minute = 3;
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.token_auth = TokenAuth::Both;
    })
    .await;
    let warm = gw.token_for("alice").await;
    let cold = gw.token_for("bob").await;
    assert_eq!(
        get(&gw.url(SPACE), &[("authorization", &basic("alice", &warm))])
            .await
            .status,
        200
    );
    let guess = basic("x", "tgw_guessguessguessguessguessguessguess");
    let from =
        |ip: &'static str, auth: &str| vec![("authorization", auth.to_owned()), ("x-forwarded-for", ip.to_owned())];
    let send = |headers: Vec<(&'static str, String)>| {
        let url = gw.url(SPACE);
        async move {
            let headers: Vec<_> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            get(&url, &headers).await
        }
    };
    for _ in 0..3 {
        assert_eq!(send(from("203.0.113.7", &guess)).await.status, 401);
    }
    let reply = send(from("203.0.113.7", &guess)).await;
    assert_eq!(
        (reply.status.as_u16(), reply.reason()),
        (429, "too_many_failures".into())
    );
    let retry_after: u64 = reply.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after));
    // Even a valid token not yet verified waits; one already verified does not.
    assert_eq!(send(from("203.0.113.7", &basic("bob", &cold))).await.status, 429);
    assert_eq!(send(from("203.0.113.7", &basic("alice", &warm))).await.status, 200);
    // Other clients are not affected, bad Bearer tokens count the same.
    assert_eq!(send(from("198.51.100.1", &basic("bob", &cold))).await.status, 200);
    assert_eq!(gw.upstream.count(), 3, "throttled requests never reach Confluence");
    // The window passes.
    gw.clock.advance_ms(61_000);
    assert_eq!(send(from("203.0.113.7", &guess)).await.status, 401);
    let bearer = "Bearer tgw_guessguessguessguessguessguessguess".to_owned();
    for _ in 0..2 {
        send(from("203.0.113.7", &bearer)).await;
    }
    assert_eq!(send(from("203.0.113.7", &bearer)).await.status, 429);
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_cleanly() {
    let gw = Gateway::start_with(|c| c.max_connections = 2).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        stream
            .write_all(b"GET /tokengate/healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(stream);
    }
    let mut extra = TcpStream::connect(gw.addr).await.unwrap();
    let mut answer = String::new();
    extra.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"reason\":\"unavailable\""));
    drop(held);
    // Slots come back when connections close.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        stream
            .write_all(b"GET /tokengate/healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slots never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn oversized_headers_are_refused_and_the_gateway_keeps_serving() {
    let gw = Gateway::start().await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let huge = "x".repeat(100 * 1024);
    let request = format!("GET {SPACE} HTTP/1.1\r\nhost: x\r\nx-big: {huge}\r\n\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer}");
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let many: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    stream
        .write_all(format!("GET {SPACE} HTTP/1.1\r\nhost: x\r\n{many}\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    assert!(!String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    assert_eq!(gw.upstream.count(), 0);
    assert_eq!(get(&gw.url(SPACE), &[]).await.status, 200);
}

#[tokio::test]
async fn a_slow_client_is_cut_off_after_the_header_timeout() {
    let gw = Gateway::start().await;
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET /rest/api/space HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .unwrap();
    // Let the server accept the connection and arm its header timer before
    // time stops, or the runtime could jump past it to the test's own deadline.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // With time paused, the runtime jumps to the next timer once idle: the
    // header timeout fires without the test waiting for it.
    tokio::time::pause();
    let paused_at = tokio::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(120), slow.read_to_end(&mut buf)).await;
    let waited = paused_at.elapsed();
    tokio::time::resume();
    assert!(read.is_ok(), "the slow connection was not closed");
    // Closed by the 30 s header timeout (200 ms of which passed before the
    // pause), not by anything later.
    assert!(
        waited > Duration::from_secs(25) && waited <= Duration::from_secs(30),
        "closed after {waited:?} of paused time"
    );
    assert_eq!(gw.upstream.count(), 0);
    assert_eq!(get(&gw.url(SPACE), &[]).await.status, 200);
}

/// An upstream that answers with a Content-Length it never delivers.
async fn truncating_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"partial\":")
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_upstream_closing_mid_response_breaks_only_that_response() {
    let upstream = truncating_upstream().await;
    let gw = Gateway::start_with(|c| {
        c.upstream = Upstream {
            https: false,
            authority: upstream.to_string().parse().unwrap(),
        }
    })
    .await;
    let client = crate::common::client();
    for _ in 0..2 {
        let response = client.get(gw.url(SPACE).parse().unwrap()).await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.into_body().collect().await.is_err(),
            "the client must see a broken body"
        );
    }
    assert_eq!(get(&gw.url("/tokengate/healthz"), &[]).await.status, 200);
}

#[tokio::test]
async fn an_https_upstream_is_trusted_through_upstream_ca() {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, cert.cert.pem()).unwrap();
    let upstream = tls_upstream(&cert).await;
    let config_for = |ca: Option<std::path::PathBuf>| {
        move |c: &mut tokengate::Config| {
            c.upstream = Upstream {
                https: true,
                authority: upstream.to_string().parse().unwrap(),
            };
            c.upstream_ca = ca;
        }
    };
    let gw = Gateway::start_with(config_for(Some(ca_path.clone()))).await;
    let token = gw.token_for("alice").await;
    let reply = get(&gw.url(SPACE), &[("authorization", &basic("alice", &token))]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "tls upstream: alice");

    let untrusting = Gateway::start_with(config_for(None)).await;
    let reply = get(&untrusting.url(SPACE), &[]).await;
    assert_eq!(
        (reply.status.as_u16(), reply.reason()),
        (502, "upstream_unavailable".into())
    );
}

/// A TLS server answering with the identity header it received.
async fn tls_upstream(cert: &rcgen::CertifiedKey) -> std::net::SocketAddr {
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.key_pair.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let user = req
                        .headers()
                        .get("x-forwarded-user")
                        .map(|v| v.to_str().unwrap().to_owned());
                    let body = format!("tls upstream: {}", user.unwrap_or_default());
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_client_abandoning_its_upload_is_not_an_upstream_error() {
    let gw = Gateway::start().await;
    let token = gw.token_for("alice").await;
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "PUT /rest/api/content/1/child/attachment HTTP/1.1\r\nhost: x\r\nauthorization: {}\r\n\
         content-length: 1000000\r\n\r\nonly the first bytes",
        basic("alice", &token)
    );
    client.write_all(head.as_bytes()).await.unwrap();
    drop(client);
    let metrics = |text: &str, line: &str| text.lines().any(|l| l.starts_with(line));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8(get(&gw.url("/tokengate/metrics"), &[]).await.body.to_vec()).unwrap();
        if metrics(
            &text,
            r#"tokengate_requests_total{decision="deny",reason="bad_request"} 1"#,
        ) {
            assert!(
                !text.contains("tokengate_upstream_errors_total{"),
                "counted as an upstream error:\n{text}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the aborted upload was never accounted for:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(&gw.url(SPACE), &[]).await.status, 200, "the gateway keeps serving");
}
