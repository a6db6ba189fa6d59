//! The key folder as Kubernetes mounts a Secret or ConfigMap: every file is a symlink
//! `org_x.toml -> ..data/org_x.toml`, `..data` is a symlink to a hidden, timestamped folder,
//! and an update swaps `..data` atomically, the way kubelet's AtomicWriter does it:
//!
//! 1. write the new version into `..<timestamp2>/`;
//! 2. `symlink ..data_tmp -> ..<timestamp2>`, then `rename ..data_tmp ..data`;
//! 3. add the top-level symlinks of new files, remove those of files that are gone;
//! 4. remove the old `..<timestamp1>/`.
//!
//! The gateway skips names starting with `.` and follows symlinks. These tests check that each
//! step is picked up within 1 s — with the product's default polling, and with file events
//! alone — and that a key present in every version is never refused along the way.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use scopegate::keys::store::{new_key_id, new_secret, now_rfc3339, KeyRecord, OrgFile, OrgRecord};

use crate::support::{metric, mint, time_until, RecordingUpstream, Req, TestGateway, TestKey};

const STATE: &str = "/machines/m1/i/i1";
const WITHIN: Duration = Duration::from_secs(1);
const PATIENCE: Duration = Duration::from_secs(5);

/// A new key of `org` with `state.read`: the test's handle and the record to mount.
fn key(org: &str) -> (TestKey, KeyRecord) {
    let record = KeyRecord {
        id: new_key_id(),
        name: "mounted".into(),
        secret: new_secret(),
        scopes: vec!["state.read".into()],
        algorithm: "HS256".into(),
        created_at: now_rfc3339(),
    };
    let test = TestKey {
        id: record.id.clone(),
        secret: record.secret.clone(),
        org: org.to_owned(),
        algorithm: Algorithm::HS256,
    };
    (test, record)
}

/// `<org>.toml` holding `keys`, as the file of a Secret's data.
fn org_file(org: &str, keys: &[&KeyRecord]) -> (String, String) {
    let text = toml::to_string_pretty(&OrgFile::new(
        OrgRecord {
            id: org.to_owned(),
            name: format!("{org} (mounted)"),
            created_at: now_rfc3339(),
        },
        keys.iter().map(|k| (*k).clone()).collect(),
    ))
    .unwrap();
    (format!("{org}.toml"), text)
}

/// A projected volume, written the way kubelet writes it.
struct Mount {
    dir: PathBuf,
    versions: usize,
    /// Version folders replaced by a swap, not removed yet (step 4).
    old: Vec<String>,
}

impl Mount {
    /// Lays out version 1 with `files` (path in the data, content) and the top-level symlinks
    /// `links` (`name -> ..data/name`).
    fn new(dir: &Path, files: &[(String, String)], links: &[&str]) -> Self {
        std::fs::create_dir(dir).unwrap();
        let mut mount = Mount {
            dir: dir.to_owned(),
            versions: 0,
            old: Vec::new(),
        };
        let version = mount.write_version(files);
        symlink(&version, dir.join("..data")).unwrap();
        for name in links {
            mount.link(name);
        }
        mount
    }

    /// Step 1: a hidden, timestamped folder holding one version of every file.
    fn write_version(&mut self, files: &[(String, String)]) -> String {
        self.versions += 1;
        let name = format!(
            "..2025_06_01_12_00_{:02}.{}",
            self.versions,
            std::process::id()
        );
        let path = self.dir.join(&name);
        std::fs::create_dir(&path).unwrap();
        for (file, content) in files {
            let file = path.join(file);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, content).unwrap();
        }
        name
    }

    /// Steps 1 and 2: the new version becomes visible in one rename; returns when it did.
    fn swap(&mut self, files: &[(String, String)]) -> Instant {
        let current = std::fs::read_link(self.dir.join("..data")).unwrap();
        let version = self.write_version(files);
        let tmp = self.dir.join("..data_tmp");
        symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        let swapped = Instant::now();
        self.old.push(current.to_str().unwrap().to_owned());
        swapped
    }

    /// Step 3: the user-visible `name -> ..data/name`.
    fn link(&self, name: &str) -> Instant {
        symlink(format!("..data/{name}"), self.dir.join(name)).unwrap();
        Instant::now()
    }

    /// Step 3: a file that is no longer in the data loses its top-level symlink.
    fn unlink(&self, name: &str) -> Instant {
        std::fs::remove_file(self.dir.join(name)).unwrap();
        Instant::now()
    }

    /// Step 4.
    fn remove_old_versions(&mut self) {
        for old in self.old.drain(..) {
            std::fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
    }
}

