//! Replica faults on the three-node local cluster (`scripts/cassandra
//! cluster start`, started here if it is not running): keyspace at RF 3,
//! reads and writes at LOCAL_QUORUM. A node SIGKILLed mid-read costs no row
//! and no acknowledged write; a node frozen (SIGSTOP) mid-reads is hedged
//! around; token-following reads close a half-open breaker. The tests
//! signal the cluster's nodes, so they take a lock and run one at a time,
//! and each leaves every node running.

// Test data: small counts and times converted between integer types.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod common;

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use hourglass::api::pb;
use hourglass::storage::breaker::BreakerConfig;
use hourglass::storage::cassandra::CassandraConfig;
use hourglass::storage::hedging::HedgeConfig;
use scylla::statement::Consistency;

static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// CQL port of every cluster node (scripts/cassandra's default).
const CLUSTER_PORT: u16 = 19_242;

/// Runs `scripts/cassandra cluster <args>`.
fn cluster_script(args: &[&str]) {
    let status = Command::new(repo_root().join("scripts/cassandra"))
        .arg("cluster")
        .args(args)
        .status()
        .expect("run scripts/cassandra cluster");
    assert!(
        status.success(),
        "scripts/cassandra cluster {args:?}: {status}"
    );
}

/// The cluster's contact points, after making sure all three nodes run.
fn cluster() -> Vec<String> {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        watchdog();
        cluster_script(&["start"]);
    });
    (1..=3)
        .map(|n| format!("127.0.0.{n}:{CLUSTER_PORT}"))
        .collect()
}

/// A server on the cluster: RF 3, LOCAL_QUORUM, `hedging`.
async fn cluster_server(hedging: HedgeConfig, breaker: BreakerConfig) -> TestServer {
    cluster_server_in(keyspace(), hedging, breaker).await
}

async fn cluster_server_in(
    keyspace: String,
    hedging: HedgeConfig,
    breaker: BreakerConfig,
) -> TestServer {
    let contact_points = cluster();
    TestServer::start_config(|c| {
        c.cassandra = CassandraConfig {
            contact_points,
            keyspace,
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 3}".into(),
            consistency: Consistency::LocalQuorum,
            connect_timeout: Duration::from_secs(30),
            hedging,
            ..CassandraConfig::default()
        };
        c.breaker = breaker;
    })
    .await
}

/// Writes `rows` events 1 ms apart to series `series` of `ns`.
async fn seed(server: &mut TestServer, ns: &str, series: &str, rows: i64) {
    create_namespace(&mut server.client, ns, 10_000_000, 4).await;
    for chunk in (0..rows).collect::<Vec<_>>().chunks(5_000) {
        let events = chunk
            .iter()
            .map(|&i| event(series, i * 1000, &format!("{i}")))
            .collect();
        write_all(&server.client, ns, events).await;
    }
}

fn assert_exactly_once_in_order(events: &[pb::Event], rows: i64) {
    assert_eq!(events.len() as i64, rows, "row count");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.event_time_micros, i as i64 * 1000, "row {i}");
    }
}

/// Puts the node back (restarting or thawing it) however the test ends.
struct Heal(&'static [&'static str]);

