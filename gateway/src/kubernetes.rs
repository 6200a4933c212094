//! Unit discovery on Kubernetes: the EndpointSlices of the farm's unit Services.
//!
//! The operator gives every unit a Service labelled with the farm, the unit and its state
//! (`serving` or `draining`); the EndpointSlice controller copies those labels onto the unit's
//! EndpointSlices, which carry the pod's IP, its UID (the instance id) and whether it is
//! terminating. One watch, scoped to the farm's namespace and labels, tells the gateway all
//! it needs, so its Role grants nothing but reading EndpointSlices.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use stickyfarm_api::{InstanceId, UnitName, labels};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::discovery::UnitSource;
use crate::units::{AdminState, UnitSpec};

/// The name of the unit Service port the gateway connects to.
pub const UNIT_PORT_NAME: &str = "http";

/// Watches a farm's unit EndpointSlices.
pub struct KubernetesSource {
    /// API client (in-cluster or from KUBECONFIG).
    pub client: Client,
    /// The farm's namespace.
    pub namespace: String,
    /// The farm's name.
    pub farm: String,
}

impl UnitSource for KubernetesSource {
    fn run(
        self: Box<Self>,
        publish: watch::Sender<Vec<UnitSpec>>,
        stop: CancellationToken,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &self.namespace);
            let selector = format!("{}={},{}", labels::FARM, self.farm, labels::UNIT);
            let (reader, writer) = reflector::store();
            let events = reflector(
                writer,
                watcher(api, watcher::Config::default().labels(&selector)),
            )
            .default_backoff();
            let mut events = std::pin::pin!(events);
            let mut last: Option<Vec<UnitSpec>> = None;
            loop {
                let event = tokio::select! {
                    e = events.next() => e,
                    _ = stop.cancelled() => return,
                };
                match event {
                    None => return,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, namespace = %self.namespace, farm = %self.farm,
                            "watching EndpointSlices failed; keeping the last unit list and retrying (check the gateway's Role)");
                    }
                    // Mid-relist states are partial: publish once the list is complete.
                    Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => {}
                    Some(Ok(_)) => {
                        let slices = reader.state();
                        let units = units_from_slices(&slices);
                        if last.as_ref() != Some(&units) {
                            tracing::info!(units = units.len(), "unit list from EndpointSlices");
                            last = Some(units.clone());
                            publish.send_replace(units);
                        }
                    }
                }
            }
        })
    }
}

/// Whether the EndpointSlice controller made `slice` for the unit Service `unit` (the operator
/// names each unit's Service after the unit): the slice is controlled by that Service. Labels
/// alone prove nothing: whoever can write an EndpointSlice in the namespace could label one to
/// send a unit's clients elsewhere.
fn made_for_unit_service(slice: &EndpointSlice, unit: &str) -> bool {
    slice.metadata.owner_references.iter().flatten().any(|o| {
        o.controller == Some(true) && o.api_version == "v1" && o.kind == "Service" && o.name == unit
    })
}

