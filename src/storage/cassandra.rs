//! Cassandra / ScyllaDB storage through the scylla driver.
//!
//! Tables (in the configured keyspace, created idempotently):
//! * `namespaces`: one row per namespace and its bucketing; `indexes_shards`
//!   is true for namespaces created since the bucket index names shards
//!   (null, read as false, for older ones).
//! * `events`: partition (namespace, series_id, bucket, shard), clustering
//!   (event_time, event_id) ascending; payload and frozen tags (frozen, so an
//!   insert writes no collection tombstone).
//! * `series_buckets`: partition (namespace, series_id), clustering bucket:
//!   the index of non-empty buckets, so sparse reads skip empty buckets;
//!   `shards`, the set of shards written in the bucket (each element with
//!   its write's TTL), so a read asks only those. A sparse series of a
//!   256-shard namespace cost a read 256 queries per bucket without it.
//!   Columns added since a table was first created are added to an
//!   existing table as a replica starts ([`add_missing_columns`]); a
//!   namespace an older release created is brought onto the shard index
//!   by [`super::shard_index`].
//!
//! One file (about 1,000 lines) on purpose: the schema, the prepared
//! statements, the reads and writes that bind them and the classification
//! of the driver's errors change together.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;

use scylla::client::execution_profile::{ExecutionProfile, ExecutionProfileHandle};
use scylla::policies::load_balancing::DefaultPolicy;

use super::hedging::{
    probe_demoted, size_class, AvoidDemoted, HedgeAt, HedgeConfig, HedgePolicy, HedgeStats,
    Hedging, Trace, SIZE_CLASSES,
};
use super::{BucketQuery, Cause, Created, IndexedBucket, ShardQuery, Storage, StorageError};
use crate::model::{self, Key, Namespace, NewEvent, Order, Row};

/// Default replication for a keyspace created by Hourglass.
pub const DEFAULT_REPLICATION: &str = "{'class': 'SimpleStrategy', 'replication_factor': 1}";
/// Rows per unlogged single-partition batch.
const BATCH_MAX_ROWS: usize = 200;
/// Payload bytes per batch, well under Cassandra's default batch limits.
const BATCH_MAX_BYTES: usize = 256 * 1024;
/// Concurrent storage requests of one WriteEvents call.
const WRITE_CONCURRENCY: usize = 32;
/// How long a bucket-index entry is trusted as written without rewriting it.
const INDEX_CACHE_TTL: Duration = Duration::from_secs(60);
/// Bound on remembered bucket-index entries.
const INDEX_CACHE_MAX: usize = 100_000;
/// Latest expiry Cassandra 4.x and 5.0 in its default
/// `storage_compatibility_mode` accept: 2038-01-19T03:14:06Z.
const MAX_EXPIRY_UNIX_SECONDS: i64 = i32::MAX as i64 - 1;
/// Expiry dates stay this far inside [`MAX_EXPIRY_UNIX_SECONDS`], against
/// clock skew between this server and the nodes.
const EXPIRY_SKEW_MARGIN_SECONDS: i64 = 24 * 3600;
// The index outlives its rows by the slack: rows written while its entry is
// cached (so not rewritten) still expire before it.
const _: () = assert!(model::INDEX_TTL_SLACK_SECONDS as u64 >= 2 * INDEX_CACHE_TTL.as_secs());
/// When a coordinator asks another replica for a read it is still waiting
/// on: at its table's p99, but never later than 5 ms. Cassandra's default
/// (p99 alone) waits as long as recent reads took, and on a cluster whose
/// latency history is short a replica that stops answering holds reads for
/// tens of milliseconds, past the budgets this service keeps. Set when
/// Hourglass creates its tables; older tables keep theirs (`ALTER TABLE ...
/// WITH speculative_retry = 'MIN(99p,5ms)'`).
const SPECULATIVE_RETRY: &str = "MIN(99p,5ms)";
/// Tries at creating the schema and preparing statements at connect.
const SCHEMA_ATTEMPTS: u32 = 5;
/// Timeout of write and metadata requests.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach and lay out the store.
#[derive(Clone, Debug)]
pub struct CassandraConfig {
    /// Contact points, `host:port`.
    pub contact_points: Vec<String>,
    pub keyspace: String,
    /// CQL replication map used when the keyspace is created.
    pub replication: String,
    pub consistency: Consistency,
    pub connect_timeout: Duration,
    /// Username and password for PasswordAuthenticator, if required.
    pub credentials: Option<Credentials>,
    /// PEM file of the CA that signed the nodes' certificates: connect with
    /// TLS (rustls) and verify them. Certificates must name the node's IP.
    pub tls_ca: Option<PathBuf>,
    /// Hedged reads (see [`super::hedging`]).
    pub hedging: HedgeConfig,
}

