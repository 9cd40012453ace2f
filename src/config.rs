//! Command-line and environment configuration of the binary (clap derive;
//! every flag is also an `HOURGLASS_*` variable), and the `serve` entry.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::auth::Authenticator;
use crate::bulkhead::Bulkhead;
use crate::engine::budget::BudgetConfig;
use crate::engine::{EngineConfig, ReadEngine};
use crate::server::{serve_tls, set_health, HourglassService};
use crate::storage::breaker::{Breaker, BreakerConfig};
use crate::storage::cassandra::{
    parse_consistency, CassandraConfig, CassandraStore, Credentials, DEFAULT_REPLICATION,
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
    /// TOML config file; its keys are `serve` flag names. Precedence:
    /// command-line flags, then HOURGLASS_* variables, then this file, then defaults.
    #[arg(long, global = true, env = "HOURGLASS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "HOURGLASS_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Export tracing spans to this OTLP/gRPC collector (built with `--features otel`).
    #[cfg(feature = "otel")]
    #[arg(long, global = true, env = "HOURGLASS_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the config file (--config) and print the effective `serve`
    /// configuration, secrets masked.
    Check,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server.
    Serve(Box<ServeArgs>),
    /// Write a wide demo series through a running server and read it back.
    Demo(DemoArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Load testing: seed, run, compare, chart, bench.
    #[command(subcommand)]
    Load(crate::load::LoadCommand),
}

/// Where metrics are served, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

fn parse_metrics_listen(s: &str) -> Result<MetricsListen, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(MetricsListen(None));
    }
    s.parse()
        .map(|a| MetricsListen(Some(a)))
        .map_err(|e| format!("{e}: expected host:port or \"off\""))
}

