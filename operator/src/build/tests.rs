//! Field-by-field tests of the builders.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, EnvVar, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use stickyfarm_api::farm::ServerFarm;

use super::*;

const UID: &str = "6a0f9c1e-2b7d-4e0a-9f1c-3d5e7a9b1c2d";

/// A farm as the API server hands it over (namespace, uid, generation).
pub(crate) fn farm(spec_yaml: &str) -> ServerFarm {
    let text = format!(
        "apiVersion: stickyfarm.dev/v1alpha1\nkind: ServerFarm\nmetadata:\n  name: shop\n  namespace: prod\n  uid: {UID}\n  generation: 4\nspec:\n{}",
        spec_yaml
            .lines()
            .map(|l| format!("  {l}\n"))
            .collect::<String>()
    );
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("fixture: {e}\n{text}"))
}

const MINIMAL: &str = "app:\n  image: registry.example/shop:1\n";

pub(crate) fn input() -> BuildInput {
    BuildInput {
        images: Images {
            sidecar: "ghcr.io/stickyfarm/sidecar:0.1.0".into(),
            gateway: "ghcr.io/stickyfarm/gateway:0.1.0".into(),
            postgres: "postgres:17".into(),
            pull_secrets: Vec::new(),
        },
        scrapers: Scrapers::in_namespaces(["stickyfarm-system"]),
        unit_replicas: 0,
        drain_since: None,
        database_roles: DatabaseRoles::Separate,
        trace_collector: None,
    }
}

fn desired(spec: &str) -> Desired {
    build(&farm(spec), &input()).expect("builds")
}

fn env<'a>(c: &'a Container, name: &str) -> &'a EnvVar {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("container {} has no env {name}", c.name))
}

fn env_value<'a>(c: &'a Container, name: &str) -> &'a str {
    env(c, name)
        .value
        .as_deref()
        .unwrap_or_else(|| panic!("env {name} has no value"))
}

fn container<'a>(d: &'a Desired, name: &str) -> &'a Container {
    d.unit_statefulset
        .spec
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn all_metadata(d: &Desired) -> Vec<&ObjectMeta> {
    let mut m = vec![
        &d.unit_statefulset.metadata,
        &d.headless_service.metadata,
        &d.unit_pdb.metadata,
        &d.gateway_service_account.metadata,
        &d.gateway_role.metadata,
        &d.gateway_role_binding.metadata,
        &d.gateway_deployment.metadata,
        &d.gateway_service.metadata,
    ];
    m.extend(d.unit_services.iter().map(|s| &s.metadata));
    m.extend(d.network_policies.iter().map(|p| &p.metadata));
    if let Some(db) = &d.database {
        m.push(&db.statefulset.metadata);
        m.push(&db.service.metadata);
    }
    m
}

#[test]
fn every_object_is_named_labelled_and_owned_by_the_farm() {
    let d = desired(MINIMAL);
    let names: Vec<String> = all_metadata(&d)
        .iter()
        .map(|m| m.name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "shop",
            "shop-units",
            "shop-units",
            "shop-gateway",
            "shop-gateway",
            "shop-gateway",
            "shop-gateway",
            "shop-gateway",
            "shop-0",
            "shop-1",
            "shop-2",
            "shop-units",
            "shop-gateway",
            "shop-db",
            "shop-db",
            "shop-db",
        ]
    );
    for m in all_metadata(&d) {
        let name = m.name.as_deref().unwrap();
        assert_eq!(m.namespace.as_deref(), Some("prod"), "{name}");
        let owners = m.owner_references.as_ref().expect("owner references");
        assert_eq!(owners.len(), 1, "{name}");
        let o = &owners[0];
        assert_eq!(
            (
                o.api_version.as_str(),
                o.kind.as_str(),
                o.name.as_str(),
                o.uid.as_str()
            ),
            ("stickyfarm.dev/v1alpha1", "ServerFarm", "shop", UID),
            "{name}"
        );
        assert_eq!(o.controller, Some(true), "{name}");
        let l = m.labels.as_ref().unwrap();
        assert_eq!(l["stickyfarm.dev/farm"], "shop", "{name}");
        assert_eq!(
            l["app.kubernetes.io/managed-by"], "stickyfarm-operator",
            "{name}"
        );
        assert_eq!(l["app.kubernetes.io/instance"], "shop", "{name}");
        assert!(
            ["unit", "gateway", "database"].contains(&l["stickyfarm.dev/component"].as_str()),
            "{name}"
        );
    }
}

#[test]
fn a_farm_without_uid_or_namespace_is_refused() {
    let mut f = farm(MINIMAL);
    f.metadata.uid = None;
    assert!(matches!(build(&f, &input()), Err(BuildError::NoUid(_))));
    let mut f = farm(MINIMAL);
    f.metadata.namespace = None;
    assert!(matches!(
        build(&f, &input()),
        Err(BuildError::NoNamespace(_))
    ));
}

