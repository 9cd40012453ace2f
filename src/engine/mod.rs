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
//!   has. A continuation token is exactly this frontier.
//! * All storage work of a read lives in futures owned by the read; dropping
//!   the read (client gone, deadline) drops them: no work outlives its request.
//! * Read-ahead fetches upcoming buckets and shards concurrently, bounded by
//!   [`EngineConfig::max_in_flight`]; fetched rows the response does not use
//!   are discarded, never skipped: the frontier only moves over emitted rows.

pub mod budget;
pub mod merge;
pub mod predict;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rand::Rng;
use tokio::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::model::{bucket_start, Key, Namespace, Order, Row, Span};
use crate::storage::{BucketQuery, ShardQuery, Storage, StorageError};
use crate::telemetry;
use budget::{Budget, BudgetSource};
use merge::{pick, Pick};
use predict::{LatencyModel, LatencyModels};

/// A page skips slow start when it is expected to take at most 1/N of the
/// time left.
const SLOW_START_HEADROOM: u32 = 8;

/// Tunables of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Largest storage page, in rows.
    pub max_storage_page: usize,
    /// Smallest storage page, in rows.
    pub min_storage_page: usize,
    /// First page of each shard, in rows; later pages double up to the
    /// maximum, so the first rows arrive quickly (slow start).
    pub initial_storage_page: usize,
    /// Buckets fetched ahead of the one being merged.
    pub readahead_buckets: usize,
    /// Storage requests in flight per read.
    pub max_in_flight: usize,
    /// Buckets per bucket-index query.
    pub index_page: usize,
    /// First retry backoff cap; doubles per attempt (full jitter).
    pub retry_base: Duration,
    /// Largest retry backoff.
    pub retry_cap: Duration,
    /// Time kept back from the budget for the response itself (building,
    /// encoding and sending it): the scan stops this much before the
    /// deadline, plus [`EngineConfig::response_reserve_per_row`] per row.
    pub response_reserve: Duration,
    /// Additional reserve per row gathered.
    pub response_reserve_per_row: Duration,
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
            response_reserve_per_row: Duration::from_micros(4),
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
    pub order: Order,
    /// Most rows to emit (>= 1).
    pub row_limit: usize,
    /// Most row bytes to emit; one larger row is still emitted alone.
    pub byte_limit: usize,
    pub budget: Budget,
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

/// Work done by one read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    pub rows_scanned: u64,
    pub rows_delivered: u64,
    pub storage_pages: u64,
    pub index_pages: u64,
    pub buckets_visited: u64,
    pub retries: u64,
    pub elapsed: Duration,
    pub budget: Duration,
}

/// A finished read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadOutcome {
    pub ending: Ending,
    /// See `ReadEventsResponse.watermark_micros` in the proto.
    pub watermark: i64,
    pub stats: ReadStats,
}

/// Why a read produced no response at all.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Not even one row or bucket fit in the budget.
    #[error("no progress possible within the {budget:?} budget ({set_by:?})")]
    NoProgress {
        budget: Duration,
        set_by: BudgetSource,
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
    /// Called when the engine is about to wait on storage: a streaming sink
    /// sends what it holds.
    fn flush(&mut self) {}
}

impl RowSink for Vec<Row> {
    fn push(&mut self, row: Row) {
        Vec::push(self, row);
    }
}

