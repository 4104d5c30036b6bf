//! A fake Confluence that records exactly what it receives: method, target,
//! headers, body length and SHA-256 (bodies are hashed as they stream, so
//! uploads of any size can be checked), and answers like Confluence would.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as Confluence saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as received.
    pub target: String,
    pub headers: HeaderMap,
    pub body_len: u64,
    pub body_sha256: [u8; 32],
    /// The first 64 KiB of the body.
    pub body_head: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every header name and value and the body head, for "never reaches upstream" checks.
    pub fn contains(&self, needle: &str) -> bool {
        self.target.contains(needle)
            || self
                .headers
                .iter()
                .any(|(n, v)| n.as_str().contains(needle) || String::from_utf8_lossy(v.as_bytes()).contains(needle))
            || String::from_utf8_lossy(&self.body_head).contains(needle)
    }
}

#[derive(Clone)]
pub struct FakeConfluence {
    pub addr: SocketAddr,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    /// Body bytes received so far across all requests (streaming progress).
    pub bytes_received: Arc<AtomicU64>,
}

/// The admin password `/rest/api/user/current` accepts.
pub const ADMIN_PASSWORD: &str = "admin-password";

impl FakeConfluence {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = FakeConfluence {
            addr: listener.local_addr().unwrap(),
            recorded: Arc::default(),
            bytes_received: Arc::default(),
        };
        let server = fake.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.answer(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        fake
    }

    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.recorded.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.requests().pop().expect("Confluence received no request")
    }

    pub fn count(&self) -> usize {
        self.recorded.lock().unwrap().len()
    }

    async fn answer(&self, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
        let on_upgrade = hyper::upgrade::on(&mut req);
        let (parts, mut body) = req.into_parts();
        let mut hasher = Sha256::new();
        let mut body_len = 0u64;
        let mut body_head = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Ok(data) = frame.into_data() {
                hasher.update(&data);
                body_len += data.len() as u64;
                self.bytes_received.fetch_add(data.len() as u64, Ordering::SeqCst);
                let room = (64usize << 10).saturating_sub(body_head.len());
                body_head.extend_from_slice(&data[..room.min(data.len())]);
            }
        }
        let target = parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default();
        self.recorded.lock().unwrap().push(Recorded {
            method: parts.method.to_string(),
            target: target.clone(),
            headers: parts.headers.clone(),
            body_len,
            body_sha256: hasher.finalize().into(),
            body_head,
        });
        let path = parts.uri.path();
        if parts.headers.contains_key("upgrade") {
            return echo_upgrade(on_upgrade);
        }
        match path {
            "/rest/api/user/current" => user_current(&parts.headers),
            "/delay" => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                json(StatusCode::OK, r#"{"delayed":true}"#)
            }
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                json(StatusCode::OK, "{}")
            }
            "/redirect" => {
                let mut response = json(StatusCode::FOUND, "{}");
                let location = format!("{}/login.action?next=%2Fx", self.origin());
                response
                    .headers_mut()
                    .insert("location", HeaderValue::from_str(&location).unwrap());
                response
            }
            "/rest/api/session" => {
                // A header authenticator that puts the user in a session.
                let mut response = json(StatusCode::OK, "{}");
                for cookie in [
                    "JSESSIONID=upstream-session; Path=/; HttpOnly",
                    "seraph.confluence=remember-me",
                ] {
                    response
                        .headers_mut()
                        .append("set-cookie", HeaderValue::from_static(cookie));
                }
                response
            }
            "/confluence-401" => json(
                StatusCode::UNAUTHORIZED,
                r#"{"statusCode":401,"message":"from confluence"}"#,
            ),
            _ => {
                let mut response = json(StatusCode::OK, &format!(r#"{{"ok":true,"path":{:?}}}"#, path));
                response
                    .headers_mut()
                    .insert("x-upstream", HeaderValue::from_static("fake-confluence"));
                response
            }
        }
    }
}

/// Accepts a WebSocket-style upgrade and echoes bytes back.
fn echo_upgrade(on_upgrade: hyper::upgrade::OnUpgrade) -> Response<Full<Bytes>> {
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 1024];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Confluence's "who am I": 200 with the user for the admin password, else 401.
fn user_current(headers: &HeaderMap) -> Response<Full<Bytes>> {
    use base64::Engine;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("admin:{ADMIN_PASSWORD}"))
    );
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(value) if value == expected => {
            json(StatusCode::OK, r#"{"type":"known","username":"admin","userKey":"k1"}"#)
        }
        _ => json(
            StatusCode::UNAUTHORIZED,
            r#"{"statusCode":401,"message":"Unauthorized"}"#,
        ),
    }
}

fn json(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}
