//! The dashboard in a real browser: headless Chromium, driven through chromedriver (WebDriver)
//! with fantoccini, against an in-process gateway. A person's whole round trip — sign in,
//! create a key, see its secret once, find it in the list, delete it — and, outside the
//! browser, proof that the key the page made works and that the key it deleted is refused.
//!
//! Needs Debian's `chromium` and `chromium-driver` packages (`.ci/run` installs them); without
//! them this test fails, saying so, rather than skipping.
//!
//! Set `SCOPEGATE_DASHBOARD_SCREENSHOTS=<dir>` to save screenshots of the signed-in list and
//! of the new-secret panel there, to look at the page.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

use crate::support::{eventually, mint, RecordingUpstream, Req, TestGateway, TestKey};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const INSTALL: &str = "install Debian's browser and its driver: \
                       `apt-get install chromium chromium-driver` (.ci/run does this)";

/// The longest any one step of the page (a click and the API calls it makes) may take.
const STEP: Duration = Duration::from_secs(15);

/// chromedriver and the browser it starts, in a process group of their own.
struct ChromeDriver {
    _process: GroupKill,
    url: String,
    log: PathBuf,
    /// The browser profile and the driver's log, removed afterwards.
    dir: tempfile::TempDir,
}

/// Kills a child's process group — by its id, which is the child's PID (`process_group(0)`),
/// so Chromium goes with chromedriver — when dropped, panics included.
struct GroupKill(Child);

impl Drop for GroupKill {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    l.local_addr().unwrap().port()
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // The end of the log is what explains a failure.
    let mut start = text.len().saturating_sub(4000);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

impl ChromeDriver {
    /// Starts chromedriver on a free port and waits (bounded) until it reports ready.
    async fn start() -> Self {
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(path).exists(),
                "the dashboard's browser test needs {path}, which is missing: {INSTALL}"
            );
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("chromedriver.log");
        for attempt in 0..5 {
            let port = free_port();
            let mut process = GroupKill(
                Command::new(CHROMEDRIVER)
                    .arg(format!("--port={port}"))
                    .arg(format!("--log-path={}", log.display()))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .process_group(0)
                    .spawn()
                    .unwrap_or_else(|e| panic!("starting {CHROMEDRIVER} failed ({e}): {INSTALL}")),
            );
            let url = format!("http://127.0.0.1:{port}");
            let status = format!("{url}/status");
            let ready = eventually(Duration::from_secs(20), || {
                let status = status.clone();
                async move {
                    match Req::new("GET", status).try_send().await {
                        Ok(r) if r.status == 200 => r.json()["value"]["ready"] == json!(true),
                        _ => false,
                    }
                }
            })
            .await;
            if ready {
                return ChromeDriver {
                    _process: process,
                    url,
                    log,
                    dir,
                };
            }
            let exited = process.0.try_wait().ok().flatten().is_some();
            drop(process);
            // Only a port another process took in between is worth another attempt.
            assert!(
                exited && attempt < 4,
                "chromedriver never became ready (exited: {exited}); its log:\n{}",
                tail(&log)
            );
        }
        panic!("chromedriver found no free port in five attempts");
    }

    /// A fresh browser session: headless, a throw-away profile, no network but loopback use.
    async fn session(&self) -> Page {
        let profile = self.dir.path().join("profile");
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        });
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities.as_object().unwrap().clone())
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver could not start {CHROMIUM} ({e}); its log:\n{}",
                    tail(&self.log)
                )
            });
        Page { client }
    }
}

/// The browser's one tab, with the few things this test does to it.
struct Page {
    client: Client,
}

