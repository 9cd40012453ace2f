//! The read engine: walks a series' non-empty buckets in order, merges each
//! bucket's shards in clustering order, and stops itself when a limit or the
//! latency budget ends, returning how far it got.
//!
//! Invariants:
//! * Rows go to the sink strictly in read order, each once, and only rows
//!   strictly inside the request's span.
//! * The frontier is the last position handed to the sink (a row key, or a
//!   bucket boundary once a whole bucket after it was read). Everything between
//!   the span's start and the frontier has been delivered; nothing after it
//!   has. A continuation token is exactly this frontier, with the shard
//!   starts of its bucket ([`crate::model::ShardStart`]): where shards are
//!   known, from pages fetched, to hold nothing beyond it. A shard resumed
//!   from its start holds up the merge only for rows beyond that start.
//! * All storage work of a read lives in futures owned by the read; dropping
//!   the read (client gone, deadline) drops them: no work outlives its request.
//! * Read-ahead fetches upcoming buckets and shards concurrently, bounded by
//!   [`EngineConfig::max_in_flight`] (the requests a call has in flight) or,
//!   fetching ahead, by the bytes the scan may hold; fetched rows the
//!   response does not use are discarded, never skipped: the frontier only
//!   moves over emitted rows.

pub mod budget;
mod continuations;
mod fetch;
pub mod merge;
pub mod pages;
pub mod position;
pub mod predict;
pub mod reserve;
mod scan;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::model::{Key, Namespace, Order, Row, ShardStart};
use crate::storage::{Storage, StorageError};
use crate::telemetry;
use budget::{Budget, BudgetSource};
use continuations::Continuations;
pub use continuations::{ContinuationConfig, Pressure, PRESSURE_HOLD};
use predict::LatencyModels;
use scan::Scan;

/// Tunables of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Largest storage page, in rows.
    pub max_storage_page: usize,
    /// Smallest storage page, in rows.
    pub min_storage_page: usize,
    /// First page of each shard, in rows; later pages double up to the
    /// maximum, so the first rows arrive quickly (slow start). Also the
    /// page pacing raises pages to when storage queues (`pages::pace`).
    pub initial_storage_page: usize,
    /// Buckets fetched ahead of the one being merged.
    pub readahead_buckets: usize,
    /// Storage requests in flight per read past which a call sends no page
    /// for the buckets after the one being merged. That bucket has a page
    /// in flight for each of its shards whatever this (its merge needs
    /// every shard's next rows), plus the bucket-index query and probes;
    /// fetching ahead (a held scan's, or a call's once it has rows) is
    /// bounded by the bytes it may hold instead.
    pub max_in_flight: usize,
    /// Buckets per bucket-index query.
    pub index_page: usize,
    /// First retry backoff cap; doubles per attempt (full jitter).
    pub retry_base: Duration,
    /// Largest retry backoff.
    pub retry_cap: Duration,
    /// Time kept back from the budget for handing the response to the
    /// transport and scheduling noise (at most an eighth of the budget):
    /// the scan stops this much before the deadline, plus the
    /// time sending the rows gathered and decoding them is expected to
    /// take (see [`reserve`]).
    pub response_reserve: Duration,
    /// How much before its stop a scan sets its timer: tokio rounds a
    /// sleep's deadline up to its next 1 ms tick, so a timer set for the
    /// stop itself fired 0-1 ms late, a tenth of a 10 ms budget at worst.
    /// Set to the tick, a scan with rows stops on time or up to a tick
    /// early (one without waits to its stop: a page may still land). Zero
    /// on a paused clock gives exact stops.
    pub timer_slack: Duration,
    /// Expected sending and decoding time per row gathered, until
    /// `response_cost` has measured it (or always, without one).
    pub response_reserve_per_row: Duration,
    /// The measured cost of encoding and sending responses per byte
    /// ([`reserve::RESPONSE_COST`] in a server); None keeps the per-row
    /// figure (engine tests, embedded engines).
    pub response_cost: Option<&'static reserve::ResponseCost>,
    /// The hot-continuation cache: scans that stopped partial are held for
    /// the call presenting their token ([`ContinuationConfig::off`] turns
    /// it off).
    pub continuations: ContinuationConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_storage_page: 5000,
            min_storage_page: 16,
            initial_storage_page: 128,
            readahead_buckets: 2,
            max_in_flight: 16,
            index_page: 256,
            retry_base: Duration::from_millis(10),
            retry_cap: Duration::from_millis(500),
            response_reserve: Duration::from_millis(2),
            timer_slack: Duration::from_millis(1),
            response_reserve_per_row: Duration::from_micros(4),
            response_cost: None,
            continuations: ContinuationConfig::default(),
        }
    }
}