/// The read engine over a store.
pub struct ReadEngine<S> {
    storage: Arc<S>,
    config: EngineConfig,
    models: LatencyModels,
    /// Cancelled when the server drains: running reads end partial at once.
    drain: CancellationToken,
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
            storage,
            config,
            models: LatencyModels::default(),
            drain: CancellationToken::new(),
        }
    }

    /// Ends running and future reads early (partial, reason shutdown) once
    /// `drain` is cancelled.
    pub fn with_drain(mut self, drain: CancellationToken) -> Self {
        self.drain = drain;
        self
    }

    pub fn storage(&self) -> &Arc<S> {
        &self.storage
    }

    /// Runs one read, pushing rows into `sink`.
    pub async fn read(
        &self,
        req: &ReadRequest,
        sink: &mut impl RowSink,
    ) -> Result<ReadOutcome, ReadError> {
        let _in_flight = telemetry::ScanInFlight::enter();
        let mut scan = Scan::new(self, req);
        let result = scan.run(sink).await;
        sink.flush();
        let outcome = result.map(|ending| scan.outcome(ending));
        if let Ok(o) = &outcome {
            metrics::counter!(telemetry::ROWS_SCANNED).increment(o.stats.rows_scanned);
            metrics::counter!(telemetry::ROWS_DELIVERED).increment(o.stats.rows_delivered);
            if !o.stats.budget.is_zero() {
                metrics::histogram!(telemetry::BUDGET_USED)
                    .record(o.stats.elapsed.as_secs_f64() / o.stats.budget.as_secs_f64());
            }
            if let Ending::Partial { reason, .. } = &o.ending {
                metrics::counter!(telemetry::PARTIAL_RESPONSES, "reason" => reason.as_str())
                    .increment(1);
            }
        }
        outcome
    }
}

struct ShardCursor {
    shard: u32,
    /// What this shard has not yet fetched.
    span: Span,
    buf: VecDeque<Row>,
    done: bool,
    /// Rows asked of the fetch in flight; 0 when none.
    requested: usize,
    /// Pages fetched so far (for slow start).
    pages: u32,
    /// When the fetch in flight was sent.
    sent: Option<Instant>,
}

struct BucketCursor {
    bucket: i64,
    shards: Vec<ShardCursor>,
    touched: bool,
}

enum FetchKind {
    Index,
    Shard {
        bucket: i64,
        shard: u32,
        requested: usize,
    },
}

struct Fetched {
    kind: FetchKind,
    attempt: u32,
    started: Instant,
    result: Result<FetchData, StorageError>,
}

enum FetchData {
    Buckets(Vec<i64>),
    Rows(Vec<Row>),
}

struct Scan<'a, S> {
    engine: &'a ReadEngine<S>,
    req: &'a ReadRequest,
    span: Span,
    start_frontier: Key,
    frontier: Key,
    buckets: VecDeque<BucketCursor>,
    /// Bucket range still to list from the index; None when listed.
    index_todo: Option<(i64, i64)>,
    index_pending: bool,
    in_flight: FuturesUnordered<BoxFuture<'a, Fetched>>,
    model: LatencyModel,
    rows_out: usize,
    bytes_out: usize,
    stats: ReadStats,
    /// The latest storage error, if a request failed (and was retried).
    last_error: Option<StorageError>,
}

impl<'a, S: Storage> Scan<'a, S> {
    fn new(engine: &'a ReadEngine<S>, req: &'a ReadRequest) -> Self {
        let range = Span::of_range(req.start, req.end);
        let span = match &req.resume_after {
            Some(k) => range.resume_from(k, req.order),
            None => range,
        };
        let start_frontier = match req.order {
            Order::Ascending => span.after.clone(),
            Order::Descending => span.before.clone(),
        };
        let mut scan = Self {
            engine,
            index_todo: span.buckets(req.namespace.bucket_width_micros),
            span,
            frontier: start_frontier.clone(),
            start_frontier,
            req,
            buckets: VecDeque::new(),
            index_pending: false,
            in_flight: FuturesUnordered::new(),
            model: engine.models.get(&req.namespace.name),
            rows_out: 0,
            bytes_out: 0,
            stats: ReadStats {
                budget: req.budget.total,
                ..ReadStats::default()
            },
            last_error: None,
        };
        // Resuming after a row: its bucket surely holds rows, so its shards
        // are fetched at once, beside (not after) the bucket-index query.
        if let (Some(k), Some((first, last))) = (&req.resume_after, scan.index_todo) {
            if !k.id.is_empty() {
                let b = req.namespace.bucket_of(k.time);
                let rest = match req.order {
                    Order::Ascending if b == first => {
                        Some((first < last).then(|| (first + 1, last)))
                    }
                    Order::Descending if b == last => {
                        Some((first < last).then(|| (first, last - 1)))
                    }
                    _ => None,
                };
                if let Some(rest) = rest {
                    scan.index_todo = rest;
                    let cursor = scan.bucket_cursor(b);
                    scan.buckets.push_back(cursor);
                }
            }
        }
        scan
    }

