//! Command-line flags and environment variables of `stickyfarm-gateway`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use clap::{ArgAction, Parser, ValueEnum};

use crate::balance::Policy;
use crate::units::UnitSpec;

/// The Stickyfarm gateway: the farm's load balancer. First requests go to the least busy
/// healthy unit; requests addressed to a unit (`/_unit/<unit>/…`, `<unit>.<farm host>` or the
/// `sf_unit` cookie) stay on it; when it fails they go to a backup, which the client keeps.
#[derive(Debug, Clone, Parser)]
#[command(name = "stickyfarm-gateway", version, about, long_about = None)]
pub struct Config {
    /// Client-facing address (HTTP/1.1, and HTTP/2 with prior knowledge).
    #[arg(
        long,
        env = "STICKYFARM_GATEWAY_LISTEN",
        default_value = "0.0.0.0:8000"
    )]
    pub listen: SocketAddr,

    /// Admin address, read-only: `/status` (the status table as JSON), `/metrics`, `/livez`,
    /// `/readyz`. Scrapers and probes reach it; nothing here changes routing.
    #[arg(
        long,
        env = "STICKYFARM_GATEWAY_ADMIN_LISTEN",
        default_value = "127.0.0.1:9465"
    )]
    pub admin_listen: SocketAddr,

    /// Control address: `POST /units/<unit>/{enable,drain,disable}` with
    /// `Authorization: Bearer <admin token>`. Bound only when `--admin-token-file` is given.
    #[arg(
        long,
        env = "STICKYFARM_GATEWAY_CONTROL_LISTEN",
        default_value = "127.0.0.1:9466"
    )]
    pub control_listen: SocketAddr,

    /// File holding the admin token that unit actions on the control port must present.
    /// Without it, unit actions are off (the control port is not opened).
    #[arg(long, env = "STICKYFARM_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// File holding the farm's gateway token, sent to the units on every forwarded request
    /// (`x-stickyfarm-gateway-token`): their sidecars trust the gateway's headers only with it.
    #[arg(long, env = "STICKYFARM_GATEWAY_TOKEN_FILE")]
    pub gateway_token_file: Option<PathBuf>,

    /// A unit as `NAME=HOST:PORT` (repeatable); static discovery for one machine.
    #[arg(long = "unit", value_name = "NAME=HOST:PORT", value_parser = parse_unit_flag)]
    pub units: Vec<UnitSpec>,

    /// A YAML (or JSON) file listing units, re-read when it changes:
    /// `units: [{name: web-0, address: "127.0.0.1:8081", admin: enabled}]`.
    #[arg(long, env = "STICKYFARM_GATEWAY_UNITS_FILE")]
    pub units_file: Option<PathBuf>,

    /// Where units come from: `static` (`--unit`, `--units-file`) or `kubernetes` (the
    /// EndpointSlices of the farm's unit Services; needs `--farm` and `--namespace`).
    #[arg(long, env = "STICKYFARM_DISCOVERY", value_enum, default_value_t = Discovery::Static)]
    pub discovery: Discovery,

    /// The farm whose units to discover on Kubernetes.
    #[arg(long, env = "STICKYFARM_FARM")]
    pub farm: Option<String>,

    /// The farm's namespace on Kubernetes.
    #[arg(long, env = "STICKYFARM_NAMESPACE")]
    pub namespace: Option<String>,

    /// The farm's host name, for host-style unit addresses `<unit>.<farm host>`.
    #[arg(long, env = "STICKYFARM_FARM_HOST")]
    pub farm_host: Option<String>,

    /// Which unit address the app is given for its links.
    #[arg(long, env = "STICKYFARM_UNIT_ADDRESSING", value_enum, default_value_t = Addressing::Path)]
    pub unit_addressing: Addressing,

    /// Hosts (`host[:port]`) clients reach the farm by, repeatable or comma-separated; the
    /// first is canonical. Unit URLs name the request's host only when it is one of these,
    /// otherwise the first, so a forged `Host` header cannot poison other clients' links.
    /// Without any, path-style unit URLs are relative (`/_unit/<unit>`).
    #[arg(long = "public-host", env = "STICKYFARM_PUBLIC_HOST", value_delimiter = ',', value_parser = parse_public_host)]
    pub public_hosts: Vec<String>,

    /// Scheme clients use to reach the gateway (for unit URLs): `https` behind a TLS terminator.
    #[arg(long, env = "STICKYFARM_PUBLIC_SCHEME", value_enum, default_value_t = Scheme::Http)]
    pub public_scheme: Scheme,

    /// Load-balancing policy for new sessions and backups.
    #[arg(long, env = "STICKYFARM_POLICY", value_enum, default_value_t = Policy::LeastInFlight)]
    pub policy: Policy,

    /// After a failover: keep the client on the backup, or send it back once its unit recovers.
    #[arg(long, env = "STICKYFARM_FAILBACK", value_enum, default_value_t = Failback::Stay)]
    pub failback: Failback,

    /// Path of the active health check on each unit (the patent's test URL).
    #[arg(long, env = "STICKYFARM_CHECK_PATH", default_value = stickyfarm_api::paths::HEALTH)]
    pub check_path: String,

    /// Time between checks of one unit.
    #[arg(long, env = "STICKYFARM_CHECK_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub check_interval: Duration,

    /// Random jitter of the interval, as a fraction (0.2 = ±20 %), so checks do not align.
    #[arg(long, env = "STICKYFARM_CHECK_JITTER", default_value_t = 0.2)]
    pub check_jitter: f64,

    /// A check that takes longer fails.
    #[arg(long, env = "STICKYFARM_CHECK_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub check_timeout: Duration,

    /// Expected status of the check.
    #[arg(long, env = "STICKYFARM_CHECK_EXPECT_STATUS", default_value_t = 200)]
    pub check_expect_status: u16,

    /// Text the check's answer must contain. An `instance: <uuid>` line in the answer is
    /// recorded as the unit's instance id.
    #[arg(long, env = "STICKYFARM_CHECK_EXPECT_BODY", default_value = stickyfarm_api::HEALTHY_ANSWER)]
    pub check_expect_body: String,

    /// Consecutive passed checks that bring a unit that was down back into service.
    #[arg(long, env = "STICKYFARM_CHECK_RISE", default_value_t = 2)]
    pub rise: u32,

    /// Consecutive failed checks that take a unit out of service.
    #[arg(long, env = "STICKYFARM_CHECK_FALL", default_value_t = 3)]
    pub fall: u32,

    /// A unit that comes (back) into service ramps its share of new sessions up over this time.
    #[arg(long, env = "STICKYFARM_SLOW_START", default_value = "30s", value_parser = humantime::parse_duration)]
    pub slow_start: Duration,

    /// Connecting to a unit takes at most this long.
    #[arg(long, env = "STICKYFARM_CONNECT_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// A unit must start answering a request within this time (then 504).
    #[arg(long, env = "STICKYFARM_UPSTREAM_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub upstream_timeout: Duration,

    /// Passive ejection never takes out more than this share (percent) of the units: the rest
    /// keep serving whatever requests suggest. At least one unit may be ejected; 0 turns
    /// passive ejection off (active checks still apply).
    #[arg(long, env = "STICKYFARM_MAX_EJECTION_PERCENT", default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub max_ejection_percent: u8,

    /// A passively ejected unit stays out at least this long, the n-th ejection in a row n
    /// times as long; then its active checks bring it back.
    #[arg(long, env = "STICKYFARM_EJECTION_TIME", default_value = "5s", value_parser = humantime::parse_duration)]
    pub ejection_time: Duration,

    /// The longest passive ejection.
    #[arg(long, env = "STICKYFARM_MAX_EJECTION_TIME", default_value = "300s", value_parser = humantime::parse_duration)]
    pub max_ejection_time: Duration,

    /// Requests in a row that get no answer within --upstream-timeout count as one passive
    /// failure of their unit.
    #[arg(long, env = "STICKYFARM_TIMEOUTS_TO_EJECT", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub timeouts_to_eject: u32,

    /// New sessions (requests without a session cookie) one client address may start per
    /// second (an IPv6 client by its /64; behind a proxy set --trust-forwarded so the address
    /// is the client's, not the proxy's); more get 429. 0 turns the limit off.
    #[arg(long, env = "STICKYFARM_NEW_SESSION_RATE", default_value_t = 50)]
    pub new_session_rate: u32,

    /// New sessions one client address may start at once (a first page and its assets).
    #[arg(long, env = "STICKYFARM_NEW_SESSION_BURST", default_value_t = 200)]
    pub new_session_burst: u32,

    /// An idempotent request (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) whose body is at most
    /// this large is read in full before it is forwarded, so it can be replayed on a backup
    /// when its unit dies before answering; larger ones stream and answer 502 instead.
    #[arg(long, env = "STICKYFARM_REPLAY_BODY_MAX", default_value = "64KiB")]
    pub replay_body_max: ByteSize,

    /// Further units tried when a request could not be delivered.
    #[arg(long, env = "STICKYFARM_MAX_RETRIES", default_value_t = 2)]
    pub max_retries: u32,

    /// Largest request head (request line and headers); larger ones get 431. At least 8 KiB.
    #[arg(long, env = "STICKYFARM_MAX_HEADER_SIZE", default_value = "16KiB")]
    pub max_header_size: ByteSize,

    /// Most headers in one request.
    #[arg(long, env = "STICKYFARM_MAX_HEADERS", default_value_t = 100)]
    pub max_headers: usize,

    /// Largest request body; larger ones get 413.
    #[arg(long, env = "STICKYFARM_MAX_BODY_SIZE", default_value = "10MiB")]
    pub max_body_size: ByteSize,

    /// A client must send a request's headers within this time, or the connection is closed
    /// (slowloris protection; also the keep-alive idle limit).
    #[arg(long, env = "STICKYFARM_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// Idle connections kept per unit.
    #[arg(long, env = "STICKYFARM_MAX_IDLE_CONNECTIONS", default_value_t = 64)]
    pub max_idle_connections: usize,

    /// Keep the client's `X-Forwarded-For` and append to it (only behind a trusted proxy).
    #[arg(long, env = "STICKYFARM_TRUST_FORWARDED", default_value_t = false, action = ArgAction::Set)]
    pub trust_forwarded: bool,

    /// Mark the routing cookie `Secure` (with no `--cookie-domain`, the farm's cookies are then
    /// named `__Host-…`; the sidecars must be given the same setting).
    #[arg(long, env = "STICKYFARM_COOKIE_SECURE", default_value_t = false, action = ArgAction::Set)]
    pub cookie_secure: bool,

    /// Name of the session cookie (the farm's `sessionPersistence.sessionName`, as the sidecars
    /// set it): a request with a session is never counted as a new one.
    #[arg(long, env = "STICKYFARM_SESSION_COOKIE", default_value = stickyfarm_api::cookie_names::SESSION)]
    pub session_cookie: stickyfarm_api::SessionCookieName,

    /// `Domain=` of the farm's cookies (host-style unit addresses), as the sidecars set it.
    #[arg(long, env = "STICKYFARM_COOKIE_DOMAIN")]
    pub cookie_domain: Option<String>,

    /// Open client connections at most (per listener); more wait until one ends.
    #[arg(long, env = "STICKYFARM_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,

    /// Concurrent HTTP/2 streams per client connection.
    #[arg(long, env = "STICKYFARM_HTTP2_MAX_STREAMS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub http2_max_streams: u32,

    /// How long shutdown waits for in-flight requests.
    #[arg(long, env = "STICKYFARM_SHUTDOWN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Log format.
    #[arg(long, env = "STICKYFARM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Where the unit list comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Discovery {
    /// Flags and a units file.
    Static,
    /// The farm's EndpointSlices.
    Kubernetes,
}

/// Unit address style handed to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Addressing {
    /// `<scheme>://<gateway host>/_unit/<unit>`.
    Path,
    /// `<scheme>://<unit>.<farm host>` (needs `--farm-host` and wildcard DNS).
    Host,
}

/// Public scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTPS (TLS terminated in front of the gateway).
    Https,
}

impl Scheme {
    /// As text.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Where a failed-over client goes once its unit is back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Failback {
    /// Stay on the backup (its cache holds the session now).
    Stay,
    /// Return to the original unit once it is in service again.
    Return,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn parse_public_host(s: &str) -> Result<String, String> {
    let authority: http::uri::Authority = s
        .parse()
        .map_err(|_| format!("expected host[:port], got {s:?}"))?;
    if s.contains('@') || authority.host().is_empty() {
        return Err(format!("expected host[:port], got {s:?}"));
    }
    Ok(s.to_ascii_lowercase())
}

fn parse_unit_flag(s: &str) -> Result<UnitSpec, String> {
    let (name, address) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=HOST:PORT, got {s:?}"))?;
    Ok(UnitSpec {
        name: name.parse().map_err(|e| format!("{e}"))?,
        address: address.to_owned(),
        instance: None,
        admin: Default::default(),
    })
}
