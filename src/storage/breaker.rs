//! A circuit breaker in front of a store: after repeated transient failures
//! it fails requests at once instead of letting each wait out its budget,
//! then lets a single probe through after a cool-down and closes again when
//! the probe succeeds.
//!
//! While the probe is out (half-open), other requests wait for its outcome
//! instead of failing: a read resuming from a token sends its bucket-index
//! query and its shard queries at once, and if all but the probe failed at
//! once the read would end, drop its probe and leave the circuit open
//! however healthy storage is. Waiting is bounded by the probe's own
//! timeout and by the caller, which drops the request when its budget ends.
//!
//! On a store of several nodes, failures that all came from one node (a
//! node down or frozen while the others answer) never open the circuit:
//! the driver and hedged reads route around that node, and failing every
//! request fast would turn one node's fault into an outage. The circuit
//! opens once the streak of failures spans two nodes, or includes a
//! failure not attributed to one node.
//!
//! A streak counts waves, not requests: a failure counts only if its request
//! was sent after the last counted failure. Requests in flight together that
//! fail together are one event (a node SIGKILLed fails every read waiting on
//! it, through whichever coordinator, once its budget ends), however many a
//! scan reading ahead had sent; the circuit opens when requests sent after
//! seeing failures fail as well.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{BucketQuery, Created, IndexedBucket, ShardQuery, Storage, StorageError};
use crate::model::{Namespace, NewEvent, Row};
use crate::telemetry;

/// Breaker settings.
#[derive(Clone, Copy, Debug)]
pub struct BreakerConfig {
    /// Consecutive transient failures that open the circuit, each of a
    /// request sent after the one before failed (see the module docs).
    pub failure_threshold: u32,
    /// How long the circuit stays open before a probe may pass.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cool_down: Duration::from_secs(2),
        }
    }
}

/// State of the circuit, as exported in metrics (0, 1, 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
    /// Requests pass; counting consecutive failures (waves, see the
    /// module docs).
    Closed { failures: u32 },
    /// One probe is in flight; everything else fails fast.
    HalfOpen,
    /// Everything fails fast until `until`.
    Open { until: Instant },
}

impl CircuitState {
    fn gauge(&self) -> f64 {
        match self {
            Self::Closed { .. } => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open { .. } => 2.0,
        }
    }
}

/// A store behind a circuit breaker.
pub struct Breaker<S> {
    inner: S,
    config: BreakerConfig,
    state: Mutex<CircuitState>,
    /// Nodes the current streak of failures came from (`None`: a failure
    /// not attributed to one node). Cleared by a success.
    failing: Mutex<HashSet<Option<IpAddr>>>,
    /// Failures counted since start. A request notes it when admitted; its
    /// failure counts only if no other was counted meanwhile. Changed only
    /// under the `state` lock.
    counted: AtomicU64,
    /// Bumped whenever the state changes, for requests waiting out a probe.
    changes: tokio::sync::watch::Sender<u64>,
}

/// What [`Breaker::admit`] decided.
enum Admit {
    /// Pass; `probe` says whether this request is the half-open probe,
    /// `seen` is [`Breaker::counted`] at admission.
    Pass { probe: bool, seen: u64 },
    /// A probe is out: wait for the state to change, then ask again.
    Wait,
}

