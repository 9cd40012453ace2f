//! Domain types shared by every layer: namespaces, events, clustering keys,
//! bucket arithmetic and the request limits. Nothing here knows about gRPC or
//! Cassandra.

use std::collections::HashMap;

use bytes::Bytes;

/// Default bucket width when a namespace is created with 0: one hour.
pub const DEFAULT_BUCKET_WIDTH_MICROS: i64 = 3_600_000_000;
/// Smallest allowed bucket width: one millisecond.
pub const MIN_BUCKET_WIDTH_MICROS: i64 = 1_000;
/// Most shards a namespace may have.
pub const MAX_SHARDS: u32 = 256;
/// Cassandra's maximum TTL (20 years).
pub const CASSANDRA_MAX_TTL_SECONDS: u32 = 630_720_000;
/// The bucket index of a series outlives its rows by this much (so a reader
/// never misses a stored row while the index entry expires).
pub const INDEX_TTL_SLACK_SECONDS: u32 = 120;
/// Longest retention: every TTL written, the index's included, stays within
/// Cassandra's maximum.
pub const MAX_RETENTION_SECONDS: u32 = CASSANDRA_MAX_TTL_SECONDS - INDEX_TTL_SLACK_SECONDS;
/// Latest event time that can be written: read ranges end before
/// `end_time_micros`, which is at most `i64::MAX`, so an event at
/// `i64::MAX` could never be read.
pub const MAX_EVENT_TIME_MICROS: i64 = i64::MAX - 1;
/// Longest namespace name.
pub const MAX_NAMESPACE_LEN: usize = 64;
/// Longest series id, in bytes.
pub const MAX_SERIES_ID_LEN: usize = 256;
/// Longest event id, in bytes.
pub const MAX_EVENT_ID_LEN: usize = 256;
/// Largest payload, in bytes.
pub const MAX_PAYLOAD_LEN: usize = 1 << 20;
/// Most tags on one event.
pub const MAX_TAGS: usize = 32;
/// Longest tag key, in bytes.
pub const MAX_TAG_KEY_LEN: usize = 128;
/// Longest tag value, in bytes.
pub const MAX_TAG_VALUE_LEN: usize = 1024;
/// Most events in one write batch.
pub const MAX_BATCH_EVENTS: usize = 10_000;

/// How a namespace lays its series out in storage. Immutable once created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub bucket_width_micros: i64,
    pub shards: u32,
    /// TTL applied on write; 0 means none.
    pub retention_seconds: u32,
    /// Whether the bucket index names the shards each bucket's rows were
    /// written to, so a read asks only those (see
    /// [`crate::storage::IndexedBucket`]). True for namespaces created by
    /// this release (every write indexes its shards); false for those
    /// created before, whose buckets may hold rows no index entry names,
    /// so a read asks every shard of each bucket. Not a setting: two
    /// namespaces of the same settings are the same (see
    /// [`Namespace::same_settings`]).
    pub indexes_shards: bool,
}

/// A namespace setting outside the range the API accepts; `field` is the
/// setting's name in `Namespace` (`shards`, ...).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} {description}")]
pub struct NamespaceProblem {
    pub field: &'static str,
    pub description: String,
}

impl Namespace {
    /// A namespace from explicit settings (no defaults applied), checked
    /// against the rules every namespace obeys: bucket width at least
    /// [`MIN_BUCKET_WIDTH_MICROS`], 1 to [`MAX_SHARDS`] shards, retention 0 to
    /// [`MAX_RETENTION_SECONDS`]. Signed inputs, so values read back from
    /// storage columns are checked before any cast.
    pub fn checked(
        name: String,
        bucket_width_micros: i64,
        shards: i64,
        retention_seconds: i64,
    ) -> Result<Self, NamespaceProblem> {
        let problem = |field, description: String| NamespaceProblem { field, description };
        if bucket_width_micros < MIN_BUCKET_WIDTH_MICROS {
            return Err(problem(
                "bucket_width_micros",
                format!("must be at least {MIN_BUCKET_WIDTH_MICROS} (got {bucket_width_micros})"),
            ));
        }
        let shards = u32::try_from(shards)
            .ok()
            .filter(|s| (1..=MAX_SHARDS).contains(s))
            .ok_or_else(|| {
                problem(
                    "shards",
                    format!("must be at least 1 and at most {MAX_SHARDS} (got {shards})"),
                )
            })?;
        let retention_seconds = u32::try_from(retention_seconds)
            .ok()
            .filter(|r| *r <= MAX_RETENTION_SECONDS)
            .ok_or_else(|| {
                problem(
                    "retention_seconds",
                    format!(
                        "must be at most {MAX_RETENTION_SECONDS} (Cassandra's maximum TTL of \
                         {CASSANDRA_MAX_TTL_SECONDS} s less the bucket index's \
                         {INDEX_TTL_SLACK_SECONDS} s; got {retention_seconds})"
                    ),
                )
            })?;
        Ok(Self {
            name,
            bucket_width_micros,
            shards,
            retention_seconds,
            indexes_shards: true,
        })
    }

