//! A pod's volumes as folders of its pod folder (or, for PVCs, the bound PersistentVolume's
//! folder), written once when the pod starts: emptyDir, Secret, ConfigMap, downwardAPI,
//! projected (with service-account tokens from the TokenRequest API), hostPath and
//! persistentVolumeClaim.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, ServiceAccount,
};
use kube::api::PostParams;
use kube::{Api, Client};

use crate::enter::Bind;
use crate::env::{Sources, field};

/// Files of a volume: relative path → (content, mode).
type Files = BTreeMap<String, (Vec<u8>, Option<i32>)>;

fn io(what: String) -> impl FnOnce(std::io::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// Writes `files` (relative path → content) into `dir` with `mode`.
fn write_files(dir: &Path, files: &Files, default_mode: i32) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).ok();
    for (rel, (content, mode)) in files {
        if rel.split('/').any(|p| p == ".." || p.is_empty()) {
            return Err(format!("volume path {rel:?} is not a plain relative path"));
        }
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io(format!("creating {}", parent.display())))?;
        }
        std::fs::write(&path, content).map_err(io(format!("writing {}", path.display())))?;
        let mode = mode.unwrap_or(default_mode) as u32 & 0o777;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).ok();
    }
    Ok(())
}

/// The keys of `data` as files: all, or only `items` (with their paths and modes).
fn select(
    data: &BTreeMap<String, String>,
    items: Option<&Vec<KeyToPath>>,
    what: &str,
) -> Result<Files, String> {
    match items {
        None => Ok(data
            .iter()
            .map(|(k, v)| (k.clone(), (v.clone().into_bytes(), None)))
            .collect()),
        Some(items) => items
            .iter()
            .map(|i| {
                let v = data
                    .get(&i.key)
                    .ok_or_else(|| format!("{what} has no key {:?}", i.key))?;
                Ok((i.path.clone(), (v.clone().into_bytes(), i.mode)))
            })
            .collect(),
    }
}

/// The files of a Secret or ConfigMap; none when it is missing and optional.
fn files_of(
    data: Option<&BTreeMap<String, String>>,
    items: Option<&Vec<KeyToPath>>,
    kind: &str,
    name: &str,
    optional: bool,
) -> Result<Files, String> {
    match data {
        Some(d) => select(d, items, &format!("{kind} {name}")),
        None if optional => Ok(Files::new()),
        None => Err(format!("{} {name:?} not found", kind.to_lowercase())),
    }
}

fn downward(pod: &Pod, items: &[DownwardAPIVolumeFile]) -> Result<Files, String> {
    items
        .iter()
        .map(|i| {
            let f = i.field_ref.as_ref().ok_or_else(|| {
                format!(
                    "downwardAPI item {}: only fieldRef is supported by the podlet",
                    i.path
                )
            })?;
            Ok((
                i.path.clone(),
                (field(pod, &f.field_path)?.into_bytes(), i.mode),
            ))
        })
        .collect()
}

async fn token(
    client: &Client,
    pod: &Pod,
    audience: Option<&str>,
    seconds: Option<i64>,
) -> Result<String, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            attestations: None,
            audiences: audience.map(|a| vec![a.to_owned()]),
            expiration_seconds: Some(seconds.unwrap_or(3600)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        }),
        ..TokenRequest::default()
    };
    let t = api
        .create_token_request(&account, &PostParams::default(), &request)
        .await
        .map_err(|e| format!("requesting a token for ServiceAccount {ns}/{account}: {e}"))?;
    t.status.and_then(|s| s.token).ok_or_else(|| {
        format!("the API server returned no token for ServiceAccount {ns}/{account}")
    })
}

async fn claimed_folder(client: &Client, ns: &str, claim: &str) -> Result<PathBuf, String> {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .get_opt(claim)
        .await
        .map_err(|e| format!("reading PersistentVolumeClaim {claim}: {e}"))?
        .ok_or_else(|| format!("persistentvolumeclaim {claim:?} not found"))?;
    let pv_name = pvc
        .spec
        .and_then(|s| s.volume_name)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("persistentvolumeclaim {claim:?} is not bound yet"))?;
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&pv_name)
        .await
        .map_err(|e| format!("reading PersistentVolume {pv_name}: {e}"))?;
    let spec = pv.spec.unwrap_or_default();
    spec.host_path
        .map(|h| PathBuf::from(h.path))
        .or_else(|| spec.local.map(|l| PathBuf::from(l.path)))
        .ok_or_else(|| format!("PersistentVolume {pv_name} is neither hostPath nor local; the podlet mounts only folders"))
}

