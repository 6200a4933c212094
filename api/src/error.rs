use thiserror::Error;

/// A value from a client, a header or a configuration did not match the Stickyfarm contract.
///
/// Every variant says which value was wrong; none echoes the value itself back, so a forged
/// cookie never ends up verbatim in logs.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ContractError {
    /// A session id is 22 characters of unpadded base64url encoding 16 bytes.
    #[error("malformed session id: {0}; expected 22 base64url characters (128 bits)")]
    MalformedSessionId(&'static str),
    /// An instance id is the pod UID as a lower- or upper-case hyphenated UUID.
    #[error("malformed instance id: expected the pod UID as a hyphenated UUID")]
    MalformedInstanceId,
    /// A generation is a decimal number without sign or leading zeros.
    #[error("malformed generation: expected a decimal number without sign or leading zeros")]
    MalformedGeneration,
    /// A unit name is a DNS-1123 label.
    #[error(
        "malformed unit name: {0}; expected 1-63 lower-case letters, digits or '-', starting and ending with a letter or digit"
    )]
    MalformedUnitName(&'static str),
    /// A table name is 1-64 characters of `[a-z0-9_-]`.
    #[error("malformed table name: expected 1-64 characters of a-z, 0-9, '_' or '-'")]
    MalformedTableName,
    /// A unit address in a path was not `/_unit/<unit>` or `/_unit/<unit>/…`, or tried to leave it.
    #[error("malformed unit address: {0}")]
    MalformedUnitPath(&'static str),
    /// A unit base URL must be an absolute http(s) URL made of safe characters.
    #[error("malformed unit base URL: {0}")]
    MalformedUnitUrl(&'static str),
    /// A configured session cookie name is not usable.
    #[error("invalid session cookie name: {0}")]
    MalformedCookieName(&'static str),
    /// The `Cookie` header was not valid.
    #[error("malformed Cookie header: {0}")]
    MalformedCookieHeader(&'static str),
}
