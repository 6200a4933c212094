//! The reconciler: I/O at the edges of the pure builders.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use stickyfarm_api::farm::{ServerFarm, ServerFarmStatus, labels};
use thiserror::Error;
use tracing::Instrument;

use crate::build::{self, BuildInput, Images};
use crate::credentials;
use crate::metrics::Metrics;
use crate::scale::{self, DRAIN_SINCE_ANNOTATION, ObservedUnits};
use crate::status::{self, Observed, Problem};

/// The one field manager the operator applies with (status included).
pub const FIELD_MANAGER: &str = "stickyfarm-operator";

/// A reconcile step failed.
#[derive(Debug, Error)]
pub enum Error {
    /// An API call failed.
    #[error(
        "cannot {action}: {source} (check the operator's RBAC and that the API server is reachable)"
    )]
    Kube {
        /// What the operator tried.
        action: String,
        /// The API's answer.
        #[source]
        source: kube::Error,
    },
    /// The farm lacks what the builders need.
    #[error(transparent)]
    Build(#[from] build::BuildError),
    /// A patch the operator builds did not form (a bug: report it).
    #[error("cannot {0}: the patch does not form: {1}")]
    Patch(String, serde_json::Error),
    /// The generated password could not be drawn.
    #[error("cannot generate a secret (password or token): {0}")]
    Random(String),
}

pub(crate) fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Kube { action, source }
}

/// Settings of the reconciler.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Images besides the app.
    pub images: Images,
    /// How long a removed unit drains before its pod goes.
    pub drain_period: Duration,
    /// How often a farm is reconciled when nothing changes (corrects drift in objects the
    /// operator does not watch).
    pub resync: Duration,
    /// Namespaces whose pods may scrape the farms' metrics ports.
    pub scrape_namespaces: Vec<String>,
}

/// Shared state of all reconciles.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Settings.
    pub settings: Settings,
    /// Publishes Events on farms.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per farm, for the retry backoff.
    failures: Mutex<HashMap<ObjectRef<DeserializeGuard<ServerFarm>>, u32>>,
}

impl Context {
    /// A context.
    pub fn new(
        client: Client,
        settings: Settings,
        recorder: Recorder,
        metrics: Arc<Metrics>,
    ) -> Self {
        Context {
            client,
            settings,
            recorder,
            metrics,
            failures: Mutex::default(),
        }
    }
}

/// Reconciles one farm. Objects that do not parse get a warning Event and wait for a change.
pub async fn reconcile(
    guard: Arc<DeserializeGuard<ServerFarm>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let key = ObjectRef::from_obj(guard.as_ref());
    let result = match &guard.0 {
        Ok(farm) => {
            let span = tracing::info_span!("reconcile", farm = %farm.name_any(), namespace = ?farm.namespace());
            let result = reconcile_farm(farm, &ctx).instrument(span).await;
            if let Err(e) = &result {
                report_failure(farm, &ctx, e).await;
            }
            result
        }
        Err(invalid) => {
            let reference = ObjectReference {
                api_version: Some(stickyfarm_api::farm::API_VERSION.into()),
                kind: Some(stickyfarm_api::farm::KIND.into()),
                name: invalid.metadata.name.clone(),
                namespace: invalid.metadata.namespace.clone(),
                uid: invalid.metadata.uid.clone(),
                ..ObjectReference::default()
            };
            tracing::warn!(farm = ?invalid.metadata.name, error = %invalid.error, "ServerFarm does not parse; waiting for a change");
            publish(
                &ctx,
                &reference,
                EventType::Warning,
                "InvalidSpec",
                "Validate",
                invalid.error.clone(),
            )
            .await;
            Ok(Action::await_change())
        }
    };
    ctx.metrics.observe(started.elapsed(), result.is_ok());
    if result.is_ok() {
        ctx.failures.lock().expect("failures poisoned").remove(&key);
    }
    result
}

/// Retries a failed farm with exponential backoff (1 s doubling to 5 min).
pub fn error_policy(
    guard: Arc<DeserializeGuard<ServerFarm>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let key = ObjectRef::from_obj(guard.as_ref());
    let mut failures = ctx.failures.lock().expect("failures poisoned");
    let n = failures.entry(key.clone()).or_insert(0);
    *n = n.saturating_add(1);
    let delay = backoff(*n);
    tracing::warn!(farm = %key, %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The delay before retry number `n` (1-based).
pub fn backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.saturating_sub(1).min(9)).min(Duration::from_secs(300))
}

