//! What only a real node shows (`e2e/cluster/up --node`: kubelet, containerd, runc, kube-proxy,
//! CoreDNS on this machine): the pods' security contexts as the kernel enforces them on the
//! running processes, and a farm reached as a user in the cluster reaches it — a DNS name
//! answered by CoreDNS, a Service port that differs from its target port, kube-proxy's virtual
//! IP, NetworkPolicies enforced (kube-router's firewall), probes as the kubelet runs them — and
//! scaling down and a rolling update of the app's image, under load, that lose nothing.
//!
//! Runs when `STICKYFARM_E2E_HOST_NODE=1` says the cluster's node runs on this machine (its
//! containers' processes are visible here); `e2e/cluster/up --node` prints that export.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use stickyfarm_e2e::{
    OPERATOR_PODS, admin, apply_example_farm, install_chart_with_pods, kubeconfig, kubectl,
    scale_farm, switched_on,
};
use stickyfarm_testkit::Browser;

const NS: &str = "node-check";
const FARM: &str = "webstore";
const RELEASE_NS: &str = "stickyfarm-system";
/// The non-root user of Stickyfarm's images (distroless "nonroot").
const NONROOT: &str = "65532";

fn host_node() -> bool {
    switched_on(
        "STICKYFARM_E2E_HOST_NODE",
        "the cluster's node does not run on this machine. Set STICKYFARM_E2E_HOST_NODE=1 with e2e/cluster/up --node",
    )
}

/// The main process of a container, found through its cgroup (the kubelet's cgroupfs layout
/// names the leaf after the container id).
fn container_pid(container_id: &str) -> anyhow::Result<u32> {
    let id = container_id
        .strip_prefix("containerd://")
        .context("a containerd container id")?;
    let root = Path::new("/sys/fs/cgroup/pids/stickyfarm-e2e");
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            if path.file_name().is_some_and(|n| n.to_string_lossy() == id) {
                let procs = std::fs::read_to_string(path.join("cgroup.procs"))?;
                return procs
                    .lines()
                    .filter_map(|l| l.parse().ok())
                    .min()
                    .context("the container's cgroup has no process");
            }
            stack.push(path);
        }
    }
    bail!("no cgroup for container {id} under {}", root.display())
}

