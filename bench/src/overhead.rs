//! Scenario 1, proxy overhead: the same four backends directly, through the Stickyfarm gateway
//! (sticky by unit address and by cookie), through HAProxy and through nginx, and through the
//! gateway and HAProxy terminating TLS with the same certificate; at fixed concurrency (wrk)
//! and at a fixed rate below saturation (oha). Over TLS the clients keep their connections, so
//! the figures are the cost of encrypting requests and answers, not of handshakes. Last, the
//! gateway with two workers against HAProxy with two threads, both free to use both CPUs.

use crate::bench::{Bench, measure, wait_routed, wait_routed_tls};
use crate::procs::Run;
use crate::stats::Rounds;

/// Backends behind every proxy.
const BACKENDS: usize = 4;

/// The configurations the gateway's goals compare (`goals.rs`): the gateway by unit address
/// and by routing cookie, against HAProxy and nginx, one worker each.
pub const GATEWAY_UNIT: &str = "gateway, unit address";
/// See [`GATEWAY_UNIT`].
pub const GATEWAY_COOKIE: &str = "gateway, routing cookie";
/// See [`GATEWAY_UNIT`].
pub const HAPROXY: &str = "HAProxy, cookie insert";
/// See [`GATEWAY_UNIT`].
pub const NGINX: &str = "nginx, cookie hash";

/// The two-worker configurations (gateway, HAProxy), compared with each other.
pub const TWO_WORKERS: (&str, &str) = (
    "gateway, 2 workers on both CPUs, routing cookie",
    "HAProxy, nbthread 2 on both CPUs, cookie insert",
);

/// Results of the scenario.
pub struct Overhead {
    /// Fixed concurrency.
    pub closed: Rounds,
    /// Fixed rate.
    pub open: Rounds,
    /// The fixed rate, requests per second.
    pub rate: u32,
}

/// One way to reach the backends.
struct Config {
    name: &'static str,
    url: String,
    /// `Cookie` lines, one per simulated client (the wrk script rotates through them).
    cookies: Vec<String>,
    /// The proxy process, whose CPU time is measured (none when going direct).
    proxy: Option<usize>,
}

