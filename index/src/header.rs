//! The 128-byte header (spec/INDEX.md section 3.1).
//!
//! | offset | size | field |
//! |--------|------|-------|
//! | 0x00 | 8  | magic, [`MAGIC`] |
//! | 0x08 | 2  | major version (u16 LE) |
//! | 0x0A | 2  | minor version (u16 LE) |
//! | 0x0C | 4  | reserved, zero |
//! | 0x10 | 8  | required (must-understand) features (u64 LE) |
//! | 0x18 | 8  | optional features (u64 LE) |
//! | 0x20 | 8  | old image length (u64 LE) |
//! | 0x28 | 32 | old image BLAKE3 |
//! | 0x48 | 4  | block size (u32 LE) |
//! | 0x4C | 1  | strong hash algorithm |
//! | 0x4D | 1  | strong hash length |
//! | 0x4E | 1  | weak key algorithm |
//! | 0x4F | 1  | weak key length |
//! | 0x50 | 8  | seed of the strong hash (u64 LE) |
//! | 0x58 | 8  | block count (u64 LE) |
//! | 0x60 | 32 | header hash: BLAKE3 of bytes 0x00..0x60 |

use crate::{
    IndexError, HEADER_LEN, KNOWN_FEATURES, MAGIC, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, STRONG_XXH3_128,
    VERSION_MAJOR, VERSION_MINOR, WEAK_ADLER32,
};

/// Offset of the header hash, which covers every byte before it.
const HASH_AT: usize = 0x60;

/// A decoded header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The minor version written (readers accept any minor of major 1).
    pub minor: u16,
    /// Must-understand features: a reader refuses a bit it does not know.
    pub required_features: u64,
    /// Features a reader may ignore.
    pub optional_features: u64,
    /// Length of the old image.
    pub old_len: u64,
    /// BLAKE3 of the whole old image.
    pub old_hash: [u8; 32],
    /// Block size: a power of two in 512..=1 MiB.
    pub block_size: u32,
    /// Seed of the strong hash.
    pub seed: u64,
}

impl Header {
    /// A version 1.0 header for an image of `old_len` bytes hashing to
    /// `old_hash`; `signed` sets [`crate::FEATURE_SIGNED`].
    pub fn new(old_len: u64, old_hash: [u8; 32], block_size: u32, seed: u64, signed: bool) -> Self {
        Self {
            minor: VERSION_MINOR,
            required_features: if signed { crate::FEATURE_SIGNED } else { 0 },
            optional_features: 0,
            old_len,
            old_hash,
            block_size,
            seed,
        }
    }

    /// Number of entries: one per block, the last one possibly short.
    pub fn block_count(&self) -> u64 {
        self.old_len.div_ceil(u64::from(self.block_size.max(1)))
    }

    /// Whether a signature block follows the trailer.
    pub fn is_signed(&self) -> bool {
        self.required_features & crate::FEATURE_SIGNED != 0
    }

    /// Length of block `i` (the last may be short; 0 past the end).
    pub fn block_len(&self, i: u64) -> u64 {
        let bs = u64::from(self.block_size);
        self.old_len.saturating_sub(i.saturating_mul(bs)).min(bs)
    }

    /// The 128 bytes, header hash included.
    pub fn emit(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0x00..0x08].copy_from_slice(&MAGIC);
        h[0x08..0x0A].copy_from_slice(&VERSION_MAJOR.to_le_bytes());
        h[0x0A..0x0C].copy_from_slice(&self.minor.to_le_bytes());
        h[0x10..0x18].copy_from_slice(&self.required_features.to_le_bytes());
        h[0x18..0x20].copy_from_slice(&self.optional_features.to_le_bytes());
        h[0x20..0x28].copy_from_slice(&self.old_len.to_le_bytes());
        h[0x28..0x48].copy_from_slice(&self.old_hash);
        h[0x48..0x4C].copy_from_slice(&self.block_size.to_le_bytes());
        h[0x4C] = STRONG_XXH3_128;
        h[0x4D] = 16;
        h[0x4E] = WEAK_ADLER32;
        h[0x4F] = 4;
        h[0x50..0x58].copy_from_slice(&self.seed.to_le_bytes());
        h[0x58..0x60].copy_from_slice(&self.block_count().to_le_bytes());
        let hash = blake3::hash(&h[..HASH_AT]);
        h[HASH_AT..].copy_from_slice(hash.as_bytes());
        h
    }

    /// Decodes and checks a header, in this order: magic (else not an
    /// index), header hash (else corrupt: a flipped version bit is damage,
    /// not "needs a newer reader"), major version and must-understand
    /// features (else unsupported), hash algorithms, then the fields'
    /// ranges and the block count.
    pub fn parse(h: &[u8; HEADER_LEN]) -> Result<Self, IndexError> {
        if h[..8] != MAGIC {
            return Err(IndexError::NotAnIndex);
        }
        if blake3::hash(&h[..HASH_AT]).as_bytes()[..] != h[HASH_AT..] {
            return Err(IndexError::HeaderHash);
        }
        let u16_at = |at: usize| u16::from_le_bytes([h[at], h[at + 1]]);
        let u32_at = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let (major, minor) = (u16_at(0x08), u16_at(0x0A));
        if major != VERSION_MAJOR {
            return Err(IndexError::UnsupportedVersion { major, minor });
        }
        let required_features = u64_at(0x10);
        let unknown = required_features & !KNOWN_FEATURES;
        if unknown != 0 {
            return Err(IndexError::UnsupportedFeatures { bits: unknown });
        }
        for (field, got, want) in [
            ("strong hash algorithm", h[0x4C], STRONG_XXH3_128),
            ("strong hash length", h[0x4D], 16),
            ("weak key algorithm", h[0x4E], WEAK_ADLER32),
            ("weak key length", h[0x4F], 4),
        ] {
            if got != want {
                return Err(IndexError::UnsupportedHash { field, got });
            }
        }
        let block_size = u32_at(0x48);
        if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
        {
            return Err(IndexError::Invalid {
                field: "block size",
                reason: format!("is {block_size}; must be a power of two in 512..=1048576"),
            });
        }
        let old_len = u64_at(0x20);
        if old_len > i64::MAX as u64 {
            return Err(IndexError::TooLarge {
                field: "old image length",
                got: old_len,
                max: i64::MAX as u64,
            });
        }
        let mut old_hash = [0u8; 32];
        old_hash.copy_from_slice(&h[0x28..0x48]);
        let header = Self {
            minor,
            required_features,
            optional_features: u64_at(0x18),
            old_len,
            old_hash,
            block_size,
            seed: u64_at(0x50),
        };
        let count = u64_at(0x58);
        if count != header.block_count() {
            return Err(IndexError::Invalid {
                field: "block count",
                reason: format!(
                    "is {count}, but an image of {old_len} bytes has {} blocks of {block_size}",
                    header.block_count()
                ),
            });
        }
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = Header::new(10_000, [7; 32], 4096, 99, true);
        assert_eq!(h.block_count(), 3);
        assert_eq!(h.block_len(2), 10_000 - 8192);
        assert_eq!(Header::parse(&h.emit()).expect("parses"), h);
    }
}
