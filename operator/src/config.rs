//! The operator's command line (every flag also reads an environment variable, as the chart
//! sets them).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{ArgAction, Parser};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use stickyfarm_api::farm::ServiceType;

use crate::build::Scrapers;

/// Reconciles ServerFarm resources into units, a gateway and a database.
#[derive(Debug, Clone, Parser)]
#[command(name = "stickyfarm-operator", version, about, long_about = None)]
pub struct Config {
    /// Image of the session sidecar injected into every unit.
    #[arg(long, env = "STICKYFARM_SIDECAR_IMAGE", default_value = concat!("ghcr.io/stickyfarm/sidecar:", env!("CARGO_PKG_VERSION")))]
    pub sidecar_image: String,
    /// Image of the gateway.
    #[arg(long, env = "STICKYFARM_GATEWAY_IMAGE", default_value = concat!("ghcr.io/stickyfarm/gateway:", env!("CARGO_PKG_VERSION")))]
    pub gateway_image: String,
    /// PostgreSQL image for managed databases (Debian-based official image: the pod runs as
    /// its `postgres` user, uid 999).
    #[arg(long, env = "STICKYFARM_POSTGRES_IMAGE", default_value = "postgres:17")]
    pub postgres_image: String,
    /// Secrets (in each farm's namespace) every pod the operator makes pulls its images with:
    /// the units, the gateway, the managed database (repeatable or comma-separated).
    #[arg(long = "image-pull-secret", env = "STICKYFARM_IMAGE_PULL_SECRETS", value_delimiter = ',', value_parser = parse_secret_name)]
    pub image_pull_secrets: Vec<String>,
    /// Watch only this namespace (default: all).
    #[arg(long, env = "STICKYFARM_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// How long a removed unit drains before its pod is deleted; at most the unit pods'
    /// terminationGracePeriodSeconds (30 s): the drain moves sessions at their next request,
    /// and a longer one would only keep idle sessions in place.
    #[arg(long, env = "STICKYFARM_DRAIN_PERIOD", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_period: Duration,
    /// How often every farm is reconciled even when nothing changed.
    #[arg(long, env = "STICKYFARM_RESYNC", default_value = "5m", value_parser = humantime::parse_duration)]
    pub resync: Duration,
    /// Namespaces whose pods may reach the farms' metrics ports (comma-separated). Default:
    /// the operator's own namespace. The chart sets it from `metrics.scrapeNamespaces`.
    #[arg(long, env = "STICKYFARM_SCRAPE_NAMESPACES", value_delimiter = ',')]
    pub scrape_namespaces: Vec<String>,
    /// The namespaces whose pods may scrape, by label instead of by name: a Kubernetes label
    /// selector as JSON (`{"matchLabels":{"team":"observability"}}`). The chart sets it from
    /// `metrics.scrapeNamespaceSelector`.
    #[arg(long, env = "STICKYFARM_SCRAPE_NAMESPACE_SELECTOR", value_parser = parse_namespace_selector, conflicts_with = "scrape_namespaces")]
    pub scrape_namespace_selector: Option<LabelSelector>,
    /// Only these pods of the scrape namespaces may scrape: a label selector as JSON
    /// (`{"matchLabels":{"app.kubernetes.io/name":"prometheus"}}`; default: any pod there). The
    /// chart sets it from `metrics.scrapePodSelector`.
    #[arg(long, env = "STICKYFARM_SCRAPE_POD_SELECTOR", value_parser = parse_label_selector)]
    pub scrape_pod_selector: Option<LabelSelector>,
    /// Gateway Service types farms may ask for (comma-separated). NodePort and LoadBalancer
    /// expose a farm outside the cluster, so only an administrator allows them (the chart's
    /// `allowedServiceTypes`).
    #[arg(
        long,
        env = "STICKYFARM_ALLOWED_SERVICE_TYPES",
        value_delimiter = ',',
        default_value = "ClusterIP"
    )]
    pub allowed_service_types: Vec<ServiceType>,
    /// Namespaces farms may run in (comma-separated; empty: any). The chart's `farmNamespaces`
    /// grants Secret rights only there, so a farm elsewhere is refused before anything is made.
    #[arg(long, env = "STICKYFARM_FARM_NAMESPACES", value_delimiter = ',')]
    pub farm_namespaces: Vec<String>,
    /// Take a Lease before reconciling, so only one replica acts at a time.
    #[arg(long, env = "STICKYFARM_LEADER_ELECT", default_value_t = true, action = ArgAction::Set)]
    pub leader_elect: bool,
    /// Name of the Lease.
    #[arg(
        long,
        env = "STICKYFARM_LEASE_NAME",
        default_value = "stickyfarm-operator"
    )]
    pub lease_name: String,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// This replica's identity in the Lease and in Events.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// How long a Lease holds without renewal.
    #[arg(long, env = "STICKYFARM_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// `/healthz`, `/readyz` and `/metrics`.
    #[arg(
        long,
        env = "STICKYFARM_OPERATOR_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub listen: SocketAddr,
    /// Log filter and format, the same in every Stickyfarm binary.
    #[command(flatten)]
    pub logs: stickyfarm_api::logs::LogSettings,
}

