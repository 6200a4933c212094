//! The shared pool's connections, kept checked out from one statement to the next.
//!
//! sqlx pings every connection handed back to its pool: dropping a `PoolConnection` spawns a
//! task that sends a `Sync` and waits for PostgreSQL's `ReadyForQuery` before the connection is
//! idle again (sqlx-core 0.9, `Floating::return_to_pool`; no option turns it off). So every
//! statement cost two round trips to PostgreSQL and two wake-ups of its backend, and the
//! connection was out of use for the second. On the bench's two CPUs, with PostgreSQL short of
//! CPU, leaving that ping out raised the 1 KiB write rate against PostgreSQL alone from
//! 0.68–0.70× to 0.78–0.79× and the uncached reads by 15 %
//! (`bench/results/2026-12-06-release-ping.md`).
//!
//! Here a connection whose statement finished goes back to this unit's own list, and the next
//! statement takes it from there. sqlx's ping is kept where it guards something:
//! - a connection whose statement failed, or whose request was cancelled half-way (its future
//!   dropped, with PostgreSQL's answer perhaps still unread), goes back to sqlx, which pings it
//!   (reading what was left) or closes it;
//! - a connection idle here for [`KEEP_FOR`] goes back to sqlx (a sweep every [`KEEP_FOR`]),
//!   where the pool's idle timeout and the ping before reuse apply as before.
//!
//! The list and sqlx's pool share one limit: a statement first takes one of `max_connections`
//! permits (in arrival order), then a kept connection or one from sqlx, which then always has
//! room. Without the permits a statement waiting inside sqlx's `acquire` would not see a
//! connection finished into the list, and would time out beside idle connections.
//!
//! **One fetch from sqlx at a time.** A statement that finds no kept connection fetches one
//! from sqlx only when no other statement is fetching; otherwise it waits for whichever comes
//! first: a connection another statement finished, or the end of that fetch (then it may
//! fetch in turn). A fetch may have to open a connection: a new PostgreSQL backend and a
//! SCRAM exchange, whose 4,096 rounds of HMAC cost the unit's CPU milliseconds. A statement
//! takes a fraction of one. So when a unit dies and its sessions arrive at a backup all at
//! once, they go through the connections the backup has, and the pool grows by one connection
//! at a time while they wait, rather than by one per statement (the failover scenario saw a
//! dozen opened within 60 ms of a kill, on both CPUs the failed-over requests needed;
//! `bench/results/2026-12-06-one-fetch.md`). A sustained load still grows the pool to
//! `max_connections`, one connection after another. HikariCP opens connections the same way.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// How long a finished connection is kept for the next statement before it goes back to sqlx
/// (which pings it before its next use: it may have died meanwhile).
pub const KEEP_FOR: Duration = Duration::from_secs(1);

/// The shared pool, with the connections kept between statements; cheap to clone.
#[derive(Clone)]
pub struct Connections {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    permits: Arc<Semaphore>,
    acquire_timeout: Duration,
    /// Finished connections, the most recently finished last.
    kept: Mutex<Vec<Kept>>,
    /// Whether a statement is fetching a connection from sqlx.
    fetching: AtomicBool,
    /// Wakes a statement waiting for a connection: one was finished or went back to sqlx, or
    /// a fetch ended.
    available: Notify,
}

struct Kept {
    conn: PoolConnection<Postgres>,
    since: Instant,
}

impl Connections {
    /// Statements over `pool`, at most `max_connections` at once (the pool's own limit), each
    /// waiting at most `acquire_timeout` for a connection. Starts the sweep of long-kept
    /// connections on the current Tokio runtime; it ends with the last handle.
    pub fn new(pool: PgPool, max_connections: u32, acquire_timeout: Duration) -> Connections {
        let inner = Arc::new(Inner {
            pool,
            permits: Arc::new(Semaphore::new(max_connections as usize)),
            acquire_timeout,
            kept: Mutex::new(Vec::new()),
            fetching: AtomicBool::new(false),
            available: Notify::new(),
        });
        tokio::spawn(sweep(Arc::downgrade(&inner)));
        Connections { inner }
    }

