//! PostgreSQL: the truth behind every cache (the patent's database 220).
//!
//! Every write is one statement, so it is one round trip and one implicit transaction: the
//! conditional table change and the session's generation bump commit together or not at all.
//! The other units learn of it from the [`Announcer`], after the commit and before the write
//! is acknowledged (why not in the same transaction: the `announce` module).

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, PgPool, Row};
use stickyfarm_api::{SessionId, SessionIdKey, StoredId, TableName, UnitName};
use thiserror::Error;
use uuid::Uuid;

use crate::announce::Announcer;
use crate::connections::Connections;
use crate::generations::{self, Checked, GenerationChecks};
use crate::json::{Doc, Structure};
use crate::metrics::Metrics;

/// PostgreSQL advisory lock keys the sidecars take (the example shop takes 7197548 for its
/// tables; each key serialises one kind of work across units).
const SWEEP_LOCK: i64 = 7_197_547;
const KEY_ADOPTION_LOCK: i64 = 7_197_549;

/// The channel on which committed changes are announced to every unit.
pub const INVALIDATION_CHANNEL: &str = "stickyfarm_session";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A PostgreSQL operation failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// PostgreSQL could not be reached or did not answer in time. Nothing was changed.
    #[error("PostgreSQL is unavailable ({0}); retry once the database is reachable again")]
    Unavailable(#[source] sqlx::Error),
    /// The write's precondition failed: the table is at another version.
    #[error(
        "the table changed since it was read (now {}); re-read it and retry",
        describe_version(*.current)
    )]
    Conflict {
        /// The version PostgreSQL holds; `None` when the table does not exist.
        current: Option<u64>,
    },
    /// The session does not exist (never did, expired, or was deleted).
    #[error("the session does not exist or has expired; start a new session")]
    SessionGone,
    /// PostgreSQL refused the statement for another reason (a bug or a schema mismatch).
    #[error("PostgreSQL refused the statement: {0}; check the sidecar and schema versions")]
    Database(#[source] sqlx::Error),
    /// The stored session ids were made with another key than this unit's.
    #[error(
        "the sessions in this database were stored with another session-id key (fingerprint {stored}, this unit's is {ours}): start every unit with the key they were stored with (on Kubernetes the Secret <farm>-session-id-key); to give up every stored session instead, delete the row 'session_id_key' of stickyfarm_meta"
    )]
    KeyMismatch {
        /// The fingerprint recorded in the database.
        stored: String,
        /// This unit's key's fingerprint.
        ours: String,
    },
    /// Applying the schema migrations failed.
    #[error(
        "applying the session schema failed: {0}; check that the database user may create tables"
    )]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

fn describe_version(v: Option<u64>) -> String {
    v.map_or_else(
        || "it does not exist".to_owned(),
        |v| format!("at version {v}"),
    )
}

impl StoreError {
    fn from_sqlx(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("23503") => {
                StoreError::SessionGone
            }
            // Unique or check violations and syntax errors are our bugs, not an outage.
            sqlx::Error::Database(db)
                if db
                    .code()
                    .is_some_and(|c| !c.starts_with("08") && !c.starts_with("57")) =>
            {
                StoreError::Database(e)
            }
            _ => StoreError::Unavailable(e),
        }
    }
}

/// How a write is conditioned on the table's current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteCondition {
    /// Only if the table is at this version; `0` means the table must not exist yet.
    Expect(u64),
    /// Whatever the current version (`If-Match: *`).
    Unconditional,
}

/// A committed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The table's new version (`0` after a delete).
    pub version: u64,
    /// The session's new generation.
    pub generation: u64,
}

/// One session as loaded from PostgreSQL.
#[derive(Debug, Clone)]
pub struct LoadedSession {
    /// Generation at load time.
    pub generation: u64,
    /// `(name, version, JSON text)` of every table.
    pub tables: Vec<(String, u64, Doc)>,
    /// When the session passes its absolute lifetime (Unix ms).
    pub expires_at_ms: u64,
    /// Not expired (idle or absolute); an expired session is never served.
    pub live: bool,
}

/// Session lifetime limits, enforced by PostgreSQL.
#[derive(Debug, Clone, Copy)]
pub struct Expiry {
    /// A session unused for this long is expired.
    pub idle: Duration,
    /// A session older than this is expired, however active.
    pub absolute: Duration,
}

