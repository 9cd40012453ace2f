//! What it costs to finish a response once the scan stops: building the
//! protobuf events, encoding and sending them. Measured on the server's own
//! responses (the handler's conversion time plus the time from the handler's
//! return to the end of the response body) and learned as a line in the
//! response's encoded size, so the scan stops early enough for the response
//! to land within the budget, by what this replica really spends, not a
//! constant.
//!
//! Until the first measurement (and in engines no server feeds, such as the
//! engine tests), the reserve is the configured prior:
//! [`super::EngineConfig::response_reserve`] plus
//! [`super::EngineConfig::response_reserve_per_row`] per row.

use std::sync::Mutex;
use std::time::Duration;

use super::predict::LatencyModel;

/// Weight of a new deviation in the spread estimate.
const SPREAD_ALPHA: f64 = 0.1;
/// The reserve covers the predicted cost plus this many mean deviations.
const SPREAD_FACTOR: f64 = 2.0;

/// The learned cost of finishing a response: one per engine, fed by the
/// server, read by every scan at its start.
#[derive(Debug, Default)]
pub struct ResponseCost {
    learned: Mutex<Option<Learned>>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Learned {
    /// Cost by encoded KiB.
    line: LatencyModel,
    /// Exponentially weighted mean absolute deviation from the line, s.
    spread: f64,
}

/// A scan's copy of the learned cost.
#[derive(Clone, Copy, Debug)]
pub struct ResponseReserve(Option<Learned>);

impl ResponseCost {
    /// Records one response of `bytes` encoded bytes that took `took` to
    /// build, encode and send after its scan stopped.
    pub fn observe(&self, bytes: usize, took: Duration) {
        let mut learned = self.learned.lock().expect("response cost lock");
        let l = learned.get_or_insert_with(Learned::default);
        let kib = kib(bytes);
        let predicted = l.line.expected(kib).as_secs_f64();
        l.line.observe(kib, took);
        let deviation = (took.as_secs_f64() - predicted).abs();
        l.spread += SPREAD_ALPHA * (deviation - l.spread);
    }

    /// The current estimate, for one scan.
    pub fn reserve(&self) -> ResponseReserve {
        ResponseReserve(*self.learned.lock().expect("response cost lock"))
    }
}

impl ResponseReserve {
    /// Time to keep back for a response of `bytes` encoded bytes and `rows`
    /// rows: the learned cost (with its safety factor) plus twice its mean
    /// deviation, or, before any measurement, `prior + rows * per_row`.
    pub fn for_response(
        &self,
        bytes: usize,
        rows: usize,
        prior: Duration,
        per_row: Duration,
    ) -> Duration {
        match &self.0 {
            Some(l) => {
                l.line.predict(kib(bytes)) + Duration::from_secs_f64(l.spread * SPREAD_FACTOR)
            }
            None => prior + per_row.saturating_mul(u32::try_from(rows).unwrap_or(u32::MAX)),
        }
    }
}

/// Whole KiB, rounded up: the model's unit (pages use rows, responses
/// bytes; the line is the same).
fn kib(bytes: usize) -> usize {
    bytes.div_ceil(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_prior_holds_until_the_first_measurement() {
        let cost = ResponseCost::default();
        let r = cost.reserve();
        assert_eq!(
            r.for_response(1 << 20, 1000, 2 * MS, Duration::from_micros(4)),
            6 * MS
        );
        assert_eq!(
            r.for_response(0, 0, Duration::ZERO, Duration::ZERO),
            Duration::ZERO
        );
    }

    #[test]
    fn the_reserve_follows_measured_costs_by_size() {
        let cost = ResponseCost::default();
        // 0.2 ms fixed, 2 ms per MiB: small and large responses alternate.
        for _ in 0..200 {
            cost.observe(16 << 10, Duration::from_micros(200 + 31));
            cost.observe(4 << 20, Duration::from_micros(200 + 8_000));
        }
        let r = cost.reserve();
        let big = r.for_response(4 << 20, 0, 50 * MS, MS);
        let small = r.for_response(16 << 10, 0, 50 * MS, MS);
        // Measured, not the 50 ms prior; within the model's safety factor.
        assert!(big >= 8 * MS && big <= 12 * MS, "{big:?}");
        assert!(small < MS, "{small:?}");
        assert!(small < big);
    }

    #[test]
    fn scattered_costs_widen_the_reserve() {
        let steady = ResponseCost::default();
        let noisy = ResponseCost::default();
        for i in 0..200u64 {
            steady.observe(64 << 10, MS);
            let jitter = if i % 2 == 0 { 0 } else { 2_000 };
            noisy.observe(64 << 10, Duration::from_micros(jitter));
        }
        let at = |c: &ResponseCost| c.reserve().for_response(64 << 10, 0, MS, MS);
        assert!(
            at(&noisy) > at(&steady),
            "{:?} vs {:?}",
            at(&noisy),
            at(&steady)
        );
    }
}
