//! Property tests: the parsers that read what clients send (cookies, unit addresses, hosts,
//! ids, internal paths) never panic, whatever the input, and what they accept is well-formed.

use proptest::prelude::*;
use stickyfarm_api::{
    SessionId, UnitName, parse_client_cookies, parse_unit_host, parse_unit_path, paths,
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
