//! The one reader of a patch's layout: preamble, header section,
//! signatures, the page chain, extents, payloads and trailer, and every
//! check on them that needs no old byte.
//!
//! The engine reads each section with these functions as it applies;
//! [`Walker`] drives them for readers that apply nothing (`mkpatch
//! inspect`, the page's change map). So a check added here holds for all of
//! them, and `inspect` refuses what every applier refuses, except what only
//! the old file can show: the base hash, the output of segments that read
//! old bytes, and the new file's hash.

pub(crate) mod frames;
pub mod map;
mod rules;
mod sections;
mod walker;

pub use rules::{OpTally, Rules, Tally};
pub use sections::{read_header_section, read_page, read_signatures, read_trailer, Signer};
pub use walker::{Mode, SegmentReport, Step, Walker};
