//! The configuration contract: the settings the gateway and the sidecar take from a farm's
//! declaration, one typed struct per component.
//!
//! The binaries parse these structs (clap, flattened into their whole configuration); the
//! operator renders them as environment variables and `farmctl` as flags, both from a
//! `ServerFarm` spec through the same translation (`from_farm`, with the `farm` feature). The
//! names a setting travels under come from the clap definition itself ([`as_env`], [`as_args`]),
//! so a setting cannot be renamed on one side only. What a component needs besides these is its
//! place: addresses, files and identity (the pod's name and UID), which differ between
//! Kubernetes and one machine and stay in the component's own configuration.

use std::time::Duration;

use bytesize::ByteSize;
use clap::{ArgAction, Args, ValueEnum};

use crate::{SessionCookieName, cookie_names, paths};

/// The farm's cookies, which the gateway and every sidecar must agree on: the gateway reads the
/// session cookie (a request with a session is never a new one) and sets the routing cookie;
/// the sidecars set and read the rest.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct CookieSettings {
    /// Name of the session cookie (the farm's `sessionPersistence.sessionName`).
    #[arg(long, env = "STICKYFARM_SESSION_COOKIE", default_value = cookie_names::SESSION)]
    pub session_cookie: SessionCookieName,

    /// Mark the cookies `Secure` (whenever clients use HTTPS). Without a cookie domain the
    /// cookies are then named `__Host-…`.
    #[arg(long, env = "STICKYFARM_COOKIE_SECURE", default_value_t = false, action = ArgAction::Set)]
    pub cookie_secure: bool,

    /// `Domain=` of the cookies: the farm host with host-style unit addresses, so that every
    /// `<unit>.<farm host>` sees them.
    #[arg(long, env = "STICKYFARM_COOKIE_DOMAIN")]
    pub cookie_domain: Option<String>,
}

impl CookieSettings {
    /// The cookie names and attributes these settings make.
    pub fn policy(&self) -> crate::CookiePolicy {
        crate::CookiePolicy::new(
            &self.session_cookie,
            self.cookie_secure,
            self.cookie_domain.clone(),
        )
    }

    fn values(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("session_cookie", self.session_cookie.to_string()),
            ("cookie_secure", self.cookie_secure.to_string()),
        ];
        if let Some(domain) = &self.cookie_domain {
            v.push(("cookie_domain", domain.clone()));
        }
        v
    }
}

/// The gateway's settings that come from the farm.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct GatewayFarmSettings {
    /// Load-balancing policy for new sessions and backups.
    #[arg(long, env = "STICKYFARM_POLICY", value_enum, default_value_t = Policy::LeastInFlight)]
    pub policy: Policy,

    /// After a failover: keep the client on the backup, or send it back once its unit recovers.
    #[arg(long, env = "STICKYFARM_FAILBACK", value_enum, default_value_t = Failback::Stay)]
    pub failback: Failback,

    /// Path of the active health check on each unit (the patent's test URL).
    #[arg(long, env = "STICKYFARM_CHECK_PATH", default_value = paths::HEALTH)]
    pub check_path: String,

    /// Time between checks of one unit.
    #[arg(long, env = "STICKYFARM_CHECK_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub check_interval: Duration,

    /// A check that takes longer fails.
    #[arg(long, env = "STICKYFARM_CHECK_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub check_timeout: Duration,

    /// Expected status of the check.
    #[arg(long, env = "STICKYFARM_CHECK_EXPECT_STATUS", default_value_t = 200)]
    pub check_expect_status: u16,

    /// Text the check's answer must contain. An `instance: <uuid>` line in the answer is
    /// recorded as the unit's instance id.
    #[arg(long, env = "STICKYFARM_CHECK_EXPECT_BODY", default_value = crate::HEALTHY_ANSWER)]
    pub check_expect_body: String,

    /// Consecutive passed checks that bring a unit that was down back into service.
    #[arg(long, env = "STICKYFARM_CHECK_RISE", default_value_t = 2)]
    pub rise: u32,

    /// Consecutive failed checks that take a unit out of service.
    #[arg(long, env = "STICKYFARM_CHECK_FALL", default_value_t = 3)]
    pub fall: u32,

    /// The farm's host name, for host-style unit addresses `<unit>.<farm host>`.
    #[arg(long, env = "STICKYFARM_FARM_HOST")]
    pub farm_host: Option<String>,

    /// Which unit address the app is given for its links.
    #[arg(long, env = "STICKYFARM_UNIT_ADDRESSING", value_enum, default_value_t = Addressing::Path)]
    pub unit_addressing: Addressing,

    /// Upgraded connections (WebSockets) one unit may hold open through this gateway; more
    /// get 503 with `Retry-After`. Each holds two sockets, and no longer counts against
    /// --max-connections once upgraded.
    #[arg(long, env = "STICKYFARM_MAX_TUNNELS_PER_UNIT", default_value_t = 4096, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_tunnels_per_unit: usize,

    /// An upgraded connection with no byte either way for this long is closed (WebSocket
    /// clients get close code 1001); applications that stay quiet longer send pings.
    #[arg(long, env = "STICKYFARM_TUNNEL_IDLE_TIMEOUT", default_value = "1h", value_parser = humantime::parse_duration)]
    pub tunnel_idle_timeout: Duration,

    /// What the app speaks: with `h2c`, requests that arrive over HTTP/2 go to the unit over
    /// HTTP/2 (one multiplexed connection per unit), so gRPC's trailers reach the client.
    #[arg(long, env = "STICKYFARM_APP_PROTOCOL", value_enum, default_value_t = AppProtocol::Http1)]
    pub app_protocol: AppProtocol,

    /// With TLS: send `Strict-Transport-Security: max-age=<this>` with every answer that has
    /// none (off unless given).
    #[arg(long, env = "STICKYFARM_HSTS_MAX_AGE", value_parser = humantime::parse_duration)]
    pub hsts_max_age: Option<Duration>,

    /// After units were added: a session with no request for this long, on a unit holding
    /// more than its share, moves to the least loaded unit at its next request (`0s`: never).
    #[arg(long, env = "STICKYFARM_REBALANCE_IDLE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub rebalance_idle: Duration,

    /// How long after units were added idle sessions are moved.
    #[arg(long, env = "STICKYFARM_REBALANCE_WINDOW", default_value = "10m", value_parser = humantime::parse_duration)]
    pub rebalance_window: Duration,

    /// The farm's cookies, as the other components see them.
    #[command(flatten)]
    pub cookies: CookieSettings,
}

