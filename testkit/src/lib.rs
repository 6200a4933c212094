//! Test harness: real PostgreSQL, the real Stickyfarm binaries, real loopback sockets.
//!
//! Each test gets its own database on the server named by `DATABASE_URL` (scripts/postgres up
//! prints one); every process and task a test starts is stopped when its handle drops.
#![allow(missing_docs)]

pub mod chromium;
pub mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject as _;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Where the tests' PostgreSQL is. There is no silent skip: without it the tests fail and say
/// how to start one.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "DATABASE_URL is not set: these tests need a real PostgreSQL. \
             Start one with `scripts/postgres up` and export the URL it prints."
        )
    })
}

fn with_database(url: &str, db: &str) -> String {
    let (base, _) = url
        .rsplit_once('/')
        .expect("DATABASE_URL ends with /DBNAME");
    format!("{base}/{db}")
}

/// A database of its own, dropped at the end of the test.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let admin = admin_url();
        let name = format!("sf_test_{}", uuid::Uuid::new_v4().simple());
        let conn = PgPoolOptions::new()
            .max_connections(1)
            .connect(&admin)
            .await
            .expect("connecting to DATABASE_URL");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&conn)
            .await
            .expect("CREATE DATABASE (the user needs CREATEDB)");
        conn.close().await;
        let url = with_database(&admin, &name);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .unwrap();
        TestDb { name, url, pool }
    }

    /// The URL of this database reached through another port (a [`PgProxy`]).
    pub fn url_via(&self, port: u16) -> String {
        let pg_port = pg_port(&self.url);
        self.url
            .replace(&format!(":{pg_port}/"), &format!(":{port}/"))
    }

    /// PostgreSQL's own address.
    pub fn pg_addr(&self) -> SocketAddr {
        let host_port = self
            .url
            .rsplit_once('@')
            .unwrap()
            .1
            .split('/')
            .next()
            .unwrap();
        let host_port = host_port.replace("localhost", "127.0.0.1");
        host_port
            .parse()
            .expect("DATABASE_URL with a numeric host:port")
    }

    /// `(version, doc as text)` of one table, straight from PostgreSQL.
    pub async fn table(&self, session: &str, table: &str) -> Option<(i64, serde_json::Value)> {
        let id = stored_uuid(session);
        sqlx::query_as::<_, (i64, serde_json::Value)>(
            "SELECT version, doc FROM stickyfarm_session_tables WHERE session_id = $1 AND name = $2",
        )
        .bind(id)
        .bind(table)
        .fetch_optional(&self.pool)
        .await
        .unwrap()
    }

    pub async fn session_exists(&self, session: &str) -> bool {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM stickyfarm_sessions WHERE id = $1)",
        )
        .bind(stored_uuid(session))
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    pub async fn session_count(&self) -> i64 {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM stickyfarm_sessions")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: use a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(conn) = PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&admin_url())
                    .await
                {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&conn)
                    .await;
                }
            });
        })
        .join();
    }
}

fn pg_port(url: &str) -> u16 {
    let host_port = url.rsplit_once('@').unwrap().1.split('/').next().unwrap();
    host_port.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// The id PostgreSQL holds for the session whose cookie value is `session`, under the test
/// sidecars' key: sessions are stored by a keyed hash of their id, never by the id itself.
pub fn stored_uuid(session: &str) -> uuid::Uuid {
    stored_uuid_with(SESSION_ID_KEY, session)
}

/// The same under another farm's key (the text of its key file or Secret).
pub fn stored_uuid_with(key: &str, session: &str) -> uuid::Uuid {
    let id: stickyfarm_api::SessionId = session.parse().expect("a session id");
    stickyfarm_api::SessionIdKey::new(key.trim().as_bytes())
        .stored(&id)
        .as_uuid()
}

/// A free loopback port for a child process to listen on (outside the ephemeral range, so no
/// client connection can take it first).
pub fn free_port() -> u16 {
    farmctl::ports::free_port([127, 0, 0, 1].into()).expect("a free loopback port")
}

/// A workspace binary, next to the test executable (`target/<profile>/NAME`).
///
/// `cargo test --workspace` builds every binary before running any test; a test run for one
/// package alone may not have, and then this says what to build.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build -p {name}) or run cargo test --workspace",
        path.display()
    );
    path
}

