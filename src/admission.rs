//! Adaptive admission of reads: how many scans this replica runs at once is
//! learnt from how fast reads get their first row, in the style of Netflix
//! concurrency-limits' Gradient2, under the static [`Bulkhead`] bounds,
//! which stay as ceilings.
//!
//! Invariants:
//! * A read is admitted or refused at once; it never waits in a queue where
//!   its deadline could pass.
//! * Admitted reads never exceed the current limit, the static bounds, a
//!   namespace's fair share of the limit while other namespaces read, nor,
//!   for [`Class::Batch`] reads, [`BATCH_SHARE`] of the limit: batch reads
//!   yield to interactive ones under pressure.
//! * The limit stays within `[min_limit, ceiling]`; it falls, by at most a
//!   tenth per window, when the time to a read's first row rises past
//!   [`TOLERANCE`] times its long-run average (and by a tenth in a window
//!   with a late read while more than [`LATE_TARGET`] of recent reads were
//!   late: see [`Ticket::observe`]; that cut is a half where more than a
//!   quarter of the window's reads failed for want of budget, see
//!   [`FLOODED_BACKOFF`]), and grows back by about a fifth of
//!   √limit per window while latency is flat and the limit is in use.
//!
//! The signal is the time from a call's arrival to its first row: it
//! includes waiting for a worker, the namespace and bucket lookups and the
//! first storage round trip, all of which grow when the replica or its
//! storage is saturated, and it does not grow with the budget the way a
//! partial read's total time does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::bulkhead::{Bulkhead, Full, ScanPermit};
use crate::engine::Pressure;
use crate::telemetry;

/// Share of the limit batch reads may take, so interactive reads find room.
pub const BATCH_SHARE: f64 = 0.75;

/// How many reads may run for a batch read to be admitted beside them:
/// fewer than [`BATCH_SHARE`] of `limit`. With a limit of 5, fewer than
/// 3.75 (so 3 running admit a fourth); with a limit of 1 a batch read may
/// run alone.
fn batch_share(limit: usize) -> usize {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let share = (limit as f64 * BATCH_SHARE).ceil() as usize;
    share.max(1)
}
/// Lower bound of the adaptive limit per core of this machine. A read
/// drives storage at full speed (pages pipelined per shard), so few reads
/// saturate a replica and its storage: on the 2-core benchmark machine, one
/// token follower under a 10 ms SLO got 330-440k rows/s, four together
/// about the same, sixteen 160-250k with client p99 1.1-1.2 times the SLO.
/// With 8 per core the limit could not fall to where answers come on time.
pub const MIN_LIMIT_PER_CORE: usize = 2;
/// Starting limit per core of this machine. A replica starts where a few
/// reads per core already saturate it and its storage (see
/// [`MIN_LIMIT_PER_CORE`]) and grows while latency stays flat: flooded at
/// 32 on the 2-core benchmark machine, a fresh replica admitted reads that
/// failed DEADLINE_EXCEEDED until its limit came down.
pub const INITIAL_LIMIT_PER_CORE: usize = 8;
/// A window of samples closes after this long (once it holds a sample) ...
const WINDOW: Duration = Duration::from_millis(50);
/// ... or once it holds this many samples.
const WINDOW_SAMPLES: usize = 64;
/// Windows the long-run average spans.
const LONG_WINDOWS: f64 = 20.0;
/// Latency may reach this multiple of the long-run average before the limit
/// falls.
pub const TOLERANCE: f64 = 2.5;
/// Weight of a new estimate in the limit.
const SMOOTHING: f64 = 0.2;
/// A window with a late answer cuts the limit to at most this share, when
/// late answers are more than [`LATE_TARGET`] of recent reads.
const LATE_BACKOFF: f64 = 0.9;
/// A window in which more than a quarter of the reads failed for want of
/// budget (not one row by their stop: the replica is flooded) cuts the
/// limit to at most this share at once, as an AIMD limit halves on a
/// drop. Cut by a tenth a window, a fresh replica flooded at its starting
/// limit took about half a second to come down to where answers are on
/// time, failing the reads it admitted meanwhile: with 2,000 reads a
/// second under a 10 ms SLO against the local node, 323-360 of about 1,700
/// in the first 1.5 s failed DEADLINE_EXCEEDED; with this cut 113-126, and
/// with the lower start ([`INITIAL_LIMIT_PER_CORE`]) too 53-59 of about
/// 1,250. Late answers alone do not halve it (with a cut at half a window
/// late, goodput under steady overload fell in two cells of four); nor do
/// failures in a window of mostly good reads.
pub const FLOODED_BACKOFF: f64 = 0.5;
/// The share of late reads the limit tolerates: the promise is p99 within
/// budget, so one late read in a few hundred is not saturation, while a
/// cut at each one pinned the limit at its floor under a 200 ms SLO (a
/// late read every few windows, growth of a fifth of √limit per window).
pub const LATE_TARGET: f64 = 0.01;
/// Weight of one read in the moving share of late reads (about the last
/// 200 reads).
const LATE_ALPHA: f64 = 0.005;