/// Parses a human duration (`250ms`, `2s`, `5m`, `1h`) for flags.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
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
    /// Token signing keys `id:secret[,id:secret]`; the first signs, all
    /// verify. A secret: only from the environment or the config file.
    #[arg(
        long,
        env = "HOURGLASS_TOKEN_KEYS",
        hide_env_values = true,
        hide = true
    )]
    pub token_keys: Option<Secret>,
    /// File holding the token keys (same format), instead of --token-keys.
    #[arg(long, env = "HOURGLASS_TOKEN_KEYS_FILE", conflicts_with = "token_keys")]
    pub token_keys_file: Option<std::path::PathBuf>,
    /// How long a continuation token stays valid.
    #[arg(long, env = "HOURGLASS_TOKEN_TTL", default_value = "24h", value_parser = parse_duration)]
    pub token_ttl: Duration,
    /// Read budget when a request has neither an SLO nor a deadline.
    #[arg(long, env = "HOURGLASS_DEFAULT_BUDGET", default_value = "2s", value_parser = parse_duration)]
    pub default_budget: Duration,
    /// Upper bound on any read budget.
    #[arg(long, env = "HOURGLASS_MAX_BUDGET", default_value = "30s", value_parser = parse_duration)]
    pub max_budget: Duration,
    /// Subtracted from client deadlines to leave time for the response.
    #[arg(long, env = "HOURGLASS_DEADLINE_MARGIN", default_value = "5ms", value_parser = parse_duration)]
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
    /// Address of the Prometheus metrics endpoint (`/metrics`); "off" disables it.
    #[arg(long, env = "HOURGLASS_METRICS_LISTEN", default_value = "127.0.0.1:9464", value_parser = parse_metrics_listen)]
    pub metrics_listen: MetricsListen,
    /// How long in-flight calls may take to finish after a shutdown signal.
    #[arg(long, env = "HOURGLASS_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// How often storage is probed for the health service.
    #[arg(long, env = "HOURGLASS_HEALTH_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub health_interval: Duration,
    /// Consecutive transient storage failures that open the circuit breaker.
    #[arg(long, env = "HOURGLASS_BREAKER_FAILURES", default_value_t = 5)]
    pub breaker_failures: u32,
    /// How long the open circuit fails requests fast before probing storage.
    #[arg(long, env = "HOURGLASS_BREAKER_COOL_DOWN", default_value = "2s", value_parser = parse_duration)]
    pub breaker_cool_down: Duration,
    /// Concurrent scans (ReadEvents + StreamEvents) this server runs at most;
    /// more are refused at once with RESOURCE_EXHAUSTED.
    #[arg(long, env = "HOURGLASS_MAX_SCANS", default_value_t = crate::bulkhead::DEFAULT_MAX_SCANS)]
    pub max_scans: usize,
    /// Concurrent scans of one namespace this server runs at most.
    #[arg(long, env = "HOURGLASS_MAX_SCANS_PER_NAMESPACE", default_value_t = crate::bulkhead::DEFAULT_MAX_SCANS_PER_NAMESPACE)]
    pub max_scans_per_namespace: usize,
    /// PEM certificate chain: serve gRPC over TLS (needs --tls-key).
    #[arg(long, env = "HOURGLASS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "HOURGLASS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: also require client certificates signed by them
    /// (mutual TLS).
    #[arg(long, env = "HOURGLASS_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// TOML file of bearer-token clients and their per-namespace read/write
    /// permissions (see `auth` in the docs); without it nobody is
    /// authenticated.
    #[arg(long, env = "HOURGLASS_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,
    /// Cassandra username (PasswordAuthenticator).
    #[arg(long, env = "HOURGLASS_CASSANDRA_USERNAME")]
    pub cassandra_username: Option<String>,
    /// Cassandra password; a secret, so only from the environment or the
    /// config file, never the command line.
    #[arg(
        long,
        env = "HOURGLASS_CASSANDRA_PASSWORD",
        hide_env_values = true,
        hide = true
    )]
    pub cassandra_password: Option<Secret>,
    /// File holding the Cassandra password.
    #[arg(
        long,
        env = "HOURGLASS_CASSANDRA_PASSWORD_FILE",
        conflicts_with = "cassandra_password"
    )]
    pub cassandra_password_file: Option<PathBuf>,
    /// PEM CA of the Cassandra nodes' certificates: connect over TLS.
    #[arg(long, env = "HOURGLASS_CASSANDRA_TLS_CA")]
    pub cassandra_tls_ca: Option<PathBuf>,
    /// How long to wait for Cassandra at start.
    #[arg(long, env = "HOURGLASS_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
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
            (Some(s), _) => s.expose().to_string(),
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

    /// The Cassandra connection settings; reads the password file.
    pub fn cassandra_config(&self) -> anyhow::Result<CassandraConfig> {
        let password = match (&self.cassandra_password, &self.cassandra_password_file) {
            (Some(p), _) => Some(p.expose().to_string()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "cannot read Cassandra password file {}: {e}",
                            path.display()
                        )
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
            ),
            (None, None) => None,
        };
        let credentials = match (&self.cassandra_username, password) {
            (Some(username), Some(password)) => Some(Credentials {
                username: username.clone(),
                password,
            }),
            (None, None) => None,
            (Some(_), None) => anyhow::bail!(
                "--cassandra-username needs a password: set HOURGLASS_CASSANDRA_PASSWORD or \
                 --cassandra-password-file"
            ),
            (None, Some(_)) => anyhow::bail!("a Cassandra password needs --cassandra-username"),
        };
        Ok(CassandraConfig {
            contact_points: self.cassandra.clone(),
            keyspace: self.keyspace.clone(),
            replication: self.replication.clone(),
            consistency: self.consistency,
            connect_timeout: self.connect_timeout,
            credentials,
            tls_ca: self.cassandra_tls_ca.clone(),
        })
    }

    /// The gRPC server's TLS settings, if TLS is on; reads the PEM files.
    pub fn tls_config(&self) -> anyhow::Result<Option<ServerTlsConfig>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let read = |what: &str, p: &Path| {
            std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {what} {}: {e}", p.display()))
        };
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
            read("--tls-cert", cert)?,
            read("--tls-key", key)?,
        ));
        if let Some(ca) = &self.tls_client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(read("--tls-client-ca", ca)?));
        }
        Ok(Some(tls))
    }

    /// The bearer-token clients, if authentication is on.
    pub fn authenticator(&self) -> anyhow::Result<Option<Arc<Authenticator>>> {
        self.auth_file
            .as_deref()
            .map(|p| Authenticator::load(p).map(Arc::new))
            .transpose()
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

/// Connects to storage, binds and serves until SIGTERM or Ctrl-C; then
/// reports NOT_SERVING, ends running reads partially and waits at most
/// `--drain-timeout` for in-flight calls.
pub async fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let keys = args.key_ring()?;
    let tls = args.tls_config()?;
    let auth = args.authenticator()?;
    let cassandra = args.cassandra_config()?;
    if let MetricsListen(Some(addr)) = args.metrics_listen {
        crate::telemetry::install_prometheus(addr)?;
        tracing::info!(%addr, "serving metrics at /metrics");
    }
    let store = Arc::new(CassandraStore::connect(&cassandra).await?);
    tracing::info!(cassandra = ?args.cassandra, keyspace = %args.keyspace, "connected to storage");
    let drain = tokio_util::sync::CancellationToken::new();
    let breaker = Breaker::new(
        store.clone(),
        BreakerConfig {
            failure_threshold: args.breaker_failures.max(1),
            cool_down: args.breaker_cool_down,
        },
    );
    let engine = Arc::new(
        ReadEngine::new(Arc::new(breaker), args.engine_config()).with_drain(drain.clone()),
    );
    let mut service = HourglassService::new(engine, keys, args.budget_config())
        .with_bulkhead(Bulkhead::new(args.max_scans, args.max_scans_per_namespace));
    if !args.partial_reads {
        service = service.without_partial_reads();
    }
    if let Some(auth) = auth {
        tracing::info!(clients = auth.len(), "bearer-token authentication on");
        service = service.with_auth(auth);
    }
    let (reporter, health) = tonic_health::server::health_reporter();
    set_health(&reporter, true).await;
    let process_metrics = tokio::spawn(crate::telemetry::sample_process_metrics());
    let probe = tokio::spawn(probe_storage(
        store,
        reporter.clone(),
        args.health_interval,
        drain.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, tls = tls.is_some(), "serving");
    let shutdown = {
        let (drain, reporter) = (drain.clone(), reporter.clone());
        async move {
            shutdown_signal().await;
            set_health(&reporter, false).await;
            drain.cancel();
        }
    };
    let drain_timeout = args.drain_timeout;
    let bounded = async {
        drain.cancelled().await;
        tokio::time::sleep(drain_timeout).await;
    };
    tokio::select! {
        served = serve_tls(listener, tls, service, health, shutdown) => served?,
        _ = bounded => tracing::warn!(?drain_timeout, "in-flight calls outlived the drain timeout; exiting"),
    }
    probe.abort();
    process_metrics.abort();
    tracing::info!("stopped");
    Ok(())
}

/// Keeps the health service in step with storage: SERVING while Cassandra
/// answers, NOT_SERVING while it does not or once draining began.
async fn probe_storage(
    store: Arc<CassandraStore>,
    reporter: tonic_health::server::HealthReporter,
    interval: Duration,
    drain: tokio_util::sync::CancellationToken,
) {
    let mut last = None;
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = drain.cancelled() => return,
        }
        let up = store
            .probe(interval.max(Duration::from_millis(500)))
            .await
            .is_ok();
        metrics::gauge!(crate::telemetry::STORAGE_UP).set(if up { 1.0 } else { 0.0 });
        if last != Some(up) && !drain.is_cancelled() {
            tracing::info!(up, "storage health changed");
            set_health(&reporter, up).await;
            last = Some(up);
        }
    }
}

