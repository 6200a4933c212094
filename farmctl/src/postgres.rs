//! A private, throwaway PostgreSQL cluster for `farmctl up` when no database is given: initdb
//! into a fresh folder, started on a free loopback port, removed when the farm stops.

use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

/// The private cluster could not be started.
#[derive(Debug, Error)]
pub enum PostgresError {
    /// The server binaries are missing.
    #[error(
        "PostgreSQL server binaries not found under /usr/lib/postgresql: install the Debian package \
         'postgresql' (apt-get install postgresql), or pass --database-url"
    )]
    Missing,
    /// A step failed.
    #[error("{step} failed: {detail}")]
    Step {
        /// What was attempted.
        step: &'static str,
        /// Its output.
        detail: String,
    },
}

/// A running private cluster.
pub struct PrivateCluster {
    bin: PathBuf,
    data: PathBuf,
    as_postgres: bool,
    /// Connection URL (holds a generated password: never print it).
    pub url: String,
}

/// A program of the newest PostgreSQL server installed (`initdb`, `pgbench`, …).
pub fn server_program(name: &str) -> Option<PathBuf> {
    server_bin().map(|b| b.join(name)).filter(|p| p.exists())
}

fn server_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").exists())
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions.pop()
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

fn run(
    step: &'static str,
    as_postgres: bool,
    program: &Path,
    args: &[&str],
) -> Result<(), PostgresError> {
    let out = if as_postgres {
        // PostgreSQL refuses to run as root.
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(program)
            .args(args)
            .output()
    } else {
        Command::new(program).args(args).output()
    }
    .map_err(|e| PostgresError::Step {
        step,
        detail: e.to_string(),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(PostgresError::Step {
            step,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

impl PrivateCluster {
    /// Initialises and starts a cluster in a new folder under `parent` (or under the system's
    /// temporary folder when running as root, where the `postgres` user must own it).
    pub fn start(parent: &Path, port: u16) -> Result<PrivateCluster, PostgresError> {
        let bin = server_bin().ok_or(PostgresError::Missing)?;
        let as_postgres = is_root();
        let base = if as_postgres {
            std::env::temp_dir()
        } else {
            parent.to_path_buf()
        };
        let data = base.join(format!(
            "farmctl-postgres-{}",
            uuid::Uuid::new_v4().simple()
        ));
        private_dir(&data).map_err(|e| PostgresError::Step {
            step: "creating the data folder",
            detail: e.to_string(),
        })?;
        let password = stickyfarm_api::token::random_hex().map_err(|e| PostgresError::Step {
            step: "generating a password",
            detail: e.to_string(),
        })?;
        let pwfile = data.join("pwfile");
        write_private(&pwfile, password.as_bytes()).map_err(|e| PostgresError::Step {
            step: "writing the password file",
            detail: e.to_string(),
        })?;
        if as_postgres {
            run(
                "chown",
                false,
                Path::new("chown"),
                &["-R", "postgres:postgres", &data.to_string_lossy()],
            )?;
        }
        let pgdata = data.join("pgdata");
        let pgdata_s = pgdata.to_string_lossy().into_owned();
        run(
            "initdb",
            as_postgres,
            &bin.join("initdb"),
            &[
                "-D",
                &pgdata_s,
                "-U",
                "stickyfarm",
                &format!("--pwfile={}", pwfile.display()),
                "--auth-host=scram-sha-256",
                "--auth-local=peer",
                "-E",
                "UTF8",
                "--no-instructions",
            ],
        )?;
        let _ = std::fs::remove_file(&pwfile);
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={} -c max_connections=200",
            data.display()
        );
        let log = data.join("server.log");
        let cluster = PrivateCluster {
            bin: bin.clone(),
            data: data.clone(),
            as_postgres,
            url: format!("postgres://stickyfarm:{password}@127.0.0.1:{port}/postgres"),
        };
        run(
            "starting PostgreSQL",
            as_postgres,
            &bin.join("pg_ctl"),
            &[
                "-D",
                &pgdata_s,
                "-o",
                &opts,
                "-l",
                &log.to_string_lossy(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        )?;
        Ok(cluster)
    }

    /// The cluster's folder (its processes name it on their command line).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Stops the server and removes its folder.
    pub fn stop(&self) {
        let pgdata = self.data.join("pgdata");
        let _ = run(
            "stopping PostgreSQL",
            self.as_postgres,
            &self.bin.join("pg_ctl"),
            &["-D", &pgdata.to_string_lossy(), "-m", "fast", "-w", "stop"],
        );
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if self.data.exists() {
            self.stop();
        }
    }
}

/// Creates `dir` (and its parents) and makes it readable by its owner only (0700), also when
/// it existed.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Writes a secret into a new file readable by its owner only (0600).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(test)]
mod private_tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn secrets_and_their_folders_are_the_owners_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        private_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700, "an existing folder is tightened too");
        let secret = dir.join("pwfile");
        write_private(&secret, b"s3cret").unwrap();
        assert_eq!(mode(&secret), 0o600);
        assert!(
            write_private(&secret, b"x").is_err(),
            "never over an existing file"
        );
    }
}
