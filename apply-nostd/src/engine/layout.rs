//! Taking extents from the page, with the layout reader's checks
//! (`crate::layout`), and what each asks the adapter to do.

use super::*;

impl Applier {
    /// Dispatches the next extent of the current page, or moves to the next
    /// page or the trailer. Returns an action when the adapter must act.
    pub(super) fn next_extent(&mut self) -> Result<Option<Action>, ApplyError> {
        let page = self
            .walk
            .page
            .as_ref()
            .expect("Extent state follows a parsed page");
        let Some(&extent) = page.extents.get(self.walk.extent_idx) else {
            match page.next {
                Some(r) => self.expect_input(State::NextPage(r), r.len as usize),
                None => self.finish_extents()?,
            }
            return Ok(None);
        };
        self.walk.extent_idx += 1;
        let header = self
            .walk
            .header
            .as_ref()
            .expect("Extent state follows the header");
        let start = self.walk.tally.take(&extent, header)?;
        debug_assert_eq!(start, self.new_pos, "every extent before this one is done");
        let len = extent.len();
        // Resuming: what ends before the resume point is already written.
        let resume = self.cfg.resume_from;
        if start + len <= resume && resume > 0 {
            if let Extent::Data(entry) = extent {
                let n = usize::try_from(entry.payload_len()).expect("payload is capped at 5 MiB");
                self.expect_input(State::SkipPayload(entry), n);
            } else {
                self.new_pos += len;
                self.state = State::Extent;
            }
            return Ok(None);
        }
        let done = resume.saturating_sub(start); // > 0 only for the extent the resume point is in
        match extent {
            Extent::Copy { len, delta } if done > 0 => {
                let src = self.walk.rules.source(start, delta, len, start)?;
                if delta == 0 && self.cfg.skip_unchanged {
                    self.new_pos += len;
                    self.state = State::Extent;
                    return Ok(None);
                }
                self.new_pos += done;
                self.state = State::Copy {
                    dst: start + done,
                    src: src + done,
                    remaining: len - done,
                };
                Ok(None)
            }
            Extent::Zero { len } if done > 0 => {
                self.new_pos += len;
                self.zeroed += len - done;
                self.state = State::Extent;
                Ok(Some(Action::Zero {
                    offset: start + done,
                    len: len - done,
                }))
            }
            Extent::Copy { len, delta } => {
                let src = self.walk.rules.source(start, delta, len, start)?;
                if delta == 0 && self.cfg.skip_unchanged {
                    self.new_pos += len;
                    self.state = State::Extent;
                } else {
                    self.state = State::Copy {
                        dst: start,
                        src,
                        remaining: len,
                    };
                }
                Ok(None)
            }
            Extent::Zero { len } => {
                self.zeroed += len;
                if self.hashes.new.is_some() && len > self.cfg.zero_step {
                    // Hashed in steps, each returned to the adapter.
                    self.state = State::Zero {
                        offset: start,
                        remaining: len,
                    };
                    return Ok(None);
                }
                hash_zeros(self.hashes.new.as_deref_mut(), len);
                self.new_pos += len;
                self.state = State::Extent;
                Ok(Some(Action::Zero { offset: start, len }))
            }
            Extent::Data(entry) => {
                let len = usize::try_from(entry.payload_len()).expect("payload is capped at 5 MiB");
                self.expect_input(State::Payload(entry), len);
                Ok(None)
            }
        }
    }

    /// Checks the totals once the last page is done.
    pub(super) fn finish_extents(&mut self) -> Result<(), ApplyError> {
        self.walk.tally.finish(self.header_ref())?;
        self.walk.page = None;
        self.expect_input(State::Trailer, TRAILER_LEN);
        Ok(())
    }

    /// Checks page `number` against the ref that named it and parses it
    /// (decoding a compact page into `page_content`).
    pub(super) fn read_page(&mut self, named: &PageRef, number: u64) -> Result<Page, ApplyError> {
        let dec = self
            .bufs
            .zstd
            .get_or_insert_with(|| Box::new(FrameDecoder::new()));
        read_page(
            &self.input.buf,
            named,
            number,
            &self.walk.rules,
            dec,
            &mut self.walk.page_content,
        )
    }
}
