//! Stickyfarm's performance goals, judged from one run's own figures. Each goal is a ratio
//! against the peer measured in the same run (or a count, a time, a size), summarised over the
//! runs as a median with min–max; a goal is met when its median is, except a goal its target
//! states for every run (recovery from a kill), which is met when its worst run is. A goal whose scenario did
//! not run (`--only`), or did not reach the size the goal is about (a smoke run), is listed as
//! not measured rather than left out, so the report always shows the whole list.

use crate::capacity::Capacity;
use crate::failover::{Failovers, PROXIES};
use crate::overhead::{GATEWAY_COOKIE, GATEWAY_UNIT, HAPROXY, NGINX, Overhead, TWO_WORKERS};
use crate::report::Results;
use crate::scale::{FARMS, Scale, farm_name};
use crate::sessions::{Group, SIZES, group_title};
use crate::stats::{Rounds, Sample, Spread};

/// What a goal's figure must be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// At least this.
    AtLeast(f64),
    /// At most this.
    AtMost(f64),
    /// Between these, both included.
    Within(f64, f64),
    /// No bound: the figure is reported for what it says.
    Reported,
}

/// How a figure reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unit {
    /// A ratio, "1.05×".
    Ratio,
    /// A count of requests.
    Count,
    /// Milliseconds.
    Ms,
    /// KiB.
    KiB,
    /// Percent.
    Percent,
}

/// The judgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The median meets the target (the worst run, for a target promised for every run).
    Met,
    /// It does not.
    NotMet,
    /// No target; reported.
    Reported,
    /// The scenario did not produce this figure in this run.
    NotMeasured,
}

/// One goal and what the run measured for it.
#[derive(Debug, Clone)]
pub struct Goal {
    /// What is measured, in the reader's words.
    pub figure: String,
    /// The bound.
    pub target: Target,
    /// How it reads.
    pub unit: Unit,
    /// Median and min–max over the runs.
    pub value: Option<Spread>,
    /// The judgement of `value` against `target`.
    pub verdict: Verdict,
}

impl Goal {
    /// Judges `value` (its median) against `target`.
    fn new(figure: impl Into<String>, target: Target, unit: Unit, value: Option<Spread>) -> Goal {
        let verdict = match (value, target) {
            (None, _) => Verdict::NotMeasured,
            (Some(_), Target::Reported) => Verdict::Reported,
            (Some(v), t) => {
                let m = v.median;
                let ok = match t {
                    Target::AtLeast(x) => m >= x,
                    Target::AtMost(x) => m <= x,
                    Target::Within(lo, hi) => (lo..=hi).contains(&m),
                    Target::Reported => unreachable!("matched above"),
                };
                if ok { Verdict::Met } else { Verdict::NotMet }
            }
        };
        Goal {
            figure: figure.into(),
            target,
            unit,
            value,
            verdict,
        }
    }

    /// Judged on the worst run instead of the median, for a target that promises something of
    /// every run: a median under the bound with one run over it would not keep that promise.
    fn in_every_run(mut self) -> Goal {
        if let (Some(v), Verdict::Met | Verdict::NotMet) = (self.value, self.verdict) {
            let ok = match self.target {
                Target::AtLeast(x) => v.min >= x,
                Target::AtMost(x) => v.max <= x,
                Target::Within(lo, hi) => lo <= v.min && v.max <= hi,
                Target::Reported => unreachable!("a reported goal has no verdict to judge"),
            };
            self.verdict = if ok { Verdict::Met } else { Verdict::NotMet };
        }
        self
    }

    /// A goal that is not met whatever the figure says (a run that never recovered).
    fn failed(mut self) -> Goal {
        if self.verdict == Verdict::Met {
            self.verdict = Verdict::NotMet;
        }
        self
    }
}

/// Every goal, in the order of the scenarios that measure them.
pub fn judge(r: &Results) -> Vec<Goal> {
    let mut goals = gateway(r.overhead.as_ref());
    goals.extend(sessions(r.sessions.as_deref()));
    goals.extend(memory(r.capacity.as_ref()));
    goals.extend(growth(r.scale.as_ref(), r.capacity.as_ref()));
    goals.extend(failover(r.failover.as_ref()));
    goals
}

