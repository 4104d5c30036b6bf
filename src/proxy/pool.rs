//! Connections to Confluence, on `hyper::client::conn`: HTTP/1.1, or HTTP/2
//! when a TLS upstream offers it (ALPN).
//!
//! Each client connection holds a [`Lease`]: the upstream connection its
//! last request used waits there for its next one, so a keep-alive client's
//! requests take and give back their connection with no hashing and no lock
//! that other connections touch. The shared [`Pool`] is touched only when a
//! lease is empty (a client connection's first request, or concurrent
//! HTTP/2 streams of one client) and when a client connection closes and
//! hands its upstream connection back. The pool keeps at most
//! `upstream_max_idle` connections, each at most `upstream_idle_timeout_s`;
//! a leased connection idle for longer is not used again either.
//!
//! An HTTP/1 connection is given back when its response body has been read
//! to the end ([`PooledBody`]); one whose body is abandoned is closed, as
//! hyper must. A request that an idle connection could not take because
//! Confluence had closed it (hyper hands it back unsent) is sent once more,
//! on a new connection; a request of which any byte was sent never is.
//! WebSocket handshakes get a connection of their own, over HTTP/1.1.
//!
//! Idle times are measured on tokio's clock, so that tests can move it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{TrySendError, http1, http2};
use hyper::header::HOST;
use hyper::http::uri::{Authority, Scheme};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::metrics::counter::Counter;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::{ClientSetupError, UpstreamBody};
use crate::config::{Config, Upstream};

/// Why a request could not be exchanged with Confluence.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be made (refused, unresolvable, TLS refused,
    /// or not within `connect_timeout_s`).
    #[error("cannot connect to Confluence: {0}")]
    Connect(String),
    /// The connection failed during the exchange (or the request body did).
    #[error(transparent)]
    Exchange(hyper::Error),
}

/// The connections to Confluence.
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    connector: Connector,
    connects: Counter,
    idle: Mutex<IdleSet>,
    max_idle: usize,
    idle_timeout: Duration,
    reaper_started: std::sync::Once,
}

#[derive(Default)]
struct IdleSet {
    /// Oldest first.
    http1: VecDeque<Idle>,
    /// An HTTP/2 connection carries any number of requests at once: the pool
    /// keeps one and hands out clones of its sender.
    http2: Option<Idle>,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// The sending half of one upstream connection.
enum Sender {
    Http1(http1::SendRequest<UpstreamBody>),
    Http2(http2::SendRequest<UpstreamBody>),
}

/// The upstream connection a client connection's requests reuse (module doc).
pub struct Lease {
    slot: Mutex<Option<Idle>>,
    pool: Arc<Shared>,
}

impl Pool {
    pub fn new(config: &Config, tls: rustls::ClientConfig, connects: Counter) -> Result<Pool, ClientSetupError> {
        Ok(Pool {
            shared: Arc::new(Shared {
                connector: Connector::new(&config.upstream, config.connect_timeout, tls)?,
                connects,
                idle: Mutex::default(),
                max_idle: config.upstream_max_idle,
                idle_timeout: config.upstream_idle_timeout,
                reaper_started: std::sync::Once::new(),
            }),
        })
    }

    /// An empty lease, for one client connection (or one call of the
    /// gateway's own): its connection goes back to the pool when it is dropped.
    pub fn lease(&self) -> Arc<Lease> {
        Arc::new(Lease {
            slot: Mutex::new(None),
            pool: Arc::clone(&self.shared),
        })
    }

