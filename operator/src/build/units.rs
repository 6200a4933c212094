//! The units: the commerce StatefulSet (app + injected sidecar), its headless Service, one
//! Service per unit, and the PodDisruptionBudget.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector, PodAffinityTerm,
    PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecretKeySelector, SecurityContext, Service, ServicePort, ServiceSpec,
    SleepAction, Volume, VolumeMount, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use stickyfarm_api::config::{self, SidecarFarmSettings};
use stickyfarm_api::farm::{UnitState, labels};
use stickyfarm_api::paths;

use super::tokens::{self, SecretFile};
use super::{BuildInput, FarmRef, component, database_secret_ref};

/// The sidecar's public port (clients, through the gateway, and the health check).
pub const SIDECAR_PORT: i32 = 8080;
/// The sidecar's session API on loopback (the app's `STICKYFARM_API_URL`).
pub const API_PORT: i32 = 7070;
/// The sidecar's metrics port.
pub const METRICS_PORT: i32 = 9464;
/// Where the app and the sidecar share the session API's Unix socket.
pub const SOCKET_DIR: &str = "/var/run/stickyfarm";
/// Where the sidecar keeps its disk tier.
pub const CACHE_DIR: &str = "/var/cache/stickyfarm";

pub(crate) fn statefulset(f: &FarmRef, input: &BuildInput, replicas: u32) -> StatefulSet {
    let spec = &f.farm.spec;
    let pod = &spec.pod;
    let mut pod_labels = f.labels(component::UNIT);
    pod_labels.extend(f.selector(component::UNIT));
    let annotations = (!pod.annotations.is_empty()).then(|| pod.annotations.clone());
    let mut metadata = f.meta(f.name.clone(), component::UNIT);
    if let Some(since) = &input.drain_since {
        metadata.annotations = Some(BTreeMap::from([(
            crate::scale::DRAIN_SINCE_ANNOTATION.to_owned(),
            since.clone(),
        )]));
    }
    StatefulSet {
        metadata,
        spec: StatefulSetSpec {
            replicas: Some(replicas as i32),
            service_name: Some(f.headless_name()),
            selector: LabelSelector {
                match_labels: Some(f.selector(component::UNIT)),
                ..LabelSelector::default()
            },
            // Units are independent: start and replace them in parallel.
            pod_management_policy: Some("Parallel".into()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations,
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![app_container(f), sidecar_container(f, input)],
                    volumes: Some(volumes(f)),
                    image_pull_secrets: input.images.pull_secrets(),
                    // Units never talk to the Kubernetes API.
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(
                        pod.security_context
                            .clone()
                            .unwrap_or_else(restricted_pod_security),
                    ),
                    affinity: Some(pod.affinity.clone().unwrap_or_else(|| spread(f))),
                    node_selector: (!pod.node_selector.is_empty())
                        .then(|| pod.node_selector.clone()),
                    tolerations: (!pod.tolerations.is_empty()).then(|| pod.tolerations.clone()),
                    priority_class_name: pod.priority_class_name.clone(),
                    termination_grace_period_seconds: Some(
                        stickyfarm_api::config::UNIT_TERMINATION_GRACE.as_secs() as i64,
                    ),
                    ..PodSpec::default()
                }),
            },
            ..StatefulSetSpec::default()
        },
        status: None,
    }
}

fn app_container(f: &FarmRef) -> Container {
    let app = &f.farm.spec.app;
    let mut env = vec![
        value("PORT", app.port.0.to_string()),
        value("STICKYFARM_API_URL", format!("http://127.0.0.1:{API_PORT}")),
        value("STICKYFARM_API_SOCKET", format!("{SOCKET_DIR}/api.sock")),
        field("POD_NAME", "metadata.name"),
        field("POD_UID", "metadata.uid"),
        field("POD_NAMESPACE", "metadata.namespace"),
    ];
    // The user's variables come last so they may override ours.
    env.extend(app.env.iter().cloned());
    Container {
        name: "app".into(),
        image: Some(app.image.clone()),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("app".into()),
            container_port: i32::from(app.port.0),
            ..ContainerPort::default()
        }]),
        resources: app.resources.clone(),
        readiness_probe: app.readiness_probe.clone(),
        liveness_probe: app.liveness_probe.clone(),
        startup_probe: app.startup_probe.clone(),
        // The app stops after the sidecar has stopped forwarding new requests to it (see
        // `APP_STOP_DELAY`); the kubelet pauses, so the app's image needs no `sleep`.
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: config::APP_STOP_DELAY.as_secs() as i64,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        volume_mounts: Some(vec![socket_mount()]),
        // The user's app may write to its file system; everything else of `restricted` holds.
        security_context: Some(SecurityContext {
            read_only_root_filesystem: None,
            ..restricted_container_security()
        }),
        ..Container::default()
    }
}

