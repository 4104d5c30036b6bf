//! Token events and the webhook (SPEC §18).
//!
//! An event is raised wherever the change is made (the token manager serves
//! the API, the CLI and the web page alike; the server's expiry check; the
//! throttle) and written to an outbox in the store: raising never waits for
//! the webhook, and an event outlives a restart. Every gateway process runs
//! a sender that claims due events (one sender per event, whichever replica)
//! and POSTs each until the webhook answers 2xx, retrying with backoff for
//! 24 h. With `notify_url` unset nothing is raised.
//!
//! The body is the same on every retry, so its `id` lets a receiver drop
//! duplicates; with `notify_secret` each request is signed, `X-Tokengate-
//! Signature: sha256=<HMAC-SHA256 of "<timestamp>.<body>">`, with the
//! timestamp in `X-Tokengate-Timestamp`, so a receiver can refuse replays.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, USER_AGENT};
use hyper::{Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::TryRngCore;
use rand::distr::{Alphanumeric, SampleString};
use rand::rngs::OsRng;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::Notify;

use crate::clock::{Clock, DAY_MS, EpochMs};
use crate::config::Config;
use crate::proxy::{ClientSetupError, tls_client_config};
use crate::record::Metrics;
use crate::store::{EventOutcome, EventRecord, NewEvent, StoreError, TokenRecord, TokenStore};

/// Events are retried for this long, then abandoned (and logged).
const GIVE_UP_AFTER_MS: EpochMs = DAY_MS;
/// The first retry comes this soon; each next one waits twice as long...
const FIRST_RETRY_MS: EpochMs = 10_000;
/// ... but never longer than this.
const LONGEST_WAIT_MS: EpochMs = 3_600_000;
/// A claimed event is this sender's for this long: a sender that dies lets it go.
const LEASE_MS: EpochMs = 60_000;
/// Events claimed at once: one, so that its lease ([`LEASE_MS`]) always
/// outlasts its delivery ([`DELIVERY_TIMEOUT`]). A batch of several would
/// outlive the lease while it is sent, and another replica would claim and
/// send its last events again.
const BATCH: i64 = 1;
/// How long the webhook has to answer one event.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
const _: () = assert!(DELIVERY_TIMEOUT.as_millis() as EpochMs * BATCH * 2 < LEASE_MS);
/// How often a sender looks for due events (it is also woken by a local raise).
pub const SEND_POLL: Duration = Duration::from_secs(1);
/// `expiringSoon` and the `expiring` gauge: within this many days.
pub const SOON_DAYS: i64 = 7;

/// Until when a token valid at `now` counts as expiring soon.
pub fn soon_after(now: EpochMs) -> EpochMs {
    now + SOON_DAYS * DAY_MS
}
/// Once-keys remembered in memory at most (then forgotten, and the store
/// answers again).
const MAX_REMEMBERED_ONCE: usize = 200_000;
/// `token.expired` is raised for tokens that expired at most this long ago
/// (a gateway that was down when one expired still tells).
const EXPIRED_LOOKBACK_MS: EpochMs = 7 * DAY_MS;

/// Something that happened to a token (or a client), as raised.
#[derive(Debug)]
pub enum Event<'a> {
    Created(&'a TokenRecord),
    /// With what changed: `{"field":[old,new],...}`.
    Updated(&'a TokenRecord, Value),
    Rotated(&'a TokenRecord),
    Deleted(&'a TokenRecord),
    /// It expires within `threshold` days (one of `expiry_warning_days`).
    Expiring {
        token: &'a TokenRecord,
        threshold: u32,
    },
    Expired(&'a TokenRecord),
    /// A client was answered 429 `too_many_failures`, `refused` times in the
    /// minute that starts at `minute`.
    Throttled {
        client_ip: IpAddr,
        minute: EpochMs,
        refused: u64,
    },
}

impl Event<'_> {
    fn name(&self) -> &'static str {
        match self {
            Event::Created(_) => "token.created",
            Event::Updated(..) => "token.updated",
            Event::Rotated(_) => "token.rotated",
            Event::Deleted(_) => "token.deleted",
            Event::Expiring { .. } => "token.expiring",
            Event::Expired(_) => "token.expired",
            Event::Throttled { .. } => "auth.throttled",
        }
    }

    fn token(&self) -> Option<&TokenRecord> {
        match self {
            Event::Created(t) | Event::Updated(t, _) | Event::Rotated(t) | Event::Deleted(t) | Event::Expired(t) => {
                Some(t)
            }
            Event::Expiring { token, .. } => Some(token),
            Event::Throttled { .. } => None,
        }
    }

    /// The key that makes an event that may be raised again (every minute,
    /// by every replica) queue once.
    fn once(&self) -> Option<String> {
        match self {
            Event::Expiring { token, threshold } => Some(format!(
                "expiring:{}:{threshold}:{}",
                token.id,
                token.valid_until.unwrap_or_default()
            )),
            Event::Expired(token) => Some(format!(
                "expired:{}:{}",
                token.id,
                token.valid_until.unwrap_or_default()
            )),
            Event::Throttled { client_ip, minute, .. } => Some(format!("throttled:{client_ip}:{}", minute / 60_000)),
            _ => None,
        }
    }

    fn detail(&self, now: EpochMs) -> Value {
        match self {
            Event::Updated(_, changes) => json!({ "changes": changes }),
            Event::Rotated(token) => json!({ "graceUntil": token.grace_until }),
            Event::Expiring { token, threshold } => json!({
                "threshold": threshold,
                "daysLeft": token.valid_until.map(|until| days_left(until, now)),
            }),
            Event::Throttled {
                client_ip,
                minute,
                refused,
            } => json!({ "clientIp": client_ip.to_string(), "minute": minute, "refused": refused }),
            Event::Created(token) => json!({ "author": token.author }),
            Event::Deleted(_) | Event::Expired(_) => json!({}),
        }
    }

    /// One line for people: the event, the token's label and its user.
    fn text(&self, now: EpochMs) -> String {
        let what = match self {
            Event::Created(t) => match t.valid_until {
                Some(until) => format!("was created; it expires on {}", date(until)),
                None => "was created".to_owned(),
            },
            Event::Updated(_, changes) => {
                let fields: Vec<&str> = changes
                    .as_object()
                    .map_or(Vec::new(), |c| c.keys().map(String::as_str).collect());
                format!("was changed ({})", fields.join(", "))
            }
            Event::Rotated(t) => match t.grace_until {
                Some(until) => format!("got a new secret; the old one works until {}", time(until)),
                None => "got a new secret; the old one stopped working".to_owned(),
            },
            Event::Deleted(_) => "was deleted".to_owned(),
            Event::Expiring { token, .. } => {
                let until = token.valid_until.unwrap_or_default();
                match days_left(until, now) {
                    1 => format!("expires within a day, on {}", time(until)),
                    n => format!("expires in {n} days, on {}", date(until)),
                }
            }
            Event::Expired(t) => format!("expired on {}", time(t.valid_until.unwrap_or_default())),
            Event::Throttled {
                client_ip,
                minute,
                refused,
            } => {
                let times = if *refused == 1 {
                    "once".to_owned()
                } else {
                    format!("{refused} times")
                };
                return escape(&format!(
                    "tokengate: client {client_ip} was refused {times} for too many failed attempts in the minute from {}",
                    time(*minute)
                ));
            }
        };
        let token = self.token().expect("every other event names a token");
        let user = token.user.as_deref().unwrap_or("(unbound)");
        escape(&format!("tokengate: token '{}' of {user} {what}", token.label))
    }
}

/// Whole days left until `until`, counting a started day.
fn days_left(until: EpochMs, now: EpochMs) -> i64 {
    (until - now + DAY_MS - 1).div_euclid(DAY_MS).max(0)
}

fn time(at: EpochMs) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(at).unwrap_or_default());
    humantime::format_rfc3339_seconds(at).to_string()
}

fn date(at: EpochMs) -> String {
    time(at)[..10].to_owned()
}

/// Plain text for every receiver (SPEC §12): `&`, `<` and `>` as entities,
/// as Slack, Teams and Google Chat read them, so that a label cannot make a
/// mention or a `<url|link>`; and each character that Slack, Teams or
/// Google Chat read as markup (`[`, `]`, `(`, `)`, `*`, `_`, `~`, `` ` ``)
/// followed by a zero-width space, which none of them escapes otherwise
/// (Slack and Google Chat have no backslash escape): `[x](url)` is no
/// longer a link, `*x*` no longer bold, and the text still reads the same.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '[' | ']' | '(' | ')' | '*' | '_' | '~' | '`' => {
                escaped.push(c);
                escaped.push(ZERO_WIDTH_SPACE);
            }
            c => escaped.push(c),
        }
    }
    escaped
}

