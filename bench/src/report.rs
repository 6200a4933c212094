//! The report: `bench/results/<date>.md` with the machine, the settings and a table per
//! scenario, plus the plots; optionally the README's "Performance" table.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::bench::{Bench, system_program};
use crate::capacity::Capacity;
use crate::failover::{Failovers, PROXIES};
use crate::overhead::{Overhead, TWO_WORKERS};
use crate::plot::{Bars, Panel, bar_panels, failover_timeline};
use crate::scale::{Cost, Scale};
use crate::sessions::Group;
use crate::shoppers::Failover;
use crate::stats::{Rounds, Spread, Summary};
use crate::websocket::{MESSAGE_SIZE, WebSocketEcho};

/// What a run measured; a scenario left out with `--only` is `None`.
#[derive(Default)]
pub struct Results {
    /// Scenario 1.
    pub overhead: Option<Overhead>,
    /// Scenario 2.
    pub sessions: Option<Vec<Group>>,
    /// Scenario 3.
    pub failover: Option<Failovers>,
    /// Scenario 4.
    pub scale: Option<Scale>,
    /// Scenario 5.
    pub websocket: Option<WebSocketEcho>,
    /// Scenario 6.
    pub rebalance: Option<crate::rebalance::Rebalancing>,
    /// Scenario 7.
    pub capacity: Option<Capacity>,
}

impl Results {
    /// Fails unless every scenario that ran produced finite numbers for every configuration
    /// (what the smoke run in CI checks; no timing is judged).
    pub fn check_complete(&self) -> anyhow::Result<()> {
        let mut missing = Vec::new();
        let check = |missing: &mut Vec<String>, what: String, s: &[Summary]| {
            for x in s {
                if x.requests == 0 || !x.rps.median.is_finite() || !x.p99.median.is_finite() {
                    missing.push(format!("{what}: {}", x.config));
                }
            }
        };
        if let Some(o) = &self.overhead {
            check(&mut missing, "overhead".into(), &o.closed.summarize(None));
            check(
                &mut missing,
                "overhead at a fixed rate".into(),
                &o.open.summarize(None),
            );
        }
        for g in self.sessions.iter().flatten() {
            check(
                &mut missing,
                format!("sessions, {}", g.title),
                &g.rounds.summarize(None),
            );
        }
        if let Some(f) = &self.failover {
            for (p, runs) in f.runs.iter().enumerate() {
                if runs.is_empty() || runs.iter().any(|r| r.requests == 0 || r.affected == 0) {
                    missing.push(format!(
                        "failover: {} (no requests or no affected session)",
                        PROXIES[p]
                    ));
                }
            }
        }
        if let Some(r) = &self.rebalance {
            for (arm, runs) in r.runs.iter().enumerate() {
                if runs.is_empty() || runs.iter().any(|x| x.requests == 0) {
                    missing.push(format!(
                        "rebalance: {} (no requests after the scale-up)",
                        crate::rebalance::ARMS[arm]
                    ));
                }
            }
        }
        if let Some(s) = &self.scale {
            check(&mut missing, "scale".into(), &s.rounds.summarize(None));
            if s.bytes_per_session.iter().any(|b| !b.is_finite()) {
                missing.push("scale: memory per session".into());
            }
        }
        if let Some(c) = &self.capacity {
            for step in &c.steps {
                check(
                    &mut missing,
                    format!("sessions at scale, {}", step.sessions),
                    &step.rounds.summarize(None),
                );
                if step.hits.iter().any(|h| h.shares().is_none()) {
                    missing.push(format!(
                        "sessions at scale, {}: no hit or miss counted",
                        step.sessions
                    ));
                }
            }
        }
        if let Some(w) = &self.websocket {
            check(
                &mut missing,
                "WebSocket echo".into(),
                &w.rounds.summarize(None),
            );
        }
        if missing.is_empty() {
            Ok(())
        } else {
            bail!("scenarios without numbers: {}", missing.join("; "))
        }
    }
}

fn ms(us: f64) -> String {
    let v = us / 1000.0;
    if !v.is_finite() {
        "–".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn spread(s: &Spread, f: impl Fn(f64) -> String) -> String {
    if s.min == s.max {
        f(s.median)
    } else {
        format!("{} ({}–{})", f(s.median), f(s.min), f(s.max))
    }
}

fn num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn ratio(r: &Option<Spread>) -> String {
    r.as_ref()
        .map_or("—".into(), |r| spread(r, |v| format!("{v:.2}×")))
}

fn cpu(c: &Option<Spread>) -> String {
    c.as_ref()
        .map_or("—".into(), |c| spread(c, |v| format!("{v:.2}")))
}

/// The fixed-concurrency table (req/s, ratio, latency, CPU, failures).
fn load_table(out: &mut String, rows: &[Summary], ratio_to: &str, cpu_of: &str) {
    counted_table(out, rows, ratio_to, cpu_of, ("requests", "req"));
}

/// [`load_table`] counting `what` (plural and short, e.g. messages and msg) instead of requests.
fn counted_table(
    out: &mut String,
    rows: &[Summary],
    ratio_to: &str,
    cpu_of: &str,
    (what, short): (&str, &str),
) {
    let _ = writeln!(
        out,
        "| configuration | {what}/s | {short}/s vs {ratio_to} | p50 ms | p99 ms | p99 vs {ratio_to} | p99.9 ms | {cpu_of} CPU s per 10k {what} | failed / {what} |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |",
            s.config,
            spread(&s.rps, num),
            ratio(&s.rps_ratio),
            spread(&s.p50, ms),
            spread(&s.p99, ms),
            ratio(&s.p99_ratio),
            spread(&s.p999, ms),
            cpu(&s.cpu_per_10k),
            s.errors,
            s.requests
        );
    }
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown CPU")
        .trim()
        .to_owned();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cpus} CPUs, {mem_gib:.0} GiB, Linux {}",
        kernel.trim()
    )
}

