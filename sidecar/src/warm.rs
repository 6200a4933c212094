//! Warm backups: copies of the sessions this unit would take over, kept before they are needed.
//!
//! The gateway names, on every request of a session, the unit it would fail that session over
//! to (`x-stickyfarm-backup`: rendezvous order over unit names, so every gateway replica
//! agrees). The serving sidecar holds that name while the request is in flight
//! ([`BackupHints`]) and a write-through made meanwhile announces it with the new generation
//! (`<stored id>:<generation>:<backup>`). The backup, hearing its own name, queues the session
//! and loads it from PostgreSQL into [`WarmCopies`]: a memory cache of its own, carved out of
//! the memory tier (`--warm-backup-percent`), so warm copies never evict the unit's own
//! sessions.
//!
//! A warm copy is not served as it is: on failover the first request finds no cached copy of
//! its own here (or the instance rule drops it), and the tier takes the warm copy only if
//! PostgreSQL's generation of the session, one key lookup, is the copy's (`SessionTier`'s
//! read path). So nothing older than PostgreSQL is ever served, exactly as before; what the
//! warm copy saves is the load of every table, at the moment a whole unit's sessions arrive
//! at once.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use foyer::{Cache, CacheBuilder};
use stickyfarm_api::{StoredId, UnitName};
use tokio::sync::Notify;

use crate::cache::CachedSession;

/// Most sessions waiting to be loaded as warm copies; past it, announcements are skipped (the
/// next write of such a session queues it again).
const MAX_QUEUED: usize = 65_536;

const HINT_SHARDS: usize = 16;

/// Session → (its backup, requests in flight naming one).
type HintShard = Mutex<HashMap<StoredId, (UnitName, u32)>>;

/// The backups named by the gateway for the sessions whose requests are in flight here.
pub struct BackupHints {
    shards: Box<[HintShard]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for BackupHints {
    fn default() -> Self {
        BackupHints {
            shards: (0..HINT_SHARDS).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
        }
    }
}

impl BackupHints {
    fn shard(&self, id: &StoredId) -> &HintShard {
        &self.shards[(self.hasher.hash_one(id) as usize) % HINT_SHARDS]
    }

    /// Records `backup` for `id` until the returned guard is dropped (the request's end).
    /// Concurrent requests of one session share the entry; the latest name wins.
    pub fn enter(self: &Arc<Self>, id: StoredId, backup: UnitName) -> HintGuard {
        let mut shard = self.shard(&id).lock().expect("backup hints poisoned");
        match shard.entry(id) {
            Entry::Occupied(mut held) => {
                let (name, requests) = held.get_mut();
                *name = backup;
                *requests += 1;
            }
            Entry::Vacant(slot) => {
                slot.insert((backup, 1));
            }
        }
        HintGuard {
            hints: self.clone(),
            id,
        }
    }

    /// The backup named for `id` by a request in flight, if any.
    pub fn backup_of(&self, id: &StoredId) -> Option<UnitName> {
        let shard = self.shard(id).lock().expect("backup hints poisoned");
        shard.get(id).map(|(name, _)| name.clone())
    }

    fn leave(&self, id: &StoredId) {
        let mut shard = self.shard(id).lock().expect("backup hints poisoned");
        if let Some(entry) = shard.get_mut(id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                shard.remove(id);
            }
        }
    }

    /// Sessions with a request in flight that named a backup.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }
}

/// Keeps a backup hint for as long as its request is in flight.
pub struct HintGuard {
    hints: Arc<BackupHints>,
    id: StoredId,
}

impl Drop for HintGuard {
    fn drop(&mut self) {
        self.hints.leave(&self.id);
    }
}

/// The warm copies this unit keeps as a backup, and the sessions waiting to be loaded.
pub struct WarmCopies {
    cache: Cache<StoredId, CachedSession>,
    /// Session → the generation announced; loaded by [`crate::tier::background::warm_loop`].
    queued: Mutex<HashMap<StoredId, u64>>,
    wake: Notify,
}

impl WarmCopies {
    /// Warm copies weighing at most `bytes` in all (weighed like the memory tier's copies).
    pub fn new(bytes: usize) -> Self {
        let cache = CacheBuilder::new(bytes.max(1))
            .with_name("stickyfarm-warm-copies")
            .with_weighter(|_: &StoredId, v: &CachedSession| v.weight())
            .build();
        WarmCopies {
            cache,
            queued: Mutex::default(),
            wake: Notify::new(),
        }
    }

    /// Queues `id` to be loaded (its announced generation `generation`). Returns `false` when
    /// the queue is full and the announcement is skipped.
    pub fn queue(&self, id: StoredId, generation: u64) -> bool {
        if self
            .cache
            .get(&id)
            .is_some_and(|copy| copy.generation >= generation)
        {
            return true;
        }
        let mut queued = self.queued.lock().expect("warm queue poisoned");
        if queued.len() >= MAX_QUEUED && !queued.contains_key(&id) {
            return false;
        }
        let g = queued.entry(id).or_insert(generation);
        *g = (*g).max(generation);
        drop(queued);
        self.wake.notify_one();
        true
    }