const ZERO_WIDTH_SPACE: char = '\u{200B}';

/// The token as events show it.
fn token_json(token: &TokenRecord) -> Value {
    json!({
        "id": token.id,
        "label": token.label,
        "user": token.user,
        "validUntil": token.valid_until,
        "upstreamTokenId": token.upstream_token_id,
    })
}

/// Raises events into the outbox and sends them to the webhook.
pub struct Notifier {
    target: Option<Target>,
    thresholds: Vec<u32>,
    store: Arc<dyn TokenStore>,
    clock: Arc<dyn Clock>,
    /// Once-keys this process has queued (or found queued): the expiry check
    /// asks the store about each token once, not every minute.
    queued_once: Mutex<HashSet<String>>,
    /// Wakes this process's sender when an event is raised here.
    raised: Notify,
}

/// Where events go, and how.
struct Target {
    url: Uri,
    secret: Option<Vec<u8>>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Notifier {
    pub fn new(config: &Config, store: Arc<dyn TokenStore>, clock: Arc<dyn Clock>) -> Result<Self, ClientSetupError> {
        let target = match &config.notify_url {
            None => None,
            Some(url) => {
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls_client_config(None)?)
                    .https_or_http()
                    .enable_http1()
                    .build();
                Some(Target {
                    url: url.clone(),
                    secret: config.notify_secret.as_ref().map(|s| s.as_bytes().to_vec()),
                    client: Client::builder(TokioExecutor::new()).build(https),
                })
            }
        };
        Ok(Notifier {
            target,
            thresholds: config.expiry_warning_days.clone(),
            store,
            clock,
            queued_once: Mutex::new(HashSet::new()),
            raised: Notify::new(),
        })
    }

