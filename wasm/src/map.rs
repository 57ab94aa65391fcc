//! The patch's layout, for the picture: walks the header and the page chain
//! with the engine crate's layout reader and sorts every extent of the new
//! file into four kinds, summed into a fixed number of buckets.
//!
//! The reader ([`anypatch_apply::layout::Walker`] in its pages mode) is the
//! one the engine and `mkpatch inspect` use: it checks each page against
//! the hash that named it, and every extent against the header, so the
//! picture shows what the verified apply will do and fails where it would.
//! Memory is one page (with its decoded content) and the buckets, whatever
//! the image size.
//!
//! A [`Layout`] is driven in one of two ways:
//! - by seeking: ask [`Layout::wanted`] for the next byte range, read it, and
//!   hand it to [`Layout::give`]. Only the header and the pages are read,
//!   never a payload, so a multi-GB patch is mapped in a few small reads.
//! - by teeing: hand it every patch byte the engine consumes, in order, with
//!   its offset; it keeps what it wants and ignores the rest.
#![forbid(unsafe_code)]

use anypatch_apply::format::{Extent, Header, PreambleRepr};
use anypatch_apply::layout::{Mode, Step, Walker};

/// Kind index: copied from the same offset of the old file (unchanged).
pub const UNCHANGED: usize = 0;
/// Kind index: copied from another offset of the old file (moved).
pub const MOVED: usize = 1;
/// Kind index: produced by a data segment (literal, delta or copy ops).
pub const DATA: usize = 2;
/// Kind index: zeros.
pub const ZERO: usize = 3;
/// Number of kinds.
pub const KINDS: usize = 4;
/// Most buckets a map may have (64 Ki buckets, 2 MiB of counters).
pub const MAX_BUCKETS: usize = 0x1_0000;

/// Bytes of each kind per bucket of the new file. Bucket `b` covers new
/// offsets `ceil(b * new_len / n) .. ceil((b + 1) * new_len / n)`.
#[derive(Debug, Clone)]
pub struct Buckets {
    new_len: u64,
    bytes: Vec<[u64; KINDS]>,
    /// Bytes of each kind in the whole new file.
    pub totals: [u64; KINDS],
    /// Extents of each kind.
    pub counts: [u64; KINDS],
}

impl Buckets {
    /// `n` buckets (clamped to 1..=[`MAX_BUCKETS`]) over a new file of `new_len` bytes.
    pub fn new(n: usize, new_len: u64) -> Self {
        Self {
            new_len,
            bytes: vec![[0; KINDS]; n.clamp(1, MAX_BUCKETS)],
            totals: [0; KINDS],
            counts: [0; KINDS],
        }
    }

    fn start(&self, b: usize) -> u64 {
        let n = self.bytes.len() as u128;
        (b as u128 * u128::from(self.new_len)).div_ceil(n) as u64 // <= new_len
    }

    /// Counts `len` bytes of `kind` at new offset `at`.
    pub fn add(&mut self, at: u64, len: u64, kind: usize) {
        self.totals[kind] += len;
        self.counts[kind] += 1;
        let end = at.saturating_add(len).min(self.new_len);
        if at >= end {
            return;
        }
        let n = self.bytes.len();
        let mut b = (u128::from(at) * n as u128 / u128::from(self.new_len)) as usize;
        while b < n && self.start(b) < end {
            let lo = self.start(b).max(at);
            let hi = self.start(b + 1).min(end);
            self.bytes[b][kind] += hi.saturating_sub(lo);
            b += 1;
        }
    }

    /// The counters, bucket by bucket, `KINDS` per bucket.
    pub fn flat(&self) -> Vec<f64> {
        self.bytes
            .iter()
            .flat_map(|k| k.iter().map(|&v| v as f64))
            .collect()
    }

