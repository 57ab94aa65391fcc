//! Reading the layout: pages (plain or compact), their extents, the
//! totals at the end, and where each extent reads in the old file.

use super::*;

impl Applier {
    /// Dispatches the next extent of the current page, or moves to the next
    /// page or the trailer. Returns an action when the adapter must act.
    pub(super) fn next_extent(&mut self) -> Result<Option<Action>, ApplyError> {
        let page = self
            .page
            .as_ref()
            .expect("Extent state follows a parsed page");
        let Some(&extent) = page.extents.get(self.extent_idx) else {
            match page.next {
                Some(r) => self.expect_input(State::NextPage(r), r.len as usize),
                None => self.finish_extents()?,
            }
            return Ok(None);
        };
        self.extent_idx += 1;
        self.extents_seen += 1;
        let header = self.header_ref();
        let start = self.new_pos;
        let len = extent.len();
        if start
            .checked_add(len)
            .is_none_or(|end| end > header.new_len)
        {
            return Err(ApplyError::LengthMismatch {
                field: "sum of extent lengths",
                got: start.saturating_add(len),
                expected: header.new_len,
            });
        }
        // Resuming: what ends before the resume point is already written.
        let resume = self.cfg.resume_from;
        if start + len <= resume && resume > 0 {
            if let Extent::Data(entry) = extent {
                self.segments_seen += 1;
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
                let src = self.source(start, delta, len, start)?;
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
                let src = self.source(start, delta, len, start)?;
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
                if self.new_hasher.is_some() && len > self.cfg.zero_step {
                    // Hashed in steps, each returned to the adapter.
                    self.state = State::Zero {
                        offset: start,
                        remaining: len,
                    };
                    return Ok(None);
                }
                hash_zeros(self.new_hasher.as_deref_mut(), len);
                self.new_pos += len;
                self.state = State::Extent;
                Ok(Some(Action::Zero { offset: start, len }))
            }
            Extent::Data(entry) => {
                if entry.new_len > header.segment_max {
                    return Err(ApplyError::LengthMismatch {
                        field: "segment.new_len above segment_max",
                        got: entry.new_len.into(),
                        expected: header.segment_max.into(),
                    });
                }
                self.segments_seen += 1;
                let len = usize::try_from(entry.payload_len()).expect("payload is capped at 5 MiB");
                self.expect_input(State::Payload(entry), len);
                Ok(None)
            }
        }
    }

    /// Checks the totals once the last page is done.
    pub(super) fn finish_extents(&mut self) -> Result<(), ApplyError> {
        let h = self.header_ref();
        let checks = [
            ("sum of extent lengths", self.new_pos, h.new_len),
            ("extent_count", self.extents_seen, h.extent_count),
            ("segment_count", self.segments_seen, h.segment_count),
        ];
        for (field, got, expected) in checks {
            if got != expected {
                return Err(ApplyError::LengthMismatch {
                    field,
                    got,
                    expected,
                });
            }
        }
        self.page = None;
        self.expect_input(State::Trailer, TRAILER_LEN);
        Ok(())
    }

    /// The old offset `new_offset + delta`, checked to lie in the old file and,
    /// for in-place applies, at or after `floor` (the extent's start).
    pub(super) fn source(
        &self,
        new_offset: u64,
        delta: i64,
        len: u64,
        floor: u64,
    ) -> Result<u64, ApplyError> {
        let source = i128::from(new_offset) + i128::from(delta);
        let old_len = self.cfg.old_len;
        if source < 0 || source + i128::from(len) > i128::from(old_len) {
            return Err(ApplyError::SourceOutOfRange {
                new_offset,
                source,
                len,
                old_len,
            });
        }
        let source = source as u64; // in 0..=old_len, checked above
        if self.cfg.in_place && source < floor {
            return Err(ApplyError::NotInPlaceSafe { new_offset, source });
        }
        Ok(source)
    }

    /// Refuses codec 0x02 in a patch whose preamble lacks `FEATURE_OLD_PREFIX`,
    /// and codec 0x03 in one that lacks `FEATURE_DATA_HISTORY`.
    pub(super) fn check_codec_feature(
        &self,
        codec: u8,
        field: &'static str,
    ) -> Result<(), ApplyError> {
        if codec == Codec::ZstdPrefix as u8 && self.required_features & FEATURE_OLD_PREFIX == 0 {
            return Err(FormatError::Invalid {
                field,
                reason: "is 0x02 (zstd with an old prefix), but required_features lacks FEATURE_OLD_PREFIX (0x1)",
            }
            .into());
        }
        if codec == Codec::ZstdHistory as u8 && self.required_features & FEATURE_DATA_HISTORY == 0 {
            return Err(FormatError::Invalid {
                field,
                reason: "is 0x03 (zstd with the data history), but required_features lacks FEATURE_DATA_HISTORY (0x8)",
            }
            .into());
        }
        Ok(())
    }

    /// Whether the patch's pages are compact (format 1.2).
    pub(super) fn compact_pages(&self) -> bool {
        self.required_features & FEATURE_COMPACT_PAGES != 0
    }

    /// Decodes a compact page, the one zstd frame buffered in `inbuf`, into
    /// `page_content`. The frame must declare its content size,
    /// 1..=`MAX_PAGE_LEN`, which is checked before the buffer is sized.
    pub(super) fn unpack_page(&mut self) -> Result<(), ApplyError> {
        let page = self.page_no;
        let dec = self
            .zstd
            .get_or_insert_with(|| Box::new(FrameDecoder::new()));
        unpack_sized(
            dec,
            &self.inbuf,
            &mut self.page_content,
            SizedFrame {
                field: "compact page frame",
                reason: "declares no content size, or 0; it must declare the page's decoded length",
                size_field: "page content size",
                max: MAX_PAGE_LEN,
                corrupt: Box::new(move |why| ApplyError::PageDecode { page, why }),
            },
        )
    }
}
