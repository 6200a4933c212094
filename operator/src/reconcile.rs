//! The reconciler: I/O at the edges of the pure builders.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use stickyfarm_api::farm::{
    DatabaseDeletePolicy, ServerFarm, ServerFarmStatus, ServiceType, labels,
};
use thiserror::Error;
use tracing::Instrument;

use crate::build::{self, BuildInput, Images, ObjectKey, OwnedKind, Scrapers};
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
    /// Who may scrape the farms' metrics ports.
    pub scrapers: Scrapers,
    /// The operator's own trace collector, passed to farms that name none.
    pub trace_collector: Option<String>,
    /// Gateway Service types farms may ask for (ClusterIP only, unless the chart allows more:
    /// a NodePort or LoadBalancer exposes the farm outside the cluster).
    pub allowed_service_types: Vec<ServiceType>,
    /// Namespaces farms may run in (empty: any).
    pub farm_namespaces: Vec<String>,
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

/// One farm, as a pipeline: validate → prepare (what the build depends on) → build (pure) →
/// apply → prune → status. A farm being deleted is finalized instead.
async fn reconcile_farm(farm: &ServerFarm, ctx: &Context) -> Result<Action, Error> {
    // Being deleted: the garbage collector removes what the farm owns; the operator removes
    // what it keeps out of the collector's reach. Applying now would re-create objects a
    // foreground deletion is removing.
    if farm.metadata.deletion_timestamp.is_some() {
        credentials::delete_database_state(farm, ctx).await?;
        return Ok(Action::await_change());
    }
    if let Some(refusal) = refusal(farm, &ctx.settings) {
        refuse(farm, ctx, refusal).await?;
        return Ok(Action::await_change());
    }
    let prepared = prepare(farm, ctx).await?;
    let desired = build::build(farm, &prepared.input)?;
    let applied = apply_all(&ctx.client, farm, &desired).await?;
    let conflict_problem = name_conflicts(ctx, farm, &applied.conflicts).await;
    announce_scaling(farm, ctx, &prepared).await;
    let pruned = prune(farm, ctx, &desired).await?;
    announce_pruned(farm, ctx, &pruned).await;
    let problem = prepared.secret_problem.clone().or(conflict_problem);
    write_farm_status(farm, ctx, &prepared, &applied, problem.clone()).await?;

    // The operator does not watch Secrets (it may not list them) nor objects it does not own:
    // a farm waiting for one to be restored, created or moved out of the way looks again soon
    // rather than at the next resync.
    let wake = problem.map(|_| credentials::SECRET_RECHECK);
    Ok(Action::requeue(
        [prepared.plan.requeue_after, wake]
            .into_iter()
            .flatten()
            .fold(ctx.settings.resync, Duration::min),
    ))
}

/// Validate failed: a Warning Event and the reason in the status; nothing is applied.
async fn refuse(farm: &ServerFarm, ctx: &Context, refusal: Problem) -> Result<(), Error> {
    let reference = farm.object_ref(&());
    publish(
        ctx,
        &reference,
        EventType::Warning,
        refusal.reason,
        "Validate",
        refusal.message.clone(),
    )
    .await;
    write_status(
        &farms_api(farm, ctx),
        farm,
        &Observed {
            problem: Some(refusal),
            ..Observed::default()
        },
    )
    .await
}

fn farms_api(farm: &ServerFarm, ctx: &Context) -> Api<ServerFarm> {
    Api::namespaced(ctx.client.clone(), &farm.namespace().unwrap_or_default())
}

/// What the build depends on besides the spec.
struct Prepared {
    /// The units as they are (the scale plan's input).
    seen: ObservedUnits,
    /// Units to run now, and when to look again.
    plan: scale::ScalePlan,
    /// The build's input.
    input: BuildInput,
    /// A Secret that is missing and must not be regenerated, if so.
    secret_problem: Option<Problem>,
}

