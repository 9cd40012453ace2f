//! The fake-store helpers the engine tests share: namespaces, seeded
//! stores, requests and row assertions, under tokio's paused clock.
#![allow(dead_code)]
// Test data: small counts and times converted between integer types.
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hourglass::engine::budget::{Budget, BudgetConfig};
use hourglass::engine::{
    ContinuationConfig, Ending, EngineConfig, ReadEngine, ReadError, ReadOutcome, ReadRequest,
};
use hourglass::model::{Key, Namespace, NewEvent, Order, Row};
use hourglass::storage::memory::MemoryStore;
use hourglass::storage::Storage;

pub const MS: Duration = Duration::from_millis(1);

pub fn namespace(width: i64, shards: u32) -> Arc<Namespace> {
    Arc::new(Namespace {
        name: "ns".into(),
        bucket_width_micros: width,
        shards,
        retention_seconds: 0,
        indexes_shards: true,
    })
}

/// A store holding `times` (one event per entry, ids made unique) and the
/// rows in ascending order.
pub async fn seeded(
    ns: &Namespace,
    times: impl IntoIterator<Item = i64>,
) -> (MemoryStore, Vec<Row>) {
    let store = MemoryStore::new();
    store.create_namespace(ns).await.unwrap();
    let events: Vec<(i64, String, usize)> = times
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, format!("e{i:06}"), 1))
        .collect();
    let mut rows = write_rows(&store, ns, &events).await;
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    (store, rows)
}

/// [`seeded`], with the rows in `order`: what a read in that order gives.
pub async fn seeded_in(
    ns: &Namespace,
    times: impl IntoIterator<Item = i64>,
    order: Order,
) -> (MemoryStore, Vec<Row>) {
    let (store, mut rows) = seeded(ns, times).await;
    if order == Order::Descending {
        rows.reverse();
    }
    (store, rows)
}

/// Default settings without hot continuations: every read starts from its
/// position alone (tests/continuations.rs covers the held scans).
pub fn cold() -> EngineConfig {
    EngineConfig {
        continuations: ContinuationConfig::off(),
        ..EngineConfig::default()
    }
}

/// An engine with no response reserve, so stops land exactly on deadlines.
pub fn engine(store: &MemoryStore) -> ReadEngine<MemoryStore> {
    let config = EngineConfig {
        response_reserve: Duration::ZERO,
        response_reserve_per_row: Duration::ZERO,
        timer_slack: Duration::ZERO,
        ..cold()
    };
    ReadEngine::new(Arc::new(store.clone()), config)
}

pub fn request(ns: &Arc<Namespace>, order: Order, slo: Duration, row_limit: usize) -> ReadRequest {
    ReadRequest {
        namespace: ns.clone(),
        series_id: "s".into(),
        start: i64::MIN,
        end: i64::MAX,
        resume_after: None,
        shard_starts: Vec::new(),
        order,
        row_limit,
        byte_limit: usize::MAX,
        budget: Budget::new(&BudgetConfig::default(), Some(slo), None),
        client: "test".into(),
    }
}

pub async fn read(
    engine: &ReadEngine<MemoryStore>,
    req: &ReadRequest,
) -> (Vec<Row>, Result<ReadOutcome, ReadError>) {
    let mut rows = Vec::new();
    let out = engine.read(req, &mut rows).await;
    (rows, out)
}

/// Asserts two row lists are equal, printing only where they differ.
#[track_caller]
pub fn assert_rows(got: &[Row], want: &[Row]) {
    let first_diff = got.iter().zip(want).position(|(a, b)| a != b);
    assert!(
        got.len() == want.len() && first_diff.is_none(),
        "got {} rows, want {}; first difference at {:?}",
        got.len(),
        want.len(),
        first_diff
    );
}

pub fn frontier(out: &ReadOutcome) -> Key {
    match &out.ending {
        Ending::Partial { frontier, .. } => frontier.clone(),
        Ending::Complete => panic!("expected a partial read"),
    }
}

/// `req` resuming after the frontier of `out`, a partial read, with its
/// shard starts, as its token carries them.
pub fn resumed(mut req: ReadRequest, out: &ReadOutcome) -> ReadRequest {
    req.resume_after = Some(frontier(out));
    req.shard_starts.clone_from(&out.shard_starts);
    req
}

