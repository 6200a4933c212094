//! `stickyfarm-webstore`: the example shop. Run it behind `stickyfarm-sidecar`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use sqlx::postgres::PgPoolOptions;
use stickyfarm_webstore::state::SessionApi;
use stickyfarm_webstore::{Shop, router, shop};

/// The Stickyfarm example shop: catalog, cart and checkout, with the cart kept in the sidecar's
/// session state and orders in PostgreSQL.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on (behind the sidecar, so normally localhost).
    #[arg(long, env = "WEBSTORE_LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// The sidecar's session API.
    #[arg(
        long,
        env = "STICKYFARM_API_URL",
        default_value = "http://127.0.0.1:7070"
    )]
    session_api: String,
    /// PostgreSQL for orders (never logged).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let db = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(&args.database_url)
        .context("DATABASE_URL is not a valid PostgreSQL URL")?;
    // Wait for the database rather than fail: in a pod it may come up after the app.
    let mut delay = Duration::from_millis(200);
    while let Err(e) = shop::prepare(&db).await {
        tracing::warn!(error = %e, "cannot create the order tables yet; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    let app = router(Arc::new(Shop {
        sessions: SessionApi::new(&args.session_api),
        db,
        news: Default::default(),
    }));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(addr = %args.listen, "webstore serving");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
    Ok(())
}
