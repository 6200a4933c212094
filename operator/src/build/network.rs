//! NetworkPolicies: only the gateway reaches the units' public port, only the units reach the
//! database, metrics ports only from the scrapers (see [`Scrapers`]), and nobody reaches the
//! gateway's control port (administrators come through `kubectl port-forward`, which the API
//! server authorises and NetworkPolicies do not see).

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::database::POSTGRES_PORT;
use super::gateway::{GATEWAY_ADMIN_PORT, GATEWAY_PORT, GATEWAY_REDIRECT_PORT};
use super::units::{METRICS_PORT, SIDECAR_PORT};
use super::{FarmRef, component};

/// The label Kubernetes puts on every namespace with its name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Who may scrape the farms' metrics ports: the pods of some namespaces, picked by name (the
/// operator's `--scrape-namespaces`, the chart's `metrics.scrapeNamespaces`) or by a label
/// selector (`--scrape-namespace-selector`, `metrics.scrapeNamespaceSelector`), optionally
/// narrowed to some pods there (`--scrape-pod-selector`, `metrics.scrapePodSelector`: e.g.
/// kube-prometheus-stack's Prometheus, `app.kubernetes.io/name: prometheus`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrapers {
    /// Namespaces by name (ignored when `namespace_selector` is set).
    pub namespaces: Vec<String>,
    /// Namespaces by label.
    pub namespace_selector: Option<LabelSelector>,
    /// Only these pods of those namespaces (default: any pod there).
    pub pod_selector: Option<LabelSelector>,
}

impl Scrapers {
    /// The scrapers of these namespaces, by name.
    pub fn in_namespaces(namespaces: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Scrapers {
            namespaces: namespaces.into_iter().map(Into::into).collect(),
            ..Scrapers::default()
        }
    }

    /// The NetworkPolicy peer of the scrapers; `None` when no namespace is named or selected:
    /// then nobody scrapes, never "every namespace".
    pub fn peer(&self) -> Option<NetworkPolicyPeer> {
        let namespace_selector = match &self.namespace_selector {
            Some(selector) => selector.clone(),
            None if self.namespaces.is_empty() => return None,
            None => LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: NAMESPACE_NAME_LABEL.into(),
                    operator: "In".into(),
                    values: Some(self.namespaces.clone()),
                }]),
                ..LabelSelector::default()
            },
        };
        Some(NetworkPolicyPeer {
            namespace_selector: Some(namespace_selector),
            pod_selector: self.pod_selector.clone(),
            ..NetworkPolicyPeer::default()
        })
    }
}

pub(crate) fn policies(f: &FarmRef, scrapers: &Scrapers) -> Vec<NetworkPolicy> {
    let from_component = |c: &str| NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(f.selector(c)),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    };
    let scrapers = scrapers.peer();
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
    let scrape = |port| scrapers.clone().map(|peer| rule(Some(vec![peer]), port));
    let redirect = f
        .farm
        .spec
        .gateway
        .tls
        .as_ref()
        .is_some_and(|t| t.redirect_http);
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
            [
                Some(rule(None, GATEWAY_PORT)),
                redirect.then(|| rule(None, GATEWAY_REDIRECT_PORT)),
                scrape(GATEWAY_ADMIN_PORT),
            ]
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
