//! `stickyfarm-sidecar`: see `--help`.

use anyhow::Context as _;
use clap::Parser as _;
use stickyfarm_sidecar::Sidecar;
use stickyfarm_sidecar::config::Config;
use tokio::signal::unix::{SignalKind, signal};

/// The name traces are exported under (`stickyfarm-sidecar` unless OTEL_SERVICE_NAME says otherwise).
const COMPONENT: &str = "sidecar";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
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
