//! JSON documents as text: held and handed out shared ([`Doc`]), and walked without parsing
//! ([`Structure`]: which bytes are structure, which are inside strings). The sidecar keeps
//! documents as the text it was given and only ever needs to look at their structure (how deep
//! they nest, where `jsonb`'s spaces are), so a parse would be wasted.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A table's JSON document as text, shared rather than copied once it is taken in.
///
/// The text goes out on every read: as the session API's answer (copying a 64 KiB cart for
/// each `GET` was about 8 % of the unit's CPU per read, `bench/results/2026-12-05-reads.md`),
/// into the copy a write makes of the other tables, into a warm copy. Sharing the text makes
/// each of those a count increment. The text never changes: a write replaces the table's `Doc`.
///
/// The text has a block of its own, exactly its length, apart from the count. With the count in
/// front of the text (`Arc<str>`), a 1,024-byte cart took a 1,040-byte block, which mimalloc
/// rounds up to its 1,280-byte size class: 0.26 KiB more resident per cached 1 KiB session
/// (`bench/results/2026-12-06-doc-block.md`).
#[derive(Clone, PartialEq, Eq)]
pub struct Doc(Arc<String>);

impl Doc {
    /// The text as a response body, without copying it.
    pub fn body(&self) -> bytes::Bytes {
        bytes::Bytes::from_owner(self.clone())
    }
}

impl From<&str> for Doc {
    /// Copies `text` into a block of exactly its length.
    fn from(text: &str) -> Self {
        Doc(Arc::new(text.to_owned()))
    }
}

impl std::ops::Deref for Doc {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<[u8]> for Doc {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl PartialEq<&str> for Doc {
    fn eq(&self, other: &&str) -> bool {
        self.0.as_str() == *other
    }
}

impl std::fmt::Display for Doc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for Doc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl Serialize for Doc {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Doc {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Doc::from(String::deserialize(deserializer)?.as_str()))
    }
}

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
    fn a_doc_is_handed_out_without_a_copy() {
        let doc = Doc::from(r#"{"items":[{"sku":"a","qty":2}]}"#);
        let body = doc.body();
        assert_eq!(&body[..], doc.as_bytes());
        assert_eq!(
            body.as_ptr(),
            doc.as_ptr(),
            "the body is the cached text itself"
        );
        let copy = doc.clone();
        assert_eq!(copy.as_ptr(), doc.as_ptr());
        // It outlives the cached copy it came from.
        drop((doc, copy));
        assert_eq!(&body[..], br#"{"items":[{"sku":"a","qty":2}]}"#);
    }

    #[test]
    fn a_docs_text_has_a_block_of_exactly_its_length() {
        // A 1,024-byte cart stays in mimalloc's 1,024-byte class: no spare room, no count.
        let text = "x".repeat(1024);
        let doc = Doc::from(text.as_str());
        assert_eq!(doc.0.capacity(), 1024);
        let back: Doc = serde_json::from_str(&serde_json::to_string(&doc).unwrap()).unwrap();
        assert_eq!(
            back.0.capacity(),
            1024,
            "nor when read back from the disk tier"
        );
    }

    #[test]
    fn a_doc_is_written_and_read_as_a_plain_string() {
        let doc = Doc::from(r#"[1,"é"]"#);
        let json = serde_json::to_string(&doc).unwrap();
        assert_eq!(json, r#""[1,\"é\"]""#);
        assert_eq!(serde_json::from_str::<Doc>(&json).unwrap(), doc);
    }

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
