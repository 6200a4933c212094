//! The session tier: the cache in front of PostgreSQL, with write-through and the freshness
//! rules. This is the library a Rust app can embed in-process; the sidecar binary is a thin
//! HTTP shell over it.
//!
//! Freshness rules (where Stickyfarm goes further than the patent; README, "How a request flows"):
//! 1. A client whose instance cookie names another instance gets the session reloaded (the
//!    patent's instance-id check).
//! 2. A client that proves a newer generation than the cached copy gets it reloaded.
//! 3. Every unit listens for committed changes (PostgreSQL `NOTIFY`) and drops older copies;
//!    after the listener lost its connection, the whole cache is dropped.
//! 4. Every write is conditional on a version: a stale copy can never be written back.
//! 5. A backup's warm copy of a failed-over session (`crate::warm`) is taken only when
//!    PostgreSQL holds exactly its generation; otherwise the session is loaded.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;
use stickyfarm_api::trace::{KeyValue, Traced};

use futures::StreamExt;
use stickyfarm_api::{
    ClientCookies, Generation, InstanceId, SessionId, SessionIdKey, StoredId, TableName, UnitName,
};
use thiserror::Error;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::cache::{CachedSession, CachedTable, Entry, HitTier, SessionCache, Tables, unix_now};
use crate::issued::IssuedIds;
use crate::json::Doc;
use crate::metrics::{FlushReason, Metrics};
use crate::store::{Committed, Invalidation, Store, StoreError, WriteCondition};
use crate::warm::{BackupHints, HintGuard};

fn unix_seconds() -> u64 {
    unix_now() / 1000
}

/// How long a rotation is remembered for the answers of requests that were in flight.
const ROTATION_MEMORY: Duration = Duration::from_secs(60);

/// Rotations remembered at most.
const MAX_ROTATIONS: usize = 100_000;

/// Stripes of the per-session lock. Loads, writes and invalidations of one session are
/// serialised so a load can never re-insert a copy older than an invalidation it raced with.
const LOCK_STRIPES: usize = 1024;

/// Expired sessions deleted per sweep statement (the sweep repeats while batches are full).
const SWEEP_BATCH: u64 = 1000;

/// After a client claimed a generation PostgreSQL did not have (a forged `sf_gen`), claims for
/// that session reload it at most this often: the forger's requests are served from the cache
/// meanwhile, and honest clients, whose claims PostgreSQL always holds, never wait.
const REFUTED_CLAIM_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Warm copies taken from the queue at a time, and loaded concurrently.
const WARM_BATCH: usize = 64;
const WARM_LOADS_IN_FLIGHT: usize = 4;

/// The mark a cached copy keeps of the backup told of it (`CachedSession::note_backup`): a
/// stable hash of the unit's name, never 0.
fn backup_mark(backup: &UnitName) -> u64 {
    backup
        .as_str()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
        .max(1)
}

/// A session-tier operation failed.
#[derive(Debug, Error)]
pub enum TierError {
    /// PostgreSQL failed; see the inner error.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The session does not exist (or expired).
    #[error("session not found or expired; the client gets a new session on its next request")]
    SessionNotFound,
    /// A new table would pass the limit of tables per session.
    #[error(
        "the session holds {limit} tables, the most allowed (--max-tables); delete one or keep fewer, larger tables"
    )]
    TooManyTables {
        /// The limit.
        limit: usize,
    },
    /// The runtime stopped while a change was under way (the sidecar is shutting down).
    #[error(
        "the sidecar stopped while the change was under way; it may or may not be committed: read the session again"
    )]
    Interrupted,
}

impl TierError {
    /// Whether the failure is an outage (answer 503 and retry later).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            TierError::Store(StoreError::Unavailable(_)) | TierError::Interrupted
        )
    }
}

/// Runs a change of PostgreSQL to its end even when the caller stops waiting (its client hung
/// up and the request's future was dropped). A dropped statement may still commit in
/// PostgreSQL; the cache must then follow it and the change must be announced, or this unit
/// would go on serving the copy from before (and refuse the next write against it with 409),
/// and so would every other unit holding one.
async fn to_completion<T, F>(change: F) -> Result<T, TierError>
where
    F: std::future::Future<Output = Result<T, TierError>> + Send + 'static,
    T: Send + 'static,
{
    use tracing::Instrument as _;
    // The task continues the request's trace and its log span, as the inline code did.
    let change = Traced::current().run(change.in_current_span());
    match tokio::spawn(change).await {
        Ok(done) => done,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(TierError::Interrupted),
    }
}

