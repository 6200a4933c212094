//! Shared secrets between Stickyfarm components, and the random secrets they are made of.
//!
//! Two tokens exist per farm (see `SECURITY.md`):
//! - the **admin token** authorises routing changes on the gateway's control port
//!   (`Authorization: Bearer <token>`);
//! - the **gateway token** proves to a sidecar that a request came through the gateway
//!   ([`crate::headers::GATEWAY_TOKEN`]), so only then does it trust the gateway's headers.
//!
//! A token never appears in `Debug` output or in an error message.

use std::fmt;
use std::path::Path;

use thiserror::Error;

/// Random bytes in a generated secret: 256 bits.
const SECRET_BYTES: usize = 32;
/// Shorter tokens from a file are refused: they could be guessed.
pub const MIN_TOKEN_LEN: usize = 32;

/// A token could not be made or read.
#[derive(Debug, Error)]
pub enum TokenError {
    /// The token file could not be read.
    #[error("cannot read the token file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file's content is not a usable token.
    #[error(
        "the token file {path} does not hold a usable token: {reason} (expected at least {MIN_TOKEN_LEN} visible ASCII characters, e.g. 64 hex digits from `openssl rand -hex 32`)"
    )]
    Unusable {
        /// The file.
        path: String,
        /// What is wrong (never the content).
        reason: &'static str,
    },
    /// The OS random source failed.
    #[error("cannot draw a random secret from the operating system: {0}")]
    Random(String),
}

/// `SECRET_BYTES` random bytes as lower-case hex digits: safe in URLs, headers and files
/// without escaping. Used for tokens and generated database passwords alike.
pub fn random_hex() -> Result<String, TokenError> {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A shared secret. Compared in constant time; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A new random token.
    pub fn generate() -> Result<Token, TokenError> {
        random_hex().map(Token)
    }

    /// Reads a token from a file (a mounted Secret key, or `farmctl`'s state dir). Surrounding
    /// white space (a trailing newline) is ignored.
    pub fn read(path: &Path) -> Result<Token, TokenError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: shown.clone(),
            source,
        })?;
        Token::parse(text.trim()).map_err(|reason| TokenError::Unusable {
            path: shown,
            reason,
        })
    }

    /// A token from its text: at least [`MIN_TOKEN_LEN`] visible ASCII characters (so it is
    /// a valid header value).
    pub fn parse(text: &str) -> Result<Token, &'static str> {
        if text.len() < MIN_TOKEN_LEN {
            return Err("too short");
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("holds white space or characters that are not visible ASCII");
        }
        Ok(Token(text.to_owned()))
    }

    /// The token's text, to write into a Secret, a file or a header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token. Takes the same time wherever the first difference
    /// is, so timing does not reveal the token byte by byte.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let ours = self.0.as_bytes();
        if presented.len() != ours.len() {
            return false;
        }
        ours.iter()
            .zip(presented)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
    }

    /// Whether an `Authorization` header value is `Bearer <this token>`.
    pub fn matches_bearer(&self, authorization: &[u8]) -> bool {
        let Some(scheme) = authorization.get(..7) else {
            return false;
        };
        scheme.eq_ignore_ascii_case(b"bearer ") && self.matches(authorization[7..].trim_ascii())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Token {
        Token::parse("0123456789abcdef0123456789abcdef").unwrap()
    }

    #[test]
    fn generated_tokens_are_64_hex_digits_and_differ() {
        let (a, b) = (Token::generate().unwrap(), Token::generate().unwrap());
        assert_eq!(a.expose().len(), 64);
        assert!(a.expose().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn only_the_exact_token_matches() {
        let t = token();
        assert!(t.matches(b"0123456789abcdef0123456789abcdef"));
        assert!(!t.matches(b"0123456789abcdef0123456789abcdeF"));
        assert!(!t.matches(b"0123456789abcdef0123456789abcde"));
        assert!(!t.matches(b"0123456789abcdef0123456789abcdef0"));
        assert!(!t.matches(b""));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_required() {
        let t = token();
        assert!(t.matches_bearer(b"Bearer 0123456789abcdef0123456789abcdef"));
        assert!(t.matches_bearer(b"bearer 0123456789abcdef0123456789abcdef"));
        assert!(!t.matches_bearer(b"Basic 0123456789abcdef0123456789abcdef"));
        assert!(!t.matches_bearer(b"0123456789abcdef0123456789abcdef"));
        assert!(!t.matches_bearer(b"Bearer"));
        assert!(!t.matches_bearer(b""));
    }

    #[test]
    fn short_or_unprintable_tokens_are_refused_and_never_shown() {
        assert!(Token::parse("short").is_err());
        assert!(Token::parse("0123456789abcdef 0123456789abcdef").is_err());
        assert_eq!(format!("{:?}", token()), "Token(<redacted>)");
    }

    #[test]
    fn read_trims_the_newline_and_names_the_file_not_the_content() {
        let dir = std::env::temp_dir().join(format!("sf-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, "0123456789abcdef0123456789abcdef\n").unwrap();
        assert_eq!(Token::read(&good).unwrap(), token());
        let bad = dir.join("bad");
        std::fs::write(&bad, "hunter2\n").unwrap();
        let e = Token::read(&bad).unwrap_err().to_string();
        assert!(e.contains("too short") && e.contains("bad"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
