//! The gRPC service: thin handlers that validate, compute the budget, verify
//! tokens, call the engine and map errors.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::arrival::Arrival;
use super::calls::{watch_stall, Authenticated, ConnectionAbort, HoldUntilSent, Progress, Watched};
use super::drain::Drain;
use crate::admission::{Admission, AdmissionConfig, Class, Ticket, CLASS_HEADER};
use crate::api::{self, pb, ReadParams};
use crate::auth::{Access, Authenticator, Principal};
use crate::bulkhead::{Bulkhead, Full};
use crate::engine::budget::{parse_grpc_timeout, Budget, BudgetConfig};
use crate::engine::{ReadEngine, ReadError, ReadRequest, RowSink};
use crate::error::{LateWork, ServiceError};
use crate::model::{Key, Namespace, Order, Row, Span};
use crate::response::EncodedEvents;
use crate::storage::{Created, Storage, StorageError};
use crate::telemetry;
use crate::token::{KeyRing, QueryFingerprint};

/// Concurrent HTTP/2 streams (calls) one client connection may open.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// Encoded event bytes per StreamEvents batch at most (a single larger row
/// goes alone): every message fits the 4 MiB receive limit gRPC clients
/// default to, whatever the payload sizes.
pub const STREAM_BATCH_BYTES: usize = 1 << 20;
/// Longest a merged row waits in a StreamEvents batch before the batch is
/// sent (a batch also goes when it reaches [`STREAM_BATCH_BYTES`] and
/// whenever the engine is about to wait on storage).
pub const STREAM_BATCH_DELAY: Duration = Duration::from_millis(2);

/// How long a replica answers NOT_FOUND for a namespace name from memory
/// after storage said it does not exist. A namespace created through this
/// replica is known at once; one created through another replica may be
/// NOT_FOUND here for up to this long.
pub const NAMESPACE_MISS_TTL: Duration = Duration::from_secs(1);
/// Most names the miss cache holds; past it, it starts over.
const NAMESPACE_MISS_MAX: usize = 10_000;

/// Namespace names storage recently reported absent, with when.
#[derive(Default)]
struct MissCache(std::sync::Mutex<HashMap<String, Instant>>);

impl MissCache {
    fn recent(&self, name: &str) -> bool {
        let misses = self.0.lock().expect("miss cache");
        misses
            .get(name)
            .is_some_and(|at| at.elapsed() < NAMESPACE_MISS_TTL)
    }

    fn remember(&self, name: &str) {
        let mut misses = self.0.lock().expect("miss cache");
        if misses.len() >= NAMESPACE_MISS_MAX {
            misses.clear();
        }
        misses.insert(name.to_string(), Instant::now());
    }

    fn forget(&self, name: &str) {
        self.0.lock().expect("miss cache").remove(name);
    }
}

/// The Hourglass gRPC service over a store.
pub struct HourglassService<S> {
    engine: Arc<ReadEngine<S>>,
    keys: KeyRing,
    budget: BudgetConfig,
    /// Namespaces are immutable once created, so a hit never goes stale.
    namespaces: RwLock<HashMap<String, Arc<Namespace>>>,
    /// Names recently found not to exist.
    misses: MissCache,
    /// False: budgets ignore SLOs and deadlines (benchmark baseline).
    partial_reads: bool,
    /// Admits reads; a read holds its ticket until its client took its
    /// response, but a stream its share of the adaptive limit only while it
    /// scans.
    admission: Admission,
    /// Bearer-token clients and their permissions; None: no authentication.
    auth: Option<Arc<Authenticator>>,
}

impl<S: Storage> HourglassService<S> {
    pub fn new(engine: Arc<ReadEngine<S>>, keys: KeyRing, budget: BudgetConfig) -> Self {
        let engine_pressure = engine.pressure();
        Self {
            engine,
            keys,
            budget,
            namespaces: RwLock::new(HashMap::new()),
            misses: MissCache::default(),
            partial_reads: true,
            admission: Admission::new(Bulkhead::default(), AdmissionConfig::default())
                .with_pressure(engine_pressure),
            auth: None,
        }
    }

    /// Requires a bearer token of one of `auth`'s clients on every call.
    pub fn with_auth(mut self, auth: Arc<Authenticator>) -> Self {
        self.auth = Some(auth);
        self
    }

    /// The budget of a call other than a read, when its client gave a
    /// deadline: as a read's without an SLO (the deadline less the margin,
    /// from arrival); None without a deadline (storage's own timeouts bound
    /// the call).
    fn deadline_budget<T>(&self, request: &Request<T>) -> Option<Budget> {
        client_deadline(request.metadata())
            .map(|t| Budget::starting_at(&self.budget, None, Some(t), arrival(request)))
    }

    /// The first step of every Hourglass call: one that arrives once the
    /// drain has begun is refused `SERVER_DRAINING` (with RetryInfo; its
    /// client goes to another replica), before anything is read, written
    /// or checked; else the calling client, when authentication is on.
    ///
    /// The transport's layer has authenticated the calls it serves, from
    /// their headers ([`Authenticated`]); a call that reaches the service
    /// otherwise (a test's) is authenticated here.
    fn authenticate<T>(
        &self,
        request: &Request<T>,
    ) -> Result<Option<Arc<Principal>>, ServiceError> {
        if self.engine.draining() {
            return Err(ServiceError::Draining);
        }
        match &self.auth {
            None => Ok(None),
            Some(auth) => {
                let p = match request.extensions().get::<Authenticated>() {
                    Some(a) => a.0.clone(),
                    None => auth.authenticate(request.metadata())?,
                };
                tracing::Span::current().record("client", p.name.as_str());
                Ok(Some(p))
            }
        }
    }

    /// Replaces the default admission (the default bulkhead, adaptive).
    /// Its refusals pause the engine's fetching ahead (see
    /// [`crate::engine::Pressure`]).
    pub fn with_admission(mut self, admission: Admission) -> Self {
        self.admission = admission.with_pressure(self.engine.pressure());
        self
    }

