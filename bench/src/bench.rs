//! What every scenario shares: the programs, CPU placement, the load generators, run lengths,
//! and helpers that start the processes under test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::load::{LoadResult, Oha, Wrk};
use crate::procs::{Cpus, Placement, Proc, Run, free_addr};
use crate::stats::{Sample, cpu_per_10k};

/// Settings of `stickyfarm-bench run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// A few seconds per scenario, one run each: proves every scenario produces numbers (CI).
    #[arg(long)]
    pub smoke: bool,
    /// Runs of each configuration (alternating); default 5, 1 with `--smoke`.
    #[arg(long)]
    pub runs: Option<usize>,
    /// Length of one load run; default 10 s, 1 s with `--smoke`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Folder of the Stickyfarm binaries (`stickyfarm-gateway`, `stickyfarm-sidecar`).
    #[arg(long)]
    pub bin_dir: PathBuf,
    /// The oha binary.
    #[arg(long, default_value = "oha")]
    pub oha: PathBuf,
    /// The checkout's `bench/` folder (peer configs, Lua script, results).
    #[arg(long, default_value = "bench")]
    pub bench_dir: PathBuf,
    /// Where the report and plots go; default `<bench-dir>/results`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Sessions of the scale scenario; default 10 000, 200 with `--smoke`.
    #[arg(long)]
    pub scale_sessions: Option<usize>,
    /// Session counts of the capacity scenario, growing (e.g. `10000,100000,1000000`, the
    /// default; 100, 300 and 1 000 with `--smoke`).
    #[arg(long, value_delimiter = ',')]
    pub capacity_sessions: Option<Vec<usize>>,
    /// Only these scenarios (overhead, sessions, failover, scale, websocket, rebalance,
    /// capacity); default all.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Keep the run's scratch folder (every process's log, the failover runs' answers and kill
    /// times) instead of removing it at the end; its path is printed.
    #[arg(long)]
    pub keep_logs: bool,
}

/// A backend's name and address, as the proxies are given it.
pub type Backend = (String, SocketAddr);

/// The shared context of a benchmark run.
pub struct Bench {
    /// Settings as given.
    pub args: RunArgs,
    /// Runs per configuration.
    pub runs: usize,
    /// Length of one load run.
    pub duration: Duration,
    /// CPU placement.
    pub placement: Placement,
    /// wrk at fixed concurrency.
    pub wrk: Wrk,
    /// oha at a fixed rate.
    pub oha: Oha,
    /// Logs and scratch files of this run.
    pub work: PathBuf,
    /// This program (the backends and shoppers are its subcommands).
    pub me: PathBuf,
    /// The farm's gateway token, as a deployment has it: the gateway sends it on every request
    /// and the sidecars check it, so the figures include that cost.
    pub gateway_token: PathBuf,
    /// The farm's session-id key (sidecars hash session ids with it before PostgreSQL sees
    /// them), so the figures include that cost too.
    pub session_id_key: PathBuf,
}

