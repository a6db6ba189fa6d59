//! JWT verification against the live key set (RFC 7515, RFC 7519, with RFC 8725's advice).
//!
//! The key is found by `kid`; the algorithm comes from the key record, never from the token —
//! a header `alg` that differs is refused, and `none` is not an algorithm any key can have.
//! Header parameters that would let a token name its own key or demand unknown processing
//! (`jwk`, `jku`, `x5u`, `x5c`, `crit`) are refused outright: we never use them, and a token
//! that carries them was not made by a State Backed key.

use std::borrow::Cow;
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
    /// Sorted, without duplicates: a config names one or a few.
    audiences: Box<[String]>,
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
    /// Not read (the forwarded subject is `act.sub`): checked as a `serde_json::Value` would
    /// be (number range, nesting depth) without building one; declared so that a repeated
    /// `sub` is refused like the other claims.
    #[serde(default)]
    #[allow(dead_code)]
    sub: Option<Checked>,
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
#[cfg_attr(test, derive(Debug, PartialEq))]
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

/// Any JSON value, read exactly as deserializing a `serde_json::Value` reads it (the same
/// errors at the same places: numbers out of range, nesting deeper than serde_json's limit)
/// but kept nowhere.
#[derive(Debug, Clone, Copy, Default)]
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CheckedVisitor)
    }
}

/// [`Checked`]'s visitor: every value accepted, arrays and objects read through.
struct CheckedVisitor;

impl<'de> serde::de::Visitor<'de> for CheckedVisitor {
    type Value = Checked;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any valid JSON value")
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Checked, D::Error> {
        Checked::deserialize(d)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_entry::<CheckedKey, Checked>()?.is_some() {}
        Ok(Checked)
    }
}

/// An object key, read as `Value` reads one (a string) and dropped.
struct CheckedKey;

impl<'de> Deserialize<'de> for CheckedKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct K;
        impl serde::de::Visitor<'_> for K {
            type Value = CheckedKey;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string key")
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<CheckedKey, E> {
                Ok(CheckedKey)
            }
        }
        d.deserialize_str(K)
    }
}

/// The `scope` claim: `null`, a space-separated string, or an array of strings (kept as
/// given, empty names included). Anything else is refused with the error an untagged
/// `Text(String) | List(Vec<String>)` enum gives, once the whole value has been read (so the
/// error's position is the same too); names are borrowed from the payload when unescaped.
fn scope_claim<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<ScopeSet>, D::Error> {
    use serde::de::{Error, SeqAccess, Visitor};
    use std::fmt;

    const MISMATCH: &str = "data did not match any variant of untagged enum Raw";

    /// What the claim turned out to be; `Mismatch` is refused by the caller.
    enum Raw {
        Set(ScopeSet),
        Mismatch,
    }

    /// One list element: a name, or `None` for any other JSON value (read through).
    struct Element<'de>(Option<Cow<'de, str>>);

    impl<'de> Deserialize<'de> for Element<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Element<'de>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("any JSON value")
                }
                fn visit_borrowed_str<E: Error>(self, v: &'de str) -> Result<Self::Value, E> {
                    Ok(Element(Some(Cow::Borrowed(v))))
                }
                fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
                    Ok(Element(Some(Cow::Owned(v.to_owned()))))
                }
                fn visit_string<E: Error>(self, v: String) -> Result<Self::Value, E> {
                    Ok(Element(Some(Cow::Owned(v))))
                }
                fn visit_bool<E: Error>(self, _: bool) -> Result<Self::Value, E> {
                    Ok(Element(None))
                }
                fn visit_i64<E: Error>(self, _: i64) -> Result<Self::Value, E> {
                    Ok(Element(None))
                }
                fn visit_u64<E: Error>(self, _: u64) -> Result<Self::Value, E> {
                    Ok(Element(None))
                }
                fn visit_f64<E: Error>(self, _: f64) -> Result<Self::Value, E> {
                    Ok(Element(None))
                }
                fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
                    Ok(Element(None))
                }
                fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
                    Ok(Element(None))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                    CheckedVisitor.visit_seq(seq).map(|_| Element(None))
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    map: A,
                ) -> Result<Self::Value, A::Error> {
                    CheckedVisitor.visit_map(map).map(|_| Element(None))
                }
            }
            d.deserialize_any(V)
        }
    }

    /// A present (non-null) claim value.
    struct RawVisitor;

    impl<'de> Visitor<'de> for RawVisitor {
        type Value = Raw;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a space-separated string or an array of strings")
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<Raw, E> {
            Ok(Raw::Set(ScopeSet::from_names(
                v.split(' ').filter(|s| !s.is_empty()),
            )))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
            let mut names: Vec<Cow<'de, str>> = Vec::new();
            let mut mismatch = false;
            while let Some(Element(name)) = seq.next_element::<Element<'de>>()? {
                match name {
                    Some(name) if !mismatch => names.push(name),
                    _ => mismatch = true,
                }
            }
            Ok(if mismatch {
                Raw::Mismatch
            } else {
                Raw::Set(ScopeSet::from_names(names))
            })
        }
        fn visit_bool<E: Error>(self, _: bool) -> Result<Raw, E> {
            Ok(Raw::Mismatch)
        }
        fn visit_i64<E: Error>(self, _: i64) -> Result<Raw, E> {
            Ok(Raw::Mismatch)
        }
        fn visit_u64<E: Error>(self, _: u64) -> Result<Raw, E> {
            Ok(Raw::Mismatch)
        }
        fn visit_f64<E: Error>(self, _: f64) -> Result<Raw, E> {
            Ok(Raw::Mismatch)
        }
        fn visit_unit<E: Error>(self) -> Result<Raw, E> {
            Ok(Raw::Mismatch)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Raw, A::Error> {
            CheckedVisitor.visit_map(map).map(|_| Raw::Mismatch)
        }
    }

    /// `null` or absent → `None`; otherwise the value, read whole before any refusal.
    struct OptionVisitor;

    impl<'de> Visitor<'de> for OptionVisitor {
        type Value = Option<ScopeSet>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("option")
        }
        fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            match d.deserialize_any(RawVisitor)? {
                Raw::Set(set) => Ok(Some(set)),
                Raw::Mismatch => Err(D::Error::custom(MISMATCH)),
            }
        }
    }

    d.deserialize_option(OptionVisitor)
}

