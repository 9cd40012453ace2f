//! The macro benchmark: on the local Cassandra, in one run, measures the
//! service against a direct driver scan of the same partitions and writes
//! `docs/benchmarks.md`. Figures: scan efficiency, deadline adherence (with
//! partial return on, and off as the baseline), read amplification,
//! completion tax, CPU per million rows (service and Cassandra JVM), and
//! behaviour under overload with adaptive admission on and off.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use scylla::statement::Consistency;

use crate::{seed, Pattern, RunArgs, SeedArgs, Target};
use hourglass::storage::cassandra::{CassandraConfig, CassandraStore, DEFAULT_REPLICATION};

const KEYSPACE: &str = "hourglass_bench";
/// The project's local node (`scripts/cassandra start`).
const LOCAL_NODE: &str = "127.0.0.1:19042";
const SHARDS: u32 = 4;
const BUCKET_SECS: u64 = 60;
/// Seeded density: rows per second of event time.
const ROWS_PER_SEC: u64 = 1000;
/// Page size of whole-series scans through the service.
const SCAN_PAGE_SIZE: u32 = 100_000;
const BENCH_KEYS: &str = "bench:benchmark-signing-key-0001";

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Cassandra contact point (the project's local node by default; only
    /// on that node does the bench first drop what test runs left there).
    #[arg(long, default_value = LOCAL_NODE)]
    pub cassandra: String,
    /// Where to write the results.
    #[arg(long, default_value = "docs/benchmarks.md")]
    pub out: PathBuf,
    /// Series sizes, rows.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,10000,100000,1000000"
    )]
    pub sizes: Vec<u64>,
    /// Concurrent clients.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub clients: Vec<usize>,
    /// SLOs, milliseconds.
    #[arg(long, value_delimiter = ',', default_value = "10,50,200")]
    pub slos: Vec<u32>,
    /// Measured seconds per deadline-adherence cell.
    #[arg(long, default_value_t = 3.0)]
    pub seconds_per_cell: f64,
    /// A/B alternations of the scan comparison, the token chains and the
    /// overload cells.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// SLOs, milliseconds, of the token chains through the largest series
    /// (hot continuations on and off).
    #[arg(long, value_delimiter = ',', default_value = "5,10,20,50")]
    pub follow_slos: Vec<u32>,
    /// Closed-loop clients of the overload section (adaptive admission on
    /// and off).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    pub overload_clients: Vec<usize>,
    /// SLOs, milliseconds, of the overload section.
    #[arg(long, value_delimiter = ',', default_value = "10,50,200")]
    pub overload_slos: Vec<u32>,
    /// Open-loop rate of the overload section, logical reads per second
    /// (0: none); meant to be above what the replica can serve.
    #[arg(long, default_value_t = 2000.0)]
    pub overload_rate: f64,
    /// CQL contact points of the three-node cluster for the replica-fault
    /// section (`scripts/cassandra cluster`, which the bench stops while it
    /// measures the single node and starts for that section only); empty:
    /// no such section.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:19242,127.0.0.2:19242,127.0.0.3:19242"
    )]
    pub cluster: Vec<String>,
    /// Rows of the series the replica-fault section follows.
    #[arg(long, default_value_t = 100_000)]
    pub fault_rows: u64,
    /// Seconds of unmeasured reads after seeding (whole reads and token
    /// chains, cache on and off), and longer while the node is younger than
    /// [`NODE_WARM_SECS`]: a node serves its first minutes 2-4 times slower
    /// than later (one client following tokens under 10 ms read 114,000
    /// rows/s one minute after a restart, 563,000 three minutes after), so
    /// a run on a node just started measured its start. 0: none.
    #[arg(long, default_value_t = 60.0)]
    pub warmup_secs: f64,
}

/// The warm-up goes on until the node has been up this long.
pub const NODE_WARM_SECS: f64 = 180.0;

/// A server subprocess, killed on drop.
struct ServerProcess {
    child: Child,
    url: String,
}

impl ServerProcess {
    /// A server on the local node (consistency ONE), metrics off.
    fn start(
        cassandra: &str,
        port: u16,
        partial_reads: bool,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let mut args = vec!["--keyspace", KEYSPACE, "--consistency", "one"];
        args.extend([
            "--partial-reads",
            if partial_reads { "true" } else { "false" },
        ]);
        // Servers run side by side: none takes the metrics port.
        args.extend(["--metrics-listen", "off"]);
        args.extend(extra);
        Self::spawn(cassandra, port, &args)
    }

