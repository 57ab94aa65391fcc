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
    /// Decodes a codec 0x03 frame of `n` bytes into `data` with the data
    /// history as its prefix, and appends the bytes to the history.
    pub(super) fn decode_with_history(
        &mut self,
        frame: Range<usize>,
        n: usize,
    ) -> Result<(), ApplyError> {
        let segment = self.walk.tally.segments - 1;
        // A fresh decoder for the frame: drop the cached one and its window.
        self.bufs.zstd = None;
        crate::history::decode_with_history(
            &mut self.bufs.history,
            &self.input.buf[frame],
            n,
            &mut self.bufs.data,
            &mut self.bufs.out,
        )
        .map_err(|why| ApplyError::Decode { segment, why })
    }

    /// A codec 0x03 segment before the resume point: decodes its frame only
    /// to extend the history, taking its size from the frame's header.
    pub(super) fn skip_history_frame(&mut self, entry: &SegmentEntry) -> Result<(), ApplyError> {
        let segment = self.walk.tally.segments - 1;
        let ops_len = entry.payload_ops_len() as usize;
        let n = crate::zstd::declared_size(&self.input.buf[ops_len..])
            .filter(|&n| (1..=u64::from(MAX_SEGMENT_LEN)).contains(&n))
            .ok_or(ApplyError::Decode {
                segment,
                why: ZstdError::NoContentSize,
            })?;
        self.decode_with_history(ops_len..self.input.buf.len(), n as usize) // n <= 4 MiB
    }

    /// Decodes a packed segment's ops block, the one zstd frame that is the
    /// first `ops_len` bytes of its buffered payload, into `ops`. The frame
    /// must declare its content size, 1..=`MAX_OPS_LEN`, which is checked
    /// before `ops` is sized to it; its window is capped like a data frame's.
    pub(super) fn unpack_ops(&mut self, entry: &SegmentEntry) -> Result<(), ApplyError> {
        let dec = self
            .bufs
            .zstd
            .get_or_insert_with(|| Box::new(FrameDecoder::new()));
        crate::layout::frames::unpack_ops(
            dec,
            &self.input.buf[..entry.ops_len as usize],
            &mut self.bufs.ops,
            self.walk.tally.segments - 1,
        )
    }

    /// A buffered segment's ops block, from the buffer `ops_in` names.
    pub(super) fn ops_block(&self, entry: &SegmentEntry, ops_in: OpsIn) -> &[u8] {
        match ops_in {
            OpsIn::Payload => &self.input.buf[..entry.ops_len as usize],
            OpsIn::Unpacked => &self.bufs.ops,
            OpsIn::Page => {
                let at = entry.inline_ops.expect("inline ops have an offset") as usize;
                // In the page: Page::parse_compact checked the range.
                &self.walk.page_content[at..at + entry.ops_len as usize]
            }
        }
    }

    /// Checks a buffered payload's ops: every length and source, before any
    /// read. Returns how many data bytes they take.
    pub(super) fn check_ops(&self, entry: &SegmentEntry, ops_in: OpsIn) -> Result<u64, ApplyError> {
        let ops = self.ops_block(entry, ops_in);
        Ok(self
            .walk
            .rules
            .check_ops(ops, entry, self.new_pos)?
            .data_needed)
    }

    /// A `ZstdPrefix` segment's prefix: its old offset and length, checked
    /// like an op source (in the old file and, in place, at or after the
    /// segment's start), and where its frame starts in `inbuf`.
    pub(super) fn prefix_range(
        &self,
        entry: &SegmentEntry,
    ) -> Result<(u64, usize, usize), ApplyError> {
        let ops_len = entry.payload_ops_len() as usize;
        let (offset, len, frame) = self
            .walk
            .rules
            .prefix(&self.input.buf[ops_len..], self.new_pos)?;
        let frame_at = self.input.buf.len() - frame.len();
        Ok((offset, len as usize, frame_at)) // len is at most MAX_PREFIX_LEN
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
        let segment = self.walk.tally.segments - 1;
        let start = self.new_pos;
        let ops_len = entry.payload_ops_len() as usize; // 0 when inline
        let data_block = &self.input.buf[ops_len..];
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
                sized(&mut self.bufs.data, needed);
                let dec = self
                    .bufs
                    .zstd
                    .get_or_insert_with(|| Box::new(FrameDecoder::new()));
                crate::zstd::decode_frame(dec, data_block, &mut self.bufs.data, None)
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
                self.decode_with_history(ops_len..self.input.buf.len(), data_needed as usize)?;
                None
            }
            Codec::ZstdPrefix => {
                let (prefix, frame_at) =
                    prefix.expect("a ZstdPrefix segment reads its prefix before it starts");
                sized(&mut self.bufs.data, data_needed as usize); // at most new_len, capped at 4 MiB
                                                                  // A fresh decoder, dropped after this frame: the dictionary
                                                                  // copy it makes is sized exactly and outlives no segment.
                self.bufs.zstd = None;
                let mut dec = FrameDecoder::new();
                crate::zstd::decode_frame(
                    &mut dec,
                    &self.input.buf[frame_at..],
                    &mut self.bufs.data,
                    Some(prefix),
                )
                .map_err(|why| ApplyError::Decode { segment, why })?;
                None
            }
        };
        sized(&mut self.bufs.out, entry.new_len as usize);
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
