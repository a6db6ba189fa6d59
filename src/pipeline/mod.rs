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
pub mod pool;
pub mod token;
pub mod token_cache;
pub mod trace;
pub mod tunnel;
pub mod verify;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri};
use hyper::body::{Frame, Incoming, SizeHint};

pub use authorize::{Grant, Permit};
use forward::{Body, ClientSide};
use token_cache::TokenCache;
use trace::Trace;

use crate::config::{Builtin, Lookup, Route, Target};
use crate::error::GatewayError;
use crate::gateway::{Gateway, Snapshot};
use crate::keys::KeySet;
use crate::metrics::method_label;

/// A request that may proceed, and where to.
#[derive(Debug)]
pub struct Decision<'a> {
    pub route: &'a Route,
    pub permit: Permit,
    pub action: Action,
}

/// What an allowed request does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Forward to this upstream (an index into `Config::upstreams`) at this URL.
    Forward { upstream: usize, uri: Uri },
    /// Answered by the gateway's own endpoint.
    Builtin(Builtin),
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
    decide_traced(snapshot, keys, method, uri, headers, now, &mut ())
}

/// [`decide`], reporting every step to `trace` (`scopegate explain`).
pub fn decide_traced<'a, T: Trace>(
    snapshot: &'a Snapshot,
    keys: &KeySet,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    now: u64,
    trace: &mut T,
) -> Outcome<'a> {
    let verify = |token: &str, trace: &mut T| {
        let verified = snapshot.verifier.verify_traced(keys, token, now, trace)?;
        Ok(Arc::new(Grant::new(verified)))
    };
    decide_with(snapshot, method, uri, headers, trace, verify)
}

/// [`decide`] as `serve` runs it: a token this worker verified before, against the same
/// snapshots, is taken from its `cache` (which still checks the clock; see [`token_cache`]).
/// Every step after verification runs as for any token.
pub fn decide_cached<'a>(
    snapshot: &'a Arc<Snapshot>,
    keys: &Arc<KeySet>,
    cache: &mut TokenCache,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    now: u64,
) -> Outcome<'a> {
    let grant = |token: &str, _: &mut ()| cache.grant(snapshot, keys, token, now);
    decide_with(snapshot, method, uri, headers, &mut (), grant)
}

/// Steps 1–5, a bearer token's [`Grant`] coming from `grant`.
fn decide_with<'a, T: Trace>(
    snapshot: &'a Snapshot,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    trace: &mut T,
    grant: impl FnOnce(&str, &mut T) -> Result<Arc<Grant>, GatewayError>,
) -> Outcome<'a> {
    let config = &snapshot.config;
    let target_len = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > config.server.max_uri_bytes {
        trace.step("path", || {
            format!(
                "{target_len} bytes, more than max_uri_bytes = {}",
                config.server.max_uri_bytes
            )
        });
        return Outcome {
            route: None,
            result: Err(GatewayError::UriTooLong),
        };
    }
    let path = match path::normalize(uri.path()) {
        Ok(p) => p,
        Err(path::AmbiguousPath) => {
            trace.step("path", || format!("{} is ambiguous: refused", uri.path()));
            return Outcome {
                route: None,
                result: Err(GatewayError::BadPath),
            };
        }
    };
    trace.step("path", || {
        if path == uri.path() {
            format!("{path} (already normal)")
        } else {
            format!("{} → {path}", uri.path())
        }
    });
    let matched = match config.routes.lookup(method, &path) {
        Ok(m) => m,
        Err(Lookup::NotFound) => {
            trace.step("route", || "no route matches this path".to_owned());
            return Outcome {
                route: None,
                result: Err(GatewayError::NotFound),
            };
        }
        Err(Lookup::MethodNotAllowed { allow }) => {
            trace.step("route", || {
                format!("the path matches, {method} does not (Allow: {allow})")
            });
            return Outcome {
                route: None,
                result: Err(GatewayError::MethodNotAllowed {
                    allow: allow.to_owned(),
                }),
            };
        }
    };
    let route = matched.route;
    trace.step("route", || {
        let line = if route.line > 0 {
            format!(" (line {})", route.line)
        } else {
            String::new()
        };
        format!(
            "{} {}{line} → {}",
            route.methods.names().join(","),
            route.template,
            config.target_name(route)
        )
    });
    trace.step("required", || {
        if route.public {
            "nothing: a public route".to_owned()
        } else if route.scopes.is_empty() {
            "any valid token".to_owned()
        } else {
            route.scopes.joined()
        }
    });
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
            let found = token::find(headers, query_token).inspect_err(|e| {
                trace.step("token", || format!("refused ({})", e.reason()));
            })?;
            trace.step("token", || {
                let from = if found.from_query {
                    "the query parameter"
                } else {
                    "the Authorization header"
                };
                format!("from {from}, {} bytes", found.token.len())
            });
            let grant = grant(&found.token, trace)?;
            authorize::authorize_traced(route, matched.org, grant, headers, trace)?
        };
        if let Some(limit) = route.max_body_bytes {
            let declared = headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|n| n > limit) {
                trace.step("body", || {
                    format!("content-length is over the route's max_body_bytes = {limit}")
                });
                return Err(GatewayError::PayloadTooLarge);
            }
        }
        let action = match route.target {
            Target::Upstream(upstream) => Action::Forward {
                upstream,
                uri: forward::upstream_uri(&config.upstreams[upstream], &path, query.as_deref())?,
            },
            Target::Builtin(b) => Action::Builtin(b),
        };
        Ok(Decision {
            route,
            permit,
            action,
        })
    })();
    Outcome {
        route: Some(route),
        result,
    }
}