    fn spawn(cassandra: &str, port: u16, args: &[&str]) -> anyhow::Result<Self> {
        // The servers run at niceness 0 whatever the load generator's
        // (`scripts/bench` raises its priority: see `niceness`).
        let child = Command::new("nice")
            .args(["-n", &(-niceness(std::process::id())).to_string()])
            .arg(server_binary()?)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--cassandra",
                cassandra,
            ])
            .args(args)
            .env("HOURGLASS_TOKEN_KEYS", BENCH_KEYS)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?;
        Ok(Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }

    fn cpu_secs(&self) -> f64 {
        proc_cpu_secs(self.child.id())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU seconds of a process, from /proc (Linux).
fn proc_cpu_secs(pid: u32) -> f64 {
    let Some(stat) = ProcStat::read(pid) else {
        return f64::NAN;
    };
    let ticks = |n: usize| {
        stat.field(n)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // utime and stime, in USER_HZ (100 on Linux).
    (ticks(14) + ticks(15)) / 100.0
}

/// The fields of `/proc/<pid>/stat`.
struct ProcStat(Vec<String>);

impl ProcStat {
    /// None when the process is gone.
    fn read(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) is parenthesised and may hold spaces:
        // field 3 on follow its closing parenthesis.
        let (_, rest) = stat.rsplit_once(')')?;
        Some(Self(rest.split_whitespace().map(str::to_owned).collect()))
    }

    /// Field `n` as proc(5) numbers them (from 3, the state).
    fn field(&self, n: usize) -> Option<&str> {
        self.0.get(n.checked_sub(3)?).map(String::as_str)
    }
}

/// Seconds process `pid` has run: its start (field 22, in clock ticks of
/// 100 a second after boot) against `/proc/uptime`; None when unknown.
fn process_age_secs(pid: u32) -> Option<f64> {
    let started = ProcStat::read(pid)?.field(22)?.parse::<f64>().ok()? / 100.0;
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let uptime = uptime.split_whitespace().next()?.parse::<f64>().ok()?;
    Some(uptime - started)
}

/// The node's age; infinite when unknown (no pid file: taken as warm).
fn node_age_secs() -> f64 {
    cassandra_pid()
        .and_then(process_age_secs)
        .unwrap_or(f64::INFINITY)
}

/// Reads `rows` of the biggest series through `hot` (whole, and a token
/// chain under 10 ms) and `cold` (a chain without hot continuations), not
/// measured, for at least `secs` and until the node is [`NODE_WARM_SECS`]
/// old; returns the seconds spent.
async fn warm_up(hot: &str, cold: &str, rows: u64, secs: f64) -> anyhow::Result<f64> {
    let began = Instant::now();
    let mut round = 0;
    while began.elapsed().as_secs_f64() < secs || node_age_secs() < NODE_WARM_SECS {
        let whole = RunArgs {
            page_size: SCAN_PAGE_SIZE,
            ..run_args(hot, rows, format!("warmup-whole-{round}"))
        };
        let t = whole_read_secs(&whole, rows).await?;
        for url in [hot, cold] {
            crate::run(&RunArgs {
                slo_ms: Some(10),
                page_size: SCAN_PAGE_SIZE,
                ..run_args(url, rows, format!("warmup-chain-{round}"))
            })
            .await?;
        }
        eprintln!(
            "   round {round}: whole read {t:.2} s, node up {:.0} s",
            node_age_secs()
        );
        round += 1;
    }
    Ok(began.elapsed().as_secs_f64())
}

/// The niceness of process `pid` (0 when unknown). `scripts/bench` runs the
/// load generator above the servers (README, Benchmarks).
fn niceness(pid: u32) -> i32 {
    ProcStat::read(pid)
        .and_then(|s| s.field(19).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// The `hourglass` server binary built beside this one (`cargo build
/// --workspace` puts both in the same target directory).
fn server_binary() -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let server = exe.with_file_name("hourglass");
    anyhow::ensure!(
        server.exists(),
        "no hourglass server binary beside {}: build the workspace (cargo build --release --workspace)",
        exe.display()
    );
    Ok(server)
}

/// The local node's pid, recorded by `scripts/cassandra` (run from the
/// repository root, as `scripts/bench` does).
fn cassandra_pid() -> Option<u32> {
    std::fs::read_to_string(".cassandra/cassandra.pid")
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn namespace_of(size: u64) -> String {
    format!("bench-{size}")
}

fn span_secs(size: u64) -> u64 {
    size.div_ceil(ROWS_PER_SEC).max(1)
}

/// Reads every row of one seeded series straight from Cassandra, one
/// partition after another (`streams` = 1) or `streams` partitions at a time.
async fn direct_scan(
    store: &CassandraStore,
    size: u64,
    streams: usize,
) -> anyhow::Result<(u64, Duration)> {
    let session = store.session();
    let mut stmt = session
        .prepare(format!(
            "SELECT event_time, event_id, payload, tags FROM {KEYSPACE}.events \
             WHERE namespace = ? AND series_id = ? AND bucket = ? AND shard = ?"
        ))
        .await?;
    stmt.set_page_size(5000);
    stmt.set_consistency(Consistency::One);
    let ns = namespace_of(size);
    let width = BUCKET_SECS as i64 * 1_000_000;
    let first = crate::LOAD_EPOCH_MICROS.div_euclid(width);
    let last =
        (crate::LOAD_EPOCH_MICROS + span_secs(size) as i64 * 1_000_000 - 1).div_euclid(width);
    let partitions: Vec<(i64, i32)> = (first..=last)
        .flat_map(|b| (0..SHARDS as i32).map(move |s| (b, s)))
        .collect();
    let began = Instant::now();
    let counts = futures::stream::iter(partitions.into_iter().map(|(bucket, shard)| {
        let (stmt, ns) = (stmt.clone(), ns.clone());
        async move {
            type R = (
                i64,
                String,
                Option<Vec<u8>>,
                Option<std::collections::HashMap<String, String>>,
            );
            let mut rows = session
                .execute_iter(stmt, (ns.as_str(), "series-0", bucket, shard))
                .await?
                .rows_stream::<R>()?;
            let mut n = 0u64;
            while let Some(r) = rows.next().await {
                r?;
                n += 1;
            }
            anyhow::Ok(n)
        }
    }))
    .buffered(streams)
    .collect::<Vec<_>>()
    .await;
    let mut total = 0;
    for c in counts {
        total += c?;
    }
    Ok((total, began.elapsed()))
}

fn target(url: &str, size: u64) -> Target {
    Target {
        server: url.to_string(),
        namespace: namespace_of(size),
        series: 1,
        span_secs: span_secs(size),
        credentials: crate::connect::Credentials::default(),
    }
}

fn run_args(url: &str, size: u64, label: String) -> RunArgs {
    RunArgs {
        target: target(url, size),
        rate: None,
        clients: 1,
        duration_secs: None,
        requests: Some(1),
        warmup_secs: 0.0,
        pattern: Pattern::Follow,
        range_fraction: 1.0,
        slo_ms: None,
        deadline_ms: None,
        page_size: 10_000,
        descending: false,
        class: None,
        report: PathBuf::from(format!("reports/bench/{label}.json")),
        label,
        quiet: true,
    }
}

/// One cell of the token-chain table: repeated chains of one SLO on one
/// server.
#[derive(Default)]
struct ChainCell {
    secs: Vec<f64>,
    /// Per complete chain: the server's time (the sum of its calls'
    /// `ReadStats.elapsed_micros`) and the time outside it (the sum of its
    /// calls' client-observed latency less that), seconds.
    in_server: Vec<f64>,
    outside: Vec<f64>,
    calls: u64,
    rows: u64,
    scanned: u64,
    continued: u64,
    deadline_exceeded: u64,
    /// Of those, calls that found storage late (`STORAGE_LATE`).
    storage_late: u64,
    runs: u64,
}

impl ChainCell {
    fn add(&mut self, r: &crate::report::Report, expected_rows: u64) {
        self.runs += 1;
        self.secs.push(r.reads.max_ms / 1000.0);
        let total = |t: &crate::stats::Summary| t.mean_ms * t.count as f64 / 1000.0;
        self.in_server.push(total(&r.server_elapsed));
        self.outside.push(total(&r.outside_server));
        self.calls += r.requests;
        self.rows += r.rows;
        self.scanned += r.rows_scanned;
        self.continued += r.continued;
        self.deadline_exceeded += r
            .errors_by_code
            .get("DeadlineExceeded")
            .copied()
            .unwrap_or(0);
        self.storage_late += r
            .errors_by_reason
            .get(hourglass::error::REASON_STORAGE_LATE)
            .copied()
            .unwrap_or(0);
        if r.rows != expected_rows {
            // A chain cut by an error: counted, and its time is not a chain's.
            self.secs.pop();
            self.in_server.pop();
            self.outside.pop();
        }
    }

    /// The cell's table row; `unbounded_s` is the unbounded read with the
    /// cache on, `own_s` that of the server the chain went to.
    fn row(&self, slo: u32, hot: &str, unbounded_s: f64, own_s: f64) -> String {
        let med = |v: &Vec<f64>| {
            if v.is_empty() {
                f64::NAN
            } else {
                median(v.clone())
            }
        };
        let secs = med(&self.secs);
        format!(
            "| {slo} | {hot} | {unbounded_s:.2} | {secs:.2} | {:.2} | {:.2} | {:.2} | {own_s:.2} | {:.2} | {:.3} | {} | {} ({} late) | {:.1}% |",
            med(&self.in_server),
            med(&self.outside),
            secs / unbounded_s,
            secs / own_s,
            crate::report::amplification(self.scanned, self.rows),
            self.calls,
            self.deadline_exceeded,
            self.storage_late,
            // Each chain's first call has nothing to continue.
            self.continued as f64 / self.calls.saturating_sub(self.runs).max(1) as f64 * 100.0,
        )
    }
}

/// The median: the middle value, or the mean of the two middle values of
/// an even count (of two repeats, their mean, not the larger).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 0 {
        f64::midpoint(v[mid - 1], v[mid])
    } else {
        v[mid]
    }
}

/// The two sides of an A/B comparison in the order repeat `rep` runs them:
/// A first on even repeats, B first on odd ones, so neither always meets
/// what the cell before it left behind.
fn in_turn<T>(rep: usize, mut sides: [T; 2]) -> [T; 2] {
    if rep % 2 == 1 {
        sides.reverse();
    }
    sides
}

/// Runs one whole-series read and returns its seconds, after checking that
/// it delivered all `rows` rows.
async fn whole_read_secs(args: &RunArgs, rows: u64) -> anyhow::Result<f64> {
    let r = crate::run(args).await?;
    anyhow::ensure!(
        r.rows == rows,
        "{} returned {} rows of {rows}",
        args.label,
        r.rows
    );
    Ok(r.reads.max_ms / 1000.0)
}

/// The machine, the node's CPU priority and the niceness `server` and this
/// load generator ran at, as read from `/proc`.
fn machine(server: &ServerProcess) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0);
    format!(
        "{cores} cores ({cpu}), {:.0} GiB RAM, Linux; Cassandra 5.0 single node on loopback, same machine, {}; servers at niceness {}, the load generator (clients) at niceness {} (`HOURGLASS_BENCH_NICE`)",
        mem as f64 / 1_048_576.0,
        cassandra_pid()
            .and_then(storage_priority)
            .unwrap_or_else(|| "CPU priority unknown".to_string()),
        niceness(server.child.id()),
        niceness(std::process::id())
    )
}

