//! Connections to one unit: pooled HTTP/1.1 connections, and with `--app-protocol h2c` one
//! multiplexed HTTP/2 connection (prior knowledge) for requests that arrived over HTTP/2.
//!
//! Hand-written over hyper's connection API rather than hyper-util's pooled client because
//! failover needs the request back whenever it was not sent: hyper-util's client drops it on a
//! connect error, so a POST could only be retried by buffering its body. Here a connect error
//! or a connection found closed before sending hands the request back untouched
//! (`try_send_request`), and the body keeps streaming.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use thiserror::Error;
use tokio::net::TcpStream;

/// The body type sent to units.
pub type UpstreamBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A connection's sender.
pub enum Sender {
    /// An HTTP/1.1 connection: one request at a time, back to the pool after each.
    Http1(http1::SendRequest<UpstreamBody>),
    /// A handle on the unit's HTTP/2 connection: requests share it.
    Http2(http2::SendRequest<UpstreamBody>),
}

impl Sender {
    /// Sends `request`, or hands it back when the connection turned out closed before it was
    /// sent (then it may go elsewhere, body and all).
    pub async fn try_send_request(
        &mut self,
        request: http::Request<UpstreamBody>,
    ) -> Result<http::Response<Incoming>, TrySendError<http::Request<UpstreamBody>>> {
        match self {
            Sender::Http1(s) => s.try_send_request(request).await,
            Sender::Http2(s) => s.try_send_request(request).await,
        }
    }
}

/// Connections idle longer than this are not reused: a unit's keep-alive may have closed them,
/// and a request written into a closing connection cannot safely be replayed.
const MAX_IDLE: Duration = Duration::from_secs(20);

/// Opening a connection to a unit failed; nothing was sent.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// TCP connect failed.
    #[error("connecting to the unit failed: {0}")]
    Io(#[from] std::io::Error),
    /// TCP connect took too long.
    #[error("connecting to the unit timed out")]
    Timeout,
    /// The HTTP/1.1 handshake failed.
    #[error("HTTP handshake with the unit failed: {0}")]
    Handshake(#[from] hyper::Error),
}

/// Idle connections to one unit.
pub struct Pool {
    idle: Mutex<Vec<(http1::SendRequest<UpstreamBody>, Instant)>>,
    max_idle: usize,
    http2: Mutex<Option<http2::SendRequest<UpstreamBody>>>,
}

/// A connection checked out of the pool (or freshly opened).
pub struct Checkout {
    /// The sender.
    pub sender: Sender,
    /// Whether it came from the pool (an error on it says less about the unit's health).
    pub reused: bool,
}

impl Pool {
    /// An empty pool keeping at most `max_idle` connections.
    pub fn new(max_idle: usize) -> Pool {
        Pool {
            idle: Mutex::new(Vec::new()),
            max_idle,
            http2: Mutex::new(None),
        }
    }

    /// An idle connection that is ready for a request, if any.
    pub fn take_idle(&self) -> Option<http1::SendRequest<UpstreamBody>> {
        let mut idle = self.idle.lock().expect("pool poisoned");
        while let Some((s, since)) = idle.pop() {
            if s.is_ready() && since.elapsed() < MAX_IDLE {
                return Some(s);
            }
        }
        None
    }

    /// Returns a connection whose response has been read completely (an HTTP/2 handle is
    /// simply dropped: the connection stays shared).
    pub fn put_back(&self, sender: Sender) {
        let Sender::Http1(sender) = sender else {
            return;
        };
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("pool poisoned");
        if idle.len() < self.max_idle {
            idle.push((sender, Instant::now()));
        }
    }

    /// Drops every idle connection (the unit went out of service).
    pub fn clear(&self) {
        self.idle.lock().expect("pool poisoned").clear();
        self.http2.lock().expect("pool poisoned").take();
    }

    /// An idle connection (unless `fresh`), or a new one to `address`; `http2`: the unit's
    /// shared HTTP/2 connection instead.
    pub async fn checkout(
        &self,
        address: &str,
        timeout: Duration,
        fresh: bool,
        http2: bool,
    ) -> Result<Checkout, ConnectError> {
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
    ) -> Result<Checkout, ConnectError> {
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
async fn connect_http2(
    address: &str,
    timeout: Duration,
) -> Result<http2::SendRequest<UpstreamBody>, ConnectError> {
    let stream = open(address, timeout).await?;
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "unit HTTP/2 connection ended with an error");
        }
    });
    Ok(sender)
}

