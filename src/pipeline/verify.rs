//! JWT verification against the live key set (RFC 7515, RFC 7519, with RFC 8725's advice).
//!
//! The key is found by `kid`; the algorithm comes from the key record, never from the token —
//! a header `alg` that differs is refused, and `none` is not an algorithm any key can have.
//! Header parameters that would let a token name its own key or demand unknown processing
//! (`jwk`, `jku`, `x5u`, `x5c`, `crit`) are refused outright: we never use them, and a token
//! that carries them was not made by a State Backed key.

use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::trace::Trace;
use crate::config::AuthSettings;
use crate::error::{GatewayError, TokenFault};
use crate::keys::{Key, KeySet};
use crate::scopes::ScopeSet;

/// Validation rules prepared once per config, one per HMAC algorithm.
#[derive(Debug, Clone)]
pub struct Verifier {
    max_token_bytes: usize,
    leeway: u64,
    hs256: Validation,
    hs384: Validation,
    hs512: Validation,
}

/// A token whose signature and time claims checked out.
#[derive(Debug, Clone)]
pub struct Verified {
    pub key: Arc<Key>,
    pub claims: Claims,
}

/// The claims the gateway reads. `exp`, `nbf`, `aud` are checked by jsonwebtoken.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Claims {
    /// End-user claims, State Backed style.
    #[serde(default)]
    pub act: Option<Map<String, Value>>,
    /// Narrows the key's scopes when present.
    #[serde(default, deserialize_with = "scope_claim")]
    pub scope: Option<ScopeSet>,
    #[serde(default)]
    pub iat: Option<Value>,
    #[serde(default)]
    pub exp: Option<Value>,
    #[serde(default)]
    pub nbf: Option<Value>,
    #[serde(default)]
    pub aud: Option<Value>,
    #[serde(default)]
    pub sub: Option<Value>,
}

fn scope_claim<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<ScopeSet>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        List(Vec<String>),
    }
    Ok(match Option::<Raw>::deserialize(d)? {
        None => None,
        Some(Raw::Text(s)) => Some(ScopeSet::from_names(s.split(' ').filter(|s| !s.is_empty()))),
        Some(Raw::List(list)) => Some(ScopeSet::from_names(list)),
    })
}

impl Verifier {
    pub fn new(auth: &AuthSettings) -> Self {
        let make = |alg| {
            let mut v = Validation::new(alg);
            v.leeway = auth.leeway_seconds;
            v.validate_exp = true;
            v.validate_nbf = true;
            v.set_audience(&auth.audiences);
            let mut required = vec!["aud"];
            if auth.require_exp {
                required.push("exp");
            }
            v.set_required_spec_claims(&required);
            v
        };
        Verifier {
            max_token_bytes: auth.max_token_bytes,
            leeway: auth.leeway_seconds,
            hs256: make(Algorithm::HS256),
            hs384: make(Algorithm::HS384),
            hs512: make(Algorithm::HS512),
        }
    }

    fn validation(&self, alg: Algorithm) -> Option<&Validation> {
        match alg {
            Algorithm::HS256 => Some(&self.hs256),
            Algorithm::HS384 => Some(&self.hs384),
            Algorithm::HS512 => Some(&self.hs512),
            _ => None,
        }
    }

    /// Verifies `token` at time `now` (seconds since the epoch).
    pub fn verify(&self, keys: &KeySet, token: &str, now: u64) -> Result<Verified, GatewayError> {
        self.verify_traced(keys, token, now, &mut ())
    }

