//! Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection and must not be
//! forwarded by a proxy.

use http::HeaderMap;
use http::header::{CONNECTION, HeaderName, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};

/// Headers that are hop-by-hop whether or not `Connection` names them.
const ALWAYS: [&str; 3] = ["keep-alive", "proxy-connection", "proxy-authenticate"];

/// Removes hop-by-hop headers: the fixed set and every header that `Connection` names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
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
    for name in [CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(name);
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
    fn strips_forged_stickyfarm_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-stickyfarm-session", "forged".parse().unwrap());
        h.append("x-stickyfarm-unit", "a".parse().unwrap());
        h.append("x-stickyfarm-unit", "b".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        remove_stickyfarm_headers(&mut h);
        assert_eq!(h.len(), 1);
    }
}
