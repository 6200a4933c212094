//! Prometheus metrics of the sidecar (served on the admin listener at `/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::cache::HitTier;

/// Why a cached session was dropped.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum FlushReason {
    /// The client's instance cookie named another instance (the patent's instance-id check).
    InstanceMismatch,
    /// The client proved a newer generation than the cached copy.
    NewerGeneration,
    /// Another unit committed a newer generation (PostgreSQL notification).
    Notification,
    /// A write was refused as stale: the cached copy was behind PostgreSQL.
    Conflict,
    /// The cached entry was idle longer than the idle timeout.
    Idle,
    /// The session passed its absolute lifetime (the cache checks it itself).
    Expired,
    /// PostgreSQL no longer has the session (deleted elsewhere: noticed by the touches, even
    /// without a notification).
    Gone,
    /// Idle on a unit holding more than its share after a scale-up: released to the
    /// gateway, which moved the session to a less loaded unit.
    Released,
    /// Read while the invalidation listener was not connected throughout (at start, or while
    /// it reconnects): served once, not kept, since a write announced meanwhile went unheard.
    Unheard,
}

impl FlushReason {
    /// Every reason, so that each counter exists (at 0) from the start.
    const ALL: [FlushReason; 9] = [
        FlushReason::InstanceMismatch,
        FlushReason::NewerGeneration,
        FlushReason::Notification,
        FlushReason::Conflict,
        FlushReason::Idle,
        FlushReason::Expired,
        FlushReason::Gone,
        FlushReason::Released,
        FlushReason::Unheard,
    ];

    fn as_str(self) -> &'static str {
        match self {
            FlushReason::InstanceMismatch => "instance_mismatch",
            FlushReason::NewerGeneration => "newer_generation",
            FlushReason::Notification => "notification",
            FlushReason::Conflict => "conflict",
            FlushReason::Idle => "idle",
            FlushReason::Expired => "expired",
            FlushReason::Gone => "gone",
            FlushReason::Released => "released",
            FlushReason::Unheard => "unheard",
        }
    }
}