async fn status(gw: &TestGateway, key: &TestKey) -> u16 {
    gw.get(STATE)
        .bearer(&mint(key).sign())
        .send()
        .await
        .status
        .as_u16()
}

/// Polls until `key` gets `want`; asserts that took at most [`WITHIN`] from `since`.
async fn takes_effect(gw: &TestGateway, key: &TestKey, want: u16, since: Instant, what: &str) {
    let took = time_until(since, PATIENCE, what, || async {
        status(gw, key).await == want
    })
    .await;
    eprintln!("kubernetes: {what}: {took:?}");
    assert!(
        took <= WITHIN,
        "{what} took {took:?}; the limit is {WITHIN:?}"
    );
}

/// Sends requests with `key` until stopped; collects every answer that was not 200.
struct Steady {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<(usize, Vec<u16>)>,
}

impl Steady {
    fn start(url: String, key: &TestKey) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let token = mint(key).sign();
        let flag = stop.clone();
        let sent = Arc::new(AtomicUsize::new(0));
        let counter = sent.clone();
        let task = tokio::spawn(async move {
            let mut sent = 0;
            let mut refused = Vec::new();
            while !flag.load(Ordering::SeqCst) && sent < 100_000 {
                let res = Req::new("GET", url.clone()).bearer(&token).send().await;
                sent += 1;
                counter.store(sent, Ordering::SeqCst);
                if res.status != 200 {
                    refused.push(res.status.as_u16());
                }
                // Pacing only: steady traffic without starving the gateway of the CPU.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (sent, refused)
        });
        Steady { stop, sent, task }
    }

    fn sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }

    async fn finish(self) -> (usize, Vec<u16>) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

/// Version 1: org_x {k1, k2}, org_z {k5}. Version 2: org_x {k1, k3}, org_y {k4}; org_z gone.
async fn a_kubelet_swap_is_picked_up(poll_interval_ms: u64) {
    let up = RecordingUpstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    let (k1, r1) = key("org_x"); // in every version
    let (k2, r2) = key("org_x"); // removed by version 2
    let (k3, r3) = key("org_x"); // added by version 2
    let (k4, r4) = key("org_y"); // in a new org file of version 2
    let (k5, r5) = key("org_z"); // in an org file version 2 drops
    let v1 = [org_file("org_x", &[&r1, &r2]), org_file("org_z", &[&r5])];
    let v2 = [org_file("org_x", &[&r1, &r3]), org_file("org_y", &[&r4])];
    let mut mount = Mount::new(&dir, &v1, &["org_x.toml", "org_z.toml"]);
    let gw = TestGateway::builder()
        .poll_interval_ms(poll_interval_ms)
        .shared_keys(&dir, "org_x")
        .spawn(&up)
        .await;
    // Version 1 as mounted: the starting point every check below departs from.
    for (k, want) in [(&k1, 200), (&k2, 200), (&k5, 200), (&k3, 401), (&k4, 401)] {
        assert_eq!(status(&gw, k).await, want, "before the swap: {}", k.id);
    }
    let steady = Steady::start(gw.url(STATE), &k1);

    let swapped = mount.swap(&v2);
    takes_effect(&gw, &k3, 200, swapped, "..data swap → added key accepted").await;
    takes_effect(&gw, &k2, 401, swapped, "..data swap → removed key refused").await;
    // org_y.toml is in the data but not visible yet; org_z.toml still points into the data,
    // where it no longer is (a dangling symlink): its keys are gone with the swap.
    assert_eq!(
        status(&gw, &k4).await,
        401,
        "org_y has no top-level symlink yet"
    );
    takes_effect(&gw, &k5, 401, swapped, "..data swap → dropped org refused").await;

    let linked = mount.link("org_y.toml");
    takes_effect(&gw, &k4, 200, linked, "new org symlink → its key accepted").await;
    mount.unlink("org_z.toml");
    mount.remove_old_versions();
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        4,
        "..data, a version, two links"
    );

    // A third version brings org_z back; kubelet adds its symlink after the swap.
    let v3 = [
        org_file("org_x", &[&r1, &r3]),
        org_file("org_y", &[&r4]),
        org_file("org_z", &[&r5]),
    ];
    mount.swap(&v3);
    let linked = mount.link("org_z.toml");
    takes_effect(
        &gw,
        &k5,
        200,
        linked,
        "restored org symlink → its key accepted",
    )
    .await;
    mount.remove_old_versions();
    for (k, want) in [(&k1, 200), (&k3, 200), (&k4, 200), (&k5, 200), (&k2, 401)] {
        assert_eq!(status(&gw, k).await, want, "after the swaps: {}", k.id);
    }

    let (sent, refused) = steady.finish().await;
    assert!(sent > 0);
    assert!(
        refused.is_empty(),
        "a key in every version was refused during the swaps: {refused:?} of {sent}"
    );
    // Dangling links and hidden folders are skipped, not reported as broken files.
    let metrics = gw.metrics().await;
    let rejected = metric(
        &metrics,
        "scopegate_reloads_total",
        &[("kind", "keys"), ("result", "rejected")],
    );
    assert_eq!(rejected, 0.0, "{metrics}");
}

