//! The `hourglass` binary: parses arguments (with the config file), sets up
//! logging, dispatches to the library (`serve`, `config check`,
//! `index-shards`).

use hourglass::cli::{self, Cli, CliError, Command, ConfigCommand, LogFormat};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;

/// The server allocates per call (pages from the driver, merged rows, the
/// encoded response) on a few threads at once; jemalloc's per-thread
/// caches serve that better than glibc's malloc. Against the local node,
/// side by side with the system allocator (same commit, 5 s cells
/// alternating, medians of 4-6), rows a second delivered within the
/// budget by clients following tokens: 16 clients under a 10 ms SLO +18%
/// (283k against 240k), under 50 ms +9%, 4 clients under 10 ms +5%, one
/// +36%, at the same client-observed p99/SLO (0.86-0.99 either way); an
/// unbounded read of 1,000,000 rows as fast (2.0-2.1 s); resident memory
/// after the runs 58 MB against 235 MB.
/// The reserve's model of the client's decoding was recalibrated with it
/// (see `engine::reserve::CLIENT_DECODE_PER_ENCODE`).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let cli = match cli::parse(&args) {
        Ok(cli) => cli,
        Err(CliError::Clap(e)) => e.exit(),
        Err(e @ CliError::SecretOnCommandLine { .. }) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
        Err(e @ CliError::ConfigFile(_)) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // The OTLP exporter needs the runtime: build the subscriber inside it.
    let _telemetry = match runtime.block_on(async { init_tracing(&cli) }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(&args).await,
            Command::Config(ConfigCommand::Check) => {
                cli::check_config(cli.config.as_deref()).map(|text| print!("{text}"))
            }
            Command::IndexShards(args) => {
                cli::index_shards(&args).await.map(|text| print!("{text}"))
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `serve`: binds the listen address and runs the server until SIGTERM or
/// Ctrl-C.
async fn serve(args: &cli::ServeArgs) -> anyhow::Result<()> {
    let config = args.server_config()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    hourglass::server::run(config, listener, shutdown_signal()).await?;
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}

/// Flushes exported spans when dropped.
struct Telemetry {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Logs to stderr as text or JSON, filtered by RUST_LOG (default info), and
/// with `--features otel` exports spans to `--otlp-endpoint`.
#[cfg_attr(not(feature = "otel"), allow(clippy::unnecessary_wraps))]
fn init_tracing(cli: &Cli) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colour only for a terminal: log files and collectors get plain text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = match cli.log_format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let registry = tracing_subscriber::registry().with(filter).with(fmt);
    #[cfg(feature = "otel")]
    {
        let (otel, provider) = match &cli.otlp_endpoint {
            Some(endpoint) => {
                let (layer, provider) = hourglass::otel::layer(endpoint)?;
                (Some(layer), Some(provider))
            }
            None => (None, None),
        };
        registry.with(otel).init();
        Ok(Telemetry { provider })
    }
    #[cfg(not(feature = "otel"))]
    {
        registry.init();
        Ok(Telemetry {})
    }
}
