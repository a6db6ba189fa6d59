//! Listeners: the accept loops of the main and admin ports, TLS, and graceful shutdown.
//!
//! [`start`] takes a loaded config and binds its listeners (port 0 works, for tests), spawns
//! the reloader, and returns a [`Running`] handle. Shutdown stops accepting at once, turns
//! `/readyz` unready, lets in-flight requests finish up to the configured grace period, then
//! closes what is left.
//!
//! Each connection is HTTP/1.1 or HTTP/2 (by ALPN under TLS, by the client preface in clear
//! text: h2c with prior knowledge). The main listener's clear-text HTTP/1.1 connections are read
//! by `h1`, the gateway's own path for bodiless requests, until a request needs hyper's
//! server; everything else is hyper's from the start. At most `max_connections` are served at once; beyond that
//! the accept loop waits for one to close, and new clients queue in the kernel's backlog.

pub(crate) mod h1;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin;
use crate::config::Config;
use crate::gateway::{Gateway, Snapshot};
use crate::metrics::Metrics;
use crate::pipeline;
use crate::reload;

/// A gateway that is serving.
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub gateway: Arc<Gateway>,
    stop_main: watch::Sender<bool>,
    stop_rest: watch::Sender<bool>,
    main: JoinHandle<()>,
    rest: Vec<JoinHandle<()>>,
}

impl Running {
    /// Drains: `/readyz` turns 503 and the main listener stops accepting at once; in-flight
    /// requests get up to the grace period. The admin listener (so a load balancer can watch
    /// `/readyz`) and the reloader stop only once the main listener has drained.
    pub async fn shutdown(self) {
        let deadline =
            tokio::time::Instant::now() + self.gateway.snapshot.load().config.server.shutdown_grace;
        self.gateway.start_drain();
        let _ = self.stop_main.send(true);
        let _ = self.main.await;
        // WebSockets left the HTTP connections they came from: they get what is left of the
        // same grace period.
        self.gateway.close_tunnels(deadline).await;
        let _ = self.stop_rest.send(true);
        for t in self.rest {
            let _ = t.await;
        }
    }
}

/// Binds the listeners of `config` and starts serving. `config_path` is watched for reloads.
pub async fn start(config: Config, config_path: PathBuf) -> anyhow::Result<Running> {
    let metrics = Metrics::new();
    if !config.keys.dir.exists() {
        std::fs::create_dir_all(&config.keys.dir)
            .with_context(|| format!("creating the key folder {}", config.keys.dir.display()))?;
    }
    let (key_files, keys) = reload::initial_keys(&config.keys, &config.auth.catalog, &metrics);
    let listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("binding {}", config.server.listen))?;
    let admin_listener = match &config.admin {
        Some(a) => Some(
            TcpListener::bind(a.listen)
                .await
                .with_context(|| format!("binding the admin listener {}", a.listen))?,
        ),
        None => None,
    };
    let limits = Limits::of(&config);
    let tls = match &config.server.tls {
        Some(t) => {
            let pair = tls::load_pair(&t.cert, &t.key)
                .with_context(|| "loading the TLS certificate and key".to_string())?;
            Some(Arc::new(tls::CertResolver::new(pair)))
        }
        None => None,
    };
    let snapshot = Snapshot::build(Arc::new(config), None)?;
    let gateway = Gateway::new(snapshot, key_files, keys, metrics);
    let (stop_main, main_rx) = watch::channel(false);
    let (stop_rest, rest_rx) = watch::channel(false);

    let addr = listener.local_addr()?;
    let gw = gateway.clone();
    gateway.set_tls(tls.clone());
    let acceptor = tls.map(|r| tokio_rustls::TlsAcceptor::from(tls::server_config(r)));
    let main = tokio::spawn(accept_loop(
        listener,
        acceptor,
        main_rx,
        limits,
        Some(gw.clone()),
        move |peer, proto| {
            let gw = gw.clone();
            service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let gw = gw.clone();
                let peer = peer.clone();
                // Boxed per request: hyper keeps room for one in-flight service future in every
                // connection, idle ones included, and this one is ~4 KiB.
                Box::pin(async move {
                    let req = req.map(pipeline::ClientBody::Hyper);
                    Ok::<_, Infallible>(pipeline::handle(gw, req, peer, proto).await)
                })
            })
        },
    ));
    let mut rest = Vec::new();
    let admin_addr = match admin_listener {
        Some(l) => {
            let a = l.local_addr()?;
            let gw = gateway.clone();
            rest.push(tokio::spawn(accept_loop(
                l,
                None,
                rest_rx.clone(),
                limits,
                None,
                move |_peer, _proto| {
                    let gw = gw.clone();
                    service_fn(move |req| {
                        let gw = gw.clone();
                        async move { Ok::<_, Infallible>(admin::handle(&gw, req)) }
                    })
                },
            )));
            Some(a)
        }
        None => None,
    };
    let reloader = reload::Reloader::new(gateway.clone(), config_path);
    rest.push(tokio::spawn(reloader.run(rest_rx)));
    gateway.set_ready();
    tracing::info!(%addr, admin = ?admin_addr, "scopegate is serving");
    Ok(Running {
        addr,
        admin_addr,
        gateway,
        stop_main,
        stop_rest,
        main,
        rest,
    })
}

