//! Hot continuations on the fake store under tokio's paused clock: a held
//! scan continued by the next call gives exactly the rows a cold resume
//! gives, reads each row once, obeys its bounds, follows the freshness
//! rule, and never makes a call wait past its budget.

mod fake;

use std::sync::Arc;
use std::time::Duration;

use fake::{
    assert_rows, costed_engine, engine, follow, follow_as, frontier, hot_config, hot_engine,
    namespace, read, request, resumed, seeded, seeded_in, write_rows, MS,
};
use hourglass::engine::{
    ContinuationConfig, Ending, EngineConfig, ReadEngine, ReadError, ReadRequest,
};
use hourglass::model::{Namespace, Order, Row};
use hourglass::storage::memory::MemoryStore;
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn continuing_a_held_scan_gives_the_rows_of_a_cold_resume_reading_each_row_once() {
    // 24 buckets of 4 shards; pages take 3 to 9 ms depending on the shard.
    let ns = namespace(1_000, 4);
    for order in [Order::Ascending, Order::Descending] {
        let (store, all) = seeded_in(&ns, (0..24_000).map(i64::from), order).await;
        store.set_latency(|q| MS * (3 + 2 * q.shard));

        let cold = engine(&store);
        let (rows, calls) = follow(&[&cold], &ns, order, 20 * MS, 100_000).await;
        assert_rows(&rows, &all);
        assert!(calls.iter().all(|o| !o.stats.continued));
        let (cold_served, cold_index) = (store.rows_served(), store.index_queries());
        assert!(
            cold_served > all.len() as u64,
            "a cold resume reads again what the previous call fetched past its frontier"
        );

        let hot = hot_engine(&store, ContinuationConfig::default());
        let (rows, calls) = follow(&[&hot], &ns, order, 20 * MS, 100_000).await;
        assert_rows(&rows, &all);
        assert!(calls.len() > 6, "the budget ended most calls");
        assert!(!calls[0].stats.continued);
        assert!(
            calls[1..].iter().all(|o| o.stats.continued),
            "every later call continued the held scan"
        );
        assert_eq!(
            store.rows_served() - cold_served,
            all.len() as u64,
            "each row read from storage exactly once"
        );
        let scanned: u64 = calls.iter().map(|o| o.stats.rows_scanned).sum();
        assert_eq!(
            scanned,
            all.len() as u64,
            "the calls' stats count every row read, those fetched while held too"
        );
        assert_eq!(
            store.index_queries() - cold_index,
            1,
            "one bucket-index query for the whole chain"
        );
        assert_eq!(hot.held(), (0, 0), "a complete read holds nothing");
    }
}

#[tokio::test(start_paused = true)]
async fn a_miss_on_another_replica_or_after_expiry_resumes_from_the_token_alone() {
    let ns = namespace(1_000, 4);
    let (store, all) = seeded(&ns, (0..12_000).map(i64::from)).await;
    store.set_latency(|q| MS * (3 + 2 * q.shard));

    // Two replicas behind a balancer that alternates, each holding scans
    // for other clients only: every call misses.
    let a = hot_engine(&store, ContinuationConfig::default());
    let b = hot_engine(&store, ContinuationConfig::default());
    let each = |i: usize| format!("c{i}").into();
    let (rows, calls) = follow_as(&[&a, &b], &ns, Order::Ascending, 20 * MS, 100_000, each).await;
    assert_rows(&rows, &all);
    assert!(calls.len() > 2);
    assert!(calls.iter().all(|o| !o.stats.continued));
    // Every call left rows for its held scan's next call, and tokens still
    // say where the shards of their bucket start (from those rows first),
    // so the other replica's call merges without waiting on every shard;
    // a start past a shard's next row would have lost rows above.
    assert!(
        calls.iter().any(|o| !o.shard_starts.is_empty()),
        "no token carried shard starts"
    );

    // A scan held past its age is gone.
    let held = ContinuationConfig {
        max_age: 100 * MS,
        ..ContinuationConfig::default()
    };
    let a = hot_engine(&store, held);
    let (first, out) = read(&a, &request(&ns, Order::Ascending, 20 * MS, 100_000)).await;
    let out = out.expect("partial");
    assert_eq!(a.held().0, 1);
    tokio::time::sleep(150 * MS).await;
    assert_eq!(a.held(), (0, 0), "expired");
    let req = resumed(request(&ns, Order::Ascending, 20 * MS, 100_000), &out);
    let (second, out) = read(&a, &req).await;
    assert!(!out.expect("progress").stats.continued);
    let got: Vec<Row> = first.into_iter().chain(second).collect();
    assert_rows(&got, &all[..got.len()]);
}

