//! The server: [`run`] wires storage, engine, service, health, metrics and
//! graceful drain together once, for the binary and the tests alike; the
//! gRPC handlers live in `service`.
//!
//! Shutdown: when the `shutdown` future given to [`run`] completes, health
//! turns NOT_SERVING; after [`ServerConfig::drain_delay`] (calls served as
//! usual meanwhile) the listener closes, running reads end partially at
//! once (reason `SHUTDOWN`), new calls are refused, and in-flight calls get
//! at most [`ServerConfig::drain_timeout`] to finish, their responses
//! included (sent as the clients' flow control lets them), before `run`
//! returns.

mod arrival;
mod calls;
mod connections;
mod drain;
mod handshake;
mod health;
mod service;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::transport::server::TcpIncoming;

use crate::admission::{Admission, AdmissionConfig};
use crate::api::{self, pb};
use crate::auth::Authenticator;
use crate::bulkhead::{Bulkhead, DEFAULT_MAX_SCANS, DEFAULT_MAX_SCANS_PER_NAMESPACE};
use crate::engine::budget::BudgetConfig;
use crate::engine::{EngineConfig, ReadEngine};
use crate::storage::breaker::{Breaker, BreakerConfig};
use crate::storage::cassandra::{CassandraConfig, CassandraStore};
use crate::storage::{Storage, StorageError};
use crate::token::KeyRing;
use arrival::ArrivalLayer;
use calls::{CallTracker, TrackCallsLayer};
use connections::Lingering;

pub use arrival::Arrival;
pub use handshake::{ServerTls, DEFAULT_HANDSHAKE_TIMEOUT};
pub use service::{
    HourglassService, MAX_STREAMS_PER_CONNECTION, NAMESPACE_MISS_TTL, STREAM_BATCH_BYTES,
    STREAM_BATCH_DELAY,
};

/// Default bound on how long in-flight calls may run after shutdown began.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// See [`ServerConfig::send_stall`].
pub const DEFAULT_SEND_STALL: Duration = calls::SEND_STALL;
/// See [`ServerConfig::request_buffer`].
pub const DEFAULT_REQUEST_BUFFER: usize = calls::REQUEST_BUFFER;
/// Default period of the storage probe behind the health service.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// The gRPC health service name of Hourglass.
pub const HEALTH_SERVICE_NAME: &str = "hourglass.v1.Hourglass";
/// HTTP/2 keepalive ping period: connections whose peer stopped answering
/// are dropped.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a keepalive ping may go unanswered.
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive of accepted connections.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// The health probe of storage waits at least this long for an answer.
const MIN_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Namespaces a replica caches as it starts, at most.
const PRELOAD_NAMESPACES: usize = 10_000;
/// Start-up waits at most this long for them.
const PRELOAD_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything [`run`] needs. [`ServerConfig::new`] fills every setting but
/// the store and the keys with its default.
#[derive(Debug)]
pub struct ServerConfig {
    pub cassandra: CassandraConfig,
    /// Signing keys of continuation tokens.
    pub keys: KeyRing,
    pub budget: BudgetConfig,
    pub engine: EngineConfig,
    pub breaker: BreakerConfig,
    /// Concurrent scans at most, overall and per namespace.
    pub max_scans: usize,
    pub max_scans_per_namespace: usize,
    /// The adaptive limit under those bounds.
    pub admission: AdmissionConfig,
    /// False: budgets ignore SLOs and deadlines (benchmark baseline).
    pub partial_reads: bool,
    /// Serve gRPC over TLS.
    pub tls: Option<ServerTls>,
    /// The time a connection has, from its accept, for its TLS handshake
    /// and HTTP/2 preface (see `handshake`).
    pub handshake_timeout: Duration,
    /// Bearer-token clients; None: no authentication.
    pub auth: Option<Arc<Authenticator>>,
    /// Where Prometheus metrics are served; None: nowhere. The metrics
    /// recorder is process-wide, so at most one server per process can
    /// have it.
    pub metrics_listen: Option<SocketAddr>,
    /// How long after the shutdown signal calls are served as usual, health
    /// reporting NOT_SERVING, before the drain begins.
    pub drain_delay: Duration,
    /// How long the drain waits for in-flight calls and their responses.
    pub drain_timeout: Duration,
    /// A client that takes nothing of a response the server has ready for
    /// this long, or sends nothing of a request it began, has its
    /// connection closed (see `calls`).
    pub send_stall: Duration,
    /// Bytes of requests being received that the server buffers at once,
    /// all calls together (see `calls`).
    pub request_buffer: usize,
    pub health_interval: Duration,
}

