//! Forward and fail over: the request as a unit gets it (its head rewritten once, its body
//! streaming or held for a replay), one attempt to send it to one unit, and the verdict on an
//! attempt that failed: try the same unit over a fresh connection, a backup, or give up. The
//! verdict is a pure function of what happened, so every case has a test of its own.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::config::{AppProtocol, Scheme};
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use stickyfarm_api::listener::RequestBody;
use stickyfarm_api::trace::Traced;
use stickyfarm_api::{header_names, remove_hop_by_hop, remove_stickyfarm_headers};

use super::ProxySettings;
use super::refusal::Refusal;
use super::route::{Route, declared_length};
use crate::units::{InFlight, Unit};
use stickyfarm_api::upstream::h1::SendError;
use stickyfarm_api::upstream::{AnswerBody, ConnectError, Sender, UpstreamBody};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// The request towards the units, built once.
pub struct Outbound {
    /// The request, ready for the first attempt.
    pub request: Request<UpstreamBody>,
    /// How it goes to a backup, when the body was small enough to hold.
    pub replay: Option<Replay>,
    /// RFC 9110's idempotent methods: replaying one that may have reached the app is safe.
    pub idempotent: bool,
}

/// What lets a request whose body was held be sent again.
pub enum Replay {
    /// The gateway's own HTTP/1.1 client (`stickyfarm_api::upstream::h1`) carries it: HTTP/1.1
    /// and no upgrade. That client only reads the request's head, so every failed attempt
    /// hands the request back; the body it sends is this one.
    Handed(Bytes),
    /// hyper's client carries it (an upgrade, h2c) and takes the request: a copy of its head,
    /// and the body.
    Copied {
        /// The head as the first attempt had it.
        head: Box<Parts>,
        /// The body.
        body: Bytes,
    },
}

impl Replay {
    /// The held body, when the gateway's own client carries the request.
    pub fn own_client(&self) -> Option<&Bytes> {
        match self {
            Replay::Handed(body) => Some(body),
            Replay::Copied { .. } => None,
        }
    }

    /// The request once more, from the copy; `None` when each attempt hands it back.
    pub fn request(&self) -> Option<Request<UpstreamBody>> {
        let Replay::Copied { head, body } = self else {
            return None;
        };
        let mut r = Request::new(full_body(body.clone()));
        *r.method_mut() = head.method.clone();
        *r.version_mut() = head.version;
        *r.uri_mut() = head.uri.clone();
        *r.headers_mut() = head.headers.clone();
        Some(r)
    }
}