    /// Queues `event` for the webhook (nothing without `notify_url`). A
    /// store that fails loses the event, logged: the change it tells of is
    /// made already and must not fail for it.
    pub async fn raise(&self, event: Event<'_>) {
        if self.target.is_none() {
            return;
        }
        let now = self.clock.now_ms();
        let once = event.once();
        if once.as_ref().is_some_and(|key| lock(&self.queued_once).contains(key)) {
            return;
        }
        let id = Alphanumeric.sample_string(&mut OsRng.unwrap_err(), 22);
        let body = json!({
            "id": id,
            "event": event.name(),
            "time": now,
            "token": event.token().map(token_json),
            "detail": event.detail(now),
            "text": event.text(now),
        });
        let queued = NewEvent {
            id,
            event: event.name().to_owned(),
            body: body.to_string(),
            created_at: now,
            once,
        };
        match self.store.enqueue_event(&queued).await {
            Ok(queued_now) => {
                if queued_now {
                    tracing::info!(event = queued.event, event.id = %queued.id, "event raised");
                    self.raised.notify_one();
                }
                if let Some(key) = queued.once {
                    let mut seen = lock(&self.queued_once);
                    if seen.len() >= MAX_REMEMBERED_ONCE {
                        seen.clear();
                    }
                    seen.insert(key);
                }
            }
            Err(e) => tracing::error!(event = queued.event, error = %e, "cannot queue the event; it is lost"),
        }
    }

    /// Raises `auth.throttled` for a client's refusals in one minute (once
    /// per client and minute, whichever replica raises it first).
    pub async fn client_throttled(&self, client_ip: IpAddr, minute: EpochMs, refused: u64) {
        if self.target.is_none() {
            return;
        }
        self.raise(Event::Throttled {
            client_ip,
            minute,
            refused,
        })
        .await;
    }

