//! The storage layer: a small trait over what the engine needs, with the
//! Cassandra/ScyllaDB implementation ([`cassandra`]) and an in-process fake
//! (`memory`, behind the `test-util` feature) for deterministic engine tests.
//!
//! Storage is addressed in clustering-key terms only: a shard query reads the
//! rows of one (series, bucket, shard) partition strictly inside a [`Span`],
//! in order, up to a limit. No paging state is kept between calls, which is
//! what makes continuation tokens stateless.

pub mod breaker;
pub mod cassandra;
pub mod hedging;
#[cfg(any(test, feature = "test-util"))]
pub mod memory;
pub mod shard_index;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::model::{Namespace, NewEvent, Order, Row, Span};

/// One page of one shard partition.
#[derive(Clone, Debug)]
pub struct ShardQuery {
    pub namespace: Arc<Namespace>,
    pub series_id: Arc<str>,
    pub bucket: i64,
    pub shard: u32,
    /// Only rows strictly inside this span.
    pub span: Span,
    pub order: Order,
    /// At most this many rows (>= 1).
    pub limit: usize,
    /// Give up after this long.
    pub timeout: Duration,
}

/// One page of the per-series index of non-empty buckets.
#[derive(Clone, Debug)]
pub struct BucketQuery {
    pub namespace: Arc<Namespace>,
    pub series_id: Arc<str>,
    /// Inclusive bucket range.
    pub first: i64,
    pub last: i64,
    pub order: Order,
    pub limit: usize,
    pub timeout: Duration,
}

/// The underlying error of a [`StorageError`]: the driver's error, or a
/// message where there is none, and the storage node it came from when
/// every attempt of the request went to that one node. Shared, so storage
/// errors stay `Clone`.
#[derive(Clone)]
pub struct Cause {
    err: Arc<dyn std::error::Error + Send + Sync>,
    node: Option<IpAddr>,
}

impl Cause {
    /// Wraps an error, keeping it as the source.
    pub fn new(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            err: Arc::new(err),
            node: None,
        }
    }

    /// The error came from `node` alone.
    #[must_use]
    pub fn on_node(mut self, node: Option<IpAddr>) -> Self {
        self.node = node;
        self
    }

    /// The one node the error came from, if known.
    pub fn node(&self) -> Option<IpAddr> {
        self.node
    }
}

impl From<&str> for Cause {
    fn from(msg: &str) -> Self {
        Self {
            err: Arc::from(Box::<dyn std::error::Error + Send + Sync>::from(msg)),
            node: None,
        }
    }
}

impl From<String> for Cause {
    fn from(msg: String) -> Self {
        Self {
            err: Arc::from(Box::<dyn std::error::Error + Send + Sync>::from(msg)),
            node: None,
        }
    }
}

impl std::fmt::Debug for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.err, f)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&*self.err, f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.err.source()
    }
}

/// What went wrong in storage. Whether a retry may help is decided once, by
/// [`StorageError::is_transient`]; the driver's error is kept as the source
/// (for logs), never shown to clients.
#[derive(Debug, thiserror::Error, Clone)]
pub enum StorageError {
    /// Timed out, overloaded, unavailable or connection lost: may succeed if retried.
    #[error("storage temporarily unavailable")]
    Transient(#[source] Cause),
    /// The store refused the request in a way retrying will not fix.
    #[error("storage request failed")]
    Fatal(#[source] Cause),
    /// Could not connect to the store at all.
    #[error("cannot reach storage at {address}")]
    Connect {
        address: String,
        #[source]
        cause: Cause,
    },
    /// The circuit breaker is open after repeated failures: failed fast.
    #[error("storage circuit open after repeated failures; retry in {retry_after:?}")]
    CircuitOpen { retry_after: Duration },
    /// A namespace stored under `name` breaks the rules the API enforces on
    /// creation (written by another tool or edited by hand): refused rather
    /// than trusted.
    #[error("namespace {name:?} in storage is invalid: {problem}")]
    InvalidNamespace {
        name: String,
        problem: crate::model::NamespaceProblem,
    },
}

impl StorageError {
    /// Whether retrying the same request may succeed: the one place that
    /// decides it (the engine's retries and the circuit breaker ask here).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transient(_) | Self::Connect { .. } => true,
            Self::Fatal(_) | Self::CircuitOpen { .. } | Self::InvalidNamespace { .. } => false,
        }
    }

