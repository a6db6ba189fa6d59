//! TLS termination with real peers: certificates made in the test (rcgen), a rustls client
//! checking ALPN and the certificate served, and live replacement of the pair.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::support::{eventually, mint, RecordingUpstream, TestGateway};

struct Pair {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn pair() -> Pair {
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    Pair {
        cert_pem: made.cert.pem(),
        key_pem: made.signing_key.serialize_pem(),
        der: made.cert.der().clone(),
    }
}

/// Writes both files next to each other and renames them into place, as a deploy would.
fn install(dir: &Path, p: &Pair) {
    std::fs::write(dir.join(".cert.tmp"), &p.cert_pem).unwrap();
    std::fs::write(dir.join(".key.tmp"), &p.key_pem).unwrap();
    std::fs::rename(dir.join(".cert.tmp"), dir.join("cert.pem")).unwrap();
    std::fs::rename(dir.join(".key.tmp"), dir.join("key.pem")).unwrap();
}

async fn tls_gateway(up: &RecordingUpstream, first: &Pair) -> (TestGateway, tempfile::TempDir) {
    let certs = tempfile::tempdir().unwrap();
    install(certs.path(), first);
    let gw = TestGateway::builder()
        .server_setting(&format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}",
            certs.path().join("cert.pem").display(),
            certs.path().join("key.pem").display()
        ))
        .spawn(up)
        .await;
    (gw, certs)
}