impl Default for CassandraConfig {
    fn default() -> Self {
        Self {
            contact_points: vec!["127.0.0.1:9042".into()],
            keyspace: "hourglass".into(),
            replication: DEFAULT_REPLICATION.into(),
            consistency: Consistency::LocalQuorum,
            connect_timeout: Duration::from_secs(10),
            credentials: None,
            tls_ca: None,
            hedging: HedgeConfig::default(),
        }
    }
}

/// Cassandra's longest keyspace name.
const MAX_KEYSPACE_CHARS: usize = 48;

impl CassandraConfig {
    /// Checks what can be checked without a node; the error names the
    /// setting by its `serve` flag.
    pub fn validate(&self) -> Result<(), String> {
        let ks = &self.keyspace;
        if ks.is_empty()
            || ks.len() > MAX_KEYSPACE_CHARS
            || !ks.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(format!(
                "--keyspace {ks:?} must be 1 to {MAX_KEYSPACE_CHARS} characters of [A-Za-z0-9_]"
            ));
        }
        let map = self.replication.trim();
        if !(map.starts_with('{') && map.ends_with('}') && map.contains("'class'")) {
            return Err(format!(
                "--replication {:?} is not a CQL replication map like {DEFAULT_REPLICATION:?}",
                self.replication
            ));
        }
        if self.contact_points.iter().all(|p| p.trim().is_empty()) {
            return Err("--cassandra names no contact point (host:port)".into());
        }
        if self.connect_timeout.is_zero() {
            return Err("--connect-timeout must be more than 0".into());
        }
        Ok(())
    }
}

