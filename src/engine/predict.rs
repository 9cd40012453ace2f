//! Learns how long storage pages take, so the engine sizes pages to the time
//! left and does not start a page that cannot land before the deadline.
//!
//! The model is `latency = base + rows * per_row`, fitted by exponentially
//! weighted least squares over observed pages, one model per
//! namespace (layouts differ by namespace) shared by all reads of it.
//!
//! The slope is a ridge estimate pulled toward the prior per-row cost: pages
//! of nearly one size cannot tell a fixed cost from a per-row cost, and an
//! unregularised fit over them let scheduling noise set the slope (tens of
//! µs per row, ten times the truth), after which pages shrank to a few dozen
//! rows, never varied enough to correct it, and tight budgets ended empty
//! (the false BUDGET_TOO_SMALL). Only pages of clearly different sizes move
//! the slope away from the prior.
//!
//! Beside the line, the model tracks how far pages stray from it: a moving
//! mean and mean deviation of observed ÷ fitted latency (as TCP estimates
//! its retransmission timeout). The tail (mean plus [`TAIL_DEVIATIONS`]
//! deviations) says how late a slow page lands: a call with no row yet
//! sends its last-chance probes by it.
//!
//! Invariant: a page slower than the tail widens the tail but enters the
//! line as a page at the tail. Taken at its word, one page stalled by a
//! storage pause (30 ms among 1 ms pages) raised the fitted base by a tenth
//! of the pause, pages after it shrank to a fifth, and a held scan with
//! such a page in every third gap between calls read a 100,000-row series
//! in calls of a few dozen rows.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Weight of a new observation.
const ALPHA: f64 = 0.1;
/// Predictions are inflated by this factor to land before, not at, the deadline.
const SAFETY: f64 = 1.25;
/// Prior before any observation: 1 ms per page.
const PRIOR_BASE_SECS: f64 = 0.001;
/// Prior before any observation: 2 µs per row.
const PRIOR_PER_ROW_SECS: f64 = 0.000_002;
/// Strength of the prior slope, as a variance of page sizes (rows²): the
/// slope follows the data as far as the observed pages' size variance
/// outweighs this (pages of 128 to 5,000 rows do; pages of 16 to 40 do not).
const PRIOR_ROWS_VARIANCE: f64 = 10_000.0;
/// The slope never falls below this share of the prior, so a page's rows
/// always cost something and affordable rows stay finite.
const MIN_PER_ROW_SHARE: f64 = 1.0 / 16.0;

/// Weight of a new observation in a [`MeanDeviation`]'s mean.
const SPREAD_ALPHA: f64 = 0.125;
/// Weight of a new observation in a [`MeanDeviation`]'s deviation.
const SPREAD_BETA: f64 = 0.25;

/// A moving mean and mean deviation of a measure, as TCP estimates round
/// trip times (RFC 6298, with its weights 1/8 and 1/4): the mean plus a few
/// deviations is a high estimate that widens with the measure's jitter.
#[derive(Clone, Copy, Debug)]
pub struct MeanDeviation {
    mean: f64,
    deviation: f64,
}

impl MeanDeviation {
    pub const fn new(mean: f64, deviation: f64) -> Self {
        Self { mean, deviation }
    }

    /// Starts from a first observation, as RFC 6298 does: deviation half
    /// of it.
    pub const fn first(x: f64) -> Self {
        Self::new(x, x / 2.0)
    }

    /// Folds in one observation.
    pub fn observe(&mut self, x: f64) {
        self.deviation += SPREAD_BETA * ((x - self.mean).abs() - self.deviation);
        self.mean += SPREAD_ALPHA * (x - self.mean);
    }

    /// Scales the measure's estimate by `factor` (mean and deviation).
    pub fn scale(&mut self, factor: f64) {
        self.mean *= factor;
        self.deviation *= factor;
    }

    /// The mean plus `deviations` mean deviations.
    pub fn high(&self, deviations: f64) -> f64 {
        self.mean + deviations * self.deviation
    }
}