/// Priority class of a read, from the `x-hourglass-class` header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Class {
    /// A caller waiting on the answer (the default).
    #[default]
    Interactive,
    /// Background work (a token follower, an export): yields under pressure.
    Batch,
}

/// Header naming a read's priority class.
pub const CLASS_HEADER: &str = "x-hourglass-class";

impl Class {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Interactive => "interactive",
            Self::Batch => "batch",
        }
    }

    /// Parses a header value: `interactive` or `batch`, case-insensitively.
    pub fn parse(value: &str) -> Option<Self> {
        if value.eq_ignore_ascii_case("interactive") {
            Some(Self::Interactive)
        } else if value.eq_ignore_ascii_case("batch") {
            Some(Self::Batch)
        } else {
            None
        }
    }
}

/// Admission settings.
#[derive(Clone, Copy, Debug)]
pub struct AdmissionConfig {
    /// False: only the static bulkhead bounds scans (the baseline).
    pub adaptive: bool,
    pub min_limit: usize,
    pub initial_limit: usize,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Self {
            adaptive: true,
            min_limit: MIN_LIMIT_PER_CORE * cores,
            initial_limit: INITIAL_LIMIT_PER_CORE * cores,
        }
    }
}

/// The Gradient2-style limit, fed one sample per answered read.
#[derive(Debug)]
pub struct GradientLimit {
    limit: f64,
    min: f64,
    max: f64,
    long: Option<f64>,
    window_start: Instant,
    sum: f64,
    /// Reads in the window, and those of them with a time to first row.
    count: usize,
    timed: usize,
    late: bool,
    /// Reads in the window that failed for want of budget.
    failed: usize,
    /// Moving share of late reads (see [`LATE_TARGET`]).
    late_share: f64,
    /// Most reads in flight seen in this window.
    busiest: usize,
}

impl GradientLimit {
    /// A limit starting at `initial` within `[min, max]`.
    pub fn new(initial: usize, min: usize, max: usize) -> Self {
        let max = max.max(1) as f64;
        let min = (min.max(1) as f64).min(max);
        Self {
            limit: (initial as f64).clamp(min, max),
            min,
            max,
            long: None,
            window_start: Instant::now(),
            sum: 0.0,
            count: 0,
            timed: 0,
            late: false,
            failed: 0,
            late_share: 0.0,
            busiest: 0,
        }
    }

    /// The current limit, whole.
    pub fn limit(&self) -> usize {
        // Clamped to [1, max], which came from a usize.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let l = self.limit.floor() as usize;
        l
    }

    /// Records one read: its time to first row (None when it says nothing
    /// of the load: a continued read had its first row in hand), whether
    /// it was late, and the reads in flight when it ended.
    pub fn sample(&mut self, to_first_row: Option<Duration>, late: bool, in_flight: usize) {
        if let Some(t) = to_first_row {
            self.sum += t.as_secs_f64();
            self.timed += 1;
        }
        self.count += 1;
        self.late |= late;
        self.late_share += LATE_ALPHA * (f64::from(u8::from(late)) - self.late_share);
        self.busiest = self.busiest.max(in_flight);
        let now = Instant::now();
        if self.count >= WINDOW_SAMPLES || now - self.window_start >= WINDOW {
            self.close_window(now);
        }
    }

