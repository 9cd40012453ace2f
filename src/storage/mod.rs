//! The storage layer: a small trait over what the engine needs, with the
//! Cassandra/ScyllaDB implementation ([`cassandra`]) and an in-process fake
//! ([`memory`]) for deterministic engine tests.
//!
//! Storage is addressed in clustering-key terms only: a shard query reads the
//! rows of one (series, bucket, shard) partition strictly inside a [`Span`],
//! in order, up to a limit. No paging state is kept between calls, which is
//! what makes continuation tokens stateless.

pub mod breaker;
pub mod cassandra;
pub mod memory;

use std::future::Future;
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

/// What went wrong in storage, classified for retries.
#[derive(Debug, thiserror::Error, Clone)]
pub enum StorageError {
    /// Timed out, overloaded, unavailable or connection lost: may succeed if retried.
    #[error("storage temporarily unavailable: {0}")]
    Transient(String),
    /// The store refused the request in a way retrying will not fix.
    #[error("storage error: {0}")]
    Fatal(String),
    /// Could not connect to the store at all.
    #[error("cannot reach storage at {address}: {cause}")]
    Connect { address: String, cause: String },
    /// The circuit breaker is open after repeated failures: failed fast.
    #[error("storage circuit open after repeated failures; retry in {retry_after:?}")]
    CircuitOpen { retry_after: Duration },
}

impl StorageError {
    /// Whether retrying the same request may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StorageError::Transient(_))
    }
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

    /// Writes validated events (idempotent upserts). On error some events may
    /// be written; retrying the same batch is always safe. The bucket index
    /// is written before the rows, so a reader never misses a stored row.
    fn write_events(
        &self,
        ns: &Namespace,
        events: &[NewEvent],
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Non-empty buckets of a series within a bucket range, in order.
    fn list_buckets(
        &self,
        query: BucketQuery,
    ) -> impl Future<Output = Result<Vec<i64>, StorageError>> + Send;

    /// Rows of one shard partition inside the query's span, in order.
    fn read_shard(
        &self,
        query: ShardQuery,
    ) -> impl Future<Output = Result<Vec<Row>, StorageError>> + Send;
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
    ) -> impl Future<Output = Result<Vec<i64>, StorageError>> + Send {
        (**self).list_buckets(query)
    }

    fn read_shard(
        &self,
        query: ShardQuery,
    ) -> impl Future<Output = Result<Vec<Row>, StorageError>> + Send {
        (**self).read_shard(query)
    }
}