fn rps(s: &Sample) -> f64 {
    s.load.rps
}
fn cpu(s: &Sample) -> f64 {
    s.cpu_per_10k.unwrap_or(f64::NAN)
}
fn p50(s: &Sample) -> f64 {
    s.load.p50_us
}
fn p99(s: &Sample) -> f64 {
    s.load.p99_us
}
fn p999(s: &Sample) -> f64 {
    s.load.p999_us
}

/// One gateway worker against HAProxy and nginx (one worker each), at full load and at the
/// fixed rate; the two-worker pair is reported.
fn gateway(o: Option<&Overhead>) -> Vec<Goal> {
    let closed = |a: &str, b: &str, f: fn(&Sample) -> f64| o?.closed.ratio_of(a, b, &f);
    let open = |a: &str, b: &str, f: fn(&Sample) -> f64| o?.open.ratio_of(a, b, &f);
    let (more, less) = (Target::AtLeast, Target::AtMost);
    vec![
        Goal::new(
            "gateway ÷ HAProxy, requests/s, unit address",
            more(1.1),
            Unit::Ratio,
            closed(GATEWAY_UNIT, HAPROXY, rps),
        ),
        Goal::new(
            "gateway ÷ HAProxy, requests/s, routing cookie",
            more(1.1),
            Unit::Ratio,
            closed(GATEWAY_COOKIE, HAPROXY, rps),
        ),
        Goal::new(
            "gateway ÷ nginx, requests/s, unit address",
            more(1.0),
            Unit::Ratio,
            closed(GATEWAY_UNIT, NGINX, rps),
        ),
        Goal::new(
            "gateway ÷ nginx, requests/s, routing cookie",
            more(1.0),
            Unit::Ratio,
            closed(GATEWAY_COOKIE, NGINX, rps),
        ),
        Goal::new(
            "gateway ÷ HAProxy, CPU per request at full load (routing cookie)",
            less(1.0),
            Unit::Ratio,
            closed(GATEWAY_COOKIE, HAPROXY, cpu),
        ),
        Goal::new(
            "gateway ÷ HAProxy, CPU per request at the fixed rate",
            less(1.0),
            Unit::Ratio,
            open(GATEWAY_COOKIE, HAPROXY, cpu),
        ),
        Goal::new(
            "gateway ÷ HAProxy, p99 at the fixed rate",
            less(1.0),
            Unit::Ratio,
            open(GATEWAY_COOKIE, HAPROXY, p99),
        ),
        Goal::new(
            "gateway ÷ HAProxy, p99.9 at the fixed rate",
            less(1.0),
            Unit::Ratio,
            open(GATEWAY_COOKIE, HAPROXY, p999),
        ),
        Goal::new(
            "two workers on both CPUs: gateway ÷ HAProxy `nbthread 2`, requests/s",
            Target::Reported,
            Unit::Ratio,
            closed(TWO_WORKERS.0, TWO_WORKERS.1, rps),
        ),
    ]
}

/// The sidecar's cached reads against the PostgreSQL path, and its writes against PostgreSQL
/// alone running the same write statement.
fn sessions(groups: Option<&[Group]>) -> Vec<Goal> {
    let rounds = |write: bool, label: &str| -> Option<&Rounds> {
        let title = group_title(write, label);
        groups?.iter().find(|g| g.title == title).map(|g| &g.rounds)
    };
    // Configurations of a group: 0 the cache, 1 the cache off, 2 PostgreSQL alone.
    let (cache, no_cache, alone) = (0, 1, 2);
    let mut goals = Vec::new();
    for ((_, label), least) in SIZES.iter().zip([6.0, 15.0]) {
        goals.push(Goal::new(
            format!("cached {label} reads ÷ the PostgreSQL path, requests/s"),
            Target::AtLeast(least),
            Unit::Ratio,
            rounds(false, label).and_then(|r| r.ratio(cache, no_cache, &rps)),
        ));
    }
    for (_, label) in SIZES {
        let writes = rounds(true, label);
        goals.push(Goal::new(
            format!("{label} writes ÷ PostgreSQL alone, requests/s"),
            Target::AtLeast(0.8),
            Unit::Ratio,
            writes.and_then(|r| r.ratio(cache, alone, &rps)),
        ));
        goals.push(Goal::new(
            format!("{label} writes ÷ PostgreSQL alone, p50"),
            Target::AtMost(1.5),
            Unit::Ratio,
            writes.and_then(|r| r.ratio(cache, alone, &p50)),
        ));
    }
    goals
}