impl Page {
    async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed ({e}): {script}"))
    }

    /// A real WebDriver click: fails if the element is hidden or covered.
    async fn click(&self, css: &str) {
        let element = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} to click ({e})"));
        element
            .click()
            .await
            .unwrap_or_else(|e| panic!("clicking {css} failed ({e})"));
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} to type into ({e})"));
        element.clear().await.unwrap();
        element
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("typing into {css} failed ({e})"));
    }

    async fn text(&self, css: &str) -> String {
        let element = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} ({e})"));
        element.text().await.unwrap()
    }

    /// Whether the element is laid out (present, not `hidden`, not inside something hidden).
    async fn shown(&self, css: &str) -> bool {
        self.js(
            "const e = document.querySelector(arguments[0]); \
             return !!e && e.getClientRects().length > 0;",
            vec![json!(css)],
        )
        .await
            == json!(true)
    }

    /// Polls `condition` (a script returning a boolean) until it holds, or fails the test
    /// after [`STEP`], quoting what the page was saying.
    async fn wait(&self, what: &str, condition: &str, args: Vec<Value>) {
        let ok = eventually(STEP, || {
            let args = args.clone();
            async move {
                self.client
                    .execute(condition, args)
                    .await
                    .is_ok_and(|v| v == json!(true))
            }
        })
        .await;
        if !ok {
            panic!(
                "timed out waiting until {what}; the page says: {}",
                self.messages().await
            );
        }
    }

    async fn wait_shown(&self, css: &str) {
        self.wait(
            &format!("{css} is shown"),
            "const e = document.querySelector(arguments[0]); \
             return !!e && e.getClientRects().length > 0;",
            vec![json!(css)],
        )
        .await;
    }

    /// The error banner and the status line, for failure messages.
    async fn messages(&self) -> String {
        self.client
            .execute(
                "const e = document.getElementById('error'); \
                 const s = document.getElementById('status'); \
                 return 'error: ' + (e.hidden ? '(none)' : e.textContent) + \
                        ' | status: ' + s.textContent;",
                vec![],
            )
            .await
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .unwrap_or_else(|e| format!("(unreadable: {e})"))
    }

    async fn has_row(&self, key_id: &str) -> bool {
        self.js(ROW_EXISTS, vec![json!(key_id)]).await == json!(true)
    }

    /// The page's URL holds no token, and nothing was put in storage or cookies.
    async fn assert_nothing_kept(&self, secrets: &[&str]) {
        let url = self.client.current_url().await.unwrap();
        for s in secrets {
            assert!(!url.as_str().contains(s), "a secret is in the URL: {url}");
        }
        assert_eq!(
            url.query(),
            None,
            "the dashboard's URL gained a query: {url}"
        );
        let kept = self
            .js(
                "return {local: localStorage.length, session: sessionStorage.length, \
                         cookies: document.cookie};",
                vec![],
            )
            .await;
        assert_eq!(
            kept,
            json!({"local": 0, "session": 0, "cookies": ""}),
            "the dashboard kept something in the browser"
        );
    }

    async fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("SCOPEGATE_DASHBOARD_SCREENSHOTS") else {
            return;
        };
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(Path::new(&dir).join(name), png).expect("writing the screenshot");
    }
}

const ROW_EXISTS: &str = "return !!document.querySelector(\
     '#keys-body tr[data-key-id=\"' + CSS.escape(arguments[0]) + '\"]');";

const ROW_GONE: &str = "return !document.querySelector(\
     '#keys-body tr[data-key-id=\"' + CSS.escape(arguments[0]) + '\"]');";

