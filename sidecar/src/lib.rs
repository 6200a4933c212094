//! The Stickyfarm sidecar as a library: the session tier ([`tier`]) and the HTTP shells around
//! it ([`front`] for clients, [`session_api`] for the app). `main.rs` only parses flags and
//! waits for a signal; tests drive [`Sidecar::start`] directly or run the binary.

pub mod announce;
pub mod cache;
pub mod config;
pub mod connections;
pub mod front;
pub mod generations;
pub mod issued;
mod json;
pub mod metrics;
pub mod session_api;
pub mod store;
pub mod tier;
pub mod warm;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use hyper_util::service::TowerToHyperService;
use sqlx::postgres::PgConnectOptions;
use stickyfarm_api::config::UNIT_CONNECTION_REUSE;
use stickyfarm_api::listener;
use stickyfarm_api::token::Token;
use stickyfarm_api::tunnel::{self, Tunnels};
use stickyfarm_api::{InstanceId, SessionIdKey, UnitBaseUrl};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cache::{CacheOptions, SessionCache};
use crate::config::Config;
use crate::front::Front;
use crate::metrics::Metrics;
use crate::store::{Expiry, Store, StoreError, StoreOptions};
use crate::tier::{SessionTier, TierOptions, background};

/// The sidecar could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// `--database-url` is not a PostgreSQL URL (the URL itself is not repeated: it may hold a
    /// password).
    #[error("--database-url / DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    DatabaseUrl(String),
    /// `--app-url` has no host and port.
    #[error("--app-url must be http://HOST:PORT of the app, got {0}")]
    AppUrl(String),
    /// The cache could not be opened.
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}; is another process using it?")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The gateway token file is unusable.
    #[error(transparent)]
    Token(#[from] stickyfarm_api::token::TokenError),
    /// The database refused this unit's session-id key (see [`StoreError::KeyMismatch`]).
    #[error(transparent)]
    Store(StoreError),
    /// Shutdown was requested before the schema could be applied.
    #[error("stopped before PostgreSQL became reachable")]
    Cancelled,
}

/// A running sidecar.
pub struct Sidecar {
    /// The public (client-facing) address actually bound.
    pub public_addr: SocketAddr,
    /// The session API's TCP address actually bound.
    pub api_addr: SocketAddr,
    /// The admin (metrics) address actually bound.
    pub admin_addr: SocketAddr,
    /// The instance id this sidecar uses.
    pub instance: InstanceId,
    /// The session tier, for in-process use and tests.
    pub tier: Arc<SessionTier>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
    grace: Duration,
}