/// Opens one HTTP/1.1 connection.
pub async fn connect(
    address: &str,
    timeout: Duration,
) -> Result<http1::SendRequest<UpstreamBody>, ConnectError> {
    let stream = open(address, timeout).await?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    // With upgrades: after a `101` the connection becomes the unit's end of a tunnel.
    let conn = conn.with_upgrades();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "unit connection ended with an error");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    //! Against `testkit`'s fake unit on loopback (a hyper server that can close idle
    //! connections after a header read timeout, as a sidecar does).

    use super::*;
    use http_body_util::BodyExt as _;
    use stickyfarm_testkit::FakeUnit;

    fn get() -> http::Request<UpstreamBody> {
        http::Request::get("/cart")
            .header(http::header::HOST, "shop")
            .body(crate::proxy::forward::full_body(Bytes::new()))
            .unwrap()
    }

    /// One request over `sender`, its body read; the connection goes back to `pool`. The
    /// fake unit echoes the path it got.
    async fn exchange(pool: &Pool, mut sender: Sender) {
        let answer = sender.try_send_request(get()).await.expect("answered");
        assert_eq!(answer.status(), 200);
        let body = answer.into_body().collect().await.expect("body").to_bytes();
        let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(echo["path"], "/cart");
        pool.put_back(sender);
    }

    async fn checkout(pool: &Pool, unit: &FakeUnit) -> Checkout {
        pool.checkout(&unit.addr.to_string(), Duration::from_secs(5), false, false)
            .await
            .expect("connected")
    }

    #[tokio::test]
    async fn a_connection_whose_answer_was_read_is_reused() {
        let unit = FakeUnit::start("web-0").await;
        let pool = Pool::new(4);
        for round in 0..3 {
            let c = checkout(&pool, &unit).await;
            assert_eq!(c.reused, round > 0, "round {round}");
            exchange(&pool, c.sender).await;
        }
        assert_eq!(unit.connections_accepted(), 1);
        assert_eq!(unit.count("GET"), 3);
    }

    #[tokio::test]
    async fn an_idle_connection_the_unit_closed_is_never_handed_out() {
        let unit = FakeUnit::closing_idle_after("web-0", Duration::from_millis(30)).await;
        let pool = Pool::new(4);
        let c = checkout(&pool, &unit).await;
        exchange(&pool, c.sender).await;
        // The unit closes it while it idles in the pool; the close arrives.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let c = checkout(&pool, &unit).await;
        assert!(!c.reused, "the closed connection was handed out");
        exchange(&pool, c.sender).await;
        assert_eq!(unit.connections_accepted(), 2);
    }

    #[tokio::test]
    async fn a_request_into_a_connection_found_closed_comes_back_unsent() {
        // Closes every connection before any request head arrives.
        let unit = FakeUnit::closing_idle_after("web-0", Duration::ZERO).await;
        let mut sender = Sender::Http1(
            connect(&unit.addr.to_string(), Duration::from_secs(5))
                .await
                .unwrap(),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut e = sender
            .try_send_request(get())
            .await
            .expect_err("the unit closed the connection");
        let request = e
            .take_message()
            .expect("the request comes back: it was never written");
        assert_eq!(request.uri(), "/cart");
        assert_eq!(unit.count("GET"), 0);
    }
}
