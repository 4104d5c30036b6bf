//! Rate limits per token (SPEC §16): a token bucket holding N calls that
//! refills N per unit (`60/min`). Over it: 429 `rate_limited` with
//! `Retry-After`, never forwarded. Every response to a limited token carries
//! Confluence Data Center's rate-limit headers, so clients written for
//! Confluence's own limits back off unchanged.
//!
//! Buckets live in this process (governor's GCRA: atomics, no lock shared
//! across tokens), one per token id, kept across the token's cache entries
//! and updates. With `rate_limit_redis` every replica shares each token's
//! bucket in Redis instead (one Lua script: GCRA on Redis' own clock); when
//! Redis cannot be reached the local bucket answers, so a request is never
//! refused or held up because Redis is down.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue};

use crate::backoff::Backoff;
use crate::clock::{Clock, EpochMs};
use crate::error::{GatewayError, Reason};
use crate::record::Metrics;
use crate::tokens::RateLimit;

/// The time one call's room takes to come back.
fn emission_interval(limit: RateLimit) -> Duration {
    Duration::from_secs(limit.per.seconds()) / limit.calls.get()
}

/// What a limited token's responses tell the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateState {
    pub limit: RateLimit,
    /// Calls left in the bucket after this one.
    pub remaining: u32,
}

static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_INTERVAL: HeaderName = HeaderName::from_static("x-ratelimit-interval-seconds");
static X_RATELIMIT_FILL_RATE: HeaderName = HeaderName::from_static("x-ratelimit-fillrate");

impl RateState {
    /// Confluence Data Center's rate-limit headers, alone (for a refusal).
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(4);
        self.apply(&mut headers);
        headers
    }

    /// Confluence Data Center's rate-limit headers, replacing any Confluence sent.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let calls = self.limit.calls.get();
        headers.insert(X_RATELIMIT_LIMIT.clone(), HeaderValue::from(calls));
        headers.insert(X_RATELIMIT_REMAINING.clone(), HeaderValue::from(self.remaining));
        headers.insert(
            X_RATELIMIT_INTERVAL.clone(),
            HeaderValue::from(self.limit.per.seconds()),
        );
        headers.insert(X_RATELIMIT_FILL_RATE.clone(), HeaderValue::from(calls));
    }
}

/// Milliseconds since the epoch as governor's clock: the gateway's clock,
/// so tests move time instead of sleeping.
#[derive(Clone)]
struct BucketClock(Arc<dyn Clock>);

impl governor::clock::Clock for BucketClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.0.now_ms()).unwrap_or(0))
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, BucketClock, StateInformationMiddleware>;

/// One token's bucket in this process.
pub struct Bucket {
    limit: RateLimit,
    limiter: Limiter,
}

impl fmt::Debug for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bucket")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl Bucket {
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    fn take(&self, clock: &dyn Clock, label: &str) -> Result<RateState, GatewayError> {
        match self.limiter.check() {
            Ok(snapshot) => Ok(RateState {
                limit: self.limit,
                remaining: snapshot.remaining_burst_capacity(),
            }),
            Err(not_until) => {
                let now = Duration::from_millis(u64::try_from(clock.now_ms()).unwrap_or(0));
                Err(limited(self.limit, label, not_until.wait_time_from(now)))
            }
        }
    }
}

/// 429 for a token over its limit, with `Retry-After` and the rate-limit headers.
fn limited(limit: RateLimit, label: &str, wait: Duration) -> GatewayError {
    // Whole seconds until one call fits (SPEC §16), at least 1.
    let seconds = wait.as_millis().div_ceil(1000).max(1);
    GatewayError::new(
        Reason::RateLimited,
        format!("token '{label}' may make {limit} calls; retry in {seconds} s"),
    )
    .retry_after(u64::try_from(seconds).unwrap_or(u64::MAX))
    .with_headers(RateState { limit, remaining: 0 }.headers())
}

/// Every token's bucket, by id, and the shared buckets in Redis if any.
pub struct RateLimits {
    clock: Arc<dyn Clock>,
    /// Buckets of tokens in memory, shared by every verified copy of a
    /// token. A std mutex taken only when a token is verified or
    /// re-read, never per request.
    buckets: Mutex<HashMap<String, Weak<Bucket>>>,
    shared: Option<SharedBuckets>,
}

impl RateLimits {
    /// Buckets in this process only.
    pub fn local(clock: Arc<dyn Clock>) -> Self {
        RateLimits {
            shared: None,
            buckets: Mutex::new(HashMap::new()),
            clock,
        }
    }

    /// With `redis_url`, buckets shared in Redis: connected before this
    /// returns when Redis answers within a second, else in the background
    /// (local buckets answer meanwhile).
    pub async fn start(clock: Arc<dyn Clock>, redis_url: Option<&str>, metrics: Arc<Metrics>) -> Self {
        let shared = match redis_url {
            Some(url) => Some(SharedBuckets::connect(url, metrics).await),
            None => None,
        };
        RateLimits {
            shared,
            ..RateLimits::local(clock)
        }
    }

