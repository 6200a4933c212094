//! The reverse proxy: which unit serves a request (FIG. 4A–4C) and forwarding it there.
//!
//! Order of a request's handling:
//! 1. refuse what is malformed (Host, unit address, body size) with a clear 4xx;
//! 2. find the addressed unit (path `/_unit/<unit>/…`, host `<unit>.<farm host>`, or the
//!    `sf_unit` routing cookie), or, for a first request, balance over the units that take new
//!    sessions;
//! 3. if the unit is out of service, fail over to a backup;
//! 4. forward; bodies up to `--replay-body-max` are held so the request can go to a backup. A
//!    request that never reached the app is retried on a backup whatever its method: never
//!    sent, or answered by a sidecar with `x-stickyfarm-unit-unavailable` (its app refused the
//!    connection, as a stopping pod's does). An idempotent one (GET, HEAD, OPTIONS, TRACE, PUT,
//!    DELETE) is also replayed after a reset; anything else that may have reached the app is
//!    not;
//! 5. answer with the serving unit's address (for the app's links) and the routing cookie; an
//!    answer of the gateway's own to a request whose body it did not read closes the
//!    connection.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use stickyfarm_api::listener::RequestBody;
use stickyfarm_api::{
    CookiePolicy, FarmCookie, UnitName, headers, parse_unit_host, parse_unit_path, paths,
    remove_hop_by_hop, remove_stickyfarm_headers,
};

use crate::balance::{self, Candidate, Policy};
use crate::config::{Addressing, Failback, Scheme};
use crate::metrics::Metrics;
use crate::pool::{Sender, UpstreamBody};
use crate::ratelimit::NewSessionLimit;
use crate::units::{Farm, InFlight, Members, Unit, now_ms};

/// The body type of every answer the gateway gives.
pub type ResponseBody = BoxBody<Bytes, hyper::Error>;

/// How the proxy behaves.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// New-session policy.
    pub policy: Policy,
    /// After a failover.
    pub failback: Failback,
    /// Host-style unit addresses.
    pub farm_host: Option<String>,
    /// Address style handed to the app.
    pub addressing: Addressing,
    /// Scheme of unit URLs.
    pub scheme: Scheme,
    /// The hosts (`host[:port]`) clients reach the farm by; the first is the canonical one.
    /// Links name the request's host only when it is one of these, otherwise the first: a
    /// client's `Host` header never decides where other clients' links point. Empty: links
    /// are relative (`/_unit/<unit>`), which work under any host.
    pub public_hosts: Vec<String>,
    /// Ramp-up time.
    pub slow_start: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Time for a unit to start answering.
    pub upstream_timeout: Duration,
    /// Further units tried.
    pub max_retries: u32,
    /// Largest request body.
    pub max_body_size: u64,
    /// Largest body held in memory so an idempotent request can be replayed on a backup.
    pub replay_body_max: u64,
    /// Keep and append to the client's `X-Forwarded-For`.
    pub trust_forwarded: bool,
    /// The farm's cookie names and attributes (shared with the sidecars).
    pub cookies: CookiePolicy,
    /// New sessions (requests without a session cookie) per client address and second; 0: no
    /// limit.
    pub new_session_rate: u32,
    /// New sessions a client address may start at once.
    pub new_session_burst: u32,
    /// The farm's gateway token, sent to the units so their sidecars trust the unit base URL
    /// (`x-stickyfarm-gateway-token`); `None`: not sent.
    pub gateway_token: Option<HeaderValue>,
}

/// The proxy.
pub struct Proxy {
    farm: Arc<Farm>,
    metrics: Arc<Metrics>,
    new_sessions: Option<NewSessionLimit>,
    s: ProxySettings,
    turn: AtomicUsize,
}

/// How a request addressed its unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addressed {
    /// Not at all: a first request (unless the routing cookie names one).
    None,
    /// `/_unit/<unit>/rest`: forward `rest`.
    Path(UnitName, String),
    /// `<unit>.<farm host>`.
    Host(UnitName),
}

