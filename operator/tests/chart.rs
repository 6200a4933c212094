//! The Helm chart as rendered by `helm template`: the CRD it installs is the generated one,
//! its RBAC covers exactly what the reconciler does, and the operator runs locked down.
//!
//! Needs helm: `scripts/test` builds it from Go modules and sets `HELM`. Without it these
//! tests say so loudly and do not check anything.

mod common;

use std::path::Path;

use common::{find, render, render_result};
use kube::CustomResourceExt;
use serde_json::{Value, json};
use stickyfarm_api::farm::ServerFarm;

/// A container's environment variable `name`, as rendered.
fn container_env(c: &Value, name: &str) -> Value {
    c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no env {name}"))
        .clone()
}

fn verbs(rules: &Value, group: &str, resource: &str) -> Vec<String> {
    let mut out: Vec<String> = rules
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["apiGroups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g == group)
                && r["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x == resource)
        })
        .flat_map(|r| {
            r["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn the_chart_installs_the_generated_crd_and_keeps_it() {
    let Some(docs) = render(&[]) else { return };
    let crd = find(
        &docs,
        "CustomResourceDefinition",
        "serverfarms.stickyfarm.dev",
    );
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let generated = serde_json::to_value(ServerFarm::crd()).unwrap();
    assert_eq!(
        crd["spec"], generated["spec"],
        "the chart's CRD is the one generated from the types"
    );
    let Some(docs) = render(&["crds.enabled=false"]) else {
        return;
    };
    assert!(docs.iter().all(|d| d["kind"] != "CustomResourceDefinition"));
}

#[test]
fn rbac_grants_what_the_reconciler_does_and_nothing_more() {
    let Some(docs) = render(&[]) else { return };
    let role = find(&docs, "ClusterRole", "stickyfarm");
    let rules = &role["rules"];
    let text = rules.to_string();
    assert!(!text.contains("\"*\""), "no wildcards: {text}");
    // Applied with server-side apply: create + patch. Watched kinds also get/list/watch.
    for (group, resource, want) in [
        (
            "stickyfarm.dev",
            "serverfarms",
            &["get", "list", "patch", "watch"][..],
        ),
        ("stickyfarm.dev", "serverfarms/status", &["get", "patch"]),
        // delete: the managed database's, after a switch to an external database.
        (
            "apps",
            "statefulsets",
            &["create", "delete", "get", "list", "patch", "watch"],
        ),
        (
            "apps",
            "deployments",
            &["create", "get", "list", "patch", "watch"],
        ),
        (
            "",
            "services",
            &["create", "delete", "get", "list", "patch", "watch"],
        ),
        ("", "pods", &["get", "list", "watch"]),
        // The managed database's credentials and claim are unowned: deleted by the operator.
        ("", "secrets", &["create", "delete", "get", "patch"]),
        ("", "persistentvolumeclaims", &["delete", "get"]),
        // Every applied kind is read first: an object the farm does not own is left alone.
        ("", "serviceaccounts", &["create", "get", "patch"]),
        (
            "rbac.authorization.k8s.io",
            "roles",
            &["create", "get", "patch"],
        ),
        (
            "rbac.authorization.k8s.io",
            "rolebindings",
            &["create", "get", "patch"],
        ),
        (
            "discovery.k8s.io",
            "endpointslices",
            &["get", "list", "watch"],
        ),
        (
            "networking.k8s.io",
            "networkpolicies",
            &["create", "delete", "get", "patch"],
        ),
        (
            "policy",
            "poddisruptionbudgets",
            &["create", "get", "patch"],
        ),
        ("events.k8s.io", "events", &["create", "patch"]),
    ] {
        assert_eq!(verbs(rules, group, resource), want, "{group}/{resource}");
    }
    assert_eq!(rules.as_array().unwrap().len(), 14, "no other rules");
    let binding = find(&docs, "ClusterRoleBinding", "stickyfarm");
    assert_eq!(binding["subjects"][0]["name"], "sf-stickyfarm");
    assert_eq!(binding["subjects"][0]["namespace"], "stickyfarm-system");
    let leases = find(&docs, "Role", "leader-election");
    assert_eq!(leases["metadata"]["namespace"], "stickyfarm-system");
    assert_eq!(
        verbs(&leases["rules"], "coordination.k8s.io", "leases"),
        ["create", "get", "patch", "update"]
    );

    // One watched namespace: a Role there instead of a ClusterRole.
    let Some(docs) = render(&["watchNamespace=shop"]) else {
        return;
    };
    assert!(docs.iter().all(|d| d["kind"] != "ClusterRole"));
    let role = find(&docs, "Role", "sf-stickyfarm");
    assert_eq!(role["metadata"]["namespace"], "shop");
}

#[test]
fn the_operator_runs_locked_down_with_the_images_of_its_version() {
    let Some(docs) = render(&[]) else { return };
    let dep = find(&docs, "Deployment", "stickyfarm");
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "sf-stickyfarm");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "ghcr.io/stickyfarm/operator:0.1.0");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    let env = |name: &str| container_env(c, name);
    assert_eq!(
        env("STICKYFARM_SIDECAR_IMAGE")["value"],
        "ghcr.io/stickyfarm/sidecar:0.1.0"
    );
    assert_eq!(
        env("STICKYFARM_GATEWAY_IMAGE")["value"],
        "ghcr.io/stickyfarm/gateway:0.1.0"
    );
    assert_eq!(env("STICKYFARM_LEADER_ELECT")["value"], "true");
    assert_eq!(
        env("POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    let np = find(&docs, "NetworkPolicy", "stickyfarm");
    let scrapers = &np["spec"]["ingress"][0]["from"];
    assert_eq!(
        scrapers[0]["namespaceSelector"]["matchExpressions"],
        serde_json::json!([{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["stickyfarm-system"]}]),
        "by default only pods of the release namespace scrape"
    );
    assert_eq!(scrapers.as_array().unwrap().len(), 1);
    assert_eq!(
        env("STICKYFARM_SCRAPE_NAMESPACES")["value"],
        "stickyfarm-system",
        "the farms' policies admit the same namespaces"
    );
    assert_eq!(
        env("STICKYFARM_ALLOWED_SERVICE_TYPES")["value"],
        "ClusterIP",
        "farms stay inside the cluster unless the administrator allows more"
    );
}

#[test]
fn scrape_namespaces_come_from_the_values() {
    let Some(docs) = render(&["metrics.scrapeNamespaces={monitoring,observability}"]) else {
        return;
    };
    let np = find(&docs, "NetworkPolicy", "stickyfarm");
    assert_eq!(
        np["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"],
        serde_json::json!(["monitoring", "observability"])
    );
    let c = &find(&docs, "Deployment", "stickyfarm")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container_env(c, "STICKYFARM_SCRAPE_NAMESPACES")["value"],
        "monitoring,observability"
    );
}

#[test]
fn scrapers_can_be_selected_by_labels_and_both_ways_at_once_are_refused() {
    let Some(docs) = render(&[
        "metrics.scrapeNamespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=monitoring",
        "metrics.scrapePodSelector.matchLabels.app\\.kubernetes\\.io/name=prometheus",
    ]) else {
        return;
    };
    let np = find(&docs, "NetworkPolicy", "stickyfarm");
    let peer = &np["spec"]["ingress"][0]["from"][0];
    assert_eq!(
        peer["namespaceSelector"],
        json!({"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}})
    );
    assert_eq!(
        peer["podSelector"],
        json!({"matchLabels": {"app.kubernetes.io/name": "prometheus"}})
    );
    // The operator gets the same selectors, as JSON its flags parse, and no names.
    let c = &find(&docs, "Deployment", "stickyfarm")["spec"]["template"]["spec"]["containers"][0];
    let parsed = |name: &str| -> Value {
        serde_json::from_str(container_env(c, name)["value"].as_str().unwrap()).unwrap()
    };
    assert_eq!(
        parsed("STICKYFARM_SCRAPE_NAMESPACE_SELECTOR"),
        peer["namespaceSelector"]
    );
    assert_eq!(
        parsed("STICKYFARM_SCRAPE_POD_SELECTOR"),
        peer["podSelector"]
    );
    assert!(
        !c["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "STICKYFARM_SCRAPE_NAMESPACES")
    );

    let both = render_result(&[
        "metrics.scrapeNamespaces={monitoring}",
        "metrics.scrapeNamespaceSelector.matchLabels.team=obs",
    ])
    .unwrap()
    .expect_err("names and a selector at once");
    assert!(both.contains("set one of them"), "{both}");
    let bad = render_result(&["metrics.scrapePodSelector.matchExpressions[0].key=app,metrics.scrapePodSelector.matchExpressions[0].operator=Equals"])
        .unwrap()
        .expect_err("an unknown selector operator");
    assert!(bad.contains("scrapePodSelector"), "{bad}");
}

#[test]
fn a_global_registry_serves_every_image_the_chart_and_the_operator_run() {
    let Some(docs) = render(&["global.imageRegistry=mirror.example:5000/hub"]) else {
        return;
    };
    let d = find(&docs, "Deployment", "stickyfarm");
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "mirror.example:5000/hub/operator:0.1.0");
    for (env, image) in [
        (
            "STICKYFARM_SIDECAR_IMAGE",
            "mirror.example:5000/hub/sidecar:0.1.0",
        ),
        (
            "STICKYFARM_GATEWAY_IMAGE",
            "mirror.example:5000/hub/gateway:0.1.0",
        ),
        // Docker Hub's image, named without a host: from the mirror too.
        (
            "STICKYFARM_POSTGRES_IMAGE",
            "mirror.example:5000/hub/postgres:17",
        ),
    ] {
        assert_eq!(container_env(c, env)["value"], image, "{env}");
    }
    let test_pod = find(&docs, "Pod", "-operator-answers");
    assert_eq!(
        test_pod["spec"]["containers"][0]["image"],
        "mirror.example:5000/hub/busybox:1.37"
    );
    // A reference that names its registry is the user's choice and is left alone.
    let Some(docs) = render(&[
        "global.imageRegistry=mirror.example",
        "postgresImage=quay.io/pg/postgres:17",
        "tests.image=localhost/busybox:1",
    ]) else {
        return;
    };
    let c = &find(&docs, "Deployment", "stickyfarm")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container_env(c, "STICKYFARM_POSTGRES_IMAGE")["value"],
        "quay.io/pg/postgres:17"
    );
    assert_eq!(
        find(&docs, "Pod", "-operator-answers")["spec"]["containers"][0]["image"],
        "localhost/busybox:1"
    );
    let bad = render_result(&["global.imageRegistry=not a registry"])
        .unwrap()
        .expect_err("a registry with a space");
    assert!(bad.contains("/global/imageRegistry"), "{bad}");
}

#[test]
fn images_can_be_pinned_by_digest_and_a_malformed_digest_is_refused() {
    let digest = format!("sha256:{}", "ab12".repeat(16));
    let operator = format!("image.digests.operator={digest}");
    let sidecar = format!("image.digests.sidecar={digest}");
    let Some(docs) = render(&[&operator, &sidecar]) else {
        return;
    };
    let c = &find(&docs, "Deployment", "stickyfarm")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], format!("ghcr.io/stickyfarm/operator@{digest}"));
    let env = |name: &str| container_env(c, name)["value"].clone();
    assert_eq!(
        env("STICKYFARM_SIDECAR_IMAGE"),
        format!("ghcr.io/stickyfarm/sidecar@{digest}")
    );
    assert_eq!(
        env("STICKYFARM_GATEWAY_IMAGE"),
        "ghcr.io/stickyfarm/gateway:0.1.0",
        "unpinned images keep their tag"
    );
    let err = render_result(&["image.digests.gateway=latest"])
        .unwrap()
        .unwrap_err();
    assert!(err.contains("at '/image/digests/gateway'"), "{err}");
}

/// With `farmNamespaces`, the operator still watches every namespace but holds Secret rights
/// only in the listed ones (a Role each), and is told which (it refuses farms elsewhere).
#[test]
fn farm_namespaces_confine_secret_rights_to_those_namespaces() {
    let Some(docs) = render(&["farmNamespaces={shop,outlet}"]) else {
        return;
    };
    let cluster = find(&docs, "ClusterRole", "sf-stickyfarm");
    assert!(
        verbs(&cluster["rules"], "", "secrets").is_empty(),
        "no cluster-wide Secret rights"
    );
    assert_eq!(
        verbs(&cluster["rules"], "stickyfarm.dev", "serverfarms"),
        ["get", "list", "patch", "watch"]
    );
    for ns in ["shop", "outlet"] {
        let in_ns = |kind: &str| {
            docs.iter()
                .find(|d| {
                    d["kind"] == kind
                        && d["metadata"]["name"] == "sf-stickyfarm-secrets"
                        && d["metadata"]["namespace"] == ns
                })
                .unwrap_or_else(|| panic!("no {kind} sf-stickyfarm-secrets in {ns}"))
        };
        assert_eq!(
            verbs(&in_ns("Role")["rules"], "", "secrets"),
            ["create", "delete", "get", "patch"]
        );
        let binding = in_ns("RoleBinding");
        assert_eq!(binding["roleRef"]["name"], "sf-stickyfarm-secrets");
        assert_eq!(binding["subjects"][0]["name"], "sf-stickyfarm");
        assert_eq!(binding["subjects"][0]["namespace"], "stickyfarm-system");
    }
    let dep = find(&docs, "Deployment", "stickyfarm");
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container_env(c, "STICKYFARM_FARM_NAMESPACES")["value"],
        "shop,outlet"
    );

    // Without it, the one Secret rule is cluster-wide (farms may be anywhere).
    let Some(docs) = render(&[]) else { return };
    assert_eq!(
        verbs(
            &find(&docs, "ClusterRole", "sf-stickyfarm")["rules"],
            "",
            "secrets"
        ),
        ["create", "delete", "get", "patch"]
    );
    assert!(
        docs.iter()
            .all(|d| d["metadata"]["name"] != "sf-stickyfarm-secrets")
    );

    let Some(both) = render_result(&["watchNamespace=shop", "farmNamespaces={outlet}"]) else {
        return;
    };
    let err = both.expect_err("watchNamespace and farmNamespaces together are refused");
    assert!(err.contains("not both"), "{err}");
}

