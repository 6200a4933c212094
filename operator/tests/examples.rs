//! Every example manifest deserializes into the Rust types and passes the generated CRD's
//! schema and CEL rules; broken manifests are refused with readable messages.

use std::path::{Path, PathBuf};

use kube::CustomResourceExt;
use kube::core::cel::Validator;
use serde_json::{Value, json};
use stickyfarm_api::farm::ServerFarm;

fn examples() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files = vec![root.join("webstore.yaml")];
    let mut farms: Vec<PathBuf> = std::fs::read_dir(root.join("serverfarms"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    farms.sort();
    files.extend(farms);
    files
}

fn schema() -> Value {
    let crd = ServerFarm::crd();
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

/// What the API server would say about `object`: structural schema first (types, enums,
/// patterns, ranges), then CEL rules on the defaulted object, as the API server defaults
/// before it validates. Returns every message.
fn api_server_verdict(object: &Value) -> Vec<String> {
    let schema = schema();
    let mut messages = Vec::new();
    let validator = jsonschema::draft4::new(&schema).expect("the CRD schema compiles");
    for e in validator.iter_errors(object) {
        messages.push(format!("{}: {e}", e.instance_path()));
    }
    if !messages.is_empty() {
        return messages;
    }
    let farm: ServerFarm = match serde_json::from_value(object.clone()) {
        Ok(f) => f,
        Err(e) => return vec![format!("does not deserialize: {e}")],
    };
    let defaulted = serde_json::to_value(&farm).unwrap();
    if let Err(errors) = Validator::new().validate(&schema, &defaulted, None) {
        messages.extend(errors.into_vec().into_iter().map(|e| e.to_string()));
    }
    messages
}

fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn every_example_is_a_valid_serverfarm() {
    let files = examples();
    assert!(
        files.len() >= 4,
        "webstore, minimal, full, external database: {files:?}"
    );
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let object = yaml(&text);
        let verdict = api_server_verdict(&object);
        assert!(verdict.is_empty(), "{}: {verdict:#?}", file.display());
        let farm: ServerFarm =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        farm.spec
            .validate()
            .unwrap_or_else(|e| panic!("{}: {e:?}", file.display()));
    }
}

#[test]
fn the_full_example_sets_every_optional_branch() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/serverfarms/full.yaml"),
    )
    .unwrap();
    let farm: ServerFarm = serde_saphyr::from_str(&text).unwrap();
    let s = &farm.spec;
    assert!(
        s.app.resources.is_some()
            && s.app.readiness_probe.is_some()
            && s.app.liveness_probe.is_some()
    );
    assert!(s.sidecar.cache_disk.is_some() && s.sidecar.resources.is_some());
    assert!(s.gateway.farm_host.is_some());
    assert!(
        s.database
            .managed
            .as_ref()
            .is_some_and(|m| m.storage.is_some() && m.storage_class.is_some() && m.image.is_some())
    );
    assert!(!s.pod.node_selector.is_empty() && !s.pod.tolerations.is_empty());
    assert!(s.pod.affinity.is_some() && s.pod.security_context.is_some());
}

fn farm_with(spec: Value) -> Value {
    json!({
        "apiVersion": "stickyfarm.dev/v1alpha1",
        "kind": "ServerFarm",
        "metadata": {"name": "shop", "namespace": "prod"},
        "spec": spec,
    })
}

#[test]
fn broken_serverfarms_are_refused_with_readable_messages() {
    let app = json!({"image": "x"});
    let cases = [
        (json!({"replicas": 0, "app": app}), "minimum"),
        (json!({"replicas": 65, "app": app}), "maximum"),
        (json!({"app": {}}), "image"),
        (
            json!({"app": app, "gateway": {"policy": "fastest"}}),
            "fastest",
        ),
        (
            json!({"app": app, "sessionPersistence": {"idleTimeout": "5 minutes"}}),
            "5 minutes",
        ),
        (
            json!({"app": app, "sidecar": {"cacheMemory": "64MB"}}),
            "64MB",
        ),
        (
            json!({"app": {"image": "x", "keepAliveTimeout": "0s"}}),
            "keepAliveTimeout",
        ),
        (json!({"app": app, "gateway": {"port": 70000}}), "maximum"),
        (
            json!({"app": app, "gateway": {"unitAddressing": "host"}}),
            "unitAddressing host needs farmHost",
        ),
        (
            json!({"app": app, "database": {"external": {"secretName": "pg"}, "managed": {}}}),
            "choose external or managed",
        ),
        (
            json!({"app": app, "gateway": {"healthCheck": {"interval": "1s", "timeout": "5s"}}}),
            "timeout must not be longer",
        ),
        (
            json!({"app": app, "sessionPersistence": {"idleTimeout": "48h", "absoluteTimeout": "24h"}}),
            "idleTimeout must not be longer",
        ),
    ];
    for (spec, expected) in cases {
        let verdict = api_server_verdict(&farm_with(spec.clone()));
        assert!(
            verdict.iter().any(|m| m.contains(expected)),
            "spec {spec} should be refused mentioning {expected:?}, got {verdict:#?}"
        );
    }
}

