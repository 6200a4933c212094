//! Name resolution for pods without a DNS server: every pod's `/etc/hosts` (bound by
//! `ip netns exec` from `/etc/netns/<netns>/hosts`) lists the Services of the cluster by their
//! DNS names, each resolving to its ready endpoints' pod IPs, and StatefulSet pods by their
//! per-pod names. ClusterIP Services resolve to their endpoints too (there is no kube-proxy),
//! so a client reaches the pod's port directly: Services must use port == targetPort.
//! The files are rewritten whenever Services or EndpointSlices change.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::Arc;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Api, Client};
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

/// The cluster's DNS domain.
pub const DOMAIN: &str = "cluster.local";

/// A running pod's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEntry {
    /// Its network namespace.
    pub netns: String,
    /// Its namespace.
    pub namespace: String,
    /// Its hostname (spec.hostname or its name).
    pub hostname: String,
    /// spec.subdomain.
    pub subdomain: Option<String>,
    /// Its address.
    pub ip: Ipv4Addr,
}

impl PodEntry {
    /// The names of `pod` at `ip`.
    pub fn of(pod: &Pod, netns: &str, ip: Ipv4Addr) -> Self {
        let spec = pod.spec.as_ref();
        PodEntry {
            netns: netns.into(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            hostname: spec
                .and_then(|s| s.hostname.clone())
                .or_else(|| pod.metadata.name.clone())
                .unwrap_or_default(),
            subdomain: spec.and_then(|s| s.subdomain.clone()),
            ip,
        }
    }
}

/// A Service's names and addresses, from the Service and its EndpointSlices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceNames {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Ready endpoints' addresses.
    pub addresses: Vec<String>,
    /// Endpoints with a hostname (StatefulSet pods under their governing Service).
    pub hostnames: Vec<(String, String)>,
}

/// Collects Services' ready endpoints from EndpointSlices.
pub fn services(services: &[Arc<Service>], slices: &[Arc<EndpointSlice>]) -> Vec<ServiceNames> {
    let mut out = Vec::new();
    for s in services {
        let (Some(ns), Some(name)) = (s.metadata.namespace.clone(), s.metadata.name.clone()) else {
            continue;
        };
        if s.spec.as_ref().and_then(|sp| sp.type_.as_deref()) == Some("ExternalName") {
            continue;
        }
        let mut addresses = Vec::new();
        let mut hostnames = Vec::new();
        for slice in slices {
            let owner = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"));
            if slice.metadata.namespace.as_deref() != Some(&ns)
                || owner != Some(&name)
                || slice.address_type != "IPv4"
            {
                continue;
            }
            for e in slice.endpoints.iter().flatten() {
                let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready {
                    continue;
                }
                for a in &e.addresses {
                    addresses.push(a.clone());
                    if let Some(h) = &e.hostname {
                        hostnames.push((h.clone(), a.clone()));
                    }
                }
            }
        }
        addresses.sort();
        addresses.dedup();
        hostnames.sort();
        out.push(ServiceNames {
            namespace: ns,
            name,
            addresses,
            hostnames,
        });
    }
    out
}