/// First line a command prints (stdout or stderr), for versions.
fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|| format!("{program}: not found"))
}

/// Writes the report and plots into `out_dir` as `<date>.md` and `<date>-*.png`; returns the
/// report's path and the README table.
pub fn write(
    b: &Bench,
    r: &Results,
    out_dir: &Path,
    date: &str,
) -> anyhow::Result<(std::path::PathBuf, String)> {
    std::fs::create_dir_all(out_dir)?;
    let mut md = String::new();
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let pin = match (b.placement.proxy, b.placement.load) {
        (Some(p), Some(l)) => format!(
            "the proxy (or sidecar) under test on CPU {p}; the load generator and the shared backends on CPU {l}"
        ),
        _ => "no pinning (one CPU)".into(),
    };
    let _ = writeln!(
        md,
        "# Stickyfarm benchmarks, {date}{}\n",
        if b.args.smoke {
            " (smoke run: numbers are not meaningful)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "Made by `bench/run`{} at commit `{commit}`.\n\n\
         - Machine: {}\n\
         - Peers and tools: {}; nginx {}; {}; {}\n\
         - Each figure: median of {} runs (min–max in brackets), configurations run alternately; ratios are taken within a run, then their median.\n\
         - Load: wrk, one thread, {} connections, {} s per run; oha for fixed rates (latency measured from when each request was due).\n\
         - CPU: {pin}. Every proxy has one worker (gateway `TOKIO_WORKER_THREADS=1`, HAProxy `nbthread 1`, nginx `worker_processes 1`), except the two-worker pair of scenario 1. CPU seconds are user + system time of the measured process (and its children) from `/proc`.\n",
        if b.args.smoke { " --smoke" } else { "" },
        machine(),
        first_line(&system_program("haproxy").display().to_string(), &["-v"]),
        first_line(&system_program("nginx").display().to_string(), &["-v"])
            .trim_start_matches("nginx version: nginx/"),
        first_line("wrk", &["-v"]),
        first_line(&b.oha.program.display().to_string(), &["--version"]),
        b.runs,
        b.wrk.connections,
        b.duration.as_secs(),
    );
    // The goals first, in the report and in the README: the run's verdict before its tables.
    let goals = goals_table(&crate::goals::judge(r));
    let _ = writeln!(
        md,
        "## Goals\n\nEach goal is a figure of this run against its peer in the same run (or a count, a time, a size); it is met when the median over the runs is (recovery from a kill, promised for every run: when its slowest run is). A goal whose scenario did not run, or did not reach the size the goal is about, is not measured.\n\n{goals}"
    );
    let mut readme = format!("{goals}\n");
    let stamp = |p: &str| format!("{date}-{p}.png");
    // What the README shows under its tables: (alt text, file in `out_dir`), in scenario order.
    let mut plots: Vec<(&str, String)> = Vec::new();

    if let Some(o) = &r.overhead {
        let closed = o.closed.summarize(Some(1));
        let open = o.open.summarize(Some(1));
        let _ = writeln!(
            md,
            "## 1. Proxy overhead\n\nFour identical backends (a 1 KiB page), served by one process so that the load CPU does the same work whichever of them answers. Clients' cookies spread over them (the unit-address case names one unit). Ratios are against the gateway with a unit address.\n\n### Fixed concurrency\n"
        );
        load_table(&mut md, &closed, "gateway", "proxy");
        let two = two_workers(&o.closed);
        if let Some(line) = &two {
            let _ = writeln!(md, "\n{line}");
        }
        let _ = writeln!(
            md,
            "\n### Fixed rate: {} requests/s (a third of the slowest configuration's throughput)\n",
            o.rate
        );
        load_table(&mut md, &open, "gateway", "proxy");
        let _ = writeln!(md, "\n![proxy overhead]({})\n", stamp("overhead"));
        plots.push(("proxy overhead", stamp("overhead")));
        let cats: Vec<String> = closed.iter().map(|s| s.config.clone()).collect();
        let lat = |rows: &[Summary]| {
            vec![
                Bars {
                    name: "p50".into(),
                    values: rows.iter().map(|s| Some(s.p50)).collect(),
                },
                Bars {
                    name: "p99".into(),
                    values: rows.iter().map(|s| Some(s.p99)).collect(),
                },
                Bars {
                    name: "p99.9".into(),
                    values: rows.iter().map(|s| Some(s.p999)).collect(),
                },
            ]
        };
        let in_ms = |bars: Vec<Bars>| -> Vec<Bars> {
            bars.into_iter()
                .map(|b| Bars {
                    name: b.name,
                    values: b.values.into_iter().map(|v| v.map(Spread::in_ms)).collect(),
                })
                .collect()
        };
        bar_panels(
            &out_dir.join(stamp("overhead")),
            &[
                Panel {
                    title: format!(
                        "Throughput at {} connections (median, whiskers min–max)",
                        b.wrk.connections
                    ),
                    y_desc: "requests/s".into(),
                    categories: cats.clone(),
                    series: vec![Bars {
                        name: "requests/s".into(),
                        values: closed.iter().map(|s| Some(s.rps)).collect(),
                    }],
                },
                Panel {
                    title: format!("Latency at {} connections", b.wrk.connections),
                    y_desc: "ms".into(),
                    categories: cats.clone(),
                    series: in_ms(lat(&closed)),
                },
                Panel {
                    title: format!("Latency at {} requests/s", o.rate),
                    y_desc: "ms".into(),
                    categories: cats,
                    series: in_ms(lat(&open)),
                },
                Panel {
                    title: "Proxy CPU seconds per 10k requests (fixed concurrency)".into(),
                    y_desc: "CPU s".into(),
                    categories: closed.iter().map(|s| s.config.clone()).collect(),
                    series: vec![Bars {
                        name: "CPU".into(),
                        values: closed.iter().map(|s| s.cpu_per_10k).collect(),
                    }],
                },
            ],
        )?;
        let _ = writeln!(
            readme,
            "| proxy (fixed concurrency, {} connections) | requests/s | p50 ms | p99 ms | p99 ms at {} req/s | proxy CPU s / 10k req |",
            b.wrk.connections, o.rate
        );
        let _ = writeln!(readme, "|---|---:|---:|---:|---:|---:|");
        for (c, f) in closed.iter().zip(&open) {
            let _ = writeln!(
                readme,
                "| {} | {} | {} | {} | {} | {} |",
                c.config,
                num(c.rps.median),
                ms(c.p50.median),
                ms(c.p99.median),
                ms(f.p99.median),
                c.cpu_per_10k
                    .map_or("—".into(), |v| format!("{:.2}", v.median))
            );
        }
        if let Some(line) = &two {
            let _ = writeln!(readme, "\n{line}");
        }
    }

    if let Some(groups) = &r.sessions {
        let _ = writeln!(
            md,
            "## 2. Session state through the sidecar: cache vs PostgreSQL\n\nOne unit (app + sidecar) with the cache, one with `--cache-reads false` (every read loaded from PostgreSQL), the same PostgreSQL, wrk rotating over the units' sessions. A read is the app taking the cart (from the attached snapshot up to 16 KiB, else one session-API call); a write is written through to PostgreSQL before the answer. Each write is also measured as PostgreSQL alone doing it: pgbench runs the sidecar's own write statement at the same concurrency, pinned where wrk runs (the ceiling the write path aims at, 0.8× or better), and once more with the `pg_notify` the statement used to carry in its transaction (the sidecar now announces changes after commit, many per transaction). A Redis-backed store was not measured (Stickyfarm has none).\n"
        );
        let mut cats = Vec::new();
        let (mut rps_c, mut rps_n, mut p99_c, mut p99_n) = (vec![], vec![], vec![], vec![]);
        let _ = writeln!(
            readme,
            "\n| session state (sidecar) | cache: requests/s | p99 ms | cache off (PostgreSQL): requests/s | p99 ms | PostgreSQL alone, the write statement: requests/s | cache vs that |"
        );
        let _ = writeln!(readme, "|---|---:|---:|---:|---:|---:|---:|");
        for g in groups {
            let s = g.rounds.summarize(Some(0));
            let _ = writeln!(md, "### {}\n", g.title);
            load_table(&mut md, &s, "cache", "sidecar");
            let _ = writeln!(md);
            cats.push(g.title.clone());
            rps_c.push(Some(s[0].rps));
            rps_n.push(Some(s[1].rps));
            p99_c.push(Some(s[0].p99.in_ms()));
            p99_n.push(Some(s[1].p99.in_ms()));
            // The ratio the write path is held to: the sidecar's writes against PostgreSQL alone.
            let (alone, vs_alone) = s.get(2).map_or(("—".into(), "—".into()), |a| {
                (
                    num(a.rps.median),
                    a.rps_ratio
                        .map_or("—".into(), |r| format!("{:.2}×", 1.0 / r.median)),
                )
            });
            let _ = writeln!(
                readme,
                "| {} | {} | {} | {} | {} | {alone} | {vs_alone} |",
                g.title,
                num(s[0].rps.median),
                ms(s[0].p99.median),
                num(s[1].rps.median),
                ms(s[1].p99.median)
            );
        }
        let _ = writeln!(md, "![sessions]({})\n", stamp("sessions"));
        plots.push(("session state: cache against PostgreSQL", stamp("sessions")));
        bar_panels(
            &out_dir.join(stamp("sessions")),
            &[
                Panel {
                    title: "Requests/s through the sidecar".into(),
                    y_desc: "requests/s".into(),
                    categories: cats.clone(),
                    series: vec![
                        Bars {
                            name: "cache".into(),
                            values: rps_c,
                        },
                        Bars {
                            name: "no cache (PostgreSQL)".into(),
                            values: rps_n,
                        },
                    ],
                },
                Panel {
                    title: "p99 latency".into(),
                    y_desc: "ms".into(),
                    categories: cats,
                    series: vec![
                        Bars {
                            name: "cache".into(),
                            values: p99_c,
                        },
                        Bars {
                            name: "no cache (PostgreSQL)".into(),
                            values: p99_n,
                        },
                    ],
                },
            ],
        )?;
    }

    if let Some(f) = &r.failover {
        let _ = writeln!(
            md,
            "## 3. Failover under load\n\n{} shoppers, one request each every {} ms (every fifth a 1 KiB cart write), on three units; after a warm-up the unit holding the most sessions (app and sidecar) is killed with SIGKILL. Checks every 500 ms, 3 failures take a unit out, 2 passes bring it back, a connection error takes it out at once — the same on all. The Stickyfarm gateway runs twice: with warm backups (each session's backup keeps a warm copy, the default) and with them off (`--warm-backup-percent 0`), so the two differ only in that. Shoppers are spread evenly over the interval, and so are their writes. Recovery: from the kill until the last session that the killed unit served was answered by another unit; it includes the wait for each shopper's next request (up to one interval). Slowest failed-over request: the longest any of those sessions waited for its first answer from another unit, from when it sent the request.\n",
            f.shoppers,
            f.interval.as_millis()
        );
        let _ = writeln!(
            md,
            "| proxy | failed reads | failed writes | requests | sessions on the killed unit | recovery ms | slowest failed-over request ms | p99 ms in the 2 s before | p99 ms in the 2 s after | p99 after ÷ before | slowest ms after | failed-over sessions served from a warm copy | reads loaded from PostgreSQL on the backups after the kill |"
        );
        let _ = writeln!(
            md,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let _ = writeln!(
            readme,
            "\n| failover (one of three units killed under load) | failed reads | failed writes | recovery ms | slowest failed-over request ms | slowest request ms |"
        );
        let _ = writeln!(readme, "|---|---:|---:|---:|---:|---:|");
        for (p, runs) in f.runs.iter().enumerate() {
            let sum = |g: fn(&Failover) -> u64| runs.iter().map(g).sum::<u64>();
            let sp = |g: fn(&Failover) -> f64| Spread::of(runs.iter().map(g));
            let show = |s: Option<Spread>, us: bool| {
                s.map_or("never".into(), |s| {
                    spread(&s, |v| if us { ms(v) } else { format!("{v:.0}") })
                })
            };
            let never = runs.iter().filter(|r| r.recovery_ms.is_none()).count();
            let recovery = sp(|r| r.recovery_ms.map_or(f64::NAN, |v| v as f64));
            let rec_text = format!(
                "{}{}",
                show(recovery, false),
                if never > 0 {
                    format!(" ({never} runs never)")
                } else {
                    String::new()
                }
            );
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                PROXIES[p],
                sum(|r| r.failed_reads),
                sum(|r| r.failed_writes),
                sum(|r| r.requests),
                show(sp(|r| r.affected as f64), false),
                rec_text,
                show(sp(|r| r.slowest_failed_over_us as f64), true),
                show(sp(|r| r.p99_before_us as f64), true),
                show(sp(|r| r.p99_after_us as f64), true),
                sp(|r| r.p99_after_us as f64 / r.p99_before_us.max(1) as f64)
                    .map_or("–".into(), |s| spread(&s, |v| format!("{v:.2}×"))),
                show(sp(|r| r.max_after_us as f64), true),
                // The share of the killed unit's sessions whose first request on a backup
                // found a warm copy current with PostgreSQL.
                sp(|r| 100.0 * r.warm_hits as f64 / r.affected.max(1) as f64)
                    .map_or("–".into(), |s| spread(&s, |v| format!("{v:.0} %"))),
                show(sp(|r| r.backup_loads as f64), false),
            );
            let _ = writeln!(
                readme,
                "| {} | {} | {} | {} | {} | {} |",
                PROXIES[p],
                sum(|r| r.failed_reads),
                sum(|r| r.failed_writes),
                recovery.map_or("never".into(), |s| format!("{:.0}", s.median)),
                sp(|r| r.slowest_failed_over_us as f64).map_or("–".into(), |s| ms(s.median)),
                sp(|r| r.max_after_us as f64).map_or("–".into(), |s| ms(s.median)),
            );
        }
        let _ = writeln!(
            md,
            "\nFailed counts are totals over all runs.\n\n![failover]({})\n",
            stamp("failover")
        );
        let timeline: Vec<(&str, &[crate::shoppers::Answer], u64)> = f
            .last
            .iter()
            .enumerate()
            .map(|(p, (a, k))| (PROXIES[p], a.as_slice(), *k))
            .collect();
        failover_timeline(&out_dir.join(stamp("failover")), &timeline)?;
        plots.push(("failover under load", stamp("failover")));
    }

    if let Some(s) = &r.scale {
        let rows = s.rounds.summarize(Some(0));
        let _ = writeln!(
            md,
            "## 4. Scale\n\nFarms of 2, 4 and 8 units behind one gateway, all on the CPU under test, {} sessions each (1 KiB carts) opened through the gateway; wrk reads them all in turn. Memory: growth of the sidecars' resident memory while the sessions were opened, per session.\n",
            s.sessions
        );
        load_table(&mut md, &rows, "2 units", "gateway");
        scale_costs(&mut md, s);
        let _ = writeln!(
            md,
            "\n| farm | sidecar memory per cached session | copies per session (own + warm) | memory per copy |\n|---|---:|---:|---:|"
        );
        let _ = writeln!(
            readme,
            "\n| scale ({} sessions) | requests/s | p99 ms | memory per cached session |",
            s.sessions
        );
        let _ = writeln!(readme, "|---|---:|---:|---:|");
        for ((row, bytes), (per_copy, copies)) in
            rows.iter().zip(&s.bytes_per_session).zip(&s.bytes_per_copy)
        {
            let _ = writeln!(
                md,
                "| {} | {:.1} KiB | {copies:.2} | {:.2} KiB |",
                row.config,
                bytes / 1024.0,
                per_copy / 1024.0
            );
            let _ = writeln!(
                readme,
                "| {} | {} | {} | {:.1} KiB |",
                row.config,
                num(row.rps.median),
                ms(row.p99.median),
                bytes / 1024.0
            );
        }
        let _ = writeln!(md, "\n![scale]({})\n", stamp("scale"));
        plots.push(("scale", stamp("scale")));
        bar_panels(
            &out_dir.join(stamp("scale")),
            &[
                Panel {
                    title: format!("Reads of {} sessions through the gateway", s.sessions),
                    y_desc: "requests/s".into(),
                    categories: rows.iter().map(|r| r.config.clone()).collect(),
                    series: vec![Bars {
                        name: "requests/s".into(),
                        values: rows.iter().map(|r| Some(r.rps)).collect(),
                    }],
                },
                Panel {
                    title: "Sidecar memory per cached session".into(),
                    y_desc: "KiB".into(),
                    categories: rows.iter().map(|r| r.config.clone()).collect(),
                    series: vec![Bars {
                        name: "KiB".into(),
                        values: s
                            .bytes_per_session
                            .iter()
                            .map(|b| Spread::of([b / 1024.0]))
                            .collect(),
                    }],
                },
            ],
        )?;
    }
    if let Some(w) = &r.websocket {
        websocket_section(
            &mut md,
            &mut readme,
            w,
            &out_dir.join(stamp("websocket")),
            &stamp("websocket"),
        )?;
        plots.push(("WebSocket echo", stamp("websocket")));
    }
    if let Some(r) = &r.rebalance {
        rebalance_section(&mut md, &mut readme, r);
        let _ = writeln!(
            md,
            "![busiest unit ÷ mean after the scale-up]({})\n",
            stamp("rebalancing")
        );
        rebalance_plot(&out_dir.join(stamp("rebalancing")), r)?;
        plots.push(("rebalancing after a scale-up", stamp("rebalancing")));
    }
    if let Some(c) = &r.capacity {
        capacity_section(&mut md, &mut readme, c, &stamp("capacity"));
        capacity_plot(&out_dir.join(stamp("capacity")), c)?;
        plots.push(("sessions at scale", stamp("capacity")));
    }
    readme.push_str(&plot_gallery(out_dir, &plots));
    let path = out_dir.join(format!("{date}.md"));
    std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))?;
    Ok((path, readme))
}

