//! Command-line and environment configuration of the binary (clap derive;
//! every flag is also an `HOURGLASS_*` variable), and the `serve` entry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::engine::budget::BudgetConfig;
use crate::engine::{EngineConfig, ReadEngine};
use crate::server::{serve, HourglassService};
use crate::storage::cassandra::{
    parse_consistency, CassandraConfig, CassandraStore, DEFAULT_REPLICATION,
};
use crate::token::KeyRing;

/// Default gRPC listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Default Cassandra contact point: the project's local node.
pub const DEFAULT_CASSANDRA: &str = "127.0.0.1:19042";

#[derive(Debug, Parser)]
#[command(
    name = "hourglass",
    version,
    about = "A time-series read service that always answers on time"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server.
    Serve(Box<ServeArgs>),
    /// Write a wide demo series through a running server and read it back.
    Demo(DemoArgs),
    /// Load testing: seed, run, compare, chart, bench.
    #[command(subcommand)]
    Load(crate::load::LoadCommand),
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 250ms, 2s, 1h)"))
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "HOURGLASS_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Cassandra/ScyllaDB contact points, comma separated host:port.
    #[arg(long, env = "HOURGLASS_CASSANDRA", default_value = DEFAULT_CASSANDRA, value_delimiter = ',')]
    pub cassandra: Vec<String>,
    /// Keyspace holding Hourglass's tables (created if missing).
    #[arg(long, env = "HOURGLASS_KEYSPACE", default_value = "hourglass")]
    pub keyspace: String,
    /// Consistency level of reads and writes.
    #[arg(long, env = "HOURGLASS_CONSISTENCY", default_value = "local_quorum", value_parser = parse_consistency)]
    pub consistency: scylla::statement::Consistency,
    /// CQL replication map used if the keyspace is created.
    #[arg(long, env = "HOURGLASS_REPLICATION", default_value = DEFAULT_REPLICATION)]
    pub replication: String,
    /// Token signing keys `id:secret[,id:secret]`; the first signs, all verify.
    #[arg(long, env = "HOURGLASS_TOKEN_KEYS", hide_env_values = true)]
    pub token_keys: Option<String>,
    /// File holding the token keys (same format), instead of --token-keys.
    #[arg(long, env = "HOURGLASS_TOKEN_KEYS_FILE", conflicts_with = "token_keys")]
    pub token_keys_file: Option<std::path::PathBuf>,
    /// How long a continuation token stays valid.
    #[arg(long, env = "HOURGLASS_TOKEN_TTL", default_value = "24h", value_parser = duration)]
    pub token_ttl: Duration,
    /// Read budget when a request has neither an SLO nor a deadline.
    #[arg(long, env = "HOURGLASS_DEFAULT_BUDGET", default_value = "2s", value_parser = duration)]
    pub default_budget: Duration,
    /// Upper bound on any read budget.
    #[arg(long, env = "HOURGLASS_MAX_BUDGET", default_value = "30s", value_parser = duration)]
    pub max_budget: Duration,
    /// Subtracted from client deadlines to leave time for the response.
    #[arg(long, env = "HOURGLASS_DEADLINE_MARGIN", default_value = "5ms", value_parser = duration)]
    pub deadline_margin: Duration,
    /// Buckets read ahead of the one being merged.
    #[arg(long, env = "HOURGLASS_READAHEAD_BUCKETS", default_value_t = EngineConfig::default().readahead_buckets)]
    pub readahead_buckets: usize,
    /// Storage requests in flight per read.
    #[arg(long, env = "HOURGLASS_MAX_IN_FLIGHT", default_value_t = EngineConfig::default().max_in_flight)]
    pub max_in_flight: usize,
    /// Largest storage page in rows.
    #[arg(long, env = "HOURGLASS_MAX_STORAGE_PAGE", default_value_t = EngineConfig::default().max_storage_page)]
    pub max_storage_page: usize,
    /// Return partial rows when a read's budget ends (false: ignore SLOs and
    /// deadlines and read whole pages, the baseline for benchmarks).
    #[arg(long, env = "HOURGLASS_PARTIAL_READS", default_value_t = true, action = clap::ArgAction::Set)]
    pub partial_reads: bool,
    /// How long to wait for Cassandra at start.
    #[arg(long, env = "HOURGLASS_CONNECT_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub connect_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Server to talk to.
    #[arg(
        long,
        env = "HOURGLASS_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// Events in the demo series.
    #[arg(long, default_value_t = 200_000)]
    pub rows: usize,
    /// Events per WriteEvents call.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Concurrent WriteEvents calls.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Rows per page when reading back.
    #[arg(long, default_value_t = 20_000)]
    pub page_size: u32,
    /// SLO of the deadline-bounded read, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub slo_ms: u32,
}

