//! The podlet's own promises, on a cluster where it runs the pods: env from a Secret and the
//! downward API, volumes, exec probes, restarts with their counts, runAsNonRoot, completion.
//! (The end-to-end suite covers httpGet probes, service-account tokens, PVCs, name resolution
//! and graceful deletion with real Stickyfarm pods.)

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use stickyfarm_e2e::{admin, eventually, kubeconfig, namespace, pods_run};

const NS: &str = "podlet-check";

async fn create(client: &Client, pod: serde_json::Value) -> anyhow::Result<()> {
    let pod: Pod = serde_json::from_value(pod)?;
    Api::<Pod>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &pod)
        .await?;
    Ok(())
}

async fn get(client: &Client, name: &str) -> anyhow::Result<Pod> {
    Ok(Api::<Pod>::namespaced(client.clone(), NS).get(name).await?)
}

fn container_status(pod: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_their_env_volumes_probes_restarts_and_identity() -> anyhow::Result<()> {
    let Some(kc) = kubeconfig() else {
        return Ok(());
    };
    if !pods_run() {
        return Ok(());
    }
    let client = admin(&kc).await?;
    let podlet_nodes = Api::<Node>::all(client.clone())
        .list(&kube::api::ListParams::default().labels("stickyfarm.dev/podlet=true"))
        .await?;
    if podlet_nodes.items.is_empty() {
        // These checks are the podlet's own (kind runs only the end-to-end suite).
        let message = "no node of the podlet (label stickyfarm.dev/podlet=true) in this cluster";
        ensure!(
            std::env::var_os("STICKYFARM_E2E_REQUIRED").is_none(),
            "STICKYFARM_E2E_REQUIRED is set but there is {message}"
        );
        let _ = writeln!(std::io::stderr(), "\n*** SKIPPED: {message}. ***\n");
        return Ok(());
    }
    namespace(&client, NS).await?;
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "token"}, "stringData": {"token": "s3cr3t"}
    }))?;
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &secret)
        .await?;
    // Ready only if the Secret env, the downward API file, the Secret volume and the shared
    // emptyDir all arrived: the readiness probe checks them from inside the pod.
    let shell = |script: &str| json!(["sh", "-c", script]);
    create(&client, json!({
        "metadata": {"name": "wired", "labels": {"app": "wired"}},
        "spec": {
            "containers": [{
                "name": "main", "image": "postgres:17",
                "command": shell("echo \"$TOKEN $MY_NAME $(MY_NAME)\" > work/env; exec sleep 600"),
                "env": [
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "token", "key": "token"}}},
                    {"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
                ],
                "volumeMounts": [
                    {"name": "work", "mountPath": "/var/tmp/podlet-check/work"},
                    {"name": "info", "mountPath": "/var/tmp/podlet-check/info"},
                    {"name": "secret", "mountPath": "/var/tmp/podlet-check/secret", "readOnly": true}
                ],
                "workingDir": "/var/tmp/podlet-check",
                "readinessProbe": {"exec": {"command": shell(
                    "grep -qx 's3cr3t wired wired' work/env && grep -q 'app=\"wired\"' info/labels && grep -qx s3cr3t secret/token && ! touch secret/x"
                )}, "periodSeconds": 1}
            }],
            "volumes": [
                {"name": "work", "emptyDir": {}},
                {"name": "info", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
                {"name": "secret", "secret": {"secretName": "token"}}
            ]
        }
    })).await?;
    // Fails its liveness probe after it starts: restarted, counted.
    create(&client, json!({
        "metadata": {"name": "unhealthy"},
        "spec": {"containers": [{
            "name": "main", "image": "postgres:17", "command": ["sleep", "600"],
            "livenessProbe": {"tcpSocket": {"port": 1}, "periodSeconds": 1, "failureThreshold": 1},
        }], "terminationGracePeriodSeconds": 1}
    })).await?;
    create(&client, json!({
        "metadata": {"name": "crashing"},
        "spec": {"containers": [{"name": "main", "image": "postgres:17", "command": ["sh", "-c", "exit 3"]}]}
    })).await?;
    create(&client, json!({
        "metadata": {"name": "done"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "postgres:17", "command": ["true"]}]}
    })).await?;
    create(
        &client,
        json!({
            "metadata": {"name": "root"},
            "spec": {"securityContext": {"runAsNonRoot": true, "runAsUser": 0},
                     "containers": [{"name": "main", "image": "postgres:17", "command": ["true"]}]}
        }),
    )
    .await?;
    create(
        &client,
        json!({
            "metadata": {"name": "unknown-image"},
            "spec": {"containers": [{"name": "main", "image": "nginx:1.27"}]}
        }),
    )
    .await?;

    eventually(
        Duration::from_secs(60),
        "pod wired Ready (env, volumes, exec probe)",
        || async {
            let p = get(&client, "wired").await?;
            Ok(p.status
                .and_then(|s| s.conditions)
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True"))
        },
    )
    .await?;
    let wired = get(&client, "wired").await?;
    let ip = wired
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .context("a pod IP")?;
    ensure!(
        ip.starts_with("10.244.0."),
        "an address on the podlet's bridge: {ip}"
    );
    eventually(
        Duration::from_secs(60),
        "unhealthy restarted twice by its liveness probe",
        || async {
            let c = container_status(&get(&client, "unhealthy").await?).context("status")?;
            Ok(c.restart_count >= 2)
        },
    )
    .await?;
    eventually(
        Duration::from_secs(60),
        "crashing in CrashLoopBackOff with its exit code",
        || async {
            let c = container_status(&get(&client, "crashing").await?).context("status")?;
            let last = c.last_state.and_then(|s| s.terminated).map(|t| t.exit_code);
            let waiting = c.state.and_then(|s| s.waiting).and_then(|w| w.reason);
            Ok(c.restart_count >= 1
                && last == Some(3)
                && waiting.as_deref() == Some("CrashLoopBackOff"))
        },
    )
    .await?;
    eventually(Duration::from_secs(60), "done Succeeded", || async {
        Ok(get(&client, "done")
            .await?
            .status
            .and_then(|s| s.phase)
            .as_deref()
            == Some("Succeeded"))
    })
    .await?;
    for (pod, reason, says) in [
        ("root", "CreateContainerConfigError", "runAsNonRoot"),
        ("unknown-image", "CreateContainerConfigError", "image table"),
    ] {
        eventually(
            Duration::from_secs(60),
            &format!("{pod} refused"),
            || async {
                let c = container_status(&get(&client, pod).await?).context("status")?;
                let w = c.state.and_then(|s| s.waiting).context("waiting")?;
                Ok(w.reason.as_deref() == Some(reason)
                    && w.message.unwrap_or_default().contains(says))
            },
        )
        .await?;
    }

    // The grace period of the deletion holds, not the pod's default of 30 s: a container that
    // ignores SIGTERM is killed after 2 s and the pod object goes.
    create(&client, json!({
        "metadata": {"name": "stubborn"},
        "spec": {"containers": [{"name": "main", "image": "postgres:17",
                                 "command": shell("trap '' TERM; while true; do sleep 1; done")}]}
    })).await?;
    eventually(Duration::from_secs(30), "stubborn running", || async {
        Ok(container_status(&get(&client, "stubborn").await?)
            .and_then(|c| c.state?.running)
            .is_some())
    })
    .await?;
    let dp = DeleteParams {
        grace_period_seconds: Some(2),
        ..DeleteParams::default()
    };
    Api::<Pod>::namespaced(client.clone(), NS)
        .delete("stubborn", &dp)
        .await?;
    eventually(
        Duration::from_secs(12),
        "stubborn killed after its 2 s grace period",
        || async {
            Ok(Api::<Pod>::namespaced(client.clone(), NS)
                .get_opt("stubborn")
                .await?
                .is_none())
        },
    )
    .await?;

    // Graceful deletion ends with the pod object gone (the podlet's final delete).
    Api::<Pod>::namespaced(client.clone(), NS)
        .delete("wired", &DeleteParams::default())
        .await?;
    eventually(Duration::from_secs(60), "wired deleted", || async {
        Ok(Api::<Pod>::namespaced(client.clone(), NS)
            .get_opt("wired")
            .await?
            .is_none())
    })
    .await?;
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .delete(NS, &DeleteParams::default())
        .await?;
    Ok(())
}
