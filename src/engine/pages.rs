//! How big a storage page to ask for: pure functions of what the read still
//! wants, the time left (through the latency model's answers) and the
//! engine settings. The scan calls them; they hold no state.

use std::time::Duration;

use super::predict::LatencyModel;
use super::EngineConfig;

/// A page skips slow start when it is expected to take at most 1/N of the
/// time left.
pub const SLOW_START_HEADROOM: u32 = 8;

/// The most bytes of rows a storage page asks for, at the mean row size
/// seen: pages are sized in rows, and at `max_storage_page` rows of 8 KiB
/// a page carried 40 MiB, so a few streams whose clients stopped reading
/// held hundreds of MiB in pages that landed after their scans paused.
pub const MAX_PAGE_BYTES: usize = 1 << 20;

/// The rows of a page at most [`MAX_PAGE_BYTES`] for rows of `row_bytes`
/// (at least one row).
pub fn byte_bound(row_bytes: usize) -> usize {
    (MAX_PAGE_BYTES / row_bytes.max(1)).max(1)
}

/// Rows the scan should have in hand or in flight: what the response may
/// still take (`row_limit - rows_out`), no more than the time left can
/// deliver (`affordable`), plus one to learn whether more remain.
pub fn rows_needed(row_limit: usize, rows_out: usize, affordable: usize) -> usize {
    row_limit.saturating_sub(rows_out).min(affordable) + 1
}

/// Rows per shard page for a bucket of `shards` shards that should deliver
/// `want` rows: an even share, within the configured bounds, no larger than
/// `pace` (see [`pace`]). A `probe_only` bucket, whose predecessors may
/// already hold all the rows the response can take, gets the smallest
/// page, so little is fetched in vain.
pub fn shard_page(
    want: usize,
    shards: usize,
    pace: usize,
    probe_only: bool,
    cfg: &EngineConfig,
) -> usize {
    if probe_only {
        return cfg.min_storage_page;
    }
    want.div_ceil(shards.max(1))
        .clamp(cfg.min_storage_page, cfg.max_storage_page)
        .min(pace.max(cfg.min_storage_page))
}

/// The most rows a page may ask for so that it lands within `within`
/// (time to spare for merging what the other shards return); but where
/// that is less than the [`pace_floor`] (within the model's evidence), a
/// page of the floor is expected to take at most [`CHEAP_PAGE_SLOWDOWN`]
/// times the smallest page's time, and pages land steadily near the
/// model's line (see [`MAX_FIT_SPREAD`]), the floor.
///
/// Under load a page's latency is mostly time queued in storage, and once
/// that nears `within` hardly any page can land by it; pacing then asked
/// for the smallest pages, so every storage request carried a few rows and
/// storage spent its work on requests, not rows (16 clients following
/// tokens under a 10 ms SLO: 88% of pages of 16 rows, taking 3 ms each).
/// A page's latency then hardly grows with its rows (the queue ahead of it
/// is the same) while storage's work per row falls. Against the local
/// node, same cells, old and new servers alternating (A B B A, 2 s each):
/// 16 clients at 10 ms 425-445k rows/s instead of 208-222k (258-305 rows
/// per call instead of 72-89); 64 at 10 ms 367-380k instead of 242-291k;
/// 16 at 5 ms 281-298k instead of 146-160k; 4 at 5 ms 549-582k instead of
/// 360-372k, but p99 5.6-5.8 ms instead of 5.0; 4 at 10 ms 622-646k
/// against 603-626k, p99 9.0 instead of 9.4-10.3; one client alike.
///
/// Where rows themselves are slow the floor is not cheap and the pace
/// stands. It is the floor or the pace, nothing between: a model that has
/// not learnt a slow per-row cost (its slope held near the prior by pages
/// of like sizes) takes much of the latency for a fixed cost, and pages
/// raised to whatever it called cheap grew call by call until they missed
/// the budget.
pub fn pace(model: &LatencyModel, within: Duration, cfg: &EngineConfig) -> usize {
    let paced = model.affordable_rows(within);
    let floor = pace_floor(cfg).min(model.trusted_rows());
    let cheap = || {
        let smallest = model.predict(cfg.min_storage_page);
        model.predict(floor) <= smallest.mul_f64(CHEAP_PAGE_SLOWDOWN)
    };
    if paced < floor && model.fit_spread() <= MAX_FIT_SPREAD && cheap() {
        floor
    } else {
        paced
    }
}

/// A page is cheap when expected to take at most this many times the
/// smallest page's time (see [`pace`]).
pub const CHEAP_PAGE_SLOWDOWN: f64 = 1.25;