impl Verifier {
    pub fn new(auth: &AuthSettings) -> Self {
        Verifier {
            max_token_bytes: auth.max_token_bytes,
            leeway: auth.leeway_seconds,
            require_exp: auth.require_exp,
            audiences: {
                let mut list = auth.audiences.clone();
                list.sort_unstable();
                list.dedup();
                list.into_boxed_slice()
            },
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
        let (mut header_stack, mut header_heap) = ([0u8; 192], Vec::new());
        let header_json = decode_b64(header_b64, &mut header_stack, &mut header_heap);
        let Some(header) = header_json.ok().and_then(parse_header) else {
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
        // HS512's 64-byte tag and anything shorter decode on the stack.
        let (mut tag_stack, mut tag_heap) = ([0u8; 66], Vec::new());
        let Ok(tag) = decode_b64(signature, &mut tag_stack, &mut tag_heap) else {
            return Err(refuse(trace, TokenFault::Malformed, || {
                "the signature is not base64url".to_owned()
            }));
        };
        if !key.mac.verify(message.as_bytes(), tag) {
            return Err(refuse(trace, TokenFault::BadSignature, || {
                "the signature is not the key's".to_owned()
            }));
        }
        let (mut payload_stack, mut payload_heap) = ([0u8; 1024], Vec::new());
        let Ok(payload) = decode_b64(payload_b64, &mut payload_stack, &mut payload_heap) else {
            return Err(refuse(trace, TokenFault::Malformed, || {
                "the payload is not base64url".to_owned()
            }));
        };
        let claims = match read_claims(payload) {
            Ok(c) => c,
            Err(PayloadFault::NotObject) => {
                return Err(refuse(trace, TokenFault::BadClaim, || {
                    "the payload is not a JSON object".to_owned()
                }))
            }
            Err(PayloadFault::Claims(e)) => {
                return Err(refuse(trace, TokenFault::BadClaim, || e.to_string()))
            }
        };
        self.check_claims(&claims, now, trace)?;
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

    /// The checks of a signed token's claims that depend on the clock and the config: `aud`,
    /// `exp`, `nbf` ([`Self::check_times_and_audience`]) and `iat`. A worker's token cache
    /// runs them again on every request a remembered token makes.
    pub fn check_claims(
        &self,
        claims: &Claims,
        now: u64,
        trace: &mut impl Trace,
    ) -> Result<(), GatewayError> {
        self.check_times_and_audience(claims, now, trace)?;
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
        Ok(())
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
            One(&'a str),
            /// Strings only (checked).
            Listed(&'a [Value]),
        }
        let audience = match &claims.aud {
            None | Some(Value::Null) => Audience::Absent,
            Some(Value::String(s)) => Audience::One(s),
            Some(Value::Array(list)) if list.iter().all(Value::is_string) => Audience::Listed(list),
            Some(_) => Audience::Bad,
        };
        let exp = Numeric::of(&claims.exp);
        let nbf = Numeric::of(&claims.nbf);
        if matches!(audience, Audience::Absent | Audience::Bad) {
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
        let ours = |aud: &str| {
            self.audiences
                .binary_search_by(|a| a.as_str().cmp(aud))
                .is_ok()
        };
        let listed = match audience {
            Audience::One(aud) => Some(ours(aud)),
            Audience::Listed(list) => Some(list.iter().filter_map(Value::as_str).any(ours)),
            Audience::Absent | Audience::Bad => None,
        };
        if let Some(listed) = listed {
            if !listed {
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

/// `b64` decoded (base64url, no padding) into `stack` when it fits, else into `heap`: the
/// same bytes and the same errors as `URL_SAFE_NO_PAD.decode`, without allocating for the
/// sizes tokens have.
fn decode_b64<'b>(
    b64: &str,
    stack: &'b mut [u8],
    heap: &'b mut Vec<u8>,
) -> Result<&'b [u8], base64::DecodeError> {
    // The engine's own estimate is never more than this.
    if b64.len().div_ceil(4) * 3 <= stack.len() {
        match URL_SAFE_NO_PAD.decode_slice(b64, stack) {
            Ok(n) => return Ok(&stack[..n]),
            Err(base64::DecodeSliceError::DecodeError(e)) => return Err(e),
            Err(base64::DecodeSliceError::OutputSliceTooSmall) => {}
        }
    }
    *heap = URL_SAFE_NO_PAD.decode(b64)?;
    Ok(heap)
}

/// The JOSE header of decoded header bytes, or `None` when they are not valid JSON or not a
/// header serde accepts: [`fast_header`] for the flat headers tokens carry, serde_json (after
/// [`valid_json`]) for anything else.
fn parse_header(json: &[u8]) -> Option<Header<'_>> {
    let text = std::str::from_utf8(json).ok()?;
    match fast_header(text) {
        Some(header) => Some(header),
        None => valid_json(json)
            .then(|| serde_json::from_slice::<Header>(json).ok())
            .flatten(),
    }
}

/// The header of the common flat shape, without serde: one object whose members are all
/// unescaped strings, with an `alg` of `HS256`, `HS384` or `HS512`, no member named twice
/// (unknown ones aside, which serde ignores) and none of `jwk`, `jku`, `x5u`, `x5c`, `crit`.
/// `None` for anything else, which [`parse_header`] leaves to serde_json. With no backslash
/// anywhere, [`valid_json`] would only have checked that the text is UTF-8 (`text` is).
fn fast_header(text: &str) -> Option<Header<'_>> {
    let mut p = Scan {
        b: text.as_bytes(),
        i: 0,
    };
    let mut header = Header {
        alg: Algorithm::HS256,
        kid: None,
        typ: None,
        cty: None,
        x5t: None,
        x5t_s256: None,
        enc: None,
        zip: None,
        url: None,
        nonce: None,
        jwk: None,
        jku: None,
        x5u: None,
        x5c: None,
        crit: None,
    };
    let mut alg_seen = false;
    p.ws();
    p.eat(b'{')?;
    p.ws();
    loop {
        let key = p.member_name()?;
        p.eat(b'"')?;
        let len = p.plain_str()?.len();
        // Between two quotes, so on character boundaries.
        let value = &text[p.i - 1 - len..p.i - 1];
        let slot = match key {
            b"alg" => {
                if std::mem::replace(&mut alg_seen, true) {
                    return None;
                }
                header.alg = match value {
                    "HS256" => Algorithm::HS256,
                    "HS384" => Algorithm::HS384,
                    "HS512" => Algorithm::HS512,
                    _ => return None,
                };
                None
            }
            b"kid" => Some(&mut header.kid),
            b"typ" => Some(&mut header.typ),
            b"cty" => Some(&mut header.cty),
            b"x5t" => Some(&mut header.x5t),
            b"x5t#S256" => Some(&mut header.x5t_s256),
            b"enc" => Some(&mut header.enc),
            b"zip" => Some(&mut header.zip),
            b"url" => Some(&mut header.url),
            b"nonce" => Some(&mut header.nonce),
            b"jwk" | b"jku" | b"x5u" | b"x5c" | b"crit" => return None,
            _ => None,
        };
        if let Some(slot) = slot {
            if slot.replace(Cow::Borrowed(value)).is_some() {
                return None; // serde refuses the duplicate
            }
        }
        if p.object_ends()? {
            break;
        }
    }
    p.ws();
    (alg_seen && p.i == p.b.len()).then_some(header)
}

/// Why a payload gives no claims.
#[derive(Debug)]
enum PayloadFault {
    /// Not a JSON object, or not valid JSON throughout ([`valid_json`]).
    NotObject,
    /// A JSON object, but not one of claims serde accepts.
    Claims(serde_json::Error),
}

/// The claims of a decoded payload: a JSON object (serde would also fill a struct from an
/// array, by position) that is [`valid_json`], parsed by serde_json. Where [`fast_claims`]
/// takes the payload it holds no `\u` byte pair, so `valid_json` would have checked only
/// that it is UTF-8, and the claims are serde_json's.
fn read_claims(payload: &[u8]) -> Result<Claims, PayloadFault> {
    let object = payload.trim_ascii_start().first() == Some(&b'{');
    if object && std::str::from_utf8(payload).is_ok() {
        if let Some(claims) = fast_claims(payload) {
            return Ok(claims);
        }
    }
    if !object || !valid_json(payload) {
        return Err(PayloadFault::NotObject);
    }
    serde_json::from_slice(payload).map_err(PayloadFault::Claims)
}

/// The claims of a payload that is valid UTF-8: what `serde_json::from_slice::<Claims>`
/// gives, through [`fast_claims`] when it can.
#[cfg(test)]
fn parse_claims(payload: &[u8]) -> Result<Claims, serde_json::Error> {
    match fast_claims(payload) {
        Some(claims) => Ok(claims),
        None => serde_json::from_slice(payload),
    }
}

/// Nesting deeper than this inside a claim goes to serde_json whole, so that its recursion
/// limit (128, counted from the claims object) applies as it always did.
const FAST_MAX_DEPTH: usize = 64;

/// The claims of the payloads tokens actually carry, without serde's machinery: one flat
/// object whose members are unescaped strings, non-negative integers, `true`, `false`,
/// `null`, or arrays and objects (those parsed by serde_json on their own, into what the
/// claim's type takes). `None` for anything else — escapes (and any `\u` byte pair inside
/// arrays and objects), negative or fractional numbers, a repeated claim, any syntax
/// error — and [`parse_claims`] parses the payload with
/// serde_json instead, so every such case behaves (and fails) exactly as before. Where this
/// returns `Some`, the claims equal serde_json's (property-tested against it).
fn fast_claims(payload: &[u8]) -> Option<Claims> {
    let mut p = Scan { b: payload, i: 0 };
    let mut claims = Claims::default();
    p.ws();
    p.eat(b'{')?;
    p.ws();
    if p.peek() == Some(b'}') {
        p.i += 1;
    } else {
        let mut seen = 0u8;
        loop {
            let key = p.member_name()?;
            let value = p.value()?;
            let bit = match key {
                b"act" => 1,
                b"scope" => 2,
                b"iat" => 4,
                b"exp" => 8,
                b"nbf" => 16,
                b"aud" => 32,
                b"sub" => 64,
                b"iss" => 128,
                _ => 0,
            };
            if seen & bit != 0 {
                return None; // serde refuses the duplicate: let it say so
            }
            seen |= bit;
            match key {
                b"act" => {
                    claims.act = match value {
                        Fast::Null => None,
                        Fast::Nested(json) => Some(serde_json::from_slice(json).ok()?),
                        _ => return None,
                    }
                }
                b"scope" => {
                    claims.scope = match value {
                        Fast::Null => None,
                        Fast::Str(text) => Some(ScopeSet::from_names(
                            std::str::from_utf8(text)
                                .ok()?
                                .split(' ')
                                .filter(|s| !s.is_empty()),
                        )),
                        Fast::Nested(json) => {
                            let mut de = serde_json::Deserializer::from_slice(json);
                            let scope = scope_claim(&mut de).ok()?;
                            de.end().ok()?;
                            scope
                        }
                        _ => return None,
                    }
                }
                b"iat" => claims.iat = value.to_value()?,
                b"exp" => claims.exp = value.to_value()?,
                b"nbf" => claims.nbf = value.to_value()?,
                b"aud" => claims.aud = value.to_value()?,
                b"sub" => {
                    if let Fast::Nested(json) = value {
                        serde_json::from_slice::<Checked>(json).ok()?;
                    }
                }
                _ => {
                    if let Fast::Nested(json) = value {
                        serde_json::from_slice::<IgnoredAny>(json).ok()?;
                    }
                }
            }
            if p.object_ends()? {
                break;
            }
        }
    }
    p.ws();
    (p.i == payload.len()).then_some(claims)
}

/// A byte that ends a plain string: a quote, a backslash or a control character.
fn special(c: u8) -> bool {
    c == b'"' || c == b'\\' || c < 0x20
}

/// The bytes of `word` (little-endian) that are [`special`], flagged by their high bit; the
/// lowest flag is exact (a borrow only runs upwards), which is all [`Scan::plain_str`] reads.
fn special_bytes(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_in = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    zero_in(word ^ (ONES * u64::from(b'"')))
        | zero_in(word ^ (ONES * u64::from(b'\\')))
        | (word.wrapping_sub(ONES * 0x20) & !word & HIGHS)
}

/// A member value as [`fast_claims`] reads it.
enum Fast<'a> {
    Null,
    Bool(bool),
    UInt(u64),
    /// The bytes between the quotes: no escapes, no control characters.
    Str(&'a [u8]),
    /// A whole array or object, brackets included.
    Nested(&'a [u8]),
}

impl Fast<'_> {
    /// The value of an `Option<Value>` claim (`null` is absent, as serde's `Option` has it).
    fn to_value(&self) -> Option<Option<Value>> {
        Some(match *self {
            Fast::Null => None,
            Fast::Bool(b) => Some(Value::Bool(b)),
            Fast::UInt(n) => Some(Value::Number(n.into())),
            Fast::Str(s) => Some(Value::String(std::str::from_utf8(s).ok()?.to_owned())),
            Fast::Nested(json) => Some(serde_json::from_slice(json).ok()?),
        })
    }
}

/// A cursor over the payload for [`fast_claims`].
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    /// An object member's name (a plain string) and the `:` after it, with the whitespace
    /// around; `None` if it is anything else.
    fn member_name(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let name = self.plain_str()?;
        self.ws();
        self.eat(b':')?;
        self.ws();
        Some(name)
    }

    /// After an object member: `Some(false)` at a `,` (and the whitespace after it),
    /// `Some(true)` at the closing `}`, `None` at anything else.
    fn object_ends(&mut self) -> Option<bool> {
        self.ws();
        match self.next()? {
            b',' => {
                self.ws();
                Some(false)
            }
            b'}' => Some(true),
            _ => None,
        }
    }

    /// JSON whitespace (RFC 8259 §2).
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// The rest of a string whose opening quote was read; `None` at an escape or a control
    /// character.
    fn plain_str(&mut self) -> Option<&'a [u8]> {
        let start = self.i;
        let mut at = start;
        // Eight bytes at a time: the first quote, backslash or control character.
        let len = loop {
            let Some(word) = self.b.get(at..at + 8) else {
                break at - start + self.b[at..].iter().position(|&c| special(c))?;
            };
            let word = u64::from_le_bytes(word.try_into().expect("eight bytes"));
            let found = special_bytes(word);
            if found != 0 {
                break at - start + (found.trailing_zeros() / 8) as usize;
            }
            at += 8;
        };
        if self.b[start + len] != b'"' {
            return None;
        }
        self.i = start + len + 1;
        Some(&self.b[start..start + len])
    }

    fn value(&mut self) -> Option<Fast<'a>> {
        match self.peek()? {
            b'"' => {
                self.i += 1;
                self.plain_str().map(Fast::Str)
            }
            b'0'..=b'9' => self.uint().map(Fast::UInt),
            b'n' => self.word(b"null", Fast::Null),
            b't' => self.word(b"true", Fast::Bool(true)),
            b'f' => self.word(b"false", Fast::Bool(false)),
            b'[' | b'{' => self.nested().map(Fast::Nested),
            _ => None,
        }
    }

    fn word(&mut self, word: &[u8], value: Fast<'a>) -> Option<Fast<'a>> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| {
            self.i = end;
            value
        })
    }

    /// A non-negative integer that fits a u64, as JSON writes one (no leading zero); `None`
    /// for anything serde_json would read as a float or refuse.
    fn uint(&mut self) -> Option<u64> {
        let start = self.i;
        let rest = &self.b[start..];
        let len = rest
            .iter()
            .position(|c| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let digits = &rest[..len];
        let n = if len <= 19 {
            // Cannot overflow.
            digits
                .iter()
                .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'))
        } else {
            digits.iter().try_fold(0u64, |n, &d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })?
        };
        self.i = start + len;
        let leading_zero = digits[0] == b'0' && len > 1;
        let fraction = matches!(self.peek(), Some(b'.' | b'e' | b'E'));
        (!leading_zero && !fraction).then_some(n)
    }

    /// An array or object, up to its matching bracket (strings skipped, escapes included);
    /// `None` when it does not close, nests deeper than [`FAST_MAX_DEPTH`] or holds the byte
    /// pair `\u` (so that a payload [`fast_claims`] takes has none, and [`valid_json`] would
    /// not have parsed it in full). Whether it is valid JSON is for serde_json to say.
    fn nested(&mut self) -> Option<&'a [u8]> {
        let start = self.i;
        let mut depth = 0usize;
        while let Some(c) = self.next() {
            match c {
                b'[' | b'{' => {
                    depth += 1;
                    if depth > FAST_MAX_DEPTH {
                        return None;
                    }
                }
                b']' | b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(&self.b[start..self.i]);
                    }
                }
                b'"' => loop {
                    match self.next()? {
                        b'"' => break,
                        // A `\u` byte pair, an escape's or an escaped backslash's: left to
                        // `valid_json`'s full parse.
                        b'\\' => {
                            let escaped = self.next()?;
                            if escaped == b'u' || (escaped == b'\\' && self.peek() == Some(b'u')) {
                                return None;
                            }
                        }
                        _ => {}
                    }
                },
                _ => {}
            }
        }
        None
    }
}

