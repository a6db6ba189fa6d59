//! Exhaustion: slow heads (slowloris), huge and numerous headers, huge URIs, declared huge
//! bodies, hundreds of idle connections — each bounded in count and time, on loopback, and
//! each with a legitimate request that must still succeed meanwhile.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{head, marker, raw, raw_n, raw_refused, Env, STATE};

/// The gateway's `header_read_timeout_seconds` in this module.
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);

async fn env() -> Env {
    Env::start_with("header_read_timeout_seconds = 2", "").await
}

/// A legitimate request succeeds, quickly, and reaches the upstream with its identity.
async fn legit(env: &Env, case: &str) {
    let started = Instant::now();
    let res = env.gw.get(STATE).bearer(&env.good()).send().await;
    env.forwarded(case, &res, "GET", STATE, &env.reader);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{case}: a legitimate request took {:?}",
        started.elapsed()
    );
}

/// Waits for the gateway to close `s` (reads until EOF or an error); returns whether it did
/// within `limit`. Anything it sent first is returned too.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> (bool, Vec<u8>) {
    let mut got = Vec::new();
    let done = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    (done.is_ok(), got)
}

#[tokio::test]
async fn slowloris_heads_are_cut_while_others_are_served() {
    let env = env().await;
    let auth = format!("authorization: Bearer {}", env.good());
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(env.addr()).await.unwrap();
        s.write_all(format!("GET {STATE} HTTP/1.1\r\nhost: x\r\n{auth}\r\n").as_bytes())
            .await
            .unwrap();
        slow.push(s);
    }
    let started = Instant::now();
    // Trickle one header byte per connection every 200 ms: never a whole head. The pace is
    // the attack, not a synchronization.
    let mut ticks = 0;
    while started.elapsed() < HEAD_TIMEOUT + Duration::from_secs(3) && ticks < 40 {
        for s in &mut slow {
            let _ = s.write_all(b"x").await;
        }
        if ticks == 2 {
            legit(&env, "during slowloris").await;
        }
        ticks += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if ticks > 15 {
            break;
        }
    }
    for (i, s) in slow.iter_mut().enumerate() {
        let (closed, got) = closed_within(s, HEAD_TIMEOUT + Duration::from_secs(3)).await;
        assert!(
            closed,
            "slow connection {i} still open after {:?}",
            started.elapsed()
        );
        // Closed without a request ever being served on it.
        assert!(!String::from_utf8_lossy(&got).contains("200 OK"), "{i}");
    }
    assert!(started.elapsed() < HEAD_TIMEOUT + Duration::from_secs(5));
    env.nothing_upstream("slowloris");
    legit(&env, "after slowloris").await;
}

#[tokio::test]
async fn hundreds_of_idle_connections_do_not_starve_a_legitimate_request() {
    let env = env().await;
    // Stalled inside HTTP/1-or-2 detection (part of the HTTP/2 preface), or a full HTTP/2
    // connection that never opens a stream: closed by the same deadline.
    let mut partial = TcpStream::connect(env.addr()).await.unwrap();
    partial.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut h2 = TcpStream::connect(env.addr()).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut idle = Vec::new();
    for _ in 0..500 {
        idle.push(TcpStream::connect(env.addr()).await.unwrap());
    }
    let started = Instant::now();
    legit(&env, "with 500 idle connections").await;
    // An idle connection that never sends a request is closed by the head timeout.
    for (i, s) in idle.iter_mut().enumerate() {
        let (closed, got) = closed_within(s, HEAD_TIMEOUT + Duration::from_secs(4)).await;
        assert!(
            closed,
            "idle connection {i} still open after {:?}",
            started.elapsed()
        );
        assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
            "{i}: {}",
            String::from_utf8_lossy(&got)
        );
    }
    legit(&env, "after the idle connections").await;
    for (case, s) in [
        ("partial preface", &mut partial),
        ("h2 without a stream", &mut h2),
    ] {
        let (closed, _) = closed_within(s, HEAD_TIMEOUT + Duration::from_secs(4)).await;
        assert!(closed, "{case}: still open after {:?}", started.elapsed());
    }
    env.nothing_upstream("idle connections");
}

#[tokio::test]
async fn huge_and_numerous_headers_are_431() {
    let env = env().await;
    let auth = format!("authorization: Bearer {}", env.good());
    let huge = format!("x-big: {}", "a".repeat(70_000));
    let spoof_many: Vec<String> = (0..150)
        .map(|i| format!("x-scopegate-org-{i}: evil"))
        .collect();
    let many: Vec<String> = (0..150).map(|i| format!("x-h{i}: v")).collect();
    let wide: Vec<String> = (0..40)
        .map(|i| format!("x-w{i}: {}", "w".repeat(2000)))
        .collect();
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("one 70 kB header", vec![huge.clone()]),
        ("150 headers", many),
        ("150 spoofed identity headers", spoof_many),
        ("40 headers of 2 kB (80 kB)", wide),
        (
            "a 70 kB token",
            vec![format!("authorization: Bearer {}", "t".repeat(70_000))],
        ),
    ];
    for (case, lines) in &cases {
        let mut all: Vec<&str> = vec![auth.as_str()];
        all.extend(lines.iter().map(String::as_str));
        all.push("connection: close");
        let r = raw(env.addr(), head("GET", STATE, &all).as_bytes()).await;
        assert_eq!(r.len(), 1, "{case}: {r:?}");
        assert_eq!(r[0].status, 431, "{case}: {}", r[0].text());
        env.nothing_upstream(case);
    }
    // Control: 60 ordinary headers of 500 bytes (30 kB) pass, identity intact.
    let fine: Vec<String> = (0..60)
        .map(|i| format!("x-f{i}: {}", "f".repeat(500)))
        .collect();
    let mut all: Vec<&str> = vec![auth.as_str(), "connection: close"];
    all.extend(fine.iter().map(String::as_str));
    let r = raw(env.addr(), head("GET", STATE, &all).as_bytes()).await;
    assert_eq!(r[0].status, 200, "{r:?}");
    env.one_upstream("60 headers of 500 bytes", "GET", STATE, Some(&env.reader));
    legit(&env, "after huge headers").await;
}

