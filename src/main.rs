#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: measurably cheaper than glibc malloc on the request path's many small
/// allocations (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use scopegate::cli::{self, Cli, Command};
use scopegate::logging::{AccessLog, LineFormat};

/// Logs go to stderr in batches (see `scopegate::logging`): request threads append the line to
/// a buffer, a flusher thread writes it out every 100 ms. The guard flushes what is left when
/// the process ends.
fn init_tracing(default: &str) -> scopegate::logging::FlushGuard<std::io::Stderr> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SCOPEGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let (writer, guard) = scopegate::logging::BatchWriter::new(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer.clone());
    let format = if std::env::var("SCOPEGATE_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
        LineFormat::Json
    } else {
        builder
            .with_ansi(false)
            .event_format(scopegate::logging::TextFormat)
            .init();
        LineFormat::Text
    };
    // The per-request access line goes straight into the same buffer, in the same format,
    // without the `tracing` dispatch (the filter still decides whether it is written).
    scopegate::logging::install_access_log(AccessLog::new(&writer, format));
    guard
}

/// The number of workers: `$SCOPEGATE_WORKERS`, else one per core.
fn workers() -> usize {
    std::env::var("SCOPEGATE_WORKERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// `serve`'s runtimes: one single-threaded runtime per worker, each serving the connections
/// the accept loop hands it (no work-stealing queues, no cross-thread wake-ups inside a
/// request). The runtime returned runs the accept loops, the admin listener and the reloader;
/// with one worker it also serves the connections itself.
fn serve_runtime() -> tokio::runtime::Runtime {
    let n = workers();
    if n > 1 {
        scopegate::pipeline::pool::set_workers(n);
        let handles = (0..n)
            .map(|i| {
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::Builder::new()
                    .name(format!("scopegate-worker-{i}"))
                    .spawn(move || {
                        scopegate::pipeline::pool::set_worker(i);
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .expect("starting a worker runtime");
                        tx.send(rt.handle().clone()).expect("the main thread waits");
                        rt.block_on(std::future::pending::<()>());
                    })
                    .expect("starting a worker thread");
                rx.recv().expect("the worker sends its runtime")
            })
            .collect();
        scopegate::server::set_workers(handles);
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("starting the tokio runtime")
}

/// The async runtime of the other commands: one worker thread per core, or
/// `$SCOPEGATE_WORKERS`.
fn runtime() -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(workers());
    builder
        .enable_all()
        .build()
        .expect("starting the tokio runtime")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let flag = cli.config.as_deref();
    match &cli.command {
        Command::Serve => {
            let _logs = init_tracing("info");
            let path = scopegate::config::config_path(flag);
            serve_runtime().block_on(scopegate::server::serve(path))?;
        }
        Command::Demo => {
            let _logs = init_tracing("warn,scopegate=info");
            runtime().block_on(cli::demo::run())?;
        }
        Command::Check => {
            let _logs = init_tracing("warn");
            let (output, ok) = cli::check(flag)?;
            output.print(cli.json);
            anyhow::ensure!(ok, "the key folder has problems (listed above)");
        }
        Command::Orgs(cmd) => {
            let (_, config) = cli::load_config(flag)?;
            cli::orgs(&config, cmd)?.print(cli.json);
        }
        Command::Keys(cmd) => {
            let (_, config) = cli::load_config(flag)?;
            cli::keys(&config, cmd)?.print(cli.json);
        }
        Command::Tokens(cmd) => {
            // Signing needs no config; when there is one it supplies defaults (the audience),
            // so a broken one is an error rather than a token the gateway will refuse.
            let path = scopegate::config::config_path(flag);
            let config = if path.exists() {
                Some(cli::load_config(flag)?.1)
            } else {
                None
            };
            cli::tokens(config.as_ref(), cmd)?.print(cli.json);
        }
        Command::Idps(cmd) => {
            let (_, config) = cli::load_config(flag)?;
            cli::idps(&config, cmd)?.print(cli.json);
        }
        Command::TokenProviders(cmd) => {
            let (_, config) = cli::load_config(flag)?;
            cli::token_providers(&config, cmd)?.print(cli.json);
        }
        Command::Anonymous(cmd) => {
            let (_, config) = cli::load_config(flag)?;
            cli::anonymous(&config, cmd)?.print(cli.json);
        }
        Command::Explain(args) => {
            let _logs = init_tracing("error");
            // 0 allow, 1 deny: anything that prevents an answer is 2.
            let (output, allowed) = match cli::explain(flag, args) {
                Ok(answer) => answer,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return Ok(ExitCode::from(2));
                }
            };
            output.print(cli.json);
            if !allowed {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
