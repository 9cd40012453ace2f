//! The `hourglass-load` binary: parses arguments, sets up logging, runs a
//! load, benchmark, soak or demo command of the library.

use clap::{Parser, Subcommand};
use hourglass_load::demo::{self, DemoOptions};
use hourglass_load::LoadCommand;

/// Load, benchmark, soak and demo tools for an Hourglass server.
#[derive(Debug, Parser)]
#[command(name = "hourglass-load", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a wide demo series through a running server and read it back.
    Demo(DemoOptions),
    #[command(flatten)]
    Load(Box<LoadCommand>),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo(opts) => demo::run(&opts).await,
            Command::Load(cmd) => hourglass_load::main(*cmd).await,
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