/// An invalidation announced by a unit that committed a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// The session reached this generation.
    Generation(StoredId, u64),
    /// The session reached this generation, and the named unit is its backup, which keeps a
    /// warm copy (`crate::warm`).
    Warm(StoredId, u64, UnitName),
    /// The session was deleted.
    Deleted(StoredId),
}

impl Invalidation {
    /// The notification payload ([`Invalidation::parse`] reads it back).
    pub fn payload(&self) -> String {
        match self {
            Invalidation::Generation(id, g) => format!("{}:{g}", id.as_uuid()),
            Invalidation::Warm(id, g, backup) => format!("{}:{g}:{backup}", id.as_uuid()),
            Invalidation::Deleted(id) => format!("{}:deleted", id.as_uuid()),
        }
    }

    /// Parses a notification payload (`<stored id>:<generation>`,
    /// `<stored id>:<generation>:<backup unit>` or `<stored id>:deleted`).
    pub fn parse(payload: &str) -> Option<Self> {
        let (id, what) = payload.split_once(':')?;
        let id = StoredId::from_uuid(Uuid::try_parse(id).ok()?);
        if what == "deleted" {
            return Some(Invalidation::Deleted(id));
        }
        match what.split_once(':') {
            Some((g, backup)) => Some(Invalidation::Warm(
                id,
                g.parse().ok()?,
                backup.parse().ok()?,
            )),
            None => what.parse().ok().map(|g| Invalidation::Generation(id, g)),
        }
    }

    /// The session this is about.
    pub fn session(&self) -> StoredId {
        match self {
            Invalidation::Generation(id, _)
            | Invalidation::Warm(id, _, _)
            | Invalidation::Deleted(id) => *id,
        }
    }
}

/// One table change as `Store::run_change` sends it.
struct TableChange<'a> {
    id: StoredId,
    table: &'a TableName,
    /// The new document (`None`: delete the table).
    doc: Option<&'a str>,
    /// The version the change is conditional on (0 with an unconditional statement).
    expected: i64,
    /// The session's backup, told with the announcement.
    backup: Option<UnitName>,
}

/// The session store in PostgreSQL.
#[derive(Clone)]
pub struct Store {
    connections: Connections,
    listener_pool: PgPool,
    expiry: Expiry,
    metrics: Arc<Metrics>,
    announcer: Announcer,
    checks: GenerationChecks,
}

/// Connection settings of the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Largest number of pooled connections.
    pub max_connections: u32,
    /// How long a request waits for a connection before it answers 503.
    pub acquire_timeout: Duration,
    /// Session lifetime limits.
    pub expiry: Expiry,
}

impl Store {
    /// Creates the pool and starts the announcer (so: within a Tokio runtime). Connections are
    /// opened lazily, so a sidecar starts (and serves cached sessions, and answers 503 to
    /// writes) even while PostgreSQL is down.
    pub fn connect_lazy(
        options: PgConnectOptions,
        store: &StoreOptions,
        metrics: Arc<Metrics>,
    ) -> Store {
        // Failed-over sessions' generation checks get a connection of their own, opened now and
        // kept (the `generations` module says why).
        let checks_pool = PgPoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(store.acquire_timeout)
            // No ping first: a connection PostgreSQL closed fails one attempt and is replaced.
            .test_before_acquire(false)
            .connect_lazy_with(
                options
                    .clone()
                    .application_name(generations::APPLICATION_NAME),
            );
        let pool = PgPoolOptions::new()
            .max_connections(store.max_connections)
            .min_connections(0)
            .acquire_timeout(store.acquire_timeout)
            // Statements reuse a connection that finished less than `connections::KEEP_FOR`
            // ago without a ping; any connection sqlx hands out has been idle longer (or failed),
            // so it is pinged first, and one that died with an outage is noticed before use, not
            // by a request.
            .test_before_acquire(true)
            .connect_lazy_with(options.clone());
        // The invalidation listener holds its connection for good: outside the shared pool, so
        // it never waits behind statements, nor they behind it.
        let listener_pool = PgPoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(store.acquire_timeout)
            .connect_lazy_with(options);
        let connections = Connections::new(pool, store.max_connections, store.acquire_timeout);
        Store {
            announcer: Announcer::start(connections.clone(), metrics.clone()),
            checks: GenerationChecks::start(
                Connections::new(checks_pool, 1, store.acquire_timeout),
                metrics.clone(),
            ),
            connections,
            listener_pool,
            expiry: store.expiry,
            metrics,
        }
    }

