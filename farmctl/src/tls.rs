//! `farmctl up --tls`: a local certificate authority in the state folder and a server
//! certificate it signs for the names the farm is reached by (`localhost`, `127.0.0.1`, the
//! listen address, the `--public-url` host).
//!
//! The authority is made once and kept (`tls/ca.crt`, `tls/ca.key`), so a browser or system
//! that was told to trust it keeps trusting the farm across runs; the server certificate is
//! issued again at every start (valid 90 days), so new names and an expired one take care of
//! themselves. Keys are written readable by their owner only.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The files of a farm's local TLS.
#[derive(Debug, Clone)]
pub struct LocalTls {
    /// The authority's certificate: what clients trust.
    pub ca: PathBuf,
    /// The server's certificate chain, for `--tls-cert`.
    pub cert: PathBuf,
    /// The server's key, for `--tls-key`.
    pub key: PathBuf,
}

/// The local authority or certificate could not be made.
#[derive(Debug, Error)]
pub enum LocalTlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The kept authority is unusable.
    #[error(
        "the local CA in {dir} is unusable ({reason}); remove the folder to make a new one (clients must then trust the new ca.crt)"
    )]
    BadAuthority {
        /// The folder.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// rcgen refused the parameters (a name that is not a DNS name or an address).
    #[error("cannot make the farm's certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

const CA_NAME: &str = "Stickyfarm local CA (farmctl)";

/// Makes (or reuses) the authority in `dir` and issues a certificate for `names`.
pub fn local_tls(dir: &Path, names: &[String]) -> Result<LocalTls, LocalTlsError> {
    std::fs::create_dir_all(dir).map_err(|source| LocalTlsError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let files = LocalTls {
        ca: dir.join("ca.crt"),
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    };
    let ca_key_path = dir.join("ca.key");
    let issuer = if files.ca.exists() && ca_key_path.exists() {
        let bad = |reason: String| LocalTlsError::BadAuthority {
            dir: dir.to_path_buf(),
            reason,
        };
        let key = rcgen::KeyPair::from_pem(&read(&ca_key_path)?).map_err(|e| bad(e.to_string()))?;
        rcgen::Issuer::from_ca_cert_pem(&read(&files.ca)?, key).map_err(|e| bad(e.to_string()))?
    } else {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, CA_NAME);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let (not_before, not_after) = valid_for(3650);
        params.not_before = not_before;
        params.not_after = not_after;
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        write(&ca_key_path, &key.serialize_pem(), 0o600)?;
        write(&files.ca, &cert.pem(), 0o644)?;
        rcgen::Issuer::new(params, key)
    };
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().map_or("localhost", String::as_str),
    );
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let (not_before, not_after) = valid_for(90);
    params.not_before = not_before;
    params.not_after = not_after;
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write(&files.key, &key.serialize_pem(), 0o600)?;
    write(&files.cert, &cert.pem(), 0o644)?;
    Ok(files)
}

/// From a day ago (clocks disagree) to `days` from now.
fn valid_for(days: u64) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (
        now - std::time::Duration::from_secs(86_400),
        now + std::time::Duration::from_secs(days * 86_400),
    )
}

fn read(path: &Path) -> Result<String, LocalTlsError> {
    std::fs::read_to_string(path).map_err(|source| LocalTlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `text` to `path` with `mode`, replacing the file in one rename.
fn write(path: &Path, text: &str, mode: u32) -> Result<(), LocalTlsError> {
    let tmp = path.with_extension("tmp");
    let io = |source| LocalTlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn the_authority_is_kept_and_the_certificate_names_the_farm() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let first = local_tls(dir.path(), &names).unwrap();
        let ca = std::fs::read_to_string(&first.ca).unwrap();
        let cert = std::fs::read_to_string(&first.cert).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&first.key), 0o600);
        assert_eq!(mode(&dir.path().join("ca.key")), 0o600);

        let again = local_tls(dir.path(), &names).unwrap();
        assert_eq!(
            std::fs::read_to_string(&again.ca).unwrap(),
            ca,
            "the CA is kept"
        );
        assert_ne!(
            std::fs::read_to_string(&again.cert).unwrap(),
            cert,
            "the server certificate is issued again"
        );
    }

    #[test]
    fn a_damaged_authority_is_reported_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        local_tls(dir.path(), &["localhost".to_owned()]).unwrap();
        std::fs::write(dir.path().join("ca.key"), "garbage").unwrap();
        let e = local_tls(dir.path(), &["localhost".to_owned()]).unwrap_err();
        assert!(e.to_string().contains("remove the folder"), "{e}");
    }
}