/// Runs the scenario.
pub async fn run(b: &Bench) -> anyhow::Result<Overhead> {
    let logs = b.logs("overhead")?;
    let (backends, served) = b.backends(BACKENDS, &logs)?;
    let cpu = b.placement.proxy;
    let (gateway, gw) = b
        .gateway(
            &backends,
            &["--check-interval", "1s"],
            cpu,
            &logs,
            "gateway",
        )
        .await?;
    let (haproxy, ha) = b.haproxy(&backends, "1s", cpu, &logs)?;
    let (nginx, ng) = b.nginx(&backends, cpu, &logs)?;
    let tls = b.tls_files()?;
    let (cert, key) = (
        tls.cert.display().to_string(),
        tls.key.display().to_string(),
    );
    let tls_flags = [
        "--check-interval",
        "1s",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ];
    let (gateway_tls, gw_tls) = b
        .gateway(&backends, &tls_flags, cpu, &logs, "gateway-tls")
        .await?;
    let (haproxy_tls, ha_tls) =
        b.haproxy_as("haproxy-tls", &backends, "1s", Some(&tls.both), cpu, &logs)?;
    // Two workers each, on both CPUs (not pinned): what a proxy given the whole machine does,
    // sharing it with the load generator and the backends (which stay on their CPU).
    let both = Run {
        cpus: None,
        workers: 2,
    };
    let (gateway_two, gw_two) = b
        .gateway(
            &backends,
            &["--check-interval", "1s"],
            both,
            &logs,
            "gateway-2-workers",
        )
        .await?;
    let (haproxy_two, ha_two) =
        b.haproxy_as("haproxy-2-threads", &backends, "1s", None, both, &logs)?;
    let proxies = [
        gateway,
        haproxy,
        nginx,
        gateway_tls,
        haproxy_tls,
        gateway_two,
        haproxy_two,
    ];

    // 64 clients, each with its own cookie (the wrk script rotates through them).
    let clients = |cookie: fn(usize) -> String| (0..64).map(cookie).collect::<Vec<_>>();
    let configs = vec![
        Config {
            name: "direct to a backend",
            url: format!("http://{}/hello", backends[0].1),
            cookies: vec!["none=1".into()],
            proxy: None,
        },
        Config {
            name: GATEWAY_UNIT,
            url: format!("http://{gw}/_unit/b0/hello"),
            // The routing cookie the gateway sets, kept as a browser keeps it.
            cookies: vec!["sf_unit=b0".into()],
            proxy: Some(0),
        },
        Config {
            name: GATEWAY_COOKIE,
            url: format!("http://{gw}/hello"),
            cookies: clients(|i| format!("sf_unit=b{}", i % BACKENDS)),
            proxy: Some(0),
        },
        Config {
            name: HAPROXY,
            url: format!("http://{ha}/hello"),
            cookies: clients(|i| format!("SERVERID=b{}", i % BACKENDS)),
            proxy: Some(1),
        },
        Config {
            name: NGINX,
            url: format!("http://{ng}/hello"),
            cookies: clients(|i| format!("sf_session=client-{i:04}")),
            proxy: Some(2),
        },
        Config {
            name: "gateway over TLS, routing cookie",
            url: format!("https://{gw_tls}/hello"),
            cookies: clients(|i| format!("sf_unit=b{}", i % BACKENDS)),
            proxy: Some(3),
        },
        Config {
            name: "HAProxy over TLS, cookie insert",
            url: format!("https://{ha_tls}/hello"),
            cookies: clients(|i| format!("SERVERID=b{}", i % BACKENDS)),
            proxy: Some(4),
        },
        Config {
            name: TWO_WORKERS.0,
            url: format!("http://{gw_two}/hello"),
            cookies: clients(|i| format!("sf_unit=b{}", i % BACKENDS)),
            proxy: Some(5),
        },
        Config {
            name: TWO_WORKERS.1,
            url: format!("http://{ha_two}/hello"),
            cookies: clients(|i| format!("SERVERID=b{}", i % BACKENDS)),
            proxy: Some(6),
        },
    ];
    // Every proxy must have found its backends, and stick as told, before anything counts.
    wait_routed(&configs[1].url, "", Some("b0")).await?;
    wait_routed(&configs[2].url, "sf_unit=b1", Some("b1")).await?;
    wait_routed(&configs[3].url, "SERVERID=b2", Some("b2")).await?;
    wait_routed(&configs[4].url, "sf_session=client-0000", None).await?;
    wait_routed_tls(&configs[5].url, "sf_unit=b3", "b3").await?;
    wait_routed_tls(&configs[6].url, "SERVERID=b1", "b1").await?;
    wait_routed(&configs[7].url, "sf_unit=b2", Some("b2")).await?;
    wait_routed(&configs[8].url, "SERVERID=b3", Some("b3")).await?;

    let mut files = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        let f = logs.join(format!("cookies-{i}.txt"));
        std::fs::write(&f, c.cookies.join("\n") + "\n")?;
        files.push(f);
    }
    let names = configs.iter().map(|c| c.name);
    let mut closed = Rounds::new(names.clone());
    for round in 0..b.runs {
        eprintln!(
            "  overhead, fixed concurrency: round {}/{}",
            round + 1,
            b.runs
        );
        let mut samples = Vec::new();
        for (c, file) in configs.iter().zip(&files) {
            let proxy = c.proxy.map(|p| &proxies[p]);
            samples.push(measure(proxy, || b.wrk.run(&c.url, file, "GET", None))?);
        }
        closed.rounds.push(samples);
    }

    // A rate every configuration sustains: a third of the slowest one's throughput.
    let slowest = closed
        .summarize(None)
        .iter()
        .map(|s| s.rps.median)
        .fold(f64::INFINITY, f64::min);
    let rate = ((slowest / 3.0 / 100.0).floor() * 100.0).max(100.0) as u32;
    let mut open = Rounds::new(names);
    for round in 0..b.runs {
        eprintln!(
            "  overhead, {rate} requests/s: round {}/{}",
            round + 1,
            b.runs
        );
        let mut samples = Vec::new();
        for c in &configs {
            let proxy = c.proxy.map(|p| &proxies[p]);
            samples.push(measure(proxy, || {
                b.oha.run_at_rate(&c.url, &c.cookies[0], rate)
            })?);
        }
        open.rounds.push(samples);
    }
    drop(proxies);
    drop(served);
    Ok(Overhead { closed, open, rate })
}
