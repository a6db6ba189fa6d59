//! A recording upstream: remembers every request that reached it (method, path and query,
//! headers, body size — counted as it streams, never buffered) and answers 200 JSON.
//!
//! Knobs: `set_delay` holds every response head (for 504 and drain tests); a request header
//! `x-test-download: N` gets an N-byte streamed response body.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body_len: u64,
    /// Trailer fields that arrived after a chunked body, if any.
    pub trailers: Option<HeaderMap>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Recorded>>,
    delay_ms: AtomicU64,
}

pub struct RecordingUpstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let (parts, mut body) = req.into_parts();
    let mut len = 0u64;
    let mut trailers: Option<HeaderMap> = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    len += d.len() as u64;
                }
                if let Some(t) = f.trailers_ref() {
                    trailers
                        .get_or_insert_with(HeaderMap::new)
                        .extend(t.clone());
                }
            }
            Err(_) => break,
        }
    }
    let download: Option<u64> = parts
        .headers
        .get("x-test-download")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    shared.requests.lock().unwrap().push(Recorded {
        method: parts.method.to_string(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts.headers,
        body_len: len,
        trailers,
    });
    let delay = shared.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let body: Body = match download {
        Some(n) => {
            const CHUNK: u64 = 64 * 1024;
            let chunk = Bytes::from(vec![b'x'; CHUNK as usize]);
            let stream = futures_lite_stream(n, chunk);
            BodyExt::boxed(StreamBody::new(stream))
        }
        None => BodyExt::boxed(http_body_util::Full::new(Bytes::from(format!(
            "{{\"ok\":true,\"received\":{len}}}"
        )))),
    };
    let mut r = Response::new(body);
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(r)
}

/// `n` bytes as a stream of `chunk`-sized frames, generated lazily.
fn futures_lite_stream(
    n: u64,
    chunk: Bytes,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(async move {
        let mut left = n;
        while left > 0 {
            let take = left.min(chunk.len() as u64) as usize;
            if tx.send(Ok(Frame::data(chunk.slice(..take)))).await.is_err() {
                return;
            }
            left -= take as u64;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

impl RecordingUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(s.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        RecordingUpstream { addr, shared, task }
    }

    /// An address where nothing listens (bound, then released).
    pub async fn dead_addr() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        drop(l);
        a
    }

    pub fn set_delay(&self, delay: Duration) {
        self.shared
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }

    pub fn last(&self) -> Recorded {
        self.shared
            .requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw a request")
    }

    pub fn clear(&self) {
        self.shared.requests.lock().unwrap().clear();
    }
}
