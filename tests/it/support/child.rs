//! The real `scopegate serve` binary as a child process, for tests that need a process of its
//! own: signals (SIGHUP) and memory measurements (its RSS is the gateway's alone).
//!
//! A config cannot report the ports it bound, so the test picks free ports (bind
//! 127.0.0.1:0, read, release) and writes them in; if the child then fails to bind (another
//! process took the port in between), it is started again on new ports. The child is killed
//! by its PID when the handle drops, panics included.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use scopegate::keys::store::Store;
use scopegate::scopes::Catalog;

use super::{eventually, Req, TestKey};

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
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace_seconds = 5\n\n\
         [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n\
         [keys]\ndir = \"keys\"\npoll_interval_ms = {poll_interval_ms}\n\n\
         [upstreams.main]\nurl = \"{upstream_url}\"\n\n{routes}"
    )
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
        Self::start(&url, routes, poll_interval_ms, symlinked_config, &[]).await
    }

    /// Starts a gateway whose upstream `main` is at `upstream_url`, with these variables added
    /// to its environment (e.g. `SSL_CERT_FILE`, which decides the system's root certificates).
    pub async fn spawn_with_env(upstream_url: &str, routes: &str, env: &[(&str, &str)]) -> Self {
        Self::start(upstream_url, routes, 100, false, env).await
    }

    async fn start(
        upstream_url: &str,
        routes: &str,
        poll_interval_ms: u64,
        symlinked_config: bool,
        env: &[(&str, &str)],
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
        let store = Store::new(dir.path().join("keys"), Catalog::default());
        let org = store.create_org("child org").unwrap().id;
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
                &child_config(port, admin_port, upstream_url, poll_interval_ms, routes),
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
        child_config(
            self.addr.port(),
            self.admin_addr.port(),
            &self.upstream_url,
            self.poll_interval_ms,
            routes,
        )
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