impl<S: Storage> Breaker<S> {
    pub fn new(inner: S, config: BreakerConfig) -> Self {
        metrics::gauge!(telemetry::CIRCUIT_STATE).set(0.0);
        Self {
            inner,
            config,
            state: Mutex::new(CircuitState::Closed { failures: 0 }),
            failing: Mutex::default(),
            counted: AtomicU64::new(0),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }

    pub fn state(&self) -> CircuitState {
        *self.state.lock().expect("breaker lock")
    }

    fn set(&self, state: &mut CircuitState, next: CircuitState) {
        if std::mem::discriminant(state) != std::mem::discriminant(&next) {
            tracing::warn!(from = ?state, to = ?next, "storage circuit changed");
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
        *state = next;
        metrics::gauge!(telemetry::CIRCUIT_STATE).set(next.gauge());
    }

    /// Storage answered a request made outside the breaker (the health
    /// probe): a circuit open past its cool-down closes, as after a good
    /// probe, instead of showing open until the next request passes.
    pub fn storage_answered(&self) {
        let mut state = self.state.lock().expect("breaker lock");
        if let CircuitState::Open { until } = *state {
            if Instant::now() >= until {
                self.failing.lock().expect("breaker lock").clear();
                self.set(&mut state, CircuitState::Closed { failures: 0 });
            }
        }
    }

    /// Admits a request, fails it fast, or tells it to wait for the probe.
    fn admit(&self) -> Result<Admit, StorageError> {
        let mut state = self.state.lock().expect("breaker lock");
        let seen = self.counted.load(Ordering::Relaxed);
        match *state {
            CircuitState::Closed { .. } => Ok(Admit::Pass { probe: false, seen }),
            CircuitState::Open { until } if Instant::now() >= until => {
                self.set(&mut state, CircuitState::HalfOpen);
                Ok(Admit::Pass { probe: true, seen })
            }
            CircuitState::Open { until } => Err(StorageError::CircuitOpen {
                retry_after: until.saturating_duration_since(Instant::now()),
            }),
            CircuitState::HalfOpen => Ok(Admit::Wait),
        }
    }

    /// Admits a request, waiting while a probe is out (see the module docs).
    async fn admit_or_wait(&self) -> Result<(bool, u64), StorageError> {
        let mut changes = self.changes.subscribe();
        loop {
            // Marked seen before the state is read: a change after it wakes us.
            changes.borrow_and_update();
            match self.admit()? {
                Admit::Pass { probe, seen } => return Ok((probe, seen)),
                // The sender lives in `self`: waiting cannot fail.
                Admit::Wait => {
                    let _ = changes.changed().await;
                }
            }
        }
    }

    /// Adds a failure (or, with `None`, a success) to the streak; says
    /// whether the streak's failures span more than one node of the store.
    fn spread(&self, failure: Option<&StorageError>) -> bool {
        let mut failing = self.failing.lock().expect("breaker lock");
        let Some(err) = failure else {
            failing.clear();
            return false;
        };
        failing.insert(err.node());
        failing.contains(&None) || failing.len() >= self.inner.nodes().clamp(1, 2)
    }

    fn record<T>(&self, probe: bool, seen: u64, result: &Result<T, StorageError>) {
        let failure = result.as_ref().err().filter(|e| e.is_transient());
        let spread = self.spread(failure);
        let mut state = self.state.lock().expect("breaker lock");
        let failed = failure.is_some();
        // Another failure counted while this request was out: same wave.
        let counts = failed && self.counted.load(Ordering::Relaxed) == seen;
        if counts {
            self.counted.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(err) = failure {
            tracing::debug!(error = %super::chain(err), node = ?err.node(), counts, spread, "storage failure");
        }
        let next = match (*state, failed) {
            (_, false) if probe || matches!(*state, CircuitState::Closed { .. }) => {
                CircuitState::Closed { failures: 0 }
            }
            (_, true) if probe => CircuitState::Open {
                until: Instant::now() + self.config.cool_down,
            },
            (CircuitState::Closed { .. }, true) if !counts => *state,
            (CircuitState::Closed { failures }, true)
                if failures + 1 < self.config.failure_threshold || !spread =>
            {
                CircuitState::Closed {
                    failures: failures.saturating_add(1),
                }
            }
            (CircuitState::Closed { .. }, true) => CircuitState::Open {
                until: Instant::now() + self.config.cool_down,
            },
            (other, _) => other,
        };
        self.set(&mut state, next);
    }

    async fn call<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        let (probe, seen) = self.admit_or_wait().await?;
        // If the caller drops this future mid-probe, the half-open state must
        // not stick: the guard reopens the circuit for another probe.
        let guard = ProbeGuard {
            breaker: self,
            armed: probe,
        };
        let result = f.await;
        std::mem::forget(guard);
        self.record(probe, seen, &result);
        result
    }
}

struct ProbeGuard<'a, S: Storage> {
    breaker: &'a Breaker<S>,
    armed: bool,
}

impl<S: Storage> Drop for ProbeGuard<'_, S> {
    fn drop(&mut self) {
        if self.armed {
            let mut state = self.breaker.state.lock().expect("breaker lock");
            if *state == CircuitState::HalfOpen {
                self.breaker.set(
                    &mut state,
                    CircuitState::Open {
                        until: Instant::now(),
                    },
                );
            }
        }
    }
}

impl<S: Storage> Storage for Breaker<S> {
    async fn create_namespace(&self, ns: &Namespace) -> Result<Created, StorageError> {
        self.call(self.inner.create_namespace(ns)).await
    }

    async fn get_namespace(&self, name: &str) -> Result<Option<Namespace>, StorageError> {
        self.call(self.inner.get_namespace(name)).await
    }

