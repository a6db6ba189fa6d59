//! The client-facing HTTP/1.1 server as a client sees it on the wire: keep-alive, `close`,
//! HTTP/1.0, pipelining, HEAD/204/304, response framing (length, chunked, close-delimited),
//! large bodies, cancellation, the head timeout, graceful shutdown, trailers, absolute-form
//! targets, `Expect: 100-continue`, the gateway's own errors and chunked uploads.
//!
//! These pin the behaviour of the hyper-based server (`src/server/mod.rs`) so that a rewrite
//! of it cannot change what clients see without a test saying so. Where a test says "now",
//! it records what hyper does today rather than what any RFC demands.
//!
//! The client is a raw TCP socket (exact bytes out, responses parsed here), and the upstream
//! is a raw scripted one (it answers each request head with the bytes a test chose), so
//! framing is visible at both ends.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{eventually, mint, RecordingUpstream, TestGateway};

/// Longest any single read (or wait for a close) may take before the test fails.
const LIMIT: Duration = Duration::from_secs(10);

const ROUTES: &str = r#"
[[routes]]
methods = ["GET"]
path = "/r/{*rest}"
scopes = ["state.read"]
upstream = "main"

[[routes]]
methods = ["POST"]
path = "/upload"
scopes = ["events.write"]
upstream = "main"

[[routes]]
methods = ["GET"]
path = "/pub/{*rest}"
public = true
upstream = "main"
"#;

// ---------------------------------------------------------------------------------------
// The scripted upstream.
// ---------------------------------------------------------------------------------------

/// A request as the upstream read it: head text and decoded body.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    /// Request line and header lines, without the blank line.
    head: String,
    body: Vec<u8>,
}

impl Seen {
    /// The values of header `name` (lowercase), in order.
    fn header(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
            .collect()
    }
}

/// One step of an upstream's answer.
enum Step {
    Write(Vec<u8>),
    Sleep(Duration),
    /// Closes the connection (the rest of the script is not run).
    Close,
    /// Waits up to this long for the gateway to close the connection; records how long it
    /// took (or that it did not happen) in [`Upstream::waits`]. If it closed, the script ends.
    AwaitClose(Duration),
}

type Script = Arc<dyn Fn(&Seen) -> Vec<Step> + Send + Sync>;

struct Upstream {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// One entry per `AwaitClose`: `Some(time to the close)` or `None` (still open).
    waits: Arc<Mutex<Vec<Option<Duration>>>>,
}

impl Upstream {
    async fn start(script: impl Fn(&Seen) -> Vec<Step> + Send + Sync + 'static) -> Self {
        let script: Script = Arc::new(script);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let waits = Arc::new(Mutex::new(Vec::new()));
        let (s, w) = (seen.clone(), waits.clone());
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(upstream_conn(sock, script.clone(), s.clone(), w.clone()));
            }
        });
        Upstream { url, seen, waits }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn waits(&self) -> Vec<Option<Duration>> {
        self.waits.lock().unwrap().clone()
    }
}

async fn upstream_conn(
    mut sock: TcpStream,
    script: Script,
    seen: Arc<Mutex<Vec<Seen>>>,
    waits: Arc<Mutex<Vec<Option<Duration>>>>,
) {
    let mut buf = Vec::new();
    loop {
        let Some(head) = read_until_blank_line(&mut sock, &mut buf).await else {
            return;
        };
        let mut request_line = head.lines().next().unwrap_or_default().split(' ');
        let method = request_line.next().unwrap_or_default().to_owned();
        let target = request_line.next().unwrap_or_default().to_owned();
        let mut req = Seen {
            method,
            target,
            head,
            body: Vec::new(),
        };
        let chunked = req
            .header("transfer-encoding")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("chunked"));
        let length: usize = req
            .header("content-length")
            .first()
            .map_or(0, |v| v.parse().unwrap());
        if chunked {
            let Some((body, _, _)) = read_chunked(&mut sock, &mut buf).await else {
                return;
            };
            req.body = body;
        } else if length > 0 {
            if !fill_to(&mut sock, &mut buf, length).await {
                return;
            }
            req.body = buf.drain(..length).collect();
        }
        let steps = script(&req);
        seen.lock().unwrap().push(req);
        for step in steps {
            match step {
                Step::Write(bytes) => {
                    if sock.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Step::Sleep(d) => tokio::time::sleep(d).await,
                Step::Close => return,
                Step::AwaitClose(limit) => {
                    let started = Instant::now();
                    let mut scratch = [0u8; 1024];
                    let closed = loop {
                        match tokio::time::timeout_at(
                            (started + limit).into(),
                            sock.read(&mut scratch),
                        )
                        .await
                        {
                            Err(_) => break false,
                            Ok(Ok(0)) | Ok(Err(_)) => break true,
                            Ok(Ok(_)) => continue,
                        }
                    };
                    waits
                        .lock()
                        .unwrap()
                        .push(closed.then(|| started.elapsed()));
                    if closed {
                        return;
                    }
                }
            }
        }
    }
}

/// Reads into `buf` until it holds a head ending in a blank line; returns the head (without
/// the blank line) and leaves what follows in `buf`. `None` at EOF.
async fn read_until_blank_line(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        if !read_more(sock, buf).await {
            return None;
        }
    }
}

/// One read appended to `buf`; false at EOF or on an error.
async fn read_more(sock: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 64 * 1024];
    match sock.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

async fn fill_to(sock: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> bool {
    while buf.len() < n {
        if !read_more(sock, buf).await {
            return false;
        }
    }
    true
}

async fn read_line(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 2);
            return Some(line);
        }
        if !read_more(sock, buf).await {
            return None;
        }
    }
}

