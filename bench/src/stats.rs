//! Repeated runs and their summaries: each figure is the median of the runs, with min and max;
//! ratios are taken within a round (configurations run alternately), then their median.

use crate::load::LoadResult;

/// Median, min and max of a figure over runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// The median (mean of the middle two for an even count).
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// Of the finite values; `None` when there are none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    /// The same spread of `f` of the figure, for a monotonic `f` (a unit change, `100 − x`):
    /// min and max stay the smaller and the larger.
    pub fn map(self, f: impl Fn(f64) -> f64) -> Spread {
        let (a, b) = (f(self.min), f(self.max));
        Spread {
            median: f(self.median),
            min: a.min(b),
            max: a.max(b),
        }
    }

    /// A spread of latencies in µs (as wrk reports them), in ms.
    pub fn in_ms(self) -> Spread {
        self.map(|us| us / 1000.0)
    }
}

/// One configuration's result in one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// What the load generator measured.
    pub load: LoadResult,
    /// CPU seconds the measured process (proxy or sidecar) used per 10 000 requests.
    pub cpu_per_10k: Option<f64>,
}

/// Several configurations, run alternately, round after round.
#[derive(Debug, Clone, Default)]
pub struct Rounds {
    /// Configuration names, in run order.
    pub configs: Vec<String>,
    /// `rounds[r][c]`: configuration `c` in round `r`.
    pub rounds: Vec<Vec<Sample>>,
}

/// A configuration's summary over the rounds.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Configuration name.
    pub config: String,
    /// Requests per second.
    pub rps: Spread,
    /// Latency percentiles, µs.
    pub p50: Spread,
    /// 99th.
    pub p99: Spread,
    /// 99.9th.
    pub p999: Spread,
    /// CPU seconds per 10k requests (none for a configuration without the measured process).
    pub cpu_per_10k: Option<Spread>,
    /// Requests per second relative to the reference configuration in the same round.
    pub rps_ratio: Option<Spread>,
    /// p99 relative to the reference configuration in the same round.
    pub p99_ratio: Option<Spread>,
    /// Failed requests over all rounds.
    pub errors: u64,
    /// Requests over all rounds.
    pub requests: u64,
}

impl Rounds {
    /// New, for these configurations.
    pub fn new(configs: impl IntoIterator<Item = impl Into<String>>) -> Rounds {
        Rounds {
            configs: configs.into_iter().map(Into::into).collect(),
            rounds: Vec::new(),
        }
    }

    /// Summaries of every configuration; ratios against configuration `reference`.
    pub fn summarize(&self, reference: Option<usize>) -> Vec<Summary> {
        (0..self.configs.len())
            .map(|c| {
                let col: Vec<&Sample> = self.rounds.iter().filter_map(|r| r.get(c)).collect();
                let spread = |f: &dyn Fn(&Sample) -> f64| {
                    Spread::of(col.iter().map(|s| f(s))).unwrap_or(Spread {
                        median: f64::NAN,
                        min: f64::NAN,
                        max: f64::NAN,
                    })
                };
                let ratio = |f: &dyn Fn(&Sample) -> f64| {
                    let r = reference.filter(|&r| r != c)?;
                    self.ratio(c, r, f)
                };
                Summary {
                    config: self.configs[c].clone(),
                    rps: spread(&|s| s.load.rps),
                    p50: spread(&|s| s.load.p50_us),
                    p99: spread(&|s| s.load.p99_us),
                    p999: spread(&|s| s.load.p999_us),
                    cpu_per_10k: Spread::of(col.iter().filter_map(|s| s.cpu_per_10k)),
                    rps_ratio: ratio(&|s| s.load.rps),
                    p99_ratio: ratio(&|s| s.load.p99_us),
                    errors: col.iter().map(|s| s.load.errors).sum(),
                    requests: col.iter().map(|s| s.load.requests).sum(),
                }
            })
            .collect()
    }

    /// [`Rounds::ratio`] of the configurations named `c` and `base`; `None` when either did
    /// not run.
    pub fn ratio_of(&self, c: &str, base: &str, f: &dyn Fn(&Sample) -> f64) -> Option<Spread> {
        let at = |name: &str| self.configs.iter().position(|x| x == name);
        self.ratio(at(c)?, at(base)?, f)
    }

