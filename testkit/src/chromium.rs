//! A real browser for tests that look at pages as a person does: headless Chromium driven
//! over WebDriver by chromedriver, both from Debian (`scripts/test` installs them).

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::{ChildProc, eventually, free_port};

/// Chromium and chromedriver, found where Debian puts them (`CHROMIUM`/`CHROMEDRIVER` name
/// others).
pub struct Tools {
    chromium: PathBuf,
    chromedriver: PathBuf,
}

impl Tools {
    /// The tools, or `None` and a note that the test is skipped. With
    /// `STICKYFARM_BROWSER_REQUIRED=1` (what `scripts/test` sets) a missing tool fails the test
    /// instead: in CI a browser test cannot skip.
    pub fn find() -> Option<Tools> {
        let required = std::env::var("STICKYFARM_BROWSER_REQUIRED").is_ok_and(|v| v == "1");
        match (
            tool("CHROMIUM", "/usr/bin/chromium"),
            tool("CHROMEDRIVER", "/usr/bin/chromedriver"),
        ) {
            (Some(chromium), Some(chromedriver)) => Some(Tools {
                chromium,
                chromedriver,
            }),
            _ => {
                assert!(
                    !required,
                    "Chromium and chromedriver are needed (apt-get install chromium chromium-driver)"
                );
                eprintln!("skipped: no Chromium (apt-get install chromium chromium-driver)");
                None
            }
        }
    }
}

fn tool(var: &str, default: &str) -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var(var).unwrap_or_else(|_| default.to_owned()));
    path.exists().then_some(path)
}

/// A WebDriver session in headless Chromium.
pub struct Chromium {
    closed: bool,
    driver: ChildProc,
    base: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Chromium {
    /// Starts chromedriver and a headless Chromium session.
    pub async fn start(tools: &Tools) -> Chromium {
        let (chromium, chromedriver) = (&tools.chromium, &tools.chromedriver);
        let port = free_port();
        let mut cmd = Command::new(chromedriver);
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            // Its own process group, which the browser's processes join: see `Drop`.
            .process_group(0);
        let driver = ChildProc::spawn("chromedriver", cmd);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let root = format!("http://127.0.0.1:{port}");
        eventually(Duration::from_secs(20), "chromedriver answers", || async {
            http.get(format!("{root}/status")).send().await.is_ok()
        })
        .await;
        let profile = tempfile::tempdir().unwrap();
        // The flags keep Chromium off the network it would otherwise call at start (this
        // machine has none) and out of a sandbox that needs privileges a test does not have.
        let args = [
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let created: Value = http
            .post(format!("{root}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": chromium, "args": args},
            }}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_owned();
        Chromium {
            closed: false,
            driver,
            base: format!("{root}/session/{id}"),
            http,
            _profile: profile,
        }
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let answer: Value = req.send().await.unwrap().json().await.unwrap();
        assert!(
            answer["value"].get("error").is_none(),
            "WebDriver {path}: {answer}"
        );
        answer["value"].clone()
    }

    pub async fn size(&self, width: u32, height: u32) {
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    pub async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// Runs `script` in the page (through the DevTools protocol, so the page's own
    /// Content-Security-Policy, which forbids scripts, does not apply) and returns its value.
    pub async fn eval(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// A PNG of the viewport, kept in `keep` when given.
    pub async fn screenshot(&self, name: &str, keep: Option<&Path>) -> Vec<u8> {
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        if let Some(dir) = keep {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(name), &png).unwrap();
        }
        png
    }

    /// Opens a new tab and makes it the current one; returns its handle.
    pub async fn new_tab(&self) -> String {
        let tab = self
            .call(
                reqwest::Method::POST,
                "/window/new",
                Some(json!({"type": "tab"})),
            )
            .await;
        let handle = tab["handle"].as_str().expect("a window handle").to_owned();
        self.switch_to(&handle).await;
        handle
    }

    /// The current tab's handle.
    pub async fn tab(&self) -> String {
        let h = self.call(reqwest::Method::GET, "/window", None).await;
        h.as_str().expect("a window handle").to_owned()
    }

    /// Makes tab `handle` the current one.
    pub async fn switch_to(&self, handle: &str) {
        self.call(
            reqwest::Method::POST,
            "/window",
            Some(json!({"handle": handle})),
        )
        .await;
    }

    /// Ends the session and stops chromedriver.
    pub async fn close(mut self) {
        self.call(reqwest::Method::DELETE, "", None).await;
        self.driver.terminate(Duration::from_secs(5));
        self.closed = true;
    }
}

impl Drop for Chromium {
    /// A test that fails before `close` must leave no browser behind: chromedriver's process
    /// group (the browser's processes are in it) is killed.
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        if let Some(pid) = self.driver.id() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
    }
}
