//! The farm's status, computed from what the reconciler saw (pure).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use stickyfarm_api::farm::{ServerFarm, ServerFarmStatus, UnitState, UnitStatus};

use crate::build::SIDECAR_PORT;

/// What the status is computed from.
#[derive(Debug, Clone, Default)]
pub struct Observed<'a> {
    /// The farm's unit pods.
    pub pods: &'a [Pod],
    /// Units that exist now (StatefulSet replicas, including draining ones).
    pub unit_replicas: u32,
    /// The gateway Deployment as the API server has it.
    pub gateway: Option<&'a Deployment>,
    /// The gateway Service as the API server has it.
    pub gateway_service: Option<&'a Service>,
    /// Why the farm cannot run as declared although the reconcile went through, if so.
    pub problem: Option<Problem>,
}

/// What keeps a farm from running as declared: the `Degraded` condition's reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// A CamelCase reason (the condition's `reason`, and the Event's).
    pub reason: &'static str,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl Problem {
    /// A problem with the given reason and message.
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Problem {
            reason,
            message: message.into(),
        }
    }
}

/// Condition types.
pub mod condition {
    /// Every desired unit is ready and the gateway is available.
    pub const READY: &str = "Ready";
    /// Units are being added, removed or replaced.
    pub const PROGRESSING: &str = "Progressing";
    /// The farm cannot be reconciled as declared.
    pub const DEGRADED: &str = "Degraded";
}

/// Computes the status. `old` keeps conditions' transition times when they did not change.
pub fn compute(
    farm: &ServerFarm,
    seen: &Observed,
    old: Option<&ServerFarmStatus>,
    now: Timestamp,
) -> ServerFarmStatus {
    let desired = farm.spec.replicas.0;
    let name = farm.name_any();
    let namespace = farm.namespace().unwrap_or_default();
    let units: Vec<UnitStatus> = (0..seen.unit_replicas.max(desired))
        .map(|ordinal| {
            let unit = format!("{name}-{ordinal}");
            let pod = seen.pods.iter().find(|p| p.name_any() == unit);
            let ready = pod.is_some_and(pod_ready);
            let ip = pod
                .and_then(|p| p.status.as_ref())
                .and_then(|s| s.pod_ip.clone());
            UnitStatus {
                pod: pod.map(|p| p.name_any()),
                instance_id: pod.and_then(|p| p.metadata.uid.clone()),
                ready,
                address: ip.map(|ip| format!("{ip}:{SIDECAR_PORT}")),
                state: if ordinal < desired {
                    UnitState::Serving
                } else {
                    UnitState::Draining
                },
                name: unit,
            }
        })
        .collect();
    let existing = units.iter().filter(|u| u.pod.is_some()).count() as i32;
    let ready_serving = units
        .iter()
        .filter(|u| u.ready && u.state == UnitState::Serving)
        .count() as u32;
    let ready_all = units.iter().filter(|u| u.ready).count() as i32;
    let draining = units
        .iter()
        .filter(|u| u.state == UnitState::Draining)
        .count();
    let gateway_available = seen
        .gateway
        .and_then(|d| d.status.as_ref())
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);

    let port = farm.spec.gateway.port.0;
    let endpoint = seen
        .gateway_service
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .and_then(|i| i.first())
        .and_then(|i| i.hostname.clone().or_else(|| i.ip.clone()))
        .map(|host| format!("{host}:{port}"))
        .unwrap_or_else(|| format!("{name}-gateway.{namespace}.svc:{port}"));

    let (ready_status, ready_reason, ready_message) =
        if ready_serving >= desired && gateway_available > 0 {
            (
                "True",
                "FarmReady",
                format!("{desired} of {desired} units ready; the gateway is available"),
            )
        } else if gateway_available == 0 {
            (
                "False",
                "GatewayUnavailable",
                format!(
                    "{ready_serving} of {desired} units ready; no gateway replica is available yet"
                ),
            )
        } else {
            (
                "False",
                "UnitsNotReady",
                format!("{ready_serving} of {desired} units ready"),
            )
        };
    let (progressing_status, progressing_reason, progressing_message) = if draining > 0 {
        (
            "True",
            "Draining",
            format!("{draining} unit(s) draining before removal"),
        )
    } else if ready_serving < desired {
        (
            "True",
            "UnitsStarting",
            format!(
                "waiting for {} unit(s) to become ready",
                desired - ready_serving
            ),
        )
    } else {
        ("False", "Stable", "all units are in place".to_owned())
    };
    let (degraded_status, degraded_reason, degraded_message) = match &seen.problem {
        Some(p) => ("True", p.reason, p.message.clone()),
        None => (
            "False",
            "Reconciled",
            "the declared farm is applied".to_owned(),
        ),
    };

    let generation = farm.metadata.generation;
    let old_conditions = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let cond = |type_: &str, status: &str, reason: &str, message: String| {
        let since = old_conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: since,
        }
    };
    ServerFarmStatus {
        observed_generation: generation,
        replicas: existing,
        ready_replicas: ready_all,
        units_ready: Some(format!("{ready_serving}/{desired}")),
        selector: Some(crate::build::unit_selector(farm)),
        gateway_endpoint: Some(endpoint),
        units,
        conditions: vec![
            cond(condition::READY, ready_status, ready_reason, ready_message),
            cond(
                condition::PROGRESSING,
                progressing_status,
                progressing_reason,
                progressing_message,
            ),
            cond(
                condition::DEGRADED,
                degraded_status,
                degraded_reason,
                degraded_message,
            ),
        ],
    }
}

