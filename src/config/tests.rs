//! Config validation, one test per edge case. Every refusal is asserted on the error's
//! `Display`, the text `scopegate check` prints: `file:line: field: message`.

use std::path::{Path, PathBuf};

use http::Method;

use super::{parse, Config, ConfigError, Lookup, Methods, TrustRoots, UpstreamProtocol};

const FILE: &str = "/etc/scopegate/scopegate.toml";

/// One upstream, `main`, and nothing else.
const UPSTREAM: &str = "[upstreams.main]\nurl = \"http://127.0.0.1:3000\"\n";

fn load(text: &str) -> Result<Config, ConfigError> {
    parse(Path::new(FILE), text)
}

fn valid(text: &str) -> Config {
    load(text).unwrap_or_else(|e| panic!("expected a valid config, got:\n{e}\n--- config:\n{text}"))
}

fn invalid(text: &str) -> String {
    match load(text) {
        Ok(_) => panic!("expected a config error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// `UPSTREAM` followed by `rest` (usually `[[routes]]` tables).
fn with_upstream(rest: &str) -> String {
    format!("{UPSTREAM}\n{rest}")
}

/// The 1-based line of the `nth` (0-based) line that contains `needle`.
fn line_of(text: &str, needle: &str, nth: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(nth)
        .unwrap_or_else(|| panic!("{needle:?} (#{nth}) not in:\n{text}"))
        .0
        + 1
}

/// Asserts that `err` has a line `FILE:line: field: …needle…`.
fn assert_problem(err: &str, line: usize, field: &str, needle: &str) {
    let prefix = if field.is_empty() {
        format!("{FILE}:{line}: ")
    } else {
        format!("{FILE}:{line}: {field}: ")
    };
    assert!(
        err.lines()
            .any(|l| l.starts_with(&prefix) && l.contains(needle)),
        "expected a line starting {prefix:?} containing {needle:?}, got:\n{err}"
    );
}

fn route(body: &str) -> String {
    format!("[[routes]]\n{body}\nupstream = \"main\"\n")
}

// ---- whole files -----------------------------------------------------------------------------

#[test]
fn minimal_valid_config_takes_the_documented_defaults() {
    let config = valid(&with_upstream(&route(
        "methods = [\"GET\"]\npath = \"/a\"\nscopes = [\"state.read\"]",
    )));
    assert_eq!(config.source, PathBuf::from(FILE));
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.server.identity_prefix, "x-scopegate-");
    assert!(config.admin.is_none());
    assert_eq!(config.auth.audiences, ["https://api.statebacked.dev/"]);
    assert!(config.auth.require_exp);
    assert_eq!(config.auth.token_cache_entries, 1024);
    assert_eq!(config.keys.dir, PathBuf::from("/etc/scopegate/keys"));
    assert_eq!(config.upstreams.len(), 1);
    assert_eq!(config.upstreams[0].authority.as_str(), "127.0.0.1:3000");
    assert_eq!(config.upstreams[0].path_prefix, "");
    let m = config.routes.lookup(&Method::GET, "/a").unwrap();
    assert_eq!(m.route.scopes.iter().collect::<Vec<_>>(), ["state.read"]);
    assert_eq!(m.route.line, 4);
}

#[test]
fn unknown_top_level_field_is_refused_with_its_line() {
    let text = with_upstream("colour = \"blue\"\n");
    let err = invalid(&text);
    assert_problem(
        &err,
        line_of(&text, "colour", 0),
        "",
        "unknown field `colour`",
    );
}

#[test]
fn unknown_section_is_refused_with_its_line() {
    let text = format!("{UPSTREAM}\n[servr]\nlisten = \"127.0.0.1:1\"\n");
    let err = invalid(&text);
    assert_problem(
        &err,
        line_of(&text, "[servr]", 0),
        "",
        "unknown field `servr`",
    );
}

#[test]
fn unknown_field_in_server_is_refused_with_its_line() {
    let text = format!("[server]\nlisten = \"127.0.0.1:1\"\nlisen = \"x\"\n\n{UPSTREAM}");
    let err = invalid(&text);
    assert_problem(&err, 3, "", "unknown field `lisen`");
}

#[test]
fn misspelled_route_field_scope_is_refused_not_ignored() {
    // `scope` for `scopes` must not leave the route open to any valid token.
    let text = with_upstream(&route(
        "methods = [\"GET\"]\npath = \"/a\"\nscope = [\"state.read\"]",
    ));
    let err = invalid(&text);
    assert_problem(
        &err,
        line_of(&text, "scope =", 0),
        "",
        "unknown field `scope`",
    );
}

#[test]
fn unknown_upstream_field_is_refused_with_its_line() {
    let text = "[upstreams.main]\nurl = \"http://127.0.0.1:3000\"\ntimeout_ms = 5\n";
    let err = invalid(text);
    assert_problem(&err, 3, "", "unknown field `timeout_ms`");
}

#[test]
fn toml_syntax_error_names_its_line() {
    let text = format!("{UPSTREAM}\n[[routes]]\nmethods = [\"GET\"\npath = \"/a\"\n");
    let err = invalid(&text);
    let line = err
        .strip_prefix(&format!("{FILE}:"))
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no {FILE}:<line> prefix in {err}"));
    // The unclosed array starts on line 5; the parser notices on line 5 or 6.
    assert!((5..=6).contains(&line), "line {line} in {err}");
}

#[test]
fn value_of_the_wrong_type_is_refused_with_its_line() {
    let text = with_upstream(&route(
        "methods = [\"GET\"]\npath = \"/a\"\npublic = \"yes\"",
    ));
    let err = invalid(&text);
    assert_problem(
        &err,
        line_of(&text, "public =", 0),
        "",
        "expected a boolean",
    );
}

#[test]
fn missing_required_route_field_is_refused_with_the_route_line() {
    let text = with_upstream("[[routes]]\nmethods = [\"GET\"]\nscopes = []\nupstream = \"main\"\n");
    let err = invalid(&text);
    assert!(err.starts_with(&format!("{FILE}:")), "{err}");
    assert!(err.contains("missing field `path`"), "{err}");
}

#[test]
fn empty_file_is_a_valid_gateway_with_no_routes() {
    // Fail-closed: no route means every request is a 404 that never reaches an upstream.
    // Only the built-in endpoints (keys API, dashboard) are there.
    let config = valid("");
    assert!(config
        .routes
        .routes()
        .iter()
        .all(|r| matches!(r.target, crate::config::Target::Builtin(_))));
    assert_eq!(
        config.routes.lookup(&Method::GET, "/anything").unwrap_err(),
        Lookup::NotFound
    );
}

// ---- scopes ----------------------------------------------------------------------------------

#[test]
fn unknown_scope_in_a_route_names_file_line_and_field() {
    let text = with_upstream(&route(
        "methods = [\"GET\"]\npath = \"/a\"\nscopes = [\"state.read\", \"state.reed\"]",
    ));
    let err = invalid(&text);
    assert_problem(
        &err,
        line_of(&text, "state.reed", 0),
        "routes[0].scopes",
        "unknown scope 'state.reed'",
    );
}

#[test]
fn extra_scopes_make_a_custom_scope_valid() {
    let routes = route("methods = [\"GET\"]\npath = \"/reports\"\nscopes = [\"reports.read\"]");
    let err = invalid(&with_upstream(&routes));
    assert!(err.contains("unknown scope 'reports.read'"), "{err}");
    let config = valid(&format!(
        "[auth]\nextra_scopes = [\"reports.read\"]\n\n{}",
        with_upstream(&routes)
    ));
    let m = config.routes.lookup(&Method::GET, "/reports").unwrap();
    assert!(m.route.scopes.contains("reports.read"));
    assert!(config.auth.catalog.contains("reports.read"));
}

#[test]
fn invalid_extra_scope_name_is_refused() {
    let text = format!("[auth]\nextra_scopes = [\"ok.scope\", \"bad scope\"]\n\n{UPSTREAM}");
    let err = invalid(&text);
    assert_problem(
        &err,
        2,
        "auth.extra_scopes",
        "'bad scope' is not a valid scope name",
    );
}

#[test]
fn org_keys_write_alias_is_accepted_as_the_canonical_scope() {
    let config = valid(&with_upstream(&route(
        "methods = [\"GET\"]\npath = \"/org-keys\"\nscopes = [\"org.keys.write\"]",
    )));
    let m = config.routes.lookup(&Method::GET, "/org-keys").unwrap();
    assert!(m.route.scopes.contains("org-keys.write"));
    assert!(m.route.scopes.contains("org.keys.write"));
    assert_eq!(m.route.scopes.joined(), "org-keys.write");
}

#[test]
fn route_without_scopes_accepts_any_valid_token() {
    let config = valid(&with_upstream(&route(
        "methods = [\"GET\"]\npath = \"/me\"",
    )));
    let m = config.routes.lookup(&Method::GET, "/me").unwrap();
    assert!(m.route.scopes.is_empty());
    assert!(!m.route.public);
}

// ---- upstreams -------------------------------------------------------------------------------

#[test]
fn unknown_upstream_names_the_route_field() {
    let text = with_upstream(
        "[[routes]]\nmethods = [\"GET\"]\npath = \"/a\"\nscopes = []\nupstream = \"mian\"\n",
    );
    let err = invalid(&text);
    assert_problem(
        &err,
        line_of(&text, "\"mian\"", 0),
        "routes[0].upstream",
        "unknown upstream 'mian'",
    );
}

#[test]
fn upstream_url_that_does_not_parse_is_refused() {
    let err = invalid("[upstreams.main]\nurl = \"http://exa mple\"\n");
    assert_problem(&err, 2, "upstreams.main.url", "is not a URL");
}

#[test]
fn upstream_url_without_a_scheme_is_refused() {
    let err = invalid("[upstreams.main]\nurl = \"127.0.0.1:3000\"\n");
    assert_problem(&err, 2, "upstreams.main.url", "needs a scheme and a host");
}

#[test]
fn upstream_scheme_other_than_http_or_https_is_refused() {
    let err = invalid("[upstreams.main]\nurl = \"ftp://files.example.com\"\n");
    assert_problem(
        &err,
        2,
        "upstreams.main.url",
        "scheme 'ftp' is not supported; use http:// or https://",
    );
}

#[test]
fn http_upstream_speaks_http1_without_tls_by_default() {
    let config = valid(UPSTREAM);
    assert_eq!(config.upstreams[0].protocol, UpstreamProtocol::Http1);
    assert_eq!(config.upstreams[0].tls, None);
}

#[test]
fn https_upstream_without_ca_file_trusts_the_system_roots() {
    let config = valid("[upstreams.main]\nurl = \"https://api.example.com/v1\"\n");
    let up = &config.upstreams[0];
    assert_eq!(up.scheme, http::uri::Scheme::HTTPS);
    assert_eq!(up.authority.as_str(), "api.example.com");
    assert_eq!(up.path_prefix, "/v1");
    assert_eq!(up.tls, Some(TrustRoots::System));
    assert_eq!(up.protocol, UpstreamProtocol::Http1);
}

#[test]
fn upstream_protocol_h2_is_accepted_over_http_and_https() {
    for url in ["http://127.0.0.1:3000", "https://api.example.com"] {
        let config = valid(&format!(
            "[upstreams.main]\nurl = \"{url}\"\nprotocol = \"h2\"\n"
        ));
        assert_eq!(config.upstreams[0].protocol, UpstreamProtocol::H2, "{url}");
    }
}

#[test]
fn upstream_protocol_http1_can_be_spelled_out() {
    let config = valid(&format!("{UPSTREAM}protocol = \"http1\"\n"));
    assert_eq!(config.upstreams[0].protocol, UpstreamProtocol::Http1);
}

#[test]
fn unknown_upstream_protocol_is_refused_with_its_line() {
    let text = format!("{UPSTREAM}protocol = \"http2\"\n");
    let err = invalid(&text);
    assert_problem(
        &err,
        3,
        "upstreams.main.protocol",
        "'http2' is not a protocol; use \"http1\" or \"h2\"",
    );
}

#[test]
fn ca_file_on_an_http_upstream_is_refused_with_its_line() {
    let text = format!("{UPSTREAM}ca_file = \"ca.pem\"\n");
    let err = invalid(&text);
    assert_problem(
        &err,
        3,
        "upstreams.main.ca_file",
        "only https:// upstreams use a CA file",
    );
}

#[test]
fn missing_ca_file_is_refused_with_its_line() {
    // Relative to the config's folder, which does not hold it.
    let text = "[upstreams.main]\nurl = \"https://api.example.com\"\nca_file = \"ca.pem\"\n";
    let err = invalid(text);
    assert_problem(
        &err,
        3,
        "upstreams.main.ca_file",
        "cannot read '/etc/scopegate/ca.pem'",
    );
}

#[test]
fn empty_ca_file_name_is_refused() {
    let text = "[upstreams.main]\nurl = \"https://api.example.com\"\nca_file = \"\"\n";
    let err = invalid(text);
    assert_problem(&err, 3, "upstreams.main.ca_file", "must name a PEM file");
}

/// A config whose `main` upstream is https with `ca_file` holding `pem`, in a temp folder.
fn with_ca_file(pem: &str) -> (tempfile::TempDir, Result<Config, ConfigError>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), pem).unwrap();
    let text = "[upstreams.main]\nurl = \"https://127.0.0.1:8443\"\nca_file = \"ca.pem\"\n";
    let config = parse(&dir.path().join("scopegate.toml"), text);
    (dir, config)
}