/// A child process of a test, its stderr in a log file; killed when dropped (and its log
/// printed when the test is failing).
pub struct ChildProc {
    label: String,
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ChildProc {
    /// Spawns `cmd` with stdout and stderr to a log file.
    pub fn spawn(label: &str, mut cmd: Command) -> ChildProc {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(format!("{label}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .env("RUST_LOG", "info")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {label}: {e}"));
        ChildProc {
            label: label.to_owned(),
            child: Some(child),
            log,
            _dir: dir,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id, while the process has not been waited for.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Panics with the process's log if it has exited (so a test fails at once, with the
    /// reason, instead of waiting for something that will never answer).
    pub fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            panic!(
                "{} exited ({status}); its log:\n{}",
                self.label,
                self.log_text()
            );
        }
    }

    /// How the process exited, if it has.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL: the process dies without any cleanup, like a crashed pod.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns whether it exited successfully within `within`.
    pub fn terminate(&mut self, within: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.label, self.log_text());
        }
        // SIGTERM first: a process that runs children of its own (farmctl) then stops them.
        self.terminate(Duration::from_secs(30));
    }
}

/// One metric's value from a Prometheus endpoint (summed over the label sets containing
/// `labels`).
pub async fn scrape_metric(admin: SocketAddr, name: &str, labels: &str) -> f64 {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    stickyfarm_api::metrics::sample_sum(&text, name, labels)
}

/// The admin token every test gateway takes unit actions with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef0123456789abcdef";
/// The gateway token every test gateway sends and every test sidecar expects (one farm).
pub const GATEWAY_TOKEN: &str = "test-gateway-token-0123456789abcdef0123456789abcdef";
/// The session-id key every test sidecar stores sessions with (one farm).
pub const SESSION_ID_KEY: &str = "test-session-id-key-0123456789abcdef0123456789abcdef";

/// A private folder holding `token` as `name`, removed when dropped.
fn token_dir(name: &str, token: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, token).unwrap();
    (dir, path.display().to_string())
}

/// Whether `extra` already gives `flag` (the test chose its own value).
fn has_flag(extra: &[impl AsRef<str>], flag: &str) -> bool {
    extra.iter().any(|a| a.as_ref() == flag)
}

/// The sidecar binary as a child process.
pub struct SidecarProc {
    pub unit: String,
    pub instance: String,
    pub public: SocketAddr,
    pub api: SocketAddr,
    pub admin: SocketAddr,
    pub process: ChildProc,
    _tokens: tempfile::TempDir,
}

pub struct SidecarSpec<'a> {
    pub unit: &'a str,
    pub database_url: &'a str,
    pub app: SocketAddr,
    pub extra: Vec<String>,
    pub instance: Option<String>,
}

impl SidecarProc {
    pub async fn start(spec: SidecarSpec<'_>) -> SidecarProc {
        let instance = spec
            .instance
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let (public, api, admin) = (free_port(), free_port(), free_port());
        let mut cmd = Command::new(binary("stickyfarm-sidecar"));
        cmd.args(["--listen", &format!("127.0.0.1:{public}")])
            .args(["--api-listen", &format!("127.0.0.1:{api}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--app-url", &format!("http://{}", spec.app)])
            .args(["--unit", spec.unit])
            .args(["--pod-uid", &instance])
            .args(&spec.extra)
            .env("DATABASE_URL", spec.database_url);
        // The farm's gateway token, as the operator mounts it, unless the test gives its own.
        let (tokens, gateway_token) = token_dir("gateway-token", GATEWAY_TOKEN);
        if !has_flag(&spec.extra, "--gateway-token-file") {
            cmd.args(["--gateway-token-file", &gateway_token]);
        }
        // The farm's session-id key, likewise.
        let key_file = tokens.path().join("session-id-key");
        std::fs::write(&key_file, SESSION_ID_KEY).unwrap();
        if !has_flag(&spec.extra, "--session-id-key-file") {
            cmd.arg("--session-id-key-file").arg(&key_file);
        }
        let p = SidecarProc {
            unit: spec.unit.to_owned(),
            instance,
            public: ([127, 0, 0, 1], public).into(),
            api: ([127, 0, 0, 1], api).into(),
            admin: ([127, 0, 0, 1], admin).into(),
            process: ChildProc::spawn(&format!("sidecar {}", spec.unit), cmd),
            _tokens: tokens,
        };
        // Started means hearing other units' writes too: a unit answers before its invalidation
        // listener has connected, and until then it keeps no copy in its cache, which a test
        // counting PostgreSQL loads would see.
        let hears = !spec
            .extra
            .windows(2)
            .any(|w| w[0] == "--listen-invalidations" && w[1] == "false");
        p.wait_listening(hears).await;
        p
    }

    async fn wait_listening(&self, hears: bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if TcpStream::connect(self.admin).await.is_ok()
                && TcpStream::connect(self.public).await.is_ok()
                && (!hears
                    || self
                        .metric("stickyfarm_sidecar_invalidation_listener_connected", "")
                        .await
                        == 1.0)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "sidecar {} did not start (or its invalidation listener did not connect) in 30 s; log:\n{}",
            self.unit,
            self.log_text()
        );
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.public, path)
    }

    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}{}", self.api, path)
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        scrape_metric(self.admin, name, labels).await
    }

    /// SIGKILL, like a crashed pod.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGTERM and wait; whether it exited successfully within `within`.
    pub fn terminate(&mut self, within: Duration) -> bool {
        self.process.terminate(within)
    }
}

