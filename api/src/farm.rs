//! The `ServerFarm` manifest (`stickyfarm.dev/v1alpha1`): one farm, as users write it in YAML.
//!
//! `farmctl up` runs it on one machine; the operator reconciles the same document on
//! Kubernetes. Unknown fields are refused at every level, and every value is validated while it
//! is read, so a mistake is reported with its field and line.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, PodSecurityContext, Probe, ResourceRequirements, Toleration,
};
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::{SESSION_COOKIE_NAME_PATTERN, SessionCookieName, UnitName};

/// API group and version of the resource.
pub const API_VERSION: &str = "stickyfarm.dev/v1alpha1";
/// Kind of the resource.
pub const KIND: &str = "ServerFarm";

/// A whole `ServerFarm` document as `farmctl` reads it from a file: strict about `apiVersion`,
/// `kind` and the metadata a farm may carry. On Kubernetes the same spec is the [`ServerFarm`]
/// custom resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerFarmManifest {
    /// Must be [`API_VERSION`].
    pub api_version: ApiVersion,
    /// Must be [`KIND`].
    pub kind: Kind,
    /// Name (and namespace) of the farm.
    pub metadata: Metadata,
    /// The farm.
    pub spec: ServerFarmSpec,
}

/// Object metadata (the subset a farm uses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// The farm's name; units are named `<name>-<ordinal>`.
    pub name: FarmName,
    /// Namespace (Kubernetes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels (Kubernetes only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations (Kubernetes only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The farm's desired state: its units, their app and sidecar, the gateway and the database
/// (US 7,197,547: a main load balancer, one sub-farm unit per commerce pod, a shared database).
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "stickyfarm.dev",
    version = "v1alpha1",
    kind = "ServerFarm",
    namespaced,
    shortname = "sf",
    category = "stickyfarm",
    status = "ServerFarmStatus",
    derive = "PartialEq",
    doc = "A load-balanced server farm whose units keep each user's session in a local cache, written through to PostgreSQL.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Units", type_ = "string", json_path = ".status.unitsReady", description = "Ready units / desired units"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Gateway", type_ = "string", json_path = ".status.gatewayEndpoint", description = "Where clients reach the farm"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 60")
        .message("metadata.name must be a DNS label of at most 60 characters (units are named <name>-<ordinal>)")
        .reason(Reason::FieldValueInvalid),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerFarmSpec {
    /// Number of units (commerce pods), 1 to 64.
    #[serde(default = "default_replicas")]
    pub replicas: Replicas,
    /// The application container of every unit.
    pub app: AppSpec,
    /// The Stickyfarm sidecar of every unit.
    #[serde(default)]
    pub sidecar: SidecarSettings,
    /// Session cookies and lifetimes (the shape of Gateway API's session persistence, GEP-1619).
    #[serde(default)]
    pub session_persistence: SessionPersistence,
    /// The gateway (the farm's main load balancer).
    #[serde(default)]
    pub gateway: GatewaySettings,
    /// Where session state is kept: a managed PostgreSQL (the default) or an external one.
    #[serde(default)]
    pub database: DatabaseSpec,
    /// Scheduling and security settings for the unit pods.
    #[serde(default, skip_serializing_if = "PodSettings::is_empty")]
    pub pod: PodSettings,
    /// Where the gateway and the sidecars export their traces.
    #[serde(default, skip_serializing_if = "TracingSettings::is_empty")]
    pub tracing: TracingSettings,
}

/// Trace export of the farm's gateway and sidecars (OpenTelemetry, OTLP over HTTP/protobuf).
/// Unset, the operator's own collector applies (its `OTEL_EXPORTER_OTLP_ENDPOINT`, the chart's
/// `tracing.otlpEndpoint`); with neither, nothing is exported.
#[derive(KubeSchema, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingSettings {
    /// The collector's base URL, e.g. `http://otel-collector.observability:4318` (spans go to
    /// `/v1/traces`); `https://` verifies the collector against the system's trust store or `ca`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 8, max = 2048),
        regex(pattern = r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
    )]
    pub otlp_endpoint: Option<String>,
    /// The share of new traces recorded, 0 to 1 (default 1); a trace a client already started
    /// follows the client's decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sampling_ratio: Option<f64>,
    /// Verify an `https://` collector against this CA certificate (PEM, in a Secret of the
    /// farm's namespace) instead of the system's trust store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<SecretKey>,
}

impl TracingSettings {
    /// Nothing set.
    pub fn is_empty(&self) -> bool {
        self == &TracingSettings::default()
    }
}

fn default_replicas() -> Replicas {
    Replicas(3)
}

