//! Client helpers: follow continuation tokens to the end of a read.

use std::time::Duration;

use futures::{Stream, TryStreamExt};
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::api::pb;
use crate::api::pb::hourglass_client::HourglassClient;

/// Every response of a logical read, in order: the first call with `request`
/// as given, then one call per continuation token until a response is not
/// partial. Each call carries `per_call` as its gRPC deadline (if any).
pub fn read_pages(
    client: HourglassClient<Channel>,
    request: pb::ReadEventsRequest,
    per_call: Option<Duration>,
) -> impl Stream<Item = Result<pb::ReadEventsResponse, Status>> {
    futures::stream::try_unfold(
        (client, Some(request)),
        move |(mut client, next)| async move {
            let Some(req) = next else {
                return Ok(None);
            };
            let mut call = Request::new(req.clone());
            if let Some(d) = per_call {
                call.set_timeout(d);
            }
            let resp = client.read_events(call).await?.into_inner();
            let next = resp.partial.then(|| pb::ReadEventsRequest {
                continuation_token: resp.continuation_token.clone(),
                ..req
            });
            Ok(Some((resp, (client, next))))
        },
    )
}

/// Every event of a logical read, in order, following tokens to the end.
pub fn read_all(
    client: HourglassClient<Channel>,
    request: pb::ReadEventsRequest,
    per_call: Option<Duration>,
) -> impl Stream<Item = Result<pb::Event, Status>> {
    read_pages(client, request, per_call)
        .map_ok(|page| futures::stream::iter(page.events.into_iter().map(Ok)))
        .try_flatten()
}

/// Convenience: collects [`read_all`].
pub async fn collect_all(
    client: HourglassClient<Channel>,
    request: pb::ReadEventsRequest,
    per_call: Option<Duration>,
) -> Result<Vec<pb::Event>, Status> {
    read_all(client, request, per_call).try_collect().await
}
