//! Upstreams over https:// and HTTP/2, with real peers: a certificate authority made in the
//! test (rcgen), a recording upstream serving over tokio-rustls or h2c, and the gateway
//! trusting the CA through `ca_file` — or the system's roots, which never know it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::support::child::ChildGateway;
use crate::support::{eventually, mint, RecordingUpstream, TestGateway};

const READ: &str = "/machines/m1/i/i1";

/// A CA, and a server certificate it signed.
struct TestCa {
    ca_pem: String,
    leaf_pem: String,
    leaf_key_pem: String,
}

/// A fresh CA whose leaf names `names` (IP addresses become IP SANs).
fn ca_with_leaf_for(names: &[&str]) -> TestCa {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "scopegate test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);

    let mut leaf =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "scopegate test upstream");
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    TestCa {
        ca_pem: ca_cert.pem(),
        leaf_pem: leaf_cert.pem(),
        leaf_key_pem: leaf_key.serialize_pem(),
    }
}

fn test_ca() -> TestCa {
    ca_with_leaf_for(&["127.0.0.1", "localhost"])
}

/// The upstream's TLS config: the CA's leaf, offering `alpn`.
fn server_tls(ca: &TestCa, alpn: &[&[u8]]) -> rustls::ServerConfig {
    let chain = vec![CertificateDer::from_pem_slice(ca.leaf_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(ca.leaf_key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

fn https_url(up: &RecordingUpstream) -> String {
    format!("https://127.0.0.1:{}", up.addr.port())
}

/// A gateway in front of `up` at `url`, trusting `ca` through `ca_file` when given.
async fn gateway(
    up: &RecordingUpstream,
    url: &str,
    ca: Option<&TestCa>,
    protocol: Option<&str>,
) -> TestGateway {
    let mut builder = TestGateway::builder().upstream_url(url);
    if let Some(ca) = ca {
        builder = builder
            .file("upstream-ca.pem", &ca.ca_pem)
            .upstream_setting("ca_file = \"upstream-ca.pem\"");
    }
    if let Some(protocol) = protocol {
        builder = builder.upstream_setting(&format!("protocol = \"{protocol}\""));
    }
    builder.spawn(up).await
}

#[tokio::test]
async fn https_upstream_signed_by_the_ca_file_is_forwarded_over_one_pooled_connection() {
    let ca = test_ca();
    // Offers h2 too, like most servers: an http1 upstream must not take it.
    let up = RecordingUpstream::builder()
        .tls(server_tls(&ca, &[b"h2", b"http/1.1"]))
        .start()
        .await;
    let gw = gateway(&up, &https_url(&up), Some(&ca), None).await;
    let key = gw.key(&["state.read"]).await;
    let token = mint(&key).sign();

    for i in 0..5 {
        let res = gw.get(READ).bearer(&token).send().await;
        assert_eq!(res.status, 200, "request {i}: {}", res.text());
    }
    assert_eq!(up.count(), 5);
    let seen = up.last();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.alpn, None, "an http1 upstream offers no ALPN");
    assert_eq!(seen.path_and_query, READ);
    assert_eq!(seen.header("x-scopegate-org"), Some(gw.org.as_str()));
    assert_eq!(seen.header("x-scopegate-key"), Some(key.id.as_str()));
    assert_eq!(seen.header("x-scopegate-scopes"), Some("state.read"));
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(
        seen.header("host"),
        Some(format!("127.0.0.1:{}", up.addr.port()).as_str())
    );
    assert_eq!(
        up.connections(),
        1,
        "five sequential requests should share one pooled TLS connection"
    );
}

#[tokio::test]
async fn https_upstream_the_system_roots_do_not_know_is_a_502_and_nothing_is_served() {
    let ca = test_ca();
    let up = RecordingUpstream::builder()
        .tls(server_tls(&ca, &[b"http/1.1"]))
        .start()
        .await;
    let gw = gateway(&up, &https_url(&up), None, None).await;
    let key = gw.key(&["state.read"]).await;

    gw.get(READ)
        .bearer(&mint(&key).sign())
        .send()
        .await
        .assert_error(502, "bad-gateway");
    // The gateway did reach the upstream: the TLS handshake is what it refused.
    assert!(up.connections() >= 1, "the gateway never connected");
    assert_eq!(
        up.count(),
        0,
        "a request was served over an unverified connection"
    );
}

#[tokio::test]
async fn a_certificate_for_another_name_is_a_502_even_from_a_trusted_ca() {
    let ca = ca_with_leaf_for(&["upstream.example"]);
    let up = RecordingUpstream::builder()
        .tls(server_tls(&ca, &[b"http/1.1"]))
        .start()
        .await;
    let gw = gateway(&up, &https_url(&up), Some(&ca), None).await;
    let key = gw.key(&["state.read"]).await;

    gw.get(READ)
        .bearer(&mint(&key).sign())
        .send()
        .await
        .assert_error(502, "bad-gateway");
    assert!(up.connections() >= 1, "the gateway never connected");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn h2_upstream_over_https_negotiates_alpn_h2_and_multiplexes_one_connection() {
    let ca = test_ca();
    let up = RecordingUpstream::builder()
        .tls(server_tls(&ca, &[b"h2"]))
        .http2_only()
        .start()
        .await;
    let gw = gateway(&up, &https_url(&up), Some(&ca), Some("h2")).await;
    let key = gw.key(&["state.read"]).await;
    let token = mint(&key).sign();

    for i in 0..3 {
        let res = gw.get(READ).bearer(&token).send().await;
        assert_eq!(res.status, 200, "request {i}: {}", res.text());
    }
    let seen = up.last();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(seen.header("x-scopegate-key"), Some(key.id.as_str()));
    assert_eq!(up.count(), 3);
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn h2c_upstream_is_spoken_to_with_prior_knowledge() {
    let up = RecordingUpstream::builder().http2_only().start().await;
    let url = format!("http://{}", up.addr);
    let gw = gateway(&up, &url, None, Some("h2")).await;
    let key = gw.key(&["state.read"]).await;

    let res = gw.get(READ).bearer(&mint(&key).sign()).send().await;
    assert_eq!(res.status, 200, "{}", res.text());
    let seen = up.last();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.alpn, None);
    assert_eq!(seen.header("x-scopegate-org"), Some(gw.org.as_str()));
}

#[tokio::test]
async fn http1_upstream_setting_against_an_h2_only_server_fails() {
    // The control for the h2c test: the upstream really refuses HTTP/1.1, so the 200 there
    // is HTTP/2's doing.
    let up = RecordingUpstream::builder().http2_only().start().await;
    let url = format!("http://{}", up.addr);
    let gw = gateway(&up, &url, None, None).await;
    let key = gw.key(&["state.read"]).await;

    gw.get(READ)
        .bearer(&mint(&key).sign())
        .send()
        .await
        .assert_error(502, "bad-gateway");
    assert_eq!(up.count(), 0);
}

// ---- the system's root certificates ------------------------------------------------------------
//
// rustls-native-certs reads `SSL_CERT_FILE` / `SSL_CERT_DIR` instead of the OS store when
// they are set, so a child gateway can be given a "system" store of the test's choosing.

/// `SSL_CERT_FILE` and `SSL_CERT_DIR` naming `bundle` and an empty folder in `dir`.
fn system_store(dir: &Path, bundle: &str) -> [(String, String); 2] {
    let file = dir.join("system-roots.pem");
    std::fs::write(&file, bundle).unwrap();
    let empty = dir.join("no-more-roots");
    std::fs::create_dir_all(&empty).unwrap();
    [
        ("SSL_CERT_FILE".into(), file.display().to_string()),
        ("SSL_CERT_DIR".into(), empty.display().to_string()),
    ]
}

const ONE_ROUTE: &str = "[[routes]]\nmethods = [\"GET\"]\npath = \"/machines/{machine}/i/{instance}\"\nscopes = [\"state.read\"]\nupstream = \"main\"\n";

#[tokio::test]
async fn without_ca_file_the_system_roots_are_what_is_trusted() {
    let ca = test_ca();
    let up = RecordingUpstream::builder()
        .tls(server_tls(&ca, &[b"http/1.1"]))
        .start()
        .await;
    let store = tempfile::tempdir().unwrap();
    let env = system_store(store.path(), &ca.ca_pem);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let gw = ChildGateway::spawn_with_env(&https_url(&up), ONE_ROUTE, &env).await;
    let key = gw.create_key(&["state.read"]);
    let token = mint(&key).sign();
    let url = gw.url(READ);
    let served = eventually(Duration::from_secs(5), || {
        let (url, token) = (url.clone(), token.clone());
        async move {
            crate::support::Req::new("GET", url)
                .bearer(&token)
                .send()
                .await
                .status
                == 200
        }
    })
    .await;
    assert!(served, "never forwarded; the gateway's log:\n{}", gw.log());
    assert_eq!(up.last().header("x-scopegate-key"), Some(key.id.as_str()));
}

/// A config in `dir` with one https upstream and no `ca_file`.
fn https_config_without_ca_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("scopegate.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[keys]\ndir = \"keys\"\n\n\
             [upstreams.main]\nurl = \"https://127.0.0.1:9\"\n\n{ONE_ROUTE}"
        ),
    )
    .unwrap();
    path
}

/// Runs the binary with an empty system store and returns its stderr once it has exited.
async fn run_with_empty_system_store(args: &[&str]) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = https_config_without_ca_file(dir.path());
    let env = system_store(dir.path(), "");
    let mut child = Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args(args)
        .arg("--config")
        .arg(&config)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    let exited = eventually(Duration::from_secs(10), || {
        let done = child.try_wait().unwrap();
        status = done;
        async move { done.is_some() }
    })
    .await;
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "`scopegate {}` kept running without root certificates",
            args.join(" ")
        );
    }
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    (status.unwrap(), stderr)
}