/// `imagePullSecrets` serve the operator's pod and, through the operator, every pod it makes.
#[test]
fn image_pull_secrets_reach_the_operator_and_every_farm() {
    let Some(docs) = render(&[
        "imagePullSecrets[0].name=regcred",
        "imagePullSecrets[1].name=mirror",
    ]) else {
        return;
    };
    let pod = &find(&docs, "Deployment", "stickyfarm")["spec"]["template"]["spec"];
    assert_eq!(
        pod["imagePullSecrets"],
        serde_json::json!([{"name": "regcred"}, {"name": "mirror"}])
    );
    assert_eq!(
        container_env(&pod["containers"][0], "STICKYFARM_IMAGE_PULL_SECRETS")["value"],
        "regcred,mirror"
    );
    let Some(docs) = render(&[]) else { return };
    let pod = &find(&docs, "Deployment", "stickyfarm")["spec"]["template"]["spec"];
    assert!(pod.get("imagePullSecrets").is_none_or(Value::is_null));
    assert!(
        pod["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["name"] != "STICKYFARM_IMAGE_PULL_SECRETS")
    );
}

/// The chart's collector reaches the operator, which passes it on to farms that name none
/// (`operator/src/build/tests.rs` shows where it lands in their pods).
#[test]
fn the_trace_collector_reaches_the_operator_only_when_set() {
    let Some(docs) = render(&["tracing.otlpEndpoint=http://otel-collector.observability:4318"])
    else {
        return;
    };
    let pod = &find(&docs, "Deployment", "stickyfarm")["spec"]["template"]["spec"];
    assert_eq!(
        container_env(&pod["containers"][0], "OTEL_EXPORTER_OTLP_ENDPOINT")["value"],
        "http://otel-collector.observability:4318"
    );
    let Some(docs) = render(&[]) else { return };
    let pod = &find(&docs, "Deployment", "stickyfarm")["spec"]["template"]["spec"];
    assert!(
        pod["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["name"] != "OTEL_EXPORTER_OTLP_ENDPOINT")
    );
}

/// `values.schema.json`: a mistyped, misspelt or out-of-range value fails `helm template` and
/// `helm install` before anything renders, and the error names the key.
#[test]
fn bad_values_are_refused_naming_the_key() {
    for (set, key) in [
        ("logFormat=xml", "/logFormat"),
        ("replicaCount=0", "/replicaCount"),
        ("replicas=2", "additional properties 'replicas'"),
        ("drainPeriod=soon", "/drainPeriod"),
        ("metrics.port=80", "/metrics/port"),
        (
            "imagePullSecrets[0].name=Reg_Cred",
            "/imagePullSecrets/0/name",
        ),
        (
            "allowedServiceTypes={ExternalName}",
            "/allowedServiceTypes/0",
        ),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("watchNamespace=Shop", "/watchNamespace"),
        (
            "tracing.otlpEndpoint=file:///etc/passwd",
            "/tracing/otlpEndpoint",
        ),
    ] {
        let Some(result) = render_result(&[set]) else {
            return;
        };
        let err = result.expect_err(set);
        assert!(err.contains(key), "{set}: {err}");
    }
}

/// Every value of `values.yaml` is in the README's table (a key or its group's `.child`).
#[test]
fn the_readme_lists_every_value() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let values: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(root.join("charts/stickyfarm/values.yaml")).unwrap(),
    )
    .unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let table = &readme[readme.find("### Chart values").expect("the values section")..];
    let table = &table[..table.find("\n## ").unwrap_or(table.len())];
    // Values that are Kubernetes objects passed through whole are listed by their own name.
    let whole = [
        "resources",
        "podSecurityContext",
        "securityContext",
        "digests",
    ];
    let mut missing = Vec::new();
    for (key, value) in values.as_object().unwrap() {
        match value.as_object() {
            Some(children) if !children.is_empty() && !whole.contains(&key.as_str()) => {
                for child in children.keys() {
                    let full = format!("`{key}.{child}");
                    let short = format!(".{child}`");
                    if !table.contains(&full) && !table.contains(&short) {
                        missing.push(format!("{key}.{child}"));
                    }
                }
            }
            _ => {
                if !table.contains(&format!("`{key}`")) && !table.contains(&format!("`{key}.")) {
                    missing.push(key.clone());
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "values not in the README's table: {missing:?}"
    );
}

/// `helm test`: one hook pod asks the operator's /readyz through the metrics Service, locked
/// down like the operator, and the NetworkPolicy admits that pod alone besides the scrapers;
/// off with `tests.enabled=false` (and without metrics, which it needs).
#[test]
fn helm_test_asks_the_operator_through_its_metrics_service() {
    let Some(docs) = render(&["metrics.scrapeNamespaces={monitoring}"]) else {
        return;
    };
    let pod = find(&docs, "Pod", "-test-operator-answers");
    assert_eq!(pod["metadata"]["annotations"]["helm.sh/hook"], "test");
    let spec = &pod["spec"];
    assert_eq!(spec["restartPolicy"], "Never");
    assert_eq!(
        spec["activeDeadlineSeconds"], 60,
        "bounded, whatever wget does"
    );
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    let c = &spec["containers"][0];
    assert_eq!(c["image"], "busybox:1.37");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    let service = find(&docs, "Service", "-metrics");
    let url = format!(
        "http://{}.stickyfarm-system.svc:{}/readyz",
        service["metadata"]["name"].as_str().unwrap(),
        service["spec"]["ports"][0]["port"]
    );
    assert_eq!(
        c["command"].as_array().unwrap().last().unwrap(),
        &json!(url)
    );
    let np = find(&docs, "NetworkPolicy", "stickyfarm");
    assert_eq!(
        pod["metadata"]["labels"]["stickyfarm.dev/helm-test"],
        "operator-answers"
    );
    assert_eq!(
        np["spec"]["ingress"][1]["from"][0]["podSelector"]["matchLabels"],
        json!({"stickyfarm.dev/helm-test": "operator-answers"}),
        "the test pod alone, besides the scrape namespaces"
    );
    for off in ["tests.enabled=false", "metrics.enabled=false"] {
        let docs = render(&[off]).unwrap();
        assert!(
            !docs.iter().any(|d| d["kind"] == "Pod"),
            "{off}: no test pod"
        );
        if off == "tests.enabled=false" {
            let np = find(&docs, "NetworkPolicy", "stickyfarm");
            assert_eq!(np["spec"]["ingress"].as_array().unwrap().len(), 1, "{off}");
        }
    }
}
