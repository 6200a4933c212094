//! Command-line flags and environment variables of `stickyfarm-gateway`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use clap::{ArgAction, Parser, ValueEnum};

use crate::access_log::AccessLogFormat;
use crate::units::UnitSpec;
pub use stickyfarm_api::config::{Addressing, AppProtocol, Failback, GatewayFarmSettings};

/// The Stickyfarm gateway: the farm's load balancer. First requests go to the least busy
/// healthy unit; requests addressed to a unit (`/_unit/<unit>/…`, `<unit>.<farm host>` or the
/// `sf_unit` cookie) stay on it; when it fails they go to a backup, which the client keeps.
#[derive(Debug, Clone, Parser)]
#[command(name = "stickyfarm-gateway", version, about, long_about = None)]
pub struct Config {
    /// Client-facing address: HTTP/1.1 and HTTP/2 with prior knowledge (h2c, behind a load
    /// balancer that terminates TLS), or with --tls-cert HTTPS with ALPN h2 and http/1.1.
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

    /// Hosts (`host[:port]`) clients reach the farm by, repeatable or comma-separated; the
    /// first is canonical. Unit URLs name the request's host only when it is one of these,
    /// otherwise the first, so a forged `Host` header cannot poison other clients' links.
    /// Without any, path-style unit URLs are relative (`/_unit/<unit>`).
    #[arg(long = "public-host", env = "STICKYFARM_PUBLIC_HOST", value_delimiter = ',', value_parser = parse_public_host)]
    pub public_hosts: Vec<String>,

    /// Scheme clients use to reach the gateway (for unit URLs): `https` behind a TLS
    /// terminator. With --tls-cert it is always `https`.
    #[arg(long, env = "STICKYFARM_PUBLIC_SCHEME", value_enum, default_value_t = Scheme::Http)]
    pub public_scheme: Scheme,

    /// The TLS certificate chain (PEM, the server's certificate first): the client port then
    /// speaks HTTPS only. Checked at start (readable, parseable, the key's, valid now) and
    /// re-read every --tls-reload-interval; a new pair that fails the checks is refused and
    /// the one in use stays.
    #[arg(long, env = "STICKYFARM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "STICKYFARM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Where the certificate files come from, named in errors about them (the operator gives
    /// `Secret <namespace>/<name>`).
    #[arg(long, env = "STICKYFARM_TLS_ORIGIN")]
    pub tls_origin: Option<String>,

    /// How often the certificate files are checked for a new pair.
    #[arg(long, env = "STICKYFARM_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub tls_reload_interval: Duration,

    /// With TLS: also listen for plain HTTP here and answer every request with a `308`
    /// redirect to the same path over HTTPS.
    #[arg(
        long,
        env = "STICKYFARM_GATEWAY_REDIRECT_LISTEN",
        requires = "tls_cert"
    )]
    pub redirect_listen: Option<SocketAddr>,

    /// The port HTTPS redirects name (clients' port of the TLS listener, e.g. a Service's 443),
    /// unless the matching --public-host names one.
    #[arg(long, env = "STICKYFARM_REDIRECT_PORT", default_value_t = 443)]
    pub redirect_port: u16,

    /// Random jitter of the interval, as a fraction (0.2 = ±20 %), so checks do not align.
    #[arg(long, env = "STICKYFARM_CHECK_JITTER", default_value_t = 0.2)]
    pub check_jitter: f64,

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

    /// A request whose body is at most this large is read in full before it is forwarded, so
    /// it can go to a backup when its unit's app never received it (any method) or, for an
    /// idempotent one (GET, HEAD, OPTIONS, TRACE, PUT, DELETE), when the unit died before
    /// answering; larger bodies stream and are never replayed.
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

    /// Open client connections at most (per listener); more wait until one ends.
    #[arg(long, env = "STICKYFARM_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,

    /// Concurrent HTTP/2 streams per client connection.
    #[arg(long, env = "STICKYFARM_HTTP2_MAX_STREAMS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub http2_max_streams: u32,

    /// How long shutdown waits for in-flight requests and open tunnels (then tunnels are
    /// closed, WebSocket clients with 1001).
    #[arg(long, env = "STICKYFARM_SHUTDOWN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// The access log: `off`, or one line per request as `json` or `logfmt` (time, client,
    /// method, path, status, unit, instance, session as a keyed hash, bytes in and out,
    /// duration, upstream duration, retries, failover, request id).
    #[arg(long, env = "STICKYFARM_ACCESS_LOG", value_enum, default_value_t = AccessLogFormat::Off)]
    pub access_log: AccessLogFormat,

    /// Where access log lines go: `-` for stdout (the diagnostic log is on stderr), or a file
    /// appended to.
    #[arg(long, env = "STICKYFARM_ACCESS_LOG_PATH", default_value = "-")]
    pub access_log_path: String,

    /// Log paths with their query (off: queries often carry tokens and personal data).
    #[arg(long, env = "STICKYFARM_ACCESS_LOG_QUERY", default_value_t = false, action = ArgAction::Set)]
    pub access_log_query: bool,

    /// Log filter and format, the same in every Stickyfarm binary.
    #[command(flatten)]
    pub logs: stickyfarm_api::logs::LogSettings,

    /// What the farm declares for the gateway (the configuration contract, shared with the
    /// operator and farmctl, which render it from the ServerFarm).
    #[command(flatten)]
    pub farm_settings: GatewayFarmSettings,
}

/// Where the unit list comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Discovery {
    /// Flags and a units file.
    Static,
    /// The farm's EndpointSlices.
    Kubernetes,
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

fn parse_public_host(s: &str) -> Result<String, String> {
    if !stickyfarm_api::is_valid_host(s.as_bytes()) {
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