/// Behind a balancer that alternates over two replicas, a call finds no
/// scan held at its token's position (the previous call was the other
/// replica's) but its client's scan held at the position before: it moves
/// that scan forward to its position and continues it, and from then on
/// the scan fetches nothing ahead for its next call (the rows past its
/// stop are the other replica's to read). Every row comes once, in order;
/// every call after each replica's first continues a held scan; no call
/// after the first two waits on a bucket-index query; and storage serves
/// at most a quarter more rows than are delivered (28,897 for 24,000 in 21
/// calls; 47,822 in 9 calls when both replicas fetched ahead, each reading
/// every row; 80,749 in 24 calls with every call a miss). (Each call as
/// another client, every call misses: see the test above.)
#[tokio::test(start_paused = true)]
async fn a_held_scan_behind_the_token_moves_forward_to_it_on_round_robin_replicas() {
    let ns = namespace(1_000, 4);
    for (order, cache) in [
        (Order::Ascending, ContinuationConfig::default()),
        (Order::Descending, ContinuationConfig::default()),
        // Scans that fetch ahead less than a call takes (4 KiB): moved
        // forward past all they hold, they read the rest from the token on.
        (
            Order::Ascending,
            ContinuationConfig {
                max_bytes: 8 * 4096,
                ..ContinuationConfig::default()
            },
        ),
    ] {
        let (store, all) = seeded_in(&ns, (0..24_000).map(i64::from), order).await;
        store.set_latency(|q| MS * (3 + 2 * q.shard));
        let a = hot_engine(&store, cache.clone());
        let b = hot_engine(&store, cache.clone());
        let one = |_| "c".into();
        let (rows, calls) = follow_as(&[&a, &b], &ns, order, 20 * MS, 100_000, one).await;
        assert_rows(&rows, &all);
        assert!(calls.len() > 6, "the budget ended most calls");
        assert!(!calls[0].stats.continued && !calls[1].stats.continued);
        assert!(
            calls[2..].iter().all(|o| o.stats.continued),
            "{order:?} {cache:?}: every later call continued a held scan"
        );
        let index_after_first: u64 = calls[2..].iter().map(|o| o.stats.index_pages).sum();
        assert_eq!(index_after_first, 0, "no new bucket-index query");
        assert!(
            store.rows_served() <= all.len() as u64 * 5 / 4,
            "{order:?} {cache:?}: {} rows read for {}",
            store.rows_served(),
            all.len()
        );
        // The replica of the last call holds nothing; the other's scan,
        // behind, goes at its age.
        assert!(a.held().0 + b.held().0 <= 1);
        tokio::time::sleep(cache.max_age).await;
        assert_eq!((a.held(), b.held()), ((0, 0), (0, 0)), "expired");
    }
}

/// A scan moved forward to its token sizes its pages by the rows that come
/// before theirs in the response, not by every row it holds: before its
/// calls alternated it had fetched ahead into the buckets after the one it
/// merges, and counted as this call's, those rows left it time for rounds
/// of the smallest pages, so it delivered fewer rows a call than a cold
/// resume from the token does; so did the rows its fast shards had fetched
/// ahead of a slow one, which wait in the merge for the slow shard's next
/// page. Here responses cost 2 µs a row, pages 1 ms plus 5 µs a row, and
/// 4 ms more on one shard of four.
#[tokio::test(start_paused = true)]
async fn an_alternating_call_takes_as_many_rows_as_a_cold_one() {
    let ns = namespace(4_000, 4);
    let (store, all) = seeded(&ns, 0..24_000).await;
    store.set_latency(|q| {
        let slow = if q.shard == 2 { 4 * MS } else { Duration::ZERO };
        MS + slow + Duration::from_micros(5) * u32::try_from(q.limit).unwrap()
    });
    let per_row = Duration::from_micros(2);
    let with = |continuations| {
        let config = EngineConfig {
            response_reserve: Duration::ZERO,
            response_reserve_per_row: per_row,
            timer_slack: Duration::ZERO,
            continuations,
            ..EngineConfig::default()
        };
        ReadEngine::new(Arc::new(store.clone()), config)
    };

    let cold = with(ContinuationConfig::off());
    let (rows, cold_calls) = follow(&[&cold], &ns, Order::Ascending, 10 * MS, 100_000).await;
    assert_rows(&rows, &all);

    let (a, b) = (
        with(ContinuationConfig::default()),
        with(ContinuationConfig::default()),
    );
    let (rows, calls) = follow(&[&a, &b], &ns, Order::Ascending, 10 * MS, 100_000).await;
    assert_rows(&rows, &all);
    assert!(
        calls[2..].iter().all(|o| o.stats.continued),
        "every later call continued"
    );
    // Before, the alternating calls took 16 rows of each shard a round:
    // 99 calls against 47 cold ones.
    assert!(
        calls.len() <= cold_calls.len() + 2,
        "{} calls in turn against {} cold ones",
        calls.len(),
        cold_calls.len()
    );
}

/// Reads the first `n` rows of `[start, end)` with a row limit, so the read
/// stops partial and is held.
async fn first_rows(
    engine: &ReadEngine<MemoryStore>,
    ns: &Arc<Namespace>,
    range: (i64, i64),
    client: &str,
) -> ReadRequest {
    let mut req = request(ns, Order::Ascending, 200 * MS, 100);
    (req.start, req.end) = range;
    req.client = client.into();
    let (_, out) = read(engine, &req).await;
    let out = out.expect("partial");
    assert!(matches!(out.ending, Ending::Partial { .. }));
    req.resume_after = Some(frontier(&out));
    req.budget = request(ns, Order::Ascending, 200 * MS, 100).budget;
    req
}

/// Whether continuing `req` found its scan held.
async fn continued(engine: &ReadEngine<MemoryStore>, req: &ReadRequest) -> bool {
    let (rows, out) = read(engine, req).await;
    let out = out.expect("progress");
    assert_eq!(rows.len(), 100, "the next page either way");
    out.stats.continued
}