/// A new random secret in `work/name`, as a deployment mounts one.
fn secret_file(work: &Path, name: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let path = work.join(name);
    let token = stickyfarm_api::token::Token::generate()?;
    std::fs::write(&path, token.expose()).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

impl Bench {
    /// Prepares a run in a scratch folder `work`.
    pub fn new(args: RunArgs, work: PathBuf) -> anyhow::Result<Bench> {
        let placement = Placement::for_this_machine();
        let runs = args.runs.unwrap_or(if args.smoke { 1 } else { 5 });
        let duration = args.duration.unwrap_or(if args.smoke {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(10)
        });
        let connections = 32;
        Ok(Bench {
            wrk: Wrk {
                program: "wrk".into(),
                script: args.bench_dir.join("lua/sessions.lua"),
                cpus: placement.load,
                connections,
                duration,
            },
            oha: Oha {
                program: args.oha.clone(),
                cpus: placement.load,
                connections,
                duration,
            },
            me: std::env::current_exe().context("finding this program")?,
            gateway_token: secret_file(&work, "gateway-token")?,
            session_id_key: secret_file(&work, "session-id-key")?,
            runs,
            duration,
            placement,
            work,
            args,
        })
    }

    /// A Stickyfarm binary.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.args.bin_dir.join(name)
    }

    /// Log folder for a scenario.
    pub fn logs(&self, scenario: &str) -> anyhow::Result<PathBuf> {
        let d = self.work.join(scenario);
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        Ok(d)
    }

    /// Starts a backend (`serve`); `session_api` makes it the app of a sidecar.
    pub fn backend(
        &self,
        name: &str,
        session_api: Option<SocketAddr>,
        cpus: Cpus,
        logs: &Path,
    ) -> anyhow::Result<(Proc, SocketAddr)> {
        let addr = free_addr()?;
        let p = self.serve(
            &format!("backend-{name}"),
            &[(name.to_owned(), addr)],
            session_api,
            cpus,
            logs,
        )?;
        Ok((p, addr))
    }

    /// Starts `count` plain backends `b0`, `b1`, … on the load CPU (what every proxy of a
    /// comparison shares), all in one process (`serve::serve` says why); returns their names
    /// and addresses, and the process.
    pub fn backends(&self, count: usize, logs: &Path) -> anyhow::Result<(Vec<Backend>, Proc)> {
        let backends = (0..count)
            .map(|i| Ok((format!("b{i}"), free_addr()?)))
            .collect::<anyhow::Result<Vec<Backend>>>()?;
        let p = self.serve("backends", &backends, None, self.placement.load, logs)?;
        Ok((backends, p))
    }

    /// Starts one `serve` process for `backends`, with one worker thread, and waits until each
    /// listens.
    fn serve(
        &self,
        label: &str,
        backends: &[Backend],
        session_api: Option<SocketAddr>,
        cpus: Cpus,
        logs: &Path,
    ) -> anyhow::Result<Proc> {
        let mut args = vec!["serve".to_owned()];
        for (name, addr) in backends {
            args.extend(["--backend".into(), format!("{name}={addr}")]);
        }
        if let Some(api) = session_api {
            args.extend(["--session-api".into(), format!("http://{api}")]);
        }
        let mut p = Proc::start(
            label,
            &self.me,
            &args,
            &[("TOKIO_WORKER_THREADS", "1".into())],
            cpus,
            logs,
        )?;
        for (_, addr) in backends {
            p.wait_listening(*addr)?;
        }
        Ok(p)
    }

    /// Starts a unit: the app and its sidecar; returns both and the sidecar's public address,
    /// once the sidecar hears invalidations. Before that it keeps no copy of what it reads
    /// (`SessionTier::keep_if_heard`), so a measurement started earlier would time reads
    /// from PostgreSQL as cached ones.
    pub async fn unit(
        &self,
        name: &str,
        database_url: &str,
        extra: &[&str],
        cpus: Cpus,
        logs: &Path,
    ) -> anyhow::Result<Unit> {
        let api = free_addr()?;
        let (app, app_addr) = self.backend(name, Some(api), cpus, logs)?;
        let (public, admin) = (free_addr()?, free_addr()?);
        let mut args: Vec<String> = vec![
            "--listen".into(),
            public.to_string(),
            "--api-listen".into(),
            api.to_string(),
            "--admin-listen".into(),
            admin.to_string(),
            "--app-url".into(),
            format!("http://{app_addr}"),
            "--unit".into(),
            name.into(),
            "--gateway-token-file".into(),
            self.gateway_token.display().to_string(),
            "--session-id-key-file".into(),
            self.session_id_key.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut sidecar = Proc::start(
            &format!("sidecar-{name}"),
            &self.bin("stickyfarm-sidecar"),
            &args,
            &[
                ("DATABASE_URL", database_url.to_owned()),
                ("TOKIO_WORKER_THREADS", "1".into()),
                ("RUST_LOG", "warn".into()),
            ],
            cpus,
            logs,
        )?;
        sidecar.wait_listening(public)?;
        let mut unit = Unit {
            name: name.to_owned(),
            public,
            admin,
            sidecar,
            app,
        };
        if !extra
            .windows(2)
            .any(|f| f == ["--listen-invalidations", "false"])
        {
            unit.wait_hearing().await?;
        }
        Ok(unit)
    }

    /// Starts the Stickyfarm gateway over `units` (name, address) with one worker thread, and
    /// waits until its checks have every unit in service.
    pub async fn gateway(
        &self,
        units: &[(String, SocketAddr)],
        extra: &[&str],
        run: impl Into<Run>,
        logs: &Path,
        label: &str,
    ) -> anyhow::Result<(Proc, SocketAddr)> {
        self.gateway_expecting(units, units.len(), extra, run, logs, label)
            .await
    }

    /// [`Bench::gateway`], waiting for `expect_up` units in service (those of a `--units-file`
    /// in `extra` as well as `units`).
    pub async fn gateway_expecting(
        &self,
        units: &[(String, SocketAddr)],
        expect_up: usize,
        extra: &[&str],
        run: impl Into<Run>,
        logs: &Path,
        label: &str,
    ) -> anyhow::Result<(Proc, SocketAddr)> {
        let run = run.into();
        let (listen, admin) = (free_addr()?, free_addr()?);
        let mut args: Vec<String> = vec![
            "--listen".into(),
            listen.to_string(),
            "--admin-listen".into(),
            admin.to_string(),
            "--slow-start".into(),
            "0s".into(),
            // Load generators send cookieless requests from one address as fast as they can:
            // the per-address new-session limit would measure itself, not the proxy.
            "--new-session-rate".into(),
            "0".into(),
            "--gateway-token-file".into(),
            self.gateway_token.display().to_string(),
        ];
        for (name, addr) in units {
            args.extend(["--unit".into(), format!("{name}={addr}")]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut p = Proc::start(
            label,
            &self.bin("stickyfarm-gateway"),
            &args,
            &[
                ("TOKIO_WORKER_THREADS", run.workers.to_string()),
                ("RUST_LOG", "warn".into()),
            ],
            run.cpus,
            logs,
        )?;
        p.wait_listening(listen)?;
        wait_units_up(&mut p, admin, expect_up).await?;
        Ok((p, listen))
    }

    /// Starts HAProxy with `bench/peers/haproxy.cfg` over `units`.
    pub fn haproxy(
        &self,
        units: &[(String, SocketAddr)],
        check_interval: &str,
        cpus: Cpus,
        logs: &Path,
    ) -> anyhow::Result<(Proc, SocketAddr)> {
        self.haproxy_as("haproxy", units, check_interval, None, cpus, logs)
    }

    /// [`Bench::haproxy`] under `label`, terminating TLS with `tls` (certificate and key in one
    /// PEM, as HAProxy takes them) when given.
    pub fn haproxy_as(
        &self,
        label: &str,
        units: &[(String, SocketAddr)],
        check_interval: &str,
        tls: Option<&Path>,
        run: impl Into<Run>,
        logs: &Path,
    ) -> anyhow::Result<(Proc, SocketAddr)> {
        let run = run.into();
        let listen = free_addr()?;
        let servers: Vec<String> = units
            .iter()
            .map(|(n, a)| format!("    server {n} {a} check cookie {n}"))
            .collect();
        let bind = match tls {
            // The same ALPN offer as the gateway's; wrk speaks HTTP/1.1 over it.
            Some(pem) => format!("{listen} ssl crt {} alpn h2,http/1.1", pem.display()),
            None => listen.to_string(),
        };
        let cfg = self.peer_config(
            "haproxy.cfg",
            &format!("{label}.cfg"),
            &[
                ("@LISTEN@", bind),
                ("@CHECK_INTERVAL@", check_interval.to_owned()),
                ("@THREADS@", run.workers.to_string()),
                ("    @SERVERS@", servers.join("\n")),
            ],
            logs,
        )?;
        let args = vec!["-db".into(), "-f".into(), cfg.display().to_string()];
        let mut p = Proc::start(
            label,
            &system_program("haproxy"),
            &args,
            &[],
            run.cpus,
            logs,
        )?;
        p.wait_listening(listen)?;
        Ok((p, listen))
    }

    /// A self-signed certificate for 127.0.0.1 in the work folder, made once: the gateway's
    /// `tls.crt` and `tls.key`, and both in one PEM for HAProxy. Both proxies serve the same
    /// ECDSA P-256 key, so they do the same cryptography.
    pub fn tls_files(&self) -> anyhow::Result<TlsFiles> {
        let dir = self.work.join("tls");
        let files = TlsFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            both: dir.join("haproxy.pem"),
        };
        if files.both.exists() {
            return Ok(files);
        }
        std::fs::create_dir_all(&dir)?;
        let key = rcgen::KeyPair::generate()?;
        let cert =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])?.self_signed(&key)?;
        let (cert, key) = (cert.pem(), key.serialize_pem());
        std::fs::write(&files.cert, &cert)?;
        std::fs::write(&files.key, &key)?;
        std::fs::write(&files.both, format!("{cert}{key}"))?;
        Ok(files)
    }

    /// Starts nginx with `bench/peers/nginx.conf` over `units`.
    pub fn nginx(
        &self,
        units: &[(String, SocketAddr)],
        cpus: Cpus,
        logs: &Path,
    ) -> anyhow::Result<(Proc, SocketAddr)> {
        let listen = free_addr()?;
        let prefix = logs.join("nginx");
        std::fs::create_dir_all(&prefix)?;
        let servers: Vec<String> = units
            .iter()
            .map(|(_, a)| format!("        server {a} max_fails=1 fail_timeout=2s;"))
            .collect();
        let cfg = self.peer_config(
            "nginx.conf",
            "nginx.conf",
            &[
                ("@LISTEN@", listen.to_string()),
                ("@PREFIX@", prefix.display().to_string()),
                ("        @SERVERS@", servers.join("\n")),
            ],
            logs,
        )?;
        let args = vec![
            "-p".into(),
            prefix.display().to_string(),
            "-c".into(),
            cfg.display().to_string(),
            "-e".into(),
            prefix.join("error.log").display().to_string(),
        ];
        let mut p = Proc::start("nginx", &system_program("nginx"), &args, &[], cpus, logs)?;
        p.wait_listening(listen)?;
        Ok((p, listen))
    }

    /// A checked-in peer config with its placeholders filled in, written to the log folder.
    fn peer_config(
        &self,
        name: &str,
        out_name: &str,
        fill: &[(&str, String)],
        logs: &Path,
    ) -> anyhow::Result<PathBuf> {
        let src = self.args.bench_dir.join("peers").join(name);
        let mut text = std::fs::read_to_string(&src)
            .with_context(|| format!("reading the peer config {}", src.display()))?;
        for (k, v) in fill {
            if !text.contains(k) {
                bail!("{} has no placeholder {k}", src.display());
            }
            text = text.replace(k, v);
        }
        let out = logs.join(out_name);
        std::fs::write(&out, text)?;
        Ok(out)
    }
}