/// Session count at which the memory goal is measured: large enough that the sidecar's fixed
/// memory is a small share of the growth.
const MEMORY_SESSIONS: usize = 100_000;

/// Resident memory per cached 1 KiB session, and whether the cache's weigher counts it.
fn memory(c: Option<&Capacity>) -> Vec<Goal> {
    // Only a step with every session in the memory tier measures what one cached copy costs.
    let step = c.and_then(|c| {
        let s = c
            .steps
            .iter()
            .find(|s| s.sessions == MEMORY_SESSIONS && s.all_in_memory())?;
        Some((s, s.rss_per_session(c.rss_start)))
    });
    let once = |v: f64| Spread::of([v]);
    vec![
        Goal::new(
            "resident memory per cached 1 KiB session, 100k sessions in memory",
            Target::AtMost(1.5),
            Unit::KiB,
            step.and_then(|(_, rss)| once(rss / 1024.0)),
        ),
        Goal::new(
            "what the cache's weigher counts ÷ that memory",
            Target::Within(0.9, 1.1),
            Unit::Ratio,
            step.and_then(|(s, rss)| once(s.weighed_per_copy()? / rss)),
        ),
    ]
}

/// A farm grown on one machine, and one unit grown to its largest session count.
fn growth(s: Option<&Scale>, c: Option<&Capacity>) -> Vec<Goal> {
    let (small, large) = (FARMS[0], FARMS[FARMS.len() - 1]);
    let largest = c.and_then(|c| c.steps.last());
    let count = largest.map_or("the most".into(), |s| s.sessions.to_string());
    vec![
        Goal::new(
            format!("{large} units ÷ {small} units on one machine, requests/s"),
            Target::AtLeast(0.9),
            Unit::Ratio,
            s.and_then(|s| {
                s.rounds
                    .ratio_of(&farm_name(large), &farm_name(small), &rps)
            }),
        ),
        Goal::new(
            format!("{count} sessions in one unit: read p99"),
            Target::Reported,
            Unit::Ms,
            largest.and_then(|s| {
                Spread::of(s.rounds.rounds.iter().filter_map(|r| r.first()).map(p99))
                    .map(Spread::in_ms)
            }),
        ),
        Goal::new(
            format!("{count} sessions in one unit: reads found in the cache (memory or disk)"),
            Target::Reported,
            Unit::Percent,
            largest
                .and_then(|s| s.share(2))
                .map(|pg| pg.map(|share| 100.0 - share)),
        ),
    ]
}