async fn reconcile_farm(farm: &ServerFarm, ctx: &Context) -> Result<Action, Error> {
    let client = &ctx.client;
    let name = farm.name_any();
    let ns = farm.namespace().unwrap_or_default();
    let reference = farm.object_ref(&());
    let farms: Api<ServerFarm> = Api::namespaced(client.clone(), &ns);

    // Being deleted: the garbage collector removes what the farm owns; the operator removes
    // what it keeps out of the collector's reach. Applying now would re-create objects a
    // foreground deletion is removing.
    if farm.metadata.deletion_timestamp.is_some() {
        credentials::delete_database_state(farm, ctx).await?;
        return Ok(Action::await_change());
    }

    // Validate: the API server's CEL rules say the same, but a farm stored before a rule existed
    // must not be half-applied.
    if let Err(errors) = farm.spec.validate() {
        let message = errors
            .iter()
            .map(|e| format!("spec.{e}"))
            .collect::<Vec<_>>()
            .join("; ");
        publish(
            ctx,
            &reference,
            EventType::Warning,
            "InvalidSpec",
            "Validate",
            message.clone(),
        )
        .await;
        write_status(
            &farms,
            farm,
            &Observed {
                problem: Some(Problem::new("InvalidSpec", message)),
                ..Observed::default()
            },
        )
        .await?;
        return Ok(Action::await_change());
    }

    // Observe what the scale plan depends on.
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let current = statefulsets
        .get_opt(&build::unit_statefulset_name(farm))
        .await
        .map_err(kube_err(format!("read StatefulSet {ns}/{name}")))?;
    let seen = ObservedUnits {
        replicas: current
            .as_ref()
            .and_then(|s| s.spec.replicas)
            .map(|r| r.max(0) as u32),
        drain_since: current
            .as_ref()
            .and_then(|s| s.annotations().get(DRAIN_SINCE_ANNOTATION))
            .and_then(|t| t.parse::<Timestamp>().ok()),
    };
    let now = Timestamp::now();
    let plan = scale::plan(farm.spec.replicas.0, seen, now, ctx.settings.drain_period);

    // The finalizer before the unowned database state exists, then the credentials: pods
    // reference them.
    if farm.spec.database.external.is_none() {
        credentials::set_database_finalizer(&farms, farm, true).await?;
    }
    let database_problem = credentials::ensure_database_secret(farm, ctx, &reference).await?;
    let tokens_problem = credentials::ensure_gateway_tokens(farm, ctx, &reference).await?;
    let secret_problem = database_problem.or(tokens_problem);

    // Build and apply.
    let desired = build::build(
        farm,
        &BuildInput {
            images: ctx.settings.images.clone(),
            scrape_namespaces: ctx.settings.scrape_namespaces.clone(),
            unit_replicas: plan.unit_replicas,
            drain_since: plan.drain_since.map(|t| t.to_string()),
        },
    )?;
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    apply(client, &ns, &desired.gateway_service_account, &pp).await?;
    apply(client, &ns, &desired.gateway_role, &pp).await?;
    apply(client, &ns, &desired.gateway_role_binding, &pp).await?;
    for policy in &desired.network_policies {
        apply(client, &ns, policy, &pp).await?;
    }
    if let Some(db) = &desired.database {
        apply(client, &ns, &db.service, &pp).await?;
        apply(client, &ns, &db.statefulset, &pp).await?;
    }
    apply(client, &ns, &desired.headless_service, &pp).await?;
    for svc in &desired.unit_services {
        apply(client, &ns, svc, &pp).await?;
    }
    apply(client, &ns, &desired.unit_pdb, &pp).await?;
    apply(client, &ns, &desired.unit_statefulset, &pp).await?;
    let gateway = apply(client, &ns, &desired.gateway_deployment, &pp).await?;
    let gateway_service = apply(client, &ns, &desired.gateway_service, &pp).await?;

    // Events on scale transitions.
    let before = seen.replicas.unwrap_or(0);
    if plan.drain_since.is_some() && seen.drain_since.is_none() {
        let msg = format!(
            "scaling {before} → {} units: units {}..{} drain for {:?} before removal",
            farm.spec.replicas.0,
            farm.spec.replicas.0,
            plan.unit_replicas,
            ctx.settings.drain_period
        );
        publish(
            ctx,
            &reference,
            EventType::Normal,
            "DrainingUnits",
            "Scale",
            msg,
        )
        .await;
    } else if seen.replicas.is_some() && plan.unit_replicas > before {
        let msg = format!("scaling up {before} → {} units", plan.unit_replicas);
        publish(ctx, &reference, EventType::Normal, "ScaledUp", "Scale", msg).await;
    }

    // Remove what scaling down left behind: unit Services without a unit.
    let removed = prune_unit_services(client, &ns, &name, &desired.unit_services).await?;
    if !removed.is_empty() {
        let msg = format!("removed drained units {}", removed.join(", "));
        publish(
            ctx,
            &reference,
            EventType::Normal,
            "UnitsRemoved",
            "Scale",
            msg,
        )
        .await;
    }

    // Status from the pods.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let unit_pods = pods
        .list(&ListParams::default().labels(&build::unit_selector(farm)))
        .await
        .map_err(kube_err(format!("list the unit pods of {ns}/{name}")))?;
    write_status(
        &farms,
        farm,
        &Observed {
            pods: &unit_pods.items,
            unit_replicas: plan.unit_replicas,
            gateway: Some(&gateway),
            gateway_service: Some(&gateway_service),
            problem: secret_problem.clone(),
        },
    )
    .await?;

    // The operator does not watch Secrets (it may not list them): a farm waiting for one to be
    // restored or created looks again soon rather than at the next resync.
    let wake = secret_problem.map(|_| credentials::SECRET_RECHECK);
    Ok(Action::requeue(
        [plan.requeue_after, wake]
            .into_iter()
            .flatten()
            .fold(ctx.settings.resync, Duration::min),
    ))
}

