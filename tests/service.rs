//! The gRPC service over the in-process fake store, under tokio's paused
//! clock: the namespace lookup of a read stays inside the read's budget,
//! namespaces known as a replica starts are read without one, and unknown
//! namespaces are remembered briefly instead of asked for on every read.

use std::sync::Arc;
use std::time::Duration;

use hourglass::api::pb;
use hourglass::api::pb::hourglass_server::Hourglass;
use hourglass::engine::budget::BudgetConfig;
use hourglass::engine::{EngineConfig, ReadEngine};
use hourglass::model::Namespace;
use hourglass::server::{HourglassService, NAMESPACE_MISS_TTL};
use hourglass::storage::memory::MemoryStore;
use hourglass::storage::Storage;
use hourglass::token::KeyRing;
use tokio::time::Instant;
use tonic::{Code, Request};
use tonic_types::StatusExt;

const SLO_MS: i64 = 20;

fn service(store: &MemoryStore) -> HourglassService<MemoryStore> {
    let engine = Arc::new(ReadEngine::new(
        Arc::new(store.clone()),
        EngineConfig::default(),
    ));
    let keys = KeyRing::parse("t:0123456789abcdef0123", Duration::from_secs(60)).expect("keys");
    HourglassService::new(engine, keys, BudgetConfig::default())
}

/// [`service`] with adaptive admission under `slots` static slots (for the
/// server and for each namespace), the limit starting at `initial` and
/// never below `min`.
fn adaptive_service(
    store: &MemoryStore,
    slots: usize,
    min: usize,
    initial: usize,
) -> HourglassService<MemoryStore> {
    use hourglass::admission::{Admission, AdmissionConfig};
    use hourglass::bulkhead::Bulkhead;
    service(store).with_admission(Admission::new(
        Bulkhead::new(slots, slots),
        AdmissionConfig {
            adaptive: true,
            min_limit: min,
            initial_limit: initial,
        },
    ))
}

fn read(namespace: &str) -> Request<pb::ReadEventsRequest> {
    Request::new(pb::ReadEventsRequest {
        namespace: namespace.into(),
        series_id: "s".into(),
        start_time_micros: 0,
        end_time_micros: 1_000,
        slo_millis: SLO_MS,
        ..Default::default()
    })
}

async fn create(store: &MemoryStore, name: &str) {
    let ns = Namespace::checked(name.into(), 1_000, 1, 0).expect("valid");
    store.create_namespace(&ns).await.expect("create");
}

/// Writes `n` events of series "s" to `ns`, at times 0 to n - 1 (ids
/// `e000000` on), each with a payload of `payload` bytes.
async fn write_series(store: &MemoryStore, ns: &Namespace, n: i64, payload: usize) {
    let written: Vec<hourglass::model::NewEvent> = (0..n)
        .map(|i| hourglass::model::NewEvent {
            series_id: "s".into(),
            row: hourglass::model::Row {
                key: hourglass::model::Key::new(i, format!("e{i:06}")),
                payload: vec![b'x'; payload].into(),
                tags: Default::default(),
            },
        })
        .collect();
    store.write_events(ns, &written).await.expect("write");
}

#[tokio::test(start_paused = true)]
async fn a_slow_namespace_lookup_ends_the_read_within_its_budget() {
    let store = MemoryStore::new();
    create(&store, "slow").await;
    store.set_namespace_latency(Duration::from_secs(10));
    let svc = service(&store);
    let began = Instant::now();
    let status = svc
        .read_events(read("slow"))
        .await
        .expect_err("no time left");
    assert!(
        began.elapsed() <= Duration::from_millis(SLO_MS as u64),
        "waited {:?} on the lookup",
        began.elapsed()
    );
    assert_eq!(status.code(), Code::DeadlineExceeded);
    // A lookup that outwaits what storage takes for a small page is
    // storage being late, not a budget too small for the read, and says
    // what it waited on.
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "STORAGE_LATE", "{status:?}");
    assert_eq!(info.metadata["in_flight"], "1");
    let waited: u64 = info.metadata["waited_micros"].parse().expect("micros");
    let expected: u64 = info.metadata["expected_micros"].parse().expect("micros");
    assert!(
        waited > expected && waited <= 1_000 * SLO_MS as u64,
        "waited {waited} us, expected at most {expected} us"
    );

    // A lookup given up before a slow small page is due is a budget too
    // small for storage, not storage being late.
    create(&store, "short").await;
    let status = svc
        .read_events(Request::new(pb::ReadEventsRequest {
            slo_millis: 1,
            ..read("short").into_inner()
        }))
        .await
        .expect_err("no time left");
    assert_eq!(status.code(), Code::DeadlineExceeded);
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "BUDGET_TOO_SMALL", "{status:?}");
    let waited: u64 = info.metadata["waited_micros"].parse().expect("micros");
    let expected: u64 = info.metadata["expected_micros"].parse().expect("micros");
    assert!(
        waited <= expected,
        "waited {waited} us, expected at most {expected} us"
    );

    // Once storage answers in time the namespace is cached: no lookup waits.
    store.set_namespace_latency(Duration::from_millis(1));
    svc.read_events(read("slow")).await.expect("read");
    store.set_namespace_latency(Duration::from_secs(10));
    let began = Instant::now();
    let page = svc
        .read_events(read("slow"))
        .await
        .expect("cached")
        .into_inner();
    assert!(!page.partial);
    assert!(began.elapsed() < Duration::from_millis(SLO_MS as u64));
    // "slow" twice (given up, then answered), "short" once.
    assert_eq!(store.namespace_lookups(), 3);
}