/// An engine setting out of its range; `setting` is the field's name
/// (the `serve` flag is the same with dashes).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("engine setting {setting} {rule}")]
pub struct InvalidEngineConfig {
    pub setting: &'static str,
    pub rule: String,
}

impl EngineConfig {
    /// Checks the settings' ranges: storage pages of at least one row with
    /// `max_storage_page >= min_storage_page`, at least one request in
    /// flight and one bucket per index page, `retry_base <= retry_cap`.
    /// `initial_storage_page` may lie outside [min, max]; it is clamped.
    pub fn validate(&self) -> Result<(), InvalidEngineConfig> {
        let fail = |setting, rule: String| Err(InvalidEngineConfig { setting, rule });
        if self.min_storage_page == 0 {
            return fail("min_storage_page", "must be at least 1".into());
        }
        if self.max_storage_page < self.min_storage_page {
            return fail(
                "max_storage_page",
                format!(
                    "must be at least min_storage_page ({}), got {}",
                    self.min_storage_page, self.max_storage_page
                ),
            );
        }
        if self.max_in_flight == 0 {
            return fail("max_in_flight", "must be at least 1".into());
        }
        if self.index_page == 0 {
            return fail("index_page", "must be at least 1".into());
        }
        if self.retry_base > self.retry_cap {
            return fail(
                "retry_base",
                format!(
                    "must be at most retry_cap ({:?}), got {:?}",
                    self.retry_cap, self.retry_base
                ),
            );
        }
        Ok(())
    }
}

/// One read call.
#[derive(Clone, Debug)]
pub struct ReadRequest {
    pub namespace: Arc<Namespace>,
    pub series_id: Arc<str>,
    /// The original range [start, end).
    pub start: i64,
    pub end: i64,
    /// Where to resume: the previous frontier, or None for the range start.
    pub resume_after: Option<Key>,
    /// Where shards of the bucket the read resumes in hold no row beyond
    /// `resume_after` (from its token; empty for none).
    pub shard_starts: Vec<ShardStart>,
    pub order: Order,
    /// Most rows to emit (>= 1).
    pub row_limit: usize,
    /// Most row bytes to emit; one larger row is still emitted alone.
    pub byte_limit: usize,
    pub budget: Budget,
    /// Who is reading (the authenticated principal, or the peer address):
    /// bounds the continuation state held per client.
    pub client: Arc<str>,
}

/// Why a read stopped short of the end of its range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartialReason {
    Slo,
    ClientDeadline,
    ServerBudget,
    ByteLimit,
    RowLimit,
    StorageError,
    /// The server is draining for shutdown.
    Shutdown,
}

impl PartialReason {
    /// Every reason, for registering metrics before first use.
    pub const ALL: [Self; 7] = [
        Self::Slo,
        Self::ClientDeadline,
        Self::ServerBudget,
        Self::ByteLimit,
        Self::RowLimit,
        Self::StorageError,
        Self::Shutdown,
    ];

    /// Whether a read that stopped for this reason is held for a hot
    /// continuation: not after a storage error (its state may be torn) or
    /// when the server drains.
    fn holds_scan(self) -> bool {
        !matches!(self, Self::StorageError | Self::Shutdown)
    }

    /// Whether the budget (not a limit) ended the call.
    fn is_budget(self) -> bool {
        matches!(self, Self::Slo | Self::ClientDeadline | Self::ServerBudget)
    }

    /// Label used in metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Slo => "slo",
            Self::ClientDeadline => "client_deadline",
            Self::ServerBudget => "server_budget",
            Self::ByteLimit => "byte_limit",
            Self::RowLimit => "row_limit",
            Self::StorageError => "storage_error",
            Self::Shutdown => "shutdown",
        }
    }
}