    fn bucket_cursor(&self, bucket: i64) -> BucketCursor {
        BucketCursor {
            bucket,
            touched: false,
            shards: (0..self.req.namespace.shards)
                .map(|shard| ShardCursor {
                    shard,
                    span: self.span.clone(),
                    buf: VecDeque::new(),
                    done: false,
                    requested: 0,
                    pages: 0,
                    sent: None,
                })
                .collect(),
        }
    }

    fn outcome(mut self, ending: Ending) -> ReadOutcome {
        self.stats.rows_delivered = self.rows_out as u64;
        self.stats.elapsed = self.req.budget.elapsed();
        let watermark = match (&ending, self.req.order) {
            (Ending::Complete, Order::Ascending) => self.req.end,
            (Ending::Complete, Order::Descending) => self.req.start,
            (Ending::Partial { frontier, .. }, Order::Ascending) => frontier.time,
            (Ending::Partial { frontier, .. }, Order::Descending) => {
                if frontier.id.is_empty() {
                    frontier.time
                } else {
                    frontier.time.saturating_add(1)
                }
            }
        };
        ReadOutcome {
            ending,
            watermark,
            stats: self.stats,
        }
    }

    /// When the scan must stop for the response to land within the budget.
    fn stop_at(&self) -> Instant {
        let cfg = &self.engine.config;
        let per_row = cfg
            .response_reserve_per_row
            .saturating_mul(u32::try_from(self.rows_out).unwrap_or(u32::MAX));
        let reserve = (cfg.response_reserve + per_row).min(self.req.budget.total / 2);
        self.req.budget.deadline - reserve
    }

    /// Scan time left.
    fn remaining(&self) -> Duration {
        self.stop_at().saturating_duration_since(Instant::now())
    }

    fn progressed(&self) -> bool {
        self.frontier != self.start_frontier
    }

    /// Ends the read short of the range: partial with the frontier, or an
    /// error when nothing at all was achieved.
    fn stop(
        &self,
        reason: PartialReason,
        cause: Option<StorageError>,
    ) -> Result<Ending, ReadError> {
        if self.progressed() {
            return Ok(Ending::Partial {
                reason,
                frontier: self.frontier.clone(),
            });
        }
        Err(match cause {
            Some(e) => ReadError::Storage(e),
            None => ReadError::NoProgress {
                budget: self.req.budget.total,
                set_by: self.req.budget.source,
            },
        })
    }

    /// Pages still in flight at the deadline took at least this long: teach
    /// the model, or it would keep sizing pages that never land (it only
    /// ever sees the pages that do).
    fn learn_from_abandoned_pages(&self) {
        let now = Instant::now();
        for s in self.buckets.iter().flat_map(|b| &b.shards) {
            if let (true, Some(sent)) = (s.requested > 0, s.sent) {
                if now > sent {
                    self.engine
                        .models
                        .observe(&self.req.namespace.name, s.requested, now - sent);
                }
            }
        }
    }

    /// Ends the read because the server drains.
    fn stop_for_shutdown(&self) -> Result<Ending, ReadError> {
        self.stop(PartialReason::Shutdown, None)
            .map_err(|e| match e {
                ReadError::NoProgress { .. } => ReadError::ShuttingDown,
                other => other,
            })
    }

    /// Ends the read at its deadline. Without progress, a storage error seen
    /// on the way is the better answer than "deadline exceeded": it says why.
    fn stop_for_budget(&self) -> Result<Ending, ReadError> {
        self.learn_from_abandoned_pages();
        self.stop(self.req.budget.source.into(), self.last_error.clone())
    }