/// The CPU scheduling of process `pid` as the benchmark's header states
/// it: its policy and niceness, from `/proc/<pid>/stat` (fields 41 and 19);
/// None when the process is gone.
fn storage_priority(pid: u32) -> Option<String> {
    let stat = ProcStat::read(pid)?;
    let policy = match stat.field(41)? {
        "0" => "SCHED_OTHER",
        "3" => "SCHED_BATCH",
        "5" => "SCHED_IDLE",
        _ => "a real-time policy",
    };
    Some(format!(
        "{policy} at niceness {} (`scripts/cassandra`)",
        stat.field(19).unwrap_or("?")
    ))
}

/// Pause between load cells. Token followers still running when a cell
/// ends leave their scans held on the server they read, each fetching
/// ahead up to its bound (4 MiB) while its client is away: with 16-64
/// followers that is up to a few hundred thousand rows storage reads after
/// the cell, which without a pause loaded the next cell (against either
/// server) and stalled its calls by up to 0.8 s.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Time for the scans the cells before the overload section left held to
/// finish fetching ahead.
const HELD_SCANS_FINISH: Duration = Duration::from_secs(5);

/// The overload table's rows: each load shape and SLO against server `on`
/// (adaptive admission) and `off` (static bulkhead), side by side.
async fn overload_section(
    args: &BenchArgs,
    size: u64,
    on: &ServerProcess,
    off: &ServerProcess,
) -> anyhow::Result<String> {
    let mut loads: Vec<(String, usize, Option<f64>)> = args
        .overload_clients
        .iter()
        .map(|&c| (format!("closed {c}"), c, None))
        .collect();
    if args.overload_rate > 0.0 {
        loads.push((
            format!("open {:.0}/s", args.overload_rate),
            1,
            Some(args.overload_rate),
        ));
    }
    // The section's first cell met what the one before left on the
    // adaptive server alone (the deadline cells' last 16 token followers
    // fetching ahead, up to 64 MiB), while the static one, not used by
    // them, met cold latency models: in eight runs, the adaptive side's
    // goodput with 1 client under 10 ms was below the static side's seven
    // times, by up to 22%, with nothing to admit or refuse. So the held
    // scans get time to finish and both servers a first cell unmeasured.
    // The adaptive side stayed 13% and 16% below with one client under
    // 10 ms in the next two runs. Whatever the sections before left on the
    // server they used (what it learnt of response costs, lateness and
    // latency, the memory its held scans took), the two sides now start
    // alike: neither served a read before this section (see `run`).
    tokio::time::sleep(HELD_SCANS_FINISH).await;
    for (server, tag) in [(on, "on"), (off, "off")] {
        crate::run(&RunArgs {
            duration_secs: Some(1.0),
            requests: None,
            slo_ms: args.overload_slos.first().copied(),
            ..run_args(&server.url, size, format!("overload-warmup-{tag}"))
        })
        .await?;
    }
    let mut table = String::new();
    for (name, clients, rate) in &loads {
        for &slo in &args.overload_slos {
            // Side by side: each repeat runs the cell on both servers,
            // taking turns to go first (the first cell after a heavier one
            // meets what that one left behind); medians over the repeats.
            let mut cells: [Vec<crate::report::Report>; 2] = [vec![], vec![]];
            for rep in 0..args.repeats {
                for (server, tag, i) in in_turn(rep, [(on, "on", 0), (off, "off", 1)]) {
                    settle().await;
                    let r = crate::run(&RunArgs {
                        clients: *clients,
                        rate: *rate,
                        requests: None,
                        duration_secs: Some(args.seconds_per_cell),
                        warmup_secs: 0.5,
                        slo_ms: Some(slo),
                        ..run_args(
                            &server.url,
                            size,
                            format!(
                                "overload-{}-{slo}-{tag}-{rep}",
                                name.replace([' ', '/'], "")
                            ),
                        )
                    })
                    .await?;
                    cells[i].push(r);
                }
            }
            let slo_f = f64::from(slo);
            let refused = |r: &crate::report::Report| {
                r.errors_by_code
                    .get("ResourceExhausted")
                    .copied()
                    .unwrap_or(0) as f64
                    / r.requests.max(1) as f64
                    * 100.0
            };
            let m = |i: usize, f: &dyn Fn(&crate::report::Report) -> f64| {
                median(cells[i].iter().map(f).collect())
            };
            let line = format!(
                "| {name} | {slo} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1}% | {:.1} | {:.0} | {:.2} | {:.2} | {:.1}% | {:.0} |",
                m(0, &|r| r.responses.p99_ms / slo_f),
                m(0, &|r| r.responses.p999_ms / slo_f),
                m(0, &|r| r.server_elapsed.p99_ms / slo_f),
                m(0, &|r| r.outside_server.p99_ms),
                m(0, &refused),
                m(0, &|r| r.refusals.p99_ms),
                m(0, &|r| r.good_rows_per_s),
                m(1, &|r| r.responses.p99_ms / slo_f),
                m(1, &|r| r.responses.p999_ms / slo_f),
                m(1, &refused),
                m(1, &|r| r.good_rows_per_s),
            );
            eprintln!("   {line}");
            table.push_str(&line);
            table.push('\n');
        }
    }
    Ok(table)
}

