//! Route: what a request asks for, read from its head alone. Its host, the unit it names (by
//! path `/_unit/<unit>/…`, host `<unit>.<farm host>`, or the `sf_unit` routing cookie), its
//! session, the key that balances it, and whether it asks for a tunnel (HTTP/1.1 `Upgrade`, or
//! HTTP/2's extended CONNECT for a WebSocket, RFC 8441).
//! Malformed requests are refused here with a 4xx, before any unit is chosen.

use std::net::{IpAddr, SocketAddr};

use http::Request;
use http::header::{self, HeaderName, HeaderValue};
use stickyfarm_api::{UnitName, is_valid_host, parse_unit_host, parse_unit_path, paths};

use super::ProxySettings;
use super::refusal::Refusal;
use crate::config::Addressing;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// What the route phase read from a request's head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The request's host (`Host` or `:authority`), validated.
    pub host: String,
    /// The path and query the unit gets (a `/_unit/<unit>` prefix removed).
    pub forward_path: String,
    /// The unit the request names, by its address or the routing cookie.
    pub wanted: Option<UnitName>,
    /// Named by its address (path or host) rather than by the cookie.
    pub explicit: bool,
    /// The client sent a session cookie.
    pub has_session: bool,
    /// The unit the client's routing cookie names (it is set again only when it changes).
    pub cookie_unit: Option<UnitName>,
    /// What balances a new session and picks a backup: the session id, else the client's
    /// address.
    pub key: Vec<u8>,
    /// The protocol a tunnel asks for (a WebSocket: `websocket`), by an HTTP/1.1 `Upgrade` or
    /// an HTTP/2 extended CONNECT.
    pub upgrade: Option<HeaderValue>,
    /// An extended CONNECT's WebSocket: the unit gets an HTTP/1.1 upgrade with this
    /// `Sec-WebSocket-Key` (made here; an HTTP/2 client sends none), its answer is checked
    /// against it, and the client gets `200` instead of `101`.
    pub connect_key: Option<HeaderValue>,
}

/// Reads a request's head. `Err` is the client's mistake, refused before any unit is chosen.
pub fn route<B: hyper::body::Body>(
    s: &ProxySettings,
    req: &Request<B>,
    remote: SocketAddr,
) -> Result<Route, Refusal> {
    let host = request_host(req).map_err(Refusal::BadHost)?;
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let address = addressed(&pq, &host, s.farm_host.as_deref()).map_err(Refusal::BadUnitAddress)?;
    if declared_length(req.headers()).is_some_and(|len| len > s.max_body_size) {
        return Err(Refusal::BodyTooLarge);
    }
    let cookies = s.cookies.parse(
        req.headers()
            .get_all(header::COOKIE)
            .iter()
            .map(|v| v.as_bytes()),
    );
    let (wanted, explicit, forward_path) = match address {
        Addressed::Path(u, rest) => (Some(u), true, rest),
        Addressed::Host(u) => (Some(u), true, pq),
        Addressed::None => (cookies.unit.clone(), false, pq),
    };
    // The units' own paths (the health check: unit names, pod UIDs, a database ping per
    // call) are for the gateway's checks on the unit's port, never for clients.
    if paths::is_internal(&forward_path) {
        return Err(Refusal::InternalPath);
    }
    let key: Vec<u8> = match &cookies.session {
        Some(id) => id.as_bytes().to_vec(),
        None => match remote.ip() {
            IpAddr::V4(ip) => ip.octets().to_vec(),
            IpAddr::V6(ip) => ip.octets().to_vec(),
        },
    };
    let (upgrade, connect_key) = match extended_connect(req)? {
        Some(protocol) => (Some(protocol), Some(websocket_key())),
        None => (stickyfarm_api::upgrade_protocol(req), None),
    };
    Ok(Route {
        host,
        forward_path,
        wanted,
        explicit,
        has_session: cookies.session.is_some(),
        cookie_unit: cookies.unit,
        key,
        upgrade,
        connect_key,
    })
}

/// RFC 8441: an HTTP/2 `CONNECT` with `:protocol` opens a tunnel on its stream. A WebSocket is
/// translated to the HTTP/1.1 upgrade every unit understands; another protocol is refused.
fn extended_connect<B>(req: &Request<B>) -> Result<Option<HeaderValue>, Refusal> {
    let Some(protocol) = req.extensions().get::<hyper::ext::Protocol>() else {
        return Ok(None);
    };
    if req.method() != http::Method::CONNECT {
        return Ok(None);
    }
    if protocol.as_str().eq_ignore_ascii_case("websocket") {
        Ok(Some(HeaderValue::from_static("websocket")))
    } else {
        Err(Refusal::UnsupportedTunnel)
    }
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes in base64 (RFC 6455 §4.1).
fn websocket_key() -> HeaderValue {
    use base64::Engine as _;
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).expect("the operating system's random source");
    HeaderValue::from_str(&base64::engine::general_purpose::STANDARD.encode(nonce))
        .expect("base64 is a header value")
}