impl GatewayFarmSettings {
    fn values(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("policy", value_name(self.policy)),
            ("failback", value_name(self.failback)),
            ("check_path", self.check_path.clone()),
            ("check_interval", duration(self.check_interval)),
            ("check_timeout", duration(self.check_timeout)),
            ("check_expect_status", self.check_expect_status.to_string()),
            ("check_expect_body", self.check_expect_body.clone()),
            ("rise", self.rise.to_string()),
            ("fall", self.fall.to_string()),
            ("unit_addressing", value_name(self.unit_addressing)),
            (
                "max_tunnels_per_unit",
                self.max_tunnels_per_unit.to_string(),
            ),
            ("tunnel_idle_timeout", duration(self.tunnel_idle_timeout)),
            ("app_protocol", value_name(self.app_protocol)),
            ("rebalance_idle", duration(self.rebalance_idle)),
            ("rebalance_window", duration(self.rebalance_window)),
        ];
        if let Some(host) = &self.farm_host {
            v.push(("farm_host", host.clone()));
        }
        if let Some(age) = self.hsts_max_age {
            v.push(("hsts_max_age", duration(age)));
        }
        v.extend(self.cookies.values());
        v
    }
}

/// How long a stopping sidecar keeps its open connections so that a request written on one
/// meanwhile is refused as "unit stopping" (replayed on a backup) rather than lost with a
/// closed connection: a quarter of its shutdown grace, at most [`SIDECAR_DRAIN_LINGER_MAX`].
pub fn sidecar_drain_linger(shutdown_grace: Duration) -> Duration {
    (shutdown_grace / 4).min(SIDECAR_DRAIN_LINGER_MAX)
}

/// The longest [`sidecar_drain_linger`].
pub const SIDECAR_DRAIN_LINGER_MAX: Duration = Duration::from_secs(2);

/// How long a unit's app keeps serving after its pod is told to stop, before it is sent
/// SIGTERM itself (a pre-stop pause). Kubernetes signals every container of a pod at once, and
/// an app that stops first closes the sidecar's kept-alive connections while the sidecar is
/// still forwarding what it accepted before its own stop: a request already written on such a
/// connection is lost (502), which for a POST the gateway may not replay. Longer than the
/// sidecar's drain linger, so the app stops only once the sidecar forwards nothing new; the
/// requests in flight then the app's own graceful stop finishes.
pub const APP_STOP_DELAY: Duration = Duration::from_secs(3);

/// The unit pods' `terminationGracePeriodSeconds`: how long a stopping unit pod may take
/// before the kubelet kills it (longer than the sidecar's default shutdown grace of 20 s plus
/// [`APP_STOP_DELAY`]). It also bounds a scale-down's drain (the operator's `scale`).
pub const UNIT_TERMINATION_GRACE: Duration = Duration::from_secs(30);

