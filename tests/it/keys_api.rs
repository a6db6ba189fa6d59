//! The keys API (`POST /keys`, `GET /keys`, `DELETE /keys/{id}`) as State Backed's client calls
//! it: every status and code, each request checked to have reached NOTHING upstream — the
//! gateway answers these itself. Changes take effect before the API answers, so nothing here
//! waits for a reload.

use std::collections::{BTreeSet, HashMap};

use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

use crate::support::client::Res;
use crate::support::{metric, mint, RecordingUpstream, Req, TestGateway, TestKey};

/// Matching routes of [`crate::support::DEFAULT_ROUTES`], one per use.
const STATE: &str = "/machines/m1/i/i1"; // state.read (production)
const MACHINES: &str = "/machines"; // machines.read (ci)
const ORG_ADMIN: &str = "/org-admin"; // org-keys.write (admin)

const PRODUCTION: &[&str] = &[
    "events.write",
    "state.read",
    "instances.write",
    "indexes.read",
];
const CI: &[&str] = &[
    "machines.read",
    "machines.write",
    "machine-versions.read",
    "machine-versions.write",
];
const ADMIN: &[&str] = &["org.write", "org-keys.write", "org-members.write"];

/// A key that may grant every scope of every use.
fn everything() -> Vec<&'static str> {
    [PRODUCTION, CI, ADMIN].concat()
}

/// Sends a request and asserts the upstream saw nothing of it.
async fn api(up: &RecordingUpstream, req: Req) -> Res {
    let before = up.requests();
    let res = req.send().await;
    let after = up.requests();
    assert_eq!(
        after.len(),
        before.len(),
        "a keys API request reached the upstream: {:?}",
        after.last().map(|r| (&r.method, &r.path_and_query))
    );
    res
}

/// Nothing at all reached the upstream, or only the given probe paths.
fn assert_upstream_saw_only(up: &RecordingUpstream, probes: &[&str]) {
    let seen: Vec<String> = up
        .requests()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect();
    assert!(
        seen.iter().all(|p| probes.contains(&p.as_str())),
        "the upstream saw more than the probes {probes:?}: {seen:?}"
    );
}

fn post_keys(gw: &TestGateway, token: &str, body: impl Into<bytes::Bytes>) -> Req {
    gw.request("POST", "/keys")
        .bearer(token)
        .header("content-type", "application/json")
        .body(body)
}

/// `POST /keys` that must succeed: the new key, from the `{"id", "key"}` answer.
async fn create(up: &RecordingUpstream, gw: &TestGateway, token: &str, body: Value) -> TestKey {
    let res = api(up, post_keys(gw, token, body.to_string())).await;
    assert_eq!(res.status, 200, "POST /keys {body}: {}", res.text());
    let json = res.json();
    let fields: BTreeSet<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(fields, BTreeSet::from(["id", "key"]), "{json}");
    let id = json["id"].as_str().unwrap().to_owned();
    let secret = json["key"].as_str().unwrap().to_owned();
    assert!(id.starts_with("sbk_"), "{id}");
    assert!(live(gw, &id), "{id} is not live when the API answers");
    assert!(
        secret.starts_with("sbsec_") && secret.len() >= 6 + 43,
        "{secret}"
    );
    TestKey {
        id,
        secret,
        org: gw.org.clone(),
        algorithm: Algorithm::HS256,
    }
}

/// Every page of `GET /keys`, following `cursor` (at most `max_pages`).
async fn list_all(
    up: &RecordingUpstream,
    gw: &TestGateway,
    token: &str,
    max_pages: usize,
) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..max_pages {
        let path = match &cursor {
            None => "/keys".to_owned(),
            Some(c) => format!("/keys?cursor={c}"),
        };
        let res = api(up, gw.get(&path).bearer(token)).await;
        assert_eq!(res.status, 200, "GET {path}: {}", res.text());
        let json = res.json();
        pages.push(json["keys"].as_array().expect("a keys array").clone());
        match json.get("cursor") {
            None => return pages,
            Some(c) => cursor = Some(c.as_str().expect("a string cursor").to_owned()),
        }
    }
    panic!("GET /keys still had a cursor after {max_pages} pages");
}

