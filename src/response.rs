//! ReadEvents responses and StreamEvents batches whose events are encoded
//! while the scan delivers them, so that once the scan stops the response
//! only has to be sent.
//!
//! A unary read's response cannot leave before its scan stops. Building
//! `Event` messages from the rows and encoding them used to start there,
//! and took about 2 ns of the 6 ns per response byte that passed between
//! the stop and the client holding the decoded response (see
//! [`crate::engine::reserve`]): time a token follower spent waiting
//! instead of reading. [`EncodedEvents`] encodes each row as the engine
//! pushes it, straight from the row into a `Vec` (no `Event` built, no
//! series id copied into a `String` per row), and the response carries
//! those bytes ([`ReadEventsResponse::encoded_events`]). That is also
//! cheaper: 55 µs per 1,000 rows of 64-byte payloads against 90-94 µs for
//! building the events and encoding them with prost (`benches/hot_paths.rs`).
//! A stream's batches ([`EventBatch::encoded_events`]) are encoded the same
//! way, by the stream's sink, as its rows come.
//!
//! Invariants:
//! * The bytes of a response with encoded events are exactly those of the
//!   same response with the events decoded into [`ReadEventsResponse::events`]
//!   (field 1 entries first, then the other fields; protobuf readers accept
//!   fields in any order), so clients in any language see one message; the
//!   same holds for [`EventBatch`].
//! * Each row's entry is [`Row::weight`] bytes (what `page_bytes_limit`
//!   counts) but for tags with an empty key or value, which encode shorter.
//! * [`EncodedEvents::take_back`] gives back exactly the rows pushed last,
//!   and the bytes that stay are whole entries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{
    self, encode_key, encode_varint, encoded_len_varint, key_len, DecodeContext, WireType,
};
use prost::{DecodeError, Message};

use crate::api::pb;
use crate::engine::reserve::RESPONSE_COST;
use crate::engine::RowSink;
use crate::model::{Key, Row};

/// The `ReadEventsResponse` message of `proto/` (the generated code uses
/// this type: see `build.rs`), with room for events already encoded.
#[derive(Clone, PartialEq, Default)]
pub struct ReadEventsResponse {
    pub events: Vec<pb::Event>,
    pub partial: bool,
    /// A [`pb::PartialReason`] value (see [`ReadEventsResponse::partial_reason`]).
    pub partial_reason: i32,
    pub continuation_token: String,
    pub watermark_micros: i64,
    pub stats: Option<pb::ReadStats>,
    /// Events already encoded as the message's field 1 entries (made by
    /// [`EncodedEvents`]); they go before `events`. Always empty in a
    /// decoded response, whose events are all in `events`.
    pub encoded_events: Bytes,
}

impl std::fmt::Debug for ReadEventsResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadEventsResponse")
            .field("events", &self.events)
            .field("partial", &self.partial)
            .field("partial_reason", &self.partial_reason())
            .field("continuation_token", &self.continuation_token)
            .field("watermark_micros", &self.watermark_micros)
            .field("stats", &self.stats)
            .field("encoded_events", &self.encoded_events.len())
            .finish()
    }
}

impl ReadEventsResponse {
    /// `partial_reason` as the enum (UNSPECIFIED values read as NONE, as
    /// prost's generated accessors do).
    pub fn partial_reason(&self) -> pb::PartialReason {
        pb::PartialReason::try_from(self.partial_reason).unwrap_or_default()
    }

    pub fn set_partial_reason(&mut self, value: pb::PartialReason) {
        self.partial_reason = value as i32;
    }
}

