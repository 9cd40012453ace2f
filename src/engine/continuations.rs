//! Hot continuations: the scan state of a read that stopped partial, held on
//! this replica for a short, bounded time so the call presenting its token
//! continues it instead of starting over.
//!
//! What is held: the rows fetched past the frontier (and the last merged
//! rows a budget-ended call left for the next, see `Scan::leave_for_next`),
//! each shard's position,
//! the listed buckets and the rest of the bucket index's range, the latency
//! model and slow-start progress, and the pages still in flight, which a
//! task lets land while the client is away (they are not dropped); the
//! task also fetches ahead, so the next call finds its rows ready.
//!
//! Invariants:
//! * The token stays the only source of truth. A held scan is found by
//!   everything the token binds (namespace and its layout, series, range,
//!   order) plus the token's position, and its frontier is that position, so
//!   continuing it yields exactly the rows a resume from the token would,
//!   except for writes made after their page was fetched (the freshness
//!   rule: rows are read as of when their page, or their bucket-index page,
//!   was fetched; the same holds for read-ahead within one call).
//! * A miss (another replica, evicted, expired, restarted, already taken)
//!   is never an error: the read resumes from the token's position.
//! * A held scan is taken by at most one call; it is dropped after
//!   [`ContinuationConfig::max_age`], when evicted, or when the server
//!   drains.
//! * Held memory is bounded: at most `max_entries` scans, `per_client` of
//!   them per client, and an estimated `max_bytes` of rows (buffered rows
//!   plus pages in flight at the rows' mean size, counted when the scan is
//!   held and again whenever its task lands or asks for pages), oldest
//!   evicted first. A scan that will be held (during its calls) and a held
//!   scan keep every shard of the bucket being merged with its next page on
//!   the way until the scan holds [`ContinuationConfig::ahead_bytes`] (an
//!   eighth of `max_bytes`, at most 4 MiB): storage works while the client
//!   is away, so a chain of calls reads at the speed of one scan. A held
//!   scan fetches ahead only into the room the others leave, and asks for
//!   no page past it, so the estimate stays within `max_bytes` (rows that
//!   land larger than the mean their page was asked at aside). A new hold
//!   evicts the oldest scans; a scan held less than [`STALE_FOR_ROOM`] ago
//!   makes room to fetch ahead by evicting only scans held longer than that
//!   before it (clients that went away), so a cache full of those does not
//!   starve a chain being read, and fetching ahead never evicts a chain
//!   being read (a new hold does evict the oldest held scans, read or not,
//!   when the held ones would not fit: chains that together need more than
//!   `max_bytes` evict each other). The pages a call asked for its own
//!   response are outside the bound; the bytes published (held scans plus
//!   calls' leases) count them, so they can read above `max_bytes`.
//! * A call presenting a token no scan is held at may continue its client's
//!   scan of the same query held short of it, moved forward to the token
//!   ([`Continuations::take`], [`Scan::skip_to`]): its calls alternate over
//!   replicas, and from then on that scan fetches nothing ahead (the rows
//!   past its stop are the other replica's to read; see
//!   [`Scan::reads_ahead`]) until a call continues it at its own position.
//! * A call whose scan will be held fetches ahead under the same bound: from
//!   its first fetch ahead to its end, what its scan holds counts against
//!   `max_bytes` as a [`Lease`] (handed over to the entry when the scan is
//!   held), so what calls in flight and held scans fetch ahead together
//!   stays within it. (What a call fetches for its own response is bounded
//!   by its row and byte limits, not by the cache.)

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::position::is_beyond;
use super::scan::Scan;
use super::ReadRequest;
use crate::model::{Key, Order};
use crate::storage::Storage;
use crate::telemetry;

/// A scan held this long makes room for a newer one fetching ahead (see
/// [`Table::account`]).
pub const STALE_FOR_ROOM: Duration = Duration::from_secs(1);

/// How long a refused read keeps held scans from fetching ahead.
pub const PRESSURE_HOLD: Duration = Duration::from_millis(250);
/// How often a held scan kept from fetching ahead looks again.
const PRESSURE_RECHECK: Duration = Duration::from_millis(50);
/// A held scan whose page failed fetches nothing more for this long,
/// doubled for each failure in a row up to [`FAILED_REST_MAX`].
const FAILED_REST: Duration = Duration::from_millis(20);
const FAILED_REST_MAX: Duration = Duration::from_secs(1);

