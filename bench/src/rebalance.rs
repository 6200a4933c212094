//! Scenario 6, rebalancing after a scale-up: shoppers with sessions on three units, each
//! reading its cart after a think time of its own (some come back within seconds, some stay
//! away longer than the rebalancing idle time); then three more units join the farm (the
//! gateway's units file is rewritten). Every second the scenario counts where each session's
//! latest answer came from, and reports how long until the busiest unit holds at most 1.2× the
//! mean, with the gateway's default rebalancing and with it off, in the same run.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::bench::Bench;
use crate::shoppers::{Jar, cart_of_size, open_session, send};

/// The arms compared.
pub const ARMS: [&str; 2] = [
    "Stickyfarm gateway, rebalancing (defaults)",
    "Stickyfarm gateway, rebalancing off",
];

/// Units before and after the scale-up.
pub const UNITS_BEFORE: usize = 3;
pub const UNITS_AFTER: usize = 6;

/// The busiest unit's share against the mean that counts as balanced.
const BALANCED: f64 = 1.2;

/// One run of one arm.
#[derive(Debug, Clone)]
pub struct RebalanceRun {
    /// Seconds from the scale-up until the busiest unit held at most 1.2× the mean; `None`
    /// when it never did within the run.
    pub balanced_after_s: Option<f64>,
    /// The busiest unit's sessions ÷ the mean at the end.
    pub final_ratio: f64,
    /// The same, each second after the scale-up (the plot).
    pub ratios: Vec<f64>,
    /// Sessions whose unit changed after the scale-up.
    pub moved: u64,
    /// Requests after the scale-up, and those that failed.
    pub requests: u64,
    pub failed: u64,
}

/// Results: per arm, its runs.
pub struct Rebalancing {
    pub runs: Vec<Vec<RebalanceRun>>,
    pub sessions: usize,
    /// Think times are drawn per session from this range.
    pub think: (Duration, Duration),
    /// How long each run watched after the scale-up.
    pub watch: Duration,
    /// The rebalancing idle time of the first arm, as the report says it.
    pub idle: &'static str,
}

/// Runs the scenario against PostgreSQL at `database_url`.
pub async fn run(b: &Bench, database_url: &str) -> anyhow::Result<Rebalancing> {
    let smoke = b.args.smoke;
    let sessions = if smoke { 30 } else { 120 };
    // The default idle time is 10 s: most think times are longer, some much shorter.
    let think = if smoke {
        (Duration::from_millis(200), Duration::from_secs(2))
    } else {
        (Duration::from_secs(2), Duration::from_secs(25))
    };
    let watch = if smoke {
        Duration::from_secs(6)
    } else {
        Duration::from_secs(90)
    };
    let mut runs = vec![Vec::new(); ARMS.len()];
    for round in 0..b.runs {
        for (arm, name) in ARMS.iter().enumerate() {
            eprintln!("  rebalance, {name}: round {}/{}", round + 1, b.runs);
            let logs = b.logs(&format!("rebalance-{arm}-{round}"))?;
            runs[arm].push(one_run(b, database_url, arm, sessions, think, watch, &logs).await?);
        }
    }
    Ok(Rebalancing {
        runs,
        sessions,
        think,
        watch,
        idle: if smoke {
            "500 ms (shortened for the smoke run)"
        } else {
            "10 s, window 10 min (the defaults)"
        },
    })
}

fn units_file(units: &[crate::bench::Unit]) -> String {
    let mut s = String::from("units:\n");
    for u in units {
        s.push_str(&format!(
            "  - name: {}\n    address: \"{}\"\n",
            u.name, u.public
        ));
    }
    s
}