/// The app container.
#[derive(KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppSpec {
    /// Container image. `farmctl` runs the local binary `stickyfarm-<last path segment>` for it.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Port the app listens on (inside the pod, behind the sidecar).
    #[serde(default = "default_app_port")]
    pub port: Port,
    /// What the app speaks on its port: `http1` (HTTP/1.1), or `h2c` (HTTP/2 without TLS,
    /// e.g. a gRPC server): requests that reach the gateway over HTTP/2 then stay HTTP/2 all
    /// the way to the app, trailers included, with the same stickiness.
    #[serde(default)]
    pub protocol: AppProtocol,
    /// How long the app keeps an idle connection open (its keep-alive timeout: 5s in Node.js
    /// and uvicorn, 2s in gunicorn). The sidecar stops reusing an idle connection a second
    /// before (half way, for a timeout under 2s), so that no request is written into one the
    /// app is closing, which loses it: a POST then fails its client with 502.
    #[serde(default = "default_app_keep_alive")]
    pub keep_alive_timeout: DurationText,
    /// Environment variables (`valueFrom` works on Kubernetes only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// CPU and memory requests and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Readiness probe of the app container (the sidecar's own readiness already checks the app
    /// through the health endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(PROBE_STAYS_IN_POD)
        .message("app.readinessProbe: httpGet.host and tcpSocket.host are not allowed: a probe checks its own pod, never another host")
        .reason(Reason::FieldValueForbidden))]
    pub readiness_probe: Option<Probe>,
    /// Liveness probe of the app container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(PROBE_STAYS_IN_POD)
        .message("app.livenessProbe: httpGet.host and tcpSocket.host are not allowed: a probe checks its own pod, never another host")
        .reason(Reason::FieldValueForbidden))]
    pub liveness_probe: Option<Probe>,
    /// Startup probe of the app container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(PROBE_STAYS_IN_POD)
        .message("app.startupProbe: httpGet.host and tcpSocket.host are not allowed: a probe checks its own pod, never another host")
        .reason(Reason::FieldValueForbidden))]
    pub startup_probe: Option<Probe>,
}

/// What the app speaks on its port.
#[derive(JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// HTTP/1.1.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (no TLS): gRPC servers, HTTP/2 apps.
    H2c,
}

/// CEL: a probe names no other host (the kubelet would connect wherever it says).
const PROBE_STAYS_IN_POD: &str = "(!has(self.httpGet) || !has(self.httpGet.host)) && (!has(self.tcpSocket) || !has(self.tcpSocket.host))";

fn default_app_keep_alive() -> DurationText {
    DurationText::from_str(crate::config::DEFAULT_APP_KEEP_ALIVE_TIMEOUT).expect("valid default")
}

fn default_app_port() -> Port {
    Port(3000)
}

/// Sidecar settings.
#[derive(JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarSettings {
    /// Memory tier of the session cache, e.g. `64Mi`.
    #[serde(default = "default_cache_memory")]
    pub cache_memory: Quantity,
    /// Optional disk tier of the session cache (an emptyDir of this size on Kubernetes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_disk: Option<Quantity>,
    /// CPU and memory of the sidecar container (default: requests of 50m CPU and the cache
    /// size plus 64Mi of memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Share of the memory tier, in percent, kept for warm copies of the sessions for which
    /// this unit is the backup (0 turns warm backups off). Taken out of the memory tier, so
    /// warm copies never evict the unit's own sessions.
    #[serde(default = "default_warm_backup_percent")]
    #[schemars(range(max = 50))]
    pub warm_backup_percent: u8,
}

fn default_warm_backup_percent() -> u8 {
    crate::config::DEFAULT_WARM_BACKUP_PERCENT
}

fn default_cache_memory() -> Quantity {
    Quantity::from_str("64Mi").expect("valid default")
}

impl Default for SidecarSettings {
    fn default() -> Self {
        SidecarSettings {
            cache_memory: default_cache_memory(),
            cache_disk: None,
            resources: None,
            warm_backup_percent: default_warm_backup_percent(),
        }
    }
}

/// Session cookies and lifetimes.
#[derive(KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("duration(self.idleTimeout) <= duration(self.absoluteTimeout)")
    .message("idleTimeout must not be longer than absoluteTimeout")
    .reason(Reason::FieldValueInvalid))]
pub struct SessionPersistence {
    /// Name of the session cookie.
    #[serde(default)]
    #[x_kube(validation = Rule::new("!(self in ['sf_instance', 'sf_gen', 'sf_unit'])")
        .message("sessionName must not be one of Stickyfarm's other cookies (sf_instance, sf_gen, sf_unit)")
        .reason(Reason::FieldValueInvalid))]
    pub session_name: SessionCookieName,
    /// A session unused this long expires.
    #[serde(default = "default_idle")]
    pub idle_timeout: DurationText,
    /// A session older than this expires.
    #[serde(default = "default_absolute")]
    pub absolute_timeout: DurationText,
    /// Mark the cookies `Secure` and build unit links with `https` (on by default: serve the
    /// farm over HTTPS, e.g. behind an Ingress that terminates TLS). Set false only for a farm
    /// reached over plain HTTP.
    #[serde(default = "yes")]
    pub secure: bool,
}

fn yes() -> bool {
    true
}