    /// The one storage node a transient error came from, when known: a
    /// failure confined to one node of several is not an outage (see
    /// [`breaker`]).
    pub fn node(&self) -> Option<IpAddr> {
        match self {
            Self::Transient(cause) => cause.node(),
            _ => None,
        }
    }

    /// Whether the store is unavailable for now (a client should retry
    /// later), as opposed to failing in a way waiting will not fix.
    pub fn is_unavailable(&self) -> bool {
        self.is_transient() || matches!(self, Self::CircuitOpen { .. })
    }
}

/// Formats an error with its chain of sources, for logs.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

/// A non-empty bucket of a series, as the bucket index lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexedBucket {
    pub bucket: i64,
    /// The shards rows were written to in this bucket, ascending; None
    /// when the index does not know them (a namespace created before
    /// shards were indexed, see [`Namespace::indexes_shards`]), and then
    /// every shard may hold rows.
    pub shards: Option<Vec<u32>>,
}

/// Result of creating a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    /// The namespace did not exist and now does.
    New,
    /// A namespace of that name already exists, with these settings.
    Existing(Namespace),
}

/// What the engine and server need from a store. Implementations must be
/// cancel-safe: dropping a returned future abandons the request.
pub trait Storage: Send + Sync + 'static {
    /// Creates `ns` unless a namespace of that name exists.
    fn create_namespace(
        &self,
        ns: &Namespace,
    ) -> impl Future<Output = Result<Created, StorageError>> + Send;

    /// Looks a namespace up.
    fn get_namespace(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Namespace>, StorageError>> + Send;

    /// Up to `limit` namespaces, in no particular order (what a replica
    /// caches as it starts). A namespace stored with settings no namespace
    /// may have is left out. Stores that cannot list answer none.
    fn list_namespaces(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Namespace>, StorageError>> + Send {
        let _ = limit;
        async { Ok(Vec::new()) }
    }

    /// Writes validated events (idempotent upserts). On error some events may
    /// be written; retrying the same batch is always safe. The bucket index
    /// is written before the rows, so a reader never misses a stored row.
    fn write_events(
        &self,
        ns: &Namespace,
        events: &[NewEvent],
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Non-empty buckets of a series within a bucket range, in order, with
    /// the shards that hold rows in each where the namespace indexes them.
    /// A shard a listed bucket does not name holds no row of the series in
    /// that bucket (the index is written before the rows).
    fn list_buckets(
        &self,
        query: BucketQuery,
    ) -> impl Future<Output = Result<Vec<IndexedBucket>, StorageError>> + Send;

    /// Rows of one shard partition inside the query's span, in order.
    fn read_shard(
        &self,
        query: ShardQuery,
    ) -> impl Future<Output = Result<Vec<Row>, StorageError>> + Send;

    /// How many nodes serve the store (1 unless it knows better).
    fn nodes(&self) -> usize {
        1
    }
}

/// A shared store is a store.
impl<S: Storage> Storage for Arc<S> {
    fn create_namespace(
        &self,
        ns: &Namespace,
    ) -> impl Future<Output = Result<Created, StorageError>> + Send {
        (**self).create_namespace(ns)
    }

    fn get_namespace(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Namespace>, StorageError>> + Send {
        (**self).get_namespace(name)
    }

    fn list_namespaces(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Namespace>, StorageError>> + Send {
        (**self).list_namespaces(limit)
    }

    fn write_events(
        &self,
        ns: &Namespace,
        events: &[NewEvent],
    ) -> impl Future<Output = Result<(), StorageError>> + Send {
        (**self).write_events(ns, events)
    }

    fn list_buckets(
        &self,
        query: BucketQuery,
    ) -> impl Future<Output = Result<Vec<IndexedBucket>, StorageError>> + Send {
        (**self).list_buckets(query)
    }

    fn read_shard(
        &self,
        query: ShardQuery,
    ) -> impl Future<Output = Result<Vec<Row>, StorageError>> + Send {
        (**self).read_shard(query)
    }

    fn nodes(&self) -> usize {
        (**self).nodes()
    }
}
