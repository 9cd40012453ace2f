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
/// Pause before the first repeat of a call whose error suggests no wait
/// (BUDGET_TOO_SMALL, or the client's own deadline); it grows linearly
/// with each attempt. A STORAGE_LATE error's RetryInfo is waited out
/// instead.
pub const NO_PROGRESS_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);
/// Calls repeated after the server refused them with a RetryInfo (for load,
/// RESOURCE_EXHAUSTED; or UNAVAILABLE: a draining replica, an open
/// circuit), each after the wait its RetryInfo suggests, before giving up.
pub const OVERLOAD_RETRIES: u32 = 5;
/// Longest wait before repeating a refused call, whatever its RetryInfo.
pub const MAX_OVERLOAD_WAIT: Duration = Duration::from_secs(1);

/// The wait a refusal suggests, if `status` is one a retry helps
/// (RESOURCE_EXHAUSTED or UNAVAILABLE with a RetryInfo).
fn overload_wait(status: &Status) -> Option<Duration> {
    if !matches!(
        status.code(),
        tonic::Code::ResourceExhausted | tonic::Code::Unavailable
    ) {
        return None;
    }
    suggested_wait(status)
}

/// The wait `status`'s RetryInfo suggests, at most [`MAX_OVERLOAD_WAIT`].
fn suggested_wait(status: &Status) -> Option<Duration> {
    use tonic_types::StatusExt;
    status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .map(|d| d.min(MAX_OVERLOAD_WAIT))
}

/// How long to wait before the `attempt`th repeat (from 1) of a call that
/// made no progress: what its RetryInfo suggests (STORAGE_LATE: a wait
/// drawn to spread the retries of calls the same stall failed), else
/// `backoff` times `attempt`.
fn no_progress_wait(status: &Status, attempt: u32, backoff: Duration) -> Duration {
    suggested_wait(status).unwrap_or(backoff * attempt)
}