pub(crate) fn full_body(bytes: Bytes) -> UpstreamBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn empty_body() -> UpstreamBody {
    http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Builds the request towards the units from the client's.
pub async fn outbound(
    s: &ProxySettings,
    req: Request<RequestBody>,
    route: &Route,
    remote: SocketAddr,
) -> Result<Outbound, Refusal> {
    let (mut parts, body) = req.into_parts();
    let body_empty = hyper::body::Body::is_end_stream(&body);
    let mut uri = upstream_head(s, &mut parts, route, remote)?;
    let version = upstream_version(s, parts.version, route);
    if version == http::Version::HTTP_2 {
        // HTTP/2 names the host in `:authority`, taken from an absolute target.
        uri = absolute(&uri, &route.host)?;
    }
    let (upstream_body, held) = hold_for_replay(s, body, body_empty, &parts.headers).await?;
    let idempotent = is_idempotent(&parts.method);
    parts.version = version;
    parts.uri = uri;
    let own_client = version == http::Version::HTTP_11 && route.upgrade.is_none();
    let replay = held.map(|body| {
        if own_client {
            Replay::Handed(body)
        } else {
            Replay::Copied {
                head: Box::new(copy_head(&parts)),
                body,
            }
        }
    });
    Ok(Outbound {
        request: Request::from_parts(parts, upstream_body),
        replay,
        idempotent,
    })
}

/// A request head's copy, without its extensions (hyper's, for the client connection only).
fn copy_head(parts: &Parts) -> Parts {
    let (mut head, ()) = Request::new(()).into_parts();
    head.method = parts.method.clone();
    head.version = parts.version;
    head.uri = parts.uri.clone();
    head.headers = parts.headers.clone();
    head
}

/// The HTTP version towards the unit: HTTP/2 for a request that came over HTTP/2 when the app
/// speaks h2c (gRPC needs it end to end: its status is in trailers), HTTP/1.1 otherwise, and
/// always for an upgrade (a tunnel starts as HTTP/1.1).
pub fn upstream_version(s: &ProxySettings, client: http::Version, route: &Route) -> http::Version {
    if s.app_protocol == AppProtocol::H2c
        && client == http::Version::HTTP_2
        && route.upgrade.is_none()
    {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    }
}

fn absolute(path: &Uri, host: &str) -> Result<Uri, Refusal> {
    let path = path.path_and_query().map_or("/", |p| p.as_str());
    Uri::builder()
        .scheme("http")
        .authority(host)
        .path_and_query(path)
        .build()
        .map_err(|_| Refusal::BadTarget)
}

/// Rewrites a request head for the units: the path without its unit prefix, no hop-by-hop
/// headers and no Stickyfarm header a client could forge, the forwarding headers, the
/// gateway token; an upgrade keeps asking for its protocol.
pub fn upstream_head(
    s: &ProxySettings,
    parts: &mut Parts,
    route: &Route,
    remote: SocketAddr,
) -> Result<Uri, Refusal> {
    let uri = target_for_unit(&mut parts.uri, &route.forward_path)?;
    let h = &mut parts.headers;
    remove_hop_by_hop(h);
    remove_stickyfarm_headers(h);
    if let Some(protocol) = &route.upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, protocol.clone());
    }
    if let Some(key) = &route.connect_key {
        // An HTTP/2 extended CONNECT becomes the HTTP/1.1 upgrade request RFC 6455 describes.
        parts.method = Method::GET;
        h.insert(header::SEC_WEBSOCKET_KEY, key.clone());
        h.entry(header::SEC_WEBSOCKET_VERSION)
            .or_insert(HeaderValue::from_static("13"));
    }
    // The client's `Host` is kept as it is when it names the route's host (the usual case);
    // an absolute target's or HTTP/2's `:authority` replaces it.
    let host = match h.get(header::HOST) {
        Some(v) if v.as_bytes() == route.host.as_bytes() => Some(v.clone()),
        _ => HeaderValue::from_str(&route.host).ok().inspect(|v| {
            h.insert(header::HOST, v.clone());
        }),
    };
    if let Some(v) = host {
        h.insert(X_FORWARDED_HOST, v);
    }
    let ip = ip_text(remote.ip());
    let forwarded = forwarded(&ip, remote.is_ipv6(), &route.host, s.scheme);
    // The client's own `X-Forwarded-For` is looked up only when it is trusted: a lookup of a
    // name that is not a standard header hashes it.
    let trusted_chain = s
        .trust_forwarded
        .then(|| h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()))
        .flatten();
    let xff = match trusted_chain {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    if let Ok(v) = owned_value(xff) {
        h.insert(X_FORWARDED_FOR, v);
    }
    h.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(s.scheme.as_str()),
    );
    if let Some(token) = &s.gateway_token {
        h.insert(header_names::GATEWAY_TOKEN, token.clone());
    }
    if let Ok(v) = owned_value(forwarded) {
        h.insert(FORWARDED, v);
    }
    Ok(uri)
}

/// A header value made of text built for it, taken over rather than copied. Built with its
/// exact length, the text becomes the value without a further allocation.
pub(crate) fn owned_value(text: String) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    HeaderValue::from_maybe_shared(Bytes::from(text))
}

