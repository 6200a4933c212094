//! Pure builders: given a `ServerFarm` (and what the reconciler observed), the exact objects
//! the farm should consist of. No client, no I/O, so every object is unit-tested field by field.
//!
//! Names for a farm `shop`:
//!
//! | object | name |
//! |---|---|
//! | unit StatefulSet (pods `shop-0` …) | `shop` |
//! | headless Service (pod DNS) | `shop-units` |
//! | one Service per unit | `shop-0`, `shop-1`, … |
//! | PodDisruptionBudget of the units | `shop-units` |
//! | gateway Deployment, Service, ServiceAccount, Role, RoleBinding | `shop-gateway` |
//! | managed PostgreSQL StatefulSet and Service | `shop-db` |
//! | credentials Secret (generated once) | `shop-db` |
//! | admin and gateway tokens Secret (generated once) | `shop-gateway-tokens` |
//! | NetworkPolicies | `shop-units`, `shop-db`, `shop-gateway` |

mod database;
mod gateway;
mod network;
pub mod tokens;
mod units;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    EnvVar, KeyToPath, SecretVolumeSource, Service, ServiceAccount, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use stickyfarm_api::farm::{ServerFarm, UnitState, labels};

pub use database::{
    APP_USER, DATABASE_FINALIZER, DATABASE_NAME, DATABASE_USER, DELETE_POLICY_ANNOTATION,
    DatabaseRoles, ROLES_ANNOTATION, SUPERUSER, app_secret_name, database_app_secret,
    database_claim_name, database_secret, database_statefulset_name, database_superuser_secret,
    database_url_for, managed_database_secret_names, superuser_secret_name,
};
pub use gateway::{GATEWAY_ADMIN_PORT, GATEWAY_CONTROL_PORT};
pub use network::Scrapers;
pub use tokens::{
    ADMIN_TOKEN_KEY, GATEWAY_TOKEN_KEY, SESSION_ID_KEY_KEY, TOKENS_DIR, session_id_key_secret,
    session_id_key_secret_name, tokens_secret, tokens_secret_name,
};
pub use units::{API_PORT, METRICS_PORT, SIDECAR_PORT};

/// Images the operator runs besides the user's app (from its flags / the chart's values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    /// The Stickyfarm sidecar.
    pub sidecar: String,
    /// The Stickyfarm gateway.
    pub gateway: String,
    /// PostgreSQL for managed databases (a farm may override it).
    pub postgres: String,
    /// Secrets every pod of a farm pulls its images with (they must exist in its namespace).
    pub pull_secrets: Vec<String>,
}

impl Images {
    /// The pods' `imagePullSecrets`.
    pub(crate) fn pull_secrets(
        &self,
    ) -> Option<Vec<k8s_openapi::api::core::v1::LocalObjectReference>> {
        (!self.pull_secrets.is_empty()).then(|| {
            self.pull_secrets
                .iter()
                .map(|name| k8s_openapi::api::core::v1::LocalObjectReference { name: name.clone() })
                .collect()
        })
    }
}

/// Everything the builders need besides the farm itself.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildInput {
    /// Images.
    pub images: Images,
    /// Who may scrape the farm's metrics ports (the operator's own namespace by default).
    pub scrapers: Scrapers,
    /// Replicas of the unit StatefulSet right now: more than `spec.replicas` while removed units
    /// drain (see [`crate::scale::ScalePlan`]).
    pub unit_replicas: u32,
    /// When the drain under way started, kept on the StatefulSet (RFC 3339).
    pub drain_since: Option<String>,
    /// The managed database's roles (as its credentials Secret says).
    pub database_roles: DatabaseRoles,
    /// The operator's own trace collector, for farms that name none (`spec.tracing`).
    pub trace_collector: Option<String>,
}

/// The farm's objects, as they should be.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// The commerce pods: app + sidecar.
    pub unit_statefulset: StatefulSet,
    /// Headless Service the StatefulSet names its pods under.
    pub headless_service: Service,
    /// One Service per unit, selecting its pod by name (labelled serving or draining).
    pub unit_services: Vec<Service>,
    /// At most one unit down at a time by voluntary disruption.
    pub unit_pdb: PodDisruptionBudget,
    /// The gateway's identity.
    pub gateway_service_account: ServiceAccount,
    /// What the gateway may read: EndpointSlices in the farm's namespace.
    pub gateway_role: Role,
    /// Binds the role to the gateway's identity.
    pub gateway_role_binding: RoleBinding,
    /// The gateway.
    pub gateway_deployment: Deployment,
    /// Where clients reach the farm.
    pub gateway_service: Service,
    /// The managed PostgreSQL, unless the farm uses an external one.
    pub database: Option<ManagedDatabaseObjects>,
    /// Only the gateway reaches the units, only the units reach the database.
    pub network_policies: Vec<NetworkPolicy>,
}