fn ca_certificate_pem() -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().pem()
}

#[test]
fn ca_file_is_read_relative_to_the_config_folder() {
    let pem = format!("{}{}", ca_certificate_pem(), ca_certificate_pem());
    let (dir, config) = with_ca_file(&pem);
    let config = config.unwrap_or_else(|e| panic!("{e}"));
    match &config.upstreams[0].tls {
        Some(TrustRoots::CaFile { path, certs }) => {
            assert_eq!(*path, dir.path().join("ca.pem"));
            assert_eq!(certs.len(), 2);
        }
        other => panic!("expected the CA file's roots, got {other:?}"),
    }
}

#[test]
fn ca_file_without_a_certificate_is_refused() {
    let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let (_dir, config) = with_ca_file(&key);
    let err = config.unwrap_err().to_string();
    assert!(
        err.contains(":3: upstreams.main.ca_file: ") && err.contains("holds no PEM certificate"),
        "{err}"
    );
}

#[test]
fn ca_file_with_a_broken_pem_block_is_refused() {
    let (_dir, config) =
        with_ca_file("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n");
    let err = config.unwrap_err().to_string();
    assert!(
        err.contains(":3: upstreams.main.ca_file: ") && err.contains("is not a PEM bundle"),
        "{err}"
    );
}