/// The request target the unit gets: `forward_path` in origin form. The client's own target is
/// taken as it is when it already is that (most requests: no unit prefix, not absolute), so
/// it is not parsed and copied a second time.
fn target_for_unit(client: &mut Uri, forward_path: &str) -> Result<Uri, Refusal> {
    let unchanged = client.scheme().is_none()
        && client.authority().is_none()
        && client.path_and_query().map(|p| p.as_str()) == Some(forward_path);
    if unchanged {
        Ok(std::mem::take(client))
    } else {
        forward_path.parse().map_err(|_| Refusal::BadTarget)
    }
}

/// An IP address as the forwarding headers carry it. An IPv4 address is written here rather
/// than by its `Display`, which goes through the formatting machinery: with the `format!` of
/// `Forwarded`, that was 5 % of the gateway's instructions per request
/// (`bench/results/2026-12-06-instructions.md`).
fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let digits = |o: u8| 1 + usize::from(o >= 10) + usize::from(o >= 100);
    let mut text = String::with_capacity(3 + v4.octets().into_iter().map(digits).sum::<usize>());
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

/// `Forwarded: for=…;host="…";proto=…` (RFC 7239; an IPv6 address quoted in brackets).
fn forwarded(ip: &str, ipv6: bool, host: &str, scheme: Scheme) -> String {
    let quotes = if ipv6 { 4 } else { 0 };
    let len = "for=".len() + quotes + ip.len() + ";host=\"".len() + host.len();
    let mut v = String::with_capacity(len + "\";proto=".len() + scheme.as_str().len());
    v.push_str("for=");
    if ipv6 {
        v.push_str("\"[");
        v.push_str(ip);
        v.push_str("]\"");
    } else {
        v.push_str(ip);
    }
    v.push_str(";host=\"");
    v.push_str(host);
    v.push_str("\";proto=");
    v.push_str(scheme.as_str());
    v
}

/// The body towards the unit, and a copy of it so the request can go to a backup: every
/// request without a body, and one whose declared length is at most `--replay-body-max`
/// (read in full first), whatever its method: a `POST` that a stopping app refused never
/// reached it and is as safe to send elsewhere as a `GET`. Anything else streams and is
/// never replayed once sent.
async fn hold_for_replay(
    s: &ProxySettings,
    body: RequestBody,
    body_empty: bool,
    headers: &http::HeaderMap,
) -> Result<(UpstreamBody, Option<Bytes>), Refusal> {
    if body_empty {
        return Ok((empty_body(), Some(Bytes::new())));
    }
    match declared_length(headers) {
        Some(len) if len <= s.replay_body_max => {
            // Boxed: only requests with a body wait here, and inline the collection would
            // grow every request's future.
            let bytes = Box::pin(Limited::new(body, len as usize).collect())
                .await
                .map_err(|_| Refusal::BodyUnreadable)?
                .to_bytes();
            Ok((full_body(bytes.clone()), Some(bytes)))
        }
        _ => Ok((
            Limited::new(body, s.max_body_size as usize)
                .map_err(|e| e as Box<dyn std::error::Error + Send + Sync>)
                .boxed(),
            None,
        )),
    }
}

/// How one attempt on one unit went.
pub enum Attempt {
    /// The unit answered (any status the app chose).
    Answered {
        /// The answer.
        response: Response<AnswerBody>,
        /// hyper's connection, to return to the pool once the body is read (the
        /// request-driven client's answer returns its own).
        sender: Option<Sender>,
        /// Counts the request in flight on the unit until the answer is done.
        in_flight: InFlight,
        /// From sending to the answer's head.
        took: Duration,
    },
    /// It did not, for this reason; `returned` is the request when the attempt hands it back:
    /// it was never sent, or the gateway's own client sent it (which only read its head).
    /// Whether it may go again is the verdict's to say.
    Failed {
        /// What went wrong.
        failure: Failure,
        /// In words, for the unit's last error.
        error: String,
        /// The request, when the attempt hands it back.
        returned: Option<Request<UpstreamBody>>,
    },
}

