//! Content id → space lookups (SPEC §17): asked of Confluence as the
//! token's user, cached per process for `space_cache_ttl_s` (only answers
//! that name a space), and coalesced: concurrent reads of one user about
//! one id wait for the same lookup. A change asks afresh, never from the
//! cache; and an answer that was under way while any id was forgotten is
//! not cached, so a lookup that raced a move cannot bring back a stale space.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use crate::clock::{Clock, EpochMs};
use crate::record::{LookupResult, Metrics};

/// Entries kept at most; beyond it the least recently used go.
const MAX_CACHED: u64 = 100_000;

/// Confluence's answer about one content id: its space key, or why there is none.
pub type Answer = Result<Arc<str>, Arc<str>>;

/// One lookup under way, shared by the requests that wait for it.
type InFlight = Arc<OnceCell<Answer>>;

/// Lookups under way, by content id and the user asking.
type InFlightMap = HashMap<(Arc<str>, Arc<str>), InFlight>;

pub struct SpaceCache {
    cached: moka::future::Cache<Arc<str>, (Arc<str>, EpochMs)>,
    /// Keyed by content id and user: a user who cannot see a page must not
    /// make another's request about it fail.
    in_flight: Mutex<InFlightMap>,
    /// Counts forgets: a lookup whose answer arrives after one is not cached.
    forgotten: AtomicU64,
    ttl_ms: EpochMs,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

impl SpaceCache {
    pub fn new(ttl: Duration, clock: Arc<dyn Clock>, metrics: Arc<Metrics>) -> Self {
        SpaceCache {
            cached: moka::future::Cache::builder()
                .max_capacity(MAX_CACHED)
                // A backstop: entries also expire by the gateway's clock (below).
                .time_to_live(ttl)
                .build(),
            in_flight: Mutex::new(HashMap::new()),
            forgotten: AtomicU64::new(0),
            ttl_ms: EpochMs::try_from(ttl.as_millis()).unwrap_or(EpochMs::MAX),
            clock,
            metrics,
        }
    }

    /// The space of content `id`: cached, or from `ask` (Confluence asked as
    /// `user`), which runs once for all concurrent requests of that user.
    /// `fresh` (a change): always asked, neither from the cache nor from a
    /// lookup already under way.
    pub async fn space_of<F, Fut>(&self, id: &str, user: &str, fresh: bool, ask: F) -> Answer
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Answer>,
    {
        if !fresh && let Some((space, at)) = self.cached.get(id).await {
            if self.clock.now_ms().saturating_sub(at) < self.ttl_ms {
                self.metrics.observe_space_lookup(LookupResult::Hit);
                return Ok(space);
            }
            self.cached.invalidate(id).await;
        }
        let forgotten = self.forgotten.load(Ordering::SeqCst);
        let (answer, asked) = match fresh {
            true => (self.ask_timed(ask).await, true),
            false => self.coalesced(id, user, ask).await,
        };
        if let (true, Ok(space)) = (asked, &answer)
            && self.forgotten.load(Ordering::SeqCst) == forgotten
        {
            self.cached
                .insert(Arc::from(id), (space.clone(), self.clock.now_ms()))
                .await;
        }
        answer
    }

    /// One lookup for every concurrent request of `user` about `id`; `true`
    /// when this request's `ask` ran. A request that stops waiting (its
    /// client went away) leaves nothing behind.
    async fn coalesced<F, Fut>(&self, id: &str, user: &str, ask: F) -> (Answer, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Answer>,
    {
        let key: (Arc<str>, Arc<str>) = (id.into(), user.into());
        let cell = self.lock().entry(key.clone()).or_default().clone();
        let _leave = Leave {
            cache: self,
            key,
            cell: cell.clone(),
        };
        let mut asked = false;
        let answer = cell
            .get_or_init(|| {
                asked = true;
                self.ask_timed(ask)
            })
            .await
            .clone();
        if !asked {
            self.metrics.observe_space_lookup(LookupResult::Hit);
        }
        (answer, asked)
    }

    /// Drops content `id` (changed or deleted through the gateway).
    pub async fn forget(&self, id: &str) {
        self.forgotten.fetch_add(1, Ordering::SeqCst);
        self.cached.invalidate(id).await;
    }

    /// Drops every cached answer (a change that may have moved a tree of content).
    pub fn forget_all(&self) {
        self.forgotten.fetch_add(1, Ordering::SeqCst);
        self.cached.invalidate_all();
    }

    /// Lookups under way, for tests.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.lock().len()
    }