/// `field` of /proc/PID/status, e.g. "Uid" → "65532\t65532\t65532\t65532".
fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Whether the process's root filesystem is mounted read-only (its own mount namespace).
fn root_read_only(pid: u32) -> anyhow::Result<bool> {
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    // "36 35 98:0 / / ro,relatime - overlay overlay rw,...": field 5 is the mount point, 6 the
    // per-mount options.
    let root = mountinfo
        .lines()
        .rfind(|l| l.split_whitespace().nth(4) == Some("/"))
        .context("no root mount")?;
    Ok(root
        .split_whitespace()
        .nth(5)
        .is_some_and(|o| o.split(',').any(|x| x == "ro")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_farm_on_a_real_node_runs_confined_and_is_reached_through_dns_and_services()
-> anyhow::Result<()> {
    let Some(kc) = kubeconfig() else {
        return Ok(());
    };
    if !host_node() {
        return Ok(());
    }
    let kc = kc.as_path();
    let client = admin(kc).await?;
    install_chart_with_pods(kc)?;
    apply_example_farm(kc, NS, "webstore.yaml", FARM)?;

    containers_run_confined(&client).await?;
    let base = reached_through_dns_and_a_service(&client).await?;
    network_policies_hold(kc, &client).await?;
    scaling_down_and_a_rolling_update_lose_nothing(kc, &client, &base).await?;
    an_app_failing_its_liveness_probe_restarts_alone(kc, &client).await?;
    an_express_farm_keeps_its_carts_when_a_unit_dies(kc, &client).await?;

    kubectl(
        kc,
        &["delete", "namespace", NS, "--wait=true", "--timeout=180s"],
    )?;
    Ok(())
}

/// Every container of a unit pod, the gateway and the operator: the kernel runs them as the
/// images' non-root user, with no capability, no way to gain privileges, a seccomp filter,
/// and the root filesystem their spec declares (read-only for Stickyfarm's own).
async fn containers_run_confined(client: &kube::Client) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let operator_pods: Api<Pod> = Api::namespaced(client.clone(), RELEASE_NS);
    let mut checked = Vec::new();
    let unit = pods.get(&format!("{FARM}-0")).await?;
    let gateway = pods
        .list(&kube::api::ListParams::default().labels(&format!(
            "stickyfarm.dev/farm={FARM},stickyfarm.dev/component=gateway"
        )))
        .await?
        .items;
    let operator = operator_pods
        .list(&kube::api::ListParams::default().labels(OPERATOR_PODS))
        .await?
        .items;
    for pod in std::iter::once(&unit).chain(&gateway).chain(&operator) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        for c in pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
        {
            let id = c.container_id.as_deref().context("a started container")?;
            let pid = container_pid(id)?;
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
            let what = format!("{name}/{} (pid {pid})", c.name);
            ensure!(
                status_field(&status, "Uid")
                    .split_whitespace()
                    .all(|u| u == NONROOT),
                "{what} runs as uid {NONROOT}: {}",
                status_field(&status, "Uid")
            );
            ensure!(
                status_field(&status, "CapEff") == "0000000000000000"
                    && status_field(&status, "CapBnd") == "0000000000000000",
                "{what} holds no capability: CapEff {} CapBnd {}",
                status_field(&status, "CapEff"),
                status_field(&status, "CapBnd")
            );
            ensure!(
                status_field(&status, "NoNewPrivs") == "1",
                "{what} cannot gain privileges"
            );
            ensure!(
                status_field(&status, "Seccomp") == "2",
                "{what} runs under a seccomp filter"
            );
            // Stickyfarm's containers declare a read-only root; the user's app may write to
            // its own (the operator leaves it writable). The kernel must match the spec.
            let declared = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.iter().find(|x| x.name == c.name))
                .and_then(|x| x.security_context.as_ref())
                .and_then(|x| x.read_only_root_filesystem)
                .unwrap_or(false);
            ensure!(
                declared || c.name == "app",
                "{what} declares a read-only root filesystem"
            );
            ensure!(
                root_read_only(pid)? == declared,
                "{what}'s root filesystem is mounted {} as its spec says",
                if declared { "read-only" } else { "writable" }
            );
            checked.push(what);
        }
    }
    ensure!(
        checked.len() >= 4,
        "the sidecar, the app, the gateway and the operator were checked: {checked:?}"
    );

    Ok(())
}

/// A user's way in: the gateway's name answered by CoreDNS through the kube-dns Service, then
/// its Service port (not the container's) on the virtual IP kube-proxy serves. Returns that
/// base URL.
async fn reached_through_dns_and_a_service(client: &kube::Client) -> anyhow::Result<String> {
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let svc = services.get(&format!("{FARM}-gateway")).await?;
    let spec = svc.spec.context("a Service spec")?;
    let port = spec
        .ports
        .as_ref()
        .and_then(|p| p.first())
        .context("a port")?;
    let target = match &port.target_port {
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p)) => *p,
        other => bail!("a numeric target port, got {other:?}"),
    };
    ensure!(
        port.port != target,
        "the gateway's Service port {} differs from its target port {target}",
        port.port
    );
    let dns = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("node/dns-query"))
        .args([
            "10.96.0.10",
            &format!("{FARM}-gateway.{NS}.svc.cluster.local"),
        ])
        .output()?;
    let address = String::from_utf8_lossy(&dns.stdout).trim().to_owned();
    ensure!(
        dns.status.success() && Some(address.as_str()) == spec.cluster_ip.as_deref(),
        "CoreDNS answers the gateway's name with its ClusterIP {:?}, got {address:?} ({})",
        spec.cluster_ip,
        String::from_utf8_lossy(&dns.stderr).trim()
    );
    let page = reqwest::get(format!("http://{address}:{}/", port.port)).await?;
    ensure!(
        page.status().is_success(),
        "the shop answers on {address}:{}: {}",
        port.port,
        page.status()
    );
    let served_by = page
        .headers()
        .get("x-stickyfarm-unit")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = page.text().await?;
    ensure!(
        body.contains(&format!("{FARM}-")),
        "the page names the unit that served it (headers: {served_by:?})"
    );

    Ok(format!("http://{address}:{}", port.port))
}

