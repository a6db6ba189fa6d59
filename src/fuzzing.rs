//! Entry points for the fuzz targets (`fuzz/`) and the corpus-replay test (`tests/fuzz_replay.rs`).
//!
//! Each function takes arbitrary bytes, runs them through the real request logic against a
//! fixed in-memory configuration (the example `config/statebacked.toml`) and key set, and
//! panics only when an invariant the gateway promises is broken. The fuzz targets are one line
//! each, so `cargo test` replays the very same checks over the committed seeds without the
//! fuzz toolchain.
//!
//! Not part of the gateway's API: nothing here is used by `serve`.

use std::borrow::Cow;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use base64::Engine;
use http::{HeaderMap, HeaderValue, Method, Uri};
use jsonwebtoken::{Algorithm, EncodingKey};

use crate::config::{Lookup, Target};
use crate::error::GatewayError;
use crate::gateway::Snapshot;
use crate::keys::store::parse_org_file;
use crate::keys::KeySet;
use crate::pipeline::{self, path, Action};
use crate::scopes::ORG_KEYS_WRITE;

/// The organization the fuzzed requests act for.
pub const ORG: &str = "org_fuzz";
/// A second organization, so that crossing organizations can be tried.
pub const OTHER_ORG: &str = "org_other";

/// One fixture key: id, organization, algorithm, secret, scopes.
pub struct FixtureKey {
    pub id: &'static str,
    pub org: &'static str,
    pub algorithm: Algorithm,
    pub secret: &'static str,
    pub scopes: &'static [&'static str],
}

/// The fixed key set. Index = the key selector of [`token`]'s structured mode.
pub const KEYS: [FixtureKey; 4] = [
    FixtureKey {
        id: "sbk_fuzz256",
        org: ORG,
        algorithm: Algorithm::HS256,
        secret: "sbsec_fuzz256_0123456789abcdef0123456789abcdef",
        scopes: &[
            "events.write",
            "state.read",
            "instances.write",
            "indexes.read",
        ],
    },
    FixtureKey {
        id: "sbk_fuzz384",
        org: ORG,
        algorithm: Algorithm::HS384,
        secret: "sbsec_fuzz384_0123456789abcdef0123456789abcdef",
        scopes: &[
            "org.write",
            "org.keys.write",
            "org-members.write",
            "state.read",
        ],
    },
    FixtureKey {
        id: "sbk_fuzz512",
        org: ORG,
        algorithm: Algorithm::HS512,
        secret: "sbsec_fuzz512_0123456789abcdef0123456789abcdef",
        scopes: &["machines.read", "machines.write"],
    },
    FixtureKey {
        id: "sbk_other",
        org: OTHER_ORG,
        algorithm: Algorithm::HS256,
        secret: "sbsec_other_0123456789abcdef0123456789abcdef00",
        scopes: &[
            "events.write",
            "state.read",
            "org-keys.write",
            "org-members.write",
        ],
    },
];

/// A secret no key has: tokens signed with it are forgeries.
const FORGER_SECRET: &str = "sbsec_forger_0123456789abcdef0123456789abcdef0";

/// The audience of the example config.
pub const AUDIENCE: &str = "https://api.statebacked.dev/";

const EXAMPLE_CONFIG: &str = include_str!("../config/statebacked.toml");

struct Fixture {
    snapshot: Arc<Snapshot>,
    keys: Arc<KeySet>,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let config = crate::config::parse(Path::new("/fuzz/scopegate.toml"), EXAMPLE_CONFIG)
        .expect("the example config is valid");
    let mut orgs = Vec::new();
    for org in [ORG, OTHER_ORG] {
        let mut text = format!("[org]\nid = \"{org}\"\nname = \"{org}\"\ncreated_at = \"x\"\n");
        for k in KEYS.iter().filter(|k| k.org == org) {
            text.push_str(&format!(
                "[[keys]]\nid = \"{}\"\nname = \"k\"\nsecret = \"{}\"\nscopes = {:?}\n\
                 algorithm = \"{:?}\"\ncreated_at = \"x\"\n",
                k.id, k.secret, k.scopes, k.algorithm
            ));
        }
        let file = format!("/fuzz/keys/{org}.toml");
        orgs.push(
            parse_org_file(Path::new(&file), &text, &config.auth.catalog)
                .expect("the fixture key file is valid"),
        );
    }
    let (keys, clashes) = KeySet::build(&orgs);
    assert!(clashes.is_empty());
    Fixture {
        snapshot: Arc::new(
            Snapshot::build(Arc::new(config), None).expect("the fuzz config builds"),
        ),
        keys: Arc::new(keys),
    }
});

