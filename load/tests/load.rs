//! A short end-to-end run of the load tool against the real Cassandra: seed,
//! run, report, compare and chart.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::*;
use hourglass_load::connect::Credentials;
use hourglass_load::report::{self, Report};
use hourglass_load::{run, seed, Pattern, RunArgs, SeedArgs, Target};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_run_report_and_chart() {
    let server = TestServer::start().await;
    let url = format!("http://{}", server.addr);
    let dir = std::env::temp_dir().join(format!("hourglass-load-{}", std::process::id()));
    let seed_args = SeedArgs {
        target: Target {
            server: url.clone(),
            namespace: format!("loadtest{}", std::process::id()),
            series: 2,
            span_secs: 600,
            credentials: Default::default(),
        },
        rows_per_series: 3000,
        payload_bytes: 10,
        payload_max_bytes: Some(30),
        bucket_secs: 60,
        shards: 3,
        batch: 500,
        concurrency: 4,
        restart: true,
        quiet: true,
    };
    seed(&seed_args).await.expect("seed");
    // Seeding again resumes from the checkpoint and writes nothing twice.
    seed(&SeedArgs {
        restart: false,
        ..seed_args.clone()
    })
    .await
    .expect("reseed");

    let base = RunArgs {
        target: seed_args.target.clone(),
        rate: None,
        clients: 2,
        duration_secs: None,
        requests: Some(6),
        warmup_secs: 0.0,
        pattern: Pattern::Follow,
        range_fraction: 0.1,
        // No SLO: the page size alone ends responses, so counts are exact.
        slo_ms: None,
        deadline_ms: None,
        page_size: 700,
        descending: false,
        class: None,
        label: "follow".into(),
        report: dir.join("follow.json"),
        quiet: true,
    };
    let a = run(&base).await.expect("closed-loop run");
    assert_eq!(a.reads_completed, 6);
    assert_eq!(a.reads.count, 6);
    assert_eq!(a.requests, a.responses.count, "every call answered");
    assert_eq!(
        a.rows,
        6 * 3000,
        "every follow read returns the whole series"
    );
    assert!(a.errors_by_code.is_empty(), "{:?}", a.errors_by_code);
    // 3000 rows in pages of 700: four partial responses per read.
    assert_eq!(a.partial_by_reason["ROW_LIMIT"], 6 * 4);
    assert_eq!(a.responses.count, 6 * 5);
    let reloaded = Report::load(&base.report).expect("valid JSON report");
    assert_eq!(reloaded.rows, a.rows);
    assert_eq!(reloaded.config.page_size, 700);
    let hlog = std::fs::read_to_string(base.report.with_extension("hlog")).expect("HDR log");
    assert!(hlog.starts_with("#hourglass-load run follow"));

    // Through two servers taking the calls in turn: each call after each
    // server's first continues the scan its client left there, moved
    // forward past the other server's page; through one, every call after
    // the first continues the last one's.
    let other = TestServer::start().await;
    let one = RunArgs {
        clients: 1,
        requests: Some(1),
        label: "one".into(),
        report: dir.join("one.json"),
        ..base.clone()
    };
    let alone = run(&one).await.expect("one server");
    let turns = run(&RunArgs {
        target: Target {
            server: format!("{url}, http://{}", other.addr),
            ..seed_args.target.clone()
        },
        label: "turns".into(),
        report: dir.join("turns.json"),
        ..one.clone()
    })
    .await
    .expect("two servers in turn");
    for r in [&alone, &turns] {
        assert_eq!((r.rows, r.requests), (3000, 5), "{}", r.config.label);
    }
    assert_eq!((alone.continued, turns.continued), (4, 3));

    let b = run(&RunArgs {
        rate: Some(40.0),
        requests: Some(10),
        pattern: Pattern::RandomRange,
        deadline_ms: Some(500),
        label: "open".into(),
        report: dir.join("open.json"),
        ..base.clone()
    })
    .await
    .expect("open-loop run");
    assert_eq!(b.reads_completed, 10);
    assert_eq!(b.requests, 10);
    assert_eq!(b.responses.count, 10, "one call per random-range read");
    assert!(b.rows > 0 && b.rows <= 10 * 700);

    let table = report::compare(&a, &b);
    assert!(
        table.contains("response p99 ms") && table.contains("follow") && table.contains("open")
    );
    let svg = dir.join("latency.svg");
    report::chart(&[a, b], &svg).expect("chart");
    let text = std::fs::read_to_string(&svg).expect("svg written");
    assert!(text.starts_with("<svg"), "{}", &text[..40.min(text.len())]);
    assert!(
        text.contains("SLO 500 ms"),
        "the deadline is drawn as the SLO"
    );

    let err = run(&RunArgs {
        range_fraction: 0.0,
        ..base
    })
    .await
    .expect_err("bad fraction");
    assert!(err.to_string().contains("--range-fraction"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_ends_every_scan_and_fails_nothing_unexpectedly() {
    use hourglass_load::soak::{self, SoakArgs};
    use std::time::Duration;
    let server = ServerProcess::start(&["--max-scans", "6"]).await;
    let target = Target {
        server: format!("http://{}", server.grpc),
        namespace: format!("soak{}", std::process::id()),
        series: 2,
        span_secs: 60,
        credentials: Default::default(),
    };
    seed(&SeedArgs {
        target: target.clone(),
        rows_per_series: 5000,
        payload_bytes: 32,
        payload_max_bytes: None,
        bucket_secs: 10,
        shards: 2,
        batch: 1000,
        concurrency: 4,
        restart: true,
        quiet: true,
    })
    .await
    .expect("seed");
    let report = soak::run(&SoakArgs {
        target,
        metrics: format!("http://{}/metrics", server.metrics),
        clients: 8,
        duration: Duration::from_secs(6),
        sample_every: Duration::from_millis(500),
        max_rss_growth: 0.10,
        quiet: true,
    })
    .await
    .expect("soak");
    eprintln!("{}", report.summary());
    assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
    assert!(
        report.in_flight_after.abs() < 0.5,
        "scans left in flight: {}",
        report.in_flight_after
    );
    for kind in [
        "read:ok",
        "stream:ok",
        "deadline-read:ok",
        "write:ok",
        "bad-request:ok",
    ] {
        assert!(
            report.outcomes.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} in {:?}",
            report.outcomes
        );
    }
    assert!(report.samples.len() >= 10);
    assert!(
        report.samples.iter().all(|s| s.rss_bytes > 1e6),
        "RSS sampled"
    );
}

/// The load tool drives a server that takes only TLS and bearer tokens:
/// seeded and read back whole with a CA and a token file; refused
/// UNAUTHENTICATED without the token; refused at once, naming the flag,
/// for an https:// server without a CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_and_reads_a_tls_server_that_requires_a_bearer_token() {
    let Pki {
        dir, ca, cert, key, ..
    } = pki("load-tls");
    let token = "load-token-7d1c9e04";
    let auth = dir.join("auth.toml");
    let ns = format!("loadtls{}", std::process::id());
    std::fs::write(
        &auth,
        format!(
            "[[client]]\nname = \"load\"\ntoken_sha256 = \"{}\"\nread = [\"{ns}\"]\nwrite = [\"{ns}\"]\n",
            hourglass::auth::token_sha256(token)
        ),
    )
    .unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let server = ServerProcess::start(&[
        "--tls-cert",
        &path(&cert),
        "--tls-key",
        &path(&key),
        "--auth-file",
        &path(&auth),
    ])
    .await;
    let credentials = Credentials {
        ca_cert: Some(ca.clone()),
        bearer_token_file: Some(token_file),
        ..Credentials::default()
    };
    let target = Target {
        server: format!("https://localhost:{}", server.grpc.port()),
        namespace: ns,
        series: 1,
        span_secs: 120,
        credentials: credentials.clone(),
    };
    seed(&SeedArgs {
        target: target.clone(),
        rows_per_series: 1500,
        payload_bytes: 16,
        payload_max_bytes: None,
        bucket_secs: 60,
        shards: 2,
        batch: 500,
        concurrency: 2,
        restart: true,
        quiet: true,
    })
    .await
    .expect("seed over TLS with a token");
    let args = RunArgs {
        target: target.clone(),
        rate: None,
        clients: 1,
        duration_secs: None,
        requests: Some(2),
        warmup_secs: 0.0,
        pattern: Pattern::Follow,
        range_fraction: 1.0,
        slo_ms: None,
        deadline_ms: None,
        page_size: 400,
        descending: false,
        class: None,
        label: "tls".into(),
        report: dir.join("tls.json"),
        quiet: true,
    };
    let report = run(&args).await.expect("run over TLS with a token");
    assert!(
        report.errors_by_code.is_empty(),
        "{:?}",
        report.errors_by_code
    );
    assert_eq!(report.rows, 2 * 1500, "each read returns the whole series");
    assert_eq!(report.responses.count, 2 * 4, "1500 rows in pages of 400");
    let saved = std::fs::read_to_string(&args.report).unwrap();
    assert!(!saved.contains(token), "the report records no token");

    // Without the token every call is refused, and the run says so.
    let anonymous = RunArgs {
        target: Target {
            credentials: Credentials {
                ca_cert: Some(ca),
                ..Credentials::default()
            },
            ..target.clone()
        },
        report: dir.join("anonymous.json"),
        ..args.clone()
    };
    let refused = run(&anonymous)
        .await
        .expect("a run whose calls are refused");
    assert_eq!(refused.responses.count, 0);
    assert_eq!(
        refused.errors_by_code.get("Unauthenticated").copied(),
        Some(refused.requests),
        "{:?}",
        refused.errors_by_code
    );

    // An https:// server without a CA fails at once, naming the flag.
    let no_ca = RunArgs {
        target: Target {
            credentials: Credentials::default(),
            ..target
        },
        ..args
    };
    let err = format!("{:#}", run(&no_ca).await.expect_err("no CA"));
    assert!(err.contains("--ca-cert"), "{err}");
}