/// The request's host must be one unambiguous `host[:port]`. RFC 9112 §3.2: a server MUST
/// answer 400 to an HTTP/1.1 request without a Host header, with more than one, or with an
/// invalid one; RFC 9110 §4.2.4: userinfo in an http(s) target is an error. The gateway does
/// not route on the host, but it hands it on (`X-Forwarded-Host`), and an upstream or cache
/// reading another copy than the one we read is a confusion we refuse to create.
fn check_host(parts: &http::request::Parts) -> Result<(), GatewayError> {
    let bad =
        || GatewayError::InvalidRequest("the Host header is missing, repeated or invalid".into());
    if parts
        .uri
        .authority()
        .is_some_and(|a| a.as_str().contains('@'))
    {
        return Err(bad());
    }
    let mut hosts = parts.headers.get_all(http::header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(bad());
    }
    match host {
        None if parts.version == http::Version::HTTP_11 => Err(bad()),
        None => Ok(()),
        Some(value) if value.is_empty() => Ok(()),
        Some(value) => match http::uri::Authority::try_from(value.as_bytes()) {
            Ok(a) if !a.as_str().contains('@') => Ok(()),
            _ => Err(bad()),
        },
    }
}

/// hyper decodes a final `chunked` coding and nothing else, and the gateway drops
/// `Transfer-Encoding` (hop-by-hop) and re-frames the body; so with `gzip, chunked` or
/// `chunked, chunked` the upstream would get a body still coded but no longer saying so. Only
/// exactly one `chunked` is accepted (RFC 9112 §6.1: chunked at most once; other codings are
/// not implemented here).
fn check_transfer_coding(headers: &HeaderMap) -> Result<(), GatewayError> {
    let mut codings = headers.get_all(http::header::TRANSFER_ENCODING).iter();
    match (codings.next(), codings.next()) {
        (None, _) => Ok(()),
        (Some(v), None) if v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") => Ok(()),
        _ => Err(GatewayError::InvalidRequest(
            "only the chunked transfer coding is supported".into(),
        )),
    }
}

/// A client's request body: hyper's, or — for a request the gateway's own HTTP/1.1 reader
/// parsed (`server::h1`) — none, or a small one read whole with the head.
#[derive(Debug)]
pub enum ClientBody {
    Hyper(Incoming),
    Empty,
    /// A small body read whole with its head (taken by the first poll).
    Full(Option<Bytes>),
}

impl From<Incoming> for ClientBody {
    fn from(body: Incoming) -> Self {
        ClientBody::Hyper(body)
    }
}

