//! Unit discovery: where the farm's membership comes from.
//!
//! Every source publishes the whole membership whenever it changes; the gateway applies it
//! without a restart. The static source (flags and a file) lands here; the Kubernetes source
//! (pods or EndpointSlices of the farm) implements the same trait.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::units::UnitSpec;

/// A source of the farm's membership.
pub trait UnitSource: Send + 'static {
    /// Publishes the membership (at least once), then every change, until `stop`.
    fn run(
        self: Box<Self>,
        publish: watch::Sender<Vec<UnitSpec>>,
        stop: CancellationToken,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// The units file could not be used.
#[derive(Debug, Error)]
pub enum UnitsFileError {
    /// Reading failed.
    #[error("cannot read the units file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The content is not a valid units list (the message names the line and field).
    #[error("invalid units file {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, and where.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnitsFile {
    units: Vec<UnitSpec>,
}

/// Parses a units file (YAML, which includes JSON). Names must be unique.
pub fn parse_units(path: &str, text: &str) -> Result<Vec<UnitSpec>, UnitsFileError> {
    let file: UnitsFile = serde_saphyr::from_str(text).map_err(|e| UnitsFileError::Invalid {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let mut seen = BTreeSet::new();
    for u in &file.units {
        if !seen.insert(u.name.clone()) {
            return Err(UnitsFileError::Invalid {
                path: path.to_owned(),
                message: format!("unit {} is listed twice", u.name),
            });
        }
    }
    Ok(file.units)
}

/// Units from flags plus an optional file, which is re-read when it changes. A file that
/// becomes invalid is reported and the last good membership stays.
pub struct StaticSource {
    /// Units given as flags.
    pub fixed: Vec<UnitSpec>,
    /// The units file.
    pub file: Option<PathBuf>,
    /// How often the file is looked at.
    pub poll: Duration,
}

impl StaticSource {
    /// Reads the membership once.
    pub fn load(&self) -> Result<Vec<UnitSpec>, UnitsFileError> {
        let mut units = self.fixed.clone();
        if let Some(path) = &self.file {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| UnitsFileError::Read {
                path: shown.clone(),
                source,
            })?;
            for u in parse_units(&shown, &text)? {
                if units.iter().any(|f| f.name == u.name) {
                    return Err(UnitsFileError::Invalid {
                        path: shown,
                        message: format!("unit {} is also given as a flag", u.name),
                    });
                }
                units.push(u);
            }
        }
        Ok(units)
    }
}

impl UnitSource for StaticSource {
    fn run(
        self: Box<Self>,
        publish: watch::Sender<Vec<UnitSpec>>,
        stop: CancellationToken,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let mut last = None;
            loop {
                match self.load() {
                    Ok(units) if last.as_ref() != Some(&units) => {
                        last = Some(units.clone());
                        publish.send_replace(units);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "keeping the last good unit list"),
                }
                if self.file.is_none() {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(self.poll) => {}
                    _ = stop.cancelled() => return,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::AdminState;

    #[test]
    fn units_files_parse_and_refuse_mistakes() {
        let units = parse_units(
            "u.yaml",
            "units:\n  - name: web-0\n    address: 127.0.0.1:8081\n  - name: web-1\n    address: h:1\n    admin: draining\n",
        )
        .unwrap();
        assert_eq!(units.len(), 2);
        assert_eq!(units[1].admin, AdminState::Draining);
        let json =
            parse_units("u.json", r#"{"units":[{"name":"web-0","address":"a:1"}]}"#).unwrap();
        assert_eq!(json[0].address, "a:1");

        let unknown = parse_units(
            "u.yaml",
            "units:\n  - name: web-0\n    address: a:1\n    weight: 3\n",
        )
        .unwrap_err();
        assert!(unknown.to_string().contains("weight"), "{unknown}");
        let bad_name =
            parse_units("u.yaml", "units:\n  - name: Web_0\n    address: a:1\n").unwrap_err();
        assert!(bad_name.to_string().contains("unit name"), "{bad_name}");
        let dup = parse_units(
            "u.yaml",
            "units:\n  - {name: a, address: x:1}\n  - {name: a, address: x:2}\n",
        )
        .unwrap_err();
        assert!(dup.to_string().contains("twice"), "{dup}");
    }
}
