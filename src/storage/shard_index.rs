//! Bringing a namespace an older release created onto the shard index
//! (`hourglass index-shards`).
//!
//! A namespace created before the bucket index named shards
//! (`indexes_shards` false or null) is read by asking every shard of each
//! bucket: its index entries may name no shard, or only those written since
//! the upgrade, while older rows sit in others. This looks, for every
//! bucket of every series of the namespace, which shards hold a row (one
//! `LIMIT 1` query per shard), adds them to the bucket's entry, and then
//! sets the namespace's flag, so reads ask only the shards named.
//!
//! Invariants:
//! * The flag is set last, once every bucket's entry names every shard that
//!   held a row when it was looked at; rows written meanwhile name their
//!   shards themselves (this release's writes do), so no row is left in a
//!   shard its entry does not name. Hence every replica must run this
//!   release before it starts (an older replica's writes name no shard).
//! * Interrupted, it leaves the flag unset and the entries only larger:
//!   reads stay as they were, and running it again finishes the work. A
//!   query failing transiently is tried [`TRIES`] times before it stops.
//! * A shard's element gets the TTL a write made now would give it (the
//!   namespace's retention plus the index's slack; none without retention),
//!   so the entry still outlives the rows it names.
//! * Replicas read a namespace's flag when they first load it (as they
//!   start, or on their first read of it): those running keep asking every
//!   shard until restarted, which is slower, never wrong.

use futures::{StreamExt, TryStreamExt};
use scylla::statement::prepared::PreparedStatement;

use super::cassandra::{classify, fatal, int, CassandraStore};
use super::{Storage, StorageError};
use crate::model::Namespace;

/// Shard queries in flight at once.
const CONCURRENCY: usize = 64;
/// Tries of one query that fails transiently (a timeout, an overloaded
/// node), the waits between them doubling from [`FIRST_BACKOFF`]: a run
/// of millions of queries should not end, and start over, for one.
const TRIES: u32 = 5;
const FIRST_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);
/// Rows per page of the scans of the bucket index.
const PAGE_ROWS: i32 = 1_000;

/// Why a namespace could not be brought onto the shard index.
#[derive(Debug, thiserror::Error)]
pub enum IndexShardsError {
    #[error("namespace {0:?} does not exist")]
    NotFound(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What was done, so far or in all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The namespace indexed its shards already: nothing was done.
    pub already: bool,
    /// Series whose buckets were looked at.
    pub series: u64,
    /// Buckets looked at.
    pub buckets: u64,
    /// Shards found holding rows (and named in their bucket's entry).
    pub shards: u64,
    /// Partitions of the bucket index (series of every namespace) read to
    /// find the namespace's series.
    pub index_partitions: u64,
}

/// Brings the namespace `name` onto the shard index (see the module docs),
/// calling `progress` as it reads the bucket index and after each bucket.
pub async fn index_shards(
    store: &CassandraStore,
    name: &str,
    mut progress: impl FnMut(&Report),
) -> Result<Report, IndexShardsError> {
    let ns = store
        .get_namespace(name)
        .await?
        .ok_or_else(|| IndexShardsError::NotFound(name.to_string()))?;
    if ns.indexes_shards {
        return Ok(Report {
            already: true,
            ..Report::default()
        });
    }
    let s = Statements::prepare(store).await?;
    let mut report = Report::default();
    let all_series = s
        .series_of(store, name, |partitions| {
            report.index_partitions = partitions;
            progress(&report);
        })
        .await?;
    // Buckets are looked at side by side, so that about CONCURRENCY shard
    // queries are in flight whatever the namespace's shard count (one
    // bucket at a time, a 4-shard namespace had 4).
    let buckets_at_once = (CONCURRENCY / usize::try_from(ns.shards).unwrap_or(1).max(1)).max(1);
    for series in all_series {
        report.series += 1;
        let (s, ns, series) = (&s, &ns, &series);
        let looked =
            s.buckets_of(store, name, series)
                .await?
                .into_iter()
                .map(|bucket| async move {
                    let shards = s.shards_holding_rows(store, ns, series, bucket).await?;
                    if !shards.is_empty() {
                        retrying(|| store.name_shards(ns, series, bucket, &shards)).await?;
                    }
                    Ok::<_, StorageError>(shards.len())
                });
        let mut looked = futures::stream::iter(looked).buffer_unordered(buckets_at_once);
        while let Some(shards) = looked.next().await {
            report.buckets += 1;
            report.shards += shards? as u64;
            progress(&report);
        }
    }
    retrying(|| async {
        store
            .session()
            .execute_unpaged(&s.set_flag, (name,))
            .await
            .map_err(classify)
    })
    .await?;
    Ok(report)
}

/// The statements of the work, with the store's consistency.
struct Statements {
    all_series: PreparedStatement,
    buckets: PreparedStatement,
    any_row: PreparedStatement,
    set_flag: PreparedStatement,
}

impl Statements {
    async fn prepare(store: &CassandraStore) -> Result<Self, StorageError> {
        let ks = store.keyspace();
        let prepare = |cql: String| async move {
            let mut p = store.session().prepare(cql).await.map_err(fatal)?;
            p.set_consistency(store.consistency());
            p.set_page_size(PAGE_ROWS);
            Ok::<_, StorageError>(p)
        };
        Ok(Self {
            // Every partition of the index, all namespaces: the index is
            // partitioned by (namespace, series), so a namespace's series
            // are found only by scanning them all.
            all_series: prepare(format!(
                "SELECT DISTINCT namespace, series_id FROM {ks}.series_buckets"
            ))
            .await?,
            buckets: prepare(format!(
                "SELECT bucket FROM {ks}.series_buckets WHERE namespace = ? AND series_id = ?"
            ))
            .await?,
            any_row: prepare(format!(
                "SELECT event_time FROM {ks}.events WHERE namespace = ? AND series_id = ? \
                 AND bucket = ? AND shard = ? LIMIT 1"
            ))
            .await?,
            set_flag: prepare(format!(
                "UPDATE {ks}.namespaces SET indexes_shards = true WHERE name = ?"
            ))
            .await?,
        })
    }