/// Whether this replica is refusing reads for load. Fetching ahead is work
/// no caller waits on: while reads are refused, held scans fetch nothing
/// new (pages in flight still land) and calls fetch only what they merge,
/// so storage serves the reads admitted. Without this, each of many token
/// followers refused in turn kept its held scan fetching up to
/// [`ContinuationConfig::ahead_bytes`], a load no admission limit bounds.
#[derive(Debug)]
pub struct Pressure {
    base: Instant,
    /// Nanoseconds after `base` until which reads count as refused.
    until_nanos: AtomicU64,
}

impl Default for Pressure {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            until_nanos: AtomicU64::new(0),
        }
    }
}

impl Pressure {
    /// A read was refused for load now: fetching ahead pauses for
    /// [`PRESSURE_HOLD`].
    pub fn raise(&self) {
        let until = (Instant::now() + PRESSURE_HOLD) - self.base;
        let nanos = u64::try_from(until.as_nanos()).unwrap_or(u64::MAX);
        self.until_nanos.fetch_max(nanos, Ordering::Relaxed);
    }

    /// Whether a read was refused for load within the last [`PRESSURE_HOLD`].
    pub fn is_high(&self) -> bool {
        let now = u64::try_from((Instant::now() - self.base).as_nanos()).unwrap_or(u64::MAX);
        now < self.until_nanos.load(Ordering::Relaxed)
    }

    /// What a scan may hold through fetching ahead now: `ahead_bytes`, or
    /// nothing under pressure.
    pub(super) fn ahead(&self, ahead_bytes: usize) -> usize {
        if self.is_high() {
            0
        } else {
            ahead_bytes
        }
    }
}

/// Bounds of the hot-continuation cache. Any bound at zero turns it off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContinuationConfig {
    /// Estimated bytes of rows held, all scans together.
    pub max_bytes: usize,
    /// Scans held.
    pub max_entries: usize,
    /// Scans held per client (see [`ReadRequest::client`]).
    pub per_client: usize,
    /// How long a scan is held for the next call.
    pub max_age: Duration,
}

impl Default for ContinuationConfig {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            max_entries: 1024,
            per_client: 256,
            max_age: Duration::from_secs(10),
        }
    }
}

impl ContinuationConfig {
    /// No scan is ever held.
    pub fn off() -> Self {
        Self {
            max_bytes: 0,
            ..Self::default()
        }
    }

    pub fn enabled(&self) -> bool {
        self.max_bytes > 0 && self.max_entries > 0 && self.per_client > 0 && !self.max_age.is_zero()
    }

    /// What one scan that will be held may hold through fetching ahead
    /// (during its calls and while its client is away): an eighth of
    /// `max_bytes`, at most 4 MiB; 0 when off.
    pub fn ahead_bytes(&self) -> usize {
        if self.enabled() {
            (self.max_bytes / 8).min(MAX_FETCH_AHEAD_BYTES)
        } else {
            0
        }
    }
}

/// What finds a held scan: everything its token is bound to, and its
/// position.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct HeldKey {
    namespace: String,
    bucket_width: i64,
    shards: u32,
    series_id: Arc<str>,
    start: i64,
    end: i64,
    order: Order,
    frontier: Key,
}

impl HeldKey {
    pub(super) fn new(req: &ReadRequest, frontier: &Key) -> Self {
        Self {
            namespace: req.namespace.name.clone(),
            bucket_width: req.namespace.bucket_width_micros,
            shards: req.namespace.shards,
            series_id: req.series_id.clone(),
            start: req.start,
            end: req.end,
            order: req.order,
            frontier: frontier.clone(),
        }
    }

    /// Whether `other` is for the same query (any position).
    fn same_query(&self, other: &Self) -> bool {
        self.namespace == other.namespace
            && self.bucket_width == other.bucket_width
            && self.shards == other.shards
            && self.series_id == other.series_id
            && self.start == other.start
            && self.end == other.end
            && self.order == other.order
    }
}

/// A held scan: its task keeps it (landing its pages in flight) until a call
/// claims it, it expires, or it is evicted (its entry, with `handoff`, is
/// dropped).
struct Held<S> {
    seq: u64,
    /// When it was held.
    since: Instant,
    bytes: usize,
    client: Arc<str>,
    claim: Arc<Notify>,
    handoff: oneshot::Receiver<Scan<S>>,
}