/// Drops the keyspaces earlier test runs left on the local node
/// (`hg_<test>_<pid>`, one per test process, which the tests do not drop)
/// and restarts it (`scripts/cassandra`), so that what the bench measures
/// is a fresh node serving its own keyspace, not one carrying others, nor
/// one in whatever state earlier work left it. A node's own cost varies
/// more with that state than with anything the servers change: the same
/// binaries measured on a node up an hour under ad-hoc load (not
/// restarted) read 1,000,000 rows unbounded in 2.07-2.22 s at 3.26 s of
/// node CPU per million rows, and on the same node restarted just before
/// in 1.46-1.49 s at 1.62 s. Every table costs the node heap whether or not
/// it is read: with 245 such keyspaces (790 tables), one unbounded read of
/// the 1,000,000-row series took 3.0-3.6 s, its heap held 412 MB after each
/// young collection, and the node spent 4.4-5.3 s of CPU per million rows;
/// after dropping them and restarting, 2.2 s, 74 MB and 2.9 s (each node
/// state restarted and read for five to six minutes before).
async fn fresh_node() -> anyhow::Result<()> {
    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_node(LOCAL_NODE)
        .connection_timeout(Duration::from_secs(30))
        .build()
        .await?;
    let names: Vec<String> = session
        .query_unpaged("SELECT keyspace_name FROM system_schema.keyspaces", ())
        .await?
        .into_rows_result()?
        .rows::<(String,)>()?
        .map(|row| row.map(|(name,)| name))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|name| name.starts_with("hg_"))
        .collect();
    eprintln!(
        "== dropping {} keyspaces left by test runs, then restarting the node",
        names.len()
    );
    for (i, name) in names.iter().enumerate() {
        session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS \"{name}\""), ())
            .await?;
        if (i + 1) % 25 == 0 || i + 1 == names.len() {
            eprintln!("   {} of {} dropped", i + 1, names.len());
        }
    }
    drop(session);
    for action in ["stop", "start"] {
        let status = Command::new("scripts/cassandra").arg(action).status()?;
        anyhow::ensure!(status.success(), "scripts/cassandra {action}: {status}");
    }
    Ok(())
}

/// `scripts/cassandra cluster <action> <node>`.
fn cluster_node(action: &str, node: &str) -> anyhow::Result<()> {
    cluster(&[action, node])
}

/// `scripts/cassandra cluster <args>`.
fn cluster(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("scripts/cassandra")
        .arg("cluster")
        .args(args)
        .status()?;
    anyhow::ensure!(
        status.success(),
        "scripts/cassandra cluster {}: {status}",
        args.join(" ")
    );
    Ok(())
}

/// Thaws a frozen node however the section ends.
struct Thaw(&'static str);

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = cluster_node("thaw", self.0);
    }
}