    async fn list_namespaces(&self, limit: usize) -> Result<Vec<Namespace>, StorageError> {
        self.call(self.inner.list_namespaces(limit)).await
    }

    async fn write_events(&self, ns: &Namespace, events: &[NewEvent]) -> Result<(), StorageError> {
        self.call(self.inner.write_events(ns, events)).await
    }

    async fn list_buckets(&self, query: BucketQuery) -> Result<Vec<IndexedBucket>, StorageError> {
        self.call(self.inner.list_buckets(query)).await
    }

    async fn read_shard(&self, query: ShardQuery) -> Result<Vec<Row>, StorageError> {
        self.call(self.inner.read_shard(query)).await
    }

    fn nodes(&self) -> usize {
        self.inner.nodes()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::{Key, Order, Span};
    use crate::storage::memory::MemoryStore;
    use crate::storage::Cause;

    fn query() -> ShardQuery {
        ShardQuery {
            namespace: Arc::new(Namespace {
                name: "n".into(),
                bucket_width_micros: 1000,
                shards: 1,
                retention_seconds: 0,
                indexes_shards: true,
            }),
            series_id: "s".into(),
            bucket: 0,
            shard: 0,
            span: Span {
                after: Key::boundary(0),
                before: Key::boundary(100),
            },
            order: Order::Ascending,
            limit: 10,
            timeout: Duration::from_secs(1),
        }
    }

    /// A breaker over `store` that opens after `failures` and cools down
    /// for 2 s.
    fn open_after(store: &MemoryStore, failures: u32) -> Breaker<MemoryStore> {
        Breaker::new(
            store.clone(),
            BreakerConfig {
                failure_threshold: failures,
                cool_down: Duration::from_secs(2),
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_circuit_closes_when_storage_answers_the_health_probe_after_its_cool_down() {
        let store = MemoryStore::new();
        let breaker = open_after(&store, 1);
        store.fail_next([StorageError::Transient("unavailable".into())]);
        assert!(breaker.read_shard(query()).await.is_err());
        assert!(matches!(breaker.state(), CircuitState::Open { .. }));
        breaker.storage_answered();
        assert!(
            matches!(breaker.state(), CircuitState::Open { .. }),
            "the cool-down holds"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        breaker.storage_answered();
        assert_eq!(breaker.state(), CircuitState::Closed { failures: 0 });
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_repeated_failures_fails_fast_and_closes_after_a_good_probe() {
        let store = MemoryStore::new();
        let breaker = open_after(&store, 3);
        store.fail_next((0..3).map(|_| StorageError::Transient("unavailable".into())));
        for _ in 0..3 {
            assert!(breaker.read_shard(query()).await.is_err());
        }
        assert!(matches!(breaker.state(), CircuitState::Open { .. }));
        // Open: no request reaches the store.
        let before = store.shard_queries();
        let err = breaker.read_shard(query()).await.unwrap_err();
        assert!(
            matches!(err, StorageError::CircuitOpen { retry_after } if retry_after == Duration::from_secs(2))
        );
        assert_eq!(store.shard_queries(), before);
        // After the cool-down one probe passes; it fails, so the circuit reopens.
        tokio::time::advance(Duration::from_secs(2)).await;
        store.fail_next([StorageError::Transient("still down".into())]);
        assert!(matches!(
            breaker.read_shard(query()).await,
            Err(StorageError::Transient(_))
        ));
        assert!(matches!(breaker.state(), CircuitState::Open { .. }));
        // Next probe succeeds: closed again.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(breaker.read_shard(query()).await.is_ok());
        assert_eq!(breaker.state(), CircuitState::Closed { failures: 0 });
        assert_eq!(store.shard_queries(), before + 2);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_failing_together_count_once_in_a_streak() {
        let store = MemoryStore::new();
        store.set_latency(|_| Duration::from_millis(5));
        let breaker = open_after(&store, 3);
        // Twelve reads in flight together fail together: one wave.
        store.fail_next((0..12).map(|_| StorageError::Transient("timed out".into())));
        let burst = futures::future::join_all((0..12).map(|_| breaker.read_shard(query()))).await;
        assert!(burst
            .iter()
            .all(|r| matches!(r, Err(StorageError::Transient(_)))));
        assert_eq!(breaker.state(), CircuitState::Closed { failures: 1 });
        // A read sent before the next wave's first failure and failing after
        // it belongs to that wave.
        store.fail_next((0..3).map(|_| StorageError::Transient("timed out".into())));
        let (first, late) = tokio::join!(breaker.read_shard(query()), async {
            tokio::time::sleep(Duration::from_millis(2)).await;
            breaker.read_shard(query()).await
        });
        assert!(first.is_err() && late.is_err());
        assert_eq!(breaker.state(), CircuitState::Closed { failures: 2 });
        // Sent after those failures and failing too: the third wave opens it.
        assert!(breaker.read_shard(query()).await.is_err());
        assert!(matches!(breaker.state(), CircuitState::Open { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_of_one_node_of_three_never_open_the_circuit() {
        let store = MemoryStore::new();
        store.set_nodes(3);
        let breaker = open_after(&store, 2);
        let on = |ip: &str| {
            StorageError::Transient(Cause::from("timed out").on_node(Some(ip.parse().unwrap())))
        };
        store.fail_next((0..10).map(|_| on("127.0.0.2")));
        for _ in 0..10 {
            assert!(breaker.read_shard(query()).await.is_err());
        }
        assert_eq!(breaker.state(), CircuitState::Closed { failures: 10 });
        // A second node failing in the same streak: an outage, it opens.
        store.fail_next([on("127.0.0.3")]);
        assert!(breaker.read_shard(query()).await.is_err());
        assert!(matches!(breaker.state(), CircuitState::Open { .. }));
        // After a success, the streak starts again: one node alone, and a
        // failure not attributed to a node, which counts as spread.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(breaker.read_shard(query()).await.is_ok());
        store.fail_next([on("127.0.0.3"), on("127.0.0.3")]);
        for _ in 0..2 {
            assert!(breaker.read_shard(query()).await.is_err());
        }
        assert_eq!(breaker.state(), CircuitState::Closed { failures: 2 });
        store.fail_next([StorageError::Transient("connection lost".into())]);
        assert!(breaker.read_shard(query()).await.is_err());
        assert!(matches!(breaker.state(), CircuitState::Open { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_sent_together_in_half_open_state_wait_for_the_probe() {
        let store = MemoryStore::new();
        let breaker = open_after(&store, 1);
        store.fail_next([StorageError::Transient("unavailable".into())]);
        assert!(breaker.read_shard(query()).await.is_err());
        tokio::time::advance(Duration::from_secs(2)).await;
        // Storage is healthy again; a resumed read sends its index query
        // and its shard queries at once: all pass, and the circuit closes.
        store.set_latency(|_| Duration::from_millis(5));
        store.set_index_latency(Duration::from_millis(5));
        let bucket = BucketQuery {
            namespace: query().namespace,
            series_id: "s".into(),
            first: 0,
            last: 100,
            order: Order::Ascending,
            limit: 10,
            timeout: Duration::from_secs(1),
        };
        let (index, shards) = tokio::join!(
            breaker.list_buckets(bucket),
            futures::future::join_all((0..4).map(|_| breaker.read_shard(query())))
        );
        assert!(index.is_ok(), "{index:?}");
        assert!(shards.iter().all(Result::is_ok), "{shards:?}");
        assert_eq!(breaker.state(), CircuitState::Closed { failures: 0 });

        // A failing probe fails the requests that waited for it too.
        store.fail_next([StorageError::Transient("down".into())]);
        assert!(breaker.read_shard(query()).await.is_err());
        tokio::time::advance(Duration::from_secs(2)).await;
        store.fail_next([StorageError::Transient("still down".into())]);
        let shards = futures::future::join_all((0..3).map(|_| breaker.read_shard(query()))).await;
        assert!(matches!(shards[0], Err(StorageError::Transient(_))));
        assert!(shards[1..]
            .iter()
            .all(|r| matches!(r, Err(StorageError::CircuitOpen { .. }))));
    }

    #[tokio::test(start_paused = true)]
    async fn fatal_errors_and_successes_do_not_open_the_circuit() {
        let store = MemoryStore::new();
        let breaker = Breaker::new(store.clone(), BreakerConfig::default());
        store.fail_next((0..10).map(|_| StorageError::Fatal("bad query".into())));
        for _ in 0..10 {
            assert!(breaker.read_shard(query()).await.is_err());
        }
        assert_eq!(breaker.state(), CircuitState::Closed { failures: 0 });
        store.fail_next((0..4).map(|_| StorageError::Transient("blip".into())));
        for _ in 0..4 {
            let _ = breaker.read_shard(query()).await;
        }
        assert!(breaker.read_shard(query()).await.is_ok());
        assert_eq!(breaker.state(), CircuitState::Closed { failures: 0 });
    }
}
