//! A sink that cannot hand its rows on (a stream whose client is behind)
//! holds the engine back, on the fake store under tokio's paused clock: the
//! read asks storage for nothing more while the sink is backlogged, ends
//! at its budget with exactly the rows it pushed, and resumes from there.

mod fake;

use std::sync::Arc;
use std::time::Duration;

use fake::{assert_rows, costed_engine, engine, namespace, request, resumed, seeded, MS};
use hourglass::engine::{ContinuationConfig, Ending, EngineConfig, ReadEngine, RowSink};
use hourglass::model::{Key, Order, Row};
use tokio::time::Instant;

/// Takes rows like a stream; backlogged from its `stall_after`th row on,
/// until `release` is awaited by the engine (never, here).
struct StalledStream {
    rows: Vec<Row>,
    stall_after: usize,
}

impl RowSink for StalledStream {
    fn push(&mut self, row: Row) {
        self.rows.push(row);
    }

    fn sends_as_it_goes(&self) -> bool {
        true
    }

    fn backlogged(&self) -> bool {
        self.rows.len() >= self.stall_after
    }

    async fn drained(&mut self) {
        std::future::pending::<()>().await;
    }

    fn take_back(&mut self, _: usize) -> Option<(Key, Vec<Row>)> {
        None
    }
}

#[tokio::test(start_paused = true)]
async fn a_backlogged_sink_stops_the_scan_until_the_budget_ends() {
    let ns = namespace(1_000_000, 2);
    let (store, all) = seeded(&ns, (0..50_000).map(i64::from)).await;
    store.set_latency(|q| MS + Duration::from_micros(q.limit as u64));
    let engine = engine(&store);
    let req = request(&ns, Order::Ascending, 200 * MS, 1_000_000);
    let mut sink = StalledStream {
        rows: Vec::new(),
        stall_after: 1,
    };
    let out = engine.read(&req, &mut sink).await.expect("partial");
    let Ending::Partial { .. } = out.ending else {
        panic!("a stalled client cannot finish 50,000 rows");
    };
    let pages = out.stats.storage_pages;
    assert_eq!(
        out.stats.rows_delivered,
        sink.rows.len() as u64,
        "what was pushed is what the token covers"
    );
    // Without back-pressure the 200 ms budget reads all 50,000 rows.
    assert!(
        sink.rows.len() < all.len() / 4,
        "{} rows of {} pushed to a client that takes none ({pages} pages)",
        sink.rows.len(),
        all.len()
    );
    // The read resumes exactly where the stalled one ended.
    let mut rest = Vec::new();
    let out2 = engine
        .read(
            &resumed(request(&ns, Order::Ascending, 10_000 * MS, 1_000_000), &out),
            &mut rest,
        )
        .await
        .expect("rest");
    assert!(matches!(out2.ending, Ending::Complete));
    let mut got = sink.rows;
    got.extend(rest);
    assert_rows(&got, &all);
}

/// Takes rows like a stream whose client keeps up.
#[derive(Default)]
struct Stream {
    rows: Vec<Row>,
}

impl RowSink for Stream {
    fn push(&mut self, row: Row) {
        self.rows.push(row);
    }

    fn sends_as_it_goes(&self) -> bool {
        true
    }
}

/// A stream sends no more rows than its client can read by the deadline:
/// continued with many rows fetched ahead in hand, it sends at once only
/// as many as fit in its budget at 10 µs a row (it sent them all, and its
/// client read them long after its deadline), and leaves the rest held.
#[tokio::test(start_paused = true)]
async fn a_stream_sends_rows_in_hand_only_as_far_as_its_client_can_read_them() {
    let ns = namespace(1_000_000, 4);
    let (store, all) = seeded(&ns, (0..100_000).map(i64::from)).await;
    store.set_latency(|_| MS);
    let per_row = Duration::from_micros(10);
    let hot = costed_engine(&store, per_row);
    let budget = 5 * MS;
    let mut first = Stream::default();
    let mut out = hot
        .read(&request(&ns, Order::Ascending, budget, 100_000), &mut first)
        .await
        .expect("partial");
    let mut got = first.rows;
    let fit = usize::try_from(budget.as_micros() / per_row.as_micros()).unwrap();
    for call in 1..=3 {
        tokio::time::sleep(100 * MS).await; // many rows land meanwhile
        let req = resumed(request(&ns, Order::Ascending, budget, 100_000), &out);
        let began = Instant::now();
        let mut sink = Stream::default();
        out = hot.read(&req, &mut sink).await.expect("partial");
        assert!(out.stats.continued);
        // The clock is read every 32 rows.
        assert!(
            !sink.rows.is_empty() && sink.rows.len() < fit + 32,
            "call {call}: {} rows, at most {fit} fit",
            sink.rows.len()
        );
        assert!(began.elapsed() <= budget);
        got.extend(sink.rows);
    }
    assert!(matches!(out.ending, Ending::Partial { .. }));
    assert_rows(&got, &all[..got.len()]);
}