    /// The adaptive admission limit now (None when only the static bounds
    /// apply).
    pub fn admission_limit(&self) -> Option<usize> {
        self.admission.limit()
    }

    /// Ignores request SLOs and client deadlines: every read runs on the
    /// server default budget, as a store without partial returns would. For
    /// baselines only.
    pub fn without_partial_reads(mut self) -> Self {
        self.partial_reads = false;
        self
    }

    /// The namespace `name`, from the cache or storage. With `budget`, a
    /// read's, the storage lookup waits no longer than the budget's time
    /// left: past it the read ends as one that fit no row (a cold cache
    /// never costs a read more than its budget), `STORAGE_LATE` when the
    /// lookup waited longer than the latency model expects of a slow
    /// smallest page ([`crate::engine::ReadEngine::judge_lookup`]). An
    /// unknown name is remembered for [`NAMESPACE_MISS_TTL`], so repeated
    /// reads of it do not each ask storage.
    async fn namespace(
        &self,
        name: &str,
        budget: Option<&Budget>,
    ) -> Result<Arc<Namespace>, ServiceError> {
        if let Some(ns) = self.namespaces.read().expect("namespace cache").get(name) {
            return Ok(ns.clone());
        }
        if self.misses.recent(name) {
            return Err(ServiceError::NamespaceNotFound(name.to_string()));
        }
        let lookup = self.engine.storage().get_namespace(name);
        let found = match budget {
            None => lookup.await?,
            Some(b) => {
                let sent = Instant::now();
                tokio::time::timeout(b.remaining(), lookup)
                    .await
                    .map_err(|_| ServiceError::NoProgress {
                        budget: b.total,
                        set_by: b.source,
                        waited_on: Some(self.engine.judge_lookup(name, sent.elapsed())),
                    })??
            }
        };
        let Some(ns) = found else {
            self.misses.remember(name);
            return Err(ServiceError::NamespaceNotFound(name.to_string()));
        };
        Ok(self.remember_namespace(ns))
    }

    /// Caches up to `limit` of the namespaces storage holds, so reads of
    /// them on a replica that just started ask storage nothing (a lookup
    /// costs a fresh replica's first read 2-3 ms of its budget). Returns
    /// how many; on a storage error reads look namespaces up as they come.
    pub async fn preload_namespaces(&self, limit: usize) -> Result<usize, StorageError> {
        let found = self.engine.storage().list_namespaces(limit).await?;
        let n = found.len();
        for ns in found {
            self.remember_namespace(ns);
        }
        Ok(n)
    }

    /// Caches a namespace as storage holds it (namespaces never change once
    /// created, so the entry never goes stale).
    fn remember_namespace(&self, ns: Namespace) -> Arc<Namespace> {
        let ns = Arc::new(ns);
        self.namespaces
            .write()
            .expect("namespace cache")
            .insert(ns.name.clone(), ns.clone());
        ns
    }

    /// Validates a read, starts its budget, resolves its token and admits
    /// it.
    async fn prepare_read(
        &self,
        request: Request<pb::ReadEventsRequest>,
    ) -> Result<Prepared, ServiceError> {
        let arrived = arrival(&request);
        let deadline = client_deadline(request.metadata());
        let principal = self.authenticate(&request)?;
        // Who reads, for the per-client bound on held continuations.
        let client: Arc<str> = match (&principal, request.remote_addr()) {
            (Some(p), _) => p.name.as_str().into(),
            (None, Some(addr)) => addr.ip().to_string().into(),
            (None, None) => "".into(),
        };
        // The permission first: a client learns nothing of a namespace it
        // may not read, not even what is wrong with its request.
        api::check_namespace_name("namespace", &request.get_ref().namespace)?;
        permit(
            principal.as_ref(),
            Access::Read,
            &request.get_ref().namespace,
        )?;
        let class = class_of(request.metadata())?;
        let p = ReadParams::try_from(request.into_inner())?;
        let budget = if self.partial_reads {
            Budget::starting_at(&self.budget, p.slo, deadline, arrived)
        } else {
            Budget::starting_at(&self.budget, None, None, arrived)
        };
        let span = tracing::Span::current();
        span.record("namespace", p.namespace.as_str());
        span.record("series", p.series_id.as_str());
        span.record(
            "budget_ms",
            u64::try_from(budget.total.as_millis()).unwrap_or(u64::MAX),
        );
        let namespace = self.namespace(&p.namespace, Some(&budget)).await?;
        let fp = QueryFingerprint::new(&namespace, &p.series_id, p.start, p.end, p.order);
        let (resume_after, shard_starts) = match &p.token {
            None => (None, Vec::new()),
            Some(t) => {
                let (frontier, starts) = self.keys.verify_with_starts(t, &fp)?;
                check_frontier(&frontier, p.start, p.end, p.order)?;
                (Some(frontier), starts)
            }
        };
        let ticket = self
            .admission
            .try_admit(&namespace.name, class)
            .map_err(ServiceError::Overloaded)?;
        Ok(Prepared {
            read: ReadRequest {
                namespace,
                series_id: p.series_id.into(),
                start: p.start,
                end: p.end,
                resume_after,
                shard_starts,
                order: p.order,
                row_limit: p.page_size,
                byte_limit: p.page_bytes,
                budget,
                client,
            },
            fp,
            ticket,
        })
    }
}

/// The error of a read the engine could not start: a budget that would
/// have covered the smallest page (`least_page`) but was mostly spent before
/// the call's scan began (waiting for a worker, for the rest of the request,
/// for a held scan's hand-over) is the replica's doing, refused as load
/// (`BUDGET_SPENT_WAITING`), not a budget too small. (Counted to the
/// handler alone, a continued call whose held scan was handed over after
/// its deadline on a machine short of CPU failed `BUDGET_TOO_SMALL`,
/// with nothing in flight, though its scan held rows for it.)
fn read_failed(e: ReadError, budget: &Budget, least_page: Duration) -> ServiceError {
    match e {
        ReadError::NoProgress { began, .. }
            if began * 2 >= budget.total && budget.total >= least_page =>
        {
            ServiceError::Overloaded(Full::BudgetSpent {
                left: budget.total.saturating_sub(began),
            })
        }
        e => e.into(),
    }
}

