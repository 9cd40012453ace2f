//! Shared test support: the real local Cassandra (started through the
//! project's script, never skipped), a server on port 0 and event helpers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use hourglass::api::pb;
use hourglass::api::pb::hourglass_client::HourglassClient;
use hourglass::engine::budget::BudgetConfig;
use hourglass::engine::EngineConfig;
use hourglass::server::{self, ServerConfig};
use hourglass::storage::cassandra::{CassandraConfig, CassandraStore, DEFAULT_REPLICATION};
use hourglass::token::KeyRing;
use scylla::statement::Consistency;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// Signing keys the test servers share (so tokens survive restarts).
pub const TEST_KEYS: &str = "test:0123456789abcdef0123456789";

/// The Cassandra contact point: HOURGLASS_TEST_CASSANDRA, or the project's
/// local node, started (idempotently) by `scripts/cassandra start`.
pub fn cassandra() -> &'static str {
    static ADDR: OnceLock<String> = OnceLock::new();
    ADDR.get_or_init(|| {
        if let Ok(addr) = std::env::var("HOURGLASS_TEST_CASSANDRA") {
            return addr;
        }
        let script = repo_root().join("scripts/cassandra");
        let status = Command::new(script)
            .arg("start")
            .status()
            .expect("run scripts/cassandra start");
        assert!(status.success(), "scripts/cassandra start failed: {status}");
        let addr = "127.0.0.1:19042".to_string();
        drop_stale_keyspaces(&addr);
        addr
    })
}

/// Drops, on the local node, the keyspaces test processes that have ended
/// left there ([`keyspace`]: `hg_<test>_<pid>`, whose pid no longer runs):
/// the tests do not drop their own, and every table costs the node heap
/// and time whether it is read or not, so a node that served many test
/// runs serves the next ones slower (with 245 such keyspaces, one
/// unbounded read of a 1,000,000-row series took 3.0-3.6 s where it took
/// 2.2 s without). Best effort: what cannot be dropped is said and left.
fn drop_stale_keyspaces(addr: &str) {
    let addr = addr.to_string();
    let dropped = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the clean-up");
        runtime.block_on(async move {
            let session = scylla::client::session_builder::SessionBuilder::new()
                .known_node(&addr)
                .connection_timeout(Duration::from_secs(30))
                .build()
                .await?;
            let names: Vec<String> = session
                .query_unpaged("SELECT keyspace_name FROM system_schema.keyspaces", ())
                .await?
                .into_rows_result()?
                .rows::<(String,)>()?
                .map(|row| row.map(|(name,)| name))
                .collect::<Result<Vec<_>, _>>()?;
            let mut dropped = 0;
            for name in names.into_iter().filter(|n| is_stale(n)) {
                session
                    .query_unpaged(format!("DROP KEYSPACE IF EXISTS \"{name}\""), ())
                    .await?;
                dropped += 1;
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(dropped)
        })
    })
    .join()
    .expect("the clean-up thread");
    match dropped {
        Ok(0) => {}
        Ok(n) => eprintln!("dropped {n} keyspaces that ended test processes left"),
        Err(e) => eprintln!("could not drop the keyspaces ended test processes left: {e}"),
    }
}

/// Whether `name` is a keyspace [`keyspace`] made for a process that no
/// longer runs.
fn is_stale(name: &str) -> bool {
    let mut parts = name.split('_');
    let (Some("hg"), Some(_test), Some(pid)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    pid.parse::<u32>()
        .is_ok_and(|pid| pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists())
}

/// The `hourglass` binary: cargo's for the root package's tests; for a
/// member's tests, the one `cargo test --workspace` builds into the same
/// target directory.
fn server_binary() -> std::path::PathBuf {
    if let Some(exe) = option_env!("CARGO_BIN_EXE_hourglass") {
        return exe.into();
    }
    let test = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/hourglass
    let exe = test
        .parent()
        .and_then(std::path::Path::parent)
        .map(|dir| dir.join("hourglass"))
        .expect("target directory");
    assert!(
        exe.exists(),
        "{} is missing: run the tests with cargo test --workspace",
        exe.display()
    );
    exe
}

/// The repository root (this module also serves the workspace's members).
pub fn repo_root() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|p| p.join("scripts/cassandra").exists())
        .expect("scripts/cassandra above the package")
}

/// A keyspace private to this test process.
pub fn keyspace() -> String {
    let exe = std::env::current_exe().expect("test binary path");
    let name: String = exe
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("t")
        .split('-')
        .next()
        .unwrap_or("t")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    format!("hg_{name}_{}", std::process::id())
}

