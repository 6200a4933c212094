//! The backends every configuration shares (`stickyfarm-bench serve`): a plain web server for
//! the proxy comparison, a WebSocket echo for the WebSocket one, and, behind a sidecar, an app
//! that reads and writes session state the way a shop reads and writes its cart.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use stickyfarm_api::{SessionSnapshot, headers, paths};

/// The header that names the backend that answered.
pub const UNIT_HEADER: &str = "x-bench-unit";

/// The WebSocket that echoes every message (the WebSocket scenario).
pub const ECHO_PATH: &str = "/echo";

/// The table the app keeps its state in.
const TABLE: &str = "cart";

struct App {
    name: HeaderValue,
    page: Bytes,
    session_api: Option<String>,
    client: reqwest::Client,
}

/// Serves every `(name, address)` in `listeners` until the process is stopped, each answering
/// with its own name. One process serves all of a comparison's backends so that the load CPU
/// does the same work per request whether a proxy sends every request to one backend or spreads
/// them over all: as four processes, spreading cost that CPU a context switch per backend woken,
/// and capped the proxies that spread below what they can forward.
pub async fn serve(
    listeners: Vec<(String, SocketAddr)>,
    session_api: Option<String>,
) -> anyhow::Result<()> {
    let mut served = Vec::new();
    for (name, listen) in listeners {
        let app = Arc::new(App {
            name: HeaderValue::from_str(&name)
                .context("the backend name must be a header value")?,
            // A small page, the same for every backend and proxy.
            page: Bytes::from(format!("hello from {name}\n{}\n", "x".repeat(1000))),
            session_api: session_api.clone(),
            client: reqwest::Client::new(),
        });
        let router = Router::new()
            .route(paths::HEALTH, get(health))
            // A form post is answered with the page too (the gateway's profile-guided build trains
            // on both, `scripts/pgo-gateway`).
            .route("/hello", get(hello).post(hello))
            .route(ECHO_PATH, get(echo))
            .route("/state", get(read_state).put(write_state))
            .with_state(app);
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        served.push(async move { axum::serve(listener, router).await });
    }
    futures::future::try_join_all(served).await?;
    Ok(())
}

fn answer(app: &App, status: StatusCode, body: impl Into<Bytes>) -> Response {
    let mut r = (status, body.into()).into_response();
    r.headers_mut().insert(UNIT_HEADER, app.name.clone());
    r
}

async fn health(State(app): State<Arc<App>>) -> Response {
    // The gateway's default check expects the sidecar's answer; HAProxy only the status.
    answer(&app, StatusCode::OK, stickyfarm_api::HEALTHY_ANSWER)
}

async fn hello(State(app): State<Arc<App>>) -> Response {
    answer(&app, StatusCode::OK, app.page.clone())
}

/// `GET /echo`: the server side of the WebSocket handshake (RFC 6455 §4.2.2), then every text
/// and binary message sent back as it came.
async fn echo(State(app): State<Arc<App>>, mut req: axum::extract::Request) -> Response {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::{Message, handshake::derive_accept_key, protocol::Role};
    let h = req.headers();
    let asks = h
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let Some(key) = h.get("sec-websocket-key").filter(|_| asks) else {
        return answer(
            &app,
            StatusCode::BAD_REQUEST,
            "a WebSocket upgrade is expected\n",
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let io = hyper_util::rt::TokioIo::new(upgraded);
        let mut ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, None).await;
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
        let _ = ws.flush().await;
    });
    let mut r = answer(&app, StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    let h = r.headers_mut();
    h.insert("connection", HeaderValue::from_static("upgrade"));
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    r
}

fn session_of(h: &HeaderMap) -> Option<&str> {
    h.get(headers::SESSION)?.to_str().ok()
}

/// Reads the cart: from the snapshot the sidecar attached when it is small enough, otherwise
/// with one call to the session API (as the webstore does).
async fn read_state(State(app): State<Arc<App>>, h: HeaderMap) -> Response {
    let Some(session) = session_of(&h) else {
        return answer(
            &app,
            StatusCode::BAD_REQUEST,
            "no session: run behind the sidecar",
        );
    };
    if let Some(snap) = h.get(headers::SNAPSHOT).and_then(|v| {
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(v.as_bytes())
            .ok()?;
        serde_json::from_slice::<SessionSnapshot>(&json).ok()
    }) {
        let len = snap
            .tables
            .iter()
            .find(|(n, _)| n.as_str() == TABLE)
            .map_or(0, |(_, t)| t.doc.get().len());
        return answer(&app, StatusCode::OK, format!("{len} bytes (snapshot)\n"));
    }
    let Some(api) = &app.session_api else {
        return answer(&app, StatusCode::INTERNAL_SERVER_ERROR, "no --session-api");
    };
    match app
        .client
        .get(format!("{api}/v1/sessions/{session}/tables/{TABLE}"))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() || r.status() == StatusCode::NOT_FOUND => {
            let len = r.bytes().await.map_or(0, |b| b.len());
            answer(&app, StatusCode::OK, format!("{len} bytes (api)\n"))
        }
        Ok(r) => answer(&app, r.status(), "session API refused the read\n"),
        Err(e) => answer(&app, StatusCode::BAD_GATEWAY, format!("session API: {e}\n")),
    }
}

/// Writes the request body as the cart, through the session API (written through to
/// PostgreSQL before the API answers).
async fn write_state(State(app): State<Arc<App>>, h: HeaderMap, body: Bytes) -> Response {
    let (Some(session), Some(api)) = (session_of(&h), &app.session_api) else {
        return answer(
            &app,
            StatusCode::BAD_REQUEST,
            "no session or no --session-api",
        );
    };
    match app
        .client
        .put(format!("{api}/v1/sessions/{session}/tables/{TABLE}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => answer(&app, StatusCode::OK, "written\n"),
        Ok(r) => answer(&app, r.status(), "session API refused the write\n"),
        Err(e) => answer(&app, StatusCode::BAD_GATEWAY, format!("session API: {e}\n")),
    }
}
