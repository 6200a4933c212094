//! The gateway: Deployment, Service, and the identity that lets it read its farm's
//! EndpointSlices (and nothing else).

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, HTTPGetAction, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SecretVolumeSource, Service, ServiceAccount, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use stickyfarm_api::config::{self, GatewayFarmSettings};

use super::units::{
    field, port, restricted_container_security, restricted_pod_security, service_port, value,
};
use super::{BuildInput, FarmRef, component, tokens};

/// The gateway's client port inside the pod (the Service maps `spec.gateway.port` to it).
pub const GATEWAY_PORT: i32 = 8000;
/// With `spec.gateway.tls.redirectHttp`: the plain-HTTP port that redirects to HTTPS (the
/// Service's port 80).
pub const GATEWAY_REDIRECT_PORT: i32 = 8001;
/// Where the gateway reads the TLS Secret: a whole-Secret volume (no `subPath`), so the kubelet
/// updates the files when cert-manager renews the Secret and the gateway reloads them.
const TLS_DIR: &str = "/etc/stickyfarm/tls";
const TLS_VOLUME: &str = "tls";
/// The Secret volume's mode: the certificate and key readable by the gateway's user only.
const TLS_FILE_MODE: i32 = 0o400;

/// The gateway's admin port, read-only: `/status`, `/metrics`, `/livez`, `/readyz`.
pub const GATEWAY_ADMIN_PORT: i32 = 9465;
/// The gateway's control port: unit actions with the admin token. No NetworkPolicy admits
/// anyone to it; administrators use `kubectl port-forward`.
pub const GATEWAY_CONTROL_PORT: i32 = 9466;

pub(crate) fn service_account(f: &FarmRef) -> ServiceAccount {
    ServiceAccount {
        metadata: f.meta(f.gateway_name(), component::GATEWAY),
        // The token is mounted by the Deployment's pod spec, not everywhere the account is used.
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

/// Read-only access to EndpointSlices in the farm's namespace: the gateway learns units, their
/// pod IPs and UIDs, and which are draining from them.
pub(crate) fn role(f: &FarmRef) -> Role {
    Role {
        metadata: f.meta(f.gateway_name(), component::GATEWAY),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["discovery.k8s.io".into()]),
            resources: Some(vec!["endpointslices".into()]),
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            ..PolicyRule::default()
        }]),
    }
}

pub(crate) fn role_binding(f: &FarmRef) -> RoleBinding {
    RoleBinding {
        metadata: f.meta(f.gateway_name(), component::GATEWAY),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: f.gateway_name(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: f.gateway_name(),
            namespace: Some(f.namespace.clone()),
            ..Subject::default()
        }]),
    }
}