    /// Sends `req` (whose URI is in origin form: path and query) on the
    /// lease's connection, a pooled one or a new one. `websocket`: a
    /// handshake, sent on a new HTTP/1.1 connection that is never reused.
    pub async fn send(
        &self,
        lease: &Arc<Lease>,
        mut req: Request<UpstreamBody>,
        websocket: bool,
    ) -> Result<Response<PooledBody>, PoolError> {
        let reused = if websocket { None } else { self.reuse(lease).await };
        let retry = reused.is_some();
        // Connecting is boxed: its future (TCP, TLS, the handshake) is large,
        // and would otherwise be moved along with every request's future.
        let mut sender = match reused {
            Some(sender) => sender,
            None => Box::pin(self.connect(websocket)).await?,
        };
        let connector = &self.shared.connector;
        connector.address(&mut req, &sender);
        let response = match sender.send(req).await {
            Ok(response) => response,
            Err(mut e) => match e.take_message() {
                Some(mut req) if retry => {
                    tracing::debug!(error = %e.error(), "an idle connection to Confluence was closed; sending on a new one");
                    sender = Box::pin(self.connect(false)).await?;
                    connector.address(&mut req, &sender);
                    sender
                        .send(req)
                        .await
                        .map_err(|e| PoolError::Exchange(e.into_error()))?
                }
                _ => return Err(PoolError::Exchange(e.into_error())),
            },
        };
        let home = match sender {
            // Free for another request at once.
            Sender::Http2(_) => {
                lease.put(sender);
                None
            }
            // The connection now belongs to the upgrade, or to nobody.
            Sender::Http1(_) if websocket || response.status() == StatusCode::SWITCHING_PROTOCOLS => None,
            Sender::Http1(_) => Some(Home {
                sender,
                lease: Arc::clone(lease),
            }),
        };
        Ok(response.map(|body| PooledBody::new(body, home)))
    }

    /// A new connection. A new HTTP/2 connection is shared through the pool
    /// at once: other client connections' requests can use it too.
    async fn connect(&self, http1_only: bool) -> Result<Sender, PoolError> {
        let sender = self.shared.connector.connect(http1_only).await?;
        self.shared.connects.inc();
        if let Sender::Http2(h2) = &sender {
            self.shared.put(Idle {
                sender: Sender::Http2(h2.clone()),
                since: Instant::now(),
            });
        }
        Ok(sender)
    }

