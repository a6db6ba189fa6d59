//! The example configs in `config/` never rot: each one validates, and
//! `config/statebacked.toml` covers every route of DESIGN.md's State Backed table with the
//! scope the table names.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use http::Method;
use scopegate::config::{self, Config};

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

fn statebacked() -> Config {
    let path = config_dir().join("statebacked.toml");
    config::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_example_config_validates() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(config_dir())
        .expect("config/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(
        files.iter().any(|f| f.ends_with("statebacked.toml")),
        "config/statebacked.toml is missing: {files:?}"
    );
    for file in &files {
        let config = config::load(file).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !config.routes.routes().is_empty(),
            "{} has no routes",
            file.display()
        );
    }
}

/// DESIGN.md's State Backed table as (method, concrete path, scope); `None` = public.
const TABLE: &[(&str, &str, Option<&str>)] = &[
    ("GET", "/machines", Some("machines.read")),
    ("GET", "/machines/m1", Some("machines.read")),
    ("POST", "/machines", Some("machines.write")),
    ("DELETE", "/machines/m1", Some("machines.admin")),
    ("POST", "/machines/m1", Some("instances.write")),
    ("GET", "/machines/m1/i", Some("instances.read")),
    ("GET", "/machines/m1/i/i1", Some("state.read")),
    ("DELETE", "/machines/m1/i/i1", Some("instances.admin")),
    ("PUT", "/machines/m1/i/i1/status", Some("instances.admin")),
    ("PUT", "/machines/m1/i/i1/v", Some("instances.admin")),
    ("GET", "/machines/m1/i/i1/admin", Some("instances.read")),
    ("GET", "/machines/m1/i/i1/events", Some("events.read")),
    ("POST", "/machines/m1/i/i1/events", Some("events.write")),
    ("GET", "/machines/m1/v", Some("machine-versions.read")),
    ("POST", "/machines/m1/v", Some("machine-versions.write")),
    (
        "POST",
        "/machines/m1/migrations",
        Some("machine-versions.write"),
    ),
    (
        "PUT",
        "/machines/m1/v/ver-2",
        Some("machine-versions.write"),
    ),
    (
        "PUT",
        "/machines/m1/migrations/mig-1",
        Some("machine-versions.write"),
    ),
    ("GET", "/machines/m1/indexes/by-owner", Some("indexes.read")),
    ("GET", "/logs", Some("logs.read")),
    ("GET", "/rt", Some("state.read")),
    ("GET", "/idps", Some("tokens.admin")),
    ("POST", "/idps", Some("tokens.admin")),
    ("DELETE", "/idps", Some("tokens.admin")),
    ("GET", "/token-providers", Some("tokens.admin")),
    ("POST", "/token-providers", Some("tokens.admin")),
    ("DELETE", "/token-providers", Some("tokens.admin")),
    (
        "GET",
        "/token-providers/anonymous-statebacked-dev",
        Some("tokens.admin"),
    ),
    ("POST", "/token-providers/svc", Some("tokens.admin")),
    ("DELETE", "/token-providers/svc", Some("tokens.admin")),
    ("GET", "/keys", Some("org-keys.write")),
    ("POST", "/keys", Some("org-keys.write")),
    ("DELETE", "/keys/sbk_abc", Some("org-keys.write")),
    ("GET", "/orgs", Some("org.read")),
    ("POST", "/orgs", Some("org.write")),
    ("GET", "/orgs/org_1/members", Some("org-members.write")),
    ("POST", "/orgs/org_1/members", Some("org-members.write")),
    (
        "DELETE",
        "/orgs/org_1/members/user-1",
        Some("org-members.write"),
    ),
    (
        "PUT",
        "/orgs/org_1/members/user-1/role",
        Some("org-members.write"),
    ),
    ("POST", "/tokens", None),
];