impl ServerConfig {
    /// Defaults for everything but the store and the keys.
    pub fn new(cassandra: CassandraConfig, keys: KeyRing) -> Self {
        Self {
            cassandra,
            keys,
            budget: BudgetConfig::default(),
            // A server measures what its responses cost to build and encode.
            engine: EngineConfig {
                response_cost: Some(&crate::engine::reserve::RESPONSE_COST),
                ..EngineConfig::default()
            },
            breaker: BreakerConfig::default(),
            max_scans: DEFAULT_MAX_SCANS,
            max_scans_per_namespace: DEFAULT_MAX_SCANS_PER_NAMESPACE,
            admission: AdmissionConfig::default(),
            partial_reads: true,
            tls: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            auth: None,
            metrics_listen: None,
            drain_delay: Duration::ZERO,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            send_stall: DEFAULT_SEND_STALL,
            request_buffer: DEFAULT_REQUEST_BUFFER,
            health_interval: DEFAULT_HEALTH_INTERVAL,
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Storage could not be reached or prepared at start.
    #[error("storage")]
    Storage(#[from] StorageError),
    /// An engine setting is out of range.
    #[error(transparent)]
    Engine(#[from] crate::engine::InvalidEngineConfig),
    /// The metrics endpoint could not be served.
    #[error("metrics")]
    Metrics(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The reflection service could not be built from the descriptors.
    #[error("reflection")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("transport")]
    Transport(#[from] tonic::transport::Error),
}

/// Connects to storage and serves on `listener` until `shutdown` completes;
/// then drains (see the module docs) and returns.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    config.engine.validate()?;
    if let Some(addr) = config.metrics_listen {
        crate::telemetry::install_prometheus(addr).map_err(|e| ServeError::Metrics(e.into()))?;
        crate::telemetry::register_zero(
            &crate::engine::PartialReason::ALL.map(|r| r.as_str()),
            crate::error::REASONS,
        );
        tracing::info!(%addr, "serving metrics at /metrics");
    }
    let store = Arc::new(CassandraStore::connect(&config.cassandra).await?);
    tracing::info!(
        cassandra = ?config.cassandra.contact_points,
        keyspace = %config.cassandra.keyspace,
        "connected to storage"
    );
    let drain = CancellationToken::new();
    let breaker = Arc::new(Breaker::new(store.clone(), config.breaker));
    let engine =
        Arc::new(ReadEngine::new(breaker.clone(), config.engine).with_drain(drain.clone()));
    let mut service =
        HourglassService::new(engine, config.keys, config.budget).with_admission(Admission::new(
            Bulkhead::new(config.max_scans, config.max_scans_per_namespace),
            config.admission,
        ));
    if !config.partial_reads {
        service = service.without_partial_reads();
    }
    // Start-up waits on it at most PRELOAD_TIMEOUT (the store's own
    // timeout is 10 s): reads look up what it did not cache.
    match tokio::time::timeout(
        PRELOAD_TIMEOUT,
        service.preload_namespaces(PRELOAD_NAMESPACES),
    )
    .await
    {
        Ok(Ok(n)) => tracing::info!(namespaces = n, "namespaces cached"),
        Ok(Err(e)) => tracing::warn!(error = %e, "namespaces not cached; reads look them up"),
        Err(_) => tracing::warn!(
            ?PRELOAD_TIMEOUT,
            "namespaces not cached in time; reads look them up"
        ),
    }
    let auth = config.auth;
    if let Some(auth) = &auth {
        tracing::info!(clients = auth.len(), "bearer-token authentication on");
        service = service.with_auth(auth.clone());
    }
    let reporter = tonic_health::server::HealthReporter::new();
    let health = health::server(&reporter);
    set_health(&reporter, true).await;
    let process_metrics = tokio::spawn(crate::telemetry::sample_process_metrics());
    let probe = tokio::spawn(probe_storage(
        store,
        breaker,
        reporter.clone(),
        config.health_interval,
        drain.clone(),
    ));
    tracing::info!(listen = ?listener.local_addr().ok(), tls = config.tls.is_some(), "serving");
    // The drain: at the shutdown signal health turns NOT_SERVING; after
    // the drain delay the listener closes and running reads end partial; connections stay
    // open (health checks see NOT_SERVING, new calls are refused
    // SERVER_DRAINING) until no call is in flight, then get GOAWAY and
    // close once their streams' last frames went (a health Watch ends
    // then; a connection with no call closes at once), each lingering
    // until its client has read what was sent (see `connections`). The
    // drain ends when they all closed, at the latest after the drain
    // timeout.
    let calls = CallTracker::default();
    let goaway = CancellationToken::new();
    let lingering = Lingering::new(goaway.clone());
    let (drain_delay, drain_timeout) = (config.drain_delay, config.drain_timeout);
    let drain_deadline = Arc::new(std::sync::OnceLock::new());
    let drained = {
        let (drain, reporter, calls, goaway, deadline) = (
            drain.clone(),
            reporter.clone(),
            calls.clone(),
            goaway.clone(),
            drain_deadline.clone(),
        );
        async move {
            shutdown.await;
            set_health(&reporter, false).await;
            if !drain_delay.is_zero() {
                tracing::info!(
                    ?drain_delay,
                    "shutting down; serving on while health says NOT_SERVING"
                );
                tokio::time::sleep(drain_delay).await;
            }
            tracing::info!("shutting down; finishing in-flight calls");
            let _ = deadline.set(tokio::time::Instant::now() + drain_timeout);
            drain.cancel();
            let finished = async {
                calls.idle().await;
                tracing::debug!("no call in flight; closing connections");
                goaway.cancel();
                // `serve` returns once every connection closed.
                std::future::pending::<()>().await;
            };
            tokio::select! {
                () = finished => {}
                () = tokio::time::sleep(drain_timeout) => {
                    let calls = calls.in_flight();
                    tracing::warn!(?drain_timeout, calls, "calls or connections outlived the drain timeout; stopping");
                }
            }
        }
    };
    let incoming = {
        use futures::StreamExt as _;
        // Without TCP_NODELAY, Nagle's algorithm and the client's delayed
        // ACK hold a response's last segment for tens of milliseconds.
        let accepted = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(TCP_KEEPALIVE))
            .map({
                let lingering = lingering.clone();
                move |accepted| accepted.map(|stream| lingering.track(stream))
            })
            // Dropped at the drain, which closes the listening socket; the
            // transport's own shutdown (GOAWAY) comes later.
            .take_until(drain.clone().cancelled_owned())
            .chain(futures::stream::pending());
        handshake::connections(accepted, config.tls, config.handshake_timeout)
    };
    let layer = TrackCallsLayer {
        calls: calls.clone(),
        goaway: goaway.clone(),
        connections: lingering.clone(),
        stall: config.send_stall,
        requests: calls::RequestBudget::new(config.request_buffer),
        auth: auth.clone(),
    };
    let served = tokio::select! {
        served = serve(incoming, layer, service, health, goaway.cancelled()) => served,
        () = drained => Ok(()),
    };
    if let Some(deadline) = drain_deadline.get() {
        if tokio::time::timeout_at(*deadline, lingering.settled())
            .await
            .is_err()
        {
            tracing::warn!("connections still sending at the drain timeout; closing them");
        }
    }
    probe.abort();
    process_metrics.abort();
    tracing::info!("stopped");
    served
}

/// Serves `service` with gRPC health (`health`) and server reflection (v1
/// and v1alpha) on the connections of `incoming` (TLS, when on, is theirs),
/// until `shutdown` completes; then lets in-flight calls finish. `calls`
/// counts them.
async fn serve<S: Storage, H: tonic_health::pb::health_server::Health>(
    incoming: impl futures::Stream<Item = std::io::Result<handshake::Connection>> + Send + 'static,
    calls: TrackCallsLayer,
    service: HourglassService<S>,
    health: tonic_health::pb::health_server::HealthServer<H>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    // Requests may come compressed with gzip or deflate (a client
    // compressing by default is served, not refused UNIMPLEMENTED); the
    // decompressed message is bounded like any other. Responses go
    // uncompressed: the response reserve times sending, not compressing.
    let svc = pb::hourglass_server::HourglassServer::new(service)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Deflate)
        .max_decoding_message_size(api::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(api::MAX_MESSAGE_BYTES);
    // The error details our statuses carry (`google.rpc.ErrorInfo`,
    // `RetryInfo`, `QuotaFailure`, `BadRequest`) are described too, so
    // reflection clients such as grpcurl decode them.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    // Hostile or broken clients: bound streams per connection and drop
    // connections whose peer stopped answering pings.
    tonic::transport::Server::builder()
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        // Outermost: budgets start when a call arrives, and no framework
        // timeout ends a call (see `arrival`).
        .layer(ArrivalLayer)
        .layer(calls)
        .add_service(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Keeps the health service in step with storage: SERVING while Cassandra
/// answers, NOT_SERVING while it does not or once draining began.
async fn probe_storage(
    store: Arc<CassandraStore>,
    breaker: Arc<Breaker<Arc<CassandraStore>>>,
    reporter: tonic_health::server::HealthReporter,
    interval: Duration,
    drain: CancellationToken,
) {
    // `run` set SERVING before serving: a Watch sees a change, never the
    // same status twice.
    let mut last = Some(true);
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = drain.cancelled() => return,
        }
        let up = store.probe(interval.max(MIN_PROBE_TIMEOUT)).await.is_ok();
        if up {
            breaker.storage_answered();
        }
        metrics::gauge!(crate::telemetry::STORAGE_UP).set(if up { 1.0 } else { 0.0 });
        if last != Some(up) && !drain.is_cancelled() {
            tracing::info!(up, "storage health changed");
            set_health(&reporter, up).await;
            last = Some(up);
        }
    }
}

/// Sets the health of the whole server ("") and of the Hourglass service.
async fn set_health(reporter: &tonic_health::server::HealthReporter, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    reporter.set_service_status("", status).await;
    reporter
        .set_service_status(HEALTH_SERVICE_NAME, status)
        .await;
}