/// What went wrong in an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Nothing was sent: connecting failed, or the connection was found closed first.
    /// `reused`: the connection came from the pool.
    NotSent {
        /// From the pool.
        reused: bool,
    },
    /// The sidecar answered that its app refused the connection: nothing reached the app.
    Unavailable,
    /// The sidecar released the session for rebalancing, as asked: nothing reached the app.
    Released,
    /// The connection broke when the request may have reached the app.
    Broken {
        /// From the pool.
        reused: bool,
    },
    /// No answer within `--upstream-timeout`: the request may be at work in the app.
    TimedOut,
}

/// Sends `request` to `unit` once: by the request-driven client when `own_client` holds its
/// body, else by hyper's.
pub async fn attempt(
    s: &ProxySettings,
    unit: &std::sync::Arc<Unit>,
    request: Request<UpstreamBody>,
    fresh: bool,
    own_client: Option<&Bytes>,
) -> Attempt {
    match own_client {
        Some(body) => attempt_own(s, unit, request, fresh, body).await,
        None => attempt_hyper(s, unit, request, fresh).await,
    }
}

async fn attempt_own(
    s: &ProxySettings,
    unit: &std::sync::Arc<Unit>,
    request: Request<UpstreamBody>,
    fresh: bool,
    body: &Bytes,
) -> Attempt {
    let in_flight = unit.begin_request();
    let connecting = Instant::now();
    let checkout = unit
        .pool
        .checkout_own(&unit.spec.address, s.connect_timeout, fresh);
    let (conn, reused) = match Traced::phase("connect").run(checkout).await {
        Ok(c) => c,
        Err(e) => return not_connected(e, request),
    };
    if !reused {
        unit.record_connect(connecting.elapsed());
    }
    let (head, body_unused) = request.into_parts();
    let sent_at = Instant::now();
    let sent = tokio::time::timeout(
        s.upstream_timeout,
        conn.send(&head, body, unit.pool.own_idle()),
    )
    .await;
    let mut attempt = match sent {
        Err(_) => timed_out(),
        Ok(Ok(response)) => answered(response.map(AnswerBody::Own), None, in_flight, sent_at),
        Ok(Err(SendError::NotSent(e))) => Attempt::Failed {
            failure: Failure::NotSent { reused },
            error: e.to_string(),
            returned: None,
        },
        Ok(Err(SendError::Broken(e))) => Attempt::Failed {
            failure: Failure::Broken { reused },
            error: format!("failed during a request: {e}"),
            returned: None,
        },
    };
    // The client only read the head: the request goes back whatever happened to it, and no
    // copy of it is needed for a backup.
    if let Attempt::Failed { returned, .. } = &mut attempt {
        *returned = Some(Request::from_parts(head, body_unused));
    }
    attempt
}

async fn attempt_hyper(
    s: &ProxySettings,
    unit: &std::sync::Arc<Unit>,
    request: Request<UpstreamBody>,
    fresh: bool,
) -> Attempt {
    let in_flight = unit.begin_request();
    let connecting = Instant::now();
    let checkout = unit.pool.checkout(
        &unit.spec.address,
        s.connect_timeout,
        fresh,
        request.version() == http::Version::HTTP_2,
    );
    let checkout = match Traced::phase("connect").run(checkout).await {
        Ok(c) => c,
        Err(e) => return not_connected(e, request),
    };
    if !checkout.reused {
        unit.record_connect(connecting.elapsed());
    }
    let reused = checkout.reused;
    let mut sender = checkout.sender;
    let sent_at = Instant::now();
    let sent = tokio::time::timeout(s.upstream_timeout, sender.try_send_request(request)).await;
    match sent {
        Err(_) => timed_out(),
        Ok(Ok(response)) => answered(
            response.map(AnswerBody::Hyper),
            Some(sender),
            in_flight,
            sent_at,
        ),
        Ok(Err(mut e)) => match e.take_message() {
            Some(request) => Attempt::Failed {
                failure: Failure::NotSent { reused },
                error: e.into_error().to_string(),
                returned: Some(request),
            },
            None => Attempt::Failed {
                failure: Failure::Broken { reused },
                error: format!("failed during a request: {}", e.into_error()),
                returned: None,
            },
        },
    }
}