/// A chunked body: its data, the size of each chunk (the last 0 left out), and the trailer
/// lines. `None` if the connection ends inside it.
async fn read_chunked(
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(Vec<u8>, Vec<usize>, Vec<String>)> {
    let mut data = Vec::new();
    let mut sizes = Vec::new();
    loop {
        let line = read_line(sock, buf).await?;
        let hex = line.split(';').next().unwrap().trim();
        let size = usize::from_str_radix(hex, 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
        if size == 0 {
            break;
        }
        sizes.push(size);
        if !fill_to(sock, buf, size + 2).await {
            return None;
        }
        data.extend(buf.drain(..size));
        assert_eq!(&buf[..2], b"\r\n", "chunk data not followed by CRLF");
        buf.drain(..2);
    }
    let mut trailers = Vec::new();
    loop {
        let line = read_line(sock, buf).await?;
        if line.is_empty() {
            return Some((data, sizes, trailers));
        }
        trailers.push(line);
    }
}

/// A `Content-Length` response with this body.
fn reply(status: &str, extra_headers: &str, body: &[u8]) -> Step {
    let mut bytes = format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\n{extra_headers}\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    Step::Write(bytes)
}

/// 200 with `got <request body>` for a POST, [`echo`] otherwise.
fn got_or_echo(req: &Seen) -> Vec<Step> {
    if req.method == "POST" {
        vec![reply(
            "200 OK",
            "",
            format!("got {}", String::from_utf8_lossy(&req.body)).as_bytes(),
        )]
    } else {
        echo(req)
    }
}

/// 200 with the request target as its body.
fn echo(req: &Seen) -> Vec<Step> {
    vec![reply(
        "200 OK",
        "content-type: text/plain\r\n",
        format!("{} {}", req.method, req.target).as_bytes(),
    )]
}

// ---------------------------------------------------------------------------------------
// The gateway and the raw client.
// ---------------------------------------------------------------------------------------

struct Setup {
    gw: TestGateway,
    up: Upstream,
    token: String,
    _unused: RecordingUpstream,
}

/// A gateway in front of `up` with [`ROUTES`], `header_read_timeout_seconds = head_timeout`
/// and a token for both scopes.
async fn setup_with(
    up: Upstream,
    head_timeout: u64,
    configure: impl FnOnce(crate::support::Builder) -> crate::support::Builder,
) -> Setup {
    // The recording upstream only satisfies the builder; requests go to the scripted one.
    let unused = RecordingUpstream::start().await;
    let builder = TestGateway::builder()
        .upstream_url(&up.url)
        .routes(ROUTES)
        .server_setting(&format!("header_read_timeout_seconds = {head_timeout}"));
    let gw = configure(builder).spawn(&unused).await;
    let token = mint(&gw.key(&["state.read", "events.write"]).await).sign();
    Setup {
        gw,
        up,
        token,
        _unused: unused,
    }
}

async fn setup(script: impl Fn(&Seen) -> Vec<Step> + Send + Sync + 'static) -> Setup {
    setup_with(Upstream::start(script).await, 1, |b| b).await
}

impl Setup {
    async fn connect(&self) -> Client {
        Client::connect(self.gw.addr()).await
    }

    /// `GET path HTTP/1.1` with Host and the token, and `extra` header lines.
    fn get(&self, path: &str, extra: &str) -> String {
        format!(
            "GET {path} HTTP/1.1\r\nhost: gw.test\r\nauthorization: Bearer {}\r\n{extra}\r\n",
            self.token
        )
    }
}

/// How a response body was framed on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Framing {
    /// No body by the rules (HEAD, 1xx, 204, 304).
    NoBody,
    Length(usize),
    Chunked {
        sizes: Vec<usize>,
        trailers: Vec<String>,
    },
    /// Read to the end of the connection.
    Close,
}

#[derive(Debug)]
struct Response {
    /// The status line's version, e.g. `HTTP/1.1`.
    version: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    framing: Framing,
}

impl Response {
    /// The values of header `name`, in order.
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The only value of header `name`, if there is one (panics on several).
    fn header(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "{name} appears {} times: {self:?}",
            all.len()
        );
        all.first().copied()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A `date` header of the IMF-fixdate shape, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
    fn assert_date(&self) {
        let date = self.header("date").expect("a date header");
        let days = [
            "Mon, ", "Tue, ", "Wed, ", "Thu, ", "Fri, ", "Sat, ", "Sun, ",
        ];
        assert!(
            date.len() == 29 && date.ends_with(" GMT") && days.iter().any(|d| date.starts_with(d)),
            "date {date:?}"
        );
    }

    /// `content-length` present, equal to the body received, and no transfer-encoding.
    fn assert_length_framed(&self) {
        assert_eq!(self.framing, Framing::Length(self.body.len()), "{self:?}");
        assert_eq!(self.header("transfer-encoding"), None, "{self:?}");
    }

    fn assert_chunked(&self) {
        assert!(
            matches!(self.framing, Framing::Chunked { .. }),
            "not chunked: {self:?}"
        );
        assert_eq!(self.header("transfer-encoding"), Some("chunked"));
        assert_eq!(self.header("content-length"), None, "{self:?}");
    }
}

/// A raw client connection to the gateway.
struct Client {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr) -> Self {
        let sock = tokio::time::timeout(LIMIT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        sock.set_nodelay(true).unwrap();
        Client {
            sock,
            buf: Vec::new(),
        }
    }

    /// `GET path` with the token, answered 200 by the [`echo`] upstream with `GET path`.
    async fn get_echoed(&mut self, s: &Setup, path: &str) {
        self.send(s.get(path, "")).await;
        let res = self.response("GET").await;
        assert_eq!(res.status, 200, "{res:?}");
        assert_eq!(res.text(), format!("GET {path}"));
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.sock.write_all(bytes.as_ref()).await.expect("write");
    }

    /// One read into the buffer: the bytes read, 0 at EOF (a reset counts as EOF).
    async fn fill(&mut self) -> usize {
        let mut chunk = vec![0u8; 64 * 1024];
        match tokio::time::timeout(LIMIT, self.sock.read(&mut chunk))
            .await
            .expect("read timed out")
        {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => panic!("read: {e}"),
        }
    }

    async fn fill_to(&mut self, n: usize) {
        while self.buf.len() < n {
            assert!(
                self.fill().await > 0,
                "EOF after {} of {n} bytes",
                self.buf.len()
            );
        }
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8(self.buf[..end].to_vec()).unwrap();
                self.buf.drain(..end + 2);
                return line;
            }
            assert!(self.fill().await > 0, "EOF inside a line: {:?}", self.buf);
        }
    }

    /// The next response head: version, status, headers.
    async fn head(&mut self) -> (String, u16, Vec<(String, String)>) {
        loop {
            if self.buf.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
            let n = self.fill().await;
            assert!(
                n > 0,
                "EOF before a response head; got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
        let status_line = self.line().await;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap().to_owned();
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("status line {status_line:?}"));
        assert!(version.starts_with("HTTP/1."), "{status_line:?}");
        let mut headers = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                break;
            }
            let (n, v) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("header line {line:?}"));
            headers.push((n.to_ascii_lowercase(), v.trim().to_owned()));
        }
        (version, status, headers)
    }

    /// The next response to a request with `method`, body and all.
    async fn response(&mut self, method: &str) -> Response {
        let head = self.head().await;
        self.body(method, head).await
    }

    /// The body of the response whose head was just read.
    async fn body(&mut self, method: &str, head: (String, u16, Vec<(String, String)>)) -> Response {
        let (version, status, headers) = head;
        let mut response = Response {
            version,
            status,
            headers,
            body: Vec::new(),
            framing: Framing::NoBody,
        };
        if method == "HEAD" || status < 200 || status == 204 || status == 304 {
            return response;
        }
        if let Some(te) = response.header("transfer-encoding") {
            assert_eq!(te, "chunked", "{response:?}");
            let mut sizes = Vec::new();
            loop {
                let line = self.line().await;
                let hex = line.split(';').next().unwrap().trim();
                let size = usize::from_str_radix(hex, 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
                if size == 0 {
                    break;
                }
                sizes.push(size);
                self.fill_to(size + 2).await;
                response.body.extend(self.buf.drain(..size));
                assert_eq!(&self.buf[..2], b"\r\n", "chunk data not followed by CRLF");
                self.buf.drain(..2);
            }
            let mut trailers = Vec::new();
            loop {
                let line = self.line().await;
                if line.is_empty() {
                    break;
                }
                trailers.push(line);
            }
            response.framing = Framing::Chunked { sizes, trailers };
        } else if let Some(length) = response.header("content-length") {
            let length: usize = length.parse().unwrap();
            self.fill_to(length).await;
            response.body = self.buf.drain(..length).collect();
            response.framing = Framing::Length(length);
        } else {
            while self.fill().await > 0 {}
            response.body = std::mem::take(&mut self.buf);
            response.framing = Framing::Close;
        }
        response
    }

    /// Waits (up to [`LIMIT`]) for the gateway to close the connection, with nothing more
    /// arriving first; returns how long that took.
    async fn closed(&mut self) -> Duration {
        let started = Instant::now();
        let n = self.fill().await;
        assert_eq!(
            n,
            0,
            "bytes instead of a close: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        assert!(
            self.buf.is_empty(),
            "unread bytes before the close: {:?}",
            self.buf
        );
        started.elapsed()
    }

    /// True when nothing at all (no bytes, no close) arrives within `wait`.
    async fn quiet_for(&mut self, wait: Duration) -> bool {
        let mut chunk = [0u8; 1024];
        tokio::time::timeout(wait, self.sock.read(&mut chunk))
            .await
            .is_err()
    }

    /// Nothing is left over after the last response.
    fn assert_drained(&self) {
        assert!(
            self.buf.is_empty(),
            "stray bytes after the response: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }
}

// ---------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------

/// 1. Sequential requests on one connection are all answered, each with `date` and exact
///    `content-length` framing; the connection stays open between them. The server adds
///    `date` and nothing else (no `server`, no `connection`); an upstream's own `date` is
///    passed on unchanged.
#[tokio::test]
async fn keep_alive_serves_sequential_requests_on_one_connection() {
    let s = setup(|req: &Seen| {
        if req.target == "/r/dated" {
            vec![reply(
                "200 OK",
                "date: Tue, 01 Jan 2030 00:00:00 GMT\r\n",
                b"dated",
            )]
        } else {
            echo(req)
        }
    })
    .await;
    let mut c = s.connect().await;
    for i in 0..5 {
        c.send(s.get(&format!("/r/seq/{i}"), "")).await;
        let res = c.response("GET").await;
        assert_eq!(res.version, "HTTP/1.1");
        assert_eq!(res.status, 200, "request {i}: {res:?}");
        assert_eq!(res.text(), format!("GET /r/seq/{i}"));
        res.assert_length_framed();
        res.assert_date();
        let mut names: Vec<&str> = res.headers.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "content-type", "date"], "{res:?}");
        assert_eq!(res.header("content-type"), Some("text/plain"));
        c.assert_drained();
    }
    let seen = s.up.seen();
    let targets: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(
        targets,
        ["/r/seq/0", "/r/seq/1", "/r/seq/2", "/r/seq/3", "/r/seq/4"]
    );
    // The public route on the same connection, without a token.
    c.send("GET /pub/x HTTP/1.1\r\nhost: gw.test\r\n\r\n").await;
    let res = c.response("GET").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "GET /pub/x");
    c.send(s.get("/r/dated", "")).await;
    let res = c.response("GET").await;
    assert_eq!(res.text(), "dated");
    assert_eq!(
        res.all("date"),
        ["Tue, 01 Jan 2030 00:00:00 GMT"],
        "{res:?}"
    );
    assert!(
        c.quiet_for(Duration::from_millis(200)).await,
        "closed after keep-alive requests"
    );
}

