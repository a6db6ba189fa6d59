//! The keep-alive connection pool of a plain-HTTP/1.1 upstream, and the HTTP/1.1 client that
//! uses it.
//!
//! The exchange runs inside the task of the request it carries: the request head (and body)
//! is written to the upstream socket, the response head is read and parsed (`httparse`, as
//! hyper does), and the response body is read from the socket as the client's connection
//! asks for it. There is no connection task, no channel and no wake-up between tasks per
//! request — the whole round trip is two system calls on the upstream side.
//!
//! Idle connections are kept on a stack (the most recently used is reused first, so the rest
//! age out), at most `pool_max_idle` of them, each dropped once it has been idle for
//! `pool_idle_timeout` or the upstream has closed it. A connection goes back on the stack
//! only when the response it carried has been read to its end and nothing else arrived: a
//! response cut short (the client went away), a close-delimited one, one with
//! `Connection: close`, one whose framing was ambiguous, or an upload interrupted by an early
//! answer closes its connection rather than leave it to the next request.
//!
//! A request on a pooled connection that the upstream had closed is sent again on a new
//! connection when that is safe: when nothing of it was written, or when it has no body, an
//! idempotent method, and not one byte of answer came back.
//!
//! Protocol upgrades (WebSocket) go through hyper's client connection instead, whose upgrade
//! machinery the tunnel uses; those connections are never pooled.
//!
//! With several worker threads each has its own stack ([`set_worker`]): a connection is
//! dialled, driven and reused on the worker whose request opened it, so no request waits on a
//! wake-up from another thread. `pool_max_idle` then holds per worker.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::forward::RequestBody;
use crate::config::UpstreamSettings;