fn fixture_key(kid: &str) -> Option<&'static FixtureKey> {
    KEYS.iter().find(|k| k.id == kid)
}

/// A fixed request: method, path, extra headers.
type FixedRequest = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// The requests a fuzzed token is presented with. Index = the request selector of [`token`].
const REQUESTS: [FixedRequest; 8] = [
    ("POST", "/machines/m1/i/i1/events", &[]),
    // Query-token route: the token goes in `?token=`, never in a header.
    ("GET", "/rt", &[]),
    ("GET", "/orgs/org_fuzz/members/u1", &[]),
    ("PUT", "/orgs/org_other/members", &[]),
    ("GET", "/keys", &[]),
    ("GET", "/machines/m1/i/i1", &[("x-statebacked-org-id", ORG)]),
    (
        "GET",
        "/machines/m1/i/i1",
        &[(
            "x-statebacked-act",
            r#"{"sub":"user\r\nx-scopegate-org: org_other"}"#,
        )],
    ),
    // Public: any token, or none, is fine, and no identity is forwarded.
    ("POST", "/tokens", &[]),
];

/// Builds a structured [`token`] input: the token is `header_json.claims_json`, signed with
/// fixture key `key` (0–3) or forged with the same algorithm (4–7), presented as request
/// `request` (0–7).
pub fn signed_input(request: u8, key: u8, header_json: &str, claims_json: &str) -> Vec<u8> {
    let mut out = vec![b'S', b'0' + request, b'0' + key];
    out.extend_from_slice(header_json.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(claims_json.as_bytes());
    out
}

/// Builds a raw [`token`] input: `token` presented as request `request` (0–7).
pub fn raw_input(request: u8, token: &str) -> Vec<u8> {
    let mut out = vec![b'R', b'0' + request];
    out.extend_from_slice(token.as_bytes());
    out
}

/// Signs `header_json.claims_json` with fixture key `key % 8` (4–7: a forger's secret).
pub fn sign(key: u8, header: &[u8], claims: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let fixture = &KEYS[usize::from(key % 4)];
    let secret = if key % 8 < 4 {
        fixture.secret
    } else {
        FORGER_SECRET
    };
    let message = format!("{}.{}", b64.encode(header), b64.encode(claims));
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(secret.as_bytes()),
        fixture.algorithm,
    )
    .expect("HMAC signing cannot fail");
    format!("{message}.{signature}")
}

/// What a [`token`] run saw, so the replay test can tell "checked" from "skipped".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRun {
    /// `verify` accepted the token.
    pub verified: bool,
    /// The whole request was allowed.
    pub allowed: bool,
}

/// Parses and verifies arbitrary bytes as a bearer token, then presents it to the whole
/// decision pipeline. Never panics unless an invariant is broken; `None` when the input
/// is too short or not UTF-8.
///
/// Layout: byte 0 is the mode (odd: structured, even: raw), byte 1 picks one of eight
/// requests. Raw: the rest is the token text. Structured: byte 2 picks the signing key (0–3)
/// or a forger (4–7), and the rest is `header JSON` `\n` `claims JSON`, base64url-encoded and
/// signed here, so the fuzzer reaches the claim checks behind a valid signature.
pub fn token(data: &[u8]) -> Option<TokenRun> {
    let [mode, request, rest @ ..] = data else {
        return None;
    };
    let (token, signer) = if mode % 2 == 1 {
        let [key, body @ ..] = rest else {
            return None;
        };
        let (header, claims) = match body.iter().position(|&b| b == b'\n') {
            Some(i) => (&body[..i], &body[i + 1..]),
            None => (body, &b"{}"[..]),
        };
        (Cow::Owned(sign(*key, header, claims)), Some(key % 8))
    } else {
        match std::str::from_utf8(rest) {
            Ok(t) => (Cow::Borrowed(t), None),
            Err(_) => return None,
        }
    };
    let fx = &*FIXTURE;
    let now = pipeline::now_seconds();
    let verified = fx.snapshot.verifier.verify(&fx.keys, &token, now);
    if let Ok(v) = &verified {
        check_verified(&token, v, now, signer);
    }
    let allowed = present(
        fx,
        usize::from(request % 8),
        &token,
        verified.as_ref().ok(),
        now,
    );
    Some(TokenRun {
        verified: verified.is_ok(),
        allowed,
    })
}