#[tokio::test]
async fn an_empty_system_store_is_a_clear_error_from_check_and_serve() {
    for command in ["check", "serve"] {
        let (status, stderr) = run_with_empty_system_store(&[command]).await;
        assert!(!status.success(), "`scopegate {command}` succeeded");
        assert!(
            stderr.contains("upstream 'main': no usable root certificates in the system's store")
                && stderr.contains("ca_file"),
            "`scopegate {command}` stderr:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test]
async fn a_tls_handshake_that_never_completes_is_a_502_within_the_connect_timeout() {
    // Accepts TCP connections and never answers the ClientHello.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let ca = test_ca();
    let up = RecordingUpstream::start().await; // only for the builder; never reached
    let gw = TestGateway::builder()
        .upstream_url(&format!("https://{addr}"))
        .file("upstream-ca.pem", &ca.ca_pem)
        .upstream_setting("ca_file = \"upstream-ca.pem\"\nconnect_timeout_ms = 300")
        .spawn(&up)
        .await;
    let key = gw.key(&["machines.read"]).await;
    // A request with a body: the response timeout starts only once the body is sent, which
    // a connection that never completes its handshake never lets happen.
    let started = std::time::Instant::now();
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        gw.request("POST", "/machines")
            .bearer(&mint(&key).sign())
            .body("{\"name\":\"m\"}")
            .send(),
    )
    .await
    .expect("the gateway hung on a stalled TLS handshake");
    res.assert_error(502, "bad-gateway");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    held.abort();
}
