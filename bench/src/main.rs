//! `stickyfarm-bench`: the Stickyfarm benchmarks. `bench/run` builds everything and calls
//! `stickyfarm-bench run`; `serve` (the shared backends), `shoppers` (the failover load) and
//! `ws-load` (the WebSocket load) are the processes it starts.

mod bench;
mod capacity;
mod failover;
mod goals;
mod load;
mod overhead;
mod pg_alone;
mod plot;
mod procs;
mod rebalance;
mod report;
mod scale;
mod serve;
mod served;
mod sessions;
mod shoppers;
mod stats;
mod websocket;
mod ws_load;

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

/// Benchmarks of Stickyfarm against HAProxy and nginx, of the cache against PostgreSQL, of
/// failover under load, of scale, of WebSockets and of a unit holding a million sessions.
#[derive(Debug, Parser)]
#[command(name = "stickyfarm-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Runs the scenarios and writes the report and plots.
    Run {
        #[command(flatten)]
        args: bench::RunArgs,
        /// Also replace the table in this README (between the bench markers).
        #[arg(long)]
        readme: Option<std::path::PathBuf>,
    },
    /// A backend: `/hello` (a 1 KiB page), `/echo` (a WebSocket echo), the health answer, and
    /// with `--session-api` the app of a unit (`GET`/`PUT /state`).
    Serve {
        /// A backend to serve: its name (answered in `x-bench-unit`) and its address, as
        /// `NAME=ADDRESS`; repeated for several backends in this one process.
        #[arg(long = "backend", value_parser = parse_backend, required = true)]
        backends: Vec<(String, SocketAddr)>,
        /// The sidecar's session API, e.g. `http://127.0.0.1:7070`.
        #[arg(long)]
        session_api: Option<String>,
    },
    /// Sticky shoppers against a farm, recording every answer (the failover load).
    Shoppers(shoppers::ShopperArgs),
    /// WebSockets sending messages and checking their echoes (the WebSocket load).
    WsLoad(ws_load::WsLoadArgs),
    /// Prints the JSON cart of exactly `--bytes` bytes the scenarios store (`bench/instructions`
    /// stores the same one).
    Cart {
        /// Its size in bytes (at least 64).
        #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(64..))]
        bytes: u32,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = |one_thread: bool| {
        let mut b = if one_thread {
            tokio::runtime::Builder::new_current_thread()
        } else {
            tokio::runtime::Builder::new_multi_thread()
        };
        b.enable_all().build().context("starting the async runtime")
    };
    match cli.command {
        Cmd::Cart { bytes } => {
            print!("{}", shoppers::cart_of_size(bytes as usize));
            Ok(())
        }
        Cmd::Serve {
            backends,
            session_api,
        } => runtime(false)?.block_on(serve::serve(backends, session_api)),
        Cmd::Shoppers(args) => runtime(false)?.block_on(shoppers::run_shoppers(args)),
        // One thread, like wrk: the load generator has one CPU.
        Cmd::WsLoad(args) => runtime(true)?.block_on(ws_load::run(args)),
        Cmd::Run { args, readme } => runtime(false)?.block_on(async {
            // A signal ends the run by dropping it: the processes it started and its private
            // PostgreSQL are then stopped by their `Drop`, as after an error. (Ctrl-C reaches
            // the whole process group anyway; a SIGTERM to this process alone used to leave
            // them running.) A step that blocks, such as one load run, finishes first.
            tokio::select! {
                done = run(args, readme) => done,
                signal = stop_signal() => bail!("stopped by {signal}; stopped what it had started"),
            }
        }),
    }
}

/// `NAME=ADDRESS`, as `serve --backend` takes it.
fn parse_backend(s: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=ADDRESS, e.g. b0=127.0.0.1:8080"))?;
    let addr = addr
        .parse()
        .map_err(|e| format!("{addr:?} is not an address: {e}"))?;
    Ok((name.to_owned(), addr))
}

