//! `stickyfarm-e2e-provisioner`: the test node's storage (see the library), until SIGTERM.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use stickyfarm_e2e_provisioner::{Settings, run};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(about = "Provisions a hostPath PersistentVolume for every claim without a class")]
struct Cli {
    /// Kubeconfig of the cluster.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// The node whose folder holds the volumes.
    #[arg(long)]
    node_name: String,
    /// The folder that holds one folder per volume.
    #[arg(long)]
    dir: PathBuf,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let kubeconfig = Kubeconfig::read_from(&cli.kubeconfig)
        .with_context(|| format!("reading {}", cli.kubeconfig.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config)?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        stop.cancel();
    });
    run(
        client,
        Settings {
            node_name: cli.node_name,
            dir: cli.dir,
        },
        shutdown,
    )
    .await;
    Ok(())
}
