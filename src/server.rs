//! Listening and connections: the accept loop, one task per connection
//! (plain TCP or TLS with h2 and http/1.1 by ALPN; HTTP/1.1 and HTTP/2,
//! h2c by prior knowledge), the background jobs, and the drain at shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::app::{App, StartError};
use crate::body::ClientBody;
use crate::config::TlsFiles;
use crate::error::{Audience, GatewayError, Reason};
use crate::pipeline;
use crate::proxy::ConnInfo;
use crate::record;
use crate::store::ChangeKind;
use crate::tokens::TokenCache as _;

/// How long a client may take to send a complete request head: counted
/// from accept for the first request (TLS handshake included), and by
/// hyper while a keep-alive HTTP/1 connection waits for its next request,
/// so it is the HTTP/1 idle timeout too. Slow-loris guard.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head accepted (HTTP/1 read buffer, HTTP/2 header list).
/// At most 100 header fields are accepted too: hyper's default, and
/// Tomcat's (`maxHeaderCount`). Setting another count would make hyper
/// allocate and fill its header index per request.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// HTTP/2 pings to find dead peers on idle connections.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// How long a TLS handshake may take (within [`HEADER_READ_TIMEOUT`]).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may run on after shutdown begins. With
/// [`FLUSH_GRACE`] and [`CLOSE_GRACE`] the whole drain stays within 30 s,
/// the grace a container runtime gives (Kubernetes' default) before it
/// kills the process.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
/// How often each process looks for tokens deleted elsewhere (CLI, replicas).
/// With PostgreSQL deletions are also pushed at once; this is the fallback.
const REVOCATION_POLL: Duration = Duration::from_millis(500);
/// How often the settings are re-read, to follow changes made through
/// another replica (and to load them once a store unavailable at start answers).
const SETTINGS_REFRESH: Duration = Duration::from_secs(1);
/// How often usage counters are written to the store (SPEC §6: at least every 5 s).
const USAGE_FLUSH: Duration = Duration::from_secs(2);
/// How often token expiry is checked for events and the token gauges (SPEC §18).
const EXPIRY_CHECK: Duration = Duration::from_secs(60);
/// How long the background jobs' last runs and the final flush of usage
/// and audit entries may take at shutdown, together.
const FLUSH_GRACE: Duration = Duration::from_secs(6);
/// How long closing the store's connections may take at shutdown.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How often old audit entries (and revocations) are purged.
const AUDIT_PURGE: Duration = Duration::from_secs(3600);

/// Serves on an already bound listener until `shutdown` completes, then
/// stops accepting and lets in-flight requests finish (bounded).
pub async fn run(listener: TcpListener, app: App, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let tls = app.config.tls.as_ref().map(tls_acceptor).transpose()?;
    let background = start_background_jobs(&app).await;
    let connections = Connections::new(&app, tls);
    tracing::info!(
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        upstream = %app.config.upstream.origin(),
        tls = connections.tls.is_some(),
        workers = app.config.workers,
        scheduler = scheduler_name(),
        "tokengate serving"
    );
    accept_until(&listener, &app, &connections, shutdown).await;
    drop(listener);
    drain(&app, connections, background).await;
    Ok(())
}

/// What every connection is served with.
struct Connections {
    builder: Arc<auto::Builder<TokioExecutor>>,
    tls: Option<TlsAcceptor>,
    /// One permit per open connection (`max_connections`).
    slots: Arc<Semaphore>,
    /// Tells every connection to finish at shutdown, and waits for them.
    graceful: GracefulShutdown,
}

impl Connections {
    fn new(app: &App, tls: Option<TlsAcceptor>) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEADER_BYTES);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEADER_BYTES as u32)
            .keep_alive_interval(H2_KEEP_ALIVE)
            .keep_alive_timeout(Duration::from_secs(10));
        Connections {
            builder: Arc::new(builder),
            tls,
            slots: Arc::new(Semaphore::new(app.config.max_connections)),
            graceful: GracefulShutdown::new(),
        }
    }
}

/// Accepts connections, each into a task of its own, until `shutdown`.
async fn accept_until(
    listener: &TcpListener,
    app: &App,
    connections: &Connections,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let Ok(slot) = connections.slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse_connection(stream, app.clone(), connections.tls.is_some()));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            app: app.clone(),
            conn: ConnInfo::new(peer, connections.tls.is_some()),
            builder: connections.builder.clone(),
            watcher: connections.graceful.watcher(),
            slot,
            accepted: Instant::now(),
        };
        tokio::spawn(connection.serve(stream, connections.tls.clone()));
    }
}

