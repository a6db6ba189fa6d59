//! Concurrent writers on one key folder never lose a create or resurrect a delete.
//!
//! Three CLI processes loop `keys create` / `keys delete`, while four API clients send
//! `POST /keys` / `DELETE /keys/{id}` to two gateway replicas that share the folder — all at
//! once, every writer read-modify-writing the same organization file. Each writer records what
//! it created and deleted from the answers it got. Then the folder must hold exactly
//! created − deleted (plus the keys the test started with), every file must parse, no temp
//! file may be left, and both replicas' live key sets must converge to that set within 1 s of
//! the last write.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use scopegate::keys::store::{org_files, parse_org_file, LOCK_FILE};
use serde_json::json;

use crate::support::child::run_cli_json;
use crate::support::{catalog, eventually, mint, RecordingUpstream, TestGateway, TestKey};

const STATE: &str = "/machines/m1/i/i1";
const CLI_WRITERS: usize = 3;
/// Per replica.
const API_WRITERS: usize = 2;
/// Operations per writer: every third one deletes the writer's oldest live key.
const OPS: usize = 40;
/// The whole run stops starting operations after this (a bound, not an expectation).
const TIME_CAP: Duration = Duration::from_secs(90);
const CLI_LIMIT: Duration = Duration::from_secs(30);
const WITHIN: Duration = Duration::from_secs(1);
const PATIENCE: Duration = Duration::from_secs(10);
const ADMIN: &[&str] = &[
    "org-keys.write",
    "events.write",
    "state.read",
    "instances.write",
    "indexes.read",
];

/// What one writer did, from its own outputs and responses.
#[derive(Default)]
struct Log {
    writer: String,
    /// id → secret
    created: BTreeMap<String, String>,
    deleted: BTreeSet<String>,
    last_write: Option<Instant>,
}

impl Log {
    fn new(writer: String) -> Self {
        Log {
            writer,
            ..Log::default()
        }
    }

    /// The key to delete at step `i`, if it is a delete step and there is one.
    fn next_delete(&self, i: usize) -> Option<String> {
        if i % 3 != 2 {
            return None;
        }
        self.created
            .keys()
            .find(|id| !self.deleted.contains(*id))
            .cloned()
    }
}

fn cli_writer(w: usize, config: String, org: String, deadline: Instant) -> Log {
    let mut log = Log::new(format!("cli-{w}"));
    for i in 0..OPS {
        if Instant::now() > deadline {
            break;
        }
        match log.next_delete(i) {
            Some(id) => {
                let out = run_cli_json(
                    &["keys", "delete", "--config", &config, "--key", &id],
                    CLI_LIMIT,
                );
                assert_eq!(out["deleted"], true, "{}: delete {id}: {out}", log.writer);
                log.deleted.insert(id);
            }
            None => {
                let name = format!("cli-{w}-{i}");
                let out = run_cli_json(
                    &[
                        "keys",
                        "create",
                        "--config",
                        &config,
                        "--org",
                        &org,
                        "--use",
                        "production",
                        "--name",
                        &name,
                    ],
                    CLI_LIMIT,
                );
                let id = out["id"].as_str().expect("an id").to_owned();
                let secret = out["key"].as_str().expect("a secret").to_owned();
                assert!(log.created.insert(id, secret).is_none(), "an id came twice");
            }
        }
        log.last_write = Some(Instant::now());
    }
    log
}

async fn api_writer(w: String, gw_url: String, token: String, deadline: Instant) -> Log {
    let mut log = Log::new(w);
    for i in 0..OPS {
        if Instant::now() > deadline {
            break;
        }
        match log.next_delete(i) {
            Some(id) => {
                let res = crate::support::Req::new("DELETE", format!("{gw_url}/keys/{id}"))
                    .bearer(&token)
                    .send()
                    .await;
                // A 404 here would mean a concurrent writer lost this writer's create.
                assert_eq!(
                    res.status,
                    204,
                    "{}: DELETE {id}: {}",
                    log.writer,
                    res.text()
                );
                log.deleted.insert(id);
            }
            None => {
                let res = crate::support::Req::new("POST", format!("{gw_url}/keys"))
                    .bearer(&token)
                    .header("content-type", "application/json")
                    .body(
                        json!({"name": format!("{}-{i}", log.writer), "use": "production"})
                            .to_string(),
                    )
                    .send()
                    .await;
                assert_eq!(res.status, 200, "{}: POST: {}", log.writer, res.text());
                let json = res.json();
                let id = json["id"].as_str().unwrap().to_owned();
                let secret = json["key"].as_str().unwrap().to_owned();
                assert!(log.created.insert(id, secret).is_none(), "an id came twice");
            }
        }
        log.last_write = Some(Instant::now());
    }
    log
}

