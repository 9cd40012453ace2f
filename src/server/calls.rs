//! Counts Hourglass calls in flight, from the request's arrival until its
//! response body (a whole stream, for StreamEvents) is finished or dropped,
//! so a drain waits for calls and not for idle connections.
//!
//! A response body is handed to the transport in pieces of at most
//! [`SEND_PIECE`] bytes: the transport takes a piece only when its client's
//! flow control has room (beyond a small send buffer), so the body ends
//! when the client has taken nearly all of it, and what a response holds
//! ([`HoldUntilSent`], a read's admission ticket) is held until then. (Taken
//! whole, a response of many megabytes went into the transport's buffer at
//! once, and a client that never read could pile up any number of them.)
//!
//! A client that takes nothing of a response the server has ready (a
//! unary response, or a stream's batches filling its queue) for
//! [`SEND_STALL`] has its connection aborted ([`watch_stall`]): otherwise
//! a client that never reads, answering pings, held its calls' slots and
//! responses for as long as it kept the connection.
//!
//! Request bodies received and not yet decoded count against one budget
//! for the server ([`RequestBudget`]): a body that would take it past its
//! bound fails RESOURCE_EXHAUSTED, and an unfinished body that receives
//! nothing for the stall time aborts its connection. (tonic buffers a
//! request until its whole message is in, up to the 64 MiB limit, before
//! any handler or credential check runs: 16 uploads held one KiB short of
//! 62 MB took a server from 67 MB to 984 MB.)
//!
//! Every Hourglass method takes one request message. A counted call's body
//! that begins a second message fails INTERNAL `TOO_MANY_MESSAGES`
//! ([`MessageCount`]), as grpc-go and grpc-java answer such a cardinality
//! violation, before any handler sees the first (tonic takes the first
//! message and drops the rest: a unary call carrying two read requests
//! was answered OK for the first).
//!
//! Health and reflection calls are not counted: a health `Watch` never
//! ends by itself and serves no data. Once the drain closes connections
//! (the `goaway` token), a `Watch` ends UNAVAILABLE "server shutting down"
//! (it has seen NOT_SERVING by then), so it does not hold its connection
//! open until the drain timeout.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::codegen::http;

use super::connections::Lingering;
use crate::auth::{AuthError, Authenticator, Principal};
use crate::error::ServiceError;

/// Path prefix of the calls counted.
const COUNTED_PREFIX: &str = "/hourglass.v1.Hourglass/";
/// The health stream that ends when connections close.
const WATCH_PATH: &str = "/grpc.health.v1.Health/Watch";

/// The largest piece of a response body handed to the transport at once.
pub const SEND_PIECE: usize = 64 << 10;

/// Put in a response's extensions by a handler: held by the response body
/// until the client has taken it (see the module docs), then dropped.
#[derive(Clone)]
pub struct HoldUntilSent {
    _held: Arc<dyn Send + Sync>,
}

impl HoldUntilSent {
    pub fn new(held: impl Send + Sync + 'static) -> Self {
        Self {
            _held: Arc::new(held),
        }
    }
}

/// How long a client may take nothing of a response the server has ready
/// before its connection is aborted, by default (checked every this long,
/// so a stall is acted on after one to two of it).
pub const SEND_STALL: Duration = Duration::from_secs(10);

/// In a counted call's request extensions: aborts the call's connection
/// (`token`) when its client stalls for `stall` (see [`watch_stall`]).
#[derive(Clone, Debug)]
pub struct ConnectionAbort {
    pub token: CancellationToken,
    pub stall: Duration,
}

/// How much of a response its client took, and whether it is over;
/// watched by [`watch_stall`].
#[derive(Debug, Default)]
pub struct Progress {
    /// Pieces ready for the client (a stream's queued messages; a unary
    /// response is ready whole, and counts none).
    offered: AtomicU64,
    taken: AtomicU64,
    done: AtomicBool,
    /// All of the response is ready (a unary one, once its headers go).
    all_ready: AtomicBool,
}

impl Progress {
    /// A response ready whole.
    pub fn ready() -> Self {
        let p = Self::default();
        p.all_ready.store(true, Ordering::Relaxed);
        p
    }

