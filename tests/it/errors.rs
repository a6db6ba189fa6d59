//! Every row of DESIGN.md's error table, each asserting the status, the `code`, the
//! `WWW-Authenticate`/`Allow` headers — and that the upstream saw nothing.

use std::time::Duration;

use serde_json::json;

use crate::support::token::now;
use crate::support::{mint, RecordingUpstream, TestGateway};

const STATE: &str = "/machines/m1/i/i1";

#[tokio::test]
async fn a_valid_token_reaches_the_upstream() {
    // The positive control: without it, a broken harness would pass every refusal below.
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let key = gw.key(&["state.read"]).await;
    let res = gw.get(STATE).bearer(&mint(&key).sign()).send().await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(up.count(), 1);
    assert_eq!(up.last().path_and_query, STATE);
}

#[tokio::test]
async fn missing_token_is_401_with_bearer_challenge() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let res = gw.get(STATE).send().await;
    res.assert_error(401, "missing-token");
    assert_eq!(res.header("www-authenticate"), Some("Bearer"));
    let res = gw
        .get(STATE)
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await;
    res.assert_error(401, "missing-token");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn invalid_tokens_are_401_invalid_token() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let key = gw.key(&["state.read"]).await;
    let good = mint(&key).sign();
    let unknown = crate::support::TestKey {
        id: "sbk_doesnotexist".into(),
        ..key.clone()
    };
    let mut tampered_payload: Vec<&str> = good.split('.').collect();
    let other = mint(&key).claim("act", json!({"sub": "admin"})).sign();
    let other_payload = other.split('.').nth(1).unwrap().to_owned();
    tampered_payload[1] = &other_payload;
    let cases: Vec<(&str, String)> = vec![
        (
            "bad signature",
            mint(&key).sign_with("sbsec_not-the-secret-but-long-enough-0000"),
        ),
        ("unknown kid", mint(&unknown).sign()),
        ("no kid", mint(&key).header("kid", json!(null)).sign()),
        (
            "wrong audience",
            mint(&key).claim("aud", json!("https://elsewhere/")).sign(),
        ),
        (
            "audience array without ours",
            mint(&key).claim("aud", json!(["a", "b"])).sign(),
        ),
        ("malformed", "not-a-jwt".into()),
        ("two segments", good.rsplit_once('.').unwrap().0.to_owned()),
        ("tampered payload", tampered_payload.join(".")),
        ("alg none", mint(&key).header("alg", json!("none")).sign()),
        (
            "alg mismatch",
            mint(&key).header("alg", json!("HS512")).sign(),
        ),
        ("missing exp", mint(&key).without("exp").sign()),
        (
            "exp as string",
            mint(&key).claim("exp", json!("tomorrow")).sign(),
        ),
        (
            "iat in the future",
            mint(&key).claim("iat", json!(now() + 3600)).sign(),
        ),
        (
            "embedded jwk",
            mint(&key)
                .header("jwk", json!({"kty": "oct", "k": "AAAA"}))
                .sign(),
        ),
        ("crit", mint(&key).header("crit", json!(["exp"])).sign()),
        ("padding", format!("{good}=")),
        (
            "oversized",
            format!("{}.{}.{}", "a".repeat(5000), "b".repeat(5000), "c"),
        ),
    ];
    for (name, token) in cases {
        let res = gw.get(STATE).bearer(&token).send().await;
        assert_eq!(res.status, 401, "{name}: {}", res.text());
        assert_eq!(res.code(), "invalid-token", "{name}");
        assert_eq!(
            res.header("www-authenticate"),
            Some("Bearer error=\"invalid_token\""),
            "{name}"
        );
        assert!(!res.text().contains(&token), "{name}: the token is echoed");
    }
    let two = gw.get(STATE).bearer(&good).bearer(&good).send().await;
    two.assert_error(401, "invalid-token");
    assert_eq!(up.count(), 0, "a refused request reached the upstream");
}

