//! Accepted connections that close gracefully: a connection the transport
//! is done with, and on which this server wrote, is not closed outright
//! but shut for writing and kept, reading and discarding what still comes,
//! until its client has acknowledged every byte sent (or closed its side,
//! or [`LINGER_MAX`] passed).
//!
//! The transport closes a connection once its streams' last frames are in
//! the socket; they may still wait there for the client's TCP window (a
//! slow or distant client takes seconds over a large response). A socket
//! closed while its peer still sends (HTTP/2 window updates as it reads)
//! answers with a reset and drops what it had not sent: a response, or the
//! `SERVER_SHUTDOWN` partial and its token, lost at a drain. (What the
//! client's system acknowledged is safe: it reads it before the reset.)
//! [`Lingering::settled`] lets the drain wait for these connections.
//!
//! A connection whose client never sent a byte (a bare TCP connection)
//! reads end-of-stream once the drain closes connections, so the
//! transport, still waiting for the HTTP/2 preface, lets it go.
//!
//! A connection can be aborted ([`Lingering::abort_handle`], by its peer's
//! address): it then fails its reads and writes, the transport drops it
//! and every call on it, and it closes at once, without lingering. The
//! server aborts the connection of a client that takes nothing of a
//! response for [`super::calls::SEND_STALL`].
//!
//! Invariant: a connection is counted in [`Lingering`] from when the
//! transport dropped it until its client acknowledged every byte or closed,
//! [`LINGER_MAX`] passed, or the runtime shut down.

use std::collections::HashMap;
use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// A connection lingers at most this long.
pub const LINGER_MAX: Duration = Duration::from_secs(30);
/// How often a lingering connection looks whether its client has
/// acknowledged everything.
const LINGER_CHECK: Duration = Duration::from_millis(10);

/// The connections lingering, and the drain's closing of connections
/// (`goaway`); cheap to clone.
#[derive(Clone, Debug)]
pub struct Lingering {
    count: Arc<watch::Sender<usize>>,
    goaway: CancellationToken,
    /// The abort handle of each open connection, by its peer's address.
    aborts: Arc<Mutex<HashMap<SocketAddr, CancellationToken>>>,
}

impl Lingering {
    pub fn new(goaway: CancellationToken) -> Self {
        Self {
            count: Arc::new(watch::Sender::new(0)),
            goaway,
            aborts: Arc::default(),
        }
    }

    /// `stream`, lingering here once dropped if it was written to.
    pub fn track(&self, stream: TcpStream) -> TrackedStream {
        let peer = stream.peer_addr().ok();
        let abort = CancellationToken::new();
        if let Some(peer) = peer {
            self.aborts
                .lock()
                .expect("aborts")
                .insert(peer, abort.clone());
        }
        TrackedStream {
            inner: Some(stream),
            lingering: self.clone(),
            wrote: false,
            silent: Some(Box::pin(self.goaway.clone().cancelled_owned())),
            peer,
            aborted: Box::pin(abort.clone().cancelled_owned()),
            abort,
        }
    }

    /// The handle that aborts the open connection from `peer`, if any.
    pub fn abort_handle(&self, peer: SocketAddr) -> Option<CancellationToken> {
        self.aborts.lock().expect("aborts").get(&peer).cloned()
    }

    /// Completes once no connection lingers.
    pub async fn settled(&self) {
        let mut rx = self.count.subscribe();
        // The sender lives in `self`, so waiting cannot fail.
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Keeps `stream` until its peer has acknowledged every byte or
    /// closes, or [`LINGER_MAX`] passes.
    fn linger(&self, mut stream: TcpStream) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.count.send_modify(|n| *n += 1);
        let done = LingerGuard(self.count.clone());
        runtime.spawn(async move {
            let _done = done;
            let _ = stream.shutdown().await;
            let until = tokio::time::Instant::now() + LINGER_MAX;
            let mut discard = [0u8; 4096];
            while unacknowledged(&stream) != Some(0) {
                tokio::select! {
                    read = stream.read(&mut discard) => {
                        if !matches!(read, Ok(1..)) {
                            return;
                        }
                    }
                    () = tokio::time::sleep(LINGER_CHECK) => {}
                    () = tokio::time::sleep_until(until) => return,
                }
            }
        });
    }
}

/// Bytes sent on `stream` that its peer has not acknowledged yet (None
/// where the system cannot tell).
#[cfg(target_os = "linux")]
fn unacknowledged(stream: &TcpStream) -> Option<usize> {
    use std::os::fd::AsRawFd;
    let mut bytes: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one c_int through the pointer, which points
    // to one; the descriptor is the stream's own, open while it lives.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &raw mut bytes) };
    (rc == 0).then(|| usize::try_from(bytes).unwrap_or(0))
}

#[cfg(not(target_os = "linux"))]
fn unacknowledged(_: &TcpStream) -> Option<usize> {
    None
}

/// Counts a lingering connection down when its task ends (or is dropped
/// with the runtime).
struct LingerGuard(Arc<watch::Sender<usize>>);