impl From<BudgetSource> for PartialReason {
    fn from(s: BudgetSource) -> Self {
        match s {
            BudgetSource::Slo => Self::Slo,
            BudgetSource::ClientDeadline => Self::ClientDeadline,
            BudgetSource::ServerDefault | BudgetSource::ServerMax => Self::ServerBudget,
        }
    }
}

/// How a read ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The range is exhausted.
    Complete,
    /// Rows may remain after `frontier`.
    Partial {
        reason: PartialReason,
        frontier: Key,
    },
}

/// Work done by one read; a call that continued a held scan also counts
/// the storage work its scan did while held (see the proto's `ReadStats`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    pub rows_scanned: u64,
    pub rows_delivered: u64,
    /// Shard pages requested, probes included.
    pub storage_pages: u64,
    /// Probes sent while the call had no row: pages beside a late page,
    /// copies of a late bucket-index query.
    pub probes: u64,
    pub index_pages: u64,
    pub buckets_visited: u64,
    pub retries: u64,
    pub elapsed: Duration,
    pub budget: Duration,
    /// This call continued a scan held on this replica (a hot continuation).
    pub continued: bool,
}

/// A finished read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadOutcome {
    pub ending: Ending,
    /// See `ReadEventsResponse.watermark_micros` in the proto.
    pub watermark: i64,
    /// For a partial read's token: where shards of the bucket its next call
    /// begins in hold no row beyond the frontier (see [`ShardStart`]).
    pub shard_starts: Vec<ShardStart>,
    pub stats: ReadStats,
}

/// The storage request a call that stopped without progress waited on
/// most, judged against the latency model: when it had waited longer than
/// the model expects of a slow request of its size ([`Waited::late`]) and
/// a usual one fits the budget, storage was late; otherwise the budget
/// could not cover what storage takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waited {
    /// Storage requests (pages, probes, index queries) in flight when the
    /// call stopped.
    pub in_flight: usize,
    /// How long the request had waited.
    pub waited: Duration,
    /// What the model expects of a slow request of its size
    /// ([`predict::LatencyModel::predict_tail`]), at most
    /// [`SLOW_AT_MOST_USUAL`] times what such a request usually takes
    /// ([`predict::LatencyModel::predict_usual`]).
    pub expected: Duration,
    /// What such a request usually takes
    /// ([`predict::LatencyModel::predict_usual`]). A budget this does not
    /// fit is too small, whether the request was late or not; one it fits
    /// is not, even when a slow request (`expected`) would not fit: a
    /// continued call under a 5 ms SLO whose page had waited 20.5 ms, where
    /// usual ones took 2.2 ms, was told its budget was too small because a
    /// slow one, three times that, did not fit.
    pub usual: Duration,
}

/// A request counts as late once it has waited this many times what a
/// request of its size usually takes, whatever the model's tail says. The
/// tail (the spread of observed over fitted latency) and the line both
/// widen within a few calls of a storage stall, so judged by them alone, a
/// call stuck on a page in a stall failed `BUDGET_TOO_SMALL`, "storage may
/// take up to 213 ms, more than the budget", advising a longer budget
/// where 98% of the calls under the same 10 ms answered.
pub const SLOW_AT_MOST_USUAL: u32 = 3;

impl Waited {
    /// A request of `rows` rows (a bucket-index or namespace query counts
    /// as a smallest page) that has waited `waited`, one of `in_flight`,
    /// judged against `model`.
    fn judged(
        model: &predict::LatencyModel,
        rows: usize,
        waited: Duration,
        in_flight: usize,
    ) -> Self {
        let usual = model.predict_usual(rows);
        Self {
            in_flight,
            waited,
            expected: model.predict_tail(rows).min(usual * SLOW_AT_MOST_USUAL),
            usual,
        }
    }

    /// Whether the request waited longer than the model expects.
    pub fn late(&self) -> bool {
        self.waited > self.expected
    }
}

/// Why a read produced no response at all.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Not even one row or bucket fit in the budget. `waited_on` is the
    /// request in flight that waited most past (or least short of) what
    /// the model expects, if one was in flight; `began` how much of the
    /// budget had gone when the call's scan began (the call's wait for a
    /// worker, for the rest of its request, for a held scan's hand-over).
    #[error("no progress possible within the {budget:?} budget ({set_by:?}), the scan began after {began:?}{}", waited_on.map_or(String::new(), |w| format!("; waited on {w:?}")))]
    NoProgress {
        budget: Duration,
        set_by: BudgetSource,
        waited_on: Option<Waited>,
        began: Duration,
    },
    /// Storage failed before any progress.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The server began draining before any progress.
    #[error("server is shutting down")]
    ShuttingDown,
}