fn ids(keys: &[Value]) -> Vec<String> {
    keys.iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect()
}

fn scopes_of(key: &Value) -> BTreeSet<String> {
    key["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

fn set(scopes: &[&str]) -> BTreeSet<String> {
    scopes.iter().map(|s| s.to_string()).collect()
}

/// Whether the gateway's live key set holds `id` right now (no request, no round trip).
fn live(gw: &TestGateway, id: &str) -> bool {
    gw.running
        .as_ref()
        .unwrap()
        .gateway
        .keys
        .load()
        .get(id)
        .is_some()
}

async fn status(gw: &TestGateway, path: &str, key: &TestKey) -> u16 {
    gw.get(path)
        .bearer(&mint(key).sign())
        .send()
        .await
        .status
        .as_u16()
}

// ---- POST /keys ------------------------------------------------------------------------------

#[tokio::test]
async fn create_by_use_or_scopes_answers_id_and_secret_and_the_key_works_at_once() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let admin = gw.key(&everything()).await;
    let token = mint(&admin).sign();
    let cases: &[(Value, &[&str], &str)] = &[
        (
            json!({"name": "prod", "use": "production"}),
            PRODUCTION,
            STATE,
        ),
        (json!({"name": "ci", "use": "ci"}), CI, MACHINES),
        (json!({"name": "admin", "use": "admin"}), ADMIN, ORG_ADMIN),
        (
            json!({"name": "explicit", "scopes": ["machines.read"]}),
            &["machines.read"],
            MACHINES,
        ),
        // State Backed's API spelling of the alias, granted and then listed canonically.
        (
            json!({"name": "alias", "scopes": ["org.keys.write"]}),
            &["org-keys.write"],
            ORG_ADMIN,
        ),
    ];
    let mut probes = Vec::new();
    for (body, scopes, route) in cases {
        let key = create(&up, &gw, &token, body.clone()).await;
        // No waiting: the API rescans the folder before it answers.
        let before = up.count();
        assert_eq!(status(&gw, route, &key).await, 200, "{body} on {route}");
        assert_eq!(up.count(), before + 1, "the probe {route} is forwarded");
        probes.push(*route);
        // The key holds exactly what was asked: a route of another use is refused.
        let other = if *route == STATE { MACHINES } else { STATE };
        let res = gw.get(other).bearer(&mint(&key).sign()).send().await;
        res.assert_error(403, "missing-scope");
        let listed = list_all(&up, &gw, &token, 10).await.concat();
        let entry = listed
            .iter()
            .find(|k| k["id"] == key.id.as_str())
            .unwrap_or_else(|| panic!("{} not listed", key.id));
        assert_eq!(scopes_of(entry), set(scopes), "{body}");
        assert_eq!(entry["name"], body["name"]);
    }
    assert_upstream_saw_only(&up, &probes);
}

#[tokio::test]
async fn neither_use_nor_scopes_makes_a_production_key() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let admin = gw.key(&everything()).await;
    let token = mint(&admin).sign();
    let key = create(&up, &gw, &token, json!({"name": "default"})).await;
    let listed = list_all(&up, &gw, &token, 10).await.concat();
    let entry = listed.iter().find(|k| k["id"] == key.id.as_str()).unwrap();
    assert_eq!(scopes_of(entry), set(PRODUCTION));
    assert_eq!(status(&gw, STATE, &key).await, 200);
    assert_eq!(status(&gw, MACHINES, &key).await, 403);
    assert_upstream_saw_only(&up, &[STATE]);
}

