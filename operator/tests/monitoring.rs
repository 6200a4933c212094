//! The chart's monitoring: the alert rules pass `promtool check rules` and their unit tests
//! (`tests/monitoring/alerts.test.yaml`, every alert firing and not firing), every metric an
//! alert or a dashboard panel names is one the gateway, the sidecar or the operator exports,
//! and the Prometheus Operator objects render only where their CRDs are served (or forced).
//!
//! Needs helm (`HELM`) and promtool (`PROMTOOL`): `scripts/test` builds both from Go modules
//! (promtool with `tools/promtool/build`). Without them these tests say so loudly.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{find, render, render_with, skipped};
use serde_json::Value;
use stickyfarm_operator::build::{self, BuildInput, DatabaseRoles, Images, Scrapers};

const FORCE_ALL: [&str; 3] = [
    "monitoring.rules.force=true",
    "monitoring.podMonitor.force=true",
    "monitoring.serviceMonitor.force=true",
];

fn promtool() -> Option<PathBuf> {
    match std::env::var_os("PROMTOOL") {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(p.exists(), "PROMTOOL={} does not exist", p.display());
            Some(p)
        }
        None => {
            skipped("promtool not found. Run scripts/test, or PROMTOOL=$(tools/promtool/build).");
            None
        }
    }
}

/// The PrometheusRule's groups as the chart renders them with its default values.
fn rule_groups() -> Option<Value> {
    let docs = render(&FORCE_ALL)?;
    Some(find(&docs, "PrometheusRule", "stickyfarm")["spec"].clone())
}

fn alerts(groups: &Value) -> Vec<&Value> {
    groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn every_alert_passes_promtool_and_its_unit_tests() {
    let Some(promtool) = promtool() else { return };
    let Some(groups) = rule_groups() else { return };
    let names: BTreeSet<String> = alerts(&groups)
        .iter()
        .map(|a| a["alert"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(
            [
                "StickyfarmUnitDown",
                "StickyfarmAllUnitsDown",
                "StickyfarmEjectionStorm",
                "StickyfarmFailoversRising",
                "StickyfarmCertificateExpiresSoon",
                "StickyfarmCertificateReloadFailed",
                "StickyfarmWriteThroughErrors",
                "StickyfarmDatabaseUnreachable",
                "StickyfarmCacheHitRatioLow",
                "StickyfarmReconcileErrors",
                "StickyfarmOperatorAbsent",
            ]
            .map(String::from)
        ),
        "the alerts the chart ships (README's list follows this one)"
    );
    for a in alerts(&groups) {
        let name = &a["alert"];
        assert!(
            ["warning", "critical"].contains(&a["labels"]["severity"].as_str().unwrap_or("")),
            "{name}: severity"
        );
        for key in ["summary", "description", "runbook"] {
            assert!(
                a["annotations"][key].as_str().is_some_and(|t| t.len() > 20),
                "{name}: no {key}"
            );
        }
    }

    // The rules whole, annotations' templates included. JSON is YAML to promtool.
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.yaml");
    std::fs::write(&full, serde_json::to_vec_pretty(&groups).unwrap()).unwrap();
    let checked = run(Command::new(&promtool).args(["check", "rules"]).arg(&full));
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", names.len())),
        "{checked}"
    );

    // The unit tests compare annotations whole: they keep the summaries only.
    let mut summaries = groups.clone();
    for g in summaries["groups"].as_array_mut().unwrap() {
        for r in g["rules"].as_array_mut().unwrap() {
            let summary = r["annotations"]["summary"].clone();
            r["annotations"] = serde_json::json!({ "summary": summary });
        }
    }
    std::fs::write(
        dir.path().join("rules.yaml"),
        serde_json::to_vec_pretty(&summaries).unwrap(),
    )
    .unwrap();
    let tests_file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/monitoring/alerts.test.yaml");
    let tests_text = std::fs::read_to_string(&tests_file).unwrap();
    std::fs::write(dir.path().join("alerts.test.yaml"), &tests_text).unwrap();
    let tested = run(Command::new(&promtool)
        .args(["test", "rules"])
        .arg(dir.path().join("alerts.test.yaml")));
    assert!(tested.contains("SUCCESS"), "{tested}");

    // Every alert is tested firing and not firing.
    let tests: Value = serde_saphyr::from_str(&tests_text).unwrap();
    let cases: Vec<&Value> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap())
        .collect();
    for name in &names {
        let of = |firing: bool| {
            cases.iter().any(|c| {
                c["alertname"] == name.as_str()
                    && c["exp_alerts"].as_array().unwrap().is_empty() != firing
            })
        };
        assert!(of(true), "{name} is never tested firing");
        assert!(of(false), "{name} is never tested quiet");
    }
}

