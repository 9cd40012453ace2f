//! Straggling storage pages on the fake store under tokio's paused clock: a
//! shard page that comes late costs a call some rows, never the whole call,
//! and the probe sent beside it never makes a row come twice or out of
//! order, whether the late page is dropped with its call or lands later for
//! a held scan.

mod fake;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fake::{assert_rows, follow, hot_engine, namespace, read, request, seeded, MS};
use hourglass::engine::{ContinuationConfig, Ending};
use hourglass::model::Order;

#[tokio::test(start_paused = true)]
async fn a_late_shard_page_costs_a_call_rows_not_the_call() {
    let ns = namespace(1_000_000, 4);
    for held in [ContinuationConfig::off(), ContinuationConfig::default()] {
        for order in [Order::Ascending, Order::Descending] {
            let (store, mut all) = seeded(&ns, (0..100_000).map(i64::from)).await;
            if order == Order::Descending {
                all.reverse();
            }
            // In every third call after the first (the latency model has seen
            // pages land), the first request to shard 3 straggles:
            // 30 ms, three budgets. Every other request takes 1 ms plus
            // 1 µs a row.
            let stall = Arc::new(AtomicBool::new(false));
            let stalled = Arc::new(AtomicU32::new(0));
            let (s, n) = (stall.clone(), stalled.clone());
            store.set_latency(move |q| {
                if q.shard == 3 && s.swap(false, Ordering::Relaxed) {
                    n.fetch_add(1, Ordering::Relaxed);
                    30 * MS
                } else {
                    MS + Duration::from_micros(q.limit as u64)
                }
            });
            let engine = hot_engine(&store, held.clone());
            let mut rows = Vec::new();
            let mut resume = None;
            for call in 0.. {
                assert!(call < 1_000, "the read did not finish");
                stall.store(call % 3 == 1, Ordering::Relaxed);
                let mut req = request(&ns, order, 10 * MS, 100_000);
                req.resume_after = resume.clone();
                let (got, out) = read(&engine, &req).await;
                let out = out.unwrap_or_else(|e| panic!("{order:?} call {call}: {e}"));
                assert!(!got.is_empty(), "{order:?} call {call} came back empty");
                rows.extend(got);
                match out.ending {
                    Ending::Complete => break,
                    Ending::Partial { frontier, .. } => resume = Some(frontier),
                }
            }
            assert_rows(&rows, &all);
            assert!(
                stalled.load(Ordering::Relaxed) >= 2,
                "{order:?}: pages straggled: {} in {} rows",
                stalled.load(Ordering::Relaxed),
                rows.len()
            );
        }
    }
}

/// A call with no row yet whose page is stuck gets a smallest page as a
/// probe while one can still land, even when nothing tells how late the
/// page is (no sibling landed, and the page is beyond what the model has
/// seen land, where "late" means nothing): before, such a call waited on
/// the page to its deadline and answered BUDGET_TOO_SMALL.
#[tokio::test(start_paused = true)]
async fn a_stuck_page_beyond_the_models_evidence_gets_a_last_chance_probe() {
    let ns = namespace(1_000_000, 1);
    let (store, all) = seeded(&ns, (0..5_000).map(i64::from)).await;
    // Pages beyond the smallest are stuck for 100 ms; the smallest take 1 ms.
    store.set_latency(|q| if q.limit > 16 { 100 * MS } else { MS });
    let engine = hot_engine(&store, ContinuationConfig::off());
    let mut req = request(&ns, Order::Ascending, 10 * MS, 100_000);
    req.start = 0;
    let (rows, out) = read(&engine, &req).await;
    let out = out.expect("rows from the probe, not BUDGET_TOO_SMALL");
    assert!(
        matches!(out.ending, Ending::Partial { .. }),
        "{:?}",
        out.ending
    );
    assert_eq!(rows.len(), 16, "the probe's rows");
    assert_rows(&rows, &all[..16]);
}

