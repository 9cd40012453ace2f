//! Security, end to end through the `hourglass serve` binary: gRPC over TLS,
//! bearer-token clients with per-namespace permissions, continuation tokens
//! that grant nothing, secrets kept out of logs and off the command line,
//! and a second Cassandra node that requires a login and TLS.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use hourglass::api::pb;
use hourglass::api::pb::hourglass_client::HourglassClient;
use hourglass::auth::token_sha256;
use hourglass::client::BearerToken;
use hourglass::storage::cassandra::{CassandraConfig, CassandraStore, Credentials};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

const ALPHA: &str = "alpha-token-0c4d2a9e77f1";
const BETA: &str = "beta-token-5be2f8a1c903";
const READER: &str = "reader-token-93aa01b7e6d2";

async fn tls_channel(addr: std::net::SocketAddr, ca: &Path) -> Channel {
    let ca = std::fs::read(ca).unwrap();
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .expect("TLS connect")
}

type Authed =
    HourglassClient<tonic::service::interceptor::InterceptedService<Channel, BearerToken>>;

fn as_client(channel: Channel, token: Option<&str>) -> Authed {
    let token = token.map_or_else(BearerToken::none, |t| BearerToken::new(t).unwrap());
    HourglassClient::with_interceptor(channel, token)
}

fn create(ns: &str) -> pb::CreateNamespaceRequest {
    pb::CreateNamespaceRequest {
        namespace: Some(pb::Namespace {
            name: ns.into(),
            bucket_width_micros: 1_000_000,
            shards: 2,
            retention_seconds: 0,
        }),
    }
}

fn write(ns: &str, n: i64) -> pb::WriteEventsRequest {
    pb::WriteEventsRequest {
        namespace: ns.into(),
        events: (0..n)
            .map(|i| event("s", i * 1000, &format!("{i}")))
            .collect(),
    }
}