impl Message for ReadEventsResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encode_events(&self.encoded_events, &self.events, buf);
        if self.partial {
            encoding::bool::encode(2, &self.partial, buf);
        }
        if self.partial_reason != 0 {
            encoding::int32::encode(3, &self.partial_reason, buf);
        }
        if !self.continuation_token.is_empty() {
            encoding::string::encode(4, &self.continuation_token, buf);
        }
        if self.watermark_micros != 0 {
            encoding::int64::encode(5, &self.watermark_micros, buf);
        }
        if let Some(stats) = &self.stats {
            encoding::message::encode(6, stats, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let field = |mut e: DecodeError, name: &'static str| {
            e.push("ReadEventsResponse", name);
            e
        };
        match tag {
            1 => encoding::message::merge_repeated(wire_type, &mut self.events, buf, ctx)
                .map_err(|e| field(e, "events")),
            2 => encoding::bool::merge(wire_type, &mut self.partial, buf, ctx)
                .map_err(|e| field(e, "partial")),
            3 => encoding::int32::merge(wire_type, &mut self.partial_reason, buf, ctx)
                .map_err(|e| field(e, "partial_reason")),
            4 => encoding::string::merge(wire_type, &mut self.continuation_token, buf, ctx)
                .map_err(|e| field(e, "continuation_token")),
            5 => encoding::int64::merge(wire_type, &mut self.watermark_micros, buf, ctx)
                .map_err(|e| field(e, "watermark_micros")),
            6 => encoding::message::merge(
                wire_type,
                self.stats.get_or_insert_with(Default::default),
                buf,
                ctx,
            )
            .map_err(|e| field(e, "stats")),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        events_len(&self.encoded_events, &self.events)
            + if self.partial {
                encoding::bool::encoded_len(2, &self.partial)
            } else {
                0
            }
            + if self.partial_reason == 0 {
                0
            } else {
                encoding::int32::encoded_len(3, &self.partial_reason)
            }
            + if self.continuation_token.is_empty() {
                0
            } else {
                encoding::string::encoded_len(4, &self.continuation_token)
            }
            + if self.watermark_micros == 0 {
                0
            } else {
                encoding::int64::encoded_len(5, &self.watermark_micros)
            }
            + self
                .stats
                .as_ref()
                .map_or(0, |s| encoding::message::encoded_len(6, s))
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// The `EventBatch` message of `proto/` (the generated code uses this type:
/// see `build.rs`), with room for events already encoded, as in
/// [`ReadEventsResponse`].
#[derive(Clone, PartialEq, Default)]
pub struct EventBatch {
    pub events: Vec<pb::Event>,
    /// Events already encoded as the message's field 1 entries (made by a
    /// `RowEncoder`); they go before `events`. Always empty in a decoded
    /// batch, whose events are all in `events`.
    pub encoded_events: Bytes,
}

impl std::fmt::Debug for EventBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBatch")
            .field("events", &self.events)
            .field("encoded_events", &self.encoded_events.len())
            .finish()
    }
}

