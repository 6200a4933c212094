//! Pods reach the API server at the bridge's address (`KUBERNETES_SERVICE_HOST`), where this
//! forwards TCP to the API server on loopback. TLS passes through untouched: the pods verify the
//! API server's certificate (which names the bridge's address) with their service account's CA.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::Error;

/// Listens on `listen` and forwards every connection to `upstream`, until `shutdown`.
pub async fn run(
    listen: SocketAddr,
    upstream: String,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let listener = TcpListener::bind(listen).await.map_err(|e| {
        Error::setup(
            format!("listening on {listen} for pods' API connections"),
            e,
        )
    })?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                a = listener.accept() => {
                    let Ok((mut client, _)) = a else { continue };
                    let upstream = upstream.clone();
                    tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                }
                _ = shutdown.cancelled() => return,
            }
        }
    });
    Ok(())
}