/// Probes as the kubelet runs them, against the units' design: the app's liveness probe (the
/// farm's `app.livenessProbe`, here a path the shop does not have) makes the kubelet restart
/// the app container, and only it — the sidecar's liveness asks only whether the sidecar
/// answers, so its cache survives — while the sidecar's readiness, which covers the app, takes
/// the unit out of service as long as the app is down. The namespace goes afterwards.
async fn an_app_failing_its_liveness_probe_restarts_alone(
    kc: &Path,
    client: &kube::Client,
) -> anyhow::Result<()> {
    let probe = json!({"httpGet": {"path": "/no-such-page", "port": 3000},
                       "periodSeconds": 2, "failureThreshold": 1});
    patch_app(kc, json!({"livenessProbe": probe}))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    // The StatefulSet rolls from the highest ordinal and waits for it to be Ready, which a unit
    // whose app keeps failing never is: the new template reaches unit 2 only.
    let pod_name = format!("{FARM}-2");
    let restarts = |p: &Pod, container: &str| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == container))
            .map_or(0, |c| c.restart_count)
    };
    // Bounded: 180 s, polled every 500 ms.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut seen_not_ready = false;
    loop {
        ensure!(
            Instant::now() < deadline,
            "{pod_name}'s app was not restarted twice by its liveness probe within 180 s"
        );
        if let Some(p) = pods.get_opt(&pod_name).await?
            && p.metadata.deletion_timestamp.is_none()
            && p.spec.as_ref().is_some_and(|s| {
                s.containers
                    .iter()
                    .any(|c| c.name == "app" && c.liveness_probe.is_some())
            })
        {
            seen_not_ready |= !stickyfarm_operator::status::pod_ready(&p);
            ensure!(
                restarts(&p, "stickyfarm-sidecar") == 0,
                "the sidecar of {pod_name} was restarted with the app"
            );
            if restarts(&p, "app") >= 2 && seen_not_ready {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// The shop in a second language as a second farm: examples/express-shop (express-session
/// through adapters/node, its image assembled by e2e/node/images/build) from its own farm.yaml.
/// A cart on one unit, that unit's pod killed, and the same link answers from another instance
/// with the cart intact. Its namespace goes afterwards.
async fn an_express_farm_keeps_its_carts_when_a_unit_dies(
    kc: &Path,
    client: &kube::Client,
) -> anyhow::Result<()> {
    const EXPRESS_NS: &str = "express-check";
    const EXPRESS_FARM: &str = "express-shop";
    apply_example_farm(kc, EXPRESS_NS, "express-shop/farm.yaml", EXPRESS_FARM)?;
    let services: Api<Service> = Api::namespaced(client.clone(), EXPRESS_NS);
    let spec = services
        .get(&format!("{EXPRESS_FARM}-gateway"))
        .await?
        .spec
        .context("a Service spec")?;
    let ip = spec.cluster_ip.clone().context("a ClusterIP")?;
    let port = spec
        .ports
        .as_ref()
        .and_then(|p| p.first())
        .context("a port")?
        .port;
    let mut b = Browser::new();
    let me = b.get(&format!("http://{ip}:{port}/api/whoami")).await;
    ensure!(
        me.status == 200,
        "the Express shop answers: {} {}",
        me.status,
        me.body
    );
    let me = me.json();
    let unit = me["unit"]
        .as_str()
        .context("whoami names the unit")?
        .to_owned();
    let killed = me["instance"]
        .as_str()
        .context("and its instance")?
        .to_owned();
    // The unit's link, as the page gives it: absolute when the gateway knows the farm's public
    // address, else a path on the gateway, resolved as a browser would (the Service here).
    let unit_url = me["unit_url"].as_str().context("and its link")?;
    let unit_url = if unit_url.starts_with('/') {
        format!("http://{ip}:{port}{unit_url}")
    } else {
        unit_url.to_owned()
    };
    ensure!(
        unit_url.contains(&format!("/_unit/{unit}")),
        "the unit's link {unit_url} addresses the unit"
    );
    for (sku, qty) in [("apple", 2), ("tea", 1)] {
        let added = b
            .send(
                Method::POST,
                &format!("{unit_url}/api/cart/items"),
                Some(&json!({"sku": sku, "qty": qty})),
            )
            .await;
        ensure!(
            added.status == 200,
            "adding {sku}: {} {}",
            added.status,
            added.body
        );
    }
    kubectl(
        kc,
        &[
            "delete",
            "pod",
            "-n",
            EXPRESS_NS,
            &unit,
            "--grace-period=0",
            "--force",
        ],
    )?;
    // Bounded: 60 s, polled every 250 ms. Every answer meanwhile has the whole cart; the last
    // comes from another instance (a backup, or the unit's pod started again).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let cart = b.get(&format!("{unit_url}/api/cart")).await;
        ensure!(
            cart.status == 200,
            "the cart after the kill: {} {}",
            cart.status,
            cart.body
        );
        let cart = cart.json();
        ensure!(
            cart["items"] == json!({"apple": 2, "tea": 1}),
            "the cart survived its unit: {cart}"
        );
        if cart["instance"].as_str() != Some(killed.as_str()) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{unit} still answered from the killed instance after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    kubectl(
        kc,
        &[
            "delete",
            "namespace",
            EXPRESS_NS,
            "--wait=true",
            "--timeout=180s",
        ],
    )
    .map(drop)
}

/// A shopper puts one more of `sku` into its cart (the shop's JSON API).
async fn add_one(b: &mut Browser, base: &str, sku: &str) -> stickyfarm_testkit::Page {
    b.send(
        Method::POST,
        &format!("{base}/api/cart/items"),
        Some(&json!({"sku": sku, "qty": 1})),
    )
    .await
}

/// `kubectl patch` of the farm's `spec.app` with `app` (a merge patch, as a user edits it).
fn patch_app(kc: &Path, app: Value) -> anyhow::Result<()> {
    let patch = json!({"spec": {"app": app}}).to_string();
    kubectl(
        kc,
        &[
            "patch",
            "-n",
            NS,
            "serverfarm",
            FARM,
            "--type",
            "merge",
            "-p",
            &patch,
        ],
    )
    .map(drop)
}

/// The farm's NetworkPolicies as kube-router's firewall enforces them, tried from two pods
/// that are not the farm's: one in another namespace, one in the farm's own. Each tries a TCP
/// connection (busybox `nc`). The gateway's public port stays open to both (which also shows
/// the probes' network works); the units, the gateway's admin port and the database refuse
/// them. The farm's own traffic (gateway → units → database) keeps working: the shop answered
/// above and the carts are written below.
async fn network_policies_hold(kc: &Path, client: &kube::Client) -> anyhow::Result<()> {
    const OTHER_NS: &str = "node-check-other";
    kubectl(
        kc,
        &[
            "delete",
            "namespace",
            OTHER_NS,
            "--ignore-not-found",
            "--wait=true",
        ],
    )?;
    kubectl(kc, &["create", "namespace", OTHER_NS])?;
    for ns in [OTHER_NS, NS] {
        kubectl(
            kc,
            &[
                "run",
                "-n",
                ns,
                "probe",
                "--image=localhost/stickyfarm-e2e/busybox:1",
                "--image-pull-policy=Never",
                "--restart=Never",
                "--command",
                "--",
                "/bin/busybox",
                "sleep",
                "600",
            ],
        )?;
        kubectl(
            kc,
            &[
                "wait",
                "-n",
                ns,
                "pod/probe",
                "--for=condition=Ready",
                "--timeout=60s",
            ],
        )?;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let ip = |p: Pod| p.status.and_then(|s| s.pod_ip).unwrap_or_default();
    let unit = ip(pods.get(&format!("{FARM}-0")).await?);
    let database = ip(pods.get(&format!("{FARM}-db-0")).await?);
    let gateway = ip(pods
        .list(&kube::api::ListParams::default().labels(&format!(
            "stickyfarm.dev/farm={FARM},stickyfarm.dev/component=gateway"
        )))
        .await?
        .items
        .into_iter()
        .next()
        .context("the gateway pod")?);
    let connects = |ns: &str, ip: &str, port: u16| {
        kubectl(
            kc,
            &[
                "exec",
                "-n",
                ns,
                "probe",
                "--",
                "/bin/busybox",
                "nc",
                "-w",
                "3",
                ip,
                &port.to_string(),
            ],
        )
        .is_ok()
    };
    let cases = [
        (OTHER_NS, "the gateway's public port", &gateway, 8000, true),
        (NS, "the gateway's public port", &gateway, 8000, true),
        (OTHER_NS, "the gateway's admin port", &gateway, 9465, false),
        (OTHER_NS, "a unit's sidecar", &unit, 8080, false),
        (NS, "a unit's sidecar", &unit, 8080, false),
        (OTHER_NS, "a unit's metrics port", &unit, 9464, false),
        (OTHER_NS, "the database", &database, 5432, false),
        (NS, "the database", &database, 5432, false),
    ];
    let mut wrong = Vec::new();
    for (ns, what, ip, port, open) in cases {
        if connects(ns, ip, port) != open {
            wrong.push(format!(
                "from {ns}: {what} ({ip}:{port}) is {}",
                if open { "refused" } else { "open" }
            ));
        }
    }
    ensure!(
        wrong.is_empty(),
        "the farm's NetworkPolicies do not hold: {wrong:?}"
    );
    kubectl(kc, &["delete", "pod", "-n", NS, "probe", "--wait=false"])?;
    kubectl(kc, &["delete", "namespace", OTHER_NS, "--wait=false"])?;
    Ok(())
}

/// The shop's products; each shopper buys one of them.
const CATALOG: [&str; 6] = ["apple", "bread", "cheese", "coffee", "honey", "tea"];
/// Adds stop here, below the shop's limit of 99 of one product.
const MAX_HELD: u64 = 90;

/// Shoppers using their carts through the gateway's Service, with what each was told: its
/// cart as acknowledged and the unit that answered it last.
struct Shoppers {
    list: Vec<Shopper>,
    requests: u32,
    failures: Vec<String>,
}

struct Shopper {
    b: Browser,
    sku: String,
    want: Value,
    unit: String,
}

impl Shoppers {
    /// `n` shoppers with a first item each, placed by the gateway.
    async fn start(base: &str, n: usize) -> anyhow::Result<Self> {
        let mut list = Vec::new();
        for i in 0..n {
            let mut b = Browser::new();
            let sku = CATALOG[i % CATALOG.len()].to_owned();
            let p = add_one(&mut b, base, &sku).await;
            ensure!(
                p.status == 200,
                "shopper {i}'s first item: {} {}",
                p.status,
                p.body
            );
            list.push(Shopper {
                b,
                want: json!({ (sku.clone()): 1 }),
                sku,
                unit: String::new(),
            });
        }
        let mut s = Shoppers {
            list,
            requests: 0,
            failures: Vec::new(),
        };
        s.round(base, 0).await;
        s.settled("placing the shoppers")?;
        Ok(s)
    }

    /// One round: every shopper reads its cart, and in every fifth round adds one more item
    /// (up to 90; not replayed by the gateway, so a failure shows). A read must answer the cart as
    /// acknowledged so far.
    async fn round(&mut self, base: &str, round: u32) {
        for (i, s) in self.list.iter_mut().enumerate() {
            self.requests += 1;
            let held = s.want[&s.sku].as_u64().unwrap_or(0);
            if round % 5 == 4 && held < MAX_HELD {
                let p = add_one(&mut s.b, base, &s.sku).await;
                if p.status == 200 {
                    s.want[&s.sku] = json!(s.want[&s.sku].as_u64().unwrap_or(0) + 1);
                } else {
                    self.failures
                        .push(format!("shopper {i} add: {} {}", p.status, p.body));
                }
                continue;
            }
            let p =
                s.b.send(Method::GET, &format!("{base}/api/cart"), None)
                    .await;
            let cart = p.json();
            if p.status != 200 {
                self.failures
                    .push(format!("shopper {i} read: {} {}", p.status, p.body));
            } else if cart["items"] != s.want {
                self.failures
                    .push(format!("shopper {i} cart {} != {}", cart["items"], s.want));
            } else {
                s.unit = cart["unit"].as_str().unwrap_or_default().to_owned();
            }
        }
    }

    /// The units the shoppers were last answered by.
    fn units(&self) -> std::collections::BTreeSet<&str> {
        self.list.iter().map(|s| s.unit.as_str()).collect()
    }

    /// Fails, naming them, if any request failed or lost an item so far.
    fn settled(&self, what: &str) -> anyhow::Result<()> {
        ensure!(
            self.failures.is_empty(),
            "{what}: {} of {} requests failed or lost items: {:?}",
            self.failures.len(),
            self.requests,
            &self.failures[..self.failures.len().min(10)]
        );
        Ok(())
    }
}

/// The farm's unit pods: (name, ready, app image), terminating ones left out.
async fn unit_pods(client: &kube::Client) -> anyhow::Result<Vec<(String, bool, String)>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let list = pods
        .list(&kube::api::ListParams::default().labels(&format!(
            "stickyfarm.dev/farm={FARM},stickyfarm.dev/component=unit"
        )))
        .await?;
    let mut units: Vec<_> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let image = p
                .spec
                .as_ref()
                .and_then(|s| s.containers.iter().find(|c| c.name == "app"))
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            (
                p.metadata.name.clone().unwrap_or_default(),
                stickyfarm_operator::status::pod_ready(p),
                image,
            )
        })
        .collect();
    units.sort();
    Ok(units)
}

/// Scaling down and a rolling update of the app's image, each under a steady load of shoppers
/// through the gateway's Service: not one request fails, not one acknowledged item is lost,
/// and every session goes on on a unit that stays. The farm grows to 6 units and shoppers are
/// placed until the 3 to be removed hold some; then 6 → 3: the removed units drain (their
/// sessions move at their next request) and go. Then the app's image changes: the
/// StatefulSet replaces every unit pod, one at a time. The new image is the same shop under
/// another tag (`ctr images tag` on the node, as a user's push of a new version would give).
async fn scaling_down_and_a_rolling_update_lose_nothing(
    kc: &Path,
    client: &kube::Client,
    base: &str,
) -> anyhow::Result<()> {
    scale_farm(kc, NS, FARM, 6)?;
    let grown = Instant::now();
    loop {
        let pods = unit_pods(client).await?;
        if pods.len() == 6 && pods.iter().all(|p| p.1) {
            break;
        }
        ensure!(
            grown.elapsed() < Duration::from_secs(240),
            "6 unit pods ready within 240 s: {pods:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Shoppers, until the units to be removed hold at least 3 of them. The gateway ramps new
    // units up over its slow start (30 s, from 5 % of an old unit's share), so shoppers are
    // added over that time rather than all at once: 48 placed in the first 6 s once left
    // the new units fewer than 3. Bounded: 96 shoppers, 120 s.
    let removed = [
        format!("{FARM}-3"),
        format!("{FARM}-4"),
        format!("{FARM}-5"),
    ];
    let mut shoppers = Shoppers::start(base, 8).await?;
    let placing = Instant::now();
    loop {
        let on_removed = shoppers
            .list
            .iter()
            .filter(|s| removed.contains(&s.unit))
            .count();
        if on_removed >= 3 {
            break;
        }
        ensure!(
            shoppers.list.len() < 96 && placing.elapsed() < Duration::from_secs(120),
            "the gateway placed no 3 of {} shoppers on {removed:?}: {:?}",
            shoppers.list.len(),
            shoppers.units()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let more = Shoppers::start(base, 4).await?;
        shoppers.list.extend(more.list);
        shoppers.requests += more.requests;
    }
    let _ = writeln!(
        std::io::stderr(),
        "{} shoppers on {:?}",
        shoppers.list.len(),
        shoppers.units()
    );

    // 6 → 3 under load. Bounded: at most 240 s and 2,000 rounds.
    scale_farm(kc, NS, FARM, 3)?;
    let started = Instant::now();
    let mut all_moved = None;
    let mut round = 0u32;
    loop {
        ensure!(
            started.elapsed() < Duration::from_secs(240) && round < 2000,
            "the removed units were not gone within 240 s ({} requests)",
            shoppers.requests
        );
        shoppers.round(base, round).await;
        round += 1;
        if all_moved.is_none()
            && shoppers
                .units()
                .iter()
                .all(|u| !removed.iter().any(|r| r == u))
        {
            all_moved = Some(started.elapsed());
        }
        if round.is_multiple_of(10) && unit_pods(client).await?.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let removal = started.elapsed();
    // One more round on the units that stay.
    shoppers.round(base, 1).await;
    let units = shoppers.units();
    let _ = writeln!(
        std::io::stderr(),
        "scale 6 -> 3: {} requests; every session off the removed units after {all_moved:?}, \
         the removed pods gone after {removal:?}; {} failed; now on {units:?}",
        shoppers.requests,
        shoppers.failures.len()
    );
    shoppers.settled("scaling 6 -> 3")?;
    ensure!(
        all_moved.is_some_and(|t| t < removal),
        "every session moved off the draining units before they went ({all_moved:?}, {removal:?})"
    );
    ensure!(
        units.iter().all(|u| !removed.iter().any(|r| r == u)),
        "every session goes on on a unit that stays: {units:?}"
    );

    rolling_update(kc, client, base, &mut shoppers).await
}

/// The app's image changes under the shoppers' load (see
/// `scaling_down_and_a_rolling_update_lose_nothing`).
async fn rolling_update(
    kc: &Path,
    client: &kube::Client,
    base: &str,
    shoppers: &mut Shoppers,
) -> anyhow::Result<()> {
    let dir = std::env::var("STICKYFARM_CLUSTER_DIR")
        .unwrap_or_else(|_| "/tmp/stickyfarm-cluster".into());
    let node = Path::new(&dir).join("node");
    let farm: Value = serde_json::from_str(&kubectl(
        kc,
        &["get", "-n", NS, "serverfarm", FARM, "-o", "json"],
    )?)?;
    let old_image = farm["spec"]["app"]["image"]
        .as_str()
        .context("the farm's app image")?
        .to_owned();
    let new_image = format!("{old_image}-rollout");
    let tagged = Command::new(node.join("bin/ctr"))
        .arg("--address")
        .arg(node.join("containerd.sock"))
        .args([
            "-n", "k8s.io", "images", "tag", "--force", &old_image, &new_image,
        ])
        .output()?;
    ensure!(
        tagged.status.success(),
        "ctr images tag: {}",
        String::from_utf8_lossy(&tagged.stderr)
    );
    patch_app(kc, json!({"image": new_image}))?;
    let rolled = || async {
        let pods = unit_pods(client).await?;
        anyhow::Ok(pods.len() == 3 && pods.iter().all(|p| p.1 && p.2 == new_image))
    };
    // Bounded: at most 240 s and 2,000 rounds.
    let started = Instant::now();
    let before = shoppers.requests;
    let mut round = 0u32;
    loop {
        ensure!(
            started.elapsed() < Duration::from_secs(240) && round < 2000,
            "the rolling update did not finish within 240 s"
        );
        shoppers.round(base, round).await;
        round += 1;
        if round.is_multiple_of(10) && rolled().await? {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shoppers.round(base, 1).await;
    let _ = writeln!(
        std::io::stderr(),
        "rolling update to {new_image}: {} requests in {:?}, {} failed; now on {:?}",
        shoppers.requests - before,
        started.elapsed(),
        shoppers.failures.len(),
        shoppers.units()
    );
    shoppers.settled("the rolling update")
}