/// The kinds of object a farm owns and the operator applies: the one list that applying,
/// pruning and the chart's RBAC (get, create, patch; delete where pruning needs it) follow.
/// Secrets are not here: the operator creates them once and never lists them
/// ([`crate::credentials`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OwnedKind {
    /// The gateway's identity.
    ServiceAccount,
    /// What the gateway may read.
    Role,
    /// The gateway's Role, bound.
    RoleBinding,
    /// Who reaches what.
    NetworkPolicy,
    /// Unit, headless, gateway and database Services.
    Service,
    /// The units and the managed database.
    StatefulSet,
    /// The units' disruption budget.
    PodDisruptionBudget,
    /// The gateway.
    Deployment,
}

/// Every owned kind.
pub const OWNED_KINDS: [OwnedKind; 8] = [
    OwnedKind::ServiceAccount,
    OwnedKind::Role,
    OwnedKind::RoleBinding,
    OwnedKind::NetworkPolicy,
    OwnedKind::Service,
    OwnedKind::StatefulSet,
    OwnedKind::PodDisruptionBudget,
    OwnedKind::Deployment,
];

/// One object of a farm: its kind and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Its kind.
    pub kind: OwnedKind,
    /// Its name in the farm's namespace.
    pub name: String,
}

impl ObjectKey {
    fn of(kind: OwnedKind, meta: &ObjectMeta) -> Self {
        ObjectKey {
            kind,
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

impl Desired {
    /// Every object, by kind and name.
    pub fn keys(&self) -> std::collections::BTreeSet<ObjectKey> {
        use OwnedKind::*;
        let mut keys = vec![
            ObjectKey::of(StatefulSet, &self.unit_statefulset.metadata),
            ObjectKey::of(Service, &self.headless_service.metadata),
            ObjectKey::of(PodDisruptionBudget, &self.unit_pdb.metadata),
            ObjectKey::of(ServiceAccount, &self.gateway_service_account.metadata),
            ObjectKey::of(Role, &self.gateway_role.metadata),
            ObjectKey::of(RoleBinding, &self.gateway_role_binding.metadata),
            ObjectKey::of(Deployment, &self.gateway_deployment.metadata),
            ObjectKey::of(Service, &self.gateway_service.metadata),
        ];
        keys.extend(
            self.unit_services
                .iter()
                .map(|s| ObjectKey::of(Service, &s.metadata)),
        );
        keys.extend(
            self.network_policies
                .iter()
                .map(|p| ObjectKey::of(NetworkPolicy, &p.metadata)),
        );
        if let Some(db) = &self.database {
            keys.push(ObjectKey::of(StatefulSet, &db.statefulset.metadata));
            keys.push(ObjectKey::of(Service, &db.service.metadata));
        }
        keys.into_iter().collect()
    }
}

/// The objects of a farm's managed database, which a build stops producing when the farm
/// switches to an external database; pruning removes them (in this order: the StatefulSet, whose
/// delete-policy annotation says what becomes of the claim and credentials, goes last).
pub fn managed_database_keys(farm: &ServerFarm) -> [ObjectKey; 3] {
    let name = database_statefulset_name(farm);
    [
        ObjectKey {
            kind: OwnedKind::NetworkPolicy,
            name: name.clone(),
        },
        ObjectKey {
            kind: OwnedKind::Service,
            name: name.clone(),
        },
        ObjectKey {
            kind: OwnedKind::StatefulSet,
            name,
        },
    ]
}

/// The objects of a managed PostgreSQL.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagedDatabaseObjects {
    /// One PostgreSQL pod with a volume.
    pub statefulset: StatefulSet,
    /// Its Service.
    pub service: Service,
}

/// The farm is missing what the builders need (only possible for objects that did not come
/// from the API server).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No namespace.
    #[error("ServerFarm {0} has no namespace: farms are namespaced, read them from the API")]
    NoNamespace(String),
    /// No UID, so no owner reference.
    #[error("ServerFarm {0} has no uid: read it from the API before building its objects")]
    NoUid(String),
}

/// Builds every object of the farm.
pub fn build(farm: &ServerFarm, input: &BuildInput) -> Result<Desired, BuildError> {
    let f = FarmRef::new(farm)?;
    let unit_replicas = input.unit_replicas.max(farm.spec.replicas.0);
    Ok(Desired {
        unit_statefulset: units::statefulset(&f, input, unit_replicas),
        headless_service: units::headless_service(&f),
        unit_services: (0..unit_replicas)
            .map(|ordinal| {
                let state = if ordinal < farm.spec.replicas.0 {
                    UnitState::Serving
                } else {
                    UnitState::Draining
                };
                units::unit_service(&f, ordinal, state)
            })
            .collect(),
        unit_pdb: units::pdb(&f),
        gateway_service_account: gateway::service_account(&f),
        gateway_role: gateway::role(&f),
        gateway_role_binding: gateway::role_binding(&f),
        gateway_deployment: gateway::deployment(&f, input),
        gateway_service: gateway::service(&f),
        database: database::managed(&f, &input.images, input.database_roles),
        network_policies: network::policies(&f, &input.scrapers),
    })
}

/// A volume of one key of a Secret (a CA certificate), as the file `file`; the pod does not
/// start without it.
pub(crate) fn secret_key_volume(
    volume: &str,
    key: &stickyfarm_api::farm::SecretKey,
    file: &str,
) -> Volume {
    Volume {
        name: volume.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(key.secret_name.clone()),
            items: Some(vec![KeyToPath {
                key: key.key.clone(),
                path: file.into(),
                ..KeyToPath::default()
            }]),
            optional: Some(false),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// Where the gateway and the sidecars find the trace collector's CA (a directory of its own: a
/// volume cannot be mounted inside another read-only Secret volume).
const OTLP_CA_DIR: &str = "/etc/stickyfarm/otlp-ca";
const OTLP_CA_FILE: &str = "ca.crt";
const OTLP_CA_VOLUME: &str = "otlp-ca";

/// The farm plus what every builder derives from it.
pub(crate) struct FarmRef<'a> {
    pub(crate) farm: &'a ServerFarm,
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) owner: OwnerReference,
}

impl<'a> FarmRef<'a> {
    /// The trace export of one of the farm's containers (`POD_NAME` must come before these in
    /// the container's environment: the pod is named from it).
    pub(crate) fn trace_env(&self, input: &BuildInput) -> Vec<EnvVar> {
        let resource = [
            ("service.namespace", self.name.as_str()),
            ("k8s.namespace.name", self.namespace.as_str()),
            ("k8s.pod.name", "$(POD_NAME)"),
        ];
        let mut env: Vec<EnvVar> = stickyfarm_api::config::trace_env(
            &self.farm.spec,
            input.trace_collector.as_deref(),
            &resource,
        )
        .into_iter()
        .map(|(name, v)| units::value(name, v))
        .collect();
        if !env.is_empty() && self.farm.spec.tracing.ca.is_some() {
            env.push(units::value(
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                format!("{OTLP_CA_DIR}/{OTLP_CA_FILE}"),
            ));
        }
        env
    }

