//! Forwarding behaviour that needs a streamed client body.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::support::{mint, RecordingUpstream, TestGateway};

#[tokio::test]
async fn a_slow_upload_is_not_an_upstream_timeout() {
    // The response timeout counts from the end of the request body: an upload that takes
    // longer than the timeout, followed by a prompt upstream answer, is a 200.
    let up = RecordingUpstream::start().await;
    let gw = TestGateway::builder()
        .upstream_setting("response_timeout_ms = 300")
        .spawn(&up)
        .await;
    let key = gw.key(&["events.write"]).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    tokio::spawn(async move {
        for _ in 0..8 {
            // Pacing the upload is the point of the test, not synchronization.
            tokio::time::sleep(Duration::from_millis(100)).await;
            if tx
                .send(Ok(Frame::data(Bytes::from_static(b"0123456789"))))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let request = http::Request::post(gw.url("/upload"))
        .header("authorization", format!("Bearer {}", mint(&key).sign()))
        .body(body)
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let text = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&text));
    assert_eq!(up.last().body_len, 80);
}