/// Scenario 5's section of the report, its plot, and its rows of the README table.
fn websocket_section(
    md: &mut String,
    readme: &mut String,
    w: &WebSocketEcho,
    plot: &Path,
    plot_name: &str,
) -> anyhow::Result<()> {
    // Ratios against the gateway, as in the overhead scenario.
    let rows = w.rounds.summarize(Some(1));
    let _ = writeln!(
        md,
        "## 5. WebSocket echo\n\nFour identical echo backends in one process; {} WebSockets, their cookies spread over the backends, each sending a {MESSAGE_SIZE}-byte message and waiting for its echo before the next (`stickyfarm-bench ws-load`, one thread, on the load CPU). Every echo is checked against the message sent; a lost, altered or late (5 s) one counts as failed. A message/s is one round trip through the proxy both ways.\n",
        w.connections
    );
    counted_table(md, &rows, "gateway", "proxy", ("messages", "msg"));
    let _ = writeln!(md, "\n![WebSocket echo]({plot_name})\n");
    let _ = writeln!(
        readme,
        "\n| WebSocket echo ({} WebSockets, {MESSAGE_SIZE} B) | messages/s | p50 ms | p99 ms | proxy CPU s / 10k messages |",
        w.connections
    );
    let _ = writeln!(readme, "|---|---:|---:|---:|---:|");
    for s in &rows {
        let _ = writeln!(
            readme,
            "| {} | {} | {} | {} | {} |",
            s.config,
            num(s.rps.median),
            ms(s.p50.median),
            ms(s.p99.median),
            s.cpu_per_10k
                .map_or("—".into(), |v| format!("{:.2}", v.median))
        );
    }
    let cats: Vec<String> = rows.iter().map(|s| s.config.clone()).collect();
    bar_panels(
        plot,
        &[
            Panel {
                title: format!(
                    "Echoes at {} WebSockets (median, whiskers min–max)",
                    w.connections
                ),
                y_desc: "messages/s".into(),
                categories: cats.clone(),
                series: vec![Bars {
                    name: "messages/s".into(),
                    values: rows.iter().map(|s| Some(s.rps)).collect(),
                }],
            },
            Panel {
                title: "Round-trip latency".into(),
                y_desc: "ms".into(),
                categories: cats,
                series: vec![
                    Bars {
                        name: "p50".into(),
                        values: rows.iter().map(|s| Some(s.p50.in_ms())).collect(),
                    },
                    Bars {
                        name: "p99".into(),
                        values: rows.iter().map(|s| Some(s.p99.in_ms())).collect(),
                    },
                ],
            },
        ],
    )
}