#[test]
fn unit_statefulset_runs_app_and_sidecar_with_defaults() {
    let d = desired(MINIMAL);
    let sts = &d.unit_statefulset;
    let spec = &sts.spec;
    assert_eq!(spec.replicas, Some(3), "default replicas");
    assert_eq!(spec.service_name.as_deref(), Some("shop-units"));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    let selector = spec.selector.match_labels.as_ref().unwrap();
    assert_eq!(
        selector,
        &BTreeMap::from([
            ("stickyfarm.dev/farm".to_owned(), "shop".to_owned()),
            ("stickyfarm.dev/component".to_owned(), "unit".to_owned()),
        ])
    );
    let tmpl_labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    for (k, v) in selector {
        assert_eq!(&tmpl_labels[k], v, "pod labels carry the selector");
    }
    assert!(sts.metadata.annotations.is_none(), "no drain annotation");

    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(pod.enable_service_links, Some(false));
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(
        psc.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    let anti = pod
        .affinity
        .as_ref()
        .unwrap()
        .pod_anti_affinity
        .as_ref()
        .unwrap();
    let pref = &anti
        .preferred_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        pref.pod_affinity_term.topology_key,
        "kubernetes.io/hostname"
    );
    assert!(pod.node_selector.is_none() && pod.tolerations.is_none());
    let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["app", "stickyfarm-sidecar"]);
    let volumes: Vec<&str> = pod
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(
        volumes,
        ["stickyfarm-socket", "stickyfarm-tokens"],
        "no disk tier by default"
    );

    let app = container(&d, "app");
    assert_eq!(app.image.as_deref(), Some("registry.example/shop:1"));
    assert_eq!(app.ports.as_ref().unwrap()[0].container_port, 3000);
    // The app is signalled only after the sidecar has stopped forwarding to it.
    let pre_stop = app.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap();
    assert_eq!(
        pre_stop.sleep.as_ref().map(|s| s.seconds),
        Some(3),
        "the app pauses before its SIGTERM"
    );
    assert_eq!(
        env_value(app, "STICKYFARM_API_URL"),
        "http://127.0.0.1:7070"
    );
    assert_eq!(
        env_value(app, "STICKYFARM_API_SOCKET"),
        "/var/run/stickyfarm/api.sock"
    );
    assert_eq!(env_value(app, "PORT"), "3000");
    assert!(
        app.readiness_probe.is_none() && app.liveness_probe.is_none() && app.resources.is_none()
    );
    assert_eq!(
        app.volume_mounts.as_ref().unwrap()[0].mount_path,
        "/var/run/stickyfarm"
    );
    let asc = app.security_context.as_ref().unwrap();
    assert_eq!(asc.allow_privilege_escalation, Some(false));
    assert_eq!(
        asc.read_only_root_filesystem, None,
        "the user's app may write"
    );

    let sc = container(&d, "stickyfarm-sidecar");
    assert_eq!(
        sc.image.as_deref(),
        Some("ghcr.io/stickyfarm/sidecar:0.1.0")
    );
    let field = |name| {
        env(sc, name)
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str())
    };
    assert_eq!(
        field("POD_UID"),
        Some("metadata.uid"),
        "instance id = pod UID"
    );
    assert_eq!(
        field("POD_NAME"),
        Some("metadata.name"),
        "unit name = pod name"
    );
    let db = env(sc, "DATABASE_URL")
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!((db.name.as_str(), db.key.as_str()), ("shop-db", "url"));
    assert_eq!(env_value(sc, "STICKYFARM_APP_URL"), "http://127.0.0.1:3000");
    assert_eq!(env_value(sc, "STICKYFARM_LISTEN"), "0.0.0.0:8080");
    assert_eq!(env_value(sc, "STICKYFARM_API_LISTEN"), "127.0.0.1:7070");
    assert_eq!(
        env_value(sc, "STICKYFARM_CACHE_MEMORY"),
        (64u64 << 20).to_string()
    );
    assert_eq!(env_value(sc, "STICKYFARM_IDLE_TIMEOUT"), "30m");
    assert_eq!(env_value(sc, "STICKYFARM_ABSOLUTE_TIMEOUT"), "24h");
    assert_eq!(
        env_value(sc, "STICKYFARM_COOKIE_SECURE"),
        "true",
        "Secure cookies unless the farm says it is served over plain HTTP"
    );
    assert_eq!(env_value(sc, "STICKYFARM_SESSION_COOKIE"), "sf_session");
    assert!(
        sc.env
            .iter()
            .flatten()
            .all(|e| e.name != "STICKYFARM_CACHE_DISK_DIR")
    );
    let ready = sc
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(ready.path.as_deref(), Some("/_stickyfarm/health"));
    assert_eq!(ready.port, IntOrString::String("http".into()));
    let live = sc
        .liveness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(
        (live.path.as_deref(), &live.port),
        (Some("/livez"), &IntOrString::String("metrics".into()))
    );
    let ports: Vec<(Option<&str>, i32)> = sc
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.as_deref(), p.container_port))
        .collect();
    assert_eq!(ports, [(Some("http"), 8080), (Some("metrics"), 9464)]);
    let res = sc.resources.as_ref().unwrap();
    assert_eq!(
        res.limits.as_ref().unwrap()["memory"].0,
        "128Mi",
        "cache + 64Mi"
    );
    let ssc = sc.security_context.as_ref().unwrap();
    assert_eq!(ssc.read_only_root_filesystem, Some(true));
    assert_eq!(
        ssc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
}

#[test]
fn optional_unit_settings_reach_the_pods() {
    let d = desired(
        "replicas: 2
app:
  image: registry.example/shop:1
  port: 9000
  env:
    - {name: SHOP_MODE, value: live}
    - name: DATABASE_URL
      valueFrom: {secretKeyRef: {name: shop-db, key: url}}
  resources: {requests: {cpu: 250m}, limits: {memory: 512Mi}}
  readinessProbe: {httpGet: {path: /ready, port: 9000}}
  livenessProbe: {tcpSocket: {port: 9000}}
  startupProbe: {exec: {command: [true]}}
sidecar:
  cacheMemory: 256Mi
  cacheDisk: 2Gi
  resources: {limits: {memory: 1Gi}}
sessionPersistence: {sessionName: shop_sid, idleTimeout: 10m, absoluteTimeout: 8h, secure: true}
pod:
  nodeSelector: {pool: shop}
  tolerations: [{key: dedicated, operator: Equal, value: shop, effect: NoSchedule}]
  affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: zone, operator: In, values: [a]}]}]}}}
  securityContext: {runAsUser: 1234, runAsNonRoot: true}
  annotations: {example.com/team: shop}
  priorityClassName: high
",
    );
    let spec = &d.unit_statefulset.spec;
    assert_eq!(spec.replicas, Some(2));
    let tmpl = &spec.template;
    assert_eq!(
        tmpl.metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()["example.com/team"],
        "shop"
    );
    let pod = tmpl.spec.as_ref().unwrap();
    assert_eq!(pod.node_selector.as_ref().unwrap()["pool"], "shop");
    assert_eq!(
        pod.tolerations.as_ref().unwrap()[0].key.as_deref(),
        Some("dedicated")
    );
    let aff = pod.affinity.as_ref().unwrap();
    assert!(
        aff.node_affinity.is_some() && aff.pod_anti_affinity.is_none(),
        "the farm's affinity replaces ours"
    );
    assert_eq!(
        pod.security_context.as_ref().unwrap().run_as_user,
        Some(1234)
    );
    assert_eq!(pod.priority_class_name.as_deref(), Some("high"));
    let volumes: Vec<&str> = pod
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(
        volumes,
        ["stickyfarm-socket", "stickyfarm-tokens", "session-cache"]
    );
    let cache = pod.volumes.as_ref().unwrap()[2].empty_dir.as_ref().unwrap();
    assert_eq!(cache.size_limit.as_ref().unwrap().0, "2Gi");

    let app = container(&d, "app");
    assert_eq!(app.ports.as_ref().unwrap()[0].container_port, 9000);
    let names: Vec<&str> = app.env.iter().flatten().map(|e| e.name.as_str()).collect();
    assert_eq!(
        &names[names.len() - 2..],
        ["SHOP_MODE", "DATABASE_URL"],
        "user env last"
    );
    assert_eq!(env_value(app, "SHOP_MODE"), "live");
    assert_eq!(
        app.resources.as_ref().unwrap().requests.as_ref().unwrap()["cpu"].0,
        "250m"
    );
    assert_eq!(
        app.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/ready")
    );
    assert!(app.liveness_probe.as_ref().unwrap().tcp_socket.is_some());
    assert!(app.startup_probe.as_ref().unwrap().exec.is_some());

    let sc = container(&d, "stickyfarm-sidecar");
    assert_eq!(env_value(sc, "STICKYFARM_APP_URL"), "http://127.0.0.1:9000");
    assert_eq!(
        env_value(sc, "STICKYFARM_CACHE_MEMORY"),
        (256u64 << 20).to_string()
    );
    assert_eq!(
        env_value(sc, "STICKYFARM_CACHE_DISK_DIR"),
        "/var/cache/stickyfarm"
    );
    assert_eq!(
        env_value(sc, "STICKYFARM_CACHE_DISK_SIZE"),
        (2u64 << 30).to_string()
    );
    assert_eq!(env_value(sc, "STICKYFARM_IDLE_TIMEOUT"), "10m");
    assert_eq!(env_value(sc, "STICKYFARM_ABSOLUTE_TIMEOUT"), "8h");
    assert_eq!(env_value(sc, "STICKYFARM_COOKIE_SECURE"), "true");
    assert_eq!(env_value(sc, "STICKYFARM_SESSION_COOKIE"), "shop_sid");
    assert_eq!(
        sc.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0,
        "1Gi"
    );
    let mounts: Vec<&str> = sc
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert_eq!(
        mounts,
        [
            "/var/run/stickyfarm",
            "/var/run/secrets/stickyfarm",
            "/var/cache/stickyfarm"
        ]
    );

    let gw = &d
        .gateway_deployment
        .spec
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    assert_eq!(env_value(gw, "STICKYFARM_COOKIE_SECURE"), "true");
    assert_eq!(
        env_value(gw, "STICKYFARM_SESSION_COOKIE"),
        "shop_sid",
        "the gateway reads the session cookie the sidecars set"
    );
    assert_eq!(env_value(gw, "STICKYFARM_PUBLIC_SCHEME"), "https");
}

