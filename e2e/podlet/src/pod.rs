//! One pod's life on the podlet: network, volumes, containers with their probes and restarts,
//! status, and graceful termination.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::enter::Bind;
use crate::env::Sources;
use crate::hosts::{Hosts, PodEntry};
use crate::images::{ImageTable, Resolved};
use crate::net::{self, Addresses, PodNetwork};
use crate::probe::{self, Timing, Verdict};
use crate::status::{self, ContainerView, Ended, PodView};
use crate::{Settings, volumes};

/// What every pod worker shares.
pub struct Ctx {
    /// The API client (the node's credentials).
    pub client: Client,
    /// Command-line settings.
    pub settings: Settings,
    /// The image table.
    pub images: ImageTable,
    /// Pod addresses.
    pub addresses: Addresses,
    /// Name resolution for pods.
    pub hosts: Arc<Hosts>,
}

/// How a container is started: the argv, environment and identity inside the pod.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// User.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Bind mounts.
    pub mounts: Vec<Bind>,
    /// Working folder.
    pub workdir: String,
    /// The image's stop signal.
    pub stop_signal: Signal,
}

/// The program and arguments, by Kubernetes' rules for command/args over ENTRYPOINT/CMD.
pub fn argv(
    container: &Container,
    image: &Resolved,
    env: &BTreeMap<String, String>,
) -> Vec<String> {
    let expand = |v: &Vec<String>| {
        v.iter()
            .map(|a| crate::env::expand(a, env))
            .collect::<Vec<_>>()
    };
    match (&container.command, &container.args) {
        (Some(cmd), args) => [expand(cmd), args.as_ref().map(expand).unwrap_or_default()].concat(),
        (None, Some(args)) => [image.entrypoint.clone(), expand(args)].concat(),
        (None, None) => [image.entrypoint.clone(), image.cmd.clone()].concat(),
    }
}

/// User, group and supplementary groups of a container, refusing root under runAsNonRoot.
pub fn identity(
    pod: &Pod,
    container: &Container,
    image: &Resolved,
) -> Result<(u32, u32, Vec<u32>), String> {
    let psc = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.clone())
        .unwrap_or_default();
    let csc = container.security_context.clone().unwrap_or_default();
    let uid = csc
        .run_as_user
        .or(psc.run_as_user)
        .unwrap_or(i64::from(image.user));
    let gid = csc.run_as_group.or(psc.run_as_group).unwrap_or(uid);
    if csc.run_as_non_root.or(psc.run_as_non_root) == Some(true) && uid == 0 {
        return Err("container has runAsNonRoot and image will run as root".into());
    }
    let to_u32 = |v: i64| u32::try_from(v).map_err(|_| format!("id {v} is out of range"));
    let (mut uid, mut gid) = (to_u32(uid)?, to_u32(gid)?);
    if let Some(account) = image.user_map.get(&uid) {
        let user = nix::unistd::User::from_name(account)
            .ok()
            .flatten()
            .ok_or_else(|| {
                format!(
                    "the image's user {uid} maps to account {account:?}, which this machine lacks"
                )
            })?;
        if gid == uid {
            gid = user.gid.as_raw();
        }
        uid = user.uid.as_raw();
    }
    let mut groups: Vec<u32> = psc
        .fs_group
        .into_iter()
        .chain(psc.supplemental_groups.into_iter().flatten())
        .filter_map(|g| u32::try_from(g).ok())
        .collect();
    groups.dedup();
    Ok((uid, gid, groups))
}