#[tokio::test(start_paused = true)]
async fn held_scans_are_evicted_oldest_first_within_their_bounds() {
    let ns = namespace(1_000_000, 1);
    let (store, _) = seeded(&ns, 0..3_000).await;
    store.set_latency(|_| MS);
    let ranges = [(0, 1_000), (1_000, 2_000), (2_000, 3_000)];

    // Entries: one held at a time; the newer read evicts the older.
    let one = hot_engine(
        &store,
        ContinuationConfig {
            max_entries: 1,
            ..ContinuationConfig::default()
        },
    );
    let x = first_rows(&one, &ns, ranges[0], "c1").await;
    let y = first_rows(&one, &ns, ranges[1], "c2").await;
    assert_eq!(one.held().0, 1);
    assert!(continued(&one, &y).await);
    assert!(!continued(&one, &x).await, "evicted");

    // Bytes: room for one scan and a half.
    let probe = hot_engine(&store, ContinuationConfig::default());
    first_rows(&probe, &ns, ranges[0], "c1").await;
    let (_, one_scan) = probe.held();
    assert!(one_scan > 0);
    let tight = hot_engine(
        &store,
        ContinuationConfig {
            max_bytes: one_scan * 3 / 2,
            ..ContinuationConfig::default()
        },
    );
    let x = first_rows(&tight, &ns, ranges[0], "c1").await;
    let y = first_rows(&tight, &ns, ranges[1], "c2").await;
    let (entries, bytes) = tight.held();
    assert_eq!(entries, 1);
    assert!(bytes <= one_scan * 3 / 2);
    assert!(continued(&tight, &y).await);
    assert!(!continued(&tight, &x).await, "evicted for bytes");

    // Per client: one each; another client's scan stays.
    let fair = hot_engine(
        &store,
        ContinuationConfig {
            per_client: 1,
            ..ContinuationConfig::default()
        },
    );
    let x = first_rows(&fair, &ns, ranges[0], "c1").await;
    let y = first_rows(&fair, &ns, ranges[1], "c1").await;
    let z = first_rows(&fair, &ns, ranges[2], "c2").await;
    assert_eq!(fair.held().0, 2);
    assert!(continued(&fair, &y).await);
    assert!(continued(&fair, &z).await);
    assert!(!continued(&fair, &x).await, "c1's older scan was evicted");

    // Off: nothing is ever held.
    let off = hot_engine(&store, ContinuationConfig::off());
    let x = first_rows(&off, &ns, ranges[0], "c1").await;
    assert_eq!(off.held(), (0, 0));
    assert!(!continued(&off, &x).await);
}

/// Continues `req` on `hot` under a 50 ms budget while storage answers too
/// late for any page to land, so the call returns what its held scan holds
/// (up to `row_limit` rows); asserts it continued a held scan.
async fn held_rows(
    hot: &ReadEngine<MemoryStore>,
    store: &MemoryStore,
    ns: &Arc<Namespace>,
    mut req: ReadRequest,
    row_limit: usize,
) -> Vec<Row> {
    store.set_latency(|_| 10 * MS * 1_000);
    req.row_limit = row_limit;
    req.budget = request(ns, Order::Ascending, 50 * MS, 1).budget;
    let (rows, out) = read(hot, &req).await;
    assert!(out.expect("partial").stats.continued, "a held scan");
    rows
}

/// A 2 MiB cache: each scan fetches ahead up to 256 KiB (an eighth), so 16
/// scans fetching ahead at once would fill it twice over.
fn small_cache() -> ContinuationConfig {
    ContinuationConfig {
        max_bytes: 8 * (256 << 10),
        ..ContinuationConfig::default()
    }
}

/// Held scans fetch ahead within the cache's bytes together: reads held
/// with a row each fetch ahead while their clients are away (alone, each
/// would fetch up to its bound; together that is twice the cache), yet what
/// they hold stays within the cache's bytes, none is evicted for it, each
/// holds rows of its own (at least a quarter of an even share), and each
/// continues with exactly its next rows.
#[tokio::test(start_paused = true)]
async fn held_scans_fetch_ahead_within_the_cache_bytes_together() {
    const READS: usize = 16;
    const SPAN: usize = 20_000;
    const PAGE: usize = 2_048;
    let ns = namespace(1_000_000, 4);
    let at = |i: usize| i64::try_from(i).expect("small");
    let (store, all) = seeded(&ns, (0..READS * SPAN).map(at)).await;
    store.set_latency(|_| MS);
    let held = small_cache();
    let (max_bytes, ahead) = (held.max_bytes, held.ahead_bytes());
    assert_eq!(READS * ahead, 2 * max_bytes);
    let config = EngineConfig {
        max_storage_page: PAGE,
        ..hot_config(held)
    };
    let hot = ReadEngine::new(Arc::new(store.clone()), config);
    let reqs: Vec<ReadRequest> = (0..READS)
        .map(|i| {
            let mut req = request(&ns, Order::Ascending, 200 * MS, 1);
            (req.start, req.end) = (at(i * SPAN), at((i + 1) * SPAN));
            req
        })
        .collect();
    let firsts = futures::future::join_all(reqs.iter().map(|req| read(&hot, req))).await;
    let mut next = Vec::new();
    for (i, (rows, out)) in firsts.into_iter().enumerate() {
        assert_rows(&rows, &all[i * SPAN..=i * SPAN]);
        let mut req = reqs[i].clone();
        req.resume_after = Some(frontier(&out.expect("partial")));
        next.push(req);
    }
    tokio::time::sleep(500 * MS).await; // the clients are away
    let weight = all[0].weight(1);
    let held_bytes = (usize::try_from(store.rows_served()).unwrap() - READS) * weight;
    assert_eq!(hot.held().0, READS, "none evicted");
    assert!(
        held_bytes <= max_bytes,
        "held scans hold {held_bytes} bytes, past the {max_bytes}-byte cache"
    );
    // Each continues with what it holds (the calls take their scans
    // together).
    let seconds = futures::future::join_all(
        next.into_iter()
            .map(|req| held_rows(&hot, &store, &ns, req, SPAN)),
    )
    .await;
    let share = max_bytes / (READS + 1);
    for (i, rows) in seconds.into_iter().enumerate() {
        assert!(
            rows.len() * weight >= share / 4,
            "read {i} held {} rows, less than a quarter of an even share of the cache",
            rows.len()
        );
        assert_rows(&rows, &all[i * SPAN + 1..=i * SPAN + rows.len()]);
    }
}

