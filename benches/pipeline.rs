//! What this measures: the per-request work of the gateway without any network.
//!
//! - `verify/HS256|HS384|HS512`: our token verification per algorithm, next to
//!   `verify/jsonwebtoken-HS*`, `jsonwebtoken::decode` of the same token with an equivalent
//!   `Validation` (same audience, `exp` and `aud` required, `nbf` checked, same leeway), as the
//!   baseline measured in the same run.
//! - `route/statebacked-table`: route match on State Backed's full route table
//!   (`config/statebacked.toml`); `route/generated-1000-hit` and `route/generated-1000-miss`: a
//!   generated table of 1,000 routes mixing static and `{param}` segments, looked up with a path
//!   that matches one of the last routes, and with a path near the end that matches nothing.
//! - `headers/rewrite`: `prepare_headers` on the header set the State Backed JS client sends
//!   through Node's fetch (the clone of the header map is setup, not timed).
//! - `decide/allow` (normalize → route → token → verify → authorize → upstream URL, Authorization
//!   header only), `decide/allow-cached` (the same through a worker's token cache that has seen
//!   the token: what `serve` does for a client's second request on), `decide/allow+headers` (the same on the JS client's full header set, then the
//!   header rewrite: everything in-process before the upstream request is sent) and
//!   `decide/refuse-bad-signature` (the 401 path: decide, then the error response).
//!
//! Run with: `cargo bench --bench pipeline` (add `-- verify` to run one group, e.g. `-- route/`).
//! Warm-up 1 s and measurement 2 s per bench, so the whole file takes about a minute.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use scopegate::config::Config;
use scopegate::gateway::Snapshot;
use scopegate::keys::store::parse_org_file;
use scopegate::keys::KeySet;
use scopegate::pipeline::forward::{prepare_headers, ClientSide};
use scopegate::pipeline::token_cache::TokenCache;
use scopegate::pipeline::verify::Claims;
use scopegate::pipeline::{decide, decide_cached, now_seconds};
use serde_json::json;

const SECRET: &str = "sbsec_0123456789abcdef0123456789abcdef0123456";
const EXAMPLE: &str = include_str!("../config/statebacked.toml");
const ORG: &str = "org_bench";
/// The route the whole-pipeline benches take: POST an event (scope `events.write`).
const EVENTS: &str = "/machines/m1/i/i1/events";

fn parse_config(text: &str) -> Config {
    scopegate::config::parse(Path::new("/etc/scopegate/scopegate.toml"), text).expect("config")
}

fn setup(alg: &str) -> (Snapshot, KeySet) {
    let config = parse_config(EXAMPLE);
    let org = parse_org_file(
        Path::new("/k/org_bench.toml"),
        &format!(
            "[org]\nid = \"{ORG}\"\nname = \"b\"\ncreated_at = \"x\"\n[[keys]]\nid = \"sbk_bench\"\nname = \"k\"\nsecret = \"{SECRET}\"\nscopes = [\"state.read\", \"events.write\"]\nalgorithm = \"{alg}\"\ncreated_at = \"x\"\n"
        ),
        &config.auth.catalog,
    )
    .expect("key file");
    let (keys, _) = KeySet::build([&org]);
    (
        Snapshot::build(Arc::new(config), None).expect("upstream clients"),
        keys,
    )
}

fn token(alg: Algorithm) -> String {
    let mut header = Header::new(alg);
    header.typ = None;
    header.kid = Some("sbk_bench".into());
    let now = now_seconds();
    let claims = json!({"act": {"sub": "user-1"}, "aud": "https://api.statebacked.dev/",
        "exp": now + 3600, "iss": "https://bench/", "iat": now});
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// The headers `@statebacked/client` sends for an event through Node's fetch (undici): its own
/// authorization, content-type and org header, and what undici adds.
fn js_client_headers(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("host", "api.statebacked.dev"),
        ("connection", "keep-alive"),
        ("content-type", "application/json"),
        ("authorization", &format!("Bearer {token}")),
        ("x-statebacked-org-id", ORG),
        ("accept", "*/*"),
        ("accept-language", "*"),
        ("sec-fetch-mode", "cors"),
        ("user-agent", "node"),
        ("accept-encoding", "gzip, deflate"),
        ("content-length", "64"),
    ] {
        headers.insert(
            http::header::HeaderName::from_static(name),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    headers
}

/// The client's address as the connection formats it once.
static PEER_IP: HeaderValue = HeaderValue::from_static("203.0.113.7");

fn client_side<'a>(snap: &Snapshot, host: Option<&'a HeaderValue>) -> ClientSide<'a> {
    ClientSide {
        peer_ip: &PEER_IP,
        proto: "http",
        trust_forwarded: snap.config.server.trust_forwarded_headers,
        host,
    }
}