/// Makes every volume of the pod; returns volume name → folder (or file) on this machine.
pub async fn prepare(
    client: &Client,
    pod: &Pod,
    pod_dir: &Path,
    sources: &mut Sources,
) -> Result<BTreeMap<String, PathBuf>, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = BTreeMap::new();
    for v in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
    {
        let dir = pod_dir.join("volumes").join(&v.name);
        let path = if v.empty_dir.is_some() {
            std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
            // World-writable, as emptyDir is, so any container user may write.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).ok();
            dir
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let data = sources.secret(&name).await?;
            let files = files_of(
                data,
                s.items.as_ref(),
                "Secret",
                &name,
                s.optional == Some(true),
            )?;
            write_files(&dir, &files, s.default_mode.unwrap_or(0o644))?;
            dir
        } else if let Some(c) = &v.config_map {
            let data = sources.config_map(&c.name).await?;
            let files = files_of(
                data,
                c.items.as_ref(),
                "ConfigMap",
                &c.name,
                c.optional == Some(true),
            )?;
            write_files(&dir, &files, c.default_mode.unwrap_or(0o644))?;
            dir
        } else if let Some(d) = &v.downward_api {
            write_files(
                &dir,
                &downward(pod, d.items.as_deref().unwrap_or_default())?,
                d.default_mode.unwrap_or(0o644),
            )?;
            dir
        } else if let Some(p) = &v.projected {
            let mut files = BTreeMap::new();
            for s in p.sources.iter().flatten() {
                if let Some(t) = &s.service_account_token {
                    let token =
                        token(client, pod, t.audience.as_deref(), t.expiration_seconds).await?;
                    files.insert(t.path.clone(), (token.into_bytes(), None));
                } else if let Some(c) = &s.config_map {
                    let data = sources.config_map(&c.name).await?;
                    files.extend(files_of(
                        data,
                        c.items.as_ref(),
                        "ConfigMap",
                        &c.name,
                        c.optional == Some(true),
                    )?);
                } else if let Some(sec) = &s.secret {
                    let data = sources.secret(&sec.name).await?;
                    files.extend(files_of(
                        data,
                        sec.items.as_ref(),
                        "Secret",
                        &sec.name,
                        sec.optional == Some(true),
                    )?);
                } else if let Some(d) = &s.downward_api {
                    files.extend(downward(pod, d.items.as_deref().unwrap_or_default())?);
                } else {
                    return Err(format!(
                        "volume {}: a projected source the podlet does not support",
                        v.name
                    ));
                }
            }
            write_files(&dir, &files, p.default_mode.unwrap_or(0o644))?;
            dir
        } else if let Some(c) = &v.persistent_volume_claim {
            claimed_folder(client, ns, &c.claim_name).await?
        } else if let Some(h) = &v.host_path {
            PathBuf::from(&h.path)
        } else {
            return Err(format!(
                "volume {}: only emptyDir, secret, configMap, downwardAPI, projected, hostPath and persistentVolumeClaim are supported by the podlet",
                v.name
            ));
        };
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

/// The container's bind mounts for its volumeMounts.
pub fn mounts(
    container: &k8s_openapi::api::core::v1::Container,
    volumes: &BTreeMap<String, PathBuf>,
) -> Result<Vec<Bind>, String> {
    container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| {
            let base = volumes
                .get(&m.name)
                .ok_or_else(|| format!("volumeMount {:?} names no volume of the pod", m.name))?;
            let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) if sub.split('/').any(|p| p == "..") => {
                    return Err(format!("subPath {sub:?} leaves its volume"));
                }
                Some(sub) => base.join(sub),
                None => base.clone(),
            };
            Ok(Bind {
                source: source.to_string_lossy().into_owned(),
                target: m.mount_path.clone(),
                read_only: m.read_only == Some(true),
            })
        })
        .collect()
}