    /// Raises `token.expiring` (once per token and threshold: only the
    /// nearest threshold a token is within and its lifetime crosses) and
    /// `token.expired`, and sets
    /// the `tokengate_tokens` gauges. Run at start-up and every minute.
    pub async fn check_expiry(&self, metrics: &Metrics) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let states = self.store.token_states(now, soon_after(now)).await?;
        metrics.set_token_states(states.active, states.expiring, states.expired);
        let (Some(_), Some(&furthest)) = (&self.target, self.thresholds.first()) else {
            return Ok(());
        };
        let horizon = now + i64::from(furthest) * DAY_MS;
        for token in self.store.tokens_expiring(now - EXPIRED_LOOKBACK_MS, horizon).await? {
            let Some(until) = token.valid_until else { continue };
            if until <= now {
                self.raise(Event::Expired(&token)).await;
                continue;
            }
            // The nearest threshold the token is within, among those its
            // lifetime crosses (one made with 5 days to live gets no 7-day
            // warning: its creation said when it expires).
            let nearest = self.thresholds.iter().rev().find(|days| {
                let before = i64::from(**days) * DAY_MS;
                until - now <= before && until - token.created_at > before
            });
            if let Some(&threshold) = nearest {
                self.raise(Event::Expiring {
                    token: &token,
                    threshold,
                })
                .await;
            }
        }
        Ok(())
    }

    /// Sends what is due until nothing is, then waits for the next poll or
    /// a local raise. Runs until aborted.
    pub async fn run_sender(self: Arc<Self>) {
        if self.target.is_none() {
            return;
        }
        loop {
            match self.send_due().await {
                Ok(0) => {}
                Ok(_) => continue,
                Err(e) => tracing::warn!(error = %e, "cannot read the event outbox; will try again"),
            }
            tokio::select! {
                () = tokio::time::sleep(SEND_POLL) => {}
                () = self.raised.notified() => {}
            }
        }
    }

    /// Claims the event due now (if any) and tries it once; how many were claimed.
    pub async fn send_due(&self) -> Result<usize, StoreError> {
        let Some(target) = &self.target else {
            return Ok(0);
        };
        let now = self.clock.now_ms();
        let due = self.store.claim_events(now, now + LEASE_MS, BATCH).await?;
        for event in &due {
            let outcome = match target.deliver(event, self.clock.now_ms()).await {
                Ok(()) => EventOutcome::Delivered {
                    at: self.clock.now_ms(),
                },
                Err(why) => self.after_failure(event, &why),
            };
            self.store.finish_event(&event.id, outcome).await?;
        }
        Ok(due.len())
    }

    fn after_failure(&self, event: &EventRecord, why: &str) -> EventOutcome {
        let now = self.clock.now_ms();
        let attempts = event.attempts.saturating_add(1);
        let wait = retry_wait(attempts);
        if now + wait - event.created_at > GIVE_UP_AFTER_MS {
            tracing::error!(event = event.event, event.id = %event.id, attempts, error = why, "the webhook did not take the event in 24 h: abandoned");
            return EventOutcome::Abandoned { at: now };
        }
        tracing::warn!(event = event.event, event.id = %event.id, attempts, error = why, retry_in_s = wait / 1000, "the webhook did not take the event; will retry");
        EventOutcome::Retry { next_at: now + wait }
    }
}

impl Target {
    /// POSTs one event, signed; `Err` says why it was not taken.
    async fn deliver(&self, event: &EventRecord, now: EpochMs) -> Result<(), String> {
        let mut req = Request::post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("tokengate/", env!("CARGO_PKG_VERSION")))
            .header("x-tokengate-event", event.event.as_str());
        if let Some(secret) = &self.secret {
            let timestamp = (now / 1000).to_string();
            req = req
                .header("x-tokengate-signature", signature(secret, &timestamp, &event.body))
                .header("x-tokengate-timestamp", timestamp);
        }
        let req = req
            .body(Full::new(Bytes::from(event.body.clone())))
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(DELIVERY_TIMEOUT, self.client.request(req)).await {
            Err(_) => Err("no answer in 10 s".to_owned()),
            Ok(Err(e)) => Err(format!("cannot reach it: {e}")),
            Ok(Ok(response)) if response.status().is_success() => Ok(()),
            Ok(Ok(response)) => Err(format!("it answered {}", response.status())),
        }
    }
}

/// A lock whose holder cannot leave its map half-changed.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How long to wait after the `attempts`-th failed attempt: 10 s, doubling,
/// at most an hour.
fn retry_wait(attempts: i64) -> EpochMs {
    let doublings = u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX).min(20);
    FIRST_RETRY_MS.saturating_mul(1 << doublings).min(LONGEST_WAIT_MS)
}

