//! The gateway's own HTTP/1.1 reader and writer for clear-text client connections, for the
//! requests almost every API call makes: HTTP/1.1, no upgrade, no expectation, and no body or a
//! small one (`Content-Length`, up to 64 KiB) that arrived whole with its head.
//!
//! It parses the head with `httparse` (the parser hyper uses) into a request whose header
//! values and body are slices of the bytes read, runs [`pipeline::handle`] in the connection's
//! own task, and writes the response straight to the socket: no dispatcher, no channel, and no
//! buffer held while the connection is idle.
//!
//! Anything else — a chunked or larger body, one not all there once the head is (after one
//! more read), `Expect`, `Upgrade`, `CONNECT`, HTTP/1.0, a head `httparse` or `http` refuses, a
//! head over the size limit — hands the connection, with every byte read so far, to hyper's
//! HTTP/1 server for the rest of its life ([`End::HandOff`]). So every unusual or malformed
//! request is still judged by hyper, exactly as before; this module only ever serves requests
//! that hyper would have accepted (the `h1_request` fuzz target and a property test check it
//! against hyper's own server), and answers them as hyper would:
//!
//! - framing by RFC 9112 §6: no body for HEAD, 1xx, 204 and 304; `content-length` when the
//!   body's size is known, `transfer-encoding: chunked` otherwise;
//! - a `date` header, `connection: close` when the connection will close (the client asked,
//!   or the listener is draining);
//! - keep-alive with pipelining: bytes after one request are the next one;
//! - the head timeout counted from the end of the previous response (from the accept for the
//!   first request), and a client that closes while its request is in flight cancels it;
//! - trailers are not written: the only responses with a body of unknown length come from
//!   upstreams, whose `Trailer` field is removed as hop-by-hop, and hyper writes none then.

use std::future::{poll_fn, Future};
use std::io;
use std::io::Write as _;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::gateway::Gateway;
use crate::pipeline::{self, ClientBody, Peer};

/// hyper's limit on a request's header fields; more is answered 431 (by hyper, after the
/// hand-off).
const MAX_HEADERS: usize = 100;
/// The largest request body read here, when it has come whole with its head; larger ones, and
/// any that is not all there once the head is, stream through hyper.
const BODY_MAX: usize = 64 * 1024;
/// hyper's limit on a request target; longer is answered 414 (by hyper).
const MAX_URI_LEN: usize = (u16::MAX - 1) as usize;
/// A read takes at least this much room, and asks for this much when it needs more.
const READ_MIN: usize = 1024;
const READ_SIZE: usize = 4096;
/// Body data up to this size is copied into the write buffer (one write for head and body);
/// larger pieces are written on their own.
const COPY_MAX: usize = 16 * 1024;

/// What a connection's listener gives this module.
pub(super) struct Serve<'a> {
    pub gateway: &'a Arc<Gateway>,
    pub peer: &'a Arc<Peer>,
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    /// When the first request head must have arrived by.
    pub first_deadline: Instant,
    /// Set once a request has been served (see `FirstRequest` in the listener).
    pub started: &'a AtomicBool,
}

/// How a connection left this module.
pub(super) enum End {
    /// Closed, or to be dropped: the client left, timed out, asked to close, or the listener
    /// drained.
    Closed,
    /// Not a request for this module: hyper serves the connection from here on, starting with
    /// these bytes (already read from the socket).
    HandOff(Bytes),
}