fn verify(c: &mut Criterion) {
    let mut group = c.benchmark_group("verify");
    for (name, alg) in [
        ("HS256", Algorithm::HS256),
        ("HS384", Algorithm::HS384),
        ("HS512", Algorithm::HS512),
    ] {
        let (snap, keys) = setup(name);
        let t = token(alg);
        let now = now_seconds();
        group.bench_function(name, |b| {
            b.iter(|| {
                snap.verifier
                    .verify(&keys, std::hint::black_box(&t), now)
                    .unwrap()
            })
        });

        // The library's equivalent: the key's algorithm only, the configured audiences, exp
        // and aud required, nbf checked when present, the configured leeway. Claims are parsed
        // into the very type our verifier fills. (It reads the clock itself on every call.)
        let auth = &snap.config.auth;
        let mut validation = Validation::new(alg);
        validation.set_audience(&auth.audiences);
        validation.set_required_spec_claims(&["exp", "aud"]);
        validation.validate_exp = auth.require_exp;
        validation.validate_nbf = true;
        validation.leeway = auth.leeway_seconds;
        let key = DecodingKey::from_secret(SECRET.as_bytes());
        jsonwebtoken::decode::<Claims>(&t, &key, &validation).expect("the library accepts it");
        group.bench_function(format!("jsonwebtoken-{name}"), |b| {
            b.iter(|| {
                jsonwebtoken::decode::<Claims>(std::hint::black_box(&t), &key, &validation).unwrap()
            })
        });
    }
    group.finish();
}

/// Config text with `n` routes: groups of ten per service, static and `{param}` segments mixed
/// (a static segment next to a parameter at the same position, one catch-all per service).
fn generated_routes(n: usize) -> String {
    const SHAPES: [(&str, &str, &str); 10] = [
        ("GET", "/svc{s}/items", "state.read"),
        ("POST", "/svc{s}/items", "events.write"),
        ("GET", "/svc{s}/items/search", "state.read"),
        ("GET", "/svc{s}/items/{item}", "state.read"),
        ("DELETE", "/svc{s}/items/{item}", "instances.admin"),
        ("POST", "/svc{s}/items/{item}/events", "events.write"),
        ("GET", "/svc{s}/items/{item}/events/{event}", "events.read"),
        ("PUT", "/svc{s}/config", "machines.write"),
        ("GET", "/svc{s}/orgs/{org}/members/{member}", "org.read"),
        ("GET", "/svc{s}/files/{*rest}", "state.read"),
    ];
    let mut text = String::from("[upstreams.main]\nurl = \"http://127.0.0.1:3000\"\n");
    for i in 0..n {
        let (method, path, scope) = SHAPES[i % SHAPES.len()];
        let path = path.replace("{s}", &(i / SHAPES.len()).to_string());
        write!(
            text,
            "\n[[routes]]\nmethods = [\"{method}\"]\npath = \"{path}\"\nscopes = [\"{scope}\"]\nupstream = \"main\"\n"
        )
        .unwrap();
    }
    text
}

fn route_match(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    let (snap, _) = setup("HS256");
    let routes = &snap.config.routes;
    group.bench_function("statebacked-table", |b| {
        b.iter(|| {
            routes
                .lookup(&Method::POST, std::hint::black_box(EVENTS))
                .unwrap()
        })
    });

    let generated = parse_config(&generated_routes(1000));
    let routes = &generated.routes;
    // Configured routes; the built-in ones (keys API, dashboard, …) come on top, at line 0.
    assert_eq!(routes.routes().iter().filter(|r| r.line > 0).count(), 1000);
    let hit = "/svc99/items/i1/events";
    let miss = "/svc99/items/i1/nothing";
    assert_eq!(
        &*routes.lookup(&Method::POST, hit).unwrap().route.template,
        "/svc99/items/{item}/events"
    );
    assert!(routes.lookup(&Method::POST, miss).is_err());
    group.bench_function("generated-1000-hit", |b| {
        b.iter(|| {
            routes
                .lookup(&Method::POST, std::hint::black_box(hit))
                .unwrap()
        })
    });
    group.bench_function("generated-1000-miss", |b| {
        b.iter(|| {
            routes
                .lookup(&Method::POST, std::hint::black_box(miss))
                .unwrap_err()
        })
    });
    group.finish();
}