    /// Number of buckets.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: there is at least one bucket.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Walks a patch's page chain. See the module docs.
#[derive(Debug)]
pub struct Layout {
    walker: Walker,
    n_buckets: usize,
    buckets: Option<Buckets>,
    finished: bool,
    error: Option<String>,
}

impl Layout {
    /// A walker that will sum extents into `n_buckets` buckets.
    pub fn new(n_buckets: usize) -> Self {
        Self {
            walker: Walker::new(Mode::Pages),
            n_buckets,
            buckets: None,
            finished: false,
            error: None,
        }
    }

    /// The byte range `(offset, len)` of the patch wanted next, or `None`
    /// when the walk is over (finished or failed).
    pub fn wanted(&self) -> Option<(u64, usize)> {
        if self.finished || self.error.is_some() {
            return None;
        }
        self.walker.wanted()
    }

    /// True when every page was read.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Why the walk stopped early: the same sentence the engine would give.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// The preamble, once read.
    pub fn preamble(&self) -> Option<&PreambleRepr> {
        self.walker.preamble()
    }

    /// The header, once read and checked against its hash.
    pub fn header(&self) -> Option<&Header> {
        self.walker.header()
    }

    /// The extents seen so far, summed into buckets; `None` before the header.
    pub fn buckets(&self) -> Option<&Buckets> {
        self.buckets.as_ref()
    }

    /// Pages read so far.
    pub fn pages(&self) -> u64 {
        self.walker.tally().pages
    }

    /// Gives patch bytes that start at patch offset `at`. Bytes outside the
    /// wanted range are ignored, so any slice of the patch may be given.
    pub fn give(&mut self, at: u64, bytes: &[u8]) {
        let end = at + bytes.len() as u64;
        loop {
            self.advance();
            match self.wanted() {
                Some((want, _)) if want >= at && want < end => self.walker.give(at, bytes),
                _ => return, // done, failed, or wanting bytes outside this slice
            }
        }
    }

    /// Says the patch ends before the wanted range: the walk fails with the
    /// engine's sentence for a patch cut short in that section.
    pub fn truncated(&mut self) {
        self.walker.end();
        self.advance();
    }

    /// Takes the walker's steps until it wants bytes, ends or fails.
    fn advance(&mut self) {
        while !self.finished && self.error.is_none() {
            match self.walker.poll() {
                Ok(Step::Want { .. }) => return,
                Ok(Step::Header) => {
                    let new_len = self.walker.header().map_or(0, |h| h.new_len);
                    self.buckets = Some(Buckets::new(self.n_buckets, new_len));
                }
                Ok(Step::Extent { new_offset, extent }) => {
                    let kind = match extent {
                        Extent::Copy { delta: 0, .. } => UNCHANGED,
                        Extent::Copy { .. } => MOVED,
                        Extent::Zero { .. } => ZERO,
                        Extent::Data(_) => DATA,
                    };
                    if let Some(b) = self.buckets.as_mut() {
                        b.add(new_offset, extent.len(), kind);
                    }
                }
                Ok(Step::Page { .. } | Step::Segment(_)) => {}
                Ok(Step::Done { .. }) => self.finished = true,
                Err(e) => self.error = Some(e.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_split_extents_exactly() {
        let mut b = Buckets::new(3, 10); // buckets 0..4, 4..7, 7..10
        b.add(0, 5, UNCHANGED);
        b.add(5, 5, DATA);
        let flat = b.flat();
        assert_eq!(flat[UNCHANGED], 4.0);
        assert_eq!(flat[KINDS + UNCHANGED], 1.0);
        assert_eq!(flat[KINDS + DATA], 2.0);
        assert_eq!(flat[2 * KINDS + DATA], 3.0);
        assert_eq!(b.totals, [5, 0, 5, 0]);
    }

    #[test]
    fn more_buckets_than_bytes() {
        let mut b = Buckets::new(8, 3);
        b.add(0, 3, ZERO);
        let sum: f64 = b.flat().iter().sum();
        assert_eq!(sum, 3.0);
    }
}