/// What a successful verification promises.
fn check_verified(token: &str, v: &pipeline::verify::Verified, now: u64, signer: Option<u8>) {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let auth = &FIXTURE.snapshot.config.auth;
    assert!(
        token.len() <= auth.max_token_bytes,
        "oversized token accepted"
    );
    assert!(
        signer.is_none_or(|s| s < 4),
        "a token signed with no key's secret verified"
    );
    // The key is the one the header names, and the organization is that key's.
    let header = jsonwebtoken::decode_header(token).expect("verified tokens have a header");
    let fixture = fixture_key(header.kid.as_deref().expect("verified tokens have a kid"))
        .expect("the kid names a fixture key");
    assert_eq!(&*v.key.id, fixture.id);
    assert_eq!(&*v.key.org, fixture.org, "the org is the key's");
    // The algorithm is pinned by the key, never chosen by the token.
    assert_eq!(header.alg, fixture.algorithm);
    assert_eq!(v.key.algorithm, fixture.algorithm);
    assert!(header.jwk.is_none() && header.jku.is_none() && header.x5u.is_none());
    assert!(header.x5c.is_none() && header.crit.is_none());
    // Exactly three canonical base64url segments, and the signature is the key's HMAC.
    let segments: Vec<&str> = token.split('.').collect();
    assert_eq!(segments.len(), 3);
    for s in &segments[..2] {
        let bytes = b64.decode(s).expect("segments are base64url");
        assert_eq!(b64.encode(bytes), *s, "non-canonical base64url accepted");
    }
    let expected = jsonwebtoken::crypto::sign(
        format!("{}.{}", segments[0], segments[1]).as_bytes(),
        &EncodingKey::from_secret(fixture.secret.as_bytes()),
        fixture.algorithm,
    )
    .expect("HMAC signing cannot fail");
    assert_eq!(segments[2], expected, "signature is not the key's HMAC");
    // Time and audience claims.
    let leeway = auth.leeway_seconds as f64;
    let exp = v.claims.exp.as_ref().and_then(|e| e.as_f64());
    let exp = exp.expect("exp is required and numeric");
    // The verifier was given its own reading of the clock; allow a few seconds between the reads.
    assert!(
        exp >= 0.0 && exp + leeway + 5.0 >= now as f64,
        "expired token accepted"
    );
    if let Some(nbf) = &v.claims.nbf {
        let nbf = nbf.as_f64().expect("nbf is numeric");
        assert!(nbf <= now as f64 + leeway + 5.0, "immature token accepted");
    }
    if let Some(iat) = &v.claims.iat {
        let iat = iat.as_f64().expect("iat is numeric");
        assert!(
            iat <= now as f64 + leeway,
            "token issued in the future accepted"
        );
    }
    let aud_ok = |a: &serde_json::Value| {
        a.as_str()
            .is_some_and(|a| auth.audiences.iter().any(|c| c == a))
    };
    match v.claims.aud.as_ref().expect("aud is required") {
        serde_json::Value::Array(list) => assert!(list.iter().any(aud_ok), "wrong audience"),
        other => assert!(aud_ok(other), "wrong audience accepted"),
    }
}

