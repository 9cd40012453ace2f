//! The response reserve: how long before its deadline a scan stops, so the
//! response is sent and decoded by the client within the budget.
//!
//! The cost is measured where the server can see it: the encoding of the
//! events (as the scan delivers them, in [`crate::response::EncodedEvents`];
//! for other messages in the codec, [`crate::codec`]) and a unary read's
//! sending (from the handler's answer until the transport took the last
//! byte: copying the encoded events into the message and the transfer
//! paced by the client's HTTP/2 flow control), each per encoded byte, in
//! [`RESPONSE_COST`]. The events are encoded before the scan stops, so
//! after it only the sending remains, and the client's decoding, which
//! happens after the last byte and cannot be seen: it is taken as
//! [`CLIENT_DECODE_PER_ENCODE`] times the server's encoding. A scan keeps
//! back a fixed floor ([`super::EngineConfig::response_reserve`], for the
//! hand-off to the transport) plus the bytes gathered so far at those
//! costs, with a safety factor. Until encoding was measured, the
//! configured per-row prior applies; until sending was, encoding stands
//! for it.
//!
//! What happens after the stop also waits for the CPU: on a loaded
//! machine the server's task wakes late at its stop, and the response's
//! sending and the client's reading wait their turn too. The scan's stop
//! timer measures how late this process wakes ([`ResponseCost::
//! observe_lateness`]); the reserve adds [`LATENESS_COVER`] times a high
//! estimate of it (a moving mean plus four mean deviations, as TCP's RTO),
//! one for the server's wake and one for each hop after it. Evidence of
//! lateness ages: the estimate halves for every [`LATENESS_HALF_LIFE`]
//! without a sample. Stop timers alone cannot keep it current: a scan whose
//! reserve is large stops by its plan (the next page cannot land before its
//! stop) before its timer goes off, so without ageing one late wake left the
//! estimate high for good (a one-client token chain under a 10 ms SLO took
//! its first sample, 0.4 ms, which capped the reserve at half the budget,
//! and no other in 1,300 calls, each of which stopped at 2.5 ms instead of
//! 4). Under load scans stop by their timers many times a second, and the
//! estimate follows them.
//!
//! Invariants: one sample never moves the estimate by more than
//! [`MAX_SAMPLE_RATIO`] of it (a preempted thread on a loaded machine makes
//! one encode look ten times slower than it is); a timed message under
//! [`MIN_SAMPLE_BYTES`] is not a sample (its fixed costs would read as a
//! per-byte cost), nor a sent response under [`MIN_SEND_SAMPLE_BYTES`];
//! rows timed one by one as they are encoded
//! ([`ResponseCost::observe_rows`]) are a sample whatever their number,
//! so the encoding cost keeps being learnt from responses of every size.
//! (When only large responses taught it, one slow first sample made the
//! reserve so large that every response came out small and the estimate
//! never came down: 5 ms token chains read 18 rows for each one
//! delivered.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use super::predict::MeanDeviation;