fn sidecar_container(f: &FarmRef, input: &BuildInput) -> Container {
    let spec = &f.farm.spec;
    let (secret, key) = database_secret_ref(f.farm);
    let mut env = vec![
        value("STICKYFARM_LISTEN", format!("0.0.0.0:{SIDECAR_PORT}")),
        value(
            "STICKYFARM_APP_URL",
            format!("http://127.0.0.1:{}", spec.app.port.0),
        ),
        value("STICKYFARM_API_LISTEN", format!("127.0.0.1:{API_PORT}")),
        value("STICKYFARM_API_SOCKET", format!("{SOCKET_DIR}/api.sock")),
        value("STICKYFARM_ADMIN_LISTEN", format!("0.0.0.0:{METRICS_PORT}")),
        value(
            "STICKYFARM_GATEWAY_TOKEN_FILE",
            tokens::file(tokens::GATEWAY_TOKEN_KEY),
        ),
        value(
            "STICKYFARM_SESSION_ID_KEY_FILE",
            tokens::file(tokens::SESSION_ID_KEY_KEY),
        ),
        EnvVar {
            name: "DATABASE_URL".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret,
                    key,
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        field("POD_NAME", "metadata.name"),
        // The instance id: a replaced pod has a new UID, so clients' cached state is flushed.
        field("POD_UID", "metadata.uid"),
        value("STICKYFARM_LOG_FORMAT", "json".into()),
    ];
    env.extend(f.trace_env(input));
    // What the farm declares, through the same contract farmctl renders and the sidecar parses.
    env.extend(
        config::as_env(&SidecarFarmSettings::from_farm(spec))
            .into_iter()
            .map(|(name, v)| value(&name, v)),
    );
    // The gateway token and the session-id key are the sidecar's alone: the app container does
    // not mount them.
    let mut mounts = vec![socket_mount(), tokens::mount()];
    if spec
        .database
        .external
        .as_ref()
        .is_some_and(|e| e.ca.is_some())
    {
        // libpq's variables, which the sidecar's PostgreSQL client reads too; a `sslmode` in
        // the URL still wins.
        env.push(value("PGSSLMODE", "verify-full".into()));
        env.push(value(
            "PGSSLROOTCERT",
            format!("{POSTGRES_CA_DIR}/{POSTGRES_CA_FILE}"),
        ));
        mounts.push(VolumeMount {
            name: POSTGRES_CA_VOLUME.into(),
            mount_path: POSTGRES_CA_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    if let Some((_, mount)) = f.trace_ca() {
        mounts.push(mount);
    }
    if spec.sidecar.cache_disk.is_some() {
        env.push(value("STICKYFARM_CACHE_DISK_DIR", CACHE_DIR.into()));
        mounts.push(VolumeMount {
            name: "session-cache".into(),
            mount_path: CACHE_DIR.into(),
            ..VolumeMount::default()
        });
    }
    Container {
        name: "stickyfarm-sidecar".into(),
        image: Some(input.images.sidecar.clone()),
        env: Some(env),
        ports: Some(vec![
            port("http", SIDECAR_PORT),
            port("metrics", METRICS_PORT),
        ]),
        // The health answer covers the app, PostgreSQL and the cache: the unit is ready only
        // when it can serve a session.
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some(paths::HEALTH.into()),
                port: IntOrString::String("http".into()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(5),
            timeout_seconds: Some(2),
            failure_threshold: Some(2),
            ..Probe::default()
        }),
        // Liveness only asks whether the process answers: an app or database outage must not
        // restart the sidecar (and drop its cache).
        liveness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/livez".into()),
                port: IntOrString::String("metrics".into()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(10),
            timeout_seconds: Some(2),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        resources: Some(
            spec.sidecar
                .resources
                .clone()
                .unwrap_or_else(|| sidecar_resources(spec.sidecar.cache_memory.0)),
        ),
        volume_mounts: Some(mounts),
        security_context: Some(restricted_container_security()),
        ..Container::default()
    }
}

/// Default sidecar resources: the memory tier plus 64 MiB of working memory.
fn sidecar_resources(cache_bytes: u64) -> ResourceRequirements {
    let memory = Quantity(format!("{}Mi", cache_bytes.div_ceil(1 << 20) + 64));
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), Quantity("50m".into())),
            ("memory".into(), memory.clone()),
        ])),
        limits: Some(BTreeMap::from([("memory".into(), memory)])),
        ..ResourceRequirements::default()
    }
}