/// `POST /keys` with `body` is a 400 `bad-request` whose message contains `says`; no key is
/// created.
async fn refused(up: &RecordingUpstream, gw: &TestGateway, token: &str, body: &str, says: &str) {
    let before = gw.store.list_keys(Some(&gw.org)).unwrap().len();
    let res = api(up, post_keys(gw, token, body.to_owned())).await;
    res.assert_error(400, "bad-request");
    let message = res.json()["error"].as_str().unwrap().to_owned();
    assert!(
        message.contains(says),
        "the message for {:.80} should say {says:?}: {message}",
        body
    );
    assert_eq!(
        gw.store.list_keys(Some(&gw.org)).unwrap().len(),
        before,
        "a refused request created a key"
    );
}

#[tokio::test]
async fn use_and_scopes_together_unknown_uses_and_unknown_scopes_are_400() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let admin = gw.key(&everything()).await;
    let token = mint(&admin).sign();
    let both = json!({"name": "k", "use": "ci", "scopes": ["machines.read"]}).to_string();
    refused(&up, &gw, &token, &both, "either use or scopes").await;
    let unknown_use = json!({"name": "k", "use": "superuser"}).to_string();
    refused(&up, &gw, &token, &unknown_use, "production, ci, admin").await;
    let unknown_scope = json!({"name": "k", "scopes": ["state.read", "nope.read"]}).to_string();
    refused(
        &up,
        &gw,
        &token,
        &unknown_scope,
        "unknown scope 'nope.read'",
    )
    .await;
    let no_scopes = json!({"name": "k", "scopes": []}).to_string();
    refused(&up, &gw, &token, &no_scopes, "at least one scope").await;
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn empty_blank_missing_and_over_long_names_are_400() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let admin = gw.key(&everything()).await;
    let token = mint(&admin).sign();
    for (name, says) in [
        (json!(""), "must not be empty"),
        (json!("   \t "), "must not be empty"),
        (json!("é".repeat(129)), "at most 128 characters"),
        (json!("a\u{7}b"), "control characters"),
    ] {
        let body = json!({"name": name, "use": "production"}).to_string();
        refused(&up, &gw, &token, &body, says).await;
    }
    refused(
        &up,
        &gw,
        &token,
        r#"{"use": "production"}"#,
        "name is required",
    )
    .await;
    // The boundary: 128 characters (not bytes) is accepted.
    let key = create(&up, &gw, &token, json!({"name": "é".repeat(128)})).await;
    assert_eq!(status(&gw, STATE, &key).await, 200);
    assert_upstream_saw_only(&up, &[STATE]);
}

#[tokio::test]
async fn a_body_that_is_not_a_json_object_is_400() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let admin = gw.key(&everything()).await;
    let token = mint(&admin).sign();
    for body in [
        "name=x",
        "",
        "{\"name\": ",
        "[\"name\"]",
        "\"x\"",
        "{\"name\": 5}",
    ] {
        refused(&up, &gw, &token, body, "must be a JSON object").await;
    }
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn a_body_over_64_kib_is_413_and_64_kib_exactly_is_fine() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let admin = gw.key(&everything()).await;
    let token = mint(&admin).sign();
    // A valid object padded with JSON whitespace to exactly the limit.
    let padded = |len: usize| {
        let mut body = String::from("{\"name\": \"padded\"");
        body.push_str(&" ".repeat(len - body.len() - 1));
        body.push('}');
        assert_eq!(body.len(), len);
        body
    };
    let before = gw.store.list_keys(Some(&gw.org)).unwrap().len();
    for len in [64 * 1024 + 1, 1024 * 1024] {
        let res = api(&up, post_keys(&gw, &token, padded(len))).await;
        res.assert_error(413, "payload-too-large");
    }
    assert_eq!(gw.store.list_keys(Some(&gw.org)).unwrap().len(), before);
    let res = api(&up, post_keys(&gw, &token, padded(64 * 1024))).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn a_key_cannot_grant_a_scope_it_does_not_hold() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let creator = gw.key(&["org-keys.write", "state.read"]).await;
    let token = mint(&creator).sign();
    let before = gw.store.list_keys(Some(&gw.org)).unwrap().len();
    for body in [
        json!({"name": "k", "scopes": ["machines.write"]}),
        json!({"name": "k", "scopes": ["state.read", "machines.write"]}),
        json!({"name": "k", "use": "ci"}),
        // Production needs events.write and more; the creator holds only state.read of it.
        json!({"name": "k"}),
    ] {
        let res = api(&up, post_keys(&gw, &token, body.to_string())).await;
        res.assert_error(403, "missing-scope");
    }
    assert_eq!(gw.store.list_keys(Some(&gw.org)).unwrap().len(), before);
    // The positive control: a subset of its own scopes is granted.
    let key = create(
        &up,
        &gw,
        &token,
        json!({"name": "k", "scopes": ["state.read"]}),
    )
    .await;
    assert_eq!(status(&gw, STATE, &key).await, 200);
    assert_upstream_saw_only(&up, &[STATE]);
}

