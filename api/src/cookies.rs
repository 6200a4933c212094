//! Reading Stickyfarm's cookies from a client and writing them back.
//!
//! The `Cookie` header is split into pairs as the `cookie` crate splits it ([`cookie_pairs`];
//! a property test holds the two to the same answers), and the values of our own cookies are
//! then parsed strictly. A malformed value never fails the request: it is treated as absent and
//! reported in [`ClientCookies::errors`], so the sidecar answers with a fresh session instead of
//! a 500.

use cookie::{Cookie, SameSite};

use crate::{ContractError, Generation, InstanceId, SessionId, UnitName, cookie_names};

/// Stickyfarm's cookies as sent by a client, each parsed into its type.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClientCookies {
    /// The session id, when present and well-formed.
    pub session: Option<SessionId>,
    /// The instance id of the unit that last served the client.
    pub instance: Option<InstanceId>,
    /// The newest session generation the client has seen.
    pub generation: Option<Generation>,
    /// The gateway's routing cookie.
    pub unit: Option<UnitName>,
    /// What was malformed: those cookies are treated as absent.
    pub errors: Vec<ContractError>,
    /// The request carried two different session ids (cookie tossing: a sibling subdomain
    /// or an injected response planting its own): neither is used.
    pub conflicting_sessions: bool,
}

/// Longest `Cookie` header value we look into; longer ones are refused as a whole.
pub const MAX_COOKIE_HEADER_LEN: usize = 8 * 1024;

/// The name of the session cookie (GEP-1619's `sessionName`): an RFC 6265 token of 1 to 64
/// characters that is none of Stickyfarm's other cookie names. [`cookie_names::SESSION`] by
/// default.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SessionCookieName(String);

/// What [`SessionCookieName`] accepts (RFC 6265 token characters).
pub const SESSION_COOKIE_NAME_PATTERN: &str = "^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$";

impl SessionCookieName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for SessionCookieName {
    fn default() -> Self {
        SessionCookieName(cookie_names::SESSION.to_owned())
    }
}

impl std::str::FromStr for SessionCookieName {
    type Err = ContractError;
    fn from_str(s: &str) -> Result<Self, ContractError> {
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+.^_`|~-".contains(c);
        if s.is_empty() || s.len() > 64 || !s.chars().all(token) {
            return Err(ContractError::MalformedCookieName(
                "expected 1-64 characters of letters, digits and !#$%&'*+.^_`|~-",
            ));
        }
        if [
            cookie_names::INSTANCE,
            cookie_names::GENERATION,
            cookie_names::UNIT,
        ]
        .contains(&s)
        {
            return Err(ContractError::MalformedCookieName(
                "sf_instance, sf_gen and sf_unit are Stickyfarm's other cookies",
            ));
        }
        Ok(SessionCookieName(s.to_owned()))
    }
}

impl TryFrom<String> for SessionCookieName {
    type Error = ContractError;
    fn try_from(s: String) -> Result<Self, ContractError> {
        s.parse()
    }
}

impl From<SessionCookieName> for String {
    fn from(n: SessionCookieName) -> String {
        n.0
    }
}

impl std::fmt::Display for SessionCookieName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses Stickyfarm's cookies out of the `Cookie` header values of one request, with the
/// default names (no `Secure`, so no prefix).
pub fn parse_client_cookies<'a>(
    header_values: impl IntoIterator<Item = &'a [u8]>,
) -> ClientCookies {
    CookiePolicy::default().parse(header_values)
}

/// One of the cookies a farm sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FarmCookie {
    /// The session id (sidecar).
    Session,
    /// The instance id of the unit that served last (sidecar).
    Instance,
    /// The newest generation the client has seen (sidecar).
    Generation,
    /// The routing cookie (gateway).
    Unit,
}

/// How a farm names and marks its cookies; the gateway and the sidecars of one farm must use
/// the same policy (one configuration: the session cookie's name, `Secure`, `Domain`).
///
/// With `Secure` and no `Domain`, every name carries the `__Host-` prefix (RFC 6265bis §4.1.3.2,
/// as OWASP asks): browsers then accept the cookie only from this very host over HTTPS with
/// `Path=/`, so a sibling subdomain or a plain-HTTP response cannot plant one. Cookies without
/// the prefix are not read at all in that case, even under the right base name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookiePolicy {
    names: [String; 4],
    secure: bool,
    domain: Option<String>,
}

