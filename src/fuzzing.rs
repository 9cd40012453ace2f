//! The fuzz harness: feeds arbitrary bytes to everything that parses client
//! input — continuation tokens (before and behind their MAC) and the
//! validation of every request message — and checks what is accepted.
//!
//! Driven by libFuzzer through `src/bin/fuzz_input.rs` (`scripts/fuzz`), and
//! replayed over the checked-in corpus by `tests/fuzz_corpus.rs`.
//! Invariant: [`check`] never panics on any input; a panic is a bug in the
//! code under test or a broken property asserted here.

use std::time::Duration;

use prost::Message;

use crate::api::{self, pb, ReadParams};
use crate::model::{Key, Namespace, Order, ShardStart};
use crate::token::{KeyRing, QueryFingerprint};

/// The signing key of the harness.
pub const FUZZ_KEYS: &str = "fuzz:0123456789abcdef0123456789";

/// Runs one input. The first byte picks the target; the rest is its input.
pub fn check(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => token_text(rest),
        1 => sealed_token(rest),
        2 => read_request(rest),
        3 => write_request(rest),
        _ => namespace(rest),
    }
}

fn keys() -> KeyRing {
    KeyRing::parse(FUZZ_KEYS, Duration::from_secs(3600)).expect("fuzz keys")
}

fn fingerprint() -> QueryFingerprint {
    let ns = Namespace {
        name: "fuzz".into(),
        bucket_width_micros: 1_000_000,
        shards: 4,
        retention_seconds: 0,
        indexes_shards: true,
    };
    QueryFingerprint::new(&ns, "s", i64::MIN, i64::MAX, Order::Ascending)
}

/// Any text as a token: refused or, if accepted, re-issued identically.
fn token_text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let keys = keys();
    if let Ok((frontier, starts)) = keys.verify_with_starts_at(&text, &fingerprint(), 0) {
        round_trip(&keys, &frontier, &starts);
    }
}

/// Any bytes behind a valid MAC, to reach the parser the MAC guards.
fn sealed_token(data: &[u8]) {
    let keys = keys();
    let token = keys.seal_unchecked(data);
    if let Ok((frontier, starts)) = keys.verify_with_starts_at(&token, &fingerprint(), 0) {
        round_trip(&keys, &frontier, &starts);
    }
}

/// A token issued for what a token gave verifies to the same frontier and
/// shard starts: those a token can carry (a sealed token's start past the
/// i64 range reads saturated, which one re-issue settles).
fn round_trip(keys: &KeyRing, frontier: &Key, starts: &[ShardStart]) {
    let token = keys.issue_with_starts_at(&fingerprint(), frontier, starts, 0);
    let (again, carried) = keys
        .verify_with_starts_at(&token, &fingerprint(), 0)
        .expect("a token we issue verifies");
    assert_eq!(&again, frontier, "tokens round-trip their frontier");
    let token = keys.issue_with_starts_at(&fingerprint(), frontier, &carried, 0);
    let (_, twice) = keys
        .verify_with_starts_at(&token, &fingerprint(), 0)
        .expect("a token we issue verifies");
    assert_eq!(twice, carried, "tokens round-trip their shard starts");
}

fn read_request(data: &[u8]) {
    let Ok(req) = pb::ReadEventsRequest::decode(data) else {
        return;
    };
    if let Ok(p) = ReadParams::try_from(req) {
        assert!(p.start < p.end, "accepted an empty range");
        assert!((1..=api::MAX_PAGE_SIZE).contains(&p.page_size));
        assert!((1..=api::MAX_PAGE_BYTES).contains(&p.page_bytes));
        assert!(!p.series_id.is_empty() && !p.namespace.is_empty());
    }
}

fn write_request(data: &[u8]) {
    let Ok(req) = pb::WriteEventsRequest::decode(data) else {
        return;
    };
    let n = req.events.len();
    if api::check_namespace_name("namespace", &req.namespace).is_err() {
        return;
    }
    if let Ok(events) = api::validate_events(req.events) {
        assert_eq!(events.len(), n, "a valid batch keeps every event");
    }
}

fn namespace(data: &[u8]) {
    let Ok(ns) = pb::Namespace::decode(data) else {
        return;
    };
    if let Ok(ns) = Namespace::try_from(ns) {
        assert!(ns.bucket_width_micros >= crate::model::MIN_BUCKET_WIDTH_MICROS);
        assert!((1..=crate::model::MAX_SHARDS).contains(&ns.shards));
        // Bucket arithmetic holds at the edges of time.
        for t in [i64::MIN, -1, 0, i64::MAX] {
            let b = ns.bucket_of(t);
            assert!(ns.bucket_of(t.saturating_add(ns.bucket_width_micros)) >= b);
        }
    }
}
