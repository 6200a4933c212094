//! Scenario 7, sessions at scale: one unit holding more and more sessions (10 000, then
//! 100 000, then 1 000 000, 1 KiB carts) in its memory tier (192 MiB: room for 100 000) and
//! foyer's disk tier on a folder of this run; at each size wrk reads sessions picked at random,
//! and the same reads go to a unit with the cache off (every read from PostgreSQL), the peer.
//!
//! The sessions are put into PostgreSQL directly, with `COPY` (ids hashed with the farm's key,
//! as the sidecar stores them): opening a million through the app would take most of an hour.
//! Each new session is then read once through the unit, which loads it into its cache, so the
//! unit holds every session, as one that served them all would. Reported per size: req/s and
//! latency of both units, where the cached unit's reads were found (memory tier, disk tier,
//! PostgreSQL: the sidecar's hit and miss counters), its resident memory beside what the cache's
//! weigher counts for the copies it holds in memory, and the disk tier's size.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use stickyfarm_api::token::Token;
use stickyfarm_api::{InstanceId, SessionId, SessionIdKey, cookie_names};

use crate::bench::{Bench, Unit, measure};
use crate::pg_alone::libpq_env;
use crate::served::{Work, checked};
use crate::shoppers::cart_of_size;
use crate::stats::{Rounds, Spread};

/// Session counts of a full run.
pub const SIZES: [usize; 3] = [10_000, 100_000, 1_000_000];
/// The smoke run's: enough to cross from memory into the disk tier of its small memory tier.
const SMOKE_SIZES: [usize; 3] = [100, 300, 1_000];

/// The configurations of each size.
pub const CONFIGS: [&str; 2] = ["cache (memory + disk tier)", "no cache (PostgreSQL)"];

/// What the session's number adds to its cart (`,"n":"0000042"`).
const NUMBER_FIELD: usize = r#","n":"0000000""#.len();

/// Reads of the warm-up in flight at once.
const WARM_CONCURRENCY: usize = 32;

/// Results of the scenario.
pub struct Capacity {
    /// One per session count, growing.
    pub steps: Vec<Step>,
    /// The cached unit's memory tier, bytes.
    pub memory_tier: u64,
    /// Its disk tier's capacity, bytes.
    pub disk_tier: u64,
    /// The cached sidecar's resident memory before it held any session, bytes.
    pub rss_start: u64,
}

/// One session count.
pub struct Step {
    /// Sessions in the unit (and in PostgreSQL).
    pub sessions: usize,
    /// [`CONFIGS`], round after round.
    pub rounds: Rounds,
    /// Per round: where the cached unit found what wrk read.
    pub hits: Vec<Hits>,
    /// The cached sidecar's resident memory once it held every session, bytes.
    pub rss_bytes: u64,
    /// Copies in its memory tier then (the sidecar's `cached_sessions`).
    pub held: f64,
    /// What the cache's weigher counted for them, bytes (`cache_memory_bytes`).
    pub weighed: f64,
    /// The disk tier's files, bytes allocated.
    pub disk_bytes: u64,
    /// How long reading every new session once took (the warm-up), seconds.
    pub warm_secs: f64,
}

impl Step {
    /// Resident memory the sidecar grew by per session it holds (in memory or on disk),
    /// bytes, from `rss_start`.
    pub fn rss_per_session(&self, rss_start: u64) -> f64 {
        self.rss_bytes.saturating_sub(rss_start) as f64 / self.sessions.max(1) as f64
    }

    /// Bytes the weigher counts per copy held in memory; `None` when none is.
    pub fn weighed_per_copy(&self) -> Option<f64> {
        (self.held > 0.0).then(|| self.weighed / self.held)
    }

    /// Whether every session was in the memory tier, so that the resident growth per session
    /// is what one cached copy costs, comparable with [`Step::weighed_per_copy`].
    pub fn all_in_memory(&self) -> bool {
        self.held >= self.sessions as f64
    }

    /// Share `i` of [`Hits::shares`] (0 memory, 1 disk, 2 PostgreSQL) over the rounds.
    pub fn share(&self, i: usize) -> Option<Spread> {
        Spread::of(self.hits.iter().filter_map(|h| h.shares().map(|s| s[i])))
    }
}