/// The `stickyfarm_*` names in a PromQL expression.
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let mut rest = expr;
    while let Some(at) = rest.find("stickyfarm_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        into.insert(name);
    }
}

/// Every sample name the three components expose, from their registries' `# TYPE` lines (a
/// family appears there once it has a series: each component creates its known ones at start).
fn exported_samples() -> BTreeSet<String> {
    // The gateway's unit series exist once it has a unit.
    let gateway = stickyfarm_gateway::metrics::Metrics::new();
    gateway.unit(&"web-0".parse().unwrap());
    let text = [
        gateway.encode(),
        stickyfarm_sidecar::metrics::Metrics::new().encode(),
        stickyfarm_operator::metrics::Metrics::default().encode(),
    ]
    .join("\n");
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let Some((name, kind)) = line.strip_prefix("# TYPE ").and_then(|t| t.split_once(' '))
        else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        out.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    out
}

fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/stickyfarm/dashboards/stickyfarm.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("the dashboard is JSON")
}

/// Every `expr` and templating `query` of the dashboard.
fn dashboard_queries(d: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            out.push(q.to_owned());
        }
    }
    out
}

#[test]
fn every_metric_an_alert_or_a_panel_names_is_exported() {
    let exported = exported_samples();
    assert!(
        exported.contains("stickyfarm_gateway_failovers_total")
            && exported.contains("stickyfarm_sidecar_write_through_seconds_bucket")
            && exported.contains("stickyfarm_operator_leader"),
        "the three registries are read: {exported:?}"
    );
    let mut named = BTreeSet::new();
    let d = dashboard();
    for q in dashboard_queries(&d) {
        metric_names(&q, &mut named);
    }
    // What the dashboard must cover (issue 17): request rate, latency, units, sessions,
    // cache, write-through, failovers.
    for needed in [
        "stickyfarm_gateway_responses_total",
        "stickyfarm_gateway_response_seconds_bucket",
        "stickyfarm_gateway_unit_up",
        "stickyfarm_sidecar_cached_sessions",
        "stickyfarm_sidecar_cache_hits_total",
        "stickyfarm_sidecar_writes_total",
        "stickyfarm_sidecar_write_through_seconds_bucket",
        "stickyfarm_gateway_failovers_total",
    ] {
        assert!(named.contains(needed), "no panel shows {needed}");
    }
    if let Some(groups) = rule_groups() {
        for a in alerts(&groups) {
            metric_names(a["expr"].as_str().unwrap(), &mut named);
        }
        assert!(named.contains("stickyfarm_sidecar_invalidation_listener_connected"));
    }
    let unknown: Vec<&String> = named.difference(&exported).collect();
    assert!(unknown.is_empty(), "named but never exported: {unknown:?}");
}

