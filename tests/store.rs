//! The bucketed store through the gRPC API, against the real Cassandra.

mod common;

use common::*;
use hourglass::api::pb;
use hourglass::storage::Storage;

const WIDTH: i64 = 10_000; // 10 ms buckets

/// Events over many buckets: several ids per time, times at bucket edges,
/// negative times.
fn wide_events(series: &str) -> Vec<pb::Event> {
    let mut v = Vec::new();
    for i in -60i64..240 {
        let t = i * 1_000 + (i % 3); // about ten per bucket, some at edges
        for id in ["a", "b"] {
            v.push(event(series, t, &format!("{id}{}", i.rem_euclid(7))));
        }
    }
    for edge in [-WIDTH, -1, 0, WIDTH - 1, WIDTH, 5 * WIDTH, 5 * WIDTH - 1] {
        v.push(event(series, edge, "edge"));
    }
    v
}

#[tokio::test]
async fn paging_in_both_orders_yields_exactly_what_was_written() {
    let mut server = TestServer::start().await;
    for (ns, shards) in [("paging1", 1), ("paging3", 3)] {
        create_namespace(&mut server.client, ns, WIDTH, shards).await;
        let written = wide_events("s");
        write_all(&server.client, ns, written.clone()).await;
        for page_size in [1u32, 7, 1000] {
            for order in [pb::Order::Ascending, pb::Order::Descending] {
                let req = pb::ReadEventsRequest {
                    page_size: Some(page_size),
                    order: order as i32,
                    ..read_request(ns, "s", i64::MIN, i64::MAX)
                };
                let (got, pages) = read_to_end(&mut server.client, req).await;
                let want = expected(&written, i64::MIN, i64::MAX, order == pb::Order::Descending);
                assert_eq!(got, want, "ns {ns} page {page_size} {order:?}");
                let full_pages = want.len() / page_size as usize;
                assert!(pages.len() >= full_pages, "{} pages", pages.len());
                assert!(pages.len() <= full_pages + 1, "{} pages", pages.len());
                for p in &pages[..pages.len() - 1] {
                    assert_eq!(p.events.len(), page_size as usize);
                    assert_eq!(p.partial_reason(), pb::PartialReason::RowLimit);
                }
            }
        }
    }
}

#[tokio::test]
async fn ranges_crossing_bucket_boundaries_return_exactly_their_rows() {
    let mut server = TestServer::start().await;
    create_namespace(&mut server.client, "ranges", WIDTH, 2).await;
    let written = wide_events("r");
    write_all(&server.client, "ranges", written.clone()).await;
    let cuts = [
        -WIDTH - 1,
        -WIDTH,
        -1,
        0,
        1,
        WIDTH - 1,
        WIDTH,
        2 * WIDTH + 3,
        5 * WIDTH,
        240_000,
    ];
    for &start in &cuts {
        for &end in cuts.iter().filter(|&&e| e > start) {
            for order in [pb::Order::Ascending, pb::Order::Descending] {
                let req = pb::ReadEventsRequest {
                    page_size: Some(13),
                    order: order as i32,
                    ..read_request("ranges", "r", start, end)
                };
                let (got, pages) = read_to_end(&mut server.client, req).await;
                let want = expected(&written, start, end, order == pb::Order::Descending);
                assert_eq!(got, want, "[{start}, {end}) {order:?}");
                let last = pages.last().expect("a response");
                let done_at = if order == pb::Order::Ascending {
                    end
                } else {
                    start
                };
                assert_eq!(last.watermark_micros, done_at);
            }
        }
    }
}

#[tokio::test]
async fn empty_and_invalid_ranges() {
    let mut server = TestServer::start().await;
    create_namespace(&mut server.client, "empty", WIDTH, 2).await;
    write_all(&server.client, "empty", vec![event("e", 5, "x")]).await;
    let page = server
        .client
        .read_events(read_request("empty", "e", 1_000_000, 2_000_000))
        .await
        .expect("read")
        .into_inner();
    assert!(page.events.is_empty());
    assert!(!page.partial);
    assert!(page.continuation_token.is_empty());
    let page = server
        .client
        .read_events(read_request("empty", "never-written", i64::MIN, i64::MAX))
        .await
        .expect("read")
        .into_inner();
    assert!(page.events.is_empty() && !page.partial);

    for (start, end) in [(10, 10), (10, 5), (i64::MAX, i64::MIN)] {
        let err = server
            .client
            .read_events(read_request("empty", "e", start, end))
            .await
            .expect_err("reversed or empty range");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert_eq!(bad_field(&err).as_deref(), Some("end_time_micros"));
    }
}