/// Records why a token was refused (only when traced) and returns the error.
fn refuse(trace: &mut impl Trace, fault: TokenFault, why: impl FnOnce() -> String) -> GatewayError {
    trace.step("verify", || {
        format!("refused ({}): {}", fault.reason(), why())
    });
    GatewayError::InvalidToken(fault)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The claims as they were parsed before `sub` was checked without a `Value` and `scope`
    /// without an untagged enum: the reference the current parse must agree with.
    #[derive(Debug, Deserialize)]
    struct Reference {
        #[serde(default)]
        act: Option<Map<String, Value>>,
        #[serde(default, deserialize_with = "reference_scope")]
        scope: Option<ScopeSet>,
        #[serde(default)]
        iat: Option<Value>,
        #[serde(default)]
        exp: Option<Value>,
        #[serde(default)]
        nbf: Option<Value>,
        #[serde(default)]
        aud: Option<Value>,
        #[serde(default)]
        #[allow(dead_code)]
        sub: Option<Value>,
        #[serde(default)]
        #[allow(dead_code)]
        iss: Option<IgnoredAny>,
    }

    fn reference_scope<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<ScopeSet>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            List(Vec<String>),
        }
        Ok(match Option::<Raw>::deserialize(d)? {
            None => None,
            Some(Raw::Text(s)) => {
                Some(ScopeSet::from_names(s.split(' ').filter(|s| !s.is_empty())))
            }
            Some(Raw::List(list)) => Some(ScopeSet::from_names(list)),
        })
    }

    /// The current parse and the reference agree: the same claims, or the same error text
    /// (which `explain` shows).
    fn agree(payload: &str) {
        read_agrees(payload.as_bytes());
        let new = parse_claims(payload.as_bytes());
        let old = serde_json::from_str::<Reference>(payload);
        match (new, old) {
            (Ok(new), Ok(old)) => {
                assert_eq!(new.act, old.act, "act: {payload}");
                assert_eq!(new.scope, old.scope, "scope: {payload}");
                assert_eq!(new.iat, old.iat, "iat: {payload}");
                assert_eq!(new.exp, old.exp, "exp: {payload}");
                assert_eq!(new.nbf, old.nbf, "nbf: {payload}");
                assert_eq!(new.aud, old.aud, "aud: {payload}");
            }
            (Err(new), Err(old)) => {
                assert_eq!(new.to_string(), old.to_string(), "error: {payload}")
            }
            (new, old) => panic!("{payload}: now {new:?}, was {old:?}"),
        }
    }

    #[test]
    fn typical_payloads_take_the_fast_path() {
        for payload in [
            r#"{"sub":"bench-client","iss":"bench","aud":"gateway","iat":1795852740,"scope":"state.read state.write","exp":1795939140}"#,
            r#"{"act":{"sub":"user-1"},"aud":"https://api.statebacked.dev/","exp":1795939140,"iss":"https://bench/","iat":1795852740}"#,
            r#" {"aud":["a","b"],"scope":["state.read"],"nbf":0,"x":{"y":[1,{"z":"}"}]},"sub":null} "#,
            "{}",
        ] {
            let fast = fast_claims(payload.as_bytes());
            assert!(fast.is_some(), "{payload}");
            agree(payload);
        }
        let claims = fast_claims(
            br#"{"scope":"b a b","aud":"gateway","exp":18446744073709551615,"act":{"sub":"u"}}"#,
        )
        .unwrap();
        let scope = claims.scope.unwrap();
        assert_eq!(scope.joined(), "a b");
        assert_eq!(scope, ScopeSet::from_names(["a", "b"]));
        assert_eq!(claims.aud, Some(Value::String("gateway".into())));
        assert_eq!(claims.exp, Some(Value::Number(u64::MAX.into())));
        assert_eq!(claims.act.unwrap()["sub"], "u");
        // What it leaves to serde_json.
        for payload in [
            r#"{"sub":"\u0061"}"#,
            r#"{"exp":1.5}"#,
            r#"{"exp":-1}"#,
            r#"{"exp":1e3}"#,
            r#"{"exp":01}"#,
            r#"{"exp":18446744073709551616}"#,
            r#"{"exp":1,"exp":1}"#,
            r#"{"exp":1,}"#,
            r#"{"exp":1}x"#,
            r#"{"act":[]}"#,
            r#"{"scope":1}"#,
            r#"{"x":[1,}"#,
            r#"{"x":[1,]}"#,
            "{\"x\":\"\t\"}",
            "\u{c}{}",
        ] {
            assert!(fast_claims(payload.as_bytes()).is_none(), "{payload}");
            agree(payload);
        }
        let deep = format!(r#"{{"x":{}}}"#, deep(FAST_MAX_DEPTH + 1, ""));
        assert!(fast_claims(deep.as_bytes()).is_none());
        agree(&deep);
    }

    /// The header as it was read before [`fast_header`]: the reference it must agree with.
    fn reference_header(json: &[u8]) -> Option<Header<'_>> {
        valid_json(json)
            .then(|| serde_json::from_slice::<Header>(json).ok())
            .flatten()
    }

    /// [`parse_header`] gives what the reference gives; where [`fast_header`] answers, it
    /// answers the same. Returns whether the fast path took it.
    fn header_agrees(json: &[u8]) -> bool {
        let reference = reference_header(json);
        assert_eq!(
            parse_header(json),
            reference,
            "{}",
            String::from_utf8_lossy(json)
        );
        let fast = std::str::from_utf8(json).ok().and_then(fast_header);
        if let Some(fast) = &fast {
            assert_eq!(
                Some(fast),
                reference.as_ref(),
                "{}",
                String::from_utf8_lossy(json)
            );
        }
        fast.is_some()
    }

    #[test]
    fn headers_parse_as_before() {
        let taken = [
            r#"{"alg":"HS256","typ":"JWT","kid":"sbk_ac854c270c0f0c8c5087503f"}"#,
            r#"{"typ":"JWT","alg":"HS384"}"#,
            r#" { "alg" : "HS512" ,	"kid":"" }
 "#,
            r#"{"alg":"HS256","kid":"k","cty":"JWT","x5t":"a","x5t#S256":"b","enc":"c","zip":"d","url":"e","nonce":"f"}"#,
            r#"{"alg":"HS256","other":"x","other":"y"}"#,
            r#"{"alg":"HS256","kid":"é ü"}"#,
            r#"{"alg":"HS256","kid":"}"}"#,
        ];
        for h in taken {
            assert!(header_agrees(h.as_bytes()), "fast path: {h}");
        }
        let left = [
            r#"{"alg":"HS256","kid":"\u006b"}"#,
            r#"{"alg":"HS256","kid":"a\"b"}"#,
            r#"{"alg":"HS256","kid":"\ud800"}"#,
            r#"{"alg":"HS256","x":"\ud800"}"#,
            r#"{"alg":"H\u0053256"}"#,
            r#"{"\u0061lg":"HS256"}"#,
            r#"{"alg":"HS256","kid":"a","kid":"b"}"#,
            r#"{"alg":"HS256","alg":"HS256"}"#,
            r#"{"alg":"HS256","typ":"a","typ":"a"}"#,
            r#"{"alg":1}"#,
            r#"{"alg":null}"#,
            r#"{"alg":"none"}"#,
            r#"{"alg":"RS256","kid":"k"}"#,
            r#"{"alg":"hs256"}"#,
            r#"{"kid":"k"}"#,
            r#"{}"#,
            r#"[]"#,
            r#"["HS256"]"#,
            r#"{"alg":"HS256","kid":null}"#,
            r#"{"alg":"HS256","kid":1}"#,
            r#"{"alg":"HS256","typ":1}"#,
            r#"{"alg":"HS256","x":1e400}"#,
            r#"{"alg":"HS256","x":123456789012345678901234567890}"#,
            r#"{"alg":"HS256","x":{"y":[1,2]}}"#,
            r#"{"alg":"HS256","jwk":{}}"#,
            r#"{"alg":"HS256","jku":"u"}"#,
            r#"{"alg":"HS256","x5u":"u"}"#,
            r#"{"alg":"HS256","x5c":["a"]}"#,
            r#"{"alg":"HS256","crit":["exp"]}"#,
            r#"{"alg":"HS256",}"#,
            r#"{"alg":"HS256"} x"#,
            r#"{"alg":"HS256""#,
            r#"{"alg" "HS256"}"#,
            "{\"alg\":\"HS256\",\"kid\":\"a\tb\"}",
            "\u{c}{\"alg\":\"HS256\"}",
            "",
        ];
        for h in left {
            assert!(!header_agrees(h.as_bytes()), "left to serde: {h}");
        }
        // Not UTF-8.
        assert!(!header_agrees(b"{\"alg\":\"HS256\",\"kid\":\"\xff\"}"));
        assert!(!header_agrees(b"{\"alg\":\"HS256\",\"x\":\"\xc3\"}"));
        // What the fast path gives, field by field.
        let h = fast_header(r#"{"alg":"HS384","kid":"","typ":"JWT"}"#).unwrap();
        assert_eq!(h.alg, Algorithm::HS384);
        assert_eq!(h.kid.as_deref(), Some(""));
        assert_eq!(h.typ.as_deref(), Some("JWT"));
        assert!(h.cty.is_none() && !h.names_its_own_key());
        assert!(fast_header(r#"{"alg":"HS256"}"#).unwrap().kid.is_none());
    }

    #[test]
    fn audiences_are_checked_as_before() {
        // The check as it was: every string of `aud` looked up in a hash set.
        fn reference(configured: &[&str], aud: &Option<Value>) -> Result<(), TokenFault> {
            let set: HashSet<&str> = configured.iter().copied().collect();
            let listed: Option<Vec<&str>> = match aud {
                None | Some(Value::Null) => return Err(TokenFault::MissingClaim),
                Some(Value::String(s)) => Some(vec![s.as_str()]),
                Some(Value::Array(list)) => list.iter().map(Value::as_str).collect(),
                Some(_) => None,
            };
            match listed {
                None => Err(TokenFault::MissingClaim),
                Some(list) if !list.iter().any(|a| set.contains(a)) => {
                    Err(TokenFault::WrongAudience)
                }
                Some(_) => Ok(()),
            }
        }
        use std::collections::HashSet;
        let configs: [&[&str]; 4] = [
            &["gateway"],
            &["b", "a", "gateway", "a"],
            &["https://api.statebacked.dev/", ""],
            &[],
        ];
        let auds = [
            r#"null"#,
            r#""gateway""#,
            r#""gatewa""#,
            r#""gateway ""#,
            r#""""#,
            r#""a""#,
            r#"[]"#,
            r#"["gateway"]"#,
            r#"["x","gateway"]"#,
            r#"["x","y"]"#,
            r#"["gateway",1]"#,
            r#"[1,"gateway"]"#,
            r#"["gateway",null]"#,
            r#"[""]"#,
            r#"["b","b"]"#,
            r#"1"#,
            r#"{"gateway":1}"#,
            r#"true"#,
        ];
        for configured in configs {
            let verifier = Verifier::new(&AuthSettings {
                audiences: configured.iter().map(|s| s.to_string()).collect(),
                leeway_seconds: 0,
                require_exp: false,
                max_token_bytes: 8192,
                token_cache_entries: 0,
                catalog: Default::default(),
            });
            for aud in auds
                .iter()
                .map(|a| Some(serde_json::from_str::<Value>(a).unwrap()))
                .chain([None])
            {
                let claims = Claims {
                    aud: aud.clone(),
                    ..Claims::default()
                };
                let got = verifier
                    .check_times_and_audience(&claims, 100, &mut ())
                    .map_err(|e| match e {
                        GatewayError::InvalidToken(fault) => fault,
                        other => panic!("{other:?}"),
                    });
                assert_eq!(got, reference(configured, &aud), "{configured:?} {aud:?}");
            }
        }
    }
    #[test]
    fn base64_decodes_as_before() {
        let alphabet = b"AZaz09-_=+/. ";
        let mut inputs: Vec<String> = Vec::new();
        for len in 0..40 {
            inputs.push("QUJD".repeat(len / 4) + &"QUJD"[..len % 4]);
            inputs.push("_-9z".repeat(len / 4) + &"_-9z"[..len % 4]);
            for &c in alphabet {
                let mut s = "Zm9v".repeat(len / 4) + &"Zm9v"[..len % 4];
                s.push(c as char);
                inputs.push(s);
            }
        }
        for input in &inputs {
            let reference = URL_SAFE_NO_PAD.decode(input);
            for size in [0, 3, 9, 30, 66] {
                let (mut stack, mut heap) = (vec![0u8; size], Vec::new());
                let got = decode_b64(input, &mut stack, &mut heap).map(<[u8]>::to_vec);
                assert_eq!(got, reference, "{input:?} into {size}");
            }
        }
    }

    /// [`read_claims`] gives what the payload gave before: refused as not an object (or not
    /// valid JSON throughout), or serde_json's claims or error.
    fn read_agrees(payload: &[u8]) {
        let old = if payload.trim_ascii_start().first() != Some(&b'{') || !valid_json(payload) {
            None
        } else {
            Some(serde_json::from_slice::<Reference>(payload))
        };
        let text = String::from_utf8_lossy(payload);
        match (read_claims(payload), old) {
            (Err(PayloadFault::NotObject), None) => {}
            (Ok(new), Some(Ok(old))) => {
                assert_eq!(new.act, old.act, "act: {text}");
                assert_eq!(new.scope, old.scope, "scope: {text}");
                assert_eq!(
                    (new.iat, new.exp, new.nbf, new.aud),
                    (old.iat, old.exp, old.nbf, old.aud),
                    "{text}"
                );
            }
            (Err(PayloadFault::Claims(new)), Some(Err(old))) => {
                assert_eq!(new.to_string(), old.to_string(), "error: {text}")
            }
            (new, old) => panic!("{text}: now {new:?}, was {old:?}"),
        }
    }

    #[test]
    fn payloads_read_as_before() {
        for payload in [
            r#"{"aud":"gateway","scope":"state.read","exp":1795939140}"#,
            // A `\u` byte pair anywhere sends the payload through the full parse, which
            // refuses what a skipped member hides (1e400 is out of range for a Value).
            r#"{"x":["\\u",1e400]}"#,
            r#"{"x":["\\\\u",1e400]}"#,
            r#"{"x":["\\\u0061",1e400]}"#,
            r#"{"x":["\\",1e400]}"#,
            r#"{"x":["\nu",1e400]}"#,
            r#"{"x":{"\u0061":1e400}}"#,
            r#"{"x":["\ud800"]}"#,
            r#"{"x":["\\ud800"]}"#,
            r#"{"x":"\ud800"}"#,
            r#"{"x":[1e400]}"#,
            r#"{"sub":["\\u"]}"#,
            r#"{"act":{"sub":"\\u"}}"#,
            r#"{"act":{"sub":"\ud800"}}"#,
            r#"{"x":[\u0061]}"#,
            r#"[{"exp":1}]"#,
            r#"  {"exp":1}"#,
            r#""#,
            r#"1"#,
        ] {
            read_agrees(payload.as_bytes());
        }
        read_agrees(b"{\"x\":\"\xff\"}");
        read_agrees(b"{\"x\":[\"\xff\"]}");
        read_agrees(b"{\"aud\":\"\xc3\xa9\"}");
    }
    #[test]
    fn plain_strings_end_at_the_first_special_byte() {
        // Every position, every byte value, with and without a later special byte.
        for len in 0..20 {
            for c in 0..=255u8 {
                let mut text = vec![b'a'; len];
                text.push(c);
                text.extend_from_slice(b"xx\\y\"zzzzzzzzzz");
                let mut scan = Scan { b: &text, i: 0 };
                let got = scan.plain_str();
                if c == b'"' {
                    assert_eq!(got, Some(&text[..len]), "{len} {c}");
                    assert_eq!(scan.i, len + 1);
                } else if special(c) {
                    assert_eq!(got, None, "{len} {c}");
                } else {
                    // Runs on to the backslash.
                    assert_eq!(got, None, "{len} {c}");
                    let clean: Vec<u8> = text
                        .iter()
                        .map(|&b| if b == b'\\' { b'q' } else { b })
                        .collect();
                    let mut scan = Scan { b: &clean, i: 0 };
                    assert_eq!(scan.plain_str(), Some(&clean[..len + 5]), "{len} {c}");
                }
            }
        }
        assert_eq!(Scan { b: b"abc", i: 0 }.plain_str(), None);
    }

    fn deep(levels: usize, inner: &str) -> String {
        format!("{}{inner}{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn claims_parse_as_before() {
        let mut payloads: Vec<String> = [
            r#"{"sub":"bench-client","iss":"bench","aud":"gateway","iat":1795852740,"scope":"state.read state.write","exp":1795939140}"#,
            r#"{"act":{"sub":"u"},"aud":"https://api.statebacked.dev/","iat":1,"exp":2}"#,
            r#"{}"#,
            r#" { "scope" : "a  b ",  "exp" : 5 } "#,
            r#"{"scope":""}"#,
            r#"{"scope":"   "}"#,
            r#"{"scope":"org.keys.write org-keys.write"}"#,
            r#"{"scope":"st\u0061te.read ev\u00e9nts"}"#,
            r#"{"scope":"a\tb c"}"#,
            r#"{"scope":[]}"#,
            r#"{"scope":["", "a", "a", "b"]}"#,
            r#"{"scope":["state.read","org.keys.write"]}"#,
            r#"{"scope":["st\u0061te.read"]}"#,
            r#"{"scope":null}"#,
            r#"{"scope":1}"#,
            r#"{"scope":-1}"#,
            r#"{"scope":1.5}"#,
            r#"{"scope":true}"#,
            r#"{"scope":{}}"#,
            r#"{"scope":{"a":"b"} }"#,
            r#"{"scope":[1]}"#,
            r#"{"scope":["a",1] , "exp":1}"#,
            r#"{"scope":["a",null]}"#,
            r#"{"scope":[["a"]]}"#,
            r#"{"scope":[{"a":1}], "aud":"x"}"#,
            r#"{"scope":[1e400]}"#,
            r#"{"scope":1e400}"#,
            r#"{"scope":"a","scope":"b"}"#,
            r#"{"scope":[1,]}"#,
            r#"{"scope":[1 2]}"#,
            r#"{"scope":"a" "exp":1}"#,
            r#"{"sub":"x"}"#,
            r#"{"sub":null}"#,
            r#"{"sub":1e400}"#,
            r#"{"sub":-1e400}"#,
            r#"{"sub":123456789012345678901234567890}"#,
            r#"{"sub":[1, 1e400]}"#,
            r#"{"sub":{"a":{"b":[1e400]}}}"#,
            r#"{"sub":{"a":1,"a":2}}"#,
            r#"{"sub":{"a":1,}}"#,
            r#"{"sub":"x","sub":"y"}"#,
            r#"{"sub":[true,false,null,"s",{"k":[]}]}"#,
            r#"{"iss":1e400}"#,
            r#"{"iss":"a","iss":"b"}"#,
            r#"{"other":1e400,"other":2}"#,
            r#"{"exp":1,"exp":2}"#,
            r#"{"exp":null,"nbf":null,"iat":null,"aud":null}"#,
            r#"{"exp":1.5,"nbf":-3,"iat":"x","aud":["a","b"]}"#,
            r#"{"exp":-0,"nbf":0,"iat":18446744073709551615,"aud":18446744073709551616}"#,
            r#"{"act":null}"#,
            r#"{"act":1}"#,
            r#"{"act":{"sub":1,"sub":2}}"#,
            r#"{"act":{"sub":"a"},"act":{}}"#,
            r#"{"aud":"a","aud":"b"}"#,
            r#"{"exp":1}x"#,
            r#"{"exp":1} "#,
            r#"{"exp":1"#,
            r#"{"exp"}"#,
            r#"{"exp":01}"#,
            r#"{"\u0065xp":1,"exp":2}"#,
            r#"{"scop\u0065":[1]}"#,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Nesting around serde_json's recursion limit, where Value and skipping differ.
        for levels in [1, 100, 126, 127, 128, 129, 200] {
            payloads.push(format!(r#"{{"sub":{}}}"#, deep(levels, "1")));
            payloads.push(format!(r#"{{"iss":{},"exp":1}}"#, deep(levels, "1")));
            payloads.push(format!(r#"{{"x":{},"exp":1}}"#, deep(levels, "1")));
            payloads.push(format!(r#"{{"scope":{}}}"#, deep(levels, "\"a\"")));
            payloads.push(format!(r#"{{"scope":[{}]}}"#, deep(levels, "")));
            payloads.push(format!(r#"{{"aud":{}}}"#, deep(levels, "\"a\"")));
        }
        for p in &payloads {
            agree(p);
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// JSON-ish scalars: mostly valid, sometimes broken.
        fn leaf() -> impl Strategy<Value = String> + Clone {
            prop::sample::select(vec![
                "null",
                "true",
                "false",
                "0",
                "1",
                "-1",
                "-0",
                "01",
                "1.5",
                "1e3",
                "1e400",
                "18446744073709551615",
                "18446744073709551616",
                "\"\"",
                "\"a\"",
                "\"state.read\"",
                "\"state.read events.write\"",
                "\" a  b \"",
                "\"\\u0061\"",
                "\"\\n\"",
                "\"gateway\"",
                "\"é\"",
                "tru",
                "\"unterminated",
                "-",
                "",
            ])
            .prop_map(str::to_owned)
        }

        /// Valid scalars of the shapes tokens carry: mostly what the fast path takes.
        fn valid_leaf() -> impl Strategy<Value = String> + Clone {
            prop::sample::select(vec![
                "null",
                "true",
                "false",
                "0",
                "7",
                "1795939140",
                "18446744073709551615",
                "\"\"",
                "\"a\"",
                "\"gateway\"",
                "\"state.read events.write\"",
                "\" a  b \"",
                "\"é ü\"",
                "\"a/b\"",
                "\"}\"",
                "\"]\"",
                "1.5",
                "-1",
            ])
            .prop_map(str::to_owned)
        }

        /// A member value: a scalar from `leaf`, or arrays and objects of them.
        fn value_of<S: Strategy<Value = String> + Clone + 'static>(
            leaf: S,
        ) -> impl Strategy<Value = String> {
            let nested = leaf.clone().prop_recursive(3, 16, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4)
                        .prop_map(|v| format!("[{}]", v.join(","))),
                    prop::collection::vec((key(), inner), 0..4).prop_map(|v| {
                        let members: Vec<String> =
                            v.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                        format!("{{{}}}", members.join(","))
                    }),
                ]
            });
            prop_oneof![3 => leaf, 1 => nested]
        }

        fn value() -> impl Strategy<Value = String> {
            value_of(leaf())
        }

        fn valid_value() -> impl Strategy<Value = String> {
            value_of(valid_leaf())
        }

        fn key() -> impl Strategy<Value = String> {
            prop::sample::select(vec![
                "\"act\"",
                "\"scope\"",
                "\"iat\"",
                "\"exp\"",
                "\"nbf\"",
                "\"aud\"",
                "\"sub\"",
                "\"iss\"",
                "\"other\"",
                "\"\\u0065xp\"",
                "\"\"",
            ])
            .prop_map(str::to_owned)
        }

        fn space() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec!["", "", "", " ", "\n\t ", ","])
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]
            #[test]
            fn claims_parse_as_before(
                members in prop::collection::vec((key(), space(), value(), space()), 0..8),
                tail in space(),
            ) {
                let body: Vec<String> = members
                    .into_iter()
                    .map(|(k, s, v, t)| format!("{s}{k}{t}:{s}{v}{t}"))
                    .collect();
                agree(&format!("{{{}}}{tail}", body.join(",")));
            }

            #[test]
            fn valid_claims_parse_as_before(
                members in prop::collection::vec((key(), valid_value()), 0..5),
            ) {
                let body: Vec<String> = members
                    .into_iter()
                    .map(|(k, v)| format!("{k}:{v}"))
                    .collect();
                agree(&format!("{{{}}}", body.join(",")));
            }
        }
    }
}