impl Sidecar {
    /// Connects, applies the schema (waiting for PostgreSQL if it is not up yet), binds every
    /// listener and starts serving.
    pub async fn start(config: Config) -> Result<Sidecar, StartError> {
        // A bad token file stops the start before anything connects or listens.
        let gateway_token = config
            .gateway_token_file
            .as_deref()
            .map(Token::read)
            .transpose()?;
        let session_id_key = SessionIdKey::new(
            Token::read(&config.session_id_key_file)?
                .expose()
                .as_bytes(),
        );
        let stop = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let connect = PgConnectOptions::from_str(&config.database_url)
            .map_err(|e| StartError::DatabaseUrl(e.to_string()))?
            .application_name("stickyfarm-sidecar");
        let store = Store::connect_lazy(
            connect,
            &StoreOptions {
                max_connections: config.db_max_connections,
                acquire_timeout: config.db_acquire_timeout,
                expiry: Expiry {
                    idle: config.farm_settings.idle_timeout,
                    absolute: config.farm_settings.absolute_timeout,
                },
            },
            metrics.clone(),
        );
        migrate_when_reachable(&store, &session_id_key, &stop).await?;

        let cache = SessionCache::open(&CacheOptions {
            memory_bytes: config.farm_settings.cache_memory.as_u64() as usize,
            disk: config
                .cache_disk_dir
                .clone()
                .map(|d| (d, config.farm_settings.cache_disk_size.as_u64() as usize)),
            warm_percent: config.farm_settings.warm_backup_percent,
        })
        .await?;
        let instance = config.pod_uid.unwrap_or_else(|| {
            let id = InstanceId::random();
            tracing::warn!(instance = %id, "no POD_UID given: using a random instance id (outside Kubernetes)");
            id
        });
        let tier = Arc::new(SessionTier::new(
            cache,
            store,
            metrics.clone(),
            TierOptions {
                instance,
                unit: config.unit.to_string(),
                idle_timeout: config.farm_settings.idle_timeout,
                touch_interval: config.touch_interval(),
                cache_reads: config.cache_reads,
                max_tables: config.max_tables as usize,
                session_id_key,
                listens: config.listen_invalidations,
            },
        ));

        let app = config
            .app_url
            .authority()
            .cloned()
            .ok_or_else(|| StartError::AppUrl(config.app_url.to_string()))?;
        let default_unit_url = config.unit_base_url.clone().unwrap_or_else(|| {
            config
                .unit
                .path_prefix()
                .parse::<UnitBaseUrl>()
                .expect("a unit path is a valid base URL")
        });
        let front = Arc::new(
            Front::new(
                tier.clone(),
                config.unit.clone(),
                default_unit_url,
                gateway_token,
                app,
                config.app_timeout,
                config.farm_settings.app_keep_alive_timeout,
                config.farm_settings.cookies.policy(),
                config.snapshot_max.as_u64() as usize,
                config.max_body_size.as_u64(),
                // As many as the listener's connections: the gateway caps them per unit, this
                // bounds what a client that reaches the unit directly could hold open.
                Tunnels::new(
                    config.farm_settings.tunnel_idle_timeout,
                    tunnel::CLOSE_SERVICE_RESTART,
                )
                .at_most(config.max_connections),
            )
            .with_app_protocol(config.farm_settings.app_protocol)
            .with_stop(stop.clone()),
        );

        let mut tasks = JoinSet::new();
        let public = bind(config.listen).await?;
        let api = bind(config.api_listen).await?;
        let admin = bind(config.admin_listen).await?;
        let (public_addr, api_addr, admin_addr) = (
            local(&public, config.listen)?,
            local(&api, config.api_listen)?,
            local(&admin, config.admin_listen)?,
        );

        if config.header_read_timeout <= UNIT_CONNECTION_REUSE {
            tracing::warn!(
                header_read_timeout = ?config.header_read_timeout,
                gateway_reuse = ?UNIT_CONNECTION_REUSE,
                "--header-read-timeout is not above how long the gateway reuses an idle connection: \
                 a request the gateway writes just as this unit closes one is lost; raise it"
            );
        }
        let limits = listener::Limits {
            max_connections: config.max_connections,
            max_header_size: config.max_header_size.as_u64() as usize,
            header_read_timeout: config.header_read_timeout,
            ..listener::Limits::default()
        };
        let grace = config.shutdown_grace;
        // Tunnels are not connections the listener's graceful stop waits for: they get the
        // grace from the same moment, a little less so their close frames go out before the
        // shutdown gives up on its tasks.
        tasks.spawn({
            let (tunnels, stop) = (front.tunnels.clone(), stop.clone());
            let grace = grace.saturating_sub(Duration::from_millis(500));
            async move {
                stop.cancelled().await;
                tunnels.close(grace).await;
            }
        });
        // The session API and the admin port close only after the public port has drained:
        // the app in this pod may still be finishing a request that reads or writes its
        // session, and refusing that call would fail a request the drain promised to finish.
        let after_public = CancellationToken::new();
        // The public port keeps its open connections for a moment after the stop, so that a
        // request a gateway writes on one meanwhile is refused as "unit stopping" (replayed on
        // a backup) rather than lost with a closed connection; see `Limits::drain_linger`.
        let public_limits = listener::Limits {
            drain_linger: stickyfarm_api::config::sidecar_drain_linger(grace),
            ..limits
        };
        tasks.spawn({
            let public = listener::serve(
                public,
                public_limits,
                {
                    let router = front::router(front);
                    move |_| TowerToHyperService::new(router.clone())
                },
                stop.clone(),
                grace,
            );
            let after_public = after_public.clone();
            async move {
                public.await;
                after_public.cancel();
            }
        });
        let api_router = session_api::router(
            tier.clone(),
            session_api::Limits {
                max_table_size: config.max_table_size.as_u64() as usize,
                max_json_depth: config.max_json_depth as usize,
            },
        );
        if let Some(path) = &config.api_socket {
            let uds = bind_api_socket(path).map_err(|source| StartError::Bind {
                addr: path.display().to_string(),
                source,
            })?;
            // The same limits and graceful stop as the API's TCP port: the app is the only
            // client, but one that leaks connections or stalls mid-request must not hold the
            // sidecar's descriptors or its stop.
            serve(
                &mut tasks,
                uds,
                api_router.clone(),
                limits,
                &after_public,
                grace,
            );
        }
        serve(&mut tasks, api, api_router, limits, &after_public, grace);
        let admin_router = Router::new()
            .route(
                "/metrics",
                get({
                    let m = metrics.clone();
                    let t = tier.clone();
                    move || async move {
                        m.set_cache_memory(t.cache().memory_usage(), t.cache().sessions_held());
                        if let Some(w) = t.cache().warm() {
                            m.set_warm_copies(w.entries(), w.bytes());
                        }
                        (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            m.encode(),
                        )
                    }
                }),
            )
            .route("/livez", get(|| async { "ok\n" }));
        serve(
            &mut tasks,
            admin,
            admin_router,
            limits,
            &after_public,
            grace,
        );

        tasks.spawn(background::touch_loop(
            tier.clone(),
            config.touch_interval(),
            stop.clone(),
        ));
        tasks.spawn(background::sweep_loop(
            tier.clone(),
            config.sweep_interval,
            stop.clone(),
        ));
        if config.listen_invalidations {
            tasks.spawn(background::invalidation_loop(tier.clone(), stop.clone()));
            // Warm copies are fed by what the listener hears.
            if tier.cache().warm().is_some() {
                tasks.spawn(background::warm_loop(tier.clone(), stop.clone()));
            }
        }
        tracing::info!(
            %public_addr, %api_addr, %admin_addr, unit = %config.unit, %instance,
            "stickyfarm sidecar serving"
        );
        Ok(Sidecar {
            public_addr,
            api_addr,
            admin_addr,
            instance,
            tier,
            stop,
            tasks,
            grace: config.shutdown_grace,
        })
    }