/// The sum of a counter's samples whose line starts with `series` in a
/// Prometheus text page.
fn counter(page: &str, series: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn scrape(port: u16) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// Chains per server of the replica-fault section: at least 3.
fn fault_chains(args: &BenchArgs) -> usize {
    args.repeats.max(3)
}

/// Token chains under a 50 ms SLO through a series on the three-node
/// cluster (RF 3, LOCAL_QUORUM) while node 2 is frozen (SIGSTOP), against
/// two servers alike but for `--hedging`. Returns the section's markdown.
async fn replica_fault_section(args: &BenchArgs) -> anyhow::Result<String> {
    const SLO: u32 = 50;
    const KS: &str = "hourglass_bench_rf3";
    // The cluster runs only for this section: three more JVMs on the
    // machine would take CPU from the single node the others measure.
    cluster(&["start"])?;
    let contacts = args.cluster.join(",");
    let server = |port: u16, metrics: u16, hedging: &'static str| {
        let metrics = format!("127.0.0.1:{metrics}");
        ServerProcess::spawn(
            &contacts,
            port,
            &[
                "--keyspace",
                KS,
                "--consistency",
                "local_quorum",
                "--replication",
                "{'class': 'SimpleStrategy', 'replication_factor': 3}",
                "--hedging",
                hedging,
                "--metrics-listen",
                &metrics,
            ],
        )
    };
    let on = server(50171, 50181, "true")?;
    let off = server(50172, 50182, "false")?;
    let size = args.fault_rows;
    let fault_target = |url: &str| Target {
        namespace: format!("fault-{size}"),
        ..target(url, size)
    };
    // Always written (idempotent upserts, a few seconds): a checkpoint
    // knows the server's address, not which store is behind it.
    seed(&SeedArgs {
        target: fault_target(&on.url),
        rows_per_series: size,
        payload_bytes: 64,
        payload_max_bytes: None,
        bucket_secs: BUCKET_SECS,
        shards: SHARDS,
        batch: 2000,
        concurrency: 8,
        restart: true,
        quiet: true,
    })
    .await?;
    let chain = |url: &str, slo: Option<u32>, label: String| RunArgs {
        slo_ms: slo,
        target: fault_target(url),
        ..run_args(url, size, label)
    };
    // Healthy cluster: an unbounded read and three chains per server warm
    // connections, latency models and the nodes (JIT, caches: the cluster
    // was started for this section); then one unbounded read per server,
    // the tax's base.
    let mut unbounded = vec![];
    for (name, s) in [("on", &on), ("off", &off)] {
        crate::run(&RunArgs {
            page_size: SCAN_PAGE_SIZE,
            ..chain(&s.url, None, format!("fault-warm-unbounded-{name}"))
        })
        .await?;
        for _ in 0..3 {
            crate::run(&chain(&s.url, Some(SLO), format!("fault-warm-{name}"))).await?;
        }
        let whole = RunArgs {
            page_size: SCAN_PAGE_SIZE,
            ..chain(&s.url, None, format!("fault-unbounded-{name}"))
        };
        unbounded.push(whole_read_secs(&whole, size).await?);
    }
    let unbounded_s = median(unbounded);

    let _thaw = Thaw("2");
    cluster_node("freeze", "2")?;
    let mut rows = String::new();
    let mut cells: Vec<(&str, Vec<crate::report::Report>, f64, f64)> =
        vec![("on", vec![], 0.0, 0.0), ("off", vec![], 0.0, 0.0)];
    for rep in 0..fault_chains(args) {
        for (cell, (s, port)) in cells.iter_mut().zip([(&on, 50181), (&off, 50182)]) {
            let before = scrape(port).await?;
            let r =
                crate::run(&chain(&s.url, Some(SLO), format!("fault-{}-{rep}", cell.0))).await?;
            let after = scrape(port).await?;
            cell.2 += counter(&after, "hourglass_storage_reads_total")
                - counter(&before, "hourglass_storage_reads_total");
            cell.3 += counter(&after, "hourglass_storage_hedges_total{result=\"sent\"")
                - counter(&before, "hourglass_storage_hedges_total{result=\"sent\"");
            eprintln!(
                "   hedging {}: {} rows in {:.2} s, {} calls, p99 {:.1} ms",
                cell.0,
                r.rows,
                r.reads.max_ms / 1000.0,
                r.requests,
                r.responses.p99_ms
            );
            for (reason, message) in &r.first_error_by_reason {
                eprintln!("   hedging {}, chain {rep}: {reason}: {message}", cell.0);
            }
            cell.1.push(r);
        }
    }
    cluster_node("thaw", "2")?;
    for (name, reports, reads, hedges) in &cells {
        let calls: u64 = reports.iter().map(|r| r.requests).sum();
        let budget_partials: u64 = reports
            .iter()
            .flat_map(|r| &r.partial_by_reason)
            .filter(|(k, _)| !matches!(k.as_str(), "ROW_LIMIT" | "BYTE_LIMIT"))
            .map(|(_, v)| v)
            .sum();
        let errors: u64 = reports
            .iter()
            .map(|r| r.errors_by_code.values().sum::<u64>())
            .sum();
        let complete: Vec<f64> = reports
            .iter()
            .filter(|r| r.rows == size)
            .map(|r| r.reads.max_ms / 1000.0)
            .collect();
        let tax = if complete.is_empty() {
            f64::NAN
        } else {
            median(complete.clone()) / unbounded_s
        };
        let p99 = median(reports.iter().map(|r| r.responses.p99_ms).collect());
        writeln!(
            rows,
            "| {name} | {}/{} | {calls} | {:.2} | {:.1}% | {errors} | {tax:.2} | {:.1}% |",
            complete.len(),
            reports.len(),
            p99 / f64::from(SLO),
            budget_partials as f64 / calls.max(1) as f64 * 100.0,
            hedges / reads.max(1.0) * 100.0,
        )?;
    }
    let mut md = String::new();
    writeln!(md, "\n## Replica fault\n")?;
    writeln!(md, "Three Cassandra nodes on 127.0.0.1-3 (`scripts/cassandra cluster start`), keyspace at replication factor 3, reads and writes at LOCAL_QUORUM, token-aware driver. One client follows tokens through a {size}-row series (page size 10000) under a {SLO} ms SLO while node 2 is frozen (SIGSTOP), {} chains per server (a chain ends at its first failed call), against two servers alike but for `--hedging` (on: default, at most 10% extra requests plus 2 a second; off). p99/SLO: client-observed per call, median over chains; partial (budget): calls that ended partial because the budget ran out; errors: calls that failed (DEADLINE_EXCEEDED when no row came in time); completion tax: median complete chain ÷ one unbounded read of the series on the healthy, warmed cluster ({unbounded_s:.2} s, median of one per server); extra storage requests: hedges sent ÷ storage read requests (server metrics).\n", fault_chains(args))?;
    writeln!(md, "| hedging | chains complete | calls | p99/SLO | partial (budget) | errors | completion tax | extra storage requests |\n|---|---|---|---|---|---|---|---|")?;
    md.push_str(&rows);
    Ok(md)
}

