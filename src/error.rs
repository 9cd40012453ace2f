//! The service's error enum and its one, exhaustive mapping to gRPC status
//! with rich details (ErrorInfo always; BadRequest and RetryInfo where a
//! client can act on them).

use std::collections::HashMap;
use std::time::Duration;

use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

use crate::auth::AuthError;
use crate::bulkhead::Full;
use crate::engine::budget::BudgetSource;
use crate::engine::{ReadError, Waited};
use crate::model::Namespace;
use crate::storage::StorageError;
use crate::token::TokenError;

/// ErrorInfo domain of every Hourglass error.
pub const ERROR_DOMAIN: &str = "hourglass.v1";
/// ErrorInfo reason of DEADLINE_EXCEEDED when not one row fit in the budget.
pub const REASON_BUDGET_TOO_SMALL: &str = "BUDGET_TOO_SMALL";
/// ErrorInfo reason of DEADLINE_EXCEEDED when not one row came in the
/// budget because storage answered later than it usually does.
pub const REASON_STORAGE_LATE: &str = "STORAGE_LATE";
/// Suggested wait before retrying after storage trouble.
pub const STORAGE_RETRY_DELAY: Duration = Duration::from_millis(200);
/// Mean suggested wait before retrying a read refused for load; each
/// refusal suggests a wait drawn uniformly from half to one and a half
/// times it, so clients refused together do not retry together.
pub const OVERLOAD_RETRY_DELAY: Duration = Duration::from_millis(50);

/// A RetryInfo delay for a read refused for load (see
/// [`OVERLOAD_RETRY_DELAY`]).
fn overload_pushback() -> Duration {
    OVERLOAD_RETRY_DELAY.mul_f64(rand::random_range(0.5..1.5))
}

/// Every ErrorInfo reason [`ServiceError::reason`] gives, so metrics by
/// reason exist (at zero) from the start.
pub const REASONS: &[&str] = &[
    "INVALID_FIELD",
    "TOKEN_MALFORMED",
    "TOKEN_VERSION",
    "TOKEN_UNKNOWN_KEY",
    "TOKEN_BAD_SIGNATURE",
    "TOKEN_EXPIRED",
    "TOKEN_QUERY_MISMATCH",
    "NAMESPACE_NOT_FOUND",
    "NAMESPACE_CONFLICT",
    REASON_BUDGET_TOO_SMALL,
    REASON_STORAGE_LATE,
    "STORAGE_CIRCUIT_OPEN",
    "STORAGE_UNAVAILABLE",
    "NAMESPACE_INVALID",
    "STORAGE_FAILURE",
    "SERVER_DRAINING",
    "MISSING_CREDENTIALS",
    "UNKNOWN_CREDENTIALS",
    "PERMISSION_DENIED",
    "TOO_MANY_SCANS",
    "TOO_MANY_NAMESPACE_SCANS",
    "CONCURRENCY_LIMIT",
    "BATCH_SHARE",
    "NAMESPACE_FAIR_SHARE",
    "BUDGET_SPENT_WAITING",
    REASON_REQUEST_BUFFER_FULL,
    REASON_TOO_MANY_MESSAGES,
];

/// The reason of a request refused because the requests being received
/// fill the server's request buffer (see `server::calls`).
pub const REASON_REQUEST_BUFFER_FULL: &str = "REQUEST_BUFFER_FULL";

