//! Reads a patch front to back, checks every hash it can without the old
//! file, and counts what it contains. Reads from any `Read` (stdin too) with
//! memory bounded by the format's limits: one page and one ops block.

use std::fmt;
use std::io::{self, Read};

use anypatch_format::{
    key_id, parse_header_section, Codec, Extent, FormatError, Hash, Header, Op, OpIter, Page,
    Preamble, PreambleRepr, SignatureBlock, Trailer, FEATURE_COMPACT_PAGES, FEATURE_DATA_HISTORY,
    FEATURE_OLD_PREFIX, FEATURE_PACKED_OPS, FLAG_IN_PLACE_SAFE, HASH_LEN, MAX_OPS_LEN,
    MAX_PAGE_LEN, PREAMBLE_LEN, TRAILER_LEN,
};

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
}

/// What [`inspect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    pub major: u16,
    pub minor: u16,
    pub required_features: u32,
    pub signature_len: u32,
    /// Signatures in the signature block, each checked over the header section.
    pub signers: Vec<InspectedSigner>,
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
    /// Bytes read, trailer included.
    pub patch_len: u64,
    pub patch_hash: Hash,
    /// Whether the trailer's hash equals BLAKE3 of every byte before it.
    pub patch_hash_ok: bool,
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
}

/// Why a patch could not be inspected.
#[non_exhaustive]
#[derive(Debug)]
pub enum InspectError {
    /// Reading the patch failed.
    Io(io::Error),
    /// A structure does not decode or breaks a limit.
    Format(FormatError),
    /// A page's BLAKE3 differs from what the previous page (or header) says.
    PageHashMismatch { page: u64 },
    /// The pages do not agree with a header field.
    Mismatch {
        field: &'static str,
        header: u64,
        actual: u64,
    },
    /// Bytes after the trailer.
    TrailingBytes,
}

impl fmt::Display for InspectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                write!(f, "patch is truncated (ends early); download it again")
            }
            Self::Io(e) => write!(f, "cannot read the patch: {e}"),
            Self::Format(e) => write!(f, "{e}"),
            Self::PageHashMismatch { page } => {
                write!(f, "patch is corrupt: page {page} does not match its hash")
            }
            Self::Mismatch {
                field,
                header,
                actual,
            } => write!(
                f,
                "patch is corrupt: header says {field} is {header}, the pages give {actual}"
            ),
            Self::TrailingBytes => write!(f, "patch is corrupt: bytes after the trailer"),
        }
    }
}

impl std::error::Error for InspectError {}

impl From<io::Error> for InspectError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<FormatError> for InspectError {
    fn from(e: FormatError) -> Self {
        Self::Format(e)
    }
}

/// A signature found by [`inspect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectedSigner {
    pub public_key: [u8; 32],
    /// First 8 bytes of the key's BLAKE3: how keys are named to users.
    pub key_id: [u8; 8],
    /// The signature verifies with the key it names. Whether that key is
    /// trusted is for the applier (`applypatch --trusted-key`) to decide.
    pub valid: bool,
}

/// Reads exactly `n` bytes and feeds them to the patch hash.
fn take(r: &mut dyn Read, hasher: &mut blake3::Hasher, n: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf)?;
    hasher.update(&buf);
    Ok(buf)
}

