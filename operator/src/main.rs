//! `stickyfarm-operator`: see the library for how a farm is reconciled.

use anyhow::Context as _;
use clap::Parser;
use stickyfarm_operator::config::Config;
use tokio_util::sync::CancellationToken;

/// The name traces are exported under (`stickyfarm-operator` unless OTEL_SERVICE_NAME says otherwise).
const COMPONENT: &str = "operator";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    // Kept to the end: dropping it sends the last spans when traces are exported.
    let _traces = config
        .logs
        .init(COMPONENT)
        .context("installing the logger")?;
    let client = kube::Client::try_default()
        .await
        .context("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("stopping");
            stop.cancel();
        }
    });
    stickyfarm_operator::controller::run(config, client, stop).await
}
