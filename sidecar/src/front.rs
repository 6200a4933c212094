//! The public side of the pod: every client request passes through here on its way to the app
//! (README, "How a request flows", steps 1–3), and the gateway's health check is answered here.

use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{LengthLimitError, Limited};
use hyper::body::Body as _;
use stickyfarm_api::config::{AppProtocol, app_connection_reuse};
use stickyfarm_api::request_id;
use stickyfarm_api::token::Token;
use stickyfarm_api::trace::Traced;
use stickyfarm_api::tunnel::Tunnels;
use stickyfarm_api::upstream::h1::SendError;
use stickyfarm_api::upstream::{self, AnswerBody, Pool, Sender};
use stickyfarm_api::{
    ClientCookies, CookiePolicy, FarmCookie, Generation, SessionId, StoredId, UnitBaseUrl,
    UnitName, header_names, paths, remove_hop_by_hop, remove_stickyfarm_headers,
};
use tracing::Instrument;

use crate::cache::CachedSession;
use crate::tier::SessionTier;

/// What the front needs to serve.
pub struct Front {
    /// The session tier.
    pub tier: Arc<SessionTier>,
    /// This unit's name.
    pub unit: UnitName,
    /// Base URL used when the gateway sends none.
    pub default_unit_url: UnitBaseUrl,
    /// The farm's gateway token: `x-stickyfarm-unit-url` is taken only from requests that
    /// carry it (they came through the gateway). `None`: never taken.
    pub gateway_token: Option<Token>,
    /// The app: scheme and authority.
    pub app: http::uri::Authority,
    /// Per-request timeout towards the app.
    pub app_timeout: Duration,
    /// The farm's cookie names and attributes (shared with the gateway).
    pub cookies: CookiePolicy,
    /// Largest snapshot header in bytes.
    pub snapshot_max: usize,
    /// Largest request body forwarded to the app.
    pub max_body_size: u64,
    /// What the app speaks.
    app_protocol: AppProtocol,
    /// Pooled connections to the app (HTTP/1.1, or one shared HTTP/2 connection with h2c).
    app_connections: Arc<Pool<Body>>,
    /// The unit name and instance id as header values, made once: they never change.
    headers: (HeaderValue, HeaderValue),
    /// Upgraded connections (WebSockets) between clients and the app.
    pub tunnels: Tunnels,
    /// Cancelled when the sidecar is told to stop: from then on every new request is refused
    /// as "unit stopping" (see [`stopping`]).
    stopping: CancellationToken,
}

impl Front {
    /// A front for `unit`, serving through `tier`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tier: Arc<SessionTier>,
        unit: UnitName,
        default_unit_url: UnitBaseUrl,
        gateway_token: Option<Token>,
        app: http::uri::Authority,
        app_timeout: Duration,
        app_keep_alive: Duration,
        cookies: CookiePolicy,
        snapshot_max: usize,
        max_body_size: u64,
        tunnels: Tunnels,
    ) -> Front {
        let headers = (value(unit.as_str()), value(&tier.instance().to_string()));
        Front {
            tier,
            unit,
            default_unit_url,
            gateway_token,
            app,
            app_timeout,
            cookies,
            snapshot_max,
            max_body_size,
            app_protocol: AppProtocol::Http1,
            app_connections: Arc::new(Pool::new(
                APP_MAX_IDLE,
                app_connection_reuse(app_keep_alive),
            )),
            headers,
            tunnels,
            stopping: CancellationToken::new(),
        }
    }

    /// Refuses every new request once `stop` is cancelled.
    pub fn with_stop(mut self, stop: CancellationToken) -> Front {
        self.stopping = stop;
        self
    }

    /// Speaks `protocol` to the app.
    pub fn with_app_protocol(mut self, protocol: AppProtocol) -> Front {
        self.app_protocol = protocol;
        self
    }

    /// The version a request goes to the app in: HTTP/2 to an h2c app, except an upgrade
    /// (tunnels start as HTTP/1.1).
    fn app_version(&self, upgrade: bool) -> http::Version {
        match self.app_protocol {
            AppProtocol::H2c if !upgrade => http::Version::HTTP_2,
            _ => http::Version::HTTP_11,
        }
    }

    /// Whether a request carries the farm's gateway token: only then are the gateway's headers
    /// believed. A client that reaches the unit directly (past the NetworkPolicy, or where none
    /// is enforced) cannot choose the links the app builds.
    pub fn came_through_gateway(&self, headers: &http::HeaderMap) -> bool {
        self.gateway_token.as_ref().is_some_and(|token| {
            headers
                .get(header_names::GATEWAY_TOKEN)
                .is_some_and(|v| token.matches(v.as_bytes()))
        })
    }
}

