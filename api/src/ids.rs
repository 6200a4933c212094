use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Sha256;
use uuid::Uuid;

use crate::ContractError;

/// A session id: 128 bits, written as 22 characters of unpadded base64url (safe in cookies,
/// URLs and headers).
///
/// The sidecar mints the ids it hands to clients (random bits and a keyed tag only it can
/// verify, see `sidecar/src/issued.rs`); a client-chosen id is never adopted (the sidecar issues
/// a new one when PostgreSQL does not know the presented one and it did not issue it).
/// [`SessionId::generate`] makes a fully random id (tests, tools). The all-zero id is reserved
/// for internal probes and never parses.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId([u8; 16]);

impl SessionId {
    /// Length of the text form.
    pub const TEXT_LEN: usize = 22;
    /// The reserved all-zero id, used by health probes of the cache; never a real session.
    pub const PROBE: SessionId = SessionId([0; 16]);

    /// Mints a new id from the operating system's CSPRNG.
    ///
    /// # Panics
    /// When the operating system has no entropy source, which no supported platform lacks.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).expect("the OS random source failed; cannot mint session ids");
        SessionId(bytes)
    }

    /// The text form (22 characters of base64url), written into `buf`: what `Display` writes,
    /// for the hot paths that put the id in a header or a snapshot on every read, where the
    /// formatting machinery and a `String` cost more than the encoding.
    pub fn encode<'b>(&self, buf: &'b mut [u8; Self::TEXT_LEN]) -> &'b str {
        let n = URL_SAFE_NO_PAD
            .encode_slice(self.0, buf)
            .expect("22 bytes hold 16 bytes of base64");
        std::str::from_utf8(&buf[..n]).expect("base64 is ASCII")
    }

    /// The raw 128 bits.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The id as a UUID value: how it is stored in PostgreSQL (a 16-byte `uuid` column).
    pub fn as_uuid(&self) -> Uuid {
        Uuid::from_bytes(self.0)
    }

    /// Builds an id from the 16 bytes stored in PostgreSQL.
    pub fn from_uuid(uuid: Uuid) -> Self {
        SessionId(uuid.into_bytes())
    }
}

impl FromStr for SessionId {
    type Err = ContractError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != Self::TEXT_LEN {
            return Err(ContractError::MalformedSessionId("wrong length"));
        }
        // The decoder rejects non-canonical trailing bits, so every id has exactly one text form.
        let mut bytes = [0u8; 16];
        let n = URL_SAFE_NO_PAD
            .decode_slice(s.as_bytes(), &mut bytes)
            .map_err(|_| ContractError::MalformedSessionId("not canonical base64url"))?;
        if n != 16 {
            return Err(ContractError::MalformedSessionId("wrong length"));
        }
        if bytes == [0; 16] {
            return Err(ContractError::MalformedSessionId("reserved id"));
        }
        Ok(SessionId(bytes))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.encode(&mut [0; Self::TEXT_LEN]))
    }
}

impl fmt::Debug for SessionId {
    // A session id is a bearer credential: debug output shows only a prefix.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.to_string();
        write!(f, "SessionId({}…)", &text[..6])
    }
}

impl Serialize for SessionId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for SessionId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            Ok(SessionId(<[u8; 16]>::deserialize(d)?))
        }
    }
}

/// A session id as PostgreSQL stores it and notifications announce it: a keyed hash of the id
/// (HMAC-SHA256 under the farm's [`SessionIdKey`], first 128 bits). The raw id is a bearer
/// credential; whoever reads the session tables, a backup of them or the `NOTIFY` channel
/// learns only stored ids, which no cookie accepts, and cannot compute one without the key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StoredId([u8; 16]);

impl StoredId {
    /// Reserved for the cache's own health probe; no real session hashes to it in practice.
    pub const PROBE: StoredId = StoredId([0; 16]);

    /// The stored id as PostgreSQL's `uuid` value.
    pub fn as_uuid(&self) -> Uuid {
        Uuid::from_bytes(self.0)
    }

    /// A stored id read from PostgreSQL or a notification.
    pub fn from_uuid(uuid: Uuid) -> Self {
        StoredId(uuid.into_bytes())
    }
}

