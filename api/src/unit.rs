//! Unit names and unit addressing (the patent's subordinate farm units, FIG. 4B).
//!
//! A unit is reachable through the gateway at `/_unit/<unit>/…` (path style, the prefix is
//! stripped before forwarding) or at `<unit>.<farm host>` (host style).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{ContractError, paths};

/// The name of a unit: a DNS-1123 label (it is also a Service and pod name in Kubernetes).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UnitName(String);

impl UnitName {
    /// Longest accepted name (a DNS label).
    pub const MAX_LEN: usize = 63;

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path-style address of this unit on the gateway, without a trailing slash.
    pub fn path_prefix(&self) -> String {
        [paths::UNIT_PREFIX, self.0.as_str()].concat()
    }
}

impl FromStr for UnitName {
    type Err = ContractError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        if b.is_empty() || b.len() > Self::MAX_LEN {
            return Err(ContractError::MalformedUnitName("length must be 1-63"));
        }
        if !b
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        {
            return Err(ContractError::MalformedUnitName("invalid character"));
        }
        if b[0] == b'-' || b[b.len() - 1] == b'-' {
            return Err(ContractError::MalformedUnitName(
                "must not start or end with '-'",
            ));
        }
        Ok(UnitName(s.to_owned()))
    }
}

impl fmt::Display for UnitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for UnitName {
    type Error = ContractError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<UnitName> for String {
    fn from(u: UnitName) -> String {
        u.0
    }
}

/// A request path addressed to one unit: the unit and the path to forward to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitPath<'a> {
    /// The addressed unit.
    pub unit: UnitName,
    /// The rest of the path, starting with `/` (query included when the input had one).
    pub rest: &'a str,
}

/// Splits a path-and-query of the form `/_unit/<unit>[/rest][?query]`.
///
/// Returns `Ok(None)` for paths outside the unit prefix, and an error for a malformed unit
/// name or a path that tries to climb out of the unit (`..` segments, encoded dots or slashes,
/// backslashes): such requests are refused, never normalised into another unit.
pub fn parse_unit_path(path_and_query: &str) -> Result<Option<UnitPath<'_>>, ContractError> {
    let Some(after) = path_and_query.strip_prefix(paths::UNIT_PREFIX) else {
        // `/_unit` alone or `/_unitX` are not unit addresses.
        return Ok(None);
    };
    let end = after.find(['/', '?']).unwrap_or(after.len());
    let unit: UnitName = after[..end]
        .parse()
        .map_err(|_| ContractError::MalformedUnitPath("the unit name is not a DNS label"))?;
    let rest = &after[end..];
    let path_only = rest.split('?').next().unwrap_or("");
    if path_only.contains('\\') {
        return Err(ContractError::MalformedUnitPath("backslash in path"));
    }
    let lower = path_only.to_ascii_lowercase();
    if lower.contains("%2e") || lower.contains("%2f") || lower.contains("%5c") {
        return Err(ContractError::MalformedUnitPath(
            "encoded dot, slash or backslash in path",
        ));
    }
    if path_only.split('/').any(|seg| seg == ".." || seg == ".") {
        return Err(ContractError::MalformedUnitPath("dot segment in path"));
    }
    Ok(Some(UnitPath { unit, rest }))
}

