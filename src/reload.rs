//! Hot reload: config and key files are rescanned on file events (notify), on a polling tick
//! (for filesystems that send no events), and — for the config — on SIGHUP.
//!
//! A new snapshot is built completely off the request path and then swapped in with one
//! `ArcSwap::store`. A broken config never replaces a good one; a broken key file keeps that
//! organization's last good keys and leaves every other organization alone. Every attempt ends
//! in one [`ReloadOutcome`] whose `emit` writes the log line and bumps the counter.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use crate::config::{self, KeySettings};
use crate::gateway::{Gateway, Snapshot};
use crate::keys::store::{self, Fingerprint};
use crate::keys::{KeySet, OrgKeys};
use crate::metrics::Metrics;
use crate::scopes::Catalog;

/// What one reload attempt did.
#[derive(Debug)]
pub enum ReloadOutcome<'a> {
    Applied {
        kind: &'static str,
        source: &'a Path,
    },
    Rejected {
        kind: &'static str,
        source: &'a Path,
        reason: String,
    },
    Removed {
        kind: &'static str,
        source: &'a Path,
    },
}

impl ReloadOutcome<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        match self {
            ReloadOutcome::Applied { kind, source } => {
                tracing::info!(kind, file = %source.display(), "reloaded");
                metrics.reloads.with_label_values(&[kind, "success"]).inc();
            }
            ReloadOutcome::Removed { kind, source } => {
                tracing::info!(kind, file = %source.display(), "removed; its keys are no longer accepted");
                metrics.reloads.with_label_values(&[kind, "success"]).inc();
            }
            ReloadOutcome::Rejected {
                kind,
                source,
                reason,
            } => {
                tracing::error!(kind, file = %source.display(), %reason, "reload rejected; keeping the last good version");
                metrics.reloads.with_label_values(&[kind, "rejected"]).inc();
            }
        }
    }
}

struct FileState {
    fingerprint: Fingerprint,
    good: Option<Arc<OrgKeys>>,
    failing: bool,
}

/// The key folder as last seen: per file, its fingerprint and its last good keys.
pub struct KeyFiles {
    settings: KeySettings,
    catalog: Catalog,
    files: BTreeMap<PathBuf, FileState>,
}

impl KeyFiles {
    pub fn new(settings: KeySettings, catalog: Catalog) -> Self {
        KeyFiles {
            settings,
            catalog,
            files: BTreeMap::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.settings.dir
    }

    /// Adopts new settings from a reloaded config. Files are re-read (scope names may mean
    /// something else now) but keep their last good keys if they no longer parse.
    pub fn reconfigure(&mut self, settings: &KeySettings, catalog: &Catalog) -> bool {
        if self.settings == *settings && self.catalog == *catalog {
            return false;
        }
        if self.settings.dir != settings.dir {
            self.files.clear();
        }
        self.settings = settings.clone();
        self.catalog = catalog.clone();
        for state in self.files.values_mut() {
            // Force a re-read on the next rescan.
            state.fingerprint = Fingerprint::default();
        }
        true
    }

    /// Looks at every file; returns a new key set if anything changed.
    pub fn rescan(&mut self, metrics: &Metrics) -> Option<KeySet> {
        let listed = match store::org_files(&self.settings.dir) {
            Ok(list) => list,
            Err(e) => {
                // An unreadable folder is an I/O fault, not a decision to revoke every key.
                ReloadOutcome::Rejected {
                    kind: "keys",
                    source: &self.settings.dir,
                    reason: format!("cannot list the key folder: {e}"),
                }
                .emit(metrics);
                return None;
            }
        };
        let mut changed = false;
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !listed.contains(p))
            .cloned()
            .collect();
        for path in gone {
            self.files.remove(&path);
            ReloadOutcome::Removed {
                kind: "keys",
                source: &path,
            }
            .emit(metrics);
            changed = true;
        }
        for path in listed {
            let Ok(fingerprint) = store::fingerprint(&path) else {
                continue;
            };
            if self
                .files
                .get(&path)
                .is_some_and(|s| s.fingerprint == fingerprint)
            {
                continue;
            }
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| store::StoreError::Io {
                    path: path.clone(),
                    source: e,
                })
                .and_then(|text| store::parse_org_file(&path, &text, &self.catalog));
            let previous = self.files.remove(&path);
            let state = match parsed {
                Ok(org) => {
                    ReloadOutcome::Applied {
                        kind: "keys",
                        source: &path,
                    }
                    .emit(metrics);
                    changed = true;
                    FileState {
                        fingerprint,
                        good: Some(Arc::new(org)),
                        failing: false,
                    }
                }
                Err(e) => {
                    ReloadOutcome::Rejected {
                        kind: "keys",
                        source: &path,
                        reason: e.to_string(),
                    }
                    .emit(metrics);
                    FileState {
                        fingerprint,
                        good: previous.and_then(|p| p.good),
                        failing: true,
                    }
                }
            };
            self.files.insert(path, state);
        }
        metrics
            .key_file_errors
            .set(self.files.values().filter(|s| s.failing).count() as i64);
        if !changed {
            return None;
        }
        let (set, clashes) = KeySet::build(self.files.values().filter_map(|s| s.good.as_deref()));
        for id in clashes {
            tracing::error!(key = %id, "a key id appears in two organizations; refusing it in both");
        }
        Some(set)
    }
}

