//! Load from a separate process: wrk (Debian) at fixed concurrency, oha (crates.io) at a fixed
//! request rate (wrk has no rate limit, and oha corrects for coordinated omission).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::procs::Cpus;

/// What one load run measured.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct LoadResult {
    /// Requests completed.
    pub requests: u64,
    /// Completed requests per second.
    pub rps: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Failed requests: transport errors and answers other than 2xx/3xx.
    pub errors: u64,
}

/// How to run wrk.
#[derive(Debug, Clone)]
pub struct Wrk {
    /// `wrk` on PATH, or a path.
    pub program: PathBuf,
    /// The Lua script (`bench/lua/sessions.lua`).
    pub script: PathBuf,
    /// Where wrk runs.
    pub cpus: Cpus,
    /// Open connections.
    pub connections: u32,
    /// Length of a run.
    pub duration: Duration,
}

/// One line of `sessions.lua`'s report.
#[derive(Debug, Deserialize)]
struct WrkReport {
    requests: u64,
    duration_us: u64,
    connect_errors: u64,
    read_errors: u64,
    write_errors: u64,
    status_errors: u64,
    timeouts: u64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
}

impl Wrk {
    /// Runs wrk against `url`, each request with the next line of `cookies` as its `Cookie`
    /// header, with `method` and an optional body file.
    pub fn run(
        &self,
        url: &str,
        cookies: &Path,
        method: &str,
        body: Option<&Path>,
    ) -> anyhow::Result<LoadResult> {
        self.run_in_order(url, cookies, method, body, false)
    }

    /// Runs wrk reading (`GET`) `url`, each request with the `Cookie` line of a session picked
    /// at random from `cookies`.
    pub fn read_at_random(&self, url: &str, cookies: &Path) -> anyhow::Result<LoadResult> {
        self.run_in_order(url, cookies, "GET", None, true)
    }

