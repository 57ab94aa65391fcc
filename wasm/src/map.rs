//! The patch's layout, for the picture: walks the header and the page chain
//! with the engine crate's layout reader and sorts every extent of the new
//! file into four kinds, summed into a fixed number of buckets (the engine
//! crate's [`anypatch_apply::layout::map`], which `mkpatch inspect --map`
//! draws too).
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

use anypatch_apply::format::{Header, PreambleRepr};
use anypatch_apply::layout::{Mode, Step, Walker};

use anypatch_apply::layout::map::kind_of;
pub use anypatch_apply::layout::map::Buckets;

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
                    if let Some(b) = self.buckets.as_mut() {
                        b.add(new_offset, extent.len(), kind_of(&extent));
                    }
                }
                Ok(Step::Page { .. } | Step::Segment(_)) => {}
                Ok(Step::Done { .. }) => self.finished = true,
                Err(e) => self.error = Some(e.to_string()),
            }
        }
    }
}
