//! `farmctl up`: a whole farm as child processes on this machine: PostgreSQL (given, or a
//! private throwaway cluster), one sidecar + app pair per unit, and the gateway. A control
//! socket in the state folder takes `kill`/`restart` of a unit; Ctrl-C or SIGTERM stops
//! everything, in order, and a crashed gateway stops the farm too.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use farmctl::status::status_table;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use stickyfarm_api::UnitName;
use stickyfarm_api::config::{self, GatewayFarmSettings, SidecarFarmSettings};
use stickyfarm_api::farm::{DatabaseSpec, ServerFarmManifest};
use stickyfarm_api::logs::LogSettings;
use stickyfarm_api::token::Token;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

use farmctl::ports::free_port;
use farmctl::postgres::PrivateCluster;

/// What `farmctl up` was asked to do.
pub struct UpOptions {
    /// The manifest.
    pub manifest: PathBuf,
    /// PostgreSQL to use instead of a private cluster.
    pub database_url: Option<String>,
    /// Where the control socket, state file, logs and cache folders go.
    pub state_dir: PathBuf,
    /// Gateway port (default: the manifest's `spec.gateway.port`).
    pub port: Option<u16>,
    /// Address the gateway listens on.
    pub address: IpAddr,
    /// The URL clients reach the farm by (default: the gateway's address over http).
    pub public_url: Option<reqwest::Url>,
    /// Serve HTTPS with a certificate of the state folder's local CA.
    pub tls: bool,
    /// Folder of the Stickyfarm binaries (default: next to farmctl).
    pub bin_dir: Option<PathBuf>,
    /// No periodic status line.
    pub quiet: bool,
    /// Start each unit's app with this shell command instead of the image's local binary.
    pub app_command: Option<String>,
    /// How the farm's processes log.
    pub logs: LogSettings,
}

/// The scheme and `host[:port]` unit links are built from: `--public-url`, or the gateway's
/// own address over http (https with `--tls`).
fn public_link_base(
    public_url: Option<&reqwest::Url>,
    gateway: SocketAddr,
    tls: bool,
) -> anyhow::Result<(&'static str, String)> {
    let Some(url) = public_url else {
        return Ok((if tls { "https" } else { "http" }, gateway.to_string()));
    };
    let scheme = match url.scheme() {
        "http" => "http",
        "https" => "https",
        other => bail!("--public-url must be http or https, not {other}"),
    };
    let host = url
        .host_str()
        .with_context(|| format!("--public-url {url} names no host"))?;
    if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
        bail!("--public-url is scheme://host[:port] only, without a path or user: got {url}");
    }
    Ok((
        scheme,
        match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        },
    ))
}

/// What a running `farmctl up` tells other farmctl commands (`<state>/farm.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FarmState {
    /// Process id of `farmctl up`.
    pub pid: u32,
    /// The farm's name.
    pub farm: String,
    /// Where clients go.
    pub gateway_url: String,
    /// The gateway's admin address (status table).
    pub gateway_admin: String,
    /// The gateway's control address (unit actions, with the token in [`ADMIN_TOKEN_FILE`]).
    #[serde(default)]
    pub gateway_control: String,
    /// The units.
    pub units: Vec<UnitState>,
    /// The control socket.
    pub control: PathBuf,
    /// Data folder of the private PostgreSQL cluster, when farmctl started one.
    pub postgres_data: Option<PathBuf>,
    /// Process ids of the children (gateway, sidecars, apps), as last started.
    pub pids: Vec<u32>,
}

/// One unit of a running farm.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnitState {
    /// Unit name.
    pub name: String,
    /// Its address through the gateway.
    pub url: String,
    /// Its sidecar.
    pub sidecar: SocketAddr,
    /// The session API of its sidecar.
    pub session_api: SocketAddr,
    /// The app behind the sidecar.
    pub app: SocketAddr,
}

/// The file a running farm writes into its state folder.
pub fn state_file(state_dir: &Path) -> PathBuf {
    state_dir.join("farm.json")
}

