//! `farmctl`: run a Stickyfarm farm on this machine from a ServerFarm manifest, and look at it.

mod farm;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use stickyfarm_api::logs::{LogFormat, LogSettings};

/// Runs a whole Stickyfarm farm on one machine from the same ServerFarm YAML the operator takes.
#[derive(Parser)]
#[command(name = "farmctl", version, about)]
struct Cli {
    /// Folder of the running farm's state (control socket, logs, caches).
    #[arg(
        long,
        global = true,
        env = "FARMCTL_STATE_DIR",
        default_value = ".stickyfarm"
    )]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

// Parsed once per run: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Run the farm in FILE until Ctrl-C: PostgreSQL, one sidecar + app per unit, the gateway.
    Up {
        /// The ServerFarm manifest.
        file: PathBuf,
        /// Use this PostgreSQL instead of starting a private throwaway cluster.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// Gateway port (default: spec.gateway.port).
        #[arg(long)]
        port: Option<u16>,
        /// Address the gateway listens on.
        #[arg(long, default_value = "127.0.0.1")]
        address: IpAddr,
        /// The URL clients use to reach the farm (e.g. `https://shop.example:8443` behind a
        /// TLS terminator): unit links are built from it, never from a client's Host header.
        /// Default: the gateway's own address over http (the manifest's `publicHost` names
        /// the production host, which farmctl does not serve).
        #[arg(long, value_name = "URL")]
        public_url: Option<reqwest::Url>,
        /// Serve HTTPS (HTTP/2 and HTTP/1.1): farmctl keeps a local certificate authority in
        /// the state folder (`tls/ca.crt`, printed at start with how to trust it) and issues the
        /// gateway a certificate for localhost, 127.0.0.1 and the --public-url host.
        #[arg(long)]
        tls: bool,
        /// Folder of the Stickyfarm binaries (default: next to farmctl).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// No status line every 5 s.
        #[arg(long)]
        quiet: bool,
        /// Start each unit's app with this command (run by `/bin/sh -c` in the current folder)
        /// instead of the local binary the manifest's image names: an app in any language, as
        /// you start it in development (`'node server.js'`, `'python manage.py runserver
        /// 127.0.0.1:$PORT'`). It gets `PORT` (listen on 127.0.0.1 there),
        /// `STICKYFARM_API_URL` (the unit's session API), `POD_NAME`, `POD_UID` and the
        /// manifest's `app.env`; the manifest stays the document the operator takes.
        #[arg(long, value_name = "COMMAND")]
        app_command: Option<String>,
        /// The logs of the farm's gateway and sidecars (in the state folder's `logs/`) and of
        /// farmctl itself.
        #[command(flatten)]
        logs: LogSettings,
    },
    /// Print the gateway's status table of the running farm.
    Status {
        /// As JSON.
        #[arg(long, conflicts_with = "open")]
        json: bool,
        /// Print the URL of the gateway's status page (open it in a browser) instead.
        #[arg(long)]
        open: bool,
    },
    /// Kill a unit's processes at once (like a crashed pod); it stays down until restarted.
    Kill {
        /// Unit name, e.g. webstore-1.
        unit: String,
    },
    /// Start a unit again as a new instance (like a replaced pod).
    Restart {
        /// Unit name.
        unit: String,
    },
    /// Stop giving a unit new sessions; it keeps serving its own (the gateway's drain).
    Drain {
        /// Unit name.
        unit: String,
    },
    /// Take a unit out of the gateway's rotation: its sessions fail over to a backup.
    Disable {
        /// Unit name.
        unit: String,
    },
    /// Put a drained or disabled unit back into rotation.
    Enable {
        /// Unit name.
        unit: String,
    },
    /// Print the ServerFarm CustomResourceDefinition generated from the Rust types.
    Crd {
        /// Print the Helm chart's template instead (gated by `crds.enabled`, kept on uninstall).
        #[arg(long)]
        helm: bool,
        /// Write both renderings into the repository at DIR instead of printing.
        #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = ".")]
        write: Option<PathBuf>,
    },
    /// Check a ServerFarm manifest without running it (types, defaults and cross-field rules).
    Validate {
        /// The ServerFarm manifest.
        file: PathBuf,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("farmctl: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // A command that looks at a farm says only what went wrong unless RUST_LOG asks for more.
    let logs = match &cli.command {
        Cmd::Up { logs, .. } => logs.clone(),
        _ => LogSettings {
            filter: std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
            format: LogFormat::Text,
            otlp_endpoint: None,
        },
    };
    let _traces = logs.init("farmctl").context("installing the logger")?;
    match cli.command {
        Cmd::Up {
            file,
            database_url,
            port,
            address,
            public_url,
            tls,
            bin_dir,
            quiet,
            app_command,
            logs,
        } => {
            farm::up(farm::UpOptions {
                manifest: file,
                database_url,
                state_dir: cli.state_dir,
                port,
                address,
                public_url,
                tls,
                bin_dir,
                quiet,
                app_command,
                logs,
            })
            .await
        }
        Cmd::Status { json, open } => {
            let state = farm::read_state(&cli.state_dir)?;
            if open {
                println!("http://{}/", state.gateway_admin);
                return Ok(());
            }
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()?;
            let url = format!("http://{}/status", state.gateway_admin);
            if json {
                let doc: serde_json::Value = client.get(&url).send().await?.json().await?;
                println!("{}", serde_json::to_string_pretty(&doc)?);
                return Ok(());
            }
            let rows = farmctl::status::status_table(&client, &url).await?;
            println!("farm {} at {}", state.farm, state.gateway_url);
            print!("{}", farmctl::status::render_status_table(&rows));
            Ok(())
        }
        Cmd::Crd { helm, write } => {
            use farmctl::crd;
            if let Some(root) = write {
                for (rel, text) in [
                    (crd::CRD_PATH, crd::crd_yaml()),
                    (crd::CHART_TEMPLATE_PATH, crd::chart_template()),
                ] {
                    let path = root.join(rel);
                    std::fs::write(&path, text)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    println!("wrote {}", path.display());
                }
            } else if helm {
                print!("{}", crd::chart_template());
            } else {
                print!("{}", crd::crd_yaml());
            }
            Ok(())
        }
        Cmd::Validate { file } => {
            let m = farmctl::manifest::load(&file)?;
            println!(
                "{}: ServerFarm {} is valid ({} units)",
                file.display(),
                m.metadata.name,
                m.spec.replicas.0
            );
            Ok(())
        }
        Cmd::Drain { unit } => unit_action(&cli.state_dir, &unit, "drain").await,
        Cmd::Disable { unit } => unit_action(&cli.state_dir, &unit, "disable").await,
        Cmd::Enable { unit } => unit_action(&cli.state_dir, &unit, "enable").await,
        Cmd::Kill { unit } => reply(farm::control(&cli.state_dir, &format!("kill {unit}")).await?),
        Cmd::Restart { unit } => {
            reply(farm::control(&cli.state_dir, &format!("restart {unit}")).await?)
        }
    }
}

async fn unit_action(state_dir: &std::path::Path, unit: &str, action: &str) -> anyhow::Result<()> {
    farm::unit_action(state_dir, unit, action).await?;
    println!("ok");
    Ok(())
}

fn reply(r: String) -> anyhow::Result<()> {
    if r == "ok" {
        println!("ok");
        Ok(())
    } else {
        bail!("{}", r.trim_start_matches("error: "))
    }
}
