//! Throttling failed token attempts per client IP (SPEC §12): after
//! `failed_auth_per_minute` failures in a one-minute window, token requests
//! from that client get 429 `too_many_failures` until the window ends.
//!
//! Consulted only before a cold verification (a secret not in the verified
//! cache), which is every guess an attacker makes, so a client whose token
//! is already verified never waits on this lock. IPv6 clients are tracked by
//! their /64, the block one subscriber usually gets. Memory is bounded:
//! at most `MAX_TRACKED` clients, expired windows dropped first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::clock::EpochMs;

const WINDOW_MS: EpochMs = 60_000;
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Window {
    started: EpochMs,
    failures: u32,
}

/// Failure windows by client. A std mutex: held for one map operation, on
/// cold verifications and failures only, never across an await.
#[derive(Debug)]
pub struct FailureThrottle {
    limit: u32,
    windows: Mutex<HashMap<IpAddr, Window>>,
}

impl FailureThrottle {
    pub fn new(limit_per_minute: u32) -> Self {
        FailureThrottle {
            limit: limit_per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(seconds until retry)` when `ip` has used up its failures.
    pub fn blocked(&self, ip: IpAddr, now: EpochMs) -> Option<u64> {
        let windows = self.windows.lock().expect("throttle poisoned");
        let window = windows.get(&throttle_key(ip))?;
        let ends = window.started + WINDOW_MS;
        (window.failures >= self.limit && now < ends).then(|| u64::try_from((ends - now + 999) / 1000).unwrap_or(60))
    }

    /// Counts one failed token attempt.
    pub fn record_failure(&self, ip: IpAddr, now: EpochMs) {
        let mut windows = self.windows.lock().expect("throttle poisoned");
        let key = throttle_key(ip);
        if !windows.contains_key(&key) && windows.len() >= MAX_TRACKED {
            make_room(&mut windows, now);
        }
        let window = windows.entry(key).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now >= window.started + WINDOW_MS {
            *window = Window {
                started: now,
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.windows.lock().unwrap().len()
    }
}

/// Drops expired windows; if none had expired, an arbitrary one (an attacker
/// rotating addresses gains nothing per-IP limits could have stopped).
fn make_room(windows: &mut HashMap<IpAddr, Window>, now: EpochMs) {
    windows.retain(|_, w| now < w.started + WINDOW_MS);
    if windows.len() >= MAX_TRACKED
        && let Some(key) = windows.keys().next().copied()
    {
        windows.remove(&key);
    }
}

/// The address throttled: IPv4 as is, IPv6 by its /64 (one host holds a
/// whole /64, so counting its addresses one by one would count nothing).
pub fn throttle_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_after_the_limit_until_the_window_ends() {
        let throttle = FailureThrottle::new(3);
        for _ in 0..2 {
            throttle.record_failure(ip("10.0.0.1"), 1_000);
        }
        assert_eq!(throttle.blocked(ip("10.0.0.1"), 1_000), None);
        throttle.record_failure(ip("10.0.0.1"), 1_500);
        assert_eq!(throttle.blocked(ip("10.0.0.1"), 1_500), Some(60));
        assert_eq!(throttle.blocked(ip("10.0.0.1"), 60_001), Some(1));
        assert_eq!(throttle.blocked(ip("10.0.0.2"), 1_500), None);
        assert_eq!(throttle.blocked(ip("10.0.0.1"), 61_000), None);
        throttle.record_failure(ip("10.0.0.1"), 61_000);
        assert_eq!(throttle.blocked(ip("10.0.0.1"), 61_000), None, "a new window starts");
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let throttle = FailureThrottle::new(2);
        throttle.record_failure(ip("2001:db8:1:2::1"), 0);
        throttle.record_failure(ip("2001:db8:1:2:ffff::9"), 0);
        assert!(throttle.blocked(ip("2001:db8:1:2::77"), 1).is_some());
        assert!(throttle.blocked(ip("2001:db8:1:3::1"), 1).is_none());
        throttle.record_failure(ip("::ffff:10.1.1.1"), 0);
        throttle.record_failure(ip("10.1.1.1"), 0);
        assert!(throttle.blocked(ip("10.1.1.1"), 1).is_some());
    }

    #[test]
    fn memory_stays_bounded_when_addresses_rotate() {
        let throttle = FailureThrottle::new(5);
        for i in 0..(MAX_TRACKED as u32 + 1000) {
            throttle.record_failure(IpAddr::V4(i.into()), 0);
        }
        assert_eq!(throttle.tracked(), MAX_TRACKED);
        throttle.record_failure(ip("10.9.9.9"), WINDOW_MS + 1);
        assert_eq!(throttle.tracked(), 1, "expired windows are dropped first");
    }
}