/// Messages smaller than this teach nothing about the per-byte cost of
/// encoding them whole.
pub const MIN_SAMPLE_BYTES: usize = 16 << 10;
/// Responses smaller than this teach nothing about the per-byte cost of
/// sending: the time holds the connection task's turn and the HTTP/2
/// frames whatever the size (a 20 kB response sent in 0.05 ms on a quiet
/// machine, in over 1 ms when the process is busy: 50 ns a byte, 25 times
/// the rate of a large one).
pub const MIN_SEND_SAMPLE_BYTES: usize = 256 << 10;
/// Samples of each stage before the measured cost replaces the prior.
pub const MIN_SAMPLES: u32 = 4;
/// Weight of a new sample.
const ALPHA: f64 = 0.1;
/// A sample counts as at most this many times the current estimate.
pub const MAX_SAMPLE_RATIO: f64 = 4.0;
/// The measured cost is inflated by this factor for the reserve.
const SAFETY: f64 = 1.5;
/// The client decodes what the server encoded, at a cost the server cannot
/// see; it is taken as this multiple of the server's encoding. Decoding
/// alone is less: prost took 2.7 times as long to decode a 10,000-event
/// ReadEvents response of 64-byte payloads as to encode it (1.13 ms for
/// 0.42 ms), 2.3 times with three tags per event, 1.5 times with 500-byte
/// payloads, and Python's upb about as long as prost (release build, one
/// thread, this 2-core machine). But what the client sees after the scan
/// stops also holds its own waking and scheduling, which on a loaded
/// machine the fixed floor does not cover; the factor stands for both.
/// With 3 instead of 8, one client following tokens under a 10 ms SLO saw
/// p99 12.1-12.4 ms instead of 9.7-9.8 (two runs each, same series), while
/// chains were no faster; at 50 ms the reserve is then generous (a 50 ms
/// call of 800 kB keeps back the capped half of its budget for a response
/// that reaches its client about 2.5 ms after the scan stops). Those
/// ratios, and 8, are to prost's encoding of built events. The events are
/// now encoded by [`crate::response::EncodedEvents`], about 1.7 times
/// faster (55 µs per 1,000 rows against 90-94 with building), so the
/// factor is 13: the reserve keeps back per byte about what 8 did, less
/// the building and encoding no longer done after the stop (the model
/// read 14.6 ns a byte before; with 8 against the new encoding, 8.4-9.1).
/// With 8, the bench's client-observed tails rose in most cells against
/// the run before (one client following tokens under 10 ms: p99/SLO 0.67
/// to 0.85, p99.9 0.80 to 1.03; 16 clients at 10 ms: p99 1.05 to 1.11).
/// The binary then took jemalloc for its allocator (`src/main.rs`), which
/// made the server's encoding faster, not the client's decoding: the
/// reserve fell from 17.1 to 13.0 µs a kB (medians over a cold-cache token
/// chain under 10 ms, responses over 20 kB), responses grew by a tenth and
/// client-observed p99/SLO rose (4 clients at 10 ms: 1.005 against 0.975,
/// medians of six 5 s cells). So the factor is 17, which keeps back per
/// byte what 13 did with the system allocator (p99/SLO 0.97).
pub const CLIENT_DECODE_PER_ENCODE: f64 = 17.0;

/// The reserve holds this many times the estimate of how late this process
/// wakes: the scan's own stop, the transport's send, the client's read.
pub const LATENESS_COVER: u32 = 3;
/// The lateness estimate halves for every this long without a sample.
pub const LATENESS_HALF_LIFE: Duration = Duration::from_secs(1);
/// A lateness sample counts as at most this long (a stalled process is not
/// the machine's usual state).
const MAX_LATENESS: Duration = Duration::from_millis(20);
/// The high estimate of the lateness: its mean plus this many deviations.
const LATENESS_DEVIATIONS: f64 = 4.0;

/// What the server measures of a response's cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Events encoded for the message body (while the scan delivers them).
    Encode,
    /// From the handler's answer until the transport took the body's last
    /// byte (for a read, copying its encoded events into the message
    /// included).
    Send,
}

#[derive(Clone, Copy, Debug, Default)]
struct Ewma {
    secs_per_byte: f64,
    samples: u32,
}

impl Ewma {
    const UNMEASURED: Self = Self {
        secs_per_byte: 0.0,
        samples: 0,
    };

    fn observe(&mut self, sample: f64) {
        if self.samples == 0 {
            self.secs_per_byte = sample;
        } else {
            let clipped = sample.min(self.secs_per_byte * MAX_SAMPLE_RATIO);
            self.secs_per_byte += ALPHA * (clipped - self.secs_per_byte);
        }
        self.samples = self.samples.saturating_add(1);
    }
}

/// The measured cost of encoding and sending responses, per byte.
#[derive(Debug, Default)]
pub struct ResponseCost {
    stages: Mutex<[Ewma; 2]>,
    /// How late this process wakes (None before a sample).
    lateness: Mutex<Option<MeanDeviation>>,
    /// [`ResponseCost::lateness_allowance`] in nanoseconds as of the last
    /// sample, kept at each sample: scans read it (aged to the moment)
    /// whenever they weigh their stop, without a lock.
    allowance_nanos: AtomicU64,
    /// When the last lateness sample came, in nanoseconds since `epoch`.
    sampled_nanos: AtomicU64,
    /// The instant lateness samples are dated from (the first one's).
    epoch: OnceLock<Instant>,
    /// [`ResponseCost::secs_per_byte`] as f64 bits ([`UNMEASURED`] for
    /// None), kept at each sample for the same reason.
    per_byte_bits: AtomicU64,
}

/// `per_byte_bits` before encoding is measured (a NaN
/// pattern no cost computes to).
const UNMEASURED: u64 = u64::MAX;

