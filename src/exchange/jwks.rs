//! JWKS URLs: fetched with a timeout, cached, refreshed, and re-fetched when a token names a
//! `kid` the cached set lacks — at most once per cooldown, so a flood of tokens with made-up
//! kids cannot hammer the identity provider. A provider that cannot be reached is a 503-class
//! failure (`temporarily_unavailable`), never "invalid token"; stale keys keep serving while
//! a refresh fails.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::org::{jwk_entries, JwkEntry};

const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Cache settings.
#[derive(Debug, Clone, Copy)]
pub struct JwksSettings {
    pub timeout: Duration,
    pub refresh: Duration,
    pub cooldown: Duration,
}

impl Default for JwksSettings {
    fn default() -> Self {
        JwksSettings {
            timeout: Duration::from_secs(5),
            refresh: Duration::from_secs(600),
            cooldown: Duration::from_secs(30),
        }
    }
}

/// The identity provider's JWKS could not be had.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

struct Entry {
    keys: Arc<Vec<JwkEntry>>,
    fetched: Instant,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// When each URL was last fetched (or tried), for the cooldown.
    attempts: HashMap<String, Instant>,
}

pub struct JwksCache {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    state: tokio::sync::Mutex<State>,
    settings: JwksSettings,
}

impl JwksCache {
    pub fn new(settings: JwksSettings) -> Self {
        let provider = crate::server::tls::provider();
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match builder.with_provider_and_native_roots(provider.clone()) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "no system root certificates: https JWKS URLs will fail");
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default versions")
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
            }
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(settings.timeout));
        let connector = builder.https_or_http().enable_http1().wrap_connector(http);
        JwksCache {
            client: Client::builder(TokioExecutor::new()).build(connector),
            state: tokio::sync::Mutex::new(State::default()),
            settings,
        }
    }

    /// The keys at `url`, fetched if missing, stale, or lacking `kid` (cooldown permitting).
    pub async fn keys(
        &self,
        url: &str,
        kid: Option<&str>,
    ) -> Result<Arc<Vec<JwkEntry>>, Unavailable> {
        // One fetch at a time: concurrent requests for the same keys wait for it instead of
        // fetching again.
        let mut state = self.state.lock().await;
        let now = Instant::now();
        let has_kid = |keys: &[JwkEntry]| match kid {
            None => true,
            Some(k) => keys.iter().any(|e| e.kid.as_deref() == Some(k)),
        };
        if let Some(entry) = state.entries.get(url) {
            let fresh = now.duration_since(entry.fetched) < self.settings.refresh;
            if fresh && has_kid(&entry.keys) {
                return Ok(entry.keys.clone());
            }
        }
        let cooling = state
            .attempts
            .get(url)
            .is_some_and(|t| now.duration_since(*t) < self.settings.cooldown);
        if cooling {
            return match state.entries.get(url) {
                Some(entry) => Ok(entry.keys.clone()),
                None => Err(Unavailable(format!(
                    "the identity provider's JWKS could not be fetched recently; retrying after {:?}",
                    self.settings.cooldown
                ))),
            };
        }
        state.attempts.insert(url.to_owned(), now);
        match self.fetch(url).await {
            Ok(keys) => {
                let keys = Arc::new(keys);
                state.entries.insert(
                    url.to_owned(),
                    Entry {
                        keys: keys.clone(),
                        fetched: now,
                    },
                );
                Ok(keys)
            }
            Err(e) => {
                tracing::warn!(url, error = %e, "fetching a JWKS failed");
                match state.entries.get(url) {
                    // Stale keys beat no keys while the provider is down.
                    Some(entry) => Ok(entry.keys.clone()),
                    None => Err(e),
                }
            }
        }
    }

    async fn fetch(&self, url: &str) -> Result<Vec<JwkEntry>, Unavailable> {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| Unavailable(format!("{url:?} is not a URL")))?;
        let request = http::Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| Unavailable(e.to_string()))?;
        let response = tokio::time::timeout(self.settings.timeout, async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("the JWKS URL answered {}", response.status()));
            }
            Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| format!("reading the JWKS failed: {e}"))
        })
        .await
        .map_err(|_| {
            Unavailable(format!(
                "the JWKS URL did not answer within {:?}",
                self.settings.timeout
            ))
        })?
        .map_err(Unavailable)?;
        let text = std::str::from_utf8(&response)
            .map_err(|_| Unavailable("the JWKS is not UTF-8".into()))?;
        jwk_entries(text).map_err(Unavailable)
    }
}
