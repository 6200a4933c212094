//! Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection and must not be
//! forwarded by a proxy.

use http::HeaderMap;
use http::header::{CONNECTION, HeaderName, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};

/// Headers that are hop-by-hop whether or not `Connection` names them (as names: a `&str`
/// name is parsed again on every use, twice per proxied request).
const ALWAYS: [HeaderName; 3] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("proxy-authenticate"),
];

/// The standard headers that are hop-by-hop by themselves (`Connection` names the others).
const STANDARD: [HeaderName; 5] = [CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE];

/// Whether `name` is hop-by-hop by itself.
fn always_hop_by_hop(name: &HeaderName) -> bool {
    STANDARD.contains(name) || ALWAYS.contains(name)
}

/// Removes hop-by-hop headers: the fixed set and every header that `Connection` names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most heads carry none of them: one pass over the names present is cheaper than a lookup
    // per hop-by-hop name (those lookups were 5 % of the gateway's instructions per request,
    // `bench/results/2026-12-06-instructions.md`). Without `Connection`, no other header is
    // named hop-by-hop.
    if !headers.keys().any(always_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    // `TE: trailers` is the one hop-by-hop value every hop must pass on: a gRPC client sends
    // it to say it reads trailers, and gRPC servers refuse a request without it (RFC 9113
    // §8.2.2 allows exactly this value in HTTP/2).
    let trailers = headers
        .get_all(TE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in STANDARD {
        headers.remove(name);
    }
    if trailers {
        headers.insert(TE, http::HeaderValue::from_static("trailers"));
    }
    for name in ALWAYS {
        headers.remove(name);
    }
}

/// Removes every Stickyfarm header ([`crate::headers::PREFIX`]) so a client cannot forge one.
pub fn remove_stickyfarm_headers(headers: &mut HeaderMap) {
    let ours: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(crate::headers::PREFIX))
        .cloned()
        .collect();
    for name in ours {
        headers.remove(name);
    }
}

/// The protocol an HTTP/1.1 request asks to switch to: `Connection` names `upgrade` and
/// `Upgrade` names a protocol (RFC 9110 §7.8). HTTP/2 has no `Upgrade` (RFC 9113 §8.2.2), and
/// `Upgrade: h2c` is not passed on: it would switch the client's hop, not the unit's (RFC 9113
/// deprecates it); such a request goes on as plain HTTP/1.1.
pub fn upgrade_protocol<B>(req: &http::Request<B>) -> Option<http::HeaderValue> {
    if req.version() != http::Version::HTTP_11 {
        return None;
    }
    let asks = req
        .headers()
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let mut protocols = req.headers().get_all(UPGRADE).iter();
    match (asks, protocols.next(), protocols.next()) {
        (true, Some(p), None) if !p.is_empty() && !p.as_bytes().eq_ignore_ascii_case(b"h2c") => {
            Some(p.clone())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_fixed_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("content-type", "text/html".parse().unwrap());
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }

    #[test]
    fn a_head_without_hop_by_hop_headers_is_left_as_it_is() {
        let mut h = HeaderMap::new();
        h.insert("host", "shop".parse().unwrap());
        h.append("cookie", "a=1".parse().unwrap());
        h.append("cookie", "b=2".parse().unwrap());
        h.insert("x-custom", "keep-alive".parse().unwrap());
        let before = h.clone();
        remove_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn each_fixed_hop_by_hop_header_goes_alone() {
        for name in [
            "connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
        ] {
            let mut h = HeaderMap::new();
            h.insert("accept", "*/*".parse().unwrap());
            h.insert(HeaderName::from_static(name), "x".parse().unwrap());
            remove_hop_by_hop(&mut h);
            assert_eq!(h.len(), 1, "{name} stayed");
        }
    }

    #[test]
    fn te_trailers_passes_and_every_other_te_goes() {
        let mut h = HeaderMap::new();
        h.insert("te", "Trailers".parse().unwrap());
        remove_hop_by_hop(&mut h);
        assert_eq!(h["te"], "trailers");
        let mut h = HeaderMap::new();
        h.insert("te", "gzip, trailers".parse().unwrap());
        remove_hop_by_hop(&mut h);
        assert!(!h.contains_key("te"), "only the exact value passes");
    }

    #[test]
    fn strips_forged_stickyfarm_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-stickyfarm-session", "forged".parse().unwrap());
        h.append("x-stickyfarm-unit", "a".parse().unwrap());
        h.append("x-stickyfarm-unit", "b".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        remove_stickyfarm_headers(&mut h);
        assert_eq!(h.len(), 1);
    }

    fn get(headers: &[(&str, &str)]) -> http::Request<()> {
        let mut r = http::Request::get("/cart").version(http::Version::HTTP_11);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(()).unwrap()
    }

    #[test]
    fn an_upgrade_needs_both_headers_and_http_1_1() {
        let ws = get(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(upgrade_protocol(&ws).unwrap(), "websocket");
        assert_eq!(upgrade_protocol(&get(&[("upgrade", "websocket")])), None);
        assert_eq!(upgrade_protocol(&get(&[("connection", "upgrade")])), None);
        let two = get(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("upgrade", "h2c"),
        ]);
        assert_eq!(upgrade_protocol(&two), None, "one protocol, not a choice");
        let h2c = get(&[
            ("connection", "upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
        ]);
        assert_eq!(upgrade_protocol(&h2c), None);
        let mut h2 = get(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        *h2.version_mut() = http::Version::HTTP_2;
        assert_eq!(upgrade_protocol(&h2), None);
    }
}