/// One pod's hosts file.
pub fn render(pod: &PodEntry, services: &[ServiceNames], api_ip: Ipv4Addr) -> String {
    let mut s = String::from(
        "# Written by the podlet: Services by their DNS names (there is no cluster DNS).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    let ns = &pod.namespace;
    let mut own = vec![pod.hostname.clone()];
    if let Some(sub) = &pod.subdomain {
        own.insert(0, format!("{}.{sub}.{ns}.svc.{DOMAIN}", pod.hostname));
    }
    let _ = writeln!(s, "{}\t{}", pod.ip, own.join(" "));
    let _ = writeln!(
        s,
        "{api_ip}\tkubernetes.default.svc.{DOMAIN} kubernetes.default.svc kubernetes.default{}",
        if ns == "default" { " kubernetes" } else { "" }
    );
    let names = |name: &str, svc_ns: &str| {
        let mut n = vec![
            format!("{name}.{svc_ns}.svc.{DOMAIN}"),
            format!("{name}.{svc_ns}.svc"),
            format!("{name}.{svc_ns}"),
        ];
        if svc_ns == ns {
            n.push(name.to_owned());
        }
        n.join(" ")
    };
    for svc in services {
        if svc.namespace == "default" && svc.name == "kubernetes" {
            continue;
        }
        for a in &svc.addresses {
            let _ = writeln!(s, "{a}\t{}", names(&svc.name, &svc.namespace));
        }
        for (host, a) in &svc.hostnames {
            let _ = writeln!(
                s,
                "{a}\t{}",
                names(&format!("{host}.{}", svc.name), &svc.namespace)
            );
        }
    }
    s
}

/// The hosts files of the running pods, kept current.
pub struct Hosts {
    api_ip: Ipv4Addr,
    pods: Mutex<BTreeMap<String, (PodEntry, String)>>,
    services: reflector::Store<Service>,
    slices: reflector::Store<EndpointSlice>,
    changed: Notify,
    writers: Mutex<
        Option<(
            reflector::store::Writer<Service>,
            reflector::store::Writer<EndpointSlice>,
        )>,
    >,
}

impl Hosts {
    /// Empty; `run` fills and keeps it.
    pub fn new(api_ip: Ipv4Addr) -> Arc<Self> {
        let (services, sw) = reflector::store();
        let (slices, ew) = reflector::store();
        Arc::new(Hosts {
            api_ip,
            pods: Mutex::new(BTreeMap::new()),
            services,
            slices,
            changed: Notify::new(),
            writers: Mutex::new(Some((sw, ew))),
        })
    }

    fn file(netns: &str, name: &str) -> String {
        format!("/etc/netns/{netns}/{name}")
    }

    async fn write(&self, entry: &PodEntry, last: &mut String) {
        let text = render(
            entry,
            &services(&self.services.state(), &self.slices.state()),
            self.api_ip,
        );
        if &text != last {
            // Rewritten in place: the pod's /etc/hosts is a bind mount of this very file.
            if let Err(e) = std::fs::write(Self::file(&entry.netns, "hosts"), &text) {
                tracing::warn!(netns = %entry.netns, error = %e, "writing hosts");
            }
            *last = text;
        }
    }

    /// Adds a pod: writes its hosts file and resolv.conf (no name server: unknown names fail
    /// at once).
    pub async fn add(&self, entry: PodEntry) {
        let resolv = format!(
            "search {ns}.svc.{DOMAIN} svc.{DOMAIN} {DOMAIN}\nnameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
            ns = entry.namespace
        );
        let _ = std::fs::write(Self::file(&entry.netns, "resolv.conf"), resolv);
        let mut last = String::new();
        self.write(&entry, &mut last).await;
        self.pods
            .lock()
            .await
            .insert(entry.netns.clone(), (entry, last));
    }

    /// Forgets a pod.
    pub async fn remove(&self, netns: &str) {
        self.pods.lock().await.remove(netns);
    }

    /// Watches Services and EndpointSlices and rewrites the files on every change.
    pub async fn run(self: Arc<Self>, client: Client, shutdown: CancellationToken) {
        let Some((sw, ew)) = self.writers.lock().await.take() else {
            return;
        };
        let me = self.clone();
        let svc = watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(sw)
        .for_each(move |_| {
            me.changed.notify_one();
            async {}
        });
        let me = self.clone();
        let eps = watcher(
            Api::<EndpointSlice>::all(client),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(ew)
        .for_each(move |_| {
            me.changed.notify_one();
            async {}
        });
        let me = self.clone();
        let rewrite = async move {
            loop {
                me.changed.notified().await;
                let mut pods = me.pods.lock().await;
                for (entry, last) in pods.values_mut() {
                    me.write(entry, last).await;
                }
            }
        };
        tokio::select! {
            _ = svc => {}
            _ = eps => {}
            _ = rewrite => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn meta(ns: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..ObjectMeta::default()
        }
    }

    fn slice(ns: &str, svc: &str, eps: Vec<(&str, Option<&str>, bool)>) -> Arc<EndpointSlice> {
        let mut m = meta(ns, &format!("{svc}-abc"));
        m.labels = Some([("kubernetes.io/service-name".to_owned(), svc.to_owned())].into());
        Arc::new(EndpointSlice {
            metadata: m,
            address_type: "IPv4".into(),
            endpoints: Some(
                eps.into_iter()
                    .map(|(ip, host, ready)| Endpoint {
                        addresses: vec![ip.into()],
                        hostname: host.map(Into::into),
                        conditions: Some(EndpointConditions {
                            ready: Some(ready),
                            ..Default::default()
                        }),
                        ..Endpoint::default()
                    })
                    .collect(),
            ),
            ports: None,
        })
    }

    #[test]
    fn services_resolve_to_ready_endpoints_and_statefulset_pods_by_name() {
        let svcs = vec![
            Arc::new(Service {
                metadata: meta("shop", "webstore-db"),
                ..Service::default()
            }),
            Arc::new(Service {
                metadata: meta("shop", "webstore-units"),
                ..Service::default()
            }),
            Arc::new(Service {
                metadata: meta("other", "api"),
                ..Service::default()
            }),
        ];
        let slices = vec![
            slice(
                "shop",
                "webstore-db",
                vec![("10.244.0.5", None, true), ("10.244.0.6", None, false)],
            ),
            slice(
                "shop",
                "webstore-units",
                vec![("10.244.0.7", Some("webstore-0"), true)],
            ),
            slice("other", "api", vec![("10.244.0.9", None, true)]),
        ];
        let names = services(&svcs, &slices);
        let pod = PodEntry {
            netns: "sfp-1".into(),
            namespace: "shop".into(),
            hostname: "webstore-1".into(),
            subdomain: Some("webstore-units".into()),
            ip: Ipv4Addr::new(10, 244, 0, 8),
        };
        let text = render(&pod, &names, Ipv4Addr::new(10, 244, 0, 1));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(&"10.244.0.5\twebstore-db.shop.svc.cluster.local webstore-db.shop.svc webstore-db.shop webstore-db"), "{text}");
        assert!(
            !text.contains("10.244.0.6"),
            "not ready endpoints are left out: {text}"
        );
        assert!(lines.contains(&"10.244.0.7\twebstore-0.webstore-units.shop.svc.cluster.local webstore-0.webstore-units.shop.svc webstore-0.webstore-units.shop webstore-0.webstore-units"), "{text}");
        assert!(
            lines.contains(&"10.244.0.9\tapi.other.svc.cluster.local api.other.svc api.other"),
            "other namespaces only by qualified names: {text}"
        );
        assert!(
            lines.contains(
                &"10.244.0.8\twebstore-1.webstore-units.shop.svc.cluster.local webstore-1"
            ),
            "{text}"
        );
        assert!(
            text.contains("10.244.0.1\tkubernetes.default.svc.cluster.local"),
            "{text}"
        );
    }
}