/// Counts the rows a call has emitted so far, for a test to see while the
/// call runs.
struct Counted {
    rows: Vec<Row>,
    emitted: Arc<std::sync::atomic::AtomicUsize>,
}

impl hourglass::engine::RowSink for Counted {
    fn push(&mut self, row: Row) {
        self.rows.push(row);
        self.emitted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn take_back(&mut self, n: usize) -> Option<(hourglass::model::Key, Vec<Row>)> {
        let back = self.rows.take_back(n)?;
        self.emitted
            .fetch_sub(back.1.len(), std::sync::atomic::Ordering::Relaxed);
        Some(back)
    }
}

/// Calls whose scans will be held fetch ahead within the cache's bytes too:
/// 16 calls at once, each waiting on a slow page of its second bucket while
/// the rest of that bucket and the buckets after it are fetched ahead (each
/// call would fetch up to its bound; together that is twice the cache), hold
/// no more than the cache while they run, and each answers exactly its rows
/// and continues with exactly its next ones.
#[tokio::test(start_paused = true)]
async fn calls_fetch_ahead_within_the_cache_bytes_together() {
    const READS: usize = 16;
    const BUCKET: usize = 5_000;
    const SPAN: usize = 4 * BUCKET;
    let ns = namespace(i64::try_from(BUCKET).expect("small"), 4);
    let at = |i: usize| i64::try_from(i).expect("small");
    let (store, all) = seeded(&ns, (0..READS * SPAN).map(at)).await;
    // Each read's first bucket is quick; shard 0 of the buckets after it
    // is slow, so the merge waits on it while the other shards are fetched
    // ahead.
    store.set_latency(|q| {
        if q.shard == 0 && q.bucket % 4 != 0 {
            150 * MS
        } else {
            MS
        }
    });
    let held = small_cache();
    let (max_bytes, ahead) = (held.max_bytes, held.ahead_bytes());
    assert_eq!(READS * ahead, 2 * max_bytes);
    let config = EngineConfig {
        max_storage_page: 2_048,
        ..hot_config(held)
    };
    let hot = Arc::new(ReadEngine::new(Arc::new(store.clone()), config));
    let emitted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reqs: Vec<ReadRequest> = (0..READS)
        .map(|i| {
            let mut req = request(&ns, Order::Ascending, 200 * MS, BUCKET + 500);
            (req.start, req.end) = (at(i * SPAN), at((i + 1) * SPAN));
            req
        })
        .collect();
    let calls: Vec<_> = reqs
        .iter()
        .map(|req| {
            let (hot, req) = (hot.clone(), req.clone());
            let mut sink = Counted {
                rows: Vec::new(),
                emitted: emitted.clone(),
            };
            tokio::spawn(async move {
                let out = hot.read(&req, &mut sink).await;
                (sink.rows, out)
            })
        })
        .collect();
    tokio::time::sleep(100 * MS).await; // every call waits on its slow page
    let weight = all[0].weight(1);
    let fetched = usize::try_from(store.rows_served()).unwrap();
    let in_calls = (fetched - emitted.load(std::sync::atomic::Ordering::Relaxed)) * weight;
    assert!(
        in_calls <= max_bytes,
        "calls in flight hold {in_calls} bytes, past the {max_bytes}-byte cache"
    );
    assert!(
        in_calls >= max_bytes / 2,
        "calls in flight hold {in_calls} bytes: they fetch ahead into the room they share"
    );
    for (i, call) in calls.into_iter().enumerate() {
        let (rows, out) = call.await.expect("read task");
        let out = out.expect("rows");
        assert!(
            matches!(out.ending, Ending::Partial { .. }),
            "read {i} ended"
        );
        assert!(!rows.is_empty(), "read {i} answered no row");
        assert_rows(&rows, &all[i * SPAN..i * SPAN + rows.len()]);
        let mut next = reqs[i].clone();
        next.resume_after = Some(frontier(&out));
        next.budget = request(&ns, Order::Ascending, 200 * MS, 1).budget;
        let start = i * SPAN + rows.len();
        let (more, _) = read(&hot, &next).await;
        assert_rows(&more, &all[start..start + more.len()]);
    }
}

/// A scan read call after call makes room for its fetching ahead by
/// evicting scans held over a second ago whose clients went away: a cache
/// full of them does not starve it.
#[tokio::test(start_paused = true)]
async fn stale_held_scans_make_room_for_one_being_read() {
    const IDLE: usize = 16;
    const SPAN: usize = 20_000;
    let ns = namespace(1_000_000, 4);
    let at = |i: usize| i64::try_from(i).expect("small");
    let (store, all) = seeded(&ns, (0..(IDLE + 1) * SPAN).map(at)).await;
    store.set_latency(|_| MS);
    let held = small_cache();
    let (max_bytes, ahead) = (held.max_bytes, held.ahead_bytes());
    let hot = hot_engine(&store, held);
    let one_row = |i: usize| {
        let mut req = request(&ns, Order::Ascending, 200 * MS, 1);
        (req.start, req.end) = (at(i * SPAN), at((i + 1) * SPAN));
        req
    };
    // Reads whose clients go away fill the cache.
    let idle: Vec<ReadRequest> = (0..IDLE).map(one_row).collect();
    futures::future::join_all(idle.iter().map(|req| read(&hot, req))).await;
    tokio::time::sleep(500 * MS).await;
    let weight = all[0].weight(1);
    let filled = (usize::try_from(store.rows_served()).unwrap() - IDLE) * weight;
    assert!(
        filled >= max_bytes * 3 / 4,
        "the idle reads hold {filled} bytes"
    );
    tokio::time::sleep(1_000 * MS).await;
    // A read whose client keeps reading.
    let mut req = one_row(IDLE);
    let (rows, out) = read(&hot, &req).await;
    assert_rows(&rows, &all[IDLE * SPAN..=IDLE * SPAN]);
    req.resume_after = Some(frontier(&out.expect("partial")));
    tokio::time::sleep(500 * MS).await; // its client is away briefly
    assert!(hot.held().0 < IDLE + 1, "stale scans were evicted");
    let rows = held_rows(&hot, &store, &ns, req, SPAN).await;
    assert!(
        rows.len() * weight >= ahead / 2,
        "it held {} rows, under half its fetch-ahead bound",
        rows.len()
    );
    assert_rows(&rows, &all[IDLE * SPAN + 1..=IDLE * SPAN + rows.len()]);
}

#[tokio::test(start_paused = true)]
async fn writes_between_calls_follow_the_freshness_rule() {
    // One shard, one bucket, rows every 10 µs: what storage has served is
    // exactly a prefix of the series. The held scan may fetch ahead only
    // a few kilobytes, so it stops short of the shard's end.
    let ns = namespace(1_000_000, 1);
    for hot in [false, true] {
        let (store, all) = seeded(&ns, (0..2_000).map(|i| i * 10)).await;
        store.set_latency(|_| MS);
        let engine = if hot {
            let held = ContinuationConfig {
                max_bytes: 8 * 4096,
                ..ContinuationConfig::default()
            };
            hot_engine(&store, held)
        } else {
            engine(&store)
        };
        let (first, out) = read(&engine, &request(&ns, Order::Ascending, 200 * MS, 5)).await;
        let out = out.expect("partial");
        assert_eq!(first.len(), 5);
        tokio::time::sleep(10 * MS).await; // pages in flight land
        let served = usize::try_from(store.rows_served()).unwrap();
        assert!(served >= 8, "the first call fetched past its frontier");
        // Ahead of the frontier but inside what was fetched; past what was
        // fetched; behind the frontier.
        let inside = all[served - 2].key.time + 5;
        let past = all[served - 1].key.time + 5;
        let behind = all[2].key.time + 5;
        let new = write_rows(
            &store,
            &ns,
            &[
                (inside, "new".into(), 1),
                (past, "new".into(), 1),
                (behind, "new".into(), 1),
            ],
        )
        .await;
        let req = resumed(request(&ns, Order::Ascending, 200 * MS, 100_000), &out);
        let (rest, out) = read(&engine, &req).await;
        let out = out.expect("the rest");
        assert_eq!(out.ending, Ending::Complete);
        assert_eq!(out.stats.continued, hot);
        // Cold: every row ahead of the token. Hot: rows as of when their
        // page was fetched, so the write inside the fetched range is not
        // seen. Never the row behind the token.
        let mut want: Vec<Row> = all[5..].to_vec();
        want.push(new[1].clone());
        if !hot {
            want.push(new[0].clone());
        }
        want.sort_by(|a, b| a.key.cmp(&b.key));
        assert_rows(&rest, &want);
    }
}

#[tokio::test(start_paused = true)]
async fn no_call_waits_past_its_budget_on_index_pages_or_held_scans() {
    let ns = namespace(1_000, 2);
    let (store, all) = seeded(&ns, (0..4_000).map(i64::from)).await;
    store.set_latency(|q| MS * (2 + q.shard));
    let engine = hot_engine(&store, ContinuationConfig::default());
    let mut got = Vec::new();
    let mut resume = None;
    for call in 0.. {
        assert!(call < 1_000, "the read did not finish");
        // Every other call finds the bucket index slow (storage having a
        // bad moment); pages stay quick.
        let slow_index = call % 2 == 1;
        store.set_index_latency(if slow_index { 500 * MS } else { MS });
        let mut req = request(&ns, Order::Ascending, 15 * MS, 100_000);
        req.resume_after = resume.clone();
        let began = Instant::now();
        let (rows, out) = read(&engine, &req).await;
        assert!(
            began.elapsed() <= 15 * MS,
            "call {call} waited past its budget"
        );
        match out {
            Ok(out) => {
                got.extend(rows);
                match out.ending {
                    Ending::Complete => break,
                    Ending::Partial { frontier, .. } => resume = Some(frontier),
                }
            }
            Err(ReadError::NoProgress { .. } | ReadError::Storage(_)) => assert!(rows.is_empty()),
            Err(e) => panic!("{e}"),
        }
    }
    assert_rows(&got, &all);
}

#[tokio::test(start_paused = true)]
async fn pages_in_flight_when_a_call_ends_land_for_the_next_call() {
    // Pages take 30 ms, the budget 50 ms: the second page is in flight at
    // the deadline. Held, it lands while the client is away.
    let ns = namespace(1_000_000, 1);
    let (store, all) = seeded(&ns, 0..10_000).await;
    store.set_latency(|_| 30 * MS);
    let engine = hot_engine(&store, ContinuationConfig::default());
    let (first, out) = read(&engine, &request(&ns, Order::Ascending, 50 * MS, 100_000)).await;
    let out = out.expect("partial");
    assert_eq!(
        store.in_flight(),
        1,
        "the page in flight is kept, not dropped"
    );
    let served_at_end = store.rows_served();
    tokio::time::sleep(20 * MS).await;
    let served = store.rows_served();
    assert!(served > served_at_end, "and it landed");
    let req = resumed(
        request(&ns, Order::Ascending, Duration::from_millis(1), 100_000),
        &out,
    );
    let began = Instant::now();
    let (second, out) = read(&engine, &req).await;
    let out = out.expect("rows already fetched need no storage time");
    assert!(out.stats.continued);
    assert!(began.elapsed() <= Duration::from_millis(1));
    assert!(!second.is_empty());
    assert_eq!(store.rows_served(), served, "no storage read for them");
    let got: Vec<Row> = first.into_iter().chain(second).collect();
    assert_rows(&got, &all[..got.len()]);
}

/// A page slower than a whole budget (a storage GC pause) must not leave a
/// continued call empty-handed: a call stopped by its budget leaves its
/// last rows to the next, which emits them while that page is still on its
/// way. Without them, the call after each slow page answered
/// BUDGET_TOO_SMALL although the scan was healthy.
#[tokio::test(start_paused = true)]
async fn a_continued_call_has_rows_even_while_a_page_outlasts_its_budget() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let ns = namespace(1_000, 4);
    let (store, all) = seeded(&ns, (0..20_000).map(i64::from)).await;
    let pages = Arc::new(AtomicUsize::new(0));
    store.set_latency(move |_| {
        // Every seventh page stalls for one and a half budgets.
        if pages.fetch_add(1, Ordering::Relaxed) % 7 == 6 {
            15 * MS
        } else {
            MS
        }
    });
    let hot = hot_engine(&store, ContinuationConfig::default());
    let mut rows = Vec::new();
    let mut calls = Vec::new();
    let mut resume = None;
    loop {
        let mut req = request(&ns, Order::Ascending, 10 * MS, 100_000);
        req.resume_after = resume.clone();
        let (got, out) = read(&hot, &req).await;
        let out = match out {
            Ok(out) => out,
            Err(e) => panic!("call {} of the chain failed: {e}", calls.len()),
        };
        rows.extend(got);
        calls.push(out.clone());
        match out.ending {
            Ending::Complete => break,
            Ending::Partial { frontier, .. } => resume = Some(frontier),
        }
    }
    assert_rows(&rows, &all);
    assert!(calls.len() > 10, "the budget ended most calls");
    for (i, call) in calls.iter().enumerate().skip(1) {
        assert!(call.stats.continued, "call {i} continued the held scan");
        assert!(call.stats.rows_delivered > 0, "call {i} came back empty");
    }
    let served = store.rows_served();
    let scanned: u64 = calls.iter().map(|c| c.stats.rows_scanned).sum();
    assert_eq!(scanned, served, "the calls' stats count every row read");
    // Each row is read once, but for the few a probe read again beside a
    // stalled page while a call had no row yet (tests/stragglers.rs).
    assert!(
        served >= all.len() as u64 && served <= all.len() as u64 * 101 / 100,
        "{served} rows read for {}",
        all.len()
    );
}

