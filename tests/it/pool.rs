//! The plain-HTTP/1.1 upstream pool (`src/pipeline/pool.rs`) against a raw upstream that
//! counts its TCP connections and can close them: reuse, upstreams that drop idle
//! connections, the idle timeout, and responses that end early.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{eventually, mint, RecordingUpstream, TestGateway};

const READ: &str = "/machines/m1/i/i1";

/// The next request head on `sock` (without its blank line), read into `buf` as needed; what
/// follows it stays in `buf`. `None` once the gateway closes the connection.
async fn next_head(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A raw HTTP/1.1 upstream answering `ok` to every request head it reads.
struct RawUpstream {
    url: String,
    opened: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    heads: Arc<std::sync::Mutex<Vec<String>>>,
}

#[derive(Clone, Copy)]
enum Behaviour {
    /// Keep-alive, like any server.
    KeepAlive,
    /// Answers one request per connection, then closes it without saying so beforehand
    /// (as a server whose keep-alive timeout fires right after a response does).
    CloseAfterOne,
}

async fn raw_upstream(behaviour: Behaviour) -> RawUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let opened = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (o, c, h) = (opened.clone(), closed.clone(), heads.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            o.fetch_add(1, Ordering::SeqCst);
            let (c, h) = (c.clone(), h.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(head) = next_head(&mut sock, &mut buf).await {
                    h.lock().unwrap().push(head);
                    if sock
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        break;
                    }
                    if matches!(behaviour, Behaviour::CloseAfterOne) {
                        break;
                    }
                }
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    RawUpstream {
        url,
        opened,
        closed,
        heads,
    }
}

async fn gateway(raw: &RawUpstream, settings: &[&str]) -> (TestGateway, RecordingUpstream) {
    // The recording upstream only satisfies the builder; requests go to the raw one.
    let unused = RecordingUpstream::start().await;
    let mut builder = TestGateway::builder().upstream_url(&raw.url);
    for s in settings {
        builder = builder.upstream_setting(s);
    }
    (builder.spawn(&unused).await, unused)
}

#[tokio::test]
async fn sequential_requests_share_one_connection_in_origin_form_with_the_upstreams_host() {
    let raw = raw_upstream(Behaviour::KeepAlive).await;
    let (gw, _unused) = gateway(&raw, &[]).await;
    let token = mint(&gw.key(&["state.read"]).await).sign();
    for i in 0..5 {
        let res = gw.get(READ).bearer(&token).send().await;
        assert_eq!(res.status, 200, "request {i}: {}", res.text());
        assert_eq!(res.text(), "ok");
    }
    assert_eq!(
        raw.opened.load(Ordering::SeqCst),
        1,
        "one pooled connection"
    );
    let heads = raw.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 5);
    let host = raw.url.trim_start_matches("http://");
    for head in &heads {
        let mut lines = head.lines();
        assert_eq!(lines.next(), Some(format!("GET {READ} HTTP/1.1").as_str()));
        let hosts: Vec<&str> = lines.filter_map(|l| l.strip_prefix("host: ")).collect();
        assert_eq!(hosts, [host], "exactly one Host, the upstream's: {head}");
    }
}

