//! The anypatch patch file format, version 1 (see `spec/FORMAT.md`).
//!
//! A patch file is, in order:
//!
//! ```text
//! preamble (24 bytes, fixed) | header body (postcard) | header hash (32)
//! | signature block | page 0 | payloads of page 0's data segments
//! | page 1 | ... | trailer (40)
//! ```
//!
//! Two layers, as in smoltcp's `wire`:
//! - [`Preamble`] is a checked view over the fixed-size first 24 bytes.
//!   [`Preamble::new_checked`] validates the length once; after that no
//!   accessor panics.
//! - [`Header`], [`Page`], [`Extent`], [`Op`] and [`Trailer`] are owned
//!   representations with `parse`, `emit` and `encoded_len`. Their encoding is
//!   postcard (varints, little endian), as the spec's byte tables state.
//!
//! Panic guarantees: no function in this crate panics on any input bytes.
//! Parsing never allocates more than a constant times the input length, and
//! every parser rejects trailing bytes.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod error;
mod header;
mod hex;
mod keyfile;
mod page;
mod preamble;
mod segment;
mod signature;
mod trailer;

pub use error::FormatError;
pub use header::{header_hash, parse_header_section, Header, PageRef};
pub use hex::Hex;
pub use keyfile::{key_file_text, parse_key_file, KeyFileError, KeyKind};
pub use page::{Extent, Page, SegmentEntry, SHORT_HASH_LEN};
pub use preamble::{Preamble, PreambleRepr};
pub use segment::{Codec, Op, OpIter, PrefixRef, PACKED_OPS};
pub use signature::{
    key_id, signed_message, SignatureBlock, SignatureEntry, MAX_SIGNATURES, SIGNATURE_CONTEXT,
    SIGNATURE_ENTRY_LEN, SIG_ALG_ED25519,
};
pub use trailer::Trailer;

/// A BLAKE3 hash, 32 bytes.
pub type Hash = [u8; 32];

/// First eight bytes of every patch: `\x89ANYPT\r\n`. The high byte and the
/// CR LF catch transfers that strip the eighth bit or translate line ends.
pub const MAGIC: [u8; 8] = [0x89, 0x41, 0x4E, 0x59, 0x50, 0x54, 0x0D, 0x0A];
/// Last eight bytes of every patch: `ANYPTEND`.
pub const TRAILER_MAGIC: [u8; 8] = [0x41, 0x4E, 0x59, 0x50, 0x54, 0x45, 0x4E, 0x44];

/// The major version this crate reads and writes. A different major is refused.
pub const VERSION_MAJOR: u16 = 0x0001;
/// The minor version this crate writes. Higher minors are read: they may
/// append header fields and define new flags; a minor that needs an applier
/// to understand something new sets a must-understand feature bit, which
/// older appliers refuse (see the spec's stability policy).
pub const VERSION_MINOR: u16 = 0x0003;

/// Must-understand feature bit (version 1.1): some data segment uses
/// [`Codec::ZstdPrefix`], zstd with old bytes as its history.
pub const FEATURE_OLD_PREFIX: u32 = 0x0000_0001;
/// Must-understand feature bit (version 1.1): some data segment's ops block
/// is packed, that is zstd-compressed ([`PACKED_OPS`] in its codec byte).
pub const FEATURE_PACKED_OPS: u32 = 0x0000_0002;
/// Must-understand feature bit (version 1.2): every page is compact, one
/// zstd frame whose content lists the extents with 16-byte segment hashes
/// and, mostly, the segments' ops inline ([`Page::parse_compact`]).
pub const FEATURE_COMPACT_PAGES: u32 = 0x0000_0004;
/// Must-understand feature bit (version 1.3): some data segment uses
/// [`Codec::ZstdHistory`], zstd whose history is the decoded data of the
/// patch's earlier such segments (the *data history*).
pub const FEATURE_DATA_HISTORY: u32 = 0x0000_0008;
/// Must-understand feature bits this crate understands.
pub const KNOWN_REQUIRED_FEATURES: u32 =
    FEATURE_OLD_PREFIX | FEATURE_PACKED_OPS | FEATURE_COMPACT_PAGES | FEATURE_DATA_HISTORY;