/// Reads a whole patch from `r` and reports on it. Fails on the first
/// structural problem; a wrong patch hash is reported in the result.
pub fn inspect(r: &mut dyn Read) -> Result<Inspection, InspectError> {
    let mut hasher = blake3::Hasher::new();
    let pre_bytes = take(r, &mut hasher, PREAMBLE_LEN)?;
    let pre = PreambleRepr::parse(&Preamble::new_checked(&pre_bytes[..])?)?;
    let body = take(r, &mut hasher, pre.header_len as usize)?;
    let check = take(r, &mut hasher, HASH_LEN)?;
    // The format's one header-section parser: hash before version.
    let (pre, header) = parse_header_section(&[&pre_bytes[..], &body, &check].concat())?;
    let block = SignatureBlock::parse(&take(r, &mut hasher, pre.signature_len as usize)?)?;
    let section = [&pre_bytes[..], &body, &check].concat();
    let signers = block
        .entries
        .iter()
        .map(|e| InspectedSigner {
            public_key: e.public_key,
            key_id: key_id(&e.public_key),
            valid: e.verifies(&section),
        })
        .collect();

    let mut report = Inspection {
        signers,
        major: pre.major,
        minor: pre.minor,
        required_features: pre.required_features,
        signature_len: pre.signature_len,
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
    };
    let mut skip = vec![0u8; 64 << 10];
    let mut next = Some(header.first_page);
    while let Some(page_ref) = next {
        let bytes = take(r, &mut hasher, page_ref.len as usize)?;
        if *blake3::hash(&bytes).as_bytes() != page_ref.hash {
            return Err(InspectError::PageHashMismatch { page: report.pages });
        }
        let compact = pre.required_features & FEATURE_COMPACT_PAGES != 0;
        let content = if compact {
            unpack(&bytes, MAX_PAGE_LEN, "compact page")?
        } else {
            Vec::new()
        };
        let page = if compact {
            Page::parse_compact(&content)?
        } else {
            Page::parse(&bytes)?
        };
        report.pages += 1;
        report.page_bytes += bytes.len() as u64;
        for extent in &page.extents {
            let kind = match *extent {
                Extent::Copy { delta: 0, .. } => &mut report.unchanged,
                Extent::Copy { .. } => &mut report.moved,
                Extent::Zero { .. } => &mut report.zero,
                Extent::Data(_) => &mut report.data,
            };
            kind.extents += 1;
            kind.bytes = kind.bytes.saturating_add(extent.len());
            if let Extent::Data(seg) = extent {
                let (codec, packed) = Codec::split(seg.codec)?;
                *match codec {
                    Codec::Stored => &mut report.codecs.stored,
                    Codec::Zstd => &mut report.codecs.zstd,
                    Codec::ZstdPrefix => &mut report.codecs.zstd_prefix,
                    Codec::ZstdHistory => &mut report.codecs.zstd_history,
                } += 1;
                report.codecs.ops_bytes += seg.payload_ops_len();
                report.codecs.data_bytes += u64::from(seg.data_len);
                let ops = if let Some(at) = seg.inline_ops {
                    report.codecs.inline_ops += 1;
                    let at = at as usize; // parse_compact checked the range
                    content[at..at + seg.ops_len as usize].to_vec()
                } else {
                    let ops = take(r, &mut hasher, seg.ops_len as usize)?;
                    if packed {
                        report.codecs.packed_ops += 1;
                        unpack(&ops, MAX_OPS_LEN, "packed ops block")?
                    } else {
                        ops
                    }
                };
                for op in OpIter::new(&ops) {
                    match op? {
                        Op::Copy { .. } => report.ops.copy += 1,
                        Op::Literal { .. } => report.ops.literal += 1,
                        Op::Delta { .. } => report.ops.delta += 1,
                        Op::Zero { .. } => report.ops.zero += 1,
                    }
                }
                let mut left = seg.data_len as usize;
                while left > 0 {
                    let n = left.min(skip.len());
                    r.read_exact(&mut skip[..n])?;
                    hasher.update(&skip[..n]);
                    left -= n;
                }
            }
        }
        next = page.next;
    }

    let mut trailer = [0u8; TRAILER_LEN];
    r.read_exact(&mut trailer)?;
    let trailer = Trailer::parse(&trailer)?;
    if r.read(&mut skip[..1])? != 0 {
        return Err(InspectError::TrailingBytes);
    }
    report.patch_len = hasher.count() + TRAILER_LEN as u64;
    report.patch_hash = trailer.patch_hash;
    report.patch_hash_ok = *hasher.finalize().as_bytes() == trailer.patch_hash;

    let kinds = [report.unchanged, report.moved, report.zero, report.data];
    let checks = [
        (
            "extent_count",
            header.extent_count,
            kinds.iter().map(|k| k.extents).sum(),
        ),
        ("segment_count", header.segment_count, report.data.extents),
        (
            "new_len",
            header.new_len,
            kinds.iter().fold(0u64, |a, k| a.saturating_add(k.bytes)),
        ),
        ("patch_len", header.patch_len, report.patch_len),
    ];
    for (field, want, actual) in checks {
        if want != actual {
            return Err(InspectError::Mismatch {
                field,
                header: want,
                actual,
            });
        }
    }
    Ok(report)
}

/// Decodes one zstd frame of at most `max` bytes.
fn unpack(frame: &[u8], max: u32, what: &'static str) -> Result<Vec<u8>, InspectError> {
    zstd::bulk::decompress(frame, max as usize).map_err(|_| FormatError::Malformed { what }.into())
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
        assert_eq!(named, anypatch_format::KNOWN_REQUIRED_FEATURES);
    }
}
