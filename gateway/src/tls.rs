//! TLS termination at the gateway: rustls with the ring provider (the provider sqlx already
//! builds into every Stickyfarm binary; aws-lc-rs would add a C and CMake build for the same
//! protocols and ciphers), TLS 1.2 and 1.3, ALPN `h2` and `http/1.1` on one port.
//!
//! The certificate and key are PEM files: `farmctl up --tls` writes them, the operator mounts
//! them from the `kubernetes.io/tls` Secret named in `spec.gateway.tls.secretName`. They are
//! checked before anything listens (readable, a certificate, a key that belongs to it, valid
//! now) and re-read every few seconds: a new pair that passes the same checks serves the next
//! handshake, open connections keep the session they have; a pair that fails them is
//! refused, the one in use stays, and the log and
//! `stickyfarm_gateway_tls_reloads_total{result="failed"}` say why.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use stickyfarm_api::listener::Handshake;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// The ALPN protocols the gateway offers, preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Where the certificate and key are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain (PEM), the server's certificate first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Where the files come from, named in every error (the operator sets `Secret <name>`).
    pub origin: Option<String>,
}

impl TlsFiles {
    fn name(&self, path: &Path) -> String {
        match &self.origin {
            Some(origin) => format!("{} (from {origin})", path.display()),
            None => path.display().to_string(),
        }
    }
}

/// A certificate the gateway will not serve.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CertificateError {
    /// A file cannot be read.
    #[error(
        "cannot read the TLS {what} {file}: {reason}; check that it exists and the gateway may read it"
    )]
    Unreadable {
        /// `certificate` or `key`.
        what: &'static str,
        /// The file (and its Secret).
        file: String,
        /// The operating system's reason.
        reason: String,
    },
    /// No certificate in the certificate file.
    #[error(
        "the TLS certificate file {file} holds no PEM certificate (-----BEGIN CERTIFICATE-----): {reason}"
    )]
    NoCertificate {
        /// The file (and its Secret).
        file: String,
        /// What was found instead.
        reason: String,
    },
    /// The certificate cannot be parsed as X.509.
    #[error("the TLS certificate in {file} is not a valid X.509 certificate: {reason}")]
    Malformed {
        /// The file (and its Secret).
        file: String,
        /// The parser's reason.
        reason: String,
    },
    /// No usable private key in the key file.
    #[error(
        "the TLS key file {file} holds no usable private key (PEM PKCS#8, PKCS#1 or SEC1; RSA, ECDSA P-256/P-384 or Ed25519): {reason}"
    )]
    BadKey {
        /// The file (and its Secret).
        file: String,
        /// Why.
        reason: String,
    },
    /// The key is not the certificate's.
    #[error(
        "the TLS key {key} does not belong to the certificate {cert}; give the key the certificate was issued for"
    )]
    KeyMismatch {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
    },
    /// The certificate has expired.
    #[error("the TLS certificate {file} expired on {not_after}; renew it")]
    Expired {
        /// The file (and its Secret).
        file: String,
        /// Its end of validity.
        not_after: String,
    },
    /// The certificate is not valid yet.
    #[error(
        "the TLS certificate {file} is not valid before {not_before}; check the clocks or wait"
    )]
    NotYetValid {
        /// The file (and its Secret).
        file: String,
        /// Its start of validity.
        not_before: String,
    },
}

/// A certificate and key that passed every check.
pub struct Certificate {
    key: Arc<CertifiedKey>,
    /// End of validity, seconds since the Unix epoch.
    pub not_after: i64,
    /// The files' bytes, to notice a change without parsing again.
    source: (Vec<u8>, Vec<u8>),
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Certificate {
    /// Reads and checks `files` as of `now`.
    pub fn load(files: &TlsFiles, now: SystemTime) -> Result<Certificate, CertificateError> {
        let cert_pem = read(files, &files.cert, "certificate")?;
        let key_pem = read(files, &files.key, "key")?;
        Self::parse(files, cert_pem, key_pem, now)
    }

    fn parse(
        files: &TlsFiles,
        cert_pem: Vec<u8>,
        key_pem: Vec<u8>,
        now: SystemTime,
    ) -> Result<Certificate, CertificateError> {
        let cert_name = files.name(&files.cert);
        let key_name = files.name(&files.key);
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CertificateError::NoCertificate {
                file: cert_name.clone(),
                reason: e.to_string(),
            })?;
        let Some(leaf) = chain.first() else {
            return Err(CertificateError::NoCertificate {
                file: cert_name,
                reason: "no certificate block".into(),
            });
        };
        let (not_before, not_after) =
            validity(leaf).map_err(|reason| CertificateError::Malformed {
                file: cert_name.clone(),
                reason,
            })?;
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if now > not_after.0 {
            return Err(CertificateError::Expired {
                file: cert_name,
                not_after: not_after.1,
            });
        }
        if now < not_before.0 {
            return Err(CertificateError::NotYetValid {
                file: cert_name,
                not_before: not_before.1,
            });
        }
        let private =
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| CertificateError::BadKey {
                file: key_name.clone(),
                reason: e.to_string(),
            })?;
        let signing = provider()
            .key_provider
            .load_private_key(private)
            .map_err(|e| CertificateError::BadKey {
                file: key_name.clone(),
                reason: e.to_string(),
            })?;
        let key = CertifiedKey::new(chain, signing);
        match key.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(CertificateError::KeyMismatch {
                    cert: cert_name,
                    key: key_name,
                });
            }
            Err(e) => {
                return Err(CertificateError::Malformed {
                    file: cert_name,
                    reason: e.to_string(),
                });
            }
        }
        Ok(Certificate {
            key: Arc::new(key),
            not_after: not_after.0,
            source: (cert_pem, key_pem),
        })
    }
}

