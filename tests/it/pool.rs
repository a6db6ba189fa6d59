//! The plain-HTTP/1.1 upstream pool (`src/pipeline/pool.rs`) against a raw upstream that
//! counts its TCP connections and can close them: reuse, upstreams that drop idle
//! connections, the idle timeout, and responses that end early.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::{eventually, mint, RecordingUpstream, TestGateway};

const READ: &str = "/machines/m1/i/i1";

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
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
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