#[test]
fn ca_file_with_a_certificate_that_does_not_parse_is_refused() {
    // Valid PEM around bytes that are not X.509.
    let (_dir, config) =
        with_ca_file("-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n");
    let err = config.unwrap_err().to_string();
    assert!(
        err.contains(":3: upstreams.main.ca_file: ")
            && err.contains("certificate 1 of")
            && err.contains("is not a usable CA certificate"),
        "{err}"
    );
}

#[test]
fn upstream_settings_compare_equal_across_loads_until_the_ca_file_changes() {
    // Equal settings are what lets a reload keep an upstream's pooled connections.
    let (dir, first) = with_ca_file(&ca_certificate_pem());
    let text = "[upstreams.main]\nurl = \"https://127.0.0.1:8443\"\nca_file = \"ca.pem\"\n";
    let path = dir.path().join("scopegate.toml");
    let again = parse(&path, text).unwrap();
    assert_eq!(first.unwrap().upstreams, again.upstreams);
    std::fs::write(dir.path().join("ca.pem"), ca_certificate_pem()).unwrap();
    let rotated = parse(&path, text).unwrap();
    assert_ne!(again.upstreams, rotated.upstreams);
}

#[test]
fn upstream_url_with_a_query_is_refused() {
    let err = invalid("[upstreams.main]\nurl = \"http://127.0.0.1:3000/api?x=1\"\n");
    assert_problem(&err, 2, "upstreams.main.url", "must not carry a query");
}

