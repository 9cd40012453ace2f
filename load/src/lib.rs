//! The load tool (`hourglass-load ...`), a client of the service's public
//! API: seeds wide series through the gRPC write API, drives reads open- or
//! closed-loop with SLOs and deadlines, reports HdrHistogram latencies,
//! compares reports and draws charts; the macro benchmark ([`bench`](mod@bench)), the
//! soak ([`soak`]) and the quick-start demo ([`demo`]).
//!
//! * [`stats`]: latency recording from intended start times, HDR percentiles.
//! * [`report`]: JSON reports, side-by-side comparison, SVG charts.
//! * [`bench`](mod@bench): starts servers and runs the macro benchmark, writes
//!   `docs/benchmarks.md`.
//! * [`soak`]: many mixed clients for minutes, RSS and scans sampled.
//! * [`demo`]: writes a demo series and reads it back under an SLO.

// The load tool converts its own synthetic counts, sizes and times between
// integer types; they are far inside every range.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

pub mod bench;
pub mod connect;
pub mod demo;
pub mod report;
pub mod seed;
pub mod soak;
pub mod stats;

pub use seed::{seed, seed_event, SeedArgs};

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic_types::StatusExt as _;

use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt;
use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use hdrhistogram::serialization::V2Serializer;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::connect::{connect, Client, Credentials};
use hourglass::api::pb;
use hourglass::client::{follow, FollowOptions};
use report::Report;
use stats::{latency_since_intended, rates, Latencies, RunStats, Schedule};

/// First event time of seeded series: 2026-01-01T00:00:00Z.
pub const LOAD_EPOCH_MICROS: i64 = 1_767_225_600_000_000;
/// Requests an open-loop run lets wait before counting new ones as dropped.
const MAX_OUTSTANDING: usize = 10_000;

#[derive(Debug, Subcommand)]
pub enum LoadCommand {
    /// Create a namespace and write wide series through WriteEvents.
    Seed(SeedArgs),
    /// Drive reads and report latencies.
    Run(RunArgs),
    /// Show two JSON reports side by side.
    Compare { a: PathBuf, b: PathBuf },
    /// Draw response-latency percentiles of one or two reports as SVG.
    Chart {
        #[arg(required = true, num_args = 1..=4)]
        reports: Vec<PathBuf>,
        #[arg(long, default_value = "reports/latency.svg")]
        out: PathBuf,
    },
    /// The macro benchmark against the local Cassandra; writes docs/benchmarks.md.
    Bench(bench::BenchArgs),
    /// Many clients for minutes against a running server (with metrics on):
    /// checks that memory stays flat, scans end and nothing fails unexpectedly.
    Soak(soak::SoakArgs),
}

/// Which server and seeded series a load command works on; `seed` and
/// `run` must agree on these.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct Target {
    /// The server's URL; several separated by commas take the calls in
    /// turn (as a balancer alternating over replicas does).
    #[arg(
        long,
        env = "HOURGLASS_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    #[arg(long, default_value = "load")]
    pub namespace: String,
    /// Number of series (named series-0, series-1, ...).
    #[arg(long, default_value_t = 1)]
    pub series: u32,
    /// Seconds of event time each series covers, from 2026-01-01.
    #[arg(long, default_value_t = 3600)]
    pub span_secs: u64,
    #[command(flatten)]
    #[serde(default)]
    pub credentials: Credentials,
}

impl Target {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.series >= 1, "--series must be at least 1");
        anyhow::ensure!(self.span_secs >= 1, "--span-secs must be at least 1");
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, ValueEnum, Serialize, Deserialize, PartialEq, Eq)]
pub enum Pattern {
    /// One call over a random sub-range of a random series.
    RandomRange,
    /// One call over a whole series.
    WholeSeries,
    /// A whole series, following tokens to the end.
    Follow,
}

/// `--class` values: the server's priority classes.
#[derive(Debug, Clone, Copy, ValueEnum, Serialize, Deserialize, PartialEq, Eq)]
pub enum ReadClass {
    Interactive,
    Batch,
}

