//! The storage circuit breaker under token-following reads, on the fake
//! store under tokio's paused clock: once storage is healthy again, reads
//! that resume from tokens (their bucket-index query and shard queries sent
//! together) close a half-open circuit by themselves, and every row still
//! comes once, in order.

mod fake;

use std::sync::Arc;
use std::time::Duration;

use fake::{assert_rows, cold, namespace, request, resumed, seeded, MS};
use hourglass::engine::{Ending, ReadEngine};
use hourglass::model::Order;
use hourglass::storage::breaker::{Breaker, BreakerConfig, CircuitState};
use hourglass::storage::StorageError;

#[tokio::test(start_paused = true)]
async fn token_following_reads_alone_close_a_half_open_circuit() {
    let ns = namespace(1_000_000, 4);
    let (store, all) = seeded(&ns, (0..20_000).map(|i| i64::from(i) * 100)).await;
    store.set_latency(|q| MS + Duration::from_micros(q.limit as u64));
    store.set_index_latency(MS);
    let breaker = Arc::new(Breaker::new(
        store.clone(),
        BreakerConfig {
            failure_threshold: 1,
            cool_down: Duration::from_secs(1),
        },
    ));
    let engine = ReadEngine::new(breaker.clone(), cold());
    // A first call stops partial, somewhere in a bucket.
    let mut rows = Vec::new();
    let out = engine
        .read(&request(&ns, Order::Ascending, 5 * MS, 3_000), &mut rows)
        .await
        .expect("first call");
    assert!(matches!(out.ending, Ending::Partial { .. }));
    // Storage fails once: the circuit opens. The call presents the
    // frontier alone (a token without shard starts, as the release before
    // issued), so it waits on every shard and the failure ends it; with
    // the starts it could return the rows of the shards that answered.
    store.fail_next([StorageError::Transient("node down".into())]);
    let mut none = Vec::new();
    let mut without_starts = resumed(request(&ns, Order::Ascending, 50 * MS, 3_000), &out);
    without_starts.shard_starts.clear();
    let failed = engine.read(&without_starts, &mut none).await;
    assert!(failed.is_err(), "the failure ends the call: {failed:?}");
    assert!(matches!(breaker.state(), CircuitState::Open { .. }));
    // Storage is healthy after the cool-down; only token followers call.
    tokio::time::advance(Duration::from_secs(1)).await;
    let mut last = out;
    for call in 0.. {
        assert!(call < 1_000, "the read did not finish");
        let req = resumed(request(&ns, Order::Ascending, 50 * MS, 3_000), &last);
        let mut got = Vec::new();
        let out = engine
            .read(&req, &mut got)
            .await
            .expect("a resumed read passes once storage is healthy");
        assert_eq!(
            breaker.state(),
            CircuitState::Closed { failures: 0 },
            "the first resumed read closed the circuit"
        );
        rows.extend(got);
        if matches!(out.ending, Ending::Complete) {
            break;
        }
        last = out;
    }
    assert_rows(&rows, &all);
}
