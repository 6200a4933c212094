//! Generation checks of failed-over sessions: on a connection of their own, many to a
//! statement.
//!
//! A failed-over request that finds a warm copy asks PostgreSQL for the session's generation
//! before the copy is served (`SessionTier::warm_copy_locked`). Those checks come exactly when a
//! unit has died: its sessions reach their backups together, while the backups' pools are busy
//! with their own writes. On the shared pool a check that found no idle connection waited for a
//! new one to be opened: about 50 ms on the bench's busy machine, the slowest checks
//! (`bench/results/2026-12-05-spread-failover.md`). Here a check never waits behind writes or a
//! connection's set-up: the connection is opened at start and kept, and every check waiting at
//! one moment goes in one statement, so a unit's worth of failovers costs a few round trips,
//! not one each. A client cannot make more checks than failovers: each takes the session's warm
//! copy, so a forged instance cookie finds none the second time.
//!
//! A check is answered by a statement that started after it was queued, so it sees every
//! commit made before it asked. When PostgreSQL takes no connection within the acquire timeout
//! the check is answered "unreachable" at once (the shared pool would wait as long again); when
//! the statement fails otherwise, twice, "ask again", and the caller asks on the shared pool, so
//! those errors are reported as before.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use stickyfarm_api::StoredId;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::connections::Connections;
use crate::metrics::Metrics;

/// The `application_name` of the checks' connection (so it can be told apart in
/// `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "stickyfarm-sidecar-checks";

/// Most sessions one statement checks.
const MAX_BATCH: usize = 1024;

/// What a generation check came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// The session's generation; `None` when it has no row.
    Generation(Option<u64>),
    /// PostgreSQL took no connection within the acquire timeout.
    Unreachable,
    /// The statement failed: ask on another connection.
    AskAgain,
}

struct Check {
    id: Uuid,
    answer: oneshot::Sender<Checked>,
}

/// The handle the store checks through; cheap to clone.
#[derive(Clone)]
pub struct GenerationChecks {
    queue: mpsc::UnboundedSender<Check>,
}

impl GenerationChecks {
    /// Starts the checking task on the current Tokio runtime, over `connections` (of a pool of
    /// one connection that is never closed for idleness or age). It ends once every handle is
    /// dropped.
    pub fn start(connections: Connections, metrics: Arc<Metrics>) -> GenerationChecks {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(connections, rx, metrics));
        GenerationChecks { queue }
    }

    /// The session's generation in PostgreSQL.
    pub async fn generation(&self, id: StoredId) -> Checked {
        let (answer, wait) = oneshot::channel();
        let check = Check {
            id: id.as_uuid(),
            answer,
        };
        if self.queue.send(check).is_err() {
            return Checked::AskAgain;
        }
        wait.await.unwrap_or(Checked::AskAgain)
    }
}

/// Opens the connection, then checks whatever is queued, one batch at a time: while a batch
/// is in flight the next one gathers, so a lone check waits for nobody and a burst shares its
/// round trips.
async fn run(
    connections: Connections,
    mut rx: mpsc::UnboundedReceiver<Check>,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::new();
    // Opened before the first failover needs it. A check that comes first (PostgreSQL was
    // unreachable until then) opens it itself, and is not kept waiting behind this.
    tokio::select! {
        biased;
        n = rx.recv_many(&mut batch, MAX_BATCH) => {
            if n == 0 {
                return;
            }
            check(&connections, &mut batch, &metrics).await;
        }
        () = open(&connections) => {}
    }
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        check(&connections, &mut batch, &metrics).await;
    }
}

/// Opens the pool's connection, retrying until PostgreSQL takes it.
async fn open(connections: &Connections) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match connections.acquire().await {
            Ok(connection) => return connection.finished(),
            Err(e) => {
                tracing::debug!(error = %e, "opening the generation checks' connection failed; retrying");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Answers every check of `batch` (and empties it).
async fn check(connections: &Connections, batch: &mut Vec<Check>, metrics: &Metrics) {
    let ids: Vec<Uuid> = batch.iter().map(|c| c.id).collect();
    let found = query_retrying(connections, &ids, metrics).await;
    for check in batch.drain(..) {
        let answer = match &found {
            Ok(found) => Checked::Generation(found.get(&check.id).copied()),
            Err(failed) => *failed,
        };
        let _ = check.answer.send(answer);
    }
}

/// One retry: a connection PostgreSQL closed (a restart, an idle cut) fails the first attempt,
/// and the pool opens a fresh one for the second. Not when no connection could be had at all:
/// that took the whole acquire timeout already.
async fn query_retrying(
    connections: &Connections,
    ids: &[Uuid],
    metrics: &Metrics,
) -> Result<HashMap<Uuid, u64>, Checked> {
    for attempt in 0..2 {
        metrics.db_query("generations");
        match query(connections, ids).await {
            Ok(found) => return Ok(found),
            Err(e) => {
                metrics.db_error("generations");
                tracing::debug!(error = %e, attempt, checks = ids.len(),
                    "checking generations on the checks' connection failed");
                if matches!(e, sqlx::Error::PoolTimedOut) {
                    return Err(Checked::Unreachable);
                }
            }
        }
    }
    Err(Checked::AskAgain)
}

async fn query(connections: &Connections, ids: &[Uuid]) -> Result<HashMap<Uuid, u64>, sqlx::Error> {
    let statement =
        sqlx::query_as("SELECT id, generation FROM stickyfarm_sessions WHERE id = ANY($1)")
            .bind(ids);
    let rows: Vec<(Uuid, i64)> = connections
        .run(async |c| statement.fetch_all(c).await)
        .await?;
    Ok(rows.into_iter().map(|(id, g)| (id, g as u64)).collect())
}