impl From<ReadClass> for hourglass::admission::Class {
    fn from(c: ReadClass) -> Self {
        match c {
            ReadClass::Interactive => Self::Interactive,
            ReadClass::Batch => Self::Batch,
        }
    }
}

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct RunArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub target: Target,
    /// Open loop: logical reads started per second regardless of completions.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Closed loop: concurrent clients (ignored with --rate).
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Measured duration in seconds (default 10 unless --requests is given).
    #[arg(long)]
    pub duration_secs: Option<f64>,
    /// Stop after this many logical reads.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Seconds of warm-up, not counted.
    #[arg(long, default_value_t = 0.0)]
    pub warmup_secs: f64,
    #[arg(long, value_enum, default_value = "follow")]
    pub pattern: Pattern,
    /// Length of random sub-ranges, as a fraction of the span.
    #[arg(long, default_value_t = 0.1)]
    pub range_fraction: f64,
    /// Request SLO field, milliseconds.
    #[arg(long)]
    pub slo_ms: Option<u32>,
    /// gRPC deadline per call, milliseconds.
    #[arg(long)]
    pub deadline_ms: Option<u64>,
    #[arg(long, default_value_t = 10_000)]
    pub page_size: u32,
    #[arg(long)]
    pub descending: bool,
    /// Priority class sent with every call (`x-hourglass-class`); none by
    /// default (the server takes interactive).
    #[arg(long, value_enum)]
    #[serde(default)]
    pub class: Option<ReadClass>,
    /// Name of the run in reports.
    #[arg(long, default_value = "run")]
    pub label: String,
    /// Where to write the JSON report (an HDR interval log goes beside it).
    #[arg(long, default_value = "reports/run.json")]
    pub report: PathBuf,
    /// No live line.
    #[arg(long)]
    pub quiet: bool,
}

impl RunArgs {
    /// Checks the arguments, naming the bad one.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(r) = self.rate {
            anyhow::ensure!(
                r > 0.0 && r.is_finite(),
                "--rate must be a positive number, got {r}"
            );
        }
        anyhow::ensure!(self.clients >= 1, "--clients must be at least 1");
        self.target.validate()?;
        anyhow::ensure!(
            self.range_fraction > 0.0 && self.range_fraction <= 1.0,
            "--range-fraction must be in (0, 1], got {}",
            self.range_fraction
        );
        if let Some(d) = self.duration_secs {
            anyhow::ensure!(
                d > 0.0 && d.is_finite(),
                "--duration-secs must be positive, got {d}"
            );
        }
        anyhow::ensure!(
            self.warmup_secs >= 0.0,
            "--warmup-secs must not be negative"
        );
        anyhow::ensure!(self.requests != Some(0), "--requests must be at least 1");
        anyhow::ensure!(
            self.deadline_ms != Some(0),
            "--deadline-ms must be at least 1"
        );
        anyhow::ensure!(self.slo_ms != Some(0), "--slo-ms must be at least 1");
        Ok(())
    }
}

/// Parses a human duration (`250ms`, `2s`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// Runs a load subcommand.
pub async fn main(cmd: LoadCommand) -> anyhow::Result<()> {
    match cmd {
        LoadCommand::Seed(args) => seed(&args).await,
        LoadCommand::Run(args) => {
            let report = run(&args).await?;
            print!("{}", report.table());
            println!("report: {}", args.report.display());
            // A run in which no call got an answer measured nothing: say
            // so in the exit status too (a server refusing every call for
            // credentials, a wrong namespace).
            if report.requests > 0 && report.responses.count == 0 {
                let first = report
                    .first_error_by_reason
                    .iter()
                    .next()
                    .map(|(reason, message)| format!("{reason}: {message}"))
                    .unwrap_or_default();
                anyhow::bail!(
                    "no call of {} got a response ({:?}); first error {first}",
                    report.requests,
                    report.errors_by_code
                );
            }
            Ok(())
        }
        LoadCommand::Compare { a, b } => {
            print!(
                "{}",
                report::compare(&Report::load(&a)?, &Report::load(&b)?)
            );
            Ok(())
        }
        LoadCommand::Chart { reports, out } => {
            let reports = reports
                .iter()
                .map(|p| Report::load(p))
                .collect::<Result<Vec<_>, _>>()?;
            report::chart(&reports, &out)?;
            println!("chart: {}", out.display());
            Ok(())
        }
        LoadCommand::Bench(args) => bench::run(&args).await,
        LoadCommand::Soak(args) => {
            let report = soak::run(&args).await?;
            print!("{}", report.summary());
            anyhow::ensure!(report.passed(), "the soak failed");
            Ok(())
        }
    }
}