/// A replica caches the namespaces storage holds as it starts: its first
/// reads of them ask storage nothing.
#[tokio::test(start_paused = true)]
async fn preloaded_namespaces_are_read_without_a_lookup() {
    let store = MemoryStore::new();
    create(&store, "one").await;
    create(&store, "two").await;
    let svc = service(&store);
    assert_eq!(svc.preload_namespaces(10).await.expect("listed"), 2);
    for name in ["one", "two"] {
        let page = svc.read_events(read(name)).await.expect("read");
        assert!(!page.into_inner().partial);
    }
    assert_eq!(store.namespace_lookups(), 0);
    // At most the limit.
    let svc = service(&store);
    assert_eq!(svc.preload_namespaces(1).await.expect("listed"), 1);
    svc.read_events(read("one")).await.expect("read");
    svc.read_events(read("two")).await.expect("read");
    assert_eq!(
        store.namespace_lookups(),
        1,
        "the one left out is looked up"
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_namespaces_are_remembered_briefly() {
    let store = MemoryStore::new();
    let svc = service(&store);
    for _ in 0..3 {
        let status = svc.read_events(read("nope")).await.expect_err("unknown");
        assert_eq!(status.code(), Code::NotFound);
    }
    assert_eq!(store.namespace_lookups(), 1, "the miss is remembered");

    tokio::time::advance(NAMESPACE_MISS_TTL).await;
    let status = svc.read_events(read("nope")).await.expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(store.namespace_lookups(), 2, "asked again after the TTL");

    // Created through this replica: known at once, the miss forgotten.
    svc.create_namespace(Request::new(pb::CreateNamespaceRequest {
        namespace: Some(pb::Namespace {
            name: "nope".into(),
            bucket_width_micros: 1_000,
            shards: 1,
            retention_seconds: 0,
        }),
    }))
    .await
    .expect("create");
    let page = svc.read_events(read("nope")).await.expect("now it exists");
    assert!(!page.into_inner().partial);
    assert_eq!(
        store.namespace_lookups(),
        2,
        "a namespace created through this replica is read without a lookup"
    );

    // Created elsewhere (straight in storage): NOT_FOUND at most for the TTL.
    let status = svc
        .read_events(read("elsewhere"))
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    create(&store, "elsewhere").await;
    tokio::time::advance(NAMESPACE_MISS_TTL).await;
    svc.read_events(read("elsewhere"))
        .await
        .expect("found after the TTL");
}

/// A read that fails because not one row came within its budget is how
/// reads fail on a saturated replica: it cuts the adaptive limit, though it
/// never answered late (it fails at its stop, before the deadline).
#[tokio::test(start_paused = true)]
async fn reads_failing_for_want_of_budget_cut_the_admission_limit() {
    let store = MemoryStore::new();
    create(&store, "n").await;
    store.set_latency(|_| Duration::from_secs(1));
    store.set_index_latency(Duration::from_secs(1));
    let svc = adaptive_service(&store, 100, 2, 20);
    let mut reasons = Vec::new();
    for _ in 0..100 {
        let e = svc
            .read_events(read("n"))
            .await
            .expect_err("no row in time");
        assert_eq!(e.code(), Code::DeadlineExceeded);
        reasons.push(e.get_details_error_info().expect("ErrorInfo").reason);
    }
    // The first reads' pages were late for what pages usually take (storage
    // late, as in a stall); once the engine learnt that pages take a second
    // for good (what pages usually take follows the line over about twenty
    // pages: 14 reads here), none could land in the budget (too small).
    // Both cut the limit.
    let late = reasons.iter().take_while(|r| *r == "STORAGE_LATE").count();
    assert!((1..=20).contains(&late), "{reasons:?}");
    assert!(
        reasons[late..].iter().all(|r| r == "BUDGET_TOO_SMALL"),
        "{reasons:?}"
    );
    let limit = svc.admission_limit().expect("adaptive");
    assert!(limit < 10, "the limit stayed at {limit}");
}

/// A read whose budget could not cover the smallest page however idle the
/// replica (a deadline within the server's margin: a budget of zero) says
/// nothing of the replica's load and leaves the limit alone. Before, one
/// client looping such calls held the limit at its floor for every other.
#[tokio::test(start_paused = true)]
async fn reads_whose_budget_is_zero_leave_the_admission_limit_alone() {
    let store = MemoryStore::new();
    create(&store, "n").await;
    let svc = adaptive_service(&store, 100, 2, 20);
    for _ in 0..100 {
        let mut req = read("n");
        // 1 ms, within the 5 ms margin.
        req.metadata_mut()
            .insert("grpc-timeout", "1m".parse().expect("ascii"));
        let e = svc.read_events(req).await.expect_err("no budget");
        assert_eq!(e.code(), Code::DeadlineExceeded);
        let info = e.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "BUDGET_TOO_SMALL");
        assert_eq!(info.metadata["budget_micros"], "0");
    }
    assert_eq!(svc.admission_limit(), Some(20));
}

#[tokio::test(start_paused = true)]
async fn batch_reads_yield_to_interactive_ones_when_the_limit_is_near() {
    let store = MemoryStore::new();
    create(&store, "n").await;
    store.set_index_latency(Duration::from_secs(1));
    // A limit of 4: batch reads may hold 3 slots.
    let svc = Arc::new(adaptive_service(&store, 100, 4, 4));
    let call = |class: &'static str| {
        let mut r = read("n");
        r.get_mut().slo_millis = 5_000;
        r.metadata_mut()
            .insert("x-hourglass-class", class.parse().expect("ascii"));
        let svc = svc.clone();
        tokio::spawn(async move { svc.read_events(r).await })
    };
    let batch: Vec<_> = (0..3).map(|_| call("batch")).collect();
    // Let the three start and take their slots (they wait on storage).
    tokio::time::sleep(Duration::from_millis(10)).await;
    let refused = call("batch")
        .await
        .expect("task")
        .expect_err("over the batch share");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(
        refused.get_details_error_info().expect("ErrorInfo").reason,
        "BATCH_SHARE"
    );
    assert!(refused.get_details_retry_info().is_some());
    let interactive = call("interactive");
    for read in batch {
        read.await
            .expect("task")
            .expect("a batch read admitted earlier");
    }
    interactive
        .await
        .expect("task")
        .expect("an interactive read finds the room batch reads leave");
}

