//! The WebSocket load generator (`stickyfarm-bench ws-load`), run as its own process pinned to
//! the load CPU like wrk: a number of WebSockets, each sending a message and waiting for its
//! echo before the next (closed loop, as wrk does with requests), for a bounded time and count.
//! Every echo is checked against what was sent, so a lost, altered or reordered message counts
//! as a failure, never as a fast answer.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::load::{LoadResult, pinned};
use crate::procs::Cpus;
use crate::stats::nearest_rank;

/// The line the load generator prints its result on.
const RESULT_PREFIX: &str = "BENCH-RESULT ";

/// How long one echo may take before the connection counts as failed.
const ECHO_TIMEOUT: Duration = Duration::from_secs(5);

/// `stickyfarm-bench ws-load`.
#[derive(Debug, clap::Args)]
pub struct WsLoadArgs {
    /// The WebSocket, `ws://host:port/path`.
    #[arg(long)]
    pub url: String,
    /// A file of `Cookie` header values, one per line; connection `i` sends line `i` (mod count).
    #[arg(long)]
    pub cookies: PathBuf,
    /// Open WebSockets.
    #[arg(long, default_value_t = 32)]
    pub connections: u32,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Bytes per message.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// At most this many messages per connection (a bound besides the time).
    #[arg(long, default_value_t = 5_000_000)]
    pub max_messages: u64,
}

/// What one WebSocket measured.
#[derive(Default)]
struct Connection {
    latencies_us: Vec<u64>,
    errors: u64,
}

/// Runs the load and prints the result line.
pub async fn run(args: WsLoadArgs) -> anyhow::Result<()> {
    let cookies: Vec<String> = std::fs::read_to_string(&args.cookies)
        .with_context(|| format!("reading {}", args.cookies.display()))?
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if cookies.is_empty() {
        bail!("{} has no cookie line", args.cookies.display());
    }
    let start = Instant::now();
    let deadline = start + args.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.connections as usize {
        let (url, cookie) = (args.url.clone(), cookies[i % cookies.len()].clone());
        let (size, max) = (args.size.max(8), args.max_messages);
        tasks.spawn(async move { connection(&url, &cookie, size, deadline, max).await });
    }
    let mut all = Vec::new();
    let mut errors = 0;
    while let Some(c) = tasks.join_next().await {
        let c = c.context("a load connection panicked")?;
        all.extend(c.latencies_us);
        errors += c.errors;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let result = LoadResult {
        requests: all.len() as u64,
        rps: all.len() as f64 / elapsed,
        p50_us: nearest_rank(&all, 0.5) as f64,
        p99_us: nearest_rank(&all, 0.99) as f64,
        p999_us: nearest_rank(&all, 0.999) as f64,
        errors,
    };
    println!("{RESULT_PREFIX}{}", serde_json::to_string(&result)?);
    Ok(())
}

/// One WebSocket: connect with `cookie`, then send, await the echo, check it, until `deadline`
/// or `max` messages; close.
async fn connection(
    url: &str,
    cookie: &str,
    size: usize,
    deadline: Instant,
    max: u64,
) -> Connection {
    let mut c = Connection::default();
    let Ok(mut req) = url.into_client_request() else {
        c.errors += 1;
        return c;
    };
    if let Ok(v) = HeaderValue::from_str(cookie) {
        req.headers_mut().insert("cookie", v);
    }
    let Ok(Ok((mut ws, _))) =
        tokio::time::timeout(ECHO_TIMEOUT, tokio_tungstenite::connect_async(req)).await
    else {
        c.errors += 1;
        return c;
    };
    let mut payload = vec![b'x'; size];
    let mut seq: u64 = 0;
    while seq < max && Instant::now() < deadline {
        // The sequence number makes every message distinct: an echo of an earlier one fails.
        payload[..8].copy_from_slice(&seq.to_be_bytes());
        let sent = Instant::now();
        if ws.send(Message::binary(payload.clone())).await.is_err() {
            c.errors += 1;
            return c;
        }
        match tokio::time::timeout(ECHO_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) if b[..] == payload[..] => {
                c.latencies_us.push(sent.elapsed().as_micros() as u64);
            }
            _ => {
                c.errors += 1;
                return c;
            }
        }
        seq += 1;
    }
    let _ = ws.close(None).await;
    c
}

/// How to run the WebSocket load generator from the benchmark.
#[derive(Debug, Clone)]
pub struct WsLoad {
    /// The `stickyfarm-bench` binary.
    pub program: PathBuf,
    /// Where it runs.
    pub cpus: Cpus,
    /// Open WebSockets.
    pub connections: u32,
    /// Length of a run.
    pub duration: Duration,
    /// Bytes per message.
    pub size: usize,
}

impl WsLoad {
    /// Runs the load against `url`, connection `i` with line `i` of `cookies` as its `Cookie`.
    pub fn run(&self, url: &str, cookies: &std::path::Path) -> anyhow::Result<LoadResult> {
        let mut cmd = pinned(&self.program, self.cpus);
        cmd.arg("ws-load")
            .args(["--url", url])
            .arg("--cookies")
            .arg(cookies)
            .args(["--connections", &self.connections.to_string()])
            .args([
                "--duration",
                &format!("{}s", self.duration.as_secs().max(1)),
            ])
            .args(["--size", &self.size.to_string()]);
        let out = cmd
            .output()
            .with_context(|| format!("running {}", self.program.display()))?;
        parse(&String::from_utf8_lossy(&out.stdout)).with_context(|| {
            format!(
                "the WebSocket load against {url} gave no result ({}); stderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}

fn parse(stdout: &str) -> anyhow::Result<LoadResult> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(RESULT_PREFIX))
        .context("no result line")?;
    serde_json::from_str(line).context("parsing the result line")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_result_line_among_others() {
        let r = parse("warming up\nBENCH-RESULT {\"requests\":10,\"rps\":5.0,\"p50_us\":1.0,\"p99_us\":2.0,\"p999_us\":3.0,\"errors\":1}\n").unwrap();
        assert_eq!((r.requests, r.errors, r.p99_us), (10, 1, 2.0));
        assert!(parse("nothing\n").is_err());
    }
}