/// The reason of a request refused because its body holds more than the
/// one message its method takes (see `server::calls`).
pub const REASON_TOO_MANY_MESSAGES: &str = "TOO_MANY_MESSAGES";

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A request field is invalid; `field` is its path (e.g. `events[3].event_id`).
    #[error("invalid {field}: {description}")]
    InvalidArgument { field: String, description: String },
    /// The continuation token was refused.
    #[error("invalid continuation_token: {0}")]
    Token(#[from] TokenError),
    /// The namespace does not exist.
    #[error("namespace {0:?} not found")]
    NamespaceNotFound(String),
    /// A namespace of that name exists with other settings.
    #[error("namespace {:?} already exists with bucket_width_micros={}, shards={}, retention_seconds={}", .0.name, .0.bucket_width_micros, .0.shards, .0.retention_seconds)]
    NamespaceConflict(Namespace),
    /// Nothing fit in the read's budget: it was too small for what storage
    /// usually takes, or storage was later than that (`waited_on` late).
    /// `waited_on` is the request in flight judged against the latency
    /// model, if one was.
    #[error("{}", no_progress_message(*.budget, *.set_by, .waited_on.as_ref()))]
    NoProgress {
        budget: Duration,
        set_by: BudgetSource,
        waited_on: Option<Waited>,
    },
    /// Storage did not answer a write, a namespace creation or a namespace
    /// lookup within its budget (the client's deadline less the margin).
    #[error("{}", late_message(*.work, *.budget))]
    Late { work: LateWork, budget: Duration },
    /// Storage is unreachable or overloaded for now.
    #[error(transparent)]
    Unavailable(StorageError),
    /// Storage failed in a way retrying will not fix.
    #[error(transparent)]
    Storage(StorageError),
    /// The server is draining for shutdown; another replica can serve.
    #[error("server is shutting down; retry on another replica")]
    Draining,
    /// Authentication failed or the client lacks the permission.
    #[error("{0}")]
    Auth(#[from] AuthError),
    /// Too many concurrent scans (the bulkhead); refused without queueing.
    #[error("read refused for load: {0}; retry shortly or on another replica")]
    Overloaded(Full),
}

impl ServiceError {
    /// Shorthand for [`ServiceError::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            description: description.into(),
        }
    }

    /// Whether the error is the caller's or routine (bad input, no
    /// permission, no row within the budget, load shed) rather than a fault
    /// of the server or storage. Such errors are routine under load (a call
    /// that found storage late too: under load that is most of them) and
    /// are logged at DEBUG, not INFO.
    pub fn is_caller_error(&self) -> bool {
        match self {
            Self::InvalidArgument { .. }
            | Self::Token(_)
            | Self::NamespaceNotFound(_)
            | Self::NamespaceConflict(_)
            | Self::NoProgress { .. }
            | Self::Late { .. }
            | Self::Auth(_)
            | Self::Overloaded(_) => true,
            Self::Unavailable(_) | Self::Storage(_) | Self::Draining => false,
        }
    }

    /// Stable machine-readable reason for ErrorInfo.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidArgument { .. } => "INVALID_FIELD",
            Self::Token(TokenError::Malformed(_)) => "TOKEN_MALFORMED",
            Self::Token(TokenError::UnsupportedVersion(_)) => "TOKEN_VERSION",
            Self::Token(TokenError::UnknownKey(_)) => "TOKEN_UNKNOWN_KEY",
            Self::Token(TokenError::BadSignature) => "TOKEN_BAD_SIGNATURE",
            Self::Token(TokenError::Expired) => "TOKEN_EXPIRED",
            Self::Token(TokenError::QueryMismatch) => "TOKEN_QUERY_MISMATCH",
            Self::NamespaceNotFound(_) => "NAMESPACE_NOT_FOUND",
            Self::NamespaceConflict(_) => "NAMESPACE_CONFLICT",
            Self::NoProgress {
                waited_on, budget, ..
            } if waited_on.is_some_and(|w| storage_late(&w, *budget)) => REASON_STORAGE_LATE,
            Self::NoProgress { .. } => REASON_BUDGET_TOO_SMALL,
            Self::Late { .. } => REASON_STORAGE_LATE,
            Self::Unavailable(StorageError::CircuitOpen { .. }) => "STORAGE_CIRCUIT_OPEN",
            Self::Unavailable(_) => "STORAGE_UNAVAILABLE",
            Self::Storage(StorageError::InvalidNamespace { .. }) => "NAMESPACE_INVALID",
            Self::Storage(_) => "STORAGE_FAILURE",
            Self::Draining => "SERVER_DRAINING",
            Self::Auth(AuthError::MissingToken) => "MISSING_CREDENTIALS",
            Self::Auth(AuthError::UnknownToken) => "UNKNOWN_CREDENTIALS",
            Self::Auth(AuthError::Denied { .. }) => "PERMISSION_DENIED",
            Self::Overloaded(Full::Server { .. }) => "TOO_MANY_SCANS",
            Self::Overloaded(Full::Namespace { .. }) => "TOO_MANY_NAMESPACE_SCANS",
            Self::Overloaded(Full::Adaptive { .. }) => "CONCURRENCY_LIMIT",
            Self::Overloaded(Full::Batch { .. }) => "BATCH_SHARE",
            Self::Overloaded(Full::FairShare { .. }) => "NAMESPACE_FAIR_SHARE",
            Self::Overloaded(Full::BudgetSpent { .. }) => "BUDGET_SPENT_WAITING",
        }
    }
}

