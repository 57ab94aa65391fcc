//! A stream checkpoint (spec section 6.4): where an interrupted apply
//! stood, so that a new [`crate::Applier`] can go on from there instead of
//! from byte 0 of the patch.
//!
//! Take one with [`crate::Applier::checkpoint`] after every event so far
//! has been carried out (the writes are on the target), keep it with
//! [`Checkpoint::encode`], and give it to [`crate::Applier::resume`]. The
//! resumed applier is then fed the ranges of [`Checkpoint::feed_plan`], in
//! order, and checks everything an uninterrupted apply would: nothing in a
//! checkpoint is trusted that the header, the page chain and the final
//! hashes do not check again.

use alloc::vec::Vec;
use core::ops::Range;

use anypatch_format::{Hash, PageRef, MAX_HISTORY_LEN};

use crate::tree_hash::{BadSavedHash, SavedHash};

const MAGIC: &[u8; 8] = b"ANYPCKPT";
const VERSION: u32 = 1;

/// Where an apply stood at a boundary: before a page, or before the
/// payload of a data segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The header hash of the patch: binds the checkpoint to it.
    pub header_hash: Hash,
    /// Bytes of the preamble, header body, header hash and signature block.
    pub header_section_len: u64,
    /// The patch offset of the boundary: the resumed applier is fed from here.
    pub resume_at: u64,
    /// New bytes produced (and written by the adapter) before the boundary.
    pub new_pos: u64,
    pub at: At,
    /// Pages read so far (the page being worked through included).
    pub pages_seen: u64,
    pub extents_seen: u64,
    pub segments_seen: u64,
    /// Bytes handed out as writes and zero runs so far (for the summary).
    pub written: u64,
    pub zeroed: u64,
    /// The BLAKE3 state of the patch bytes before `resume_at`.
    pub patch_hash: SavedHash,
    /// The BLAKE3 state of the new bytes before `new_pos`, when computed.
    pub new_hash: Option<SavedHash>,
    /// The end of the data history (codec `0x03`), at most `MAX_HISTORY_LEN`.
    pub history: Vec<u8>,
}

/// The boundary's place in the page chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// Inside a page: the page (at patch offset `page_at`) is read again,
    /// and its extents from `extent` on are produced.
    InPage {
        page_at: u64,
        page: PageRef,
        extent: u32,
    },
    /// At the start of the page `page`, which is at `resume_at`.
    PageStart { page: PageRef },
}

/// Bytes that are not a checkpoint this engine wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadCheckpoint;

impl From<BadSavedHash> for BadCheckpoint {
    fn from(_: BadSavedHash) -> Self {
        Self
    }
}

impl Checkpoint {
    /// The patch ranges a resumed applier must be fed, in this order: the
    /// header section, the current page if the boundary is inside one,
    /// then everything from `resume_at` to the end.
    pub fn feed_plan(&self, patch_len: u64) -> Vec<Range<u64>> {
        let mut plan = Vec::with_capacity(3);
        plan.push(0..self.header_section_len);
        if let At::InPage { page_at, page, .. } = self.at {
            plan.push(page_at..page_at + u64::from(page.len));
        }
        plan.push(self.resume_at..patch_len);
        plan
    }

