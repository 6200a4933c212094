//! Generation checks of failed-over sessions: on a connection of their own, many to a
//! statement.
//!
//! A failed-over request that finds a warm copy asks PostgreSQL for the session's generation
//! before the copy is served (`SessionTier::warm_copy_locked`). Those checks come exactly when a
//! unit has died: its sessions reach their backups together, while the backups' pools are busy
//! with their own writes. On the shared pool a check that found no idle connection waited for a
//! new one to be opened, about 50 ms on the bench's busy machine (2026-12-05, failover
//! scenario), and that wait was the slowest failed-over request. Here a check never waits
//! behind writes or a connection's set-up: the connection is opened at start and kept, and
//! every check waiting at one moment goes in one statement, so a
//! unit's worth of failovers costs a few round trips, not one each.
//!
//! A check that cannot be made here (PostgreSQL refused the batch twice) is answered "ask
//! again" and the caller asks on the shared pool, so errors are reported as before.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use stickyfarm_api::StoredId;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::metrics::Metrics;

/// The `application_name` of the checks' connection (so it can be told apart in
/// `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "stickyfarm-sidecar-checks";

/// Most sessions one statement checks.
const MAX_BATCH: usize = 1024;

struct Check {
    id: Uuid,
    /// `None`: the check could not be made here.
    answer: oneshot::Sender<Option<Option<u64>>>,
}

/// The handle the store checks through; cheap to clone.
#[derive(Clone)]
pub struct GenerationChecks {
    queue: mpsc::UnboundedSender<Check>,
}

impl GenerationChecks {
    /// Starts the checking task on the current Tokio runtime, over `pool` (of one connection
    /// that is never closed for idleness or age). It ends once every handle is dropped.
    pub fn start(pool: PgPool, metrics: Arc<Metrics>) -> GenerationChecks {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, rx, metrics));
        GenerationChecks { queue }
    }

    /// The session's generation in PostgreSQL (`Some(None)`: no such row); `None` when the
    /// check could not be made here and the caller should ask on its own connection.
    pub async fn generation(&self, id: StoredId) -> Option<Option<u64>> {
        let (answer, wait) = oneshot::channel();
        self.queue
            .send(Check {
                id: id.as_uuid(),
                answer,
            })
            .ok()?;
        wait.await.ok().flatten()
    }
}

/// Opens the connection, then checks whatever is queued, one batch at a time: while a batch
/// is in flight the next one gathers, so a lone check waits for nobody and a burst shares its
/// round trips.
async fn run(pool: PgPool, mut rx: mpsc::UnboundedReceiver<Check>, metrics: Arc<Metrics>) {
    let mut batch = Vec::new();
    // Opened before the first failover needs it. A check that comes first (PostgreSQL was
    // unreachable until then) opens it itself, and is not kept waiting behind this.
    tokio::select! {
        biased;
        n = rx.recv_many(&mut batch, MAX_BATCH) => {
            if n == 0 {
                return;
            }
            check(&pool, &mut batch, &metrics).await;
        }
        () = open(&pool) => {}
    }
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        check(&pool, &mut batch, &metrics).await;
    }
}

/// Opens the pool's connection, retrying until PostgreSQL takes it.
async fn open(pool: &PgPool) {
    let mut backoff = Duration::from_millis(100);
    while let Err(e) = pool.acquire().await {
        tracing::debug!(error = %e, "opening the generation checks' connection failed; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Answers every check of `batch` (and empties it).
async fn check(pool: &PgPool, batch: &mut Vec<Check>, metrics: &Metrics) {
    let ids: Vec<Uuid> = batch.iter().map(|c| c.id).collect();
    let found = query_retrying(pool, &ids, metrics).await;
    for check in batch.drain(..) {
        let answer = found.as_ref().map(|found| found.get(&check.id).copied());
        let _ = check.answer.send(answer);
    }
}

/// One retry: a connection PostgreSQL closed (a restart, an idle cut) fails the first attempt,
/// and the pool opens a fresh one for the second.
async fn query_retrying(
    pool: &PgPool,
    ids: &[Uuid],
    metrics: &Metrics,
) -> Option<HashMap<Uuid, u64>> {
    for attempt in 0..2 {
        metrics.db_query("generations");
        match query(pool, ids).await {
            Ok(found) => return Some(found),
            Err(e) => {
                metrics.db_error("generations");
                tracing::debug!(error = %e, attempt, checks = ids.len(),
                    "checking generations on the checks' connection failed");
            }
        }
    }
    None
}

async fn query(pool: &PgPool, ids: &[Uuid]) -> Result<HashMap<Uuid, u64>, sqlx::Error> {
    let rows: Vec<(Uuid, i64)> =
        sqlx::query_as("SELECT id, generation FROM stickyfarm_sessions WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(|(id, g)| (id, g as u64)).collect())
}