#[tokio::test]
async fn expired_and_not_yet_valid_tokens_are_401_expired_token() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let key = gw.key(&["state.read"]).await;
    let t = now();
    let expired = mint(&key)
        .claim("iat", json!(t - 7200))
        .claim("exp", json!(t - 3600))
        .sign();
    let res = gw.get(STATE).bearer(&expired).send().await;
    res.assert_error(401, "expired-token");
    assert_eq!(
        res.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
    let future = mint(&key).claim("nbf", json!(t + 3600)).sign();
    gw.get(STATE)
        .bearer(&future)
        .send()
        .await
        .assert_error(401, "expired-token");
    // Within the leeway (30 s by default) both pass.
    let just_expired = mint(&key).claim("exp", json!(t - 5)).sign();
    assert_eq!(gw.get(STATE).bearer(&just_expired).send().await.status, 200);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn missing_scope_is_403_with_insufficient_scope() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let key = gw.key(&["machines.read"]).await;
    let res = gw.get(STATE).bearer(&mint(&key).sign()).send().await;
    res.assert_error(403, "missing-scope");
    assert_eq!(
        res.header("www-authenticate"),
        Some("Bearer error=\"insufficient_scope\", scope=\"state.read\"")
    );
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn wrong_organization_is_403_missing_org() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let key = gw.key(&["org-members.write", "state.read"]).await;
    let token = mint(&key).sign();
    let res = gw
        .get("/orgs/org_someoneelse/members/x")
        .bearer(&token)
        .send()
        .await;
    res.assert_error(403, "missing-org");
    let res = gw
        .get(STATE)
        .bearer(&token)
        .header("x-statebacked-org-id", "org_someoneelse")
        .send()
        .await;
    res.assert_error(403, "missing-org");
    assert_eq!(up.count(), 0);
    // Controls: the key's own organization passes both ways.
    let own = format!("/orgs/{}/members/x", gw.org);
    assert_eq!(gw.get(&own).bearer(&token).send().await.status, 200);
    let res = gw
        .get(STATE)
        .bearer(&token)
        .header("x-statebacked-org-id", &gw.org)
        .send()
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn another_organizations_key_cannot_reach_this_one() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let other_org = gw.store.create_org("other").unwrap().id;
    let theirs = gw.key_in(&other_org, &["org-members.write"]).await;
    let res = gw
        .get(&format!("/orgs/{}/members/list", gw.org))
        .bearer(&mint(&theirs).sign())
        .send()
        .await;
    res.assert_error(403, "missing-org");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_is_405_with_allow() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let key = gw.key(&["state.read"]).await;
    let token = mint(&key).sign();
    gw.get("/nothing/here")
        .bearer(&token)
        .send()
        .await
        .assert_error(404, "not-found");
    gw.get("/nothing/here")
        .send()
        .await
        .assert_error(404, "not-found");
    let res = gw
        .request("DELETE", "/machines")
        .bearer(&token)
        .send()
        .await;
    res.assert_error(405, "method-not-allowed");
    assert_eq!(res.header("allow"), Some("GET, HEAD, POST"));
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn ambiguous_paths_are_400_bad_request() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let key = gw.key(&["state.read"]).await;
    let token = mint(&key).sign();
    for path in [
        "/machines/m1/i/i1/../../x",
        "/machines/m1/i/%2e%2e/i1",
        "/machines/m1%2fx/i/i1",
        "/machines/m1/i/i1%5c",
        "/machines//m1/i/i1",
        "/machines/m1;a=b/i/i1",
        "/machines/m1/i/%c0%af",
    ] {
        gw.get(path)
            .bearer(&token)
            .send()
            .await
            .assert_error(400, "bad-request");
    }
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    let up = RecordingUpstream::start().await;
    let dead = RecordingUpstream::dead_addr().await;
    let gw = TestGateway::builder()
        .routes(&format!(
            "[[routes]]\nmethods = [\"GET\"]\npath = \"/dead\"\nscopes = [\"state.read\"]\nupstream = \"dead\"\n\n[upstreams.dead]\nurl = \"http://{dead}\"\nconnect_timeout_ms = 500\n"
        ))
        .spawn(&up)
        .await;
    let key = gw.key(&["state.read"]).await;
    gw.get("/dead")
        .bearer(&mint(&key).sign())
        .send()
        .await
        .assert_error(502, "bad-gateway");
    assert!(gw.metrics().await.contains("decision=\"upstream-error\""));
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let up = RecordingUpstream::start().await;
    up.set_delay(Duration::from_secs(3));
    let gw = TestGateway::builder()
        .upstream_setting("response_timeout_ms = 300")
        .spawn(&up)
        .await;
    let key = gw.key(&["state.read"]).await;
    gw.get(STATE)
        .bearer(&mint(&key).sign())
        .send()
        .await
        .assert_error(504, "gateway-timeout");
}

#[tokio::test]
async fn refusals_are_counted_by_reason_without_token_data() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let key = gw.key(&["machines.read"]).await;
    let token = mint(&key).sign();
    gw.get(STATE)
        .bearer(&token)
        .send()
        .await
        .assert_error(403, "missing-scope");
    gw.get(STATE)
        .send()
        .await
        .assert_error(401, "missing-token");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("scopegate_auth_failures_total{reason=\"missing-scope\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("scopegate_auth_failures_total{reason=\"missing-token\"} 1"));
    assert!(metrics.contains("route=\"/machines/{machine}/i/{instance}\""));
    assert!(
        !metrics.contains("/machines/m1"),
        "raw paths must not be labels"
    );
    assert!(!metrics.contains(&key.id), "key ids must not be labels");
    assert!(!metrics.contains(&gw.org), "org ids must not be labels");
    assert!(!metrics.contains(&token[..20]));
}
