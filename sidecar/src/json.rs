//! Walking JSON text without parsing it: which bytes are structure, which are inside strings.
//! The sidecar keeps documents as the text it was given and only ever needs to look at their
//! structure (how deep they nest, where `jsonb`'s spaces are), so a parse would be wasted.

/// Follows a JSON text byte by byte and tells whether each byte is structure (outside every
/// string) or string content, escapes included.
#[derive(Debug, Default)]
pub struct Structure {
    in_string: bool,
    escaped: bool,
}

impl Structure {
    /// Whether `b`, the next byte of the text, is structure. A string's quotes count as its
    /// content.
    pub fn is_structure(&mut self, b: u8) -> bool {
        if self.in_string {
            match (self.escaped, b) {
                (true, _) => self.escaped = false,
                (false, b'\\') => self.escaped = true,
                (false, b'"') => self.in_string = false,
                _ => {}
            }
            return false;
        }
        if b == b'"' {
            self.in_string = true;
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_content_and_escapes_are_not_structure() {
        let text = br#"{"a\"]": [1]}"#;
        let mut s = Structure::default();
        let structure: String = text
            .iter()
            .filter(|&&b| s.is_structure(b))
            .map(|&b| b as char)
            .collect();
        assert_eq!(structure, "{: [1]}");
    }
}
