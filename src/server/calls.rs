//! Counts Hourglass calls in flight, from the request's arrival until its
//! response body (a whole stream, for StreamEvents) is finished or dropped,
//! so a drain waits for calls and not for idle connections.
//!
//! Health and reflection calls are not counted: a health `Watch` never
//! ends by itself and serves no data. Once the drain closes connections
//! (the `goaway` token), a `Watch` ends UNAVAILABLE "server shutting down"
//! (it has seen NOT_SERVING by then), so it does not hold its connection
//! open until the drain timeout.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::codegen::http;

/// Path prefix of the calls counted.
const COUNTED_PREFIX: &str = "/hourglass.v1.Hourglass/";
/// The health stream that ends when connections close.
const WATCH_PATH: &str = "/grpc.health.v1.Health/Watch";

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
}

impl<S> tower_layer::Layer<S> for TrackCallsLayer {
    type Service = TrackCalls<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TrackCalls {
            inner,
            tracker: self.calls.clone(),
            goaway: self.goaway.clone(),
        }
    }
}

/// See [`TrackCallsLayer`].
#[derive(Clone, Debug)]
pub struct TrackCalls<S> {
    inner: S,
    tracker: CallTracker,
    goaway: CancellationToken,
}

impl<S, B> tower_service::Service<http::Request<B>> for TrackCalls<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let guard = path
            .starts_with(COUNTED_PREFIX)
            .then(|| self.tracker.enter());
        let goaway = (path == WATCH_PATH).then(|| self.goaway.clone().cancelled_owned());
        let response = self.inner.call(request);
        async move {
            let response = response.await?;
            if guard.is_none() && goaway.is_none() {
                return Ok(response);
            }
            Ok(response.map(|body| {
                tonic::body::Body::new(CallBody {
                    body,
                    _guard: guard,
                    goaway: goaway.map(Box::pin),
                    ended: false,
                })
            }))
        }
        .boxed()
    }
}

/// A response body that keeps its call counted (`_guard`) until it is
/// done, and ends with UNAVAILABLE once `goaway` completes.
struct CallBody {
    body: tonic::body::Body,
    _guard: Option<CallGuard>,
    goaway: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    ended: bool,
}

impl http_body::Body for CallBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        // What the stream has ready (NOT_SERVING, as the drain began) goes
        // first.
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame);
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
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
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
}
