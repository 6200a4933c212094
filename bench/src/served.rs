//! What the units counted while wrk loaded them: the check that the requests a scenario times
//! did the work it reports them as.
//!
//! wrk only sees answers. A cookie that names no session (a line cut short, a file of the
//! wrong farm, a script that sends none) still gets a `200`: the sidecar issues a new,
//! empty session, counts no read, and a write to it creates a session instead of updating
//! one. Timed as "reads of 10 000 sessions", such a run would report something else. So each
//! timed run is checked against the sidecars' own counters, read before and after it.

use anyhow::bail;
use stickyfarm_api::metrics::sample_sum;

use crate::bench::Unit;
use crate::stats::Sample;

/// What a timed run was to do to the sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Read them.
    Reads,
    /// Write them.
    Writes,
}

/// Runs `load` (one timed wrk run against `units`) and refuses its sample unless the units'
/// counters show its requests did `work`.
pub async fn checked(
    units: &[&Unit],
    work: Work,
    load: impl FnOnce() -> anyhow::Result<Sample>,
) -> anyhow::Result<Sample> {
    let before = Served::of(units).await?;
    let sample = load()?;
    let served = Served::of(units).await?.since(before);
    match work {
        Work::Reads => served.check_reads(sample.load.requests)?,
        Work::Writes => served.check_writes(sample.load.requests)?,
    }
    Ok(sample)
}

/// Counters of one or more sidecars, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Served {
    /// Session reads, from the cache (either tier) or from PostgreSQL.
    pub reads: f64,
    /// Session table writes committed.
    pub writes: f64,
    /// Sessions created in PostgreSQL (a first write to a new session id).
    pub created: f64,
}

/// The share of wrk's completed requests the counters must account for. Not all of them: a
/// request can complete after the counters were read (wrk stops, its last answers are counted).
const COVERED: f64 = 0.99;

impl Served {
    /// The counters of `units`, summed.
    async fn of(units: &[&Unit]) -> anyhow::Result<Served> {
        let mut s = Served::default();
        for u in units {
            let text = u.metrics().await?;
            let sum = |name, labels| sample_sum(&text, name, labels);
            s.reads += sum("stickyfarm_sidecar_cache_hits_total", "")
                + sum("stickyfarm_sidecar_cache_misses_total", "");
            s.writes += sum("stickyfarm_sidecar_writes_total", "outcome=\"committed\"");
            s.created += sum("stickyfarm_sidecar_sessions_created_total", "");
        }
        Ok(s)
    }

    /// What was counted between `before` and `self`.
    fn since(self, before: Served) -> Served {
        Served {
            reads: self.reads - before.reads,
            writes: self.writes - before.writes,
            created: self.created - before.created,
        }
    }

    /// Checks that (nearly) every one of the `requests` wrk completed read a session. It is a
    /// lower bound: a request may read its session more than once (an app that asks the
    /// session API after the sidecar attached a snapshot).
    fn check_reads(&self, requests: u64) -> anyhow::Result<()> {
        if self.reads < requests as f64 * COVERED {
            bail!(
                "wrk completed {requests} reads but the units counted {} session reads: the \
                 cookies wrk sent (bench/lua/sessions.lua) are not the sessions'",
                self.reads
            );
        }
        Ok(())
    }

    /// Checks that (nearly) every one of the `requests` wrk completed committed a write to a
    /// session that already existed: a write to a session the cookie did not name creates one.
    fn check_writes(&self, requests: u64) -> anyhow::Result<()> {
        let updates = self.writes - self.created;
        if updates < requests as f64 * COVERED || self.created > requests as f64 * (1.0 - COVERED) {
            bail!(
                "wrk completed {requests} writes but the units committed {} writes, {} of them \
                 creating a session: the cookies wrk sent (bench/lua/sessions.lua) are not the \
                 sessions'",
                self.writes,
                self.created
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(reads: f64, writes: f64, created: f64) -> Served {
        Served {
            reads,
            writes,
            created,
        }
    }

    #[test]
    fn reads_that_read_no_session_are_refused() {
        let s = served(1_000.0, 0.0, 0.0);
        s.check_reads(1_000).unwrap();
        // Up to 1 % may complete after the counters were read.
        s.check_reads(1_005).unwrap();
        let err = s.check_reads(2_000).unwrap_err().to_string();
        assert!(err.contains("counted 1000 session reads"), "{err}");
        assert!(Served::default().check_reads(10).is_err());
        Served::default().check_reads(0).unwrap();
    }

    #[test]
    fn writes_that_create_sessions_are_refused() {
        served(0.0, 1_000.0, 0.0).check_writes(1_000).unwrap();
        // Every write committed, but each to a session of its own: the cookies named none.
        let err = served(0.0, 1_000.0, 1_000.0)
            .check_writes(1_000)
            .unwrap_err()
            .to_string();
        assert!(err.contains("1000 of them creating a session"), "{err}");
        // A few new sessions are not what the run timed either, past 1 %.
        assert!(served(0.0, 1_020.0, 20.0).check_writes(1_000).is_err());
        // Writes that failed (a conflict, PostgreSQL gone) are not committed writes.
        assert!(served(0.0, 500.0, 0.0).check_writes(1_000).is_err());
    }

    #[test]
    fn counts_are_taken_between_two_readings() {
        let before = served(10.0, 5.0, 1.0);
        let after = served(110.0, 55.0, 1.0);
        assert_eq!(after.since(before), served(100.0, 50.0, 0.0));
    }
}
