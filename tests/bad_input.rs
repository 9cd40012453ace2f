//! Bad input, table-driven, against the real Cassandra: every request gets
//! the right gRPC code, a stable ErrorInfo reason, a BadRequest naming the
//! field, and a message that names the problem. Rejected write batches
//! write nothing.
//!
//! Long because the table is: one row per bad request.

mod common;

use std::time::Duration;

use common::*;
use hourglass::api::pb;
use hourglass::error::ERROR_DOMAIN;
use hourglass::model::{Key, Namespace, Order};
use hourglass::token::{KeyRing, QueryFingerprint};
use tonic::codec::CompressionEncoding::{Deflate, Gzip};
use tonic::Code;
use tonic_types::StatusExt;

/// One request the service must refuse.
enum Call {
    Write(pb::WriteEventsRequest),
    Read(pb::ReadEventsRequest),
    Stream(pb::ReadEventsRequest),
    Create(pb::CreateNamespaceRequest),
    Get(pb::GetNamespaceRequest),
    /// These bytes as the request message of the method at this path, as
    /// a client with an encoder of its own might send them.
    Raw(&'static str, Vec<u8>),
    /// These messages, each sent whole, as one request to the method at
    /// this path (which takes one).
    Several(&'static str, Vec<Vec<u8>>),
}

/// Sends a message's bytes as they are and decodes none (see [`Call::Raw`]).
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(buf);
        Ok(Some(bytes::Buf::copy_to_bytes(buf, n).to_vec()))
    }
}

/// A client of `server` that sends and takes messages as raw bytes.
async fn raw_client(server: &TestServer) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("address")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    grpc
}

async fn raw_call(
    server: &TestServer,
    path: &'static str,
    message: Vec<u8>,
) -> Result<(), tonic::Status> {
    let mut grpc = raw_client(server).await;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(message), path, RawCodec)
        .await
        .map(|_| ())
}

/// `messages` as one request's body to the method at `path`, as a
/// client-streaming call sends them.
async fn several_messages(
    server: &TestServer,
    path: &'static str,
    messages: Vec<Vec<u8>>,
) -> Result<(), tonic::Status> {
    let mut grpc = raw_client(server).await;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    let request = tonic::Request::new(futures::stream::iter(messages));
    grpc.client_streaming(request, path, RawCodec)
        .await
        .map(|_| ())
}

struct Case {
    name: &'static str,
    call: Call,
    code: Code,
    reason: &'static str,
    /// The BadRequest field expected, for INVALID_ARGUMENT.
    field: Option<&'static str>,
    /// A piece of the message that names the problem.
    message: &'static str,
}

fn case(
    name: &'static str,
    call: Call,
    code: Code,
    reason: &'static str,
    field: Option<&'static str>,
    message: &'static str,
) -> Case {
    Case {
        name,
        call,
        code,
        reason,
        field,
        message,
    }
}

const NS: &str = "bad";
const READ_EVENTS: &str = "/hourglass.v1.Hourglass/ReadEvents";
const STREAM_EVENTS: &str = "/hourglass.v1.Hourglass/StreamEvents";
const WRITE_EVENTS: &str = "/hourglass.v1.Hourglass/WriteEvents";
const CREATE_NAMESPACE: &str = "/hourglass.v1.Hourglass/CreateNamespace";

fn read(f: impl FnOnce(&mut pb::ReadEventsRequest)) -> pb::ReadEventsRequest {
    let mut r = read_request(NS, "s", 0, 1_000_000);
    f(&mut r);
    r
}

fn write(events: Vec<pb::Event>) -> Call {
    Call::Write(pb::WriteEventsRequest {
        namespace: NS.into(),
        events,
    })
}

/// Five good events of `series`, then `bad` as the sixth.
fn batch_ending_with(series: &str, bad: pb::Event) -> Vec<pb::Event> {
    let mut v: Vec<_> = (0..5)
        .map(|i| event(series, i * 1000, &format!("ok{i}")))
        .collect();
    v.push(bad);
    v
}

