//! The anypatch apply engine: `#![no_std]` + alloc, sans-IO.
//!
//! The engine never touches a file, a clock or a thread. An adapter (the
//! `applypatch` CLI, the WASM bindings, a QUIC client) drives it:
//!
//! ```text
//! let mut a = Applier::new(Config::new(old_len));
//! loop {
//!     match a.poll()? {
//!         Event::NeedInput => feed patch bytes with a.feed(..), or a.end_of_input() at EOF,
//!         Event::Header(h) => look at the header (sizes, producer) before anything is read,
//!         Event::ReadOld { offset, buf } => fill all of buf with old bytes at offset,
//!         Event::Write { offset, data } => write data to the target at offset,
//!         Event::Zero { offset, len } => the target's bytes there must read as zero,
//!         Event::Done(summary) => break,
//!     }
//! }
//! ```
//!
//! Guarantees, in order:
//! 1. With [`Applier::require_signature`], nothing happens past the header
//!    unless a trusted key's Ed25519 signature over the header section
//!    verifies; the header pins every page and segment hash, so every byte
//!    written has been checked against a hash the signature covers.
//! 2. Nothing is written before the header is checked and, unless the adapter
//!    turns it off, the whole old file is hashed and found equal to the
//!    header's `old_hash` (a wrong base is found before the first write).
//! 3. Every page is checked against the hash that named it before it is used.
//! 4. A data segment's output is checked against its manifest hash before any
//!    of it is handed out as a [`Event::Write`].
//! 5. Copy and zero extents produce bytes only from the verified old file.
//! 6. [`Event::Done`] comes only after the trailer's whole-patch hash and the
//!    header's `new_hash` (when computed) both match, and the input has ended.
//!
//! Memory: at most [`anypatch_format::APPLIER_WORST_CASE_MEMORY`] bytes of
//! buffers (31.25 MiB), whatever the image size, because every length the
//! engine buffers is capped by the format before it is allocated; the two
//! running hashes ([`tree_hash`], savable for [`checkpoint`]s) add at most
//! 16 KiB each.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod checkpoint;
#[cfg(feature = "std")]
pub mod drive;
mod engine;
mod error;
mod history;
pub mod layout;
pub mod tree_hash;
mod zstd;

pub use anypatch_format as format;
pub use engine::{Applier, Config, Event, Progress, Summary};
pub use error::{ApplyError, ErrorClass};
pub use layout::Signer;
pub use zstd::ZstdError;
