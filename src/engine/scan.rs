//! The scan of one read: the state machine that merges the head bucket's
//! shards into the sink, schedules fetches ([`super::fetch`]) with pages
//! sized by [`super::pages`], and stops on a limit, the budget or a drain.
//! Positions (frontier, watermark, bucket exits) mean what
//! [`super::position`] says.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::time::Instant;

use super::continuations::Lease;
use super::fetch::{Fetched, Resend};
use super::merge::{pick, Head, Pick};
use super::predict::LatencyModel;
use super::{pages, position};
use super::{
    Core, Ending, PartialReason, ReadError, ReadOutcome, ReadRequest, ReadStats, RowSink, Waited,
};
use crate::model::{bucket_start, Key, Order, Row, ShardStart, Span};
use crate::storage::{Storage, StorageError};
use crate::telemetry;

/// A new read under at most this budget fetches its first bucket beside
/// the bucket-index query, whatever the latency model says: a model fitted
/// on large pages predicts small ones too fast, and a 5 ms read that waited
/// 2 ms for the index first had no time left for its pages.
const HEAD_BESIDE_INDEX_BUDGET: Duration = Duration::from_millis(20);

/// The fixed part of the response reserve is at most this share of the
/// budget: under a 5 ms SLO a 2 ms floor would leave too little for the
/// first round trip to storage.
const RESERVE_FLOOR_SHARE: u32 = 8;

/// A probe beside a late page asks for this share of the page's rows.
const PROBE_SHARE: usize = 4;
/// A page (or probe) is late once it took this many times what its
/// bucket's pages take (see [`Scan::probe_stragglers`]).
const PROBE_LATE_FACTOR: u32 = 2;
/// Probes sent beside one page in one call at most (a probe late in turn
/// gets one).
const MAX_PROBES: u8 = 3;

/// Rows emitted between two readings of the clock: emitting rows in hand
/// stops when the response they make needs the rest of the budget.
const EMIT_CLOCK_EVERY: usize = 32;

/// The limit a call that emitted `rows_out` rows of `bytes_out` bytes
/// reaches before a next row of `weight` bytes: its row limit, or its byte
/// limit (a first row goes whatever its size).
fn limit_before(
    rows_out: usize,
    bytes_out: usize,
    weight: usize,
    req: &ReadRequest,
) -> Option<PartialReason> {
    if rows_out >= req.row_limit {
        Some(PartialReason::RowLimit)
    } else if rows_out > 0 && bytes_out + weight > req.byte_limit {
        Some(PartialReason::ByteLimit)
    } else {
        None
    }
}

pub(super) struct ShardCursor {
    pub(super) shard: u32,
    /// What this shard has not yet fetched.
    pub(super) span: Span,
    pub(super) buf: VecDeque<Row>,
    pub(super) done: bool,
    /// Rows asked of the fetch in flight; 0 when none.
    pub(super) requested: usize,
    /// Pages fetched so far (for slow start).
    pub(super) pages: u32,
    /// When the fetch in flight was sent.
    pub(super) sent: Option<Instant>,
    /// Probes sent beside the page in flight in this call (see
    /// [`Scan::probe_stragglers`]).
    pub(super) probes: u8,
    /// When the newest probe in flight is late in turn; None when another
    /// may go at once.
    pub(super) probe_late_at: Option<Instant>,
    /// How long its last page took to land, from when it was sent.
    pub(super) took: Option<Duration>,
    /// Rows this scan's pages (and probes) gave this shard.
    pub(super) fetched: usize,
}

impl ShardCursor {
    /// The bucket index does not name this shard as holding rows: it was
    /// done before any page was asked of it.
    fn unlisted(&self) -> bool {
        self.done && self.pages == 0
    }
    /// Nothing buffered, nothing in flight, rows may remain: a page is due.
    fn idle(&self) -> bool {
        self.buf.is_empty() && self.low(1)
    }

    /// Nothing in flight, rows may remain, and fewer than `page` buffered:
    /// its next page should be on its way before the merge drains it, or the
    /// merge waits on one shard's round trip after another.
    fn low(&self, page: usize) -> bool {
        !self.done && self.requested == 0 && self.buf.len() < page
    }

    /// This shard as the merge sees it.
    fn head(&self, order: Order) -> Head<'_> {
        Head {
            buf: &self.buf,
            done: self.done,
            fetched_to: self.fetched_to(order),
        }
    }

    /// The position this shard's rows not yet fetched lie strictly beyond,
    /// in read order.
    fn fetched_to(&self, order: Order) -> &Key {
        match order {
            Order::Ascending => &self.span.after,
            Order::Descending => &self.span.before,
        }
    }

    /// Where this shard of bucket `bucket` (of `width`) is known to hold
    /// no row up to, beyond `frontier`, for a token
    /// ([`ShardStart`]): its first buffered row's time, or if none is
    /// buffered how far it was fetched, or once done the bucket's end.
    /// None when that is not beyond the frontier.
    fn start(&self, bucket: i64, width: i64, frontier: &Key, order: Order) -> Option<ShardStart> {
        if let Some(head) = self.buf.front() {
            return Self::start_at(head, self.shard, frontier, order);
        }
        let time = match order {
            Order::Ascending if self.done => bucket_start(bucket.saturating_add(1), width),
            Order::Descending if self.done => bucket_start(bucket, width),
            _ => position::boundary_behind(self.fetched_to(order), order),
        };
        position::is_beyond(&Key::boundary(time), frontier, order).then_some(ShardStart {
            shard: self.shard,
            time,
        })
    }

    /// The start of shard `shard` whose next row is `next`: the boundary
    /// before it in read order, if beyond `frontier`.
    fn start_at(next: &Row, shard: u32, frontier: &Key, order: Order) -> Option<ShardStart> {
        let time = position::boundary_behind(&next.key, order);
        position::is_beyond(&Key::boundary(time), frontier, order)
            .then_some(ShardStart { shard, time })
    }
}

impl BucketCursor {
    /// Shards that may hold rows: those the index names, or all of them (at
    /// least one). Pages are sized for these.
    pub(super) fn listed(&self) -> usize {
        self.shards.iter().filter(|s| !s.unlisted()).count().max(1)
    }
}

/// Rows a shard with a page in flight is expected to hold still, once a
/// sibling shard of its bucket reached the bucket's end after `sibling`
/// rows: the bucket ends at one instant for all its shards and events
/// spread evenly over them, so the shard ends near the same count. The
/// estimate is generous (an eighth more, plus `min_page` rows), so the
/// buckets after it are rarely asked for rows the response has no room
/// for.
fn expected_rest(sibling: usize, fetched: usize, min_page: usize) -> usize {
    (sibling + sibling / 8 + min_page).saturating_sub(fetched)
}

/// The bucket a read of buckets `(first, last)` in `order` begins with.
fn first_bucket((first, last): (i64, i64), order: Order) -> i64 {
    match order {
        Order::Ascending => first,
        Order::Descending => last,
    }
}

/// The bucket and shard a merged row came from.
pub(super) type Origin = (i64, u32);

pub(super) struct BucketCursor {
    pub(super) bucket: i64,
    pub(super) shards: Vec<ShardCursor>,
    pub(super) touched: bool,
}