/// Loads the keys of a folder once, for startup and `check`.
pub fn initial_keys(
    settings: &KeySettings,
    catalog: &Catalog,
    metrics: &Metrics,
) -> (KeyFiles, KeySet) {
    let mut files = KeyFiles::new(settings.clone(), catalog.clone());
    let set = files.rescan(metrics).unwrap_or_default();
    (files, set)
}

/// Watches the config file and the key folder and swaps in what changed.
///
/// Built before the gateway reports ready, so the file watches and the SIGHUP handler are in
/// place first: nothing written after `ready` can be missed, and an early SIGHUP cannot kill
/// the process with the default signal action.
pub struct Reloader {
    gateway: Arc<Gateway>,
    config_path: PathBuf,
    watcher: Option<notify::RecommendedWatcher>,
    /// The paths each file event names; an empty list means "anything may have changed".
    events: mpsc::UnboundedReceiver<Vec<PathBuf>>,
    watched: Vec<Watched>,
    hangups: Option<tokio::signal::unix::Signal>,
    certificate: CertificateFiles,
}

impl Reloader {
    /// Must be called inside a tokio runtime (it installs the SIGHUP handler).
    pub fn new(gateway: Arc<Gateway>, config_path: PathBuf) -> Self {
        let (tx, events) = mpsc::unbounded_channel::<Vec<PathBuf>>();
        let watcher =
            match notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(e) if changes_files(&e.kind) => {
                    let _ = tx.send(e.paths);
                }
                Ok(_) => {}
                Err(_) => {
                    let _ = tx.send(Vec::new());
                }
            }) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "file events unavailable; relying on polling");
                    None
                }
            };
        let hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot handle SIGHUP; file changes still reload");
                None
            }
        };
        let mut reloader = Reloader {
            gateway,
            config_path,
            watcher,
            events,
            watched: Vec::new(),
            hangups,
            certificate: CertificateFiles::default(),
        };
        let keys_dir = reloader.gateway.key_files().dir().to_owned();
        rewatch(
            &mut reloader.watcher,
            &mut reloader.watched,
            &reloader.config_path,
            &[keys_dir],
        );
        if let Some(t) = &reloader.gateway.snapshot.load().config.server.tls {
            reloader.certificate.check(&reloader.gateway, t);
        }
        reloader
    }

    /// Can these event paths concern the config file? Events name entries of the watched
    /// folders; an empty list (the watcher lost track) may concern anything.
    fn touches_config(&self, paths: &[PathBuf]) -> bool {
        let dir = config_dir(&self.config_path);
        paths.is_empty()
            || paths
                .iter()
                .any(|p| *p == self.config_path || p.parent() == Some(dir.as_path()))
    }

    /// Runs until `shutdown` flips.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let gateway = self.gateway.clone();
        // `None` makes the first pass compare the file's content with the running config:
        // an edit made between the first load and the first watch is not missed.
        let mut config_fingerprint = None;
        // Changes made before the watches began sent no event: the first pass looks anyway.
        let mut look_now = true;
        loop {
            let poll = gateway.snapshot.load().config.keys.poll_interval;
            let mut forced = false;
            // The config is looked at on its own events, on the polling tick and on SIGHUP —
            // not on every key-folder event.
            let mut check_config = look_now;
            if !look_now {
                let hangups = self.hangups.as_mut();
                tokio::select! {
                    _ = shutdown.changed() => return,
                    // `None` (no watcher) disables this branch instead of spinning on it.
                    Some(paths) = self.events.recv() => {
                        // Let a burst of events (write + rename + chmod) settle, then rescan once.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        check_config = self.touches_config(&paths);
                        while let Ok(more) = self.events.try_recv() {
                            check_config |= self.touches_config(&more);
                        }
                    }
                    _ = tokio::time::sleep(poll) => check_config = true,
                    Some(()) = async { match hangups { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                        tracing::info!("SIGHUP: reloading the config");
                        forced = true;
                    }
                }
            }
            let fingerprint = store::fingerprint(&self.config_path).ok();
            if forced
                || (check_config && (fingerprint.is_none() || fingerprint != config_fingerprint))
            {
                config_fingerprint = fingerprint;
                reload_config(&gateway, &self.config_path, forced);
            }
            // A reloaded config may have moved the key folder: watch it and look at once.
            let keys_dir = gateway.key_files().dir().to_owned();
            let tls_files = gateway.snapshot.load().config.server.tls.clone();
            let mut dirs = vec![keys_dir];
            if let Some(t) = &tls_files {
                dirs.extend(
                    [&t.cert, &t.key]
                        .iter()
                        .filter_map(|p| p.parent())
                        .map(Path::to_owned),
                );
            }
            look_now = rewatch(
                &mut self.watcher,
                &mut self.watched,
                &self.config_path,
                &dirs,
            );
            gateway.rescan_keys();
            if let Some(t) = &tls_files {
                self.certificate.check(&gateway, t);
            }
        }
    }
}