/// Pages go at the floor only while the mean deviation of observed ÷
/// fitted latency is at most this: pages land near the line, as under a
/// steady queue (0.13-0.52 with 16 clients at 10 ms against the local
/// node). Stalled pages (a straggler's 30 ms among 1-6 ms pages) widen it
/// past 1; pages at the floor then are fewer samples a call, the fitted
/// base a stall lifts comes down more slowly, and with a stall in every
/// third gap between calls a 100,000-row chain held calls of a few rows
/// (`tests/stragglers.rs`: it passes with a bound of up to 1, fails from
/// 1.5).
pub const MAX_FIT_SPREAD: f64 = 1.0;

/// The largest page [`pace`] raises a page to where rows are cheap: the
/// slow-start initial page, within the bounds.
pub fn pace_floor(cfg: &EngineConfig) -> usize {
    cfg.initial_storage_page
        .clamp(cfg.min_storage_page, cfg.max_storage_page)
}

/// Slow start: the page actually sent for a shard's page number
/// `pages_sent` (0 for its first). Where the full `page` is within the
/// latency model's evidence (at most `trusted` rows) and expected to take at
/// most 1/[`SLOW_START_HEADROOM`] of `timeout`, it is sent whole; otherwise
/// the shard starts at the larger of `initial_storage_page` rows (doubling
/// per page) and `fits`, the rows the model expects to land within
/// 1/[`FIRST_PAGE_SHARE`] of the time left (so a read that starts cold
/// under a known latency fills its budget in one or two round trips, not
/// five), but never past the evidence (`trusted`, or the initial page
/// before any): a shard that sent many small pages must not jump to one
/// many times larger than any seen to land.
pub fn slow_start(
    page: usize,
    predicted: Duration,
    timeout: Duration,
    pages_sent: u32,
    trusted: usize,
    fits: usize,
    cfg: &EngineConfig,
) -> usize {
    if page <= trusted && predicted.saturating_mul(SLOW_START_HEADROOM) <= timeout {
        return page;
    }
    let ramp = cfg
        .initial_storage_page
        .saturating_mul(1 << pages_sent.min(20));
    page.min(ramp.max(fits).max(1))
        .min(trusted.max(cfg.initial_storage_page))
}

/// A page slow start sends whole, beyond its ramp, when it is expected to
/// land within this share of the time left: the rest leaves time for the
/// pages after it.
pub const FIRST_PAGE_SHARE: u32 = 3;

/// Whether `remaining` is ample: even the smallest page is expected to take
/// at most 1/[`SLOW_START_HEADROOM`] of it (the slow-start criterion).
pub fn ample(model: &super::predict::LatencyModel, remaining: Duration) -> bool {
    model.predict(1).saturating_mul(SLOW_START_HEADROOM) <= remaining
}