#[test]
fn upstream_url_with_user_info_is_refused() {
    let err = invalid("[upstreams.main]\nurl = \"http://user:pw@127.0.0.1:3000\"\n");
    assert_problem(&err, 2, "upstreams.main.url", "user info");
}

#[test]
fn upstream_zero_timeout_is_refused() {
    let err =
        invalid("[upstreams.main]\nurl = \"http://127.0.0.1:3000\"\nconnect_timeout_ms = 0\n");
    assert_problem(
        &err,
        1,
        "upstreams.main",
        "timeouts must be greater than zero",
    );
}

#[test]
fn upstream_url_path_becomes_a_prefix_without_trailing_slash() {
    let config = valid("[upstreams.main]\nurl = \"http://127.0.0.1:3000/api/v1/\"\n");
    assert_eq!(config.upstreams[0].path_prefix, "/api/v1");
}

// ---- server, admin, auth ---------------------------------------------------------------------

#[test]
fn bad_listen_address_is_refused() {
    let err = invalid(&format!(
        "[server]\nlisten = \"localhost:8080\"\n\n{UPSTREAM}"
    ));
    assert_problem(
        &err,
        2,
        "server.listen",
        "'localhost:8080' is not an IP:port address",
    );
}

#[test]
fn listen_address_without_port_is_refused() {
    let err = invalid(&format!("[server]\nlisten = \"127.0.0.1\"\n\n{UPSTREAM}"));
    assert_problem(&err, 2, "server.listen", "is not an IP:port address");
}

#[test]
fn bad_admin_listen_address_is_refused() {
    let err = invalid(&format!(
        "[admin]\nlisten = \"0.0.0.0:99999\"\n\n{UPSTREAM}"
    ));
    assert_problem(&err, 2, "admin.listen", "is not an IP:port address");
}

#[test]
fn identity_prefix_without_trailing_dash_is_refused() {
    let err = invalid(&format!(
        "[server]\nidentity_header_prefix = \"x-id\"\n\n{UPSTREAM}"
    ));
    assert_problem(&err, 2, "server.identity_header_prefix", "ending with '-'");
}

#[test]
fn identity_prefix_with_invalid_characters_is_refused() {
    let err = invalid(&format!(
        "[server]\nidentity_header_prefix = \"x_id:-\"\n\n{UPSTREAM}"
    ));
    assert_problem(
        &err,
        2,
        "server.identity_header_prefix",
        "letters, digits and '-'",
    );
}

#[test]
fn identity_prefix_covering_a_header_requests_need_is_refused() {
    // Inbound headers with the prefix are dropped: `Content-` would drop Content-Type.
    for (prefix, header) in [
        ("Content-", "content-encoding"),
        ("x-forwarded-", "x-forwarded-for"),
        ("x-statebacked-", "x-statebacked-act"),
    ] {
        let text = format!("[server]\nidentity_header_prefix = \"{prefix}\"\n\n{UPSTREAM}");
        let err = invalid(&text);
        let needle = format!("would drop the client's '{header}' header");
        assert_problem(&err, 2, "server.identity_header_prefix", &needle);
    }
}

