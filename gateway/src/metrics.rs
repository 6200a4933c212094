//! Prometheus metrics of the gateway (admin port, `/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use stickyfarm_api::UnitName;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UnitLabel {
    unit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    unit: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabel {
    end: &'static str,
}

/// Status classes, the label values of per-class series.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The response time histogram's buckets: 0.5 ms to 16 s, doubling.
fn response_time_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every gateway metric.
pub struct Metrics {
    registry: Registry,
    up: Family<UnitLabel, Gauge>,
    in_flight: Family<UnitLabel, Gauge>,
    tunnels: Family<UnitLabel, Gauge>,
    draining_sessions: Family<UnitLabel, Gauge>,
    tunnels_ended: Family<EndLabel, Counter>,
    responses: Family<StatusLabel, Counter>,
    response_seconds: Family<UnitLabel, Histogram, fn() -> Histogram>,
    request_seconds: Family<StatusLabel, Histogram, fn() -> Histogram>,
    connect_seconds: Family<UnitLabel, Histogram, fn() -> Histogram>,
    state_changes: Family<UnitLabel, Counter>,
    checks_ok: Family<UnitLabel, Counter>,
    checks_failed: Family<UnitLabel, Counter>,
    passive_failures: Family<UnitLabel, Counter>,
    ejections: Family<UnitLabel, Counter>,
    replacements: Family<UnitLabel, Counter>,
    pub(crate) ejections_refused: Counter,
    failovers: Counter,
    last_resort: Counter,
    rebalanced: Counter,
    drained: Counter,
    retries: Counter,
    refused: Family<KindLabel, Counter>,
    control_refused: Counter,
    access_log_dropped: Counter,
    tls_expiry: Gauge,
    tls_reloads: Family<ResultLabel, Counter>,
    tls_handshake_failures: Counter,
}

/// One unit's metric handles, taken once so the request path never looks up a label set.
pub struct UnitMetrics {
    pub(crate) up: Gauge,
    pub(crate) in_flight: Gauge,
    pub(crate) tunnels: Gauge,
    pub(crate) draining_sessions: Gauge,
    pub(crate) state_changes: Counter,
    pub(crate) checks_ok: Counter,
    pub(crate) checks_failed: Counter,
    pub(crate) passive_failures: Counter,
    pub(crate) ejections: Counter,
    pub(crate) replacements: Counter,
    responses: [Counter; 5],
    response_seconds: Histogram,
    request_seconds: [Histogram; 5],
    connect_seconds: Histogram,
}

impl UnitMetrics {
    /// Counts a response by status class and records how long the unit took to answer.
    pub(crate) fn record_response(&self, status: u16, took: std::time::Duration) {
        self.responses[status_class(status)].inc();
        self.response_seconds.observe(took.as_secs_f64());
    }

    /// Records a whole request, from its arrival to its answer's last byte.
    pub(crate) fn record_request(&self, status: u16, took: std::time::Duration) {
        self.request_seconds[status_class(status)].observe(took.as_secs_f64());
    }

    /// Records opening a connection to the unit.
    pub(crate) fn record_connect(&self, took: std::time::Duration) {
        self.connect_seconds.observe(took.as_secs_f64());
    }
}

/// The index of a status's class: 1xx → 0 … 5xx → 4.
fn status_class(status: u16) -> usize {
    usize::from((status / 100).clamp(1, 5)) - 1
}