    /// The series of namespace `name` with an index entry, calling
    /// `progress` with the count of index partitions read so far, once a
    /// page.
    async fn series_of(
        &self,
        store: &CassandraStore,
        name: &str,
        mut progress: impl FnMut(u64),
    ) -> Result<Vec<String>, StorageError> {
        let mut rows = store
            .session()
            .execute_iter(self.all_series.clone(), ())
            .await
            .map_err(fatal)?
            .rows_stream::<(String, String)>()
            .map_err(fatal)?;
        let (mut found, mut read) = (Vec::new(), 0u64);
        while let Some((ns, series)) = rows.try_next().await.map_err(fatal)? {
            read += 1;
            if ns == name {
                found.push(series);
            }
            if read % u64::from(PAGE_ROWS.unsigned_abs()) == 0 {
                progress(read);
            }
        }
        progress(read);
        Ok(found)
    }

    /// The buckets the index lists for `series` of namespace `name`.
    async fn buckets_of(
        &self,
        store: &CassandraStore,
        name: &str,
        series: &str,
    ) -> Result<Vec<i64>, StorageError> {
        store
            .session()
            .execute_iter(self.buckets.clone(), (name, series))
            .await
            .map_err(fatal)?
            .rows_stream::<(i64,)>()
            .map_err(fatal)?
            .map_ok(|(bucket,)| bucket)
            .try_collect()
            .await
            .map_err(fatal)
    }

    /// The shards of `bucket` of `series` holding a row, ascending.
    async fn shards_holding_rows(
        &self,
        store: &CassandraStore,
        ns: &Namespace,
        series: &str,
        bucket: i64,
    ) -> Result<Vec<i32>, StorageError> {
        let asks = (0..ns.shards).map(|shard| {
            retrying(move || async move {
                let res = store
                    .session()
                    .execute_unpaged(&self.any_row, (&ns.name, series, bucket, int(shard)))
                    .await
                    .map_err(classify)?;
                let rows = res.into_rows_result().map_err(fatal)?.rows_num();
                Ok::<_, StorageError>((rows > 0).then_some(int(shard)))
            })
        });
        let mut found: Vec<i32> = futures::stream::iter(asks)
            .buffer_unordered(CONCURRENCY)
            .try_filter_map(|shard| async move { Ok(shard) })
            .try_collect()
            .await?;
        found.sort_unstable();
        Ok(found)
    }
}

/// Runs `query` until it succeeds, fails for good, or has failed
/// transiently [`TRIES`] times.
async fn retrying<T, F: std::future::Future<Output = Result<T, StorageError>>>(
    mut query: impl FnMut() -> F,
) -> Result<T, StorageError> {
    let mut backoff = FIRST_BACKOFF;
    let mut tries = 1;
    loop {
        match query().await {
            Err(e) if e.is_transient() && tries < TRIES => {
                tracing::warn!(error = %e, tries, "a query failed; trying again");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                tries += 1;
            }
            done => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn transient() -> StorageError {
        StorageError::Transient("timed out".into())
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_tried_again_fatal_ones_are_not() {
        // Two timeouts, then an answer: the answer, after 100 + 200 ms.
        let calls = Cell::new(0);
        let began = tokio::time::Instant::now();
        let got = retrying(|| {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n < 3 {
                    Err(transient())
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(got.expect("answered"), 3);
        assert_eq!(began.elapsed(), FIRST_BACKOFF * 3);
        // Always timing out: given up after TRIES.
        calls.set(0);
        let got: Result<(), _> = retrying(|| {
            calls.set(calls.get() + 1);
            async { Err(transient()) }
        })
        .await;
        assert!(matches!(got, Err(StorageError::Transient(_))));
        assert_eq!(calls.get(), TRIES);
        // A fatal error: at once.
        calls.set(0);
        let got: Result<(), _> = retrying(|| {
            calls.set(calls.get() + 1);
            async { Err(StorageError::Fatal("syntax".into())) }
        })
        .await;
        assert!(matches!(got, Err(StorageError::Fatal(_))));
        assert_eq!(calls.get(), 1);
    }
}