/// The gateway (warm backups on, the default) when a unit is killed under load.
fn failover(f: Option<&Failovers>) -> Vec<Goal> {
    let runs = f.and_then(|f| {
        let p = PROXIES.iter().position(|&p| p == "Stickyfarm gateway")?;
        f.runs.get(p).filter(|r| !r.is_empty())
    });
    let total = |g: fn(&crate::shoppers::Failover) -> u64| {
        runs.and_then(|r| Spread::of([r.iter().map(g).sum::<u64>() as f64]))
    };
    let never = runs.is_some_and(|r| r.iter().any(|r| r.recovery_ms.is_none()));
    // Every session served again within 30 ms of the kill: a promise for each run, so the
    // slowest run decides, not the median.
    let recovery = Goal::new(
        if never {
            "recovery from a unit's kill, slowest run (some runs never recovered)"
        } else {
            "recovery from a unit's kill, slowest run"
        },
        Target::AtMost(30.0),
        Unit::Ms,
        runs.and_then(|r| Spread::of(r.iter().filter_map(|r| r.recovery_ms).map(|v| v as f64))),
    )
    .in_every_run();
    vec![
        Goal::new(
            "failed reads through the gateway, all runs",
            Target::AtMost(0.0),
            Unit::Count,
            total(|r| r.failed_reads),
        ),
        Goal::new(
            "failed writes through the gateway, all runs",
            Target::AtMost(0.0),
            Unit::Count,
            total(|r| r.failed_writes),
        ),
        if never { recovery.failed() } else { recovery },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::LoadResult;

    fn sample(rps: f64, p50_us: f64) -> Sample {
        Sample {
            load: LoadResult {
                requests: 1000,
                rps,
                p50_us,
                p99_us: p50_us * 4.0,
                p999_us: p50_us * 8.0,
                errors: 0,
            },
            cpu_per_10k: Some(10_000.0 / rps),
        }
    }

    #[test]
    fn a_goal_is_judged_by_its_median_and_says_when_it_was_not_measured() {
        let v = |median, min, max| Some(Spread { median, min, max });
        let at_least = |x| Goal::new("x", Target::AtLeast(1.1), Unit::Ratio, x).verdict;
        assert_eq!(at_least(v(1.1, 0.9, 1.3)), Verdict::Met);
        assert_eq!(at_least(v(1.09, 1.0, 1.5)), Verdict::NotMet);
        assert_eq!(at_least(None), Verdict::NotMeasured);
        let at_most = |x| Goal::new("x", Target::AtMost(0.0), Unit::Count, x).verdict;
        assert_eq!(at_most(v(0.0, 0.0, 0.0)), Verdict::Met);
        assert_eq!(at_most(v(1.0, 1.0, 1.0)), Verdict::NotMet);
        let within = |m| Goal::new("x", Target::Within(0.9, 1.1), Unit::Ratio, v(m, m, m)).verdict;
        assert_eq!(within(0.95), Verdict::Met);
        assert_eq!(within(1.2), Verdict::NotMet);
        let reported = Goal::new("x", Target::Reported, Unit::Ms, v(5.0, 5.0, 5.0));
        assert_eq!(reported.verdict, Verdict::Reported);
    }

    #[test]
    fn the_gateway_is_compared_with_its_peers_within_each_round() {
        let mut closed = Rounds::new([GATEWAY_UNIT, GATEWAY_COOKIE, HAPROXY, NGINX]);
        // Round 1: the gateway 1.2× HAProxy; round 2 (a slower machine moment) 1.0×; the
        // median of the within-round ratios is 1.1×: met at exactly the target.
        closed.rounds.push(vec![
            sample(12_000.0, 500.0),
            sample(12_000.0, 500.0),
            sample(10_000.0, 500.0),
            sample(12_000.0, 500.0),
        ]);
        closed.rounds.push(vec![
            sample(8_000.0, 500.0),
            sample(8_000.0, 500.0),
            sample(8_000.0, 500.0),
            sample(9_000.0, 500.0),
        ]);
        let mut open = Rounds::new([GATEWAY_COOKIE, HAPROXY]);
        open.rounds
            .push(vec![sample(7_000.0, 400.0), sample(7_000.0, 500.0)]);
        let o = Overhead {
            closed,
            open,
            rate: 7000,
        };
        let goals = gateway(Some(&o));
        let find = |f: &str| goals.iter().find(|g| g.figure == f).expect(f);
        let unit = find("gateway ÷ HAProxy, requests/s, unit address");
        assert_eq!(unit.value.unwrap().median, 1.1);
        assert_eq!(
            (unit.value.unwrap().min, unit.value.unwrap().max),
            (1.0, 1.2)
        );
        assert_eq!(unit.verdict, Verdict::Met);
        // nginx: 1.0× then 0.89×: not met.
        assert_eq!(
            find("gateway ÷ nginx, requests/s, unit address").verdict,
            Verdict::NotMet
        );
        // The fixed rate's p99: 1600 ÷ 2000 µs.
        let p99 = find("gateway ÷ HAProxy, p99 at the fixed rate");
        assert_eq!(p99.value.unwrap().median, 0.8);
        assert_eq!(p99.verdict, Verdict::Met);
        // The two-worker pair did not run: listed, not measured.
        assert_eq!(goals.last().unwrap().verdict, Verdict::NotMeasured);
        // Without the scenario every goal is still listed.
        assert!(
            gateway(None)
                .iter()
                .all(|g| g.verdict == Verdict::NotMeasured)
        );
        assert_eq!(gateway(None).len(), goals.len());
    }

    #[test]
    fn writes_are_held_to_postgresql_alone_and_reads_to_the_postgresql_path() {
        let group = |write: bool, label: &str, samples: Vec<Sample>| {
            let mut rounds = Rounds::new((0..samples.len()).map(|i| format!("config {i}")));
            rounds.rounds.push(samples);
            Group {
                title: group_title(write, label),
                rounds,
            }
        };
        let groups = vec![
            group(
                false,
                "1 KiB",
                vec![sample(21_000.0, 1_000.0), sample(7_000.0, 3_000.0)],
            ),
            group(
                true,
                "1 KiB",
                vec![
                    sample(2_400.0, 14_000.0),
                    sample(2_000.0, 16_000.0),
                    sample(3_000.0, 10_000.0),
                    sample(1_000.0, 30_000.0),
                ],
            ),
        ];
        let goals = sessions(Some(&groups));
        let find = |f: &str| goals.iter().find(|g| g.figure == f).expect(f);
        let reads = find("cached 1 KiB reads ÷ the PostgreSQL path, requests/s");
        assert_eq!(reads.value.unwrap().median, 3.0);
        assert_eq!(reads.verdict, Verdict::NotMet);
        let writes = find("1 KiB writes ÷ PostgreSQL alone, requests/s");
        assert_eq!(writes.value.unwrap().median, 0.8);
        assert_eq!(writes.verdict, Verdict::Met);
        assert_eq!(
            find("1 KiB writes ÷ PostgreSQL alone, p50")
                .value
                .unwrap()
                .median,
            1.4
        );
        // The 64 KiB groups did not run.
        assert_eq!(
            find("64 KiB writes ÷ PostgreSQL alone, requests/s").verdict,
            Verdict::NotMeasured
        );
    }

    #[test]
    fn failover_counts_every_run_and_a_run_that_never_recovered_fails_the_goal() {
        let run = |failed_reads, recovery_ms| crate::shoppers::Failover {
            failed_reads,
            recovery_ms,
            ..Default::default()
        };
        let failovers = |gateway: Vec<crate::shoppers::Failover>| Failovers {
            runs: vec![gateway, vec![], vec![run(5, Some(10))]],
            last: vec![],
            shoppers: 30,
            interval: std::time::Duration::from_millis(20),
        };
        let f = failovers(vec![run(0, Some(20)), run(1, Some(25)), run(0, Some(28))]);
        let goals = failover(Some(&f));
        // HAProxy's 5 failed reads are its own; the gateway's runs add up to 1.
        assert_eq!(goals[0].value.unwrap().median, 1.0);
        assert_eq!(goals[0].verdict, Verdict::NotMet);
        assert_eq!(goals[2].value.unwrap().median, 25.0);
        assert_eq!(goals[2].verdict, Verdict::Met);
        // One run over 30 ms: the median (25) would meet the goal; the promise is per run.
        let f = failovers(vec![run(0, Some(20)), run(0, Some(25)), run(0, Some(40))]);
        let goals = failover(Some(&f));
        assert_eq!(goals[2].value.unwrap().median, 25.0);
        assert_eq!(goals[2].verdict, Verdict::NotMet);
        // One run that never recovered: the others' median would meet the goal; it is not met.
        let f = failovers(vec![run(0, Some(20)), run(0, None), run(0, Some(21))]);
        let goals = failover(Some(&f));
        assert_eq!(goals[0].verdict, Verdict::Met);
        assert_eq!(goals[2].verdict, Verdict::NotMet);
        assert!(goals[2].figure.contains("never recovered"));
    }

    #[test]
    fn memory_is_judged_only_where_every_session_was_in_memory() {
        let step = |sessions: usize, held: f64, rss_bytes: u64| crate::capacity::Step {
            sessions,
            rounds: Rounds::new(["cache", "no cache"]),
            hits: vec![],
            rss_bytes,
            held,
            weighed: held * 1400.0,
            disk_bytes: 0,
            warm_secs: 1.0,
        };
        let start = 25 << 20;
        let capacity = |steps| Capacity {
            steps,
            memory_tier: 192 << 20,
            disk_tier: 0,
            rss_start: start,
        };
        // 100k sessions grew the sidecar by 1400 bytes each, what the weigher counts.
        let c = capacity(vec![step(100_000, 100_000.0, start + 140_000_000)]);
        let goals = memory(Some(&c));
        assert!((goals[0].value.unwrap().median - 1400.0 / 1024.0).abs() < 1e-9);
        assert_eq!(goals[0].verdict, Verdict::Met);
        assert_eq!(goals[1].value.unwrap().median, 1.0);
        // Some of them on disk: the growth per session says nothing about a cached copy.
        let c = capacity(vec![step(100_000, 20_000.0, start + 40_000_000)]);
        assert!(
            memory(Some(&c))
                .iter()
                .all(|g| g.verdict == Verdict::NotMeasured)
        );
    }
}
