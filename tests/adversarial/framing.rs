//! HTTP/1.1 framing through raw sockets: CL+TE, Transfer-Encoding obfuscations, bad
//! Content-Length, bad chunks, and requests hidden in the bodies of refused and allowed
//! requests. The gateway re-frames every body it forwards, so the upstream can only ever see
//! requests the gateway parsed, authorized and wrote itself: every case checks the exact list
//! of requests the upstream received, and that the smuggled one is never among them.
//!
//! Outcomes chosen:
//! - CL and TE together: hyper frames by TE (RFC 9112 §6.3), drops the Content-Length and
//!   closes the connection after the response; the upstream gets the chunked body re-framed.
//! - A Transfer-Encoding other than exactly `chunked` (`gzip, chunked`, `chunked, chunked`,
//!   two TE lines) is refused with 400: the gateway implements no other coding (RFC 9112 §6.1).
//! - A refused request's body is never read beyond what is already buffered: a small one is
//!   drained and the connection serves the next request; a large one closes the connection.

use std::time::{Duration, Instant};

use crate::harness::{head, marker, raw, raw_n, raw_refused, Env, RawResponse};
use crate::support::upstream::Recorded;

const SMUGGLED_PATH: &str = "/machines/smuggled/i/x";

/// A complete, authorized request for a path nobody asked for on the wire.
fn smuggled(env: &Env) -> String {
    head(
        "GET",
        SMUGGLED_PATH,
        &[&format!("authorization: Bearer {}", env.good())],
    )
}

fn auth(env: &Env) -> String {
    format!("authorization: Bearer {}", env.good())
}

/// What the upstream saw, as `METHOD path (body bytes)`; clears it. Fails if the smuggled
/// request is among it.
fn upstream_saw(env: &Env, case: &str) -> Vec<Recorded> {
    let seen = env.up.requests();
    env.up.clear();
    for r in &seen {
        assert!(
            !r.path_and_query.contains("smuggled"),
            "{case}: a smuggled request reached the upstream: {} {}",
            r.method,
            r.path_and_query
        );
    }
    seen
}

/// Waits (at most 3 s) until the upstream's record has not changed for 300 ms.
async fn settle(env: &Env) {
    let deadline = Instant::now() + Duration::from_secs(3);
    let (mut last, mut since) = (env.up.count(), Instant::now());
    while Instant::now() < deadline && since.elapsed() < Duration::from_millis(300) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = env.up.count();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
}

fn paths(seen: &[Recorded]) -> Vec<String> {
    seen.iter()
        .map(|r| format!("{} {} ({})", r.method, r.path_and_query, r.body_len))
        .collect()
}

/// After a refusal whose body the gateway may drain or not: either the connection went on to
/// the marker (answered and forwarded — and nothing else was), or it was closed right after
/// the refusal (and nothing was forwarded).
fn refusal_then_marker_or_close(env: &Env, case: &str, r: &[RawResponse], status: u16, code: &str) {
    assert!(!r.is_empty(), "{case}: no response");
    raw_refused(case, &r[0], status, code);
    let seen = upstream_saw(env, case);
    match r.len() {
        1 => assert!(seen.is_empty(), "{case}: {:?}", paths(&seen)),
        2 => {
            assert_eq!(r[1].status, 200, "{case}: marker {}", r[1].text());
            assert_eq!(paths(&seen), ["GET /status?marker (0)"], "{case}");
        }
        _ => panic!("{case}: more responses than requests: {r:?}"),
    }
}

#[tokio::test]
async fn positive_control_pipelined_requests_are_all_served() {
    // Without this, "the smuggled request never arrived" could mean the harness cannot see
    // requests at all.
    let env = Env::start().await;
    let req = [smuggled(&env), marker()].concat();
    let r = raw(env.addr(), req.as_bytes()).await;
    assert_eq!(r.len(), 2, "{r:?}");
    let seen = env.up.requests();
    env.up.clear();
    assert_eq!(
        paths(&seen),
        [
            format!("GET {SMUGGLED_PATH} (0)"),
            "GET /status?marker (0)".to_owned()
        ]
    );
}

