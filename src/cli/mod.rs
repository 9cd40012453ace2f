//! The `hourglass` command line: clap arguments (every `serve` flag is also
//! an `HOURGLASS_*` variable and a key of the TOML config file), their
//! conversion into a [`ServerConfig`], and `config check`.
//!
//! Precedence of a `serve` setting: command-line flag, then environment
//! variable, then config file, then default. The file's values become clap
//! defaults ([`parse`]), so clap applies that order itself; nothing writes
//! the process environment. Defaults come from the library's own constants
//! and `Default` impls, never repeated here as literals.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::{Serialize, Serializer};

use crate::auth::Authenticator;
use crate::bulkhead::{DEFAULT_MAX_SCANS, DEFAULT_MAX_SCANS_PER_NAMESPACE};
use crate::engine::budget::BudgetConfig;
use crate::engine::reserve::RESPONSE_COST;
use crate::engine::{ContinuationConfig, EngineConfig};
use crate::server::{ServerConfig, ServerTls, DEFAULT_DRAIN_TIMEOUT, DEFAULT_HEALTH_INTERVAL};
use crate::storage::breaker::BreakerConfig;
use crate::storage::cassandra::{CassandraConfig, CassandraStore, Credentials};
use crate::storage::hedging::HedgeConfig;
use crate::storage::shard_index;
use crate::telemetry::DEFAULT_METRICS_LISTEN;
use crate::token::{KeyRing, DEFAULT_TOKEN_TTL};

mod values;
use values::as_displayed;
pub use values::{ConsistencyArg, HumanDuration, MetricsListen, Secret};

/// Default gRPC listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Default Cassandra contact point of the binary: the project's local
/// development node (`scripts/cassandra`), not Cassandra's usual 9042.
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
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Bring a namespace an older release created onto the shard index:
    /// name in each bucket's index entry the shards holding its rows, then
    /// mark the namespace, so reads ask only those shards instead of every
    /// one. Run it once every replica runs this release; running replicas
    /// pick the change up as they restart. Takes the settings of `serve`
    /// (its flags, HOURGLASS_* variables and the config file), of which it
    /// uses the Cassandra ones.
    IndexShards(Box<IndexShardsArgs>),
}

/// The subcommands that take `serve`'s settings, the config file's included.
const SERVE_SETTINGS: [&str; 2] = ["serve", "index-shards"];

