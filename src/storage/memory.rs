//! An in-process store for deterministic engine tests: same contract as
//! Cassandra, plus injected latency and failures, and counters of the work
//! asked of it. Never a stand-in for the Cassandra tests.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{BucketQuery, Created, IndexedBucket, ShardQuery, Storage, StorageError};
use crate::model::{Key, Namespace, NewEvent, Order, Row};

/// Latency of a shard query as a function of the query.
pub type LatencyFn = Arc<dyn Fn(&ShardQuery) -> Duration + Send + Sync>;

type PartitionKey = (String, String, i64, u32);

/// A series' bucket index: each non-empty bucket and the shards written in it.
type BucketIndex = BTreeMap<i64, BTreeSet<u32>>;

/// The fake store. Cheap to clone; clones share data.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    namespaces: Mutex<HashMap<String, Namespace>>,
    partitions: Mutex<BTreeMap<PartitionKey, BTreeMap<Key, Row>>>,
    buckets: Mutex<HashMap<(String, String), BucketIndex>>,
    latency: Mutex<Option<LatencyFn>>,
    namespace_latency: Mutex<Duration>,
    index_latency: Mutex<Duration>,
    /// Latencies of the next bucket-index queries, one each, before
    /// `index_latency` applies again.
    index_stalls: Mutex<VecDeque<Duration>>,
    /// Nodes the fake claims to have (0: the default of one).
    nodes: std::sync::atomic::AtomicUsize,
    namespace_lookups: AtomicU64,
    failures: Mutex<VecDeque<StorageError>>,
    shard_queries: AtomicU64,
    index_queries: AtomicU64,
    rows_served: AtomicU64,
    in_flight: AtomicI64,
}

/// Decrements the in-flight gauge when a query ends or is dropped.
struct InFlight<'a>(&'a AtomicI64);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a AtomicI64) -> Self {
        gauge.fetch_add(1, Ordering::SeqCst);
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every later shard query sleeps for `f(query)` (tokio time: pausable).
    pub fn set_latency(&self, f: impl Fn(&ShardQuery) -> Duration + Send + Sync + 'static) {
        *self.inner.latency.lock().expect("lock") = Some(Arc::new(f));
    }

    /// Every later namespace lookup sleeps this long (tokio time).
    pub fn set_namespace_latency(&self, latency: Duration) {
        *self.inner.namespace_latency.lock().expect("lock") = latency;
    }

    /// Every later bucket-index query takes this long (tokio time), or
    /// fails transiently at its timeout if that comes first.
    pub fn set_index_latency(&self, latency: Duration) {
        *self.inner.index_latency.lock().expect("lock") = latency;
    }

    /// The next `n` bucket-index queries take `latency` (or fail
    /// transiently at their timeout if that comes first), as from a
    /// coordinator that stalls; later ones take the set latency again.
    pub fn stall_next_index(&self, n: usize, latency: Duration) {
        self.inner
            .index_stalls
            .lock()
            .expect("lock")
            .extend(std::iter::repeat_n(latency, n));
    }

    /// Namespace lookups started so far.
    pub fn namespace_lookups(&self) -> u64 {
        self.inner.namespace_lookups.load(Ordering::SeqCst)
    }

    /// The next shard queries fail with these errors, one each, after their latency.
    /// Claims `n` storage nodes (see [`Storage::nodes`]).
    pub fn set_nodes(&self, n: usize) {
        self.inner.nodes.store(n, Ordering::SeqCst);
    }

    /// Lists `bucket` in `series`' bucket index without writing rows to it,
    /// as Cassandra's index does once the bucket's rows expired (its entry
    /// outlives them) or when a write failed after making the entry; the
    /// entry names every shard.
    pub fn index_bucket(&self, ns: &Namespace, series: &str, bucket: i64) {
        self.inner
            .buckets
            .lock()
            .expect("lock")
            .entry((ns.name.clone(), series.to_string()))
            .or_default()
            .insert(bucket, (0..ns.shards).collect());
    }

    pub fn fail_next(&self, errors: impl IntoIterator<Item = StorageError>) {
        self.inner.failures.lock().expect("lock").extend(errors);
    }

    /// Shard queries started so far.
    pub fn shard_queries(&self) -> u64 {
        self.inner.shard_queries.load(Ordering::SeqCst)
    }

    /// Bucket index queries started so far.
    pub fn index_queries(&self) -> u64 {
        self.inner.index_queries.load(Ordering::SeqCst)
    }

    /// Rows returned by shard queries so far.
    pub fn rows_served(&self) -> u64 {
        self.inner.rows_served.load(Ordering::SeqCst)
    }

