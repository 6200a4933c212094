//! Pooled connections to one upstream: the gateway's to a unit, the sidecar's to its app.
//! HTTP/1.1 connections are kept idle between requests; with h2c one multiplexed HTTP/2
//! connection (prior knowledge) is shared by the requests that go over HTTP/2.
//!
//! Hand-written over hyper's connection API rather than hyper-util's pooled client for two
//! reasons. Failover needs the request back whenever it was not sent: hyper-util's client
//! drops it on a connect error, so a POST could only be retried by buffering its body. Here a
//! connect error or a connection found closed before sending hands the request back untouched
//! (`try_send_request`), and the body keeps streaming. And it is cheaper: hyper-util's pool
//! hashes its `(scheme, authority)` key with SipHash twice per request and sends through a
//! generic connector stack; counted in the sidecar, that was about 12,000 instructions per
//! cached read (`bench/results/2026-12-06-sidecar-read.md`). One upstream has one pool, so
//! there is no key at all.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use thiserror::Error;
use tokio::net::TcpStream;

pub mod h1;

/// The gateway's body type sent upstream.
pub type UpstreamBody = BoxBody<Bytes, BoxError>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body that can go upstream over either protocol (hyper's bounds): the gateway's
/// [`UpstreamBody`], the sidecar's axum body.
pub trait SendBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static {}

impl<B> SendBody for B where B: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static {}

/// A connection's sender.
pub enum Sender<B = UpstreamBody> {
    /// An HTTP/1.1 connection: one request at a time, back to the pool after each.
    Http1(http1::SendRequest<B>),
    /// A handle on the upstream's HTTP/2 connection: requests share it.
    Http2(http2::SendRequest<B>),
}

impl<B: SendBody> Sender<B> {
    /// Sends `request`, or hands it back when the connection turned out closed before it was
    /// sent (then it may go elsewhere, body and all).
    pub async fn try_send_request(
        &mut self,
        request: http::Request<B>,
    ) -> Result<http::Response<Incoming>, TrySendError<http::Request<B>>> {
        match self {
            Sender::Http1(s) => s.try_send_request(request).await,
            Sender::Http2(s) => s.try_send_request(request).await,
        }
    }
}

/// An upstream's answer body, from whichever client carried it: hyper's, or the
/// request-driven one ([`h1`]), which hands its connection back by itself.
pub enum AnswerBody {
    /// Read by hyper's connection task.
    Hyper(Incoming),
    /// Read by the request's own task.
    Own(h1::H1Body),
}

impl Body for AnswerBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            AnswerBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            AnswerBody::Own(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            AnswerBody::Hyper(b) => b.is_end_stream(),
            AnswerBody::Own(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            AnswerBody::Hyper(b) => b.size_hint(),
            AnswerBody::Own(b) => b.size_hint(),
        }
    }
}

/// Opening a connection failed; nothing was sent.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// TCP connect failed.
    #[error("connecting failed: {0}")]
    Io(#[from] std::io::Error),
    /// TCP connect took too long.
    #[error("connecting timed out")]
    Timeout,
    /// The HTTP/1.1 handshake failed.
    #[error("the HTTP handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
}

/// Idle connections of one kind to one upstream, the most recently used taken first, each
/// only while it has idled less than the reuse window (see [`Pool::new`]).
pub struct IdleList<T> {
    conns: Mutex<Vec<(T, Instant)>>,
    max_idle: usize,
    reuse_within: Duration,
}

impl<T> IdleList<T> {
    /// At most `max_idle` connections, each reused within `reuse_within` of its last use.
    pub fn new(max_idle: usize, reuse_within: Duration) -> IdleList<T> {
        IdleList {
            conns: Mutex::new(Vec::new()),
            max_idle,
            reuse_within,
        }
    }