fn header_rewrite(c: &mut Criterion) {
    let (snap, keys) = setup("HS256");
    let inbound = js_client_headers(&token(Algorithm::HS256));
    let uri: Uri = EVENTS.parse().unwrap();
    let decision = decide(&snap, &keys, &Method::POST, &uri, &inbound, now_seconds())
        .result
        .expect("allowed");
    let permit = decision.permit;
    let keep_authorization = decision.route.forward_token;
    let host = inbound.get(http::header::HOST).cloned();
    let client = client_side(&snap, host.as_ref());

    let mut group = c.benchmark_group("headers");
    group.bench_function("rewrite", |b| {
        b.iter_batched(
            || inbound.clone(),
            |mut headers| {
                prepare_headers(
                    &mut headers,
                    &permit,
                    &snap.identity,
                    client,
                    keep_authorization,
                );
                headers
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn whole_decision(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    let (snap, keys) = setup("HS256");
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {}", token(Algorithm::HS256))).unwrap(),
    );
    let uri: Uri = EVENTS.parse().unwrap();
    let now = now_seconds();
    group.bench_function("allow", |b| {
        b.iter(|| {
            decide(
                &snap,
                &keys,
                &Method::POST,
                std::hint::black_box(&uri),
                &headers,
                now,
            )
            .result
            .unwrap()
        })
    });

    // What `serve` runs: the same request, the token remembered by the worker's cache after
    // the first iteration (the clock, audience, scopes and org are still checked each time).
    let (cached_snap, cached_keys) = setup("HS256");
    let (snap_arc, keys_arc) = (Arc::new(cached_snap), Arc::new(cached_keys));
    let mut cache = TokenCache::default();
    group.bench_function("allow-cached", |b| {
        b.iter(|| {
            decide_cached(
                &snap_arc,
                &keys_arc,
                &mut cache,
                &Method::POST,
                std::hint::black_box(&uri),
                &headers,
                now,
            )
            .result
            .unwrap()
        })
    });

    // What the handler does before sending upstream: decide on the request head, then rewrite
    // its headers with the permit.
    let inbound = js_client_headers(&token(Algorithm::HS256));
    let host = inbound.get(http::header::HOST).cloned();
    let client = client_side(&snap, host.as_ref());
    group.bench_function("allow+headers", |b| {
        b.iter_batched(
            || inbound.clone(),
            |mut headers| {
                let decision = decide(
                    &snap,
                    &keys,
                    &Method::POST,
                    std::hint::black_box(&uri),
                    &headers,
                    now,
                )
                .result
                .unwrap();
                prepare_headers(
                    &mut headers,
                    &decision.permit,
                    &snap.identity,
                    client,
                    decision.route.forward_token,
                );
                (decision, headers)
            },
            BatchSize::SmallInput,
        )
    });

    // The same request signed with another secret: refused at the signature, answered 401.
    let mut forged = inbound.clone();
    let bad = {
        let good = token(Algorithm::HS256);
        let (message, _) = good.rsplit_once('.').unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.typ = None;
        header.kid = Some("sbk_bench".into());
        let other = jsonwebtoken::encode(
            &header,
            &json!({"aud": "https://api.statebacked.dev/", "exp": now + 3600}),
            &EncodingKey::from_secret(b"not the key's secret"),
        )
        .unwrap();
        format!("{message}.{}", other.rsplit_once('.').unwrap().1)
    };
    forged.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {bad}")).unwrap(),
    );
    let refused = decide(&snap, &keys, &Method::POST, &uri, &forged, now)
        .result
        .expect_err("a bad signature is refused");
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(refused.reason(), "bad-signature");
    group.bench_function("refuse-bad-signature", |b| {
        b.iter(|| {
            let error = decide(
                &snap,
                &keys,
                &Method::POST,
                std::hint::black_box(&uri),
                &forged,
                now,
            )
            .result
            .unwrap_err();
            error.into_response()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = verify, route_match, header_rewrite, whole_decision
}
criterion_main!(benches);
