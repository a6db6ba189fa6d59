//! Headers: identity spoofing in every spelling, on protected and public routes; hop-by-hop
//! `Connection:` tricks aimed at the headers the gateway adds or checks; protocol upgrades and
//! method or URL overrides that would make the upstream serve something else than what was
//! authorized; malformed header lines (obs-fold, whitespace before the colon).
//!
//! Outcomes chosen:
//! - Every inbound header name with `_` is dropped, as nginx does by default
//!   (`underscores_in_headers off`): CGI-style upstreams read `_` and `-` alike (RFC 3875
//!   §4.1.18), so `x_statebacked_act` or `transfer_encoding` would slip past the checks made
//!   under the `-` spelling.
//! - `X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`, `X-Original-URL` and
//!   `X-Rewrite-URL` are dropped: the upstream serves the method and path that were authorized.
//! - Only `Upgrade: websocket` is passed through; `h2c` (and anything else) is dropped and the
//!   request forwarded as a plain request, so no HTTP/2 connection can be tunnelled to the
//!   upstream past the gateway ("h2c smuggling").

use crate::harness::{assert_identity, head, marker, parser_refused, raw, Env, RawResponse, STATE};
use crate::support::mint;
use crate::support::upstream::Recorded;

const SCOPES: &str = "events.write machines.read state.read";

/// Sends one raw request with `lines` and returns the responses.
async fn send(env: &Env, method: &str, path: &str, lines: &[&str], body: &str) -> Vec<RawResponse> {
    let mut all: Vec<&str> = lines.to_vec();
    all.push("connection: close");
    let req = format!("{}{body}", head(method, path, &all));
    raw(env.addr(), req.as_bytes()).await
}

fn served(
    env: &Env,
    case: &str,
    r: &[RawResponse],
    method: &str,
    path: &str,
    auth: bool,
) -> Recorded {
    assert_eq!(r.len(), 1, "{case}: {r:?}");
    assert_eq!(r[0].status, 200, "{case}: {}", r[0].text());
    let key = auth.then_some(&env.reader);
    let seen = env.one_upstream(case, method, path, key);
    if auth {
        assert_eq!(seen.header("x-scopegate-scopes"), Some(SCOPES), "{case}");
        assert_eq!(seen.header("x-scopegate-sub"), Some("user-1"), "{case}");
    }
    seen
}

/// No header name with `_` reached the upstream.
fn no_underscores(case: &str, r: &Recorded) {
    for name in r.headers.keys() {
        assert!(
            !name.as_str().contains('_'),
            "{case}: {name} reached the upstream"
        );
    }
}

#[tokio::test]
async fn identity_headers_are_spoofed_in_vain() {
    let env = Env::start().await;
    let auth = format!("authorization: Bearer {}", env.good());
    let right_org = format!("x-scopegate-org: {}", env.org);
    let other_org = format!("x-scopegate-org: {}", env.other_org);
    let spoofs: Vec<Vec<&str>> = vec![
        vec!["x-scopegate-org: evil"],
        vec![&other_org],
        vec![&right_org],
        vec!["X-Scopegate-Org: evil"],
        vec!["X-SCOPEGATE-ORG: evil"],
        vec!["x_scopegate_org: evil"],
        vec!["X_SCOPEGATE_ORG: evil"],
        vec!["x-scopegate_org: evil"],
        vec!["x_scopegate-org: evil"],
        vec!["x-scopegate-key: sbk_evil"],
        vec!["x-scopegate-scopes: org-keys.write tokens.admin"],
        vec!["x-scopegate-sub: admin"],
        vec!["x-scopegate-claims: eyJzdWIiOiJhZG1pbiJ9"],
        vec!["x-scopegate-anything: 1"],
        vec!["x-scopegate-: 1"],
        vec!["x-scopegate-org:    evil   "],
        vec!["x-scopegate-org:\tevil\t"],
        vec!["x-scopegate-org:"],
        vec!["x-scopegate-org: evil", "x-scopegate-org: evil2"],
        vec![
            "x-scopegate-org: evil",
            "X_Scopegate_Org: evil2",
            "x-scopegate-key: k",
            "x-scopegate-scopes: org-keys.write",
        ],
        vec!["connection: x-scopegate-org", "x-scopegate-org: evil"],
    ];
    for lines in &spoofs {
        let case = lines.join(" | ");
        // A protected route: exactly the key's identity arrives.
        let mut with_auth = vec![auth.as_str()];
        with_auth.extend(lines.iter().copied());
        let r = send(&env, "GET", STATE, &with_auth, "").await;
        served(&env, &case, &r, "GET", STATE, true);
        // A public route: no identity header arrives at all.
        let r = send(&env, "GET", "/status", lines, "").await;
        served(
            &env,
            &format!("public: {case}"),
            &r,
            "GET",
            "/status",
            false,
        );
    }
    // Over HTTP/2 too.
    let token = format!("Bearer {}", env.good());
    let (status, _) = crate::harness::h2(
        env.addr(),
        "GET",
        STATE,
        &[
            ("authorization", &token),
            ("x-scopegate-org", "evil"),
            ("x_scopegate_key", "k"),
        ],
    )
    .await;
    assert_eq!(status, 200, "h2 spoof");
    env.one_upstream("h2 spoof", "GET", STATE, Some(&env.reader));
    assert_eq!(spoofs.len(), 21);
}