/// The largest backoff of retry number `attempt` (1 for the first retry; 0
/// means no retry and no wait): `retry_base` doubling per attempt up to
/// `retry_cap`. The wait is drawn uniformly below it (full jitter).
pub fn backoff_cap(attempt: u32, cfg: &EngineConfig) -> Duration {
    if attempt == 0 {
        return Duration::ZERO;
    }
    cfg.retry_base
        .saturating_mul(1 << (attempt - 1).min(16))
        .min(cfg.retry_cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn time_is_ample_when_the_smallest_page_takes_an_eighth_of_it() {
        let mut model = LatencyModel::default();
        for _ in 0..50 {
            model.observe(16, 2 * MS);
            model.observe(1000, 4 * MS);
        }
        let one = model.predict(1);
        assert!(!ample(
            &model,
            (one * SLOW_START_HEADROOM)
                .checked_sub(Duration::from_micros(1))
                .unwrap()
        ));
        assert!(ample(&model, one * SLOW_START_HEADROOM));
        assert!(!ample(&model, 10 * MS), "a 2 ms page fills a 10 ms budget");
        assert!(ample(&model, 50 * MS));
    }

    #[test]
    fn rows_needed_is_bounded_by_the_limit_and_the_time() {
        assert_eq!(rows_needed(1000, 0, 5000), 1001);
        assert_eq!(rows_needed(1000, 400, 5000), 601);
        assert_eq!(rows_needed(1000, 0, 30), 31);
        assert_eq!(
            rows_needed(10, 10, 5000),
            1,
            "one more, to learn if rows remain"
        );
    }

    #[test]
    fn shard_pages_share_the_want_within_bounds_and_pace() {
        let cfg = EngineConfig::default(); // 16..=5000
        assert_eq!(shard_page(1001, 4, usize::MAX, false, &cfg), 251);
        assert_eq!(
            shard_page(10, 4, usize::MAX, false, &cfg),
            16,
            "at least the minimum"
        );
        assert_eq!(
            shard_page(100_000, 1, usize::MAX, false, &cfg),
            5000,
            "at most the maximum"
        );
        assert_eq!(
            shard_page(1001, 4, 100, false, &cfg),
            100,
            "no more than can land"
        );
        assert_eq!(
            shard_page(1001, 4, 3, false, &cfg),
            16,
            "pace never below the minimum"
        );
        assert_eq!(
            shard_page(1001, 4, usize::MAX, true, &cfg),
            16,
            "probes are small"
        );
    }

    #[test]
    fn pace_goes_to_the_floor_only_where_rows_are_cheap_and_pages_steady() {
        let cfg = EngineConfig::default(); // 16..=5000, initial 128
        assert_eq!(pace_floor(&cfg), 128, "the initial page");
        let bounded = EngineConfig {
            initial_storage_page: 8,
            ..EngineConfig::default()
        };
        assert_eq!(pace_floor(&bounded), 16, "within the bounds");
        let fitted = |base_us: u64, per_row_us: u64| {
            let mut model = LatencyModel::default();
            for _ in 0..200 {
                for rows in [16, 200, 1000] {
                    let us = base_us + per_row_us * rows as u64;
                    model.observe(rows, Duration::from_micros(us));
                }
            }
            model
        };
        // Queued: 4 ms a page whatever its rows (2 µs each).
        let queued = fitted(4000, 2);
        assert_eq!(
            queued.affordable_rows(4 * MS),
            0,
            "nothing lands by the pace"
        );
        assert_eq!(pace(&queued, 4 * MS, &cfg), 128);
        assert!(
            pace(&queued, 20 * MS, &cfg) > 1000,
            "the pace where it is larger"
        );
        // No page beyond the evidence: twice the largest seen to land.
        let mut small = LatencyModel::default();
        for _ in 0..50 {
            small.observe(16, 4 * MS);
        }
        assert_eq!(pace(&small, 4 * MS, &cfg), 32, "within the evidence");
        // Pages straying far from the line (stalls among them): the pace.
        let mut stalled = fitted(4000, 2);
        for _ in 0..20 {
            for _ in 0..3 {
                stalled.observe(16, 4 * MS);
            }
            stalled.observe(16, 30 * MS);
        }
        assert!(stalled.fit_spread() > MAX_FIT_SPREAD);
        let within = stalled.affordable_rows(4 * MS);
        assert_eq!(pace(&stalled, 4 * MS, &cfg), within, "stalls: the pace");
        // Slow rows: 200 µs each, a 128-row page takes 8 times a 16-row one.
        let slow = fitted(0, 200);
        let within = slow.affordable_rows(16 * MS);
        assert!((16..128).contains(&within), "{within}");
        assert_eq!(pace(&slow, 16 * MS, &cfg), within, "the pace stands");
    }

    #[test]
    fn slow_start_ramps_only_under_tight_budgets() {
        let cfg = EngineConfig::default(); // initial 128
        let t = usize::MAX;
        let roomy = slow_start(4000, MS, 10 * MS, 0, t, 0, &cfg);
        assert_eq!(roomy, 4000, "roomy: whole page");
        assert_eq!(slow_start(4000, 5 * MS, 10 * MS, 0, t, 0, &cfg), 128);
        assert_eq!(slow_start(4000, 5 * MS, 10 * MS, 2, t, 0, &cfg), 512);
        let small = slow_start(300, 5 * MS, 10 * MS, 3, t, 0, &cfg);
        assert_eq!(small, 300, "never above the page");
        let late = slow_start(4000, 5 * MS, 10 * MS, 40, t, 0, &cfg);
        assert_eq!(late, 4000, "no overflow");
        // Beyond the model's evidence a roomy prediction is not trusted.
        assert_eq!(slow_start(4000, MS, 10 * MS, 0, 512, 0, &cfg), 128);
        assert_eq!(slow_start(500, MS, 10 * MS, 0, 512, 0, &cfg), 500);
        // Many pages sent do not ramp past twice the largest seen to land.
        assert_eq!(slow_start(5000, 5 * MS, 8 * MS, 12, 700, 0, &cfg), 700);
        assert_eq!(slow_start(5000, 5 * MS, 8 * MS, 12, 0, 0, &cfg), 128);
        // A first page starts at what lands in a third of the time left,
        // within the evidence.
        assert_eq!(slow_start(4000, 5 * MS, 10 * MS, 0, t, 900, &cfg), 900);
        assert_eq!(slow_start(4000, 5 * MS, 10 * MS, 0, 600, 900, &cfg), 600);
        assert_eq!(slow_start(700, 5 * MS, 10 * MS, 0, t, 900, &cfg), 700);
        assert_eq!(slow_start(4000, 5 * MS, 10 * MS, 3, t, 900, &cfg), 1024);
    }

    #[test]
    fn backoff_doubles_to_its_cap() {
        let cfg = EngineConfig::default(); // 10 ms base, 500 ms cap
        assert_eq!(backoff_cap(0, &cfg), Duration::ZERO);
        assert_eq!(backoff_cap(1, &cfg), 10 * MS);
        assert_eq!(backoff_cap(3, &cfg), 40 * MS);
        assert_eq!(backoff_cap(10, &cfg), 500 * MS);
        assert_eq!(backoff_cap(u32::MAX, &cfg), 500 * MS);
    }
}
