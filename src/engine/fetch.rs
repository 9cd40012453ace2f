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
use crate::model::{Row, Span};
use crate::storage::{BucketQuery, IndexedBucket, ShardQuery, Storage, StorageError};
use crate::telemetry;

/// A finished storage request of a scan, with what it asked and got.
pub(super) enum Fetched {
    /// A page of the series' bucket index.
    Index {
        /// The bucket range it listed: an answer for a range the scan
        /// no longer waits on (its copy landed first) is dropped.
        range: (i64, i64),
        /// A probe sent beside the late index query (see
        /// `Scan::probe_late_index`), not the query itself.
        probe: bool,
        attempt: u32,
        started: Instant,
        result: Result<Vec<IndexedBucket>, StorageError>,
    },
    /// A page of one shard partition of a bucket.
    Shard {
        bucket: i64,
        shard: u32,
        /// Rows asked for: fewer back means the shard is exhausted.
        requested: usize,
        /// A probe sent beside the shard's late page (see
        /// `Scan::probe_stragglers`), not the page itself.
        probe: bool,
        attempt: u32,
        started: Instant,
        result: Result<Vec<Row>, StorageError>,
    },
}

/// What a failed fetch asked for, to send it again.
#[derive(Clone, Copy)]
pub(super) enum Resend {
    Index {
        range: (i64, i64),
        probe: bool,
    },
    Shard {
        bucket: i64,
        shard: u32,
        requested: usize,
        probe: bool,
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
            Self::Index { range, probe, .. } => Resend::Index { range, probe },
            Self::Shard {
                bucket,
                shard,
                requested,
                probe,
                ..
            } => Resend::Shard {
                bucket,
                shard,
                requested,
                probe,
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
    /// longer in flight (the next call sends it again). Returns whether
    /// the request failed.
    pub(super) fn land(&mut self, fetched: Fetched) -> bool {
        let failed = fetched.failed();
        if failed {
            self.forget(fetched.resend());
        } else {
            let end = self.absorb(fetched);
            debug_assert!(end.is_none(), "a landed page never ends a read");
        }
        failed
    }

    /// Marks a request as no longer in flight.
    fn forget(&mut self, failed: Resend) {
        match failed {
            // An answer for a range listed already (its copy landed first).
            Resend::Index { range, .. } if self.index_todo != Some(range) => {}
            Resend::Index { probe: true, .. } => self.index_probe_late_at = None,
            Resend::Index { probe: false, .. } => self.index_pending = false,
            Resend::Shard {
                bucket,
                shard,
                probe: true,
                ..
            } => {
                if let Some(cursor) = self.shard_mut(bucket, shard) {
                    cursor.probe_late_at = None;
                }
            }
            Resend::Shard { bucket, shard, .. } => {
                if let Some(cursor) = self.shard_mut(bucket, shard) {
                    cursor.requested = 0;
                    cursor.sent = None;
                }
            }
        }
    }

    /// Sends the next bucket-index query after `delay` (a retry's backoff).
    pub(super) fn launch_index(&mut self, attempt: u32, delay: Duration) {
        if self.index_todo.is_none() {
            return;
        }
        self.index_pending = true;
        self.index_sent = Some(Instant::now() + delay);
        self.index_probes = 0;
        self.index_probe_late_at = None;
        self.send_index(false, attempt, delay);
    }

    /// Sends a probe beside the late bucket-index query: the same query
    /// again (the driver picks its coordinator afresh, so it may go around
    /// a stalled one); whichever lands first lists the buckets. It is late
    /// in turn after `late_after`.
    pub(super) fn launch_index_probe(&mut self, late_after: Duration) {
        self.index_probes += 1;
        self.index_probe_late_at = Some(Instant::now() + late_after);
        tracing::debug!(
            probes = self.index_probes,
            "probe sent beside a late index query"
        );
        metrics::counter!(telemetry::STORAGE_PROBES).increment(1);
        self.stats.probes += 1;
        self.send_index(true, 0, Duration::ZERO);
    }

    /// Sends one bucket-index query (after `delay`) as a future of the scan.
    fn send_index(&mut self, probe: bool, attempt: u32, delay: Duration) {
        let Some((first, last)) = self.index_todo else {
            return;
        };
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
                backoff(delay).await;
                let started = Instant::now();
                let result = storage.list_buckets(q).await;
                Fetched::Index {
                    range: (first, last),
                    probe,
                    attempt,
                    started,
                    result,
                }
            }
            .instrument(tracing::debug_span!(
                "bucket_index",
                first,
                last,
                probe,
                attempt
            ))
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
        let byte_bound = pages::byte_bound(self.mean_row_bytes());
        let bucket = &mut self.buckets[bucket_idx];
        if !bucket.touched {
            bucket.touched = true;
            self.stats.buckets_visited += 1;
        }
        let b = bucket.bucket;
        let cursor = &mut bucket.shards[shard_idx];
        // Slow start only where the budget is tight: when even the full page
        // is expected to take a small share of the time left, ask for it.
        // No page carries more than MAX_PAGE_BYTES of rows of the size seen.
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
        )
        .min(byte_bound);
        tracing::debug!(
            bucket = b,
            shard = cursor.shard,
            full,
            page,
            ?timeout,
            ?delay,
            model = ?self.model,
            "page sent"
        );
        cursor.pages += 1;
        cursor.requested = page;
        cursor.sent = Some(Instant::now() + delay);
        let (shard, span) = (cursor.shard, cursor.span.clone());
        self.send_page(b, shard, span, page, false, attempt, delay, timeout + slack);
    }