#[tokio::test]
async fn content_length_and_transfer_encoding_together() {
    let env = Env::start().await;
    let a = auth(&env);
    let smug = smuggled(&env);
    let zero_then_smuggled = format!("0\r\n\r\n{smug}");
    let cl = format!("content-length: {}", zero_then_smuggled.len());
    // Refused (no token), both header orders: 401, and the connection closes.
    for (case, lines) in [
        (
            "CL then TE",
            vec![cl.as_str(), "transfer-encoding: chunked"],
        ),
        (
            "TE then CL",
            vec!["transfer-encoding: chunked", cl.as_str()],
        ),
        (
            "TE then CL 4",
            vec!["transfer-encoding: chunked", "content-length: 4"],
        ),
    ] {
        let req = format!(
            "{}{zero_then_smuggled}{}",
            head("POST", "/machines", &lines),
            marker()
        );
        let r = raw(env.addr(), req.as_bytes()).await;
        assert_eq!(r.len(), 1, "{case}: {r:?}");
        raw_refused(case, &r[0], 401, "missing-token");
        assert!(upstream_saw(&env, case).is_empty(), "{case}");
    }
    // Allowed: the body is what the chunked framing says — once — and nothing follows it.
    for (case, lines, body, len) in [
        (
            "CL.TE, empty chunked body",
            vec![
                a.as_str(),
                "content-length: 4",
                "transfer-encoding: chunked",
            ],
            zero_then_smuggled.clone(),
            0,
        ),
        (
            "TE.CL, empty chunked body",
            vec![a.as_str(), "transfer-encoding: chunked", cl.as_str()],
            zero_then_smuggled.clone(),
            0,
        ),
        (
            "CL too large, chunked body",
            vec![
                a.as_str(),
                "content-length: 1000",
                "transfer-encoding: chunked",
            ],
            format!("5\r\nhello\r\n0\r\n\r\n{smug}"),
            5,
        ),
        (
            "CL too small, chunked body",
            vec![
                a.as_str(),
                "content-length: 1",
                "transfer-encoding: chunked",
            ],
            format!("5\r\nhello\r\n0\r\n\r\n{smug}"),
            5,
        ),
    ] {
        let req = format!("{}{body}{}", head("POST", "/machines", &lines), marker());
        let r = raw(env.addr(), req.as_bytes()).await;
        assert_eq!(r.len(), 1, "{case}: {r:?}");
        assert_eq!(r[0].status, 200, "{case}: {}", r[0].text());
        let seen = upstream_saw(&env, case);
        assert_eq!(paths(&seen), [format!("POST /machines ({len})")], "{case}");
        let cls: Vec<_> = seen[0].headers.get_all("content-length").iter().collect();
        assert!(
            cls.len() <= 1 && cls.iter().all(|v| v.to_str().unwrap() == len.to_string()),
            "{case}: {cls:?}"
        );
    }
}