/// A stream's client reads its rows as they come, so a stream whose rows
/// trickle in uses its whole budget: at 200 µs a row, 128-row pages landing
/// every 20 ms (25.6 ms of reading each) keep its client busy from the
/// first page on, and a 1 s stream sends nearly the 5,000 rows its client
/// can read in that time, none that it would still be reading at the
/// deadline. (Counted as one response read after the scan, the rows held
/// the scan to under half of that: about 2,700.)
#[tokio::test(start_paused = true)]
async fn a_streams_client_reads_as_the_rows_come() {
    let ns = namespace(1_000_000_000, 1);
    let (store, all) = seeded(&ns, (0..100_000).map(i64::from)).await;
    store.set_latency(|_| 20 * MS);
    let per_row = Duration::from_micros(200);
    let config = EngineConfig {
        response_reserve: Duration::ZERO,
        response_reserve_per_row: per_row,
        timer_slack: Duration::ZERO,
        max_storage_page: 128,
        initial_storage_page: 128,
        continuations: ContinuationConfig::off(),
        ..EngineConfig::default()
    };
    let engine = ReadEngine::new(Arc::new(store.clone()), config);
    let budget = 1_000 * MS;
    let began = Instant::now();
    let mut sink = Stream::default();
    let out = engine
        .read(&request(&ns, Order::Ascending, budget, 100_000), &mut sink)
        .await
        .expect("partial");
    let fit = usize::try_from(budget.as_micros() / per_row.as_micros()).unwrap();
    let rows = sink.rows.len();
    assert!(
        rows >= fit * 9 / 10,
        "{rows} rows of the {fit} its client can read"
    );
    // Read from the first page's landing on, the client is done by the
    // deadline.
    let reading = per_row * u32::try_from(rows).unwrap();
    assert!(
        20 * MS + reading <= budget,
        "{rows} rows take {reading:?} to read"
    );
    assert!(began.elapsed() <= budget);
    assert!(matches!(out.ending, Ending::Partial { .. }));
    assert_rows(&sink.rows, &all[..rows]);
}

/// Takes rows like a stream whose client reads each row `pace` after the
/// last, from the time it was pushed on (slower than the replica's usual
/// client), and says how far behind it is ([`RowSink::unsent`]).
struct SlowClient {
    rows: Vec<Row>,
    pace: Duration,
    /// When the client will have read every row pushed.
    done: Option<Instant>,
    /// Whether the sink reports its client's lag (the engine's own model
    /// knows only the replica's usual client).
    reports: bool,
}

impl RowSink for SlowClient {
    fn push(&mut self, row: Row) {
        let now = Instant::now();
        let from = self.done.map_or(now, |d| d.max(now));
        self.done = Some(from + self.pace);
        self.rows.push(row);
    }

    fn sends_as_it_goes(&self) -> bool {
        true
    }

    fn unsent(&self) -> Duration {
        match self.done {
            Some(done) if self.reports => done.saturating_duration_since(Instant::now()),
            _ => Duration::ZERO,
        }
    }
}

/// A stream whose client reads ten times slower than the replica's usual
/// one still has every row read by its deadline: its sink measures the
/// client's lag and the scan keeps it back from the budget (the clock is
/// read every 32 rows, so the last 32 may be late by their reading). Not
/// reported, the scan sent rows for its whole budget at the usual 10 µs a
/// row, which the client finished reading long after it.
#[tokio::test(start_paused = true)]
async fn a_stream_whose_client_is_slow_ends_by_its_deadline_at_the_client() {
    let ns = namespace(1_000_000, 4);
    let (store, all) = seeded(&ns, (0..100_000).map(i64::from)).await;
    store.set_latency(|_| MS);
    let pace = Duration::from_micros(100);
    let budget = 50 * MS;
    let mut late_without = Duration::ZERO;
    for reports in [true, false] {
        let engine = costed_engine(&store, Duration::from_micros(10));
        let began = Instant::now();
        let mut sink = SlowClient {
            rows: Vec::new(),
            pace,
            done: None,
            reports,
        };
        let out = engine
            .read(&request(&ns, Order::Ascending, budget, 100_000), &mut sink)
            .await
            .expect("partial");
        assert!(matches!(out.ending, Ending::Partial { .. }));
        assert_rows(&sink.rows, &all[..sink.rows.len()]);
        let deadline = began + budget;
        let done = sink.done.expect("rows");
        let late = done.saturating_duration_since(deadline);
        if reports {
            assert!(late <= pace * 32, "read {late:?} past the deadline");
            // Not much less than the client could read in the budget.
            let fit = usize::try_from(budget.as_micros() / pace.as_micros()).unwrap();
            assert!(
                sink.rows.len() >= fit * 3 / 4,
                "{} rows of the {fit} its client can read",
                sink.rows.len()
            );
        } else {
            late_without = late;
        }
    }
    assert!(
        late_without > budget,
        "unreported, the client read {late_without:?} past the deadline"
    );
}