/// Length of the fixed preamble.
pub const PREAMBLE_LEN: usize = 24;
/// Length of a BLAKE3 hash.
pub const HASH_LEN: usize = 32;
/// Length of the trailer: patch hash and end magic.
pub const TRAILER_LEN: usize = HASH_LEN + 8;

/// Largest header body.
pub const MAX_HEADER_LEN: u32 = 0x0001_0000;
/// Largest signature block.
pub const MAX_SIGNATURE_LEN: u32 = 0x0001_0000;
/// Largest encoded page, and largest content a compact page's frame decodes to.
pub const MAX_PAGE_LEN: u32 = 0x0004_0000;
/// Most extents in one page.
pub const MAX_PAGE_EXTENTS: usize = 0x2000;
/// Most new bytes one data segment produces. This is what an applier buffers
/// to check a segment's hash before writing it.
pub const MAX_SEGMENT_LEN: u32 = 0x0040_0000;
/// Largest ops block of one data segment, and, for a packed one
/// ([`PACKED_OPS`]), both its frame and what the frame decodes to.
pub const MAX_OPS_LEN: u32 = 0x0010_0000;
/// Largest producer name in the header, in bytes.
pub const MAX_PRODUCER_LEN: usize = 0x40;
/// Largest zstd window a data segment's frame may declare. A frame never needs
/// more than its content, which is at most [`MAX_SEGMENT_LEN`].
pub const MAX_ZSTD_WINDOW: u64 = MAX_SEGMENT_LEN as u64;
/// Most old bytes a [`Codec::ZstdPrefix`] frame may use as its history. The
/// applier reads them into the segment output buffer and the zstd decoder
/// keeps one copy, so the bound adds this once to the applier's memory.
pub const MAX_PREFIX_LEN: u32 = 0x0040_0000;
/// Most decoded data a [`Codec::ZstdHistory`] frame may use as its history:
/// the applier keeps this much of the data history between segments.
pub const MAX_HISTORY_LEN: u32 = MAX_ZSTD_WINDOW as u32;

/// Header flag: every old byte the patch reads while producing an extent lies
/// at or after that extent's start, so the patch can be applied in place.
pub const FLAG_IN_PLACE_SAFE: u32 = 0x0000_0001;

/// Worst-case memory an applier needs, in bytes, as stated in the spec:
/// one page, its decoded content (compact pages) and its decoded extents,
/// one segment's payload, its decoded ops (when packed), its decoded data,
/// its output, the zstd decoder's window and block buffers, the decoder's
/// copy of a prefix, and the data history kept between segments: 31.25 MiB.
pub const APPLIER_WORST_CASE_MEMORY: u64 = MAX_PAGE_LEN as u64          // raw page
    + MAX_PAGE_LEN as u64                                               // decoded compact page
    + (MAX_PAGE_EXTENTS as u64) * 64                                    // decoded extents
    + (MAX_OPS_LEN as u64) + (MAX_SEGMENT_LEN as u64)                   // payload
    + (MAX_OPS_LEN as u64)                                              // decoded packed ops
    + (MAX_SEGMENT_LEN as u64)                                          // decoded data
    + (MAX_SEGMENT_LEN as u64)                                          // output
    + 2 * MAX_ZSTD_WINDOW + 0x0004_0000 // decoder ring buffer, block scratch
    + MAX_PREFIX_LEN as u64 // the decoder's copy of a prefix
    + MAX_HISTORY_LEN as u64; // the data history (1.3)

// The memory bound above counts 64 bytes per decoded extent.
const _: () = assert!(core::mem::size_of::<Extent>() <= 64);

/// BLAKE3 of `data`.
pub fn hash(data: &[u8]) -> Hash {
    *blake3::hash(data).as_bytes()
}