/// The client helper repeats a call refused for load after the wait its
/// RetryInfo suggests, over a real connection (real time: a read holds the
/// only scan slot for 100 ms; each refusal suggests 25-75 ms).
#[tokio::test]
async fn the_client_helper_waits_out_refusals_for_load() {
    use futures::StreamExt;
    use hourglass::admission::{Admission, AdmissionConfig};
    use hourglass::bulkhead::Bulkhead;
    use hourglass::client::{follow, FollowOptions};
    let store = MemoryStore::new();
    create(&store, "n").await;
    // However the read is planned (index query or a single bucket's page).
    store.set_latency(|_| Duration::from_millis(100));
    store.set_index_latency(Duration::from_millis(100));
    let svc = service(&store).with_admission(Admission::new(
        Bulkhead::new(1, 1),
        AdmissionConfig {
            adaptive: false,
            ..AdmissionConfig::default()
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::hourglass_server::HourglassServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let client = pb::hourglass_client::HourglassClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let req = || pb::ReadEventsRequest {
        slo_millis: 2_000,
        ..read("n").into_inner()
    };
    for retries in [0, 10] {
        let holder = {
            let mut c = client.clone();
            let r = req();
            tokio::spawn(async move { c.read_events(r).await })
        };
        // The holder has the slot once its read asks storage (a fixed sleep
        // here lost the race on a busy machine: the follower got the slot).
        let began = std::time::Instant::now();
        while store.in_flight() == 0 {
            assert!(
                began.elapsed() < Duration::from_secs(10),
                "the holder never read"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let options = FollowOptions {
            overload_retries: retries,
            ..FollowOptions::default()
        };
        let pages: Vec<_> = follow(client.clone(), req(), options).collect().await;
        holder.await.expect("task").expect("the holder's read");
        if retries == 0 {
            let refused = pages[0].as_ref().expect_err("the slot is taken");
            assert_eq!(refused.code(), Code::ResourceExhausted);
        } else {
            // At least 10 x 25 ms of waits cover the 100 ms hold.
            assert!(pages.iter().all(Result::is_ok), "{pages:?}");
            assert!(!pages.last().expect("a page").as_ref().expect("ok").partial);
        }
    }
}

/// Follows StreamEvents of series "s" in `namespace` through `service` to
/// its end, each stream under `slo_ms`. Returns the events and, per
/// stream, how many it sent and whether it continued a held scan; panics
/// on a stream that fails.
async fn follow_streams(
    service: &HourglassService<MemoryStore>,
    namespace: &str,
    slo_ms: i64,
) -> (Vec<pb::Event>, Vec<(usize, bool)>) {
    use tokio_stream::StreamExt as _;
    let mut events = Vec::new();
    let mut streams = Vec::new();
    let mut token = String::new();
    loop {
        let req = Request::new(pb::ReadEventsRequest {
            namespace: namespace.into(),
            series_id: "s".into(),
            start_time_micros: i64::MIN,
            end_time_micros: i64::MAX,
            slo_millis: slo_ms,
            page_size: Some(100_000),
            continuation_token: token.clone(),
            ..Default::default()
        });
        let n = streams.len();
        let mut stream = match service.stream_events(req).await {
            Ok(s) => s.into_inner(),
            Err(e) => panic!("stream {n} refused: {e:?}"),
        };
        let mut sent = 0;
        let end = loop {
            let msg = match stream.next().await {
                Some(Ok(msg)) => msg,
                Some(Err(e)) => panic!("stream {n} failed after {sent} events: {e:?}"),
                None => panic!("stream {n} ended without its end message"),
            };
            match msg.message.expect("a message") {
                pb::stream_events_response::Message::Batch(b) => {
                    // As a client decodes it: encoded events are events.
                    use prost::Message as _;
                    let b = pb::EventBatch::decode(b.encode_to_vec().as_slice()).expect("decodes");
                    sent += b.events.len();
                    events.extend(b.events);
                }
                pb::stream_events_response::Message::End(end) => break end,
            }
        };
        let continued = end.stats.as_ref().is_some_and(|s| s.continued);
        streams.push((sent, continued));
        if !end.partial {
            return (events, streams);
        }
        token = end.continuation_token;
    }
}

/// A stream stopped by its budget leaves its last rows to the next stream
/// of its held scan, as a ReadEvents call does: it sends them only once a
/// later page lands, so when the budget ends first they are still its
/// own. A continued stream then has rows to send at once, even while the
/// page it waits on outlasts its whole budget (a storage GC pause).
/// Without them, the stream after each slow page failed
/// DEADLINE_EXCEEDED on a healthy scan.
#[tokio::test(start_paused = true)]
async fn a_continued_stream_has_rows_even_while_a_page_outlasts_its_budget() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let store = MemoryStore::new();
    let ns = Namespace::checked("streams".into(), 1_000, 4, 0).expect("valid");
    store.create_namespace(&ns).await.expect("create");
    write_series(&store, &ns, 20_000, 8).await;
    let pages = Arc::new(AtomicUsize::new(0));
    store.set_latency(move |_| {
        // Every seventh page stalls for two and a half budgets.
        if pages.fetch_add(1, Ordering::Relaxed) % 7 == 6 {
            Duration::from_millis(25)
        } else {
            Duration::from_millis(1)
        }
    });
    let config = EngineConfig {
        response_reserve: Duration::ZERO,
        response_reserve_per_row: Duration::ZERO,
        response_cost: None,
        timer_slack: Duration::ZERO,
        ..EngineConfig::default()
    };
    let engine = Arc::new(ReadEngine::new(Arc::new(store.clone()), config));
    let keys = KeyRing::parse("t:0123456789abcdef0123", Duration::from_secs(60)).expect("keys");
    let service = HourglassService::new(engine, keys, BudgetConfig::default());

    let (events, streams) = follow_streams(&service, "streams", 10).await;
    let keys: Vec<(i64, &str)> = events
        .iter()
        .map(|e| (e.event_time_micros, e.event_id.as_str()))
        .collect();
    let want: Vec<(i64, String)> = (0..20_000).map(|i| (i, format!("e{i:06}"))).collect();
    let want: Vec<(i64, &str)> = want.iter().map(|(t, id)| (*t, id.as_str())).collect();
    assert!(
        keys == want,
        "{} events, not each of 20,000 once in order",
        keys.len()
    );
    assert!(streams.len() > 10, "the budget ended most streams");
    for (i, (sent, continued)) in streams.iter().enumerate().skip(1) {
        assert!(continued, "stream {i} continued the held scan");
        assert!(*sent > 0, "stream {i} sent nothing");
    }
}

/// Streams whose clients stopped reading keep their static slots (what the
/// server buffers for them stays bounded) but give their share of the
/// adaptive limit back once their queues are full, long before their 30 s
/// budgets end: other reads are admitted again. Before, eight such
/// streams held a limit of six until the send stall closed their
/// connections, 10-20 s on, and every other read was refused meanwhile;
/// then, with the share going back at the scan's end, streams under a
/// long SLO still held it for their budgets.
#[tokio::test(start_paused = true)]
async fn streams_whose_clients_stopped_reading_give_back_the_adaptive_limit() {
    let store = MemoryStore::new();
    let ns = Namespace::checked("wide".into(), 1_000_000_000, 4, 0).expect("valid");
    store.create_namespace(&ns).await.expect("create");
    write_series(&store, &ns, 8_000, 1 << 10).await;
    store.set_latency(|_| Duration::from_millis(1));
    create(&store, "n").await;
    let svc = adaptive_service(&store, 8, 2, 2);
    let stalled_read = || {
        Request::new(pb::ReadEventsRequest {
            namespace: "wide".into(),
            series_id: "s".into(),
            start_time_micros: 0,
            end_time_micros: 1_000_000,
            slo_millis: 30_000,
            // Past the 8,000 rows of 8 MiB: the scans end only with their
            // budget.
            page_size: Some(100_000),
            page_bytes_limit: Some(32 << 20),
            ..Default::default()
        })
    };
    // Their responses are never polled: 8 MiB of rows for a queue of 4.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(svc.stream_events(stalled_read()).await.expect("admitted"));
    }
    let refused = svc
        .read_events(read("n"))
        .await
        .expect_err("the limit is taken");
    assert_eq!(
        refused.get_details_error_info().expect("ErrorInfo").reason,
        "CONCURRENCY_LIMIT"
    );
    // Once the stalled streams' queues are full, reads are admitted.
    tokio::time::sleep(Duration::from_millis(150)).await;
    for _ in 0..10 {
        svc.read_events(read("n"))
            .await
            .expect("admitted beside the stalled streams");
    }
    drop(stalled);
}

/// Calls stuck on storage through a stall fail `STORAGE_LATE` (retry),
/// not `BUDGET_TOO_SMALL` (a longer budget): the model's line and tail
/// widen with the stall's first pages, but a page that waited three times
/// what a page usually takes is late whatever they say. Before, every
/// call after the first four said "storage may take up to" 23-37 ms,
/// more than the 20 ms budget, and advised a longer one. Once storage
/// stays slow, the budget is too small.
#[tokio::test(start_paused = true)]
async fn calls_through_a_storage_stall_say_storage_was_late() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let store = MemoryStore::new();
    create(&store, "n").await;
    let ns = Namespace::checked("n".into(), 1_000, 1, 0).expect("valid");
    write_series(&store, &ns, 100, 8).await;
    let latency = Arc::new(AtomicU64::new(1));
    let now = latency.clone();
    store.set_latency(move |_| Duration::from_millis(now.load(Ordering::Relaxed)));
    store.set_index_latency(Duration::from_millis(1));
    let svc = service(&store);
    for _ in 0..20 {
        svc.read_events(read("n")).await.expect("a healthy read");
    }
    latency.store(150, Ordering::Relaxed);
    let mut reasons = Vec::new();
    for _ in 0..60 {
        let e = svc
            .read_events(read("n"))
            .await
            .expect_err("no row through the stall");
        assert_eq!(e.code(), Code::DeadlineExceeded);
        let info = e.get_details_error_info().expect("ErrorInfo");
        // Storage late says to retry; a budget too small does not.
        assert_eq!(
            e.get_details_retry_info().is_some(),
            info.reason == "STORAGE_LATE",
            "{e:?}"
        );
        reasons.push(info.reason);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        reasons[..10].iter().all(|r| r == "STORAGE_LATE"),
        "{reasons:?}"
    );
    assert!(
        reasons[40..].iter().all(|r| r == "BUDGET_TOO_SMALL"),
        "{reasons:?}"
    );
    latency.store(1, Ordering::Relaxed);
    svc.read_events(read("n")).await.expect("the stall is over");
}
