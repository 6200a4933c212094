//! `stickyfarm-sidecar`: see `--help`.

use anyhow::Context as _;
use clap::Parser as _;
use stickyfarm_sidecar::Sidecar;
use stickyfarm_sidecar::config::{Config, LogFormat};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init(),
    }
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
