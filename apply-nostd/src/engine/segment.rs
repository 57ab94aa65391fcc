//! Data segments: the codec and its features, the ops block (inline,
//! in the payload or packed), the data block's zstd frame and the data history.

use super::*;

/// A data segment being executed, op by op.
#[derive(Debug)]
pub(super) struct SegmentRun {
    pub(super) entry: SegmentEntry,
    pub(super) start: u64,
    /// The ops not yet run: a range of the buffer `ops_in` names.
    pub(super) ops: Range<usize>,
    pub(super) ops_in: OpsIn,
    pub(super) data_in_inbuf: Option<usize>,
    pub(super) out_pos: usize,
    pub(super) data_pos: usize,
    /// A `Delta` op whose old bytes were just read into `out[range]`.
    pub(super) delta_pending: Option<Range<usize>>,
}

/// Which buffer holds a segment's ops block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OpsIn {
    /// The start of the buffered payload, `inbuf`.
    Payload,
    /// `ops`: the payload's packed frame, decoded.
    Unpacked,
    /// `page_content`: inline in a compact page.
    Page,
}

impl Applier {
    /// Decodes a codec 0x03 frame of `n` bytes into `data`, with the last
    /// `MAX_HISTORY_LEN - n` bytes of the data history as its prefix, then
    /// appends the bytes to the history. The frame must declare `n`.
    pub(super) fn decode_with_history(
        &mut self,
        frame: Range<usize>,
        n: usize,
    ) -> Result<(), ApplyError> {
        let segment = self.segments_seen - 1;
        let keep = self.history.len().min(MAX_HISTORY_LEN as usize - n);
        // The prefix goes to the decoder in `out`'s buffer, as for codec
        // 0x02: the decoder copies it, and `out` is sized anew afterwards.
        let mut prefix = core::mem::take(&mut self.out);
        reserve_exactly(&mut prefix, keep);
        prefix.clear();
        prefix.extend_from_slice(&self.history[self.history.len() - keep..]);
        sized(&mut self.data, n);
        // A fresh decoder, dropped after this frame, as for codec 0x02.
        self.zstd = None;
        let mut dec = FrameDecoder::new();
        crate::zstd::decode_sized_frame(
            &mut dec,
            &self.inbuf[frame],
            &mut self.data,
            (keep > 0).then_some(prefix),
        )
        .map_err(|why| ApplyError::Decode { segment, why })?;
        drop(dec); // its window and prefix copy, before the history grows
        self.push_history();
        Ok(())
    }

    /// Appends the decoded data in `data` to the history, keeping its last
    /// `MAX_HISTORY_LEN` bytes in a buffer that grows (by doubling) only as
    /// far as the history does, and never past that.
    pub(super) fn push_history(&mut self) {
        let max = MAX_HISTORY_LEN as usize;
        let n = self.data.len(); // at most MAX_SEGMENT_LEN = MAX_HISTORY_LEN
        let excess = (self.history.len() + n).saturating_sub(max);
        self.history.drain(..excess);
        let need = self.history.len() + n;
        if self.history.capacity() < need {
            let want = need.max(2 * self.history.capacity()).min(max);
            self.history.reserve_exact(want - self.history.len());
        }
        self.history.extend_from_slice(&self.data);
    }

    /// A codec 0x03 segment before the resume point: decodes its frame only
    /// to extend the history, taking its size from the frame's header.
    pub(super) fn skip_history_frame(&mut self, entry: &SegmentEntry) -> Result<(), ApplyError> {
        let segment = self.segments_seen - 1;
        let ops_len = entry.payload_ops_len() as usize;
        let n = crate::zstd::declared_size(&self.inbuf[ops_len..])
            .filter(|&n| (1..=u64::from(MAX_SEGMENT_LEN)).contains(&n))
            .ok_or(ApplyError::Decode {
                segment,
                why: ZstdError::NoContentSize,
            })?;
        self.decode_with_history(ops_len..self.inbuf.len(), n as usize) // n <= 4 MiB
    }

    /// A segment entry's data codec and whether its ops are packed, from
    /// its codec byte. Refuses codec 0x02 without `FEATURE_OLD_PREFIX` and
    /// packed ops without `FEATURE_PACKED_OPS`, as a corrupt patch: the bits
    /// are what tells an older applier that it cannot read the patch.
    pub(super) fn segment_codec(&self, byte: u8) -> Result<(Codec, bool), ApplyError> {
        let (codec, packed) = Codec::split(byte)?;
        self.check_codec_feature(codec as u8, "segment.codec")?;
        if packed && self.required_features & FEATURE_PACKED_OPS == 0 {
            return Err(FormatError::Invalid {
                field: "segment.codec",
                reason: "has bit 0x80 (packed ops), but required_features lacks FEATURE_PACKED_OPS (0x2)",
            }
            .into());
        }
        Ok((codec, packed))
    }

    /// Decodes a packed segment's ops block, the one zstd frame that is the
    /// first `ops_len` bytes of its buffered payload, into `ops`. The frame
    /// must declare its content size, 1..=`MAX_OPS_LEN`, which is checked
    /// before `ops` is sized to it; its window is capped like a data frame's.
    pub(super) fn unpack_ops(&mut self, entry: &SegmentEntry) -> Result<(), ApplyError> {
        let segment = self.segments_seen - 1;
        let dec = self
            .zstd
            .get_or_insert_with(|| Box::new(FrameDecoder::new()));
        unpack_sized(
            dec,
            &self.inbuf[..entry.ops_len as usize],
            &mut self.ops,
            SizedFrame {
                field: "packed ops frame",
                reason: "declares no content size, or 0; it must declare the ops block's length",
                size_field: "packed ops content size",
                max: MAX_OPS_LEN,
                corrupt: Box::new(move |why| ApplyError::Decode { segment, why }),
            },
        )
    }