    /// The invalidation listener's pool (of one connection).
    pub fn listener_pool(&self) -> &PgPool {
        &self.listener_pool
    }

    /// The invalidation listener lost its connection, so the others most likely went with it:
    /// the kept ones go back to sqlx, which pings each before its next use, and no request is
    /// the one to find a connection dead.
    pub fn connection_lost(&self) {
        self.connections.release_all();
    }

    /// Closes every connection to PostgreSQL (at shutdown).
    pub async fn close(&self) {
        self.connections.release_all();
        self.connections.pool().close().await;
        self.listener_pool.close().await;
    }

    /// Applies the embedded migrations (sqlx holds a PostgreSQL advisory lock meanwhile, so many
    /// sidecars starting at once apply them exactly once), then makes sure the stored ids are
    /// made with `key`: a database of an earlier version, which stored raw ids, is re-keyed
    /// once; one whose ids were made with another key is refused
    /// ([`StoreError::KeyMismatch`]) rather than served as if it held no sessions.
    pub async fn migrate(&self, key: &SessionIdKey) -> Result<(), StoreError> {
        let mut conn = self
            .connections
            .acquire()
            .await
            .map_err(StoreError::from_sqlx)?;
        MIGRATOR.run(&mut *conn).await?;
        conn.finished();
        self.adopt_key(key).await
    }