/// Receives the rows of a read, in order.
pub trait RowSink: Send {
    fn push(&mut self, row: Row);
    /// Called when the read ends, and by a streaming sink itself: a
    /// streaming sink sends what it holds.
    fn flush(&mut self) {}
    /// Called when the engine is about to wait on storage: a streaming sink
    /// sends what it holds but its last `keep` rows, which the call leaves
    /// to the next ([`RowSink::take_back`]) should its budget end during
    /// the wait, and which go with the next rows otherwise.
    fn flush_but(&mut self, keep: usize) {
        let _ = keep;
        self.flush();
    }
    /// Whether rows go to the client as they come (a stream): then the
    /// client reads them while the scan goes on, and of the rows sent only
    /// what it has not had time to read (at the response cost per byte,
    /// from the first row on) needs time of the budget (see
    /// `Scan::cost_reserve`).
    fn sends_as_it_goes(&self) -> bool {
        false
    }
    /// Whether the sink holds rows it could not hand on yet (a stream whose
    /// client is behind): the engine then reads no further until
    /// [`RowSink::drained`] completes or its budget ends, so a slow client
    /// bounds what a read buffers.
    fn backlogged(&self) -> bool {
        false
    }
    /// The time the client still needs for what the sink handed on that
    /// its transport has not sent, at the pace measured on this call (zero
    /// when not measured): the scan keeps at least this back from its
    /// budget, beside the response cost of what it pushed since (see
    /// `Scan::cost_reserve`), so a client slower than the replica's usual
    /// one still gets the rows and the end in time.
    fn unsent(&self) -> Duration {
        Duration::ZERO
    }
    /// Completes once the rows held back are handed on.
    fn drained(&mut self) -> impl std::future::Future<Output = ()> + Send {
        std::future::ready(())
    }
    /// Gives back the last `n` rows pushed, if they were not sent yet and
    /// at least one more row stays, with the key of the last row that
    /// stays. A sink that sends as it goes gives back only rows it has not
    /// sent (fewer than `n`, when rows sent before stay).
    fn take_back(&mut self, n: usize) -> Option<(Key, Vec<Row>)> {
        let _ = n;
        None
    }
}

impl RowSink for Vec<Row> {
    fn push(&mut self, row: Row) {
        Vec::push(self, row);
    }

    fn take_back(&mut self, n: usize) -> Option<(Key, Vec<Row>)> {
        if n == 0 || self.len() <= n {
            return None;
        }
        let back = self.split_off(self.len() - n);
        self.last().map(|r| (r.key.clone(), back))
    }
}

/// A call stopped by its budget leaves this share of its rows (at least
/// one) to the next call of a held scan ([`RowSink::take_back`]).
const LEFT_FOR_NEXT_SHARE: usize = 16;

/// The read engine over a store.
pub struct ReadEngine<S> {
    core: Arc<Core<S>>,
    continuations: Continuations<S>,
}

/// What every scan of an engine shares; scans own an `Arc` of it, so a
/// scan can outlive its call (held for a hot continuation).
pub(crate) struct Core<S> {
    pub(crate) storage: Arc<S>,
    pub(crate) config: EngineConfig,
    pub(crate) models: LatencyModels,
    /// Cancelled when the server drains: running reads end partial at once.
    pub(crate) drain: CancellationToken,
    /// Raised while reads are refused for load: fetching ahead pauses.
    pub(crate) pressure: Arc<Pressure>,
}

impl<S: Storage> ReadEngine<S> {
    ///
    /// # Panics
    /// If `config` fails [`EngineConfig::validate`] (the server validates
    /// it before it gets here).
    pub fn new(storage: Arc<S>, config: EngineConfig) -> Self {
        if let Err(e) = config.validate() {
            panic!("ReadEngine::new: {e}");
        }
        Self {
            continuations: Continuations::new(config.continuations.clone()),
            core: Arc::new(Core {
                storage,
                config,
                models: LatencyModels::default(),
                drain: CancellationToken::new(),
                pressure: Arc::new(Pressure::default()),
            }),
        }
    }