/// Why a request could not be sent on a pooled or new connection.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("connecting to the upstream: {0}")]
    Connect(#[source] io::Error),
    #[error("no connection within the connect timeout")]
    ConnectTimeout,
    #[error("HTTP handshake with the upstream: {0}")]
    Handshake(#[source] hyper::Error),
    #[error(transparent)]
    Request(hyper::Error),
    #[error("upstream connection: {0}")]
    Io(#[source] io::Error),
    #[error("the upstream closed the connection before it answered")]
    Closed,
    #[error("malformed response from the upstream: {0}")]
    Protocol(&'static str),
    #[error("reading the request body: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Largest response head accepted from an upstream.
const MAX_HEAD: usize = 64 * 1024;
/// Most header fields accepted in a response head (hyper's client default).
const MAX_HEADERS: usize = 100;
/// What one read asks for at least.
const READ_CHUNK: usize = 8 * 1024;
/// Room for the first read of an answer: a typical API response, head and body, fits. Kept
/// small because every request in flight holds it (and a burst of them, its peak).
const FIRST_READ: usize = 2 * 1024;

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
    stream: TcpStream,
    since: Instant,
}

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sending {
    /// No body.
    Nothing,
    /// `Content-Length` bytes, copied as they come.
    Length,
    /// `Transfer-Encoding: chunked`, trailers passed on when the `Trailer` header names them.
    Chunked,
}

/// An exchange that failed, and whether it may be tried again on a new connection.
struct Failed {
    error: PoolError,
    retry: bool,
}

impl Failed {
    fn fatal(error: PoolError) -> Self {
        Failed {
            error,
            retry: false,
        }
    }
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
    /// `Host`, on an idle connection when one is ready, else on a new one. `upgrade`: the
    /// request asks to switch protocols, and the client side is ready to be spliced.
    ///
    /// The request is `parts` and `body`; `parts` is left as sent (with its `Host`), or
    /// emptied when hyper's client sends an upgrade.
    pub async fn send(
        &self,
        parts: &mut http::request::Parts,
        mut body: RequestBody,
        upgrade: bool,
    ) -> Result<Response<UpstreamBody>, PoolError> {
        parts
            .headers
            .insert(header::HOST, self.inner.host_header.clone());
        if upgrade {
            let mut origin = http::uri::Parts::default();
            origin.path_and_query = parts.uri.path_and_query().cloned();
            parts.uri = Uri::from_parts(origin).unwrap_or_else(|_| Uri::from_static("/"));
            let request = Request::from_parts(super::forward::take_parts(parts), body);
            return self.send_upgrade(request).await;
        }
        let sending = framing(&mut parts.headers, &body);
        let head = encode_head(&parts.method, &parts.uri, &parts.headers);
        let trailers = if sending == Sending::Chunked {
            allowed_trailers(&parts.headers)
        } else {
            Vec::new()
        };
        let head_request = parts.method == Method::HEAD;
        // Sent again after the upstream closed a pooled connection under it only when the
        // upstream cannot have acted on it.
        let replayable = sending == Sending::Nothing && parts.method.is_idempotent();
        let mut fresh_only = false;
        loop {
            let (mut stream, pooled) = match (!fresh_only).then(|| self.inner.take_idle()).flatten()
            {
                Some(stream) => (stream, true),
                None => (self.connect().await?, false),
            };
            let outcome = exchange(
                &mut stream,
                &head,
                &mut body,
                sending,
                &trailers,
                replayable,
            )
            .await;
            match outcome {
                Ok(received) => return received.into_response(stream, head_request, &self.inner),
                Err(failed) if failed.retry && pooled => {
                    tracing::debug!(error = %failed.error, "pooled upstream connection was closed; sending on a new one");
                    fresh_only = true;
                }
                Err(failed) => return Err(failed.error),
            }
        }
    }

    /// An upgrade request, through hyper's client connection (its upgrade hands the socket
    /// to the tunnel). Never pooled.
    async fn send_upgrade(
        &self,
        request: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, PoolError> {
        let stream = self.connect().await?;
        let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(PoolError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        let response = sender
            .send_request(request)
            .await
            .map_err(PoolError::Request)?;
        Ok(response.map(UpstreamBody::unpooled))
    }

    async fn connect(&self) -> Result<TcpStream, PoolError> {
        let inner = &self.inner;
        let dial = async {
            let stream = TcpStream::connect((inner.host.as_str(), inner.port))
                .await
                .map_err(PoolError::Connect)?;
            stream.set_nodelay(true).map_err(PoolError::Connect)?;
            Ok(stream)
        };
        let stream = tokio::time::timeout(inner.connect_timeout, dial)
            .await
            .map_err(|_| PoolError::ConnectTimeout)??;
        self.start_reaper();
        Ok(stream)
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

/// Settles the request body's framing headers the way hyper's client does: an empty body
/// sends none (a `Content-Length: 0` the client sent stays), a body of known length sends
/// `Content-Length`, any other body goes chunked.
fn framing(headers: &mut HeaderMap, body: &RequestBody) -> Sending {
    headers.remove(header::TRANSFER_ENCODING);
    if body.is_end_stream() {
        return Sending::Nothing;
    }
    match body.size_hint().exact() {
        Some(length) => {
            if !headers.contains_key(header::CONTENT_LENGTH) {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            }
            Sending::Length
        }
        None => {
            headers.remove(header::CONTENT_LENGTH);
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
            Sending::Chunked
        }
    }
}

/// The trailer fields a chunked request may pass on: those its `Trailer` header announces.
fn allowed_trailers(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::TRAILER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|s| HeaderName::from_bytes(s.trim().as_bytes()).ok())
        .collect()
}

/// `METHOD /path?query HTTP/1.1` and the header fields.
fn encode_head(method: &Method, uri: &Uri, headers: &HeaderMap) -> Vec<u8> {
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut size = method.as_str().len() + target.len() + 14;
    for (name, value) in headers {
        size += name.as_str().len() + value.len() + 4;
    }
    let mut head = Vec::with_capacity(size);
    head.extend_from_slice(method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// A response head as read, with the bytes that followed it.
struct Received {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    /// The hop-by-hop fields were left out of `headers` as they were read; otherwise they are
    /// removed once the framing is settled.
    hop_by_hop_left_out: bool,
    /// The version and `Connection` let the connection be kept.
    keep_alive: bool,
    /// `Transfer-Encoding` came, and its last coding is (or is not) `chunked`.
    transfer_encoding: Option<bool>,
    rest: Bytes,
    /// The upload was cut short by an early answer: the connection cannot be reused.
    interrupted: bool,
}

/// Writes the request, then reads up to the end of the response head (skipping interim 1xx
/// answers). A body is sent while watching for an answer that comes before it is all sent.
async fn exchange(
    stream: &mut TcpStream,
    head: &[u8],
    body: &mut RequestBody,
    sending: Sending,
    trailers: &[HeaderName],
    replayable: bool,
) -> Result<Received, Failed> {
    let mut answer = BytesMut::with_capacity(FIRST_READ);
    let mut interrupted = false;
    if sending == Sending::Nothing {
        write_first(stream, head).await?;
    } else {
        let (mut reader, mut writer) = stream.split();
        let mut upload = std::pin::pin!(send_body(&mut writer, head, body, sending, trailers));
        // The upstream closed its side mid-upload: the upload's own error says what happened.
        let mut closed = false;
        loop {
            tokio::select! {
                biased;
                sent = &mut upload => {
                    sent?;
                    break;
                }
                read = tokio::io::AsyncReadExt::read_buf(&mut reader, &mut answer), if !closed => match read {
                    Ok(0) => closed = true,
                    // An interim answer (`102`, `103`, an unasked `100`) does not stop the
                    // upload; a final one does, and the connection is not reused.
                    Ok(_) if !final_head_arrived(&mut answer) => {
                        if answer.capacity() - answer.len() < FIRST_READ / 2 {
                            answer.reserve(READ_CHUNK);
                        }
                    }
                    _ => {
                        interrupted = true;
                        break;
                    }
                },
            }
        }
    }
    loop {
        if !answer.is_empty() {
            match parse_head(answer.split().freeze())? {
                Head::Complete(mut received) => {
                    received.interrupted = interrupted;
                    return Ok(received);
                }
                Head::Partial(so_far) if so_far.len() >= MAX_HEAD => {
                    return Err(Failed::fatal(PoolError::Protocol(
                        "the response head is too large",
                    )))
                }
                Head::Partial(so_far) => answer = so_far,
            }
        }
        if answer.capacity() - answer.len() < FIRST_READ / 2 {
            answer.reserve(READ_CHUNK);
        }
        match tokio::io::AsyncReadExt::read_buf(stream, &mut answer).await {
            Ok(0) if answer.is_empty() => {
                return Err(Failed {
                    error: PoolError::Closed,
                    retry: replayable,
                })
            }
            Ok(0) => {
                return Err(Failed::fatal(PoolError::Protocol(
                    "the connection closed inside the response head",
                )))
            }
            Ok(_) => {}
            Err(e) => {
                let reset = matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                );
                return Err(Failed {
                    error: PoolError::Io(e),
                    retry: replayable && reset && answer.is_empty(),
                });
            }
        }
    }
}

/// Drops complete interim (1xx) heads at the front of `answer`; true once the head of a
/// final answer is complete (or cannot be parsed: [`parse_head`] then says why).
fn final_head_arrived(answer: &mut BytesMut) -> bool {
    loop {
        let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            answer,
            &mut fields,
        );
        match parsed {
            Ok(httparse::Status::Complete(n)) => {
                let code = response.code.unwrap_or(0);
                if !(100..200).contains(&code) || code == 101 {
                    return true;
                }
                answer.advance(n);
            }
            Ok(httparse::Status::Partial) => return answer.len() >= MAX_HEAD,
            Err(_) => return true,
        }
    }
}

/// The first write of a bodiless request: when it fails nothing was sent, so it may be
/// tried again.
async fn write_first(stream: &mut TcpStream, head: &[u8]) -> Result<(), Failed> {
    let mut written = 0;
    while written < head.len() {
        match stream.write(&head[written..]).await {
            Ok(0) => {
                return Err(Failed {
                    error: PoolError::Io(io::ErrorKind::WriteZero.into()),
                    retry: written == 0,
                })
            }
            Ok(n) => written += n,
            Err(e) => {
                return Err(Failed {
                    error: PoolError::Io(e),
                    retry: written == 0,
                })
            }
        }
    }
    Ok(())
}

/// Writes the head and the body, framed as `sending` says. Frames that are ready at once go
/// out with what precedes them in one write.
async fn send_body(
    writer: &mut (impl tokio::io::AsyncWrite + Unpin),
    head: &[u8],
    body: &mut RequestBody,
    sending: Sending,
    trailers: &[HeaderName],
) -> Result<(), Failed> {
    let mut out = BytesMut::with_capacity(head.len() + 512);
    out.extend_from_slice(head);
    // Part of the body is gone once a frame was polled: never sent again.
    let io = |e: io::Error| Failed::fatal(PoolError::Io(e));
    loop {
        let frame =
            match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await
            {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    if !out.is_empty() {
                        writer.write_all(&out).await.map_err(io)?;
                        out.clear();
                    }
                    std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
                }
            };
        match frame {
            None => break,
            Some(Err(e)) => return Err(Failed::fatal(PoolError::Body(e))),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if data.is_empty() {
                        continue;
                    }
                    if sending == Sending::Chunked {
                        out.extend_from_slice(format!("{:X}\r\n", data.len()).as_bytes());
                        out.extend_from_slice(&data);
                        out.extend_from_slice(b"\r\n");
                    } else {
                        out.extend_from_slice(&data);
                    }
                }
                Err(frame) => {
                    if let (Sending::Chunked, Ok(fields)) = (sending, frame.into_trailers()) {
                        out.extend_from_slice(b"0\r\n");
                        for (name, value) in &fields {
                            if trailers.contains(name) {
                                out.extend_from_slice(name.as_str().as_bytes());
                                out.extend_from_slice(b": ");
                                out.extend_from_slice(value.as_bytes());
                                out.extend_from_slice(b"\r\n");
                            }
                        }
                        out.extend_from_slice(b"\r\n");
                        writer.write_all(&out).await.map_err(io)?;
                        return Ok(());
                    }
                }
            },
        }
        if out.len() >= 64 * 1024 {
            writer.write_all(&out).await.map_err(io)?;
            out.clear();
        }
    }
    if sending == Sending::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        writer.write_all(&out).await.map_err(io)?;
    }
    Ok(())
}

/// What [`parse_head`] found.
enum Head {
    Complete(Received),
    /// More bytes are needed: the bytes so far, to read on after.
    Partial(BytesMut),
}

/// Parses a response head at the start of `bytes`. Interim (1xx) answers other than 101 are
/// dropped. Header values are slices of `bytes`: no copies.
fn parse_head(mut bytes: Bytes) -> Result<Head, Failed> {
    loop {
        let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let length = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            &bytes,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(Head::Partial(BytesMut::from(bytes))),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Failed::fatal(PoolError::Protocol(
                    "too many header fields in the response",
                )))
            }
            Err(_) => {
                return Err(Failed::fatal(PoolError::Protocol(
                    "the response head does not parse",
                )))
            }
        };
        let code = response.code.unwrap_or(0);
        if (100..200).contains(&code) && code != 101 {
            bytes.advance(length);
            continue;
        }
        let status = StatusCode::from_u16(code)
            .map_err(|_| Failed::fatal(PoolError::Protocol("invalid status code")))?;
        let version = if response.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let fields = &*response.headers;
        let named = |name: &'static str| {
            fields
                .iter()
                .filter(move |field| field.name.eq_ignore_ascii_case(name))
                .map(|field| field.value)
        };
        let transfer_encoding = named("transfer-encoding")
            .next()
            .is_some()
            .then(|| ends_chunked(named("transfer-encoding")));
        // Hop-by-hop fields need not be put in the map to be removed from it, unless
        // `Connection` names others, or a `Content-Length` beside `Transfer-Encoding` is
        // removed first (either takes the fields' order into account: see `header_map`).
        let remove_after = named("connection").any(super::forward::names_others)
            || (transfer_encoding.is_some() && named("content-length").next().is_some());
        let (headers, hop_by_hop_left_out) = match (!remove_after)
            .then(|| header_map(&bytes, fields, true))
            .transpose()?
            .flatten()
        {
            Some(headers) => (headers, true),
            None => (
                header_map(&bytes, fields, false)?.expect("every field is kept"),
                false,
            ),
        };
        return Ok(Head::Complete(Received {
            status,
            version,
            headers,
            hop_by_hop_left_out,
            keep_alive: keeps_alive(version, named("connection")),
            transfer_encoding,
            rest: bytes.slice(length..),
            interrupted: false,
        }));
    }
}