/// The disk tier's size when the farm does not name one.
pub const DEFAULT_CACHE_DISK_SIZE: ByteSize = ByteSize::mib(256);

/// The sidecar's settings that come from the farm.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct SidecarFarmSettings {
    /// Memory tier capacity (bytes of cached session state, e.g. `64MiB`).
    #[arg(long, env = "STICKYFARM_CACHE_MEMORY", default_value = "64MiB")]
    pub cache_memory: ByteSize,

    /// Disk tier capacity (used with `--cache-disk-dir`).
    #[arg(long, env = "STICKYFARM_CACHE_DISK_SIZE", default_value_t = DEFAULT_CACHE_DISK_SIZE)]
    pub cache_disk_size: ByteSize,

    /// A session unused for this long expires (in the cache and in PostgreSQL).
    #[arg(long, env = "STICKYFARM_IDLE_TIMEOUT", default_value = "30m", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// A session older than this expires, however active.
    #[arg(long, env = "STICKYFARM_ABSOLUTE_TIMEOUT", default_value = "24h", value_parser = humantime::parse_duration)]
    pub absolute_timeout: Duration,

    /// An upgraded connection (WebSocket) to the app with no byte either way for this long is
    /// closed; the gateway's own --tunnel-idle-timeout (the same farm setting) ends it first.
    #[arg(long, env = "STICKYFARM_TUNNEL_IDLE_TIMEOUT", default_value = "1h", value_parser = humantime::parse_duration)]
    pub tunnel_idle_timeout: Duration,

    /// What the app speaks: `http1`, or `h2c` (HTTP/2 with prior knowledge, every request).
    #[arg(long, env = "STICKYFARM_APP_PROTOCOL", value_enum, default_value_t = AppProtocol::Http1)]
    pub app_protocol: AppProtocol,

    /// How long the app keeps an idle HTTP/1.1 connection open: its keep-alive timeout (5 s
    /// in Node.js and uvicorn, 2 s in gunicorn). The sidecar reuses an idle connection only
    /// while it is well inside that ([`app_connection_reuse`]); `0s`: never.
    #[arg(long, env = "STICKYFARM_APP_KEEP_ALIVE_TIMEOUT", default_value = DEFAULT_APP_KEEP_ALIVE_TIMEOUT, value_parser = humantime::parse_duration)]
    pub app_keep_alive_timeout: Duration,

    /// Percent of the memory tier kept for warm copies of the sessions this unit backs up
    /// (0: no warm copies; the gateway still names backups, which then load cold).
    #[arg(long, env = "STICKYFARM_WARM_BACKUP_PERCENT", default_value_t = DEFAULT_WARM_BACKUP_PERCENT,
          value_parser = clap::value_parser!(u8).range(0..=50))]
    pub warm_backup_percent: u8,

    /// The farm's cookies, as the other components see them.
    #[command(flatten)]
    pub cookies: CookieSettings,
}

/// The app's keep-alive timeout when the farm does not name one: Node.js's and uvicorn's.
pub const DEFAULT_APP_KEEP_ALIVE_TIMEOUT: &str = "5s";

/// How long the sidecar reuses an idle connection to an app that closes idle connections after
/// `keep_alive`: a second less (half of it when that is shorter).
///
/// An app closes an idle connection without reading what arrived on it. A request the sidecar
/// wrote just as the app's timer fired is lost, and a POST cannot be sent again: its client
/// would get 502, the known race of every proxy in front of Node.js. The sidecar's idle clock
/// starts when it has read an answer, after the app's started, and the margin covers that and
/// the time a request takes to reach the app on a busy machine.
pub fn app_connection_reuse(keep_alive: Duration) -> Duration {
    keep_alive.saturating_sub((keep_alive / 2).min(Duration::from_secs(1)))
}

/// How long the gateway reuses an idle connection to a unit: below the sidecar's
/// `--header-read-timeout` (30 s unless set), after which the sidecar closes it.
pub const UNIT_CONNECTION_REUSE: Duration = Duration::from_secs(20);

/// The share of a unit's memory tier for warm copies when the farm does not name one.
pub const DEFAULT_WARM_BACKUP_PERCENT: u8 = 25;

