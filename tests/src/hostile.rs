//! Checks for hostile input, shared by the cargo-fuzz targets in `fuzz/` and
//! by `tests/tests/fuzz_regressions.rs`, which replays every crash file and
//! the seed corpus through the same functions under plain `cargo test`.
//!
//! Each `check_*` function takes arbitrary bytes and panics only when it finds
//! a bug: a panic inside the format crate or the engine, an engine request
//! outside the old file or beyond the header's `new_len`, a result that
//! differs from the reference applier's, or a patch one accepts and the
//! other refuses.
//!
//! [`drive`] is the in-memory driver they use. Unlike
//! [`crate::apply_in_memory`] it allocates nothing while the engine runs (the
//! caller sizes the target up front), so a counting allocator around it
//! measures the engine alone, and it asserts the engine's contract on every
//! event.

use std::collections::HashMap;
use std::fs;
use std::sync::OnceLock;

use anypatch_apply::{Applier, ApplyError, Config, ErrorClass, Event, Summary};
use anypatch_format::{
    parse_header_section, Codec, Extent, Header, Op, OpIter, Page, PageRef, Preamble, PreambleRepr,
    PrefixRef, SegmentEntry, SignatureBlock, Trailer, FEATURE_COMPACT_PAGES, HASH_LEN,
    MAX_HISTORY_LEN, MAX_OPS_LEN, MAX_PAGE_EXTENTS, MAX_PAGE_LEN, MAX_SEGMENT_LEN, PACKED_OPS,
    PREAMBLE_LEN, TRAILER_LEN, VERSION_MINOR,
};
use anypatch_producer::{make_patch, Options, SecretKey};

use crate::builder::compress_page;
use crate::{reference, root, vectors::bytes};

/// Largest new file the checks hold in memory and compare byte for byte.
/// A patch that declares more is still run through the engine, in the mode
/// that does not hash the new file (hashing terabytes of declared zeros is
/// legitimate work for a sparse image, but not for a fuzzer).
pub const KEEP_LIMIT: u64 = 16 << 20;

/// The key the fuzz targets sign with: a fixed seed, so that crash files
/// replay the same way.
pub fn fuzz_key() -> SecretKey {
    SecretKey::from_seed([0x5A; 32])
}

/// What a driven apply did.
#[derive(Debug)]
pub struct Run {
    pub summary: Summary,
    /// Whether the target buffer holds the new file (it fit the capacity).
    pub stored: bool,
    pub old_reads: u64,
    /// Bytes handed out in `Write` and `Zero` events.
    pub bytes_touched: u64,
}

/// Drives the engine over `old` and `patch`, feeding `feed` bytes at a time,
/// and checks the engine's contract on every event: the header comes first
/// and once, every `ReadOld` lies inside the old file, every `Write` and
/// `Zero` lies inside the header's `new_len` and after the previous one, and
/// `Done` reports the hash of what was written.
///
/// `target` is the output. Its capacity is all the driver uses: it allocates
/// nothing while the engine runs. When `cfg.skip_unchanged` (in place) it
/// starts as a copy of `old` and `ReadOld` reads from it, as from a disk
/// being rewritten. A new file larger than the capacity is not stored, only
/// checked for bounds.
pub fn drive(
    old: &[u8],
    patch: &[u8],
    cfg: Config,
    feed: usize,
    target: &mut Vec<u8>,
) -> Result<Run, ApplyError> {
    drive_trusting(old, patch, cfg, &[], feed, target)
}

