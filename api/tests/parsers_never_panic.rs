//! Property tests: the parsers that read what clients send (cookies, unit addresses, hosts,
//! ids, internal paths) never panic, whatever the input, and what they accept is well-formed.

use proptest::prelude::*;
use stickyfarm_api::{
    SessionId, UnitName, is_valid_host, parse_client_cookies, parse_unit_host, parse_unit_path,
    paths,
};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 1_000,
        // No regression files written into the checkout; a failure prints its minimal input.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn cookie_headers(raw in proptest::collection::vec(any::<u8>(), 0..600),
                      texty in "[ -~]{0,300}") {
        for header in [raw.as_slice(), texty.as_bytes()] {
            let c = parse_client_cookies([header, header]);
            if let Some(id) = c.session {
                prop_assert_eq!(id.to_string().parse::<SessionId>().ok(), Some(id));
            }
        }
    }

    #[test]
    fn cookie_pairs_that_look_like_ours(names in proptest::collection::vec("(sf_session|sf_unit|sf_gen|sf_instance|x)", 1..6),
                                        values in proptest::collection::vec("[ -~]{0,40}", 1..6)) {
        let header: String = names
            .iter()
            .zip(values.iter().cycle())
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let c = parse_client_cookies([header.as_bytes()]);
        if let Some(unit) = c.unit {
            prop_assert_eq!(unit.as_str().parse::<UnitName>().ok(), Some(unit));
        }
    }

    #[test]
    fn unit_paths(path in "(/_unit/)?[ -~]{0,120}") {
        if let Ok(Some(p)) = parse_unit_path(&path) {
            prop_assert!(path.starts_with(paths::UNIT_PREFIX));
            let path_part = p.rest.split('?').next().unwrap_or_default();
            prop_assert!(!path_part.split('/').any(|seg| seg == ".." || seg == "."),
                "a dot segment passed: {}", p.rest);
        }
        let _ = paths::is_internal(&path);
    }

    #[test]
    fn a_host_accepted_is_an_authority_with_a_host(raw in proptest::collection::vec(any::<u8>(), 0..40),
                                                   texty in "[\\[\\]:@%\"/?#a-f0-9.x -]{0,24}") {
        // Never more lenient than `http`'s own authority parser, which the gateway used
        // before: what passes is an authority without user info and with a host.
        for h in [raw.as_slice(), texty.as_bytes()] {
            if is_valid_host(h) {
                let text = std::str::from_utf8(h).expect("an accepted host is ASCII");
                let authority: http::uri::Authority = text.parse().expect("an authority");
                prop_assert!(!authority.host().is_empty() && !text.contains(['@', '"', '%']), "{text:?}");
            }
        }
    }

    #[test]
    fn ordinary_hosts_are_accepted(name in "[a-z0-9-]{1,20}(\\.[a-z0-9-]{1,20}){0,3}(:[0-9]{1,5})?",
                                   ip6 in "\\[[0-9a-f:]{2,39}\\](:[0-9]{1,5})?") {
        prop_assert!(is_valid_host(name.as_bytes()), "{name:?}");
        prop_assert!(is_valid_host(ip6.as_bytes()), "{ip6:?}");
    }

    #[test]
    fn unit_hosts(host in "[ -~]{0,80}", farm in "[a-z0-9.-]{0,30}") {
        if let Some(unit) = parse_unit_host(&host, &farm) {
            prop_assert!(unit.as_str().parse::<UnitName>().is_ok());
        }
    }

    #[test]
    fn ids_and_names(text in "\\PC{0,40}") {
        let _ = text.parse::<SessionId>();
        if let Ok(u) = text.parse::<UnitName>() {
            prop_assert_eq!(u.as_str(), text.as_str());
        }
    }
}