/// Prior mean deviation of observed ÷ fitted latency.
const PRIOR_RATIO_DEVIATION: f64 = 0.25;
/// The tail is the ratio's mean plus this many mean deviations.
pub const TAIL_DEVIATIONS: f64 = 3.0;
/// A ratio above this counts as this much: one page stalled by a pause
/// of its own must widen the tail, not blow it up for the next hundred.
const MAX_RATIO: f64 = 8.0;

/// Page latency model: an exponentially weighted least-squares line through
/// (rows, seconds) observations.
#[derive(Clone, Copy, Debug)]
pub struct LatencyModel {
    mean_x: f64,
    mean_y: f64,
    mean_xx: f64,
    mean_xy: f64,
    base: f64,
    per_row: f64,
    /// The largest page seen to land: the model is trusted up to twice it.
    max_rows: usize,
    /// Moving mean and mean deviation of observed ÷ fitted latency.
    ratio: MeanDeviation,
    /// Mean bytes of a row of the last page that landed (0 before any):
    /// what a new read of the namespace takes its rows to weigh until its
    /// own first page lands, for the byte bound on pages.
    row_bytes: usize,
    /// The line followed slowly (see [`LatencyModel::predict_usual`]).
    usual_base: f64,
    usual_per_row: f64,
    /// Moving share of calls resumed from a token inside a bucket that
    /// reached that bucket's end (see [`LatencyModel::resumed_calls_stay`]).
    crossings: f64,
}

/// Weight of a new call in [`LatencyModel::resumed_calls_stay`]'s share.
const CROSSING_ALPHA: f64 = 0.125;

/// Weight of the line's latest fit in the line followed slowly: its time
/// constant is twenty pages.
const USUAL_ALPHA: f64 = 0.05;

impl Default for LatencyModel {
    fn default() -> Self {
        Self {
            mean_x: 0.0,
            mean_y: PRIOR_BASE_SECS,
            mean_xx: 0.0,
            mean_xy: 0.0,
            base: PRIOR_BASE_SECS,
            per_row: PRIOR_PER_ROW_SECS,
            max_rows: 0,
            ratio: MeanDeviation::new(1.0, PRIOR_RATIO_DEVIATION),
            row_bytes: 0,
            usual_base: PRIOR_BASE_SECS,
            usual_per_row: PRIOR_PER_ROW_SECS,
            crossings: 1.0,
        }
    }
}

impl LatencyModel {
    /// Folds in one page that returned `rows` rows in `took`.
    pub fn observe(&mut self, rows: usize, took: Duration) {
        self.max_rows = self.max_rows.max(rows);
        self.fit(rows, took);
    }

    /// Mean bytes of a row of the last page that landed (0 before any).
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// Records the mean bytes of a row of a page that landed.
    pub fn observe_row_bytes(&mut self, bytes: usize) {
        self.row_bytes = bytes;
    }

    /// Whether calls resumed from a token inside a bucket mostly stop before
    /// that bucket's end: fewer than half of the recent ones reached it (a
    /// moving share, a new call weighing an eighth). Such calls can leave
    /// the bucket-index query until a shard reaches the end (see
    /// `Scan::index_can_wait`); where buckets hold few rows next to what a
    /// call reads, it goes at once, beside the bucket's pages. Before any
    /// call, it goes at once.
    pub fn resumed_calls_stay(&self) -> bool {
        self.crossings < 0.5
    }

    /// Folds in whether a call resumed inside a bucket reached its end.
    pub fn observe_crossing(&mut self, crossed: bool) {
        let x = if crossed { 1.0 } else { 0.0 };
        self.crossings += CROSSING_ALPHA * (x - self.crossings);
    }

    /// Folds in a page of `rows` abandoned after `took` (a lower bound of its
    /// latency): it informs the fit but, never having landed, not the range
    /// of page sizes the model is trusted for.
    pub fn observe_abandoned(&mut self, rows: usize, took: Duration) {
        self.fit(rows, took);
    }