#[test]
fn farm_names_must_leave_room_for_unit_ordinals() {
    let mut object = farm_with(json!({"app": {"image": "x"}}));
    object["metadata"]["name"] = json!("a".repeat(61));
    let verdict = api_server_verdict(&object);
    assert!(
        verdict.iter().any(|m| m.contains("at most 60 characters")),
        "{verdict:#?}"
    );
    object["metadata"]["name"] = json!("shop.eu");
    let verdict = api_server_verdict(&object);
    assert!(
        verdict.iter().any(|m| m.contains("DNS label")),
        "{verdict:#?}"
    );
    object["metadata"]["name"] = json!("a".repeat(60));
    assert!(api_server_verdict(&object).is_empty());
}

/// Nothing in a ServerFarm can make its pods more privileged than Pod Security "restricted":
/// the CRD's rules refuse it naming the field, and `farmctl validate` (the Rust validation)
/// says the same.
#[test]
fn privileges_beyond_restricted_are_refused_naming_the_field() {
    let app = json!({"image": "x"});
    let pod = |sc: Value| json!({"app": app, "pod": {"securityContext": sc}});
    let probe = |which: &str, p: Value| json!({"app": {"image": "x", which: p}});
    let cases = [
        (
            pod(json!({"runAsUser": 0})),
            "pod.securityContext.runAsUser",
        ),
        (
            pod(json!({"runAsNonRoot": false})),
            "pod.securityContext.runAsNonRoot",
        ),
        (
            pod(json!({"seccompProfile": {"type": "Unconfined"}})),
            "pod.securityContext.seccompProfile.type",
        ),
        (
            pod(json!({"appArmorProfile": {"type": "Unconfined"}})),
            "pod.securityContext.appArmorProfile.type",
        ),
        (
            pod(json!({"seLinuxOptions": {"user": "system_u"}})),
            "pod.securityContext.seLinuxOptions",
        ),
        (
            pod(json!({"windowsOptions": {"hostProcess": true}})),
            "pod.securityContext.windowsOptions.hostProcess",
        ),
        (
            pod(json!({"sysctls": [{"name": "kernel.msgmax", "value": "1"}]})),
            "pod.securityContext.sysctls",
        ),
        (
            probe(
                "livenessProbe",
                json!({"httpGet": {"host": "10.0.0.1", "port": 80, "path": "/"}}),
            ),
            "app.livenessProbe",
        ),
        (
            probe(
                "readinessProbe",
                json!({"tcpSocket": {"host": "metadata.internal", "port": 80}}),
            ),
            "app.readinessProbe",
        ),
        (
            probe(
                "startupProbe",
                json!({"httpGet": {"host": "kubernetes.default", "port": 443}}),
            ),
            "app.startupProbe",
        ),
    ];
    for (spec, field) in cases {
        let verdict = api_server_verdict(&farm_with(spec.clone()));
        assert!(
            verdict.iter().any(|m| m.contains(field)),
            "the CRD refuses {spec} naming {field}: {verdict:#?}"
        );
        let farm: ServerFarm = serde_json::from_value(farm_with(spec.clone())).unwrap();
        let errors = farm.spec.validate().expect_err("farmctl refuses it too");
        assert!(
            errors.iter().any(|e| e.to_string().contains(field)),
            "farmctl validate names {field}: {errors:?}"
        );
    }
    // What restricted allows passes: a non-root user, the runtime's profile, a probe of its own pod.
    let fine = json!({
        "app": {"image": "x", "livenessProbe": {"httpGet": {"port": 3000, "path": "/"}}},
        "pod": {"securityContext": {"runAsUser": 1000, "runAsNonRoot": true, "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"}, "seLinuxOptions": {"type": "container_t"}}},
    });
    assert!(api_server_verdict(&farm_with(fine.clone())).is_empty());
    let farm: ServerFarm = serde_json::from_value(farm_with(fine)).unwrap();
    farm.spec.validate().unwrap();
    // Fields that would grant more do not exist: a spec naming them does not even parse.
    for extra in [
        json!({"app": {"image": "x", "securityContext": {"privileged": true}}}),
        json!({"app": app, "pod": {"hostNetwork": true}}),
        json!({"app": app, "pod": {"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}}),
    ] {
        assert!(
            serde_json::from_value::<ServerFarm>(farm_with(extra.clone())).is_err(),
            "{extra}"
        );
    }
}