fn namespace(f: impl FnOnce(&mut pb::Namespace)) -> Call {
    let mut ns = pb::Namespace {
        name: "fresh".into(),
        bucket_width_micros: 1_000_000,
        shards: 2,
        retention_seconds: 0,
    };
    f(&mut ns);
    Call::Create(pb::CreateNamespaceRequest {
        namespace: Some(ns),
    })
}

async fn status_of(server: &mut TestServer, call: Call) -> tonic::Status {
    let c = &mut server.client;
    match call {
        Call::Write(r) => c.write_events(r).await.map(|_| ()),
        Call::Read(r) => c.read_events(r).await.map(|_| ()),
        Call::Stream(r) => match c.stream_events(r).await {
            Err(s) => Err(s),
            Ok(resp) => {
                let mut s = resp.into_inner();
                loop {
                    match s.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => break Ok(()),
                        Err(e) => break Err(e),
                    }
                }
            }
        },
        Call::Create(r) => c.create_namespace(r).await.map(|_| ()),
        Call::Get(r) => c.get_namespace(r).await.map(|_| ()),
        Call::Raw(path, message) => raw_call(server, path, message).await,
        Call::Several(path, messages) => several_messages(server, path, messages).await,
    }
    .expect_err("the request must be refused")
}

#[tokio::test]
async fn every_bad_request_gets_its_code_reason_field_and_message() {
    use Code::*;
    let mut server = TestServer::start().await;
    create_namespace(&mut server.client, NS, 1_000_000, 2).await;
    create_namespace(&mut server.client, "other", 1_000_000, 2).await;
    let good: Vec<_> = (0..20)
        .map(|i| event("s", i * 50_000, &format!("e{i}")))
        .collect();
    write_all(&server.client, NS, good.clone()).await;
    let good_read = prost::Message::encode_to_vec(&read(|_| {}));

    // A real token of (bad, s, [0, 1s), ascending).
    let token = server
        .client
        .read_events(read(|r| r.page_size = Some(3)))
        .await
        .expect("first page")
        .into_inner()
        .continuation_token;
    assert!(!token.is_empty());
    let ns_model = Namespace {
        name: NS.into(),
        bucket_width_micros: 1_000_000,
        shards: 2,
        retention_seconds: 0,
        indexes_shards: true,
    };
    let fingerprint = QueryFingerprint::new(&ns_model, "s", 0, 1_000_000, Order::Ascending);
    let test_keys = KeyRing::parse(TEST_KEYS, Duration::from_secs(3600)).unwrap();
    let at = Key::new(100_000, "e2");
    let expired = test_keys.issue_at(&fingerprint, &at, 1_000);
    let foreign_key = KeyRing::parse(
        "elsewhere:fedcba9876543210fedcba98",
        Duration::from_secs(60),
    )
    .unwrap()
    .issue(&fingerprint, &at);
    let rebucketed = test_keys.issue(
        &QueryFingerprint::new(
            &Namespace {
                bucket_width_micros: 60_000_000,
                ..ns_model.clone()
            },
            "s",
            0,
            1_000_000,
            Order::Ascending,
        ),
        &at,
    );
    let mut tampered = token.clone().into_bytes();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let truncated = token[..token.len() / 2].to_string();
    let with_token = |t: &str| {
        let t = t.to_string();
        read(move |r| r.continuation_token = t)
    };

    let long = |n: usize| "x".repeat(n);
    let bad_tags: std::collections::HashMap<String, String> =
        (0..33).map(|i| (format!("t{i}"), "v".into())).collect();
    let inv = Some;
    let cases = vec![
        // Reads.
        case(
            "empty series id",
            Call::Read(read(|r| r.series_id.clear())),
            InvalidArgument,
            "INVALID_FIELD",
            inv("series_id"),
            "must not be empty",
        ),
        case(
            "oversized series id",
            Call::Read(read(|r| r.series_id = long(257))),
            InvalidArgument,
            "INVALID_FIELD",
            inv("series_id"),
            "257 bytes",
        ),
        case(
            "empty namespace",
            Call::Read(read(|r| r.namespace.clear())),
            InvalidArgument,
            "INVALID_FIELD",
            inv("namespace"),
            "must not be empty",
        ),
        case(
            "namespace with a slash",
            Call::Read(read(|r| r.namespace = "a/b".into())),
            InvalidArgument,
            "INVALID_FIELD",
            inv("namespace"),
            "may only hold",
        ),
        case(
            "unknown namespace",
            Call::Read(read(|r| r.namespace = "nowhere".into())),
            NotFound,
            "NAMESPACE_NOT_FOUND",
            None,
            "\"nowhere\" not found",
        ),
        case(
            "reversed range",
            Call::Read(read(|r| {
                r.start_time_micros = 10;
                r.end_time_micros = 5;
            })),
            InvalidArgument,
            "INVALID_FIELD",
            inv("end_time_micros"),
            "greater than start_time_micros",
        ),
        case(
            "empty range",
            Call::Read(read(|r| {
                r.start_time_micros = 7;
                r.end_time_micros = 7;
            })),
            InvalidArgument,
            "INVALID_FIELD",
            inv("end_time_micros"),
            "[7, 7)",
        ),
        case(
            "unknown order",
            Call::Read(read(|r| r.order = 7)),
            InvalidArgument,
            "INVALID_FIELD",
            inv("order"),
            "unknown order 7",
        ),
        case(
            "page size 0",
            Call::Read(read(|r| r.page_size = Some(0))),
            InvalidArgument,
            "INVALID_FIELD",
            inv("page_size"),
            "(got 0)",
        ),
        case(
            "page size above the maximum",
            Call::Read(read(|r| r.page_size = Some(100_001))),
            InvalidArgument,
            "INVALID_FIELD",
            inv("page_size"),
            "between 1 and 100000",
        ),
        case(
            "byte limit 0",
            Call::Read(read(|r| r.page_bytes_limit = Some(0))),
            InvalidArgument,
            "INVALID_FIELD",
            inv("page_bytes_limit"),
            "(got 0)",
        ),
        case(
            "byte limit above the maximum",
            Call::Read(read(|r| r.page_bytes_limit = Some(u64::MAX))),
            InvalidArgument,
            "INVALID_FIELD",
            inv("page_bytes_limit"),
            "between 1 and",
        ),
        case(
            "negative SLO",
            Call::Read(read(|r| r.slo_millis = -5)),
            InvalidArgument,
            "INVALID_FIELD",
            inv("slo_millis"),
            "(got -5)",
        ),
        case(
            "absurd SLO",
            Call::Read(read(|r| r.slo_millis = i64::MAX)),
            InvalidArgument,
            "INVALID_FIELD",
            inv("slo_millis"),
            "between 1 and 3600000",
        ),
        case(
            "bad request on the streaming call",
            Call::Stream(read(|r| r.page_size = Some(0))),
            InvalidArgument,
            "INVALID_FIELD",
            inv("page_size"),
            "(got 0)",
        ),
        // Continuation tokens.
        case(
            "garbage token",
            Call::Read(with_token("%%% not a token %%%")),
            InvalidArgument,
            "TOKEN_MALFORMED",
            inv("continuation_token"),
            "invalid continuation_token",
        ),
        case(
            "truncated token",
            Call::Read(with_token(&truncated)),
            InvalidArgument,
            "TOKEN_MALFORMED",
            inv("continuation_token"),
            "invalid continuation_token",
        ),
        case(
            "tampered token",
            Call::Read(with_token(&tampered)),
            InvalidArgument,
            "TOKEN_BAD_SIGNATURE",
            inv("continuation_token"),
            "signature",
        ),
        case(
            "expired token",
            Call::Read(with_token(&expired)),
            InvalidArgument,
            "TOKEN_EXPIRED",
            inv("continuation_token"),
            "expired",
        ),
        case(
            "token of an unknown key id",
            Call::Read(with_token(&foreign_key)),
            InvalidArgument,
            "TOKEN_UNKNOWN_KEY",
            inv("continuation_token"),
            "elsewhere",
        ),
        case(
            "token of another series",
            Call::Read(read(|r| {
                r.series_id = "t".into();
                r.continuation_token = token.clone();
            })),
            InvalidArgument,
            "TOKEN_QUERY_MISMATCH",
            inv("continuation_token"),
            "different query",
        ),
        case(
            "token of another range",
            Call::Read(read(|r| {
                r.end_time_micros = 2_000_000;
                r.continuation_token = token.clone();
            })),
            InvalidArgument,
            "TOKEN_QUERY_MISMATCH",
            inv("continuation_token"),
            "different query",
        ),
        case(
            "token of the other order",
            Call::Read(read(|r| {
                r.order = pb::Order::Descending as i32;
                r.continuation_token = token.clone();
            })),
            InvalidArgument,
            "TOKEN_QUERY_MISMATCH",
            inv("continuation_token"),
            "different query",
        ),
        case(
            "token of another namespace",
            Call::Read(read(|r| {
                r.namespace = "other".into();
                r.continuation_token = token.clone();
            })),
            InvalidArgument,
            "TOKEN_QUERY_MISMATCH",
            inv("continuation_token"),
            "different query",
        ),
        case(
            "token from before the bucketing changed",
            Call::Read(with_token(&rebucketed)),
            InvalidArgument,
            "TOKEN_QUERY_MISMATCH",
            inv("continuation_token"),
            "different query",
        ),
        // Writes: the sixth event of each batch is bad.
        case(
            "empty batch",
            write(vec![]),
            InvalidArgument,
            "INVALID_FIELD",
            inv("events"),
            "at least one event",
        ),
        case(
            "too many events",
            write((0..10_001).map(|i| event("w0", i, "x")).collect()),
            InvalidArgument,
            "INVALID_FIELD",
            inv("events"),
            "10001 events",
        ),
        case(
            "empty event series id",
            write(batch_ending_with("w1", event("", 1, "x"))),
            InvalidArgument,
            "INVALID_FIELD",
            inv("events[5].series_id"),
            "must not be empty",
        ),
        case(
            "oversized event series id",
            write(batch_ending_with("w2", event(&long(300), 1, "x"))),
            InvalidArgument,
            "INVALID_FIELD",
            inv("events[5].series_id"),
            "300 bytes",
        ),
        case(
            "empty event id",
            write(batch_ending_with("w3", event("w3", 1, ""))),
            InvalidArgument,
            "INVALID_FIELD",
            inv("events[5].event_id"),
            "must not be empty",
        ),
        case(
            "oversized payload",
            write(batch_ending_with(
                "w4",
                pb::Event {
                    payload: vec![0u8; (1 << 20) + 1].into(),
                    ..event("w4", 1, "x")
                },
            )),
            InvalidArgument,
            "INVALID_FIELD",
            inv("events[5].payload"),
            "1048577 bytes",
        ),
        case(
            "too many tags",
            write(batch_ending_with(
                "w5",
                pb::Event {
                    tags: bad_tags.clone(),
                    ..event("w5", 1, "x")
                },
            )),
            InvalidArgument,
            "INVALID_FIELD",
            inv("events[5].tags"),
            "33 tags",
        ),
        case(
            "oversized tag value",
            write(batch_ending_with(
                "w6",
                pb::Event {
                    tags: [("k".to_string(), long(1025))].into(),
                    ..event("w6", 1, "x")
                },
            )),
            InvalidArgument,
            "INVALID_FIELD",
            inv("events[5].tags"),
            "a value of 1025 bytes at key \"k\", more than the maximum of 1024",
        ),
        case(
            "an empty tag key",
            write(batch_ending_with(
                "w6",
                pb::Event {
                    tags: [(String::new(), "v".to_string()), ("b".into(), "v".into())].into(),
                    ..event("w6", 1, "x")
                },
            )),
            InvalidArgument,
            "INVALID_FIELD",
            inv("events[5].tags"),
            "has an empty key",
        ),
        case(
            "oversized tag key, named by its start",
            write(batch_ending_with(
                "w6",
                pb::Event {
                    tags: [(format!("é{}", long(128)), "v".to_string())].into(),
                    ..event("w6", 1, "x")
                },
            )),
            InvalidArgument,
            "INVALID_FIELD",
            inv("events[5].tags"),
            "a key of 130 bytes, more than the maximum of 128",
        ),
        case(
            "duplicate events in one batch",
            write(batch_ending_with("w7", event("w7", 0, "ok0"))),
            InvalidArgument,
            "INVALID_FIELD",
            inv("events[5].event_id"),
            "duplicates an earlier event",
        ),
        case(
            "an event at i64::MAX, which no range can reach",
            write(batch_ending_with("w9", event("w9", i64::MAX, "x"))),
            InvalidArgument,
            "INVALID_FIELD",
            inv("events[5].event_time_micros"),
            "at most 9223372036854775806",
        ),
        case(
            "write to an unknown namespace",
            Call::Write(pb::WriteEventsRequest {
                namespace: "nowhere".into(),
                events: vec![event("w8", 1, "x")],
            }),
            NotFound,
            "NAMESPACE_NOT_FOUND",
            None,
            "not found",
        ),
        // Namespaces.
        case(
            "create without a namespace",
            Call::Create(pb::CreateNamespaceRequest { namespace: None }),
            InvalidArgument,
            "INVALID_FIELD",
            inv("namespace"),
            "required",
        ),
        case(
            "bucket width too small",
            namespace(|n| n.bucket_width_micros = 10),
            InvalidArgument,
            "INVALID_FIELD",
            inv("namespace.bucket_width_micros"),
            "at least 1000",
        ),
        case(
            "negative bucket width",
            namespace(|n| n.bucket_width_micros = -1_000_000),
            InvalidArgument,
            "INVALID_FIELD",
            inv("namespace.bucket_width_micros"),
            "(got -1000000)",
        ),
        case(
            "too many shards",
            namespace(|n| n.shards = 100_000),
            InvalidArgument,
            "INVALID_FIELD",
            inv("namespace.shards"),
            "at most 256",
        ),
        case(
            "absurd retention",
            namespace(|n| n.retention_seconds = u32::MAX),
            InvalidArgument,
            "INVALID_FIELD",
            inv("namespace.retention_seconds"),
            "maximum TTL",
        ),
        case(
            "retention whose bucket index TTL would pass Cassandra's maximum",
            namespace(|n| n.retention_seconds = 630_720_000),
            InvalidArgument,
            "INVALID_FIELD",
            inv("namespace.retention_seconds"),
            "at most 630719880",
        ),
        case(
            "conflicting re-create",
            namespace(|n| {
                n.name = NS.into();
                n.shards = 3;
            }),
            AlreadyExists,
            "NAMESPACE_CONFLICT",
            None,
            "already exists",
        ),
        case(
            "get an unknown namespace",
            Call::Get(pb::GetNamespaceRequest {
                name: "nowhere".into(),
            }),
            NotFound,
            "NAMESPACE_NOT_FOUND",
            None,
            "not found",
        ),
        // Messages that are no valid encoding of their type: a varint that
        // never ends, a string that is not UTF-8, a length past the end.
        case(
            "read: a broken varint",
            Call::Raw(READ_EVENTS, vec![0xff, 0xff, 0xff]),
            InvalidArgument,
            "INVALID_FIELD",
            Some("request"),
            "not a valid protobuf encoding",
        ),
        case(
            "read: series_id not UTF-8",
            Call::Raw(READ_EVENTS, vec![0x12, 2, 0xc3, 0x28]),
            InvalidArgument,
            "INVALID_FIELD",
            Some("series_id"),
            "UTF-8",
        ),
        case(
            "stream: namespace cut short",
            Call::Raw(STREAM_EVENTS, vec![0x0a, 5, b'a', b'b']),
            InvalidArgument,
            "INVALID_FIELD",
            Some("namespace"),
            "not a valid protobuf encoding",
        ),
        case(
            "write: an event id not UTF-8",
            Call::Raw(WRITE_EVENTS, vec![0x12, 4, 0x1a, 2, 0xc3, 0x28]),
            InvalidArgument,
            "INVALID_FIELD",
            Some("events.event_id"),
            "UTF-8",
        ),
        case(
            "create: a broken varint",
            Call::Raw(CREATE_NAMESPACE, vec![0x0a, 0xff]),
            InvalidArgument,
            "INVALID_FIELD",
            Some("namespace"),
            "not a valid protobuf encoding",
        ),
        // Every method takes one message: a body that carries two (the
        // first a good read) is refused whole, as grpc-go and grpc-java
        // refuse such a cardinality violation, not answered for the first.
        case(
            "read: two messages",
            Call::Several(READ_EVENTS, vec![good_read.clone(), good_read.clone()]),
            Internal,
            "TOO_MANY_MESSAGES",
            None,
            "more than one message",
        ),
        case(
            "stream: two messages",
            Call::Several(STREAM_EVENTS, vec![good_read.clone(), Vec::new()]),
            Internal,
            "TOO_MANY_MESSAGES",
            None,
            "more than one message",
        ),
        case(
            "create: two messages",
            Call::Several(CREATE_NAMESPACE, vec![Vec::new(), Vec::new()]),
            Internal,
            "TOO_MANY_MESSAGES",
            None,
            "more than one message",
        ),
    ];
    assert!(cases.len() >= 25);
    let mut failures = Vec::new();
    for c in cases {
        let status = status_of(&mut server, c.call).await;
        let info = status.get_details_error_info();
        let problems: Vec<String> = [
            (status.code() != c.code)
                .then(|| format!("code {:?}, want {:?}", status.code(), c.code)),
            match &info {
                None => Some("no ErrorInfo".into()),
                Some(i) if i.reason != c.reason || i.domain != ERROR_DOMAIN => Some(format!(
                    "ErrorInfo {}/{}, want {}/{ERROR_DOMAIN}",
                    i.reason, i.domain, c.reason
                )),
                _ => None,
            },
            (bad_field(&status).as_deref() != c.field).then(|| {
                format!(
                    "BadRequest field {:?}, want {:?}",
                    bad_field(&status),
                    c.field
                )
            }),
            (!status.message().contains(c.message))
                .then(|| format!("message {:?} lacks {:?}", status.message(), c.message)),
            (c.field.is_some() && !status.message().contains(c.field.unwrap()))
                .then(|| format!("message {:?} does not name the field", status.message())),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !problems.is_empty() {
            failures.push(format!("{}: {}", c.name, problems.join("; ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Nothing of a rejected batch was written: the five good events of
    // every rejected batch are absent.
    for series in ["w0", "w1", "w2", "w3", "w4", "w5", "w6", "w7", "w8", "w9"] {
        let (events, _) =
            read_to_end(&mut server.client, read_request(NS, series, -10, 1_000_000)).await;
        assert!(
            events.is_empty(),
            "rejected batch of {series} wrote {} events",
            events.len()
        );
    }
    // And the namespaces refused were not created.
    let status = status_of(
        &mut server,
        Call::Get(pb::GetNamespaceRequest {
            name: "fresh".into(),
        }),
    )
    .await;
    assert_eq!(status.code(), NotFound);
    // The good data is untouched, and reads to the end with requests
    // compressed by gzip or deflate as without.
    for encoding in [None, Some(Gzip), Some(Deflate)] {
        let mut client = server.client.clone();
        if let Some(e) = encoding {
            client = client.send_compressed(e);
        }
        let (events, _) = read_to_end(&mut client, read_request(NS, "s", 0, 1_000_000)).await;
        assert_eq!(events.len(), good.len(), "{encoding:?}");
    }
}