/// The state of one read. It owns what it uses (the request, an `Arc` of
/// the engine's core, its fetches in flight), so it can outlive its call:
/// a scan that stops partial may be held for the next call
/// ([`super::continuations`]).
pub(super) struct Scan<S> {
    pub(super) engine: Arc<Core<S>>,
    pub(super) req: ReadRequest,
    pub(super) span: Span,
    pub(super) start_frontier: Key,
    pub(super) frontier: Key,
    pub(super) buckets: VecDeque<BucketCursor>,
    /// Bucket range still to list from the index; None when listed.
    pub(super) index_todo: Option<(i64, i64)>,
    pub(super) index_pending: bool,
    /// When the pending index query was sent (after any backoff).
    pub(super) index_sent: Option<Instant>,
    /// Probes sent beside the pending index query (see
    /// [`Scan::probe_late_index`]).
    pub(super) index_probes: u8,
    /// When the newest index probe in flight is late in turn.
    pub(super) index_probe_late_at: Option<Instant>,
    pub(super) in_flight: FuturesUnordered<BoxFuture<'static, Fetched>>,
    pub(super) model: LatencyModel,
    pub(super) rows_out: usize,
    pub(super) bytes_out: usize,
    pub(super) stats: ReadStats,
    /// The latest storage error, if a request failed (and was retried).
    pub(super) last_error: Option<StorageError>,
    /// Merged rows a call stopped by its budget left for the next call
    /// (see [`Scan::leave_for_next`]): they come before every buffered
    /// shard row, so the next call emits them before the merge runs.
    pub(super) carry: VecDeque<(Row, Origin)>,
    /// Where each row this call emitted came from, in order, while scans
    /// are held (rows left for the next call keep it, so its token can say
    /// where their shards start); empty otherwise.
    emitted: VecDeque<Origin>,
    /// Mean bytes of the rows of the last page that landed (before any,
    /// the namespace's last, or 0).
    pub(super) row_bytes: usize,
    /// For a call whose sink sends as it goes (a stream), once it has a
    /// row: how far behind its client is taken to be (see
    /// [`StreamClock`]); None for a response built at the end.
    pub(super) stream: Option<StreamClock>,
    /// How much of the call's budget had gone when its scan began (see
    /// [`ReadError::NoProgress`]).
    began: Duration,
    /// The bucket a resumed read begins in and its token's shard starts
    /// ([`ShardStart`]), applied when that bucket's cursor is made.
    starts: Option<(i64, Vec<ShardStart>)>,
    /// The bucket a resumed read was queued in straight from its token
    /// (resuming after a row of it), until its first call ends: while it is
    /// set the bucket-index query may wait (see [`Scan::index_can_wait`]),
    /// and whether that call reached the bucket's end teaches the
    /// namespace's model ([`LatencyModel::resumed_calls_stay`]).
    resumed_in: Option<i64>,
    /// Whether this scan was last moved forward to its call's token
    /// ([`Scan::skip_to`]): its client's calls alternate over replicas, so
    /// the rows past its frontier are the other replica's to read. It then
    /// fetches nothing ahead and leaves its next call no rows (see
    /// [`Scan::reads_ahead`]).
    pub(super) alternating: bool,
}

/// How far a stream's client is behind, as a queue it works off at the
/// response cost per byte ([`Scan::cost_reserve`]): at `mark` it had
/// `backlog` of rows sent still to read, and the rows sent since, past the
/// first `rows` and `bytes` of the call, all come on top. Rows counted as
/// sent at the last mark rather than when they went can only make the
/// backlog larger than it is, never smaller; the scan marks it every
/// [`EMIT_CLOCK_EVERY`] rows and before it waits on storage. At a mark the
/// backlog is at least what the sink measured its client still needs
/// ([`RowSink::unsent`]): a client slower than the response cost says.
#[derive(Clone, Copy, Debug)]
pub(super) struct StreamClock {
    mark: Instant,
    backlog: Duration,
    rows: usize,
    bytes: usize,
}