/// Presents `token` with fixed request `which`; checks what the decision promises. Returns
/// whether the request was allowed.
fn present(
    fx: &Fixture,
    which: usize,
    token: &str,
    verified: Option<&pipeline::verify::Verified>,
    now: u64,
) -> bool {
    let (method, path, extra) = REQUESTS[which];
    let mut headers = HeaderMap::new();
    for (name, value) in extra {
        headers.insert(*name, HeaderValue::from_str(value).expect("fixture header"));
    }
    let query_token = which == 1;
    let uri: Uri = if query_token {
        let mut target = format!("{path}?token=");
        for b in token.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                target.push(char::from(b));
            } else {
                target.push_str(&format!("%{b:02X}"));
            }
        }
        match target.parse() {
            Ok(uri) => uri,
            Err(_) => return false,
        }
    } else {
        let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) else {
            return false;
        };
        headers.insert(http::header::AUTHORIZATION, value);
        path.parse().expect("fixture path")
    };
    let method: Method = method.parse().expect("fixture method");
    let outcome = pipeline::decide(&fx.snapshot, &fx.keys, &method, &uri, &headers, now);
    // `serve`'s path through the worker's token cache (kept across runs, so it fills with
    // earlier inputs' tokens) decides exactly the same, on a miss and on the hit after it.
    thread_local! {
        static TOKENS: std::cell::RefCell<pipeline::token_cache::TokenCache> =
            std::cell::RefCell::default();
    }
    for _ in 0..2 {
        let cached = TOKENS.with_borrow_mut(|cache| {
            let (snap, keys) = (&fx.snapshot, &fx.keys);
            pipeline::decide_cached(snap, keys, cache, &method, &uri, &headers, now)
        });
        assert_eq!(
            format!("{:?}", cached.result),
            format!("{:?}", outcome.result),
            "the token cache decided otherwise"
        );
    }
    let route = outcome
        .route
        .expect("every fixture request matches a route");
    let Ok(decision) = outcome.result else {
        return false;
    };
    assert!(std::ptr::eq(decision.route, route));
    let Some(identity) = &decision.permit.identity else {
        assert!(
            route.public,
            "a protected route was allowed without identity"
        );
        return true;
    };
    assert!(!route.public, "a public route forwarded an identity");
    // A request allowed with an identity carried a token that verifies on its own.
    let verified = verified.expect("decide allowed a token that verify refuses");
    let key = identity.key();
    let fixture = fixture_key(&key.id).expect("a fixture key");
    assert_eq!(&*key.org, fixture.org, "the org is the key's");
    // Effective scopes: never more than the key's, always all the route's.
    let effective = identity.effective();
    assert!(
        effective.is_subset_of(&key.scopes),
        "scopes beyond the key's"
    );
    if let Some(claim) = &verified.claims.scope {
        assert!(
            effective.is_subset_of(claim),
            "scopes beyond the token's scope claim"
        );
    }
    assert!(
        route.scopes.is_subset_of(effective),
        "a required scope is missing"
    );
    assert_eq!(
        identity.scopes().to_str().ok(),
        Some(effective.joined().as_str())
    );
    match which {
        2 => assert_eq!(&*key.org, ORG, "org_param names another org"),
        3 => assert_eq!(&*key.org, OTHER_ORG, "org_param names another org"),
        5 => assert_eq!(&*key.org, ORG, "x-statebacked-org-id names another org"),
        6 => {
            assert!(
                effective.contains(ORG_KEYS_WRITE),
                "impersonation without org-keys.write"
            );
            let sub = identity.sub.as_ref().expect("act.sub is forwarded");
            assert!(!sub.as_bytes().iter().any(|b| b.is_ascii_control()));
        }
        _ => {}
    }
    if let Action::Forward { uri: forwarded, .. } = &decision.action {
        assert_eq!(
            forwarded.path(),
            uri.path(),
            "the authorized path is the forwarded path"
        );
        if query_token {
            assert_eq!(forwarded.query(), None, "the query token leaks upstream");
        }
    }
    true
}

/// Normalizes arbitrary bytes as a request target (`path[?query]`), matches the normalized path
/// against the example route table with several methods, runs the whole decision with no
/// credentials, and checks what normalization and matching promise. Returns the normalized
/// path, if the path had one.
pub fn path_and_route(data: &[u8]) -> Option<String> {
    let Ok(text) = std::str::from_utf8(data) else {
        return None;
    };
    let (raw_path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (text, None),
    };
    let fx = &*FIXTURE;
    let normal = path::normalize(raw_path).ok();
    if let Some(normal) = &normal {
        check_normalized(raw_path, normal);
        check_routes(fx, normal);
    }
    check_query(query);
    if let Ok(uri) = Uri::try_from(text) {
        check_anonymous(fx, &uri);
    }
    normal.map(Cow::into_owned)
}

