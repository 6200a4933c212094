//! The test cluster's storage, a small static provisioner: every pending PersistentVolumeClaim
//! without a class (or of the class `local`) gets a hostPath PersistentVolume, a folder of the
//! node's, pre-bound to it; the PV controller binds them. Released volumes are deleted with
//! their folders (the StatefulSet's retention policy decides when a claim goes). It plays the
//! part kind's local-path-provisioner plays there, without a helper pod.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

/// Label on the provisioner's volumes: the node whose folder holds them.
pub const VOLUME_LABEL: &str = "stickyfarm.dev/e2e-volume";
/// The class served besides "no class".
pub const CLASS: &str = "local";

/// Where volumes go.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The node the folders are on (volumes are labelled with it).
    pub node_name: String,
    /// The folder that holds one folder per volume.
    pub dir: std::path::PathBuf,
}

/// The volume for a claim, or `None` when the claim is not this provisioner's to serve.
pub fn volume_for(claim: &PersistentVolumeClaim, settings: &Settings) -> Option<PersistentVolume> {
    let spec = claim.spec.as_ref()?;
    let class = spec.storage_class_name.clone().unwrap_or_default();
    let pending = claim
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
        == "Pending";
    if !pending
        || spec.volume_name.as_deref().is_some_and(|v| !v.is_empty())
        || !(class.is_empty() || class == CLASS)
        || claim.metadata.deletion_timestamp.is_some()
    {
        return None;
    }
    let uid = claim.metadata.uid.clone()?;
    let name = format!("local-{uid}");
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .cloned()
        .unwrap_or(Quantity("1Gi".into()));
    let folder = settings.dir.join(&name);
    Some(PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name),
            labels: Some(BTreeMap::from([(
                VOLUME_LABEL.to_owned(),
                settings.node_name.clone(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([("storage".to_owned(), size)])),
            access_modes: spec.access_modes.clone(),
            host_path: Some(HostPathVolumeSource {
                path: folder.to_string_lossy().into_owned(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: claim.metadata.namespace.clone(),
                name: claim.metadata.name.clone(),
                uid: Some(uid),
                ..ObjectReference::default()
            }),
            persistent_volume_reclaim_policy: Some("Retain".into()),
            storage_class_name: Some(class),
            volume_mode: Some("Filesystem".into()),
            ..PersistentVolumeSpec::default()
        }),
        status: None,
    })
}

/// Serves claims and cleans released volumes until `shutdown`.
pub async fn run(client: Client, settings: Settings, shutdown: CancellationToken) {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let claims = watcher(Api::<PersistentVolumeClaim>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .for_each(|c| {
            let pvs = pvs.clone();
            let settings = settings.clone();
            async move {
                let Ok(claim) = c else { return };
                let Some(pv) = volume_for(&claim, &settings) else { return };
                let folder = pv.spec.as_ref().and_then(|s| s.host_path.as_ref()).map(|h| h.path.clone()).unwrap_or_default();
                // World-writable, as dynamic hostPath provisioners make them: the pod's user
                // (PostgreSQL's, say) must own what it creates inside.
                if std::fs::create_dir_all(&folder).is_ok() {
                    let _ = std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o777));
                }
                match pvs.create(&PostParams::default(), &pv).await {
                    Ok(_) => tracing::info!(claim = ?claim.metadata.name, volume = ?pv.metadata.name, "provisioned"),
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => tracing::warn!(error = %e, "provisioning a volume"),
                }
            }
        });
    let selector = format!("{VOLUME_LABEL}={}", settings.node_name);
    let released = watcher(pvs.clone(), watcher::Config::default().labels(&selector))
        .default_backoff()
        .applied_objects()
        .for_each(|v| {
            let pvs = pvs.clone();
            async move {
                let Ok(pv) = v else { return };
                if pv.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Released") {
                    return;
                }
                let name = pv.metadata.name.clone().unwrap_or_default();
                if pvs.delete(&name, &DeleteParams::default()).await.is_ok() {
                    if let Some(h) = pv.spec.as_ref().and_then(|s| s.host_path.as_ref()) {
                        let _ = std::fs::remove_dir_all(&h.path);
                    }
                    tracing::info!(volume = %name, "released volume deleted");
                }
            }
        });
    tokio::select! {
        _ = claims => {}
        _ = released => {}
        _ = shutdown.cancelled() => {}
    }
}
