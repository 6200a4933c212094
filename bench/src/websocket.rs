//! Scenario 5, WebSocket echo: the same four echo backends directly, through the Stickyfarm
//! gateway (sticky by its routing cookie) and through HAProxy (cookie insert), each WebSocket
//! sending a message and waiting for its echo before the next. What a proxy adds here is the
//! cost of splicing an upgraded connection both ways, not of routing requests.

use crate::bench::{Bench, measure, wait_routed};
use crate::serve::ECHO_PATH;
use crate::stats::Rounds;
use crate::ws_load::WsLoad;

/// Backends behind every proxy.
const BACKENDS: usize = 4;

/// Bytes per message: a chat line or a cart update, not a file transfer.
pub const MESSAGE_SIZE: usize = 128;

/// Results of the scenario.
pub struct WebSocketEcho {
    /// Round trips (message and echo) as requests.
    pub rounds: Rounds,
    /// Open WebSockets.
    pub connections: u32,
}

/// Runs the scenario.
pub async fn run(b: &Bench) -> anyhow::Result<WebSocketEcho> {
    let logs = b.logs("websocket")?;
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
    let proxies = [gateway, haproxy];
    wait_routed(&format!("http://{gw}/hello"), "sf_unit=b1", Some("b1")).await?;
    wait_routed(&format!("http://{ha}/hello"), "SERVERID=b2", Some("b2")).await?;

    let load = WsLoad {
        program: b.me.clone(),
        cpus: b.placement.load,
        connections: b.wrk.connections,
        duration: b.duration,
        size: MESSAGE_SIZE,
    };
    // Each WebSocket with its own cookie, spread over the backends as browsers' would be.
    let spread = |cookie: &str| {
        (0..load.connections as usize)
            .map(|i| format!("{cookie}=b{}", i % BACKENDS))
            .collect::<Vec<_>>()
    };
    let configs: [(&str, String, Vec<String>, Option<usize>); 3] = [
        (
            "direct to a backend",
            format!("ws://{}{ECHO_PATH}", backends[0].1),
            vec!["none=1".into()],
            None,
        ),
        (
            "gateway, routing cookie",
            format!("ws://{gw}{ECHO_PATH}"),
            spread("sf_unit"),
            Some(0),
        ),
        (
            "HAProxy, cookie insert",
            format!("ws://{ha}{ECHO_PATH}"),
            spread("SERVERID"),
            Some(1),
        ),
    ];
    let mut files = Vec::new();
    for (i, (_, _, cookies, _)) in configs.iter().enumerate() {
        let f = logs.join(format!("cookies-{i}.txt"));
        std::fs::write(&f, cookies.join("\n") + "\n")?;
        files.push(f);
    }
    let mut rounds = Rounds::new(configs.iter().map(|c| c.0));
    for round in 0..b.runs {
        eprintln!("  WebSocket echo: round {}/{}", round + 1, b.runs);
        let mut samples = Vec::new();
        for ((_, url, _, proxy), file) in configs.iter().zip(&files) {
            let proxy = proxy.map(|p| &proxies[p]);
            samples.push(measure(proxy, || load.run(url, file))?);
        }
        rounds.rounds.push(samples);
    }
    drop(proxies);
    drop(served);
    Ok(WebSocketEcho {
        rounds,
        connections: load.connections,
    })
}
