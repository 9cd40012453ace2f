//! Where a call's budget starts and what may end it: the outermost layer of
//! our stack stamps each Hourglass call with the instant it reached this
//! server ([`Arrival`]), before its message is decoded, and answers the
//! call's response headers at once.
//!
//! Invariant: only our own code ends an Hourglass call. Tonic's server
//! wraps every service in its `grpc-timeout` layer, which answers
//! `CANCELLED "Timeout expired"` with no details when the handler has not
//! returned its response head by the client's deadline. That layer times
//! only the response head, so this layer gives it one (status 200,
//! `application/grpc`) just before that deadline ([`EARLY_HEAD_MARGIN`])
//! if the handler has not answered by then, and sends the handler's answer
//! in the body: its messages, then its status as trailers (a handler that
//! fails before any message, a "trailers-only" response, has its status
//! moved to the trailers). The client's own deadline still applies on the
//! client. A call with a `grpc-timeout` our parser does not take gets that
//! head at once.
//!
//! A handler that answers before then is passed through as it answered: a
//! refusal (overload, draining, a bad argument) stays a trailers-only
//! response, which gRPC clients' retry policies may retry; a response
//! whose head went first commits the call (gRPC A6), so none would.
//!
//! A ReadEvents body's sending is timed here, from the handler's answer to
//! the transport taking its last frame, for the response reserve
//! ([`crate::engine::reserve`]).

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures::future::BoxFuture;
use futures::FutureExt;
use http_body::Frame;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::codegen::http::{self, HeaderMap, HeaderValue};

use crate::engine::budget::parse_grpc_timeout;
use crate::engine::reserve::{Stage, RESPONSE_COST};

/// A handler that has not answered this long before the client's
/// `grpc-timeout` runs out has the response head sent for it, before
/// tonic's timeout (which starts just before ours and polls the call
/// first) would end the call.
pub const EARLY_HEAD_MARGIN: std::time::Duration = std::time::Duration::from_millis(1);

/// Path prefix of the calls stamped and answered early.
const OWN_PREFIX: &str = "/hourglass.v1.Hourglass/";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// When a call reached this server; in the request's extensions.
#[derive(Clone, Copy, Debug)]
pub struct Arrival(pub Instant);

/// The layer; outermost of ours, so nearest the transport.
#[derive(Clone, Copy, Debug, Default)]
pub struct ArrivalLayer;

impl<S> tower_layer::Layer<S> for ArrivalLayer {
    type Service = StampArrival<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StampArrival { inner }
    }
}

/// See [`ArrivalLayer`].
#[derive(Clone, Debug)]
pub struct StampArrival<S> {
    inner: S,
}

impl<S, B> tower_service::Service<http::Request<B>> for StampArrival<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if !request.uri().path().starts_with(OWN_PREFIX) {
            return self
                .inner
                .call(request)
                .map(|r| r.map_err(Into::into))
                .boxed();
        }
        request.extensions_mut().insert(Arrival(Instant::now()));
        // A unary read's sending is timed for the response reserve.
        let timed = request.uri().path() == READ_EVENTS;
        // When tonic's timeout would end the call: the client's
        // grpc-timeout; at once where ours cannot read it (tonic may).
        let cut_off = request.headers().get("grpc-timeout").map(|v| {
            v.to_str()
                .ok()
                .and_then(parse_grpc_timeout)
                .unwrap_or_default()
        });
        let mut answer = self
            .inner
            .call(request)
            .map(|r| r.map_err(Into::into))
            .boxed();
        let sending = move || {
            timed.then_some(Sending {
                since: std::time::Instant::now(),
                bytes: 0,
            })
        };
        async move {
            let answered = match cut_off {
                None => Some((&mut answer).await),
                Some(after) => {
                    let early = after.saturating_sub(EARLY_HEAD_MARGIN);
                    tokio::time::timeout(early, &mut answer).await.ok()
                }
            };
            Ok(match answered {
                Some(Ok(response)) if timed => {
                    let (head, body) = response.into_parts();
                    let body = Body::new(Deferred {
                        state: State::Relaying(body),
                        send: sending(),
                    });
                    http::Response::from_parts(head, body)
                }
                Some(Ok(response)) => response,
                Some(Err(e)) => failed_below(&e).into_http(),
                None => {
                    let mut head = http::Response::new(Body::new(Deferred {
                        state: State::Waiting(answer),
                        send: sending(),
                    }));
                    head.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static("application/grpc"),
                    );
                    head
                }
            })
        }
        .boxed()
    }
}