#[tokio::test]
async fn transfer_encoding_obfuscations() {
    let env = Env::start().await;
    let a = auth(&env);
    let smug = smuggled(&env);
    let body = format!("5\r\nhello\r\n0\r\n\r\n{smug}");
    let cl = format!("content-length: {}", body.len());
    // Accepted spellings of one `chunked` coding (OWS around the value is not part of it).
    for te in [
        "transfer-encoding: chunked",
        "transfer-encoding:  chunked",
        "transfer-encoding:\tchunked",
        "transfer-encoding: chunked\t",
        "Transfer-Encoding: CHUNKED",
        "TRANSFER-ENCODING: Chunked",
    ] {
        let req = format!("{}{body}{}", head("POST", "/machines", &[&a, te]), marker());
        let r = raw(env.addr(), req.as_bytes()).await;
        // The smuggled bytes after the chunked body are the next request on the connection:
        // the gateway parses it (authorized, so forwarded) — as itself, never inside a body.
        assert_eq!(r.len(), 3, "{te:?}: {r:?}");
        let seen = env.up.requests();
        env.up.clear();
        assert_eq!(
            paths(&seen),
            [
                "POST /machines (5)".to_owned(),
                format!("GET {SMUGGLED_PATH} (0)"),
                "GET /status?marker (0)".to_owned()
            ],
            "{te:?}"
        );
    }
    // Refused before the pipeline: hyper's 400, nothing upstream.
    let parser = [
        "transfer-encoding: xchunked",
        "transfer-encoding: chunkedx",
        "transfer-encoding: chunked, identity",
        "transfer-encoding: identity",
        "transfer-encoding: gzip",
        "transfer-encoding: \"chunked\"",
        "transfer-encoding: chunked;q=1",
        "transfer-encoding : chunked",
        "transfer-encoding: chunked\r\ntransfer-encoding: identity",
        "transfer-encoding: \u{b}chunked",
    ];
    for te in parser {
        let req = format!("{}{body}", head("POST", "/machines", &[&a, te, &cl]));
        let r = raw(env.addr(), req.as_bytes()).await;
        assert_eq!(r.len(), 1, "{te:?}: {r:?}");
        assert_eq!(r[0].status, 400, "{te:?}: {}", r[0].text());
        assert!(upstream_saw(&env, te).is_empty(), "{te:?}");
    }
    // Codings the gateway does not implement, which hyper lets through because they end in
    // chunked: refused by the pipeline.
    for te in [
        "transfer-encoding: gzip, chunked",
        "transfer-encoding: chunked, chunked",
        "transfer-encoding: identity\r\ntransfer-encoding: chunked",
        "transfer-encoding: chunked\r\ntransfer-encoding: chunked",
    ] {
        let req = format!(
            "{}{body}",
            head("POST", "/machines", &[&a, te, "connection: close"])
        );
        let r = raw(env.addr(), req.as_bytes()).await;
        assert_eq!(r.len(), 1, "{te:?}: {r:?}");
        raw_refused(te, &r[0], 400, "bad-request");
        assert!(upstream_saw(&env, te).is_empty(), "{te:?}");
    }
    // HTTP/1.0 has no chunked coding (RFC 9112 §6.1).
    let req = format!("POST /machines HTTP/1.0\r\n{a}\r\ntransfer-encoding: chunked\r\n\r\n{body}");
    let r = raw(env.addr(), req.as_bytes()).await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].status, 400);
    assert!(upstream_saw(&env, "HTTP/1.0 chunked").is_empty());
    // An underscore spelling is no Transfer-Encoding: framed by Content-Length, and dropped.
    let req = format!(
        "{}{body}",
        head(
            "POST",
            "/machines",
            &[&a, "transfer_encoding: chunked", &cl, "connection: close"]
        )
    );
    let r = raw(env.addr(), req.as_bytes()).await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].status, 200);
    let seen = upstream_saw(&env, "transfer_encoding");
    assert_eq!(paths(&seen), [format!("POST /machines ({})", body.len())]);
    assert!(seen[0].headers.get("transfer_encoding").is_none());
}

#[tokio::test]
async fn duplicate_and_invalid_content_lengths() {
    let env = Env::start().await;
    let a = auth(&env);
    let smug = smuggled(&env);
    let body = format!("hello{smug}");
    // Valid: the body is 5 bytes; what follows is the next request (parsed as one).
    for cl in [
        "content-length: 5",
        "content-length:  5 ",
        "content-length: 05",
        "content-length: 5\r\ncontent-length: 5",
        "Content-Length:\t5",
    ] {
        let req = format!("{}{body}{}", head("POST", "/machines", &[&a, cl]), marker());
        let r = raw(env.addr(), req.as_bytes()).await;
        assert_eq!(r.len(), 3, "{cl:?}: {r:?}");
        let seen = env.up.requests();
        env.up.clear();
        assert_eq!(
            paths(&seen),
            [
                "POST /machines (5)".to_owned(),
                format!("GET {SMUGGLED_PATH} (0)"),
                "GET /status?marker (0)".to_owned()
            ],
            "{cl:?}"
        );
        assert_eq!(
            seen[0].headers.get_all("content-length").iter().count(),
            1,
            "{cl:?}"
        );
    }
    // Invalid (RFC 9110 §8.6, RFC 9112 §6.3): 400 and the connection closes.
    for cl in [
        "content-length: 5, 5",
        "content-length: 5,5",
        "content-length: +5",
        "content-length: -1",
        "content-length: 0x5",
        "content-length: 5 5",
        "content-length: 5.0",
        "content-length: 1e1",
        "content-length: five",
        "content-length:",
        "content-length: 99999999999999999999",
        "content-length: 5\r\ncontent-length: 6",
        "content-length: 6\r\ncontent-length: 5",
        "content-length : 5",
    ] {
        let req = format!("{}{body}{}", head("POST", "/machines", &[&a, cl]), marker());
        let r = raw(env.addr(), req.as_bytes()).await;
        assert_eq!(r.len(), 1, "{cl:?}: {r:?}");
        assert_eq!(r[0].status, 400, "{cl:?}: {}", r[0].text());
        assert!(upstream_saw(&env, cl).is_empty(), "{cl:?}");
    }
}