    async fn run(&mut self, sink: &mut impl RowSink) -> Result<Ending, ReadError> {
        loop {
            if let Some(limit) = self.emit(sink) {
                return self.stop(limit, None);
            }
            if self.buckets.is_empty() && self.index_todo.is_none() && !self.index_pending {
                return Ok(Ending::Complete);
            }
            if self.remaining().is_zero() {
                return self.stop_for_budget();
            }
            if !self.schedule() {
                // The next page cannot land in time: answer now with what we have.
                return self.stop_for_budget();
            }
            debug_assert!(!self.in_flight.is_empty(), "waiting on nothing");
            sink.flush();
            let fetched = tokio::select! {
                biased;
                _ = tokio::time::sleep_until(self.stop_at()) => return self.stop_for_budget(),
                _ = self.engine.drain.cancelled() => return self.stop_for_shutdown(),
                f = self.in_flight.next() => match f {
                    Some(f) => f,
                    None => return Ok(Ending::Complete),
                },
            };
            if let Some(end) = self.absorb(fetched) {
                return end;
            }
        }
    }

    /// Emits rows while the head bucket can be merged. Returns the limit
    /// that stopped it, if one did (the next row is then known to exist).
    fn emit(&mut self, sink: &mut impl RowSink) -> Option<PartialReason> {
        let order = self.req.order;
        let width = self.req.namespace.bucket_width_micros;
        while let Some(head) = self.buckets.front_mut() {
            match pick(&head.shards, |s| (&s.buf, s.done), order) {
                Pick::NeedData => return None,
                Pick::Exhausted => {
                    let b = head.bucket;
                    self.buckets.pop_front();
                    let boundary = match order {
                        Order::Ascending => Key::boundary(bucket_start(b.saturating_add(1), width))
                            .min(self.span.before.clone()),
                        Order::Descending => {
                            Key::boundary(bucket_start(b, width)).max(self.span.after.clone())
                        }
                    };
                    let forward = match order {
                        Order::Ascending => boundary > self.frontier,
                        Order::Descending => boundary < self.frontier,
                    };
                    if forward {
                        self.frontier = boundary;
                    }
                }
                Pick::Row(i) => {
                    let weight = head.shards[i].buf.front().map_or(0, Row::weight);
                    if self.rows_out >= self.req.row_limit {
                        return Some(PartialReason::RowLimit);
                    }
                    if self.rows_out > 0 && self.bytes_out + weight > self.req.byte_limit {
                        return Some(PartialReason::ByteLimit);
                    }
                    let row = head.shards[i]
                        .buf
                        .pop_front()
                        .expect("picked a non-empty shard");
                    self.frontier = row.key.clone();
                    self.rows_out += 1;
                    self.bytes_out += weight;
                    sink.push(row);
                }
            }
        }
        None
    }

    /// Starts the fetches the merge needs next, plus bounded read-ahead.
    /// Returns false when the head bucket needs a page that cannot land
    /// before the deadline and the read already has progress to return.
    fn schedule(&mut self) -> bool {
        let cfg = &self.engine.config;
        let remaining = self.remaining();
        // Rows still wanted (no more than the time left can deliver), plus
        // one to learn whether more remain. Read-ahead beyond it would be
        // fetched only to be discarded.
        let affordable = self.model.affordable_rows(remaining);
        let need = self
            .req
            .row_limit
            .saturating_sub(self.rows_out)
            .min(affordable)
            + 1;
        if self.index_todo.is_some()
            && !self.index_pending
            && self.buckets.len() <= cfg.readahead_buckets
        {
            self.launch_index(0, Duration::ZERO);
        }
        let pace = self.model.affordable_rows(remaining / 2);
        let mut covered = 0usize;
        let mut probe_only = false;
        for i in 0..self.buckets.len().min(cfg.readahead_buckets + 1) {
            let want = if i == 0 {
                need
            } else {
                need.saturating_sub(covered)
            };
            if want == 0 {
                break;
            }
            let bucket = &self.buckets[i];
            let shards = bucket.shards.len();
            let mut page = want
                .div_ceil(shards)
                .clamp(cfg.min_storage_page, cfg.max_storage_page);
            // A page should land with time to spare for merging what the
            // other shards return: rows that arrive too late are discarded.
            page = page.min(pace.max(cfg.min_storage_page));
            if i > 0 && probe_only {
                // Earlier buckets may hold all the rows this response can
                // take: only probe this one, so little is fetched in vain.
                page = cfg.min_storage_page;
            }
            let blocking = i == 0
                && bucket
                    .shards
                    .iter()
                    .any(|s| s.buf.is_empty() && !s.done && s.requested == 0);
            if blocking
                && affordable < cfg.min_storage_page
                && self.progressed()
                && !self.head_in_flight()
            {
                return false;
            }
            for j in 0..shards {
                let s = &self.buckets[i].shards[j];
                let idle = s.buf.is_empty() && !s.done && s.requested == 0;
                if idle && (i == 0 || self.in_flight.len() < cfg.max_in_flight) {
                    self.launch_shard(i, j, page, 0, Duration::ZERO);
                }
            }
            for s in &self.buckets[i].shards {
                // A shard that returned a full page has more rows than we
                // know of: read-ahead past it would be premature.
                let known_more = !s.done && (s.pages >= 2 || (s.pages == 1 && s.requested == 0));
                covered = if known_more {
                    usize::MAX
                } else {
                    covered.saturating_add(s.buf.len() + s.requested)
                };
                probe_only |= !s.done;
            }
        }
        true
    }

