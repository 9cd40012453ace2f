//! Reads a whole series through Hourglass with the client helper, which
//! follows continuation tokens to the end, each call under its own deadline.
//!
//! ```sh
//! cargo run --example read_all -- http://127.0.0.1:50051 demo sensor-42
//! ```

use std::time::Duration;

use futures::TryStreamExt;
use hourglass::api::pb;
use hourglass::api::pb::hourglass_client::HourglassClient;
use hourglass::client;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let server = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let namespace = args.next().unwrap_or_else(|| "demo".into());
    let series = args.next().unwrap_or_else(|| "sensor-42".into());
    let grpc = HourglassClient::connect(server).await?;
    let request = pb::ReadEventsRequest {
        namespace,
        series_id: series,
        start_time_micros: i64::MIN,
        end_time_micros: i64::MAX,
        page_size: Some(10_000),
        slo_millis: 50,
        ..Default::default()
    };
    // Every event, in order, however many partial responses it takes.
    let mut events = client::read_all(grpc, request, Some(Duration::from_millis(200)));
    let (mut n, mut last) = (0u64, None);
    while let Some(event) = events.try_next().await? {
        n += 1;
        last = Some(event.event_time_micros);
    }
    println!("{n} events, last at {last:?}");
    Ok(())
}
