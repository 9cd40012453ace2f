//! The `hourglass` binary: reads the config file, parses arguments, sets up
//! logging, dispatches.

use clap::Parser;
use hourglass::config::{
    apply_config_file, check_config, config_path_from, run_serve, Cli, Command, ConfigCommand,
    LogFormat,
};
use hourglass::demo::{self, DemoOptions};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    // The config file feeds HOURGLASS_* variables, so it is read before clap
    // parses and before any thread starts.
    let args: Vec<String> = std::env::args().collect();
    if let Some(path) = config_path_from(&args) {
        if let Err(e) = apply_config_file(&path) {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    }
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
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