/// A read ready to run.
struct Prepared {
    read: ReadRequest,
    fp: QueryFingerprint,
    ticket: Ticket,
}

/// Checks `access` to `namespace` for the caller (always allowed without
/// authentication).
fn permit(
    principal: Option<&Arc<Principal>>,
    access: Access,
    namespace: &str,
) -> Result<(), ServiceError> {
    match principal {
        Some(p) => Ok(p.check(access, namespace)?),
        None => Ok(()),
    }
}

/// A verified token's frontier must still lie within its range (it always
/// does for tokens we issued; this guards against signing-key misuse).
fn check_frontier(k: &Key, start: i64, end: i64, order: Order) -> Result<(), ServiceError> {
    let range = Span::of_range(start, end);
    let ok = match order {
        Order::Ascending => k >= &range.after && k <= &range.before,
        Order::Descending => k > &range.after && k <= &range.before,
    };
    if ok {
        Ok(())
    } else {
        Err(ServiceError::invalid(
            "continuation_token",
            "position lies outside the requested range",
        ))
    }
}

fn class_of(metadata: &tonic::metadata::MetadataMap) -> Result<Class, ServiceError> {
    match metadata.get(CLASS_HEADER) {
        None => Ok(Class::default()),
        Some(v) => v.to_str().ok().and_then(Class::parse).ok_or_else(|| {
            ServiceError::invalid(CLASS_HEADER, "must be \"interactive\" or \"batch\"")
        }),
    }
}

/// Runs `work` by `budget`'s deadline, if the call has one: past it, the
/// call fails DEADLINE_EXCEEDED `STORAGE_LATE` ([`ServiceError::Late`]),
/// rather than storage's own timeout passing the client's deadline, where
/// the client gets only its library's DEADLINE_EXCEEDED and no details.
/// What `work` waits on is dropped then, unless it runs in a task of its
/// own ([`carry_on`]).
async fn by_deadline<T>(
    budget: Option<Budget>,
    work: LateWork,
    fut: impl std::future::Future<Output = Result<T, ServiceError>>,
) -> Result<T, ServiceError> {
    match budget {
        None => fut.await,
        Some(b) => tokio::time::timeout_at(b.deadline, fut)
            .await
            .map_err(|_| ServiceError::Late {
                work,
                budget: b.total,
            })?,
    }
}

/// Runs `work` in a task of its own and waits for it: dropped (its call
/// answered at its deadline, or cancelled), the wait ends but the work goes
/// on, so a write or a namespace creation is not abandoned half done (a
/// batch cut off midway stays partly stored until retried).
fn carry_on<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, ServiceError>> + Send + 'static,
) -> impl std::future::Future<Output = Result<T, ServiceError>> {
    let task = tokio::spawn(work.in_current_span());
    async move {
        task.await.unwrap_or_else(|e| {
            Err(ServiceError::Storage(StorageError::Fatal(
                format!("the storage task failed: {e}").into(),
            )))
        })
    }
}

/// When the call arrived, as the arrival layer stamped it (see
/// `super::arrival`), or now if none did.
fn arrival<T>(request: &Request<T>) -> Instant {
    request
        .extensions()
        .get::<Arrival>()
        .map_or_else(Instant::now, |a| a.0)
}

/// Header by which Envoy tells the upstream how long the proxy waits for
/// its answer, in milliseconds.
const ENVOY_TIMEOUT: &str = "x-envoy-expected-rq-timeout-ms";

/// How long the client (or a proxy in front of us) waits for the answer:
/// the shorter of the `grpc-timeout` and Envoy's expected request timeout.
/// Values that do not parse are ignored, as gRPC servers do. Envoy's 0 is
/// no timeout, as in Envoy (a route timeout of 0 disables it, and a proxy
/// whose timeout has run out sends 1, never 0), not a spent one.
fn client_deadline(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let header = |name| metadata.get(name).and_then(|v| v.to_str().ok());
    let grpc = header("grpc-timeout").and_then(parse_grpc_timeout);
    // Digits only: `u64::from_str` would take a sign.
    let envoy = header(ENVOY_TIMEOUT)
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis);
    grpc.into_iter().chain(envoy).min()
}

/// The request id: the client's `x-request-id`, or a fresh UUID.
fn request_id(metadata: &tonic::metadata::MetadataMap) -> String {
    metadata
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string)
}

/// An RPC being served: answered through [`finish`], or, dropped before
/// (the client cancelled the call or went away, and the transport dropped
/// its handler), recorded with the outcome `cancelled`.
struct Call {
    method: &'static str,
    started: Instant,
}

impl Call {
    fn start(method: &'static str) -> Self {
        Self {
            method,
            started: Instant::now(),
        }
    }

    /// The call is answered; `finish` records it.
    fn answered(self) -> (&'static str, Instant) {
        let Self { method, started } = self;
        // Plain values only: forgetting it skips the drop, leaking nothing.
        std::mem::forget(self);
        (method, started)
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // Dropped inside the call's span (an instrumented future enters its
        // span while it drops), so the event and field land on it.
        tracing::Span::current().record("outcome", "cancelled");
        tracing::debug!(
            elapsed_ms = self.started.elapsed().as_millis(),
            "request cancelled by the client"
        );
        telemetry::request(self.method, "cancelled", self.started.elapsed());
    }
}