/// The prefix of host-only secure cookies.
pub const HOST_PREFIX: &str = "__Host-";

impl Default for CookiePolicy {
    fn default() -> Self {
        CookiePolicy::new(&SessionCookieName::default(), false, None)
    }
}

impl CookiePolicy {
    /// The policy for a session cookie named `session`, `Secure` or not, with an optional
    /// `Domain` (host-style unit addresses need one so every unit sees the cookies).
    pub fn new(session: &SessionCookieName, secure: bool, domain: Option<String>) -> Self {
        let prefix = if secure && domain.is_none() {
            HOST_PREFIX
        } else {
            ""
        };
        let name = |base: &str| format!("{prefix}{base}");
        CookiePolicy {
            names: [
                name(session.as_str()),
                name(cookie_names::INSTANCE),
                name(cookie_names::GENERATION),
                name(cookie_names::UNIT),
            ],
            secure,
            domain,
        }
    }

    /// The name a cookie is set and read under.
    pub fn name(&self, cookie: FarmCookie) -> &str {
        &self.names[cookie as usize]
    }

    /// Whether the cookies are `Secure`.
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// A `Set-Cookie` value: always `HttpOnly`, `SameSite=Lax`, `Path=/`; `Secure` and `Domain`
    /// by the policy. No `Max-Age`: the cookies live as long as the browser session, and
    /// PostgreSQL decides when a session has expired (idle and absolute timeouts). `value` must
    /// already be valid (the `Display` form of one of this crate's types).
    pub fn set_cookie(&self, cookie: FarmCookie, value: &str) -> String {
        let mut b = Cookie::build((self.name(cookie), value))
            .path("/")
            .http_only(true)
            .same_site(SameSite::Lax)
            .secure(self.secure);
        if let Some(d) = &self.domain {
            b = b.domain(d.as_str());
        }
        b.build().to_string()
    }

    /// Parses the farm's cookies out of the `Cookie` header values of one request.
    ///
    /// When one of the other cookies appears more than once, the first occurrence wins, as RFC
    /// 6265 orders more specific paths first. Two *different* session ids are treated as none:
    /// Stickyfarm sets one session cookie for `/`, so a second one was planted by someone else
    /// (cookie tossing), and choosing either could hand the client the attacker's session.
    pub fn parse<'a>(&self, header_values: impl IntoIterator<Item = &'a [u8]>) -> ClientCookies {
        let [session, instance, generation, unit] = &self.names;
        let mut out = ClientCookies::default();
        let (mut seen_instance, mut seen_generation, mut seen_unit) = (false, false, false);
        // The first session value, borrowed from the header text (no copy on the hot path),
        // and whether a different one followed.
        let mut first_session: Option<&str> = None;
        for raw in header_values {
            if raw.len() > MAX_COOKIE_HEADER_LEN {
                out.errors
                    .push(ContractError::MalformedCookieHeader("longer than 8 KiB"));
                continue;
            }
            let Ok(text) = std::str::from_utf8(raw) else {
                out.errors
                    .push(ContractError::MalformedCookieHeader("not UTF-8"));
                continue;
            };
            for pair in cookie_pairs(text) {
                let Some((name, value)) = pair else {
                    out.errors.push(ContractError::MalformedCookieHeader(
                        "unparseable cookie pair",
                    ));
                    continue;
                };
                if name == session {
                    match first_session {
                        None => first_session = Some(value),
                        Some(first) if first != value => out.conflicting_sessions = true,
                        Some(_) => {}
                    }
                } else if name == instance && !seen_instance {
                    seen_instance = true;
                    store(&mut out.instance, value.parse(), &mut out.errors);
                } else if name == generation && !seen_generation {
                    seen_generation = true;
                    store(&mut out.generation, value.parse(), &mut out.errors);
                } else if name == unit && !seen_unit {
                    seen_unit = true;
                    store(&mut out.unit, value.parse(), &mut out.errors);
                }
            }
        }
        if let Some(value) = first_session.filter(|_| !out.conflicting_sessions) {
            store(&mut out.session, value.parse(), &mut out.errors);
        }
        out
    }
}

