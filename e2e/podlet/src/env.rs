//! A container's environment as the kubelet builds it: `envFrom`, then `env` (values with
//! `$(VAR)` references, `fieldRef`, `secretKeyRef`, `configMapKeyRef`), plus the API server's
//! address.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::{Api, Client};

/// Reads Secrets and ConfigMaps of the pod's namespace once each.
pub struct Sources {
    client: Client,
    namespace: String,
    secrets: BTreeMap<String, Option<BTreeMap<String, String>>>,
    config_maps: BTreeMap<String, Option<BTreeMap<String, String>>>,
}

impl Sources {
    /// Sources of `namespace`.
    pub fn new(client: Client, namespace: &str) -> Self {
        Sources {
            client,
            namespace: namespace.into(),
            secrets: BTreeMap::new(),
            config_maps: BTreeMap::new(),
        }
    }

    /// A Secret's data as text, `None` when it does not exist.
    pub async fn secret(
        &mut self,
        name: &str,
    ) -> Result<Option<&BTreeMap<String, String>>, String> {
        if !self.secrets.contains_key(name) {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
            let s = api
                .get_opt(name)
                .await
                .map_err(|e| format!("reading Secret {name}: {e}"))?;
            let data = s.map(|s| {
                let mut d: BTreeMap<String, String> = s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect();
                d.extend(s.string_data.unwrap_or_default());
                d
            });
            self.secrets.insert(name.into(), data);
        }
        Ok(self.secrets[name].as_ref())
    }

    /// A ConfigMap's data, `None` when it does not exist.
    pub async fn config_map(
        &mut self,
        name: &str,
    ) -> Result<Option<&BTreeMap<String, String>>, String> {
        if !self.config_maps.contains_key(name) {
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
            let c = api
                .get_opt(name)
                .await
                .map_err(|e| format!("reading ConfigMap {name}: {e}"))?;
            self.config_maps
                .insert(name.into(), c.map(|c| c.data.unwrap_or_default()));
        }
        Ok(self.config_maps[name].as_ref())
    }
}

/// A pod field for `fieldRef` (and the downward API).
pub fn field(pod: &Pod, path: &str) -> Result<String, String> {
    let m = &pod.metadata;
    let status = pod.status.as_ref();
    let spec = pod.spec.as_ref();
    let text = |v: Option<&String>| v.cloned().unwrap_or_default();
    if let Some(key) = path
        .strip_prefix("metadata.labels['")
        .and_then(|k| k.strip_suffix("']"))
    {
        return Ok(text(m.labels.as_ref().and_then(|l| l.get(key))));
    }
    if let Some(key) = path
        .strip_prefix("metadata.annotations['")
        .and_then(|k| k.strip_suffix("']"))
    {
        return Ok(text(m.annotations.as_ref().and_then(|l| l.get(key))));
    }
    Ok(match path {
        "metadata.name" => text(m.name.as_ref()),
        "metadata.namespace" => text(m.namespace.as_ref()),
        "metadata.uid" => text(m.uid.as_ref()),
        "spec.nodeName" => text(spec.and_then(|s| s.node_name.as_ref())),
        "spec.serviceAccountName" => text(spec.and_then(|s| s.service_account_name.as_ref())),
        "status.podIP" => text(status.and_then(|s| s.pod_ip.as_ref())),
        "status.hostIP" => text(status.and_then(|s| s.host_ip.as_ref())),
        "metadata.labels" | "metadata.annotations" => {
            let map = if path == "metadata.labels" {
                &m.labels
            } else {
                &m.annotations
            };
            map.iter()
                .flatten()
                .map(|(k, v)| format!("{k}={v:?}\n"))
                .collect()
        }
        other => return Err(format!("fieldRef {other:?} is not supported by the podlet")),
    })
}

