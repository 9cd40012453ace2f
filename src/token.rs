//! Continuation tokens: a signed, stateless position in clustering-key terms.
//!
//! A token says "this query, resumed strictly after key K". It holds no
//! Cassandra paging state, so it works on any replica of the service, after
//! restarts and across storage node changes. Layout (version 2), then
//! base64url without padding:
//!
//! ```text
//! u8 version | u8 key-id len | key id | u64 expires (unix ms) |
//! [16] query fingerprint | i64 frontier time | u16 id len | frontier id |
//! [16] HMAC-SHA256(key, all previous bytes), truncated
//! ```
//!
//! Version 3 adds, before the MAC, where shards of the frontier's bucket
//! are known to hold nothing ([`ShardStart`]):
//!
//! ```text
//! u8 count (1..=MAX_SHARD_STARTS) | count x (u16 shard | i32 time - frontier time)
//! ```
//!
//! A token without shard starts is written as version 2, so servers of the
//! release before read it. Version 1 tokens (expiry in whole unix seconds)
//! are still read, so tokens in flight survive an upgrade; the expiry of
//! versions 2 and 3 is exact to the millisecond.
//!
//! Invariants: a token decodes only if its MAC verifies under the key named
//! inside it, it has not expired, and its fingerprint equals the fingerprint
//! of the request presenting it (namespace, series, range, order and the
//! namespace's bucketing). A token therefore grants nothing: it can only
//! resume the very query it came from.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::model::{Key, Namespace, Order, ShardStart, MAX_EVENT_ID_LEN};

/// Token format version without shard starts.
pub const TOKEN_VERSION: u8 = 2;
/// Token format version with shard starts.
pub const TOKEN_VERSION_STARTS: u8 = 3;
/// Most shard starts a token carries (a read of a namespace with more
/// shards resumes the others from the frontier).
pub const MAX_SHARD_STARTS: usize = 32;
/// The previous format, still read: its expiry is in unix seconds.
const TOKEN_VERSION_SECONDS: u8 = 1;
const FINGERPRINT_LEN: usize = 16;
const MAC_LEN: usize = 16;
/// Shortest secret accepted for signing.
pub const MIN_SECRET_LEN: usize = 16;
/// Longest key id.
pub const MAX_KEY_ID_LEN: usize = 32;
/// Longest token string accepted before decoding.
pub const MAX_TOKEN_LEN: usize = 1024;

type HmacSha256 = Hmac<Sha256>;

/// Why a token was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Not base64url, too short, too long or structurally broken.
    #[error("continuation token is malformed: {0}")]
    Malformed(&'static str),
    /// A format version this server does not read.
    #[error("continuation token version {0} is not supported")]
    UnsupportedVersion(u8),
    /// Signed with a key id this server does not hold.
    #[error("continuation token was signed with unknown key id {0:?}")]
    UnknownKey(String),
    /// The MAC does not verify: the token was altered or forged.
    #[error("continuation token signature is invalid")]
    BadSignature,
    /// The token is past its expiry.
    #[error("continuation token expired")]
    Expired,
    /// The token belongs to a different query (or the namespace's bucketing changed).
    #[error("continuation token belongs to a different query")]
    QueryMismatch,
}

/// Why a key ring could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyRingError {
    /// No key given.
    #[error("no token signing key configured")]
    Empty,
    /// An entry is not `id:secret`, or the id is empty or too long.
    #[error("token key entry {0} is not of the form id:secret (id 1-32 chars)")]
    BadEntry(usize),
    /// A secret is shorter than [`MIN_SECRET_LEN`].
    #[error("token key {0:?} is shorter than {MIN_SECRET_LEN} bytes")]
    ShortSecret(String),
    /// The same id appears twice.
    #[error("token key id {0:?} appears twice")]
    DuplicateId(String),
}