#[tokio::test]
async fn invalid_chunks() {
    let env = Env::start().await;
    let a = auth(&env);
    let smug = smuggled(&env);
    let ext = format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(20_000));
    let bodies = [
        "zz\r\nhello\r\n0\r\n\r\n".to_owned(),
        "-5\r\nhello\r\n0\r\n\r\n".to_owned(),
        "+5\r\nhello\r\n0\r\n\r\n".to_owned(),
        "0x5\r\nhello\r\n0\r\n\r\n".to_owned(),
        "FFFFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n".to_owned(),
        "5 junk\r\nhello\r\n0\r\n\r\n".to_owned(),
        "\r\nhello\r\n0\r\n\r\n".to_owned(),
        "5\r\nhelloEXTRA\r\n0\r\n\r\n".to_owned(),
        "5\r\nhel".to_owned(),
        ext,
    ];
    // An aborted upload is recorded by the upstream whenever its side of the connection
    // fails, which may be after the client already has its answer: each request carries its
    // case in the query, and the checks look at that case's records only.
    let tagged = |tag: &str| -> Vec<Recorded> {
        let all = env.up.requests();
        for r in &all {
            assert!(
                !r.path_and_query.contains("smuggled"),
                "smuggled: {}",
                r.path_and_query
            );
        }
        all.into_iter()
            .filter(|r| r.path_and_query.ends_with(tag))
            .collect()
    };
    for (i, body) in bodies.iter().enumerate() {
        let case = format!("{:?}", &body[..body.len().min(24)]);
        // Refused (no token): the body is never parsed; 401, and nothing upstream, ever.
        let refused = format!("/machines?refused={i}");
        let req = format!(
            "{}{body}{smug}{}",
            head("POST", &refused, &["transfer-encoding: chunked"]),
            marker()
        );
        let r = raw(env.addr(), req.as_bytes()).await;
        assert!(!r.is_empty(), "{case}");
        raw_refused(&case, &r[0], 401, "missing-token");
        assert!(r.len() <= 2, "{case}: {r:?}");
        assert!(tagged(&format!("refused={i}")).is_empty(), "{case}");
        // Allowed: the head is forwarded as it streams; the bad chunk cuts the upload. The
        // upstream sees at most that one request, never what follows it.
        let allowed = format!("/machines?allowed={i}");
        let req = format!(
            "{}{body}{smug}{}",
            head("POST", &allowed, &[&a, "transfer-encoding: chunked"]),
            marker()
        );
        let r = raw(env.addr(), req.as_bytes()).await;
        assert!(r.len() <= 1, "{case}: {r:?}");
        if let Some(first) = r.first() {
            assert!(
                matches!(first.status, 400 | 502),
                "{case}: {} {}",
                first.status,
                first.text()
            );
        }
        let seen = tagged(&format!("allowed={i}"));
        assert!(seen.len() <= 1, "{case}: {:?}", paths(&seen));
    }
    // Let late records of aborted uploads land (bounded), then check everything the upstream
    // ever saw: only the allowed requests, each at most once, none smuggled, no marker.
    settle(&env).await;
    let all = tagged("");
    for r in &all {
        assert_eq!(r.method, "POST", "{}", r.path_and_query);
        assert!(
            r.path_and_query.starts_with("/machines?allowed="),
            "{}",
            r.path_and_query
        );
        let n = all
            .iter()
            .filter(|x| x.path_and_query == r.path_and_query)
            .count();
        assert_eq!(n, 1, "{} twice", r.path_and_query);
    }
    env.up.clear();
}