/// What the app asked the write to be conditional on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// `If-Match: "<version>"` (`0`: the table must not exist yet).
    Version(u64),
    /// `If-Match: *`: overwrite whatever is there.
    Any,
    /// No `If-Match`: conditional on the version this unit's copy holds, i.e. on what the app
    /// could have read here. A stale copy makes the write fail instead of silently winning.
    CachedCopy,
}

/// How a request's session was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// From the cache.
    Cached,
    /// Loaded from PostgreSQL (a miss, or a flush by a freshness rule).
    Loaded,
    /// A warm copy kept as this session's backup, current with PostgreSQL (failed over).
    Warm,
    /// A new session id was issued (nothing stored until the app writes state).
    Created,
    /// A session id issued here earlier that has no state yet.
    Pending,
}

/// The session of one request.
pub struct ResolvedSession {
    /// The session id (new when [`Resolution::Created`]).
    pub id: SessionId,
    /// The cached copy; `None` for a session without state (created or pending).
    pub session: Option<Entry>,
    /// How it was found.
    pub resolution: Resolution,
}

/// Settings of the tier.
#[derive(Debug, Clone)]
pub struct TierOptions {
    /// This unit's instance id.
    pub instance: InstanceId,
    /// The unit name, recorded on sessions it creates.
    pub unit: String,
    /// Cached copies unused for longer are dropped.
    pub idle_timeout: Duration,
    /// How often PostgreSQL's `last_seen` is refreshed for a session in active use.
    pub touch_interval: Duration,
    /// Serve reads from the cache. Off, every read loads from PostgreSQL (a baseline for
    /// benchmarks, and a way to rule the cache out when diagnosing).
    pub cache_reads: bool,
    /// Most tables one session may hold.
    pub max_tables: usize,
    /// The farm's key for stored session ids: PostgreSQL, notifications and this cache know
    /// sessions only by their stored id.
    pub session_id_key: SessionIdKey,
    /// Whether an invalidation listener runs (`--listen-invalidations`). Without one (behind
    /// PgBouncer) copies are kept regardless, and only the cookies' instance and generation
    /// checks find stale ones.
    pub listens: bool,
}

/// The cache and write-through core.
pub struct SessionTier {
    cache: SessionCache,
    store: Store,
    metrics: Arc<Metrics>,
    options: TierOptions,
    locks: Box<[Mutex<()>]>,
    hasher: std::collections::hash_map::RandomState,
    to_touch: StdMutex<HashSet<uuid::Uuid>>,
    /// Ids issued here, pending their first write for the idle timeout.
    issued: IssuedIds,
    /// Sessions rotated lately: old id → (new id, when). The front hands the client the new
    /// cookie on the answer to the request during which the app rotated.
    rotations: StdMutex<HashMap<SessionId, (SessionId, u64)>>,
    /// The backups the gateway named for the sessions whose requests are in flight.
    hints: Arc<BackupHints>,
    /// The invalidation listener's connections: odd while it is connected to PostgreSQL, one
    /// more at every connect and every loss (see [`SessionTier::keep_if_heard`]).
    hearing: AtomicU64,
}

impl SessionTier {
    /// Builds the tier.
    pub fn new(
        cache: SessionCache,
        store: Store,
        metrics: Arc<Metrics>,
        options: TierOptions,
    ) -> Self {
        SessionTier {
            cache,
            store,
            metrics,
            issued: IssuedIds::new(options.idle_timeout, options.session_id_key.clone()),
            rotations: StdMutex::new(HashMap::new()),
            options,
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            hasher: Default::default(),
            to_touch: StdMutex::new(HashSet::new()),
            hints: Arc::default(),
            hearing: AtomicU64::new(0),
        }
    }