/// [`drive`], with the engine told to require a signature by one of
/// `trusted_keys` (none: signatures are not required).
pub fn drive_trusting(
    old: &[u8],
    patch: &[u8],
    cfg: Config,
    trusted_keys: &[[u8; 32]],
    feed: usize,
    target: &mut Vec<u8>,
) -> Result<Run, ApplyError> {
    let in_place = cfg.skip_unchanged;
    let cap = target.capacity();
    target.clear();
    let mut stored = !in_place || old.len() <= cap;
    if in_place && stored {
        target.extend_from_slice(old);
    }
    let mut a = Applier::new(cfg);
    a.require_signature(trusted_keys);
    let mut new_len: Option<u64> = None;
    let (mut at, mut reads, mut touched, mut out_end) = (0usize, 0u64, 0u64, 0u64);
    loop {
        match a.poll()? {
            Event::NeedInput => {
                if at == patch.len() {
                    a.end_of_input();
                } else {
                    let end = (at + feed.max(1)).min(patch.len());
                    at += a.feed(&patch[at..end]);
                }
            }
            Event::Header(h) => {
                assert!(new_len.is_none(), "the engine announced the header twice");
                new_len = Some(h.new_len);
                match usize::try_from(h.new_len) {
                    Ok(n) if stored && n <= cap => {
                        if n > target.len() {
                            target.resize(n, 0);
                        }
                    }
                    _ => stored = false,
                }
            }
            Event::ReadOld { offset, buf } => {
                assert!(new_len.is_some(), "ReadOld before the header");
                let end = offset.checked_add(buf.len() as u64);
                assert!(
                    end.is_some_and(|e| e <= old.len() as u64),
                    "the engine asked for {} old bytes at {offset}, outside the {}-byte old file",
                    buf.len(),
                    old.len()
                );
                let src: &[u8] = if in_place && stored { &target[..] } else { old };
                buf.copy_from_slice(&src[offset as usize..offset as usize + buf.len()]);
                reads += 1;
            }
            Event::Write { offset, data } => {
                let end = check_output(new_len, offset, data.len() as u64, &mut out_end);
                if stored {
                    target[offset as usize..end as usize].copy_from_slice(data);
                }
                touched += data.len() as u64;
            }
            Event::Zero { offset, len } => {
                let end = check_output(new_len, offset, len, &mut out_end);
                if stored {
                    target[offset as usize..end as usize].fill(0);
                }
                touched += len;
            }
            Event::Done(summary) => {
                assert_eq!(
                    Some(summary.new_len),
                    new_len,
                    "Done disagrees with the header"
                );
                assert_eq!(at, patch.len(), "Done before the whole patch was fed");
                if stored {
                    target.truncate(summary.new_len as usize);
                    if let Some(h) = summary.new_hash {
                        assert!(
                            blake3::hash(target).as_bytes() == &h,
                            "Done reports a new hash that the written bytes do not have"
                        );
                    }
                }
                return Ok(Run {
                    summary,
                    stored,
                    old_reads: reads,
                    bytes_touched: touched,
                });
            }
        }
    }
}

/// Checks that an output range lies inside `new_len` and after the previous
/// one; returns its end.
fn check_output(new_len: Option<u64>, offset: u64, len: u64, last_end: &mut u64) -> u64 {
    let new_len = new_len.expect("the engine wrote before announcing the header");
    let end = offset.checked_add(len);
    assert!(
        end.is_some_and(|e| e <= new_len),
        "the engine wrote {len} bytes at {offset}, beyond the header's new_len {new_len}"
    );
    assert!(
        offset >= *last_end,
        "the engine wrote at {offset}, before the end of its previous write {last_end}"
    );
    *last_end = offset + len;
    offset + len
}

/// The `parse` target: every parser on arbitrary bytes. No parser panics, and
/// whatever parses re-encodes to something that parses to the same value.
pub fn check_parse(data: &[u8]) {
    if let Ok(view) = Preamble::new_checked(data) {
        let _ = (
            view.magic(),
            view.minor(),
            view.header_len(),
            view.signature_len(),
        );
        if let Ok(repr) = PreambleRepr::parse(&view) {
            let mut out = [0u8; PREAMBLE_LEN];
            repr.emit(&mut out);
            assert_eq!(
                out[..],
                data[..PREAMBLE_LEN],
                "preamble does not round-trip"
            );
        }
    }
    // The one header-section parser, on the section the preamble delimits.
    if let Some(end) = Preamble::new_checked(data)
        .and_then(|v| PreambleRepr::parse(&v))
        .ok()
        .map(|p| PREAMBLE_LEN + p.header_len as usize + HASH_LEN)
    {
        if let Some(Ok((_, h))) = data.get(..end).map(parse_header_section) {
            check_header_round_trip(&h);
        }
    }
    for minor in [VERSION_MINOR, VERSION_MINOR + 1] {
        if let Ok(h) = Header::parse(data, minor) {
            check_header_round_trip(&h);
        }
    }
    if let Ok(page) = Page::parse(data) {
        check_page_round_trip(&page, data.len());
    }
    if let Ok(page) = Page::parse_compact(data) {
        check_compact_round_trip(&page, data);
    }
    // The bytes as a compact page's frame.
    if let Ok(content) = reference::unpack(data, MAX_PAGE_LEN, "compact page") {
        if let Ok(page) = Page::parse_compact(&content) {
            check_compact_round_trip(&page, &content);
        }
    }
    let mut ops = OpIter::new(data);
    let mut left = data.len();
    while let Some(op) = ops.next() {
        let Ok(op) = op else { break };
        assert!(ops.remaining() < left, "OpIter made no progress");
        left = ops.remaining();
        let mut enc = Vec::new();
        op.emit(&mut enc);
        let back: Vec<_> = OpIter::new(&enc).collect();
        assert_eq!(back, [Ok(op)], "op does not round-trip");
    }
    assert!(
        ops.next().is_none(),
        "OpIter yields after an error or the end"
    );
    if let Ok((r, frame)) = PrefixRef::parse(data) {
        let mut enc = Vec::new();
        r.emit(&mut enc);
        assert!(enc.len() + frame.len() <= data.len());
        assert_eq!(
            PrefixRef::parse(&enc),
            Ok((r, &[][..])),
            "prefix ref does not round-trip"
        );
    }
    if let Some(t) = data.len().checked_sub(TRAILER_LEN).map(|s| &data[s..]) {
        if let Ok(trailer) = Trailer::parse(t) {
            let mut out = [0u8; TRAILER_LEN];
            trailer.emit(&mut out);
            assert_eq!(out[..], *t, "trailer does not round-trip");
        }
    }
    if let Ok(block) = SignatureBlock::parse(data) {
        assert_eq!(block.encoded_len(), data.len());
        assert!(block.emit() == data, "signature block does not round-trip");
    }
    // A whole patch: its header and pages where the layout puts them.
    let _ = Layout::walk(data);
}