fn read(files: &TlsFiles, path: &Path, what: &'static str) -> Result<Vec<u8>, CertificateError> {
    std::fs::read(path).map_err(|e| CertificateError::Unreadable {
        what,
        file: files.name(path),
        reason: e.to_string(),
    })
}

/// A certificate's validity as (seconds since the epoch, as text) for its start and end.
type Instant = (i64, String);

fn validity(leaf: &CertificateDer<'_>) -> Result<(Instant, Instant), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| e.to_string())?;
    let v = cert.validity();
    Ok((
        (v.not_before.timestamp(), v.not_before.to_string()),
        (v.not_after.timestamp(), v.not_after.to_string()),
    ))
}

/// The one crypto provider of the gateway.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate the gateway serves, replaced when its files change.
#[derive(Debug)]
pub struct Certificates {
    files: TlsFiles,
    current: ArcSwap<Certificate>,
}

impl Certificates {
    /// Loads `files`; a certificate that fails the checks stops the start.
    pub fn load(files: TlsFiles) -> Result<Arc<Certificates>, CertificateError> {
        let first = Certificate::load(&files, SystemTime::now())?;
        Ok(Arc::new(Certificates {
            files,
            current: ArcSwap::from_pointee(first),
        }))
    }

    /// The certificate in use.
    pub fn current(&self) -> Arc<Certificate> {
        self.current.load_full()
    }

    /// Reads the files again: `Ok(true)` when a new certificate is now in use, `Ok(false)`
    /// when they are unchanged, an error (and the old certificate still in use) when the new
    /// ones fail the checks.
    pub fn reload(&self, now: SystemTime) -> Result<bool, CertificateError> {
        let cert_pem = read(&self.files, &self.files.cert, "certificate")?;
        let key_pem = read(&self.files, &self.files.key, "key")?;
        let current = self.current.load();
        if current.source.0 == cert_pem && current.source.1 == key_pem {
            return Ok(false);
        }
        let next = Certificate::parse(&self.files, cert_pem, key_pem, now)?;
        self.current.store(Arc::new(next));
        Ok(true)
    }

    /// Reloads every `interval` until `stop`, recording each outcome.
    pub async fn watch(
        self: Arc<Self>,
        interval: Duration,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) {
        metrics.tls_certificate(self.current().not_after);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        // The last failure logged, so a bad pair left in place is reported once, not every tick.
        let mut reported: Option<CertificateError> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            match self.reload(SystemTime::now()) {
                Ok(false) => {}
                Ok(true) => {
                    reported = None;
                    let not_after = self.current().not_after;
                    metrics.tls_reload(true);
                    metrics.tls_certificate(not_after);
                    tracing::info!(
                        cert = %self.files.name(&self.files.cert),
                        not_after,
                        "TLS certificate reloaded; new connections use it, open ones keep theirs"
                    );
                }
                Err(e) => {
                    if reported.as_ref() != Some(&e) {
                        metrics.tls_reload(false);
                        tracing::error!(error = %e, "TLS certificate not reloaded; the one in use stays");
                        reported = Some(e);
                    }
                }
            }
        }
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().key.clone())
    }
}

/// The server side of TLS: TLS 1.2 and 1.3 with rustls's safe defaults, ALPN [`ALPN`], the
/// certificate from `certificates` at each handshake.
pub fn server_config(certificates: Arc<Certificates>) -> rustls::ServerConfig {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    config
}

/// The TLS handshake on every connection of the client port.
pub struct TlsHandshake {
    acceptor: tokio_rustls::TlsAcceptor,
    metrics: Arc<Metrics>,
}

impl TlsHandshake {
    /// Handshakes with `config`, counting failures in `metrics`.
    pub fn new(config: rustls::ServerConfig, metrics: Arc<Metrics>) -> Self {
        TlsHandshake {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            metrics,
        }
    }
}

