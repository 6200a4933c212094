//! Watches the pods bound to the node and keeps one worker per pod.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::DeleteParams;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event, watcher};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::pod::{self, Ctx};

struct Worker {
    updates: watch::Sender<Pod>,
    gone: CancellationToken,
    task: JoinHandle<()>,
}

fn finished(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Runs pods until `shutdown`, then stops them all (each within its grace period, at most 10 s).
pub async fn run(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let config =
        watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.settings.node_name));
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut workers: HashMap<String, Worker> = HashMap::new();
    // UIDs listed by the current (re)list; a worker whose pod is not among them lost its pod.
    let mut seen_in_relist: HashSet<String> = HashSet::new();
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            _ = shutdown.cancelled() => break,
        };
        workers.retain(|_, w| !w.task.is_finished());
        let pods = match event {
            Some(Ok(Event::InitApply(p))) => {
                if let Some(uid) = p.metadata.uid.clone() {
                    seen_in_relist.insert(uid);
                }
                vec![p]
            }
            Some(Ok(Event::Apply(p))) => vec![p],
            Some(Ok(Event::Delete(p))) => {
                if let Some(w) = p.metadata.uid.as_ref().and_then(|u| workers.get(u)) {
                    w.gone.cancel();
                }
                continue;
            }
            Some(Ok(Event::Init)) => {
                seen_in_relist.clear();
                continue;
            }
            Some(Ok(Event::InitDone)) => {
                // Pods that vanished while the watch was down.
                for (uid, w) in &workers {
                    if !seen_in_relist.contains(uid) {
                        w.gone.cancel();
                    }
                }
                continue;
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "watching pods");
                continue;
            }
            None => break,
        };
        for p in pods {
            let Some(uid) = p.metadata.uid.clone() else {
                continue;
            };
            if let Some(w) = workers.get(&uid) {
                let _ = w.updates.send(p);
                continue;
            }
            if p.metadata.deletion_timestamp.is_some() {
                // Never ran here (or ran before a restart of the podlet): nothing to stop.
                let ns = p.metadata.namespace.clone().unwrap_or_default();
                let name = p.metadata.name.clone().unwrap_or_default();
                let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
                let _ = api
                    .delete(
                        &name,
                        &DeleteParams {
                            grace_period_seconds: Some(0),
                            ..DeleteParams::default()
                        },
                    )
                    .await;
                continue;
            }
            if finished(&p) {
                continue;
            }
            let (tx, rx) = watch::channel(p);
            let gone = CancellationToken::new();
            let task = tokio::spawn(pod::run(ctx.clone(), rx, gone.clone(), shutdown.clone()));
            workers.insert(
                uid,
                Worker {
                    updates: tx,
                    gone,
                    task,
                },
            );
        }
    }
    for (_, w) in workers {
        let _ = w.task.await;
    }
}
