//! Assembles patches from explicit extents and ops, for test vectors and
//! hostile-input tests that need shapes the producer never makes.
//!
//! Pages are plain (format 1.0) unless [`PatchBuilder::compact`] is asked
//! for (format 1.2): then each page is one zstd frame, a `Segment`'s ops go
//! inline in its page, and a `Packed` one's stay packed in its payload.
//!
//! A `Segment` with [`Codec::ZstdHistory`] (format 1.3) is compressed with
//! the builder's own data history as its prefix: the data of the patch's
//! earlier such segments, of which the last `MAX_HISTORY_LEN` minus the
//! segment's data length bytes are used. [`PatchBuilder::history_frame`]
//! makes the frame, so a test can put a hostile one there.

use anypatch_format::{
    Codec, Extent, Header, Op, Page, PageRef, PrefixRef, SegmentEntry, Trailer,
    FEATURE_COMPACT_PAGES, FEATURE_DATA_HISTORY, FEATURE_OLD_PREFIX, FEATURE_PACKED_OPS,
    FLAG_IN_PLACE_SAFE, MAX_HISTORY_LEN, MAX_ZSTD_WINDOW, PACKED_OPS, TRAILER_LEN,
};
use zstd::zstd_safe::{CCtx, CParameter};

/// One piece of the new file.
#[derive(Debug, Clone)]
pub enum Part {
    Copy {
        len: u64,
        delta: i64,
    },
    Zero {
        len: u64,
    },
    /// A segment with codec 0x00, 0x01 or 0x03. With 0x03 the builder sets
    /// `FEATURE_DATA_HISTORY`.
    Segment {
        ops: Vec<Op>,
        data: Vec<u8>,
        codec: Codec,
    },
    /// A segment with codec 0x02: `data` compressed with the old bytes
    /// `prefix` names (relative to the segment's start) as zstd history.
    /// The builder sets `FEATURE_OLD_PREFIX` when a patch has one.
    PrefixSegment {
        ops: Vec<Op>,
        data: Vec<u8>,
        prefix: PrefixRef,
    },
    /// A `Segment` or `PrefixSegment` whose ops block is packed: one zstd
    /// frame with its content size (bit 0x80 of the codec byte). The builder
    /// sets `FEATURE_PACKED_OPS` when a patch has one.
    Packed(Box<Part>),
}

impl Part {
    /// This segment with its ops block packed.
    pub fn packed(self) -> Part {
        assert!(
            matches!(self, Part::Segment { .. } | Part::PrefixSegment { .. }),
            "only segments have ops to pack"
        );
        Part::Packed(Box::new(self))
    }
}

/// What turns a compact page's decoded content into the page bytes.
pub type PageFrame = fn(&[u8]) -> Vec<u8>;

/// What turns a codec 0x03 segment's data and the history it may use (the
/// last bytes of the builder's data history) into its data block.
pub type HistoryFrame = fn(data: &[u8], history: &[u8]) -> Vec<u8>;

/// A patch under construction.
#[derive(Debug, Clone)]
pub struct PatchBuilder {
    pub parts: Vec<Part>,
    pub extents_per_page: usize,
    pub required_features: u32,
    pub signature: Vec<u8>,
    pub flags: u32,
    /// Compact pages when `Some`: what turns a page's decoded content into
    /// the page bytes, normally [`compress_page`]; a test may put a hostile
    /// frame maker here. `None`: plain pages.
    pub compact: Option<PageFrame>,
    /// Makes each codec 0x03 data block, normally [`compress_with_history`];
    /// a test may put a hostile frame maker here.
    pub history_frame: HistoryFrame,
}

impl PatchBuilder {
    pub fn new(parts: Vec<Part>) -> Self {
        Self {
            parts,
            extents_per_page: 4096,
            required_features: 0,
            signature: Vec::new(),
            flags: 0,
            compact: None,
            history_frame: compress_with_history,
        }
    }

    /// Compact pages (format 1.2, `FEATURE_COMPACT_PAGES`), each one zstd
    /// frame made by [`compress_page`]: ops inline, except a `Packed`
    /// part's, which stay packed in its payload.
    pub fn compact(mut self) -> Self {
        self.compact = Some(compress_page);
        self
    }