/// The header fields of a response head (slices of `bytes`) as a map. With `leave_out`, without
/// the hop-by-hop ones (and every field is still checked as it would be for the map, in the
/// same order, so a malformed head fails the same way); `None` when leaving them out would
/// put the rest in another order than removing them from the map would (a removal moves the
/// last field into the gap): a field of a new name came after one left out.
fn header_map(
    bytes: &Bytes,
    fields: &[httparse::Header<'_>],
    leave_out: bool,
) -> Result<Option<HeaderMap>, Failed> {
    let mut headers = HeaderMap::with_capacity(fields.len());
    let mut left_out = false;
    let value = |field: &httparse::Header<'_>| {
        HeaderValue::from_maybe_shared(bytes.slice_ref(field.value))
            .map_err(|_| Failed::fatal(PoolError::Protocol("invalid header value")))
    };
    for field in fields {
        // A hop-by-hop name is a valid one: only the value is left to check.
        if leave_out && super::forward::is_hop_by_hop_text(field.name.as_bytes()) {
            value(field)?;
            left_out = true;
            continue;
        }
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| Failed::fatal(PoolError::Protocol("invalid header name")))?;
        if !headers.append(name, value(field)?) && left_out {
            return Ok(None);
        }
    }
    Ok(Some(headers))
}

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug)]
enum Delimited {
    /// This many bytes to go.
    Length(u64),
    Chunked(Chunked),
    /// Up to the end of the connection.
    Close,
    Done,
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes to go.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: the trailer section up to its empty line.
    Trailers,
}

