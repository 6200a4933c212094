//! Wiring: the kube-rs Controller, leader election, and the health/metrics endpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use stickyfarm_api::farm::{ServerFarm, labels};
use tokio_util::sync::CancellationToken;

use crate::build::{Images, component};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::reconcile::{self, Context, FIELD_MANAGER, Settings};

/// Shared by the HTTP endpoint.
#[derive(Clone)]
struct Health {
    ready: Arc<AtomicBool>,
    leading: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

/// Runs the operator until `stop` (SIGTERM), or until it loses the lease (an error: the pod
/// restarts and stands by).
pub async fn run(config: Config, client: Client, stop: CancellationToken) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let health = Health {
        ready: Arc::default(),
        leading: Arc::default(),
        metrics: metrics.clone(),
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {}: {e} (choose another --listen)",
                config.listen
            )
        })?;
    let http = tokio::spawn({
        let stop = stop.clone();
        let app = router(health.clone());
        async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        }
    });
    let identity = config.identity.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME")
            .unwrap_or_else(|_| format!("stickyfarm-operator-{}", std::process::id()))
    });

    // Standbys are ready: a rolling update must be able to start the new pod while the old one
    // still leads.
    health.ready.store(true, Ordering::Relaxed);
    let result = if config.leader_elect {
        lead_then_reconcile(&config, client, identity, metrics, &health, stop.clone()).await
    } else {
        health.leading.store(true, Ordering::Relaxed);
        health.metrics.leader.set(1);
        reconcile_until(&config, client, identity, metrics, stop.clone()).await;
        Ok(())
    };
    stop.cancel();
    let _ = http.await;
    result
}

async fn lead_then_reconcile(
    config: &Config,
    client: Client,
    identity: String,
    metrics: Arc<Metrics>,
    health: &Health,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let seconds = config.lease_duration.as_secs().max(5);
    let manager = LeaseManagerBuilder::new(client.clone(), &config.lease_name)
        .with_namespace(&config.lease_namespace)
        .with_identity(&identity)
        .with_duration(seconds)
        .with_grace((seconds / 3).max(2))
        .with_field_manager(format!("{FIELD_MANAGER}-lease"))
        .build()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot set up the leader Lease {}/{}: {e}",
                config.lease_namespace,
                config.lease_name
            )
        })?;
    let (mut leading, lease_task) = manager.watch().await;
    tracing::info!(lease = %config.lease_name, %identity, "waiting to lead");
    loop {
        if *leading.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = leading.changed() => if changed.is_err() {
                anyhow::bail!("the leader election stopped before this replica could lead");
            },
            _ = stop.cancelled() => {
                drop(leading);
                let _ = lease_task.await;
                return Ok(());
            }
        }
    }
    tracing::info!(%identity, "leading");
    health.leading.store(true, Ordering::Relaxed);
    health.metrics.leader.set(1);
    let controller_stop = stop.child_token();
    let controller = tokio::spawn(reconcile_until(
        config,
        client,
        identity,
        metrics,
        controller_stop.clone(),
    ));
    let lost = loop {
        tokio::select! {
            changed = leading.changed() => {
                if changed.is_err() || !*leading.borrow_and_update() {
                    break true;
                }
            }
            _ = stop.cancelled() => break false,
        }
    };
    controller_stop.cancel();
    let _ = controller.await;
    health.leading.store(false, Ordering::Relaxed);
    health.metrics.leader.set(0);
    // Closing the channel releases the lease, so a standby takes over at once.
    drop(leading);
    let _ = lease_task.await;
    if lost {
        anyhow::bail!("lost the leader Lease; restarting to stand by");
    }
    Ok(())
}