/// The benchmark's TLS certificate files.
pub struct TlsFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
    /// Both, for HAProxy.
    pub both: PathBuf,
}

/// A unit of the farm: the app and its sidecar.
pub struct Unit {
    /// Unit name.
    pub name: String,
    /// The sidecar's public address (what the proxies forward to).
    pub public: SocketAddr,
    /// The sidecar's metrics address.
    pub admin: SocketAddr,
    /// The sidecar.
    pub sidecar: Proc,
    /// The app.
    pub app: Proc,
}

impl Unit {
    /// The sum of the sidecar's samples of metric `name` whose labels contain `labels`.
    pub async fn metric(&self, name: &str, labels: &str) -> anyhow::Result<f64> {
        let text = self.metrics().await?;
        Ok(stickyfarm_api::metrics::sample_sum(&text, name, labels))
    }

    /// The sidecar's metrics, in the text exposition format.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(format!("http://{}/metrics", self.admin))
            .await?
            .text()
            .await?)
    }

    /// Waits until the sidecar's invalidation listener has connected (or it dies, or 30 s
    /// pass).
    async fn wait_hearing(&mut self) -> anyhow::Result<()> {
        const CONNECTED: &str = "stickyfarm_sidecar_invalidation_listener_connected";
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            self.sidecar.check_running()?;
            if self.metric(CONNECTED, "").await.ok() == Some(1.0) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!(
            "sidecar {}: its invalidation listener did not connect to PostgreSQL within 30 s",
            self.name
        )
    }

    /// Kills both processes at once, as when a pod's node dies.
    pub fn kill(&mut self) {
        self.sidecar.kill_now();
        self.app.kill_now();
    }
}

