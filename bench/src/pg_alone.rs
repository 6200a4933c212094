//! PostgreSQL alone doing a sidecar write's work: pgbench runs the sidecar's own write
//! statement (taken from the sidecar crate, so the two cannot drift) on sessions of its own,
//! at the same concurrency as wrk, pinned where wrk runs. It is the ceiling the write path
//! is measured against; the second form adds the `pg_notify` that the write statement carried
//! inside its transaction before the sidecar announced changes after commit, to show what
//! that cost.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::load::LoadResult;
use crate::procs::Cpus;
use crate::stats::nearest_rank;

/// Sessions pgbench writes to (its own ids, beside the units' sessions).
const SESSIONS: u32 = 256;

/// What each pgbench transaction runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statement {
    /// The write statement alone (the sidecar announces it after commit, in batches).
    Write,
    /// The write statement with its `pg_notify` in the same transaction, as it was before.
    WriteAndNotify,
}

/// libpq's environment for the database at `url`, for PostgreSQL's own programs (pgbench,
/// psql): the password stays out of their argv.
pub fn libpq_env(url: &str) -> anyhow::Result<Vec<(&'static str, String)>> {
    let u = reqwest::Url::parse(url).context("the benchmark database's URL")?;
    Ok(vec![
        ("PGHOST", u.host_str().unwrap_or("127.0.0.1").to_owned()),
        ("PGPORT", u.port().unwrap_or(5432).to_string()),
        ("PGUSER", u.username().to_owned()),
        ("PGPASSWORD", u.password().unwrap_or_default().to_owned()),
        ("PGDATABASE", u.path().trim_start_matches('/').to_owned()),
    ])
}