    /// Ends running and future reads early (partial, reason shutdown) once
    /// `drain` is cancelled, and drops held continuations.
    pub fn with_drain(mut self, drain: CancellationToken) -> Self {
        Arc::get_mut(&mut self.core)
            .expect("with_drain before any read")
            .drain = drain;
        self
    }

    /// The signal that pauses fetching ahead while reads are refused for
    /// load (see [`Pressure`]); admission raises it.
    pub fn pressure(&self) -> Arc<Pressure> {
        self.core.pressure.clone()
    }

    /// Whether the server has begun draining (see [`ReadEngine::with_drain`]).
    pub fn draining(&self) -> bool {
        self.core.drain.is_cancelled()
    }

    pub fn storage(&self) -> &Arc<S> {
        &self.core.storage
    }

    /// How long the smallest page storage is asked for is expected to take
    /// for a read of `namespace` (from its latency model).
    pub fn least_page_time(&self, namespace: &str) -> Duration {
        self.core
            .models
            .get(namespace)
            .predict(self.core.config.min_storage_page)
    }

    /// A namespace lookup for a read of `namespace` that waited `waited`
    /// and was given up, judged like a bucket-index query: against what
    /// the namespace's latency model expects of a slow smallest page.
    pub fn judge_lookup(&self, namespace: &str, waited: Duration) -> Waited {
        let model = self.core.models.get(namespace);
        Waited::judged(&model, self.core.config.min_storage_page, waited, 1)
    }

    /// Scans held for hot continuations now, and their estimated bytes.
    pub fn held(&self) -> (usize, usize) {
        self.continuations.held()
    }

    /// Runs one read, pushing rows into `sink`. A read presenting a
    /// position continues the scan held for it on this replica, if any
    /// (see [`ContinuationConfig`]); otherwise it resumes from the
    /// position alone. A read that stops partial is held in turn, and so
    /// is a read presenting a position that ends without a row (its retry
    /// presents the same position).
    pub async fn read(
        &self,
        req: &ReadRequest,
        sink: &mut impl RowSink,
    ) -> Result<ReadOutcome, ReadError> {
        let held = if self.core.drain.is_cancelled() {
            None
        } else {
            let until = req.budget.deadline;
            self.continuations.take(req, until).await
        };
        let mut scan = match held {
            Some(mut scan) => {
                scan.continue_with(req);
                scan
            }
            None => Scan::new(&self.core, req),
        };
        let mut lease = self.continuations.lease();
        let mut result = scan.run(sink, &mut lease).await;
        if let Ok(ending) = &mut result {
            let budget_ended = matches!(ending, Ending::Partial { reason, .. }
                if reason.holds_scan() && reason.is_budget());
            if budget_ended && self.continuations.holds() {
                let rows = scan.left_for_next();
                scan.leave_for_next(rows, sink, ending);
            }
        }
        sink.flush();
        let outcome = result.map(|ending| scan.outcome(ending));
        if let Ok(o) = &outcome {
            metrics::counter!(telemetry::ROWS_DELIVERED).increment(o.stats.rows_delivered);
            if !o.stats.budget.is_zero() {
                metrics::histogram!(telemetry::BUDGET_USED)
                    .record(o.stats.elapsed.as_secs_f64() / o.stats.budget.as_secs_f64());
            }
            if let Ending::Partial { reason, frontier } = &o.ending {
                metrics::counter!(telemetry::PARTIAL_RESPONSES, "reason" => reason.as_str())
                    .increment(1);
                if reason.holds_scan() && self.continuations.holds() {
                    self.continuations
                        .hold(scan, frontier, &self.core.drain, lease);
                    return outcome;
                }
            }
        }
        // A token read that ended without a row leaves the client holding
        // the same token: its scan is held at that position, so the retry
        // finds the pages this call asked for landed (or landing) instead
        // of asking again from the start.
        if let (Err(ReadError::NoProgress { .. }), Some(at)) = (&outcome, &req.resume_after) {
            if self.continuations.holds() {
                self.continuations.hold(scan, at, &self.core.drain, lease);
                return outcome;
            }
        }
        scan.learn_from_abandoned_pages();
        outcome
    }
}
