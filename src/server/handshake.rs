//! Connections finish their handshake in time. Within the handshake
//! timeout (`--handshake-timeout`) of being accepted, a connection must
//! have completed its TLS handshake, when TLS is on, and its client must
//! have sent the HTTP/2 connection preface: the 24-octet magic and the
//! SETTINGS frame that follows it (RFC 9113, section 3.4). A connection
//! that has not is aborted: it fails its reads and writes, the transport
//! drops it, and it closes at once, without lingering
//! (`hourglass_handshake_timeouts_total`).
//!
//! Neither rustls nor the HTTP/2 server bounds this time themselves, so
//! without it a client that opens connections and sends nothing, or
//! dribbles its handshake a byte at a time, holds one of the server's file
//! descriptors each for as long as it likes, before any credentials are
//! asked for. Past its preface a connection is the transport's, bounded by
//! HTTP/2 and TCP keepalives; an idle client that finished its handshake
//! keeps its connection.
//!
//! The server does TLS here rather than in the transport so that one
//! deadline covers the TLS handshake and the preface inside it. The
//! connection info handed to calls is the TCP connection's either way.
//!
//! Invariant: a connection reaches the transport only once its TLS
//! handshake (if any) is done; until its reads delivered the whole preface
//! it is held to its deadline, and aborted at it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{FuturesUnordered, Stream, StreamExt as _};
use futures::FutureExt as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::connections::TrackedStream;

/// Default time a connection has, from its accept, for its TLS handshake
/// and HTTP/2 preface.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP/2 client connection preface's magic.
const MAGIC: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The magic and the header of the SETTINGS frame after it.
const PREFACE_HEAD: usize = MAGIC.len() + 9;

/// The server side of TLS: the certificate, its key and, for mutual TLS,
/// the CAs client certificates must chain to; ALPN offers HTTP/2.
#[derive(Clone)]
pub struct ServerTls(tokio_rustls::TlsAcceptor);

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

