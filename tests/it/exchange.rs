//! Token exchange (RFC 8693) and anonymous sessions at `POST /tokens`, with identity providers
//! whose keys are made in the test (HS, RS, ES, EdDSA; inline, JWKS file and JWKS URL), every
//! RFC 6749 error, mapping edge cases, and State Backed's anonymous flow byte for byte.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use scopegate::exchange::records::{AnonymousRecord, IdpRecord, TokenProviderRecord};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::net::TcpListener;

use crate::support::token::now;
use crate::support::{eventually, RecordingUpstream, Req, TestGateway, TestKey};

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
const IDP_AUD: &str = "https://idp.example/api";
const IDP_ISS: &str = "https://idp.example/";
const SECRET: &str = "an-identity-provider-secret-of-40-chars!";

fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

fn exchange_req(gw: &TestGateway, body: String) -> Req {
    gw.request("POST", "/tokens")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
}

/// The standard exchange request for `service` of the gateway's organization.
fn exchange_form(gw: &TestGateway, service: &str, subject: &str) -> String {
    let audience = format!("https://tokens.statebacked.dev/{}/{service}", gw.org);
    form(&[
        ("grant_type", EXCHANGE),
        ("audience", &audience),
        ("requested_token_type", ACCESS),
        ("subject_token", subject),
    ])
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn subject(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

fn idp_claims() -> Value {
    let t = now();
    json!({"sub": "user-7", "email": "u7@example.com", "aud": IDP_AUD, "iss": IDP_ISS, "iat": t, "exp": t + 600})
}

fn idp(key: impl FnOnce(&mut IdpRecord), algorithms: &[&str]) -> IdpRecord {
    let mut r = IdpRecord {
        audience: Some(IDP_AUD.into()),
        issuer: Some(IDP_ISS.into()),
        algorithms: algorithms.iter().map(|s| s.to_string()).collect(),
        secret: None,
        public_key: None,
        jwks: None,
        jwks_url: None,
        mapping: json!({"sub.$": "$.sub", "email.$": "$.email"}).to_string(),
    };
    key(&mut r);
    r
}

/// A gateway with a production key, an identity provider and a token provider "app".
async fn setup(
    up: &RecordingUpstream,
    record: IdpRecord,
    provider_mapping: Value,
) -> (TestGateway, TestKey) {
    let gw = TestGateway::builder()
        .extra("[token_exchange]\njwks_refetch_cooldown_seconds = 2\njwks_timeout_ms = 1000\n")
        .spawn(up)
        .await;
    let key = gw
        .key(&[
            "events.write",
            "indexes.read",
            "instances.write",
            "state.read",
        ])
        .await;
    gw.store.upsert_idp(&gw.org, record).unwrap();
    gw.store
        .upsert_token_provider(
            &gw.org,
            TokenProviderRecord {
                service: "app".into(),
                key: key.id.clone(),
                mapping: provider_mapping.to_string(),
                lifetime_seconds: 600,
                scopes: None,
            },
        )
        .unwrap();
    wait_for_service(&gw, "app").await;
    (gw, key)
}

async fn wait_for_service(gw: &TestGateway, service: &str) {
    let live = gw.running.as_ref().unwrap().gateway.clone();
    let org = gw.org.clone();
    let service = service.to_owned();
    assert!(
        eventually(Duration::from_secs(5), || {
            let (live, org, service) = (live.clone(), org.clone(), service.clone());
            async move {
                live.keys.load().exchange(&org).is_some_and(|e| {
                    e.providers.contains_key(&service)
                        || (service == "anonymous" && e.anonymous.is_some())
                })
            }
        })
        .await,
        "the exchange settings never loaded"
    );
}

fn default_mapping() -> Value {
    json!({"sub.$": "$.sub", "email.$": "$.email", "via": "exchange"})
}

/// Exchanges and checks the minted token's shape; returns it.
async fn exchange_ok(gw: &TestGateway, subject: &str) -> String {
    let res = exchange_req(gw, exchange_form(gw, "app", subject))
        .send()
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.header("cache-control"), Some("no-store"));
    let body = res.json();
    assert_eq!(body["issued_token_type"], ACCESS);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 600);
    body["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_hs_identity_provider_token_is_exchanged_and_works_only_where_the_key_may_go() {
    let up = RecordingUpstream::start().await;
    let (gw, key) = setup(
        &up,
        idp(|r| r.secret = Some(SECRET.into()), &["HS256"]),
        default_mapping(),
    )
    .await;
    let token = exchange_ok(
        &gw,
        &subject(
            Algorithm::HS256,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            None,
            idp_claims(),
        ),
    )
    .await;
    let claims = claims_of(&token);
    assert_eq!(
        claims["act"],
        json!({"sub": "user-7", "email": "u7@example.com", "via": "exchange"})
    );
    assert_eq!(claims["aud"], "https://api.statebacked.dev/");
    assert!(
        claims.get("scope").is_none(),
        "an unrestricted provider adds no scope claim"
    );
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], key.id.as_str());
    // Accepted where the key's scopes allow, refused elsewhere.
    let res = gw.get("/machines/m1/i/i1").bearer(&token).send().await;
    assert_eq!(res.status, 200);
    assert_eq!(up.last().header("x-scopegate-sub"), Some("user-7"));
    gw.get("/machines")
        .bearer(&token)
        .send()
        .await
        .assert_error(403, "missing-scope");
    gw.get("/org-admin")
        .bearer(&token)
        .send()
        .await
        .assert_error(403, "missing-scope");
    assert_eq!(
        up.count(),
        1,
        "only the allowed request reached the upstream"
    );
}

