//! Token transport: where a bearer token may come from (RFC 6750 §2), in what spelling, how
//! many at once — and that it never travels on to the upstream.

use crate::harness::{h2, head, marker, raw, raw_refused, Env, STATE};
use crate::support::mint;
use crate::support::upstream::Recorded;

/// Nothing the upstream saw — no header value, not the URL — contains the token.
fn no_token_upstream(case: &str, r: &Recorded, token: &str) {
    let signature = token.rsplit('.').next().unwrap();
    assert!(
        !r.path_and_query.contains(signature),
        "{case}: the token reached the upstream in {}",
        r.path_and_query
    );
    for (name, value) in &r.headers {
        assert!(
            !String::from_utf8_lossy(value.as_bytes()).contains(signature),
            "{case}: the token reached the upstream in {name}"
        );
    }
}

#[tokio::test]
async fn authorization_scheme_variants() {
    let env = Env::start().await;
    let t = env.good();
    let allowed = [
        format!("Bearer {t}"),
        format!("bearer {t}"),
        format!("BEARER {t}"),
        format!("bEaReR {t}"),
        // RFC 6750 §2.1: `"Bearer" 1*SP b64token`.
        format!("Bearer  {t}"),
        format!("Bearer {t} "),
        format!(" Bearer {t}"),
    ];
    for value in &allowed {
        let res = env
            .gw
            .get(STATE)
            .header("authorization", value)
            .send()
            .await;
        let seen = env.forwarded(value, &res, "GET", STATE, &env.reader);
        no_token_upstream(value, &seen, &t);
    }
    // Not the Bearer scheme, or no credential: as if no token came at all.
    let missing = [
        "Bearer".to_owned(),
        "Bearer ".to_owned(),
        // A tab is not the SP the scheme needs.
        format!("Bearer\t{t}"),
        format!("Bearer:{t}"),
        format!("Bearer={t}"),
        format!("Bearer{t}"),
        "Basic dXNlcjpwYXNz".to_owned(),
        format!("Basic {t}"),
        format!("Token {t}"),
        format!("JWT {t}"),
        format!("Digest username=\"{t}\""),
        format!("Negotiate {t}"),
        format!("MAC {t}"),
        t.clone(),
        String::new(),
    ];
    for value in &missing {
        let res = env
            .gw
            .get(STATE)
            .header("authorization", value)
            .send()
            .await;
        env.refused(value, &res, 401, "missing-token");
    }
    let invalid = [
        format!("Bearer {t} {t}"),
        format!("Bearer {t},"),
        format!("Bearer \"{t}\""),
        format!("Bearer {t}, Bearer {t}"),
        format!("Bearer Bearer {t}"),
        format!("Bearer {t};"),
        format!("Bearer {t} x"),
    ];
    for value in &invalid {
        let res = env
            .gw
            .get(STATE)
            .header("authorization", value)
            .send()
            .await;
        env.refused(value, &res, 401, "invalid-token");
    }
    // Bytes outside visible ASCII in the header (obs-text), over a raw socket.
    let mut req = head("GET", STATE, &["connection: close"]).into_bytes();
    let at = req.len() - 2;
    let line = [
        b"authorization: Bearer ".as_slice(),
        t.as_bytes(),
        b"\xff\r\n",
    ]
    .concat();
    req.splice(at..at, line);
    let r = raw(env.addr(), &req).await;
    raw_refused("obs-text in the token", &r[0], 401, "invalid-token");
    env.nothing_upstream("obs-text in the token");
    assert_eq!(allowed.len() + missing.len() + invalid.len() + 1, 30);
}

#[tokio::test]
async fn more_than_one_credential_is_refused() {
    let env = Env::start().await;
    let t = env.good();
    let bad = mint(&env.reader).sign_with("wrong-secret-wrong-secret-wrong-secret");
    let sets: Vec<(&str, Vec<String>)> = vec![
        (
            "the same token twice",
            vec![format!("Bearer {t}"), format!("Bearer {t}")],
        ),
        (
            "good, then forged",
            vec![format!("Bearer {t}"), format!("Bearer {bad}")],
        ),
        (
            "forged, then good",
            vec![format!("Bearer {bad}"), format!("Bearer {t}")],
        ),
        (
            "Basic, then Bearer",
            vec!["Basic dXNlcjpwYXNz".into(), format!("Bearer {t}")],
        ),
        (
            "Bearer, then empty",
            vec![format!("Bearer {t}"), String::new()],
        ),
        (
            "two other keys' tokens",
            vec![
                format!("Bearer {t}"),
                format!("Bearer {}", mint(&env.admin).sign()),
            ],
        ),
    ];
    for (name, values) in &sets {
        let mut req = env.gw.get(STATE);
        for v in values {
            req = req.header("authorization", v);
        }
        env.refused(name, &req.send().await, 401, "invalid-token");
    }
    // Over HTTP/2 as well (h2c prior knowledge).
    let auth = format!("Bearer {t}");
    let (status, code) = h2(
        env.addr(),
        "GET",
        STATE,
        &[("authorization", &auth), ("authorization", &auth)],
    )
    .await;
    assert_eq!(
        (status, code.as_deref()),
        (401, Some("invalid-token")),
        "two credentials over h2"
    );
    env.nothing_upstream("two credentials over h2");
    let (status, _) = h2(env.addr(), "GET", STATE, &[("authorization", &auth)]).await;
    assert_eq!(status, 200, "control: one credential over h2");
    env.one_upstream(
        "control: one credential over h2",
        "GET",
        STATE,
        Some(&env.reader),
    );
    // Control: one of them alone passes.
    let res = env.gw.get(STATE).bearer(&t).send().await;
    env.forwarded("control: one credential", &res, "GET", STATE, &env.reader);
}

