//! Property tests: what the gateway reads from a request (Host, unit address, forwarded
//! client address) and from a units file never panics, whatever the input.

use http::{HeaderMap, HeaderValue, Request};
use proptest::prelude::*;
use stickyfarm_gateway::proxy::{addressed, client_address, request_host};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 1_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn hosts(raw in proptest::collection::vec(any::<u8>(), 0..200), text in "[ -~]{0,120}") {
        for bytes in [raw.as_slice(), text.as_bytes()] {
            let Ok(v) = HeaderValue::from_bytes(bytes) else { continue };
            let req = Request::get("/").header("host", v).body(()).unwrap();
            if let Ok(host) = request_host(&req) {
                prop_assert!(!host.contains('@') && !host.contains('/'), "{host}");
            }
        }
    }

    #[test]
    fn unit_addresses(pq in "(/_unit/)?[ -~]{0,120}", host in "[ -~]{0,60}", farm in proptest::option::of("[a-z0-9.-]{1,30}")) {
        let _ = addressed(&pq, &host, farm.as_deref());
    }

    #[test]
    fn forwarded_for(xff in proptest::collection::vec("[ -~]{0,60}", 0..4), trust in any::<bool>()) {
        let mut h = HeaderMap::new();
        for v in &xff {
            if let Ok(v) = HeaderValue::from_str(v) {
                h.append("x-forwarded-for", v);
            }
        }
        let remote = "192.0.2.7:4444".parse().unwrap();
        let ip = client_address(remote, &h, trust);
        if !trust {
            prop_assert_eq!(ip, remote.ip(), "an untrusted header never names the client");
        }
    }

    #[test]
    fn units_files(text in "[ -~\\n]{0,400}") {
        let _ = stickyfarm_gateway::discovery::parse_units("units.yaml", &text);
    }
}
