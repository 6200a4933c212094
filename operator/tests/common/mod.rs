//! Helpers shared by the tests that render the Helm chart.
#![allow(dead_code)] // each test binary uses a part

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Says loudly that a test checked nothing because a tool is missing (straight to the file
/// descriptor: libtest captures only the print macros).
pub fn skipped(why: &str) {
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED: {why} ***\n");
}

/// The helm that scripts/test builds (`HELM`, or where lib.sh puts it).
pub fn helm() -> Option<PathBuf> {
    let path = std::env::var_os("HELM").map(PathBuf::from).or_else(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(cache.join("stickyfarm/tools/helm-v3.22.0/helm"))
    })?;
    path.exists().then_some(path)
}

/// `helm template` with `--set`s: the documents (a failure fails the test).
pub fn render(set: &[&str]) -> Option<Vec<Value>> {
    render_result(set).map(|r| r.unwrap_or_else(|e| panic!("helm template failed: {e}")))
}

/// `helm template` with `--set`s: the documents, or helm's error text.
pub fn render_result(set: &[&str]) -> Option<Result<Vec<Value>, String>> {
    render_with(set, &[])
}

/// `helm template` with `--set`s and more arguments (say `--api-versions`).
pub fn render_with(set: &[&str], args: &[&str]) -> Option<Result<Vec<Value>, String>> {
    let Some(helm) = helm() else {
        skipped("helm not found. Run scripts/test (it builds helm) or set HELM=/path/to/helm.");
        return None;
    };
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/stickyfarm");
    let mut cmd = Command::new(helm);
    cmd.args(["template", "sf"]).arg(&chart).args([
        "--namespace",
        "stickyfarm-system",
        "--kube-version",
        "1.37.0",
    ]);
    for s in set {
        cmd.args(["--set", s]);
    }
    cmd.args(args);
    let out = cmd.output().expect("helm runs");
    if !out.status.success() {
        return Some(Err(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("helm renders YAML");
    Some(Ok(docs.into_iter().filter(|d| !d.is_null()).collect()))
}

/// The rendered object of `kind` whose name ends with `name_suffix`.
pub fn find<'a>(docs: &'a [Value], kind: &str, name_suffix: &str) -> &'a Value {
    docs.iter()
        .find(|d| {
            d["kind"] == kind
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with(name_suffix))
        })
        .unwrap_or_else(|| panic!("no {kind} *{name_suffix} rendered"))
}
