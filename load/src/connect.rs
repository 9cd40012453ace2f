//! How the load tool reaches a server: plaintext (`http://`) or TLS
//! (`https://`, verified against a given CA, optionally with a client
//! certificate), with or without a bearer token, as a server with
//! `--tls-cert`, `--tls-client-ca` or `--auth-file` requires.
//!
//! Secrets stay off the command line (any user can read it): the bearer
//! token comes from a file or the environment, and the report records the
//! file's path, never the token.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use hourglass::api::pb::hourglass_client::HourglassClient;
use hourglass::client::BearerToken;
use serde::{Deserialize, Serialize};
use tonic::body::Body;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tower_service::Service;

/// Variable holding the bearer token itself (instead of a file).
pub const BEARER_TOKEN_ENV: &str = "HOURGLASS_BEARER_TOKEN";

/// A connected client of the load tool.
pub type Client = HourglassClient<InterceptedService<InTurn, BearerToken>>;

/// The channels to one server or several, each call sent on the next in
/// turn, as a balancer that alternates over replicas does (clones share
/// the turn): a client following tokens through two servers sends each
/// call to the server that did not answer the last one.
#[derive(Clone, Debug)]
pub struct InTurn {
    channels: Arc<[Channel]>,
    turn: Arc<AtomicUsize>,
    /// The channel polled ready for the next call.
    ready: Option<Channel>,
}

impl InTurn {
    fn new(channels: Vec<Channel>) -> Self {
        Self {
            channels: channels.into(),
            turn: Arc::new(AtomicUsize::new(0)),
            ready: None,
        }
    }
}

impl Service<http::Request<Body>> for InTurn {
    type Response = <Channel as Service<http::Request<Body>>>::Response;
    type Error = <Channel as Service<http::Request<Body>>>::Error;
    type Future = <Channel as Service<http::Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let channels = &self.channels;
        let turn = &self.turn;
        self.ready
            .get_or_insert_with(|| {
                channels[turn.fetch_add(1, Ordering::Relaxed) % channels.len()].clone()
            })
            .poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        self.ready
            .take()
            .expect("poll_ready before call")
            .call(request)
    }
}

/// TLS and credentials for reaching a server.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
pub struct Credentials {
    /// PEM CA certificate(s) the server's certificate must be signed by;
    /// needed for an https:// server
    #[arg(long, env = "HOURGLASS_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Name the server's certificate must carry (default: the server URL's
    /// host)
    #[arg(long, requires = "ca_cert")]
    pub tls_domain: Option<String>,
    /// PEM client certificate, for a server that requires one
    /// (`--tls-client-ca`); needs --client-key
    #[arg(long, requires_all = ["client_key", "ca_cert"])]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// File holding the bearer token sent as `authorization: Bearer
    /// <token>` to a server with `--auth-file` (or the token itself in
    /// HOURGLASS_BEARER_TOKEN; never on the command line)
    #[arg(long, env = "HOURGLASS_BEARER_TOKEN_FILE")]
    pub bearer_token_file: Option<PathBuf>,
}

impl Credentials {
    /// The bearer token to send: from the file, else from the environment.
    fn bearer_token(&self) -> anyhow::Result<BearerToken> {
        let token = match &self.bearer_token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("--bearer-token-file {}", path.display()))?,
            ),
            None => std::env::var(BEARER_TOKEN_ENV).ok(),
        };
        match token {
            None => Ok(BearerToken::none()),
            Some(t) if t.trim().is_empty() => {
                anyhow::bail!("the bearer token (--bearer-token-file or {BEARER_TOKEN_ENV}) is empty")
            }
            Some(t) => BearerToken::new(&t).map_err(|_| {
                anyhow::anyhow!(
                    "the bearer token (--bearer-token-file or {BEARER_TOKEN_ENV}) holds characters an HTTP header cannot carry"
                )
            }),
        }
    }

    /// The endpoint of `server`, with TLS for an https:// URL.
    fn endpoint(&self, server: &str) -> anyhow::Result<Endpoint> {
        let endpoint = Endpoint::from_shared(server.to_string())
            .with_context(|| format!("--server {server:?} is not a URL"))?;
        let https = endpoint.uri().scheme_str() == Some("https");
        let Some(ca) = &self.ca_cert else {
            anyhow::ensure!(
                !https,
                "--server {server} is https://: give --ca-cert, the CA its certificate is signed by"
            );
            return Ok(endpoint);
        };
        anyhow::ensure!(
            https,
            "--ca-cert is given but --server {server} is not https://"
        );
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "--ca-cert")?));
        if let Some(domain) = &self.tls_domain {
            tls = tls.domain_name(domain.clone());
        }
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            tls = tls.identity(Identity::from_pem(
                read(cert, "--client-cert")?,
                read(key, "--client-key")?,
            ));
        }
        endpoint.tls_config(tls).context("TLS settings")
    }
}

fn read(path: &Path, flag: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag} {}", path.display()))
}

/// Connects to `servers` (one URL, or several separated by commas, which
/// then take the calls in turn: [`InTurn`]), retrying each while it starts
/// (for up to `wait`, saying so on stderr after the first failure).
/// Settings that cannot work (a missing file, https:// without a CA) fail
/// at once.
pub async fn connect(
    servers: &str,
    credentials: &Credentials,
    wait: Duration,
) -> anyhow::Result<Client> {
    let token = credentials.bearer_token()?;
    let mut channels = Vec::new();
    for server in servers.split(',').map(str::trim) {
        channels.push(connect_one(server, credentials, wait).await?);
    }
    Ok(
        HourglassClient::with_interceptor(InTurn::new(channels), token)
            .max_decoding_message_size(hourglass::api::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(hourglass::api::MAX_MESSAGE_BYTES),
    )
}

/// A channel to `server` (see [`connect`]).
async fn connect_one(
    server: &str,
    credentials: &Credentials,
    wait: Duration,
) -> anyhow::Result<Channel> {
    let endpoint = credentials.endpoint(server)?;
    let began = Instant::now();
    let mut said = false;
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(e) if began.elapsed() > wait => {
                anyhow::bail!(
                    "cannot reach the Hourglass server at {server}: {:#}",
                    anyhow::Error::from(e)
                )
            }
            Err(e) => {
                if !said {
                    eprintln!(
                        "waiting up to {} s for the Hourglass server at {server} ({:#})",
                        wait.as_secs(),
                        anyhow::Error::from(e)
                    );
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_cannot_work_are_refused_naming_the_flag() {
        let plain = Credentials::default();
        let err = plain
            .endpoint("https://localhost:1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("--ca-cert"), "{err}");
        let with_ca = Credentials {
            ca_cert: Some("/nonexistent/ca.pem".into()),
            ..Credentials::default()
        };
        let err = with_ca
            .endpoint("http://localhost:1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not https://"), "{err}");
        let err = format!("{:#}", with_ca.endpoint("https://localhost:1").unwrap_err());
        assert!(err.contains("--ca-cert /nonexistent/ca.pem"), "{err}");
        let missing = Credentials {
            bearer_token_file: Some("/nonexistent/token".into()),
            ..Credentials::default()
        };
        let err = format!("{:#}", missing.bearer_token().unwrap_err());
        assert!(
            err.contains("--bearer-token-file /nonexistent/token"),
            "{err}"
        );
        assert!(plain.endpoint("http://127.0.0.1:1").is_ok());
    }
}