/// The status of a call whose service failed below the handler (logged).
fn failed_below(e: &BoxError) -> tonic::Status {
    tracing::warn!(error = %e, "call failed below the service");
    tonic::Status::internal("internal error")
}

/// Path of the unary read, whose sending feeds [`RESPONSE_COST`].
const READ_EVENTS: &str = "/hourglass.v1.Hourglass/ReadEvents";

/// The body of a call answered early: waits for the handler's response,
/// then relays its body, or its status as trailers.
struct Deferred {
    state: State,
    /// Timing of the body's sending, for a unary read.
    send: Option<Sending>,
}

enum State {
    Waiting(BoxFuture<'static, Result<http::Response<Body>, BoxError>>),
    Relaying(Body),
    Done,
}

/// From the handler's answer to the transport taking the last frame.
struct Sending {
    since: std::time::Instant,
    bytes: usize,
}

/// The gRPC status headers a trailers-only response carries in its head.
fn status_headers(head: &HeaderMap) -> Option<HeaderMap> {
    head.contains_key("grpc-status").then(|| {
        head.iter()
            .filter(|(name, _)| name.as_str().starts_with("grpc-"))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    })
}

impl http_body::Body for Deferred {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Waiting(answer) => {
                    let trailers = match ready!(answer.poll_unpin(cx)) {
                        Ok(response) => {
                            let (head, body) = response.into_parts();
                            match status_headers(&head.headers) {
                                None => {
                                    if let Some(send) = &mut this.send {
                                        send.since = std::time::Instant::now();
                                    }
                                    this.state = State::Relaying(body);
                                    continue;
                                }
                                Some(trailers) => trailers,
                            }
                        }
                        Err(e) => {
                            let mut trailers = HeaderMap::new();
                            // A fixed message always encodes.
                            let _ = failed_below(&e).add_header(&mut trailers);
                            trailers
                        }
                    };
                    this.state = State::Done;
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                State::Relaying(body) => {
                    let frame = ready!(Pin::new(body).poll_frame(cx));
                    match (&frame, &mut this.send) {
                        (Some(Ok(f)), Some(send)) if f.is_data() => {
                            send.bytes += f.data_ref().map_or(0, bytes::Bytes::len);
                        }
                        (Some(Ok(_)) | None, Some(send)) => {
                            // Trailers or the end: every message went.
                            RESPONSE_COST.observe(Stage::Send, send.bytes, send.since.elapsed());
                            this.send = None;
                        }
                        _ => {}
                    }
                    return Poll::Ready(frame);
                }
                State::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Waiting(_) => false,
            State::Relaying(body) => body.is_end_stream(),
            State::Done => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use tower_layer::Layer as _;
    use tower_service::Service as _;

    /// A handler that answers after `delay` with `response`.
    fn handler(
        delay: std::time::Duration,
        response: fn() -> http::Response<Body>,
    ) -> impl tower_service::Service<
        http::Request<()>,
        Response = http::Response<Body>,
        Error = std::convert::Infallible,
        Future = BoxFuture<'static, Result<http::Response<Body>, std::convert::Infallible>>,
    > + Clone {
        tower::service_fn(move |r: http::Request<()>| {
            assert!(r.extensions().get::<Arrival>().is_some(), "stamped");
            async move {
                tokio::time::sleep(delay).await;
                Ok(response())
            }
            .boxed()
        })
    }