/// The public router: the health check and the proxy to the app.
pub fn router(front: Arc<Front>) -> Router {
    Router::new()
        .route(paths::HEALTH, get(health))
        .fallback(forward)
        .with_state(front)
}

fn plain(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut r = (status, msg.into()).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// Forwards one client request to the app with its session attached, under its request id
/// (the gateway's, or a new one for a request that did not come through a gateway).
async fn forward(State(front): State<Arc<Front>>, mut req: Request) -> Response {
    if front.stopping.is_cancelled() {
        return stopping();
    }
    let id = request_id::ensure(req.headers_mut());
    let span = tracing::info_span!("request", request_id = id.to_str().unwrap_or_default());
    // With trace export on, the gateway's trace continues here.
    let traced = Traced::request("request", req.headers());
    let mut resp = traced
        .run(forward_request(front, req).instrument(span))
        .await;
    resp.headers_mut().insert(request_id::NAME, id);
    resp
}

async fn forward_request(front: Arc<Front>, mut req: Request) -> Response {
    if paths::is_internal(req.uri().path()) {
        return plain(StatusCode::NOT_FOUND, "unknown Stickyfarm path\n");
    }
    if declared_length(req.headers()).is_some_and(|len| len > front.max_body_size) {
        return body_too_large(front.max_body_size);
    }
    let cookies = front.cookies.parse(
        req.headers()
            .get_all(header::COOKIE)
            .iter()
            .map(|v| v.as_bytes()),
    );
    let from_gateway = front.came_through_gateway(req.headers());
    // Rebalancing: the gateway would move this session to a less loaded unit if it is idle
    // here. Checked before the session is resolved, which counts as a use.
    if let Some(idle_ms) = from_gateway
        .then(|| req.headers().get(header_names::RELEASE_IF_IDLE))
        .flatten()
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && let Some(id) = &cookies.session
        && front.tier.release_if_idle(id, idle_ms).await
    {
        return released();
    }
    let resolved = match front.tier.resolve(&cookies).await {
        Ok(r) => r,
        Err(e) if e.is_unavailable() => {
            tracing::warn!(error = %e, "cannot resolve the session: PostgreSQL unavailable");
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "session store unavailable; retry shortly\n",
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot resolve the session");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "session error\n");
        }
    };
    let id = resolved.id;
    // The unit the gateway would fail this session over to: the app's writes during this
    // request announce it, and it keeps a warm copy (`crate::warm`).
    let _backup = from_gateway
        .then(|| req.headers().get(header_names::BACKUP))
        .flatten()
        .and_then(|v| v.to_str().ok()?.parse::<UnitName>().ok())
        .and_then(|backup| {
            front
                .tier
                .hint_backup(&id, resolved.session.as_ref(), backup)
        });
    tracing::debug!(
        cached = resolved.session.is_some(),
        "session resolved; forwarding to the app"
    );
    // A WebSocket (any HTTP/1.1 upgrade): the client's end of the tunnel, should the app
    // switch protocols. The session is attached to the upgrade request like to any other.
    let upgrade = stickyfarm_api::upgrade_protocol(&req);
    if upgrade.is_some() && front.tunnels.full() {
        tracing::warn!("refusing an upgrade: as many tunnels as --max-connections are open");
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many open WebSockets on this unit; retry shortly\n",
        );
    }
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));

    let (mut parts, body) = req.into_parts();
    let unit_url = from_gateway
        .then(|| parts.headers.get(header_names::UNIT_URL))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<UnitBaseUrl>().ok())
        .unwrap_or_else(|| front.default_unit_url.clone());
    remove_hop_by_hop(&mut parts.headers);
    remove_stickyfarm_headers(&mut parts.headers);
    if let Some(protocol) = &upgrade {
        ask_to_switch(&mut parts.headers, protocol);
    }
    let h = &mut parts.headers;
    h.insert(
        header_names::SESSION,
        value(id.encode(&mut [0; SessionId::TEXT_LEN])),
    );
    h.insert(header_names::UNIT, front.headers.0.clone());
    h.insert(header_names::UNIT_URL, value(unit_url.as_str()));
    h.insert(header_names::INSTANCE, front.headers.1.clone());
    // A session without state (just issued, or pending its first write) is generation 0 with
    // no tables: the app sees it exactly like an empty stored one.
    let empty;
    let session: &CachedSession = match &resolved.session {
        Some(e) => e,
        None => {
            empty = CachedSession::new(0, Default::default());
            &empty
        }
    };
    h.insert(
        header_names::GENERATION,
        value(itoa::Buffer::new().format(session.generation)),
    );
    if front.snapshot_max > 0
        && let Some(snap) = session.snapshot_header(id, front.snapshot_max)
    {
        // The encoded text becomes the header's bytes as it is: no second copy.
        h.insert(
            header_names::SNAPSHOT,
            HeaderValue::from_maybe_shared(bytes::Bytes::from(snap))
                .expect("base64url is visible ASCII"),
        );
    }
    let served_generation = session.generation;
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let client_version = parts.version;
    parts.version = front.app_version(upgrade.is_some());
    parts.uri = match app_target(&front.app, path_and_query, parts.version) {
        Ok(u) => u,
        Err(_) => return plain(StatusCode::BAD_REQUEST, "malformed request target\n"),
    };
    // HTTP/1.1 names the host in a header: the client's when it sent one, else the app's
    // (an HTTP/2 client names it in the target, which the app does not get over HTTP/1.1).
    if parts.version == http::Version::HTTP_11 && !parts.headers.contains_key(header::HOST) {
        parts
            .headers
            .insert(header::HOST, value(front.app.as_str()));
    }
    drop(resolved);
    // The app continues the trace under this span (its `traceparent` names it).
    let app = Traced::phase("app");
    app.inject(&mut parts.headers);
    let (mut response, connection) = match app
        .run(ask_app(&front, parts, body, upgrade.is_some()))
        .await
    {
        Ok(r) => r,
        Err(refusal) => return refusal,
    };
    let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switched {
        let (Some(client), Some(protocol)) = (client_upgrade, &upgrade) else {
            tracing::warn!("the app switched protocols for a request that asked for no upgrade");
            return plain(StatusCode::BAD_GATEWAY, "the app answered 101 unasked\n");
        };
        let websocket = protocol.as_bytes().eq_ignore_ascii_case(b"websocket");
        front.tunnels.spawn(
            client,
            hyper::upgrade::on(&mut response),
            websocket,
            |end| tracing::debug!(end = end.as_str(), "a tunnel to the app ended"),
        );
    }
    let (mut parts, body) = response.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    if let (true, Some(protocol)) = (switched, &upgrade) {
        ask_to_switch(&mut parts.headers, protocol);
    }
    // The unit-unavailable signal is the sidecar's alone: the gateway takes the unit out on it,
    // so an app (or a client that makes the app echo headers) must not be able to send it.
    parts.headers.remove(header_names::UNIT_UNAVAILABLE);
    // Answer in the client's protocol version, whatever the app spoke to us.
    parts.version = client_version;

    // The app may have rotated the session (sign-in, sign-out): the client gets the new id.
    let id = front.tier.rotated(&id).unwrap_or(id);
    // The app may have written during the request: hand out the newest generation this unit
    // knows, so the client can prove it to any unit it reaches next.
    let generation = match front.tier.cached(&id).await {
        Some(e) => e.generation.max(served_generation),
        None => served_generation,
    };
    set_cookies(
        &front,
        &cookies,
        id,
        Generation(generation),
        &mut parts.headers,
    );
    if switched {
        // The connection is the app's end of the tunnel now, never pooled again.
        drop(connection);
        return Response::from_parts(parts, Body::new(body));
    }
    match (body, connection) {
        (AnswerBody::Hyper(body), Some(connection)) => {
            let body = upstream::returning(body, connection, front.app_connections.clone());
            Response::from_parts(parts, Body::new(body))
        }
        // The sidecar's own client hands its connection back by itself.
        (body, _) => Response::from_parts(parts, Body::new(body)),
    }
}