    /// The checkpoint as bytes (little endian; see the spec, section 6.4).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(256 + self.history.len());
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&VERSION.to_le_bytes());
        v.extend_from_slice(&self.header_hash);
        for n in [self.header_section_len, self.resume_at, self.new_pos] {
            v.extend_from_slice(&n.to_le_bytes());
        }
        match self.at {
            At::InPage {
                page_at,
                page,
                extent,
            } => {
                v.push(1);
                v.extend_from_slice(&page_at.to_le_bytes());
                v.extend_from_slice(&page.len.to_le_bytes());
                v.extend_from_slice(&page.hash);
                v.extend_from_slice(&extent.to_le_bytes());
            }
            At::PageStart { page } => {
                v.push(2);
                v.extend_from_slice(&page.len.to_le_bytes());
                v.extend_from_slice(&page.hash);
            }
        }
        for n in [
            self.pages_seen,
            self.extents_seen,
            self.segments_seen,
            self.written,
            self.zeroed,
        ] {
            v.extend_from_slice(&n.to_le_bytes());
        }
        self.patch_hash.encode(&mut v);
        match &self.new_hash {
            Some(h) => {
                v.push(1);
                h.encode(&mut v);
            }
            None => v.push(0),
        }
        v.extend_from_slice(&(self.history.len() as u32).to_le_bytes());
        v.extend_from_slice(&self.history);
        let seal = blake3::hash(&v);
        v.extend_from_slice(&seal.as_bytes()[..16]);
        v
    }

    /// Decodes [`Checkpoint::encode`]'s bytes; refuses anything else
    /// (another version, damage, a history above `MAX_HISTORY_LEN`).
    pub fn decode(bytes: &[u8]) -> Result<Self, BadCheckpoint> {
        let (body, seal) = bytes
            .split_at_checked(bytes.len().checked_sub(16).ok_or(BadCheckpoint)?)
            .ok_or(BadCheckpoint)?;
        if blake3::hash(body).as_bytes()[..16] != *seal {
            return Err(BadCheckpoint);
        }
        let mut r = body;
        let take = |r: &mut &[u8], n: usize| -> Result<Vec<u8>, BadCheckpoint> {
            let (head, rest) = r.split_at_checked(n).ok_or(BadCheckpoint)?;
            *r = rest;
            Ok(head.to_vec())
        };
        let u64_ = |r: &mut &[u8]| -> Result<u64, BadCheckpoint> {
            Ok(u64::from_le_bytes(
                take(r, 8)?.try_into().map_err(|_| BadCheckpoint)?,
            ))
        };
        let u32_ = |r: &mut &[u8]| -> Result<u32, BadCheckpoint> {
            Ok(u32::from_le_bytes(
                take(r, 4)?.try_into().map_err(|_| BadCheckpoint)?,
            ))
        };
        let hash = |r: &mut &[u8]| -> Result<Hash, BadCheckpoint> {
            take(r, 32)?.try_into().map_err(|_| BadCheckpoint)
        };
        if take(&mut r, 8)? != MAGIC || u32_(&mut r)? != VERSION {
            return Err(BadCheckpoint);
        }
        let header_hash = hash(&mut r)?;
        let (header_section_len, resume_at, new_pos) =
            (u64_(&mut r)?, u64_(&mut r)?, u64_(&mut r)?);
        let at = match take(&mut r, 1)?[0] {
            1 => {
                let page_at = u64_(&mut r)?;
                let len = u32_(&mut r)?;
                let hash = hash(&mut r)?;
                At::InPage {
                    page_at,
                    page: PageRef { len, hash },
                    extent: u32_(&mut r)?,
                }
            }
            2 => {
                let len = u32_(&mut r)?;
                At::PageStart {
                    page: PageRef {
                        len,
                        hash: hash(&mut r)?,
                    },
                }
            }
            _ => return Err(BadCheckpoint),
        };
        let (pages_seen, extents_seen, segments_seen, written, zeroed) = (
            u64_(&mut r)?,
            u64_(&mut r)?,
            u64_(&mut r)?,
            u64_(&mut r)?,
            u64_(&mut r)?,
        );
        let patch_hash = SavedHash::decode(&mut r)?;
        let new_hash = match take(&mut r, 1)?[0] {
            0 => None,
            1 => Some(SavedHash::decode(&mut r)?),
            _ => return Err(BadCheckpoint),
        };
        let history_len = u32_(&mut r)?;
        if history_len > MAX_HISTORY_LEN {
            return Err(BadCheckpoint);
        }
        let history = take(&mut r, history_len as usize)?;
        let consistent = r.is_empty()
            && patch_hash.done + patch_hash.tail.len() as u64 == resume_at
            && new_hash
                .as_ref()
                .is_none_or(|h| h.done + h.tail.len() as u64 == new_pos)
            && header_section_len <= resume_at;
        if !consistent {
            return Err(BadCheckpoint);
        }
        Ok(Self {
            header_hash,
            header_section_len,
            resume_at,
            new_pos,
            at,
            pages_seen,
            extents_seen,
            segments_seen,
            written,
            zeroed,
            patch_hash,
            new_hash,
            history,
        })
    }
}