fn not_connected(e: ConnectError, request: Request<UpstreamBody>) -> Attempt {
    Attempt::Failed {
        failure: Failure::NotSent { reused: false },
        error: e.to_string(),
        returned: Some(request),
    }
}

fn timed_out() -> Attempt {
    Attempt::Failed {
        failure: Failure::TimedOut,
        error: "the unit did not answer in time".into(),
        returned: None,
    }
}

/// The unit's answer: the app's, or the sidecar's word that nothing reached the app.
fn answered(
    response: Response<AnswerBody>,
    sender: Option<Sender>,
    in_flight: InFlight,
    sent_at: Instant,
) -> Attempt {
    let Some(signal) = response.headers().get(&header_names::UNIT_UNAVAILABLE) else {
        return Attempt::Answered {
            response,
            sender,
            in_flight,
            took: sent_at.elapsed(),
        };
    };
    let (failure, error) = if signal == stickyfarm_api::RELEASED {
        (
            Failure::Released,
            "the unit released the session to a less loaded unit",
        )
    } else {
        (
            Failure::Unavailable,
            "the unit's app is not accepting connections",
        )
    };
    Attempt::Failed {
        failure,
        error: error.into(),
        returned: None,
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The same unit once more, over a fresh connection: a stale pooled connection says
    /// nothing about the unit.
    SameUnitFresh,
    /// A backup.
    NextUnit,
    /// Give up with this answer.
    Stop(Refusal),
}

/// The verdict on a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// What next.
    pub step: Step,
    /// Whether the failure counts against the unit (passive health; a timeout counts as one
    /// of a series).
    pub blame_unit: bool,
}