/// pgbench against one database.
pub struct PgBench {
    program: PathBuf,
    /// libpq's environment for the database (the password stays out of argv).
    env: Vec<(&'static str, String)>,
    cpus: Cpus,
    clients: u32,
    secs: u64,
    work: PathBuf,
}

impl PgBench {
    /// Prepares pgbench's sessions in the database at `url`.
    pub fn prepare(
        url: &str,
        cpus: Cpus,
        clients: u32,
        secs: u64,
        work: &Path,
    ) -> anyhow::Result<PgBench> {
        let program = farmctl::postgres::server_program("pgbench").context(
            "pgbench not found with the PostgreSQL server (Debian's postgresql package)",
        )?;
        let env = libpq_env(url)?;
        let pg = PgBench {
            program,
            env,
            cpus,
            clients,
            secs,
            work: work.to_owned(),
        };
        let setup = work.join("pgbench-setup.sql");
        std::fs::write(
            &setup,
            format!(
                "INSERT INTO stickyfarm_sessions (id, created_by)
                 SELECT md5('pgbench-' || i)::uuid, 'pgbench' FROM generate_series(1, {SESSIONS}) AS i
                 ON CONFLICT (id) DO NOTHING;\n"
            ),
        )?;
        let out = pg.command(&setup, 1).args(["-t", "1"]).output()?;
        if !out.status.success() {
            bail!(
                "pgbench could not create its sessions: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(pg)
    }

    fn command(&self, script: &Path, clients: u32) -> Command {
        let mut cmd = match self.cpus {
            Some(c) => {
                let mut cmd = Command::new("taskset");
                cmd.args(["-c", c]).arg(&self.program);
                cmd
            }
            None => Command::new(&self.program),
        };
        cmd.envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .args(["-n", "-j", "1"])
            .arg(format!("-c{clients}"))
            .arg("-f")
            .arg(script);
        cmd
    }

    /// Writes `doc` into pgbench's sessions for the run's length; latencies from pgbench's
    /// per-transaction log.
    pub fn write(&self, doc: &str, statement: Statement, tag: &str) -> anyhow::Result<LoadResult> {
        let script = self.work.join(format!("pgbench-{tag}.sql"));
        std::fs::write(&script, write_script(doc, statement)?)?;
        let log_dir = self.work.join(format!("pgbench-log-{tag}"));
        let _ = std::fs::remove_dir_all(&log_dir);
        std::fs::create_dir_all(&log_dir)?;
        let out = self
            .command(&script, self.clients)
            .arg(format!("-T{}", self.secs.max(1)))
            .arg("-l")
            .arg(format!("--log-prefix={}", log_dir.join("tx").display()))
            .output()
            .context("running pgbench")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "pgbench failed ({}): {stdout} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut latencies = Vec::new();
        for f in std::fs::read_dir(&log_dir)? {
            let text = std::fs::read_to_string(f?.path())?;
            // `client transaction latency_us script epoch_s epoch_us`
            latencies.extend(
                text.lines()
                    .filter_map(|l| l.split(' ').nth(2)?.parse::<u64>().ok()),
            );
        }
        latencies.sort_unstable();
        let tps = stdout
            .lines()
            .find_map(|l| {
                l.strip_prefix("tps = ")?
                    .split(' ')
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
            .with_context(|| format!("no tps in pgbench's output: {stdout}"))?;
        let failed = stdout
            .lines()
            .find_map(|l| {
                l.strip_prefix("number of failed transactions: ")?
                    .split(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0);
        let _ = std::fs::remove_dir_all(&log_dir);
        Ok(LoadResult {
            requests: latencies.len() as u64,
            rps: tps,
            p50_us: nearest_rank(&latencies, 0.5) as f64,
            p99_us: nearest_rank(&latencies, 0.99) as f64,
            p999_us: nearest_rank(&latencies, 0.999) as f64,
            errors: failed,
        })
    }
}

/// The pgbench script: a random one of its sessions, then the sidecar's write statement with
/// its parameters filled in.
fn write_script(doc: &str, statement: Statement) -> anyhow::Result<String> {
    let mut sql = stickyfarm_sidecar::store::unconditional_write_sql().to_owned();
    if statement == Statement::WriteAndNotify {
        // The payload the sidecar announces, sent as the statement did before.
        let last = "SELECT t.version, s.generation FROM t, s";
        if !sql.contains(last) {
            bail!("the sidecar's write statement no longer ends with `{last}`: update the bench");
        }
        sql = sql.replace(
            last,
            "SELECT t.version, s.generation,
                    pg_notify('stickyfarm_session', s.id::text || ':' || s.generation)::text
               FROM t, s",
        );
    }
    // Highest first, so `$1` never eats the start of a `$1x`.
    let params = [
        ("$6", "86400".to_owned()),
        ("$5", "3600".to_owned()),
        ("$4", "0".to_owned()),
        ("$3", format!("'{}'", doc.replace('\'', "''"))),
        ("$2", "'cart'".to_owned()),
        ("$1", "md5('pgbench-' || :i)::uuid".to_owned()),
    ];
    for (p, v) in &params {
        sql = sql.replace(p, v);
    }
    let mut script = String::new();
    let _ = writeln!(script, "\\set i random(1, {SESSIONS})");
    // pgbench takes a statement over several lines up to its semicolon.
    let _ = writeln!(script, "{};", sql.trim());
    Ok(script)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_is_the_sidecars_statement_with_its_parameters_filled_in() {
        let s = write_script(r#"{"it's":1}"#, Statement::Write).unwrap();
        assert!(s.starts_with("\\set i random(1, 256)\n"));
        assert!(!s.contains('$'), "{s}");
        assert!(s.contains(r#"'{"it''s":1}'::jsonb"#), "{s}");
        assert!(s.contains("md5('pgbench-' || :i)::uuid"));
        assert!(!s.contains("pg_notify"));
        assert!(s.trim_end().ends_with(';'));
        let n = write_script("{}", Statement::WriteAndNotify).unwrap();
        assert!(n.contains("pg_notify('stickyfarm_session'"));
    }
}