/// Applies a TOML config file: every key names a `serve` flag (`max-budget`
/// or `max_budget`) and sets its HOURGLASS_* variable unless that variable
/// is already set, so flags beat variables beat the file. Unknown keys and
/// non-scalar values are errors naming the key.
pub fn apply_config_file(path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| anyhow::anyhow!("config file {} is not valid TOML: {e}", path.display()))?;
    let cmd = <Cli as clap::CommandFactory>::command();
    let serve = cmd.find_subcommand("serve").expect("serve subcommand");
    let mut settings = Vec::new();
    for (key, value) in &table {
        let flag = key.replace('_', "-");
        let env = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(flag.as_str()))
            .and_then(|a| a.get_env())
            .ok_or_else(|| {
                anyhow::anyhow!("config file {}: unknown key {key:?}", path.display())
            })?;
        let value = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect::<Vec<_>>()
                .join(","),
            _ => anyhow::bail!(
                "config file {}: key {key:?} must be a string, number, boolean or list",
                path.display()
            ),
        };
        settings.push((env.to_os_string(), value));
    }
    for (env, value) in settings {
        if std::env::var_os(&env).is_none() {
            // SAFETY: called from `main` before any other thread starts.
            unsafe { std::env::set_var(env, value) };
        }
    }
    Ok(())
}

/// A secret setting: its Debug form is redacted, so printing the parsed
/// configuration can never show it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<hidden>)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

/// Flags whose values are secrets: refused on the command line (where
/// `ps` and shell history would show them); set them through the
/// environment, the config file or their `-file` flags.
pub const SECRET_FLAGS: [(&str, &str); 2] = [
    ("--token-keys", "HOURGLASS_TOKEN_KEYS or --token-keys-file"),
    (
        "--cassandra-password",
        "HOURGLASS_CASSANDRA_PASSWORD or --cassandra-password-file",
    ),
];