impl ServeArgs {
    /// The signing keys from the flag, env or file.
    pub fn key_ring(&self) -> anyhow::Result<KeyRing> {
        let spec = match (&self.token_keys, &self.token_keys_file) {
            (Some(s), _) => s.clone(),
            (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("cannot read token keys file {}: {e}", path.display())
            })?,
            (None, None) => anyhow::bail!(
                "no token signing key: set --token-keys / HOURGLASS_TOKEN_KEYS (id:secret, secret \
                 at least 16 bytes) or --token-keys-file"
            ),
        };
        KeyRing::parse(spec.trim(), self.token_ttl).map_err(|e| anyhow::anyhow!("token keys: {e}"))
    }

    pub fn cassandra_config(&self) -> CassandraConfig {
        CassandraConfig {
            contact_points: self.cassandra.clone(),
            keyspace: self.keyspace.clone(),
            replication: self.replication.clone(),
            consistency: self.consistency,
            connect_timeout: self.connect_timeout,
        }
    }

    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            readahead_buckets: self.readahead_buckets,
            max_in_flight: self.max_in_flight.max(1),
            max_storage_page: self.max_storage_page.max(1),
            ..EngineConfig::default()
        }
    }

    pub fn budget_config(&self) -> BudgetConfig {
        BudgetConfig {
            default: self.default_budget,
            max: self.max_budget,
            deadline_margin: self.deadline_margin,
        }
    }
}

/// Connects to storage, binds and serves until SIGTERM or Ctrl-C.
pub async fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let keys = args.key_ring()?;
    let store = CassandraStore::connect(&args.cassandra_config()).await?;
    tracing::info!(cassandra = ?args.cassandra, keyspace = %args.keyspace, "connected to storage");
    let engine = Arc::new(ReadEngine::new(Arc::new(store), args.engine_config()));
    let mut service = HourglassService::new(engine, keys, args.budget_config());
    if !args.partial_reads {
        service = service.without_partial_reads();
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, "serving");
    serve(listener, service, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
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
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight calls");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::budget::{DEFAULT_BUDGET, DEFAULT_DEADLINE_MARGIN, MAX_BUDGET};

    #[test]
    fn flag_defaults_match_the_library_constants() {
        let cli = Cli::try_parse_from(["hourglass", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("parsed serve")
        };
        assert_eq!(args.default_budget, DEFAULT_BUDGET);
        assert_eq!(args.max_budget, MAX_BUDGET);
        assert_eq!(args.deadline_margin, DEFAULT_DEADLINE_MARGIN);
    }

    #[test]
    fn bad_flags_name_the_problem() {
        let err = Cli::try_parse_from(["hourglass", "serve", "--consistency", "most"]).unwrap_err();
        assert!(
            err.to_string().contains("unknown consistency \"most\""),
            "{err}"
        );
        let err = Cli::try_parse_from(["hourglass", "serve", "--max-budget", "soon"]).unwrap_err();
        assert!(err.to_string().contains("--max-budget"), "{err}");
    }
}