/// The pairs of one `Cookie` header's text, name and value, borrowed from it: what
/// `cookie::Cookie::split_parse` finds, without building a `Cookie` for each (on every request
/// through the gateway and the sidecar, that was most of the cost of reading the cookies).
///
/// As that crate does (RFC 6265 §5.2, leniently): the text is split at `;`; a part of only
/// whitespace is skipped; the rest is split at its first `=`, and name and value are trimmed of
/// whitespace. A part without `=`, or with an empty name, is `None`. Values are not
/// percent-decoded, and a value's double quotes stay part of it.
fn cookie_pairs(text: &str) -> impl Iterator<Item = Option<(&str, &str)>> {
    text.split(';')
        .filter(|part| !part.chars().all(char::is_whitespace))
        .map(|part| {
            let (name, value) = part.split_once('=')?;
            let name = name.trim();
            (!name.is_empty()).then(|| (name, value.trim()))
        })
}

fn store<T>(
    slot: &mut Option<T>,
    parsed: Result<T, ContractError>,
    errors: &mut Vec<ContractError>,
) {
    match parsed {
        Ok(v) => *slot = Some(v),
        Err(e) => errors.push(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the `cookie` crate makes of `text`: the reference [`cookie_pairs`] is held to.
    fn cookie_crate_pairs(text: &str) -> Vec<Option<(&str, &str)>> {
        Cookie::split_parse(text)
            .map(|c| {
                c.ok()
                    .map(|c| (c.name_raw().unwrap(), c.value_raw().unwrap()))
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn pairs_are_split_as_the_cookie_crate_splits_them(
            text in "([ \t\u{a0}\u{3000};=\"a-z_]|sf_session|sf_unit){0,40}",
            any_text in ".{0,80}",
        ) {
            for t in [&text, &any_text] {
                prop_assert_eq!(cookie_pairs(t).collect::<Vec<_>>(), cookie_crate_pairs(t), "{:?}", t);
            }
        }
    }

    #[test]
    fn pairs_keep_quotes_skip_blank_parts_and_refuse_pairs_without_a_name() {
        let pairs: Vec<_> = cookie_pairs(" a = 1 ;; \t; b=\"x y\"; =v; c; d=").collect();
        assert_eq!(
            pairs,
            [
                Some(("a", "1")),
                Some(("b", "\"x y\"")),
                None,
                None,
                Some(("d", "")),
            ]
        );
        assert_eq!(
            pairs,
            cookie_crate_pairs(" a = 1 ;; \t; b=\"x y\"; =v; c; d=")
        );
    }

    #[test]
    fn parses_our_cookies_and_ignores_others() {
        let sid = SessionId::generate();
        let iid = InstanceId::random();
        let header =
            format!("theme=dark; sf_session={sid}; sf_instance={iid}; sf_gen=7; sf_unit=web-1");
        let c = parse_client_cookies([header.as_bytes()]);
        assert_eq!(c.session, Some(sid));
        assert_eq!(c.instance, Some(iid));
        assert_eq!(c.generation, Some(Generation(7)));
        assert_eq!(c.unit, Some("web-1".parse().unwrap()));
        assert!(c.errors.is_empty());
    }

    #[test]
    fn malformed_values_are_absent_and_reported() {
        let c = parse_client_cookies([
            b"sf_session=../../etc; sf_instance=x; sf_gen=-3; sf_unit=A_B".as_slice(),
        ]);
        assert_eq!(c.session, None);
        assert_eq!(c.instance, None);
        assert_eq!(c.generation, None);
        assert_eq!(c.unit, None);
        assert_eq!(c.errors.len(), 4);
    }

    #[test]
    fn headers_combine_and_two_session_ids_are_none() {
        let a = SessionId::generate();
        let b = SessionId::generate();
        let h1 = format!("sf_session={a}; sf_gen=5");
        let h2 = format!("sf_session={b}; sf_gen=3");
        let c = parse_client_cookies([h1.as_bytes(), h2.as_bytes()]);
        assert_eq!(c.session, None, "a tossed cookie: neither id is used");
        assert!(c.conflicting_sessions);
        assert_eq!(c.generation, Some(Generation(5)), "first occurrence wins");
        // The same id twice is not a conflict.
        let h = format!("sf_session={a}; sf_session={a}");
        let c = parse_client_cookies([h.as_bytes()]);
        assert_eq!(c.session, Some(a));
        assert!(!c.conflicting_sessions);
        // A malformed second value conflicts too (the attacker's cookie need not parse).
        let h = format!("sf_session={a}; sf_session=junk");
        assert_eq!(parse_client_cookies([h.as_bytes()]).session, None);
    }

    #[test]
    fn garbage_headers_do_not_panic() {
        let long = vec![b'a'; MAX_COOKIE_HEADER_LEN + 1];
        for raw in [&b"\xff\xfe"[..], b";;;", b"=", b"sf_session", &long] {
            let c = parse_client_cookies([raw]);
            assert_eq!(c.session, None);
        }
    }

    #[test]
    fn a_configured_session_cookie_name_is_the_only_one_read() {
        let sid = SessionId::generate();
        let other = SessionId::generate();
        let name: SessionCookieName = "shop_sid".parse().unwrap();
        let header = format!("sf_session={other}; shop_sid={sid}");
        let c = CookiePolicy::new(&name, false, None).parse([header.as_bytes()]);
        assert_eq!(c.session, Some(sid));
        for bad in [
            "",
            "a b",
            "sf_unit",
            "sf_gen",
            "sf_instance",
            "x;y",
            &"a".repeat(65),
        ] {
            assert!(bad.parse::<SessionCookieName>().is_err(), "{bad:?}");
        }
        assert_eq!(SessionCookieName::default().as_str(), "sf_session");
    }

    #[test]
    fn set_cookie_has_the_security_attributes() {
        let with_domain = CookiePolicy::new(
            &SessionCookieName::default(),
            true,
            Some("shop.example".into()),
        );
        let v = with_domain.set_cookie(FarmCookie::Session, "abc");
        for part in [
            "sf_session=abc",
            "HttpOnly",
            "SameSite=Lax",
            "Secure",
            "Path=/",
            "Domain=shop.example",
        ] {
            assert!(v.contains(part), "{v} lacks {part}");
        }
        assert!(!v.contains("__Host-"), "a Domain rules the prefix out: {v}");
        let plain = CookiePolicy::default().set_cookie(FarmCookie::Instance, "x");
        assert!(plain.starts_with("sf_instance=x"), "{plain}");
        assert!(!plain.contains("Secure"));
        assert!(plain.contains("HttpOnly"));
    }

    #[test]
    fn secure_host_only_cookies_carry_the_host_prefix_and_only_those_are_read() {
        let name: SessionCookieName = "shop_sid".parse().unwrap();
        let p = CookiePolicy::new(&name, true, None);
        for (cookie, want) in [
            (FarmCookie::Session, "__Host-shop_sid"),
            (FarmCookie::Instance, "__Host-sf_instance"),
            (FarmCookie::Generation, "__Host-sf_gen"),
            (FarmCookie::Unit, "__Host-sf_unit"),
        ] {
            assert_eq!(p.name(cookie), want);
            let v = p.set_cookie(cookie, "1");
            // What browsers require of a __Host- cookie.
            assert!(v.starts_with(&format!("{want}=1")), "{v}");
            assert!(
                v.contains("Secure") && v.contains("Path=/") && !v.contains("Domain"),
                "{v}"
            );
        }
        let sid = SessionId::generate();
        let planted = SessionId::generate();
        // A cookie tossed by a sibling subdomain or over plain HTTP cannot carry the prefix:
        // under the bare name it is not even looked at.
        let header = format!(
            "shop_sid={planted}; __Host-shop_sid={sid}; sf_unit=web-9; __Host-sf_unit=web-1"
        );
        let c = p.parse([header.as_bytes()]);
        assert_eq!(c.session, Some(sid));
        assert!(!c.conflicting_sessions);
        assert_eq!(c.unit, Some("web-1".parse().unwrap()));
        let only_bare = format!("shop_sid={planted}; sf_unit=web-9");
        let c = p.parse([only_bare.as_bytes()]);
        assert_eq!((c.session, c.unit), (None, None));
    }
}