/// Reads the state of the farm running from `state_dir`.
pub fn read_state(state_dir: &Path) -> anyhow::Result<FarmState> {
    let path = state_file(state_dir);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no farm is running from {} (no {}): start one with `farmctl up FILE.yaml`",
            state_dir.display(),
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is damaged; stop the farm and start it again",
            path.display()
        )
    })
}

/// The local binary for a container image: `stickyfarm-<last path segment>` next to farmctl.
pub fn binary_for_image(image: &str, bin_dir: &Path) -> anyhow::Result<PathBuf> {
    let repo = image.rsplit('/').next().unwrap_or(image);
    let name = repo.split([':', '@']).next().unwrap_or(repo);
    let path = bin_dir.join(format!("stickyfarm-{name}"));
    if path.exists() {
        Ok(path)
    } else {
        bail!(
            "farmctl runs image {image:?} as the local binary {}, which does not exist: build it \
             (cargo build --release -p stickyfarm-{name})",
            path.display()
        )
    }
}

/// How a unit's app is started on this machine.
#[derive(Debug, Clone)]
enum AppLauncher {
    /// The local binary the manifest's image names (`stickyfarm-<name>` in the bin folder).
    Binary(PathBuf),
    /// Any command, run by `/bin/sh -c` in farmctl's folder (`--app-command`): an app in
    /// another language, as its developers start it.
    Command(String),
}

impl AppLauncher {
    fn command(&self) -> Command {
        match self {
            AppLauncher::Binary(path) => Command::new(path),
            AppLauncher::Command(line) => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c").arg(line);
                c
            }
        }
    }
}

/// Ports and names of one unit.
#[derive(Debug, Clone)]
struct UnitPlan {
    name: UnitName,
    sidecar: SocketAddr,
    api: SocketAddr,
    admin: SocketAddr,
    app: SocketAddr,
}

/// Where a farm process's output goes and how it logs.
#[derive(Clone)]
struct Logs {
    /// The folder of one `<process>.log` file per process.
    dir: PathBuf,
    /// Passed to every process as `RUST_LOG` and `STICKYFARM_LOG_FORMAT`.
    settings: LogSettings,
    /// The farm's trace export (`spec.tracing`, else farmctl's own `--otlp-endpoint`), as the
    /// OpenTelemetry variables; they come after `settings` and so win over them.
    traces: Vec<(&'static str, String)>,
}

/// Everything needed to (re)start a unit's processes.
#[derive(Clone)]
struct Launch {
    gateway_token: PathBuf,
    session_id_key: PathBuf,
    sidecar_bin: PathBuf,
    app: AppLauncher,
    database_url: String,
    manifest: ServerFarmManifest,
    logs: Logs,
    cache_dir: PathBuf,
}

fn log_file(logs: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join(format!("{name}.log")))
        .with_context(|| format!("creating the log of {name}"))
}

fn spawn(mut cmd: Command, what: &str, logs: &Logs, log_name: &str) -> anyhow::Result<Child> {
    cmd.stdin(Stdio::null())
        .envs(logs.settings.as_env())
        .envs(logs.traces.iter().cloned())
        .stdout(log_file(&logs.dir, log_name)?)
        .stderr(log_file(&logs.dir, log_name)?)
        // Its own process group: a Ctrl-C in the terminal reaches farmctl only, which then
        // stops the children in order.
        .process_group(0)
        .kill_on_drop(true);
    die_with_parent(&mut cmd);
    cmd.spawn().with_context(|| format!("starting {what}"))
}

/// Makes the child receive SIGTERM when farmctl dies, however it dies (even SIGKILL), so no
/// unit or gateway outlives it. (Linux ties this to the thread that spawned the child; farmctl
/// spawns from runtime worker threads, which live as long as farmctl.)
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed; it makes a single prctl(2) system call and
    // allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
        });
    }
}