#[tokio::test]
async fn a_provider_with_scopes_mints_a_narrowed_token() {
    let up = RecordingUpstream::start().await;
    let (gw, key) = setup(
        &up,
        idp(|r| r.secret = Some(SECRET.into()), &["HS256"]),
        default_mapping(),
    )
    .await;
    gw.store
        .upsert_token_provider(
            &gw.org,
            TokenProviderRecord {
                service: "reader".into(),
                key: key.id.clone(),
                mapping: json!({"sub.$": "$.sub"}).to_string(),
                lifetime_seconds: 60,
                scopes: Some(vec!["state.read".into()]),
            },
        )
        .unwrap();
    wait_for_service(&gw, "reader").await;
    let s = subject(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        None,
        idp_claims(),
    );
    let res = exchange_req(&gw, exchange_form(&gw, "reader", &s))
        .send()
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let token = res.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(claims_of(&token)["scope"], "state.read");
    assert_eq!(
        gw.get("/machines/m1/i/i1")
            .bearer(&token)
            .send()
            .await
            .status,
        200
    );
    gw.request("POST", "/machines/m1/i/i1/events")
        .bearer(&token)
        .send()
        .await
        .assert_error(403, "missing-scope");
}

fn rsa_key() -> (EncodingKey, String, Value) {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    use rsa::traits::PublicKeyParts;
    let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let public = private.to_public_key();
    let pem = private.to_pkcs8_pem(LineEnding::LF).unwrap();
    let jwk = json!({
        "kty": "RSA", "use": "sig", "alg": "RS256",
        "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
        "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
    });
    (
        EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        public.to_public_key_pem(LineEnding::LF).unwrap(),
        jwk,
    )
}

fn ec_key() -> (EncodingKey, String, Value) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = pair.public_key_raw();
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "alg": "ES256",
        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
    });
    (
        EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
        pair.public_key_pem(),
        jwk,
    )
}

fn ed_key() -> (EncodingKey, String) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    (
        EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).unwrap(),
        pair.public_key_pem(),
    )
}

