//! Hedged storage reads: when a read request's coordinator is slow to
//! answer, the driver sends the same (idempotent) request to the next node
//! of the query plan and takes whichever answers first; the node that lost
//! the race is then put last in every plan for a while, so later requests
//! go around it rather than hedging again.
//!
//! Invariants:
//! * A read's hedge goes at its size class's hedge delay, or at half its
//!   timeout (which the engine derives from the call's remaining budget)
//!   when that is sooner, so the hedge always has at least half the time
//!   the first request had; a read whose timeout is under twice
//!   [`HedgeConfig::min_delay`] is not hedged.
//! * Extra load is capped: every read request earns [`HedgeConfig::max_extra`]
//!   of a credit, and every second earns [`HedgeConfig::min_per_sec`]
//!   (Finagle's retry-budget floor: a quiet replica can still hedge), up to
//!   [`CREDIT_BURST`]; a hedge needs a whole credit and spends it when it is
//!   sent. Over any long run hedges are at most `max_extra` of read requests
//!   plus `min_per_sec` a second (plus the burst).
//! * A node is demoted (put last) when a hedge beat it, when it left a read
//!   unanswered until the read's timeout, or when the read was given up
//!   (its call's budget ended) after waiting on it past the hedge delay
//!   (otherwise a node that stalls while hedges lack the time or the
//!   credit to beat it would stay first and cost every read).
//! * A demoted node stays last until it answers a probe sent to it alone
//!   ([`Hedging::due_for_probe`], at least [`HedgeConfig::demote_for`]
//!   after the demotion): live reads never test whether a stalled node is
//!   back.
//! * A demoted node is still in the plan, last: when every other replica is
//!   down it is still tried.
//!
//! The hedge delay is the 95th percentile of recent successful reads of the
//! same size class ([`size_class`]: a 10,000-row page takes far longer than
//! an index query), clamped to [`HedgeConfig::min_delay`,
//! `HedgeConfig::max_delay`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::cluster::ClusterState;
use scylla::errors::{RequestAttemptError, RequestError};
use scylla::observability::history::{AttemptId, HistoryListener, RequestId, SpeculativeId};
use scylla::policies::load_balancing::{
    FallbackPlan, LoadBalancingPolicy, NodeIdentifier, RoutingInfo, SingleTargetLoadBalancingPolicy,
};
use scylla::policies::retry::RetryDecision;
use scylla::policies::speculative_execution::{Context, SpeculativeExecutionPolicy};
use scylla::routing::Shard;
use scylla::statement::unprepared::Statement;

use crate::telemetry;

/// Credits a quiet period can save up: hedges that may go at once.
pub const CREDIT_BURST: u64 = 10;
/// Credits are counted in thousandths (exact sums).
const MILLI: u64 = 1000;
/// Successful read latencies the hedge delay is computed from, per class.
const WINDOW: usize = 256;
/// Size classes of reads, each with its own hedge delay.
pub const SIZE_CLASSES: usize = 4;

/// The size class of a read of at most `rows` rows: up to 100, 1,000,
/// 10,000, more.
pub fn size_class(rows: usize) -> usize {
    match rows {
        0..=100 => 0,
        101..=1_000 => 1,
        1_001..=10_000 => 2,
        _ => 3,
    }
}
/// The hedge delay is recomputed after this many new samples.
const RECOMPUTE_EVERY: usize = 32;

/// How reads are hedged.
#[derive(Clone, Debug)]
pub struct HedgeConfig {
    /// Off: no hedges, no demotion (the driver's plain token-aware plan).
    pub enabled: bool,
    /// Hedges per read request at most, over time (0.1: 10% extra requests),
    /// besides those [`HedgeConfig::min_per_sec`] earns.
    pub max_extra: f64,
    /// The hedge delay never goes below this...
    pub min_delay: Duration,
    /// ...nor above this.
    pub max_delay: Duration,
    /// Credits earned per second whatever the traffic (see the module
    /// docs), up to the burst.
    pub min_per_sec: f64,
    /// How long a node that lost a hedge race (or timed out) goes last
    /// before it is probed; it comes back when a probe answers.
    pub demote_for: Duration,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_extra: 0.1,
            min_delay: Duration::from_millis(2),
            max_delay: Duration::from_millis(100),
            min_per_sec: 2.0,
            demote_for: Duration::from_secs(2),
        }
    }
}

