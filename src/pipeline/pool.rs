//! The keep-alive connection pool of a plain-HTTP/1.1 upstream.
//!
//! hyper's HTTP/1 client connection (`hyper::client::conn::http1`) does the protocol; this
//! module only keeps the idle connections: a stack (the most recently used is reused first,
//! so the rest age out), at most `pool_max_idle` of them, each dropped once it has been idle
//! for `pool_idle_timeout` or the upstream has closed it. A connection goes back on the stack
//! when the response body it carried has been read to its end, never before: a response cut
//! short (the client went away) closes its connection rather than leave a half-read one to
//! the next request.
//!
//! A request that finds a pooled connection already closed by the upstream before anything
//! was written is sent again on a new connection, as hyper's own pooled client does.
//!
//! With several worker threads each has its own stack ([`set_worker`]): a connection is
//! dialled, driven and reused on the worker whose request opened it, so no request waits on a
//! wake-up from another thread. `pool_max_idle` then holds per worker.

use std::cell::Cell;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, Uri};
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::forward::RequestBody;
use crate::config::UpstreamSettings;

/// Why a request could not be sent on a pooled or new connection.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("connecting to the upstream: {0}")]
    Connect(#[source] std::io::Error),
    #[error("no connection within the connect timeout")]
    ConnectTimeout,
    #[error("HTTP handshake with the upstream: {0}")]
    Handshake(#[source] hyper::Error),
    #[error(transparent)]
    Request(hyper::Error),
}

/// How many idle stacks each pool keeps (one per worker thread); set before pools are built.
static WORKERS: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// This thread's stack index; 0 outside worker threads.
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Declares `count` worker threads; call once, before the config (and its pools) is built.
pub fn set_workers(count: usize) {
    WORKERS.store(count.max(1), Ordering::Relaxed);
}

/// Marks the calling thread as worker `index` (0-based).
pub fn set_worker(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// A plain-HTTP/1.1 upstream's pool.
#[derive(Debug)]
pub struct H1Pool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Host name or IP literal (without IPv6 brackets) and port to dial.
    host: String,
    port: u16,
    /// The upstream's authority, sent as `Host`.
    host_header: HeaderValue,
    /// One stack per worker thread.
    idle: Box<[Mutex<Vec<IdleConn>>]>,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
    reaper_started: AtomicBool,
}

#[derive(Debug)]
struct IdleConn {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

impl H1Pool {
    pub fn new(settings: &UpstreamSettings) -> Self {
        let authority = &settings.authority;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        H1Pool {
            inner: Arc::new(Inner {
                host,
                port: authority.port_u16().unwrap_or(80),
                host_header: HeaderValue::from_str(authority.as_str())
                    .expect("an authority is a valid header value"),
                idle: (0..WORKERS.load(Ordering::Relaxed))
                    .map(|_| Mutex::new(Vec::new()))
                    .collect(),
                max_idle: settings.pool_max_idle,
                idle_timeout: settings.pool_idle_timeout,
                connect_timeout: settings.connect_timeout,
                reaper_started: AtomicBool::new(false),
            }),
        }
    }

    /// Sends `request` (an absolute URI of this upstream) in origin form with the upstream's
    /// `Host`, on an idle connection when one is ready, else on a new one.
    pub async fn send(
        &self,
        mut request: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, PoolError> {
        let mut origin = http::uri::Parts::default();
        origin.path_and_query = request.uri().path_and_query().cloned();
        *request.uri_mut() = Uri::from_parts(origin).unwrap_or_else(|_| Uri::from_static("/"));
        request
            .headers_mut()
            .insert(header::HOST, self.inner.host_header.clone());
        if let Some(mut sender) = self.inner.take_idle() {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.wrap(response, sender)),
                Err(mut e) => match e.take_message() {
                    // Never written (the connection closed as it was taken): a new one.
                    Some(back) => request = back,
                    None => return Err(PoolError::Request(e.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(PoolError::Request)?;
        Ok(self.wrap(response, sender))
    }

    fn wrap(
        &self,
        response: Response<Incoming>,
        sender: SendRequest<RequestBody>,
    ) -> Response<UpstreamBody> {
        // After a 101 the connection belongs to the tunnel.
        let reuse = (response.status() != http::StatusCode::SWITCHING_PROTOCOLS).then(|| Reuse {
            pool: self.inner.clone(),
            sender,
        });
        response.map(|body| UpstreamBody::new(body, reuse))
    }

    async fn connect(&self) -> Result<SendRequest<RequestBody>, PoolError> {
        let inner = &self.inner;
        let dial = async {
            let stream = TcpStream::connect((inner.host.as_str(), inner.port))
                .await
                .map_err(PoolError::Connect)?;
            stream.set_nodelay(true).map_err(PoolError::Connect)?;
            let (sender, connection) = hyper::client::conn::http1::Builder::new()
                .handshake(TokioIo::new(stream))
                .await
                .map_err(PoolError::Handshake)?;
            tokio::spawn(async move {
                if let Err(e) = connection.with_upgrades().await {
                    tracing::debug!(error = %e, "upstream connection ended with an error");
                }
            });
            Ok(sender)
        };
        let sender = tokio::time::timeout(inner.connect_timeout, dial)
            .await
            .map_err(|_| PoolError::ConnectTimeout)??;
        self.start_reaper();
        Ok(sender)
    }

    /// Closes connections that outstay the idle timeout even when no request comes to notice
    /// them. Ends when the pool is gone (its upstream left the config).
    fn start_reaper(&self) {
        if self.inner.reaper_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool: Weak<Inner> = Arc::downgrade(&self.inner);
        let every = (self.inner.idle_timeout / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                pool.prune(Instant::now());
            }
        });
    }
}

impl Inner {
    /// The calling worker's stack.
    fn idle(&self) -> MutexGuard<'_, Vec<IdleConn>> {
        let slot = WORKER.with(Cell::get) % self.idle.len();
        self.idle[slot].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used connection that is ready for a request. Closed and expired
    /// ones are dropped; one still finishing its last exchange stays for later.
    fn take_idle(&self) -> Option<SendRequest<RequestBody>> {
        let mut idle = self.idle();
        let now = Instant::now();
        let mut busy = Vec::new();
        let mut found = None;
        while let Some(conn) = idle.pop() {
            if conn.sender.is_closed() || now.duration_since(conn.since) > self.idle_timeout {
                continue;
            }
            if conn.sender.is_ready() {
                found = Some(conn.sender);
                break;
            }
            busy.push(conn);
        }
        idle.extend(busy.into_iter().rev());
        found
    }

    fn put(&self, sender: SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle();
        if idle.len() < self.max_idle {
            idle.push(IdleConn {
                sender,
                since: Instant::now(),
            });
        }
    }

    fn prune(&self, now: Instant) {
        for stack in &self.idle {
            stack.lock().unwrap_or_else(|p| p.into_inner()).retain(|c| {
                !c.sender.is_closed() && now.duration_since(c.since) <= self.idle_timeout
            });
        }
    }
}

/// A connection to hand back once its response has been read whole.
struct Reuse {
    pool: Arc<Inner>,
    sender: SendRequest<RequestBody>,
}

/// An upstream's response body, streamed to the client. Returns its connection to the pool
/// when it ends.
pub struct UpstreamBody {
    inner: Incoming,
    reuse: Option<Reuse>,
}

impl UpstreamBody {
    /// A body whose connection is not pooled here (HTTP/2, TLS: hyper's client pools those).
    pub fn unpooled(inner: Incoming) -> Self {
        UpstreamBody { inner, reuse: None }
    }

    fn new(inner: Incoming, reuse: Option<Reuse>) -> Self {
        let mut body = UpstreamBody { inner, reuse };
        // An empty body (HEAD, 204, 304, `Content-Length: 0`) may never be polled.
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some(r) = self.reuse.take() {
            r.pool.put(r.sender);
        }
    }
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            // A broken body: its connection is not reused.
            Poll::Ready(Some(Err(_))) => self.reuse = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