impl SidecarFarmSettings {
    fn values(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("cache_memory", self.cache_memory.as_u64().to_string()),
            ("cache_disk_size", self.cache_disk_size.as_u64().to_string()),
            ("idle_timeout", duration(self.idle_timeout)),
            ("absolute_timeout", duration(self.absolute_timeout)),
            ("tunnel_idle_timeout", duration(self.tunnel_idle_timeout)),
            ("app_protocol", value_name(self.app_protocol)),
            (
                "app_keep_alive_timeout",
                duration(self.app_keep_alive_timeout),
            ),
            ("warm_backup_percent", self.warm_backup_percent.to_string()),
        ];
        v.extend(self.cookies.values());
        v
    }
}

/// Settings a component parses, rendered for another process.
pub trait Rendered: Args {
    /// Each setting's value by its clap id (the field name); settings left unset are absent.
    fn values(&self) -> Vec<(&'static str, String)>;
}

impl Rendered for GatewayFarmSettings {
    fn values(&self) -> Vec<(&'static str, String)> {
        GatewayFarmSettings::values(self)
    }
}

impl Rendered for SidecarFarmSettings {
    fn values(&self) -> Vec<(&'static str, String)> {
        SidecarFarmSettings::values(self)
    }
}

/// The settings as environment variables, named as the component's parser reads them.
pub fn as_env<T: Rendered>(settings: &T) -> Vec<(String, String)> {
    render(settings, |arg| {
        arg.get_env()
            .map(|e| e.to_string_lossy().into_owned())
            .expect("every contract setting has an environment variable")
    })
    .collect()
}

/// The settings as command-line flags, `--name value` each.
pub fn as_args<T: Rendered>(settings: &T) -> Vec<String> {
    render(settings, |arg| {
        format!(
            "--{}",
            arg.get_long()
                .expect("every contract setting has a long flag")
        )
    })
    .flat_map(|(flag, value)| [flag, value])
    .collect()
}

fn render<T: Rendered>(
    settings: &T,
    name: impl Fn(&clap::Arg) -> String,
) -> impl Iterator<Item = (String, String)> {
    let command = T::augment_args(clap::Command::new("settings"));
    settings
        .values()
        .into_iter()
        .map(move |(id, value)| {
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == id)
                .unwrap_or_else(|| panic!("the contract renders {id}, which it does not parse"));
            (name(arg), value)
        })
        .collect::<Vec<_>>()
        .into_iter()
}

/// A duration as the parsers read it, exactly and in the largest whole unit (`30m`, `1500ms`,
/// never a rounded `1.5s`).
fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    match (d.subsec_nanos(), secs) {
        (0, s) if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        (0, s) if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        (0, s) => format!("{s}s"),
        _ => format!("{}ms", d.as_millis()),
    }
}

fn value_name<E: ValueEnum>(e: E) -> String {
    e.to_possible_value()
        .expect("no variant is skipped")
        .get_name()
        .to_owned()
}

/// What the app speaks on its port (the farm's `app.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum AppProtocol {
    /// HTTP/1.1.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge.
    H2c,
}

/// Load-balancing policy of the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Policy {
    /// Fewest requests in flight, between two units drawn at random (power of two choices):
    /// close to "least busy" without every gateway replica stampeding the same unit.
    #[default]
    LeastInFlight,
    /// Each unit in turn.
    RoundRobin,
    /// Uniformly at random.
    Random,
}

/// Where a failed-over client goes once its unit is back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Failback {
    /// Stay on the backup (its cache holds the session now).
    Stay,
    /// Return to the original unit once it is in service again.
    Return,
}

/// Unit address style handed to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Addressing {
    /// `<scheme>://<gateway host>/_unit/<unit>`.
    Path,
    /// `<scheme>://<unit>.<farm host>` (needs `--farm-host` and wildcard DNS).
    Host,
}

/// The farm's trace export, as the standard OpenTelemetry variables every Stickyfarm binary
/// reads ([`crate::logs::LogSettings`], [`crate::trace`]): the farm's collector, else
/// `fallback_endpoint` (the operator's or farmctl's own); none when neither is set.
/// `resource` names what the spans come from (`service.namespace=<farm>`, …) and is kept only
/// when something is exported.
#[cfg(feature = "farm")]
pub fn trace_env(
    spec: &crate::farm::ServerFarmSpec,
    fallback_endpoint: Option<&str>,
    resource: &[(&str, &str)],
) -> Vec<(&'static str, String)> {
    let t = &spec.tracing;
    let Some(endpoint) = t
        .otlp_endpoint
        .as_deref()
        .or(fallback_endpoint)
        .filter(|e| !e.is_empty())
    else {
        return Vec::new();
    };
    let mut env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned())];
    if let Some(ratio) = t.sampling_ratio {
        // A client's decision is followed; new traces are sampled at the ratio.
        env.push(("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".into()));
        env.push(("OTEL_TRACES_SAMPLER_ARG", ratio.to_string()));
    }
    if !resource.is_empty() {
        let attrs: Vec<String> = resource.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.push(("OTEL_RESOURCE_ATTRIBUTES", attrs.join(",")));
    }
    env
}

