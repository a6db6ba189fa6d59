//! The real `scopegate` binary, driven the way people and CI drive it: in a temp dir with its
//! own config file. Every child process is killed by its PID when its guard drops, panics
//! included, and every wait has a deadline.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::support::token::now;
use crate::support::{eventually, RecordingUpstream, Req};

const BIN: &str = env!("CARGO_BIN_EXE_scopegate");
/// No CLI command should take anywhere near this long.
const COMMAND_LIMIT: Duration = Duration::from_secs(30);

// ---- harness ---------------------------------------------------------------------------------

/// Routes of the test config: one scoped GET, one scoped POST, one public.
const ROUTES: &str = r#"
[[routes]]
methods = ["GET"]
path = "/machines/{machine}/i/{instance}"
scopes = ["state.read"]
upstream = "main"

[[routes]]
methods = ["POST"]
path = "/machines"
scopes = ["machines.write"]
upstream = "main"

[[routes]]
methods = ["GET"]
path = "/status"
public = true
upstream = "main"
"#;

fn config_text(port: u16, admin_port: u16, upstream: SocketAddr) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace_seconds = 2\n\n\
         [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n\
         [keys]\ndir = \"keys\"\n\n\
         [upstreams.main]\nurl = \"http://{upstream}\"\n{ROUTES}"
    )
}

