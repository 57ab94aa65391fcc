//! Key files: one line of text, versioned, so they survive email and
//! copy-paste and say what they are.
//!
//! ```text
//! anypatch public-key v1 ed25519 <64 hex digits: the 32-byte public key>
//! anypatch secret-key v1 ed25519 <64 hex digits: the 32-byte Ed25519 seed>
//! ```
//!
//! Fields are separated by single spaces; one trailing newline is allowed.
//! Lines starting with `#` before the key line are comments.

use alloc::string::String;
use core::fmt;

/// What a key file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Public,
    Secret,
}

impl KeyKind {
    fn word(self) -> &'static str {
        match self {
            KeyKind::Public => "public-key",
            KeyKind::Secret => "secret-key",
        }
    }
}

/// Why a key file does not parse.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFileError {
    /// Not an anypatch key file at all.
    NotAKeyFile,
    /// A public key where a secret key was expected, or the reverse.
    WrongKind { expected: KeyKind },
    /// A key file version this build does not read.
    UnsupportedVersion,
    /// An algorithm other than ed25519.
    UnsupportedAlgorithm,
    /// The key is not 64 hex digits.
    BadKey,
}

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAKeyFile => write!(
                f,
                "not an anypatch key file (expected a line 'anypatch public-key v1 ed25519 ...')"
            ),
            Self::WrongKind {
                expected: KeyKind::Public,
            } => {
                write!(
                    f,
                    "this is a secret key; give the .pub file (never ship the secret key)"
                )
            }
            Self::WrongKind {
                expected: KeyKind::Secret,
            } => {
                write!(f, "this is a public key; signing needs the secret key file")
            }
            Self::UnsupportedVersion => {
                write!(f, "key file version is not supported; use a newer anypatch")
            }
            Self::UnsupportedAlgorithm => {
                write!(f, "key algorithm is not supported (only ed25519)")
            }
            Self::BadKey => write!(f, "key file is damaged: the key is not 64 hex digits"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for KeyFileError {}

/// Parses a key file of the expected kind and returns the 32 key bytes.
pub fn parse_key_file(text: &str, expected: KeyKind) -> Result<[u8; 32], KeyFileError> {
    let line = text
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .ok_or(KeyFileError::NotAKeyFile)?;
    let mut words = line.trim_end().split(' ');
    if words.next() != Some("anypatch") {
        return Err(KeyFileError::NotAKeyFile);
    }
    let kind = match words.next() {
        Some("public-key") => KeyKind::Public,
        Some("secret-key") => KeyKind::Secret,
        _ => return Err(KeyFileError::NotAKeyFile),
    };
    if kind != expected {
        return Err(KeyFileError::WrongKind { expected });
    }
    if words.next() != Some("v1") {
        return Err(KeyFileError::UnsupportedVersion);
    }
    if words.next() != Some("ed25519") {
        return Err(KeyFileError::UnsupportedAlgorithm);
    }
    let hex = words.next().ok_or(KeyFileError::BadKey)?;
    if words.next().is_some() || hex.len() != 64 {
        return Err(KeyFileError::BadKey);
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        let pair = hex.get(2 * i..2 * i + 2).ok_or(KeyFileError::BadKey)?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| KeyFileError::BadKey)?;
    }
    Ok(key)
}

/// Formats a key file line (with its trailing newline).
pub fn key_file_text(key: &[u8; 32], kind: KeyKind) -> String {
    use core::fmt::Write;
    let mut s = String::with_capacity(100);
    let _ = writeln!(s, "anypatch {} v1 ed25519 {}", kind.word(), crate::Hex(key));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let key = [0xAB; 32];
        let text = key_file_text(&key, KeyKind::Public);
        assert!(text.starts_with("anypatch public-key v1 ed25519 abab"));
        assert_eq!(parse_key_file(&text, KeyKind::Public), Ok(key));
        assert_eq!(
            parse_key_file(&alloc::format!("# release key\n{text}"), KeyKind::Public),
            Ok(key)
        );
        assert_eq!(
            parse_key_file(&text, KeyKind::Secret),
            Err(KeyFileError::WrongKind {
                expected: KeyKind::Secret
            })
        );
        assert_eq!(
            parse_key_file(&text.replace("v1", "v2"), KeyKind::Public),
            Err(KeyFileError::UnsupportedVersion)
        );
        assert_eq!(
            parse_key_file(&text[..60], KeyKind::Public),
            Err(KeyFileError::BadKey)
        );
        assert_eq!(
            parse_key_file("hello", KeyKind::Public),
            Err(KeyFileError::NotAKeyFile)
        );
    }
}