/// One client connection, from accept to close.
struct Connection {
    app: App,
    conn: ConnInfo,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
    /// The connection's place under `max_connections`, freed when it ends
    /// and so does any tunnel it became.
    slot: OwnedSemaphorePermit,
    accepted: Instant,
}

/// What a connection's requests share: one reference count to bump per
/// request, instead of one per part of the App.
struct Shared {
    app: App,
    conn: pipeline::Connection,
    /// Whether a first request head has arrived.
    started: AtomicBool,
}

impl Connection {
    async fn serve(self, stream: TcpStream, tls: Option<TlsAcceptor>) {
        let peer = self.conn.peer;
        let Some(acceptor) = tls else {
            return self.serve_http(stream).await;
        };
        let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
        match handshake {
            Ok(Ok(stream)) => self.serve_http(stream).await,
            Ok(Err(e)) => tracing::debug!(network.peer.address = %peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(network.peer.address = %peer, "TLS handshake timed out"),
        }
    }

    /// Serves HTTP until the client closes, the connection fails, or no
    /// first request head arrives within [`HEADER_READ_TIMEOUT`] of accept
    /// (hyper's own header timer starts only once bytes have arrived, so a
    /// silent connection would otherwise hold its slot for ever).
    async fn serve_http<S>(self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            app,
            conn,
            builder,
            watcher,
            slot,
            accepted,
        } = self;
        let peer = conn.peer;
        let conn = pipeline::Connection::new(conn, &app).holding(slot);
        let shared = Arc::new(Shared {
            app,
            conn,
            started: AtomicBool::new(false),
        });
        let first_request = shared.clone();
        let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let shared = Arc::clone(&shared);
            async move {
                if !shared.started.load(Ordering::Relaxed) {
                    shared.started.store(true, Ordering::Relaxed);
                }
                let req = req.map(ClientBody::new);
                Ok::<_, Infallible>(pipeline::handle(&shared.app, &shared.conn, req).await)
            }
        });
        let connection = watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service));
        tokio::select! {
            result = connection => {
                if let Err(e) = result {
                    tracing::debug!(network.peer.address = %peer, error = %e, "connection ended with an error");
                }
            }
            () = no_request_by(accepted + HEADER_READ_TIMEOUT, &first_request.started) => {
                tracing::debug!(network.peer.address = %peer, "no request head within the header timeout; closing");
            }
        }
    }
}

/// Completes at `deadline` unless a request has started by then.
async fn no_request_by(deadline: Instant, started: &AtomicBool) {
    tokio::time::sleep_until(deadline).await;
    if started.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
}

/// Over `max_connections`: a plain client gets a short 503, built like every
/// other refusal; a TLS client (no handshake yet) just sees the connection close.
async fn refuse_connection(mut stream: TcpStream, app: App, tls: bool) {
    tracing::warn!("max_connections reached; refusing a connection");
    if !tls {
        let refusal = GatewayError::new(Reason::Unavailable, "too many connections").retry_after(1);
        let response = http1_bytes(refusal.into_response(Audience::Proxy(app.config.token_auth))).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&response)).await;
    }
    let _ = stream.shutdown().await;
}

/// A whole response as HTTP/1.1 bytes, for the one answer the gateway writes
/// without a hyper connection; it closes the connection.
async fn http1_bytes(response: hyper::Response<http_body_util::Full<bytes::Bytes>>) -> Vec<u8> {
    use http_body_util::BodyExt;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("connection: close\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(&body);
    out
}

/// Stops accepting is done; lets in-flight requests finish (bounded), stops
/// the background jobs, writes out what is pending, closes the store.
async fn drain(app: &App, connections: Connections, background: Background) {
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    // Tunnels would live as long as their clients like: they are told to
    // close at once (and their tasks end within moments).
    let finished = async { tokio::join!(connections.graceful.shutdown(), app.tunnels.close_all()) };
    if tokio::time::timeout(SHUTDOWN_GRACE, finished).await.is_err() {
        tracing::warn!("in-flight requests did not finish in time");
    }
    let flushed_by = Instant::now() + FLUSH_GRACE;
    background.stop(flushed_by).await;
    // Bounded: with the store down, the audit writer would retry for ever.
    if tokio::time::timeout_at(flushed_by, app.flush_records()).await.is_err() {
        tracing::error!(
            queued = app.audit.queue_depth(),
            "the store did not take the pending usage and audit entries in time; exiting without them"
        );
    }
    // Bounded too: closing connections to a store that is gone can hang.
    if tokio::time::timeout(CLOSE_GRACE, app.store.close()).await.is_err() {
        tracing::warn!("the store did not close in time");
    }
}

/// Which tokio scheduler serves (`workers = 1` selects the current-thread one).
fn scheduler_name() -> &'static str {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => "current_thread",
        _ => "multi_thread",
    }
}