/// Waits for SIGTERM or SIGINT and names it.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // No handler, no early end: the run goes on as it would have.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// The run's scratch folder: every process's log, the cookie files, the disk tier's file (gigabytes
/// at a million sessions), the private PostgreSQL. Removed when the run ends, whether it
/// succeeded, failed or was stopped by a signal, unless `--keep-logs` asked to keep it (a
/// failure's message already carries the failed process's log tail). It is made before
/// anything that writes into it, so it is dropped after those are stopped.
struct Scratch {
    path: std::path::PathBuf,
    keep: bool,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("logs kept: {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

async fn run(args: bench::RunArgs, readme: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    for scenario in &args.only {
        if ![
            "overhead",
            "sessions",
            "failover",
            "scale",
            "websocket",
            "rebalance",
            "capacity",
        ]
        .contains(&scenario.as_str())
        {
            bail!(
                "unknown scenario {scenario:?}: use overhead, sessions, failover, scale, websocket, rebalance or capacity"
            );
        }
    }
    if !plot::fonts_present() {
        bail!("the DejaVu fonts are missing: install the Debian package fonts-dejavu-core");
    }
    let only = args.only.clone();
    let keep_logs = args.keep_logs;
    let wants = |s: &str| only.is_empty() || only.iter().any(|o| o == s);
    let guard = Scratch {
        path: std::env::temp_dir().join(format!("stickyfarm-bench-{}", std::process::id())),
        keep: keep_logs,
    };
    std::fs::create_dir_all(&guard.path)?;
    let scratch = &guard.path;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.bench_dir.join("results"));
    let date = humantime::format_rfc3339(std::time::SystemTime::now()).to_string()[..10].to_owned();
    let b = bench::Bench::new(args, scratch.clone())?;
    eprintln!(
        "benchmarks: {} runs of {} s per configuration; logs in {}",
        b.runs,
        b.duration.as_secs(),
        scratch.display()
    );

    let mut results = report::Results::default();
    let timed =
        |name: &str, start: Instant| eprintln!("==> {name}: {} s", start.elapsed().as_secs());
    if wants("overhead") {
        let t = Instant::now();
        eprintln!("==> 1. proxy overhead");
        results.overhead = Some(overhead::run(&b).await?);
        timed("proxy overhead", t);
    }
    if wants("websocket") {
        let t = Instant::now();
        eprintln!("==> 5. WebSocket echo");
        results.websocket = Some(websocket::run(&b).await?);
        timed("WebSocket echo", t);
    }
    if ["sessions", "failover", "scale", "rebalance", "capacity"]
        .iter()
        .any(|s| wants(s))
    {
        let pg_port = procs::free_port()?;
        let pg = farmctl::postgres::PrivateCluster::start(scratch, pg_port)
            .context("starting a private PostgreSQL for the benchmarks")?;
        if wants("sessions") {
            let t = Instant::now();
            eprintln!("==> 2. session state: cache vs PostgreSQL");
            results.sessions = Some(sessions::run(&b, &pg.url).await?);
            timed("session state", t);
        }
        if wants("failover") {
            let t = Instant::now();
            eprintln!("==> 3. failover under load");
            results.failover = Some(failover::run(&b, &pg.url).await?);
            timed("failover", t);
        }
        if wants("scale") {
            let t = Instant::now();
            eprintln!("==> 4. scale");
            results.scale = Some(scale::run(&b, &pg.url).await?);
            timed("scale", t);
        }
        if wants("rebalance") {
            let t = Instant::now();
            eprintln!("==> 6. rebalancing after a scale-up");
            results.rebalance = Some(rebalance::run(&b, &pg.url).await?);
            timed("rebalancing", t);
        }
        if wants("capacity") {
            let t = Instant::now();
            eprintln!("==> 7. sessions at scale");
            results.capacity = Some(capacity::run(&b, &pg.url).await?);
            timed("sessions at scale", t);
        }
        pg.stop();
    }
    results.check_complete()?;
    let (path, table) = report::write(&b, &results, &out, &date)?;
    eprintln!("report: {}", path.display());
    if let Some(readme) = readme {
        report::update_readme(&readme, &table, &path.display().to_string())?;
        eprintln!("README table updated: {}", readme.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_backend;

    #[test]
    fn a_backend_is_a_name_and_an_address() {
        let (name, addr) = parse_backend("b0=127.0.0.1:8080").unwrap();
        assert_eq!((name.as_str(), addr.port()), ("b0", 8080));
        let missing = parse_backend("127.0.0.1:8080").unwrap_err();
        assert!(missing.contains("expected NAME=ADDRESS"), "{missing}");
        let bad = parse_backend("b0=localhost").unwrap_err();
        assert!(bad.contains("is not an address"), "{bad}");
    }
}
