//! Client helpers: follow continuation tokens to the end of a read.

use std::time::Duration;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use tonic::codegen::{Body, Bytes, StdError};
use tonic::{Request, Status};

use crate::api::pb;
use crate::api::pb::hourglass_client::HourglassClient;

/// Calls repeated when the server could not return a single row in the
/// budget (DEADLINE_EXCEEDED, reason BUDGET_TOO_SMALL) before giving up.
pub const NO_PROGRESS_RETRIES: u32 = 5;
/// Pause before the first repeat; it grows linearly with each attempt.
pub const NO_PROGRESS_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// Whether `status` says not one row fit in the call's budget: the same
/// call may well succeed when storage is warmer or less loaded.
pub fn is_no_progress(status: &Status) -> bool {
    use tonic_types::StatusExt;
    status.code() == tonic::Code::DeadlineExceeded
        && status
            .get_details_error_info()
            .is_some_and(|i| i.reason == crate::error::REASON_BUDGET_TOO_SMALL)
}

/// What the helpers need of a client's transport: a plain
/// `tonic::transport::Channel`, or one wrapped in an interceptor (for
/// example one that adds `authorization: Bearer <token>`).
pub trait Transport:
    tonic::client::GrpcService<
        tonic::body::Body,
        Error: Into<StdError>,
        ResponseBody: Body<Data = Bytes, Error: Into<StdError> + Send> + Send + 'static,
        Future: Send,
    > + Send
    + 'static
{
}

impl<T> Transport for T where
    T: tonic::client::GrpcService<
            tonic::body::Body,
            Error: Into<StdError>,
            ResponseBody: Body<Data = Bytes, Error: Into<StdError> + Send> + Send + 'static,
            Future: Send,
        > + Send
        + 'static
{
}

/// Every response of a logical read, in order: the first call with `request`
/// as given, then one call per continuation token until a response is not
/// partial. Each call carries `per_call` as its gRPC deadline (if any); a
/// call that made no progress at all is repeated up to
/// [`NO_PROGRESS_RETRIES`] times.
pub fn read_pages<T: Transport>(
    client: HourglassClient<T>,
    request: pb::ReadEventsRequest,
    per_call: Option<Duration>,
) -> BoxStream<'static, Result<pb::ReadEventsResponse, Status>> {
    futures::stream::try_unfold(
        (client, Some(request)),
        move |(mut client, next)| async move {
            let Some(req) = next else {
                return Ok(None);
            };
            let mut attempt = 0;
            let resp = loop {
                let mut call = Request::new(req.clone());
                if let Some(d) = per_call {
                    call.set_timeout(d);
                }
                match client.read_events(call).await {
                    Ok(r) => break r.into_inner(),
                    Err(s) if is_no_progress(&s) && attempt < NO_PROGRESS_RETRIES => {
                        attempt += 1;
                        tokio::time::sleep(NO_PROGRESS_BACKOFF * attempt).await;
                    }
                    Err(s) => return Err(s),
                }
            };
            let next = resp.partial.then(|| pb::ReadEventsRequest {
                continuation_token: resp.continuation_token.clone(),
                ..req
            });
            Ok(Some((resp, (client, next))))
        },
    )
    .boxed()
}

/// Every event of a logical read, in order, following tokens to the end.
pub fn read_all<T: Transport>(
    client: HourglassClient<T>,
    request: pb::ReadEventsRequest,
    per_call: Option<Duration>,
) -> BoxStream<'static, Result<pb::Event, Status>> {
    read_pages(client, request, per_call)
        .map_ok(|page| futures::stream::iter(page.events.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
}

/// Convenience: collects [`read_all`].
pub async fn collect_all<T: Transport>(
    client: HourglassClient<T>,
    request: pb::ReadEventsRequest,
    per_call: Option<Duration>,
) -> Result<Vec<pb::Event>, Status> {
    read_all(client, request, per_call).try_collect().await
}
