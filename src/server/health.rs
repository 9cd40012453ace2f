//! gRPC health (`grpc.health.v1.Health`): tonic-health's service, with
//! Watch answering an unknown service as the health protocol asks.
//!
//! tonic-health ends a Watch of a service it does not know at once with
//! NOT_FOUND, which a protocol-following client (grpc-go's health
//! producer, Kubernetes' gRPC probes) takes as a failure to retry with
//! back-off. The protocol instead sends one SERVICE_UNKNOWN and keeps the
//! call open, to send the service's status should it become known.
//!
//! Invariants: Check is tonic-health's, unchanged (an unknown service is
//! NOT_FOUND, as the protocol says for Check). A Watch of a known service
//! is tonic-health's stream. A Watch of an unknown service sends
//! SERVICE_UNKNOWN, then the service's statuses once the reporter knows
//! it; like every Watch it ends when the drain closes connections
//! ([`super::calls`]).

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

/// How often a Watch of an unknown service asks whether it became known.
const UNKNOWN_RECHECK: Duration = Duration::from_secs(1);

/// The health service over `reporter`'s statuses.
pub fn server(reporter: &HealthReporter) -> HealthServer<ProtocolHealth> {
    HealthServer::new(ProtocolHealth {
        inner: std::sync::Arc::new(HealthService::from_health_reporter(reporter.clone())),
    })
}

/// tonic-health's [`HealthService`] with the protocol's Watch of an
/// unknown service (see the module docs).
pub struct ProtocolHealth {
    inner: std::sync::Arc<HealthService>,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for ProtocolHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let service = request.get_ref().service.clone();
        match self.inner.watch(request).await {
            Ok(known) => Ok(Response::new(Box::pin(known.into_inner()))),
            Err(e) if e.code() == Code::NotFound => {
                Ok(Response::new(unknown(self.inner.clone(), service)))
            }
            Err(e) => Err(e),
        }
    }
}

/// A Watch of `service`, unknown when the call came: SERVICE_UNKNOWN, then,
/// once the reporter knows the service, its statuses as a Watch of a
/// known service sends them.
fn unknown(health: std::sync::Arc<HealthService>, service: String) -> WatchStream {
    let first = futures::stream::once(async {
        Ok(HealthCheckResponse {
            status: ServingStatus::ServiceUnknown as i32,
        })
    });
    let known = async move {
        let mut tick = tokio::time::interval(UNKNOWN_RECHECK);
        loop {
            tick.tick().await;
            let request = Request::new(HealthCheckRequest {
                service: service.clone(),
            });
            match health.watch(request).await {
                Ok(stream) => return stream.into_inner(),
                Err(e) if e.code() == Code::NotFound => {}
                Err(e) => {
                    tracing::warn!(error = %e, "health watch of an unknown service");
                }
            }
        }
    };
    Box::pin(first.chain(futures::stream::once(known).flatten()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_health::ServingStatus as Reported;

    fn watch(service: &str) -> Request<HealthCheckRequest> {
        Request::new(HealthCheckRequest {
            service: service.into(),
        })
    }

    fn status(item: Option<Result<HealthCheckResponse, Status>>) -> ServingStatus {
        item.expect("a message").expect("ok").status()
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_of_an_unknown_service_says_so_and_stays_open_until_it_is_known() {
        let reporter = HealthReporter::new();
        let health = ProtocolHealth {
            inner: std::sync::Arc::new(HealthService::from_health_reporter(reporter.clone())),
        };
        let mut stream = health
            .watch(watch("nobody"))
            .await
            .expect("watch")
            .into_inner();
        assert_eq!(status(stream.next().await), ServingStatus::ServiceUnknown);
        let nothing = tokio::time::timeout(Duration::from_secs(30), stream.next()).await;
        assert!(nothing.is_err(), "the call stays open: {nothing:?}");
        reporter
            .set_service_status("nobody", Reported::NotServing)
            .await;
        assert_eq!(status(stream.next().await), ServingStatus::NotServing);
        reporter
            .set_service_status("nobody", Reported::Serving)
            .await;
        assert_eq!(status(stream.next().await), ServingStatus::Serving);
    }

    #[tokio::test]
    async fn check_of_an_unknown_service_is_not_found_and_known_ones_pass_through() {
        let reporter = HealthReporter::new();
        reporter.set_service_status("", Reported::Serving).await;
        let health = ProtocolHealth {
            inner: std::sync::Arc::new(HealthService::from_health_reporter(reporter.clone())),
        };
        let err = health.check(watch("nobody")).await.expect_err("unknown");
        assert_eq!(err.code(), Code::NotFound);
        let ok = health.check(watch("")).await.expect("known").into_inner();
        assert_eq!(ok.status(), ServingStatus::Serving);
        let mut stream = health.watch(watch("")).await.expect("watch").into_inner();
        assert_eq!(status(stream.next().await), ServingStatus::Serving);
    }
}
