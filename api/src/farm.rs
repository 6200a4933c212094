//! The `ServerFarm` manifest (`stickyfarm.dev/v1alpha1`): one farm, as users write it in YAML.
//!
//! `farmctl up` runs it on one machine; the operator reconciles the same document on
//! Kubernetes. Unknown fields are refused at every level, and every value is validated while it
//! is read, so a mistake is reported with its field and line.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::UnitName;

/// API group and version of the resource.
pub const API_VERSION: &str = "stickyfarm.dev/v1alpha1";
/// Kind of the resource.
pub const KIND: &str = "ServerFarm";

/// A whole `ServerFarm` document.
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
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// The farm's desired state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerFarmSpec {
    /// Number of units (commerce pods).
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
    /// The gateway (load balancer).
    #[serde(default)]
    pub gateway: GatewaySettings,
    /// Where session state is kept.
    #[serde(default)]
    pub database: DatabaseSpec,
}

fn default_replicas() -> Replicas {
    Replicas(3)
}

/// The app container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppSpec {
    /// Container image. `farmctl` runs the local binary `stickyfarm-<last path segment>` for it.
    pub image: String,
    /// Port the app listens on (inside the pod, behind the sidecar).
    #[serde(default = "default_app_port")]
    pub port: Port,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
}

fn default_app_port() -> Port {
    Port(3000)
}

/// One environment variable with a literal value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// Sidecar settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarSettings {
    /// Memory tier of the session cache, e.g. `64Mi`.
    #[serde(default = "default_cache_memory")]
    pub cache_memory: Quantity,
    /// Optional disk tier of the session cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_disk: Option<Quantity>,
}

fn default_cache_memory() -> Quantity {
    Quantity::from_str("64Mi").expect("valid default")
}

impl Default for SidecarSettings {
    fn default() -> Self {
        SidecarSettings {
            cache_memory: default_cache_memory(),
            cache_disk: None,
        }
    }
}

/// Session cookies and lifetimes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionPersistence {
    /// A session unused this long expires.
    #[serde(default = "default_idle")]
    pub idle_timeout: DurationText,
    /// A session older than this expires.
    #[serde(default = "default_absolute")]
    pub absolute_timeout: DurationText,
    /// Mark the cookies `Secure`.
    #[serde(default)]
    pub secure: bool,
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
            idle_timeout: default_idle(),
            absolute_timeout: default_absolute(),
            secure: false,
        }
    }
}

/// Gateway settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySettings {
    /// Gateway replicas (Kubernetes).
    #[serde(default = "one")]
    pub replicas: Replicas,
    /// Port clients use.
    #[serde(default = "default_gateway_port")]
    pub port: Port,
    /// Host name of the farm, for host-style unit addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub farm_host: Option<String>,
    /// `path` (`/_unit/<unit>/…`) or `host` (`<unit>.<farm host>`).
    #[serde(default)]
    pub unit_addressing: UnitAddressing,
    /// Load-balancing policy for new sessions.
    #[serde(default)]
    pub policy: BalancingPolicy,
    /// After a failover: `stay` on the backup, or `return` when the unit is back.
    #[serde(default)]
    pub failback: FailbackPolicy,
    /// The active health check.
    #[serde(default)]
    pub health_check: HealthCheck,
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
            port: default_gateway_port(),
            farm_host: None,
            unit_addressing: UnitAddressing::default(),
            policy: BalancingPolicy::default(),
            failback: FailbackPolicy::default(),
            health_check: HealthCheck::default(),
        }
    }
}

/// Unit address style.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnitAddressing {
    /// `/_unit/<unit>/…`.
    #[default]
    Path,
    /// `<unit>.<farm host>`.
    Host,
}

/// Load-balancing policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailbackPolicy {
    /// Stay on the backup.
    #[default]
    Stay,
    /// Return to the original unit when it is back.
    Return,
}

/// The gateway's active health check of every unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// Path of the test URL.
    #[serde(default = "default_check_path")]
    pub path: String,
    /// Time between checks.
    #[serde(default = "default_check_interval")]
    pub interval: DurationText,
    /// Timeout of one check.
    #[serde(default = "default_check_timeout")]
    pub timeout: DurationText,
    /// Passes to come back.
    #[serde(default = "two")]
    pub rise: u32,
    /// Failures to go out.
    #[serde(default = "three")]
    pub fall: u32,
    /// Expected status.
    #[serde(default = "ok_status")]
    pub expect_status: u16,
    /// Text the answer must contain.
    #[serde(default = "default_expect_body")]
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

/// Where session state lives.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalDatabase {
    /// Secret holding the connection URL.
    pub secret_name: String,
    /// Key of the URL in the Secret.
    #[serde(default = "default_url_key")]
    pub key: String,
}

fn default_url_key() -> String {
    "url".to_owned()
}

/// Managed database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManagedDatabase {
    /// Volume size, e.g. `1Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Quantity>,
    /// Storage class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// PostgreSQL image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
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
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: expected a number and a unit, like 30s or 5m"))?;
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
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("invalid size {s:?}: expected a number and Ki, Mi or Gi"))?;
        let mult = match unit {
            "" => 1,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            _ => return Err(format!("invalid size {s:?}: the unit must be Ki, Mi or Gi")),
        };
        n.checked_mul(mult).ok_or_else(|| format!("invalid size {s:?}: too large"))
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