    fn run_in_order(
        &self,
        url: &str,
        cookies: &Path,
        method: &str,
        body: Option<&Path>,
        random: bool,
    ) -> anyhow::Result<LoadResult> {
        let secs = self.duration.as_secs().max(1);
        let mut cmd = pinned(&self.program, self.cpus);
        cmd.args(["-t1", "--latency"])
            .arg(format!("-c{}", self.connections))
            .arg(format!("-d{secs}s"))
            .arg("--timeout")
            .arg("5s")
            .arg("-s")
            .arg(&self.script)
            .arg(url)
            .arg("--")
            .arg(cookies)
            .arg(method)
            .arg(body.map_or("-".into(), |b| b.as_os_str().to_owned()));
        if random {
            cmd.arg("random");
        }
        let out = cmd
            .output()
            .with_context(|| format!("running {}", self.program.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        parse_wrk(&stdout).with_context(|| {
            format!(
                "wrk against {url} gave no result ({}); stderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}

fn parse_wrk(stdout: &str) -> anyhow::Result<LoadResult> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH-RESULT "))
        .context("no BENCH-RESULT line")?;
    let r: WrkReport = serde_json::from_str(line).context("parsing the BENCH-RESULT line")?;
    if r.duration_us == 0 {
        bail!("wrk ran for no time");
    }
    Ok(LoadResult {
        requests: r.requests,
        rps: r.requests as f64 / (r.duration_us as f64 / 1e6),
        p50_us: r.p50_us,
        p99_us: r.p99_us,
        p999_us: r.p999_us,
        errors: r.connect_errors + r.read_errors + r.write_errors + r.status_errors + r.timeouts,
    })
}

/// How to run oha.
#[derive(Debug, Clone)]
pub struct Oha {
    /// The oha binary.
    pub program: PathBuf,
    /// Where oha runs.
    pub cpus: Cpus,
    /// Open connections.
    pub connections: u32,
    /// Length of a run.
    pub duration: Duration,
}

#[derive(Debug, Deserialize)]
struct OhaReport {
    summary: OhaSummary,
    #[serde(rename = "latencyPercentiles")]
    percentiles: OhaPercentiles,
    #[serde(rename = "statusCodeDistribution", default)]
    statuses: std::collections::BTreeMap<String, u64>,
    #[serde(rename = "errorDistribution", default)]
    errors: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Deserialize)]
struct OhaSummary {
    #[serde(rename = "requestsPerSec")]
    rps: f64,
}

#[derive(Debug, Deserialize)]
struct OhaPercentiles {
    p50: Option<f64>,
    p99: Option<f64>,
    #[serde(rename = "p99.9")]
    p999: Option<f64>,
}

impl Oha {
    /// Sends `rate` requests per second to `url` with one `Cookie` header; latency is measured
    /// from when each request was due, not from when a connection was free.
    pub fn run_at_rate(&self, url: &str, cookie: &str, rate: u32) -> anyhow::Result<LoadResult> {
        let mut cmd = pinned(&self.program, self.cpus);
        cmd.args([
            "--no-tui",
            "--output-format",
            "json",
            "--latency-correction",
        ])
        .args(["--worker-threads", "1"])
        .arg("-c")
        .arg(self.connections.to_string())
        .arg("-q")
        .arg(rate.to_string())
        .arg("-z")
        .arg(format!("{}s", self.duration.as_secs().max(1)))
        .args(["-t", "5s", "-H"])
        .arg(format!("Cookie: {cookie}"));
        if url.starts_with("https://") {
            // The benchmark's self-signed certificate.
            cmd.arg("--insecure");
        }
        cmd.arg(url);
        let out = cmd
            .output()
            .with_context(|| format!("running {}", self.program.display()))?;
        parse_oha(&String::from_utf8_lossy(&out.stdout)).with_context(|| {
            format!(
                "oha against {url} gave no result ({}); stderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}

fn parse_oha(stdout: &str) -> anyhow::Result<LoadResult> {
    let r: OhaReport = serde_json::from_str(stdout).context("parsing oha's JSON")?;
    let ok: u64 = r
        .statuses
        .iter()
        .filter(|(s, _)| s.starts_with('2') || s.starts_with('3'))
        .map(|(_, n)| n)
        .sum();
    // Requests that were due but not yet answered when the run's time was up are oha's
    // artifact ("aborted due to deadline", even with `-w`), not failures of the proxy.
    let errors: std::collections::BTreeMap<&String, &u64> = r
        .errors
        .iter()
        .filter(|(e, _)| e.as_str() != "aborted due to deadline")
        .collect();
    let failed: u64 = r
        .statuses
        .iter()
        .filter(|(s, _)| !(s.starts_with('2') || s.starts_with('3')))
        .map(|(_, n)| n)
        .sum::<u64>()
        + errors.values().copied().sum::<u64>();
    if failed > 0 {
        // What failed, for the run's log (the report only counts).
        eprintln!(
            "    oha: failures {:?} {:?}",
            errors,
            r.statuses
                .iter()
                .filter(|(s, _)| !(s.starts_with('2') || s.starts_with('3')))
                .collect::<Vec<_>>()
        );
    }
    let us = |v: Option<f64>| v.unwrap_or(f64::NAN) * 1e6;
    Ok(LoadResult {
        requests: ok + failed,
        rps: r.summary.rps,
        p50_us: us(r.percentiles.p50),
        p99_us: us(r.percentiles.p99),
        p999_us: us(r.percentiles.p999),
        errors: failed,
    })
}

/// `program`, run on `cpus` (through `taskset`) when given.
pub(crate) fn pinned(program: &Path, cpus: Cpus) -> Command {
    match cpus {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", c]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_wrk_script_report() {
        let out = "Running 1s test\nBENCH-RESULT {\"requests\":2000,\"duration_us\":2000000,\
            \"connect_errors\":0,\"read_errors\":1,\"write_errors\":0,\"status_errors\":2,\
            \"timeouts\":0,\"p50_us\":120,\"p99_us\":900,\"p999_us\":1500,\"max_us\":3000}\n";
        let r = parse_wrk(out).unwrap();
        assert_eq!(r.requests, 2000);
        assert_eq!(r.rps, 1000.0);
        assert_eq!((r.p50_us, r.p99_us, r.p999_us), (120.0, 900.0, 1500.0));
        assert_eq!(r.errors, 3);
        assert!(parse_wrk("Running 1s test\n").is_err());
    }

    #[test]
    fn reads_oha_json_counting_refusals_and_transport_errors_as_failures() {
        let out = r#"{"summary":{"requestsPerSec":500.5},
            "latencyPercentiles":{"p50":0.0002,"p99":0.001,"p99.9":0.002},
            "statusCodeDistribution":{"200":990,"503":4},
            "errorDistribution":{"connection closed":6,"aborted due to deadline":3}}"#;
        let r = parse_oha(out).unwrap();
        assert_eq!(r.requests, 1000);
        assert_eq!(r.errors, 10);
        assert_eq!(r.rps, 500.5);
        assert!((r.p50_us - 200.0).abs() < 1e-6);
        assert!((r.p999_us - 2000.0).abs() < 1e-6);
    }
}