#[test]
fn identity_prefix_is_lower_cased() {
    let config = valid(&format!(
        "[server]\nidentity_header_prefix = \"X-Auth-\"\n\n{UPSTREAM}"
    ));
    assert_eq!(config.server.identity_prefix, "x-auth-");
}

#[test]
fn empty_audiences_are_refused() {
    let text = format!("[auth]\naudiences = []\n\n{UPSTREAM}");
    let err = invalid(&text);
    assert_problem(
        &err,
        2,
        "auth.audiences",
        "at least one audience is required",
    );
}

#[test]
fn empty_audience_string_is_refused() {
    let text =
        format!("[auth]\naudiences = [\"https://api.statebacked.dev/\", \"\"]\n\n{UPSTREAM}");
    let err = invalid(&text);
    assert_problem(&err, 2, "auth.audiences", "empty");
}

#[test]
fn the_token_cache_is_bounded_and_may_be_off() {
    let text = format!("[auth]\ntoken_cache_entries = 16385\n\n{UPSTREAM}");
    let err = invalid(&text);
    assert_problem(&err, 2, "auth.token_cache_entries", "at most 16384");
    let text = format!("[auth]\ntoken_cache_entries = 0\n\n{UPSTREAM}");
    assert_eq!(valid(&text).auth.token_cache_entries, 0);
}

#[test]
fn leeway_beyond_a_day_is_refused() {
    let text = format!("[auth]\nleeway_seconds = 86401\n\n{UPSTREAM}");
    let err = invalid(&text);
    assert_problem(&err, 2, "auth.leeway_seconds", "at most 86400");
}

#[test]
fn tiny_max_token_bytes_is_refused() {
    let text = format!("[auth]\nmax_token_bytes = 10\n\n{UPSTREAM}");
    let err = invalid(&text);
    assert_problem(&err, 2, "auth.max_token_bytes", "at least 64");
}

// ---- keys ------------------------------------------------------------------------------------

#[test]
fn keys_dir_is_resolved_relative_to_the_config_folder() {
    let config = valid(&format!("[keys]\ndir = \"state/keys\"\n\n{UPSTREAM}"));
    assert_eq!(config.keys.dir, PathBuf::from("/etc/scopegate/state/keys"));
}

#[test]
fn absolute_keys_dir_is_kept() {
    let config = valid(&format!(
        "[keys]\ndir = \"/var/lib/scopegate/keys\"\n\n{UPSTREAM}"
    ));
    assert_eq!(config.keys.dir, PathBuf::from("/var/lib/scopegate/keys"));
}

#[test]
fn keys_dir_relative_to_a_bare_file_name_stays_relative() {
    // `--config scopegate.toml` (the default) resolves keys against the working directory.
    let config = parse(Path::new("scopegate.toml"), UPSTREAM).unwrap();
    assert_eq!(config.keys.dir, PathBuf::from("keys"));
}

#[test]
fn keys_dir_that_is_the_config_folder_is_refused() {
    // The config file itself would be read as an organization's key file.
    for dir in ["", ".", "./"] {
        let text = format!("[keys]\ndir = \"{dir}\"\n\n{UPSTREAM}");
        let err = invalid(&text);
        assert_problem(&err, 2, "keys.dir", "config file's own folder");
    }
}

// ---- route paths -----------------------------------------------------------------------------

#[test]
fn route_path_must_start_with_a_slash() {
    let text = with_upstream(&route("methods = [\"GET\"]\npath = \"machines\""));
    let err = invalid(&text);
    assert_problem(
        &err,
        line_of(&text, "path =", 0),
        "routes[0].path",
        "must start with '/'",
    );
}

#[test]
fn route_path_with_percent_is_refused() {
    let text = with_upstream(&route("methods = [\"GET\"]\npath = \"/a%2Fb\""));
    let err = invalid(&text);
    assert_problem(&err, line_of(&text, "path =", 0), "routes[0].path", "'%'");
}

#[test]
fn route_path_with_semicolon_is_refused() {
    let text = with_upstream(&route("methods = [\"GET\"]\npath = \"/a;jsessionid=1\""));
    let err = invalid(&text);
    assert_problem(&err, line_of(&text, "path =", 0), "routes[0].path", "';'");
}

#[test]
fn route_path_with_a_dot_segment_is_refused() {
    // The gateway answers 400 to every path with a dot segment: such a route never matches.
    let text = with_upstream(&route("methods = [\"GET\"]\npath = \"/a/../b\""));
    let err = invalid(&text);
    assert_problem(
        &err,
        line_of(&text, "path =", 0),
        "routes[0].path",
        "segment",
    );
}