/// The arguments of `index-shards`.
#[derive(Debug, Args)]
pub struct IndexShardsArgs {
    /// The namespace to bring onto the shard index.
    #[arg(long)]
    pub namespace: String,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// The arguments of `serve`. Serialized (secrets hidden) by `config check`.
// On/off flags are the command line's own switches, each its own setting,
// not a state machine folded into bools.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Args, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "HOURGLASS_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Cassandra/ScyllaDB contact points, comma separated host:port.
    #[arg(long, env = "HOURGLASS_CASSANDRA", default_value = DEFAULT_CASSANDRA, value_delimiter = ',')]
    #[serde(serialize_with = "comma_separated")]
    pub cassandra: Vec<String>,
    /// Keyspace holding Hourglass's tables (created if missing).
    #[arg(long, env = "HOURGLASS_KEYSPACE", default_value = CassandraConfig::default().keyspace)]
    pub keyspace: String,
    /// Consistency level of reads and writes.
    #[arg(long, env = "HOURGLASS_CONSISTENCY", default_value_t = ConsistencyArg(CassandraConfig::default().consistency))]
    #[serde(serialize_with = "as_displayed")]
    pub consistency: ConsistencyArg,
    /// CQL replication map used if the keyspace is created.
    #[arg(long, env = "HOURGLASS_REPLICATION", default_value = CassandraConfig::default().replication)]
    pub replication: String,
    /// Hedge storage reads: a read whose coordinator is slow (past the 95th
    /// percentile of recent reads) is sent to the next replica too, and a
    /// node that loses the race goes last in query plans for a while.
    #[arg(long, env = "HOURGLASS_HEDGING", default_value_t = true, action = clap::ArgAction::Set)]
    pub hedging: bool,
    /// Hedges per storage read at most, over time (0.1: 10% extra requests),
    /// besides 2 a second that a quiet replica may always send.
    #[arg(long, env = "HOURGLASS_HEDGE_MAX_EXTRA", default_value_t = HedgeConfig::default().max_extra, value_parser = parse_share)]
    pub hedge_max_extra: f64,
    /// Token signing keys `id:secret[,id:secret]`; the first signs, all
    /// verify. A secret: only from the environment or the config file.
    #[arg(
        long,
        env = "HOURGLASS_TOKEN_KEYS",
        hide_env_values = true,
        hide_default_value = true,
        hide = true
    )]
    pub token_keys: Option<Secret>,
    /// File holding the token keys `id:secret[,id:secret]` (the first
    /// signs, all verify), instead of HOURGLASS_TOKEN_KEYS or the config
    /// file's `token-keys` (secrets are refused on the command line).
    #[arg(long, env = "HOURGLASS_TOKEN_KEYS_FILE")]
    pub token_keys_file: Option<PathBuf>,
    /// How long a continuation token stays valid.
    #[arg(long, env = "HOURGLASS_TOKEN_TTL", default_value_t = HumanDuration(DEFAULT_TOKEN_TTL))]
    #[serde(serialize_with = "as_displayed")]
    pub token_ttl: HumanDuration,
    /// Write shard starts into continuation tokens (format version 3);
    /// false writes version 2, which the release before reads: set it while
    /// a fleet is upgraded from that release, replica by replica.
    #[arg(long, env = "HOURGLASS_TOKEN_SHARD_STARTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub token_shard_starts: bool,
    /// Read budget when a request has neither an SLO nor a deadline.
    #[arg(long, env = "HOURGLASS_DEFAULT_BUDGET", default_value_t = HumanDuration(BudgetConfig::default().default))]
    #[serde(serialize_with = "as_displayed")]
    pub default_budget: HumanDuration,
    /// Upper bound on any read budget.
    #[arg(long, env = "HOURGLASS_MAX_BUDGET", default_value_t = HumanDuration(BudgetConfig::default().max))]
    #[serde(serialize_with = "as_displayed")]
    pub max_budget: HumanDuration,
    /// Subtracted from client deadlines to leave time for the response (from
    /// a 1 s deadline on, with a hundredth of the deadline, which gRPC C-core
    /// clients may add rounding their grpc-timeout); less than --max-budget.
    #[arg(long, env = "HOURGLASS_DEADLINE_MARGIN", default_value_t = HumanDuration(BudgetConfig::default().deadline_margin))]
    #[serde(serialize_with = "as_displayed")]
    pub deadline_margin: HumanDuration,
    /// Buckets read ahead of the one being merged.
    #[arg(long, env = "HOURGLASS_READAHEAD_BUCKETS", default_value_t = EngineConfig::default().readahead_buckets)]
    pub readahead_buckets: usize,
    /// Storage requests in flight per read past which a call sends no page
    /// for the buckets after the one being merged. That bucket has a page
    /// in flight for each of its shards holding rows whatever this (its
    /// merge needs each such shard's next rows), besides the bucket-index
    /// query and probes;
    /// fetching ahead is bounded by bytes instead (see
    /// --continuation-bytes).
    #[arg(long, env = "HOURGLASS_MAX_IN_FLIGHT", default_value_t = EngineConfig::default().max_in_flight)]
    pub max_in_flight: usize,
    /// Largest storage page in rows (a page also asks for at most 1 MiB of
    /// rows at the mean row size the read has seen).
    #[arg(long, env = "HOURGLASS_MAX_STORAGE_PAGE", default_value_t = EngineConfig::default().max_storage_page)]
    pub max_storage_page: usize,
    /// Bytes of rows held for hot continuations, all reads together (0
    /// turns hot continuations off: every token resumes from its position).
    #[arg(long, env = "HOURGLASS_CONTINUATION_BYTES", default_value_t = ContinuationConfig::default().max_bytes)]
    pub continuation_bytes: usize,
    /// Reads held for hot continuations, all clients together.
    #[arg(long, env = "HOURGLASS_CONTINUATION_ENTRIES", default_value_t = ContinuationConfig::default().max_entries)]
    pub continuation_entries: usize,
    /// Reads held for hot continuations per client (the authenticated
    /// principal, else the peer IP).
    #[arg(long, env = "HOURGLASS_CONTINUATION_PER_CLIENT", default_value_t = ContinuationConfig::default().per_client)]
    pub continuation_per_client: usize,
    /// How long a partial read's state is held for the call presenting its token.
    #[arg(long, env = "HOURGLASS_CONTINUATION_MAX_AGE", default_value_t = HumanDuration(ContinuationConfig::default().max_age))]
    #[serde(serialize_with = "as_displayed")]
    pub continuation_max_age: HumanDuration,
    /// Return partial rows when a read's budget ends (false: ignore SLOs and
    /// deadlines and read whole pages, the baseline for benchmarks).
    #[arg(long, env = "HOURGLASS_PARTIAL_READS", default_value_t = true, action = clap::ArgAction::Set)]
    pub partial_reads: bool,
    /// Address of the Prometheus metrics endpoint (`/metrics`); "off" disables it.
    #[arg(long, env = "HOURGLASS_METRICS_LISTEN", default_value_t = MetricsListen(Some(DEFAULT_METRICS_LISTEN)))]
    #[serde(serialize_with = "as_displayed")]
    pub metrics_listen: MetricsListen,
    /// How long after a shutdown signal the server goes on serving as usual
    /// while health reports NOT_SERVING, so load balancers and
    /// health-checking clients move away before the drain begins.
    #[arg(long, env = "HOURGLASS_DRAIN_DELAY", default_value_t = HumanDuration(std::time::Duration::ZERO))]
    #[serde(serialize_with = "as_displayed")]
    pub drain_delay: HumanDuration,
    /// How long a client may take nothing of a response the server has
    /// ready (a unary response, a stream's full queue) before its
    /// connection is closed, freeing the calls' slots and memory.
    #[arg(long, env = "HOURGLASS_SEND_STALL", default_value_t = HumanDuration(crate::server::DEFAULT_SEND_STALL))]
    #[serde(serialize_with = "as_displayed")]
    pub send_stall: HumanDuration,
    /// How long a new connection has for its TLS handshake (with TLS on)
    /// and its client's HTTP/2 preface; one that takes longer is closed,
    /// so silent connections cannot hold the server's file descriptors.
    #[arg(long, env = "HOURGLASS_HANDSHAKE_TIMEOUT", default_value_t = HumanDuration(crate::server::DEFAULT_HANDSHAKE_TIMEOUT))]
    #[serde(serialize_with = "as_displayed")]
    pub handshake_timeout: HumanDuration,
    /// Bytes of requests being received that the server buffers at once,
    /// all calls together (a request past it is refused
    /// REQUEST_BUFFER_FULL); at least the 64 MiB message limit.
    #[arg(long, env = "HOURGLASS_REQUEST_BUFFER", default_value_t = crate::server::DEFAULT_REQUEST_BUFFER)]
    pub request_buffer: usize,
    /// How long in-flight calls may take to finish after a shutdown signal.
    #[arg(long, env = "HOURGLASS_DRAIN_TIMEOUT", default_value_t = HumanDuration(DEFAULT_DRAIN_TIMEOUT))]
    #[serde(serialize_with = "as_displayed")]
    pub drain_timeout: HumanDuration,
    /// How often storage is probed for the health service.
    #[arg(long, env = "HOURGLASS_HEALTH_INTERVAL", default_value_t = HumanDuration(DEFAULT_HEALTH_INTERVAL))]
    #[serde(serialize_with = "as_displayed")]
    pub health_interval: HumanDuration,
    /// Consecutive transient storage failures that open the circuit breaker
    /// (failures of requests in flight together count once).
    #[arg(long, env = "HOURGLASS_BREAKER_FAILURES", default_value_t = BreakerConfig::default().failure_threshold)]
    pub breaker_failures: u32,
    /// How long the open circuit fails requests fast before probing storage.
    #[arg(long, env = "HOURGLASS_BREAKER_COOL_DOWN", default_value_t = HumanDuration(BreakerConfig::default().cool_down))]
    #[serde(serialize_with = "as_displayed")]
    pub breaker_cool_down: HumanDuration,
    /// Concurrent scans (ReadEvents + StreamEvents) this server runs at most;
    /// more are refused at once with RESOURCE_EXHAUSTED.
    #[arg(long, env = "HOURGLASS_MAX_SCANS", default_value_t = DEFAULT_MAX_SCANS)]
    pub max_scans: usize,
    /// Concurrent scans of one namespace this server runs at most.
    #[arg(long, env = "HOURGLASS_MAX_SCANS_PER_NAMESPACE", default_value_t = DEFAULT_MAX_SCANS_PER_NAMESPACE)]
    pub max_scans_per_namespace: usize,
    /// Adapt the number of concurrent reads to measured latency, under
    /// --max-scans (false: only the static bounds).
    #[arg(long, env = "HOURGLASS_ADAPTIVE_ADMISSION", default_value_t = true, action = clap::ArgAction::Set)]
    pub adaptive_admission: bool,
    /// PEM certificate chain: serve gRPC over TLS (needs --tls-key).
    #[arg(long, env = "HOURGLASS_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "HOURGLASS_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: also require client certificates signed by them
    /// (mutual TLS; needs --tls-cert).
    #[arg(long, env = "HOURGLASS_TLS_CLIENT_CA")]
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
        hide_default_value = true,
        hide = true
    )]
    pub cassandra_password: Option<Secret>,
    /// File holding the Cassandra password, instead of
    /// HOURGLASS_CASSANDRA_PASSWORD or the config file's `cassandra-password`
    /// (secrets are refused on the command line).
    #[arg(long, env = "HOURGLASS_CASSANDRA_PASSWORD_FILE")]
    pub cassandra_password_file: Option<PathBuf>,
    /// PEM CA of the Cassandra nodes' certificates: connect over TLS.
    #[arg(long, env = "HOURGLASS_CASSANDRA_TLS_CA")]
    pub cassandra_tls_ca: Option<PathBuf>,
    /// How long to wait for Cassandra at start.
    #[arg(long, env = "HOURGLASS_CONNECT_TIMEOUT", default_value_t = HumanDuration(CassandraConfig::default().connect_timeout))]
    #[serde(serialize_with = "as_displayed")]
    pub connect_timeout: HumanDuration,
}