/// Prepare: observe the units (for the drain plan), then the finalizer before the unowned
/// state exists (the managed database's credentials and claim, the session-id key), then the
/// Secrets, which the pods reference.
async fn prepare(farm: &ServerFarm, ctx: &Context) -> Result<Prepared, Error> {
    let ns = farm.namespace().unwrap_or_default();
    let name = farm.name_any();
    let reference = farm.object_ref(&());
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
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
    let plan = scale::plan(
        farm.spec.replicas.0,
        seen,
        Timestamp::now(),
        ctx.settings.drain_period,
    );

    credentials::set_database_finalizer(&farms_api(farm, ctx), farm, true).await?;
    let (database_problem, database_roles) =
        credentials::ensure_database_secret(farm, ctx, &reference).await?;
    let tokens_problem = credentials::ensure_gateway_tokens(farm, ctx, &reference).await?;
    let key_problem = credentials::ensure_session_id_key(farm, ctx, &reference).await?;
    Ok(Prepared {
        seen,
        input: BuildInput {
            images: ctx.settings.images.clone(),
            scrapers: ctx.settings.scrapers.clone(),
            unit_replicas: plan.unit_replicas,
            drain_since: plan.drain_since.map(|t| t.to_string()),
            database_roles,
            trace_collector: ctx.settings.trace_collector.clone(),
        },
        plan,
        secret_problem: database_problem.or(tokens_problem).or(key_problem),
    })
}