    async fn adopt_key(&self, key: &SessionIdKey) -> Result<(), StoreError> {
        let ours = key.fingerprint();
        // Once, at start: the connection goes back to sqlx afterwards (never kept), which also
        // rolls back the transaction an early return leaves open.
        let mut conn = self
            .connections
            .acquire()
            .await
            .map_err(StoreError::from_sqlx)?;
        let mut tx = conn.begin().await.map_err(StoreError::from_sqlx)?;
        // One unit at a time: the others wait here and then find the key recorded.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(KEY_ADOPTION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from_sqlx)?;
        let recorded = sqlx::query_scalar::<_, String>(
            "SELECT value FROM stickyfarm_meta WHERE name = 'session_id_key'",
        )
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::from_sqlx)?;
        match recorded {
            Some(stored) if stored == ours => return Ok(()),
            Some(stored) => return Err(StoreError::KeyMismatch { stored, ours }),
            None => {}
        }
        // No key recorded: the rows (if any) hold raw ids, as earlier versions stored them.
        let raw: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM stickyfarm_sessions")
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::from_sqlx)?;
        if !raw.is_empty() {
            let stored: Vec<Uuid> = raw
                .iter()
                .map(|u| key.stored(&SessionId::from_uuid(*u)).as_uuid())
                .collect();
            // The tables follow their session (ON UPDATE CASCADE).
            sqlx::query(
                "UPDATE stickyfarm_sessions s SET id = k.stored
                   FROM unnest($1::uuid[], $2::uuid[]) AS k(raw, stored)
                  WHERE s.id = k.raw",
            )
            .bind(&raw)
            .bind(&stored)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from_sqlx)?;
            tracing::info!(
                sessions = raw.len(),
                "re-keyed the stored session ids of an earlier version"
            );
        }
        sqlx::query("INSERT INTO stickyfarm_meta (name, value) VALUES ('session_id_key', $1)")
            .bind(&ours)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from_sqlx)?;
        tx.commit().await.map_err(StoreError::from_sqlx)
    }

    fn observe<T>(&self, op: &'static str, r: Result<T, sqlx::Error>) -> Result<T, StoreError> {
        self.metrics.db_query(op);
        r.map_err(|e| {
            self.metrics.db_error(op);
            StoreError::from_sqlx(e)
        })
    }

    /// Checks that PostgreSQL answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let r = self
            .connections
            .run(async |c| sqlx::query("SELECT 1").execute(c).await)
            .await;
        self.observe("ping", r).map(|_| ())
    }

    /// Inserts a new, empty session; `false` when a row with this id exists already (live or
    /// expired: the caller decides).
    pub async fn create_session(&self, id: StoredId, created_by: &str) -> Result<bool, StoreError> {
        let query = sqlx::query(
            "INSERT INTO stickyfarm_sessions (id, created_by) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id.as_uuid())
        .bind(created_by);
        let r = self.connections.run(async |c| query.execute(c).await).await;
        self.observe("create_session", r)
            .map(|r| r.rows_affected() == 1)
    }

    /// Loads a session with all its tables, in one consistent snapshot; `live` is false when it
    /// exists but expired (not swept yet): its id is spent.
    pub async fn load_session(&self, id: StoredId) -> Result<Option<LoadedSession>, StoreError> {
        let query = sqlx::query(
            "SELECT s.generation, t.name, t.version, t.doc::text AS doc,
                    (extract(epoch FROM s.created_at + make_interval(secs => $3)) * 1000)::bigint,
                    s.last_seen > now() - make_interval(secs => $2)
                      AND s.created_at > now() - make_interval(secs => $3) AS live
               FROM stickyfarm_sessions s
               LEFT JOIN stickyfarm_session_tables t ON t.session_id = s.id
              WHERE s.id = $1",
        )
        .bind(id.as_uuid())
        .bind(self.expiry.idle.as_secs_f64())
        .bind(self.expiry.absolute.as_secs_f64());
        let r = self
            .connections
            .run(async |c| query.fetch_all(c).await)
            .await;
        let rows = self.observe("load_session", r)?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let generation = first.get::<i64, _>(0) as u64;
        let expires_at_ms = first.get::<i64, _>(4).max(0) as u64;
        let live = first.get::<bool, _>(5);
        let mut tables = Vec::with_capacity(rows.len());
        for row in rows.iter().filter(|_| live) {
            if let Some(name) = row.get::<Option<String>, _>(1) {
                let doc = compact_jsonb_text(row.get::<String, _>(3));
                tables.push((name, row.get::<i64, _>(2) as u64, doc));
            }
        }
        Ok(Some(LoadedSession {
            generation,
            tables,
            expires_at_ms,
            live,
        }))
    }

    /// The current generation of a session; asked on the generation checks' own connection
    /// ([`GenerationChecks`]), and on the shared pool when that cannot answer.
    pub async fn generation(&self, id: StoredId) -> Result<Option<u64>, StoreError> {
        match self.checks.generation(id).await {
            Checked::Generation(generation) => return Ok(generation),
            // The shared pool would wait as long again for a connection.
            Checked::Unreachable => return Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut)),
            Checked::AskAgain => {}
        }
        let query = sqlx::query_scalar::<_, i64>(
            "SELECT generation FROM stickyfarm_sessions WHERE id = $1",
        )
        .bind(id.as_uuid());
        let r = self
            .connections
            .run(async |c| query.fetch_optional(c).await)
            .await;
        self.observe("generation", r).map(|g| g.map(|g| g as u64))
    }

    /// Announces a change that was made without a write (a session's backup told of the
    /// generation it should keep warm).
    pub async fn announce(&self, change: Invalidation) {
        self.announcer.announce([change]).await;
    }

    /// Writes one table, conditionally, bumps the session generation and announces it (with
    /// the session's backup, when a request named one).
    pub async fn write_table(
        &self,
        id: StoredId,
        table: &TableName,
        doc: &str,
        condition: WriteCondition,
        backup: Option<UnitName>,
    ) -> Result<Committed, StoreError> {
        let expected = match condition {
            WriteCondition::Expect(v) => v as i64,
            WriteCondition::Unconditional => 0,
        };
        let sql = match condition {
            WriteCondition::Expect(0) => &*INSERT_NEW,
            WriteCondition::Expect(_) => &*UPDATE_AT_VERSION,
            WriteCondition::Unconditional => &*UPSERT,
        };
        let change = TableChange {
            id,
            table,
            doc: Some(doc),
            expected,
            backup,
        };
        self.run_change("write_table", sql, change).await
    }

    /// Deletes one table, conditionally, bumps the session generation and announces it.
    pub async fn delete_table(
        &self,
        id: StoredId,
        table: &TableName,
        condition: WriteCondition,
        backup: Option<UnitName>,
    ) -> Result<Committed, StoreError> {
        let sql = match condition {
            WriteCondition::Expect(_) => &*DELETE_AT_VERSION,
            WriteCondition::Unconditional => &*DELETE_ANY,
        };
        let expected = match condition {
            WriteCondition::Expect(v) => v as i64,
            WriteCondition::Unconditional => 0,
        };
        let change = TableChange {
            id,
            table,
            doc: None,
            expected,
            backup,
        };
        self.run_change("delete_table", sql, change).await
    }

    async fn run_change(
        &self,
        op: &'static str,
        sql: &'static str,
        change: TableChange<'_>,
    ) -> Result<Committed, StoreError> {
        let TableChange {
            id,
            table,
            doc,
            expected,
            backup,
        } = change;
        let started = Instant::now();
        let query = sqlx::query(sql)
            .bind(id.as_uuid())
            .bind(table.as_str())
            .bind(doc)
            .bind(expected)
            .bind(self.expiry.idle.as_secs_f64())
            .bind(self.expiry.absolute.as_secs_f64());
        let r = self
            .connections
            .run(async |c| query.fetch_optional(c).await)
            .await;
        let row = self.observe(op, r)?;
        if let Some(row) = row {
            let done = Committed {
                version: row.get::<i64, _>(0) as u64,
                generation: row.get::<i64, _>(1) as u64,
            };
            let change = match backup {
                Some(backup) => Invalidation::Warm(id, done.generation, backup),
                None => Invalidation::Generation(id, done.generation),
            };
            self.announcer.announce([change]).await;
            self.metrics.write_through(started.elapsed().as_secs_f64());
            return Ok(done);
        }
        // Nothing changed: find out whether the session is gone or the version moved on.
        let query = sqlx::query(
            "SELECT (SELECT version FROM stickyfarm_session_tables WHERE session_id = $1 AND name = $2),
                    EXISTS (SELECT 1 FROM stickyfarm_sessions
                             WHERE id = $1
                               AND last_seen > now() - make_interval(secs => $3)
                               AND created_at > now() - make_interval(secs => $4))",
        )
        .bind(id.as_uuid())
        .bind(table.as_str())
        .bind(self.expiry.idle.as_secs_f64())
        .bind(self.expiry.absolute.as_secs_f64());
        let r = self
            .connections
            .run(async |c| query.fetch_one(c).await)
            .await;
        let row = self.observe("explain_refusal", r)?;
        if !row.get::<bool, _>(1) {
            return Err(StoreError::SessionGone);
        }
        Err(StoreError::Conflict {
            current: row.get::<Option<i64>, _>(0).map(|v| v as u64),
        })
    }

    /// Moves a live session to a new id (OWASP's id rotation on sign-in and sign-out): the new
    /// session keeps the tables, versions, generation and creation time (rotation never
    /// extends the absolute lifetime); the old id is deleted and announced like a logout, in
    /// one transaction. `false` when the old session is gone or expired.
    pub async fn rotate_session(
        &self,
        old: StoredId,
        new: StoredId,
        created_by: &str,
    ) -> Result<bool, StoreError> {
        let r: Result<bool, sqlx::Error> = self
            .connections
            .run(async |c| {
                let mut tx = c.begin().await?;
                let moved = sqlx::query(
                "INSERT INTO stickyfarm_sessions (id, generation, created_at, last_seen, created_by)
                 SELECT $2, generation, created_at, now(), $3 FROM stickyfarm_sessions
                  WHERE id = $1
                    AND last_seen > now() - make_interval(secs => $4)
                    AND created_at > now() - make_interval(secs => $5)
                 FOR UPDATE",
            )
            .bind(old.as_uuid())
            .bind(new.as_uuid())
            .bind(created_by)
            .bind(self.expiry.idle.as_secs_f64())
            .bind(self.expiry.absolute.as_secs_f64())
            .execute(&mut *tx)
            .await?
            .rows_affected();
                if moved == 0 {
                    // Ended here, so the connection is kept clean for the next statement.
                    tx.rollback().await?;
                    return Ok(false);
                }
                sqlx::query(
                "INSERT INTO stickyfarm_session_tables (session_id, name, version, doc, updated_at)
                 SELECT $2, name, version, doc, updated_at FROM stickyfarm_session_tables
                  WHERE session_id = $1",
            )
            .bind(old.as_uuid())
            .bind(new.as_uuid())
            .execute(&mut *tx)
            .await?;
                sqlx::query("DELETE FROM stickyfarm_sessions WHERE id = $1")
                    .bind(old.as_uuid())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(true)
            })
            .await;
        let moved = self.observe("rotate_session", r)?;
        if moved {
            self.announcer.announce([Invalidation::Deleted(old)]).await;
        }
        Ok(moved)
    }

    /// Deletes a session and everything in it, and announces it. Returns whether it existed.
    pub async fn delete_session(&self, id: StoredId) -> Result<bool, StoreError> {
        let query = sqlx::query("DELETE FROM stickyfarm_sessions WHERE id = $1").bind(id.as_uuid());
        let r = self.connections.run(async |c| query.execute(c).await).await;
        let existed = self.observe("delete_session", r)?.rows_affected() > 0;
        if existed {
            self.announcer.announce([Invalidation::Deleted(id)]).await;
        }
        Ok(existed)
    }

    /// Marks sessions as used now (batched by the caller, so a cached read costs no query).
    /// Returns the ids that still exist: the others were deleted (a logout on another unit, a
    /// sweep), which the caller learns here even when a notification was missed.
    pub async fn touch(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
        let query = sqlx::query_scalar::<_, Uuid>(
            "UPDATE stickyfarm_sessions SET last_seen = now() WHERE id = ANY($1) RETURNING id",
        )
        .bind(ids);
        let r = self
            .connections
            .run(async |c| query.fetch_all(c).await)
            .await;
        self.observe("touch", r)
    }

    /// How long sessions live.
    pub fn expiry(&self) -> Expiry {
        self.expiry
    }

    /// Deletes expired sessions, at most `batch` at a time, and announces each deletion so no
    /// unit keeps serving a swept session from its cache. Returns how many were deleted.
    ///
    /// Only one sidecar sweeps at a time (a transaction-scoped advisory lock); the others skip.
    pub async fn sweep_expired(&self, batch: i64) -> Result<u64, StoreError> {
        let query = sqlx::query_scalar::<_, Uuid>(
            "WITH lock AS (SELECT pg_try_advisory_xact_lock($4) AS got),
                  doomed AS (
                    SELECT id FROM stickyfarm_sessions
                     WHERE (SELECT got FROM lock)
                       AND (last_seen < now() - make_interval(secs => $1)
                            OR created_at < now() - make_interval(secs => $2))
                     LIMIT $3
                     FOR UPDATE SKIP LOCKED),
                  d AS (DELETE FROM stickyfarm_sessions s USING doomed WHERE s.id = doomed.id
                        RETURNING s.id)
             SELECT d.id FROM d",
        )
        .bind(self.expiry.idle.as_secs_f64())
        .bind(self.expiry.absolute.as_secs_f64())
        .bind(batch)
        .bind(SWEEP_LOCK);
        let r = self
            .connections
            .run(async |c| query.fetch_all(c).await)
            .await;
        let swept = self.observe("sweep", r)?;
        self.announcer
            .announce(
                swept
                    .iter()
                    .map(|id| Invalidation::Deleted(StoredId::from_uuid(*id))),
            )
            .await;
        Ok(swept.len() as u64)
    }
}