/// 2. `Connection: close` from the client: the response comes (now with `connection: close`),
///    then the gateway closes the connection.
#[tokio::test]
async fn connection_close_from_the_client_closes_after_the_response() {
    let s = setup(echo).await;
    let mut c = s.connect().await;
    c.send(s.get("/r/close", "connection: close\r\n")).await;
    let res = c.response("GET").await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(res.text(), "GET /r/close");
    res.assert_length_framed();
    assert_eq!(res.header("connection"), Some("close"), "{res:?}");
    c.closed().await;
    // The upstream never sees the client's Connection header.
    assert!(
        s.up.seen()[0].header("connection").is_empty(),
        "{:?}",
        s.up.seen()
    );
}

/// 3. HTTP/1.0: without keep-alive the response is given (status line `HTTP/1.0`, no
///    `connection` header), then the connection closed; with `Connection: keep-alive` it now
///    stays open, the response says `connection: keep-alive`, and the next request is served.
///    The upstream is spoken to in HTTP/1.1 either way.
#[tokio::test]
async fn http_1_0_closes_unless_keep_alive_is_asked() {
    let s = setup(echo).await;
    let mut c = s.connect().await;
    c.send(format!(
        "GET /r/ten HTTP/1.0\r\nauthorization: Bearer {}\r\n\r\n",
        s.token
    ))
    .await;
    let res = c.response("GET").await;
    assert_eq!(res.version, "HTTP/1.0", "{res:?}");
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(res.header("connection"), None, "{res:?}");
    assert_eq!(res.text(), "GET /r/ten");
    res.assert_length_framed();
    c.closed().await;
    // Forwarded as HTTP/1.1 all the same.
    assert!(s.up.seen()[0].head.starts_with("GET /r/ten HTTP/1.1\r\n"));

    let mut c = s.connect().await;
    for i in 0..2 {
        c.send(format!(
            "GET /r/ka/{i} HTTP/1.0\r\nconnection: keep-alive\r\nauthorization: Bearer {}\r\n\r\n",
            s.token
        ))
        .await;
        let res = c.response("GET").await;
        assert_eq!(res.version, "HTTP/1.0", "{res:?}");
        assert_eq!(res.status, 200, "{res:?}");
        assert_eq!(res.header("connection"), Some("keep-alive"), "{res:?}");
        assert_eq!(res.text(), format!("GET /r/ka/{i}"));
        res.assert_length_framed();
    }
    assert!(c.quiet_for(Duration::from_millis(200)).await);
    assert!(s
        .up
        .seen()
        .iter()
        .all(|r| r.head.contains(" HTTP/1.1\r\n") && r.header("connection").is_empty()));
}