    /// Records one read that failed for want of budget after `elapsed`: a
    /// late read, and evidence of a flood (see [`FLOODED_BACKOFF`]).
    pub fn sample_failed(&mut self, elapsed: Duration, in_flight: usize) {
        self.failed += 1;
        self.sample(Some(elapsed), true, in_flight);
    }

    fn close_window(&mut self, now: Instant) {
        // A window without a timed read reads as flat latency.
        let gradient = if self.timed == 0 {
            1.0
        } else {
            let short = (self.sum / self.timed as f64).max(1e-6);
            let long = match self.long {
                None => short,
                Some(long) => {
                    let mut long = long + (short - long) / LONG_WINDOWS;
                    // After a long overload the average lags: let it come down.
                    if long / short > 2.0 {
                        long *= 0.95;
                    }
                    long
                }
            };
            self.long = Some(long);
            (TOLERANCE * long / short).clamp(0.5, 1.0)
        };
        let limit = self.limit;
        let mut next = if gradient >= 1.0 && (self.busiest as f64) < limit / 2.0 {
            // Flat latency with the limit mostly unused says nothing about
            // more: do not grow on it.
            limit
        } else {
            let estimate = limit * gradient + limit.sqrt();
            limit * (1.0 - SMOOTHING) + estimate * SMOOTHING
        };
        if self.late && self.late_share > LATE_TARGET {
            let backoff = if 4 * self.failed > self.count {
                FLOODED_BACKOFF
            } else {
                LATE_BACKOFF
            };
            next = next.min(limit * backoff);
        }
        self.limit = next.clamp(self.min, self.max);
        self.window_start = now;
        self.sum = 0.0;
        self.count = 0;
        self.timed = 0;
        self.late = false;
        self.failed = 0;
        self.busiest = 0;
        metrics::gauge!(telemetry::ADMISSION_LIMIT).set(self.limit.floor());
    }
}

/// What the adaptive side counts.
#[derive(Debug)]
struct Adaptive {
    limit: GradientLimit,
    in_flight: usize,
    by_namespace: HashMap<Arc<str>, usize>,
}

/// Admission of reads on this replica: the static bulkhead, and the
/// adaptive limit when on.
#[derive(Debug)]
pub struct Admission {
    bulkhead: Bulkhead,
    adaptive: Option<Arc<Mutex<Adaptive>>>,
    /// Raised at each refusal.
    pressure: Option<Arc<Pressure>>,
}

impl Admission {
    /// `bulkhead`'s bounds are the ceilings of the adaptive limit.
    pub fn new(bulkhead: Bulkhead, config: AdmissionConfig) -> Self {
        let adaptive = config.adaptive.then(|| {
            Arc::new(Mutex::new(Adaptive {
                limit: GradientLimit::new(config.initial_limit, config.min_limit, bulkhead.limit()),
                in_flight: 0,
                by_namespace: HashMap::new(),
            }))
        });
        // Off, the static bound is the limit (and replaces what an earlier
        // admission of this process published).
        let limit = adaptive.as_ref().map_or(bulkhead.limit(), |a| {
            a.lock().expect("admission").limit.limit()
        });
        metrics::gauge!(telemetry::ADMISSION_LIMIT).set(limit as f64);
        Self {
            bulkhead,
            adaptive,
            pressure: None,
        }
    }

    /// Raises `pressure` at each refusal, so fetching ahead yields to the
    /// reads admitted.
    #[must_use]
    pub fn with_pressure(mut self, pressure: Arc<Pressure>) -> Self {
        self.pressure = Some(pressure);
        self
    }

    /// A ticket for one read of `namespace`, or why it is refused (and then
    /// the pressure is raised).
    pub fn try_admit(&self, namespace: &str, class: Class) -> Result<Ticket, Full> {
        let admitted = self.admit(namespace, class);
        if admitted.is_err() {
            if let Some(p) = &self.pressure {
                p.raise();
            }
        }
        admitted
    }

