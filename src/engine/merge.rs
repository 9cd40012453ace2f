//! The k-way merge step: which shard holds the next row in read order.

use std::collections::VecDeque;

use crate::model::{Key, Order, Row};

/// What the merge can do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Pick {
    /// Shard `i` holds the next row.
    Row(usize),
    /// Some shard has no buffered rows but may have more before the next
    /// row: fetch first.
    NeedData,
    /// Every shard is empty and done.
    Exhausted,
}

/// One shard as the merge sees it: its buffered rows, whether it has no
/// more, and the position its unbuffered rows lie strictly beyond in read
/// order (ascending, its fetched span's `after`; descending, its
/// `before`).
pub struct Head<'a> {
    pub buf: &'a VecDeque<Row>,
    pub done: bool,
    pub fetched_to: &'a Key,
}

/// Picks the shard whose head row comes first in `order`. A row can only be
/// picked once every shard either has a head, is done, or is known to hold
/// nothing before it (its rows not yet fetched lie beyond its `fetched_to`,
/// which the row does not pass), so no later-fetched row can sort before
/// it. Within a call an empty shard's `fetched_to` is at or behind the
/// frontier, so it holds up every row; a shard a resumed read starts
/// further on ([`crate::model::ShardStart`]) holds up only rows beyond
/// its start.
pub fn pick<T>(shards: &[T], view: impl Fn(&T) -> Head<'_>, order: Order) -> Pick {
    let first = |a: &Key, b: &Key| match order {
        Order::Ascending => a < b,
        Order::Descending => a > b,
    };
    // The head row that comes first, and the least far fetched of the
    // shards that are empty but not done: a row before it is safe.
    let mut best: Option<(usize, &Key)> = None;
    let mut waiting: Option<&Key> = None;
    for (i, s) in shards.iter().enumerate() {
        let h = view(s);
        match h.buf.front() {
            Some(row) if best.is_none_or(|(_, b)| first(&row.key, b)) => {
                best = Some((i, &row.key));
            }
            None if !h.done && waiting.is_none_or(|w| first(h.fetched_to, w)) => {
                waiting = Some(h.fetched_to);
            }
            _ => {}
        }
    }
    match (best, waiting) {
        (Some((i, key)), Some(w)) if first(key, w) => Pick::Row(i),
        (_, Some(_)) => Pick::NeedData,
        (Some((i, _)), None) => Pick::Row(i),
        (None, None) => Pick::Exhausted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(t: i64, id: &str) -> Row {
        Row {
            key: Key::new(t, id),
            payload: Default::default(),
            tags: Default::default(),
        }
    }

    type Shard = (VecDeque<Row>, bool, Key);

    /// Shards fetched to the read's start (time 0) unless `to` says.
    fn shards(spec: &[(&[(i64, &str)], bool)]) -> Vec<Shard> {
        spec.iter()
            .map(|(rows, done)| {
                let buf = rows.iter().map(|(t, id)| row(*t, id)).collect();
                (buf, *done, Key::boundary(0))
            })
            .collect()
    }

    fn view(s: &Shard) -> Head<'_> {
        Head {
            buf: &s.0,
            done: s.1,
            fetched_to: &s.2,
        }
    }

    #[test]
    fn picks_in_order_and_waits_for_empty_shards() {
        let s = shards(&[
            (&[(5, "a")], false),
            (&[(3, "z")], true),
            (&[(3, "b")], false),
        ]);
        assert_eq!(pick(&s, view, Order::Ascending), Pick::Row(2));
        assert_eq!(pick(&s, view, Order::Descending), Pick::Row(0));
        let s = shards(&[(&[(5, "a")], false), (&[], false)]);
        assert_eq!(pick(&s, view, Order::Ascending), Pick::NeedData);
        let s = shards(&[(&[(5, "a")], false), (&[], true)]);
        assert_eq!(pick(&s, view, Order::Ascending), Pick::Row(0));
        let s = shards(&[(&[], true), (&[], true)]);
        assert_eq!(pick(&s, view, Order::Ascending), Pick::Exhausted);
        let s = shards(&[(&[], true), (&[], false)]);
        assert_eq!(pick(&s, view, Order::Ascending), Pick::NeedData);
    }

    #[test]
    fn an_empty_shard_started_further_on_holds_up_only_rows_beyond_its_start() {
        // Ascending: shard 1 holds nothing before time 7.
        let mut s = shards(&[(&[(5, "a"), (9, "a")], false), (&[], false)]);
        s[1].2 = Key::boundary(7);
        assert_eq!(pick(&s, view, Order::Ascending), Pick::Row(0));
        s[0].0.pop_front();
        assert_eq!(
            pick(&s, view, Order::Ascending),
            Pick::NeedData,
            "9 is beyond 7"
        );
        // A row at the start's own time waits: the shard may hold one
        // there with a smaller id.
        s[0].0 = [row(7, "a")].into();
        assert_eq!(pick(&s, view, Order::Ascending), Pick::NeedData);
        // Fetched to a row key: rows before it go, the key itself cannot be
        // another shard's.
        s[1].2 = Key::new(7, "m");
        assert_eq!(pick(&s, view, Order::Ascending), Pick::Row(0));
        s[0].0 = [row(7, "z")].into();
        assert_eq!(pick(&s, view, Order::Ascending), Pick::NeedData);

        // Descending: shard 1 holds nothing at time 7 or after.
        let mut s = shards(&[(&[(9, "a"), (5, "a")], false), (&[], false)]);
        s[1].2 = Key::boundary(7);
        assert_eq!(pick(&s, view, Order::Descending), Pick::Row(0));
        s[0].0.pop_front();
        assert_eq!(
            pick(&s, view, Order::Descending),
            Pick::NeedData,
            "5 is beyond 7"
        );
    }
}
