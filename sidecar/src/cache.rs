//! The unit's data cache (the patent's data cache 250): foyer, memory tier plus an optional
//! disk tier.
//!
//! PostgreSQL is always the truth; the cache only ever holds copies. The disk tier is never
//! recovered across restarts (`RecoverMode::None`): a restarted sidecar missed every
//! invalidation that was sent while it was down, and foyer's upstream notes that an updatable
//! cache without a tombstone log can resurrect replaced entries. Starting empty is the only safe
//! choice, and it keeps the instance id (the pod UID) meaningful across a sidecar restart.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use foyer::{
    BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder,
    HybridCacheEntry, RecoverMode, Source,
};
use serde::{Deserialize, Serialize};
use stickyfarm_api::{SessionId, StoredId};
use thiserror::Error;

use crate::json::Doc;
use crate::warm::WarmCopies;

/// One cached session: its generation and every table.
#[derive(Debug, Serialize, Deserialize)]
pub struct CachedSession {
    /// Generation this copy reflects.
    pub generation: u64,
    /// Tables by name.
    pub tables: Tables,
    /// Unix milliseconds of the last read through this unit (drives idle expiry).
    #[serde(skip, default = "now_atomic")]
    last_access: AtomicU64,
    /// Unix milliseconds at which PostgreSQL's `last_seen` was last refreshed for this session.
    #[serde(skip, default = "now_atomic")]
    last_touch: AtomicU64,
    /// Unix milliseconds at which the session passes its absolute lifetime.
    #[serde(default = "never")]
    expires_at: u64,
    /// Unix milliseconds at which a client last claimed a generation PostgreSQL itself did not
    /// reach (0: never). Honest claims never are: a unit hands out only committed generations.
    #[serde(skip)]
    claim_refuted_at: AtomicU64,
    /// A hash of the backup unit last told to keep a warm copy of this session (0: none).
    #[serde(skip)]
    warm_backup: AtomicU64,
}

/// Length of the unpadded base64 text of `n` bytes.
fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

fn never() -> u64 {
    u64::MAX
}

/// One cached table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedTable {
    /// The table's version.
    pub version: u64,
    /// The JSON document as text.
    pub doc: Doc,
}

/// A session's tables in name order: a sorted vector, exactly as long as it needs to be.
/// Sessions hold a few tables, and a `BTreeMap` allocates room for eleven with its first
/// entry (about 600 bytes per cached session, more than half of a 1 KiB cart).
#[derive(Debug, Clone, Default)]
pub struct Tables(Vec<(Box<str>, CachedTable)>);

impl Tables {
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(n, _)| (**n).cmp(name))
    }

    /// The table `name`.
    pub fn get(&self, name: &str) -> Option<&CachedTable> {
        self.find(name).ok().map(|i| &self.0[i].1)
    }

    /// Whether there is a table `name`.
    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// How many tables.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The tables in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &CachedTable)> {
        self.0.iter().map(|(n, t)| (&**n, t))
    }

    /// Sets the table `name`.
    pub fn insert(&mut self, name: &str, table: CachedTable) {
        match self.find(name) {
            Ok(i) => self.0[i].1 = table,
            Err(i) => {
                self.0.reserve_exact(1);
                self.0.insert(i, (name.into(), table));
            }
        }
    }

    /// Removes the table `name`, if there is one.
    pub fn remove(&mut self, name: &str) {
        if let Ok(i) = self.find(name) {
            self.0.remove(i);
            self.0.shrink_to_fit();
        }
    }
}

impl FromIterator<(String, CachedTable)> for Tables {
    fn from_iter<I: IntoIterator<Item = (String, CachedTable)>>(iter: I) -> Self {
        let mut tables = Tables::default();
        for (name, table) in iter {
            tables.insert(&name, table);
        }
        tables
    }
}

impl std::ops::Index<&str> for Tables {
    type Output = CachedTable;

    fn index(&self, name: &str) -> &CachedTable {
        self.get(name).expect("no such table")
    }
}

