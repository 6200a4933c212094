//! NetworkPolicies: only the gateway reaches the units' public port, only the units reach the
//! database, and metrics ports only from pods labelled `stickyfarm.dev/scrape: "true"`.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::database::POSTGRES_PORT;
use super::gateway::{GATEWAY_ADMIN_PORT, GATEWAY_PORT};
use super::units::{METRICS_PORT, SIDECAR_PORT};
use super::{FarmRef, component};

/// The label a metrics scraper's pod carries to reach the metrics ports (in any namespace).
pub const SCRAPE_LABEL: &str = "stickyfarm.dev/scrape";

pub(crate) fn policies(f: &FarmRef) -> Vec<NetworkPolicy> {
    let from_component = |c: &str| NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(f.selector(c)),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    };
    let scraper = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector::default()),
        pod_selector: Some(LabelSelector {
            match_labels: Some([(SCRAPE_LABEL.to_owned(), "true".to_owned())].into()),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    };
    let rule = |from: Vec<NetworkPolicyPeer>, port: i32| NetworkPolicyIngressRule {
        from: (!from.is_empty()).then_some(from),
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
    let mut out = vec![
        policy(
            f.headless_name(),
            component::UNIT,
            vec![
                rule(vec![from_component(component::GATEWAY)], SIDECAR_PORT),
                rule(vec![scraper.clone()], METRICS_PORT),
            ],
        ),
        policy(
            f.gateway_name(),
            component::GATEWAY,
            vec![
                // Clients come from anywhere the Service is exposed to.
                rule(vec![], GATEWAY_PORT),
                rule(vec![scraper], GATEWAY_ADMIN_PORT),
            ],
        ),
    ];
    if f.farm.spec.database.external.is_none() {
        out.push(policy(
            f.database_name(),
            component::DATABASE,
            vec![rule(vec![from_component(component::UNIT)], POSTGRES_PORT)],
        ));
    }
    out
}
