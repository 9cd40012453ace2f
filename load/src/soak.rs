//! `hourglass-load soak`: many clients for minutes against a running
//! server, mixing every kind of call and every way a call can end (token
//! following, SLO and deadline cuts, streams the client drops, writes, bad
//! requests), while the server's `/metrics` is sampled. Passes when the
//! server's resident memory stays flat, its in-flight scan count returns to
//! zero once the clients stop, and no call fails unexpectedly.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use rand::Rng;
use tokio::time::Instant;
use tonic::{Code, Request};

use crate::connect::connect;
use crate::{Target, LOAD_EPOCH_MICROS};
use futures::StreamExt;
use hourglass::api::pb;
use hourglass::client::{follow, FollowOptions};

#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    #[command(flatten)]
    pub target: Target,
    /// The server's Prometheus endpoint.
    #[arg(long, default_value = "http://127.0.0.1:9464/metrics")]
    pub metrics: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// How long the clients run.
    #[arg(long, default_value = "5m", value_parser = crate::parse_duration)]
    pub duration: Duration,
    /// How often the metrics are sampled.
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    pub sample_every: Duration,
    /// Largest RSS growth allowed, as a fraction: the mean of the last third
    /// of the samples against the mean of the first third (after the first
    /// quarter of the run, the warm-up).
    #[arg(long, default_value_t = 0.10)]
    pub max_rss_growth: f64,
    /// No per-sample lines.
    #[arg(long)]
    pub quiet: bool,
}

/// One metrics sample.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Duration,
    pub calls: u64,
    pub rss_bytes: f64,
    pub scans_in_flight: f64,
}

/// What a soak saw, and its verdict.
#[derive(Debug)]
pub struct SoakReport {
    pub samples: Vec<Sample>,
    /// Call outcomes: "ok", or the gRPC code, by kind of call.
    pub outcomes: BTreeMap<String, u64>,
    /// Calls that ended in a way their kind never should.
    pub unexpected: Vec<String>,
    pub in_flight_after: f64,
    pub rss_growth: f64,
    pub max_rss_growth: f64,
}

impl SoakReport {
    pub fn passed(&self) -> bool {
        self.unexpected.is_empty()
            && self.in_flight_after == 0.0
            && self.rss_growth <= self.max_rss_growth
    }

    pub fn summary(&self) -> String {
        let calls: u64 = self.outcomes.values().sum();
        let rss: Vec<f64> = self
            .samples
            .iter()
            .map(|s| s.rss_bytes / 1_048_576.0)
            .collect();
        let (lo, hi) = rss
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        let mut out = format!(
            "{calls} calls in {:?}\noutcomes: {:?}\nRSS {lo:.1}..{hi:.1} MiB over {} samples; growth after warm-up {:+.1}% (limit {:.0}%)\nscans in flight after the clients stopped: {}\nunexpected failures: {}\n",
            self.samples.last().map(|s| s.at).unwrap_or_default(),
            self.outcomes,
            self.samples.len(),
            self.rss_growth * 100.0,
            self.max_rss_growth * 100.0,
            self.in_flight_after,
            self.unexpected.len(),
        );
        for u in self.unexpected.iter().take(10) {
            out.push_str(&format!("  {u}\n"));
        }
        out.push_str(if self.passed() { "PASS\n" } else { "FAIL\n" });
        out
    }
}

#[derive(Default)]
struct Tally {
    outcomes: BTreeMap<String, u64>,
    unexpected: Vec<String>,
    calls: u64,
}

/// Refusals by the bulkhead are load shedding, not failures; so is a budget
/// too small for one row.
const SHED: [Code; 2] = [Code::ResourceExhausted, Code::DeadlineExceeded];

/// What a well-behaved client waits after a refusal: the server's RetryInfo
/// delay for RESOURCE_EXHAUSTED, else nothing.
fn backoff(result: &Result<(), tonic::Status>) -> Option<Duration> {
    use tonic_types::StatusExt;
    match result {
        Err(s) if s.code() == Code::ResourceExhausted => Some(
            s.get_details_retry_info()
                .and_then(|r| r.retry_delay)
                .unwrap_or(Duration::from_millis(50)),
        ),
        _ => None,
    }
}

