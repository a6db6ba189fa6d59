//! The adversarial harness: a real `scopegate serve` child process in front of a recording
//! upstream, keys laid out on disk before the gateway starts (so no test waits for a reload),
//! raw-socket exchanges, and assertions that pair every response with what the upstream saw.
//!
//! Every case is asserted twice: on the wire (status and `code`) and at the upstream (nothing,
//! or exactly the authorized request with exactly the key's identity).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use jsonwebtoken::Algorithm;
use scopegate::keys::store::Store;
use scopegate::scopes::Catalog;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::child::ChildGateway;
use crate::support::client::Res;
use crate::support::upstream::Recorded;
use crate::support::{mint, RecordingUpstream, TestKey, DEFAULT_ROUTES};

/// The routes of every adversarial gateway: the integration suite's defaults plus one route
/// with a body limit.
pub fn routes() -> String {
    format!(
        "{DEFAULT_ROUTES}\n[[routes]]\nmethods = [\"POST\"]\npath = \"/limited\"\nscopes = [\"events.write\"]\nupstream = \"main\"\nmax_body_bytes = 1024\n"
    )
}

/// The path every JWT case is tried on (`state.read`).
pub const STATE: &str = "/machines/m1/i/i1";

/// A gateway child process, its upstream, and keys of two organizations.
pub struct Env {
    pub up: RecordingUpstream,
    pub gw: ChildGateway,
    pub org: String,
    pub other_org: String,
    /// Org A: `state.read machines.read events.write`.
    pub reader: TestKey,
    /// Org A: `org-keys.write org-members.write state.read machines.read`.
    pub admin: TestKey,
    /// Org A, HS512: `state.read`.
    pub hs512: TestKey,
    /// Org B: `state.read machines.read org-members.write`.
    pub other: TestKey,
    _keys: tempfile::TempDir,
}

fn make_key(store: &Store, org: &str, scopes: &[&str], algorithm: Algorithm) -> TestKey {
    let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
    let record = store
        .create_key(org, "adversarial", &scopes, algorithm)
        .unwrap();
    TestKey {
        id: record.id,
        secret: record.secret,
        org: org.to_owned(),
        algorithm,
    }
}

impl Env {
    pub async fn start() -> Env {
        Env::start_with("", "").await
    }

