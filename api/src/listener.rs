//! Serving a listener with the limits every Stickyfarm port applies (feature `server`): a
//! cap on open connections, header size and count (431), a deadline for a request head and for
//! keep-alive idleness (slowloris), HTTP/2 stream limits (including hyper's defence against
//! rapid reset), a lingering read of request bodies answered before they were read, and a
//! graceful stop that finishes in-flight requests within a grace period. A [`Listener`] is a
//! TCP port or a Unix socket (the sidecar's session API for its app): the limits are the same
//! on both. A [`Handshake`] turns each accepted socket into the stream HTTP is spoken on: the
//! socket itself ([`Plain`]) or a TLS session (the gateway's `tls` module).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Largest request head (request line and headers); larger ones get 431. At least 8 KiB.
    pub max_header_size: usize,
    /// Most headers in one request.
    pub max_headers: usize,
    /// A client must send a request head within this, also between keep-alive requests.
    pub header_read_timeout: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Take HTTP/2 extended CONNECT (RFC 8441: WebSockets over an HTTP/2 stream), announced in
    /// the connection's settings. Only a port that translates such tunnels turns it on.
    pub extended_connect: bool,
    /// After the stop, how long open connections are kept (within the grace) before idle ones
    /// are closed: a request that arrives on one meanwhile gets the service's own answer
    /// (the sidecar's "unit stopping", which a gateway replays elsewhere) instead of a closed
    /// connection, which for a request already written is indistinguishable from a crash.
    /// Ends early when every connection has closed. Zero: idle connections close at once.
    pub drain_linger: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_header_size: 16 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(10),
            max_concurrent_streams: 100,
            extended_connect: false,
            drain_linger: Duration::ZERO,
        }
    }
}

/// The HTTP/1.1 and HTTP/2 server with `limits` applied.
pub fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut server = auto::Builder::new(TokioExecutor::new());
    server
        .http1()
        .timer(TokioTimer::new())
        // hyper answers 431 to a head larger than its read buffer (8 KiB at least).
        .max_buf_size(limits.max_header_size.max(8192))
        .max_headers(limits.max_headers)
        // Slowloris: a client that does not finish its head in time is disconnected; the same
        // deadline ends idle keep-alive connections.
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    server
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_size as u32)
        .max_concurrent_streams(limits.max_concurrent_streams)
        // Rapid reset (CVE-2023-44487): a client that keeps opening and cancelling streams is
        // sent GOAWAY once this many resets wait to be accepted.
        .max_pending_accept_reset_streams(Some(20))
        // Idle HTTP/2 connections are pinged; one that does not answer is closed.
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    if limits.extended_connect {
        server.http2().enable_connect_protocol();
    }
    server
}

/// A request body as every Stickyfarm port hands it to its service. Dropped before its end
/// (the request was refused on its declared length, or its upstream answered without reading
/// it all), the rest is read and thrown away in the background for at most [`LINGER_TIME`] and
/// [`LINGER_BYTES`], as nginx's lingering close does: the client is still writing then, and a
/// socket closed on unread data is reset, which destroys the answer (a 413, a 503) before the
/// client has read it. It sees a broken pipe instead of the reason.
#[derive(Debug)]
pub struct RequestBody {
    inner: Option<Incoming>,
}

/// How long an unread request body is read after its request was answered.
pub const LINGER_TIME: Duration = Duration::from_secs(5);
/// How much of an unread request body is read after its request was answered; a client that
/// sends more is disconnected (a reset then costs it only its own answer).
pub const LINGER_BYTES: usize = 64 * 1024 * 1024;

impl RequestBody {
    fn new(inner: Incoming) -> Self {
        RequestBody { inner: Some(inner) }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.get_mut().inner.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map(Body::size_hint).unwrap_or_default()
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let Some(mut rest) = self.inner.take().filter(|b| !b.is_end_stream()) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let _ = tokio::time::timeout(LINGER_TIME, async {
                let mut read = 0;
                while let Some(Ok(frame)) =
                    std::future::poll_fn(|cx| Pin::new(&mut rest).poll_frame(cx)).await
                {
                    read += frame.data_ref().map_or(0, |d| d.len());
                    if read > LINGER_BYTES {
                        break;
                    }
                }
            })
            .await;
        });
    }
}

/// A connection's service, handed [`RequestBody`]s instead of hyper's own.
struct Lingering<S>(S);

impl<S> Service<hyper::Request<Incoming>> for Lingering<S>
where
    S: Service<hyper::Request<RequestBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        self.0.call(req.map(RequestBody::new))
    }
}