    /// [`Verifier::verify`], reporting each check to `trace`.
    pub fn verify_traced(
        &self,
        keys: &KeySet,
        token: &str,
        now: u64,
        trace: &mut impl Trace,
    ) -> Result<Verified, GatewayError> {
        if token.len() > self.max_token_bytes {
            return Err(refuse(trace, TokenFault::TooLarge, || {
                format!(
                    "{} bytes, more than the {} allowed",
                    token.len(),
                    self.max_token_bytes
                )
            }));
        }
        // Compact serialization only: three base64url segments, no padding, no whitespace.
        let well_formed = token.bytes().filter(|&b| b == b'.').count() == 2
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !well_formed {
            return Err(refuse(trace, TokenFault::Malformed, || {
                "not three base64url segments separated by dots".to_owned()
            }));
        }
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return Err(refuse(trace, TokenFault::Malformed, || {
                "the header is not a JSON object with a known alg (\"none\" is never accepted)"
                    .to_owned()
            }));
        };
        if header.jwk.is_some()
            || header.jku.is_some()
            || header.x5u.is_some()
            || header.x5c.is_some()
            || header.crit.is_some()
        {
            return Err(refuse(trace, TokenFault::UnsupportedHeader, || {
                "the header carries jwk, jku, x5u, x5c or crit".to_owned()
            }));
        }
        let Some(kid) = header.kid.as_deref() else {
            return Err(refuse(trace, TokenFault::UnknownKey, || {
                "the header has no kid".to_owned()
            }));
        };
        let Some(key) = keys.get(kid) else {
            return Err(refuse(trace, TokenFault::UnknownKey, || {
                "no loaded key has this kid".to_owned()
            }));
        };
        trace.step("key", || {
            format!(
                "{} of {} ({:?}; scopes: {})",
                key.id,
                key.org,
                key.algorithm,
                key.scopes.joined()
            )
        });
        if header.alg != key.algorithm {
            return Err(refuse(trace, TokenFault::AlgorithmMismatch, || {
                format!(
                    "header alg {:?} is not the key's {:?}",
                    header.alg, key.algorithm
                )
            }));
        }
        let Some(validation) = self.validation(key.algorithm) else {
            return Err(refuse(trace, TokenFault::AlgorithmMismatch, || {
                "not an HMAC algorithm".to_owned()
            }));
        };
        let claims = match jsonwebtoken::decode::<Claims>(token, &key.decoding, validation) {
            Ok(data) => data.claims,
            Err(e) => {
                let fault = classify(e.kind());
                return Err(refuse(trace, fault, || e.to_string()));
            }
        };
        if let Some(iat) = &claims.iat {
            let Some(iat) = iat.as_f64() else {
                return Err(refuse(trace, TokenFault::BadClaim, || {
                    "iat is not a number".to_owned()
                }));
            };
            if iat > (now + self.leeway) as f64 {
                return Err(refuse(trace, TokenFault::IssuedInFuture, || {
                    "iat is in the future beyond the leeway".to_owned()
                }));
            }
        }
        trace.step("verify", || {
            let show = |v: &Option<Value>| v.as_ref().map_or("-".to_owned(), Value::to_string);
            format!(
                "signature ok; exp {} nbf {} iat {} (now {now}, leeway {} s); aud {} ok",
                show(&claims.exp),
                show(&claims.nbf),
                show(&claims.iat),
                self.leeway,
                show(&claims.aud)
            )
        });
        Ok(Verified {
            key: key.clone(),
            claims,
        })
    }
}

/// Records why a token was refused (only when traced) and returns the error.
fn refuse(trace: &mut impl Trace, fault: TokenFault, why: impl FnOnce() -> String) -> GatewayError {
    trace.step("verify", || {
        format!("refused ({}): {}", fault.reason(), why())
    });
    GatewayError::InvalidToken(fault)
}

fn classify(kind: &ErrorKind) -> TokenFault {
    match kind {
        ErrorKind::InvalidSignature => TokenFault::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            TokenFault::AlgorithmMismatch
        }
        ErrorKind::MissingRequiredClaim(_) => TokenFault::MissingClaim,
        ErrorKind::InvalidClaimFormat(_) => TokenFault::BadClaim,
        ErrorKind::ExpiredSignature => TokenFault::Expired,
        ErrorKind::ImmatureSignature => TokenFault::NotYetValid,
        ErrorKind::InvalidAudience => TokenFault::WrongAudience,
        ErrorKind::Json(_) => TokenFault::BadClaim,
        _ => TokenFault::Malformed,
    }
}
