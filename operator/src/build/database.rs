//! The managed PostgreSQL: a one-pod StatefulSet with a volume, its Service, and the generated
//! credentials Secrets (made once, never overwritten).
//!
//! Three roles, each in its own Secret (see [`DatabaseRoles::Separate`]):
//! - the bootstrap superuser `postgres` (`<farm>-db-superuser`): only the database pod gets it;
//! - the sidecars' role `stickyfarm` (`<farm>-db`): no superuser; owns the schema `stickyfarm`,
//!   first on its search path, where the session tables live;
//! - the app's role `stickyfarm_app` (`<farm>-db-app`): its own tables in `public`, and no access
//!   to the schema `stickyfarm`, so it can neither read nor change the session tables.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, ExecAction, KeyToPath, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
    Secret, SecretKeySelector, SecretVolumeSource, Service, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::ResourceExt;
use stickyfarm_api::farm::ServerFarm;

use super::units::{port, restricted_container_security, service_port, value};
use super::{BuildError, FarmRef, Images, component};

/// The database the sidecars use.
pub const DATABASE_NAME: &str = "stickyfarm";
/// The role the sidecars log in as.
pub const DATABASE_USER: &str = "stickyfarm";
/// The role the app logs in as.
pub const APP_USER: &str = "stickyfarm_app";
/// The bootstrap superuser.
pub const SUPERUSER: &str = "postgres";
/// On the sidecars' credentials Secret: the database was made with separate roles.
pub const ROLES_ANNOTATION: &str = "stickyfarm.dev/database-roles";
/// Key (in `<farm>-db-superuser`) of the script that creates the roles at initialisation.
const INIT_SCRIPT_KEY: &str = "init-roles.sh";
/// Where the official postgres image runs initialisation scripts from.
const INIT_DIR: &str = "/docker-entrypoint-initdb.d";

/// Which roles a managed database has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DatabaseRoles {
    /// Superuser, sidecar and app roles (every database made by this version).
    #[default]
    Separate,
    /// One login for the sidecars and the app, the superuser: databases made by earlier
    /// versions (a role cannot be demoted from bootstrap superuser). Kept as it is.
    Single,
}

/// Creates the sidecar and app roles when the postgres image initialises the database (it runs
/// only then, as the superuser, over the local socket). Passwords come from the environment
/// (`\getenv`, psql 15+), never from this text.
const INIT_SCRIPT: &str = r#"# Stickyfarm's database roles; sourced once by the postgres image's entrypoint at initialisation.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
\getenv sidecar_password STICKYFARM_SIDECAR_PASSWORD
\getenv app_password STICKYFARM_APP_PASSWORD
CREATE ROLE stickyfarm LOGIN PASSWORD :'sidecar_password';
CREATE ROLE stickyfarm_app LOGIN PASSWORD :'app_password';
-- The session tables go to the sidecars' own schema (first on their search path, "$user").
CREATE SCHEMA stickyfarm AUTHORIZATION stickyfarm;
REVOKE ALL ON DATABASE stickyfarm FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE stickyfarm TO stickyfarm, stickyfarm_app;
-- The app keeps its own tables in public; it has no right on the schema stickyfarm.
GRANT USAGE, CREATE ON SCHEMA public TO stickyfarm_app;
SQL
"#;
/// PostgreSQL's port.
pub const POSTGRES_PORT: i32 = 5432;
/// The volume claim template of the database's data (claims are `data-<farm>-db-0`).
const DATA_VOLUME: &str = "data";
/// UID of the `postgres` user in the official image.
const POSTGRES_UID: i64 = 999;