/// Serves `stream` until it ends or has to go to hyper.
pub(super) async fn serve(
    stream: &mut TcpStream,
    s: Serve<'_>,
    drain: &mut watch::Receiver<bool>,
) -> io::Result<End> {
    let mut buf = BytesMut::new();
    // The head timeout: `deadline` moves on after every answer, the timer only when it goes
    // off before it (once per timeout at most, rather than a timer reset per request).
    let mut deadline = s.first_deadline;
    let mut timeout = pin!(tokio::time::sleep_until(deadline));
    loop {
        // 1. A whole head: parsed from what is buffered, else read until it is.
        // Set once a whole head's body was found not all read: one more read is tried at once.
        let mut body_wait = false;
        let (request, keep_alive) = loop {
            if !buf.is_empty() {
                let bytes = std::mem::take(&mut buf).freeze();
                match parse(&bytes, s.max_header_bytes) {
                    Parsed::Request {
                        request,
                        len,
                        keep_alive,
                    } => {
                        let rest = bytes.slice(len..);
                        if !rest.is_empty() {
                            // Pipelined: the next request's first bytes.
                            buf = BytesMut::from(&rest[..]);
                        }
                        break (request, keep_alive);
                    }
                    Parsed::Partial if bytes.len() < s.max_header_bytes => {
                        buf = BytesMut::from(bytes);
                    }
                    Parsed::Body { whole } if !body_wait => {
                        // Often the rest came in the same burst but past the read's room:
                        // read what is there now, without waiting, and look again.
                        body_wait = true;
                        buf = BytesMut::from(bytes);
                        buf.reserve(whole - buf.len());
                        let read = poll_fn(|cx| Poll::Ready(read_some(stream, cx, &mut buf)));
                        if let Poll::Ready(read) = read.await {
                            if read? == 0 {
                                return Ok(End::Closed);
                            }
                        }
                        continue;
                    }
                    Parsed::Partial | Parsed::Body { .. } | Parsed::Unusual => {
                        return Ok(End::HandOff(bytes))
                    }
                }
            } else if draining(drain) {
                return Ok(End::Closed);
            }
            tokio::select! {
                biased;
                read = poll_fn(|cx| read_some(stream, cx, &mut buf)) => {
                    if read? == 0 {
                        return Ok(End::Closed);
                    }
                }
                () = timeout.as_mut() => {
                    if timeout.deadline() < deadline {
                        timeout.as_mut().reset(deadline);
                        continue;
                    }
                    tracing::debug!(peer = %s.peer.addr, "no request head within the head timeout");
                    return Ok(End::Closed);
                }
                _ = drain.changed(), if buf.is_empty() => {}
            }
        };
        s.started.store(true, Ordering::Relaxed);
        // The handler's future and the answer's are boxed, once per request each: they take
        // far more room than waiting for a head, and an idle connection should not carry it.
        // (Built inside `Box::pin(..)`, not moved there: a move copies the whole future.)
        let head_request = request.method() == Method::HEAD;
        let handled = Box::pin(pipeline::handle(
            s.gateway.clone(),
            request,
            s.peer.clone(),
            "http",
        ));
        if !Box::pin(respond(
            stream,
            &s,
            handled,
            head_request,
            keep_alive,
            &mut buf,
            drain,
        ))
        .await?
        {
            let _ = stream.shutdown().await;
            return Ok(End::Closed);
        }
        // From the answer (the clock was read as it was ready, microseconds ago).
        deadline = Instant::from_std(crate::clock::latest().instant) + s.header_timeout;
    }
}

/// Answers one request: `Ok(true)` if the connection can carry the next one.
async fn respond(
    stream: &mut TcpStream,
    s: &Serve<'_>,
    handled: Pin<Box<impl Future<Output = Response<pipeline::forward::Body>>>>,
    head_request: bool,
    keep_alive: bool,
    buf: &mut BytesMut,
    drain: &watch::Receiver<bool>,
) -> io::Result<bool> {
    // While it runs, a client that leaves cancels it (and what it sends is kept in `buf`).
    let Some(response) = unless_client_leaves(handled, stream, buf, s.max_header_bytes).await?
    else {
        return Ok(false);
    };
    let keep_alive = keep_alive && !draining(drain);
    write_response(
        stream,
        response,
        head_request,
        keep_alive,
        buf,
        s.max_header_bytes,
    )
    .await
}

/// Has the listener started draining (or gone)?
fn draining(drain: &watch::Receiver<bool>) -> bool {
    *drain.borrow() || drain.has_changed().is_err()
}

/// Once the socket has something, reads it into `buf` (`Ok(0)` at its end). Room is made only
/// then, so a connection waiting for its next request holds no buffer.
fn read_some(
    stream: &mut TcpStream,
    cx: &mut std::task::Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    std::task::ready!(stream.poll_read_ready(cx))?;
    if buf.capacity() - buf.len() < READ_MIN {
        buf.reserve(READ_SIZE);
    }
    let read = tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf);
    if read.is_pending() && buf.is_empty() {
        // Readiness went stale: give the room back while waiting again.
        *buf = BytesMut::new();
    }
    read
}

