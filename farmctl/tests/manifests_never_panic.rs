//! Property test: `farmctl validate` (the manifest parser and its checks) never panics on any
//! text, and an accepted manifest is the example's kind of object.

use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 500,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const EXAMPLE: &str = include_str!("../../examples/webstore.yaml");

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_text(text in "[ -~\\n\\t]{0,400}") {
        let _ = farmctl::manifest::parse("any.yaml", &text);
    }

    #[test]
    fn the_example_cut_or_mangled(cut in 0..EXAMPLE.len(), byte in any::<u8>(), at in 0..EXAMPLE.len()) {
        let mut text = EXAMPLE.as_bytes()[..cut].to_vec();
        if at < text.len() {
            text[at] = byte;
        }
        let text = String::from_utf8_lossy(&text);
        if let Ok(m) = farmctl::manifest::parse("mangled.yaml", &text) {
            prop_assert!(m.spec.replicas.0 >= 1);
        }
    }
}
