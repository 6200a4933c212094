//! An HTTPS client for tests that must see the TLS session itself: which protocol version and
//! ALPN protocol were agreed, which certificate the server presented, and whether a
//! connection opened before a certificate change still serves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ProtocolVersion, SupportedProtocolVersion};
use tokio::net::TcpStream;

/// TLS 1.2 only.
pub const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
/// TLS 1.3 only.
pub const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// A client that trusts the given CAs and offers the given versions and ALPN protocols.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
}

/// One answer over TLS.
#[derive(Debug)]
pub struct TlsAnswer {
    pub status: u16,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl TlsAnswer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// Every `Set-Cookie` value.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(http::header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }
}

enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

/// An open HTTPS connection.
pub struct TlsConn {
    sender: Sender,
    authority: String,
    /// The TLS version agreed.
    pub tls_version: Option<ProtocolVersion>,
    /// The ALPN protocol agreed.
    pub alpn: Option<Vec<u8>>,
    /// The server's certificate (DER).
    pub leaf: Vec<u8>,
}

impl TlsClient {
    pub fn new(
        ca_pems: &[&str],
        versions: &[&'static SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> TlsClient {
        let mut roots = rustls::RootCertStore::empty();
        for pem in ca_pems {
            roots
                .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
                .unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // Every connection a full handshake: a resumed session presents no certificate, and
        // the tests look at the one the server serves now.
        config.resumption = rustls::client::Resumption::disabled();
        TlsClient {
            config: Arc::new(config),
        }
    }

    /// Connects to `addr`, verifying the certificate for `name`; HTTP/2 when the server agreed
    /// to `h2`, else HTTP/1.1.
    pub async fn connect(&self, addr: SocketAddr, name: &str) -> Result<TlsConn, String> {
        let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| format!("connect: {e}"))?;
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let server_name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
        let tls =
            tokio::time::timeout(Duration::from_secs(10), connector.connect(server_name, tcp))
                .await
                .map_err(|_| "handshake timed out".to_owned())?
                .map_err(|e| format!("handshake: {e}"))?;
        let (_, session) = tls.get_ref();
        let tls_version = session.protocol_version();
        let alpn = session.alpn_protocol().map(|p| p.to_vec());
        let leaf = session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default();
        let io = TokioIo::new(tls);
        let sender = if alpn.as_deref() == Some(b"h2") {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            let (sender, conn) = http1::handshake(io)
                .await
                .map_err(|e| format!("http/1.1 handshake: {e}"))?;
            tokio::spawn(conn);
            Sender::H1(sender)
        };
        Ok(TlsConn {
            sender,
            authority: format!("{name}:{}", addr.port()),
            tls_version,
            alpn,
            leaf,
        })
    }

    /// One `GET` on a new connection.
    pub async fn get(
        &self,
        addr: SocketAddr,
        name: &str,
        path: &str,
        cookie: Option<&str>,
    ) -> Result<TlsAnswer, String> {
        self.connect(addr, name).await?.get(path, cookie).await
    }
}

impl TlsConn {
    /// `GET path` with an optional `Cookie` header, within 10 s.
    pub async fn get(&mut self, path: &str, cookie: Option<&str>) -> Result<TlsAnswer, String> {
        let mut req = http::Request::get(format!("https://{}{path}", self.authority));
        if let Some(cookie) = cookie {
            req = req.header(http::header::COOKIE, cookie);
        }
        let work = async {
            let response = match &mut self.sender {
                Sender::H1(s) => {
                    let req = req
                        .uri(path)
                        .header(http::header::HOST, &self.authority)
                        .body(Empty::new())
                        .unwrap();
                    s.ready().await.map_err(|e| e.to_string())?;
                    s.send_request(req).await
                }
                Sender::H2(s) => {
                    s.ready().await.map_err(|e| e.to_string())?;
                    s.send_request(req.body(Empty::new()).unwrap()).await
                }
            }
            .map_err(|e| format!("request: {e}"))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            Ok(TlsAnswer {
                status: parts.status.as_u16(),
                version: parts.version,
                headers: parts.headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        };
        tokio::time::timeout(Duration::from_secs(10), work)
            .await
            .map_err(|_| "no answer within 10 s".to_owned())?
    }
}