fn selector_of(s: &Service) -> &BTreeMap<String, String> {
    s.spec.as_ref().unwrap().selector.as_ref().unwrap()
}

#[test]
fn one_service_per_unit_selects_its_pod() {
    let d = desired(MINIMAL);
    assert_eq!(d.unit_services.len(), 3);
    for (i, svc) in d.unit_services.iter().enumerate() {
        let unit = format!("shop-{i}");
        assert_eq!(svc.metadata.name.as_deref(), Some(unit.as_str()));
        assert_eq!(selector_of(svc)["statefulset.kubernetes.io/pod-name"], unit);
        assert_eq!(selector_of(svc)["stickyfarm.dev/farm"], "shop");
        let l = svc.metadata.labels.as_ref().unwrap();
        assert_eq!(l["stickyfarm.dev/unit"], unit);
        assert_eq!(l["stickyfarm.dev/unit-state"], "serving");
        let spec = svc.spec.as_ref().unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        let port = &spec.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.port, port.target_port.clone()),
            (8080, Some(IntOrString::Int(8080)))
        );
    }
    let headless = d.headless_service.spec.as_ref().unwrap();
    assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
    assert!(!selector_of(&d.headless_service).contains_key("statefulset.kubernetes.io/pod-name"));
    let pdb = d.unit_pdb.spec.as_ref().unwrap();
    assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(
        pdb.selector.as_ref().unwrap().match_labels.as_ref(),
        Some(selector_of(&d.headless_service))
    );
}

#[test]
fn draining_units_keep_their_pods_and_are_labelled_draining() {
    let f = farm("replicas: 2\napp:\n  image: registry.example/shop:1\n");
    let d = build(
        &f,
        &BuildInput {
            unit_replicas: 5,
            drain_since: Some("2026-11-27T10:00:00Z".into()),
            ..input()
        },
    )
    .unwrap();
    assert_eq!(d.unit_statefulset.spec.replicas, Some(5));
    assert_eq!(
        d.unit_statefulset.metadata.annotations.as_ref().unwrap()["stickyfarm.dev/drain-since"],
        "2026-11-27T10:00:00Z"
    );
    let states: Vec<&str> = d
        .unit_services
        .iter()
        .map(|s| s.metadata.labels.as_ref().unwrap()["stickyfarm.dev/unit-state"].as_str())
        .collect();
    assert_eq!(
        states,
        ["serving", "serving", "draining", "draining", "draining"]
    );
}

#[test]
fn gateway_follows_the_spec_and_may_only_read_endpointslices() {
    let d = desired(MINIMAL);
    let dep = &d.gateway_deployment;
    assert_eq!(dep.spec.replicas, Some(1));
    let pod = dep.spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("shop-gateway"));
    assert_eq!(pod.automount_service_account_token, Some(true));
    let gw = &pod.containers[0];
    assert_eq!(
        gw.image.as_deref(),
        Some("ghcr.io/stickyfarm/gateway:0.1.0")
    );
    assert_eq!(env_value(gw, "STICKYFARM_DISCOVERY"), "kubernetes");
    assert_eq!(env_value(gw, "STICKYFARM_FARM"), "shop");
    assert_eq!(
        env(gw, "STICKYFARM_NAMESPACE")
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "metadata.namespace"
    );
    assert_eq!(env_value(gw, "STICKYFARM_POLICY"), "least-in-flight");
    assert_eq!(env_value(gw, "STICKYFARM_FAILBACK"), "stay");
    assert_eq!(
        env_value(gw, "STICKYFARM_CHECK_PATH"),
        "/_stickyfarm/health"
    );
    assert_eq!(env_value(gw, "STICKYFARM_CHECK_INTERVAL"), "2s");
    assert_eq!(env_value(gw, "STICKYFARM_CHECK_TIMEOUT"), "1s");
    assert_eq!(env_value(gw, "STICKYFARM_CHECK_RISE"), "2");
    assert_eq!(env_value(gw, "STICKYFARM_CHECK_FALL"), "3");
    assert_eq!(env_value(gw, "STICKYFARM_CHECK_EXPECT_STATUS"), "200");
    assert_eq!(
        env_value(gw, "STICKYFARM_CHECK_EXPECT_BODY"),
        "stickyfarm-sidecar healthy"
    );
    assert_eq!(env_value(gw, "STICKYFARM_UNIT_ADDRESSING"), "path");
    assert!(gw.env.iter().flatten().all(|e| {
        ![
            "STICKYFARM_FARM_HOST",
            "STICKYFARM_PUBLIC_HOST",
            "STICKYFARM_COOKIE_DOMAIN",
        ]
        .contains(&e.name.as_str())
    }));
    assert_eq!(
        gw.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/readyz")
    );

    let svc = d.gateway_service.spec.as_ref().unwrap();
    assert_eq!(svc.type_.as_deref(), Some("ClusterIP"));
    let port = &svc.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.port, port.target_port.clone()),
        (8080, Some(IntOrString::Int(8000)))
    );
    assert_eq!(
        selector_of(&d.gateway_service)["stickyfarm.dev/component"],
        "gateway"
    );

    let rules = d.gateway_role.rules.as_ref().unwrap();
    assert_eq!(rules.len(), 1, "nothing but EndpointSlices");
    assert_eq!(
        rules[0].api_groups.as_deref(),
        Some(&["discovery.k8s.io".to_owned()][..])
    );
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["endpointslices".to_owned()][..])
    );
    assert_eq!(rules[0].verbs, ["get", "list", "watch"]);
    let rb = &d.gateway_role_binding;
    assert_eq!(rb.role_ref.name, "shop-gateway");
    assert_eq!(rb.role_ref.kind, "Role");
    let subject = &rb.subjects.as_ref().unwrap()[0];
    assert_eq!(
        (
            subject.kind.as_str(),
            subject.name.as_str(),
            subject.namespace.as_deref()
        ),
        ("ServiceAccount", "shop-gateway", Some("prod"))
    );
}

