//! JWT verification against the live key set (RFC 7515, RFC 7519, with RFC 8725's advice).
//!
//! The key is found by `kid`; the algorithm comes from the key record, never from the token —
//! a header `alg` that differs is refused, and `none` is not an algorithm any key can have.
//! Header parameters that would let a token name its own key or demand unknown processing
//! (`jwk`, `jku`, `x5u`, `x5c`, `crit`) are refused outright: we never use them, and a token
//! that carries them was not made by a State Backed key.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::trace::Trace;
use crate::config::AuthSettings;
use crate::error::{GatewayError, TokenFault};
use crate::keys::{Key, KeySet};
use crate::scopes::ScopeSet;

/// Validation rules prepared once per config.
#[derive(Debug, Clone)]
pub struct Verifier {
    max_token_bytes: usize,
    leeway: u64,
    require_exp: bool,
    audiences: HashSet<String>,
}

/// A token whose signature and time claims checked out.
#[derive(Debug, Clone)]
pub struct Verified {
    pub key: Arc<Key>,
    pub claims: Claims,
}

/// The claims the gateway reads, parsed once. Every field is checked for duplicates (a JSON
/// object naming `exp` twice is refused, not read either way).
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
    /// Not read; declared so that a repeated `iss` is refused like the other claims.
    #[serde(default)]
    #[allow(dead_code)]
    iss: Option<IgnoredAny>,
}

/// The JOSE header (RFC 7515 §4.1), borrowed from the decoded bytes. `alg` must name an
/// algorithm jsonwebtoken knows ("none" is not one); the string-valued parameters must be
/// strings. The parameters that let a token bring or point at its own key, or demand
/// unknown processing, are only noted as present: any of them refuses the token.
// `typ` … `nonce` are never read: declared so that a value of the wrong type is refused.
#[allow(dead_code)]
#[derive(Deserialize)]
struct Header<'a> {
    alg: Algorithm,
    #[serde(default, borrow)]
    kid: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    typ: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    cty: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    x5t: Option<Cow<'a, str>>,
    #[serde(default, borrow, rename = "x5t#S256")]
    x5t_s256: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    enc: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    zip: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    url: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    nonce: Option<Cow<'a, str>>,
    #[serde(default)]
    jwk: Option<IgnoredAny>,
    #[serde(default)]
    jku: Option<IgnoredAny>,
    #[serde(default)]
    x5u: Option<IgnoredAny>,
    #[serde(default)]
    x5c: Option<IgnoredAny>,
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

impl Header<'_> {
    fn names_its_own_key(&self) -> bool {
        self.jwk.is_some()
            || self.jku.is_some()
            || self.x5u.is_some()
            || self.x5c.is_some()
            || self.crit.is_some()
    }
}

/// A NumericDate claim (RFC 7519 §2) as the time checks read it: a non-negative number,
/// fractions rounded; `null` counts as absent.
enum Numeric {
    Absent,
    Bad,
    At(u64),
}

