//! The managed PostgreSQL: a one-pod StatefulSet with a volume, its Service, and the generated
//! credentials Secret (made once, never overwritten).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, ExecAction, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, Secret, SecretKeySelector,
    Service, ServiceSpec, VolumeMount, VolumeResourceRequirements,
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
/// PostgreSQL's port.
pub const POSTGRES_PORT: i32 = 5432;
/// The volume claim template of the database's data (claims are `data-<farm>-db-0`).
const DATA_VOLUME: &str = "data";
/// UID of the `postgres` user in the official image.
const POSTGRES_UID: i64 = 999;

pub(crate) fn managed(f: &FarmRef, images: &Images) -> Option<super::ManagedDatabaseObjects> {
    if f.farm.spec.database.external.is_some() {
        return None;
    }
    let m = f.farm.spec.database.managed.clone().unwrap_or_default();
    let name = f.database_name();
    let mut pod_labels = f.labels(component::DATABASE);
    pod_labels.extend(f.selector(component::DATABASE));
    let secret_env = |env: &str, key: &str| EnvVar {
        name: env.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: name.clone(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    };
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
    let statefulset = StatefulSet {
        metadata: f.meta(name.clone(), component::DATABASE),
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
                        env: Some(vec![
                            secret_env("POSTGRES_USER", "username"),
                            secret_env("POSTGRES_PASSWORD", "password"),
                            value("POSTGRES_DB", DATABASE_NAME.into()),
                            value("PGDATA", "/var/lib/postgresql/data/pgdata".into()),
                        ]),
                        ports: Some(vec![port("postgres", POSTGRES_PORT)]),
                        readiness_probe: Some(ready.clone()),
                        liveness_probe: Some(Probe {
                            period_seconds: Some(15),
                            failure_threshold: Some(4),
                            ..ready
                        }),
                        resources: m.resources.clone(),
                        volume_mounts: Some(vec![VolumeMount {
                            name: DATA_VOLUME.into(),
                            mount_path: "/var/lib/postgresql/data".into(),
                            ..VolumeMount::default()
                        }]),
                        // PostgreSQL writes its socket and lock files outside the data folder.
                        security_context: Some(k8s_openapi::api::core::v1::SecurityContext {
                            read_only_root_filesystem: None,
                            ..restricted_container_security()
                        }),
                        ..Container::default()
                    }],
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

/// The volume claim of a farm's managed database (the StatefulSet controller names it
/// `<template>-<statefulset>-<ordinal>`).
pub fn database_claim_name(farm: &ServerFarm) -> String {
    format!("{DATA_VOLUME}-{}-0", database_statefulset_name(farm))
}

/// The StatefulSet (and Service, and Secret) of a farm's managed database.
pub fn database_statefulset_name(farm: &ServerFarm) -> String {
    format!("{}-db", farm.name_any())
}

/// The connection URL of a farm's managed database.
pub fn database_url_for(farm_name: &str, namespace: &str, password: &str) -> String {
    format!(
        "postgres://{DATABASE_USER}:{password}@{farm_name}-db.{namespace}.svc:{POSTGRES_PORT}/{DATABASE_NAME}"
    )
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
    Ok(Secret {
        metadata,
        string_data: Some(BTreeMap::from([
            ("username".into(), DATABASE_USER.into()),
            ("password".into(), password.into()),
            ("database".into(), DATABASE_NAME.into()),
            ("url".into(), url),
        ])),
        type_: Some("Opaque".into()),
        immutable: Some(true),
        ..Secret::default()
    })
}
