//! Prometheus metrics (`/tokengate/metrics`), one registry per gateway so
//! several can run in one process (the tests do).

//!
//! Nothing on the request path takes a lock: a request's counter is looked
//! up in its label family once and then kept, and durations go into a
//! histogram of atomic buckets (prometheus-client's own `Histogram` takes a
//! mutex per observation, which every worker thread would contend for).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::error::Reason;

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Decision {
    /// Forwarded as a token's user.
    Allow,
    /// Forwarded as a report-only token's user, though its rules would refuse it (SPEC §16).
    Report,
    /// Forwarded untouched (no gateway token).
    Passthrough,
    /// Answered by the gateway's own routes.
    Own,
    /// Refused or failed with a reason code.
    Deny,
}

impl Decision {
    /// Every decision, in declaration order: `decision as usize` indexes it.
    const ALL: [Decision; 5] = [
        Decision::Allow,
        Decision::Report,
        Decision::Passthrough,
        Decision::Own,
        Decision::Deny,
    ];

    /// The decision as metrics and the audit log name it.
    pub fn label(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Report => "report",
            Decision::Passthrough => "passthrough",
            Decision::Own => "own",
            Decision::Deny => "deny",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    decision: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ModeLabels {
    mode: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LookupLabels {
    result: &'static str,
}

/// What became of a content id → space lookup (SPEC §17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupResult {
    /// Answered by the cache (or by a lookup another request made).
    Hit,
    /// Asked of Confluence, which named the space.
    Miss,
    /// Asked of Confluence, which named no space.
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamLabels {
    kind: &'static str,
}

/// One counter per decision and reason (or none): the slot of [`Metrics::requests_counter`].
const REQUEST_SLOTS: usize = Decision::ALL.len() * (Reason::ALL.len() + 1);

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    /// `requests`' counters once used, so that counting takes no lock.
    request_counters: [OnceLock<Counter>; REQUEST_SLOTS],
    duration: AtomicHistogram,
    upstream_errors: Family<UpstreamLabels, Counter>,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub argon2_checks: Counter,
    pub argon2_duration: AtomicHistogram,
    pub audit_queue_depth: Gauge,
    /// New connections to Confluence (the pool counts them).
    pub upstream_connects: Counter,
    /// Upstream connections waiting in the pool, set when scraped.
    pub upstream_idle: Gauge,
    pub rate_limit_fallbacks: Counter,
    /// `tokengate_space_lookups_total{result}`: hit, miss, error.
    space_lookups: [Counter; 3],
    pub space_lookup_duration: AtomicHistogram,
    /// `tokengate_tokens{state}`: active, expiring, expired.
    tokens: [Gauge; 3],
    /// `tokengate_identity_mismatches_total{mode}`: header, pat (SPEC §19).
    pub identity_mismatches: [Counter; 2],
    /// Upgraded connections (WebSocket) open now.
    pub tunnels_open: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tokengate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Requests by decision and reason code", requests.clone());
        let duration = AtomicHistogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "request_duration_seconds",
            "Time to the response headers",
            duration.clone(),
        );
        let upstream_errors = Family::<UpstreamLabels, Counter>::default();
        registry.register("upstream_errors", "Failed calls to Confluence", upstream_errors.clone());
        let cache_hits = Counter::default();
        registry.register(
            "verified_cache_hits",
            "Token checks answered by the verified cache",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "verified_cache_misses",
            "Token checks that missed the verified cache",
            cache_misses.clone(),
        );
        let argon2_checks = Counter::default();
        registry.register("argon2_checks", "argon2 hash computations", argon2_checks.clone());
        let argon2_duration = AtomicHistogram::new(exponential_buckets(0.001, 2.0, 12));
        registry.register(
            "argon2_duration_seconds",
            "Time of one argon2 computation",
            argon2_duration.clone(),
        );
        let audit_queue_depth = Gauge::default();
        registry.register(
            "audit_queue_depth",
            "Audit entries waiting to be stored",
            audit_queue_depth.clone(),
        );
        let upstream_connects = Counter::default();
        registry.register(
            "upstream_connects",
            "Connections made to Confluence",
            upstream_connects.clone(),
        );
        let upstream_idle = Gauge::default();
        registry.register(
            "upstream_idle_connections",
            "Connections to Confluence idle in the pool (not counting those held by open client connections)",
            upstream_idle.clone(),
        );
        let rate_limit_fallbacks = Counter::default();
        registry.register(
            "rate_limit_fallback",
            "Rate-limited requests answered by this replica's buckets because Redis could not be asked",
            rate_limit_fallbacks.clone(),
        );
        let lookups = Family::<LookupLabels, Counter>::default();
        registry.register(
            "space_lookups",
            "Content id to space lookups (SPEC §17), by result: hit (cache), miss (asked Confluence), error (no space named)",
            lookups.clone(),
        );
        let space_lookups =
            ["hit", "miss", "error"].map(|result| lookups.get_or_create(&LookupLabels { result }).clone());
        let space_lookup_duration = AtomicHistogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "space_lookup_seconds",
            "Time of one content id to space lookup asked of Confluence",
            space_lookup_duration.clone(),
        );
        let token_states = Family::<StateLabels, Gauge>::default();
        registry.register(
            "tokens",
            "Tokens by state: active, expiring (within 7 days), expired; refreshed every minute",
            token_states.clone(),
        );
        let tokens =
            ["active", "expiring", "expired"].map(|state| token_states.get_or_create(&StateLabels { state }).clone());
        let mismatches = Family::<ModeLabels, Counter>::default();
        registry.register(
            "identity_mismatches",
            "Answers to token requests withheld because Confluence served them as someone else (SPEC §19), by forward_as mode",
            mismatches.clone(),
        );
        let identity_mismatches = ["header", "pat"].map(|mode| mismatches.get_or_create(&ModeLabels { mode }).clone());
        let tunnels_open = Gauge::default();
        registry.register(
            "tunnels_open",
            "Upgraded connections (WebSocket) open now; each holds a place under max_connections",
            tunnels_open.clone(),
        );
        Metrics {
            identity_mismatches,
            tunnels_open,
            tokens,
            space_lookups,
            space_lookup_duration,
            rate_limit_fallbacks,
            registry,
            requests,
            request_counters: std::array::from_fn(|_| OnceLock::new()),
            duration,
            upstream_errors,
            cache_hits,
            cache_misses,
            argon2_checks,
            argon2_duration,
            audit_queue_depth,
            upstream_connects,
            upstream_idle,
        }
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Metrics::default())
    }

    pub fn observe_request(&self, decision: Decision, reason: Option<Reason>, elapsed: Duration) {
        self.requests_counter(decision, reason).inc();
        self.duration.observe(elapsed);
        let upstream = match reason {
            Some(Reason::UpstreamUnavailable) => Some("unavailable"),
            Some(Reason::UpstreamTimeout) => Some("timeout"),
            _ => None,
        };
        if let Some(kind) = upstream {
            self.upstream_errors.get_or_create(&UpstreamLabels { kind }).inc();
        }
    }

    /// Sets `tokengate_tokens{state}`.
    pub fn set_token_states(&self, active: i64, expiring: i64, expired: i64) {
        for (gauge, value) in self.tokens.iter().zip([active, expiring, expired]) {
            gauge.set(value);
        }
    }

    pub fn observe_space_lookup(&self, result: LookupResult) {
        self.space_lookups[result as usize].inc();
    }

    fn requests_counter(&self, decision: Decision, reason: Option<Reason>) -> &Counter {
        let slot = decision as usize * (Reason::ALL.len() + 1) + reason.map_or(0, |r| r as usize + 1);
        self.request_counters[slot].get_or_init(|| {
            let labels = RequestLabels {
                decision: decision.label(),
                reason: reason.map_or("none", Reason::code),
            };
            self.requests.get_or_create(&labels).clone()
        })
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// A Prometheus histogram of durations whose observations are atomic
/// additions: one counter per bucket and the sum in nanoseconds.
#[derive(Debug, Clone)]
pub struct AtomicHistogram {
    cells: Arc<HistogramCells>,
}

#[derive(Debug)]
struct HistogramCells {
    /// Upper bounds in seconds, ascending; the last is +Inf.
    bounds: Vec<f64>,
    /// Observations per bucket (not cumulative), as `bounds`.
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

impl AtomicHistogram {
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Vec<f64> = bounds
            .into_iter()
            .filter(|bound| bound.is_finite())
            .chain(std::iter::once(f64::INFINITY))
            .collect();
        let counts = bounds.iter().map(|_| AtomicU64::new(0)).collect();
        AtomicHistogram {
            cells: Arc::new(HistogramCells {
                bounds,
                counts,
                sum_nanos: AtomicU64::new(0),
            }),
        }
    }

    pub fn observe(&self, elapsed: Duration) {
        let cells = &*self.cells;
        let seconds = elapsed.as_secs_f64();
        let bucket = cells
            .bounds
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(cells.bounds.len() - 1);
        cells.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        cells.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let cells = &*self.cells;
        let buckets: Vec<(f64, u64)> = cells
            .bounds
            .iter()
            .zip(&cells.counts)
            .map(|(&bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = cells.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_and_reasons_index_their_counter_slots() {
        for (i, decision) in Decision::ALL.into_iter().enumerate() {
            assert_eq!(decision as usize, i, "{decision:?}");
        }
        for (i, reason) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, i, "{reason:?}");
        }
    }

    #[test]
    fn requests_are_counted_by_decision_and_reason() {
        let metrics = Metrics::default();
        metrics.observe_request(Decision::Allow, None, Duration::from_millis(1));
        metrics.observe_request(Decision::Allow, None, Duration::from_millis(1));
        metrics.observe_request(Decision::Deny, Some(Reason::RuleMismatch), Duration::from_millis(1));
        metrics.observe_request(Decision::Deny, Some(Reason::UpstreamTimeout), Duration::from_millis(1));
        let text = metrics.render();
        assert!(
            text.contains(r#"tokengate_requests_total{decision="allow",reason="none"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tokengate_requests_total{decision="deny",reason="rule_mismatch"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tokengate_upstream_errors_total{kind="timeout"} 1"#),
            "{text}"
        );
        assert!(!text.contains("passthrough"), "a series appears on first use: {text}");
    }

    #[test]
    fn the_histogram_is_cumulative_with_sum_and_count() {
        let metrics = Metrics::default();
        for ms in [0, 1, 1, 3, 100_000] {
            metrics.observe_request(Decision::Own, None, Duration::from_millis(ms));
        }
        let text = metrics.render();
        let line = |le: &str| format!("tokengate_request_duration_seconds_bucket{{le=\"{le}\"}} ");
        let value = |le: &str| {
            let prefix = line(le);
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no bucket {le} in {text}"))
                .to_owned()
        };
        assert_eq!(value("0.0005"), "1");
        assert_eq!(value("0.001"), "3");
        assert_eq!(value("0.004"), "4");
        assert_eq!(value("16.384"), "4");
        assert_eq!(value("+Inf"), "5");
        assert!(text.contains("tokengate_request_duration_seconds_count 5"), "{text}");
        assert!(
            text.contains("tokengate_request_duration_seconds_sum 100.005"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE tokengate_request_duration_seconds histogram"),
            "{text}"
        );
    }
}
