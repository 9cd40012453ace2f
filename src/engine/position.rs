//! What a position in a read means: the one place that says it, for both
//! orders and at bucket boundaries. The scan, the watermark and the
//! continuation token ([`crate::token`] carries a [`Key`]) refer here.
//!
//! Rows are ordered by their clustering key `(event_time, event_id)`. A
//! position is a [`Key`] between rows:
//!
//! * a **row key** `(t, id)` stands right after that row in read order:
//!   ascending, every row `<= (t, id)` has been delivered; descending, every
//!   row `>= (t, id)`;
//! * a **boundary** `(t, "")` (an empty id, which no row has) stands before
//!   every row at time `t`, so it sorts below each of them. Ascending, the
//!   frontier `(t, "")` means every row with `time < t` is delivered;
//!   descending, every row with `time >= t`.
//!
//! The **frontier** of a read is the last position handed to its client: the
//! last row returned, or the boundary at which a fully read bucket ends
//! ([`bucket_exit`]), whichever is further. A response's token is its
//! frontier; a resumed read covers exactly what lies strictly beyond it
//! ([`Span::resume_from`]): so following tokens yields every row once. A
//! token's shard starts ([`crate::model::ShardStart`]) are boundaries
//! further on, each where fetched rows showed one shard holds nothing
//! between the frontier and it: that shard resumes from there.
//!
//! The **watermark** ([`watermark`]) turns the frontier into a time: how far
//! the range is covered, as the proto's `watermark_micros` states.

use crate::model::{bucket_start, Key, Order, Span};

use super::Ending;

/// The boundary a read's frontier moves to once bucket `bucket` (of width
/// `width`) is fully read, clamped to the read's `span`: ascending, the start
/// of the next bucket; descending, the start of this one.
pub fn bucket_exit(bucket: i64, width: i64, span: &Span, order: Order) -> Key {
    match order {
        Order::Ascending => {
            Key::boundary(bucket_start(bucket.saturating_add(1), width)).min(span.before.clone())
        }
        Order::Descending => Key::boundary(bucket_start(bucket, width)).max(span.after.clone()),
    }
}

/// Whether `to` lies beyond `from` in read order.
pub fn is_beyond(to: &Key, from: &Key, order: Order) -> bool {
    match order {
        Order::Ascending => to > from,
        Order::Descending => to < from,
    }
}

/// The time of the furthest boundary at or behind position `key` in read
/// order: ascending, `key.time` (the boundary before every row at that
/// time); descending, the same for a boundary and `key.time + 1` for a row
/// key, since rows at `key.time` with lower ids lie beyond it.
pub fn boundary_behind(key: &Key, order: Order) -> i64 {
    match order {
        Order::Ascending => key.time,
        Order::Descending => key.time.saturating_add(i64::from(!key.id.is_empty())),
    }
}

/// The watermark of a read of `[start, end)` that ended with `ending`:
/// ascending, every row with `time < watermark` is delivered; descending,
/// every row with `time >= watermark`. A complete read covers its range.
/// Descending, a row-key frontier `(t, id)` covers only `time >= t + 1`
/// (rows at `t` with lower ids may remain); a boundary `(t, "")` covers
/// `time >= t`.
pub fn watermark(ending: &Ending, order: Order, start: i64, end: i64) -> i64 {
    match (ending, order) {
        (Ending::Complete, Order::Ascending) => end,
        (Ending::Complete, Order::Descending) => start,
        (Ending::Partial { frontier, .. }, order) => boundary_behind(frontier, order),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::PartialReason;

    fn partial(frontier: Key) -> Ending {
        Ending::Partial {
            reason: PartialReason::RowLimit,
            frontier,
        }
    }

    #[test]
    fn watermarks_in_both_orders() {
        let row = partial(Key::new(50, "b"));
        let edge = partial(Key::boundary(50));
        assert_eq!(watermark(&row, Order::Ascending, 0, 100), 50);
        assert_eq!(watermark(&edge, Order::Ascending, 0, 100), 50);
        // Rows at 50 with ids below "b" may remain: only time >= 51 is covered.
        assert_eq!(watermark(&row, Order::Descending, 0, 100), 51);
        assert_eq!(watermark(&edge, Order::Descending, 0, 100), 50);
        assert_eq!(watermark(&Ending::Complete, Order::Ascending, 0, 100), 100);
        assert_eq!(watermark(&Ending::Complete, Order::Descending, 0, 100), 0);
        let top = partial(Key::new(i64::MAX, "z"));
        assert_eq!(watermark(&top, Order::Descending, 0, i64::MAX), i64::MAX);
    }

    #[test]
    fn bucket_exits_are_clamped_to_the_span() {
        let span = Span::of_range(15, 35);
        // Bucket 1 of width 10 is [10, 20).
        assert_eq!(
            bucket_exit(1, 10, &span, Order::Ascending),
            Key::boundary(20)
        );
        assert_eq!(
            bucket_exit(1, 10, &span, Order::Descending),
            Key::boundary(15)
        );
        assert_eq!(
            bucket_exit(3, 10, &span, Order::Ascending),
            Key::boundary(35)
        );
        assert_eq!(
            bucket_exit(2, 10, &span, Order::Descending),
            Key::boundary(20)
        );
        let all = Span::of_range(i64::MIN, i64::MAX);
        let last = i64::MAX.div_euclid(10);
        assert_eq!(bucket_exit(last, 10, &all, Order::Ascending), all.before);
    }

    #[test]
    fn beyond_follows_the_order() {
        let (a, b) = (Key::new(1, "a"), Key::new(1, "b"));
        assert!(is_beyond(&b, &a, Order::Ascending));
        assert!(is_beyond(&a, &b, Order::Descending));
        assert!(!is_beyond(&a, &a, Order::Ascending));
        assert!(
            Key::boundary(1) < a,
            "a boundary precedes every row at its time"
        );
    }
}
