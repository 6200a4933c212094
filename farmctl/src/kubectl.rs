//! `kubectl stickyfarm`: a farm's status table and its unit actions on a cluster, through the
//! Kubernetes API alone.
//!
//! The plugin reaches each gateway pod by port-forwarding: the API server authorises
//! `pods/portforward` with the user's own rights, and NetworkPolicies do not see the forwarded
//! connection (it ends inside the pod), so the gateway's control port, which no policy admits,
//! is reachable this way and only this way. Unit actions present the farm's admin token, read
//! from its Secret with the user's rights (`get` on `<farm>-gateway-tokens`); it is never
//! printed. An action goes to every gateway replica, since each keeps its own table; a
//! replica started later begins from the operator's state (serving, or draining on scale-down).

use std::collections::BTreeMap;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams};
use stickyfarm_api::UnitName;
use stickyfarm_api::farm::{ADMIN_TOKEN_KEY, ServerFarm, labels, tokens_secret_name};

use crate::status::{StatusDoc, render_status_table};

/// The gateway container's port names (the operator names them so).
const ADMIN_PORT_NAME: &str = "admin";
const CONTROL_PORT_NAME: &str = "control";

/// `kubectl stickyfarm`.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-stickyfarm",
    bin_name = "kubectl stickyfarm",
    version,
    about = "A Stickyfarm farm's units on a cluster: their status, and draining, disabling or enabling one (through the Kubernetes API: port-forward to the gateway pods)"
)]
pub struct Cli {
    /// The farm's namespace (default: the kubeconfig context's).
    #[arg(short, long, global = true)]
    pub namespace: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The plugin's commands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// The gateway's table of units: health, admin state, in flight, requests, last check,
    /// instance, last error.
    Status {
        /// The ServerFarm.
        farm: String,
        /// The gateway's status document as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lets a unit keep its sessions but gives it no new ones.
    Drain {
        /// The ServerFarm.
        farm: String,
        /// The unit (`<farm>-<ordinal>`).
        unit: String,
    },
    /// Takes a unit out of service: its clients fail over to their backups.
    Disable {
        /// The ServerFarm.
        farm: String,
        /// The unit.
        unit: String,
    },
    /// Puts a drained or disabled unit back in service.
    Enable {
        /// The ServerFarm.
        farm: String,
        /// The unit.
        unit: String,
    },
}

/// What went wrong, said so that the user knows what to check.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The API server refused or failed a call.
    #[error("{what}: {source}")]
    Api {
        /// The call.
        what: String,
        /// Its error.
        source: kube::Error,
    },
    /// No such farm.
    #[error("no ServerFarm {farm:?} in namespace {namespace:?} (kubectl get serverfarms -A)")]
    NoFarm {
        /// The farm.
        farm: String,
        /// Its namespace.
        namespace: String,
    },
    /// The farm has no gateway pod that runs.
    #[error(
        "ServerFarm {farm:?} has no running gateway pod (kubectl get pods -n {namespace} -l stickyfarm.dev/farm={farm},stickyfarm.dev/component=gateway)"
    )]
    NoGateway {
        /// The farm.
        farm: String,
        /// Its namespace.
        namespace: String,
    },
    /// A unit name that cannot be one.
    #[error("{unit:?} is not a unit name: {reason}")]
    BadUnit {
        /// What was given.
        unit: String,
        /// Why not.
        reason: String,
    },
    /// The pod lacks a port the plugin needs.
    #[error("gateway pod {pod} has no container port named {port:?}; is it a Stickyfarm gateway?")]
    NoPort {
        /// The pod.
        pod: String,
        /// The port's name.
        port: &'static str,
    },
    /// The admin token could not be read.
    #[error("the admin token in Secret {secret}: {reason}")]
    Token {
        /// The Secret.
        secret: String,
        /// Why it could not be used.
        reason: String,
    },
    /// The forwarded connection failed.
    #[error("port-forward to {pod}:{port}: {reason}")]
    Forward {
        /// The pod.
        pod: String,
        /// The port.
        port: u16,
        /// What failed.
        reason: String,
    },
    /// The gateway answered with an error.
    #[error("gateway pod {pod} answered {status}: {body}")]
    Refused {
        /// The pod.
        pod: String,
        /// The HTTP status.
        status: http::StatusCode,
        /// The gateway's message.
        body: String,
    },
}

fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> PluginError {
    let what = what.into();
    move |source| PluginError::Api { what, source }
}

/// Runs one command with a client of the user's kubeconfig; returns what to print.
pub async fn run(cli: Cli, client: kube::Client) -> Result<String, PluginError> {
    let namespace = cli
        .namespace
        .unwrap_or_else(|| client.default_namespace().to_owned());
    match cli.command {
        Command::Status { farm, json } => status(&client, &namespace, &farm, json).await,
        Command::Drain { farm, unit } => {
            unit_action(&client, &namespace, &farm, &unit, "drain").await
        }
        Command::Disable { farm, unit } => {
            unit_action(&client, &namespace, &farm, &unit, "disable").await
        }
        Command::Enable { farm, unit } => {
            unit_action(&client, &namespace, &farm, &unit, "enable").await
        }
    }
}

async fn status(
    client: &kube::Client,
    namespace: &str,
    farm: &str,
    json: bool,
) -> Result<String, PluginError> {
    let gateways = gateway_pods(client, namespace, farm).await?;
    let pod = &gateways[0];
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let body = ask(
        &pods,
        pod,
        ADMIN_PORT_NAME,
        http::Method::GET,
        "/status",
        None,
    )
    .await?;
    let unreadable = |e: serde_json::Error| PluginError::Forward {
        pod: pod_name(pod),
        port: named_port(pod, ADMIN_PORT_NAME).unwrap_or_default(),
        reason: format!("the status document is not what a gateway sends: {e}"),
    };
    if json {
        let doc: serde_json::Value = serde_json::from_slice(&body).map_err(unreadable)?;
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&doc).expect("a JSON value prints")
        ));
    }
    let doc: StatusDoc = serde_json::from_slice(&body).map_err(unreadable)?;
    Ok(format!(
        "farm {farm} in {namespace}, as gateway pod {} sees it\n{}",
        pod_name(pod),
        render_status_table(&doc.units)
    ))
}

