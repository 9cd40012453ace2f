//! Operating the real `hourglass serve` process: health, reflection through
//! grpcurl, Prometheus metrics after partial reads, the Python client, the
//! config file and graceful shutdown.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use hourglass::api::pb;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::HealthCheckRequest;

async fn seeded(server: &ServerProcess, ns: &str, rows: i64) -> Vec<pb::Event> {
    let mut client = server.client().await;
    create_namespace(&mut client, ns, 1_000_000, 3).await;
    let events: Vec<_> = (0..rows)
        .map(|i| event("s", i * 1000, &format!("{i:05}")))
        .collect();
    write_all(&client, ns, events.clone()).await;
    events
}

fn metric(scrape: &str, line_prefix: &str) -> f64 {
    scrape
        .lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_graceful_shutdown() {
    let server = ServerProcess::start(&[]).await;
    let mut health = server.health().await;
    for service in ["", "hourglass.v1.Hourglass"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }

    // Every documented series exists at zero before its first event.
    let fresh = server.scrape().await;
    for series in [
        "hourglass_storage_retries_total 0",
        "hourglass_storage_probes_total 0",
        "hourglass_rejected_requests_total{reason=\"TOO_MANY_SCANS\"} 0",
        "hourglass_rejected_requests_total{reason=\"STORAGE_UNAVAILABLE\"} 0",
        "hourglass_rejected_requests_total{reason=\"REQUEST_BUFFER_FULL\"} 0",
        "hourglass_partial_responses_total{reason=\"storage_error\"} 0",
        "hourglass_rows_scanned_total 0",
        "hourglass_scans_in_flight 0",
        "hourglass_storage_circuit_state 0",
        "hourglass_continuations_total{result=\"hit\"} 0",
        "hourglass_continuations_total{result=\"skip\"} 0",
        "hourglass_continuation_evictions_total{cause=\"capacity\"} 0",
        "hourglass_continuation_bytes 0",
    ] {
        assert!(
            fresh.contains(series),
            "fresh metrics lack {series}:\n{fresh}"
        );
    }

    seeded(&server, "ops", 500).await;
    let before = metric(
        &server.scrape().await,
        "hourglass_partial_responses_total{reason=\"row_limit\"}",
    );
    let mut client = server.client().await;
    let req = pb::ReadEventsRequest {
        page_size: Some(100),
        ..read_request("ops", "s", 0, i64::MAX)
    };
    let (events, pages) = read_to_end(&mut client, req).await;
    assert_eq!(events.len(), 500);
    assert_eq!(pages.len(), 5, "the fifth page knows it is the last");
    // One replica: each call after the first continues the scan the
    // previous call left held.
    let continued: Vec<bool> = pages
        .iter()
        .map(|p| p.stats.as_ref().expect("stats").continued)
        .collect();
    assert_eq!(continued, [false, true, true, true, true]);
    let scrape = server.scrape().await;
    let after = metric(
        &scrape,
        "hourglass_partial_responses_total{reason=\"row_limit\"}",
    );
    // Counters hold small integers exactly.
    #[allow(clippy::float_cmp)]
    let four = after - before == 4.0;
    assert!(four, "four partial responses counted ({before} -> {after})");
    let hits = metric(&scrape, "hourglass_continuations_total{result=\"hit\"}");
    #[allow(clippy::float_cmp)]
    let four_hits = hits == 4.0;
    assert!(four_hits, "four hot continuations counted ({hits})");
    for name in [
        "hourglass_request_duration_seconds_bucket{method=\"ReadEvents\"",
        "hourglass_rows_delivered_total",
        "hourglass_rows_scanned_total",
        "hourglass_storage_page_duration_seconds_bucket",
        "hourglass_budget_used_ratio_bucket",
        "hourglass_scans_in_flight",
        "hourglass_storage_up 1",
    ] {
        assert!(scrape.contains(name), "metrics lack {name}:\n{scrape}");
    }
    assert!(metric(&scrape, "hourglass_rows_delivered_total") >= 500.0);
    let err = client
        .read_events(read_request("ops", "s", 10, 5))
        .await
        .expect_err("reversed range");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let scrape = server.scrape().await;
    assert!(
        metric(
            &scrape,
            "hourglass_rejected_requests_total{reason=\"INVALID_FIELD\"}"
        ) >= 1.0
    );

    let status = server.terminate();
    assert!(status.success(), "graceful exit on SIGTERM: {status}");

    // With hot continuations off, each token read resumes from the token
    // alone: a miss. With adaptive admission off, the limit published is
    // the static bound.
    let off = ServerProcess::start(&[
        "--continuation-bytes",
        "0",
        "--adaptive-admission",
        "false",
        "--max-scans",
        "7",
    ])
    .await;
    let mut client = off.client().await;
    let req = pb::ReadEventsRequest {
        page_size: Some(100),
        ..read_request("ops", "s", 0, i64::MAX)
    };
    let (events, pages) = read_to_end(&mut client, req).await;
    assert_eq!(events.len(), 500);
    assert!(pages
        .iter()
        .all(|p| !p.stats.as_ref().expect("stats").continued));
    let scrape = off.scrape().await;
    let misses = metric(&scrape, "hourglass_continuations_total{result=\"miss\"}");
    let hits = metric(&scrape, "hourglass_continuations_total{result=\"hit\"}");
    #[allow(clippy::float_cmp)]
    let four_misses = misses == 4.0 && hits == 0.0;
    assert!(
        four_misses,
        "four misses counted with the cache off ({misses}, {hits} hits)"
    );
    let limit = metric(&scrape, "hourglass_admission_limit");
    #[allow(clippy::float_cmp)]
    let static_bound = limit == 7.0;
    assert!(static_bound, "the limit published is --max-scans ({limit})");
    let status = off.terminate();
    assert!(status.success(), "graceful exit on SIGTERM: {status}");
}

/// A stream its client drops mid-read ends as `cancelled` in the metrics,
/// and the rows its scan read count as scanned (before, a cancelled call
/// left no trace in either).
/// Two replicas behind a balancer that alternates: each call after each
/// replica's first finds its client's scan held there at the position
/// before its token (the call in between went to the other replica),
/// moves it forward and continues it. Every row comes once, in order, and
/// both replicas count those calls as `skip`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_taking_calls_in_turn_move_their_held_scans_forward() {
    let replicas = [
        ServerProcess::start(&[]).await,
        ServerProcess::start(&[]).await,
    ];
    let written = seeded(&replicas[0], "turns", 1_000).await;
    let mut clients = [replicas[0].client().await, replicas[1].client().await];
    let mut req = pb::ReadEventsRequest {
        page_size: Some(100),
        ..read_request("turns", "s", 0, i64::MAX)
    };
    let (mut events, mut continued) = (Vec::new(), Vec::new());
    for call in 0.. {
        assert!(call < 20, "the read did not finish");
        let page = clients[call % 2]
            .read_events(req.clone())
            .await
            .expect("read")
            .into_inner();
        events.extend(page.events);
        continued.push(page.stats.expect("stats").continued);
        if !page.partial {
            break;
        }
        req.continuation_token = page.continuation_token;
    }
    assert_eq!(events, written, "every row once, in order");
    assert_eq!(continued.len(), 10, "the tenth page knows it is the last");
    assert_eq!(continued[..2], [false, false], "each replica's first call");
    assert!(continued[2..].iter().all(|&c| c), "{continued:?}");
    for (i, replica) in replicas.iter().enumerate() {
        let scrape = replica.scrape().await;
        let count = |result: &str| {
            metric(
                &scrape,
                &format!("hourglass_continuations_total{{result=\"{result}\"}}"),
            )
        };
        // The first call on the first replica presents no token.
        #[allow(clippy::float_cmp)]
        let counted = [count("hit"), count("skip"), count("miss")] == [0.0, 4.0, i as f64];
        assert!(counted, "replica {i}:\n{scrape}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_client_drops_is_counted_cancelled_with_its_rows_scanned() {
    const CANCELLED: &str =
        "hourglass_request_duration_seconds_count{method=\"StreamEvents\",outcome=\"cancelled\"}";
    let server = ServerProcess::start(&[]).await;
    let mut client = server.client().await;
    create_namespace(&mut client, "cancels", 1_000_000, 2).await;
    // 24 MB: more than the stream's queue and the HTTP/2 windows hold, so
    // the stream cannot end while its client reads nothing.
    let payload = bytes::Bytes::from(vec![b'x'; 4096]);
    let events: Vec<_> = (0..6000)
        .map(|i| pb::Event {
            payload: payload.clone(),
            ..event("big", i * 1000, &format!("{i:05}"))
        })
        .collect();
    write_all(&client, "cancels", events).await;
    let before = server.scrape().await;
    assert!(metric(&before, CANCELLED) < 0.5, "{before}");
    let scanned_before = metric(&before, "hourglass_rows_scanned_total");
    let mut stream = client
        .stream_events(pb::ReadEventsRequest {
            slo_millis: 10_000,
            ..read_request("cancels", "big", 0, i64::MAX)
        })
        .await
        .expect("stream")
        .into_inner();
    let first = stream.message().await.expect("a message").expect("one");
    let Some(pb::stream_events_response::Message::Batch(batch)) = first.message else {
        panic!("a batch first: {first:?}");
    };
    drop(stream);
    let mut scrape = String::new();
    for _ in 0..100 {
        scrape = server.scrape().await;
        if metric(&scrape, CANCELLED) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    #[allow(clippy::float_cmp)] // counters hold small integers exactly
    let once = metric(&scrape, CANCELLED) == 1.0;
    assert!(once, "one cancelled stream counted:\n{scrape}");
    let scanned = metric(&scrape, "hourglass_rows_scanned_total") - scanned_before;
    #[allow(clippy::cast_precision_loss)]
    let sent = batch.events.len() as f64;
    assert!(
        scanned >= sent,
        "the cancelled scan's rows count: {scanned} scanned, {sent} sent"
    );
    let status = server.terminate();
    assert!(status.success(), "graceful exit on SIGTERM: {status}");
}

/// A client that takes nothing of its response (an HTTP/2 window of 0,
/// never raised) holds the read's slot only for the stall time: then its
/// connection is closed, the call ends for it, and the slot serves others.
/// (Before, a unary read gave its slot back as soon as its response was
/// built, and unread responses piled up in memory without bound.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_loses_its_connection_and_its_slot() {
    const STALLED: &str = "hourglass_stalled_connections_total";
    let server = ServerProcess::start(&[
        "--send-stall",
        "1s",
        "--adaptive-admission",
        "false",
        "--max-scans",
        "1",
    ])
    .await;
    seeded(&server, "stall", 500).await;
    let mut stuck = unread_client(server.grpc).await;
    let stuck_call = tokio::spawn(async move {
        stuck
            .read_events(read_request("stall", "s", 0, i64::MAX))
            .await
    });
    // Its response is built but not taken: the one slot stays held.
    let mut good = server.client().await;
    let mut refused = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Err(e) = good
            .read_events(read_request("stall", "s", 0, i64::MAX))
            .await
        {
            refused = Some(e);
            break;
        }
    }
    let refused = refused.expect("a read refused while the unread response holds the slot");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    let ended = tokio::time::timeout(Duration::from_secs(60), stuck_call)
        .await
        .expect("the stalled call ends once its connection is closed")
        .expect("task");
    assert!(ended.is_err(), "no response reached the stalled client");
    let mut rows = None;
    for _ in 0..100 {
        if let Ok(r) = good
            .read_events(read_request("stall", "s", 0, i64::MAX))
            .await
        {
            rows = Some(r.into_inner().events.len());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rows, Some(500), "the slot serves the well-behaved client");
    #[allow(clippy::float_cmp)] // counters hold small integers exactly
    let once = metric(&server.scrape().await, STALLED) == 1.0;
    assert!(once, "one stalled connection counted");
    let status = server.terminate();
    assert!(status.success(), "graceful exit on SIGTERM: {status}");
}

/// grpcurl, installed by scripts/test (GRPCURL or $(go env GOPATH)/bin).
fn grpcurl() -> PathBuf {
    if let Ok(p) = std::env::var("GRPCURL") {
        return p.into();
    }
    let gopath = Command::new("go")
        .args(["env", "GOPATH"])
        .output()
        .expect("go env GOPATH");
    let path = PathBuf::from(String::from_utf8_lossy(&gopath.stdout).trim()).join("bin/grpcurl");
    assert!(
        path.exists(),
        "grpcurl not installed at {}: run scripts/test",
        path.display()
    );
    path
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_works_through_reflection_alone() {
    let server = ServerProcess::start(&[]).await;
    seeded(&server, "curl", 20).await;
    let addr = server.grpc.to_string();
    let list = run(Command::new(grpcurl()).args(["-plaintext", &addr, "list"]));
    assert!(list.contains("hourglass.v1.Hourglass"), "{list}");
    assert!(list.contains("grpc.health.v1.Health"), "{list}");
    let describe = run(Command::new(grpcurl()).args([
        "-plaintext",
        &addr,
        "describe",
        "hourglass.v1.ReadEventsRequest",
    ]));
    assert!(describe.contains("continuation_token"), "{describe}");
    let read = run(Command::new(grpcurl()).args([
        "-plaintext",
        "-d",
        r#"{"namespace":"curl","series_id":"s","start_time_micros":"0","end_time_micros":"100000","page_size":5}"#,
        &addr,
        "hourglass.v1.Hourglass/ReadEvents",
    ]));
    let v: serde_json::Value = serde_json::from_str(&read).expect("JSON response");
    assert_eq!(v["events"].as_array().map(Vec::len), Some(5));
    assert_eq!(v["partial"], true);
    assert_eq!(v["partialReason"], "PARTIAL_REASON_ROW_LIMIT");

    // An error's details decode through reflection too, not as raw bytes.
    let refused = Command::new(grpcurl())
        .args([
            "-plaintext",
            "-d",
            r#"{"namespace":"curl","series_id":"s","start_time_micros":"0","end_time_micros":"100000","page_size":0}"#,
            &addr,
            "hourglass.v1.Hourglass/ReadEvents",
        ])
        .output()
        .expect("run grpcurl");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("Code: InvalidArgument"), "{said}");
    for decoded in [
        r#""@type": "type.googleapis.com/google.rpc.ErrorInfo""#,
        r#""reason": "INVALID_FIELD""#,
        r#""@type": "type.googleapis.com/google.rpc.BadRequest""#,
        r#""field": "page_size""#,
    ] {
        assert!(said.contains(decoded), "{decoded} missing from {said}");
    }
}

fn python() -> String {
    std::env::var("HOURGLASS_PYTHON").unwrap_or_else(|_| {
        let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
        if std::path::Path::new(venv).exists() {
            venv.into()
        } else {
            "python3".into()
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_pages_to_the_end() {
    let server = ServerProcess::start(&[]).await;
    seeded(&server, "py", 2500).await;
    let gen = std::env::temp_dir().join(format!("hourglass-py-{}", std::process::id()));
    std::fs::create_dir_all(&gen).unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    run(Command::new(python())
        .current_dir(root)
        .args(["-m", "grpc_tools.protoc", "-Iproto"])
        .arg(format!("--python_out={}", gen.display()))
        .arg(format!("--grpc_python_out={}", gen.display()))
        .arg("proto/hourglass/v1/hourglass.proto"));
    for descending in [false, true] {
        let mut cmd = Command::new(python());
        cmd.current_dir(root)
            .env("PYTHONPATH", &gen)
            .args([
                "examples/python/read_series.py",
                "--server",
                &server.grpc.to_string(),
            ])
            .args([
                "--namespace",
                "py",
                "--series",
                "s",
                "--start",
                "0",
                "--end",
                "9223372036854775807",
            ])
            .args(["--page-size", "300", "--deadline-ms", "2000"]);
        if descending {
            cmd.arg("--descending");
        }
        let out = run(&mut cmd);
        assert_eq!(
            out.trim(),
            "events=2500 calls=9 partial=8",
            "descending={descending}"
        );
    }
}

#[test]
fn config_check_validates_and_masks_secrets() {
    let dir = std::env::temp_dir().join(format!("hourglass-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "listen = \"127.0.0.1:7000\"\nmax_budget = \"5s\"\ncassandra = [\"10.0.0.1:9042\", \"10.0.0.2:9042\"]\n\
         token-keys = \"k1:super-secret-value-123\"\nreadahead-buckets = 3\n",
    )
    .unwrap();
    let check = |file: &std::path::Path, extra: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hourglass"));
        cmd.args(["config", "check", "--config"])
            .arg(file)
            .env_remove("HOURGLASS_TOKEN_KEYS");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let out = check(&good, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("listen = 127.0.0.1:7000"), "{text}");
    assert!(text.contains("max-budget = 5s"), "{text}");
    assert!(
        text.contains("cassandra = 10.0.0.1:9042,10.0.0.2:9042"),
        "{text}"
    );
    assert!(text.contains("readahead-buckets = 3"), "{text}");
    assert!(!text.contains("super-secret"), "secret printed: {text}");
    // The Cassandra password from the environment is reported, not shown.
    let out = check(
        &good,
        &[
            ("HOURGLASS_CASSANDRA_USERNAME", "svc"),
            ("HOURGLASS_CASSANDRA_PASSWORD", "pa55-word-in-env"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cassandra-username = svc"), "{text}");
    assert!(text.contains("cassandra-password = set (hidden)"), "{text}");
    assert!(!text.contains("pa55-word"), "secret printed: {text}");
    // A username without any password is an error naming both.
    let out = check(&good, &[("HOURGLASS_CASSANDRA_USERNAME", "svc")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cassandra-username needs a password"));
    // Environment beats the file.
    let out = check(&good, &[("HOURGLASS_MAX_BUDGET", "7s")]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("max-budget = 7s"));

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "listen = \"127.0.0.1:7000\"\nmax_budgit = \"5s\"\n").unwrap();
    let out = check(&bad, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown key \"max_budgit\""));
    let bad = dir.join("bad-value.toml");
    std::fs::write(
        &bad,
        "max-budget = \"soon\"\ntoken-keys = \"k1:super-secret-value-123\"\n",
    )
    .unwrap();
    let out = check(&bad, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max-budget"));
}

/// Forwards connections from a free loopback port to `to`, passing what
/// the server sends at `bytes_per_sec` at most (a slow or distant
/// client). Returns the port.
async fn throttling_proxy(to: std::net::SocketAddr, bytes_per_sec: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind proxy");
    let port = listener.local_addr().expect("proxy addr").port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(to).await else {
                continue;
            };
            let (mut from_client, mut to_client) = client.into_split();
            let (mut from_server, mut to_server) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
            });
            tokio::spawn(async move {
                let tick = Duration::from_millis(10);
                let mut buf = vec![0u8; bytes_per_sec / 100];
                loop {
                    let n = match from_server.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if to_client.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(tick).await;
                }
            });
        }
    });
    port
}

/// A response still on its way to a slow client when the server is told
/// to stop reaches it whole: the drain waits until what the calls sent
/// has left, not only until the calls returned. (It stopped 100 ms after
/// the last call returned, and the client, 4 MB of its response still to
/// come at 1 MB/s, got UNAVAILABLE "connection reset".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_gets_its_whole_response_when_the_server_stops() {
    let server = ServerProcess::start(&[]).await;
    let mut client = server.client().await;
    create_namespace(&mut client, "slowdrain", 1_000_000, 1).await;
    let rows: i32 = 40_000;
    let events: Vec<_> = (0..rows)
        .map(|i| pb::Event {
            payload: vec![7u8; 64].into(),
            ..event("s", i64::from(i) * 10, &format!("{i:06}"))
        })
        .collect();
    write_all(&client, "slowdrain", events).await;
    let port = throttling_proxy(server.grpc, 1 << 20).await;
    let mut slow =
        pb::hourglass_client::HourglassClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .expect("connect through the proxy")
            .max_decoding_message_size(64 << 20);
    let read = tokio::spawn(async move {
        // A roomy SLO: the read must not end partial for its budget on a
        // loaded machine (a debug build beside six other tests' servers
        // read fewer than 40,000 rows in the 2 s default).
        slow.read_events(pb::ReadEventsRequest {
            page_size: Some(100_000),
            page_bytes_limit: Some(32 << 20),
            slo_millis: 20_000,
            ..read_request("slowdrain", "s", 0, i64::MAX)
        })
        .await
    });
    // The server reads the 40,000 rows in well under a second; their
    // 4 MB response then takes 4 s through the proxy.
    let mut served = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let scrape = server.scrape().await;
        if metric(&scrape, "hourglass_rows_delivered_total") >= f64::from(rows) {
            served = true;
            break;
        }
    }
    assert!(served, "the server answered the read");
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .expect("terminate");
    assert!(status.success(), "graceful exit on SIGTERM: {status}");
    let response = read
        .await
        .expect("read task")
        .expect("the whole response, though the server stopped")
        .into_inner();
    assert_eq!(response.events.len(), usize::try_from(rows).expect("rows"));
    assert!(!response.partial);
}