fn check_header_round_trip(h: &Header) {
    let section = h.emit(0, 0);
    let body = &section[PREAMBLE_LEN..section.len() - HASH_LEN];
    assert_eq!(body.len(), h.encoded_len());
    assert_eq!(
        Header::parse(body, VERSION_MINOR).as_ref(),
        Ok(h),
        "header does not round-trip"
    );
    let pre =
        PreambleRepr::parse(&Preamble::new_checked(&section[..]).expect("emit writes 24+ bytes"))
            .expect("an emitted preamble parses");
    assert_eq!(pre.header_len as usize, body.len());
}

fn check_page_round_trip(page: &Page, parsed_from: usize) {
    assert!(page.extents.len() <= MAX_PAGE_EXTENTS);
    let enc = page.emit();
    assert_eq!(enc.len(), page.encoded_len());
    assert!(
        enc.len() <= parsed_from,
        "a page re-encodes longer than its input"
    );
    assert_eq!(
        Page::parse(&enc).as_ref(),
        Ok(page),
        "page does not round-trip"
    );
}

/// `page`, parsed from the decoded compact page `content`, re-encodes to
/// at most as many bytes, with the same inline ops, and parses back to itself.
fn check_compact_round_trip(page: &Page, content: &[u8]) {
    assert!(page.extents.len() <= MAX_PAGE_EXTENTS);
    // `inline_ops` are offsets into `content`, the pool they were parsed from.
    let enc = page.emit_compact(content);
    assert!(
        enc.len() <= content.len(),
        "a compact page re-encodes longer than its input"
    );
    let back = Page::parse_compact(&enc).expect("a re-encoded compact page parses");
    assert_eq!(back.next, page.next, "compact page does not round-trip");
    assert_eq!(back.extents.len(), page.extents.len());
    for (b, e) in back.extents.iter().zip(&page.extents) {
        match (b, e) {
            (Extent::Data(b), Extent::Data(e)) => {
                let ops = |s: &SegmentEntry, pool: &[u8]| {
                    s.inline_ops
                        .map(|at| pool[at as usize..at as usize + s.ops_len as usize].to_vec())
                };
                assert_eq!(ops(b, &enc), ops(e, content), "inline ops differ");
                let offsets = |s: &SegmentEntry| SegmentEntry {
                    inline_ops: s.inline_ops.map(|_| 0),
                    ..*s
                };
                assert_eq!(offsets(b), offsets(e), "compact entry does not round-trip");
            }
            _ => assert_eq!(b, e, "compact extent does not round-trip"),
        }
    }
}