/// Counts an open client connection (main listener only) for as long as it lives.
struct ConnectionGuard(Option<Arc<Gateway>>);

impl ConnectionGuard {
    fn open(gateway: Option<Arc<Gateway>>) -> Self {
        if let Some(g) = &gateway {
            g.metrics.open_connections.inc();
        }
        ConnectionGuard(gateway)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.metrics.open_connections.dec();
        }
    }
}

/// The connection-level limits of a listener.
#[derive(Debug, Clone, Copy)]
struct Limits {
    grace: Duration,
    header_timeout: Duration,
    max_connections: usize,
    max_header_bytes: usize,
}

impl Limits {
    fn of(config: &Config) -> Self {
        Limits {
            grace: config.server.shutdown_grace,
            header_timeout: config.server.header_read_timeout,
            max_connections: config.server.max_connections,
            max_header_bytes: config.server.max_header_bytes,
        }
    }
}

async fn accept_loop<F, S, B>(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
    limits: Limits,
    counted: Option<Arc<Gateway>>,
    make_service: F,
) where
    F: Fn(Arc<pipeline::Peer>, &'static str) -> S,
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Also bounds how long an idle keep-alive connection waits for its next request.
        .header_read_timeout(limits.header_timeout)
        // Only used for HTTP/2 and for clear-text connections whose first bytes are too few
        // to tell; HTTP/1.1 goes through `h1` below, which also checks `max_header_size`.
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes.min(u32::MAX as usize) as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    // The same HTTP/1 settings on their own, for clear-text connections that are plainly not
    // HTTP/2: they skip the version detection and carry no HTTP/2 state.
    let mut h1 = hyper::server::conn::http1::Builder::new();
    h1.timer(TokioTimer::new())
        // Also bounds how long an idle keep-alive connection waits for its next request.
        .header_read_timeout(limits.header_timeout)
        // A head over the limit is answered 431 by hyper. `max_header_size` checks the parsed
        // head itself; the buffer limit alone is only checked between reads, so a larger
        // head arriving in one read could slip past it.
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    let h1 = Arc::new(h1);
    let proto = if acceptor.is_some() { "https" } else { "http" };
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    // Every connection's task, so the ones still running after the grace period can be cut.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let slot = tokio::select! {
            _ = shutdown.changed() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning on the error.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // With worker threads, the connection moves to the next one: off this runtime's
        // reactor here, onto the worker's in its task.
        let worker = counted.as_ref().and_then(|_| next_worker());
        let stream = match worker {
            Some(_) => match stream.into_std() {
                Ok(s) => Accepted::Moving(s),
                Err(e) => {
                    tracing::warn!(error = %e, "could not hand a connection to a worker");
                    continue;
                }
            },
            None => Accepted::Here(stream),
        };
        let guard = ConnectionGuard::open(counted.clone());
        // Formatted once per connection, for X-Forwarded-For; shared, so the service that
        // every connection's state holds (in several places) stays small.
        let peer = Arc::new(pipeline::Peer::new(peer));
        let service = make_service(peer.clone(), proto);
        // Set when the connection's first request head has been parsed; see `FirstRequest`.
        let started = Arc::new(AtomicBool::new(false));
        let service = {
            let started = started.clone();
            service_fn(move |req| {
                started.store(true, Ordering::Relaxed);
                service.call(req)
            })
        };
        let watcher = graceful.watcher();
        let drain = shutdown.clone();
        let builder = builder.clone();
        let h1 = h1.clone();
        let acceptor = acceptor.clone();
        // Reap finished connections so the set holds only the open ones.
        while connections.try_join_next().is_some() {}
        let task = async move {
            // Mentioned so that the block owns them (dropped when the task ends), but not
            // re-bound: a binding would take a second slot in every connection's task.
            let _ = (&guard, &slot);
            let stream = match stream {
                Accepted::Here(s) => s,
                Accepted::Moving(s) => match tokio::net::TcpStream::from_std(s) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not register a connection");
                        return;
                    }
                },
            };
            let conn = Conn {
                builder: &builder,
                h1: &h1,
                watcher,
                drain,
                header_timeout: limits.header_timeout,
                max_header_bytes: limits.max_header_bytes,
                started: &started,
                peer: &peer,
                gateway: guard.0.as_ref(),
            };
            match acceptor {
                None => conn.serve_plain(stream, service).await,
                // Boxed: a TLS connection's state is much larger than a plain one's, and an
                // inline branch would make every plain connection's task that large too.
                Some(acceptor) => Box::pin(conn.serve_tls(acceptor, stream, service)).await,
            }
        };
        match worker {
            Some(handle) => connections.spawn_on(task, &handle),
            None => connections.spawn(task),
        };
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(limits.grace) => {
            tracing::warn!(grace = ?limits.grace, "grace period over; closing the remaining connections");
        }
    }
    // Cuts whatever outlived the grace period (a no-op after a complete drain).
    connections.shutdown().await;
}