/// A pod's worker. It returns when the pod is deleted (after termination) or the podlet stops.
pub async fn run(
    ctx: Arc<Ctx>,
    updates: watch::Receiver<Pod>,
    gone: CancellationToken,
    shutdown: CancellationToken,
) {
    let pod = updates.borrow().clone();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let key: String = uid.replace('-', "").chars().take(11).collect();
    let dir = ctx
        .settings
        .state_dir
        .join("pods")
        .join(format!("{ns}_{name}_{key}"));
    let logs = ctx
        .settings
        .state_dir
        .join("logs")
        .join(format!("{ns}_{name}_{key}"));
    let spec = pod.spec.clone().unwrap_or_default();
    let view = Arc::new(Mutex::new(PodView {
        host_ip: ctx.settings.bridge_ip,
        pod_ip: None,
        start_time: Timestamp::now(),
        containers: spec
            .containers
            .iter()
            .map(|c| ContainerView::new(&c.name, c.image.as_deref().unwrap_or_default()))
            .collect(),
        sandbox_ready: false,
    }));
    let changed = Arc::new(Notify::new());
    let stop_status = CancellationToken::new();
    let reporter = tokio::spawn(report_status(
        ctx.client.clone(),
        ns.clone(),
        name.clone(),
        view.clone(),
        changed.clone(),
        stop_status.clone(),
    ));
    tracing::info!(pod = %format!("{ns}/{name}"), %uid, "starting pod");

    // Ends when the API server marks the pod for deletion, it disappears, or the podlet stops.
    let terminating = {
        let mut updates = updates.clone();
        let gone = gone.clone();
        let shutdown = shutdown.clone();
        async move {
            loop {
                if updates.borrow().metadata.deletion_timestamp.is_some() {
                    return updates.borrow().metadata.deletion_grace_period_seconds;
                }
                tokio::select! {
                    r = updates.changed() => if r.is_err() { return Some(0) },
                    _ = gone.cancelled() => return Some(0),
                    _ = shutdown.cancelled() => return Some(10),
                }
            }
        }
    };
    tokio::pin!(terminating);

    let mut network: Option<PodNetwork> = None;
    let containers_stop = CancellationToken::new();
    // Set before `containers_stop` fires: how long the containers get after the stop signal.
    let stop_grace = Arc::new(Mutex::new(Duration::from_secs(30)));
    let mut tasks = Vec::new();
    let grace = tokio::select! {
        g = &mut terminating => g,
        () = async {
            let Some(ip) = ctx.addresses.take() else {
                set_waiting(&view, &changed, "ContainerCreating", "no free pod address on the podlet's bridge");
                std::future::pending::<()>().await;
                return;
            };
            let net = match net::create(&ctx.settings, &key, ip).await {
                Ok(n) => n,
                Err(e) => {
                    ctx.addresses.give_back(ip);
                    set_waiting(&view, &changed, "ContainerCreating", &e.to_string());
                    tracing::error!(pod = %name, error = %e, "pod network");
                    std::future::pending::<()>().await;
                    return;
                }
            };
            ctx.hosts.add(PodEntry::of(&pod, &net.netns, ip)).await;
            network = Some(net.clone());
            view.lock().expect("view").pod_ip = Some(ip);
            changed.notify_one();
            let mut pod = updates.borrow().clone();
            pod.status.get_or_insert_default().pod_ip = Some(ip.to_string());
            pod.status.get_or_insert_default().host_ip = Some(ctx.settings.bridge_ip.to_string());
            let mut sources = Sources::new(ctx.client.clone(), &ns);
            let vols = loop {
                match volumes::prepare(&ctx.client, &pod, &dir, &mut sources).await {
                    Ok(v) => break v,
                    Err(e) => {
                        set_waiting(&view, &changed, "ContainerCreating", &format!("MountVolume failed: {e}"));
                        sources = Sources::new(ctx.client.clone(), &ns);
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            };
            view.lock().expect("view").sandbox_ready = true;
            changed.notify_one();
            let pod = Arc::new(pod);
            for (i, c) in spec.containers.iter().enumerate() {
                let run = ContainerRun {
                    ctx: ctx.clone(),
                    pod: pod.clone(),
                    container: c.clone(),
                    index: i,
                    net: net.clone(),
                    volumes: vols.clone(),
                    dir: dir.clone(),
                    logs: logs.clone(),
                    view: view.clone(),
                    changed: changed.clone(),
                    stop_grace: stop_grace.clone(),
                };
                tasks.push(tokio::spawn(run.supervise(containers_stop.clone())));
            }
            std::future::pending::<()>().await
        } => unreachable!(),
    };

    // Termination: every container gets the stop signal at once, then SIGKILL at the deadline.
    let grace = Duration::from_secs(
        grace
            .or(spec.termination_grace_period_seconds)
            .unwrap_or(30)
            .max(0) as u64,
    );
    tracing::info!(pod = %format!("{ns}/{name}"), grace = ?grace, "stopping pod");
    *stop_grace.lock().expect("grace") = grace;
    containers_stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    stop_status.cancel();
    let _ = reporter.await;
    if let Some(net) = &network {
        ctx.hosts.remove(&net.netns).await;
        net::delete(&ctx.settings, net).await;
        ctx.addresses.give_back(net.ip);
    }
    let _ = std::fs::remove_dir_all(&dir);
    // The kubelet's last word: delete the pod object now that nothing of it runs, unless it
    // is already gone or the podlet is only stopping.
    if !gone.is_cancelled() && !shutdown.is_cancelled() {
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        if let Err(e) = api.delete(&name, &dp).await {
            tracing::debug!(pod = %name, error = %e, "final delete");
        }
    }
    tracing::info!(pod = %format!("{ns}/{name}"), %uid, "pod stopped");
}

fn set_waiting(view: &Mutex<PodView>, changed: &Notify, reason: &str, message: &str) {
    for c in &mut view.lock().expect("view").containers {
        if c.pid.is_none() {
            c.waiting = Some((reason.into(), message.into()));
        }
    }
    changed.notify_one();
}

async fn report_status(
    client: Client,
    ns: String,
    name: String,
    view: Arc<Mutex<PodView>>,
    changed: Arc<Notify>,
    stop: CancellationToken,
) {
    let api: Api<Pod> = Api::namespaced(client, &ns);
    let mut last = serde_json::Value::Null;
    loop {
        let status = {
            let v = view.lock().expect("view");
            status::build(&v, Timestamp::now())
        };
        let value = serde_json::to_value(&status).unwrap_or_default();
        // Transition times change on every build; compare without them.
        let mut cmp = value.clone();
        if let Some(conds) = cmp.get_mut("conditions").and_then(|c| c.as_array_mut()) {
            for c in conds {
                c.as_object_mut().map(|o| o.remove("lastTransitionTime"));
            }
        }
        if cmp != last {
            match api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "status": value })),
                )
                .await
            {
                Ok(_) => last = cmp,
                Err(e) => tracing::debug!(pod = %name, error = %e, "status update"),
            }
        }
        tokio::select! {
            _ = changed.notified() => tokio::time::sleep(Duration::from_millis(50)).await,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One container of a running pod.
struct ContainerRun {
    ctx: Arc<Ctx>,
    pod: Arc<Pod>,
    container: Container,
    index: usize,
    net: PodNetwork,
    volumes: BTreeMap<String, PathBuf>,
    dir: PathBuf,
    logs: PathBuf,
    view: Arc<Mutex<PodView>>,
    changed: Arc<Notify>,
    stop_grace: Arc<Mutex<Duration>>,
}

impl ContainerRun {
    fn update(&self, f: impl FnOnce(&mut ContainerView)) {
        f(&mut self.view.lock().expect("view").containers[self.index]);
        self.changed.notify_one();
    }

    async fn launch(&self) -> Result<Launch, String> {
        let c = &self.container;
        let image = self.ctx.images.resolve(
            c.image.as_deref().unwrap_or_default(),
            &self.ctx.settings.state_dir.join("bin"),
        )?;
        let mut sources = Sources::new(
            self.ctx.client.clone(),
            self.pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let api_host = self.ctx.settings.bridge_ip.to_string();
        let mut env = crate::env::resolve(
            &self.pod,
            c,
            &mut sources,
            (&api_host, self.ctx.settings.api_port),
        )
        .await?;
        env.entry("PATH".into()).or_insert(image.path.clone());
        env.entry("HOME".into()).or_insert("/".into());
        let (uid, gid, groups) = identity(&self.pod, c, &image)?;
        let mut mounts = volumes::mounts(c, &self.volumes)?;
        for m in &mounts {
            let p = Path::new(&m.source);
            if !p.exists() {
                std::fs::create_dir_all(p)
                    .map_err(|e| format!("creating subPath {}: {e}", p.display()))?;
            }
        }
        for (i, w) in image.writable.iter().enumerate() {
            let own = self.dir.join("writable").join(&c.name).join(i.to_string());
            std::fs::create_dir_all(&own)
                .map_err(|e| format!("creating {}: {e}", own.display()))?;
            nix::unistd::chown(
                &own,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .map_err(|e| format!("chown {}: {e}", own.display()))?;
            mounts.push(Bind {
                source: own.to_string_lossy().into_owned(),
                target: w.clone(),
                read_only: false,
            });
        }
        Ok(Launch {
            argv: argv(c, &image, &env),
            env,
            uid,
            gid,
            groups,
            mounts,
            workdir: c.working_dir.clone().unwrap_or_else(|| "/".into()),
            stop_signal: image.stop_signal,
        })
    }

    /// Runs the container, restarting it by the pod's policy, until `stop`.
    async fn supervise(self, stop: CancellationToken) {
        let policy = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        let mut backoff = Duration::from_secs(1);
        loop {
            let launch = match self.launch().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(pod = ?self.pod.metadata.name, container = %self.container.name, error = %e, "cannot start container");
                    self.update(|v| v.waiting = Some(("CreateContainerConfigError".into(), e)));
                    tokio::select! { _ = tokio::time::sleep(Duration::from_secs(2)) => continue, _ = stop.cancelled() => return }
                }
            };
            let started = Instant::now();
            let started_at = Timestamp::now();
            let mut child = match self.spawn(&launch, &launch.argv) {
                Ok(c) => c,
                Err(e) => {
                    self.update(|v| v.waiting = Some(("RunContainerError".into(), e)));
                    tokio::select! { _ = tokio::time::sleep(Duration::from_secs(2)) => continue, _ = stop.cancelled() => return }
                }
            };
            let pid = child.id().unwrap_or_default();
            let has_startup = self.container.startup_probe.is_some();
            let has_readiness = self.container.readiness_probe.is_some();
            self.update(|v| {
                v.pid = Some(pid);
                v.running_since = Some(started_at);
                v.waiting = None;
                v.started = !has_startup;
                v.ready = !has_startup && !has_readiness;
            });
            let restart = Arc::new(Notify::new());
            let probes = tokio::spawn(self.probes(launch.clone(), restart.clone()));
            let (code, reason, stopped) = tokio::select! {
                s = child.wait() => {
                    let (code, reason) = exit_of(s);
                    (code, reason, false)
                }
                _ = restart.notified() => {
                    tracing::info!(container = %self.container.name, "liveness or startup probe failed; restarting");
                    let grace = Duration::from_secs(self.pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30).max(0) as u64);
                    let (code, _) = terminate(&mut child, launch.stop_signal, grace).await;
                    (code, "Error".to_owned(), false)
                }
                _ = stop.cancelled() => {
                    let grace = *self.stop_grace.lock().expect("grace");
                    let (code, reason) = terminate(&mut child, launch.stop_signal, grace).await;
                    (code, reason, true)
                }
            };
            probes.abort();
            let ended = Ended {
                exit_code: code,
                reason,
                started_at,
                finished_at: Timestamp::now(),
            };
            tracing::info!(pod = ?self.pod.metadata.name, container = %self.container.name, code, "container exited");
            let again = !stopped
                && match policy.as_str() {
                    "Never" => false,
                    "OnFailure" => code != 0,
                    _ => true,
                };
            if !again {
                self.update(|v| {
                    v.pid = None;
                    v.running_since = None;
                    v.ready = false;
                    v.terminated = Some(ended);
                });
                return;
            }
            // Back off as the kubelet does (shorter: 1 s doubling to 10 s), reset after a
            // run of a minute.
            if started.elapsed() > Duration::from_secs(60) {
                backoff = Duration::from_secs(1);
            }
            let wait = backoff;
            backoff = (backoff * 2).min(Duration::from_secs(10));
            self.update(|v| {
                v.pid = None;
                v.running_since = None;
                v.ready = false;
                v.started = false;
                v.restart_count += 1;
                v.last = Some(ended);
                v.waiting = Some((
                    "CrashLoopBackOff".into(),
                    format!(
                        "back-off {}s restarting failed container={}",
                        wait.as_secs(),
                        self.container.name
                    ),
                ));
            });
            tokio::select! { _ = tokio::time::sleep(wait) => {}, _ = stop.cancelled() => return }
        }
    }

    fn spawn(&self, launch: &Launch, argv: &[String]) -> Result<tokio::process::Child, String> {
        std::fs::create_dir_all(&self.logs)
            .map_err(|e| format!("creating {}: {e}", self.logs.display()))?;
        let log_path = self.logs.join(format!("{}.log", self.container.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("opening {}: {e}", log_path.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        container_command(&self.ctx.settings, &self.net, launch, argv)
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting container {}: {e}", self.container.name))
    }

    /// Startup, readiness and liveness probes of one run; `restart` fires when liveness or
    /// startup fails for good.
    fn probes(
        &self,
        launch: Launch,
        restart: Arc<Notify>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let c = self.container.clone();
        let ip: Ipv4Addr = self.net.ip;
        let index = self.index;
        let view = self.view.clone();
        let changed = self.changed.clone();
        let exec_base = (self.ctx.clone(), self.net.clone(), launch);
        async move {
            let (ctx, net, launch) = exec_base;
            let runner: Box<probe::ExecRunner> = Box::new(move |command, timeout| {
                let run = ContainerRunExec {
                    ctx: ctx.clone(),
                    net: net.clone(),
                    launch: launch.clone(),
                };
                Box::pin(async move { run.exec(command, timeout).await })
            });
            let set = |f: &dyn Fn(&mut ContainerView)| {
                f(&mut view.lock().expect("view").containers[index]);
                changed.notify_one();
            };
            if let Some(p) = &c.startup_probe {
                let t = Timing::of(p);
                tokio::time::sleep(t.initial_delay).await;
                let mut v = Verdict::new(t, false);
                let mut failures = 0;
                loop {
                    let ok = probe::once(p, &c, ip, &*runner).await.is_ok();
                    v.record(ok);
                    if v.passing {
                        break;
                    }
                    failures = if ok { 0 } else { failures + 1 };
                    if failures >= t.failure_threshold {
                        restart.notify_one();
                        return;
                    }
                    tokio::time::sleep(t.period).await;
                }
                set(&|v| {
                    v.started = true;
                    v.ready = c.readiness_probe.is_none();
                });
            }
            let readiness = c.readiness_probe.clone().map(|p| {
                let c = c.clone();
                let set_ready = {
                    let view = view.clone();
                    let changed = changed.clone();
                    move |ready: bool| {
                        view.lock().expect("view").containers[index].ready = ready;
                        changed.notify_one();
                    }
                };
                let runner = &runner;
                async move {
                    let t = Timing::of(&p);
                    tokio::time::sleep(t.initial_delay).await;
                    let mut v = Verdict::new(t, false);
                    loop {
                        let r = probe::once(&p, &c, ip, &**runner).await;
                        if let Err(e) = &r { tracing::debug!(container = %c.name, error = %e, "readiness probe failed"); }
                        if v.record(r.is_ok()) { set_ready(v.passing); }
                        tokio::time::sleep(t.period).await;
                    }
                }
            });
            let liveness = c.liveness_probe.clone().map(|p| {
                let c = c.clone();
                let restart = restart.clone();
                let runner = &runner;
                async move {
                    let t = Timing::of(&p);
                    tokio::time::sleep(t.initial_delay).await;
                    let mut v = Verdict::new(t, true);
                    loop {
                        let r = probe::once(&p, &c, ip, &**runner).await;
                        if let Err(e) = &r { tracing::info!(container = %c.name, error = %e, "liveness probe failed"); }
                        v.record(r.is_ok());
                        if !v.passing { restart.notify_one(); return; }
                        tokio::time::sleep(t.period).await;
                    }
                }
            });
            tokio::join!(
                async {
                    if let Some(r) = readiness {
                        r.await
                    }
                },
                async {
                    if let Some(l) = liveness {
                        l.await
                    }
                },
            );
        }
    }
}

/// What an exec probe needs: the container's namespaces, user, mounts and env.
struct ContainerRunExec {
    ctx: Arc<Ctx>,
    net: PodNetwork,
    launch: Launch,
}

impl ContainerRunExec {
    async fn exec(&self, command: Vec<String>, timeout: Duration) -> Result<(), String> {
        let mut cmd = container_command(&self.ctx.settings, &self.net, &self.launch, &command);
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        match tokio::time::timeout(timeout, cmd.output()).await {
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => Err(format!(
                "{:?} exited with {}: {}",
                command,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Ok(Err(e)) => Err(format!("running {command:?}: {e}")),
            Err(_) => Err(format!("{command:?} timed out after {timeout:?}")),
        }
    }
}

/// `ip netns exec <pod> podlet enter <mounts, user> -- argv`, with only the container's env.
fn container_command(
    s: &Settings,
    net: &PodNetwork,
    launch: &Launch,
    argv: &[String],
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&s.ip_command);
    cmd.args(["netns", "exec", &net.netns])
        .arg(&s.self_exe)
        .arg("enter");
    for m in &launch.mounts {
        cmd.arg("--mount").arg(m.to_arg());
    }
    cmd.arg("--uid")
        .arg(launch.uid.to_string())
        .arg("--gid")
        .arg(launch.gid.to_string());
    for g in &launch.groups {
        cmd.arg("--group").arg(g.to_string());
    }
    cmd.arg("--workdir")
        .arg(&launch.workdir)
        .arg("--")
        .args(argv);
    cmd.env_clear().envs(&launch.env).stdin(Stdio::null());
    cmd
}

fn exit_of(s: std::io::Result<std::process::ExitStatus>) -> (i32, String) {
    use std::os::unix::process::ExitStatusExt as _;
    match s {
        Ok(s) => {
            let code = s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0));
            (code, if code == 0 { "Completed" } else { "Error" }.into())
        }
        Err(_) => (255, "Error".into()),
    }
}

/// The stop signal, then SIGKILL after `grace`.
async fn terminate(
    child: &mut tokio::process::Child,
    signal: Signal,
    grace: Duration,
) -> (i32, String) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), signal);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(s) => exit_of(s),
        Err(_) => {
            let _ = child.start_kill();
            let (code, _) = exit_of(child.wait().await);
            (code, "Error".into())
        }
    }
}
