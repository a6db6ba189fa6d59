//! Paths: the route the gateway authorizes must be the route the upstream serves. Every case
//! is a raw request line (no client library to tidy it up); every allowed variant is checked
//! for the exact path the upstream received.
//!
//! Outcomes chosen where the issue is silent:
//! - `%2e`/`%2E` decode to `.` (unreserved, RFC 3986 §2.3), so an encoded dot segment is a dot
//!   segment: 400. `...` is an ordinary segment.
//! - `%252e`, `%252f`: double encoding stays encoded (`%25` is not unreserved); the upstream
//!   decodes once and gets a literal `%2e`, never a dot or a slash.
//! - `%3B` (an encoded `;`) is a literal character in a segment and is forwarded encoded; a raw
//!   `;` is refused (matrix parameters).
//! - Absolute-form targets (RFC 9112 §3.2.2) are routed by their path; the upstream gets its
//!   own `Host` and the target's authority in `X-Forwarded-Host`.
//! - A Host header that is missing (HTTP/1.1), repeated, or not `host[:port]` (userinfo) is a
//!   400 (RFC 9112 §3.2).

use crate::harness::{head, raw, Env, RawResponse, STATE};

#[derive(Debug, Clone, Copy)]
enum Want {
    /// 200, and the upstream got exactly this path.
    Served(&'static str),
    /// The pipeline refused: status and code, nothing upstream.
    Refused(u16, &'static str),
    /// hyper's parser refused before the pipeline: status, empty body, nothing upstream.
    Parser(u16),
}
use Want::*;

async fn send(env: &Env, method: &str, target: &str, extra: &[&str]) -> Vec<RawResponse> {
    let auth = format!("authorization: Bearer {}", env.good());
    let mut headers = vec![auth.as_str(), "connection: close"];
    headers.extend_from_slice(extra);
    raw(env.addr(), head(method, target, &headers).as_bytes()).await
}

fn check(env: &Env, case: &str, r: &[RawResponse], want: Want) {
    assert_eq!(r.len(), 1, "{case}: {r:?}");
    match want {
        Served(path) => {
            assert_eq!(r[0].status, 200, "{case}: {}", r[0].text());
            env.one_upstream(case, "GET", path, Some(&env.reader));
        }
        Refused(status, code) => {
            assert_eq!(r[0].status, status, "{case}: {}", r[0].text());
            assert_eq!(
                r[0].code().as_deref(),
                Some(code),
                "{case}: {}",
                r[0].text()
            );
            env.nothing_upstream(case);
        }
        Parser(status) => {
            assert_eq!(r[0].status, status, "{case}: {}", r[0].text());
            assert_eq!(r[0].code(), None, "{case}");
            env.nothing_upstream(case);
        }
    }
}

#[tokio::test]
async fn dot_segments_encodings_and_separators() {
    let env = Env::start().await;
    let bad = Refused(400, "bad-request");
    let cases: Vec<(&str, Want)> = vec![
        (STATE, Served(STATE)),
        ("/m%61chines/m1/i/i1", Served(STATE)),
        ("/machines/%6D%31/i/i1", Served(STATE)),
        ("/machines/a%2eb/i/i1", Served("/machines/a.b/i/i1")),
        ("/machines/.../i/i1", Served("/machines/.../i/i1")),
        ("/machines/%2e%2e%2e/i/i1", Served("/machines/.../i/i1")),
        ("/machines/%7Euser/i/i1", Served("/machines/~user/i/i1")),
        (
            "/machines/%252e%252e/i/i1",
            Served("/machines/%252e%252e/i/i1"),
        ),
        ("/machines/%252f/i/i1", Served("/machines/%252f/i/i1")),
        ("/machines/%25%32%65/i/i1", Served("/machines/%252e/i/i1")),
        ("/machines/m%3bx/i/i1", Served("/machines/m%3Bx/i/i1")),
        (
            "/machines/caf%c3%a9/i/i1",
            Served("/machines/caf%C3%A9/i/i1"),
        ),
        (
            "/machines/m1/i/i1?x=/../y&z=%2e%2e",
            Served("/machines/m1/i/i1?x=/../y&z=%2e%2e"),
        ),
        // Dot segments, raw and encoded.
        ("/machines/m1/i/..", bad),
        ("/machines/m1/i/.", bad),
        ("/machines/m1/../m1/i/i1", bad),
        ("/machines/m1/i/i1/..", bad),
        ("/machines/m1/./i/i1", bad),
        ("/machines/%2e%2e/i/i1", bad),
        ("/machines/%2E%2e/i/i1", bad),
        ("/machines/.%2e/i/i1", bad),
        ("/machines/%2e/i/i1", bad),
        ("/%2e%2e/machines/m1/i/i1", bad),
        ("/org-admin/%2e%2e/machines/m1/i/i1", bad),
        // Encoded separators.
        ("/machines/m1%2fi/i1", bad),
        ("/machines/m1%2Fi%2Fi1", bad),
        ("/machines/m1%5ci/i1", bad),
        ("/machines/m1%5C..%5Corg-admin/i/i1", bad),
        ("/machines/m1/i/i1%2f", bad),
        // Overlong UTF-8 (CVE-2000-0884 style) and other invalid UTF-8.
        ("/machines/%c0%ae%c0%ae/i/i1", bad),
        ("/machines/m1%c0%af/i/i1", bad),
        ("/machines/m1%e0%80%af/i/i1", bad),
        ("/machines/m1%f0%80%80%af/i/i1", bad),
        ("/machines/m1%ff/i/i1", bad),
        ("/machines/m1%c3/i/i1", bad),
        // IIS-style %u and malformed escapes.
        ("/machines/%u002e%u002e/i/i1", bad),
        ("/machines/m1%/i/i1", bad),
        ("/machines/m1%zz/i/i1", bad),
        ("/machines/m1%2/i/i1", bad),
        // Empty segments.
        ("/machines//m1/i/i1", bad),
        ("//machines/m1/i/i1", bad),
        ("/machines/m1/i/i1//", bad),
        ("/machines/m1//i/i1", bad),
        // Matrix parameters, NUL and control characters.
        ("/machines/m1;x=1/i/i1", bad),
        ("/machines/m1/i/i1;jsessionid=1", bad),
        ("/machines/m1/i/i1;", bad),
        ("/machines/m1%00/i/i1", bad),
        ("/machines/m1/i/i1%00.json", bad),
        ("/machines/m1%0d%0ax-evil:1/i/i1", bad),
        ("/machines/m1%09/i/i1", bad),
        ("/machines/m1%7f/i/i1", bad),
        // Characters outside pchar that hyper lets through.
        ("/machines/m1\"/i/i1", bad),
        ("/machines/{m1}/i/i1", bad),
        ("/machines/m1|x/i/i1", bad),
        ("/machines/m1^/i/i1", bad),
        ("/machines/m1`/i/i1", Parser(400)),
        // Case and trailing slash: routes are exact.
        ("/MACHINES/m1/i/i1", Refused(404, "not-found")),
        ("/Machines/m1/i/i1", Refused(404, "not-found")),
        ("/machines/m1/I/i1", Refused(404, "not-found")),
        ("/machines/m1/i/i1/", Refused(404, "not-found")),
        ("/machines/m1/i", Refused(404, "not-found")),
        // Not origin-form paths at all.
        ("*", bad),
        ("machines/m1/i/i1", Parser(400)),
    ];
    for (target, want) in &cases {
        let r = send(&env, "GET", target, &[]).await;
        check(&env, target, &r, *want);
    }
    // Raw bytes hyper's parser refuses outright.
    for target in [
        "/machines/m1\\..\\org-admin/i/i1",
        "/machines/m1 x/i/i1",
        "/machines/m1\x00/i/i1",
        "/machines/caf\u{e9}/i/i1",
    ] {
        let r = send(&env, "GET", target, &[]).await;
        // Either the parser (empty 400) or the pipeline (400 bad-request), never served.
        assert_eq!(r.len(), 1, "{target:?}: {r:?}");
        assert_eq!(r[0].status, 400, "{target:?}: {}", r[0].text());
        env.nothing_upstream(target);
    }
    // A fragment is no part of a request target: dropped before routing, so the route
    // authorized is still the path forwarded.
    let r = send(&env, "GET", "/machines/m1/i/i1#/../../org-admin", &[]).await;
    check(&env, "fragment", &r, Served(STATE));
    let r = send(&env, "GET", "/org-admin#/machines/m1/i/i1", &[]).await;
    check(
        &env,
        "fragment on a route the key lacks",
        &r,
        Refused(403, "missing-scope"),
    );
    assert_eq!(cases.len(), 63);
}

#[tokio::test]
async fn methods_are_matched_exactly() {
    let env = Env::start().await;
    let cases: Vec<(&str, &str, Want)> = vec![
        ("GET", STATE, Served(STATE)),
        ("get", STATE, Refused(405, "method-not-allowed")),
        ("Get", STATE, Refused(405, "method-not-allowed")),
        ("DELETE", STATE, Refused(405, "method-not-allowed")),
        ("PUT", STATE, Refused(405, "method-not-allowed")),
        ("TRACE", STATE, Refused(405, "method-not-allowed")),
        ("OPTIONS", STATE, Refused(405, "method-not-allowed")),
        ("PROPFIND", STATE, Refused(405, "method-not-allowed")),
    ];
    for (method, target, want) in &cases {
        let r = send(&env, method, target, &[]).await;
        check(&env, &format!("{method} {target}"), &r, *want);
    }
    // HEAD rides on GET.
    let res = env
        .gw
        .request("HEAD", STATE)
        .bearer(&env.good())
        .send()
        .await;
    assert_eq!(res.status, 200);
    env.one_upstream("HEAD", "HEAD", STATE, Some(&env.reader));
}

#[tokio::test]
async fn absolute_form_and_connect_targets() {
    let env = Env::start().await;
    // Routed by the path; the upstream gets its own Host and the target's authority as
    // X-Forwarded-Host (RFC 9112 §3.2.2: the target's authority wins over Host).
    for (target, path) in [
        ("http://other-host/machines/m1/i/i1", STATE),
        (
            "http://other-host:8080/machines/m1/i/i1?q=1",
            "/machines/m1/i/i1?q=1",
        ),
        ("https://other-host/machines/m1/i/i1", STATE),
        (&*format!("http://{}/machines/m1/i/i1", env.up.addr), STATE),
    ] {
        let r = send(&env, "GET", target, &["host: gateway.test"]).await;
        assert_eq!(r.len(), 1, "{target}: {r:?}");
        assert_eq!(r[0].status, 200, "{target}: {}", r[0].text());
        let seen = env.one_upstream(target, "GET", path, Some(&env.reader));
        assert_eq!(
            seen.header("host"),
            Some(env.up.addr.to_string().as_str()),
            "{target}"
        );
        let authority = target.split('/').nth(2).unwrap();
        assert_eq!(seen.header("x-forwarded-host"), Some(authority), "{target}");
    }
    let upstream_addr = env.up.addr.to_string();
    let cases: Vec<(&str, &str, Want)> = vec![
        (
            "GET",
            "http://other-host/machines/m1/../../org-admin",
            Refused(400, "bad-request"),
        ),
        (
            "GET",
            "http://other-host/machines/m1%2fi/i1",
            Refused(400, "bad-request"),
        ),
        (
            "GET",
            "http://other-host/MACHINES/m1/i/i1",
            Refused(404, "not-found"),
        ),
        ("GET", "http://other-host", Refused(404, "not-found")),
        (
            "GET",
            "http://user:pw@other-host/machines/m1/i/i1",
            Refused(400, "bad-request"),
        ),
        // The gateway is no forward proxy: CONNECT has no path to route.
        ("CONNECT", "other-host:443", Refused(400, "bad-request")),
        ("CONNECT", &upstream_addr, Refused(400, "bad-request")),
    ];
    for (method, target, want) in &cases {
        let r = send(&env, method, target, &[]).await;
        check(&env, &format!("{method} {target}"), &r, *want);
    }
    // CONNECT in origin form on a route that takes any method: never a tunnel.
    let admin = format!(
        "authorization: Bearer {}",
        crate::support::mint(&env.admin).sign()
    );
    let path = format!("/orgs/{}/members/x", env.org);
    let req = head("CONNECT", &path, &[&admin, "connection: close"]);
    let r = raw(env.addr(), req.as_bytes()).await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].status, 405, "CONNECT {path}: {}", r[0].text());
    assert_eq!(r[0].code().as_deref(), Some("method-not-allowed"));
    env.nothing_upstream("CONNECT in origin form");
}