/// Whether a replica's live key set is exactly `expected` (among every id the run touched).
fn live_set_is(gw: &TestGateway, touched: &BTreeSet<String>, expected: &BTreeSet<String>) -> bool {
    let live = gw.running.as_ref().unwrap().gateway.keys.load();
    live.len() == expected.len()
        && touched
            .iter()
            .all(|id| live.get(id).is_some() == expected.contains(id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_never_lose_or_resurrect_a_key() {
    let up = RecordingUpstream::start().await;
    let a = TestGateway::builder()
        .poll_interval_ms(250)
        .spawn(&up)
        .await;
    let b = TestGateway::builder()
        .poll_interval_ms(250)
        .shared_keys(a.keys_dir(), &a.org)
        .spawn(&up)
        .await;
    let org = a.org.clone();
    // One admin key per API writer; they are the folder's starting content.
    let mut admins = Vec::new();
    for _ in 0..2 * API_WRITERS {
        let k = a.key(ADMIN).await;
        b.wait_for_key(&k.id, true).await;
        admins.push(k);
    }
    let baseline: BTreeSet<String> = admins.iter().map(|k| k.id.clone()).collect();
    let started = Instant::now();
    let deadline = started + TIME_CAP;

    let config = a.config_path.to_str().unwrap().to_owned();
    let clis: Vec<_> = (0..CLI_WRITERS)
        .map(|w| {
            let (config, org) = (config.clone(), org.clone());
            std::thread::spawn(move || cli_writer(w, config, org, deadline))
        })
        .collect();
    let mut apis = Vec::new();
    for (n, admin) in admins.iter().enumerate() {
        let (name, gw) = if n % 2 == 0 { ("a", &a) } else { ("b", &b) };
        apis.push(tokio::spawn(api_writer(
            format!("api-{name}{n}"),
            gw.url(""),
            mint(admin).sign(),
            deadline,
        )));
    }
    let mut logs: Vec<Log> = Vec::new();
    for api in apis {
        logs.push(api.await.expect("an API writer panicked"));
    }
    let cli_logs = tokio::task::spawn_blocking(move || {
        clis.into_iter()
            .map(|t| t.join().expect("a CLI writer panicked"))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    logs.extend(cli_logs);
    let last_write = logs.iter().filter_map(|l| l.last_write).max().unwrap();

    let mut created: BTreeMap<String, String> = BTreeMap::new();
    let mut deleted: BTreeSet<String> = BTreeSet::new();
    for log in &logs {
        eprintln!(
            "store_stress: {} created {}, deleted {}",
            log.writer,
            log.created.len(),
            log.deleted.len()
        );
        assert!(
            log.created.len() + log.deleted.len() == OPS || Instant::now() > deadline,
            "{} stopped early",
            log.writer
        );
        for (id, secret) in &log.created {
            assert!(
                created.insert(id.clone(), secret.clone()).is_none(),
                "{id} created twice"
            );
        }
        deleted.extend(log.deleted.iter().cloned());
    }
    eprintln!(
        "store_stress: {} writers, {} creates, {} deletes in {:?}",
        logs.len(),
        created.len(),
        deleted.len(),
        last_write - started
    );
    assert!(deleted.iter().all(|id| created.contains_key(id)));
    let mut expected: BTreeSet<String> = created
        .keys()
        .filter(|id| !deleted.contains(*id))
        .cloned()
        .collect();
    expected.extend(baseline.iter().cloned());

    // The folder: exactly created − deleted, nothing lost, nothing resurrected.
    let listed: BTreeSet<String> = a
        .store
        .list_keys(None)
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    let lost: Vec<_> = expected.difference(&listed).collect();
    let resurrected: Vec<_> = listed.intersection(&deleted).collect();
    let strangers: Vec<_> = listed.difference(&expected).collect();
    assert!(
        lost.is_empty() && resurrected.is_empty() && strangers.is_empty(),
        "lost creates {lost:?}; resurrected deletes {resurrected:?}; unknown keys {strangers:?}"
    );
    // Every file parses, stays private, and no temp file is left behind.
    let files = org_files(a.keys_dir()).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        parse_org_file(file, &text, &catalog()).unwrap_or_else(|e| panic!("{e}"));
        let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
    let mut names: Vec<String> = std::fs::read_dir(a.keys_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![LOCK_FILE.to_owned(), format!("{org}.toml")],
        "left behind"
    );

    // Both replicas converge on that set within 1 s of the last write.
    let touched: BTreeSet<String> = created.keys().chain(baseline.iter()).cloned().collect();
    let mut converged: [Option<Duration>; 2] = [None, None];
    let ok = eventually(PATIENCE, || {
        for (i, gw) in [&a, &b].into_iter().enumerate() {
            if converged[i].is_none() && live_set_is(gw, &touched, &expected) {
                converged[i] = Some(last_write.elapsed());
            }
        }
        let done = converged.iter().all(Option::is_some);
        async move { done }
    })
    .await;
    eprintln!("store_stress: replicas converged {converged:?} after the last write");
    assert!(ok, "the replicas never converged: {converged:?}");
    for (name, took) in ["A", "B"].iter().zip(converged) {
        let took = took.unwrap();
        assert!(
            took <= WITHIN,
            "replica {name} converged {took:?} after the last write"
        );
    }
    // And they act on it: every surviving key is accepted, every deleted one refused.
    for (id, secret) in &created {
        let key = TestKey {
            id: id.clone(),
            secret: secret.clone(),
            org: org.clone(),
            algorithm: Algorithm::HS256,
        };
        let want = if deleted.contains(id) { 401 } else { 200 };
        for gw in [&a, &b] {
            let res = gw.get(STATE).bearer(&mint(&key).sign()).send().await;
            assert_eq!(res.status, want, "{id}: {}", res.text());
        }
    }
}