    /// Pages up to this many rows are within the model's evidence: at most
    /// twice the largest page seen to land. A line fitted on small pages,
    /// where a fixed cost hides the per-row cost, says little about pages
    /// twenty times larger.
    pub fn trusted_rows(&self) -> usize {
        self.max_rows.saturating_mul(2)
    }

    fn fit(&mut self, rows: usize, took: Duration) {
        let (x, took) = (rows as f64, took.as_secs_f64());
        let fitted = self.base + self.per_row * x;
        let mut y = took;
        if fitted > 0.0 {
            // A page slower than the tail widens the tail; the line takes
            // it as a tail page (see the module docs).
            y = took.min(fitted * self.tail_factor());
            self.ratio.observe((took / fitted).min(MAX_RATIO));
        }
        self.mean_x += ALPHA * (x - self.mean_x);
        self.mean_y += ALPHA * (y - self.mean_y);
        self.mean_xx += ALPHA * (x * x - self.mean_xx);
        self.mean_xy += ALPHA * (x * y - self.mean_xy);
        let var = (self.mean_xx - self.mean_x * self.mean_x).max(0.0);
        let cov = self.mean_xy - self.mean_x * self.mean_y;
        let slope = (cov + PRIOR_ROWS_VARIANCE * PRIOR_PER_ROW_SECS) / (var + PRIOR_ROWS_VARIANCE);
        self.per_row = slope.max(PRIOR_PER_ROW_SECS * MIN_PER_ROW_SHARE);
        self.base = (self.mean_y - self.per_row * self.mean_x).max(0.0);
        self.usual_base += USUAL_ALPHA * (self.base - self.usual_base);
        self.usual_per_row += USUAL_ALPHA * (self.per_row - self.usual_per_row);
    }

    /// The mean deviation of observed ÷ fitted latency: how far pages
    /// stray from the line (0.25 before any page).
    pub fn fit_spread(&self) -> f64 {
        self.ratio.deviation
    }

    /// Expected latency of a page of `rows`, with a safety factor.
    pub fn predict(&self, rows: usize) -> Duration {
        Duration::from_secs_f64((self.base + self.per_row * rows as f64) * SAFETY)
    }

    /// What a page of `rows` usually takes, with the safety factor: the
    /// line followed over about twenty pages rather than ten, so a storage
    /// stall, whose pages (landed late or abandoned) lift the line within a
    /// few calls, lifts this one only once it has lasted. Calls that fail
    /// without a row are judged by it (see `engine::Waited`): storage late
    /// during a stall, the budget too small once storage is slow for good.
    pub fn predict_usual(&self, rows: usize) -> Duration {
        Duration::from_secs_f64((self.usual_base + self.usual_per_row * rows as f64) * SAFETY)
    }

    /// How much slower than the line a slow page is: the ratio's mean plus
    /// [`TAIL_DEVIATIONS`] deviations, never below the safety factor.
    pub fn tail_factor(&self) -> f64 {
        self.ratio.high(TAIL_DEVIATIONS).max(SAFETY)
    }

    /// Latency of a slow page of `rows` (see [`LatencyModel::tail_factor`]).
    pub fn predict_tail(&self, rows: usize) -> Duration {
        Duration::from_secs_f64((self.base + self.per_row * rows as f64) * self.tail_factor())
    }

    /// Most rows a page may ask for and still be expected to land in `remaining`.
    pub fn affordable_rows(&self, remaining: Duration) -> usize {
        self.rows_within(remaining, SAFETY)
    }

    /// Most rows a page may ask for and still land in `remaining` when it
    /// is a slow one (see [`LatencyModel::tail_factor`]).
    pub fn affordable_rows_tail(&self, remaining: Duration) -> usize {
        self.rows_within(remaining, self.tail_factor())
    }

    fn rows_within(&self, remaining: Duration, factor: f64) -> usize {
        let spare = remaining.as_secs_f64() / factor - self.base;
        if spare <= 0.0 {
            0
        } else {
            // Non-negative and clamped below usize::MAX: the cast is exact
            // up to rounding.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let rows =
                (spare / self.per_row.max(f64::EPSILON)).min(usize::MAX as f64 / 2.0) as usize;
            rows
        }
    }
}