    /// Builds the patch against `old`, computing the new bytes (and so every
    /// hash) from the parts.
    pub fn build(&self, old: &[u8]) -> (Vec<u8>, NewImage) {
        let mut new = NewImage::default();
        let mut extents = Vec::new();
        let mut payloads: Vec<Vec<u8>> = Vec::new();
        // Each extent's ops block when it goes inline in a compact page.
        let mut inline: Vec<Vec<u8>> = Vec::new();
        let mut segment_max = 0u32;
        let mut required_features = self.required_features;
        // The data of the codec 0x03 segments so far; the last
        // MAX_HISTORY_LEN bytes are all any frame may use.
        let mut history: Vec<u8> = Vec::new();
        if self.compact.is_some() {
            required_features |= FEATURE_COMPACT_PAGES;
        }
        for part in &self.parts {
            let start = new.len;
            // The extent's inline ops block (empty when none) and payload.
            let (ops_inline, payload) = match part {
                Part::Copy { len, delta } => {
                    let s = (start as i64 + delta) as usize;
                    new.push(&old[s..s + *len as usize]);
                    extents.push(Extent::Copy {
                        len: *len,
                        delta: *delta,
                    });
                    (Vec::new(), Vec::new())
                }
                Part::Zero { len } => {
                    new.push_zeros(*len);
                    extents.push(Extent::Zero { len: *len });
                    (Vec::new(), Vec::new())
                }
                Part::Segment { .. } | Part::PrefixSegment { .. } | Part::Packed(_) => {
                    let (seg, packed) = match part {
                        Part::Packed(inner) => (&**inner, true),
                        _ => (part, false),
                    };
                    let (ops, data, codec, coded) = match seg {
                        Part::Segment { ops, data, codec } => {
                            let coded = match codec {
                                Codec::Stored => data.clone(),
                                Codec::Zstd => zstd::bulk::compress(data, 3)
                                    .expect("zstd compresses in memory"),
                                Codec::ZstdPrefix => {
                                    panic!("use Part::PrefixSegment for codec 0x02")
                                }
                                Codec::ZstdHistory => {
                                    required_features |= FEATURE_DATA_HISTORY;
                                    let room =
                                        (MAX_HISTORY_LEN as usize).saturating_sub(data.len());
                                    let keep = history.len().min(room);
                                    let coded = (self.history_frame)(
                                        data,
                                        &history[history.len() - keep..],
                                    );
                                    history.extend_from_slice(data);
                                    let over =
                                        history.len().saturating_sub(MAX_HISTORY_LEN as usize);
                                    history.drain(..over);
                                    coded
                                }
                            };
                            (ops, data, *codec, coded)
                        }
                        Part::PrefixSegment { ops, data, prefix } => {
                            required_features |= FEATURE_OLD_PREFIX;
                            let s = (start as i64 + prefix.delta) as usize;
                            let history = &old[s..s + prefix.len as usize];
                            let mut coded = Vec::new();
                            prefix.emit(&mut coded);
                            coded.extend(compress_with_prefix(data, history, 3));
                            (ops, data, Codec::ZstdPrefix, coded)
                        }
                        _ => panic!("Part::Packed holds a segment"),
                    };
                    let out = run_ops(old, start, ops, data);
                    let mut ops_block = Vec::new();
                    for op in ops {
                        op.emit(&mut ops_block);
                    }
                    let mut codec = codec as u8;
                    if packed {
                        required_features |= FEATURE_PACKED_OPS;
                        ops_block = pack_ops(&ops_block, 3);
                        codec |= PACKED_OPS;
                    }
                    let in_page = self.compact.is_some() && !packed;
                    let entry = SegmentEntry {
                        new_len: out.len() as u32,
                        codec,
                        ops_len: ops_block.len() as u32,
                        data_len: coded.len() as u32,
                        hash: *blake3::hash(&out).as_bytes(),
                        // The offset in its page is set when pages are made.
                        inline_ops: in_page.then_some(0),
                    };
                    segment_max = segment_max.max(entry.new_len);
                    new.push(&out);
                    extents.push(Extent::Data(entry));
                    if in_page {
                        (ops_block, coded)
                    } else {
                        ops_block.extend_from_slice(&coded);
                        (Vec::new(), ops_block)
                    }
                }
            };
            inline.push(ops_inline);
            payloads.push(payload);
        }
        // Pages back to front, so each can name the next by hash.
        let chunks: Vec<(Vec<Extent>, Vec<u8>, Vec<u8>)> = if extents.is_empty() {
            vec![(Vec::new(), Vec::new(), Vec::new())]
        } else {
            let n = self.extents_per_page;
            (0..extents.len())
                .step_by(n)
                .map(|i| {
                    let end = (i + n).min(extents.len());
                    let mut ext = extents[i..end].to_vec();
                    // The inline ops of the page's segments, in order.
                    let mut pool = Vec::new();
                    for (e, ops) in ext.iter_mut().zip(&inline[i..end]) {
                        if let Extent::Data(s) = e {
                            if s.inline_ops.is_some() {
                                s.inline_ops = Some(pool.len() as u32);
                                pool.extend_from_slice(ops);
                            }
                        }
                    }
                    (ext, pool, payloads[i..end].concat())
                })
                .collect()
        };
        let mut encoded: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut next = None;
        for (ext, pool, pay) in chunks.into_iter().rev() {
            let page = Page { extents: ext, next };
            let page = match self.compact {
                Some(frame) => frame(&page.emit_compact(&pool)),
                None => page.emit(),
            };
            next = Some(PageRef {
                len: page.len() as u32,
                hash: *blake3::hash(&page).as_bytes(),
            });
            encoded.push((page, pay));
        }
        encoded.reverse();
        let body_len: usize = encoded.iter().map(|(p, d)| p.len() + d.len()).sum();
        let mut header = Header {
            old_len: old.len() as u64,
            new_len: new.len,
            old_hash: *blake3::hash(old).as_bytes(),
            new_hash: new.hash(),
            block_size: 4096,
            segment_max,
            codec: Codec::Zstd as u8,
            flags: self.flags & FLAG_IN_PLACE_SAFE,
            patch_len: 0,
            extent_count: extents.len() as u64,
            segment_count: extents
                .iter()
                .filter(|e| matches!(e, Extent::Data(_)))
                .count() as u64,
            first_page: next.expect("there is at least one page"),
            producer: "anypatch-tests builder".into(),
        };
        let mut out = header.settle_patch_len(
            required_features,
            self.signature.len() as u32,
            body_len as u64,
        );
        out.extend_from_slice(&self.signature);
        for (p, d) in encoded {
            out.extend_from_slice(&p);
            out.extend_from_slice(&d);
        }
        let mut t = [0u8; TRAILER_LEN];
        Trailer {
            patch_hash: *blake3::hash(&out).as_bytes(),
        }
        .emit(&mut t);
        out.extend_from_slice(&t);
        assert_eq!(out.len() as u64, header.patch_len);
        (out, new)
    }
}