/// The process's response cost: every server of the process measures into
/// it (the codec is built by generated code, so it cannot be handed one).
pub static RESPONSE_COST: ResponseCost = ResponseCost::new();

impl ResponseCost {
    pub const fn new() -> Self {
        Self {
            stages: Mutex::new([Ewma::UNMEASURED; 2]),
            lateness: Mutex::new(None),
            allowance_nanos: AtomicU64::new(0),
            sampled_nanos: AtomicU64::new(0),
            epoch: OnceLock::new(),
            per_byte_bits: AtomicU64::new(UNMEASURED),
        }
    }

    /// Records that a timer of this process woke its task `late` after it
    /// was due, into the estimate aged to now (see [`LATENESS_HALF_LIFE`]).
    pub fn observe_lateness(&self, late: Duration) {
        let x = late.min(MAX_LATENESS).as_secs_f64();
        let now = Instant::now();
        let high = {
            let mut lateness = self.lateness.lock().expect("lateness");
            match lateness.as_mut() {
                Some(l) => {
                    l.scale(self.ageing(now));
                    l.observe(x);
                }
                None => *lateness = Some(MeanDeviation::first(x)),
            }
            lateness.map_or(0.0, |l| l.high(LATENESS_DEVIATIONS).max(0.0))
        };
        let allowance = Duration::from_secs_f64(high) * LATENESS_COVER;
        let nanos = u64::try_from(allowance.as_nanos()).unwrap_or(u64::MAX);
        self.allowance_nanos.store(nanos, Ordering::Relaxed);
        self.sampled_nanos
            .store(self.since_epoch(now), Ordering::Relaxed);
    }