    /// The most recently used connection that is still within the window and `usable`; the
    /// ones passed over are closed.
    pub fn take(&self, usable: impl Fn(&T) -> bool) -> Option<T> {
        let mut conns = self.conns.lock().expect("pool poisoned");
        while let Some((conn, since)) = conns.pop() {
            if since.elapsed() < self.reuse_within && usable(&conn) {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps a connection whose answer was read to the end (unless the list is full, or
    /// connections are never reused).
    pub fn put_back(&self, conn: T) {
        if self.reuse_within.is_zero() {
            return;
        }
        let mut conns = self.conns.lock().expect("pool poisoned");
        if conns.len() < self.max_idle {
            conns.push((conn, Instant::now()));
        }
    }

    /// Closes every idle connection.
    pub fn clear(&self) {
        self.conns.lock().expect("pool poisoned").clear();
    }

    /// How many connections are idle.
    pub fn len(&self) -> usize {
        self.conns.lock().expect("pool poisoned").len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Idle connections to one upstream.
pub struct Pool<B = UpstreamBody> {
    idle: IdleList<http1::SendRequest<B>>,
    http2: Mutex<Option<http2::SendRequest<B>>>,
    /// Idle connections of the request-driven client ([`h1`]).
    own: Arc<h1::Idle>,
}

/// A connection checked out of the pool (or freshly opened).
pub struct Checkout<B = UpstreamBody> {
    /// The sender.
    pub sender: Sender<B>,
    /// Whether it came from the pool (an error on it says less about the upstream's health).
    pub reused: bool,
}

impl<B: SendBody> Pool<B> {
    /// An empty pool keeping at most `max_idle` connections, each reused only while it has
    /// idled less than `reuse_within`.
    ///
    /// `reuse_within` must end before the upstream's own keep-alive timeout does. A server
    /// closes an idle connection without reading what arrives on it, so a request written just
    /// as it closes is lost; one that is not safe to repeat (a POST) then fails its client.
    /// Past the window the connection is dropped unused and the request goes over a new one.
    /// `Duration::ZERO`: never reused.
    pub fn new(max_idle: usize, reuse_within: Duration) -> Pool<B> {
        Pool {
            idle: IdleList::new(max_idle, reuse_within),
            http2: Mutex::new(None),
            own: Arc::new(h1::Idle::new(max_idle, reuse_within)),
        }
    }

    /// A connection for [`h1`]'s client: an idle one (unless `fresh`) or a new one; `true`
    /// with it when it came from the pool. Its answer's body hands it back.
    pub async fn checkout_own(
        &self,
        address: &str,
        timeout: Duration,
        fresh: bool,
    ) -> Result<(h1::Connection, bool), ConnectError> {
        if !fresh && let Some(conn) = self.own.take(h1::Connection::is_open_and_quiet) {
            return Ok((conn, true));
        }
        let stream = Box::pin(open(address, timeout)).await?;
        Ok((h1::Connection::new(stream), false))
    }

    /// Where [`h1`]'s answers hand their connections back.
    pub fn own_idle(&self) -> &Arc<h1::Idle> {
        &self.own
    }

    /// An idle connection that is ready for a request, if any.
    pub fn take_idle(&self) -> Option<http1::SendRequest<B>> {
        self.idle.take(http1::SendRequest::is_ready)
    }

    /// Returns a connection whose response has been read completely (an HTTP/2 handle is
    /// simply dropped: the connection stays shared).
    pub fn put_back(&self, sender: Sender<B>) {
        let Sender::Http1(sender) = sender else {
            return;
        };
        if !sender.is_closed() {
            self.idle.put_back(sender);
        }
    }

    /// Drops every idle connection (the upstream went out of service).
    pub fn clear(&self) {
        self.idle.clear();
        self.http2.lock().expect("pool poisoned").take();
        self.own.clear();
    }

    /// An idle connection (unless `fresh`), or a new one to `address`; `http2`: the
    /// upstream's shared HTTP/2 connection instead.
    pub async fn checkout(
        &self,
        address: &str,
        timeout: Duration,
        fresh: bool,
        http2: bool,
    ) -> Result<Checkout<B>, ConnectError> {
        // Connecting is boxed: its futures (TCP connect, the handshake) are large, and inline
        // they would make every request's future that large, copied on each move even when a
        // pooled connection is taken.
        if http2 {
            return Box::pin(self.checkout_http2(address, timeout, fresh)).await;
        }
        if !fresh && let Some(sender) = self.take_idle() {
            return Ok(Checkout {
                sender: Sender::Http1(sender),
                reused: true,
            });
        }
        Ok(Checkout {
            sender: Sender::Http1(Box::pin(connect(address, timeout)).await?),
            reused: false,
        })
    }

    async fn checkout_http2(
        &self,
        address: &str,
        timeout: Duration,
        fresh: bool,
    ) -> Result<Checkout<B>, ConnectError> {
        if !fresh
            && let Some(shared) = self
                .http2
                .lock()
                .expect("pool poisoned")
                .as_ref()
                .filter(|s| !s.is_closed())
        {
            return Ok(Checkout {
                sender: Sender::Http2(shared.clone()),
                reused: true,
            });
        }
        // Two requests may both open one here; the later one is kept, the other serves its
        // request and closes.
        let sender = connect_http2(address, timeout).await?;
        *self.http2.lock().expect("pool poisoned") = Some(sender.clone());
        Ok(Checkout {
            sender: Sender::Http2(sender),
            reused: false,
        })
    }
}

async fn open(address: &str, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| ConnectError::Timeout)??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Opens one HTTP/2 connection with prior knowledge (h2c).
async fn connect_http2<B: SendBody>(
    address: &str,
    timeout: Duration,
) -> Result<http2::SendRequest<B>, ConnectError> {
    let stream = open(address, timeout).await?;
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
        }
    });
    Ok(sender)
}

/// Opens one HTTP/1.1 connection.
pub async fn connect<B: SendBody>(
    address: &str,
    timeout: Duration,
) -> Result<http1::SendRequest<B>, ConnectError> {
    let stream = open(address, timeout).await?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    // With upgrades: after a `101` the connection becomes the upstream's end of a tunnel.
    let conn = conn.with_upgrades();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// An upstream's answer body that calls `at_end` once: with `true` when it was read to the end,
/// or with `false` when it is dropped before (a client that went away). A body the server never
/// polls (HEAD, 204, 304) counts as read when nothing of it was left.
pub struct AtEnd<F: FnOnce(bool) + Unpin, B: Body + Unpin = Incoming> {
    inner: B,
    at_end: Option<F>,
}

impl<F: FnOnce(bool) + Unpin, B: Body + Unpin> AtEnd<F, B> {
    /// `inner`, with `at_end` called when it ends or is dropped.
    pub fn new(inner: B, at_end: F) -> AtEnd<F, B> {
        AtEnd {
            inner,
            at_end: Some(at_end),
        }
    }

    fn end(&mut self, complete: bool) {
        if let Some(at_end) = self.at_end.take() {
            at_end(complete);
        }
    }
}

impl<F: FnOnce(bool) + Unpin, B: Body + Unpin> Body for AtEnd<F, B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = r {
            self.end(true);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<F: FnOnce(bool) + Unpin, B: Body + Unpin> Drop for AtEnd<F, B> {
    fn drop(&mut self) {
        let complete = self.inner.is_end_stream();
        self.end(complete);
    }
}

/// An upstream's answer body that hands its connection back to `pool` once read to the end. A
/// connection whose answer was not read completely is never reused: what is left of the answer
/// would be read as the next one's.
pub fn returning<B: SendBody>(
    inner: Incoming,
    sender: Sender<B>,
    pool: Arc<Pool<B>>,
) -> AtEnd<impl FnOnce(bool) + Unpin> {
    AtEnd::new(inner, move |complete| {
        if complete {
            pool.put_back(sender);
        }
    })
}