impl Received {
    /// How the body is delimited and whether the connection may be reused afterwards; leaves
    /// `headers` as the client gets them, without hop-by-hop fields.
    fn settle(&mut self, head_request: bool) -> Result<(Delimited, bool), PoolError> {
        let status = self.status;
        let headers = &mut self.headers;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // Only an upgrade request (which does not come here) may be switched.
            return Err(PoolError::Protocol(
                "101 to a request that asked no upgrade",
            ));
        }
        let mut reusable = !self.interrupted && self.keep_alive;
        let no_body =
            head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        let delimited = if no_body {
            Delimited::Done
        } else if let Some(chunked) = self.transfer_encoding {
            // Transfer-Encoding overrides Content-Length, and the pair is a sign of a
            // desynchronised peer: never reuse that connection.
            if headers.remove(header::CONTENT_LENGTH).is_some() {
                reusable = false;
            }
            if self.version == Version::HTTP_11 && chunked {
                Delimited::Chunked(Chunked::Size)
            } else {
                Delimited::Close
            }
        } else {
            match content_length(headers) {
                Ok(Some(0)) => Delimited::Done,
                Ok(Some(n)) => Delimited::Length(n),
                Ok(None) => Delimited::Close,
                Err(()) => return Err(PoolError::Protocol("invalid Content-Length")),
            }
        };
        if matches!(delimited, Delimited::Close) {
            reusable = false;
        }
        if !self.hop_by_hop_left_out {
            super::forward::strip_hop_by_hop(headers);
        }
        Ok((delimited, reusable))
    }

    /// The response, its body reading the rest from `stream`.
    fn into_response(
        mut self,
        stream: TcpStream,
        head_request: bool,
        pool: &Arc<Inner>,
    ) -> Result<Response<UpstreamBody>, PoolError> {
        let (delimited, reusable) = self.settle(head_request)?;
        let Received {
            status,
            version,
            headers,
            rest,
            ..
        } = self;
        let mut response = Response::new(UpstreamBody {
            kind: Kind::Own(OwnBody {
                stream: Some(stream),
                pending: rest,
                buf: BytesMut::new(),
                delimited,
                pool: reusable.then(|| pool.clone()),
            }),
        });
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        if let Kind::Own(body) = &mut response.body_mut().kind {
            if matches!(body.delimited, Delimited::Done) {
                // An empty body (HEAD, 204, 304, `Content-Length: 0`) may never be polled.
                body.finish();
            }
        }
        Ok(response)
    }
}