#[tokio::test]
async fn a_kubelet_swap_is_picked_up_with_the_default_polling() {
    // DEFAULT_POLL_INTERVAL_MS: what a deployment gets without tuning.
    a_kubelet_swap_is_picked_up(250).await;
}

#[tokio::test]
async fn a_kubelet_swap_is_picked_up_from_file_events_alone() {
    // Polling every 60 s: only the watch on the key folder can find the swap in time.
    a_kubelet_swap_is_picked_up(60_000).await;
}

/// The steady-traffic helper must see refusals, or its empty list would prove nothing.
#[tokio::test]
async fn the_steady_prober_reports_refusals() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let key = gw.key(&["state.read"]).await;
    let steady = Steady::start(gw.url(STATE), &key);
    time_until(Instant::now(), PATIENCE, "the prober sends", || async {
        steady.sent() > 0
    })
    .await;
    gw.store.delete_key(&key.id).unwrap();
    gw.wait_for_key(&key.id, false).await;
    let before = steady.sent();
    time_until(
        Instant::now(),
        PATIENCE,
        "the prober keeps sending",
        || async { steady.sent() > before + 1 },
    )
    .await;
    let (_, refused) = steady.finish().await;
    assert!(refused.contains(&401), "{refused:?}");
}

/// A projected volume whose items carry a folder (`path: keys/org_x.toml`): the configured key
/// folder is itself a symlink, `keys -> ..data/keys`, and every swap makes it another
/// directory. Three swaps in a row, each picked up within 1 s.
async fn a_swapped_key_folder_is_followed(poll_interval_ms: u64) {
    let up = RecordingUpstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("secret");
    let in_folder = |(name, text): (String, String)| (format!("keys/{name}"), text);
    let (steady_key, steady_record) = key("org_x");
    let (mut previous, record) = key("org_x");
    let mut mount = Mount::new(
        &dir,
        &[in_folder(org_file("org_x", &[&steady_record, &record]))],
        &["keys"],
    );
    let gw = TestGateway::builder()
        .poll_interval_ms(poll_interval_ms)
        .shared_keys(&dir.join("keys"), "org_x")
        .spawn(&up)
        .await;
    assert_eq!(status(&gw, &previous).await, 200);
    let steady = Steady::start(gw.url(STATE), &steady_key);
    for round in 1..=3 {
        let (next, record) = key("org_x");
        assert_eq!(
            status(&gw, &next).await,
            401,
            "round {round}: not mounted yet"
        );
        let swapped = mount.swap(&[in_folder(org_file("org_x", &[&steady_record, &record]))]);
        mount.remove_old_versions();
        let what = format!("swap {round} of a symlinked key folder → added key accepted");
        takes_effect(&gw, &next, 200, swapped, &what).await;
        let what = format!("swap {round} of a symlinked key folder → removed key refused");
        takes_effect(&gw, &previous, 401, swapped, &what).await;
        previous = next;
    }
    let (sent, refused) = steady.finish().await;
    assert!(sent > 0 && refused.is_empty(), "{refused:?} of {sent}");
}

#[tokio::test]
async fn a_swapped_key_folder_is_followed_with_the_default_polling() {
    a_swapped_key_folder_is_followed(250).await;
}

#[tokio::test]
async fn a_swapped_key_folder_is_followed_from_file_events_alone() {
    // The watch must move to each new directory: the one it was set on is deleted.
    a_swapped_key_folder_is_followed(60_000).await;
}
