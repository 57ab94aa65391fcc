//! Stream checkpoints (spec section 6.4): taking one at a boundary,
//! and going on from one in a new engine.

use super::*;

impl Applier {
    /// A new engine that goes on from `checkpoint` (spec section 6.4). Feed
    /// it the ranges of [`Checkpoint::feed_plan`], in order. It checks the
    /// header section again (and the signature, with
    /// [`Applier::require_signature`]), reports [`Event::Header`] again,
    /// does not hash the base again, re-reads the current page against the
    /// page chain, and then runs every check an uninterrupted apply would,
    /// the whole-patch and whole-new hashes included. A checkpoint of
    /// another patch, or one that does not fit it, is
    /// [`ApplyError::CheckpointMismatch`]. `cfg` must not resume in place
    /// (`resume_from` 0).
    pub fn resume(cfg: Config, checkpoint: Checkpoint) -> Self {
        let mut a = Self::new(cfg);
        a.resuming = Some(Box::new(checkpoint));
        a
    }

    /// Where the apply stands, if it is at a boundary (before a page, or
    /// before a data segment's payload, possibly partly fed): a checkpoint
    /// to resume from with [`Applier::resume`]. Take it only when every
    /// event so far has been carried out; `None` elsewhere (inside a copy,
    /// a zero run or a segment), before the header, and in an in-place
    /// resume. Costs a copy of the data history (up to 4 MiB) when the
    /// patch uses one.
    pub fn checkpoint(&mut self) -> Option<Checkpoint> {
        if self.cfg.resume_from != 0 || self.resuming.is_some() || self.hashes.section_len == 0 {
            return None;
        }
        let consumed = self.progress.patch_consumed;
        let (at, resume_at, back) = match &self.state {
            State::NextPage(r) => (
                At::PageStart { page: *r },
                consumed - self.input.buf.len() as u64,
                0,
            ),
            State::Extent | State::Payload(_) => {
                // A payload's extent was taken from the page already.
                let back = u64::from(matches!(self.state, State::Payload(_)));
                if back == 0 && !self.input.buf.is_empty() {
                    return None;
                }
                let (page_at, page) = self.walk.page_ref?;
                let at = At::InPage {
                    page_at,
                    page,
                    extent: u32::try_from(self.walk.extent_idx as u64 - back).ok()?,
                };
                (at, consumed - self.input.buf.len() as u64, back)
            }
            _ => return None,
        };
        Some(Checkpoint {
            header_hash: self.hashes.header_hash,
            header_section_len: self.hashes.section_len,
            resume_at,
            new_pos: self.new_pos,
            at,
            pages_seen: self.walk.tally.pages,
            extents_seen: self.walk.tally.extents - back,
            segments_seen: self.walk.tally.segments - back,
            written: self.written,
            zeroed: self.zeroed,
            patch_hash: self.hashes.patch.save(),
            new_hash: self.hashes.new.as_mut().map(|h| h.save()),
            history: self.bufs.history.clone(),
        })
    }

    /// Takes up `cp` once the header section has been checked against it.
    pub(super) fn restore(&mut self, cp: Checkpoint) -> Result<(), ApplyError> {
        if cp.header_section_len != self.hashes.section_len
            || self.hashes.new.is_some() != cp.new_hash.is_some()
            || cp.new_pos > self.header_ref().new_len
        {
            return Err(ApplyError::CheckpointMismatch);
        }
        let bad = |_| ApplyError::CheckpointMismatch;
        *self.hashes.patch = TreeHasher::restore(&cp.patch_hash).map_err(bad)?;
        if let Some(h) = &cp.new_hash {
            self.hashes.new = Some(Box::new(TreeHasher::restore(h).map_err(bad)?));
        }
        self.bufs.history = cp.history;
        self.new_pos = cp.new_pos;
        self.walk.tally = Tally {
            pages: cp.pages_seen,
            extents: cp.extents_seen,
            segments: cp.segments_seen,
            end: cp.new_pos,
        };
        self.written = cp.written;
        self.zeroed = cp.zeroed;
        match cp.at {
            At::InPage {
                page_at,
                page,
                extent,
            } => {
                self.walk.page_ref = Some((page_at, page));
                self.expect_input(
                    State::RestorePage {
                        page,
                        extent,
                        resume_at: cp.resume_at,
                    },
                    page.len as usize,
                );
            }
            At::PageStart { page } => {
                self.progress.patch_consumed = cp.resume_at;
                self.expect_input(State::NextPage(page), page.len as usize);
            }
        }
        Ok(())
    }
}
