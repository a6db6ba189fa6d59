//! Authorization: may this verified key use this route, for this organization, as this user?
//!
//! A successful check yields a [`Permit`], the only thing `forward` accepts, so code that skips
//! authorization does not compile.

use std::sync::Arc;

use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use super::trace::Trace;
use super::verify::{Claims, Verified};
use crate::config::Route;
use crate::error::GatewayError;
use crate::keys::Key;
use crate::scopes::{ScopeSet, ORG_KEYS_WRITE};

/// The header State Backed's client sends to act for an end user. (A `HeaderName`, not a
/// `&str`: a lookup by text parses and hashes the name on every request.)
pub const ACT_HEADER: HeaderName = HeaderName::from_static("x-statebacked-act");
/// The header State Backed's client sends to name the organization.
pub const ORG_HEADER: HeaderName = HeaderName::from_static("x-statebacked-org-id");
const MAX_ACT_HEADER_BYTES: usize = 8 * 1024;

/// Proof that a request may be forwarded, with the identity to forward.
#[derive(Debug)]
pub struct Permit {
    pub identity: Option<Identity>,
}

impl Permit {
    /// Public routes carry no identity; spoofed identity headers are still dropped.
    pub fn public() -> Self {
        Permit { identity: None }
    }
}

/// The verified identity, ready to become headers.
#[derive(Debug)]
pub struct Identity {
    /// What the token grants, whatever the request: the key and the scopes.
    pub grant: Arc<Grant>,
    /// From the token's `act`, or from the impersonation header.
    pub sub: Option<HeaderValue>,
    /// base64url of the end-user claims JSON.
    pub claims: Option<HeaderValue>,
}

impl Identity {
    pub fn key(&self) -> &Arc<Key> {
        &self.grant.key
    }

    /// Effective scopes, space-separated, as forwarded.
    pub fn scopes(&self) -> &HeaderValue {
        &self.grant.scopes
    }

    /// The scopes this request may use.
    pub fn effective(&self) -> &ScopeSet {
        self.grant.effective()
    }

    /// `sub` as forwarded (percent-encoded), for audit lines.
    pub fn sub_text(&self) -> Option<&str> {
        self.sub.as_ref().and_then(|v| v.to_str().ok())
    }
}

/// What a verified token grants on any request: its key, its scopes and the identity headers
/// its own claims make. Worked out once per token; a worker's token cache
/// ([`super::token_cache`]) keeps it for the token's next requests, which still check the
/// clock and the config ([`super::verify::Verifier::check_claims`]) and, here, the route,
/// the organization and the impersonation header — everything that depends on the request.
#[derive(Debug)]
pub struct Grant {
    pub key: Arc<Key>,
    /// The claims, `act` taken out (it is in `sub` and `act_claims`).
    pub claims: Claims,
    /// The key's scopes narrowed by the token's `scope` claim, when it had one.
    narrowed: Option<ScopeSet>,
    /// `effective()` as a header value.
    scopes: HeaderValue,
    /// From the token's `act`.
    sub: Option<HeaderValue>,
    act_claims: Option<HeaderValue>,
}

impl Grant {
    pub fn new(verified: Verified) -> Self {
        let Verified { key, mut claims } = verified;
        let narrowed = claims.scope.as_ref().map(|s| key.scopes.intersect(s));
        let scopes = match &narrowed {
            None => key.scopes_header.clone(),
            Some(set) => HeaderValue::from_str(&set.joined()).expect("scope names are header-safe"),
        };
        let act = claims.act.take();
        Grant {
            sub: act.as_ref().and_then(sub_header),
            act_claims: act.as_ref().map(claims_header),
            key,
            claims,
            narrowed,
            scopes,
        }
    }

    /// The scopes this token may use.
    pub fn effective(&self) -> &ScopeSet {
        self.narrowed.as_ref().unwrap_or(&self.key.scopes)
    }
}