fn request_for(args: &RunArgs) -> pb::ReadEventsRequest {
    let mut rng = rand::rng();
    let series = rng.random_range(0..args.target.series);
    let span = args.target.span_secs as i64 * 1_000_000;
    let (start, end) = match args.pattern {
        Pattern::RandomRange => {
            let len = ((span as f64 * args.range_fraction) as i64).max(1);
            let off = rng.random_range(0..=(span - len).max(0));
            (LOAD_EPOCH_MICROS + off, LOAD_EPOCH_MICROS + off + len)
        }
        Pattern::WholeSeries | Pattern::Follow => (LOAD_EPOCH_MICROS, LOAD_EPOCH_MICROS + span),
    };
    pb::ReadEventsRequest {
        namespace: args.target.namespace.clone(),
        series_id: format!("series-{series}"),
        start_time_micros: start,
        end_time_micros: end,
        order: if args.descending {
            pb::Order::Descending
        } else {
            pb::Order::Ascending
        } as i32,
        page_size: Some(args.page_size),
        slo_millis: args.slo_ms.map_or(0, i64::from),
        ..Default::default()
    }
}

/// When responses count: after the warm-up, before the end of the run.
#[derive(Clone, Copy)]
struct Window {
    measure_from: Instant,
    stop_at: Option<Instant>,
}

impl Window {
    fn counts(&self, t: Instant) -> bool {
        t >= self.measure_from
    }

    fn over(&self, t: Instant) -> bool {
        self.stop_at.is_some_and(|s| t >= s)
    }
}

/// A logical read refused for load on the way: how long its client should
/// wait (the server's RetryInfo), and where the read stands (the request
/// carrying its last token, and when the read was meant to start).
struct Refused {
    wait: Option<Duration>,
    request: pb::ReadEventsRequest,
    intended: Instant,
    tally: Tally,
}

/// What one logical read's calls scanned and delivered so far, and whether
/// every one of them was answered within the measured window: such a read,
/// once finished, counts in [`RunStats::whole_reads_rows`]. A read the
/// window's end cuts off leaves rows its held scan fetched ahead that no
/// call delivers, which says more of where the run stopped than of what
/// reading costs.
#[derive(Clone, Copy, Debug)]
struct Tally {
    scanned: u64,
    delivered: u64,
    whole: bool,
}

impl Tally {
    /// A read begun at an instant the window counts (`whole`) or not.
    fn new(whole: bool) -> Self {
        Self {
            scanned: 0,
            delivered: 0,
            whole,
        }
    }

    /// A call of the read was answered, within the window (`counted`) or
    /// not, having scanned and delivered these rows (none for an error).
    fn call(&mut self, counted: bool, scanned: u64, delivered: u64) {
        self.whole &= counted;
        self.scanned += scanned;
        self.delivered += delivered;
    }

    /// The read finished: its (scanned, delivered) rows when every call
    /// was answered within the window.
    fn finish(self) -> Option<(u64, u64)> {
        self.whole.then_some((self.scanned, self.delivered))
    }
}