/// HTTP/1.1 keeps the connection unless `Connection: close`; 1.0 only with `keep-alive`.
/// `connection`: the values of the `Connection` fields.
fn keeps_alive<'a>(version: Version, connection: impl Iterator<Item = &'a [u8]>) -> bool {
    let mut close = false;
    let mut keep_alive = false;
    for value in connection {
        for token in value.split(|&b| b == b',') {
            let token = token.trim_ascii();
            close |= token.eq_ignore_ascii_case(b"close");
            keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    !close && (version == Version::HTTP_11 || keep_alive)
}

/// The last transfer coding is `chunked`. `transfer_encoding`: the values of the
/// `Transfer-Encoding` fields, in order.
fn ends_chunked<'a>(transfer_encoding: impl Iterator<Item = &'a [u8]>) -> bool {
    transfer_encoding
        .last()
        .and_then(|v| v.rsplit(|&b| b == b',').next())
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// `Content-Length`: one value, or the same value repeated (RFC 9110 §8.6); digits only.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ()> {
    let mut found: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(());
            }
            let n: u64 = std::str::from_utf8(part)
                .map_err(|_| ())?
                .parse()
                .map_err(|_| ())?;
            if found.is_some_and(|f| f != n) {
                return Err(());
            }
            found = Some(n);
        }
    }
    Ok(found)
}

impl Inner {
    /// The calling worker's stack.
    fn idle(&self) -> MutexGuard<'_, Vec<IdleConn>> {
        let slot = WORKER.with(Cell::get) % self.idle.len();
        self.idle[slot].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used connection still open. Closed and expired ones are dropped.
    fn take_idle(&self) -> Option<TcpStream> {
        let mut idle = self.idle();
        // Taken while forwarding a request: its start is "now" to within microseconds.
        let now = crate::clock::latest().instant;
        while let Some(conn) = idle.pop() {
            if now.duration_since(conn.since) <= self.idle_timeout && still_open(&conn.stream) {
                return Some(conn.stream);
            }
        }
        None
    }

    fn put(&self, stream: TcpStream) {
        let mut idle = self.idle();
        if idle.len() < self.max_idle {
            idle.push(IdleConn {
                stream,
                since: Instant::now(),
            });
        }
    }

    fn prune(&self, now: Instant) {
        for stack in &self.idle {
            stack.lock().unwrap_or_else(|p| p.into_inner()).retain(|c| {
                now.duration_since(c.since) <= self.idle_timeout && still_open(&c.stream)
            });
        }
    }
}

/// An idle connection is usable if nothing has arrived on it since its last response: no
/// close, no reset, no stray bytes. The reactor's readiness answers without a system call
/// while nothing happened; only a connection it reports readable is read to find out.
fn still_open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}

/// An upstream's response body, streamed to the client. Returns its connection to the pool
/// when it ends.
pub struct UpstreamBody {
    kind: Kind,
}

enum Kind {
    /// Through hyper's client (HTTP/2, TLS, upgrades): hyper pools those.
    Hyper(Incoming),
    Own(OwnBody),
}

/// A body read straight from the upstream connection.
struct OwnBody {
    /// `None` once the connection has gone back to the pool or been closed.
    stream: Option<TcpStream>,
    /// Bytes that came with the response head, not yet handed on.
    pending: Bytes,
    /// Bytes read since, not yet handed on.
    buf: BytesMut,
    delimited: Delimited,
    /// Where the connection goes when the body ends cleanly; `None`: it is closed.
    pool: Option<Arc<Inner>>,
}

impl UpstreamBody {
    /// A body whose connection is not pooled here (HTTP/2, TLS: hyper's client pools those).
    pub fn unpooled(inner: Incoming) -> Self {
        UpstreamBody {
            kind: Kind::Hyper(inner),
        }
    }

    /// The response this body belongs to came without hop-by-hop fields: this module's own
    /// client takes them out as it reads the head.
    pub fn hop_by_hop_removed(&self) -> bool {
        matches!(self.kind, Kind::Own(_))
    }
}

impl OwnBody {
    /// The body ended: the connection goes back to the pool if it may and nothing but this
    /// response came on it.
    fn finish(&mut self) {
        self.delimited = Delimited::Done;
        let stream = self.stream.take();
        if let (Some(stream), Some(pool)) = (stream, self.pool.take()) {
            if self.pending.is_empty() && self.buf.is_empty() {
                pool.put(stream);
            }
        }
    }

    fn fail(&mut self, error: PoolError) -> Poll<Option<Result<Frame<Bytes>, PoolError>>> {
        self.delimited = Delimited::Done;
        self.stream = None;
        self.pool = None;
        Poll::Ready(Some(Err(error)))
    }