impl HedgeConfig {
    /// Hedging off.
    pub fn off() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }
}

/// Counts since start, for tests and the benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HedgeStats {
    /// Read requests sent (first attempts, hedged or not).
    pub reads: u64,
    /// Hedges sent.
    pub sent: u64,
    /// Hedges whose answer was used.
    pub won: u64,
    /// Times a node was put last.
    pub demotions: u64,
}

/// Shared hedging state of one store: the delay, the credits, the demoted
/// nodes and the counts.
#[derive(Debug)]
pub struct Hedging {
    config: HedgeConfig,
    credits: Mutex<Credits>,
    /// Thousandths earned per read.
    earn: u64,
    /// Thousandths earned per second.
    per_sec: u64,
    windows: [Mutex<Window>; SIZE_CLASSES],
    delay_micros: [AtomicU64; SIZE_CLASSES],
    demoted: Mutex<HashMap<IpAddr, Demotion>>,
    reads: AtomicU64,
    sent: AtomicU64,
    won: AtomicU64,
    demotions: AtomicU64,
}

/// Hedge credits, in thousandths (exact sums), and when time last earned
/// some.
#[derive(Debug)]
struct Credits {
    milli: u64,
    earned_at: Instant,
}

impl Credits {
    /// Adds `per_request` thousandths, and `per_sec` thousandths a second
    /// for the time since the last call, up to the burst. Time earns only
    /// while the credits are short of the burst; a fraction of a thousandth
    /// is carried to the next call.
    fn earn(&mut self, now: Instant, per_request: u64, per_sec: u64) {
        let elapsed = now.saturating_duration_since(self.earned_at).as_micros();
        let by_time = u128::from(per_sec) * elapsed / 1_000_000;
        if by_time > 0 {
            let took = by_time * 1_000_000 / u128::from(per_sec);
            self.earned_at += Duration::from_micros(u64::try_from(took).unwrap_or(u64::MAX));
        }
        let by_time = u64::try_from(by_time).unwrap_or(u64::MAX);
        self.milli = self
            .milli
            .saturating_add(per_request)
            .saturating_add(by_time)
            .min(CREDIT_BURST * MILLI);
        if self.milli == CREDIT_BURST * MILLI {
            self.earned_at = now;
        }
    }
}

/// A demoted node: last in plans; probed once `probe_at` has passed.
#[derive(Clone, Copy, Debug)]
struct Demotion {
    probe_at: Instant,
    /// A probe is on its way: not handed out again.
    probing: bool,
}

#[derive(Debug, Default)]
struct Window {
    samples: Vec<u64>,
    next: usize,
    since_recompute: usize,
}

impl Hedging {
    pub fn new(config: HedgeConfig) -> Arc<Self> {
        let initial = (config.min_delay * 5).min(config.max_delay);
        Arc::new(Self {
            credits: Mutex::new(Credits {
                milli: CREDIT_BURST * MILLI,
                earned_at: Instant::now(),
            }),
            earn: thousandths(config.max_extra, 1),
            // More a second than the burst holds would earn nothing more.
            per_sec: thousandths(config.min_per_sec, CREDIT_BURST),
            windows: Default::default(),
            delay_micros: std::array::from_fn(|_| AtomicU64::new(micros(initial))),
            demoted: Mutex::default(),
            reads: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            won: AtomicU64::new(0),
            demotions: AtomicU64::new(0),
            config,
        })
    }

    pub fn config(&self) -> &HedgeConfig {
        &self.config
    }

    /// How long a read of size class `class` waits for its first answer
    /// before hedging.
    pub fn delay(&self, class: usize) -> Duration {
        Duration::from_micros(self.delay_micros[class].load(Ordering::Relaxed))
    }

    pub fn stats(&self) -> HedgeStats {
        HedgeStats {
            reads: self.reads.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            won: self.won.load(Ordering::Relaxed),
            demotions: self.demotions.load(Ordering::Relaxed),
        }
    }