    /// The pool underneath (to close it).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// A connection for one statement or transaction: a kept one, or one from sqlx (one
    /// statement fetching at a time, the module says why). Fails with `PoolTimedOut` (as sqlx's
    /// own acquire does) when none could be had in time.
    pub async fn acquire(&self) -> Result<Connection, sqlx::Error> {
        let inner = &self.inner;
        tokio::time::timeout(inner.acquire_timeout, async {
            let permit = inner
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| sqlx::Error::PoolClosed)?;
            let conn = loop {
                // Registered before looking, so a connection finished in between wakes it.
                let available = inner.available.notified();
                tokio::pin!(available);
                available.as_mut().enable();
                if let Some(conn) = self.take_kept() {
                    break conn;
                }
                if let Some(_fetch) = Fetch::start(inner) {
                    break inner.pool.acquire().await?;
                }
                available.await;
            };
            Ok(Connection {
                conn: Some(conn),
                home: Arc::downgrade(inner),
                _permit: permit,
            })
        })
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)?
    }

    /// The most recently finished connection, if it was kept for less than [`KEEP_FOR`]; one
    /// kept longer goes back to sqlx with every one below it (they are older still).
    fn take_kept(&self) -> Option<PoolConnection<Postgres>> {
        let recent = self
            .inner
            .kept
            .lock()
            .expect("kept connections poisoned")
            .pop()?;
        if recent.since.elapsed() < KEEP_FOR {
            return Some(recent.conn);
        }
        drop(recent);
        self.release_all();
        None
    }

    /// Runs one statement (or transaction) on a connection, and keeps the connection when it
    /// succeeded.
    pub async fn run<T>(
        &self,
        statement: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, sqlx::Error> {
        let mut conn = self.acquire().await?;
        let result = statement(&mut conn).await;
        conn.finish(result)
    }

    /// Hands every kept connection back to sqlx (before the pool is closed, which waits for
    /// every connection to come back).
    pub fn release_all(&self) {
        let stale: Vec<Kept> = self
            .inner
            .kept
            .lock()
            .expect("kept connections poisoned")
            .drain(..)
            .collect();
        drop(stale);
    }

    /// How many finished connections are kept right now.
    pub fn kept(&self) -> usize {
        self.inner
            .kept
            .lock()
            .expect("kept connections poisoned")
            .len()
    }
}

impl Inner {
    /// Connections kept for [`KEEP_FOR`] or longer go back to sqlx.
    fn release_stale(&self) {
        let mut kept = self.kept.lock().expect("kept connections poisoned");
        let fresh = kept.partition_point(|k| k.since.elapsed() >= KEEP_FOR);
        let stale: Vec<Kept> = kept.drain(..fresh).collect();
        drop(kept);
        drop(stale);
    }
}

/// The one fetch from sqlx in progress; its end (or its cancellation) lets a waiting
/// statement look again.
struct Fetch<'a>(&'a Inner);

impl<'a> Fetch<'a> {
    fn start(inner: &'a Inner) -> Option<Fetch<'a>> {
        // `then`, not `then_some`: a `Fetch` made and dropped here would end the real one.
        (!inner.fetching.swap(true, Ordering::AcqRel)).then(|| Fetch(inner))
    }
}

impl Drop for Fetch<'_> {
    fn drop(&mut self) {
        self.0.fetching.store(false, Ordering::Release);
        self.0.available.notify_one();
    }
}

async fn sweep(inner: Weak<Inner>) {
    let mut every = tokio::time::interval(KEEP_FOR);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.release_stale();
    }
}

/// One statement's connection. [`Connection::finished`] keeps it for the next statement;
/// dropped without that, it goes back to sqlx, which pings it first.
pub struct Connection {
    conn: Option<PoolConnection<Postgres>>,
    home: Weak<Inner>,
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    /// The statement finished (PostgreSQL's answer read to the end): keep the connection.
    pub fn finished(mut self) {
        let (Some(conn), Some(home)) = (self.conn.take(), self.home.upgrade()) else {
            return;
        };
        let mut kept = home.kept.lock().expect("kept connections poisoned");
        kept.push(Kept {
            conn,
            since: Instant::now(),
        });
    }

    /// Keeps the connection when `result` is a success (a failed statement's connection goes
    /// back to sqlx, which finds out whether it still works), and hands `result` on.
    pub fn finish<T>(self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        if result.is_ok() {
            self.finished();
        }
        result
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Kept by `finished`, or back to sqlx now: either way a waiting statement can have it.
        drop(self.conn.take());
        if let Some(home) = self.home.upgrade() {
            home.available.notify_one();
        }
    }
}

impl Deref for Connection {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.conn.as_ref().expect("a connection until finished")
    }
}

impl DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("a connection until finished")
    }
}
