//! Reads a patch front to back without the old file, with the engine
//! crate's layout reader ([`anypatch_apply::layout::Walker`]), and counts
//! what it contains.
//!
//! Every check the appliers make that needs no old byte is made here, by
//! the same code: the header and every page against their hashes,
//! signatures, feature bits, every extent and op against the header and
//! the old length, every zstd frame's header, every data frame that has no
//! old bytes as history decoded to the exact size its ops take, the
//! trailer, the patch length and the end of input. What only the old file
//! can show is left to the applier: the base hash, the output of each
//! segment (its hash), and the new file's hash. Memory is bounded by the
//! format's limits, as the engine's is.
#![forbid(unsafe_code)]

use std::fmt;
use std::io::{self, Read};

use anypatch_apply::format::{
    Codec, Extent, Hash, Header, FEATURE_COMPACT_PAGES, FEATURE_DATA_HISTORY, FEATURE_OLD_PREFIX,
    FEATURE_PACKED_OPS, FLAG_IN_PLACE_SAFE,
};
use anypatch_apply::layout::map::{kind_of, Buckets, DATA, MOVED, UNCHANGED};
use anypatch_apply::layout::{Mode, SegmentReport, Step, Walker};
use anypatch_apply::{ApplyError, Signer};

/// The must-understand feature bits and their names in reports, in bit order.
pub const FEATURE_NAMES: [(u32, &str); 4] = [
    (FEATURE_OLD_PREFIX, "old-byte history"),
    (FEATURE_PACKED_OPS, "packed ops"),
    (FEATURE_COMPACT_PAGES, "compact pages"),
    (FEATURE_DATA_HISTORY, "data history"),
];

/// A data codec's name in reports.
pub fn codec_name(codec: Codec) -> &'static str {
    match codec {
        Codec::Stored => "stored",
        Codec::Zstd => "zstd",
        Codec::ZstdPrefix => "zstd with old-byte history",
        Codec::ZstdHistory => "zstd with data history",
    }
}

/// New-file bytes and extent count of one extent kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindCount {
    pub extents: u64,
    pub bytes: u64,
}

/// Ops of each kind, over all data segments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpCounts {
    pub copy: u64,
    pub literal: u64,
    pub delta: u64,
    pub zero: u64,
}

/// Data segments by how their blocks are coded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CodecCounts {
    pub stored: u64,
    pub zstd: u64,
    /// zstd with old bytes as history (format 1.1).
    pub zstd_prefix: u64,
    /// zstd with the data history: earlier segments' data (format 1.3).
    pub zstd_history: u64,
    /// Segments whose ops block is packed in the payload (format 1.1).
    pub packed_ops: u64,
    /// Segments whose ops block is inline in a compact page (format 1.2).
    pub inline_ops: u64,
    /// Patch bytes of the ops blocks in payloads, as stored.
    pub ops_bytes: u64,
    /// Patch bytes of all data blocks, as stored.
    pub data_bytes: u64,
    /// Data blocks decoded and found to be the bytes their ops take; the
    /// others (codec 0x02) have old bytes as history: their frame headers
    /// were checked.
    pub decoded: u64,
}

/// What [`inspect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    pub major: u16,
    pub minor: u16,
    pub required_features: u32,
    pub signature_len: u32,
    /// Signatures in the signature block, each checked over the header section.
    pub signers: Vec<Signer>,
    pub header: Header,
    pub pages: u64,
    /// Patch bytes of all pages, as stored.
    pub page_bytes: u64,
    /// Copy extents with delta 0.
    pub unchanged: KindCount,
    /// Copy extents with another delta.
    pub moved: KindCount,
    pub zero: KindCount,
    pub data: KindCount,
    pub ops: OpCounts,
    pub codecs: CodecCounts,
    /// Bytes read, trailer included (when the walk reached it).
    pub patch_len: u64,
    pub patch_hash: Hash,
    /// Whether the walk reached the end: the trailer's hash equals BLAKE3
    /// of every byte before it, and nothing follows.
    pub patch_hash_ok: bool,
    /// The change map ([`inspect_mapped`]): each kind's bytes along the
    /// new file, in as many buckets as asked for.
    pub map: Option<Buckets>,
}

impl CodecCounts {
    /// Segments of each data codec, in codec order, with [`codec_name`].
    pub fn by_codec(&self) -> [(&'static str, u64); 4] {
        [
            (codec_name(Codec::Stored), self.stored),
            (codec_name(Codec::Zstd), self.zstd),
            (codec_name(Codec::ZstdPrefix), self.zstd_prefix),
            (codec_name(Codec::ZstdHistory), self.zstd_history),
        ]
    }
}

impl Inspection {
    fn new(walker: &Walker, map_buckets: Option<usize>) -> Option<Self> {
        let (pre, header) = (walker.preamble()?, walker.header()?);
        Some(Self {
            major: pre.major,
            minor: pre.minor,
            required_features: pre.required_features,
            signature_len: pre.signature_len,
            signers: walker.signers().to_vec(),
            header: header.clone(),
            pages: 0,
            page_bytes: 0,
            unchanged: KindCount::default(),
            moved: KindCount::default(),
            zero: KindCount::default(),
            data: KindCount::default(),
            ops: OpCounts::default(),
            codecs: CodecCounts::default(),
            patch_len: 0,
            patch_hash: [0; 32],
            patch_hash_ok: false,
            map: map_buckets.map(|n| Buckets::new(n, header.new_len)),
        })
    }

