//! The wire API: generated protobuf code and the conversions between it and
//! the domain types, with validation that names the offending field.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::engine::{Ending, PartialReason, ReadOutcome, ReadStats};
use crate::error::ServiceError;
use crate::model::{self, Key, Namespace, NewEvent, Order, Row, ShardStart};

/// Generated protobuf and gRPC code.
#[allow(clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("hourglass.v1");
    pub use crate::response::{EventBatch, ReadEventsResponse};

    /// Encoded file descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("hourglass_descriptor");
}

/// Rows per response when the request leaves `page_size` unset.
pub const DEFAULT_PAGE_SIZE: usize = 1000;
/// Most rows per response.
pub const MAX_PAGE_SIZE: usize = 100_000;
/// The receive limit gRPC clients default to (tonic, grpc-java, grpcio,
/// grpc-go): 4 MiB per message.
pub const DEFAULT_CLIENT_MESSAGE_BYTES: usize = 4 << 20;
/// Room kept for the rest of a response (token, stats, watermark: well under
/// 1 KiB) next to its events.
pub const RESPONSE_OVERHEAD_BYTES: usize = 64 << 10;
/// Encoded event bytes per response when the request leaves
/// `page_bytes_limit` unset: a default page fits a default client.
pub const DEFAULT_PAGE_BYTES: usize = DEFAULT_CLIENT_MESSAGE_BYTES - RESPONSE_OVERHEAD_BYTES;
/// Most bytes per response (below the gRPC message limit).
pub const MAX_PAGE_BYTES: usize = 32 << 20;
/// Largest gRPC message the server accepts or sends.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Longest accepted SLO.
pub const MAX_SLO_MILLIS: i64 = 3_600_000;

type Result<T> = std::result::Result<T, ServiceError>;

/// Whole microseconds of `d`, saturating.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn check_len(field: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() {
        return Err(ServiceError::invalid(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(ServiceError::invalid(
            field,
            format!("is {} bytes, more than the maximum of {max}", value.len()),
        ));
    }
    Ok(())
}

