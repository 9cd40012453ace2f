//! A sink that cannot hand its rows on (a stream whose client is behind)
//! holds the engine back, on the fake store under tokio's paused clock: the
//! read asks storage for nothing more while the sink is backlogged, ends
//! at its budget with exactly the rows it pushed, and resumes from there.

mod fake;

use std::time::Duration;

use fake::{assert_rows, engine, namespace, request, resumed, seeded, MS};
use hourglass::engine::{Ending, RowSink};
use hourglass::model::{Key, Order, Row};

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