#[test]
fn gateway_options_reach_its_environment() {
    let d = desired(
        "app:\n  image: x\ngateway:\n  replicas: 2\n  serviceType: LoadBalancer\n  port: 443\n  farmHost: shop.example.com\n  publicHost: shop.example.com:8443\n  unitAddressing: host\n  policy: round-robin\n  failback: return\n  healthCheck: {path: /healthz, interval: 5s, timeout: 2s, rise: 3, fall: 4, expectStatus: 204, expectBody: ''}\n",
    );
    let dep = &d.gateway_deployment;
    assert_eq!(dep.spec.replicas, Some(2));
    let gw = &dep.spec.template.spec.as_ref().unwrap().containers[0];
    for (name, want) in [
        ("STICKYFARM_UNIT_ADDRESSING", "host"),
        ("STICKYFARM_FARM_HOST", "shop.example.com"),
        ("STICKYFARM_PUBLIC_HOST", "shop.example.com:8443"),
        ("STICKYFARM_POLICY", "round-robin"),
        ("STICKYFARM_FAILBACK", "return"),
        ("STICKYFARM_CHECK_PATH", "/healthz"),
        ("STICKYFARM_CHECK_INTERVAL", "5s"),
        ("STICKYFARM_CHECK_TIMEOUT", "2s"),
        ("STICKYFARM_CHECK_RISE", "3"),
        ("STICKYFARM_CHECK_FALL", "4"),
        ("STICKYFARM_CHECK_EXPECT_STATUS", "204"),
        ("STICKYFARM_CHECK_EXPECT_BODY", ""),
        // Host-style unit addresses: every `<unit>.<farm host>` must send the farm's cookies.
        ("STICKYFARM_COOKIE_DOMAIN", "shop.example.com"),
    ] {
        assert_eq!(env_value(gw, name), want, "{name}");
    }
    assert_eq!(
        env_value(
            container(&d, "stickyfarm-sidecar"),
            "STICKYFARM_COOKIE_DOMAIN"
        ),
        "shop.example.com",
        "the sidecars set the cookies with the domain the gateway expects"
    );
    let svc = d.gateway_service.spec.as_ref().unwrap();
    assert_eq!(svc.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(svc.ports.as_ref().unwrap()[0].port, 443);
}

#[test]
fn managed_database_with_defaults_and_with_settings() {
    let d = desired(MINIMAL);
    let db = d.database.as_ref().expect("managed by default");
    let sts = &db.statefulset;
    assert_eq!(sts.spec.replicas, Some(1));
    assert_eq!(sts.spec.service_name.as_deref(), Some("shop-db"));
    let retention = sts
        .spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .unwrap();
    assert_eq!(
        (
            retention.when_deleted.as_deref(),
            retention.when_scaled.as_deref()
        ),
        (Some("Retain"), Some("Retain")),
        "the claim is never owned by the StatefulSet: the operator deletes it with the farm"
    );
    let pod = sts.spec.template.spec.as_ref().unwrap();
    assert_eq!(
        pod.security_context.as_ref().unwrap().run_as_user,
        Some(999)
    );
    let pg = &pod.containers[0];
    assert_eq!(pg.image.as_deref(), Some("postgres:17"));
    let secret_key = |name| secret_ref(pg, name);
    // Separate roles: the superuser's password is the database pod's alone; the script that
    // makes the sidecars' and the app's roles gets their passwords from the environment.
    assert_eq!(env_value(pg, "POSTGRES_USER"), "postgres");
    assert_eq!(
        secret_key("POSTGRES_PASSWORD"),
        ("shop-db-superuser".into(), "password".into())
    );
    assert_eq!(
        secret_key("STICKYFARM_SIDECAR_PASSWORD"),
        ("shop-db".into(), "password".into())
    );
    assert_eq!(
        secret_key("STICKYFARM_APP_PASSWORD"),
        ("shop-db-app".into(), "password".into())
    );
    assert_eq!(env_value(pg, "POSTGRES_DB"), "stickyfarm");
    let init = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "init")
        .unwrap();
    let init = init.secret.as_ref().unwrap();
    assert_eq!(init.secret_name.as_deref(), Some("shop-db-superuser"));
    assert_eq!(
        init.items.as_ref().unwrap()[0].path,
        "10-stickyfarm-roles.sh"
    );
    assert!(pg.volume_mounts.iter().flatten().any(|m| m.name == "init"
        && m.mount_path == "/docker-entrypoint-initdb.d"
        && m.read_only == Some(true)));
    // Nothing of the database's reaches the unit pods but the sidecars' own URL.
    let units = d.unit_statefulset.spec.template.spec.as_ref().unwrap();
    for c in &units.containers {
        for e in c.env.iter().flatten() {
            let secret = e
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref());
            assert!(
                secret.is_none_or(|r| r.name != "shop-db-superuser"),
                "{}: {}",
                c.name,
                e.name
            );
        }
    }

    // A database made by an earlier version keeps its one role: only the environment that
    // initialised it, and no script (it would run only on an empty volume anyway).
    let single = build(
        &farm(MINIMAL),
        &BuildInput {
            database_roles: DatabaseRoles::Single,
            ..input()
        },
    )
    .unwrap();
    let single_sts = &single.database.as_ref().unwrap().statefulset;
    let single_pod = single_sts.spec.template.spec.as_ref().unwrap();
    let single_pg = &single_pod.containers[0];
    let key_of = |name| secret_ref(single_pg, name);
    assert_eq!(
        key_of("POSTGRES_USER"),
        ("shop-db".into(), "username".into())
    );
    assert_eq!(
        key_of("POSTGRES_PASSWORD"),
        ("shop-db".into(), "password".into())
    );
    assert_eq!(single_pod.volumes, None);
    assert!(pg.readiness_probe.as_ref().unwrap().exec.is_some());
    let pvc = &sts.spec.volume_claim_templates.as_ref().unwrap()[0];
    let pvc_spec = pvc.spec.as_ref().unwrap();
    assert_eq!(
        pvc_spec
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()["storage"]
            .0,
        "1Gi"
    );
    assert_eq!(pvc_spec.storage_class_name, None);
    let port = &db.service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
    assert_eq!(port.port, 5432);

    let d = desired(
        "app:\n  image: x\ndatabase:\n  managed: {storage: 20Gi, storageClass: fast, image: 'postgres:16'}\n",
    );
    let sts = &d.database.as_ref().unwrap().statefulset;
    assert_eq!(
        sts.spec.template.spec.as_ref().unwrap().containers[0]
            .image
            .as_deref(),
        Some("postgres:16")
    );
    let pvc_spec = sts.spec.volume_claim_templates.as_ref().unwrap()[0]
        .spec
        .as_ref()
        .unwrap();
    assert_eq!(pvc_spec.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(
        pvc_spec
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()["storage"]
            .0,
        "20Gi"
    );
}

