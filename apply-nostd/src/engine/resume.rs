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
        if self.cfg.resume_from != 0 || self.resuming.is_some() || self.header_section_len == 0 {
            return None;
        }
        let consumed = self.progress.patch_consumed;
        let (at, resume_at, back) = match &self.state {
            State::NextPage(r) => (
                At::PageStart { page: *r },
                consumed - self.inbuf.len() as u64,
                0,
            ),
            State::Extent | State::Payload(_) => {
                // A payload's extent was taken from the page already.
                let back = u64::from(matches!(self.state, State::Payload(_)));
                if back == 0 && !self.inbuf.is_empty() {
                    return None;
                }
                let (page_at, page) = self.page_ref?;
                let at = At::InPage {
                    page_at,
                    page,
                    extent: u32::try_from(self.extent_idx as u64 - back).ok()?,
                };
                (at, consumed - self.inbuf.len() as u64, back)
            }
            _ => return None,
        };
        Some(Checkpoint {
            header_hash: self.header_hash,
            header_section_len: self.header_section_len,
            resume_at,
            new_pos: self.new_pos,
            at,
            pages_seen: self.page_no,
            extents_seen: self.extents_seen - back,
            segments_seen: self.segments_seen - back,
            written: self.written,
            zeroed: self.zeroed,
            patch_hash: self.patch_hasher.save(),
            new_hash: self.new_hasher.as_mut().map(|h| h.save()),
            history: self.history.clone(),
        })
    }

    /// Takes up `cp` once the header section has been checked against it.
    pub(super) fn restore(&mut self, cp: Checkpoint) -> Result<(), ApplyError> {
        if cp.header_section_len != self.header_section_len
            || self.new_hasher.is_some() != cp.new_hash.is_some()
            || cp.new_pos > self.header_ref().new_len
        {
            return Err(ApplyError::CheckpointMismatch);
        }
        let bad = |_| ApplyError::CheckpointMismatch;
        *self.patch_hasher = TreeHasher::restore(&cp.patch_hash).map_err(bad)?;
        if let Some(h) = &cp.new_hash {
            self.new_hasher = Some(Box::new(TreeHasher::restore(h).map_err(bad)?));
        }
        self.history = cp.history;
        self.new_pos = cp.new_pos;
        self.page_no = cp.pages_seen;
        self.extents_seen = cp.extents_seen;
        self.segments_seen = cp.segments_seen;
        self.written = cp.written;
        self.zeroed = cp.zeroed;
        match cp.at {
            At::InPage {
                page_at,
                page,
                extent,
            } => {
                self.page_ref = Some((page_at, page));
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