fn default_idle() -> DurationText {
    DurationText::from_str("30m").expect("valid default")
}

fn default_absolute() -> DurationText {
    DurationText::from_str("24h").expect("valid default")
}

impl Default for SessionPersistence {
    fn default() -> Self {
        SessionPersistence {
            session_name: SessionCookieName::default(),
            idle_timeout: default_idle(),
            absolute_timeout: default_absolute(),
            secure: yes(),
        }
    }
}

/// Gateway settings.
#[derive(KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.unitAddressing != 'host' || has(self.farmHost)")
    .message("unitAddressing host needs farmHost (units are reached as <unit>.<farmHost>)")
    .reason(Reason::FieldValueRequired))]
#[x_kube(validation = Rule::new("!has(self.tls) || !self.tls.redirectHttp || self.port != 80")
    .message("tls.redirectHttp uses the Service's port 80 for plain HTTP: give the gateway another port (443)")
    .reason(Reason::FieldValueInvalid))]
pub struct GatewaySettings {
    /// Gateway replicas (they agree on failover targets without talking to each other).
    #[serde(default = "one")]
    pub replicas: Replicas,
    /// Type of the gateway's Service.
    #[serde(default)]
    pub service_type: ServiceType,
    /// Port clients use.
    #[serde(default = "default_gateway_port")]
    pub port: Port,
    /// Host name of the farm, for host-style unit addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub farm_host: Option<String>,
    /// The host (and port, when not the scheme's default) clients reach the farm by, e.g.
    /// `shop.example.com`. Unit links are built from it and never from a client's `Host`
    /// header; without it path-style unit links are relative (`/_unit/<unit>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 259),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]{1,5})?$")
    )]
    pub public_host: Option<String>,
    /// `path` (`/_unit/<unit>/…`) or `host` (`<unit>.<farm host>`).
    #[serde(default)]
    pub unit_addressing: UnitAddressing,
    /// Load-balancing policy for new sessions.
    #[serde(default)]
    pub policy: BalancingPolicy,
    /// After a failover: `stay` on the backup, or `return` when the unit is back.
    #[serde(default)]
    pub failback: FailbackPolicy,
    /// The active health check (the patent's Server Status Check).
    #[serde(default)]
    pub health_check: HealthCheck,
    /// TLS at the gateway: HTTPS (HTTP/2 and HTTP/1.1) with the certificate of a
    /// `kubernetes.io/tls` Secret, such as cert-manager's Certificate makes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<GatewayTls>,
    /// Upgraded connections (WebSockets) through the gateway.
    #[serde(default)]
    pub tunnels: TunnelSettings,
    /// Moving idle sessions to units added by a scale-up.
    #[serde(default)]
    pub rebalance: RebalanceSettings,
}

/// After units are added, sessions idle for `idleAfter` on a unit that holds more than its
/// share move to the least loaded unit at their next request (addressed by the routing
/// cookie; a link naming a unit is never moved), for `window` after the scale-up.
#[derive(JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RebalanceSettings {
    /// A session with no request for this long may move (`0s`: never rebalance).
    #[serde(default = "default_rebalance_idle")]
    pub idle_after: DurationText,
    /// How long after units were added sessions are moved.
    #[serde(default = "default_rebalance_window")]
    pub window: DurationText,
}

fn default_rebalance_idle() -> DurationText {
    DurationText::from_str("10s").expect("valid default")
}

fn default_rebalance_window() -> DurationText {
    DurationText::from_str("10m").expect("valid default")
}

impl Default for RebalanceSettings {
    fn default() -> Self {
        RebalanceSettings {
            idle_after: default_rebalance_idle(),
            window: default_rebalance_window(),
        }
    }
}

/// TLS at the gateway.
#[derive(JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayTls {
    /// The `kubernetes.io/tls` Secret in the farm's namespace (keys `tls.crt`, `tls.key`). A
    /// renewed Secret is picked up within about a minute without dropping connections.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub secret_name: String,
    /// Also listen for plain HTTP (the Service's port 80) and redirect it to HTTPS (308).
    #[serde(default)]
    pub redirect_http: bool,
    /// Send `Strict-Transport-Security: max-age=…` with every answer (e.g. `8760h`, a year). Off
    /// unless set: once browsers have seen it, they refuse plain HTTP to the host for that long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts_max_age: Option<DurationText>,
}

/// Upgraded connections (WebSockets) through the gateway.
#[derive(JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TunnelSettings {
    /// Upgraded connections one unit may hold open through each gateway replica; more get
    /// 503 with `Retry-After`.
    #[serde(default = "default_tunnels_per_unit")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_per_unit: u32,
    /// An upgraded connection with no byte either way for this long is closed (WebSocket
    /// clients get 1001); apps that stay quiet longer send pings.
    #[serde(default = "default_tunnel_idle")]
    pub idle_timeout: DurationText,
}

fn default_tunnels_per_unit() -> u32 {
    4096
}

