//! Wall-clock time as epoch milliseconds, behind a trait so tests can move time
//! (token expiry, audit retention) without sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, the unit every stored time uses.
pub type EpochMs = i64;

pub const DAY_MS: EpochMs = 24 * 60 * 60 * 1000;

/// A UTC calendar day, as days since 1970-01-01: how per-day usage is
/// stored and counted (SPEC §15.1).
pub type Day = i64;

/// The UTC day an instant falls on.
pub fn day_of(at: EpochMs) -> Day {
    at.div_euclid(DAY_MS)
}

/// A day as `YYYY-MM-DD` (proleptic Gregorian, H. Hinnant's
/// `civil_from_days`).
pub fn day_text(day: Day) -> String {
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day_of_month = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day_of_month:02}")
}

pub trait Clock: Send + Sync {
    fn now_ms(&self) -> EpochMs;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> EpochMs {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        EpochMs::try_from(since_epoch.as_millis()).unwrap_or(EpochMs::MAX)
    }
}

/// A clock that only moves when told to. For tests.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn starting_now() -> Arc<Self> {
        Arc::new(ManualClock(AtomicI64::new(SystemClock.now_ms())))
    }

    pub fn advance_ms(&self, ms: EpochMs) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> EpochMs {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_calendar_days() {
        assert_eq!(day_text(0), "1970-01-01");
        assert_eq!(day_text(day_of(DAY_MS - 1)), "1970-01-01");
        assert_eq!(day_text(day_of(-1)), "1969-12-31");
        // 2000-02-29 (a leap day of a century year) and 2026-12-07.
        assert_eq!(day_text(day_of(951_782_400_000)), "2000-02-29");
        assert_eq!(day_text(day_of(1_796_601_600_000 + 3_600_000)), "2026-12-07");
        assert_eq!(day_text(day_of(1_709_164_800_000)), "2024-02-29");
        assert_eq!(day_text(day_of(1_709_251_200_000)), "2024-03-01");
        assert_eq!(day_text(day_of(253_402_214_400_000)), "9999-12-31");
    }
}