    /// Releases `id`'s session if this unit's copy was unused for `idle_ms` or longer and no
    /// other request of it is in flight here: the copy is dropped, and the gateway, told so,
    /// moves the session (off a draining unit, or to a less loaded unit after a scale-up). A
    /// request in flight could still write, and two units would then serve the session at
    /// once. A session this unit does not hold is not released: whether it is idle is unknown
    /// here. Nor is any while PostgreSQL seems unreachable (the listener lost it): the other
    /// unit could not load the session, and this one can still serve it from its cache.
    pub async fn release_if_idle(&self, id: &SessionId, idle_ms: u64) -> bool {
        if !self.listening() {
            return false;
        }
        let stored = self.stored(id);
        let _guard = self.lock_for(&stored).lock().await;
        // A request in flight here named a backup (the gateway names one on every request of
        // a session while the farm has another unit).
        if self.hints.backup_of(&stored).is_some() {
            return false;
        }
        match self.cache.get(&stored).await {
            Some(e) if e.idle_for(unix_now(), idle_ms) => {
                self.flush(&stored, FlushReason::Released);
                true
            }
            _ => false,
        }
    }

    /// Records, for as long as the returned guard lives (the request's), the unit the gateway
    /// named as the session's backup: writes meanwhile announce it, and it keeps a warm copy.
    /// `None` when the gateway named this unit itself.
    ///
    /// A session whose backup has not heard of its current generation (written during its
    /// first request, before a cookie let the gateway name a backup; failed over here; or a
    /// new backup after the units changed) is announced to it now, so it warms without
    /// waiting for the next write.
    pub fn hint_backup(
        &self,
        id: &SessionId,
        session: Option<&Entry>,
        backup: UnitName,
    ) -> Option<HintGuard> {
        if backup.as_str() == self.options.unit {
            return None;
        }
        let stored = self.stored(id);
        if let Some(e) = session
            && e.note_backup(backup_mark(&backup))
        {
            let (store, generation, backup) = (self.store.clone(), e.generation, backup.clone());
            tokio::spawn(async move {
                store
                    .announce(Invalidation::Warm(stored, generation, backup))
                    .await
            });
        }
        Some(self.hints.enter(stored, backup))
    }

    /// This unit's instance id.
    pub fn instance(&self) -> InstanceId {
        self.options.instance
    }

    /// The store (PostgreSQL).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The cache.
    pub fn cache(&self) -> &SessionCache {
        &self.cache
    }