/// The PostgreSQL operations the store reports, and the outcomes of a table write: their
/// counters exist at 0 from the start, so a scraper sees a series before its first increment
/// (`rate()` and the chart's alerts would otherwise miss the first error).
const DB_OPS: [&str; 12] = [
    "announce",
    "create_session",
    "delete_session",
    "delete_table",
    "explain_refusal",
    "generation",
    "load_session",
    "ping",
    "rotate_session",
    "sweep",
    "touch",
    "write_table",
];
const WRITE_OUTCOMES: [&str; 4] = ["committed", "conflict", "session_gone", "failed"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabel {
    tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabel {
    method: &'static str,
    route: String,
    class: &'static str,
}

/// 100 µs .. ~3 s, doubling.
fn api_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

/// All metrics of one sidecar.
pub struct Metrics {
    registry: Registry,
    cache_hits: Family<TierLabel, Counter>,
    cache_misses: Counter,
    flushes: Family<ReasonLabel, Counter>,
    full_flushes: Counter,
    db_queries: Family<OpLabel, Counter>,
    db_errors: Family<OpLabel, Counter>,
    writes: Family<OutcomeLabel, Counter>,
    write_through_seconds: Histogram,
    session_api_seconds: Family<ApiLabel, Histogram, fn() -> Histogram>,
    sessions_created: Counter,
    sessions_issued: Counter,
    cache_memory_bytes: Gauge,
    cached_sessions: Gauge,
    malformed_cookies: Counter,
    refuted_claims: Counter,
    notifications: Counter,
    listener_connected: Gauge,
    announced: Family<OutcomeLabel, Counter>,
    warm_copies: Gauge,
    warm_copy_bytes: Gauge,
    warm_loads: Family<OutcomeLabel, Counter>,
    warm_failovers: Family<OutcomeLabel, Counter>,
}

/// Outcomes of loading a warm copy.
const WARM_LOAD_OUTCOMES: [&str; 4] = ["loaded", "gone", "failed", "skipped"];
/// Outcomes of a failed-over session's first request finding a warm copy here.
const WARM_FAILOVER_OUTCOMES: [&str; 2] = ["hit", "stale"];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric under the `stickyfarm_sidecar` prefix.
    pub fn new() -> Self {
        let mut root = stickyfarm_api::metrics::root("sidecar");
        let registry = root.sub_registry_with_prefix("stickyfarm_sidecar");
        let m = Metrics {
            cache_hits: Family::default(),
            cache_misses: Counter::default(),
            flushes: Family::default(),
            full_flushes: Counter::default(),
            db_queries: Family::default(),
            db_errors: Family::default(),
            writes: Family::default(),
            // 50 µs .. ~0.8 s
            write_through_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 15)),
            session_api_seconds: Family::new_with_constructor(api_histogram),
            sessions_created: Counter::default(),
            sessions_issued: Counter::default(),
            cache_memory_bytes: Gauge::default(),
            cached_sessions: Gauge::default(),
            malformed_cookies: Counter::default(),
            refuted_claims: Counter::default(),
            notifications: Counter::default(),
            listener_connected: Gauge::default(),
            announced: Family::default(),
            warm_copies: Gauge::default(),
            warm_copy_bytes: Gauge::default(),
            warm_loads: Family::default(),
            warm_failovers: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "cache_hits",
            "Session reads served from the cache, by tier (memory, disk)",
            m.cache_hits.clone(),
        );
        registry.register(
            "cache_misses",
            "Session reads that had to load from PostgreSQL",
            m.cache_misses.clone(),
        );
        registry.register(
            "flushes",
            "Cached sessions dropped, by reason",
            m.flushes.clone(),
        );
        registry.register(
            "full_flushes",
            "Whole-cache flushes after the invalidation listener reconnected",
            m.full_flushes.clone(),
        );
        registry.register(
            "db_queries",
            "Statements sent to PostgreSQL, by operation",
            m.db_queries.clone(),
        );
        registry.register(
            "db_errors",
            "Failed PostgreSQL operations, by operation",
            m.db_errors.clone(),
        );
        registry.register(
            "writes",
            "Session table writes, by outcome",
            m.writes.clone(),
        );
        registry.register(
            "write_through_seconds",
            "Time to commit a table write to PostgreSQL and announce it to the other units",
            m.write_through_seconds.clone(),
        );
        registry.register(
            "session_api_seconds",
            "Time the session API took to answer the app, by method, route and status class",
            m.session_api_seconds.clone(),
        );
        registry.register(
            "sessions_created",
            "Sessions created in PostgreSQL (on the app's first write to a new session id)",
            m.sessions_created.clone(),
        );
        registry.register(
            "sessions_issued",
            "New session ids handed to clients (no row or cache entry until the app writes state)",
            m.sessions_issued.clone(),
        );
        registry.register(
            "cache_memory_bytes",
            "Weight of the cached sessions held in memory",
            m.cache_memory_bytes.clone(),
        );
        registry.register(
            "cached_sessions",
            "Sessions held in the cache's memory",
            m.cached_sessions.clone(),
        );
        registry.register(
            "malformed_cookies",
            "Requests with a malformed Stickyfarm cookie (answered with a fresh session)",
            m.malformed_cookies.clone(),
        );
        registry.register(
            "generation_claims_refuted",
            "Generation cookies claiming more than PostgreSQL holds (forged); such a session is reloaded for claims at most once a second",
            m.refuted_claims.clone(),
        );
        registry.register(
            "invalidation_notifications",
            "Invalidation notifications received from PostgreSQL",
            m.notifications.clone(),
        );
        registry.register(
            "invalidation_listener_connected",
            "1 while the PostgreSQL invalidation listener is connected",
            m.listener_connected.clone(),
        );
        registry.register(
            "invalidations_announced",
            "Committed changes announced to the other units (outcome sent, or given_up after PostgreSQL refused for 2 s); db_queries{op=\"announce\"} counts the batches",
            m.announced.clone(),
        );
        registry.register(
            "warm_copies",
            "Warm copies held of sessions this unit backs up",
            m.warm_copies.clone(),
        );
        registry.register(
            "warm_copy_bytes",
            "Weight of the warm copies (out of the memory tier's share for them)",
            m.warm_copy_bytes.clone(),
        );
        registry.register(
            "warm_loads",
            "Warm copies loaded after another unit announced a write naming this unit its backup, by outcome (loaded, gone, failed, skipped: queue full)",
            m.warm_loads.clone(),
        );
        registry.register(
            "warm_failovers",
            "Failed-over sessions whose first request here found a warm copy: hit (PostgreSQL had that generation, no load), stale (discarded, loaded)",
            m.warm_failovers.clone(),
        );
        for outcome in WARM_LOAD_OUTCOMES {
            let _ = m.warm_loads.get_or_create(&OutcomeLabel { outcome });
        }
        for outcome in WARM_FAILOVER_OUTCOMES {
            let _ = m.warm_failovers.get_or_create(&OutcomeLabel { outcome });
        }
        for outcome in ["sent", "given_up"] {
            let _ = m.announced.get_or_create(&OutcomeLabel { outcome });
        }
        for reason in FlushReason::ALL {
            let _ = m.flushes.get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            });
        }
        for op in DB_OPS {
            let _ = m.db_queries.get_or_create(&OpLabel { op });
            let _ = m.db_errors.get_or_create(&OpLabel { op });
        }
        for outcome in WRITE_OUTCOMES {
            let _ = m.writes.get_or_create(&OutcomeLabel { outcome });
        }
        for tier in [HitTier::Memory, HitTier::Disk] {
            let _ = m.cache_hits.get_or_create(&TierLabel {
                tier: tier.as_str(),
            });
        }
        Metrics {
            registry: root,
            ..m
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub(crate) fn hit(&self, tier: HitTier) {
        self.cache_hits
            .get_or_create(&TierLabel {
                tier: tier.as_str(),
            })
            .inc();
    }
    pub(crate) fn miss(&self) {
        self.cache_misses.inc();
    }
    pub(crate) fn flush(&self, reason: FlushReason) {
        self.flushes
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }
    pub(crate) fn full_flush(&self) {
        self.full_flushes.inc();
    }
    pub(crate) fn db_query(&self, op: &'static str) {
        self.db_queries.get_or_create(&OpLabel { op }).inc();
    }
    pub(crate) fn db_error(&self, op: &'static str) {
        self.db_errors.get_or_create(&OpLabel { op }).inc();
    }
    pub(crate) fn write(&self, outcome: &'static str) {
        self.writes.get_or_create(&OutcomeLabel { outcome }).inc();
    }
    /// Records one session-API answer. `route` is the matched route's template, so the label
    /// set stays bounded whatever the app asks.
    pub(crate) fn session_api(
        &self,
        method: &http::Method,
        route: &str,
        status: u16,
        seconds: f64,
    ) {
        let method = match *method {
            http::Method::GET => "GET",
            http::Method::PUT => "PUT",
            http::Method::POST => "POST",
            http::Method::DELETE => "DELETE",
            _ => "other",
        };
        let class =
            ["1xx", "2xx", "3xx", "4xx", "5xx"][usize::from((status / 100).clamp(1, 5)) - 1];
        self.session_api_seconds
            .get_or_create(&ApiLabel {
                method,
                route: route.to_owned(),
                class,
            })
            .observe(seconds);
    }
    pub(crate) fn announced(&self, changes: u64, sent: bool) {
        let outcome = if sent { "sent" } else { "given_up" };
        self.announced
            .get_or_create(&OutcomeLabel { outcome })
            .inc_by(changes);
    }
    pub(crate) fn write_through(&self, seconds: f64) {
        self.write_through_seconds.observe(seconds);
    }
    /// Records the cache's memory use and entries (read at each scrape).
    pub fn set_cache_memory(&self, bytes: usize, sessions: u64) {
        self.cache_memory_bytes.set(bytes as i64);
        self.cached_sessions
            .set(i64::try_from(sessions).unwrap_or(i64::MAX));
    }
    /// Records the warm copies held (read at each scrape).
    pub fn set_warm_copies(&self, copies: usize, bytes: usize) {
        self.warm_copies.set(copies as i64);
        self.warm_copy_bytes.set(bytes as i64);
    }
    pub(crate) fn warm_load(&self, outcome: &'static str) {
        self.warm_loads
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }
    pub(crate) fn warm_failover(&self, outcome: &'static str) {
        self.warm_failovers
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }
    pub(crate) fn session_issued(&self) {
        self.sessions_issued.inc();
    }
    pub(crate) fn session_created(&self) {
        self.sessions_created.inc();
    }
    pub(crate) fn malformed_cookie(&self) {
        self.malformed_cookies.inc();
    }
    pub(crate) fn refuted_claim(&self) {
        self.refuted_claims.inc();
    }
    pub(crate) fn notification(&self) {
        self.notifications.inc();
    }
    pub(crate) fn listener_connected(&self, up: bool) {
        self.listener_connected.set(i64::from(up));
    }
}