/// Deletes unit Services of this farm that are no longer desired. Returns their names.
async fn prune_unit_services(
    client: &Client,
    ns: &str,
    farm: &str,
    desired: &[Service],
) -> Result<Vec<String>, Error> {
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let selector = format!("{}={farm},{}", labels::FARM, labels::UNIT);
    let existing = services
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(kube_err(format!("list the unit Services of {ns}/{farm}")))?;
    let mut removed = Vec::new();
    for svc in existing.items {
        let name = svc.name_any();
        if desired
            .iter()
            .any(|d| d.metadata.name.as_deref() == Some(name.as_str()))
        {
            continue;
        }
        match services.delete(&name, &DeleteParams::default()).await {
            Ok(_) => removed.push(name),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(kube_err(format!("delete Service {ns}/{name}"))(e)),
        }
    }
    Ok(removed)
}

/// Server-side apply of one object; returns what the API server has afterwards.
async fn apply<K>(client: &Client, ns: &str, obj: &K, pp: &PatchParams) -> Result<K, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(&name, pp, &Patch::Apply(obj))
        .await
        .map_err(kube_err(format!("apply {} {ns}/{name}", K::kind(&()))))
}

/// Marks the farm Degraded with the error and publishes a warning (best effort: the API may be
/// what failed).
async fn report_failure(farm: &ServerFarm, ctx: &Context, error: &Error) {
    let message = error.to_string();
    publish(
        ctx,
        &farm.object_ref(&()),
        EventType::Warning,
        "ReconcileFailed",
        "Reconcile",
        message.clone(),
    )
    .await;
    let status = status::degraded(farm, farm.status.as_ref(), &message, Timestamp::now());
    if farm.status.as_ref() == Some(&status) {
        return;
    }
    let farms: Api<ServerFarm> =
        Api::namespaced(ctx.client.clone(), &farm.namespace().unwrap_or_default());
    if let Err(e) = patch_status(&farms, farm, &status).await {
        tracing::warn!(error = %e, "cannot mark the farm Degraded");
    }
}

async fn write_status(
    farms: &Api<ServerFarm>,
    farm: &ServerFarm,
    seen: &Observed<'_>,
) -> Result<(), Error> {
    let status: ServerFarmStatus =
        status::compute(farm, seen, farm.status.as_ref(), Timestamp::now());
    if farm.status.as_ref() == Some(&status) {
        return Ok(());
    }
    patch_status(farms, farm, &status).await
}

async fn patch_status(
    farms: &Api<ServerFarm>,
    farm: &ServerFarm,
    status: &ServerFarmStatus,
) -> Result<(), Error> {
    let body = serde_json::json!({
        "apiVersion": stickyfarm_api::farm::API_VERSION,
        "kind": stickyfarm_api::farm::KIND,
        "status": status,
    });
    let name = farm.name_any();
    farms
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(kube_err(format!("update the status of ServerFarm {name}")))?;
    Ok(())
}

/// Publishes an Event; a failure to publish is logged, never fails the reconcile.
pub(crate) async fn publish(
    ctx: &Context,
    reference: &ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, reference).await {
        tracing::warn!(error = %e, reason, "cannot publish an Event (check the operator's RBAC for events.k8s.io)");
    }
}
