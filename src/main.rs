//! The `hourglass` binary: parses arguments, sets up logging, dispatches.

use clap::Parser;
use hourglass::config::{run_serve, Cli, Command};
use hourglass::demo::{self, DemoOptions};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Serve(args) => run_serve(*args).await,
        Command::Load(cmd) => hourglass::load::main(cmd).await,
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
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