/// A client that keeps cookies the way a browser does (one jar, every Set-Cookie applied), but
/// lets a test read and change them.
#[derive(Clone, Default)]
pub struct Browser {
    pub cookies: BTreeMap<String, String>,
    client: reqwest::Client,
}

pub struct Page {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Page {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }
}

impl Browser {
    pub fn new() -> Self {
        Browser {
            cookies: BTreeMap::new(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        }
    }

    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }

    /// The `Cookie` header this browser sends.
    pub fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub async fn request(&mut self, method: reqwest::Method, url: &str) -> Page {
        self.send(method, url, None).await
    }

    /// A request with this browser's cookies and an optional JSON body; keeps what it sets.
    pub async fn send(
        &mut self,
        method: reqwest::Method,
        url: &str,
        json: Option<&serde_json::Value>,
    ) -> Page {
        let mut req = self.client.request(method, url);
        if let Some(body) = json {
            req = req.json(body);
        }
        self.finish(req).await
    }

    /// A form POST (`application/x-www-form-urlencoded`), as a page's `<form>` sends it. The
    /// answer (typically a redirect) is returned as it is, not followed, so the cookies it sets
    /// are kept as a browser keeps them before it follows.
    pub async fn post_form(&mut self, url: &str, fields: &[(&str, &str)]) -> Page {
        let body: String = fields
            .iter()
            .map(|(k, v)| format!("{}={}", form_escape(k), form_escape(v)))
            .collect::<Vec<_>>()
            .join("&");
        let no_redirects = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let req = no_redirects
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        self.finish(req).await
    }

    async fn finish(&mut self, mut req: reqwest::RequestBuilder) -> Page {
        if !self.cookies.is_empty() {
            req = req.header("cookie", self.cookie_header());
        }
        let resp = req.send().await.expect("request failed");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        for sc in headers.get_all("set-cookie") {
            let pair = sc.to_str().unwrap().split(';').next().unwrap();
            let (k, v) = pair.split_once('=').unwrap();
            self.cookies
                .insert(k.trim().to_owned(), v.trim().to_owned());
        }
        let body = resp.text().await.unwrap();
        Page {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&mut self, url: &str) -> Page {
        self.request(reqwest::Method::GET, url).await
    }

    pub async fn post(&mut self, url: &str) -> Page {
        self.request(reqwest::Method::POST, url).await
    }
}

/// `application/x-www-form-urlencoded` escaping of one key or value.
fn form_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                (b as char).to_string()
            }
            b' ' => "+".to_owned(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The test app behind the sidecars: it keeps a cart in the session API, the way a real app
/// must (never in its own memory).
///
/// - `GET /echo`: the Stickyfarm headers (and `x-request-id`) it received, as JSON.
/// - `GET /cart`: the cart as the app reads it through the session API.
/// - `POST /cart/add?item=X[&delay_ms=N]`: read-modify-write of the cart with `If-Match`
///   (after a pause of N ms when asked: an app still busy when its pod is stopped).
/// - `POST /upload`: how many body bytes reached the app.
/// - `GET /fail`: 500, as an app answers input it cannot handle (any client can ask for it).
/// - `GET /forged-unavailable`: 503 with the sidecar's unit-unavailable signal, as an app that
///   tries to get its unit taken out.
/// - `GET /ws`: a WebSocket. Its first message is `{"session", "unit", "items"}` (the cart as
///   this unit reads it); then it echoes every text and binary message (pings are answered).
pub struct TestApp {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
}

#[derive(Clone)]
struct AppState {
    /// The session API of the sidecar in front of this app, set once it is known.
    api: Arc<std::sync::Mutex<Option<SocketAddr>>>,
    client: reqwest::Client,
}

impl TestApp {
    pub async fn start() -> (TestApp, Arc<std::sync::Mutex<Option<SocketAddr>>>) {
        let api = Arc::new(std::sync::Mutex::new(None));
        let state = AppState {
            api: api.clone(),
            client: reqwest::Client::new(),
        };
        let router = Router::new()
            .route("/echo", get(echo))
            .route("/cart", get(cart))
            .route("/ws", get(websocket))
            .route("/cart/add", post(cart_add))
            .route("/sign-in", post(sign_in))
            .route(
                "/upload",
                post(|body: axum::body::Bytes| async move {
                    format!("received {} bytes\n", body.len())
                }),
            )
            .route(
                "/fail",
                get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "the app failed\n") }),
            )
            .route(
                "/forged-unavailable",
                get(|| async {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [(stickyfarm_api::headers::UNIT_UNAVAILABLE, "app")],
                        "the app says its unit is unavailable\n",
                    )
                }),
            )
            .with_state(state);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, mut rx) = watch::channel(false);
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
        });
        (TestApp { addr, stop }, api)
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop();
    }
}

