//! Shoppers: clients that open sessions and keep their cookies, as browsers do. The driver uses
//! them to prepare sessions for wrk; `stickyfarm-bench shoppers` (a separate process) is the
//! steady load of the failover scenario, recording every answer for [`analyze_failover`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::serve::UNIT_HEADER;

/// A client's cookies, updated from every answer's `Set-Cookie`.
#[derive(Debug, Clone, Default)]
pub struct Jar(BTreeMap<String, String>);

impl Jar {
    /// Takes the cookies an answer sets (a cookie with `Max-Age=0` is removed).
    pub fn update(&mut self, headers: &reqwest::header::HeaderMap) {
        for v in headers.get_all(reqwest::header::SET_COOKIE) {
            let Ok(v) = v.to_str() else { continue };
            let pair = v.split(';').next().unwrap_or_default();
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            if v.to_ascii_lowercase().contains("max-age=0") {
                self.0.remove(name.trim());
            } else {
                self.0
                    .insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
    }

    /// The `Cookie` header value.
    pub fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A JSON cart of exactly `bytes` bytes (at least 64): line items, as a shop keeps them, and a
/// note that makes up the rest. Exactly, so that "a 1 KiB cart" is one: the memory a cached
/// copy costs is measured against its size.
pub fn cart_of_size(bytes: usize) -> String {
    const TAIL: &str = r#"],"note":""}"#;
    let mut cart = String::from(r#"{"items":["#);
    for i in 0.. {
        let item = format!(
            r#"{}{{"sku":"sku-{i:05}","qty":{},"price_cents":{}}}"#,
            if i > 0 { "," } else { "" },
            i % 5 + 1,
            199 + i
        );
        if cart.len() + item.len() + TAIL.len() > bytes {
            break;
        }
        cart.push_str(&item);
    }
    let note = bytes.saturating_sub(cart.len() + TAIL.len());
    let _ = write!(cart, r#"],"note":"{}"}}"#, "x".repeat(note));
    cart
}

pub(crate) async fn send(
    client: &reqwest::Client,
    jar: &mut Jar,
    method: reqwest::Method,
    url: &str,
    body: Option<&str>,
) -> Result<(u16, String), reqwest::Error> {
    let mut req = client.request(method, url);
    let cookie = jar.header();
    if !cookie.is_empty() {
        req = req.header(reqwest::header::COOKIE, cookie);
    }
    if let Some(b) = body {
        req = req
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(b.to_owned());
    }
    let r = req.send().await?;
    jar.update(r.headers());
    let unit = r
        .headers()
        .get(UNIT_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let status = r.status().as_u16();
    r.bytes().await?;
    Ok((status, unit))
}

/// Opens a session at `base` (`GET /state`), writes `state` as its cart (`PUT /state`) and
/// returns its cookies and the unit that stored the cart.
pub async fn open_session(
    client: &reqwest::Client,
    base: &str,
    state: &str,
) -> anyhow::Result<(Jar, String)> {
    let mut jar = Jar::default();
    let url = format!("{base}/state");
    let (s, _) = send(client, &mut jar, reqwest::Method::GET, &url, None).await?;
    if s != 200 {
        bail!("opening a session at {url} answered {s}");
    }
    let (s, unit) = send(client, &mut jar, reqwest::Method::PUT, &url, Some(state)).await?;
    if s != 200 {
        bail!("writing the first cart at {url} answered {s}");
    }
    Ok((jar, unit))
}

/// Opens `n` sessions, `concurrency` at a time, and writes their `Cookie` lines to `file`
/// (the input of `sessions.lua`).
pub async fn open_sessions(
    base: &str,
    n: usize,
    state: &str,
    concurrency: usize,
    file: &Path,
) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let jars: Vec<anyhow::Result<(Jar, String)>> = futures::stream::iter(0..n)
        .map(|_| open_session(&client, base, state))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut lines = String::new();
    for j in jars {
        lines.push_str(&j?.0.header());
        lines.push('\n');
    }
    std::fs::write(file, lines).with_context(|| format!("writing {}", file.display()))
}

/// One answer a shopper got.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Answer {
    /// When the request was sent, ms since the Unix epoch.
    pub sent_ms: u64,
    /// How long it took, µs.
    pub latency_us: u64,
    /// Which shopper.
    pub session: u32,
    /// A write (`PUT`), or a read.
    pub write: bool,
    /// HTTP status; 0 when no answer came (connection refused, reset, timeout).
    pub status: u16,
    /// The unit that answered.
    pub unit: String,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Settings of the shoppers process.
#[derive(Debug, Clone, clap::Args)]
pub struct ShopperArgs {
    /// The farm's address (gateway or peer proxy), e.g. `http://127.0.0.1:8000`.
    #[arg(long)]
    pub target: String,
    /// Shoppers (one session each).
    #[arg(long, default_value_t = 30)]
    pub sessions: u32,
    /// Time between one shopper's requests.
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// How long the steady load lasts once every session is open.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Every this-many-th request is a write.
    #[arg(long, default_value_t = 5)]
    pub write_every: u32,
    /// The answers, one JSON object per line.
    #[arg(long)]
    pub out: std::path::PathBuf,
}

/// Runs the shoppers: opens every session, prints `session N on UNIT` for each, `steady` once
/// the load is on and `answered` once each session has been answered under it, records every
/// answer and writes them to `--out`.
pub async fn run_shoppers(args: ShopperArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let cart = cart_of_size(1024);
    let mut jars = Vec::new();
    for i in 0..args.sessions {
        let (jar, unit) = open_session(&client, &args.target, &cart).await?;
        println!("{}", placement_line(i, &unit));
        jars.push(jar);
    }
    println!("steady");
    let deadline = Instant::now() + args.duration;
    let url = format!("{}/state", args.target);
    // `answered` once every session has had an answer under load: on a starved machine the
    // first requests can start late, and a kill before them would find no session to fail over.
    let unanswered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(jars.len()));
    let schedule = Schedule {
        interval: args.interval,
        write_every: args.write_every.max(1),
        shoppers: jars.len() as u32,
    };
    let start = tokio::time::Instant::now();
    let tasks = jars.into_iter().enumerate().map(|(i, mut jar)| {
        let (client, url, cart) = (client.clone(), url.clone(), cart.clone());
        let unanswered = unanswered.clone();
        let shopper = i as u32;
        tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut tick =
                tokio::time::interval_at(start + schedule.offset(shopper), schedule.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u32;
            while Instant::now() < deadline {
                tick.tick().await;
                n += 1;
                let write = schedule.is_write(shopper, n);
                let (method, body) = if write {
                    (reqwest::Method::PUT, Some(cart.as_str()))
                } else {
                    (reqwest::Method::GET, None)
                };
                let sent_ms = unix_ms();
                let start = Instant::now();
                let (status, unit) = send(&client, &mut jar, method, &url, body)
                    .await
                    .unwrap_or((0, String::new()));
                if answers
                    .iter()
                    .all(|a: &Answer| !(200..300).contains(&a.status))
                    && (200..300).contains(&status)
                    && unanswered.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1
                {
                    println!("{ANSWERED}");
                }
                answers.push(Answer {
                    sent_ms,
                    latency_us: start.elapsed().as_micros() as u64,
                    session: i as u32,
                    write,
                    status,
                    unit,
                });
            }
            answers
        })
    });
    let mut out = String::new();
    for t in futures::future::join_all(tasks).await {
        for a in t? {
            out.push_str(&serde_json::to_string(&a)?);
            out.push('\n');
        }
    }
    std::fs::write(&args.out, out).with_context(|| format!("writing {}", args.out.display()))
}

/// When each shopper sends. Independent shoppers are not in step: their requests are spread
/// evenly over one interval, and so are their writes. In step (as they once were), all of them
/// sent within a millisecond or two and every fifth tick all of them wrote at once, so a
/// failover measured the queue of that burst (30 writes at once, each a notifying commit) more
/// than the failover itself.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    interval: Duration,
    write_every: u32,
    shoppers: u32,
}

impl Schedule {
    /// How long after the start shopper `shopper` (from 0) sends its first request.
    fn offset(&self, shopper: u32) -> Duration {
        self.interval * shopper / self.shoppers.max(1)
    }

    /// Whether request `request` (from 1) of shopper `shopper` is a write: every
    /// `write_every`-th, shifted by the shopper's number so that each tick has its share.
    fn is_write(&self, shopper: u32, request: u32) -> bool {
        (request + shopper).is_multiple_of(self.write_every)
    }
}

/// The line the shoppers print once every session has been answered under load.
pub const ANSWERED: &str = "answered";

/// The line the shoppers print for where session `i` was placed.
fn placement_line(i: u32, unit: &str) -> String {
    format!("session {i} on {unit}")
}

/// The unit holding the most sessions, by the shoppers' placement lines (ties go to the first
/// name); `None` when no line names a unit. The failover scenario kills this unit, so the
/// run always has sessions to fail over however the proxy placed them.
pub fn busiest_unit(shoppers_log: &str) -> Option<String> {
    let mut sessions: BTreeMap<&str, usize> = BTreeMap::new();
    for line in shoppers_log.lines() {
        let Some(rest) = line.strip_prefix("session ") else {
            continue;
        };
        if let Some((_, unit)) = rest.split_once(" on ")
            && !unit.is_empty()
        {
            *sessions.entry(unit).or_default() += 1;
        }
    }
    let most = *sessions.values().max()?;
    sessions
        .into_iter()
        .find(|&(_, n)| n == most)
        .map(|(u, _)| u.to_owned())
}

/// What a failover cost, from the shoppers' answers.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Failover {
    /// Requests in all.
    pub requests: u64,
    /// Reads that failed (no answer or not 2xx).
    pub failed_reads: u64,
    /// Writes that failed.
    pub failed_writes: u64,
    /// Sessions the killed unit was serving.
    pub affected: u64,
    /// From the kill until the last affected session was answered by another unit, ms; `None`
    /// when some never were.
    pub recovery_ms: Option<u64>,
    /// The slowest of the affected sessions' first answers from another unit, µs, from when
    /// the shopper sent it: what a failover cost the shopper waiting on it, without the time
    /// until the shopper's next request that the recovery time includes.
    pub slowest_failed_over_us: u64,
    /// p99 latency of requests sent in the 2 s before the kill, µs: a window as long as the
    /// one after, so both p99s are the same rank among about as many requests.
    pub p99_before_us: u64,
    /// p99 latency of requests sent in the 2 s after the kill, µs.
    pub p99_after_us: u64,
    /// The slowest request sent in the 2 s after the kill, µs.
    pub max_after_us: u64,
    /// Failed-over sessions whose first request on a backup was served from a warm copy
    /// (filled in by the scenario from the surviving units' counters).
    pub warm_hits: u64,
    /// Reads on the surviving units that loaded from PostgreSQL, from the kill to the end.
    pub backup_loads: u64,
}

fn p99(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    crate::stats::nearest_rank(&v, 0.99)
}

/// Analyses the answers of a run in which `killed` was killed at `kill_ms`.
pub fn analyze_failover(answers: &[Answer], killed: &str, kill_ms: u64) -> Failover {
    let ok = |a: &Answer| (200..300).contains(&a.status);
    // Where each session was at the kill: the unit of its last answer *completed* before it.
    // A request still in flight at the kill is retried on a backup and answered from there,
    // although it was sent before: by sending time, its session would look as if it had
    // never been on the killed unit.
    let done_ms = |a: &Answer| a.sent_ms + a.latency_us / 1000;
    let mut last_before: BTreeMap<u32, &Answer> = BTreeMap::new();
    for a in answers.iter().filter(|a| done_ms(a) < kill_ms && ok(a)) {
        let e = last_before.entry(a.session).or_insert(a);
        if done_ms(a) >= done_ms(e) {
            *e = a;
        }
    }
    let affected: Vec<u32> = last_before
        .values()
        .filter(|a| a.unit == killed)
        .map(|a| a.session)
        .collect();
    let mut recovery = Some(0u64);
    let mut slowest_failed_over_us = 0;
    for s in &affected {
        let served_again = answers
            .iter()
            .filter(|a| a.session == *s && ok(a) && a.unit != killed && done_ms(a) >= kill_ms)
            .min_by_key(|a| done_ms(a));
        if let Some(a) = served_again {
            slowest_failed_over_us = slowest_failed_over_us.max(a.latency_us);
        }
        recovery = match (recovery, served_again) {
            (Some(r), Some(a)) => Some(r.max(done_ms(a) - kill_ms)),
            _ => None,
        };
    }
    let window = |from: u64, to: u64| {
        answers
            .iter()
            .filter(move |a| a.sent_ms >= from && a.sent_ms < to)
            .map(|a| a.latency_us)
    };
    Failover {
        requests: answers.len() as u64,
        failed_reads: answers.iter().filter(|a| !a.write && !ok(a)).count() as u64,
        failed_writes: answers.iter().filter(|a| a.write && !ok(a)).count() as u64,
        affected: affected.len() as u64,
        recovery_ms: if affected.is_empty() { None } else { recovery },
        slowest_failed_over_us,
        p99_before_us: p99(window(kill_ms.saturating_sub(2000), kill_ms).collect()),
        p99_after_us: p99(window(kill_ms, kill_ms + 2000).collect()),
        max_after_us: window(kill_ms, kill_ms + 2000).max().unwrap_or(0),
        warm_hits: 0,
        backup_loads: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(
        sent_ms: u64,
        session: u32,
        write: bool,
        status: u16,
        unit: &str,
        latency_us: u64,
    ) -> Answer {
        Answer {
            sent_ms,
            latency_us,
            session,
            write,
            status,
            unit: unit.to_owned(),
        }
    }

    #[test]
    fn the_busiest_unit_is_read_from_the_placement_lines() {
        let log = [
            placement_line(0, "u1"),
            placement_line(1, "u2"),
            placement_line(2, "u2"),
            placement_line(3, "u1"),
            placement_line(4, "u2"),
            "steady".into(),
        ]
        .join("\n");
        assert_eq!(busiest_unit(&log).as_deref(), Some("u2"));
        // A tie goes to the first name, so the choice is reproducible.
        assert_eq!(
            busiest_unit("session 0 on u2\nsession 1 on u1\n").as_deref(),
            Some("u1")
        );
        // A session answered without a unit header names no unit.
        assert_eq!(busiest_unit("session 0 on \nsteady\n"), None);
        assert_eq!(busiest_unit(""), None);
    }

    #[test]
    fn failover_counts_failures_affected_sessions_and_recovery() {
        let answers = vec![
            a(900, 0, false, 200, "u0", 500),
            a(950, 1, false, 200, "u1", 400),
            // The kill at 1000: session 0 fails once, then a backup serves it at 1250 + 3 ms.
            a(1010, 0, false, 0, "", 1_000),
            a(1020, 0, true, 502, "", 2_000),
            a(1250, 0, false, 200, "u2", 3_000),
            a(1300, 1, false, 200, "u1", 300),
        ];
        let f = analyze_failover(&answers, "u0", 1000);
        assert_eq!(f.requests, 6);
        assert_eq!((f.failed_reads, f.failed_writes), (1, 1));
        assert_eq!(f.affected, 1);
        assert_eq!(f.recovery_ms, Some(253));
        assert_eq!(f.slowest_failed_over_us, 3_000);
        assert_eq!(f.p99_before_us, 500);
        assert_eq!(f.max_after_us, 3_000);
    }

    #[test]
    fn a_request_in_flight_at_the_kill_does_not_hide_where_its_session_was() {
        let answers = vec![
            a(900, 0, false, 200, "u0", 10_000),
            // Sent before the kill at 1000, answered after it by the backup (a retry).
            a(995, 0, false, 200, "u2", 15_000),
        ];
        let f = analyze_failover(&answers, "u0", 1000);
        assert_eq!(f.affected, 1);
        assert_eq!(f.recovery_ms, Some(10));
        // The shopper waited from 995 to 1010.
        assert_eq!(f.slowest_failed_over_us, 15_000);
    }

    #[test]
    fn the_slowest_failed_over_request_is_each_sessions_first_answer_elsewhere() {
        let answers = vec![
            a(900, 0, false, 200, "u0", 500),
            a(910, 1, false, 200, "u0", 500),
            a(920, 2, false, 200, "u1", 500),
            // Kill at 1000. Session 0 is answered after 4 ms, session 1 after 9 ms; their
            // later answers and session 2 (never on u0) are slower but not failovers.
            a(1005, 0, false, 200, "u2", 4_000),
            a(1015, 1, false, 200, "u1", 9_000),
            a(1025, 0, true, 200, "u2", 30_000),
            a(1030, 2, true, 200, "u1", 40_000),
        ];
        let f = analyze_failover(&answers, "u0", 1000);
        assert_eq!(f.affected, 2);
        assert_eq!(f.recovery_ms, Some(24));
        assert_eq!(f.slowest_failed_over_us, 9_000);
        assert_eq!(f.max_after_us, 40_000);
    }

    #[test]
    fn shoppers_and_their_writes_are_spread_over_the_interval() {
        let s = Schedule {
            interval: Duration::from_millis(20),
            write_every: 5,
            shoppers: 30,
        };
        let offsets: Vec<Duration> = (0..30).map(|i| s.offset(i)).collect();
        assert_eq!(offsets[0], Duration::ZERO);
        assert_eq!(offsets[15], Duration::from_millis(10));
        assert!(offsets.windows(2).all(|w| w[0] < w[1]));
        assert!(offsets[29] < s.interval);
        // Each shopper writes every fifth request, and every tick a fifth of them write.
        for shopper in 0..30 {
            let writes: Vec<u32> = (1..=10).filter(|&n| s.is_write(shopper, n)).collect();
            assert_eq!(writes.len(), 2, "shopper {shopper}: {writes:?}");
            assert_eq!(writes[1] - writes[0], 5);
        }
        for request in 1..=10 {
            assert_eq!((0..30).filter(|&i| s.is_write(i, request)).count(), 6);
        }
        // One shopper, or one write per request, still works.
        let one = Schedule {
            interval: Duration::from_millis(20),
            write_every: 1,
            shoppers: 1,
        };
        assert_eq!(one.offset(0), Duration::ZERO);
        assert!(one.is_write(0, 1) && one.is_write(0, 2));
    }

    #[test]
    fn a_session_never_served_again_has_no_recovery_time() {
        let answers = vec![
            a(900, 0, false, 200, "u0", 500),
            a(1100, 0, false, 0, "", 5_000_000),
        ];
        assert_eq!(analyze_failover(&answers, "u0", 1000).recovery_ms, None);
        // Nobody on the killed unit: nothing to recover.
        assert_eq!(analyze_failover(&answers, "u9", 1000).affected, 0);
    }

    #[test]
    fn jar_keeps_set_and_drops_expired_cookies() {
        let mut h = reqwest::header::HeaderMap::new();
        h.append(
            "set-cookie",
            "sf_session=abc; Path=/; HttpOnly".parse().unwrap(),
        );
        h.append("set-cookie", "sf_unit=u0; Path=/".parse().unwrap());
        let mut jar = Jar::default();
        jar.update(&h);
        assert_eq!(jar.header(), "sf_session=abc; sf_unit=u0");
        let mut h = reqwest::header::HeaderMap::new();
        h.append("set-cookie", "sf_unit=; Max-Age=0".parse().unwrap());
        jar.update(&h);
        assert_eq!(jar.header(), "sf_session=abc");
    }

    #[test]
    fn carts_have_the_asked_size() {
        for size in [64, 1000, 1024, 64 * 1024] {
            let c = cart_of_size(size);
            assert_eq!(c.len(), size);
            serde_json::from_str::<serde_json::Value>(&c).unwrap();
        }
    }
}
