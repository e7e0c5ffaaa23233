//! Prometheus metrics, in a registry of the application's own (no global recorder: two
//! instances in one process, as in the tests, count apart).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder, core::Collector,
};

/// Every metric the service exports at `/metrics`.
pub struct Metrics {
    registry: Registry,
    /// Requests by operation (the OpenAPI operation id, or the static route), method, status.
    pub http_requests: IntCounterVec,
    /// Request latency by operation and method.
    pub http_duration: HistogramVec,
    /// Logins by result: ok, failed, disabled.
    pub logins: IntCounterVec,
    /// Refreshes by result: ok, grace, reused, rejected.
    pub refreshes: IntCounterVec,
    /// Requests refused by a rate limit or the login backoff, by rule.
    pub rate_limited: IntCounterVec,
    /// Password hashes waiting for a slot.
    pub hash_queue_depth: IntGauge,
    /// Time spent waiting for a hashing slot.
    pub hash_wait: Histogram,
    /// Password hash requests turned away (503 busy).
    pub hash_rejected: IntCounter,
    /// Failures of the database or the session store, by dependency.
    pub dependency_errors: IntCounterVec,
    /// Audit events that could not be written (the request went on).
    pub audit_failures: IntCounter,
    /// Mail delivery attempts by kind (verify_email, ...) and result: sent, retry, dead.
    pub mail_deliveries: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Registers a metric: every name is a literal of this file, so a failure is a bug here.
fn register<C: Collector + Clone + 'static>(registry: &Registry, metric: C) -> C {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are valid and unique");
    metric
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric");
    register(registry, metric)
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(
        registry,
        IntCounter::new(name, help).expect("a valid metric"),
    )
}

fn latency(name: &str, help: &str) -> HistogramOpts {
    HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec())
}

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("latchkey".into()), None).expect("a valid registry prefix");
        let r = &registry;
        let http_duration = HistogramVec::new(
            latency(
                "http_request_duration_seconds",
                "HTTP request latency by operation and method",
            ),
            &["operation", "method"],
        );
        let hash_wait = Histogram::with_opts(latency(
            "password_hash_wait_seconds",
            "Time a password hash waited for a slot",
        ));
        let hash_queue_depth = IntGauge::new(
            "password_hash_queue_depth",
            "Password hashes waiting for a slot",
        );
        Self {
            http_requests: counter_vec(
                r,
                "http_requests_total",
                "HTTP requests by operation, method and status",
                &["operation", "method", "status"],
            ),
            http_duration: register(r, http_duration.expect("a valid metric")),
            logins: counter_vec(r, "logins_total", "Logins by result", &["result"]),
            refreshes: counter_vec(
                r,
                "refreshes_total",
                "Token refreshes by result",
                &["result"],
            ),
            rate_limited: counter_vec(
                r,
                "rate_limited_total",
                "Requests refused by a rate limit or login backoff, by rule",
                &["rule"],
            ),
            hash_queue_depth: register(r, hash_queue_depth.expect("a valid metric")),
            hash_wait: register(r, hash_wait.expect("a valid metric")),
            hash_rejected: counter(
                r,
                "password_hash_rejected_total",
                "Password hashes turned away because every slot stayed busy",
            ),
            dependency_errors: counter_vec(
                r,
                "dependency_errors_total",
                "Database and session store failures",
                &["dependency"],
            ),
            audit_failures: counter(
                r,
                "audit_write_failures_total",
                "Audit events that could not be stored",
            ),
            mail_deliveries: counter_vec(
                r,
                "mail_deliveries_total",
                "Mail delivery attempts by kind and result (sent, retry, dead)",
                &["kind", "result"],
            ),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %err, "encoding metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