#[tokio::test]
async fn requests_hidden_in_refused_bodies_never_arrive() {
    let env = Env::start().await;
    let a = auth(&env);
    let smug = smuggled(&env);
    let cl = format!("content-length: {}", smug.len());
    let admin_path = format!("/orgs/{}/members/x", env.other_org);
    // (case, method, path, header lines, status, code)
    type Refusal<'a> = (&'a str, &'a str, &'a str, Vec<&'a str>, u16, &'a str);
    let cases: Vec<Refusal> = vec![
        (
            "401 missing token",
            "POST",
            "/machines",
            vec![],
            401,
            "missing-token",
        ),
        (
            "401 bad token",
            "POST",
            "/machines",
            vec!["authorization: Bearer x.y.z"],
            401,
            "invalid-token",
        ),
        (
            "403 missing scope",
            "GET",
            "/org-admin",
            vec![a.as_str()],
            403,
            "missing-scope",
        ),
        (
            "403 wrong org",
            "POST",
            &admin_path,
            vec![a.as_str()],
            403,
            "missing-org",
        ),
        (
            "404",
            "POST",
            "/nowhere",
            vec![a.as_str()],
            404,
            "not-found",
        ),
        (
            "405",
            "DELETE",
            "/machines",
            vec![a.as_str()],
            405,
            "method-not-allowed",
        ),
        (
            "400 ambiguous path",
            "POST",
            "/machines/../machines",
            vec![a.as_str()],
            400,
            "bad-request",
        ),
        (
            "413 declared too large",
            "POST",
            "/limited",
            vec![a.as_str()],
            413,
            "payload-too-large",
        ),
        (
            "GET with a body (CL.0)",
            "GET",
            "/org-admin",
            vec![a.as_str()],
            403,
            "missing-scope",
        ),
    ];
    for (case, method, path, lines, status, code) in &cases {
        let mut all = lines.clone();
        let big;
        if *status == 413 {
            big = "content-length: 2000".to_owned();
            all.push(&big);
        } else {
            all.push(&cl);
        }
        let req = format!("{}{smug}{}", head(method, path, &all), marker());
        let r = raw(env.addr(), req.as_bytes()).await;
        refusal_then_marker_or_close(&env, case, &r, *status, code);
        // The same, chunked (a chunked body is only counted as it streams: no 413 up front).
        if *status == 413 {
            continue;
        }
        let mut all = lines.clone();
        all.push("transfer-encoding: chunked");
        let chunked = format!("{:x}\r\n{smug}\r\n0\r\n\r\n", smug.len());
        let req = format!("{}{chunked}{}", head(method, path, &all), marker());
        let r = raw(env.addr(), req.as_bytes()).await;
        refusal_then_marker_or_close(&env, &format!("{case}, chunked"), &r, *status, code);
    }
    // Expect: 100-continue on a refused request: the refusal comes first, no 100.
    let req = head(
        "POST",
        "/machines",
        &[
            "expect: 100-continue",
            "content-length: 1000",
            "connection: close",
        ],
    );
    let (r, _) = raw_n(env.addr(), req.as_bytes(), 1).await;
    assert_eq!(r[0].status, 401, "{r:?}");
    assert!(upstream_saw(&env, "expect").is_empty());
}