/// The client's address: the peer's, or with `trust_forwarded` the last hop of
/// `X-Forwarded-For` (what the trusted proxy in front of the gateway saw).
pub fn client_address(
    remote: SocketAddr,
    headers: &http::HeaderMap,
    trust_forwarded: bool,
) -> IpAddr {
    if trust_forwarded
        && let Some(ip) = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
    {
        return ip;
    }
    remote.ip()
}

/// Reads the unit address of a request. `Err` is a client error to refuse.
pub fn addressed(
    path_and_query: &str,
    host: &str,
    farm_host: Option<&str>,
) -> Result<Addressed, &'static str> {
    match parse_unit_path(path_and_query) {
        Err(_) => Err("malformed unit address: expected /_unit/<unit>/<path> without dot segments"),
        Ok(Some(p)) => {
            let rest = if p.rest.starts_with('/') {
                p.rest.to_owned()
            } else {
                format!("/{}", p.rest)
            };
            Ok(Addressed::Path(p.unit, rest))
        }
        Ok(None) => Ok(farm_host
            .and_then(|fh| parse_unit_host(host, fh))
            .map_or(Addressed::None, Addressed::Host)),
    }
}

/// The unit's external base URL, as the app must use it in links. Built from configuration
/// only: the request's host is used when it is one of the public hosts, never otherwise.
pub fn unit_url(s: &ProxySettings, unit: &UnitName, request_host: &str) -> String {
    let scheme = s.scheme.as_str();
    let public = s
        .public_hosts
        .iter()
        .find(|h| h.eq_ignore_ascii_case(request_host))
        .or(s.public_hosts.first());
    match (s.addressing, &s.farm_host) {
        (Addressing::Host, Some(farm_host)) => {
            // The port clients use is the public host's (a client's Host cannot move it).
            let port = public
                .and_then(|h| h.rsplit_once(':'))
                .filter(|(_, p)| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
                .map_or(String::new(), |(_, p)| format!(":{p}"));
            format!("{scheme}://{unit}.{farm_host}{port}")
        }
        _ => match public {
            Some(host) => format!("{scheme}://{host}{}", unit.path_prefix()),
            None => unit.path_prefix(),
        },
    }
}

/// The request's host (`:authority` or `Host`), validated.
pub fn request_host<B>(req: &Request<B>) -> Result<String, &'static str> {
    if let Some(a) = req.uri().authority() {
        return Ok(a.as_str().to_owned());
    }
    let mut values = req.headers().get_all(header::HOST).iter();
    let v = values.next().ok_or("missing Host header")?;
    if values.next().is_some() {
        return Err("more than one Host header");
    }
    let text = v.to_str().map_err(|_| "malformed Host header")?;
    let authority: http::uri::Authority = text.parse().map_err(|_| "malformed Host header")?;
    if text.contains('@') || authority.host().is_empty() {
        return Err("malformed Host header");
    }
    Ok(text.to_owned())
}

/// Marks an answer the gateway made itself (not a unit's).
#[derive(Debug, Clone, Copy)]
struct GatewayAnswer;

