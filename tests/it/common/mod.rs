//! Test harness: the real gateway on 127.0.0.1:0 in front of a fake
//! Confluence, with a manual clock and a throwaway SQLite store (or any
//! store, e.g. PostgreSQL in a schema of its own, behind a TCP proxy).

pub mod browser;
pub mod fake_confluence;
pub mod faulty_store;
pub mod postgres;
pub mod process;
pub mod tcp_proxy;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokengate::App;
use tokengate::ManualClock;
use tokengate::{Actor, CreatedToken, NewToken};
use tokengate::{Argon2Cost, Config, Upstream};
use tokengate::{SqliteStore, TokenStore};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use fake_confluence::FakeConfluence;
pub use faulty_store::FaultyStore;
pub use postgres::PgSchema;
pub use tcp_proxy::TcpProxy;

/// Cheap argon2 so tests stay fast; the default cost has its own test.
pub const TEST_ARGON2: Argon2Cost = Argon2Cost {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};

pub struct Gateway {
    pub addr: SocketAddr,
    pub app: App,
    pub clock: Arc<ManualClock>,
    pub upstream: FakeConfluence,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A configuration pointing at `upstream` with a store in `dir`.
pub fn test_config(upstream: &FakeConfluence, dir: &std::path::Path) -> Config {
    Config {
        upstream: Upstream {
            https: false,
            authority: upstream.addr.to_string().parse().unwrap(),
        },
        database_url: format!("sqlite://{}/tokengate.db", dir.display()),
        argon2: TEST_ARGON2,
        ..Config::default()
    }
}

impl Gateway {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a gateway whose configuration `adjust` may change.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_with_store(adjust, |store| store).await
    }

    /// Starts a gateway over a store that can be made slow or unavailable.
    pub async fn start_faulty() -> (Self, Arc<FaultyStore>) {
        let mut faulty = None;
        let gw = Self::start_with_store(
            |_| {},
            |store| {
                let store = Arc::new(FaultyStore::new(store));
                faulty = Some(store.clone());
                store
            },
        )
        .await;
        (gw, faulty.unwrap())
    }

    async fn start_with_store(
        adjust: impl FnOnce(&mut Config),
        wrap: impl FnOnce(Arc<dyn TokenStore>) -> Arc<dyn TokenStore>,
    ) -> Self {
        let upstream = FakeConfluence::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(&upstream, dir.path());
        adjust(&mut config);
        let store = wrap(Arc::new(SqliteStore::open(&config.database_url).await.unwrap()));
        Self::launch(upstream, dir, config, store).await
    }

    /// Starts a gateway over `store` (the configuration's SQLite URL is then unused).
    pub async fn start_over(store: Arc<dyn TokenStore>) -> Self {
        Self::start_over_with(store, |_| {}).await
    }

    /// Starts a gateway over `store` whose configuration `adjust` may change.
    pub async fn start_over_with(store: Arc<dyn TokenStore>, adjust: impl FnOnce(&mut Config)) -> Self {
        let upstream = FakeConfluence::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(&upstream, dir.path());
        adjust(&mut config);
        Self::launch(upstream, dir, config, store).await
    }

    async fn launch(
        upstream: FakeConfluence,
        dir: tempfile::TempDir,
        config: Config,
        store: Arc<dyn TokenStore>,
    ) -> Self {
        let clock = ManualClock::starting_now();
        let app = App::with_store(config, store, clock.clone()).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server_app = app.clone();
        let task = tokio::spawn(async move {
            tokengate::serve(listener, server_app, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Gateway {
            addr,
            app,
            clock,
            upstream,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn create_token(&self, new: NewToken) -> CreatedToken {
        let new = NewToken { ..new };
        self.app.tokens.create(new, &Actor::cli()).await.unwrap()
    }

    /// A token bound to `user` with no restrictions; returns its value.
    pub async fn token_for(&self, user: &str) -> String {
        let new = NewToken {
            label: format!("{user}-bot"),
            user: Some(user.into()),
            ..NewToken::default()
        };
        self.create_token(new).await.value
    }

    /// Every audit entry, newest first, once what is queued is written.
    pub async fn audit(&self) -> Vec<tokengate::AuditEntry> {
        self.app.flush_records().await;
        let query = tokengate::AuditQuery {
            max_results: 1000,
            ..Default::default()
        };
        self.app.store.list_audit(&query).await.unwrap().items
    }

    /// The audit entries of requests, newest first: not those of changes
    /// to tokens (a token the test made leaves one).
    pub async fn request_audit(&self) -> Vec<tokengate::AuditEntry> {
        let entries = self.audit().await.into_iter();
        entries.filter(|e| e.kind == tokengate::AuditKind::Request).collect()
    }

    /// Stops the server (graceful shutdown) and waits for it.
    pub async fn stop(mut self) {
        self.shut_down().await;
    }

    async fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }

    /// Stops this gateway and starts a new one over the same SQLite store and
    /// fake Confluence, with its configuration changed by `adjust`: a
    /// restart, with nothing verified in memory.
    pub async fn reopen(mut self, adjust: impl FnOnce(&mut Config)) -> Gateway {
        self.shut_down().await;
        let mut config = (*self.app.config).clone();
        adjust(&mut config);
        let store = Arc::new(SqliteStore::open(&config.database_url).await.unwrap());
        Self::launch(self.upstream, self.dir, config, store).await
    }
}

/// `Basic base64(user:secret)`.
pub fn basic(user: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"))
    )
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The gateway's reason code (`X-Tokengate-Reason`), checked against the body.
    pub fn reason(&self) -> String {
        let header = self
            .headers
            .get("x-tokengate-reason")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = self.json()["reason"].as_str().map(str::to_owned);
        assert_eq!(header, body, "header and body reasons differ");
        header.unwrap_or_default()
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Sends one request with the given headers and body.
pub async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = client()
        .request(builder.body(Full::new(body.into())).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// One HTTP/1.1 connection to the gateway, kept alive across requests.
pub async fn connect(gw: &Gateway) -> hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>> {
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// `GET path` with `authorization` on a kept-alive connection.
pub async fn get_on(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>,
    path: &str,
    authorization: &str,
) -> Reply {
    sender.ready().await.unwrap();
    let req = Request::get(path)
        .header("host", "wiki.example.com")
        .header("authorization", authorization)
        .body(http_body_util::Empty::new())
        .unwrap();
    let (parts, body) = sender.send_request(req).await.unwrap().into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    send(Method::GET, url, headers, Bytes::new()).await
}

/// Opens a WebSocket-style upgrade through the gateway on a connection of
/// its own: the response head, and the stream (a tunnel when the head says 101).
pub async fn open_tunnel(gw: &Gateway, path: &str, authorization: Option<&str>) -> (String, tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let handshake = format!(
        "GET {path} HTTP/1.1\r\nHost: wiki\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{auth}\r\n"
    );
    stream.write_all(handshake.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    (String::from_utf8(head).unwrap(), stream)
}