impl<S: Storage> Scan<S> {
    pub(super) fn new(engine: &Arc<Core<S>>, req: &ReadRequest) -> Self {
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
            engine: engine.clone(),
            index_todo: span.buckets(req.namespace.bucket_width_micros),
            span,
            frontier: start_frontier.clone(),
            start_frontier,
            req: req.clone(),
            buckets: VecDeque::new(),
            index_pending: false,
            index_sent: None,
            index_probes: 0,
            index_probe_late_at: None,
            in_flight: FuturesUnordered::new(),
            model: engine.models.get(&req.namespace.name),
            rows_out: 0,
            bytes_out: 0,
            stats: ReadStats {
                budget: req.budget.total,
                ..ReadStats::default()
            },
            last_error: None,
            carry: VecDeque::new(),
            emitted: VecDeque::new(),
            row_bytes: 0,
            stream: None,
            began: req.budget.elapsed(),
            starts: None,
            resumed_in: None,
            alternating: false,
        };
        scan.row_bytes = scan.model.row_bytes();
        // The first bucket's shards are fetched at once, beside (not after)
        // the bucket-index query, when it surely holds rows (resuming after
        // a row of it) or when the budget is too tight for two round trips
        // in a row (at most HEAD_BESIDE_INDEX_BUDGET, or too tight for slow
        // start) (a gamble: if the bucket is empty, its shards answer
        // nothing and the index lists the rest). Not in a namespace whose
        // index names the shards holding rows when it has more shards than
        // a read sends pages at once (`max_in_flight`): asking all of them
        // costs more than the round trip the index takes (a sparse series
        // of 256 shards sent 256 queries a call, and its calls under a 20
        // ms SLO failed for want of a single row).
        let ask_all_costs = req.namespace.indexes_shards
            && usize::try_from(req.namespace.shards).unwrap_or(usize::MAX)
                > engine.config.max_in_flight;
        let head = scan
            .index_todo
            .map(|buckets| first_bucket(buckets, req.order));
        if let (Some(head), Some(_), false) = (head, &req.resume_after, req.shard_starts.is_empty())
        {
            scan.starts = Some((head, req.shard_starts.clone()));
        }
        if let (Some((first, last)), Some(head), false) = (scan.index_todo, head, ask_all_costs) {
            let certain = req
                .resume_after
                .as_ref()
                .is_some_and(|k| !k.id.is_empty() && req.namespace.bucket_of(k.time) == head);
            let tight = req.budget.total <= HEAD_BESIDE_INDEX_BUDGET
                || !pages::ample(&scan.model, req.budget.total);
            if certain || tight {
                scan.index_todo = match req.order {
                    Order::Ascending => (first < last).then(|| (first + 1, last)),
                    Order::Descending => (first < last).then(|| (first, last - 1)),
                };
                let cursor = scan.bucket_cursor(head, None);
                scan.buckets.push_back(cursor);
                // Only a read with buckets after this one has an index
                // query to leave.
                scan.resumed_in = (certain && scan.index_todo.is_some()).then_some(head);
            }
        }
        scan
    }

    /// The cursor of `bucket`, whose rows are in `shards` where the index
    /// names them (None: any shard may hold rows). A shard it does not name
    /// holds none and starts done, so no page is asked of it.
    pub(super) fn bucket_cursor(&self, bucket: i64, shards: Option<&[u32]>) -> BucketCursor {
        let mut cursor = BucketCursor {
            bucket,
            touched: false,
            shards: (0..self.req.namespace.shards)
                .map(|shard| ShardCursor {
                    shard,
                    span: self.span.clone(),
                    buf: VecDeque::new(),
                    done: shards.is_some_and(|listed| listed.binary_search(&shard).is_err()),
                    requested: 0,
                    pages: 0,
                    sent: None,
                    probes: 0,
                    probe_late_at: None,
                    took: None,
                    fetched: 0,
                })
                .collect(),
        };
        if let Some((_, starts)) = self.starts.as_ref().filter(|(b, _)| *b == bucket) {
            let width = self.req.namespace.bucket_width_micros;
            for start in starts {
                let Some(shard) = cursor.shards.get_mut(start.shard as usize) else {
                    continue;
                };
                let from = Key::boundary(start.time);
                // A start at or past the bucket's end: the shard has no
                // row left in it. One not beyond the frontier says nothing.
                let exit = position::bucket_exit(bucket, width, &shard.span, self.req.order);
                if !position::is_beyond(&exit, &from, self.req.order) {
                    shard.done = true;
                } else if position::is_beyond(
                    &from,
                    shard.fetched_to(self.req.order),
                    self.req.order,
                ) {
                    shard.span = shard.span.resume_from(&from, self.req.order);
                }
            }
        }
        cursor
    }

    /// The shard starts of the bucket a read resuming at `frontier` begins
    /// in, for its token (see [`ShardStart`]): a shard's first row left for
    /// the next call, or else what its cursor knows. None when that bucket
    /// is not this scan's head.
    fn shard_starts(&self, frontier: &Key) -> Vec<ShardStart> {
        let order = self.req.order;
        let width = self.req.namespace.bucket_width_micros;
        let head = Span::of_range(self.req.start, self.req.end)
            .resume_from(frontier, order)
            .buckets(width)
            .map(|buckets| first_bucket(buckets, order));
        match (self.buckets.front(), head) {
            (Some(b), Some(head)) if b.bucket == head => b
                .shards
                .iter()
                .filter_map(|s| {
                    let carried = self
                        .carry
                        .iter()
                        .find(|(_, from)| *from == (b.bucket, s.shard));
                    match carried {
                        Some((row, _)) => ShardCursor::start_at(row, s.shard, frontier, order),
                        None => s.start(b.bucket, width, frontier, order),
                    }
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    pub(super) fn request(&self) -> &ReadRequest {
        &self.req
    }

    /// Takes up a held scan for the call `req`, which presents the token
    /// of this scan's frontier: same query, new budget and limits.
    pub(super) fn continue_with(&mut self, req: &ReadRequest) {
        debug_assert_eq!(req.resume_after.as_ref(), Some(&self.frontier));
        self.req = req.clone();
        self.began = req.budget.elapsed();
        self.start_frontier = self.frontier.clone();
        self.rows_out = 0;
        self.bytes_out = 0;
        self.emitted.clear();
        self.stream = None;
        self.last_error = None;
        // The probe cap is per call: a page stuck since an earlier call
        // (its node stopped answering) may get probes in this one too, or
        // the call would wait on it to its deadline with no row. A probe
        // still in flight and not late keeps its time.
        for s in self.buckets.iter_mut().flat_map(|b| &mut b.shards) {
            s.probes = 0;
        }
        self.index_probes = 0;
        // Storage work done while the scan was held is this call's: a
        // chain's stats add up to every row it read.
        let held = std::mem::take(&mut self.stats);
        self.stats = ReadStats {
            budget: req.budget.total,
            continued: true,
            rows_scanned: held.rows_scanned,
            storage_pages: held.storage_pages,
            index_pages: held.index_pages,
            ..ReadStats::default()
        };
    }

    /// Moves this held scan, stopped at its frontier, forward to
    /// `position` further on in its query's read order, where its client's
    /// chain now stands after calls another replica served: every row at or
    /// behind `position` is dropped from what it holds, rows still to land
    /// are kept only beyond it (a page lands through its shard's span, see
    /// [`Scan::absorb`]), a shard whose bucket ends at or behind `position`
    /// is done, and buckets listed from now on start beyond it. What it
    /// then merges is exactly what a read resuming at `position` yields,
    /// but for the freshness rule (rows as of when their page was fetched).
    ///
    /// Its requests in flight are dropped: mostly pages of rows the other
    /// replica delivered, asked at its last call's stop (it fetches nothing
    /// ahead once its calls alternate, see [`Scan::reads_ahead`]), and a
    /// shard with one in flight asks for no other until it lands, so the
    /// call would wait a round trip for rows it drops before it asks for
    /// its own. Each shard's span still says what it has not fetched, and
    /// the bucket-index range what is not listed, so their next requests
    /// start there.
    pub(super) fn skip_to(&mut self, position: &Key) {
        let order = self.req.order;
        let width = self.req.namespace.bucket_width_micros;
        debug_assert!(position::is_beyond(position, &self.frontier, order));
        let beyond = |key: &Key| position::is_beyond(key, position, order);
        self.in_flight = FuturesUnordered::new();
        self.index_pending = false;
        self.index_sent = None;
        self.index_probe_late_at = None;
        self.carry.retain(|(row, _)| beyond(&row.key));
        for bucket in &mut self.buckets {
            for shard in &mut bucket.shards {
                shard.requested = 0;
                shard.sent = None;
                shard.probe_late_at = None;
                while shard.buf.front().is_some_and(|row| !beyond(&row.key)) {
                    shard.buf.pop_front();
                }
                if shard.done || beyond(shard.fetched_to(order)) {
                    continue;
                }
                shard.span = shard.span.resume_from(position, order);
                let exit = position::bucket_exit(bucket.bucket, width, &shard.span, order);
                if shard.buf.is_empty() && !beyond(&exit) {
                    shard.done = true;
                }
            }
        }
        self.span = self.span.resume_from(position, order);
        self.frontier = position.clone();
        self.alternating = true;
    }

    /// Whether this scan fetches past what its call's response takes, for
    /// its next call: when scans are held and its client's calls do not
    /// alternate over replicas. Where they do, each replica fetching ahead
    /// read every row of the chain (what the other replica's calls deliver
    /// too), twice the storage work with two replicas; against the local
    /// node, whose CPU storage shares with the servers, that doubled the
    /// page latencies and token chains under SLOs of 20 ms and less failed
    /// `DEADLINE_EXCEEDED` (benchmark run AO). Such a scan is still held, so
    /// its next call on this replica needs no bucket-index query and no
    /// slow start, and it reads from its token on with pages sized as a
    /// call whose scan will not be held.
    pub(super) fn reads_ahead(&self) -> bool {
        self.engine.config.continuations.enabled() && !self.alternating
    }

    /// What this scan's call achieved (its stats are reset for a next call).
    pub(super) fn outcome(&mut self, ending: Ending) -> ReadOutcome {
        if self.resumed_in.is_some() {
            let crossed = ending == Ending::Complete || self.reached_bucket_end();
            self.engine
                .models
                .observe_crossing(&self.req.namespace.name, crossed);
            self.resumed_in = None;
        }
        self.stats.rows_delivered = self.rows_out as u64;
        self.stats.elapsed = self.req.budget.elapsed();
        let shard_starts = match &ending {
            Ending::Partial { frontier, .. } => self.shard_starts(frontier),
            Ending::Complete => Vec::new(),
        };
        tracing::debug!(
            rows_out = self.rows_out,
            rows_scanned = self.stats.rows_scanned,
            held_rows = self.held_rows(),
            shard_starts = shard_starts.len(),
            elapsed = ?self.stats.elapsed,
            "call ends"
        );
        let watermark = position::watermark(&ending, self.req.order, self.req.start, self.req.end);
        ReadOutcome {
            ending,
            watermark,
            shard_starts,
            stats: std::mem::take(&mut self.stats),
        }
    }

    /// A call stopped by its budget, about to be held, takes its last
    /// `rows` back from the sink (when the sink can, and one row stays)
    /// and leaves them to the next call, which then starts with rows in
    /// hand even if the page it would wait on is slow to land (a storage
    /// GC pause, a stalled machine): a continued call never comes back
    /// empty. The frontier moves back to the last row kept; `ending` is
    /// the call's partial ending, moved with it.
    pub(super) fn leave_for_next(
        &mut self,
        rows: usize,
        sink: &mut impl RowSink,
        ending: &mut Ending,
    ) {
        let Ending::Partial { frontier, .. } = ending else {
            return;
        };
        let Some((last, back)) = sink.take_back(rows) else {
            return;
        };
        let series_len = self.req.series_id.len();
        self.rows_out -= back.len();
        self.bytes_out -= back.iter().map(|r| r.weight(series_len)).sum::<usize>();
        let from = self
            .emitted
            .split_off(self.emitted.len().saturating_sub(back.len()));
        debug_assert_eq!(from.len(), back.len(), "every row emitted is logged");
        for carried in back.into_iter().zip(from).rev() {
            self.carry.push_front(carried);
        }
        self.frontier = last.clone();
        *frontier = last;
    }

    /// The rows a call stopped by its budget now would leave to the next
    /// call of its held scan (a sixteenth of its rows, at least one; none
    /// when scans are not held).
    pub(super) fn left_for_next(&self) -> usize {
        if self.reads_ahead() {
            (self.rows_out / super::LEFT_FOR_NEXT_SHARE).max(1)
        } else {
            0
        }
    }

    /// Estimated memory of the rows this scan holds: rows buffered and
    /// left for the next call, plus pages in flight, at the mean size of
    /// the rows seen (counting rows, not weighing each: a held scan asks
    /// this whenever it tops up its pipeline).
    pub(super) fn held_bytes(&self) -> usize {
        self.held_rows().saturating_mul(self.mean_row_bytes())
    }

    /// Rows this scan holds or has asked for: buffered, in flight and left
    /// for the next call.
    fn held_rows(&self) -> usize {
        let shards = self.buckets.iter().flat_map(|b| &b.shards);
        let rows: usize = shards.map(|s| s.buf.len() + s.requested).sum();
        rows + self.carry.len()
    }

    /// Rows the response would take before the rows of a page of the
    /// bucket being merged asked now: those left for the next call, and of
    /// that bucket what each shard holds or has asked for up to the least a
    /// shard still being read does (events spread evenly over a bucket's
    /// shards, so rows past that wait in the merge for the lagging shard's
    /// next page, which the page asked now is). Rows of the buckets after
    /// it come after all of its rows.
    ///
    /// A scan that will not be held sizes its pages by the time these
    /// leave (see [`Scan::response_room`]). Counted as every row it held,
    /// rows an alternating scan had fetched ahead into later buckets before
    /// its calls alternated, and those of the merged bucket's shards that
    /// ran ahead of an empty one, were taken for rows of this response:
    /// each call left itself time for a round or two of 16-row pages, which
    /// each unlocked a few dozen held rows (two replicas in turn at 10 ms,
    /// against the local node: a median 1,221 rows a call on one replica,
    /// in rounds of 16-row pages, where a cold call took 1,620; counted so,
    /// 1,620-1,652).
    fn rows_in_front(&self) -> usize {
        let head = self.buckets.front().map_or(0, |bucket| {
            let held = |s: &ShardCursor| s.buf.len() + s.requested;
            let lagging = bucket.shards.iter().filter(|s| !s.done).map(held).min();
            bucket
                .shards
                .iter()
                .map(|s| lagging.map_or(held(s), |least| held(s).min(least)))
                .sum()
        });
        head + self.carry.len()
    }

    /// The time a response needs after the scan stops whatever its size:
    /// the fixed floor (at most an eighth of the budget) and, once the call
    /// has rows or while the replica refuses reads for load, the allowance
    /// for this process and its client waking late on a loaded machine (see
    /// [`super::reserve`]), together at most half the budget.
    ///
    /// A call without rows on a replica that refuses nothing gives up no
    /// time to the allowance: a first page landing late answers it where
    /// stopping early would fail it, and without load its answer reaches
    /// its client soon. (Kept always, the allowance moved a debug build's
    /// cold 10 ms call's stop from 8.75 ms to 7.9 ms; in fresh clones such
    /// calls failed either way, storage then usually taking 11-12 ms.)
    ///
    /// Under load the answer itself is late. One replica took 2,000 reads a
    /// second at a 10 ms SLO (`hourglass-load run --rate 2000`,
    /// 100,000-row series). It answered 10% of its calls after the SLO,
    /// almost all with one round of first pages (30 rows) that landed past
    /// the stop a call with rows would have had. The client saw p99/SLO
    /// 1.23-1.31, and 0.87-0.89 with the allowance kept by calls without
    /// rows too (p99.9 1.41-1.55 against 0.99-1.17). The price is calls
    /// failing `DEADLINE_EXCEEDED` instead: 560-820 in 3 s against 120-310,
    /// beside 1,600-2,000 answered and 5,200-5,900 refused.
    fn fixed_reserve(&self) -> Duration {
        self.fixed_reserve_for(self.rows_out > 0 || self.engine.pressure.is_high())
    }

    /// [`Scan::fixed_reserve`] of a call that has rows (`with_rows`) or not.
    /// Rows asked for are emitted under the reserve of a call with rows, so
    /// sizing pages by the smaller one had pages land with too little time
    /// left to emit them: a 5 ms call sized its pages for 4.3 ms and
    /// emitted them under 2.4, and one that will not be held dropped 480
    /// rows of 512.
    fn fixed_reserve_for(&self, with_rows: bool) -> Duration {
        let cfg = &self.engine.config;
        let floor = cfg
            .response_reserve
            .min(self.req.budget.total / RESERVE_FLOOR_SHARE);
        let late = match cfg.response_cost {
            Some(cost) if with_rows => cost.lateness_allowance(),
            _ => Duration::ZERO,
        };
        (floor + late).min(self.req.budget.total / 2)
    }

    /// The time, from now, sending and decoding a response of `rows` rows
    /// and `bytes` bytes (the call's so far, and any to come) still takes,
    /// at the measured cost (or the per-row prior). A stream's client reads
    /// its rows as they come, so for a stream only its backlog counts (see
    /// [`StreamClock`]).
    fn cost_reserve(&self, rows: usize, bytes: usize) -> Duration {
        match &self.stream {
            Some(c) => {
                c.backlog.saturating_sub(c.mark.elapsed())
                    + self.response_cost(rows.saturating_sub(c.rows), bytes.saturating_sub(c.bytes))
            }
            None => self.response_cost(rows, bytes),
        }
    }

    /// The time sending and decoding `rows` rows of `bytes` bytes takes.
    fn response_cost(&self, rows: usize, bytes: usize) -> Duration {
        let cfg = &self.engine.config;
        cfg.response_cost
            .and_then(|cost| cost.reserve(bytes))
            .unwrap_or_else(|| {
                cfg.response_reserve_per_row
                    .saturating_mul(u32::try_from(rows).unwrap_or(u32::MAX))
            })
    }

    /// Marks a stream's clock now (see [`StreamClock`]); `unsent` is what
    /// the sink measured its client still needs ([`RowSink::unsent`]),
    /// which the backlog is at least.
    fn mark_stream(&mut self, unsent: Duration) {
        if self.stream.is_some() {
            let backlog = self.cost_reserve(self.rows_out, self.bytes_out).max(unsent);
            self.stream = Some(StreamClock {
                mark: Instant::now(),
                backlog,
                rows: self.rows_out,
                bytes: self.bytes_out,
            });
        }
    }

    /// When the scan must stop for the response to land within the budget.
    /// The reserve is capped at half the budget, so a pessimistic cost
    /// estimate never leaves a scan no time to fetch.
    pub(super) fn stop_at(&self) -> Instant {
        let reserve = (self.fixed_reserve() + self.cost_reserve(self.rows_out, self.bytes_out))
            .min(self.req.budget.total / 2);
        self.req.budget.deadline - reserve
    }

    /// Whether a next row of `weight` bytes still fits: its response, with
    /// the rows emitted before it, can be finished by the deadline. Unlike
    /// [`Scan::stop_at`] this is not capped: rows in hand (fetched ahead)
    /// can fill a response faster than any scan, and only its cost bounds
    /// them. A call's first row needs only its own cost: one row answers
    /// the call where none would fail it.
    fn row_fits(&self, weight: usize) -> bool {
        let cost = self.cost_reserve(self.rows_out + 1, self.bytes_out + weight);
        let fixed = if self.rows_out == 0 {
            Duration::ZERO
        } else {
            self.fixed_reserve()
        };
        Instant::now() + fixed + cost < self.req.budget.deadline
    }

    /// Scan time left if the rows in hand or asked for that come first
    /// ([`Scan::rows_in_front`]) go into the response: the reserve grows
    /// with the rows emitted, so the stop comes sooner than
    /// [`Scan::stop_at`] says now. A page sized to land by the
    /// later stop lands after the real one, and a scan dropped at its stop
    /// discards its rows.
    fn projected_remaining(&self) -> Duration {
        let reserve = (self.fixed_reserve_for(true) + self.cost_with(self.rows_in_front()))
            .min(self.req.budget.total / 2);
        (self.req.budget.deadline - reserve).saturating_duration_since(Instant::now())
    }

    /// [`Scan::cost_reserve`] of a response of the rows emitted plus `more`
    /// rows of the mean size seen.
    fn cost_with(&self, more: usize) -> Duration {
        let rows = self.rows_out.saturating_add(more);
        let bytes = more.saturating_mul(self.mean_row_bytes());
        self.cost_reserve(rows, self.bytes_out.saturating_add(bytes))
    }

    /// Rows the scan may still ask for, beside those in front of them
    /// ([`Scan::rows_in_front`]), when asked of `shards` shards at once:
    /// rows asked now land a page's round trip from now, and the response
    /// must then take them with the rows in front before the deadline
    /// (emitting stops once the response needs the rest of the budget, see
    /// [`Scan::row_fits`]).
    fn response_room(&self, shards: usize) -> usize {
        let front = self.rows_in_front();
        let cost = |extra: usize| self.cost_with(front.saturating_add(extra));
        let taken = cost(0);
        let left = self
            .req
            .budget
            .deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(self.fixed_reserve_for(true) + taken);
        let fits = |rows: usize| {
            let page = rows.div_ceil(shards.max(1));
            self.model.predict(page) + cost(rows).saturating_sub(taken) <= left
        };
        // The largest count that fits, by bisection over what the time
        // left could fetch at all (and no response holds more than its row
        // limit).
        let (mut lo, mut hi) = (
            0usize,
            self.model
                .affordable_rows(left)
                .saturating_mul(shards.max(1))
                .min(self.req.row_limit),
        );
        if fits(hi) {
            return hi;
        }
        while lo + 1 < hi {
            let mid = lo + (hi - lo) / 2;
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Rows the response's byte limit can still take beyond those sent and
    /// those the scan holds or has asked for, at the mean row size seen,
    /// with a sixteenth to spare: rows vary in size, and a round short of
    /// the limit costs the call a round trip, one past it the rows the next
    /// call reads again.
    fn byte_room(&self) -> usize {
        let left = self
            .req
            .byte_limit
            .saturating_sub(self.bytes_out)
            .saturating_sub(self.held_bytes());
        let rows = left / self.mean_row_bytes();
        rows.saturating_add(rows / 16)
    }

    /// Scan time left.
    pub(super) fn remaining(&self) -> Duration {
        self.stop_at().saturating_duration_since(Instant::now())
    }

    pub(super) fn progressed(&self) -> bool {
        self.frontier != self.start_frontier
    }

    /// Ends the read short of the range: partial with the frontier, or an
    /// error when nothing at all was achieved.
    pub(super) fn stop(
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
                waited_on: self.waited_on(Instant::now()),
                began: self.began,
            },
        })
    }

    /// Of the storage requests in flight, the one that has waited longest
    /// past (or least short of) what the latency model expects of a slow
    /// request of its size (a bucket-index query counts as a smallest
    /// page): a call that stops without progress failed because storage was
    /// late when that one is ([`Waited::late`]), because its budget could
    /// not cover what storage usually takes when it is not.
    fn waited_on(&self, now: Instant) -> Option<Waited> {
        let pages = self
            .buckets
            .iter()
            .flat_map(|b| &b.shards)
            .filter(|s| s.requested > 0)
            .filter_map(|s| Some((s.sent?, s.requested)));
        let index = self
            .index_sent
            .filter(|_| self.index_pending)
            .map(|sent| (sent, self.engine.config.min_storage_page));
        pages
            .chain(index)
            .map(|(sent, rows)| {
                let waited = now.saturating_duration_since(sent);
                Waited::judged(&self.model, rows, waited, self.in_flight.len())
            })
            .max_by(|a, b| (a.waited + b.expected).cmp(&(b.waited + a.expected)))
    }

    /// Pages still in flight when a scan is dropped took at least this long:
    /// teach the model, or it would keep sizing pages that never land (it
    /// only ever sees the pages that do). A scan held for a hot continuation
    /// lets its pages land and teaches the model their real latency instead.
    pub(super) fn learn_from_abandoned_pages(&self) {
        let now = Instant::now();
        for s in self.buckets.iter().flat_map(|b| &b.shards) {
            if let (true, Some(sent)) = (s.requested > 0, s.sent) {
                if now > sent {
                    self.engine.models.observe_abandoned(
                        &self.req.namespace.name,
                        s.requested,
                        now - sent,
                    );
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

    /// Records how late the stop timer, due at `due`, woke the scan.
    fn woke_late(&self, due: Instant) {
        let late = due.elapsed();
        metrics::histogram!(telemetry::STOP_LATENESS_SECONDS).record(late.as_secs_f64());
        if let Some(cost) = self.engine.config.response_cost {
            cost.observe_lateness(late);
        }
    }

    /// Ends the read at its deadline. Without progress, a storage error seen
    /// on the way is the better answer than "deadline exceeded": it says why.
    pub(super) fn stop_for_budget(&self) -> Result<Ending, ReadError> {
        tracing::debug!(
            in_flight = self.in_flight.len(),
            buckets = self.buckets.len(),
            index_pending = self.index_pending,
            rows_out = self.rows_out,
            bytes_out = self.bytes_out,
            reserve = ?self.req.budget.deadline.saturating_duration_since(self.stop_at()),
            fixed_reserve = ?self.fixed_reserve(),
            cost_reserve = ?self.cost_reserve(self.rows_out, self.bytes_out),
            elapsed = ?self.req.budget.elapsed(),
            "budget ends the scan"
        );
        self.stop(self.req.budget.source.into(), self.last_error.clone())
    }

    /// Runs the call: merges rows into `sink` until its range, a limit or
    /// its budget ends it. What the scan holds once it fetches ahead counts
    /// against the continuation cache through `lease`.
    pub(super) async fn run(
        &mut self,
        sink: &mut impl RowSink,
        lease: &mut Lease<S>,
    ) -> Result<Ending, ReadError> {
        loop {
            if let Some(limit) = self.emit(sink) {
                return self.stop(limit, None);
            }
            if self.buckets.is_empty()
                && self.carry.is_empty()
                && self.index_todo.is_none()
                && !self.index_pending
            {
                return Ok(Ending::Complete);
            }
            if self.remaining().is_zero() {
                return self.stop_for_budget();
            }
            if !self.schedule() {
                // The next page cannot land in time: answer now with what we have.
                return self.stop_for_budget();
            }
            // A scan that will be held keeps its pipeline full during its
            // calls too (rows fetched past this call's end are the next
            // call's), once it has rows: before them, under a tight budget,
            // the head bucket's pages go alone.
            let ahead = self.engine.config.continuations.ahead_bytes();
            if ahead > 0 && self.reads_ahead() && (self.progressed() || self.stats.continued) {
                let ahead = lease.account(self.held_bytes(), self.engine.pressure.ahead(ahead));
                self.fetch_ahead(ahead);
                // The pages just asked for count from now.
                lease.account(self.held_bytes(), 0);
            }
            let next_probe = match (self.probe_stragglers(), self.probe_late_index()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            debug_assert!(!self.in_flight.is_empty(), "waiting on nothing");
            sink.flush_but(self.left_for_next());
            self.mark_stream(sink.unsent());
            // Timers go off at the tick after their deadline: the stop's is
            // set early once the call has rows to answer with (before, an
            // early stop only gives up the time a first page may still land
            // in). A probe's is not: woken before it is due, the scan would
            // find it not due and go round again at once.
            let slack = if self.rows_out > 0 {
                self.engine.config.timer_slack
            } else {
                Duration::ZERO
            };
            let stop_at = self
                .stop_at()
                .checked_sub(slack)
                .unwrap_or_else(Instant::now);
            if sink.backlogged() {
                tokio::select! {
                    biased;
                    () = tokio::time::sleep_until(stop_at) => return self.stop_for_budget(),
                    () = self.engine.drain.cancelled() => return self.stop_for_shutdown(),
                    () = sink.drained() => {}
                }
            }
            let fetched = tokio::select! {
                biased;
                () = tokio::time::sleep_until(stop_at) => {
                    self.woke_late(stop_at + slack);
                    return self.stop_for_budget();
                }
                () = tokio::time::sleep_until(next_probe.unwrap_or(stop_at)), if next_probe.is_some() => continue,
                () = self.engine.drain.cancelled() => return self.stop_for_shutdown(),
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
        let series_len = self.req.series_id.len();
        while let Some((row, _)) = self.carry.front() {
            let weight = row.weight(series_len);
            if let Some(limit) = self.limit_before(weight, sink) {
                return Some(limit);
            }
            let (row, from) = self.carry.pop_front().expect("a front row");
            self.deliver(row, weight, from, sink);
        }
        while let Some(head) = self.buckets.front_mut() {
            match pick(&head.shards, |s| s.head(order), order) {
                Pick::NeedData => return None,
                Pick::Exhausted => {
                    let b = head.bucket;
                    self.buckets.pop_front();
                    // The buckets queued after the head were listed by the
                    // bucket index, so those between it and the next one
                    // are empty: the frontier passes them too. A call that
                    // stops here then resumes at the next listed bucket,
                    // not the next empty one (a cold read from long before
                    // a series' first row, against storage too slow for
                    // two pages in a budget, crossed one empty bucket a call).
                    let passed = match (self.buckets.front(), order) {
                        (Some(next), Order::Ascending) => next.bucket - 1,
                        (Some(next), Order::Descending) => next.bucket + 1,
                        (None, _) => b,
                    };
                    let boundary = position::bucket_exit(passed, width, &self.span, order);
                    let forward = position::is_beyond(&boundary, &self.frontier, order);
                    if forward {
                        self.frontier = boundary;
                    }
                }
                Pick::Row(i) => {
                    let weight = head.shards[i]
                        .buf
                        .front()
                        .map_or(0, |r| r.weight(series_len));
                    if let Some(limit) = self.limit_before(weight, sink) {
                        return Some(limit);
                    }
                    let head = &mut self.buckets[0];
                    let from = (head.bucket, head.shards[i].shard);
                    let row = head.shards[i]
                        .buf
                        .pop_front()
                        .expect("picked a non-empty shard");
                    self.deliver(row, weight, from, sink);
                }
            }
        }
        None
    }

    /// The limit that stops the call before a next row of `weight` bytes:
    /// a row or byte limit, or the budget once the rows emitted need the
    /// rest of it for their client to have them (rows in hand are many when
    /// a held scan fetched ahead; a stream's client reads its rows as they
    /// come, so only what it has not had time for counts, see
    /// [`Scan::cost_reserve`]; the clock is read every [`EMIT_CLOCK_EVERY`]
    /// rows, and a first row always goes).
    fn limit_before(&mut self, weight: usize, sink: &impl RowSink) -> Option<PartialReason> {
        if let Some(limit) = limit_before(self.rows_out, self.bytes_out, weight, &self.req) {
            return Some(limit);
        }
        let clock_due = self.rows_out > 0 && self.rows_out % EMIT_CLOCK_EVERY == 0;
        if clock_due {
            self.mark_stream(sink.unsent());
        }
        (clock_due && !self.row_fits(weight)).then(|| self.req.budget.source.into())
    }

    /// Hands `row` (of `weight` bytes, merged from `from`) to the sink; the
    /// frontier follows.
    fn deliver(&mut self, row: Row, weight: usize, from: Origin, sink: &mut impl RowSink) {
        if self.engine.config.continuations.enabled() {
            self.emitted.push_back(from);
        }
        if self.stream.is_none() && sink.sends_as_it_goes() {
            self.stream = Some(StreamClock {
                mark: Instant::now(),
                backlog: Duration::ZERO,
                rows: self.rows_out,
                bytes: self.bytes_out,
            });
        }
        self.frontier = row.key.clone();
        self.rows_out += 1;
        self.bytes_out += weight;
        sink.push(row);
    }

    /// Starts the fetches the merge needs next, plus bounded read-ahead.
    /// Returns false when the head bucket needs a page that cannot land
    /// before the deadline and the read already has progress to return.
    fn schedule(&mut self) -> bool {
        // An Arc of the core, so settings stay readable while fetches launch.
        let engine = self.engine.clone();
        let cfg = &engine.config;
        let remaining = self.remaining();
        // Rows still wanted (no more than the time left can deliver), plus
        // one to learn whether more remain. Read-ahead beyond it would be
        // fetched only to be discarded.
        let affordable = self.model.affordable_rows(remaining);
        // A scan that may be held keeps what it fetched past its stop for
        // the next call; one that will not be sizes its pages to the stop
        // that the rows it holds and asks for bring on.
        let (sizing, wanted, room) = if self.reads_ahead() {
            (remaining, affordable, None)
        } else {
            let shards = self.buckets.front().map_or(1, BucketCursor::listed);
            let room = self.response_room(shards);
            if !self.round_trip_pays(room) {
                return false;
            }
            // Nor more than its byte limit can take (see [`Self::byte_room`]).
            let room = room.min(self.byte_room());
            let sizing = self.projected_remaining();
            let wanted = self
                .model
                .affordable_rows(sizing)
                .min(self.rows_in_front() + room);
            (sizing, wanted, Some(room))
        };
        let need = pages::rows_needed(self.req.row_limit, self.rows_out, wanted);
        self.list_more_buckets();
        let pace = pages::pace(&self.model, sizing / 2, cfg);
        let mut covered = 0usize;
        let mut probe_only = false;
        // Before the first row, under a budget too tight for slow start to
        // relax, the head bucket's pages go alone: read-ahead requests would
        // compete with them for storage and may leave the call empty-handed.
        let lookahead = if self.progressed() || pages::ample(&self.model, remaining) {
            cfg.readahead_buckets
        } else {
            0
        };
        for i in 0..self.buckets.len().min(lookahead + 1) {
            let want = if i == 0 {
                need
            } else {
                need.saturating_sub(covered)
            };
            // A scan that will not be held asks no page for more rows than
            // its response can still take.
            let want = room.map_or(want, |room| want.min(room.saturating_add(1)));
            if want == 0 {
                break;
            }
            let bucket = &self.buckets[i];
            let shards = bucket.shards.len();
            // Pages land with time to spare for merging what the other
            // shards return (rows that arrive too late are discarded); a
            // bucket after one that may hold all the rows is only probed.
            // The rows wanted are shared among the shards that may hold
            // them.
            let page = pages::shard_page(want, bucket.listed(), pace, i > 0 && probe_only, cfg);
            let blocking = i == 0 && bucket.shards.iter().any(ShardCursor::idle);
            if blocking
                && affordable < cfg.min_storage_page
                && self.progressed()
                && !self.head_in_flight()
            {
                return false;
            }
            // Shards of the head bucket running low are topped up while it
            // holds and awaits fewer rows than the call still wants, so
            // every shard has its next page on the way (rows left over when
            // the call ends stay with a held scan).
            let mut head_covered = if i == 0 { self.covered(0) } else { 0 };
            for j in 0..shards {
                let s = &self.buckets[i].shards[j];
                let due = if i == 0 {
                    s.idle() || (s.low(page) && head_covered < need)
                } else {
                    s.idle() && self.in_flight.len() < cfg.max_in_flight
                };
                if due {
                    self.launch_shard(i, j, page, 0, Duration::ZERO);
                    head_covered += self.buckets[i].shards[j].requested;
                }
            }
            let shards = &self.buckets[i].shards;
            // Once one shard reached the bucket's end, the others' pages in
            // flight are expected to end near the same count: the buckets
            // after it get their share of the rows wanted now, not a probe
            // that costs the call a round trip when the pages land short.
            // A shard the index does not name (done before any page) holds
            // no row of the series, which says nothing of where the others
            // end.
            let sibling_end = shards
                .iter()
                .filter(|s| s.done && !s.unlisted())
                .map(|s| s.fetched)
                .max();
            for s in shards {
                let expected = sibling_end
                    .filter(|_| !s.done && s.requested > 0)
                    .map(|end| {
                        let rest = expected_rest(end, s.fetched, cfg.min_storage_page);
                        s.buf.len() + s.requested.min(rest)
                    });
                // A shard that returned a full page has more rows than we
                // know of: read-ahead past it would be premature.
                let known_more = !s.done && (s.pages >= 2 || (s.pages == 1 && s.requested == 0));
                covered = match expected {
                    Some(rows) => covered.saturating_add(rows),
                    None if known_more => usize::MAX,
                    None => covered.saturating_add(s.buf.len() + s.requested),
                };
                probe_only |= !s.done && expected.is_none();
            }
        }
        true
    }

    /// Whether a scan that will not be held, with rows to answer with and
    /// nothing in flight, should still send a round of pages when its
    /// response can take `room` rows beyond those it holds. Such a round
    /// can add at most those rows to the response (rows it holds past the
    /// merge's frontier wait for the next row of the shard that ended
    /// first; rows past the room could not be sent). It pays when those
    /// rows are worth the round trip at the rate the call got its rows so
    /// far; else the call answers now and its client's next call starts
    /// that much sooner (a cold 50 ms call spent 2.7 ms, a tenth of it, on
    /// rounds of 16-row pages unlocking a few dozen held rows each, which
    /// the next call reads again for little). A call younger than one
    /// round trip has no rate to judge by and goes on.
    fn round_trip_pays(&self, room: usize) -> bool {
        let round_trip = self.model.predict(self.engine.config.min_storage_page);
        let elapsed = self.req.budget.elapsed();
        if self.rows_out == 0 || !self.in_flight.is_empty() || elapsed < round_trip {
            return true;
        }
        let gain = u32::try_from(self.held_rows().saturating_add(room)).unwrap_or(u32::MAX);
        let per_row = elapsed / u32::try_from(self.rows_out).unwrap_or(u32::MAX);
        per_row.saturating_mul(gain) >= round_trip
    }

    /// Keeps the scan's pipeline to storage full, so a chain of calls reads
    /// at the speed of one scan: while the scan is held between calls, and
    /// during a call of a scan that will be held, every shard of the bucket
    /// being merged whose buffer runs below a page has its next page on the
    /// way, as long as the rows held and asked for stay within `max_bytes`
    /// (at the mean row size seen; a last page is cut to fit, and none
    /// smaller than the smallest page goes). Pages are
    /// sized to land within half the last call's budget and asked for twice
    /// over (one page drains while the next is on its way); slow start
    /// bounds them by the model's evidence. The shards of the
    /// `readahead_buckets` buckets after the one being merged are read
    /// beside it, not once it is read to its end: each shard is one stream
    /// (one page in flight keeps its pages in order), and reading one
    /// bucket's shards at a time leaves the merge waiting on one shard's
    /// page after another. Rows are read as of their fetch.
    pub(super) fn fetch_ahead(&mut self, max_bytes: usize) {
        if max_bytes == 0 {
            return;
        }
        self.list_more_buckets();
        let mut held = self.held_bytes();
        if held >= max_bytes {
            return;
        }
        let engine = self.engine.clone();
        let cfg = &engine.config;
        // Twice what lands within half the last call's budget (or more
        // where rows are cheap: see `pages::pace`).
        let page = pages::pace(&self.model, self.req.budget.total / 2, cfg)
            .clamp(cfg.min_storage_page, cfg.max_storage_page)
            .saturating_mul(2)
            .min(cfg.max_storage_page);
        let row_bytes = self.mean_row_bytes();
        for i in 0..self.buckets.len().min(cfg.readahead_buckets + 1) {
            for j in 0..self.buckets[i].shards.len() {
                if held >= max_bytes {
                    return;
                }
                if self.buckets[i].shards[j].low(page) {
                    // No page past the bound: what held scans hold is the
                    // continuation cache's to bound.
                    let fits = (max_bytes - held) / row_bytes;
                    if fits < cfg.min_storage_page {
                        return;
                    }
                    self.launch_shard(i, j, page.min(fits), 0, Duration::ZERO);
                    held += self.buckets[i].shards[j].requested * row_bytes;
                }
            }
        }
    }

    /// Mean bytes of the rows of the last page that landed (else of the
    /// rows emitted), at least one.
    pub(super) fn mean_row_bytes(&self) -> usize {
        if self.row_bytes > 0 {
            self.row_bytes
        } else {
            (self.bytes_out / self.rows_out.max(1)).max(1)
        }
    }

    /// A shard of the head bucket whose buffer is empty holds up the merge
    /// until its page lands. When that page is late (twice what the bucket's
    /// slowest shard took for its last page, or, before any landed, twice the
    /// model's prediction for a page within its evidence), a probe of a quarter
    /// of its rows (at least the smallest page, at most the page: a late
    /// smallest page gets a copy when storage has more than one node) goes
    /// beside it: a straggling storage request then costs a call a few rows,
    /// not all of them (a cold call whose three shards answered in 3 ms waited
    /// on the fourth past its 10 ms budget and answered BUDGET_TOO_SMALL). Only
    /// a call with no row yet probes: one with rows answers with them, and
    /// probes read rows twice. Another probe goes only when the newest is late
    /// in turn, at most [`MAX_PROBES`] per page in a call. And whatever the
    /// evidence, a shard of a call with no row yet whose page is still out gets
    /// a smallest page as a probe at the last moment one can land, slow, twice
    /// over, before the scan must stop; where that moment comes before the page
    /// is even due (at its siblings' or the model's pace), the probe waits
    /// until it is due or until a smallest page can only just land at its usual
    /// pace, whichever is sooner: a probe beside a page on time only adds to
    /// the load the page waits behind. Whichever lands first gives the rows;
    /// the others' copies are dropped. Returns when the next page or probe that
    /// could need one becomes late.
    fn probe_stragglers(&mut self) -> Option<Instant> {
        if self.rows_out > 0 {
            // The call has rows to answer with: a late page costs it more
            // rows, not the call, and a probe would read rows twice.
            return None;
        }
        let min_page = self.engine.config.min_storage_page;
        let now = Instant::now();
        let stop_at = self.stop_at();
        // The last moment a smallest page sent as a probe lands in time,
        // even a slow one, with as much again to spare (the probe may wait
        // for the CPU as the page did).
        let last_chance = stop_at
            .checked_sub(self.model.predict_tail(min_page) * PROBE_LATE_FACTOR)
            .unwrap_or(now);
        // The last moment a smallest page lands at its usual pace: a page
        // expected to land before it is given until then (a probe sent
        // beside a page on time only doubles the load on storage).
        let latest = stop_at
            .checked_sub(self.model.predict(min_page))
            .unwrap_or(now);
        let mut next = None;
        let head = self.buckets.front()?;
        // What a page of this bucket takes now: its slowest shard's last
        // page (the shards share the storage and the moment).
        let siblings = head.shards.iter().filter_map(|s| s.took).max();
        let mut due = Vec::new();
        for (j, s) in head.shards.iter().enumerate() {
            let Some(sent) = s.sent else {
                continue;
            };
            if s.done || !s.buf.is_empty() || s.requested == 0 || s.probes >= MAX_PROBES {
                continue;
            }
            let expected = match siblings {
                Some(took) => Some(took),
                // Beyond the model's evidence, "late" means nothing...
                None if s.requested > self.model.trusted_rows() => None,
                None => Some(self.model.predict(s.requested)),
            };
            let page_late_at = expected.map(|expected| {
                let page_late_at = sent + expected * PROBE_LATE_FACTOR;
                s.probe_late_at
                    .map_or(page_late_at, |p| p.max(page_late_at))
            });
            // ...but a shard with nothing in hand and no probe out gets a
            // smallest page as a probe while one can still land before the
            // scan must stop: one page held up past it leaves the call
            // empty-handed.
            let last = (s.probes == 0).then(|| match expected {
                Some(expected) => {
                    // Due: at the later of its siblings' pace and the
                    // model's (safety included) for its size.
                    let due = sent + expected.max(self.model.predict(s.requested));
                    last_chance.max(due.min(latest))
                }
                None => last_chance,
            });
            let late_at = match (page_late_at, last) {
                (Some(p), Some(l)) => p.min(l),
                (Some(at), None) | (None, Some(at)) => at,
                (None, None) => continue,
            };
            if late_at > now {
                next = Some(next.map_or(late_at, |n: Instant| n.min(late_at)));
                continue;
            }
            let probe = if page_late_at.is_some_and(|p| p <= now) {
                let fits = self
                    .model
                    .affordable_rows_tail(stop_at.saturating_duration_since(now));
                (s.requested / PROBE_SHARE).min(fits).max(min_page)
            } else {
                min_page
            };
            // A late smallest page gets a copy of itself where storage has
            // more than one node: the copy may find a coordinator that
            // answers where the page's stalls (on one node it would wait
            // behind the same stall).
            let probe = probe.min(s.requested);
            if probe < s.requested || self.engine.storage.nodes() > 1 {
                let late_after = expected.unwrap_or_else(|| self.model.predict_tail(probe));
                due.push((j, probe, late_after));
            }
        }
        for (j, probe, late_after) in due {
            self.launch_probe(j, probe, late_after * PROBE_LATE_FACTOR);
        }
        next
    }

    /// A call with no row yet that waits on the bucket-index query alone (no
    /// bucket queued: the head did not go beside it), on storage of more than
    /// one node, sends the same query again beside it when it is late: twice
    /// what a slow smallest page takes, from when it (or its newest probe)
    /// went, at most [`MAX_PROBES`] times in a call. The first probe goes
    /// sooner when the budget is short: at the last moment the index and then a
    /// first page can both land, slow, twice over, though never before the
    /// query is due at the model's pace. The driver picks each copy's
    /// coordinator afresh, so a copy may go around a node that stalls: without
    /// it, a 50 ms call whose index query went to a frozen replica, with no
    /// hedge credit left, waited to its deadline and answered BUDGET_TOO_SMALL.
    /// Whichever copy lands first lists the buckets; the others' answers are
    /// dropped. Returns when the next probe could be due.
    fn probe_late_index(&mut self) -> Option<Instant> {
        if !self.index_pending
            || self.rows_out > 0
            || !self.buckets.is_empty()
            || self.index_probes >= MAX_PROBES
            || self.engine.storage.nodes() < 2
        {
            return None;
        }
        let sent = self.index_sent?;
        let min_page = self.engine.config.min_storage_page;
        let slow = self.model.predict_tail(min_page) * PROBE_LATE_FACTOR;
        let late_at = self.index_probe_late_at.unwrap_or_else(|| {
            let last_chance = self
                .stop_at()
                .checked_sub(slow * 2)
                .unwrap_or(sent)
                .max(sent + self.model.predict(min_page));
            (sent + slow).min(last_chance)
        });
        if late_at > Instant::now() {
            return Some(late_at);
        }
        self.launch_index_probe(slow);
        self.index_probe_late_at
            .filter(|_| self.index_probes < MAX_PROBES)
    }

    /// Sends the next bucket-index query when the listed buckets run short
    /// of the read-ahead and none is pending.
    fn list_more_buckets(&mut self) {
        if self.index_todo.is_some()
            && !self.index_pending
            && self.buckets.len() <= self.engine.config.readahead_buckets
            && !self.index_can_wait()
        {
            self.launch_index(0, Duration::ZERO);
        }
    }

    /// Whether the bucket-index query can wait: the read is still in the
    /// bucket its token resumed it in, and no shard of it has reached the
    /// bucket's end. The buckets after it are wanted only once the read
    /// nears that end (a shard's page ends short of what it asked, or the
    /// token says a shard has no row left in it), and a call that stops
    /// before then needs none of them. Without the wait, every call that
    /// resumed a read from its token (hot continuations off, another
    /// replica, an evicted scan) listed buckets it never reached: a fifth
    /// of the storage requests of a token chain under a 10 ms SLO, one
    /// index query beside four shard pages a call, in 60 s buckets of
    /// 60,000 rows read some 1,500 rows a call. The price comes once per
    /// bucket: the call that reaches its end waits a round trip for the
    /// index before it reads on.
    ///
    /// It waits only in a namespace whose resumed calls mostly stop before
    /// their bucket's end ([`LatencyModel::resumed_calls_stay`]): where a
    /// bucket holds few rows next to what a call reads, the call that
    /// waited would pay that round trip every time.
    /// (The scan's copy of the model learns page latencies as pages land,
    /// never this share, so the answer holds for the whole call.)
    fn index_can_wait(&self) -> bool {
        self.model.resumed_calls_stay() && !self.reached_bucket_end()
    }

    /// Whether the read left, or reached the end of, the bucket it resumed
    /// in: it moved past it, or a shard of it has no row left in it.
    fn reached_bucket_end(&self) -> bool {
        match (self.resumed_in, self.buckets.front()) {
            (Some(bucket), Some(head)) => {
                head.bucket != bucket || head.shards.iter().any(|s| s.done)
            }
            _ => true,
        }
    }

    /// Rows queued bucket `i` holds or has asked for.
    fn covered(&self, i: usize) -> usize {
        self.buckets[i]
            .shards
            .iter()
            .map(|s| s.buf.len() + s.requested)
            .sum()
    }

    fn head_in_flight(&self) -> bool {
        self.buckets
            .front()
            .is_some_and(|b| b.shards.iter().any(|s| s.requested > 0))
    }

    /// Takes in a finished fetch; Some when the read must end.
    pub(super) fn absorb(&mut self, fetched: Fetched) -> Option<Result<Ending, ReadError>> {
        let took = fetched.started().elapsed();
        match fetched {
            Fetched::Index {
                range,
                probe,
                result: Ok(found),
                ..
            } => {
                if self.index_todo != Some(range) {
                    // Another copy of this query (or probe) listed its
                    // buckets first.
                    return None;
                }
                tracing::debug!(probe, buckets = found.len(), ?took, "index page landed");
                self.index_pending = false;
                self.index_sent = None;
                self.index_probe_late_at = None;
                let (first, last) = range;
                let limit = self.engine.config.index_page;
                self.index_todo = match (found.last().map(|f| f.bucket), self.req.order) {
                    _ if found.len() < limit => None,
                    (None, _) => None,
                    (Some(b), Order::Ascending) => (b < last).then(|| (b + 1, last)),
                    (Some(b), Order::Descending) => (b > first).then(|| (first, b - 1)),
                };
                // Once this call passed a bucket and merged every one queued
                // so far to its end (as when the first bucket was read
                // beside this query), the buckets between the last one
                // passed and the first listed are empty: the frontier passes
                // them, as when a bucket is exhausted with the next one
                // queued (see `merge`). A call that then stops before the
                // listed bucket's first row reports them covered, not only
                // the bucket read beside the query (its watermark was the
                // range's start plus one bucket, 1970 for a read from 0).
                // A call that passed nothing yet still has no progress to
                // return (the index alone is none).
                if let (Some(next), true) = (
                    found.first().map(|f| f.bucket),
                    self.progressed() && self.buckets.is_empty() && self.carry.is_empty(),
                ) {
                    let order = self.req.order;
                    let passed = match order {
                        Order::Ascending => next - 1,
                        Order::Descending => next + 1,
                    };
                    let width = self.req.namespace.bucket_width_micros;
                    let boundary = position::bucket_exit(passed, width, &self.span, order);
                    if position::is_beyond(&boundary, &self.frontier, order) {
                        self.frontier = boundary;
                    }
                }
                for listed in found {
                    let cursor = self.bucket_cursor(listed.bucket, listed.shards.as_deref());
                    self.buckets.push_back(cursor);
                }
                None
            }
            Fetched::Shard {
                bucket,
                shard,
                requested,
                probe,
                result: Ok(rows),
                ..
            } => {
                tracing::debug!(
                    bucket,
                    shard,
                    requested,
                    probe,
                    rows = rows.len(),
                    ?took,
                    "page landed"
                );
                self.engine
                    .models
                    .observe(&self.req.namespace.name, rows.len(), took);
                metrics::histogram!(telemetry::STORAGE_PAGE_SECONDS).record(took.as_secs_f64());
                self.model.observe(rows.len(), took);
                self.stats.rows_scanned += rows.len() as u64;
                // Counted as they land, so a read its client cancelled, or
                // a held scan never continued, counts its storage work too.
                metrics::counter!(telemetry::ROWS_SCANNED).increment(rows.len() as u64);
                let series_len = self.req.series_id.len();
                let page_bytes: usize = rows.iter().map(|r| r.weight(series_len)).sum();
                if let Some(mean) = page_bytes.checked_div(rows.len()) {
                    self.row_bytes = mean.max(1);
                    self.engine
                        .models
                        .observe_row_bytes(&self.req.namespace.name, self.row_bytes);
                }
                let order = self.req.order;
                let Some(cursor) = self.shard_mut(bucket, shard) else {
                    // Its bucket was merged: a probe found the shard's end.
                    return None;
                };
                let last = rows.last().map(|r| r.key.clone());
                let end = rows.len() < requested;
                cursor.probe_late_at = None;
                if probe {
                    cursor.done |= end;
                } else {
                    // From when it was sent, as lateness is judged.
                    cursor.took = cursor.sent.map(|sent| sent.elapsed());
                    cursor.requested = 0;
                    cursor.probes = 0;
                    if cursor.done {
                        // A probe found the shard's end first, and the
                        // merge may have gone past this page's rows.
                        return None;
                    }
                    cursor.done = end;
                }
                // Rows a probe already gave (a prefix of the page it raced)
                // are dropped: each row goes to the merge once, in order.
                let span = cursor.span.clone();
                let before = cursor.buf.len();
                cursor
                    .buf
                    .extend(rows.into_iter().filter(|r| span.contains(&r.key)));
                cursor.fetched += cursor.buf.len() - before;
                if let Some(last) = last.filter(|k| span.contains(k)) {
                    cursor.span = span.resume_from(&last, order);
                }
                None
            }
            Fetched::Index {
                range,
                probe,
                attempt,
                result: Err(err),
                ..
            } => self.retry_or_stop(Resend::Index { range, probe }, attempt, err),
            Fetched::Shard {
                bucket,
                shard,
                requested,
                probe,
                attempt,
                result: Err(err),
                ..
            } => self.retry_or_stop(
                Resend::Shard {
                    bucket,
                    shard,
                    requested,
                    probe,
                },
                attempt,
                err,
            ),
        }
    }

    /// The cursor of a queued bucket's shard; None once the bucket was
    /// merged (a page raced by a probe that found the shard's end may land
    /// after it).
    pub(super) fn shard_mut(&mut self, bucket: i64, shard: u32) -> Option<&mut ShardCursor> {
        self.buckets
            .iter_mut()
            .find(|b| b.bucket == bucket)
            .map(|b| &mut b.shards[shard as usize])
    }
}
