//! Listening and connections: plain TCP or TLS (rustls, h2 and http/1.1 by
//! ALPN), HTTP/1.1 and HTTP/2 (h2c by prior knowledge) on each connection,
//! background tasks, and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::app::{App, StartError};
use crate::config::TlsFiles;
use crate::pipeline;
use crate::proxy::ConnInfo;
use crate::record;

/// How long a client may take to send its request headers (slow-loris
/// guard). hyper also runs it while a keep-alive connection waits for its
/// next request, so it is the HTTP/1 idle timeout too.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head accepted (HTTP/1 read buffer, HTTP/2 header list).
/// At most 100 header fields are accepted too: hyper's default, and
/// Tomcat's (`maxHeaderCount`). Setting another count would make hyper
/// allocate and fill its header index per request.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// HTTP/2 pings to find dead peers on idle connections.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may run on after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How often each process looks for tokens deleted elsewhere (CLI, replicas).
/// With PostgreSQL deletions are also pushed at once; this is the fallback.
const REVOCATION_POLL: Duration = Duration::from_millis(500);
/// How often the settings are re-read, to follow changes made through
/// another replica (and to load them once a store unavailable at start answers).
const SETTINGS_REFRESH: Duration = Duration::from_secs(1);
/// How often usage counters are written to the store (SPEC §6: at least every 5 s).
const USAGE_FLUSH: Duration = Duration::from_secs(2);
/// How long the final flush of usage and audit entries may take at shutdown.
const FLUSH_GRACE: Duration = Duration::from_secs(15);
/// How long closing the store's connections may take at shutdown.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How often old audit entries (and revocations) are purged.
const AUDIT_PURGE: Duration = Duration::from_secs(3600);

/// Serves on an already bound listener until `shutdown` completes, then
/// stops accepting and lets in-flight requests finish (bounded).
pub async fn run(listener: TcpListener, app: App, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let tls = app.config.tls.as_ref().map(tls_acceptor).transpose()?;
    // Before the first request: every token verified here is then verified
    // after the cursor, so its later deletion is after it too.
    let cursor = revocation_cursor(&app).await;
    let mut background = vec![
        tokio::spawn(poll_revocations(app.clone(), cursor)),
        // Nothing to flush at start.
        tokio::spawn(every(USAGE_FLUSH, USAGE_FLUSH, app.clone(), |app| async move {
            record::flush_usage(&app).await
        })),
        tokio::spawn(every(Duration::ZERO, AUDIT_PURGE, app.clone(), |app| async move {
            record::purge_expired(&app).await
        })),
        // The settings were read at start (or are defaults until the store answers).
        tokio::spawn(every(
            SETTINGS_REFRESH,
            SETTINGS_REFRESH,
            app.clone(),
            |app| async move { refresh_settings(&app).await },
        )),
    ];
    if let Some(feed) = app.store.revocation_feed() {
        background.push(tokio::spawn(follow_revocations(app.clone(), feed)));
    }
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
    let slots = Arc::new(Semaphore::new(app.config.max_connections));
    let builder = Arc::new(builder);
    let connections = Connections::new();
    tracing::info!(
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        upstream = %app.config.upstream.origin(),
        tls = tls.is_some(),
        workers = app.config.workers,
        scheduler = scheduler_name(),
        "tokengate serving"
    );
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
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse_connection(stream, tls.is_some()));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = ConnInfo::new(peer, tls.is_some());
        let (app, builder) = (app.clone(), builder.clone());
        let watcher = connections.watcher(slot);
        match &tls {
            None => {
                tokio::spawn(serve_connection(builder, stream, app, conn, watcher));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                    match handshake {
                        Ok(Ok(stream)) => serve_connection(builder, stream, app, conn, watcher).await,
                        Ok(Err(e)) => tracing::debug!(client.peer = %peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(client.peer = %peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    drop(listener);
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish in time");
    }
    for task in background {
        task.abort();
    }
    // Bounded: with the store down, the audit writer would retry for ever.
    if tokio::time::timeout(FLUSH_GRACE, record::flush(&app)).await.is_err() {
        tracing::error!(
            queued = app.audit.queue_depth(),
            "the store did not take the pending usage and audit entries in time; exiting without them"
        );
    }
    // Bounded too: closing connections to a store that is gone can hang.
    if tokio::time::timeout(CLOSE_GRACE, app.store.close()).await.is_err() {
        tracing::warn!("the store did not close in time");
    }
    Ok(())
}

/// Which tokio scheduler serves (`workers = 1` selects the current-thread one).
fn scheduler_name() -> &'static str {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => "current_thread",
        _ => "multi_thread",
    }
}

/// Open connections: each holds a [`ConnectionWatcher`]; shutdown tells them
/// to finish their in-flight requests and waits until the last one is gone.
struct Connections {
    stop: watch::Sender<bool>,
    alive: mpsc::Sender<()>,
    gone: mpsc::Receiver<()>,
}

struct ConnectionWatcher {
    stop: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
    /// The connection's place under `max_connections`, freed when it ends.
    _slot: OwnedSemaphorePermit,
}

impl Connections {
    fn new() -> Self {
        let (alive, gone) = mpsc::channel(1);
        Connections {
            stop: watch::Sender::new(false),
            alive,
            gone,
        }
    }

    fn watcher(&self, slot: OwnedSemaphorePermit) -> ConnectionWatcher {
        ConnectionWatcher {
            stop: self.stop.subscribe(),
            _alive: self.alive.clone(),
            _slot: slot,
        }
    }

    async fn shutdown(self) {
        let Connections { stop, alive, mut gone } = self;
        stop.send_replace(true);
        drop(alive);
        // Completes when every watcher (and so every connection) is dropped.
        let _ = gone.recv().await;
    }
}

async fn serve_connection<S>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: S,
    app: App,
    conn: ConnInfo,
    mut watcher: ConnectionWatcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Shared by the connection's requests: one reference count to bump per
    // request, instead of one per part of the App.
    let shared = Arc::new((app, conn.clone()));
    let service = service_fn(move |req| {
        let shared = Arc::clone(&shared);
        async move {
            let (app, conn) = &*shared;
            Ok::<_, Infallible>(pipeline::handle(app, conn, req).await)
        }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stop_requested(&mut watcher.stop) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(client.peer = %conn.peer, error = %e, "connection ended with an error");
    }
}

/// Over `max_connections`: a plain client gets a short 503; a TLS client
/// (no handshake yet) just sees the connection close.
async fn refuse_connection(mut stream: tokio::net::TcpStream, tls: bool) {
    tracing::warn!("max_connections reached; refusing a connection");
    if !tls {
        let body = r#"{"statusCode":503,"message":"too many connections","reason":"unavailable","source":"tokengate"}"#;
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nx-tokengate-reason: unavailable\r\n\
             retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(response.as_bytes())).await;
    }
    let _ = stream.shutdown().await;
}