    /// `server` goes inside `[server]`; `extra` is more top-level TOML (e.g. `[auth]`).
    pub async fn start_with(server: &str, extra: &str) -> Env {
        let up = RecordingUpstream::start().await;
        let keys = tempfile::tempdir().unwrap();
        let store = Store::new(keys.path(), Catalog::default());
        let org = store.create_org("adversarial a").unwrap().id;
        let other_org = store.create_org("adversarial b").unwrap().id;
        let reader = make_key(
            &store,
            &org,
            &["state.read", "machines.read", "events.write"],
            Algorithm::HS256,
        );
        let admin = make_key(
            &store,
            &org,
            &[
                "org-keys.write",
                "org-members.write",
                "state.read",
                "machines.read",
            ],
            Algorithm::HS256,
        );
        let hs512 = make_key(&store, &org, &["state.read"], Algorithm::HS512);
        let other = make_key(
            &store,
            &other_org,
            &["state.read", "machines.read", "org-members.write"],
            Algorithm::HS256,
        );
        let routes = format!("{}\n{extra}", routes());
        let gw = ChildGateway::spawn_on_keys_with_server(
            up.addr,
            server,
            &routes,
            1000,
            keys.path(),
            &org,
        )
        .await;
        Env {
            up,
            gw,
            org,
            other_org,
            reader,
            admin,
            hs512,
            other,
            _keys: keys,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.gw.addr
    }

    /// A fresh valid token of the reader key.
    pub fn good(&self) -> String {
        mint(&self.reader).sign()
    }

    /// Asserts a refusal: status, `code`, RFC 6750 `WWW-Authenticate` on a 401, and that the
    /// upstream saw nothing.
    pub fn refused(&self, case: &str, res: &Res, status: u16, code: &str) {
        assert_eq!(
            res.status.as_u16(),
            status,
            "{case}: status (body {})",
            res.text()
        );
        assert_eq!(res.code(), code, "{case}: code (body {})", res.text());
        if status == 401 {
            let www = res.header("www-authenticate").unwrap_or_default();
            assert!(
                www.starts_with("Bearer"),
                "{case}: WWW-Authenticate {www:?}"
            );
        }
        self.nothing_upstream(case);
    }

    /// Asserts the upstream saw nothing at all.
    pub fn nothing_upstream(&self, case: &str) {
        let seen = self.up.requests();
        assert!(
            seen.is_empty(),
            "{case}: the upstream saw {:?}",
            seen.iter()
                .map(|r| format!("{} {}", r.method, r.path_and_query))
                .collect::<Vec<_>>()
        );
    }

    /// Asserts an allowed request: 200, exactly one upstream request with this method and
    /// path, carrying exactly `key`'s identity and no credential. Clears the record.
    pub fn forwarded(
        &self,
        case: &str,
        res: &Res,
        method: &str,
        path_and_query: &str,
        key: &TestKey,
    ) -> Recorded {
        assert_eq!(
            res.status.as_u16(),
            200,
            "{case}: status (body {})",
            res.text()
        );
        self.one_upstream(case, method, path_and_query, Some(key))
    }

    /// The one request the upstream saw, checked: method, path, identity (`None`: a public
    /// route, so no identity header at all), no `Authorization`. Clears the record.
    pub fn one_upstream(
        &self,
        case: &str,
        method: &str,
        path_and_query: &str,
        key: Option<&TestKey>,
    ) -> Recorded {
        let seen = self.up.requests();
        assert_eq!(
            seen.len(),
            1,
            "{case}: the upstream saw {:?}",
            seen.iter()
                .map(|r| format!("{} {}", r.method, r.path_and_query))
                .collect::<Vec<_>>()
        );
        self.up.clear();
        let r = seen.into_iter().next().unwrap();
        assert_eq!(r.method, method, "{case}: method upstream");
        assert_eq!(r.path_and_query, path_and_query, "{case}: path upstream");
        assert_identity(case, &r, key);
        r
    }
}

/// Exactly the key's identity headers (one value each) and nothing else with the prefix (in
/// any spelling); no credential of any kind.
pub fn assert_identity(case: &str, r: &Recorded, key: Option<&TestKey>) {
    for name in r.headers.keys() {
        let n = name.as_str().replace('_', "-");
        if n.starts_with("x-scopegate-") {
            let expected = key.is_some()
                && [
                    "x-scopegate-org",
                    "x-scopegate-key",
                    "x-scopegate-scopes",
                    "x-scopegate-sub",
                    "x-scopegate-claims",
                ]
                .contains(&name.as_str());
            assert!(
                expected,
                "{case}: unexpected identity header {name} upstream"
            );
            assert_eq!(
                r.headers.get_all(name).iter().count(),
                1,
                "{case}: {name} repeated upstream"
            );
        }
    }
    for banned in ["authorization", "proxy-authorization", "x-statebacked-act"] {
        assert!(
            r.headers.get(banned).is_none(),
            "{case}: {banned} reached the upstream"
        );
    }
    if let Some(key) = key {
        assert_eq!(
            r.header("x-scopegate-org"),
            Some(key.org.as_str()),
            "{case}: org"
        );
        assert_eq!(
            r.header("x-scopegate-key"),
            Some(key.id.as_str()),
            "{case}: key"
        );
        assert!(r.header("x-scopegate-scopes").is_some(), "{case}: scopes");
    }
}

/// The `act` claims an upstream reads from `x-scopegate-claims`.
pub fn forwarded_claims(r: &Recorded) -> serde_json::Value {
    let text = r.header("x-scopegate-claims").expect("x-scopegate-claims");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(text).expect("base64url claims")).unwrap()
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// HMAC over `message` with `secret`, for `alg` (HS256/384/512).
pub fn hmac(alg: Algorithm, secret: &[u8], message: &[u8]) -> Vec<u8> {
    match alg {
        Algorithm::HS256 => {
            let mut m = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
            m.update(message);
            m.finalize().into_bytes().to_vec()
        }
        Algorithm::HS384 => {
            let mut m = Hmac::<sha2::Sha384>::new_from_slice(secret).unwrap();
            m.update(message);
            m.finalize().into_bytes().to_vec()
        }
        Algorithm::HS512 => {
            let mut m = Hmac::<sha2::Sha512>::new_from_slice(secret).unwrap();
            m.update(message);
            m.finalize().into_bytes().to_vec()
        }
        other => panic!("no HMAC for {other:?}"),
    }
}

/// A token from raw header and payload bytes (any JSON, or not JSON at all), signed with
/// `alg` over `secret`: for what a JSON serializer would never write.
pub fn sign_raw(alg: Algorithm, secret: &str, header: &[u8], payload: &[u8]) -> String {
    let message = format!("{}.{}", b64(header), b64(payload));
    let sig = hmac(alg, secret.as_bytes(), message.as_bytes());
    format!("{message}.{}", b64(&sig))
}

/// A valid payload (State Backed's shape) as JSON text, for raw tokens.
pub fn payload_json(extra: &str) -> String {
    let now = crate::support::token::now();
    format!(
        r#"{{"act":{{"sub":"user-1"}},"aud":"https://api.statebacked.dev/","exp":{},"iat":{now}{extra}}}"#,
        now + 3600
    )
}

/// A header `{"alg":"HS256","kid":…}` as JSON text.
pub fn header_json(key: &TestKey) -> String {
    format!(r#"{{"alg":"HS256","kid":"{}"}}"#, key.id)
}

/// One HTTP/1.1 response read off a raw socket.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `code` of a gateway error body; `None` when the body is not the gateway's JSON
    /// (hyper's own parse errors answer with an empty body).
    pub fn code(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        v["code"].as_str().map(str::to_owned)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses as many complete responses as `buf` holds; `eof` lets a response without framing
/// run to the end.
pub fn parse_responses(buf: &[u8], eof: bool) -> Vec<RawResponse> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let rest = &buf[at..];
        let Some(end) = find(rest, b"\r\n\r\n") else {
            break;
        };
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let body_start = end + 4;
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let (body, used) = if (100..200).contains(&status) || status == 204 || status == 304 {
            (Vec::new(), body_start)
        } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut body = Vec::new();
            let mut i = body_start;
            let mut complete = false;
            while let Some(nl) = find(&rest[i..], b"\r\n") {
                let size_text = String::from_utf8_lossy(&rest[i..i + nl]).into_owned();
                let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                    .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
                let data = i + nl + 2;
                if size == 0 {
                    // No trailers: one CRLF; else trailer lines up to an empty line.
                    let end = if rest[data..].starts_with(b"\r\n") {
                        Some(2)
                    } else {
                        find(&rest[data..], b"\r\n\r\n").map(|p| p + 4)
                    };
                    if let Some(n) = end {
                        i = data + n;
                        complete = true;
                    }
                    break;
                }
                if rest.len() < data + size + 2 {
                    break;
                }
                body.extend_from_slice(&rest[data..data + size]);
                i = data + size + 2;
            }
            if !complete {
                break;
            }
            (body, i)
        } else if let Some(len) = get("content-length") {
            let len: usize = len.parse().unwrap();
            if rest.len() < body_start + len {
                break;
            }
            (
                rest[body_start..body_start + len].to_vec(),
                body_start + len,
            )
        } else if eof {
            (rest[body_start..].to_vec(), rest.len())
        } else {
            break;
        };
        out.push(RawResponse {
            status,
            headers,
            body,
        });
        at += used;
    }
    out
}