    /// The cached copy of `id`'s session, if this unit holds one (no freshness rules applied).
    pub async fn cached(&self, id: &SessionId) -> Option<Entry> {
        self.cache.get(&self.stored(id)).await
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn stored(&self, id: &SessionId) -> StoredId {
        self.options.session_id_key.stored(id)
    }

    fn lock_for(&self, id: &StoredId) -> &Mutex<()> {
        &self.locks[(self.hasher.hash_one(id) as usize) % LOCK_STRIPES]
    }

    fn flush(&self, id: &StoredId, reason: FlushReason) {
        self.cache.remove(id);
        self.metrics.flush(reason);
        tracing::debug!(session = ?id, ?reason, "flushed cached session");
    }

    /// Whether the invalidation listener is connected now.
    fn listening(&self) -> bool {
        self.hearing.load(Ordering::SeqCst) % 2 == 1
    }

    /// Records that the invalidation listener connected (`true`: it listens from now on) or
    /// lost its connection.
    fn set_listening(&self, up: bool) {
        if self.listening() != up {
            self.hearing.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A mark taken before a session is read from PostgreSQL (or written): what
    /// [`SessionTier::keep_if_heard`] compares with.
    fn hearing_mark(&self) -> u64 {
        self.hearing.load(Ordering::SeqCst)
    }

    /// Caches `copy`, made from what PostgreSQL said after `mark`, and returns it. The copy
    /// stays cached only if the listener was connected at `mark` and has been since: a write
    /// another unit committed in between was then heard (and waits for this session's lock to
    /// flush it). Otherwise its announcement may be lost (the listener was starting, or
    /// reconnecting after its flush of everything), and the copy serves this one request
    /// only; the next one reads PostgreSQL again. A unit that cached a session before its
    /// listener first connected would serve it, stale, until it expired.
    fn keep_if_heard(&self, stored: StoredId, copy: CachedSession, mark: u64) -> Entry {
        let entry = self.cache.insert(stored, copy);
        let heard = mark % 2 == 1 && self.hearing_mark() == mark;
        if self.options.listens && !heard {
            self.flush(&stored, FlushReason::Unheard);
        }
        entry
    }

    /// Finds the session of a request from its cookies, applying the freshness rules, and
    /// issues a new session id when there is no usable one. Never adopts a client-chosen id.
    /// A new id costs nothing (no row, no cache entry) until the app writes state to it.
    pub async fn resolve(&self, cookies: &ClientCookies) -> Result<ResolvedSession, TierError> {
        Traced::phase("cache lookup")
            .run(self.resolve_cookies(cookies))
            .await
    }

    async fn resolve_cookies(&self, cookies: &ClientCookies) -> Result<ResolvedSession, TierError> {
        if !cookies.errors.is_empty() || cookies.conflicting_sessions {
            self.metrics.malformed_cookie();
        }
        if let Some(id) = cookies.session {
            if cookies.instance != Some(self.options.instance) {
                // The client was last served by another instance (or lost that cookie): what
                // this unit cached may predate that instance's changes.
                self.flush(&self.stored(&id), FlushReason::InstanceMismatch);
            }
            let min_generation = cookies.generation.unwrap_or_default();
            if let Some((session, resolution)) = self.read_at_least(id, min_generation).await? {
                return Ok(ResolvedSession {
                    id,
                    session: Some(session),
                    resolution,
                });
            }
            if self.pending(&id) {
                return Ok(ResolvedSession {
                    id,
                    session: None,
                    resolution: Resolution::Pending,
                });
            }
        }
        let id = self.issued.issue(unix_seconds());
        self.metrics.session_issued();
        Ok(ResolvedSession {
            id,
            session: None,
            resolution: Resolution::Created,
        })
    }

    /// Whether `id` was issued here and may still get its first write (it has no state).
    pub fn pending(&self, id: &SessionId) -> bool {
        self.issued.pending(id, unix_seconds())
    }

    /// Reads a session: from the cache, or loaded from PostgreSQL. `None` when it does not
    /// exist or has expired.
    pub async fn read(&self, id: SessionId) -> Result<Option<Entry>, TierError> {
        Ok(self.read_at_least(id, Generation(0)).await?.map(|(e, _)| e))
    }

    async fn read_at_least(
        &self,
        id: SessionId,
        min: Generation,
    ) -> Result<Option<(Entry, Resolution)>, TierError> {
        let stored = self.stored(&id);
        if let Some(e) = self.cached_fresh(&id, &stored, min).await {
            self.metrics.hit(HitTier::of(&e));
            return Ok(Some((e, Resolution::Cached)));
        }
        // Not cached: an id issued here that never got state has no row, so no query for it (a
        // visitor browsing without a cart costs the database nothing). Checked only on a miss:
        // the tag and the id sets stay off the cache-hit path.
        if self.issued.never_written(&id, unix_seconds()) {
            return Ok(None);
        }
        // Boxed: the miss path's futures (the lock, PostgreSQL's queries) are kilobytes, and
        // inline they would make every request's future that large, copied on each move even
        // when the cache answers.
        Box::pin(self.read_after_miss(id, stored, min)).await
    }

    /// [`Self::read_at_least`] once the cache had no usable copy: under the session's lock, the
    /// cache once more, then the warm copy, then PostgreSQL.
    async fn read_after_miss(
        &self,
        id: SessionId,
        stored: StoredId,
        min: Generation,
    ) -> Result<Option<(Entry, Resolution)>, TierError> {
        let _guard = self.lock_for(&stored).lock().await;
        // Another request may have loaded it while this one waited for the lock.
        if let Some(e) = self.cached_fresh(&id, &stored, min).await {
            self.metrics.hit(HitTier::of(&e));
            return Ok(Some((e, Resolution::Cached)));
        }
        if let Some(e) = self.warm_copy_locked(&stored, min).await? {
            return Ok(Some((e, Resolution::Warm)));
        }
        self.metrics.miss();
        let loaded = self.load_locked(&id, stored).await?;
        if let Some(e) = &loaded
            && e.generation < min.0
        {
            // PostgreSQL holds less than the client claims: no unit handed that out.
            e.refute_claim(unix_now());
            self.metrics.refuted_claim();
        }
        Ok(loaded.map(|e| (e, Resolution::Loaded)))
    }

    /// The cached copy if it is usable for a client that has seen generation `min`.
    async fn cached_fresh(
        &self,
        id: &SessionId,
        stored: &StoredId,
        min: Generation,
    ) -> Option<Entry> {
        if !self.options.cache_reads {
            return None;
        }
        let e = self.cache.get(stored).await?;
        let now = unix_now();
        if e.idle_for(now, self.options.idle_timeout.as_millis() as u64) {
            self.flush(stored, FlushReason::Idle);
            return None;
        }
        // Past its absolute lifetime the copy goes, whether or not the sweep's notification
        // arrived: PostgreSQL then refuses to load it, and the client gets a new session.
        if e.expired(now) {
            self.flush(stored, FlushReason::Expired);
            self.issued.forget(id, now / 1000);
            return None;
        }
        if e.generation < min.0
            && !e.claim_refuted_within(now, REFUTED_CLAIM_RELOAD_INTERVAL.as_millis() as u64)
        {
            self.flush(stored, FlushReason::NewerGeneration);
            return None;
        }
        if e.record_access(now, self.options.touch_interval.as_millis() as u64) {
            self.to_touch
                .lock()
                .expect("touch set poisoned")
                .insert(stored.as_uuid());
        }
        Some(e)
    }

    /// The warm copy of a session this unit backs up, made this unit's own copy if PostgreSQL
    /// has exactly its generation (one key lookup instead of loading every table); a copy
    /// that is behind is discarded. The caller holds the session's lock.
    async fn warm_copy_locked(
        &self,
        stored: &StoredId,
        min: Generation,
    ) -> Result<Option<Entry>, TierError> {
        let Some(copy) = self.cache.warm().and_then(|w| w.take(stored)) else {
            return Ok(None);
        };
        if copy.generation < min.0 || copy.expired(unix_now()) {
            self.metrics.warm_failover("stale");
            return Ok(None);
        }
        let mark = self.hearing_mark();
        let current = Traced::phase("generation check")
            .run(self.store.generation(*stored))
            .await?;
        if current != Some(copy.generation) {
            self.metrics.warm_failover("stale");
            return Ok(None);
        }
        self.metrics.warm_failover("hit");
        Ok(Some(self.keep_if_heard(*stored, copy, mark)))
    }

    /// Loads a warm copy of a session this unit backs up (queued by an announcement).
    async fn load_warm_copy(&self, stored: StoredId) {
        let Some(warm) = self.cache.warm() else {
            return;
        };
        // This unit's own copy, when it holds one, is kept current by the announcements.
        if self.cache.get(&stored).await.is_some() {
            return;
        }
        match self.store.load_session(stored).await {
            Ok(Some(l)) if l.live => {
                let tables = l
                    .tables
                    .into_iter()
                    .map(|(name, version, doc)| (name, CachedTable { version, doc }))
                    .collect();
                warm.store(
                    stored,
                    CachedSession::new(l.generation, tables).expiring_at(l.expires_at_ms),
                );
                self.metrics.warm_load("loaded");
            }
            Ok(_) => {
                warm.forget_older(&stored, None);
                self.metrics.warm_load("gone");
            }
            Err(e) => {
                tracing::debug!(error = %e, "loading a warm copy failed; the session loads cold on failover");
                self.metrics.warm_load("failed");
            }
        }
    }

    /// Loads from PostgreSQL into the cache. The caller holds the session's lock.
    async fn load_locked(
        &self,
        id: &SessionId,
        stored: StoredId,
    ) -> Result<Option<Entry>, TierError> {
        let mark = self.hearing_mark();
        let loaded = match Traced::phase("database load")
            .run(self.store.load_session(stored))
            .await?
        {
            Some(l) if l.live => l,
            expired => {
                self.cache.remove(&stored);
                if expired.is_some() {
                    // It existed: its id never becomes a new (pending) session.
                    self.issued.forget(id, unix_seconds());
                }
                return Ok(None);
            }
        };
        let tables = loaded
            .tables
            .into_iter()
            .map(|(name, version, doc)| (name, CachedTable { version, doc }))
            .collect();
        Ok(Some(self.keep_if_heard(
            stored,
            CachedSession::new(loaded.generation, tables).expiring_at(loaded.expires_at_ms),
            mark,
        )))
    }

    /// The first write to a pending id creates its session (the caller holds its lock). Any
    /// other id that PostgreSQL does not know is not found: a client-chosen, expired or
    /// deleted id never gets a session by a write.
    async fn create_locked(&self, id: &SessionId, stored: StoredId) -> Result<Entry, TierError> {
        if !self.pending(id) {
            return Err(TierError::SessionNotFound);
        }
        // Remembered before the row exists: a concurrent request then asks the database rather
        // than take the session for one without state.
        self.issued.mark_created(id, unix_seconds());
        let mark = self.hearing_mark();
        if !self
            .store
            .create_session(stored, &self.options.unit)
            .await?
        {
            // Its row exists: made meanwhile (then it loads), or expired and not swept yet (then
            // the id is spent and never pending again).
            return match self.load_locked(id, stored).await? {
                Some(e) => Ok(e),
                None => {
                    self.issued.forget(id, unix_seconds());
                    Err(TierError::SessionNotFound)
                }
            };
        }
        self.metrics.session_created();
        let lifetime = self.store.expiry().absolute.as_millis() as u64;
        Ok(self.keep_if_heard(
            stored,
            CachedSession::new(0, Tables::default())
                .expiring_at(unix_now().saturating_add(lifetime)),
            mark,
        ))
    }

    /// Writes one table (`None`: deletes it) through to PostgreSQL, then to the cache.
    /// Acknowledged (returns) only after PostgreSQL committed and the other units were told.
    /// On a refusal or an outage the cache holds nothing new. Runs to its end even if the
    /// caller stops waiting.
    pub async fn write_table(
        self: &Arc<Self>,
        id: SessionId,
        table: TableName,
        doc: Option<Doc>,
        precondition: Precondition,
    ) -> Result<Committed, TierError> {
        let tier = self.clone();
        to_completion(async move { tier.write_table_now(id, &table, doc, precondition).await })
            .await
    }

    async fn write_table_now(
        &self,
        id: SessionId,
        table: &TableName,
        doc: Option<Doc>,
        precondition: Precondition,
    ) -> Result<Committed, TierError> {
        let stored = self.stored(&id);
        let backup = self.hints.backup_of(&stored);
        let _guard = self.lock_for(&stored).lock().await;
        let mark = self.hearing_mark();
        let current = match self.cache.get(&stored).await {
            Some(e) => e,
            None => match self.load_locked(&id, stored).await? {
                Some(e) => e,
                None => self.create_locked(&id, stored).await?,
            },
        };
        if doc.is_some()
            && !current.tables.contains_key(table.as_str())
            && current.tables.len() >= self.options.max_tables
        {
            return Err(TierError::TooManyTables {
                limit: self.options.max_tables,
            });
        }
        let condition = match precondition {
            Precondition::Version(v) => WriteCondition::Expect(v),
            Precondition::Any => WriteCondition::Unconditional,
            Precondition::CachedCopy => {
                WriteCondition::Expect(current.tables.get(table.as_str()).map_or(0, |t| t.version))
            }
        };
        // The write-through to PostgreSQL, a span of the trace when traces are exported.
        let write = Traced::phase_with("write-through", || {
            vec![KeyValue::new("stickyfarm.table", table.to_string())]
        });
        let result = match &doc {
            Some(doc) => {
                write
                    .run(
                        self.store
                            .write_table(stored, table, doc, condition, backup.clone()),
                    )
                    .await
            }
            None => {
                write
                    .run(
                        self.store
                            .delete_table(stored, table, condition, backup.clone()),
                    )
                    .await
            }
        };
        match result {
            Ok(done) => {
                self.metrics.write("committed");
                if done.generation == current.generation + 1 {
                    let t = doc.map(|doc| CachedTable {
                        version: done.version,
                        doc,
                    });
                    let next = current.with_table(done.generation, table.as_str(), t);
                    if let Some(b) = &backup {
                        // The write's announcement told the backup.
                        next.note_backup(backup_mark(b));
                    }
                    self.keep_if_heard(stored, next, mark);
                } else {
                    // Another table changed elsewhere in between: this copy is behind.
                    self.cache.remove(&stored);
                }
                Ok(done)
            }
            Err(StoreError::Conflict { current: v }) => {
                self.metrics.write("conflict");
                self.flush(&stored, FlushReason::Conflict);
                Err(StoreError::Conflict { current: v }.into())
            }
            Err(StoreError::SessionGone) => {
                self.metrics.write("session_gone");
                self.cache.remove(&stored);
                Err(TierError::SessionNotFound)
            }
            Err(e) => {
                self.metrics.write("failed");
                Err(e.into())
            }
        }
    }

    /// Gives a session a new id (on sign-in and sign-out, so an id learnt before cannot ride
    /// the new privileges): the state moves to a new id issued here, the old id is dead on
    /// every unit. A session without state just gets a new id.
    pub async fn rotate(self: &Arc<Self>, old: SessionId) -> Result<SessionId, TierError> {
        let tier = self.clone();
        to_completion(async move { tier.rotate_now(old).await }).await
    }

    async fn rotate_now(&self, old: SessionId) -> Result<SessionId, TierError> {
        let now = unix_seconds();
        let new = self.issued.issue(now);
        {
            let old_stored = self.stored(&old);
            let _guard = self.lock_for(&old_stored).lock().await;
            // Remembered before its row exists, like a first write (see `create_locked`).
            self.issued.mark_created(&new, now);
            let moved = self
                .store
                .rotate_session(old_stored, self.stored(&new), &self.options.unit)
                .await?;
            if !moved && !self.pending(&old) {
                return Err(TierError::SessionNotFound);
            }
            self.cache.remove(&old_stored);
            self.issued.forget(&old, now);
            if moved {
                self.metrics.session_created();
            }
        }
        let mut rotations = self.rotations.lock().expect("rotations poisoned");
        if rotations.len() >= MAX_ROTATIONS {
            rotations.retain(|_, (_, at)| now.saturating_sub(*at) < ROTATION_MEMORY.as_secs());
        }
        if rotations.len() < MAX_ROTATIONS {
            rotations.insert(old, (new, now));
        }
        Ok(new)
    }

    /// The id `id` was rotated to lately, if it was (the front then reissues the cookie).
    pub fn rotated(&self, id: &SessionId) -> Option<SessionId> {
        let now = unix_seconds();
        let rotations = self.rotations.lock().expect("rotations poisoned");
        rotations
            .get(id)
            .filter(|(_, at)| now.saturating_sub(*at) < ROTATION_MEMORY.as_secs())
            .map(|(new, _)| *new)
    }

    /// Deletes a session everywhere. Runs to its end even if the caller stops waiting.
    pub async fn delete_session(self: &Arc<Self>, id: SessionId) -> Result<bool, TierError> {
        let tier = self.clone();
        to_completion(async move { tier.delete_session_now(id).await }).await
    }

    async fn delete_session_now(&self, id: SessionId) -> Result<bool, TierError> {
        let stored = self.stored(&id);
        let _guard = self.lock_for(&stored).lock().await;
        let existed = self.store.delete_session(stored).await?;
        self.cache.remove(&stored);
        self.issued.forget(&id, unix_seconds());
        Ok(existed)
    }

    /// Applies an invalidation announced by some unit (this one included).
    pub async fn invalidate(&self, inv: Invalidation) {
        let id = inv.session();
        let generation = match &inv {
            Invalidation::Generation(_, g) | Invalidation::Warm(_, g, _) => Some(*g),
            Invalidation::Deleted(_) => {
                // Deleted anywhere (logout, expiry): a late write here must not bring it back.
                self.issued.forget_stored(&id, unix_seconds());
                None
            }
        };
        if let Some(warm) = self.cache.warm() {
            match &inv {
                Invalidation::Warm(_, g, backup) if backup.as_str() == self.options.unit => {
                    if !warm.queue(id, *g) {
                        self.metrics.warm_load("skipped");
                    }
                }
                // Another unit backs it up now (or it is gone): a copy here only goes stale.
                _ => warm.forget_older(&id, generation),
            }
        }
        let _guard = self.lock_for(&id).lock().await;
        let Some(e) = self.cache.get(&id).await else {
            return;
        };
        let stale = generation.is_none_or(|g| e.generation < g);
        if stale {
            self.flush(&id, FlushReason::Notification);
        }
    }

    /// Drops every cached copy (after missed invalidations).
    pub async fn flush_all(&self) {
        self.cache.clear().await;
        if let Some(warm) = self.cache.warm() {
            warm.clear();
        }
        self.metrics.full_flush();
    }

    /// Refreshes `last_seen` in PostgreSQL for the sessions read since the last call.
    pub async fn flush_touches(&self) {
        let ids: Vec<uuid::Uuid> =
            std::mem::take(&mut *self.to_touch.lock().expect("touch set poisoned"))
                .into_iter()
                .collect();
        if ids.is_empty() {
            return;
        }
        match self.store.touch(&ids).await {
            Ok(alive) => {
                // Deleted elsewhere: gone from here too, notification or not.
                let alive: HashSet<uuid::Uuid> = alive.into_iter().collect();
                for id in ids.iter().filter(|id| !alive.contains(id)) {
                    let id = StoredId::from_uuid(*id);
                    let _guard = self.lock_for(&id).lock().await;
                    self.flush(&id, FlushReason::Gone);
                    self.issued.forget_stored(&id, unix_seconds());
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, sessions = ids.len(), "refreshing session last-seen times failed; will retry");
                self.to_touch
                    .lock()
                    .expect("touch set poisoned")
                    .extend(ids);
            }
        }
    }
}

/// Background work of the tier: touches, sweeps, invalidation listening.
pub mod background {
    use super::*;
    use sqlx::postgres::PgListener;

    use crate::store::INVALIDATION_CHANNEL;

    /// Refreshes `last_seen` every `every`, until cancelled; then once more.
    pub async fn touch_loop(tier: Arc<SessionTier>, every: Duration, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => tier.flush_touches().await,
                _ = stop.cancelled() => { tier.flush_touches().await; return; }
            }
        }
    }

    /// Deletes expired sessions every `every`, until cancelled.
    pub async fn sweep_loop(tier: Arc<SessionTier>, every: Duration, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
            loop {
                match tier.store.sweep_expired(SWEEP_BATCH as i64).await {
                    Ok(SWEEP_BATCH) => continue,
                    Ok(n) => {
                        if n > 0 {
                            tracing::info!(deleted = n, "swept expired sessions");
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "sweeping expired sessions failed; will retry");
                        break;
                    }
                }
            }
        }
    }

