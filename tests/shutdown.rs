//! Drain and shutdown of [`hourglass::server::run`], in process: the test
//! owns the shutdown future, so no signal or child process is needed.

// Test data: small counts and times converted between integer types.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod common;

use std::time::Duration;

use common::*;
use hourglass::api::pb;
use hourglass::engine::EngineConfig;

const ROWS: i64 = 30_000;

/// Small storage pages, one at a time: a read of the whole series takes
/// seconds, so shutdown surely lands in its middle.
fn slow_engine() -> EngineConfig {
    EngineConfig {
        max_storage_page: 20,
        min_storage_page: 16,
        initial_storage_page: 16,
        max_in_flight: 1,
        readahead_buckets: 0,
        ..EngineConfig::default()
    }
}

/// A hang guard, not a timing assertion.
const HANG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_a_running_read_partially_with_a_token_that_resumes() {
    let mut server = TestServer::start_config(|c| {
        c.engine = slow_engine();
        c.budget.default = Duration::from_secs(30);
    })
    .await;
    create_namespace(&mut server.client, "drain", 1_000_000, 1).await;
    let written: Vec<_> = (0..ROWS)
        .map(|i| event("s", i * 10, &format!("{i:06}")))
        .collect();
    write_all(&server.client, "drain", written.clone()).await;

    let req = pb::ReadEventsRequest {
        page_size: Some(100_000),
        page_bytes_limit: Some(32 << 20),
        ..read_request("drain", "s", 0, i64::MAX)
    };
    let mut client = server.client.clone();
    let read = tokio::spawn({
        let req = req.clone();
        async move { client.read_events(req).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::time::timeout(HANG, server.stop())
        .await
        .expect("run returns once its calls are answered");
    let page = read
        .await
        .expect("read task")
        .expect("answered, not refused")
        .into_inner();
    assert!(page.partial, "the read was cut by the drain");
    assert_eq!(
        page.partial_reason,
        pb::PartialReason::ServerShutdown as i32
    );
    assert!(
        !page.events.is_empty(),
        "rows read before the drain are returned"
    );
    assert!(page.events.len() < ROWS as usize);

    // Another server (same keys, same keyspace) resumes exactly after it.
    let mut next = TestServer::start().await;
    let (rest, _) = read_to_end(
        &mut next.client,
        pb::ReadEventsRequest {
            continuation_token: page.continuation_token,
            ..req
        },
    )
    .await;
    let all: Vec<_> = page.events.iter().chain(&rest).map(key).collect();
    let want: Vec<_> = written.iter().map(key).collect();
    assert_eq!(all, want, "every row exactly once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_returns_after_the_drain_timeout_when_a_call_never_finishes() {
    let mut server = TestServer::start_config(|c| {
        c.drain_timeout = Duration::from_millis(500);
    })
    .await;
    create_namespace(&mut server.client, "unread", 1_000_000, 1).await;
    let events = (0..50_000)
        .map(|i| pb::Event {
            payload: vec![7u8; 64].into(),
            ..event("s", i * 10, &format!("{i:06}"))
        })
        .collect();
    write_all(&server.client, "unread", events).await;
    // A stream whose client takes one message and then stops reading keeps
    // its call open: only the drain timeout ends it.
    let mut stream = server
        .client
        .stream_events(pb::ReadEventsRequest {
            page_size: Some(100_000),
            page_bytes_limit: Some(32 << 20),
            ..read_request("unread", "s", 0, i64::MAX)
        })
        .await
        .expect("stream")
        .into_inner();
    assert!(stream.message().await.expect("first message").is_some());
    tokio::time::timeout(HANG, server.stop())
        .await
        .expect("run returns after the drain timeout although the call is open");
    drop(stream);
}

/// Once the drain has begun, every new Hourglass call on a connection it
/// keeps open fails UNAVAILABLE `SERVER_DRAINING` with a RetryInfo that
/// asks for a pause (on the same connection a retry meets the same server),
/// and a refused write writes nothing. Before, only reads were refused, and
/// with a zero wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_calls_of_every_kind_are_refused_once_the_drain_begins() {
    use tonic_types::StatusExt as _;
    let mut server = TestServer::start_config(|c| c.drain_timeout = Duration::from_secs(3)).await;
    create_namespace(&mut server.client, "refused", 1_000_000, 1).await;
    let events: Vec<_> = (0..500)
        .map(|i| event("s", i * 10, &format!("{i:06}")))
        .collect();
    write_all(&server.client, "refused", events).await;
    // A read whose client takes nothing of its response (an HTTP/2 window
    // of 0) stays in flight: the drain keeps connections open meanwhile.
    let mut stuck = unread_client(server.addr).await;
    let stuck_call = tokio::spawn(async move {
        stuck
            .read_events(read_request("refused", "s", 0, i64::MAX))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut client = server.client.clone();
    let stopped = tokio::spawn(tokio::time::timeout(HANG, server.stop()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let late = pb::Event {
        payload: b"written during the drain".to_vec().into(),
        ..event("late", 1, "x")
    };
    let refusals = [
        (
            "WriteEvents",
            client
                .write_events(pb::WriteEventsRequest {
                    namespace: "refused".into(),
                    events: vec![late],
                })
                .await
                .map(drop),
        ),
        (
            "CreateNamespace",
            client
                .create_namespace(namespace_request("refused_new", 1_000_000, 1))
                .await
                .map(drop),
        ),
        (
            "GetNamespace",
            client
                .get_namespace(pb::GetNamespaceRequest {
                    name: "refused".into(),
                })
                .await
                .map(drop),
        ),
        (
            "ReadEvents",
            client
                .read_events(read_request("refused", "s", 0, i64::MAX))
                .await
                .map(drop),
        ),
    ];
    for (method, result) in refusals {
        let status = result.expect_err(method);
        assert_eq!(
            status.code(),
            tonic::Code::Unavailable,
            "{method}: {status:?}"
        );
        assert_eq!(
            reason_of(&status),
            "SERVER_DRAINING",
            "{method}: {status:?}"
        );
        let wait = status
            .get_details_retry_info()
            .and_then(|r| r.retry_delay)
            .unwrap_or_default();
        assert!(wait > Duration::ZERO, "{method}: a RetryInfo with a pause");
    }
    stuck_call.abort();
    stopped
        .await
        .expect("stop task")
        .expect("run returns once the drain is over");

    // Nothing the refused calls asked for happened.
    let mut next = TestServer::start().await;
    let (late, _) = read_to_end(
        &mut next.client,
        read_request("refused", "late", 0, i64::MAX),
    )
    .await;
    assert!(late.is_empty(), "the refused write wrote nothing");
    let missing = next
        .client
        .get_namespace(pb::GetNamespaceRequest {
            name: "refused_new".into(),
        })
        .await
        .expect_err("the refused create created nothing");
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_connection_does_not_hold_up_shutdown() {
    // A drain timeout far beyond the hang guard: only calls may hold it.
    let mut server = TestServer::start_config(|c| c.drain_timeout = 10 * HANG).await;
    create_namespace(&mut server.client, "idle", 1_000_000, 1).await;
    // Connections stay open and idle: the client's channel (kept alive),
    // and a bare TCP connection that never speaks HTTP/2.
    let client = server.client.clone();
    let bare = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    tokio::time::timeout(HANG, server.stop())
        .await
        .expect("run returns at once: no call is in flight");
    drop((client, bare));
}

/// A health Watch sees NOT_SERVING as the drain begins, then ends
/// UNAVAILABLE once connections close (a Watch of an unknown service too); it does not hold the drain (the
/// drain timeout here is far beyond the hang guard).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_watch_sees_not_serving_then_ends_and_does_not_hold_up_shutdown() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let server = TestServer::start_config(|c| c.drain_timeout = 10 * HANG).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    // A health Watch of `service`, and the first status it sent.
    let watch_of = |service: &'static str| {
        let mut health = HealthClient::new(channel.clone());
        async move {
            let mut stream = health
                .watch(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .expect("watch")
                .into_inner();
            let first = stream.message().await.expect("a status").expect("one");
            (stream, first.status())
        }
    };
    let (mut watch, first) = watch_of("hourglass.v1.Hourglass").await;
    assert_eq!(first, ServingStatus::Serving);
    // A Watch of a service the server does not know stays open too (the
    // health protocol: SERVICE_UNKNOWN, not an error) and ends the same way.
    let (mut unknown, first) = watch_of("no.such.Service").await;
    assert_eq!(first, ServingStatus::ServiceUnknown);
    let stopped = tokio::spawn(tokio::time::timeout(HANG, server.stop()));
    let mut statuses = Vec::new();
    let end = loop {
        match watch.message().await {
            Ok(Some(m)) => statuses.push(m.status()),
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    assert_eq!(statuses, [ServingStatus::NotServing]);
    let end = end.expect("the stream ends with a status");
    assert_eq!(end.code(), tonic::Code::Unavailable, "{end:?}");
    let end = unknown.message().await.expect_err("ends with a status");
    assert_eq!(end.code(), tonic::Code::Unavailable, "{end:?}");
    stopped
        .await
        .expect("stop task")
        .expect("run returns at once: no call is in flight");
}

/// With a drain delay, health says NOT_SERVING at the signal while the
/// server goes on serving as usual (new connections, whole reads); the
/// drain comes after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_the_drain_delay_health_says_not_serving_and_calls_are_served() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    const DELAY: Duration = Duration::from_secs(3);
    let server = TestServer::start_config(|c| c.drain_delay = DELAY).await;
    let addr = server.addr;
    let mut client = server.client.clone();
    create_namespace(&mut client, "drain_delay", 1_000_000, 2).await;
    let events: Vec<_> = (0..50)
        .map(|i| event("s", i * 1000, &format!("{i:03}")))
        .collect();
    write_all(&client, "drain_delay", events.clone()).await;
    let signalled = tokio::time::Instant::now();
    let stopped = tokio::spawn(tokio::time::timeout(HANG, server.stop()));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("a new connection during the delay");
    let mut health = HealthClient::new(channel.clone());
    let mut status = ServingStatus::Serving;
    for _ in 0..100 {
        status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("check")
            .into_inner()
            .status();
        if status == ServingStatus::NotServing {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status, ServingStatus::NotServing);
    let mut fresh = pb::hourglass_client::HourglassClient::new(channel);
    let (got, pages) = read_to_end(&mut fresh, read_request("drain_delay", "s", 0, i64::MAX)).await;
    assert!(
        signalled.elapsed() < DELAY,
        "the read ended within the delay (else this test proves nothing)"
    );
    assert_eq!(got, events, "served whole during the delay");
    assert!(pages.iter().all(|p| !p.partial));
    stopped
        .await
        .expect("stop task")
        .expect("run returns once the delay and the drain are over");
    assert!(
        signalled.elapsed() >= DELAY,
        "the drain waited out the delay"
    );
}