fn default_tunnel_idle() -> DurationText {
    DurationText::from_str("1h").expect("valid default")
}

impl Default for TunnelSettings {
    fn default() -> Self {
        TunnelSettings {
            max_per_unit: default_tunnels_per_unit(),
            idle_timeout: default_tunnel_idle(),
        }
    }
}

fn one() -> Replicas {
    Replicas(1)
}

fn default_gateway_port() -> Port {
    Port(8080)
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            replicas: one(),
            service_type: ServiceType::default(),
            port: default_gateway_port(),
            farm_host: None,
            public_host: None,
            unit_addressing: UnitAddressing::default(),
            policy: BalancingPolicy::default(),
            failback: FailbackPolicy::default(),
            health_check: HealthCheck::default(),
            tls: None,
            tunnels: TunnelSettings::default(),
            rebalance: RebalanceSettings::default(),
        }
    }
}

/// Type of the gateway's Service.
#[derive(JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceType {
    /// Reachable inside the cluster (put an Ingress or Gateway in front).
    #[default]
    ClusterIP,
    /// Also on a port of every node.
    NodePort,
    /// Through the cloud's load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// Every type.
    pub const ALL: [ServiceType; 3] = [
        ServiceType::ClusterIP,
        ServiceType::NodePort,
        ServiceType::LoadBalancer,
    ];

    /// The name Kubernetes uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

impl FromStr for ServiceType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ServiceType::ALL
            .into_iter()
            .find(|t| t.as_str() == s.trim())
            .ok_or_else(|| {
                format!("{s:?} is not a Service type: ClusterIP, NodePort or LoadBalancer")
            })
    }
}

/// Unit address style.
#[derive(JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnitAddressing {
    /// `/_unit/<unit>/…`.
    #[default]
    Path,
    /// `<unit>.<farm host>`.
    Host,
}

/// Load-balancing policy.
#[derive(JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BalancingPolicy {
    /// Fewest requests in flight (power of two choices).
    #[default]
    LeastInFlight,
    /// In turn.
    RoundRobin,
    /// At random.
    Random,
}

/// Failback policy.
#[derive(JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailbackPolicy {
    /// Stay on the backup.
    #[default]
    Stay,
    /// Return to the original unit when it is back.
    Return,
}

/// The gateway's active health check of every unit.
#[derive(KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("duration(self.timeout) <= duration(self.interval)")
    .message("healthCheck.timeout must not be longer than healthCheck.interval")
    .reason(Reason::FieldValueInvalid))]
pub struct HealthCheck {
    /// Path of the test URL.
    #[serde(default = "default_check_path")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/[^\s?#]*$"))]
    pub path: String,
    /// Time between checks.
    #[serde(default = "default_check_interval")]
    pub interval: DurationText,
    /// Timeout of one check.
    #[serde(default = "default_check_timeout")]
    pub timeout: DurationText,
    /// Consecutive passes that bring a unit back.
    #[serde(default = "two")]
    #[schemars(range(min = 1, max = 100))]
    pub rise: u32,
    /// Consecutive failures that take a unit out.
    #[serde(default = "three")]
    #[schemars(range(min = 1, max = 100))]
    pub fall: u32,
    /// Expected status.
    #[serde(default = "ok_status")]
    #[schemars(range(min = 100, max = 599))]
    pub expect_status: u16,
    /// Text the answer must contain.
    #[serde(default = "default_expect_body")]
    #[schemars(length(max = 1024))]
    pub expect_body: String,
}

fn default_check_path() -> String {
    crate::paths::HEALTH.to_owned()
}
fn default_check_interval() -> DurationText {
    DurationText::from_str("2s").expect("valid default")
}
fn default_check_timeout() -> DurationText {
    DurationText::from_str("1s").expect("valid default")
}
fn two() -> u32 {
    2
}
fn three() -> u32 {
    3
}
fn ok_status() -> u16 {
    200
}
fn default_expect_body() -> String {
    crate::HEALTHY_ANSWER.to_owned()
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: default_check_path(),
            interval: default_check_interval(),
            timeout: default_check_timeout(),
            rise: two(),
            fall: three(),
            expect_status: ok_status(),
            expect_body: default_expect_body(),
        }
    }
}

/// Where session state lives. At most one of `external` and `managed`; neither means managed
/// with defaults.
#[derive(KubeSchema, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("!(has(self.external) && has(self.managed))")
    .message("database: choose external or managed, not both")
    .reason(Reason::FieldValueForbidden))]
pub struct DatabaseSpec {
    /// An external PostgreSQL whose URL is in a Secret (Kubernetes). `farmctl` uses
    /// `--database-url` / `DATABASE_URL` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalDatabase>,
    /// A PostgreSQL StatefulSet managed by the operator (the default on Kubernetes). `farmctl`
    /// starts a private throwaway cluster instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedDatabase>,
}

