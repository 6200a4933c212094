//! The farm's units and their status table (the patent's Server Status Check table, FIG. 6).
//!
//! The request path reads the membership through an `ArcSwap` (no lock) and each unit's state
//! through atomics; only health checks and membership changes write.

use crate::rate::{AnswerTime, RateMeter};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::HeaderValue;
use serde::{Deserialize, Serialize};
use stickyfarm_api::{InstanceId, UnitName};
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, UnitMetrics};
use stickyfarm_api::config::UNIT_CONNECTION_REUSE;
use stickyfarm_api::upstream::Pool;

/// A unit as discovery reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitSpec {
    /// The unit's name: what clients carry in unit addresses and the routing cookie.
    pub name: UnitName,
    /// Where the unit's sidecar listens: `host:port` (a name is resolved at connect time).
    pub address: String,
    /// The instance id the unit must report (the pod UID), when discovery knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceId>,
    /// Administrative state.
    #[serde(default)]
    pub admin: AdminState,
}

/// Administrative state of a unit, set by discovery or the admin API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Serves its sessions and takes new ones.
    #[default]
    Enabled,
    /// Serves the sessions it holds; gets no new ones (before removal).
    Draining,
    /// Gets no traffic: its clients fail over.
    Disabled,
}

/// Health as the status checks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not checked yet: gets no traffic.
    Unknown,
    /// Passing its checks.
    Up,
    /// Failing its checks, or taken out by a failed request.
    Down,
}

impl Health {
    fn from_u8(v: u8) -> Health {
        match v {
            1 => Health::Up,
            2 => Health::Down,
            _ => Health::Unknown,
        }
    }
}

impl AdminState {
    fn from_u8(v: u8) -> AdminState {
        match v {
            1 => AdminState::Draining,
            2 => AdminState::Disabled,
            _ => AdminState::Enabled,
        }
    }
    fn as_u8(self) -> u8 {
        match self {
            AdminState::Enabled => 0,
            AdminState::Draining => 1,
            AdminState::Disabled => 2,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the last checks found (written by the checker, read by the status table).
#[derive(Debug, Clone, Default)]
pub struct CheckRecord {
    /// Consecutive passed checks.
    pub consecutive_ok: u32,
    /// Consecutive failed checks.
    pub consecutive_fail: u32,
    /// When the last check finished (Unix ms).
    pub last_check_ms: u64,
    /// Latency of the last check.
    pub last_latency: Option<Duration>,
    /// Why the last check or request failed.
    pub last_error: Option<String>,
    /// The instance id the unit reported last.
    pub instance: Option<InstanceId>,
    /// The sessions its cache held at the last passed check.
    pub sessions: Option<u64>,
    /// The warm copies it kept (of sessions it backs up) at the last passed check.
    pub warm_copies: Option<u64>,
}

/// Passive ejection (outlier detection, as Envoy calls it): how far requests that prove a unit
/// broken may take units out of service. Clients can provoke some of those signals (a slow
/// request times out), so passive detection alone never empties the farm: at most
/// `max_percent` of the units are out at once, and a unit ejected again soon after coming back
/// stays out longer each time. Only active checks bring an ejected unit back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EjectionPolicy {
    /// Share of the units (0–100) that may be out of service when passive detection ejects
    /// another; at least one unit may always be ejected, 0 turns passive ejection off.
    pub max_percent: u8,
    /// How long the first ejection lasts at least; the n-th in a row lasts n times as long.
    pub base_time: Duration,
    /// The longest ejection; a unit that served this long since it came back starts over.
    pub max_time: Duration,
    /// Consecutive timeouts that count as one passive failure (any answer resets the count).
    pub timeouts: u32,
}

impl Default for EjectionPolicy {
    fn default() -> Self {
        EjectionPolicy {
            max_percent: 50,
            base_time: Duration::from_secs(5),
            max_time: Duration::from_secs(300),
            timeouts: 5,
        }
    }
}

impl EjectionPolicy {
    /// How many of `units` may be out of service at once for passive ejection to take one more.
    pub fn cap(&self, units: usize) -> usize {
        if self.max_percent == 0 {
            return 0;
        }
        (units * usize::from(self.max_percent.min(100)) / 100).max(1)
    }

    /// How long the `n`-th ejection in a row lasts (n ≥ 1).
    pub fn ejection_time(&self, n: u32) -> Duration {
        self.base_time.saturating_mul(n.max(1)).min(self.max_time)
    }
}

/// What a passive failure did to its unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ejection {
    /// Taken out for at least this long.
    Ejected(Duration),
    /// Already out of service.
    AlreadyOut,
    /// Kept in service: the cap of units out was reached.
    CapReached,
    /// Counted, not (yet) a reason to eject (a timeout below the threshold).
    Counted,
}

/// One unit at run time.
pub struct Unit {
    /// As discovered.
    pub spec: UnitSpec,
    health: AtomicU8,
    admin: AtomicU8,
    /// Requests being served right now (until the response body ends).
    pub in_flight: AtomicU64,
    /// Upgraded connections (WebSockets) open right now; each also counts in flight.
    tunnels: AtomicUsize,
    up_since_ms: AtomicU64,
    requests: AtomicU64,
    /// A passively ejected unit stays out until then (Unix ms), whatever its checks say.
    ejected_until_ms: AtomicU64,
    /// Ejections in a row (the multiplier of the ejection time).
    ejections: AtomicU32,
    consecutive_timeouts: AtomicU32,
    /// Recent requests per second and answer time (the status page).
    rate: RateMeter,
    answer_time: AnswerTime,
    check: Mutex<CheckRecord>,
    /// Pooled connections to the unit.
    pub pool: Pool,
    /// Cancelled when the unit leaves the farm (stops its checker).
    pub removed: CancellationToken,
    metrics: UnitMetrics,
    /// Sessions its cache held at the last passed check (`u64::MAX`: unknown).
    sessions_held: AtomicU64,
    /// Sessions moved here (positive) or away (negative) by rebalancing since that check.
    moved: AtomicI64,
    /// The name as a header value, made once (it names the unit as a session's backup on
    /// every request).
    name_header: HeaderValue,
}

impl Unit {
    /// A new unit, not yet checked; `removed` is cancelled when it leaves the farm.
    pub fn new(
        spec: UnitSpec,
        metrics: &Metrics,
        max_idle_connections: usize,
        removed: CancellationToken,
    ) -> Unit {
        let m = metrics.unit(&spec.name);
        m.up.set(0);
        Unit {
            sessions_held: AtomicU64::new(u64::MAX),
            moved: AtomicI64::new(0),
            // Unit names are DNS labels: always a valid header value.
            name_header: HeaderValue::from_str(spec.name.as_str())
                .expect("a unit name is a valid header value"),
            admin: AtomicU8::new(spec.admin.as_u8()),
            health: AtomicU8::new(0),
            in_flight: AtomicU64::new(0),
            tunnels: AtomicUsize::new(0),
            up_since_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            consecutive_timeouts: AtomicU32::new(0),
            rate: RateMeter::default(),
            answer_time: AnswerTime::default(),
            check: Mutex::new(CheckRecord::default()),
            pool: Pool::new(max_idle_connections, UNIT_CONNECTION_REUSE),
            removed,
            metrics: m,
            spec,
        }
    }