/// What [`path::normalize`] promises about its output `normal` for input `raw`.
pub fn check_normalized(raw: &str, normal: &str) {
    assert!(normal.starts_with('/'), "{normal:?} is not absolute");
    // Idempotent.
    assert!(
        path::normalize(normal).is_ok_and(|n| n == normal),
        "normalizing {normal:?} again changed it"
    );
    // Only pchar, `/` and upper-case escapes of bytes that must stay escaped.
    let bytes = normal.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = normal.get(i + 1..i + 3).expect("complete escape");
            assert!(hex
                .bytes()
                .all(|h| h.is_ascii_digit() || h.is_ascii_uppercase()));
            let v = u8::from_str_radix(hex, 16).expect("hex escape");
            assert!(!is_unreserved(v), "%{hex} should have been decoded");
            assert!(v >= 0x20 && v != 0x7f, "encoded control byte %{hex}");
            assert!(v != b'/' && v != b'\\', "encoded slash or backslash %{hex}");
            i += 3;
        } else {
            assert!(
                is_unreserved(b) || b"!$&'()*+,=:@/".contains(&b),
                "byte {b:#04x} in a normalized path"
            );
            i += 1;
        }
    }
    // No dot segments, no empty segments (a trailing `/` is allowed).
    let segments: Vec<&str> = normal[1..].split('/').collect();
    for (n, seg) in segments.iter().enumerate() {
        assert!(*seg != "." && *seg != "..", "dot segment in {normal:?}");
        assert!(
            !seg.is_empty() || n + 1 == segments.len(),
            "empty segment in {normal:?}"
        );
    }
    // Same meaning: both decode to the same bytes.
    assert_eq!(
        percent_decode(raw),
        percent_decode(normal),
        "normalizing {raw:?} changed its meaning"
    );
}

/// RFC 3986 §2.3 unreserved characters.
pub fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes every `%XX` escape; `None` for a malformed one.
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

const METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
];

/// Matching a normalized path: never panics, a match's template really matches the path,
/// its `org_param` is the path's segment, and whether the path matches at all does not depend
/// on the method.
fn check_routes(fx: &Fixture, normal: &str) {
    let table = &fx.snapshot.config.routes;
    let mut found = None;
    for method in &METHODS {
        match table.lookup(method, normal) {
            Ok(m) => {
                assert!(m.route.methods.allows(method));
                let params = template_match(&m.route.template, normal).unwrap_or_else(|| {
                    panic!(
                        "{normal:?} matched template {} which does not fit it",
                        m.route.template
                    )
                });
                if let Some(name) = &m.route.org_param {
                    let value = params.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
                    assert_eq!(m.org, value, "org_param of {normal:?}");
                }
                assert!(
                    found.is_none_or(|f| f),
                    "{normal:?} matches for some methods only"
                );
                found = Some(true);
            }
            Err(Lookup::MethodNotAllowed { allow }) => {
                assert!(!allow.is_empty());
                assert!(!allow.split(", ").any(|a| a == method.as_str() || a == "*"));
                assert!(
                    found.is_none_or(|f| f),
                    "{normal:?} matches for some methods only"
                );
                found = Some(true);
            }
            Err(Lookup::NotFound) => {
                assert!(
                    !found.unwrap_or(false),
                    "{normal:?} matches for some methods only"
                );
                found = Some(false);
            }
        }
    }
}

/// Matches a template of whole-segment parameters (`{name}`, a final `{*name}`) the way the
/// README describes, as an oracle for matchit: the parameters, or `None` when it does not fit.
fn template_match<'p>(template: &str, path: &'p str) -> Option<Vec<(String, &'p str)>> {
    let mut params = Vec::new();
    let mut rest = path.strip_prefix('/')?;
    let mut segments = template.strip_prefix('/')?.split('/').peekable();
    while let Some(t) = segments.next() {
        if let Some(name) = t.strip_prefix("{*").and_then(|t| t.strip_suffix('}')) {
            if rest.is_empty() || segments.peek().is_some() {
                return None;
            }
            params.push((name.to_owned(), rest));
            return Some(params);
        }
        let (seg, tail) = match rest.split_once('/') {
            Some((s, t)) => (s, Some(t)),
            None => (rest, None),
        };
        if let Some(name) = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            if seg.is_empty() {
                return None;
            }
            params.push((name.to_owned(), seg));
        } else if t != seg {
            return None;
        }
        match (tail, segments.peek()) {
            (Some(tail), Some(_)) => rest = tail,
            (None, None) => return Some(params),
            _ => return None,
        }
    }
    None
}