/// The gateway's jobs besides serving.
struct Background {
    /// Tells the periodic jobs to stop once their current run is done.
    stopping: CancellationToken,
    /// Jobs that write (usage flushes, purges, the expiry check, the
    /// settings): never cut short in the middle of a run, so that nothing
    /// they have taken out of memory is lost at shutdown.
    periodic: Vec<JoinHandle<()>>,
    /// Jobs that only read or wait (revocations from elsewhere, the event
    /// sender, whose leased events are sent again by whoever takes them
    /// next): aborted.
    followers: Vec<JoinHandle<()>>,
}

impl Background {
    /// Stops every job: the periodic ones after their current run (aborted
    /// if it has not ended by `deadline`, so that none writes beside the
    /// final flush), the others at once.
    async fn stop(self, deadline: Instant) {
        self.stopping.cancel();
        for task in &self.followers {
            task.abort();
        }
        let aborts: Vec<_> = self.periodic.iter().map(JoinHandle::abort_handle).collect();
        if tokio::time::timeout_at(deadline, join_each(self.periodic))
            .await
            .is_err()
        {
            tracing::warn!("a background job did not finish its run in time; stopped");
            for task in aborts {
                task.abort();
            }
        }
    }
}

/// Awaits every task (their panics are logged by the runtime).
async fn join_each(tasks: Vec<JoinHandle<()>>) {
    for task in tasks {
        let _ = task.await;
    }
}

/// The background jobs: revocations made elsewhere, usage flushes, purges,
/// settings changed elsewhere, token events.
async fn start_background_jobs(app: &App) -> Background {
    // Before the first request: every token verified here is then verified
    // after the cursor, so its later deletion is after it too.
    let cursor = revocation_cursor(app).await;
    let stopping = CancellationToken::new();
    let every = |first: Duration, period: Duration, job: fn(App) -> BoxFuture| {
        tokio::spawn(every(first, period, app.clone(), stopping.clone(), job))
    };
    let periodic = vec![
        // Nothing to flush at start.
        every(USAGE_FLUSH, USAGE_FLUSH, |app| {
            Box::pin(async move {
                record::flush_usage(&app.usage, app.store.as_ref()).await;
                app.record_throttled(false).await;
            })
        }),
        every(Duration::ZERO, AUDIT_PURGE, |app| {
            Box::pin(async move { app.purge_expired().await })
        }),
        // The settings were read at start (or are defaults until the store answers).
        every(SETTINGS_REFRESH, SETTINGS_REFRESH, |app| {
            Box::pin(async move { app.settings.refresh().await })
        }),
        // Token events (SPEC §18): the expiry check at start and every minute.
        every(Duration::ZERO, EXPIRY_CHECK, |app| {
            Box::pin(async move {
                if let Err(e) = app.events.check_expiry(&app.metrics).await {
                    tracing::warn!(error = %e, "cannot check token expiry; will try again");
                }
            })
        }),
    ];
    let mut followers = vec![
        tokio::spawn(poll_revocations(app.clone(), cursor)),
        // This process's sender of the event outbox.
        tokio::spawn(app.events.clone().run_sender()),
    ];
    if let Some(feed) = app.store.revocation_feed() {
        followers.push(tokio::spawn(follow_revocations(app.clone(), feed)));
    }
    Background {
        stopping,
        periodic,
        followers,
    }
}

/// One run of a periodic job.
type BoxFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs `job` after `first` (zero: now) and then every `period`, until
/// `stopping`: a run under way is finished first.
async fn every(first: Duration, period: Duration, app: App, stopping: CancellationToken, job: fn(App) -> BoxFuture) {
    let mut interval = tokio::time::interval_at(Instant::now() + first, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stopping.cancelled() => return,
            _ = interval.tick() => job(app.clone()).await,
        }
    }
}

