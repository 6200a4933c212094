//! The harness of the end-to-end tests: a cluster from `STICKYFARM_E2E_KUBECONFIG`, the chart
//! installed with helm, the operator run in-process as the chart's ServiceAccount, and waiting.
//!
//! The tests run only when `STICKYFARM_E2E_KUBECONFIG` names a kubeconfig (a dedicated variable,
//! so a developer's `KUBECONFIG` never gets test farms by accident). `scripts/test` sets it to
//! the local control plane of `e2e/cluster/up`. Without it every test prints a loud SKIPPED line.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::Parser as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt as _};
use serde_json::json;
use stickyfarm_api::farm::ServerFarm;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

/// Namespace the chart is installed into.
pub const RELEASE_NAMESPACE: &str = "stickyfarm-system";
/// Helm release name (so the chart's objects are all named `stickyfarm`).
pub const RELEASE: &str = "stickyfarm";
/// The chart's ServiceAccount, as which the operator runs.
pub const OPERATOR_ACCOUNT: &str = "stickyfarm";
/// The label selector of the operator's pods (the chart's `helm test` pod carries the chart's
/// other labels, not this component).
pub const OPERATOR_PODS: &str =
    "app.kubernetes.io/name=stickyfarm,app.kubernetes.io/component=operator";

/// The kubeconfig the tests use, or `None` (and a loud message) when none is configured.
pub fn kubeconfig() -> Option<PathBuf> {
    match std::env::var_os("STICKYFARM_E2E_KUBECONFIG") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            let message = "no cluster. Set STICKYFARM_E2E_KUBECONFIG (scripts/test starts e2e/cluster/up and sets it)";
            if std::env::var_os("STICKYFARM_E2E_REQUIRED").is_some() {
                panic!("STICKYFARM_E2E_REQUIRED is set but there is {message}");
            }
            // Straight to the file descriptor: libtest captures only the print macros, and a
            // skip must be seen.
            let _ = writeln!(std::io::stderr(), "\n*** SKIPPED: {message}. ***\n");
            None
        }
    }
}

async fn config(path: &Path, impersonate: Option<(&str, &str)>) -> anyhow::Result<Config> {
    let file =
        Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let mut config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()).await?;
    if let Some((namespace, account)) = impersonate {
        config.auth_info.impersonate = Some(format!("system:serviceaccount:{namespace}:{account}"));
        config.auth_info.impersonate_groups = Some(vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{namespace}"),
            "system:authenticated".into(),
        ]);
    }
    Ok(config)
}

/// A client acting as the ServiceAccount `account` of `namespace`.
pub async fn impersonate(path: &Path, namespace: &str, account: &str) -> anyhow::Result<Client> {
    Ok(Client::try_from(
        config(path, Some((namespace, account))).await?,
    )?)
}

/// An admin client.
pub async fn admin(path: &Path) -> anyhow::Result<Client> {
    Ok(Client::try_from(config(path, None).await?)?)
}

