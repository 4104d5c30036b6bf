//! Upgraded connections (WebSocket), SPEC §12: a tunnel copies bytes both
//! ways between the client and Confluence once both sides have switched
//! protocols. Every tunnel is tracked, so that it keeps its client
//! connection's place under `max_connections` for as long as it lives, is
//! closed when the gateway drains, and is closed as soon as what it was
//! opened with stops holding (its token deleted, rotated past its grace,
//! or expired).

use std::future::Future;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Both ends of a protocol switch Confluence agreed to, not yet joined.
pub struct Tunnel {
    pub(super) client: OnUpgrade,
    pub(super) upstream: OnUpgrade,
}

/// Every open tunnel of the gateway.
pub struct Tunnels {
    tracker: TaskTracker,
    closing: CancellationToken,
    open: Gauge,
}

impl Tunnels {
    /// `open` counts the tunnels open (`tokengate_tunnels_open`).
    pub fn new(open: Gauge) -> Self {
        Tunnels {
            tracker: TaskTracker::new(),
            closing: CancellationToken::new(),
            open,
        }
    }

    /// Runs `tunnel` in a task of its own until either side closes, the
    /// gateway drains, or `ends` (when given) completes. `holds` lives as
    /// long as the tunnel: the client connection's place under
    /// `max_connections`.
    pub fn open<H, E>(&self, tunnel: Tunnel, holds: H, ends: Option<E>)
    where
        H: Send + 'static,
        E: Future<Output = ()> + Send + 'static,
    {
        if self.closing.is_cancelled() {
            return;
        }
        let closing = self.closing.clone();
        let open = self.open.clone();
        self.tracker.spawn(async move {
            let _holds = holds;
            let ends = async {
                match ends {
                    Some(ends) => ends.await,
                    None => std::future::pending().await,
                }
            };
            open.inc();
            tokio::select! {
                () = splice(tunnel) => {}
                () = closing.cancelled() => tracing::debug!("tunnel closed: the gateway is shutting down"),
                () = ends => tracing::info!("tunnel closed: its token no longer holds"),
            }
            open.dec();
        });
    }

    /// Whether the gateway is shutting down: no tunnel opens any more.
    pub fn is_closing(&self) -> bool {
        self.closing.is_cancelled()
    }

    /// Closes every tunnel and waits until their tasks have ended.
    pub async fn close_all(&self) {
        self.closing.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Tunnels open now.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }
}

/// Copies bytes both ways until either side closes or fails.
async fn splice(tunnel: Tunnel) {
    let (client, upstream) = match tokio::try_join!(tunnel.client, tunnel.upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "upgraded connection ended");
    }
}