#[test]
fn an_external_database_replaces_the_managed_one() {
    let d = desired("app:\n  image: x\ndatabase:\n  external: {secretName: corp-pg, key: dsn}\n");
    assert!(d.database.is_none());
    let db = env(container(&d, "stickyfarm-sidecar"), "DATABASE_URL")
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .clone()
        .unwrap();
    assert_eq!((db.name.as_str(), db.key.as_str()), ("corp-pg", "dsn"));
    let policies: Vec<&str> = d
        .network_policies
        .iter()
        .map(|p| p.metadata.name.as_deref().unwrap())
        .collect();
    assert_eq!(
        policies,
        ["shop-units", "shop-gateway"],
        "no database policy"
    );
}

#[test]
fn an_external_database_with_a_ca_is_verified_fully_by_the_sidecars_only() {
    let d = desired(
        "app:\n  image: x\ndatabase:\n  external:\n    secretName: corp-pg\n    ca: {secretName: corp-pg-ca, key: root.pem}\n",
    );
    let sc = container(&d, "stickyfarm-sidecar");
    assert_eq!(env_value(sc, "PGSSLMODE"), "verify-full");
    assert_eq!(
        env_value(sc, "PGSSLROOTCERT"),
        "/etc/stickyfarm/postgres-ca/ca.crt"
    );
    let mount = sc
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "postgres-ca")
        .expect("the CA is mounted");
    assert_eq!(mount.read_only, Some(true));
    let pod = d.unit_statefulset.spec.template.spec.as_ref().unwrap();
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "postgres-ca")
        .unwrap();
    let secret = volume.secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("corp-pg-ca"));
    let item = &secret.items.as_ref().unwrap()[0];
    assert_eq!(
        (item.key.as_str(), item.path.as_str()),
        ("root.pem", "ca.crt")
    );
    // Without a CA nothing changes (the URL's own sslmode applies).
    let plain = desired("app:\n  image: x\ndatabase:\n  external: {secretName: corp-pg}\n");
    let sc = container(&plain, "stickyfarm-sidecar");
    assert!(
        sc.env
            .iter()
            .flatten()
            .all(|e| e.name != "PGSSLMODE" && e.name != "PGSSLROOTCERT")
    );
}

/// (Secret, key) an environment variable of `c` is taken from.
fn secret_ref(c: &Container, name: &str) -> (String, String) {
    let r = env(c, name)
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    (r.name.clone(), r.key.clone())
}

#[test]
fn generated_credentials_secret() {
    let s = database_secret(&farm(MINIMAL), "0123abcd").unwrap();
    assert_eq!(s.metadata.name.as_deref(), Some("shop-db"));
    assert_eq!(
        s.metadata.owner_references, None,
        "no owner: the garbage collector never deletes the credentials"
    );
    let labels = s.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["stickyfarm.dev/farm"], "shop");
    assert_eq!(labels["stickyfarm.dev/component"], "database");
    assert_eq!(s.immutable, Some(true));
    let data = s.string_data.unwrap();
    assert_eq!(data["username"], "stickyfarm");
    assert_eq!(data["password"], "0123abcd");
    assert_eq!(data["database"], "stickyfarm");
    assert_eq!(
        data["url"],
        "postgres://stickyfarm:0123abcd@shop-db.prod.svc:5432/stickyfarm"
    );
    assert_eq!(
        s.metadata.annotations.unwrap()["stickyfarm.dev/database-roles"],
        "separate"
    );

    let app = database_app_secret(&farm(MINIMAL), "feed").unwrap();
    assert_eq!(app.metadata.name.as_deref(), Some("shop-db-app"));
    assert_eq!(app.metadata.owner_references, None);
    assert_eq!(app.immutable, Some(true));
    assert_eq!(
        app.string_data.unwrap()["url"],
        "postgres://stickyfarm_app:feed@shop-db.prod.svc:5432/stickyfarm"
    );
    let su = database_superuser_secret(&farm(MINIMAL), "beef").unwrap();
    assert_eq!(su.metadata.name.as_deref(), Some("shop-db-superuser"));
    assert_eq!(su.metadata.owner_references, None);
    let data = su.string_data.unwrap();
    assert_eq!(data["username"], "postgres");
    assert_eq!(data["password"], "beef");
    let script = &data["init-roles.sh"];
    assert!(
        !script.contains("beef"),
        "passwords come from the environment"
    );
    // The script names the roles and the database the Secrets and the StatefulSet use.
    for line in [
        format!("CREATE ROLE {DATABASE_USER} LOGIN"),
        format!("CREATE ROLE {APP_USER} LOGIN"),
        format!("CREATE SCHEMA {DATABASE_USER} AUTHORIZATION {DATABASE_USER};"),
        format!("REVOKE ALL ON DATABASE {DATABASE_NAME} FROM PUBLIC;"),
        format!("GRANT USAGE, CREATE ON SCHEMA public TO {APP_USER};"),
    ] {
        assert!(script.contains(&line), "{line}");
    }
}