    /// The unit's name.
    pub fn name(&self) -> &UnitName {
        &self.spec.name
    }

    /// The sessions it holds as rebalancing counts them: at its last passed check, plus those
    /// moved here and less those moved away since. `None` until a check said.
    pub fn session_estimate(&self) -> Option<u64> {
        let held = self.sessions_held.load(Ordering::Relaxed);
        (held != u64::MAX).then(|| (held as i64 + self.moved.load(Ordering::Relaxed)).max(0) as u64)
    }

    /// Counts a session moved here (`1`) or away (`-1`) until the next check.
    pub fn note_moved(&self, sessions: i64) {
        self.moved.fetch_add(sessions, Ordering::Relaxed);
    }

    /// The unit's name as a header value.
    pub fn name_header(&self) -> &HeaderValue {
        &self.name_header
    }

    /// Health now.
    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Acquire))
    }

    /// Administrative state now.
    pub fn admin(&self) -> AdminState {
        AdminState::from_u8(self.admin.load(Ordering::Acquire))
    }

    /// Sets the administrative state (admin API or discovery).
    pub fn set_admin(&self, admin: AdminState) {
        let old = AdminState::from_u8(self.admin.swap(admin.as_u8(), Ordering::AcqRel));
        if old != admin {
            tracing::info!(unit = %self.spec.name, from = ?old, to = ?admin, "unit admin state changed");
        }
        if admin != AdminState::Draining {
            self.metrics.draining_sessions.set(0);
        }
    }

    /// May get new sessions (first requests, backups).
    pub fn takes_new_sessions(&self) -> bool {
        self.health() == Health::Up && self.admin() == AdminState::Enabled
    }

    /// May serve the sessions it holds.
    pub fn serves_its_sessions(&self) -> bool {
        self.health() == Health::Up && self.admin() != AdminState::Disabled
    }

    /// Share of new sessions while ramping up after coming up (slow start): from 5 % to 1.
    pub fn weight(&self, now_ms: u64, slow_start: Duration) -> f64 {
        if slow_start.is_zero() {
            return 1.0;
        }
        let since = self.up_since_ms.load(Ordering::Relaxed);
        let elapsed = now_ms.saturating_sub(since) as f64;
        (elapsed / slow_start.as_millis() as f64).clamp(0.05, 1.0)
    }

    fn set_health(&self, now: u64, to: Health, reason: &str) {
        let code = match to {
            Health::Unknown => 0,
            Health::Up => 1,
            Health::Down => 2,
        };
        let old = Health::from_u8(self.health.swap(code, Ordering::AcqRel));
        if old == to {
            return;
        }
        if to == Health::Up {
            self.up_since_ms.store(now, Ordering::Relaxed);
        }
        self.metrics.up.set(i64::from(to == Health::Up));
        self.metrics.state_changes.inc();
        tracing::info!(unit = %self.spec.name, from = ?old, to = ?to, reason, "unit state changed");
    }

    /// Records an active check's result and applies the rise/fall thresholds.
    pub fn record_check(
        &self,
        result: Result<CheckOk, String>,
        latency: Duration,
        rise: u32,
        fall: u32,
    ) {
        self.record_check_at(now_ms(), result, latency, rise, fall);
    }

    /// [`Unit::record_check`] at a given time (Unix ms).
    pub fn record_check_at(
        &self,
        now: u64,
        result: Result<CheckOk, String>,
        latency: Duration,
        rise: u32,
        fall: u32,
    ) {
        let mut c = self.check.lock().expect("check record poisoned");
        c.last_check_ms = now;
        c.last_latency = Some(latency);
        match result {
            Ok(ok) => {
                c.consecutive_ok += 1;
                c.consecutive_fail = 0;
                c.last_error = None;
                let replaced = match (c.instance, ok.instance) {
                    (Some(old), Some(new)) if old != new => Some(old),
                    _ => None,
                };
                if ok.instance.is_some() {
                    c.instance = ok.instance;
                }
                c.sessions = ok.sessions;
                c.warm_copies = ok.warm_copies;
                self.sessions_held
                    .store(ok.sessions.unwrap_or(u64::MAX), Ordering::Relaxed);
                let draining = self.admin() == AdminState::Draining;
                self.metrics.draining_sessions.set(if draining {
                    ok.sessions.unwrap_or(0) as i64
                } else {
                    0
                });
                self.moved.store(0, Ordering::Relaxed);
                self.metrics.checks_ok.inc();
                let health = self.health();
                if let Some(old) = replaced {
                    // A new pod answers under this unit's name: its cache is empty and its
                    // instance id new, so clients are flushed by the sidecar; here it ramps up
                    // again like any unit that (re)joins.
                    tracing::info!(unit = %self.spec.name, %old, new = ?ok.instance, "unit replaced by a new instance");
                    self.metrics.replacements.inc();
                    if health == Health::Up {
                        self.up_since_ms.store(now, Ordering::Relaxed);
                    }
                }
                // A unit never checked before comes up on its first pass; an ejected one not
                // before its ejection time is over.
                let ejected = now < self.ejected_until_ms.load(Ordering::Acquire);
                if health == Health::Unknown
                    || (health == Health::Down && c.consecutive_ok >= rise && !ejected)
                {
                    drop(c);
                    self.set_health(now, Health::Up, "checks passed");
                }
            }
            Err(why) => {
                c.consecutive_fail += 1;
                c.consecutive_ok = 0;
                c.last_error = Some(why.clone());
                self.metrics.checks_failed.inc();
                let health = self.health();
                if health == Health::Unknown || (health == Health::Up && c.consecutive_fail >= fall)
                {
                    drop(c);
                    self.set_health(now, Health::Down, &why);
                }
            }
        }
    }

    /// A request proved the unit broken (connection refused or reset, the sidecar's
    /// unit-unavailable signal): counted and its pooled connections dropped. Whether it is
    /// taken out is the farm's decision ([`Farm::record_passive_failure`]).
    fn note_passive_failure(&self, why: &str) {
        {
            let mut c = self.check.lock().expect("check record poisoned");
            c.consecutive_ok = 0;
            c.last_error = Some(why.to_owned());
        }
        self.metrics.passive_failures.inc();
        self.pool.clear();
    }

    /// Takes the unit out for the ejection time its record calls for; returns that time.
    fn eject(&self, now: u64, policy: &EjectionPolicy, why: &str) -> Duration {
        // Back in service long enough: a new ejection starts the multiplier over.
        let served_since_return = now.saturating_sub(self.up_since_ms.load(Ordering::Relaxed));
        let n = if served_since_return >= policy.max_time.as_millis() as u64 {
            self.ejections.store(1, Ordering::Relaxed);
            1
        } else {
            self.ejections.fetch_add(1, Ordering::Relaxed) + 1
        };
        let time = policy.ejection_time(n);
        self.ejected_until_ms
            .store(now + time.as_millis() as u64, Ordering::Release);
        {
            let mut c = self.check.lock().expect("check record poisoned");
            c.consecutive_ok = 0;
        }
        self.metrics.ejections.inc();
        self.set_health(now, Health::Down, why);
        time
    }

    /// A request timed out; returns the timeouts in a row (an answer resets the count).
    fn count_timeout(&self) -> u32 {
        self.consecutive_timeouts.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The unit answered with `status`. Counted, never judged: the app's own 5xx answers say
    /// nothing about the unit's health (any client can provoke one), so only connection
    /// failures, repeated timeouts and the sidecar's unit-unavailable signal take a unit out.
    /// `took`: from sending the request to the answer's head.
    pub fn record_response(&self, status: u16, took: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.rate.record(now_ms());
        self.answer_time.record(took);
        // Read first: a store on every response would bounce the cache line between cores.
        if self.consecutive_timeouts.load(Ordering::Relaxed) != 0 {
            self.consecutive_timeouts.store(0, Ordering::Relaxed);
        }
        self.metrics.record_response(status, took);
    }

    /// Records a whole request to this unit, from its arrival at the gateway to its answer's
    /// last byte.
    pub fn record_request(&self, status: u16, took: Duration) {
        self.metrics.record_request(status, took);
    }

    /// Records opening a new connection to this unit.
    pub fn record_connect(&self, took: Duration) {
        self.metrics.record_connect(took);
    }

    /// Counts a request in flight; the guard counts it out when dropped.
    pub fn begin_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.metrics.in_flight.inc();
        InFlight(self.clone())
    }

    /// Counts an upgraded connection open on the unit, unless `cap` are open already.
    pub fn open_tunnel(self: &Arc<Self>, cap: usize) -> Option<TunnelSlot> {
        let open = self.tunnels.fetch_add(1, Ordering::AcqRel);
        if open >= cap {
            self.tunnels.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.metrics.tunnels.inc();
        Some(TunnelSlot(self.clone()))
    }

    /// Upgraded connections open now.
    pub fn tunnels(&self) -> usize {
        self.tunnels.load(Ordering::Relaxed)
    }

    /// The instance id the unit must or did report.
    pub fn instance(&self) -> Option<InstanceId> {
        self.spec
            .instance
            .or_else(|| self.check.lock().expect("check record poisoned").instance)
    }

    /// This unit's row of the status table.
    pub fn status(&self, now: u64, slow_start: Duration) -> UnitStatus {
        let c = self.check.lock().expect("check record poisoned").clone();
        UnitStatus {
            name: self.spec.name.to_string(),
            address: self.spec.address.clone(),
            state: self.health(),
            admin: self.admin(),
            last_check_unix_ms: (c.last_check_ms > 0).then_some(c.last_check_ms),
            last_latency_ms: c.last_latency.map(|d| d.as_secs_f64() * 1000.0),
            consecutive_ok: c.consecutive_ok,
            consecutive_fail: c.consecutive_fail,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            tunnels: self.tunnels() as u64,
            requests: self.requests.load(Ordering::Relaxed),
            requests_per_second: self.rate.per_second(now),
            answer_ms: self.answer_time.average().map(|d| d.as_secs_f64() * 1000.0),
            sessions: c.sessions,
            warm_copies: c.warm_copies,
            instance: c.instance.or(self.spec.instance).map(|i| i.to_string()),
            ejected_until_unix_ms: Some(self.ejected_until_ms.load(Ordering::Acquire))
                .filter(|until| *until > now),
            ejections: self.ejections.load(Ordering::Relaxed),
            weight: if self.health() == Health::Up {
                self.weight(now, slow_start)
            } else {
                0.0
            },
            last_error: c.last_error,
        }
    }
}

