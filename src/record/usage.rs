//! Usage details per token: counted in memory on the hot path (atomics, no
//! global lock) and drained in batches by a periodic flush.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::clock::EpochMs;
use crate::store::UsageDelta;

/// Calls since the last flush, and the latest use, of one token.
#[derive(Debug, Default)]
pub struct TokenUsage {
    calls: AtomicU64,
    last_used: AtomicI64,
    /// A mutex only ever taken with `try_lock`: when two requests of one
    /// token race, either IP is "the last", so the loser just skips.
    last_ip: Mutex<Option<IpAddr>>,
}

impl TokenUsage {
    pub fn record(&self, now: EpochMs, ip: IpAddr) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.last_used.fetch_max(now, Ordering::Relaxed);
        if let Ok(mut last_ip) = self.last_ip.try_lock() {
            *last_ip = Some(ip);
        }
    }
}

/// Every token's usage, by id. The map's mutex is taken when a token is
/// verified (cold path) and by the flush, never per request.
#[derive(Debug, Default)]
pub struct UsageBook {
    tokens: Mutex<HashMap<String, Arc<TokenUsage>>>,
}

impl UsageBook {
    /// The shared usage of a token: every verified copy of it counts into one.
    pub fn usage_for(&self, token_id: &str) -> Arc<TokenUsage> {
        let mut tokens = self.tokens.lock().expect("usage book poisoned");
        tokens.entry(token_id.to_owned()).or_default().clone()
    }

    /// Takes the usage since the last drain, and forgets tokens no longer in memory.
    pub fn drain(&self) -> Vec<UsageDelta> {
        let mut tokens = self.tokens.lock().expect("usage book poisoned");
        let mut deltas = Vec::new();
        tokens.retain(|id, usage| {
            let calls = usage.calls.swap(0, Ordering::Relaxed);
            if calls > 0 {
                let last_ip = usage.last_ip.lock().map(|ip| *ip).unwrap_or(None);
                deltas.push(UsageDelta {
                    token_id: id.clone(),
                    calls: i64::try_from(calls).unwrap_or(i64::MAX),
                    last_used_at: usage.last_used.load(Ordering::Relaxed),
                    last_ip: last_ip.map(|ip| ip.to_string()).unwrap_or_default(),
                });
            }
            // Only this map holds it: no verified token counts into it any more.
            Arc::strong_count(usage) > 1
        });
        deltas
    }

    /// Puts back deltas that could not be stored, so they are not lost.
    pub fn restore(&self, deltas: Vec<UsageDelta>) {
        for delta in deltas {
            let usage = self.usage_for(&delta.token_id);
            usage
                .calls
                .fetch_add(u64::try_from(delta.calls).unwrap_or(0), Ordering::Relaxed);
            usage.last_used.fetch_max(delta.last_used_at, Ordering::Relaxed);
            if let (Ok(ip), Ok(mut last_ip)) = (delta.last_ip.parse(), usage.last_ip.try_lock())
                && last_ip.is_none()
            {
                *last_ip = Some(ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                last_used_at: 30,
                last_ip: "10.0.0.2".into(),
            }]
        );
        assert!(book.drain().is_empty());
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
}
