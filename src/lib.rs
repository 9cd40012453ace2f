//! Hourglass: a gRPC time-series read service that always answers on time.
//!
//! Modules, in the direction data flows:
//!
//! * [`server`]: the tonic service. Validates requests ([`api`]), computes
//!   each read's budget, verifies continuation tokens ([`token`]), calls the
//!   engine and maps errors to gRPC status ([`error`]).
//! * [`engine`]: the deadline-bounded read: walks buckets, merges shards,
//!   stops on limits or budget, predicts page latency, retries transient
//!   storage errors, reports the frontier a token resumes from.
//! * [`storage`]: the [`storage::Storage`] trait, Cassandra/ScyllaDB behind
//!   it ([`storage::cassandra`]) and an in-process fake for engine tests.
//! * [`bulkhead`]: bounds concurrent scans overall and per namespace.
//! * [`auth`]: bearer-token authentication, per-namespace permissions.
//! * [`model`]: namespaces, events, clustering keys, bucket arithmetic.
//! * [`telemetry`]: Prometheus metrics and their names.
//! * [`client`]: follows tokens to the end of a read as a `Stream`.
//! * [`cli`]: the binary's flags and config file, turned into a
//!   [`server::ServerConfig`] that [`server::run`] serves.
//!
//! Nothing below [`server`] knows about tonic; nothing above [`storage`]
//! knows about CQL.

pub mod api;
pub mod auth;
pub mod bulkhead;
pub mod cli;
pub mod client;
pub mod engine;
pub mod error;
#[cfg(feature = "fuzz")]
pub mod fuzzing;
pub mod model;
#[cfg(feature = "otel")]
pub mod otel;
pub mod server;
pub mod storage;
pub mod telemetry;
pub mod token;