    /// Called once per read request before it is sent: earns its share of
    /// a credit and says when this request's hedge goes, if it may be
    /// hedged (hedging on, a whole credit saved, `timeout` at least twice
    /// the minimum delay): at its size class's delay, or at half `timeout`
    /// when that is sooner.
    pub fn admit(&self, timeout: Duration, class: usize) -> Option<HedgeAt> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(telemetry::STORAGE_READS).increment(1);
        if !self.config.enabled || timeout < self.config.min_delay * 2 {
            return None;
        }
        let mut credits = self.credits.lock().expect("hedge credits lock");
        credits.earn(Instant::now(), self.earn, self.per_sec);
        if credits.milli < MILLI {
            return None;
        }
        // One reading of the delay decides: a recompute between two
        // readings must not hand a tight read the class's later hedge.
        let half = timeout / 2;
        Some(if self.delay(class) <= half {
            HedgeAt::ClassDelay
        } else {
            HedgeAt::After(half)
        })
    }

    /// A successful read of size class `class` took `took`: feeds its
    /// hedge delay.
    pub fn record(&self, took: Duration, class: usize) {
        let mut w = self.windows[class].lock().expect("hedge window lock");
        let sample = micros(took);
        if w.samples.len() < WINDOW {
            w.samples.push(sample);
        } else {
            let i = w.next;
            w.samples[i] = sample;
        }
        w.next = (w.next + 1) % WINDOW;
        w.since_recompute += 1;
        if w.since_recompute < RECOMPUTE_EVERY {
            return;
        }
        w.since_recompute = 0;
        let mut sorted = w.samples.clone();
        drop(w);
        sorted.sort_unstable();
        let p95 = sorted[(sorted.len() * 95 / 100).min(sorted.len() - 1)];
        let delay = Duration::from_micros(p95).clamp(self.config.min_delay, self.config.max_delay);
        self.delay_micros[class].store(micros(delay), Ordering::Relaxed);
    }

    /// Whether any node is demoted now (the common answer, no, lets plans
    /// pass through untouched).
    pub fn any_demoted(&self) -> bool {
        !self.demoted.lock().expect("demoted lock").is_empty()
    }

    /// Whether `ip` is demoted: it lost a race, timed out or was given up
    /// on, and has not answered a probe since.
    pub fn is_demoted(&self, ip: IpAddr) -> bool {
        self.demoted.lock().expect("demoted lock").contains_key(&ip)
    }

    /// Puts `ip` last (again: a failed probe or a new slow answer moves its
    /// next probe [`HedgeConfig::demote_for`] away).
    pub fn demote(&self, ip: IpAddr) {
        let demotion = Demotion {
            probe_at: Instant::now() + self.config.demote_for,
            probing: false,
        };
        let fresh = self
            .demoted
            .lock()
            .expect("demoted lock")
            .insert(ip, demotion)
            .is_none();
        if fresh {
            self.demotions.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(telemetry::STORAGE_DEMOTIONS).increment(1);
            tracing::info!(node = %ip, probe_after_ms = self.config.demote_for.as_millis(), "storage node demoted after a slow answer");
        }
    }

    /// Demoted nodes whose probe is due at `now`; each is handed out once,
    /// and comes back by [`Hedging::reinstate`] (the probe answered) or
    /// [`Hedging::demote`] (it did not).
    pub fn due_for_probe(&self, now: Instant) -> Vec<IpAddr> {
        let mut demoted = self.demoted.lock().expect("demoted lock");
        demoted
            .iter_mut()
            .filter(|(_, d)| !d.probing && d.probe_at <= now)
            .map(|(ip, d)| {
                d.probing = true;
                *ip
            })
            .collect()
    }

    /// `ip` answered its probe: back in its place in plans.
    pub fn reinstate(&self, ip: IpAddr) {
        if self
            .demoted
            .lock()
            .expect("demoted lock")
            .remove(&ip)
            .is_some()
        {
            tracing::info!(node = %ip, "storage node answered its probe; no longer demoted");
        }
    }

    fn hedge_sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(telemetry::STORAGE_HEDGES, "result" => "sent").increment(1);
        let mut credits = self.credits.lock().expect("hedge credits lock");
        credits.milli = credits.milli.saturating_sub(MILLI);
    }

    fn hedge_won(&self) {
        self.won.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(telemetry::STORAGE_HEDGES, "result" => "won").increment(1);
    }

    /// A listener for one read request (hedged or not).
    pub fn trace(self: &Arc<Self>) -> Arc<Trace> {
        Arc::new(Trace {
            hedging: Arc::clone(self),
            attempts: Mutex::default(),
        })
    }
}