/// The old status with `Degraded` set to the error (units and other conditions as they were).
pub fn degraded(
    farm: &ServerFarm,
    old: Option<&ServerFarmStatus>,
    message: &str,
    now: Timestamp,
) -> ServerFarmStatus {
    let mut status = old.cloned().unwrap_or_default();
    let since = status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::DEGRADED && c.status == "True")
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    status.conditions.retain(|c| c.type_ != condition::DEGRADED);
    status.conditions.push(Condition {
        type_: condition::DEGRADED.into(),
        status: "True".into(),
        reason: "ReconcileFailed".into(),
        message: message.into(),
        observed_generation: farm.metadata.generation,
        last_transition_time: since,
    });
    status
}

/// The pod's `Ready` condition is true (and it is not being deleted).
pub fn pod_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The farm's `Degraded` condition is already true for this reason (so its Event was sent).
pub(crate) fn degraded_for(farm: &ServerFarm, reason: &str) -> bool {
    farm.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == condition::DEGRADED && c.status == "True" && c.reason == reason)
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::DeploymentStatus;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::build::tests::farm;

    fn pod(name: &str, uid: &str, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(uid.into()),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(PodStatus {
                pod_ip: Some("10.0.0.7".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    fn gateway(available: i32) -> Deployment {
        Deployment {
            status: Some(DeploymentStatus {
                available_replicas: Some(available),
                ..DeploymentStatus::default()
            }),
            ..Deployment::default()
        }
    }

    fn find<'a>(s: &'a ServerFarmStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    const T0: i64 = 1_800_000_000;

    #[test]
    fn all_units_ready_makes_the_farm_ready() {
        let f = farm("replicas: 2\napp:\n  image: x\n");
        let pods = [pod("shop-0", "u0", true), pod("shop-1", "u1", true)];
        let gw = gateway(1);
        let now = Timestamp::from_second(T0).unwrap();
        let s = compute(
            &f,
            &Observed {
                pods: &pods,
                unit_replicas: 2,
                gateway: Some(&gw),
                ..Observed::default()
            },
            None,
            now,
        );
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!((s.replicas, s.ready_replicas), (2, 2));
        assert_eq!(s.units_ready.as_deref(), Some("2/2"));
        assert_eq!(
            s.gateway_endpoint.as_deref(),
            Some("shop-gateway.prod.svc:8080")
        );
        assert_eq!(
            s.selector.as_deref(),
            Some("stickyfarm.dev/farm=shop,stickyfarm.dev/component=unit")
        );
        assert_eq!(s.units[1].name, "shop-1");
        assert_eq!(s.units[1].instance_id.as_deref(), Some("u1"));
        assert_eq!(s.units[1].address.as_deref(), Some("10.0.0.7:8080"));
        assert!(s.units[1].ready);
        assert_eq!(find(&s, "Ready").status, "True");
        assert_eq!(find(&s, "Progressing").status, "False");
        assert_eq!(find(&s, "Degraded").status, "False");
        assert_eq!(find(&s, "Ready").observed_generation, Some(4));
    }

    #[test]
    fn missing_and_unready_units_and_draining_ones_show() {
        let f = farm("replicas: 2\napp:\n  image: x\n");
        let pods = [pod("shop-0", "u0", true), pod("shop-2", "u2", true)];
        let gw = gateway(1);
        let now = Timestamp::from_second(T0).unwrap();
        let s = compute(
            &f,
            &Observed {
                pods: &pods,
                unit_replicas: 3,
                gateway: Some(&gw),
                ..Observed::default()
            },
            None,
            now,
        );
        assert_eq!(s.units.len(), 3);
        assert_eq!(s.units[1].pod, None, "shop-1 has no pod yet");
        assert!(!s.units[1].ready);
        assert_eq!(s.units[2].state, UnitState::Draining);
        assert_eq!(
            s.units_ready.as_deref(),
            Some("1/2"),
            "draining units do not count"
        );
        let ready = find(&s, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "UnitsNotReady")
        );
        let progressing = find(&s, "Progressing");
        assert_eq!(
            (progressing.status.as_str(), progressing.reason.as_str()),
            ("True", "Draining")
        );
    }

    #[test]
    fn no_gateway_means_not_ready_and_errors_mean_degraded() {
        let f = farm("replicas: 1\napp:\n  image: x\n");
        let pods = [pod("shop-0", "u0", true)];
        let now = Timestamp::from_second(T0).unwrap();
        let s = compute(
            &f,
            &Observed {
                pods: &pods,
                unit_replicas: 1,
                gateway: None,
                problem: Some(Problem::new("ReconcileFailed", "boom")),
                ..Observed::default()
            },
            None,
            now,
        );
        assert_eq!(find(&s, "Ready").reason, "GatewayUnavailable");
        let d = find(&s, "Degraded");
        assert_eq!(
            (d.status.as_str(), d.reason.as_str(), d.message.as_str()),
            ("True", "ReconcileFailed", "boom")
        );
    }

    #[test]
    fn transition_times_move_only_on_change() {
        let f = farm("replicas: 1\napp:\n  image: x\n");
        let gw = gateway(1);
        let t0 = Timestamp::from_second(T0).unwrap();
        let t1 = Timestamp::from_second(T0 + 60).unwrap();
        let t2 = Timestamp::from_second(T0 + 120).unwrap();
        let not_ready = [pod("shop-0", "u0", false)];
        let ready = [pod("shop-0", "u0", true)];
        let seen = |pods| Observed {
            pods,
            unit_replicas: 1,
            gateway: Some(&gw),
            ..Observed::default()
        };
        let s0 = compute(&f, &seen(&not_ready), None, t0);
        let s1 = compute(&f, &seen(&not_ready), Some(&s0), t1);
        assert_eq!(
            find(&s1, "Ready").last_transition_time,
            Time(t0),
            "unchanged keeps its time"
        );
        assert_eq!(s0, s1, "an unchanged farm writes no new status");
        let s2 = compute(&f, &seen(&ready), Some(&s1), t2);
        assert_eq!(find(&s2, "Ready").last_transition_time, Time(t2));
        assert_eq!(find(&s2, "Degraded").last_transition_time, Time(t0));

        let d = degraded(&f, Some(&s2), "API down", t2);
        assert_eq!(find(&d, "Degraded").status, "True");
        assert_eq!(find(&d, "Ready").status, "True", "other conditions stay");
        assert_eq!(d.units, s2.units);
    }

    #[test]
    fn a_terminating_pod_is_not_ready() {
        let mut p = pod("shop-0", "u0", true);
        p.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(T0).unwrap()));
        assert!(!pod_ready(&p));
        assert!(pod_ready(&pod("shop-0", "u0", true)));
    }
}