/// Models by namespace.
#[derive(Debug, Default)]
pub struct LatencyModels {
    by_namespace: Mutex<HashMap<String, LatencyModel>>,
}

impl LatencyModels {
    /// The current model of a namespace (the prior if none yet).
    pub fn get(&self, namespace: &str) -> LatencyModel {
        self.by_namespace
            .lock()
            .expect("latency model lock")
            .get(namespace)
            .copied()
            .unwrap_or_default()
    }

    /// Records one page of a namespace.
    pub fn observe(&self, namespace: &str, rows: usize, took: Duration) {
        self.update(namespace, |m| m.observe(rows, took));
    }

    /// Records the mean bytes of a row of a page of a namespace.
    pub fn observe_row_bytes(&self, namespace: &str, bytes: usize) {
        self.update(namespace, |m| m.observe_row_bytes(bytes));
    }

    /// Records a page of a namespace abandoned after `took`.
    pub fn observe_abandoned(&self, namespace: &str, rows: usize, took: Duration) {
        self.update(namespace, |m| m.observe_abandoned(rows, took));
    }

    /// Records whether a call resumed inside a bucket of a namespace
    /// reached that bucket's end.
    pub fn observe_crossing(&self, namespace: &str, crossed: bool) {
        self.update(namespace, |m| m.observe_crossing(crossed));
    }