/// What one connection's task needs from its listener.
struct Conn<'a> {
    builder: &'a auto::Builder<TokioExecutor>,
    h1: &'a hyper::server::conn::http1::Builder,
    watcher: hyper_util::server::graceful::Watcher,
    /// Turns true when the listener starts draining.
    drain: watch::Receiver<bool>,
    /// The listener's `header_read_timeout` and `max_header_bytes`.
    header_timeout: Duration,
    max_header_bytes: usize,
    started: &'a AtomicBool,
    peer: &'a Arc<pipeline::Peer>,
    /// The main listener's gateway: its clear-text HTTP/1.1 connections go through [`h1`]
    /// first. `None` on the admin listener (hyper alone).
    gateway: Option<&'a Arc<Gateway>>,
}

/// The service of a connection, as hyper takes it.
trait ConnService<B>:
    hyper::service::Service<
        http::Request<hyper::body::Incoming>,
        Response = http::Response<B>,
        Error = Infallible,
        Future: Send + 'static,
    > + Send
    + 'static
{
}

impl<S, B> ConnService<B> for S where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = Infallible,
            Future: Send + 'static,
        > + Send
        + 'static
{
}

type ConnError = Box<dyn std::error::Error + Send + Sync>;

impl Conn<'_> {
    /// Serves a connection with hyper's HTTP/1-or-2 detection until the client leaves or no
    /// first request head arrives by `first.deadline`. Only for the rarer protocols (h2c, h2
    /// over TLS, too few bytes to tell): plain HTTP/1.1 checks the deadline in [`serve_h1`],
    /// without this extra layer, which would hold a second copy of the connection's state.
    async fn run(
        first: FirstRequest<'_>,
        serve: impl std::future::Future<Output = Result<(), ConnError>>,
    ) {
        let result = tokio::select! {
            result = serve => result,
            () = first.missed() => {
                tracing::debug!(peer = %first.peer, "no request within the head timeout");
                return;
            }
        };
        log_end(result);
    }

    /// A clear-text connection: HTTP/1.1 straight away when its first bytes cannot be the
    /// HTTP/2 preface (the common case), else hyper's HTTP/1-or-2 detection (h2c with prior
    /// knowledge, or too few bytes yet to tell).
    async fn serve_plain<S, B>(self, stream: tokio::net::TcpStream, service: S)
    where
        S: ConnService<B>,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<ConnError>,
    {
        const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let Conn {
            builder,
            h1,
            watcher,
            mut drain,
            header_timeout,
            max_header_bytes,
            started,
            peer,
            gateway,
        } = self;
        let first = FirstRequest::new(header_timeout, started, peer.addr);
        let mut head = [0u8; PREFACE.len()];
        let n = match tokio::time::timeout_at(first.deadline, stream.peek(&mut head)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return log_end(Err(e.into())),
            Err(_) => {
                tracing::debug!(peer = %peer.addr, "no request within the head timeout");
                return;
            }
        };
        if n > 0 && !PREFACE.starts_with(&head[..n]) {
            let Some(gateway) = gateway else {
                // The admin listener. Boxed, as below: hyper's connection state is large.
                let io = TokioIo::new(stream);
                let served = Box::pin(serve_h1(h1, io, service, watcher, drain, first));
                return log_end(served.await);
            };
            let mut stream = stream;
            let serve = h1::Serve {
                gateway,
                peer,
                header_timeout,
                max_header_bytes,
                first_deadline: first.deadline,
                started,
            };
            match h1::serve(&mut stream, serve, &mut drain).await {
                Ok(h1::End::Closed) => {}
                Ok(h1::End::HandOff(read)) => {
                    let io = TokioIo::new(h1::Rewind::new(read, stream));
                    // Boxed: rare, and hyper's connection state would otherwise take room in
                    // every connection's task.
                    let served = Box::pin(serve_h1(h1, io, service, watcher, drain, first));
                    log_end(served.await);
                }
                Err(e) => log_end(Err(e.into())),
            }
        } else {
            let io = TokioIo::new(stream);
            Box::pin(Self::run(first, serve_auto(builder, io, service, watcher))).await;
        }
    }

    /// The TLS handshake (bounded by the head timeout: a silent client is dropped), then
    /// HTTP/2 when ALPN chose it, HTTP/1.1 otherwise.
    async fn serve_tls<S, B>(
        self,
        acceptor: tokio_rustls::TlsAcceptor,
        stream: tokio::net::TcpStream,
        service: S,
    ) where
        S: ConnService<B>,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<ConnError>,
    {
        let tls = match tokio::time::timeout(self.header_timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.peer.addr, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %self.peer.addr, "TLS handshake timed out");
                return;
            }
        };
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let Conn {
            builder,
            h1,
            watcher,
            drain,
            header_timeout,
            started,
            peer,
            ..
        } = self;
        let io = TokioIo::new(tls);
        let first = FirstRequest::new(header_timeout, started, peer.addr);
        if h2 {
            Self::run(first, serve_auto(builder, io, service, watcher)).await;
        } else {
            log_end(serve_h1(h1, io, service, watcher, drain, first).await);
        }
    }
}