/// The `Sec-WebSocket-Accept` a server must answer to `key` (RFC 6455 §4.2.2).
pub fn websocket_accept(key: &HeaderValue) -> String {
    use base64::Engine as _;
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// The `Content-Length` a request declares, if it is a number.
pub fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
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
        // Joined rather than `format!`ted: built for every request, and the formatting
        // machinery cost more than the rest of the routing phase
        // (`bench/results/2026-12-06-instructions.md`).
        _ => match public {
            Some(host) => [scheme, "://", host, paths::UNIT_PREFIX, unit.as_str()].concat(),
            None => unit.path_prefix(),
        },
    }
}

/// The request's host (`:authority`, an absolute target's, or `Host`), validated: user info
/// in an authority is refused too (RFC 9113 §8.3.1 forbids it in `:authority`).
pub fn request_host<B>(req: &Request<B>) -> Result<String, &'static str> {
    let text = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => {
            let mut values = req.headers().get_all(header::HOST).iter();
            let v = values.next().ok_or("missing Host header")?;
            if values.next().is_some() {
                return Err("more than one Host header");
            }
            v.to_str().map_err(|_| "malformed Host header")?
        }
    };
    if !is_valid_host(text.as_bytes()) {
        return Err("malformed Host header");
    }
    Ok(text.to_owned())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::balance::Policy;
    use crate::config::{Failback, Scheme};
    use std::time::Duration;
    use stickyfarm_api::CookiePolicy;

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

    pub(crate) fn settings(public_hosts: &[&str], addressing: Addressing) -> ProxySettings {
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
            max_tunnels_per_unit: 1,
            tunnel_idle_timeout: Duration::from_secs(1),
            hsts: None,
            app_protocol: stickyfarm_api::config::AppProtocol::Http1,
            rebalance: None,
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
        let absolute = |target: &str| Request::get(target).body(()).unwrap();
        assert_eq!(
            request_host(&absolute("http://shop.example:8000/cart")).unwrap(),
            "shop.example:8000"
        );
        assert!(request_host(&absolute("http://user@shop.example/cart")).is_err());
        let two = Request::get("/")
            .header(header::HOST, "a")
            .header(header::HOST, "b")
            .body(())
            .unwrap();
        assert!(request_host(&two).is_err());
    }

    fn get(headers: &[(&str, &str)]) -> Request<http_body_util::Empty<bytes::Bytes>> {
        let mut r = Request::get("/cart").version(http::Version::HTTP_11);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(http_body_util::Empty::new()).unwrap()
    }

    #[test]
    fn a_route_names_the_unit_by_address_then_by_cookie() {
        let s = settings(&[], Addressing::Path);
        let remote: SocketAddr = "10.0.0.7:4000".parse().unwrap();
        let sid = stickyfarm_api::SessionId::generate();
        // Secure cookies without a `Domain` carry the `__Host-` prefix (see `settings`).
        let cookie = format!("__Host-sf_session={sid}; __Host-sf_unit=web-1");
        let r = route(&s, &get(&[("host", "shop"), ("cookie", &cookie)]), remote).unwrap();
        assert_eq!(r.wanted, Some("web-1".parse().unwrap()));
        assert!(!r.explicit && r.has_session);
        assert_eq!(r.key, sid.as_bytes());
        let mut by_path = get(&[("host", "shop"), ("cookie", &cookie)]);
        *by_path.uri_mut() = "/_unit/web-2/cart?x=1".parse().unwrap();
        let r = route(&s, &by_path, remote).unwrap();
        assert_eq!(r.wanted, Some("web-2".parse().unwrap()));
        assert_eq!(r.forward_path, "/cart?x=1");
        assert!(r.explicit);
        assert_eq!(r.cookie_unit, Some("web-1".parse().unwrap()));
        // No session: keyed by the client's address.
        let r = route(&s, &get(&[("host", "shop")]), remote).unwrap();
        assert_eq!((r.wanted, r.has_session), (None, false));
        assert_eq!(r.key, vec![10, 0, 0, 7]);
    }

    #[test]
    fn a_malformed_head_is_refused_before_any_unit_is_chosen() {
        let s = settings(&[], Addressing::Path);
        let remote: SocketAddr = "10.0.0.7:4000".parse().unwrap();
        assert!(matches!(
            route(&s, &get(&[]), remote),
            Err(Refusal::BadHost(_))
        ));
        let too_long = get(&[("host", "shop"), ("content-length", "1025")]);
        assert_eq!(route(&s, &too_long, remote), Err(Refusal::BodyTooLarge));
        let mut internal = get(&[("host", "shop")]);
        *internal.uri_mut() = "/_unit/web-0/_stickyfarm/health".parse().unwrap();
        assert_eq!(route(&s, &internal, remote), Err(Refusal::InternalPath));
        let mut bad = get(&[("host", "shop")]);
        *bad.uri_mut() = "/_unit/web-0/../web-1/x".parse().unwrap();
        assert!(matches!(
            route(&s, &bad, remote),
            Err(Refusal::BadUnitAddress(_))
        ));
    }
}
