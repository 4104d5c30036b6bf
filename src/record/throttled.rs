//! Requests refused 429 `too_many_failures`, counted instead of recorded
//! one by one (SPEC §12): a client that keeps sending bad credentials once
//! throttled leaves one audit entry and one `auth.throttled` event per
//! minute, with the count, however fast it sends. Clients are counted as
//! the throttle counts them (an IPv6 client by its /64).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::clock::EpochMs;

const MINUTE_MS: EpochMs = 60_000;

/// The start of the minute `now` is in.
fn minute_of(now: EpochMs) -> EpochMs {
    now - now.rem_euclid(MINUTE_MS)
}
/// Most clients counted one by one in a minute; the refusals of any beyond
/// are counted together, under no address, so that neither memory nor the
/// audit entries and events of one minute can grow without bound.
const MAX_CLIENTS: usize = 1_000;

/// One client's refusals in one minute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottledMinute {
    /// `None`: the refusals of clients beyond [`MAX_CLIENTS`].
    pub client_ip: Option<IpAddr>,
    /// The start of the minute.
    pub minute: EpochMs,
    pub refused: u64,
}

/// The counts of the minutes not yet recorded.
#[derive(Debug, Default)]
pub struct ThrottleTally {
    counts: Mutex<HashMap<Option<IpAddr>, (EpochMs, u64)>>,
}

impl ThrottleTally {
    /// Counts one refused request of `client_ip` at `now`. A client whose
    /// earlier minute is still counted starts a new count once that one is
    /// taken; until then its refusals add to it.
    pub fn count(&self, client_ip: IpAddr, now: EpochMs) {
        let minute = minute_of(now);
        let mut counts = self.counts.lock().expect("throttle tally poisoned");
        let key = if counts.len() < MAX_CLIENTS || counts.contains_key(&Some(client_ip)) {
            Some(client_ip)
        } else {
            None
        };
        counts.entry(key).or_insert((minute, 0)).1 += 1;
    }

    /// Takes the counts whose minute has ended by `now`, or every count
    /// with `all` (at shutdown, and for a flush).
    pub fn take(&self, now: EpochMs, all: bool) -> Vec<ThrottledMinute> {
        let mut counts = self.counts.lock().expect("throttle tally poisoned");
        let mut taken = Vec::new();
        counts.retain(|client_ip, (minute, refused)| {
            if all || *minute + MINUTE_MS <= now {
                taken.push(ThrottledMinute {
                    client_ip: *client_ip,
                    minute: *minute,
                    refused: *refused,
                });
                false
            } else {
                true
            }
        });
        taken
    }
}

/// How many refusals of one client are logged in a minute; the rest are
/// not (SPEC §12: an anonymous flood must not fill the disk through the
/// log). Each refusal of a token request is in the audit log regardless.
const LOGGED_PER_MINUTE: u32 = 30;

/// Whether a refusal is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logged {
    Yes,
    /// Logged, and the client's last this minute.
    Last,
    No,
}

/// The refusals logged per client in the minute under way.
#[derive(Debug, Default)]
pub struct RefusalLog {
    minute: Mutex<(EpochMs, HashMap<IpAddr, u32>)>,
}

impl RefusalLog {
    /// Whether a refusal of `client_ip` (as the throttle keys it) at `now` is logged.
    pub fn log(&self, client_ip: IpAddr, now: EpochMs) -> Logged {
        let minute = minute_of(now);
        let mut guard = self.minute.lock().expect("refusal log poisoned");
        let (current, counts) = &mut *guard;
        if *current != minute {
            *current = minute;
            counts.clear();
        }
        if counts.len() >= MAX_CLIENTS && !counts.contains_key(&client_ip) {
            return Logged::No;
        }
        let logged = counts.entry(client_ip).or_insert(0);
        *logged = logged.saturating_add(1);
        match (*logged).cmp(&LOGGED_PER_MINUTE) {
            std::cmp::Ordering::Less => Logged::Yes,
            std::cmp::Ordering::Equal => Logged::Last,
            std::cmp::Ordering::Greater => Logged::No,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_per_client_and_taken_once_their_minute_ends() {
        let tally = ThrottleTally::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "::1".parse().unwrap());
        for at in [120_000, 130_000, 179_999] {
            tally.count(a, at);
        }
        tally.count(b, 150_000);
        assert!(tally.take(179_999, false).is_empty(), "the minute has not ended");
        let mut taken = tally.take(180_000, false);
        taken.sort_by_key(|m| m.refused);
        assert_eq!(
            taken,
            [
                ThrottledMinute {
                    client_ip: Some(b),
                    minute: 120_000,
                    refused: 1
                },
                ThrottledMinute {
                    client_ip: Some(a),
                    minute: 120_000,
                    refused: 3
                },
            ]
        );
        assert!(tally.take(999_999, false).is_empty(), "each count is taken once");
        tally.count(a, 200_000);
        assert_eq!(
            tally.take(200_001, true)[0].refused,
            1,
            "a flush takes the minute under way"
        );
    }

    #[test]
    fn a_client_s_refusals_are_logged_up_to_a_budget_per_minute() {
        let log = RefusalLog::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let logged: Vec<Logged> = (0..LOGGED_PER_MINUTE + 2).map(|_| log.log(a, 1_000)).collect();
        assert_eq!(logged[0], Logged::Yes);
        assert_eq!(logged[LOGGED_PER_MINUTE as usize - 1], Logged::Last);
        assert_eq!(logged[LOGGED_PER_MINUTE as usize], Logged::No);
        assert_eq!(log.log(b, 2_000), Logged::Yes, "another client has its own budget");
        assert_eq!(log.log(a, 60_000), Logged::Yes, "a new minute, a new budget");
        for i in 0..MAX_CLIENTS as u32 {
            log.log(IpAddr::from((i + 100).to_be_bytes()), 60_000);
        }
        assert_eq!(
            log.log("10.9.9.9".parse().unwrap(), 60_000),
            Logged::No,
            "memory stays bounded"
        );
    }

    #[test]
    fn clients_beyond_the_bound_are_counted_together() {
        let tally = ThrottleTally::default();
        for i in 0..MAX_CLIENTS as u32 + 5 {
            tally.count(IpAddr::from(i.to_be_bytes()), 0);
        }
        tally.count(IpAddr::from(0u32.to_be_bytes()), 0);
        let taken = tally.take(0, true);
        assert_eq!(taken.len(), MAX_CLIENTS + 1);
        let unnamed = taken.iter().find(|m| m.client_ip.is_none()).unwrap();
        assert_eq!(unnamed.refused, 5);
        assert_eq!(taken.iter().map(|m| m.refused).sum::<u64>(), MAX_CLIENTS as u64 + 6);
    }
}
