//! TLS termination (rustls, ring provider): TLS 1.3 and 1.2 with rustls' modern cipher suites
//! only, ALPN `h2` and `http/1.1`, and a certificate that can be replaced while serving.
//!
//! The certificate lives behind an `ArcSwap` that a [`CertResolver`] hands to each new
//! handshake; open connections keep the certificate they started with. A replacement pair is
//! loaded and checked completely (chain parses, key parses, key matches the leaf) before it is
//! swapped in; a bad pair keeps the old one.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// Why a certificate pair could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("the key does not belong to the certificate ({0})")]
    Mismatch(String),
}

/// The one crypto provider scopegate uses, for servers and upstream clients alike.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks a PEM certificate chain and its private key.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let file_error = |path: &Path, message: String| TlsError::File {
        path: path.to_owned(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, format!("cannot read certificates: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(file_error(cert, "no certificate in the file".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| file_error(key, format!("no usable private key: {e}")))?;
    CertifiedKey::from_der(chain, private, &provider())
        .map_err(|e| TlsError::Mismatch(e.to_string()))
}

/// Hands the current certificate to every new handshake.
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver").finish_non_exhaustive()
    }
}

impl CertResolver {
    pub fn new(initial: CertifiedKey) -> Self {
        CertResolver {
            current: ArcSwap::from_pointee(initial),
        }
    }

    /// Serves `next` to handshakes from now on.
    pub fn replace(&self, next: CertifiedKey) {
        self.current.store(Arc::new(next));
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The rustls server configuration: TLS 1.3 and 1.2, ALPN h2 then http/1.1.
pub fn server_config(resolver: Arc<CertResolver>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}