/// The request target the app gets: origin form over HTTP/1.1 (`/path?query`, as a server
/// expects it from a client), the full URI over HTTP/2 (its `:scheme` and `:authority`).
fn app_target(
    app: &http::uri::Authority,
    path_and_query: String,
    version: http::Version,
) -> Result<http::Uri, http::Error> {
    let target = http::Uri::builder();
    let target = if version == http::Version::HTTP_2 {
        target.scheme("http").authority(app.clone())
    } else {
        target
    };
    target.path_and_query(path_and_query).build()
}

/// `Connection: upgrade` and `Upgrade: <protocol>`, hop-by-hop and so removed with the rest,
/// put back on the hop that switches.
fn ask_to_switch(h: &mut http::HeaderMap, protocol: &HeaderValue) {
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, protocol.clone());
}

/// Why the app gave no answer.
enum AppFailure {
    /// Nothing reached the app (it refused the connection, or closed a new one unused).
    Refused(String),
    /// The client's body passed `--max-body-size`.
    BodyTooLarge,
    /// The connection broke before an answer.
    Broken(Box<dyn std::error::Error + Send + Sync>),
    /// No answer within `--app-timeout`.
    Timeout,
}

/// How long opening a connection to the app may take: it is on the same pod, so a connect that
/// takes longer means the app is not listening (then the gateway asks another unit).
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Idle connections kept to the app. At most as many as requests were in flight at once,
/// which the client connections (`--max-connections`) bound already; an idle connection
/// costs a descriptor on each side and nothing else.
const APP_MAX_IDLE: usize = 1024;