#[tokio::test]
async fn rewriting_a_batch_leaves_one_copy() {
    let mut server = TestServer::start().await;
    create_namespace(&mut server.client, "idem", WIDTH, 4).await;
    let batch: Vec<_> = (0..300)
        .map(|i| event("i", i * 100, &format!("id{i}")))
        .collect();
    for _ in 0..3 {
        write_all(&server.client, "idem", batch.clone()).await;
    }
    let (got, _) = read_to_end(&mut server.client, read_request("idem", "i", 0, i64::MAX)).await;
    assert_eq!(got, expected(&batch, 0, i64::MAX, false));
}

#[tokio::test]
async fn a_bad_event_rejects_the_whole_batch_and_names_its_index() {
    let mut server = TestServer::start().await;
    create_namespace(&mut server.client, "strict", WIDTH, 2).await;
    let mut batch: Vec<_> = (0..5).map(|i| event("v", i, &format!("id{i}"))).collect();
    batch[3].event_id.clear();
    let err = server
        .client
        .write_events(pb::WriteEventsRequest {
            namespace: "strict".into(),
            events: batch,
        })
        .await
        .expect_err("empty event id");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(bad_field(&err).as_deref(), Some("events[3].event_id"));
    assert!(
        err.message().contains("events[3].event_id"),
        "{}",
        err.message()
    );
    let (got, _) = read_to_end(&mut server.client, read_request("strict", "v", 0, 100)).await;
    assert!(got.is_empty(), "nothing of a rejected batch is written");

    let err = server
        .client
        .write_events(pb::WriteEventsRequest {
            namespace: "no-such-namespace".into(),
            events: vec![event("v", 1, "a")],
        })
        .await
        .expect_err("unknown namespace");
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn the_byte_limit_cuts_pages_and_tokens_continue_them() {
    let mut server = TestServer::start().await;
    create_namespace(&mut server.client, "bytes", WIDTH, 3).await;
    let written: Vec<_> = (0..50)
        .map(|i| pb::Event {
            payload: bytes::Bytes::from(vec![b'x'; 100]),
            tags: Default::default(),
            ..event("b", i * 997, &format!("{i:04}"))
        })
        .collect();
    write_all(&server.client, "bytes", written.clone()).await;
    // Each event encodes to about 117 bytes in a response (series id, time,
    // id, 100-byte payload, framing): 3 fit in 400.
    let req = pb::ReadEventsRequest {
        page_bytes_limit: Some(400),
        ..read_request("bytes", "b", 0, i64::MAX)
    };
    let (got, pages) = read_to_end(&mut server.client, req).await;
    assert_eq!(got, expected(&written, 0, i64::MAX, false));
    assert_eq!(pages.len(), 17);
    for p in &pages[..16] {
        assert_eq!(p.events.len(), 3);
        let events = pb::ReadEventsResponse {
            events: p.events.clone(),
            ..Default::default()
        };
        assert!(
            prost::Message::encoded_len(&events) <= 400,
            "the limit bounds encoded bytes"
        );
        assert_eq!(p.partial_reason(), pb::PartialReason::ByteLimit);
    }
    assert_eq!(pages[16].events.len(), 2);
    // A single row larger than the limit still comes back, alone.
    let req = pb::ReadEventsRequest {
        page_bytes_limit: Some(1),
        ..read_request("bytes", "b", 0, i64::MAX)
    };
    let page = server
        .client
        .read_events(req)
        .await
        .expect("read")
        .into_inner();
    assert_eq!(page.events.len(), 1);
    assert!(page.partial);
}

#[tokio::test]
async fn a_sparse_year_is_read_without_visiting_empty_buckets() {
    let mut server = TestServer::start().await;
    let minute = 60_000_000;
    create_namespace(&mut server.client, "sparse", minute, 1).await;
    let day = 24 * 60 * minute;
    let written: Vec<_> = [3, 50, 120, 200, 364]
        .iter()
        .map(|d| event("sp", d * day + 17, "x"))
        .collect();
    write_all(&server.client, "sparse", written.clone()).await;
    let page = server
        .client
        .read_events(read_request("sparse", "sp", 0, 365 * day))
        .await
        .expect("read")
        .into_inner();
    assert_eq!(page.events, expected(&written, 0, 365 * day, false));
    assert!(!page.partial);
    let stats = page.stats.expect("stats");
    // 525,600 one-minute buckets in the range; five hold rows.
    assert_eq!(stats.index_pages, 1);
    assert_eq!(stats.buckets_visited, 5);
    assert_eq!(stats.storage_pages, 5);
    assert_eq!(stats.rows_scanned, 5);
}

#[tokio::test]
async fn a_token_continues_after_a_server_restart() {
    let mut first = TestServer::start().await;
    create_namespace(&mut first.client, "restart", WIDTH, 3).await;
    let written = wide_events("t");
    write_all(&first.client, "restart", written.clone()).await;
    let req = pb::ReadEventsRequest {
        page_size: Some(100),
        order: pb::Order::Descending as i32,
        ..read_request("restart", "t", -WIDTH, 200_000)
    };
    let page = first
        .client
        .read_events(req.clone())
        .await
        .expect("read")
        .into_inner();
    assert!(page.partial);
    first.stop().await;

    let mut second = TestServer::start().await;
    let (rest, _) = read_to_end(
        &mut second.client,
        pb::ReadEventsRequest {
            continuation_token: page.continuation_token.clone(),
            ..req
        },
    )
    .await;
    let mut got = page.events;
    got.extend(rest);
    assert_eq!(got, expected(&written, -WIDTH, 200_000, true));
}

#[tokio::test]
async fn retention_expires_events() {
    let mut server = TestServer::start().await;
    server
        .client
        .create_namespace(pb::CreateNamespaceRequest {
            namespace: Some(pb::Namespace {
                name: "short-lived".into(),
                bucket_width_micros: WIDTH,
                shards: 2,
                retention_seconds: 2,
            }),
        })
        .await
        .expect("create");
    let written: Vec<_> = (0..20)
        .map(|i| event("ttl", i * 1000, &format!("{i}")))
        .collect();
    write_all(&server.client, "short-lived", written.clone()).await;
    let req = read_request("short-lived", "ttl", 0, i64::MAX);
    let (got, _) = read_to_end(&mut server.client, req.clone()).await;
    assert_eq!(got, expected(&written, 0, i64::MAX, false));
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let (got, _) = read_to_end(&mut server.client, req).await;
    assert!(
        got.is_empty(),
        "{} events outlived their retention",
        got.len()
    );
}

#[tokio::test]
async fn namespaces_are_created_idempotently_and_conflicts_are_refused() {
    let mut server = TestServer::start().await;
    let first = create_namespace(&mut server.client, "twice", WIDTH, 3).await;
    let again = create_namespace(&mut server.client, "twice", WIDTH, 3).await;
    assert_eq!(first, again);
    let got = server
        .client
        .get_namespace(pb::GetNamespaceRequest {
            name: "twice".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got, first);
    let err = server
        .client
        .create_namespace(pb::CreateNamespaceRequest {
            namespace: Some(pb::Namespace { shards: 4, ..first }),
        })
        .await
        .expect_err("other settings");
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    let err = server
        .client
        .get_namespace(pb::GetNamespaceRequest {
            name: "absent".into(),
        })
        .await
        .expect_err("absent");
    assert_eq!(err.code(), tonic::Code::NotFound);
}

/// What a replica caches as it starts: every stored namespace, with its
/// settings, up to the limit asked.
#[tokio::test]
async fn stored_namespaces_are_listed_with_their_settings() {
    use hourglass::storage::Storage;
    let mut server = TestServer::start().await;
    let a = create_namespace(&mut server.client, "listed-a", WIDTH, 3).await;
    let b = create_namespace(&mut server.client, "listed-b", 2 * WIDTH, 5).await;
    let store = store().await;
    let listed = store.list_namespaces(10_000).await.expect("list");
    for want in [a, b] {
        let got = listed
            .iter()
            .find(|ns| ns.name == want.name)
            .unwrap_or_else(|| panic!("{} not listed", want.name));
        assert_eq!(pb::Namespace::from(got.clone()), want);
    }
    assert_eq!(store.list_namespaces(1).await.expect("list").len(), 1);
}

#[tokio::test]
async fn the_longest_accepted_retention_can_be_written_and_read() {
    let mut server = TestServer::start().await;
    server
        .client
        .create_namespace(pb::CreateNamespaceRequest {
            namespace: Some(pb::Namespace {
                name: "long-lived".into(),
                bucket_width_micros: WIDTH,
                shards: 1,
                retention_seconds: hourglass::model::MAX_RETENTION_SECONDS,
            }),
        })
        .await
        .expect("the maximum retention is accepted");
    let written = vec![event("s", 1, "a"), event("s", 2, "b")];
    write_all(&server.client, "long-lived", written.clone()).await;
    let (got, _) = read_to_end(
        &mut server.client,
        read_request("long-lived", "s", 0, i64::MAX),
    )
    .await;
    assert_eq!(got, written);
}

#[tokio::test]
async fn rewriting_an_event_without_tags_clears_its_tags() {
    let mut server = TestServer::start().await;
    create_namespace(&mut server.client, "r1", 1_000, 1).await;
    let old = pb::Event {
        payload: bytes::Bytes::from_static(b"old"),
        tags: [("a".to_string(), "1".to_string())].into(),
        ..event("s", 1, "e")
    };
    let new = pb::Event {
        payload: bytes::Bytes::from_static(b"new"),
        tags: Default::default(),
        ..event("s", 1, "e")
    };
    write_all(&server.client, "r1", vec![old]).await;
    write_all(&server.client, "r1", vec![new.clone()]).await;
    let (got, _) = read_to_end(&mut server.client, read_request("r1", "s", 0, 10)).await;
    assert_eq!(
        got,
        vec![new],
        "a rewrite replaces the whole row, tags included"
    );
}

#[tokio::test]
async fn namespaces_stored_against_the_rules_are_refused_by_name_and_field() {
    let mut server = TestServer::start().await;
    let session = store().await;
    let ks = keyspace();
    for (name, width, shards, retention, field) in [
        ("neg-shards", 1_000i64, -3i32, 0i32, "shards"),
        ("zero-shards", 1_000, 0, 0, "shards"),
        ("zero-width", 0, 1, 0, "bucket_width_micros"),
        ("neg-retention", 1_000, 1, -1, "retention_seconds"),
    ] {
        session
            .session()
            .query_unpaged(
                format!(
                    "INSERT INTO {ks}.namespaces (name, bucket_width_micros, shards, \
                     retention_seconds) VALUES (?, ?, ?, ?)"
                ),
                (name, width, shards, retention),
            )
            .await
            .expect("write a namespace row by hand");
        let get = server
            .client
            .get_namespace(pb::GetNamespaceRequest { name: name.into() })
            .await
            .expect_err("an invalid stored namespace");
        let read = server
            .client
            .read_events(read_request(name, "s", 0, i64::MAX))
            .await
            .expect_err("no read of an invalid namespace");
        let write = server
            .client
            .write_events(pb::WriteEventsRequest {
                namespace: name.into(),
                events: vec![event("s", 1, "e")],
            })
            .await
            .expect_err("no write to an invalid namespace");
        for status in [get, read, write] {
            assert_eq!(status.code(), tonic::Code::Internal, "{name}: {status:?}");
            assert_eq!(reason_of(&status), "NAMESPACE_INVALID", "{name}");
            assert!(
                status.message().contains(name) && status.message().contains(field),
                "{name}: {}",
                status.message()
            );
        }
    }
}

#[tokio::test]
async fn a_default_client_reads_wide_pages_of_1_kib_rows_to_the_end() {
    let mut server = TestServer::start().await;
    create_namespace(&mut server.client, "kib", 60_000_000, 2).await;
    let written: Vec<_> = (0..12_000)
        .map(|i| pb::Event {
            payload: bytes::Bytes::from(vec![b'k'; 1024]),
            ..event("s", i * 1_000, &format!("{i:06}"))
        })
        .collect();
    write_all(&server.client, "kib", written.clone()).await;
    // No raised limits: the 4 MiB receive limit every gRPC client defaults to.
    let mut client = hourglass::api::pb::hourglass_client::HourglassClient::connect(format!(
        "http://{}",
        server.addr
    ))
    .await
    .expect("connect a default client");
    for page_size in [None, Some(100_000)] {
        let req = pb::ReadEventsRequest {
            page_size,
            ..read_request("kib", "s", 0, i64::MAX)
        };
        let (got, pages) = read_to_end(&mut client, req).await;
        assert_eq!(got, written, "page size {page_size:?}");
        if page_size.is_some() {
            // 12 MB of rows: cut by the default byte limit, not the row count.
            assert!(pages.len() >= 3, "{} pages", pages.len());
            assert_eq!(pages[0].partial_reason(), pb::PartialReason::ByteLimit);
        }
    }
}

#[tokio::test]
async fn a_default_client_streams_large_rows_in_batches_it_can_take() {
    use futures::StreamExt;
    let mut server = TestServer::start().await;
    create_namespace(&mut server.client, "big", 60_000_000, 2).await;
    // 8 KiB rows: 1000 of them would make an 8 MiB message.
    let written: Vec<_> = (0..3_000)
        .map(|i| pb::Event {
            payload: bytes::Bytes::from(vec![b'b'; 8 << 10]),
            ..event("s", i * 1_000, &format!("{i:06}"))
        })
        .collect();
    write_all(&server.client, "big", written.clone()).await;
    let mut client = hourglass::api::pb::hourglass_client::HourglassClient::connect(format!(
        "http://{}",
        server.addr
    ))
    .await
    .expect("connect a default client");
    let mut req = pb::ReadEventsRequest {
        page_size: Some(100_000),
        page_bytes_limit: Some(32 << 20),
        ..read_request("big", "s", 0, i64::MAX)
    };
    let mut got = Vec::new();
    loop {
        let mut stream = client
            .stream_events(req.clone())
            .await
            .expect("stream")
            .into_inner();
        let mut end = None;
        while let Some(msg) = stream.next().await {
            match msg.expect("every batch fits the default limit").message {
                Some(pb::stream_events_response::Message::Batch(b)) => {
                    let bytes: usize = b.events.iter().map(prost::Message::encoded_len).sum();
                    assert!(
                        b.events.len() == 1 || bytes <= hourglass::server::STREAM_BATCH_BYTES,
                        "a batch of {} events and {bytes} bytes",
                        b.events.len()
                    );
                    got.extend(b.events);
                }
                Some(pb::stream_events_response::Message::End(e)) => end = Some(e),
                None => panic!("empty message"),
            }
        }
        let end = end.expect("an end message");
        if !end.partial {
            break;
        }
        req.continuation_token = end.continuation_token;
    }
    assert_eq!(got, written);

    // The byte limit bounds the whole stream, as it bounds one response:
    // unset, its default (4 MiB - 64 KiB) ends this stream partial, and the
    // token resumes right after its last row.
    let req = pb::ReadEventsRequest {
        page_size: Some(100_000),
        ..read_request("big", "s", 0, i64::MAX)
    };
    let mut stream = client
        .stream_events(req)
        .await
        .expect("stream")
        .into_inner();
    let (mut streamed, mut end) = (Vec::new(), None);
    while let Some(msg) = stream.next().await {
        match msg.expect("a batch").message {
            Some(pb::stream_events_response::Message::Batch(b)) => streamed.extend(b.events),
            Some(pb::stream_events_response::Message::End(e)) => end = Some(e),
            None => panic!("empty message"),
        }
    }
    let end = end.expect("an end message");
    // Each event as the response's field 1 carries it: tag, length, body.
    let entry = |e: &pb::Event| {
        let body = prost::Message::encoded_len(e);
        1 + prost::length_delimiter_len(body) + body
    };
    let bytes: usize = streamed.iter().map(entry).sum();
    assert!(end.partial, "{end:?}");
    assert_eq!(end.partial_reason, pb::PartialReason::ByteLimit as i32);
    assert!(
        bytes <= hourglass::api::DEFAULT_PAGE_BYTES,
        "{} events, {bytes} bytes",
        streamed.len()
    );
    assert!(
        bytes + entry(&written[streamed.len()]) > hourglass::api::DEFAULT_PAGE_BYTES,
        "one more row would have fit: {} events, {bytes} bytes",
        streamed.len()
    );
    assert_eq!(streamed, written[..streamed.len()]);
    let rest = client
        .read_events(pb::ReadEventsRequest {
            page_size: Some(1),
            continuation_token: end.continuation_token,
            ..read_request("big", "s", 0, i64::MAX)
        })
        .await
        .expect("resume")
        .into_inner();
    assert_eq!(rest.events, written[streamed.len()..=streamed.len()]);
}

/// A sparse series of a 256-shard namespace, one row per 1 ms bucket: the
/// bucket index names the shard each row is in, so a read asks one shard
/// per bucket, not 256 (read whole, and followed in pages of 10).
#[tokio::test]
async fn a_sparse_series_of_many_shards_asks_only_the_shards_holding_rows() {
    let mut server = TestServer::start().await;
    create_namespace(&mut server.client, "sparse256", 1_000, 256).await;
    let written: Vec<_> = (0..100)
        .map(|i| event("sp", i * 1_000 + 17, &format!("e{i}")))
        .collect();
    write_all(&server.client, "sparse256", written.clone()).await;
    let want = expected(&written, 0, 100_000, false);

    let mut req = read_request("sparse256", "sp", 0, 100_000);
    req.slo_millis = 10_000;
    let page = server
        .client
        .read_events(req.clone())
        .await
        .expect("read")
        .into_inner();
    assert_eq!(page.events, want);
    assert!(!page.partial);
    let stats = page.stats.expect("stats");
    assert_eq!(stats.buckets_visited, 100);
    assert_eq!(stats.storage_pages, 100, "one query per bucket");

    req.page_size = Some(10);
    req.slo_millis = 1_000;
    let (events, pages) = read_to_end(&mut server.client, req.clone()).await;
    assert_eq!(events, want);
    let queries: u64 = pages
        .iter()
        .filter_map(|p| p.stats)
        .map(|s| s.storage_pages)
        .sum();
    assert!(queries <= 100 + pages.len() as u64, "{queries} queries");

    req.order = pb::Order::Descending as i32;
    let (events, _) = read_to_end(&mut server.client, req).await;
    assert_eq!(events, expected(&written, 0, 100_000, true));
}

/// A namespace an older release created: its bucket index may name no
/// shard, or (once this release wrote to the bucket) only the shards
/// written since, so a read asks every shard of each bucket and misses
/// no row written before.
#[tokio::test]
async fn a_namespace_from_an_older_release_asks_every_shard() {
    let store = store().await;
    let ks = keyspace();
    let session = store.session();
    // As an older release wrote them: the namespace row without
    // `indexes_shards`, an index entry without shards, and a row.
    session
        .query_unpaged(
            format!(
                "INSERT INTO {ks}.namespaces (name, bucket_width_micros, shards, \
                 retention_seconds) VALUES ('legacy', 1000000, 8, 0)"
            ),
            (),
        )
        .await
        .expect("namespace row");
    let ns = hourglass::model::Namespace::checked("legacy".into(), 1_000_000, 8, 0).unwrap();
    let old_shard = ns.shard_of("old");
    let new_id = (0..1_000)
        .map(|i| format!("new{i}"))
        .find(|id| ns.shard_of(id) != old_shard)
        .unwrap();
    session
        .query_unpaged(
            format!(
                "INSERT INTO {ks}.series_buckets (namespace, series_id, bucket) \
                 VALUES ('legacy', 's', 0)"
            ),
            (),
        )
        .await
        .expect("index entry");
    session
        .query_unpaged(
            format!(
                "INSERT INTO {ks}.events (namespace, series_id, bucket, shard, event_time, \
                 event_id, payload) VALUES ('legacy', 's', 0, ?, 5, 'old', 0x01)"
            ),
            (i32::try_from(old_shard).unwrap(),),
        )
        .await
        .expect("event row");

    let mut server = TestServer::start().await;
    let got = server
        .client
        .get_namespace(pb::GetNamespaceRequest {
            name: "legacy".into(),
        })
        .await
        .expect("the namespace")
        .into_inner();
    assert_eq!(got.shards, 8);
    // This release writes a row to another shard of the same bucket: the
    // index entry now names that shard alone.
    write_all(&server.client, "legacy", vec![event("s", 7, &new_id)]).await;
    let page = server
        .client
        .read_events(read_request("legacy", "s", 0, 1_000_000))
        .await
        .expect("read")
        .into_inner();
    let ids: Vec<_> = page.events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, ["old", new_id.as_str()]);
    // Every shard once. On a loaded machine a straggling page gets a probe
    // beside it, a copy that storage_pages counts too (one node: no copy of
    // the index query), as it does a retry.
    let stats = page.stats.expect("stats");
    assert_eq!(
        stats.storage_pages - stats.probes - stats.retries,
        8,
        "every shard: {stats:?}"
    );
}

/// Tables an older release made lack the columns added since; a replica
/// starting on them adds the columns and reads the namespaces already
/// there as from before shards were indexed.
#[tokio::test]
async fn tables_of_an_older_release_gain_the_new_columns() {
    let mut cfg = cassandra_config();
    cfg.keyspace = format!("{}_old", cfg.keyspace);
    let ks = cfg.keyspace.clone();
    let first = store().await;
    let session = first.session();
    for ddl in [
        format!(
            "CREATE KEYSPACE {ks} WITH replication = \
             {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
        ),
        format!(
            "CREATE TABLE {ks}.namespaces (name text PRIMARY KEY, \
             bucket_width_micros bigint, shards int, retention_seconds int)"
        ),
        format!(
            "CREATE TABLE {ks}.series_buckets (namespace text, series_id text, \
             bucket bigint, PRIMARY KEY ((namespace, series_id), bucket))"
        ),
        format!(
            "INSERT INTO {ks}.namespaces (name, bucket_width_micros, shards, \
             retention_seconds) VALUES ('before', 1000, 4, 0)"
        ),
    ] {
        session.query_unpaged(ddl, ()).await.expect("old schema");
    }
    let upgraded = hourglass::storage::cassandra::CassandraStore::connect(&cfg)
        .await
        .expect("a replica starts on an older release's tables");
    let before = upgraded
        .get_namespace("before")
        .await
        .expect("read")
        .expect("the namespace");
    assert_eq!((before.shards, before.indexes_shards), (4, false));
    let ns = hourglass::model::Namespace::checked("after".into(), 1_000, 4, 0).unwrap();
    assert_eq!(
        upgraded.create_namespace(&ns).await.expect("create"),
        hourglass::storage::Created::New
    );
    let after = upgraded.get_namespace("after").await.unwrap().unwrap();
    assert!(after.indexes_shards);
    // A second replica finds the columns there.
    hourglass::storage::cassandra::CassandraStore::connect(&cfg)
        .await
        .expect("a second replica starts");
    session
        .query_unpaged(format!("DROP KEYSPACE {ks}"), ())
        .await
        .expect("drop");
}

/// `hourglass index-shards` brings a namespace an older release created
/// onto the shard index: each bucket's entry names the shards holding its
/// rows (beside any this release named already), the namespace is marked,
/// and a replica started after reads every row asking only those shards.
/// Other namespaces are left as they were; a second run has nothing to do.
#[tokio::test]
async fn index_shards_brings_an_older_namespace_onto_the_shard_index() {
    use std::sync::Arc;
    let ks = keyspace();
    let session = store().await;
    let session = session.session();
    let run = |cql: String| async move {
        session
            .query_unpaged(cql, ())
            .await
            .expect("older release's data");
    };
    // As an older release wrote them (see
    // a_namespace_from_an_older_release_asks_every_shard): namespace rows
    // without the flag, index entries without shards, and rows. Series
    // "a": bucket 0 has rows in shards 2 and 5, bucket 1 in shard 7.
    // Series "b", bucket 0: a row in shard 15, and one this release wrote
    // to shard 3 (its entry names that shard alone). Namespace "untouched":
    // the same shape, not migrated.
    for ns in ["migrated", "untouched"] {
        run(format!(
            "INSERT INTO {ks}.namespaces (name, bucket_width_micros, shards, \
             retention_seconds) VALUES ('{ns}', 1000000, 16, 0)"
        ))
        .await;
        for (series, bucket) in [("a", 0), ("a", 1), ("b", 0)] {
            run(format!(
                "INSERT INTO {ks}.series_buckets (namespace, series_id, bucket) \
                 VALUES ('{ns}', '{series}', {bucket})"
            ))
            .await;
        }
        for (series, bucket, shard, time) in [
            ("a", 0, 2, 10),
            ("a", 0, 5, 20),
            ("a", 1, 7, 1_000_010),
            ("b", 0, 15, 30),
            ("b", 0, 3, 40),
        ] {
            run(format!(
                "INSERT INTO {ks}.events (namespace, series_id, bucket, shard, event_time, \
                 event_id, payload) VALUES ('{ns}', '{series}', {bucket}, {shard}, {time}, \
                 'e{time}', 0x01)"
            ))
            .await;
        }
        run(format!(
            "UPDATE {ks}.series_buckets SET shards = shards + {{3}} \
             WHERE namespace = '{ns}' AND series_id = 'b' AND bucket = 0"
        ))
        .await;
    }

    // As an operator runs it: the settings from a config file.
    let dir = std::env::temp_dir().join(format!("hg-index-shards-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("hourglass.toml");
    std::fs::write(
        &config,
        format!(
            "cassandra = \"{}\"\nkeyspace = \"{ks}\"\nconsistency = \"one\"\n",
            cassandra()
        ),
    )
    .unwrap();
    let index_shards = |namespace: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hourglass"))
            .args(["--config"])
            .arg(&config)
            .args(["index-shards", "--namespace", namespace])
            .output()
            .expect("run hourglass index-shards");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = index_shards("migrated");
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("2 series, 3 buckets looked at, 5 shards holding rows named"),
        "{stdout}"
    );

    let upgraded = store().await;
    let ns = Arc::new(
        upgraded
            .get_namespace("migrated")
            .await
            .expect("read")
            .expect("the namespace"),
    );
    assert!(ns.indexes_shards, "the namespace is marked");
    let listed = |series: &str, ns: &Arc<hourglass::model::Namespace>| {
        upgraded.list_buckets(hourglass::storage::BucketQuery {
            namespace: ns.clone(),
            series_id: series.into(),
            first: i64::MIN,
            last: i64::MAX,
            order: hourglass::model::Order::Ascending,
            limit: 100,
            timeout: std::time::Duration::from_secs(10),
        })
    };
    let shards = |buckets: Vec<hourglass::storage::IndexedBucket>| {
        buckets
            .into_iter()
            .map(|b| (b.bucket, b.shards))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        shards(listed("a", &ns).await.expect("index")),
        [(0, Some(vec![2, 5])), (1, Some(vec![7]))]
    );
    assert_eq!(
        shards(listed("b", &ns).await.expect("index")),
        [(0, Some(vec![3, 15]))]
    );
    let untouched = Arc::new(upgraded.get_namespace("untouched").await.unwrap().unwrap());
    assert!(!untouched.indexes_shards, "another namespace is left alone");
    assert_eq!(
        shards(listed("b", &untouched).await.expect("index")),
        [(0, None)]
    );

    // A replica started now reads every row, asking only the shards named
    // (3 pages for "a", 2 for "b"; on a test node loaded by the other
    // tests a late page may get a probe, a copy that counts as a page
    // too); asking every shard is 16 pages a bucket.
    let mut server = TestServer::start().await;
    let page = server
        .client
        .read_events(read_request("migrated", "a", 0, 2_000_000))
        .await
        .expect("read")
        .into_inner();
    let ids: Vec<_> = page.events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, ["e10", "e20", "e1000010"]);
    let pages = page.stats.expect("stats").storage_pages;
    assert!((3..16).contains(&pages), "{pages} pages");
    let page = server
        .client
        .read_events(read_request("migrated", "b", 0, 1_000_000))
        .await
        .expect("read")
        .into_inner();
    let ids: Vec<_> = page.events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, ["e30", "e40"]);
    let pages = page.stats.expect("stats").storage_pages;
    assert!((2..16).contains(&pages), "{pages} pages");

    let (ok, stdout, stderr) = index_shards("migrated");
    assert!(ok, "{stderr}");
    assert!(stdout.contains("indexes its shards already"), "{stdout}");
    let (ok, _, stderr) = index_shards("nosuch");
    assert!(!ok);
    assert!(
        stderr.contains("namespace \"nosuch\" does not exist"),
        "{stderr}"
    );
    let (ok, _, stderr) = index_shards("bad name");
    assert!(!ok);
    assert!(stderr.contains("--namespace"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}
