//! Every way a request can be refused, and the one place that turns a refusal into a response.
//!
//! The wire contract (status, `code`, `WWW-Authenticate`) is DESIGN.md's error table. Bodies
//! carry a fixed human message per reason and never echo request data: no token, no claim,
//! no path.

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::Full;

/// Why a token was refused. The reason is a metrics label and a log field; it is a closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFault {
    Malformed,
    TooLarge,
    UnknownKey,
    AlgorithmMismatch,
    UnsupportedHeader,
    BadSignature,
    MissingClaim,
    BadClaim,
    WrongAudience,
    Expired,
    NotYetValid,
    IssuedInFuture,
    Ambiguous,
}

impl TokenFault {
    pub fn reason(self) -> &'static str {
        match self {
            TokenFault::Malformed => "malformed",
            TokenFault::TooLarge => "too-large",
            TokenFault::UnknownKey => "unknown-key",
            TokenFault::AlgorithmMismatch => "algorithm-mismatch",
            TokenFault::UnsupportedHeader => "unsupported-header",
            TokenFault::BadSignature => "bad-signature",
            TokenFault::MissingClaim => "missing-claim",
            TokenFault::BadClaim => "bad-claim",
            TokenFault::WrongAudience => "wrong-audience",
            TokenFault::Expired => "expired",
            TokenFault::NotYetValid => "not-yet-valid",
            TokenFault::IssuedInFuture => "issued-in-future",
            TokenFault::Ambiguous => "ambiguous-token",
        }
    }

    fn is_time(self) -> bool {
        matches!(self, TokenFault::Expired | TokenFault::NotYetValid)
    }
}

/// Everything that ends a request without a normal upstream response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    MissingToken,
    InvalidToken(TokenFault),
    /// The key (or the token's `scope` claim) lacks these route scopes.
    MissingScope {
        missing: String,
    },
    /// `x-statebacked-act` sent by a key that cannot create keys.
    ImpersonationDenied,
    BadActHeader,
    WrongOrg,
    NotFound,
    MethodNotAllowed {
        allow: String,
    },
    BadPath,
    UpstreamUnavailable,
    UpstreamTimeout,
    /// A built-in endpoint refused the request's content; the message says why.
    InvalidRequest(String),
    /// A built-in endpoint found nothing (also for another organization's key: ids don't leak).
    KeyNotFound,
    /// A key may only grant scopes it holds itself.
    ScopeEscalation {
        missing: String,
    },
    /// The request body is larger than a built-in endpoint accepts.
    PayloadTooLarge,
    /// The request target is longer than `max_uri_bytes`.
    UriTooLong,
    /// A token exchange refused (RFC 6749 §5.2): rendered as `{"error", "error_description"}`.
    TokenExchange {
        error: &'static str,
        description: String,
    },
    /// We broke (the key store could not be written): 500, details in the log only.
    Internal,
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::MissingToken | GatewayError::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            GatewayError::MissingScope { .. }
            | GatewayError::ImpersonationDenied
            | GatewayError::WrongOrg => StatusCode::FORBIDDEN,
            GatewayError::BadActHeader | GatewayError::BadPath => StatusCode::BAD_REQUEST,
            GatewayError::NotFound => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::KeyNotFound => StatusCode::NOT_FOUND,
            GatewayError::ScopeEscalation { .. } => StatusCode::FORBIDDEN,
            GatewayError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::UriTooLong => StatusCode::URI_TOO_LONG,
            GatewayError::TokenExchange { error, .. } if *error == "temporarily_unavailable" => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::TokenExchange { .. } => StatusCode::BAD_REQUEST,
            GatewayError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::MissingToken => "missing-token",
            GatewayError::InvalidToken(f) if f.is_time() => "expired-token",
            GatewayError::InvalidToken(_) => "invalid-token",
            GatewayError::MissingScope { .. } | GatewayError::ImpersonationDenied => {
                "missing-scope"
            }
            GatewayError::WrongOrg => "missing-org",
            GatewayError::NotFound => "not-found",
            GatewayError::MethodNotAllowed { .. } => "method-not-allowed",
            GatewayError::BadActHeader | GatewayError::BadPath => "bad-request",
            GatewayError::UpstreamUnavailable => "bad-gateway",
            GatewayError::UpstreamTimeout => "gateway-timeout",
            GatewayError::InvalidRequest(_) => "bad-request",
            GatewayError::KeyNotFound => "not-found",
            GatewayError::ScopeEscalation { .. } => "missing-scope",
            GatewayError::PayloadTooLarge => "payload-too-large",
            GatewayError::UriTooLong => "uri-too-long",
            GatewayError::TokenExchange { error, .. } => error,
            GatewayError::Internal => "internal-error",
        }
    }

    /// The reason recorded in logs and the `scopegate_auth_failures_total` metric.
    pub fn reason(&self) -> &'static str {
        match self {
            GatewayError::InvalidToken(f) => f.reason(),
            GatewayError::ImpersonationDenied => "impersonation-denied",
            GatewayError::BadActHeader => "bad-act-header",
            GatewayError::BadPath => "ambiguous-path",
            GatewayError::ScopeEscalation { .. } => "scope-escalation",
            other => other.code(),
        }
    }

    fn message(&self) -> std::borrow::Cow<'static, str> {
        let text = match self {
            GatewayError::MissingToken => "a bearer token is required",
            GatewayError::InvalidToken(TokenFault::Expired) => "the token has expired",
            GatewayError::InvalidToken(TokenFault::NotYetValid) => "the token is not valid yet",
            GatewayError::InvalidToken(_) => "the token is invalid",
            GatewayError::MissingScope { .. } => "the key lacks a scope this route requires",
            GatewayError::ImpersonationDenied => {
                "acting for an end user requires a key with the org-keys.write scope"
            }
            GatewayError::BadActHeader => "x-statebacked-act must be a JSON object",
            GatewayError::WrongOrg => "the key cannot act on this organization",
            GatewayError::NotFound => "no route matches this path",
            GatewayError::MethodNotAllowed { .. } => "this route does not allow the method",
            GatewayError::BadPath => "the request path is ambiguous",
            GatewayError::UpstreamUnavailable => "the upstream service is unavailable",
            GatewayError::UpstreamTimeout => "the upstream service timed out",
            GatewayError::InvalidRequest(message) => return message.clone().into(),
            GatewayError::KeyNotFound => "no such key",
            GatewayError::ScopeEscalation { .. } => "a key cannot grant scopes it does not hold",
            GatewayError::PayloadTooLarge => "the request body is too large",
            GatewayError::UriTooLong => "the request target is too long",
            GatewayError::TokenExchange { description, .. } => return description.clone().into(),
            GatewayError::Internal => "internal error",
        };
        text.into()
    }

    /// Is this a decision about the caller (401/403) rather than about the request's shape
    /// or the upstream? Counts in `scopegate_auth_failures_total`.
    pub fn is_auth_failure(&self) -> bool {
        matches!(
            self,
            GatewayError::MissingToken
                | GatewayError::InvalidToken(_)
                | GatewayError::MissingScope { .. }
                | GatewayError::ImpersonationDenied
                | GatewayError::WrongOrg
        )
    }

    /// The response. RFC 6750 §3 shapes `WWW-Authenticate`.
    pub fn into_response(&self) -> Response<Full<Bytes>> {
        if let GatewayError::TokenExchange { error, description } = self {
            // RFC 6749 §5.2 names these fields differently from our other errors.
            #[derive(serde::Serialize)]
            struct OAuthError<'a> {
                error: &'a str,
                error_description: &'a str,
            }
            let body = serde_json::to_string(&OAuthError {
                error,
                error_description: description,
            })
            .expect("error bodies serialize");
            return json_body(self.status(), body);
        }
        let mut response = json_response(self.status(), &self.message(), self.code());
        let headers = response.headers_mut();
        match self {
            GatewayError::MissingToken => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            GatewayError::InvalidToken(_) => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            GatewayError::MissingScope { missing } => {
                // Scope names are validated to a header-safe alphabet at load time.
                if let Ok(v) = HeaderValue::from_str(&format!(
                    "Bearer error=\"insufficient_scope\", scope=\"{missing}\""
                )) {
                    headers.insert(WWW_AUTHENTICATE, v);
                }
            }
            GatewayError::ImpersonationDenied => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer error=\"insufficient_scope\", scope=\"org-keys.write\"",
                    ),
                );
            }
            GatewayError::MethodNotAllowed { allow } => {
                if let Ok(v) = HeaderValue::from_str(allow) {
                    headers.insert(ALLOW, v);
                }
            }
            GatewayError::BadActHeader
            | GatewayError::WrongOrg
            | GatewayError::NotFound
            | GatewayError::BadPath
            | GatewayError::UpstreamUnavailable
            | GatewayError::UpstreamTimeout
            | GatewayError::InvalidRequest(_)
            | GatewayError::ScopeEscalation { .. }
            | GatewayError::KeyNotFound
            | GatewayError::PayloadTooLarge
            | GatewayError::UriTooLong
            | GatewayError::TokenExchange { .. }
            | GatewayError::Internal => {}
        }
        response
    }
}