/// Scenario 7's section of the report and its rows of the README table.
fn capacity_section(md: &mut String, readme: &mut String, c: &Capacity, plot_name: &str) {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let _ = writeln!(
        md,
        "## 7. Sessions at scale\n\nOne unit (memory tier {:.0} MiB, disk tier {:.0} MiB on a folder of the run) holding more and more sessions with 1 KiB carts, put into PostgreSQL with `COPY` and each read once through the unit (the warm-up) so that it holds them all. wrk then reads sessions picked at random; the same reads go to a unit with the cache off (every read from PostgreSQL). Where the cached unit found its reads comes from its `cache_hits_total{{tier}}` and `cache_misses_total` counters over the run; memory is the sidecar's resident set once it held every session ({:.0} MiB before the first), per session its growth since then divided by the sessions, beside what the cache's weigher counts per copy it holds in memory (its byte capacity is spent by that count: when every session is in memory, the two should agree); disk is the disk tier's allocated bytes.\n",
        mib(c.memory_tier),
        mib(c.disk_tier),
        mib(c.rss_start)
    );
    let _ = writeln!(
        md,
        "| sessions | cache req/s | vs PostgreSQL | p50 ms | p99 ms | p99.9 ms | PostgreSQL req/s | PostgreSQL p99 ms | p99 vs PostgreSQL | reads from memory / disk / PostgreSQL | sidecar memory | per session | in memory | weigher per copy | disk tier | warm-up s |"
    );
    let _ = writeln!(
        md,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"
    );
    let _ = writeln!(
        readme,
        "\n| sessions at scale (one unit) | requests/s | p99 ms | p99 vs PostgreSQL | reads from memory / disk / PostgreSQL |"
    );
    let _ = writeln!(readme, "|---:|---:|---:|---:|---|");
    for step in &c.steps {
        let rows = step.rounds.summarize(Some(1));
        let (cache, pg) = (&rows[0], &rows[1]);
        let shares = match (step.share(0), step.share(1), step.share(2)) {
            (Some(m), Some(d), Some(p)) => {
                format!("{:.1} / {:.1} / {:.1} %", m.median, d.median, p.median)
            }
            _ => "–".into(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {shares} | {:.0} MiB | {:.2} KiB | {} | {} | {:.0} MiB | {:.0} |",
            step.sessions,
            spread(&cache.rps, num),
            ratio(&cache.rps_ratio),
            spread(&cache.p50, ms),
            spread(&cache.p99, ms),
            spread(&cache.p999, ms),
            spread(&pg.rps, num),
            spread(&pg.p99, ms),
            ratio(&cache.p99_ratio),
            mib(step.rss_bytes),
            step.rss_per_session(c.rss_start) / 1024.0,
            if step.all_in_memory() {
                "all".to_owned()
            } else {
                format!("{:.0}", step.held)
            },
            step.weighed_per_copy()
                .map_or("–".into(), |w| format!("{:.2} KiB", w / 1024.0)),
            mib(step.disk_bytes),
            step.warm_secs,
        );
        let _ = writeln!(
            readme,
            "| {} | {} | {} | {} | {shares} |",
            step.sessions,
            num(cache.rps.median),
            ms(cache.p99.median),
            ratio(&cache.p99_ratio),
        );
    }
    let _ = writeln!(md, "\n![sessions at scale]({plot_name})\n");
}

/// Scenario 7's plot: read p99 of both units, and where the cached unit found its reads, by
/// session count.
fn capacity_plot(path: &Path, c: &Capacity) -> anyhow::Result<()> {
    let cats: Vec<String> = c.steps.iter().map(|s| s.sessions.to_string()).collect();
    let p99 = |config: usize| Bars {
        name: crate::capacity::CONFIGS[config].into(),
        values: c
            .steps
            .iter()
            .map(|s| Some(s.rounds.summarize(None)[config].p99.in_ms()))
            .collect(),
    };
    let share = |i: usize, name: &str| Bars {
        name: name.into(),
        values: c.steps.iter().map(|s| s.share(i)).collect(),
    };
    bar_panels(
        path,
        &[
            Panel {
                title: "Read p99 by sessions held (median, whiskers min–max)".into(),
                y_desc: "ms".into(),
                categories: cats.clone(),
                series: vec![p99(0), p99(1)],
            },
            Panel {
                title: "Where the cached unit found its reads".into(),
                y_desc: "% of reads".into(),
                categories: cats,
                series: vec![
                    share(0, "memory tier"),
                    share(1, "disk tier"),
                    share(2, "PostgreSQL"),
                ],
            },
        ],
    )
}

/// The goals as a table: figure, this run's median (min–max), target, verdict.
fn goals_table(goals: &[crate::goals::Goal]) -> String {
    use crate::goals::{Target, Unit, Verdict};
    let mut t = String::from("| goal | this run | target | |\n|---|---:|---:|---|\n");
    for g in goals {
        let number = |v: f64| match g.unit {
            Unit::Ratio => format!("{v:.2}×"),
            Unit::Count | Unit::Ms | Unit::Percent => format!("{v:.0}"),
            Unit::KiB => format!("{v:.2}"),
        };
        let suffix = match g.unit {
            Unit::Ratio | Unit::Count => "",
            Unit::Ms => " ms",
            Unit::KiB => " KiB",
            Unit::Percent => " %",
        };
        let value = g
            .value
            .map_or("—".into(), |v| format!("{}{suffix}", spread(&v, number)));
        let target = match g.target {
            Target::AtLeast(x) => format!("≥ {}{suffix}", number(x)),
            Target::AtMost(x) => format!("≤ {}{suffix}", number(x)),
            Target::Within(lo, hi) => format!("{}–{}{suffix}", number(lo), number(hi)),
            Target::Reported => "—".into(),
        };
        let verdict = match g.verdict {
            Verdict::Met => "met",
            Verdict::NotMet => "**not met**",
            Verdict::Reported => "reported",
            Verdict::NotMeasured => "not measured",
        };
        let _ = writeln!(t, "| {} | {value} | {target} | {verdict} |", g.figure);
    }
    t
}

/// The plots under the README's tables, two to a row at a page's width: HTML `img` tags,
/// because Markdown images cannot be given a width. Paths are `out_dir`'s as given, which
/// `bench/run` passes relative to the README (`bench/results`).
fn plot_gallery(out_dir: &Path, plots: &[(&str, String)]) -> String {
    if plots.is_empty() {
        return String::new();
    }
    let mut html = String::from("\n<p>\n");
    for (alt, file) in plots {
        let _ = writeln!(
            html,
            "<img alt=\"{alt}\" src=\"{}\" width=\"49%\">",
            out_dir.join(file).display()
        );
    }
    html.push_str("</p>\n");
    html
}

/// Replaces the README's table between `<!-- bench:begin -->` and `<!-- bench:end -->`.
pub fn update_readme(readme: &Path, table: &str, report: &str) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(readme).with_context(|| format!("reading {}", readme.display()))?;
    let (begin, end) = ("<!-- bench:begin -->", "<!-- bench:end -->");
    let (Some(b), Some(e)) = (text.find(begin), text.find(end)) else {
        bail!("{} has no {begin} … {end} markers", readme.display());
    };
    let new = format!(
        "{}{begin}\nFrom `{report}`:\n\n{table}\n{}",
        &text[..b],
        &text[e..]
    );
    std::fs::write(readme, new).with_context(|| format!("writing {}", readme.display()))
}

