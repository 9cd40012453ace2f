//! The quick-start walkthrough: writes a wide series through the gRPC API,
//! reads it back page by page, then reads it under a tight SLO and follows
//! the continuation tokens, printing what happened at each step.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};

use crate::connect::{connect, Credentials};
use crate::stats::Latencies;
use hourglass::api::pb;
use hourglass::client;

/// What the demo does (`hourglass-load demo`).
#[derive(Clone, Debug, clap::Args)]
pub struct DemoOptions {
    /// Server to talk to.
    #[arg(
        long,
        env = "HOURGLASS_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// Events in the demo series.
    #[arg(long, default_value_t = 200_000)]
    pub rows: usize,
    /// Events per WriteEvents call.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Concurrent WriteEvents calls.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Rows per page when reading back.
    #[arg(long, default_value_t = 20_000)]
    pub page_size: u32,
    /// SLO of the deadline-bounded read, in milliseconds.
    #[arg(long = "slo-ms", default_value_t = 20)]
    pub slo_millis: u32,
}

/// Microseconds between consecutive demo events.
const SPACING_MICROS: i64 = 1_000;
/// Demo namespace layout: one-minute buckets over four shards.
const DEMO_BUCKET_MICROS: i64 = 60_000_000;
const DEMO_SHARDS: u32 = 4;
/// 2026-01-01T00:00:00Z.
const DEMO_EPOCH_MICROS: i64 = 1_767_225_600_000_000;

/// The demo events: `rows` events one millisecond apart.
pub fn demo_event(series: &str, i: usize) -> pb::Event {
    pb::Event {
        series_id: series.to_string(),
        event_time_micros: DEMO_EPOCH_MICROS + i as i64 * SPACING_MICROS,
        event_id: format!("ev-{i:08}"),
        payload: bytes::Bytes::from(format!("reading #{i}: {:.3}", (i as f64).sin())),
        tags: [("unit".to_string(), "celsius".to_string())].into(),
    }
}