/// Events on scale transitions.
async fn announce_scaling(farm: &ServerFarm, ctx: &Context, p: &Prepared) {
    let reference = farm.object_ref(&());
    let before = p.seen.replicas.unwrap_or(0);
    if p.plan.drain_since.is_some() && p.seen.drain_since.is_none() {
        let msg = format!(
            "scaling {before} → {} units: units {}..{} drain for {:?} before removal",
            farm.spec.replicas.0,
            farm.spec.replicas.0,
            p.plan.unit_replicas,
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
    } else if p.seen.replicas.is_some() && p.plan.unit_replicas > before {
        let msg = format!("scaling up {before} → {} units", p.plan.unit_replicas);
        publish(ctx, &reference, EventType::Normal, "ScaledUp", "Scale", msg).await;
    }
}

/// Status: from the unit pods and what applying returned.
async fn write_farm_status(
    farm: &ServerFarm,
    ctx: &Context,
    p: &Prepared,
    applied: &Applied,
    problem: Option<Problem>,
) -> Result<(), Error> {
    let ns = farm.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let unit_pods = pods
        .list(&ListParams::default().labels(&build::unit_selector(farm)))
        .await
        .map_err(kube_err(format!(
            "list the unit pods of {ns}/{}",
            farm.name_any()
        )))?;
    write_status(
        &farms_api(farm, ctx),
        farm,
        &Observed {
            pods: &unit_pods.items,
            unit_replicas: p.plan.unit_replicas,
            gateway: applied.gateway.as_ref(),
            gateway_service: applied.gateway_service.as_ref(),
            problem,
        },
    )
    .await
}

/// Why the farm is not applied at all, if so: a spec that contradicts itself, or a gateway
/// Service type this installation does not allow (chart value `allowedServiceTypes`).
fn refusal(farm: &ServerFarm, settings: &Settings) -> Option<Problem> {
    let ns = farm.namespace().unwrap_or_default();
    if !settings.farm_namespaces.is_empty() && !settings.farm_namespaces.contains(&ns) {
        return Some(Problem::new(
            "NamespaceNotAllowed",
            format!(
                "farms run only in the namespaces this installation serves ({}), not in {ns}: \
                 move the farm, or ask the cluster administrator to add {ns} to the chart value \
                 farmNamespaces (the operator holds Secret rights only there)",
                settings.farm_namespaces.join(", ")
            ),
        ));
    }
    if let Err(errors) = farm.spec.validate() {
        let message = errors
            .iter()
            .map(|e| format!("spec.{e}"))
            .collect::<Vec<_>>()
            .join("; ");
        return Some(Problem::new("InvalidSpec", message));
    }
    let wanted = farm.spec.gateway.service_type;
    if !settings.allowed_service_types.contains(&wanted) {
        let allowed: Vec<&str> = settings
            .allowed_service_types
            .iter()
            .map(|t| t.as_str())
            .collect();
        return Some(Problem::new(
            "ServiceTypeNotAllowed",
            format!(
                "spec.gateway.serviceType {} is not allowed by this installation (allowed: {}): \
                 use one of those, or ask the cluster administrator to add it to the chart value \
                 allowedServiceTypes",
                wanted.as_str(),
                allowed.join(", ")
            ),
        ));
    }
    None
}

/// What applying the farm's objects came to.
struct Applied {
    /// The gateway Deployment as the API server has it (unless its name was taken).
    gateway: Option<Deployment>,
    /// The gateway Service as the API server has it (unless its name was taken).
    gateway_service: Option<Service>,
    /// Objects left alone because something the farm does not own has their name
    /// (`Kind namespace/name`).
    conflicts: Vec<String>,
}

/// Applies every object of the farm, in dependency order, skipping any whose name another
/// owner holds.
async fn apply_all(
    client: &Client,
    farm: &ServerFarm,
    desired: &build::Desired,
) -> Result<Applied, Error> {
    let ns = farm.namespace().unwrap_or_default();
    let mut a = Applier {
        client,
        ns: &ns,
        farm_uid: farm.metadata.uid.as_deref().unwrap_or_default(),
        pp: PatchParams::apply(FIELD_MANAGER).force(),
        conflicts: Vec::new(),
    };
    a.apply(&desired.gateway_service_account).await?;
    a.apply(&desired.gateway_role).await?;
    a.apply(&desired.gateway_role_binding).await?;
    for policy in &desired.network_policies {
        a.apply(policy).await?;
    }
    if let Some(db) = &desired.database {
        a.apply(&db.service).await?;
        a.apply(&db.statefulset).await?;
    }
    a.apply(&desired.headless_service).await?;
    for svc in &desired.unit_services {
        a.apply(svc).await?;
    }
    a.apply(&desired.unit_pdb).await?;
    a.apply(&desired.unit_statefulset).await?;
    let gateway = a.apply(&desired.gateway_deployment).await?;
    let gateway_service = a.apply(&desired.gateway_service).await?;
    Ok(Applied {
        gateway,
        gateway_service,
        conflicts: a.conflicts,
    })
}

/// Server-side apply that never takes over an object the farm does not own.
struct Applier<'a> {
    client: &'a Client,
    ns: &'a str,
    farm_uid: &'a str,
    pp: PatchParams,
    conflicts: Vec<String>,
}

impl Applier<'_> {
    /// Applies `obj` unless an object of its name exists without the farm's owner reference
    /// (someone else's Service, StatefulSet, …): that one is left untouched and noted. Returns
    /// what the API server has afterwards.
    async fn apply<K>(&mut self, obj: &K) -> Result<Option<K>, Error>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + Debug
            + Serialize
            + DeserializeOwned,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), self.ns);
        let name = obj.meta().name.clone().unwrap_or_default();
        let what = format!("{} {}/{name}", K::kind(&()), self.ns);
        let existing = api
            .get_opt(&name)
            .await
            .map_err(kube_err(format!("read {what}")))?;
        if existing.is_some_and(|e| !owned_by(e.meta(), self.farm_uid)) {
            self.conflicts.push(what);
            return Ok(None);
        }
        api.patch(&name, &self.pp, &Patch::Apply(obj))
            .await
            .map(Some)
            .map_err(kube_err(format!("apply {what}")))
    }
}

/// Whether an object carries the farm's owner reference.
fn owned_by(meta: &ObjectMeta, farm_uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == farm_uid)
}