impl Message for EventBatch {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encode_events(&self.encoded_events, &self.events, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => encoding::message::merge_repeated(wire_type, &mut self.events, buf, ctx).map_err(
                |mut e| {
                    e.push("EventBatch", "events");
                    e
                },
            ),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        events_len(&self.encoded_events, &self.events)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// Writes the events of a message whose field 1 they are: the entries
/// already `encoded`, then `events`.
fn encode_events(encoded: &[u8], events: &[pb::Event], buf: &mut impl BufMut) {
    buf.put_slice(encoded);
    for e in events {
        encoding::message::encode(1, e, buf);
    }
}

/// Bytes [`encode_events`] writes.
fn events_len(encoded: &[u8], events: &[pb::Event]) -> usize {
    encoded.len() + encoding::message::encoded_len_repeated(1, events)
}

/// Bytes of a length-delimited field of `len` bytes.
fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// Writes a length-delimited field.
fn put_delimited(tag: u32, data: &[u8], buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(data.len() as u64, buf);
    buf.put_slice(data);
}

/// Appends `row` as an event of `series_id` in a `ReadEventsResponse`
/// (field 1, length-delimited), the bytes prost would write for
/// [`crate::api::event_of`]`(series_id, row)` without building the event.
pub fn encode_event(series_id: &str, row: &Row, buf: &mut impl BufMut) {
    let time = row.key.time;
    let mut len = encoding::hash_map::encoded_len(
        encoding::string::encoded_len,
        encoding::string::encoded_len,
        5,
        &row.tags,
    );
    if !series_id.is_empty() {
        len += delimited_len(1, series_id.len());
    }
    if time != 0 {
        len += encoding::int64::encoded_len(2, &time);
    }
    if !row.key.id.is_empty() {
        len += delimited_len(3, row.key.id.len());
    }
    if !row.payload.is_empty() {
        len += delimited_len(4, row.payload.len());
    }
    encode_key(1, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
    if !series_id.is_empty() {
        put_delimited(1, series_id.as_bytes(), buf);
    }
    if time != 0 {
        encoding::int64::encode(2, &time, buf);
    }
    if !row.key.id.is_empty() {
        put_delimited(3, row.key.id.as_bytes(), buf);
    }
    if !row.payload.is_empty() {
        put_delimited(4, &row.payload, buf);
    }
    encoding::hash_map::encode(
        encoding::string::encode,
        encoding::string::encoded_len,
        encoding::string::encode,
        encoding::string::encoded_len,
        5,
        &row.tags,
        buf,
    );
}

/// One row in this many has its encoding timed for the response reserve
/// (a timed row reads the clock twice, about 44 ns, near what encoding a
/// 100-byte row costs): the second of a response (the first may find
/// caches cold) and every [`TIME_EVERY`]th after it, so a response of two
/// rows teaches the cost too (see [`crate::engine::reserve`]).
const TIME_EVERY: usize = 32;

/// Encodes rows of one series as the field 1 entries of a response (the
/// `Event`s of a [`ReadEventsResponse`] or an [`EventBatch`]), timing one
/// row in `TIME_EVERY` (32) for the response reserve.
#[derive(Debug)]
struct RowEncoder {
    series_id: Arc<str>,
    buf: Vec<u8>,
    /// Rows encoded since the last [`RowEncoder::take`].
    rows: usize,
    /// Bytes and time of the rows whose encoding was timed.
    timed_bytes: usize,
    timed: Duration,
}

impl RowEncoder {
    pub fn new(series_id: Arc<str>) -> Self {
        Self {
            series_id,
            buf: Vec::new(),
            rows: 0,
            timed_bytes: 0,
            timed: Duration::ZERO,
        }
    }

    /// Appends `row`'s entry.
    pub fn push(&mut self, row: &Row) {
        let before = self.buf.len();
        if self.rows % TIME_EVERY == 1 {
            // Room first: growing the buffer is no part of encoding.
            self.buf.reserve(self.weight(row));
            let started = Instant::now();
            encode_event(&self.series_id, row, &mut self.buf);
            self.timed += started.elapsed();
            self.timed_bytes += self.buf.len() - before;
        } else {
            encode_event(&self.series_id, row, &mut self.buf);
        }
        self.rows += 1;
    }

    /// Bytes encoded since the last [`RowEncoder::take`].
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// The bytes `row`'s entry takes ([`Row::weight`] for this series).
    pub fn weight(&self, row: &Row) -> usize {
        row.weight(self.series_id.len())
    }

    /// The entries encoded so far, leaving the encoder empty; what timing
    /// their encoding measured goes to [`RESPONSE_COST`].
    pub fn take(&mut self) -> Bytes {
        RESPONSE_COST.observe_rows(self.timed_bytes, self.timed);
        self.rows = 0;
        self.timed_bytes = 0;
        self.timed = Duration::ZERO;
        Bytes::from(std::mem::take(&mut self.buf))
    }
}

/// A [`RowSink`] that encodes each row into the response as it comes.
#[derive(Debug)]
pub struct EncodedEvents {
    encoder: RowEncoder,
    /// Where each row's entry ends in the encoder's bytes.
    ends: Vec<usize>,
}

impl EncodedEvents {
    pub fn new(series_id: Arc<str>) -> Self {
        Self {
            encoder: RowEncoder::new(series_id),
            ends: Vec::new(),
        }
    }

    /// The encoded events, for [`ReadEventsResponse::encoded_events`]; the
    /// encoding's cost per byte goes to [`RESPONSE_COST`].
    pub fn finish(mut self) -> Bytes {
        self.encoder.take()
    }

    /// The encoded events so far, leaving the sink empty (a stream's batch
    /// going); the encoding's cost per byte goes to [`RESPONSE_COST`].
    pub fn take(&mut self) -> Bytes {
        self.ends.clear();
        self.encoder.take()
    }

    /// The encoded events but those of the last `keep` rows, which stay
    /// held (a stream's batch going before a wait, see
    /// [`RowSink::flush_but`]); empty when no more than `keep` rows are
    /// held.
    pub fn take_but(&mut self, keep: usize) -> Bytes {
        if keep == 0 {
            return self.take();
        }
        if self.ends.len() <= keep {
            return Bytes::new();
        }
        let cut = self.ends[self.ends.len() - keep - 1];
        let tail = self.encoder.buf.split_off(cut);
        let sent = self.encoder.take();
        self.encoder.buf = tail;
        self.encoder.rows = keep;
        self.ends = self.ends.split_off(self.ends.len() - keep);
        for end in &mut self.ends {
            *end -= cut;
        }
        sent
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.ends.len()
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.encoder.len()
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The bytes `row`'s entry takes ([`Row::weight`] for this series).
    pub fn weight(&self, row: &Row) -> usize {
        self.encoder.weight(row)
    }

    /// Gives back every row held, in order (the sink is left empty).
    pub fn take_all(&mut self) -> Vec<Row> {
        let mut back = self.take();
        let mut rows = Vec::new();
        while back.has_remaining() {
            rows.push(decode_entry(&mut back).expect("entries this sink encoded decode"));
        }
        rows
    }

    /// The key of the `i`th row held.
    ///
    /// # Panics
    /// If fewer than `i + 1` rows are held.
    pub fn key_of(&self, i: usize) -> Key {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        decode_entry(&mut &self.encoder.buf[start..self.ends[i]])
            .expect("entries this sink encoded decode")
            .key
    }
}

impl RowSink for EncodedEvents {
    fn push(&mut self, row: Row) {
        self.encoder.push(&row);
        self.ends.push(self.encoder.buf.len());
    }

    fn take_back(&mut self, n: usize) -> Option<(Key, Vec<Row>)> {
        if n == 0 || self.ends.len() <= n {
            return None;
        }
        let keep = self.ends.len() - n;
        let cut = self.ends[keep - 1];
        let mut back = Bytes::from(self.encoder.buf.split_off(cut));
        self.ends.truncate(keep);
        let mut rows = Vec::with_capacity(n);
        while back.has_remaining() {
            let entry = decode_entry(&mut back).expect("entries this sink encoded decode");
            rows.push(entry);
        }
        Some((self.key_of(keep - 1), rows))
    }
}

/// Decodes the field 1 entry at the start of `buf` into the row it was
/// encoded from (None if it is not one).
fn decode_entry(buf: &mut impl Buf) -> Option<Row> {
    let (tag, wire_type) = encoding::decode_key(buf).ok()?;
    if tag != 1 || wire_type != WireType::LengthDelimited {
        return None;
    }
    let event = pb::Event::decode_length_delimited(buf).ok()?;
    Some(Row {
        key: Key::new(event.event_time_micros, event.event_id),
        payload: event.payload,
        tags: event.tags,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::api::event_of;

    fn rows() -> Vec<Row> {
        vec![
            Row {
                key: Key::new(0, "a"),
                payload: Bytes::new(),
                tags: HashMap::new(),
            },
            Row {
                key: Key::new(-5, "b"),
                payload: Bytes::from_static(b"payload"),
                tags: [("k".to_string(), "v".to_string())].into(),
            },
            Row {
                key: Key::new(1_700_000_000_000_000, "event-000001"),
                payload: Bytes::from(vec![7; 300]),
                // Tags with an empty value encode a byte shorter than they
                // weigh: none here.
                tags: (1..=32).map(|i| (format!("t{i}"), "x".repeat(i))).collect(),
            },
            Row {
                key: Key::new(i64::MAX - 1, "e".repeat(256)),
                payload: Bytes::from(vec![1; 1 << 20]),
                tags: HashMap::new(),
            },
        ]
    }

    fn built(series: &str, rows: &[Row]) -> ReadEventsResponse {
        ReadEventsResponse {
            events: rows.iter().map(|r| event_of(series, r.clone())).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn encoded_events_decode_as_the_built_ones() {
        for series in ["s", &"series".repeat(40)] {
            let mut sink = EncodedEvents::new(series.into());
            for row in rows() {
                sink.push(row);
            }
            let response = ReadEventsResponse {
                encoded_events: sink.finish(),
                partial: true,
                partial_reason: pb::PartialReason::Slo as i32,
                continuation_token: "token".into(),
                watermark_micros: -3,
                stats: Some(pb::ReadStats {
                    rows_delivered: 4,
                    ..Default::default()
                }),
                ..Default::default()
            };
            let bytes = response.encode_to_vec();
            assert_eq!(bytes.len(), response.encoded_len());
            let decoded = ReadEventsResponse::decode(bytes.as_slice()).expect("decodes");
            let expected = ReadEventsResponse {
                encoded_events: Bytes::new(),
                ..built(series, &rows())
            };
            assert_eq!(decoded.events, expected.events);
            assert!(decoded.encoded_events.is_empty());
            assert_eq!(decoded.partial_reason(), pb::PartialReason::Slo);
            assert_eq!(decoded.continuation_token, "token");
            assert_eq!(decoded.watermark_micros, -3);
            assert_eq!(decoded.stats.map(|s| s.rows_delivered), Some(4));
            // The same bytes as prost's own encoding of the built events.
            let mut theirs = built(series, &rows());
            theirs.partial = true;
            theirs.partial_reason = pb::PartialReason::Slo as i32;
            theirs.continuation_token = "token".into();
            theirs.watermark_micros = -3;
            theirs.stats = decoded.stats;
            assert_eq!(theirs.encoded_len(), bytes.len());
        }
    }

    #[test]
    fn an_encoded_batch_decodes_as_the_built_one_in_a_stream_message() {
        let mut encoder = RowEncoder::new("s".into());
        for row in &rows() {
            encoder.push(row);
        }
        assert_eq!(encoder.rows, 4);
        let message = |batch| pb::StreamEventsResponse {
            message: Some(pb::stream_events_response::Message::Batch(batch)),
        };
        let ours = message(EventBatch {
            encoded_events: encoder.take(),
            events: vec![],
        });
        assert_eq!(encoder.rows, 0);
        assert!(encoder.take().is_empty(), "take leaves the encoder empty");
        let theirs = message(EventBatch {
            events: built("s", &rows()).events,
            encoded_events: Bytes::new(),
        });
        let bytes = ours.encode_to_vec();
        assert_eq!(bytes.len(), ours.encoded_len());
        // As long as prost's (tags may come in another order: not the same bytes).
        assert_eq!(bytes.len(), theirs.encoded_len());
        assert_eq!(
            pb::StreamEventsResponse::decode(bytes.as_slice()).expect("decodes"),
            theirs
        );
    }

    #[test]
    fn an_entry_weighs_what_the_page_byte_limit_counts() {
        for series in ["s", &"series".repeat(40)] {
            for row in rows() {
                let mut buf = Vec::new();
                encode_event(series, &row, &mut buf);
                assert_eq!(buf.len(), row.weight(series.len()), "{:?}", row.key);
            }
        }
    }

    #[test]
    fn rows_taken_back_are_the_last_ones_and_whole_entries_stay() {
        let all = rows();
        let mut sink = EncodedEvents::new("s".into());
        for row in all.clone() {
            sink.push(row);
        }
        assert!(sink.take_back(0).is_none());
        assert!(sink.take_back(4).is_none(), "one row must stay");
        let (last, back) = sink.take_back(2).expect("two of four");
        assert_eq!(back, all[2..].to_vec());
        assert_eq!(last, all[1].key);
        assert_eq!(sink.ends.len(), 2);
        let response = ReadEventsResponse {
            encoded_events: sink.finish(),
            ..Default::default()
        };
        let decoded =
            ReadEventsResponse::decode(response.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded.events, built("s", &all[..2]).events);
    }

    #[test]
    fn taking_all_but_the_last_rows_keeps_them_whole_and_in_order() {
        let all = rows();
        let events = |bytes: Bytes| {
            let batch = EventBatch {
                encoded_events: bytes,
                events: vec![],
            };
            EventBatch::decode(batch.encode_to_vec().as_slice())
                .expect("decodes")
                .events
        };
        let mut sink = EncodedEvents::new("s".into());
        for row in all.clone() {
            sink.push(row);
        }
        assert!(sink.take_but(4).is_empty(), "no more than 4 rows: all stay");
        assert_eq!(sink.rows(), 4);
        assert_eq!(events(sink.take_but(1)), built("s", &all[..3]).events);
        assert_eq!(sink.rows(), 1);
        assert_eq!(sink.key_of(0), all[3].key);
        sink.push(all[0].clone());
        // The row kept and the one pushed after it go on as one.
        let (last, back) = sink.take_back(1).expect("one of two");
        assert_eq!((last, back), (all[3].key.clone(), vec![all[0].clone()]));
        assert_eq!(sink.take_all(), vec![all[3].clone()]);
        assert!(sink.is_empty() && sink.take_but(0).is_empty());
    }
}
