//! Fetches of one read: the bucket-index and shard-page requests a scan
//! sends, each with its own result in one enum, and retry with backoff
//! within the budget.

use std::time::Duration;

use futures::FutureExt;
use rand::Rng;
use tokio::time::Instant;
use tracing::Instrument;

use super::pages;
use super::scan::Scan;
use super::{Ending, PartialReason, ReadError};
use crate::model::Row;
use crate::storage::{BucketQuery, ShardQuery, Storage, StorageError};
use crate::telemetry;

/// A finished storage request of a scan, with what it asked and got.
pub(super) enum Fetched {
    /// A page of the series' bucket index.
    Index {
        attempt: u32,
        started: Instant,
        result: Result<Vec<i64>, StorageError>,
    },
    /// A page of one shard partition of a bucket.
    Shard {
        bucket: i64,
        shard: u32,
        /// Rows asked for: fewer back means the shard is exhausted.
        requested: usize,
        attempt: u32,
        started: Instant,
        result: Result<Vec<Row>, StorageError>,
    },
}

/// What a failed fetch asked for, to send it again.
#[derive(Clone, Copy)]
pub(super) enum Resend {
    Index,
    Shard {
        bucket: i64,
        shard: u32,
        requested: usize,
    },
}

impl Fetched {
    /// When the request was sent (after any backoff).
    pub(super) fn started(&self) -> Instant {
        match self {
            Self::Index { started, .. } | Self::Shard { started, .. } => *started,
        }
    }

    /// What this fetch asked for.
    fn resend(&self) -> Resend {
        match *self {
            Self::Index { .. } => Resend::Index,
            Self::Shard {
                bucket,
                shard,
                requested,
                ..
            } => Resend::Shard {
                bucket,
                shard,
                requested,
            },
        }
    }

    fn failed(&self) -> bool {
        match self {
            Self::Index { result, .. } => result.is_err(),
            Self::Shard { result, .. } => result.is_err(),
        }
    }
}

impl<S: Storage> Scan<S> {
    /// Takes in a fetch that landed while the scan was held between calls:
    /// rows and buckets are kept; a failure only marks the request as no
    /// longer in flight (the next call sends it again).
    pub(super) fn land(&mut self, fetched: Fetched) {
        if fetched.failed() {
            self.forget(fetched.resend());
        } else {
            let end = self.absorb(fetched);
            debug_assert!(end.is_none(), "a landed page never ends a read");
        }
    }

    /// Marks a request as no longer in flight.
    fn forget(&mut self, failed: Resend) {
        match failed {
            Resend::Index => self.index_pending = false,
            Resend::Shard { bucket, shard, .. } => {
                let cursor = self.shard_mut(bucket, shard);
                cursor.requested = 0;
                cursor.sent = None;
            }
        }
    }

    /// Sends the next bucket-index query after `delay` (a retry's backoff).
    pub(super) fn launch_index(&mut self, attempt: u32, delay: Duration) {
        let Some((first, last)) = self.index_todo else {
            return;
        };
        self.index_pending = true;
        self.stats.index_pages += 1;
        let q = BucketQuery {
            namespace: self.req.namespace.clone(),
            series_id: self.req.series_id.clone(),
            first,
            last,
            order: self.req.order,
            limit: self.engine.config.index_page,
            timeout: self.remaining().saturating_sub(delay) + self.hold_slack(),
        };
        let storage = self.engine.storage.clone();
        self.in_flight.push(
            async move {
                tokio::time::sleep(delay).await;
                let started = Instant::now();
                let result = storage.list_buckets(q).await;
                Fetched::Index {
                    attempt,
                    started,
                    result,
                }
            }
            .instrument(tracing::debug_span!("bucket_index", first, last, attempt))
            .boxed(),
        );
    }