    /// The bucket of token `id` with `limit`: the one in use when the limit
    /// is the same (an update of other restrictions keeps it), else a full one.
    pub fn bucket_for(&self, id: &str, limit: RateLimit) -> Arc<Bucket> {
        let mut buckets = self.buckets.lock().expect("buckets lock poisoned");
        if let Some(bucket) = buckets.get(id).and_then(Weak::upgrade)
            && bucket.limit == limit
        {
            return bucket;
        }
        let quota = Quota::with_period(emission_interval(limit))
            .expect("a limit of at most a million calls a second has a positive period")
            .allow_burst(limit.calls);
        let bucket = Arc::new(Bucket {
            limit,
            limiter: RateLimiter::direct_with_clock(quota, BucketClock(self.clock.clone()))
                .with_middleware::<StateInformationMiddleware>(),
        });
        if buckets.len() > 1024 {
            buckets.retain(|_, weak| weak.strong_count() > 0);
        }
        buckets.insert(id.to_owned(), Arc::downgrade(&bucket));
        bucket
    }

    /// Takes one call from token `id`'s bucket: shared in Redis when
    /// configured and reachable, else this process's.
    pub async fn take(&self, id: &str, label: &str, bucket: &Bucket) -> Result<RateState, GatewayError> {
        // Boxed: the Redis call makes a large future, which would otherwise
        // make every request's future larger (hyper moves it per request).
        if let Some(shared) = &self.shared
            && let Some(answer) = Box::pin(shared.take(id, bucket.limit, self.clock.now_ms())).await
        {
            return match answer {
                SharedAnswer::Allowed { remaining } => Ok(RateState {
                    limit: bucket.limit,
                    remaining,
                }),
                SharedAnswer::Refused { wait } => Err(limited(bucket.limit, label, wait)),
            };
        }
        bucket.take(self.clock.as_ref(), label)
    }
}

/// GCRA over a token's bucket in Redis, on Redis' clock (so replicas agree):
/// KEYS[1] the bucket, ARGV[1] the emission interval in microseconds,
/// ARGV[2] the bucket's size. Answers {allowed, wait µs, remaining}.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local size = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - interval * size
if now < allow_at then
  return {0, allow_at - now, 0}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, 0, math.floor((interval * size - (new_tat - now)) / interval)}
";

/// How long a request waits for Redis before its local bucket answers.
const REDIS_TIMEOUT: Duration = Duration::from_millis(100);
/// After Redis failed, how long local buckets answer before Redis is tried again.
const REDIS_RETRY_AFTER_MS: EpochMs = 5_000;
/// Falling back is logged at most this often.
const FALLBACK_LOG_EVERY_MS: EpochMs = 60_000;

enum SharedAnswer {
    Allowed { remaining: u32 },
    Refused { wait: Duration },
}

/// Connects to Redis, retrying with backoff until it answers; says when
/// the first attempt is over (each attempt takes at most a second).
async fn keep_connecting(
    client: redis::Client,
    cell: Arc<OnceLock<redis::aio::ConnectionManager>>,
    tried: tokio::sync::oneshot::Sender<()>,
) {
    let mut tried = Some(tried);
    let mut retry = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(REDIS_TIMEOUT * 10)
        .set_response_timeout(REDIS_TIMEOUT * 10);
    loop {
        let attempt = redis::aio::ConnectionManager::new_with_config(client.clone(), config.clone());
        match tokio::time::timeout(REDIS_TIMEOUT * 10, attempt).await {
            Ok(Ok(manager)) => {
                tracing::info!("rate limits shared through Redis");
                let _ = cell.set(manager);
                if let Some(tried) = tried.take() {
                    let _ = tried.send(());
                }
                return;
            }
            outcome => {
                let error = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer within a second".to_owned(),
                };
                tracing::warn!(%error, "cannot reach Redis for shared rate limits; local buckets meanwhile");
                if let Some(tried) = tried.take() {
                    let _ = tried.send(());
                }
                retry.wait().await;
            }
        }
    }
}

/// Buckets shared by every replica, in Redis.
struct SharedBuckets {
    /// Set once a connection is made (in the background, so that the
    /// gateway starts and serves while Redis is away).
    connection: Arc<OnceLock<redis::aio::ConnectionManager>>,
    script: redis::Script,
    /// Until when local buckets answer (Redis failed lately).
    down_until: AtomicI64,
    logged_at: AtomicI64,
    metrics: Arc<Metrics>,
}

impl SharedBuckets {
    async fn connect(url: &str, metrics: Arc<Metrics>) -> SharedBuckets {
        let connection = Arc::new(OnceLock::new());
        match redis::Client::open(url) {
            Ok(client) => {
                let (tried, first_attempt) = tokio::sync::oneshot::channel();
                tokio::spawn(keep_connecting(client, connection.clone(), tried));
                // Wait for the first attempt, so that a gateway whose Redis
                // is up shares its buckets from its first request.
                let _ = first_attempt.await;
            }
            Err(e) => tracing::error!(error = %e, "rate_limit_redis is not a Redis URL; local buckets only"),
        }
        SharedBuckets {
            connection,
            script: redis::Script::new(GCRA),
            down_until: AtomicI64::new(0),
            logged_at: AtomicI64::new(EpochMs::MIN),
            metrics,
        }
    }