/// Reads by where they were found: the sidecar's counters over one run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Hits {
    /// Found in the memory tier.
    pub memory: f64,
    /// Found in the disk tier.
    pub disk: f64,
    /// Loaded from PostgreSQL.
    pub misses: f64,
}

impl Hits {
    async fn read(unit: &Unit) -> anyhow::Result<Hits> {
        let hits = "stickyfarm_sidecar_cache_hits_total";
        Ok(Hits {
            memory: unit.metric(hits, "tier=\"memory\"").await?,
            disk: unit.metric(hits, "tier=\"disk\"").await?,
            misses: unit
                .metric("stickyfarm_sidecar_cache_misses_total", "")
                .await?,
        })
    }

    fn since(self, before: Hits) -> Hits {
        Hits {
            memory: self.memory - before.memory,
            disk: self.disk - before.disk,
            misses: self.misses - before.misses,
        }
    }

    /// Shares of the reads (memory, disk, PostgreSQL), in percent; `None` without reads.
    pub fn shares(&self) -> Option<[f64; 3]> {
        let all = self.memory + self.disk + self.misses;
        (all > 0.0).then(|| [self.memory, self.disk, self.misses].map(|x| 100.0 * x / all))
    }
}

/// The sessions put into PostgreSQL so far, and their cookies.
struct Seeded {
    /// Every session's `Cookie` line, in the order they were made.
    cookies: Vec<String>,
    key: SessionIdKey,
    /// The instance both the cookies and the rows name: the cached unit's.
    instance: InstanceId,
    psql: PathBuf,
    env: Vec<(&'static str, String)>,
    /// The cart every session holds (with its own number added).
    cart: String,
}

impl Seeded {
    /// Adds sessions until there are `total`, in one transaction; returns the new ones'
    /// cookie lines.
    fn grow_to(&mut self, total: usize, work: &Path) -> anyhow::Result<&[String]> {
        let first = self.cookies.len();
        let mut ids = String::new();
        let mut new = Vec::new();
        for n in first..total {
            let id = SessionId::generate();
            let _ = writeln!(ids, "{}\t{n}", self.key.stored(&id).as_uuid());
            new.push(format!(
                "{}={id}; {}={}",
                cookie_names::SESSION,
                cookie_names::INSTANCE,
                self.instance
            ));
        }
        let ids_file = work.join(format!("seed-{total}.tsv"));
        std::fs::write(&ids_file, ids)?;
        let script = work.join(format!("seed-{total}.sql"));
        std::fs::write(&script, seed_script(&ids_file, &self.instance, &self.cart))?;
        let out = Command::new(&self.psql)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .args(["-X", "-q", "-1", "-v", "ON_ERROR_STOP=1", "-f"])
            .arg(&script)
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!(
                "psql could not add the sessions: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = std::fs::remove_file(&ids_file);
        self.cookies.extend(new);
        Ok(&self.cookies[first..])
    }
}

/// The SQL that adds the sessions listed in `ids` (stored id, number), each with a `cart`
/// table at version 1, as the sidecar's first write leaves them. The cart carries the
/// session's number as seven digits, [`NUMBER_FIELD`] bytes.
fn seed_script(ids: &Path, instance: &InstanceId, cart: &str) -> String {
    format!(
        "CREATE TEMP TABLE seed (id uuid NOT NULL, n int NOT NULL);\n\
         \\copy seed FROM '{ids}'\n\
         INSERT INTO stickyfarm_sessions (id, generation, created_by)\n\
         \x20 SELECT id, 1, '{instance}' FROM seed;\n\
         INSERT INTO stickyfarm_session_tables (session_id, name, version, doc)\n\
         \x20 SELECT id, 'cart', 1, jsonb_set('{cart}'::jsonb, '{{n}}', to_jsonb(lpad(n::text, 7, '0'))) FROM seed;\n",
        ids = ids.display(),
        // A literal: double its quotes.
        cart = cart.replace('\'', "''"),
    )
}

/// Reads every session of `cookies` once through `base` (loading it into the unit's cache),
/// and checks each answer carried its cart.
async fn warm(base: &str, cookies: &[String]) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let url = format!("{base}/state");
    let failures: Vec<String> = futures::stream::iter(cookies)
        .map(|c| {
            let (client, url) = (&client, &url);
            async move {
                let r = client
                    .get(url)
                    .header(reqwest::header::COOKIE, c)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = r.status();
                let body = r.text().await.map_err(|e| e.to_string())?;
                cart_answer(status.as_u16(), &body).map_err(|e| format!("{c}: {e}"))
            }
        })
        .buffer_unordered(WARM_CONCURRENCY)
        .filter_map(|r| async move { r.err() })
        .collect()
        .await;
    if let Some(first) = failures.first() {
        bail!(
            "{} of {} sessions were not served their cart (first: {first})",
            failures.len(),
            cookies.len()
        );
    }
    Ok(())
}

/// Whether the bench app's answer to `GET /state` is a session's 1 KiB cart (a session the
/// unit did not find would be a new, empty one).
fn cart_answer(status: u16, body: &str) -> Result<(), String> {
    let len = body
        .split_once(" bytes")
        .and_then(|(n, _)| n.trim().parse::<usize>().ok());
    match (status, len) {
        (200, Some(n)) if n >= 1000 => Ok(()),
        _ => Err(format!("answered {status} {:?}", body.trim())),
    }
}

/// Bytes the files under `dir` occupy on disk (allocated blocks, not their length: foyer's
/// files are sparse).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_usage(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Runs the scenario against PostgreSQL at `database_url`.
pub async fn run(b: &Bench, database_url: &str) -> anyhow::Result<Capacity> {
    let sizes = match &b.args.capacity_sessions {
        Some(s) if !s.is_empty() => s.clone(),
        _ if b.args.smoke => SMOKE_SIZES.to_vec(),
        _ => SIZES.to_vec(),
    };
    if sizes.windows(2).any(|w| w[0] >= w[1]) {
        bail!("--capacity-sessions must grow: {sizes:?}");
    }
    let logs = b.logs("capacity")?;
    // The smoke run's memory tier is small, so its thousand sessions reach the disk tier too.
    // A full run's holds 100 000 sessions (about 1.3 KiB each by the weigher), so that step
    // measures what a cached copy really costs; a million spill into the disk tier.
    let (memory_tier, disk_tier): (u64, u64) = if b.args.smoke {
        (1 << 20, 64 << 20)
    } else {
        (192 << 20, 8 << 30)
    };
    let disk_dir = logs.join("disk");
    let instance = InstanceId::random();
    let cpu = b.placement.proxy;
    let tiers = [
        "--cache-memory".to_owned(),
        memory_tier.to_string(),
        "--cache-disk-dir".into(),
        disk_dir.display().to_string(),
        "--cache-disk-size".into(),
        disk_tier.to_string(),
        // A farm of one unit backs nobody up: the whole memory tier is its own sessions'.
        "--warm-backup-percent".into(),
        "0".into(),
        "--pod-uid".into(),
        instance.to_string(),
    ];
    let tiers: Vec<&str> = tiers.iter().map(String::as_str).collect();
    let cached = b
        .unit("capacity-cached", database_url, &tiers, cpu, &logs)
        .await?;
    let uncached = b
        .unit(
            "capacity-pg",
            database_url,
            &["--cache-reads", "false", "--warm-backup-percent", "0"],
            cpu,
            &logs,
        )
        .await?;
    let rss_start = cached.sidecar.rss_bytes();
    let mut seeded = Seeded {
        cookies: Vec::new(),
        key: SessionIdKey::new(Token::read(&b.session_id_key)?.expose().as_bytes()),
        instance,
        psql: farmctl::postgres::server_program("psql")
            .context("psql not found with the PostgreSQL server (Debian's postgresql package)")?,
        env: libpq_env(database_url)?,
        // 1 KiB with the number each session's cart gets.
        cart: cart_of_size(1024 - NUMBER_FIELD),
    };

    let mut steps = Vec::new();
    for &sessions in &sizes {
        eprintln!("  capacity: {sessions} sessions");
        let new = seeded.grow_to(sessions, &logs)?.to_vec();
        let t = Instant::now();
        warm(&format!("http://{}", cached.public), &new).await?;
        let warm_secs = t.elapsed().as_secs_f64();
        // foyer writes evicted copies to disk in the background: let it settle before counting.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let cookies = logs.join(format!("cookies-{sessions}.txt"));
        std::fs::write(&cookies, seeded.cookies.join("\n"))?;
        let mut step = Step {
            sessions,
            rounds: Rounds::new(CONFIGS),
            hits: Vec::new(),
            rss_bytes: cached.sidecar.rss_bytes(),
            held: cached
                .metric("stickyfarm_sidecar_cached_sessions", "")
                .await?,
            weighed: cached
                .metric("stickyfarm_sidecar_cache_memory_bytes", "")
                .await?,
            disk_bytes: disk_usage(&disk_dir),
            warm_secs,
        };
        for round in 0..b.runs {
            eprintln!(
                "  capacity: {sessions} sessions, round {}/{}",
                round + 1,
                b.runs
            );
            let before = Hits::read(&cached).await?;
            let read = |unit: &Unit| {
                measure(Some(&unit.sidecar), || {
                    b.wrk
                        .read_at_random(&format!("http://{}/state", unit.public), &cookies)
                })
            };
            let mut samples = vec![checked(&[&cached], Work::Reads, || read(&cached)).await?];
            step.hits.push(Hits::read(&cached).await?.since(before));
            samples.push(checked(&[&uncached], Work::Reads, || read(&uncached)).await?);
            step.rounds.rounds.push(samples);
        }
        let _ = std::fs::remove_file(&cookies);
        steps.push(step);
    }
    for mut u in [cached, uncached] {
        u.sidecar.check_running()?;
        u.sidecar.stop();
        u.app.stop();
    }
    Ok(Capacity {
        steps,
        memory_tier,
        disk_tier,
        rss_start,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cart_answer_is_a_session_with_its_cart() {
        assert_eq!(cart_answer(200, "1093 bytes (snapshot)\n"), Ok(()));
        // A session the unit did not find: a new one, without a cart.
        assert!(cart_answer(200, "0 bytes (api)\n").is_err());
        assert!(cart_answer(503, "1093 bytes (snapshot)\n").is_err());
        assert!(cart_answer(200, "no session: run behind the sidecar").is_err());
    }

    #[test]
    fn hit_shares_add_up_and_need_reads() {
        let h = Hits {
            memory: 30.0,
            disk: 60.0,
            misses: 10.0,
        };
        assert_eq!(h.shares(), Some([30.0, 60.0, 10.0]));
        let before = Hits {
            memory: 10.0,
            disk: 10.0,
            misses: 10.0,
        };
        assert_eq!(
            h.since(before),
            Hits {
                memory: 20.0,
                disk: 50.0,
                misses: 0.0
            }
        );
        assert_eq!(Hits::default().shares(), None);
    }

    #[test]
    fn the_seed_names_the_units_instance_and_each_session_number() {
        let instance = InstanceId::random();
        let sql = seed_script(Path::new("/tmp/ids.tsv"), &instance, r#"{"items":[]}"#);
        assert!(sql.contains("\\copy seed FROM '/tmp/ids.tsv'"));
        assert!(sql.contains(&format!("SELECT id, 1, '{instance}' FROM seed")));
        assert!(sql.contains(
            r#"jsonb_set('{"items":[]}'::jsonb, '{n}', to_jsonb(lpad(n::text, 7, '0')))"#
        ));
        let quoted = seed_script(Path::new("/tmp/ids.tsv"), &instance, r#"{"a":"it's"}"#);
        assert!(quoted.contains(r#"'{"a":"it''s"}'::jsonb"#));
    }

    #[test]
    fn disk_usage_counts_allocated_blocks_not_length() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("written"), vec![1u8; 64 * 1024]).unwrap();
        let sparse = std::fs::File::create(dir.path().join("sparse")).unwrap();
        sparse.set_len(1 << 30).unwrap();
        let used = disk_usage(dir.path());
        assert!(used >= 64 * 1024, "{used}");
        assert!(
            used < 1 << 20,
            "a sparse file counted by its length: {used}"
        );
    }
}