/// The test node and this process's keyspace.
pub fn cassandra_config() -> CassandraConfig {
    CassandraConfig {
        contact_points: vec![cassandra().to_string()],
        keyspace: keyspace(),
        replication: DEFAULT_REPLICATION.to_string(),
        consistency: Consistency::One,
        connect_timeout: Duration::from_secs(30),
        ..CassandraConfig::default()
    }
}

pub async fn store() -> CassandraStore {
    CassandraStore::connect(&cassandra_config())
        .await
        .expect("connect to the test Cassandra")
}

/// How long one test process may run once it has a server or the cluster.
/// The tests start servers, signal nodes and spawn tasks that talk to
/// them; should one ever hang (a test, or a runtime's shutdown after a
/// panic), the process fails at this point, saying so, instead of holding
/// the test command until CI's limit. No test binary takes a third of it.
pub const PROCESS_LIMIT: Duration = Duration::from_secs(20 * 60);

/// Starts, once per process, the thread that ends it at [`PROCESS_LIMIT`].
pub fn watchdog() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        std::thread::spawn(|| {
            std::thread::sleep(PROCESS_LIMIT);
            let exe = std::env::current_exe().unwrap_or_default();
            eprintln!(
                "{} still running after {PROCESS_LIMIT:?}: a test hangs",
                exe.display()
            );
            std::process::exit(101);
        });
    });
}

