//! A pod's status from what the podlet knows of its containers: a pure function, so the rules
//! (phase, conditions, restart counts) are unit-tested.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// How a container run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    /// Exit code (128 + signal when killed by one).
    pub exit_code: i32,
    /// Why (`Completed`, `Error`).
    pub reason: String,
    /// Started.
    pub started_at: Timestamp,
    /// Ended.
    pub finished_at: Timestamp,
}

/// One container as the podlet sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerView {
    /// Its name.
    pub name: String,
    /// Its image.
    pub image: String,
    /// The process, while it runs.
    pub pid: Option<u32>,
    /// When the running process started.
    pub running_since: Option<Timestamp>,
    /// Why it does not run (`ContainerCreating`, `CreateContainerConfigError`, `CrashLoopBackOff`).
    pub waiting: Option<(String, String)>,
    /// Ended and will not be restarted.
    pub terminated: Option<Ended>,
    /// The previous run.
    pub last: Option<Ended>,
    /// Restarts so far.
    pub restart_count: i32,
    /// Readiness verdict.
    pub ready: bool,
    /// Startup verdict.
    pub started: bool,
}

impl ContainerView {
    /// A container not yet started.
    pub fn new(name: &str, image: &str) -> Self {
        ContainerView {
            name: name.into(),
            image: image.into(),
            pid: None,
            running_since: None,
            waiting: Some(("ContainerCreating".into(), String::new())),
            terminated: None,
            last: None,
            restart_count: 0,
            ready: false,
            started: false,
        }
    }
}

/// Everything the pod's status is built from.
#[derive(Debug, Clone)]
pub struct PodView {
    /// The node's address.
    pub host_ip: Ipv4Addr,
    /// The pod's address, once its network exists.
    pub pod_ip: Option<Ipv4Addr>,
    /// When the podlet took the pod.
    pub start_time: Timestamp,
    /// The containers, in spec order.
    pub containers: Vec<ContainerView>,
    /// Whether the pod's volumes and network are ready.
    pub sandbox_ready: bool,
}

fn ended(e: &Ended) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: e.exit_code,
        reason: Some(e.reason.clone()),
        started_at: Some(Time(e.started_at)),
        finished_at: Some(Time(e.finished_at)),
        ..ContainerStateTerminated::default()
    }
}

fn condition(type_: &str, ok: bool, since: Timestamp) -> PodCondition {
    PodCondition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        last_transition_time: Some(Time(since)),
        ..PodCondition::default()
    }
}

/// The pod's phase: Pending until every container ran once; Succeeded/Failed when all ended
/// for good; Running otherwise.
pub fn phase(v: &PodView) -> &'static str {
    let all_ended = v.containers.iter().all(|c| c.terminated.is_some());
    if !v.containers.is_empty() && all_ended {
        if v.containers
            .iter()
            .all(|c| c.terminated.as_ref().is_some_and(|t| t.exit_code == 0))
        {
            return "Succeeded";
        }
        return "Failed";
    }
    let all_started = v
        .containers
        .iter()
        .all(|c| c.running_since.is_some() || c.terminated.is_some() || c.last.is_some());
    if v.sandbox_ready && all_started {
        "Running"
    } else {
        "Pending"
    }
}