    fn update(&self, namespace: &str, f: impl FnOnce(&mut LatencyModel)) {
        let mut map = self.by_namespace.lock().expect("latency model lock");
        if let Some(m) = map.get_mut(namespace) {
            f(m);
        } else {
            let mut m = LatencyModel::default();
            f(&mut m);
            map.insert(namespace.to_string(), m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a page usually takes follows the line slowly: a stall's few
    /// pages lift the line nine times over, the usual latency a third as
    /// far; storage that stays slow moves it all the way.
    #[test]
    fn the_usual_latency_rides_out_a_stall_but_follows_a_lasting_change() {
        let mut m = LatencyModel::default();
        for _ in 0..200 {
            m.observe(100, Duration::from_millis(1));
        }
        let before = m.predict_usual(100);
        for _ in 0..8 {
            m.observe_abandoned(100, Duration::from_millis(18));
        }
        let (line, usual) = (m.predict(100), m.predict_usual(100));
        assert!(line > before * 8, "{line:?} against {before:?}");
        assert!(usual * 3 < line, "{usual:?} against the line's {line:?}");
        for _ in 0..200 {
            m.observe(100, Duration::from_millis(18));
        }
        let after = m.predict_usual(100).as_secs_f64() / SAFETY;
        assert!((0.015..0.019).contains(&after), "{after}");
    }

    /// Resumed calls list buckets at once until most of them are seen to
    /// stop inside their bucket, and again once most reach its end.
    #[test]
    fn resumed_calls_stay_once_most_stop_inside_their_bucket() {
        let mut m = LatencyModel::default();
        assert!(!m.resumed_calls_stay(), "no evidence: list at once");
        // An eighth a call: six calls from 1.0 bring the share under a half.
        for _ in 0..5 {
            m.observe_crossing(false);
        }
        assert!(!m.resumed_calls_stay());
        m.observe_crossing(false);
        assert!(m.resumed_calls_stay());
        // One call in five reaching its end keeps it so.
        for i in 0..100 {
            m.observe_crossing(i % 5 == 0);
        }
        assert!(m.resumed_calls_stay());
        for _ in 0..6 {
            m.observe_crossing(true);
        }
        assert!(!m.resumed_calls_stay(), "now most reach it");
    }

    #[test]
    fn learns_base_and_rate() {
        let mut m = LatencyModel::default();
        // True cost: 4 ms + 10 µs per row.
        for i in 0..400 {
            let rows = [10, 100, 1000, 500][i % 4];
            m.observe(rows, Duration::from_micros(4000 + 10 * rows as u64));
        }
        let p = m.predict(1000).as_secs_f64() / SAFETY;
        assert!((p - 0.014).abs() < 0.002, "predicted {p}");
        let rows = m.affordable_rows(Duration::from_millis(10));
        assert!((300..=600).contains(&rows), "affordable {rows}");
        assert_eq!(m.affordable_rows(Duration::from_millis(1)), 0);
    }

    /// Pages of nearly one size whose latency is noise (0.5 to 2.6 ms for 16
    /// to 40 rows, the larger pages by chance the slower) must not teach a
    /// per-row cost of tens of µs: it shrank pages to a few dozen rows and
    /// left tight budgets empty.
    #[test]
    fn noise_on_pages_of_one_size_keeps_the_prior_slope() {
        let mut m = LatencyModel::default();
        for i in 0..400 {
            let (rows, us) = [(16, 500), (40, 2600), (20, 900), (36, 1700)][i % 4];
            m.observe(rows, Duration::from_micros(us));
        }
        let per_row = m.predict(1000).saturating_sub(m.predict(0)).as_secs_f64() / SAFETY / 1000.0;
        assert!(per_row < 4.0 * PRIOR_PER_ROW_SECS, "per row {per_row}");
        let mean = m.predict(28).as_secs_f64() / SAFETY;
        assert!((mean - 0.001_425).abs() < 0.000_3, "mean page {mean}");
        assert!(m.affordable_rows(Duration::from_millis(7)) > 1000);
    }

    /// A model fitted on 400 pages of 100-2000 rows that each took 0.5 ms
    /// plus 1 µs a row.
    fn on_the_line() -> LatencyModel {
        let mut m = LatencyModel::default();
        for i in 0..400 {
            let rows = [100, 1000, 500, 2000][i % 4];
            m.observe(rows, Duration::from_micros(500 + rows as u64));
        }
        m
    }

    /// Pages that land on the line keep the tail near the safety factor;
    /// pages that stray (one in five five times slower) widen it, so a call
    /// with no row yet asks for pages that land even when slow; once pages
    /// land on the line again the tail narrows.
    #[test]
    fn the_tail_follows_how_far_pages_stray_from_the_line() {
        let ms = Duration::from_millis(1);
        let mut m = on_the_line();
        let steady = m.tail_factor();
        assert!(steady < 1.5, "steady tail {steady}");
        let steady_rows = m.affordable_rows_tail(10 * ms);
        assert!(steady_rows <= m.affordable_rows(10 * ms));
        for i in 0..400 {
            let rows = [100, 1000, 500, 2000][i % 4];
            let slow = if i % 5 == 0 { 5 } else { 1 };
            m.observe(rows, Duration::from_micros((500 + rows as u64) * slow));
        }
        let erratic = m.tail_factor();
        assert!(erratic > 2.5, "erratic tail {erratic}");
        assert!(m.affordable_rows_tail(10 * ms) * 2 < m.affordable_rows(10 * ms));
        assert!(m.predict_tail(1000) > m.predict(1000) * 2);
        for _ in 0..400 {
            m.observe(1000, Duration::from_micros(1500));
        }
        let settled = m.tail_factor();
        assert!(settled < 1.5, "settled tail {settled}");
    }

    /// One page stalled thirty times over widens the tail but moves the
    /// line only as a tail page would: before, it raised the fitted base by
    /// a tenth of the stall, and the pages after it shrank to a fifth.
    #[test]
    fn one_stalled_page_does_not_shrink_the_pages_after_it() {
        let ms = Duration::from_millis(1);
        let mut m = on_the_line();
        let before = m.affordable_rows(5 * ms);
        let tail = m.tail_factor();
        m.observe(1000, 30 * ms);
        assert!(m.tail_factor() > tail, "the tail widens");
        let after = m.affordable_rows(5 * ms);
        assert!(
            after * 10 >= before * 9,
            "{after} rows affordable after, {before} before"
        );
    }
}