/// Whether `status` says the call ended without a row where the same call
/// may well succeed when storage is warmer, less loaded or past a stall:
/// the server found not one row in the call's budget (DEADLINE_EXCEEDED,
/// reason BUDGET_TOO_SMALL or STORAGE_LATE, with a budget above zero), or
/// the answer came after the client's own deadline (tonic's CANCELLED
/// "Timeout expired", or DEADLINE_EXCEEDED with no server reason: the
/// response was cut short, the token still stands).
pub fn is_no_progress(status: &Status) -> bool {
    use crate::error::{REASON_BUDGET_TOO_SMALL, REASON_STORAGE_LATE};
    use tonic_types::StatusExt;
    match status.code() {
        tonic::Code::DeadlineExceeded => match status.get_details_error_info() {
            // A budget of zero (a deadline within the server's margin)
            // fails the same way every time.
            Some(i) => {
                (i.reason == REASON_BUDGET_TOO_SMALL || i.reason == REASON_STORAGE_LATE)
                    && i.metadata.get("budget_micros").is_none_or(|b| b != "0")
            }
            None => true,
        },
        tonic::Code::Cancelled => status.message() == "Timeout expired",
        _ => false,
    }
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
    /// Repeats of a call that made no progress at all (see
    /// [`is_no_progress`]) before its error ends the stream; 0 passes the
    /// first such error on.
    pub no_progress_retries: u32,
    /// Pause before the first repeat when the error suggests no wait; it
    /// grows linearly with each one. A RetryInfo's wait (STORAGE_LATE) is
    /// taken instead when there is one.
    pub no_progress_backoff: Duration,
    /// Repeats of a call the server refused with a RetryInfo
    /// (RESOURCE_EXHAUSTED or UNAVAILABLE), each after the suggested wait
    /// (at most [`MAX_OVERLOAD_WAIT`]), before its error ends the stream; 0
    /// passes the first refusal on.
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
                        let wait = no_progress_wait(&s, attempt, options.no_progress_backoff);
                        tokio::time::sleep(wait).await;
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

/// Adds `authorization: Bearer <token>` to every call (nothing for
/// [`BearerToken::none`]), for a server with `--auth-file`:
/// `HourglassClient::with_interceptor(channel, BearerToken::new(token)?)`.
/// The header is marked sensitive, and `Debug` does not show the token.
#[derive(Clone, Default)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl BearerToken {
    /// Sends `token` (surrounding whitespace trimmed, as read from a file).
    pub fn new(token: &str) -> Result<Self, tonic::metadata::errors::InvalidMetadataValue> {
        let mut value: tonic::metadata::MetadataValue<_> =
            format!("Bearer {}", token.trim()).parse()?;
        value.set_sensitive(true);
        Ok(Self(Some(value)))
    }

    /// Sends no credentials.
    pub fn none() -> Self {
        Self(None)
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = if self.0.is_some() { "set" } else { "none" };
        f.debug_tuple("BearerToken").field(&set).finish()
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.0 {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

/// Convenience: collects [`read_all`].
pub async fn collect_all<T: Transport>(
    client: HourglassClient<T>,
    request: pb::ReadEventsRequest,
    per_call: Option<Duration>,
) -> Result<Vec<pb::Event>, Status> {
    read_all(client, request, per_call).try_collect().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;
    use tonic_types::{ErrorDetails, StatusExt};

    #[test]
    fn a_bearer_token_is_sent_sensitive_and_not_shown() {
        use tonic::service::Interceptor;
        let mut token = BearerToken::new(" s3cret\n").unwrap();
        assert_eq!(format!("{token:?}"), "BearerToken(\"set\")");
        let req = token.call(Request::new(())).unwrap();
        let header = req.metadata().get("authorization").unwrap();
        assert_eq!(header.to_str().unwrap(), "Bearer s3cret");
        assert!(header.is_sensitive());
        let req = BearerToken::none().call(Request::new(())).unwrap();
        assert!(req.metadata().get("authorization").is_none());
        assert!(BearerToken::new("bad\u{7f}token").is_err());
    }

    fn no_row(reason: &str, budget_micros: &str) -> Status {
        let details = ErrorDetails::with_error_info(
            reason,
            "hourglass.v1",
            [("budget_micros".to_string(), budget_micros.to_string())],
        );
        Status::with_error_details(Code::DeadlineExceeded, "no row", details)
    }

    #[test]
    fn a_call_without_a_row_is_repeated_unless_its_budget_was_zero() {
        assert!(is_no_progress(&no_row("BUDGET_TOO_SMALL", "10000")));
        assert!(is_no_progress(&no_row("STORAGE_LATE", "10000")));
        assert!(!is_no_progress(&no_row("BUDGET_TOO_SMALL", "0")));
        assert!(!is_no_progress(&no_row("SOMETHING_ELSE", "10000")));
    }

    /// The client's own deadline cut the answer off: tonic says CANCELLED
    /// "Timeout expired", other stacks DEADLINE_EXCEEDED without details.
    #[test]
    fn an_answer_cut_off_by_the_clients_deadline_is_repeated() {
        assert!(is_no_progress(&Status::cancelled("Timeout expired")));
        assert!(is_no_progress(&Status::deadline_exceeded("deadline")));
        assert!(!is_no_progress(&Status::cancelled("the caller gave up")));
    }

    /// STORAGE_LATE's RetryInfo is waited out (the server spreads the
    /// retries of calls one stall failed); an error without one backs off
    /// by the client's own steps.
    #[test]
    fn a_call_without_a_row_waits_what_its_retry_info_suggests() {
        let backoff = Duration::from_millis(100);
        let mut details = ErrorDetails::with_error_info(
            "STORAGE_LATE",
            "hourglass.v1",
            [("budget_micros".to_string(), "5000".to_string())],
        );
        details.set_retry_info(Some(Duration::from_millis(37)));
        let late = Status::with_error_details(Code::DeadlineExceeded, "no row", details);
        assert!(is_no_progress(&late));
        assert_eq!(
            no_progress_wait(&late, 3, backoff),
            Duration::from_millis(37)
        );
        let small = no_row("BUDGET_TOO_SMALL", "5000");
        assert_eq!(
            no_progress_wait(&small, 3, backoff),
            Duration::from_millis(300)
        );
        assert_eq!(
            no_progress_wait(&Status::cancelled("Timeout expired"), 1, backoff),
            backoff
        );
    }

    #[test]
    fn refusals_with_a_retry_info_are_waited_out_within_a_bound() {
        let refused = |code, secs| {
            Status::with_error_details(
                code,
                "refused",
                ErrorDetails::with_retry_info(Some(Duration::from_secs(secs))),
            )
        };
        let wait = |s: &Status| overload_wait(s);
        assert_eq!(
            wait(&refused(Code::ResourceExhausted, 0)),
            Some(Duration::ZERO)
        );
        assert_eq!(
            wait(&refused(Code::Unavailable, 9)),
            Some(MAX_OVERLOAD_WAIT)
        );
        assert_eq!(wait(&Status::unavailable("no details")), None);
        assert_eq!(wait(&refused(Code::InvalidArgument, 1)), None);
    }
}