#[test]
fn network_policies_let_only_the_gateway_reach_units_and_only_units_reach_the_database() {
    let d = desired(MINIMAL);
    let policy = |name: &str| {
        d.network_policies
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no policy {name}"))
            .spec
            .clone()
            .unwrap()
    };
    let units = policy("shop-units");
    assert_eq!(
        units.policy_types.as_deref(),
        Some(&["Ingress".to_owned()][..])
    );
    assert_eq!(
        units
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["stickyfarm.dev/component"],
        "unit"
    );
    let ingress = units.ingress.unwrap();
    let public = &ingress[0];
    assert_eq!(
        public.ports.as_ref().unwrap()[0].port,
        Some(IntOrString::Int(8080))
    );
    let from = public.from.as_ref().unwrap();
    assert_eq!(from.len(), 1);
    let from_labels = from[0]
        .pod_selector
        .as_ref()
        .unwrap()
        .match_labels
        .as_ref()
        .unwrap();
    assert_eq!(from_labels["stickyfarm.dev/component"], "gateway");
    assert_eq!(from_labels["stickyfarm.dev/farm"], "shop");
    assert!(from[0].namespace_selector.is_none(), "same namespace only");
    let metrics = &ingress[1];
    assert_eq!(
        metrics.ports.as_ref().unwrap()[0].port,
        Some(IntOrString::Int(9464))
    );
    let scrapers = metrics.from.as_ref().unwrap();
    assert_eq!(scrapers.len(), 1);
    assert!(
        scrapers[0].pod_selector.is_none(),
        "any pod of a scrape namespace"
    );
    let ns = scrapers[0]
        .namespace_selector
        .as_ref()
        .unwrap()
        .match_expressions
        .as_ref()
        .unwrap();
    assert_eq!(ns.len(), 1);
    assert_eq!(
        (ns[0].key.as_str(), ns[0].operator.as_str()),
        ("kubernetes.io/metadata.name", "In")
    );
    assert_eq!(
        ns[0].values.as_deref(),
        Some(&["stickyfarm-system".to_owned()][..])
    );

    let db = policy("shop-db");
    let ingress = db.ingress.unwrap();
    assert_eq!(ingress.len(), 1);
    assert_eq!(
        ingress[0].ports.as_ref().unwrap()[0].port,
        Some(IntOrString::Int(5432))
    );
    let from_labels = ingress[0].from.as_ref().unwrap()[0]
        .pod_selector
        .as_ref()
        .unwrap()
        .match_labels
        .clone()
        .unwrap();
    assert_eq!(from_labels["stickyfarm.dev/component"], "unit");

    let gw = policy("shop-gateway");
    let ingress = gw.ingress.unwrap();
    assert!(ingress[0].from.is_none(), "clients from anywhere");
    assert_eq!(
        ingress[0].ports.as_ref().unwrap()[0].port,
        Some(IntOrString::Int(8000))
    );
    assert_eq!(
        ingress[1].ports.as_ref().unwrap()[0].port,
        Some(IntOrString::Int(9465)),
        "the read-only admin port, for scrapers"
    );
    assert_eq!(ingress[1].from, metrics.from, "the same scrapers");
    let admitted: Vec<IntOrString> = ingress
        .iter()
        .flat_map(|r| r.ports.iter().flatten())
        .filter_map(|p| p.port.clone())
        .collect();
    assert!(
        !admitted.contains(&IntOrString::Int(9466)),
        "no rule admits anyone to the control port: {admitted:?}"
    );
}

#[test]
fn scrapers_selected_by_labels_reach_only_the_metrics_ports() {
    let selector = |k: &str, v: &str| LabelSelector {
        match_labels: Some(BTreeMap::from([(k.to_owned(), v.to_owned())])),
        ..LabelSelector::default()
    };
    let d = build(
        &farm(MINIMAL),
        &BuildInput {
            scrapers: Scrapers {
                // Names are ignored once a selector picks the namespaces.
                namespaces: vec!["stickyfarm-system".into()],
                namespace_selector: Some(selector("kubernetes.io/metadata.name", "monitoring")),
                pod_selector: Some(selector("app.kubernetes.io/name", "prometheus")),
            },
            ..input()
        },
    )
    .unwrap();
    for (policy, metrics_port) in [("shop-units", 9464), ("shop-gateway", 9465)] {
        let p = d
            .network_policies
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(policy))
            .unwrap();
        let rules = p.spec.as_ref().unwrap().ingress.clone().unwrap();
        let scrape = rules
            .iter()
            .find(|r| r.ports.as_ref().unwrap()[0].port == Some(IntOrString::Int(metrics_port)))
            .unwrap();
        let peers = scrape.from.as_ref().unwrap();
        assert_eq!(peers.len(), 1, "{policy}: one peer, both selectors ANDed");
        assert_eq!(
            peers[0].namespace_selector,
            Some(selector("kubernetes.io/metadata.name", "monitoring"))
        );
        assert_eq!(
            peers[0].pod_selector,
            Some(selector("app.kubernetes.io/name", "prometheus"))
        );
    }
}

#[test]
fn without_scrape_namespaces_no_pod_may_scrape() {
    let d = build(
        &farm(MINIMAL),
        &BuildInput {
            scrapers: Scrapers::default(),
            ..input()
        },
    )
    .unwrap();
    for p in &d.network_policies {
        let rules = p.spec.as_ref().unwrap().ingress.as_ref().unwrap();
        let ports: Vec<_> = rules
            .iter()
            .flat_map(|r| r.ports.iter().flatten())
            .filter_map(|p| p.port.clone())
            .collect();
        assert!(
            !ports.contains(&IntOrString::Int(9464)) && !ports.contains(&IntOrString::Int(9465)),
            "{:?}: {ports:?}",
            p.metadata.name
        );
    }
}