    fn head_in_flight(&self) -> bool {
        self.buckets
            .front()
            .is_some_and(|b| b.shards.iter().any(|s| s.requested > 0))
    }

    fn launch_index(&mut self, attempt: u32, delay: Duration) {
        let Some((first, last)) = self.index_todo else {
            return;
        };
        self.index_pending = true;
        self.stats.index_pages += 1;
        let q = BucketQuery {
            namespace: self.req.namespace.clone(),
            series_id: self.req.series_id.clone(),
            first,
            last,
            order: self.req.order,
            limit: self.engine.config.index_page,
            timeout: self.remaining().saturating_sub(delay),
        };
        let storage = &*self.engine.storage;
        self.in_flight.push(
            async move {
                tokio::time::sleep(delay).await;
                let started = Instant::now();
                let result = storage.list_buckets(q).await.map(FetchData::Buckets);
                Fetched {
                    kind: FetchKind::Index,
                    attempt,
                    started,
                    result,
                }
            }
            .instrument(tracing::debug_span!("bucket_index", first, last, attempt))
            .boxed(),
        );
    }

    fn launch_shard(
        &mut self,
        bucket_idx: usize,
        shard_idx: usize,
        page: usize,
        attempt: u32,
        delay: Duration,
    ) {
        let timeout = self.remaining().saturating_sub(delay);
        let bucket = &mut self.buckets[bucket_idx];
        if !bucket.touched {
            bucket.touched = true;
            self.stats.buckets_visited += 1;
        }
        let b = bucket.bucket;
        let cursor = &mut bucket.shards[shard_idx];
        // Slow start only where the budget is tight: when even the full page
        // is expected to take a small share of the time left, ask for it.
        let roomy = self.model.predict(page).saturating_mul(SLOW_START_HEADROOM) <= timeout;
        let page = if roomy {
            page
        } else {
            let ramp = self
                .engine
                .config
                .initial_storage_page
                .saturating_mul(1 << cursor.pages.min(20));
            page.min(ramp.max(1))
        };
        cursor.pages += 1;
        cursor.requested = page;
        cursor.sent = Some(Instant::now() + delay);
        self.stats.storage_pages += 1;
        let q = ShardQuery {
            namespace: self.req.namespace.clone(),
            series_id: self.req.series_id.clone(),
            bucket: b,
            shard: cursor.shard,
            span: cursor.span.clone(),
            order: self.req.order,
            limit: page,
            timeout,
        };
        let storage = &*self.engine.storage;
        let shard = cursor.shard;
        self.in_flight.push(
            async move {
                tokio::time::sleep(delay).await;
                let started = Instant::now();
                let result = storage.read_shard(q).await.map(FetchData::Rows);
                Fetched {
                    kind: FetchKind::Shard {
                        bucket: b,
                        shard,
                        requested: page,
                    },
                    attempt,
                    started,
                    result,
                }
            }
            .instrument(tracing::debug_span!(
                "storage_page",
                bucket = b,
                shard,
                limit = page,
                attempt
            ))
            .boxed(),
        );
    }