/// Runs the walkthrough.
pub async fn run(opts: &DemoOptions) -> anyhow::Result<()> {
    anyhow::ensure!(opts.batch >= 1, "--batch must be at least 1");
    anyhow::ensure!(opts.concurrency >= 1, "--concurrency must be at least 1");
    let mut client = connect(
        &opts.server,
        &Credentials::default(),
        Duration::from_secs(30),
    )
    .await?;
    let ns = client
        .create_namespace(pb::CreateNamespaceRequest {
            namespace: Some(pb::Namespace {
                name: "demo".into(),
                bucket_width_micros: DEMO_BUCKET_MICROS,
                shards: DEMO_SHARDS,
                retention_seconds: 0,
            }),
        })
        .await?
        .into_inner();
    println!(
        "namespace {:?}: {} s buckets, {} shards",
        ns.name,
        ns.bucket_width_micros / 1_000_000,
        ns.shards
    );

    let series = "sensor-42";
    let began = Instant::now();
    // Each batch is built when its call starts, not all up front.
    let n_batches = opts.rows.div_ceil(opts.batch);
    let mut done = 0usize;
    let mut writes = futures::stream::iter((0..opts.rows).step_by(opts.batch).map(|lo| {
        let events = (lo..(lo + opts.batch).min(opts.rows))
            .map(|i| demo_event(series, i))
            .collect();
        let mut c = client.clone();
        async move {
            c.write_events(pb::WriteEventsRequest {
                namespace: "demo".into(),
                events,
            })
            .await
            .map(|r| r.into_inner().written)
        }
    }))
    .buffer_unordered(opts.concurrency);
    let mut written = 0u64;
    while let Some(r) = writes.next().await {
        written += r?;
        done += 1;
        if done % (n_batches / 10).max(1) == 0 || done == n_batches {
            println!("  wrote {written:>9} events ({done}/{n_batches} batches)");
        }
    }
    let secs = began.elapsed().as_secs_f64();
    println!(
        "wrote {written} events of series {series:?} in {secs:.1} s ({:.0} rows/s)",
        written as f64 / secs
    );

    let start = DEMO_EPOCH_MICROS;
    let end = DEMO_EPOCH_MICROS + opts.rows as i64 * SPACING_MICROS;
    let base = pb::ReadEventsRequest {
        namespace: "demo".into(),
        series_id: series.into(),
        start_time_micros: start,
        end_time_micros: end,
        order: pb::Order::Ascending as i32,
        page_size: Some(opts.page_size),
        ..Default::default()
    };
    for order in [pb::Order::Ascending, pb::Order::Descending] {
        println!("\nreading back {order:?}, page size {}:", opts.page_size);
        let req = pb::ReadEventsRequest {
            order: order as i32,
            ..base.clone()
        };
        let mut pages = client::read_pages(client.clone(), req, None);
        let (mut n, mut total, mut prev) = (0usize, 0usize, None::<(i64, String)>);
        while let Some(page) = pages.try_next().await? {
            n += 1;
            for e in &page.events {
                let key = (e.event_time_micros, e.event_id.clone());
                if let Some(p) = &prev {
                    let in_order = match order {
                        pb::Order::Ascending => *p < key,
                        pb::Order::Descending => *p > key,
                    };
                    anyhow::ensure!(in_order, "events out of order at {key:?}");
                }
                prev = Some(key);
            }
            total += page.events.len();
            let stats = page.stats.unwrap_or_default();
            println!(
                "  page {n:>3}: {:>6} events, {:>3} storage pages, {:>6.1} ms, {}",
                page.events.len(),
                stats.storage_pages,
                stats.elapsed_micros as f64 / 1000.0,
                if page.partial {
                    format!("more follows ({:?})", page.partial_reason())
                } else {
                    "range done".into()
                }
            );
        }
        anyhow::ensure!(
            total == opts.rows,
            "read {total} events, wrote {}",
            opts.rows
        );
        println!("read all {total} events in order in {n} pages");
    }

    println!(
        "\nreading with a {} ms SLO and page size 100000, following tokens:",
        opts.slo_millis
    );
    let req = pb::ReadEventsRequest {
        page_size: Some(100_000),
        slo_millis: opts.slo_millis.into(),
        ..base
    };
    let began = Instant::now();
    let mut pages = client::read_pages(client.clone(), req, None);
    let (mut responses, mut partial_slo, mut rows, mut scanned) = (0, 0, 0, 0);
    let mut latencies = Latencies::default();
    let mut last = Instant::now();
    while let Some(page) = pages.try_next().await? {
        let took = last.elapsed().as_secs_f64() * 1000.0;
        last = Instant::now();
        responses += 1;
        rows += page.events.len();
        latencies.record(Duration::from_secs_f64(took / 1000.0));
        scanned += page.stats.map_or(0, |s| s.rows_scanned);
        if page.partial_reason() == pb::PartialReason::Slo {
            partial_slo += 1;
        }
        if responses <= 3 {
            println!(
                "  response {responses}: {} events in {took:.1} ms ({:.1} ms in the server), \
                 partial={} ({:?})",
                page.events.len(),
                page.stats.map_or(0.0, |s| s.elapsed_micros as f64 / 1000.0),
                page.partial,
                page.partial_reason()
            );
        }
    }
    anyhow::ensure!(rows == opts.rows, "read {rows} events, wrote {}", opts.rows);
    let pct = |q: f64| latencies.percentile_ms(q * 100.0);
    println!(
        "  ... {responses} responses, {partial_slo} of them partial at the SLO, {rows} events \
         in {:.2} s",
        began.elapsed().as_secs_f64()
    );
    println!(
        "  response latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (SLO {} ms); \
         Cassandra served {scanned} rows for {rows} delivered ({:.3}x)",
        pct(0.5),
        pct(0.99),
        pct(1.0),
        opts.slo_millis,
        scanned as f64 / rows as f64
    );
    println!("\ndemo finished: every event came back exactly once, in order");
    Ok(())
}