#[test]
fn the_tokens_secret_is_owned_and_each_pod_mounts_only_its_keys() {
    let f = farm(MINIMAL);
    let admin = stickyfarm_api::token::Token::generate().unwrap();
    let gateway = stickyfarm_api::token::Token::generate().unwrap();
    let s = tokens_secret(&f, &admin, &gateway).unwrap();
    assert_eq!(s.metadata.name.as_deref(), Some("shop-gateway-tokens"));
    assert_eq!(
        s.metadata.owner_references.as_ref().unwrap()[0].uid,
        f.metadata.uid.clone().unwrap(),
        "deleted with the farm"
    );
    assert_eq!(s.immutable, Some(true));
    let data = s.string_data.unwrap();
    assert_eq!(data["admin-token"], admin.expose());
    assert_eq!(data["gateway-token"], gateway.expose());

    let d = desired(MINIMAL);
    // (Secret, key) of every file in the pod's tokens volume.
    let keys_of = |volumes: &[k8s_openapi::api::core::v1::Volume]| -> Vec<(String, String)> {
        let v = volumes
            .iter()
            .find(|v| v.name == "stickyfarm-tokens")
            .expect("a tokens volume");
        let mut files = Vec::new();
        for source in v.projected.as_ref().unwrap().sources.iter().flatten() {
            let secret = source.secret.as_ref().unwrap();
            for item in secret.items.iter().flatten() {
                assert_eq!(item.path, item.key);
                files.push((secret.name.clone(), item.key.clone()));
            }
        }
        files
    };
    let pair = |s: &str, k: &str| (s.to_owned(), k.to_owned());
    let gw_pod = d.gateway_deployment.spec.template.spec.as_ref().unwrap();
    assert_eq!(
        keys_of(gw_pod.volumes.as_ref().unwrap()),
        [
            pair("shop-gateway-tokens", "admin-token"),
            pair("shop-gateway-tokens", "gateway-token")
        ]
    );
    let gw = &gw_pod.containers[0];
    assert_eq!(
        env(gw, "STICKYFARM_ADMIN_TOKEN_FILE").value.as_deref(),
        Some("/var/run/secrets/stickyfarm/admin-token")
    );
    assert_eq!(
        env(gw, "STICKYFARM_GATEWAY_TOKEN_FILE").value.as_deref(),
        Some("/var/run/secrets/stickyfarm/gateway-token")
    );
    let unit_pod = d.unit_statefulset.spec.template.spec.as_ref().unwrap();
    assert_eq!(
        keys_of(unit_pod.volumes.as_ref().unwrap()),
        [
            pair("shop-gateway-tokens", "gateway-token"),
            pair("shop-session-id-key", "session-id-key")
        ],
        "units never get the admin token"
    );
    let mounts = |c: &Container| -> Vec<String> {
        c.volume_mounts
            .iter()
            .flatten()
            .map(|m| m.name.clone())
            .collect()
    };
    assert!(mounts(container(&d, "stickyfarm-sidecar")).contains(&"stickyfarm-tokens".into()));
    assert!(
        !mounts(container(&d, "app")).contains(&"stickyfarm-tokens".into()),
        "the app never sees the gateway token"
    );
    assert_eq!(
        env(
            container(&d, "stickyfarm-sidecar"),
            "STICKYFARM_GATEWAY_TOKEN_FILE"
        )
        .value
        .as_deref(),
        Some("/var/run/secrets/stickyfarm/gateway-token")
    );
    assert_eq!(
        env(
            container(&d, "stickyfarm-sidecar"),
            "STICKYFARM_SESSION_ID_KEY_FILE"
        )
        .value
        .as_deref(),
        Some("/var/run/secrets/stickyfarm/session-id-key")
    );

    // The session-id key outlives the farm's owned objects, like the database credentials.
    let key = stickyfarm_api::token::Token::generate().unwrap();
    let s = session_id_key_secret(&f, &key).unwrap();
    assert_eq!(s.metadata.name.as_deref(), Some("shop-session-id-key"));
    assert_eq!(
        s.metadata.owner_references, None,
        "out of the collector's reach"
    );
    assert_eq!(
        s.metadata.labels.as_ref().unwrap()["stickyfarm.dev/component"],
        "database"
    );
    assert_eq!(s.immutable, Some(true));
    assert_eq!(s.string_data.unwrap()["session-id-key"], key.expose());
}

/// Pruning looks at the unit Services and at `managed_database_keys`: those must be exactly
/// what a build can stop producing. Between a managed and an external database the builds
/// differ by the database's objects and nothing else; between sizes, by unit Services only.
#[test]
fn what_a_build_can_stop_producing_is_what_pruning_looks_at() {
    let managed = desired("app:\n  image: x\n").keys();
    let external =
        desired("app:\n  image: x\ndatabase:\n  external: {secretName: pg, key: url}\n").keys();
    assert!(external.is_subset(&managed));
    let gone: BTreeSet<_> = managed.difference(&external).cloned().collect();
    let f = farm("app:\n  image: x\n");
    assert_eq!(
        gone,
        managed_database_keys(&f)
            .into_iter()
            .collect::<BTreeSet<_>>()
    );

    let three = desired("replicas: 3\napp:\n  image: x\n").keys();
    let one = desired("replicas: 1\napp:\n  image: x\n").keys();
    let gone: Vec<_> = three.difference(&one).collect();
    assert_eq!(gone.len(), 2);
    assert!(gone.iter().all(|k| k.kind == OwnedKind::Service
        && k.name.starts_with("shop-")
        && k.name[5..].parse::<u32>().is_ok()));
    assert!(one.is_subset(&three));
    // Every kind the farm owns is built by some farm (the list has no stale entries).
    let built: BTreeSet<_> = managed.iter().map(|k| k.kind).collect();
    assert_eq!(built, OWNED_KINDS.into_iter().collect());
}

#[test]
fn the_database_statefulset_carries_its_delete_policy() {
    let policy = |spec: &str| {
        desired(spec)
            .database
            .expect("managed")
            .statefulset
            .metadata
            .annotations
            .expect("annotated")[DELETE_POLICY_ANNOTATION]
            .clone()
    };
    assert_eq!(policy("app:\n  image: x\n"), "Delete");
    assert_eq!(
        policy("app:\n  image: x\ndatabase:\n  managed: {deletePolicy: Retain}\n"),
        "Retain"
    );
}

/// A private registry: every pod the operator makes (units, gateway, managed database) pulls
/// with the installation's Secrets; without any, the pod specs name none.
#[test]
fn every_pod_pulls_with_the_installations_secrets() {
    let pull = |d: &Desired| {
        let names = |spec: &Option<k8s_openapi::api::core::v1::PodSpec>| {
            spec.as_ref()
                .and_then(|s| s.image_pull_secrets.clone())
                .map(|v| v.into_iter().map(|r| r.name).collect::<Vec<_>>())
        };
        [
            names(&d.unit_statefulset.spec.template.spec),
            names(&d.gateway_deployment.spec.template.spec),
            names(
                &d.database
                    .as_ref()
                    .expect("managed")
                    .statefulset
                    .spec
                    .template
                    .spec,
            ),
        ]
    };
    assert_eq!(pull(&desired(MINIMAL)), [None, None, None]);
    let mut with = input();
    with.images.pull_secrets = vec!["regcred".into(), "mirror".into()];
    let d = build(&farm(MINIMAL), &with).expect("builds");
    let both = Some(vec!["regcred".to_owned(), "mirror".to_owned()]);
    assert_eq!(pull(&d), [both.clone(), both.clone(), both]);
}