    /// Stops accepting, lets in-flight requests finish (bounded by the shutdown grace),
    /// records pending touches and closes the cache.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        let drained = tokio::time::timeout(self.grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                "in-flight requests did not finish within the shutdown grace; stopping anyway"
            );
            self.tasks.abort_all();
        }
        self.tier.cache().close().await;
        self.tier.store().close().await;
        tracing::info!("stickyfarm sidecar stopped");
    }
}

async fn migrate_when_reachable(
    store: &Store,
    key: &SessionIdKey,
    stop: &CancellationToken,
) -> Result<(), StartError> {
    let mut delay = Duration::from_millis(200);
    loop {
        match store.migrate(key).await {
            Ok(()) => return Ok(()),
            // Waiting cannot fix this one: serving would lose every stored session.
            Err(e @ StoreError::KeyMismatch { .. }) => return Err(StartError::Store(e)),
            Err(e) => tracing::warn!(error = %e, "cannot apply the session schema yet; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return Err(StartError::Cancelled),
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: addr.to_string(),
            source,
        })
}

fn local(l: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, StartError> {
    l.local_addr().map_err(|source| StartError::Bind {
        addr: addr.to_string(),
        source,
    })
}

/// Serves `router` on `listener` with the port limits until `stop`.
fn serve(
    tasks: &mut JoinSet<()>,
    listener: impl listener::Listener,
    router: Router,
    limits: listener::Limits,
    stop: &CancellationToken,
    grace: Duration,
) {
    tasks.spawn(listener::serve(
        listener,
        limits,
        move |_| TowerToHyperService::new(router.clone()),
        stop.clone(),
        grace,
    ));
}

/// Binds the session API's Unix socket at `path`, usable by every user who can reach it (mode
/// 0666).
///
/// The app often runs as another user than the sidecar: each container runs as its image's
/// user unless the pod says otherwise. Connecting to a Unix socket takes write permission on
/// it, which the usual umask (0022) leaves to the sidecar's user alone, so the app's session
/// calls would fail with "permission denied". 0666 grants no more than the API's loopback
/// port already grants every process of the pod; the socket's folder (the pod's shared volume)
/// decides who reaches it. It is bound under a temporary name and renamed into place once its
/// mode is set, so an app never finds it there and unusable; the rename also replaces a
/// socket a previous run left.
fn bind_api_socket(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the socket path must end in a file name",
        )
    })?;
    let mut temporary = std::ffi::OsString::from(".");
    temporary.push(name);
    temporary.push(format!(".{}", std::process::id()));
    let temporary = path.with_file_name(temporary);
    let _ = std::fs::remove_file(&temporary);
    let bound = tokio::net::UnixListener::bind(&temporary).and_then(|listener| {
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o666))?;
        std::fs::rename(&temporary, path)?;
        Ok(listener)
    });
    if bound.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    bound
}
