//! Bodies stream through the gateway in both directions: a 256 MiB upload and a 256 MiB
//! download leave the gateway's peak memory (a child process, so its RSS is its own) almost
//! where it was, and every byte arrives.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::support::child::ChildGateway;
use crate::support::{mint, RecordingUpstream};

const MIB: u64 = 1024 * 1024;
/// Bytes sent each way. Far above the allowed growth, so a buffering gateway cannot pass.
const SIZE: u64 = 256 * MIB;
/// Growth of the gateway's peak RSS allowed over a whole transfer.
const ALLOWED_GROWTH: u64 = 64 * MIB;

const ROUTES: &str = r#"
[[routes]]
methods = ["POST"]
path = "/upload"
scopes = ["events.write"]
upstream = "main"

[[routes]]
methods = ["GET"]
path = "/machines/{machine}/i/{instance}"
scopes = ["state.read"]
upstream = "main"
"#;

/// A request body of `total` bytes, generated chunk by chunk as the connection takes them:
/// never whole in memory, on either side.
fn generated_body(total: u64) -> StreamBody<ReceiverStream<Result<Frame<Bytes>, Infallible>>> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let chunk = Bytes::from(vec![b'u'; MIB as usize]);
    tokio::spawn(async move {
        let mut left = total;
        while left > 0 {
            let take = left.min(chunk.len() as u64) as usize;
            if tx.send(Ok(Frame::data(chunk.slice(..take)))).await.is_err() {
                return;
            }
            left -= take as u64;
        }
    });
    StreamBody::new(ReceiverStream::new(rx))
}

struct Memory {
    hwm: u64,
    rss: u64,
}

fn memory(gw: &ChildGateway) -> Memory {
    Memory {
        hwm: gw.status_bytes("VmHWM"),
        rss: gw.status_bytes("VmRSS"),
    }
}

fn assert_flat(before: &Memory, after: &Memory, what: &str) {
    let growth = after.hwm.saturating_sub(before.hwm);
    assert!(
        growth < ALLOWED_GROWTH,
        "{what} of {} MiB grew the gateway's peak RSS by {} MiB (from {} to {} MiB; RSS now {} MiB)",
        SIZE / MIB,
        growth / MIB,
        before.hwm / MIB,
        after.hwm / MIB,
        after.rss / MIB
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_without_growing_memory() {
    let up = RecordingUpstream::start().await;
    let gw = ChildGateway::spawn(up.addr, ROUTES, 100, false).await;
    let key = gw.create_key(&["events.write", "state.read"]);
    let token = mint(&key).sign();
    // Warm up (and wait for the key): the first requests allocate pools, buffers, tables.
    let ok = crate::support::eventually(Duration::from_secs(5), || async {
        gw.get("/machines/m/i/i").bearer(&token).send().await.status == 200
    })
    .await;
    assert!(ok, "the key never took effect; log:\n{}", gw.log());
    let warm = crate::support::Req::new("POST", gw.url("/upload"))
        .bearer(&token)
        .body(vec![b'w'; MIB as usize])
        .send()
        .await;
    assert_eq!(warm.status, 200, "{}", warm.text());
    up.clear();

    // Uploads, generated as they go: chunked, then with a declared content-length.
    let started = Instant::now();
    for declared in [false, true] {
        up.clear();
        let before = memory(&gw);
        let client = Client::builder(TokioExecutor::new()).build_http();
        let mut req = Request::post(gw.url("/upload"))
            .header("authorization", format!("Bearer {token}"))
            .body(generated_body(SIZE))
            .unwrap();
        if declared {
            req.headers_mut()
                .insert("content-length", SIZE.to_string().parse().unwrap());
        }
        let res = client
            .request(req)
            .await
            .expect("upload reaches the gateway");
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(up.count(), 1);
        assert_eq!(
            up.last().body_len,
            SIZE,
            "the upstream did not get every byte"
        );
        if declared {
            assert_eq!(
                up.last().header("content-length"),
                Some(SIZE.to_string().as_str())
            );
        }
        assert_flat(&before, &memory(&gw), "an upload");
    }
    let upload_took = started.elapsed();

    // Download: the upstream streams SIZE bytes; the client counts them as they come.
    let before = memory(&gw);
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let req = Request::get(gw.url("/machines/m/i/i"))
        .header("authorization", format!("Bearer {token}"))
        .header("x-test-download", SIZE.to_string())
        .body(Empty::new())
        .unwrap();
    let res = client
        .request(req)
        .await
        .expect("download reaches the gateway");
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.expect("the download is not cut").data_ref() {
            received += data.len() as u64;
        }
    }
    assert_eq!(received, SIZE, "the client did not get every byte");
    assert_flat(&before, &memory(&gw), "a download");
    eprintln!(
        "streaming: upload {upload_took:?}, both {:?}",
        started.elapsed()
    );
}