    /// Reads more from the connection; `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(stream) = self.stream.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
            self.buf.reserve(READ_CHUNK * 2);
        }
        tokio_util::io::poll_read_buf(Pin::new(stream), cx, &mut self.buf)
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, PoolError>>> {
        loop {
            match &mut self.delimited {
                Delimited::Done => return Poll::Ready(None),
                Delimited::Length(left) => {
                    let data = if !self.pending.is_empty() {
                        let n = (*left).min(self.pending.len() as u64);
                        self.pending.split_to(n as usize)
                    } else if !self.buf.is_empty() {
                        let n = (*left).min(self.buf.len() as u64);
                        self.buf.split_to(n as usize).freeze()
                    } else {
                        Bytes::new()
                    };
                    if !data.is_empty() {
                        *left -= data.len() as u64;
                        if *left == 0 {
                            self.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Delimited::Close => {
                    if !self.pending.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(std::mem::take(
                            &mut self.pending,
                        )))));
                    }
                    if !self.buf.is_empty() {
                        let data = self.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Delimited::Chunked(state) => {
                    if !self.pending.is_empty() {
                        self.buf.extend_from_slice(&self.pending);
                        self.pending = Bytes::new();
                    }
                    match decode_chunked(state, &mut self.buf) {
                        Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Ok(Step::End(trailers)) => {
                            self.finish();
                            return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                        }
                        Ok(Step::More) => {}
                        Err(reason) => return self.fail(PoolError::Protocol(reason)),
                    }
                }
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) => {
                    if matches!(self.delimited, Delimited::Close) {
                        self.delimited = Delimited::Done;
                        self.stream = None;
                        return Poll::Ready(None);
                    }
                    return self.fail(PoolError::Closed);
                }
                Ok(_) => {}
                Err(e) => return self.fail(PoolError::Io(e)),
            }
        }
    }
}

/// What the chunked decoder made of the bytes it has.
enum Step {
    Data(Bytes),
    /// The body is complete, with its trailer fields if it had any.
    End(Option<HeaderMap>),
    /// More bytes are needed.
    More,
}

/// Longest chunk-size line accepted, extensions included.
const MAX_CHUNK_LINE: usize = 4096;
/// Longest trailer section accepted.
const MAX_TRAILERS: usize = 16 * 1024;