/// The app's answer, and hyper's connection it came on (back to the pool once the body is
/// read; the sidecar's own client hands its connection back by itself).
type AppAnswer = (http::Response<AnswerBody>, Option<Sender<Body>>);

/// Phase "ask the app": sends the request and returns the app's answer, or the answer the
/// client gets instead. A bodiless safe request (GET, HEAD, OPTIONS) whose connection broke
/// before an answer is sent once more on a new connection: a pooled connection the app closed
/// as it stopped (a pod shutting down) must not fail a request that never reached its handler
/// or that can be repeated.
async fn ask_app(
    front: &Front,
    parts: http::request::Parts,
    body: Body,
    upgrade: bool,
) -> Result<AppAnswer, Response> {
    let repeatable = is_safe(&parts.method) && body.is_end_stream();
    if repeatable && !upgrade && parts.version == http::Version::HTTP_11 {
        // The own HTTP/1.1 client (`upstream::h1`) only reads the head: asking again needs
        // no copy of it.
        let outcome = match send_own(front, &parts, false).await {
            Err(AppFailure::Broken(e)) => {
                tracing::info!(error = %e, "the connection to the app broke; asking once more on a new one");
                send_own(front, &parts, true).await
            }
            outcome => outcome,
        };
        return outcome.map_err(|failure| app_failure_answer(front, failure, repeatable));
    }
    let replay = repeatable.then(|| {
        let mut again = Request::new(Body::empty());
        *again.method_mut() = parts.method.clone();
        *again.uri_mut() = parts.uri.clone();
        *again.version_mut() = parts.version;
        *again.headers_mut() = parts.headers.clone();
        again
    });
    // A streamed body is cut off where it passes the limit (then 413). What the app does not
    // read (it refused the connection, or answered first) the listener reads and drops, so
    // the gateway gets to read the answer (`listener::RequestBody`).
    let body = Body::new(Limited::new(body, front.max_body_size as usize));
    let first = send_to_app(front, Request::from_parts(parts, body), false).await;
    let outcome = match (first, replay) {
        (Err(AppFailure::Broken(e)), Some(again)) => {
            tracing::info!(error = %e, "the connection to the app broke; asking once more on a new one");
            send_to_app(front, again, true).await
        }
        (outcome, _) => outcome,
    };
    outcome.map_err(|failure| app_failure_answer(front, failure, repeatable))
}

