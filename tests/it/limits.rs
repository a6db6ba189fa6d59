//! Limits and timeouts, each with its outcome: 431, 414, 413, slow heads, idle keep-alive,
//! the connection cap — and HTTP/2 with prior knowledge on the plain listener.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{mint, RecordingUpstream, TestGateway};

/// Sends raw bytes and reads until the server closes or `limit` passes.
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8], limit: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn an_oversized_head_is_431() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder()
        .server_setting("max_header_bytes = 16384")
        .spawn(&up)
        .await;
    let big = "a".repeat(20_000);
    let req = format!("GET /status HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n");
    let res = raw_exchange(gw.addr(), req.as_bytes(), Duration::from_secs(5)).await;
    assert!(res.starts_with("HTTP/1.1 431"), "{res}");
    // Many small headers add up the same way.
    let many: String = (0..2000).map(|i| format!("x-h{i}: vvvvvvvv\r\n")).collect();
    let req = format!("GET /status HTTP/1.1\r\nhost: x\r\n{many}\r\n");
    let res = raw_exchange(gw.addr(), req.as_bytes(), Duration::from_secs(5)).await;
    assert!(res.starts_with("HTTP/1.1 431"), "{res}");
    assert_eq!(up.count(), 0);
    // A legitimate request still succeeds.
    assert_eq!(gw.get("/status").send().await.status, 200);
}

#[tokio::test]
async fn an_overlong_uri_is_414() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder()
        .server_setting("max_uri_bytes = 1024")
        .spawn(&up)
        .await;
    let res = gw
        .get(&format!("/status?q={}", "x".repeat(2000)))
        .send()
        .await;
    res.assert_error(414, "uri-too-long");
    assert_eq!(up.count(), 0);
    assert_eq!(gw.get("/status?q=short").send().await.status, 200);
}

fn upload_routes(limit: u64) -> String {
    format!(
        "[[routes]]\nmethods = [\"POST\"]\npath = \"/upload\"\nscopes = [\"events.write\"]\nupstream = \"main\"\nmax_body_bytes = {limit}\n"
    )
}

#[tokio::test]
async fn a_declared_oversized_body_is_413_before_the_upstream() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder()
        .routes(&upload_routes(1024))
        .spawn(&up)
        .await;
    let key = gw.key(&["events.write"]).await;
    let token = mint(&key).sign();
    let res = gw
        .request("POST", "/upload")
        .bearer(&token)
        .body(vec![b'x'; 2048])
        .send()
        .await;
    res.assert_error(413, "payload-too-large");
    assert_eq!(up.count(), 0);
    let res = gw
        .request("POST", "/upload")
        .bearer(&token)
        .body(vec![b'x'; 1024])
        .send()
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(up.last().body_len, 1024);
}

#[tokio::test]
async fn a_streamed_oversized_body_is_cut_at_the_limit() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder()
        .routes(&upload_routes(64 * 1024))
        .spawn(&up)
        .await;
    let key = gw.key(&["events.write"]).await;
    // Chunked, no Content-Length: the gateway counts as it flows.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(2);
    tokio::spawn(async move {
        for _ in 0..64 {
            if tx
                .send(Ok(Frame::data(Bytes::from(vec![b'y'; 16 * 1024]))))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let request = http::Request::post(gw.url("/upload"))
        .header("authorization", format!("Bearer {}", mint(&key).sign()))
        .body(StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 413);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("payload-too-large"));
    // Whatever reached the upstream stopped at the limit.
    for r in up.requests() {
        assert!(
            r.body_len <= 64 * 1024,
            "the upstream got {} bytes",
            r.body_len
        );
    }
}

#[tokio::test]
async fn a_slow_head_is_cut_and_others_are_served_meanwhile() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder()
        .server_setting("header_read_timeout_seconds = 1")
        .spawn(&up)
        .await;
    let mut slow = TcpStream::connect(gw.addr()).await.unwrap();
    slow.write_all(b"GET /status HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        // A header byte every 200 ms: never a complete head.
        let mut buf = [0u8; 256];
        loop {
            if slow.write_all(b"x").await.is_err() {
                return started.elapsed();
            }
            match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
                Ok(Ok(_)) => return started.elapsed(), // answered (408/400) and closing
                Err(_) => {}
            }
            if started.elapsed() > Duration::from_secs(10) {
                return started.elapsed();
            }
        }
    });
    // Meanwhile a legitimate request succeeds.
    assert_eq!(gw.get("/status").send().await.status, 200);
    let cut_after = trickle.await.unwrap();
    assert!(
        cut_after < Duration::from_secs(5),
        "the slow client lasted {cut_after:?}"
    );
    assert!(
        cut_after >= Duration::from_millis(900),
        "cut too early: {cut_after:?}"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder()
        .server_setting("header_read_timeout_seconds = 1")
        .spawn(&up)
        .await;
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"GET /status HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut all = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all)).await;
    assert!(closed.is_ok(), "the idle connection stayed open");
    assert!(String::from_utf8_lossy(&all).starts_with("HTTP/1.1 200"));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn beyond_max_connections_new_clients_wait_for_a_free_slot() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder()
        .server_setting("max_connections = 2")
        .spawn(&up)
        .await;
    let a = TcpStream::connect(gw.addr()).await.unwrap();
    let b = TcpStream::connect(gw.addr()).await.unwrap();
    // The third client is queued by the kernel, not served.
    let addr = gw.addr();
    let mut third = tokio::spawn(async move {
        raw_exchange(
            addr,
            b"GET /status HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            Duration::from_secs(10),
        )
        .await
    });
    let early = tokio::time::timeout(Duration::from_millis(500), &mut third).await;
    assert!(
        early.is_err(),
        "the third connection was served beyond the cap"
    );
    drop(a);
    let res = third.await.unwrap();
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    drop(b);
}

#[tokio::test]
async fn http2_with_prior_knowledge_on_the_plain_listener() {
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder().spawn(&up).await;
    let key = gw.key(&["state.read"]).await;
    let tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/machines/m1/i/i1", gw.addr()))
        .header("authorization", format!("Bearer {}", mint(&key).sign()))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    // The upstream got HTTP/1.1 with the identity headers.
    assert_eq!(up.last().header("x-scopegate-org"), Some(gw.org.as_str()));
    assert_eq!(
        up.last().header("x-forwarded-host"),
        Some(gw.addr().to_string().as_str())
    );
}