#[test]
fn route_path_with_an_empty_segment_is_refused() {
    let text = with_upstream(&route("methods = [\"GET\"]\npath = \"/a//b\""));
    let err = invalid(&text);
    assert_problem(
        &err,
        line_of(&text, "path =", 0),
        "routes[0].path",
        "segment",
    );
}

#[test]
fn route_path_with_a_character_outside_rfc3986_is_refused() {
    let text = with_upstream(&route("methods = [\"GET\"]\npath = \"/a|b\""));
    let err = invalid(&text);
    assert_problem(&err, line_of(&text, "path =", 0), "routes[0].path", "'|'");
}

#[test]
fn route_path_with_an_unclosed_parameter_is_refused() {
    let text = with_upstream(&route("methods = [\"GET\"]\npath = \"/a/{m\""));
    let err = invalid(&text);
    assert_problem(
        &err,
        line_of(&text, "path =", 0),
        "routes[0].path",
        "valid name",
    );
}

#[test]
fn catch_all_before_the_end_of_a_path_is_refused() {
    let text = with_upstream(&route("methods = [\"GET\"]\npath = \"/a/{*rest}/b\""));
    let err = invalid(&text);
    assert_problem(
        &err,
        line_of(&text, "path =", 0),
        "routes[0].path",
        "Catch-all",
    );
}

// ---- route conflicts -------------------------------------------------------------------------

#[test]
fn same_template_with_overlapping_methods_conflicts() {
    let text = with_upstream(&format!(
        "{}\n{}",
        route("methods = [\"GET\", \"POST\"]\npath = \"/m\"\nscopes = []"),
        route("methods = [\"POST\"]\npath = \"/m\"\nscopes = []"),
    ));
    let err = invalid(&text);
    let first = line_of(&text, "[[routes]]", 0);
    assert_problem(
        &err,
        line_of(&text, "[[routes]]", 1),
        "routes[1]",
        &format!("conflicts with the route at line {first}"),
    );
}

#[test]
fn same_template_with_star_conflicts_with_any_method() {
    let text = with_upstream(&format!(
        "{}\n{}",
        route("methods = [\"DELETE\"]\npath = \"/m\"\nscopes = []"),
        route("methods = [\"*\"]\npath = \"/m\"\nscopes = []"),
    ));
    let err = invalid(&text);
    assert_problem(
        &err,
        line_of(&text, "[[routes]]", 1),
        "routes[1]",
        "conflicts with the route at line",
    );
}

#[test]
fn explicit_head_route_and_get_route_on_one_template_conflict() {
    // GET also answers HEAD: which route a HEAD request took would depend on file order.
    let text = with_upstream(&format!(
        "{}\n{}",
        route("methods = [\"GET\"]\npath = \"/m\"\nscopes = [\"state.read\"]"),
        route("methods = [\"HEAD\"]\npath = \"/m\"\nscopes = []"),
    ));
    let err = invalid(&text);
    assert_problem(
        &err,
        line_of(&text, "[[routes]]", 1),
        "routes[1]",
        "conflicts with the route at line",
    );
}

#[test]
fn parameters_with_different_names_at_one_position_conflict() {
    let text = with_upstream(&format!(
        "{}\n{}",
        route("methods = [\"GET\"]\npath = \"/a/{x}\"\nscopes = []"),
        route("methods = [\"POST\"]\npath = \"/a/{y}\"\nscopes = []"),
    ));
    let err = invalid(&text);
    assert_problem(
        &err,
        line_of(&text, "/a/{y}", 0),
        "routes[1].path",
        "conflict",
    );
}

#[test]
fn same_template_with_disjoint_methods_is_fine_and_405_lists_both() {
    let config = valid(&with_upstream(&format!(
        "{}\n{}",
        route("methods = [\"GET\"]\npath = \"/m/{id}\"\nscopes = [\"machines.read\"]"),
        route("methods = [\"POST\"]\npath = \"/m/{id}\"\nscopes = [\"machines.write\"]"),
    )));
    let get = config.routes.lookup(&Method::GET, "/m/1").unwrap();
    assert!(get.route.scopes.contains("machines.read"));
    let post = config.routes.lookup(&Method::POST, "/m/1").unwrap();
    assert!(post.route.scopes.contains("machines.write"));
    let head = config.routes.lookup(&Method::HEAD, "/m/1").unwrap();
    assert!(head.route.scopes.contains("machines.read"));
    assert_eq!(
        config.routes.lookup(&Method::DELETE, "/m/1").unwrap_err(),
        Lookup::MethodNotAllowed {
            allow: "GET, HEAD, POST"
        }
    );
}