struct Table<S> {
    /// Bytes the held scans may hold together.
    max_bytes: usize,
    entries: HashMap<HeldKey, Held<S>>,
    /// Insertion order, oldest first; entries since taken are skipped.
    queue: VecDeque<(u64, HeldKey)>,
    bytes: usize,
    /// Bytes the scans of calls in flight hold through their [`Lease`]s.
    leased: usize,
    per_client: HashMap<Arc<str>, usize>,
    next_seq: u64,
}

impl<S> Table<S> {
    /// Bytes neither held scans nor calls' leases take.
    fn room(&self) -> usize {
        self.max_bytes
            .saturating_sub(self.bytes.saturating_add(self.leased))
    }

    fn remove(&mut self, key: &HeldKey) -> Option<Held<S>> {
        let held = self.entries.remove(key)?;
        self.bytes -= held.bytes;
        if let Some(n) = self.per_client.get_mut(&held.client) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&held.client);
            }
        }
        Some(held)
    }

    /// Records that the scan held as `key` (entry `seq`) now holds an
    /// estimated `bytes`, and returns how many it may hold through fetching
    /// ahead: `want`, but no more than its `bytes` and the room the other
    /// held scans leave in the cache. None once its entry is gone
    /// (taken or evicted).
    fn account(&mut self, key: &HeldKey, seq: u64, bytes: usize, want: usize) -> Option<usize> {
        let held = self.entries.get_mut(key).filter(|h| h.seq == seq)?;
        self.bytes = self.bytes - held.bytes + bytes;
        held.bytes = bytes;
        // A scan held less than STALE_FOR_ROOM ago (its client is reading)
        // makes room by evicting scans held longer than that before it
        // (their clients went away); scans continued call after call are
        // never that old.
        let fresh = held.since.elapsed() <= STALE_FOR_ROOM;
        while fresh && bytes.saturating_add(self.room()) < want && self.evict_stale(seq) {}
        Some(want.min(bytes.saturating_add(self.room())))
    }

    /// Drops the oldest scan held before entry `seq` if it was held longer
    /// than [`STALE_FOR_ROOM`] ago; false when there is none.
    fn evict_stale(&mut self, seq: u64) -> bool {
        let now = Instant::now();
        self.evict_first("capacity", |h| {
            h.seq < seq && now.saturating_duration_since(h.since) > STALE_FOR_ROOM
        })
    }

    /// The held scan of `client` for the query of `key` that stopped
    /// furthest along short of `key`'s position, if any: one a call of
    /// `client` at that position can move forward and continue
    /// ([`Scan::skip_to`]). A linear search of at most `max_entries`, on a
    /// miss by a client holding scans here only.
    fn behind(&self, key: &HeldKey, client: &str) -> Option<HeldKey> {
        if !self.per_client.contains_key(client) {
            return None;
        }
        let candidates = self.entries.iter().filter(|(k, h)| {
            *h.client == *client
                && k.same_query(key)
                && is_beyond(&key.frontier, &k.frontier, key.order)
        });
        let furthest = match key.order {
            Order::Ascending => candidates.max_by(|(a, _), (b, _)| a.frontier.cmp(&b.frontier)),
            Order::Descending => candidates.min_by(|(a, _), (b, _)| a.frontier.cmp(&b.frontier)),
        };
        furthest.map(|(k, _)| k.clone())
    }

    /// Drops the oldest held scan (of `client`, if given); false when none.
    fn evict_oldest(&mut self, client: Option<&Arc<str>>, cause: &'static str) -> bool {
        self.evict_first(cause, |h| client.is_none_or(|c| *c == h.client))
    }

    /// Drops the oldest held scan that `pick` accepts, counting it as an
    /// eviction for `cause`; false when there is none.
    fn evict_first(&mut self, cause: &'static str, pick: impl Fn(&Held<S>) -> bool) -> bool {
        let found = self.queue.iter().position(|(seq, key)| {
            self.entries
                .get(key)
                .is_some_and(|h| h.seq == *seq && pick(h))
        });
        let Some(i) = found else {
            return false;
        };
        let (_, key) = self.queue.remove(i).expect("position found");
        self.remove(&key);
        metrics::counter!(telemetry::CONTINUATION_EVICTIONS, "cause" => cause).increment(1);
        true
    }

    /// Forgets queue slots of entries no longer held.
    fn compact(&mut self) {
        if self.queue.len() > 2 * self.entries.len() + 16 {
            let entries = &self.entries;
            self.queue
                .retain(|(seq, key)| entries.get(key).is_some_and(|h| h.seq == *seq));
        }
    }

    fn publish(&self) {
        metrics::gauge!(telemetry::CONTINUATION_BYTES).set((self.bytes + self.leased) as f64);
        metrics::gauge!(telemetry::CONTINUATION_ENTRIES).set(self.entries.len() as f64);
    }
}

