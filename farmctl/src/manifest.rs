//! Reading a `ServerFarm` manifest: YAML via serde-saphyr into the types of `api/`, with errors
//! that name the file, the field and the line.

use std::path::Path;

use stickyfarm_api::farm::ServerFarmManifest;
use thiserror::Error;

/// A manifest could not be used.
#[derive(Debug, Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The document is not a valid ServerFarm.
    #[error("{path} is not a valid ServerFarm: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong and where (field and line).
        message: String,
    },
}

/// Parses a manifest's text and checks the rules that span fields (the CRD's CEL rules).
pub fn parse(path: &str, text: &str) -> Result<ServerFarmManifest, ManifestError> {
    let invalid = |message: String| ManifestError::Invalid {
        path: path.to_owned(),
        message,
    };
    let manifest: ServerFarmManifest =
        serde_saphyr::from_str(text).map_err(|e| invalid(e.to_string()))?;
    manifest.spec.validate().map_err(|errors| {
        let list: Vec<String> = errors.iter().map(|e| format!("spec.{e}")).collect();
        invalid(list.join("; "))
    })?;
    Ok(manifest)
}

/// The app's environment as `farmctl` runs it: literal values as given, and a `valueFrom`
/// that names the farm's database Secret (`ServerFarmSpec::database_secret`, or the app's own
/// `ServerFarmSpec::app_database_secret`) resolved to `database_url` (one machine, one
/// database role). Anything else only Kubernetes can resolve, so it is refused.
pub fn local_app_env(
    manifest: &ServerFarmManifest,
    database_url: &str,
) -> Result<Vec<(String, String)>, String> {
    let farm = manifest.metadata.name.as_str();
    let (secret, key) = manifest.spec.database_secret(farm);
    let (app_secret, app_key) = manifest.spec.app_database_secret(farm);
    manifest
        .spec
        .app
        .env
        .iter()
        .map(|e| match (&e.value, &e.value_from) {
            (_, None) => Ok((e.name.clone(), e.value.clone().unwrap_or_default())),
            (_, Some(from)) => match &from.secret_key_ref {
                Some(r)
                    if (r.name == secret && r.key == key)
                        || (r.name == app_secret && r.key == app_key) =>
                {
                    Ok((e.name.clone(), database_url.to_owned()))
                }
                _ => Err(format!(
                    "app env {} uses a valueFrom that only Kubernetes resolves; farmctl resolves only secretKeyRef {app_secret}/{app_key} and {secret}/{key} (the farm's database URL): give it a value",
                    e.name
                )),
            },
        })
        .collect()
}

/// Reads and parses a manifest file.
pub fn load(path: &Path) -> Result<ServerFarmManifest, ManifestError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&shown, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "apiVersion: stickyfarm.dev/v1alpha1
kind: ServerFarm
metadata:
  name: shop
spec:
  app:
    image: ghcr.io/stickyfarm/webstore:0.1.0
";

    #[test]
    fn minimal_manifest_gets_defaults() {
        let m = parse("m.yaml", MINIMAL).unwrap();
        assert_eq!(m.spec.replicas.0, 3);
        assert_eq!(m.spec.app.port.0, 3000);
        assert_eq!(m.spec.gateway.port.0, 8080);
        assert_eq!(m.spec.session_persistence.idle_timeout.0.as_secs(), 1800);
        assert_eq!(m.spec.sidecar.cache_memory.0, 64 << 20);
        let names: Vec<String> = m.unit_names().iter().map(|u| u.to_string()).collect();
        assert_eq!(names, ["shop-0", "shop-1", "shop-2"]);
    }

    #[test]
    fn app_env_resolves_only_the_database_secret() {
        let with_env = |env: &str| parse("m.yaml", &format!("{MINIMAL}    env:\n{env}")).unwrap();
        let m = with_env(
            "      - {name: MODE, value: live}\n      - name: DATABASE_URL\n        valueFrom: {secretKeyRef: {name: shop-db, key: url}}\n",
        );
        assert_eq!(
            local_app_env(&m, "postgres://local/db").unwrap(),
            [
                ("MODE".to_owned(), "live".to_owned()),
                ("DATABASE_URL".to_owned(), "postgres://local/db".to_owned())
            ]
        );
        // The app's own role's Secret resolves to the same URL on one machine.
        let m = with_env(
            "      - name: DATABASE_URL\n        valueFrom: {secretKeyRef: {name: shop-db-app, key: url}}\n",
        );
        assert_eq!(
            local_app_env(&m, "postgres://local/db").unwrap(),
            [("DATABASE_URL".to_owned(), "postgres://local/db".to_owned())]
        );
        let m = with_env(
            "      - name: API_KEY\n        valueFrom: {secretKeyRef: {name: other, key: k}}\n",
        );
        let err = local_app_env(&m, "postgres://local/db").unwrap_err();
        assert!(
            err.contains("API_KEY") && err.contains("shop-db/url"),
            "{err}"
        );
    }

    #[test]
    fn cross_field_rules_are_checked() {
        let err = parse(
            "m.yaml",
            &format!("{MINIMAL}  gateway:\n    unitAddressing: host\n  sessionPersistence:\n    idleTimeout: 48h\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("spec.gateway: unitAddressing host needs farmHost"),
            "{err}"
        );
        assert!(
            err.contains("spec.sessionPersistence: idleTimeout must not be longer"),
            "{err}"
        );
    }

    #[test]
    fn every_example_manifest_is_accepted() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/serverfarms");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
        assert!(n >= 3, "minimal, full, external database");
    }

    #[test]
    fn the_example_farm_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/webstore.yaml");
        let m = load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.metadata.name.as_str(), "webstore");
        assert_eq!(m.spec.replicas.0, 3);
    }

    #[test]
    fn mistakes_name_the_field_and_line() {
        let cases = [
            (
                MINIMAL.replace("  app:", "  replicas: 0\n  app:"),
                "replicas",
                6,
            ),
            (
                MINIMAL.replace("    image:", "    imagee: x\n    image:"),
                "imagee",
                7,
            ),
            (
                MINIMAL.replace(
                    "spec:\n",
                    "spec:\n  sessionPersistence:\n    idleTimeout: 10 minutes\n",
                ),
                "duration",
                7,
            ),
            (
                MINIMAL.replace("name: shop", "name: Shop_1"),
                "farm name",
                4,
            ),
            (
                MINIMAL.replace("kind: ServerFarm", "kind: Deployment"),
                "kind",
                2,
            ),
            (
                MINIMAL.replace("  app:", "  gateway:\n    policy: fastest\n  app:"),
                "fastest",
                7,
            ),
        ];
        for (text, needle, line) in cases {
            let e = parse("m.yaml", &text).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
            assert!(
                e.contains(&format!("line {line} ")),
                "line {line} not named: {e}"
            );
        }
    }
}