#[test]
fn static_segment_and_parameter_at_one_position_coexist() {
    // matchit prefers the static segment; both routes stay reachable.
    let config = valid(&with_upstream(&format!(
        "{}\n{}",
        route("methods = [\"GET\"]\npath = \"/machines/{m}\"\nscopes = [\"machines.read\"]"),
        route("methods = [\"GET\"]\npath = \"/machines/special\"\nscopes = [\"machines.admin\"]"),
    )));
    let special = config
        .routes
        .lookup(&Method::GET, "/machines/special")
        .unwrap();
    assert!(special.route.scopes.contains("machines.admin"));
    let other = config.routes.lookup(&Method::GET, "/machines/x").unwrap();
    assert!(other.route.scopes.contains("machines.read"));
}

// ---- public routes, token_query_param, org_param ---------------------------------------------

#[test]
fn public_route_needs_no_scopes() {
    let config = valid(&with_upstream(&route(
        "methods = [\"GET\"]\npath = \"/status\"\npublic = true",
    )));
    assert!(
        config
            .routes
            .lookup(&Method::GET, "/status")
            .unwrap()
            .route
            .public
    );
}

#[test]
fn public_route_with_scopes_is_refused() {
    let text = with_upstream(&route(
        "methods = [\"GET\"]\npath = \"/status\"\npublic = true\nscopes = [\"state.read\"]",
    ));
    let err = invalid(&text);
    assert_problem(
        &err,
        line_of(&text, "[[routes]]", 0),
        "routes[0]",
        "cannot require scopes",
    );
}

#[test]
fn public_route_with_token_query_param_is_refused() {
    let text = with_upstream(&route(
        "methods = [\"GET\"]\npath = \"/status\"\npublic = true\ntoken_query_param = \"token\"",
    ));
    let err = invalid(&text);
    assert_problem(
        &err,
        line_of(&text, "[[routes]]", 0),
        "routes[0]",
        "token_query_param",
    );
}

#[test]
fn public_route_with_org_param_is_refused() {
    let text = with_upstream(&route(
        "methods = [\"GET\"]\npath = \"/orgs/{org}\"\npublic = true\norg_param = \"org\"",
    ));
    let err = invalid(&text);
    assert_problem(
        &err,
        line_of(&text, "[[routes]]", 0),
        "routes[0]",
        "org_param",
    );
}

#[test]
fn token_query_param_with_invalid_name_is_refused() {
    let text = with_upstream(&route(
        "methods = [\"GET\"]\npath = \"/rt\"\nscopes = []\ntoken_query_param = \"to ken\"",
    ));
    let err = invalid(&text);
    assert_problem(
        &err,
        line_of(&text, "token_query_param", 0),
        "routes[0].token_query_param",
        "letters, digits",
    );
}

#[test]
fn org_param_that_is_not_a_path_parameter_is_refused() {
    let text = with_upstream(&route(
        "methods = [\"GET\"]\npath = \"/orgs/{org}/members\"\nscopes = []\norg_param = \"organization\"",
    ));
    let err = invalid(&text);
    assert_problem(
        &err,
        line_of(&text, "org_param", 0),
        "routes[0].org_param",
        "'organization' is not a parameter of path '/orgs/{org}/members'",
    );
}

#[test]
fn org_param_is_extracted_on_lookup() {
    let config = valid(&with_upstream(&route(
        "methods = [\"*\"]\npath = \"/orgs/{org}/members/{*rest}\"\nscopes = [\"org-members.write\"]\norg_param = \"org\"",
    )));
    let m = config
        .routes
        .lookup(&Method::PATCH, "/orgs/org_1/members/u/2")
        .unwrap();
    assert_eq!(m.org, Some("org_1"));
}

// ---- methods ---------------------------------------------------------------------------------

#[test]
fn invalid_method_name_is_refused() {
    let text = with_upstream(&route(
        "methods = [\"GET\", \"GE T\"]\npath = \"/a\"\nscopes = []",
    ));
    let err = invalid(&text);
    assert_problem(
        &err,
        line_of(&text, "methods", 0),
        "routes[0].methods",
        "'GE T' is not an HTTP method",
    );
}

#[test]
fn lower_case_method_names_are_upper_cased() {
    let config = valid(&with_upstream(&route(
        "methods = [\"get\", \"post\"]\npath = \"/a\"\nscopes = []",
    )));
    let m = config.routes.lookup(&Method::POST, "/a").unwrap();
    assert_eq!(
        m.route.methods,
        Methods::List(vec![Method::GET, Method::POST])
    );
}

#[test]
fn empty_method_list_is_refused_with_its_line() {
    let text = with_upstream(&route("methods = []\npath = \"/a\"\nscopes = []"));
    let err = invalid(&text);
    assert_problem(
        &err,
        line_of(&text, "methods", 0),
        "routes[0].methods",
        "list at least one method",
    );
}