/// A share between 0 and 1.
fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a share between 0 and 1 (0.1 is 10%)")),
    }
}

fn comma_separated<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.join(","))
}

/// Reads a PEM file named by a flag, which must hold a block whose
/// `-----BEGIN ` line ends in `label` (the transport otherwise takes a key
/// for a certificate and fails only at the first connection).
fn read_pem(flag: &str, path: &Path, label: &str) -> anyhow::Result<Vec<u8>> {
    let pem = read_file(flag, path)?;
    let begin = format!("-----BEGIN {label}");
    let text = String::from_utf8_lossy(&pem);
    let holds = text.lines().any(|l| {
        l.trim_end()
            .strip_prefix("-----BEGIN ")
            .is_some_and(|rest| rest.ends_with(label))
    });
    if !holds {
        anyhow::bail!(
            "{flag} {} holds no PEM block like {begin:?}",
            path.display()
        );
    }
    Ok(pem)
}

/// Reads a file named by a flag, naming the flag and path on failure.
fn read_file(flag: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {flag} {}: {e}", path.display()))
}

impl ServeArgs {
    /// The signing keys from the variable, the config file or the keys file.
    pub fn key_ring(&self) -> anyhow::Result<KeyRing> {
        let spec = match (&self.token_keys, &self.token_keys_file) {
            (Some(_), Some(_)) => anyhow::bail!(
                "token keys are given twice: as token-keys (HOURGLASS_TOKEN_KEYS or the config \
                 file) and as --token-keys-file (the flag, HOURGLASS_TOKEN_KEYS_FILE or the \
                 config file); give one"
            ),
            (Some(s), None) => s.expose().to_string(),
            (None, Some(path)) => {
                String::from_utf8_lossy(&read_file("--token-keys-file", path)?).into_owned()
            }
            (None, None) => anyhow::bail!(
                "no token signing key: set HOURGLASS_TOKEN_KEYS or the config file's token-keys \
                 (id:secret, secret at least 16 bytes), or --token-keys-file"
            ),
        };
        KeyRing::parse(spec.trim(), self.token_ttl.0)
            .map(|ring| ring.with_shard_starts(self.token_shard_starts))
            .map_err(|e| anyhow::anyhow!("token keys: {e}"))
    }

