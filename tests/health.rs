//! Health follows storage: NOT_SERVING while Cassandra is down, SERVING once
//! it is back, without restarting the server. This binary stops and starts
//! the shared node, so it holds this one test only (test binaries run one
//! after another).

mod common;

use std::time::Duration;

use common::*;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

async fn wait_for(
    health: &mut HealthClient<tonic::transport::Channel>,
    want: ServingStatus,
    within: Duration,
) {
    let began = std::time::Instant::now();
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: "hourglass.v1.Hourglass".into(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        if status == want as i32 {
            return;
        }
        assert!(
            began.elapsed() < within,
            "health stayed {status}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_cassandra_down_and_up() {
    own_node_only();
    let server = ServerProcess::start(&[]).await;
    let mut health = server.health().await;
    wait_for(&mut health, ServingStatus::Serving, Duration::from_secs(10)).await;
    cassandra_script("stop");
    let down = async {
        wait_for(
            &mut health,
            ServingStatus::NotServing,
            Duration::from_secs(20),
        )
        .await;
    };
    down.await;
    cassandra_script("start");
    wait_for(&mut health, ServingStatus::Serving, Duration::from_secs(60)).await;
    // And it serves reads again without a restart.
    let mut client = server.client().await;
    create_namespace(&mut client, "after-restart", 1_000_000, 1).await;
    write_all(&client, "after-restart", vec![event("s", 1, "a")]).await;
    let (events, _) = read_to_end(&mut client, read_request("after-restart", "s", 0, 10)).await;
    assert_eq!(events.len(), 1);
}