#[tokio::test]
async fn huge_uris_are_refused() {
    let env = env().await;
    let auth = format!("authorization: Bearer {}", env.good());
    // Over max_uri_bytes (8 KiB): the pipeline's 414.
    for n in [8_200, 20_000, 60_000] {
        let target = format!("{STATE}?q={}", "q".repeat(n));
        let r = raw(
            env.addr(),
            head("GET", &target, &[&auth, "connection: close"]).as_bytes(),
        )
        .await;
        assert_eq!(r.len(), 1, "{n}: {r:?}");
        raw_refused(&format!("{n}-byte URI"), &r[0], 414, "uri-too-long");
        env.nothing_upstream("huge URI");
    }
    // Past hyper's own buffer: refused before the pipeline.
    let target = format!("{STATE}?q={}", "q".repeat(100_000));
    let r = raw(
        env.addr(),
        head("GET", &target, &[&auth, "connection: close"]).as_bytes(),
    )
    .await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(matches!(r[0].status, 414 | 431), "{}", r[0].status);
    env.nothing_upstream("100 kB URI");
    // A long path is as refused as a long query.
    let target = format!("/machines/{}/i/i1", "m".repeat(9_000));
    let r = raw(
        env.addr(),
        head("GET", &target, &[&auth, "connection: close"]).as_bytes(),
    )
    .await;
    raw_refused("9 kB path", &r[0], 414, "uri-too-long");
    env.nothing_upstream("9 kB path");
    // Control: just under the limit.
    let target = format!("{STATE}?q={}", "q".repeat(8_000));
    let r = raw(
        env.addr(),
        head("GET", &target, &[&auth, "connection: close"]).as_bytes(),
    )
    .await;
    assert_eq!(r[0].status, 200, "{}", r[0].text());
    env.one_upstream("8 kB URI", "GET", &target, Some(&env.reader));
}

#[tokio::test]
async fn declared_huge_bodies_are_answered_without_being_read() {
    let env = env().await;
    let auth = format!("authorization: Bearer {}", env.good());
    let tera = "content-length: 1000000000000";
    let cases: Vec<(&str, &str, Vec<&str>, u16, &str)> = vec![
        (
            "refused, 1 TB declared",
            "/machines",
            vec![tera],
            401,
            "missing-token",
        ),
        (
            "refused, 1 TB declared, expecting 100-continue",
            "/machines",
            vec![tera, "expect: 100-continue"],
            401,
            "missing-token",
        ),
        (
            "refused, a 2^48-byte chunk",
            "/machines",
            vec!["transfer-encoding: chunked"],
            401,
            "missing-token",
        ),
        (
            "over the route limit, 1 TB declared",
            "/limited",
            vec![&auth, tera],
            413,
            "payload-too-large",
        ),
        (
            "over the route limit, expecting 100-continue",
            "/limited",
            vec![&auth, tera, "expect: 100-continue"],
            413,
            "payload-too-large",
        ),
    ];
    for (case, path, lines, status, code) in &cases {
        let mut req = head("POST", path, lines).into_bytes();
        if lines.contains(&"transfer-encoding: chunked") {
            req.extend_from_slice(b"1000000000000\r\n");
        }
        req.extend_from_slice(b"only a few bytes of it");
        let mut s = TcpStream::connect(env.addr()).await.unwrap();
        s.write_all(&req).await.unwrap();
        let started = Instant::now();
        let (_, got) = closed_within(&mut s, Duration::from_secs(5)).await;
        // Answered at once, with no 100 Continue, and the connection closed: the body is
        // neither awaited nor read.
        let r = crate::harness::parse_responses(&got, true);
        assert_eq!(r.len(), 1, "{case}: {r:?}");
        raw_refused(case, &r[0], *status, code);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{case}: took {:?}",
            started.elapsed()
        );
        env.nothing_upstream(case);
    }
    // A length hyper cannot represent is refused by its parser (431, empty body).
    let r = raw(
        env.addr(),
        head(
            "POST",
            "/machines",
            &["content-length: 18446744073709551615"],
        )
        .as_bytes(),
    )
    .await;
    crate::harness::parser_refused("u64::MAX declared", &r, 431);
    env.nothing_upstream("u64::MAX declared");
    // A head that declares a body the client never sends still gets its refusal.
    let (r, took) = raw_n(
        env.addr(),
        head("POST", "/machines", &["content-length: 5000"]).as_bytes(),
        1,
    )
    .await;
    raw_refused("body never sent", &r[0], 401, "missing-token");
    assert!(took < Duration::from_secs(2));
    legit(&env, "after huge bodies").await;
    // Control: the same route takes a body under its limit.
    let req = format!(
        "{}{}{}",
        head("POST", "/limited", &[&auth, "content-length: 1000"]),
        "b".repeat(1000),
        marker()
    );
    let r = raw(env.addr(), req.as_bytes()).await;
    assert_eq!(r[0].status, 200, "{r:?}");
    let seen = env.up.requests();
    env.up.clear();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (seen[0].path_and_query.as_str(), seen[0].body_len),
        ("/limited", 1000)
    );
}
