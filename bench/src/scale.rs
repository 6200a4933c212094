//! Scenario 4, scale: farms of 2, 4 and 8 units behind a gateway, each with the same number of
//! sessions (10 000 by default, 1 KiB carts), read through the gateway by wrk rotating over
//! every session; and the sidecars' memory per cached session.

use std::net::SocketAddr;

use crate::bench::{Bench, Unit, measure};
use crate::procs::Proc;
use crate::served::{Work, checked};
use crate::shoppers::{cart_of_size, open_sessions};
use crate::stats::{Rounds, cpu_per_10k};

/// Farm sizes.
pub const FARMS: [usize; 3] = [2, 4, 8];

/// The configuration name of a farm of `units`.
pub fn farm_name(units: usize) -> String {
    format!("{units} units")
}

/// Results of the scenario.
pub struct Scale {
    /// Configurations "2 units", "4 units", "8 units" ([`farm_name`]).
    pub rounds: Rounds,
    /// Per farm: sidecars' resident memory added per cached session, bytes.
    pub bytes_per_session: Vec<f64>,
    /// Per farm: the same per copy held (each unit's own sessions, and the warm copies its
    /// backups keep of them), and copies per session.
    pub bytes_per_copy: Vec<(f64, f64)>,
    /// Sessions per farm.
    pub sessions: usize,
    /// `costs[round][farm]`: where the CPU went while wrk read through that farm.
    pub costs: Vec<Vec<Cost>>,
}

/// What a farm's processes spent per request in one run: why a larger farm on the same CPU
/// serves fewer requests per second.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cost {
    /// CPU seconds per 10k requests: the gateway, the sidecars together, the apps together.
    pub gateway: f64,
    /// The sidecars.
    pub sidecars: f64,
    /// The apps.
    pub apps: f64,
    /// Context switches of all of them per request.
    pub switches: f64,
}

/// A reading of a farm's processes' CPU time and context switches.
#[derive(Debug, Clone, Copy)]
struct Reading {
    gateway: f64,
    sidecars: f64,
    apps: f64,
    switches: u64,
}

impl Farm {
    fn read(&self) -> Reading {
        let units = &self.units;
        Reading {
            gateway: self.gateway.cpu_seconds(),
            sidecars: units.iter().map(|u| u.sidecar.cpu_seconds()).sum(),
            apps: units.iter().map(|u| u.app.cpu_seconds()).sum(),
            switches: self.gateway.context_switches()
                + units
                    .iter()
                    .map(|u| u.sidecar.context_switches() + u.app.context_switches())
                    .sum::<u64>(),
        }
    }
}

impl Cost {
    fn between(before: Reading, after: Reading, requests: u64) -> Cost {
        let per_10k = |b: f64, a: f64| cpu_per_10k(b, a, requests).unwrap_or(f64::NAN);
        Cost {
            gateway: per_10k(before.gateway, after.gateway),
            sidecars: per_10k(before.sidecars, after.sidecars),
            apps: per_10k(before.apps, after.apps),
            switches: after.switches.saturating_sub(before.switches) as f64
                / requests.max(1) as f64,
        }
    }
}

struct Farm {
    units: Vec<Unit>,
    gateway: Proc,
    addr: SocketAddr,
    cookies: std::path::PathBuf,
}

/// Runs the scenario against PostgreSQL at `database_url`.
pub async fn run(b: &Bench, database_url: &str) -> anyhow::Result<Scale> {
    let sessions = b
        .args
        .scale_sessions
        .unwrap_or(if b.args.smoke { 200 } else { 10_000 });
    let cart = cart_of_size(1024);
    let cpu = b.placement.proxy;
    let mut farms = Vec::new();
    let mut bytes_per_session = Vec::new();
    let mut bytes_per_copy = Vec::new();
    for n in FARMS {
        eprintln!("  scale: {n} units, opening {sessions} sessions");
        let logs = b.logs(&format!("scale-{n}"))?;
        let mut units = Vec::new();
        for i in 0..n {
            // 14 sidecars share one PostgreSQL (100 connections): 4 each, as a farm of many
            // pods sizes its pools. The smoke run's debug sidecars, all on one core, open their
            // pools far slower than release builds: they may wait longer for a connection (the
            // smoke run judges no timing).
            let acquire = if b.args.smoke { "15s" } else { "2s" };
            units.push(
                b.unit(
                    &format!("s{n}-{i}"),
                    database_url,
                    &["--db-max-connections", "4", "--db-acquire-timeout", acquire],
                    cpu,
                    &logs,
                )
                .await?,
            );
        }
        let members: Vec<(String, SocketAddr)> =
            units.iter().map(|u| (u.name.clone(), u.public)).collect();
        let (gateway, addr) = b
            .gateway(&members, &["--check-interval", "1s"], cpu, &logs, "gateway")
            .await?;
        crate::bench::wait_routed(
            // An app page: the units' own health path is not reachable through the gateway.
            &format!("http://{addr}/hello"),
            "",
            None,
        )
        .await?;
        let rss = |units: &[Unit]| units.iter().map(|u| u.sidecar.rss_bytes()).sum::<u64>();
        let before = rss(&units);
        let cookies = logs.join("cookies.txt");
        open_sessions(&format!("http://{addr}"), sessions, &cart, 32, &cookies).await?;
        // The backups load their warm copies after each write's announcement: give them a
        // moment to catch up before counting.
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let after = rss(&units);
        let grown = after.saturating_sub(before) as f64;
        bytes_per_session.push(grown / sessions as f64);
        let mut copies = 0.0;
        for u in &units {
            copies += u.metric("stickyfarm_sidecar_cached_sessions", "").await?
                + u.metric("stickyfarm_sidecar_warm_copies", "").await?;
        }
        bytes_per_copy.push((grown / copies.max(1.0), copies / sessions as f64));
        farms.push(Farm {
            units,
            gateway,
            addr,
            cookies,
        });
    }
    let mut rounds = Rounds::new(FARMS.iter().map(|&n| farm_name(n)));
    let mut costs = Vec::new();
    for round in 0..b.runs {
        eprintln!("  scale: round {}/{}", round + 1, b.runs);
        let (mut samples, mut round_costs) = (Vec::new(), Vec::new());
        for f in &farms {
            let units: Vec<&Unit> = f.units.iter().collect();
            let before = f.read();
            let sample = checked(&units, Work::Reads, || {
                measure(Some(&f.gateway), || {
                    b.wrk
                        .run(&format!("http://{}/state", f.addr), &f.cookies, "GET", None)
                })
            })
            .await?;
            round_costs.push(Cost::between(before, f.read(), sample.load.requests));
            samples.push(sample);
        }
        rounds.rounds.push(samples);
        costs.push(round_costs);
    }
    for f in &mut farms {
        for u in &mut f.units {
            u.sidecar.check_running()?;
        }
    }
    Ok(Scale {
        rounds,
        bytes_per_session,
        bytes_per_copy,
        sessions,
        costs,
    })
}