/// A running server; stops when dropped or on [`TestServer::stop`].
pub struct TestServer {
    pub addr: SocketAddr,
    pub client: HourglassClient<Channel>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_config(|_| {}).await
    }

    pub async fn start_with(engine: EngineConfig, budget: BudgetConfig) -> Self {
        Self::start_config(|c| {
            c.engine = engine;
            c.budget = budget;
        })
        .await
    }

    /// A server on the test node and keyspace, with the test keys, through
    /// the same [`server::run`] as the binary; `configure` adjusts the rest.
    pub async fn start_config(configure: impl FnOnce(&mut ServerConfig)) -> Self {
        watchdog();
        let keys = KeyRing::parse(TEST_KEYS, Duration::from_secs(3600)).expect("test keys");
        let mut config = ServerConfig::new(cassandra_config(), keys);
        configure(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            server::run(config, listener, async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
        });
        let client = HourglassClient::connect(format!("http://{addr}"))
            .await
            .expect("connect to test server")
            .max_decoding_message_size(hourglass::api::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(hourglass::api::MAX_MESSAGE_BYTES);
        Self {
            addr,
            client,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops the server and waits until it has.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A task writing batches of 50 events to series `acked` of a namespace
/// while a test kills a node, remembering the batches acknowledged.
///
/// It stops at [`AckedWriter::stop`] or when dropped (a panicking test
/// included), and it pauses after a refused write: once a runtime's
/// shutdown has dropped the client channel's worker, every write fails at
/// once without yielding, and a task that never yields holds the runtime's
/// shutdown (and the test) for ever.
pub struct AckedWriter {
    namespace: String,
    acked: std::sync::Arc<std::sync::Mutex<Vec<i64>>>,
    stop: StopOnDrop,
    task: Option<tokio::task::JoinHandle<usize>>,
}

/// Sets its flag however the test ends.
struct StopOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl AckedWriter {
    /// Starts writing to `namespace` and returns once 10 batches are
    /// acknowledged.
    pub async fn start(client: &HourglassClient<Channel>, namespace: &str) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let acked = std::sync::Arc::<std::sync::Mutex<Vec<i64>>>::default();
        let task = {
            let (mut client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
            let namespace = namespace.to_string();
            tokio::spawn(async move {
                let mut refused = 0;
                for batch in 0i64.. {
                    if stop.load(Ordering::Relaxed) {
                        return refused;
                    }
                    let events = (0..50)
                        .map(|i| event("acked", batch * 50 + i, &format!("{batch}/{i}")))
                        .collect();
                    let req = pb::WriteEventsRequest {
                        namespace: namespace.clone(),
                        events,
                    };
                    if client.write_events(req).await.is_ok() {
                        acked.lock().unwrap().push(batch);
                    } else {
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                unreachable!()
            })
        };
        while acked.lock().unwrap().len() < 10 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            namespace: namespace.to_string(),
            acked,
            stop: StopOnDrop(stop),
            task: Some(task),
        }
    }

    /// Stops writing; returns how many writes were refused.
    pub async fn stop(&mut self) -> usize {
        self.stop
            .0
            .store(true, std::sync::atomic::Ordering::Relaxed);
        match self.task.take() {
            Some(task) => task.await.expect("writer task"),
            None => 0,
        }
    }

    /// Batches acknowledged so far.
    pub fn acknowledged(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Asserts that `client` reads back every event of every acknowledged
    /// batch; returns how many batches that was.
    pub async fn assert_all_stored(&self, client: &mut HourglassClient<Channel>) -> usize {
        let (stored, _) =
            read_to_end(client, read_request(&self.namespace, "acked", 0, i64::MAX)).await;
        let stored: std::collections::HashSet<(i64, String)> = stored.iter().map(key).collect();
        let acked = self.acked.lock().unwrap().clone();
        for batch in &acked {
            for i in 0..50 {
                let k = (batch * 50 + i, format!("{batch}/{i}"));
                assert!(stored.contains(&k), "acknowledged event {k:?} lost");
            }
        }
        acked.len()
    }
}

pub async fn create_namespace(
    client: &mut HourglassClient<Channel>,
    name: &str,
    bucket_width_micros: i64,
    shards: u32,
) -> pb::Namespace {
    client
        .create_namespace(namespace_request(name, bucket_width_micros, shards))
        .await
        .expect("create namespace")
        .into_inner()
}

/// A request to create namespace `name` (no retention).
pub fn namespace_request(
    name: &str,
    bucket_width_micros: i64,
    shards: u32,
) -> pb::CreateNamespaceRequest {
    pb::CreateNamespaceRequest {
        namespace: Some(pb::Namespace {
            name: name.into(),
            bucket_width_micros,
            shards,
            retention_seconds: 0,
        }),
    }
}

pub fn event(series: &str, time: i64, id: &str) -> pb::Event {
    pb::Event {
        series_id: series.into(),
        event_time_micros: time,
        event_id: id.into(),
        payload: bytes::Bytes::from(format!("payload of {time}/{id}")),
        tags: [("k".to_string(), id.to_string())].into(),
    }
}

/// Writes events in batches of 1000 with a few calls in flight.
pub async fn write_all(client: &HourglassClient<Channel>, namespace: &str, events: Vec<pb::Event>) {
    use futures::StreamExt;
    let calls = events.chunks(1000).map(|chunk| {
        let mut c = client.clone();
        let req = pb::WriteEventsRequest {
            namespace: namespace.into(),
            events: chunk.to_vec(),
        };
        async move { c.write_events(req).await.expect("write events") }
    });
    let results: Vec<_> = futures::stream::iter(calls)
        .buffer_unordered(8)
        .collect()
        .await;
    assert_eq!(results.len(), events.len().div_ceil(1000));
}

/// The key of an event, for comparing reads with what was written.
pub fn key(e: &pb::Event) -> (i64, String) {
    (e.event_time_micros, e.event_id.clone())
}

/// The events of `written` inside [start, end), in read order.
pub fn expected(written: &[pb::Event], start: i64, end: i64, descending: bool) -> Vec<pb::Event> {
    let mut v: Vec<pb::Event> = written
        .iter()
        .filter(|e| e.event_time_micros >= start && e.event_time_micros < end)
        .cloned()
        .collect();
    v.sort_by_key(key);
    if descending {
        v.reverse();
    }
    v
}

pub fn read_request(namespace: &str, series: &str, start: i64, end: i64) -> pb::ReadEventsRequest {
    pb::ReadEventsRequest {
        namespace: namespace.into(),
        series_id: series.into(),
        start_time_micros: start,
        end_time_micros: end,
        ..Default::default()
    }
}

/// Follows tokens to the end, checking the response invariants on the way.
/// Returns every event and the responses.
pub async fn read_to_end(
    client: &mut HourglassClient<Channel>,
    req: pb::ReadEventsRequest,
) -> (Vec<pb::Event>, Vec<pb::ReadEventsResponse>) {
    use futures::StreamExt;
    let page_size = effective_page_size(&req);
    let mut events = Vec::new();
    let mut pages = Vec::new();
    let options = hourglass::client::FollowOptions {
        no_progress_retries: 0,
        ..Default::default()
    };
    let mut stream = hourglass::client::follow(client.clone(), req, options);
    while let Some(page) = stream.next().await {
        let page = page.expect("read");
        assert_eq!(
            page.partial,
            !page.continuation_token.is_empty(),
            "partial <=> token"
        );
        assert_eq!(
            page.partial,
            page.partial_reason != pb::PartialReason::None as i32,
            "partial <=> reason"
        );
        assert!(page.events.len() <= page_size, "page size respected");
        events.extend(page.events.iter().cloned());
        pages.push(page);
        assert!(pages.len() < 1_000_000, "read does not finish");
    }
    assert!(
        pages.last().is_some_and(|p| !p.partial),
        "the last page is complete"
    );
    (events, pages)
}

fn effective_page_size(req: &pb::ReadEventsRequest) -> usize {
    req.page_size
        .map_or(hourglass::api::DEFAULT_PAGE_SIZE, |n| n as usize)
}

/// The BadRequest field named by a status.
pub fn bad_field(status: &tonic::Status) -> Option<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
}

/// Runs `scripts/cassandra <action>` (start, stop, kill, freeze, thaw).
pub fn cassandra_script(action: &str) {
    let script = repo_root().join("scripts/cassandra");
    let status = Command::new(script)
        .arg(action)
        .status()
        .expect("run scripts/cassandra");
    assert!(status.success(), "scripts/cassandra {action}: {status}");
}

/// Refuses to run a test that stops or signals the project's own node
/// against someone else's Cassandra.
pub fn own_node_only() {
    assert!(
        std::env::var("HOURGLASS_TEST_CASSANDRA").is_err(),
        "this test stops and signals the project's own node; unset HOURGLASS_TEST_CASSANDRA"
    );
    cassandra();
}

/// The ErrorInfo reason of a status ("" when absent).
pub fn reason_of(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

/// A free loopback port (bound then released), never one handed out before
/// in this process: the system may give a released port to the next bind,
/// and tests start servers at once (two got 35123, one for gRPC and one for
/// metrics, and one failed to start).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut given = GIVEN.lock().expect("ports given");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// The `hourglass serve` binary running as a child process.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
}

impl ServerProcess {
    /// Starts `hourglass serve` on free ports with the test keys and waits
    /// until it accepts gRPC connections.
    pub async fn start(extra: &[&str]) -> Self {
        Self::start_with(extra, &[], None).await
    }

    /// Like [`ServerProcess::start`], with extra environment variables and
    /// stderr (the log) written to `log` if given.
    pub async fn start_with(
        extra: &[&str],
        env: &[(&str, &str)],
        log: Option<std::fs::File>,
    ) -> Self {
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = std::process::Command::new(server_binary());
        cmd.args(["serve", "--listen", &grpc.to_string()])
            .args(["--metrics-listen", &metrics.to_string()])
            .args(["--cassandra", cassandra(), "--keyspace", &keyspace()])
            .args(["--consistency", "one", "--health-interval", "200ms"])
            .args(extra)
            .env("HOURGLASS_TOKEN_KEYS", TEST_KEYS)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied());
        if let Some(f) = log {
            cmd.stderr(f);
        }
        let child = cmd.spawn().expect("start hourglass serve");
        // Owned at once, so Drop kills and reaps it on every path.
        let server = Self {
            child,
            grpc,
            metrics,
        };
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(grpc).await.is_ok() {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(server);
        panic!("hourglass serve did not start listening on {grpc}");
    }

    pub async fn client(&self) -> HourglassClient<Channel> {
        HourglassClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connect")
    }

    pub async fn health(
        &self,
    ) -> tonic_health::pb::health_client::HealthClient<tonic::transport::Channel> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        tonic_health::pb::health_client::HealthClient::new(channel)
    }

    /// GET `path` from the metrics endpoint, returning the body.
    pub async fn scrape(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.metrics)
            .await
            .expect("metrics endpoint");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read metrics");
        out
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        self.child.wait().expect("wait")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA and a leaf certificate for localhost / 127.0.0.1, as PEM files in
/// a directory of the test target named after `name` and the process.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Key then certificate, in one file (Cassandra's PEM keystore).
    pub key_and_cert: PathBuf,
}

pub fn pki(name: &str) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let write = |file: &str, text: String| {
        let p = dir.join(file);
        std::fs::write(&p, text).unwrap();
        p
    };
    Pki {
        ca: write("ca.pem", ca.pem()),
        cert: write("cert.pem", cert.pem()),
        key: write("key.pem", key.serialize_pem()),
        key_and_cert: write("key-and-cert.pem", key.serialize_pem() + &cert.pem()),
        dir,
    }
}

/// A client that takes nothing of its responses: its HTTP/2 stream window
/// is 0 and never raised, so a response it asks for stays unsent.
pub async fn unread_client(addr: SocketAddr) -> HourglassClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .initial_stream_window_size(Some(0))
        .connect()
        .await
        .expect("connect");
    HourglassClient::new(channel)
}
