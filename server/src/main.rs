//! The `livevote-server` binary: parse the configuration, start, serve until SIGTERM/SIGINT.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use livevote_server::config::Config;

// glibc's allocator was 18 % of the vote path under load (bench/ANALYSIS.md: consolidation and
// fragmentation churn across worker threads); mimalloc's per-thread pages avoid most of it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = match Config::try_parse() {
        Ok(config) => config,
        Err(error) => {
            // clap prints help/version to stdout with exit 0, real errors with exit 2.
            error.exit();
        }
    };
    let config = match config.finish() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: invalid configuration: {error}");
            return ExitCode::from(2);
        }
    };
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            // A broker URL that cannot be used is an invalid option, like every other: exit 2.
            let misconfigured = matches!(
                error.downcast_ref::<livevote_server::StartError>(),
                Some(livevote_server::StartError::Broker(
                    livevote_server::broker::BrokerError::Configuration(_)
                ))
            );
            if misconfigured || error.is::<ConfigurationError>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A configuration that could be read only at start-up (files named by options): exit 2, like
/// every other invalid option.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
struct ConfigurationError(livevote_server::serve::TlsError);

/// File descriptors kept for everything that is not a client socket (database, listener, logs).
const RESERVED_FILE_DESCRIPTORS: u64 = 256;

/// Raises the soft open-file limit to the hard one; under a shell's default of 1,024 the server
/// would stop at about 1,000 sockets, and further connects would hang instead of getting 503.
/// Caps `--max-open-connections` and `--max-connections` to what the limit allows, so that past it clients are refused
/// with 503 + Retry-After rather than left waiting.
fn fit_connections_to_file_limit(config: &mut Config) {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "cannot read or raise the open-file limit");
            return;
        }
    };
    let usable =
        usize::try_from(limit.saturating_sub(RESERVED_FILE_DESCRIPTORS)).unwrap_or(usize::MAX);
    lower_to_fit(
        "--max-open-connections",
        &mut config.max_open_connections,
        usable,
        limit,
    );
    lower_to_fit(
        "--max-connections",
        &mut config.max_connections,
        usable,
        limit,
    );
}

fn lower_to_fit(option: &str, value: &mut usize, usable: usize, open_file_limit: u64) {
    if *value > usable {
        tracing::warn!(
            open_file_limit,
            requested = *value,
            effective = usable,
            "{option} lowered to fit the open-file limit"
        );
        *value = usable;
    }
}

async fn serve(mut config: Config) -> anyhow::Result<()> {
    // Checked before binding, so that a missing or broken file is a configuration error.
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(certificate), Some(key)) => {
            Some(livevote_server::serve::load_tls(certificate, key).map_err(ConfigurationError)?)
        }
        _ => None,
    };
    fit_connections_to_file_limit(&mut config);
    let listener = livevote_server::bind(config.listen)
        .with_context(|| format!("cannot bind {}", config.listen))?;
    let address = listener.local_addr()?;
    // With port 0 the real port is known only now; everything that prints URLs reads it here.
    config.listen = address;
    let state = livevote_server::start(config).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("listening on {scheme}://{address}");
    if state.config.dev {
        tracing::warn!("development mode: generated secrets, /api/auth needs no API key");
    }
    if state.config.demo && state.config.demo_simulation {
        livevote_server::demo::start(state.clone(), livevote_server::app(state.clone()));
    }
    livevote_server::serve(listener, state, tls, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("LIVEVOTE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,tower_http=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