#[tokio::test]
async fn statebacked_headers_in_every_spelling() {
    let env = Env::start().await;
    let reader = format!("authorization: Bearer {}", env.good());
    let admin = format!("authorization: Bearer {}", mint(&env.admin).sign());
    let own = format!("x-statebacked-org-id: {}", env.org);
    let other = format!("x-statebacked-org-id: {}", env.other_org);
    let other_caps = format!("X-Statebacked-Org-Id: {}", env.other_org);
    let other_us = format!("x_statebacked_org_id: {}", env.other_org);
    let act = r#"x-statebacked-act: {"sub":"victim"}"#;
    let act_us = r#"x_statebacked_act: {"sub":"victim"}"#;
    // Refused: the organization is the key's, and acting for a user needs org-keys.write.
    let refused: Vec<(&str, Vec<&str>, u16, &str)> = vec![
        ("another org", vec![&reader, &other], 403, "missing-org"),
        (
            "another org, capitalized",
            vec![&reader, &other_caps],
            403,
            "missing-org",
        ),
        (
            "own org then another",
            vec![&reader, &own, &other],
            403,
            "missing-org",
        ),
        (
            "act without org-keys.write",
            vec![&reader, act],
            403,
            "missing-scope",
        ),
        (
            "act, capitalized",
            vec![&reader, r#"X-Statebacked-Act: {"sub":"victim"}"#],
            403,
            "missing-scope",
        ),
        (
            "act twice with org-keys.write",
            vec![&admin, act, act],
            400,
            "bad-request",
        ),
        (
            "act not an object",
            vec![&admin, "x-statebacked-act: [1]"],
            400,
            "bad-request",
        ),
    ];
    for (case, lines, status, code) in &refused {
        let r = send(&env, "GET", STATE, lines, "").await;
        assert_eq!(r.len(), 1, "{case}: {r:?}");
        assert_eq!(
            (r[0].status, r[0].code().as_deref()),
            (*status, Some(*code)),
            "{case}"
        );
        env.nothing_upstream(case);
    }
    // Underscore spellings are dropped, never read by the gateway nor the upstream.
    for (case, lines) in [
        (
            "another org with underscores",
            vec![reader.as_str(), &other_us],
        ),
        ("act with underscores", vec![reader.as_str(), act_us]),
        ("own org", vec![reader.as_str(), &own]),
    ] {
        let r = send(&env, "GET", STATE, &lines, "").await;
        let seen = served(&env, case, &r, "GET", STATE, true);
        no_underscores(case, &seen);
    }
    // Control: a key with org-keys.write acts for the user it names.
    let r = send(&env, "GET", STATE, &[&admin, act], "").await;
    assert_eq!(r[0].status, 200);
    let seen = env.one_upstream("act with org-keys.write", "GET", STATE, Some(&env.admin));
    assert_eq!(seen.header("x-scopegate-sub"), Some("victim"));
    // Public route: the act header never travels on.
    let r = send(&env, "GET", "/status", &[act, act_us], "").await;
    let seen = served(&env, "act on a public route", &r, "GET", "/status", false);
    no_underscores("act on a public route", &seen);
}

#[tokio::test]
async fn connection_options_cannot_remove_what_the_gateway_adds_or_checks() {
    let env = Env::start().await;
    let auth = format!("authorization: Bearer {}", env.good());
    let other = format!("x-statebacked-org-id: {}", env.other_org);
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("identity headers named", vec!["connection: x-scopegate-org, x-scopegate-key, x-scopegate-scopes, x-scopegate-sub, x-scopegate-claims"]),
        ("identity headers named in two lines", vec!["connection: x-scopegate-org", "connection: x-scopegate-scopes"]),
        ("authorization named", vec!["connection: authorization"]),
        ("host named", vec!["connection: host"]),
        ("x-forwarded-for named", vec!["connection: x-forwarded-for, x-forwarded-host, x-forwarded-proto"]),
        ("content-length named", vec!["connection: content-length"]),
        ("transfer-encoding named", vec!["connection: transfer-encoding"]),
        ("keep-alive and close", vec!["connection: keep-alive, close"]),
        ("garbage tokens", vec!["connection: , ,x y, \u{0021}, upgrade"]),
    ];
    for (case, lines) in &cases {
        let mut all = vec![auth.as_str()];
        all.extend(lines.iter().copied());
        let r = send(&env, "GET", STATE, &all, "").await;
        let seen = served(&env, case, &r, "GET", STATE, true);
        assert_eq!(
            seen.header("host"),
            Some(env.up.addr.to_string().as_str()),
            "{case}"
        );
        assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"), "{case}");
        assert_eq!(
            seen.header("x-forwarded-host"),
            Some("gateway.test"),
            "{case}"
        );
        assert_eq!(seen.header("x-forwarded-proto"), Some("http"), "{case}");
    }
    // A body whose framing header is named in Connection still arrives whole, once.
    let body = "hello world";
    for conn in [
        "connection: content-length",
        "connection: content-length, transfer-encoding",
    ] {
        let len = format!("content-length: {}", body.len());
        let r = send(&env, "POST", "/machines", &[&auth, conn, &len], body).await;
        let seen = served(&env, conn, &r, "POST", "/machines", true);
        assert_eq!(seen.body_len, body.len() as u64, "{conn}");
    }
    let chunked = "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let r = send(
        &env,
        "POST",
        "/machines",
        &[
            &auth,
            "connection: transfer-encoding",
            "transfer-encoding: chunked",
        ],
        chunked,
    )
    .await;
    let seen = served(&env, "chunked, TE named", &r, "POST", "/machines", true);
    assert_eq!(seen.body_len, 11);
    // The organization check happens before any header is stripped.
    let r = send(
        &env,
        "GET",
        STATE,
        &[&auth, "connection: x-statebacked-org-id", &other],
        "",
    )
    .await;
    assert_eq!(
        (r[0].status, r[0].code().as_deref()),
        (403, Some("missing-org"))
    );
    env.nothing_upstream("org header named in Connection");
}