#[tokio::test]
async fn unusual_host_headers() {
    let env = Env::start().await;
    let t = format!("authorization: Bearer {}", env.good());
    let served = |r: &[RawResponse], case: &str| {
        assert_eq!(r.len(), 1, "{case}: {r:?}");
        assert_eq!(r[0].status, 200, "{case}: {}", r[0].text());
        env.one_upstream(case, "GET", STATE, Some(&env.reader))
    };
    // Control: any Host is the client's business; the upstream gets its own.
    for host in [
        "evil.example",
        "evil.example:1",
        "127.0.0.1",
        "[::1]:8080",
        "xn--nxasmq6b.example",
    ] {
        let req = head(
            "GET",
            STATE,
            &[&t, &format!("host: {host}"), "connection: close"],
        );
        let seen = served(&raw(env.addr(), req.as_bytes()).await, host);
        assert_eq!(
            seen.header("host"),
            Some(env.up.addr.to_string().as_str()),
            "{host}"
        );
        assert_eq!(seen.header("x-forwarded-host"), Some(host), "{host}");
    }
    // HTTP/1.0 needs no Host.
    let req = format!("GET {STATE} HTTP/1.0\r\n{t}\r\n\r\n");
    served(
        &raw(env.addr(), req.as_bytes()).await,
        "HTTP/1.0 without Host",
    );
    // RFC 9112 §3.2: missing (HTTP/1.1), repeated or invalid Host → 400.
    let bad: Vec<(&str, Vec<&str>)> = vec![
        ("missing Host", vec!["-host"]),
        (
            "two Host headers",
            vec!["host: a.example", "host: b.example"],
        ),
        (
            "two equal Host headers",
            vec!["host: a.example", "host: a.example"],
        ),
        ("Host with userinfo", vec!["host: user@evil.example"]),
        (
            "Host with user and password",
            vec!["host: user:pw@evil.example"],
        ),
        ("Host with a path", vec!["host: evil.example/x"]),
        ("Host with a comma list", vec!["host: a.example, b.example"]),
        ("Host with a space", vec!["host: a b"]),
    ];
    for (case, headers) in &bad {
        let mut all = vec![t.as_str(), "connection: close"];
        all.extend(headers.iter().copied());
        let r = raw(env.addr(), head("GET", STATE, &all).as_bytes()).await;
        assert_eq!(r.len(), 1, "{case}: {r:?}");
        assert_eq!(r[0].status, 400, "{case}: {}", r[0].text());
        // Either the pipeline's JSON or hyper's parser; never served.
        if let Some(code) = r[0].code() {
            assert_eq!(code, "bad-request", "{case}");
        }
        env.nothing_upstream(case);
    }
}