/// 4. Three requests in one write: three responses, in order.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let s = setup(|req: &Seen| {
        // The first is the slowest: a server answering out of order would show it.
        let mut steps = Vec::new();
        if req.target.ends_with("/0") {
            steps.push(Step::Sleep(Duration::from_millis(200)));
        }
        steps.extend(echo(req));
        steps
    })
    .await;
    let mut c = s.connect().await;
    let mut all = String::new();
    for i in 0..3 {
        all.push_str(&s.get(&format!("/r/pipe/{i}"), ""));
    }
    c.send(all).await;
    for i in 0..3 {
        let res = c.response("GET").await;
        assert_eq!(res.status, 200, "{res:?}");
        assert_eq!(res.text(), format!("GET /r/pipe/{i}"));
        res.assert_length_framed();
    }
    c.assert_drained();
    assert_eq!(s.up.count(), 3);
    // And the connection is still usable.
    c.get_echoed(&s, "/r/pipe/after").await;
}

/// 5. HEAD: the upstream's content-length, no body bytes, and the connection carries on.
#[tokio::test]
async fn head_has_the_upstreams_length_and_no_body() {
    let s = setup(|req: &Seen| {
        if req.method == "HEAD" {
            vec![Step::Write(
                b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\ncontent-type: text/plain\r\n\r\n"
                    .to_vec(),
            )]
        } else {
            echo(req)
        }
    })
    .await;
    let mut c = s.connect().await;
    c.send(s.get("/r/h", "").replacen("GET", "HEAD", 1)).await;
    let res = c.response("HEAD").await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(res.header("content-length"), Some("1234"), "{res:?}");
    assert_eq!(res.header("transfer-encoding"), None);
    res.assert_date();
    assert_eq!(s.up.seen()[0].method, "HEAD");
    // Nothing follows the head: no body bytes within a moment, and the next response
    // starts exactly where the HEAD response ended.
    assert!(c.quiet_for(Duration::from_millis(300)).await);
    c.assert_drained();
    c.get_echoed(&s, "/r/after-head").await;
    c.assert_drained();
}

/// 6. 204 and 304 from the upstream: no body, no framing headers added, and the next request
///    on the connection works.
#[tokio::test]
async fn no_content_and_not_modified_have_no_body() {
    let s = setup(|req: &Seen| {
        if req.target.ends_with("/204") {
            vec![Step::Write(
                b"HTTP/1.1 204 No Content\r\nx-kind: none\r\n\r\n".to_vec(),
            )]
        } else if req.target.ends_with("/304") {
            vec![Step::Write(
                b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\n\r\n".to_vec(),
            )]
        } else {
            echo(req)
        }
    })
    .await;
    let mut c = s.connect().await;
    for (path, status) in [("/r/204", 204), ("/r/304", 304)] {
        c.send(s.get(path, "")).await;
        let res = c.response("GET").await;
        assert_eq!(res.status, status, "{res:?}");
        assert_eq!(res.header("transfer-encoding"), None, "{res:?}");
        assert_eq!(res.header("content-length"), None, "{res:?}");
        if status == 304 {
            assert_eq!(res.header("etag"), Some("\"v1\""));
        } else {
            assert_eq!(res.header("x-kind"), Some("none"));
        }
        assert!(c.quiet_for(Duration::from_millis(200)).await);
        c.assert_drained();
        c.get_echoed(&s, "/r/next").await;
        c.assert_drained();
    }
}