/// A client that acts as the chart's ServiceAccount: what the operator may do in a cluster is
/// exactly what the chart's RBAC grants.
pub async fn as_operator(path: &Path) -> anyhow::Result<Client> {
    Ok(Client::try_from(
        config(path, Some((RELEASE_NAMESPACE, OPERATOR_ACCOUNT))).await?,
    )?)
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// helm: `HELM`, or the one `scripts/lib.sh` builds.
pub fn helm() -> anyhow::Result<PathBuf> {
    if let Some(h) = std::env::var_os("HELM") {
        return Ok(h.into());
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("no HOME")?;
    let h = cache.join("stickyfarm/tools/helm-v3.22.0/helm");
    if h.exists() {
        Ok(h)
    } else {
        bail!("helm not found: run scripts/test once (it builds helm) or set HELM")
    }
}

/// `helm upgrade --install` of another release of the chart with `--set`s (the test's own;
/// removed with [`uninstall_release`]).
pub fn install_release(
    kubeconfig: &Path,
    release: &str,
    namespace: &str,
    set: &[&str],
) -> anyhow::Result<()> {
    let mut cmd = Command::new(helm()?);
    cmd.args(["upgrade", "--install", release])
        .arg(repo().join("charts/stickyfarm"))
        .args(["--namespace", namespace, "--create-namespace"])
        .env("KUBECONFIG", kubeconfig);
    for s in set {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().context("running helm")?;
    if !out.status.success() {
        bail!(
            "helm install {release} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `helm uninstall` of a release [`install_release`] made.
pub fn uninstall_release(kubeconfig: &Path, release: &str, namespace: &str) -> anyhow::Result<()> {
    let out = Command::new(helm()?)
        .args(["uninstall", release, "--namespace", namespace])
        .env("KUBECONFIG", kubeconfig)
        .output()
        .context("running helm")?;
    if !out.status.success() {
        bail!(
            "helm uninstall {release} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

static INSTALLED: OnceCell<()> = OnceCell::const_new();

/// Installs (or upgrades) the chart once per test run, the way README says.
pub async fn install_chart(kubeconfig: &Path) -> anyhow::Result<()> {
    INSTALLED
        .get_or_try_init(|| async {
            let out = Command::new(helm()?)
                .args(["upgrade", "--install", RELEASE])
                .arg(repo().join("charts/stickyfarm"))
                .args(["--namespace", RELEASE_NAMESPACE, "--create-namespace"])
                .env("KUBECONFIG", kubeconfig)
                .output()
                .context("running helm")?;
            if !out.status.success() {
                bail!(
                    "helm install failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(())
        })
        .await
        .map(|_| ())
}

/// A fresh namespace for one test (deleted first if a previous run left it).
pub async fn namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(name).await?.is_some() {
        // An earlier run's farms keep the database finalizer when the operator that would
        // remove it stopped with that run: without this, the namespace never goes.
        let farms: Api<ServerFarm> = Api::namespaced(client.clone(), name);
        for farm in farms.list(&Default::default()).await.into_iter().flatten() {
            farms
                .patch(
                    &farm.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                )
                .await?;
        }
        let _ = api.delete(name, &DeleteParams::default()).await;
        eventually(
            Duration::from_secs(60),
            &format!("namespace {name} gone"),
            || async { Ok(api.get_opt(name).await?.is_none()) },
        )
        .await?;
    }
    api.patch(
        name,
        &PatchParams::apply("stickyfarm-e2e"),
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})),
    )
    .await?;
    Ok(())
}

/// What the in-process operators of this test binary logged: the operator's own settings
/// (`stickyfarm_api::logs`) as JSON, everything of the operator and of its Kubernetes client down
/// to `trace`, so a test can look for what must never be logged.
static OPERATOR_LOGS: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> =
    std::sync::OnceLock::new();

/// The filter of the captured operator log.
const CAPTURE_FILTER: &str = "info,stickyfarm_operator=trace,kube_client=trace";

fn capture_operator_logs() {
    OPERATOR_LOGS.get_or_init(|| {
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let settings = stickyfarm_api::logs::LogSettings {
            filter: CAPTURE_FILTER.into(),
            format: stickyfarm_api::logs::LogFormat::Json,
            otlp_endpoint: None,
        };
        let sink = out.clone();
        // Another logger installed first (a test's own) leaves nothing captured: the tests
        // that read the capture then fail on its being empty, not pass on it.
        let _ = tracing::subscriber::set_global_default(
            settings.subscriber(move || CapturedLog(sink.clone())),
        );
        out
    });
}

/// The operator log captured so far (see [`OPERATOR_LOGS`]).
pub fn captured_operator_log() -> String {
    OPERATOR_LOGS
        .get()
        .map(|b| String::from_utf8_lossy(&b.lock().unwrap()).into_owned())
        .unwrap_or_default()
}

struct CapturedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The operator, in-process, acting as the chart's ServiceAccount; stops when dropped.
pub struct Operator {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Operator {
    /// Starts the operator with the given extra flags (e.g. `--watch-namespace`).
    pub async fn start(kubeconfig: &Path, flags: &[&str]) -> anyhow::Result<Operator> {
        capture_operator_logs();
        let client = as_operator(kubeconfig).await?;
        let mut args = vec![
            "stickyfarm-operator",
            "--listen",
            "127.0.0.1:0",
            "--lease-namespace",
            RELEASE_NAMESPACE,
            // Long enough for the tests to watch a drain, short enough to wait for its end.
            "--drain-period",
            "10s",
        ];
        args.extend_from_slice(flags);
        let config = stickyfarm_operator::config::Config::try_parse_from(args)?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(stickyfarm_operator::controller::run(
            config,
            client,
            stop.clone(),
        ));
        Ok(Operator {
            stop,
            task: Some(task),
        })
    }

    /// Stops it and returns how it ended.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Polls `check` every 250 ms until it is true or `within` passes; errors in `check` are retried
/// and the last one is reported.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + within;
    let mut last = None;
    while Instant::now() < deadline {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    match last {
        Some(e) => bail!("timed out after {within:?} waiting for {what}; last error: {e:#}"),
        None => bail!("timed out after {within:?} waiting for {what}"),
    }
}

/// The gateway binary with Kubernetes discovery, acting as a farm's gateway ServiceAccount
/// (`<farm>-gateway`, whose Role the operator made); stopped when dropped.
pub struct Gateway {
    child: std::process::Child,
    admin: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts `stickyfarm-gateway --discovery kubernetes` for `farm` in `namespace`.
    pub async fn start(kubeconfig: &Path, namespace: &str, farm: &str) -> anyhow::Result<Gateway> {
        // A kubeconfig that impersonates the gateway's ServiceAccount.
        let mut file = Kubeconfig::read_from(kubeconfig)?;
        for user in &mut file.auth_infos {
            if let Some(info) = user.auth_info.as_mut() {
                info.impersonate =
                    Some(format!("system:serviceaccount:{namespace}:{farm}-gateway"));
                info.impersonate_groups = Some(vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{namespace}"),
                    "system:authenticated".into(),
                ]);
            }
        }
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("gateway.kubeconfig");
        std::fs::write(&path, serde_json::to_string(&file)?)?;
        let (port, admin) = (free_port()?, free_port()?);
        let child = Command::new(stickyfarm_testkit::binary("stickyfarm-gateway"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args([
                "--discovery",
                "kubernetes",
                "--farm",
                farm,
                "--namespace",
                namespace,
            ])
            .env("KUBECONFIG", &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("gateway.log"))?)
            .spawn()
            .context("starting stickyfarm-gateway (cargo build --workspace --bins first)")?;
        Ok(Gateway {
            child,
            admin: ([127, 0, 0, 1], admin).into(),
            _dir: dir,
        })
    }

    /// The rows of the gateway's status table.
    pub async fn units(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let table: serde_json::Value = reqwest::get(format!("http://{}/status", self.admin))
            .await?
            .error_for_status()?
            .json()
            .await
            .context("the status table")?;
        Ok(table["units"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Whether the cluster runs pods (`STICKYFARM_E2E_PODS=1`: a real node beside the local control
/// plane, or kind). The end-to-end suite needs them; without it the suite says SKIPPED loudly.
pub fn pods_run() -> bool {
    switched_on(
        "STICKYFARM_E2E_PODS",
        "this cluster runs no pods. Set STICKYFARM_E2E_PODS=1 on a cluster with nodes (e2e/cluster/up --node, or e2e/kind)",
    )
}

/// Whether the switch `var` is `1`; otherwise a loud SKIPPED line saying `why` (straight to the
/// file descriptor: libtest captures only the print macros).
pub fn switched_on(var: &str, why: &str) -> bool {
    if std::env::var_os(var).is_some_and(|v| v == "1") {
        return true;
    }
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED: {why} ***\n");
    false
}

/// kubectl: `KUBECTL`, or `kubectl` on PATH.
pub fn kubectl_program() -> PathBuf {
    std::env::var_os("KUBECTL").map_or_else(|| PathBuf::from("kubectl"), PathBuf::from)
}

/// Runs `program args` against the test cluster; its stdout, or an error with its stderr.
pub fn run_tool(program: &Path, args: &[&str], kubeconfig: &Path) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .current_dir(repo())
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "{} {} failed ({}): {}",
            program.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `helm upgrade --install stickyfarm charts/stickyfarm --wait`, as a user installs it on a
/// cluster that runs pods, with the cluster's own values if it has any
/// (`STICKYFARM_E2E_VALUES`: the test node's image references).
pub fn install_chart_with_pods(kubeconfig: &Path) -> anyhow::Result<()> {
    let values = std::env::var("STICKYFARM_E2E_VALUES").unwrap_or_default();
    let mut args = vec![
        "upgrade",
        "--install",
        RELEASE,
        "charts/stickyfarm",
        "--namespace",
        RELEASE_NAMESPACE,
        "--create-namespace",
        "--wait",
    ];
    if !values.is_empty() {
        args.extend(["--values", values.as_str()]);
    }
    helm_run(kubeconfig, &args).map(drop)
}

/// A fresh namespace `ns` (an earlier run's is deleted first) with `examples/<example>` applied
/// by kubectl, waited for until the farm `farm` is Ready.
pub fn apply_example_farm(
    kubeconfig: &Path,
    ns: &str,
    example: &str,
    farm: &str,
) -> anyhow::Result<()> {
    kubectl(
        kubeconfig,
        &[
            "delete",
            "namespace",
            ns,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=180s",
        ],
    )?;
    kubectl(kubeconfig, &["create", "namespace", ns])?;
    kubectl(
        kubeconfig,
        &["apply", "-n", ns, "-f", &format!("examples/{example}")],
    )?;
    kubectl(
        kubeconfig,
        &[
            "wait",
            "-n",
            ns,
            &format!("serverfarm/{farm}"),
            "--for=condition=Ready",
            "--timeout=240s",
        ],
    )
    .map(drop)
}

/// `kubectl args`.
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<String> {
    run_tool(&kubectl_program(), args, kubeconfig)
}

/// `kubectl scale` of the farm `farm` in `namespace` to `replicas` units (its scale
/// subresource, as a user or an autoscaler scales it).
pub fn scale_farm(
    kubeconfig: &Path,
    namespace: &str,
    farm: &str,
    replicas: u32,
) -> anyhow::Result<()> {
    kubectl(
        kubeconfig,
        &[
            "scale",
            "-n",
            namespace,
            &format!("serverfarm/{farm}"),
            &format!("--replicas={replicas}"),
        ],
    )
    .map(drop)
}

/// `kubectl stickyfarm args`: kubectl finds the plugin `kubectl-stickyfarm` of this build (the
/// folder of the test binaries' build, where `cargo build --bins` puts it) on its PATH.
pub fn kubectl_stickyfarm(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<String> {
    let bin_dir = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .context("the test binary's folder")?
        .to_owned();
    ensure!(
        bin_dir.join("kubectl-stickyfarm").exists(),
        "no kubectl-stickyfarm in {}: cargo build --bins first",
        bin_dir.display()
    );
    let path = std::env::join_paths(std::iter::once(bin_dir).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))?;
    let out = Command::new(kubectl_program())
        .arg("stickyfarm")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("PATH", path)
        .output()
        .context("running kubectl stickyfarm")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "kubectl stickyfarm {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(stdout)
}

/// `helm args`.
pub fn helm_run(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<String> {
    run_tool(&helm()?, args, kubeconfig)
}

/// A pod's port as this machine reaches it: the pod's IP where pods are on a network of this
/// machine (the test node's CNI bridge), else a `kubectl port-forward` (kind), stopped when dropped.
pub struct Reach {
    /// Where to connect.
    pub addr: std::net::SocketAddr,
    forward: Option<std::process::Child>,
}

impl Reach {
    /// `port` of `pod` in `namespace`.
    pub async fn pod(
        kubeconfig: &Path,
        namespace: &str,
        pod: &str,
        port: u16,
    ) -> anyhow::Result<Reach> {
        if std::env::var_os("STICKYFARM_E2E_PORT_FORWARD").is_none() {
            let ip = kubectl(
                kubeconfig,
                &[
                    "get",
                    "pod",
                    "-n",
                    namespace,
                    pod,
                    "-o",
                    "jsonpath={.status.podIP}",
                ],
            )?;
            let ip: std::net::IpAddr = ip
                .trim()
                .parse()
                .with_context(|| format!("pod {pod} has no IP yet"))?;
            return Ok(Reach {
                addr: (ip, port).into(),
                forward: None,
            });
        }
        let mut child = Command::new(kubectl_program())
            .args([
                "port-forward",
                "-n",
                namespace,
                &format!("pod/{pod}"),
                &format!(":{port}"),
            ])
            .env("KUBECONFIG", kubeconfig)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting kubectl port-forward")?;
        // "Forwarding from 127.0.0.1:43567 -> 8000"
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().context("no stdout")?),
            &mut line,
        )?;
        let local = line
            .split_whitespace()
            .nth(2)
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("kubectl port-forward said {line:?}"))?;
        Ok(Reach {
            addr: local,
            forward: Some(child),
        })
    }
}

impl Drop for Reach {
    fn drop(&mut self) {
        if let Some(c) = self.forward.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