/// The hot-continuation cache of one engine.
pub(super) struct Continuations<S> {
    config: ContinuationConfig,
    table: Arc<Mutex<Table<S>>>,
}

impl<S: Storage> Continuations<S> {
    pub(super) fn new(config: ContinuationConfig) -> Self {
        Self {
            table: Arc::new(Mutex::new(Table {
                max_bytes: config.max_bytes,
                entries: HashMap::new(),
                queue: VecDeque::new(),
                bytes: 0,
                leased: 0,
                per_client: HashMap::new(),
                next_seq: 0,
            })),
            config,
        }
    }

    /// Whether scans are held at all.
    pub(super) fn holds(&self) -> bool {
        self.config.enabled()
    }

    /// A lease for a call's scan to fetch ahead into (see [`Lease`]).
    pub(super) fn lease(&self) -> Lease<S> {
        Lease {
            table: self.table.clone(),
            bytes: 0,
        }
    }

    /// Holds `scan`, which stopped partial at `frontier`, for the call that
    /// presents its token; the bytes of its call's `lease` pass to it. Needs
    /// a tokio runtime (a task lands its pages).
    pub(super) fn hold(
        &self,
        scan: Scan<S>,
        frontier: &Key,
        drain: &CancellationToken,
        mut lease: Lease<S>,
    ) {
        if !self.config.enabled() || drain.is_cancelled() {
            return;
        }
        let bytes = scan.held_bytes();
        if bytes > self.config.max_bytes {
            metrics::counter!(telemetry::CONTINUATION_EVICTIONS, "cause" => "capacity")
                .increment(1);
            return;
        }
        let key = HeldKey::new(scan.request(), frontier);
        let client = scan.request().client.clone();
        let claim = Arc::new(Notify::new());
        let (tx, handoff) = oneshot::channel();
        let seq = {
            let mut t = self.table.lock().expect("continuation table");
            t.leased -= std::mem::take(&mut lease.bytes);
            // A scan at the same position (two clients reading alike) is
            // replaced: either is right, the newer is fresher.
            t.remove(&key);
            while t.per_client.get(&client).copied().unwrap_or(0) >= self.config.per_client {
                if !t.evict_oldest(Some(&client), "client") {
                    break;
                }
            }
            // Held scans alone make room for it: calls' leases bound what
            // is fetched ahead, not which scans stay held (a call leaving
            // rows for the next one holds more than it leased, and a full
            // cache then evicted chains being read).
            while t.entries.len() >= self.config.max_entries
                || t.bytes + bytes > self.config.max_bytes
            {
                if !t.evict_oldest(None, "capacity") {
                    break;
                }
            }
            let seq = t.next_seq;
            t.next_seq += 1;
            t.bytes += bytes;
            *t.per_client.entry(client.clone()).or_default() += 1;
            t.entries.insert(
                key.clone(),
                Held {
                    seq,
                    since: Instant::now(),
                    bytes,
                    client,
                    claim: claim.clone(),
                    handoff,
                },
            );
            t.queue.push_back((seq, key.clone()));
            t.compact();
            t.publish();
            seq
        };
        let expiry = Instant::now() + self.config.max_age;
        let entry = Entry {
            table: self.table.clone(),
            key,
            seq,
        };
        tokio::spawn(keep(
            scan,
            claim,
            tx,
            (expiry, drain.clone()),
            self.config.ahead_bytes(),
            entry,
        ));
    }

    /// Scans held and their estimated bytes (calls' leases aside).
    pub(super) fn held(&self) -> (usize, usize) {
        let t = self.table.lock().expect("continuation table");
        (t.entries.len(), t.bytes)
    }

