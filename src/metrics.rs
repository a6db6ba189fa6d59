//! Prometheus collectors, and one `record()` per request so logs and metrics never drift.
//!
//! Labels are bounded: route templates (never raw paths), a closed set of methods, status
//! codes, decisions and reasons. No token data and no organization ids.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// All collectors, registered in one registry per gateway (tests run several side by side).
#[derive(Clone)]
pub struct Metrics {
    /// Tells apart the collectors of different gateways in [`Metrics::record_request`]'s
    /// per-thread cache (clones share it, as they share the collectors).
    id: u64,
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
    /// `scopegate_token_cache_lookups_total{result="hit"}` and `{result="miss"}`.
    pub token_cache_hits: IntCounter,
    pub token_cache_misses: IntCounter,
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
        let token_cache = IntCounterVec::new(
            Opts::new(
                "scopegate_token_cache_lookups_total",
                "Bearer tokens looked up in the workers' token caches: hit (verified before, \
                 its claims checked again) or miss (verified in full).",
            ),
            &["result"],
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
            Box::new(token_cache.clone()),
            Box::new(build_info),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Metrics {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
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
            token_cache_hits: token_cache.with_label_values(&["hit"]),
            token_cache_misses: token_cache.with_label_values(&["miss"]),
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

    /// Counts one request in `scopegate_requests_total{route, method, status, decision}` and
    /// observes its duration in `scopegate_request_duration_seconds{route, decision}`.
    /// `route` is the matched route's template (`None`: the label is `(none)`).
    ///
    /// The same as `with_label_values(..)` on both, without hashing the labels and locking
    /// the vectors on every request: the labelled children are kept per thread, keyed by
    /// identity (these metrics, the template's `Arc`, held so its address cannot be reused,
    /// the `'static` label strings, the status code). A key that differs only by identity
    /// (a reloaded config's new template `Arc`) is a miss that resolves to the same children.
    pub fn record_request(
        &self,
        route: Option<&Arc<str>>,
        method: &'static str,
        status: http::StatusCode,
        decision: &'static str,
        elapsed: Duration,
    ) {
        REQUEST_CHILDREN.with(|cache| {
            let mut cache = cache.borrow_mut();
            let hit = cache.iter().position(|c| {
                c.metrics == self.id
                    && c.status == status.as_u16()
                    && std::ptr::eq(c.method, method)
                    && std::ptr::eq(c.decision, decision)
                    && match (&c.route, route) {
                        (None, None) => true,
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        _ => false,
                    }
            });
            let children = match hit {
                Some(i) => &cache[i],
                None => {
                    if cache.len() >= CACHED_CHILDREN {
                        cache.clear();
                    }
                    let label = route.map_or("(none)", |r| &**r);
                    cache.push(RequestChildren {
                        metrics: self.id,
                        route: route.cloned(),
                        method,
                        status: status.as_u16(),
                        decision,
                        requests: self.requests.with_label_values(&[
                            label,
                            method,
                            status.as_str(),
                            decision,
                        ]),
                        duration: self.request_duration.with_label_values(&[label, decision]),
                    });
                    cache.last().expect("just pushed")
                }
            };
            children.requests.inc();
            children.duration.observe(elapsed.as_secs_f64());
        });
    }
}

/// How many labelled request children a thread keeps; past that the cache starts over.
const CACHED_CHILDREN: usize = 64;

/// One key of [`Metrics::record_request`]'s cache, and the children it resolved to.
struct RequestChildren {
    metrics: u64,
    route: Option<Arc<str>>,
    method: &'static str,
    status: u16,
    decision: &'static str,
    requests: IntCounter,
    duration: Histogram,
}

thread_local! {
    static REQUEST_CHILDREN: RefCell<Vec<RequestChildren>> = const { RefCell::new(Vec::new()) };
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    /// One request as `handle` records it: route, method, status, decision, micros.
    type Request = (Option<Arc<str>>, &'static str, u16, &'static str, u64);

    fn requests(routes: &[Arc<str>]) -> Vec<Request> {
        let mut out = Vec::new();
        for round in 0..3u64 {
            for (i, route) in routes.iter().enumerate() {
                out.push((
                    Some(route.clone()),
                    "GET",
                    200,
                    "allow",
                    40 + round * 1000 + i as u64,
                ));
                out.push((Some(route.clone()), "POST", 403, "deny", 7));
                out.push((Some(route.clone()), "GET", 502, "upstream-error", 2_000_000));
            }
            out.push((None, "OTHER", 404, "reject", 3));
            out.push((None, "GET", 400, "reject", 30_000_000));
        }
        out
    }

    #[test]
    fn cached_children_export_what_with_label_values_exports() {
        let routes: Vec<Arc<str>> = vec!["/v1/state".into(), "/machines/{machine}".into()];
        let direct = Metrics::new();
        let cached = Metrics::new();
        for (route, method, status, decision, micros) in requests(&routes) {
            let elapsed = Duration::from_micros(micros);
            let label = route.as_deref().unwrap_or("(none)");
            direct
                .requests
                .with_label_values(&[label, method, &status.to_string(), decision])
                .inc();
            direct
                .request_duration
                .with_label_values(&[label, decision])
                .observe(elapsed.as_secs_f64());
            cached.record_request(
                route.as_ref(),
                method,
                StatusCode::from_u16(status).unwrap(),
                decision,
                elapsed,
            );
        }
        assert_eq!(cached.render(), direct.render());
        assert!(direct.render().contains(
            "scopegate_requests_total{decision=\"allow\",method=\"GET\",route=\"/v1/state\",status=\"200\"} 3"
        ));
    }

    #[test]
    fn the_cache_tells_gateways_and_reloaded_templates_apart() {
        let a = Metrics::new();
        let b = Metrics::new();
        let first: Arc<str> = "/v1/state".into();
        // The same template text from a reloaded config: another Arc, the same label.
        let reloaded: Arc<str> = "/v1/state".into();
        let ok = StatusCode::OK;
        a.record_request(Some(&first), "GET", ok, "allow", Duration::ZERO);
        b.record_request(Some(&first), "GET", ok, "allow", Duration::ZERO);
        b.record_request(Some(&reloaded), "GET", ok, "allow", Duration::ZERO);
        a.record_request(None, "GET", ok, "allow", Duration::ZERO);
        let line = |m: &Metrics, route: &str| {
            let text = m.render();
            let key = format!(
                "scopegate_requests_total{{decision=\"allow\",method=\"GET\",route=\"{route}\",status=\"200\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(&key).map(str::to_owned))
                .unwrap_or_default()
        };
        assert_eq!(line(&a, "/v1/state"), "1");
        assert_eq!(line(&b, "/v1/state"), "2");
        assert_eq!(line(&a, "(none)"), "1");
        assert_eq!(line(&b, "(none)"), "");
    }

    #[test]
    fn a_full_cache_starts_over_and_still_counts() {
        let m = Metrics::new();
        let routes: Vec<Arc<str>> = (0..CACHED_CHILDREN * 2 + 3)
            .map(|i| Arc::from(format!("/r{i}")))
            .collect();
        for _ in 0..2 {
            for r in &routes {
                m.record_request(Some(r), "GET", StatusCode::OK, "allow", Duration::ZERO);
            }
        }
        let text = m.render();
        for r in &routes {
            assert!(
                text.contains(&format!(
                    "scopegate_requests_total{{decision=\"allow\",method=\"GET\",route=\"{r}\",status=\"200\"}} 2"
                )),
                "{r}"
            );
        }
    }
}