    /// Queries currently running (started and neither finished nor dropped).
    pub fn in_flight(&self) -> i64 {
        self.inner.in_flight.load(Ordering::SeqCst)
    }
}

impl Storage for MemoryStore {
    fn nodes(&self) -> usize {
        self.inner.nodes.load(Ordering::SeqCst).max(1)
    }

    async fn create_namespace(&self, ns: &Namespace) -> Result<Created, StorageError> {
        let mut map = self.inner.namespaces.lock().expect("lock");
        if let Some(existing) = map.get(&ns.name) {
            Ok(Created::Existing(existing.clone()))
        } else {
            map.insert(ns.name.clone(), ns.clone());
            Ok(Created::New)
        }
    }

    async fn list_namespaces(&self, limit: usize) -> Result<Vec<Namespace>, StorageError> {
        let map = self.inner.namespaces.lock().expect("lock");
        Ok(map.values().take(limit).cloned().collect())
    }

    async fn get_namespace(&self, name: &str) -> Result<Option<Namespace>, StorageError> {
        self.inner.namespace_lookups.fetch_add(1, Ordering::SeqCst);
        let latency = *self.inner.namespace_latency.lock().expect("lock");
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        Ok(self
            .inner
            .namespaces
            .lock()
            .expect("lock")
            .get(name)
            .cloned())
    }

    async fn write_events(&self, ns: &Namespace, events: &[NewEvent]) -> Result<(), StorageError> {
        let mut parts = self.inner.partitions.lock().expect("lock");
        let mut buckets = self.inner.buckets.lock().expect("lock");
        for e in events {
            let bucket = ns.bucket_of(e.row.key.time);
            let shard = ns.shard_of(&e.row.key.id);
            buckets
                .entry((ns.name.clone(), e.series_id.clone()))
                .or_default()
                .entry(bucket)
                .or_default()
                .insert(shard);
            parts
                .entry((ns.name.clone(), e.series_id.clone(), bucket, shard))
                .or_default()
                .insert(e.row.key.clone(), e.row.clone());
        }
        Ok(())
    }

    async fn list_buckets(&self, q: BucketQuery) -> Result<Vec<IndexedBucket>, StorageError> {
        let _guard = InFlight::enter(&self.inner.in_flight);
        self.inner.index_queries.fetch_add(1, Ordering::SeqCst);
        let stalled = self.inner.index_stalls.lock().expect("lock").pop_front();
        let latency = stalled.unwrap_or(*self.inner.index_latency.lock().expect("lock"));
        if latency > q.timeout {
            tokio::time::sleep(q.timeout).await;
            return Err(StorageError::Transient("request timeout".into()));
        }
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let buckets = self.inner.buckets.lock().expect("lock");
        let Some(map) = buckets.get(&(q.namespace.name.clone(), q.series_id.to_string())) else {
            return Ok(Vec::new());
        };
        let range = map
            .range(q.first..=q.last)
            .map(|(&bucket, shards)| IndexedBucket {
                bucket,
                shards: q
                    .namespace
                    .indexes_shards
                    .then(|| shards.iter().copied().collect()),
            });
        Ok(match q.order {
            Order::Ascending => range.take(q.limit).collect(),
            Order::Descending => range.rev().take(q.limit).collect(),
        })
    }

    async fn read_shard(&self, q: ShardQuery) -> Result<Vec<Row>, StorageError> {
        let _guard = InFlight::enter(&self.inner.in_flight);
        self.inner.shard_queries.fetch_add(1, Ordering::SeqCst);
        let latency = self.inner.latency.lock().expect("lock").clone();
        if let Some(f) = latency {
            let d = f(&q);
            if d > q.timeout {
                tokio::time::sleep(q.timeout).await;
                return Err(StorageError::Transient("request timeout".into()));
            }
            tokio::time::sleep(d).await;
        }
        if let Some(err) = self.inner.failures.lock().expect("lock").pop_front() {
            return Err(err);
        }
        if q.span.after >= q.span.before {
            return Ok(Vec::new());
        }
        let parts = self.inner.partitions.lock().expect("lock");
        let key = (
            q.namespace.name.clone(),
            q.series_id.to_string(),
            q.bucket,
            q.shard,
        );
        let Some(rows) = parts.get(&key) else {
            return Ok(Vec::new());
        };
        let range = rows
            .range(q.span.after.clone()..q.span.before.clone())
            .filter(|(k, _)| **k != q.span.after)
            .map(|(_, r)| r.clone());
        let out: Vec<Row> = match q.order {
            Order::Ascending => range.take(q.limit).collect(),
            Order::Descending => range.rev().take(q.limit).collect(),
        };
        self.inner
            .rows_served
            .fetch_add(out.len() as u64, Ordering::SeqCst);
        Ok(out)
    }
}
