//! Prometheus collectors, and one `record()` per request so logs and metrics never drift.
//!
//! Labels are bounded: route templates (never raw paths), a closed set of methods, status
//! codes, decisions and reasons. No token data and no organization ids.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// All collectors, registered in one registry per gateway (tests run several side by side).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub auth_failures: IntCounterVec,
    pub reloads: IntCounterVec,
    pub keys_loaded: IntGauge,
    pub orgs_loaded: IntGauge,
    pub open_connections: IntGauge,
    pub key_file_errors: IntGauge,
    pub key_changes: IntCounterVec,
    pub open_tunnels: IntGauge,
    pub token_exchanges: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "scopegate_requests_total",
                "Requests by route template, method, status and decision.",
            ),
            &["route", "method", "status", "decision"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "scopegate_request_duration_seconds",
                "Whole-request latency, until the response head is sent.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "decision"],
        )
        .expect("valid metric");
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "scopegate_upstream_duration_seconds",
                "Time from sending upstream to its response head.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["upstream"],
        )
        .expect("valid metric");
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "scopegate_auth_failures_total",
                "Refused credentials by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let reloads = IntCounterVec::new(
            Opts::new(
                "scopegate_reloads_total",
                "Config and key reloads by kind and result.",
            ),
            &["kind", "result"],
        )
        .expect("valid metric");
        let keys_loaded = IntGauge::new("scopegate_keys_loaded", "Keys currently accepted.")
            .expect("valid metric");
        let orgs_loaded = IntGauge::new("scopegate_orgs_loaded", "Organizations currently loaded.")
            .expect("valid metric");
        let open_connections =
            IntGauge::new("scopegate_open_connections", "Client connections open now.")
                .expect("valid metric");
        let key_file_errors = IntGauge::new(
            "scopegate_key_files_failing",
            "Key files whose latest version is broken (their last good keys stay in use).",
        )
        .expect("valid metric");
        let key_changes = IntCounterVec::new(
            Opts::new(
                "scopegate_key_changes_total",
                "Keys created and deleted through the keys API, by action and result.",
            ),
            &["action", "result"],
        )
        .expect("valid metric");
        let open_tunnels = IntGauge::new(
            "scopegate_open_tunnels",
            "Upgraded connections (WebSockets) being relayed now.",
        )
        .expect("valid metric");
        let token_exchanges = IntCounterVec::new(
            Opts::new(
                "scopegate_token_exchanges_total",
                "Token exchanges at POST /tokens by kind (idp, anonymous) and result.",
            ),
            &["kind", "result"],
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "scopegate_build_info",
                "Always 1; labelled with the version.",
            ),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(auth_failures.clone()),
            Box::new(reloads.clone()),
            Box::new(keys_loaded.clone()),
            Box::new(orgs_loaded.clone()),
            Box::new(open_connections.clone()),
            Box::new(key_file_errors.clone()),
            Box::new(key_changes.clone()),
            Box::new(open_tunnels.clone()),
            Box::new(token_exchanges.clone()),
            Box::new(build_info),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            auth_failures,
            reloads,
            keys_loaded,
            orgs_loaded,
            open_connections,
            key_file_errors,
            key_changes,
            open_tunnels,
            token_exchanges,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }

    pub fn upstream_timer(&self, upstream: &str) -> Histogram {
        self.upstream_duration.with_label_values(&[upstream])
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A method as a metrics label: the standard ones by name, anything else as `OTHER`.
pub fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}