pub(crate) fn managed(
    f: &FarmRef,
    images: &Images,
    roles: DatabaseRoles,
) -> Option<super::ManagedDatabaseObjects> {
    if f.farm.spec.database.external.is_some() {
        return None;
    }
    let m = f.farm.spec.database.managed.clone().unwrap_or_default();
    let name = f.database_name();
    let mut pod_labels = f.labels(component::DATABASE);
    pod_labels.extend(f.selector(component::DATABASE));
    let secret_env = |env: &str, secret: &str, key: &str| EnvVar {
        name: env.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    };
    let superuser_secret = superuser_secret_name(f.farm);
    // The environment only matters when the image initialises an empty data folder.
    let (mut env, init_script) = match roles {
        DatabaseRoles::Separate => (
            vec![
                value("POSTGRES_USER", SUPERUSER.into()),
                secret_env("POSTGRES_PASSWORD", &superuser_secret, "password"),
                secret_env("STICKYFARM_SIDECAR_PASSWORD", &name, "password"),
                secret_env(
                    "STICKYFARM_APP_PASSWORD",
                    &app_secret_name(f.farm),
                    "password",
                ),
            ],
            true,
        ),
        DatabaseRoles::Single => (
            vec![
                secret_env("POSTGRES_USER", &name, "username"),
                secret_env("POSTGRES_PASSWORD", &name, "password"),
            ],
            false,
        ),
    };
    env.push(value("POSTGRES_DB", DATABASE_NAME.into()));
    env.push(value("PGDATA", "/var/lib/postgresql/data/pgdata".into()));
    let mut mounts = vec![VolumeMount {
        name: DATA_VOLUME.into(),
        mount_path: "/var/lib/postgresql/data".into(),
        ..VolumeMount::default()
    }];
    let mut volumes = Vec::new();
    if init_script {
        mounts.push(VolumeMount {
            name: "init".into(),
            mount_path: INIT_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: "init".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(superuser_secret.clone()),
                items: Some(vec![KeyToPath {
                    key: INIT_SCRIPT_KEY.into(),
                    path: "10-stickyfarm-roles.sh".into(),
                    ..KeyToPath::default()
                }]),
                optional: Some(false),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    let ready = Probe {
        exec: Some(ExecAction {
            command: Some(vec![
                "pg_isready".into(),
                "-U".into(),
                DATABASE_USER.into(),
                "-d".into(),
                DATABASE_NAME.into(),
                "-h".into(),
                "127.0.0.1".into(),
            ]),
        }),
        period_seconds: Some(5),
        timeout_seconds: Some(3),
        ..Probe::default()
    };
    let mut metadata = f.meta(name.clone(), component::DATABASE);
    // Read when the database goes after a switch to an external one (the spec then no longer
    // says): what becomes of the claim and the credentials.
    metadata.annotations = Some(BTreeMap::from([(
        DELETE_POLICY_ANNOTATION.to_owned(),
        m.delete_policy.as_str().to_owned(),
    )]));
    let statefulset = StatefulSet {
        metadata,
        spec: StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(name.clone()),
            selector: LabelSelector {
                match_labels: Some(f.selector(component::DATABASE)),
                ..LabelSelector::default()
            },
            // The claim holds the sessions: it is never owned by the StatefulSet, so the garbage
            // collector cannot take it with a StatefulSet it collects. The operator deletes it
            // when the farm itself is deleted (the finalizer `DATABASE_FINALIZER`).
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".into()),
                    when_scaled: Some("Retain".into()),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    image_pull_secrets: images.pull_secrets(),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(POSTGRES_UID),
                        run_as_group: Some(POSTGRES_UID),
                        fs_group: Some(POSTGRES_UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![Container {
                        name: "postgres".into(),
                        image: Some(m.image.clone().unwrap_or_else(|| images.postgres.clone())),
                        env: Some(env),
                        ports: Some(vec![port("postgres", POSTGRES_PORT)]),
                        readiness_probe: Some(ready.clone()),
                        liveness_probe: Some(Probe {
                            period_seconds: Some(15),
                            failure_threshold: Some(4),
                            ..ready
                        }),
                        resources: m.resources.clone(),
                        volume_mounts: Some(mounts),
                        // PostgreSQL writes its socket and lock files outside the data folder.
                        security_context: Some(k8s_openapi::api::core::v1::SecurityContext {
                            read_only_root_filesystem: None,
                            ..restricted_container_security()
                        }),
                        ..Container::default()
                    }],
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(DATA_VOLUME.into()),
                    labels: Some(f.selector(component::DATABASE)),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: m.storage_class.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".into(),
                            Quantity(
                                m.storage
                                    .as_ref()
                                    .map_or_else(|| "1Gi".to_owned(), |q| q.to_string()),
                            ),
                        )])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                status: None,
            }]),
            ..StatefulSetSpec::default()
        },
        status: None,
    };
    let service = Service {
        metadata: f.meta(name, component::DATABASE),
        spec: Some(ServiceSpec {
            selector: Some(f.selector(component::DATABASE)),
            ports: Some(vec![service_port("postgres", POSTGRES_PORT, POSTGRES_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    Some(super::ManagedDatabaseObjects {
        statefulset,
        service,
    })
}

/// On the managed database's StatefulSet: its `deletePolicy` (`Delete` or `Retain`).
pub const DELETE_POLICY_ANNOTATION: &str = "stickyfarm.dev/database-delete-policy";

/// The volume claim of a farm's managed database (the StatefulSet controller names it
/// `<template>-<statefulset>-<ordinal>`).
pub fn database_claim_name(farm: &ServerFarm) -> String {
    format!("{DATA_VOLUME}-{}-0", database_statefulset_name(farm))
}

/// The StatefulSet (and Service, and Secret) of a farm's managed database.
pub fn database_statefulset_name(farm: &ServerFarm) -> String {
    format!("{}-db", farm.name_any())
}

/// The connection URL of a farm's managed database for the sidecars' role.
pub fn database_url_for(farm_name: &str, namespace: &str, password: &str) -> String {
    url_for(DATABASE_USER, farm_name, namespace, password)
}

fn url_for(user: &str, farm_name: &str, namespace: &str, password: &str) -> String {
    format!(
        "postgres://{user}:{password}@{farm_name}-db.{namespace}.svc:{POSTGRES_PORT}/{DATABASE_NAME}"
    )
}

/// Name of the Secret with the app's role (`<farm>-db-app`).
pub fn app_secret_name(farm: &ServerFarm) -> String {
    farm.spec.app_database_secret(&farm.name_any()).0
}

/// Name of the Secret with the bootstrap superuser (`<farm>-db-superuser`).
pub fn superuser_secret_name(farm: &ServerFarm) -> String {
    format!("{}-db-superuser", farm.name_any())
}

/// The managed database's three credentials Secrets (the sidecars', the app's, the
/// superuser's), whatever the spec says now: what goes with the database.
pub fn managed_database_secret_names(farm: &ServerFarm) -> [String; 3] {
    let db = database_statefulset_name(farm);
    [db.clone(), format!("{db}-app"), superuser_secret_name(farm)]
}

/// Keeps a farm with a managed database until the operator has deleted the database's
/// credentials Secret and volume claim, which carry no owner reference.
pub const DATABASE_FINALIZER: &str = "stickyfarm.dev/database";

/// The credentials Secret of a managed database, with the given password (the reconciler
/// generates it, and creates the Secret only when none exists, so it is never overwritten).
///
/// It has no owner reference, unlike every other object of the farm: PostgreSQL keeps the
/// password it was initialised with, so this Secret must outlive anything that deletes what the
/// farm owns — above all the garbage collector, which deletes every dependent of a farm it
/// believes absent. Labelled with the farm; deleted by the operator with the farm
/// ([`DATABASE_FINALIZER`]), like Helm's `resource-policy: keep` plus an explicit delete.
pub fn database_secret(farm: &ServerFarm, password: &str) -> Result<Secret, BuildError> {
    let f = FarmRef::new(farm)?;
    let url = database_url_for(&f.name, &f.namespace, password);
    let mut metadata = f.meta(f.database_name(), component::DATABASE);
    metadata.owner_references = None;
    // Made with the other roles' Secrets: the database is initialised with separate roles.
    metadata.annotations = Some(BTreeMap::from([(
        ROLES_ANNOTATION.into(),
        "separate".into(),
    )]));
    Ok(kept_secret(metadata, login(DATABASE_USER, password, url)))
}

/// The app role's Secret (`<farm>-db-app`): what the app references for its own tables. Kept
/// like the sidecars' credentials.
pub fn database_app_secret(farm: &ServerFarm, password: &str) -> Result<Secret, BuildError> {
    let f = FarmRef::new(farm)?;
    let url = url_for(APP_USER, &f.name, &f.namespace, password);
    let mut metadata = f.meta(app_secret_name(farm), component::DATABASE);
    metadata.owner_references = None;
    Ok(kept_secret(metadata, login(APP_USER, password, url)))
}

/// The bootstrap superuser's Secret (`<farm>-db-superuser`), with the script that makes the
/// other roles; only the database pod reads it. Kept like the sidecars' credentials.
pub fn database_superuser_secret(farm: &ServerFarm, password: &str) -> Result<Secret, BuildError> {
    let f = FarmRef::new(farm)?;
    let mut metadata = f.meta(superuser_secret_name(farm), component::DATABASE);
    metadata.owner_references = None;
    Ok(kept_secret(
        metadata,
        BTreeMap::from([
            ("username".into(), SUPERUSER.into()),
            ("password".into(), password.into()),
            (INIT_SCRIPT_KEY.into(), INIT_SCRIPT.into()),
        ]),
    ))
}

fn login(user: &str, password: &str, url: String) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("username".into(), user.into()),
        ("password".into(), password.into()),
        ("database".into(), DATABASE_NAME.into()),
        ("url".into(), url),
    ])
}

fn kept_secret(metadata: ObjectMeta, data: BTreeMap<String, String>) -> Secret {
    Secret {
        metadata,
        string_data: Some(data),
        type_: Some("Opaque".into()),
        immutable: Some(true),
        ..Secret::default()
    }
}