/// Whether `text` is a host as the `Host` header carries it: `uri-host [ ":" port ]`
/// (RFC 9110 §7.2, RFC 3986 §3.2). The host is a bracketed IPv6 address (hex digits, `:` and
/// `.`), or a registered name or IPv4 address made of RFC 3986's unreserved characters and
/// sub-delimiters; the port is digits. No user info, no percent-encoding, no empty host.
///
/// Checked in one pass without allocating: it runs for every request the gateway proxies,
/// where parsing the header as an `http::uri::Authority` copied it first and was 2 % of the
/// gateway's instructions. It is stricter than that parser, which took any URI character
/// inside brackets and a port of letters. What it lets through can be written into the
/// quoted `host="…"` of a `Forwarded` header and into a URL as it is.
pub fn is_valid_host(text: &[u8]) -> bool {
    let (host, rest) = match text.first() {
        Some(b'[') => match text.iter().position(|&b| b == b']') {
            Some(end) => text.split_at(end + 1),
            None => return false,
        },
        _ => match text.iter().position(|&b| b == b':') {
            Some(colon) => text.split_at(colon),
            None => (text, &b""[..]),
        },
    };
    let host_ok = match host {
        [b'[', inside @ .., b']'] => {
            !inside.is_empty()
                && inside
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        }
        _ => !host.is_empty() && host.iter().all(|&b| is_reg_name_char(b)),
    };
    let port_ok = match rest {
        [] => true,
        [b':', port @ ..] => port.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    host_ok && port_ok
}

/// RFC 3986's unreserved characters and sub-delimiters: what a registered name is made of
/// (its percent-encoding aside). A table: this runs for every byte of every request's host.
fn is_reg_name_char(b: u8) -> bool {
    const TABLE: [bool; 256] = {
        let mut t = [false; 256];
        let mut c = 0;
        while c < 256 {
            let b = c as u8;
            t[c] = b.is_ascii_alphanumeric();
            c += 1;
        }
        let others = b"-._~!$&'()*+,;=";
        let mut i = 0;
        while i < others.len() {
            t[others[i] as usize] = true;
            i += 1;
        }
        t
    };
    TABLE[usize::from(b)]
}

/// Finds the unit of a host-style address `<unit>.<farm host>[:port]`.
///
/// `host` is the request's `Host` (or `:authority`); `farm_host` is the configured farm host
/// name. The comparison ignores ASCII case, as DNS does.
pub fn parse_unit_host(host: &str, farm_host: &str) -> Option<UnitName> {
    let host = strip_port(host);
    if host.len() <= farm_host.len() + 1 {
        return None;
    }
    let (label, domain) = host.split_at(host.len() - farm_host.len());
    if !domain.eq_ignore_ascii_case(farm_host) {
        return None;
    }
    let label = label.strip_suffix('.')?;
    label.to_ascii_lowercase().parse().ok()
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: never a unit host.
        return host;
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

/// The external base URL of a unit (no trailing slash), as the app must use it in links.
///
/// It travels in a header and ends up in HTML, so only a conservative character set is allowed.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct UnitBaseUrl(String);

impl UnitBaseUrl {
    /// Longest accepted URL.
    pub const MAX_LEN: usize = 512;

    /// The URL as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for UnitBaseUrl {
    type Err = ContractError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > Self::MAX_LEN {
            return Err(ContractError::MalformedUnitUrl("longer than 512 bytes"));
        }
        let rest = s
            .strip_prefix("http://")
            .or_else(|| s.strip_prefix("https://"))
            // A path-only base (`/_unit/web-0`) keeps links relative to wherever the client is.
            .or_else(|| s.strip_prefix('/').map(|_| s))
            .ok_or(ContractError::MalformedUnitUrl(
                "must start with http://, https:// or /",
            ))?;
        let safe = |c: u8| c.is_ascii_alphanumeric() || b"-._~/:%[]@".contains(&c);
        if !rest.bytes().all(safe) {
            return Err(ContractError::MalformedUnitUrl(
                "contains characters outside [A-Za-z0-9-._~/:%[]@]",
            ));
        }
        if s.starts_with("//") || rest.starts_with('/') && s.starts_with("http") {
            return Err(ContractError::MalformedUnitUrl("missing host"));
        }
        Ok(UnitBaseUrl(s.trim_end_matches('/').to_owned()))
    }
}

impl fmt::Display for UnitBaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_are_dns_labels() {
        for good in ["web-0", "a", "shop-commerce-12"] {
            assert!(good.parse::<UnitName>().is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "Web", "a_b", "a.b", &"a".repeat(64)] {
            assert!(bad.parse::<UnitName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hosts_as_the_host_header_carries_them() {
        for good in [
            "shop.example",
            "shop.example:8000",
            "shop.example:",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8443",
            "[2001:db8::ffff:192.0.2.1]",
            "web-0.shop_1.example~",
        ] {
            assert!(is_valid_host(good.as_bytes()), "{good:?}");
        }
        for bad in [
            &b""[..],
            b":80",
            b"user@shop",
            b"a b",
            b"shop/x",
            b"shop?x",
            b"shop\"x",
            b"sh%41op",
            b"sh\xffop",
            b"shop:8o",
            b"shop:80:81",
            b"[::1",
            b"[]",
            b"[zz::1]",
            b"[::1]x",
            b"[::1]:80]",
        ] {
            assert!(!is_valid_host(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn unit_paths() {
        let p = parse_unit_path("/_unit/web-1/cart?x=1").unwrap().unwrap();
        assert_eq!(p.unit.as_str(), "web-1");
        assert_eq!(p.rest, "/cart?x=1");
        let p = parse_unit_path("/_unit/web-1").unwrap().unwrap();
        assert_eq!(p.rest, "");
        let p = parse_unit_path("/_unit/web-1?q").unwrap().unwrap();
        assert_eq!(p.rest, "?q");
        assert_eq!(parse_unit_path("/cart").unwrap(), None);
        assert_eq!(parse_unit_path("/_units/x").unwrap(), None);
    }

    #[test]
    fn unit_paths_refuse_traversal() {
        for bad in [
            "/_unit/web-1/../web-2/cart",
            "/_unit/web-1/%2e%2e/x",
            "/_unit/web-1/%2E%2e/x",
            "/_unit/web-1/a%2fb",
            "/_unit/web-1/a\\b",
            "/_unit/../x",
            "/_unit//x",
            "/_unit/WEB/x",
            "/_unit/web-1/./x",
        ] {
            assert!(parse_unit_path(bad).is_err(), "{bad}");
        }
        // Dots inside a segment are fine; only whole dot segments climb.
        assert!(
            parse_unit_path("/_unit/web-1/a..b/c.html")
                .unwrap()
                .is_some()
        );
        // A query may contain anything.
        assert!(
            parse_unit_path("/_unit/web-1/x?next=../y")
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn unit_hosts() {
        assert_eq!(
            parse_unit_host("web-2.shop.example:8080", "shop.example")
                .unwrap()
                .as_str(),
            "web-2"
        );
        assert_eq!(
            parse_unit_host("WEB-2.Shop.Example", "shop.example")
                .unwrap()
                .as_str(),
            "web-2"
        );
        assert_eq!(parse_unit_host("shop.example", "shop.example"), None);
        assert_eq!(parse_unit_host("a.b.shop.example", "shop.example"), None);
        assert_eq!(parse_unit_host("web-2xshop.example", "shop.example"), None);
        assert_eq!(parse_unit_host("evil.example", "shop.example"), None);
        assert_eq!(parse_unit_host("[::1]:80", "shop.example"), None);
    }

    #[test]
    fn unit_base_urls() {
        assert_eq!(
            "http://127.0.0.1:8080/_unit/web-0/"
                .parse::<UnitBaseUrl>()
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8080/_unit/web-0"
        );
        assert!("https://web-0.shop.example".parse::<UnitBaseUrl>().is_ok());
        assert!("/_unit/web-0".parse::<UnitBaseUrl>().is_ok());
        for bad in [
            "javascript:alert(1)",
            "http://x/\"><script>",
            "//evil.example",
            "http:///x",
            "ftp://x",
            "http://x y",
        ] {
            assert!(bad.parse::<UnitBaseUrl>().is_err(), "{bad}");
        }
    }
}
