//! How far a StreamEvents client is behind its stream, measured on that
//! stream: the bytes handed on to the transport's queue that the transport
//! has not taken, and the pace at which it takes them.
//!
//! The engine's reserve for a stream ([`crate::engine::RowSink::unsent`])
//! otherwise assumes the client reads at the replica-wide response cost,
//! learnt mostly from fast clients. A client that decodes slowly (a
//! JavaScript or Python one, a loaded machine) left the queue full of
//! batches when the scan stopped, and they went after the budget: a Rust
//! client with 64 KiB flow-control windows handling each batch at 60 ms a
//! MiB had its 500 ms streams end 214-220 ms late (p50), with 10.4 MB; with
//! the pace measured, 0-44 ms late with 6.9-7.6 MB. A client whose
//! transport takes the whole stream into its window shows no pace: the
//! server sees its transport, not its application.
//!
//! The transport takes the next message once it has room for it: HTTP/2
//! flow control lets it send about a window ahead of what the client has
//! read. So while messages wait in the queue, the time between two takes is
//! the time the client needed for the message taken first, and the pace is
//! the sum of those times over the sum of their bytes (large messages
//! weigh more than small ones, whose fixed costs would read as a per-byte
//! cost). When nothing waited, the transport waited for the scan and the
//! time says nothing about the client.
//!
//! Invariants: bytes queued never go below zero (a take is of a message
//! queued before); with no pace measured yet the client counts as keeping
//! up (zero time), so a stream whose client is quick owes nothing to this.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Bytes of paced takes the pace is measured over: past it, what was
/// measured before counts half, so the pace follows a client that slows
/// down or speeds up within a call.
const PACE_WINDOW_BYTES: u64 = 4 << 20;

/// What a stream's transport has not taken yet and how fast it takes it.
#[derive(Debug, Default)]
pub struct Drain {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Bytes of messages queued and not taken yet (a batch has at least
    /// one row, so messages wait exactly when this is above zero).
    queued_bytes: u64,
    /// The last take while another message waited behind it: when, and
    /// its bytes (the transport sends them until its next take).
    paced_since: Option<(Instant, u64)>,
    /// Bytes of the last message taken: the transport still holds part of
    /// it, or the client still decodes it.
    in_transport: u64,
    /// Time and bytes of paced takes (see the module docs).
    paced_time: Duration,
    paced_bytes: u64,
}

impl Drain {
    /// A message of `bytes` went to the transport's queue.
    pub fn queued(&self, bytes: usize) {
        let mut s = self.lock();
        s.queued_bytes += bytes as u64;
    }

    /// A message of `bytes` counted as queued could not be.
    pub fn unqueued(&self, bytes: usize) {
        let mut s = self.lock();
        s.queued_bytes = s.queued_bytes.saturating_sub(bytes as u64);
    }

    /// The transport took a message of `bytes` from its queue.
    pub fn took(&self, bytes: usize) {
        let now = Instant::now();
        let bytes = bytes as u64;
        let mut s = self.lock();
        if let Some((since, sent)) = s.paced_since.take() {
            s.paced_time += now.saturating_duration_since(since);
            s.paced_bytes += sent;
            if s.paced_bytes > PACE_WINDOW_BYTES {
                s.paced_time /= 2;
                s.paced_bytes /= 2;
            }
        }
        s.queued_bytes = s.queued_bytes.saturating_sub(bytes);
        s.in_transport = bytes;
        if s.queued_bytes > 0 {
            s.paced_since = Some((now, bytes));
        }
    }

    /// The time the client still needs, at its measured pace, for what is
    /// queued and what the transport took last, plus `held` bytes not even
    /// queued yet; zero until a pace was measured.
    pub fn behind(&self, held: usize) -> Duration {
        let s = self.lock();
        if s.paced_bytes == 0 {
            return Duration::ZERO;
        }
        let bytes = s.queued_bytes + s.in_transport + held as u64;
        let nanos = s.paced_time.as_nanos() * u128::from(bytes) / u128::from(s.paced_bytes);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[tokio::test(start_paused = true)]
    async fn a_client_that_keeps_up_owes_nothing() {
        let drain = Drain::default();
        for _ in 0..10 {
            drain.queued(MIB);
            tokio::time::advance(Duration::from_millis(5)).await;
            drain.took(MIB);
        }
        assert_eq!(drain.behind(0), Duration::ZERO, "nothing waited: no pace");
    }

    #[tokio::test(start_paused = true)]
    async fn the_pace_is_measured_while_messages_wait() {
        let drain = Drain::default();
        for _ in 0..4 {
            drain.queued(MIB);
        }
        // The client takes a MiB every 10 ms.
        drain.took(MIB);
        tokio::time::advance(Duration::from_millis(10)).await;
        drain.took(MIB);
        tokio::time::advance(Duration::from_millis(10)).await;
        drain.took(MIB);
        // Queued: one MiB; in the transport: one; plus half a MiB held.
        assert_eq!(drain.behind(MIB / 2), Duration::from_millis(25));
        tokio::time::advance(Duration::from_millis(10)).await;
        drain.took(MIB);
        // Nothing waits behind the last take: it does not pace.
        tokio::time::advance(Duration::from_millis(50)).await;
        drain.queued(MIB);
        drain.took(MIB);
        assert_eq!(drain.behind(0), Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn small_messages_weigh_by_their_bytes() {
        let drain = Drain::default();
        drain.queued(1000);
        drain.queued(MIB);
        drain.queued(MIB);
        // A 1000-byte message took 1 ms (its fixed costs), a MiB 4 ms.
        drain.took(1000);
        tokio::time::advance(Duration::from_millis(1)).await;
        drain.took(MIB);
        tokio::time::advance(Duration::from_millis(4)).await;
        drain.took(MIB);
        let behind = drain.behind(0);
        // 5 ms for 1,049,576 bytes: a MiB in about 4.995 ms, where per-message
        // means would have said 1,049 ms a MiB for the first.
        assert!(
            behind > Duration::from_micros(4_990) && behind < Duration::from_millis(5),
            "{behind:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_pace_follows_a_client_that_slows_down() {
        let drain = Drain::default();
        let take_every = |ms: u64, n: usize| {
            let drain = &drain;
            async move {
                for _ in 0..n {
                    drain.queued(MIB);
                    drain.queued(MIB);
                    drain.took(MIB);
                    tokio::time::advance(Duration::from_millis(ms)).await;
                    drain.took(MIB);
                }
            }
        };
        take_every(1, 8).await;
        let quick = drain.behind(0);
        take_every(20, 8).await;
        let slow = drain.behind(0);
        assert!(quick <= Duration::from_millis(1), "{quick:?}");
        assert!(slow >= Duration::from_millis(15), "{slow:?}");
    }
}