/// The farm could not take some names: one Warning Event when it becomes degraded for that,
/// and the problem for its status.
async fn name_conflicts(ctx: &Context, farm: &ServerFarm, conflicts: &[String]) -> Option<Problem> {
    if conflicts.is_empty() {
        return None;
    }
    let problem = Problem::new(
        "NameConflict",
        format!(
            "{} already exist(s) and do(es) not belong to this farm: the operator leaves them \
             untouched and does not run the farm's objects of those names. Rename or delete them, \
             or give the farm another name",
            conflicts.join(", ")
        ),
    );
    publish_problem_once(ctx, farm, &farm.object_ref(&()), &problem, "Apply").await;
    Some(problem)
}

/// What pruning removed.
#[derive(Debug, Default)]
struct Pruned {
    /// Unit Services of drained units.
    units: Vec<String>,
    /// The managed database, after a switch to an external one: its delete policy.
    database: Option<DatabaseDeletePolicy>,
}

/// Prune: removes what the farm owns and this build no longer produces. A build stops producing
/// two things (`build::tests` checks there are no others): the Services of units scaled away,
/// and the managed database's objects once the farm uses an external database. Only objects
/// that carry the farm's owner reference are touched.
async fn prune(
    farm: &ServerFarm,
    ctx: &Context,
    desired: &build::Desired,
) -> Result<Pruned, Error> {
    let keys = desired.keys();
    Ok(Pruned {
        units: prune_unit_services(farm, ctx, &keys).await?,
        database: prune_managed_database(farm, ctx, &keys).await?,
    })
}

/// Unit Services of this farm that are no longer desired (found by the farm's labels).
async fn prune_unit_services(
    farm: &ServerFarm,
    ctx: &Context,
    desired: &BTreeSet<ObjectKey>,
) -> Result<Vec<String>, Error> {
    let ns = farm.namespace().unwrap_or_default();
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = format!("{}={},{}", labels::FARM, farm.name_any(), labels::UNIT);
    let existing = services
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(kube_err(format!(
            "list the unit Services of {ns}/{}",
            farm.name_any()
        )))?;
    let mut removed = Vec::new();
    for svc in existing.items {
        let key = ObjectKey {
            kind: OwnedKind::Service,
            name: svc.name_any(),
        };
        if !desired.contains(&key) && delete_owned(farm, ctx, &key).await? {
            removed.push(key.name);
        }
    }
    Ok(removed)
}

/// The managed database's objects after a switch to an external database. Its StatefulSet's
/// delete-policy annotation says whether the claim and the credentials go too (a StatefulSet
/// made before the policy existed has none and counts as `Retain`: nothing is lost by keeping
/// them); they are removed before the StatefulSet, so a failure is retried with the annotation
/// still there.
async fn prune_managed_database(
    farm: &ServerFarm,
    ctx: &Context,
    desired: &BTreeSet<ObjectKey>,
) -> Result<Option<DatabaseDeletePolicy>, Error> {
    let keys = build::managed_database_keys(farm);
    if keys.iter().any(|k| desired.contains(k)) {
        return Ok(None);
    }
    let ns = farm.namespace().unwrap_or_default();
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let name = build::database_statefulset_name(farm);
    let uid = farm.metadata.uid.as_deref().unwrap_or_default();
    let policy = statefulsets
        .get_opt(&name)
        .await
        .map_err(kube_err(format!("read StatefulSet {ns}/{name}")))?
        .filter(|sts| owned_by(&sts.metadata, uid))
        .map(|sts| {
            match sts
                .annotations()
                .get(build::DELETE_POLICY_ANNOTATION)
                .map(String::as_str)
            {
                Some("Delete") => DatabaseDeletePolicy::Delete,
                _ => DatabaseDeletePolicy::Retain,
            }
        });
    if policy == Some(DatabaseDeletePolicy::Delete) {
        credentials::delete_managed_database_state(farm, ctx).await?;
    }
    for key in &keys {
        delete_owned(farm, ctx, key).await?;
    }
    Ok(policy)
}