pub(crate) fn deployment(f: &FarmRef, input: &BuildInput) -> Deployment {
    let (g, images) = (&f.farm.spec.gateway, &input.images);
    let mut env = vec![
        value(
            "STICKYFARM_GATEWAY_LISTEN",
            format!("0.0.0.0:{GATEWAY_PORT}"),
        ),
        value(
            "STICKYFARM_GATEWAY_ADMIN_LISTEN",
            format!("0.0.0.0:{GATEWAY_ADMIN_PORT}"),
        ),
        value(
            "STICKYFARM_GATEWAY_CONTROL_LISTEN",
            format!("0.0.0.0:{GATEWAY_CONTROL_PORT}"),
        ),
        value(
            "STICKYFARM_ADMIN_TOKEN_FILE",
            tokens::file(tokens::ADMIN_TOKEN_KEY),
        ),
        value(
            "STICKYFARM_GATEWAY_TOKEN_FILE",
            tokens::file(tokens::GATEWAY_TOKEN_KEY),
        ),
        value("STICKYFARM_DISCOVERY", "kubernetes".into()),
        value("STICKYFARM_FARM", f.name.clone()),
        field("STICKYFARM_NAMESPACE", "metadata.namespace"),
        value(
            "STICKYFARM_PUBLIC_SCHEME",
            if f.farm.spec.session_persistence.secure {
                "https"
            } else {
                "http"
            }
            .into(),
        ),
        value("STICKYFARM_LOG_FORMAT", "json".into()),
    ];
    let traces = f.trace_env(input);
    if !traces.is_empty() {
        env.push(field("POD_NAME", "metadata.name"));
        env.extend(traces);
    }
    // What the farm declares, through the same contract farmctl renders and the gateway parses.
    env.extend(
        config::as_env(&GatewayFarmSettings::from_farm(&f.farm.spec))
            .into_iter()
            .map(|(name, v)| value(&name, v)),
    );
    if let Some(host) = &g.public_host {
        env.push(value("STICKYFARM_PUBLIC_HOST", host.clone()));
    }
    let mut ports = vec![
        port("http", GATEWAY_PORT),
        port("admin", GATEWAY_ADMIN_PORT),
        port("control", GATEWAY_CONTROL_PORT),
    ];
    let mut mounts = vec![tokens::mount()];
    let mut volumes = vec![tokens::volume(
        f,
        &[
            tokens::SecretFile::Token(tokens::ADMIN_TOKEN_KEY),
            tokens::SecretFile::Token(tokens::GATEWAY_TOKEN_KEY),
        ],
    )];
    if let Some(tls) = &g.tls {
        env.extend([
            value("STICKYFARM_TLS_CERT", format!("{TLS_DIR}/tls.crt")),
            value("STICKYFARM_TLS_KEY", format!("{TLS_DIR}/tls.key")),
            value(
                "STICKYFARM_TLS_ORIGIN",
                format!("Secret {}/{}", f.namespace, tls.secret_name),
            ),
        ]);
        if tls.redirect_http {
            env.extend([
                value(
                    "STICKYFARM_GATEWAY_REDIRECT_LISTEN",
                    format!("0.0.0.0:{GATEWAY_REDIRECT_PORT}"),
                ),
                value("STICKYFARM_REDIRECT_PORT", g.port.0.to_string()),
            ]);
            ports.push(port("http-redirect", GATEWAY_REDIRECT_PORT));
        }
        mounts.push(VolumeMount {
            name: TLS_VOLUME.into(),
            mount_path: TLS_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: TLS_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(tls.secret_name.clone()),
                default_mode: Some(TLS_FILE_MODE),
                optional: Some(false),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    if let Some((volume, mount)) = f.trace_ca() {
        volumes.push(volume);
        mounts.push(mount);
    }
    let mut pod_labels = f.labels(component::GATEWAY);
    pod_labels.extend(f.selector(component::GATEWAY));
    let probe = |path: &str, period| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("admin".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        ..Probe::default()
    };
    Deployment {
        metadata: f.meta(f.gateway_name(), component::GATEWAY),
        spec: DeploymentSpec {
            replicas: Some(g.replicas.0 as i32),
            selector: LabelSelector {
                match_labels: Some(f.selector(component::GATEWAY)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(f.gateway_name()),
                    image_pull_secrets: images.pull_secrets(),
                    automount_service_account_token: Some(true),
                    enable_service_links: Some(false),
                    security_context: Some(restricted_pod_security()),
                    containers: vec![Container {
                        name: "gateway".into(),
                        image: Some(images.gateway.clone()),
                        env: Some(env),
                        ports: Some(ports),
                        volume_mounts: Some(mounts),
                        readiness_probe: Some(probe("/readyz", 5)),
                        liveness_probe: Some(probe("/livez", 10)),
                        resources: Some(ResourceRequirements {
                            requests: Some(
                                [
                                    ("cpu".to_owned(), Quantity("100m".into())),
                                    ("memory".to_owned(), Quantity("64Mi".into())),
                                ]
                                .into(),
                            ),
                            limits: Some([("memory".to_owned(), Quantity("256Mi".into()))].into()),
                            ..ResourceRequirements::default()
                        }),
                        security_context: Some(restricted_container_security()),
                        ..Container::default()
                    }],
                    volumes: Some(volumes),
                    termination_grace_period_seconds: Some(30),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    }
}

pub(crate) fn service(f: &FarmRef) -> Service {
    let g = &f.farm.spec.gateway;
    Service {
        metadata: f.meta(f.gateway_name(), component::GATEWAY),
        spec: Some(ServiceSpec {
            type_: Some(g.service_type.as_str().into()),
            selector: Some(f.selector(component::GATEWAY)),
            ports: Some(service_ports(g)),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The Service's ports: the farm's port (HTTPS with TLS), and with the redirect port 80.
fn service_ports(
    g: &stickyfarm_api::farm::GatewaySettings,
) -> Vec<k8s_openapi::api::core::v1::ServicePort> {
    let main = if g.tls.is_some() { "https" } else { "http" };
    let mut ports = vec![service_port(main, i32::from(g.port.0), GATEWAY_PORT)];
    if g.tls.as_ref().is_some_and(|t| t.redirect_http) {
        ports.push(service_port("http", 80, GATEWAY_REDIRECT_PORT));
    }
    ports
}