/// The membership described by a farm's EndpointSlices (pure). Only slices controlled by the
/// unit's own Service count. A unit whose pod has no address yet is left out; a terminating
/// pod or a unit labelled `draining` drains.
pub fn units_from_slices(slices: &[Arc<EndpointSlice>]) -> Vec<UnitSpec> {
    let mut units: BTreeMap<String, (UnitSpec, bool)> = BTreeMap::new();
    for slice in slices {
        let labels = slice.metadata.labels.clone().unwrap_or_default();
        let Some(name) = labels.get(labels::UNIT) else {
            continue;
        };
        let Ok(unit) = name.parse::<UnitName>() else {
            tracing::warn!(unit = %name, "ignoring an EndpointSlice with an invalid unit name");
            continue;
        };
        if !made_for_unit_service(slice, name) {
            tracing::warn!(unit = %name, slice = ?slice.metadata.name,
                "ignoring an EndpointSlice its unit's Service does not control");
            continue;
        }
        let Some(port) = slice.ports.iter().flatten().find_map(|p| {
            (p.name.as_deref() == Some(UNIT_PORT_NAME))
                .then_some(p.port)
                .flatten()
        }) else {
            continue;
        };
        let draining_label = labels.get(labels::UNIT_STATE).map(String::as_str) == Some("draining");
        for ep in slice.endpoints.iter().flatten() {
            let Some(ip) = ep.addresses.first() else {
                continue;
            };
            let cond = ep.conditions.clone().unwrap_or_default();
            let terminating = cond.terminating == Some(true);
            let address = if ip.contains(':') {
                format!("[{ip}]:{port}")
            } else {
                format!("{ip}:{port}")
            };
            let spec = UnitSpec {
                name: unit.clone(),
                address,
                instance: ep
                    .target_ref
                    .as_ref()
                    .and_then(|r| r.uid.as_deref())
                    .and_then(|u| u.parse::<InstanceId>().ok()),
                admin: if draining_label || terminating {
                    AdminState::Draining
                } else {
                    AdminState::Enabled
                },
            };
            // During a replacement two endpoints may exist: prefer the one not terminating.
            match units.get(name) {
                Some((_, was_terminating)) if !*was_terminating || terminating => {}
                _ => {
                    units.insert(name.clone(), (spec, terminating));
                }
            }
        }
    }
    units.into_values().map(|(spec, _)| spec).collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    use super::*;

    const UID_A: &str = "0b8f1a52-6a0b-4c59-9d43-1f1f8a3e2c11";
    const UID_B: &str = "7d3c2e10-58aa-4f0e-b1de-2c6f0a9b4e22";

    fn slice(unit: &str, state: &str, endpoints: Vec<Endpoint>) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{unit}-abcde")),
                labels: Some(BTreeMap::from([
                    (labels::FARM.to_owned(), "shop".to_owned()),
                    (labels::UNIT.to_owned(), unit.to_owned()),
                    (labels::UNIT_STATE.to_owned(), state.to_owned()),
                ])),
                owner_references: Some(vec![service_owner(unit)]),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(endpoints),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                ..EndpointPort::default()
            }]),
        })
    }

    /// What the EndpointSlice controller sets on the slices of Service `name`.
    fn service_owner(name: &str) -> OwnerReference {
        OwnerReference {
            api_version: "v1".into(),
            kind: "Service".into(),
            name: name.into(),
            uid: "5a0c1f4e-0000-4000-8000-000000000001".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn endpoint(ip: &str, uid: &str, terminating: bool) -> Endpoint {
        Endpoint {
            addresses: vec![ip.into()],
            conditions: Some(EndpointConditions {
                ready: Some(!terminating),
                serving: Some(true),
                terminating: Some(terminating),
            }),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                uid: Some(uid.into()),
                ..ObjectReference::default()
            }),
            ..Endpoint::default()
        }
    }

    #[test]
    fn slices_become_units_with_addresses_instances_and_states() {
        let units = units_from_slices(&[
            slice(
                "shop-1",
                "draining",
                vec![endpoint("10.0.0.2", UID_B, false)],
            ),
            slice(
                "shop-0",
                "serving",
                vec![endpoint("10.0.0.1", UID_A, false)],
            ),
            slice("shop-2", "serving", vec![]),
        ]);
        assert_eq!(units.len(), 2, "a unit without an address is left out");
        assert_eq!(units[0].name.as_str(), "shop-0");
        assert_eq!(units[0].address, "10.0.0.1:8080");
        assert_eq!(
            units[0].instance.map(|i| i.to_string()).as_deref(),
            Some(UID_A)
        );
        assert_eq!(units[0].admin, AdminState::Enabled);
        assert_eq!(units[1].admin, AdminState::Draining, "labelled draining");
    }

    #[test]
    fn a_terminating_pod_drains_and_its_replacement_wins() {
        let units = units_from_slices(&[slice(
            "shop-0",
            "serving",
            vec![endpoint("10.0.0.1", UID_A, true)],
        )]);
        assert_eq!(units[0].admin, AdminState::Draining);
        let units = units_from_slices(&[slice(
            "shop-0",
            "serving",
            vec![
                endpoint("10.0.0.1", UID_A, true),
                endpoint("10.0.0.9", UID_B, false),
            ],
        )]);
        assert_eq!(units.len(), 1);
        assert_eq!(units[0].address, "10.0.0.9:8080");
        assert_eq!(units[0].admin, AdminState::Enabled);
    }

    #[test]
    fn bad_labels_ports_and_ids_are_ignored_safely() {
        let mut bad_name = (*slice(
            "Shop_0",
            "serving",
            vec![endpoint("10.0.0.1", UID_A, false)],
        ))
        .clone();
        bad_name
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(labels::UNIT.into(), "../etc".into());
        let mut no_port = (*slice(
            "shop-1",
            "serving",
            vec![endpoint("10.0.0.2", UID_A, false)],
        ))
        .clone();
        no_port.ports = None;
        let forged = slice(
            "shop-2",
            "serving",
            vec![endpoint("fd00::5", "not-a-uid", false)],
        );
        let units = units_from_slices(&[Arc::new(bad_name), Arc::new(no_port), forged]);
        assert_eq!(units.len(), 1);
        assert_eq!(units[0].address, "[fd00::5]:8080");
        assert_eq!(units[0].instance, None, "an unparsable uid is not trusted");
    }

    #[test]
    fn only_slices_their_units_service_controls_are_trusted() {
        let good = slice(
            "shop-0",
            "serving",
            vec![endpoint("10.0.0.1", UID_A, false)],
        );
        let forge = |owner: Option<OwnerReference>| {
            let mut s = (*slice(
                "shop-0",
                "serving",
                vec![endpoint("203.0.113.66", UID_B, false)],
            ))
            .clone();
            s.metadata.owner_references = owner.map(|o| vec![o]);
            Arc::new(s)
        };
        let not_controller = OwnerReference {
            controller: None,
            ..service_owner("shop-0")
        };
        let other_service = service_owner("shop-1");
        let not_a_service = OwnerReference {
            kind: "Pod".into(),
            ..service_owner("shop-0")
        };
        for forged in [
            forge(None),
            forge(Some(not_controller)),
            forge(Some(other_service)),
            forge(Some(not_a_service)),
        ] {
            let units = units_from_slices(std::slice::from_ref(&forged));
            assert!(units.is_empty(), "{:?}", forged.metadata.owner_references);
            // Next to the real slice, the forged endpoint never becomes the unit.
            let units = units_from_slices(&[forged, good.clone()]);
            assert_eq!(units.len(), 1);
            assert_eq!(units[0].address, "10.0.0.1:8080");
        }
    }
}