/// Runs the benchmark and writes the markdown report.
// Servers a (partial reads) and b (baseline), named as in the report.
#[allow(clippy::many_single_char_names)]
pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.sizes.is_empty() && !args.clients.is_empty() && !args.slos.is_empty(),
        "empty --sizes, --clients or --slos"
    );
    anyhow::ensure!(args.repeats >= 1, "--repeats must be at least 1");
    // `--cluster ""` parses as one empty contact point: no cluster either.
    let with_cluster = !args.cluster.iter().all(|c| c.trim().is_empty());
    if with_cluster {
        // Stopped while the single node is measured; the replica-fault
        // section starts it.
        cluster(&["stop"])?;
    }
    if args.cassandra == LOCAL_NODE {
        fresh_node().await?;
    }
    let a = ServerProcess::start(&args.cassandra, 50161, true, &[])?;
    let b = ServerProcess::start(&args.cassandra, 50162, false, &[])?;
    // Server a without hot continuations: every token resumes cold.
    let c = ServerProcess::start(&args.cassandra, 50163, true, &["--continuation-bytes", "0"])?;
    // Server a with the static bulkhead only, and one like server a: the
    // overload section's two servers, which nothing before it uses.
    let d = ServerProcess::start(
        &args.cassandra,
        50164,
        true,
        &["--adaptive-admission", "false"],
    )?;
    let e = ServerProcess::start(&args.cassandra, 50165, true, &[])?;
    // A second replica like server a: token chains whose calls the two
    // take in turn, as behind a balancer that alternates.
    let f = ServerProcess::start(&args.cassandra, 50166, true, &[])?;
    let pair = format!("{},{}", a.url, f.url);
    let store = CassandraStore::connect(&CassandraConfig {
        contact_points: vec![args.cassandra.clone()],
        keyspace: KEYSPACE.into(),
        replication: DEFAULT_REPLICATION.into(),
        consistency: Consistency::One,
        connect_timeout: Duration::from_secs(30),
        ..CassandraConfig::default()
    })
    .await?;
    let biggest = *args.sizes.iter().max().expect("non-empty");
    eprintln!("== seeding series of {:?} rows", args.sizes);
    for &size in &args.sizes {
        seed(&SeedArgs {
            target: target(&a.url, size),
            rows_per_series: size,
            payload_bytes: 64,
            payload_max_bytes: None,
            bucket_secs: BUCKET_SECS,
            shards: SHARDS,
            batch: 2000,
            concurrency: 8,
            restart: false,
            quiet: true,
        })
        .await?;
    }

    let warmed = if args.warmup_secs > 0.0 {
        eprintln!(
            "== warming up: reads for {} s, and until the node is {NODE_WARM_SECS} s old",
            args.warmup_secs
        );
        warm_up(&a.url, &c.url, biggest, args.warmup_secs).await?
    } else {
        0.0
    };
    let node_age = node_age_secs();

    eprintln!("== scan efficiency on {biggest} rows, alternating service / direct");
    let (mut svc, mut direct1, mut direct4, mut svc_cpu, mut jvm_cpu) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut slo_chain = vec![];
    for rep in 0..args.repeats {
        let jvm0 = cassandra_pid().map_or(f64::NAN, proc_cpu_secs);
        let cpu0 = a.cpu_secs();
        let r = crate::run(&RunArgs {
            page_size: SCAN_PAGE_SIZE,
            ..run_args(&a.url, biggest, format!("scan-service-{rep}"))
        })
        .await?;
        let rows = r.rows as f64;
        anyhow::ensure!(
            r.rows == biggest,
            "service scan returned {} rows of {biggest}",
            r.rows
        );
        svc.push(rows / r.reads.max_ms * 1000.0);
        svc_cpu.push((a.cpu_secs() - cpu0) / rows * 1e6);
        jvm_cpu.push((cassandra_pid().map_or(f64::NAN, proc_cpu_secs) - jvm0) / rows * 1e6);
        let (n, t) = direct_scan(&store, biggest, 1).await?;
        anyhow::ensure!(n == biggest, "direct scan returned {n} rows of {biggest}");
        direct1.push(n as f64 / t.as_secs_f64());
        let (n, t) = direct_scan(&store, biggest, 4).await?;
        direct4.push(n as f64 / t.as_secs_f64());
        let chained = crate::run(&RunArgs {
            slo_ms: Some(50),
            ..run_args(&a.url, biggest, format!("scan-slo50-{rep}"))
        })
        .await?;
        anyhow::ensure!(
            chained.rows == biggest,
            "chained read returned {} rows",
            chained.rows
        );
        slo_chain.push(chained.reads.max_ms / 1000.0);
        eprintln!(
            "   rep {rep}: service {:.0} rows/s, direct {:.0} / {:.0} rows/s (1 / 4 streams)",
            svc[rep], direct1[rep], direct4[rep]
        );
    }
    let (svc_m, d1, d4) = (median(svc), median(direct1), median(direct4));
    let completion_tax = median(slo_chain) / (biggest as f64 / d1);

    eprintln!("== token chains through {biggest} rows, unbounded / hot continuations on / off");
    let mut chains = String::new();
    for &slo in &args.follow_slos {
        // Side by side: each repeat reads the series unbounded, then
        // follows it under the SLO on both servers, in turn first, so a
        // machine that drifts during the run weighs on all three alike.
        let (mut unbounded, mut unbounded_off, mut on, mut off, mut turns) = (
            vec![],
            vec![],
            ChainCell::default(),
            ChainCell::default(),
            ChainCell::default(),
        );
        for rep in 0..args.repeats {
            let whole = RunArgs {
                page_size: SCAN_PAGE_SIZE,
                ..run_args(&a.url, biggest, format!("chain-{slo}-unbounded-{rep}"))
            };
            unbounded.push(whole_read_secs(&whole, biggest).await?);
            // The same read on the server with the cache off: the tax of
            // its chains against a read of that server too.
            let whole_off = RunArgs {
                page_size: SCAN_PAGE_SIZE,
                ..run_args(&c.url, biggest, format!("chain-{slo}-unbounded-off-{rep}"))
            };
            unbounded_off.push(whole_read_secs(&whole_off, biggest).await?);
            for (server, hot, cell) in in_turn(rep, [(&a, "on", &mut on), (&c, "off", &mut off)]) {
                let r = crate::run(&RunArgs {
                    slo_ms: Some(slo),
                    page_size: SCAN_PAGE_SIZE,
                    ..run_args(&server.url, biggest, format!("chain-{slo}-{hot}-{rep}"))
                })
                .await?;
                for (reason, message) in &r.first_error_by_reason {
                    eprintln!("   chain {slo} ms, cache {hot}, repeat {rep}: {reason}: {message}");
                }
                cell.add(&r, biggest);
            }
            let r = crate::run(&RunArgs {
                slo_ms: Some(slo),
                page_size: SCAN_PAGE_SIZE,
                ..run_args(&pair, biggest, format!("chain-{slo}-turns-{rep}"))
            })
            .await?;
            for (reason, message) in &r.first_error_by_reason {
                eprintln!("   chain {slo} ms, two replicas, repeat {rep}: {reason}: {message}");
            }
            turns.add(&r, biggest);
        }
        let (unbounded_s, unbounded_off_s) = (median(unbounded), median(unbounded_off));
        for (cell, hot, own_s) in [
            (&on, "on", unbounded_s),
            (&off, "off", unbounded_off_s),
            (&turns, "on, 2 replicas in turn", unbounded_s),
        ] {
            let line = cell.row(slo, hot, unbounded_s, own_s);
            eprintln!("   {line}");
            chains.push_str(&line);
            chains.push('\n');
        }
    }

    eprintln!("== deadline adherence");
    let mut table = String::new();
    let (mut scanned, mut delivered) = (0u64, 0u64);
    let (mut whole_scanned, mut whole_delivered) = (0u64, 0u64);
    for &size in &args.sizes {
        for &clients in &args.clients {
            for &slo in &args.slos {
                let mut cells = vec![];
                for (server, partial) in [(&a, true), (&b, false)] {
                    let label = format!(
                        "adhere-{size}-{clients}-{slo}-{}",
                        if partial { "on" } else { "off" }
                    );
                    settle().await;
                    let r = crate::run(&RunArgs {
                        clients,
                        requests: None,
                        duration_secs: Some(args.seconds_per_cell),
                        warmup_secs: 0.5,
                        slo_ms: Some(slo),
                        ..run_args(&server.url, size, label)
                    })
                    .await?;
                    if partial {
                        scanned += r.rows_scanned;
                        delivered += r.rows;
                        whole_scanned += r.whole_reads_rows_scanned;
                        whole_delivered += r.whole_reads_rows;
                    }
                    cells.push(r);
                }
                let slo_f = f64::from(slo);
                let (on, off) = (&cells[0], &cells[1]);
                writeln!(
                    table,
                    "| {size} | {clients} | {slo} | {:.2} | {:.2} | {:.1}% | {:.1}% | {:.2} | {:.2} | {:.1}% |",
                    on.responses.p99_ms / slo_f,
                    on.responses.p999_ms / slo_f,
                    on.partial_rate * 100.0,
                    on.error_rate() * 100.0,
                    off.responses.p99_ms / slo_f,
                    off.responses.p999_ms / slo_f,
                    off.error_rate() * 100.0,
                )?;
                eprintln!(
                    "   {size} rows, {clients} clients, SLO {slo} ms: p99/SLO {:.2} (off: {:.2})",
                    on.responses.p99_ms / slo_f,
                    off.responses.p99_ms / slo_f
                );
            }
        }
    }
    let amplification = crate::report::amplification(scanned, delivered);
    let whole_amplification = crate::report::amplification(whole_scanned, whole_delivered);

    // The series of the overload section: the largest up to 100,000 rows,
    // so a read is several calls at the tighter SLOs.
    let overload_size = args
        .sizes
        .iter()
        .copied()
        .filter(|&s| s <= 100_000)
        .max()
        .unwrap_or(biggest);
    eprintln!("== overload on {overload_size}-row series, adaptive admission on / off");
    let overload = overload_section(args, overload_size, &e, &d).await?;

    let faults = if with_cluster {
        eprintln!("== replica fault on the 3-node cluster, hedging on / off");
        let section = replica_fault_section(args).await;
        cluster(&["stop"])?;
        section?
    } else {
        String::new()
    };

    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut md = String::new();
    writeln!(md, "# Benchmarks\n")?;
    writeln!(
        md,
        "Produced by `scripts/bench` (`{command}`), on {}. Measured after {warmed:.0} s of unmeasured reads (`--warmup-secs`, and until the node had been up {NODE_WARM_SECS:.0} s), the node up {node_age:.0} s when measuring began.\n",
        machine(&a)
    )?;
    writeln!(md, "Series are seeded through `WriteEvents` ({ROWS_PER_SEC} rows per second of event time, {BUCKET_SECS} s buckets, {SHARDS} shards, 64-byte payloads). Whole-series service scans use page size {SCAN_PAGE_SIZE} (deadline cells 10000); the direct scan reads the same partitions with the scylla driver (page size 5000). Service and direct runs alternate A B A B, {} times; medians are reported.\n", args.repeats)?;
    writeln!(md, "## Summary\n")?;
    writeln!(md, "| figure | measured | target |\n|---|---|---|")?;
    writeln!(
        md,
        "| scan efficiency, single stream (service ÷ direct 1 stream) | {:.2} | >= 0.95 |",
        svc_m / d1
    )?;
    writeln!(
        md,
        "| scan efficiency, read-ahead (service ÷ direct 4 streams) | {:.2} | >= 1.0 |",
        svc_m / d4
    )?;
    writeln!(md, "| read amplification (rows the calls report scanned ÷ delivered, SLO-bound reads of the deadline cells with partial return that finished within their cell; a continued call counts what its scan fetched while held) | {whole_amplification:.3} | <= 1.02 |")?;
    writeln!(md, "| the same over every call of those cells (a read the cell's end cut off counts rows its scan fetched ahead for a next call that never came) | {amplification:.3} | |")?;
    writeln!(md, "| completion tax (chained 50 ms SLO calls ÷ one direct scan) | {completion_tax:.2} | <= 1.05 |")?;
    writeln!(
        md,
        "| service CPU per million rows | {:.2} s | |",
        median(svc_cpu)
    )?;
    writeln!(
        md,
        "| Cassandra JVM CPU per million rows (during service scans) | {:.2} s | |\n",
        median(jvm_cpu)
    )?;
    writeln!(md, "Rows/s on {biggest} rows: service {svc_m:.0}, direct single stream {d1:.0}, direct 4 streams {d4:.0}.\n")?;
    writeln!(md, "## Following tokens\n")?;
    writeln!(md, "One client follows continuation tokens through the {biggest}-row series (page size {SCAN_PAGE_SIZE}) under each SLO, {} times per cell (medians; errors and calls summed), against the same server with hot continuations on (default) and off (`--continuation-bytes 0`). Each repeat reads the series once unbounded (no SLO, same page size, hot continuations on) and then follows it on both servers, taking turns to go first. Completion tax: the chain's time ÷ that SLO's unbounded read (medians over the repeats). Own unbounded s and tax ÷ own: the same unbounded read on the server the chain went to, read right after the first (with the cache off it too stops and resumes cold at each 4 MiB response, and storage idles while each is sent), and the chain's time ÷ it (for the cache on, and two replicas in turn, that is the first read, on server a). Amplification: rows the calls report scanned (`ReadStats.rows_scanned`, which for a continued call includes the rows its scan fetched while held) ÷ rows delivered: every row the chain read from storage. Hit rate: calls after the first that continued a held scan (`ReadStats.continued`). `on, 2 replicas in turn`: after those, the chain through server a and a second one like it taking its calls in turn, as behind a balancer that alternates (each call after each replica's first moves its client's scan held there forward to its token: amplification then counts the rows it drops, which the other replica delivered). Targets: tax <= 1.2 at 50 ms and <= 1.5 at 10 ms, amplification <= 1.02 with the cache on, zero DEADLINE_EXCEEDED. In brackets, how many of those calls failed `STORAGE_LATE` (a storage request took longer than the server's latency model expects of a slow one) rather than `BUDGET_TOO_SMALL`. In server / outside: the chain's time split in two (medians over complete chains): the sum of its calls' own elapsed time (`ReadStats.elapsed_micros`, from arrival to the end of the scan) and the rest (each response's sending and decoding, the next request's way in; it grows with the bytes delivered, not with the number of calls). With the cache off storage does nothing for the chain while it is outside, so that chain's tax is at least (unbounded + outside) ÷ unbounded however fast its calls scan; with it on, the held scan fetches ahead meanwhile.\n", args.repeats)?;
    writeln!(md, "| SLO ms | hot continuations | unbounded s | chain s | in server s | outside s | completion tax | own unbounded s | tax ÷ own | amplification | calls | DEADLINE_EXCEEDED (of them STORAGE_LATE) | hit rate |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")?;
    md.push_str(&chains);
    writeln!(md)?;
    writeln!(md, "## Deadline adherence\n")?;
    writeln!(md, "Closed loop, whole-series reads following tokens, {} s per cell, cells 1 s apart. `on`: Hourglass with partial return; `off`: the same server with partial return switched off (`--partial-reads false`), i.e. a page-size-bound read as users have today. Targets: p99 <= SLO (ratio <= 1.00), p99.9 <= 1.05 x SLO. Ratios are over successful responses; `errors` are calls that failed (DEADLINE_EXCEEDED when not one row fit in the budget).\n", args.seconds_per_cell)?;
    writeln!(md, "| rows | clients | SLO ms | on p99/SLO | on p99.9/SLO | on partial | on errors | off p99/SLO | off p99.9/SLO | off errors |\n|---|---|---|---|---|---|---|---|---|---|")?;
    md.push_str(&table);
    writeln!(md)?;
    writeln!(md, "## Overload\n")?;
    writeln!(md, "Whole-series reads following tokens (page size 10000) of the {overload_size}-row series, {} s per cell after 0.5 s of warm-up, cells 1 s apart (the section begins 5 s after the one before, with one unmeasured 1-client cell per server) (scans held for the last cell's followers finish fetching ahead), each cell {} times per server with the servers taking turns to go first (medians over the repeats), against two servers alike but for adaptive admission, on (default) and off (`--adaptive-admission false`: only the static bulkhead of 256 scans), neither used before this section. `closed N`: N clients, each starting its next read when the last ended, and after a refused call waiting out its RetryInfo and going on from the last token; `open R/s`: reads started at R per second whatever happens. Latency is client-observed, over answered calls (refused calls are not answers). Server p99/SLO: the server's own elapsed time (`ReadStats.elapsed_micros`, from the call's arrival to the end of its scan) of answered calls; outside p99: per answered call, client-observed latency less that elapsed time (the request's way in before the server saw it, the response's sending and decoding, each side waiting for a CPU). Refused: share of calls answered RESOURCE_EXHAUSTED; refusal p99: their latency; goodput: rows per second delivered in responses that came within the SLO. Targets: p99/SLO <= 1.0 and p99.9/SLO <= 1.05 with admission on, goodput not below off's.\n", args.seconds_per_cell, args.repeats)?;
    writeln!(md, "| load | SLO ms | on p99/SLO | on p99.9/SLO | on server p99/SLO | on outside p99 ms | on refused | on refusal p99 ms | on goodput rows/s | off p99/SLO | off p99.9/SLO | off refused | off goodput rows/s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")?;
    md.push_str(&overload);
    md.push_str(&faults);
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, md)?;
    println!("wrote {}", args.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
        // Exact in binary: halves of small integers.
        for (v, m) in [
            (vec![3.0, 1.0, 2.0], 2.0),
            (vec![4.0, 1.0], 2.5),
            (vec![5.0, 1.0, 3.0, 2.0], 2.5),
        ] {
            assert!((median(v.clone()) - m).abs() < 1e-12, "{v:?}");
        }
    }

    #[test]
    fn sides_take_turns_to_go_first() {
        assert_eq!(in_turn(0, ["a", "b"]), ["a", "b"]);
        assert_eq!(in_turn(1, ["a", "b"]), ["b", "a"]);
        assert_eq!(in_turn(2, ["a", "b"]), ["a", "b"]);
    }

    #[test]
    fn proc_stat_fields_are_numbered_as_proc_5_numbers_them() {
        let stat = ProcStat::read(std::process::id()).expect("own /proc stat");
        assert_eq!(stat.field(2), None, "the command name is not a field here");
        // Field 3 is the state of the main thread (running or waiting on
        // this test's), field 19 the niceness.
        assert!(
            matches!(stat.field(3), Some("R" | "S")),
            "{:?}",
            stat.field(3)
        );
        assert!(stat.field(19).is_some_and(|n| n.parse::<i8>().is_ok()));
        // Field 41 is the policy: a test runs under SCHED_OTHER.
        assert_eq!(stat.field(41), Some("0"));
        let policy = storage_priority(std::process::id()).expect("own /proc stat");
        assert!(policy.starts_with("SCHED_OTHER at niceness "), "{policy}");
        assert!(proc_cpu_secs(std::process::id()) >= 0.0);
    }
}