/// Whether an event can mean changed content. Opens and reads are events too (inotify
/// `IN_OPEN`), and every rescan opens the watched folders: reacting to them would wake the
/// reloader again at once, forever.
fn changes_files(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Loads the config file and swaps it in. An unchanged file (same text) is a no-op unless
/// `forced` (SIGHUP), so metadata-only changes and the startup check stay quiet.
fn reload_config(gateway: &Gateway, path: &Path, forced: bool) {
    match config::load(path) {
        Ok(new) => {
            let current = gateway.snapshot.load_full();
            let old = &current.config;
            if !forced && new.digest == old.digest {
                return;
            }
            // Built before anything changes: a new https upstream without usable system roots
            // rejects the whole reload, like any other config error.
            let snapshot = match Snapshot::build(Arc::new(new), Some(&current)) {
                Ok(snapshot) => snapshot,
                Err(e) => {
                    return ReloadOutcome::Rejected {
                        kind: "config",
                        source: path,
                        reason: e.to_string(),
                    }
                    .emit(&gateway.metrics)
                }
            };
            let config = &snapshot.config;
            if config.server.listen != old.server.listen
                || config.admin.as_ref().map(|a| a.listen) != old.admin.as_ref().map(|a| a.listen)
            {
                tracing::warn!(
                    "listen addresses changed in the config; they take effect on restart"
                );
            }
            gateway
                .key_files()
                .reconfigure(&config.keys, &config.auth.catalog);
            gateway.snapshot.store(Arc::new(snapshot));
            ReloadOutcome::Applied {
                kind: "config",
                source: path,
            }
            .emit(&gateway.metrics);
        }
        Err(e) => ReloadOutcome::Rejected {
            kind: "config",
            source: path,
            reason: e.to_string(),
        }
        .emit(&gateway.metrics),
    }
}

/// The folder the config file's events arrive from (`.` for a bare file name).
fn config_dir(config_path: &Path) -> PathBuf {
    match config_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// A watched folder: its path, and the directory that path led to when the watch was set.
type Watched = (PathBuf, Option<(u64, u64)>);

/// The directory a path leads to now (device, inode), following symlinks.
///
/// An inotify watch holds on to a directory, not to its path: when the path comes to mean
/// another directory — a key folder that is itself a symlink swapped by Kubernetes
/// (`keys -> ..data/keys`), or a folder deleted and created again — the old watch sees
/// nothing more, and only polling would notice changes. Comparing identities on every pass
/// finds that and watches the new directory.
fn dir_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Watches the config's folder and the key folder; returns whether that set changed (a
/// folder moved in the config, or a path now leads to another directory).
fn rewatch(
    watcher: &mut Option<notify::RecommendedWatcher>,
    watched: &mut Vec<Watched>,
    config_path: &Path,
    dirs: &[PathBuf],
) -> bool {
    let Some(w) = watcher.as_mut() else {
        return false;
    };
    let mut paths = vec![config_dir(config_path)];
    for d in dirs {
        if !paths.contains(d) {
            paths.push(d.clone());
        }
    }
    let wanted: Vec<Watched> = paths
        .into_iter()
        .map(|p| {
            let id = dir_identity(&p);
            (p, id)
        })
        .collect();
    if *watched == wanted {
        return false;
    }
    for (p, _) in watched.drain(..) {
        let _ = w.unwatch(&p);
    }
    for (p, _) in &wanted {
        if let Err(e) = w.watch(p, RecursiveMode::NonRecursive) {
            tracing::debug!(path = %p.display(), error = %e, "cannot watch; polling covers it");
        }
    }
    *watched = wanted;
    true
}

/// The TLS certificate files as last loaded: a change to either file (a rename, a write, a
/// Kubernetes symlink swap) loads the pair again; a bad pair keeps serving the old one.
#[derive(Default)]
struct CertificateFiles {
    seen: Option<(Option<Fingerprint>, Option<Fingerprint>)>,
}

impl CertificateFiles {
    fn check(&mut self, gateway: &Gateway, files: &crate::config::TlsSettings) {
        let Some(resolver) = gateway.tls() else {
            // TLS was turned on in a reloaded config: that takes a restart.
            return;
        };
        // Fingerprints are taken before reading, so a file replaced mid-load is read again.
        let now = (
            store::fingerprint(&files.cert).ok(),
            store::fingerprint(&files.key).ok(),
        );
        let Some(seen) = self.seen else {
            // The pair loaded at startup is the baseline.
            self.seen = Some(now);
            return;
        };
        if seen == now {
            return;
        }
        self.seen = Some(now);
        match crate::server::tls::load_pair(&files.cert, &files.key) {
            Ok(pair) => {
                resolver.replace(pair);
                ReloadOutcome::Applied {
                    kind: "tls",
                    source: &files.cert,
                }
                .emit(&gateway.metrics);
            }
            Err(e) => ReloadOutcome::Rejected {
                kind: "tls",
                source: &files.cert,
                reason: e.to_string(),
            }
            .emit(&gateway.metrics),
        }
    }
}