/// A patch's layout read by declared lengths, without checking any hash:
/// what a fuzzer's edits leave of the structure.
#[derive(Debug, Clone)]
pub struct Layout {
    pub preamble: PreambleRepr,
    pub header: Header,
    pub signature: Vec<u8>,
    /// Each page with the payloads of its data segments, in order. A payload
    /// is always the ops block then the data block, as after a plain page;
    /// a compact page's inline ops are moved here by [`Layout::walk`] and
    /// back into the page by [`Layout::emit`].
    pub pages: Vec<(Page, Vec<Vec<u8>>)>,
    /// Whether [`Layout::emit`] writes compact pages. [`Layout::walk`] sets
    /// it from the preamble's `FEATURE_COMPACT_PAGES`; it is kept apart so
    /// that a test can make the two disagree.
    pub compact: bool,
    /// Each compact page's decoded content and frame as walked: `emit`
    /// reuses the frame of an unchanged content, so that re-sealing a valid
    /// patch changes no byte.
    frames: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Layout {
    /// Reads the layout; `None` where any part does not parse.
    pub fn walk(patch: &[u8]) -> Option<Self> {
        let preamble = PreambleRepr::parse(&Preamble::new_checked(patch).ok()?).ok()?;
        let body_end = PREAMBLE_LEN + preamble.header_len as usize;
        let header = Header::parse(patch.get(PREAMBLE_LEN..body_end)?, preamble.minor).ok()?;
        check_header_round_trip(&header);
        let mut at = body_end + HASH_LEN;
        let signature = patch
            .get(at..at + preamble.signature_len as usize)?
            .to_vec();
        at += signature.len();
        let mut take = |n: u64| {
            let s = patch.get(at..at.checked_add(usize::try_from(n).ok()?)?)?;
            at += s.len();
            Some(s)
        };
        let compact = preamble.required_features & FEATURE_COMPACT_PAGES != 0;
        let (mut pages, mut frames) = (Vec::new(), Vec::new());
        let mut next = Some(header.first_page);
        while let Some(r) = next {
            let bytes = take(r.len.into())?;
            let (page, content) = if compact {
                let content = reference::unpack(bytes, MAX_PAGE_LEN, "compact page").ok()?;
                let page = Page::parse_compact(&content).ok()?;
                check_compact_round_trip(&page, &content);
                frames.push((content.clone(), bytes.to_vec()));
                (page, content)
            } else {
                let page = Page::parse(bytes).ok()?;
                check_page_round_trip(&page, bytes.len());
                (page, Vec::new())
            };
            let mut payloads = Vec::new();
            for e in &page.extents {
                if let Extent::Data(s) = e {
                    let inline = s.inline_ops.map_or(&[][..], |at| {
                        &content[at as usize..at as usize + s.ops_len as usize]
                    });
                    payloads.push([inline, take(s.payload_len())?].concat());
                }
            }
            next = page.next;
            pages.push((page, payloads));
        }
        Some(Self {
            preamble,
            header,
            signature,
            pages,
            compact,
            frames,
        })
    }

    /// True when the header or any extent declares more than [`KEEP_LIMIT`]
    /// new bytes.
    pub fn is_big(&self) -> bool {
        let mut sum = 0u64;
        self.header.new_len > KEEP_LIMIT
            || self.pages.iter().flat_map(|(p, _)| &p.extents).any(|e| {
                sum = sum.saturating_add(e.len());
                sum > KEEP_LIMIT
            })
    }

    /// Re-seals the patch against `old`: recomputes everything a byte edit
    /// breaks but a hostile producer would get right (old identity, segment
    /// and new hashes where the ops can be run, the page chain, counts,
    /// `segment_max`, `patch_len`, the header hash and the trailer), so that
    /// the engine's deeper checks are what meets the edit. Codec 0x03
    /// segments are decoded against the data history of those before them
    /// that decode.
    pub fn seal(mut self, old: &[u8]) -> Vec<u8> {
        let mut new = Some(Vec::new());
        let mut history = Vec::new();
        let (mut new_len, mut extents, mut segments, mut segment_max) = (0u64, 0u64, 0u64, 0u32);
        for (page, payloads) in &mut self.pages {
            let mut payloads = payloads.iter();
            for e in &mut page.extents {
                let start = new_len;
                let out = match e {
                    Extent::Copy { len, delta } => {
                        old_range(old, i128::from(start) + i128::from(*delta), *len)
                            .map(<[u8]>::to_vec)
                    }
                    Extent::Zero { len } => (*len <= KEEP_LIMIT).then(|| vec![0; *len as usize]),
                    Extent::Data(s) => {
                        segments += 1;
                        segment_max = segment_max.max(s.new_len);
                        let payload = payloads.next().expect("walk took one payload per segment");
                        let out = run_segment(old, start, s, payload, &mut history);
                        if let Some(out) = &out {
                            s.hash = *blake3::hash(out).as_bytes();
                        }
                        out
                    }
                };
                extents += 1;
                new_len = new_len.saturating_add(e.len());
                match (&mut new, out) {
                    (Some(n), Some(out)) if n.len() as u64 + out.len() as u64 <= KEEP_LIMIT => {
                        n.extend_from_slice(&out)
                    }
                    _ => new = None,
                }
            }
        }
        let h = &mut self.header;
        h.old_len = old.len() as u64;
        h.old_hash = *blake3::hash(old).as_bytes();
        if let Some(n) = &new {
            h.new_len = n.len() as u64;
            h.new_hash = *blake3::hash(n).as_bytes();
        }
        h.extent_count = extents;
        h.segment_count = segments;
        h.segment_max = segment_max;
        self.emit()
    }

    /// Encodes the layout as it is, recomputing only what binds the parts
    /// together: the page chain, `first_page`, `patch_len`, the header hash
    /// and the trailer. Every other field, however hostile, stays.
    pub fn emit(mut self) -> Vec<u8> {
        let mut body = Vec::new();
        let mut next: Option<PageRef> = None;
        for (page, payloads) in self.pages.iter_mut().rev() {
            page.next = next;
            let (enc, payloads) = if self.compact {
                compact_page(page, payloads, &self.frames)
            } else {
                (page.emit(), payloads.concat())
            };
            next = Some(PageRef {
                len: enc.len() as u32,
                hash: *blake3::hash(&enc).as_bytes(),
            });
            let mut piece = enc;
            piece.extend(payloads);
            piece.extend(body);
            body = piece;
        }
        if let Some(first) = next {
            self.header.first_page = first;
        }
        seal_raw(
            &mut self.header,
            self.preamble.required_features,
            &self.signature,
            &body,
        )
    }
}

/// A compact page and the payloads after it, from a page and its segments'
/// payloads (each the ops block then the data block). The ops of a segment
/// whose codec byte lacks `PACKED_OPS` go inline, padded with zeros when its
/// payload is shorter than `ops_len`. The frame is the walked one when the
/// content is unchanged, else [`compress_page`]'s.
///
/// # Panics
/// If an inline `ops_len` is above `MAX_OPS_LEN`: test that on a plain page.
fn compact_page(
    page: &Page,
    payloads: &[Vec<u8>],
    frames: &[(Vec<u8>, Vec<u8>)],
) -> (Vec<u8>, Vec<u8>) {
    let mut page = page.clone();
    let (mut pool, mut body) = (Vec::new(), Vec::new());
    let mut payloads = payloads.iter();
    for e in &mut page.extents {
        let Extent::Data(s) = e else { continue };
        let Some(payload) = payloads.next() else {
            break;
        };
        let mut payload = &payload[..];
        s.inline_ops = None;
        if s.codec & PACKED_OPS == 0 {
            assert!(
                s.ops_len <= MAX_OPS_LEN,
                "a compact page cannot carry {} bytes of inline ops",
                s.ops_len
            );
            let n = (s.ops_len as usize).min(payload.len());
            s.inline_ops = Some(pool.len() as u32);
            pool.extend_from_slice(&payload[..n]);
            pool.resize(pool.len() + s.ops_len as usize - n, 0);
            payload = &payload[n..];
        }
        body.extend_from_slice(payload);
    }
    body.extend(payloads.flatten()); // payloads beyond the page's segments
    let content = page.emit_compact(&pool);
    let frame = frames
        .iter()
        .find(|(c, _)| *c == content)
        .map_or_else(|| compress_page(&content), |(_, f)| f.clone());
    (frame, body)
}

/// Assembles a patch from a header and the raw bytes after the signature
/// block (pages and payloads), setting `patch_len` and computing the header
/// hash and trailer. The caller sets `first_page`.
pub fn seal_raw(
    header: &mut Header,
    required_features: u32,
    signature: &[u8],
    body: &[u8],
) -> Vec<u8> {
    let mut out =
        header.settle_patch_len(required_features, signature.len() as u32, body.len() as u64);
    out.extend_from_slice(signature);
    out.extend_from_slice(body);
    let mut t = [0u8; TRAILER_LEN];
    Trailer {
        patch_hash: *blake3::hash(&out).as_bytes(),
    }
    .emit(&mut t);
    out.extend_from_slice(&t);
    out
}

fn old_range(old: &[u8], start: i128, len: u64) -> Option<&[u8]> {
    let end = start.checked_add(i128::from(len))?;
    (start >= 0 && end <= old.len() as i128).then(|| &old[start as usize..end as usize])
}

/// A segment's output, computed leniently (`None` where the ops or data do
/// not fit), for [`Layout::seal`]. A codec 0x03 segment's data is decoded
/// with the end of `history` as its prefix and then appended to it.
fn run_segment(
    old: &[u8],
    start: u64,
    s: &SegmentEntry,
    payload: &[u8],
    history: &mut Vec<u8>,
) -> Option<Vec<u8>> {
    let (ops, coded) = payload.split_at_checked(s.ops_len as usize)?;
    let (codec, packed) = Codec::split(s.codec).ok()?;
    let unpacked;
    let ops = if packed {
        unpacked = zstd::bulk::decompress(ops, MAX_OPS_LEN as usize).ok()?;
        &unpacked[..]
    } else {
        ops
    };
    let data = match codec {
        Codec::Stored => coded.to_vec(),
        Codec::Zstd => zstd::bulk::decompress(coded, MAX_SEGMENT_LEN as usize).ok()?,
        Codec::ZstdPrefix => {
            let (p, frame) = PrefixRef::parse(coded).ok()?;
            let prefix = old_range(old, i128::from(start) + i128::from(p.delta), p.len.into())?;
            let mut d = zstd::zstd_safe::DCtx::create();
            d.ref_prefix(prefix).ok()?;
            let mut out = Vec::with_capacity(MAX_SEGMENT_LEN as usize);
            d.decompress(&mut out, frame).ok()?;
            out
        }
        Codec::ZstdHistory => {
            let n = OpIter::new(ops)
                .map(|op| op.map(|op| op.data_len() as usize))
                .sum::<Result<usize, _>>()
                .ok()?;
            let keep = history
                .len()
                .min((MAX_HISTORY_LEN as usize).saturating_sub(n));
            let mut out = Vec::with_capacity(MAX_SEGMENT_LEN as usize);
            {
                let mut d = zstd::zstd_safe::DCtx::create();
                if keep > 0 {
                    d.ref_prefix(&history[history.len() - keep..]).ok()?;
                }
                d.decompress(&mut out, coded).ok()?;
            }
            history.extend_from_slice(&out);
            let over = history.len().saturating_sub(MAX_HISTORY_LEN as usize);
            history.drain(..over);
            out
        }
    };
    let mut out = Vec::new();
    let mut d = data.as_slice();
    for op in OpIter::new(ops) {
        let op = op.ok()?;
        let n = op.len() as usize;
        if out.len() + n > s.new_len as usize {
            return None;
        }
        let here = i128::from(start) + out.len() as i128;
        match op {
            Op::Copy { delta, .. } => {
                out.extend_from_slice(old_range(old, here + i128::from(delta), n as u64)?)
            }
            Op::Literal { .. } => {
                out.extend_from_slice(d.get(..n)?);
                d = &d[n..];
            }
            Op::Delta { delta, .. } => {
                let base = old_range(old, here + i128::from(delta), n as u64)?;
                out.extend(
                    base.iter()
                        .zip(d.get(..n)?)
                        .map(|(a, b)| a.wrapping_add(*b)),
                );
                d = &d[n..];
            }
            Op::Zero { .. } => out.resize(out.len() + n, 0),
        }
    }
    (out.len() == s.new_len as usize).then_some(out)
}

/// The old files of the spec's test vectors, by BLAKE3, so that a patch
/// mutated from a vector is applied to its own base.
fn vector_olds() -> &'static HashMap<[u8; 32], Vec<u8>> {
    static OLDS: OnceLock<HashMap<[u8; 32], Vec<u8>>> = OnceLock::new();
    OLDS.get_or_init(|| {
        let mut m = HashMap::new();
        for dir in fs::read_dir(root().join("spec/vectors"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(old) = fs::read(dir.path().join("old.bin")) {
                if old.len() <= 1 << 20 {
                    m.insert(*blake3::hash(&old).as_bytes(), old);
                }
            }
        }
        m
    })
}

/// The old file for an apply input: the vector base its header names, else
/// deterministic bytes of the declared length (up to 64 KiB), else a few
/// bytes derived from the input.
fn old_for(patch: &[u8], layout: Option<&Layout>) -> Vec<u8> {
    if let Some(h) = layout.map(|l| &l.header) {
        if let Some(old) = vector_olds().get(&h.old_hash) {
            return old.clone();
        }
        if h.old_len <= 0x1_0000 {
            return bytes(&crate::hex(&h.old_hash), h.old_len as usize);
        }
    }
    bytes("apply-old", patch.len() % 4096)
}

/// The `apply` target: arbitrary bytes as a patch, as they are and re-sealed
/// (see [`Layout::seal`]), against an old file derived from them. The engine
/// never panics, keeps its contract (see [`drive`]), and agrees with the
/// reference applier on what it accepts and what that produces.
pub fn check_apply(data: &[u8]) {
    let layout = Layout::walk(data);
    let old = old_for(data, layout.as_ref());
    let feed = 1 + data.len().wrapping_mul(7919) % 5000;
    apply_all_ways(&old, data, layout.as_ref(), feed);
    if let Some(l) = layout {
        let sealed = l.seal(&old);
        if sealed != data {
            let layout = Layout::walk(&sealed);
            apply_all_ways(&old, &sealed, layout.as_ref(), feed);
        }
    }
}

/// The two passes of `applypatch --in-place`: verify everything writing
/// nothing, then write only what changes, without hashing the base again.
pub fn in_place_passes(old_len: u64) -> (Config, Config) {
    let verify = Config {
        in_place: true,
        ..Config::new(old_len)
    };
    let write = Config {
        verify_base: false,
        skip_unchanged: true,
        ..verify
    };
    (verify, write)
}

/// The new length a patch's header declares, when the header parses.
fn declared_new_len(patch: &[u8]) -> Option<u64> {
    let pre = PreambleRepr::parse(&Preamble::new_checked(patch).ok()?).ok()?;
    let body = patch.get(PREAMBLE_LEN..PREAMBLE_LEN + pre.header_len as usize)?;
    Header::parse(body, pre.minor).ok().map(|h| h.new_len)
}

fn apply_all_ways(old: &[u8], patch: &[u8], layout: Option<&Layout>, feed: usize) {
    let old_len = old.len() as u64;
    let (verify, write) = in_place_passes(old_len);
    let declared = declared_new_len(patch).unwrap_or(0);
    let big = match layout {
        Some(l) => l.is_big(),
        None => declared > KEEP_LIMIT,
    };
    if big {
        // Only the pass that hashes neither the base nor the new file.
        let _ = drive(old, patch, write, feed, &mut Vec::new());
        return;
    }
    let mut fresh_out = Vec::with_capacity(declared as usize);
    let fresh = drive(old, patch, Config::new(old_len), feed, &mut fresh_out);
    let want = reference::apply(old, patch);
    match (&fresh, &want) {
        (Ok(run), Ok(new)) => {
            assert!(run.stored);
            assert!(
                &fresh_out == new,
                "engine and reference produce different bytes"
            );
        }
        (Ok(_), Err(e)) => panic!("the engine accepts a patch the reference refuses ({e})"),
        (Err(e), Ok(_)) => panic!("the engine refuses a patch the reference accepts ({e})"),
        (Err(_), Err(_)) => {}
    }
    // Requiring a signature only ever refuses more.
    let trusted = [fuzz_key().public_key()];
    let signed = drive_trusting(
        old,
        patch,
        Config::new(old_len),
        &trusted,
        feed,
        &mut Vec::new(),
    );
    if let (Ok(_), Err(e)) = (&signed, &fresh) {
        panic!("with a trusted key the engine accepts a patch it refuses without one ({e})");
    }
    let checked = drive(old, patch, verify, feed / 2 + 1, &mut Vec::new());
    match (&checked, &fresh) {
        (Ok(_), Ok(_)) | (Err(_), Err(_)) => {}
        (Ok(_), Err(e)) => panic!("in place accepts a patch a fresh apply refuses ({e})"),
        (Err(e), Ok(_)) => assert_eq!(
            e.class(),
            ErrorClass::NotInPlace,
            "in place refuses a good patch with {e}"
        ),
    }
    if checked.is_ok() {
        let mut disk = Vec::with_capacity(old.len().max(declared as usize));
        let run = drive(old, patch, write, feed / 3 + 1, &mut disk).unwrap_or_else(|e| {
            panic!("the write pass refuses what the verify pass accepted: {e}")
        });
        assert!(
            run.stored && disk == fresh_out,
            "the in-place result differs"
        );
    }
}

/// Reads fuzz input as numbers; zeros once exhausted.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }
    /// A position in `0..=len` as a fraction of `len`.
    fn pos(&mut self, len: usize) -> usize {
        (u64::from(self.u16()) * len as u64 / 0x1_0000) as usize
    }
}