    /// Whether `other` has this namespace's name and settings (whatever
    /// either's [`Namespace::indexes_shards`]).
    pub fn same_settings(&self, other: &Self) -> bool {
        self.name == other.name
            && self.bucket_width_micros == other.bucket_width_micros
            && self.shards == other.shards
            && self.retention_seconds == other.retention_seconds
    }

    /// The bucket that holds `time`: floor(time / width), correct for negative
    /// times and for the whole i64 range.
    pub fn bucket_of(&self, time: i64) -> i64 {
        bucket_of(time, self.bucket_width_micros)
    }

    /// The shard of an event id: a stable hash, identical on every replica and
    /// release (changing it would orphan stored rows).
    pub fn shard_of(&self, event_id: &str) -> u32 {
        let shard = fnv1a64(event_id.as_bytes()) % u64::from(self.shards);
        u32::try_from(shard).expect("a remainder of a u32 fits a u32")
    }
}

/// floor(time / width) for width > 0.
pub fn bucket_of(time: i64, width: i64) -> i64 {
    time.div_euclid(width)
}

/// First microsecond of `bucket`, saturating at the i64 range.
pub fn bucket_start(bucket: i64, width: i64) -> i64 {
    let start = i128::from(bucket) * i128::from(width);
    i64::try_from(start).unwrap_or(if start < 0 { i64::MIN } else { i64::MAX })
}

/// FNV-1a, 64 bit. Chosen for being tiny and fixed forever.
fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

/// One stored event of a series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub key: Key,
    pub payload: Bytes,
    pub tags: HashMap<String, String>,
}

impl Row {
    /// Bytes this row adds to a read response whose events belong to a
    /// series id of `series_len` bytes: the encoded `Event` (series id,
    /// time, id, payload, tags) with its field tag and length prefix, as the
    /// wire carries it (exactly; tags with an empty key or value are counted
    /// as if encoded, so at most one byte each over). What
    /// `page_bytes_limit` bounds.
    pub fn weight(&self, series_len: usize) -> usize {
        let tags: usize = self
            .tags
            .iter()
            .map(|(k, v)| embedded(field(k.len()) + field(v.len())))
            .sum();
        let time = if self.key.time == 0 {
            0
        } else {
            1 + varint_len(u64::from_ne_bytes(self.key.time.to_ne_bytes()))
        };
        embedded(
            nonempty_field(series_len)
                + time
                + nonempty_field(self.key.id.len())
                + nonempty_field(self.payload.len())
                + tags,
        )
    }
}

/// Bytes of a protobuf varint of `v`.
fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// A length-delimited field of `len` bytes with its one-byte tag.
fn field(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// [`field`], omitted (proto3) when empty.
fn nonempty_field(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        field(len)
    }
}

/// A message of `len` bytes embedded as a field (repeated or map entry).
fn embedded(len: usize) -> usize {
    field(len)
}

/// An event to write, already validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    pub series_id: String,
    pub row: Row,
}

/// The clustering key of a row: (event time, event id), ordered by time then id.
///
/// A key with an empty id sorts before every row at that time (valid ids are
/// never empty), so `Key::boundary(t)` is an exclusive bound that includes
/// every row at time `t` and after.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub time: i64,
    pub id: String,
}

impl Key {
    pub fn new(time: i64, id: impl Into<String>) -> Self {
        Self {
            time,
            id: id.into(),
        }
    }

    /// The position just before every row at `time`.
    pub fn boundary(time: i64) -> Self {
        Self::new(time, String::new())
    }
}

/// Where one shard of the bucket a resumed read begins in is known to
/// hold no row: between the read's frontier and the boundary at `time`,
/// in read order (ascending, no row of the shard beyond the frontier has
/// `time < self.time`; descending, none has `time >= self.time`), as of
/// when its page was fetched. A partial read gives one for each shard of
/// its frontier's bucket whose next row it had seen (a page fetched ahead
/// of the frontier) or whose end it had reached; the continuation token
/// carries them, so a resumed read on any replica asks each such shard
/// for rows from there on, and can merge the other shards' rows before
/// it (see `engine::merge`) instead of waiting for every shard's first
/// page. A row written between calls into that gap is not returned,
/// which the freshness rule allows (a row written ahead of the token may
/// or may not be); rows that existed are never skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardStart {
    pub shard: u32,
    pub time: i64,
}

/// Read order over the clustering key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Order {
    Ascending,
    Descending,
}

/// The part of clustering-key space still to read: rows strictly between
/// `after` and `before`. Ascending reads move `after` forward; descending
/// reads move `before` back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    pub after: Key,
    pub before: Key,
}