// Each write is one statement: `live` (the session, if unexpired), `t` (the conditional table
// change), then `s` (generation bump). Parameters: $1 session, $2 table,
// $3 document, $4 expected version, $5 idle and $6 absolute timeout in seconds.
static INSERT_NEW: LazyLock<String> = LazyLock::new(|| {
    change_sql(
        "INSERT INTO stickyfarm_session_tables (session_id, name, version, doc)
         SELECT $1, $2, 1, $3::jsonb FROM live
          WHERE $4::bigint = 0
         ON CONFLICT (session_id, name) DO NOTHING
         RETURNING version",
    )
});
static UPDATE_AT_VERSION: LazyLock<String> = LazyLock::new(|| {
    change_sql(
        "UPDATE stickyfarm_session_tables
            SET doc = $3::jsonb, version = version + 1, updated_at = now()
          WHERE session_id = $1 AND name = $2 AND version = $4
            AND EXISTS (SELECT 1 FROM live)
         RETURNING version",
    )
});
static UPSERT: LazyLock<String> = LazyLock::new(|| {
    change_sql(
        "INSERT INTO stickyfarm_session_tables (session_id, name, version, doc)
         SELECT $1, $2, 1, $3::jsonb FROM live
          WHERE $4::bigint IS NOT NULL
         ON CONFLICT (session_id, name) DO UPDATE
            SET doc = EXCLUDED.doc,
                version = stickyfarm_session_tables.version + 1,
                updated_at = now()
         RETURNING version",
    )
});
static DELETE_AT_VERSION: LazyLock<String> = LazyLock::new(|| {
    change_sql(
        "DELETE FROM stickyfarm_session_tables
          WHERE session_id = $1 AND name = $2 AND version = $4
            AND $3::text IS NULL AND EXISTS (SELECT 1 FROM live)
         RETURNING 0::bigint AS version",
    )
});
static DELETE_ANY: LazyLock<String> = LazyLock::new(|| {
    change_sql(
        "DELETE FROM stickyfarm_session_tables
          WHERE session_id = $1 AND name = $2 AND $4::bigint IS NOT NULL
            AND $3::text IS NULL AND EXISTS (SELECT 1 FROM live)
         RETURNING 0::bigint AS version",
    )
});