fn stickyfarm_headers(h: &HeaderMap) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (k, v) in h {
        if k.as_str().starts_with("x-stickyfarm-")
            || k == "x-request-id"
            || k == "traceparent"
            || k == "tracestate"
        {
            m.insert(
                k.as_str().to_owned(),
                v.to_str().unwrap_or("<binary>").into(),
            );
        }
    }
    serde_json::Value::Object(m)
}

async fn echo(h: HeaderMap) -> axum::Json<serde_json::Value> {
    axum::Json(stickyfarm_headers(&h))
}

fn api_base(state: &AppState) -> String {
    format!(
        "http://{}",
        state
            .api
            .lock()
            .unwrap()
            .expect("app's sidecar API address set")
    )
}

/// The cart of session `sid` as the app reads it through the session API, and its version.
async fn read_cart(state: &AppState, sid: &str) -> (serde_json::Value, Option<String>) {
    let r = state
        .client
        .get(format!("{}/v1/sessions/{sid}/tables/cart", api_base(state)))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let version = r
        .headers()
        .get("x-stickyfarm-version")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = r.text().await.unwrap();
    let items: serde_json::Value = if status == 200 {
        serde_json::from_str(&body).unwrap()
    } else {
        serde_json::json!([])
    };
    (items, version)
}

async fn cart(State(state): State<AppState>, h: HeaderMap) -> axum::response::Response {
    use axum::response::IntoResponse;
    let sid = h["x-stickyfarm-session"].to_str().unwrap().to_owned();
    let (items, version) = read_cart(&state, &sid).await;
    axum::Json(serde_json::json!({
        "items": items, "version": version, "unit": h["x-stickyfarm-unit"].to_str().unwrap(),
        "unit_url": h["x-stickyfarm-unit-url"].to_str().unwrap(), "session": sid,
    }))
    .into_response()
}

/// `GET /ws`: the server side of the WebSocket handshake (RFC 6455 §4.2.2), then a hello with
/// the session and an echo of every message.
async fn websocket(
    State(state): State<AppState>,
    mut req: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, protocol::Role};
    let h = req.headers();
    let asks = h
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let Some(key) = h.get("sec-websocket-key").filter(|_| asks) else {
        return (StatusCode::BAD_REQUEST, "a WebSocket upgrade is expected\n").into_response();
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let sid = h["x-stickyfarm-session"].to_str().unwrap().to_owned();
    let unit = h["x-stickyfarm-unit"].to_str().unwrap().to_owned();
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let io = hyper_util::rt::TokioIo::new(upgraded);
        let mut ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        let (items, _) = read_cart(&state, &sid).await;
        let hello = serde_json::json!({ "session": sid, "unit": unit, "items": items });
        if ws.send(Message::text(hello.to_string())).await.is_err() {
            return;
        }
        while let Some(Ok(m)) = ws.next().await {
            let echo = match m {
                Message::Text(_) | Message::Binary(_) => m,
                Message::Close(_) => break,
                _ => continue,
            };
            if ws.send(echo).await.is_err() {
                return;
            }
        }
        // The closing handshake: tungstenite queued its answer to the client's close frame;
        // it goes out with a flush.
        let _ = ws.flush().await;
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-accept", accept.as_str()),
        ],
    )
        .into_response()
}

