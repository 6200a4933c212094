//! The Stickyfarm gateway as a library: the farm's load balancer (the patent's main farm unit
//! and the addresses of its subordinate units). `main.rs` only parses flags and waits for a
//! signal; tests drive [`Gateway::start`] or run the binary.

pub mod access_log;
pub mod admin;
pub mod balance;
pub mod config;
pub mod discovery;
pub mod health;
pub mod kubernetes;
pub mod metrics;
pub mod proxy;
pub mod rate;
pub mod ratelimit;
pub mod redirect;
pub mod status_page;
pub mod tls;
pub mod units;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::service::TowerToHyperService;
use stickyfarm_api::listener;
use stickyfarm_api::token::Token;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::access_log::AccessLog;
use crate::config::{Config, Discovery, Scheme};
use crate::discovery::{StaticSource, UnitSource};
use crate::health::CheckConfig;
use crate::kubernetes::KubernetesSource;
use crate::metrics::Metrics;
use crate::proxy::{Proxy, ProxySettings, Rebalance};
use crate::units::{EjectionPolicy, Farm};

/// The gateway could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}; is another process using it?")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The unit list is unusable.
    #[error(transparent)]
    Units(#[from] discovery::UnitsFileError),
    /// Kubernetes discovery without a farm or namespace.
    #[error(
        "--discovery kubernetes needs --farm and --namespace (STICKYFARM_FARM, STICKYFARM_NAMESPACE)"
    )]
    KubernetesTarget,
    /// No Kubernetes client could be made.
    #[error(
        "cannot reach the Kubernetes API for unit discovery: {0} (in-cluster service account or KUBECONFIG)"
    )]
    Kubernetes(String),
    /// A token file is unusable.
    #[error(transparent)]
    Token(#[from] stickyfarm_api::token::TokenError),
    /// Neither `--unit` nor `--units-file` was given.
    #[error("no units: give --unit NAME=HOST:PORT or --units-file FILE")]
    NoUnitSource,
    /// The TLS certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] tls::CertificateError),
    /// The access log file cannot be opened.
    #[error("cannot open the access log {path}: {source}; check --access-log-path")]
    AccessLog {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A running gateway.
pub struct Gateway {
    /// The client-facing address actually bound.
    pub addr: SocketAddr,
    /// The (read-only) admin address actually bound.
    pub admin_addr: SocketAddr,
    /// The control address actually bound, when unit actions are on (`--admin-token-file`).
    pub control_addr: Option<SocketAddr>,
    /// The plain-HTTP redirect address actually bound (`--redirect-listen`).
    pub redirect_addr: Option<SocketAddr>,
    /// The farm (status table), for tests and embedding.
    pub farm: Arc<Farm>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Gateway {
    /// Starts serving with units from flags and/or a units file.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        if config.discovery == Discovery::Kubernetes {
            let (Some(farm), Some(namespace)) = (config.farm.clone(), config.namespace.clone())
            else {
                return Err(StartError::KubernetesTarget);
            };
            let client = kube::Client::try_default()
                .await
                .map_err(|e| StartError::Kubernetes(e.to_string()))?;
            let source = KubernetesSource {
                client,
                namespace,
                farm,
            };
            return Self::start_with_source(config, Box::new(source)).await;
        }
        if config.units.is_empty() && config.units_file.is_none() {
            return Err(StartError::NoUnitSource);
        }
        let source = StaticSource {
            fixed: config.units.clone(),
            file: config.units_file.clone(),
            poll: Duration::from_secs(1),
        };
        // Fail fast on a bad file at start; later mistakes keep the last good list.
        source.load()?;
        Self::start_with_source(config, Box::new(source)).await
    }

    /// Starts serving with units from any discovery source.
    pub async fn start_with_source(
        config: Config,
        source: Box<dyn UnitSource>,
    ) -> Result<Gateway, StartError> {
        // Tokens and certificates first: a bad file stops the start before anything listens.
        let certificates = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::Certificates::load(tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                origin: config.tls_origin.clone(),
            })?),
            _ => None,
        };
        let admin_token = config
            .admin_token_file
            .as_deref()
            .map(Token::read)
            .transpose()?;
        let gateway_token = match config.gateway_token_file.as_deref() {
            Some(path) => {
                let token = Token::read(path)?;
                let mut v = HeaderValue::from_str(token.expose())
                    .expect("a parsed token is visible ASCII, a valid header value");
                // Never indexed by HTTP/2 header compression.
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let stop = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let farm = Arc::new(Farm::new(
            metrics.clone(),
            config.max_idle_connections,
            EjectionPolicy {
                max_percent: config.max_ejection_percent,
                base_time: config.ejection_time,
                max_time: config.max_ejection_time.max(config.ejection_time),
                timeouts: config.timeouts_to_eject,
            },
            stop.clone(),
        ));
        let checks = Arc::new(CheckConfig {
            path: config.farm_settings.check_path.clone(),
            interval: config.farm_settings.check_interval,
            jitter: config.check_jitter.clamp(0.0, 1.0),
            timeout: config.farm_settings.check_timeout,
            expect_status: config.farm_settings.check_expect_status,
            expect_body: config.farm_settings.check_expect_body.clone(),
            rise: config.farm_settings.rise.max(1),
            fall: config.farm_settings.fall.max(1),
        });
        let mut tasks = JoinSet::new();

        // Membership: discovery publishes, the farm applies, new units get a checker.
        // Ready once discovery has published a first complete list (`/readyz`).
        let (tx, mut rx) = watch::channel(Vec::new());
        let listed = Arc::new(AtomicBool::new(false));
        tasks.spawn(source.run(tx, stop.clone()));
        {
            let (farm, stop, listed) = (farm.clone(), stop.clone(), listed.clone());
            tasks.spawn(async move {
                // The channel's initial empty list is not a published one; a value that has
                // changed (seen here or by `changed()` below) is.
                let mut published = false;
                loop {
                    let units = {
                        let seen = rx.borrow_and_update();
                        published |= seen.has_changed();
                        seen.clone()
                    };
                    for unit in farm.apply(units) {
                        tokio::spawn(health::check_loop(unit, checks.clone()));
                    }
                    if published {
                        listed.store(true, Ordering::Relaxed);
                    }
                    tokio::select! {
                        changed = rx.changed() => if changed.is_err() { stop.cancelled().await; return } else { published = true },
                        _ = stop.cancelled() => return,
                    }
                }
            });
        }

        let access_log = AccessLog::start(
            config.access_log,
            &config.access_log_path,
            config.access_log_query,
            metrics.clone(),
        )
        .await
        .map_err(|source| StartError::AccessLog {
            path: config.access_log_path.clone(),
            source,
        })?;
        let proxy = Arc::new(
            Proxy::new(
                farm.clone(),
                metrics.clone(),
                ProxySettings {
                    policy: config.farm_settings.policy,
                    failback: config.farm_settings.failback,
                    farm_host: config.farm_settings.farm_host.clone(),
                    addressing: config.farm_settings.unit_addressing,
                    scheme: if certificates.is_some() {
                        Scheme::Https
                    } else {
                        config.public_scheme
                    },
                    public_hosts: config.public_hosts.clone(),
                    slow_start: config.slow_start,
                    connect_timeout: config.connect_timeout,
                    upstream_timeout: config.upstream_timeout,
                    max_retries: config.max_retries,
                    max_body_size: config.max_body_size.as_u64(),
                    replay_body_max: config.replay_body_max.as_u64(),
                    trust_forwarded: config.trust_forwarded,
                    cookies: config.farm_settings.cookies.policy(),
                    new_session_rate: config.new_session_rate,
                    new_session_burst: config.new_session_burst,
                    gateway_token,
                    max_tunnels_per_unit: config.farm_settings.max_tunnels_per_unit,
                    tunnel_idle_timeout: config.farm_settings.tunnel_idle_timeout,
                    app_protocol: config.farm_settings.app_protocol,
                    rebalance: (!config.farm_settings.rebalance_idle.is_zero()).then_some(
                        Rebalance {
                            idle: config.farm_settings.rebalance_idle,
                            window: config.farm_settings.rebalance_window,
                        },
                    ),
                    // HSTS only over TLS: a browser ignores it on plain HTTP anyway.
                    hsts: certificates
                        .as_ref()
                        .and(config.farm_settings.hsts_max_age)
                        .map(|age| {
                            HeaderValue::from_str(&format!("max-age={}", age.as_secs()))
                                .expect("digits are a valid header value")
                        }),
                },
            )
            .with_access_log(access_log),
        );
        // Tunnels are not connections the listener's graceful stop waits for: they get the
        // same grace, from the same moment, then are closed.
        tasks.spawn({
            let (tunnels, stop, grace) =
                (proxy.tunnels().clone(), stop.clone(), config.shutdown_grace);
            async move {
                stop.cancelled().await;
                tunnels.close(grace).await;
            }
        });

        let listener = bind(config.listen).await?;
        let admin_listener = bind(config.admin_listen).await?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: config.admin_listen,
                source,
            })?;

        let limits = listener::Limits {
            max_connections: config.max_connections,
            max_header_size: config.max_header_size.as_u64() as usize,
            max_headers: config.max_headers,
            header_read_timeout: config.header_read_timeout,
            max_concurrent_streams: config.http2_max_streams,
            extended_connect: false,
            // Idle client connections close at the stop: a browser resends a request that
            // failed on a reused connection before any answer came.
            drain_linger: Duration::ZERO,
        };
        // The client port alone takes WebSockets over HTTP/2 (RFC 8441), translated to each
        // unit's HTTP/1.1 upgrade; the other ports open no tunnels.
        let client_limits = listener::Limits {
            extended_connect: true,
            ..limits
        };
        let service = move |remote| {
            let proxy = proxy.clone();
            service_fn(move |req| {
                let proxy = proxy.clone();
                async move { Ok::<_, std::convert::Infallible>(proxy.handle(req, remote).await) }
            })
        };
        match certificates {
            Some(certificates) => {
                tasks.spawn(certificates.clone().watch(
                    config.tls_reload_interval,
                    metrics.clone(),
                    stop.clone(),
                ));
                let handshake =
                    tls::TlsHandshake::new(tls::server_config(certificates), metrics.clone());
                tasks.spawn(listener::serve_with(
                    listener,
                    client_limits,
                    Arc::new(handshake),
                    service,
                    stop.clone(),
                    config.shutdown_grace,
                ));
            }
            None => {
                tasks.spawn(listener::serve(
                    listener,
                    client_limits,
                    service,
                    stop.clone(),
                    config.shutdown_grace,
                ));
            }
        }

        let redirect_addr = match config.redirect_listen {
            Some(at) => {
                let redirect_listener = bind(at).await?;
                let bound = redirect_listener
                    .local_addr()
                    .map_err(|source| StartError::Bind { addr: at, source })?;
                let redirect = Arc::new(redirect::Redirect {
                    public_hosts: config.public_hosts.clone(),
                    port: config.redirect_port,
                });
                tasks.spawn(listener::serve(
                    redirect_listener,
                    limits,
                    move |_| {
                        let redirect = redirect.clone();
                        service_fn(move |req| {
                            let answer = redirect.answer(&req);
                            async move { Ok::<_, std::convert::Infallible>(answer) }
                        })
                    },
                    stop.clone(),
                    Duration::from_secs(1),
                ));
                Some(bound)
            }
            None => None,
        };

        let control_addr = match admin_token {
            Some(token) => {
                let control_listener = bind(config.control_listen).await?;
                let control_addr =
                    control_listener
                        .local_addr()
                        .map_err(|source| StartError::Bind {
                            addr: config.control_listen,
                            source,
                        })?;
                let control = admin::control_router(farm.clone(), metrics.clone(), Arc::new(token));
                tasks.spawn(listener::serve(
                    control_listener,
                    limits,
                    move |_| TowerToHyperService::new(control.clone()),
                    stop.clone(),
                    Duration::from_secs(1),
                ));
                Some(control_addr)
            }
            None => {
                tracing::info!("unit actions are off: no --admin-token-file");
                None
            }
        };

        let admin = admin::router(farm.clone(), metrics.clone(), config.slow_start, listed);
        // The admin port gets the same limits (it is reachable by scrapers).
        tasks.spawn(listener::serve(
            admin_listener,
            limits,
            move |_| TowerToHyperService::new(admin.clone()),
            stop.clone(),
            Duration::from_secs(1),
        ));
        tracing::info!(%addr, tls = config.tls_cert.is_some(), ?redirect_addr, %admin_addr, ?control_addr, policy = ?config.farm_settings.policy, "stickyfarm gateway serving");
        Ok(Gateway {
            addr,
            admin_addr,
            control_addr,
            redirect_addr,
            farm,
            stop,
            tasks,
        })
    }

    /// Stops accepting, finishes in-flight requests (bounded by the shutdown grace), stops.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        tracing::info!("stickyfarm gateway stopped");
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}