/// The statement an unconditional table write runs (the conditional forms change the same
/// rows), for the benchmark that measures PostgreSQL alone doing the sidecar's work.
/// Parameters: $1 stored session id (uuid), $2 table name, $3 document (JSON text), $4 any
/// non-null bigint, $5 idle and $6 absolute timeout in seconds.
pub fn unconditional_write_sql() -> &'static str {
    &UPSERT
}

fn change_sql(change: &str) -> String {
    format!("{}, t AS ({change}) {}", live_cte(), bump_generation())
}

/// `live`: the session row, if the session exists and has not expired (parameters $1, $5, $6).
fn live_cte() -> &'static str {
    "WITH live AS (
        SELECT id FROM stickyfarm_sessions
         WHERE id = $1
           AND last_seen > now() - make_interval(secs => $5)
           AND created_at > now() - make_interval(secs => $6))"
}

/// Given `t` (the changed table row, if any): bump the generation, return both.
fn bump_generation() -> &'static str {
    ", s AS (UPDATE stickyfarm_sessions
                SET generation = generation + 1, last_seen = now()
              WHERE id = $1 AND EXISTS (SELECT 1 FROM t)
             RETURNING id, generation)
     SELECT t.version, s.generation FROM t, s"
}

/// `jsonb`'s text form without the spaces PostgreSQL puts after every `:` and `,`.
///
/// A loaded document is held in the cache and attached to every request, and those spaces
/// make a 1 KiB cart about 12 % longer than the app wrote it. The text stays the same JSON:
/// only whitespace outside strings goes (string contents, escapes included, are kept).
fn compact_jsonb_text(text: String) -> Doc {
    let mut bytes = text.into_bytes();
    let mut structure = Structure::default();
    bytes.retain(|&b| !(structure.is_structure(b) && b.is_ascii_whitespace()));
    // Only ASCII bytes outside strings were removed: the rest is the UTF-8 it was.
    let compact = std::str::from_utf8(&bytes).expect("removing ASCII whitespace keeps UTF-8 valid");
    // Copied into a block of its own length rather than shrunk: an allocator may keep a
    // shrunk block where it is (mimalloc does when it shrinks by less than half), and the
    // spaces would stay allocated for as long as the copy is cached.
    Doc::from(compact)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonb_text_loses_its_spaces_but_not_its_strings() {
        let text = r#"{"a b": "c, d: e", "n": [1, 2, {"q": "\" x \\"}], "é": "ü ü"}"#;
        let compact = compact_jsonb_text(text.to_owned());
        assert_eq!(
            compact,
            r#"{"a b":"c, d: e","n":[1,2,{"q":"\" x \\"}],"é":"ü ü"}"#
        );
        let same = |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap();
        assert_eq!(same(&compact), same(text));
        assert_eq!(compact_jsonb_text("\"  \"".to_owned()), "\"  \"");
        assert_eq!(compact_jsonb_text("7".to_owned()), "7");
    }

    #[test]
    fn invalidation_payloads() {
        let id = SessionIdKey::new(b"test key").stored(&SessionId::generate());
        let u = id.as_uuid();
        assert_eq!(
            Invalidation::parse(&format!("{u}:12")),
            Some(Invalidation::Generation(id, 12))
        );
        assert_eq!(
            Invalidation::parse(&format!("{u}:deleted")),
            Some(Invalidation::Deleted(id))
        );
        assert_eq!(Invalidation::parse("garbage"), None);
        for inv in [Invalidation::Generation(id, 7), Invalidation::Deleted(id)] {
            assert_eq!(Invalidation::parse(&inv.payload()), Some(inv));
        }
        assert_eq!(Invalidation::parse(&format!("{u}:-1")), None);
    }
}