impl hyper::body::Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ClientBody::Hyper(body) => std::pin::Pin::new(body).poll_frame(cx),
            ClientBody::Empty => std::task::Poll::Ready(None),
            ClientBody::Full(data) => {
                std::task::Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(body) => body.is_end_stream(),
            ClientBody::Empty => true,
            ClientBody::Full(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(body) => body.size_hint(),
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// The client at the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The address's IP as a header value (X-Forwarded-For).
    pub ip: http::HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Self {
        Peer {
            addr,
            ip: forward::ip_header(addr.ip()),
        }
    }
}

pub fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

thread_local! {
    /// This worker thread's verified tokens.
    static TOKENS: std::cell::RefCell<TokenCache> = std::cell::RefCell::default();
}

/// Serves one request end to end.
pub async fn handle(
    gateway: Arc<Gateway>,
    request: Request<ClientBody>,
    peer: Arc<Peer>,
    proto: &'static str,
) -> Response<Body> {
    let start = crate::clock::read();
    let snapshot = gateway.snapshot.load_full();
    let keys = gateway.keys.load_full();
    let (mut parts, body) = request.into_parts();
    let method = method_label(&parts.method);
    let outcome = match check_host(&parts).and_then(|()| check_transfer_coding(&parts.headers)) {
        Ok(()) => TOKENS.with_borrow_mut(|cache| {
            let outcome = decide_cached(
                &snapshot,
                &keys,
                cache,
                &parts.method,
                &parts.uri,
                &parts.headers,
                start.unix_seconds(),
            );
            let (hits, misses) = cache.take_counts();
            if hits > 0 {
                gateway.metrics.token_cache_hits.inc_by(hits);
            }
            if misses > 0 {
                gateway.metrics.token_cache_misses.inc_by(misses);
            }
            outcome
        }),
        Err(e) => Outcome {
            route: None,
            result: Err(e),
        },
    };
    let route_label: &str = outcome.route.map_or("(none)", |r| &r.template);
    let (response, error, identity) = match outcome.result {
        Err(e) => (e.into_response().map(Body::Right), Some(e), None),
        Ok(decision) => {
            let route = decision.route;
            let identity = decision
                .permit
                .identity
                .as_ref()
                .map(|id| (id.key().id.clone(), id.key().org.clone()));
            let result = match decision.action {
                Action::Builtin(builtin) => crate::admin::builtin(
                    &gateway,
                    &snapshot,
                    builtin,
                    decision.permit,
                    parts,
                    body,
                )
                .await
                .map(|r| r.map(Body::Right)),
                Action::Forward { upstream, uri } => {
                    // RFC 9112 §3.2.2: with an absolute-form target, the target's authority
                    // is the host, whatever the Host header says.
                    let host = parts
                        .uri
                        .authority()
                        .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
                        .or_else(|| parts.headers.get(http::header::HOST).cloned());
                    let client = ClientSide {
                        peer_ip: &peer.ip,
                        proto,
                        trust_forwarded: snapshot.config.server.trust_forwarded_headers,
                        host: host.as_ref(),
                    };
                    forward::forward(
                        &gateway,
                        &snapshot,
                        (upstream, uri),
                        &decision.permit,
                        route,
                        &mut parts,
                        body,
                        client,
                    )
                    .await
                    .map(|r| r.map(Body::Left))
                }
            };
            match result {
                Ok(response) => (response, None, identity),
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
    // The answer is ready: what follows on this thread (the access line, the response's
    // `date`, the next head timeout) takes this reading as "now".
    let end = start.at(Instant::now());
    crate::clock::keep(end);
    let elapsed = end.instant - start.instant;
    let m = &gateway.metrics;
    m.record_request(
        outcome.route.map(|r| &r.template),
        method,
        status,
        decision,
        elapsed,
    );
    if let Some(e) = error.as_ref().filter(|e| e.is_auth_failure()) {
        m.auth_failures.with_label_values(&[e.reason()]).inc();
    }
    let (key, org) = identity.unzip();
    crate::logging::access(&crate::logging::Access {
        method,
        route: route_label,
        status: status.as_u16(),
        decision,
        reason: error.as_ref().map(GatewayError::reason),
        key: key.as_deref(),
        org: org.as_deref(),
        micros: elapsed.as_micros() as u64,
    });
    response
}

#[cfg(test)]
mod tests {
    //! The decision without a socket: config text + key file text → `decide`.

    use std::path::Path;
    use std::sync::Arc;

    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use http::{HeaderValue, Method};
    use serde_json::{json, Map, Value};

    use super::*;
    use crate::keys::store::parse_org_file;

    const SECRET: &str = "sbsec_0123456789abcdef0123456789abcdef0123456";

    fn setup() -> (Snapshot, KeySet) {
        setup_with("")
    }

    /// With `auth` as the config's `[auth]` section.
    pub(super) fn setup_with(auth: &str) -> (Snapshot, KeySet) {
        let config = crate::config::parse(
            Path::new("/etc/scopegate/scopegate.toml"),
            &format!("[auth]\n{auth}\n{ROUTES}"),
        )
        .unwrap();
        let (keys, _) = KeySet::build([&org_a(&config)]);
        (Snapshot::build(Arc::new(config), None).unwrap(), keys)
    }

    const ROUTES: &str = r#"
            [upstreams.up]
            url = "http://127.0.0.1:9/base"
            [[routes]]
            methods = ["GET"]
            path = "/machines/{machine}"
            scopes = ["machines.read"]
            upstream = "up"
            [[routes]]
            methods = ["GET"]
            path = "/rt"
            scopes = ["state.read"]
            upstream = "up"
            token_query_param = "token"
            [[routes]]
            methods = ["GET"]
            path = "/orgs/{org}/admin"
            scopes = ["state.read"]
            upstream = "up"
            org_param = "org"
            "#;

    pub(super) fn org_a(config: &crate::config::Config) -> crate::keys::OrgKeys {
        parse_org_file(
            Path::new("/k/org_a.toml"),
            &format!(
                "[org]\nid = \"org_a\"\nname = \"A\"\ncreated_at = \"x\"\n[[keys]]\nid = \"sbk_a\"\nname = \"k\"\nsecret = \"{SECRET}\"\nscopes = [\"machines.read\", \"state.read\"]\ncreated_at = \"x\"\n"
            ),
            &config.auth.catalog,
        )
        .unwrap()
    }

    pub(super) fn token(claims: Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("sbk_a".into());
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    pub(super) fn claims() -> Value {
        let now = now_seconds();
        json!({"act": {"sub": "u"}, "aud": "https://api.statebacked.dev/", "iat": now, "exp": now + 60})
    }

    pub(super) fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
        );
        h
    }

    #[test]
    fn allowed_request_gets_a_permit_and_the_upstream_url() {
        let (snap, keys) = setup();
        let uri: Uri = "/machines/m%31?x=1".parse().unwrap();
        let out = decide(
            &snap,
            &keys,
            &Method::GET,
            &uri,
            &bearer(&token(claims())),
            now_seconds(),
        );
        let decision = out.result.unwrap();
        assert_eq!(&*decision.route.template, "/machines/{machine}");
        assert_eq!(
            decision.action,
            Action::Forward {
                upstream: 0,
                uri: "http://127.0.0.1:9/base/machines/m1?x=1".parse().unwrap()
            }
        );
        let id = decision.permit.identity.unwrap();
        assert_eq!(&*id.key().org, "org_a");
        assert_eq!(id.scopes(), "machines.read state.read");
        let claims = URL_SAFE_NO_PAD
            .decode(id.claims.unwrap().as_bytes())
            .unwrap();
        let claims: Map<String, Value> = serde_json::from_slice(&claims).unwrap();
        assert_eq!(claims["sub"], "u");
    }

    #[test]
    fn query_token_is_removed_from_the_upstream_url() {
        let (snap, keys) = setup();
        let t = token(claims());
        let uri: Uri = format!("/rt?a=1&token={t}").parse().unwrap();
        let out = decide(
            &snap,
            &keys,
            &Method::GET,
            &uri,
            &HeaderMap::new(),
            now_seconds(),
        );
        assert_eq!(
            out.result.unwrap().action,
            Action::Forward {
                upstream: 0,
                uri: "http://127.0.0.1:9/base/rt?a=1".parse().unwrap()
            }
        );
    }

    #[test]
    fn refusals_keep_the_matched_route_for_metrics() {
        let (snap, keys) = setup();
        let mut c = claims();
        c["scope"] = json!("state.read");
        let uri: Uri = "/machines/m1".parse().unwrap();
        let out = decide(
            &snap,
            &keys,
            &Method::GET,
            &uri,
            &bearer(&token(c)),
            now_seconds(),
        );
        assert_eq!(out.route.map(|r| &*r.template), Some("/machines/{machine}"));
        assert_eq!(
            out.result.unwrap_err(),
            GatewayError::MissingScope {
                missing: "machines.read".into()
            }
        );
    }

    #[test]
    fn the_clock_passed_in_decides_iat() {
        let (snap, keys) = setup();
        let uri: Uri = "/machines/m1".parse().unwrap();
        let t = token(claims());
        let an_hour_ago = now_seconds() - 3600;
        let out = decide(&snap, &keys, &Method::GET, &uri, &bearer(&t), an_hour_ago);
        assert_eq!(
            out.result.unwrap_err(),
            GatewayError::InvalidToken(crate::error::TokenFault::IssuedInFuture)
        );
    }
}

#[cfg(test)]
mod cached_tests {
    //! `decide_cached`: a remembered token is refused or narrowed exactly as a fresh one.
    //! Every test first makes the cache remember the token, then checks the next decision.

    use std::sync::Arc;

    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use http::{HeaderValue, Method};
    use serde_json::json;

    use super::tests::{bearer, claims, org_a, setup_with, token};
    use super::*;
    use crate::error::TokenFault;

    struct Fixture {
        snap: Arc<Snapshot>,
        keys: Arc<KeySet>,
        cache: TokenCache,
    }

    impl Fixture {
        fn new(auth: &str) -> Self {
            let (snap, keys) = setup_with(auth);
            Fixture {
                snap: Arc::new(snap),
                keys: Arc::new(keys),
                cache: TokenCache::default(),
            }
        }

        fn decide(
            &mut self,
            path: &str,
            headers: &HeaderMap,
            now: u64,
        ) -> Result<Permit, GatewayError> {
            let uri: Uri = path.parse().unwrap();
            let (snap, keys) = (&self.snap, &self.keys);
            decide_cached(
                snap,
                keys,
                &mut self.cache,
                &Method::GET,
                &uri,
                headers,
                now,
            )
            .result
            .map(|d| d.permit)
        }

        fn grant(&mut self, path: &str, token: &str) -> Arc<Grant> {
            let permit = self.decide(path, &bearer(token), now_seconds()).unwrap();
            permit.identity.unwrap().grant
        }
    }

    /// A valid token that differs from [`token`]`(claims())` by its `jti`.
    fn another_token(jti: impl Into<serde_json::Value>) -> String {
        let mut c = claims();
        c["jti"] = jti.into();
        token(c)
    }

    #[test]
    fn a_hit_is_the_grant_verified_before_and_another_token_is_not() {
        let mut fx = Fixture::new("");
        let t = token(claims());
        let first = fx.grant("/machines/m1", &t);
        assert_eq!(fx.cache.len(), 1);
        assert_eq!(fx.cache.take_counts(), (0, 1), "a miss");
        assert!(Arc::ptr_eq(&first, &fx.grant("/rt", &t)));
        assert_eq!(fx.cache.take_counts(), (1, 0), "a hit");
        let second = fx.grant("/machines/m1", &another_token("another"));
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(fx.cache.len(), 2);
    }

    #[test]
    fn a_remembered_token_still_needs_each_routes_scopes() {
        let mut fx = Fixture::new("");
        let mut c = claims();
        c["scope"] = json!("state.read");
        let t = token(c);
        fx.grant("/rt", &t);
        assert_eq!(
            fx.decide("/machines/m1", &bearer(&t), now_seconds())
                .unwrap_err(),
            GatewayError::MissingScope {
                missing: "machines.read".into()
            }
        );
        assert_eq!(
            fx.cache.len(),
            1,
            "a refusal by scope does not forget the token"
        );
    }

    #[test]
    fn a_remembered_token_still_needs_its_organization_and_may_not_impersonate() {
        let mut fx = Fixture::new("");
        let t = token(claims());
        fx.grant("/orgs/org_a/admin", &t);
        let now = now_seconds();
        assert_eq!(
            fx.decide("/orgs/org_b/admin", &bearer(&t), now)
                .unwrap_err(),
            GatewayError::WrongOrg
        );
        let mut headers = bearer(&t);
        headers.insert(authorize::ORG_HEADER, HeaderValue::from_static("org_b"));
        assert_eq!(
            fx.decide("/rt", &headers, now).unwrap_err(),
            GatewayError::WrongOrg
        );
        let mut headers = bearer(&t);
        headers.insert(
            authorize::ACT_HEADER,
            HeaderValue::from_static(r#"{"sub":"x"}"#),
        );
        assert_eq!(
            fx.decide("/rt", &headers, now).unwrap_err(),
            GatewayError::ImpersonationDenied
        );
    }

    #[test]
    fn a_remembered_token_expires_on_time_and_is_forgotten() {
        let mut fx = Fixture::new("leeway_seconds = 5");
        let t = token(claims()); // exp = now + 60
        fx.grant("/rt", &t);
        let later = now_seconds() + 60 + 5 + 2;
        assert_eq!(
            fx.decide("/rt", &bearer(&t), later).unwrap_err(),
            GatewayError::InvalidToken(TokenFault::Expired)
        );
        assert_eq!(fx.cache.len(), 0);
        // And the clock is asked on every hit, before too: iat in the future.
        fx.grant("/rt", &t);
        assert_eq!(
            fx.decide("/rt", &bearer(&t), now_seconds() - 3600)
                .unwrap_err(),
            GatewayError::InvalidToken(TokenFault::IssuedInFuture)
        );
    }

    #[test]
    fn a_new_key_set_forgets_every_token() {
        let mut fx = Fixture::new("");
        let t = token(claims());
        let first = fx.grant("/rt", &t);
        // The key is revoked: the very next request is refused.
        fx.keys = Arc::new(KeySet::default());
        assert_eq!(
            fx.decide("/rt", &bearer(&t), now_seconds()).unwrap_err(),
            GatewayError::InvalidToken(TokenFault::UnknownKey)
        );
        assert_eq!(fx.cache.len(), 0);
        // Reloaded with the key again: verified anew, not the old grant.
        let (keys, _) = KeySet::build([&org_a(&fx.snap.config)]);
        fx.keys = Arc::new(keys);
        assert!(!Arc::ptr_eq(&first, &fx.grant("/rt", &t)));
    }

    #[test]
    fn a_new_config_forgets_every_token() {
        let mut fx = Fixture::new("");
        let t = token(claims());
        fx.grant("/rt", &t);
        let (snap, _) = setup_with(r#"audiences = ["https://elsewhere.example/"]"#);
        fx.snap = Arc::new(snap);
        assert_eq!(
            fx.decide("/rt", &bearer(&t), now_seconds()).unwrap_err(),
            GatewayError::InvalidToken(TokenFault::WrongAudience)
        );
    }

    #[test]
    fn refused_tokens_are_not_remembered() {
        let mut fx = Fixture::new("");
        let t = token(claims());
        // Another signature: one character in its middle changed.
        let at = t.len() - 10;
        let other = if &t[at..=at] == "A" { "B" } else { "A" };
        let forged = format!("{}{other}{}", &t[..at], &t[at + 1..]);
        for _ in 0..2 {
            assert_eq!(
                fx.decide("/rt", &bearer(&forged), now_seconds())
                    .unwrap_err(),
                GatewayError::InvalidToken(TokenFault::BadSignature)
            );
        }
        assert_eq!(fx.cache.len(), 0);
        assert_eq!(fx.cache.take_counts(), (0, 2), "each refusal was a miss");
        // A remembered token does not vouch for one that differs in its last byte.
        fx.grant("/rt", &t);
        assert!(fx.decide("/rt", &bearer(&forged), now_seconds()).is_err());
    }

    #[test]
    fn a_forgery_that_shares_a_tokens_signature_does_not_displace_it() {
        let mut fx = Fixture::new("token_cache_entries = 4");
        let t = token(claims());
        let first = fx.grant("/rt", &t);
        // Two more tokens turn the young table over: `t` is in the old one now.
        for i in 0..2 {
            fx.grant("/rt", &another_token(i));
        }
        // The same signature (so the same slot) on another payload.
        let (message, signature) = t.rsplit_once('.').unwrap();
        let (header, _) = message.split_once('.').unwrap();
        let mut forged_claims = claims();
        forged_claims["jti"] = json!("forged");
        let payload = URL_SAFE_NO_PAD.encode(forged_claims.to_string());
        let forged = format!("{header}.{payload}.{signature}");
        assert_eq!(
            fx.decide("/rt", &bearer(&forged), now_seconds())
                .unwrap_err(),
            GatewayError::InvalidToken(TokenFault::BadSignature)
        );
        fx.cache.take_counts();
        assert!(Arc::ptr_eq(&first, &fx.grant("/rt", &t)));
        assert_eq!(fx.cache.take_counts(), (1, 0), "still remembered");
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_the_tokens_in_use() {
        let mut fx = Fixture::new("token_cache_entries = 8");
        let busy = token(claims());
        let first = fx.grant("/rt", &busy);
        for i in 0..100 {
            fx.grant("/rt", &another_token(i));
            assert!(fx.cache.len() <= 8, "{} entries", fx.cache.len());
            assert!(Arc::ptr_eq(&first, &fx.grant("/rt", &busy)));
        }
    }

    #[test]
    fn no_entries_means_no_cache() {
        let mut fx = Fixture::new("token_cache_entries = 0");
        let t = token(claims());
        let first = fx.grant("/rt", &t);
        assert!(!Arc::ptr_eq(&first, &fx.grant("/rt", &t)));
        assert_eq!(fx.cache.len(), 0);
    }
}