/// Scenario 6's table: time to balance after a scale-up, with rebalancing and without.
fn rebalance_section(md: &mut String, readme: &mut String, r: &crate::rebalance::Rebalancing) {
    use crate::rebalance::{ARMS, UNITS_AFTER, UNITS_BEFORE};
    let _ = writeln!(
        md,
        "## 6. Rebalancing after a scale-up\n\n{} shoppers with sessions on {UNITS_BEFORE} units, each reading its 1 KiB cart every {}–{} s (its own think time, fixed per shopper); then {} more units join (the gateway's units file is rewritten) and the run watches for {} s. Every second it counts where each session's latest answer came from. Balanced: the busiest unit holds at most 1.2× the mean. Rebalancing with idle {} against the same with `--rebalance-idle 0s`.\n",
        r.sessions,
        r.think.0.as_secs_f64(),
        r.think.1.as_secs_f64(),
        UNITS_AFTER - UNITS_BEFORE,
        r.watch.as_secs(),
        r.idle
    );
    let _ = writeln!(
        md,
        "| arm | balanced after s | busiest ÷ mean at the end | sessions moved | requests after the scale-up | failed |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        readme,
        "\n| rebalancing after 3 → 6 units | balanced after s | busiest ÷ mean at the end | failed |"
    );
    let _ = writeln!(readme, "|---|---:|---:|---:|");
    for (arm, runs) in r.runs.iter().enumerate() {
        let never = runs.iter().filter(|x| x.balanced_after_s.is_none()).count();
        let balanced = Spread::of(runs.iter().filter_map(|x| x.balanced_after_s));
        let balanced = match balanced {
            Some(s) if never == 0 => spread(&s, |v| format!("{v:.0}")),
            Some(s) => format!("{} ({never} runs never)", spread(&s, |v| format!("{v:.0}"))),
            None => "never".to_owned(),
        };
        let ratio = Spread::of(runs.iter().map(|x| x.final_ratio))
            .map_or("–".to_owned(), |s| spread(&s, |v| format!("{v:.2}×")));
        let moved = Spread::of(runs.iter().map(|x| x.moved as f64))
            .map_or("–".to_owned(), |s| spread(&s, |v| format!("{v:.0}")));
        let requests: u64 = runs.iter().map(|x| x.requests).sum();
        let failed: u64 = runs.iter().map(|x| x.failed).sum();
        let _ = writeln!(
            md,
            "| {} | {balanced} | {ratio} | {moved} | {requests} | {failed} |",
            ARMS[arm]
        );
        let _ = writeln!(
            readme,
            "| {} | {balanced} | {ratio} | {failed} |",
            ARMS[arm]
        );
    }
    let _ = writeln!(md, "\nRequests and failures are totals over all runs.\n");
}

