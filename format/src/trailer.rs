//! The trailer: BLAKE3 of every byte before it, then the end magic.
//!
//! | offset | size | field      |
//! |--------|------|------------|
//! | 0x00   | 32   | patch_hash |
//! | 0x20   | 8    | end magic [`TRAILER_MAGIC`] |

use crate::{FormatError, Hash, TRAILER_LEN, TRAILER_MAGIC};

/// The trailer's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// BLAKE3 of every patch byte before the trailer.
    pub patch_hash: Hash,
}

impl Trailer {
    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() != TRAILER_LEN {
            return Err(FormatError::Truncated {
                what: "trailer",
                needed: TRAILER_LEN as u64,
                got: bytes.len() as u64,
            });
        }
        if bytes[32..] != TRAILER_MAGIC {
            return Err(FormatError::BadTrailerMagic);
        }
        let mut patch_hash = [0u8; 32];
        patch_hash.copy_from_slice(&bytes[..32]);
        Ok(Self { patch_hash })
    }

    pub const fn encoded_len(&self) -> usize {
        TRAILER_LEN
    }

    pub fn emit(&self, out: &mut [u8; TRAILER_LEN]) {
        out[..32].copy_from_slice(&self.patch_hash);
        out[32..].copy_from_slice(&TRAILER_MAGIC);
    }
}