const SECRET_IN_PAGE: &str = "return document.documentElement.outerHTML.includes(arguments[0]) \
     || document.body.innerText.includes(arguments[0]);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_creates_sees_once_and_deletes_a_key_in_the_dashboard() {
    let driver = ChromeDriver::start().await;
    let page = driver.session().await;

    let up = RecordingUpstream::start().await;
    // One key per page, so the list is only whole if the page follows `cursor`.
    let gw = TestGateway::builder()
        .extra("[keys_api]\npage_size = 1")
        .spawn(&up)
        .await;
    // The signing key must hold what it grants: production's scopes, and the keys API's own.
    let admin = gw
        .key(&[
            "org-keys.write",
            "state.read",
            "events.write",
            "instances.write",
            "indexes.read",
        ])
        .await;
    let bystander = gw.key(&["state.read"]).await;
    let token = mint(&admin).sign();

    // Signed out: only the sign-in form.
    page.client.goto(&gw.url("/dashboard")).await.unwrap();
    page.wait_shown("#token-input").await;
    assert!(!page.shown("#app-view").await, "keys shown before sign-in");
    // The stylesheet loaded under the page's CSP (a blocked one would leave the default margin).
    assert_eq!(
        page.js("return getComputedStyle(document.body).marginTop;", vec![])
            .await,
        json!("0px"),
        "app.css did not apply"
    );

    // Sign in by pasting the token.
    page.type_into("#token-input", &token).await;
    page.click("#sign-in").await;
    page.wait_shown("#app-view").await;
    page.wait(
        "the signing key is listed",
        ROW_EXISTS,
        vec![json!(admin.id)],
    )
    .await;
    assert!(
        page.has_row(&bystander.id).await,
        "the second page of keys is missing"
    );
    assert_eq!(page.text("#keys-count").await, "(2)");
    assert!(!page.shown("#signin-view").await);
    assert_eq!(
        page.js(
            "return document.getElementById('token-input').value;",
            vec![]
        )
        .await,
        json!(""),
        "the token field must be emptied once read"
    );
    assert!(page.text("#session-key").await.contains(&admin.id));
    page.assert_nothing_kept(&[&token]).await;
    page.screenshot("dashboard-list.png").await;

    // Create a production key.
    page.type_into("#key-name", "from-browser").await;
    page.click("#use-production").await;
    page.click("#create-key").await;
    page.wait_shown("#secret-panel").await;
    let id = page.text("#new-key-id").await;
    let secret = page.text("#new-key-secret").await;
    assert!(id.starts_with("sbk_"), "key id shown: {id:?}");
    assert!(secret.starts_with("sbsec_"), "secret shown: {secret:?}");
    assert!(
        page.shown("#copy-secret").await,
        "no copy button next to the secret"
    );
    assert_eq!(page.text("#copy-secret").await, "Copy");
    let warning = page.text("#secret-warning").await;
    assert!(
        warning.contains("never be shown again"),
        "the once-only warning is missing: {warning:?}"
    );
    page.screenshot("dashboard-secret.png").await;

    // Copying works, through the clipboard or by selecting the text for the person to copy.
    page.click("#copy-secret").await;
    page.wait(
        "the copy button reports what it did",
        "const s = document.getElementById('status').textContent; \
         return s.includes('clipboard') || s.includes('selected');",
        vec![],
    )
    .await;

    // The list picks the new key up while the secret is still shown.
    page.wait("the new key is listed", ROW_EXISTS, vec![json!(id)])
        .await;
    assert_eq!(page.text("#keys-count").await, "(3)");
    let row = format!("#keys-body tr[data-key-id=\"{id}\"]");
    let row_text = page.text(&row).await;
    assert!(row_text.contains("from-browser"), "row: {row_text}");
    for scope in [
        "events.write",
        "state.read",
        "instances.write",
        "indexes.read",
    ] {
        assert!(row_text.contains(scope), "row lacks {scope}: {row_text}");
    }
    assert!(
        !row_text.contains(&secret),
        "the list must never show a secret"
    );

    // "Done" hides the secret for good.
    page.click("#secret-done").await;
    page.wait(
        "the secret panel is gone",
        "return document.getElementById('secret-panel').getClientRects().length === 0;",
        vec![],
    )
    .await;
    assert_eq!(
        page.js(SECRET_IN_PAGE, vec![json!(secret)]).await,
        json!(false),
        "the secret is still somewhere in the page after Done"
    );
    page.assert_nothing_kept(&[&token, &secret]).await;

    // The key the page made works: a token it signs reads state.
    let created = TestKey {
        id: id.clone(),
        secret: secret.clone(),
        org: gw.org.clone(),
        algorithm: Algorithm::HS256,
    };
    let created_token = mint(&created).sign();
    let res = gw
        .get("/machines/m1/i/i1")
        .bearer(&created_token)
        .send()
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(up.last().path_and_query, "/machines/m1/i/i1");
    assert_eq!(up.last().header("x-scopegate-key"), Some(id.as_str()));

    // Delete, with the confirmation: cancelling first keeps the key.
    let delete_button = format!("{row} [data-testid=\"delete-key\"]");
    page.click(&delete_button).await;
    page.wait_shown("#confirm-delete").await;
    assert_eq!(page.text("#confirm-delete-id").await, id);
    assert_eq!(page.text("#confirm-delete-name").await, "from-browser");
    page.click("#confirm-delete-cancel").await;
    page.wait(
        "the dialog closes",
        "return !document.getElementById('confirm-delete').open;",
        vec![],
    )
    .await;
    assert!(page.has_row(&id).await, "cancel must not delete");
    let still = gw
        .get("/machines/m1/i/i1")
        .bearer(&created_token)
        .send()
        .await;
    assert_eq!(
        still.status,
        200,
        "cancel must not delete: {}",
        still.text()
    );

    page.click(&delete_button).await;
    page.wait_shown("#confirm-delete").await;
    page.click("#confirm-delete-yes").await;
    page.wait("the deleted key leaves the list", ROW_GONE, vec![json!(id)])
        .await;
    assert!(!page.shown("#confirm-delete").await);
    assert!(page.has_row(&admin.id).await, "only the chosen key goes");
    assert!(
        page.has_row(&bystander.id).await,
        "only the chosen key goes"
    );
    assert_eq!(page.text("#keys-count").await, "(2)");
    let status = page.text("#status").await;
    assert!(status.contains("deleted"), "status: {status}");

    // The deleted key's token is refused, and the upstream never hears of it.
    let seen = up.count();
    let refused = gw
        .get("/machines/m1/i/i1")
        .bearer(&created_token)
        .send()
        .await;
    refused.assert_error(401, "invalid-token");
    assert_eq!(up.count(), seen, "a refused request reached the upstream");
    page.assert_nothing_kept(&[&token, &secret]).await;

    // Signing out forgets the token; a bad token is explained in words and keeps one signed out.
    page.click("#sign-out").await;
    page.wait_shown("#token-input").await;
    assert!(!page.shown("#app-view").await);
    assert!(
        !page.has_row(&admin.id).await,
        "the list must go with the session"
    );
    page.type_into("#token-input", &mint(&created).sign()).await;
    page.click("#sign-in").await;
    page.wait(
        "the refusal is explained",
        "const e = document.getElementById('error'); \
         return !e.hidden && e.textContent.includes('invalid or has expired');",
        vec![],
    )
    .await;
    assert!(!page.shown("#app-view").await);
    page.assert_nothing_kept(&[&token, &secret]).await;

    // Every page asset and keys API call was answered by the gateway itself: the upstream saw
    // the two reads above and nothing else.
    assert_eq!(up.count(), 2, "{:?}", up.requests());

    page.client.close().await.expect("closing the browser");
    drop(driver); // after the session: its drop kills whatever is left
}