/// What storage did not answer in time (see [`ServiceError::Late`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LateWork {
    /// A write batch, which goes on (see `server::service::carry_on`).
    Write,
    /// A namespace creation, which goes on.
    Create,
    /// A namespace lookup.
    Lookup,
}

fn late_message(work: LateWork, budget: Duration) -> String {
    let (what, after) = match work {
        LateWork::Write => (
            "the write was not acknowledged",
            "it goes on, and its events are stored unless storage fails (some may be readable before others); retrying the same batch is safe",
        ),
        LateWork::Create => (
            "the namespace creation was not acknowledged",
            "it goes on; retrying the same request is safe",
        ),
        LateWork::Lookup => ("the namespace lookup was not answered", "retry"),
    };
    format!("{what} by storage within its {budget:?} budget (the client's deadline less the margin): {after}")
}

/// What a call that read nothing says: that storage was late and a retry
/// should do, or that its budget was too small for what storage takes.
/// Whether a read that fit no row in `budget` failed because storage was
/// late: the request it waited on most was later than the latency model
/// expects of a slow one, and a usual one fits the budget (else the budget
/// was too small for what storage usually takes, late or not).
fn storage_late(w: &Waited, budget: Duration) -> bool {
    w.late() && w.usual < budget
}

fn no_progress_message(
    budget: Duration,
    set_by: BudgetSource,
    waited_on: Option<&Waited>,
) -> String {
    let head = format!("no row could be read within the {budget:?} budget (set by {set_by:?})");
    match waited_on {
        None => format!("{head}; retry with a longer deadline or SLO"),
        Some(w) if w.usual >= budget => format!(
            "{head}: storage usually takes {:?}, more than the budget ({} requests in flight, the most waited {:?}); retry with a longer deadline or SLO",
            w.usual, w.in_flight, w.waited
        ),
        Some(w) if storage_late(w, budget) => format!(
            "{head}: storage was late ({} requests in flight, one waited {:?} where at most {:?} was expected); retry",
            w.in_flight, w.waited, w.expected
        ),
        Some(w) if w.expected >= budget => format!(
            "{head}: storage may take up to {:?}, more than the budget ({} requests in flight, the most waited {:?}); retry with a longer deadline or SLO",
            w.expected, w.in_flight, w.waited
        ),
        Some(w) => format!(
            "{head}: {} requests in flight, none late (the most waited {:?} of the up to {:?} storage may take); retry with a longer deadline or SLO",
            w.in_flight, w.waited, w.expected
        ),
    }
}

impl From<StorageError> for ServiceError {
    fn from(e: StorageError) -> Self {
        if e.is_unavailable() {
            Self::Unavailable(e)
        } else {
            Self::Storage(e)
        }
    }
}

impl From<ReadError> for ServiceError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::NoProgress {
                budget,
                set_by,
                waited_on,
                ..
            } => Self::NoProgress {
                budget,
                set_by,
                waited_on,
            },
            ReadError::Storage(s) => s.into(),
            ReadError::ShuttingDown => Self::Draining,
        }
    }
}