/// Decides what follows a failed attempt. `held`: the request can be sent again (its body
/// was held); `idempotent`: replaying it is safe even if it reached the app;
/// `stale_retry_used`: this request already had its one retry over a fresh connection.
pub fn after_failure(
    failure: Failure,
    held: bool,
    idempotent: bool,
    stale_retry_used: bool,
) -> Verdict {
    let fresh_is_enough = |reused: bool| reused && !stale_retry_used;
    match failure {
        // Never sent: any method may go elsewhere.
        Failure::NotSent { reused } if fresh_is_enough(reused) => Verdict {
            step: Step::SameUnitFresh,
            blame_unit: false,
        },
        Failure::NotSent { .. } => Verdict {
            step: Step::NextUnit,
            blame_unit: true,
        },
        // Nothing reached the app: a backup gets it if we still hold it. (A release the
        // gateway asked for is followed before any verdict; one it did not ask for is this.)
        Failure::Unavailable | Failure::Released => Verdict {
            step: if held {
                Step::NextUnit
            } else {
                Step::Stop(Refusal::UnitUnavailable)
            },
            blame_unit: true,
        },
        // It may have reached the app: only an idempotent request is sent again.
        Failure::Broken { reused } => Verdict {
            step: match (held && idempotent, fresh_is_enough(reused)) {
                (true, true) => Step::SameUnitFresh,
                (true, false) => Step::NextUnit,
                (false, _) => Step::Stop(Refusal::UnitFailed),
            },
            // A pooled connection the unit closed says less about it than a new one failing.
            blame_unit: !reused,
        },
        // It may be at work in the app: never replayed.
        Failure::TimedOut => Verdict {
            step: Step::Stop(Refusal::UnitTimeout),
            blame_unit: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Addressing;

    #[test]
    fn the_unit_gets_the_forward_path_in_origin_form() {
        let cases = [
            // (the client's target, the route's forward path, what the unit gets, taken as is)
            ("/cart?x=1", "/cart?x=1", "/cart?x=1", true),
            ("/_unit/web-1/cart", "/cart", "/cart", false),
            ("http://shop/cart", "/cart", "/cart", false),
        ];
        for (client, forward_path, wanted, taken) in cases {
            let mut uri: Uri = client.parse().unwrap();
            let got = target_for_unit(&mut uri, forward_path).unwrap();
            assert_eq!(got, wanted, "{client}");
            assert!(
                got.scheme().is_none() && got.authority().is_none(),
                "{client}"
            );
            // Taken: the client's target is left empty; parsed: left as it was.
            assert_eq!(uri == "/", taken, "{client}");
        }
        assert_eq!(
            target_for_unit(&mut Uri::default(), "/a b"),
            Err(Refusal::BadTarget)
        );
    }

    #[test]
    fn an_address_is_written_as_its_display_writes_it() {
        for ip in [
            "0.0.0.0",
            "10.0.0.7",
            "127.0.0.1",
            "192.168.100.9",
            "255.255.255.255",
            "1.20.199.250",
            "2001:db8::7",
            "::ffff:10.1.2.3",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let text = ip_text(ip);
            assert_eq!(text, ip.to_string());
            if ip.is_ipv4() {
                assert_eq!(text.len(), text.capacity(), "{ip}");
            }
        }
    }

    #[test]
    fn forwarded_names_the_client_host_and_scheme() {
        let v4 = forwarded("10.0.0.7", false, "shop:8000", Scheme::Http);
        assert_eq!(v4, "for=10.0.0.7;host=\"shop:8000\";proto=http");
        let v6 = forwarded("2001:db8::7", true, "shop", Scheme::Https);
        assert_eq!(v6, "for=\"[2001:db8::7]\";host=\"shop\";proto=https");
        // Made at their exact length, they become header values without another copy.
        assert_eq!((v4.len(), v6.len()), (v4.capacity(), v6.capacity()));
    }

    #[test]
    fn the_unit_gets_the_requests_host_and_its_target_in_origin_form() {
        let remote: SocketAddr = "10.0.0.7:4000".parse().unwrap();
        let s = super::super::route::tests::settings(&[], Addressing::Path);
        // (target, Host header, the unit's Host and X-Forwarded-Host, the unit's target)
        let cases = [
            ("/cart", "shop.example:8000", "shop.example:8000", "/cart"),
            // An absolute target's host wins over the Host header (RFC 9112 §3.2.2).
            (
                "http://other.example/cart",
                "shop.example",
                "other.example",
                "/cart",
            ),
            (
                "/_unit/web-1/cart?x=1",
                "shop.example",
                "shop.example",
                "/cart?x=1",
            ),
        ];
        for (target, host, wanted_host, wanted_target) in cases {
            let req = Request::get(target)
                .header(header::HOST, host)
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            let route = super::super::route::route(&s, &req, remote).unwrap();
            let (mut parts, _) = req.into_parts();
            let uri = upstream_head(&s, &mut parts, &route, remote).unwrap();
            assert_eq!(uri, wanted_target, "{target}");
            let h = &parts.headers;
            assert_eq!(h.get_all(header::HOST).iter().count(), 1, "{target}");
            assert_eq!(h[header::HOST], wanted_host, "{target}");
            assert_eq!(h[X_FORWARDED_HOST], wanted_host, "{target}");
        }
    }

    #[test]
    fn a_clients_forwarded_for_chain_is_kept_only_when_trusted() {
        let remote: SocketAddr = "10.0.0.7:4000".parse().unwrap();
        let mut s = super::super::route::tests::settings(&[], Addressing::Path);
        let forwarded_for = |s: &ProxySettings| {
            let req = Request::get("/cart")
                .header(header::HOST, "shop")
                .header(X_FORWARDED_FOR, "6.6.6.6")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            let route = super::super::route::route(s, &req, remote).unwrap();
            let (mut parts, _) = req.into_parts();
            upstream_head(s, &mut parts, &route, remote).unwrap();
            parts.headers[X_FORWARDED_FOR].clone()
        };
        assert_eq!(
            forwarded_for(&s),
            "10.0.0.7",
            "a client's own chain is replaced"
        );
        s.trust_forwarded = true;
        assert_eq!(forwarded_for(&s), "6.6.6.6, 10.0.0.7");
    }

    #[test]
    fn http2_goes_upstream_only_to_an_h2c_app_and_never_for_an_upgrade() {
        let remote: SocketAddr = "10.0.0.7:4000".parse().unwrap();
        let mut s = super::super::route::tests::settings(&[], Addressing::Path);
        let request = |version, upgrade: bool| {
            let mut r = Request::get("/cart")
                .version(version)
                .header("host", "shop");
            if upgrade {
                r = r
                    .header("connection", "upgrade")
                    .header("upgrade", "websocket");
            }
            r.body(http_body_util::Empty::<Bytes>::new()).unwrap()
        };
        let version = |s: &ProxySettings, v, upgrade| {
            let req = request(v, upgrade);
            let route = super::super::route::route(s, &req, remote).unwrap();
            upstream_version(s, req.version(), &route)
        };
        use http::Version as V;
        // An HTTP/1.1 app gets HTTP/1.1 whatever the client spoke.
        assert_eq!(version(&s, V::HTTP_2, false), V::HTTP_11);
        s.app_protocol = AppProtocol::H2c;
        assert_eq!(version(&s, V::HTTP_2, false), V::HTTP_2);
        assert_eq!(version(&s, V::HTTP_11, false), V::HTTP_11);
        assert_eq!(version(&s, V::HTTP_11, true), V::HTTP_11);
        assert_eq!(
            absolute(&"/x?y=1".parse().unwrap(), "shop.example:8443").unwrap(),
            "http://shop.example:8443/x?y=1"
        );
    }

    fn step(f: Failure, held: bool, idempotent: bool, stale_used: bool) -> Step {
        after_failure(f, held, idempotent, stale_used).step
    }

    #[test]
    fn a_request_that_was_never_sent_goes_anywhere_whatever_its_method() {
        let pooled = Failure::NotSent { reused: true };
        let new = Failure::NotSent { reused: false };
        // A stale pooled connection: once more on the same unit, the unit not blamed.
        assert_eq!(
            after_failure(pooled, false, false, false),
            Verdict {
                step: Step::SameUnitFresh,
                blame_unit: false
            }
        );
        // The fresh connection failed too, or a new one did: a backup, the unit blamed.
        assert_eq!(
            after_failure(pooled, false, false, true),
            Verdict {
                step: Step::NextUnit,
                blame_unit: true
            }
        );
        assert_eq!(step(new, false, false, false), Step::NextUnit);
    }

    #[test]
    fn a_unit_whose_app_refused_hands_a_held_request_to_a_backup() {
        assert_eq!(
            step(Failure::Unavailable, true, false, false),
            Step::NextUnit
        );
        assert_eq!(
            step(Failure::Unavailable, false, true, false),
            Step::Stop(Refusal::UnitUnavailable),
            "a streamed body is gone"
        );
        assert!(after_failure(Failure::Unavailable, true, true, false).blame_unit);
    }

    #[test]
    fn only_an_idempotent_held_request_is_replayed_after_it_may_have_reached_the_app() {
        let broken = |reused| Failure::Broken { reused };
        assert_eq!(step(broken(false), true, true, false), Step::NextUnit);
        assert_eq!(step(broken(true), true, true, false), Step::SameUnitFresh);
        assert_eq!(step(broken(true), true, true, true), Step::NextUnit);
        for (held, idempotent) in [(true, false), (false, true), (false, false)] {
            assert_eq!(
                step(broken(false), held, idempotent, false),
                Step::Stop(Refusal::UnitFailed),
                "held {held}, idempotent {idempotent}"
            );
        }
        assert!(!after_failure(broken(true), true, true, false).blame_unit);
        assert!(after_failure(broken(false), true, true, false).blame_unit);
    }

    #[test]
    fn a_timeout_is_never_replayed() {
        for held in [true, false] {
            assert_eq!(
                after_failure(Failure::TimedOut, held, true, false),
                Verdict {
                    step: Step::Stop(Refusal::UnitTimeout),
                    blame_unit: true
                }
            );
        }
    }
}
