//! Errors found while decoding patch bytes.

use core::fmt;

/// Why some patch bytes do not decode. Fields are named after the spec's fields.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// Fewer bytes than the structure needs.
    Truncated {
        what: &'static str,
        needed: u64,
        got: u64,
    },
    /// The first eight bytes are not [`crate::MAGIC`].
    BadMagic { got: [u8; 8] },
    /// The major version is not one this applier reads.
    UnsupportedMajor { got: u16, supported: u16 },
    /// Must-understand feature bits that this applier does not know.
    UnknownRequiredFeatures { bits: u32 },
    /// A length or count above the format's limit.
    TooLarge {
        field: &'static str,
        got: u64,
        max: u64,
    },
    /// A length that must be positive is zero.
    ZeroLength { field: &'static str },
    /// The header hash does not match the preamble and header body.
    HeaderHashMismatch,
    /// A postcard-encoded structure does not decode.
    Malformed { what: &'static str },
    /// Bytes left over after a structure that must end exactly.
    TrailingBytes { what: &'static str, count: u64 },
    /// A data segment names a codec this applier does not know.
    UnknownCodec { got: u8 },
    /// The last eight bytes are not [`crate::TRAILER_MAGIC`].
    BadTrailerMagic,
    /// A field value that the spec forbids.
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { what, needed, got } => {
                write!(f, "patch is truncated: {what} needs {needed} bytes, only {got} present")
            }
            Self::BadMagic { .. } => write!(f, "not an anypatch patch (bad magic bytes)"),
            Self::UnsupportedMajor { got, supported } => write!(
                f,
                "patch format version {got} is not supported (this applier reads version {supported}); use a newer version of anypatch"
            ),
            Self::UnknownRequiredFeatures { bits } => write!(
                f,
                "patch needs features this applier does not know (flags {bits:#010x}); use a newer version of anypatch"
            ),
            Self::TooLarge { field, got, max } => {
                write!(f, "patch is corrupt or hostile: {field} is {got}, above the limit {max}")
            }
            Self::ZeroLength { field } => write!(f, "patch is corrupt: {field} is zero"),
            Self::HeaderHashMismatch => write!(f, "patch header is corrupt (header hash mismatch)"),
            Self::Malformed { what } => write!(f, "patch is corrupt: {what} does not decode"),
            Self::TrailingBytes { what, count } => {
                write!(f, "patch is corrupt: {count} unexpected bytes after {what}")
            }
            Self::UnknownCodec { got } => {
                write!(f, "patch uses unknown codec {got}; use a newer version of anypatch")
            }
            Self::BadTrailerMagic => write!(f, "patch is corrupt or truncated: bad trailer"),
            Self::Invalid { field, reason } => write!(f, "patch is corrupt: {field} {reason}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for FormatError {}
