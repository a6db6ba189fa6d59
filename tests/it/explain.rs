//! `scopegate explain`: the decision trace for allow and for each reason to deny, computed by
//! the same pipeline `serve` runs — and the exit codes of the real binary.

use std::path::PathBuf;
use std::process::Command;

use jsonwebtoken::Algorithm;
use scopegate::cli::{explain, ExplainArgs};
use scopegate::keys::store::Store;
use scopegate::scopes::Catalog;
use serde_json::json;

use crate::support::token::now;
use crate::support::{mint, TestKey, DEFAULT_ROUTES};

struct Env {
    _dir: tempfile::TempDir,
    config: PathBuf,
    org: String,
    key: TestKey,
}

fn env(scopes: &[&str]) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("scopegate.toml");
    std::fs::write(
        &config,
        format!("[keys]\ndir = \"keys\"\n\n[upstreams.main]\nurl = \"http://127.0.0.1:9\"\n{DEFAULT_ROUTES}"),
    )
    .unwrap();
    let store = Store::new(dir.path().join("keys"), Catalog::default());
    let org = store.create_org("explained").unwrap().id;
    let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
    let record = store
        .create_key(&org, "k", &scopes, Algorithm::HS256)
        .unwrap();
    let key = TestKey {
        id: record.id,
        secret: record.secret,
        org: org.clone(),
        algorithm: Algorithm::HS256,
    };
    Env {
        _dir: dir,
        config,
        org,
        key,
    }
}

fn run(
    env: &Env,
    method: &str,
    path: &str,
    token: Option<String>,
    headers: &[&str],
) -> (String, bool) {
    let args = ExplainArgs {
        token,
        method: method.into(),
        path: path.into(),
        headers: headers.iter().map(|h| h.to_string()).collect(),
    };
    let (output, allowed) = explain(Some(&env.config), &args).unwrap();
    (output.text, allowed)
}

fn step<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find_map(|l| {
            l.trim_start()
                .strip_prefix(name)
                .filter(|rest| rest.starts_with(' '))
        })
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {name} step in:\n{text}"))
}

#[test]
fn allow_shows_every_step_and_the_upstream_url() {
    let e = env(&["state.read", "events.write"]);
    let (text, allowed) = run(
        &e,
        "GET",
        "/m%61chines/m1/i/i1?x=1",
        Some(mint(&e.key).sign()),
        &[],
    );
    assert!(allowed, "{text}");
    assert_eq!(
        step(&text, "path"),
        "/m%61chines/m1/i/i1 → /machines/m1/i/i1"
    );
    assert!(
        step(&text, "route").starts_with("GET /machines/{machine}/i/{instance} (line"),
        "{text}"
    );
    assert_eq!(step(&text, "required"), "state.read");
    assert!(
        step(&text, "token").starts_with("from the Authorization header"),
        "{text}"
    );
    assert!(
        step(&text, "key").starts_with(&format!("{} of {}", e.key.id, e.org)),
        "{text}"
    );
    assert!(step(&text, "verify").starts_with("signature ok"), "{text}");
    assert_eq!(
        step(&text, "organization"),
        format!("{} (the key's)", e.org)
    );
    assert!(
        step(&text, "effective").starts_with("events.write state.read"),
        "{text}"
    );
    assert_eq!(step(&text, "missing"), "none");
    assert_eq!(
        step(&text, "decision"),
        "allow: forwarded to upstream main as http://127.0.0.1:9/machines/m1/i/i1?x=1"
    );
    assert!(
        !text.contains(&mint(&e.key).sign()[..40]),
        "the token must not be printed"
    );
}

#[test]
fn each_reason_to_deny_is_explained() {
    let e = env(&["machines.read", "org-members.write"]);
    let good = mint(&e.key).sign();
    let t = now();
    // (method, path, token, headers, the step that refuses, the decision line)
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<String>,
        Vec<&'a str>,
        &'a str,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "GET",
            "/machines/m1/i/i1",
            None,
            vec![],
            "token",
            "deny: 401 missing-token (missing-token)",
        ),
        (
            "GET",
            "/machines/m1/i/i1",
            Some(mint(&e.key).sign_with("sbsec_wrong-secret-wrong-secret-wrong-secret")),
            vec![],
            "verify",
            "deny: 401 invalid-token (bad-signature)",
        ),
        (
            "GET",
            "/machines/m1/i/i1",
            Some(
                mint(&e.key)
                    .claim("exp", json!(t - 3600))
                    .claim("iat", json!(t - 7200))
                    .sign(),
            ),
            vec![],
            "verify",
            "deny: 401 expired-token (expired)",
        ),
        (
            "GET",
            "/machines/m1/i/i1",
            Some(good.clone()),
            vec![],
            "missing",
            "deny: 403 missing-scope (missing-scope)",
        ),
        (
            "GET",
            "/orgs/org_other/members/x",
            Some(good.clone()),
            vec![],
            "organization",
            "deny: 403 missing-org (missing-org)",
        ),
        (
            "GET",
            "/machines",
            Some(good.clone()),
            vec!["x-statebacked-org-id: org_other"],
            "organization",
            "deny: 403 missing-org (missing-org)",
        ),
        (
            "GET",
            "/machines",
            Some(good.clone()),
            vec![r#"x-statebacked-act: {"sub":"u"}"#],
            "act",
            "deny: 403 missing-scope (impersonation-denied)",
        ),
        (
            "GET",
            "/nowhere",
            Some(good.clone()),
            vec![],
            "route",
            "deny: 404 not-found (not-found)",
        ),
        (
            "DELETE",
            "/machines",
            Some(good.clone()),
            vec![],
            "route",
            "deny: 405 method-not-allowed (method-not-allowed)",
        ),
        (
            "GET",
            "/machines/../keys",
            Some(good.clone()),
            vec![],
            "path",
            "deny: 400 bad-request (ambiguous-path)",
        ),
    ];
    for (method, path, token, headers, failing_step, decision) in cases {
        let (text, allowed) = run(&e, method, path, token, &headers);
        assert!(!allowed, "{method} {path}:\n{text}");
        assert_eq!(
            step(&text, "decision"),
            decision,
            "{method} {path}:\n{text}"
        );
        // The step that refused is there and says why.
        assert!(!step(&text, failing_step).is_empty(), "{text}");
    }
}

#[test]
fn the_binary_exits_0_for_allow_1_for_deny_and_2_for_errors() {
    let e = env(&["state.read"]);
    let bin = env!("CARGO_BIN_EXE_scopegate");
    let allow = Command::new(bin)
        .args(["explain", "--config"])
        .arg(&e.config)
        .args(["--path", "/machines/m1/i/i1"])
        .env("SCOPEGATE_TOKEN", mint(&e.key).sign())
        .output()
        .unwrap();
    assert_eq!(
        allow.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&allow.stderr)
    );
    let deny = Command::new(bin)
        .args(["explain", "--json", "--config"])
        .arg(&e.config)
        .args(["--method", "POST", "--path", "/machines"])
        .env("SCOPEGATE_TOKEN", mint(&e.key).sign())
        .output()
        .unwrap();
    assert_eq!(deny.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&deny.stdout).unwrap();
    assert_eq!(report["allow"], false);
    assert_eq!(report["status"], 403);
    assert_eq!(report["code"], "missing-scope");
    assert!(report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["step"] == "missing"));
    let broken = Command::new(bin)
        .args([
            "explain",
            "--config",
            "/nonexistent/scopegate.toml",
            "--path",
            "/x",
        ])
        .env_remove("SCOPEGATE_TOKEN")
        .output()
        .unwrap();
    assert_eq!(broken.status.code(), Some(2));
}
