//! The image table: which local program stands in for a container image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::Error;

/// The checked-in table (`e2e/podlet/images/table.yaml`).
#[derive(Debug, Deserialize)]
pub struct ImageTable {
    images: BTreeMap<String, ImageEntry>,
    #[serde(skip)]
    dir: PathBuf,
}

/// One image: what it runs and as whom.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageEntry {
    /// The image's ENTRYPOINT.
    pub entrypoint: Vec<Word>,
    /// The image's CMD (arguments when the pod gives none).
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Folders of the image's PATH, before the system's (`*` picks the highest version).
    #[serde(default)]
    pub path: Vec<String>,
    /// The image's USER.
    pub user: u32,
    /// Image uids that are a named account of this machine instead.
    #[serde(default)]
    pub user_map: BTreeMap<u32, String>,
    /// The image's STOPSIGNAL (default SIGTERM).
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// Folders of the image the container may write to: each container gets its own.
    #[serde(default)]
    pub writable: Vec<String>,
}

/// One word of an entrypoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Word {
    /// A binary of `--bin-dir`.
    Bin(String),
    /// A file next to the table.
    Script(String),
    /// A word as is.
    Arg(String),
}

/// An image resolved to programs of this machine.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// ENTRYPOINT, with absolute paths.
    pub entrypoint: Vec<String>,
    /// CMD.
    pub cmd: Vec<String>,
    /// PATH for the container.
    pub path: String,
    /// USER.
    pub user: u32,
    /// See [`ImageEntry::user_map`].
    pub user_map: BTreeMap<u32, String>,
    /// STOPSIGNAL.
    pub stop_signal: nix::sys::signal::Signal,
    /// See [`ImageEntry::writable`].
    pub writable: Vec<String>,
}

/// The repository part of an image reference: `ghcr.io/x/y:1.0` → `ghcr.io/x/y`, and Docker
/// Hub's short names as written (`postgres:17` → `postgres`, `docker.io/library/postgres` →
/// `postgres`).
pub fn repository(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    // A colon after the last slash is a tag; one before it is a registry's port.
    let repo = match without_digest.rfind(':') {
        Some(c) if !without_digest[c..].contains('/') => &without_digest[..c],
        _ => without_digest,
    };
    repo.strip_prefix("docker.io/library/")
        .or_else(|| repo.strip_prefix("docker.io/"))
        .unwrap_or(repo)
}

impl ImageTable {
    /// Reads the table.
    pub fn load(file: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(file).map_err(|e| Error::Setup {
            what: format!("reading the image table {}", file.display()),
            detail: e.to_string(),
        })?;
        let mut table: ImageTable = serde_saphyr::from_str(&text).map_err(|e| Error::Setup {
            what: format!("parsing the image table {}", file.display()),
            detail: e.to_string(),
        })?;
        table.dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        Ok(table)
    }

    /// The images the table knows.
    pub fn images(&self) -> impl Iterator<Item = &str> {
        self.images.keys().map(String::as_str)
    }

    /// Binaries the table names.
    pub fn binaries(&self) -> impl Iterator<Item = &str> {
        self.images.values().flat_map(|e| {
            e.entrypoint.iter().filter_map(|w| match w {
                Word::Bin(b) => Some(b.as_str()),
                _ => None,
            })
        })
    }

    /// What runs for `image`; `bin_dir` holds the binaries.
    pub fn resolve(&self, image: &str, bin_dir: &Path) -> Result<Resolved, String> {
        let repo = repository(image);
        let entry = self.images.get(repo).ok_or_else(|| {
            format!(
                "image {image:?} is not in the podlet's image table (known: {}); add it to e2e/podlet/images/table.yaml",
                self.images.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        let entrypoint = entry
            .entrypoint
            .iter()
            .map(|w| match w {
                Word::Bin(b) => bin_dir.join(b).to_string_lossy().into_owned(),
                Word::Script(s) => self.dir.join(s).to_string_lossy().into_owned(),
                Word::Arg(a) => a.clone(),
            })
            .collect();
        let mut path: Vec<String> = entry.path.iter().filter_map(|p| expand_glob(p)).collect();
        path.extend(
            [
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
            .map(String::from),
        );
        let stop_signal = match entry.stop_signal.as_deref() {
            None => nix::sys::signal::Signal::SIGTERM,
            Some(s) => s
                .parse()
                .map_err(|_| format!("image {repo}: unknown stopSignal {s:?}"))?,
        };
        Ok(Resolved {
            entrypoint,
            cmd: entry.cmd.clone(),
            path: path.join(":"),
            user: entry.user,
            user_map: entry.user_map.clone(),
            stop_signal,
            writable: entry.writable.clone(),
        })
    }
}

/// `/usr/lib/postgresql/*/bin` → the match with the highest version; a path without `*` as is.
fn expand_glob(pattern: &str) -> Option<String> {
    let Some((head, tail)) = pattern.split_once('*') else {
        return Some(pattern.to_owned());
    };
    let mut versions: Vec<(Vec<u64>, String)> = std::fs::read_dir(head)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let full = format!("{head}{name}{tail}");
            Path::new(&full).exists().then(|| {
                let key = name.split('.').map(|p| p.parse().unwrap_or(0)).collect();
                (key, full)
            })
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_drop_tags_digests_and_docker_hub_prefixes() {
        assert_eq!(
            repository("ghcr.io/stickyfarm/sidecar:0.1.0"),
            "ghcr.io/stickyfarm/sidecar"
        );
        assert_eq!(repository("postgres:17"), "postgres");
        assert_eq!(repository("docker.io/library/postgres:17"), "postgres");
        assert_eq!(repository("registry:5000/app"), "registry:5000/app");
        assert_eq!(
            repository("registry:5000/app:v2@sha256:ab"),
            "registry:5000/app"
        );
    }

    #[test]
    fn the_checked_in_table_resolves_every_stickyfarm_image_and_postgres() {
        let table =
            ImageTable::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("images/table.yaml"))
                .unwrap();
        let bin = Path::new("/bins");
        let sidecar = table
            .resolve("ghcr.io/stickyfarm/sidecar:9.9", bin)
            .unwrap();
        assert_eq!(sidecar.entrypoint, ["/bins/stickyfarm-sidecar"]);
        assert_eq!(sidecar.user, 65532);
        let pg = table.resolve("postgres:17", bin).unwrap();
        assert!(pg.entrypoint[0].ends_with("images/postgres-entrypoint"));
        assert_eq!(pg.cmd, ["postgres"]);
        assert_eq!(pg.stop_signal, nix::sys::signal::Signal::SIGINT);
        assert_eq!(pg.user_map.get(&999).map(String::as_str), Some("postgres"));
        let err = table.resolve("nginx:1", bin).unwrap_err();
        assert!(err.contains("not in the podlet's image table"), "{err}");
    }
}