/// Scenario 6's plot: the busiest unit's share over time, each arm's first run.
fn rebalance_plot(path: &Path, r: &crate::rebalance::Rebalancing) -> anyhow::Result<()> {
    let series: Vec<crate::plot::Line<'_>> = r
        .runs
        .iter()
        .enumerate()
        .filter_map(|(arm, runs)| {
            let run = runs.first()?;
            Some(crate::plot::Line {
                name: crate::rebalance::ARMS[arm],
                points: (1..)
                    .map(f64::from)
                    .zip(run.ratios.iter().copied())
                    .collect(),
            })
        })
        .collect();
    crate::plot::lines(
        path,
        "Rebalancing after 3 -> 6 units: the busiest unit's sessions ÷ the mean (first run of each arm)",
        ("seconds since the scale-up", "busiest ÷ mean"),
        &series,
        1.2,
    )
}

/// The two-worker comparison in a sentence: the gateway's requests/s over HAProxy's, taken
/// within each round.
fn two_workers(closed: &Rounds) -> Option<String> {
    let (gw, ha) = TWO_WORKERS;
    let rps = closed.ratio_of(gw, ha, &|s| s.load.rps);
    let cpu = closed.ratio_of(gw, ha, &|s| s.cpu_per_10k.unwrap_or(f64::NAN));
    rps.as_ref()?;
    Some(format!(
        "Two workers (gateway `TOKIO_WORKER_THREADS=2`, HAProxy `nbthread 2`), neither pinned: both share the two CPUs with wrk and the backends, which stay on CPU 0. Gateway vs HAProxy: requests/s {}, CPU per request {}.",
        ratio(&rps),
        ratio(&cpu)
    ))
}