#[cfg(feature = "farm")]
mod from_farm {
    use super::*;
    use crate::farm::{BalancingPolicy, FailbackPolicy, ServerFarmSpec, UnitAddressing};

    fn app_protocol(spec: &ServerFarmSpec) -> AppProtocol {
        match spec.app.protocol {
            crate::farm::AppProtocol::Http1 => AppProtocol::Http1,
            crate::farm::AppProtocol::H2c => AppProtocol::H2c,
        }
    }

    impl CookieSettings {
        /// The farm's cookies: its session cookie name and `secure`; with host-style unit
        /// addresses the cookies name the farm host as their domain, so every unit's host
        /// sends them.
        pub fn from_farm(spec: &ServerFarmSpec) -> Self {
            let sp = &spec.session_persistence;
            let g = &spec.gateway;
            CookieSettings {
                session_cookie: sp.session_name.clone(),
                cookie_secure: sp.secure,
                cookie_domain: match g.unit_addressing {
                    UnitAddressing::Host => g.farm_host.clone(),
                    UnitAddressing::Path => None,
                },
            }
        }
    }

    impl GatewayFarmSettings {
        /// What the farm declares for its gateway.
        pub fn from_farm(spec: &ServerFarmSpec) -> Self {
            let g = &spec.gateway;
            let hc = &g.health_check;
            GatewayFarmSettings {
                policy: match g.policy {
                    BalancingPolicy::LeastInFlight => Policy::LeastInFlight,
                    BalancingPolicy::RoundRobin => Policy::RoundRobin,
                    BalancingPolicy::Random => Policy::Random,
                },
                failback: match g.failback {
                    FailbackPolicy::Stay => Failback::Stay,
                    FailbackPolicy::Return => Failback::Return,
                },
                check_path: hc.path.clone(),
                check_interval: hc.interval.0,
                check_timeout: hc.timeout.0,
                check_expect_status: hc.expect_status,
                check_expect_body: hc.expect_body.clone(),
                rise: hc.rise,
                fall: hc.fall,
                farm_host: g.farm_host.clone(),
                unit_addressing: match g.unit_addressing {
                    UnitAddressing::Path => Addressing::Path,
                    UnitAddressing::Host => Addressing::Host,
                },
                max_tunnels_per_unit: g.tunnels.max_per_unit as usize,
                tunnel_idle_timeout: g.tunnels.idle_timeout.0,
                app_protocol: app_protocol(spec),
                rebalance_idle: g.rebalance.idle_after.0,
                rebalance_window: g.rebalance.window.0,
                hsts_max_age: g
                    .tls
                    .as_ref()
                    .and_then(|t| t.hsts_max_age.as_ref().map(|d| d.0)),
                cookies: CookieSettings::from_farm(spec),
            }
        }
    }

    impl SidecarFarmSettings {
        /// What the farm declares for its sidecars.
        pub fn from_farm(spec: &ServerFarmSpec) -> Self {
            let sp = &spec.session_persistence;
            SidecarFarmSettings {
                cache_memory: ByteSize::b(spec.sidecar.cache_memory.0),
                // Without a disk tier the size is unused; the parser's default keeps it valid.
                cache_disk_size: spec
                    .sidecar
                    .cache_disk
                    .as_ref()
                    .map_or(DEFAULT_CACHE_DISK_SIZE, |q| ByteSize::b(q.0)),
                idle_timeout: sp.idle_timeout.0,
                absolute_timeout: sp.absolute_timeout.0,
                tunnel_idle_timeout: spec.gateway.tunnels.idle_timeout.0,
                app_protocol: app_protocol(spec),
                app_keep_alive_timeout: spec.app.keep_alive_timeout.0,
                warm_backup_percent: spec.sidecar.warm_backup_percent,
                cookies: CookieSettings::from_farm(spec),
            }
        }
    }
}

#[cfg(all(test, feature = "farm"))]
mod tests {
    use clap::Parser;
    use kube::CustomResourceExt;
    use serde_json::{Value, json};

    use super::*;
    use crate::farm::{ServerFarm, ServerFarmSpec};

    #[test]
    fn the_app_outlives_the_sidecars_drain_linger() {
        assert!(APP_STOP_DELAY > SIDECAR_DRAIN_LINGER_MAX);
        assert_eq!(
            sidecar_drain_linger(Duration::from_secs(4)),
            Duration::from_secs(1)
        );
        assert_eq!(
            sidecar_drain_linger(Duration::from_secs(60)),
            SIDECAR_DRAIN_LINGER_MAX
        );
    }