/// Where polling for changes starts: the newest deletion or update so far.
async fn revocation_cursor(app: &App) -> i64 {
    match app.store.revocation_cursor().await {
        Ok(cursor) => cursor,
        Err(e) => {
            // Tokens may be verified as soon as the store answers, before the
            // poller could read a cursor: start from the beginning so that no
            // change in between is missed. Replaying old changes is harmless
            // (a deleted token stays deleted; an updated one is read again).
            tracing::warn!(error = %e, "cannot read the revocation cursor; will replay every recorded change");
            0
        }
    }
}

/// Applies deletions and updates made by other processes to this one's
/// verified cache (SPEC §7, §16).
async fn poll_revocations(app: App, mut cursor: i64) {
    let mut interval = tokio::time::interval(REVOCATION_POLL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        match app.store.revocations_after(cursor).await {
            Ok(changes) => {
                for change in changes {
                    app.auth.verifier().changed(change.kind, &change.token_id);
                    cursor = change.seq;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read token changes"),
        }
    }
}

/// Applies changes as the store pushes them (PostgreSQL NOTIFY), ahead of the poll.
async fn follow_revocations(app: App, mut feed: mpsc::Receiver<(ChangeKind, String)>) {
    while let Some((kind, id)) = feed.recv().await {
        tracing::debug!(token.id = %id, ?kind, "token changed elsewhere");
        app.auth.verifier().changed(kind, &id);
    }
}

fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, StartError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| StartError::Tls(format!("cannot read {}: {e}", path.display())))
    };
    let certs = CertificateDer::pem_slice_iter(&read(&files.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StartError::Tls(format!("{}: {e}", files.cert.display())))?;
    if certs.is_empty() {
        return Err(StartError::Tls(format!(
            "{}: no certificate found",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?).map_err(|e| match e {
        pem::Error::NoItemsFound => StartError::Tls(format!("{}: no private key found", files.key.display())),
        e => StartError::Tls(format!("{}: {e}", files.key.display())),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| StartError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A periodic job's run under way at shutdown is finished, not cut
    /// short: the usage flush takes the counters out of memory before it
    /// writes them, and an abort in between lost them.
    #[tokio::test]
    async fn stopping_lets_a_periodic_run_under_way_finish() {
        use std::sync::atomic::AtomicUsize;
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        static FINISHED: AtomicUsize = AtomicUsize::new(0);
        let (app, _, _dir) = crate::app::test_app(|_| {}).await;
        tokio::time::pause();
        let stopping = CancellationToken::new();
        let job: fn(App) -> BoxFuture = |_| {
            Box::pin(async {
                STARTED.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(3)).await;
                FINISHED.fetch_add(1, Ordering::SeqCst);
            })
        };
        let periodic = vec![tokio::spawn(every(
            Duration::ZERO,
            Duration::from_secs(10),
            app,
            stopping.clone(),
            job,
        ))];
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(STARTED.load(Ordering::SeqCst), 1, "a run is under way");
        let background = Background {
            stopping,
            periodic,
            followers: Vec::new(),
        };
        background.stop(Instant::now() + FLUSH_GRACE).await;
        assert_eq!(FINISHED.load(Ordering::SeqCst), 1, "the run was finished");
        assert_eq!(STARTED.load(Ordering::SeqCst), 1, "and no other started");
    }

    /// The TLS files as `tls_acceptor` reads them: what it says of each.
    fn acceptor(cert: &str, key: &str) -> Result<(), String> {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        tls_acceptor(&files).map(|_| ()).map_err(|e| e.to_string())
    }

    #[test]
    fn tls_files_are_read_as_pem_and_their_faults_named() {
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key) = (pair.cert.pem(), pair.key_pair.serialize_pem());
        assert_eq!(acceptor(&cert, &key), Ok(()));
        let chain = format!("{cert}{cert}");
        assert_eq!(acceptor(&chain, &key), Ok(()), "a chain of several");
        for (cert_text, key_text, says) in [
            ("", key.as_str(), "no certificate found"),
            (key.as_str(), key.as_str(), "no certificate found"),
            (cert.as_str(), "", "no private key found"),
            (cert.as_str(), cert.as_str(), "no private key found"),
            (
                "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
                key.as_str(),
                "cert.pem",
            ),
        ] {
            let error = acceptor(cert_text, key_text).unwrap_err();
            assert!(error.contains(says), "{error}");
        }
    }
}