    fn admit(&self, namespace: &str, class: Class) -> Result<Ticket, Full> {
        let permit = self.bulkhead.try_acquire(namespace)?;
        let Some(adaptive) = &self.adaptive else {
            // Without the adaptive limit, batch reads yield within the
            // static one (the count includes this read's permit).
            let running = self.bulkhead.in_use() - 1;
            if class == Class::Batch && running >= batch_share(self.bulkhead.limit()) {
                return Err(Full::Batch {
                    limit: batch_share(self.bulkhead.limit()),
                });
            }
            return Ok(Ticket::new(permit, None));
        };
        let mut a = adaptive.lock().expect("admission");
        let limit = a.limit.limit();
        if a.in_flight >= limit {
            return Err(Full::Adaptive { limit });
        }
        if class == Class::Batch && a.in_flight >= batch_share(limit) {
            return Err(Full::Batch {
                limit: batch_share(limit),
            });
        }
        let mine = a.by_namespace.get(namespace).copied().unwrap_or(0);
        let reading = a.by_namespace.len() + usize::from(mine == 0);
        let share = limit.div_ceil(reading).max(1);
        if mine >= share {
            return Err(Full::FairShare {
                name: namespace.to_string(),
                share,
            });
        }
        a.in_flight += 1;
        let name: Arc<str> = namespace.into();
        *a.by_namespace.entry(name.clone()).or_insert(0) += 1;
        Ok(Ticket::new(permit, Some((adaptive.clone(), name))))
    }

    /// The current adaptive limit (None when off).
    pub fn limit(&self) -> Option<usize> {
        self.adaptive
            .as_ref()
            .map(|a| a.lock().expect("admission").limit.limit())
    }
}

/// One admitted read. Its static slot ([`Bulkhead`]) is held until the
/// ticket is dropped (until its client took its response), so clients that
/// do not read bound what the server buffers; its share of the adaptive
/// limit as long, or until [`Ticket::scan_ended`] (a stream's scan, whose
/// client may leave its queue unread for the 10-20 s the send stall takes
/// to close it: held to the end, eight such streams held a limit of six
/// and every other read was refused meanwhile). [`Ticket::observe`] feeds
/// the limit.
#[derive(Debug)]
pub struct Ticket {
    _permit: ScanPermit,
    _in_flight: telemetry::ScanInFlight,
    adaptive: Mutex<Option<Share>>,
}

/// A read's share of the adaptive limit: the limit, and its namespace.
type Share = (Arc<Mutex<Adaptive>>, Arc<str>);

impl Ticket {
    fn new(permit: ScanPermit, adaptive: Option<Share>) -> Self {
        Self {
            _permit: permit,
            _in_flight: telemetry::ScanInFlight::enter(),
            adaptive: Mutex::new(adaptive),
        }
    }

    /// The read's scan is over (its response may still be on its way):
    /// its share of the adaptive limit and of its namespace's fair share
    /// goes back; the static slot stays until the ticket is dropped.
    /// Idempotent. Feed the limit ([`Ticket::observe`]) before, or the
    /// sample goes nowhere.
    pub fn scan_ended(&self) {
        let taken = self.adaptive.lock().expect("ticket").take();
        if let Some((a, name)) = taken {
            let mut a = a.lock().expect("admission");
            a.in_flight -= 1;
            if let Some(n) = a.by_namespace.get_mut(&name) {
                *n -= 1;
                if *n == 0 {
                    a.by_namespace.remove(&name);
                }
            }
        }
    }

    /// Records an answered read's time from arrival to its first row and
    /// whether it was late: answered after its budget, or got its first row
    /// only in the second half of it (the service decides; see
    /// `server::service::observe`). A read that failed for want of budget
    /// goes to [`Ticket::observe_failed`].
    pub fn observe(&self, to_first_row: Option<Duration>, late: bool) {
        self.with_limit(|limit, in_flight| limit.sample(to_first_row, late, in_flight));
    }

    /// Records that the read failed for want of budget (not one row by its
    /// stop) after `elapsed`: see [`GradientLimit::sample_failed`].
    pub fn observe_failed(&self, elapsed: Duration) {
        self.with_limit(|limit, in_flight| limit.sample_failed(elapsed, in_flight));
    }