/// A client that trusts exactly `trusted` and offers `alpn`.
async fn connect(
    addr: std::net::SocketAddr,
    trusted: &[&CertificateDer<'static>],
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in trusted {
        roots.add((*c).clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

fn leaf(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

async fn http1_get(
    stream: TlsStream<TcpStream>,
    token: &str,
) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let res = send.send_request(get(token)).await.unwrap();
    assert_eq!(res.status(), 200);
    res.into_body().collect().await.unwrap();
    send
}

fn get(token: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get("/machines/m1/i/i1")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::new())
        .unwrap()
}

#[tokio::test]
async fn alpn_offers_h2_and_http1_and_both_serve() {
    let up = RecordingUpstream::start().await;
    let first = pair();
    let (gw, _certs) = tls_gateway(&up, &first).await;
    let key = gw.key(&["state.read"]).await;
    let token = mint(&key).sign();

    let h1 = connect(gw.addr(), &[&first.der], &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(h1.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    http1_get(h1, &token).await;
    assert_eq!(up.last().header("x-forwarded-proto"), Some("https"));

    let h2 = connect(gw.addr(), &[&first.der], &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(h2))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!(
        "https://localhost:{}/machines/m1/i/i1",
        gw.addr().port()
    ))
    .header("authorization", format!("Bearer {token}"))
    .body(Empty::<Bytes>::new())
    .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), http::Version::HTTP_2);

    // A refusal over TLS is still the JSON error, and nothing reaches the upstream.
    let before = up.count();
    let plain = connect(gw.addr(), &[&first.der], &[b"http/1.1"])
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(plain))
        .await
        .unwrap();
    tokio::spawn(conn);
    let res = send.send_request(get("not-a-token")).await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(up.count(), before);
}

#[tokio::test]
async fn plaintext_and_legacy_tls_are_refused() {
    let up = RecordingUpstream::start().await;
    let first = pair();
    let (gw, _certs) = tls_gateway(&up, &first).await;
    // Plain HTTP on the TLS port gets no HTTP answer.
    let res = tokio::time::timeout(Duration::from_secs(5), async {
        let tcp = TcpStream::connect(gw.addr()).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        send.send_request(get("x")).await
    })
    .await
    .expect("the gateway answers or closes");
    assert!(res.is_err(), "plain HTTP was served on the TLS port");
    // A client that only speaks TLS 1.2 with no shared modern suite is fine (1.2 is allowed);
    // TLS 1.0/1.1 cannot even be offered by rustls, which is the point of using it.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(first.der.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let s = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn a_replaced_pair_is_served_to_new_handshakes_and_open_connections_survive() {
    let up = RecordingUpstream::start().await;
    let first = pair();
    let (gw, certs) = tls_gateway(&up, &first).await;
    let key = gw.key(&["state.read"]).await;
    let token = mint(&key).sign();

    let old = connect(gw.addr(), &[&first.der], &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(leaf(&old), first.der);
    let mut open = http1_get(old, &token).await;

    let second = pair();
    let started = Instant::now();
    install(certs.path(), &second);
    let addr = gw.addr();
    let der = second.der.clone();
    let swapped = eventually(Duration::from_secs(5), || {
        let der = der.clone();
        async move {
            match connect(addr, &[&der], &[b"http/1.1"]).await {
                Ok(s) => leaf(&s) == der,
                Err(_) => false,
            }
        }
    })
    .await;
    let took = started.elapsed();
    assert!(swapped, "the new certificate was never served");
    assert!(took <= Duration::from_secs(2), "took {took:?}");

    // The connection opened before the swap still works.
    let res = open.send_request(get(&token)).await.unwrap();
    assert_eq!(res.status(), 200);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("scopegate_reloads_total{kind=\"tls\",result=\"success\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_bad_pair_keeps_the_old_certificate() {
    let up = RecordingUpstream::start().await;
    let first = pair();
    let (gw, certs) = tls_gateway(&up, &first).await;
    // A key that does not belong to the certificate.
    let mismatched = Pair {
        cert_pem: pair().cert_pem,
        key_pem: pair().key_pem,
        der: first.der.clone(),
    };
    install(certs.path(), &mismatched);
    let rejected = eventually(Duration::from_secs(5), || async {
        gw.metrics()
            .await
            .contains("scopegate_reloads_total{kind=\"tls\",result=\"rejected\"}")
    })
    .await;
    assert!(rejected, "the bad pair was not noticed");
    let s = connect(gw.addr(), &[&first.der], &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(
        leaf(&s),
        first.der,
        "the old certificate must still be served"
    );
    // Garbage is refused the same way.
    std::fs::write(certs.path().join("cert.pem"), "not a certificate").unwrap();
    let s = connect(gw.addr(), &[&first.der], &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(leaf(&s), first.der);
}

#[tokio::test]
async fn a_kubernetes_style_symlink_swap_is_picked_up() {
    let up = RecordingUpstream::start().await;
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    let first = pair();
    let v1 = dir.join("..2026_11_28_v1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("tls.crt"), &first.cert_pem).unwrap();
    std::fs::write(v1.join("tls.key"), &first.key_pem).unwrap();
    std::os::unix::fs::symlink("..2026_11_28_v1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/tls.crt", dir.join("tls.crt")).unwrap();
    std::os::unix::fs::symlink("..data/tls.key", dir.join("tls.key")).unwrap();
    let gw = TestGateway::builder()
        .server_setting(&format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}",
            dir.join("tls.crt").display(),
            dir.join("tls.key").display()
        ))
        .spawn(&up)
        .await;
    let s = connect(gw.addr(), &[&first.der], &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(leaf(&s), first.der);

    // kubelet's update: a new timestamped dir, a new ..data link renamed over the old one.
    let second = pair();
    let v2 = dir.join("..2026_11_28_v2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v2.join("tls.crt"), &second.cert_pem).unwrap();
    std::fs::write(v2.join("tls.key"), &second.key_pem).unwrap();
    std::os::unix::fs::symlink("..2026_11_28_v2", dir.join("..data_tmp")).unwrap();
    let started = Instant::now();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();
    let addr = gw.addr();
    let der = second.der.clone();
    let swapped = eventually(Duration::from_secs(5), || {
        let der = der.clone();
        async move {
            match connect(addr, &[&der], &[b"http/1.1"]).await {
                Ok(s) => leaf(&s) == der,
                Err(_) => false,
            }
        }
    })
    .await;
    assert!(swapped, "the swapped certificate was never served");
    assert!(
        started.elapsed() <= Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}