/// `{"error": message, "code": code}` with JSON content type; used by every refusal.
pub fn json_response(status: StatusCode, message: &str, code: &str) -> Response<Full<Bytes>> {
    #[derive(serde::Serialize)]
    struct ErrorBody<'a> {
        error: &'a str,
        code: &'a str,
    }
    let body = serde_json::to_string(&ErrorBody {
        error: message,
        code,
    })
    .expect("error bodies serialize");
    json_body(status, body)
}

/// A JSON response the gateway writes itself; never cached.
pub fn json_body(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_its_status_and_code() {
        let table: &[(GatewayError, u16, &str)] = &[
            (GatewayError::MissingToken, 401, "missing-token"),
            (
                GatewayError::InvalidToken(TokenFault::BadSignature),
                401,
                "invalid-token",
            ),
            (
                GatewayError::InvalidToken(TokenFault::Expired),
                401,
                "expired-token",
            ),
            (
                GatewayError::InvalidToken(TokenFault::NotYetValid),
                401,
                "expired-token",
            ),
            (
                GatewayError::MissingScope {
                    missing: "a".into(),
                },
                403,
                "missing-scope",
            ),
            (GatewayError::ImpersonationDenied, 403, "missing-scope"),
            (GatewayError::WrongOrg, 403, "missing-org"),
            (GatewayError::NotFound, 404, "not-found"),
            (
                GatewayError::MethodNotAllowed {
                    allow: "GET".into(),
                },
                405,
                "method-not-allowed",
            ),
            (GatewayError::BadPath, 400, "bad-request"),
            (GatewayError::BadActHeader, 400, "bad-request"),
            (GatewayError::UpstreamUnavailable, 502, "bad-gateway"),
            (GatewayError::UpstreamTimeout, 504, "gateway-timeout"),
        ];
        for (err, status, code) in table {
            assert_eq!(err.status().as_u16(), *status, "{err:?}");
            assert_eq!(err.code(), *code, "{err:?}");
        }
    }
}
