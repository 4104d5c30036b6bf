//! The audit log writer: entries go through a bounded queue to a background
//! task that stores them in batches. When the queue is full the request
//! waits: an entry is never dropped. Every entry is also a `tracing` event
//! with target `tokengate::audit`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::store::{AuditEntry, AuditKind, TokenStore};

/// Most entries written in one transaction.
const BATCH: usize = 4096;
/// How long the writer gathers entries before writing them: each
/// transaction rewrites whole pages of the table and its indexes, so fewer,
/// larger ones cost far less (a flush request is written at once).
const GATHER: Duration = Duration::from_millis(200);

enum Message {
    Entry(Box<AuditEntry>),
    /// Acknowledged once every entry queued before it is stored.
    Flush(oneshot::Sender<()>),
}

/// The sending side of the audit log; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    queue: mpsc::Sender<Message>,
    capacity: usize,
}

impl AuditLog {
    /// Starts the background writer with a queue of `capacity` entries.
    pub fn start(store: Arc<dyn TokenStore>, capacity: usize) -> AuditLog {
        let (queue, pending) = mpsc::channel(capacity);
        tokio::spawn(write_batches(store, pending));
        AuditLog { queue, capacity }
    }

    /// Queues an entry, waiting while the queue is full.
    pub async fn record(&self, entry: AuditEntry) {
        emit_event(&entry);
        if self.queue.send(Message::Entry(Box::new(entry))).await.is_err() {
            tracing::error!("the audit writer has stopped; entry not stored");
        }
    }

    /// Waits until every entry queued so far is stored.
    pub async fn flush(&self) {
        let (done, stored) = oneshot::channel();
        if self.queue.send(Message::Flush(done)).await.is_ok() {
            let _ = stored.await;
        }
    }

    /// Entries waiting to be written.
    pub fn queue_depth(&self) -> usize {
        self.capacity - self.queue.capacity()
    }
}

fn emit_event(e: &AuditEntry) {
    match e.kind {
        AuditKind::Request => tracing::event!(
            target: "tokengate::audit",
            tracing::Level::INFO,
            token.id = e.token_id.as_deref(),
            token.label = e.token_label.as_deref(),
            user = e.user.as_deref(),
            client.ip = e.client_ip.as_deref(),
            http.method = e.method.as_deref(),
            url.path = e.path.as_deref(),
            http.status = e.status,
            decision = %e.decision,
            reason = e.reason.as_deref(),
            duration_ms = e.duration_ms,
            "token request"
        ),
        AuditKind::Management => tracing::event!(
            target: "tokengate::audit",
            tracing::Level::INFO,
            actor = e.user.as_deref(),
            action = %e.decision,
            token.id = e.token_id.as_deref(),
            token.label = e.token_label.as_deref(),
            client.ip = e.client_ip.as_deref(),
            detail = e.detail.as_deref(),
            "management action"
        ),
    }
}

async fn write_batches(store: Arc<dyn TokenStore>, mut pending: mpsc::Receiver<Message>) {
    let mut messages = Vec::with_capacity(BATCH);
    while pending.recv_many(&mut messages, BATCH).await > 0 {
        gather(&mut pending, &mut messages).await;
        let mut entries = Vec::with_capacity(messages.len());
        let mut acks = Vec::new();
        for message in messages.drain(..) {
            match message {
                Message::Entry(entry) => entries.push(*entry),
                Message::Flush(done) => acks.push(done),
            }
        }
        store_with_retry(store.as_ref(), &entries).await;
        for done in acks {
            let _ = done.send(());
        }
    }
}

/// Takes more messages for up to [`GATHER`], until the batch is full or
/// someone waits for a flush.
async fn gather(pending: &mut mpsc::Receiver<Message>, messages: &mut Vec<Message>) {
    let deadline = tokio::time::Instant::now() + GATHER;
    let flush_requested = |messages: &[Message]| messages.iter().any(|m| matches!(m, Message::Flush(_)));
    while messages.len() < BATCH && !flush_requested(messages) {
        let room = BATCH - messages.len();
        match tokio::time::timeout_at(deadline, pending.recv_many(messages, room)).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Retries until the store takes the batch: losing audit entries is worse
/// than making requests wait (they do once the queue fills up).
async fn store_with_retry(store: &dyn TokenStore, entries: &[AuditEntry]) {
    if entries.is_empty() {
        return;
    }
    let mut delay = Duration::from_millis(50);
    while let Err(e) = store.append_audit(entries).await {
        tracing::error!(error = %e, entries = entries.len(), "cannot store audit entries; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
