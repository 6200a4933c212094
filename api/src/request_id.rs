//! The request id: one per request, in `x-request-id` from the client (when it sent a valid
//! one) through gateway and sidecar to the app and back, and in every log line about the
//! request, so a request can be followed across the components.
//!
//! A client's id is kept only when it is short and made of safe characters: it ends up in logs
//! and in the app's headers, where a newline, quote or megabyte of text would forge log lines
//! or fill disks. Anything else is replaced by a fresh id.

use http::{HeaderMap, HeaderName, HeaderValue};

/// The header.
pub const HEADER: &str = "x-request-id";

/// [`HEADER`] as a name: on the hot path a `&str` name is parsed on every use.
pub const NAME: HeaderName = HeaderName::from_static(HEADER);

/// The longest id kept from a client.
pub const MAX_LEN: usize = 128;

/// Whether `v` is an id worth keeping: 1 to [`MAX_LEN`] characters of `A–Z a–z 0–9 - _ . : /`
/// (UUIDs, W3C trace ids, the ids of other proxies).
pub fn is_valid(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= MAX_LEN
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(b))
}

/// Random bytes fetched from the OS at once, per thread: one system call per 256 ids instead
/// of one per request.
const RANDOM_BATCH: usize = 4096;

thread_local! {
    static RANDOM: std::cell::RefCell<([u8; RANDOM_BATCH], usize)> =
        const { std::cell::RefCell::new(([0; RANDOM_BATCH], RANDOM_BATCH)) };
}

/// A fresh id: 128 random bits as 32 hexadecimal digits.
pub fn generate() -> HeaderValue {
    let mut bytes = [0u8; 16];
    RANDOM.with_borrow_mut(|(batch, used)| {
        if *used + bytes.len() > RANDOM_BATCH {
            getrandom::fill(batch).expect("the OS random source failed; cannot mint request ids");
            *used = 0;
        }
        bytes.copy_from_slice(&batch[*used..*used + 16]);
        *used += 16;
    });
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 32];
    for (i, b) in bytes.iter().enumerate() {
        text[2 * i] = HEX[usize::from(b >> 4)];
        text[2 * i + 1] = HEX[usize::from(b & 0x0f)];
    }
    HeaderValue::from_bytes(&text).expect("hex digits are a valid header value")
}

/// The request's id: the one `headers` carry when there is exactly one and it is valid, else
/// a fresh one, which then replaces whatever was there. Returns it.
pub fn ensure(headers: &mut HeaderMap) -> HeaderValue {
    let mut sent = headers.get_all(&NAME).iter();
    if let (Some(v), None) = (sent.next(), sent.next())
        && is_valid(v.as_bytes())
    {
        return v.clone();
    }
    let id = generate();
    headers.insert(NAME, id.clone());
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clients_valid_id_is_kept() {
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_static("3f2a-b7.c:d/e_f"));
        assert_eq!(ensure(&mut h), "3f2a-b7.c:d/e_f");
        assert_eq!(h[HEADER], "3f2a-b7.c:d/e_f");
    }

    #[test]
    fn a_forged_or_oversized_id_is_replaced() {
        let long = "a".repeat(MAX_LEN + 1);
        for bad in ["", "a b", "a\"b", "id=1;x", long.as_str(), "ünï"] {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(bad) {
                h.insert(HEADER, v);
            }
            let id = ensure(&mut h);
            assert_eq!(id.len(), 32, "{bad:?}");
            assert!(is_valid(id.as_bytes()));
            assert_eq!(h.get_all(HEADER).iter().count(), 1);
        }
        // Two ids: which would the logs believe? Neither.
        let mut h = HeaderMap::new();
        h.append(HEADER, HeaderValue::from_static("one"));
        h.append(HEADER, HeaderValue::from_static("two"));
        let id = ensure(&mut h);
        assert_eq!(id.len(), 32);
        assert_eq!(h.get_all(HEADER).iter().count(), 1);
    }

    #[test]
    fn fresh_ids_differ_across_batches() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| generate()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(
            ids.iter()
                .all(|id| id.len() == 32 && is_valid(id.as_bytes()))
        );
    }
}