#[test]
fn star_mixed_with_other_methods_is_refused() {
    let text = with_upstream(&route(
        "methods = [\"GET\", \"*\"]\npath = \"/a\"\nscopes = []",
    ));
    let err = invalid(&text);
    assert_problem(
        &err,
        line_of(&text, "methods", 0),
        "routes[0].methods",
        "\"*\" already means every method",
    );
}

#[test]
fn star_alone_allows_every_method() {
    let config = valid(&with_upstream(&route(
        "methods = [\"*\"]\npath = \"/a\"\nscopes = []",
    )));
    for m in [Method::GET, Method::DELETE, Method::OPTIONS, Method::PATCH] {
        assert!(config.routes.lookup(&m, "/a").is_ok(), "{m}");
    }
}

// ---- reporting -------------------------------------------------------------------------------

#[test]
fn several_problems_are_reported_at_once() {
    // [server] comes last, so its problem (found first) must be sorted to the end.
    let text = format!(
        "{}\n[server]\nlisten = \"nowhere\"\n",
        with_upstream(&format!(
            "{}\n{}",
            route("methods = [\"GET\"]\npath = \"/a\"\nscopes = [\"nope.read\"]"),
            "[[routes]]\nmethods = [\"GET\"]\npath = \"b\"\nscopes = []\nupstream = \"gone\"\n",
        ))
    );
    let err = invalid(&text);
    assert_problem(
        &err,
        line_of(&text, "nowhere", 0),
        "server.listen",
        "not an IP:port",
    );
    assert_problem(
        &err,
        line_of(&text, "nope.read", 0),
        "routes[0].scopes",
        "nope.read",
    );
    assert_problem(
        &err,
        line_of(&text, "\"b\"", 0),
        "routes[1].path",
        "start with '/'",
    );
    assert_problem(
        &err,
        line_of(&text, "\"gone\"", 0),
        "routes[1].upstream",
        "'gone'",
    );
    assert_eq!(err.lines().count(), 4, "{err}");
    let lines: Vec<usize> = err
        .lines()
        .map(|l| {
            l[FILE.len() + 1..]
                .split(':')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(
        lines.windows(2).all(|w| w[0] <= w[1]),
        "not in file order: {err}"
    );
}

#[test]
fn route_conflicts_are_reported_with_other_problems() {
    let text = format!(
        "[server]\nlisten = \"nowhere\"\n\n{}",
        with_upstream(&format!(
            "{}\n{}",
            route("methods = [\"GET\"]\npath = \"/a/{x}\"\nscopes = []"),
            route("methods = [\"POST\"]\npath = \"/a/{y}\"\nscopes = []"),
        ))
    );
    let err = invalid(&text);
    assert_problem(&err, 2, "server.listen", "not an IP:port");
    assert_problem(
        &err,
        line_of(&text, "/a/{y}", 0),
        "routes[1].path",
        "conflict",
    );
}

// ---- built-in endpoints ----------------------------------------------------------------------

#[test]
fn keys_api_routes_are_built_in_and_require_org_keys_write() {
    let config = valid("");
    for (method, path) in [
        (Method::GET, "/keys"),
        (Method::POST, "/keys"),
        (Method::DELETE, "/keys/sbk_1"),
    ] {
        let m = config.routes.lookup(&method, path).unwrap();
        assert_eq!(m.route.scopes.joined(), "org-keys.write", "{method} {path}");
        assert!(matches!(m.route.target, crate::config::Target::Builtin(_)));
    }
}

#[test]
fn a_configured_route_on_a_built_in_path_is_refused() {
    let err = invalid(&with_upstream(&route(
        "methods = [\"DELETE\"]\npath = \"/keys/{id}\"\nscopes = [\"org-keys.write\"]",
    )));
    assert!(err.contains("built-in keys API"), "{err}");
    assert!(err.contains("routes[0]"), "{err}");
}

#[test]
fn turning_the_keys_api_off_frees_its_paths_and_the_dashboard() {
    let config = valid(&with_upstream(&format!(
        "[keys_api]\nenabled = false\n\n{}",
        route("methods = [\"GET\"]\npath = \"/keys\"\nscopes = [\"org-keys.write\"]")
    )));
    let m = config.routes.lookup(&Method::GET, "/keys").unwrap();
    assert!(matches!(m.route.target, crate::config::Target::Upstream(0)));
    assert!(!config.dashboard);
    assert!(config.routes.lookup(&Method::GET, "/dashboard").is_err());
}

#[test]
fn the_dashboard_without_the_keys_api_is_refused() {
    let err = invalid("[keys_api]\nenabled = false\n[dashboard]\nenabled = true\n");
    assert!(err.contains("dashboard.enabled"), "{err}");
}

#[test]
fn keys_api_page_size_must_be_sane() {
    let err = invalid("[keys_api]\npage_size = 0\n");
    assert!(
        err.contains(&format!("{FILE}:2: keys_api.page_size")),
        "{err}"
    );
}