impl Tally {
    /// Counts a call; returns how long its client should wait before the next.
    fn record(
        &mut self,
        kind: &str,
        result: Result<(), tonic::Status>,
        expected: &[Code],
    ) -> Option<Duration> {
        self.calls += 1;
        let wait = backoff(&result);
        let outcome = match &result {
            Ok(()) => "ok".to_string(),
            Err(s) => format!("{:?}", s.code()),
        };
        *self
            .outcomes
            .entry(format!("{kind}:{outcome}"))
            .or_default() += 1;
        if let Err(s) = result {
            if !expected.contains(&s.code()) && self.unexpected.len() < 1000 {
                self.unexpected
                    .push(format!("{kind}: {:?} {}", s.code(), s.message()));
            }
        }
        wait
    }
}

/// Runs the soak and returns its report (the caller decides on failure).
pub async fn run(args: &SoakArgs) -> anyhow::Result<SoakReport> {
    args.target.validate()?;
    anyhow::ensure!(args.clients >= 1, "--clients must be at least 1");
    anyhow::ensure!(!args.duration.is_zero(), "--duration must be positive");
    let metrics = MetricsUrl::parse(&args.metrics)?;
    metrics.scrape().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot scrape {}: {e} (is --metrics-listen on?)",
            args.metrics
        )
    })?;
    let client = connect(
        &args.target.server,
        &args.target.credentials,
        Duration::from_secs(30),
    )
    .await?;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let began = Instant::now();
    let stop_at = began + args.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..args.clients {
        let (client, tally, target) = (client.clone(), tally.clone(), args.target.clone());
        tasks.spawn(async move {
            while Instant::now() < stop_at {
                one_call(client.clone(), &target, n, &tally).await;
            }
        });
    }
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(args.sample_every);
    loop {
        tick.tick().await;
        let done = Instant::now() >= stop_at;
        let m = metrics.scrape().await?;
        let s = Sample {
            at: began.elapsed(),
            calls: tally.lock().expect("tally").calls,
            rss_bytes: m.rss,
            scans_in_flight: m.in_flight,
        };
        if !args.quiet {
            println!(
                "{:>7.1}s  {:>9} calls  RSS {:>7.1} MiB  scans in flight {:>3}",
                s.at.as_secs_f64(),
                s.calls,
                s.rss_bytes / 1_048_576.0,
                s.scans_in_flight
            );
        }
        samples.push(s);
        if done {
            break;
        }
    }
    while tasks.join_next().await.is_some() {}
    // Every scan must end once its call did: wait briefly for the gauge.
    let mut in_flight_after = f64::NAN;
    for _ in 0..50 {
        in_flight_after = metrics.scrape().await?.in_flight;
        if in_flight_after == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let tally = std::mem::take(&mut *tally.lock().expect("tally"));
    Ok(SoakReport {
        rss_growth: rss_growth(&samples, args.duration),
        samples,
        outcomes: tally.outcomes,
        unexpected: tally.unexpected,
        in_flight_after,
        max_rss_growth: args.max_rss_growth,
    })
}

/// Mean RSS of the last third of the post-warm-up samples over the mean of
/// the first third: a trend, not the noise of single samples (allocator
/// arenas move RSS by a few MiB either way from one sample to the next).
fn rss_growth(samples: &[Sample], duration: Duration) -> f64 {
    let steady: Vec<f64> = samples
        .iter()
        .filter(|s| s.at >= duration / 4)
        .map(|s| s.rss_bytes)
        .collect();
    if steady.len() < 3 {
        return 0.0;
    }
    let third = steady.len() / 3;
    let early = steady[..third].iter().sum::<f64>() / third as f64;
    let late = steady[steady.len() - third..].iter().sum::<f64>() / third as f64;
    late / early - 1.0
}

