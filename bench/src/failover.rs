//! Scenario 3, failover under load: sticky shoppers (a separate process, reading their cart
//! and writing it every fifth request) on three units; the unit holding the most sessions is
//! killed (app and sidecar, SIGKILL). Choosing it by placement, not by name, keeps a run from
//! having nothing to fail over when the proxy happened to place no session on a fixed unit.
//! Through the Stickyfarm gateway with warm backups (the default), the same with warm backups
//! off (`--warm-backup-percent 0`: every failed-over session loads cold), and, for comparison,
//! HAProxy with the same check interval and thresholds in front of the same units. The
//! surviving units' counters tell how many failed-over sessions were served from a warm copy
//! and how many reads had to load from PostgreSQL from the kill to the end.

use std::io::BufRead as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::bench::Bench;
use crate::procs::Proc;
use crate::shoppers::{ANSWERED, Answer, Failover, analyze_failover, busiest_unit};

/// The proxies compared.
pub const PROXIES: [&str; 3] = [
    "Stickyfarm gateway",
    "Stickyfarm, warm backups off",
    "HAProxy",
];

/// Results: per proxy, one [`Failover`] per run, and the answers of the last run (for the plot)
/// with the kill time.
pub struct Failovers {
    /// `runs[p]`: proxy `p`'s runs.
    pub runs: Vec<Vec<Failover>>,
    /// `last[p]`: the answers of proxy `p`'s last run and when the unit was killed.
    pub last: Vec<(Vec<Answer>, u64)>,
    /// Shoppers per run.
    pub shoppers: u32,
    /// Their request interval.
    pub interval: Duration,
}

/// Runs the scenario against PostgreSQL at `database_url`.
pub async fn run(b: &Bench, database_url: &str) -> anyhow::Result<Failovers> {
    let shoppers = if b.args.smoke { 6 } else { 30 };
    let interval = Duration::from_millis(20);
    let (warm, total) = if b.args.smoke {
        (Duration::from_secs(1), Duration::from_secs(3))
    } else {
        (Duration::from_secs(3), Duration::from_secs(10))
    };
    let mut runs = vec![Vec::new(); PROXIES.len()];
    let mut last = vec![(Vec::new(), 0); PROXIES.len()];
    for round in 0..b.runs {
        for (p, proxy) in PROXIES.iter().enumerate() {
            eprintln!("  failover, {proxy}: round {}/{}", round + 1, b.runs);
            let logs = b.logs(&format!("failover-{p}-{round}"))?;
            let (f, answers, kill_ms) =
                one_run(b, database_url, p, shoppers, interval, warm, total, &logs).await?;
            runs[p].push(f);
            last[p] = (answers, kill_ms);
        }
    }
    Ok(Failovers {
        runs,
        last,
        shoppers,
        interval,
    })
}

#[allow(clippy::too_many_arguments)]
async fn one_run(
    b: &Bench,
    database_url: &str,
    proxy: usize,
    shoppers: u32,
    interval: Duration,
    warm: Duration,
    total: Duration,
    logs: &std::path::Path,
) -> anyhow::Result<(Failover, Vec<Answer>, u64)> {
    let cpu = b.placement.proxy;
    let unit_flags: &[&str] = match proxy {
        1 => &["--warm-backup-percent", "0"],
        _ => &[],
    };
    let mut units = Vec::new();
    for i in 0..3 {
        units.push(
            b.unit(&format!("u{i}"), database_url, unit_flags, cpu, logs)
                .await?,
        );
    }
    let members: Vec<(String, std::net::SocketAddr)> =
        units.iter().map(|u| (u.name.clone(), u.public)).collect();
    let (_proxy_proc, addr) = match proxy {
        0 | 1 => {
            b.gateway(
                &members,
                &[
                    "--check-interval",
                    "500ms",
                    "--check-timeout",
                    "250ms",
                    "--fall",
                    "3",
                    "--rise",
                    "2",
                ],
                cpu,
                logs,
                "gateway",
            )
            .await?
        }
        _ => b.haproxy(&members, "500ms", cpu, logs)?,
    };
    crate::bench::wait_routed(
        // An app page: the units' own health path is not reachable through the gateway.
        &format!("http://{addr}/hello"),
        "",
        None,
    )
    .await?;
    let out = logs.join("answers.jsonl");
    let args: Vec<String> = vec![
        "shoppers".into(),
        "--target".into(),
        format!("http://{addr}"),
        "--sessions".into(),
        shoppers.to_string(),
        "--interval".into(),
        humantime::format_duration(interval).to_string(),
        "--duration".into(),
        humantime::format_duration(total).to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    let mut load = Proc::start("shoppers", &b.me, &args, &[], b.placement.load, logs)?;
    let shoppers_log = logs.join("shoppers.log");
    wait_for_line(&mut load, &shoppers_log, "steady")?;
    let placements = std::fs::read_to_string(&shoppers_log)
        .with_context(|| format!("reading {}", shoppers_log.display()))?;
    let killed = busiest_unit(&placements)
        .and_then(|name| units.iter().position(|u| u.name == name))
        .with_context(|| {
            format!(
                "the shoppers' sessions name none of the units (see {})",
                shoppers_log.display()
            )
        })?;
    wait_for_line(&mut load, &shoppers_log, ANSWERED)?;
    tokio::time::sleep(warm).await;
    let before = BackupCounters::of(&units, killed).await?;
    let kill_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let killing = Instant::now();
    units[killed].kill();
    let reaped = killing.elapsed();
    // Beside the shoppers' answers, so a run's log folder can be analysed on its own: when the
    // unit was killed, which, and how long its two processes took to end.
    std::fs::write(
        logs.join("kill_ms"),
        format!(
            "{kill_ms} {} {}\n",
            units[killed].name,
            humantime::format_duration(reaped)
        ),
    )
    .context("writing the kill time")?;
    // The shoppers stop on their own after `total`.
    load.wait_exit(total + Duration::from_secs(30))?;
    let after = BackupCounters::of(&units, killed).await?;
    let answers: Vec<Answer> = std::io::BufReader::new(
        std::fs::File::open(&out).with_context(|| format!("opening {}", out.display()))?,
    )
    .lines()
    .map(|l| Ok(serde_json::from_str(&l?)?))
    .collect::<anyhow::Result<_>>()?;
    let mut f = analyze_failover(&answers, &units[killed].name, kill_ms);
    f.warm_hits = after.warm_hits - before.warm_hits;
    f.backup_loads = after.loads - before.loads;
    Ok((f, answers, kill_ms))
}

/// What the surviving units counted: failed-over sessions served from a warm copy, and reads
/// that loaded from PostgreSQL.
struct BackupCounters {
    warm_hits: u64,
    loads: u64,
}

impl BackupCounters {
    /// Summed over every unit but the `killed` one.
    async fn of(units: &[crate::bench::Unit], killed: usize) -> anyhow::Result<Self> {
        let mut c = BackupCounters {
            warm_hits: 0,
            loads: 0,
        };
        for (_, u) in units.iter().enumerate().filter(|(i, _)| *i != killed) {
            c.warm_hits += u
                .metric("stickyfarm_sidecar_warm_failovers_total", "outcome=\"hit\"")
                .await? as u64;
            c.loads += u
                .metric("stickyfarm_sidecar_cache_misses_total", "")
                .await? as u64;
        }
        Ok(c)
    }
}

fn wait_for_line(p: &mut Proc, log: &std::path::Path, line: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .any(|l| l == line)
        {
            return Ok(());
        }
        p.check_running()?;
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{} did not print {line:?} within 60 s", p.label)
}