#[test]
fn statebacked_example_covers_every_route_of_the_design_table() {
    let config = statebacked();
    let mut hit = BTreeSet::new();
    for &(method, path, scope) in TABLE {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let found = config
            .routes
            .lookup(&m, path)
            .unwrap_or_else(|e| panic!("{method} {path}: no route ({e:?})"));
        let route = found.route;
        hit.insert(route.line);
        let scopes: Vec<&str> = route.scopes.iter().collect();
        match scope {
            Some(scope) => {
                assert!(!route.public, "{method} {path} must not be public");
                assert_eq!(scopes, [scope], "{method} {path} (line {})", route.line);
            }
            None => {
                assert!(route.public, "{method} {path} must be public");
                assert!(scopes.is_empty(), "{method} {path}: {scopes:?}");
            }
        }
        // The keys API is answered by the gateway itself; everything else goes upstream.
        let expected = if path.starts_with("/keys") {
            "(built-in keys API)"
        } else if path == "/tokens" {
            "(built-in token exchange)"
        } else {
            "machines"
        };
        assert_eq!(config.target_name(route), expected, "{method} {path}");
    }
    // And nothing beyond the table: every route of the example is one of its rows.
    let stray: Vec<String> = config
        .routes
        .routes()
        .iter()
        .filter(|r| {
            !hit.contains(&r.line) && matches!(r.target, scopegate::config::Target::Upstream(_))
        })
        .map(|r| format!("line {}: {:?} {}", r.line, r.methods.names(), r.template))
        .collect();
    assert!(
        stray.is_empty(),
        "routes outside DESIGN.md's table: {stray:?}"
    );
}

#[test]
fn statebacked_example_takes_the_realtime_token_from_the_query() {
    let config = statebacked();
    let rt = config.routes.lookup(&Method::GET, "/rt").unwrap().route;
    assert_eq!(rt.token_query_param.as_deref(), Some("token"));
    // Only the realtime route accepts a token in the URL, where it would end up in logs.
    let others: Vec<&str> = config
        .routes
        .routes()
        .iter()
        .filter(|r| r.token_query_param.is_some() && &*r.template != "/rt")
        .map(|r| &*r.template)
        .collect();
    assert!(others.is_empty(), "{others:?}");
}

#[test]
fn statebacked_example_token_exchange_is_the_only_public_route() {
    let config = statebacked();
    let public: Vec<String> = config
        .routes
        .routes()
        .iter()
        .filter(|r| {
            r.public
                && !matches!(
                    r.target,
                    scopegate::config::Target::Builtin(scopegate::config::Builtin::Dashboard)
                )
        })
        .map(|r| format!("{:?} {}", r.methods.names(), r.template))
        .collect();
    // (The built-in dashboard's static files are public too; its API calls are not.) Token
    // exchange is built in: the subject token is its credential.
    assert_eq!(public, [r#"["POST"] /tokens"#]);
    assert!(
        config.routes.lookup(&Method::GET, "/tokens").is_err(),
        "GET /tokens must not be open"
    );
}

#[test]
fn statebacked_example_members_routes_check_the_organization() {
    let config = statebacked();
    for path in ["/orgs/org_1/members", "/orgs/org_1/members/user-1"] {
        for method in [Method::GET, Method::POST, Method::DELETE, Method::PATCH] {
            let m = config.routes.lookup(&method, path).unwrap();
            assert_eq!(m.route.org_param.as_deref(), Some("org"), "{method} {path}");
            assert_eq!(m.org, Some("org_1"), "{method} {path}");
        }
    }
    // No other route carries an organization in its path.
    let with_org: BTreeSet<&str> = config
        .routes
        .routes()
        .iter()
        .filter(|r| r.org_param.is_some())
        .map(|r| &*r.template)
        .collect();
    assert_eq!(
        with_org,
        BTreeSet::from(["/orgs/{org}/members", "/orgs/{org}/members/{*rest}"])
    );
}

#[test]
fn statebacked_example_keys_scope_accepts_both_spellings() {
    let config = statebacked();
    let keys = config.routes.lookup(&Method::GET, "/keys").unwrap().route;
    assert!(keys.scopes.contains("org-keys.write"));
    assert!(keys.scopes.contains("org.keys.write"));

    // The keys API is built in: its routes come from the gateway, not from the file.
    assert!(matches!(keys.target, scopegate::config::Target::Builtin(_)));
}
