//! NetworkPolicies: only the gateway reaches the units' public port, only the units reach the
//! database, metrics ports only from pods in the scrape namespaces (the operator's flag
//! `--scrape-namespaces`, the chart's `metrics.scrapeNamespaces`), and nobody reaches the
//! gateway's control port (administrators come through `kubectl port-forward`, which the API
//! server authorises and NetworkPolicies do not see).

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::database::POSTGRES_PORT;
use super::gateway::{GATEWAY_ADMIN_PORT, GATEWAY_PORT};
use super::units::{METRICS_PORT, SIDECAR_PORT};
use super::{FarmRef, component};

/// The label Kubernetes puts on every namespace with its name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub(crate) fn policies(f: &FarmRef, scrape_namespaces: &[String]) -> Vec<NetworkPolicy> {
    let from_component = |c: &str| NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(f.selector(c)),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    };
    // Any pod of the named namespaces (Prometheus Operator's pods carry no label of ours).
    // None named: no scraper at all, never "every namespace".
    let scrapers: Vec<NetworkPolicyPeer> = if scrape_namespaces.is_empty() {
        Vec::new()
    } else {
        vec![NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: NAMESPACE_NAME_LABEL.into(),
                    operator: "In".into(),
                    values: Some(scrape_namespaces.to_vec()),
                }]),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        }]
    };
    // `from: None` admits every source: only the gateway's client port is built that way.
    let rule = |from: Option<Vec<NetworkPolicyPeer>>, port: i32| NetworkPolicyIngressRule {
        from,
        ports: Some(vec![NetworkPolicyPort {
            port: Some(IntOrString::Int(port)),
            protocol: Some("TCP".into()),
            ..NetworkPolicyPort::default()
        }]),
    };
    let policy = |name: String, comp: &str, ingress: Vec<NetworkPolicyIngressRule>| NetworkPolicy {
        metadata: f.meta(name, comp),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(f.selector(comp)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            ..NetworkPolicySpec::default()
        }),
    };
    let scrape = |port| (!scrapers.is_empty()).then(|| rule(Some(scrapers.clone()), port));
    let mut out = vec![
        policy(
            f.headless_name(),
            component::UNIT,
            [
                Some(rule(
                    Some(vec![from_component(component::GATEWAY)]),
                    SIDECAR_PORT,
                )),
                scrape(METRICS_PORT),
            ]
            .into_iter()
            .flatten()
            .collect(),
        ),
        policy(
            f.gateway_name(),
            component::GATEWAY,
            // Clients come from anywhere the Service is exposed to. The control port
            // (GATEWAY_CONTROL_PORT) is deliberately in no rule.
            [Some(rule(None, GATEWAY_PORT)), scrape(GATEWAY_ADMIN_PORT)]
                .into_iter()
                .flatten()
                .collect(),
        ),
    ];
    if f.farm.spec.database.external.is_none() {
        out.push(policy(
            f.database_name(),
            component::DATABASE,
            vec![rule(
                Some(vec![from_component(component::UNIT)]),
                POSTGRES_PORT,
            )],
        ));
    }
    out
}