impl From<ServiceError> for tonic::Status {
    fn from(err: ServiceError) -> Self {
        // The wait a refusal suggests is at least STORAGE_RETRY_DELAY, in
        // its message as in its RetryInfo.
        let err = match err {
            ServiceError::Unavailable(StorageError::CircuitOpen { retry_after }) => {
                ServiceError::Unavailable(StorageError::CircuitOpen {
                    retry_after: retry_after.max(STORAGE_RETRY_DELAY),
                })
            }
            other => other,
        };
        let message = err.to_string();
        let mut details = ErrorDetails::new();
        let mut info: HashMap<String, String> = HashMap::new();
        let code = match &err {
            ServiceError::InvalidArgument { field, description } => {
                details.add_bad_request_violation(field.clone(), description.clone());
                info.insert("field".into(), field.clone());
                Code::InvalidArgument
            }
            ServiceError::Token(e) => {
                details.add_bad_request_violation("continuation_token", e.to_string());
                info.insert("field".into(), "continuation_token".into());
                Code::InvalidArgument
            }
            ServiceError::NamespaceNotFound(name) => {
                info.insert("namespace".into(), name.clone());
                Code::NotFound
            }
            ServiceError::NamespaceConflict(ns) => {
                info.insert("namespace".into(), ns.name.clone());
                Code::AlreadyExists
            }
            ServiceError::NoProgress {
                budget, waited_on, ..
            } => {
                info.insert("budget_micros".into(), budget.as_micros().to_string());
                if let Some(w) = waited_on {
                    info.insert("in_flight".into(), w.in_flight.to_string());
                    info.insert("waited_micros".into(), w.waited.as_micros().to_string());
                    info.insert("expected_micros".into(), w.expected.as_micros().to_string());
                    info.insert("usual_micros".into(), w.usual.as_micros().to_string());
                    // Storage was late: the same call retried (a token
                    // read finds its held scan's pages landed) most likely
                    // answers; spread, as refusals for load are.
                    if storage_late(w, *budget) {
                        details.set_retry_info(Some(overload_pushback()));
                    }
                }
                Code::DeadlineExceeded
            }
            ServiceError::Late { budget, .. } => {
                info.insert("budget_micros".into(), budget.as_micros().to_string());
                details.set_retry_info(Some(STORAGE_RETRY_DELAY));
                Code::DeadlineExceeded
            }
            ServiceError::Unavailable(StorageError::CircuitOpen { retry_after }) => {
                details.set_retry_info(Some(*retry_after));
                Code::Unavailable
            }
            ServiceError::Unavailable(_) => {
                details.set_retry_info(Some(STORAGE_RETRY_DELAY));
                Code::Unavailable
            }
            ServiceError::Storage(StorageError::InvalidNamespace { name, problem }) => {
                info.insert("namespace".into(), name.clone());
                info.insert("field".into(), problem.field.into());
                Code::Internal
            }
            ServiceError::Storage(_) => Code::Internal,
            ServiceError::Draining => {
                // Not at once: on the same connection a retry meets the
                // same draining server until its client reconnects.
                details.set_retry_info(Some(STORAGE_RETRY_DELAY));
                Code::Unavailable
            }
            ServiceError::Auth(AuthError::MissingToken | AuthError::UnknownToken) => {
                Code::Unauthenticated
            }
            ServiceError::Auth(AuthError::Denied {
                client,
                access,
                namespace,
            }) => {
                info.insert("client".into(), client.clone());
                info.insert("access".into(), access.to_string());
                info.insert("namespace".into(), namespace.clone());
                Code::PermissionDenied
            }
            ServiceError::Overloaded(full) => {
                let (subject, description) = match full {
                    Full::Server { limit } | Full::Adaptive { limit } => {
                        info.insert("limit".into(), limit.to_string());
                        ("server".to_string(), "concurrent scans at their limit")
                    }
                    Full::Batch { limit } => {
                        info.insert("limit".into(), limit.to_string());
                        ("class:batch".to_string(), "batch scans at their share")
                    }
                    Full::Namespace { name, limit } | Full::FairShare { name, share: limit } => {
                        info.insert("namespace".into(), name.clone());
                        info.insert("limit".into(), limit.to_string());
                        (
                            format!("namespace:{name}"),
                            "concurrent scans at their limit",
                        )
                    }
                    Full::BudgetSpent { left } => {
                        info.insert("left_micros".into(), left.as_micros().to_string());
                        ("server".to_string(), "budget spent waiting to start")
                    }
                };
                details.add_quota_failure_violation(subject, description);
                details.set_retry_info(Some(overload_pushback()));
                Code::ResourceExhausted
            }
        };
        details.set_error_info(err.reason(), ERROR_DOMAIN, info);
        detailed_status(code, message, details)
    }
}

/// A status with `details`, and its RetryInfo's wait, if any, also as
/// gRPC's own retry pushback, which clients with a retry policy wait for
/// before their next attempt (gRPC A6). Every status with details the
/// server sends is built here.
pub fn detailed_status(code: Code, message: String, details: ErrorDetails) -> tonic::Status {
    let pushback = details.retry_info().and_then(|r| r.retry_delay);
    let mut status = tonic::Status::with_error_details(code, message, details);
    if let Some(wait) = pushback {
        status.metadata_mut().insert(
            RETRY_PUSHBACK,
            u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).into(),
        );
    }
    status
}

/// The trailer in which gRPC clients with a retry policy take the server's
/// pushback, in milliseconds.
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