#[tokio::test]
async fn query_tokens_only_where_the_route_allows_them() {
    let env = Env::start().await;
    let t = env.good();
    let bad = mint(&env.reader).sign_with("wrong-secret-wrong-secret-wrong-secret");
    // `/rt` takes `?token=`; the parameter is cut from the forwarded URL.
    let allowed = [
        (format!("/rt?token={t}"), "/rt"),
        (format!("/rt?a=1&token={t}&b=2"), "/rt?a=1&b=2"),
        (format!("/rt?%74oken={t}"), "/rt"),
        (format!("/rt?token={t}&"), "/rt"),
        (format!("/rt?x=token&token={t}"), "/rt?x=token"),
    ];
    for (path, upstream) in &allowed {
        let res = env.gw.get(path).send().await;
        let seen = env.forwarded(path, &res, "GET", upstream, &env.reader);
        no_token_upstream(path, &seen, &t);
    }
    // A Basic header is no bearer token: the query token is the one credential.
    let res = env
        .gw
        .get(&format!("/rt?token={t}"))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await;
    let seen = env.forwarded(
        "Basic header with a query token",
        &res,
        "GET",
        "/rt",
        &env.reader,
    );
    no_token_upstream("Basic header with a query token", &seen, &t);
    let refused: Vec<(String, Option<String>, &str)> = vec![
        (format!("/rt?token={t}"), Some(t.clone()), "invalid-token"),
        (format!("/rt?token={bad}"), Some(t.clone()), "invalid-token"),
        (format!("/rt?token={t}&token={t}"), None, "invalid-token"),
        (format!("/rt?token={t}&%74oken={t}"), None, "invalid-token"),
        (format!("/rt?token={t}&token"), None, "invalid-token"),
        (format!("/rt?token=&token={t}"), None, "invalid-token"),
        (format!("/rt?token={bad}"), None, "invalid-token"),
        (format!("/rt?token={t}+"), None, "invalid-token"),
        (format!("/rt?token={t}%00"), None, "invalid-token"),
        (format!("/rt?token=%ff{t}"), None, "invalid-token"),
        ("/rt?token=".to_owned(), None, "missing-token"),
        ("/rt".to_owned(), None, "missing-token"),
        (format!("/rt?Token={t}"), None, "missing-token"),
        (format!("/rt?access_token={t}"), None, "missing-token"),
        (format!("/rt?a=1;token={t}"), None, "missing-token"),
        // Routes without token_query_param never read the query.
        (format!("{STATE}?token={t}"), None, "missing-token"),
        (format!("{STATE}?access_token={t}"), None, "missing-token"),
        (format!("/machines?token={t}"), None, "missing-token"),
        (
            format!("/org-admin?token={}", mint(&env.admin).sign()),
            None,
            "missing-token",
        ),
    ];
    for (path, header, code) in &refused {
        let mut req = env.gw.get(path);
        if let Some(h) = header {
            req = req.bearer(h);
        }
        env.refused(path, &req.send().await, 401, code);
    }
    assert_eq!(allowed.len() + 1 + refused.len(), 25);
}

#[tokio::test]
async fn credentials_never_reach_the_upstream() {
    let env = Env::start().await;
    let t = env.good();
    // (name, path, headers, Some(authenticated) if forwarded / None if refused)
    type Leak<'a> = (&'a str, &'a str, Vec<(&'a str, String)>, Option<bool>);
    let cases: Vec<Leak> = vec![
        (
            "Authorization on a protected route",
            STATE,
            vec![("authorization", format!("Bearer {t}"))],
            Some(true),
        ),
        (
            "Authorization on a public route",
            "/status",
            vec![("authorization", format!("Bearer {t}"))],
            Some(false),
        ),
        (
            "Proxy-Authorization alongside",
            STATE,
            vec![
                ("authorization", format!("Bearer {t}")),
                ("proxy-authorization", format!("Bearer {t}")),
            ],
            Some(true),
        ),
        (
            "Authorization named in Connection",
            STATE,
            vec![
                ("authorization", format!("Bearer {t}")),
                ("connection", "authorization".into()),
            ],
            Some(true),
        ),
        (
            "Proxy-Authorization alone",
            STATE,
            vec![("proxy-authorization", format!("Bearer {t}"))],
            None,
        ),
        (
            "token in a cookie",
            STATE,
            vec![("cookie", format!("token={t}"))],
            None,
        ),
        (
            "token in X-Access-Token",
            STATE,
            vec![("x-access-token", t.clone())],
            None,
        ),
        (
            "token in X-Auth-Token",
            STATE,
            vec![("x-auth-token", t.clone())],
            None,
        ),
    ];
    for (name, path, headers, forwarded) in &cases {
        let mut req = env.gw.get(path);
        for (n, v) in headers {
            req = req.header(n, v);
        }
        let res = req.send().await;
        match forwarded {
            Some(authenticated) => {
                assert_eq!(res.status, 200, "{name}");
                let key = authenticated.then_some(&env.reader);
                let seen = env.one_upstream(name, "GET", path, key);
                no_token_upstream(name, &seen, &t);
            }
            None => env.refused(name, &res, 401, "missing-token"),
        }
    }
    // A raw request whose Authorization line is spelled oddly still never travels on.
    let auth = format!("AUTHORIZATION: Bearer {t}");
    let req = [head("GET", STATE, &[&auth]), marker()].concat();
    let r = raw(env.addr(), req.as_bytes()).await;
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[0].status, 200);
    let seen = env.up.requests();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        no_token_upstream("upper-case header name", s, &t);
    }
    env.up.clear();
}