/// The status to write.
pub fn build(v: &PodView, now: Timestamp) -> PodStatus {
    let containers_ready =
        !v.containers.is_empty() && v.containers.iter().all(|c| c.ready && c.pid.is_some());
    let statuses = v
        .containers
        .iter()
        .map(|c| ContainerStatus {
            name: c.name.clone(),
            image: c.image.clone(),
            image_id: format!("podlet://{}", c.image),
            container_id: c.pid.map(|p| format!("podlet://{p}")),
            ready: c.ready && c.pid.is_some(),
            started: Some(c.started && c.pid.is_some()),
            restart_count: c.restart_count,
            state: Some(if let (Some(_), Some(since)) = (c.pid, c.running_since) {
                ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(Time(since)),
                    }),
                    ..ContainerState::default()
                }
            } else if let Some(t) = &c.terminated {
                ContainerState {
                    terminated: Some(ended(t)),
                    ..ContainerState::default()
                }
            } else {
                let (reason, message) = c
                    .waiting
                    .clone()
                    .unwrap_or_else(|| ("ContainerCreating".into(), String::new()));
                ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(reason),
                        message: (!message.is_empty()).then_some(message),
                    }),
                    ..ContainerState::default()
                }
            }),
            last_state: c.last.as_ref().map(|l| ContainerState {
                terminated: Some(ended(l)),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        })
        .collect();
    PodStatus {
        phase: Some(phase(v).into()),
        host_ip: Some(v.host_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: v.host_ip.to_string(),
        }]),
        pod_ip: v.pod_ip.map(|ip| ip.to_string()),
        pod_ips: v.pod_ip.map(|ip| vec![PodIP { ip: ip.to_string() }]),
        start_time: Some(Time(v.start_time)),
        conditions: Some(vec![
            condition("PodReadyToStartContainers", v.sandbox_ready, now),
            condition("Initialized", true, v.start_time),
            condition("ContainersReady", containers_ready, now),
            condition("Ready", containers_ready, now),
            condition("PodScheduled", true, v.start_time),
        ]),
        container_statuses: Some(statuses),
        qos_class: None,
        ..PodStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(containers: Vec<ContainerView>) -> PodView {
        PodView {
            host_ip: Ipv4Addr::new(10, 244, 0, 1),
            pod_ip: Some(Ipv4Addr::new(10, 244, 0, 7)),
            start_time: Timestamp::UNIX_EPOCH,
            containers,
            sandbox_ready: true,
        }
    }

    fn running(name: &str, ready: bool) -> ContainerView {
        ContainerView {
            pid: Some(42),
            running_since: Some(Timestamp::UNIX_EPOCH),
            waiting: None,
            ready,
            started: true,
            ..ContainerView::new(name, "img")
        }
    }

    fn cond(s: &PodStatus, t: &str) -> String {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == t)
            .unwrap()
            .status
            .clone()
    }

    #[test]
    fn a_pod_is_ready_only_when_every_container_is() {
        let s = build(
            &view(vec![running("app", true), running("sidecar", false)]),
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Ready"), "False");
        assert_eq!(s.pod_ip.as_deref(), Some("10.244.0.7"));
        let s = build(
            &view(vec![running("app", true), running("sidecar", true)]),
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(cond(&s, "Ready"), "True");
        assert_eq!(cond(&s, "ContainersReady"), "True");
        assert_eq!(
            s.container_statuses.unwrap()[0].container_id.as_deref(),
            Some("podlet://42")
        );
    }

    #[test]
    fn a_restarting_container_shows_its_count_last_state_and_backoff() {
        let mut c = ContainerView::new("app", "img");
        c.restart_count = 3;
        c.waiting = Some(("CrashLoopBackOff".into(), "back-off 4s".into()));
        c.last = Some(Ended {
            exit_code: 1,
            reason: "Error".into(),
            started_at: Timestamp::UNIX_EPOCH,
            finished_at: Timestamp::UNIX_EPOCH,
        });
        let s = build(&view(vec![c]), Timestamp::UNIX_EPOCH);
        assert_eq!(s.phase.as_deref(), Some("Running"), "it ran once");
        let st = &s.container_statuses.unwrap()[0];
        assert_eq!(st.restart_count, 3);
        assert_eq!(
            st.state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("CrashLoopBackOff")
        );
        assert_eq!(
            st.last_state
                .as_ref()
                .unwrap()
                .terminated
                .as_ref()
                .unwrap()
                .exit_code,
            1
        );
        assert!(!st.ready);
    }

    #[test]
    fn phases_follow_the_containers() {
        let mut v = view(vec![ContainerView::new("app", "img")]);
        assert_eq!(phase(&v), "Pending");
        let done = |code| Ended {
            exit_code: code,
            reason: "Completed".into(),
            started_at: Timestamp::UNIX_EPOCH,
            finished_at: Timestamp::UNIX_EPOCH,
        };
        v.containers[0].terminated = Some(done(0));
        assert_eq!(phase(&v), "Succeeded");
        v.containers[0].terminated = Some(done(2));
        assert_eq!(phase(&v), "Failed");
    }
}
