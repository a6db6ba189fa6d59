#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: measurably cheaper than glibc malloc on the request path's many small
/// allocations (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use scopegate::cli::{self, Cli, Command};

/// Logs go to stderr in batches (see `scopegate::logging`): request threads append the line to
/// a buffer, a flusher thread writes it out every 100 ms. The guard flushes what is left when
/// the process ends.
fn init_tracing(default: &str) -> scopegate::logging::FlushGuard<std::io::Stderr> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SCOPEGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let (writer, guard) = scopegate::logging::BatchWriter::new(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    if std::env::var("SCOPEGATE_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder
            .with_ansi(false)
            .event_format(scopegate::logging::TextFormat)
            .init();
    }
    guard
}

/// The async runtime: one worker thread per core, or `$SCOPEGATE_WORKERS`. With one worker
/// (a process pinned to one core) the single-threaded scheduler is used: no work-stealing
/// queues or cross-thread wake-ups to pay for.
fn runtime() -> tokio::runtime::Runtime {
    let workers = std::env::var("SCOPEGATE_WORKERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0);
    let mut builder = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
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
            runtime().block_on(scopegate::server::serve(path))?;
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