/// Where a farm's CPU went per request, by process role, and how often its processes switched:
/// what makes a larger farm on the same CPU slower.
fn scale_costs(md: &mut String, s: &Scale) {
    let _ = writeln!(
        md,
        "\nWhere the CPU under test went, per 10k requests (median over runs), and context switches of the farm's processes per request:\n\n| farm | gateway CPU s | sidecars CPU s | apps CPU s | total | context switches per request |\n|---|---:|---:|---:|---:|---:|"
    );
    for (i, name) in s.rounds.configs.iter().enumerate() {
        let of = |f: &dyn Fn(&Cost) -> f64| {
            Spread::of(s.costs.iter().filter_map(|r| r.get(i)).map(f))
                .map_or(f64::NAN, |v| v.median)
        };
        let _ = writeln!(
            md,
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            of(&|c| c.gateway),
            of(&|c| c.sidecars),
            of(&|c| c.apps),
            of(&|c| c.gateway + c.sidecars + c.apps),
            of(&|c| c.switches),
        );
    }
}

#[cfg(test)]
mod readme_tests {
    /// `bench/run` rewrites the README's table between these markers: a README without them
    /// would fail a full run only after every scenario had been measured.
    #[test]
    fn the_readme_has_the_markers_bench_run_rewrites() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README.md at the workspace root");
        let begin = readme
            .find("<!-- bench:begin -->")
            .expect("the begin marker");
        let end = readme.find("<!-- bench:end -->").expect("the end marker");
        assert!(begin < end, "the markers are in order");
        let table = &readme[begin..end];
        let report = table
            .split('`')
            .nth(1)
            .expect("the table names the report it comes from");
        assert!(
            std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
                .join(report)
                .is_file(),
            "the report the table comes from ({report}) is in the repository"
        );
        for plot in table.split("src=\"").skip(1) {
            let plot = plot.split('"').next().expect("a quoted path");
            assert!(
                std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
                    .join(plot)
                    .is_file(),
                "the plot {plot} the README shows is in the repository"
            );
        }
    }

    #[test]
    fn the_plots_are_shown_by_their_path_from_the_readme() {
        let plots = [
            ("proxy overhead", "2026-12-06-overhead.png".to_owned()),
            ("scale", "2026-12-06-scale.png".to_owned()),
        ];
        let html = super::plot_gallery(std::path::Path::new("bench/results"), &plots);
        assert_eq!(
            html,
            "\n<p>\n\
             <img alt=\"proxy overhead\" src=\"bench/results/2026-12-06-overhead.png\" width=\"49%\">\n\
             <img alt=\"scale\" src=\"bench/results/2026-12-06-scale.png\" width=\"49%\">\n\
             </p>\n"
        );
        assert_eq!(super::plot_gallery(std::path::Path::new("x"), &[]), "");
    }
}
