//! Metrics (Prometheus, through the `metrics` facade) and the names of
//! everything Hourglass measures. Recording is a no-op until
//! [`install_prometheus`] installs the exporter, so the library and its
//! tests pay nothing for it.

use std::net::SocketAddr;
use std::time::Duration;

/// Default address of the Prometheus endpoint.
pub const DEFAULT_METRICS_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    9464,
));

/// Request latency by gRPC method and outcome, seconds (histogram).
pub const REQUEST_SECONDS: &str = "hourglass_request_duration_seconds";
/// Partial responses by reason (counter).
pub const PARTIAL_RESPONSES: &str = "hourglass_partial_responses_total";
/// Share of the budget a read used, 0 to 1+ (histogram).
pub const BUDGET_USED: &str = "hourglass_budget_used_ratio";
/// Storage page latency, seconds (histogram).
pub const STORAGE_PAGE_SECONDS: &str = "hourglass_storage_page_duration_seconds";
/// How late a read's scan stopped after the instant its budget set for the
/// stop (the process waking late on a loaded machine).
pub const STOP_LATENESS_SECONDS: &str = "hourglass_stop_lateness_seconds";
/// Rows received from storage (counter).
pub const ROWS_SCANNED: &str = "hourglass_rows_scanned_total";
/// Rows sent to clients (counter).
pub const ROWS_DELIVERED: &str = "hourglass_rows_delivered_total";
/// Scans running now (gauge).
pub const SCANS_IN_FLIGHT: &str = "hourglass_scans_in_flight";
/// The concurrency limit of reads on this replica: the adaptive one, or the
/// static bound when adaptive admission is off.
pub const ADMISSION_LIMIT: &str = "hourglass_admission_limit";
/// Storage requests retried (counter).
pub const STORAGE_RETRIES: &str = "hourglass_storage_retries_total";
/// Probes sent beside a straggling shard page or bucket-index query
/// (counter).
pub const STORAGE_PROBES: &str = "hourglass_storage_probes_total";
/// Storage read requests (pages, probes, index queries), hedges not
/// included (counter).
pub const STORAGE_READS: &str = "hourglass_storage_reads_total";
/// Hedged storage reads, `result` = `sent` or `won` (counter).
pub const STORAGE_HEDGES: &str = "hourglass_storage_hedges_total";
/// Storage nodes put last in query plans after losing a hedge race or
/// timing out (counter).
pub const STORAGE_DEMOTIONS: &str = "hourglass_storage_node_demotions_total";
/// Requests refused, by ErrorInfo reason (counter).
pub const REJECTED: &str = "hourglass_rejected_requests_total";
/// Storage circuit breaker: 0 closed, 1 half-open, 2 open (gauge).
pub const CIRCUIT_STATE: &str = "hourglass_storage_circuit_state";
/// 1 while storage answers health probes, else 0 (gauge).
pub const STORAGE_UP: &str = "hourglass_storage_up";
/// Reads presenting a token, by whether they continued a scan held on this
/// replica: `result` = `hit` or `miss` (counter).
pub const CONTINUATIONS: &str = "hourglass_continuations_total";
/// Held scans dropped unused, by `cause` = `age`, `capacity` or `client`
/// (counter).
pub const CONTINUATION_EVICTIONS: &str = "hourglass_continuation_evictions_total";
/// Connections aborted because their client took nothing of a response
/// for the stall time (counter).
pub const STALLED_CONNECTIONS: &str = "hourglass_stalled_connections_total";
/// Connections closed because their TLS handshake and HTTP/2 preface did
/// not finish within the handshake timeout (counter).
pub const HANDSHAKE_TIMEOUTS: &str = "hourglass_handshake_timeouts_total";
/// Estimated bytes of rows held for hot continuations, by held scans and
/// by calls fetching ahead (gauge).
pub const CONTINUATION_BYTES: &str = "hourglass_continuation_bytes";
/// Scans held for hot continuations (gauge).
pub const CONTINUATION_ENTRIES: &str = "hourglass_continuation_entries";

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const LATENESS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1,
];
const RATIO_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0, 1.05, 1.25, 2.0];

/// Serves `/metrics` on `addr` for the rest of the process.
pub fn install_prometheus(addr: SocketAddr) -> anyhow::Result<()> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            Matcher::Full(STOP_LATENESS_SECONDS.into()),
            LATENESS_BUCKETS,
        )?
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(BUDGET_USED.into()), RATIO_BUCKETS)?
        .install()
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
    describe();
    Ok(())
}