    /// The lease's connection or a pooled one, ready for a request; `None`
    /// when there is none (those closed or idle too long are dropped).
    async fn reuse(&self, lease: &Lease) -> Option<Sender> {
        loop {
            let Idle { mut sender, since } = lease.take().or_else(|| self.shared.take())?;
            if since.elapsed() >= self.shared.idle_timeout {
                continue;
            }
            // Ready at once but for the moment hyper takes to finish the
            // previous exchange; an error means Confluence closed it.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    /// Idle connections in the pool (not counting those leased).
    pub fn idle_count(&self) -> usize {
        let idle = self.shared.lock();
        idle.http1.len() + usize::from(idle.http2.is_some())
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, IdleSet> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A clone of the HTTP/2 connection (which counts as used from now on),
    /// or the newest idle HTTP/1 one. An HTTP/2 connection closed or unused
    /// for the idle timeout leaves the pool here.
    fn take(&self) -> Option<Idle> {
        let mut idle = self.lock();
        if let Some(entry) = &mut idle.http2 {
            if let Sender::Http2(h2) = &entry.sender
                && !h2.is_closed()
                && entry.since.elapsed() < self.idle_timeout
            {
                entry.since = Instant::now();
                return Some(Idle {
                    sender: Sender::Http2(h2.clone()),
                    since: entry.since,
                });
            }
            idle.http2 = None;
        }
        idle.http1.pop_back()
    }

    fn put(self: &Arc<Self>, entry: Idle) {
        if entry.sender.is_closed() {
            return;
        }
        {
            let mut idle = self.lock();
            match entry.sender {
                Sender::Http2(_) => {
                    let open = idle.http2.as_ref().is_some_and(|h2| !h2.sender.is_closed());
                    if !open {
                        idle.http2 = Some(entry);
                    }
                }
                Sender::Http1(_) => {
                    if idle.http1.len() >= self.max_idle {
                        idle.http1.pop_front();
                    }
                    idle.http1.push_back(entry);
                }
            }
        }
        self.start_reaper();
    }

    /// Closes pooled connections once they have been idle for
    /// `upstream_idle_timeout_s` (and forgets those Confluence closed), until
    /// the pool is dropped. Started with the first connection pooled, on
    /// that runtime.
    fn start_reaper(self: &Arc<Self>) {
        self.reaper_started.call_once(|| {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            let pool = Arc::downgrade(self);
            let every = (self.idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
            runtime.spawn(reap(pool, every));
        });
    }
}

async fn reap(pool: Weak<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let fresh = |idle: &Idle| idle.since.elapsed() < pool.idle_timeout && !idle.sender.is_closed();
        let mut idle = pool.lock();
        idle.http1.retain(fresh);
        if idle.http2.as_ref().is_some_and(|h2| !fresh(h2)) {
            idle.http2 = None;
        }
    }
}

impl Lease {
    fn take(&self) -> Option<Idle> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// Gives a connection back: to this lease, or to the pool if the lease
    /// already holds one (another stream of the same client used it).
    fn put(&self, sender: Sender) {
        let entry = Idle {
            sender,
            since: Instant::now(),
        };
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        match &*slot {
            None => *slot = Some(entry),
            Some(_) => {
                drop(slot);
                self.pool.put(entry);
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(entry) = self.slot.get_mut().unwrap_or_else(PoisonError::into_inner).take() {
            self.pool.put(entry);
        }
    }
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::Http1(s) => s.is_closed(),
            Sender::Http2(s) => s.is_closed(),
        }
    }

    async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Sender::Http1(s) => s.ready().await,
            Sender::Http2(s) => s.ready().await,
        }
    }

    async fn send(
        &mut self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<UpstreamBody>>> {
        match self {
            Sender::Http1(s) => s.try_send_request(req).await,
            Sender::Http2(s) => s.try_send_request(req).await,
        }
    }
}

/// Where an HTTP/1 connection goes back to once its response is read.
struct Home {
    sender: Sender,
    lease: Arc<Lease>,
}

/// Confluence's response body, streamed; it gives its connection back when
/// it has been read to the end.
pub struct PooledBody {
    body: Incoming,
    home: Option<Home>,
}

impl PooledBody {
    fn new(body: Incoming, home: Option<Home>) -> Self {
        let mut body = PooledBody { body, home };
        // A server does not read a body it knows to be empty (HEAD, 204,
        // Content-Length: 0).
        if body.body.is_end_stream() {
            body.go_home();
        }
        body
    }

    fn go_home(&mut self) {
        if let Some(Home { sender, lease }) = self.home.take() {
            lease.put(sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            None => this.go_home(),
            Some(Ok(_)) if this.body.is_end_stream() => this.go_home(),
            Some(_) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Makes connections to the one upstream.
struct Connector {
    /// The host to resolve (an IPv6 address without its brackets) and port.
    host: String,
    port: u16,
    scheme: Scheme,
    authority: Authority,
    tls: Option<Tls>,
    timeout: Duration,
}

struct Tls {
    /// Offers HTTP/2 and HTTP/1.1.
    any: TlsConnector,
    /// Offers HTTP/1.1 only: for WebSocket handshakes.
    http1: TlsConnector,
    name: ServerName<'static>,
}

impl Connector {
    fn new(upstream: &Upstream, timeout: Duration, tls: rustls::ClientConfig) -> Result<Self, ClientSetupError> {
        let authority = upstream.authority.clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(if upstream.https { 443 } else { 80 });
        let tls = match upstream.https {
            false => None,
            true => {
                let offering = |protocols: &[&[u8]]| {
                    let mut config = tls.clone();
                    config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
                    TlsConnector::from(Arc::new(config))
                };
                let name = ServerName::try_from(host.clone())
                    .map_err(|e| ClientSetupError::Tls(format!("the upstream host {host} cannot be verified: {e}")))?;
                Some(Tls {
                    any: offering(&[b"h2", b"http/1.1"]),
                    http1: offering(&[b"http/1.1"]),
                    name,
                })
            }
        };
        Ok(Connector {
            host,
            port,
            scheme: if upstream.https { Scheme::HTTPS } else { Scheme::HTTP },
            authority,
            tls,
            timeout,
        })
    }

    /// A new connection, within `connect_timeout_s` (TCP and TLS).
    async fn connect(&self, http1_only: bool) -> Result<Sender, PoolError> {
        let connecting = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| PoolError::Connect(e.to_string()))?;
            tcp.set_nodelay(true).map_err(|e| PoolError::Connect(e.to_string()))?;
            let Some(tls) = &self.tls else {
                return handshake_http1(tcp).await;
            };
            let connector = if http1_only { &tls.http1 } else { &tls.any };
            let stream = connector
                .connect(tls.name.clone(), tcp)
                .await
                .map_err(|e| PoolError::Connect(format!("TLS: {e}")))?;
            if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                handshake_http2(stream).await
            } else {
                handshake_http1(stream).await
            }
        };
        match tokio::time::timeout(self.timeout, connecting).await {
            Ok(connected) => connected,
            Err(_) => Err(PoolError::Connect(format!(
                "no connection within {} s",
                self.timeout.as_secs()
            ))),
        }
    }

    /// Puts the request's target in the form the connection's protocol
    /// wants: origin form for HTTP/1.1 (with `Host`, which the caller set),
    /// absolute for HTTP/2, whose `:authority` is the `Host` header's value
    /// (the upstream's, or the client's with `preserve_host`).
    fn address(&self, req: &mut Request<UpstreamBody>, sender: &Sender) {
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        match sender {
            Sender::Http1(_) => {
                parts.scheme = None;
                parts.authority = None;
            }
            Sender::Http2(_) => {
                let host = req.headers_mut().remove(HOST);
                let authority = host
                    .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                    .unwrap_or_else(|| self.authority.clone());
                parts.scheme = Some(self.scheme.clone());
                parts.authority = Some(authority);
            }
        }
        *req.uri_mut() = Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"));
    }
}

async fn handshake_http1<T>(io: T) -> Result<Sender, PoolError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| PoolError::Connect(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    sender.ready().await.map_err(|e| PoolError::Connect(e.to_string()))?;
    Ok(Sender::Http1(sender))
}

async fn handshake_http2<T>(io: T) -> Result<Sender, PoolError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| PoolError::Connect(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
        }
    });
    sender.ready().await.map_err(|e| PoolError::Connect(e.to_string()))?;
    Ok(Sender::Http2(sender))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Either, Full};