    /// The collector's CA (`spec.tracing.ca`) as a volume and its mount, when the farm names one.
    pub(crate) fn trace_ca(&self) -> Option<(Volume, VolumeMount)> {
        let ca = self.farm.spec.tracing.ca.as_ref()?;
        let volume = secret_key_volume(OTLP_CA_VOLUME, ca, OTLP_CA_FILE);
        let mount = VolumeMount {
            name: OTLP_CA_VOLUME.into(),
            mount_path: OTLP_CA_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        };
        Some((volume, mount))
    }

    pub(crate) fn new(farm: &'a ServerFarm) -> Result<Self, BuildError> {
        let name = farm.name_any();
        let namespace = farm
            .namespace()
            .ok_or_else(|| BuildError::NoNamespace(name.clone()))?;
        let owner = farm
            .controller_owner_ref(&())
            .filter(|o| !o.uid.is_empty())
            .ok_or_else(|| BuildError::NoUid(name.clone()))?;
        Ok(FarmRef {
            farm,
            name,
            namespace,
            owner,
        })
    }

    /// Labels on every object of one component.
    pub(crate) fn labels(&self, component: &str) -> BTreeMap<String, String> {
        let mut l = self.selector(component);
        l.insert("app.kubernetes.io/name".into(), "stickyfarm".into());
        l.insert("app.kubernetes.io/instance".into(), self.name.clone());
        l.insert("app.kubernetes.io/component".into(), component.into());
        l.insert(
            "app.kubernetes.io/managed-by".into(),
            "stickyfarm-operator".into(),
        );
        l
    }

    /// The labels that select a component's pods (stable: never change them, selectors are
    /// immutable).
    pub(crate) fn selector(&self, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (labels::FARM.to_owned(), self.name.clone()),
            (labels::COMPONENT.to_owned(), component.to_owned()),
        ])
    }

    /// Metadata of an owned object.
    pub(crate) fn meta(&self, name: impl Into<String>, component: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels(component)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    pub(crate) fn gateway_name(&self) -> String {
        format!("{}-gateway", self.name)
    }
    pub(crate) fn headless_name(&self) -> String {
        format!("{}-units", self.name)
    }
    pub(crate) fn database_name(&self) -> String {
        database_statefulset_name(self.farm)
    }
}

/// Component label values.
pub mod component {
    /// Commerce pods.
    pub const UNIT: &str = "unit";
    /// The gateway.
    pub const GATEWAY: &str = "gateway";
    /// The managed database.
    pub const DATABASE: &str = "database";
}

/// Name of the unit StatefulSet (its pods are the units `<farm>-<ordinal>`).
pub fn unit_statefulset_name(farm: &ServerFarm) -> String {
    farm.name_any()
}

/// Name of the generated (or, for external databases, referenced) credentials Secret and the key
/// of the connection URL in it.
pub fn database_secret_ref(farm: &ServerFarm) -> (String, String) {
    farm.spec.database_secret(&farm.name_any())
}

/// Label selector (as text) of a farm's unit pods.
pub fn unit_selector(farm: &ServerFarm) -> String {
    format!(
        "{}={},{}={}",
        labels::FARM,
        farm.name_any(),
        labels::COMPONENT,
        component::UNIT
    )
}

#[cfg(test)]
pub(crate) mod tests;