#[tokio::test]
async fn a_token_narrowed_by_its_scope_claim_cannot_grant_what_it_narrowed_away() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let creator = gw.key(&["org-keys.write", "machines.write"]).await;
    let body = json!({"name": "k", "scopes": ["machines.write"]}).to_string();
    for narrowed in [json!("org-keys.write"), json!(["org.keys.write"])] {
        let token = mint(&creator).claim("scope", narrowed.clone()).sign();
        let res = api(&up, post_keys(&gw, &token, body.clone())).await;
        res.assert_error(403, "missing-scope");
    }
    // The same key with a token that keeps machines.write may grant it.
    let kept = mint(&creator)
        .claim("scope", json!("org-keys.write machines.write"))
        .sign();
    create(&up, &gw, &kept, serde_json::from_str(&body).unwrap()).await;
    assert_eq!(up.count(), 0);
}

// ---- who may call the API ----------------------------------------------------------------------

#[tokio::test]
async fn no_token_is_401_on_every_endpoint() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let victim = gw.key(&["state.read"]).await;
    for req in [
        gw.request("POST", "/keys").body(r#"{"name": "k"}"#),
        gw.get("/keys"),
        gw.request("DELETE", &format!("/keys/{}", victim.id)),
    ] {
        let res = api(&up, req).await;
        res.assert_error(401, "missing-token");
        assert_eq!(res.header("www-authenticate"), Some("Bearer"));
    }
    let forged = mint(&victim).sign_with("sbsec_not-the-secret-but-long-enough-0000");
    let res = api(&up, gw.get("/keys").bearer(&forged)).await;
    res.assert_error(401, "invalid-token");
    assert_eq!(
        status(&gw, STATE, &victim).await,
        200,
        "nothing was deleted"
    );
    assert_upstream_saw_only(&up, &[STATE]);
}

#[tokio::test]
async fn a_key_without_org_keys_write_is_403_and_the_alias_spelling_is_enough() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let plain = gw
        .key(
            &everything()
                .into_iter()
                .filter(|s| *s != "org-keys.write")
                .collect::<Vec<_>>(),
        )
        .await;
    let token = mint(&plain).sign();
    for req in [
        post_keys(&gw, &token, r#"{"name": "k", "scopes": ["state.read"]}"#),
        gw.get("/keys").bearer(&token),
        gw.request("DELETE", &format!("/keys/{}", plain.id))
            .bearer(&token),
    ] {
        let res = api(&up, req).await;
        res.assert_error(403, "missing-scope");
        let challenge = res.header("www-authenticate").unwrap_or_default();
        assert!(challenge.contains("org-keys.write"), "{challenge}");
    }
    assert_eq!(
        status(&gw, STATE, &plain).await,
        200,
        "it did not delete itself"
    );
    // A key stored with State Backed's spelling, `org.keys.write`, may use the API.
    let aliased = gw.key(&["org.keys.write", "state.read"]).await;
    let token = mint(&aliased).sign();
    let created = create(
        &up,
        &gw,
        &token,
        json!({"name": "k", "scopes": ["state.read"]}),
    )
    .await;
    let listed = list_all(&up, &gw, &token, 10).await.concat();
    assert!(ids(&listed).contains(&created.id));
    let res = api(
        &up,
        gw.request("DELETE", &format!("/keys/{}", created.id))
            .bearer(&token),
    )
    .await;
    assert_eq!(res.status, 204, "{}", res.text());
    assert_upstream_saw_only(&up, &[STATE]);
}

