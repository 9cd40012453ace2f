//! How big a storage page to ask for: pure functions of what the read still
//! wants, the time left (through the latency model's answers) and the
//! engine settings. The scan calls them; they hold no state.

use std::time::Duration;

use super::EngineConfig;

/// A page skips slow start when it is expected to take at most 1/N of the
/// time left.
pub const SLOW_START_HEADROOM: u32 = 8;

/// Rows the scan should have in hand or in flight: what the response may
/// still take (`row_limit - rows_out`), no more than the time left can
/// deliver (`affordable`), plus one to learn whether more remain.
pub fn rows_needed(row_limit: usize, rows_out: usize, affordable: usize) -> usize {
    row_limit.saturating_sub(rows_out).min(affordable) + 1
}

/// Rows per shard page for a bucket of `shards` shards that should deliver
/// `want` rows: an even share, within the configured bounds, no larger than
/// `pace` (what can land with time to spare for merging). A `probe_only`
/// bucket, whose predecessors may already hold all the rows the response can
/// take, gets the smallest page, so little is fetched in vain.
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
        let mut model = super::super::predict::LatencyModel::default();
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