    use super::*;
    use crate::config::Config;

    /// A stand-in Confluence: how many connections it accepted, and whether
    /// it closes each connection after its first answer, without saying so.
    struct Upstream {
        addr: std::net::SocketAddr,
        accepted: Arc<AtomicUsize>,
        close_after_one: Arc<AtomicBool>,
    }

    async fn upstream() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let close_after_one = Arc::new(AtomicBool::new(false));
        let (count, close) = (accepted.clone(), close_after_one.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"answer"))))
                });
                if close.load(Ordering::SeqCst) {
                    // Answers as if to keep the connection, then closes it.
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut stream = stream;
                        let mut head = Vec::new();
                        let mut byte = [0u8; 1];
                        while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap_or(0) == 1 {
                            head.push(byte[0]);
                        }
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nanswer")
                            .await;
                    });
                    continue;
                }
                tokio::spawn(async move {
                    let connection =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    let _ = connection.await;
                });
            }
        });
        Upstream {
            addr,
            accepted,
            close_after_one,
        }
    }

    fn pool(upstream: &Upstream, max_idle: usize) -> (Pool, Counter) {
        let config = Config {
            upstream: crate::config::Upstream {
                https: false,
                authority: upstream.addr.to_string().parse().unwrap(),
            },
            upstream_max_idle: max_idle,
            upstream_idle_timeout: Duration::from_secs(60),
            ..Config::default()
        };
        let connects = Counter::default();
        let tls = crate::proxy::tls_client_config(None).unwrap();
        (Pool::new(&config, tls, connects.clone()).unwrap(), connects)
    }

    fn request() -> Request<UpstreamBody> {
        Request::get("/rest/api/space")
            .body(Either::Right(Full::new(Bytes::new())))
            .unwrap()
    }

    /// One exchange on `lease`, its answer read to the end.
    async fn exchange(pool: &Pool, lease: &Arc<Lease>) {
        let response = pool.send(lease, request(), false).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "answer");
    }

    #[tokio::test]
    async fn a_lease_keeps_its_connection_and_the_pool_takes_it_back_when_dropped() {
        let upstream = upstream().await;
        let (pool, connects) = pool(&upstream, 8);
        let lease = pool.lease();
        for _ in 0..3 {
            exchange(&pool, &lease).await;
        }
        assert_eq!((connects.get(), upstream.accepted.load(Ordering::SeqCst)), (1, 1));
        assert_eq!(pool.idle_count(), 0, "held by the lease, not the pool");
        drop(lease);
        assert_eq!(pool.idle_count(), 1);
        // Another client connection's first request takes the pooled one.
        exchange(&pool, &pool.lease()).await;
        assert_eq!(connects.get(), 1);
    }

    #[tokio::test]
    async fn a_connection_idle_past_the_timeout_is_never_used_again() {
        let upstream = upstream().await;
        let (pool, connects) = pool(&upstream, 8);
        let lease = pool.lease();
        exchange(&pool, &lease).await;
        let pooled = pool.lease();
        exchange(&pool, &pooled).await;
        drop(pooled);
        assert_eq!((connects.get(), pool.idle_count()), (2, 1));
        // Nothing is in flight: only the clock moves.
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(61)).await;
        // The reaper has closed the pooled one (its next round comes within 5 s)...
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(pool.idle_count(), 0, "reaped");
        tokio::time::resume();
        // ...and the lease's own is not used again.
        exchange(&pool, &lease).await;
        assert_eq!(connects.get(), 3);
    }

    #[tokio::test]
    async fn a_connection_whose_answer_was_abandoned_is_closed() {
        let upstream = upstream().await;
        let (pool, connects) = pool(&upstream, 8);
        let lease = pool.lease();
        let unread = pool.send(&lease, request(), false).await.unwrap();
        drop(unread);
        exchange(&pool, &lease).await;
        assert_eq!(
            connects.get(),
            2,
            "hyper cannot reuse a connection whose body was left unread"
        );
    }

    #[tokio::test]
    async fn a_connection_confluence_closed_behind_its_back_is_replaced() {
        let upstream = upstream().await;
        upstream.close_after_one.store(true, Ordering::SeqCst);
        let (pool, connects) = pool(&upstream, 8);
        let lease = pool.lease();
        for _ in 0..3 {
            exchange(&pool, &lease).await;
        }
        // Found closed when taken, or handed back unsent by hyper and sent
        // once more on a new connection: either way, every request is answered.
        assert_eq!(connects.get(), 3, "each request on a new connection");
    }

    #[tokio::test]
    async fn the_pool_keeps_at_most_max_idle_connections() {
        let upstream = upstream().await;
        let (pool, connects) = pool(&upstream, 2);
        let leases: Vec<_> = (0..4).map(|_| pool.lease()).collect();
        // Four client connections at once: each needs a connection of its own.
        let responses = answers_on_each(&pool, &leases).await;
        assert_eq!(connects.get(), 4);
        drop(responses);
        drop(leases);
        assert_eq!(pool.idle_count(), 2, "the oldest were closed");
    }

    /// One request on each lease, all answered before any is read.
    async fn answers_on_each(pool: &Pool, leases: &[Arc<Lease>]) -> Vec<Vec<u8>> {
        let mut pending = Vec::new();
        for lease in leases {
            pending.push(pool.send(lease, request(), false).await.unwrap());
        }
        let mut bodies = Vec::new();
        for response in pending {
            bodies.push(response.into_body().collect().await.unwrap().to_bytes().to_vec());
        }
        bodies
    }
}
