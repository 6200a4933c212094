//! The Node: registered with its capacity and addresses, Ready while the podlet runs, its Lease
//! in `kube-node-lease` renewed every 10 s (what the node lifecycle controller watches).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, Resource as _};
use tokio_util::sync::CancellationToken;

use crate::{Error, Settings};

const MANAGER: &str = "stickyfarm-podlet";
/// How long the Lease holds without renewal.
pub const LEASE_SECONDS: i32 = 40;

/// The Node object (without status).
pub fn node(settings: &Settings) -> Node {
    let labels = BTreeMap::from([
        (
            "kubernetes.io/hostname".to_owned(),
            settings.node_name.clone(),
        ),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        (
            "kubernetes.io/arch".to_owned(),
            std::env::consts::ARCH
                .replace("x86_64", "amd64")
                .replace("aarch64", "arm64"),
        ),
        ("stickyfarm.dev/podlet".to_owned(), "true".to_owned()),
    ]);
    Node {
        metadata: ObjectMeta {
            name: Some(settings.node_name.clone()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(format!("{}.0/24", {
                let o = settings.bridge_ip.octets();
                format!("{}.{}.{}", o[0], o[1], o[2])
            })),
            ..NodeSpec::default()
        }),
        status: None,
    }
}

/// The Node's status: Ready, with generous capacity (the podlet does not enforce limits).
pub fn status(settings: &Settings, now: Timestamp) -> NodeStatus {
    let q = |s: &str| Quantity(s.into());
    let capacity = BTreeMap::from([
        ("cpu".to_owned(), q("16")),
        ("memory".to_owned(), q("64Gi")),
        ("pods".to_owned(), q("250")),
        ("ephemeral-storage".to_owned(), q("100Gi")),
    ]);
    let cond = |t: &str, s: &str, reason: &str, message: &str| NodeCondition {
        type_: t.into(),
        status: s.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    };
    NodeStatus {
        capacity: Some(capacity.clone()),
        allocatable: Some(capacity),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: settings.bridge_ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: settings.node_name.clone(),
            },
        ]),
        conditions: Some(vec![
            cond(
                "Ready",
                "True",
                "KubeletReady",
                "podlet is posting ready status",
            ),
            cond(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "not measured by the podlet",
            ),
            cond(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "not measured by the podlet",
            ),
            cond(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "not measured by the podlet",
            ),
        ]),
        node_info: Some(NodeSystemInfo {
            architecture: std::env::consts::ARCH.into(),
            operating_system: "linux".into(),
            kubelet_version: "v1.37.2-podlet".into(),
            container_runtime_version: "podlet://0.1.0".into(),
            os_image: "processes in network namespaces".into(),
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    }
}

/// Creates or updates the Node and its status.
pub async fn register(client: &Client, settings: &Settings) -> Result<Node, Error> {
    let api: Api<Node> = Api::all(client.clone());
    let pp = PatchParams::apply(MANAGER).force();
    let name = &settings.node_name;
    let node = api
        .patch(name, &pp, &Patch::Apply(node(settings)))
        .await
        .map_err(Error::kube(format!("registering Node {name}")))?;
    let mut st = Node {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(status(settings, Timestamp::now())),
    };
    st.metadata.managed_fields = None;
    api.patch_status(name, &pp, &Patch::Apply(st))
        .await
        .map_err(Error::kube(format!("reporting Node {name} ready")))?;
    Ok(node)
}

async fn renew(client: &Client, settings: &Settings, node: &Node) -> Result<(), Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let owner = OwnerReference {
        api_version: Node::api_version(&()).into(),
        kind: Node::kind(&()).into(),
        name: settings.node_name.clone(),
        uid: node.metadata.uid.clone().unwrap_or_default(),
        ..OwnerReference::default()
    };
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(settings.node_name.clone()),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(settings.node_name.clone()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..LeaseSpec::default()
        }),
    };
    api.patch(
        &settings.node_name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(lease),
    )
    .await
    .map_err(Error::kube("renewing the node Lease"))?;
    Ok(())
}

/// Renews the Lease every 10 s and the Ready condition every minute, until `shutdown`.
pub async fn heartbeat(
    client: Client,
    settings: Settings,
    mut node: Node,
    shutdown: CancellationToken,
) {
    let mut tick = 0u32;
    loop {
        if let Err(e) = renew(&client, &settings, &node).await {
            tracing::warn!(error = %e, "node heartbeat");
        }
        if tick % 6 == 5 {
            match register(&client, &settings).await {
                Ok(n) => node = n,
                Err(e) => tracing::warn!(error = %e, "node status"),
            }
        }
        tick += 1;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Removes the Node (the pod garbage collector then removes what was bound to it) and its
/// Lease.
pub async fn deregister(client: &Client, settings: &Settings) {
    let _ = Api::<Lease>::namespaced(client.clone(), "kube-node-lease")
        .delete(&settings.node_name, &DeleteParams::default())
        .await;
    let _ = Api::<Node>::all(client.clone())
        .delete(&settings.node_name, &DeleteParams::default())
        .await;
}
