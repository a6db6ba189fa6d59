//! The life of one request, as plain functions in a fixed order:
//!
//! 1. **path** — normalize once; the result is matched *and* forwarded.
//! 2. **route** — before the token: an unknown path is a 404 whatever the credentials, a
//!    public route needs none, and only the route says whether a query-parameter token is
//!    allowed at all.
//! 3. **token** — find exactly one bearer token.
//! 4. **verify** — signature, algorithm, time and audience against the live key set.
//! 5. **authorize** — organization, scopes, impersonation → a [`Permit`].
//! 6. **forward** — takes the `Permit`; streams the request upstream.
//! 7. one metrics + log record, on success and failure alike.
//!
//! Steps 1–5 are [`decide`]: pure, no I/O, so `explain` and tests compute the same decision
//! `serve` acts on.

pub mod authorize;
pub mod forward;
pub mod path;
pub mod token;
pub mod verify;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Method, Request, Response, Uri};
use hyper::body::Incoming;

pub use authorize::Permit;
use forward::{Body, ClientSide};

use crate::config::{Lookup, Route};
use crate::error::GatewayError;
use crate::gateway::{Gateway, Snapshot};
use crate::keys::KeySet;
use crate::metrics::method_label;

/// A request that may go upstream, and where.
#[derive(Debug)]
pub struct Decision<'a> {
    pub route: &'a Route,
    pub permit: Permit,
    pub upstream_uri: Uri,
}

/// What `decide` concluded, with the route when one matched (for metrics labels and traces).
#[derive(Debug)]
pub struct Outcome<'a> {
    pub route: Option<&'a Route>,
    pub result: Result<Decision<'a>, GatewayError>,
}

/// Steps 1–5 for a request head, at time `now` (seconds since the epoch).
pub fn decide<'a>(
    snapshot: &'a Snapshot,
    keys: &KeySet,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    now: u64,
) -> Outcome<'a> {
    let config = &snapshot.config;
    let path = match path::normalize(uri.path()) {
        Ok(p) => p,
        Err(path::AmbiguousPath) => {
            return Outcome {
                route: None,
                result: Err(GatewayError::BadPath),
            }
        }
    };
    let matched = match config.routes.lookup(method, &path) {
        Ok(m) => m,
        Err(Lookup::NotFound) => {
            return Outcome {
                route: None,
                result: Err(GatewayError::NotFound),
            }
        }
        Err(Lookup::MethodNotAllowed { allow }) => {
            return Outcome {
                route: None,
                result: Err(GatewayError::MethodNotAllowed {
                    allow: allow.to_owned(),
                }),
            }
        }
    };
    let route = matched.route;
    let result = (|| {
        let (query_token, query) = match &route.token_query_param {
            None => (Ok(None), uri.query().map(std::borrow::Cow::Borrowed)),
            Some(name) => {
                let taken = path::take_query_param(uri.query(), name);
                let token = if taken.ambiguous {
                    Err(())
                } else {
                    Ok(taken.value)
                };
                (token, taken.rest)
            }
        };
        let permit = if route.public {
            Permit::public()
        } else {
            let found = token::find(headers, query_token)?;
            let verified = snapshot.verifier.verify(keys, &found.token, now)?;
            authorize::authorize(route, matched.org, verified, headers)?
        };
        let upstream = &config.upstreams[route.upstream];
        let upstream_uri = forward::upstream_uri(upstream, &path, query.as_deref())?;
        Ok(Decision {
            route,
            permit,
            upstream_uri,
        })
    })();
    Outcome {
        route: Some(route),
        result,
    }
}

pub fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Serves one request end to end.
pub async fn handle(
    gateway: Arc<Gateway>,
    request: Request<Incoming>,
    peer: SocketAddr,
    proto: &'static str,
) -> Response<Body> {
    let started = Instant::now();
    let snapshot = gateway.snapshot.load_full();
    let keys = gateway.keys.load_full();
    let (mut parts, body) = request.into_parts();
    let method = method_label(&parts.method);
    let outcome = decide(
        &snapshot,
        &keys,
        &parts.method,
        &parts.uri,
        &parts.headers,
        now_seconds(),
    );
    let route_label: &str = outcome.route.map_or("(none)", |r| &r.template);
    let (response, error, identity) = match outcome.result {
        Err(e) => (e.into_response().map(Body::Right), Some(e), None),
        Ok(decision) => {
            let route = decision.route;
            let host = parts.headers.get(http::header::HOST).cloned().or_else(|| {
                parts
                    .uri
                    .authority()
                    .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
            });
            forward::prepare_headers(
                &mut parts.headers,
                &decision.permit,
                &snapshot.identity,
                ClientSide {
                    peer,
                    proto,
                    trust_forwarded: snapshot.config.server.trust_forwarded_headers,
                    host: host.as_ref(),
                },
                route.forward_token,
            );
            parts.uri = decision.upstream_uri;
            parts.version = http::Version::HTTP_11;
            let identity = decision
                .permit
                .identity
                .as_ref()
                .map(|id| (id.key.id.clone(), id.key.org.clone()));
            let upstream = &snapshot.upstreams[route.upstream];
            let request = Request::from_parts(parts, body);
            match forward::send_timed(upstream, request, &gateway.metrics).await {
                Ok(response) => (response.map(Body::Left), None, identity),
                Err(e) => (e.into_response().map(Body::Right), Some(e), identity),
            }
        }
    };
    let status = response.status();
    let decision = match &error {
        None => "allow",
        Some(e) if e.is_auth_failure() => "deny",
        Some(GatewayError::UpstreamUnavailable | GatewayError::UpstreamTimeout) => "upstream-error",
        Some(_) => "reject",
    };
    let elapsed = started.elapsed();
    let m = &gateway.metrics;
    m.requests
        .with_label_values(&[route_label, method, status.as_str(), decision])
        .inc();
    m.request_duration
        .with_label_values(&[route_label, decision])
        .observe(elapsed.as_secs_f64());
    if let Some(e) = error.as_ref().filter(|e| e.is_auth_failure()) {
        m.auth_failures.with_label_values(&[e.reason()]).inc();
    }
    let (key, org) = identity.unzip();
    tracing::info!(
        target: "scopegate::access",
        method,
        route = route_label,
        status = status.as_u16(),
        decision,
        reason = error.as_ref().map(GatewayError::reason),
        key = key.as_deref(),
        org = org.as_deref(),
        micros = elapsed.as_micros() as u64,
        "request"
    );
    response
}