/// Retries `GET url` (with `cookie`) until it answers 200 from `unit` (any unit when `None`),
/// so a proxy's checks have found its backends before anything is measured.
pub async fn wait_routed(url: &str, cookie: &str, unit: Option<&str>) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        match client.get(url).header("cookie", cookie).send().await {
            Ok(r) => {
                let answered = r
                    .headers()
                    .get(crate::serve::UNIT_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                if r.status() == 200 && unit.is_none_or(|u| u == answered) {
                    return Ok(());
                }
                last = format!("{} from {answered:?}", r.status());
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{url} with cookie {cookie:?} was not answered by {unit:?} within 30 s (last: {last})")
}

/// [`wait_routed`] for an HTTPS `url` (the benchmark's own certificate, not checked), with
/// curl: the load generators are the only other TLS clients here.
pub async fn wait_routed_tls(url: &str, cookie: &str, unit: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        let out = tokio::process::Command::new("curl")
            .args([
                "-sk",
                "--http1.1",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-D",
                "-",
                "-H",
            ])
            .arg(format!("Cookie: {cookie}"))
            .arg(url)
            .output()
            .await?;
        let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
        if head.starts_with("http/1.1 200")
            && head.contains(&format!("{}: {unit}", crate::serve::UNIT_HEADER))
        {
            return Ok(());
        }
        last = head.lines().next().unwrap_or_default().to_owned();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{url} with cookie {cookie:?} was not answered by {unit} within 30 s (last: {last})")
}

/// Polls the gateway's status table until `n` units are up.
async fn wait_units_up(p: &mut Proc, admin: SocketAddr, n: usize) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        p.check_running()?;
        if let Ok(r) = client.get(format!("http://{admin}/status")).send().await
            && let Ok(table) = r.json::<serde_json::Value>().await
        {
            let up = table["units"]
                .as_array()
                .map_or(0, |u| u.iter().filter(|u| u["state"] == "up").count());
            if up == n {
                return Ok(());
            }
            last = format!("{up} of {n} units up");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the gateway did not have its units in service within 60 s ({last})")
}

/// Runs one load and reads the CPU time `measured` (the proxy or sidecar under test, if any)
/// spent on it.
pub fn measure(
    measured: Option<&Proc>,
    load: impl FnOnce() -> anyhow::Result<LoadResult>,
) -> anyhow::Result<Sample> {
    let before = measured.map(Proc::cpu_seconds);
    let load = load()?;
    let cpu = measured
        .zip(before)
        .and_then(|(p, before)| cpu_per_10k(before, p.cpu_seconds(), load.requests));
    Ok(Sample {
        load,
        cpu_per_10k: cpu,
    })
}

/// A daemon from Debian's packages: in `/usr/sbin`, which is not on an ordinary user's PATH.
pub fn system_program(name: &str) -> PathBuf {
    let sbin = Path::new("/usr/sbin").join(name);
    if sbin.exists() {
        sbin
    } else {
        PathBuf::from(name)
    }
}