impl fmt::Debug for StoredId {
    // Not a credential, but long ids make logs hard to read: a prefix identifies it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex: String = self.0[..4].iter().map(|b| format!("{b:02x}")).collect();
        write!(f, "StoredId({hex}…)")
    }
}

/// Domain separation: the same secret never yields a stored id and a fingerprint alike.
const STORED_ID_CONTEXT: &[u8] = b"stickyfarm stored session id v1\0";
const FINGERPRINT_CONTEXT: &[u8] = b"stickyfarm session id key fingerprint v1\0";

/// The farm's key for storing session ids (every unit of a farm holds the same one; on
/// Kubernetes the operator keeps it in the Secret `<farm>-session-id-key`). It must live as long
/// as the sessions: with another key no stored session is found again.
#[derive(Clone)]
pub struct SessionIdKey(Hmac<Sha256>);

impl SessionIdKey {
    /// A key from the farm's secret (at least 32 bytes of it are expected; see
    /// [`crate::token::Token`]).
    pub fn new(secret: &[u8]) -> Self {
        SessionIdKey(
            <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
                .expect("HMAC takes a key of any length"),
        )
    }

    fn tag(&self, context: &[u8], data: &[u8]) -> [u8; 32] {
        let mut mac = self.0.clone();
        mac.update(context);
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// The stored form of `id`.
    pub fn stored(&self, id: &SessionId) -> StoredId {
        let tag = self.tag(STORED_ID_CONTEXT, id.as_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(&tag[..16]);
        StoredId(out)
    }

    /// Names the key without revealing it (16 hex digits): recorded in the database so a unit
    /// started with another key refuses to serve instead of losing every session.
    pub fn fingerprint(&self) -> String {
        self.tag(FINGERPRINT_CONTEXT, b"")[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl fmt::Debug for SessionIdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionIdKey(<redacted>)")
    }
}

/// The id of one server instance: the pod UID from the downward API.
///
/// Kubernetes gives every pod a new UID, so the id changes whenever a unit's pod is replaced
/// (the patent's server instance ID). Outside Kubernetes (`farmctl up`) each start of a unit
/// gets a fresh random UUID, which has the same effect. A sidecar restart inside the same pod
/// keeps the id; that is safe because the sidecar never recovers its disk tier across restarts
/// (see the sidecar's cache module).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InstanceId(Uuid);

impl InstanceId {
    /// Length of the text form.
    pub const TEXT_LEN: usize = 36;

    /// A fresh random instance id, for a unit that runs outside Kubernetes.
    pub fn random() -> Self {
        InstanceId(Uuid::new_v4())
    }

    /// The id as a UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl FromStr for InstanceId {
    type Err = ContractError;

    /// Accepts exactly the hyphenated form Kubernetes uses for UIDs (36 characters).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != Self::TEXT_LEN {
            return Err(ContractError::MalformedInstanceId);
        }
        let uuid = Uuid::try_parse(s).map_err(|_| ContractError::MalformedInstanceId)?;
        if uuid.is_nil() {
            return Err(ContractError::MalformedInstanceId);
        }
        Ok(InstanceId(uuid))
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl TryFrom<String> for InstanceId {
    type Error = ContractError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<InstanceId> for String {
    fn from(id: InstanceId) -> String {
        id.to_string()
    }
}

/// The generation of a session: a counter in PostgreSQL that grows by one with every committed
/// change to any of the session's tables.
///
/// Clients carry the newest generation they were served ([`crate::cookie_names::GENERATION`]);
/// a unit whose cached copy is older must reload before serving. This closes the patent's gap
/// of a unit that was only marked down and still holds an old copy.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, Serialize, Deserialize,
)]
pub struct Generation(pub u64);

impl FromStr for Generation {
    type Err = ContractError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_decimal(s)
            .map(Generation)
            .ok_or(ContractError::MalformedGeneration)
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Parses a canonical decimal `u64`: digits only, no sign, no leading zeros, fits in an `i64`
/// (PostgreSQL's `bigint`).
pub(crate) fn parse_decimal(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if b.len() > 1 && b[0] == b'0' {
        return None;
    }
    let v: u64 = s.parse().ok()?;
    (v <= i64::MAX as u64).then_some(v)
}

/// The name of one application state table of a session (`cart`, `login`, `wishlist`, …).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TableName(String);

impl TableName {
    /// Longest accepted name.
    pub const MAX_LEN: usize = 64;

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TableName {
    type Err = ContractError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-');
        if ok {
            Ok(TableName(s.to_owned()))
        } else {
            Err(ContractError::MalformedTableName)
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for TableName {
    type Error = ContractError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<TableName> for String {
    fn from(t: TableName) -> String {
        t.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_round_trip_and_are_unique() {
        let a = SessionId::generate();
        let b = SessionId::generate();
        assert_ne!(a, b);
        let text = a.to_string();
        assert_eq!(text.len(), SessionId::TEXT_LEN);
        assert!(
            text.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_eq!(text.parse::<SessionId>().unwrap(), a);
    }

    #[test]
    fn stored_ids_are_keyed_hashes_that_differ_by_key_and_id() {
        let id = SessionId::generate();
        let key = SessionIdKey::new(b"0123456789abcdef0123456789abcdef");
        let other = SessionIdKey::new(b"fedcba9876543210fedcba9876543210");
        let stored = key.stored(&id);
        assert_eq!(
            stored,
            key.stored(&id),
            "deterministic: every unit finds the row"
        );
        assert_ne!(stored, other.stored(&id), "another key, another stored id");
        assert_ne!(stored, key.stored(&SessionId::generate()));
        assert_ne!(
            stored.as_uuid().as_bytes(),
            id.as_bytes(),
            "never the raw id"
        );
        assert_eq!(StoredId::from_uuid(stored.as_uuid()), stored);
        assert_eq!(key.fingerprint().len(), 16);
        assert_ne!(key.fingerprint(), other.fingerprint());
        assert_eq!(format!("{key:?}"), "SessionIdKey(<redacted>)");
        assert!(format!("{stored:?}").len() < 24);
    }

    #[test]
    fn session_id_parsing_is_strict() {
        let good = SessionId::generate().to_string();
        for bad in [
            "",
            "short",
            &format!("{good}A"),
            &good[..21],
            "AAAAAAAAAAAAAAAAAAAAA+", // '+' is not base64url
            "AAAAAAAAAAAAAAAAAAAAA=", // padding
            "AAAAAAAAAAAAAAAAAAAAAB", // non-canonical trailing bits
            "AAAAAAAAAAAAAAAAAAAAAA", // reserved probe id
            "ÄAAAAAAAAAAAAAAAAAAAA",  // non-ASCII with the right byte length
            "AAAAAAAAAAA AAAAAAAAAA", // space
        ] {
            assert!(bad.parse::<SessionId>().is_err(), "{bad:?} must not parse");
        }
    }

    #[test]
    fn session_id_debug_hides_the_credential() {
        let id = SessionId::generate();
        let dbg = format!("{id:?}");
        assert!(!dbg.contains(&id.to_string()));
    }

    #[test]
    fn instance_ids_are_pod_uids() {
        let uid = "3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6b";
        let id: InstanceId = uid.parse().unwrap();
        assert_eq!(id.to_string(), uid);
        // Upper case is accepted and normalised.
        assert_eq!(uid.to_uppercase().parse::<InstanceId>().unwrap(), id);
        for bad in [
            "",
            "3f2b8c1e9a4d4e6f8b7a1c2d3e4f5a6b",
            "{3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6b}",
            "00000000-0000-0000-0000-000000000000",
            "3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6g",
        ] {
            assert!(bad.parse::<InstanceId>().is_err(), "{bad:?}");
        }
        assert_ne!(InstanceId::random(), InstanceId::random());
    }

    #[test]
    fn generations_are_canonical_decimals() {
        assert_eq!("0".parse::<Generation>().unwrap(), Generation(0));
        assert_eq!("42".parse::<Generation>().unwrap(), Generation(42));
        for bad in ["", "-1", "+1", "01", "1e3", "9223372036854775808", " 1"] {
            assert!(bad.parse::<Generation>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn table_names() {
        assert!("cart".parse::<TableName>().is_ok());
        assert!("wish_list-2".parse::<TableName>().is_ok());
        for bad in ["", "Cart", "a/b", "..", &"x".repeat(65)] {
            assert!(bad.parse::<TableName>().is_err(), "{bad:?}");
        }
    }
}
