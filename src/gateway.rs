//! The live state of a running gateway: the current config snapshot, the current key set,
//! the metrics, and readiness. Each request loads both snapshots once, at its start, and keeps
//! those `Arc`s to the end: it is decided by the old tables or the new ones, never a mix.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::keys::KeySet;
use crate::metrics::Metrics;
use crate::pipeline::forward::{ClientError, IdentityNames, Upstream};
use crate::pipeline::verify::Verifier;
use crate::reload::KeyFiles;

/// Everything derived from one config: built off the request path, swapped whole.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    pub verifier: Verifier,
    pub identity: IdentityNames,
    /// Indexed like `config.upstreams`.
    pub upstreams: Vec<Arc<Upstream>>,
}

impl Snapshot {
    /// Builds the runtime snapshot, reusing the pooled clients of upstreams whose settings
    /// did not change so a reload does not drop warm connections. Fails when a new https
    /// upstream finds no usable system root certificates (see [`Upstream::new`]).
    pub fn build(config: Arc<Config>, previous: Option<&Snapshot>) -> Result<Self, ClientError> {
        let upstreams = config
            .upstreams
            .iter()
            .map(|settings| {
                match previous.and_then(|p| p.upstreams.iter().find(|u| u.settings == *settings)) {
                    Some(warm) => Ok(warm.clone()),
                    None => Upstream::new(settings.clone()).map(Arc::new),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Snapshot {
            verifier: Verifier::new(&config.auth),
            identity: IdentityNames::new(&config.server.identity_prefix),
            upstreams,
            config,
        })
    }
}

/// Shared by the accept loop, every request, the admin listener and the reloader.
pub struct Gateway {
    pub snapshot: ArcSwap<Snapshot>,
    pub keys: ArcSwap<KeySet>,
    pub metrics: Metrics,
    /// Identity providers' JWKS documents fetched by URL, for token exchange.
    pub jwks: crate::exchange::jwks::JwksCache,
    /// The key folder as last read. The reloader and the keys API both rescan through it, so
    /// a key the API just wrote is live before the API answers.
    key_files: Mutex<KeyFiles>,
    /// The certificate served to new TLS handshakes, when the main listener terminates TLS.
    tls: arc_swap::ArcSwapOption<crate::server::tls::CertResolver>,
    /// Upgraded connections (WebSockets) being relayed, so a drain can wait for them.
    tunnels: Mutex<tokio::task::JoinSet<()>>,
    ready: AtomicBool,
    draining: AtomicBool,
}

impl Gateway {
    pub fn new(
        snapshot: Snapshot,
        key_files: KeyFiles,
        keys: KeySet,
        metrics: Metrics,
    ) -> Arc<Self> {
        metrics.keys_loaded.set(keys.len() as i64);
        metrics.orgs_loaded.set(keys.org_count() as i64);
        let jwks = crate::exchange::jwks::JwksCache::new(snapshot.config.token_exchange.jwks);
        Arc::new(Gateway {
            jwks,
            snapshot: ArcSwap::from_pointee(snapshot),
            keys: ArcSwap::from_pointee(keys),
            metrics,
            key_files: Mutex::new(key_files),
            tls: arc_swap::ArcSwapOption::empty(),
            tunnels: Mutex::new(tokio::task::JoinSet::new()),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        })
    }

    /// Ready once config and keys are loaded, and until the drain starts.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Runs a tunnel's relay; a drain waits for it up to the grace period.
    pub fn spawn_tunnel(&self, relay: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tunnels = self.tunnels.lock().unwrap_or_else(|e| e.into_inner());
        while tunnels.try_join_next().is_some() {}
        tunnels.spawn(relay);
    }

    /// Waits for open tunnels to end, up to `deadline`, then cuts the rest.
    pub async fn close_tunnels(&self, deadline: tokio::time::Instant) {
        let mut tunnels =
            std::mem::take(&mut *self.tunnels.lock().unwrap_or_else(|e| e.into_inner()));
        let _ = tokio::time::timeout_at(deadline, async {
            while tunnels.join_next().await.is_some() {}
        })
        .await;
        tunnels.shutdown().await;
    }

    pub fn set_tls(&self, resolver: Option<Arc<crate::server::tls::CertResolver>>) {
        self.tls.store(resolver);
    }

    /// The certificate resolver of the main listener, if it terminates TLS.
    pub fn tls(&self) -> Option<Arc<crate::server::tls::CertResolver>> {
        self.tls.load_full()
    }

    pub fn key_files(&self) -> MutexGuard<'_, KeyFiles> {
        // A panic while rescanning leaves the state as consistent as before it: keep going.
        self.key_files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rescans the key folder now and swaps in what changed.
    pub fn rescan_keys(&self) {
        let mut files = self.key_files();
        if let Some(set) = files.rescan(&self.metrics) {
            self.replace_keys(set);
        }
    }

    pub fn replace_keys(&self, keys: KeySet) {
        self.metrics.keys_loaded.set(keys.len() as i64);
        self.metrics.orgs_loaded.set(keys.org_count() as i64);
        self.keys.store(Arc::new(keys));
    }
}