async fn one_run(
    b: &Bench,
    database_url: &str,
    arm: usize,
    sessions: usize,
    think: (Duration, Duration),
    watch: Duration,
    logs: &std::path::Path,
) -> anyhow::Result<RebalanceRun> {
    let cpu = b.placement.proxy;
    let mut units = Vec::new();
    for i in 0..UNITS_AFTER {
        units.push(
            b.unit(&format!("r{i}"), database_url, &[], cpu, logs)
                .await?,
        );
    }
    let file = logs.join("units.yaml");
    std::fs::write(&file, units_file(&units[..UNITS_BEFORE]))?;
    let file_arg = file.display().to_string();
    let mut flags = vec!["--units-file", file_arg.as_str()];
    match (arm, b.args.smoke) {
        (1, _) => flags.extend(["--rebalance-idle", "0s"]),
        // The smoke run is short: sessions count as idle sooner.
        (_, true) => flags.extend(["--rebalance-idle", "500ms"]),
        _ => {}
    }
    let (_gateway, addr) = b
        .gateway_expecting(&[], UNITS_BEFORE, &flags, cpu, logs, "gateway")
        .await?;
    let base = format!("http://{addr}");
    crate::bench::wait_routed(&format!("{base}/hello"), "", None).await?;

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let cart = cart_of_size(1024);
    let mut jars = Vec::new();
    let mut placed = Vec::new();
    for _ in 0..sessions {
        let (jar, unit) = open_session(&client, &base, &cart).await?;
        jars.push(jar);
        placed.push(unit);
    }
    let current: Arc<Vec<Mutex<String>>> = Arc::new(placed.into_iter().map(Mutex::new).collect());
    let scaled_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(3) + watch;
    let shoppers: Vec<_> = jars
        .into_iter()
        .enumerate()
        .map(|(i, jar)| {
            shopper(
                ShopperRun {
                    client: client.clone(),
                    url: format!("{base}/state"),
                    think: think_time(think, i),
                    deadline,
                    current: current.clone(),
                    scaled_at: scaled_at.clone(),
                },
                i,
                jar,
            )
        })
        .map(tokio::spawn)
        .collect();

    // Warm up, then scale up and watch.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before: Vec<String> = current.iter().map(|u| u.lock().unwrap().clone()).collect();
    std::fs::write(&file, units_file(&units)).context("rewriting the units file")?;
    let scaled = Instant::now();
    *scaled_at.lock().unwrap() = Some(scaled);
    let mut balanced_after_s = None;
    let mut final_ratio = f64::NAN;
    let mut ratios = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        final_ratio = busiest_ratio(&current, &units);
        ratios.push(final_ratio);
        if balanced_after_s.is_none() && final_ratio <= BALANCED {
            balanced_after_s = Some(scaled.elapsed().as_secs_f64());
        }
    }
    let (mut requests, mut failed) = (0, 0);
    for s in shoppers {
        let (r, f) = s.await?;
        requests += r;
        failed += f;
    }
    let moved = current
        .iter()
        .zip(&before)
        .filter(|(now, then)| *now.lock().unwrap() != **then)
        .count() as u64;
    Ok(RebalanceRun {
        balanced_after_s,
        final_ratio,
        ratios,
        moved,
        requests,
        failed,
    })
}

/// Session `i`'s think time: spread evenly over the range (a fixed low-discrepancy sequence,
/// so every run and arm draws the same mix).
fn think_time(range: (Duration, Duration), i: usize) -> Duration {
    let frac = (i as f64 * 0.618_033_988_75).fract();
    range.0 + (range.1 - range.0).mul_f64(frac)
}

/// The busiest unit's sessions ÷ the mean over all units, by each session's latest answer.
fn busiest_ratio(current: &[Mutex<String>], units: &[crate::bench::Unit]) -> f64 {
    let counts: Vec<usize> = units
        .iter()
        .map(|u| {
            current
                .iter()
                .filter(|c| *c.lock().unwrap() == u.name)
                .count()
        })
        .collect();
    let mean = current.len() as f64 / units.len() as f64;
    counts.iter().copied().max().unwrap_or(0) as f64 / mean
}

struct ShopperRun {
    client: reqwest::Client,
    url: String,
    think: Duration,
    deadline: Instant,
    current: Arc<Vec<Mutex<String>>>,
    scaled_at: Arc<Mutex<Option<Instant>>>,
}

/// One shopper: reads its cart every `think` until the deadline; returns the requests it made
/// after the scale-up and how many of those failed.
async fn shopper(run: ShopperRun, i: usize, mut jar: Jar) -> (u64, u64) {
    let (mut requests, mut failed) = (0, 0);
    // Spread the first requests over the think time.
    let first = run
        .think
        .mul_f64(i as f64 / run.current.len().max(1) as f64);
    tokio::time::sleep(first).await;
    while Instant::now() + run.think < run.deadline {
        tokio::time::sleep(run.think).await;
        let after_scale = run.scaled_at.lock().unwrap().is_some();
        let (status, unit) = send(&run.client, &mut jar, reqwest::Method::GET, &run.url, None)
            .await
            .unwrap_or((0, String::new()));
        if after_scale {
            requests += 1;
            failed += u64::from(!(200..300).contains(&status));
        }
        if (200..300).contains(&status) && !unit.is_empty() {
            *run.current[i].lock().unwrap() = unit;
        }
    }
    (requests, failed)
}