/// One call of a randomly chosen kind.
async fn one_call(
    mut client: crate::connect::Client,
    target: &Target,
    n: usize,
    tally: &Mutex<Tally>,
) {
    let mut wait = None;
    let mut record = |kind: &str, result: Result<(), tonic::Status>, expected: &[Code]| {
        wait = wait.or(tally.lock().expect("tally").record(kind, result, expected));
    };
    let (kind, series, start, end, slo, descending, deadline_ms) = {
        let mut rng = rand::rng();
        let span = target.span_secs as i64 * 1_000_000;
        let len = rng.random_range(span / 100..=span).max(1);
        let start = LOAD_EPOCH_MICROS + rng.random_range(0..=span - len);
        (
            rng.random_range(0..100u32),
            rng.random_range(0..target.series),
            start,
            start + len,
            [5i64, 20, 100][rng.random_range(0..3)],
            rng.random_bool(0.5),
            rng.random_range(5..60u64),
        )
    };
    let req = pb::ReadEventsRequest {
        namespace: target.namespace.clone(),
        series_id: format!("series-{series}"),
        start_time_micros: start,
        end_time_micros: end,
        order: if descending {
            pb::Order::Descending
        } else {
            pb::Order::Ascending
        } as i32,
        page_size: Some(5000),
        slo_millis: slo,
        ..Default::default()
    };
    match kind {
        // Follow tokens to the end under an SLO.
        0..60 => {
            let options = FollowOptions {
                no_progress_retries: 0,
                ..FollowOptions::default()
            };
            let mut pages = follow(client.clone(), req, options);
            while let Some(page) = pages.next().await {
                record("read", page.map(drop), &SHED);
            }
        }
        // Stream; a third are dropped by the client after the first message.
        60..75 => {
            let drop_early = kind < 65;
            let result = async {
                let mut s = client.stream_events(req).await?.into_inner();
                while s.message().await?.is_some() {
                    if drop_early {
                        break;
                    }
                }
                Ok(())
            }
            .await;
            record("stream", result, &SHED);
        }
        // A gRPC deadline and no SLO; the client may give up first.
        75..85 => {
            let mut call = Request::new(pb::ReadEventsRequest {
                slo_millis: 0,
                ..req
            });
            call.set_timeout(Duration::from_millis(deadline_ms));
            let result = client.read_events(call).await.map(|_| ());
            record(
                "deadline-read",
                result,
                &[
                    Code::ResourceExhausted,
                    Code::DeadlineExceeded,
                    Code::Cancelled,
                ],
            );
        }
        // Small writes to a series of this client's own.
        85..95 => {
            let base = LOAD_EPOCH_MICROS + i64::from(kind) * 1_000_000;
            let events = (0..100)
                .map(|i| pb::Event {
                    series_id: format!("soak-writes-{n}"),
                    event_time_micros: base + i,
                    event_id: format!("{i}"),
                    payload: bytes::Bytes::from_static(b"soak"),
                    tags: Default::default(),
                })
                .collect();
            let result = client
                .write_events(pb::WriteEventsRequest {
                    namespace: target.namespace.clone(),
                    events,
                })
                .await
                .map(|_| ());
            record("write", result, &[]);
        }
        // Bad requests must be refused as such, every time.
        _ => {
            let result = client
                .read_events(pb::ReadEventsRequest {
                    page_size: Some(0),
                    ..req
                })
                .await;
            let outcome = match result {
                Ok(_) => Err(tonic::Status::internal("a bad request was accepted")),
                Err(s) if s.code() == Code::InvalidArgument => Ok(()),
                Err(s) => Err(s),
            };
            record("bad-request", outcome, &[]);
        }
    }
    if let Some(w) = wait {
        tokio::time::sleep(w).await;
    }
}

/// Where `/metrics` is served.
struct MetricsUrl {
    host_port: String,
    path: String,
}

/// The figures of one scrape.
struct Scraped {
    rss: f64,
    in_flight: f64,
}

impl MetricsUrl {
    fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow::anyhow!("--metrics must be an http:// URL, got {url:?}"))?;
        let (host_port, path) = match rest.split_once('/') {
            Some((h, p)) => (h.to_string(), format!("/{p}")),
            None => (rest.to_string(), "/metrics".to_string()),
        };
        Ok(Self { host_port, path })
    }

    async fn scrape(&self) -> anyhow::Result<Scraped> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&self.host_port).await?;
        s.write_all(
            format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.path, self.host_port
            )
            .as_bytes(),
        )
        .await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        let value = |name: &str| {
            body.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        };
        Ok(Scraped {
            rss: value(hourglass::telemetry::PROCESS_RSS).ok_or_else(|| {
                anyhow::anyhow!(
                    "{} missing from the scrape",
                    hourglass::telemetry::PROCESS_RSS
                )
            })?,
            in_flight: value(hourglass::telemetry::SCANS_IN_FLIGHT).unwrap_or(0.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(rss: impl Fn(u64) -> f64) -> Vec<Sample> {
        (0..40)
            .map(|i| Sample {
                at: Duration::from_secs(i * 10),
                calls: i,
                rss_bytes: rss(i),
                scans_in_flight: 0.0,
            })
            .collect()
    }

    #[test]
    fn noise_is_flat_and_a_leak_is_growth() {
        let d = Duration::from_secs(400);
        let noisy = samples(|i| 26e6 + if i % 3 == 0 { 3e6 } else { 0.0 });
        assert!(
            rss_growth(&noisy, d).abs() < 0.02,
            "{}",
            rss_growth(&noisy, d)
        );
        let leak = samples(|i| 26e6 + i as f64 * 1e6);
        assert!(rss_growth(&leak, d) > 0.3, "{}", rss_growth(&leak, d));
    }
}