#[tokio::test]
async fn rs_es_and_eddsa_identity_providers_with_public_keys() {
    let up = RecordingUpstream::start().await;
    let (rs, rs_pub, _) = rsa_key();
    let (gw, _) = setup(
        &up,
        idp(|r| r.public_key = Some(rs_pub), &["RS256", "PS256"]),
        default_mapping(),
    )
    .await;
    exchange_ok(&gw, &subject(Algorithm::RS256, &rs, None, idp_claims())).await;
    exchange_ok(&gw, &subject(Algorithm::PS256, &rs, None, idp_claims())).await;
    // An algorithm the provider does not list is refused even with the right key.
    let res = exchange_req(
        &gw,
        exchange_form(
            &gw,
            "app",
            &subject(Algorithm::RS512, &rs, None, idp_claims()),
        ),
    )
    .send()
    .await;
    assert_eq!(res.status, 400);
    assert_eq!(res.json()["error"], "invalid_grant");

    let (es, es_pub, _) = ec_key();
    gw.store
        .upsert_idp(&gw.org, idp(|r| r.public_key = Some(es_pub), &["ES256"]))
        .unwrap();
    let s = subject(Algorithm::ES256, &es, None, idp_claims());
    assert!(
        eventually(Duration::from_secs(5), || async {
            exchange_req(&gw, exchange_form(&gw, "app", &s))
                .send()
                .await
                .status
                == 200
        })
        .await
    );

    let (ed, ed_pub) = ed_key();
    gw.store
        .upsert_idp(&gw.org, idp(|r| r.public_key = Some(ed_pub), &["EdDSA"]))
        .unwrap();
    let s = subject(Algorithm::EdDSA, &ed, None, idp_claims());
    assert!(
        eventually(Duration::from_secs(5), || async {
            exchange_req(&gw, exchange_form(&gw, "app", &s))
                .send()
                .await
                .status
                == 200
        })
        .await
    );
    // HS/RS confusion: an HS256 token "signed" with the public key as HMAC secret is refused.
    let (_, es_pub2, _) = ec_key();
    let forged = subject(
        Algorithm::HS256,
        &EncodingKey::from_secret(es_pub2.as_bytes()),
        None,
        idp_claims(),
    );
    let res = exchange_req(&gw, exchange_form(&gw, "app", &forged))
        .send()
        .await;
    assert_eq!(res.json()["error"], "invalid_grant");
    assert_eq!(up.count(), 0);
}

/// A JWKS server: serves the current document, counts fetches, can go down.
struct JwksServer {
    url: String,
    doc: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
}