/// Old and new files made from fuzz input by structured edits (overwrites,
/// inserts, deletes, zero runs, moved and duplicated runs, bytes taken from
/// the input), and producer options.
pub fn pair_from(data: &[u8]) -> (Vec<u8>, Vec<u8>, Options) {
    let mut r = Input(data);
    let old_len = usize::from(r.u16()) * (1 + usize::from(r.u8() % 4));
    let seed = r.u32();
    let old = bytes(&format!("diff-{seed}"), old_len);
    let mut new = old.clone();
    for i in 0..r.u8() % 12 {
        let n = usize::from(r.u16() % 20_000);
        let p = r.pos(new.len());
        let end = (p + n).min(new.len());
        match r.u8() % 7 {
            0 => new[p..end].copy_from_slice(&bytes(&format!("diff-{seed}-{i}"), end - p)),
            1 => drop(new.splice(p..p, bytes(&format!("diff-{seed}-{i}"), n))),
            2 => drop(new.drain(p..end)),
            3 => new[p..end].fill(0),
            4 => {
                let s = r.pos(old.len());
                let run = &old[s..(s + n).min(old.len())];
                let end = (p + run.len()).min(new.len());
                new[p..end].copy_from_slice(&run[..end - p]);
            }
            5 => {
                let s = r.pos(old.len());
                drop(new.splice(p..p, old[s..(s + n).min(old.len())].iter().copied()));
            }
            _ => {
                let take = n.min(r.0.len());
                drop(new.splice(p..p, r.0[..take].iter().copied()));
                r.0 = &r.0[take..];
            }
        }
    }
    let opts = Options {
        threads: 1 + usize::from(r.u8() % 2),
        level: 1 + i32::from(r.u8() % 3),
        segment_len: [4096, 10_000, 65_536, MAX_SEGMENT_LEN][usize::from(r.u8() % 4)],
        block_size: [4096, 512, 1024][usize::from(r.u8() % 3)],
        signing_key: (r.u8() % 2 == 1).then(fuzz_key),
        // Old-byte history (format 1.1) sometimes on, as at the default level.
        prefix_len: [0, 0, 1 << 20][usize::from(r.u8() % 3)],
        // Data history (format 1.3) sometimes on, as at level best.
        data_history: r.u8() % 2 == 1,
        ..Options::default()
    };
    // The self-check with it, as at level best: it must never refuse a
    // patch that the engine and the reference accept below.
    let opts = Options {
        verify: opts.data_history,
        ..opts
    };
    (old, new, opts)
}