/// While its client is away, a held scan keeps reading: every shard has
/// its next page on the way until the rows held reach the fetch-ahead
/// bound, so a chain of calls reads at the speed of one scan instead of
/// waiting on a round trip each call.
#[tokio::test(start_paused = true)]
async fn a_held_scan_fills_its_pipeline_to_the_fetch_ahead_bound_while_the_client_is_away() {
    let ns = namespace(1_000_000, 4);
    let (store, all) = seeded(&ns, (0..200_000).map(i64::from)).await;
    store.set_latency(|_| MS);
    let held = small_cache();
    let ahead = held.ahead_bytes();
    assert_eq!(ahead, 256 << 10);
    let hot = hot_engine(&store, held);
    let (first, out) = read(&hot, &request(&ns, Order::Ascending, 5 * MS, 100_000)).await;
    let out = out.expect("partial");
    let weight = all[0].weight(1);
    tokio::time::sleep(500 * MS).await; // the client is away
    let fetched = usize::try_from(store.rows_served()).unwrap() - first.len();
    // The scan weighs its rows at the mean size of its last page, this test
    // at the first row's (the smallest): most of the bound, none past it.
    assert!(
        fetched * weight >= ahead * 3 / 4,
        "held {} bytes, far fewer than the {ahead}-byte bound",
        fetched * weight
    );
    assert!(
        fetched * weight <= ahead,
        "held {} bytes: past the {ahead}-byte bound",
        fetched * weight
    );
    assert!(fetched < all.len() - first.len(), "it stopped at the bound");
    // The next call takes them, without waiting on storage.
    let req = resumed(request(&ns, Order::Ascending, 5 * MS, 100_000), &out);
    let (second, out) = read(&hot, &req).await;
    let out = out.expect("partial");
    assert!(out.stats.continued);
    assert!(second.len() * weight >= ahead / 2, "{} rows", second.len());
    let got: Vec<Row> = first.into_iter().chain(second).collect();
    assert_rows(&got, &all[..got.len()]);
}