/// Where a port's connections come from.
pub trait Listener: Send + 'static {
    /// An accepted connection.
    type Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Who connected, handed to the service and named in the logs.
    type Peer: std::fmt::Debug + Clone + Send + 'static;

    /// The next connection, set up as every port wants it.
    fn accept_socket(
        &self,
    ) -> impl std::future::Future<Output = std::io::Result<(Self::Socket, Self::Peer)>> + Send;
}

impl Listener for TcpListener {
    type Socket = TcpStream;
    type Peer = SocketAddr;

    async fn accept_socket(&self) -> std::io::Result<(TcpStream, SocketAddr)> {
        let (socket, remote) = self.accept().await?;
        // Answers are written whole; Nagle would hold their last segment for the peer's ACK.
        let _ = socket.set_nodelay(true);
        Ok((socket, remote))
    }
}

impl Listener for UnixListener {
    type Socket = UnixStream;
    type Peer = tokio::net::unix::SocketAddr;

    async fn accept_socket(&self) -> std::io::Result<(UnixStream, Self::Peer)> {
        self.accept().await
    }
}

/// What happens on an accepted socket `S` before HTTP: nothing ([`Plain`]), or a TLS
/// handshake. It runs on the connection's own task under the head deadline
/// ([`Limits::header_read_timeout`]), so a client that starts a handshake and stalls holds one
/// connection slot for that long and never the accept loop.
pub trait Handshake<S>: Send + Sync + 'static {
    /// The stream HTTP is spoken on.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Completes the handshake on `socket`.
    fn handshake(
        &self,
        socket: S,
    ) -> impl std::future::Future<Output = std::io::Result<Self::Stream>> + Send;
}

/// Plain HTTP: the socket is the stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct Plain;

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Handshake<S> for Plain {
    type Stream = S;

    async fn handshake(&self, socket: S) -> std::io::Result<S> {
        Ok(socket)
    }
}

/// Serves `listener` in plain HTTP until `stop`, then lets in-flight requests finish for up to
/// `grace`. `service(remote)` makes the service of one connection.
pub async fn serve<L, F, S, B>(
    listener: L,
    limits: Limits,
    service: F,
    stop: CancellationToken,
    grace: Duration,
) where
    L: Listener,
    F: Fn(L::Peer) -> S,
    S: Service<hyper::Request<RequestBody>, Response = hyper::Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_with(listener, limits, Arc::new(Plain), service, stop, grace).await
}

/// [`serve`] with a [`Handshake`] before HTTP on every connection.
pub async fn serve_with<L, H, F, S, B>(
    listener: L,
    limits: Limits,
    handshake: Arc<H>,
    service: F,
    stop: CancellationToken,
    grace: Duration,
) where
    L: Listener,
    H: Handshake<L::Socket>,
    F: Fn(L::Peer) -> S,
    S: Service<hyper::Request<RequestBody>, Response = hyper::Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let server = Arc::new(builder(&limits));
    let graceful = GracefulShutdown::new();
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        // At the cap, stop accepting (new clients wait in the kernel's queue, as HAProxy's
        // maxconn does) until a connection ends; the deadlines above keep that from lasting.
        let permit = tokio::select! {
            p = open.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.cancelled() => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept_socket() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let (server, service, handshake) =
            (server.clone(), service(remote.clone()), handshake.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(limits.header_read_timeout, handshake.handshake(stream))
                    .await
                {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, ?remote, "handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(?remote, "handshake not finished in time");
                        return;
                    }
                };
            // With upgrades: a `101` hands the connection to the service's tunnel
            // (WebSockets), which from then on is no longer this connection (see
            // `tunnel::Tunnels`).
            let conn = server
                .serve_connection_with_upgrades(TokioIo::new(stream), Lingering(service))
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, ?remote, "client connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let lingered = linger(&graceful, limits.drain_linger.min(grace)).await;
    if tokio::time::timeout(grace.saturating_sub(lingered), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish within the shutdown grace");
    }
}

/// Keeps the open connections for up to `most` after the stop (see [`Limits::drain_linger`]);
/// returns how long that took.
async fn linger(graceful: &GracefulShutdown, most: Duration) -> Duration {
    let started = tokio::time::Instant::now();
    while graceful.count() > 0 {
        let left = most.saturating_sub(started.elapsed());
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(left.min(Duration::from_millis(50))).await;
    }
    started.elapsed()
}