/// How long a raw exchange may take before the test fails (a guard, not a synchronization).
pub const RAW_LIMIT: Duration = Duration::from_secs(10);

/// Writes `request` and reads until the gateway closes the connection. Every raw request
/// therefore ends with a `Connection: close` request (or is one the gateway must close on).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> Vec<RawResponse> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // A gateway that refuses early may close before everything is written: not an error.
    let _ = s.write_all(request).await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(RAW_LIMIT, async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the gateway did not close the connection within {RAW_LIMIT:?}; got so far:\n{}",
        String::from_utf8_lossy(&buf)
    );
    parse_responses(&buf, true)
}

/// Writes `request` and reads until `n` whole responses have arrived (or the connection
/// closes); for requests whose connection the gateway may keep open. Returns how long the
/// first response took.
pub async fn raw_n(addr: SocketAddr, request: &[u8], n: usize) -> (Vec<RawResponse>, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(request).await;
    let mut buf = Vec::new();
    let mut first = None;
    let read = tokio::time::timeout(RAW_LIMIT, async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
            let parsed = parse_responses(&buf, false);
            if first.is_none() && parsed.iter().any(|r| r.status >= 200) {
                first = Some(started.elapsed());
            }
            if parsed.iter().filter(|r| r.status >= 200).count() >= n {
                return;
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no {n} responses within {RAW_LIMIT:?}; got so far:\n{}",
        String::from_utf8_lossy(&buf)
    );
    (
        parse_responses(&buf, false),
        first.unwrap_or_else(|| started.elapsed()),
    )
}

/// A request head: `method target`, then `headers` (each a whole `name: value` line), then a
/// `Host` unless one of the headers is one (pass `host` to leave it out).
pub fn head(method: &str, target: &str, headers: &[&str]) -> String {
    let mut out = format!("{method} {target} HTTP/1.1\r\n");
    let has_host = headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("host:") || *h == "-host");
    if !has_host {
        out.push_str("host: gateway.test\r\n");
    }
    for h in headers {
        if *h != "-host" {
            out.push_str(h);
            out.push_str("\r\n");
        }
    }
    out.push_str("\r\n");
    out
}

