//! Two real `scopegate serve` processes sharing one key folder, with no load balancer in
//! front: what one replica's keys API (or the CLI) writes, the other accepts — or refuses —
//! within 1 s. Times are measured from the moment the write was confirmed (the API's answer,
//! the CLI's exit) to the first request the other replica answers the new way.

use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use serde_json::json;

use crate::support::child::{run_cli_json, ChildGateway};
use crate::support::{mint, time_until, RecordingUpstream, TestKey};

const ROUTES: &str = "[[routes]]\nmethods = [\"GET\"]\npath = \"/machines/{machine}/i/{instance}\"\nscopes = [\"state.read\"]\nupstream = \"main\"\n";
const STATE: &str = "/machines/m1/i/i1";
/// The requirement.
const WITHIN: Duration = Duration::from_secs(1);
/// How long a poll may run before the test gives up, so a miss reports the time it took.
const PATIENCE: Duration = Duration::from_secs(5);
/// The product's default `[keys] poll_interval_ms`: the replicas run as deployed.
const POLL_MS: u64 = 250;
/// An admin key that may also grant production keys.
const ADMIN: &[&str] = &[
    "org-keys.write",
    "events.write",
    "state.read",
    "instances.write",
    "indexes.read",
];

async fn status(gw: &ChildGateway, key: &TestKey) -> u16 {
    gw.get(STATE)
        .bearer(&mint(key).sign())
        .send()
        .await
        .status
        .as_u16()
}

/// Two replicas on one folder, and an admin key both have loaded.
async fn replicas(up: &RecordingUpstream) -> (ChildGateway, ChildGateway, TestKey) {
    let a = ChildGateway::spawn(up.addr, ROUTES, POLL_MS, false).await;
    let b = ChildGateway::spawn_sharing_keys(&a, ROUTES, POLL_MS).await;
    assert_eq!(a.store.dir(), b.store.dir());
    let admin = a.create_key(ADMIN);
    for gw in [&a, &b] {
        let start = Instant::now();
        time_until(start, PATIENCE, "the admin key loads", || async {
            status(gw, &admin).await == 200
        })
        .await;
    }
    (a, b, admin)
}

/// Polls `gw` until `key` gets `want`, asserts that took at most [`WITHIN`] from `since`, and
/// returns the time.
async fn propagates(
    gw: &ChildGateway,
    key: &TestKey,
    want: u16,
    since: Instant,
    what: &str,
) -> Duration {
    let took = time_until(since, PATIENCE, what, || async {
        status(gw, key).await == want
    })
    .await;
    eprintln!("replicas: {what}: {took:?}");
    assert!(
        took <= WITHIN,
        "{what} took {took:?}; the limit is {WITHIN:?}"
    );
    took
}

#[tokio::test]
async fn a_key_created_through_one_replicas_api_is_accepted_by_the_other_within_1s() {
    let up = RecordingUpstream::start().await;
    let (a, b, admin) = replicas(&up).await;
    let sent = Instant::now();
    let res = a
        .request("POST", "/keys")
        .bearer(&mint(&admin).sign())
        .header("content-type", "application/json")
        .body(json!({"name": "made on A", "use": "production"}).to_string())
        .send()
        .await;
    let confirmed = Instant::now();
    assert_eq!(res.status, 200, "{}", res.text());
    let json = res.json();
    let key = TestKey {
        id: json["id"].as_str().unwrap().to_owned(),
        secret: json["key"].as_str().unwrap().to_owned(),
        org: a.org.clone(),
        algorithm: Algorithm::HS256,
    };
    // B has not seen it before the write: the probe can fail.
    assert_eq!(status(&a, &key).await, 200, "A accepts its own key at once");
    propagates(&b, &key, 200, confirmed, "created on A → accepted by B").await;
    eprintln!("replicas: (POST /keys on A took {:?})", confirmed - sent);
}

#[tokio::test]
async fn a_key_deleted_through_one_replicas_api_is_refused_by_the_other_within_1s() {
    let up = RecordingUpstream::start().await;
    let (a, b, admin) = replicas(&up).await;
    let victim = a.create_key(&["state.read"]);
    for gw in [&a, &b] {
        time_until(Instant::now(), PATIENCE, "the victim loads", || async {
            status(gw, &victim).await == 200
        })
        .await;
    }
    let res = b
        .request("DELETE", &format!("/keys/{}", victim.id))
        .bearer(&mint(&admin).sign())
        .send()
        .await;
    let confirmed = Instant::now();
    assert_eq!(res.status, 204, "{}", res.text());
    assert_eq!(status(&b, &victim).await, 401, "B refuses it at once");
    propagates(&a, &victim, 401, confirmed, "deleted on B → refused by A").await;
    // The admin key is untouched on both.
    assert_eq!(status(&a, &admin).await, 200);
    assert_eq!(status(&b, &admin).await, 200);
}

#[tokio::test]
async fn a_key_created_by_the_cli_is_accepted_by_both_replicas_within_1s() {
    let up = RecordingUpstream::start().await;
    let (a, b, _admin) = replicas(&up).await;
    let config = a.config_path.to_str().unwrap().to_owned();
    let org = a.org.clone();
    let created = tokio::task::spawn_blocking(move || {
        let args = [
            "keys",
            "create",
            "--config",
            &config,
            "--org",
            &org,
            "--use",
            "production",
            "--name",
            "from the CLI",
        ];
        let json = run_cli_json(&args, Duration::from_secs(30));
        (json, Instant::now())
    })
    .await
    .unwrap();
    let (json, confirmed) = created;
    let key = TestKey {
        id: json["id"].as_str().unwrap().to_owned(),
        secret: json["key"].as_str().unwrap().to_owned(),
        org: a.org.clone(),
        algorithm: Algorithm::HS256,
    };
    let on_a = propagates(
        &a,
        &key,
        200,
        confirmed,
        "created by the CLI → accepted by A",
    );
    let on_b = propagates(
        &b,
        &key,
        200,
        confirmed,
        "created by the CLI → accepted by B",
    );
    tokio::join!(on_a, on_b);
    // And the CLI's delete reaches both as well.
    let config = a.config_path.to_str().unwrap().to_owned();
    let id = key.id.clone();
    let confirmed = tokio::task::spawn_blocking(move || {
        let json = run_cli_json(
            &["keys", "delete", "--config", &config, "--key", &id],
            Duration::from_secs(30),
        );
        assert_eq!(json["deleted"], true, "{json}");
        Instant::now()
    })
    .await
    .unwrap();
    let on_a = propagates(
        &a,
        &key,
        401,
        confirmed,
        "deleted by the CLI → refused by A",
    );
    let on_b = propagates(
        &b,
        &key,
        401,
        confirmed,
        "deleted by the CLI → refused by B",
    );
    tokio::join!(on_a, on_b);
}