impl Span {
    /// The span of a time range [start, end).
    pub fn of_range(start: i64, end: i64) -> Self {
        Self {
            after: Key::boundary(start),
            before: Key::boundary(end),
        }
    }

    /// Whether `key` lies strictly inside the span.
    pub fn contains(&self, key: &Key) -> bool {
        &self.after < key && key < &self.before
    }

    /// First and last bucket (inclusive) that can hold rows of the span, or
    /// None when the span is empty.
    pub fn buckets(&self, width: i64) -> Option<(i64, i64)> {
        let first = bucket_of(self.after.time, width);
        // `before` is exclusive; a boundary key excludes its whole time.
        let last_time = if self.before.id.is_empty() {
            self.before.time.checked_sub(1)?
        } else {
            self.before.time
        };
        let last = bucket_of(last_time, width);
        (self.after < self.before && first <= last).then_some((first, last))
    }

    /// The span narrowed to what remains after reading up to `frontier` in
    /// `order` (the frontier itself excluded).
    pub fn resume_from(&self, frontier: &Key, order: Order) -> Self {
        match order {
            Order::Ascending => Self {
                after: frontier.clone(),
                before: self.before.clone(),
            },
            Order::Descending => Self {
                after: self.after.clone(),
                before: frontier.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_floor_negative_times() {
        assert_eq!(bucket_of(-1, 10), -1);
        assert_eq!(bucket_of(-10, 10), -1);
        assert_eq!(bucket_of(-11, 10), -2);
        assert_eq!(bucket_of(0, 10), 0);
        assert_eq!(bucket_of(9, 10), 0);
        assert_eq!(bucket_of(10, 10), 1);
    }

    #[test]
    fn buckets_at_i64_extremes() {
        let w = 60_000_000;
        assert_eq!(bucket_of(i64::MIN, w), i64::MIN.div_euclid(w));
        assert_eq!(bucket_of(i64::MAX, w), i64::MAX / w);
        assert!(bucket_start(bucket_of(i64::MIN, w), w) <= i64::MIN + w);
        assert_eq!(bucket_start(i64::MAX, w), i64::MAX);
        assert_eq!(bucket_start(i64::MIN, w), i64::MIN);
        assert_eq!(bucket_start(-1, w), -w);
        // Every time lies in [start(b), start(b+1)).
        for t in [
            i64::MIN,
            i64::MIN + 1,
            -w - 1,
            -w,
            -1,
            0,
            1,
            w - 1,
            w,
            i64::MAX - 1,
        ] {
            let b = bucket_of(t, w);
            assert!(bucket_start(b, w) <= t, "t={t}");
            assert!(
                t < bucket_start(b + 1, w) || b == bucket_of(i64::MAX, w),
                "t={t}"
            );
        }
    }

    #[test]
    fn span_buckets_respect_exclusive_end() {
        let s = Span::of_range(0, 20);
        assert_eq!(s.buckets(10), Some((0, 1)));
        let s = Span::of_range(0, 21);
        assert_eq!(s.buckets(10), Some((0, 2)));
        let s = Span::of_range(-5, 5);
        assert_eq!(s.buckets(10), Some((-1, 0)));
        assert_eq!(Span::of_range(5, 5).buckets(10), None);
        assert_eq!(Span::of_range(i64::MIN, i64::MIN).buckets(10), None);
        assert_eq!(
            Span::of_range(i64::MIN, i64::MAX).buckets(10),
            Some((i64::MIN / 10 - 1, (i64::MAX - 1) / 10))
        );
        // A row key as `before` keeps its own time's bucket.
        let s = Span {
            after: Key::boundary(0),
            before: Key::new(20, "x"),
        };
        assert_eq!(s.buckets(10), Some((0, 2)));
    }

    #[test]
    fn span_contains_is_exclusive_and_boundary_includes_time() {
        let s = Span::of_range(10, 20);
        assert!(s.contains(&Key::new(10, "a")));
        assert!(s.contains(&Key::new(19, "zzz")));
        assert!(!s.contains(&Key::new(20, "a")));
        assert!(!s.contains(&Key::new(9, "z")));
        let r = s.resume_from(&Key::new(12, "b"), Order::Ascending);
        assert!(!r.contains(&Key::new(12, "b")));
        assert!(r.contains(&Key::new(12, "c")));
        let r = s.resume_from(&Key::new(12, "b"), Order::Descending);
        assert!(r.contains(&Key::new(12, "a")));
        assert!(!r.contains(&Key::new(12, "b")));
    }

    #[test]
    fn shard_hash_is_stable() {
        // Fixed vectors: these must never change (stored rows depend on them).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        let ns = Namespace {
            name: "n".into(),
            bucket_width_micros: 10,
            shards: 4,
            retention_seconds: 0,
            indexes_shards: true,
        };
        assert_eq!(ns.shard_of("a"), (0xaf63_dc4c_8601_ec8c_u64 % 4) as u32);
    }
}