/// What a passed check learned.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckOk {
    /// The instance id in the answer, if it named one.
    pub instance: Option<InstanceId>,
    /// The sessions the unit's cache holds, if the answer said.
    pub sessions: Option<u64>,
    /// The warm copies the unit keeps of sessions it backs up, if the answer said.
    pub warm_copies: Option<u64>,
}

/// Counts one request out of a unit's in-flight count when dropped.
pub struct InFlight(Arc<Unit>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.in_flight.dec();
    }
}

/// Counts one upgraded connection out of a unit's tunnels when dropped.
pub struct TunnelSlot(Arc<Unit>);

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        self.0.tunnels.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.tunnels.dec();
    }
}

/// One row of the status table (`GET /status` on the admin port).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnitStatus {
    /// Unit name.
    pub name: String,
    /// Sidecar address.
    pub address: String,
    /// Health.
    pub state: Health,
    /// Administrative state.
    pub admin: AdminState,
    /// When the last check finished.
    pub last_check_unix_ms: Option<u64>,
    /// Latency of the last check.
    pub last_latency_ms: Option<f64>,
    /// Consecutive passed checks.
    pub consecutive_ok: u32,
    /// Consecutive failed checks.
    pub consecutive_fail: u32,
    /// Requests in flight.
    pub in_flight: u64,
    /// Upgraded connections (WebSockets) open; counted in `in_flight` too.
    #[serde(default)]
    pub tunnels: u64,
    /// Requests answered since the unit joined.
    pub requests: u64,
    /// Requests answered per second, over the last ten whole seconds.
    #[serde(default)]
    pub requests_per_second: f64,
    /// Average time to an answer's head of recent requests (each new one weighs 1/8).
    #[serde(default)]
    pub answer_ms: Option<f64>,
    /// Sessions the unit's cache held at its last passed check.
    #[serde(default)]
    pub sessions: Option<u64>,
    /// Warm copies of sessions it backs up, at its last passed check.
    #[serde(default)]
    pub warm_copies: Option<u64>,
    /// The instance id (pod UID) reported or expected.
    pub instance: Option<String>,
    /// Until when a passive ejection keeps the unit out (while it does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejected_until_unix_ms: Option<u64>,
    /// Passive ejections in a row (each lasts longer than the one before).
    #[serde(default)]
    pub ejections: u32,
    /// Current share of new sessions (slow start ramps it from 0.05 to 1).
    pub weight: f64,
    /// Why the last check or request failed.
    pub last_error: Option<String>,
}