/// `x` clamped to [0, `at_most`], in thousandths.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]
fn thousandths(x: f64, at_most: u64) -> u64 {
    // Clamped first (`at_most` is a small count, exact as a float): the
    // cast neither truncates nor loses a sign.
    (x.clamp(0.0, at_most as f64) * MILLI as f64).round() as u64
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// When an admitted read's hedge goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HedgeAt {
    /// At its size class's current delay.
    ClassDelay,
    /// At this delay: half its timeout, sooner than the class's delay.
    After(Duration),
}

/// The driver's speculative execution for hedged requests of one size
/// class: one hedge after the class's current delay. Which requests use it
/// is decided by [`Hedging::admit`].
#[derive(Debug)]
pub struct HedgePolicy {
    pub hedging: Arc<Hedging>,
    pub class: usize,
    /// A fixed delay instead of the class's (a read whose timeout is
    /// shorter than twice the class's delay hedges at half its timeout).
    pub after: Option<Duration>,
}

impl SpeculativeExecutionPolicy for HedgePolicy {
    fn max_retry_count(&self, _: &Context) -> usize {
        1
    }

    fn retry_interval(&self, _: &Context) -> Duration {
        self.after.unwrap_or_else(|| self.hedging.delay(self.class))
    }
}

/// What happened to the attempts of one hedged request: learns which node
/// lost the race. Attempt ids index `attempts`.
#[derive(Debug)]
pub struct Trace {
    hedging: Arc<Hedging>,
    attempts: Mutex<Attempts>,
}

#[derive(Debug, Default)]
struct Attempts {
    list: Vec<Attempt>,
    /// An attempt answered: the race is over (a loser's late answer, which
    /// the driver may still report, changes nothing).
    settled: bool,
}

#[derive(Debug)]
struct Attempt {
    hedge: bool,
    node: IpAddr,
    answered: bool,
}

impl Trace {
    /// Demotes the nodes of attempts that never answered.
    fn demote_unanswered(&self, attempts: &Attempts) {
        for a in attempts.list.iter().filter(|a| !a.answered) {
            self.hedging.demote(a.node);
        }
    }
}

impl Trace {
    /// The request was given up (dropped unanswered) after waiting past its
    /// hedge delay: the nodes it still waited on are slow.
    pub fn given_up(&self) {
        if !self.hedging.config.enabled {
            return;
        }
        let attempts = self.attempts.lock().expect("trace lock");
        if !attempts.settled {
            self.demote_unanswered(&attempts);
        }
    }

    /// The one node every attempt of the request went to, if there was one.
    pub fn only_node(&self) -> Option<IpAddr> {
        let attempts = self.attempts.lock().expect("trace lock");
        let first = attempts.list.first()?.node;
        attempts
            .list
            .iter()
            .all(|a| a.node == first)
            .then_some(first)
    }
}

impl HistoryListener for Trace {
    fn log_request_start(&self) -> RequestId {
        RequestId(0)
    }

    fn log_request_success(&self, _: RequestId) {}

    fn log_request_error(&self, _: RequestId, error: &RequestError) {
        // Timed out with attempts outstanding: those nodes are slow.
        if self.hedging.config.enabled && matches!(error, RequestError::RequestTimeout(_)) {
            self.demote_unanswered(&self.attempts.lock().expect("trace lock"));
        }
    }

    fn log_new_speculative_fiber(&self, _: RequestId) -> SpeculativeId {
        SpeculativeId(0)
    }

    fn log_attempt_start(
        &self,
        _: RequestId,
        speculative: Option<SpeculativeId>,
        node: SocketAddr,
    ) -> AttemptId {
        let hedge = speculative.is_some();
        if hedge {
            self.hedging.hedge_sent();
        }
        let mut attempts = self.attempts.lock().expect("trace lock");
        attempts.list.push(Attempt {
            hedge,
            node: node.ip(),
            answered: false,
        });
        AttemptId(attempts.list.len() - 1)
    }

