//! Test fixtures that read like sentences:
//!
//! ```ignore
//! let up = RecordingUpstream::start().await;
//! let gw = TestGateway::builder().route(r#"methods = ["GET"] path = "/a" scopes = ["state.read"]"#)
//!     .spawn(&up).await;
//! let key = gw.key(&["state.read"]);
//! let res = gw.get("/a").bearer(&mint(&key).sign()).send().await;
//! ```
//!
//! Everything listens on 127.0.0.1:0. Nothing sleeps to synchronize: `eventually` polls with a
//! deadline.

#![allow(dead_code)]

pub mod child;
pub mod client;
pub mod token;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use scopegate::keys::store::Store;
use scopegate::scopes::Catalog;
use scopegate::server::Running;

pub use client::Req;
pub use token::{mint, state_backed_token, TestKey};
pub use upstream::RecordingUpstream;

/// Polls `check` until it returns true or `limit` passes. Returns whether it succeeded.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Routes used when a test does not give its own.
pub const DEFAULT_ROUTES: &str = r#"
[[routes]]
methods = ["GET"]
path = "/machines/{machine}/i/{instance}"
scopes = ["state.read"]
upstream = "main"

[[routes]]
methods = ["POST"]
path = "/machines/{machine}/i/{instance}/events"
scopes = ["events.write"]
upstream = "main"

[[routes]]
methods = ["GET", "POST"]
path = "/machines"
scopes = ["machines.read"]
upstream = "main"

[[routes]]
methods = ["POST"]
path = "/upload"
scopes = ["events.write"]
upstream = "main"

[[routes]]
methods = ["*"]
path = "/orgs/{org}/members/{*rest}"
scopes = ["org-members.write"]
upstream = "main"
org_param = "org"

[[routes]]
methods = ["GET"]
path = "/rt"
scopes = ["state.read"]
upstream = "main"
token_query_param = "token"

[[routes]]
methods = ["GET"]
path = "/status"
public = true
upstream = "main"

[[routes]]
methods = ["GET"]
path = "/org-admin"
scopes = ["org-keys.write"]
upstream = "main"
"#;

pub struct Builder {
    routes: String,
    extra: String,
    upstream_extra: String,
    grace_seconds: u64,
    server_extra: String,
    poll_interval_ms: u64,
    /// A key folder shared with other gateways, and the organization to use in it.
    shared_keys: Option<(PathBuf, String)>,
    /// `[upstreams.main] url`; `http://<the recording upstream>` unless set.
    upstream_url: Option<String>,
    /// Files written next to the config before it is loaded (name, contents).
    files: Vec<(String, String)>,
}

impl Builder {
    /// `[server] shutdown_grace_seconds` (5 unless set).
    pub fn shutdown_grace(mut self, seconds: u64) -> Self {
        self.grace_seconds = seconds;
        self
    }

    /// Extra lines inside `[server]` (e.g. `tls = { cert = "…", key = "…" }`).
    pub fn server_setting(mut self, line: &str) -> Self {
        self.server_extra.push_str(line);
        self.server_extra.push('\n');
        self
    }

    /// `[keys] poll_interval_ms` (100 unless set).
    pub fn poll_interval_ms(mut self, ms: u64) -> Self {
        self.poll_interval_ms = ms;
        self
    }

    /// Serves the keys of an existing folder (shared with other gateways, or laid out by the
    /// test) instead of a fresh one; `org` becomes [`TestGateway::org`] and is not created.
    pub fn shared_keys(mut self, dir: &Path, org: &str) -> Self {
        self.shared_keys = Some((dir.to_owned(), org.to_owned()));
        self
    }

    /// Replaces the default routes with these `[[routes]]` tables (upstream "main").
    pub fn routes(mut self, toml: &str) -> Self {
        self.routes = toml.to_owned();
        self
    }

    /// Extra top-level TOML sections (e.g. `[auth]`), placed before the routes.
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    /// `[upstreams.main] url`, instead of `http://<the recording upstream's address>`.
    pub fn upstream_url(mut self, url: &str) -> Self {
        self.upstream_url = Some(url.to_owned());
        self
    }

    /// A file next to the config (e.g. a `ca_file`), written before the gateway loads it.
    pub fn file(mut self, name: &str, contents: &str) -> Self {
        self.files.push((name.to_owned(), contents.to_owned()));
        self
    }

    /// Extra settings inside `[upstreams.main]`.
    pub fn upstream_setting(mut self, line: &str) -> Self {
        self.upstream_extra.push_str(line);
        self.upstream_extra.push('\n');
        self
    }

