//! `kubectl stickyfarm status|drain|disable|enable FARM [UNIT]`: kubectl finds this binary on
//! PATH as a plugin. The work is in `farmctl::kubectl`.

use clap::Parser as _;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = farmctl::kubectl::Cli::parse();
    let client = kube::Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("no Kubernetes client from the kubeconfig: {e}"))?;
    print!("{}", farmctl::kubectl::run(cli, client).await?);
    Ok(())
}