impl ServerTls {
    /// From PEM: the certificate chain, its private key and, when clients
    /// must present certificates, the CA certificates they chain to. The
    /// error names what did not parse.
    pub fn from_pem(cert: &[u8], key: &[u8], client_ca: Option<&[u8]>) -> Result<Self, String> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = |pem: &[u8], what: &str| {
            CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{what}: {e}"))
                .and_then(|certs| {
                    if certs.is_empty() {
                        Err(format!("{what} holds no certificate"))
                    } else {
                        Ok(certs)
                    }
                })
        };
        let chain = certs(cert, "the certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("the key: {e}"))?;
        let builder = rustls::ServerConfig::builder();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in certs(ca, "the client CA")? {
                    roots.add(cert).map_err(|e| format!("the client CA: {e}"))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder(roots.into())
                    .build()
                    .map_err(|e| format!("the client CA: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| format!("the certificate and key: {e}"))?;
        config.alpn_protocols.push(b"h2".to_vec());
        Ok(Self(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
    }
}

/// A connection the transport serves: plaintext or TLS over a tracked TCP
/// connection, held to its handshake deadline until the preface is in.
pub type Connection = Greeting<Either<TrackedStream, TlsStream<TrackedStream>>>;

/// The connections of `accepted`, each handed on once its TLS handshake
/// (if `tls`) is done; handshakes run side by side, and one that does not
/// finish within `timeout` is dropped (the others are not held up).
pub fn connections<S>(
    accepted: S,
    tls: Option<ServerTls>,
    timeout: Duration,
) -> impl Stream<Item = io::Result<Connection>> + Send + 'static
where
    S: Stream<Item = io::Result<TrackedStream>> + Send + 'static,
{
    Accepting {
        accepted: Box::pin(accepted),
        tls,
        timeout,
        handshakes: FuturesUnordered::new(),
    }
}

type Handshake = Pin<Box<dyn std::future::Future<Output = Option<Connection>> + Send>>;

struct Accepting<S> {
    accepted: Pin<Box<S>>,
    tls: Option<ServerTls>,
    timeout: Duration,
    handshakes: FuturesUnordered<Handshake>,
}

impl<S> Stream for Accepting<S>
where
    S: Stream<Item = io::Result<TrackedStream>> + Send,
{
    type Item = io::Result<Connection>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match this.accepted.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    let deadline = Instant::now() + this.timeout;
                    let info = stream.connect_info();
                    let abort = stream.abort_token();
                    match &this.tls {
                        None => {
                            let io = Either::Left(stream);
                            return Poll::Ready(Some(Ok(Greeting::new(io, info, abort, deadline))));
                        }
                        Some(tls) => {
                            let accept = tls.0.accept(stream);
                            this.handshakes.push(Box::pin(async move {
                                let done = tokio::time::timeout_at(deadline, accept).await;
                                match done {
                                    Ok(Ok(tls)) => {
                                        let io = Either::Right(tls);
                                        Some(Greeting::new(io, info, abort, deadline))
                                    }
                                    Ok(Err(e)) => {
                                        tracing::debug!(error = %e, "TLS handshake failed");
                                        None
                                    }
                                    Err(_) => {
                                        // The stream, dropped with the
                                        // handshake, closes at once.
                                        abort.cancel();
                                        timed_out();
                                        None
                                    }
                                }
                            }));
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) if this.handshakes.is_empty() => return Poll::Ready(None),
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        while let Poll::Ready(Some(done)) = this.handshakes.poll_next_unpin(cx) {
            if let Some(connection) = done {
                return Poll::Ready(Some(Ok(connection)));
            }
        }
        Poll::Pending
    }
}

/// Counts and logs a connection closed at its handshake deadline.
fn timed_out() {
    metrics::counter!(crate::telemetry::HANDSHAKE_TIMEOUTS).increment(1);
    tracing::debug!("connection closed: no TLS handshake and HTTP/2 preface in time");
}

/// A connection held to its handshake deadline until its reads delivered
/// the HTTP/2 preface (see the module docs).
pub struct Greeting<IO> {
    io: IO,
    info: TcpConnectInfo,
    /// Aborts the TCP connection beneath.
    abort: CancellationToken,
    /// Until the preface is in: the deadline, and the preface's first
    /// bytes read so far (its magic and the SETTINGS frame's header).
    until_preface: Option<(Pin<Box<Sleep>>, Vec<u8>)>,
    /// Bytes of the preface still to come once its head is in.
    settings_left: usize,
}

impl<IO> Greeting<IO> {
    fn new(io: IO, info: TcpConnectInfo, abort: CancellationToken, deadline: Instant) -> Self {
        Self {
            io,
            info,
            abort,
            until_preface: Some((
                Box::pin(tokio::time::sleep_until(deadline)),
                Vec::with_capacity(PREFACE_HEAD),
            )),
            settings_left: 0,
        }
    }

    /// Takes `read`, the bytes just read, into the preface count; true once
    /// the preface is complete. A first frame that is not a SETTINGS frame
    /// (type 4, no ACK flag) never completes it (RFC 9113 makes it a
    /// protocol error; the transport answers such frames, so the deadline
    /// closes the connection).
    fn count(head: &mut Vec<u8>, settings_left: &mut usize, mut read: &[u8]) -> bool {
        if head.len() < PREFACE_HEAD {
            let take = read.len().min(PREFACE_HEAD - head.len());
            head.extend_from_slice(&read[..take]);
            read = &read[take..];
            if head.len() < PREFACE_HEAD {
                return false;
            }
            let frame = &head[MAGIC.len()..];
            if frame[3] != 4 || frame[4] & 1 != 0 {
                *settings_left = usize::MAX;
                return false;
            }
            // The SETTINGS frame's 24-bit payload length.
            *settings_left =
                usize::from(frame[0]) << 16 | usize::from(frame[1]) << 8 | usize::from(frame[2]);
        }
        if *settings_left == usize::MAX {
            return false;
        }
        *settings_left = settings_left.saturating_sub(read.len());
        *settings_left == 0
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Greeting<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let filled = buf.filled().len();
        let poll = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some((deadline, head)) = &mut this.until_preface {
            if Self::count(head, &mut this.settings_left, &buf.filled()[filled..]) {
                this.until_preface = None;
            } else if deadline.poll_unpin(cx).is_ready() {
                this.until_preface = None;
                this.abort.cancel();
                timed_out();
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface within the handshake timeout",
                )));
            }
        }
        poll
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Greeting<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO> Connected for Greeting<IO> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preface_is_the_magic_and_the_settings_frame() {
        let mut preface = MAGIC.to_vec();
        // A SETTINGS frame with two settings (12 bytes of payload).
        preface.extend_from_slice(&[0, 0, 12, 4, 0, 0, 0, 0, 0]);
        preface.extend_from_slice(&[0u8; 12]);
        for split in [1, 5, 24, 32, 33, 40, 44] {
            let (mut head, mut left) = (Vec::new(), 0);
            let mut done = false;
            for chunk in preface.chunks(split) {
                assert!(!done, "complete before its last chunk (split {split})");
                done = Greeting::<()>::count(&mut head, &mut left, chunk);
            }
            assert!(done, "complete after its last chunk (split {split})");
        }
        let (mut head, mut left) = (Vec::new(), 0);
        assert!(!Greeting::<()>::count(&mut head, &mut left, &preface[..44]));
        // An empty SETTINGS frame completes with its header.
        let (mut head, mut left) = (Vec::new(), 0);
        let mut empty = MAGIC.to_vec();
        empty.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert!(Greeting::<()>::count(&mut head, &mut left, &empty));
        // A PING, a WINDOW_UPDATE or a SETTINGS ACK first never completes
        // it, whatever follows.
        for frame in [
            &[0, 0, 8, 6, 0, 0, 0, 0, 0][..],
            &[0, 0, 4, 8, 0, 0, 0, 0, 0],
            &[0, 0, 0, 4, 1, 0, 0, 0, 0],
        ] {
            let (mut head, mut left) = (Vec::new(), 0);
            let mut other = MAGIC.to_vec();
            other.extend_from_slice(frame);
            assert!(!Greeting::<()>::count(&mut head, &mut left, &other));
            assert!(!Greeting::<()>::count(&mut head, &mut left, &[0; 64]));
            assert!(!Greeting::<()>::count(&mut head, &mut left, &empty));
        }
    }
}