async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    // The guard wait_for returns is not Send: drop it before the caller awaits.
    let _ = stop.wait_for(|stop| *stop).await.map(|_| ());
}

/// Runs `job` after `first` (zero: now) and then every `period`, until aborted.
async fn every<F, Fut>(first: Duration, period: Duration, app: App, job: F)
where
    F: Fn(App) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + first, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        job(app.clone()).await;
    }
}

/// Where polling for deletions starts: the newest revocation so far.
async fn revocation_cursor(app: &App) -> i64 {
    match app.store.revocation_cursor().await {
        Ok(cursor) => cursor,
        Err(e) => {
            // Tokens may be verified as soon as the store answers, before the
            // poller could read a cursor: start from the beginning so that no
            // deletion in between is missed. Replaying old deletions is harmless.
            tracing::warn!(error = %e, "cannot read the revocation cursor; will replay every recorded deletion");
            0
        }
    }
}

/// Drops tokens deleted by other processes from this one's verified cache.
async fn poll_revocations(app: App, mut cursor: i64) {
    let mut interval = tokio::time::interval(REVOCATION_POLL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        match app.store.revocations_after(cursor).await {
            Ok(revocations) => {
                for revocation in revocations {
                    app.verifier.revoke(&revocation.token_id);
                    cursor = revocation.seq;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read revocations"),
        }
    }
}

/// Applies deletions as the store pushes them (PostgreSQL NOTIFY), ahead of the poll.
async fn follow_revocations(app: App, mut feed: mpsc::Receiver<String>) {
    while let Some(id) = feed.recv().await {
        tracing::debug!(token.id = %id, "token deleted elsewhere; revoked");
        app.verifier.revoke(&id);
    }
}

/// Follows the stored settings (changed through another replica, or not
/// readable at start).
async fn refresh_settings(app: &App) {
    match app.store.settings().await {
        Ok(stored) => app.settings.refresh(stored),
        Err(e) => tracing::debug!(error = %e, "cannot read the settings"),
    }
}

fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, StartError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| StartError::Tls(format!("cannot read {}: {e}", path.display())))
    };
    let certs = rustls_pemfile::certs(&mut read(&files.cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StartError::Tls(format!("{}: {e}", files.cert.display())))?;
    if certs.is_empty() {
        return Err(StartError::Tls(format!(
            "{}: no certificate found",
            files.cert.display()
        )));
    }
    let key = rustls_pemfile::private_key(&mut read(&files.key)?.as_slice())
        .map_err(|e| StartError::Tls(format!("{}: {e}", files.key.display())))?
        .ok_or_else(|| StartError::Tls(format!("{}: no private key found", files.key.display())))?;
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