impl Launch {
    fn start_unit(&self, u: &UnitPlan) -> anyhow::Result<(Child, Child)> {
        let spec = &self.manifest.spec;
        let instance = uuid::Uuid::new_v4().to_string();
        let mut app = self.app.command();
        app.env("WEBSTORE_LISTEN", u.app.to_string())
            .env("PORT", u.app.port().to_string())
            .env("STICKYFARM_API_URL", format!("http://{}", u.api))
            .env("DATABASE_URL", &self.database_url)
            .env("POD_NAME", u.name.as_str())
            .env("POD_UID", &instance);
        // Checked before anything started, in `up`.
        let env = farmctl::manifest::local_app_env(&self.manifest, &self.database_url)
            .map_err(|e| anyhow!(e))?;
        app.envs(env);
        let app = spawn(
            app,
            &format!("the app of {}", u.name),
            &self.logs,
            &format!("{}-app", u.name),
        )?;
        let mut sidecar = Command::new(&self.sidecar_bin);
        sidecar
            .args(["--listen", &u.sidecar.to_string()])
            .args(["--api-listen", &u.api.to_string()])
            .args(["--admin-listen", &u.admin.to_string()])
            .args(["--app-url", &format!("http://{}", u.app)])
            .args(["--unit", u.name.as_str()])
            .args(["--pod-uid", &instance])
            // What the farm declares, through the same contract the operator renders.
            .args(config::as_args(&SidecarFarmSettings::from_farm(spec)))
            .arg("--gateway-token-file")
            .arg(&self.gateway_token)
            .arg("--session-id-key-file")
            .arg(&self.session_id_key)
            .env("DATABASE_URL", &self.database_url);
        if spec.sidecar.cache_disk.is_some() {
            sidecar.args([
                "--cache-disk-dir",
                &self.cache_dir.join(u.name.as_str()).to_string_lossy(),
            ]);
        }
        let sidecar = spawn(
            sidecar,
            &format!("the sidecar of {}", u.name),
            &self.logs,
            &format!("{}-sidecar", u.name),
        )?;
        Ok((sidecar, app))
    }
}

/// Signals the child's process group: every child is the leader of its own (see [`spawn`]),
/// so an app command's own children (a shell's, npm's) get it too.
fn signal(child: &Child, sig: Signal) {
    if let Some(pid) = child.id() {
        let _ = killpg(Pid::from_raw(pid as i32), sig);
    }
}

/// SIGKILL to the child's process group, like a crashed pod, and its exit collected.
async fn kill_now(child: &mut Child) {
    signal(child, Signal::SIGKILL);
    let _ = child.wait().await;
}