/// A held scan reads the buckets after the one it merges beside it, not
/// once that one is read to its end: each shard is one stream of pages, so
/// the merge of a chain otherwise waits on one shard's page after another.
/// The rows stay exactly the cold ones.
#[tokio::test(start_paused = true)]
async fn a_held_scan_reads_the_next_buckets_beside_the_one_it_merges() {
    // 3 buckets of 40,000 rows: about 10,000 per shard, pages of at most
    // 5,000 rows.
    let ns = namespace(1_000_000, 4);
    let (store, all) = seeded(&ns, (0..120_000).map(|i| i * 25)).await;
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let asked = asked.clone();
        store.set_latency(move |q| {
            asked.lock().unwrap().push(q.bucket);
            MS
        });
    }
    let hot = hot_engine(&store, ContinuationConfig::default());
    let (first, out) = read(&hot, &request(&ns, Order::Ascending, 5 * MS, 100_000)).await;
    let out = out.expect("partial");
    asked.lock().unwrap().clear();
    tokio::time::sleep(50 * MS).await; // the client is away
    let asked = asked.lock().unwrap().clone();
    let first_of_next = asked.iter().position(|&b| b > 0);
    let last_of_head = asked.iter().rposition(|&b| b == 0);
    assert!(
        matches!((first_of_next, last_of_head), (Some(n), Some(h)) if n < h),
        "the next buckets were asked only once the first was read to its end: {asked:?}"
    );
    let req = resumed(request(&ns, Order::Ascending, 5 * MS, 100_000), &out);
    let (second, out) = read(&hot, &req).await;
    assert!(out.expect("partial").stats.continued);
    let got: Vec<Row> = first.into_iter().chain(second).collect();
    assert_rows(&got, &all[..got.len()]);
}

