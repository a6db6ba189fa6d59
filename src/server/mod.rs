//! Listeners: the accept loops of the main and admin ports, and graceful shutdown.
//!
//! [`start`] takes a loaded config and binds its listeners (port 0 works, for tests), spawns
//! the reloader, and returns a [`Running`] handle. Shutdown stops accepting at once, turns
//! `/readyz` unready, lets in-flight requests finish up to the configured grace period, then
//! closes what is left.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
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
        self.gateway.start_drain();
        let _ = self.stop_main.send(true);
        let _ = self.main.await;
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
    let grace = config.server.shutdown_grace;
    let header_timeout = config.server.header_read_timeout;
    let gateway = Gateway::new(
        Snapshot::build(Arc::new(config), None),
        key_files,
        keys,
        metrics,
    );
    let (stop_main, main_rx) = watch::channel(false);
    let (stop_rest, rest_rx) = watch::channel(false);

    let addr = listener.local_addr()?;
    let gw = gateway.clone();
    let main = tokio::spawn(accept_loop(
        listener,
        main_rx,
        grace,
        header_timeout,
        Some(gw.clone()),
        move |peer| {
            let gw = gw.clone();
            service_fn(move |req| {
                let gw = gw.clone();
                async move { Ok::<_, Infallible>(pipeline::handle(gw, req, peer, "http").await) }
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
                rest_rx.clone(),
                grace,
                header_timeout,
                None,
                move |_peer| {
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

async fn accept_loop<F, S, B>(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    header_timeout: Duration,
    counted: Option<Arc<Gateway>>,
    make_service: F,
) where
    F: Fn(SocketAddr) -> S,
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
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    // Every connection's task, so the ones still running after the grace period can be cut.
    let mut connections = tokio::task::JoinSet::new();
    loop {
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
        let guard = ConnectionGuard::open(counted.clone());
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), make_service(peer));
        let conn = graceful.watch(conn.into_owned());
        // Reap finished connections so the set holds only the open ones.
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            let _guard = guard;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "grace period over; closing the remaining connections");
        }
    }
    // Cuts whatever outlived the grace period (a no-op after a complete drain).
    connections.shutdown().await;
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
