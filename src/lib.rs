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
//! * [`engine`] rooms: `scan` (the state machine), `fetch` (storage
//!   requests and retries), [`engine::pages`] (page sizing, pure),
//!   [`engine::position`] (what a position, frontier, token and watermark
//!   mean), [`engine::reserve`] (the measured response cost), [`engine::budget`], [`engine::merge`], [`engine::predict`].
//! * [`storage`]: the [`storage::Storage`] trait, Cassandra/ScyllaDB behind
//!   it ([`storage::cassandra`]), the circuit breaker ([`storage::breaker`])
//!   and, with the `test-util` feature, an in-process fake for engine tests.
//! * [`admission`]: adapts how many reads run at once to measured latency,
//!   with fair shares per namespace and a batch class, under
//! * [`bulkhead`]: the static bounds on concurrent scans overall and per
//!   namespace.
//! * [`auth`]: bearer-token authentication, per-namespace permissions.
//! * [`model`]: namespaces, events, clustering keys, bucket arithmetic.
//! * [`telemetry`]: Prometheus metrics and their names.
//! * [`codec`]: prost's gRPC codec, timing each encode for the response
//!   reserve ([`engine::reserve`]).
//! * [`client`]: follows tokens to the end of a read as a `Stream`.
//! * [`cli`]: the binary's flags and config file, turned into a
//!   [`server::ServerConfig`] that [`server::run`] serves.
//!
//! * `fuzzing` (feature `fuzz`): the fuzz targets' entry points.
//!
//! Nothing below [`server`] knows about tonic; nothing above [`storage`]
//! knows about CQL. The load tool, benchmark, soak and demo are the
//! workspace member `hourglass-load` (`load/`), a user of this crate's
//! public API.
//!
//! The items re-exported at the root are the entry points a user needs: run
//! a server ([`run`], [`ServerConfig`]), embed the engine ([`ReadEngine`] over
//! a [`Storage`]), or call a server and follow its tokens ([`pb`],
//! [`follow`]).

pub mod admission;
pub mod api;
pub mod auth;
pub mod bulkhead;
pub mod cli;
pub mod client;
pub mod codec;
pub mod engine;
pub mod error;
#[cfg(feature = "fuzz")]
pub mod fuzzing;
pub mod model;
#[cfg(feature = "otel")]
pub mod otel;
pub mod response;
pub mod server;
pub mod storage;
pub mod telemetry;
pub mod token;

pub use api::pb;
pub use client::{follow, read_all, FollowOptions};
pub use engine::{EngineConfig, ReadEngine, ReadError, ReadOutcome, ReadRequest};
pub use error::ServiceError;
pub use server::{run, ServeError, ServerConfig};
pub use storage::cassandra::{CassandraConfig, CassandraStore};
pub use storage::{Storage, StorageError};
pub use token::KeyRing;