impl Handshake<TcpStream> for TlsHandshake {
    type Stream = tokio_rustls::server::TlsStream<TcpStream>;

    async fn handshake(&self, socket: TcpStream) -> std::io::Result<Self::Stream> {
        let accepted = self.acceptor.accept(socket).await;
        if accepted.is_err() {
            self.metrics.tls_handshake_failed();
        }
        accepted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pair {
        cert: String,
        key: String,
    }

    fn issue(names: &[&str], not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Pair {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let cert = params.self_signed(&key).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn valid() -> Pair {
        issue(&["localhost"], (2020, 1, 1), (2090, 1, 1))
    }

    fn files() -> TlsFiles {
        TlsFiles {
            cert: "tls.crt".into(),
            key: "tls.key".into(),
            origin: Some("Secret shop-tls".into()),
        }
    }

    fn parse(cert: &str, key: &str) -> Result<Certificate, CertificateError> {
        Certificate::parse(
            &files(),
            cert.as_bytes().to_vec(),
            key.as_bytes().to_vec(),
            SystemTime::now(),
        )
    }

    #[test]
    fn a_valid_pair_is_accepted_with_its_end_of_validity() {
        let p = valid();
        let c = parse(&p.cert, &p.key).unwrap();
        assert_eq!(c.not_after, 3_786_912_000, "2090-01-01");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both_files_and_the_secret() {
        let (a, b) = (valid(), valid());
        let e = parse(&a.cert, &b.key).unwrap_err();
        assert!(matches!(e, CertificateError::KeyMismatch { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("tls.key (from Secret shop-tls)")
                && text.contains("tls.crt (from Secret shop-tls)"),
            "{text}"
        );
    }

    #[test]
    fn expired_and_future_certificates_are_refused_with_their_dates() {
        let old = issue(&["localhost"], (2001, 1, 1), (2002, 1, 1));
        let e = parse(&old.cert, &old.key).unwrap_err();
        assert!(
            matches!(e, CertificateError::Expired { .. }) && e.to_string().contains("2002"),
            "{e}"
        );
        let future = issue(&["localhost"], (2080, 1, 1), (2090, 1, 1));
        let e = parse(&future.cert, &future.key).unwrap_err();
        assert!(
            matches!(e, CertificateError::NotYetValid { .. }) && e.to_string().contains("2080"),
            "{e}"
        );
    }

    #[test]
    fn files_without_a_certificate_or_a_key_are_refused() {
        let p = valid();
        // The key where the certificate belongs, and the other way round.
        let e = parse(&p.key, &p.key).unwrap_err();
        assert!(matches!(e, CertificateError::NoCertificate { .. }), "{e}");
        let e = parse(&p.cert, &p.cert).unwrap_err();
        assert!(matches!(e, CertificateError::BadKey { .. }), "{e}");
        let e = parse(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            &p.key,
        )
        .unwrap_err();
        assert!(matches!(e, CertificateError::Malformed { .. }), "{e}");
    }

    #[test]
    fn a_missing_file_is_named_in_the_error() {
        let e = Certificate::load(
            &TlsFiles {
                cert: "/nonexistent/tls.crt".into(),
                key: "/nonexistent/tls.key".into(),
                origin: None,
            },
            SystemTime::now(),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                CertificateError::Unreadable {
                    what: "certificate",
                    ..
                }
            ) && e.to_string().contains("/nonexistent/tls.crt"),
            "{e}"
        );
    }

    #[test]
    fn a_reload_swaps_a_good_pair_and_keeps_the_old_one_on_a_bad_pair() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            origin: None,
        };
        let write = |p: &Pair| {
            std::fs::write(&files.cert, &p.cert).unwrap();
            std::fs::write(&files.key, &p.key).unwrap();
        };
        let first = valid();
        write(&first);
        let certs = Certificates::load(files.clone()).unwrap();
        let serving = |c: &Certificates| c.current().key.cert[0].to_vec();
        let before = serving(&certs);
        assert_eq!(certs.reload(SystemTime::now()), Ok(false), "unchanged");

        let mismatched = Pair {
            cert: valid().cert,
            key: first.key.clone(),
        };
        write(&mismatched);
        assert!(matches!(
            certs.reload(SystemTime::now()),
            Err(CertificateError::KeyMismatch { .. })
        ));
        assert_eq!(serving(&certs), before, "the old certificate stays in use");

        let second = issue(&["localhost"], (2020, 1, 1), (2080, 1, 1));
        write(&second);
        assert_eq!(certs.reload(SystemTime::now()), Ok(true));
        assert_ne!(serving(&certs), before);
        assert_eq!(certs.current().not_after, 3_471_292_800, "2080-01-01");
    }
}