/// The controller, until `stop`.
pub fn reconcile_until(
    config: &Config,
    client: Client,
    identity: String,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let drain_period = crate::scale::bounded_drain_period(config.drain_period);
    if drain_period < config.drain_period {
        tracing::warn!(
            configured = ?config.drain_period,
            applied = ?drain_period,
            "--drain-period is longer than the unit pods' terminationGracePeriodSeconds; drains end after that: sessions move at their next request, a longer drain would only keep idle ones in place"
        );
    }
    let settings = Settings {
        images: Images {
            sidecar: config.sidecar_image.clone(),
            gateway: config.gateway_image.clone(),
            postgres: config.postgres_image.clone(),
            pull_secrets: config.image_pull_secrets.clone(),
        },
        drain_period,
        resync: config.resync,
        scrapers: config.scrapers(),
        trace_collector: config.logs.otlp_endpoint.clone(),
        allowed_service_types: config.allowed_service_types.clone(),
        farm_namespaces: config.farm_namespaces.clone(),
    };
    let namespace = config.watch_namespace.clone();
    async move {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(identity),
            },
        );
        let ctx = Arc::new(Context::new(client.clone(), settings, recorder, metrics));
        controller(client, namespace.as_deref(), ctx, stop).await;
    }
}

/// Builds and runs the Controller: farms, the objects they own, and their unit pods.
pub async fn controller(
    client: Client,
    namespace: Option<&str>,
    ctx: Arc<Context>,
    stop: CancellationToken,
) {
    fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let managed =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=stickyfarm-operator");
    let unit_pods =
        watcher::Config::default().labels(&format!("{}={}", labels::COMPONENT, component::UNIT));
    Controller::new(
        api::<DeserializeGuard<ServerFarm>>(&client, namespace),
        watcher::Config::default(),
    )
    .owns(api::<StatefulSet>(&client, namespace), managed.clone())
    .owns(api::<Deployment>(&client, namespace), managed.clone())
    .owns(api::<Service>(&client, namespace), managed)
    // Unit pods belong to the StatefulSet, not the farm: map them by their farm label, so
    // the status follows readiness and pod replacements.
    .watches(api::<Pod>(&client, namespace), unit_pods, |pod: Pod| {
        let farm = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::FARM))
            .cloned();
        let ns = pod.metadata.namespace.clone();
        farm.zip(ns)
            .map(|(farm, ns)| ObjectRef::new(&farm).within(&ns))
    })
    .graceful_shutdown_on(stop.cancelled_owned())
    .run(reconcile::reconcile, reconcile::error_policy, ctx)
    .for_each(|result| async move {
        if let Err(e) = result {
            tracing::debug!(error = %e, "controller event");
        }
    })
    .await;
}

fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(h): State<Health>| async move {
                if !h.ready.load(Ordering::Relaxed) {
                    return (StatusCode::SERVICE_UNAVAILABLE, "starting\n");
                }
                if h.leading.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready: leading\n")
                } else {
                    (StatusCode::OK, "ready: standing by\n")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(h): State<Health>| async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    h.metrics.encode(),
                )
            }),
        )
        .with_state(health)
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn get(h: &Health, path: &str) -> (StatusCode, String) {
        let r = router(h.clone())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = r.status();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let h = Health {
            ready: Arc::default(),
            leading: Arc::default(),
            metrics: Arc::new(Metrics::default()),
        };
        assert_eq!(get(&h, "/healthz").await, (StatusCode::OK, "ok\n".into()));
        assert_eq!(get(&h, "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        h.ready.store(true, Ordering::Relaxed);
        assert_eq!(
            get(&h, "/readyz").await,
            (StatusCode::OK, "ready: standing by\n".into())
        );
        h.leading.store(true, Ordering::Relaxed);
        assert_eq!(
            get(&h, "/readyz").await,
            (StatusCode::OK, "ready: leading\n".into())
        );

        h.metrics
            .observe(std::time::Duration::from_millis(20), true);
        h.metrics
            .observe(std::time::Duration::from_millis(20), false);
        h.metrics.leader.set(1);
        let (status, text) = get(&h, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        for line in [
            "stickyfarm_operator_reconciles_total{result=\"ok\"} 1",
            "stickyfarm_operator_reconciles_total{result=\"error\"} 1",
            "stickyfarm_operator_reconcile_duration_seconds_count 2",
            "stickyfarm_operator_leader 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