    pub fn config_text(&self, upstream: SocketAddr) -> String {
        let keys_dir = match &self.shared_keys {
            Some((dir, _)) => toml_path(dir),
            None => "keys".to_owned(),
        };
        let url = self
            .upstream_url
            .clone()
            .unwrap_or_else(|| format!("http://{upstream}"));
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_seconds = {}\n{}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[keys]\ndir = \"{keys_dir}\"\npoll_interval_ms = {}\n\n{}\n[upstreams.main]\nurl = \"{url}\"\n{}\n{}",
            self.grace_seconds,
            self.server_extra,
            self.poll_interval_ms,
            self.extra,
            self.upstream_extra,
            self.routes
        )
    }

    /// Writes the config into a fresh temp dir, creates an organization, starts the gateway.
    pub async fn spawn(self, upstream: &RecordingUpstream) -> TestGateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("scopegate.toml");
        for (name, contents) in &self.files {
            std::fs::write(dir.path().join(name), contents).unwrap();
        }
        std::fs::write(&config_path, self.config_text(upstream.addr)).unwrap();
        let config = scopegate::config::load(&config_path).unwrap_or_else(|e| panic!("{e}"));
        let store = Store::new(&config.keys.dir, config.auth.catalog.clone());
        let org = match &self.shared_keys {
            Some((_, org)) => org.clone(),
            None => store.create_org("test org").unwrap().id,
        };
        let running = scopegate::server::start(config, config_path.clone())
            .await
            .expect("gateway starts");
        TestGateway {
            dir,
            config_path,
            store,
            org,
            running: Some(running),
        }
    }
}

/// A gateway running in this process on ephemeral ports, with its own key folder.
pub struct TestGateway {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub store: Store,
    /// The organization created at start.
    pub org: String,
    pub running: Option<Running>,
}

impl TestGateway {
    pub fn builder() -> Builder {
        Builder {
            routes: DEFAULT_ROUTES.to_owned(),
            extra: String::new(),
            upstream_extra: String::new(),
            grace_seconds: 5,
            server_extra: String::new(),
            poll_interval_ms: 100,
            shared_keys: None,
            upstream_url: None,
            files: Vec::new(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.running.as_ref().unwrap().addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.running.as_ref().unwrap().admin_addr.unwrap()
    }

    pub fn keys_dir(&self) -> &Path {
        self.store.dir()
    }

    /// Creates a key in the gateway's organization, written the way the CLI writes it.
    /// The gateway does not necessarily see it yet: use [`TestGateway::key`] for that.
    pub fn create_key(&self, org: &str, scopes: &[&str]) -> TestKey {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        let record = self
            .store
            .create_key(org, "test key", &scopes, Algorithm::HS256)
            .unwrap();
        TestKey {
            id: record.id,
            secret: record.secret,
            org: org.to_owned(),
            algorithm: Algorithm::HS256,
        }
    }

    /// Creates a key and waits until the gateway has loaded it.
    pub async fn key(&self, scopes: &[&str]) -> TestKey {
        let org = self.org.clone();
        self.key_in(&org, scopes).await
    }

    pub async fn key_in(&self, org: &str, scopes: &[&str]) -> TestKey {
        let key = self.create_key(org, scopes);
        self.wait_for_key(&key.id, true).await;
        key
    }

    /// Waits until the live key set does (or does not) hold `id`.
    pub async fn wait_for_key(&self, id: &str, present: bool) {
        let gw = self.running.as_ref().unwrap().gateway.clone();
        let ok = eventually(Duration::from_secs(5), || {
            let gw = gw.clone();
            async move { gw.keys.load().get(id).is_some() == present }
        })
        .await;
        assert!(ok, "key {id} present={present} never took effect");
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr(), path_and_query)
    }

    pub fn get(&self, path_and_query: &str) -> Req {
        Req::new("GET", self.url(path_and_query))
    }

    pub fn request(&self, method: &str, path_and_query: &str) -> Req {
        Req::new(method, self.url(path_and_query))
    }

    pub async fn metrics(&self) -> String {
        Req::new("GET", format!("http://{}/metrics", self.admin_addr()))
            .send()
            .await
            .text()
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// The sum of the samples `name{labels…} value` in Prometheus text whose labels include every
/// given `label="value"` pair (one series when the pairs name all its labels). 0 when no
/// series matches yet: labelled counters appear on their first increment.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let prefix = format!("{name}{{");
    text.lines()
        .filter(|l| {
            l.starts_with(&prefix) || (labels.is_empty() && l.starts_with(&format!("{name} ")))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("unparsable sample: {l}"))
        })
        .sum()
}

/// A path as the inside of a TOML basic string (temp paths need no escapes; refuse any that do).
pub fn toml_path(path: &Path) -> String {
    let text = path.to_str().expect("a UTF-8 temp path").to_owned();
    assert!(
        !text.contains(['"', '\\']) && !text.chars().any(char::is_control),
        "{text:?} would need TOML escapes"
    );
    text
}

/// Polls (every 10 ms, via [`eventually`]) until `check` holds and returns how long that took
/// from `since`; panics with `what` if it does not hold within `patience`.
pub async fn time_until<F, Fut>(
    since: Instant,
    patience: Duration,
    what: &str,
    check: F,
) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let ok = eventually(patience, check).await;
    let took = since.elapsed();
    assert!(ok, "{what}: not within {patience:?}");
    took
}

/// The built-in scope catalogue, for tests that parse key files directly.
pub fn catalog() -> Catalog {
    Catalog::default()
}