    fn with_limit(&self, f: impl FnOnce(&mut GradientLimit, usize)) {
        if let Some((a, _)) = &*self.adaptive.lock().expect("ticket") {
            let mut a = a.lock().expect("admission");
            let in_flight = a.in_flight;
            f(&mut a.limit, in_flight);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.scan_ended();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Admission under a static bound of `bound` scans (per namespace too),
    /// with the adaptive limit (`adaptive`) between `min` and the bound,
    /// starting at `initial`.
    fn admission(bound: usize, adaptive: bool, min: usize, initial: usize) -> Admission {
        Admission::new(
            Bulkhead::new(bound, bound),
            AdmissionConfig {
                adaptive,
                min_limit: min,
                initial_limit: initial,
            },
        )
    }

    /// Feeds `windows` windows of samples of `latency` with the limit in use.
    async fn feed(l: &mut GradientLimit, latency: Duration, windows: usize) {
        for _ in 0..windows {
            for _ in 0..4 {
                let busy = l.limit();
                l.sample(Some(latency), false, busy);
            }
            tokio::time::advance(WINDOW).await;
            let busy = l.limit();
            l.sample(Some(latency), false, busy);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_falls_when_latency_rises_and_recovers_when_it_falls() {
        let mut l = GradientLimit::new(32, 4, 256);
        feed(&mut l, 2 * MS, 40).await;
        let steady = l.limit();
        assert!(steady >= 32, "flat latency in use lets it grow: {steady}");
        feed(&mut l, 20 * MS, 15).await;
        let loaded = l.limit();
        assert!(
            loaded <= steady * 9 / 10,
            "ten times the latency: {steady} -> {loaded}"
        );
        feed(&mut l, 2 * MS, 60).await;
        let recovered = l.limit();
        assert!(
            recovered > loaded * 2,
            "latency back: {loaded} -> {recovered}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn late_answers_cut_the_limit_and_unused_room_does_not_grow_it() {
        let mut l = GradientLimit::new(32, 4, 256);
        for _ in 0..5 {
            l.sample(Some(MS), true, 32);
            tokio::time::advance(WINDOW).await;
        }
        assert!(l.limit() <= 32 * 9 / 10 * 9 / 10, "{}", l.limit());
        let before = l.limit();
        for _ in 0..50 {
            l.sample(Some(MS), false, 1);
            tokio::time::advance(WINDOW).await;
        }
        assert_eq!(
            l.limit(),
            before,
            "one read in flight is no evidence for more"
        );
        for _ in 0..200 {
            l.sample(Some(100 * MS), true, 100);
            tokio::time::advance(WINDOW).await;
        }
        assert_eq!(l.limit(), 4, "never below the minimum");
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_of_failed_reads_halves_the_limit_late_answers_cut_a_tenth() {
        // Windows close every 64 samples; latency flat, limit in use.
        let window = |l: &mut GradientLimit, failed: usize, late: usize| {
            let busy = l.limit();
            for i in 0..WINDOW_SAMPLES {
                if i < failed {
                    l.sample_failed(10 * MS, busy);
                } else {
                    l.sample(Some(MS), i < failed + late, busy);
                }
            }
        };
        // The limit itself (not floored): each cut is exact.
        let flooded = |failed: usize, late: usize| {
            let mut l = GradientLimit::new(64, 2, 256);
            window(&mut l, 0, 0);
            let before = l.limit;
            window(&mut l, failed, late);
            l.limit / before
        };
        let cut = flooded(WINDOW_SAMPLES / 4 + 1, 0);
        assert!(
            (cut - FLOODED_BACKOFF).abs() < 1e-9,
            "over a quarter failed: {cut}"
        );
        let cut = flooded(WINDOW_SAMPLES / 4, 0);
        assert!((cut - LATE_BACKOFF).abs() < 1e-9, "a quarter failed: {cut}");
        // As many late answers, with their rows: a tenth.
        let cut = flooded(0, WINDOW_SAMPLES / 2);
        assert!((cut - LATE_BACKOFF).abs() < 1e-9, "late answers: {cut}");
        // Halving stops at the minimum.
        let mut l = GradientLimit::new(64, 4, 256);
        for _ in 0..10 {
            window(&mut l, WINDOW_SAMPLES, 0);
        }
        assert_eq!(l.limit(), 4);
        // A failure in a window of a few reads after a long spell of reads
        // on time is no flood (only its latency counts, in the gradient).
        let mut l = GradientLimit::new(64, 2, 256);
        for _ in 0..10 {
            window(&mut l, 0, 0);
        }
        let (before, busy) = (l.limit, l.limit());
        l.sample_failed(10 * MS, busy);
        l.sample(Some(MS), false, busy);
        tokio::time::advance(WINDOW).await;
        l.sample(Some(MS), false, busy);
        let cut = l.limit / before;
        assert!(cut > LATE_BACKOFF, "{cut}");
    }

    #[test]
    fn the_default_limits_scale_with_the_cores() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let cfg = AdmissionConfig::default();
        assert_eq!(cfg.min_limit, MIN_LIMIT_PER_CORE * cores);
        assert_eq!(cfg.initial_limit, INITIAL_LIMIT_PER_CORE * cores);
    }

    #[tokio::test(start_paused = true)]
    async fn reads_beyond_the_limit_the_batch_share_or_a_fair_share_are_refused() {
        let a = admission(100, true, 4, 8);
        let batch: Vec<_> = (0..6)
            .map(|_| a.try_admit("a", Class::Batch).unwrap())
            .collect();
        assert_eq!(
            a.try_admit("a", Class::Batch).unwrap_err(),
            Full::Batch { limit: 6 }
        );
        // Another namespace's share is half the limit; "a" holds 6 of 8.
        let b1 = a.try_admit("b", Class::Interactive).unwrap();
        let b2 = a.try_admit("b", Class::Interactive).unwrap();
        assert_eq!(
            a.try_admit("b", Class::Interactive).unwrap_err(),
            Full::Adaptive { limit: 8 }
        );
        drop(batch);
        let b3 = a.try_admit("b", Class::Interactive).unwrap();
        let b4 = a.try_admit("b", Class::Interactive).unwrap();
        let a1 = a.try_admit("a", Class::Interactive).unwrap();
        assert_eq!(
            a.try_admit("b", Class::Interactive).unwrap_err(),
            Full::FairShare {
                name: "b".into(),
                share: 4
            },
            "two namespaces reading share the limit"
        );
        drop((b1, b2, b3, b4, a1));
        let all: Vec<_> = (0..8)
            .map(|_| a.try_admit("c", Class::Interactive).unwrap())
            .collect();
        assert_eq!(all.len(), 8, "slots come back on drop");
    }

    /// A read whose scan ended gives back its share of the adaptive limit
    /// and of its namespace's fair share, but keeps its static slot until
    /// its response is taken (the ticket dropped).
    #[tokio::test(start_paused = true)]
    async fn a_scan_that_ended_frees_its_adaptive_slot_but_not_its_static_one() {
        let a = admission(4, true, 2, 2);
        let sending: Vec<_> = (0..2)
            .map(|_| a.try_admit("a", Class::Interactive).unwrap())
            .collect();
        assert_eq!(
            a.try_admit("a", Class::Interactive).unwrap_err(),
            Full::Adaptive { limit: 2 }
        );
        for t in &sending {
            t.scan_ended();
            t.scan_ended();
        }
        let b = a.try_admit("b", Class::Interactive).unwrap();
        let a1 = a.try_admit("a", Class::Interactive).unwrap();
        assert!(
            matches!(
                a.try_admit("c", Class::Interactive).unwrap_err(),
                Full::Server { limit: 4 }
            ),
            "the static slots stay taken until the responses are sent"
        );
        drop(sending);
        drop((a1, b));
        let again: Vec<_> = (0..2)
            .map(|_| a.try_admit("c", Class::Interactive).unwrap())
            .collect();
        assert_eq!(again.len(), 2, "dropping after scan_ended frees once");
        assert_eq!(
            a.try_admit("c", Class::Interactive).unwrap_err(),
            Full::Adaptive { limit: 2 }
        );
    }

    #[test]
    fn classes_are_read_in_any_case_and_nothing_else() {
        assert_eq!(Class::parse("batch"), Some(Class::Batch));
        assert_eq!(Class::parse("BATCH"), Some(Class::Batch));
        assert_eq!(Class::parse("Interactive"), Some(Class::Interactive));
        for bad in ["", " batch", "batch ", "bulk", "batches"] {
            assert_eq!(Class::parse(bad), None, "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batch_reads_run_while_fewer_than_three_quarters_of_the_limit_do() {
        for adaptive in [true, false] {
            for (limit, admitted) in [(1, 1), (4, 3), (5, 4), (6, 5), (8, 6)] {
                // Off, the static bound is the limit.
                let static_limit = if adaptive { 100 } else { limit };
                let a = admission(static_limit, adaptive, 1, limit);
                let batch: Vec<_> = (0..admitted)
                    .map(|i| {
                        a.try_admit("a", Class::Batch).unwrap_or_else(|e| {
                            panic!("adaptive {adaptive}, limit {limit}: read {i} refused: {e:?}")
                        })
                    })
                    .collect();
                let full = match (admitted == limit, adaptive) {
                    // A batch read alone under a limit of 1.
                    (true, true) => Full::Adaptive { limit },
                    (true, false) => Full::Namespace {
                        name: "a".into(),
                        limit,
                    },
                    (false, _) => Full::Batch { limit: admitted },
                };
                assert_eq!(
                    a.try_admit("a", Class::Batch).unwrap_err(),
                    full,
                    "adaptive {adaptive}, limit {limit}: {} running",
                    batch.len()
                );
                // Interactive reads take the rest.
                let rest: Vec<_> = (admitted..limit)
                    .map(|_| a.try_admit("a", Class::Interactive).unwrap())
                    .collect();
                assert_eq!(batch.len() + rest.len(), limit);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_rare_late_read_does_not_cut_the_limit_but_a_steady_share_does() {
        let mut l = GradientLimit::new(20, 2, 100);
        // Windows close every 64 samples; latency flat, limit in use.
        for _ in 0..640 {
            l.sample(Some(MS), false, 20);
        }
        let before = l.limit();
        // One late read, the first in a long while: under LATE_TARGET of
        // the recent reads, its window does not cut.
        for i in 0..WINDOW_SAMPLES {
            l.sample(Some(MS), i == 10, 20);
        }
        let after_one = l.limit();
        assert!(after_one >= before, "{before} -> {after_one}");
        // One in twenty: the limit falls.
        for i in 0..400 {
            l.sample(Some(MS), i % 20 == 0, 20);
        }
        assert!(l.limit() < after_one, "{after_one} -> {}", l.limit());
        // Continued reads give no latency: windows of them alone read as
        // flat, and do not cut (after the window open since the late reads).
        for _ in 0..WINDOW_SAMPLES {
            l.sample(None, false, 1);
        }
        let steady = l.limit();
        for _ in 0..640 {
            l.sample(None, false, 1);
        }
        assert!(l.limit() >= steady, "{steady} -> {}", l.limit());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_raises_the_pressure_that_pauses_fetching_ahead() {
        let pressure = Arc::new(Pressure::default());
        let a = admission(2, true, 1, 1).with_pressure(pressure.clone());
        let one = a.try_admit("a", Class::Interactive).unwrap();
        assert!(!pressure.is_high(), "an admitted read raises nothing");
        assert!(a.try_admit("a", Class::Interactive).is_err());
        assert!(pressure.is_high());
        drop(one);
        tokio::time::advance(crate::engine::PRESSURE_HOLD).await;
        assert!(
            !pressure.is_high(),
            "it falls a hold after the last refusal"
        );
        let _again = a.try_admit("a", Class::Interactive).unwrap();
        assert!(!pressure.is_high());
    }

    #[test]
    fn the_static_bulkhead_bounds_first_and_off_means_only_it() {
        let off = Admission::new(
            Bulkhead::new(2, 2),
            AdmissionConfig {
                adaptive: false,
                ..AdmissionConfig::default()
            },
        );
        let _held = (
            off.try_admit("a", Class::Batch).unwrap(),
            off.try_admit("a", Class::Batch).unwrap(),
        );
        assert_eq!(
            off.try_admit("b", Class::Interactive).unwrap_err(),
            Full::Server { limit: 2 }
        );
        assert_eq!(off.limit(), None);
    }
}
