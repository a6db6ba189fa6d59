//! What the upstream sees: verified identity headers, no spoofed copies, no token, the path
//! the gateway matched.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::json;

use crate::support::token::now;
use crate::support::{mint, state_backed_token, RecordingUpstream, TestGateway};

const STATE: &str = "/machines/m1/i/i1";

#[tokio::test]
async fn a_state_backed_token_passes_with_identity_headers() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let key = gw.key(&["state.read", "events.write"]).await;
    let t = now();
    let token = state_backed_token(
        &key.id,
        &key.secret,
        r#"{"sub":"user-42","plan":"pro"}"#,
        t,
        t + 600,
    );
    let res = gw.get(STATE).bearer(&token).send().await;
    assert_eq!(res.status, 200, "{}", res.text());
    let seen = up.last();
    assert_eq!(seen.header("x-scopegate-org"), Some(gw.org.as_str()));
    assert_eq!(seen.header("x-scopegate-key"), Some(key.id.as_str()));
    assert_eq!(
        seen.header("x-scopegate-scopes"),
        Some("events.write state.read")
    );
    assert_eq!(seen.header("x-scopegate-sub"), Some("user-42"));
    let claims = URL_SAFE_NO_PAD
        .decode(seen.header("x-scopegate-claims").unwrap())
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
    assert_eq!(claims, json!({"sub": "user-42", "plan": "pro"}));
    assert_eq!(
        seen.header("authorization"),
        None,
        "the token must not be forwarded"
    );
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(gw.addr().to_string().as_str())
    );
}

#[tokio::test]
async fn spoofed_identity_headers_are_dropped_in_every_spelling() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let key = gw.key(&["state.read"]).await;
    let token = mint(&key).sign();
    let spoofs = [
        "x-scopegate-org",
        "X-Scopegate-Org",
        "X_SCOPEGATE_ORG",
        "x_scopegate-key",
        "x-scopegate_scopes",
        "x-scopegate-admin",
        "X-SCOPEGATE-SUB",
    ];
    let mut req = gw.get(STATE).bearer(&token);
    for name in spoofs {
        req = req.header(name, "org_evil");
    }
    assert_eq!(req.send().await.status, 200);
    let seen = up.last();
    for (name, value) in &seen.headers {
        let canon = name.as_str().replace('_', "-");
        if canon.starts_with("x-scopegate-") {
            assert_ne!(value, "org_evil", "spoofed {name} reached the upstream");
        }
    }
    assert_eq!(seen.header("x-scopegate-org"), Some(gw.org.as_str()));
    assert!(seen.headers.get("x-scopegate-admin").is_none());
    assert!(seen.headers.get("x_scopegate_org").is_none());

    // Public routes carry no identity, and spoofs are still dropped.
    let res = gw
        .get("/status")
        .header("x-scopegate-org", "org_evil")
        .header("X_Scopegate_Key", "k")
        .send()
        .await;
    assert_eq!(res.status, 200);
    let seen = up.last();
    assert!(
        seen.headers
            .keys()
            .all(|n| !n.as_str().replace('_', "-").starts_with("x-scopegate-")),
        "{:?}",
        seen.headers
    );
}

#[tokio::test]
async fn connection_listed_and_hop_by_hop_headers_are_removed() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let key = gw.key(&["state.read"]).await;
    let res = gw
        .get(STATE)
        .bearer(&mint(&key).sign())
        .header("connection", "keep-alive, x-private-hop, x-scopegate-org")
        .header("x-private-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic abc")
        .header("te", "trailers")
        .header("x-end-to-end", "kept")
        .send()
        .await;
    assert_eq!(res.status, 200);
    let seen = up.last();
    assert_eq!(seen.header("x-private-hop"), None);
    assert_eq!(seen.header("keep-alive"), None);
    assert_eq!(seen.header("proxy-authorization"), None);
    assert_eq!(seen.header("te"), None);
    assert_eq!(seen.header("x-end-to-end"), Some("kept"));
    // Naming an identity header in Connection must not strip the verified one.
    assert_eq!(seen.header("x-scopegate-org"), Some(gw.org.as_str()));
}