pub fn run_paused<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(f)
}

/// Writes `events` (time, id, payload size) of series "s"; returns the rows.
pub async fn write_rows(
    store: &MemoryStore,
    ns: &Namespace,
    events: &[(i64, String, usize)],
) -> Vec<Row> {
    let rows: Vec<Row> = events
        .iter()
        .map(|(t, id, size)| Row {
            key: Key::new(*t, id.clone()),
            payload: Bytes::from(vec![b'x'; *size]),
            tags: Default::default(),
        })
        .collect();
    let batch: Vec<NewEvent> = rows
        .iter()
        .map(|r| NewEvent {
            series_id: "s".into(),
            row: r.clone(),
        })
        .collect();
    store.write_events(ns, &batch).await.unwrap();
    rows
}

/// Follows a read of series "s" to its end: each call under `slo` with
/// `row_limit`, presenting the previous frontier, on `engines` in turn (more
/// than one stand for replicas behind a balancer), with its shard starts
/// as a token carries them. Returns the rows and each call's outcome.
pub async fn follow(
    engines: &[&ReadEngine<MemoryStore>],
    ns: &Arc<Namespace>,
    order: Order,
    slo: Duration,
    row_limit: usize,
) -> (Vec<Row>, Vec<ReadOutcome>) {
    follow_as(engines, ns, order, slo, row_limit, |_| "test".into()).await
}

/// [`follow`], call `i` made by client `client(i)`.
pub async fn follow_as(
    engines: &[&ReadEngine<MemoryStore>],
    ns: &Arc<Namespace>,
    order: Order,
    slo: Duration,
    row_limit: usize,
    client: impl Fn(usize) -> Arc<str>,
) -> (Vec<Row>, Vec<ReadOutcome>) {
    let mut rows = Vec::new();
    let mut outcomes: Vec<ReadOutcome> = Vec::new();
    for call in 0.. {
        assert!(call < 100_000, "the read did not finish");
        let mut req = request(ns, order, slo, row_limit);
        if let Some(last) = outcomes.last() {
            req = resumed(req, last);
        }
        req.client = client(call);
        let (got, out) = read(engines[call % engines.len()], &req).await;
        let out = out.expect("progress in every call");
        rows.extend(got);
        let complete = out.ending == Ending::Complete;
        outcomes.push(out);
        if complete {
            break;
        }
    }
    (rows, outcomes)
}

/// An engine whose responses cost `per_row` a row to send and decode, with
/// no other reserve and hot continuations on (their defaults).
pub fn costed_engine(store: &MemoryStore, per_row: Duration) -> ReadEngine<MemoryStore> {
    let config = EngineConfig {
        response_reserve: Duration::ZERO,
        response_reserve_per_row: per_row,
        ..EngineConfig::default()
    };
    ReadEngine::new(Arc::new(store.clone()), config)
}

/// The engine of [`engine`] with hot continuations bounded by `held`.
pub fn hot_engine(store: &MemoryStore, held: ContinuationConfig) -> ReadEngine<MemoryStore> {
    ReadEngine::new(Arc::new(store.clone()), hot_config(held))
}

/// The configuration of [`hot_engine`]: no response reserve or timer
/// slack, hot continuations bounded by `held`.
pub fn hot_config(held: ContinuationConfig) -> EngineConfig {
    EngineConfig {
        response_reserve: Duration::ZERO,
        response_reserve_per_row: Duration::ZERO,
        timer_slack: Duration::ZERO,
        continuations: held,
        ..EngineConfig::default()
    }
}

/// Gives every later shard query of `store` the latency `fixed` plus 2 µs
/// a row asked for, and records the rows each asked for.
pub fn record_page_limits(
    store: &MemoryStore,
    fixed: Duration,
) -> Arc<std::sync::Mutex<Vec<usize>>> {
    let limits: Arc<std::sync::Mutex<Vec<usize>>> = Arc::default();
    let seen = limits.clone();
    store.set_latency(move |q| {
        seen.lock().unwrap().push(q.limit);
        fixed + Duration::from_micros(2 * q.limit as u64)
    });
    limits
}
