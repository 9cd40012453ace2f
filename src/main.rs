//! The `hourglass` binary: reads the config file, parses arguments, sets up
//! logging, dispatches.

use clap::Parser;
use hourglass::config::{
    apply_config_file, check_config, config_path_from, reject_secret_flags, run_serve, Cli,
    Command, ConfigCommand, LogFormat,
};
use hourglass::demo::{self, DemoOptions};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;

fn main() -> std::process::ExitCode {
    // The config file feeds HOURGLASS_* variables, so it is read before clap
    // parses and before any thread starts.
    let args: Vec<String> = std::env::args().collect();
    if let Err(e) = reject_secret_flags(&args) {
        eprintln!("error: {e:#}");
        return std::process::ExitCode::from(2);
    }
    if let Some(path) = config_path_from(&args) {
        if let Err(e) = apply_config_file(&path) {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    }
    let cli = Cli::parse();
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
            Command::Serve(args) => run_serve(*args).await,
            Command::Load(cmd) => hourglass::load::main(cmd).await,
            Command::Config(ConfigCommand::Check) => check_config().map(|text| print!("{text}")),
            Command::Demo(a) => {
                demo::run(&DemoOptions {
                    server: a.server,
                    rows: a.rows,
                    batch: a.batch.max(1),
                    concurrency: a.concurrency.max(1),
                    page_size: a.page_size,
                    slo_millis: a.slo_ms,
                })
                .await
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