    /// A piece is ready for the client (a stream message queued).
    pub fn offered(&self) {
        self.offered.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the server has something ready the client has not taken.
    fn waiting(&self) -> bool {
        self.all_ready.load(Ordering::Relaxed)
            || self.taken.load(Ordering::Relaxed) < self.offered.load(Ordering::Relaxed)
    }

    /// The client took a piece (a frame, a stream message).
    pub fn took(&self) {
        self.taken.fetch_add(1, Ordering::Relaxed);
    }

    /// The response is over (sent or dropped): nothing more to watch.
    pub fn finish(&self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

/// Marks its [`Progress`] finished when dropped: held by what ends with
/// the response (its body, its stream).
pub struct Watched(pub Arc<Progress>);

impl Drop for Watched {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// Aborts the connection of a response whose client took nothing between
/// two checks `abort.stall` apart while the server had something ready for
/// it; stops once `progress` finishes.
pub fn watch_stall(progress: Arc<Progress>, abort: ConnectionAbort) {
    let ConnectionAbort {
        token: abort,
        stall,
    } = abort;
    tokio::spawn(async move {
        let mut seen = progress.taken.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(stall).await;
            if progress.done.load(Ordering::Relaxed) || abort.is_cancelled() {
                return;
            }
            let taken = progress.taken.load(Ordering::Relaxed);
            if taken == seen && progress.waiting() {
                tracing::warn!(
                    ?stall,
                    "a client took nothing of a response; closing its connection"
                );
                metrics::counter!(crate::telemetry::STALLED_CONNECTIONS).increment(1);
                abort.cancel();
                return;
            }
            seen = taken;
        }
    });
}

/// Request bytes the calls together may have received and not yet decoded,
/// by default: four of the largest messages.
pub const REQUEST_BUFFER: usize = 4 * crate::api::MAX_MESSAGE_BYTES;

/// The bytes of request bodies received and not yet decoded, across calls,
/// and their bound; cheap to clone.
#[derive(Clone, Debug)]
pub struct RequestBudget {
    used: Arc<AtomicUsize>,
    max: usize,
}

impl RequestBudget {
    pub fn new(max: usize) -> Self {
        Self {
            used: Arc::default(),
            max,
        }
    }

    /// Takes `n` bytes, unless that would pass the bound. The count never
    /// passes it, even for an instant: adding first and giving back on
    /// refusal let two bodies that crossed the bound together both be
    /// refused, where the first alone fitted.
    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|after| *after <= self.max)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }

    /// The refusal of a body that would pass the bound (counted as a
    /// rejected request: no handler sees it).
    fn refusal(&self) -> tonic::Status {
        use crate::error::REASON_REQUEST_BUFFER_FULL;
        use tonic_types::ErrorDetails;
        metrics::counter!(crate::telemetry::REJECTED, "reason" => REASON_REQUEST_BUFFER_FULL)
            .increment(1);
        let mut details = ErrorDetails::with_retry_info(Some(REQUEST_BUFFER_RETRY));
        details.set_error_info(
            REASON_REQUEST_BUFFER_FULL,
            crate::error::ERROR_DOMAIN,
            std::collections::HashMap::<String, String>::new(),
        );
        details.add_quota_failure_violation(
            "server",
            format!("request bytes being received at once, at most {}", self.max),
        );
        crate::error::detailed_status(
            tonic::Code::ResourceExhausted,
            format!(
                "requests being received fill this server's {} MiB buffer; retry",
                self.max >> 20
            ),
            details,
        )
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The wait a refusal for a full request buffer suggests.
const REQUEST_BUFFER_RETRY: Duration = Duration::from_secs(1);

/// A counted call's request body: its bytes count against the
/// [`RequestBudget`] until it is decoded (ended or dropped), and while it is
/// unfinished a stall watch aborts its connection if nothing comes for the
/// stall time.
pub struct RequestBody<B> {
    inner: Pin<Box<B>>,
    budget: Option<RequestBudget>,
    /// The gRPC messages begun in the body, for a method that takes one.
    messages: Option<MessageCount>,
    held: usize,
    /// Started at the first data frame that leaves the body unfinished.
    watch: Option<ConnectionAbort>,
    progress: Option<Watched>,
}

impl<B> RequestBody<B> {
    fn release(&mut self) {
        if let Some(b) = &self.budget {
            b.give_back(std::mem::take(&mut self.held));
        }
        self.progress = None;
    }
}

impl<B> Drop for RequestBody<B> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<B> http_body::Body for RequestBody<B>
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match futures::ready!(this.inner.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(count) = &mut this.messages {
                        if !count.feed(data) {
                            let refusal = MessageCount::refusal();
                            this.release();
                            return Poll::Ready(Some(Err(Box::new(refusal))));
                        }
                    }
                    if let Some(budget) = &this.budget {
                        if !budget.take(data.len()) {
                            let refusal = budget.refusal();
                            this.release();
                            return Poll::Ready(Some(Err(Box::new(refusal))));
                        }
                        this.held += data.len();
                    }
                    if let Some(p) = &this.progress {
                        p.0.took();
                    } else if !this.inner.is_end_stream() {
                        if let Some(abort) = this.watch.take() {
                            let progress = Arc::new(Progress::ready());
                            watch_stall(progress.clone(), abort);
                            this.progress = Some(Watched(progress));
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            None => {
                this.release();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Follows the gRPC framing of a request body (each message: a flag
/// byte, a 4-byte big-endian length, that many bytes) to tell when a
/// second message begins.
#[derive(Debug, Default)]
struct MessageCount {
    /// Messages begun.
    begun: u32,
    /// The current message's prefix, as far as it has come.
    prefix: [u8; 5],
    /// Bytes of `prefix` in hand; 0 between messages.
    prefix_len: usize,
    /// Bytes of the current message's body still to come.
    left: usize,
}

impl MessageCount {
    /// Takes the body's next bytes; false once a second message begins.
    fn feed(&mut self, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            if self.left > 0 {
                let n = self.left.min(data.len());
                self.left -= n;
                data = &data[n..];
                continue;
            }
            if self.prefix_len == 0 {
                self.begun += 1;
                if self.begun > 1 {
                    return false;
                }
            }
            let n = (self.prefix.len() - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[..n]);
            self.prefix_len += n;
            data = &data[n..];
            if self.prefix_len == self.prefix.len() {
                let [_, length @ ..] = self.prefix;
                self.left = u32::from_be_bytes(length) as usize;
                self.prefix_len = 0;
            }
        }
        true
    }

    /// The refusal of a body that began a second message (counted as a
    /// rejected request: no handler sees it).
    fn refusal() -> tonic::Status {
        use crate::error::REASON_TOO_MANY_MESSAGES;
        metrics::counter!(crate::telemetry::REJECTED, "reason" => REASON_TOO_MANY_MESSAGES)
            .increment(1);
        let details = tonic_types::ErrorDetails::with_error_info(
            REASON_TOO_MANY_MESSAGES,
            crate::error::ERROR_DOMAIN,
            std::collections::HashMap::<String, String>::new(),
        );
        crate::error::detailed_status(
            tonic::Code::Internal,
            "the request holds more than one message; this method takes exactly one".into(),
            details,
        )
    }
}

/// The number of calls in flight; cheap to clone.
#[derive(Clone, Debug)]
pub struct CallTracker(watch::Sender<usize>);

impl Default for CallTracker {
    fn default() -> Self {
        Self(watch::Sender::new(0))
    }
}

impl CallTracker {
    fn enter(&self) -> CallGuard {
        self.0.send_modify(|n| *n += 1);
        CallGuard(self.0.clone())
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        *self.0.borrow()
    }

    /// Completes when no call is in flight.
    pub async fn idle(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`, so waiting cannot fail.
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// One call in flight; dropped when it ends.
#[derive(Debug)]
struct CallGuard(watch::Sender<usize>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// The tower layer that counts calls into a [`CallTracker`] and ends
/// health `Watch` streams once `goaway` is cancelled.
#[derive(Clone, Debug)]
pub struct TrackCallsLayer {
    pub calls: CallTracker,
    pub goaway: CancellationToken,
    /// The connections, to abort a stalled client's.
    pub connections: Lingering,
    /// See [`SEND_STALL`].
    pub stall: Duration,
    pub requests: RequestBudget,
    /// Bearer-token clients: a Hourglass call without valid credentials is
    /// refused from its headers (see [`Authenticated`]).
    pub auth: Option<Arc<Authenticator>>,
}

impl<S> tower_layer::Layer<S> for TrackCallsLayer {
    type Service = TrackCalls<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TrackCalls {
            inner,
            tracker: self.calls.clone(),
            goaway: self.goaway.clone(),
            connections: self.connections.clone(),
            stall: self.stall,
            requests: self.requests.clone(),
            auth: self.auth.clone(),
        }
    }
}

/// See [`TrackCallsLayer`].
#[derive(Clone, Debug)]
pub struct TrackCalls<S> {
    inner: S,
    tracker: CallTracker,
    goaway: CancellationToken,
    connections: Lingering,
    stall: Duration,
    requests: RequestBudget,
    auth: Option<Arc<Authenticator>>,
}

/// In a request's extensions: the client its bearer token names, found by
/// [`TrackCalls`] from the headers, before a byte of the body is read.
#[derive(Clone, Debug)]
pub struct Authenticated(pub Arc<Principal>);

/// The Hourglass method a path names, for metrics (None: no such method).
fn method_of(path: &str) -> Option<&'static str> {
    let name = path.strip_prefix(COUNTED_PREFIX)?;
    [
        "CreateNamespace",
        "GetNamespace",
        "WriteEvents",
        "ReadEvents",
        "StreamEvents",
    ]
    .into_iter()
    .find(|m| *m == name)
}

/// The answer to a call of `method` without valid credentials, given from
/// its headers alone: its body is neither buffered, decompressed nor
/// decoded, so a client without a token cannot fill the request buffer or
/// spend the server's CPU (the handler would refuse it the same way).
fn unauthenticated(
    method: Option<&'static str>,
    e: AuthError,
) -> http::Response<tonic::body::Body> {
    let err = ServiceError::Auth(e);
    metrics::counter!(crate::telemetry::REJECTED, "reason" => err.reason()).increment(1);
    if let Some(method) = method {
        crate::telemetry::request(method, "error", Duration::ZERO);
    }
    tracing::debug!(
        reason = err.reason(),
        method,
        "request refused from its headers"
    );
    tonic::Status::from(err).into_http()
}

/// The client address of a request (through TLS too).
fn peer<B>(request: &http::Request<B>) -> Option<std::net::SocketAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let ext = request.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
}

impl<S, B> tower_service::Service<http::Request<B>> for TrackCalls<S>
where
    S: tower_service::Service<
        http::Request<RequestBody<B>>,
        Response = http::Response<tonic::body::Body>,
    >,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let counted = path.starts_with(COUNTED_PREFIX);
        let goaway = (path == WATCH_PATH).then(|| self.goaway.clone().cancelled_owned());
        if let (true, Some(auth)) = (counted, &self.auth) {
            match auth.authenticate_headers(request.headers()) {
                Ok(client) => {
                    request.extensions_mut().insert(Authenticated(client));
                }
                Err(e) => {
                    let refused = unauthenticated(method_of(request.uri().path()), e);
                    return async move { Ok(refused) }.boxed();
                }
            }
        }
        let guard = counted.then(|| self.tracker.enter());
        let abort = guard
            .as_ref()
            .and_then(|_| peer(&request))
            .and_then(|peer| self.connections.abort_handle(peer))
            .map(|token| ConnectionAbort {
                token,
                stall: self.stall,
            });
        if let Some(abort) = &abort {
            request.extensions_mut().insert(abort.clone());
        }
        let watch = abort.clone();
        let request = request.map(|body| RequestBody {
            inner: Box::pin(body),
            budget: counted.then(|| self.requests.clone()),
            messages: counted.then(MessageCount::default),
            held: 0,
            watch,
            progress: None,
        });
        let response = self.inner.call(request);
        async move {
            let mut response = response.await?;
            if guard.is_none() && goaway.is_none() {
                return Ok(response);
            }
            let held = response.extensions_mut().remove::<HoldUntilSent>();
            // A unary response is all ready once its headers go: a client
            // that takes none of it for the stall time is dropped.
            let progress = held.as_ref().and(abort).map(|abort| {
                let progress = Arc::new(Progress::ready());
                watch_stall(progress.clone(), abort);
                Watched(progress)
            });
            Ok(response.map(|body| {
                tonic::body::Body::new(CallBody {
                    body,
                    _guard: guard,
                    held,
                    progress,
                    rest: None,
                    goaway: goaway.map(Box::pin),
                    ended: false,
                })
            }))
        }
        .boxed()
    }
}

/// A response body that keeps its call counted (`_guard`) until it is
/// done, holds `held` until its last data went to the transport, hands
/// data over in pieces of at most [`SEND_PIECE`] bytes (`rest`: what is
/// left of the current frame), and ends with UNAVAILABLE once `goaway`
/// completes.
struct CallBody {
    body: tonic::body::Body,
    _guard: Option<CallGuard>,
    held: Option<HoldUntilSent>,
    /// What the client took, for the stall watch of a unary response.
    progress: Option<Watched>,
    rest: Option<bytes::Bytes>,
    goaway: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    ended: bool,
}

impl CallBody {
    /// The next piece of `data`, keeping what follows it in `rest`.
    fn piece(&mut self, mut data: bytes::Bytes) -> http_body::Frame<bytes::Bytes> {
        if data.len() > SEND_PIECE {
            self.rest = Some(data.split_off(SEND_PIECE));
        }
        if let Some(p) = &self.progress {
            p.0.took();
        }
        http_body::Frame::data(data)
    }
}

impl http_body::Body for CallBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if let Some(rest) = self.rest.take() {
            let piece = self.piece(rest);
            return Poll::Ready(Some(Ok(piece)));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        // What the stream has ready (NOT_SERVING, as the drain began) goes
        // first.
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => Some(Ok(self.piece(data))),
                    Err(frame) => {
                        // Trailers: every byte of data went.
                        self.held = None;
                        Some(Ok(frame))
                    }
                },
                other => {
                    self.held = None;
                    other
                }
            });
        }
        if self
            .goaway
            .as_mut()
            .is_some_and(|g| g.as_mut().poll(cx).is_ready())
        {
            self.ended = true;
            let mut trailers = http::HeaderMap::new();
            let code = tonic::Code::Unavailable as i32;
            trailers.insert("grpc-status", http::HeaderValue::from(code));
            trailers.insert(
                "grpc-message",
                http::HeaderValue::from_static("server shutting down"),
            );
            return Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_none() && (self.ended || self.body.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.rest {
            None => self.body.size_hint(),
            Some(_) => http_body::SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_waits_for_every_guard() {
        let tracker = CallTracker::default();
        tracker.idle().await;
        let a = tracker.enter();
        let b = tracker.enter();
        let waiting = tokio::spawn({
            let t = tracker.clone();
            async move { t.idle().await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "one call still in flight");
        drop(b);
        waiting.await.expect("idle once both ended");
    }

    /// Two bodies that cross the bound at once: exactly one is refused
    /// when only one fits, and the count never passes the bound (adding
    /// first and giving back on refusal refused both now and then, and a
    /// watcher saw the count above the bound).
    #[test]
    fn bodies_crossing_the_bound_together_refuse_only_the_one_that_does_not_fit() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Barrier;
        const N: usize = 1000;
        let budget = RequestBudget::new(3 * N);
        assert!(budget.take(2 * N), "a body holding two thirds");
        let done = Arc::new(AtomicBool::new(false));
        let watcher = std::thread::spawn({
            let (used, done) = (budget.used.clone(), done.clone());
            move || {
                let mut most = 0;
                while !done.load(Ordering::Relaxed) {
                    most = most.max(used.load(Ordering::Relaxed));
                    std::hint::spin_loop();
                }
                most
            }
        });
        let barrier = Arc::new(Barrier::new(2));
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let (budget, barrier) = (budget.clone(), barrier.clone());
                std::thread::spawn(move || {
                    (0..20_000)
                        .map(|_| {
                            barrier.wait();
                            let took = budget.take(N);
                            barrier.wait();
                            if took {
                                budget.give_back(N);
                            }
                            took
                        })
                        .collect::<Vec<bool>>()
                })
            })
            .collect();
        let rounds: Vec<Vec<bool>> = racers
            .into_iter()
            .map(|r| r.join().expect("racer"))
            .collect();
        done.store(true, Ordering::Relaxed);
        let most = watcher.join().expect("watcher");
        for (round, (a, b)) in rounds[0].iter().zip(&rounds[1]).enumerate() {
            assert!(
                a ^ b,
                "round {round}: exactly one of the two fits ({a}, {b})"
            );
        }
        assert!(most <= 3 * N, "the count reached {most}, past the bound");
        assert_eq!(budget.used.load(Ordering::Relaxed), 2 * N);
    }

    /// A gRPC message as a client frames it.
    fn framed(body: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        let len = u32::try_from(body.len()).expect("a small message");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn a_second_message_is_seen_however_the_body_is_cut() {
        let one = framed(b"a request");
        let mut two = one.clone();
        two.extend(framed(b""));
        two.extend(framed(b"another"));
        // Whole, in pieces of every size, and cut in the prefix.
        for piece in 1..=two.len() {
            let mut count = MessageCount::default();
            let fed: Vec<bool> = one.chunks(piece).map(|c| count.feed(c)).collect();
            assert!(fed.iter().all(|ok| *ok), "one message, pieces of {piece}");
            let mut count = MessageCount::default();
            let fed: Vec<bool> = two.chunks(piece).map(|c| count.feed(c)).collect();
            assert!(fed.contains(&false), "three messages, pieces of {piece}");
        }
        // An empty message is one message.
        assert!(MessageCount::default().feed(&framed(b"")));
        let mut count = MessageCount::default();
        assert!(count.feed(&framed(b"")));
        assert!(!count.feed(&[0]), "a second, however short");
    }
}