/// Taking the token parameter out of a query leaves no copy of it behind.
fn check_query(query: Option<&str>) {
    let taken = path::take_query_param(query, "token");
    if taken.ambiguous {
        assert!(taken.value.is_none(), "an ambiguous token was picked");
    }
    if let Some(rest) = &taken.rest {
        for pair in rest.split('&') {
            let key = pair.split_once('=').map_or(pair, |(k, _)| k);
            let decoded = percent_decode(&key.replace('+', " "));
            assert!(
                key != "token" && decoded.as_deref() != Some(b"token"),
                "the token parameter survived in {rest:?}"
            );
        }
    }
}

/// A request without credentials: only public routes let it through, and the forwarded path
/// is the normalized one.
fn check_anonymous(fx: &Fixture, uri: &Uri) {
    let headers = HeaderMap::new();
    let now = pipeline::now_seconds();
    let normal = path::normalize(uri.path());
    for method in [Method::GET, Method::POST, Method::DELETE] {
        let outcome = pipeline::decide(&fx.snapshot, &fx.keys, &method, uri, &headers, now);
        match outcome.result {
            Ok(decision) => {
                assert!(
                    decision.route.public,
                    "{method} {uri} allowed without a token"
                );
                assert!(decision.permit.identity.is_none());
                let normal = normal.as_ref().expect("an allowed path is normal");
                if let Action::Forward {
                    uri: forwarded,
                    upstream,
                } = decision.action
                {
                    assert_eq!(decision.route.target, Target::Upstream(upstream));
                    let prefix = &fx.snapshot.config.upstreams[upstream].path_prefix;
                    assert_eq!(forwarded.path(), format!("{prefix}{normal}"));
                }
            }
            Err(e) => {
                if normal.is_err() {
                    let refused = matches!(e, GatewayError::BadPath | GatewayError::UriTooLong);
                    assert!(refused, "{uri}: an ambiguous path was refused with {e:?}");
                }
            }
        }
    }
}

/// Parses arbitrary text as a config file. Never panics; a valid config's routes are
/// matchable and every problem's line is inside the file. Returns whether it was valid.
pub fn config(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let file = Path::new("/fuzz/scopegate.toml");
    match crate::config::parse(file, text) {
        Ok(config) => {
            for route in config.routes.routes() {
                let _ = config.routes.lookup(&Method::GET, &route.template);
                assert!(
                    route.public || route.scopes.iter().all(|s| config.auth.catalog.contains(s))
                );
            }
            assert!(!config.auth.audiences.is_empty());
            true
        }
        Err(e) => {
            assert!(!e.problems.is_empty());
            let lines = text.lines().count().max(1) + 1;
            for p in &e.problems {
                assert!(
                    p.line.is_none_or(|l| l >= 1 && l <= lines),
                    "line {:?} of {lines}",
                    p.line
                );
            }
            let _ = e.to_string();
            false
        }
    }
}

/// What the gateway's own HTTP/1.1 reader did with a request head (see `h1_request`).
pub use crate::server::h1::oracle::Outcome as H1Outcome;

/// Reads arbitrary bytes as the start of a client connection, as the gateway's own HTTP/1.1
/// reader does (`src/server/h1.rs`, head limit 64 KiB). Panics if a request it would serve is
/// not exactly the one hyper's HTTP/1 server hands its service for the same bytes (method,
/// target, version, every field in order, keep-alive), or if hyper refuses it. Anything the
/// reader does not serve goes to hyper on the real connection, so it needs no check here.
pub fn h1_request(data: &[u8]) -> H1Outcome {
    crate::server::h1::oracle::check(data, 64 * 1024)
}
