//! `stickyfarm-gateway`: see `--help`.

use anyhow::Context as _;
use clap::Parser as _;
use stickyfarm_gateway::Gateway;
use stickyfarm_gateway::config::Config;
use tokio::signal::unix::{SignalKind, signal};

/// The name traces are exported under (`stickyfarm-gateway` unless OTEL_SERVICE_NAME says otherwise).
const COMPONENT: &str = "gateway";

/// mimalloc instead of glibc's malloc: every proxied request allocates its head, routing key and
/// forwarding headers, and glibc's malloc and free were 8 % of the gateway's CPU; with mimalloc
/// they are 2 % and one worker forwards about 15 % more requests per CPU second
/// (`bench/results/2026-12-05-gateway.md`). The sidecar uses it too, for its memory.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // One worker: the single-threaded scheduler (see `stickyfarm_api::runtime`).
    stickyfarm_api::runtime::build()
        .context("starting the async runtime")?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let config = Config::parse();
    // Kept to the end: dropping it sends the last spans when traces are exported.
    let _traces = config
        .logs
        .init(COMPONENT)
        .context("installing the logger")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let gateway = Gateway::start(config)
        .await
        .context("starting the gateway")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
    }
    gateway.shutdown().await;
    Ok(())
}
