//! The real `scopegate serve` binary as a child process, for tests that need a process of its
//! own: signals (SIGHUP) and memory measurements (its RSS is the gateway's alone).
//!
//! A config cannot report the ports it bound, so the test picks free ports (bind
//! 127.0.0.1:0, read, release) and writes them in; if the child then fails to bind (another
//! process took the port in between), it is started again on new ports. The child is killed
//! by its PID when the handle drops, panics included.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use scopegate::keys::store::Store;
use scopegate::scopes::Catalog;

use super::{eventually, toml_path, Req, TestKey};

pub struct ChildGateway {
    pub dir: tempfile::TempDir,
    /// The path the gateway was started with.
    pub config_path: PathBuf,
    /// Where the config text lives: `config_path` itself, or the target of its symlink.
    pub real_config_path: PathBuf,
    pub store: Store,
    pub org: String,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    upstream_url: String,
    poll_interval_ms: u64,
    /// `[keys] dir` as written in the config.
    keys_dir: String,
    /// Extra lines inside `[server]`.
    server_extra: String,
    child: Child,
}

impl Drop for ChildGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    l.local_addr().unwrap().port()
}

/// The config of a child gateway: fixed ports, keys in `keys/` next to the config.
pub fn child_config(
    port: u16,
    admin_port: u16,
    upstream_url: &str,
    poll_interval_ms: u64,
    routes: &str,
) -> String {
    child_config_with_keys(
        port,
        admin_port,
        upstream_url,
        poll_interval_ms,
        "keys",
        routes,
    )
}

/// [`child_config`] with another `[keys] dir` (relative to the config, or absolute).
pub fn child_config_with_keys(
    port: u16,
    admin_port: u16,
    upstream_url: &str,
    poll_interval_ms: u64,
    keys_dir: &str,
    routes: &str,
) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace_seconds = 5\n\n\
         [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n\
         [keys]\ndir = \"{keys_dir}\"\npoll_interval_ms = {poll_interval_ms}\n\n\
         [upstreams.main]\nurl = \"{upstream_url}\"\n\n{routes}"
    )
}

/// Puts `extra` lines at the end of the `[server]` table of a [`child_config_with_keys`] text.
fn with_server_extra(config: String, extra: &str) -> String {
    if extra.is_empty() {
        return config;
    }
    config.replacen("\n\n[admin]", &format!("\n{extra}\n\n[admin]"), 1)
}