    /// Nanoseconds from the first lateness sample to `now`.
    fn since_epoch(&self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_init(|| now);
        u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// What is left at `now` of the last sample's estimate: a half for every
    /// [`LATENESS_HALF_LIFE`] since it came.
    fn ageing(&self, now: Instant) -> f64 {
        let age = self
            .since_epoch(now)
            .saturating_sub(self.sampled_nanos.load(Ordering::Relaxed));
        #[allow(clippy::cast_precision_loss)] // ages far below 2^52 ns
        let half_lives = age as f64 / LATENESS_HALF_LIFE.as_nanos() as f64;
        0.5f64.powf(half_lives)
    }

    /// The time to keep back for this process and its client waking late:
    /// [`LATENESS_COVER`] times a high estimate of the lateness (zero
    /// before any sample), aged since the last sample.
    pub fn lateness_allowance(&self) -> Duration {
        let nanos = self.allowance_nanos.load(Ordering::Relaxed);
        if nanos == 0 {
            return Duration::ZERO;
        }
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let aged = (nanos as f64 * self.ageing(Instant::now())) as u64;
        Duration::from_nanos(aged)
    }

    /// Records that `stage` of a response of `bytes` encoded bytes took `took`.
    pub fn observe(&self, stage: Stage, bytes: usize, took: Duration) {
        let least = match stage {
            Stage::Encode => MIN_SAMPLE_BYTES,
            Stage::Send => MIN_SEND_SAMPLE_BYTES,
        };
        if bytes >= least {
            self.sample(stage, bytes, took);
        }
    }

    /// Records that encoding rows of `bytes` bytes in all took `took`,
    /// timed row by row (no fixed cost in it): a sample however few.
    pub fn observe_rows(&self, bytes: usize, took: Duration) {
        if bytes > 0 {
            self.sample(Stage::Encode, bytes, took);
        }
    }

    fn sample(&self, stage: Stage, bytes: usize, took: Duration) {
        #[allow(clippy::cast_precision_loss)] // byte counts far below 2^52
        let sample = took.as_secs_f64() / bytes as f64;
        let mut stages = self.stages.lock().expect("response cost");
        stages[stage as usize].observe(sample);
        let bits = per_byte(&stages).map_or(UNMEASURED, f64::to_bits);
        self.per_byte_bits.store(bits, Ordering::Relaxed);
    }

    /// Measured seconds per byte of a response, from the scan's stop to
    /// the client having decoded it, once encoding has [`MIN_SAMPLES`]
    /// samples (see the module docs).
    pub fn secs_per_byte(&self) -> Option<f64> {
        match self.per_byte_bits.load(Ordering::Relaxed) {
            UNMEASURED => None,
            bits => Some(f64::from_bits(bits)),
        }
    }

    /// The time to keep back for a response of `bytes`, with the safety
    /// factor; None before enough samples.
    pub fn reserve(&self, bytes: usize) -> Option<Duration> {
        #[allow(clippy::cast_precision_loss)] // byte counts far below 2^52
        self.secs_per_byte()
            .map(|per_byte| Duration::from_secs_f64(per_byte * bytes as f64 * SAFETY))
    }
}

/// Seconds per byte from the stages' estimates (see
/// [`ResponseCost::secs_per_byte`]).
fn per_byte(stages: &[Ewma; 2]) -> Option<f64> {
    let [encode, send] = *stages;
    if encode.samples < MIN_SAMPLES {
        return None;
    }
    let sending = if send.samples >= MIN_SAMPLES {
        send.secs_per_byte
    } else {
        encode.secs_per_byte
    };
    Some(sending + encode.secs_per_byte * CLIENT_DECODE_PER_ENCODE)
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn prior_until_encoding_is_measured() {
        let cost = ResponseCost::new();
        for _ in 0..MIN_SAMPLES {
            cost.observe(Stage::Send, 1_000_000, 500 * US);
        }
        assert_eq!(cost.reserve(100_000), None, "encoding not yet measured");
        for _ in 0..MIN_SAMPLES - 1 {
            cost.observe(Stage::Encode, 100_000, 100 * US);
        }
        assert_eq!(cost.reserve(100_000), None, "too few samples");
        cost.observe(Stage::Encode, 100_000, 100 * US);
        // Sending 0.5 ns per byte, the client's decoding 17 times the
        // encoding's 1: 17.5 ns per byte, times 1.5: 2,625 µs for 100 kB.
        let r = cost.reserve(100_000).expect("measured");
        assert!((r.as_secs_f64() - 2625e-6).abs() < 1e-6, "{r:?}");
        // Before sending is measured, encoding stands for it.
        let cost = ResponseCost::new();
        for _ in 0..MIN_SAMPLES {
            cost.observe(Stage::Encode, 100_000, 100 * US);
        }
        let r = cost.reserve(100_000).expect("measured");
        assert!((r.as_secs_f64() - 2700e-6).abs() < 1e-6, "{r:?}");
    }

    // A paused clock: no time passes between samples, nothing ages.
    #[tokio::test(start_paused = true)]
    async fn the_lateness_allowance_follows_how_late_the_process_wakes() {
        let cost = ResponseCost::new();
        assert_eq!(cost.lateness_allowance(), Duration::ZERO);
        for _ in 0..100 {
            cost.observe_lateness(100 * US);
        }
        // Steady 100 µs: no deviation left, the mean for each wake covered.
        let quiet = cost.lateness_allowance();
        let cover = 100 * US * LATENESS_COVER;
        assert!(quiet >= cover && quiet < cover * 13 / 10, "{quiet:?}");
        // A loaded machine: wakes 1-5 ms late.
        for i in 0..100 {
            cost.observe_lateness(Duration::from_millis(1 + (i % 5)));
        }
        let loaded = cost.lateness_allowance();
        assert!(loaded > Duration::from_millis(12), "{loaded:?}");
        // One stalled wake counts as MAX_LATENESS, not as itself.
        let before = cost.lateness_allowance();
        cost.observe_lateness(Duration::from_secs(5));
        let after = cost.lateness_allowance();
        // One sample moves the mean by at most an eighth of it and the
        // deviation by a quarter: the high estimate by 1/8 + 4/4.
        let most = MAX_LATENESS.as_secs_f64() * (0.125 + 1.0) * f64::from(LATENESS_COVER);
        assert!(
            after.as_secs_f64() - before.as_secs_f64() <= most,
            "{before:?} -> {after:?}"
        );
        // And quiet again: it comes back down.
        for _ in 0..200 {
            cost.observe_lateness(100 * US);
        }
        assert!(cost.lateness_allowance() < cover * 3 / 2);
    }

    /// The trap ageing gets out of: one late wake makes the allowance
    /// large, and scans that stop by their plan before their timers bring
    /// no sample to bring it down; without samples it fades, and so does
    /// the estimate the next sample is folded into.
    #[tokio::test(start_paused = true)]
    async fn the_allowance_fades_without_samples() {
        let cost = ResponseCost::new();
        cost.observe_lateness(Duration::from_millis(2));
        // The first sample's deviation is half of it: three times its
        // mean plus four deviations.
        assert_eq!(cost.lateness_allowance(), Duration::from_millis(18));
        tokio::time::advance(LATENESS_HALF_LIFE).await;
        let half = cost.lateness_allowance();
        assert!(half.abs_diff(Duration::from_millis(9)) < US, "{half:?}");
        tokio::time::advance(LATENESS_HALF_LIFE * 20).await;
        assert!(cost.lateness_allowance() < US);
        // A wake on time now finds an estimate that faded too.
        cost.observe_lateness(Duration::ZERO);
        assert!(
            cost.lateness_allowance() < US,
            "{:?}",
            cost.lateness_allowance()
        );
        // Samples that keep coming keep it up.
        for _ in 0..100 {
            tokio::time::advance(Duration::from_millis(5)).await;
            cost.observe_lateness(Duration::from_millis(1));
        }
        let kept = cost.lateness_allowance();
        assert!(kept > Duration::from_millis(2), "{kept:?}");
    }

    #[test]
    fn small_responses_are_not_samples() {
        let cost = ResponseCost::new();
        for _ in 0..100 {
            cost.observe(Stage::Send, MIN_SAMPLE_BYTES - 1, 5000 * US);
            cost.observe(Stage::Encode, MIN_SAMPLE_BYTES - 1, 5000 * US);
        }
        assert_eq!(cost.secs_per_byte(), None);
        // Encoding measured: 1 ns a byte, standing for sending too.
        for _ in 0..MIN_SAMPLES {
            cost.observe(Stage::Encode, 100_000, 100 * US);
        }
        let measured = cost.secs_per_byte().expect("measured");
        // A send under its own, larger floor is no sample either.
        for _ in 0..100 {
            cost.observe(Stage::Send, MIN_SEND_SAMPLE_BYTES - 1, 5000 * US);
        }
        assert_eq!(cost.secs_per_byte(), Some(measured));
    }

    /// The trap rows timed one by one get out of: a slow first sample
    /// (a cold process) makes the reserve so large that responses come out
    /// small; their rows still teach the real cost, so it comes down.
    #[test]
    fn rows_timed_one_by_one_are_samples_however_few() {
        let cost = ResponseCost::new();
        // The first response: 40 ns a byte.
        cost.observe_rows(2_000, 80 * US);
        for _ in 0..MIN_SAMPLES {
            cost.observe_rows(100, Duration::from_nanos(100));
        }
        let high = cost.secs_per_byte().expect("measured");
        // Then responses of 2 rows of 100 bytes at 1 ns a byte.
        for _ in 0..100 {
            cost.observe_rows(200, Duration::from_nanos(200));
        }
        let low = cost.secs_per_byte().expect("measured");
        assert!(high > 20e-9 * CLIENT_DECODE_PER_ENCODE, "{high}");
        // Sending unmeasured, encoding stands for it: 1 + 17 times 1 ns,
        // and what is left of the first sample after 104 steps of a tenth.
        assert!(low < (1.0 + CLIENT_DECODE_PER_ENCODE + 0.1) * 1e-9, "{low}");
        cost.observe_rows(0, 5000 * US);
        assert_eq!(cost.secs_per_byte(), Some(low), "no rows, no sample");
    }

    #[test]
    fn a_stalled_sample_moves_the_estimate_a_bounded_step() {
        let cost = ResponseCost::new();
        for _ in 0..20 {
            cost.observe(Stage::Send, 1_000_000, 1000 * US);
            cost.observe(Stage::Encode, 100_000, 100 * US);
        }
        let before = cost.secs_per_byte().expect("measured");
        // One encode preempted for 50 ms: 500 times its usual cost.
        cost.observe(Stage::Encode, 100_000, 50_000 * US);
        let after = cost.secs_per_byte().expect("measured");
        // Before: sending 1 ns per byte, encoding 1 ns counted for the
        // client's decoding.
        let encoding = before / (1.0 + CLIENT_DECODE_PER_ENCODE);
        let step = (after - before) / CLIENT_DECODE_PER_ENCODE / encoding;
        assert!(
            (step - ALPHA * (MAX_SAMPLE_RATIO - 1.0)).abs() < 1e-9,
            "step {step}"
        );
        // And it follows a real, lasting change.
        for _ in 0..200 {
            cost.observe(Stage::Send, 1_000_000, 3000 * US);
        }
        let slower = cost.secs_per_byte().expect("measured");
        assert!(slower > after + 1.5e-9, "{after} -> {slower}");
    }
}
