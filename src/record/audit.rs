//! The audit log writer: entries go through a bounded queue to a background
//! task that stores them in batches. When the queue is full the request
//! waits: an entry is never dropped. Every entry is also a `tracing` event
//! with target `tokengate::audit`.
//!
//! Queuing an entry costs a request no more than the channel send: the
//! writer sleeps while a batch gathers and takes the whole queue at once, so
//! it is not woken (nor a timer set) per entry. It is woken early only when
//! the queue is half full or someone waits for a flush.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};

use crate::backoff::Backoff;
use crate::store::{AuditEntry, AuditKind, StoreError, TokenStore};

/// Most entries written in one transaction.
const BATCH: usize = 4096;
/// How long the writer gathers entries before writing them (a flush
/// request is written at once). Each transaction rewrites whole pages of
/// the table and its indexes, so a batch of a few hundred rows costs far
/// less per row than one row; much larger batches cost no less per row
/// (callgrind, benches/load.sh: 25 ms gives 2 000 fewer instructions per
/// request than 200 ms) and take the shared core for longer at a time,
/// which requests see at p99 (5.7 ms against 6.6 ms).
const GATHER: Duration = Duration::from_millis(25);

/// Where the writer stores its batches: the token store, or a test's double.
pub trait AuditSink: Send + Sync + 'static {
    /// Appends entries in one transaction.
    fn append_audit<'a>(
        &'a self,
        entries: &'a [AuditEntry],
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'a;
}

impl AuditSink for Arc<dyn TokenStore> {
    fn append_audit<'a>(
        &'a self,
        entries: &'a [AuditEntry],
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'a {
        self.as_ref().append_audit(entries)
    }
}

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
    /// Wakes the writer before its gathering time is up.
    hurry: Arc<Notify>,
}

impl AuditLog {
    /// Starts the background writer with a queue of `capacity` entries.
    pub fn start(sink: impl AuditSink, capacity: usize) -> AuditLog {
        let (queue, pending) = mpsc::channel(capacity);
        let hurry = Arc::new(Notify::new());
        tokio::spawn(write_batches(sink, pending, hurry.clone()));
        AuditLog { queue, capacity, hurry }
    }

    /// Queues an entry (its free text bounded, SPEC §12), waiting while the
    /// queue is full.
    pub async fn record(&self, entry: AuditEntry) {
        let entry = super::bounded_entry(entry);
        emit_event(&entry);
        if self.queue.send(Message::Entry(Box::new(entry))).await.is_err() {
            tracing::error!("the audit writer has stopped; entry not stored");
            return;
        }
        if self.queue.capacity() <= self.capacity / 2 {
            self.hurry.notify_one();
        }
    }