    /// Takes the scan held for `req`'s token, waiting no later than `until`
    /// for its task to hand it over; or, when none is held at the token's
    /// position, the scan of the same client and query held furthest along
    /// short of it, moved forward to it ([`Scan::skip_to`]): the chain's
    /// calls in between went elsewhere (round-robin over replicas), and
    /// what that scan fetched ahead meanwhile serves this call. None on a
    /// miss.
    pub(super) async fn take(&self, req: &ReadRequest, until: Instant) -> Option<Scan<S>> {
        let frontier = req.resume_after.as_ref()?;
        if !self.config.enabled() {
            // Off, every token read resumes from the token alone.
            metrics::counter!(telemetry::CONTINUATIONS, "result" => "miss").increment(1);
            return None;
        }
        let (held, behind) = {
            let mut t = self.table.lock().expect("continuation table");
            let key = HeldKey::new(req, frontier);
            let held = if let Some(h) = t.remove(&key) {
                (Some(h), false)
            } else {
                let behind = t.behind(&key, &req.client);
                (behind.and_then(|k| t.remove(&k)), true)
            };
            t.publish();
            held
        };
        let scan = match held {
            Some(h) => {
                h.claim.notify_one();
                tokio::time::timeout_at(until, h.handoff)
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            None => None,
        };
        let result = match (&scan, behind) {
            (None, _) => "miss",
            (Some(_), false) => "hit",
            (Some(_), true) => "skip",
        };
        metrics::counter!(telemetry::CONTINUATIONS, "result" => result).increment(1);
        scan.map(|mut scan| {
            if behind {
                scan.skip_to(frontier);
            } else {
                scan.alternating = false;
            }
            scan
        })
    }
}

/// Most bytes one held scan holds through fetching ahead.
const MAX_FETCH_AHEAD_BYTES: usize = 4 << 20;

/// What the scan of a call in flight holds, counted against the cache's
/// bytes from its first fetch ahead ([`Lease::account`]) until the call
/// ends: the lease is released then, or handed over to the scan's entry
/// when it is held ([`Continuations::hold`]). Without it a call fetched
/// ahead up to [`ContinuationConfig::ahead_bytes`] uncounted, so calls in
/// flight could hold their number times that beside the cache.
pub(super) struct Lease<S> {
    table: Arc<Mutex<Table<S>>>,
    bytes: usize,
}

impl<S> Lease<S> {
    /// Records that the call's scan holds an estimated `bytes` and returns
    /// how many it may hold through fetching ahead: `want`, but no more
    /// than its `bytes` and the room held scans and other calls leave. A
    /// call is being read, so like a scan held less than
    /// [`STALE_FOR_ROOM`] ago it makes room by evicting scans held longer
    /// than that.
    pub(super) fn account(&mut self, bytes: usize, want: usize) -> usize {
        let mut t = self.table.lock().expect("continuation table");
        t.leased = t.leased - self.bytes + bytes;
        self.bytes = bytes;
        while bytes.saturating_add(t.room()) < want && t.evict_stale(u64::MAX) {}
        let allowed = want.min(bytes.saturating_add(t.room()));
        t.publish();
        allowed
    }
}

impl<S> Drop for Lease<S> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            let mut t = self.table.lock().expect("continuation table");
            t.leased -= self.bytes;
            t.publish();
        }
    }
}

/// A held scan's entry in the table, as its task sees it.
struct Entry<S> {
    table: Arc<Mutex<Table<S>>>,
    key: HeldKey,
    seq: u64,
}

impl<S> Entry<S> {
    /// Records that the scan holds an estimated `bytes` and returns how many
    /// it may hold, at most `want` (see [`Table::account`]). Once its entry
    /// is gone, `want`: a call took it and is about to be handed it (its
    /// fetching ahead is the call's, as in any call), or it was evicted and
    /// its task ends at the next turn (the handoff closed).
    fn account(&self, bytes: usize, want: usize) -> usize {
        let mut t = self.table.lock().expect("continuation table");
        let allowed = t.account(&self.key, self.seq, bytes, want);
        t.publish();
        allowed.unwrap_or(want)
    }

    /// Drops the entry at its age, unless a call took it or a newer scan
    /// replaced it.
    fn expire(&self) {
        let mut t = self.table.lock().expect("continuation table");
        if t.entries.get(&self.key).is_some_and(|h| h.seq == self.seq) {
            t.remove(&self.key);
            metrics::counter!(telemetry::CONTINUATION_EVICTIONS, "cause" => "age").increment(1);
            t.publish();
        }
    }
}