    /// Redis' answer, or `None` when the local bucket must answer instead.
    async fn take(&self, id: &str, limit: RateLimit, now: EpochMs) -> Option<SharedAnswer> {
        let fall_back = |why: &str| {
            self.metrics.rate_limit_fallbacks.inc();
            let logged = self.logged_at.load(Ordering::Relaxed);
            if now.saturating_sub(logged) >= FALLBACK_LOG_EVERY_MS
                && self
                    .logged_at
                    .compare_exchange(logged, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(
                    reason = why,
                    "shared rate limits unavailable; this replica's buckets answer"
                );
            }
            None
        };
        let Some(connection) = self.connection.get() else {
            return fall_back("not connected to Redis yet");
        };
        if now < self.down_until.load(Ordering::Relaxed) {
            return fall_back("Redis failed lately");
        }
        let interval = u64::try_from(emission_interval(limit).as_micros()).unwrap_or(u64::MAX);
        let mut connection = connection.clone();
        let mut invocation = self.script.key(format!("tokengate:rate:{id}"));
        invocation.arg(interval).arg(limit.calls.get());
        let answer = tokio::time::timeout(
            REDIS_TIMEOUT,
            invocation.invoke_async::<(i64, i64, i64)>(&mut connection),
        );
        match answer.await {
            Ok(Ok((1, _, remaining))) => Some(SharedAnswer::Allowed {
                remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            }),
            Ok(Ok((_, wait_micros, _))) => Some(SharedAnswer::Refused {
                wait: Duration::from_micros(u64::try_from(wait_micros.max(0)).unwrap_or(0)),
            }),
            Ok(Err(e)) => {
                self.down_until.store(now + REDIS_RETRY_AFTER_MS, Ordering::Relaxed);
                fall_back(&e.to_string())
            }
            Err(_) => {
                self.down_until.store(now + REDIS_RETRY_AFTER_MS, Ordering::Relaxed);
                fall_back("Redis did not answer in time")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn limit(text: &str) -> RateLimit {
        text.parse().unwrap()
    }

    #[test]
    fn a_bucket_holds_n_and_refills_n_per_unit() {
        let clock = ManualClock::starting_now();
        let limits = RateLimits::local(clock.clone());
        let bucket = limits.bucket_for("t", limit("3/min"));
        for remaining in [2, 1, 0] {
            assert_eq!(bucket.take(clock.as_ref(), "ci").unwrap().remaining, remaining);
        }
        let refused = bucket.take(clock.as_ref(), "ci").unwrap_err();
        assert_eq!(refused.reason, Reason::RateLimited);
        assert_eq!(
            refused.retry_after_seconds(),
            Some(20),
            "one call's room comes back in 20 s"
        );
        clock.advance_ms(19_500);
        assert_eq!(
            bucket.take(clock.as_ref(), "ci").unwrap_err().retry_after_seconds(),
            Some(1)
        );
        clock.advance_ms(500);
        assert_eq!(bucket.take(clock.as_ref(), "ci").unwrap().remaining, 0);
        clock.advance_ms(60_000);
        assert_eq!(
            bucket.take(clock.as_ref(), "ci").unwrap().remaining,
            2,
            "refilled to the top, no more"
        );
    }

    #[test]
    fn each_token_has_its_own_bucket_kept_while_its_limit_stays() {
        let clock = ManualClock::starting_now();
        let limits = RateLimits::local(clock.clone());
        let a = limits.bucket_for("a", limit("1/min"));
        let b = limits.bucket_for("b", limit("1/min"));
        assert!(a.take(clock.as_ref(), "a").is_ok());
        assert!(a.take(clock.as_ref(), "a").is_err());
        assert!(b.take(clock.as_ref(), "b").is_ok(), "b's bucket is its own");
        let again = limits.bucket_for("a", limit("1/min"));
        assert!(Arc::ptr_eq(&a, &again), "same limit, same bucket: an update keeps it");
        let raised = limits.bucket_for("a", limit("5/min"));
        assert!(!Arc::ptr_eq(&a, &raised));
        assert!(raised.take(clock.as_ref(), "a").is_ok());
    }

    #[test]
    fn the_headers_are_confluences() {
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-remaining", HeaderValue::from_static("999"));
        RateState {
            limit: limit("60/min"),
            remaining: 41,
        }
        .apply(&mut headers);
        assert_eq!(headers["x-ratelimit-limit"], "60");
        assert_eq!(headers["x-ratelimit-remaining"], "41", "replaces Confluence's");
        assert_eq!(headers["x-ratelimit-interval-seconds"], "60");
        assert_eq!(headers["x-ratelimit-fillrate"], "60");
    }
}