/// Runs `work` to its end, unless the client closes its side first (then `None`: dropping
/// `work` cancels the request, as hyper does). Whatever the client sends meanwhile (a
/// pipelined request) is kept in `buf`, up to `limit` bytes; after that it is left unread.
async fn unless_client_leaves<T>(
    work: impl Future<Output = T>,
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    limit: usize,
) -> io::Result<Option<T>> {
    let mut work = pin!(work);
    loop {
        tokio::select! {
            biased;
            done = work.as_mut() => return Ok(Some(done)),
            read = poll_fn(|cx| read_some(stream, cx, buf)), if buf.len() < limit => {
                if read? == 0 {
                    return Ok(None);
                }
            }
        }
    }
}

/// The outcome of parsing what a client has sent so far.
#[allow(clippy::large_enum_variant)] // returned once per request and taken apart at once
pub(crate) enum Parsed {
    Request {
        request: Request<ClientBody>,
        /// The length of the head and body in bytes; anything after it is the next request.
        len: usize,
        keep_alive: bool,
    },
    /// Not a whole head yet.
    Partial,
    /// A whole head, but its (small) body is not all here: the request takes `whole` bytes.
    Body { whole: usize },
    /// For hyper to serve: not a plain bodiless HTTP/1.1 request, or not one that parses.
    Unusual,
}

/// Parses a request head at the start of `bytes`, as hyper's server would (same parser, same
/// limits, same `http` types); header values and the target are slices of `bytes`.
pub(crate) fn parse(bytes: &Bytes, max_head: usize) -> Parsed {
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut []);
    let mut len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut head,
        bytes,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Unusual,
    };
    let (Some(method), Some(target), Some(1)) = (head.method, head.path, head.version) else {
        return Parsed::Unusual;
    };
    if len > max_head || target.len() > MAX_URI_LEN {
        return Parsed::Unusual;
    }
    let method = match method {
        "GET" => Method::GET,
        "HEAD" => Method::HEAD,
        "DELETE" => Method::DELETE,
        "OPTIONS" => Method::OPTIONS,
        other => match Method::from_bytes(other.as_bytes()) {
            Ok(m) if m != Method::CONNECT => m,
            _ => return Parsed::Unusual,
        },
    };
    let Ok(uri) = Uri::from_maybe_shared(bytes.slice_ref(target.as_bytes())) else {
        return Parsed::Unusual;
    };
    // Room for what the forwarding adds (X-Forwarded-*, the identity fields) without growing.
    let mut headers = HeaderMap::with_capacity(head.headers.len() + 10);
    let mut keep_alive = true;
    let mut length: Option<u64> = None;
    for field in head.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(field.name.as_bytes()) else {
            return Parsed::Unusual;
        };
        match name {
            header::TRANSFER_ENCODING | header::UPGRADE | header::EXPECT => return Parsed::Unusual,
            header::CONTENT_LENGTH => match (length, parse_length(field.value)) {
                (_, None) => return Parsed::Unusual,
                (None, n) => length = n,
                // A repeat of the same length is dropped, as hyper does; another is hyper's
                // to refuse.
                (Some(first), Some(n)) if first == n => continue,
                (Some(_), Some(_)) => return Parsed::Unusual,
            },
            header::CONNECTION if has_token(field.value, b"close") => keep_alive = false,
            _ => {}
        }
        let Ok(value) = HeaderValue::from_maybe_shared(bytes.slice_ref(field.value)) else {
            return Parsed::Unusual;
        };
        headers.append(name, value);
    }
    // A body is taken only whole, and small: a larger or unfinished one streams through hyper.
    let body = match length {
        None | Some(0) => ClientBody::Empty,
        Some(n) if n > BODY_MAX as u64 => return Parsed::Unusual,
        Some(n) => {
            let end = len + n as usize;
            if bytes.len() < end {
                return Parsed::Body { whole: end };
            }
            let body = bytes.slice(len..end);
            len = end;
            ClientBody::Full(Some(body))
        }
    };
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Parsed::Request {
        request,
        len,
        keep_alive,
    }
}

/// Does a comma-separated field value hold `token` (ASCII case-insensitive)? As hyper reads
/// `Connection`, a value with bytes outside visible ASCII holds no token at all.
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        && value
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// How the response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Exactly this many bytes to go.
    Length(u64),
    Chunked,
}