    #[test]
    fn an_idle_app_connection_is_reused_only_well_inside_the_apps_keep_alive() {
        let reuse = |ms| app_connection_reuse(Duration::from_millis(ms)).as_millis();
        // Node.js and uvicorn, gunicorn, a long-lived server: a second's margin.
        assert_eq!(reuse(5_000), 4_000);
        assert_eq!(reuse(2_000), 1_000);
        assert_eq!(reuse(75_000), 74_000);
        // Shorter: half of it.
        assert_eq!(reuse(1_000), 500);
        assert_eq!(reuse(0), 0);
    }

    #[derive(Parser)]
    struct Gateway {
        #[command(flatten)]
        s: GatewayFarmSettings,
    }

    #[derive(Parser)]
    struct Sidecar {
        #[command(flatten)]
        s: SidecarFarmSettings,
    }

    fn spec(patch: impl FnOnce(&mut Value)) -> ServerFarmSpec {
        let mut spec = json!({"replicas": 2, "app": {"image": "shop:1", "port": 3000}});
        patch(&mut spec);
        serde_json::from_value(spec).expect("a valid spec")
    }

    fn set(spec: &mut Value, path: &str, value: Value) {
        let mut at = spec;
        let keys: Vec<&str> = path.split('.').collect();
        for key in &keys[..keys.len() - 1] {
            at = at
                .as_object_mut()
                .expect("an object")
                .entry(*key)
                .or_insert_with(|| json!({}));
        }
        at[keys[keys.len() - 1]] = value;
    }