#[tokio::test]
async fn an_upstream_that_drops_idle_connections_costs_no_request() {
    let raw = raw_upstream(Behaviour::CloseAfterOne).await;
    let (gw, _unused) = gateway(&raw, &[]).await;
    let token = mint(&gw.key(&["state.read"]).await).sign();
    for i in 0..10 {
        let res = gw.get(READ).bearer(&token).send().await;
        assert_eq!(res.status, 200, "request {i}: {}", res.text());
        // Back to back, and also after the close has had time to arrive.
        if i % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(raw.heads.lock().unwrap().len(), 10);
    assert_eq!(raw.opened.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout_without_more_traffic() {
    let raw = raw_upstream(Behaviour::KeepAlive).await;
    let (gw, _unused) = gateway(&raw, &["pool_idle_timeout_seconds = 1"]).await;
    let token = mint(&gw.key(&["state.read"]).await).sign();
    assert_eq!(gw.get(READ).bearer(&token).send().await.status, 200);
    assert_eq!(raw.closed.load(Ordering::SeqCst), 0);
    assert!(
        eventually(Duration::from_secs(5), || async {
            raw.closed.load(Ordering::SeqCst) == 1
        })
        .await,
        "the idle connection was never closed"
    );
    // And the next request dials again.
    assert_eq!(gw.get(READ).bearer(&token).send().await.status, 200);
    assert_eq!(raw.opened.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn pool_max_idle_bounds_the_connections_kept() {
    let raw = raw_upstream(Behaviour::KeepAlive).await;
    let (gw, _unused) = gateway(&raw, &["pool_max_idle = 2"]).await;
    let token = mint(&gw.key(&["state.read"]).await).sign();
    // Eight at once need eight connections; only two stay afterwards.
    let sends = (0..8).map(|_| gw.get(READ).bearer(&token).send());
    for res in futures_util::future::join_all(sends).await {
        assert_eq!(res.status, 200);
    }
    let opened = raw.opened.load(Ordering::SeqCst);
    assert!(opened >= 2, "{opened}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            raw.closed.load(Ordering::SeqCst) == opened - 2.min(opened)
        })
        .await,
        "opened {opened}, closed {}, expected 2 kept",
        raw.closed.load(Ordering::SeqCst)
    );
}

/// An upstream that answers the n-th request it reads (counting over all connections) with
/// `answers[n]` (the last one again once they run out), reading request bodies only when
/// `read_bodies`. It closes a connection after an answer when `close_after` says so.
struct Scripted {
    url: String,
    opened: Arc<AtomicUsize>,
    heads: Arc<std::sync::Mutex<Vec<String>>>,
}

async fn scripted(answers: &'static [&'static [u8]], close_after: bool) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let opened = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let served = Arc::new(AtomicUsize::new(0));
    let (o, h) = (opened.clone(), heads.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            o.fetch_add(1, Ordering::SeqCst);
            let (h, served) = (h.clone(), served.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(head) = next_head(&mut sock, &mut buf).await {
                    h.lock().unwrap().push(head);
                    let n = served.fetch_add(1, Ordering::SeqCst);
                    let answer = answers[n.min(answers.len() - 1)];
                    if sock.write_all(answer).await.is_err() || close_after {
                        // Hold the socket a while before closing, so that an upload in
                        // flight meets an answer, not a reset.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        return;
                    }
                }
            });
        }
    });
    Scripted { url, opened, heads }
}

async fn scripted_gateway(up: &Scripted) -> (TestGateway, RecordingUpstream, String) {
    let raw = RawUpstream {
        url: up.url.clone(),
        opened: up.opened.clone(),
        closed: Arc::new(AtomicUsize::new(0)),
        heads: up.heads.clone(),
    };
    let (gw, unused) = gateway(&raw, &[]).await;
    let token = mint(&gw.key(&["state.read", "events.write"]).await).sign();
    (gw, unused, token)
}