/// Conflicts the test app's read-modify-write tolerates before it gives up with 409.
const MAX_CONFLICTS: u32 = 50;

/// Rotates the session id (as an app does on sign-in) and answers the new one.
async fn sign_in(State(state): State<AppState>, h: HeaderMap) -> axum::response::Response {
    use axum::response::IntoResponse;
    let sid = h["x-stickyfarm-session"].to_str().unwrap().to_owned();
    let r = state
        .client
        .post(format!("{}/v1/sessions/{sid}/rotate", api_base(&state)))
        .send()
        .await
        .unwrap();
    let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
    (status, r.text().await.unwrap()).into_response()
}

async fn cart_add(
    State(state): State<AppState>,
    h: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<BTreeMap<String, String>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let sid = h["x-stickyfarm-session"].to_str().unwrap().to_owned();
    // An app still working when its pod is told to stop (`delay_ms`), before it writes.
    if let Some(ms) = q.get("delay_ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let url = format!("{}/v1/sessions/{sid}/tables/cart", api_base(&state));
    // Optimistic concurrency: retry on 409, a bounded number of times, after a random pause
    // that grows with each conflict, so tabs racing for the same cart take turns instead of
    // colliding in lockstep (what any real app's retry loop does).
    for attempt in 0..MAX_CONFLICTS {
        if attempt > 0 {
            let ceiling_ms = 2u64 << attempt.min(5);
            let pause = rand::random_range(0..=ceiling_ms);
            tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
        }
        let r = state.client.get(&url).send().await.unwrap();
        let (mut items, etag) = if r.status() == 200 {
            let etag = r.headers()["etag"].to_str().unwrap().to_owned();
            (r.json::<Vec<String>>().await.unwrap(), etag)
        } else {
            (Vec::new(), "\"0\"".to_owned())
        };
        items.push(q["item"].clone());
        let w = state
            .client
            .put(&url)
            .header("if-match", etag)
            .json(&items)
            .send()
            .await
            .unwrap();
        match w.status().as_u16() {
            200 | 201 => return axum::Json(serde_json::json!({ "items": items })).into_response(),
            409 => continue,
            s => {
                let body = w.text().await.unwrap_or_default();
                return (StatusCode::from_u16(s).unwrap(), body).into_response();
            }
        }
    }
    (
        StatusCode::CONFLICT,
        format!("gave up after {MAX_CONFLICTS} conflicts"),
    )
        .into_response()
}

/// The gateway's `--unit NAME=HOST:PORT` values for `units`.
pub fn unit_flags(units: &[Unit]) -> Vec<String> {
    units
        .iter()
        .map(|u| format!("{}={}", u.sidecar.unit, u.sidecar.public))
        .collect()
}

/// One sidecar with its own test app.
pub struct Unit {
    pub app: TestApp,
    pub sidecar: SidecarProc,
}

impl Unit {
    pub async fn start(name: &str, database_url: &str, extra: &[&str]) -> Unit {
        Self::start_with_instance(name, database_url, extra, None).await
    }

    pub async fn start_with_instance(
        name: &str,
        database_url: &str,
        extra: &[&str],
        instance: Option<String>,
    ) -> Unit {
        let (app, api_slot) = TestApp::start().await;
        let sidecar = SidecarProc::start(SidecarSpec {
            unit: name,
            database_url,
            app: app.addr,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            instance,
        })
        .await;
        *api_slot.lock().unwrap() = Some(sidecar.api);
        Unit { app, sidecar }
    }
}

/// A TCP proxy in front of PostgreSQL that a test can cut (every connection closed, new ones
/// refused), make refuse new connections only, and restore: a database that goes away and
/// comes back, on real sockets.
pub struct PgProxy {
    pub port: u16,
    state: watch::Sender<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ProxyState {
    Open,
    RefusingNew,
    Cut,
}

impl PgProxy {
    pub async fn start(target: SocketAddr) -> PgProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (state, state_rx) = watch::channel(ProxyState::Open);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if *state_rx.borrow() != ProxyState::Open {
                    drop(inbound); // refused: closed at once
                    continue;
                }
                let mut rx = state_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.wait_for(|s| *s == ProxyState::Cut) => {} // cut: both sockets close
                    }
                });
            }
        });
        PgProxy { port, state, task }
    }

    /// Every connection closed, new ones refused.
    pub fn cut(&self) {
        let _ = self.state.send(ProxyState::Cut);
    }

    /// New connections refused; the open ones keep working.
    pub fn refuse_new(&self) {
        let _ = self.state.send(ProxyState::RefusingNew);
    }

    pub fn restore(&self) {
        let _ = self.state.send(ProxyState::Open);
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

/// A certificate authority made for one test, and a server certificate it signed.
pub struct TestCa {
    /// The CA's certificate (PEM): what a client trusts.
    pub ca_pem: String,
    /// The server's certificate (PEM), for the names given.
    pub server_cert_pem: String,
    /// The server's private key (PEM).
    pub server_key_pem: String,
}

impl TestCa {
    /// Writes `tls.crt`, `tls.key` and `ca.crt` into `dir`, as a `kubernetes.io/tls` Secret
    /// holds them; returns the certificate's and the key's paths.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        std::fs::create_dir_all(dir).unwrap();
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert, &self.server_cert_pem).unwrap();
        std::fs::write(&key, &self.server_key_pem).unwrap();
        std::fs::write(dir.join("ca.crt"), &self.ca_pem).unwrap();
        (cert, key)
    }

    /// A TLS server side with the server certificate (TLS 1.2 and 1.3, no ALPN).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let certs = vec![
            rustls::pki_types::CertificateDer::from_pem_slice(self.server_cert_pem.as_bytes())
                .unwrap(),
        ];
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes())
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    /// A new CA and a server certificate for `names` (DNS names or IP addresses).
    pub fn new(names: &[&str]) -> TestCa {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Stickyfarm test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let server_key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let server = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        TestCa {
            ca_pem: ca.pem(),
            server_cert_pem: server.pem(),
            server_key_pem: server_key.serialize_pem(),
        }
    }
}