/// Runs the producer on two in-memory files (through a temporary directory,
/// in `/dev/shm` where there is one).
pub fn produce(old: &[u8], new: &[u8], opts: &Options) -> Vec<u8> {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("tempdir");
    let (o, n) = (dir.path().join("old"), dir.path().join("new"));
    fs::write(&o, old).expect("write old");
    fs::write(&n, new).expect("write new");
    let opts = Options {
        spool_dir: Some(dir.path().to_path_buf()),
        ..opts.clone()
    };
    let mut patch = Vec::new();
    make_patch(&o, &n, &mut patch, &opts, &|_| {}).expect("the producer succeeds on any pair");
    patch
}

/// The `differential` target: a pair made from the input (see [`pair_from`]),
/// the producer, then the engine and the reference applier: both give new.
/// In place, the engine gives new or refuses with `NotInPlace`. With the
/// data history, the producer's self-check (`Options::verify`) runs too, and
/// must pass what the engine then accepts.
pub fn check_differential(data: &[u8]) {
    let (old, new, opts) = pair_from(data);
    let patch = produce(&old, &new, &opts);
    let feed = 1 + data.len().wrapping_mul(7919) % 70_000;
    let mut out = Vec::with_capacity(new.len());
    let run = drive(&old, &patch, Config::new(old.len() as u64), feed, &mut out)
        .unwrap_or_else(|e| panic!("the engine refuses a producer patch: {e}"));
    assert!(run.stored && out == new, "the engine's result is not new");
    // Signed by the fuzz key: accepted when it is trusted, refused when
    // another key is; unsigned: refused whenever a key is required.
    let fuzz_pub = fuzz_key().public_key();
    let signed = drive_trusting(
        &old,
        &patch,
        Config::new(old.len() as u64),
        &[fuzz_pub],
        feed,
        &mut Vec::new(),
    );
    let other = drive_trusting(
        &old,
        &patch,
        Config::new(old.len() as u64),
        &[[7; 32]],
        feed,
        &mut Vec::new(),
    );
    if opts.signing_key.is_some() {
        signed.unwrap_or_else(|e| panic!("a patch signed by a trusted key is refused: {e}"));
        assert!(
            matches!(other, Err(ApplyError::UntrustedSigner { .. })),
            "a patch signed by an untrusted key: {other:?}"
        );
    } else {
        for r in [signed, other] {
            assert!(
                matches!(r, Err(ApplyError::Unsigned)),
                "an unsigned patch with a trusted key: {r:?}"
            );
        }
    }
    let r = reference::apply(&old, &patch)
        .unwrap_or_else(|e| panic!("the reference refuses a producer patch: {e}"));
    assert!(r == new, "the reference's result is not new");
    let (verify, write) = in_place_passes(old.len() as u64);
    match drive(&old, &patch, verify, feed, &mut Vec::new()) {
        Ok(_) => {
            let mut disk = Vec::with_capacity(old.len().max(new.len()));
            drive(&old, &patch, write, feed, &mut disk)
                .unwrap_or_else(|e| panic!("the write pass refuses a verified patch: {e}"));
            assert!(disk == new, "the in-place result is not new");
        }
        Err(e) => assert_eq!(e.class(), ErrorClass::NotInPlace, "in place: {e}"),
    }
}