/// The new file a built patch produces: bytes when small, else only length
/// and hash (zero runs of gigabytes are hashed without being stored).
#[derive(Debug, Default)]
pub struct NewImage {
    pub len: u64,
    pub bytes: Option<Vec<u8>>,
    hasher: blake3::Hasher,
}

impl NewImage {
    const KEEP_LIMIT: u64 = 64 << 20;

    fn push(&mut self, b: &[u8]) {
        self.hasher.update(b);
        self.len += b.len() as u64;
        self.keep(|v| v.extend_from_slice(b));
    }

    fn push_zeros(&mut self, n: u64) {
        let z = [0u8; 0x1_0000];
        let mut left = n;
        while left > 0 {
            let k = left.min(z.len() as u64) as usize;
            self.hasher.update(&z[..k]);
            left -= k as u64;
        }
        self.len += n;
        self.keep(|v| v.resize(v.len() + n as usize, 0));
    }

    fn keep(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        if self.len <= Self::KEEP_LIMIT {
            f(self.bytes.get_or_insert_with(Vec::new));
        } else {
            self.bytes = None;
        }
    }

    pub fn hash(&self) -> [u8; 32] {
        *self.hasher.finalize().as_bytes()
    }
}

/// One zstd frame of `data` with `prefix` as its history, as codec 0x02
/// needs: window at most `MAX_ZSTD_WINDOW`, content size given, no checksum
/// and no dictionary id.
pub fn compress_with_prefix(data: &[u8], prefix: &[u8], level: i32) -> Vec<u8> {
    let mut c = CCtx::create();
    for p in [
        CParameter::CompressionLevel(level),
        CParameter::WindowLog(MAX_ZSTD_WINDOW.trailing_zeros()),
        CParameter::ContentSizeFlag(true),
        CParameter::ChecksumFlag(false),
        CParameter::DictIdFlag(false),
    ] {
        c.set_parameter(p).expect("valid zstd parameter");
    }
    if !prefix.is_empty() {
        c.ref_prefix(prefix).expect("zstd takes the prefix");
    }
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
    c.compress2(&mut out, data)
        .expect("zstd compresses in memory");
    out
}