    fn log_attempt_success(&self, id: AttemptId) {
        let mut attempts = self.attempts.lock().expect("trace lock");
        if attempts.settled {
            return;
        }
        let Some(a) = attempts.list.get_mut(id.0) else {
            return;
        };
        a.answered = true;
        let hedge_won = a.hedge;
        attempts.settled = true;
        if hedge_won {
            self.hedging.hedge_won();
            self.demote_unanswered(&attempts);
        }
    }

    fn log_attempt_error(&self, id: AttemptId, _: &RequestAttemptError, _: &RetryDecision) {
        if let Some(a) = self.attempts.lock().expect("trace lock").list.get_mut(id.0) {
            a.answered = true;
        }
    }
}

/// Probes the demoted nodes of `hedging` as they fall due, one query to
/// each node alone, until the session is dropped: a node that answers
/// within [`HedgeConfig::demote_for`] is reinstated, one that does not is
/// demoted again.
pub async fn probe_demoted(session: Weak<Session>, hedging: Arc<Hedging>) {
    let tick = (hedging.config.demote_for / 4).max(Duration::from_millis(10));
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(session) = session.upgrade() else {
            return;
        };
        for ip in hedging.due_for_probe(Instant::now()) {
            let session = Arc::clone(&session);
            let hedging = Arc::clone(&hedging);
            tokio::spawn(async move {
                if answers(&session, ip, hedging.config.demote_for).await {
                    hedging.reinstate(ip);
                } else {
                    hedging.demote(ip);
                }
            });
        }
    }
}

/// Whether the node at `ip` answers a trivial query sent to it alone
/// within `timeout` (a node no longer in the cluster answers for nothing
/// and counts as answered: there is nothing left to demote).
async fn answers(session: &Session, ip: IpAddr, timeout: Duration) -> bool {
    let state = session.get_cluster_state();
    let Some(node) = state
        .get_nodes_info()
        .iter()
        .find(|n| n.address.ip() == ip)
        .cloned()
    else {
        return true;
    };
    let profile = ExecutionProfile::builder()
        .load_balancing_policy(SingleTargetLoadBalancingPolicy::new(
            NodeIdentifier::Node(node),
            None,
        ))
        .request_timeout(Some(timeout))
        .build()
        .into_handle();
    let mut stmt = Statement::new("SELECT release_version FROM system.local");
    stmt.set_execution_profile_handle(Some(profile));
    session.query_unpaged(stmt, ()).await.is_ok()
}

/// The driver's plan with demoted nodes moved last.
#[derive(Debug)]
pub struct AvoidDemoted {
    pub inner: Arc<dyn LoadBalancingPolicy>,
    pub hedging: Arc<Hedging>,
}