/// HTTP/1.1 only. hyper-util's graceful watcher does not take this connection type, so the
/// drain is done here; holding the watcher still makes the listener's drain wait for it.
async fn serve_h1<I, S, B>(
    h1: &hyper::server::conn::http1::Builder,
    io: I,
    service: S,
    watcher: hyper_util::server::graceful::Watcher,
    mut drain: watch::Receiver<bool>,
    first: FirstRequest<'_>,
) -> Result<(), ConnError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: ConnService<B>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<ConnError>,
{
    let _counted = watcher;
    let mut conn = std::pin::pin!(h1.serve_connection(io, service).with_upgrades());
    let draining = async {
        loop {
            if *drain.borrow_and_update() {
                return;
            }
            if drain.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = draining => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        () = first.missed() => {
            tracing::debug!(peer = %first.peer, "no request within the head timeout");
            return Ok(());
        }
    };
    result.map_err(Into::into)
}

/// How a connection's end is logged: an error only at debug (clients vanish all the time).
fn log_end(result: Result<(), ConnError>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// HTTP/1 or HTTP/2, by hyper's detection of the HTTP/2 preface.
async fn serve_auto<I, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: S,
    watcher: hyper_util::server::graceful::Watcher,
) -> Result<(), ConnError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: ConnService<B>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<ConnError>,
{
    let conn = builder.serve_connection_with_upgrades(io, service);
    watcher.watch(conn.into_owned()).await
}

/// An accepted connection: registered with this runtime, or on its way to a worker's.
enum Accepted {
    Here(tokio::net::TcpStream),
    Moving(std::net::TcpStream),
}

/// The runtimes that serve main-listener connections, when `scopegate serve` runs several
/// single-threaded ones (one per core) instead of one work-stealing runtime.
static WORKERS: std::sync::OnceLock<Vec<tokio::runtime::Handle>> = std::sync::OnceLock::new();
static NEXT_WORKER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Serve main-listener connections on these runtimes, round-robin (set once, before
/// [`start`]). Without it, connections run on the runtime that calls `start`.
pub fn set_workers(handles: Vec<tokio::runtime::Handle>) {
    let _ = WORKERS.set(handles);
}

fn next_worker() -> Option<tokio::runtime::Handle> {
    let workers = WORKERS.get().filter(|w| !w.is_empty())?;
    let i = NEXT_WORKER.fetch_add(1, Ordering::Relaxed) % workers.len();
    Some(workers[i].clone())
}

/// The deadline of a connection's first request head, counted from when the connection can
/// carry one: from the accept in clear text (the preface peek falls within it), from the end
/// of the handshake under TLS (the handshake has its own limit). hyper's HTTP/1 head timeout
/// only runs once the protocol is known, and the HTTP/1-or-2 detection before it waits for
/// bytes forever: a client that connects and sends nothing (or a few bytes of the HTTP/2
/// preface) would hold its `max_connections` slot for good, and enough of them lock every
/// client out. Later heads on a keep-alive connection are hyper's timeout's to bound.
#[derive(Clone, Copy)]
struct FirstRequest<'a> {
    deadline: tokio::time::Instant,
    /// Set when the first request head has been parsed.
    started: &'a AtomicBool,
    peer: SocketAddr,
}

impl<'a> FirstRequest<'a> {
    fn new(limit: Duration, started: &'a AtomicBool, peer: SocketAddr) -> Self {
        FirstRequest {
            deadline: tokio::time::Instant::now() + limit,
            started,
            peer,
        }
    }

    /// Resolves at the deadline if no request head has come by then; never otherwise.
    async fn missed(self) {
        tokio::time::sleep_until(self.deadline).await;
        if self.started.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    }
}

/// Waits for SIGTERM or SIGINT.
///
/// The handlers are installed when this is called, not when it is first polled: call it
/// before starting to serve so an early signal drains instead of killing the process.
pub fn termination() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

/// `scopegate serve`: run until SIGTERM/SIGINT, then drain.
pub async fn serve(config_path: PathBuf) -> anyhow::Result<()> {
    let config = crate::config::load(&config_path)?;
    let terminated = termination();
    let running = start(config, config_path).await?;
    terminated.await;
    tracing::info!("shutting down: draining in-flight requests");
    running.shutdown().await;
    Ok(())
}