fn text_response(status: StatusCode, msg: &str) -> Response<ResponseBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{msg}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.extensions_mut().insert(GatewayAnswer);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// RFC 9110's idempotent methods: replaying one that may have reached the app is safe.
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// The head of a request without a body, kept to replay it.
struct Replay {
    method: Method,
    uri: Uri,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Replay {
    fn request(&self) -> Request<UpstreamBody> {
        let mut r = Request::new(full_body(self.body.clone()));
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.headers_mut() = self.headers.clone();
        r
    }
}

fn full_body(bytes: Bytes) -> UpstreamBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn empty_body() -> UpstreamBody {
    http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

impl Proxy {
    /// A proxy over `farm`.
    pub fn new(farm: Arc<Farm>, metrics: Arc<Metrics>, s: ProxySettings) -> Proxy {
        Proxy {
            farm,
            metrics,
            new_sessions: NewSessionLimit::new(s.new_session_rate, s.new_session_burst),
            s,
            turn: AtomicUsize::new(0),
        }
    }

    fn refuse(&self, status: StatusCode, kind: &'static str, msg: &str) -> Response<ResponseBody> {
        self.metrics.refused(kind);
        text_response(status, msg)
    }

    /// A unit for a new session (or a backup), avoiding `exclude`.
    fn pick_new(
        &self,
        members: &Members,
        exclude: &[UnitName],
        key: &[u8],
        deterministic: bool,
    ) -> Option<Arc<Unit>> {
        let eligible: Vec<&Arc<Unit>> = members
            .units
            .values()
            .filter(|u| u.takes_new_sessions() && !exclude.contains(u.name()))
            .collect();
        if deterministic {
            // Every request of this session, on every gateway replica, picks the same backup.
            let i = balance::rendezvous(
                key,
                eligible
                    .iter()
                    .enumerate()
                    .map(|(i, u)| (i, u.name().as_str())),
            )?;
            return Some(eligible[i].clone());
        }
        let now = now_ms();
        let candidates: Vec<Candidate> = eligible
            .iter()
            .map(|u| Candidate {
                in_flight: u.in_flight.load(std::sync::atomic::Ordering::Relaxed),
                weight: u.weight(now, self.s.slow_start),
            })
            .collect();
        let i = balance::pick(self.s.policy, &candidates, &mut rand::rng(), &self.turn)?;
        Some(eligible[i].clone())
    }

    /// The body towards the unit, and a copy of it so the request can go to a backup: every
    /// request without a body, and one whose declared length is at most `--replay-body-max`
    /// (read in full first), whatever its method: a `POST` that a stopping app refused never
    /// reached it and is as safe to send elsewhere as a `GET`. Anything else streams and is
    /// never replayed once sent.
    async fn hold_for_replay(
        &self,
        body: RequestBody,
        body_empty: bool,
        headers: &http::HeaderMap,
    ) -> Result<(UpstreamBody, Option<Bytes>), Response<ResponseBody>> {
        if body_empty {
            return Ok((empty_body(), Some(Bytes::new())));
        }
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match declared {
            Some(len) if len <= self.s.replay_body_max => {
                let bytes = Limited::new(body, len as usize)
                    .collect()
                    .await
                    .map_err(|_| {
                        self.refuse(
                            StatusCode::BAD_REQUEST,
                            "body_unreadable",
                            "the request body ended early or was longer than its Content-Length",
                        )
                    })?
                    .to_bytes();
                Ok((full_body(bytes.clone()), Some(bytes)))
            }
            _ => Ok((
                Limited::new(body, self.s.max_body_size as usize)
                    .map_err(|e| e as Box<dyn std::error::Error + Send + Sync>)
                    .boxed(),
                None,
            )),
        }
    }

    /// Handles one client request.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<RequestBody>,
        remote: SocketAddr,
    ) -> Response<ResponseBody> {
        // An answer of the gateway's own (a refusal, an error) to an HTTP/1 request whose body
        // it did not read closes the connection: otherwise the unread body would be taken for
        // the client's next request on it, which then fails.
        let unread_body = req.version() < http::Version::HTTP_2 && !req.body().is_end_stream();
        let mut resp = self.handle_request(req, remote).await;
        if unread_body && resp.extensions().get::<GatewayAnswer>().is_some() {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    async fn handle_request(
        self: Arc<Self>,
        req: Request<RequestBody>,
        remote: SocketAddr,
    ) -> Response<ResponseBody> {
        let host = match request_host(&req) {
            Ok(h) => h,
            Err(msg) => return self.refuse(StatusCode::BAD_REQUEST, "bad_host", msg),
        };
        let pq = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let address = match addressed(&pq, &host, self.s.farm_host.as_deref()) {
            Ok(a) => a,
            Err(msg) => return self.refuse(StatusCode::BAD_REQUEST, "bad_unit_address", msg),
        };
        if let Some(len) = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            && len > self.s.max_body_size
        {
            return self.refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "request body too large",
            );
        }
        let cookies = self.s.cookies.parse(
            req.headers()
                .get_all(header::COOKIE)
                .iter()
                .map(|v| v.as_bytes()),
        );
        if cookies.session.is_none()
            && let Some(limit) = &self.new_sessions
            && !limit.admit(
                client_address(remote, req.headers(), self.s.trust_forwarded),
                std::time::Instant::now(),
            )
        {
            let mut r = self.refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "new_session_rate",
                "too many new sessions from this address; retry shortly",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
        let (wanted, explicit, forward_path) = match address {
            Addressed::Path(u, rest) => (Some(u), true, rest),
            Addressed::Host(u) => (Some(u), true, pq),
            Addressed::None => (cookies.unit.clone(), false, pq),
        };
        // The units' own paths (the health check: unit names, pod UIDs, a database ping per
        // call) are for the gateway's checks on the unit's port, never for clients.
        if paths::is_internal(&forward_path) {
            return self.refuse(StatusCode::NOT_FOUND, "internal_path", "not found");
        }
        // Sessions are keyed by their id; clients without one by their address.
        let key: Vec<u8> = match cookies.session {
            Some(id) => id.as_bytes().to_vec(),
            None => match remote.ip() {
                IpAddr::V4(ip) => ip.octets().to_vec(),
                IpAddr::V6(ip) => ip.octets().to_vec(),
            },
        };
        let return_mode = self.s.failback == Failback::Return;

        let members = self.farm.members();
        let mut tried: Vec<UnitName> = Vec::new();
        // `home` is the unit the client's links and cookie should name afterwards.
        let (mut unit, home) = match wanted {
            Some(name) => match members.units.get(&name) {
                Some(u) if u.serves_its_sessions() => (u.clone(), Some(name)),
                Some(_) => {
                    self.metrics.failover();
                    tried.push(name.clone());
                    match self.pick_new(&members, &tried, &key, return_mode) {
                        Some(b) => {
                            tracing::debug!(unit = %name, backup = %b.name(), "unit out of service: failing over");
                            (b, return_mode.then_some(name))
                        }
                        None => {
                            return self.refuse(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "no_unit",
                                "no unit available",
                            );
                        }
                    }
                }
                None if explicit && cookies.session.is_none() => {
                    return self.refuse(
                        StatusCode::NOT_FOUND,
                        "unknown_unit",
                        "no such unit in this farm",
                    );
                }
                // A returning client of a unit that left the farm (scaled down): fail over.
                None => match self.pick_new(&members, &tried, &key, return_mode) {
                    Some(b) => {
                        self.metrics.failover();
                        (b, None)
                    }
                    None => {
                        return self.refuse(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "no_unit",
                            "no unit available",
                        );
                    }
                },
            },
            None => match self.pick_new(&members, &tried, &key, false) {
                Some(u) => (u, None),
                None => {
                    return self.refuse(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no_unit",
                        "no unit available",
                    );
                }
            },
        };

        // The request towards the unit.
        let (mut parts, body) = req.into_parts();
        let uri: Uri = match forward_path.parse() {
            Ok(u) => u,
            Err(_) => {
                return self.refuse(
                    StatusCode::BAD_REQUEST,
                    "bad_target",
                    "malformed request target",
                );
            }
        };
        let body_empty = body.is_end_stream();
        remove_hop_by_hop(&mut parts.headers);
        remove_stickyfarm_headers(&mut parts.headers);
        let h = &mut parts.headers;
        if let Ok(v) = HeaderValue::from_str(&host) {
            h.insert(header::HOST, v.clone());
            h.insert(X_FORWARDED_HOST, v);
        }
        let ip = remote.ip().to_string();
        let xff = match (
            self.s.trust_forwarded,
            h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()),
        ) {
            (true, Some(prev)) => format!("{prev}, {ip}"),
            _ => ip.clone(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            h.insert(X_FORWARDED_FOR, v);
        }
        h.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(self.s.scheme.as_str()),
        );
        if let Some(token) = &self.s.gateway_token {
            h.insert(headers::GATEWAY_TOKEN, token.clone());
        }
        let for_ip = if remote.is_ipv6() {
            format!("\"[{ip}]\"")
        } else {
            ip
        };
        if let Ok(v) = HeaderValue::from_str(&format!(
            "for={for_ip};host=\"{host}\";proto={}",
            self.s.scheme.as_str()
        )) {
            h.insert(FORWARDED, v);
        }
        let idempotent = is_idempotent(&parts.method);
        let (upstream_body, held) =
            match self.hold_for_replay(body, body_empty, &parts.headers).await {
                Ok(b) => b,
                Err(refusal) => return refusal,
            };
        let replay = held.map(|body| Replay {
            method: parts.method.clone(),
            uri: uri.clone(),
            headers: parts.headers.clone(),
            body,
        });
        let mut outbound = Request::new(upstream_body);
        *outbound.method_mut() = parts.method;
        *outbound.uri_mut() = uri;
        *outbound.headers_mut() = parts.headers;

        // A pooled connection that turns out stale says nothing about the unit: the request is
        // tried once more on the same unit over a fresh connection, without using up a retry.
        let mut fresh_on_same_unit = false;
        let mut stale_retry_used = false;
        // Whether some unit received the request and failed it (502) rather than none being
        // reachable (503).
        let mut reached_a_unit = false;
        let mut attempt = 0;
        loop {
            if fresh_on_same_unit {
                stale_retry_used = true;
            } else if attempt > 0 {
                if attempt > self.s.max_retries {
                    break;
                }
                self.metrics.retry();
                tried.push(unit.name().clone());
                unit = match self.pick_new(&members, &tried, &key, return_mode) {
                    Some(b) => b,
                    None => break,
                };
            }
            let fresh = fresh_on_same_unit;
            fresh_on_same_unit = false;
            attempt += 1;
            let link = match (&home, return_mode) {
                (Some(h), true) => h.clone(),
                _ => unit.name().clone(),
            };
            if let Ok(v) = HeaderValue::from_str(&unit_url(&self.s, &link, &host)) {
                outbound.headers_mut().insert(headers::UNIT_URL, v);
            }
            let in_flight = unit.begin_request();
            let checkout = match unit
                .pool
                .checkout(&unit.spec.address, self.s.connect_timeout, fresh)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    // Nothing was sent: safe to try a backup whatever the method.
                    self.farm.record_passive_failure(&unit, &e.to_string());
                    continue;
                }
            };
            let mut sender = checkout.sender;
            let sent_at = std::time::Instant::now();
            let sent =
                tokio::time::timeout(self.s.upstream_timeout, sender.try_send_request(outbound))
                    .await;
            let result = match sent {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(unit = %unit.name(), "unit did not answer in time");
                    // The request may be at work in the app: never replayed. Timeouts in a row
                    // count as a passive failure (within the ejection cap).
                    self.farm.record_timeout(&unit, self.s.upstream_timeout);
                    return text_response(
                        StatusCode::GATEWAY_TIMEOUT,
                        "the unit did not answer in time",
                    );
                }
            };
            match result {
                Ok(resp) if resp.headers().contains_key(headers::UNIT_UNAVAILABLE) => {
                    // The sidecar says the unit cannot serve it and another may: its app refused
                    // the connection (nothing reached it, so any method may go to a backup), or
                    // dropped a safe request twice (a stopping app). When we still hold the
                    // request, a backup gets it.
                    self.farm.record_passive_failure(
                        &unit,
                        "the unit's app is not accepting connections",
                    );
                    match &replay {
                        Some(r) => outbound = r.request(),
                        None => {
                            return text_response(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "the unit's app is not accepting connections; the request did not reach it and may be retried",
                            );
                        }
                    }
                }
                Ok(resp) => {
                    // Any status the app chose, 5xx included, is an answer: only what proves
                    // the unit broken takes it out (a client can make an app answer 500).
                    unit.record_response(resp.status().as_u16(), sent_at.elapsed());
                    return self.respond(
                        resp,
                        unit.clone(),
                        sender,
                        in_flight,
                        &link,
                        cookies.unit.as_ref(),
                    );
                }
                Err(mut e) => {
                    let reused = checkout.reused;
                    match e.take_message() {
                        Some(req) => {
                            // The connection was found closed before sending: the request is
                            // ours again. A stale pooled connection says nothing about the unit.
                            outbound = req;
                            if reused && !stale_retry_used {
                                fresh_on_same_unit = true;
                            } else {
                                self.farm
                                    .record_passive_failure(&unit, &e.into_error().to_string());
                            }
                        }
                        None => {
                            reached_a_unit = true;
                            let err = e.into_error();
                            if !reused {
                                self.farm.record_passive_failure(
                                    &unit,
                                    &format!("failed during a request: {err}"),
                                );
                            }
                            match replay.as_ref().filter(|_| idempotent) {
                                Some(r) => {
                                    outbound = r.request();
                                    fresh_on_same_unit = reused && !stale_retry_used;
                                }
                                None => {
                                    tracing::warn!(unit = %unit.name(), error = %err, "a request that may have reached the app failed; not replaying it");
                                    return text_response(
                                        StatusCode::BAD_GATEWAY,
                                        "the unit failed while handling this request; it was not replayed because it may have taken effect",
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        if reached_a_unit {
            return text_response(
                StatusCode::BAD_GATEWAY,
                "every unit tried failed while handling this request",
            );
        }
        self.refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_unit",
            "no unit could take the request",
        )
    }

    fn respond(
        &self,
        resp: Response<Incoming>,
        unit: Arc<Unit>,
        sender: Sender,
        in_flight: InFlight,
        link: &UnitName,
        cookie_unit: Option<&UnitName>,
    ) -> Response<ResponseBody> {
        let (mut parts, body) = resp.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        // A signal between sidecar and gateway, never the client's to see.
        parts.headers.remove(headers::UNIT_UNAVAILABLE);
        if cookie_unit != Some(link) {
            let c = self.s.cookies.set_cookie(FarmCookie::Unit, link.as_str());
            if let Ok(v) = HeaderValue::from_str(&c) {
                parts.headers.append(header::SET_COOKIE, v);
            }
        }
        let body = Tracked {
            inner: body,
            done: false,
            give_back: Some((unit, sender)),
            _in_flight: in_flight,
        };
        Response::from_parts(parts, body.boxed())
    }
}

/// A unit's response body: counts the request in flight until the body ends, then returns the
/// connection to the unit's pool (a connection with unread data is never reused).
struct Tracked {
    inner: Incoming,
    done: bool,
    give_back: Option<(Arc<Unit>, Sender)>,
    _in_flight: InFlight,
}

impl Tracked {
    fn finish(&mut self) {
        self.done = true;
        if let Some((unit, sender)) = self.give_back.take() {
            unit.pool.put_back(sender);
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = r {
            self.finish();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // Bodies the server never polls (HEAD, 204, 304) are complete already.
        if !self.done && self.inner.is_end_stream() {
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_addresses() {
        assert_eq!(addressed("/cart", "shop:80", None), Ok(Addressed::None));
        assert_eq!(
            addressed("/_unit/web-1/cart?x=1", "shop", None),
            Ok(Addressed::Path(
                "web-1".parse().unwrap(),
                "/cart?x=1".into()
            ))
        );
        assert_eq!(
            addressed("/_unit/web-1", "shop", None),
            Ok(Addressed::Path("web-1".parse().unwrap(), "/".into()))
        );
        assert_eq!(
            addressed("/_unit/web-1?q", "shop", None),
            Ok(Addressed::Path("web-1".parse().unwrap(), "/?q".into()))
        );
        assert_eq!(
            addressed("/cart", "web-2.shop.example:8000", Some("shop.example")),
            Ok(Addressed::Host("web-2".parse().unwrap()))
        );
        assert!(addressed("/_unit/web-1/../web-2/x", "shop", None).is_err());
        assert!(addressed("/_unit/BAD/x", "shop", None).is_err());
    }

    fn settings(public_hosts: &[&str], addressing: Addressing) -> ProxySettings {
        ProxySettings {
            policy: Policy::LeastInFlight,
            failback: Failback::Stay,
            farm_host: Some("shop.example".into()),
            addressing,
            scheme: Scheme::Https,
            public_hosts: public_hosts.iter().map(|h| h.to_string()).collect(),
            slow_start: Duration::ZERO,
            connect_timeout: Duration::from_secs(1),
            upstream_timeout: Duration::from_secs(1),
            max_retries: 0,
            max_body_size: 1024,
            replay_body_max: 1024,
            trust_forwarded: false,
            cookies: CookiePolicy::new(&Default::default(), true, None),
            new_session_rate: 0,
            new_session_burst: 0,
            gateway_token: None,
        }
    }

    #[test]
    fn links_come_from_configuration_never_from_a_clients_host() {
        let web0: UnitName = "web-0".parse().unwrap();
        let s = settings(&["shop.example", "www.shop.example:8443"], Addressing::Path);
        assert_eq!(
            unit_url(&s, &web0, "www.shop.example:8443"),
            "https://www.shop.example:8443/_unit/web-0",
            "a public host keeps its own links"
        );
        assert_eq!(
            unit_url(&s, &web0, "SHOP.example"),
            "https://shop.example/_unit/web-0"
        );
        for poisoned in [
            "evil.example",
            "shop.example.evil.example",
            "shop.example:1",
        ] {
            assert_eq!(
                unit_url(&s, &web0, poisoned),
                "https://shop.example/_unit/web-0",
                "{poisoned}"
            );
        }
        // Nothing configured: relative links, right under whatever host the client used.
        let s = settings(&[], Addressing::Path);
        assert_eq!(unit_url(&s, &web0, "evil.example"), "/_unit/web-0");
        // Host-style: the farm host, and the port of the public host, never the client's.
        let s = settings(&["shop.example:8443"], Addressing::Host);
        assert_eq!(
            unit_url(&s, &web0, "shop.example:6666"),
            "https://web-0.shop.example:8443"
        );
        let s = settings(&[], Addressing::Host);
        assert_eq!(
            unit_url(&s, &web0, "shop.example:6666"),
            "https://web-0.shop.example"
        );
    }

    #[test]
    fn hosts_are_validated() {
        let with_host = |h: &[u8]| {
            Request::get("/")
                .header(header::HOST, HeaderValue::from_bytes(h).unwrap())
                .body(())
                .unwrap()
        };
        assert_eq!(
            request_host(&with_host(b"shop.example:8000")).unwrap(),
            "shop.example:8000"
        );
        for bad in [&b"a b"[..], b"user@shop", b"sh\xffop", b"", b"shop/x"] {
            assert!(
                request_host(&with_host(bad)).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(request_host(&Request::get("/").body(()).unwrap()).is_err());
        let two = Request::get("/")
            .header(header::HOST, "a")
            .header(header::HOST, "b")
            .body(())
            .unwrap();
        assert!(request_host(&two).is_err());
    }
}