/// The farm's membership: units by name (a sorted map, so every gateway replica iterates them
/// in the same order).
#[derive(Default)]
pub struct Members {
    /// Units by name.
    pub units: BTreeMap<UnitName, Arc<Unit>>,
    /// When a unit name last joined a farm that had units before (a scale-up; Unix ms; 0:
    /// never). Rebalancing moves idle sessions for a while after it.
    pub grew_at_ms: u64,
}

/// The farm as the gateway sees it.
pub struct Farm {
    members: ArcSwap<Members>,
    metrics: Arc<Metrics>,
    max_idle_connections: usize,
    ejection: EjectionPolicy,
    /// Serialises ejection decisions, so concurrent failures cannot together pass the cap.
    ejecting: Mutex<()>,
    stop: CancellationToken,
}

impl Farm {
    /// An empty farm; cancelling `stop` stops every unit's checker.
    pub fn new(
        metrics: Arc<Metrics>,
        max_idle_connections: usize,
        ejection: EjectionPolicy,
        stop: CancellationToken,
    ) -> Farm {
        Farm {
            members: ArcSwap::from_pointee(Members::default()),
            metrics,
            max_idle_connections,
            ejection,
            ejecting: Mutex::new(()),
            stop,
        }
    }

    /// A request proved `unit` broken: it is taken out unless it is out already or the cap of
    /// units out of service is reached (then it keeps serving; its active checks decide).
    pub fn record_passive_failure(&self, unit: &Unit, why: &str) -> Ejection {
        self.record_passive_failure_at(now_ms(), unit, why)
    }

