//! The web dashboard: three static files compiled into the binary, served at `/dashboard` on
//! the main listener so that its calls to the keys API are same-origin (no CORS to open).
//! The token a user pastes lives in the page's memory only: never in a URL, a cookie or
//! browser storage. A strict Content-Security-Policy allows nothing but these files and
//! same-origin API calls.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::error::GatewayError;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/app.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn handle(parts: &Parts) -> Result<Response<Full<Bytes>>, GatewayError> {
    let path =
        crate::pipeline::path::normalize(parts.uri.path()).map_err(|_| GatewayError::BadPath)?;
    let (body, content_type) = match &*path {
        "/dashboard" | "/dashboard/" | "/dashboard/index.html" => {
            (INDEX, "text/html; charset=utf-8")
        }
        "/dashboard/app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/dashboard/app.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return Err(GatewayError::NotFound),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = StatusCode::OK;
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