/// How long a continuation token stays valid by default.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// The server's signing keys: the first signs, all verify (for rotation).
#[derive(Clone)]
pub struct KeyRing {
    signing_id: String,
    keys: HashMap<String, Vec<u8>>,
    ttl: Duration,
    /// Whether new tokens carry shard starts (version 3); see
    /// [`KeyRing::with_shard_starts`].
    shard_starts: bool,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("KeyRing")
            .field("signing_id", &self.signing_id)
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .field("ttl", &self.ttl)
            .field("shard_starts", &self.shard_starts)
            .finish()
    }
}

impl KeyRing {
    /// Parses `id:secret[,id:secret...]`; the first entry signs new tokens.
    pub fn parse(spec: &str, ttl: Duration) -> Result<Self, KeyRingError> {
        let mut keys = HashMap::new();
        let mut signing_id = None;
        for (i, entry) in spec
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let (id, secret) = entry.split_once(':').ok_or(KeyRingError::BadEntry(i))?;
            if id.is_empty() || id.len() > MAX_KEY_ID_LEN {
                return Err(KeyRingError::BadEntry(i));
            }
            if secret.len() < MIN_SECRET_LEN {
                return Err(KeyRingError::ShortSecret(id.to_string()));
            }
            if keys
                .insert(id.to_string(), secret.as_bytes().to_vec())
                .is_some()
            {
                return Err(KeyRingError::DuplicateId(id.to_string()));
            }
            signing_id.get_or_insert_with(|| id.to_string());
        }
        Ok(Self {
            signing_id: signing_id.ok_or(KeyRingError::Empty)?,
            keys,
            ttl,
            shard_starts: true,
        })
    }

    /// Whether new tokens carry shard starts (default true). Off, every
    /// token is written as version 2, which the release before reads: for
    /// a fleet upgraded replica by replica, until every replica reads
    /// version 3. Tokens of either version are read either way.
    #[must_use]
    pub fn with_shard_starts(mut self, on: bool) -> Self {
        self.shard_starts = on;
        self
    }

    /// How many keys verify tokens.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Id of the key that signs new tokens.
    pub fn signing_id(&self) -> &str {
        &self.signing_id
    }

    /// Signs a token for `query` resuming after `frontier`.
    pub fn issue(&self, query: &QueryFingerprint, frontier: &Key) -> String {
        self.issue_at(query, frontier, unix_millis())
    }

    /// [`KeyRing::issue`] at `now` (unix milliseconds), for tests.
    pub fn issue_at(&self, query: &QueryFingerprint, frontier: &Key, now: u64) -> String {
        self.issue_with_starts_at(query, frontier, &[], now)
    }

    /// Signs a token for `query` resuming after `frontier`, with the shard
    /// starts of its bucket: at most [`MAX_SHARD_STARTS`], and only those
    /// within an `i32` of microseconds of the frontier (others are left
    /// out, so their shards resume from the frontier).
    pub fn issue_with_starts(
        &self,
        query: &QueryFingerprint,
        frontier: &Key,
        starts: &[ShardStart],
    ) -> String {
        self.issue_with_starts_at(query, frontier, starts, unix_millis())
    }

    /// [`KeyRing::issue_with_starts`] at `now` (unix milliseconds).
    pub fn issue_with_starts_at(
        &self,
        query: &QueryFingerprint,
        frontier: &Key,
        starts: &[ShardStart],
        now: u64,
    ) -> String {
        let starts = if self.shard_starts { starts } else { &[] };
        let starts: Vec<(u16, i32)> = starts
            .iter()
            .filter_map(|s| {
                let offset = i32::try_from(i128::from(s.time) - i128::from(frontier.time)).ok()?;
                Some((u16::try_from(s.shard).ok()?, offset))
            })
            .take(MAX_SHARD_STARTS)
            .collect();
        let id = self.signing_id.as_bytes();
        let mut buf = Vec::with_capacity(64 + id.len() + frontier.id.len() + 6 * starts.len());
        buf.push(if starts.is_empty() {
            TOKEN_VERSION
        } else {
            TOKEN_VERSION_STARTS
        });
        buf.push(u8::try_from(id.len()).expect("key ids are at most 255 bytes (KeyRing::parse)"));
        buf.extend_from_slice(id);
        let ttl = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        buf.extend_from_slice(&now.saturating_add(ttl).to_be_bytes());
        buf.extend_from_slice(&query.0);
        buf.extend_from_slice(&frontier.time.to_be_bytes());
        // Event ids are at most 256 bytes; a longer one (written by another
        // tool) gives a token that fails to decode, never a wrong position.
        let id_len = u16::try_from(frontier.id.len()).unwrap_or(u16::MAX);
        buf.extend_from_slice(&id_len.to_be_bytes());
        buf.extend_from_slice(frontier.id.as_bytes());
        if !starts.is_empty() {
            buf.push(u8::try_from(starts.len()).expect("at most MAX_SHARD_STARTS"));
            for (shard, offset) in starts {
                buf.extend_from_slice(&shard.to_be_bytes());
                buf.extend_from_slice(&offset.to_be_bytes());
            }
        }
        let mac = mac(&self.keys[&self.signing_id], &buf);
        buf.extend_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(buf)
    }

    /// Signs arbitrary `body` bytes as a token, so the fuzz harness can
    /// reach the parser behind the MAC. Not for serving.
    #[doc(hidden)]
    pub fn seal_unchecked(&self, body: &[u8]) -> String {
        let mut buf = body.to_vec();
        buf.extend_from_slice(&mac(&self.keys[&self.signing_id], body));
        URL_SAFE_NO_PAD.encode(buf)
    }

    /// Verifies `token` for `query` and returns the frontier it resumes after.
    pub fn verify(&self, token: &str, query: &QueryFingerprint) -> Result<Key, TokenError> {
        self.verify_at(token, query, unix_millis())
    }

    /// [`KeyRing::verify`], with the shard starts the token carries.
    pub fn verify_with_starts(
        &self,
        token: &str,
        query: &QueryFingerprint,
    ) -> Result<(Key, Vec<ShardStart>), TokenError> {
        self.verify_with_starts_at(token, query, unix_millis())
    }

    /// [`KeyRing::verify`] at `now` (unix milliseconds), for tests: a token
    /// is valid up to and including its expiry millisecond.
    pub fn verify_at(
        &self,
        token: &str,
        query: &QueryFingerprint,
        now: u64,
    ) -> Result<Key, TokenError> {
        self.verify_with_starts_at(token, query, now)
            .map(|(frontier, _)| frontier)
    }

    /// [`KeyRing::verify_with_starts`] at `now` (unix milliseconds).
    pub fn verify_with_starts_at(
        &self,
        token: &str,
        query: &QueryFingerprint,
        now: u64,
    ) -> Result<(Key, Vec<ShardStart>), TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("too long"));
        }
        let raw = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| TokenError::Malformed("not base64url"))?;
        fits_its_layout(&raw)?;
        // The MAC is split off first: everything parsed below lies in the
        // signed part, never in the tag.
        let signed_len = raw
            .len()
            .checked_sub(MAC_LEN)
            .ok_or(TokenError::Malformed("truncated"))?;
        let (signed, tag) = raw.split_at(signed_len);
        let mut r = Reader(signed);
        let version = r.u8()?;
        if ![TOKEN_VERSION, TOKEN_VERSION_SECONDS, TOKEN_VERSION_STARTS].contains(&version) {
            return Err(TokenError::UnsupportedVersion(version));
        }
        let id_len = usize::from(r.u8()?);
        let id = std::str::from_utf8(r.take(id_len)?)
            .map_err(|_| TokenError::Malformed("key id is not UTF-8"))?;
        let key = self
            .keys
            .get(id)
            .ok_or_else(|| TokenError::UnknownKey(id.chars().take(MAX_KEY_ID_LEN).collect()))?;
        let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
        m.update(signed);
        m.verify_truncated_left(tag)
            .map_err(|_| TokenError::BadSignature)?;
        // From here on the bytes are ours; still parse defensively.
        let mut r = Reader(r.0);
        let expires = match r.u64()? {
            // Valid through the whole last second, as version 1 was.
            secs if version == TOKEN_VERSION_SECONDS => {
                secs.saturating_mul(1000).saturating_add(999)
            }
            millis => millis,
        };
        let fingerprint = r.take(FINGERPRINT_LEN)?;
        let time = i64::from_be_bytes(r.u64()?.to_be_bytes());
        let frontier_len = usize::from(r.u16()?);
        if frontier_len > MAX_EVENT_ID_LEN {
            return Err(TokenError::Malformed("frontier id too long"));
        }
        let frontier_id = std::str::from_utf8(r.take(frontier_len)?)
            .map_err(|_| TokenError::Malformed("frontier id is not UTF-8"))?;
        let mut starts = Vec::new();
        if version == TOKEN_VERSION_STARTS {
            let count = usize::from(r.u8()?);
            if count == 0 || count > MAX_SHARD_STARTS {
                return Err(TokenError::Malformed("shard start count out of range"));
            }
            for _ in 0..count {
                let shard = u32::from(r.u16()?);
                let offset = i32::from_be_bytes(r.take(4)?.try_into().expect("4 bytes"));
                starts.push(ShardStart {
                    shard,
                    time: time.saturating_add(i64::from(offset)),
                });
            }
        }
        if !r.0.is_empty() {
            return Err(TokenError::Malformed("trailing bytes"));
        }
        if now > expires {
            return Err(TokenError::Expired);
        }
        if fingerprint != query.0 {
            return Err(TokenError::QueryMismatch);
        }
        Ok((Key::new(time, frontier_id), starts))
    }
}

