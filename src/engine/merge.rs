//! The k-way merge step: which shard holds the next row in read order.

use std::collections::VecDeque;

use crate::model::{Order, Row};

/// What the merge can do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Pick {
    /// Shard `i` holds the next row.
    Row(usize),
    /// Some shard has no buffered rows but may have more: fetch first.
    NeedData,
    /// Every shard is empty and done.
    Exhausted,
}

/// Picks the shard whose head row comes first in `order`. A row can only be
/// picked once every shard either has a head or is done, so no later-fetched
/// row can sort before it.
pub fn pick<T>(shards: &[T], view: impl Fn(&T) -> (&VecDeque<Row>, bool), order: Order) -> Pick {
    let mut best: Option<(usize, &Row)> = None;
    for (i, s) in shards.iter().enumerate() {
        let (buf, done) = view(s);
        match buf.front() {
            None if !done => return Pick::NeedData,
            None => {}
            Some(row) => {
                let better = best.is_none_or(|(_, b)| match order {
                    Order::Ascending => row.key < b.key,
                    Order::Descending => row.key > b.key,
                });
                if better {
                    best = Some((i, row));
                }
            }
        }
    }
    best.map_or(Pick::Exhausted, |(i, _)| Pick::Row(i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Key;

    fn row(t: i64, id: &str) -> Row {
        Row {
            key: Key::new(t, id),
            payload: Default::default(),
            tags: Default::default(),
        }
    }

    fn shards(spec: &[(&[(i64, &str)], bool)]) -> Vec<(VecDeque<Row>, bool)> {
        spec.iter()
            .map(|(rows, done)| (rows.iter().map(|(t, id)| row(*t, id)).collect(), *done))
            .collect()
    }

    fn view(s: &(VecDeque<Row>, bool)) -> (&VecDeque<Row>, bool) {
        (&s.0, s.1)
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
    }
}