/// 7. Response framing: a chunked upstream body (chunks with pauses between them) is chunked
///    to the client, a content-length one keeps its length, and a close-delimited one is
///    chunked to an HTTP/1.1 client (the connection stays open) and close-delimited to an
///    HTTP/1.0 one.
#[tokio::test]
async fn response_framing_follows_the_upstream_body() {
    let s = setup(|req: &Seen| match req.target.as_str() {
        "/r/chunked" => vec![
            Step::Write(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec(),
            ),
            Step::Sleep(Duration::from_millis(300)),
            Step::Write(b"1;ext=1\r\n \r\n".to_vec()),
            Step::Sleep(Duration::from_millis(300)),
            Step::Write(b"5\r\nworld\r\n".to_vec()),
            Step::Sleep(Duration::from_millis(300)),
            Step::Write(b"0\r\n\r\n".to_vec()),
        ],
        "/r/length" => vec![reply("200 OK", "", b"exactly this")],
        "/r/eof" => vec![
            Step::Write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil ".to_vec()),
            Step::Sleep(Duration::from_millis(100)),
            Step::Write(b"the end".to_vec()),
            Step::Close,
        ],
        _ => echo(req),
    })
    .await;
    let mut c = s.connect().await;

    c.send(s.get("/r/chunked", "")).await;
    let head = c.head().await;
    // The head is passed on before the body is complete (900 ms of pauses in it).
    let head_at = Instant::now();
    let res = c.body("GET", head).await;
    let body_took = head_at.elapsed();
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "hello world");
    res.assert_chunked();
    res.assert_date();
    // Streamed as it came: at least one chunk per upstream write.
    let Framing::Chunked { sizes, trailers } = &res.framing else {
        unreachable!()
    };
    assert!(sizes.len() >= 3, "{sizes:?}");
    assert!(trailers.is_empty());
    assert!(
        body_took >= Duration::from_millis(300),
        "the head came only {body_took:?} before the body's end: buffered?"
    );

    c.send(s.get("/r/length", "")).await;
    let res = c.response("GET").await;
    assert_eq!(res.text(), "exactly this");
    res.assert_length_framed();

    c.send(s.get("/r/eof", "")).await;
    let res = c.response("GET").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "until the end");
    res.assert_chunked();
    // The client's connection outlives the upstream's.
    c.get_echoed(&s, "/r/after-eof").await;
    c.assert_drained();

    // To an HTTP/1.0 client, bodies of unknown length are close-delimited.
    for path in ["/r/chunked", "/r/eof"] {
        let mut c = s.connect().await;
        c.send(format!(
            "GET {path} HTTP/1.0\r\nauthorization: Bearer {}\r\n\r\n",
            s.token
        ))
        .await;
        let res = c.response("GET").await;
        assert_eq!(res.version, "HTTP/1.0", "{res:?}");
        assert_eq!(res.status, 200);
        assert_eq!(res.framing, Framing::Close, "{res:?}");
        assert_eq!(res.header("transfer-encoding"), None);
        assert!(res.text() == "hello world" || res.text() == "until the end");
    }
}

/// 8. A 4 MiB body, content-length then chunked from the upstream, arrives intact; the
///    connection carries on after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_response_streams_intact() {
    const SIZE: usize = 4 * 1024 * 1024;
    fn pattern() -> Vec<u8> {
        (0..SIZE)
            .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
            .collect()
    }
    let s = setup(|req: &Seen| {
        let body = pattern();
        match req.target.as_str() {
            "/r/big-length" => vec![reply("200 OK", "", &body)],
            "/r/big-chunked" => {
                let mut steps = vec![Step::Write(
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec(),
                )];
                for piece in body.chunks(100_000) {
                    let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
                    chunk.extend_from_slice(piece);
                    chunk.extend_from_slice(b"\r\n");
                    steps.push(Step::Write(chunk));
                }
                steps.push(Step::Write(b"0\r\n\r\n".to_vec()));
                steps
            }
            _ => echo(req),
        }
    })
    .await;
    let want = Sha256::digest(pattern());
    let mut c = s.connect().await;
    for (path, chunked) in [("/r/big-length", false), ("/r/big-chunked", true)] {
        c.send(s.get(path, "")).await;
        let res = c.response("GET").await;
        assert_eq!(res.status, 200);
        assert_eq!(res.body.len(), SIZE, "{path}");
        assert_eq!(Sha256::digest(&res.body), want, "{path}: corrupted");
        if chunked {
            res.assert_chunked();
        } else {
            res.assert_length_framed();
        }
        c.get_echoed(&s, "/r/after").await;
        c.assert_drained();
    }
}

/// 9. A client that leaves while the upstream holds its request: the gateway now notices the
///    close (hyper reads EOF mid-message), drops the request, and the upstream sees its
///    connection closed promptly — well before it would have answered.
#[tokio::test]
async fn a_client_leaving_cancels_the_upstream_request() {
    let s = setup(|req: &Seen| {
        if req.target == "/r/slow" {
            vec![
                Step::AwaitClose(Duration::from_secs(3)),
                reply("200 OK", "", b"too late"),
            ]
        } else {
            echo(req)
        }
    })
    .await;
    let mut c = s.connect().await;
    c.send(s.get("/r/slow", "")).await;
    assert!(
        eventually(LIMIT, || async { s.up.count() == 1 }).await,
        "the request never reached the upstream"
    );
    drop(c);
    assert!(
        eventually(LIMIT, || async { !s.up.waits().is_empty() }).await,
        "the upstream never finished waiting"
    );
    let waits = s.up.waits();
    let closed_after = waits[0].expect("the upstream connection was not closed within 3 s");
    eprintln!("client left: upstream saw the close after {closed_after:?}");
    assert!(
        closed_after < Duration::from_secs(2),
        "the upstream saw the close only after {closed_after:?}"
    );
    // The gateway is fine afterwards.
    let mut c = s.connect().await;
    c.get_echoed(&s, "/r/after").await;
}