/// Ends an RPC: records its outcome in the span and metrics, and maps the
/// error to a status.
fn finish<T>(
    call: Call,
    result: Result<T, ServiceError>,
    outcome_of: impl FnOnce(&T) -> &'static str,
) -> Result<T, Status> {
    let (method, started) = call.answered();
    let outcome = match &result {
        Ok(v) => outcome_of(v),
        Err(_) => "error",
    };
    // Recorded before the events below, so they carry it.
    tracing::Span::current().record("outcome", outcome);
    match &result {
        Ok(_) => tracing::debug!(elapsed_ms = started.elapsed().as_millis(), "request done"),
        Err(e) => {
            metrics::counter!(telemetry::REJECTED, "reason" => e.reason()).increment(1);
            if e.is_caller_error() {
                tracing::debug!(cause = %crate::storage::chain(e), reason = e.reason(), "request refused");
            } else {
                tracing::warn!(cause = %crate::storage::chain(e), reason = e.reason(), "request failed");
            }
        }
    }
    telemetry::request(method, outcome, started.elapsed());
    result.map_err(Status::from)
}

fn ok<T>(_: &T) -> &'static str {
    "ok"
}

#[tonic::async_trait]
impl<S: Storage> pb::hourglass_server::Hourglass for HourglassService<S> {
    #[tracing::instrument(name = "CreateNamespace", skip_all, fields(request_id = %request_id(request.metadata()), client, namespace, outcome))]
    async fn create_namespace(
        &self,
        request: Request<pb::CreateNamespaceRequest>,
    ) -> Result<Response<pb::Namespace>, Status> {
        let call = Call::start("CreateNamespace");
        let result = async {
            let principal = self.authenticate(&request)?;
            let budget = self.deadline_budget(&request);
            let pb::CreateNamespaceRequest { namespace } = request.into_inner();
            let ns = namespace.ok_or_else(|| ServiceError::invalid("namespace", "is required"))?;
            // The permission before the settings (see `prepare_read`).
            api::check_namespace_name("namespace.name", &ns.name)?;
            permit(principal.as_ref(), Access::Write, &ns.name)?;
            let ns = Namespace::try_from(ns)?;
            tracing::Span::current().record("namespace", ns.name.as_str());
            self.misses.forget(&ns.name);
            let (storage, to_create) = (self.engine.storage().clone(), ns.clone());
            let created = carry_on(async move { Ok(storage.create_namespace(&to_create).await?) });
            let ns = match by_deadline(budget, LateWork::Create, created).await? {
                Created::New => ns,
                // The stored one: it says whether its buckets index their shards.
                Created::Existing(existing) if existing.same_settings(&ns) => existing,
                Created::Existing(existing) => {
                    return Err(ServiceError::NamespaceConflict(existing))
                }
            };
            // Stored as this: the first read of it here asks storage nothing.
            self.remember_namespace(ns.clone());
            Ok(ns)
        }
        .await;
        finish(call, result, ok).map(|ns| Response::new(ns.into()))
    }

    #[tracing::instrument(name = "GetNamespace", skip_all, fields(request_id = %request_id(request.metadata()), client, namespace, outcome))]
    async fn get_namespace(
        &self,
        request: Request<pb::GetNamespaceRequest>,
    ) -> Result<Response<pb::Namespace>, Status> {
        let call = Call::start("GetNamespace");
        let result = async {
            let principal = self.authenticate(&request)?;
            let budget = self.deadline_budget(&request);
            let pb::GetNamespaceRequest { name } = request.into_inner();
            api::check_namespace_name("name", &name)?;
            permit(principal.as_ref(), Access::Read, &name)?;
            tracing::Span::current().record("namespace", name.as_str());
            by_deadline(budget, LateWork::Lookup, self.namespace(&name, None)).await
        }
        .await;
        finish(call, result, ok).map(|ns| Response::new((*ns).clone().into()))
    }

    #[tracing::instrument(name = "WriteEvents", skip_all, fields(request_id = %request_id(request.metadata()), client, namespace, events, outcome))]
    async fn write_events(
        &self,
        request: Request<pb::WriteEventsRequest>,
    ) -> Result<Response<pb::WriteEventsResponse>, Status> {
        let call = Call::start("WriteEvents");
        let result = async {
            let principal = self.authenticate(&request)?;
            let budget = self.deadline_budget(&request);
            let pb::WriteEventsRequest { namespace, events } = request.into_inner();
            api::check_namespace_name("namespace", &namespace)?;
            permit(principal.as_ref(), Access::Write, &namespace)?;
            tracing::Span::current().record("namespace", namespace.as_str());
            let events = api::validate_events(events)?;
            tracing::Span::current().record("events", events.len());
            let written = events.len() as u64;
            let write = async {
                let ns = self.namespace(&namespace, None).await?;
                let storage = self.engine.storage().clone();
                carry_on(async move { Ok(storage.write_events(&ns, &events).await?) }).await?;
                Ok(written)
            };
            by_deadline(budget, LateWork::Write, write).await
        }
        .await;
        finish(call, result, ok).map(|written| Response::new(pb::WriteEventsResponse { written }))
    }

    #[tracing::instrument(name = "ReadEvents", skip_all, fields(request_id = %request_id(request.metadata()), client, namespace, series, budget_ms, outcome))]
    async fn read_events(
        &self,
        request: Request<pb::ReadEventsRequest>,
    ) -> Result<Response<pb::ReadEventsResponse>, Status> {
        let call = Call::start("ReadEvents");
        let result = async {
            let Prepared {
                read: req,
                fp,
                ticket,
            } = self.prepare_read(request).await?;
            // Rows are encoded as they come (see crate::response).
            let mut encoded = EncodedEvents::new(req.series_id.clone());
            let mut sink = FirstRow::new(&mut encoded);
            let outcome = self.engine.read(&req, &mut sink).await;
            let first_row = sink.at;
            let outcome = outcome.map_err(|e| failed_read(&self.engine, &ticket, &req, e))?;
            let continued = outcome.stats.continued;
            let end = api::stream_end(outcome, |k, s| self.keys.issue_with_starts(&fp, k, s));
            observe(&ticket, &req, first_row, continued);
            Ok((encoded.finish(), end, ticket))
        }
        .await;
        let (encoded_events, end, ticket) =
            finish(call, result, |(_, end, _)| partial_or_complete(end))?;
        let pb::StreamEnd {
            partial,
            partial_reason,
            continuation_token,
            watermark_micros,
            stats,
        } = end;
        let mut response = Response::new(pb::ReadEventsResponse {
            events: Vec::new(),
            encoded_events,
            partial,
            partial_reason,
            continuation_token,
            watermark_micros,
            stats,
        });
        // The read's slot is held until its client has taken the response,
        // its share of the adaptive limit too (unlike a stream's): sending
        // is work of this replica that the limit must count. Given back at
        // the scan's end, it let more reads in beside the responses being
        // sent, and under 2,000 reads a second at a 10 ms SLO goodput fell
        // by 29-53% (two runs against the local node, old and new taking
        // turns).
        response.extensions_mut().insert(HoldUntilSent::new(ticket));
        Ok(response)
    }

