//! Micro-benchmarks of the hot pure code: tokens, the shard merge, and
//! stored rows to protobuf (conversion and encoding).

use std::collections::VecDeque;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use hourglass::engine::merge::{pick, Head, Pick};
use hourglass::model::{Key, Namespace, Order, Row};
use hourglass::token::{KeyRing, QueryFingerprint};

fn tokens(c: &mut Criterion) {
    let ns = Namespace {
        name: "bench".into(),
        bucket_width_micros: 60_000_000,
        shards: 8,
        retention_seconds: 0,
        indexes_shards: true,
    };
    let ring = KeyRing::parse("k1:0123456789abcdef0123", Duration::from_secs(3600)).unwrap();
    let fp = QueryFingerprint::new(&ns, "series-1", 0, i64::MAX, Order::Ascending);
    let key = Key::new(1_700_000_000_000_000, "event-000123");
    let token = ring.issue(&fp, &key);
    c.bench_function("token_issue", |b| b.iter(|| ring.issue(&fp, &key)));
    c.bench_function("token_verify", |b| {
        b.iter(|| ring.verify(&token, &fp).unwrap());
    });
}

/// A shard's buffered rows, whether it is done, and how far it was fetched.
type Shard = (VecDeque<Row>, bool, Key);

fn view(x: &Shard) -> Head<'_> {
    Head {
        buf: &x.0,
        done: x.1,
        fetched_to: &x.2,
    }
}

fn merge(c: &mut Criterion) {
    let shards = 8;
    let rows_per_shard = 1000;
    let make = || -> Vec<Shard> {
        (0..shards)
            .map(|s| {
                let rows = (0..rows_per_shard)
                    .map(|i| Row {
                        key: Key::new(i64::from(i * shards + s), "id"),
                        payload: Default::default(),
                        tags: Default::default(),
                    })
                    .collect();
                (rows, true, Key::boundary(i64::MIN))
            })
            .collect()
    };
    c.bench_function("merge_8_shards_8000_rows", |b| {
        b.iter_batched(
            make,
            |mut s| {
                let mut n = 0;
                while let Pick::Row(i) = pick(&s, view, Order::Ascending) {
                    s[i].0.pop_front();
                    n += 1;
                }
                n
            },
            criterion::BatchSize::SmallInput,
        );
    });
}

fn conversion(c: &mut Criterion) {
    use prost::Message;
    let rows: Vec<Row> = (0..1000)
        .map(|i| Row {
            key: Key::new(1_700_000_000_000_000 + i, format!("event-{i:06}")),
            payload: bytes::Bytes::from(vec![b'x'; 64]),
            tags: Default::default(),
        })
        .collect();
    c.bench_function("rows_to_proto_and_encode_1000", |b| {
        b.iter_batched(
            || rows.clone(),
            |rows| {
                let response = hourglass::api::pb::ReadEventsResponse {
                    events: rows
                        .into_iter()
                        .map(|r| hourglass::api::event_of("series-1", r))
                        .collect(),
                    ..Default::default()
                };
                response.encode_to_vec().len()
            },
            criterion::BatchSize::SmallInput,
        );
    });
    // What the server does instead: each row encoded as the scan delivers
    // it (hourglass::response), then the response sent with those bytes.
    c.bench_function("rows_encoded_as_delivered_1000", |b| {
        use hourglass::engine::RowSink;
        b.iter_batched(
            || rows.clone(),
            |rows| {
                let mut sink = hourglass::response::EncodedEvents::new("series-1".into());
                for row in rows {
                    sink.push(row);
                }
                let response = hourglass::api::pb::ReadEventsResponse {
                    encoded_events: sink.finish(),
                    ..Default::default()
                };
                response.encode_to_vec().len()
            },
            criterion::BatchSize::SmallInput,
        );
    });
}

criterion_group!(benches, tokens, merge, conversion);
criterion_main!(benches);