/// TLS from a Secret: mounted whole (the kubelet then updates the files on renewal, which a
/// `subPath` mount would never see), readable by the gateway only, named in its errors; the
/// redirect gets its own port, on the Service and in the NetworkPolicy.
#[test]
fn gateway_tls_mounts_the_secret_and_opens_the_redirect() {
    let d = desired(
        "app:\n  image: x\ngateway:\n  port: 443\n  tls: {secretName: shop-tls, redirectHttp: true, hstsMaxAge: 8760h}\n  tunnels: {maxPerUnit: 64, idleTimeout: 10m}\n",
    );
    let pod = d.gateway_deployment.spec.template.spec.as_ref().unwrap();
    let gw = &pod.containers[0];
    for (name, want) in [
        ("STICKYFARM_TLS_CERT", "/etc/stickyfarm/tls/tls.crt"),
        ("STICKYFARM_TLS_KEY", "/etc/stickyfarm/tls/tls.key"),
        ("STICKYFARM_TLS_ORIGIN", "Secret prod/shop-tls"),
        ("STICKYFARM_GATEWAY_REDIRECT_LISTEN", "0.0.0.0:8001"),
        ("STICKYFARM_REDIRECT_PORT", "443"),
        ("STICKYFARM_HSTS_MAX_AGE", "8760h"),
        ("STICKYFARM_MAX_TUNNELS_PER_UNIT", "64"),
        ("STICKYFARM_TUNNEL_IDLE_TIMEOUT", "10m"),
    ] {
        assert_eq!(env_value(gw, name), want, "{name}");
    }
    let volume = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "tls")
        .expect("the TLS volume");
    let secret = volume.secret.as_ref().expect("a whole-Secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some("shop-tls"));
    assert_eq!(secret.default_mode, Some(0o400));
    let mount = gw
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "tls")
        .unwrap();
    assert_eq!(mount.mount_path, "/etc/stickyfarm/tls");
    assert_eq!(mount.read_only, Some(true));
    assert!(mount.sub_path.is_none());

    let ports = d
        .gateway_service
        .spec
        .as_ref()
        .unwrap()
        .ports
        .clone()
        .unwrap();
    let by_name = |n: &str| ports.iter().find(|p| p.name.as_deref() == Some(n)).unwrap();
    assert_eq!(by_name("https").port, 443);
    assert_eq!(by_name("http").port, 80);
    assert_eq!(by_name("http").target_port, Some(IntOrString::Int(8001)));
    let policy = d
        .network_policies
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("shop-gateway"))
        .unwrap();
    let open: Vec<_> = policy
        .spec
        .as_ref()
        .unwrap()
        .ingress
        .as_ref()
        .unwrap()
        .iter()
        .filter(|r| r.from.is_none())
        .flat_map(|r| r.ports.clone().unwrap())
        .map(|p| p.port.unwrap())
        .collect();
    assert_eq!(open, [IntOrString::Int(8000), IntOrString::Int(8001)]);

    // The sidecars' tunnels follow the same idle timeout.
    assert_eq!(
        env_value(
            container(&d, "stickyfarm-sidecar"),
            "STICKYFARM_TUNNEL_IDLE_TIMEOUT"
        ),
        "10m"
    );
    // Without TLS: no volume, no redirect, the Service's one port is http.
    let plain = desired(MINIMAL);
    let pod = plain
        .gateway_deployment
        .spec
        .template
        .spec
        .as_ref()
        .unwrap();
    assert!(
        pod.volumes
            .as_ref()
            .unwrap()
            .iter()
            .all(|v| v.name != "tls")
    );
    let ports = plain
        .gateway_service
        .spec
        .as_ref()
        .unwrap()
        .ports
        .clone()
        .unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].name.as_deref(), Some("http"));
}

#[test]
fn traces_go_to_the_farms_collector_else_the_operators_and_nowhere_without_either() {
    let otel = |c: &Container| -> Vec<(String, String)> {
        c.env
            .iter()
            .flatten()
            .filter(|e| e.name.starts_with("OTEL_"))
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect()
    };
    let gateway = |d: &Desired| {
        d.gateway_deployment
            .spec
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .clone()
    };

    // Neither: nothing is exported, and the pods are as before.
    let plain = desired("app:\n  image: x\n");
    assert!(otel(container(&plain, "stickyfarm-sidecar")).is_empty());
    assert!(otel(&gateway(&plain)).is_empty());

    // The operator's collector, for a farm that names none.
    let with_operators = build(
        &farm("app:\n  image: x\n"),
        &BuildInput {
            trace_collector: Some("http://otel.observability:4318".into()),
            ..input()
        },
    )
    .unwrap();
    for c in [
        container(&with_operators, "stickyfarm-sidecar").clone(),
        gateway(&with_operators),
    ] {
        let env = otel(&c);
        assert_eq!(
            env[0],
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                "http://otel.observability:4318".into()
            ),
            "{}",
            c.name
        );
        // The pod is named from POD_NAME, which Kubernetes expands only when it comes first.
        let names: Vec<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
        let pod_name = names
            .iter()
            .position(|n| *n == "POD_NAME")
            .expect("POD_NAME");
        let attrs = names
            .iter()
            .position(|n| *n == "OTEL_RESOURCE_ATTRIBUTES")
            .unwrap();
        assert!(pod_name < attrs, "{}: {names:?}", c.name);
        assert_eq!(
            env_value(&c, "OTEL_RESOURCE_ATTRIBUTES"),
            "service.namespace=shop,k8s.namespace.name=prod,k8s.pod.name=$(POD_NAME)"
        );
    }

    // The farm's own collector and sampling win.
    let own = build(
        &farm("app:\n  image: x\ntracing:\n  otlpEndpoint: https://collector.tracing:4318\n  samplingRatio: 0.1\n  ca: {secretName: collector-ca, key: ca.crt}\n"),
        &BuildInput {
            trace_collector: Some("http://otel.observability:4318".into()),
            ..input()
        },
    )
    .unwrap();
    for c in [container(&own, "stickyfarm-sidecar").clone(), gateway(&own)] {
        assert_eq!(
            env_value(&c, "OTEL_EXPORTER_OTLP_ENDPOINT"),
            "https://collector.tracing:4318"
        );
        assert_eq!(
            env_value(&c, "OTEL_TRACES_SAMPLER"),
            "parentbased_traceidratio"
        );
        assert_eq!(env_value(&c, "OTEL_TRACES_SAMPLER_ARG"), "0.1");
        // The collector's CA, mounted from its Secret where the variable says.
        let ca = env_value(&c, "OTEL_EXPORTER_OTLP_CERTIFICATE");
        let mount = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "otlp-ca")
            .unwrap_or_else(|| panic!("{}: no CA mount", c.name));
        assert_eq!(ca, format!("{}/ca.crt", mount.mount_path));
        assert_eq!(mount.read_only, Some(true));
    }
    let gateway_pod = own.gateway_deployment.spec.template.spec.as_ref().unwrap();
    let unit_pod = own.unit_statefulset.spec.template.spec.as_ref().unwrap();
    for volumes in [&gateway_pod.volumes, &unit_pod.volumes] {
        let v = volumes
            .iter()
            .flatten()
            .find(|v| v.name == "otlp-ca")
            .expect("the CA volume");
        let secret = v.secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("collector-ca"));
        assert_eq!(secret.items.as_ref().unwrap()[0].key, "ca.crt");
    }
    // The app container gets neither: the CA is the sidecar's.
    assert!(
        container(&own, "app")
            .volume_mounts
            .iter()
            .flatten()
            .all(|m| m.name != "otlp-ca")
    );
}