    fn rendered<T: Rendered>(settings: &T, id: &str) -> Option<String> {
        settings
            .values()
            .into_iter()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| v)
    }

    /// Where each spec field the components read lands: (field, a value other than its
    /// default, the gateway's setting and the sidecar's setting it lands in, rendered).
    type Landing = Option<(&'static str, &'static str)>;
    const LANDS: &[(&str, &str, Landing, Landing)] = &[
        (
            "gateway.policy",
            r#""round-robin""#,
            Some(("policy", "round-robin")),
            None,
        ),
        (
            "gateway.failback",
            r#""return""#,
            Some(("failback", "return")),
            None,
        ),
        (
            "gateway.healthCheck.path",
            r#""/ping""#,
            Some(("check_path", "/ping")),
            None,
        ),
        (
            "gateway.healthCheck.interval",
            r#""7s""#,
            Some(("check_interval", "7s")),
            None,
        ),
        (
            "gateway.healthCheck.timeout",
            r#""1500ms""#,
            Some(("check_timeout", "1500ms")),
            None,
        ),
        ("gateway.healthCheck.rise", "5", Some(("rise", "5")), None),
        ("gateway.healthCheck.fall", "4", Some(("fall", "4")), None),
        (
            "gateway.healthCheck.expectStatus",
            "204",
            Some(("check_expect_status", "204")),
            None,
        ),
        (
            "gateway.healthCheck.expectBody",
            r#""up""#,
            Some(("check_expect_body", "up")),
            None,
        ),
        (
            "gateway.farmHost",
            r#""shop.example""#,
            Some(("farm_host", "shop.example")),
            None,
        ),
        (
            "sessionPersistence.sessionName",
            r#""cart_id""#,
            Some(("session_cookie", "cart_id")),
            Some(("session_cookie", "cart_id")),
        ),
        (
            "sessionPersistence.secure",
            "false",
            Some(("cookie_secure", "false")),
            Some(("cookie_secure", "false")),
        ),
        (
            "sessionPersistence.idleTimeout",
            r#""10m""#,
            None,
            Some(("idle_timeout", "10m")),
        ),
        (
            "sessionPersistence.absoluteTimeout",
            r#""2h""#,
            None,
            Some(("absolute_timeout", "2h")),
        ),
        (
            "app.protocol",
            r#""h2c""#,
            Some(("app_protocol", "h2c")),
            Some(("app_protocol", "h2c")),
        ),
        (
            "app.keepAliveTimeout",
            r#""2s""#,
            None,
            Some(("app_keep_alive_timeout", "2s")),
        ),
        (
            "gateway.tunnels.maxPerUnit",
            "16",
            Some(("max_tunnels_per_unit", "16")),
            None,
        ),
        (
            "gateway.tunnels.idleTimeout",
            r#""5m""#,
            Some(("tunnel_idle_timeout", "5m")),
            Some(("tunnel_idle_timeout", "5m")),
        ),
        (
            "gateway.tls",
            r#"{"secretName": "shop-tls", "hstsMaxAge": "8760h"}"#,
            Some(("hsts_max_age", "8760h")),
            None,
        ),
        (
            "sidecar.cacheMemory",
            r#""32Mi""#,
            None,
            Some(("cache_memory", "33554432")),
        ),
        (
            "sidecar.cacheDisk",
            r#""1Gi""#,
            None,
            Some(("cache_disk_size", "1073741824")),
        ),
        (
            "gateway.rebalance.idleAfter",
            r#""30s""#,
            Some(("rebalance_idle", "30s")),
            None,
        ),
        (
            "gateway.rebalance.window",
            r#""5m""#,
            Some(("rebalance_window", "5m")),
            None,
        ),
        (
            "sidecar.warmBackupPercent",
            "10",
            None,
            Some(("warm_backup_percent", "10")),
        ),
    ];

    /// Spec fields that are not the gateway's or the sidecars' settings, and why: what
    /// Kubernetes objects they shape, or where each environment takes them from.
    const ELSEWHERE: &[(&str, &str)] = &[
        (
            "tracing",
            "the standard OpenTelemetry variables (trace_env) on the gateway and every sidecar, in the operator's pods and farmctl's processes alike",
        ),
        (
            "replicas",
            "the unit StatefulSet's size; farmctl starts that many units",
        ),
        (
            "app",
            "the app container (image, port, env, probes, resources); farmctl runs the local app binary with the port and env",
        ),
        (
            "pod",
            "Kubernetes only: the unit pods' scheduling, annotations and security context",
        ),
        (
            "database",
            "Kubernetes: the managed PostgreSQL or the external Secret, as DATABASE_URL from a Secret; farmctl: its own PostgreSQL or --database-url",
        ),
        (
            "sidecar.resources",
            "Kubernetes only: the sidecar container's requests and limits",
        ),
        (
            "gateway.replicas",
            "Kubernetes only: the gateway Deployment's size",
        ),
        (
            "gateway.serviceType",
            "Kubernetes only: the gateway Service's type",
        ),
        (
            "gateway.port",
            "Kubernetes: the gateway Service's port; farmctl: the gateway's listen port unless --port",
        ),
        (
            "gateway.publicHost",
            "the gateway's place: the operator passes it as --public-host; farmctl takes --public-url or its own address",
        ),
        (
            "gateway.tls.secretName",
            "the gateway's place: the operator mounts the Secret and passes its files as --tls-cert and --tls-key; farmctl makes its own with --tls",
        ),
        (
            "gateway.tls.redirectHttp",
            "the gateway's place: the operator opens --redirect-listen and the Service's port 80",
        ),
        (
            "gateway.unitAddressing",
            "lands in unit_addressing and, with host, cookie_domain of both: see host_addressing_gives_the_cookies_the_farm_host",
        ),
    ];

    #[test]
    fn every_spec_field_lands_in_a_setting_or_is_explained() {
        let crd = serde_json::to_value(ServerFarm::crd()).expect("the CRD as JSON");
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let mut unexplained = Vec::new();
        walk(spec, "", &mut unexplained);
        assert!(
            unexplained.is_empty(),
            "spec fields that land nowhere (add them to LANDS or ELSEWHERE): {unexplained:?}"
        );
    }

    fn walk(schema: &Value, path: &str, unexplained: &mut Vec<String>) {
        let covered = LANDS.iter().any(|l| l.0 == path)
            || ELSEWHERE
                .iter()
                .any(|(p, _)| path == *p || path.starts_with(&format!("{p}.")));
        if covered {
            return;
        }
        match schema["properties"].as_object() {
            Some(props) => {
                for (key, sub) in props {
                    let sub_path = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    walk(sub, &sub_path, unexplained);
                }
            }
            None => unexplained.push(path.to_owned()),
        }
    }

    #[test]
    fn each_field_lands_where_the_table_says() {
        let base = spec(|_| {});
        let (g0, s0) = (
            GatewayFarmSettings::from_farm(&base),
            SidecarFarmSettings::from_farm(&base),
        );
        for (path, value, in_gateway, in_sidecar) in LANDS {
            let changed = spec(|s| set(s, path, serde_json::from_str(value).expect("JSON")));
            let (g, s) = (
                GatewayFarmSettings::from_farm(&changed),
                SidecarFarmSettings::from_farm(&changed),
            );
            match in_gateway {
                Some((id, want)) => {
                    assert_eq!(
                        rendered(&g, id).as_deref(),
                        Some(*want),
                        "{path} → gateway {id}"
                    );
                    assert_ne!(
                        rendered(&g0, id).as_deref(),
                        Some(*want),
                        "{path}: the test value is the default"
                    );
                }
                None => assert_eq!(g, g0, "{path} changed the gateway's settings"),
            }
            match in_sidecar {
                Some((id, want)) => {
                    assert_eq!(
                        rendered(&s, id).as_deref(),
                        Some(*want),
                        "{path} → sidecar {id}"
                    );
                    assert_ne!(
                        rendered(&s0, id).as_deref(),
                        Some(*want),
                        "{path}: the test value is the default"
                    );
                }
                None => assert_eq!(s, s0, "{path} changed the sidecar's settings"),
            }
        }
    }

    /// Host-style unit addresses (`<unit>.<farm host>`) need cookies every unit's host sends:
    /// the gateway and the sidecars both get the farm host as the cookie domain (before the
    /// contract, nobody set it and a client failing over to another unit's host lost its
    /// session cookie).
    #[test]
    fn host_addressing_gives_the_cookies_the_farm_host() {
        let farm = spec(|s| {
            set(s, "gateway.unitAddressing", json!("host"));
            set(s, "gateway.farmHost", json!("shop.example"));
        });
        let (g, s) = (
            GatewayFarmSettings::from_farm(&farm),
            SidecarFarmSettings::from_farm(&farm),
        );
        assert_eq!(g.unit_addressing, Addressing::Host);
        for cookies in [&g.cookies, &s.cookies] {
            assert_eq!(cookies.cookie_domain.as_deref(), Some("shop.example"));
            // With a domain the cookies cannot be `__Host-` cookies.
            assert!(
                !cookies
                    .policy()
                    .name(crate::FarmCookie::Session)
                    .starts_with("__Host-")
            );
        }
        let path_style = spec(|s| set(s, "gateway.farmHost", json!("shop.example")));
        assert_eq!(
            GatewayFarmSettings::from_farm(&path_style)
                .cookies
                .cookie_domain,
            None
        );
    }

    /// What the operator and farmctl render is what the binaries parse back, field for field,
    /// with every setting away from its default.
    #[test]
    fn rendered_settings_parse_back_to_the_same_settings() {
        let farm = spec(|s| {
            for (path, value, _, _) in LANDS {
                set(s, path, serde_json::from_str(value).expect("JSON"));
            }
            set(s, "gateway.unitAddressing", json!("host"));
        });
        let g = GatewayFarmSettings::from_farm(&farm);
        let args = std::iter::once("gateway".to_owned()).chain(as_args(&g));
        assert_eq!(
            Gateway::try_parse_from(args)
                .expect("the gateway parses them")
                .s,
            g
        );
        let s = SidecarFarmSettings::from_farm(&farm);
        let args = std::iter::once("sidecar".to_owned()).chain(as_args(&s));
        assert_eq!(
            Sidecar::try_parse_from(args)
                .expect("the sidecar parses them")
                .s,
            s
        );

        let env = as_env(&g);
        assert_eq!(env.len(), g.values().len());
        assert!(
            env.iter()
                .any(|(k, v)| k == "STICKYFARM_COOKIE_DOMAIN" && v == "shop.example")
        );
        assert!(env.iter().all(|(k, _)| k.starts_with("STICKYFARM_")));
    }

    #[test]
    fn the_farms_collector_wins_over_the_fallback_and_nothing_is_exported_without_one() {
        let farm = |p: fn(&mut Value)| spec(p);
        let none = farm(|_| {});
        assert!(trace_env(&none, None, &[("service.namespace", "shop")]).is_empty());
        assert_eq!(
            trace_env(&none, Some("http://collector:4318"), &[]),
            vec![(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://collector:4318".into()
            )]
        );
        let own = farm(|s| {
            set(
                s,
                "tracing.otlpEndpoint",
                json!("https://otel.observability:4318"),
            );
            set(s, "tracing.samplingRatio", json!(0.25));
        });
        let env = trace_env(
            &own,
            Some("http://collector:4318"),
            &[
                ("service.namespace", "shop"),
                ("k8s.namespace.name", "prod"),
            ],
        );
        assert_eq!(
            env,
            vec![
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "https://otel.observability:4318".into()
                ),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".into()),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25".into()),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "service.namespace=shop,k8s.namespace.name=prod".into()
                ),
            ]
        );
    }

    #[test]
    fn durations_render_exactly() {
        assert_eq!(duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration(Duration::from_secs(90)), "90s");
        assert_eq!(duration(Duration::from_secs(1800)), "30m");
        assert_eq!(duration(Duration::from_secs(7200)), "2h");
        assert_eq!(
            humantime::parse_duration(&duration(Duration::from_millis(1))).unwrap(),
            Duration::from_millis(1)
        );
    }
}