/// Writes `response`. `Ok(true)` if the connection can carry the next request.
async fn write_response(
    stream: &mut TcpStream,
    response: Response<pipeline::forward::Body>,
    head_request: bool,
    keep_alive: bool,
    buf: &mut BytesMut,
    limit: usize,
) -> io::Result<bool> {
    let (parts, body) = response.into_parts();
    let mut out = Vec::with_capacity(256 + parts.headers.len() * 32);
    let Some((framing, keep_alive)) = encode_head(
        parts.status,
        &parts.headers,
        &body,
        head_request,
        keep_alive,
        &mut out,
    ) else {
        // A 1xx the gateway cannot carry without an upgrade: as hyper, a 500 and close.
        out.clear();
        encode_head(
            StatusCode::INTERNAL_SERVER_ERROR,
            &HeaderMap::new(),
            &http_body_util::Either::Right(http_body_util::Full::new(Bytes::new())),
            head_request,
            false,
            &mut out,
        );
        stream.write_all(&out).await?;
        return Ok(false);
    };
    let mut body = pin!(body);
    let mut left = framing;
    if left == Framing::Length(0) {
        // Out with the answers of the connections ready together with this one.
        yield_to_others().await;
        stream.write_all(&out).await?;
        return Ok(keep_alive);
    }
    loop {
        // Take what the body has ready; write out only when it has nothing more for now.
        let frame = match poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if !out.is_empty() {
                    stream.write_all(&out).await?;
                    out.clear();
                }
                let next = poll_fn(|cx| body.as_mut().poll_frame(cx));
                match unless_client_leaves(next, stream, buf, limit).await? {
                    Some(frame) => frame,
                    None => return Ok(false),
                }
            }
        };
        let data = match frame {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_trailers) => continue,
            },
            Some(Err(e)) => {
                // Cut short: the client must not take a truncated body for a whole one.
                tracing::debug!(error = %e, "response body failed; closing the connection");
                let _ = stream.write_all(&out).await;
                return Ok(false);
            }
        };
        if data.is_empty() {
            continue;
        }
        match &mut left {
            Framing::Length(n) => {
                if data.len() as u64 > *n {
                    tracing::debug!("response body longer than its content-length; closing");
                    let _ = stream.write_all(&out).await;
                    return Ok(false);
                }
                *n -= data.len() as u64;
            }
            Framing::Chunked => {
                let _ = write!(out, "{:X}\r\n", data.len());
            }
        }
        put(stream, &mut out, data).await?;
        if left == Framing::Chunked {
            out.extend_from_slice(b"\r\n");
        }
    }
    match left {
        Framing::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
        Framing::Length(0) => {}
        Framing::Length(_) => {
            tracing::debug!("response body shorter than its content-length; closing");
            let _ = stream.write_all(&out).await;
            return Ok(false);
        }
    }
    // Out with the answers of the connections ready together with this one.
    yield_to_others().await;
    stream.write_all(&out).await?;
    Ok(keep_alive)
}

/// Lets the tasks already queued on this worker run before going on: the caller goes to the
/// back of the run queue (woken at once, not after the next look at the sockets, as
/// `tokio::task::yield_now` would).
///
/// An answer is written after it, so the answers of the connections that became ready together
/// go out together, at the end of the worker's pass, rather than one per task with a
/// request's handling in between. A client on another core (wrk in the benchmark; a busy
/// client or load balancer in general) is then woken once for several answers instead of
/// once each: in the split benchmark its context switches per request fell from 0.086 to
/// 0.052 and the gateway's throughput rose by 2–15% per round (BENCHMARKS.md row 34). It
/// costs one more poll of the connection task; with nothing else queued the answer goes out
/// at once.
async fn yield_to_others() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// Appends `data` to `out`, or — when it is large — writes `out` and then `data` itself.
async fn put(stream: &mut TcpStream, out: &mut Vec<u8>, data: Bytes) -> io::Result<()> {
    if data.len() <= COPY_MAX {
        out.extend_from_slice(&data);
        return Ok(());
    }
    if !out.is_empty() {
        stream.write_all(out).await?;
        out.clear();
    }
    let mut data = data;
    while data.has_remaining() {
        let n = stream.write(&data).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        data.advance(n);
    }
    Ok(())
}