/// CQL login. The password never appears in Debug output or logs.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// A rustls client config trusting the CA certificates in `ca_pem`.
fn tls_context(ca_pem: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_pem)
        .map_err(|e| format!("cannot read CA file {}: {e}", ca_pem.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("CA file {}: {e}", ca_pem.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("CA file {}: {e}", ca_pem.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("CA file {} holds no certificate", ca_pem.display()));
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// The Cassandra-backed [`Storage`].
pub struct CassandraStore {
    session: Arc<Session>,
    stmts: Statements,
    hedging: Arc<Hedging>,
    /// Reads that may hedge run with the profile of their size class.
    hedged: Vec<ExecutionProfileHandle>,
    /// The profile of reads that do not hedge, the base of the others.
    plain: ExecutionProfile,
    /// Bucket-index entries written recently, to skip rewriting them.
    index_cache: Mutex<HashMap<IndexKey, Instant>>,
    keyspace: String,
    consistency: Consistency,
}

struct Statements {
    insert_namespace: PreparedStatement,
    select_namespace: PreparedStatement,
    list_namespaces: PreparedStatement,
    insert_event: PreparedStatement,
    insert_bucket: PreparedStatement,
    read_asc: PreparedStatement,
    read_desc: PreparedStatement,
    buckets_asc: PreparedStatement,
    buckets_desc: PreparedStatement,
}

/// A bucket-index entry this replica wrote: namespace, series, bucket and
/// a shard written in it.
type IndexKey = (String, String, i64, u32);

/// A `namespaces` row: name, bucket width, shards, retention and whether
/// its buckets index their shards (null before that column).
type NamespaceRow = (String, i64, i32, i32, Option<bool>);

type EventRow = (
    i64,
    String,
    Option<Vec<u8>>,
    Option<HashMap<String, String>>,
);

impl CassandraStore {
    /// Connects, creates the keyspace and tables if needed and prepares statements.
    pub async fn connect(cfg: &CassandraConfig) -> Result<Self, StorageError> {
        cfg.validate().map_err(|e| StorageError::Fatal(e.into()))?;
        let address = cfg.contact_points.join(",");
        let connect_err = |cause: Cause| StorageError::Connect {
            address: address.clone(),
            cause,
        };
        // Token-aware (the default policy's default, stated here): requests
        // go to a replica of their partition. With hedging on, slow nodes
        // go last in every plan until a probe to them answers.
        let hedging = Hedging::new(cfg.hedging.clone());
        let token_aware: Arc<dyn scylla::policies::load_balancing::LoadBalancingPolicy> =
            DefaultPolicy::builder().token_aware(true).build();
        let balancing: Arc<dyn scylla::policies::load_balancing::LoadBalancingPolicy> =
            if cfg.hedging.enabled {
                Arc::new(AvoidDemoted {
                    inner: token_aware,
                    hedging: Arc::clone(&hedging),
                })
            } else {
                token_aware
            };
        let plain = ExecutionProfile::builder()
            .consistency(cfg.consistency)
            .load_balancing_policy(Arc::clone(&balancing))
            .build();
        let hedged = (0..SIZE_CLASSES)
            .map(|class| {
                let policy = HedgePolicy {
                    hedging: Arc::clone(&hedging),
                    class,
                    after: None,
                };
                plain
                    .to_builder()
                    .speculative_execution_policy(Some(Arc::new(policy)))
                    .build()
                    .into_handle()
            })
            .collect();
        let mut builder = SessionBuilder::new()
            .known_nodes(&cfg.contact_points)
            .default_execution_profile_handle(plain.clone().into_handle())
            .connection_timeout(cfg.connect_timeout);
        if let Some(c) = &cfg.credentials {
            builder = builder.user(&c.username, &c.password);
        }
        if let Some(ca) = &cfg.tls_ca {
            builder =
                builder.tls_context(Some(tls_context(ca).map_err(|e| connect_err(e.into()))?));
        }
        let session = tokio::time::timeout(cfg.connect_timeout, builder.build())
            .await
            .map_err(|_| connect_err(format!("no answer within {:?}", cfg.connect_timeout).into()))?
            .map_err(|e| connect_err(Cause::new(e)))?;
        // Replicas starting at once on a new cluster race to create the
        // schema through different coordinators ("Keyspace ... doesn't
        // exist" while the other's keyspace propagates): wait for schema
        // agreement and try again.
        let mut attempt = 1;
        let stmts = loop {
            match Self::schema(&session, cfg).await {
                Ok(stmts) => break stmts,
                Err(e) if attempt < SCHEMA_ATTEMPTS => {
                    tracing::warn!(attempt, error = %super::chain(&e), "creating the schema failed; retrying after schema agreement");
                    let _ =
                        tokio::time::timeout(WRITE_TIMEOUT, session.await_schema_agreement()).await;
                    tokio::time::sleep(Duration::from_millis(200) * attempt).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let session = Arc::new(session);
        if cfg.hedging.enabled {
            tokio::spawn(probe_demoted(
                Arc::downgrade(&session),
                Arc::clone(&hedging),
            ));
        }
        Ok(Self {
            session,
            stmts,
            hedging,
            hedged,
            plain,
            index_cache: Mutex::new(HashMap::new()),
            keyspace: cfg.keyspace.clone(),
            consistency: cfg.consistency,
        })
    }

    /// Creates the keyspace and tables if needed (idempotent) and prepares
    /// the statements.
    async fn schema(session: &Session, cfg: &CassandraConfig) -> Result<Statements, StorageError> {
        let ks = &cfg.keyspace;
        for ddl in [
            format!(
                "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}",
                cfg.replication
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.namespaces (name text PRIMARY KEY, \
                 bucket_width_micros bigint, shards int, retention_seconds int, \
                 indexes_shards boolean)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.events (namespace text, series_id text, \
                 bucket bigint, shard int, event_time bigint, event_id text, payload blob, \
                 tags frozen<map<text, text>>, \
                 PRIMARY KEY ((namespace, series_id, bucket, shard), event_time, event_id)) \
                 WITH CLUSTERING ORDER BY (event_time ASC, event_id ASC) \
                 AND speculative_retry = '{SPECULATIVE_RETRY}'"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.series_buckets (namespace text, series_id text, \
                 bucket bigint, shards set<int>, PRIMARY KEY ((namespace, series_id), bucket)) \
                 WITH speculative_retry = '{SPECULATIVE_RETRY}'"
            ),
        ] {
            session.query_unpaged(ddl, ()).await.map_err(classify)?;
        }
        add_missing_columns(session, ks).await?;
        // A DDL that finds its table already there (another replica made it)
        // changes nothing, so the driver does not wait for agreement after
        // it; yet the table may not have reached every node. A statement is
        // prepared as soon as one node knows it, and a write coordinated by
        // a node that does not would fail "unconfigured table". Wait until
        // every reachable node has the same schema (bounded: a node that
        // never agrees is reported, not waited on forever).
        match tokio::time::timeout(WRITE_TIMEOUT, session.await_schema_agreement()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "schema agreement failed; preparing anyway"),
            Err(_) => {
                tracing::warn!(timeout = ?WRITE_TIMEOUT, "no schema agreement; preparing anyway");
            }
        }
        let prepare = |cql: String| {
            let session = &session;
            async move {
                let mut p = session.prepare(cql).await.map_err(fatal)?;
                p.set_consistency(cfg.consistency);
                p.set_is_idempotent(true);
                Ok::<_, StorageError>(p)
            }
        };
        let read = |dir: &str| {
            format!(
                "SELECT event_time, event_id, payload, tags FROM {ks}.events \
                 WHERE namespace = ? AND series_id = ? AND bucket = ? AND shard = ? \
                 AND (event_time, event_id) > (?, ?) AND (event_time, event_id) < (?, ?) \
                 ORDER BY event_time {dir}, event_id {dir} LIMIT ?"
            )
        };
        let buckets = |dir: &str| {
            format!(
                "SELECT bucket, shards FROM {ks}.series_buckets WHERE namespace = ? AND series_id = ? \
                 AND bucket >= ? AND bucket <= ? ORDER BY bucket {dir} LIMIT ?"
            )
        };
        let mut insert_namespace = prepare(format!(
            "INSERT INTO {ks}.namespaces (name, bucket_width_micros, shards, retention_seconds, \
             indexes_shards) VALUES (?, ?, ?, ?, ?) IF NOT EXISTS"
        ))
        .await?;
        insert_namespace.set_is_idempotent(false);
        Ok(Statements {
            insert_namespace,
            select_namespace: prepare(format!(
                "SELECT name, bucket_width_micros, shards, retention_seconds, indexes_shards \
                 FROM {ks}.namespaces WHERE name = ?"
            ))
            .await?,
            list_namespaces: prepare(format!(
                "SELECT name, bucket_width_micros, shards, retention_seconds, indexes_shards \
                 FROM {ks}.namespaces LIMIT ?"
            ))
            .await?,
            insert_event: prepare(format!(
                "INSERT INTO {ks}.events (namespace, series_id, bucket, shard, event_time, \
                 event_id, payload, tags) VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?"
            ))
            .await?,
            insert_bucket: prepare(format!(
                "UPDATE {ks}.series_buckets USING TTL ? SET shards = shards + ? \
                 WHERE namespace = ? AND series_id = ? AND bucket = ?"
            ))
            .await?,
            read_asc: prepare(read("ASC")).await?,
            read_desc: prepare(read("DESC")).await?,
            buckets_asc: prepare(buckets("ASC")).await?,
            buckets_desc: prepare(buckets("DESC")).await?,
        })
    }

    /// Writes rows of one partition as one unlogged batch (one mutation).
    async fn write_batch(
        &self,
        ns: &Namespace,
        series: &str,
        bucket: i64,
        shard: u32,
        rows: &[&NewEvent],
    ) -> Result<(), ExecutionError> {
        let mut batch = Batch::new(BatchType::Unlogged);
        if let Some(c) = self.stmts.insert_event.get_consistency() {
            batch.set_consistency(c);
        }
        batch.set_request_timeout(Some(WRITE_TIMEOUT));
        batch.set_is_idempotent(true);
        let (ttl, _) = write_ttls(ns.retention_seconds, unix_now());
        let mut values = Vec::with_capacity(rows.len());
        for e in rows {
            batch.append_statement(self.stmts.insert_event.clone());
            values.push((
                ns.name.as_str(),
                series,
                bucket,
                int(shard),
                e.row.key.time,
                e.row.key.id.as_str(),
                e.row.payload.as_ref(),
                // Always bound, empty included: a rewrite replaces the row's
                // tags (unset would keep the old ones).
                &e.row.tags,
                ttl,
            ));
        }
        self.session.batch(&batch, values).await.map(|_| ())
    }

    /// Asks the coordinator a trivial question: Ok while storage answers.
    pub async fn probe(&self, timeout: Duration) -> Result<(), StorageError> {
        let mut stmt = scylla::statement::unprepared::Statement::new(
            "SELECT release_version FROM system.local",
        );
        stmt.set_request_timeout(Some(timeout));
        self.session
            .query_unpaged(stmt, ())
            .await
            .map(|_| ())
            .map_err(classify)
    }

    /// Hedged-read counts since connect.
    pub fn hedge_stats(&self) -> HedgeStats {
        self.hedging.stats()
    }

    /// Runs a read of at most `rows` rows with `timeout`, hedged when the
    /// hedging policy admits it (see [`Hedging::admit`]). Its latency feeds
    /// the hedge delay of its size class; an error names the node it came
    /// from when all its attempts went to one.
    async fn read<V: scylla::serialize::row::SerializeRow>(
        &self,
        mut stmt: PreparedStatement,
        timeout: Duration,
        rows: usize,
        values: V,
    ) -> Result<scylla::response::query_result::QueryResult, StorageError> {
        stmt.set_request_timeout(Some(timeout));
        let class = size_class(rows);
        let mut slow_after = None;
        if let Some(at) = self.hedging.admit(timeout, class) {
            let profile = if let HedgeAt::After(after) = at {
                slow_after = Some(after);
                // A tight budget: this read's own delay (rare enough that a
                // profile per read costs nothing that matters).
                let policy = HedgePolicy {
                    hedging: Arc::clone(&self.hedging),
                    class,
                    after: Some(after),
                };
                self.plain
                    .to_builder()
                    .speculative_execution_policy(Some(Arc::new(policy)))
                    .build()
                    .into_handle()
            } else {
                self.hedged[class].clone()
            };
            stmt.set_execution_profile_handle(Some(profile));
        }
        let trace = self.hedging.trace();
        stmt.set_history_listener(trace.clone());
        let began = Instant::now();
        let waiting = GiveUp {
            trace: &trace,
            began,
            slow_after: slow_after.unwrap_or_else(|| self.hedging.delay(class)),
        };
        let result = self.session.execute_unpaged(&stmt, values).await;
        waiting.answered();
        match result {
            Ok(res) => {
                self.hedging.record(began.elapsed(), class);
                Ok(res)
            }
            Err(err) => Err(match classify(err) {
                StorageError::Transient(cause) => {
                    StorageError::Transient(cause.on_node(trace.only_node()))
                }
                other => other,
            }),
        }
    }

    /// The driver session, for tools that scan directly (benchmarks).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The keyspace holding the tables.
    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    /// The consistency level of reads and writes.
    pub fn consistency(&self) -> Consistency {
        self.consistency
    }

    /// Adds `shards` to the index entry of `bucket` of `series`, with the
    /// TTL a write made now gives them, as a write does.
    pub(super) async fn name_shards(
        &self,
        ns: &Namespace,
        series: &str,
        bucket: i64,
        shards: &[i32],
    ) -> Result<(), StorageError> {
        let (_, ttl) = write_ttls(ns.retention_seconds, unix_now());
        let insert_bucket = with_timeout(&self.stmts.insert_bucket, WRITE_TIMEOUT);
        self.session
            .execute_unpaged(&insert_bucket, (ttl, shards, &ns.name, series, bucket))
            .await
            .map_err(classify)?;
        Ok(())
    }

    fn index_cached(&self, key: &IndexKey) -> bool {
        let cache = self.index_cache.lock().expect("index cache lock");
        cache
            .get(key)
            .is_some_and(|t| t.elapsed() < INDEX_CACHE_TTL)
    }

    fn remember_index(&self, keys: impl IntoIterator<Item = IndexKey>) {
        let mut cache = self.index_cache.lock().expect("index cache lock");
        if cache.len() > INDEX_CACHE_MAX {
            cache.clear();
        }
        let now = Instant::now();
        cache.extend(keys.into_iter().map(|k| (k, now)));
    }
}

/// Columns added to Hourglass's tables since they were first created:
/// (table, column, CQL type). `CREATE TABLE IF NOT EXISTS` leaves a table
/// made by an older release as it was, so each is added where missing.
const ADDED_COLUMNS: [(&str, &str, &str); 2] = [
    ("namespaces", "indexes_shards", "boolean"),
    ("series_buckets", "shards", "set<int>"),
];

/// Adds each of [`ADDED_COLUMNS`] its table lacks. Replicas starting at
/// once may both add one; the loser's error is ignored once the column is
/// there.
async fn add_missing_columns(session: &Session, ks: &str) -> Result<(), StorageError> {
    let has = |table: &'static str, column: &'static str| async move {
        let res = session
            .query_unpaged(
                "SELECT column_name FROM system_schema.columns \
                 WHERE keyspace_name = ? AND table_name = ? AND column_name = ?",
                (ks.to_lowercase(), table, column),
            )
            .await
            .map_err(classify)?;
        Ok::<_, StorageError>(res.into_rows_result().map_err(fatal)?.rows_num() > 0)
    };
    for (table, column, kind) in ADDED_COLUMNS {
        if has(table, column).await? {
            continue;
        }
        tracing::info!(
            table,
            column,
            "adding a column to a table of an older release"
        );
        let added = session
            .query_unpaged(format!("ALTER TABLE {ks}.{table} ADD {column} {kind}"), ())
            .await;
        if let Err(e) = added {
            if !has(table, column).await? {
                return Err(classify(e));
            }
        }
    }
    Ok(())
}

/// Runs storage requests with at most [`WRITE_CONCURRENCY`] in flight,
/// stopping at the first error.
async fn run_bounded<T>(
    requests: Vec<impl std::future::Future<Output = Result<T, ExecutionError>>>,
) -> Result<(), StorageError> {
    let mut requests = futures::stream::iter(requests).buffer_unordered(WRITE_CONCURRENCY);
    while let Some(r) = requests.next().await {
        r.map_err(classify)?;
    }
    Ok(())
}

/// Maps driver errors onto retryable and non-retryable storage errors, the
/// way latte does: timeouts, overload and unavailability are transient.
pub(super) fn classify(err: ExecutionError) -> StorageError {
    let transient = match &err {
        ExecutionError::RequestTimeout(_)
        | ExecutionError::ConnectionPoolError(_)
        | ExecutionError::EmptyPlan => true,
        ExecutionError::LastAttemptError(attempt) => match attempt {
            RequestAttemptError::DbError(db, _) => matches!(
                db,
                DbError::Overloaded
                    | DbError::Unavailable { .. }
                    | DbError::ReadTimeout { .. }
                    | DbError::WriteTimeout { .. }
                    | DbError::IsBootstrapping
            ),
            RequestAttemptError::BrokenConnectionError(_)
            | RequestAttemptError::UnableToAllocStreamId => true,
            _ => false,
        },
        _ => false,
    };
    if transient {
        StorageError::Transient(Cause::new(err))
    } else {
        StorageError::Fatal(Cause::new(err))
    }
}

/// A driver error that no retry will fix (a row that does not decode, a
/// statement that does not prepare).
pub(super) fn fatal(err: impl std::error::Error + Send + Sync + 'static) -> StorageError {
    StorageError::Fatal(Cause::new(err))
}

/// A validated count (shards, retention) as CQL's `int`.
pub(super) fn int(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The TTLs (rows, bucket index) of a write at `now` (unix seconds) in a
/// namespace of `retention` seconds (0: none). The index gets
/// [`model::INDEX_TTL_SLACK_SECONDS`] more than its rows. Both are capped so
/// that nothing expires after [`MAX_EXPIRY_UNIX_SECONDS`] less a margin,
/// which older stores refuse: near that date retention is shortened rather
/// than every write failing.
fn write_ttls(retention: u32, now: i64) -> (i32, i32) {
    if retention == 0 {
        return (0, 0);
    }
    let slack = i64::from(model::INDEX_TTL_SLACK_SECONDS);
    let room = MAX_EXPIRY_UNIX_SECONDS - EXPIRY_SKEW_MARGIN_SECONDS - now;
    let index = (i64::from(retention) + slack).min(room).max(slack + 1);
    let rows = (index - slack).min(i64::from(retention));
    let to_ttl = |t: i64| i32::try_from(t).unwrap_or(i32::MAX);
    (to_ttl(rows), to_ttl(index))
}

/// A read request in flight: dropped while still waiting (its call's
/// budget ended) after `slow_after`, it demotes the nodes it waited on.
struct GiveUp<'a> {
    trace: &'a Trace,
    began: Instant,
    /// When the request's hedge went or would have gone.
    slow_after: Duration,
}

impl GiveUp<'_> {
    /// The request has its answer (or error): nothing was given up.
    fn answered(self) {
        // Holds a reference and plain values only: forgetting it skips
        // the drop and leaks nothing.
        std::mem::forget(self);
    }
}

impl Drop for GiveUp<'_> {
    fn drop(&mut self) {
        if self.began.elapsed() >= self.slow_after {
            self.trace.given_up();
        }
    }
}

fn with_timeout(stmt: &PreparedStatement, timeout: Duration) -> PreparedStatement {
    let mut s = stmt.clone();
    s.set_request_timeout(Some(timeout));
    s
}

impl Storage for CassandraStore {
    fn nodes(&self) -> usize {
        self.session.get_cluster_state().get_nodes_info().len()
    }

    async fn create_namespace(&self, ns: &Namespace) -> Result<Created, StorageError> {
        let stmt = with_timeout(&self.stmts.insert_namespace, WRITE_TIMEOUT);
        let res = self
            .session
            .execute_unpaged(
                &stmt,
                (
                    &ns.name,
                    ns.bucket_width_micros,
                    int(ns.shards),
                    int(ns.retention_seconds),
                    ns.indexes_shards,
                ),
            )
            .await
            .map_err(classify)?;
        let rows = res.into_rows_result().map_err(fatal)?;
        // On conflict Cassandra returns [applied] plus the existing row's
        // columns, whichever the table has: only the first is read.
        let row = rows.first_row::<scylla::value::Row>().map_err(fatal)?;
        let applied = match row.columns.first() {
            Some(Some(scylla::value::CqlValue::Boolean(applied))) => *applied,
            other => {
                return Err(StorageError::Fatal(
                    format!("namespace insert answered {other:?} for [applied]").into(),
                ))
            }
        };
        if applied {
            return Ok(Created::New);
        }
        match self.get_namespace(&ns.name).await? {
            Some(existing) => Ok(Created::Existing(existing)),
            None => Err(StorageError::Fatal(
                format!("namespace {} neither created nor found", ns.name).into(),
            )),
        }
    }

    async fn list_namespaces(&self, limit: usize) -> Result<Vec<Namespace>, StorageError> {
        let stmt = with_timeout(&self.stmts.list_namespaces, WRITE_TIMEOUT);
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let res = self
            .session
            .execute_unpaged(&stmt, (limit,))
            .await
            .map_err(classify)?;
        let rows = res.into_rows_result().map_err(fatal)?;
        let mut found = Vec::new();
        for row in rows.rows::<NamespaceRow>().map_err(fatal)? {
            let (name, width, shards, retention, indexes) = row.map_err(fatal)?;
            match Namespace::checked(name.clone(), width, shards.into(), retention.into()) {
                Ok(ns) => found.push(Namespace {
                    indexes_shards: indexes.unwrap_or(false),
                    ..ns
                }),
                Err(problem) => tracing::warn!(%name, %problem, "stored namespace left out"),
            }
        }
        Ok(found)
    }

    async fn get_namespace(&self, name: &str) -> Result<Option<Namespace>, StorageError> {
        let stmt = with_timeout(&self.stmts.select_namespace, WRITE_TIMEOUT);
        let res = self
            .session
            .execute_unpaged(&stmt, (name,))
            .await
            .map_err(classify)?;
        let rows = res.into_rows_result().map_err(fatal)?;
        let row = rows.maybe_first_row::<NamespaceRow>().map_err(fatal)?;
        // Checked like a created namespace: another writer or a manual edit
        // must not turn into billions of cursors or a division by zero.
        row.map(|(name, width, shards, retention, indexes)| {
            Namespace::checked(name.clone(), width, shards.into(), retention.into())
                .map(|ns| Namespace {
                    indexes_shards: indexes.unwrap_or(false),
                    ..ns
                })
                .map_err(|problem| StorageError::InvalidNamespace { name, problem })
        })
        .transpose()
    }

    async fn write_events(&self, ns: &Namespace, events: &[NewEvent]) -> Result<(), StorageError> {
        // Group by partition so each batch is a single-partition mutation.
        let mut partitions: BTreeMap<(&str, i64, u32), Vec<&NewEvent>> = BTreeMap::new();
        for e in events {
            let bucket = ns.bucket_of(e.row.key.time);
            partitions
                .entry((&e.series_id, bucket, ns.shard_of(&e.row.key.id)))
                .or_default()
                .push(e);
        }
        let (_, ttl) = write_ttls(ns.retention_seconds, unix_now());
        // The index entries not written lately: one write per bucket, adding
        // the shards this write puts rows in.
        let mut index: Vec<IndexKey> = partitions
            .keys()
            .map(|&(s, b, shard)| (ns.name.clone(), s.to_string(), b, shard))
            .collect();
        index.retain(|k| !self.index_cached(k));
        let mut by_bucket: BTreeMap<(&str, i64), Vec<i32>> = BTreeMap::new();
        for (_, s, b, shard) in &index {
            by_bucket.entry((s, *b)).or_default().push(int(*shard));
        }
        let insert_bucket = with_timeout(&self.stmts.insert_bucket, WRITE_TIMEOUT);
        let mut index_writes = Vec::with_capacity(by_bucket.len());
        for ((s, b), shards) in &by_bucket {
            index_writes.push(
                self.session
                    .execute_unpaged(&insert_bucket, (ttl, shards, &ns.name, s, *b)),
            );
        }
        run_bounded(index_writes).await?;
        self.remember_index(index);

        let mut batches = Vec::new();
        for (&(series, bucket, shard), rows) in &partitions {
            let mut start = 0;
            while start < rows.len() {
                let mut bytes = 0;
                let mut end = start;
                while end < rows.len() && end - start < BATCH_MAX_ROWS {
                    let weight = rows[end].row.weight(series.len());
                    if end > start && bytes + weight > BATCH_MAX_BYTES {
                        break;
                    }
                    bytes += weight;
                    end += 1;
                }
                batches.push(self.write_batch(ns, series, bucket, shard, &rows[start..end]));
                start = end;
            }
        }
        run_bounded(batches).await
    }

    async fn list_buckets(&self, q: BucketQuery) -> Result<Vec<IndexedBucket>, StorageError> {
        let stmt = match q.order {
            Order::Ascending => &self.stmts.buckets_asc,
            Order::Descending => &self.stmts.buckets_desc,
        };
        let limit = i32::try_from(q.limit).unwrap_or(i32::MAX);
        let res = self
            .read(
                stmt.clone(),
                q.timeout,
                q.limit,
                (&q.namespace.name, &*q.series_id, q.first, q.last, limit),
            )
            .await?;
        let rows = res.into_rows_result().map_err(fatal)?;
        // Entries written before shards were indexed have none (null), and
        // a namespace created before may have buckets whose entry names
        // some shards but not those its older rows are in: every shard may
        // hold rows of either (see `Namespace::indexes_shards`).
        rows.rows::<(i64, Option<Vec<i32>>)>()
            .map_err(fatal)?
            .map(|r| {
                let (bucket, shards) = r.map_err(fatal)?;
                let shards = shards.filter(|_| q.namespace.indexes_shards).map(|s| {
                    let mut s: Vec<u32> = s
                        .into_iter()
                        .filter_map(|x| u32::try_from(x).ok())
                        .collect();
                    s.sort_unstable();
                    s
                });
                Ok(IndexedBucket { bucket, shards })
            })
            .collect()
    }

    async fn read_shard(&self, q: ShardQuery) -> Result<Vec<Row>, StorageError> {
        if q.span.after >= q.span.before {
            return Ok(Vec::new());
        }
        let stmt = match q.order {
            Order::Ascending => &self.stmts.read_asc,
            Order::Descending => &self.stmts.read_desc,
        };
        let mut stmt = stmt.clone();
        let limit = i32::try_from(q.limit).unwrap_or(i32::MAX);
        stmt.set_page_size(limit.max(1));
        let res = self
            .read(
                stmt,
                q.timeout,
                q.limit,
                (
                    &q.namespace.name,
                    &*q.series_id,
                    q.bucket,
                    int(q.shard),
                    q.span.after.time,
                    &q.span.after.id,
                    q.span.before.time,
                    &q.span.before.id,
                    limit,
                ),
            )
            .await?;
        let rows = res.into_rows_result().map_err(fatal)?;
        rows.rows::<EventRow>()
            .map_err(fatal)?
            .map(|r| {
                r.map(|(time, id, payload, tags)| Row {
                    key: Key { time, id },
                    payload: payload.map(bytes::Bytes::from).unwrap_or_default(),
                    tags: tags.unwrap_or_default(),
                })
                .map_err(fatal)
            })
            .collect()
    }
}

impl std::fmt::Debug for CassandraStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CassandraStore").finish_non_exhaustive()
    }
}

/// Parses a consistency level name (`one`, `local_quorum`, ...).
pub fn parse_consistency(s: &str) -> Result<Consistency, String> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "any" => Consistency::Any,
        "one" => Consistency::One,
        "two" => Consistency::Two,
        "three" => Consistency::Three,
        "quorum" => Consistency::Quorum,
        "all" => Consistency::All,
        "local_quorum" => Consistency::LocalQuorum,
        "each_quorum" => Consistency::EachQuorum,
        "local_one" => Consistency::LocalOne,
        other => {
            return Err(format!(
                "unknown consistency {other:?}; expected one of any, one, two, three, quorum, \
                 all, local_quorum, each_quorum, local_one"
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-02T00:00:00Z.
    const NOW: i64 = 1_796_169_600;

    #[test]
    fn write_ttls_keep_the_index_slack_and_stop_before_2038() {
        let slack = int(model::INDEX_TTL_SLACK_SECONDS);
        assert_eq!(write_ttls(0, NOW), (0, 0), "no retention, no TTL");
        assert_eq!(write_ttls(3600, NOW), (3600, 3600 + slack));
        let (rows, index) = write_ttls(model::MAX_RETENTION_SECONDS, NOW);
        assert_eq!(index - rows, slack, "the index outlives its rows");
        assert_eq!(
            NOW + i64::from(index),
            MAX_EXPIRY_UNIX_SECONDS - EXPIRY_SKEW_MARGIN_SECONDS,
            "capped at the latest expiry less the margin"
        );
        // Past the cap: still a positive TTL, the index still outlives rows.
        let (rows, index) = write_ttls(1000, MAX_EXPIRY_UNIX_SECONDS);
        assert_eq!((rows, index), (1, slack + 1));
    }
}