/// External database.
#[derive(JsonSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalDatabase {
    /// Secret (in the farm's namespace) holding the connection URL.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Key of the URL in the Secret.
    #[serde(default = "default_url_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
    /// Verify the server over TLS: the CA certificate (PEM) that signed the PostgreSQL
    /// server's certificate. The sidecars then connect with `sslmode=verify-full` (the chain
    /// and the host name in the URL are checked) unless the URL names another `sslmode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<SecretKey>,
}

fn default_url_key() -> String {
    "url".to_owned()
}

/// One key of a Secret in the farm's namespace.
#[derive(JsonSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKey {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// The key.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Managed database.
#[derive(JsonSchema, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManagedDatabase {
    /// Volume size (default `1Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Quantity>,
    /// Storage class (default: the cluster's default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// PostgreSQL image (default: the operator's `--postgres-image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPU and memory of the database container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// What happens to the database's volume claim and credentials when the managed database
    /// goes (the farm is deleted, or switched to an external database): `Delete` (the default)
    /// removes them; `Retain` keeps them, so the data can be copied out, or found again when
    /// the farm (of the same name) switches back to a managed database.
    #[serde(default)]
    pub delete_policy: DatabaseDeletePolicy,
}

/// What happens to a managed database's volume claim and credentials when it goes.
#[derive(JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DatabaseDeletePolicy {
    /// Delete the volume claim and the credentials Secrets.
    #[default]
    Delete,
    /// Keep them; they are deleted by hand (`kubectl delete pvc,secret -l
    /// stickyfarm.dev/farm=<farm>,stickyfarm.dev/component=database`).
    Retain,
}

impl DatabaseDeletePolicy {
    /// As written in the spec and in the annotation on the database's objects.
    pub fn as_str(self) -> &'static str {
        match self {
            DatabaseDeletePolicy::Delete => "Delete",
            DatabaseDeletePolicy::Retain => "Retain",
        }
    }
}

/// Scheduling and security settings of the unit pods (Kubernetes only). Nothing here can make
/// a pod more privileged than Pod Security "restricted" allows: there are no fields for host
/// namespaces, volumes, privileged containers or capabilities (the operator sets every
/// container's security context itself), and the pod security context is checked below.
#[derive(KubeSchema, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSettings {
    /// Node labels the pods must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity (the operator adds a preferred anti-affinity that spreads units over nodes when
    /// none is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Pod security context (default: non-root, the runtime's seccomp profile). Only what Pod
    /// Security "restricted" allows: never root, no unconfined seccomp or AppArmor profile, no
    /// SELinux user or role, no host processes, no sysctls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!has(self.runAsUser) || self.runAsUser != 0")
        .message("pod.securityContext.runAsUser: 0 (root) is not allowed: farm pods run as non-root (Pod Security restricted)")
        .reason(Reason::FieldValueForbidden))]
    #[x_kube(validation = Rule::new("!has(self.runAsNonRoot) || self.runAsNonRoot")
        .message("pod.securityContext.runAsNonRoot: must not be false (Pod Security restricted)")
        .reason(Reason::FieldValueForbidden))]
    #[x_kube(validation = Rule::new("!has(self.seccompProfile) || self.seccompProfile.type in ['RuntimeDefault', 'Localhost']")
        .message("pod.securityContext.seccompProfile.type: only RuntimeDefault or Localhost (Pod Security restricted)")
        .reason(Reason::FieldValueForbidden))]
    #[x_kube(validation = Rule::new("!has(self.appArmorProfile) || self.appArmorProfile.type != 'Unconfined'")
        .message("pod.securityContext.appArmorProfile.type: Unconfined is not allowed (Pod Security restricted)")
        .reason(Reason::FieldValueForbidden))]
    #[x_kube(validation = Rule::new("!has(self.seLinuxOptions) || (!has(self.seLinuxOptions.user) && !has(self.seLinuxOptions.role) && (!has(self.seLinuxOptions.type) || self.seLinuxOptions.type in ['container_t', 'container_init_t', 'container_kvm_t', 'container_engine_t']))")
        .message("pod.securityContext.seLinuxOptions: no user or role, and type only container_t, container_init_t, container_kvm_t or container_engine_t (Pod Security restricted)")
        .reason(Reason::FieldValueForbidden))]
    #[x_kube(validation = Rule::new("!has(self.windowsOptions) || !has(self.windowsOptions.hostProcess) || !self.windowsOptions.hostProcess")
        .message("pod.securityContext.windowsOptions.hostProcess: host processes are not allowed (Pod Security restricted)")
        .reason(Reason::FieldValueForbidden))]
    #[x_kube(validation = Rule::new("!has(self.sysctls) || size(self.sysctls) == 0")
        .message("pod.securityContext.sysctls: farm pods set no sysctls")
        .reason(Reason::FieldValueForbidden))]
    pub security_context: Option<PodSecurityContext>,
    /// Extra pod annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Priority class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

impl PodSettings {
    /// Nothing set.
    pub fn is_empty(&self) -> bool {
        self == &PodSettings::default()
    }
}