/// 10. An idle keep-alive connection is closed once `header_read_timeout` (1 s here) passes
///     without a new request head, silently (no 408).
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_head_timeout() {
    let s = setup(echo).await;
    let mut c = s.connect().await;
    c.send(s.get("/r/once", "")).await;
    assert_eq!(c.response("GET").await.status, 200);
    let idle = c.closed().await;
    eprintln!("idle keep-alive closed after {idle:?}");
    assert!(
        idle >= Duration::from_millis(500) && idle <= Duration::from_secs(3),
        "closed after {idle:?} idle"
    );
}

/// 10b. The head timeout counts from the latest answer, not from the accept: a connection sending
///      a request every 0.4 s stays open well past the first second, then idles out about 1 s
///      after its last answer.
#[tokio::test]
async fn the_head_timeout_counts_from_the_latest_answer() {
    let s = setup(echo).await;
    let mut c = s.connect().await;
    for i in 0..6 {
        c.send(s.get(&format!("/r/busy{i}"), "")).await;
        assert_eq!(c.response("GET").await.status, 200, "request {i}");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    c.send(s.get("/r/last", "")).await;
    assert_eq!(c.response("GET").await.status, 200);
    let idle = c.closed().await;
    assert!(
        idle >= Duration::from_millis(500) && idle <= Duration::from_secs(3),
        "closed {idle:?} after the last answer"
    );
}

/// 11. A request head split over several writes with pauses (all within the head timeout)
///     is served.
#[tokio::test]
async fn a_head_in_pieces_is_served() {
    let s = setup(echo).await;
    let mut c = s.connect().await;
    let request = s.get("/r/pieces", "x-extra: 1\r\n");
    let bytes = request.as_bytes();
    let cuts = [0, 3, 10, 40, bytes.len() - 3, bytes.len() - 1, bytes.len()];
    for pair in cuts.windows(2) {
        c.send(&bytes[pair[0]..pair[1]]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let res = c.response("GET").await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(res.text(), "GET /r/pieces");
    assert_eq!(s.up.seen()[0].header("x-extra"), ["1"]);
}

/// 12. A partial head and then silence: cut at the head timeout, without any answer, on the
///     first request of a connection and on a later one.
#[tokio::test]
async fn a_partial_head_is_cut_at_the_head_timeout() {
    let s = setup(echo).await;
    let partial = "GET /r/never HTTP/1.1\r\nhost: gw.test\r\n";

    let mut c = s.connect().await;
    c.send(partial).await;
    let took = c.closed().await;
    assert!(
        took >= Duration::from_millis(500) && took <= Duration::from_secs(3),
        "first head: closed after {took:?}"
    );

    let mut c = s.connect().await;
    c.send(s.get("/r/first", "")).await;
    assert_eq!(c.response("GET").await.status, 200);
    c.send(partial).await;
    let took = c.closed().await;
    assert!(
        took >= Duration::from_millis(500) && took <= Duration::from_secs(3),
        "later head: closed after {took:?}"
    );
    assert_eq!(s.up.count(), 1, "the partial requests went upstream");
}

/// 13. Graceful shutdown with a request in flight: an idle keep-alive connection is closed
///     at once; the in-flight response completes (now with `connection: close`), and its
///     connection is closed after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_and_closes_idle() {
    let mut s = setup_with(
        Upstream::start(|req: &Seen| {
            if req.target == "/r/slow" {
                vec![
                    Step::Sleep(Duration::from_millis(1500)),
                    reply("200 OK", "", b"finished"),
                ]
            } else {
                echo(req)
            }
        })
        .await,
        30,
        |b| b.shutdown_grace(30),
    )
    .await;
    let mut idle = s.connect().await;
    idle.send(s.get("/r/warm", "")).await;
    assert_eq!(idle.response("GET").await.status, 200);

    let mut busy = s.connect().await;
    busy.send(s.get("/r/slow", "")).await;
    assert!(
        eventually(LIMIT, || async { s.up.count() == 2 }).await,
        "the slow request never reached the upstream"
    );
    assert!(
        idle.quiet_for(Duration::from_millis(200)).await,
        "the idle connection did not stay open before the shutdown"
    );
    let running = s.gw.running.take().unwrap();
    let shutdown = tokio::spawn(running.shutdown());

    let idle_closed = idle.closed().await;
    eprintln!("drain: idle connection closed after {idle_closed:?}");
    assert!(
        idle_closed < Duration::from_millis(1000),
        "the idle connection was closed only after {idle_closed:?}"
    );
    let res = busy.response("GET").await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(res.text(), "finished");
    res.assert_length_framed();
    assert_eq!(res.header("connection"), Some("close"), "{res:?}");
    busy.closed().await;
    tokio::time::timeout(LIMIT, shutdown)
        .await
        .expect("shutdown did not finish after the drain")
        .unwrap();
}

/// 14. Trailers of a chunked upstream response never reach the client now, with or without
///     `TE: trailers`: the gateway strips the `Trailer` header (hop-by-hop), and hyper sends
///     only trailer fields that header declares. The body itself arrives whole.
#[tokio::test]
async fn response_trailers_are_not_passed_on() {
    let s = setup(|_: &Seen| {
        vec![Step::Write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n\
              4\r\ndata\r\n0\r\nx-checksum: abc123\r\n\r\n"
                .to_vec(),
        )]
    })
    .await;
    let mut c = s.connect().await;
    for te in ["", "te: trailers\r\n"] {
        c.send(s.get("/r/trailers", te)).await;
        let res = c.response("GET").await;
        assert_eq!(res.status, 200);
        assert_eq!(res.text(), "data");
        res.assert_chunked();
        assert_eq!(
            res.framing,
            Framing::Chunked {
                sizes: vec![4],
                trailers: vec![]
            },
            "te {te:?}"
        );
        assert_eq!(res.header("trailer"), None);
        c.assert_drained();
    }
    // Nor does the upstream learn that the client would take trailers.
    assert!(s.up.seen().iter().all(|r| r.header("te").is_empty()));
}

/// 15. An absolute-form target is routed by its path like origin-form; the upstream gets
///     origin-form, and the target's authority (not the Host header) as X-Forwarded-Host.
#[tokio::test]
async fn an_absolute_form_target_is_routed_by_its_path() {
    let s = setup(echo).await;
    let mut c = s.connect().await;
    c.send(format!(
        "GET http://abs.test/r/abs?q=1 HTTP/1.1\r\nhost: other.test\r\nauthorization: Bearer {}\r\n\r\n",
        s.token
    ))
    .await;
    let res = c.response("GET").await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(res.text(), "GET /r/abs?q=1");
    let seen = s.up.seen();
    assert!(seen[0].head.starts_with("GET /r/abs?q=1 HTTP/1.1\r\n"));
    assert_eq!(seen[0].header("x-forwarded-host"), ["abs.test"]);
    // An absolute-form target to an unknown path is a 404 like any other.
    c.send(format!(
        "GET http://abs.test/nowhere HTTP/1.1\r\nhost: abs.test\r\nauthorization: Bearer {}\r\n\r\n",
        s.token
    ))
    .await;
    let res = c.response("GET").await;
    assert_eq!(res.status, 404, "{res:?}");
    // The public route, absolute-form, no token.
    c.send("GET http://abs.test/pub/p HTTP/1.1\r\nhost: abs.test\r\n\r\n")
        .await;
    let res = c.response("GET").await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(res.text(), "GET /pub/p");
}

/// 16. `Expect: 100-continue`: the gateway answers `100 Continue` itself once it starts
///     reading the body (after authorizing), the upstream gets the body without the Expect
///     header, and the final response follows. Refused (no token), the 401 comes without a
///     100, and the unread body does not keep the connection: it is closed now.
#[tokio::test]
async fn expect_continue_gets_100_then_the_response() {
    let s = setup(|req: &Seen| {
        vec![reply(
            "200 OK",
            "",
            format!("got {}", String::from_utf8_lossy(&req.body)).as_bytes(),
        )]
    })
    .await;
    let mut c = s.connect().await;
    c.send(format!(
        "POST /upload HTTP/1.1\r\nhost: gw.test\r\nauthorization: Bearer {}\r\n\
         content-length: 5\r\nexpect: 100-continue\r\n\r\n",
        s.token
    ))
    .await;
    let interim = c.response("POST").await;
    assert_eq!(interim.version, "HTTP/1.1");
    assert_eq!(interim.status, 100, "{interim:?}");
    assert!(interim.headers.is_empty(), "{interim:?}");
    c.send("hello").await;
    let res = c.response("POST").await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(res.text(), "got hello");
    res.assert_length_framed();
    let seen = s.up.seen();
    assert_eq!(seen[0].body, b"hello");
    assert!(seen[0].header("expect").is_empty(), "{}", seen[0].head);
    // The connection carries on.
    c.send(s.get("/r/x", "")).await;
    assert_eq!(c.response("GET").await.status, 200);
    c.assert_drained();

    // Refused before the body: no 100 Continue.
    let mut c = s.connect().await;
    c.send(
        "POST /upload HTTP/1.1\r\nhost: gw.test\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
    )
    .await;
    let res = c.response("POST").await;
    assert_eq!(res.status, 401, "{res:?}");
    res.assert_length_framed();
    assert_eq!(res.header("connection"), None, "{res:?}");
    let after = c.closed().await;
    eprintln!("refused expect-continue: closed {after:?} after the 401");
    assert!(after < Duration::from_secs(2), "closed after {after:?}");
    assert_eq!(s.up.count(), 2);
}

/// 17. The gateway's own errors (401 without a token, 404 for an unknown path, 401 on a POST
///     whose body was never read) keep the connection usable, with exact content-length.
#[tokio::test]
async fn gateway_errors_keep_the_connection() {
    let s = setup(echo).await;
    let mut c = s.connect().await;

    c.send("GET /r/secret HTTP/1.1\r\nhost: gw.test\r\n\r\n")
        .await;
    let res = c.response("GET").await;
    assert_eq!(res.status, 401, "{res:?}");
    res.assert_length_framed();
    res.assert_date();
    assert_eq!(res.header("www-authenticate"), Some("Bearer"));
    assert_eq!(res.header("content-type"), Some("application/json"));
    assert_eq!(res.header("connection"), None);
    assert!(res.text().contains("missing-token"), "{}", res.text());

    c.send(s.get("/nowhere", "")).await;
    let res = c.response("GET").await;
    assert_eq!(res.status, 404, "{res:?}");
    res.assert_length_framed();
    assert!(res.text().contains("not-found"), "{}", res.text());

    // A refused upload: the gateway never reads its body; hyper drains it.
    c.send("POST /upload HTTP/1.1\r\nhost: gw.test\r\ncontent-length: 10\r\n\r\n0123456789")
        .await;
    let res = c.response("POST").await;
    assert_eq!(res.status, 401, "{res:?}");
    res.assert_length_framed();

    c.get_echoed(&s, "/r/fine").await;
    c.assert_drained();
    assert_eq!(s.up.count(), 1, "refused requests went upstream");
}

/// 18. A chunked upload: the upstream receives the decoded body (now re-chunked: no
///     content-length is invented), and the connection serves a GET next.
#[tokio::test]
async fn a_chunked_upload_reaches_the_upstream_decoded() {
    let s = setup(got_or_echo).await;
    let mut c = s.connect().await;
    c.send(format!(
        "POST /upload HTTP/1.1\r\nhost: gw.test\r\nauthorization: Bearer {}\r\n\
         transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
        s.token
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.send("1;name=value\r\n \r\n6\r\nworld!\r\n0\r\n\r\n")
        .await;
    let res = c.response("POST").await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(res.text(), "got hello world!");
    let seen = s.up.seen();
    assert_eq!(seen[0].body, b"hello world!");
    assert_eq!(seen[0].header("transfer-encoding"), ["chunked"]);
    assert!(seen[0].header("content-length").is_empty());

    c.get_echoed(&s, "/r/then").await;
    c.assert_drained();
}

/// The gateway's own HTTP/1.1 reader serves bodiless requests and small bodies that came
/// whole, and hands a connection to hyper at the first request it does not serve itself (a
/// chunked body, here), with the bytes it has already read: the requests before, the one
/// handed over and those after (pipelined or not) are all answered, in order, on the one
/// connection.
#[tokio::test]
async fn a_connection_handed_over_mid_stream_loses_nothing() {
    let s = setup(got_or_echo).await;
    let post = |body: &str| {
        format!(
            "POST /upload HTTP/1.1\r\nhost: gw.test\r\nauthorization: Bearer {}\r\n\
             content-length: {}\r\n\r\n{body}",
            s.token,
            body.len()
        )
    };
    let chunked_post = |body: &str| {
        format!(
            "POST /upload HTTP/1.1\r\nhost: gw.test\r\nauthorization: Bearer {}\r\n\
             transfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            s.token,
            body.len()
        )
    };
    let mut c = s.connect().await;
    c.get_echoed(&s, "/r/one").await;
    // A small body that comes whole is read here; the connection stays here.
    c.send(post("xy")).await;
    assert_eq!(c.response("POST").await.text(), "got xy");
    // A GET, the POST that goes to hyper, and a GET after it, in one write.
    c.send(format!(
        "{}{}{}",
        s.get("/r/two", ""),
        chunked_post("abc"),
        s.get("/r/three", "")
    ))
    .await;
    assert_eq!(c.response("GET").await.text(), "GET /r/two");
    let res = c.response("POST").await;
    assert_eq!((res.status, res.text()), (200, "got abc".to_owned()));
    assert_eq!(c.response("GET").await.text(), "GET /r/three");
    // hyper keeps the connection from here on, whatever the requests.
    c.send(post("defg")).await;
    assert_eq!(c.response("POST").await.text(), "got defg");
    c.send(s.get("/r/four", "")).await;
    let res = c.response("GET").await;
    assert_eq!(res.text(), "GET /r/four");
    res.assert_date();
    c.assert_drained();
    let targets: Vec<String> = s.up.seen().iter().map(|r| r.target.clone()).collect();
    assert_eq!(
        targets,
        ["/r/one", "/upload", "/r/two", "/upload", "/r/three", "/upload", "/r/four"]
    );
}

/// A head over `max_header_bytes` goes to hyper with what was read, and hyper answers 431,
/// whether it was the first request or followed served ones.
#[tokio::test]
async fn a_head_over_the_limit_is_431_after_served_requests_too() {
    let s = setup(echo).await;
    for served_first in [false, true] {
        let mut c = s.connect().await;
        if served_first {
            c.send(s.get("/r/ok", "")).await;
            assert_eq!(c.response("GET").await.status, 200);
        }
        // A normal request, then one head bigger than the default max_header_bytes, in one
        // write: the second is read (at least in part) before the first is answered.
        let big = format!("x-big: {}\r\n", "a".repeat(70_000));
        c.send(format!("{}{}", s.get("/r/big", ""), s.get("/r/huge", &big)))
            .await;
        assert_eq!(c.response("GET").await.text(), "GET /r/big");
        let res = c.response("GET").await;
        assert_eq!(res.status, 431, "{res:?}");
    }
}

/// A small body whose bytes come in several writes (so it is not all there when its head is)
/// goes through hyper, and arrives whole; one that comes with its head is read by the gateway
/// itself; either way the upstream gets exactly the body, with its length.
#[tokio::test]
async fn a_small_body_arrives_whole_however_it_is_written() {
    let s = setup(got_or_echo).await;
    let head = |len: usize| {
        format!(
            "POST /upload HTTP/1.1\r\nhost: gw.test\r\nauthorization: Bearer {}\r\n\
             content-length: {len}\r\n\r\n",
            s.token
        )
    };
    let body = "x".repeat(20_000);
    // With its head, in one write (more than one read's worth of bytes).
    let mut c = s.connect().await;
    c.send(format!("{}{body}", head(body.len()))).await;
    let res = c.response("POST").await;
    assert_eq!(res.text(), format!("got {body}"));
    // In pieces, some time apart.
    c.send(format!("{}{}", head(11), "hello")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.send(" world").await;
    let res = c.response("POST").await;
    assert_eq!(res.text(), "got hello world");
    c.get_echoed(&s, "/r/after").await;
    c.assert_drained();
    let seen = s.up.seen();
    assert_eq!(seen[0].body.len(), body.len());
    assert_eq!(seen[0].header("content-length"), ["20000"]);
    assert_eq!(seen[1].body, b"hello world");
    assert_eq!(seen[1].header("content-length"), ["11"]);
}