impl Drop for LingerGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// An accepted TCP connection that lingers when dropped (see the module
/// docs).
#[derive(Debug)]
pub struct TrackedStream {
    /// Always `Some` but in `drop`.
    inner: Option<TcpStream>,
    lingering: Lingering,
    /// Whether anything was written: a connection that never answered (a
    /// bare TCP connection) has nothing on its way and closes at once.
    wrote: bool,
    /// Until the client sent a byte: completes when the drain closes
    /// connections, which ends this one.
    silent: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// The client's address, under which the abort handle is registered.
    peer: Option<SocketAddr>,
    /// Completes when the connection is aborted (`abort` cancelled).
    aborted: Pin<Box<WaitForCancellationFutureOwned>>,
    abort: CancellationToken,
}

impl TrackedStream {
    /// The handle that aborts this connection (see the module docs).
    pub fn abort_token(&self) -> CancellationToken {
        self.abort.clone()
    }

    fn inner(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.inner.as_mut().expect("a stream until dropped"))
    }

    /// An error once the connection is aborted (and registers to be woken
    /// when it is).
    fn poll_aborted(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.aborted.as_mut().poll(cx).is_ready().then(|| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "client took nothing of a response for too long",
            )
        })
    }
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        if let Some(peer) = self.peer {
            self.lingering.aborts.lock().expect("aborts").remove(&peer);
        }
        let aborted = self.abort.is_cancelled();
        if let Some(stream) = self.inner.take().filter(|_| self.wrote && !aborted) {
            self.lingering.linger(stream);
        }
    }
}

impl Connected for TrackedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner
            .as_ref()
            .expect("a stream until dropped")
            .connect_info()
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.poll_aborted(cx) {
            return Poll::Ready(Err(e));
        }
        if let Some(goaway) = &mut self.silent {
            if goaway.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
        }
        let filled = buf.filled().len();
        let poll = self.inner().poll_read(cx, buf);
        if buf.filled().len() > filled {
            self.silent = None;
        }
        poll
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.poll_aborted(cx) {
            return Poll::Ready(Err(e));
        }
        self.wrote = true;
        self.inner().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.poll_aborted(cx) {
            return Poll::Ready(Err(e));
        }
        self.wrote = true;
        self.inner().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(tokio::io::AsyncWrite::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair: the tracked server side and its client.
    async fn pair(lingering: &Lingering) -> (TrackedStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"));
        let (accepted, client) = tokio::join!(listener.accept(), client);
        let (server, _) = accepted.expect("accept");
        (lingering.track(server), client.expect("connect"))
    }

    /// What was written reaches a client that keeps sending while it
    /// reads slowly, after the server side was dropped; the connection
    /// lingers until the client has acknowledged it all.
    #[tokio::test]
    async fn a_dropped_connection_lingers_until_its_client_has_everything() {
        let lingering = Lingering::new(CancellationToken::new());
        let (mut server, mut client) = pair(&lingering).await;
        let data: Vec<u8> = (0..8u32 << 20).map(|i| i.to_le_bytes()[0]).collect();
        let writer = tokio::spawn(async move {
            server.write_all(&data).await.expect("write");
            drop(server);
        });
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = client.read(&mut buf).await.expect("no reset");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            // The client talks while it reads, as HTTP/2 window updates do.
            client.write_all(b"more").await.expect("send");
            if got.len() == 64 << 10 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        writer.await.expect("writer");
        assert_eq!(got.len(), 8 << 20);
        assert!(got
            .iter()
            .zip(0u32..)
            .all(|(b, i)| *b == i.to_le_bytes()[0]));
        // Everything sent is acknowledged: it lingers no more.
        tokio::time::timeout(Duration::from_secs(5), lingering.settled())
            .await
            .expect("settles once the client has everything");
        drop(client);
    }

    #[tokio::test]
    async fn a_silent_connection_reads_its_end_when_connections_close() {
        let goaway = CancellationToken::new();
        let lingering = Lingering::new(goaway.clone());
        let (mut silent, _quiet_client) = pair(&lingering).await;
        let (mut talking, mut client) = pair(&lingering).await;
        client.write_all(b"PRI").await.expect("send");
        let mut buf = [0u8; 8];
        assert_eq!(talking.read(&mut buf).await.expect("read"), 3);
        let read = tokio::spawn(async move { silent.read(&mut buf).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!read.is_finished(), "nothing to read yet");
        goaway.cancel();
        let n = tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("woken by the drain")
            .expect("task")
            .expect("read");
        assert_eq!(n, 0, "end of stream");
        // A client that spoke keeps its connection: it reads what comes.
        client.write_all(b"X").await.expect("send");
        assert_eq!(talking.read(&mut buf).await.expect("read"), 1);
    }

    #[tokio::test]
    async fn a_connection_never_written_to_closes_at_once() {
        let lingering = Lingering::new(CancellationToken::new());
        let (server, mut client) = pair(&lingering).await;
        drop(server);
        assert_eq!(*lingering.count.borrow(), 0);
        let mut buf = [0u8; 1];
        assert_eq!(client.read(&mut buf).await.expect("eof"), 0);
    }
}
