//! The checks a patch's structure must pass that need no old byte: codecs
//! against the feature bits, extents against the header, ops against their
//! entry and the old file's length.

use anypatch_format::{
    Codec, Extent, FormatError, Header, Op, OpIter, PrefixRef, SegmentEntry, FEATURE_COMPACT_PAGES,
    FEATURE_DATA_HISTORY, FEATURE_OLD_PREFIX, FEATURE_PACKED_OPS,
};

use crate::ApplyError;

/// What the checks depend on: the preamble's feature bits, the old file's
/// length (the header's `old_len` when the old file is not at hand) and
/// whether the apply is in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rules {
    /// The preamble's must-understand feature bits.
    pub required_features: u32,
    /// Length of the old file every source must lie in.
    pub old_len: u64,
    /// Refuse sources before the extent being produced (spec section 7).
    pub in_place: bool,
}

/// Ops of each kind in one ops block, and the data bytes they take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpTally {
    pub copy: u64,
    pub literal: u64,
    pub delta: u64,
    pub zero: u64,
    /// Data-block bytes the literal and delta ops consume.
    pub data_needed: u64,
    /// Whether any op reads old bytes (copy or delta): the segment's
    /// output, and so its hash, then depends on the old file.
    pub reads_old: bool,
}

impl Rules {
    /// Whether pages are compact (format 1.2).
    pub fn compact_pages(&self) -> bool {
        self.required_features & FEATURE_COMPACT_PAGES != 0
    }

    /// Refuses codec 0x02 without `FEATURE_OLD_PREFIX` and codec 0x03
    /// without `FEATURE_DATA_HISTORY`: those bits are what tells an older
    /// applier it cannot read the patch, so a patch that omits them is corrupt.
    pub fn codec_feature(&self, codec: u8, field: &'static str) -> Result<(), ApplyError> {
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

    /// A segment entry's data codec and whether its ops are packed, with
    /// the feature bits each needs.
    pub fn segment_codec(&self, byte: u8) -> Result<(Codec, bool), ApplyError> {
        let (codec, packed) = Codec::split(byte)?;
        self.codec_feature(codec as u8, "segment.codec")?;
        if packed && self.required_features & FEATURE_PACKED_OPS == 0 {
            return Err(FormatError::Invalid {
                field: "segment.codec",
                reason: "has bit 0x80 (packed ops), but required_features lacks FEATURE_PACKED_OPS (0x2)",
            }
            .into());
        }
        Ok((codec, packed))
    }

    /// The old offset `new_offset + delta`, checked to lie in the old file
    /// and, in place, at or after `floor` (the extent's start).
    pub fn source(
        &self,
        new_offset: u64,
        delta: i64,
        len: u64,
        floor: u64,
    ) -> Result<u64, ApplyError> {
        let source = i128::from(new_offset) + i128::from(delta);
        let old_len = self.old_len;
        if source < 0 || source + i128::from(len) > i128::from(old_len) {
            return Err(ApplyError::SourceOutOfRange {
                new_offset,
                source,
                len,
                old_len,
            });
        }
        let source = source as u64; // in 0..=old_len, checked above
        if self.in_place && source < floor {
            return Err(ApplyError::NotInPlaceSafe { new_offset, source });
        }
        Ok(source)
    }

    /// Checks an ops block of the segment that starts at new offset
    /// `start`: every op decodes, every source lies in the old file, and the
    /// ops produce exactly the entry's `new_len`. One pass, before any read.
    pub fn check_ops(
        &self,
        ops: &[u8],
        entry: &SegmentEntry,
        start: u64,
    ) -> Result<OpTally, ApplyError> {
        let mut tally = OpTally::default();
        let mut produced = 0u64;
        for op in OpIter::new(ops) {
            let op = op?;
            let at = start + produced;
            match op {
                Op::Copy { len, delta } | Op::Delta { len, delta } => {
                    self.source(at, delta, len.into(), start)?;
                    tally.reads_old = true;
                    if matches!(op, Op::Copy { .. }) {
                        tally.copy += 1;
                    } else {
                        tally.delta += 1;
                    }
                }
                Op::Literal { .. } => tally.literal += 1,
                Op::Zero { .. } => tally.zero += 1,
            }
            produced += u64::from(op.len());
            tally.data_needed += u64::from(op.data_len());
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
        Ok(tally)
    }

    /// A codec 0x02 data block's prefix: its old offset and length, checked
    /// like an op source, and the frame that follows it.
    pub fn prefix<'a>(
        &self,
        block: &'a [u8],
        start: u64,
    ) -> Result<(u64, u32, &'a [u8]), ApplyError> {
        let (prefix, frame) = PrefixRef::parse(block)?;
        let offset = self.source(start, prefix.delta, prefix.len.into(), start)?;
        Ok((offset, prefix.len, frame))
    }
}

/// How far a walk of the extents is: counted as each extent is taken from
/// its page, and checked against the header's totals at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    /// Pages read.
    pub pages: u64,
    /// Extents taken.
    pub extents: u64,
    /// Data segments taken.
    pub segments: u64,
    /// New offset where the next extent starts: the sum of extent lengths.
    pub end: u64,
}

impl Tally {
    /// Takes the next extent: checks that it ends within the header's
    /// `new_len` and that a data segment is within `segment_max`. Returns
    /// the new offset it starts at.
    pub fn take(&mut self, extent: &Extent, header: &Header) -> Result<u64, ApplyError> {
        let start = self.end;
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
        if let Extent::Data(entry) = extent {
            if entry.new_len > header.segment_max {
                return Err(ApplyError::LengthMismatch {
                    field: "segment.new_len above segment_max",
                    got: entry.new_len.into(),
                    expected: header.segment_max.into(),
                });
            }
            self.segments += 1;
        }
        self.extents += 1;
        self.end = start + len;
        Ok(start)
    }

    /// Checks the totals once the last page is done.
    pub fn finish(&self, header: &Header) -> Result<(), ApplyError> {
        let checks = [
            ("sum of extent lengths", self.end, header.new_len),
            ("extent_count", self.extents, header.extent_count),
            ("segment_count", self.segments, header.segment_count),
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
        Ok(())
    }
}
