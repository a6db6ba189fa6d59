//! A recording upstream: remembers every request that reached it (method, path and query,
//! headers, body size — counted as it streams, never buffered) and answers 200 JSON.
//!
//! Knobs: `set_delay` holds every response head (for 504 and drain tests); a request header
//! `x-test-download: N` gets an N-byte streamed response body.
//!
//! `RecordingUpstream::builder()` serves over TLS (`.tls(config)`, tokio-rustls) and/or
//! HTTP/2 only (`.http2_only()`: h2c with prior knowledge on plain TCP). It also counts the
//! TCP connections it accepted, so tests can see pooling.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body_len: u64,
    pub version: http::Version,
    /// The ALPN protocol of the TLS connection it came on (None: no TLS, or none agreed).
    pub alpn: Option<Vec<u8>>,
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
    /// TCP connections accepted, whether or not a TLS handshake followed.
    connections: AtomicUsize,
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

async fn answer(
    shared: Arc<Shared>,
    alpn: Option<Vec<u8>>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
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
        version: parts.version,
        alpn,
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

/// How a [`RecordingUpstream`] serves: plain or TLS, HTTP/1.1 and h2 or h2 only.
#[derive(Default)]
pub struct UpstreamBuilder {
    tls: Option<Arc<rustls::ServerConfig>>,
    http2_only: bool,
}

impl UpstreamBuilder {
    /// Serves over TLS with this server config (its ALPN list is what the upstream offers).
    pub fn tls(mut self, config: rustls::ServerConfig) -> Self {
        self.tls = Some(Arc::new(config));
        self
    }

    /// Speaks HTTP/2 only: an HTTP/1.1 request fails the connection.
    pub fn http2_only(mut self) -> Self {
        self.http2_only = true;
        self
    }

    pub async fn start(self) -> RecordingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let acceptor = self.tls.map(tokio_rustls::TlsAcceptor::from);
        let http2_only = self.http2_only;
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                s.connections.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        None => serve(stream, None, s, http2_only).await,
                        Some(acceptor) => {
                            // A client that refuses the certificate ends here, unserved.
                            let Ok(tls) = acceptor.accept(stream).await else {
                                return;
                            };
                            let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                            serve(tls, alpn, s, http2_only).await;
                        }
                    }
                });
            }
        });
        RecordingUpstream { addr, shared, task }
    }
}

async fn serve<I>(io: I, alpn: Option<Vec<u8>>, shared: Arc<Shared>, http2_only: bool)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| answer(shared.clone(), alpn.clone(), req));
    let io = TokioIo::new(io);
    if http2_only {
        // hyper's own HTTP/2 server: HTTP/1.1 bytes are a protocol error, never a request.
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await;
    } else {
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection_with_upgrades(io, svc)
            .await;
    }
}

impl RecordingUpstream {
    /// A plain HTTP/1.1 (and h2c) upstream.
    pub async fn start() -> Self {
        Self::builder().start().await
    }

    pub fn builder() -> UpstreamBuilder {
        UpstreamBuilder::default()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
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