/// `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub fn signature(secret: &[u8], timestamp: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256=");
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(label: &str, valid_until: Option<EpochMs>) -> TokenRecord {
        TokenRecord {
            label: label.into(),
            valid_until,
            ..crate::store::test_record("t1", Some("alice"), 0)
        }
    }

    #[test]
    fn texts_name_the_event_label_and_user_and_cannot_inject_markup() {
        let now = 1_764_000_000_000;
        let hostile = token("<!channel> & <https://evil|click>", Some(now + 7 * DAY_MS));
        let text = Event::Expiring {
            token: &hostile,
            threshold: 7,
        }
        .text(now);
        assert_eq!(
            text,
            "tokengate: token '&lt;!channel&gt; &amp; &lt;https://evil|click&gt;' of alice expires in 7 days, on 2025-12-01"
        );
        assert!(
            Event::Deleted(&token("ci", None))
                .text(now)
                .ends_with("'ci' of alice was deleted")
        );
        let throttled = |refused| Event::Throttled {
            client_ip: "10.0.0.9".parse().unwrap(),
            minute: 1_764_000_000_000,
            refused,
        };
        assert_eq!(
            throttled(1840).text(now),
            "tokengate: client 10.0.0.9 was refused 1840 times for too many failed attempts in the minute from 2025-11-24T16:00:00Z"
        );
        assert!(throttled(1).text(now).contains(" refused once "));
    }

    #[test]
    fn markup_of_slack_teams_and_google_chat_is_broken_in_texts() {
        let now = 1_764_000_000_000;
        let label = "[click](https://evil.example) *bold* _it_ ~gone~ `code` x]( )";
        let text = Event::Deleted(&token(label, None)).text(now);
        for markup in ['[', ']', '(', ')', '*', '_', '~', '`'] {
            for (i, _) in text.match_indices(markup) {
                let next = text[i + 1..].chars().next();
                assert_eq!(next, Some(ZERO_WIDTH_SPACE), "{markup} at {i} in {text:?}");
            }
        }
        assert!(!text.contains("]("), "no markdown link can form: {text:?}");
        let shown: String = text.chars().filter(|c| *c != ZERO_WIDTH_SPACE).collect();
        assert!(shown.contains(label), "reads as the label: {shown}");
    }

    #[test]
    fn events_that_recur_have_a_key_and_others_none() {
        let t = token("ci", Some(5 * DAY_MS));
        assert_eq!(
            Event::Expiring {
                token: &t,
                threshold: 7
            }
            .once()
            .as_deref(),
            Some("expiring:t1:7:432000000")
        );
        let throttled = |minute| Event::Throttled {
            client_ip: "::1".parse().unwrap(),
            minute,
            refused: 3,
        };
        assert_eq!(throttled(60_000).once().as_deref(), Some("throttled:::1:1"));
        assert_ne!(throttled(120_000).once(), throttled(60_000).once());
        assert_eq!(Event::Created(&t).once(), None);
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        let one = signature(b"secret", "1700000000", r#"{"id":"a"}"#);
        assert_eq!(one, signature(b"secret", "1700000000", r#"{"id":"a"}"#));
        assert_ne!(one, signature(b"secret", "1700000001", r#"{"id":"a"}"#));
        assert_ne!(one, signature(b"other", "1700000000", r#"{"id":"a"}"#));
        let mut mac = Hmac::<Sha256>::new_from_slice(b"secret").unwrap();
        mac.update(br#"1700000000.{"id":"a"}"#);
        let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(one, format!("sha256={expected}"));
    }

    #[test]
    fn retries_back_off_from_ten_seconds_and_stop_after_a_day() {
        let waits: Vec<EpochMs> = (1..=10).map(retry_wait).collect();
        assert_eq!(&waits[..4], &[10_000, 20_000, 40_000, 80_000]);
        assert_eq!(waits[9], 3_600_000);
        assert_eq!(retry_wait(i64::MAX), 3_600_000);
        assert_eq!(days_left(DAY_MS + 1, 0), 2);
        assert_eq!(days_left(DAY_MS, 0), 1);
    }
}
