//! Prometheus metrics (`/tokengate/metrics`), one registry per gateway so
//! several can run in one process (the tests do).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::Reason;

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Forwarded as a token's user.
    Allow,
    /// Forwarded untouched (no gateway token).
    Passthrough,
    /// Answered by the gateway's own routes.
    Own,
    /// Refused or failed with a reason code.
    Deny,
}

impl Decision {
    fn label(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
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
struct UpstreamLabels {
    kind: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Histogram,
    upstream_errors: Family<UpstreamLabels, Counter>,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub argon2_checks: Counter,
    pub argon2_duration: Histogram,
    pub audit_queue_depth: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tokengate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Requests by decision and reason code", requests.clone());
        let duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
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
        let argon2_duration = Histogram::new(exponential_buckets(0.001, 2.0, 12));
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
        Metrics {
            registry,
            requests,
            duration,
            upstream_errors,
            cache_hits,
            cache_misses,
            argon2_checks,
            argon2_duration,
            audit_queue_depth,
        }
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Metrics::default())
    }

    pub fn observe_request(&self, decision: Decision, reason: Option<Reason>, elapsed: Duration) {
        let labels = RequestLabels {
            decision: decision.label(),
            reason: reason.map_or("none", Reason::code),
        };
        self.requests.get_or_create(&labels).inc();
        self.duration.observe(elapsed.as_secs_f64());
        let upstream = match reason {
            Some(Reason::UpstreamUnavailable) => Some("unavailable"),
            Some(Reason::UpstreamTimeout) => Some("timeout"),
            _ => None,
        };
        if let Some(kind) = upstream {
            self.upstream_errors.get_or_create(&UpstreamLabels { kind }).inc();
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}