impl Serialize for Tables {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Tables {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(BTreeMap::<String, CachedTable>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}

fn now_atomic() -> AtomicU64 {
    AtomicU64::new(unix_now())
}

/// Milliseconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl CachedSession {
    /// A copy at `generation` with these tables.
    pub fn new(generation: u64, tables: Tables) -> Self {
        CachedSession {
            generation,
            tables,
            last_access: now_atomic(),
            last_touch: now_atomic(),
            expires_at: never(),
            claim_refuted_at: AtomicU64::new(0),
            warm_backup: AtomicU64::new(0),
        }
    }

    /// Records that the backup `mark` (a hash of its name, not 0) was told of this copy's
    /// generation; `true` when it was not already.
    pub fn note_backup(&self, mark: u64) -> bool {
        self.warm_backup.swap(mark, Ordering::Relaxed) != mark
    }

    /// A fresh copy of the same state (generation, tables, lifetime), as if just loaded.
    pub fn copy(&self) -> Self {
        CachedSession::new(self.generation, self.tables.clone()).expiring_at(self.expires_at)
    }

    /// Records at `now` (ms) that this copy, just loaded, is behind the generation the client
    /// claimed, so PostgreSQL is too: the claim was forged.
    pub fn refute_claim(&self, now: u64) {
        self.claim_refuted_at.store(now.max(1), Ordering::Relaxed);
    }

    /// Whether a claim was refuted within the last `window` ms before `now`.
    pub fn claim_refuted_within(&self, now: u64, window: u64) -> bool {
        let at = self.claim_refuted_at.load(Ordering::Relaxed);
        at != 0 && now.saturating_sub(at) < window
    }

    /// The same copy, expiring at `expires_at` (Unix ms).
    pub fn expiring_at(mut self, expires_at: u64) -> Self {
        self.expires_at = expires_at;
        self
    }

    /// Whether the session passed its absolute lifetime at `now` (ms).
    pub fn expired(&self, now: u64) -> bool {
        now >= self.expires_at
    }

    /// A copy of this session with one table replaced (or removed, with `None`).
    pub fn with_table(&self, generation: u64, name: &str, table: Option<CachedTable>) -> Self {
        let mut tables = self.tables.clone();
        match table {
            Some(t) => tables.insert(name, t),
            None => tables.remove(name),
        };
        let next = CachedSession::new(generation, tables).expiring_at(self.expires_at);
        next.last_touch
            .store(self.last_touch.load(Ordering::Relaxed), Ordering::Relaxed);
        next
    }

