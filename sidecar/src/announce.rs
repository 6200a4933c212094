//! Announcing committed changes to the other units (PostgreSQL `NOTIFY`), after the change's
//! commit and many changes in one notifying transaction.
//!
//! Why not inside the write's own transaction, as one statement would be simplest:
//! PostgreSQL takes one global lock for a notifying commit and holds it through that commit's
//! WAL flush, so notifying writes commit one after another and never share a flush (no group
//! commit). Measured on 2 CPUs, the sidecar's own write statement ran 2.1–2.5× faster without
//! its `pg_notify` at 32 clients, 12–14× with the CPU busy. Here each write commits alone
//! (and group-commits with its neighbours); the announcer then sends every change waiting at
//! that moment in one transaction. A transaction that only notifies flushes no WAL (PostgreSQL
//! 15: `pg_stat_wal.wal_sync` stays put over 50 of them, and moves 50 for 50 inserts), so it
//! holds the lock only for the moment of queueing the notifications.
//!
//! What a write promises is unchanged: the caller waits for its announcement, so a write is
//! acknowledged only after both its commit and its notification. Writes of one session are
//! serialised by the tier's per-session lock, so their announcements go out in order.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::connections::Connections;
use crate::metrics::Metrics;
use crate::store::{INVALIDATION_CHANNEL, Invalidation};

/// Most changes one notifying transaction carries (each payload is about 45 bytes; PostgreSQL's
/// notification queue takes 8000 bytes per notification and 8 GB in all).
const MAX_BATCH: usize = 1024;

/// How long an announcement is retried while PostgreSQL cannot take it. Past that the change
/// (committed already) is acknowledged unannounced and counted: the other units' listeners
/// have then most likely lost PostgreSQL too, and drop their whole cache when they reconnect;
/// where not, the generation cookie and the conditional writes still keep stale state out.
const RETRY_FOR: Duration = Duration::from_secs(2);

struct Pending {
    payload: String,
    sent: oneshot::Sender<()>,
}

/// The handle the store announces through; cheap to clone.
#[derive(Clone)]
pub struct Announcer {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Announcer {
    /// Starts the announcing task on the current Tokio runtime. It ends once every handle is
    /// dropped and the queue is empty.
    pub fn start(connections: Connections, metrics: Arc<Metrics>) -> Announcer {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(connections, rx, metrics));
        Announcer { queue }
    }

    /// Announces committed changes and waits until they went out (or were given up, see
    /// [`RETRY_FOR`]).
    pub async fn announce(&self, changes: impl IntoIterator<Item = Invalidation>) {
        let mut waits = Vec::new();
        for change in changes {
            let (sent, wait) = oneshot::channel();
            let pending = Pending {
                payload: change.payload(),
                sent,
            };
            if self.queue.send(pending).is_ok() {
                waits.push(wait);
            }
        }
        for wait in waits {
            let _ = wait.await;
        }
    }
}

/// Sends whatever is queued, one batch at a time: while a batch is in flight the next one
/// gathers, so the batch grows with the write rate and a lone write waits for nobody.
async fn run(
    connections: Connections,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let payloads: Vec<&str> = batch.iter().map(|p| p.payload.as_str()).collect();
        let announced = send_retrying(&connections, &payloads, &metrics).await;
        metrics.announced(payloads.len() as u64, announced);
        for p in batch.drain(..) {
            let _ = p.sent.send(());
        }
    }
}

async fn send_retrying(connections: &Connections, payloads: &[&str], metrics: &Metrics) -> bool {
    let give_up = tokio::time::Instant::now() + RETRY_FOR;
    let mut backoff = Duration::from_millis(20);
    loop {
        metrics.db_query("announce");
        match send(connections, payloads).await {
            Ok(()) => return true,
            Err(e) => {
                metrics.db_error("announce");
                if tokio::time::Instant::now() + backoff > give_up {
                    tracing::warn!(error = %e, changes = payloads.len(),
                        "could not announce committed changes to the other units; they rely on the generation cookie and a full cache drop when their listener reconnects");
                    return false;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    }
}

/// One statement, so one round trip and one implicit transaction for the whole batch.
async fn send(connections: &Connections, payloads: &[&str]) -> Result<(), sqlx::Error> {
    let statement = sqlx::query("SELECT count(pg_notify($1, p)) FROM unnest($2::text[]) AS p")
        .bind(INVALIDATION_CHANNEL)
        .bind(payloads);
    connections
        .run(async |c| statement.fetch_one(c).await)
        .await
        .map(|_| ())
}
