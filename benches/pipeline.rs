//! What this measures: the per-request decision work without any network — token verification
//! (HS256/384/512), route matching on State Backed's full route table, and the whole `decide`
//! pipeline (normalize → route → token → verify → authorize → upstream URL).
//!
//! Run with: `cargo bench --bench pipeline` (add `-- verify` to run one group).

use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method, Uri};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use scopegate::gateway::Snapshot;
use scopegate::keys::store::parse_org_file;
use scopegate::keys::KeySet;
use scopegate::pipeline::{decide, now_seconds};
use serde_json::json;

const SECRET: &str = "sbsec_0123456789abcdef0123456789abcdef0123456";
const EXAMPLE: &str = include_str!("../config/statebacked.toml");

fn setup(alg: &str) -> (Snapshot, KeySet) {
    let config = scopegate::config::parse(Path::new("/etc/scopegate/scopegate.toml"), EXAMPLE)
        .expect("example config");
    let org = parse_org_file(
        Path::new("/k/org_bench.toml"),
        &format!(
            "[org]\nid = \"org_bench\"\nname = \"b\"\ncreated_at = \"x\"\n[[keys]]\nid = \"sbk_bench\"\nname = \"k\"\nsecret = \"{SECRET}\"\nscopes = [\"state.read\", \"events.write\"]\nalgorithm = \"{alg}\"\ncreated_at = \"x\"\n"
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
    }
    group.finish();
}

fn route_match(c: &mut Criterion) {
    let (snap, _) = setup("HS256");
    let routes = &snap.config.routes;
    c.bench_function("route/statebacked-table", |b| {
        b.iter(|| {
            routes
                .lookup(
                    &Method::POST,
                    std::hint::black_box("/machines/m1/i/i1/events"),
                )
                .unwrap()
        })
    });
}

fn whole_decision(c: &mut Criterion) {
    let (snap, keys) = setup("HS256");
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {}", token(Algorithm::HS256))).unwrap(),
    );
    let uri: Uri = "/machines/m1/i/i1/events".parse().unwrap();
    let now = now_seconds();
    c.bench_function("decide/allow", |b| {
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
}

criterion_group!(benches, verify, route_match, whole_decision);
criterion_main!(benches);