/// A token cut short is malformed, not forged: the layout its own length
/// fields give needs more bytes than it has. Those fields are read before
/// the MAC is checked only to tell the two apart; nothing they say is used
/// until it verifies. A token of a version not read passes, for the version
/// check to name it.
fn fits_its_layout(raw: &[u8]) -> Result<(), TokenError> {
    let mut r = Reader(raw);
    let version = r.u8()?;
    if ![TOKEN_VERSION, TOKEN_VERSION_SECONDS, TOKEN_VERSION_STARTS].contains(&version) {
        return Ok(());
    }
    let id_len = usize::from(r.u8()?);
    r.take(id_len + 8 + FINGERPRINT_LEN + 8)?;
    let frontier_len = usize::from(r.u16()?);
    r.take(frontier_len)?;
    if version == TOKEN_VERSION_STARTS {
        let count = usize::from(r.u8()?);
        r.take(6 * count)?;
    }
    r.take(MAC_LEN).map(|_| ())
}

fn mac(key: &[u8], data: &[u8]) -> [u8; MAC_LEN] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    let full = m.finalize().into_bytes();
    let mut out = [0; MAC_LEN];
    out.copy_from_slice(&full[..MAC_LEN]);
    out
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TokenError> {
        if self.0.len() < n {
            return Err(TokenError::Malformed("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, TokenError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, TokenError> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, TokenError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

/// A digest of everything a token is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryFingerprint([u8; FINGERPRINT_LEN]);

impl QueryFingerprint {
    pub fn new(ns: &Namespace, series_id: &str, start: i64, end: i64, order: Order) -> Self {
        let mut h = Sha256::new();
        // Length-prefix strings so no two field lists hash alike.
        for s in [ns.name.as_str(), series_id] {
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        }
        h.update(start.to_be_bytes());
        h.update(end.to_be_bytes());
        h.update([u8::from(matches!(order, Order::Descending))]);
        h.update(ns.bucket_width_micros.to_be_bytes());
        h.update(ns.shards.to_be_bytes());
        let mut out = [0; FINGERPRINT_LEN];
        out.copy_from_slice(&h.finalize()[..FINGERPRINT_LEN]);
        Self(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_id_running_into_the_mac_is_malformed_not_a_panic() {
        // Find a secret whose MAC of [version, id_len = 1] starts with the
        // key id "a": the id read from the raw bytes then overlaps the MAC.
        let body = [TOKEN_VERSION, 1];
        let secret = (0..u32::MAX)
            .map(|i| format!("secret-{i:010}"))
            .find(|s| mac(s.as_bytes(), &body)[0] == b'a')
            .unwrap();
        let keys = KeyRing::parse(&format!("a:{secret}"), Duration::from_secs(60)).unwrap();
        let token = keys.seal_unchecked(&body);
        let fp = QueryFingerprint::new(&ns(), "s", 0, 10, Order::Ascending);
        assert_eq!(
            keys.verify_at(&token, &fp, 0),
            Err(TokenError::Malformed("truncated"))
        );
    }

    fn ns() -> Namespace {
        Namespace {
            name: "metrics".into(),
            bucket_width_micros: 60_000_000,
            shards: 4,
            retention_seconds: 0,
            indexes_shards: true,
        }
    }

    fn ring() -> KeyRing {
        KeyRing::parse("k1:0123456789abcdef0123", Duration::from_secs(3600)).unwrap()
    }

    fn fp() -> QueryFingerprint {
        QueryFingerprint::new(&ns(), "s1", 0, 1000, Order::Ascending)
    }

    #[test]
    fn round_trip() {
        for key in [
            Key::new(0, "a"),
            Key::new(i64::MIN, ""),
            Key::new(i64::MAX, "é-ünïcode"),
            Key::new(-5, "x".repeat(MAX_EVENT_ID_LEN)),
        ] {
            let t = ring().issue_at(&fp(), &key, 100);
            assert!(t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(ring().verify_at(&t, &fp(), 100), Ok(key));
        }
    }

    #[test]
    fn shard_starts_round_trip_and_stay_bounded() {
        let frontier = Key::new(1_000, "e-1");
        let starts: Vec<ShardStart> = (0..40)
            .map(|shard| ShardStart {
                shard,
                time: 1_000 + i64::from(shard) * 7,
            })
            .collect();
        let t = ring().issue_with_starts_at(&fp(), &frontier, &starts, 100);
        let (at, got) = ring().verify_with_starts_at(&t, &fp(), 100).unwrap();
        assert_eq!(at, frontier);
        assert_eq!(got, starts[..MAX_SHARD_STARTS], "the first 32 are kept");
        assert!(t.len() <= MAX_TOKEN_LEN);
        // The frontier alone, for callers that want only it.
        assert_eq!(ring().verify_at(&t, &fp(), 100), Ok(frontier.clone()));

        // Starts an i32 of microseconds cannot reach, or a shard no u16
        // names, are left out; none left gives a version 2 token.
        let far = [
            ShardStart {
                shard: 1,
                time: 1_000 + i64::from(i32::MAX) + 1,
            },
            ShardStart {
                shard: 1 << 16,
                time: 1_001,
            },
        ];
        let t = ring().issue_with_starts_at(&fp(), &frontier, &far, 100);
        assert_eq!(URL_SAFE_NO_PAD.decode(&t).unwrap()[0], TOKEN_VERSION);
        assert_eq!(
            ring().verify_with_starts_at(&t, &fp(), 100),
            Ok((frontier.clone(), vec![]))
        );
        let near = [ShardStart {
            shard: 3,
            time: 1_000 + i64::from(i32::MIN),
        }];
        let t = ring().issue_with_starts_at(&fp(), &frontier, &near, 100);
        assert_eq!(
            ring().verify_with_starts_at(&t, &fp(), 100),
            Ok((frontier, near.to_vec()))
        );
    }

    #[test]
    fn a_ring_without_shard_starts_writes_version_2_and_reads_both() {
        let frontier = Key::new(1_000, "e-1");
        let starts = [ShardStart {
            shard: 1,
            time: 1_005,
        }];
        let with = ring().issue_with_starts_at(&fp(), &frontier, &starts, 100);
        let off = ring().with_shard_starts(false);
        let without = off.issue_with_starts_at(&fp(), &frontier, &starts, 100);
        assert_eq!(URL_SAFE_NO_PAD.decode(&without).unwrap()[0], TOKEN_VERSION);
        assert_eq!(
            off.verify_with_starts_at(&without, &fp(), 100),
            Ok((frontier.clone(), vec![]))
        );
        assert_eq!(
            off.verify_with_starts_at(&with, &fp(), 100),
            Ok((frontier, starts.to_vec()))
        );
    }

    #[test]
    fn a_version_3_token_with_a_bad_start_list_is_malformed() {
        let mut body = vec![TOKEN_VERSION_STARTS, 2, b'k', b'1'];
        body.extend_from_slice(&u64::MAX.to_be_bytes());
        body.extend_from_slice(&fp().0);
        body.extend_from_slice(&5i64.to_be_bytes());
        body.extend_from_slice(&1u16.to_be_bytes());
        body.push(b'a');
        for (tail, why) in [
            (vec![], "truncated"),
            (vec![0], "shard start count out of range"),
            (
                [33].into_iter().chain([0; 33 * 6]).collect(),
                "shard start count out of range",
            ),
            (vec![1, 0, 1, 0, 0, 0], "truncated"),
            (vec![1, 0, 1, 0, 0, 0, 9, 9], "trailing bytes"),
        ] {
            let mut b = body.clone();
            b.extend_from_slice(&tail);
            let t = ring().seal_unchecked(&b);
            assert_eq!(
                ring().verify_at(&t, &fp(), 0),
                Err(TokenError::Malformed(why)),
                "tail {tail:?}"
            );
        }
        let mut b = body;
        b.extend_from_slice(&[1, 0, 2, 0xff, 0xff, 0xff, 0xfe]);
        let t = ring().seal_unchecked(&b);
        assert_eq!(
            ring().verify_with_starts_at(&t, &fp(), 0),
            Ok((Key::new(5, "a"), vec![ShardStart { shard: 2, time: 3 }]))
        );
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        let r = ring();
        assert_eq!(
            r.verify_at("", &fp(), 0),
            Err(TokenError::Malformed("truncated"))
        );
        assert_eq!(
            r.verify_at("!!!", &fp(), 0),
            Err(TokenError::Malformed("not base64url"))
        );
        assert_eq!(
            r.verify_at(&"A".repeat(MAX_TOKEN_LEN + 1), &fp(), 0),
            Err(TokenError::Malformed("too long"))
        );
        let starts = [ShardStart { shard: 1, time: 9 }];
        for t in [
            r.issue_at(&fp(), &Key::new(7, "abc"), 0),
            r.issue_with_starts_at(&fp(), &Key::new(7, "abc"), &starts, 0),
        ] {
            let raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
            for cut in 0..raw.len() {
                let short = URL_SAFE_NO_PAD.encode(&raw[..cut]);
                assert_eq!(
                    r.verify_at(&short, &fp(), 0),
                    Err(TokenError::Malformed("truncated")),
                    "cut at byte {cut} of {}",
                    raw.len()
                );
            }
        }
        assert_eq!(
            r.verify_at(&URL_SAFE_NO_PAD.encode([9u8; 3 + MAC_LEN]), &fp(), 0),
            Err(TokenError::UnsupportedVersion(9))
        );
    }

    #[test]
    fn rejects_tampering_anywhere() {
        let r = ring();
        let raw = URL_SAFE_NO_PAD
            .decode(r.issue_at(&fp(), &Key::new(7, "abc"), 0))
            .unwrap();
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x01;
            let res = r.verify_at(&URL_SAFE_NO_PAD.encode(&bad), &fp(), 0);
            assert!(res.is_err(), "flip at byte {i} accepted");
        }
    }

    #[test]
    fn rejects_expired_mismatched_and_unknown_key() {
        let r = ring();
        let t = r.issue_at(&fp(), &Key::new(7, "abc"), 0);
        assert_eq!(r.verify_at(&t, &fp(), 3_600_001), Err(TokenError::Expired));
        let other = QueryFingerprint::new(&ns(), "s2", 0, 1000, Order::Ascending);
        assert_eq!(r.verify_at(&t, &other, 0), Err(TokenError::QueryMismatch));
        let rebucketed = Namespace { shards: 8, ..ns() };
        let fp2 = QueryFingerprint::new(&rebucketed, "s1", 0, 1000, Order::Ascending);
        assert_eq!(r.verify_at(&t, &fp2, 0), Err(TokenError::QueryMismatch));
        let stranger = KeyRing::parse("k2:fedcba9876543210fedc", Duration::from_secs(60)).unwrap();
        assert_eq!(
            stranger.verify_at(&t, &fp(), 0),
            Err(TokenError::UnknownKey("k1".into()))
        );
        let impostor = KeyRing::parse("k1:ffffffffffffffffffff", Duration::from_secs(60)).unwrap();
        assert_eq!(
            impostor.verify_at(&t, &fp(), 0),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn expiry_is_exact_to_the_millisecond() {
        let r = KeyRing::parse("k1:0123456789abcdef0123", Duration::from_secs(2)).unwrap();
        let issued = 1_700_000_000_123;
        let t = r.issue_at(&fp(), &Key::new(7, "abc"), issued);
        assert_eq!(
            r.verify_at(&t, &fp(), issued + 2000),
            Ok(Key::new(7, "abc"))
        );
        assert_eq!(
            r.verify_at(&t, &fp(), issued + 2001),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn version_1_tokens_expire_at_the_end_of_their_second() {
        let r = ring();
        let mut body = vec![TOKEN_VERSION_SECONDS, 2];
        body.extend_from_slice(b"k1");
        body.extend_from_slice(&100u64.to_be_bytes());
        body.extend_from_slice(&fp().0);
        body.extend_from_slice(&7i64.to_be_bytes());
        body.extend_from_slice(&3u16.to_be_bytes());
        body.extend_from_slice(b"abc");
        let t = r.seal_unchecked(&body);
        assert_eq!(r.verify_at(&t, &fp(), 100_999), Ok(Key::new(7, "abc")));
        assert_eq!(r.verify_at(&t, &fp(), 101_000), Err(TokenError::Expired));
    }

    #[test]
    fn rotation_accepts_old_keys() {
        let old = ring();
        let t = old.issue_at(&fp(), &Key::new(1, "a"), 0);
        let rotated = KeyRing::parse(
            "k2:fedcba9876543210fedc,k1:0123456789abcdef0123",
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(rotated.signing_id(), "k2");
        assert_eq!(rotated.verify_at(&t, &fp(), 0), Ok(Key::new(1, "a")));
    }

    #[test]
    fn key_ring_parsing() {
        let ttl = Duration::from_secs(1);
        assert_eq!(KeyRing::parse("", ttl).unwrap_err(), KeyRingError::Empty);
        assert_eq!(
            KeyRing::parse("nocolon", ttl).unwrap_err(),
            KeyRingError::BadEntry(0)
        );
        assert_eq!(
            KeyRing::parse("a:short", ttl).unwrap_err(),
            KeyRingError::ShortSecret("a".into())
        );
        assert_eq!(
            KeyRing::parse("a:0123456789abcdef,a:0123456789abcdef", ttl).unwrap_err(),
            KeyRingError::DuplicateId("a".into())
        );
        assert!(!format!("{:?}", ring()).contains("0123456789"));
    }
}