#[tokio::test]
async fn a_chunked_response_is_decoded_for_the_client_and_its_connection_reused() {
    static ANSWER: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"];
    let up = scripted(ANSWER, false).await;
    let (gw, _unused, token) = scripted_gateway(&up).await;
    for i in 0..3 {
        let res = gw.get(READ).bearer(&token).send().await;
        assert_eq!(res.status, 200, "request {i}");
        assert_eq!(res.text(), "hello world");
    }
    assert_eq!(up.opened.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn interim_answers_are_dropped() {
    static ANSWER: &[&[u8]] = &[b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\nmade"];
    let up = scripted(ANSWER, false).await;
    let (gw, _unused, token) = scripted_gateway(&up).await;
    let res = gw.get(READ).bearer(&token).send().await;
    assert_eq!(res.status, 201);
    assert_eq!(res.text(), "made");
    assert_eq!(res.header("link"), None);
}

#[tokio::test]
async fn a_close_delimited_response_is_read_to_its_end_and_its_connection_not_reused() {
    static ANSWER: &[&[u8]] = &[b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it"];
    let up = scripted(ANSWER, true).await;
    let (gw, _unused, token) = scripted_gateway(&up).await;
    for _ in 0..2 {
        let res = gw.get(READ).bearer(&token).send().await;
        assert_eq!(res.status, 200);
        assert_eq!(res.text(), "all of it");
    }
    assert_eq!(up.opened.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connections_that_may_be_out_of_step_are_not_reused() {
    // Both lengths (Transfer-Encoding wins), `Connection: close`, and bytes after the body.
    static ANSWERS: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ];
    let up = scripted(ANSWERS, false).await;
    let (gw, _unused, token) = scripted_gateway(&up).await;
    for i in 0..4 {
        let res = gw.get(READ).bearer(&token).send().await;
        assert_eq!(res.status, 200, "request {i}");
        assert_eq!(res.text(), "ok", "request {i}");
    }
    assert_eq!(
        up.opened.load(Ordering::SeqCst),
        4,
        "a new connection each time"
    );
}

#[tokio::test]
async fn a_malformed_response_is_a_502() {
    static ANSWERS: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\ncontent-length: 2x\r\n\r\nok",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ];
    let up = scripted(ANSWERS, false).await;
    let (gw, _unused, token) = scripted_gateway(&up).await;
    for i in 0..2 {
        let res = gw.get(READ).bearer(&token).send().await;
        res.assert_error(502, "bad-gateway");
        assert!(!res.text().contains("2x"), "request {i}: {}", res.text());
    }
    // A broken chunked body: the head was fine, so the client gets it and a cut body.
    assert!(gw.get(READ).bearer(&token).try_send().await.is_err());
    gw.get(READ)
        .bearer(&token)
        .send()
        .await
        .assert_error(502, "bad-gateway");
    let res = gw.get(READ).bearer(&token).send().await;
    assert_eq!(
        res.status,
        200,
        "and the gateway carries on: {}",
        res.text()
    );
}

#[tokio::test]
async fn an_answer_before_the_upload_ends_reaches_the_client() {
    static ANSWER: &[&[u8]] = &[
        b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo much",
    ];
    let up = scripted(ANSWER, true).await;
    let (gw, _unused, token) = scripted_gateway(&up).await;
    let body = vec![b'x'; 8 * 1024 * 1024];
    let upload = gw
        .request("POST", "/upload")
        .bearer(&token)
        .body(body)
        .try_send();
    let res = tokio::time::timeout(Duration::from_secs(20), upload)
        .await
        .expect("the gateway answers without waiting for the upload to drain");
    // The client may see the answer, or (having its upload cut) a closed connection; what it
    // must never see is the gateway waiting for ever or answering something else.
    if let Ok(res) = res {
        assert_eq!(res.status, 413, "{}", res.text());
        assert_eq!(res.text(), "too much");
    }
}

#[tokio::test]
async fn request_bodies_are_framed_for_the_upstream() {
    static ANSWER: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"];
    let up = scripted(ANSWER, false).await;
    let (gw, _unused, token) = scripted_gateway(&up).await;
    let res = gw
        .request("POST", "/upload")
        .bearer(&token)
        .body("twelve bytes")
        .send()
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let heads = up.heads.lock().unwrap().clone();
    let head = heads.last().unwrap().to_ascii_lowercase();
    assert!(head.contains("content-length: 12"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
}

#[tokio::test]
async fn an_interim_answer_during_an_upload_does_not_stop_it() {
    // Answers `100 Continue` and `103 Early Hints` as soon as it has the head, then reads the
    // whole body before its final answer, which says how much it got.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 65536];
        let head = next_head(&mut sock, &mut buf)
            .await
            .expect("a request head")
            .to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .expect("a content-length")
            .trim()
            .parse()
            .unwrap();
        sock.write_all(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n",
        )
        .await
        .unwrap();
        let mut got = buf.len();
        while got < length {
            let n = sock.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed inside the body");
            got += n;
        }
        let text = format!("got {got}");
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        sock.write_all(answer.as_bytes()).await.unwrap();
        // Held open until the gateway has read the answer.
        let _ = sock.read(&mut chunk).await;
    });
    let raw = RawUpstream {
        url,
        opened: Arc::new(AtomicUsize::new(0)),
        closed: Arc::new(AtomicUsize::new(0)),
        heads: Arc::new(std::sync::Mutex::new(Vec::new())),
    };
    let (gw, _unused) = gateway(&raw, &[]).await;
    let token = mint(&gw.key(&["events.write"]).await).sign();
    let body = vec![b'x'; 4 * 1024 * 1024];
    let upload = gw
        .request("POST", "/upload")
        .bearer(&token)
        .body(body)
        .send();
    let res = tokio::time::timeout(Duration::from_secs(30), upload)
        .await
        .expect("the upload completes");
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.text(), format!("got {}", 4 * 1024 * 1024));
}