    /// Full-jitter exponential backoff for retry number `attempt` (0: none).
    fn backoff(&self, attempt: u32) -> Duration {
        if attempt == 0 {
            return Duration::ZERO;
        }
        let cfg = &self.engine.config;
        let cap = cfg
            .retry_base
            .saturating_mul(1 << (attempt - 1).min(16))
            .min(cfg.retry_cap);
        rand::rng().random_range(Duration::ZERO..=cap)
    }

    /// Takes in a finished fetch; Some when the read must end.
    fn absorb(&mut self, f: Fetched) -> Option<Result<Ending, ReadError>> {
        let took = f.started.elapsed();
        match (f.kind, f.result) {
            (FetchKind::Index, Ok(FetchData::Buckets(found))) => {
                self.index_pending = false;
                let (first, last) = self.index_todo.expect("index range while pending");
                let limit = self.engine.config.index_page;
                self.index_todo = match (found.last(), self.req.order) {
                    _ if found.len() < limit => None,
                    (None, _) => None,
                    (Some(&b), Order::Ascending) => (b < last).then(|| (b + 1, last)),
                    (Some(&b), Order::Descending) => (b > first).then(|| (first, b - 1)),
                };
                for bucket in found {
                    let cursor = self.bucket_cursor(bucket);
                    self.buckets.push_back(cursor);
                }
                None
            }
            (
                FetchKind::Shard {
                    bucket,
                    shard,
                    requested,
                },
                Ok(FetchData::Rows(rows)),
            ) => {
                self.engine
                    .models
                    .observe(&self.req.namespace.name, rows.len(), took);
                metrics::histogram!(telemetry::STORAGE_PAGE_SECONDS).record(took.as_secs_f64());
                self.model.observe(rows.len(), took);
                self.stats.rows_scanned += rows.len() as u64;
                let order = self.req.order;
                let cursor = self.shard_mut(bucket, shard);
                cursor.requested = 0;
                cursor.done = rows.len() < requested;
                if let Some(last) = rows.last() {
                    cursor.span = cursor.span.resume_from(&last.key, order);
                }
                cursor.buf.extend(rows);
                None
            }
            (kind, Err(err)) => self.retry_or_stop(kind, f.attempt, err),
            (_, Ok(_)) => unreachable!("fetch kinds and data always match"),
        }
    }

    fn shard_mut(&mut self, bucket: i64, shard: u32) -> &mut ShardCursor {
        let b = self
            .buckets
            .iter_mut()
            .find(|b| b.bucket == bucket)
            .expect("a fetched bucket stays queued until merged");
        &mut b.shards[shard as usize]
    }

    /// After a failed fetch: retry with backoff if the error is transient and
    /// the retry can still land in the budget; otherwise end the read.
    fn retry_or_stop(
        &mut self,
        kind: FetchKind,
        attempt: u32,
        err: StorageError,
    ) -> Option<Result<Ending, ReadError>> {
        if self.remaining().is_zero() {
            // Storage requests time out when the budget does: this is the
            // budget ending, not storage failing.
            return Some(self.stop_for_budget());
        }
        let next = attempt + 1;
        let delay = self.backoff(next);
        let page = match &kind {
            FetchKind::Index => self.engine.config.index_page,
            FetchKind::Shard { requested, .. } => *requested,
        };
        let fits = delay + self.model.predict(page) < self.remaining();
        if !(err.is_transient() && fits) {
            tracing::warn!(cause = %err, attempt, "storage request failed; ending read");
            return Some(self.stop(PartialReason::StorageError, Some(err)));
        }
        self.stats.retries += 1;
        metrics::counter!(telemetry::STORAGE_RETRIES).increment(1);
        self.last_error = Some(err.clone());
        tracing::debug!(cause = %err, attempt = next, ?delay, "retrying storage request");
        match kind {
            FetchKind::Index => self.launch_index(next, delay),
            FetchKind::Shard {
                bucket,
                shard,
                requested,
            } => {
                let i = self
                    .buckets
                    .iter()
                    .position(|b| b.bucket == bucket)
                    .expect("a fetched bucket stays queued until merged");
                self.launch_shard(i, shard as usize, requested, next, delay);
            }
        }
        None
    }
}