/// Sends a bodiless request to the app by the own HTTP/1.1 client within `--app-timeout`,
/// over a pooled connection unless `fresh`. A pooled connection found closed before anything
/// was sent is replaced once by a new one, as in [`exchange`].
async fn send_own(
    front: &Front,
    head: &http::request::Parts,
    fresh: bool,
) -> Result<AppAnswer, AppFailure> {
    let exchange = async {
        let mut fresh = fresh;
        loop {
            let (conn, reused) = front
                .app_connections
                .checkout_own(front.app.as_str(), APP_CONNECT_TIMEOUT, fresh)
                .await
                .map_err(|e| AppFailure::Refused(e.to_string()))?;
            let idle = front.app_connections.own_idle();
            match conn.send(head, &Bytes::new(), idle).await {
                Ok(answer) => return Ok((answer.map(AnswerBody::Own), None)),
                Err(SendError::NotSent(_)) if reused => fresh = true,
                Err(SendError::NotSent(e)) => return Err(AppFailure::Refused(e.to_string())),
                Err(SendError::Broken(e)) => return Err(AppFailure::Broken(e.into())),
            }
        }
    };
    tokio::time::timeout(front.app_timeout, exchange)
        .await
        .unwrap_or(Err(AppFailure::Timeout))
}

/// Sends `req` to the app within `--app-timeout`, over a pooled connection unless `fresh`.
async fn send_to_app(front: &Front, req: Request, fresh: bool) -> Result<AppAnswer, AppFailure> {
    tokio::time::timeout(front.app_timeout, exchange(front, req, fresh))
        .await
        .unwrap_or(Err(AppFailure::Timeout))
}

/// One exchange with the app. A request that a pooled connection hands back unsent (the app
/// had closed it while it idled) goes once more over a new connection, whatever its method:
/// nothing of it reached the app, and its body is still unread.
async fn exchange(
    front: &Front,
    mut req: Request,
    mut fresh: bool,
) -> Result<AppAnswer, AppFailure> {
    let http2 = req.version() == http::Version::HTTP_2;
    loop {
        let checkout = front
            .app_connections
            .checkout(front.app.as_str(), APP_CONNECT_TIMEOUT, fresh, http2)
            .await
            .map_err(|e| AppFailure::Refused(e.to_string()))?;
        let mut sender = checkout.sender;
        let mut failed = match sender.try_send_request(req).await {
            Ok(answer) => return Ok((answer.map(AnswerBody::Hyper), Some(sender))),
            Err(e) => e,
        };
        match failed.take_message() {
            Some(unsent) if checkout.reused => {
                req = unsent;
                fresh = true;
            }
            Some(_) => return Err(AppFailure::Refused(failed.into_error().to_string())),
            None if passed_body_limit(failed.error()) => return Err(AppFailure::BodyTooLarge),
            None => return Err(AppFailure::Broken(failed.into_error().into())),
        }
    }
}

/// The answer when the app gave none. `repeatable`: a safe request without a body, which
/// another unit may answer whatever this app did with it.
fn app_failure_answer(front: &Front, failure: AppFailure, repeatable: bool) -> Response {
    match failure {
        AppFailure::Refused(e) => {
            // Nothing reached the app: the gateway may send the request to another unit.
            tracing::warn!(error = %e, "the app refused the connection");
            unit_unavailable("the app is not accepting connections on this unit\n")
        }
        AppFailure::BodyTooLarge => body_too_large(front.max_body_size),
        AppFailure::Broken(e) if repeatable => {
            // Twice dropped: the app is stopping (a rolling update). The request is safe, so
            // the gateway may ask another unit rather than fail the client.
            tracing::warn!(error = %e, "the app did not answer twice; the gateway may ask another unit");
            unit_unavailable("the app did not answer on this unit\n")
        }
        AppFailure::Broken(e) => {
            tracing::warn!(error = %e, "the app did not answer");
            plain(StatusCode::BAD_GATEWAY, "the app did not answer\n")
        }
        AppFailure::Timeout => plain(
            StatusCode::GATEWAY_TIMEOUT,
            "the app did not answer in time\n",
        ),
    }
}

/// 503 with the signal that tells the gateway this unit cannot serve the request and that it
/// may send it elsewhere (it counts as a passive failure of the unit there).
fn unit_unavailable(msg: &str) -> Response {
    let mut r = plain(StatusCode::SERVICE_UNAVAILABLE, msg);
    r.headers_mut().insert(
        header_names::UNIT_UNAVAILABLE,
        HeaderValue::from_static("app"),
    );
    r
}

/// The answer when the session was released for rebalancing: nothing reached the app, and
/// the gateway sends the request to the less loaded unit it chose.
fn released() -> Response {
    let mut r = plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "this session moves to another unit\n",
    );
    r.headers_mut().insert(
        header_names::UNIT_UNAVAILABLE,
        HeaderValue::from_static(stickyfarm_api::RELEASED),
    );
    r
}