    /// The Cassandra connection settings; reads the password file.
    pub fn cassandra_config(&self) -> anyhow::Result<CassandraConfig> {
        let password = match (&self.cassandra_password, &self.cassandra_password_file) {
            (Some(_), Some(_)) => anyhow::bail!(
                "the Cassandra password is given twice: as cassandra-password \
                 (HOURGLASS_CASSANDRA_PASSWORD or the config file) and as \
                 --cassandra-password-file; give one"
            ),
            (Some(p), None) => Some(p.expose().to_string()),
            (None, Some(path)) => Some(
                String::from_utf8_lossy(&read_file("--cassandra-password-file", path)?)
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
                "--cassandra-username needs a password: set HOURGLASS_CASSANDRA_PASSWORD, the \
                 config file's cassandra-password or --cassandra-password-file"
            ),
            (None, Some(_)) => anyhow::bail!("a Cassandra password needs --cassandra-username"),
        };
        if let Some(ca) = &self.cassandra_tls_ca {
            read_pem("--cassandra-tls-ca", ca, "CERTIFICATE-----")?;
        }
        let config = CassandraConfig {
            contact_points: self.cassandra.clone(),
            keyspace: self.keyspace.clone(),
            replication: self.replication.clone(),
            consistency: self.consistency.0,
            connect_timeout: self.connect_timeout.0,
            credentials,
            tls_ca: self.cassandra_tls_ca.clone(),
            hedging: HedgeConfig {
                enabled: self.hedging,
                max_extra: self.hedge_max_extra,
                ..HedgeConfig::default()
            },
        };
        config.validate().map_err(anyhow::Error::msg)?;
        Ok(config)
    }