/// SIGTERM to the child's process group, then SIGKILL after `grace`. What the child started
/// (an app command's own children) may still be stopping when the child has exited: the
/// group is waited for too, and what is left of it at the deadline is killed.
async fn stop_child(child: &mut Child, grace: Duration) {
    let deadline = tokio::time::Instant::now() + grace;
    let group = child.id().map(|pid| Pid::from_raw(pid as i32));
    signal(child, Signal::SIGTERM);
    if tokio::time::timeout_at(deadline, child.wait())
        .await
        .is_err()
    {
        kill_now(child).await;
    }
    let Some(group) = group else { return };
    // Signal 0 only asks whether any process of the group is left.
    while killpg(group, None).is_ok() {
        if tokio::time::Instant::now() >= deadline {
            let _ = killpg(group, Signal::SIGKILL);
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

enum UnitCmd {
    Kill(oneshot::Sender<Result<(), String>>),
    Restart(oneshot::Sender<Result<(), String>>),
    Stop(oneshot::Sender<()>),
}

struct Pids(std::sync::Mutex<BTreeMap<String, u32>>);

/// Runs one unit's processes: reports a crash (the unit stays down, as a dead pod would until
/// restarted), obeys kill/restart, stops on request.
async fn unit_supervisor(
    plan: UnitPlan,
    launch: Launch,
    mut rx: mpsc::Receiver<UnitCmd>,
    pids: std::sync::Arc<Pids>,
) {
    let record = |procs: &Option<(Child, Child)>| {
        let mut p = pids.0.lock().expect("pid table poisoned");
        p.remove(&format!("{}-sidecar", plan.name));
        p.remove(&format!("{}-app", plan.name));
        if let Some((s, a)) = procs {
            if let Some(id) = s.id() {
                p.insert(format!("{}-sidecar", plan.name), id);
            }
            if let Some(id) = a.id() {
                p.insert(format!("{}-app", plan.name), id);
            }
        }
    };
    let mut procs = match launch.start_unit(&plan) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("farmctl: {e:#}");
            None
        }
    };
    record(&procs);
    loop {
        let crashed = async {
            match procs.as_mut() {
                Some((s, a)) => tokio::select! {
                    st = s.wait() => ("sidecar", st.ok()),
                    st = a.wait() => ("app", st.ok()),
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            (what, status) = crashed => {
                eprintln!("farmctl: the {what} of {} exited ({}); the unit is down until `farmctl restart {}`",
                    plan.name, status.map_or("unknown status".into(), |s| s.to_string()), plan.name);
                if let Some((mut s, mut a)) = procs.take() {
                    stop_child(&mut s, Duration::from_secs(5)).await;
                    stop_child(&mut a, Duration::from_secs(5)).await;
                }
                record(&procs);
            }
            cmd = rx.recv() => match cmd {
                // The pid table is updated before the command is acknowledged, so the state
                // file written after the answer names the processes that now run.
                Some(UnitCmd::Kill(ack)) => {
                    let result = match procs.take() {
                        Some((mut s, mut a)) => {
                            // Like a crashed pod: no goodbye.
                            kill_now(&mut s).await;
                            kill_now(&mut a).await;
                            Ok(())
                        }
                        None => Err(format!("{} is not running", plan.name)),
                    };
                    record(&procs);
                    let _ = ack.send(result);
                }
                Some(UnitCmd::Restart(ack)) => {
                    if let Some((mut s, mut a)) = procs.take() {
                        kill_now(&mut s).await;
                        kill_now(&mut a).await;
                    }
                    // A new pod: a new instance id.
                    let result = launch.start_unit(&plan).map(|p| procs = Some(p)).map_err(|e| format!("{e:#}"));
                    record(&procs);
                    let _ = ack.send(result);
                }
                Some(UnitCmd::Stop(ack)) => {
                    if let Some((mut s, mut a)) = procs.take() {
                        // The sidecar first, so no request reaches an app that is gone.
                        stop_child(&mut s, Duration::from_secs(10)).await;
                        stop_child(&mut a, Duration::from_secs(10)).await;
                    }
                    record(&procs);
                    let _ = ack.send(());
                    return;
                }
                None => return,
            }
        }
    }
}

/// Runs the farm until Ctrl-C, SIGTERM, or a gateway crash.
pub async fn up(opts: UpOptions) -> anyhow::Result<()> {
    // Taken over before anything starts: a SIGTERM or Ctrl-C while the farm is still coming up
    // then stops what has started, instead of killing farmctl with its children half-started.
    let mut stop = StopSignals::install()?;
    let mut manifest = farmctl::manifest::load(&opts.manifest)?;
    // Browsers drop Secure cookies from plain-HTTP answers: a farm served over http runs with
    // them off, and says so.
    let over_https = opts.tls
        || opts
            .public_url
            .as_ref()
            .is_some_and(|u| u.scheme() == "https");
    if manifest.spec.session_persistence.secure && !over_https {
        manifest.spec.session_persistence.secure = false;
        println!(
            "farmctl: serving over plain HTTP, so cookies are not Secure (spec.sessionPersistence.secure applies with --tls or --public-url https://…)"
        );
    }
    // `secure: false` declares a farm reached over plain HTTP; with --tls farmctl serves it
    // over HTTPS only, where cookies without Secure would be the one thing left in the clear.
    if opts.tls && !manifest.spec.session_persistence.secure {
        manifest.spec.session_persistence.secure = true;
        println!(
            "farmctl: serving over HTTPS (--tls), so cookies are Secure although the manifest says secure: false"
        );
    }
    let bin_dir = match &opts.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("cannot tell where farmctl lives"))?
            .to_path_buf(),
    };
    let sidecar_bin = bin_dir.join("stickyfarm-sidecar");
    let gateway_bin = bin_dir.join("stickyfarm-gateway");
    for b in [&sidecar_bin, &gateway_bin] {
        if !b.exists() {
            bail!(
                "{} is missing: build the workspace (cargo build --release)",
                b.display()
            );
        }
    }
    let app = match &opts.app_command {
        Some(line) if line.trim().is_empty() => {
            bail!(
                "--app-command is empty: give the command that starts the app, e.g. 'node server.js'"
            )
        }
        Some(line) => AppLauncher::Command(line.clone()),
        None => AppLauncher::Binary(binary_for_image(&manifest.spec.app.image, &bin_dir)?),
    };
    farmctl::manifest::local_app_env(&manifest, "")
        .map_err(|e| anyhow!("{}: {e}", opts.manifest.display()))?;
    if let Ok(state) = read_state(&opts.state_dir)
        && Path::new(&format!("/proc/{}", state.pid)).exists()
    {
        bail!(
            "a farm is already running from {} (farmctl pid {}); stop it first or use another --state-dir",
            opts.state_dir.display(),
            state.pid
        );
    }
    // The control socket (kill, restart) and the logs are the farm's: nobody else may use or
    // read them.
    farmctl::postgres::private_dir(&opts.state_dir)
        .with_context(|| format!("creating the state folder {}", opts.state_dir.display()))?;
    let logs = opts.state_dir.join("logs");
    std::fs::create_dir_all(&logs)?;

    // PostgreSQL: given, or a private throwaway cluster.
    let given = opts
        .database_url
        .clone()
        .or_else(|| std::env::var("DATABASE_URL").ok());
    let (database_url, private) = match given {
        Some(url) => (url, None),
        None => {
            if let DatabaseSpec {
                external: Some(ext),
                ..
            } = &manifest.spec.database
            {
                bail!(
                    "the farm uses an external database (Secret {}); on this machine pass its URL with --database-url",
                    ext.secret_name
                );
            }
            println!("farmctl: starting a private PostgreSQL cluster (throwaway) ...");
            let port = free_port(IpAddr::from([127, 0, 0, 1]))?;
            let cluster = tokio::task::spawn_blocking({
                let dir = opts.state_dir.clone();
                move || PrivateCluster::start(&dir, port)
            })
            .await??;
            (cluster.url.clone(), Some(cluster))
        }
    };

    let loopback = IpAddr::from([127, 0, 0, 1]);
    let mut plans = Vec::new();
    for name in manifest.unit_names() {
        plans.push(UnitPlan {
            name,
            sidecar: (loopback, free_port(loopback)?).into(),
            api: (loopback, free_port(loopback)?).into(),
            admin: (loopback, free_port(loopback)?).into(),
            app: (loopback, free_port(loopback)?).into(),
        });
    }
    let tokens = FarmTokens::create(&opts.state_dir)?;
    let launch = Launch {
        gateway_token: tokens.gateway.clone(),
        session_id_key: tokens.session_id_key.clone(),
        sidecar_bin,
        app,
        database_url: database_url.clone(),
        manifest: manifest.clone(),
        logs: Logs {
            dir: logs.clone(),
            settings: opts.logs.clone(),
            traces: stickyfarm_api::config::trace_env(
                &manifest.spec,
                opts.logs.otlp_endpoint.as_deref(),
                &[("service.namespace", manifest.metadata.name.as_str())],
            ),
        },
        cache_dir: opts.state_dir.join("cache"),
    };
    let pids = std::sync::Arc::new(Pids(std::sync::Mutex::new(BTreeMap::new())));
    let mut units = BTreeMap::new();
    for plan in &plans {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(unit_supervisor(
            plan.clone(),
            launch.clone(),
            rx,
            pids.clone(),
        ));
        units.insert(plan.name.to_string(), tx);
    }

    // The gateway.
    let g = &manifest.spec.gateway;
    let port = opts.port.unwrap_or(g.port.0);
    let gateway_addr = SocketAddr::new(opts.address, port);
    let gateway_admin: SocketAddr = (loopback, free_port(loopback)?).into();
    let gateway_control: SocketAddr = (loopback, free_port(loopback)?).into();
    let shown_host = if opts.address.is_unspecified() {
        loopback
    } else {
        opts.address
    };
    let (public_scheme, public_host) = public_link_base(
        opts.public_url.as_ref(),
        SocketAddr::new(shown_host, port),
        opts.tls,
    )?;
    let local_tls = if opts.tls {
        let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        names.extend(
            opts.public_url
                .as_ref()
                .and_then(|u| u.host_str())
                .map(str::to_owned),
        );
        if !opts.address.is_unspecified() {
            names.push(opts.address.to_string());
        }
        names.sort();
        names.dedup();
        Some(
            farmctl::tls::local_tls(&opts.state_dir.join("tls"), &names)
                .context("making the farm's local TLS certificate")?,
        )
    } else {
        None
    };
    let mut gw = Command::new(&gateway_bin);
    gw.args(["--listen", &gateway_addr.to_string()])
        .args(["--admin-listen", &gateway_admin.to_string()])
        .args(["--control-listen", &gateway_control.to_string()])
        .arg("--admin-token-file")
        .arg(&tokens.admin)
        .arg("--gateway-token-file")
        .arg(&tokens.gateway)
        // What the farm declares, through the same contract the operator renders.
        .args(config::as_args(&GatewayFarmSettings::from_farm(
            &manifest.spec,
        )))
        .args(["--public-scheme", public_scheme])
        .args(["--public-host", &public_host]);
    if let Some(tls) = &local_tls {
        gw.arg("--tls-cert")
            .arg(&tls.cert)
            .arg("--tls-key")
            .arg(&tls.key);
    }
    for p in &plans {
        gw.args(["--unit", &format!("{}={}", p.name, p.sidecar)]);
    }
    let mut gateway = spawn(gw, "the gateway", &launch.logs, "gateway")?;
    pids.0
        .lock()
        .expect("pid table poisoned")
        .insert("gateway".into(), gateway.id().unwrap_or(0));

    let control = opts.state_dir.join("farmctl.sock");
    let _ = std::fs::remove_file(&control);
    let listener = UnixListener::bind(&control)
        .with_context(|| format!("creating the control socket {}", control.display()))?;
    let gateway_url = format!(
        "{}://{}",
        if opts.tls { "https" } else { "http" },
        SocketAddr::new(shown_host, port)
    );
    let mut state = FarmState {
        pid: std::process::id(),
        farm: manifest.metadata.name.to_string(),
        gateway_url: gateway_url.clone(),
        gateway_admin: gateway_admin.to_string(),
        gateway_control: gateway_control.to_string(),
        units: plans
            .iter()
            .map(|p| UnitState {
                name: p.name.to_string(),
                url: format!("{gateway_url}{}/", p.name.path_prefix()),
                sidecar: p.sidecar,
                session_api: p.api,
                app: p.app,
            })
            .collect(),
        control: control.clone(),
        postgres_data: None,
        pids: Vec::new(),
    };
    let write_state = |state: &mut FarmState| -> anyhow::Result<()> {
        state.pids = pids
            .0
            .lock()
            .expect("pid table poisoned")
            .values()
            .copied()
            .collect();
        let tmp = state_file(&opts.state_dir).with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)?;
        std::fs::rename(&tmp, state_file(&opts.state_dir))?;
        Ok(())
    };
    state.postgres_data = private.as_ref().map(|c| c.data_dir().to_path_buf());
    write_state(&mut state)?;

    println!(
        "farmctl: farm {} starting: gateway {gateway_url}",
        state.farm
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let admin_url = format!("http://{gateway_admin}/status");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(table) = status_table(&client, &admin_url).await
            && table.iter().filter(|u| u.state == "up").count() == plans.len()
        {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            eprintln!(
                "farmctl: not every unit came up within 90 s; see the logs in {}",
                logs.display()
            );
            break;
        }
        if let Ok(Some(status)) = gateway.try_wait() {
            eprintln!(
                "farmctl: the gateway exited at start ({status}); see {}",
                logs.join("gateway.log").display()
            );
            shutdown(&units, &mut gateway, private).await;
            let _ = std::fs::remove_file(state_file(&opts.state_dir));
            bail!("the gateway did not start");
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = stop.recv() => {
                println!("farmctl: stopping the farm before it finished starting ...");
                shutdown(&units, &mut gateway, private).await;
                let _ = std::fs::remove_file(&control);
                let _ = std::fs::remove_file(state_file(&opts.state_dir));
                println!("farmctl: stopped");
                return Ok(());
            }
        }
    }
    write_state(&mut state)?;
    println!("farmctl: the farm is serving at {gateway_url}/");
    if let Some(tls) = &local_tls {
        let ca = tls.ca.display();
        println!("farmctl: HTTPS with the local CA {ca} (kept across runs). Trust it:");
        println!("farmctl:   curl --cacert {ca} {gateway_url}/");
        println!(
            "farmctl:   this machine: sudo cp {ca} /usr/local/share/ca-certificates/stickyfarm-local.crt && sudo update-ca-certificates"
        );
        println!(
            "farmctl:   Chromium/Firefox: import {ca} as an authority (Settings → Certificates)"
        );
    }
    for u in &state.units {
        println!("farmctl:   unit {:<16} {}", u.name, u.url);
    }
    println!(
        "farmctl: `farmctl status`, `farmctl kill UNIT`, `farmctl restart UNIT`; Ctrl-C stops the farm"
    );

    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    let mut refresh = tokio::time::interval(Duration::from_secs(1));
    let result = loop {
        tokio::select! {
            () = stop.recv() => break Ok(()),
            status = gateway.wait() => {
                break Err(anyhow!("the gateway exited ({}); stopping the farm; see {}",
                    status.map_or("unknown".into(), |s| s.to_string()), logs.join("gateway.log").display()));
            }
            // Crashed units leave the pid table: keep the state file current.
            _ = refresh.tick() => { let _ = write_state(&mut state); }
            _ = tick.tick(), if !opts.quiet => {
                if let Ok(table) = status_table(&client, &admin_url).await {
                    let line: Vec<String> = table.iter().map(|u| format!("{} {}", u.name, u.state)).collect();
                    println!("farmctl: {}", line.join(" · "));
                }
            }
            conn = listener.accept() => {
                if let Ok((stream, _)) = conn {
                    let (read, mut write) = stream.into_split();
                    let mut line = String::new();
                    let mut reader = BufReader::new(read);
                    let reply = match tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await {
                        Ok(Ok(_)) => handle_command(line.trim(), &units).await,
                        _ => "error: no command received".to_owned(),
                    };
                    let _ = write.write_all(format!("{reply}\n").as_bytes()).await;
                    let _ = write_state(&mut state);
                }
            }
        }
    };
    println!("farmctl: stopping the farm ...");
    shutdown(&units, &mut gateway, private).await;
    let _ = std::fs::remove_file(&control);
    let _ = std::fs::remove_file(state_file(&opts.state_dir));
    println!("farmctl: stopped");
    result
}