#[tokio::test]
async fn token_scope_claim_narrows_the_key() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let key = gw
        .key(&["state.read", "events.write", "machines.read"])
        .await;
    // As a string: only events.write survives, so the state route is refused.
    let narrow = mint(&key).claim("scope", json!("events.write")).sign();
    gw.get("/machines/m1/i/i1")
        .bearer(&narrow)
        .send()
        .await
        .assert_error(403, "missing-scope");
    let res = gw
        .request("POST", "/machines/m1/i/i1/events")
        .bearer(&narrow)
        .body("{}")
        .send()
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(up.last().header("x-scopegate-scopes"), Some("events.write"));
    // As an array; a claimed scope the key lacks grants nothing.
    let grab = mint(&key)
        .claim("scope", json!(["state.read", "org-keys.write"]))
        .sign();
    assert_eq!(
        gw.get("/machines/m1/i/i1")
            .bearer(&grab)
            .send()
            .await
            .status,
        200
    );
    assert_eq!(up.last().header("x-scopegate-scopes"), Some("state.read"));
    gw.get("/org-admin")
        .bearer(&grab)
        .send()
        .await
        .assert_error(403, "missing-scope");
}

#[tokio::test]
async fn org_keys_write_alias_is_the_same_scope() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let key = gw.key(&["org.keys.write"]).await;
    let res = gw.get("/org-admin").bearer(&mint(&key).sign()).send().await;
    assert_eq!(res.status, 200, "{}", res.text());
    let narrowed = mint(&key).claim("scope", json!("org.keys.write")).sign();
    assert_eq!(
        gw.get("/org-admin").bearer(&narrowed).send().await.status,
        200
    );
}

#[tokio::test]
async fn impersonation_needs_org_keys_write() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let plain = gw.key(&["state.read"]).await;
    let admin = gw.key(&["state.read", "org-keys.write"]).await;
    let act = r#"{"sub":"end-user-7","role":"viewer"}"#;
    let res = gw
        .get(STATE)
        .bearer(&mint(&plain).sign())
        .header("x-statebacked-act", act)
        .send()
        .await;
    res.assert_error(403, "missing-scope");
    assert_eq!(up.count(), 0);
    let res = gw
        .get(STATE)
        .bearer(&mint(&admin).sign())
        .header("x-statebacked-act", act)
        .send()
        .await;
    assert_eq!(res.status, 200);
    let seen = up.last();
    assert_eq!(seen.header("x-scopegate-sub"), Some("end-user-7"));
    let claims = URL_SAFE_NO_PAD
        .decode(seen.header("x-scopegate-claims").unwrap())
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&claims).unwrap(),
        json!({"sub": "end-user-7", "role": "viewer"})
    );
    assert_eq!(seen.header("x-statebacked-act"), None);
    let res = gw
        .get(STATE)
        .bearer(&mint(&admin).sign())
        .header("x-statebacked-act", "[1]")
        .send()
        .await;
    res.assert_error(400, "bad-request");
}

#[tokio::test]
async fn query_token_is_taken_out_of_the_forwarded_url() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let key = gw.key(&["state.read"]).await;
    let token = mint(&key).sign();
    let res = gw
        .get(&format!("/rt?machine=m1&token={token}&x=1"))
        .send()
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(up.last().path_and_query, "/rt?machine=m1&x=1");
    // Only on routes that allow it.
    gw.get(&format!("/machines/m1/i/i1?token={token}"))
        .send()
        .await
        .assert_error(401, "missing-token");
    // Header and query at once, or the parameter twice, is ambiguous.
    gw.get(&format!("/rt?token={token}"))
        .bearer(&token)
        .send()
        .await
        .assert_error(401, "invalid-token");
    gw.get(&format!("/rt?token={token}&token={token}"))
        .send()
        .await
        .assert_error(401, "invalid-token");
}

#[tokio::test]
async fn the_matched_path_is_the_forwarded_path() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let key = gw.key(&["state.read"]).await;
    let res = gw
        .get("/m%61chines/m1/i/i%31?q=%2F")
        .bearer(&mint(&key).sign())
        .send()
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(up.last().path_and_query, "/machines/m1/i/i1?q=%2F");
}

#[tokio::test]
async fn forward_token_keeps_authorization_when_asked() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder()
        .routes("[[routes]]\nmethods = [\"GET\"]\npath = \"/t\"\nscopes = [\"state.read\"]\nupstream = \"main\"\nforward_token = true\n")
        .spawn(&up)
        .await;
    let key = gw.key(&["state.read"]).await;
    let token = mint(&key).sign();
    assert_eq!(gw.get("/t").bearer(&token).send().await.status, 200);
    assert_eq!(
        up.last().header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
}