    /// The gRPC server's TLS settings, if TLS is on; reads the PEM files.
    pub fn tls_config(&self) -> anyhow::Result<Option<ServerTls>> {
        // Checked here, not by clap: the settings may come from different
        // sources (a flag, a variable, the config file), and a file that
        // names a certificate but no key must not serve plaintext.
        let (cert, key) = match (&self.tls_cert, &self.tls_key, &self.tls_client_ca) {
            (Some(cert), Some(key), _) => (cert, key),
            (None, None, None) => return Ok(None),
            (Some(_), None, _) => anyhow::bail!(
                "--tls-cert needs --tls-key (the flag, HOURGLASS_TLS_KEY or the config file's \
                 tls-key)"
            ),
            (None, Some(_), _) => anyhow::bail!(
                "--tls-key needs --tls-cert (the flag, HOURGLASS_TLS_CERT or the config file's \
                 tls-cert)"
            ),
            (None, None, Some(_)) => {
                anyhow::bail!("--tls-client-ca needs --tls-cert and --tls-key: mutual TLS is TLS")
            }
        };
        let cert_pem = read_pem("--tls-cert", cert, "CERTIFICATE-----")?;
        let key_pem = read_pem("--tls-key", key, "PRIVATE KEY-----")?;
        let ca_pem = self
            .tls_client_ca
            .as_deref()
            .map(|ca| read_pem("--tls-client-ca", ca, "CERTIFICATE-----"))
            .transpose()?;
        let tls = ServerTls::from_pem(&cert_pem, &key_pem, ca_pem.as_deref()).map_err(|e| {
            let flags = if ca_pem.is_some() {
                "--tls-cert, --tls-key, --tls-client-ca"
            } else {
                "--tls-cert, --tls-key"
            };
            anyhow::anyhow!("TLS ({flags}): {e}")
        })?;
        Ok(Some(tls))
    }

