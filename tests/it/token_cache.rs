//! The verified-token cache in a real `scopegate serve` process with two workers: a token
//! both workers remember is still narrowed per route, and is refused by every worker as soon
//! as its key is deleted. Each request opens its own connection, and the gateway hands
//! connections to its workers in turn, so sixteen requests reach both.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::child::ChildGateway;
use crate::support::{mint, time_until, RecordingUpstream};

const ROUTES: &str = "[[routes]]\nmethods = [\"GET\"]\npath = \"/state\"\nscopes = [\"state.read\"]\nupstream = \"main\"\n\n\
                      [[routes]]\nmethods = [\"GET\"]\npath = \"/events\"\nscopes = [\"events.write\"]\nupstream = \"main\"\n";
const PATIENCE: Duration = Duration::from_secs(5);
/// Enough connections that each of the two workers serves several.
const SPREAD: usize = 16;

/// `scopegate_token_cache_lookups_total{result}` from a `/metrics` text.
fn lookups(metrics: &str, result: &str) -> u64 {
    let line = format!("scopegate_token_cache_lookups_total{{result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .map_or(0, |n| n.trim().parse().unwrap())
}

async fn status(gw: &ChildGateway, path: &str, token: &str) -> u16 {
    gw.get(path).bearer(token).send().await.status.as_u16()
}

#[tokio::test]
async fn a_remembered_token_is_narrowed_per_route_and_refused_by_every_worker_once_its_key_is_deleted(
) {
    let up = RecordingUpstream::start().await;
    let url = format!("http://{}", up.addr);
    let gw = ChildGateway::spawn_with_env(&url, ROUTES, &[("SCOPEGATE_WORKERS", "2")]).await;
    let key = gw.create_key(&["state.read", "events.write"]);
    // One token for the whole test, narrowed by its claim to state.read.
    let token = mint(&key).claim("scope", json!("state.read")).sign();
    time_until(Instant::now(), PATIENCE, "the key loads", || async {
        status(&gw, "/state", &token).await == 200
    })
    .await;
    let metrics = gw.metrics().await;
    let before = (lookups(&metrics, "hit"), lookups(&metrics, "miss"));

    for i in 0..SPREAD {
        assert_eq!(status(&gw, "/state", &token).await, 200, "request {i}");
        assert_eq!(
            status(&gw, "/events", &token).await,
            403,
            "request {i}: the scope claim narrowed events.write away"
        );
    }
    let forwarded = up.requests().len();
    assert_eq!(
        forwarded,
        SPREAD + 1,
        "only the allowed requests went upstream"
    );
    // One worker verified the token to answer the first 200; the other verifies it once.
    let metrics = gw.metrics().await;
    let (hits, misses) = (
        lookups(&metrics, "hit") - before.0,
        lookups(&metrics, "miss") - before.1,
    );
    assert_eq!(hits + misses, 2 * SPREAD as u64, "{metrics}");
    assert!(
        misses <= 1,
        "{misses} misses after both workers saw the token"
    );

    gw.store.delete_key(&key.id).unwrap();
    time_until(
        Instant::now(),
        PATIENCE,
        "the deleted key is refused",
        || async { status(&gw, "/state", &token).await == 401 },
    )
    .await;
    // (Requests sent before the reload went upstream, as they should have.)
    let forwarded = up.requests().len();
    for i in 0..SPREAD {
        assert_eq!(
            status(&gw, "/state", &token).await,
            401,
            "request {i} after the delete: a worker still trusted the remembered token"
        );
    }
    assert_eq!(
        up.requests().len(),
        forwarded,
        "nothing went upstream after the delete"
    );

    let log = gw.log();
    assert!(!log.contains("panicked"), "the gateway panicked:\n{log}");
}