/// One logical read from `request` (a fresh read, or one refused before,
/// carrying its token), recording each response as it arrives. The first
/// response's latency counts from `sent`; the whole read's from `intended`.
/// A read still following tokens when the run ends is abandoned and not
/// counted as a whole read. `tally` is what the read's calls before this
/// one (refused since) scanned and delivered.
async fn logical_read(
    client: Client,
    args: &RunArgs,
    request: pb::ReadEventsRequest,
    (intended, sent): (Instant, Instant),
    shared: &Mutex<Shared>,
    window: Window,
    mut tally: Tally,
) -> Option<Refused> {
    // Every response counts as it comes: a call that made no progress is
    // an error of the run, not repeated.
    let options = FollowOptions {
        per_call: args.deadline_ms.map(Duration::from_millis),
        no_progress_retries: 0,
        // Refusals are counted, and a closed-loop client waits them out.
        overload_retries: 0,
        class: args.class.map(Into::into),
        ..FollowOptions::default()
    };
    let mut current = request.clone();
    let mut pages = follow(client, request, options);
    let mut sent = sent;
    while let Some(result) = pages.next().await {
        let now = Instant::now();
        let counted = window.counts(now);
        let mut s = shared.lock().expect("stats lock");
        if counted {
            s.requests += 1;
        }
        let page = match result {
            Err(status) => {
                tally.call(counted, 0, 0);
                let refused = status.code() == tonic::Code::ResourceExhausted;
                if counted {
                    *s.total
                        .errors_by_code
                        .entry(format!("{:?}", status.code()))
                        .or_default() += 1;
                    if let Some(info) = status.get_details_error_info() {
                        s.total
                            .first_error_by_reason
                            .entry(info.reason.clone())
                            .or_insert_with(|| status.message().to_string());
                        *s.total.errors_by_reason.entry(info.reason).or_default() += 1;
                    }
                    if refused {
                        s.total.refusals.record(latency_since_intended(sent, now));
                    }
                }
                return refused.then(|| Refused {
                    wait: status.get_details_retry_info().and_then(|r| r.retry_delay),
                    request: current,
                    intended,
                    tally,
                });
            }
            Ok(page) => page,
        };
        tally.call(
            counted,
            page.stats.map_or(0, |st| st.rows_scanned),
            page.events.len() as u64,
        );
        if counted {
            let latency = latency_since_intended(sent, now);
            let rows = page.events.len() as u64;
            let slo = args.slo_ms.map(u64::from).or(args.deadline_ms);
            if slo.is_none_or(|ms| latency <= Duration::from_millis(ms)) {
                s.total.good_rows += rows;
            }
            s.total.responses.record(latency);
            if let Some(st) = page.stats {
                let server = Duration::from_micros(st.elapsed_micros);
                s.total.server_elapsed.record(server);
                s.total
                    .outside_server
                    .record(latency.saturating_sub(server));
            }
            s.interval.record(latency);
            s.total.rows += rows;
            s.interval_rows += rows;
            s.total.bytes += page
                .events
                .iter()
                .map(|e| (e.payload.len() + e.event_id.len() + 8) as u64)
                .sum::<u64>();
            s.total.rows_scanned += page.stats.map_or(0, |st| st.rows_scanned);
            s.total.continued += u64::from(page.stats.is_some_and(|st| st.continued));
            if page.partial {
                let reason = page
                    .partial_reason()
                    .as_str_name()
                    .trim_start_matches("PARTIAL_REASON_");
                *s.total
                    .partial_by_reason
                    .entry(reason.to_string())
                    .or_default() += 1;
            }
        }
        if !(page.partial && args.pattern == Pattern::Follow) {
            if window.counts(intended) {
                s.reads += 1;
                s.total.reads.record(latency_since_intended(intended, now));
            }
            if let Some((scanned, delivered)) = tally.finish() {
                s.total.whole_reads_rows += delivered;
                s.total.whole_reads_rows_scanned += scanned;
            }
            return None;
        }
        drop(s);
        if window.over(now) {
            return None;
        }
        current
            .continuation_token
            .clone_from(&page.continuation_token);
        sent = Instant::now();
    }
    None
}