/// PostgreSQL behind TLS: answers a client's `SSLRequest`, completes the TLS handshake with a
/// [`TestCa`] server certificate, then relays the decrypted protocol to a real PostgreSQL.
/// Clients that do not ask for TLS are refused, as a `hostssl`-only server does.
pub struct PgTlsFront {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl PgTlsFront {
    pub async fn start(target: SocketAddr, ca: &TestCa) -> PgTlsFront {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let acceptor = ca.acceptor();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // SSLRequest: length 8, code 80877103.
                    let mut request = [0u8; 8];
                    if inbound.read_exact(&mut request).await.is_err()
                        || request != [0, 0, 0, 8, 4, 210, 22, 47]
                    {
                        return;
                    }
                    if inbound.write_all(b"S").await.is_err() {
                        return;
                    }
                    let Ok(mut tls) = acceptor.accept(inbound).await else {
                        return;
                    };
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut outbound).await;
                });
            }
        });
        PgTlsFront { port, task }
    }
}

impl Drop for PgTlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `check` every 50 ms until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {within:?} waiting for: {what}");
}

/// A scriptable unit for gateway tests: answers health checks as a sidecar would (or not),
/// echoes what it received as JSON, and aborts the connection without answering on paths
/// starting with `/reset` (`/reset-on/<unit>/…`: only on that unit). Counts requests by method.
pub struct FakeUnit {
    pub name: String,
    pub addr: SocketAddr,
    pub healthy: Arc<AtomicBool>,
    pub instance: Arc<std::sync::Mutex<String>>,
    counts: Arc<std::sync::Mutex<BTreeMap<String, usize>>>,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeUnit {
    pub async fn start(name: &str) -> FakeUnit {
        FakeUnit::start_with(name, None).await
    }

    /// A unit that closes a kept-alive connection when no new request arrives within
    /// `idle` (as a sidecar does after its header read timeout).
    pub async fn closing_idle_after(name: &str, idle: Duration) -> FakeUnit {
        FakeUnit::start_with(name, Some(idle)).await
    }

    async fn start_with(name: &str, idle_close: Option<Duration>) -> FakeUnit {
        use http_body_util::BodyExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let healthy = Arc::new(AtomicBool::new(true));
        let instance = Arc::new(std::sync::Mutex::new(uuid::Uuid::new_v4().to_string()));
        let counts = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (h, i, c, n) = (
            healthy.clone(),
            instance.clone(),
            counts.clone(),
            name.to_owned(),
        );
        let connections = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                connections.fetch_add(1, Ordering::SeqCst);
                let (h, i, c, n) = (h.clone(), i.clone(), c.clone(), n.clone());
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (h, i, c, n) = (h.clone(), i.clone(), c.clone(), n.clone());
                        async move {
                            let path = req.uri().path().to_owned();
                            if path == stickyfarm_api::paths::HEALTH {
                                let body = if h.load(Ordering::SeqCst) {
                                    format!(
                                        "stickyfarm-sidecar healthy\nunit: {n}\ninstance: {}\n",
                                        i.lock().unwrap()
                                    )
                                } else {
                                    "something else entirely\n".to_owned()
                                };
                                return Ok(hyper::Response::new(http_body_util::Full::new(
                                    bytes::Bytes::from(body),
                                )));
                            }
                            *c.lock()
                                .unwrap()
                                .entry(req.method().to_string())
                                .or_default() += 1;
                            if path.starts_with("/slow") {
                                tokio::time::sleep(Duration::from_millis(1500)).await;
                            }
                            // `/reset-on/<unit>/…`: only that unit resets (a unit dying mid-request
                            // while its backups are fine).
                            if let Some(rest) = path.strip_prefix("/reset-on/") {
                                if rest.split('/').next() == Some(n.as_str()) {
                                    return Err("reset on purpose");
                                }
                            } else if path.starts_with("/reset") {
                                // An error from the service makes hyper drop the connection unanswered.
                                return Err("reset on purpose");
                            }
                            let headers: BTreeMap<String, String> = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (k.to_string(), v.to_str().unwrap_or("<binary>").to_owned())
                                })
                                .collect();
                            let method = req.method().to_string();
                            let pq = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let echo = serde_json::json!({
                                "unit": n, "method": method, "path": pq, "headers": headers,
                                "body_len": body.len(),
                            });
                            Ok(hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(echo.to_string()),
                            )))
                        }
                    },
                );
                let mut builder = hyper::server::conn::http1::Builder::new();
                if let Some(idle) = idle_close {
                    builder
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(idle);
                }
                tokio::spawn(async move {
                    let _ = builder
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeUnit {
            name: name.to_owned(),
            addr,
            healthy,
            instance,
            counts,
            accepted,
            task,
        }
    }

    /// Connections it has accepted (health checks' included).
    pub fn connections_accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Requests seen with this method (health checks excluded).
    pub fn count(&self, method: &str) -> usize {
        self.counts
            .lock()
            .unwrap()
            .get(method)
            .copied()
            .unwrap_or(0)
    }

    /// Stops accepting connections: new connects are refused.
    pub fn stop(&self) {
        self.task.abort();
    }

    pub fn flag(&self) -> String {
        format!("{}={}", self.name, self.addr)
    }
}