/// Fetching ahead yields to admitted reads: while the replica refuses
/// reads for load (the pressure raised), a held scan lands only the pages
/// it had in flight and asks storage for nothing more; once no read has
/// been refused for `PRESSURE_HOLD`, it fills its pipeline again. The rows
/// stay exactly the cold ones either way.
#[tokio::test(start_paused = true)]
async fn a_held_scan_fetches_nothing_ahead_while_reads_are_refused_for_load() {
    let ns = namespace(1_000_000, 4);
    let (store, all) = seeded(&ns, (0..600_000).map(i64::from)).await;
    store.set_latency(|_| MS);
    let held = ContinuationConfig {
        max_bytes: 8 * (4 << 20),
        ..ContinuationConfig::default()
    };
    let hot = hot_engine(&store, held);
    let pressure = hot.pressure();
    pressure.raise();
    assert!(pressure.is_high());
    let (first, out) = read(&hot, &request(&ns, Order::Ascending, 5 * MS, 100_000)).await;
    let out = out.expect("partial");
    // What was in flight at the stop lands within a few page latencies.
    tokio::time::sleep(10 * MS).await;
    let landed = store.rows_served();
    // Kept raised while the client is away, as further refusals would.
    for _ in 0..4 {
        pressure.raise();
        tokio::time::sleep(50 * MS).await;
    }
    assert_eq!(
        store.rows_served(),
        landed,
        "storage was asked for rows while reads were refused"
    );
    // Refusals stop: after the hold, fetching ahead resumes.
    tokio::time::sleep(hourglass::engine::PRESSURE_HOLD + 100 * MS).await;
    assert!(!pressure.is_high());
    assert!(
        store.rows_served() > landed + 10_000,
        "fetching ahead did not resume: {} rows served, {landed} before",
        store.rows_served()
    );
    let req = resumed(request(&ns, Order::Ascending, 5 * MS, 100_000), &out);
    let (second, out) = read(&hot, &req).await;
    assert!(out.expect("partial").stats.continued);
    let got: Vec<Row> = first.into_iter().chain(second).collect();
    assert_rows(&got, &all[..got.len()]);
}