#[tokio::test]
async fn forwarding_headers_from_the_client_are_replaced() {
    let env = Env::start().await;
    let auth = format!("authorization: Bearer {}", env.good());
    let lines = [
        auth.as_str(),
        "x-forwarded-for: 1.2.3.4",
        "X-Forwarded-For: 5.6.7.8",
        "x_forwarded_for: 9.9.9.9",
        "forwarded: for=1.2.3.4;host=evil;proto=https",
        "x-forwarded-host: evil.example",
        "x-forwarded-proto: https",
    ];
    let r = send(&env, "GET", STATE, &lines, "").await;
    let seen = served(&env, "spoofed forwarding headers", &r, "GET", STATE, true);
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.headers.get_all("x-forwarded-for").iter().count(), 1);
    assert_eq!(seen.header("x-forwarded-host"), Some("gateway.test"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert!(seen.headers.get("forwarded").is_none());
    no_underscores("spoofed forwarding headers", &seen);
}

#[tokio::test]
async fn the_upstream_serves_the_method_and_path_that_were_authorized() {
    let env = Env::start().await;
    let auth = format!("authorization: Bearer {}", env.good());
    let overrides = [
        "x-http-method-override: DELETE",
        "X-HTTP-Method: DELETE",
        "x-method-override: PUT",
        "x-original-url: /org-admin",
        "x-rewrite-url: /org-admin",
        "x_http_method_override: DELETE",
        "x_original_url: /org-admin",
    ];
    for line in overrides {
        let r = send(&env, "GET", STATE, &[&auth, line], "").await;
        let seen = served(&env, line, &r, "GET", STATE, true);
        let name = line.split(':').next().unwrap().to_ascii_lowercase();
        assert!(
            seen.headers.get(&name).is_none(),
            "{line} reached the upstream"
        );
        // On a public route too.
        let r = send(&env, "GET", "/status", &[line], "").await;
        let seen = served(
            &env,
            &format!("public: {line}"),
            &r,
            "GET",
            "/status",
            false,
        );
        assert!(
            seen.headers.get(&name).is_none(),
            "public: {line} reached the upstream"
        );
    }
}

#[tokio::test]
async fn only_websocket_upgrades_pass() {
    let env = Env::start().await;
    let auth = format!("authorization: Bearer {}", env.good());
    // h2c upgrade: if passed through and accepted, the client would talk HTTP/2 straight to
    // the upstream, every later request bypassing the gateway.
    let h2c = [
        vec![
            "connection: upgrade, http2-settings",
            "upgrade: h2c",
            "http2-settings: AAMAAABkAARAAAAAAAIAAAAA",
        ],
        vec!["connection: Upgrade", "upgrade: H2C"],
        vec!["connection: upgrade", "upgrade: h2c, websocket"],
        vec!["connection: upgrade", "upgrade: TLS/1.2"],
        vec!["connection: upgrade", "upgrade: HTTP/2.0"],
    ];
    for lines in &h2c {
        let case = lines.join(" | ");
        let mut all = vec![auth.as_str()];
        all.extend(lines.iter().copied());
        let r = send(&env, "GET", STATE, &all, "").await;
        let seen = served(&env, &case, &r, "GET", STATE, true);
        for name in ["upgrade", "http2-settings", "connection"] {
            assert!(
                seen.headers.get(name).is_none(),
                "{case}: {name} reached the upstream"
            );
        }
    }
    // Control: a WebSocket upgrade is forwarded as one (this upstream answers 200, not 101).
    let r = send(
        &env,
        "GET",
        STATE,
        &[
            &auth,
            "connection: upgrade",
            "upgrade: websocket",
            "sec-websocket-version: 13",
            "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
        ],
        "",
    )
    .await;
    let seen = served(&env, "websocket", &r, "GET", STATE, true);
    assert_eq!(seen.header("upgrade"), Some("websocket"));
    // A refused upgrade reaches nothing.
    let r = send(
        &env,
        "GET",
        STATE,
        &["connection: upgrade", "upgrade: websocket"],
        "",
    )
    .await;
    assert_eq!(
        (r[0].status, r[0].code().as_deref()),
        (401, Some("missing-token"))
    );
    env.nothing_upstream("unauthenticated upgrade");
}

#[tokio::test]
async fn trailers_cannot_add_identity_or_credentials() {
    let env = Env::start().await;
    let auth = format!("authorization: Bearer {}", env.good());
    let body = "5\r\nhello\r\n0\r\nx-scopegate-org: evil\r\nauthorization: Bearer x\r\nx-statebacked-org-id: evil\r\nx-custom: 1\r\n\r\n";
    let r = send(
        &env,
        "POST",
        "/machines",
        &[
            &auth,
            "transfer-encoding: chunked",
            "trailer: x-scopegate-org, authorization, x-statebacked-org-id, x-custom",
            "te: trailers",
        ],
        body,
    )
    .await;
    let seen = served(&env, "trailers", &r, "POST", "/machines", true);
    assert_eq!(seen.body_len, 5);
    if let Some(t) = &seen.trailers {
        for name in ["x-scopegate-org", "authorization", "x-statebacked-org-id"] {
            assert!(
                t.get(name).is_none(),
                "trailer {name} reached the upstream: {t:?}"
            );
        }
    }
}

#[tokio::test]
async fn malformed_header_lines_are_refused_by_the_parser() {
    let env = Env::start().await;
    let auth = format!("authorization: Bearer {}", env.good());
    let lines = [
        // obs-fold (RFC 9112 §5.2): a server MUST reject or replace it; hyper rejects.
        "x-scopegate-org: a\r\n evil",
        "x-custom: a\r\n\tx-scopegate-org: evil",
        // Whitespace between name and colon (RFC 9112 §5.1): MUST be rejected with 400.
        "x-scopegate-org : evil",
        "x-scopegate-org\t: evil",
        "authorization : Bearer x",
        "transfer-encoding : chunked",
        // Not header lines at all.
        "x-scopegate-org",
        ": evil",
        "x-scope(gate): evil",
        "x-scope\u{e9}gate-org: evil",
        "x-scopegate-org: a\rb",
        "x-scopegate-org: a\u{0}b",
        " x-scopegate-org: evil",
    ];
    for line in lines {
        let req = format!(
            "{}{}",
            head("GET", STATE, &[&auth, line, "connection: close"]),
            ""
        );
        let r = raw(env.addr(), req.as_bytes()).await;
        parser_refused(&format!("{line:?}"), &r, 400);
        env.nothing_upstream(line);
    }
    // Control: the same request, well formed, with a marker after it.
    let req = [head("GET", STATE, &[&auth, "x-custom: a b"]), marker()].concat();
    let r = raw(env.addr(), req.as_bytes()).await;
    assert_eq!(r.len(), 2, "{r:?}");
    let seen = env.up.requests();
    env.up.clear();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].path_and_query, STATE);
    assert_identity("control", &seen[0], Some(&env.reader));
    assert_eq!(seen[0].header("x-custom"), Some("a b"));
}
