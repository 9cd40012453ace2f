//! Client helpers: follow continuation tokens to the end of a read.

use std::time::Duration;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use tonic::codegen::{Body, Bytes, StdError};
use tonic::{Request, Status};

use crate::admission::{Class, CLASS_HEADER};
use crate::api::pb;
use crate::api::pb::hourglass_client::HourglassClient;

/// Calls repeated when the server could not return a single row in the
/// budget (DEADLINE_EXCEEDED, reason BUDGET_TOO_SMALL or STORAGE_LATE)
/// before giving up.
pub const NO_PROGRESS_RETRIES: u32 = 5;
/// Pause before the first repeat; it grows linearly with each attempt.
pub const NO_PROGRESS_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);
/// Calls repeated after the server refused them for load
/// (RESOURCE_EXHAUSTED), each after the wait its RetryInfo suggests,
/// before giving up.
pub const OVERLOAD_RETRIES: u32 = 5;
/// Longest wait before repeating a refused call, whatever its RetryInfo.
pub const MAX_OVERLOAD_WAIT: Duration = Duration::from_secs(1);

/// The wait a refusal for load suggests, if `status` is one.
fn overload_wait(status: &Status) -> Option<Duration> {
    use tonic_types::StatusExt;
    if status.code() != tonic::Code::ResourceExhausted {
        return None;
    }
    status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .map(|d| d.min(MAX_OVERLOAD_WAIT))
}

/// Whether `status` says not one row came in the call's budget (reason
/// BUDGET_TOO_SMALL or STORAGE_LATE): the same call may well succeed when
/// storage is warmer, less loaded or past a stall.
pub fn is_no_progress(status: &Status) -> bool {
    use crate::error::{REASON_BUDGET_TOO_SMALL, REASON_STORAGE_LATE};
    use tonic_types::StatusExt;
    status.code() == tonic::Code::DeadlineExceeded
        && status
            .get_details_error_info()
            .is_some_and(|i| i.reason == REASON_BUDGET_TOO_SMALL || i.reason == REASON_STORAGE_LATE)
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

/// How [`follow`] makes its calls.
#[derive(Clone, Copy, Debug)]
pub struct FollowOptions {
    /// The gRPC deadline of each call, if any.
    pub per_call: Option<Duration>,
    /// Repeats of a call that made no progress at all (DEADLINE_EXCEEDED,
    /// BUDGET_TOO_SMALL or STORAGE_LATE) before its error ends the stream;
    /// 0 passes the first such error on.
    pub no_progress_retries: u32,
    /// Pause before the first repeat; it grows linearly with each one.
    pub no_progress_backoff: Duration,
    /// Repeats of a call the server refused for load (RESOURCE_EXHAUSTED
    /// with a RetryInfo), each after the suggested wait, before its error
    /// ends the stream; 0 passes the first refusal on.
    pub overload_retries: u32,
    /// Priority class sent with each call (`x-hourglass-class`); None
    /// sends none (the server takes interactive). A follower reading a
    /// whole series in the background sends [`Class::Batch`], so it yields
    /// to interactive reads when the server is busy.
    pub class: Option<Class>,
}

impl Default for FollowOptions {
    fn default() -> Self {
        Self {
            per_call: None,
            no_progress_retries: NO_PROGRESS_RETRIES,
            no_progress_backoff: NO_PROGRESS_BACKOFF,
            overload_retries: OVERLOAD_RETRIES,
            class: None,
        }
    }
}

/// Every response of a logical read, in order: the first call with `request`
/// as given, then one call per continuation token until a response is not
/// partial. The stream ends after the first error it yields. This is the
/// one token-following loop: the load tool, the soak and the tests use it.
pub fn follow<T: Transport>(
    client: HourglassClient<T>,
    request: pb::ReadEventsRequest,
    options: FollowOptions,
) -> BoxStream<'static, Result<pb::ReadEventsResponse, Status>> {
    futures::stream::try_unfold(
        (client, Some(request)),
        move |(mut client, next)| async move {
            let Some(req) = next else {
                return Ok(None);
            };
            let (mut attempt, mut refused) = (0, 0);
            let resp = loop {
                let mut call = Request::new(req.clone());
                if let Some(d) = options.per_call {
                    call.set_timeout(d);
                }
                if let Some(class) = options.class {
                    call.metadata_mut().insert(
                        CLASS_HEADER,
                        tonic::metadata::MetadataValue::from_static(class.as_str()),
                    );
                }
                match client.read_events(call).await {
                    Ok(r) => break r.into_inner(),
                    Err(s) if is_no_progress(&s) && attempt < options.no_progress_retries => {
                        attempt += 1;
                        tokio::time::sleep(options.no_progress_backoff * attempt).await;
                    }
                    Err(s) if refused < options.overload_retries && overload_wait(&s).is_some() => {
                        refused += 1;
                        tokio::time::sleep(overload_wait(&s).unwrap_or_default()).await;
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

/// [`follow`] with each call's gRPC deadline `per_call` and the default
/// no-progress repeats ([`NO_PROGRESS_RETRIES`]).
pub fn read_pages<T: Transport>(
    client: HourglassClient<T>,
    request: pb::ReadEventsRequest,
    per_call: Option<Duration>,
) -> BoxStream<'static, Result<pb::ReadEventsResponse, Status>> {
    follow(
        client,
        request,
        FollowOptions {
            per_call,
            ..FollowOptions::default()
        },
    )
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