    /// Loads the warm copies the announcements queued, a few at a time, until cancelled.
    pub async fn warm_loop(tier: Arc<SessionTier>, stop: CancellationToken) {
        let Some(warm) = tier.cache.warm() else {
            return;
        };
        loop {
            let batch = tokio::select! {
                b = warm.next_batch(WARM_BATCH) => b,
                _ = stop.cancelled() => return,
            };
            // A few loads at a time: warming must not take the pool from the unit's own
            // requests.
            futures::stream::iter(batch)
                .for_each_concurrent(WARM_LOADS_IN_FLIGHT, |(id, _)| tier.load_warm_copy(id))
                .await;
        }
    }

    /// Listens for committed changes of other units and drops older cached copies. Whenever
    /// the connection is lost, notifications may have been missed: once it is back, the whole
    /// cache is dropped. While PostgreSQL is down, cached copies keep being served.
    pub async fn invalidation_loop(tier: Arc<SessionTier>, stop: CancellationToken) {
        let mut first = true;
        let mut backoff = Duration::from_millis(100);
        loop {
            let listener = async {
                let mut l = PgListener::connect_with(tier.store.listener_pool()).await?;
                l.listen(INVALIDATION_CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            };
            let mut listener = tokio::select! {
                r = listener => match r {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "invalidation listener cannot connect to PostgreSQL; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop.cancelled() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                },
                _ = stop.cancelled() => return,
            };
            backoff = Duration::from_millis(100);
            tier.metrics.listener_connected(true);
            tier.set_listening(true);
            if !first {
                tracing::info!("invalidation listener reconnected; dropping every cached session");
                tier.flush_all().await;
            }
            first = false;
            loop {
                let next = tokio::select! {
                    n = listener.try_recv() => n,
                    _ = stop.cancelled() => return,
                };
                match next {
                    Ok(Some(n)) => {
                        tier.metrics.notification();
                        match Invalidation::parse(n.payload()) {
                            Some(inv) => tier.invalidate(inv).await,
                            None => {
                                tracing::warn!("ignoring a malformed invalidation notification")
                            }
                        }
                    }
                    Ok(None) | Err(_) => {
                        tracing::warn!("invalidation listener lost its PostgreSQL connection");
                        tier.store.connection_lost();
                        tier.metrics.listener_connected(false);
                        tier.set_listening(false);
                        break;
                    }
                }
            }
        }
    }
}