impl Drop for FakeUnit {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The gateway binary as a child process.
pub struct GatewayProc {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The control port (unit actions with [`ADMIN_TOKEN`]).
    pub control: SocketAddr,
    pub process: ChildProc,
    _tokens: tempfile::TempDir,
}

impl GatewayProc {
    /// Starts `stickyfarm-gateway` with `units` (`NAME=HOST:PORT`) and extra flags.
    pub async fn start(units: &[String], extra: &[&str]) -> GatewayProc {
        Self::start_with_env(units, extra, &[]).await
    }

    /// [`GatewayProc::start`] with these environment variables besides the test's own.
    pub async fn start_with_env(
        units: &[String],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> GatewayProc {
        let (port, admin, control) = (free_port(), free_port(), free_port());
        let mut cmd = Command::new(binary("stickyfarm-gateway"));
        cmd.envs(env.iter().copied());
        cmd.args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--control-listen", &format!("127.0.0.1:{control}")])
            .args(["--check-jitter", "0"]);
        // The farm's tokens, as the operator mounts them, unless the test gives its own.
        let (tokens, gateway_token) = token_dir("gateway-token", GATEWAY_TOKEN);
        let admin_token = tokens.path().join("admin-token");
        std::fs::write(&admin_token, ADMIN_TOKEN).unwrap();
        if !has_flag(extra, "--admin-token-file") {
            cmd.arg("--admin-token-file").arg(&admin_token);
        }
        if !has_flag(extra, "--gateway-token-file") {
            cmd.args(["--gateway-token-file", &gateway_token]);
        }
        // Quick checks unless the test chose its own interval.
        if !extra.contains(&"--check-interval") {
            cmd.args(["--check-interval", "100ms"]);
        }
        // Clients reach it as 127.0.0.1:<port>, as a deployment would name its public host.
        if !extra.contains(&"--public-host") {
            cmd.args(["--public-host", &format!("127.0.0.1:{port}")]);
        }
        for u in units {
            cmd.args(["--unit", u]);
        }
        cmd.args(extra);
        let g = GatewayProc {
            addr: ([127, 0, 0, 1], port).into(),
            admin: ([127, 0, 0, 1], admin).into(),
            control: ([127, 0, 0, 1], control).into(),
            process: ChildProc::spawn("gateway", cmd),
            _tokens: tokens,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(g.admin).await.is_err()
            || TcpStream::connect(g.addr).await.is_err()
        {
            assert!(
                Instant::now() < deadline,
                "gateway did not start; log:\n{}",
                g.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        g
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// The status table.
    pub async fn status(&self) -> serde_json::Value {
        reqwest::get(format!("http://{}/status", self.admin))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// One unit's row of the status table.
    pub async fn unit_status(&self, unit: &str) -> serde_json::Value {
        let s = self.status().await;
        s["units"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == unit)
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    }

    /// Waits until `n` units are up.
    pub async fn wait_up(&self, n: usize) {
        eventually(
            Duration::from_secs(15),
            &format!("{n} units up"),
            || async {
                let s = self.status().await;
                s["units"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|u| u["state"] == "up")
                    .count()
                    >= n
            },
        )
        .await;
    }

    /// `POST /units/<unit>/<action>` on the control port with the admin token.
    pub async fn admin(&self, unit: &str, action: &str) -> u16 {
        self.unit_action(unit, action, Some(ADMIN_TOKEN)).await
    }

    /// `POST /units/<unit>/<action>` on the control port, with `token` as the bearer token
    /// (or no `Authorization` at all).
    pub async fn unit_action(&self, unit: &str, action: &str, token: Option<&str>) -> u16 {
        let mut req =
            reqwest::Client::new().post(format!("http://{}/units/{unit}/{action}", self.control));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send().await.unwrap().status().as_u16()
    }

    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        scrape_metric(self.admin, name, labels).await
    }
}

impl GatewayProc {
    /// A new shopper through this gateway: its first request gives it a session and a unit,
    /// then it adds `item` to the test app's cart there. Returns it and its unit.
    pub async fn shopper(&self, item: &str) -> (Browser, String) {
        let mut b = Browser::new();
        let first = b.get(&self.url("/echo")).await;
        assert_eq!(first.status, 200, "{}", first.body);
        let home = first.json()["x-stickyfarm-unit"]
            .as_str()
            .expect("the app names its unit")
            .to_owned();
        let added = b
            .post(&self.url(&format!("/_unit/{home}/cart/add?item={item}")))
            .await;
        assert_eq!(added.status, 200, "{}", added.body);
        (b, home)
    }

    /// SIGTERM and wait; whether it exited successfully within `within`.
    pub fn terminate(&mut self, within: Duration) -> bool {
        self.process.terminate(within)
    }
}

/// Sends raw bytes over a fresh connection and returns everything the server answers before
/// it closes or `within` passes.
pub async fn raw_http(addr: SocketAddr, request: &[u8], within: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// `n` slowloris clients on `addr`: each sends a request line and then one header byte every
/// 500 ms, never finishing its head, for at most `bound`. Returns how many the server cut off
/// (closed) within the bound; every connection is closed when this returns.
pub async fn slowloris(addr: SocketAddr, n: usize, bound: Duration) -> usize {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + bound;
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..n {
        clients.spawn(async move {
            let Ok(mut s) = TcpStream::connect(addr).await else {
                return false;
            };
            if s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .is_err()
            {
                return true;
            }
            let mut buf = [0u8; 512];
            while Instant::now() < deadline {
                if s.write_all(b"a").await.is_err() {
                    return true;
                }
                match tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return true,
                    // A 408 or similar before closing: keep reading until the close.
                    Ok(Ok(_)) | Err(_) => {}
                }
            }
            false
        });
    }
    let mut cut = 0;
    while let Some(r) = clients.join_next().await {
        cut += usize::from(r.unwrap_or(false));
    }
    cut
}

/// Milliseconds of the 99th percentile of `samples` (sorted in place).
pub fn p99_ms(samples: &mut [Duration]) -> f64 {
    samples.sort();
    let i = ((samples.len() as f64) * 0.99).ceil() as usize;
    samples[i.saturating_sub(1).min(samples.len() - 1)].as_secs_f64() * 1000.0
}