/// Runs a prepared command to completion, killing it if it outlives `limit`.
fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let mut child = ChildGuard::spawn(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut out = child.0.stdout.take().unwrap();
    let mut err = child.0.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let status = child
        .wait_within(limit)
        .unwrap_or_else(|| panic!("{cmd:?} did not finish within {limit:?}"));
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// A child process that is killed (by its PID) and reaped when dropped.
struct ChildGuard(Child);

impl ChildGuard {
    fn spawn(cmd: &mut Command) -> Self {
        ChildGuard(cmd.spawn().expect("starting the scopegate binary"))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Polls for the exit status until `limit` passes.
    fn wait_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().expect("polling the child") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_success(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

fn assert_failure(o: &Output, what: &str) {
    assert!(
        !o.status.success(),
        "{what} should have failed:\nstdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
}

/// A temp dir holding `scopegate.toml` (keys in `keys/` next to it).
struct TestEnv {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl TestEnv {
    fn new() -> Self {
        // Ports and upstream are never used by commands that do not serve.
        Self::with_config(&config_text(0, 0, SocketAddr::from(([127, 0, 0, 1], 9))))
    }

    fn with_config(text: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("scopegate.toml");
        std::fs::write(&config, text).unwrap();
        TestEnv { dir, config }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn keys_dir(&self) -> PathBuf {
        self.path().join("keys")
    }

    /// The binary in the temp dir, with none of the caller's scopegate settings.
    fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(self.path())
            .env_remove("SCOPEGATE_CONFIG")
            .env_remove("SCOPEGATE_SECRET")
            .env_remove("SCOPEGATE_LOG")
            .env_remove("SCOPEGATE_LOG_FORMAT");
        cmd
    }

    /// `scopegate --config <the config> ARGS`.
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.command();
        cmd.arg("--config").arg(&self.config).args(args);
        output_within(cmd, COMMAND_LIMIT)
    }

    /// `run` with `--json`; asserts success and parses stdout.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.run(&all);
        assert_success(&out, &args.join(" "));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("stdout of {args:?} is not JSON ({e}):\n{}", stdout(&out)))
    }

    fn create_org(&self, name: &str) -> String {
        let v = self.json(&["orgs", "create", "--name", name]);
        v["id"].as_str().expect("an org id").to_owned()
    }

    /// `keys create --org ORG --name n GRANT…` → (id, secret).
    fn create_key(&self, org: &str, grant: &[&str]) -> (String, String) {
        let mut args = vec!["keys", "create", "--org", org, "--name", "n"];
        args.extend_from_slice(grant);
        let v = self.json(&args);
        (
            v["id"].as_str().unwrap().to_owned(),
            v["key"].as_str().unwrap().to_owned(),
        )
    }

    fn org_file(&self, org: &str) -> PathBuf {
        self.keys_dir().join(format!("{org}.toml"))
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("an ephemeral port");
    l.local_addr().unwrap().port()
}

/// The status of `GET path` on `addr`, or `None` if nothing answers yet.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = String::new();
    BufReader::new(s).read_line(&mut head).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

/// `scopegate serve` as a child process on free ports, ready when this returns.
struct Served {
    addr: SocketAddr,
    _child: ChildGuard,
}

impl TestEnv {
    /// Writes the config with fresh ports in front of `upstream` and starts `serve`. Picking a
    /// port (bind :0, read, release) races with other processes, so a lost bind is retried.
    fn serve(&self, upstream: SocketAddr) -> Served {
        let log_path = self.path().join("serve.log");
        for attempt in 0..4 {
            let (port, admin_port) = (free_port(), free_port());
            if port == admin_port {
                continue;
            }
            std::fs::write(&self.config, config_text(port, admin_port, upstream)).unwrap();
            let log = std::fs::File::create(&log_path).unwrap();
            let mut cmd = self.command();
            cmd.arg("serve")
                .arg("--config")
                .arg(&self.config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
            let mut child = ChildGuard::spawn(&mut cmd);
            let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if http_status(admin, "/readyz") == Some(200) {
                    return Served {
                        addr: SocketAddr::from(([127, 0, 0, 1], port)),
                        _child: child,
                    };
                }
                if child.0.try_wait().unwrap().is_some() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let exited = child.0.try_wait().unwrap().is_some();
            drop(child);
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            assert!(
                exited && log.contains("binding") && attempt < 3,
                "scopegate serve never became ready (exited: {exited}); its log:\n{log}"
            );
        }
        panic!("no free pair of ports in four attempts");
    }
}

fn b64_json(part: &str) -> (String, Value) {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .unwrap_or_else(|e| panic!("{part} is not base64url: {e}"));
    let text = String::from_utf8(bytes).unwrap();
    let value = serde_json::from_str(&text).unwrap();
    (text, value)
}

// ---- orgs ------------------------------------------------------------------------------------

#[test]
fn orgs_create_json_prints_id_and_name() {
    let env = TestEnv::new();
    let v = env.json(&["orgs", "create", "--name", "Acme Robots"]);
    let obj = v.as_object().expect("an object");
    assert_eq!(
        obj.keys().collect::<Vec<_>>(),
        ["id", "name"],
        "exactly id and name: {v}"
    );
    let id = v["id"].as_str().unwrap();
    assert!(id.starts_with("org_"), "{id}");
    assert_eq!(v["name"], "Acme Robots");
    assert!(env.org_file(id).is_file(), "no key file for {id}");
}

#[test]
fn orgs_list_json_is_an_array_of_every_org() {
    let env = TestEnv::new();
    assert_eq!(env.json(&["orgs", "list"]), json!([]));
    let a = env.create_org("A");
    let b = env.create_org("B");
    let list = env.json(&["orgs", "list"]);
    let list = list.as_array().expect("an array");
    let mut ids: Vec<&str> = list.iter().map(|o| o["id"].as_str().unwrap()).collect();
    ids.sort();
    let mut want = vec![a.as_str(), b.as_str()];
    want.sort();
    assert_eq!(ids, want);
    assert!(list.iter().any(|o| o["name"] == "A"));
}

#[test]
fn orgs_create_refuses_an_empty_name() {
    let env = TestEnv::new();
    let out = env.run(&["orgs", "create", "--name", "  "]);
    assert_failure(&out, "orgs create with a blank name");
    assert!(
        stderr(&out).contains("name must not be empty"),
        "{}",
        stderr(&out)
    );
}

// ---- keys ------------------------------------------------------------------------------------

#[test]
fn keys_create_prints_the_secret_once_with_a_warning() {
    let env = TestEnv::new();
    let org = env.create_org("acme");
    let out = env.run(&[
        "keys",
        "create",
        "--org",
        &org,
        "--use",
        "production",
        "--name",
        "n",
        "--json",
    ]);
    assert_success(&out, "keys create");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let obj = v.as_object().unwrap();
    assert_eq!(obj.keys().collect::<Vec<_>>(), ["id", "key"], "{v}");
    let id = v["id"].as_str().unwrap();
    let secret = v["key"].as_str().unwrap();
    assert!(id.starts_with("sbk_"), "{id}");
    assert!(secret.starts_with("sbsec_"), "{secret}");
    // 256 bits, base64url: 43 characters after the prefix.
    assert!(secret.len() >= "sbsec_".len() + 43, "{secret}");
    let err = stderr(&out);
    assert!(
        err.contains("warning") && err.contains("never be shown again"),
        "stderr: {err}"
    );
    assert!(!err.contains(secret), "the secret went to stderr: {err}");

    let listed = env.json(&["keys", "list", "--org", &org]);
    assert_eq!(
        listed[0]["scopes"],
        json!([
            "events.write",
            "indexes.read",
            "instances.write",
            "state.read"
        ])
    );
}

#[test]
fn keys_create_with_scopes_grants_exactly_those() {
    let env = TestEnv::new();
    let org = env.create_org("acme");
    let (id, _) = env.create_key(&org, &["--scopes", "state.read,org.keys.write"]);
    let listed = env.json(&["keys", "list"]);
    let key = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .expect("the key is listed");
    assert_eq!(key["scopes"], json!(["org-keys.write", "state.read"]));
    assert_eq!(key["org"], org.as_str());
}

#[test]
fn keys_create_with_an_unknown_scope_fails_clearly() {
    let env = TestEnv::new();
    let org = env.create_org("acme");
    let out = env.run(&[
        "keys",
        "create",
        "--org",
        &org,
        "--scopes",
        "state.read,nope.read",
        "--name",
        "n",
    ]);
    assert_failure(&out, "keys create with an unknown scope");
    assert!(
        stderr(&out).contains("unknown scope 'nope.read'"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.json(&["keys", "list"]), json!([]));
}

#[test]
fn keys_create_needs_use_or_scopes() {
    let env = TestEnv::new();
    let org = env.create_org("acme");
    let out = env.run(&["keys", "create", "--org", &org, "--name", "n"]);
    assert_failure(&out, "keys create without a grant");
    let err = stderr(&out);
    assert!(
        err.contains("--use") && err.contains("--scopes"),
        "stderr: {err}"
    );
    assert_eq!(env.json(&["keys", "list"]), json!([]));
}

#[test]
fn keys_create_refuses_both_use_and_scopes() {
    let env = TestEnv::new();
    let org = env.create_org("acme");
    let out = env.run(&[
        "keys",
        "create",
        "--org",
        &org,
        "--name",
        "n",
        "--use",
        "ci",
        "--scopes",
        "state.read",
    ]);
    assert_failure(&out, "keys create with --use and --scopes");
    let err = stderr(&out);
    assert!(
        err.contains("--use") && err.contains("--scopes"),
        "stderr: {err}"
    );
    assert_eq!(env.json(&["keys", "list"]), json!([]));
}

#[test]
fn keys_create_in_an_unknown_org_fails() {
    let env = TestEnv::new();
    env.create_org("acme");
    let out = env.run(&[
        "keys", "create", "--org", "org_nope", "--use", "ci", "--name", "n",
    ]);
    assert_failure(&out, "keys create in an unknown org");
    assert!(
        stderr(&out).contains("no organization 'org_nope'"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn keys_list_never_shows_a_secret() {
    let env = TestEnv::new();
    let org = env.create_org("acme");
    let (id, secret) = env.create_key(&org, &["--use", "ci"]);
    // The secret is on disk (the gateway needs it) …
    let file = std::fs::read_to_string(env.org_file(&org)).unwrap();
    assert!(file.contains(&secret));
    // … but no listing shows it.
    let out = env.run(&["keys", "list", "--json"]);
    assert_success(&out, "keys list --json");
    assert!(!stdout(&out).contains(&secret), "{}", stdout(&out));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    assert!(listed[0].get("secret").is_none() && listed[0].get("key").is_none());
    let text = env.run(&["keys", "list"]);
    assert_success(&text, "keys list");
    assert!(stdout(&text).contains(&id));
    assert!(!stdout(&text).contains(&secret));
}

#[test]
fn keys_delete_removes_the_key() {
    let env = TestEnv::new();
    let org = env.create_org("acme");
    let (gone, _) = env.create_key(&org, &["--use", "ci"]);
    let (kept, _) = env.create_key(&org, &["--use", "production"]);
    let v = env.json(&["keys", "delete", "--key", &gone]);
    assert_eq!(v["id"], gone.as_str());
    assert_eq!(v["org"], org.as_str());
    let ids: Vec<String> = env
        .json(&["keys", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, [kept]);
    let again = env.run(&["keys", "delete", "--key", &gone]);
    assert_failure(&again, "deleting a deleted key");
    assert!(stderr(&again).contains("no key"), "{}", stderr(&again));
}

#[test]
fn org_ids_cannot_traverse_paths() {
    let env = TestEnv::new();
    env.create_org("acme");
    for org in ["../x", "../../etc/passwd", "keys/../x", ".hidden"] {
        let out = env.run(&["keys", "create", "--org", org, "--use", "ci", "--name", "n"]);
        assert_failure(&out, &format!("keys create --org {org}"));
        assert!(
            stderr(&out).contains("is not a valid organization id"),
            "{org}: {}",
            stderr(&out)
        );
        let out = env.run(&["keys", "list", "--org", org]);
        assert_failure(&out, &format!("keys list --org {org}"));
    }
    assert!(!env.path().join("x.toml").exists());
    let out = env.run(&["keys", "delete", "--key", "sbk_../../x"]);
    assert_failure(&out, "keys delete with a traversing id");
    assert!(
        stderr(&out).contains("not a valid key id"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn key_files_are_private() {
    let env = TestEnv::new();
    let org = env.create_org("acme");
    env.create_key(&org, &["--use", "ci"]);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&env.org_file(&org)), 0o600);
    assert_eq!(mode(&env.keys_dir()), 0o700);
    let leftovers: Vec<String> = std::fs::read_dir(env.keys_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

// ---- tokens ----------------------------------------------------------------------------------

#[test]
fn tokens_generate_makes_a_state_backed_token() {
    let env = TestEnv::new();
    let org = env.create_org("acme");
    let (id, secret) = env.create_key(&org, &["--use", "production"]);
    let before = now();
    let out = env.run(&[
        "tokens",
        "generate",
        "--key",
        &id,
        "--secret",
        &secret,
        "--claims",
        r#"{"sub":"u1"}"#,
        "--expires-in",
        "10m",
    ]);
    assert_success(&out, "tokens generate");
    let token = stdout(&out).trim().to_owned();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");

    let (header, _) = b64_json(parts[0]);
    assert_eq!(header, format!(r#"{{"alg":"HS256","kid":"{id}"}}"#));

    let (raw, payload) = b64_json(parts[1]);
    // State Backed's library writes act, aud, exp, iss, iat, in that order.
    let order: Vec<usize> = ["\"act\"", "\"aud\"", "\"exp\"", "\"iss\"", "\"iat\""]
        .iter()
        .map(|k| raw.find(k).unwrap_or_else(|| panic!("{k} missing: {raw}")))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{raw}");
    assert_eq!(payload.as_object().unwrap().len(), 5, "{raw}");
    assert_eq!(payload["act"], json!({"sub": "u1"}));
    assert_eq!(payload["aud"], "https://api.statebacked.dev/");
    assert_eq!(
        payload["iss"],
        format!("https://{id}.client.statebacked.dev/").as_str()
    );
    let iat = payload["iat"].as_u64().unwrap();
    let exp = payload["exp"].as_u64().unwrap();
    assert_eq!(exp - iat, 600);
    assert!(iat >= before && iat <= now(), "iat {iat}");

    // HMAC-SHA256 over the secret's UTF-8 bytes.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
    assert_eq!(
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()),
        parts[2],
        "signature"
    );
}

/// The `aud` of a token printed by `tokens generate`.
fn audience_of(out: &Output) -> Value {
    let token = stdout(out).trim().to_owned();
    let payload = token.split('.').nth(1).unwrap_or_else(|| panic!("{token}"));
    b64_json(payload).1["aud"].clone()
}

const SECRET: &str = "sbsec_0123456789012345678901234567890123456789";

#[test]
fn tokens_generate_takes_the_audience_from_the_config() {
    let text = format!(
        "[auth]\naudiences = [\"https://gw.example/\"]\n\n{}",
        config_text(0, 0, SocketAddr::from(([127, 0, 0, 1], 9)))
    );
    let env = TestEnv::with_config(&text);
    let out = env.run(&["tokens", "generate", "--key", "sbk_x", "--secret", SECRET]);
    assert_success(&out, "tokens generate");
    assert_eq!(audience_of(&out), "https://gw.example/");
}

#[test]
fn tokens_generate_works_without_any_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir.path())
        .env_remove("SCOPEGATE_CONFIG")
        .args(["tokens", "generate", "--key", "sbk_x", "--secret", SECRET]);
    let out = output_within(cmd, COMMAND_LIMIT);
    assert_success(&out, "tokens generate without a config");
    assert_eq!(audience_of(&out), "https://api.statebacked.dev/");
}

#[test]
fn tokens_generate_refuses_a_broken_config() {
    // Falling back to defaults would mint a token for the wrong audience, refused later.
    let env = TestEnv::with_config("[auth]\naudiences = \"not a list\"\n");
    let out = env.run(&["tokens", "generate", "--key", "sbk_x", "--secret", SECRET]);
    assert_failure(&out, "tokens generate with a broken config");
    let want = format!("{}:2:", env.config.display());
    assert!(
        stderr(&out).contains(&want),
        "want {want}: {}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
}

#[test]
fn tokens_generate_refuses_claims_that_are_not_an_object() {
    let env = TestEnv::new();
    let out = env.run(&[
        "tokens", "generate", "--key", "sbk_x", "--secret", SECRET, "--claims", "[1,2]",
    ]);
    assert_failure(&out, "tokens generate with array claims");
    assert!(
        stderr(&out).contains("--claims must be a JSON object"),
        "{}",
        stderr(&out)
    );
}

// ---- check -----------------------------------------------------------------------------------

#[test]
fn check_prints_the_route_table() {
    let env = TestEnv::new();
    let org = env.create_org("acme");
    env.create_key(&org, &["--use", "ci"]);
    let out = env.run(&["check"]);
    assert_success(&out, "check");
    let text = stdout(&out);
    assert!(text.contains("1 organizations, 1 keys"), "{text}");
    let header = text
        .lines()
        .find(|l| l.starts_with("METHODS"))
        .unwrap_or_else(|| panic!("no header: {text}"));
    let cols: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(cols, ["METHODS", "PATH", "SCOPES", "UPSTREAM"]);
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip_while(|l| !l.starts_with("METHODS"))
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec![
                "GET",
                "/machines/{machine}/i/{instance}",
                "state.read",
                "main"
            ],
            vec!["POST", "/machines", "machines.write", "main"],
            vec!["GET", "/status", "(public)", "main"],
            // The gateway's own endpoints come last.
            vec![
                "GET",
                "/keys",
                "org-keys.write",
                "(built-in",
                "keys",
                "API)"
            ],
            vec![
                "POST",
                "/keys",
                "org-keys.write",
                "(built-in",
                "keys",
                "API)"
            ],
            vec![
                "DELETE",
                "/keys/{key}",
                "org-keys.write",
                "(built-in",
                "keys",
                "API)"
            ],
            vec![
                "POST",
                "/tokens",
                "(public)",
                "(built-in",
                "token",
                "exchange)"
            ],
            vec!["GET", "/dashboard", "(public)", "(built-in", "dashboard)"],
            vec![
                "GET",
                "/dashboard/{asset}",
                "(public)",
                "(built-in",
                "dashboard)"
            ],
        ]
    );
}

#[test]
fn check_passes_before_any_organization_exists() {
    // `serve` creates the key folder; `check` must not fail a config for its absence.
    let env = TestEnv::new();
    let out = env.run(&["check"]);
    assert_success(&out, "check without a key folder");
    assert!(
        stderr(&out).contains("does not exist yet"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_fails_with_file_and_line_on_a_bad_config() {
    let text = config_text(0, 0, SocketAddr::from(([127, 0, 0, 1], 9)))
        .replace("\"machines.write\"", "\"machines.wirte\"");
    let env = TestEnv::with_config(&text);
    let line = text
        .lines()
        .position(|l| l.contains("machines.wirte"))
        .unwrap()
        + 1;
    let out = env.run(&["check"]);
    assert_failure(&out, "check of a bad config");
    let want = format!(
        "{}:{line}: routes[1].scopes: unknown scope 'machines.wirte'",
        env.config.display()
    );
    assert!(
        stderr(&out).contains(&want),
        "want {want}\nstderr: {}",
        stderr(&out)
    );
    assert!(!stdout(&out).contains("METHODS"), "{}", stdout(&out));
}

#[test]
fn check_fails_with_file_and_line_on_a_broken_key_file() {
    let env = TestEnv::new();
    let good = env.create_org("good");
    let broken = env.create_org("broken");
    let path = env.org_file(&broken);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("oops = true\n");
    let line = text.lines().count();
    std::fs::write(&path, &text).unwrap();
    let out = env.run(&["check"]);
    assert_failure(&out, "check with a broken key file");
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{}:{line}:", path.display())),
        "stderr: {err}"
    );
    assert!(err.contains("oops"), "{err}");
    assert!(
        !err.contains(&good),
        "only the broken file is reported: {err}"
    );
}

#[test]
fn check_fails_when_two_orgs_claim_one_key_id() {
    let env = TestEnv::new();
    let a = env.create_org("a");
    let b = env.create_org("b");
    let (id, _) = env.create_key(&a, &["--use", "ci"]);
    // Copy a's key into b's file: the gateway refuses such a key for both.
    let a_text = std::fs::read_to_string(env.org_file(&a)).unwrap();
    let keys = &a_text[a_text.find("[[keys]]").unwrap()..];
    let mut b_text = std::fs::read_to_string(env.org_file(&b))
        .unwrap()
        .replace("keys = []\n", "");
    b_text.push('\n');
    b_text.push_str(keys);
    std::fs::write(env.org_file(&b), b_text).unwrap();
    // Each file is valid on its own …
    let listed = env.json(&["keys", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    // … but together they are not.
    let out = env.run(&["check"]);
    assert_failure(&out, "check with a key id in two orgs");
    assert!(stderr(&out).contains(&id), "{}", stderr(&out));
}

// ---- --config --------------------------------------------------------------------------------

#[test]
fn config_defaults_to_the_environment_variable() {
    let env = TestEnv::new();
    let elsewhere = env.path().join("elsewhere.toml");
    std::fs::rename(&env.config, &elsewhere).unwrap();
    let mut cmd = env.command();
    cmd.env("SCOPEGATE_CONFIG", &elsewhere).arg("check");
    let out = output_within(cmd, COMMAND_LIMIT);
    assert_success(&out, "check with $SCOPEGATE_CONFIG");
    assert!(
        stdout(&out).starts_with(&format!("{}: ok", elsewhere.display())),
        "{}",
        stdout(&out)
    );
}

#[test]
fn config_defaults_to_the_working_directory() {
    let env = TestEnv::new();
    let mut cmd = env.command();
    cmd.arg("check");
    let out = output_within(cmd, COMMAND_LIMIT);
    assert_success(&out, "check in the config's folder");
    assert!(
        stdout(&out).starts_with("scopegate.toml: ok"),
        "{}",
        stdout(&out)
    );
    // Keys are resolved against the working directory too: orgs land in ./keys.
    let mut cmd = env.command();
    cmd.args(["orgs", "create", "--name", "x", "--json"]);
    let out = output_within(cmd, COMMAND_LIMIT);
    assert_success(&out, "orgs create with the default config");
    let id = serde_json::from_slice::<Value>(&out.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(env.org_file(&id).is_file());
}

#[test]
fn config_flag_beats_the_environment_variable() {
    let env = TestEnv::new();
    let broken = env.path().join("broken.toml");
    std::fs::write(&broken, "this is not toml").unwrap();
    let mut cmd = env.command();
    cmd.env("SCOPEGATE_CONFIG", &broken)
        .arg("--config")
        .arg(&env.config)
        .arg("check");
    let out = output_within(cmd, COMMAND_LIMIT);
    assert_success(&out, "check --config with a broken $SCOPEGATE_CONFIG");
}

#[test]
fn missing_default_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir.path())
        .env_remove("SCOPEGATE_CONFIG")
        .arg("check");
    let out = output_within(cmd, COMMAND_LIMIT);
    assert_failure(&out, "check without any config");
    let err = stderr(&out);
    assert!(
        err.contains("scopegate.toml") && err.contains("cannot read config"),
        "{err}"
    );
}

// ---- a running gateway -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_key_and_token_work_on_a_running_gateway_until_the_key_is_deleted() {
    let up = RecordingUpstream::start().await;
    let env = TestEnv::new();
    let org = env.create_org("acme");
    let (id, secret) = env.create_key(&org, &["--use", "production"]);
    let out = env.run(&[
        "tokens",
        "generate",
        "--key",
        &id,
        "--secret",
        &secret,
        "--claims",
        r#"{"sub":"u1"}"#,
    ]);
    assert_success(&out, "tokens generate");
    let token = stdout(&out).trim().to_owned();

    let gw = env.serve(up.addr);
    let url = format!("http://{}/machines/m1/i/i1", gw.addr);
    let res = Req::new("GET", url.clone()).bearer(&token).send().await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(up.count(), 1);
    let seen = up.last();
    assert_eq!(seen.path_and_query, "/machines/m1/i/i1");
    assert_eq!(seen.header("x-scopegate-key"), Some(id.as_str()));
    assert_eq!(seen.header("x-scopegate-org"), Some(org.as_str()));
    assert_eq!(seen.header("x-scopegate-sub"), Some("u1"));

    let deleted = env.run(&["keys", "delete", "--key", &id]);
    assert_success(&deleted, "keys delete");
    let refused = eventually(Duration::from_secs(1), || {
        let req = Req::new("GET", url.clone()).bearer(&token);
        async move { req.send().await.status == 401 }
    })
    .await;
    assert!(refused, "the deleted key was still accepted after 1 s");
    let seen = up.count();
    let res = Req::new("GET", url.clone()).bearer(&token).send().await;
    res.assert_error(401, "invalid-token");
    assert_eq!(up.count(), seen, "a refused request reached the upstream");
}

// ---- demo ------------------------------------------------------------------------------------

/// What `scopegate demo` printed before it started waiting.
struct DemoBanner {
    base: String,
    prod: String,
    ci: String,
    keys_dir: PathBuf,
    text: String,
}

/// Reads the demo's stdout until the curl block is complete, for at most `limit`.
fn read_banner(lines: &mpsc::Receiver<String>, limit: Duration) -> DemoBanner {
    let deadline = Instant::now() + limit;
    let mut text = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                text.push_str(&line);
                text.push('\n');
                if line.contains("Press Ctrl-C") {
                    break;
                }
            }
            Err(e) => panic!("the demo's curl block did not appear ({e}); so far:\n{text}"),
        }
    }
    let value = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix} line in:\n{text}"))
            .trim()
            .to_owned()
    };
    let base = text
        .split("gateway on ")
        .nth(1)
        .and_then(|rest| rest.split([',', ' ']).next())
        .unwrap_or_else(|| panic!("no gateway URL in:\n{text}"))
        .to_owned();
    let keys_dir = text
        .split("Keys in ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .map(|p| PathBuf::from(p.trim_end_matches('.')))
        .unwrap_or_else(|| panic!("no key folder in:\n{text}"));
    DemoBanner {
        base,
        prod: value("PROD="),
        ci: value("CI="),
        keys_dir,
        text,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_shows_the_advertised_200_403_and_401() {
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("demo.log")).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("demo")
        .current_dir(dir.path())
        .env_remove("SCOPEGATE_CONFIG")
        .env_remove("SCOPEGATE_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    let mut demo = ChildGuard::spawn(&mut cmd);
    let out = demo.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let banner = tokio::task::block_in_place(|| read_banner(&rx, Duration::from_secs(30)));
    assert!(
        banner.base.starts_with("http://127.0.0.1:"),
        "{}",
        banner.text
    );
    assert!(banner.keys_dir.is_dir(), "{}", banner.text);

    // 200: a production key reads an instance's state; the echo shows the identity headers.
    let res = Req::new(
        "GET",
        format!("{}/machines/demo-machine/i/instance-1", banner.base),
    )
    .bearer(&banner.prod)
    .send()
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let echo = res.json();
    assert_eq!(echo["path"], "/machines/demo-machine/i/instance-1");
    assert_eq!(echo["headers"]["x-scopegate-sub"], "demo-user");
    assert!(echo["headers"].get("authorization").is_none(), "{echo}");

    // 403 missing-scope: a production key cannot create machines.
    let create = |token: &str| {
        Req::new("POST", format!("{}/machines", banner.base))
            .bearer(token)
            .header("content-type", "application/json")
            .body(r#"{"slug":"m"}"#)
    };
    let res = create(&banner.prod).send().await;
    res.assert_error(403, "missing-scope");
    // … and the ci key can.
    let res = create(&banner.ci).send().await;
    assert_eq!(res.status, 200, "{}", res.text());

    // 401 without a token.
    let res = Req::new("GET", format!("{}/machines", banner.base))
        .send()
        .await;
    res.assert_error(401, "missing-token");

    // Ctrl-C: the demo stops and deletes its temporary keys.
    let kill = Command::new("kill")
        .arg("-INT")
        .arg(demo.pid().to_string())
        .status()
        .expect("running kill");
    assert!(kill.success());
    let status = tokio::task::block_in_place(|| demo.wait_within(Duration::from_secs(15)))
        .expect("the demo did not stop within 15 s of SIGINT");
    let log = std::fs::read_to_string(dir.path().join("demo.log")).unwrap_or_default();
    assert!(status.success(), "demo exited with {status}; log:\n{log}");
    assert!(
        !banner.keys_dir.exists(),
        "the demo left its keys behind in {}",
        banner.keys_dir.display()
    );
}