    /// The bearer-token clients, if authentication is on.
    pub fn authenticator(&self) -> anyhow::Result<Option<Arc<Authenticator>>> {
        self.auth_file
            .as_deref()
            .map(|p| Authenticator::load(p).map(Arc::new))
            .transpose()
    }

    /// The engine settings, checked: a bad value names its flag.
    pub fn engine_config(&self) -> anyhow::Result<EngineConfig> {
        let engine = EngineConfig {
            readahead_buckets: self.readahead_buckets,
            max_in_flight: self.max_in_flight,
            max_storage_page: self.max_storage_page,
            continuations: ContinuationConfig {
                max_bytes: self.continuation_bytes,
                max_entries: self.continuation_entries,
                per_client: self.continuation_per_client,
                max_age: self.continuation_max_age.0,
            },
            response_cost: Some(&RESPONSE_COST),
            ..EngineConfig::default()
        };
        engine
            .validate()
            .map_err(|e| anyhow::anyhow!("--{}: {e}", e.setting.replace('_', "-")))?;
        Ok(engine)
    }

    /// The server configuration these arguments describe; reads every file
    /// they name, so a bad file is an error before anything starts.
    pub fn server_config(&self) -> anyhow::Result<ServerConfig> {
        for (flag, value) in [
            ("--token-ttl", self.token_ttl),
            ("--max-budget", self.max_budget),
            ("--default-budget", self.default_budget),
            ("--health-interval", self.health_interval),
            ("--send-stall", self.send_stall),
            ("--handshake-timeout", self.handshake_timeout),
        ] {
            if value.0.is_zero() {
                anyhow::bail!("{flag} must be more than 0");
            }
        }
        if self.request_buffer < crate::api::MAX_MESSAGE_BYTES {
            anyhow::bail!(
                "--request-buffer must be at least {} (the largest message), got {}",
                crate::api::MAX_MESSAGE_BYTES,
                self.request_buffer
            );
        }
        if self.default_budget.0 > self.max_budget.0 {
            anyhow::bail!(
                "--default-budget ({}) is more than --max-budget ({}), which bounds every budget",
                self.default_budget,
                self.max_budget
            );
        }
        if self.deadline_margin.0 >= self.max_budget.0 {
            anyhow::bail!(
                "--deadline-margin ({}) must be less than --max-budget ({}): every read with a deadline would have no budget",
                self.deadline_margin,
                self.max_budget
            );
        }
        for (flag, value) in [
            ("--max-scans", self.max_scans),
            ("--max-scans-per-namespace", self.max_scans_per_namespace),
            ("--breaker-failures", self.breaker_failures as usize),
        ] {
            if value == 0 {
                anyhow::bail!("{flag} must be at least 1");
            }
        }
        let mut config = ServerConfig::new(self.cassandra_config()?, self.key_ring()?);
        config.budget = BudgetConfig {
            default: self.default_budget.0,
            max: self.max_budget.0,
            deadline_margin: self.deadline_margin.0,
        };
        config.engine = self.engine_config()?;
        config.breaker = BreakerConfig {
            failure_threshold: self.breaker_failures,
            cool_down: self.breaker_cool_down.0,
        };
        config.max_scans = self.max_scans;
        config.max_scans_per_namespace = self.max_scans_per_namespace;
        config.admission.adaptive = self.adaptive_admission;
        config.partial_reads = self.partial_reads;
        config.tls = self.tls_config()?;
        config.auth = self.authenticator()?;
        config.metrics_listen = self.metrics_listen.0;
        config.drain_delay = self.drain_delay.0;
        config.drain_timeout = self.drain_timeout.0;
        config.send_stall = self.send_stall.0;
        config.handshake_timeout = self.handshake_timeout.0;
        config.request_buffer = self.request_buffer;
        config.health_interval = self.health_interval.0;
        Ok(config)
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

/// Why the command line could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A secret was given as a flag.
    #[error(
        "{flag} would put a secret on the command line, visible to other users; use {instead}"
    )]
    SecretOnCommandLine {
        flag: &'static str,
        instead: &'static str,
    },
    /// The config file is unreadable or invalid.
    #[error("{0:#}")]
    ConfigFile(anyhow::Error),
    /// clap refused the arguments (or printed help or the version).
    #[error(transparent)]
    Clap(#[from] clap::Error),
}