#[test]
fn the_dashboard_is_a_configmap_for_grafanas_sidecar() {
    let Some(docs) = render(&["monitoring.dashboard.namespace=grafana"]) else {
        return;
    };
    let cm = find(&docs, "ConfigMap", "-dashboard");
    assert_eq!(cm["metadata"]["namespace"], "grafana");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: Value =
        serde_json::from_str(cm["data"]["stickyfarm.json"].as_str().unwrap()).unwrap();
    assert_eq!(
        json,
        dashboard(),
        "the ConfigMap holds the dashboard file as it is"
    );
    // Every panel has a unique id and reads the chosen data source.
    let panels = json["panels"].as_array().unwrap();
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len());
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
    }

    let Some(off) = render(&["monitoring.dashboard.enabled=false"]) else {
        return;
    };
    assert!(!off.iter().any(|d| {
        d["kind"] == "ConfigMap"
            && d["metadata"]["name"]
                .as_str()
                .unwrap()
                .ends_with("-dashboard")
    }));
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .map(|d| d["kind"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn monitors_and_rules_render_only_where_their_crds_are_served_or_when_forced() {
    let monitoring = ["PodMonitor", "ServiceMonitor", "PrometheusRule"].map(String::from);
    let Some(Ok(plain)) = render_with(&[], &[]) else {
        return;
    };
    assert!(
        kinds(&plain).is_disjoint(&BTreeSet::from(monitoring.clone())),
        "a cluster without Prometheus Operator gets none of its objects"
    );
    let served = render_with(
        &["monitoring.labels.release=kube-prometheus-stack"],
        &[
            "--api-versions",
            "monitoring.coreos.com/v1/PodMonitor",
            "--api-versions",
            "monitoring.coreos.com/v1/ServiceMonitor",
            "--api-versions",
            "monitoring.coreos.com/v1/PrometheusRule",
        ],
    )
    .unwrap()
    .unwrap();
    assert!(kinds(&served).is_superset(&BTreeSet::from(monitoring.clone())));
    for kind in &monitoring {
        let o = served.iter().find(|d| d["kind"] == kind.as_str()).unwrap();
        assert_eq!(
            o["metadata"]["labels"]["release"], "kube-prometheus-stack",
            "{kind} carries monitoring.labels"
        );
    }
    let forced = render(&FORCE_ALL).unwrap();
    assert!(kinds(&forced).is_superset(&BTreeSet::from(monitoring.clone())));
    let off = render(
        &[
            &FORCE_ALL[..],
            &[
                "monitoring.rules.enabled=false",
                "monitoring.podMonitor.enabled=false",
                "monitoring.serviceMonitor.enabled=false",
            ],
        ]
        .concat(),
    )
    .unwrap();
    assert!(kinds(&off).is_disjoint(&BTreeSet::from(monitoring)));

    // The ServiceMonitor selects the operator's metrics Service, and only it.
    let sm = find(&forced, "ServiceMonitor", "stickyfarm");
    let svc = find(&forced, "Service", "-metrics");
    let svc_labels = svc["metadata"]["labels"].as_object().unwrap();
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(svc_labels.get(k), Some(v), "the Service lacks {k}={v}");
    }
    assert_eq!(
        sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
        "operator"
    );
    assert_eq!(
        sm["spec"]["endpoints"][0]["port"],
        svc["spec"]["ports"][0]["name"]
    );

    // The PodMonitor: the pods the operator makes (gateway on `admin`, units on `metrics`, the
    // port names the operator gives them), in any namespace unless farms are confined, with
    // the farm's name as `farm`.
    let pm = find(&forced, "PodMonitor", "-farms");
    assert_eq!(pm["spec"]["namespaceSelector"]["any"], true);
    let ports: Vec<&str> = pm["spec"]["podMetricsEndpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["port"].as_str().unwrap())
        .collect();
    assert_eq!(ports, ["admin", "metrics"]);
    let relabel = &pm["spec"]["podMetricsEndpoints"][0]["relabelings"][0];
    assert_eq!(relabel["targetLabel"], "farm");
    assert_eq!(
        relabel["sourceLabels"][0],
        "__meta_kubernetes_pod_label_stickyfarm_dev_farm"
    );
    assert_eq!(
        pm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/managed-by"],
        "stickyfarm-operator"
    );
    // … which are the ports and labels the operator gives the pods it builds.
    let farm: stickyfarm_api::farm::ServerFarm = serde_saphyr::from_str(
        "apiVersion: stickyfarm.dev/v1alpha1\nkind: ServerFarm\nmetadata:\n  name: shop\n  namespace: prod\n  uid: 6a0f9c1e-2b7d-4e0a-9f1c-3d5e7a9b1c2d\nspec:\n  app:\n    image: registry.example/shop:1\n",
    )
    .unwrap();
    let desired = build::build(
        &farm,
        &BuildInput {
            images: Images {
                sidecar: "sidecar:1".into(),
                gateway: "gateway:1".into(),
                postgres: "postgres:17".into(),
                pull_secrets: Vec::new(),
            },
            scrapers: Scrapers::default(),
            unit_replicas: 2,
            drain_since: None,
            database_roles: DatabaseRoles::Separate,
            trace_collector: None,
        },
    )
    .unwrap();
    let selector = &pm["spec"]["selector"];
    let components = selector["matchExpressions"][0]["values"]
        .as_array()
        .unwrap();
    for (template, port) in [
        (&desired.gateway_deployment.spec.template, "admin"),
        (&desired.unit_statefulset.spec.template, "metrics"),
    ] {
        let meta = template.metadata.as_ref().unwrap();
        let labels = meta.labels.as_ref().unwrap();
        for (k, v) in selector["matchLabels"].as_object().unwrap() {
            assert_eq!(
                labels.get(k).map(String::as_str),
                v.as_str(),
                "pod label {k}"
            );
        }
        assert!(
            components
                .iter()
                .any(|c| labels.get("stickyfarm.dev/component").map(String::as_str) == c.as_str())
        );
        assert!(
            labels.contains_key("stickyfarm.dev/farm"),
            "the label `farm` comes from"
        );
        let named: Vec<String> = template
            .spec
            .as_ref()
            .unwrap()
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| p.name.clone())
            .collect();
        assert!(named.iter().any(|n| n == port), "{port} not in {named:?}");
    }

    let confined = render(&[&FORCE_ALL[..], &["farmNamespaces={shop,blog}"]].concat()).unwrap();
    assert_eq!(
        find(&confined, "PodMonitor", "-farms")["spec"]["namespaceSelector"]["matchNames"],
        serde_json::json!(["shop", "blog"])
    );
}