    /// Sends a probe: `page` rows of shard `shard_idx` of the head bucket
    /// from where its late page in flight starts, so the merge can go on
    /// if the probe lands first (the page's rows it already gave are
    /// dropped when the page lands); it is late in turn after `late_after`.
    pub(super) fn launch_probe(&mut self, shard_idx: usize, page: usize, late_after: Duration) {
        let timeout = self.remaining() + self.hold_slack();
        let bucket = &mut self.buckets[0];
        let b = bucket.bucket;
        let cursor = &mut bucket.shards[shard_idx];
        cursor.probes += 1;
        cursor.probe_late_at = Some(Instant::now() + late_after);
        let (shard, span) = (cursor.shard, cursor.span.clone());
        tracing::debug!(bucket = b, shard, page, "probe sent beside a late page");
        metrics::counter!(telemetry::STORAGE_PROBES).increment(1);
        self.stats.probes += 1;
        self.send_page(b, shard, span, page, true, 0, Duration::ZERO, timeout);
    }

    /// Sends one shard-page request (after `delay`) as a future of the scan.
    #[allow(clippy::too_many_arguments)] // one request's fields, named
    fn send_page(
        &mut self,
        bucket: i64,
        shard: u32,
        span: Span,
        page: usize,
        probe: bool,
        attempt: u32,
        delay: Duration,
        timeout: Duration,
    ) {
        self.stats.storage_pages += 1;
        let q = ShardQuery {
            namespace: self.req.namespace.clone(),
            series_id: self.req.series_id.clone(),
            bucket,
            shard,
            span,
            order: self.req.order,
            limit: page,
            timeout,
        };
        let storage = self.engine.storage.clone();
        self.in_flight.push(
            async move {
                backoff(delay).await;
                let started = Instant::now();
                let result = storage.read_shard(q).await;
                Fetched::Shard {
                    bucket,
                    shard,
                    requested: page,
                    probe,
                    attempt,
                    started,
                    result,
                }
            }
            .instrument(tracing::debug_span!(
                "storage_page",
                bucket,
                shard,
                limit = page,
                probe,
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
        if let Resend::Index { range, probe } = failed {
            // A failed probe costs nothing (the query it raced is still on
            // its way, and retried if it fails), nor does a failed copy of
            // a query whose buckets another copy listed.
            if probe || self.index_todo != Some(range) {
                return None;
            }
        }
        if let Resend::Shard {
            bucket,
            shard,
            probe,
            ..
        } = failed
        {
            // A failed probe costs nothing: the page it raced is still on
            // its way (and retried if it fails). A failed page whose shard
            // a probe found exhausted (or whose bucket was merged) is not
            // needed any more.
            let needed = self.shard_mut(bucket, shard).is_some_and(|c| !c.done);
            if probe || !needed {
                return None;
            }
        }
        if self.remaining().is_zero() {
            // Storage requests time out when the budget does: this is the
            // budget ending, not storage failing.
            return Some(self.stop_for_budget());
        }
        let next = attempt + 1;
        let delay = self.backoff(next);
        let page = match &failed {
            Resend::Index { .. } => self.engine.config.index_page,
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
            Resend::Index { .. } => self.launch_index(next, delay),
            Resend::Shard {
                bucket,
                shard,
                requested,
                ..
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

/// Waits out a retry's backoff. No backoff means no wait at all: tokio
/// rounds a sleep's deadline up to its next 1 ms timer tick, so even
/// `sleep(Duration::ZERO)` held every storage request back about 1.2 ms
/// (median, measured) before it was sent, an eighth of a 10 ms budget,
/// and unseen by the latency model, which times requests from when they go.
async fn backoff(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}
