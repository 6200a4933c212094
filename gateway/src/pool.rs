//! Pooled HTTP/1.1 connections to one unit.
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
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::TcpStream;

/// The body type sent to units.
pub type UpstreamBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A pooled connection's sender.
pub type Sender = SendRequest<UpstreamBody>;

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
    idle: Mutex<Vec<(Sender, Instant)>>,
    max_idle: usize,
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
        }
    }

    /// An idle connection that is ready for a request, if any.
    pub fn take_idle(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().expect("pool poisoned");
        while let Some((s, since)) = idle.pop() {
            if s.is_ready() && since.elapsed() < MAX_IDLE {
                return Some(s);
            }
        }
        None
    }

    /// Returns a connection whose response has been read completely.
    pub fn put_back(&self, sender: Sender) {
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
    }

    /// An idle connection (unless `fresh`), or a new one to `address`.
    pub async fn checkout(
        &self,
        address: &str,
        timeout: Duration,
        fresh: bool,
    ) -> Result<Checkout, ConnectError> {
        if !fresh && let Some(sender) = self.take_idle() {
            return Ok(Checkout {
                sender,
                reused: true,
            });
        }
        Ok(Checkout {
            sender: connect(address, timeout).await?,
            reused: false,
        })
    }
}

/// Opens one HTTP/1.1 connection.
pub async fn connect(address: &str, timeout: Duration) -> Result<Sender, ConnectError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| ConnectError::Timeout)??;
    stream.set_nodelay(true)?;
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