impl Drop for Heal {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/cassandra"))
            .arg("cluster")
            .args(self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_read_costs_no_row_and_no_acknowledged_write() {
    const ROWS: i64 = 60_000;
    let _lock = CLUSTER.lock().await;
    let mut server = cluster_server(HedgeConfig::default(), BreakerConfig::default()).await;
    seed(&mut server, "killed", "big", ROWS).await;

    // A writer acknowledging batches while a node dies.
    let mut writer = AckedWriter::start(&server.client, "killed").await;

    // Follow a long read in small pages; kill node 2 after its first page.
    let _heal = Heal(&["start"]);
    let mut client = server.client.clone();
    let req = pb::ReadEventsRequest {
        page_size: Some(2_000),
        slo_millis: 2_000,
        ..read_request("killed", "big", 0, ROWS * 1000)
    };
    let mut stream = hourglass::client::follow(client.clone(), req, Default::default());
    let mut events = Vec::new();
    let mut pages = 0;
    let mut partial_by_fault = 0;
    while let Some(page) = stream.next().await {
        let page = page.unwrap_or_else(|s| {
            panic!(
                "every call of the chain answers OK; call {} got {s:?}",
                pages + 1
            )
        });
        if page.partial_reason == pb::PartialReason::StorageError as i32 {
            partial_by_fault += 1;
        }
        events.extend(page.events);
        pages += 1;
        if pages == 1 {
            cluster_script(&["kill", "2"]);
        }
    }
    drop(stream);
    let refused_writes = writer.stop().await;
    assert!(pages > 10, "the read spanned the fault: {pages} pages");
    assert_exactly_once_in_order(&events, ROWS);
    println!(
        "kill: {pages} pages, {partial_by_fault} partial by storage errors, \
         {} writes acknowledged, {refused_writes} refused",
        writer.acknowledged()
    );
    assert_eq!(
        refused_writes, 0,
        "LOCAL_QUORUM writes go on with one node of three down"
    );

    // The node comes back; every acknowledged write is there.
    cluster_script(&["start"]);
    writer.assert_all_stored(&mut client).await;
}

/// Outcome counts of `reads` reads of `rows` rows under `slo_ms`.
#[derive(Debug, Default)]
struct Outcomes {
    complete: usize,
    partial: usize,
    /// ErrorInfo reasons of the calls that failed.
    failed: Vec<String>,
}

async fn reads(server: &TestServer, ns: &str, reads: usize, rows: i64, slo_ms: i64) -> Outcomes {
    let mut out = Outcomes::default();
    for r in 0..reads as i64 {
        // Each read starts somewhere else, so pages are not served warm.
        let start = (r * 7_919 % 50) * rows * 1000;
        let req = pb::ReadEventsRequest {
            slo_millis: slo_ms,
            page_size: Some(rows as u32),
            ..read_request(ns, "big", start, start + rows * 1000)
        };
        match server.client.clone().read_events(req).await {
            Ok(resp) => {
                let resp = resp.into_inner();
                if resp.partial {
                    out.partial += 1;
                } else {
                    assert_eq!(
                        resp.events.len() as i64,
                        rows,
                        "a complete read has every row"
                    );
                    out.complete += 1;
                }
            }
            Err(status) => out.failed.push(reason_of(&status)),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_node_is_hedged_around() {
    const READS: usize = 30;
    const WARM: usize = 300;
    let _lock = CLUSTER.lock().await;
    let mut on = cluster_server(HedgeConfig::default(), BreakerConfig::default()).await;
    // Seeded (so the schema exists) before the second server starts: two
    // servers creating one keyspace at once on different coordinators race.
    seed(&mut on, "frozen", "big", 100_000).await;
    let off = cluster_server(HedgeConfig::off(), BreakerConfig::default()).await;
    // Warm both: connections open, latency models and hedge delays learnt,
    // on nodes past their JIT warm-up. Run first on a cluster just started
    // (as in a fresh clone's test command) after 40 warm-up reads per
    // server, 7 of 30 hedged reads went partial with node 2 frozen, where
    // a warm cluster completes 30 of 30 (three runs): hedge delays and
    // latency models learnt on cold nodes are too long. After 150, on
    // clusters just started, 2 runs of 7 still had 3-5 of 30 hedged reads
    // find no row in time (19-24 complete): hence 300.
    for server in [&on, &off] {
        let warm = reads(server, "frozen", WARM, 2_000, 1_000).await;
        assert_eq!(warm.complete, WARM, "healthy cluster: {warm:?}");
    }

    let _heal = Heal(&["thaw", "2"]);
    cluster_script(&["freeze", "2"]);
    let hedged = reads(&on, "frozen", READS, 2_000, 200).await;
    let plain = reads(&off, "frozen", READS, 2_000, 200).await;
    cluster_script(&["thaw", "2"]);
    println!("frozen node 2: hedging on {hedged:?}, off {plain:?}");
    assert!(
        hedged.failed.is_empty() && hedged.complete * 10 >= READS * 8,
        "with hedging every read answers and most complete: {hedged:?}"
    );
    assert!(
        plain.complete * 2 <= READS,
        "without hedging most reads go partial or find no row in time: {plain:?}"
    );
    // One node of three frozen is not an outage: the breaker stays closed
    // (no STORAGE_CIRCUIT_OPEN); a call that got no row in time says so
    // (storage late where it waited on the frozen node past what pages
    // usually take).
    assert!(
        plain
            .failed
            .iter()
            .all(|r| r == "BUDGET_TOO_SMALL" || r == "STORAGE_LATE"),
        "{plain:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_following_reads_alone_close_a_half_open_breaker() {
    const ROWS: i64 = 20_000;
    let _lock = CLUSTER.lock().await;
    let breaker = BreakerConfig {
        failure_threshold: 1,
        cool_down: Duration::from_millis(500),
    };
    let mut server = cluster_server(HedgeConfig::default(), breaker).await;
    seed(&mut server, "breaker", "big", ROWS).await;
    let req = pb::ReadEventsRequest {
        page_size: Some(1_000),
        ..read_request("breaker", "big", 0, ROWS * 1000)
    };
    let mut client = server.client.clone();
    let first = client
        .read_events(req.clone())
        .await
        .expect("first page")
        .into_inner();
    assert!(first.partial && !first.continuation_token.is_empty());

    // Every node killed: reads fail and the circuit opens.
    let _heal = Heal(&["start"]);
    for n in ["1", "2", "3"] {
        cluster_script(&["kill", n]);
    }
    let mut reasons = Vec::new();
    for _ in 0..6 {
        let status = client
            .read_events(pb::ReadEventsRequest {
                continuation_token: first.continuation_token.clone(),
                ..req.clone()
            })
            .await;
        reasons.push(status.map_or_else(|s| reason_of(&s), |_| "OK".into()));
    }
    assert!(
        reasons.iter().any(|r| r == "STORAGE_CIRCUIT_OPEN"),
        "the circuit opened while every node was down: {reasons:?}"
    );
    cluster_script(&["start"]);

    // Storage is healthy again: only token-following reads call, and they
    // close the circuit (once the driver has reconnected) and read every
    // row once, in order.
    let mut events = first.events.clone();
    let mut token = first.continuation_token.clone();
    let began = std::time::Instant::now();
    while !token.is_empty() {
        match client
            .read_events(pb::ReadEventsRequest {
                continuation_token: token.clone(),
                ..req.clone()
            })
            .await
        {
            Ok(page) => {
                let page = page.into_inner();
                events.extend(page.events);
                token = page.continuation_token;
            }
            Err(s) => {
                assert!(
                    began.elapsed() < Duration::from_secs(60),
                    "the circuit never closed: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_exactly_once_in_order(&events, ROWS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_on_a_new_keyspace_all_serve() {
    let _lock = CLUSTER.lock().await;
    for round in 0..4 {
        // Three replicas create one new keyspace at once, through whichever
        // coordinators their drivers pick. (Without the wait for schema
        // agreement before preparing, 1 run in 10 of two rounds failed: a
        // write or read through a node that lacked the table yet.)
        let ks = format!("{}_race{round}", keyspace());
        let mut servers = futures::future::join_all((0..3).map(|_| {
            cluster_server_in(ks.clone(), HedgeConfig::default(), BreakerConfig::default())
        }))
        .await;
        let written = vec![event("s", 1_000, "a"), event("s", 2_000, "b")];
        create_namespace(&mut servers[0].client, "race", 1_000_000, 2).await;
        write_all(&servers[1].client, "race", written.clone()).await;
        for server in &mut servers {
            let (got, _) =
                read_to_end(&mut server.client, read_request("race", "s", 0, 10_000)).await;
            assert_eq!(got, written, "every replica serves the same rows");
        }
    }
}
