//! The block index of an image: what `mkpatch index` writes on the machine
//! that has the old image, and `mkpatch --from-index` reads on the machine
//! that has only the new one. See `spec/INDEX.md` for the format.
//!
//! An index file is a fixed 128-byte [`Header`] (the old image's length
//! and whole BLAKE3, the block size, the hash algorithms, a seed, and a
//! hash of the header itself), then one 20-byte [`BlockHashes`] entry per
//! block of the image, then a 32-byte trailer, the BLAKE3 of everything
//! before it, then, in a signed index, an Ed25519 signature block.
//!
//! - [`IndexWriter`] writes an index front to back, entries as they come.
//! - [`IndexReader`] reads one front to back: it checks the header before
//!   anything else, hands out entries in bounded batches, and checks the
//!   trailer and signatures at the end ([`IndexReader::finish`]). It never
//!   allocates from a count the file declares: memory grows only with
//!   bytes actually read, and [`Limits`] caps the block count up front.
//! - [`block`] defines the two per-block hashes: the weak rolling key
//!   (Adler-32 of the whole block, which slides one byte at a time) and the
//!   strong hash (seeded XXH3-128) that confirms a match.
//!
//! Nothing here panics on input: every error is an [`IndexError`].
#![forbid(unsafe_code)]

pub mod block;
mod error;
mod header;
mod reader;
pub mod vectors;
mod writer;

pub use block::BlockHashes;
pub use error::IndexError;
pub use header::Header;
pub use reader::{read_index, Index, IndexReader, Limits, Verified};
pub use writer::{content_hash, IndexWriter};

/// The first eight bytes of every index file: `0x89`, `ANYIX`, CR, LF
/// (a high byte and a line ending, so text-mode transfers are caught).
pub const MAGIC: [u8; 8] = [0x89, 0x41, 0x4E, 0x59, 0x49, 0x58, 0x0D, 0x0A];
/// The major version this crate reads and writes. Another major is refused.
pub const VERSION_MAJOR: u16 = 0x0001;
/// The minor version this crate writes. Readers accept any minor of their
/// major: minors only add optional or must-understand features.
pub const VERSION_MINOR: u16 = 0x0000;
/// Length of the header, hash included.
pub const HEADER_LEN: usize = 0x80;
/// Length of one block entry: weak key (4) and strong hash (16).
pub const ENTRY_LEN: usize = 0x14;
/// Length of the trailer: BLAKE3 of the header and the entries.
pub const TRAILER_LEN: usize = 0x20;

/// Must-understand feature: a signature block follows the trailer.
pub const FEATURE_SIGNED: u64 = 0x0000_0000_0000_0001;
/// Every must-understand feature this crate knows.
pub const KNOWN_FEATURES: u64 = FEATURE_SIGNED;

/// Strong hash algorithm 1: XXH3-128 of the block with the header's seed,
/// stored little endian (16 bytes).
pub const STRONG_XXH3_128: u8 = 0x01;
/// Weak key algorithm 1: Adler-32 (RFC 1950) of the whole block, stored
/// as a little-endian u32 (4 bytes).
pub const WEAK_ADLER32: u8 = 0x01;

/// The block size `mkpatch index` uses unless told otherwise: the file
/// systems' block, and the producer's, so unchanged and moved file data
/// lines up with whole blocks. Entries cost 20 / 4096 = 0.49% of the image.
pub const DEFAULT_BLOCK_SIZE: u32 = 4096;
/// Smallest block size: 512 bytes (entries are 3.9% of the image).
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Largest block size: 1 MiB.
pub const MAX_BLOCK_SIZE: u32 = 1 << 20;

/// Domain separation for index signatures: the signed message starts with
/// these bytes, so an index signature is never taken for a patch's.
pub const SIGNATURE_CONTEXT: &[u8] = b"anypatch-index-v1 signature\0";

/// The message an index signature is over: [`SIGNATURE_CONTEXT`], the
/// header, and the trailer (which hashes the header and every entry).
pub fn signed_message(header: &[u8; HEADER_LEN], content_hash: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNATURE_CONTEXT.len() + HEADER_LEN + 32);
    m.extend_from_slice(SIGNATURE_CONTEXT);
    m.extend_from_slice(header);
    m.extend_from_slice(content_hash);
    m
}