#[cfg(test)]
mod tests {
    use super::*;

    /// A 10 ms read that stopped without a row while 4 requests were in
    /// flight, the one waited on most for `waited_us` where slow ones take
    /// `expected_us` and usual ones `usual_us`.
    fn no_row(waited_us: u64, expected_us: u64, usual_us: u64) -> ServiceError {
        ServiceError::NoProgress {
            budget: Duration::from_millis(10),
            set_by: BudgetSource::Slo,
            waited_on: Some(Waited {
                in_flight: 4,
                waited: Duration::from_micros(waited_us),
                expected: Duration::from_micros(expected_us),
                usual: Duration::from_micros(usual_us),
            }),
        }
    }

    #[test]
    fn an_open_circuit_suggests_one_wait_in_its_message_and_retry_info() {
        for (left, want) in [
            (Duration::from_millis(22), STORAGE_RETRY_DELAY),
            (Duration::from_secs(2), Duration::from_secs(2)),
        ] {
            let status =
                tonic::Status::from(ServiceError::Unavailable(StorageError::CircuitOpen {
                    retry_after: left,
                }));
            let retry = status.get_details_retry_info().expect("RetryInfo");
            assert_eq!(retry.retry_delay, Some(want));
            assert!(
                status.message().ends_with(&format!("retry in {want:?}")),
                "{}",
                status.message()
            );
            // The same wait as gRPC's retry pushback.
            let pushback = status.metadata().get(RETRY_PUSHBACK).expect("pushback");
            assert_eq!(pushback.to_str().unwrap(), want.as_millis().to_string());
        }
        // An error with no RetryInfo pushes nothing back.
        let status = tonic::Status::from(ServiceError::invalid("series_id", "must not be empty"));
        assert!(status.metadata().get(RETRY_PUSHBACK).is_none());
    }

    /// A read that fit no row because storage was late says to retry, with
    /// a spread wait; one whose budget was too small does not (the same
    /// budget would fail again).
    #[test]
    fn a_read_storage_was_late_for_suggests_a_retry_a_too_small_budget_not() {
        let late = tonic::Status::from(no_row(8_900, 3_100, 1_100));
        assert_eq!(
            late.get_details_error_info().unwrap().reason,
            "STORAGE_LATE"
        );
        let wait = late
            .get_details_retry_info()
            .expect("RetryInfo")
            .retry_delay
            .expect("a wait");
        assert!(
            wait >= OVERLOAD_RETRY_DELAY / 2 && wait <= OVERLOAD_RETRY_DELAY * 3 / 2,
            "{wait:?}"
        );
        let pushback = late.metadata().get(RETRY_PUSHBACK).expect("pushback");
        assert_eq!(pushback.to_str().unwrap(), wait.as_millis().to_string());
        let small = tonic::Status::from(no_row(4_300, 6_100, 2_000));
        assert_eq!(
            small.get_details_error_info().unwrap().reason,
            "BUDGET_TOO_SMALL"
        );
        assert!(small.get_details_retry_info().is_none());
        assert!(small.metadata().get(RETRY_PUSHBACK).is_none());
    }