/// A codec 0x03 data block: one zstd frame of `data` with `history` as its
/// prefix, made by [`compress_with_prefix`] at level 3.
pub fn compress_with_history(data: &[u8], history: &[u8]) -> Vec<u8> {
    compress_with_prefix(data, history, 3)
}

/// A compact page: one zstd frame of its decoded `content`, as
/// `FEATURE_COMPACT_PAGES` needs: window at most `MAX_ZSTD_WINDOW`, content
/// size given, no checksum and no dictionary id.
pub fn compress_page(content: &[u8]) -> Vec<u8> {
    compress_with_prefix(content, &[], 3)
}

/// A zstd frame of `content` in raw blocks, which zstd never shrinks: a
/// 1 MiB window and a 4-byte content size field saying `declared`, or no
/// content size with `None`. Tests make hostile frames with it: declaring
/// another size than `content` has, or none.
pub fn stored_frame(content: &[u8], declared: Option<u32>) -> Vec<u8> {
    let mut f = vec![0x28, 0xB5, 0x2F, 0xFD];
    match declared {
        Some(n) => {
            f.extend_from_slice(&[0x80, 0x50]); // 4-byte content size; window 1 MiB
            f.extend_from_slice(&n.to_le_bytes());
        }
        None => f.extend_from_slice(&[0x00, 0x50]),
    }
    let mut blocks = content.chunks(0x2_0000).peekable(); // at most 128 KiB each
    if blocks.peek().is_none() {
        f.extend_from_slice(&[0x01, 0x00, 0x00]); // one empty last block
    }
    while let Some(block) = blocks.next() {
        let last = u32::from(blocks.peek().is_none());
        let header = last | (block.len() as u32) << 3; // raw
        f.extend_from_slice(&header.to_le_bytes()[..3]);
        f.extend_from_slice(block);
    }
    f
}

/// A packed ops block: one zstd frame of `ops_block`, as bit 0x80 needs:
/// window at most `MAX_ZSTD_WINDOW`, content size given, no checksum and no
/// dictionary id.
pub fn pack_ops(ops_block: &[u8], level: i32) -> Vec<u8> {
    compress_with_prefix(ops_block, &[], level)
}

fn run_ops(old: &[u8], start: u64, ops: &[Op], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut d = data;
    for op in ops {
        let here = (start + out.len() as u64) as i64;
        let n = op.len() as usize;
        match *op {
            Op::Copy { delta, .. } => {
                let s = (here + delta) as usize;
                out.extend_from_slice(&old[s..s + n]);
            }
            Op::Literal { .. } => {
                out.extend_from_slice(&d[..n]);
                d = &d[n..];
            }
            Op::Delta { delta, .. } => {
                let s = (here + delta) as usize;
                out.extend(
                    old[s..s + n]
                        .iter()
                        .zip(&d[..n])
                        .map(|(a, b)| a.wrapping_add(*b)),
                );
                d = &d[n..];
            }
            Op::Zero { .. } => out.resize(out.len() + n, 0),
        }
    }
    out
}