/// The answer to a request that arrives after the sidecar was told to stop (a pod being
/// deleted; its app is stopping too). Nothing of it reached the app, and the unit-unavailable
/// signal says so, so a gateway sends it to a backup whatever its method and takes the unit
/// out. `Connection: close` ends the connection after this answer: the client's next request
/// opens a new one, which the stopped listener refuses, again before anything was sent.
fn stopping() -> Response {
    let mut r = plain(StatusCode::SERVICE_UNAVAILABLE, "this unit is stopping\n");
    r.headers_mut().insert(
        header_names::UNIT_UNAVAILABLE,
        HeaderValue::from_static("stopping"),
    );
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Methods that change nothing (RFC 9110 §9.2.1): repeating one is harmless.
fn is_safe(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    )
}

/// The request's `Content-Length`, when it declares one.
fn declared_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Whether forwarding failed because the client's body passed `--max-body-size`.
fn passed_body_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<LengthLimitError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// 413 naming the limit; the connection is closed once the listener has read and dropped the
/// rest of the body (`listener::RequestBody`).
fn body_too_large(limit: u64) -> Response {
    let mut r = plain(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body too large: this unit accepts at most {limit} bytes\n"),
    );
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

fn value(s: &str) -> HeaderValue {
    // Every value here is one of our validated types: visible ASCII only.
    HeaderValue::from_str(s).expect("Stickyfarm header values are visible ASCII")
}

fn set_cookies(
    front: &Front,
    sent: &ClientCookies,
    id: SessionId,
    generation: Generation,
    out: &mut http::HeaderMap,
) {
    let instance = front.tier.instance();
    let mut set = |cookie: FarmCookie, v: String| {
        out.append(
            header::SET_COOKIE,
            value(&front.cookies.set_cookie(cookie, &v)),
        );
    };
    if sent.session != Some(id) {
        set(FarmCookie::Session, id.to_string());
    }
    if sent.instance != Some(instance) {
        set(FarmCookie::Instance, instance.to_string());
    }
    if sent.generation != Some(generation) {
        set(FarmCookie::Generation, generation.to_string());
    }
}

/// How long the health check waits for the app's port and for PostgreSQL.
const DEPENDENCY_CHECK: Duration = Duration::from_millis(500);

/// The gateway's test URL (FIG. 6): answers the fixed healthy text only when the app accepts
/// connections, PostgreSQL answers and the cache stores and returns an entry.
async fn health(State(front): State<Arc<Front>>) -> Response {
    if front.stopping.is_cancelled() {
        return stopping();
    }
    let mut failures = Vec::new();
    // Both at once, each bounded well inside the gateway's default check timeout (1 s): a
    // database that went away without closing its connections (its pod deleted) hangs the
    // ping, and the gateway should read "database: not answering" rather than time out.
    let app = front.app.as_str().to_owned();
    let (app_ok, db_ok) = tokio::join!(
        tokio::time::timeout(DEPENDENCY_CHECK, tokio::net::TcpStream::connect(app)),
        tokio::time::timeout(DEPENDENCY_CHECK, front.tier.store().ping()),
    );
    if !matches!(app_ok, Ok(Ok(_))) {
        failures.push("app: not accepting connections");
    }
    if !matches!(db_ok, Ok(Ok(()))) {
        failures.push("database: not answering");
    }
    let cache = front.tier.cache();
    cache.insert(
        StoredId::PROBE,
        CachedSession::new(crate::cache::unix_now(), Default::default()),
    );
    if cache.get(&StoredId::PROBE).await.is_none() {
        failures.push("cache: probe entry not readable");
    }
    let instance = front.tier.instance();
    let mut r = if failures.is_empty() {
        (
            StatusCode::OK,
            stickyfarm_api::healthy_answer(
                &front.unit,
                &instance,
                cache.sessions_held(),
                cache.warm().map_or(0, |w| w.entries() as u64),
            ),
        )
            .into_response()
    } else {
        tracing::warn!(?failures, "health check failed");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("stickyfarm-sidecar unhealthy\n{}\n", failures.join("\n")),
        )
            .into_response()
    };
    r.headers_mut()
        .insert(header_names::INSTANCE, front.headers.1.clone());
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