/// The task of a held scan: lands its pages in flight and fetches ahead
/// (up to `ahead_bytes` held) until a call claims it (then hands it over),
/// it expires at `until.0` ([`Entry::expire`] drops its entry), its entry
/// is evicted (the handoff closes), or `until.1` is cancelled (the server
/// drains). It fetches ahead only into room the other held scans leave
/// ([`Entry::account`]), so what held scans fetch while their clients are
/// away stays within the cache's bytes: a scan held with a few rows
/// otherwise grew to the fetch-ahead bound unaccounted (245 scans held
/// after one-row reads grew a server by 800 MiB while it counted 1.5 MB
/// held).
///
/// A page that fails makes it rest before it fetches again
/// ([`FAILED_REST`], doubling): a failure can come at once (the storage
/// circuit open), and a scan that asked again at once looped without ever
/// waiting, holding its worker thread, and with it the runtime's timers
/// and sockets, until the circuit let a request through two seconds later:
/// every read of the replica answered seconds past its budget.
async fn keep<S: Storage>(
    mut scan: Scan<S>,
    claim: Arc<Notify>,
    mut tx: oneshot::Sender<Scan<S>>,
    until: (Instant, CancellationToken),
    ahead_bytes: usize,
    entry: Entry<S>,
) {
    let (expiry, drain) = until;
    let pressure = scan.engine.pressure.clone();
    let mut failures = 0u32;
    let mut rest_until: Option<Instant> = None;
    loop {
        let resting = rest_until.is_some_and(|t| Instant::now() < t);
        let ahead = if resting {
            entry.account(scan.held_bytes(), 0)
        } else {
            let want = if scan.reads_ahead() {
                pressure.ahead(ahead_bytes)
            } else {
                0
            };
            let ahead = entry.account(scan.held_bytes(), want);
            scan.fetch_ahead(ahead);
            // The pages just asked for count from now.
            entry.account(scan.held_bytes(), 0);
            ahead
        };
        let landing = !scan.in_flight.is_empty();
        // Kept from fetching (by load, by the others' bytes or by a
        // failure) with nothing landing and room to want: look again later.
        let idle = !landing && ahead < ahead_bytes && scan.held_bytes() < ahead_bytes;
        let recheck = match rest_until {
            Some(t) if resting => t.min(Instant::now() + PRESSURE_RECHECK),
            _ => Instant::now() + PRESSURE_RECHECK,
        };
        tokio::select! {
            biased;
            () = claim.notified() => {
                let _ = tx.send(scan);
                return;
            }
            () = tx.closed() => return,
            () = drain.cancelled() => return,
            () = tokio::time::sleep_until(expiry) => {
                entry.expire();
                return;
            }
            Some(fetched) = scan.in_flight.next(), if landing => {
                if scan.land(fetched) {
                    failures = failures.saturating_add(1);
                    let rest = FAILED_REST.saturating_mul(1 << (failures - 1).min(16));
                    rest_until = Some(Instant::now() + rest.min(FAILED_REST_MAX));
                } else {
                    failures = 0;
                }
            }
            () = tokio::time::sleep_until(recheck), if idle => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_zero_bound_turns_it_off() {
        assert!(ContinuationConfig::default().enabled());
        assert!(!ContinuationConfig::off().enabled());
        for c in [
            ContinuationConfig {
                max_entries: 0,
                ..ContinuationConfig::default()
            },
            ContinuationConfig {
                per_client: 0,
                ..ContinuationConfig::default()
            },
            ContinuationConfig {
                max_age: Duration::ZERO,
                ..ContinuationConfig::default()
            },
        ] {
            assert!(!c.enabled(), "{c:?}");
        }
    }

    #[test]
    fn keys_differ_by_every_bound_field() {
        use crate::engine::budget::{Budget, BudgetConfig};
        use crate::model::Namespace;
        let ns = Arc::new(Namespace {
            name: "n".into(),
            bucket_width_micros: 10,
            shards: 2,
            retention_seconds: 0,
            indexes_shards: true,
        });
        let req = ReadRequest {
            namespace: ns,
            series_id: "s".into(),
            start: 0,
            end: 100,
            resume_after: None,
            shard_starts: Vec::new(),
            order: Order::Ascending,
            row_limit: 10,
            byte_limit: 1000,
            budget: Budget::new(&BudgetConfig::default(), None, None),
            client: "c".into(),
        };
        let k = Key::new(5, "a");
        let base = HeldKey::new(&req, &k);
        assert_eq!(base, HeldKey::new(&req, &k));
        assert_ne!(base, HeldKey::new(&req, &Key::new(5, "b")));
        let mut other = req.clone();
        other.end = 99;
        assert_ne!(base, HeldKey::new(&other, &k));
        let mut other = req.clone();
        other.order = Order::Descending;
        assert_ne!(base, HeldKey::new(&other, &k));
        let mut other = req.clone();
        other.series_id = "t".into();
        assert_ne!(base, HeldKey::new(&other, &k));
        let mut other = req;
        other.client = "d".into();
        assert_eq!(base, HeldKey::new(&other, &k), "any client may continue");
    }
}