/// Writes the status line and fields into `out`, and returns the body's framing and whether
/// the connection stays open; `None` for a 1xx status (not a response this path can send).
fn encode_head(
    status: StatusCode,
    headers: &HeaderMap,
    body: &pipeline::forward::Body,
    head_request: bool,
    mut keep_alive: bool,
    out: &mut Vec<u8>,
) -> Option<(Framing, bool)> {
    if status.is_informational() {
        return None;
    }
    // RFC 9110 §6.4.1, §15.4.5: no content with these.
    let no_content = matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    let can_have_body = !head_request && !no_content;
    // The body's own idea of its length; `None` when it has nothing at all.
    let known = if body.is_end_stream() {
        None
    } else {
        Some(body.size_hint().exact())
    };
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut framing = None;
    let mut wrote_date = false;
    let mut wrote_close = false;
    for (name, value) in headers {
        match *name {
            header::CONTENT_LENGTH => {
                if framing.is_some() || no_content {
                    continue;
                }
                let declared = match known {
                    Some(Some(n)) => n,
                    Some(None) => match parse_length(value.as_bytes()) {
                        Some(n) => n,
                        None => continue,
                    },
                    // Nothing to send: the field stays only on a HEAD answer, where it says
                    // what a GET would have had.
                    None if head_request => parse_length(value.as_bytes()).unwrap_or(0),
                    None => continue,
                };
                framing = Some(Framing::Length(declared));
            }
            // Removed from every upstream response as hop-by-hop; the gateway's own set none.
            header::TRANSFER_ENCODING | header::TRAILER => continue,
            header::CONNECTION if has_token(value.as_bytes(), b"close") => {
                keep_alive = false;
                wrote_close = true;
            }
            header::DATE => wrote_date = true,
            _ => {}
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = match framing {
        Some(f) => f,
        None => match known {
            Some(None) => {
                if can_have_body {
                    out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                }
                Framing::Chunked
            }
            None | Some(Some(0)) => {
                if !no_content && !head_request {
                    out.extend_from_slice(b"content-length: 0\r\n");
                }
                Framing::Length(0)
            }
            Some(Some(n)) => {
                if !no_content {
                    out.extend_from_slice(b"content-length: ");
                    let _ = write!(out, "{n}\r\n");
                }
                Framing::Length(n)
            }
        },
    };
    let framing = if can_have_body {
        framing
    } else {
        Framing::Length(0)
    };
    if !keep_alive && !wrote_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        date::extend(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Some((framing, keep_alive))
}

/// A `Content-Length` value: one decimal number (RFC 9110 §8.6).
fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The `date` field's value, formatted once a second per thread.
mod date {
    use std::cell::RefCell;

    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }

    pub(super) fn extend(out: &mut Vec<u8>) {
        // Written as the answer is ready, when the request took its latest reading.
        let now = crate::clock::latest();
        let secs = now.unix_seconds();
        CACHED.with(|cached| {
            let mut cached = cached.borrow_mut();
            if cached.0 != secs || cached.1.is_empty() {
                *cached = (secs, httpdate::fmt_http_date(now.wall));
            }
            out.extend_from_slice(cached.1.as_bytes());
        });
    }
}

/// A connection handed to hyper: the bytes already read come first, then the socket.
pub(super) struct Rewind<T> {
    read: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub(super) fn new(read: Bytes, inner: T) -> Self {
        Rewind { read, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The check behind the `h1_request` fuzz target and the property test: a request this module
/// serves must be exactly the one hyper's own HTTP/1 server would hand its service.
pub(crate) mod oracle {
    use std::sync::Mutex;

    use tokio::io::AsyncReadExt;

    use super::*;

    /// What [`parse`] did with an input (when hyper agreed). A head whose body is not all
    /// there counts as handed off: [`serve`] tries one more read, then hands it over.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Outcome {
        Served,
        Partial,
        HandedOff,
    }

    /// A request as a service sees it: method, target, version, fields in order, and body.
    type Seen = (
        String,
        String,
        http::Version,
        Vec<(String, Vec<u8>)>,
        Vec<u8>,
    );

    fn seen<B>(request: &Request<B>, body: Vec<u8>) -> Seen {
        let fields = request
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        (
            request.method().to_string(),
            request.uri().to_string(),
            request.version(),
            fields,
            body,
        )
    }

    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the oracle");
    }

    /// What hyper's HTTP/1 server makes of `wire`: the first request its service got, and
    /// whether its answer kept the connection open. `None` if the service was not called
    /// within two seconds (hyper refused the head, or waits for more).
    fn hyper_reads(wire: &[u8]) -> Option<(Seen, bool)> {
        RUNTIME.with(|runtime| {
            runtime.block_on(async {
                let (mut client, server) = tokio::io::duplex(1 << 20);
                let first = Arc::new(Mutex::new(None));
                let record = first.clone();
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let record = record.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = http_body_util::BodyExt::collect(body)
                                .await
                                .map(|b| b.to_bytes().to_vec())
                                .unwrap_or_default();
                            let req = Request::from_parts(parts, ());
                            record
                                .lock()
                                .expect("not poisoned")
                                .get_or_insert_with(|| seen(&req, body));
                            Ok::<_, std::convert::Infallible>(Response::new(String::new()))
                        }
                    });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(server), service);
                tokio::spawn(conn);
                client.write_all(wire).await.ok()?;
                let mut answer = Vec::new();
                let mut chunk = [0u8; 4096];
                let read = async {
                    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
                        match client.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => answer.extend_from_slice(&chunk[..n]),
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), read).await;
                let first = first.lock().expect("not poisoned").take()?;
                let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
                Some((first, !text.contains("connection: close")))
            })
        })
    }

    /// Parses `wire` as [`serve`] would; when it would serve the request, checks it against
    /// hyper's reading of the same bytes and panics on any difference.
    pub fn check(wire: &[u8], max_head: usize) -> Outcome {
        match parse(&Bytes::copy_from_slice(wire), max_head) {
            Parsed::Partial => Outcome::Partial,
            Parsed::Unusual | Parsed::Body { .. } => Outcome::HandedOff,
            Parsed::Request {
                request,
                len,
                keep_alive,
            } => {
                assert!(len > 0 && len <= wire.len(), "request length {len}");
                // The request alone: what follows it is the next one (read ahead, hyper may
                // already refuse it and close after this answer; served here, it would be
                // handed to hyper, which answers it and closes then).
                let Some((theirs, kept)) = hyper_reads(&wire[..len]) else {
                    panic!("served here but refused by hyper: {wire:?}");
                };
                let body = match request.body() {
                    ClientBody::Full(Some(body)) => body.to_vec(),
                    _ => Vec::new(),
                };
                assert_eq!(
                    seen(&request, body),
                    theirs,
                    "a different request than hyper's: {wire:?}"
                );
                assert_eq!(
                    keep_alive, kept,
                    "a different keep-alive than hyper's: {wire:?}"
                );
                Outcome::Served
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 64 * 1024;

    fn parsed(wire: &str) -> Parsed {
        parse(&Bytes::copy_from_slice(wire.as_bytes()), LIMIT)
    }

    fn request(wire: &str) -> (Request<ClientBody>, usize, bool) {
        match parsed(wire) {
            Parsed::Request {
                request,
                len,
                keep_alive,
            } => (request, len, keep_alive),
            Parsed::Partial => panic!("partial: {wire:?}"),
            Parsed::Body { .. } => panic!("waiting for the body: {wire:?}"),
            Parsed::Unusual => panic!("unusual: {wire:?}"),
        }
    }

    /// The tasks queued behind a yielding one run before it goes on, and it goes on without
    /// waiting for anything else.
    #[test]
    fn yielding_lets_the_queued_tasks_run_first() {
        use std::sync::{Arc, Mutex};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let push = |what: &'static str| {
            let order = order.clone();
            move || order.lock().unwrap().push(what)
        };
        runtime.block_on(async {
            let (a1, a2, b) = (push("a1"), push("a2"), push("b"));
            let a = tokio::spawn(async move {
                a1();
                yield_to_others().await;
                a2();
            });
            let b = tokio::spawn(async move { b() });
            a.await.unwrap();
            b.await.unwrap();
        });
        assert_eq!(*order.lock().unwrap(), ["a1", "b", "a2"]);

        // Alone, it goes on at once (the next poll), without a timer or a socket event.
        let alone = runtime.block_on(async {
            tokio::time::timeout(
                std::time::Duration::from_secs(5),
                tokio::spawn(yield_to_others()),
            )
            .await
        });
        assert!(matches!(alone, Ok(Ok(()))));
    }

    #[test]
    fn a_plain_get_is_served_here_and_the_rest_is_the_next_request() {
        let head = "GET /v1/state?x=1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer t\r\nX-A: 1\r\nx-a: 2\r\n\r\n";
        let (req, len, keep_alive) = request(&format!("{head}GET /next HTTP/1.1\r\n"));
        assert_eq!(len, head.len());
        assert!(keep_alive);
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "/v1/state?x=1");
        assert_eq!(req.version(), http::Version::HTTP_11);
        assert_eq!(req.headers()["authorization"], "Bearer t");
        let a: Vec<_> = req.headers().get_all("x-a").iter().collect();
        assert_eq!(a, ["1", "2"]);
        assert!(req.body().is_end_stream());
    }

    #[test]
    fn a_head_not_yet_whole_is_partial() {
        for wire in ["G", "GET / HTTP/1.1\r\n", "GET / HTTP/1.1\r\nHost: a\r\n"] {
            assert!(matches!(parsed(wire), Parsed::Partial), "{wire:?}");
        }
    }

    #[test]
    fn unusual_requests_go_to_hyper() {
        for wire in [
            "POST /e HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\nx",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            "GET /a b HTTP/1.1\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
            "\u{1}GET / HTTP/1.1\r\n\r\n",
        ] {
            assert!(matches!(parsed(wire), Parsed::Unusual), "{wire:?}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        let wire = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(parsed(&wire), Parsed::Unusual));
        let wire = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(LIMIT));
        assert!(matches!(parsed(&wire), Parsed::Unusual));
        // A body larger than what is read here streams through hyper, even when all there.
        let big = "b".repeat(BODY_MAX + 1);
        let wire = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n{big}",
            big.len()
        );
        assert!(matches!(parsed(&wire), Parsed::Unusual));
    }

    #[test]
    fn a_small_body_that_came_whole_is_read_here() {
        let head = "POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
        let (req, len, _) = request(&format!("{head}helloGET /next HTTP/1.1\r\n"));
        assert_eq!(len, head.len() + 5);
        assert_eq!(req.headers().get_all("content-length").iter().count(), 1);
        match req.body() {
            ClientBody::Full(Some(body)) => assert_eq!(&body[..], b"hello"),
            other => panic!("{other:?}"),
        }
        assert_eq!(req.body().size_hint().exact(), Some(5));
        // Not all there yet: the whole request's length, for one more read.
        match parsed(&format!("{head}hel")) {
            Parsed::Body { whole } => assert_eq!(whole, head.len() + 5),
            _ => panic!("not waiting for the body"),
        }
        // `00` is a zero length, as hyper reads it.
        let (req, _, _) = request("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 00\r\n\r\n");
        assert!(req.body().is_end_stream());
    }

    #[test]
    fn an_empty_declared_body_stays_here_and_a_repeat_is_dropped() {
        let (req, _, _) = request(
            "DELETE /m/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(req.method(), Method::DELETE);
        assert_eq!(req.headers().get_all("content-length").iter().count(), 1);
    }

    #[test]
    fn connection_close_in_any_spelling_ends_keep_alive() {
        for (value, kept) in [
            ("keep-alive", true),
            ("close", false),
            ("Keep-Alive, CLOSE", false),
            ("x-close", true),
            // Not visible ASCII: hyper reads no token in it.
            ("caf\u{e9}, close", true),
        ] {
            let (_, _, keep_alive) = request(&format!(
                "GET / HTTP/1.1\r\nHost: a\r\nConnection: {value}\r\n\r\n"
            ));
            assert_eq!(keep_alive, kept, "{value}");
        }
        let (_, _, keep_alive) = request(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n",
        );
        assert!(!keep_alive);
    }

    fn head_of(
        status: StatusCode,
        headers: &[(&str, &str)],
        body: &'static str,
        head_request: bool,
        keep_alive: bool,
    ) -> (String, Option<(Framing, bool)>) {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let body = http_body_util::Either::Right(http_body_util::Full::new(Bytes::from(body)));
        let mut out = Vec::new();
        let result = encode_head(status, &map, &body, head_request, keep_alive, &mut out);
        (String::from_utf8(out).unwrap(), result)
    }

    fn fields(head: &str) -> Vec<&str> {
        head.split("\r\n")
            .skip(1)
            .filter(|l| !l.is_empty())
            .collect()
    }

    #[test]
    fn a_known_length_is_written_once_with_a_date() {
        let (head, f) = head_of(StatusCode::OK, &[("x-a", "1")], "hello", false, true);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"));
        assert_eq!(f, Some((Framing::Length(5), true)));
        let lines = fields(&head);
        assert_eq!(lines[..2], ["x-a: 1", "content-length: 5"]);
        assert!(lines[2].starts_with("date: ") && lines[2].ends_with(" GMT"));
        assert_eq!(lines.len(), 3);

        let (head, f) = head_of(
            StatusCode::NOT_FOUND,
            &[("content-length", "2"), ("date", "d")],
            "no",
            false,
            true,
        );
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert_eq!(fields(&head), ["content-length: 2", "date: d"]);
        assert_eq!(f, Some((Framing::Length(2), true)));
    }

    #[test]
    fn no_body_goes_out_for_head_204_and_304() {
        // HEAD: the length a GET would have had stays, nothing follows.
        let (head, f) = head_of(
            StatusCode::OK,
            &[("content-length", "1234")],
            "",
            true,
            true,
        );
        assert!(fields(&head).contains(&"content-length: 1234"));
        assert_eq!(f, Some((Framing::Length(0), true)));
        for status in [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED] {
            let (head, f) = head_of(
                status,
                &[("content-length", "7"), ("etag", "e")],
                "",
                false,
                true,
            );
            assert!(!head.contains("content-length"), "{head}");
            assert!(fields(&head).contains(&"etag: e"));
            assert_eq!(f, Some((Framing::Length(0), true)));
        }
        // An empty 200 says so.
        let (head, _) = head_of(StatusCode::OK, &[], "", false, true);
        assert!(fields(&head).contains(&"content-length: 0"));
    }

    #[test]
    fn closing_is_said_once() {
        let (head, f) = head_of(StatusCode::OK, &[], "x", false, false);
        assert_eq!(
            fields(&head)
                .iter()
                .filter(|l| **l == "connection: close")
                .count(),
            1
        );
        assert_eq!(f, Some((Framing::Length(1), false)));
        let (head, f) = head_of(StatusCode::OK, &[("connection", "close")], "x", false, true);
        assert_eq!(head.matches("close").count(), 1, "{head}");
        assert_eq!(f, Some((Framing::Length(1), false)));
    }

    #[test]
    fn an_interim_status_is_not_sent() {
        let (_, f) = head_of(StatusCode::CONTINUE, &[], "", false, true);
        assert_eq!(f, None);
    }

    mod properties {
        //! The requests served here are exactly those hyper's server would hand its service,
        //! with the same method, target, version and fields (checked against hyper itself, by
        //! the same oracle the `h1_request` fuzz target uses).

        use super::*;
        use proptest::prelude::*;

        fn line() -> impl Strategy<Value = String> {
            let method = prop::sample::select(vec![
                "GET", "HEAD", "DELETE", "OPTIONS", "POST", "PUT", "PATCH", "CONNECT", "FOO", "get",
            ]);
            let target = prop::sample::select(vec![
                "/",
                "/v1/state?x=1",
                "*",
                "http://h.test/x",
                "/%zz",
                "h.test:80",
                "/a%20b",
                "//x",
                "/é",
            ]);
            let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0", "HTTP/2.0"]);
            (method, target, version).prop_map(|(m, t, v)| format!("{m} {t} {v}"))
        }

        fn field() -> impl Strategy<Value = String> {
            prop::sample::select(vec![
                "Host: a",
                "host: a",
                "Content-Length: 0",
                "Content-Length: 5",
                "Content-Length:  0 ",
                "Transfer-Encoding: chunked",
                "Connection: close",
                "Connection: keep-alive",
                "Connection: Keep-Alive, Close",
                "Expect: 100-continue",
                "Upgrade: websocket",
                "X-A: b",
                "x-a: c",
                "X-Empty:",
                "X-Tab: a\tb",
                "X-Obs: caf\u{e9}",
                "Authorization: Bearer abc.def.ghi",
            ])
            .prop_map(str::to_owned)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]

            #[test]
            fn what_is_served_here_is_what_hyper_would_serve(
                line in line(),
                fields in prop::collection::vec(field(), 0..6),
                lf_only in any::<bool>(),
                body in prop::sample::select(vec!["", "hello", "hel", "hello world"]),
            ) {
                let eol = if lf_only { "\n" } else { "\r\n" };
                let mut wire = format!("{line}{eol}");
                for f in &fields {
                    wire.push_str(f);
                    wire.push_str(eol);
                }
                wire.push_str(eol);
                wire.push_str(body);
                // Panics (failing the case) if what is served here differs from hyper's reading.
                let _ = oracle::check(wire.as_bytes(), LIMIT);
            }

            #[test]
            fn arbitrary_bytes_never_panic_the_reader(
                wire in prop::collection::vec(any::<u8>(), 0..600),
            ) {
                let _ = parse(&Bytes::from(wire), 256);
            }
        }
    }
}