/// Expands `$(NAME)` from `vars`; `$$(NAME)` is a literal `$(NAME)`; unknown names stay as
/// written (as in Kubernetes).
pub fn expand(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(after_escape) = after.strip_prefix("$(") {
            out.push_str("$(");
            rest = after_escape;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// One key of a Secret or ConfigMap; `None` when it or its object is missing and optional.
fn key_of(
    data: Option<&BTreeMap<String, String>>,
    kind: &str,
    name: &str,
    key: &str,
    optional: bool,
) -> Result<Option<String>, String> {
    match data.map(|d| d.get(key)) {
        Some(Some(v)) => Ok(Some(v.clone())),
        _ if optional => Ok(None),
        Some(None) => Err(format!("couldn't find key {key} in {kind} {name}")),
        None => Err(format!("{} {name:?} not found", kind.to_lowercase())),
    }
}

/// The container's environment, in order. `api` is the API server's `host:port` for pods.
pub async fn resolve(
    pod: &Pod,
    container: &Container,
    sources: &mut Sources,
    api: (&str, u16),
) -> Result<BTreeMap<String, String>, String> {
    let mut vars = BTreeMap::new();
    // Always set by the kubelet, whatever enableServiceLinks says.
    vars.insert("KUBERNETES_SERVICE_HOST".to_owned(), api.0.to_owned());
    vars.insert("KUBERNETES_SERVICE_PORT".to_owned(), api.1.to_string());
    vars.insert(
        "KUBERNETES_SERVICE_PORT_HTTPS".to_owned(),
        api.1.to_string(),
    );
    vars.insert(
        "HOSTNAME".to_owned(),
        pod.metadata.name.clone().unwrap_or_default(),
    );
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, what, optional) = if let Some(s) = &from.secret_ref {
            (
                sources.secret(&s.name).await?.cloned(),
                format!("Secret {}", s.name),
                s.optional == Some(true),
            )
        } else if let Some(c) = &from.config_map_ref {
            (
                sources.config_map(&c.name).await?.cloned(),
                format!("ConfigMap {}", c.name),
                c.optional == Some(true),
            )
        } else {
            continue;
        };
        match data {
            Some(d) => vars.extend(d.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v))),
            None if optional => {}
            None => return Err(format!("{what} not found")),
        }
    }
    for e in container.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            Some(expand(v, &vars))
        } else if let Some(from) = &e.value_from {
            if let Some(f) = &from.field_ref {
                Some(field(pod, &f.field_path)?)
            } else if let Some(s) = &from.secret_key_ref {
                let data = sources.secret(&s.name).await?;
                key_of(data, "Secret", &s.name, &s.key, s.optional == Some(true))?
            } else if let Some(c) = &from.config_map_key_ref {
                let data = sources.config_map(&c.name).await?;
                key_of(data, "ConfigMap", &c.name, &c.key, c.optional == Some(true))?
            } else {
                return Err(format!(
                    "env {}: resourceFieldRef and fileKeyRef are not supported by the podlet",
                    e.name
                ));
            }
        } else {
            Some(String::new())
        };
        if let Some(v) = value {
            vars.insert(e.name.clone(), v);
        }
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn references_expand_and_escapes_and_unknown_names_stay() {
        let vars = BTreeMap::from([
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "two".to_owned()),
        ]);
        assert_eq!(expand("x$(A)y$(B)", &vars), "x1ytwo");
        assert_eq!(expand("$$(A) $(C) $ $(", &vars), "$(A) $(C) $ $(");
    }

    #[test]
    fn field_refs_read_the_pod() {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("web-0".into()),
                namespace: Some("shop".into()),
                uid: Some("u-1".into()),
                labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some("podlet".into()),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                pod_ip: Some("10.244.0.9".into()),
                ..PodStatus::default()
            }),
        };
        assert_eq!(field(&pod, "metadata.uid").unwrap(), "u-1");
        assert_eq!(field(&pod, "metadata.namespace").unwrap(), "shop");
        assert_eq!(field(&pod, "status.podIP").unwrap(), "10.244.0.9");
        assert_eq!(field(&pod, "spec.nodeName").unwrap(), "podlet");
        assert_eq!(field(&pod, "metadata.labels['app']").unwrap(), "web");
        assert_eq!(field(&pod, "metadata.labels").unwrap(), "app=\"web\"\n");
        assert!(field(&pod, "status.phase").is_err());
    }
}
