//! The gateway's own endpoints.
//!
//! On the admin listener: `/metrics` (Prometheus text), `/healthz` (the process runs) and
//! `/readyz` (config and keys loaded, not draining). Keep it off the public network.
//!
//! On the main listener, behind the same pipeline as every route: the keys API
//! ([`keys_api`]) and the dashboard ([`dashboard`]).

pub mod dashboard;
pub mod keys_api;

use std::sync::Arc;

use crate::pipeline::ClientBody;
use http::request::Parts;

use crate::config::Builtin;
use crate::error::GatewayError;
use crate::gateway::Snapshot;
use crate::pipeline::Permit;

/// Answers a request the route table sent to a built-in endpoint.
pub async fn builtin(
    gateway: &Arc<Gateway>,
    snapshot: &Snapshot,
    builtin: Builtin,
    permit: Permit,
    parts: Parts,
    body: ClientBody,
) -> Result<Response<Full<Bytes>>, GatewayError> {
    match builtin {
        Builtin::Dashboard => dashboard::handle(&parts),
        Builtin::TokenExchange => crate::exchange::handle(gateway, snapshot, parts, body).await,
        Builtin::KeysList | Builtin::KeysCreate | Builtin::KeysDelete => {
            keys_api::handle(gateway, snapshot, builtin, permit, parts, body).await
        }
    }
}

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

use crate::error::json_response;
use crate::gateway::Gateway;

pub fn handle<B>(gateway: &Gateway, request: Request<B>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "the admin endpoints only answer GET",
            "method-not-allowed",
        );
    }
    match request.uri().path() {
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(gateway.metrics.render())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if gateway.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => json_response(StatusCode::NOT_FOUND, "no such admin endpoint", "not-found"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
