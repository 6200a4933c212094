//! `stickyfarm-sidecar`: see `--help`.

use anyhow::Context as _;
use clap::Parser as _;
use stickyfarm_sidecar::Sidecar;
use stickyfarm_sidecar::config::Config;
use tokio::signal::unix::{SignalKind, signal};

/// The name traces are exported under (`stickyfarm-sidecar` unless OTEL_SERVICE_NAME says otherwise).
const COMPONENT: &str = "sidecar";

/// mimalloc instead of glibc's malloc, for the cache's sake: cached copies are allocated between
/// the short-lived buffers of the requests that load them, and glibc's arenas kept the holes
/// those buffers left, 3.4 KiB of resident memory per cached 1 KiB session where the copies
/// themselves hold 1.3 KiB. With mimalloc the process grows by what the copies hold (1.33 KiB
/// per session over 100 000, `bench/run --only capacity`), and serves reads with less CPU.
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
    let sidecar = tokio::select! {
        s = Sidecar::start(config) => s.context("starting the sidecar")?,
        _ = term.recv() => return Ok(()),
        _ = tokio::signal::ctrl_c() => return Ok(()),
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
    }
    sidecar.shutdown().await;
    Ok(())
}