/// One step of the chunked decoder (RFC 9112 §7.1). Strict: CRLF line ends, hex sizes that fit
/// 64 bits, no bytes where a CRLF must be.
fn decode_chunked(state: &mut Chunked, buf: &mut BytesMut) -> Result<Step, &'static str> {
    loop {
        match *state {
            Chunked::Size => {
                let Some(end) = find_crlf(buf) else {
                    return if buf.len() > MAX_CHUNK_LINE {
                        Err("chunk-size line too long")
                    } else {
                        Ok(Step::More)
                    };
                };
                let line = &buf[..end];
                let digits = line
                    .iter()
                    .position(|b| !b.is_ascii_hexdigit())
                    .unwrap_or(line.len());
                if digits == 0 || digits > 16 {
                    return Err("invalid chunk size");
                }
                let rest = &line[digits..];
                // Extensions (`;name=value`) are allowed and ignored; nothing else may follow.
                if !rest.is_empty() {
                    let ext = rest.trim_ascii_start();
                    if !ext.starts_with(b";") || ext.iter().any(|&b| b == b'\r' || b == b'\n') {
                        return Err("invalid chunk size");
                    }
                }
                let size = u64::from_str_radix(
                    std::str::from_utf8(&line[..digits]).map_err(|_| "invalid chunk size")?,
                    16,
                )
                .map_err(|_| "invalid chunk size")?;
                buf.advance(end + 2);
                *state = if size == 0 {
                    Chunked::Trailers
                } else {
                    Chunked::Data(size)
                };
            }
            Chunked::Data(left) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = left.min(buf.len() as u64);
                let data = buf.split_to(n as usize).freeze();
                *state = if n == left {
                    Chunked::DataEnd
                } else {
                    Chunked::Data(left - n)
                };
                return Ok(Step::Data(data));
            }
            Chunked::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Step::More);
                }
                if &buf[..2] != b"\r\n" {
                    return Err("no CRLF after chunk data");
                }
                buf.advance(2);
                *state = Chunked::Size;
            }
            Chunked::Trailers => {
                if buf.starts_with(b"\r\n") {
                    buf.advance(2);
                    return Ok(Step::End(None));
                }
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    return if buf.len() > MAX_TRAILERS {
                        Err("trailer section too large")
                    } else {
                        Ok(Step::More)
                    };
                };
                let section = buf.split_to(end + 4).freeze();
                let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let parsed = match httparse::parse_headers(&section, &mut fields) {
                    Ok(httparse::Status::Complete((_, parsed))) => parsed,
                    _ => return Err("invalid trailer section"),
                };
                let mut trailers = HeaderMap::with_capacity(parsed.len());
                for field in parsed {
                    let name = HeaderName::from_bytes(field.name.as_bytes())
                        .map_err(|_| "invalid trailer name")?;
                    let value = HeaderValue::from_bytes(field.value)
                        .map_err(|_| "invalid trailer value")?;
                    trailers.append(name, value);
                }
                return Ok(Step::End(Some(trailers)));
            }
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = PoolError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.kind {
            Kind::Hyper(inner) => Pin::new(inner)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(PoolError::Request))),
            Kind::Own(body) => body.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Hyper(inner) => inner.is_end_stream(),
            Kind::Own(body) => matches!(body.delimited, Delimited::Done),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Hyper(inner) => inner.size_hint(),
            Kind::Own(body) => match body.delimited {
                Delimited::Done => SizeHint::with_exact(0),
                Delimited::Length(n) => SizeHint::with_exact(n),
                _ => SizeHint::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values of the `name` fields, as the head parser passes them.
    fn values(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &[u8]> {
        headers.get_all(name).into_iter().map(HeaderValue::as_bytes)
    }

    fn decode_all(wire: &[u8], piece: usize) -> Result<(Vec<u8>, Option<HeaderMap>), &'static str> {
        let mut state = Chunked::Size;
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for part in wire.chunks(piece) {
            buf.extend_from_slice(part);
            loop {
                match decode_chunked(&mut state, &mut buf)? {
                    Step::Data(d) => out.extend_from_slice(&d),
                    Step::End(_) if !buf.is_empty() => return Err("bytes after the body"),
                    Step::End(t) => return Ok((out, t)),
                    Step::More => break,
                }
            }
        }
        Err("incomplete")
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let wire = b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\n\r\n";
        for piece in 1..=wire.len() {
            let (data, trailers) = decode_all(wire, piece).unwrap();
            assert_eq!(data, b"hello 0123456789", "piece {piece}");
            assert!(trailers.is_none());
        }
    }

    #[test]
    fn chunked_trailers_are_returned() {
        let wire = b"3\r\nabc\r\n0\r\nx-sum: 1\r\nx-other: 2\r\n\r\n";
        for piece in [1, 2, 7, wire.len()] {
            let (data, trailers) = decode_all(wire, piece).unwrap();
            assert_eq!(data, b"abc");
            let t = trailers.unwrap();
            assert_eq!(t["x-sum"], "1");
            assert_eq!(t["x-other"], "2");
        }
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for wire in [
            &b"g\r\nabc\r\n0\r\n\r\n"[..],
            b"3\nabc\r\n0\r\n\r\n",
            b"3\r\nabcd\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"\r\n",
            b"3 x\r\nabc\r\n0\r\n\r\n",
            b"-3\r\nabc\r\n0\r\n\r\n",
        ] {
            assert!(
                decode_all(wire, wire.len()).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn content_length_must_be_one_number() {
        let mut h = HeaderMap::new();
        assert_eq!(content_length(&h), Ok(None));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert_eq!(content_length(&h), Ok(Some(12)));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("12, 12"));
        assert_eq!(content_length(&h), Ok(Some(12)));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("13"));
        assert_eq!(content_length(&h), Err(()));
        for bad in ["+1", "-1", "1 2", "", "0x1", "99999999999999999999"] {
            let mut h = HeaderMap::new();
            h.append(header::CONTENT_LENGTH, HeaderValue::from_static(bad));
            assert_eq!(content_length(&h), Err(()), "{bad}");
        }
    }

    #[test]
    fn interim_answers_are_skipped_and_the_head_is_split_from_the_body() {
        let wire = Bytes::from_static(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: 1\r\nx-a: 2\r\n\r\nok",
        );
        let Ok(Head::Complete(received)) = parse_head(wire) else {
            panic!("head not parsed")
        };
        assert_eq!(received.status, StatusCode::OK);
        assert_eq!(received.headers.get_all("x-a").iter().count(), 2);
        assert!(received.headers.get("link").is_none());
        assert_eq!(&received.rest[..], b"ok");
    }

    #[test]
    fn a_partial_head_asks_for_more() {
        let wire = Bytes::from_static(b"HTTP/1.1 200 OK\r\ncontent-len");
        let Ok(Head::Partial(so_far)) = parse_head(wire) else {
            panic!("a partial head was not asked to be read on")
        };
        assert_eq!(&so_far[..], b"HTTP/1.1 200 OK\r\ncontent-len");
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        let mut h = HeaderMap::new();
        assert!(keeps_alive(
            Version::HTTP_11,
            values(&h, header::CONNECTION)
        ));
        assert!(!keeps_alive(
            Version::HTTP_10,
            values(&h, header::CONNECTION)
        ));
        h.insert(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        assert!(keeps_alive(
            Version::HTTP_10,
            values(&h, header::CONNECTION)
        ));
        h.insert(header::CONNECTION, HeaderValue::from_static("foo, close"));
        assert!(!keeps_alive(
            Version::HTTP_11,
            values(&h, header::CONNECTION)
        ));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// The header fields, framing and reuse of a response head to a request that asked no
        /// upgrade, the way they were found before hop-by-hop fields were left out as the head
        /// is read: every field in the map, `Content-Length` removed beside
        /// `Transfer-Encoding`, then the hop-by-hop fields removed from the map.
        fn reference(wire: &[u8], head_request: bool) -> Option<(Vec<String>, String, bool)> {
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut fields);
            let Ok(httparse::Status::Complete(_)) = response.parse(wire) else {
                return None;
            };
            let mut headers = HeaderMap::new();
            for field in response.headers.iter() {
                headers.append(
                    HeaderName::from_bytes(field.name.as_bytes()).ok()?,
                    HeaderValue::from_bytes(field.value).ok()?,
                );
            }
            let mut reusable = keeps_alive(Version::HTTP_11, values(&headers, header::CONNECTION));
            let delimited = if head_request {
                Delimited::Done
            } else if headers.contains_key(header::TRANSFER_ENCODING) {
                if headers.remove(header::CONTENT_LENGTH).is_some() {
                    reusable = false;
                }
                if ends_chunked(values(&headers, header::TRANSFER_ENCODING)) {
                    Delimited::Chunked(Chunked::Size)
                } else {
                    Delimited::Close
                }
            } else {
                match content_length(&headers) {
                    Ok(Some(0)) => Delimited::Done,
                    Ok(Some(n)) => Delimited::Length(n),
                    Ok(None) => Delimited::Close,
                    Err(()) => return None,
                }
            };
            if matches!(delimited, Delimited::Close) {
                reusable = false;
            }
            super::super::super::forward::strip_hop_by_hop(&mut headers);
            let listed = headers.iter().map(|(n, v)| format!("{n}: {v:?}")).collect();
            Some((listed, format!("{delimited:?}"), reusable))
        }

        /// A chunked encoding of `chunks`, with an extension on every other size line.
        fn encode(chunks: &[Vec<u8>], trailer: bool) -> Vec<u8> {
            let mut wire = Vec::new();
            for (i, chunk) in chunks.iter().filter(|c| !c.is_empty()).enumerate() {
                wire.extend_from_slice(format!("{:x}", chunk.len()).as_bytes());
                if i % 2 == 1 {
                    wire.extend_from_slice(b";name=\"v\"");
                }
                wire.extend_from_slice(b"\r\n");
                wire.extend_from_slice(chunk);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n");
            if trailer {
                wire.extend_from_slice(b"x-digest: abc\r\n");
            }
            wire.extend_from_slice(b"\r\n");
            wire
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn any_chunking_read_in_any_pieces_decodes_to_the_data(
                chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8),
                piece in 1usize..64,
                trailer in any::<bool>(),
            ) {
                let wire = encode(&chunks, trailer);
                let (data, trailers) = decode_all(&wire, piece).expect("a valid encoding");
                prop_assert_eq!(data, chunks.concat());
                prop_assert_eq!(trailers.is_some(), trailer);
            }

            #[test]
            fn arbitrary_bytes_never_panic_the_decoders(
                wire in prop::collection::vec(any::<u8>(), 0..400),
                piece in 1usize..32,
            ) {
                let _ = decode_all(&wire, piece);
                let _ = parse_head(Bytes::from(wire.clone()));
                let mut answer = BytesMut::from(&wire[..]);
                let _ = final_head_arrived(&mut answer);
            }

            /// Hop-by-hop fields left out as the head is read give what removing them from
            /// the whole map did: the same fields in the same order, the same framing.
            #[test]
            fn leaving_hop_by_hop_fields_out_changes_nothing(
                fields in prop::collection::vec((0usize..10, 0usize..9, any::<bool>()), 0..10),
                head_request in any::<bool>(),
            ) {
                const NAMES: [&str; 10] = [
                    "x-a", "x-b", "x-c", "connection", "te", "keep-alive", "content-length",
                    "transfer-encoding", "upgrade", "content-type",
                ];
                const VALUES: [&str; 9] = [
                    "1", "keep-alive", "close", "x-a", "chunked", "gzip, chunked",
                    "Keep-Alive, X-B", "5", "",
                ];
                let mut wire = b"HTTP/1.1 200 OK\r\n".to_vec();
                for &(name, value, upper) in &fields {
                    let name = if upper { NAMES[name].to_ascii_uppercase() } else { NAMES[name].to_owned() };
                    wire.extend_from_slice(format!("{name}: {}\r\n", VALUES[value]).as_bytes());
                }
                wire.extend_from_slice(b"\r\n");
                let listed = |headers: &HeaderMap| {
                    headers.iter().map(|(n, v)| format!("{n}: {v:?}")).collect::<Vec<_>>()
                };
                let got = match parse_head(Bytes::from(wire.clone())) {
                    Ok(Head::Complete(mut received)) => received
                        .settle(head_request)
                        .ok()
                        .map(|(delimited, reusable)| (listed(&received.headers), format!("{delimited:?}"), reusable)),
                    _ => None,
                };
                prop_assert_eq!(got, reference(&wire, head_request));
            }

            #[test]
            fn a_response_head_and_its_body_split_where_the_head_ends(
                names in prop::collection::vec("[a-z][a-z0-9-]{0,12}", 0..10),
                body in prop::collection::vec(any::<u8>(), 0..200),
            ) {
                let mut wire = b"HTTP/1.1 200 OK\r\n".to_vec();
                for (i, name) in names.iter().enumerate() {
                    wire.extend_from_slice(format!("x-{name}: v{i}\r\n").as_bytes());
                }
                wire.extend_from_slice(b"\r\n");
                wire.extend_from_slice(&body);
                let Ok(Head::Complete(received)) = parse_head(Bytes::from(wire)) else {
                    return Err(TestCaseError::fail("a complete head did not parse"));
                };
                prop_assert_eq!(&received.rest[..], &body[..]);
                let fields: usize = received.headers.keys().map(|k| received.headers.get_all(k).iter().count()).sum();
                prop_assert_eq!(fields, names.len());
            }
        }
    }

    #[test]
    fn the_last_coding_decides_chunked() {
        let mut h = HeaderMap::new();
        h.append(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("gzip, chunked"),
        );
        assert!(ends_chunked(values(&h, header::TRANSFER_ENCODING)));
        h.append(header::TRANSFER_ENCODING, HeaderValue::from_static("gzip"));
        assert!(!ends_chunked(values(&h, header::TRANSFER_ENCODING)));
    }
}
