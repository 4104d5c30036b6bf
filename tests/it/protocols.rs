//! Protocols on the listener and through the gateway: h2c by prior
//! knowledge, TLS with h2 by ALPN, WebSocket upgrades, and curl as a real client.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokengate::TlsFiles;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{Gateway, basic};

#[tokio::test]
async fn h2c_with_prior_knowledge() {
    let gw = Gateway::start().await;
    let token = gw.token_for("alice").await;
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    let request = Request::get(gw.url("/rest/api/space"))
        .header("authorization", basic("alice", &token))
        .body(Full::default())
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let seen = gw.upstream.last();
    assert_eq!(seen.header("x-forwarded-user"), Some("alice"));
    assert_eq!(
        seen.header("host"),
        Some(gw.addr.to_string().as_str()),
        "h2 :authority becomes Host"
    );
}

#[tokio::test]
async fn tls_listener_negotiates_h2_and_http1() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let gw = Gateway::start_with(|c| {
        c.tls = Some(TlsFiles {
            cert: cert_path.clone(),
            key: key_path.clone(),
        })
    })
    .await;
    let token = gw.token_for("alice").await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    for (alpn, version) in [
        (b"h2".to_vec(), Version::HTTP_2),
        (b"http/1.1".to_vec(), Version::HTTP_11),
    ] {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        tls.alpn_protocols = vec![alpn];
        let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .unwrap();
        let io = hyper_util::rt::TokioIo::new(stream);
        let request = Request::get(format!("https://localhost:{}/rest/api/space", gw.addr.port()))
            .header("authorization", basic("alice", &token))
            .body(Full::<Bytes>::default())
            .unwrap();
        let response = if version == Version::HTTP_2 {
            let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            sender.send_request(request).await.unwrap()
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            let mut request = request;
            request.headers_mut().insert("host", "localhost".parse().unwrap());
            sender.send_request(request).await.unwrap()
        };
        assert_eq!(
            (response.status(), response.version()),
            (200.try_into().unwrap(), version)
        );
        response.into_body().collect().await.unwrap();
        assert_eq!(gw.upstream.last().header("x-forwarded-proto"), Some("https"));
        assert_eq!(gw.upstream.last().header("x-forwarded-user"), Some("alice"));
    }
}

/// Opens a WebSocket through the gateway and checks bytes echo back.
async fn websocket_echo(gw: &Gateway, path: &str, authorization: Option<&str>) {
    let (head, mut stream) = crate::common::open_tunnel(gw, path, authorization).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("upgrade: websocket"));
    stream.write_all(b"ping through the gateway").await.unwrap();
    let mut echo = [0u8; 24];
    stream.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping through the gateway");
    assert_eq!(gw.upstream.last().header("upgrade"), Some("websocket"));
}

#[tokio::test]
async fn websocket_upgrades_pass_through() {
    let gw = Gateway::start().await;
    // Synchrony, as a browser opens it.
    websocket_echo(&gw, "/synchrony/v1/bayeux-sync1", None).await;
    // With a token, as the token's user.
    let token = gw.token_for("alice").await;
    websocket_echo(&gw, "/rest/ws", Some(&basic("alice", &token))).await;
    let seen = gw.upstream.last();
    assert_eq!(seen.header("x-forwarded-user"), Some("alice"));
    assert_eq!(seen.header("authorization"), None);
}

#[tokio::test]
async fn curl_with_user_and_token() {
    let gw = Gateway::start().await;
    let token = gw.token_for("alice").await;
    let url = gw.url("/rest/api/space");
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "-u", &format!("alice:{token}"), "-w", "\n%{http_code}", &url])
        .output()
        .await
        .expect("curl is installed");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.ends_with("\n200"),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(r#""ok":true"#));
    assert_eq!(gw.upstream.last().header("x-forwarded-user"), Some("alice"));
    assert!(!gw.upstream.last().contains(&token));
}