/// What the operator last saw of a farm.
#[derive(KubeSchema, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerFarmStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Units that exist (pods of the farm).
    #[serde(default)]
    pub replicas: i32,
    /// Units whose pod is ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// `ready/desired`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units_ready: Option<String>,
    /// Label selector of the unit pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Where clients reach the farm (`host:port` of the gateway Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_endpoint: Option<String>,
    /// One entry per unit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub units: Vec<UnitStatus>,
    /// `Ready`, `Progressing` and `Degraded`, in the Kubernetes convention.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// One unit as the operator sees it.
#[derive(JsonSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitStatus {
    /// Unit name (the pod's name).
    pub name: String,
    /// The pod that runs it, when it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The instance id: the pod's UID. It changes when the pod is replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// The pod is ready (its sidecar's health check passes).
    #[serde(default)]
    pub ready: bool,
    /// Where the gateway reaches the unit (`pod IP:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// `Serving`, or `Draining` before the unit is removed.
    pub state: UnitState,
}

/// Lifecycle of a unit.
#[derive(JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnitState {
    /// Takes new sessions.
    Serving,
    /// Keeps its sessions but takes no new ones; removed when the drain period is over.
    Draining,
}

impl UnitState {
    /// The value of the [`labels::UNIT_STATE`] label.
    pub fn as_label(self) -> &'static str {
        match self {
            UnitState::Serving => "serving",
            UnitState::Draining => "draining",
        }
    }
}

pub use crate::labels;

/// The Secret that holds a farm's tokens on Kubernetes (the operator makes it): the admin token
/// that unit actions present to the gateway's control port (`kubectl stickyfarm drain`), and
/// the token the gateway presents to the sidecars.
pub fn tokens_secret_name(farm: &str) -> String {
    format!("{farm}-gateway-tokens")
}
/// The admin token's key in [`tokens_secret_name`].
pub const ADMIN_TOKEN_KEY: &str = "admin-token";
/// The gateway token's key in [`tokens_secret_name`].
pub const GATEWAY_TOKEN_KEY: &str = "gateway-token";

/// A spec that contradicts itself (the same rules the CRD's CEL validations enforce on the API
/// server, for readers that do not go through one, like `farmctl`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The field, as a path from `spec`.
    pub field: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

impl ServerFarmSpec {
    /// The Secret (name, key) holding the database URL: the external one, or the credentials
    /// the operator generates for a managed database (`<farm>-db`, key `url`). Apps reference
    /// it in `valueFrom.secretKeyRef` to reach the same database; `farmctl` resolves exactly
    /// this reference to its own database URL.
    pub fn database_secret(&self, farm: &str) -> (String, String) {
        match &self.database.external {
            Some(ext) => (ext.secret_name.clone(), ext.key.clone()),
            None => (format!("{farm}-db"), "url".to_owned()),
        }
    }

    /// The Secret (name, key) with the URL the app should use: for a managed database its own
    /// role's (`<farm>-db-app`, key `url`), which cannot read the session tables; for an
    /// external database the one URL its Secret holds. `farmctl` resolves this reference to
    /// its database URL too.
    pub fn app_database_secret(&self, farm: &str) -> (String, String) {
        match &self.database.external {
            Some(ext) => (ext.secret_name.clone(), ext.key.clone()),
            None => (format!("{farm}-db-app"), "url".to_owned()),
        }
    }