/// A probe that fails is not retried and does not end the read: the page it
/// raced is still on its way, and the next probe may go at once.
#[tokio::test(start_paused = true)]
async fn a_failed_probe_leaves_the_page_and_the_next_probe() {
    use hourglass::storage::StorageError;
    let ns = namespace(1_000_000, 1);
    let (store, all) = seeded(&ns, (0..20_000).map(i64::from)).await;
    let engine = hot_engine(&store, ContinuationConfig::off());
    // A first call teaches the model what pages take.
    store.set_latency(|q| MS + Duration::from_micros(q.limit as u64));
    let (first, out) = read(&engine, &request(&ns, Order::Ascending, 10 * MS, 100_000)).await;
    let Ending::Partial { frontier, .. } = out.expect("partial").ending else {
        panic!("the budget ends the first call");
    };
    // Then, in a 20 ms call, the page straggles (30 ms) and the first
    // probe fails.
    let requests = Arc::new(AtomicU32::new(0));
    let (n, s) = (requests.clone(), store.clone());
    store.set_latency(move |q| match n.fetch_add(1, Ordering::Relaxed) {
        0 => 30 * MS,
        1 => {
            s.fail_next([StorageError::Transient("overloaded".into())]);
            MS
        }
        _ => MS + Duration::from_micros(q.limit as u64),
    });
    let mut req = request(&ns, Order::Ascending, 20 * MS, 100_000);
    req.resume_after = Some(frontier);
    let (second, out) = read(&engine, &req).await;
    let out = out.expect("a failed probe does not end the read");
    assert!(!second.is_empty(), "the next probe gave rows");
    assert_eq!(out.stats.retries, 0, "a probe is not retried");
    assert!(
        requests.load(Ordering::Relaxed) >= 3,
        "page, failed probe, probe"
    );
    let got: Vec<_> = first.into_iter().chain(second).collect();
    assert_rows(&got, &all[..got.len()]);
}

/// A page on its way at the pace the model expects gets no probe beside it
/// before it is due: on one storage node a probe only adds to the load the
/// page waits behind. (The last-chance probe went at once when a slow
/// smallest page, twice over, filled the budget: with every page taking
/// 3 ms, every cold call of a 10 ms chain sent a probe per shard 1.25 ms in
/// and read each probe's rows twice.)
#[tokio::test(start_paused = true)]
async fn pages_landing_when_expected_get_no_probe() {
    let ns = namespace(1_000_000, 4);
    let (store, all) = seeded(&ns, (0..20_000).map(i64::from)).await;
    store.set_latency(|_| 3 * MS);
    let engine = hot_engine(&store, ContinuationConfig::off());
    let (rows, outcomes) = follow(&[&engine], &ns, Order::Ascending, 10 * MS, 100_000).await;
    let probes: Vec<u64> = outcomes.iter().map(|o| o.stats.probes).collect();
    assert_rows(&rows, &all);
    assert!(probes.len() > 10, "calls: {}", probes.len());
    // The first calls teach the model the 3 ms; after them, no probe.
    assert!(
        probes[3..].iter().all(|&p| p == 0),
        "probes per call: {probes:?}"
    );
}

/// A page a held scan fetched ahead that straggles (30 ms, three budgets)
/// costs the calls until it lands some rows, not the rest of the chain:
/// before, the latency model took the page at its word, fetch-ahead pages
/// shrank to a few dozen rows, and with such a page in every third gap the
/// 100,000-row chain did not finish in 1,000 calls (calls of 1-120 rows
/// from the 13th on). It finishes in 11.
#[tokio::test(start_paused = true)]
async fn a_straggling_page_fetched_ahead_does_not_shrink_the_chain() {
    let ns = namespace(1_000_000, 4);
    let (store, all) = seeded(&ns, (0..100_000).map(i64::from)).await;
    let stall = Arc::new(AtomicBool::new(false));
    let s = stall.clone();
    store.set_latency(move |q| {
        if q.shard == 3 && s.swap(false, Ordering::Relaxed) {
            30 * MS
        } else {
            MS + Duration::from_micros(q.limit as u64)
        }
    });
    let engine = hot_engine(&store, ContinuationConfig::default());
    let mut rows = Vec::new();
    let mut resume = None;
    let mut calls = 0;
    loop {
        calls += 1;
        assert!(calls <= 40, "the read did not finish in 40 calls");
        let mut req = request(&ns, Order::Ascending, 10 * MS, 100_000);
        req.resume_after = resume.clone();
        let (got, out) = read(&engine, &req).await;
        rows.extend(got);
        match out.expect("rows in every call").ending {
            Ending::Complete => break,
            Ending::Partial { frontier, .. } => resume = Some(frontier),
        }
        // The client is away for 1 ms; in every third gap the next page
        // the held scan fetches ahead for shard 3 straggles.
        stall.store(calls % 3 == 2, Ordering::Relaxed);
        tokio::time::sleep(MS).await;
        stall.store(false, Ordering::Relaxed);
    }
    assert_rows(&rows, &all);
}