    /// [`Farm::record_passive_failure`] at a given time (Unix ms).
    pub fn record_passive_failure_at(&self, now: u64, unit: &Unit, why: &str) -> Ejection {
        unit.note_passive_failure(why);
        let _deciding = self.ejecting.lock().expect("ejection lock poisoned");
        if unit.health() == Health::Down {
            return Ejection::AlreadyOut;
        }
        let members = self.members();
        let out = members
            .units
            .values()
            .filter(|u| u.health() == Health::Down)
            .count();
        if out >= self.ejection.cap(members.units.len()) {
            self.metrics.ejection_refused();
            tracing::debug!(unit = %unit.name(), out, why, "not ejecting: --max-ejection-percent of the units are out already");
            return Ejection::CapReached;
        }
        Ejection::Ejected(unit.eject(now, &self.ejection, why))
    }

    /// A request to `unit` got no answer in time: enough of those in a row count as a passive
    /// failure (a slow answer alone may be the app's work, not a broken unit).
    pub fn record_timeout(&self, unit: &Unit, after: Duration) -> Ejection {
        if unit.count_timeout() < self.ejection.timeouts.max(1) {
            return Ejection::Counted;
        }
        unit.consecutive_timeouts.store(0, Ordering::Relaxed);
        self.record_passive_failure(
            unit,
            &format!(
                "{} requests in a row got no answer within {after:?}",
                self.ejection.timeouts.max(1)
            ),
        )
    }