    /// Records a read at `now` (ms). Returns `true` when PostgreSQL's `last_seen` should be
    /// refreshed (the previous refresh is older than `touch_every` ms).
    pub fn record_access(&self, now: u64, touch_every: u64) -> bool {
        self.last_access.store(now, Ordering::Relaxed);
        let touched = self.last_touch.load(Ordering::Relaxed);
        now.saturating_sub(touched) >= touch_every
            && self
                .last_touch
                .compare_exchange(touched, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Whether the copy was unused for `idle` ms or longer at `now` (ms).
    pub fn idle_for(&self, now: u64, idle: u64) -> bool {
        now.saturating_sub(self.last_access.load(Ordering::Relaxed)) >= idle
    }

    /// The whole session as the JSON [`stickyfarm_api::SessionSnapshot`].
    ///
    /// Pieced together with `push_str`, not `write!`: on every cached read, the formatting
    /// machinery cost more than the rest of the JSON (`bench/results/2026-12-07-read-instructions.md`).
    pub fn snapshot_json(&self, id: SessionId) -> String {
        let mut numbers = itoa::Buffer::new();
        // The documents are already JSON text: splice them in rather than re-parsing them.
        let mut out = String::with_capacity(64 + self.weight_of_tables());
        out.push_str(r#"{"id":""#);
        out.push_str(id.encode(&mut [0; SessionId::TEXT_LEN]));
        out.push_str(r#"","generation":"#);
        out.push_str(numbers.format(self.generation));
        out.push_str(r#","tables":{"#);
        for (i, (name, t)) in self.tables.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            // Table names are [a-z0-9_-]: no escaping needed.
            out.push('"');
            out.push_str(name);
            out.push_str(r#"":{"version":"#);
            out.push_str(numbers.format(t.version));
            out.push_str(r#","doc":"#);
            out.push_str(&t.doc);
            out.push('}');
        }
        out.push_str("}}");
        out
    }

    /// The snapshot as a header value (base64url of the JSON), or `None` when it would be
    /// longer than `max_len` bytes.
    ///
    /// Encoded for each request, not kept with the copy: a kept header was about 1.4 KiB
    /// beside every 1 KiB cart that had been read once, more than the cart itself, while
    /// encoding one takes well under a microsecond (`bench/results/2026-12-05-memory.md`).
    pub fn snapshot_header(&self, id: SessionId, max_len: usize) -> Option<String> {
        // A snapshot is longer than its documents: most that do not fit are ruled out by that
        // alone, before the JSON is built (for a 64 KiB cart the copy took a tenth of the
        // unit's CPU per read, `bench/results/2026-12-05-reads.md`).
        let docs: usize = self.tables.iter().map(|(_, t)| t.doc.len()).sum();
        if base64_len(docs) > max_len {
            return None;
        }
        let json = self.snapshot_json(id);
        // Never encode a snapshot that will not be attached. Encoded with SIMD: with `base64`'s
        // scalar engine this was the costliest step of a cached read in instructions.
        (base64_len(json.len()) <= max_len)
            .then(|| base64_simd::URL_SAFE_NO_PAD.encode_to_string(json))
    }

    /// Bytes of document text and table names.
    fn weight_of_tables(&self) -> usize {
        self.tables
            .iter()
            .map(|(k, t)| k.len() + t.doc.len() + 40)
            .sum()
    }

    /// Approximate bytes this copy occupies, for the cache's byte capacity: the tables' text,
    /// and what holding a copy costs besides (the copy itself, its table list, foyer's record
    /// and index entry, the allocator's rounding), measured as resident memory by the
    /// capacity benchmark (`bench/run --only capacity`), which reports both side by side.
    pub fn weight(&self) -> usize {
        COPY_OVERHEAD + self.weight_of_tables()
    }
}

/// Bytes a cached copy costs beyond its tables' text (see [`CachedSession::weight`]).
const COPY_OVERHEAD: usize = 300;

/// The cache could not be built.
#[derive(Debug, Error)]
pub enum CacheError {
    /// foyer refused the configuration or could not open the disk tier.
    #[error("opening the session cache failed: {0}; check --cache-disk-dir and its free space")]
    Open(#[from] foyer::Error),
}

/// Cache sizing.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Memory tier capacity in bytes (entries are weighed by their size, not counted).
    pub memory_bytes: usize,
    /// Optional disk tier: folder and capacity in bytes.
    pub disk: Option<(PathBuf, usize)>,
    /// Percent of `memory_bytes` kept for warm copies (`crate::warm`); 0: none.
    pub warm_percent: u8,
}

/// An entry handed out by the cache.
pub type Entry = HybridCacheEntry<StoredId, CachedSession>;

/// Where a cache hit was found: an operator sizing the memory tier needs to see how many reads
/// the disk tier served (a slower hit, but still no PostgreSQL query).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HitTier {
    /// The memory tier.
    Memory,
    /// The disk tier (`--cache-disk-dir`).
    Disk,
}

impl HitTier {
    /// Where foyer found `entry`.
    pub fn of(entry: &Entry) -> HitTier {
        match entry.source() {
            Source::Disk => HitTier::Disk,
            // Outer (a value a loader fetched) does not happen: the cache never fetches.
            Source::Memory | Source::Outer => HitTier::Memory,
        }
    }

    /// The `tier` label of the hit counter.
    pub fn as_str(self) -> &'static str {
        match self {
            HitTier::Memory => "memory",
            HitTier::Disk => "disk",
        }
    }
}

/// The session cache.
#[derive(Clone)]
pub struct SessionCache {
    inner: HybridCache<StoredId, CachedSession>,
    warm: Option<Arc<WarmCopies>>,
}

impl SessionCache {
    /// Opens the cache.
    pub async fn open(options: &CacheOptions) -> Result<Self, CacheError> {
        // The warm copies' share comes out of the memory tier, so they never evict the
        // unit's own sessions.
        let warm_bytes = options.memory_bytes / 100 * usize::from(options.warm_percent.min(50));
        let warm = (warm_bytes > 0).then(|| Arc::new(WarmCopies::new(warm_bytes)));
        let builder = HybridCacheBuilder::new()
            .with_name("stickyfarm-sessions")
            .memory(options.memory_bytes - warm_bytes)
            // foyer counts entries unless told how much each weighs.
            .with_weighter(|_: &StoredId, v: &CachedSession| v.weight())
            .storage();
        let inner = match &options.disk {
            Some((dir, bytes)) => {
                std::fs::create_dir_all(dir).map_err(foyer::Error::io_error)?;
                let device = FsDeviceBuilder::new(dir).with_capacity(*bytes).build()?;
                builder
                    .with_engine_config(BlockEngineConfig::new(device))
                    .with_recover_mode(RecoverMode::None)
                    .build()
                    .await?
            }
            None => builder.build().await?,
        };
        Ok(SessionCache { inner, warm })
    }

    /// The cached copy, from memory or disk.
    pub async fn get(&self, id: &StoredId) -> Option<Entry> {
        match self.inner.get(id).await {
            Ok(e) => e,
            // A disk read error is a miss: PostgreSQL has the truth.
            Err(e) => {
                tracing::warn!(error = %e, "disk tier read failed; treating as a cache miss");
                None
            }
        }
    }

    /// The warm copies this unit keeps as a backup; `None` when the farm turned them off.
    pub fn warm(&self) -> Option<&WarmCopies> {
        self.warm.as_deref()
    }

    /// Stores a copy.
    pub fn insert(&self, id: StoredId, session: CachedSession) -> Entry {
        self.inner.insert(id, session)
    }

    /// Weight of the copies held in memory (bytes, as the weigher counts them).
    pub fn memory_usage(&self) -> usize {
        self.inner.memory().usage()
    }

    /// Copies held in memory (sessions, and the health check's probe entry).
    pub fn memory_entries(&self) -> usize {
        self.inner.memory().entries()
    }

    /// Sessions held in memory: the copies less the health check's probe entry, when there is
    /// one (a unit nobody health-checks has none).
    pub fn sessions_held(&self) -> u64 {
        let probe = u64::from(self.inner.memory().contains(&StoredId::PROBE));
        (self.memory_entries() as u64).saturating_sub(probe)
    }

    /// Drops a copy.
    pub fn remove(&self, id: &StoredId) {
        self.inner.remove(id);
    }

    /// Drops every copy.
    pub async fn clear(&self) {
        if let Err(e) = self.inner.clear().await {
            tracing::warn!(error = %e, "clearing the disk tier failed");
        }
    }

    /// Closes the cache (flushes foyer's buffers). Call on shutdown.
    pub async fn close(&self) {
        if let Err(e) = self.inner.close().await {
            tracing::warn!(error = %e, "closing the session cache failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn stored() -> StoredId {
        stickyfarm_api::SessionIdKey::new(b"test key").stored(&SessionId::generate())
    }

    async fn memory_only(memory_bytes: usize) -> SessionCache {
        SessionCache::open(&CacheOptions {
            memory_bytes,
            disk: None,
            warm_percent: 0,
        })
        .await
        .unwrap()
    }

    fn session(generation: u64, docs: &[(&str, u64, &str)]) -> CachedSession {
        CachedSession::new(
            generation,
            docs.iter()
                .map(|(n, v, d)| {
                    (
                        n.to_string(),
                        CachedTable {
                            version: *v,
                            doc: Doc::from(*d),
                        },
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn the_snapshot_encoding_is_base64url_without_padding_at_every_length() {
        // SIMD encoders take another path for the tail and for each block size: every length
        // up to a few blocks, against the `base64` crate, and decoded back.
        let text: Vec<u8> = (0..300u32).map(|i| (i * 37 % 251) as u8).collect();
        for n in 0..text.len() {
            let simd = base64_simd::URL_SAFE_NO_PAD.encode_to_string(&text[..n]);
            assert_eq!(simd, URL_SAFE_NO_PAD.encode(&text[..n]), "{n} bytes");
            // What the length check before encoding counts on: never longer than that.
            assert!(simd.len() <= base64_len(n), "{n} bytes");
            assert_eq!(URL_SAFE_NO_PAD.decode(&simd).unwrap(), &text[..n]);
        }
    }

    #[test]
    fn snapshot_is_valid_json_of_the_contract() {
        let id = SessionId::generate();
        let s = session(
            3,
            &[
                ("cart", 2, r#"{"items":[{"sku":"a","qty":2}]}"#),
                ("login", 1, r#""ann""#),
            ],
        );
        let snap: stickyfarm_api::SessionSnapshot =
            serde_json::from_str(&s.snapshot_json(id)).unwrap();
        assert_eq!(snap.id, id);
        assert_eq!(snap.generation.0, 3);
        let cart = &snap.tables[&"cart".parse().unwrap()];
        assert_eq!(cart.version, 2);
        assert_eq!(cart.doc.get(), r#"{"items":[{"sku":"a","qty":2}]}"#);
        assert_eq!(snap.tables[&"login".parse().unwrap()].version, 1);
        // The text itself, as the adapters in other languages read it.
        assert_eq!(
            s.snapshot_json(id),
            format!(
                r#"{{"id":"{id}","generation":3,"tables":{{"cart":{{"version":2,"doc":{{"items":[{{"sku":"a","qty":2}}]}}}},"login":{{"version":1,"doc":"ann"}}}}}}"#
            )
        );
        let header = s.snapshot_header(id, 10_000).unwrap();
        let decoded = URL_SAFE_NO_PAD.decode(header).unwrap();
        assert_eq!(decoded, s.snapshot_json(id).as_bytes());
        assert!(s.snapshot_header(id, 10).is_none());
    }

    #[test]
    fn tables_stay_in_name_order_and_hold_no_spare_room() {
        let t = |v: u64| CachedTable {
            version: v,
            doc: Doc::from("{}"),
        };
        let s = session(1, &[("orders", 1, "[]"), ("cart", 2, "{}")]);
        let names: Vec<&str> = s.tables.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["cart", "orders"]);
        assert_eq!(
            s.tables.0.capacity(),
            2,
            "no room for eleven, as a BTreeMap node has"
        );
        // A write replaces one table or adds one, in order; a delete removes it.
        let next = s.with_table(2, "cart", Some(t(3)));
        assert_eq!((next.tables.len(), next.tables["cart"].version), (2, 3));
        let next = next.with_table(3, "a_first", Some(t(1)));
        let names: Vec<&str> = next.tables.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a_first", "cart", "orders"]);
        assert_eq!(next.tables.0.capacity(), 3);
        let next = next.with_table(4, "cart", None);
        assert!(!next.tables.contains_key("cart") && next.tables.get("orders").is_some());
        assert_eq!(next.tables.0.capacity(), 2);
        // The disk tier's encoding is a map by name, as before.
        let json = serde_json::to_value(&next.tables).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"a_first": {"version": 1, "doc": "{}"}, "orders": {"version": 1, "doc": "[]"}})
        );
        let back: Tables = serde_json::from_value(json).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back["orders"].doc, "[]");
    }

    #[test]
    fn weight_grows_with_content() {
        let small = session(1, &[("cart", 1, "{}")]);
        let big = session(1, &[("cart", 1, &format!("\"{}\"", "x".repeat(65536)))]);
        assert!(big.weight() >= small.weight() + 65536);
    }

    #[test]
    fn the_snapshot_is_encoded_only_when_it_fits_and_never_kept() {
        let id = SessionId::generate();
        let doc = format!("\"{}\"", "x".repeat(3000));
        let s = session(1, &[("cart", 1, &doc)]);
        let before = s.weight();
        let attached = s.snapshot_header(id, 16 * 1024).unwrap();
        assert!(attached.len() >= 4000, "about 4/3 of the JSON");
        // The copy weighs what it did: the header went with the request.
        assert_eq!(s.weight(), before);
        assert!(s.snapshot_header(id, 1024).is_none());
        // At the edge the whole snapshot is what counts, not its documents alone: one byte
        // short refuses it although the document would fit.
        let exact = attached.len();
        assert_eq!(s.snapshot_header(id, exact), Some(attached));
        assert!(base64_len(doc.len()) < exact);
        assert!(s.snapshot_header(id, exact - 1).is_none());
    }

    #[test]
    fn touches_are_rate_limited() {
        let s = session(1, &[]);
        let now = unix_now();
        assert!(!s.record_access(now, 30_000));
        assert!(s.record_access(now + 31_000, 30_000));
        assert!(!s.record_access(now + 32_000, 30_000));
        assert!(!s.idle_for(now + 32_000, 60_000));
        assert!(s.idle_for(now + 92_000, 60_000));
    }

    #[tokio::test]
    async fn byte_capacity_evicts_by_size_not_count() {
        let cache = memory_only(1024 * 1024).await;
        let big = format!("\"{}\"", "x".repeat(64 * 1024));
        let ids: Vec<_> = (0..64).map(|_| stored()).collect();
        for id in &ids {
            cache.insert(*id, session(1, &[("cart", 1, &big)]));
        }
        let mut present = 0;
        for id in &ids {
            present += usize::from(cache.get(id).await.is_some());
        }
        // 64 × 64 KiB do not fit in 1 MiB: an entry-counting cache would keep all 64. (foyer
        // splits the capacity over shards, so allow some slack above 16.)
        assert!(present <= 20, "{present} large sessions kept in 1 MiB");
        assert!(present >= 1);
    }

    #[tokio::test]
    async fn sessions_held_counts_sessions_not_the_health_probe() {
        let cache = memory_only(1024 * 1024).await;
        for _ in 0..2 {
            cache.insert(stored(), session(1, &[("cart", 1, "[]")]));
        }
        assert_eq!(
            cache.sessions_held(),
            2,
            "no probe yet: every copy is a session"
        );
        cache.insert(StoredId::PROBE, CachedSession::new(1, Tables::default()));
        assert_eq!((cache.memory_entries(), cache.sessions_held()), (3, 2));
    }

    #[tokio::test]
    async fn a_hit_names_the_tier_that_held_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SessionCache::open(&CacheOptions {
            memory_bytes: 1024 * 1024,
            disk: Some((dir.path().to_path_buf(), 16 * 1024 * 1024)),
            warm_percent: 0,
        })
        .await
        .unwrap();
        let id = stored();
        cache.insert(id, session(3, &[("cart", 3, "[1]")]));
        let e = cache.get(&id).await.expect("just inserted");
        assert_eq!(HitTier::of(&e), HitTier::Memory);
        drop(e);
        // Evicted from memory, it is written to the disk tier and read back from there.
        cache.inner.memory().evict_all();
        cache.inner.storage().wait().await;
        let e = cache.get(&id).await.expect("the disk tier holds it");
        assert_eq!(HitTier::of(&e), HitTier::Disk);
        assert_eq!(e.generation, 3);
        assert_eq!(e.tables["cart"].doc, "[1]");
    }

    #[tokio::test]
    async fn disk_tier_holds_evicted_entries_and_is_never_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let opts = CacheOptions {
            memory_bytes: 64 * 1024,
            disk: Some((dir.path().to_path_buf(), 16 * 1024 * 1024)),
            warm_percent: 0,
        };
        let cache = SessionCache::open(&opts).await.unwrap();
        let id = stored();
        cache.insert(id, session(5, &[("cart", 5, "[1,2,3]")]));
        // A burst of other sessions pushes it out of memory.
        let filler = format!("\"{}\"", "y".repeat(8 * 1024));
        for _ in 0..64 {
            cache.insert(stored(), session(1, &[("cart", 1, &filler)]));
        }
        // It is still readable (from memory or disk) with its content intact, or dropped;
        // never corrupted.
        if let Some(e) = cache.get(&id).await {
            assert_eq!(e.generation, 5);
            assert_eq!(e.tables["cart"].doc, "[1,2,3]");
        }
        cache.close().await;
        drop(cache);
        let reopened = SessionCache::open(&opts).await.unwrap();
        assert!(
            reopened.get(&id).await.is_none(),
            "a restart must start with an empty cache"
        );
        reopened.close().await;
    }
}