    async fn ask_timed<F, Fut>(&self, ask: F) -> Answer
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Answer>,
    {
        let started = Instant::now();
        let answer = ask().await;
        self.metrics.space_lookup_duration.observe(started.elapsed());
        self.metrics.observe_space_lookup(match answer {
            Ok(_) => LookupResult::Miss,
            Err(_) => LookupResult::Error,
        });
        answer
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InFlightMap> {
        // A panic while holding the lock leaves the map consistent.
        self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Removes a request's lookup from the map when the request is done with
/// it, answered or cancelled (unless a newer lookup took its place).
struct Leave<'a> {
    cache: &'a SpaceCache,
    key: (Arc<str>, Arc<str>),
    cell: InFlight,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.cache.lock();
        if in_flight
            .get(&self.key)
            .is_some_and(|current| Arc::ptr_eq(current, &self.cell))
        {
            in_flight.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn cache(clock: &Arc<ManualClock>) -> (SpaceCache, Arc<Metrics>) {
        let metrics = Metrics::new();
        let cache = SpaceCache::new(Duration::from_secs(300), clock.clone(), metrics.clone());
        (cache, metrics)
    }

    #[tokio::test]
    async fn concurrent_requests_make_one_lookup_and_the_answer_is_cached_until_the_ttl() {
        let clock = Arc::new(ManualClock::starting_now());
        let (cache, metrics) = cache(&clock);
        let asked = AtomicUsize::new(0);
        let (release, released) = tokio::sync::watch::channel(false);
        let ask = || async {
            asked.fetch_add(1, Ordering::SeqCst);
            let mut released = released.clone();
            released.wait_for(|r| *r).await.unwrap();
            Ok::<_, Arc<str>>(Arc::from("DOCS"))
        };
        let waiting = (0..20).map(|_| cache.space_of("123", "alice", false, ask));
        let all = async {
            let answers = futures_join_all(waiting).await;
            assert!(answers.iter().all(|a| a.as_deref() == Ok("DOCS")));
        };
        tokio::join!(all, async {
            tokio::task::yield_now().await;
            release.send(true).unwrap();
        });
        assert_eq!(asked.load(Ordering::SeqCst), 1, "one lookup for twenty requests");
        let again = cache.space_of("123", "bob", false, || async { panic!("cached") }).await;
        assert_eq!(again.as_deref(), Ok("DOCS"), "cached for every user");
        clock.advance_ms(299_999);
        assert!(
            cache
                .space_of("123", "bob", false, || async { panic!("cached") })
                .await
                .is_ok()
        );
        clock.advance_ms(1);
        let fresh = cache
            .space_of("123", "bob", false, || async { Ok(Arc::from("PM")) })
            .await;
        assert_eq!(fresh.as_deref(), Ok("PM"), "asked again after the ttl");
        let text = metrics.render();
        assert!(
            text.contains("tokengate_space_lookups_total{result=\"miss\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("tokengate_space_lookups_total{result=\"hit\"} 21"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn failures_are_not_cached_and_forgetting_asks_again() {
        let clock = Arc::new(ManualClock::starting_now());
        let (cache, metrics) = cache(&clock);
        let failed = cache
            .space_of("7", "alice", false, || async { Err(Arc::from("404")) })
            .await;
        assert_eq!(failed, Err(Arc::from("404")));
        assert!(
            cache
                .space_of("7", "alice", false, || async { Ok(Arc::from("DOCS")) })
                .await
                .is_ok()
        );
        cache.forget("7").await;
        let moved = cache
            .space_of("7", "alice", false, || async { Ok(Arc::from("PM")) })
            .await;
        assert_eq!(moved.as_deref(), Ok("PM"));
        assert!(
            metrics
                .render()
                .contains("tokengate_space_lookups_total{result=\"error\"} 1")
        );
    }

    #[tokio::test]
    async fn different_users_do_not_share_a_lookup_under_way() {
        let clock = Arc::new(ManualClock::starting_now());
        let (cache, _) = cache(&clock);
        let (hidden, visible) = tokio::join!(
            cache.space_of("9", "mallory", false, || async {
                tokio::task::yield_now().await;
                Err(Arc::from("hidden"))
            }),
            cache.space_of("9", "alice", false, || async { Ok(Arc::from("DOCS")) }),
        );
        assert!(hidden.is_err());
        assert_eq!(visible.as_deref(), Ok("DOCS"));
    }

    #[tokio::test]
    async fn a_change_asks_afresh_and_a_forget_during_a_lookup_keeps_it_out_of_the_cache() {
        let clock = Arc::new(ManualClock::starting_now());
        let (cache, _) = cache(&clock);
        assert!(
            cache
                .space_of("5", "alice", false, || async { Ok(Arc::from("DOCS")) })
                .await
                .is_ok()
        );
        let moved = cache
            .space_of("5", "alice", true, || async { Ok(Arc::from("PM")) })
            .await;
        assert_eq!(moved.as_deref(), Ok("PM"), "a change never reads the cache");
        let cached = cache.space_of("5", "bob", false, || async { panic!("cached") }).await;
        assert_eq!(cached.as_deref(), Ok("PM"), "and what it learnt is cached");
        cache.forget("5").await;
        let raced = cache
            .space_of("5", "alice", false, || async {
                cache.forget("5").await;
                Ok(Arc::from("DOCS"))
            })
            .await;
        assert_eq!(raced.as_deref(), Ok("DOCS"));
        let after = cache
            .space_of("5", "alice", false, || async { Ok(Arc::from("SECRET")) })
            .await;
        assert_eq!(after.as_deref(), Ok("SECRET"), "the raced answer was not cached");
    }

    #[tokio::test]
    async fn a_cancelled_lookup_leaves_nothing_behind_and_another_takes_over() {
        let clock = Arc::new(ManualClock::starting_now());
        let (cache, _) = cache(&clock);
        let never = cache.space_of("6", "alice", false, std::future::pending);
        let polled = tokio::time::timeout(Duration::from_millis(10), never).await;
        assert!(polled.is_err(), "the lookup hangs");
        assert_eq!(cache.in_flight(), 0, "the cancelled request's entry is gone");
        let answer = cache
            .space_of("6", "alice", false, || async { Ok(Arc::from("DOCS")) })
            .await;
        assert_eq!(answer.as_deref(), Ok("DOCS"));
        assert_eq!(cache.in_flight(), 0);
    }

    /// Polls every future to completion, concurrently (no `futures` crate needed).
    async fn futures_join_all<F: Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
        let mut pinned: Vec<_> = futures.map(Box::pin).collect();
        let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
                if output.is_none() {
                    match future.as_mut().poll(cx) {
                        std::task::Poll::Ready(value) => *output = Some(value),
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        outputs.into_iter().map(Option::unwrap).collect()
    }
}