    /// Whether the header carries `FLAG_IN_PLACE_SAFE`.
    pub fn in_place_safe(&self) -> bool {
        self.header.flags & FLAG_IN_PLACE_SAFE != 0
    }

    /// The names ([`FEATURE_NAMES`]) of the must-understand features the
    /// patch sets, in bit order.
    pub fn feature_names(&self) -> Vec<&'static str> {
        FEATURE_NAMES
            .iter()
            .filter(|(bit, _)| self.required_features & bit != 0)
            .map(|&(_, name)| name)
            .collect()
    }

    fn extent(&mut self, new_offset: u64, extent: &Extent) {
        let kind = kind_of(extent);
        if let Some(map) = &mut self.map {
            map.add(new_offset, extent.len(), kind);
        }
        let kind = match kind {
            UNCHANGED => &mut self.unchanged,
            MOVED => &mut self.moved,
            DATA => &mut self.data,
            _ => &mut self.zero,
        };
        kind.extents += 1;
        kind.bytes = kind.bytes.saturating_add(extent.len());
    }

    fn segment(&mut self, s: &SegmentReport) {
        let c = &mut self.codecs;
        *match s.codec {
            Codec::Stored => &mut c.stored,
            Codec::Zstd => &mut c.zstd,
            Codec::ZstdPrefix => &mut c.zstd_prefix,
            Codec::ZstdHistory => &mut c.zstd_history,
        } += 1;
        c.packed_ops += u64::from(s.packed);
        c.inline_ops += u64::from(s.entry.inline_ops.is_some());
        c.ops_bytes += s.entry.payload_ops_len();
        c.data_bytes += u64::from(s.entry.data_len);
        c.decoded += u64::from(s.decoded);
        self.ops.copy += s.ops.copy;
        self.ops.literal += s.ops.literal;
        self.ops.delta += s.ops.delta;
        self.ops.zero += s.ops.zero;
    }
}

/// Why a patch could not be inspected.
#[non_exhaustive]
#[derive(Debug)]
pub enum InspectError {
    /// Reading the patch failed.
    Io(io::Error),
    /// The patch is refused, as an applier would refuse it.
    Patch(ApplyError),
}

impl fmt::Display for InspectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "cannot read the patch: {e}"),
            Self::Patch(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for InspectError {}

/// A patch [`inspect`] refused, with what it had read before the refusal
/// when it got past the header.
#[derive(Debug)]
pub struct Refused {
    pub error: InspectError,
    pub so_far: Option<Box<Inspection>>,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Refused {}

/// Reads a whole patch from `r` and reports on it; refuses it on the first
/// problem an applier would refuse it for (see the crate docs for what
/// needs the old file and is left to the applier).
pub fn inspect(r: &mut dyn Read) -> Result<Inspection, Refused> {
    inspect_mapped(r, None)
}

/// [`inspect`], and with `Some(n)` the change map in `n` buckets (clamped
/// to 1..=[`anypatch_apply::layout::map::MAX_BUCKETS`]) in
/// [`Inspection::map`]: the picture the page draws.
pub fn inspect_mapped(r: &mut dyn Read, map_buckets: Option<usize>) -> Result<Inspection, Refused> {
    let mut walker = Walker::new(Mode::Full);
    let mut report: Option<Inspection> = None;
    let mut buf = vec![0u8; 1 << 20];
    let fail = |error, report: Option<Inspection>| Refused {
        error,
        so_far: report.map(Box::new),
    };
    loop {
        let step = match walker.poll() {
            Ok(step) => step,
            Err(e) => return Err(fail(InspectError::Patch(e), report)),
        };
        match step {
            Step::Want { at, len } => {
                let n = len.min(buf.len());
                let got = loop {
                    match r.read(&mut buf[..n]) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        other => break other,
                    }
                };
                match got {
                    Ok(0) => walker.end(),
                    Ok(got) => walker.give(at, &buf[..got]),
                    Err(e) => return Err(fail(InspectError::Io(e), report)),
                }
            }
            Step::Header => report = Inspection::new(&walker, map_buckets),
            Step::Page { len, .. } => {
                let r = report.as_mut().expect("pages follow the header");
                r.pages += 1;
                r.page_bytes += u64::from(len);
            }
            Step::Extent { new_offset, extent } => report
                .as_mut()
                .expect("extents follow the header")
                .extent(new_offset, &extent),
            Step::Segment(s) => report
                .as_mut()
                .expect("segments follow the header")
                .segment(&s),
            Step::Done {
                patch_len,
                patch_hash,
            } => {
                let mut r = report.expect("the walk ends after the header");
                r.patch_len = patch_len;
                r.patch_hash = patch_hash.expect("a full walk hashes the patch");
                r.patch_hash_ok = true;
                return Ok(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_feature_has_a_name() {
        let named = FEATURE_NAMES.iter().fold(0, |all, &(bit, _)| {
            assert_eq!(all & bit, 0, "{bit:#x} is named twice");
            all | bit
        });
        assert_eq!(named, anypatch_apply::format::KNOWN_REQUIRED_FEATURES);
    }
}