    /// Checks the rules that span fields. Every violation is returned.
    pub fn validate(&self) -> Result<(), Vec<SpecError>> {
        let mut errors = Vec::new();
        let mut fail = |field, message: &str| {
            errors.push(SpecError {
                field,
                message: message.to_owned(),
            })
        };
        let sp = &self.session_persistence;
        if sp.idle_timeout.0 > sp.absolute_timeout.0 {
            fail(
                "sessionPersistence",
                "idleTimeout must not be longer than absoluteTimeout",
            );
        }
        let g = &self.gateway;
        if g.unit_addressing == UnitAddressing::Host && g.farm_host.is_none() {
            fail(
                "gateway",
                "unitAddressing host needs farmHost (units are reached as <unit>.<farmHost>)",
            );
        }
        if g.tls.as_ref().is_some_and(|t| t.redirect_http) && g.port.0 == 80 {
            fail(
                "gateway",
                "tls.redirectHttp uses the Service's port 80 for plain HTTP: give the gateway another port (443)",
            );
        }
        let hc = &g.health_check;
        if hc.timeout.0 > hc.interval.0 {
            fail(
                "gateway.healthCheck",
                "healthCheck.timeout must not be longer than healthCheck.interval",
            );
        }
        if !hc.path.starts_with('/') {
            fail("gateway.healthCheck.path", "must start with /");
        }
        for (field, n) in [
            ("gateway.healthCheck.rise", hc.rise),
            ("gateway.healthCheck.fall", hc.fall),
        ] {
            if !(1..=100).contains(&n) {
                fail(field, "must be 1 to 100");
            }
        }
        if !(100..=599).contains(&hc.expect_status) {
            fail(
                "gateway.healthCheck.expectStatus",
                "must be an HTTP status, 100 to 599",
            );
        }
        if self.database.external.is_some() && self.database.managed.is_some() {
            fail("database", "database: choose external or managed, not both");
        }
        if self.app.image.is_empty() {
            fail("app.image", "must not be empty");
        }
        for (field, probe) in [
            ("app.readinessProbe", &self.app.readiness_probe),
            ("app.livenessProbe", &self.app.liveness_probe),
            ("app.startupProbe", &self.app.startup_probe),
        ] {
            if probe.as_ref().is_some_and(probe_leaves_pod) {
                fail(
                    field,
                    "httpGet.host and tcpSocket.host are not allowed: a probe checks its own pod, never another host",
                );
            }
        }
        if let Some(sc) = &self.pod.security_context {
            for (field, message) in restricted_violations(sc) {
                fail(field, message);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// Whether a probe names another host (the CRD's `PROBE_STAYS_IN_POD` rule).
fn probe_leaves_pod(p: &Probe) -> bool {
    p.http_get.as_ref().is_some_and(|h| h.host.is_some())
        || p.tcp_socket.as_ref().is_some_and(|t| t.host.is_some())
}

/// What a pod security context sets beyond Pod Security "restricted" (the CRD's rules on
/// `pod.securityContext`, with the same messages).
fn restricted_violations(sc: &PodSecurityContext) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    if sc.run_as_user == Some(0) {
        out.push((
            "pod.securityContext.runAsUser",
            "0 (root) is not allowed: farm pods run as non-root (Pod Security restricted)",
        ));
    }
    if sc.run_as_non_root == Some(false) {
        out.push((
            "pod.securityContext.runAsNonRoot",
            "must not be false (Pod Security restricted)",
        ));
    }
    if sc
        .seccomp_profile
        .as_ref()
        .is_some_and(|p| !matches!(p.type_.as_str(), "RuntimeDefault" | "Localhost"))
    {
        out.push((
            "pod.securityContext.seccompProfile.type",
            "only RuntimeDefault or Localhost (Pod Security restricted)",
        ));
    }
    if sc
        .app_armor_profile
        .as_ref()
        .is_some_and(|p| p.type_ == "Unconfined")
    {
        out.push((
            "pod.securityContext.appArmorProfile.type",
            "Unconfined is not allowed (Pod Security restricted)",
        ));
    }
    if sc.se_linux_options.as_ref().is_some_and(|o| {
        o.user.is_some()
            || o.role.is_some()
            || o.type_.as_deref().is_some_and(|t| {
                !matches!(
                    t,
                    "container_t" | "container_init_t" | "container_kvm_t" | "container_engine_t"
                )
            })
    }) {
        out.push((
            "pod.securityContext.seLinuxOptions",
            "no user or role, and type only container_t, container_init_t, container_kvm_t or container_engine_t (Pod Security restricted)",
        ));
    }
    if sc
        .windows_options
        .as_ref()
        .is_some_and(|w| w.host_process == Some(true))
    {
        out.push((
            "pod.securityContext.windowsOptions.hostProcess",
            "host processes are not allowed (Pod Security restricted)",
        ));
    }
    if sc.sysctls.as_ref().is_some_and(|s| !s.is_empty()) {
        out.push(("pod.securityContext.sysctls", "farm pods set no sysctls"));
    }
    out
}

macro_rules! text_newtype {
    ($(#[$m:meta])* $name:ident($inner:ty), $parse:expr, $show:expr) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(pub $inner, String);

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                let parse: fn(&str) -> Result<$inner, String> = $parse;
                parse(s).map(|v| $name(v, s.to_owned()))
            }
        }
        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                s.parse()
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.1
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let show: fn(&str) -> &str = $show;
                f.write_str(show(&self.1))
            }
        }
    };
}

text_newtype!(
    /// A duration written like `30s`, `5m`, `2h`, `500ms`.
    DurationText(Duration),
    |s| {
        let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
        if digits.is_empty() || digits.len() > 9 || digits.starts_with('0') {
            return Err(format!(
                "invalid duration {s:?}: expected a number (1 to 999999999, no leading zero) and a unit, like 30s or 5m"
            ));
        }
        let n: u64 = digits.parse().expect("nine digits fit");
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            _ => return Err(format!("invalid duration {s:?}: the unit must be ms, s, m or h")),
        };
        if d.is_zero() {
            return Err(format!("invalid duration {s:?}: must be more than zero"));
        }
        Ok(d)
    },
    |s| s
);