/// Shared run state: totals plus the current one-second interval.
#[derive(Default)]
struct Shared {
    total: RunStats,
    interval: Latencies,
    interval_rows: u64,
    /// Calls answered (responses and errors) within the window.
    requests: u64,
    /// Logical reads completed within the window.
    reads: u64,
}

/// Drives reads as configured and returns (and saves) the report.
pub async fn run(args: &RunArgs) -> anyhow::Result<Report> {
    args.validate()?;
    let client = connect(
        &args.target.server,
        &args.target.credentials,
        Duration::from_secs(30),
    )
    .await?;
    let cpu0 = cpu_time::ProcessTime::now();
    let shared = Arc::new(Mutex::new(Shared::default()));
    let warmup = Duration::from_secs_f64(args.warmup_secs);
    let duration = args
        .duration_secs
        .map(Duration::from_secs_f64)
        .or(if args.requests.is_some() {
            None
        } else {
            Some(Duration::from_secs(10))
        });
    let began = Instant::now();
    let measure_from = began + warmup;
    let stop_at = duration.map(|d| measure_from + d);
    let window = Window {
        measure_from,
        stop_at,
    };
    let budget = args.requests;
    let started = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let take_ticket = {
        let started = started.clone();
        move |now: Instant| -> bool {
            if stop_at.is_some_and(|t| now >= t) {
                return false;
            }
            if now < measure_from {
                return true;
            }
            let n = started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            budget.is_none_or(|b| n < b)
        }
    };

    let hlog_path = args.report.with_extension("hlog");
    if let Some(dir) = hlog_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut hlog_file = std::fs::File::create(&hlog_path)?;
    let mut serializer = V2Serializer::new();
    let mut hlog = IntervalLogWriterBuilder::new()
        .add_comment(&format!("hourglass-load run {}", args.label))
        .with_start_time(std::time::SystemTime::now())
        .with_max_value_divisor(1000.0)
        .begin_log_with(&mut hlog_file, &mut serializer)
        .map_err(|e| anyhow::anyhow!("cannot write HDR log: {e:?}"))?;

    let mut tasks = JoinSet::new();
    let driver = {
        let shared = shared.clone();
        let args = args.clone();
        let client = client.clone();
        let take_ticket = take_ticket.clone();
        async move {
            let mut ops = JoinSet::new();
            if let Some(rate) = args.rate {
                let schedule = Schedule::new(began, rate);
                let mut i = 0u64;
                loop {
                    let intended = schedule.intended(i);
                    i += 1;
                    tokio::time::sleep_until(intended).await;
                    if !take_ticket(intended) {
                        break;
                    }
                    if ops.len() >= MAX_OUTSTANDING {
                        let mut s = shared.lock().expect("stats lock");
                        *s.total
                            .errors_by_code
                            .entry("ClientBacklog".into())
                            .or_default() += 1;
                        continue;
                    }
                    let (c, a, sh) = (client.clone(), args.clone(), shared.clone());
                    ops.spawn(async move {
                        let request = request_for(&a);
                        let tally = Tally::new(window.counts(intended));
                        logical_read(c, &a, request, (intended, intended), &sh, window, tally)
                            .await;
                    });
                    while ops.try_join_next().is_some() {}
                }
            } else {
                for _ in 0..args.clients {
                    let (c, a, sh, ticket) = (
                        client.clone(),
                        args.clone(),
                        shared.clone(),
                        take_ticket.clone(),
                    );
                    ops.spawn(async move {
                        let mut resume: Option<Refused> = None;
                        loop {
                            let now = Instant::now();
                            // A refused read goes on from its last token: it
                            // is the same logical read, not a new one.
                            let (request, intended, tally) = match resume.take() {
                                Some(r) if !window.over(now) => (r.request, r.intended, r.tally),
                                None if ticket(now) => {
                                    (request_for(&a), now, Tally::new(window.counts(now)))
                                }
                                _ => break,
                            };
                            // A refused client waits as the server suggests
                            // (spread by the server), as a good client does.
                            resume = logical_read(
                                c.clone(),
                                &a,
                                request,
                                (intended, now),
                                &sh,
                                window,
                                tally,
                            )
                            .await;
                            if let Some(wait) = resume.as_ref().and_then(|r| r.wait) {
                                tokio::time::sleep(wait).await;
                            }
                        }
                    });
                }
            }
            while ops.join_next().await.is_some() {}
        }
    };
    tasks.spawn(driver);

    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut interrupted = false;
    let mut last_tick = Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let mut s = shared.lock().expect("stats lock");
                let elapsed = last_tick.elapsed();
                let since_start = last_tick.saturating_duration_since(began);
                last_tick = Instant::now();
                hlog.write_histogram(s.interval.histogram(), since_start, elapsed, None)
                    .map_err(|e| anyhow::anyhow!("cannot write HDR log: {e:?}"))?;
                if !args.quiet {
                    eprintln!(
                        "[{:>5.1}s] {} calls, {:.0} rows/s, p99 {:.1} ms, max {:.1} ms, partial {:.0}%, errors {}",
                        began.elapsed().as_secs_f64(),
                        s.requests,
                        s.interval_rows as f64 / elapsed.as_secs_f64(),
                        s.interval.percentile_ms(99.0),
                        s.interval.percentile_ms(100.0),
                        s.total.partial_rate() * 100.0,
                        s.total.errors_by_code.values().sum::<u64>(),
                    );
                }
                s.interval.reset();
                s.interval_rows = 0;
            }
            done = tasks.join_next() => {
                if let Some(Err(e)) = done {
                    anyhow::bail!("load driver failed: {e}");
                }
                break;
            }
            _ = tokio::signal::ctrl_c() => {
                interrupted = true;
                tasks.abort_all();
                break;
            }
        }
    }
    let elapsed = Instant::now().saturating_duration_since(measure_from.min(Instant::now()));
    let s = shared.lock().expect("stats lock");
    let (rows_per_s, mb_per_s) = rates(s.total.rows, s.total.bytes, elapsed);
    let report = Report {
        label: args.label.clone(),
        config: args.clone(),
        duration_s: elapsed.as_secs_f64(),
        requests: s.requests,
        reads_completed: s.reads,
        responses: s.total.responses.summary(),
        reads: s.total.reads.summary(),
        rows: s.total.rows,
        rows_scanned: s.total.rows_scanned,
        whole_reads_rows: s.total.whole_reads_rows,
        whole_reads_rows_scanned: s.total.whole_reads_rows_scanned,
        continued: s.total.continued,
        rows_per_s,
        mb_per_s,
        partial_rate: s.total.partial_rate(),
        partial_by_reason: s.total.partial_by_reason.clone(),
        errors_by_code: s.total.errors_by_code.clone(),
        errors_by_reason: s.total.errors_by_reason.clone(),
        first_error_by_reason: s.total.first_error_by_reason.clone(),
        client_cpu_s: cpu0.elapsed().as_secs_f64(),
        refusals: s.total.refusals.summary(),
        server_elapsed: s.total.server_elapsed.summary(),
        outside_server: s.total.outside_server.summary(),
        good_rows_per_s: s.total.good_rows as f64 / elapsed.as_secs_f64().max(1e-9),
        interrupted,
    };
    report.save(&args.report)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn a_read_counts_whole_only_when_every_call_was_in_the_window() {
        // Three calls in the window, across a refusal (the tally is carried).
        let mut t = Tally::new(true);
        t.call(true, 1_200, 1_000);
        t.call(true, 0, 0); // refused
        t.call(true, 900, 1_000);
        assert_eq!(t.finish(), Some((2_100, 2_000)));

        // The window ended before its last call was answered.
        let mut t = Tally::new(true);
        t.call(true, 1_000, 1_000);
        t.call(false, 1_500, 1_000);
        assert_eq!(t.finish(), None);

        // Begun in the warm-up.
        let mut t = Tally::new(false);
        t.call(true, 1_000, 1_000);
        assert_eq!(t.finish(), None);
    }
}
