//! Why an index was refused.

use std::fmt;
use std::io;

/// Why an index could not be read or written. Variants are named after
/// the fields of spec/INDEX.md; messages say what was wrong and what to do.
#[non_exhaustive]
#[derive(Debug)]
pub enum IndexError {
    /// Reading or writing failed.
    Io(io::Error),
    /// The first eight bytes are not [`crate::MAGIC`].
    NotAnIndex,
    /// The file ends inside `section`.
    Truncated { section: &'static str },
    /// The header's bytes do not match its hash.
    HeaderHash,
    /// Another major version.
    UnsupportedVersion { major: u16, minor: u16 },
    /// Must-understand feature bits this reader does not know.
    UnsupportedFeatures { bits: u64 },
    /// A hash algorithm or length this reader does not know.
    UnsupportedHash { field: &'static str, got: u8 },
    /// A field out of its range.
    Invalid { field: &'static str, reason: String },
    /// A field over a limit (of the format, or the reader's [`crate::Limits`]).
    TooLarge {
        field: &'static str,
        got: u64,
        max: u64,
    },
    /// The trailer does not match the header and entries read.
    ContentHash,
    /// Bytes after the end of the index.
    TrailingBytes,
    /// A signature that does not verify: the index was altered after
    /// signing, or the signature block is damaged.
    BadSignature,
    /// The writer was given more or fewer entries than the header declares,
    /// or a signing key that does not match the header's feature bit.
    Misuse { reason: &'static str },
}

impl fmt::Display for IndexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const REMAKE: &str = "make it again with `mkpatch index` on the machine that has the image";
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::NotAnIndex => write!(
                f,
                "not an anypatch index (wrong magic); give a file made by `mkpatch index`"
            ),
            Self::Truncated { section } => {
                write!(f, "the index is truncated (it ends inside the {section}); {REMAKE} or copy it again")
            }
            Self::HeaderHash => write!(
                f,
                "the index header is corrupt (its hash does not match); {REMAKE} or copy it again"
            ),
            Self::UnsupportedVersion { major, minor } => write!(
                f,
                "index version {major}.{minor} is not supported (this mkpatch reads 1.x); \
                 use a newer mkpatch"
            ),
            Self::UnsupportedFeatures { bits } => write!(
                f,
                "the index needs features this mkpatch does not know (bits {bits:#x}); use a newer mkpatch"
            ),
            Self::UnsupportedHash { field, got } => write!(
                f,
                "the index's {field} is {got}, which this mkpatch does not know; use a newer mkpatch"
            ),
            Self::Invalid { field, reason } => {
                write!(f, "the index is invalid: {field} {reason}; {REMAKE}")
            }
            Self::TooLarge { field, got, max } => write!(
                f,
                "the index's {field} is {got}, over the limit of {max}; {REMAKE} with a larger \
                 --block-size, or raise the limit"
            ),
            Self::ContentHash => write!(
                f,
                "the index is corrupt (its trailer hash does not match its entries); {REMAKE} or copy it again"
            ),
            Self::TrailingBytes => write!(
                f,
                "the index has bytes after its end; it is damaged or two files were joined: {REMAKE}"
            ),
            Self::BadSignature => write!(
                f,
                "a signature in the index does not verify: it was altered after signing; do not use it"
            ),
            Self::Misuse { reason } => write!(f, "index writer misuse: {reason}"),
        }
    }
}

impl std::error::Error for IndexError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for IndexError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}