/// Kills a child by its PID when dropped, unless it was handed on.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl ChildGateway {
    /// Starts `scopegate serve --config <dir>/scopegate.toml` with `routes` in front of
    /// `upstream` and waits until `/readyz` answers 200. With `symlinked_config`,
    /// `scopegate.toml` is a symlink to `real/scopegate.toml` (as Kubernetes mounts do), so
    /// rewriting the real file makes no event in the folder the gateway watches.
    pub async fn spawn(
        upstream: SocketAddr,
        routes: &str,
        poll_interval_ms: u64,
        symlinked_config: bool,
    ) -> Self {
        let url = format!("http://{upstream}");
        Self::start(
            &url,
            routes,
            poll_interval_ms,
            symlinked_config,
            None,
            &[],
            "",
        )
        .await
    }

    /// Starts a gateway whose upstream `main` is at `upstream_url`, with these variables added
    /// to its environment (e.g. `SSL_CERT_FILE`, which decides the system's root certificates).
    pub async fn spawn_with_env(upstream_url: &str, routes: &str, env: &[(&str, &str)]) -> Self {
        Self::start(upstream_url, routes, 100, false, None, env, "").await
    }

    /// Starts another gateway — its own temp dir, config, log and ports — that serves the key
    /// folder of `first` (its `keys/`, by absolute path): two replicas sharing one folder.
    pub async fn spawn_sharing_keys(
        first: &ChildGateway,
        routes: &str,
        poll_interval_ms: u64,
    ) -> Self {
        Self::start(
            &first.upstream_url,
            routes,
            poll_interval_ms,
            false,
            Some((first.store.dir(), &first.org)),
            &[],
            "",
        )
        .await
    }

    /// Starts a gateway on an existing key folder (absolute path) whose organization `org`
    /// exists already; nothing is created in the folder.
    pub async fn spawn_on_keys(
        upstream: SocketAddr,
        routes: &str,
        poll_interval_ms: u64,
        keys_dir: &Path,
        org: &str,
    ) -> Self {
        let url = format!("http://{upstream}");
        Self::start(
            &url,
            routes,
            poll_interval_ms,
            false,
            Some((keys_dir, org)),
            &[],
            "",
        )
        .await
    }

    /// [`ChildGateway::spawn_on_keys`] with extra lines inside `[server]` (limits, timeouts).
    pub async fn spawn_on_keys_with_server(
        upstream: SocketAddr,
        server_extra: &str,
        routes: &str,
        poll_interval_ms: u64,
        keys_dir: &Path,
        org: &str,
    ) -> Self {
        let url = format!("http://{upstream}");
        Self::start(
            &url,
            routes,
            poll_interval_ms,
            false,
            Some((keys_dir, org)),
            &[],
            server_extra,
        )
        .await
    }

    async fn start(
        upstream_url: &str,
        routes: &str,
        poll_interval_ms: u64,
        symlinked_config: bool,
        shared_keys: Option<(&Path, &str)>,
        env: &[(&str, &str)],
        server_extra: &str,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("scopegate.toml");
        let real_config_path = if symlinked_config {
            std::fs::create_dir(dir.path().join("real")).unwrap();
            std::os::unix::fs::symlink("real/scopegate.toml", &config_path).unwrap();
            dir.path().join("real").join("scopegate.toml")
        } else {
            config_path.clone()
        };
        let (store, org, keys_dir) = match shared_keys {
            Some((keys, org)) => (
                Store::new(keys, Catalog::default()),
                org.to_owned(),
                toml_path(keys),
            ),
            None => {
                let store = Store::new(dir.path().join("keys"), Catalog::default());
                let org = store.create_org("child org").unwrap().id;
                (store, org, "keys".to_owned())
            }
        };
        // Not next to the config: that folder is watched, and each log line would be an event.
        std::fs::create_dir(dir.path().join("log")).unwrap();
        let log_path = dir.path().join("log").join("gateway.log");
        for attempt in 0..5 {
            let (port, admin_port) = (free_port(), free_port());
            if port == admin_port {
                continue;
            }
            write_atomically(
                &real_config_path,
                &with_server_extra(
                    child_config_with_keys(
                        port,
                        admin_port,
                        upstream_url,
                        poll_interval_ms,
                        &keys_dir,
                        routes,
                    ),
                    server_extra,
                ),
            );
            let log = std::fs::File::create(&log_path).unwrap();
            let mut guard = Guard(Some(
                Command::new(env!("CARGO_BIN_EXE_scopegate"))
                    .arg("serve")
                    .arg("--config")
                    .arg(&config_path)
                    .env("SCOPEGATE_LOG", "info")
                    .envs(env.iter().copied())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("starting the scopegate binary"),
            ));
            let admin_addr = SocketAddr::from(([127, 0, 0, 1], admin_port));
            let ready = eventually(Duration::from_secs(10), || async move {
                Req::new("GET", format!("http://{admin_addr}/readyz"))
                    .try_send()
                    .await
                    .is_ok_and(|r| r.status == 200)
            })
            .await;
            if ready {
                return ChildGateway {
                    dir,
                    config_path,
                    real_config_path,
                    store,
                    org,
                    addr: SocketAddr::from(([127, 0, 0, 1], port)),
                    admin_addr,
                    upstream_url: upstream_url.to_owned(),
                    poll_interval_ms,
                    keys_dir,
                    server_extra: server_extra.to_owned(),
                    child: guard.0.take().unwrap(),
                };
            }
            let exited = guard
                .0
                .as_mut()
                .unwrap()
                .try_wait()
                .ok()
                .flatten()
                .is_some();
            drop(guard);
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            // Only a lost race for a port is worth another attempt.
            assert!(
                exited && log.contains("binding") && attempt < 4,
                "the gateway never became ready (exited: {exited}); its log:\n{log}"
            );
        }
        panic!("no free pair of ports in five attempts");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The config this gateway was started with, on its ports, with other routes.
    pub fn config_with_routes(&self, routes: &str) -> String {
        with_server_extra(
            child_config_with_keys(
                self.addr.port(),
                self.admin_addr.port(),
                &self.upstream_url,
                self.poll_interval_ms,
                &self.keys_dir,
                routes,
            ),
            &self.server_extra,
        )
    }

    pub fn request(&self, method: &str, path_and_query: &str) -> Req {
        Req::new(method, self.url(path_and_query))
    }

    /// The Prometheus text of its admin listener.
    pub async fn metrics(&self) -> String {
        Req::new("GET", format!("http://{}/metrics", self.admin_addr))
            .send()
            .await
            .text()
    }

    /// Replaces the config text (temp file + rename, next to the real file).
    pub fn write_config(&self, text: &str) {
        write_atomically(&self.real_config_path, text);
    }

    /// Creates a key the way the CLI does (the gateway picks it up from the folder).
    pub fn create_key(&self, scopes: &[&str]) -> TestKey {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        let record = self
            .store
            .create_key(&self.org, "child key", &scopes, Algorithm::HS256)
            .unwrap();
        TestKey {
            id: record.id,
            secret: record.secret,
            org: self.org.clone(),
            algorithm: Algorithm::HS256,
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    pub fn get(&self, path_and_query: &str) -> Req {
        Req::new("GET", self.url(path_and_query))
    }

    /// A `kB` field of `/proc/<pid>/status` (VmRSS, VmHWM, …), in bytes.
    pub fn status_bytes(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the gateway process is alive");
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("{field}:")))
            .unwrap_or_else(|| panic!("no {field} in /proc status"));
        let kb: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("unparsable: {line}"));
        kb * 1024
    }

    /// The gateway's log so far (stderr), for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log").join("gateway.log")).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }
}

/// Writes `text` to a temp file next to `path` and renames it over `path`.
pub fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Runs the `scopegate` binary with `args` to completion and returns its output; the process
/// is killed by its PID (and the test fails) if it outlives `limit`. Blocking: call it from a
/// plain thread or `spawn_blocking`.
pub fn run_cli(args: &[&str], limit: Duration) -> std::process::Output {
    use std::io::Read;
    let mut guard = Guard(Some(
        Command::new(env!("CARGO_BIN_EXE_scopegate"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the scopegate binary"),
    ));
    let child = guard.0.as_mut().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("polling the child") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "scopegate {args:?} did not finish within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    guard.0 = None;
    std::process::Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// [`run_cli`] with `--json`, for a command that must succeed: its parsed stdout.
pub fn run_cli_json(args: &[&str], limit: Duration) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = run_cli(&all, limit);
    assert!(
        out.status.success(),
        "scopegate {all:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout of scopegate {all:?} is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