/// Connect time buckets: 50 µs to about 1.6 s, doubling.
fn connect_time_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric under the `stickyfarm_gateway` prefix.
    pub fn new() -> Self {
        let mut root = stickyfarm_api::metrics::root("gateway");
        let registry = root.sub_registry_with_prefix("stickyfarm_gateway");
        let m = Metrics {
            registry: Registry::default(),
            up: Family::default(),
            in_flight: Family::default(),
            tunnels: Family::default(),
            draining_sessions: Family::default(),
            tunnels_ended: Family::default(),
            responses: Family::default(),
            response_seconds: Family::new_with_constructor(response_time_histogram),
            request_seconds: Family::new_with_constructor(response_time_histogram),
            connect_seconds: Family::new_with_constructor(connect_time_histogram),
            state_changes: Family::default(),
            checks_ok: Family::default(),
            checks_failed: Family::default(),
            passive_failures: Family::default(),
            ejections: Family::default(),
            replacements: Family::default(),
            ejections_refused: Counter::default(),
            failovers: Counter::default(),
            last_resort: Counter::default(),
            rebalanced: Counter::default(),
            drained: Counter::default(),
            retries: Counter::default(),
            refused: Family::default(),
            control_refused: Counter::default(),
            access_log_dropped: Counter::default(),
            tls_expiry: Gauge::default(),
            tls_reloads: Family::default(),
            tls_handshake_failures: Counter::default(),
        };
        registry.register("unit_up", "1 while the unit is in service", m.up.clone());
        registry.register(
            "unit_in_flight",
            "Requests in flight per unit",
            m.in_flight.clone(),
        );
        registry.register(
            "unit_tunnels",
            "Upgraded connections (WebSockets) open per unit; each also counts in flight",
            m.tunnels.clone(),
        );
        registry.register(
            "unit_draining_sessions",
            "Sessions a draining unit still holds by its last check (drain progress; 0 when not draining)",
            m.draining_sessions.clone(),
        );
        registry.register(
            "tunnels_ended",
            "Upgraded connections that ended, by how: closed, far_side_gone (the unit stopped; WebSocket clients got 1012), idle, stopped, client_gone, not_upgraded",
            m.tunnels_ended.clone(),
        );
        registry.register(
            "responses",
            "Responses per unit and status class",
            m.responses.clone(),
        );
        registry.register(
            "response_seconds",
            "Time from forwarding a request to a unit until its response head arrived, per unit",
            m.response_seconds.clone(),
        );
        registry.register(
            "request_seconds",
            "Time from a request's arrival to its answer's last byte, per unit and status class",
            m.request_seconds.clone(),
        );
        registry.register(
            "connect_seconds",
            "Time to open a connection to a unit, per unit",
            m.connect_seconds.clone(),
        );
        registry.register(
            "unit_state_changes",
            "Unit health changes",
            m.state_changes.clone(),
        );
        registry.register(
            "health_checks_passed",
            "Passed active checks",
            m.checks_ok.clone(),
        );
        registry.register(
            "health_checks_failed",
            "Failed active checks",
            m.checks_failed.clone(),
        );
        registry.register(
            "passive_failures",
            "Failed requests that prove a unit broken (connect errors, resets, repeated timeouts, the sidecar's unit-unavailable signal)",
            m.passive_failures.clone(),
        );
        registry.register(
            "ejections",
            "Units taken out of service by passive failures",
            m.ejections.clone(),
        );
        registry.register(
            "ejections_refused",
            "Passive failures that took no unit out because --max-ejection-percent of the units were already out",
            m.ejections_refused.clone(),
        );
        registry.register(
            "unit_replacements",
            "Units that answered with a new instance id (a new pod)",
            m.replacements.clone(),
        );
        registry.register(
            "failovers",
            "Requests sent to a backup because their unit was out of service",
            m.failovers.clone(),
        );
        registry.register(
            "last_resort",
            "Requests sent to a unit out of service because no unit was in service (every unit failing its checks at once: most likely something they share, such as the database)",
            m.last_resort.clone(),
        );
        registry.register(
            "rebalanced_sessions",
            "Idle sessions moved to a less loaded unit after a scale-up (their unit released them)",
            m.rebalanced.clone(),
        );
        registry.register(
            "drained_sessions",
            "Sessions moved off a draining unit to their backup at their next request (their unit released them)",
            m.drained.clone(),
        );
        registry.register(
            "retries",
            "Requests retried on a backup after a failed attempt",
            m.retries.clone(),
        );
        registry.register(
            "refused",
            "Requests the gateway answered itself instead of a unit (refusals, and units that failed or timed out), by reason",
            m.refused.clone(),
        );
        registry.register(
            "control_refused",
            "Unit actions refused on the control port for a missing or wrong admin token",
            m.control_refused.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer fell behind (a slow disk or pipe)",
            m.access_log_dropped.clone(),
        );
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "End of validity of the TLS certificate in use (Unix time); 0 without TLS",
            m.tls_expiry.clone(),
        );
        registry.register(
            "tls_reloads",
            "Changes of the TLS certificate files: ok (now in use) or failed (refused; the previous certificate stays)",
            m.tls_reloads.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Client connections whose TLS handshake failed (no common protocol or cipher, not TLS, reset)",
            m.tls_handshake_failures.clone(),
        );
        // Every reason exists at zero, so a rate over it is defined before the first refusal.
        for kind in crate::proxy::Refusal::KINDS {
            let _ = m.refused.get_or_create(&KindLabel { kind });
        }
        for result in ["ok", "failed"] {
            let _ = m.tls_reloads.get_or_create(&ResultLabel { result });
        }
        for end in stickyfarm_api::tunnel::TunnelEnd::ALL {
            let _ = m
                .tunnels_ended
                .get_or_create(&EndLabel { end: end.as_str() });
        }
        Metrics {
            registry: root,
            ..m
        }
    }

    /// Handles for one unit.
    pub fn unit(&self, name: &UnitName) -> UnitMetrics {
        let l = UnitLabel {
            unit: name.to_string(),
        };
        let class = |class| StatusLabel {
            unit: name.to_string(),
            class,
        };
        UnitMetrics {
            up: self.up.get_or_create(&l).clone(),
            in_flight: self.in_flight.get_or_create(&l).clone(),
            tunnels: self.tunnels.get_or_create(&l).clone(),
            draining_sessions: self.draining_sessions.get_or_create(&l).clone(),
            state_changes: self.state_changes.get_or_create(&l).clone(),
            checks_ok: self.checks_ok.get_or_create(&l).clone(),
            checks_failed: self.checks_failed.get_or_create(&l).clone(),
            passive_failures: self.passive_failures.get_or_create(&l).clone(),
            ejections: self.ejections.get_or_create(&l).clone(),
            replacements: self.replacements.get_or_create(&l).clone(),
            responses: CLASSES.map(|c| self.responses.get_or_create(&class(c)).clone()),
            response_seconds: self.response_seconds.get_or_create(&l).clone(),
            request_seconds: CLASSES.map(|c| self.request_seconds.get_or_create(&class(c)).clone()),
            connect_seconds: self.connect_seconds.get_or_create(&l).clone(),
        }
    }

    /// Drops the gauges of a unit that left the farm.
    pub fn forget_unit(&self, name: &UnitName) {
        let l = UnitLabel {
            unit: name.to_string(),
        };
        self.up.remove(&l);
        self.in_flight.remove(&l);
        self.tunnels.remove(&l);
        self.draining_sessions.remove(&l);
        self.response_seconds.remove(&l);
        self.connect_seconds.remove(&l);
        for class in CLASSES {
            self.request_seconds.remove(&StatusLabel {
                unit: name.to_string(),
                class,
            });
        }
    }

    pub(crate) fn failover(&self) {
        self.failovers.inc();
    }

    pub(crate) fn last_resort(&self) {
        self.last_resort.inc();
    }

    /// Counts a session its unit released, by why it moved.
    pub(crate) fn moved(&self, reason: crate::proxy::MoveReason) {
        match reason {
            crate::proxy::MoveReason::Drain => self.drained.inc(),
            crate::proxy::MoveReason::Rebalance => self.rebalanced.inc(),
        };
    }

    pub(crate) fn ejection_refused(&self) {
        self.ejections_refused.inc();
    }

    pub(crate) fn retry(&self) {
        self.retries.inc();
    }

    pub(crate) fn access_log_dropped(&self) {
        self.access_log_dropped.inc();
    }

    pub(crate) fn control_refused(&self) {
        self.control_refused.inc();
    }

    pub(crate) fn tunnel_ended(&self, end: stickyfarm_api::tunnel::TunnelEnd) {
        self.tunnels_ended
            .get_or_create(&EndLabel { end: end.as_str() })
            .inc();
    }

    pub(crate) fn tls_certificate(&self, not_after: i64) {
        self.tls_expiry.set(not_after);
    }

    pub(crate) fn tls_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.tls_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    pub(crate) fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.inc();
    }

    pub(crate) fn refused(&self, kind: &'static str) {
        self.refused.get_or_create(&KindLabel { kind }).inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