    type StreamEventsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::StreamEventsResponse, Status>> + Send>,
    >;

    #[tracing::instrument(name = "StreamEvents", skip_all, fields(request_id = %request_id(request.metadata()), client, namespace, series, budget_ms, outcome))]
    async fn stream_events(
        &self,
        request: Request<pb::ReadEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let call = Call::start("StreamEvents");
        let abort = request.extensions().get::<ConnectionAbort>().cloned();
        let prepared = self.prepare_read(request).await;
        let Prepared {
            read: req,
            fp,
            ticket,
        } = match prepared {
            Ok(p) => p,
            Err(e) => return finish(call, Err(e), ok),
        };
        // The stream holds the ticket (its static slot); the scan holds it
        // too while it runs (its share of the adaptive limit: a stream's
        // client may hold its queue unread for the send stall's 10-20 s).
        let ticket = Arc::new(ticket);
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let progress = Arc::new(Progress::default());
        let offered = progress.clone();
        let cancel = CancellationToken::new();
        let guard = cancel.clone().drop_guard();
        let engine = self.engine.clone();
        let keys = self.keys.clone();
        let scanning = ticket.clone();
        let drain = Arc::new(Drain::default());
        let taking = drain.clone();
        let run = async move {
            let mut sink = StreamSink::new(req.series_id.clone(), tx.clone(), drain)
                .watched(offered.clone())
                .releasing(scanning.clone());
            let mut timed = FirstRow::new(&mut sink);
            let result = engine.read(&req, &mut timed).await;
            let first_row = timed.at;
            let result = match result {
                Ok(outcome) => {
                    observe(&scanning, &req, first_row, outcome.stats.continued);
                    Ok(outcome)
                }
                Err(e) => Err(failed_read(&engine, &scanning, &req, e)),
            };
            scanning.scan_ended();
            drop(scanning);
            // Rows the engine pushed are the client's before the end.
            sink.drained().await;
            let result = result
                .map(|outcome| api::stream_end(outcome, |k, s| keys.issue_with_starts(&fp, k, s)));
            let msg =
                finish(call, result, partial_or_complete).map(|end| pb::StreamEventsResponse {
                    message: Some(pb::stream_events_response::Message::End(end)),
                });
            if tx.send(msg).await.is_ok() {
                offered.offered();
            }
        };
        // The read stops as soon as the client drops the stream (guard dropped).
        tokio::spawn(
            async move {
                tokio::select! {
                    // Dropping `run` drops its `Call`, recorded as cancelled.
                    () = cancel.cancelled() => {}
                    () = run => {}
                }
            }
            .in_current_span(),
        );
        // The admission ticket lives as long as the response stream, not
        // just the scan: rows a slow client has not taken yet stay buffered,
        // so a client cannot pile up finished-but-unread streams beyond the
        // bound. A client that takes none of the batches filling its queue for the
        // stall time loses its connection (see `calls`).
        if let Some(abort) = abort {
            watch_stall(progress.clone(), abort);
        }
        let finished = Watched(progress);
        let stream = ReceiverStream::new(rx).map(move |m| {
            let _alive = (&guard, &ticket);
            finished.0.took();
            taking.took(batch_bytes(&m));
            m
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The encoded event bytes of a StreamEvents message (none but a batch's).
fn batch_bytes(message: &StreamMessage) -> usize {
    match message {
        Ok(pb::StreamEventsResponse {
            message: Some(pb::stream_events_response::Message::Batch(b)),
        }) => b.encoded_events.len(),
        _ => 0,
    }
}

fn partial_or_complete(end: &pb::StreamEnd) -> &'static str {
    if end.partial {
        "partial"
    } else {
        "complete"
    }
}

/// A batch being filled checks its age every this many rows.
const STREAM_CLOCK_EVERY: usize = 64;

/// Records when a read's first row came, for the admission limit.
struct FirstRow<'a, K> {
    sink: &'a mut K,
    at: Option<Instant>,
}

impl<'a, K: RowSink> FirstRow<'a, K> {
    fn new(sink: &'a mut K) -> Self {
        Self { sink, at: None }
    }
}

impl<K: RowSink> RowSink for FirstRow<'_, K> {
    fn push(&mut self, row: Row) {
        if self.at.is_none() {
            self.at = Some(Instant::now());
        }
        self.sink.push(row);
    }

    fn flush(&mut self) {
        self.sink.flush();
    }

    fn flush_but(&mut self, keep: usize) {
        self.sink.flush_but(keep);
    }

    fn sends_as_it_goes(&self) -> bool {
        self.sink.sends_as_it_goes()
    }

    fn backlogged(&self) -> bool {
        self.sink.backlogged()
    }

    fn unsent(&self) -> Duration {
        self.sink.unsent()
    }

    fn drained(&mut self) -> impl std::future::Future<Output = ()> + Send {
        self.sink.drained()
    }

    fn take_back(&mut self, n: usize) -> Option<(Key, Vec<Row>)> {
        self.sink.take_back(n)
    }
}

/// Feeds an answered read to the admission limit: its time from arrival to
/// its first row (to now, without one) and whether it was late: answered
/// after its budget, or got its first row only in the second half of it.
/// A first row that late has the read answer with a few rows just before
/// its deadline, which its client sees after it on a loaded machine; and
/// it means storage answers this replica's reads too slowly for their
/// budgets, the saturation the limit is there to prevent. (The time to the
/// first row alone does not say so: a hot continuation has its first row
/// in hand whatever the load, so a `continued` read gives the limit no
/// time to first row, only whether it was late.)
fn observe(ticket: &Ticket, req: &ReadRequest, first_row: Option<Instant>, continued: bool) {
    let to_first_row = first_row.unwrap_or_else(Instant::now) - req.budget.started;
    let late = req.budget.elapsed() > req.budget.total || to_first_row > req.budget.total / 2;
    ticket.observe((!continued).then_some(to_first_row), late);
}

/// A read that failed: fed to the admission limit ([`observe_failed`])
/// and mapped to the service's error ([`read_failed`]), both against the
/// namespace's least page time, which only a failed read needs (it takes
/// the latency models' lock and copies a model).
fn failed_read<S: Storage>(
    engine: &ReadEngine<S>,
    ticket: &Ticket,
    req: &ReadRequest,
    error: ReadError,
) -> ServiceError {
    let least_page = engine.least_page_time(&req.namespace.name);
    observe_failed(ticket, req, &error, least_page);
    read_failed(error, &req.budget, least_page)
}

/// Feeds a read that failed for want of budget (not one row by its stop)
/// to the admission limit as a late answer and a failure: on a saturated
/// replica that is how reads fail, and the limit must fall for it (by half
/// when they are many). Other failures (bad input, storage errors) say
/// nothing about this replica's load, nor does a budget that could not
/// cover the smallest page (`least_page`) however idle the replica: one
/// client looping calls whose deadline fell within the margin (a budget of
/// zero) held the limit at its floor for every other client (Node audit).
fn observe_failed(ticket: &Ticket, req: &ReadRequest, error: &ReadError, least_page: Duration) {
    let failed = matches!(error, ReadError::NoProgress { .. });
    if failed && req.budget.total >= least_page {
        ticket.observe_failed(req.budget.elapsed());
    }
}

/// StreamEvents messages queued for the transport at most; past them the
/// read waits for its client (see [`RowSink::backlogged`]). With
/// [`STREAM_BATCH_BYTES`] batches, a stream buffers about this many MiB
/// besides the rows its scan holds.
pub const STREAM_QUEUE: usize = 4;

type StreamMessage = Result<pb::StreamEventsResponse, Status>;

/// Sends rows in batches as the engine merges them: a batch goes when the
/// engine is about to wait on storage, when it holds
/// [`STREAM_BATCH_BYTES`], or when its first row has waited
/// [`STREAM_BATCH_DELAY`]; no row count bounds it. Rows are encoded as
/// they come ([`EncodedEvents`]), so a batch that goes is only copied to the
/// transport. Batches the bounded queue to the transport cannot take wait
/// in `held`, and the sink says it is backlogged until they went.
struct StreamSink {
    /// The batch being filled.
    batch: EncodedEvents,
    /// The key of the last row sent (went to the queue or `held`).
    sent_last: Option<Key>,
    /// When the first row of the batch was pushed.
    since: Option<std::time::Instant>,
    tx: mpsc::Sender<StreamMessage>,
    /// Batches made while the queue was full, oldest first, and their
    /// bytes.
    held: std::collections::VecDeque<StreamMessage>,
    held_bytes: usize,
    /// What the transport has not taken of the queue, and its pace.
    drain: Arc<Drain>,
    /// Counts the batches queued, for the stall watch.
    progress: Option<Arc<Progress>>,
    /// The stream's admission ticket, whose share of the adaptive limit
    /// goes back the first time the queue is full (see
    /// [`StreamSink::releasing`]).
    share: Option<Arc<Ticket>>,
}

impl StreamSink {
    fn new(series_id: Arc<str>, tx: mpsc::Sender<StreamMessage>, drain: Arc<Drain>) -> Self {
        Self {
            batch: EncodedEvents::new(series_id),
            sent_last: None,
            since: None,
            tx,
            held: std::collections::VecDeque::new(),
            held_bytes: 0,
            drain,
            progress: None,
            share: None,
        }
    }

    /// Gives back `ticket`'s share of the adaptive limit (and of its
    /// namespace's fair share) the first time the queue to the transport
    /// is full: a stream that waits for its client holds no storage or CPU
    /// the limit is there to share out, only its static slot. Released at
    /// its scan's end alone, a stream whose client stopped reading held it
    /// for its whole budget: four such streams under a 30 s SLO kept every
    /// other read out for 18.5 s, until the send stall closed their
    /// connections (Node audit).
    fn releasing(mut self, ticket: Arc<Ticket>) -> Self {
        self.share = Some(ticket);
        self
    }

    /// Counts every batch queued into `progress`.
    fn watched(mut self, progress: Arc<Progress>) -> Self {
        self.progress = Some(progress);
        self
    }

    fn offered(&self) {
        if let Some(p) = &self.progress {
            p.offered();
        }
    }
}

impl RowSink for StreamSink {
    fn push(&mut self, row: Row) {
        if self.batch.len() + self.batch.weight(&row) > STREAM_BATCH_BYTES {
            self.flush();
        }
        self.batch.push(row);
        let since = *self.since.get_or_insert_with(std::time::Instant::now);
        // Reading the clock every row would cost more than the rows.
        if self.batch.rows() % STREAM_CLOCK_EVERY == 0 && since.elapsed() >= STREAM_BATCH_DELAY {
            self.flush();
        }
    }

    fn sends_as_it_goes(&self) -> bool {
        true
    }

    fn flush(&mut self) {
        self.flush_but(0);
    }

    fn flush_but(&mut self, keep: usize) {
        let Some(last) = self.batch.rows().checked_sub(keep + 1) else {
            return;
        };
        self.since = None;
        self.sent_last = Some(self.batch.key_of(last));
        let events = self.batch.take_but(keep);
        let bytes = events.len();
        let batch = Ok(pb::StreamEventsResponse {
            message: Some(pb::stream_events_response::Message::Batch(pb::EventBatch {
                encoded_events: events,
                events: Vec::new(),
            })),
        });
        if !self.held.is_empty() {
            self.held.push_back(batch);
            self.held_bytes += bytes;
            return;
        }
        // Counted before it is queued: the transport may take it at once,
        // on another thread.
        self.drain.queued(bytes);
        match self.tx.try_send(batch) {
            Ok(()) => self.offered(),
            Err(mpsc::error::TrySendError::Closed(_)) => self.drain.unqueued(bytes),
            Err(mpsc::error::TrySendError::Full(batch)) => {
                self.drain.unqueued(bytes);
                self.held.push_back(batch);
                self.held_bytes += bytes;
                if let Some(ticket) = self.share.take() {
                    ticket.scan_ended();
                }
            }
        }
    }

    fn backlogged(&self) -> bool {
        !self.held.is_empty()
    }

    /// The batch being filled counts too: it goes behind the rest.
    fn unsent(&self) -> Duration {
        self.drain.behind(self.held_bytes + self.batch.len())
    }

    /// Gives back rows of the batch not sent yet: the last `n`, or all of
    /// them when rows sent before stay.
    fn take_back(&mut self, n: usize) -> Option<(Key, Vec<Row>)> {
        if n == 0 || self.batch.is_empty() {
            return None;
        }
        if self.batch.rows() > n {
            return self.batch.take_back(n);
        }
        let last = self.sent_last.clone()?;
        Some((last, self.batch.take_all()))
    }

    /// Cancel-safe (the engine drops it when its budget ends first): a
    /// batch leaves `held` only once the queue has room for it.
    async fn drained(&mut self) {
        while !self.held.is_empty() {
            let Ok(room) = self.tx.reserve().await else {
                // The client went away: nothing more to send.
                self.held.clear();
                self.held_bytes = 0;
                return;
            };
            if let Some(batch) = self.held.pop_front() {
                let bytes = batch_bytes(&batch);
                self.held_bytes -= bytes;
                self.drain.queued(bytes);
                room.send(batch);
                self.offered();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read that fit no row after most of its budget went before its
    /// scan began (here, waiting for a held scan's hand-over) was the
    /// replica's doing: refused as load with what was left; one whose scan
    /// began in time, or whose budget could not cover the smallest page,
    /// keeps its reason.
    #[test]
    fn a_read_whose_scan_began_late_was_refused_for_load() {
        let budget = Budget::new(
            &BudgetConfig::default(),
            Some(Duration::from_millis(10)),
            None,
        );
        let failed = |began_ms: u64| ReadError::NoProgress {
            budget: budget.total,
            set_by: budget.source,
            waited_on: None,
            began: Duration::from_millis(began_ms),
        };
        let least = Duration::from_millis(2);
        let reason = |e: ServiceError| e.reason();
        match read_failed(failed(6), &budget, least) {
            ServiceError::Overloaded(Full::BudgetSpent { left }) => {
                assert_eq!(left, Duration::from_millis(4));
            }
            other => panic!("not refused for load: {other:?}"),
        }
        assert_eq!(
            reason(read_failed(failed(1), &budget, least)),
            "BUDGET_TOO_SMALL"
        );
        let beyond = Duration::from_millis(20);
        assert_eq!(
            reason(read_failed(failed(6), &budget, beyond)),
            "BUDGET_TOO_SMALL"
        );
    }

    fn sink() -> (StreamSink, mpsc::Receiver<StreamMessage>) {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        (StreamSink::new("s".into(), tx, Arc::default()), rx)
    }

    fn row(i: usize, payload: usize) -> Row {
        Row {
            key: Key::new(i64::try_from(i).expect("small"), format!("{i:08}")),
            payload: vec![0u8; payload].into(),
            tags: HashMap::new(),
        }
    }

    /// The rows of a batch as its client decodes them.
    fn events_of(b: &pb::EventBatch) -> Vec<pb::Event> {
        use prost::Message as _;
        pb::EventBatch::decode(b.encode_to_vec().as_slice())
            .expect("a batch decodes")
            .events
    }

    fn batch_len(rx: &mut mpsc::Receiver<StreamMessage>) -> Option<usize> {
        match rx.try_recv().ok()?.expect("a batch").message? {
            pb::stream_events_response::Message::Batch(b) => Some(events_of(&b).len()),
            pb::stream_events_response::Message::End(_) => None,
        }
    }

    #[test]
    fn a_batch_goes_when_its_first_row_has_waited_the_delay() {
        let (mut sink, mut rx) = sink();
        for i in 0..STREAM_CLOCK_EVERY - 1 {
            sink.push(row(i, 10));
        }
        assert_eq!(batch_len(&mut rx), None, "young rows wait for more");
        std::thread::sleep(STREAM_BATCH_DELAY + Duration::from_millis(1));
        sink.push(row(STREAM_CLOCK_EVERY, 10));
        assert_eq!(batch_len(&mut rx), Some(STREAM_CLOCK_EVERY));
        sink.push(row(STREAM_CLOCK_EVERY + 1, 10));
        sink.flush();
        assert_eq!(batch_len(&mut rx), Some(1), "the clock starts again");
    }

    #[tokio::test]
    async fn a_full_queue_holds_batches_back_until_the_client_takes_one() {
        let (mut sink, mut rx) = sink();
        for i in 0..=STREAM_QUEUE {
            sink.push(row(i, 10));
            sink.flush();
        }
        assert!(sink.backlogged(), "the queue takes {STREAM_QUEUE} batches");
        sink.push(row(STREAM_QUEUE + 1, 10));
        sink.flush();
        assert_eq!(sink.held.len(), 2, "later batches wait behind the first");
        assert_eq!(batch_len(&mut rx), Some(1));
        let (more, ()) = tokio::join!(
            async {
                let mut n = 0;
                while let Some(len) = batch_len_async(&mut rx).await {
                    n += len;
                    if n == STREAM_QUEUE + 1 {
                        break;
                    }
                }
                n
            },
            sink.drained()
        );
        assert_eq!(more, STREAM_QUEUE + 1, "every row held back went, in order");
        assert!(!sink.backlogged());
    }

    /// The sink counts the bytes of its batches wherever they wait (queued
    /// for the transport, held back), so what it says its client still
    /// needs is all of them at the pace the transport took them.
    #[tokio::test(start_paused = true)]
    async fn a_streams_unsent_time_counts_every_batch_its_client_has_not_had() {
        let (tx, mut rx) = mpsc::channel(STREAM_QUEUE);
        let drain = Arc::new(Drain::default());
        let mut sink = StreamSink::new("s".into(), tx, drain.clone());
        for i in 1..=STREAM_QUEUE + 2 {
            sink.push(row(i, 1000));
            sink.flush();
        }
        assert_eq!(sink.held.len(), 2);
        assert_eq!(sink.unsent(), Duration::ZERO, "no pace measured yet");
        // The transport takes a batch every millisecond.
        let mut bytes = Vec::new();
        for _ in 0..2 {
            let m = rx.try_recv().expect("a queued batch");
            bytes.push(batch_bytes(&m));
            drain.took(batch_bytes(&m));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        let m = rx.try_recv().expect("a queued batch");
        drain.took(batch_bytes(&m));
        let each = bytes[0];
        assert!(each > 1000 && bytes[1] == each, "{bytes:?}");
        // Left: 1 batch queued, 1 in the transport, 2 held.
        assert_eq!(sink.unsent(), Duration::from_millis(4));
        // What the engine reads it through says so too (a defaulted method
        // not passed on reads zero).
        assert_eq!(FirstRow::new(&mut sink).unsent(), Duration::from_millis(4));
        sink.drained().await;
        assert_eq!(
            sink.unsent(),
            Duration::from_millis(4),
            "held or queued alike"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_cut_short_loses_no_batch() {
        let (mut sink, mut rx) = sink();
        for i in 0..STREAM_QUEUE + 3 {
            sink.push(row(i, 10));
            sink.flush();
        }
        // The engine's budget ends while the client takes nothing.
        let cut = tokio::time::timeout(Duration::from_millis(5), sink.drained()).await;
        assert!(cut.is_err(), "nothing could go");
        assert_eq!(sink.held.len(), 3, "the held batches stay held");
        let (taken, ()) = tokio::join!(
            async {
                let mut n = 0;
                while n < STREAM_QUEUE + 3 {
                    n += batch_len_async(&mut rx).await.expect("a batch");
                }
                n
            },
            sink.drained()
        );
        assert_eq!(taken, STREAM_QUEUE + 3);
    }

    async fn batch_len_async(rx: &mut mpsc::Receiver<StreamMessage>) -> Option<usize> {
        match rx.recv().await?.expect("a batch").message? {
            pb::stream_events_response::Message::Batch(b) => Some(events_of(&b).len()),
            pb::stream_events_response::Message::End(_) => None,
        }
    }

    #[test]
    fn a_stream_gives_back_only_rows_it_has_not_sent() {
        let (mut sink, mut rx) = sink();
        assert!(sink.take_back(1).is_none(), "nothing pushed");
        for i in 0..10 {
            sink.push(row(i, 10));
        }
        // Before a wait: all but the last 3 go.
        sink.flush_but(3);
        assert_eq!(batch_len(&mut rx), Some(7));
        sink.push(row(10, 10));
        let (last, back) = sink.take_back(2).expect("two unsent rows");
        assert_eq!(last, row(8, 10).key);
        assert_eq!(back, vec![row(9, 10), row(10, 10)]);
        // Fewer unsent rows than asked: those, after the last row sent.
        let (last, back) = sink.take_back(5).expect("the unsent rows");
        assert_eq!((last, back), (row(6, 10).key, vec![row(7, 10), row(8, 10)]));
        assert!(sink.take_back(1).is_none(), "every row left was sent");
        sink.flush();
        assert!(rx.try_recv().is_err(), "nothing is left to send");
    }

    #[test]
    fn batches_are_bounded_by_bytes_not_rows() {
        let (mut sink, mut rx) = sink();
        // The first batch's clock starts in an hour: only bytes can send it.
        sink.since = Some(std::time::Instant::now() + Duration::from_secs(3600));
        // 2,000 rows of 600 bytes: over 1 MiB, so one batch goes at the bound.
        for i in 0..2_000 {
            sink.push(row(i, 600));
        }
        let first = batch_len(&mut rx).expect("a full batch");
        assert!(first > 1_000, "no 1,000-row bound: {first}");
        sink.flush();
        let rest = batch_len(&mut rx).expect("the rest");
        assert_eq!(first + rest, 2_000);
    }

    /// The client's deadline: the shorter of `grpc-timeout` and Envoy's
    /// header; a value that is not a whole number of milliseconds (a sign
    /// included) or a valid `grpc-timeout` is ignored.
    #[test]
    fn client_deadlines_take_valid_headers_only() {
        let deadline = |headers: &[(&'static str, &'static str)]| {
            let mut metadata = tonic::metadata::MetadataMap::new();
            for (name, value) in headers {
                metadata.insert(*name, value.parse().unwrap());
            }
            client_deadline(&metadata)
        };
        let ms = Duration::from_millis;
        assert_eq!(deadline(&[(ENVOY_TIMEOUT, "100")]), Some(ms(100)));
        assert_eq!(deadline(&[("grpc-timeout", "100m")]), Some(ms(100)));
        for bad in ["+100", "-1", " 100", "100ms", "", "0"] {
            assert_eq!(deadline(&[(ENVOY_TIMEOUT, bad)]), None, "{bad:?}");
        }
        assert_eq!(deadline(&[("grpc-timeout", "+100m")]), None);
        assert_eq!(
            deadline(&[("grpc-timeout", "2S"), (ENVOY_TIMEOUT, "+100")]),
            Some(ms(2_000))
        );
        assert_eq!(
            deadline(&[("grpc-timeout", "2S"), (ENVOY_TIMEOUT, "150")]),
            Some(ms(150))
        );
    }
}
