//! `stickyfarm-gateway`: see `--help`.

use anyhow::Context as _;
use clap::Parser as _;
use stickyfarm_gateway::Gateway;
use stickyfarm_gateway::config::{Config, LogFormat};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match config.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
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