    /// The current membership (lock-free; an `Arc`, so a request may keep it across awaits).
    pub fn members(&self) -> Arc<Members> {
        self.members.load_full()
    }

    /// Applies a membership reported by discovery. Units whose name and address are unchanged
    /// keep their state; returns the units that are new (their checkers must start).
    pub fn apply(&self, specs: Vec<UnitSpec>) -> Vec<Arc<Unit>> {
        let current = self.members.load_full();
        let mut next = BTreeMap::new();
        let mut added = Vec::new();
        // A new name in a farm that had units: more units than before (a replaced pod keeps
        // its unit's name).
        let grew =
            !current.units.is_empty() && specs.iter().any(|s| !current.units.contains_key(&s.name));
        for spec in specs {
            match current.units.get(&spec.name) {
                Some(u) if u.spec.address == spec.address && u.spec.instance == spec.instance => {
                    if u.spec.admin != spec.admin {
                        u.set_admin(spec.admin);
                    }
                    next.insert(spec.name.clone(), u.clone());
                }
                _ => {
                    tracing::info!(unit = %spec.name, address = %spec.address, "unit joined the farm");
                    let u = Arc::new(Unit::new(
                        spec.clone(),
                        &self.metrics,
                        self.max_idle_connections,
                        self.stop.child_token(),
                    ));
                    added.push(u.clone());
                    next.insert(spec.name, u);
                }
            }
        }
        for (name, u) in &current.units {
            let replaced = next.get(name).is_some_and(|n| !Arc::ptr_eq(n, u));
            if !next.contains_key(name) || replaced {
                if !replaced {
                    tracing::info!(unit = %name, "unit left the farm");
                    self.metrics.forget_unit(name);
                }
                u.removed.cancel();
            }
        }
        let grew_at_ms = if grew { now_ms() } else { current.grew_at_ms };
        self.members.store(Arc::new(Members {
            units: next,
            grew_at_ms,
        }));
        added
    }

    /// The whole status table.
    pub fn status(&self, slow_start: Duration) -> Vec<UnitStatus> {
        let now = now_ms();
        self.members()
            .units
            .values()
            .map(|u| u.status(now, slow_start))
            .collect()
    }
}

