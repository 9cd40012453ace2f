//! Straggling storage requests on the fake store under tokio's paused
//! clock: a shard page or bucket-index query that comes late costs a call
//! some rows, never the whole call, and the probe sent beside it never
//! makes a row come twice or out of order, whether the late request is
//! dropped with its call or lands later for a held scan.

mod fake;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fake::{
    assert_rows, follow, hot_config, hot_engine, namespace, read, request, seeded, seeded_in, MS,
};
use hourglass::engine::{ContinuationConfig, Ending, ReadError};
use hourglass::model::Order;

#[tokio::test(start_paused = true)]
async fn a_late_shard_page_costs_a_call_rows_not_the_call() {
    let ns = namespace(1_000_000, 4);
    for held in [ContinuationConfig::off(), ContinuationConfig::default()] {
        for order in [Order::Ascending, Order::Descending] {
            let (store, all) = seeded_in(&ns, (0..100_000).map(i64::from), order).await;
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

/// A call waiting on its bucket-index query alone, whose query stalls (as
/// on a coordinator that froze), sends the same query again beside it and
/// answers with rows. Before, a 50 ms call whose index query went to a
/// frozen replica, with no hedge credit left, waited to its deadline and
/// answered BUDGET_TOO_SMALL. An index query on time gets no probe.
#[tokio::test(start_paused = true)]
async fn a_stalled_index_query_gets_a_probe_beside_it() {
    let ns = namespace(1_000, 4);
    let (store, all) = seeded(&ns, (0..20_000).map(i64::from)).await;
    store.set_latency(|_| MS);
    store.set_index_latency(MS);
    // Copies go where another node may answer.
    store.set_nodes(3);
    let engine = hot_engine(&store, ContinuationConfig::off());
    // A first read teaches the model what pages take; its index query is
    // on time.
    let req = request(&ns, Order::Ascending, 50 * MS, 100_000);
    let (_, out) = read(&engine, &req).await;
    assert_eq!(out.expect("a first read").stats.probes, 0, "nothing late");
    assert_eq!(store.index_queries(), 1);
    // A new read's index query stalls for a second.
    store.stall_next_index(1, 1_000 * MS);
    let (rows, out) = read(&engine, &req).await;
    let out = out.expect("rows listed by the probe, not BUDGET_TOO_SMALL");
    assert_eq!(
        out.stats.probes, 1,
        "one probe, beside the index query: {:?}",
        out.stats
    );
    assert_eq!(store.index_queries(), 3, "the stalled query and its probe");
    assert!(!rows.is_empty(), "the call gave rows");
    assert_rows(&rows, &all[..rows.len()]);
}

/// The stalled index query of a held scan lands after its probe listed the
/// buckets (and the scan went on to list the next ones): its answer is
/// dropped, so no bucket is queued twice and every row comes once, in
/// order, through a chain where each call's next index query stalls.
#[tokio::test(start_paused = true)]
async fn an_index_answer_landing_after_its_probe_is_dropped() {
    use hourglass::engine::{EngineConfig, ReadEngine};
    // 200 buckets, listed 4 at a time.
    let ns = namespace(100, 4);
    for order in [Order::Ascending, Order::Descending] {
        let (store, all) = seeded_in(&ns, (0..20_000).map(i64::from), order).await;
        store.set_latency(|q| MS + Duration::from_micros(q.limit as u64));
        store.set_index_latency(MS);
        store.set_nodes(3);
        let config = EngineConfig {
            index_page: 4,
            ..hot_config(ContinuationConfig::default())
        };
        let engine = ReadEngine::new(Arc::new(store.clone()), config);
        let mut rows = Vec::new();
        let mut resume = None;
        let mut probes = 0;
        for call in 0.. {
            assert!(call < 1_000, "{order:?}: the read did not finish");
            // The next index query stalls 30 ms: within the call, and
            // within the time a held scan's requests may run.
            store.stall_next_index(1, 30 * MS);
            let mut req = request(&ns, order, 50 * MS, 2_000);
            req.resume_after = resume.clone();
            let (got, out) = read(&engine, &req).await;
            let out = out.unwrap_or_else(|e| panic!("{order:?} call {call}: {e}"));
            if call == 0 {
                assert_eq!(
                    out.stats.probes, 1,
                    "{order:?}: the first call's index probe"
                );
            }
            probes += out.stats.probes;
            rows.extend(got);
            match out.ending {
                Ending::Complete => break,
                Ending::Partial { frontier, .. } => resume = Some(frontier),
            }
        }
        assert_rows(&rows, &all);
        assert!(probes >= 1, "{order:?}: probes {probes}");
    }
}

/// A smallest page that stalls gets a copy of itself as its probe where
/// storage has more than one node (the copy may find a coordinator that
/// answers), and none on one node, where it would wait behind the same
/// stall. Before, a 50 ms call on a three-node cluster whose first pages
/// were the smallest, two of them sent to a frozen coordinator, answered
/// BUDGET_TOO_SMALL with the other shards' rows in hand.
#[tokio::test(start_paused = true)]
async fn a_stalled_smallest_page_gets_a_copy_where_another_node_may_answer() {
    use hourglass::engine::{EngineConfig, ReadEngine, ReadError};
    let ns = namespace(1_000_000, 4);
    for nodes in [3, 1] {
        let (store, all) = seeded(&ns, (0..1_000).map(i64::from)).await;
        store.set_nodes(nodes);
        // Every page is the smallest; the first request to shard 3 stalls
        // for a second, every other takes 1 ms.
        let stalled = Arc::new(AtomicBool::new(true));
        let s = stalled.clone();
        store.set_latency(move |q| {
            if q.shard == 3 && s.swap(false, Ordering::Relaxed) {
                1_000 * MS
            } else {
                MS
            }
        });
        let config = EngineConfig {
            min_storage_page: 16,
            max_storage_page: 16,
            ..hot_config(ContinuationConfig::off())
        };
        let engine = ReadEngine::new(Arc::new(store.clone()), config);
        let (rows, out) = read(&engine, &request(&ns, Order::Ascending, 10 * MS, 100_000)).await;
        if nodes == 1 {
            assert!(
                matches!(
                    out,
                    Err(ReadError::NoProgress {
                        waited_on: Some(w),
                        ..
                    }) if w.late()
                ),
                "one node: no copy, the call waits on the stalled page, and says storage was late: {out:?}"
            );
            continue;
        }
        let out = out.expect("rows from the copy, not BUDGET_TOO_SMALL");
        assert!(out.stats.probes >= 1, "{:?}", out.stats);
        assert!(!rows.is_empty(), "the call gave rows");
        assert_rows(&rows, &all[..rows.len()]);
    }
}

/// A held scan's page that stays stuck across calls (its node stopped
/// answering; without hedging nothing resends it) gets probes in every
/// call, not only in the first calls that met it: the probe cap is per
/// call. Before, once three probes had gone beside the stuck page, later
/// calls of the chain waited on it to their deadlines and answered
/// BUDGET_TOO_SMALL (a three-node cluster with a frozen node and hedging
/// off, 50 ms calls: 1 to 150 rows a call, then none).
#[tokio::test(start_paused = true)]
async fn a_page_stuck_across_calls_gets_probes_in_every_call() {
    let ns = namespace(1_000_000, 4);
    for order in [Order::Ascending, Order::Descending] {
        let (store, all) = seeded_in(&ns, (0..20_000).map(i64::from), order).await;
        // After the first five requests, the first page of more than the
        // smallest size asked of shard 3 stalls for 400 ms (forty budgets,
        // within the time a held scan's requests may run); every other
        // request takes 1 ms.
        let requests = Arc::new(AtomicU32::new(0));
        let stalled = Arc::new(AtomicBool::new(false));
        let (n, s) = (requests.clone(), stalled.clone());
        store.set_latency(move |q| {
            let nth = n.fetch_add(1, Ordering::Relaxed);
            if q.shard == 3 && nth > 4 && q.limit > 16 && !s.swap(true, Ordering::Relaxed) {
                400 * MS
            } else {
                MS
            }
        });
        let engine = hot_engine(&store, ContinuationConfig::default());
        let (rows, calls) = follow(&[&engine], &ns, order, 10 * MS, 100_000).await;
        assert_rows(&rows, &all);
        assert!(stalled.load(Ordering::Relaxed), "{order:?}: a page stalled");
        let probed = calls.iter().filter(|c| c.stats.probes > 0).count();
        assert!(probed > 3, "{order:?}: calls that probed: {probed}");
    }
}

/// A read resumed from a token whose shard starts say where each shard of
/// its bucket holds no row merges the other shards' rows before a stalled
/// shard's start instead of waiting on it: the call returns those rows,
/// exactly the next ones in order, where the same call with the frontier
/// alone has none to return. Following on gives every row once.
#[tokio::test(start_paused = true)]
async fn a_token_s_shard_starts_let_a_call_merge_around_a_stalled_shard() {
    let ns = namespace(1_000_000, 4);
    for order in [Order::Ascending, Order::Descending] {
        let (store, all) = seeded_in(&ns, (0..20_000).map(|i| i64::from(i) * 100), order).await;
        let engine = fake::engine(&store);
        let healthy =
            |q: &hourglass::storage::ShardQuery| MS + Duration::from_micros(q.limit as u64);
        store.set_latency(healthy);
        let (mut rows, out) = read(&engine, &request(&ns, order, 10 * MS, 100_000)).await;
        let out = out.expect("first call");
        assert!(matches!(out.ending, Ending::Partial { .. }), "{order:?}");
        // Stall a shard with a start that does not hold the next row, for
        // longer than any budget here.
        let next = &all[rows.len()];
        let stalled = out
            .shard_starts
            .iter()
            .map(|s| s.shard)
            .find(|&s| s != ns.shard_of(&next.key.id))
            .unwrap_or_else(|| panic!("{order:?}: starts {:?}", out.shard_starts));
        store.set_latency(move |q| {
            if q.shard == stalled {
                Duration::from_secs(1)
            } else {
                healthy(q)
            }
        });
        let mut cold = fake::resumed(request(&ns, order, 10 * MS, 100_000), &out);
        cold.shard_starts.clear();
        let (none, failed) = read(&engine, &cold).await;
        assert!(
            matches!(failed, Err(ReadError::NoProgress { .. })) && none.is_empty(),
            "{order:?}: without starts the call waits on the stalled shard: {failed:?}"
        );
        let req = fake::resumed(request(&ns, order, 10 * MS, 100_000), &out);
        let (got, out) = read(&engine, &req).await;
        let out = out.expect("the other shards' rows come");
        assert!(!got.is_empty(), "{order:?}: no row");
        assert_rows(&got, &all[rows.len()..rows.len() + got.len()]);
        assert!(
            got.iter().all(|r| ns.shard_of(&r.key.id) != stalled),
            "{order:?}: a row of the stalled shard came"
        );
        rows.extend(got);
        // Storage heals: the read goes on to the end.
        store.set_latency(healthy);
        let mut last = out;
        for call in 0.. {
            assert!(call < 1_000, "{order:?}: the read did not finish");
            let req = fake::resumed(request(&ns, order, 10 * MS, 100_000), &last);
            let (got, out) = read(&engine, &req).await;
            rows.extend(got);
            let out = out.unwrap_or_else(|e| panic!("{order:?} call {call}: {e}"));
            if out.ending == Ending::Complete {
                break;
            }
            last = out;
        }
        assert_rows(&rows, &all);
    }
}