/// The engine at several feed sizes, fresh and through both in-place
/// passes when the patch allows them, and the reference give `new`.
pub fn applies_everywhere(what: &str, old: &[u8], patch: &[u8], new: &[u8]) {
    let r =
        crate::reference::apply(old, patch).unwrap_or_else(|e| panic!("{what}: reference: {e}"));
    assert!(r == new, "{what}: the reference's result differs");
    for feed in [1, 333, patch.len()] {
        if feed == 1 && patch.len() > 200_000 {
            continue;
        }
        let got = crate::apply_in_memory(old, patch, Config::new(old.len() as u64), feed)
            .unwrap_or_else(|e| panic!("{what}: engine, fed {feed}: {e}"));
        assert!(
            got.target == new,
            "{what}: engine result differs, fed {feed}"
        );
    }
    let (verify, write) = in_place_passes(old.len() as u64);
    if drive(old, patch, verify, 4096, &mut Vec::new()).is_ok() {
        let mut disk = Vec::with_capacity(old.len().max(new.len()));
        drive(old, patch, write, 4096, &mut disk)
            .unwrap_or_else(|e| panic!("{what}: in-place write pass: {e}"));
        assert!(disk == new, "{what}: in-place result differs");
    }
}

/// The engine (fresh and in place) and the reference both refuse `patch`
/// without panicking, with a one-line message; returns the engine's error.
pub fn refused_everywhere(what: &str, old: &[u8], patch: &[u8]) -> ApplyError {
    if let Ok(new) = crate::reference::apply(old, patch) {
        panic!("{what}: the reference accepts it ({} bytes)", new.len());
    }
    let e = drive(
        old,
        patch,
        Config::new(old.len() as u64),
        777,
        &mut Vec::new(),
    )
    .expect_err(&format!("{what}: the engine accepts it"));
    let (verify, _) = in_place_passes(old.len() as u64);
    let checked = drive(old, patch, verify, 4096, &mut Vec::new())
        .expect_err(&format!("{what}: in place accepts it"));
    assert_eq!(checked, e, "{what}: in place and fresh disagree");
    let msg = e.to_string();
    assert!(
        !msg.is_empty() && !msg.contains('\n'),
        "{what}: message {msg:?}"
    );
    e
}