/// Parses the command line `args` (program name first), with the config
/// file named by `--config` or HOURGLASS_CONFIG supplying defaults.
pub fn parse(args: &[String]) -> Result<Cli, CliError> {
    reject_secret_flags(args)?;
    let mut command = Cli::command();
    if let Some(path) = config_path_from(args) {
        command = apply_config_file(command, &path).map_err(CliError::ConfigFile)?;
    }
    let matches = command.try_get_matches_from(args)?;
    Ok(Cli::from_arg_matches(&matches)?)
}

/// Refuses secrets given as command-line flags.
fn reject_secret_flags(args: &[String]) -> Result<(), CliError> {
    for a in args {
        for (flag, instead) in SECRET_FLAGS {
            if a == flag
                || a.strip_prefix(flag)
                    .is_some_and(|rest| rest.starts_with('='))
            {
                return Err(CliError::SecretOnCommandLine { flag, instead });
            }
        }
    }
    Ok(())
}

/// The config file named by `--config` / `--config=` in `args`, else by
/// HOURGLASS_CONFIG; found before clap parses, so the file can feed defaults.
fn config_path_from(args: &[String]) -> Option<PathBuf> {
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

/// Makes the values of a TOML config file the defaults of `serve`'s flags
/// (in every subcommand taking them, [`SERVE_SETTINGS`]):
/// every key names a flag (`max-budget` or `max_budget`), so flags and
/// variables still beat the file. Unknown keys and non-scalar values are
/// errors naming the key.
fn apply_config_file(command: clap::Command, path: &Path) -> anyhow::Result<clap::Command> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        anyhow::anyhow!(
            "config file {} is {}",
            path.display(),
            toml_problem(&text, &e)
        )
    })?;
    let serve = command
        .find_subcommand("serve")
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no serve subcommand"))?;
    let mut settings = Vec::new();
    // Global flags (`log-format`) are the root command's; `config` names
    // the file itself.
    let mut global = Vec::new();
    let mut seen: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
    for (key, value) in &table {
        let flag = key.replace('_', "-");
        if let Some(other) = seen.insert(flag.clone(), key) {
            anyhow::bail!(
                "config file {}: {flag} is given twice (as {other:?} and {key:?})",
                path.display()
            );
        }
        let named = |a: &&clap::Arg| a.get_long() == Some(flag.as_str());
        let in_serve = serve
            .get_arguments()
            .find(named)
            .map(|a| a.get_id().clone());
        let in_root = || {
            command
                .get_arguments()
                .filter(|a| a.is_global_set() && a.get_long() != Some("config"))
                .find(named)
                .map(|a| a.get_id().clone())
        };
        let (id, is_global) = match in_serve {
            Some(id) => (id, false),
            None => (
                in_root().ok_or_else(|| {
                    anyhow::anyhow!("config file {}: unknown key {key:?}", path.display())
                })?,
                true,
            ),
        };
        let value = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(","),
            _ => anyhow::bail!(
                "config file {}: key {key:?} must be a string, number, boolean or list",
                path.display()
            ),
        };
        if is_global {
            global.push((id, value));
        } else {
            settings.push((id, value));
        }
    }
    let mut command = command;
    for name in SERVE_SETTINGS {
        command = command.mut_subcommand(name, |mut sub| {
            for (id, value) in &settings {
                sub = sub.mut_arg(id, |a| a.default_value(value.clone()));
            }
            sub
        });
    }
    for (id, value) in global {
        command = command.mut_arg(id, |a| a.default_value(value));
    }
    Ok(command)
}