    /// Configuration `c`'s figure `f` over configuration `base`'s, taken within each round
    /// (they ran back to back), then summarised.
    pub fn ratio(&self, c: usize, base: usize, f: &dyn Fn(&Sample) -> f64) -> Option<Spread> {
        Spread::of(self.rounds.iter().filter_map(|round| {
            let (x, b) = (round.get(c)?, round.get(base)?);
            Some(f(x) / f(b))
        }))
    }
}

/// The `q` quantile (0–1, nearest rank) of `sorted`, which must be sorted; 0 when empty.
pub fn nearest_rank(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// CPU seconds per 10k requests from two readings of a process's CPU time.
pub fn cpu_per_10k(before: f64, after: f64, requests: u64) -> Option<f64> {
    (requests > 0).then(|| (after - before) / requests as f64 * 10_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rps: f64, p99: f64) -> Sample {
        Sample {
            load: LoadResult {
                requests: 100,
                rps,
                p50_us: 1.0,
                p99_us: p99,
                p999_us: 3.0,
                errors: 1,
            },
            cpu_per_10k: Some(rps / 1000.0),
        }
    }

    #[test]
    fn a_mapped_spread_keeps_min_below_max() {
        let s = Spread {
            median: 20.0,
            min: 10.0,
            max: 40.0,
        };
        let ms = s.map(|v| v / 10.0);
        assert_eq!((ms.median, ms.min, ms.max), (2.0, 1.0, 4.0));
        let rest = s.map(|v| 100.0 - v);
        assert_eq!((rest.median, rest.min, rest.max), (80.0, 60.0, 90.0));
    }

    #[test]
    fn spread_is_median_min_max_of_finite_values() {
        assert_eq!(
            Spread::of([3.0, 1.0, 2.0]),
            Some(Spread {
                median: 2.0,
                min: 1.0,
                max: 3.0
            })
        );
        assert_eq!(
            Spread::of([4.0, 1.0, f64::NAN, 2.0, 3.0]).unwrap().median,
            2.5
        );
        assert_eq!(Spread::of([f64::NAN]), None);
    }

    #[test]
    fn nearest_rank_takes_the_rank_at_or_above_the_quantile() {
        let v: Vec<u64> = (1..=200).collect();
        assert_eq!(nearest_rank(&v, 0.5), 100);
        assert_eq!(nearest_rank(&v, 0.99), 198);
        assert_eq!(nearest_rank(&v, 0.999), 200);
        assert_eq!(nearest_rank(&[7], 0.99), 7);
        assert_eq!(nearest_rank(&[], 0.99), 0);
    }

    #[test]
    fn ratios_are_taken_within_each_round() {
        let mut r = Rounds::new(["gateway", "haproxy"]);
        // Round 2 is slower for both: the within-round ratio stays 2.
        r.rounds
            .push(vec![sample(1000.0, 10.0), sample(2000.0, 5.0)]);
        r.rounds
            .push(vec![sample(500.0, 20.0), sample(1000.0, 10.0)]);
        r.rounds.push(vec![sample(800.0, 8.0), sample(1600.0, 4.0)]);
        let s = r.summarize(Some(0));
        assert_eq!(s[0].rps.median, 800.0);
        assert!(s[0].rps_ratio.is_none(), "no ratio against itself");
        let ratio = s[1].rps_ratio.unwrap();
        assert_eq!((ratio.min, ratio.median, ratio.max), (2.0, 2.0, 2.0));
        assert_eq!(s[1].p99_ratio.unwrap().median, 0.5);
        assert_eq!(s[1].errors, 3);
        assert_eq!(s[1].requests, 300);
        assert_eq!(s[1].cpu_per_10k.unwrap().median, 1.6);
    }

    #[test]
    fn cpu_per_10k_requests() {
        assert_eq!(cpu_per_10k(1.0, 3.0, 20_000), Some(1.0));
        assert_eq!(cpu_per_10k(1.0, 3.0, 0), None);
    }
}
