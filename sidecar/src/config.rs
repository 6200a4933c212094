//! Command-line flags and environment variables of `stickyfarm-sidecar`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use clap::{ArgAction, Parser};
use stickyfarm_api::config::SidecarFarmSettings;
use stickyfarm_api::{InstanceId, UnitBaseUrl, UnitName};

/// The Stickyfarm sidecar: fronts the app in a commerce pod, owns the session cookies and the
/// instance-id check, caches session state (foyer) and writes it through to PostgreSQL.
#[derive(Debug, Clone, Parser)]
#[command(name = "stickyfarm-sidecar", version, about, long_about = None)]
pub struct Config {
    /// Public address: every client request to the pod arrives here and is forwarded to the app.
    /// The gateway's health check is `/_stickyfarm/health` on this address.
    #[arg(long, env = "STICKYFARM_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// The app inside the pod (HTTP, usually on localhost).
    #[arg(
        long,
        env = "STICKYFARM_APP_URL",
        default_value = "http://127.0.0.1:3000"
    )]
    pub app_url: http::Uri,

    /// How long the app may take to answer one request before the client gets 504.
    #[arg(long, env = "STICKYFARM_APP_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub app_timeout: Duration,

    /// Session-state API for the app (TCP). Keep it on localhost: it is never exposed outside
    /// the pod.
    #[arg(long, env = "STICKYFARM_API_LISTEN", default_value = "127.0.0.1:7070")]
    pub api_listen: SocketAddr,

    /// Also serve the session-state API on this Unix socket (a volume shared with the app).
    #[arg(long, env = "STICKYFARM_API_SOCKET")]
    pub api_socket: Option<PathBuf>,

    /// Admin address: `/metrics` (Prometheus) and `/livez`.
    #[arg(long, env = "STICKYFARM_ADMIN_LISTEN", default_value = "0.0.0.0:9464")]
    pub admin_listen: SocketAddr,

    /// PostgreSQL connection URL. Pass it through the environment from a Secret; it is never
    /// logged.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// Largest number of pooled PostgreSQL connections (writes, loads, announcements). The unit
    /// holds two more: its invalidation listener's, and one for failed-over sessions'
    /// generation checks.
    #[arg(long, env = "STICKYFARM_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,

    /// How long a request waits for a PostgreSQL connection before answering 503.
    #[arg(long, env = "STICKYFARM_DB_ACQUIRE_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub db_acquire_timeout: Duration,

    /// This unit's name (a DNS label). In Kubernetes the pod name (downward API `POD_NAME`).
    #[arg(long, env = "POD_NAME")]
    pub unit: UnitName,

    /// The pod UID (downward API `POD_UID`): this unit's instance id. Without it (outside
    /// Kubernetes) a random id is used, which changes on every start, like a new pod.
    #[arg(long, env = "POD_UID")]
    pub pod_uid: Option<InstanceId>,

    /// The unit's external base URL, used when the gateway does not send one. Defaults to the
    /// gateway's path-style address `/_unit/<unit>`.
    #[arg(long, env = "STICKYFARM_UNIT_BASE_URL")]
    pub unit_base_url: Option<UnitBaseUrl>,

    /// File holding the farm's gateway token. The unit base URL is taken from the gateway's
    /// `x-stickyfarm-unit-url` header only on requests that carry this token; without the file,
    /// never (the app's links then use `--unit-base-url` or `/_unit/<unit>`).
    #[arg(long, env = "STICKYFARM_GATEWAY_TOKEN_FILE")]
    pub gateway_token_file: Option<std::path::PathBuf>,

    /// File holding the farm's session-id key (at least 32 visible characters, e.g.
    /// `openssl rand -hex 32`): PostgreSQL and its notifications know sessions only by a keyed
    /// hash of their id. Every unit of a farm needs the same key, for as long as its sessions
    /// live (on Kubernetes the operator keeps it in the Secret `<farm>-session-id-key`).
    #[arg(long, env = "STICKYFARM_SESSION_ID_KEY_FILE")]
    pub session_id_key_file: std::path::PathBuf,

    /// Folder of the optional disk tier. It is emptied at every start: PostgreSQL is the truth.
    #[arg(long, env = "STICKYFARM_CACHE_DISK_DIR")]
    pub cache_disk_dir: Option<PathBuf>,

    /// Serve session reads from the cache. `false` loads every read from PostgreSQL (writes
    /// are written through either way): the baseline the benchmarks compare the cache with,
    /// and a way to rule the cache out when diagnosing.
    #[arg(long, env = "STICKYFARM_CACHE_READS", default_value_t = true, action = ArgAction::Set)]
    pub cache_reads: bool,

    /// How often expired sessions are deleted from PostgreSQL (one sidecar at a time does it).
    #[arg(long, env = "STICKYFARM_SWEEP_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub sweep_interval: Duration,

    /// Largest request body forwarded to the app from the public port; larger ones get 413
    /// (by `Content-Length` before anything is read, or as soon as a streamed body passes it).
    #[arg(long, env = "STICKYFARM_MAX_BODY_SIZE", default_value = "10MiB")]
    pub max_body_size: ByteSize,

    /// Largest session snapshot attached to forwarded requests (`x-stickyfarm-snapshot`,
    /// base64url); larger sessions are read through the API. 0 disables the snapshot.
    #[arg(long, env = "STICKYFARM_SNAPSHOT_MAX", default_value = "16KiB")]
    pub snapshot_max: ByteSize,

    /// Largest JSON document the app may write to one table.
    #[arg(long, env = "STICKYFARM_MAX_TABLE_SIZE", default_value = "1MiB")]
    pub max_table_size: ByteSize,

    /// Most tables one session may hold (a new table beyond that is refused with 422).
    #[arg(long, env = "STICKYFARM_MAX_TABLES", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tables: u32,

    /// Deepest nesting of arrays and objects in a written document (deeper: 422).
    #[arg(long, env = "STICKYFARM_MAX_JSON_DEPTH", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=128))]
    pub max_json_depth: u32,

    /// Listen for other units' committed changes (PostgreSQL LISTEN/NOTIFY). Turn off only
    /// behind a pooler that cannot LISTEN (PgBouncer in transaction mode); the generation
    /// cookie and conditional writes still prevent stale writes.
    #[arg(long, env = "STICKYFARM_LISTEN_INVALIDATIONS", default_value_t = true, action = ArgAction::Set)]
    pub listen_invalidations: bool,

    /// Open connections per listener at most; more wait until one ends. Also the most
    /// upgraded connections (WebSockets) to the app at once: they no longer count as the
    /// listener's, and more upgrades get 503.
    #[arg(long, env = "STICKYFARM_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,

    /// Largest request head (request line and headers); larger ones get 431. At least 8 KiB.
    #[arg(long, env = "STICKYFARM_MAX_HEADER_SIZE", default_value = "16KiB")]
    pub max_header_size: ByteSize,

    /// A client must send a request head within this, also between keep-alive requests
    /// (slowloris). Keep it above 20 s, how long the gateway reuses an idle connection
    /// (`UNIT_CONNECTION_REUSE`): it must give one up before the sidecar closes it.
    #[arg(long, env = "STICKYFARM_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// How long shutdown waits for in-flight requests and open tunnels (then tunnels are
    /// closed, WebSocket clients with 1012 "service restart": they reconnect to a backup).
    /// New requests meanwhile, also on kept-alive connections (held open for a quarter of the
    /// grace, at most 2 s), are refused as "unit stopping", which a gateway replays elsewhere.
    #[arg(long, env = "STICKYFARM_SHUTDOWN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Log filter and format, the same in every Stickyfarm binary.
    #[command(flatten)]
    pub logs: stickyfarm_api::logs::LogSettings,

    /// What the farm declares for its sidecars (the configuration contract, shared with the
    /// operator and farmctl, which render it from the ServerFarm).
    #[command(flatten)]
    pub farm_settings: SidecarFarmSettings,
}

impl Config {
    /// How often `last_seen` is refreshed for sessions in use: often enough that an active
    /// session never looks idle to the sweep.
    pub fn touch_interval(&self) -> Duration {
        (self.farm_settings.idle_timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use stickyfarm_api::config::UNIT_CONNECTION_REUSE;

    use super::Config;

    #[test]
    fn the_gateway_gives_up_an_idle_connection_before_the_sidecar_closes_it() {
        let config = Config::try_parse_from([
            "stickyfarm-sidecar",
            "--database-url",
            "postgres://x",
            "--unit",
            "web-0",
            "--session-id-key-file",
            "/k",
        ])
        .expect("the defaults parse");
        assert!(UNIT_CONNECTION_REUSE < config.header_read_timeout);
    }
}
