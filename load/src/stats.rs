//! Load statistics: latency histograms (HdrHistogram, microseconds),
//! percentile summaries, open-loop schedules measured from intended start
//! times (no coordinated omission), and counters by reason and code.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Highest latency recorded: one hour, in µs (larger values are clamped).
const MAX_MICROS: u64 = 3_600_000_000;
/// Percentiles listed in reports and drawn in charts.
pub const PERCENTILES: [f64; 10] = [0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99, 100.0];

/// A latency histogram in microseconds.
#[derive(Clone, Debug)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds"))
    }
}

impl Latencies {
    pub fn record(&mut self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, MAX_MICROS);
        self.0.record(us).expect("clamped into bounds");
    }

    pub fn add(&mut self, other: &Latencies) {
        self.0.add(&other.0).expect("same bounds");
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn reset(&mut self) {
        self.0.reset();
    }

    pub fn histogram(&self) -> &Histogram<u64> {
        &self.0
    }

    /// Latency at percentile `p` (0-100), in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        self.0.value_at_percentile(p) as f64 / 1000.0
    }

    pub fn summary(&self) -> Summary {
        Summary {
            count: self.0.len(),
            mean_ms: self.0.mean() / 1000.0,
            p50_ms: self.percentile_ms(50.0),
            p90_ms: self.percentile_ms(90.0),
            p99_ms: self.percentile_ms(99.0),
            p999_ms: self.percentile_ms(99.9),
            max_ms: self.0.max() as f64 / 1000.0,
            percentiles: PERCENTILES
                .iter()
                .map(|&p| (p, self.percentile_ms(p)))
                .collect(),
        }
    }
}

/// Percentiles of a latency distribution, in milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// (percentile, ms) pairs at [`PERCENTILES`].
    pub percentiles: Vec<(f64, f64)>,
}

/// An open-loop schedule: request `i` is due at `start + i / rate`, whether
/// or not earlier requests have finished.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub start: Instant,
    pub interval: Duration,
}

impl Schedule {
    pub fn new(start: Instant, rate_per_sec: f64) -> Self {
        Self {
            start,
            interval: Duration::from_secs_f64(1.0 / rate_per_sec.max(f64::MIN_POSITIVE)),
        }
    }

    /// When request `i` should start.
    pub fn intended(&self, i: u64) -> Instant {
        self.start + self.interval.mul_f64(i as f64)
    }
}

/// Latency of a request that was due at `intended` and finished at `done`:
/// time spent waiting to be sent counts (no coordinated omission).
pub fn latency_since_intended(intended: Instant, done: Instant) -> Duration {
    done.saturating_duration_since(intended)
}

/// Everything a run counts.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    /// Latency of single responses.
    pub responses: Latencies,
    /// Latency of whole logical reads (following tokens to the end).
    pub reads: Latencies,
    pub partial_by_reason: BTreeMap<String, u64>,
    pub errors_by_code: BTreeMap<String, u64>,
    /// Errors by their ErrorInfo reason (errors without one are not
    /// counted here).
    pub errors_by_reason: BTreeMap<String, u64>,
    /// The message of the first error of each reason (what it says of the
    /// budget and of the storage request it waited on, for one).
    pub first_error_by_reason: BTreeMap<String, String>,
    pub rows: u64,
    pub bytes: u64,
    pub rows_scanned: u64,
    /// Rows delivered to, and scanned for, logical reads that finished with
    /// every call answered within the measured window (see `Tally` in
    /// `lib.rs`): their ratio is read amplification without the rows held
    /// scans fetched ahead for reads the window's end cut off.
    pub whole_reads_rows: u64,
    pub whole_reads_rows_scanned: u64,
    /// Responses that continued a scan held on the server (hot continuations).
    pub continued: u64,
    /// Latency of calls refused for load (RESOURCE_EXHAUSTED).
    pub refusals: Latencies,
    /// The server's own elapsed time of each response (its stats, from
    /// the call's arrival to the end of its scan): what the client saw
    /// beyond it was spent outside the server's clock.
    pub server_elapsed: Latencies,
    /// Per response, the client-observed latency less the server's elapsed
    /// time: the time spent outside the server's clock (the request on its
    /// way in before the server saw it, the response's sending and
    /// decoding, each side waiting for a CPU).
    pub outside_server: Latencies,
    /// Rows of responses that came within the SLO (or deadline).
    pub good_rows: u64,
}

impl RunStats {
    /// Fraction of responses that were partial.
    pub fn partial_rate(&self) -> f64 {
        let partial: u64 = self.partial_by_reason.values().sum();
        if self.responses.is_empty() {
            0.0
        } else {
            partial as f64 / self.responses.len() as f64
        }
    }
}

/// Rows and megabytes per second over `elapsed`.
pub fn rates(rows: u64, bytes: u64, elapsed: Duration) -> (f64, f64) {
    let secs = elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
    (rows as f64 / secs, bytes as f64 / secs / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_values() {
        let mut l = Latencies::default();
        for ms in 1..=1000u64 {
            l.record(Duration::from_millis(ms));
        }
        let s = l.summary();
        assert_eq!(s.count, 1000);
        // Three significant digits: values are exact to 0.1%.
        let near = |got: f64, want: f64| (got - want).abs() <= want * 0.001;
        assert!(near(s.p50_ms, 500.0), "{}", s.p50_ms);
        assert!(near(s.p90_ms, 900.0), "{}", s.p90_ms);
        assert!(near(s.p99_ms, 990.0), "{}", s.p99_ms);
        // Rank rounding puts p99.9 of 1000 samples on the 999th or 1000th.
        assert!(
            near(s.p999_ms, 999.0) || near(s.p999_ms, 1000.0),
            "{}",
            s.p999_ms
        );
        assert!(near(s.max_ms, 1000.0), "{}", s.max_ms);
        assert!(near(s.mean_ms, 500.5), "{}", s.mean_ms);
        assert_eq!(s.percentiles.len(), PERCENTILES.len());
    }

    #[test]
    fn rates_divide_by_elapsed() {
        assert_eq!(rates(1000, 2_000_000, Duration::from_secs(2)), (500.0, 1.0));
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_latency_counts_the_wait_before_sending() {
        let s = Schedule::new(Instant::now(), 100.0); // one every 10 ms
        assert_eq!(s.intended(0), s.start);
        assert_eq!(s.intended(7) - s.start, Duration::from_millis(70));
        // A stalled system: request 3 could only be sent at 100 ms and took
        // 5 ms. Its latency is 75 ms from when it was due, not 5 ms.
        let done = s.start + Duration::from_millis(105);
        assert_eq!(
            latency_since_intended(s.intended(3), done),
            Duration::from_millis(75)
        );
        assert_eq!(latency_since_intended(done, s.intended(3)), Duration::ZERO);
    }
}
