//! What every component's `/metrics` has in common (feature `metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    component: &'static str,
    version: &'static str,
}

/// The root registry of a component's `/metrics`, holding
/// `stickyfarm_build_info{component, version} 1` (the same name in every component, so a
/// dashboard can list what runs where, in which version). The component registers its own
/// metrics in `root.sub_registry_with_prefix("stickyfarm_<component>")`.
pub fn root(component: &'static str) -> Registry {
    let mut root = Registry::default();
    let info = Family::<BuildLabels, Gauge>::default();
    info.get_or_create(&BuildLabels {
        component,
        version: env!("CARGO_PKG_VERSION"),
    })
    .set(1);
    root.register(
        "stickyfarm_build_info",
        "1, labelled with the component and the Stickyfarm version it runs",
        info,
    );
    root
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn build_info_sits_beside_the_components_own_metrics() {
        let mut registry = root("gateway");
        registry
            .sub_registry_with_prefix("stickyfarm_gateway")
            .register("retries", "Retries", Counter::<u64>::default());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            text.contains(&format!(
                "stickyfarm_build_info{{component=\"gateway\",version=\"{version}\"}} 1\n"
            )),
            "{text}"
        );
        assert!(
            text.contains("stickyfarm_gateway_retries_total 0\n"),
            "{text}"
        );
    }
}

/// The sum of the samples of metric `name` (a counter's `_total` included in the name) whose
/// label text contains `labels`, read from a `/metrics` answer in the text exposition format;
/// 0 when there are none. How the tests and the benchmarks read a component's counters.
pub fn sample_sum(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod sample_tests {
    #[test]
    fn samples_are_summed_by_name_and_labels() {
        let text =
            "# HELP x_total X\nx_total{op=\"a\"} 2\nx_total{op=\"b\"} 3\nx_total_seconds 9\nx 4\n";
        assert_eq!(super::sample_sum(text, "x_total", ""), 5.0);
        assert_eq!(super::sample_sum(text, "x_total", "op=\"b\""), 3.0);
        assert_eq!(super::sample_sum(text, "x", ""), 4.0);
        assert_eq!(super::sample_sum(text, "y", ""), 0.0);
    }
}