text_newtype!(
    /// A byte size in Kubernetes quantity form: `64Mi`, `1Gi`, `512Ki`, or plain bytes.
    Quantity(u64),
    |s| {
        let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
        if digits.is_empty() || digits.len() > 9 {
            return Err(format!(
                "invalid size {s:?}: expected a number of at most 9 digits and Ki, Mi or Gi"
            ));
        }
        let n: u64 = digits.parse().expect("nine digits fit");
        let mult = match unit {
            "" => 1,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            _ => return Err(format!("invalid size {s:?}: the unit must be Ki, Mi or Gi")),
        };
        Ok(n * mult)
    },
    |s| s
);

/// Number of replicas: 1 to 64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Replicas(pub u32);

impl TryFrom<u32> for Replicas {
    type Error = String;
    fn try_from(n: u32) -> Result<Self, String> {
        if (1..=64).contains(&n) {
            Ok(Replicas(n))
        } else {
            Err(format!("invalid replicas {n}: must be 1 to 64"))
        }
    }
}

impl From<Replicas> for u32 {
    fn from(r: Replicas) -> u32 {
        r.0
    }
}

/// A TCP port, 1 to 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub struct Port(pub u16);

impl TryFrom<u16> for Port {
    type Error = String;
    fn try_from(n: u16) -> Result<Self, String> {
        if n == 0 {
            Err("invalid port 0: must be 1 to 65535".into())
        } else {
            Ok(Port(n))
        }
    }
}

impl From<Port> for u16 {
    fn from(p: Port) -> u16 {
        p.0
    }
}

/// Schema of a text newtype: a string matching the same rule its parser applies.
fn text_schema(pattern: &str, example: &str, description: &str) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": pattern,
        "maxLength": 16,
        "description": description,
        "examples": [example],
    })
}

impl JsonSchema for DurationText {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        text_schema(
            DURATION_PATTERN,
            "30s",
            "A duration: a number and ms, s, m or h.",
        )
    }
}

/// What [`DurationText`] accepts (also valid for CEL's `duration()`).
pub const DURATION_PATTERN: &str = "^[1-9][0-9]{0,8}(ms|s|m|h)$";
/// What [`Quantity`] accepts.
pub const QUANTITY_PATTERN: &str = "^[0-9]{1,9}(Ki|Mi|Gi)?$";

impl JsonSchema for Quantity {
    fn schema_name() -> Cow<'static, str> {
        "ByteQuantity".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        text_schema(
            QUANTITY_PATTERN,
            "64Mi",
            "A byte size: a number, optionally with Ki, Mi or Gi.",
        )
    }
}

impl JsonSchema for SessionCookieName {
    fn schema_name() -> Cow<'static, str> {
        "CookieName".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": SESSION_COOKIE_NAME_PATTERN,
            "maxLength": 64,
            "description": "A cookie name (RFC 6265 token).",
        })
    }
}

impl JsonSchema for Replicas {
    fn schema_name() -> Cow<'static, str> {
        "Replicas".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "integer", "format": "int32", "minimum": 1, "maximum": 64})
    }
}

impl JsonSchema for Port {
    fn schema_name() -> Cow<'static, str> {
        "Port".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "integer", "format": "int32", "minimum": 1, "maximum": 65535})
    }
}

impl ServerFarmManifest {
    /// The names of the farm's units: `<name>-0` … `<name>-<replicas - 1>` (as a StatefulSet
    /// names its pods).
    pub fn unit_names(&self) -> Vec<UnitName> {
        (0..self.spec.replicas.0)
            .map(|i| self.metadata.name.unit(i))
            .collect()
    }
}

/// A farm name: a DNS label of at most 60 characters, so `<name>-<ordinal>` is a unit name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FarmName(String);

impl FarmName {
    /// Longest accepted name.
    pub const MAX_LEN: usize = 60;

    /// The unit with this ordinal.
    pub fn unit(&self, ordinal: u32) -> UnitName {
        format!("{}-{ordinal}", self.0)
            .parse()
            .expect("a farm name of at most 60 characters plus an ordinal below 64 is a DNS label")
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for FarmName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.len() > Self::MAX_LEN {
            return Err(format!("invalid farm name {s:?}: at most 60 characters"));
        }
        s.parse::<UnitName>()
            .map_err(|e| format!("invalid farm name {s:?}: {e}"))?;
        Ok(FarmName(s))
    }
}

impl From<FarmName> for String {
    fn from(n: FarmName) -> String {
        n.0
    }
}

impl fmt::Display for FarmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A field whose only valid value is a constant (`apiVersion`, `kind`).
macro_rules! constant_field {
    ($(#[$m:meta])* $name:ident, $field:literal, $value:expr) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name;

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                if s == $value {
                    Ok($name)
                } else {
                    Err(format!("{} must be {}, got {s:?}", $field, $value))
                }
            }
        }

        impl From<$name> for String {
            fn from(_: $name) -> String {
                $value.to_owned()
            }
        }
    };
}

constant_field!(
    /// `apiVersion`, which must be [`API_VERSION`].
    ApiVersion,
    "apiVersion",
    API_VERSION
);
constant_field!(
    /// `kind`, which must be [`KIND`].
    Kind,
    "kind",
    KIND
);