/// Refuses secrets given as command-line flags.
pub fn reject_secret_flags(args: &[String]) -> anyhow::Result<()> {
    for a in args {
        for (flag, instead) in SECRET_FLAGS {
            if a == flag
                || a.strip_prefix(flag)
                    .is_some_and(|rest| rest.starts_with('='))
            {
                anyhow::bail!(
                    "{flag} would put a secret on the command line, visible to other users; use {instead}"
                );
            }
        }
    }
    Ok(())
}

/// The config file named by `--config` / `--config=` in `args`, else by
/// HOURGLASS_CONFIG; read before clap parses, so the file can feed defaults.
pub fn config_path_from(args: &[String]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    std::env::var_os("HOURGLASS_CONFIG").map(PathBuf::from)
}

/// `config check`: the effective `serve` configuration, secrets masked.
pub fn check_config() -> anyhow::Result<String> {
    let cli = Cli::try_parse_from(["hourglass", "serve"]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let Command::Serve(args) = cli.command else {
        unreachable!("parsed the serve subcommand")
    };
    let keys = args.key_ring()?;
    let masked_keys = format!(
        "{} key(s), signing with {:?} (secrets hidden)",
        keys.key_count(),
        keys.signing_id()
    );
    let rows: Vec<(&str, String)> = vec![
        ("listen", args.listen.to_string()),
        ("cassandra", args.cassandra.join(",")),
        ("keyspace", args.keyspace.clone()),
        ("consistency", format!("{:?}", args.consistency)),
        ("replication", args.replication.clone()),
        ("token-keys", masked_keys),
        (
            "tls",
            match (&args.tls_cert, &args.tls_client_ca) {
                (None, _) => "off".to_string(),
                (Some(c), None) => format!("on, certificate {}", c.display()),
                (Some(c), Some(ca)) => format!(
                    "on, certificate {}, client certificates from {}",
                    c.display(),
                    ca.display()
                ),
            },
        ),
        (
            "auth-file",
            match args.authenticator()? {
                None => "off (no authentication)".to_string(),
                Some(a) => format!("{} client(s) (token hashes hidden)", a.len()),
            },
        ),
        (
            "cassandra-username",
            args.cassandra_username
                .clone()
                .unwrap_or_else(|| "(none)".into()),
        ),
        (
            "cassandra-password",
            match args.cassandra_config()?.credentials {
                Some(_) => "set (hidden)".to_string(),
                None => "(none)".to_string(),
            },
        ),
        (
            "cassandra-tls-ca",
            args.cassandra_tls_ca
                .as_ref()
                .map_or("off".into(), |p| p.display().to_string()),
        ),
        ("max-scans", args.max_scans.to_string()),
        (
            "max-scans-per-namespace",
            args.max_scans_per_namespace.to_string(),
        ),
        (
            "token-ttl",
            humantime::format_duration(args.token_ttl).to_string(),
        ),
        (
            "default-budget",
            humantime::format_duration(args.default_budget).to_string(),
        ),
        (
            "max-budget",
            humantime::format_duration(args.max_budget).to_string(),
        ),
        (
            "deadline-margin",
            humantime::format_duration(args.deadline_margin).to_string(),
        ),
        ("readahead-buckets", args.readahead_buckets.to_string()),
        ("max-in-flight", args.max_in_flight.to_string()),
        ("max-storage-page", args.max_storage_page.to_string()),
        ("partial-reads", args.partial_reads.to_string()),
        (
            "metrics-listen",
            args.metrics_listen
                .0
                .map_or("off".into(), |a| a.to_string()),
        ),
        (
            "drain-timeout",
            humantime::format_duration(args.drain_timeout).to_string(),
        ),
        (
            "health-interval",
            humantime::format_duration(args.health_interval).to_string(),
        ),
        (
            "connect-timeout",
            humantime::format_duration(args.connect_timeout).to_string(),
        ),
    ];
    Ok(rows.iter().map(|(k, v)| format!("{k} = {v}\n")).collect())
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
    fn parsed_secrets_never_show_in_debug_output() {
        std::env::set_var("HOURGLASS_CASSANDRA_PASSWORD", "debug-secret-42");
        let cli = Cli::try_parse_from(["hourglass", "serve"]).unwrap();
        std::env::remove_var("HOURGLASS_CASSANDRA_PASSWORD");
        let Command::Serve(args) = cli.command else {
            panic!("parsed serve")
        };
        assert_eq!(
            args.cassandra_password.as_ref().map(Secret::expose),
            Some("debug-secret-42")
        );
        let debug = format!("{args:?}");
        assert!(debug.contains("Secret(<hidden>)"), "{debug}");
        assert!(!debug.contains("debug-secret-42"), "{debug}");
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