/// The request that ends a pipelined raw exchange: a public route, so a gateway that reached
/// it forwards it, and `Connection: close`, so the exchange ends when it has been answered.
pub fn marker() -> String {
    head("GET", "/status?marker", &["connection: close"])
}

/// Asserts a raw refusal from the gateway's pipeline: status and the JSON `code`.
pub fn raw_refused(case: &str, r: &RawResponse, status: u16, code: &str) {
    assert_eq!(r.status, status, "{case}: status (body {})", r.text());
    assert_eq!(
        r.code().as_deref(),
        Some(code),
        "{case}: code (body {})",
        r.text()
    );
    if status == 401 {
        let www = r.header("www-authenticate").unwrap_or_default();
        assert!(
            www.starts_with("Bearer"),
            "{case}: WWW-Authenticate {www:?}"
        );
    }
}

/// Asserts a refusal by hyper's HTTP/1 parser, before the pipeline: the status, and an empty
/// body (no `code`: the request never became a request).
pub fn parser_refused(case: &str, responses: &[RawResponse], status: u16) {
    assert_eq!(
        responses.len(),
        1,
        "{case}: expected one response, got {responses:?}"
    );
    assert_eq!(responses[0].status, status, "{case}: {responses:?}");
    assert_eq!(responses[0].code(), None, "{case}: {responses:?}");
}

/// One request over HTTP/2 with prior knowledge (h2c), headers appended in order (so a name
/// can repeat). Returns the status and the error `code`, if any.
pub async fn h2(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<String>) {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let driver = tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    for (n, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    let res = tokio::time::timeout(RAW_LIMIT, send.send_request(req))
        .await
        .expect("an h2 answer in time")
        .unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    driver.abort();
    let code = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned));
    (status, code)
}