fn assert_refused(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, reason: &str) {
    let status = result.expect_err("must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason_of(&status), reason, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_bearer_tokens_guard_every_namespace() {
    let pki = pki("grpc-tls");
    let auth_file = pki.dir.join("auth.toml");
    std::fs::write(
        &auth_file,
        format!(
            "[[client]]\nname = \"alpha\"\ntoken_sha256 = \"{}\"\nread = [\"alpha\"]\nwrite = [\"alpha\"]\n\n\
             [[client]]\nname = \"beta\"\ntoken_sha256 = \"{}\"\nread = [\"beta\"]\nwrite = [\"beta\"]\n\n\
             [[client]]\nname = \"reader\"\ntoken_sha256 = \"{}\"\nread = [\"alpha\"]\n",
            token_sha256(ALPHA),
            token_sha256(BETA),
            token_sha256(READER)
        ),
    )
    .unwrap();
    let log_path = pki.dir.join("serve.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let server = ServerProcess::start_with(
        &[
            "--tls-cert",
            pki.cert.to_str().unwrap(),
            "--tls-key",
            pki.key.to_str().unwrap(),
            "--auth-file",
            auth_file.to_str().unwrap(),
        ],
        &[("RUST_LOG", "debug")],
        Some(log),
    )
    .await;

    // Plaintext gets nowhere.
    let mut plain = server.client().await;
    let err = plain
        .get_namespace(pb::GetNamespaceRequest {
            name: "alpha".into(),
        })
        .await
        .expect_err("plaintext call to a TLS server");
    // The connection fails at the transport (which code hyper reports
    // depends on timing); no handler ever answered it.
    assert!(
        matches!(
            err.code(),
            Code::Unknown | Code::Unavailable | Code::Internal | Code::Cancelled
        ),
        "{err:?}"
    );
    assert_eq!(reason_of(&err), "", "a handler answered plaintext: {err:?}");

    let channel = tls_channel(server.grpc, &pki.ca).await;
    let mut anonymous = as_client(channel.clone(), None);
    let mut stranger = as_client(channel.clone(), Some("not-a-known-token"));
    let mut alpha = as_client(channel.clone(), Some(ALPHA));
    let mut beta = as_client(channel.clone(), Some(BETA));
    let mut reader = as_client(channel.clone(), Some(READER));

    // No token or an unknown one: UNAUTHENTICATED, before anything else.
    assert_refused(
        anonymous.create_namespace(create("alpha")).await,
        Code::Unauthenticated,
        "MISSING_CREDENTIALS",
    );
    assert_refused(
        stranger.write_events(write("alpha", 1)).await,
        Code::Unauthenticated,
        "UNKNOWN_CREDENTIALS",
    );
    assert_refused(
        stranger
            .read_events(pb::ReadEventsRequest {
                page_size: Some(0),
                ..read_request("alpha", "s", 0, 1)
            })
            .await,
        Code::Unauthenticated,
        "UNKNOWN_CREDENTIALS",
    );

    // Each client in its own namespace.
    alpha
        .create_namespace(create("alpha"))
        .await
        .expect("alpha creates alpha");
    beta.create_namespace(create("beta"))
        .await
        .expect("beta creates beta");
    alpha
        .write_events(write("alpha", 50))
        .await
        .expect("alpha writes alpha");
    beta.write_events(write("beta", 50))
        .await
        .expect("beta writes beta");
    let page = alpha
        .read_events(pb::ReadEventsRequest {
            page_size: Some(10),
            ..read_request("alpha", "s", 0, 1_000_000)
        })
        .await
        .expect("alpha reads alpha")
        .into_inner();
    assert_eq!(page.events.len(), 10);
    let token = page.continuation_token;
    assert!(!token.is_empty());

    // Beta: nothing of alpha's, whatever it sends.
    assert_refused(
        beta.write_events(write("alpha", 1)).await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    assert_refused(
        beta.create_namespace(create("alpha")).await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    // The permission comes before the rest of the request is looked at:
    // what is wrong with a request on alpha is none of beta's business.
    let mut bad_settings = create("alpha");
    bad_settings.namespace.as_mut().unwrap().shards = 1000;
    assert_refused(
        beta.create_namespace(bad_settings).await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    assert_refused(
        beta.read_events(read_request("alpha", "", 10, 10)).await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    let mut bad_class = tonic::Request::new(read_request("alpha", "s", 0, 1));
    bad_class
        .metadata_mut()
        .insert("x-hourglass-class", "urgent".parse().unwrap());
    assert_refused(
        beta.read_events(bad_class).await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    let mut stream = beta.stream_events(read_request("alpha", "s", 10, 10)).await;
    if let Ok(s) = &mut stream {
        let first = s.get_mut().message().await;
        let err = first.expect_err("a bad stream of alpha for beta");
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    } else {
        assert_refused(stream, Code::PermissionDenied, "PERMISSION_DENIED");
    }
    assert_refused(
        beta.get_namespace(pb::GetNamespaceRequest {
            name: "alpha".into(),
        })
        .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    // Alpha's continuation token grants nothing ...
    let with_token = |ns: &str| pb::ReadEventsRequest {
        continuation_token: token.clone(),
        page_size: Some(10),
        ..read_request(ns, "s", 0, 1_000_000)
    };
    assert_refused(
        beta.read_events(with_token("alpha")).await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    let mut stream = beta.stream_events(with_token("alpha")).await;
    if let Ok(s) = &mut stream {
        // A refusal may come as the first stream item.
        let first = s.get_mut().message().await;
        assert!(first.is_err(), "stream of alpha for beta: {first:?}");
    } else {
        assert_refused(stream, Code::PermissionDenied, "PERMISSION_DENIED");
    }
    // ... and cannot be pointed at beta's own namespace either.
    assert_refused(
        beta.read_events(with_token("beta")).await,
        Code::InvalidArgument,
        "TOKEN_QUERY_MISMATCH",
    );

    // The reader reads alpha (token included) but writes nothing.
    // The library's token-following helper works through the interceptor.
    let rest = hourglass::client::collect_all(reader.clone(), with_token("alpha"), None)
        .await
        .expect("reader reads alpha");
    assert_eq!(
        rest.len(),
        40,
        "the token resumed after alpha's first 10 rows"
    );
    assert_eq!(rest[0].event_id, "10");
    assert_refused(
        reader.write_events(write("alpha", 1)).await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    assert_refused(
        reader.create_namespace(create("reader")).await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    assert_refused(
        reader
            .read_events(read_request("beta", "s", 0, 1_000_000))
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    reader
        .get_namespace(pb::GetNamespaceRequest {
            name: "alpha".into(),
        })
        .await
        .expect("reader may see alpha's settings");

    // Health stays open to probes without a token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health over TLS without a token");

    // Debug logs name clients, never their tokens or the signing secret.
    drop(server);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("bearer-token authentication on"),
        "the log was captured"
    );
    assert!(
        log.contains("client=\"beta\"") || log.contains("client=beta"),
        "calls are attributed to clients"
    );
    // The spans carry each call's outcome.
    for outcome in ["ok", "partial", "error"] {
        assert!(
            log.contains(&format!("outcome=\"{outcome}\""))
                || log.contains(&format!("outcome={outcome}")),
            "no span with outcome {outcome}"
        );
    }
    let signing_secret = TEST_KEYS.split_once(':').unwrap().1;
    for secret in [ALPHA, BETA, READER, "not-a-known-token", signing_secret] {
        assert!(!log.contains(secret), "the log holds a secret");
    }
}

/// Reads `stream` until its end; true if the server closed it (end of
/// stream or an error) within 10 s.
async fn closed_by_server(mut stream: impl tokio::io::AsyncRead + Unpin) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        while matches!(stream.read(&mut buf).await, Ok(1..)) {}
    })
    .await
    .is_ok()
}

/// A lookup of a namespace that does not exist: NOT_FOUND from a handler
/// when the call is served, a transport error when it is not.
async fn look_up_unknown(client: &mut HourglassClient<Channel>) -> tonic::Status {
    client
        .get_namespace(pb::GetNamespaceRequest {
            name: "never-created".into(),
        })
        .await
        .expect_err("no such namespace")
}

/// The handshake timeout of the tests below: time enough for a real
/// client's TLS handshake and preface while other tests start a second
/// Cassandra node beside them on two cores.
const HANDSHAKE_TIMEOUT: &str = "3s";

/// The handshake-timeout counter on `server`'s metrics endpoint.
async fn handshake_timeouts(server: &ServerProcess) -> String {
    let metrics = server.scrape().await;
    metrics
        .lines()
        .find(|l| l.starts_with("hourglass_handshake_timeouts_total "))
        .unwrap_or("no handshake counter")
        .to_owned()
}

/// A connection has `--handshake-timeout` from its accept for its TLS
/// handshake and its client's HTTP/2 preface; one that has not finished
/// them is closed (without it, silent connections hold a descriptor each
/// for ever). A client that finished its handshake may idle on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_do_not_finish_their_handshake_in_time_are_closed() {
    use tokio::io::AsyncWriteExt as _;
    const MAGIC: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let server = ServerProcess::start(&["--handshake-timeout", HANDSHAKE_TIMEOUT]).await;
    let mut idle = server.client().await;
    let silent = tokio::net::TcpStream::connect(server.grpc).await.unwrap();
    let mut magic_only = tokio::net::TcpStream::connect(server.grpc).await.unwrap();
    magic_only.write_all(MAGIC).await.unwrap();
    assert!(closed_by_server(silent).await, "a silent connection stays");
    assert!(
        closed_by_server(magic_only).await,
        "a connection with half a preface stays"
    );
    // The client that sent its preface kept its connection, idle past the
    // timeout: only the two were closed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let err = look_up_unknown(&mut idle).await;
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(
        handshake_timeouts(&server).await,
        "hourglass_handshake_timeouts_total 2"
    );
}

/// With `--tls-client-ca`, clients must present a certificate from that
/// CA; the handshake timeout covers the TLS handshake and the preface
/// inside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_a_client_certificate_and_a_timely_handshake() {
    use rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls;
    let pki = pki("mutual-tls");
    let server = ServerProcess::start(&[
        "--tls-cert",
        pki.cert.to_str().unwrap(),
        "--tls-key",
        pki.key.to_str().unwrap(),
        "--tls-client-ca",
        pki.ca.to_str().unwrap(),
        "--handshake-timeout",
        HANDSHAKE_TIMEOUT,
    ])
    .await;
    let (ca, cert, key) = (
        std::fs::read(&pki.ca).unwrap(),
        std::fs::read(&pki.cert).unwrap(),
        std::fs::read(&pki.key).unwrap(),
    );
    let endpoint = || {
        Endpoint::from_shared(format!("https://{}", server.grpc))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca))
        .domain_name("localhost");

    // With the certificate: served, after idling past the timeout.
    let identity = tonic::transport::Identity::from_pem(&cert, &key);
    let channel = endpoint()
        .tls_config(tls.clone().identity(identity))
        .unwrap()
        .connect()
        .await
        .expect("TLS with a client certificate");
    let mut client = HourglassClient::new(channel);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let err = look_up_unknown(&mut client).await;
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // Without one: refused by TLS, no handler answers.
    let refused = match endpoint().tls_config(tls).unwrap().connect().await {
        Err(_) => None,
        Ok(channel) => Some(look_up_unknown(&mut HourglassClient::new(channel)).await),
    };
    if let Some(err) = refused {
        assert_ne!(err.code(), Code::NotFound, "{err:?}");
        assert_eq!(reason_of(&err), "", "a handler answered: {err:?}");
    }

    // A silent connection, and one that finished TLS but sends no HTTP/2
    // preface, are closed at the timeout.
    let silent = tokio::net::TcpStream::connect(server.grpc).await.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&key).unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(server.grpc).await.unwrap();
    let quiet = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(quiet.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert!(closed_by_server(silent).await, "a silent connection stays");
    assert!(
        closed_by_server(quiet).await,
        "a TLS connection without a preface stays"
    );
    assert_eq!(
        handshake_timeouts(&server).await,
        "hourglass_handshake_timeouts_total 2"
    );
}

#[test]
fn secrets_are_refused_on_the_command_line() {
    for args in [
        &["serve", "--token-keys", "k:0123456789abcdef0123"][..],
        &["serve", "--cassandra-password=hunter2hunter2"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_hourglass"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("secret on the command line"), "{stderr}");
        assert!(
            !stderr.contains("hunter2") && !stderr.contains("0123456789abcdef"),
            "{stderr}"
        );
    }
}

/// A second Cassandra node, with PasswordAuthenticator and required client
/// TLS, stopped when dropped.
struct SecureNode {
    env: Vec<(String, String)>,
}

impl SecureNode {
    fn script(&self, action: &str) -> std::process::ExitStatus {
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cassandra"))
            .arg(action)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .status()
            .expect("run scripts/cassandra")
    }
}

impl Drop for SecureNode {
    fn drop(&mut self) {
        self.script("stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cassandra_login_and_tls_are_used_and_the_password_stays_hidden() {
    cassandra(); // the shared node's jars are resolved
    let pki = pki("cassandra-tls");
    let port = 19_142;
    let node = SecureNode {
        env: vec![
            (
                "HOURGLASS_CASSANDRA_HOME".into(),
                pki.dir.join("node").display().to_string(),
            ),
            ("HOURGLASS_CASSANDRA_PORT".into(), port.to_string()),
            ("HOURGLASS_CASSANDRA_STORAGE_PORT".into(), "17100".into()),
            ("HOURGLASS_CASSANDRA_HEAP".into(), "512M".into()),
            (
                "HOURGLASS_CASSANDRA_TLS_PEM".into(),
                pki.key_and_cert.display().to_string(),
            ),
            ("HOURGLASS_CASSANDRA_AUTH".into(), "password".into()),
        ],
    };
    assert!(node.script("start").success(), "secure node starts");
    let contact = format!("127.0.0.1:{port}");
    let config = |password: &str, tls: bool| CassandraConfig {
        contact_points: vec![contact.clone()],
        keyspace: "hg_secure".into(),
        consistency: scylla::statement::Consistency::One,
        connect_timeout: Duration::from_secs(10),
        credentials: Some(Credentials {
            username: "cassandra".into(),
            password: password.into(),
        }),
        tls_ca: tls.then(|| pki.ca.clone()),
        ..CassandraConfig::default()
    };
    // The default superuser appears shortly after CQL opens.
    let began = std::time::Instant::now();
    let store = loop {
        match CassandraStore::connect(&config("cassandra", true)).await {
            Ok(s) => break s,
            Err(e) => assert!(
                began.elapsed() < Duration::from_secs(60),
                "login over TLS: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    drop(store);
    // Wrong password, or no TLS: refused, and the password is not echoed.
    let Err(err) = CassandraStore::connect(&config("wrong-password-77", true)).await else {
        panic!("a wrong password was accepted");
    };
    assert!(!err.to_string().contains("wrong-password-77"), "{err}");
    assert!(
        CassandraStore::connect(&config("cassandra", false))
            .await
            .is_err(),
        "plaintext refused"
    );

    // The binary: username by flag, password from a file, CA by flag.
    let password_file = pki.dir.join("cassandra-password");
    std::fs::write(&password_file, "cassandra\n").unwrap();
    let grpc = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_hourglass"))
        .args([
            "serve",
            "--listen",
            &grpc,
            "--metrics-listen",
            "off",
            "--consistency",
            "one",
        ])
        .args(["--cassandra", &contact, "--keyspace", "hg_secure"])
        .args(["--cassandra-username", "cassandra"])
        .args(["--cassandra-password-file", password_file.to_str().unwrap()])
        .args(["--cassandra-tls-ca", pki.ca.to_str().unwrap()])
        .env("HOURGLASS_TOKEN_KEYS", TEST_KEYS)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let mut client = None;
    for _ in 0..300 {
        if let Ok(c) = HourglassClient::connect(format!("http://{grpc}")).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut client = client.expect("serve came up against the secure node");
    create_namespace(&mut client, "secure", 1_000_000, 2).await;
    write_all(
        &client,
        "secure",
        (0..100).map(|i| event("s", i, &format!("{i}"))).collect(),
    )
    .await;
    let (events, _) = read_to_end(&mut client, read_request("secure", "s", 0, 1000)).await;
    assert_eq!(events.len(), 100);
    let _ = child.kill();
    let _ = child.wait();

    // A wrong password file: serve exits with an error that hides it.
    std::fs::write(&password_file, "not-the-password-3141\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hourglass"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
        ])
        .args(["--cassandra", &contact, "--cassandra-username", "cassandra"])
        .args(["--cassandra-password-file", password_file.to_str().unwrap()])
        .args([
            "--cassandra-tls-ca",
            pki.ca.to_str().unwrap(),
            "--connect-timeout",
            "5s",
        ])
        .env("HOURGLASS_TOKEN_KEYS", TEST_KEYS)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.to_lowercase().contains("auth") || stderr.contains("password"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("not-the-password-3141"),
        "the log holds the password"
    );
    drop(node);
}