    fn call(path: &str) -> http::Request<()> {
        http::Request::builder()
            .uri(path)
            .body(())
            .expect("request")
    }

    /// A call of `path` with a `grpc-timeout` of `timeout`.
    fn call_within(path: &str, timeout: &str) -> http::Request<()> {
        http::Request::builder()
            .uri(path)
            .header("grpc-timeout", timeout)
            .body(())
            .expect("request")
    }

    fn failing() -> http::Response<Body> {
        tonic::Status::resource_exhausted("full").into_http()
    }

    #[tokio::test(start_paused = true)]
    async fn the_head_goes_before_the_deadline_and_a_late_failure_becomes_trailers() {
        let mut svc = ArrivalLayer.layer(handler(std::time::Duration::from_secs(5), failing));
        let before = Instant::now();
        let head = svc
            .call(call_within("/hourglass.v1.Hourglass/ReadEvents", "100m"))
            .await
            .expect("head");
        assert_eq!(
            before.elapsed(),
            std::time::Duration::from_millis(99),
            "the head goes just before the deadline"
        );
        assert_eq!(head.headers()["content-type"], "application/grpc");
        assert!(!head.headers().contains_key("grpc-status"));
        let collected = head.into_body().collect().await.expect("body");
        assert!(before.elapsed() >= std::time::Duration::from_secs(5));
        let trailers = collected.trailers().expect("trailers").clone();
        let status = tonic::Status::from_header_map(&trailers).expect("a status");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.message(), "full");
    }

    /// A refusal before the deadline, or with no deadline at all, goes as
    /// the handler answered it: trailers-only, retryable by gRPC clients'
    /// retry policies.
    #[tokio::test(start_paused = true)]
    async fn an_answer_in_time_passes_through_trailers_only() {
        let delay = std::time::Duration::from_millis(5);
        for request in [
            call_within("/hourglass.v1.Hourglass/ReadEvents", "1S"),
            call_within("/hourglass.v1.Hourglass/WriteEvents", "6m"),
            call("/hourglass.v1.Hourglass/StreamEvents"),
        ] {
            let path = request.uri().path().to_owned();
            let mut svc = ArrivalLayer.layer(handler(delay, failing));
            let before = Instant::now();
            let head = svc.call(request).await.expect("head");
            assert_eq!(before.elapsed(), delay, "{path}");
            let status = tonic::Status::from_header_map(head.headers()).expect("trailers-only");
            assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{path}");
            assert!(http_body::Body::is_end_stream(head.body()), "{path}");
        }
    }

    /// A `grpc-timeout` this layer cannot read (tonic may: it takes a
    /// sign) gets the head at once.
    #[tokio::test(start_paused = true)]
    async fn an_unread_deadline_gets_the_head_at_once() {
        let mut svc = ArrivalLayer.layer(handler(std::time::Duration::from_secs(1), failing));
        let before = Instant::now();
        let head = svc
            .call(call_within("/hourglass.v1.Hourglass/ReadEvents", "+100m"))
            .await
            .expect("head");
        assert_eq!(before.elapsed(), std::time::Duration::ZERO);
        assert!(!head.headers().contains_key("grpc-status"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_body_is_relayed_whole() {
        let answering = || {
            let mut r = http::Response::new(Body::new(
                http_body_util::Full::new(bytes::Bytes::from_static(b"\0\0\0\0\x01x"))
                    .map_err(|never| -> tonic::Status { match never {} }),
            ));
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/grpc"));
            r
        };
        let mut svc = ArrivalLayer.layer(handler(std::time::Duration::from_millis(1), answering));
        let head = svc
            .call(call("/hourglass.v1.Hourglass/ReadEvents"))
            .await
            .expect("head");
        let bytes = head.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&bytes[..], b"\0\0\0\0\x01x");
    }
}