/// Registers every documented series at zero, so dashboards and alerts see
/// them on a fresh replica before the first event: labelled counters once
/// per label value given.
pub fn register_zero(partial_reasons: &[&'static str], rejected_reasons: &[&'static str]) {
    for name in [
        ROWS_SCANNED,
        ROWS_DELIVERED,
        STORAGE_RETRIES,
        STORAGE_PROBES,
        STORAGE_READS,
        STORAGE_DEMOTIONS,
        STALLED_CONNECTIONS,
        HANDSHAKE_TIMEOUTS,
    ] {
        metrics::counter!(name).increment(0);
    }
    for result in ["sent", "won"] {
        metrics::counter!(STORAGE_HEDGES, "result" => result).increment(0);
    }
    for &reason in partial_reasons {
        metrics::counter!(PARTIAL_RESPONSES, "reason" => reason).increment(0);
    }
    for &reason in rejected_reasons {
        metrics::counter!(REJECTED, "reason" => reason).increment(0);
    }
    for result in ["hit", "skip", "miss"] {
        metrics::counter!(CONTINUATIONS, "result" => result).increment(0);
    }
    for cause in ["age", "capacity", "client"] {
        metrics::counter!(CONTINUATION_EVICTIONS, "cause" => cause).increment(0);
    }
    for name in [
        SCANS_IN_FLIGHT,
        CIRCUIT_STATE,
        STORAGE_UP,
        CONTINUATION_BYTES,
        CONTINUATION_ENTRIES,
    ] {
        metrics::gauge!(name).increment(0.0);
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_histogram!(
        REQUEST_SECONDS,
        Unit::Seconds,
        "RPC latency by method and outcome"
    );
    describe_counter!(PARTIAL_RESPONSES, "Partial read responses by reason");
    describe_histogram!(BUDGET_USED, "Elapsed share of each read's latency budget");
    describe_histogram!(STORAGE_PAGE_SECONDS, Unit::Seconds, "Storage page latency");
    describe_histogram!(
        STOP_LATENESS_SECONDS,
        Unit::Seconds,
        "How late scans stopped after the instant their budget set"
    );
    describe_counter!(ROWS_SCANNED, "Rows received from storage");
    describe_counter!(ROWS_DELIVERED, "Rows returned to clients");
    describe_gauge!(
        SCANS_IN_FLIGHT,
        "Reads holding a scan slot (a stream until its client took its rows)"
    );
    describe_gauge!(
        ADMISSION_LIMIT,
        "Limit on concurrent reads: the adaptive one, or --max-scans with --adaptive-admission false"
    );
    describe_counter!(
        STORAGE_RETRIES,
        "Storage requests retried after transient errors"
    );
    describe_counter!(
        STORAGE_PROBES,
        "Small pages (or copies) sent beside a late shard page, and copies of a late bucket-index query, while a call had no row yet"
    );
    describe_counter!(
        STORAGE_READS,
        "Storage read requests sent (hedges not included)"
    );
    describe_counter!(
        STORAGE_HEDGES,
        "Hedged storage reads: sent, and won (the hedge answered first)"
    );
    describe_counter!(
        STORAGE_DEMOTIONS,
        "Storage nodes put last in query plans after a lost hedge race or a timeout"
    );
    describe_counter!(REJECTED, "Requests refused, by reason");
    describe_gauge!(STORAGE_UP, "1 while storage answers health probes");
    describe_counter!(
        CONTINUATIONS,
        "Token reads that continued a held scan (hit) or resumed from the token alone (miss)"
    );
    describe_counter!(
        CONTINUATION_EVICTIONS,
        "Held scans dropped unused, by cause"
    );
    describe_gauge!(
        CONTINUATION_BYTES,
        Unit::Bytes,
        "Estimated bytes held for hot continuations (held scans and calls fetching ahead)"
    );
    describe_gauge!(CONTINUATION_ENTRIES, "Scans held for hot continuations");
    describe_counter!(
        STALLED_CONNECTIONS,
        "Connections aborted: their client took nothing of a response for the stall time"
    );
    describe_counter!(
        HANDSHAKE_TIMEOUTS,
        "Connections closed: no TLS handshake and HTTP/2 preface within the handshake timeout"
    );
    describe_gauge!(
        CIRCUIT_STATE,
        "Storage circuit: 0 closed, 1 half-open, 2 open"
    );
}

/// Resident memory of the server process (Prometheus' standard name).
pub const PROCESS_RSS: &str = "process_resident_memory_bytes";

/// Samples the process's resident memory into [`PROCESS_RSS`] every second
/// (Linux: /proc/self/status; elsewhere the gauge stays unset).
pub async fn sample_process_metrics() {
    metrics::describe_gauge!(PROCESS_RSS, "Resident memory of this process, bytes");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Some(rss) = resident_bytes() {
            metrics::gauge!(PROCESS_RSS).set(rss as f64);
        }
    }
}

/// This process's resident set size, from /proc/self/status.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Counts a scan as in flight until dropped.
#[derive(Debug)]
pub struct ScanInFlight(());

impl ScanInFlight {
    pub fn enter() -> Self {
        metrics::gauge!(SCANS_IN_FLIGHT).increment(1.0);
        Self(())
    }
}

impl Drop for ScanInFlight {
    fn drop(&mut self) {
        metrics::gauge!(SCANS_IN_FLIGHT).decrement(1.0);
    }
}

/// Records one finished RPC.
pub fn request(method: &'static str, outcome: &'static str, elapsed: Duration) {
    metrics::histogram!(REQUEST_SECONDS, "method" => method, "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}