/// Rows in hand do not hold a call past its budget: a continued call
/// finding many rows fetched ahead emits only as many as its response can
/// carry in the time left (here a reserve of 10 µs per row in a 5 ms
/// budget), and leaves the rest held for the next call.
#[tokio::test(start_paused = true)]
async fn rows_fetched_ahead_fill_a_response_only_as_far_as_its_budget() {
    let ns = namespace(1_000_000, 4);
    let (store, all) = seeded(&ns, (0..100_000).map(i64::from)).await;
    store.set_latency(|_| MS);
    let per_row = Duration::from_micros(10);
    let hot = costed_engine(&store, per_row);
    let budget = 5 * MS;
    let (first, out) = read(&hot, &request(&ns, Order::Ascending, budget, 100_000)).await;
    let mut out = out.expect("partial");
    let mut got = first;
    for call in 1..=3 {
        tokio::time::sleep(100 * MS).await; // many rows land meanwhile
        let req = resumed(request(&ns, Order::Ascending, budget, 100_000), &out);
        let began = Instant::now();
        let (rows, next) = read(&hot, &req).await;
        out = next.expect("partial");
        assert!(out.stats.continued);
        let fit = usize::try_from(budget.as_micros() / per_row.as_micros()).unwrap();
        assert!(
            !rows.is_empty() && rows.len() <= fit,
            "call {call}: {} rows, at most {fit} fit",
            rows.len()
        );
        assert!(began.elapsed() <= budget);
        got.extend(rows);
    }
    assert_rows(&got, &all[..got.len()]);
}

/// A held scan whose pages fail at once (as they do while the storage
/// circuit is open) rests before it asks again. One that asked again at
/// once never waited: it held its worker thread, and with it the runtime's
/// timers and sockets, until a request got through (two seconds later,
/// the circuit's cool-down), and every read of the replica answered
/// seconds past its budget. Here 5,000 failures in a row come at once;
/// they took no time at all, all asked for before the clock moved.
#[tokio::test(start_paused = true)]
async fn a_held_scan_whose_pages_fail_at_once_rests_before_asking_again() {
    use hourglass::storage::StorageError;
    let ns = namespace(1_000, 4);
    let (store, all) = seeded(&ns, (0..20_000).map(i64::from)).await;
    let hot = hot_engine(&store, ContinuationConfig::default());
    let req = request(&ns, Order::Ascending, 100 * MS, 100);
    let (first, out) = read(&hot, &req).await;
    let out = out.expect("partial");
    assert!(matches!(out.ending, Ending::Partial { .. }));
    let asked = || store.shard_queries() + store.index_queries();
    store.fail_next((0..5_000).map(|_| StorageError::Transient("circuit open".into())));
    let before = asked();
    let began = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let failed = asked() - before;
    assert!(
        failed <= 64,
        "{failed} requests in {:?} of a held scan whose pages fail",
        began.elapsed()
    );
    // The scan is still held and whole: the next call continues it.
    let (second, out) = read(
        &hot,
        &resumed(request(&ns, Order::Ascending, 100 * MS, 100), &out),
    )
    .await;
    assert!(out.expect("partial").stats.continued);
    let got: Vec<Row> = first.into_iter().chain(second).collect();
    assert_rows(&got, &all[..got.len()]);
}

/// A token read that ends without a row leaves its client holding the same
/// token, and its scan is held at that position: the retry finds the pages
/// the failed call asked for landed, instead of asking again from the
/// start and failing the same way. Before, the failed call's scan was
/// dropped, and on storage slower than the budget every retry failed.
#[tokio::test(start_paused = true)]
async fn a_token_read_that_fails_without_a_row_is_held_for_its_retry() {
    let ns = namespace(1_000_000, 2);
    let (store, all) = seeded(&ns, (0..1_000).map(i64::from)).await;
    // The first 100 rows from one replica, under a roomy budget.
    let a = hot_engine(&store, ContinuationConfig::default());
    let (first, out) = read(&a, &request(&ns, Order::Ascending, 200 * MS, 100)).await;
    let out = out.expect("partial");
    assert_rows(&first, &all[..100]);
    // Storage now answers a page in 30 ms; the token goes to another
    // replica (a miss) with a 10 ms budget.
    store.set_latency(|_| 30 * MS);
    store.set_index_latency(30 * MS);
    let b = hot_engine(&store, ContinuationConfig::default());
    let req = resumed(request(&ns, Order::Ascending, 10 * MS, 100), &out);
    let (rows, failed) = read(&b, &req).await;
    assert!(rows.is_empty());
    assert!(
        matches!(failed, Err(ReadError::NoProgress { .. })),
        "{failed:?}"
    );
    assert_eq!(b.held().0, 1, "the failed call's scan is held");
    // The client backs off, then retries the same token, same budget.
    tokio::time::sleep(100 * MS).await;
    let retry = resumed(request(&ns, Order::Ascending, 10 * MS, 100), &out);
    let (rows, out) = read(&b, &retry).await;
    let out = out.expect("the retry has rows");
    assert!(out.stats.continued, "the retry continued the held scan");
    assert!(!rows.is_empty());
    assert_rows(&rows, &all[100..100 + rows.len()]);
}