/// Where the sidecar finds the CA that signed an external PostgreSQL's certificate (outside
/// the other mounts: a volume cannot be mounted inside a read-only Secret volume).
const POSTGRES_CA_DIR: &str = "/etc/stickyfarm/postgres-ca";
const POSTGRES_CA_FILE: &str = "ca.crt";
const POSTGRES_CA_VOLUME: &str = "postgres-ca";

fn volumes(f: &FarmRef) -> Vec<Volume> {
    let mut v = vec![Volume {
        name: "stickyfarm-socket".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: Some(Quantity("1Mi".into())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }];
    v.push(tokens::volume(
        f,
        &[
            SecretFile::Token(tokens::GATEWAY_TOKEN_KEY),
            SecretFile::SessionIdKey,
        ],
    ));
    if let Some(ca) = f
        .farm
        .spec
        .database
        .external
        .as_ref()
        .and_then(|e| e.ca.as_ref())
    {
        v.push(super::secret_key_volume(
            POSTGRES_CA_VOLUME,
            ca,
            POSTGRES_CA_FILE,
        ));
    }
    if let Some((volume, _)) = f.trace_ca() {
        v.push(volume);
    }
    if let Some(disk) = &f.farm.spec.sidecar.cache_disk {
        v.push(Volume {
            name: "session-cache".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: None,
                size_limit: Some(Quantity(disk.to_string())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    v
}

fn socket_mount() -> VolumeMount {
    VolumeMount {
        name: "stickyfarm-socket".into(),
        mount_path: SOCKET_DIR.into(),
        ..VolumeMount::default()
    }
}

/// Prefer spreading units over nodes, so one node failing takes few units.
fn spread(f: &FarmRef) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(f.selector(component::UNIT)),
                            ..LabelSelector::default()
                        }),
                        topology_key: "kubernetes.io/hostname".into(),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}

/// The pod-level part of the `restricted` Pod Security Standard.
pub(crate) fn restricted_pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// The container-level part of the `restricted` Pod Security Standard.
pub(crate) fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

pub(crate) fn headless_service(f: &FarmRef) -> Service {
    Service {
        metadata: f.meta(f.headless_name(), component::UNIT),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(f.selector(component::UNIT)),
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![service_port("http", SIDECAR_PORT, SIDECAR_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The Service of one unit. Its labels say whether the unit is serving or draining, and the
/// EndpointSlice controller copies them onto the unit's EndpointSlices, which is what the
/// gateway watches.
pub(crate) fn unit_service(f: &FarmRef, ordinal: u32, state: UnitState) -> Service {
    let unit = format!("{}-{ordinal}", f.name);
    let mut meta = f.meta(unit.clone(), component::UNIT);
    let l = meta.labels.get_or_insert_default();
    l.insert(labels::UNIT.into(), unit.clone());
    l.insert(labels::UNIT_STATE.into(), state.as_label().into());
    let mut selector = f.selector(component::UNIT);
    selector.insert("statefulset.kubernetes.io/pod-name".into(), unit);
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            // Headless: the gateway connects to the pod itself and keeps its own pool.
            cluster_ip: Some("None".into()),
            selector: Some(selector),
            // The gateway's health checks decide whether a unit serves, so a unit whose
            // readiness fails stays visible to them (and comes back after `rise` passes).
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![service_port("http", SIDECAR_PORT, SIDECAR_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

pub(crate) fn pdb(f: &FarmRef) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: f.meta(f.headless_name(), component::UNIT),
        spec: Some(PodDisruptionBudgetSpec {
            // One unit at a time: its sessions fail over to the others.
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(f.selector(component::UNIT)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

pub(crate) fn value(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    }
}

pub(crate) fn field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

pub(crate) fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: number,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

pub(crate) fn service_port(name: &str, port: i32, target: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::Int(target)),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}