#[tokio::test]
async fn an_org_header_of_another_org_is_403_missing_org() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let other = gw.store.create_org("other").unwrap().id;
    let admin = gw.key(&everything()).await;
    let token = mint(&admin).sign();
    let victim = gw.key(&["state.read"]).await;
    for req in [
        post_keys(&gw, &token, r#"{"name": "k"}"#),
        gw.get("/keys").bearer(&token),
        gw.request("DELETE", &format!("/keys/{}", victim.id))
            .bearer(&token),
    ] {
        let res = api(&up, req.header("x-statebacked-org-id", &other)).await;
        res.assert_error(403, "missing-org");
    }
    assert_eq!(status(&gw, STATE, &victim).await, 200);
    // Its own organization in the header is fine.
    let res = api(
        &up,
        gw.get("/keys")
            .bearer(&token)
            .header("x-statebacked-org-id", &gw.org),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_upstream_saw_only(&up, &[STATE]);
}

// ---- GET /keys -------------------------------------------------------------------------------

#[tokio::test]
async fn list_shows_only_the_callers_org_and_never_a_secret() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let other = gw.store.create_org("other").unwrap().id;
    let admin = gw.key(&everything()).await;
    let token = mint(&admin).sign();
    let mine = [
        admin.clone(),
        gw.key(&["state.read"]).await,
        create(&up, &gw, &token, json!({"name": "api key", "use": "ci"})).await,
    ];
    let theirs = [
        gw.key_in(&other, &["org-keys.write"]).await,
        gw.key_in(&other, &["state.read"]).await,
    ];
    let res = api(&up, gw.get("/keys").bearer(&token)).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.header("content-type"), Some("application/json"));
    let body = res.text();
    for k in mine.iter().chain(&theirs) {
        assert!(
            !body.contains(&k.secret),
            "a secret is in the listing: {body}"
        );
    }
    assert!(!body.contains("sbsec_"), "{body}");
    assert!(!body.contains("secret"), "{body}");
    let json = res.json();
    assert!(json.get("cursor").is_none(), "one page only: {json}");
    let listed = json["keys"].as_array().unwrap();
    let got: BTreeSet<String> = ids(listed).into_iter().collect();
    let want: BTreeSet<String> = mine.iter().map(|k| k.id.clone()).collect();
    assert_eq!(got, want, "{body}");
    let stored: HashMap<String, _> = gw
        .store
        .list_keys(Some(&gw.org))
        .unwrap()
        .into_iter()
        .map(|k| (k.id.clone(), k))
        .collect();
    for entry in listed {
        let fields: BTreeSet<&str> = entry
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(
            fields,
            BTreeSet::from(["id", "name", "scopes", "created_at"]),
            "{entry}"
        );
        let s = &stored[entry["id"].as_str().unwrap()];
        assert_eq!(entry["name"], s.name.as_str());
        assert_eq!(entry["created_at"], s.created_at.as_str());
        assert_eq!(scopes_of(entry), s.scopes.iter().cloned().collect());
        assert!(
            humantime::parse_rfc3339(&s.created_at).is_ok(),
            "{}",
            s.created_at
        );
    }
    // The other organization sees its own keys only.
    let res = api(&up, gw.get("/keys").bearer(&mint(&theirs[0]).sign())).await;
    let got: BTreeSet<String> = ids(res.json()["keys"].as_array().unwrap())
        .into_iter()
        .collect();
    let want: BTreeSet<String> = theirs.iter().map(|k| k.id.clone()).collect();
    assert_eq!(got, want);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn pages_follow_the_cursor_and_hold_every_key_exactly_once() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder()
        .extra("[keys_api]\npage_size = 2\n")
        .spawn(&up)
        .await;
    let admin = gw.key(&everything()).await;
    let token = mint(&admin).sign();
    let mut want = vec![admin.id.clone()];
    for i in 0..5 {
        // Created within the same second: the order must not rest on created_at alone.
        want.push(
            create(&up, &gw, &token, json!({"name": format!("k{i}")}))
                .await
                .id,
        );
    }
    let pages = list_all(&up, &gw, &token, 10).await;
    assert_eq!(pages.len(), 3, "6 keys at 2 a page: {pages:?}");
    assert!(pages.iter().all(|p| p.len() == 2), "{pages:?}");
    let mut got = ids(&pages.concat());
    got.sort();
    want.sort();
    assert_eq!(got, want, "every key exactly once");
    // A page with exactly page_size keys and nothing after it carries no cursor.
    let key = want.iter().find(|id| **id != admin.id).unwrap();
    let res = api(
        &up,
        gw.request("DELETE", &format!("/keys/{key}")).bearer(&token),
    )
    .await;
    assert_eq!(res.status, 204);
    let pages = list_all(&up, &gw, &token, 10).await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![2, 2, 1]
    );
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn an_invalid_cursor_is_400() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder()
        .extra("[keys_api]\npage_size = 2\n")
        .spawn(&up)
        .await;
    let admin = gw.key(&["org-keys.write"]).await;
    let token = mint(&admin).sign();
    for query in [
        "cursor=!!!not-base64",
        // Valid base64url of text without the created_at/id separator.
        "cursor=bm9wZQ",
        // Valid base64url of bytes that are not UTF-8.
        "cursor=__8",
        "cursor=a&cursor=b",
    ] {
        let res = api(&up, gw.get(&format!("/keys?{query}")).bearer(&token)).await;
        res.assert_error(400, "bad-request");
        assert!(
            res.json()["error"].as_str().unwrap().contains("cursor"),
            "{}",
            res.text()
        );
    }
    assert_eq!(up.count(), 0);
}