/// Deletes one object of an owned kind if it carries the farm's owner reference (and is still
/// the object that was read: a UID precondition). Whether it was deleted.
async fn delete_owned(farm: &ServerFarm, ctx: &Context, key: &ObjectKey) -> Result<bool, Error> {
    match key.kind {
        OwnedKind::ServiceAccount => delete_owned_as::<ServiceAccount>(farm, ctx, &key.name).await,
        OwnedKind::Role => delete_owned_as::<Role>(farm, ctx, &key.name).await,
        OwnedKind::RoleBinding => delete_owned_as::<RoleBinding>(farm, ctx, &key.name).await,
        OwnedKind::NetworkPolicy => delete_owned_as::<NetworkPolicy>(farm, ctx, &key.name).await,
        OwnedKind::Service => delete_owned_as::<Service>(farm, ctx, &key.name).await,
        OwnedKind::StatefulSet => delete_owned_as::<StatefulSet>(farm, ctx, &key.name).await,
        OwnedKind::PodDisruptionBudget => {
            delete_owned_as::<PodDisruptionBudget>(farm, ctx, &key.name).await
        }
        OwnedKind::Deployment => delete_owned_as::<Deployment>(farm, ctx, &key.name).await,
    }
}

async fn delete_owned_as<K>(farm: &ServerFarm, ctx: &Context, name: &str) -> Result<bool, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let uid = farm.metadata.uid.as_deref().unwrap_or_default();
    delete_if::<K>(farm, ctx, name, |o| owned_by(o.meta(), uid)).await
}

/// Deletes the object `name` of kind `K` in the farm's namespace if `ours` says it is the
/// farm's, and only the very object that was read (a UID precondition: one made again since
/// under the same name is left alone). Whether it was deleted.
pub(crate) async fn delete_if<K>(
    farm: &ServerFarm,
    ctx: &Context,
    name: &str,
    ours: impl FnOnce(&K) -> bool,
) -> Result<bool, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let ns = farm.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let what = format!("{} {ns}/{name}", K::kind(&()));
    let Some(object) = api
        .get_opt(name)
        .await
        .map_err(kube_err(format!("read {what}")))?
    else {
        return Ok(false);
    };
    if !ours(&object) {
        return Ok(false);
    }
    let params = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: object.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => {
            tracing::info!(object = %what, "deleted");
            Ok(true)
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(kube_err(format!("delete {what}"))(e)),
    }
}

/// Events for what pruning removed.
async fn announce_pruned(farm: &ServerFarm, ctx: &Context, pruned: &Pruned) {
    let reference = farm.object_ref(&());
    if !pruned.units.is_empty() {
        let msg = format!("removed drained units {}", pruned.units.join(", "));
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
    if let Some(policy) = pruned.database {
        let state = match policy {
            DatabaseDeletePolicy::Delete => {
                "its volume claim and credentials were deleted (deletePolicy Delete)".to_owned()
            }
            DatabaseDeletePolicy::Retain => format!(
                "its volume claim and credentials are kept (deletePolicy Retain); delete them \
                 when no longer needed: kubectl delete pvc,secret -n {} -l {}={},{}={}",
                farm.namespace().unwrap_or_default(),
                labels::FARM,
                farm.name_any(),
                labels::COMPONENT,
                build::component::DATABASE
            ),
        };
        let msg = format!(
            "the farm uses an external database now: the managed database was removed, and {state}"
        );
        publish(
            ctx,
            &reference,
            EventType::Normal,
            "DatabaseRemoved",
            "Prune",
            msg,
        )
        .await;
    }
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

/// A Warning Event for `problem` when the farm becomes degraded for its reason, not one per
/// reconcile (the farm's `Degraded` condition remembers it was sent).
pub(crate) async fn publish_problem_once(
    ctx: &Context,
    farm: &ServerFarm,
    reference: &ObjectReference,
    problem: &Problem,
    action: &str,
) {
    if !status::degraded_for(farm, problem.reason) {
        publish(
            ctx,
            reference,
            EventType::Warning,
            problem.reason,
            action,
            problem.message.clone(),
        )
        .await;
    }
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