impl Numeric {
    fn of(v: &Option<Value>) -> Self {
        match v {
            None | Some(Value::Null) => Numeric::Absent,
            Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
                (Some(u), _) => Numeric::At(u),
                (None, Some(f)) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => {
                    Numeric::At(f.round() as u64)
                }
                _ => Numeric::Bad,
            },
            Some(_) => Numeric::Bad,
        }
    }
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
        Verifier {
            max_token_bytes: auth.max_token_bytes,
            leeway: auth.leeway_seconds,
            require_exp: auth.require_exp,
            audiences: auth.audiences.iter().cloned().collect(),
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
        // Exactly two dots (checked above): header.payload.signature.
        let (message, signature) = token.rsplit_once('.').expect("two dots");
        let (header_b64, payload_b64) = message.split_once('.').expect("two dots");
        let header_json = URL_SAFE_NO_PAD.decode(header_b64);
        let Some(header) = header_json
            .as_deref()
            .ok()
            .filter(|json| valid_json(json))
            .and_then(|json| serde_json::from_slice::<Header>(json).ok())
        else {
            return Err(refuse(trace, TokenFault::Malformed, || {
                "the header is not a JSON object with a known alg (\"none\" is never accepted)"
                    .to_owned()
            }));
        };
        if header.names_its_own_key() {
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
        let Ok(tag) = URL_SAFE_NO_PAD.decode(signature) else {
            return Err(refuse(trace, TokenFault::Malformed, || {
                "the signature is not base64url".to_owned()
            }));
        };
        if !key.mac.verify(message.as_bytes(), &tag) {
            return Err(refuse(trace, TokenFault::BadSignature, || {
                "the signature is not the key's".to_owned()
            }));
        }
        let Ok(payload) = URL_SAFE_NO_PAD.decode(payload_b64) else {
            return Err(refuse(trace, TokenFault::Malformed, || {
                "the payload is not base64url".to_owned()
            }));
        };
        // A JSON object; serde would also fill a struct from an array, by position.
        if payload.trim_ascii_start().first() != Some(&b'{') || !valid_json(&payload) {
            return Err(refuse(trace, TokenFault::BadClaim, || {
                "the payload is not a JSON object".to_owned()
            }));
        }
        let claims: Claims = match serde_json::from_slice(&payload) {
            Ok(c) => c,
            Err(e) => return Err(refuse(trace, TokenFault::BadClaim, || e.to_string())),
        };
        self.check_times_and_audience(&claims, now, trace)?;
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

    /// RFC 7519 §4.1.3–4.1.5 with the configured leeway: `aud` (required; a string or an
    /// array of strings, one of which must be ours), `exp` (required unless configured
    /// otherwise), `nbf`.
    fn check_times_and_audience(
        &self,
        claims: &Claims,
        now: u64,
        trace: &mut impl Trace,
    ) -> Result<(), GatewayError> {
        enum Audience<'a> {
            Absent,
            Bad,
            Listed(Vec<&'a str>),
        }
        let audience = match &claims.aud {
            None | Some(Value::Null) => Audience::Absent,
            Some(Value::String(s)) => Audience::Listed(vec![s.as_str()]),
            Some(Value::Array(list)) => list
                .iter()
                .map(Value::as_str)
                .collect::<Option<Vec<_>>>()
                .map_or(Audience::Bad, Audience::Listed),
            Some(_) => Audience::Bad,
        };
        let exp = Numeric::of(&claims.exp);
        let nbf = Numeric::of(&claims.nbf);
        if !matches!(audience, Audience::Listed(_)) {
            return Err(refuse(trace, TokenFault::MissingClaim, || {
                "no usable aud claim".to_owned()
            }));
        }
        if self.require_exp && !matches!(exp, Numeric::At(_)) {
            return Err(refuse(trace, TokenFault::MissingClaim, || {
                "no usable exp claim".to_owned()
            }));
        }
        if matches!(exp, Numeric::Bad) || matches!(nbf, Numeric::Bad) {
            return Err(refuse(trace, TokenFault::BadClaim, || {
                "exp or nbf is not a non-negative number".to_owned()
            }));
        }
        if let Numeric::At(exp) = exp {
            if exp < now.saturating_sub(self.leeway) {
                return Err(refuse(trace, TokenFault::Expired, || {
                    format!("exp {exp} is past (now {now}, leeway {} s)", self.leeway)
                }));
            }
        }
        if let Numeric::At(nbf) = nbf {
            if nbf > now.saturating_add(self.leeway) {
                return Err(refuse(trace, TokenFault::NotYetValid, || {
                    format!("nbf {nbf} is ahead (now {now}, leeway {} s)", self.leeway)
                }));
            }
        }
        if let Audience::Listed(list) = audience {
            if !list.iter().any(|a| self.audiences.contains(*a)) {
                return Err(refuse(trace, TokenFault::WrongAudience, || {
                    "aud names none of the configured audiences".to_owned()
                }));
            }
        }
        Ok(())
    }
}

/// Whether `json` is valid JSON throughout, members nobody reads included. The typed parses
/// skip unknown members without checking them: their bytes must still be UTF-8 (RFC 8259
/// §8.1), and their `\u` escapes characters (a lone surrogate is not one). Text with an
/// escape is parsed once more in full to refuse those; tokens without escapes, nearly all of
/// them, pay only for the UTF-8 check.
fn valid_json(json: &[u8]) -> bool {
    std::str::from_utf8(json).is_ok()
        && (!json.windows(2).any(|w| w == b"\\u") || serde_json::from_slice::<Value>(json).is_ok())
}

/// Records why a token was refused (only when traced) and returns the error.
fn refuse(trace: &mut impl Trace, fault: TokenFault, why: impl FnOnce() -> String) -> GatewayError {
    trace.step("verify", || {
        format!("refused ({}): {}", fault.reason(), why())
    });
    GatewayError::InvalidToken(fault)
}
