//! Errors the engine reports. Each says what was wrong and what to do.

use core::fmt;

use anypatch_format::{FormatError, Hex};

use crate::zstd::ZstdError;

/// Why an apply failed. Once [`crate::Applier::poll`] returns an error, every
/// later call returns the same error.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyError {
    /// The patch bytes do not decode (see the inner error).
    Format(FormatError),
    /// The patch ended before `section` was complete.
    Truncated { section: &'static str },
    /// The old file's length is not the header's `old_len`.
    BaseLength { got: u64, expected: u64 },
    /// The old file's BLAKE3 is not the header's `old_hash`.
    BaseHash,
    /// A page does not hash to what the header or the previous page says.
    PageHash { page: u64 },
    /// A data segment's output does not hash to its manifest entry.
    SegmentHash { segment: u64, new_offset: u64 },
    /// The bytes of the whole patch do not hash to the trailer's `patch_hash`.
    PatchHash,
    /// The produced new file does not hash to the header's `new_hash`.
    NewHash,
    /// An extent or op reads old bytes outside the old file.
    SourceOutOfRange {
        new_offset: u64,
        source: i128,
        len: u64,
        old_len: u64,
    },
    /// Extents or ops do not add up to the lengths the header or entry states.
    LengthMismatch {
        field: &'static str,
        got: u64,
        expected: u64,
    },
    /// A data block (or packed ops block) does not decode, and why.
    Decode { segment: u64, why: ZstdError },
    /// A compact page's frame does not decode (`page` counts from 0), and why.
    PageDecode { page: u64, why: ZstdError },
    /// In-place apply was asked for, but the patch reads old bytes that an
    /// earlier part of the apply has already overwritten.
    NotInPlaceSafe { new_offset: u64, source: u64 },
    /// Bytes follow the trailer.
    TrailingBytes,
    /// A signature is required but the patch has none.
    Unsigned,
    /// The patch is signed, but by no trusted key.
    UntrustedSigner { key_id: [u8; 8] },
    /// A signature does not verify: the patch changed after signing. Refused
    /// whether or not trusted keys were given.
    BadSignature { key_id: [u8; 8] },
    /// The header's `new_len` is above the adapter's
    /// [`crate::Config::max_new_len`]: refused before any work.
    NewTooLarge { got: u64, max: u64 },
    /// A checkpoint given to [`crate::Applier::resume`] belongs to another
    /// patch or does not fit this one: resume from the start instead.
    CheckpointMismatch,
}

/// Coarse classes of [`ApplyError`], for exit codes and user advice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The patch is damaged, truncated or hostile.
    CorruptPatch,
    /// The patch is fine but was made against another old file.
    WrongBase,
    /// The patch needs a newer applier.
    Unsupported,
    /// The patch cannot be applied in place.
    NotInPlace,
    /// The patch is not signed by a trusted key, or declares a new file
    /// larger than the adapter accepts: refused by the adapter's policy.
    Untrusted,
}

impl ApplyError {
    /// The class of this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Format(
                FormatError::UnsupportedMajor { .. }
                | FormatError::UnknownRequiredFeatures { .. }
                | FormatError::UnknownCodec { .. },
            ) => ErrorClass::Unsupported,
            Self::BaseLength { .. } | Self::BaseHash => ErrorClass::WrongBase,
            Self::NotInPlaceSafe { .. } => ErrorClass::NotInPlace,
            Self::Unsigned
            | Self::UntrustedSigner { .. }
            | Self::BadSignature { .. }
            | Self::NewTooLarge { .. } => ErrorClass::Untrusted,
            _ => ErrorClass::CorruptPatch,
        }
    }
}

impl From<FormatError> for ApplyError {
    fn from(e: FormatError) -> Self {
        Self::Format(e)
    }
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Format(e) => e.fmt(f),
            Self::Truncated { section } => write!(f, "patch is truncated: it ends inside the {section}"),
            Self::BaseLength { got, expected } => write!(
                f,
                "wrong base: the old file is {got} bytes but the patch was made against a {expected}-byte file"
            ),
            Self::BaseHash => write!(
                f,
                "wrong base: the old file's BLAKE3 differs from the one the patch was made against"
            ),
            Self::PageHash { page } => write!(f, "patch is corrupt: manifest page {page} fails its hash check"),
            Self::SegmentHash { segment, new_offset } => write!(
                f,
                "patch is corrupt: data segment {segment} (new offset {new_offset}) fails its hash check"
            ),
            Self::PatchHash => write!(f, "patch is corrupt: the whole-patch hash in the trailer does not match"),
            Self::NewHash => write!(f, "result check failed: the new file's BLAKE3 differs from the header's"),
            Self::SourceOutOfRange { new_offset, source, len, old_len } => write!(
                f,
                "patch is corrupt: new offset {new_offset} reads {len} old bytes at {source}, outside the {old_len}-byte old file"
            ),
            Self::LengthMismatch { field, got, expected } => {
                write!(f, "patch is corrupt: {field} is {got}, expected {expected}")
            }
            Self::Decode { segment, why } => write!(f, "patch is corrupt: data segment {segment} does not decompress ({why})"),
            Self::PageDecode { page, why } => write!(f, "patch is corrupt: manifest page {page} does not decompress ({why})"),
            Self::NotInPlaceSafe { new_offset, source } => write!(
                f,
                "patch cannot be applied in place: new offset {new_offset} reads old offset {source}, which an earlier write replaces; apply it to a separate output file instead"
            ),
            Self::TrailingBytes => write!(f, "patch is corrupt: unexpected bytes after the trailer"),
            Self::Unsigned => write!(f, "refused: the patch is not signed, and a trusted key was required"),
            Self::UntrustedSigner { key_id } => {
                let key_id = Hex(key_id);
                write!(f, "refused: the patch is signed by key {key_id}, which is not one of the trusted keys")
            }
            Self::BadSignature { key_id } => {
                let key_id = Hex(key_id);
                write!(f, "refused: the signature by key {key_id} does not verify; the patch was altered after signing, get it again from its source")
            }
            Self::NewTooLarge { got, max } => write!(
                f,
                "refused: the patch makes a {got}-byte new file, above the limit of {max} bytes; raise the limit if you trust the patch"
            ),
            Self::CheckpointMismatch => write!(
                f,
                "cannot resume: the checkpoint belongs to another patch or does not fit this one; start from the beginning"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ApplyError {}
