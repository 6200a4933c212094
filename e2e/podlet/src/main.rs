//! `stickyfarm-podlet`: run pods of a test cluster as local processes (see the library), or
//! `enter` a pod's namespaces (its own last step before a container's program).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use stickyfarm_podlet::images::ImageTable;
use stickyfarm_podlet::{Settings, api_forward, enter, hosts, net, node, pod, supervisor};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    about = "A node agent for tests: runs the pods bound to its Node as local processes in network namespaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Register the Node and run its pods until SIGTERM or SIGINT.
    Run(RunArgs),
    /// Internal: mount a container's volumes, become its user and exec its program.
    Enter(enter::EnterArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Kubeconfig of the cluster (the node's credentials).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Name of the Node.
    #[arg(long, default_value = "podlet")]
    node_name: String,
    /// Folder for pods, volumes and logs.
    #[arg(long, default_value = "/tmp/stickyfarm-podlet")]
    state_dir: PathBuf,
    /// Folder with the binaries the image table names (a cargo target folder).
    #[arg(long)]
    bin_dir: PathBuf,
    /// The image table.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/images/table.yaml"))]
    images: PathBuf,
    /// The bridge pods are attached to (created if missing, removed on exit).
    #[arg(long, default_value = "sfbr0")]
    bridge: String,
    /// The bridge's address; pods get the rest of its /24.
    #[arg(long, default_value = "10.244.0.1")]
    bridge_ip: Ipv4Addr,
    /// Port on the bridge's address where pods reach the API server.
    #[arg(long, default_value_t = 6443)]
    api_port: u16,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        // Before any runtime or thread exists: setuid applies to the calling thread only.
        Command::Enter(args) => enter::enter(args).map(|_| ()),
        Command::Run(args) => tokio::runtime::Runtime::new()?.block_on(run(args)),
    }
}

fn which(program: &str) -> anyhow::Result<PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| PathBuf::from(d).join(program))
        .find(|p| p.exists())
        .with_context(|| format!("{program} not found: install iproute2"))
}

/// Hard-links (or copies) the binaries into the state folder: containers run as non-root users,
/// who may not traverse a build folder under /root.
fn stage_binaries(
    table: &ImageTable,
    from: &std::path::Path,
    to: &std::path::Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for b in table.binaries() {
        let (src, dst) = (from.join(b), to.join(b));
        anyhow::ensure!(
            src.exists(),
            "{} is missing: build it first (cargo build --bins)",
            src.display()
        );
        let _ = std::fs::remove_file(&dst);
        if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
        }
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "the podlet makes network namespaces and mounts: run it as root"
    );
    let kubeconfig = Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let upstream = format!(
        "{}:{}",
        config
            .cluster_url
            .host()
            .context("the kubeconfig's server has no host")?,
        config.cluster_url.port_u16().unwrap_or(443)
    );
    let client = Client::try_from(config)?;
    let images = ImageTable::load(&args.images)?;
    std::fs::create_dir_all(&args.state_dir)?;
    // Pods' users need to reach their volumes and logs under it.
    std::fs::set_permissions(
        &args.state_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    stage_binaries(&images, &args.bin_dir, &args.state_dir.join("bin"))?;
    let settings = Settings {
        node_name: args.node_name,
        state_dir: args.state_dir,
        bridge: args.bridge,
        bridge_ip: args.bridge_ip,
        api_port: args.api_port,
        self_exe: std::env::current_exe()?,
        ip_command: which("ip")?,
    };
    let shutdown = CancellationToken::new();
    net::ensure_bridge(&settings).await?;
    api_forward::run(
        SocketAddr::from((settings.bridge_ip, settings.api_port)),
        upstream,
        shutdown.clone(),
    )
    .await?;
    let registered = node::register(&client, &settings).await?;
    tracing::info!(node = %settings.node_name, bridge = %settings.bridge_ip, "node registered");
    let hosts = hosts::Hosts::new(settings.bridge_ip);
    let ctx = Arc::new(pod::Ctx {
        client: client.clone(),
        settings: settings.clone(),
        images,
        addresses: net::Addresses::new(settings.bridge_ip),
        hosts: hosts.clone(),
    });
    let heartbeat = tokio::spawn(node::heartbeat(
        client.clone(),
        settings.clone(),
        registered,
        shutdown.clone(),
    ));
    let names = tokio::spawn(hosts.run(client.clone(), shutdown.clone()));
    let volumes = tokio::spawn(stickyfarm_e2e_provisioner::run(
        client.clone(),
        stickyfarm_e2e_provisioner::Settings {
            node_name: settings.node_name.clone(),
            dir: settings.state_dir.join("volumes"),
        },
        shutdown.clone(),
    ));
    let pods = tokio::spawn(supervisor::run(ctx, shutdown.clone()));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping: every pod, then the node");
    shutdown.cancel();
    let _ = pods.await;
    let _ = tokio::join!(heartbeat, names, volumes);
    node::deregister(&client, &settings).await;
    net::remove_bridge(&settings).await;
    tracing::info!("stopped");
    Ok(())
}