    /// Waits until every entry queued so far is stored.
    pub async fn flush(&self) {
        let (done, stored) = oneshot::channel();
        if self.queue.send(Message::Flush(done)).await.is_ok() {
            self.hurry.notify_one();
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

async fn write_batches(sink: impl AuditSink, mut pending: mpsc::Receiver<Message>, hurry: Arc<Notify>) {
    let mut messages = Vec::with_capacity(BATCH);
    while pending.recv_many(&mut messages, BATCH).await > 0 {
        gather(&mut pending, &mut messages, &hurry).await;
        let mut entries = Vec::with_capacity(messages.len());
        let mut acks = Vec::new();
        for message in messages.drain(..) {
            match message {
                Message::Entry(entry) => entries.push(*entry),
                Message::Flush(done) => acks.push(done),
            }
        }
        store_with_retry(&sink, &entries).await;
        for done in acks {
            let _ = done.send(());
        }
    }
}

/// Lets a batch gather for [`GATHER`] (less when hurried: the queue is half
/// full or someone waits for a flush), then takes what is queued, up to a
/// full batch.
async fn gather(pending: &mut mpsc::Receiver<Message>, messages: &mut Vec<Message>, hurry: &Notify) {
    let flush_requested = messages.iter().any(|m| matches!(m, Message::Flush(_)));
    if !flush_requested && messages.len() < BATCH {
        tokio::select! {
            () = tokio::time::sleep(GATHER) => {}
            () = hurry.notified() => {}
        }
    }
    while messages.len() < BATCH {
        match pending.try_recv() {
            Ok(message) => messages.push(message),
            Err(_) => return,
        }
    }
}

/// Retries until the store takes the batch: losing audit entries is worse
/// than making requests wait (they do once the queue fills up).
async fn store_with_retry(sink: &impl AuditSink, entries: &[AuditEntry]) {
    if entries.is_empty() {
        return;
    }
    let mut retry = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    while let Err(e) = sink.append_audit(entries).await {
        tracing::error!(error = %e, entries = entries.len(), "cannot store audit entries; retrying");
        retry.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Semaphore;

    use super::*;

    /// A sink that keeps what it is given, fails its first `failures`
    /// batches, and takes each batch only once `gate` lets it.
    #[derive(Clone, Default)]
    struct Sink(Arc<SinkState>);

    #[derive(Default)]
    struct SinkState {
        batches: Mutex<Vec<Vec<i64>>>,
        failures: AtomicUsize,
        gate: Option<Semaphore>,
    }

    impl AuditSink for Sink {
        async fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
            if let Some(gate) = &self.0.gate {
                gate.acquire().await.unwrap().forget();
            }
            let failed = self
                .0
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failed {
                return Err(StoreError::NotReady);
            }
            let batch = entries.iter().map(|e| e.at).collect();
            self.0.batches.lock().unwrap().push(batch);
            Ok(())
        }
    }

    impl Sink {
        fn stored(&self) -> Vec<i64> {
            self.0.batches.lock().unwrap().concat()
        }
    }

    fn entry(at: i64) -> AuditEntry {
        AuditEntry::management(at, "admin", "create")
    }

    #[tokio::test(start_paused = true)]
    async fn entries_are_stored_in_order_in_few_batches() {
        let sink = Sink::default();
        let log = AuditLog::start(sink.clone(), 100);
        for at in 0..50 {
            log.record(entry(at)).await;
        }
        log.flush().await;
        assert_eq!(sink.stored(), (0..50).collect::<Vec<_>>());
        assert_eq!(sink.0.batches.lock().unwrap().len(), 1, "gathered into one transaction");
        assert_eq!(log.queue_depth(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_makes_the_caller_wait_and_loses_nothing() {
        let sink = Sink(Arc::new(SinkState {
            gate: Some(Semaphore::new(0)),
            ..SinkState::default()
        }));
        let log = AuditLog::start(sink.clone(), 2);
        // The writer gathers the first entry and then blocks on the gate...
        log.record(entry(0)).await;
        tokio::time::sleep(GATHER + Duration::from_millis(100)).await;
        // ...two more fill the queue...
        for at in 1..3 {
            log.record(entry(at)).await;
        }
        assert_eq!(log.queue_depth(), 2);
        // ...and the next one waits for room.
        let waiting = tokio::spawn({
            let log = log.clone();
            async move { log.record(entry(3)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the fourth entry waits for room");
        assert_eq!(sink.stored(), Vec::<i64>::new());
        sink.0.gate.as_ref().unwrap().add_permits(100);
        waiting.await.unwrap();
        log.flush().await;
        assert_eq!(sink.stored(), [0, 1, 2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_store_is_retried_until_it_takes_the_batch() {
        let sink = Sink(Arc::new(SinkState {
            failures: AtomicUsize::new(3),
            ..SinkState::default()
        }));
        let log = AuditLog::start(sink.clone(), 10);
        log.record(entry(7)).await;
        log.flush().await;
        assert_eq!(sink.stored(), [7]);
        assert_eq!(sink.0.failures.load(Ordering::SeqCst), 0);
    }
}
