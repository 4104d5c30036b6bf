//! Usage details per token: counted in memory on the hot path (atomics, no
//! global lock) and drained in batches by a periodic flush, which adds them
//! to the token's counter and to its day (SPEC §15.1).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::clock::{Day, EpochMs, day_of};
use crate::store::UsageDelta;

/// Calls and refusals since the last flush, and the latest use, of one token.
#[derive(Debug, Default)]
pub struct TokenUsage {
    calls: AtomicU64,
    refused: AtomicU64,
    last_used: AtomicI64,
    /// The latest call or refusal: the counts of a flush are on its day.
    last_seen: AtomicI64,
    /// A mutex only ever taken with `try_lock`: when two requests of one
    /// token race, either IP is "the last", so the loser just skips.
    last_ip: Mutex<Option<IpAddr>>,
}

impl TokenUsage {
    /// A call forwarded.
    pub fn record(&self, now: EpochMs, ip: IpAddr) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.last_used.fetch_max(now, Ordering::Relaxed);
        self.last_seen.fetch_max(now, Ordering::Relaxed);
        if let Ok(mut last_ip) = self.last_ip.try_lock() {
            *last_ip = Some(ip);
        }
    }

    /// A call refused.
    pub fn refuse(&self, now: EpochMs) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        self.last_seen.fetch_max(now, Ordering::Relaxed);
    }
}

/// Every token's usage, by id. The map's mutex is taken when a token is
/// verified (cold path) and by the flush, never per request.
#[derive(Debug, Default)]
pub struct UsageBook {
    tokens: Mutex<HashMap<String, Arc<TokenUsage>>>,
    /// Deltas a flush could not store, one per token and day.
    unstored: Mutex<BTreeMap<(String, Day), UsageDelta>>,
}

impl UsageBook {
    /// The shared usage of a token: every verified copy of it counts into one.
    pub fn usage_for(&self, token_id: &str) -> Arc<TokenUsage> {
        let mut tokens = self.tokens.lock().expect("usage book poisoned");
        tokens.entry(token_id.to_owned()).or_default().clone()
    }

    /// Takes the usage since the last drain, and forgets tokens no longer in memory.
    pub fn drain(&self) -> Vec<UsageDelta> {
        let unstored = std::mem::take(&mut *self.unstored.lock().expect("usage book poisoned"));
        let mut deltas: Vec<UsageDelta> = unstored.into_values().collect();
        let mut tokens = self.tokens.lock().expect("usage book poisoned");
        tokens.retain(|id, usage| {
            let calls = usage.calls.swap(0, Ordering::Relaxed);
            let refused = usage.refused.swap(0, Ordering::Relaxed);
            if calls > 0 || refused > 0 {
                let last_ip = usage.last_ip.lock().map(|ip| *ip).unwrap_or(None);
                deltas.push(UsageDelta {
                    token_id: id.clone(),
                    calls: i64::try_from(calls).unwrap_or(i64::MAX),
                    refused: i64::try_from(refused).unwrap_or(i64::MAX),
                    last_used_at: usage.last_used.load(Ordering::Relaxed),
                    last_ip: last_ip.map(|ip| ip.to_string()).unwrap_or_default(),
                    day: day_of(usage.last_seen.load(Ordering::Relaxed)),
                });
            }
            // Only this map holds it: no verified token counts into it any more.
            Arc::strong_count(usage) > 1
        });
        deltas
    }

    /// Keeps deltas that could not be stored for the next drain, so they are
    /// not lost: merged per token and day, so that however long the store is
    /// away, what waits is one delta per token and day.
    pub fn restore(&self, deltas: Vec<UsageDelta>) {
        let mut unstored = self.unstored.lock().expect("usage book poisoned");
        for delta in deltas {
            match unstored.entry((delta.token_id.clone(), delta.day)) {
                std::collections::btree_map::Entry::Occupied(mut kept) => {
                    let kept = kept.get_mut();
                    kept.calls += delta.calls;
                    kept.refused += delta.refused;
                    if delta.last_used_at >= kept.last_used_at {
                        (kept.last_used_at, kept.last_ip) = (delta.last_used_at, delta.last_ip);
                    }
                }
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(delta);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::DAY_MS;

    #[test]
    fn calls_add_up_across_copies_and_drain_resets() {
        let book = UsageBook::default();
        let (a, b) = (book.usage_for("t"), book.usage_for("t"));
        a.record(10, "10.0.0.1".parse().unwrap());
        b.record(30, "10.0.0.3".parse().unwrap());
        a.record(20, "10.0.0.2".parse().unwrap());
        let deltas = book.drain();
        assert_eq!(
            deltas,
            [UsageDelta {
                token_id: "t".into(),
                calls: 3,
                refused: 0,
                last_used_at: 30,
                last_ip: "10.0.0.2".into(),
                day: 0,
            }]
        );
        assert!(book.drain().is_empty());
    }

    #[test]
    fn refusals_count_apart_on_the_day_of_the_latest_activity() {
        let book = UsageBook::default();
        let usage = book.usage_for("t");
        usage.refuse(DAY_MS + 5);
        usage.refuse(DAY_MS + 6);
        let deltas = book.drain();
        assert_eq!((deltas[0].calls, deltas[0].refused, deltas[0].day), (0, 2, 1));
        assert_eq!(deltas[0].last_used_at, 0, "a refusal is no use");
        usage.record(3 * DAY_MS, "::1".parse().unwrap());
        assert_eq!(book.drain()[0].day, 3);
    }

    #[test]
    fn forgotten_tokens_are_dropped_after_their_last_drain_and_restores_are_kept() {
        let book = UsageBook::default();
        let usage = book.usage_for("t");
        usage.record(1, "::1".parse().unwrap());
        drop(usage);
        let deltas = book.drain();
        assert_eq!(deltas.len(), 1);
        assert!(book.tokens.lock().unwrap().is_empty());
        book.restore(deltas.clone());
        assert_eq!(book.drain(), deltas);
    }

    #[test]
    fn failed_flushes_wait_as_one_delta_per_token_and_day() {
        let book = UsageBook::default();
        let usage = book.usage_for("t");
        for flush in 0..1000 {
            usage.record(DAY_MS + flush, "10.0.0.1".parse().unwrap());
            usage.refuse(DAY_MS + flush);
            let deltas = book.drain();
            book.restore(deltas);
        }
        usage.record(2 * DAY_MS, "10.0.0.2".parse().unwrap());
        let deltas = book.drain();
        book.restore(deltas);
        let waiting = book.drain();
        assert_eq!(waiting.len(), 2, "{waiting:?}");
        assert_eq!((waiting[0].day, waiting[0].calls, waiting[0].refused), (1, 1000, 1000));
        assert_eq!(waiting[0].last_used_at, DAY_MS + 999);
        assert_eq!(
            (waiting[1].day, waiting[1].calls, waiting[1].last_ip.as_str()),
            (2, 1, "10.0.0.2")
        );
    }
}