    /// A buffered segment's ops block, from the buffer `ops_in` names.
    pub(super) fn ops_block(&self, entry: &SegmentEntry, ops_in: OpsIn) -> &[u8] {
        match ops_in {
            OpsIn::Payload => &self.inbuf[..entry.ops_len as usize],
            OpsIn::Unpacked => &self.ops,
            OpsIn::Page => {
                let at = entry.inline_ops.expect("inline ops have an offset") as usize;
                // In the page: Page::parse_compact checked the range.
                &self.page_content[at..at + entry.ops_len as usize]
            }
        }
    }

    /// Checks a buffered payload's ops: every length and source, before any
    /// read. Returns how many data bytes they take.
    pub(super) fn check_ops(&self, entry: &SegmentEntry, ops_in: OpsIn) -> Result<u64, ApplyError> {
        let start = self.new_pos;
        // One pass over the ops checks every length and source before any read.
        let (mut produced, mut data_needed) = (0u64, 0u64);
        for op in OpIter::new(self.ops_block(entry, ops_in)) {
            let op = op?;
            let at = start + produced;
            if let Op::Copy { len, delta } | Op::Delta { len, delta } = op {
                self.source(at, delta, len.into(), start)?;
            }
            produced += u64::from(op.len());
            data_needed += u64::from(op.data_len());
            if produced > entry.new_len.into() {
                break;
            }
        }
        if produced != u64::from(entry.new_len) {
            return Err(ApplyError::LengthMismatch {
                field: "sum of op lengths",
                got: produced,
                expected: entry.new_len.into(),
            });
        }
        Ok(data_needed)
    }

    /// A `ZstdPrefix` segment's prefix: its old offset and length, checked
    /// like an op source (in the old file and, in place, at or after the
    /// segment's start), and where its frame starts in `inbuf`.
    pub(super) fn prefix_range(
        &self,
        entry: &SegmentEntry,
    ) -> Result<(u64, usize, usize), ApplyError> {
        let ops_len = entry.payload_ops_len() as usize;
        let block = &self.inbuf[ops_len..];
        let (prefix, frame) = PrefixRef::parse(block)?;
        let start = self.new_pos;
        let offset = self.source(start, prefix.delta, prefix.len.into(), start)?;
        let frame_at = self.inbuf.len() - frame.len();
        Ok((offset, prefix.len as usize, frame_at)) // len is at most MAX_PREFIX_LEN
    }

    /// Decodes a checked payload's data block; for `ZstdPrefix`, `prefix`
    /// holds the old bytes just read and where the frame starts.
    pub(super) fn start_segment(
        &mut self,
        entry: SegmentEntry,
        codec: Codec,
        ops_in: OpsIn,
        data_needed: u64,
        prefix: Option<(Vec<u8>, usize)>,
    ) -> Result<SegmentRun, ApplyError> {
        let segment = self.segments_seen - 1;
        let start = self.new_pos;
        let ops_len = entry.payload_ops_len() as usize; // 0 when inline
        let data_block = &self.inbuf[ops_len..];
        let data_in_inbuf = match codec {
            Codec::Stored => {
                if data_block.len() as u64 != data_needed {
                    return Err(ApplyError::LengthMismatch {
                        field: "stored data_len",
                        got: data_block.len() as u64,
                        expected: data_needed,
                    });
                }
                Some(ops_len)
            }
            Codec::Zstd => {
                let needed = data_needed as usize; // at most new_len, capped at 4 MiB
                sized(&mut self.data, needed);
                let dec = self
                    .zstd
                    .get_or_insert_with(|| Box::new(FrameDecoder::new()));
                crate::zstd::decode_frame(dec, data_block, &mut self.data, None)
                    .map_err(|why| ApplyError::Decode { segment, why })?;
                None
            }
            Codec::ZstdHistory => {
                if data_needed == 0 {
                    // Spec 3.8.1: a frame whose segment takes no data is refused.
                    return Err(ApplyError::Decode {
                        segment,
                        why: ZstdError::Length { expected: 0 },
                    });
                }
                self.decode_with_history(ops_len..self.inbuf.len(), data_needed as usize)?;
                None
            }
            Codec::ZstdPrefix => {
                let (prefix, frame_at) =
                    prefix.expect("a ZstdPrefix segment reads its prefix before it starts");
                sized(&mut self.data, data_needed as usize); // at most new_len, capped at 4 MiB
                                                             // A fresh decoder, dropped after this frame: the dictionary
                                                             // copy it makes is sized exactly and outlives no segment.
                self.zstd = None;
                let mut dec = FrameDecoder::new();
                crate::zstd::decode_frame(
                    &mut dec,
                    &self.inbuf[frame_at..],
                    &mut self.data,
                    Some(prefix),
                )
                .map_err(|why| ApplyError::Decode { segment, why })?;
                None
            }
        };
        sized(&mut self.out, entry.new_len as usize);
        Ok(SegmentRun {
            entry,
            start,
            ops: match ops_in {
                OpsIn::Page => {
                    let at = entry.inline_ops.expect("inline ops have an offset") as usize;
                    at..at + entry.ops_len as usize
                }
                OpsIn::Payload | OpsIn::Unpacked => 0..self.ops_block(&entry, ops_in).len(),
            },
            ops_in,
            data_in_inbuf,
            out_pos: 0,
            data_pos: 0,
            delta_pending: None,
        })
    }
}