/// Validates an event's tags (at most [`model::MAX_TAGS`], checked before):
/// every problem is reported on `field` (the map; its entries have no
/// index), naming the key, the first in byte order, so the same batch is
/// always refused alike.
fn check_tags(field: &str, tags: &HashMap<String, String>) -> Result<()> {
    let mut keys: Vec<&String> = tags.keys().collect();
    keys.sort_unstable();
    for k in keys {
        let problem = if k.is_empty() {
            "has an empty key".to_string()
        } else if k.len() > model::MAX_TAG_KEY_LEN {
            format!(
                "has a key of {} bytes, more than the maximum of {} ({:?}…)",
                k.len(),
                model::MAX_TAG_KEY_LEN,
                prefix(k, 32)
            )
        } else if tags[k].len() > model::MAX_TAG_VALUE_LEN {
            format!(
                "has a value of {} bytes at key {k:?}, more than the maximum of {}",
                tags[k].len(),
                model::MAX_TAG_VALUE_LEN
            )
        } else {
            continue;
        };
        return Err(ServiceError::invalid(field, problem));
    }
    Ok(())
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn prefix(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Validates a namespace name.
pub fn check_namespace_name(field: &str, name: &str) -> Result<()> {
    check_len(field, name, model::MAX_NAMESPACE_LEN)?;
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(ServiceError::invalid(
            field,
            "may only hold A-Z, a-z, 0-9, _ and -",
        ));
    }
    Ok(())
}

impl TryFrom<pb::Namespace> for Namespace {
    type Error = ServiceError;

    fn try_from(ns: pb::Namespace) -> Result<Self> {
        let pb::Namespace {
            name,
            bucket_width_micros,
            shards,
            retention_seconds,
        } = ns;
        check_namespace_name("namespace.name", &name)?;
        let bucket_width_micros = match bucket_width_micros {
            0 => model::DEFAULT_BUCKET_WIDTH_MICROS,
            w => w,
        };
        let shards = if shards == 0 { 1 } else { shards };
        Namespace::checked(
            name,
            bucket_width_micros,
            shards.into(),
            retention_seconds.into(),
        )
        .map_err(|p| ServiceError::invalid(format!("namespace.{}", p.field), p.description))
    }
}

impl From<Namespace> for pb::Namespace {
    fn from(ns: Namespace) -> Self {
        Self {
            name: ns.name,
            bucket_width_micros: ns.bucket_width_micros,
            shards: ns.shards,
            retention_seconds: ns.retention_seconds,
        }
    }
}

/// Validates a whole write batch; the first bad event fails it all.
pub fn validate_events(events: Vec<pb::Event>) -> Result<Vec<NewEvent>> {
    if events.is_empty() {
        return Err(ServiceError::invalid(
            "events",
            "must hold at least one event",
        ));
    }
    if events.len() > model::MAX_BATCH_EVENTS {
        return Err(ServiceError::invalid(
            "events",
            format!(
                "holds {} events, more than the maximum of {}",
                events.len(),
                model::MAX_BATCH_EVENTS
            ),
        ));
    }
    let mut seen = HashSet::with_capacity(events.len());
    let mut out = Vec::with_capacity(events.len());
    for (i, e) in events.into_iter().enumerate() {
        let pb::Event {
            series_id,
            event_time_micros,
            event_id,
            payload,
            tags,
        } = e;
        let f = |name: &str| format!("events[{i}].{name}");
        check_len(&f("series_id"), &series_id, model::MAX_SERIES_ID_LEN)?;
        check_len(&f("event_id"), &event_id, model::MAX_EVENT_ID_LEN)?;
        if event_time_micros > model::MAX_EVENT_TIME_MICROS {
            return Err(ServiceError::invalid(
                f("event_time_micros"),
                format!(
                    "must be at most {} (i64::MAX - 1): read ranges end before an \
                     exclusive end of at most i64::MAX (got {event_time_micros})",
                    model::MAX_EVENT_TIME_MICROS
                ),
            ));
        }
        if payload.len() > model::MAX_PAYLOAD_LEN {
            return Err(ServiceError::invalid(
                f("payload"),
                format!(
                    "is {} bytes, more than the maximum of {}",
                    payload.len(),
                    model::MAX_PAYLOAD_LEN
                ),
            ));
        }
        if tags.len() > model::MAX_TAGS {
            return Err(ServiceError::invalid(
                f("tags"),
                format!(
                    "has {} tags, more than the maximum of {}",
                    tags.len(),
                    model::MAX_TAGS
                ),
            ));
        }
        check_tags(&f("tags"), &tags)?;
        if !seen.insert((series_id.clone(), event_time_micros, event_id.clone())) {
            return Err(ServiceError::invalid(
                f("event_id"),
                "duplicates an earlier event of this batch (same series_id, event_time_micros, event_id)",
            ));
        }
        out.push(NewEvent {
            series_id,
            row: Row {
                key: Key::new(event_time_micros, event_id),
                payload,
                tags,
            },
        });
    }
    Ok(out)
}

/// A read request after validation (the token is still unverified).
#[derive(Clone, Debug)]
pub struct ReadParams {
    pub namespace: String,
    pub series_id: String,
    pub start: i64,
    pub end: i64,
    pub order: Order,
    pub page_size: usize,
    pub page_bytes: usize,
    pub token: Option<String>,
    pub slo: Option<Duration>,
}

impl TryFrom<pb::ReadEventsRequest> for ReadParams {
    type Error = ServiceError;

    fn try_from(r: pb::ReadEventsRequest) -> Result<Self> {
        let pb::ReadEventsRequest {
            namespace,
            series_id,
            start_time_micros,
            end_time_micros,
            order,
            page_size,
            page_bytes_limit,
            continuation_token,
            slo_millis,
        } = r;
        check_namespace_name("namespace", &namespace)?;
        check_len("series_id", &series_id, model::MAX_SERIES_ID_LEN)?;
        if start_time_micros >= end_time_micros {
            return Err(ServiceError::invalid(
                "end_time_micros",
                format!(
                    "must be greater than start_time_micros (range is [{start_time_micros}, {end_time_micros}))"
                ),
            ));
        }
        let order = match pb::Order::try_from(order) {
            Ok(pb::Order::Ascending) => Order::Ascending,
            Ok(pb::Order::Descending) => Order::Descending,
            Err(_) => {
                return Err(ServiceError::invalid(
                    "order",
                    format!("unknown order {order}"),
                ))
            }
        };
        let page_size = match page_size.map(|n| n as usize) {
            None => DEFAULT_PAGE_SIZE,
            Some(n) if n == 0 || n > MAX_PAGE_SIZE => {
                return Err(ServiceError::invalid(
                    "page_size",
                    format!(
                        "must be between 1 and {MAX_PAGE_SIZE}, or unset for the default (got {n})"
                    ),
                ))
            }
            Some(n) => n,
        };
        let page_bytes = match page_bytes_limit {
            None => DEFAULT_PAGE_BYTES,
            Some(n) if n == 0 || n > MAX_PAGE_BYTES as u64 => {
                return Err(ServiceError::invalid(
                    "page_bytes_limit",
                    format!(
                    "must be between 1 and {MAX_PAGE_BYTES}, or unset for the default (got {n})"
                ),
                ))
            }
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let slo = match slo_millis {
            0 => None,
            n if !(1..=MAX_SLO_MILLIS).contains(&n) => {
                return Err(ServiceError::invalid(
                    "slo_millis",
                    format!("must be between 1 and {MAX_SLO_MILLIS}, or 0 for none (got {n})"),
                ))
            }
            n => Some(Duration::from_millis(n.unsigned_abs())),
        };
        Ok(Self {
            namespace,
            series_id,
            start: start_time_micros,
            end: end_time_micros,
            order,
            page_size,
            page_bytes,
            token: (!continuation_token.is_empty()).then_some(continuation_token),
            slo,
        })
    }
}

/// A stored row as a wire event of `series_id`.
pub fn event_of(series_id: &str, row: Row) -> pb::Event {
    pb::Event {
        series_id: series_id.to_string(),
        event_time_micros: row.key.time,
        event_id: row.key.id,
        payload: row.payload,
        tags: row.tags,
    }
}

impl From<PartialReason> for pb::PartialReason {
    fn from(r: PartialReason) -> Self {
        match r {
            PartialReason::Slo => Self::Slo,
            PartialReason::ClientDeadline => Self::ClientDeadline,
            PartialReason::ServerBudget => Self::ServerBudget,
            PartialReason::ByteLimit => Self::ByteLimit,
            PartialReason::RowLimit => Self::RowLimit,
            PartialReason::StorageError => Self::StorageError,
            PartialReason::Shutdown => Self::ServerShutdown,
        }
    }
}

impl From<ReadStats> for pb::ReadStats {
    fn from(s: ReadStats) -> Self {
        let ReadStats {
            rows_scanned,
            rows_delivered,
            storage_pages,
            probes,
            index_pages,
            buckets_visited,
            retries,
            elapsed,
            budget,
            continued,
        } = s;
        Self {
            rows_scanned,
            rows_delivered,
            storage_pages,
            index_pages,
            buckets_visited,
            retries,
            elapsed_micros: micros(elapsed),
            budget_micros: micros(budget),
            continued,
            probes,
        }
    }
}

/// The end-of-read fields shared by ReadEvents and StreamEvents.
pub fn stream_end(
    outcome: ReadOutcome,
    token: impl FnOnce(&Key, &[ShardStart]) -> String,
) -> pb::StreamEnd {
    let (partial, reason, token) = match &outcome.ending {
        Ending::Complete => (false, pb::PartialReason::None, String::new()),
        Ending::Partial { reason, frontier } => (
            true,
            (*reason).into(),
            token(frontier, &outcome.shard_starts),
        ),
    };
    pb::StreamEnd {
        partial,
        partial_reason: reason as i32,
        continuation_token: token,
        watermark_micros: outcome.watermark,
        stats: Some(outcome.stats.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Every field of the engine's stats reaches the response's.
    #[test]
    fn read_stats_carry_every_field() {
        let s = ReadStats {
            rows_scanned: 1,
            rows_delivered: 2,
            storage_pages: 3,
            probes: 4,
            index_pages: 5,
            buckets_visited: 6,
            retries: 7,
            elapsed: Duration::from_micros(8),
            budget: Duration::from_micros(9),
            continued: true,
        };
        assert_eq!(
            pb::ReadStats::from(s),
            pb::ReadStats {
                rows_scanned: 1,
                rows_delivered: 2,
                storage_pages: 3,
                index_pages: 5,
                buckets_visited: 6,
                retries: 7,
                elapsed_micros: 8,
                budget_micros: 9,
                continued: true,
                probes: 4,
            }
        );
    }

    /// A row's weight is exactly what it adds to an encoded response.
    #[test]
    fn row_weights_are_encoded_sizes() {
        let rows = [
            Row {
                key: Key::new(0, "a"),
                payload: bytes::Bytes::new(),
                tags: Default::default(),
            },
            Row {
                key: Key::new(-1, "日本"),
                payload: bytes::Bytes::from(vec![7; 300]),
                tags: [("k".to_string(), "v".repeat(200))].into(),
            },
            Row {
                key: Key::new(i64::MAX - 1, "e".repeat(256)),
                payload: bytes::Bytes::from(vec![1; 1 << 20]),
                tags: (0..32)
                    .map(|i| (format!("t{i}"), "x".repeat(i)))
                    .filter(|(_, v)| !v.is_empty())
                    .collect(),
            },
        ];
        for series in ["s", &"series".repeat(40)] {
            let mut all = pb::ReadEventsResponse::default();
            let mut total = 0;
            for row in &rows {
                let weight = row.weight(series.len());
                let one = pb::ReadEventsResponse {
                    events: vec![event_of(series, row.clone())],
                    ..Default::default()
                };
                assert_eq!(weight, one.encoded_len(), "{series:?} {:?}", row.key);
                all.events.push(event_of(series, row.clone()));
                total += weight;
            }
            assert_eq!(total, all.encoded_len());
        }
    }
}