// ---- DELETE /keys/{id} -----------------------------------------------------------------------

#[tokio::test]
async fn delete_is_204_and_the_key_is_refused_at_once() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let admin = gw.key(&everything()).await;
    let token = mint(&admin).sign();
    let key = create(&up, &gw, &token, json!({"name": "doomed"})).await;
    let doomed = mint(&key).sign();
    assert_eq!(gw.get(STATE).bearer(&doomed).send().await.status, 200);
    let res = api(
        &up,
        gw.request("DELETE", &format!("/keys/{}", key.id))
            .bearer(&token),
    )
    .await;
    assert_eq!(res.status, 204, "{}", res.text());
    assert!(!live(&gw, &key.id), "still live when the API answered");
    assert!(res.body.is_empty(), "{}", res.text());
    // No waiting: the very next request is refused.
    let res = gw.get(STATE).bearer(&doomed).send().await;
    res.assert_error(401, "invalid-token");
    let listed = list_all(&up, &gw, &token, 10).await.concat();
    assert!(!ids(&listed).contains(&key.id));
    // Deleting it again: it is gone.
    let res = api(
        &up,
        gw.request("DELETE", &format!("/keys/{}", key.id))
            .bearer(&token),
    )
    .await;
    res.assert_error(404, "not-found");
    assert_upstream_saw_only(&up, &[STATE]);
}

#[tokio::test]
async fn deleting_a_key_of_another_org_is_404_and_it_keeps_working() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let other = gw.store.create_org("other").unwrap().id;
    let admin = gw.key(&everything()).await;
    let token = mint(&admin).sign();
    let theirs = gw.key_in(&other, &["state.read"]).await;
    let file = gw.keys_dir().join(format!("{other}.toml"));
    let before = std::fs::read_to_string(&file).unwrap();
    let res = api(
        &up,
        gw.request("DELETE", &format!("/keys/{}", theirs.id))
            .bearer(&token),
    )
    .await;
    res.assert_error(404, "not-found");
    // The same answer as for an id that exists nowhere: nothing tells them apart.
    let unknown = api(
        &up,
        gw.request("DELETE", "/keys/sbk_0123456789abcdef01234567")
            .bearer(&token),
    )
    .await;
    assert_eq!(unknown.body, res.body);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
    assert_eq!(status(&gw, STATE, &theirs).await, 200);
    assert_upstream_saw_only(&up, &[STATE]);
}

