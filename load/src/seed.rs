//! `hourglass-load seed`: creates a namespace and writes wide series through
//! WriteEvents, resumable through a checkpoint file of contiguous progress.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::connect::connect;
use crate::{Target, LOAD_EPOCH_MICROS};
use hourglass::api::pb;

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct SeedArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub target: Target,
    /// Rows per series (up to 10,000,000).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub rows_per_series: u64,
    /// Payload size in bytes; with --payload-max-bytes, the minimum of a uniform spread.
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// Largest payload in bytes: payloads spread uniformly from
    /// --payload-bytes up to it (the same spread on every re-seed).
    #[arg(long)]
    pub payload_max_bytes: Option<usize>,
    #[arg(long, default_value_t = 300)]
    pub bucket_secs: u64,
    #[arg(long, default_value_t = 4)]
    pub shards: u32,
    /// Events per WriteEvents call.
    #[arg(long, default_value_t = 2000)]
    pub batch: usize,
    /// WriteEvents calls in flight.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Start over instead of resuming from the checkpoint file.
    #[arg(long)]
    pub restart: bool,
    #[arg(long)]
    pub quiet: bool,
}

/// Event `i` of series `series` as seeded.
pub fn seed_event(args: &SeedArgs, series: u32, i: u64) -> pb::Event {
    let step = (args.target.span_secs as i64 * 1_000_000) / args.rows_per_series as i64;
    let len = match args.payload_max_bytes {
        Some(max) if max > args.payload_bytes => {
            // Deterministic spread, so re-seeding writes identical rows.
            let h = (i ^ (u64::from(series) << 40)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            args.payload_bytes + (h % (max - args.payload_bytes + 1) as u64) as usize
        }
        _ => args.payload_bytes,
    };
    pb::Event {
        series_id: format!("series-{series}"),
        event_time_micros: LOAD_EPOCH_MICROS + i as i64 * step.max(1),
        event_id: format!("{i:010}"),
        payload: bytes::Bytes::from(vec![b'x'; len]),
        tags: Default::default(),
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    /// Rows written without gap from the start, by series.
    done: BTreeMap<u32, u64>,
}

/// The checkpoint of seeding this namespace through this server: a
/// namespace of the same name behind another server (another store) has
/// its own.
fn checkpoint_path(args: &SeedArgs) -> PathBuf {
    let server: String = args
        .target
        .server
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    PathBuf::from(format!(
        "reports/seed-{server}-{}.json",
        args.target.namespace
    ))
}

/// Seeds series; resumable through a checkpoint file of contiguous progress.
pub async fn seed(args: &SeedArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch >= 1, "--batch must be at least 1");
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    args.target.validate()?;
    if let Some(max) = args.payload_max_bytes {
        anyhow::ensure!(
            max >= args.payload_bytes,
            "--payload-max-bytes must be >= --payload-bytes"
        );
    }
    let mut client = connect(
        &args.target.server,
        &args.target.credentials,
        Duration::from_secs(30),
    )
    .await?;
    client
        .create_namespace(pb::CreateNamespaceRequest {
            namespace: Some(pb::Namespace {
                name: args.target.namespace.clone(),
                bucket_width_micros: args.bucket_secs as i64 * 1_000_000,
                shards: args.shards,
                retention_seconds: 0,
            }),
        })
        .await?;
    let path = checkpoint_path(args);
    let mut checkpoint: Checkpoint = if args.restart {
        Checkpoint::default()
    } else {
        std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    };
    let total = u64::from(args.target.series) * args.rows_per_series;
    let already: u64 = checkpoint
        .done
        .values()
        .map(|&d| d.min(args.rows_per_series))
        .sum();
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rows  {per_sec}  ETA {eta}")
            .expect("valid template"),
    );
    bar.set_position(already);
    let began = Instant::now();
    for s in 0..args.target.series {
        let from = checkpoint.done.get(&s).copied().unwrap_or(0);
        let batches: Vec<(u64, u64)> = (from..args.rows_per_series)
            .step_by(args.batch)
            .map(|b| (b, (b + args.batch as u64).min(args.rows_per_series)))
            .collect();
        let mut writes = futures::stream::iter(batches.into_iter().map(|(lo, hi)| {
            let mut c = client.clone();
            let events = (lo..hi).map(|i| seed_event(args, s, i)).collect();
            let namespace = args.target.namespace.clone();
            async move {
                c.write_events(pb::WriteEventsRequest { namespace, events })
                    .await
                    .map(|_| (lo, hi))
            }
        }))
        .buffered(args.concurrency);
        let mut last_save = Instant::now();
        while let Some(r) = writes.next().await {
            let (_, hi) = r.map_err(|e| anyhow::anyhow!("WriteEvents failed: {}", e.message()))?;
            // `buffered` yields in order, so `hi` is a contiguous prefix.
            checkpoint.done.insert(s, hi);
            bar.set_position(
                checkpoint
                    .done
                    .values()
                    .map(|&d| d.min(args.rows_per_series))
                    .sum::<u64>(),
            );
            if last_save.elapsed() > Duration::from_secs(1) {
                save_checkpoint(&path, &checkpoint)?;
                last_save = Instant::now();
            }
        }
        save_checkpoint(&path, &checkpoint)?;
    }
    bar.finish_and_clear();
    let written = total - already;
    let secs = began.elapsed().as_secs_f64();
    println!(
        "seeded {} series x {} rows into {:?}: wrote {written} rows in {secs:.1} s ({:.0} rows/s)",
        args.target.series,
        args.rows_per_series,
        args.target.namespace,
        written as f64 / secs.max(1e-9)
    );
    Ok(())
}

fn save_checkpoint(path: &PathBuf, c: &Checkpoint) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string(c)?)?;
    Ok(())
}