async fn unit_action(
    client: &kube::Client,
    namespace: &str,
    farm: &str,
    unit: &str,
    action: &str,
) -> Result<String, PluginError> {
    // Checked here so that nothing but a unit name reaches the gateway's URL.
    let unit: UnitName = unit.parse().map_err(|e| PluginError::BadUnit {
        unit: unit.to_owned(),
        reason: format!("{e}"),
    })?;
    let gateways = gateway_pods(client, namespace, farm).await?;
    let token = admin_token(client, namespace, farm).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut out = String::new();
    for pod in &gateways {
        ask(
            &pods,
            pod,
            CONTROL_PORT_NAME,
            http::Method::POST,
            &format!("/units/{unit}/{action}"),
            Some(&token),
        )
        .await?;
        out.push_str(&format!("{}: {action} {unit}: ok\n", pod_name(pod)));
    }
    Ok(out)
}

/// The farm's running gateway pods, by name; an error naming what to check when there is none.
async fn gateway_pods(
    client: &kube::Client,
    namespace: &str,
    farm: &str,
) -> Result<Vec<Pod>, PluginError> {
    let farms: Api<ServerFarm> = Api::namespaced(client.clone(), namespace);
    if farms
        .get_opt(farm)
        .await
        .map_err(api(format!("reading ServerFarm {namespace}/{farm}")))?
        .is_none()
    {
        return Err(PluginError::NoFarm {
            farm: farm.to_owned(),
            namespace: namespace.to_owned(),
        });
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = format!("{}={farm},{}=gateway", labels::FARM, labels::COMPONENT);
    let listed = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(api(format!("listing the pods {selector} in {namespace}")))?;
    let running: BTreeMap<String, Pod> = listed
        .items
        .into_iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .map(|p| (pod_name(&p), p))
        .collect();
    if running.is_empty() {
        return Err(PluginError::NoGateway {
            farm: farm.to_owned(),
            namespace: namespace.to_owned(),
        });
    }
    Ok(running.into_values().collect())
}

async fn admin_token(
    client: &kube::Client,
    namespace: &str,
    farm: &str,
) -> Result<String, PluginError> {
    let secret = tokens_secret_name(farm);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let s = secrets.get(&secret).await.map_err(api(format!(
        "reading Secret {namespace}/{secret} (the farm's admin token)"
    )))?;
    let bad = |reason: &str| PluginError::Token {
        secret: format!("{namespace}/{secret}"),
        reason: reason.to_owned(),
    };
    let bytes = s
        .data
        .and_then(|mut d| d.remove(ADMIN_TOKEN_KEY))
        .ok_or_else(|| bad(&format!("no key {ADMIN_TOKEN_KEY}")))?;
    let token = String::from_utf8(bytes.0).map_err(|_| bad("not text"))?;
    Ok(token.trim().to_owned())
}

fn pod_name(p: &Pod) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

/// The number of the pod's container port called `name`.
fn named_port(p: &Pod, name: &str) -> Option<u16> {
    p.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|port| port.name.as_deref() == Some(name))
        .and_then(|port| u16::try_from(port.container_port).ok())
}

/// One HTTP/1.1 request to a port of a pod, over a port-forward; the body of a 2xx answer.
async fn ask(
    pods: &Api<Pod>,
    pod: &Pod,
    port_name: &'static str,
    method: http::Method,
    path: &str,
    token: Option<&str>,
) -> Result<Bytes, PluginError> {
    let name = pod_name(pod);
    let port = named_port(pod, port_name).ok_or_else(|| PluginError::NoPort {
        pod: name.clone(),
        port: port_name,
    })?;
    let failed = |reason: String| PluginError::Forward {
        pod: name.clone(),
        port,
        reason,
    };
    let mut forward = pods
        .portforward(&name, &[port])
        .await
        .map_err(|e| failed(format!("{e} (you need create on pods/portforward)")))?;
    let stream = forward
        .take_stream(port)
        .ok_or_else(|| failed("no stream for the port".into()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| failed(e.to_string()))?;
    let driver = tokio::spawn(connection);
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "localhost");
    if let Some(t) = token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let request = request
        .body(Full::new(Bytes::new()))
        .expect("a request of a method, a path and headers");
    let answer = sender.send_request(request).await;
    let result = match answer {
        Ok(resp) => {
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| failed(e.to_string()))?
                .to_bytes();
            if status.is_success() {
                Ok(body)
            } else {
                Err(PluginError::Refused {
                    pod: name.clone(),
                    status,
                    body: String::from_utf8_lossy(&body).trim().to_owned(),
                })
            }
        }
        Err(e) => Err(failed(e.to_string())),
    };
    driver.abort();
    forward.abort();
    result
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_takes_a_farm_and_a_unit() {
        Cli::command().debug_assert();
        let cli =
            Cli::try_parse_from(["kubectl-stickyfarm", "-n", "shop", "drain", "web", "web-1"])
                .unwrap();
        assert_eq!(cli.namespace.as_deref(), Some("shop"));
        assert!(matches!(
            cli.command,
            Command::Drain { ref farm, ref unit } if farm == "web" && unit == "web-1"
        ));
        assert!(Cli::try_parse_from(["kubectl-stickyfarm", "drain", "web"]).is_err());
    }
}