#[tokio::test]
async fn deleting_an_unknown_id_is_404() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let admin = gw.key(&["org-keys.write"]).await;
    let token = mint(&admin).sign();
    for id in ["sbk_0123456789abcdef01234567", "not-a-key-id", "sbk_"] {
        let res = api(
            &up,
            gw.request("DELETE", &format!("/keys/{id}")).bearer(&token),
        )
        .await;
        res.assert_error(404, "not-found");
    }
    assert_eq!(gw.store.list_keys(Some(&gw.org)).unwrap().len(), 1);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn a_key_may_delete_itself_and_is_refused_on_its_very_next_request() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let admin = gw.key(&["org-keys.write", "state.read"]).await;
    let token = mint(&admin).sign();
    let res = api(
        &up,
        gw.request("DELETE", &format!("/keys/{}", admin.id))
            .bearer(&token),
    )
    .await;
    assert_eq!(res.status, 204, "{}", res.text());
    assert!(!live(&gw, &admin.id), "still live when the API answered");
    let res = api(&up, gw.get("/keys").bearer(&token)).await;
    res.assert_error(401, "invalid-token");
    let res = gw.get(STATE).bearer(&token).send().await;
    res.assert_error(401, "invalid-token");
    assert_eq!(up.count(), 0);
}

// ---- audit -----------------------------------------------------------------------------------

#[tokio::test]
async fn creates_and_deletes_are_counted_and_no_secret_reaches_the_metrics() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let admin = gw.key(&["org-keys.write", "state.read"]).await;
    let token = mint(&admin).sign();
    let count = |text: &str, action: &str, result: &str| {
        metric(
            text,
            "scopegate_key_changes_total",
            &[("action", action), ("result", result)],
        )
    };
    let before = gw.metrics().await;
    let mut secrets = vec![admin.secret.clone()];
    let mut created = Vec::new();
    for i in 0..3 {
        let key = create(
            &up,
            &gw,
            &token,
            json!({"name": format!("k{i}"), "scopes": ["state.read"]}),
        )
        .await;
        secrets.push(key.secret.clone());
        created.push(key);
    }
    // Refusals are not successes.
    let res = api(&up, post_keys(&gw, &token, r#"{"name": "k", "use": "ci"}"#)).await;
    res.assert_error(403, "missing-scope");
    let res = api(&up, post_keys(&gw, &token, r#"{"name": ""}"#)).await;
    res.assert_error(400, "bad-request");
    let res = api(
        &up,
        gw.request("DELETE", &format!("/keys/{}", created[0].id))
            .bearer(&token),
    )
    .await;
    assert_eq!(res.status, 204);
    let res = api(
        &up,
        gw.request("DELETE", &format!("/keys/{}", created[0].id))
            .bearer(&token),
    )
    .await;
    res.assert_error(404, "not-found");
    let after = gw.metrics().await;
    let delta =
        |action: &str, result: &str| count(&after, action, result) - count(&before, action, result);
    assert_eq!(delta("create", "success"), 3.0, "{after}");
    assert_eq!(delta("delete", "success"), 1.0, "{after}");
    assert_eq!(delta("create", "refused"), 1.0, "{after}");
    assert_eq!(delta("delete", "not-found"), 1.0, "{after}");
    for s in &secrets {
        assert!(!after.contains(s.as_str()), "a secret is in the metrics");
    }
    assert!(!after.contains("sbsec_"), "a secret is in the metrics");
    assert_eq!(up.count(), 0);
}