impl Config {
    /// Who may scrape the farms: the namespaces selected or named (by default the operator's
    /// own), narrowed to the pods selected there.
    pub fn scrapers(&self) -> Scrapers {
        Scrapers {
            namespaces: self.scrape_namespaces(),
            namespace_selector: self.scrape_namespace_selector.clone(),
            pod_selector: self.scrape_pod_selector.clone(),
        }
    }

    /// The namespaces allowed to scrape farms: as given, or the operator's own.
    pub fn scrape_namespaces(&self) -> Vec<String> {
        let named: Vec<String> = self
            .scrape_namespaces
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        if named.is_empty() {
            vec![self.lease_namespace.clone()]
        } else {
            named
        }
    }
}

/// A label selector given as JSON, checked as the API server would check it, so a typo stops
/// the operator at start instead of failing every farm's NetworkPolicy.
fn parse_label_selector(s: &str) -> Result<LabelSelector, String> {
    let selector: LabelSelector = serde_json::from_str(s).map_err(|e| {
        format!(
            "not a label selector as JSON ({e}); expected e.g. {{\"matchLabels\":{{\"name\":\"monitoring\"}}}}"
        )
    })?;
    for r in selector.match_expressions.iter().flatten() {
        let values = r.values.as_ref().map_or(0, Vec::len);
        match r.operator.as_str() {
            "In" | "NotIn" if values == 0 => {
                return Err(format!("{} {} needs values", r.key, r.operator));
            }
            "Exists" | "DoesNotExist" if values != 0 => {
                return Err(format!("{} {} takes no values", r.key, r.operator));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                return Err(format!(
                    "{other:?} is not a selector operator (In, NotIn, Exists, DoesNotExist)"
                ));
            }
        }
    }
    Ok(selector)
}

/// The scrape namespaces' selector: an empty one would admit every namespace of the cluster.
fn parse_namespace_selector(s: &str) -> Result<LabelSelector, String> {
    let selector = parse_label_selector(s)?;
    let empty = selector.match_labels.as_ref().is_none_or(|l| l.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty());
    if empty {
        return Err(
            "an empty namespace selector admits every namespace; select or name the scrapers' namespaces"
                .into(),
        );
    }
    Ok(selector)
}

/// A Secret's name: a DNS subdomain (RFC 1123), as Kubernetes requires.
fn parse_secret_name(s: &str) -> Result<String, String> {
    let valid = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if valid {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a Secret name (lowercase letters, digits, '-' and '.')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn image_pull_secrets_are_secret_names() {
        let ok = Config::try_parse_from(["op", "--image-pull-secret", "regcred,mirror.io"])
            .expect("valid names");
        assert_eq!(ok.image_pull_secrets, ["regcred", "mirror.io"]);
        for bad in ["Regcred", "x-", "a..b", "reg_cred", "mirror,"] {
            let err = Config::try_parse_from(["op", &format!("--image-pull-secret={bad}")])
                .expect_err(bad)
                .to_string();
            assert!(err.contains("is not a Secret name"), "{bad}: {err}");
        }
    }

    #[test]
    fn scrapers_are_named_or_selected_and_a_bad_selector_is_refused() {
        let named = Config::try_parse_from(["op", "--scrape-namespaces", "monitoring"]).unwrap();
        assert_eq!(named.scrapers().namespaces, ["monitoring"]);
        assert_eq!(named.scrapers().namespace_selector, None);

        let selected = Config::try_parse_from([
            "op",
            r#"--scrape-namespace-selector={"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}"#,
            r#"--scrape-pod-selector={"matchExpressions":[{"key":"app.kubernetes.io/name","operator":"In","values":["prometheus"]}]}"#,
        ])
        .unwrap();
        let peer = selected.scrapers().peer().unwrap();
        assert_eq!(
            peer.namespace_selector.unwrap().match_labels.unwrap()["kubernetes.io/metadata.name"],
            "monitoring"
        );
        assert_eq!(
            peer.pod_selector.unwrap().match_expressions.unwrap()[0].values,
            Some(vec!["prometheus".to_owned()])
        );

        for (args, expected) in [
            (
                vec!["--scrape-namespace-selector={}"],
                "admits every namespace",
            ),
            (
                vec!["--scrape-pod-selector=monitoring"],
                "not a label selector",
            ),
            (
                vec![r#"--scrape-pod-selector={"matchExpressions":[{"key":"a","operator":"In"}]}"#],
                "a In needs values",
            ),
            (
                vec![
                    r#"--scrape-pod-selector={"matchExpressions":[{"key":"a","operator":"Equals","values":["b"]}]}"#,
                ],
                "is not a selector operator",
            ),
            (
                vec![
                    "--scrape-namespaces=monitoring",
                    r#"--scrape-namespace-selector={"matchLabels":{"a":"b"}}"#,
                ],
                "cannot be used with",
            ),
        ] {
            let err = Config::try_parse_from(std::iter::once("op").chain(args.iter().copied()))
                .expect_err(expected)
                .to_string();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
    }
}