    #[test]
    fn every_error_maps_to_its_code_with_details() {
        let cases: Vec<(ServiceError, Code, &str)> = vec![
            (
                ServiceError::invalid("events[2].event_id", "must not be empty"),
                Code::InvalidArgument,
                "INVALID_FIELD",
            ),
            (
                TokenError::Expired.into(),
                Code::InvalidArgument,
                "TOKEN_EXPIRED",
            ),
            (
                ServiceError::NamespaceNotFound("x".into()),
                Code::NotFound,
                "NAMESPACE_NOT_FOUND",
            ),
            (
                ServiceError::NoProgress {
                    budget: Duration::from_millis(3),
                    set_by: BudgetSource::Slo,
                    waited_on: None,
                },
                Code::DeadlineExceeded,
                "BUDGET_TOO_SMALL",
            ),
            (
                no_row(8_900, 3_100, 1_100),
                Code::DeadlineExceeded,
                "STORAGE_LATE",
            ),
            // Later than a slow page, but a usual page does not fit the
            // budget either: the budget is too small.
            (
                no_row(16_000, 13_600, 10_400),
                Code::DeadlineExceeded,
                "BUDGET_TOO_SMALL",
            ),
            // Later than a slow page, which would not fit the budget, but a
            // usual one does: storage was late (a continued call whose page
            // had waited since the call before it).
            (
                no_row(16_000, 13_600, 4_500),
                Code::DeadlineExceeded,
                "STORAGE_LATE",
            ),
            (
                no_row(4_300, 6_100, 2_000),
                Code::DeadlineExceeded,
                "BUDGET_TOO_SMALL",
            ),
            (
                StorageError::Transient("overloaded".into()).into(),
                Code::Unavailable,
                "STORAGE_UNAVAILABLE",
            ),
            (
                StorageError::Fatal("bad".into()).into(),
                Code::Internal,
                "STORAGE_FAILURE",
            ),
            (ServiceError::Draining, Code::Unavailable, "SERVER_DRAINING"),
            (
                ServiceError::Late {
                    work: LateWork::Write,
                    budget: Duration::from_millis(695),
                },
                Code::DeadlineExceeded,
                "STORAGE_LATE",
            ),
            (
                ServiceError::Overloaded(Full::Namespace {
                    name: "n".into(),
                    limit: 4,
                }),
                Code::ResourceExhausted,
                "TOO_MANY_NAMESPACE_SCANS",
            ),
        ];
        for (err, code, reason) in cases {
            // Callers cause exactly the errors that are not UNAVAILABLE or INTERNAL.
            assert_eq!(
                err.is_caller_error(),
                !matches!(code, Code::Unavailable | Code::Internal),
                "{err}"
            );
            assert!(
                REASONS.contains(&err.reason()),
                "{} not in REASONS",
                err.reason()
            );
            let status = tonic::Status::from(err);
            assert_eq!(status.code(), code);
            let info = status.get_details_error_info().expect("ErrorInfo");
            assert_eq!(info.reason, reason);
            assert_eq!(info.domain, ERROR_DOMAIN);
            match code {
                Code::InvalidArgument => {
                    let br = status.get_details_bad_request().expect("BadRequest");
                    assert!(!br.field_violations[0].field.is_empty());
                }
                Code::Unavailable => {
                    let retry = status.get_details_retry_info().expect("RetryInfo");
                    assert_eq!(retry.retry_delay, Some(STORAGE_RETRY_DELAY));
                }
                Code::ResourceExhausted => {
                    let retry = status.get_details_retry_info().expect("RetryInfo");
                    let delay = retry.retry_delay.expect("a delay");
                    assert!(
                        delay >= OVERLOAD_RETRY_DELAY / 2 && delay < OVERLOAD_RETRY_DELAY * 3 / 2,
                        "{delay:?}"
                    );
                    let quota = status.get_details_quota_failure().expect("QuotaFailure");
                    assert_eq!(quota.violations[0].subject, "namespace:n");
                }
                _ => {}
            }
        }
        let late = tonic::Status::from(no_row(8_900, 3_100, 1_100));
        let info = late.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.metadata["budget_micros"], "10000");
        assert_eq!(info.metadata["in_flight"], "4");
        assert_eq!(info.metadata["waited_micros"], "8900");
        assert_eq!(info.metadata["expected_micros"], "3100");
        assert_eq!(info.metadata["usual_micros"], "1100");
        assert_eq!(
            late.message(),
            "no row could be read within the 10ms budget (set by Slo): storage was late \
             (4 requests in flight, one waited 8.9ms where at most 3.1ms was expected); retry"
        );
        let small = tonic::Status::from(no_row(4_300, 6_100, 2_000));
        let info = small.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.metadata["waited_micros"], "4300");
        assert_eq!(info.metadata["expected_micros"], "6100");
        assert_eq!(
            small.message(),
            "no row could be read within the 10ms budget (set by Slo): 4 requests in flight, \
             none late (the most waited 4.3ms of the up to 6.1ms storage may take); retry with \
             a longer deadline or SLO"
        );
        assert_eq!(
            tonic::Status::from(no_row(16_000, 13_600, 10_400)).message(),
            "no row could be read within the 10ms budget (set by Slo): storage usually takes \
             10.4ms, more than the budget (4 requests in flight, the most waited 16ms); retry \
             with a longer deadline or SLO"
        );
        let status = tonic::Status::from(ServiceError::invalid(
            "events[2].event_id",
            "must not be empty",
        ));
        assert_eq!(
            status.message(),
            "invalid events[2].event_id: must not be empty"
        );
    }
}
