//! The latency budget of one read: who set it and when it ends.
//!
//! budget = min(request SLO, client gRPC deadline - margin - rounding,
//! server maximum); with neither an SLO nor a deadline, min(server default,
//! server maximum). The rounding ([`deadline_rounding`]) is what a client
//! may have added to its deadline when it wrote the `grpc-timeout` header.
//! The deadline is ours: the engine stops itself before it, rather than being
//! cut off by a framework timeout that would return nothing.

use std::time::Duration;

use tokio::time::Instant;

/// Server-side budget settings.
#[derive(Clone, Copy, Debug)]
pub struct BudgetConfig {
    /// Budget when the request gives neither an SLO nor a deadline.
    pub default: Duration,
    /// Upper bound on every budget.
    pub max: Duration,
    /// Subtracted from a client deadline to leave time for the response to travel.
    pub deadline_margin: Duration,
}

/// Server default budget.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(2);
/// Server maximum budget.
pub const MAX_BUDGET: Duration = Duration::from_secs(30);
/// Default margin subtracted from client deadlines.
pub const DEFAULT_DEADLINE_MARGIN: Duration = Duration::from_millis(5);

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            default: DEFAULT_BUDGET,
            max: MAX_BUDGET,
            deadline_margin: DEFAULT_DEADLINE_MARGIN,
        }
    }
}

/// The share of a client deadline of at least [`ROUNDED_FROM`] that a
/// client's `grpc-timeout` header may overstate it by.
pub const DEADLINE_ROUNDING_SHARE: u32 = 100;
/// Deadlines from this long on may be rounded up in their header.
pub const ROUNDED_FROM: Duration = Duration::from_secs(1);

/// How much longer than the client's deadline its `grpc-timeout` header
/// may say: gRPC C-core clients (Python's grpcio, C++, Ruby, PHP) write a
/// timeout of 1 s or more rounded up to a coarser unit, which keeps three
/// significant digits (10 ms from 1 s, 100 ms from 10 s, 1 s from 100 s),
/// so by up to a hundredth of it: a grpcio client's 10 s deadline arrives
/// as `10100m`, and its read, with only the margin taken off, was planned
/// to end 95 ms after the client had given up (audit: two of three calls
/// lost their page). Shorter timeouts go in exact milliseconds.
pub fn deadline_rounding(header: Duration) -> Duration {
    if header >= ROUNDED_FROM {
        header / DEADLINE_ROUNDING_SHARE
    } else {
        Duration::ZERO
    }
}

/// Which limit set the budget (and so names a deadline stop).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetSource {
    /// The request's SLO field.
    Slo,
    /// The client's gRPC deadline minus the margin.
    ClientDeadline,
    /// The server default (no SLO, no deadline).
    ServerDefault,
    /// The server maximum.
    ServerMax,
}

/// One read's budget.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub started: Instant,
    pub deadline: Instant,
    pub total: Duration,
    pub source: BudgetSource,
}

impl Budget {
    /// The budget for a request with an optional SLO and gRPC timeout, starting now.
    pub fn new(cfg: &BudgetConfig, slo: Option<Duration>, grpc_timeout: Option<Duration>) -> Self {
        Self::starting_at(cfg, slo, grpc_timeout, Instant::now())
    }

    /// [`Budget::new`] with an explicit start.
    pub fn starting_at(
        cfg: &BudgetConfig,
        slo: Option<Duration>,
        grpc_timeout: Option<Duration>,
        started: Instant,
    ) -> Self {
        let mut candidates = Vec::with_capacity(3);
        if let Some(slo) = slo {
            candidates.push((slo, BudgetSource::Slo));
        }
        if let Some(t) = grpc_timeout {
            candidates.push((
                t.saturating_sub(cfg.deadline_margin)
                    .saturating_sub(deadline_rounding(t)),
                BudgetSource::ClientDeadline,
            ));
        }
        if candidates.is_empty() {
            candidates.push((cfg.default, BudgetSource::ServerDefault));
        }
        candidates.push((cfg.max, BudgetSource::ServerMax));
        // min_by_key keeps the first of equal candidates: SLO, then deadline.
        let (total, source) = candidates
            .into_iter()
            .min_by_key(|(d, _)| *d)
            .expect("at least the server maximum");
        Self {
            started,
            deadline: started + total,
            total,
            source,
        }
    }

    /// Time left, zero once past the deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Time since the read began.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Parses a `grpc-timeout` header value: 1 to 8 ASCII digits and a unit
/// (H, M, S, m, u, n), per the gRPC over HTTP/2 spec.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn grpc_timeout_values() {
        assert_eq!(parse_grpc_timeout("100m"), Some(100 * MS));
        assert_eq!(parse_grpc_timeout("2S"), Some(1000 * 2 * MS));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5M"), Some(Duration::from_secs(300)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "100", "123456789m", "10x", "-1m", "1.5S", "١m"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn budget_takes_the_tightest_limit() {
        let cfg = BudgetConfig {
            default: 2000 * MS,
            max: 10_000 * MS,
            deadline_margin: 5 * MS,
        };
        let b = Budget::new(&cfg, None, None);
        assert_eq!(
            (b.total, b.source),
            (2000 * MS, BudgetSource::ServerDefault)
        );
        let b = Budget::new(&cfg, Some(50 * MS), None);
        assert_eq!((b.total, b.source), (50 * MS, BudgetSource::Slo));
        let b = Budget::new(&cfg, Some(50 * MS), Some(40 * MS));
        assert_eq!((b.total, b.source), (35 * MS, BudgetSource::ClientDeadline));
        let b = Budget::new(&cfg, None, Some(60_000 * MS));
        assert_eq!((b.total, b.source), (10_000 * MS, BudgetSource::ServerMax));
        let b = Budget::new(&cfg, Some(55 * MS), Some(60 * MS));
        assert_eq!((b.total, b.source), (55 * MS, BudgetSource::Slo));
        // A grpcio client's 10 s deadline, written as 10100m: a hundredth
        // of it may be rounding, taken off with the margin.
        let b = Budget::new(&cfg, None, Some(10_100 * MS));
        assert_eq!(
            (b.total, b.source),
            (9_994 * MS, BudgetSource::ClientDeadline)
        );
        let b = Budget::new(&cfg, None, Some(1_000 * MS));
        assert_eq!(b.total, 985 * MS);
        let b = Budget::new(&cfg, None, Some(999 * MS));
        assert_eq!(b.total, 994 * MS, "shorter timeouts are exact");
        let b = Budget::new(&cfg, None, Some(3 * MS));
        assert_eq!(
            (b.total, b.source),
            (Duration::ZERO, BudgetSource::ClientDeadline)
        );
        tokio::time::advance(10 * MS).await;
        let b = Budget::starting_at(&cfg, Some(50 * MS), None, Instant::now() - 20 * MS);
        assert_eq!(b.remaining(), 30 * MS);
    }
}