    /// Sends a page of shard `shard_idx` of queued bucket `bucket_idx`,
    /// after `delay`; slow start may shrink `page`.
    pub(super) fn launch_shard(
        &mut self,
        bucket_idx: usize,
        shard_idx: usize,
        page: usize,
        attempt: u32,
        delay: Duration,
    ) {
        let timeout = self.remaining().saturating_sub(delay);
        let slack = self.hold_slack();
        let bucket = &mut self.buckets[bucket_idx];
        if !bucket.touched {
            bucket.touched = true;
            self.stats.buckets_visited += 1;
        }
        let b = bucket.bucket;
        let cursor = &mut bucket.shards[shard_idx];
        // Slow start only where the budget is tight: when even the full page
        // is expected to take a small share of the time left, ask for it.
        let full = page;
        let page = pages::slow_start(
            page,
            self.model.predict(page),
            timeout,
            cursor.pages,
            self.model.trusted_rows(),
            self.model
                .affordable_rows(timeout / pages::FIRST_PAGE_SHARE),
            &self.engine.config,
        );
        tracing::debug!(
            bucket = b,
            shard = cursor.shard,
            full,
            page,
            ?timeout,
            ?delay,
            "page sent"
        );
        cursor.pages += 1;
        cursor.requested = page;
        cursor.sent = Some(Instant::now() + delay);
        self.stats.storage_pages += 1;
        let q = ShardQuery {
            namespace: self.req.namespace.clone(),
            series_id: self.req.series_id.clone(),
            bucket: b,
            shard: cursor.shard,
            span: cursor.span.clone(),
            order: self.req.order,
            limit: page,
            timeout: timeout + slack,
        };
        let storage = self.engine.storage.clone();
        let shard = cursor.shard;
        self.in_flight.push(
            async move {
                tokio::time::sleep(delay).await;
                let started = Instant::now();
                let result = storage.read_shard(q).await;
                Fetched::Shard {
                    bucket: b,
                    shard,
                    requested: page,
                    attempt,
                    started,
                    result,
                }
            }
            .instrument(tracing::debug_span!(
                "storage_page",
                bucket = b,
                shard,
                limit = page,
                attempt
            ))
            .boxed(),
        );
    }

    /// How much longer than the call a storage request may run: when the
    /// scan may be held for a hot continuation, its pages in flight at the
    /// deadline may land for the next call (up to a second, and no longer
    /// than a scan is held). The call itself never waits on them: the scan
    /// stops at its own deadline whatever its requests' timeouts.
    fn hold_slack(&self) -> Duration {
        let held = &self.engine.config.continuations;
        if held.enabled() {
            held.max_age.min(Duration::from_secs(1))
        } else {
            Duration::ZERO
        }
    }

    /// Full-jitter exponential backoff for retry number `attempt` (0: none).
    fn backoff(&self, attempt: u32) -> Duration {
        let cap = pages::backoff_cap(attempt, &self.engine.config);
        rand::rng().random_range(Duration::ZERO..=cap)
    }

    /// After a failed fetch: retry with backoff if the error is transient and
    /// the retry can still land in the budget; otherwise end the read.
    pub(super) fn retry_or_stop(
        &mut self,
        failed: Resend,
        attempt: u32,
        err: StorageError,
    ) -> Option<Result<Ending, ReadError>> {
        // Not in flight any more, whether sent again below or not: a scan
        // held after this stop must send it again.
        self.forget(failed);
        if self.remaining().is_zero() {
            // Storage requests time out when the budget does: this is the
            // budget ending, not storage failing.
            return Some(self.stop_for_budget());
        }
        let next = attempt + 1;
        let delay = self.backoff(next);
        let page = match &failed {
            Resend::Index => self.engine.config.index_page,
            Resend::Shard { requested, .. } => *requested,
        };
        let fits = delay + self.model.predict(page) < self.remaining();
        if !(err.is_transient() && fits) {
            tracing::warn!(cause = %crate::storage::chain(&err), attempt, "storage request failed; ending read");
            return Some(self.stop(PartialReason::StorageError, Some(err)));
        }
        self.stats.retries += 1;
        metrics::counter!(telemetry::STORAGE_RETRIES).increment(1);
        self.last_error = Some(err.clone());
        tracing::debug!(cause = %crate::storage::chain(&err), attempt = next, ?delay, "retrying storage request");
        match failed {
            Resend::Index => self.launch_index(next, delay),
            Resend::Shard {
                bucket,
                shard,
                requested,
            } => {
                let i = self
                    .buckets
                    .iter()
                    .position(|b| b.bucket == bucket)
                    .expect("a fetched bucket stays queued until merged");
                self.launch_shard(i, shard as usize, requested, next, delay);
            }
        }
        None
    }
}