#[tokio::test]
async fn requests_hidden_in_allowed_bodies_are_just_bytes() {
    let env = Env::start().await;
    let a = auth(&env);
    let smug = smuggled(&env);
    let cl = format!("content-length: {}", smug.len());
    let n = smug.len();
    let chunked = format!("{n:x}\r\n{smug}\r\n0\r\n\r\n");
    let cases: Vec<(&str, String, String)> = vec![
        (
            "POST with Content-Length",
            head("POST", "/machines", &[&a, &cl]),
            smug.clone(),
        ),
        (
            "POST chunked",
            head("POST", "/machines", &[&a, "transfer-encoding: chunked"]),
            chunked.clone(),
        ),
        (
            "GET with a body",
            head("GET", "/machines", &[&a, &cl]),
            smug.clone(),
        ),
        (
            "public GET with a body",
            head("GET", "/status", &[&cl]),
            smug.clone(),
        ),
        (
            "Expect 100-continue",
            head("POST", "/machines", &[&a, &cl, "expect: 100-continue"]),
            smug.clone(),
        ),
    ];
    for (case, request_head, body) in &cases {
        let req = format!("{request_head}{body}{}", marker());
        let r = raw(env.addr(), req.as_bytes()).await;
        let finals: Vec<_> = r.iter().filter(|x| x.status >= 200).collect();
        assert_eq!(finals.len(), 2, "{case}: {r:?}");
        assert_eq!(finals[0].status, 200, "{case}");
        let seen = upstream_saw(&env, case);
        let method = request_head.split(' ').next().unwrap();
        let path = request_head.split(' ').nth(1).unwrap();
        assert_eq!(
            paths(&seen),
            [
                format!("{method} {path} ({n})"),
                "GET /status?marker (0)".to_owned()
            ],
            "{case}"
        );
    }
}

#[tokio::test]
async fn odd_request_lines() {
    let env = Env::start().await;
    let a = auth(&env);
    // Bare LF line endings are accepted (RFC 9112 §2.2 allows it) and re-written with CRLF.
    let req = format!("GET /machines HTTP/1.1\nhost: x\n{a}\nconnection: close\n\n");
    let r = raw(env.addr(), req.as_bytes()).await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].status, 200);
    env.one_upstream("bare LF", "GET", "/machines", Some(&env.reader));
    // An empty line before the request line is ignored (RFC 9112 §2.2).
    let req = format!(
        "\r\n{}",
        head("GET", "/machines", &[&a, "connection: close"])
    );
    let r = raw(env.addr(), req.as_bytes()).await;
    assert_eq!(r[0].status, 200, "{r:?}");
    env.one_upstream("leading CRLF", "GET", "/machines", Some(&env.reader));
    for line in [
        "GET /machines HTTP/1.1 extra",
        "GET /machines http/1.1",
        "GET /machines HTTP/1.1x",
        "GET /machines HTTP/11",
        "GET /machines  HTTP/1.1",
        "GET  /machines HTTP/1.1",
        "GET /machines",
        "GET\t/machines HTTP/1.1",
        "GET /machines HTTP/1.1\rx",
        "G\u{0}ET /machines HTTP/1.1",
    ] {
        let req = format!("{line}\r\nhost: x\r\n{a}\r\nconnection: close\r\n\r\n");
        let r = raw(env.addr(), req.as_bytes()).await;
        assert_eq!(r.len(), 1, "{line:?}: {r:?}");
        assert!(r[0].status >= 400, "{line:?}: {}", r[0].status);
        env.nothing_upstream(line);
    }
    // Other versions: never served.
    for version in ["HTTP/2.0", "HTTP/3.0", "HTTP/1.2", "HTTP/0.9"] {
        let req = format!("GET /machines {version}\r\nhost: x\r\n{a}\r\nconnection: close\r\n\r\n");
        let r = raw(env.addr(), req.as_bytes()).await;
        assert!(r.iter().all(|x| x.status >= 400), "{version}: {r:?}");
        env.nothing_upstream(version);
    }
}

#[tokio::test]
async fn a_pipelined_flood_of_refusals_reaches_nothing() {
    let env = Env::start().await;
    let one = head(
        "GET",
        "/machines",
        &["authorization: Bearer forged.token.here"],
    );
    let mut req = one.repeat(300);
    req.push_str(&marker());
    let r = raw(env.addr(), req.as_bytes()).await;
    assert_eq!(r.len(), 301);
    for x in &r[..300] {
        raw_refused("flood", x, 401, "invalid-token");
    }
    assert_eq!(r[300].status, 200);
    let seen = upstream_saw(&env, "flood");
    assert_eq!(paths(&seen), ["GET /status?marker (0)"]);
}