/// What is wrong with the TOML `text` (a config or auth file), by line,
/// column and the parser's message alone: the error's usual rendering
/// quotes the line, which may hold a secret (`token-keys = "...`, or a
/// key file given in place of an auth file).
pub fn toml_problem(text: &str, e: &toml::de::Error) -> String {
    let (line, column) = e
        .span()
        .map_or((0, 0), |span| line_and_column(text, span.start));
    format!(
        "not valid TOML at line {line}, column {column}: {}",
        e.message()
    )
}

/// The 1-based line and column of byte `at` in `text`.
fn line_and_column(text: &str, at: usize) -> (usize, usize) {
    // A span off a character boundary must not panic an error message.
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// `index-shards`: brings the namespace onto the shard index (see
/// [`crate::storage::shard_index`]), telling its progress on stderr about
/// once a second; returns the summary.
pub async fn index_shards(args: &IndexShardsArgs) -> anyhow::Result<String> {
    let name = &args.namespace;
    crate::api::check_namespace_name("--namespace", name).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cfg = args.serve.cassandra_config()?;
    let store = CassandraStore::connect(&cfg).await?;
    let mut told = std::time::Instant::now();
    let report = shard_index::index_shards(&store, name, |r| {
        if told.elapsed() >= std::time::Duration::from_secs(1) {
            if r.series == 0 {
                eprintln!(
                    "finding the namespace's series: {} series of all namespaces read from the bucket index so far",
                    r.index_partitions
                );
            } else {
                eprintln!(
                    "{} series, {} buckets looked at, {} shards holding rows so far",
                    r.series, r.buckets, r.shards
                );
            }
            told = std::time::Instant::now();
        }
    })
    .await
    .map_err(|e| match e {
        shard_index::IndexShardsError::Storage(e) => anyhow::Error::new(e).context(
            "index-shards stopped before marking the namespace, so reads are as they were; \
             run it again",
        ),
        e @ shard_index::IndexShardsError::NotFound(_) => e.into(),
    })?;
    Ok(if report.already {
        format!("namespace {name:?} indexes its shards already: nothing to do\n")
    } else {
        format!(
            "namespace {name:?}: {} series, {} buckets looked at, {} shards holding rows named; \
             it now indexes its shards (running replicas ask every shard until they restart)\n",
            report.series, report.buckets, report.shards
        )
    })
}

/// `config check`: the effective `serve` configuration, one `key = value`
/// line per flag, secrets masked; fails as `serve` would on a bad setting
/// or an unreadable file.
pub fn check_config(config: Option<&Path>) -> anyhow::Result<String> {
    let mut args = vec!["hourglass".to_string(), "serve".to_string()];
    if let Some(path) = config {
        args.extend(["--config".to_string(), path.display().to_string()]);
    }
    let cli = parse(&args).map_err(|e| match e {
        // clap's message starts with its own "error: ".
        CliError::Clap(e) => {
            let message = e.to_string();
            let message = message.trim_start_matches("error: ").trim_end().to_string();
            anyhow::anyhow!("{message}")
        }
        other => anyhow::anyhow!("{other}"),
    })?;
    let log_format = clap::ValueEnum::to_possible_value(&cli.log_format)
        .map(|v| v.get_name().to_string())
        .unwrap_or_default();
    let Command::Serve(args) = cli.command else {
        anyhow::bail!("parsed the serve subcommand as another")
    };
    args.server_config()?;
    let serde_json::Value::Object(fields) = serde_json::to_value(&*args)? else {
        anyhow::bail!("serve arguments did not serialize as a map")
    };
    let mut out = format!("log-format = {log_format}\n");
    out.extend(fields.iter().map(|(k, v)| match v {
        serde_json::Value::Null => format!("{k} = (none)\n"),
        serde_json::Value::String(s) => format!("{k} = {s}\n"),
        other => format!("{k} = {other}\n"),
    }));
    Ok(out)
}

#[cfg(test)]
mod tests;