/// A farm of `n` units `web-0`…, all up, for the tests of the request path.
#[cfg(test)]
pub(crate) fn test_farm(n: usize, policy: EjectionPolicy, metrics: Arc<Metrics>) -> Farm {
    let farm = Farm::new(metrics, 4, policy, CancellationToken::new());
    farm.apply(
        (0..n)
            .map(|i| UnitSpec {
                name: format!("web-{i}").parse().unwrap(),
                address: format!("127.0.0.1:{}", i + 1),
                instance: None,
                admin: AdminState::Enabled,
            })
            .collect(),
    );
    for u in farm.members().units.values() {
        u.record_check(Ok(CheckOk::default()), Duration::ZERO, 2, 3);
    }
    farm
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(name: &str) -> Unit {
        Unit::new(
            UnitSpec {
                name: name.parse().unwrap(),
                address: "127.0.0.1:1".into(),
                instance: None,
                admin: AdminState::Enabled,
            },
            &Metrics::new(),
            4,
            CancellationToken::new(),
        )
    }

    #[test]
    fn rise_and_fall_thresholds() {
        let u = unit("web-0");
        assert_eq!(u.health(), Health::Unknown);
        let ok = || Ok(CheckOk::default());
        let d = Duration::from_millis(1);
        u.record_check(ok(), d, 2, 3);
        assert_eq!(u.health(), Health::Up, "first pass brings a new unit up");
        u.record_check(Err("x".into()), d, 2, 3);
        u.record_check(Err("x".into()), d, 2, 3);
        assert_eq!(u.health(), Health::Up);
        u.record_check(Err("x".into()), d, 2, 3);
        assert_eq!(u.health(), Health::Down);
        u.record_check(ok(), d, 2, 3);
        assert_eq!(u.health(), Health::Down);
        u.record_check(ok(), d, 2, 3);
        assert_eq!(u.health(), Health::Up);
    }

    fn farm_of(n: usize, policy: EjectionPolicy) -> Farm {
        test_farm(n, policy, Arc::new(Metrics::new()))
    }

    fn member(farm: &Farm, name: &str) -> Arc<Unit> {
        farm.members().units[&name.parse().unwrap()].clone()
    }

    #[test]
    fn passive_failures_take_a_unit_out_at_once() {
        let farm = farm_of(3, EjectionPolicy::default());
        let u = member(&farm, "web-0");
        let e = farm.record_passive_failure(&u, "connection refused");
        assert_eq!(e, Ejection::Ejected(Duration::from_secs(5)));
        assert_eq!(u.health(), Health::Down);
        assert_eq!(
            farm.record_passive_failure(&u, "connection refused"),
            Ejection::AlreadyOut
        );
    }

    #[test]
    fn the_cap_is_a_share_of_the_units_and_at_least_one() {
        let p = |max_percent| EjectionPolicy {
            max_percent,
            ..EjectionPolicy::default()
        };
        assert_eq!(p(50).cap(1), 1);
        assert_eq!(p(50).cap(3), 1);
        assert_eq!(p(50).cap(4), 2);
        assert_eq!(p(50).cap(9), 4);
        assert_eq!(p(100).cap(3), 3);
        assert_eq!(p(250).cap(3), 3, "more than 100 % is 100 %");
        assert_eq!(p(0).cap(3), 0, "0 turns passive ejection off");
    }

    #[test]
    fn passive_failures_never_take_out_more_than_the_cap() {
        let farm = farm_of(4, EjectionPolicy::default());
        let results: Vec<Ejection> = (0..4)
            .map(|i| farm.record_passive_failure(&member(&farm, &format!("web-{i}")), "reset"))
            .collect();
        assert!(matches!(results[0], Ejection::Ejected(_)));
        assert!(matches!(results[1], Ejection::Ejected(_)));
        assert_eq!(results[2..], [Ejection::CapReached, Ejection::CapReached]);
        let up = farm
            .members()
            .units
            .values()
            .filter(|u| u.health() == Health::Up)
            .count();
        assert_eq!(up, 2, "half the farm keeps serving");
        assert_eq!(farm.metrics.ejections_refused.get(), 2);
        // Units out because their active checks fail count towards the cap too.
        let farm = farm_of(4, EjectionPolicy::default());
        for _ in 0..3 {
            member(&farm, "web-0").record_check(Err("down".into()), Duration::ZERO, 2, 3);
        }
        assert!(matches!(
            farm.record_passive_failure(&member(&farm, "web-1"), "reset"),
            Ejection::Ejected(_)
        ));
        assert_eq!(
            farm.record_passive_failure(&member(&farm, "web-2"), "reset"),
            Ejection::CapReached
        );
    }

    #[test]
    fn an_ejected_unit_returns_by_its_checks_after_a_growing_ejection_time() {
        let policy = EjectionPolicy {
            base_time: Duration::from_secs(10),
            max_time: Duration::from_secs(25),
            ..EjectionPolicy::default()
        };
        let farm = farm_of(2, policy);
        let u = member(&farm, "web-0");
        let t0 = now_ms();
        let ok = || Ok(CheckOk::default());
        let back_after = |start: u64| -> u64 {
            // Checks pass every second from `start`: when does the unit come back?
            (1..=60)
                .map(|s| start + s * 1000)
                .find(|&t| {
                    u.record_check_at(t, ok(), Duration::ZERO, 2, 3);
                    u.health() == Health::Up
                })
                .expect("comes back within a minute")
                - start
        };
        assert_eq!(
            farm.record_passive_failure_at(t0, &u, "reset"),
            Ejection::Ejected(Duration::from_secs(10))
        );
        assert_eq!(
            back_after(t0),
            10_000,
            "passing checks wait out the ejection"
        );
        let t1 = t0 + 11_000;
        assert_eq!(
            farm.record_passive_failure_at(t1, &u, "reset"),
            Ejection::Ejected(Duration::from_secs(20)),
            "ejected again soon after returning: twice as long"
        );
        assert_eq!(back_after(t1), 20_000);
        let t2 = t1 + 21_000;
        assert_eq!(
            farm.record_passive_failure_at(t2, &u, "reset"),
            Ejection::Ejected(Duration::from_secs(25)),
            "never longer than the maximum"
        );
        back_after(t2);
        // The status table shows the ejection record.
        assert_eq!(u.status(t2 + 1, Duration::ZERO).ejections, 3);
        // Failing checks keep it out past the ejection time; passing ones alone bring it back.
        let t3 = t2 + 25_000 + 400_000;
        assert!(
            matches!(
                farm.record_passive_failure_at(t3, &u, "reset"),
                Ejection::Ejected(d) if d == Duration::from_secs(10)
            ),
            "long in service since: the multiplier starts over"
        );
        u.record_check_at(t3 + 30_000, Err("refused".into()), Duration::ZERO, 2, 3);
        u.record_check_at(t3 + 31_000, ok(), Duration::ZERO, 2, 3);
        assert_eq!(
            u.health(),
            Health::Down,
            "one pass is below the rise threshold"
        );
        u.record_check_at(t3 + 32_000, ok(), Duration::ZERO, 2, 3);
        assert_eq!(u.health(), Health::Up);
    }

    #[test]
    fn only_timeouts_in_a_row_count_as_a_passive_failure() {
        let farm = farm_of(2, EjectionPolicy::default());
        let u = member(&farm, "web-0");
        let after = Duration::from_secs(60);
        for _ in 0..4 {
            assert_eq!(farm.record_timeout(&u, after), Ejection::Counted);
        }
        u.record_response(200, Duration::from_millis(1));
        for _ in 0..4 {
            assert_eq!(farm.record_timeout(&u, after), Ejection::Counted);
        }
        assert!(matches!(
            farm.record_timeout(&u, after),
            Ejection::Ejected(_)
        ));
        assert_eq!(u.health(), Health::Down);
    }

    #[test]
    fn the_apps_server_errors_never_take_a_unit_out() {
        let u = unit("web-0");
        u.record_check(Ok(CheckOk::default()), Duration::ZERO, 2, 3);
        for _ in 0..1000 {
            u.record_response(500, Duration::from_millis(1));
            u.record_response(503, Duration::from_millis(1));
        }
        assert_eq!(u.health(), Health::Up);
        assert_eq!(u.status(now_ms(), Duration::ZERO).requests, 2000);
    }

    #[test]
    fn admin_states_gate_new_and_existing_sessions() {
        let u = unit("web-0");
        u.record_check(Ok(CheckOk::default()), Duration::ZERO, 2, 3);
        assert!(u.takes_new_sessions() && u.serves_its_sessions());
        u.set_admin(AdminState::Draining);
        assert!(!u.takes_new_sessions() && u.serves_its_sessions());
        u.set_admin(AdminState::Disabled);
        assert!(!u.takes_new_sessions() && !u.serves_its_sessions());
    }

    #[test]
    fn slow_start_ramps_the_weight() {
        let u = unit("web-0");
        u.record_check(Ok(CheckOk::default()), Duration::ZERO, 2, 3);
        let since = u.up_since_ms.load(Ordering::Relaxed);
        let ramp = Duration::from_secs(10);
        assert!((u.weight(since, ramp) - 0.05).abs() < 1e-9);
        assert!((u.weight(since + 5_000, ramp) - 0.5).abs() < 1e-9);
        assert_eq!(u.weight(since + 60_000, ramp), 1.0);
        assert_eq!(u.weight(since, Duration::ZERO), 1.0);
    }

    #[test]
    fn a_new_instance_is_recorded_as_a_replacement() {
        let u = unit("web-0");
        let a = InstanceId::random();
        let b = InstanceId::random();
        u.record_check(
            Ok(CheckOk {
                instance: Some(a),
                ..CheckOk::default()
            }),
            Duration::ZERO,
            2,
            3,
        );
        assert_eq!(u.instance(), Some(a));
        u.record_check(
            Ok(CheckOk {
                instance: Some(b),
                ..CheckOk::default()
            }),
            Duration::ZERO,
            2,
            3,
        );
        assert_eq!(u.instance(), Some(b));
        assert_eq!(u.metrics.replacements.get(), 1);
    }

    #[test]
    fn membership_changes_keep_state_of_unchanged_units() {
        let farm = Farm::new(
            Arc::new(Metrics::new()),
            4,
            EjectionPolicy::default(),
            CancellationToken::new(),
        );
        let spec = |n: &str, port: u16| UnitSpec {
            name: n.parse().unwrap(),
            address: format!("127.0.0.1:{port}"),
            instance: None,
            admin: AdminState::Enabled,
        };
        let added = farm.apply(vec![spec("a", 1), spec("b", 2)]);
        assert_eq!(added.len(), 2);
        let a = farm.members().units[&"a".parse().unwrap()].clone();
        a.record_check(Ok(CheckOk::default()), Duration::ZERO, 2, 3);
        let added = farm.apply(vec![spec("a", 1), spec("c", 3)]);
        assert_eq!(added.len(), 1);
        assert!(Arc::ptr_eq(
            &farm.members().units[&"a".parse().unwrap()],
            &a
        ));
        assert_eq!(a.health(), Health::Up);
        let b_gone = !farm.members().units.contains_key(&"b".parse().unwrap());
        assert!(b_gone);
        // A changed address is a new unit with fresh state.
        let added = farm.apply(vec![spec("a", 9), spec("c", 3)]);
        assert_eq!(added.len(), 1);
        assert!(a.removed.is_cancelled());
    }
}