/// Checks organization, scopes and impersonation for a verified token on `route`.
pub fn authorize(
    route: &Route,
    org_param: Option<&str>,
    verified: Verified,
    headers: &HeaderMap,
) -> Result<Permit, GatewayError> {
    authorize_traced(
        route,
        org_param,
        Arc::new(Grant::new(verified)),
        headers,
        &mut (),
    )
}

/// [`authorize`] for a token's [`Grant`], reporting each check to `trace`.
pub fn authorize_traced(
    route: &Route,
    org_param: Option<&str>,
    grant: Arc<Grant>,
    headers: &HeaderMap,
    trace: &mut impl Trace,
) -> Result<Permit, GatewayError> {
    let key = &grant.key;
    // The organization is the key's, never the client's: any client-sent claim to another
    // organization is refused rather than ignored, so mistakes surface.
    if let Some(org) = org_param.filter(|org| *org != &*key.org) {
        trace.step("organization", || {
            format!("the path names {org}, the key belongs to {}", key.org)
        });
        return Err(GatewayError::WrongOrg);
    }
    for value in headers.get_all(&ORG_HEADER) {
        if value.as_bytes() != key.org.as_bytes() {
            trace.step("organization", || {
                format!("{ORG_HEADER} is not the key's organization {}", key.org)
            });
            return Err(GatewayError::WrongOrg);
        }
    }
    trace.step("organization", || format!("{} (the key's)", key.org));

    let effective = grant.effective();
    trace.step("effective", || match &grant.claims.scope {
        None => format!(
            "{} (the key's; the token has no scope claim)",
            effective.joined()
        ),
        Some(claim) => format!(
            "{} (the key's {} narrowed by the token's scope claim {})",
            effective.joined(),
            key.scopes.joined(),
            claim.joined()
        ),
    });
    let missing: Vec<&str> = route.scopes.missing_from(effective).collect();
    trace.step("missing", || {
        if missing.is_empty() {
            "none".to_owned()
        } else {
            missing.join(" ")
        }
    });
    if !missing.is_empty() {
        return Err(GatewayError::MissingScope {
            missing: missing.join(" "),
        });
    }

    let mut act_headers = headers.get_all(&ACT_HEADER).iter();
    let (sub, claims) = match act_headers.next() {
        None => (grant.sub.clone(), grant.act_claims.clone()),
        Some(value) => {
            // Only a key that could mint itself a key may speak for an end user: it could
            // sign such a token anyway.
            if !effective.contains(ORG_KEYS_WRITE) {
                trace.step("act", || {
                    format!("{ACT_HEADER} needs {ORG_KEYS_WRITE}: refused")
                });
                return Err(GatewayError::ImpersonationDenied);
            }
            trace.step("act", || format!("acting for an end user ({ACT_HEADER})"));
            if act_headers.next().is_some() || value.len() > MAX_ACT_HEADER_BYTES {
                return Err(GatewayError::BadActHeader);
            }
            match serde_json::from_slice::<Value>(value.as_bytes()) {
                Ok(Value::Object(act)) => (sub_header(&act), Some(claims_header(&act))),
                _ => return Err(GatewayError::BadActHeader),
            }
        }
    };
    Ok(Permit {
        identity: Some(Identity { grant, sub, claims }),
    })
}

/// `act.sub` as a header value. Strings are percent-encoded outside visible ASCII so no claim
/// can inject a line break or a second header; numbers are written as is.
fn sub_header(act: &Map<String, Value>) -> Option<HeaderValue> {
    let text = match act.get("sub")? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x21..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).ok()
}

fn claims_header(act: &Map<String, Value>) -> HeaderValue {
    let json = serde_json::to_vec(act).expect("JSON maps serialize");
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
    HeaderValue::from_str(&encoded).expect("base64url is header-safe")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_cannot_inject_headers() {
        let mut act = Map::new();
        act.insert("sub".into(), Value::String("u1\r\nx-evil: 1 é%".into()));
        let v = sub_header(&act).unwrap();
        assert_eq!(v.to_str().unwrap(), "u1%0D%0Ax-evil:%201%20%C3%A9%25");
    }
}
