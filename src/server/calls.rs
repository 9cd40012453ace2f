//! Counts Hourglass calls in flight, from the request's arrival until its
//! response body (a whole stream, for StreamEvents) is finished or dropped,
//! so a drain waits for calls and not for idle connections.
//!
//! Health and reflection calls are not counted: a health `Watch` never
//! ends by itself and serves no data.
//!
//! It also measures what finishing a ReadEvents response costs (the
//! handler's conversion time, which the handler reports as a
//! [`ResponseTail`] extension, plus the time from the handler's return to
//! the end of the response body: encoding and sending) and feeds it to the
//! engine's [`ResponseCost`], by encoded size.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::codegen::http;

use crate::engine::response_cost::ResponseCost;

/// Path prefix of the calls counted.
const COUNTED_PREFIX: &str = "/hourglass.v1.Hourglass/";
/// The call whose response cost is measured.
const MEASURED_PATH: &str = "/hourglass.v1.Hourglass/ReadEvents";

/// Time a handler spent building its response after its scan stopped; a
/// response extension the layer reads.
#[derive(Clone, Copy, Debug)]
pub struct ResponseTail(pub Duration);

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

/// The tower layer that counts calls into a [`CallTracker`] and measures
/// response costs into a [`ResponseCost`].
#[derive(Clone, Debug)]
pub struct TrackCallsLayer {
    pub tracker: CallTracker,
    pub cost: Arc<ResponseCost>,
}

impl<S> tower_layer::Layer<S> for TrackCallsLayer {
    type Service = TrackCalls<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TrackCalls {
            inner,
            tracker: self.tracker.clone(),
            cost: self.cost.clone(),
        }
    }
}

/// See [`TrackCallsLayer`].
#[derive(Clone, Debug)]
pub struct TrackCalls<S> {
    inner: S,
    tracker: CallTracker,
    cost: Arc<ResponseCost>,
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
        let cost = (path == MEASURED_PATH).then(|| self.cost.clone());
        let response = self.inner.call(request);
        async move {
            let response = response.await?;
            let ready = Instant::now();
            Ok(match guard {
                None => response,
                Some(guard) => {
                    let measure = cost.zip(response.extensions().get::<ResponseTail>().copied());
                    response.map(|body| {
                        tonic::body::Body::new(GuardedBody {
                            body,
                            _guard: guard,
                            measure: measure.map(|(cost, tail)| Measure {
                                cost,
                                tail: tail.0,
                                ready,
                                bytes: 0,
                            }),
                        })
                    })
                }
            })
        }
        .boxed()
    }
}

/// A response body that keeps its call counted until it is done.
struct GuardedBody {
    body: tonic::body::Body,
    _guard: CallGuard,
    measure: Option<Measure>,
}

/// A measured response in progress.
struct Measure {
    cost: Arc<ResponseCost>,
    tail: Duration,
    ready: Instant,
    bytes: usize,
}

impl http_body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Some(m) = &mut self.measure {
            match &polled {
                Poll::Ready(Some(Ok(frame))) if frame.is_data() => {
                    m.bytes += frame.data_ref().map_or(0, bytes::Bytes::len);
                }
                // Trailers or the end: the response is out.
                Poll::Ready(_) => {
                    m.cost.observe(m.bytes, m.tail + m.ready.elapsed());
                    self.measure = None;
                }
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn read_responses_feed_their_cost_by_size() {
        use tower_layer::Layer;
        use tower_service::Service;
        let cost = Arc::new(ResponseCost::default());
        let layer = TrackCallsLayer {
            tracker: CallTracker::default(),
            cost: cost.clone(),
        };
        let payload = bytes::Bytes::from(vec![7u8; 64 << 10]);
        let mut svc = layer.layer(tower::service_fn(move |_req: http::Request<()>| {
            let payload = payload.clone();
            async move {
                let mut response =
                    http::Response::new(tonic::body::Body::new(http_body_util::Full::new(payload)));
                response
                    .extensions_mut()
                    .insert(ResponseTail(Duration::from_millis(3)));
                Ok::<_, std::convert::Infallible>(response)
            }
        }));
        let prior = |c: &ResponseCost| {
            c.reserve()
                .for_response(64 << 10, 0, Duration::from_secs(9), Duration::ZERO)
        };
        assert_eq!(prior(&cost), Duration::from_secs(9), "nothing measured yet");
        for path in ["/hourglass.v1.Hourglass/GetNamespace", MEASURED_PATH] {
            let request = http::Request::builder().uri(path).body(()).unwrap();
            let body = svc.call(request).await.unwrap().into_body();
            http_body_util::BodyExt::collect(body).await.unwrap();
        }
        // One ReadEvents response of 64 KiB that took 3 ms to build: the
        // reserve now comes from it, not from the 9 s prior.
        let measured = prior(&cost);
        assert!(measured < Duration::from_millis(10), "{measured:?}");
        assert!(measured > Duration::ZERO);
    }

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