    /// Waits for queued sessions and takes up to `most` of them.
    pub async fn next_batch(&self, most: usize) -> Vec<(StoredId, u64)> {
        loop {
            let notified = self.wake.notified();
            {
                let mut queued = self.queued.lock().expect("warm queue poisoned");
                if !queued.is_empty() {
                    let ids: Vec<StoredId> = queued.keys().take(most).copied().collect();
                    return ids
                        .into_iter()
                        .filter_map(|id| queued.remove(&id).map(|g| (id, g)))
                        .collect();
                }
            }
            notified.await;
        }
    }

    /// Stores a loaded copy unless a newer one is already held.
    pub fn store(&self, id: StoredId, copy: CachedSession) {
        if self
            .cache
            .get(&id)
            .is_some_and(|held| held.generation > copy.generation)
        {
            return;
        }
        self.cache.insert(id, copy);
    }

    /// The warm copy of `id`, taken out (it becomes the unit's own copy, or is discarded).
    pub fn take(&self, id: &StoredId) -> Option<CachedSession> {
        self.cache.remove(id).map(|e| e.value().copy())
    }

    /// Drops the warm copy of `id` if it is older than `generation` (`None`: drop it anyway).
    pub fn forget_older(&self, id: &StoredId, generation: Option<u64>) {
        let older = self
            .cache
            .get(id)
            .is_some_and(|held| generation.is_none_or(|g| held.generation < g));
        if older {
            self.cache.remove(id);
        }
    }

    /// Drops every warm copy and everything queued (after missed announcements).
    pub fn clear(&self) {
        self.cache.clear();
        self.queued.lock().expect("warm queue poisoned").clear();
    }

    /// Warm copies held.
    pub fn entries(&self) -> usize {
        self.cache.entries()
    }

    /// Their weight in bytes, as the weigher counts it.
    pub fn bytes(&self) -> usize {
        self.cache.usage()
    }
}

#[cfg(test)]
mod tests {
    use stickyfarm_api::{SessionId, SessionIdKey};

    use super::*;
    use crate::cache::CachedTable;
    use crate::json::Doc;

    fn stored() -> StoredId {
        SessionIdKey::new(b"test key").stored(&SessionId::generate())
    }

    fn copy(generation: u64, doc: &str) -> CachedSession {
        CachedSession::new(
            generation,
            [(
                "cart".to_owned(),
                CachedTable {
                    version: generation,
                    doc: Doc::from(doc),
                },
            )]
            .into_iter()
            .collect(),
        )
    }

    #[test]
    fn a_hint_lasts_while_any_request_of_its_session_is_in_flight() {
        let hints = Arc::new(BackupHints::default());
        let id = stored();
        let first = hints.enter(id, "web-1".parse().unwrap());
        let second = hints.enter(id, "web-2".parse().unwrap());
        assert_eq!(hints.backup_of(&id).unwrap().as_str(), "web-2");
        drop(second);
        assert_eq!(hints.backup_of(&id).unwrap().as_str(), "web-2");
        drop(first);
        assert_eq!(hints.backup_of(&id), None);
        assert_eq!(hints.len(), 0, "nothing is kept after the requests");
    }

    #[tokio::test]
    async fn queued_sessions_come_out_once_with_their_latest_generation() {
        let warm = WarmCopies::new(1 << 20);
        let (a, b) = (stored(), stored());
        assert!(warm.queue(a, 1));
        assert!(warm.queue(a, 3));
        assert!(warm.queue(b, 2));
        let mut batch = warm.next_batch(10).await;
        batch.sort_by_key(|(_, g)| *g);
        assert_eq!(batch, vec![(b, 2), (a, 3)]);
        // A copy held at the announced generation needs no load.
        warm.store(a, copy(3, "{}"));
        assert!(warm.queue(a, 3));
        assert!(warm.queued.lock().unwrap().is_empty());
    }

    #[test]
    fn an_older_copy_never_replaces_a_newer_one_and_older_ones_are_forgotten() {
        let warm = WarmCopies::new(1 << 20);
        let id = stored();
        warm.store(id, copy(5, r#"{"n":5}"#));
        warm.store(id, copy(4, r#"{"n":4}"#));
        warm.forget_older(&id, Some(5));
        assert_eq!(warm.entries(), 1);
        warm.forget_older(&id, Some(6));
        assert_eq!(warm.entries(), 0, "a newer generation elsewhere drops it");
        warm.store(id, copy(7, r#"{"n":7}"#));
        let taken = warm.take(&id).unwrap();
        assert_eq!(
            (taken.generation, &*taken.tables["cart"].doc),
            (7, r#"{"n":7}"#)
        );
        assert!(warm.take(&id).is_none(), "taken out");
    }

    #[test]
    fn warm_copies_stay_within_their_share() {
        let warm = WarmCopies::new(64 * 1024);
        let doc = "x".repeat(1000);
        for _ in 0..1000 {
            warm.store(stored(), copy(1, &doc));
        }
        assert!(warm.bytes() <= 64 * 1024, "{} bytes", warm.bytes());
        assert!(warm.entries() < 1000 && warm.entries() > 10);
    }
}