impl LoadBalancingPolicy for AvoidDemoted {
    fn pick<'a>(
        &'a self,
        request: &'a RoutingInfo,
        cluster: &'a ClusterState,
    ) -> Option<(scylla::cluster::NodeRef<'a>, Option<Shard>)> {
        let first = self.inner.pick(request, cluster)?;
        if !self.hedging.is_demoted(first.0.address.ip()) {
            return Some(first);
        }
        self.inner
            .fallback(request, cluster)
            .find(|(n, _)| !self.hedging.is_demoted(n.address.ip()))
            .or(Some(first))
    }

    fn fallback<'a>(
        &'a self,
        request: &'a RoutingInfo,
        cluster: &'a ClusterState,
    ) -> FallbackPlan<'a> {
        if !self.hedging.any_demoted() {
            return self.inner.fallback(request, cluster);
        }
        let (mut plan, last): (Vec<_>, Vec<_>) = self
            .inner
            .fallback(request, cluster)
            .partition(|(n, _)| !self.hedging.is_demoted(n.address.ip()));
        plan.extend(last);
        Box::new(plan.into_iter())
    }

    fn on_request_success(
        &self,
        request: &RoutingInfo,
        latency: Duration,
        node: scylla::cluster::NodeRef<'_>,
    ) {
        self.inner.on_request_success(request, latency, node);
    }

    fn on_request_failure(
        &self,
        request: &RoutingInfo,
        latency: Duration,
        node: scylla::cluster::NodeRef<'_>,
        error: &RequestAttemptError,
    ) {
        self.inner.on_request_failure(request, latency, node, error);
    }

    fn name(&self) -> String {
        format!("AvoidDemoted({})", self.inner.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hedges_stay_within_the_extra_share() {
        let h = Hedging::new(HedgeConfig {
            min_per_sec: 0.0,
            ..HedgeConfig::default()
        });
        let mut hedged = 0u64;
        for _ in 0..10_000 {
            if h.admit(Duration::from_secs(1), 0).is_some() {
                h.hedge_sent();
                hedged += 1;
            }
        }
        // The initial burst, then a tenth of a credit per read after the
        // first (whose share is lost to the full bucket): 10 + 999.
        assert_eq!(hedged, CREDIT_BURST + 999);
        assert_eq!(h.stats().sent, hedged);
        assert_eq!(h.stats().reads, 10_000);
    }

    #[test]
    fn hedges_leave_the_second_request_half_the_time_or_none() {
        let h = Hedging::new(HedgeConfig::default());
        assert_eq!(h.delay(1), Duration::from_millis(10), "before any sample");
        assert_eq!(
            h.admit(Duration::from_millis(20), 1),
            Some(HedgeAt::ClassDelay)
        );
        assert_eq!(
            h.admit(Duration::from_millis(19), 1),
            Some(HedgeAt::After(Duration::from_micros(9_500))),
            "under twice the delay: at half the timeout"
        );
        assert_eq!(
            h.admit(Duration::from_micros(3_999), 1),
            None,
            "under twice the minimum"
        );
        let off = Hedging::new(HedgeConfig::off());
        assert_eq!(off.admit(Duration::from_secs(1), 1), None);
    }

    #[test]
    fn delay_follows_the_95th_percentile_within_bounds() {
        let h = Hedging::new(HedgeConfig::default());
        for i in 0..100u64 {
            h.record(Duration::from_micros(1000 + i * 100), 2);
        }
        // 96 samples seen at the last recompute: p95 of 1.0..10.5 ms is 10.1 ms.
        assert_eq!(h.delay(2), Duration::from_micros(10_100));
        assert_eq!(
            h.delay(0),
            Duration::from_millis(10),
            "other classes untouched"
        );
        for _ in 0..WINDOW {
            h.record(Duration::from_micros(100), 2);
        }
        assert_eq!(
            h.delay(2),
            HedgeConfig::default().min_delay,
            "clamped below"
        );
        assert_eq!(
            [50, 101, 10_000, 10_001].map(size_class),
            [0, 1, 2, 3],
            "size classes"
        );
    }

    #[test]
    fn a_hedge_that_wins_demotes_the_node_that_did_not_answer() {
        let h = Hedging::new(HedgeConfig::default());
        let slow: SocketAddr = "127.0.0.2:9042".parse().unwrap();
        let fast: SocketAddr = "127.0.0.3:9042".parse().unwrap();
        let trace = h.trace();
        let r = trace.log_request_start();
        trace.log_attempt_start(r, None, slow);
        let s = trace.log_new_speculative_fiber(r);
        let hedge = trace.log_attempt_start(r, Some(s), fast);
        trace.log_attempt_success(hedge);
        assert!(h.any_demoted() && h.is_demoted(slow.ip()));
        assert!(!h.is_demoted(fast.ip()));
        assert_eq!(
            h.stats(),
            HedgeStats {
                reads: 0,
                sent: 1,
                won: 1,
                demotions: 1
            }
        );
        // A first attempt that answers demotes nothing.
        let h = Hedging::new(HedgeConfig::default());
        let trace = h.trace();
        let r = trace.log_request_start();
        let first = trace.log_attempt_start(r, None, slow);
        let s = trace.log_new_speculative_fiber(r);
        let hedge = trace.log_attempt_start(r, Some(s), fast);
        trace.log_attempt_success(first);
        // The hedge's late answer, reported after the race, changes nothing.
        trace.log_attempt_success(hedge);
        assert!(!h.any_demoted());
        assert_eq!((h.stats().sent, h.stats().won), (1, 0));
    }

    #[test]
    fn time_earns_credits_up_to_the_burst_carrying_fractions() {
        let t0 = Instant::now();
        let mut c = Credits {
            milli: 0,
            earned_at: t0,
        };
        c.earn(t0 + Duration::from_millis(500), 0, 2 * MILLI);
        assert_eq!(c.milli, MILLI, "2 a second for half a second");
        // 3 a second: 1.5 thousandths in 500 us, 1 now and the half carried.
        let mut c = Credits {
            milli: 0,
            earned_at: t0,
        };
        c.earn(t0 + Duration::from_micros(500), 0, 3 * MILLI);
        assert_eq!(c.milli, 1);
        c.earn(t0 + Duration::from_millis(1), 0, 3 * MILLI);
        assert_eq!(c.milli, 3, "the carried half counts");
        c.earn(t0 + Duration::from_millis(1), 100, 3 * MILLI);
        assert_eq!(c.milli, 103, "a request earns its share");
        // A full bucket earns nothing while full: a spent credit comes back
        // only with time after the spend.
        let full = t0 + Duration::from_secs(60);
        c.earn(full, 0, 3 * MILLI);
        assert_eq!(c.milli, CREDIT_BURST * MILLI);
        c.milli -= MILLI;
        c.earn(full + Duration::from_millis(100), 0, 3 * MILLI);
        assert_eq!(c.milli, CREDIT_BURST * MILLI - MILLI + 300);
    }

    #[test]
    fn a_quiet_store_earns_hedges_by_time() {
        let h = Hedging::new(HedgeConfig {
            min_per_sec: 1000.0,
            ..HedgeConfig::default()
        });
        let mut hedged = 0;
        for _ in 0..CREDIT_BURST {
            assert!(h.admit(Duration::from_secs(1), 0).is_some());
            h.hedge_sent();
            hedged += 1;
        }
        // Out of credit; the rate (clamped to the burst a second) earns one
        // back within 100 ms, which 0.1 per request alone would not.
        std::thread::sleep(Duration::from_millis(150));
        assert!(h.admit(Duration::from_secs(1), 0).is_some());
        assert_eq!(hedged, CREDIT_BURST);
    }

    #[test]
    fn a_demoted_node_stays_last_until_a_probe_answers() {
        let h = Hedging::new(HedgeConfig::default());
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let now = Instant::now();
        h.demote(ip);
        assert!(h.is_demoted(ip) && h.any_demoted());
        assert!(h.due_for_probe(now).is_empty(), "not before demote_for");
        let due = now + HedgeConfig::default().demote_for + Duration::from_millis(1);
        assert_eq!(h.due_for_probe(due), [ip]);
        assert!(h.due_for_probe(due).is_empty(), "handed out once");
        assert!(h.is_demoted(ip), "still last while its probe is out");
        // The probe failed: demoted again, due again demote_for later.
        h.demote(ip);
        assert!(h.due_for_probe(Instant::now()).is_empty());
        assert_eq!(h.stats().demotions, 1, "one demotion, probed twice");
        let later = Instant::now() + HedgeConfig::default().demote_for + Duration::from_millis(1);
        assert_eq!(h.due_for_probe(later), [ip]);
        h.reinstate(ip);
        assert!(!h.is_demoted(ip) && !h.any_demoted());
    }

    #[test]
    fn a_request_given_up_demotes_the_nodes_it_still_waited_on() {
        let h = Hedging::new(HedgeConfig::default());
        let stalled: SocketAddr = "127.0.0.2:9042".parse().unwrap();
        let trace = h.trace();
        let r = trace.log_request_start();
        trace.log_attempt_start(r, None, stalled);
        trace.given_up();
        assert!(h.is_demoted(stalled.ip()));
        // An answered request given up afterwards (its answer came too late
        // for the call) demotes nothing; nor does anything with hedging off.
        for config in [HedgeConfig::default(), HedgeConfig::off()] {
            let h = Hedging::new(config);
            let trace = h.trace();
            let r = trace.log_request_start();
            let a = trace.log_attempt_start(r, None, stalled);
            if h.config().enabled {
                trace.log_attempt_success(a);
            }
            trace.given_up();
            assert!(!h.any_demoted());
        }
    }
}