async fn handle_command(line: &str, units: &BTreeMap<String, mpsc::Sender<UnitCmd>>) -> String {
    let mut words = line.split_whitespace();
    let (verb, unit) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let Some(tx) = units.get(unit) else {
        let known: Vec<&str> = units.keys().map(String::as_str).collect();
        return format!(
            "error: no unit {unit:?}; the units are {}",
            known.join(", ")
        );
    };
    let (ack, done) = oneshot::channel();
    let cmd = match verb {
        "kill" => UnitCmd::Kill(ack),
        "restart" => UnitCmd::Restart(ack),
        _ => return format!("error: unknown command {verb:?}; use kill or restart"),
    };
    if tx.send(cmd).await.is_err() {
        return "error: the unit's supervisor is gone".into();
    }
    match done.await {
        Ok(Ok(())) => "ok".into(),
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "error: no answer".into(),
    }
}

/// SIGTERM and SIGINT (Ctrl-C), both meaning "stop the farm".
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("handling SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("handling SIGINT")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

async fn shutdown(
    units: &BTreeMap<String, mpsc::Sender<UnitCmd>>,
    gateway: &mut Child,
    private: Option<PrivateCluster>,
) {
    // The gateway first (it stops taking clients and finishes what is in flight), then the
    // units, then the database.
    stop_child(gateway, Duration::from_secs(25)).await;
    let mut acks = Vec::new();
    for tx in units.values() {
        let (ack, done) = oneshot::channel();
        if tx.send(UnitCmd::Stop(ack)).await.is_ok() {
            acks.push(done);
        }
    }
    for done in acks {
        let _ = done.await;
    }
    if let Some(cluster) = private {
        let _ = tokio::task::spawn_blocking(move || cluster.stop()).await;
    }
}

/// The admin token's file in the state folder: `farmctl drain|disable|enable` present it to
/// the gateway's control port. New for every `farmctl up`.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// The gateway token's file in the state folder (gateway → sidecars).
pub const GATEWAY_TOKEN_FILE: &str = "gateway-token";

/// The session-id key's file in the state folder. Kept across runs: a database given with
/// `--database-url` holds sessions stored under it, and the sidecars refuse another key.
pub const SESSION_ID_KEY_FILE: &str = "session-id-key";

/// The farm's tokens (freshly generated) and its session-id key (made once), in the state
/// folder (0600).
struct FarmTokens {
    admin: PathBuf,
    gateway: PathBuf,
    session_id_key: PathBuf,
}

impl FarmTokens {
    fn create(state_dir: &Path) -> anyhow::Result<FarmTokens> {
        let write = |name: &str| -> anyhow::Result<PathBuf> {
            let path = state_dir.join(name);
            let _ = std::fs::remove_file(&path);
            let token = Token::generate()?;
            farmctl::postgres::write_private(&path, token.expose().as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        let session_id_key = state_dir.join(SESSION_ID_KEY_FILE);
        if session_id_key.exists() {
            Token::read(&session_id_key)?;
        } else {
            farmctl::postgres::write_private(
                &session_id_key,
                Token::generate()?.expose().as_bytes(),
            )
            .with_context(|| format!("writing {}", session_id_key.display()))?;
        }
        Ok(FarmTokens {
            admin: write(ADMIN_TOKEN_FILE)?,
            gateway: write(GATEWAY_TOKEN_FILE)?,
            session_id_key,
        })
    }
}

/// A unit action (`enable`, `drain`, `disable`) on the running farm's gateway, authorised with
/// the admin token from the state folder.
pub async fn unit_action(state_dir: &Path, unit: &str, action: &str) -> anyhow::Result<()> {
    let state = read_state(state_dir)?;
    let token = Token::read(&state_dir.join(ADMIN_TOKEN_FILE))?;
    let answer = reqwest::Client::new()
        .post(format!(
            "http://{}/units/{unit}/{action}",
            state.gateway_control
        ))
        .bearer_auth(token.expose())
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .with_context(|| {
            format!(
                "the gateway of the farm from {} does not answer; is `farmctl up` still running?",
                state_dir.display()
            )
        })?;
    let status = answer.status();
    if status.is_success() {
        return Ok(());
    }
    let body = answer.text().await.unwrap_or_default();
    bail!(
        "the gateway refused to {action} {unit}: {status}: {}",
        body.trim()
    )
}

/// Sends one control command to a running farm.
pub async fn control(state_dir: &Path, command: &str) -> anyhow::Result<String> {
    let state = read_state(state_dir)?;
    let stream = tokio::net::UnixStream::connect(&state.control)
        .await
        .with_context(|| {
            format!(
                "the farm from {} does not answer; is `farmctl up` still running?",
                state_dir.display()
            )
        })?;
    let (read, mut write) = stream.into_split();
    write.write_all(format!("{command}\n").as_bytes()).await?;
    let mut reply = String::new();
    BufReader::new(read).read_line(&mut reply).await?;
    Ok(reply.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_follow_the_public_url_or_the_gateway_address() {
        let gw: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        assert_eq!(
            public_link_base(None, gw, false).unwrap(),
            ("http", "127.0.0.1:8080".to_owned())
        );
        assert_eq!(
            public_link_base(None, gw, true).unwrap(),
            ("https", "127.0.0.1:8080".to_owned())
        );
        assert_eq!(
            public_link_base(Some(&url("https://shop.example:8443")), gw, false).unwrap(),
            ("https", "shop.example:8443".to_owned())
        );
        assert_eq!(
            public_link_base(Some(&url("https://shop.example/")), gw, true).unwrap(),
            ("https", "shop.example".to_owned())
        );
        for bad in [
            "ftp://shop.example",
            "https://shop.example/shop",
            "https://u@shop.example",
        ] {
            assert!(
                public_link_base(Some(&url(bad)), gw, false).is_err(),
                "{bad}"
            );
        }
    }
}