async fn jwks_server(keys: Vec<Value>) -> JwksServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    let doc = Arc::new(Mutex::new(json!({ "keys": keys })));
    let fetches = Arc::new(AtomicUsize::new(0));
    let down = Arc::new(AtomicBool::new(false));
    let (d, f, dn) = (doc.clone(), fetches.clone(), down.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (d, f, dn) = (d.clone(), f.clone(), dn.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let (d, f, dn) = (d.clone(), f.clone(), dn.clone());
                    async move {
                        f.fetch_add(1, Ordering::SeqCst);
                        let mut r = http::Response::new(Full::new(Bytes::from(
                            d.lock().unwrap().to_string(),
                        )));
                        if dn.load(Ordering::SeqCst) {
                            *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    JwksServer {
        url,
        doc,
        fetches,
        down,
    }
}

fn with_kid(mut jwk: Value, kid: &str) -> Value {
    jwk["kid"] = json!(kid);
    jwk
}

#[tokio::test]
async fn a_jwks_document_stored_with_the_provider() {
    let up = RecordingUpstream::start().await;
    let (a, _, a_jwk) = rsa_key();
    let (b, _, b_jwk) = ec_key();
    let jwks = json!({"keys": [with_kid(a_jwk, "a"), with_kid(b_jwk, "b")]}).to_string();
    let (gw, _) = setup(
        &up,
        idp(|r| r.jwks = Some(jwks), &["RS256", "ES256"]),
        default_mapping(),
    )
    .await;
    exchange_ok(&gw, &subject(Algorithm::RS256, &a, Some("a"), idp_claims())).await;
    exchange_ok(&gw, &subject(Algorithm::ES256, &b, Some("b"), idp_claims())).await;
    // The kid decides the key: the right signature under another kid is refused.
    let res = exchange_req(
        &gw,
        exchange_form(
            &gw,
            "app",
            &subject(Algorithm::RS256, &a, Some("b"), idp_claims()),
        ),
    )
    .send()
    .await;
    assert_eq!(res.json()["error"], "invalid_grant");
}

#[tokio::test]
async fn a_jwks_url_is_fetched_cached_rotated_and_its_outage_is_a_503() {
    let up = RecordingUpstream::start().await;
    let (k1, _, j1) = rsa_key();
    let server = jwks_server(vec![with_kid(j1, "k1")]).await;
    let (gw, _) = setup(
        &up,
        idp(|r| r.jwks_url = Some(server.url.clone()), &["RS256"]),
        default_mapping(),
    )
    .await;
    // Fetched once, then cached.
    for _ in 0..3 {
        exchange_ok(
            &gw,
            &subject(Algorithm::RS256, &k1, Some("k1"), idp_claims()),
        )
        .await;
    }
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1);

    // A flood of unknown kids fetches at most once per cooldown (2 s here).
    let before = server.fetches.load(Ordering::SeqCst);
    for i in 0..20 {
        let s = subject(
            Algorithm::RS256,
            &k1,
            Some(&format!("made-up-{i}")),
            idp_claims(),
        );
        let res = exchange_req(&gw, exchange_form(&gw, "app", &s))
            .send()
            .await;
        assert_eq!(res.json()["error"], "invalid_grant");
    }
    assert!(
        server.fetches.load(Ordering::SeqCst) - before <= 1,
        "the flood hammered the IdP"
    );

    // Rotation: a new key k2 appears at the URL; its first token triggers a refetch (once the
    // cooldown allows) and then works.
    let (k2, _, j2) = rsa_key();
    *server.doc.lock().unwrap() = json!({"keys": [with_kid(j2, "k2")]});
    let s2 = subject(Algorithm::RS256, &k2, Some("k2"), idp_claims());
    assert!(
        eventually(Duration::from_secs(5), || async {
            exchange_req(&gw, exchange_form(&gw, "app", &s2))
                .send()
                .await
                .status
                == 200
        })
        .await,
        "the rotated key was never fetched"
    );

    // The IdP goes down: cached keys keep working; an unknown kid that needs a fetch is a 503
    // temporarily_unavailable, not an invalid grant.
    server.down.store(true, Ordering::SeqCst);
    exchange_ok(&gw, &s2).await;
    let gw2 = TestGateway::builder().spawn(&up).await;
    let key2 = gw2
        .key(&[
            "state.read",
            "events.write",
            "indexes.read",
            "instances.write",
        ])
        .await;
    gw2.store
        .upsert_idp(
            &gw2.org,
            idp(|r| r.jwks_url = Some(server.url.clone()), &["RS256"]),
        )
        .unwrap();
    gw2.store
        .upsert_token_provider(
            &gw2.org,
            TokenProviderRecord {
                service: "app".into(),
                key: key2.id.clone(),
                mapping: "{}".into(),
                lifetime_seconds: 600,
                scopes: None,
            },
        )
        .unwrap();
    wait_for_service(&gw2, "app").await;
    let res = exchange_req(&gw2, exchange_form(&gw2, "app", &s2))
        .send()
        .await;
    assert_eq!(res.status, 503, "{}", res.text());
    assert_eq!(res.json()["error"], "temporarily_unavailable");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn every_rfc_6749_error() {
    let up = RecordingUpstream::start().await;
    let (gw, _) = setup(
        &up,
        idp(|r| r.secret = Some(SECRET.into()), &["HS256"]),
        default_mapping(),
    )
    .await;
    let good = subject(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        None,
        idp_claims(),
    );
    let aud = format!("https://tokens.statebacked.dev/{}/app", gw.org);
    let t = now();
    let expired = {
        let mut c = idp_claims();
        c["exp"] = json!(t - 3600);
        c["iat"] = json!(t - 7200);
        subject(
            Algorithm::HS256,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            None,
            c,
        )
    };
    let other_iss = {
        let mut c = idp_claims();
        c["iss"] = json!("https://someone-else/");
        c["aud"] = json!("https://someone-else/api");
        subject(
            Algorithm::HS256,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            None,
            c,
        )
    };
    let forged = subject(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"not-the-secret-not-the-secret-not-the"),
        None,
        idp_claims(),
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "no grant_type",
            form(&[("audience", &aud), ("subject_token", &good)]),
            "invalid_request",
        ),
        (
            "other grant",
            form(&[
                ("grant_type", "client_credentials"),
                ("audience", &aud),
                ("subject_token", &good),
            ]),
            "unsupported_grant_type",
        ),
        (
            "no subject",
            form(&[("grant_type", EXCHANGE), ("audience", &aud)]),
            "invalid_request",
        ),
        (
            "no audience",
            form(&[("grant_type", EXCHANGE), ("subject_token", &good)]),
            "invalid_request",
        ),
        (
            "token type",
            form(&[
                ("grant_type", EXCHANGE),
                ("audience", &aud),
                ("subject_token", &good),
                (
                    "requested_token_type",
                    "urn:ietf:params:oauth:token-type:id_token",
                ),
            ]),
            "invalid_request",
        ),
        (
            "repeated",
            form(&[
                ("grant_type", EXCHANGE),
                ("grant_type", EXCHANGE),
                ("audience", &aud),
                ("subject_token", &good),
            ]),
            "invalid_request",
        ),
        (
            "other base",
            form(&[
                ("grant_type", EXCHANGE),
                ("audience", &format!("https://evil.example/{}/app", gw.org)),
                ("subject_token", &good),
            ]),
            "invalid_target",
        ),
        (
            "unknown org",
            form(&[
                ("grant_type", EXCHANGE),
                ("audience", "https://tokens.statebacked.dev/org_nobody/app"),
                ("subject_token", &good),
            ]),
            "invalid_target",
        ),
        (
            "unknown service",
            form(&[
                ("grant_type", EXCHANGE),
                (
                    "audience",
                    &format!("https://tokens.statebacked.dev/{}/nope", gw.org),
                ),
                ("subject_token", &good),
            ]),
            "invalid_target",
        ),
        (
            "traversal in org",
            form(&[
                ("grant_type", EXCHANGE),
                ("audience", "https://tokens.statebacked.dev/../app"),
                ("subject_token", &good),
            ]),
            "invalid_target",
        ),
        (
            "anonymous off",
            exchange_form(&gw, "anonymous-statebacked-dev", &good),
            "invalid_target",
        ),
        (
            "expired",
            exchange_form(&gw, "app", &expired),
            "invalid_grant",
        ),
        (
            "forged",
            exchange_form(&gw, "app", &forged),
            "invalid_grant",
        ),
        (
            "no idp matches",
            exchange_form(&gw, "app", &other_iss),
            "invalid_grant",
        ),
        (
            "not a jwt",
            exchange_form(&gw, "app", "garbage"),
            "invalid_grant",
        ),
        (
            "alg none",
            exchange_form(
                &gw,
                "app",
                &format!(
                    "{}.{}.",
                    URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
                    good.split('.').nth(1).unwrap()
                ),
            ),
            "invalid_grant",
        ),
    ];
    for (name, body, error) in cases {
        let res = exchange_req(&gw, body).send().await;
        assert_eq!(res.status, 400, "{name}: {}", res.text());
        let json = res.json();
        assert_eq!(json["error"], error, "{name}: {json}");
        assert!(
            json["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{name}"
        );
        assert!(
            !res.text().contains(&good[..30]),
            "{name}: the subject token is echoed"
        );
    }
    let res = gw
        .request("POST", "/tokens")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await;
    assert_eq!(res.json()["error"], "invalid_request");
    assert_eq!(up.count(), 0);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("scopegate_token_exchanges_total{kind=\"idp\",result=\"invalid_grant\"}"),
        "{metrics}"
    );
    assert!(!metrics.contains(&gw.org), "org ids must not be labels");
}

#[tokio::test]
async fn mapping_edge_cases() {
    let up = RecordingUpstream::start().await;
    let idp_mapping = json!({"sub.$": "$.sub", "roles.$": "$.app.roles[*]", "tenant.$": "$.app.tenant", "missing.$": "$.nope", "fixed": {"kind": "human", "level.$": "$.app.level"}});
    let record = idp(
        |r| {
            r.secret = Some(SECRET.into());
            r.mapping = idp_mapping.to_string();
        },
        &["HS256"],
    );
    let provider = json!({"sub.$": "$.sub", "roles.$": "$.roles", "org": {"tenant.$": "$.tenant"}, "kind.$": "$.fixed.kind", "level.$": "$.fixed.level", "literal": [1, "two", null]});
    let (gw, _) = setup(&up, record, provider).await;
    let mut c = idp_claims();
    c["app"] = json!({"roles": ["admin", "viewer"], "tenant": "t1", "level": 3});
    let token = exchange_ok(
        &gw,
        &subject(
            Algorithm::HS256,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            None,
            c,
        ),
    )
    .await;
    assert_eq!(
        claims_of(&token)["act"],
        json!({"sub": "user-7", "roles": ["admin", "viewer"], "org": {"tenant": "t1"}, "kind": "human", "level": 3, "literal": [1, "two", null]})
    );
    // Mapped claims over 8 KiB are refused with a reason (a provider that copies a 3 KB claim
    // three times; the subject token itself stays under the token size limit).
    let provider_key = gw.store.list_keys(Some(&gw.org)).unwrap()[0].id.clone();
    gw.store
        .upsert_token_provider(
            &gw.org,
            TokenProviderRecord {
                service: "copies".into(),
                key: provider_key,
                mapping: json!({"a.$": "$.sub", "b.$": "$.sub", "c.$": "$.sub"}).to_string(),
                lifetime_seconds: 60,
                scopes: None,
            },
        )
        .unwrap();
    wait_for_service(&gw, "copies").await;
    let mut big = idp_claims();
    big["sub"] = json!("x".repeat(3000));
    let big = subject(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        None,
        big,
    );
    let res = exchange_req(&gw, exchange_form(&gw, "copies", &big))
        .send()
        .await;
    assert_eq!(res.json()["error"], "invalid_grant");
    assert!(
        res.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("mapping"),
        "{}",
        res.text()
    );
    // An invalid mapping never gets into a key file.
    let err = gw
        .store
        .upsert_idp(
            &gw.org,
            idp(
                |r| {
                    r.secret = Some(SECRET.into());
                    r.mapping = r#"{"a.$": "$[?"}"#.into();
                },
                &["HS256"],
            ),
        )
        .unwrap_err();
    assert!(err.to_string().contains("JSONPath"), "{err}");
}

/// Exactly what State Backed's client (`anonymousTokenConfig`) builds: header
/// `{"alg":"HS256","typ":"JWT"}`, claims `{aud, iss, iat, exp, sid, did}` in that order with
/// aud = iss = `https://{orgId}.anonymous.auth.statebacked.dev`, HMAC-SHA256 over the org id's
/// UTF-8 bytes.
fn anonymous_token(org: &str, sid: &str, did: &str, extra: &str) -> String {
    let scope = format!("https://{org}.anonymous.auth.statebacked.dev");
    let iat = now();
    let header = r#"{"alg":"HS256","typ":"JWT"}"#;
    let claims = format!(
        r#"{{"aud":"{scope}","iss":"{scope}","iat":{iat},"exp":{},"sid":"{sid}","did":"{did}"{extra}}}"#,
        iat + 86400
    );
    let data = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(org.as_bytes()).unwrap();
    mac.update(data.as_bytes());
    format!(
        "{data}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

#[tokio::test]
async fn anonymous_sessions_mint_exactly_sid_did_and_auth() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    // The signing key holds more than production: the minted token is narrowed back to it.
    let key = gw
        .key(&[
            "events.write",
            "indexes.read",
            "instances.write",
            "state.read",
            "org-keys.write",
            "machines.read",
        ])
        .await;
    let anon = anonymous_token(&gw.org, "session-1", "device-1", "");
    // Off by default.
    let res = exchange_req(&gw, exchange_form(&gw, "anonymous-statebacked-dev", &anon))
        .send()
        .await;
    assert_eq!(res.json()["error"], "invalid_target");

    gw.store
        .set_anonymous(
            &gw.org,
            Some(AnonymousRecord {
                enabled: true,
                key: None,
                lifetime_seconds: 3600,
            }),
        )
        .unwrap();
    wait_for_service(&gw, "anonymous").await;
    // Extra claims in the subject token — trying to become someone, or to get scopes — are
    // dropped: the act is exactly {sid, did, auth}.
    let greedy = anonymous_token(
        &gw.org,
        "session-1",
        "device-1",
        r#","sub":"admin","scope":"org-keys.write","act":{"sub":"root"}"#,
    );
    for subject_token in [&anon, &greedy] {
        let res = exchange_req(
            &gw,
            exchange_form(&gw, "anonymous-statebacked-dev", subject_token),
        )
        .send()
        .await;
        assert_eq!(res.status, 200, "{}", res.text());
        let token = res.json()["access_token"].as_str().unwrap().to_owned();
        let claims = claims_of(&token);
        assert_eq!(
            claims["act"],
            json!({"sid": "session-1", "did": "device-1", "auth": "anonymous"})
        );
        assert_eq!(
            claims["scope"],
            "events.write indexes.read instances.write state.read"
        );
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["kid"], key.id.as_str());
        // Production routes work; beyond them nothing does, whatever the key holds.
        assert_eq!(
            gw.get("/machines/m1/i/i1")
                .bearer(&token)
                .send()
                .await
                .status,
            200
        );
        gw.get("/org-admin")
            .bearer(&token)
            .send()
            .await
            .assert_error(403, "missing-scope");
        gw.get("/machines")
            .bearer(&token)
            .send()
            .await
            .assert_error(403, "missing-scope");
        gw.get("/keys")
            .bearer(&token)
            .send()
            .await
            .assert_error(403, "missing-scope");
        // Impersonation needs org-keys.write, which the anonymous token never has.
        gw.get("/machines/m1/i/i1")
            .bearer(&token)
            .header("x-statebacked-act", r#"{"sub":"root"}"#)
            .send()
            .await
            .assert_error(403, "missing-scope");
    }
    // Signed with another org's id, or missing sid: refused.
    let wrong = anonymous_token("org_other", "s", "d", "");
    let res = exchange_req(&gw, exchange_form(&gw, "anonymous-statebacked-dev", &wrong))
        .send()
        .await;
    assert_eq!(res.json()["error"], "invalid_grant");
    let no_sid = anonymous_token(&gw.org, "", "d", "");
    let res = exchange_req(
        &gw,
        exchange_form(&gw, "anonymous-statebacked-dev", &no_sid),
    )
    .send()
    .await;
    assert_eq!(res.json()["error"], "invalid_grant");
    // The minted token is an ordinary token of the key: deleting the key ends it.
    let res = exchange_req(&gw, exchange_form(&gw, "anonymous-statebacked-dev", &anon))
        .send()
        .await;
    let token = res.json()["access_token"].as_str().unwrap().to_owned();
    gw.store.delete_key(&key.id).unwrap();
    gw.wait_for_key(&key.id, false).await;
    gw.get("/machines/m1/i/i1")
        .bearer(&token)
        .send()
        .await
        .assert_error(401, "invalid-token");
    let res = exchange_req(&gw, exchange_form(&gw, "anonymous-statebacked-dev", &anon))
        .send()
        .await;
    assert_eq!(
        res.json()["error"],
        "invalid_target",
        "no production key is left to sign"
    );
}

fn cli(gw: &TestGateway, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .arg("--config")
        .arg(&gw.config_path)
        .args(args)
        .env_remove("SCOPEGATE_IDP_SECRET")
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_cli_manages_idps_token_providers_and_anonymous_sessions() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let key = gw
        .key(&[
            "events.write",
            "indexes.read",
            "instances.write",
            "state.read",
        ])
        .await;
    let org = gw.org.clone();
    let (_, ec_pub, _) = ec_key();
    let pem = gw.dir.path().join("idp.pem");
    std::fs::write(&pem, &ec_pub).unwrap();

    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    ok(cli(
        &gw,
        &[
            "idps",
            "upsert",
            "--org",
            &org,
            "--issuer",
            IDP_ISS,
            "--algorithm",
            "ES256",
            "--public-key",
            pem.to_str().unwrap(),
            "--mapping",
            r#"{"sub.$":"$.sub"}"#,
        ],
    ));
    ok(cli(
        &gw,
        &[
            "idps",
            "upsert",
            "--org",
            &org,
            "--audience",
            "https://hs.example/",
            "--algorithm",
            "HS256",
            "--key",
            SECRET,
        ],
    ));
    let listed = ok(cli(&gw, &["--json", "idps", "list", "--org", &org]));
    assert!(!listed.contains(SECRET), "a shared secret was listed");
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(listed[0]["key"], "public-key");
    assert_eq!(listed[1]["key"], "secret");
    ok(cli(
        &gw,
        &[
            "idps",
            "delete",
            "--org",
            &org,
            "--audience",
            "https://hs.example/",
        ],
    ));

    let saved = ok(cli(
        &gw,
        &[
            "--json",
            "token-providers",
            "upsert",
            "--org",
            &org,
            "--service",
            "web",
            "--key",
            &key.id,
            "--lifetime",
            "15m",
        ],
    ));
    let saved: Value = serde_json::from_str(&saved).unwrap();
    assert_eq!(
        saved["audience"],
        format!("https://tokens.statebacked.dev/{org}/web")
    );
    let listed: Value = serde_json::from_str(&ok(cli(
        &gw,
        &["--json", "token-providers", "list", "--org", &org],
    )))
    .unwrap();
    assert_eq!(listed[0]["lifetime_seconds"], 900);
    wait_for_service(&gw, "web").await;

    // Refusals are clear and change nothing.
    for (args, why) in [
        (
            vec![
                "token-providers",
                "upsert",
                "--org",
                &org,
                "--service",
                "x",
                "--key",
                "sbk_nope",
            ],
            "not a key",
        ),
        (
            vec![
                "idps",
                "upsert",
                "--org",
                &org,
                "--algorithm",
                "HS256",
                "--key",
                SECRET,
            ],
            "audience, an issuer",
        ),
        (
            vec![
                "idps",
                "upsert",
                "--org",
                &org,
                "--issuer",
                "i",
                "--algorithm",
                "RS256",
                "--key",
                SECRET,
            ],
            "HS256",
        ),
        (
            vec![
                "token-providers",
                "upsert",
                "--org",
                &org,
                "--service",
                "bad/name",
                "--key",
                &key.id,
            ],
            "service name",
        ),
        (
            vec![
                "token-providers",
                "upsert",
                "--org",
                &org,
                "--service",
                "long",
                "--key",
                &key.id,
                "--lifetime",
                "2d",
            ],
            "lifetime",
        ),
    ] {
        let out = cli(&gw, &args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{args:?}: {err}");
    }
    ok(cli(&gw, &["anonymous", "enable", "--org", &org]));
    wait_for_service(&gw, "anonymous").await;
    ok(cli(&gw, &["anonymous", "disable", "--org", &org]));
    let file = gw.store.org_file(&org).unwrap();
    assert!(file.anonymous.is_none());
    assert_eq!(file.idps.len(), 1);
    assert_eq!(file.token_providers.len(), 1);
}
