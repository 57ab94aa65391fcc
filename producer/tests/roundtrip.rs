//! Decodes the producer's own output with the format crate and a tiny
//! reference applier, and checks determinism across thread counts.

use std::path::Path;

use anypatch_format::{
    header_hash, Codec, Extent, Header, Op, OpIter, Page, Preamble, PreambleRepr, PrefixRef,
    Trailer, FEATURE_COMPACT_PAGES, FEATURE_DATA_HISTORY, FEATURE_OLD_PREFIX, FEATURE_PACKED_OPS,
    FLAG_IN_PLACE_SAFE, HASH_LEN, MAX_HISTORY_LEN, PACKED_OPS, PREAMBLE_LEN, SHORT_HASH_LEN,
    TRAILER_LEN,
};
use anypatch_inspect::inspect;
use anypatch_producer::{make_patch, Level, Options, Summary};

const BS: usize = 4096;

/// xorshift64*: deterministic filler for test images.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = (self.next() >> 32) as u8;
        }
    }
}

/// A page and, for a compact one, its decoded content (which holds the
/// inline ops its entries point into).
fn page(bytes: &[u8], required_features: u32) -> (Page, Vec<u8>) {
    if required_features & FEATURE_COMPACT_PAGES != 0 {
        let content = zstd::bulk::decompress(bytes, 1 << 18).expect("compact page");
        (Page::parse_compact(&content).expect("page"), content)
    } else {
        (Page::parse(bytes).expect("page"), Vec::new())
    }
}

/// An old image and a new one with every kind of change.
fn pair() -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut old = vec![0u8; 600 * BS + 123];
    rng.fill(&mut old[..500 * BS]);
    let mut new = old.clone();
    // Small edits every few blocks: deltas.
    for k in (0..100).step_by(7) {
        new[k * BS + 100] ^= 0x5A;
    }
    // A moved run: old blocks 300..310 appear at 200..210, and one moved back.
    new.copy_within(300 * BS..310 * BS, 200 * BS);
    new.copy_within(50 * BS..51 * BS, 400 * BS);
    // Fresh random data (literals) and a zeroed run.
    rng.fill(&mut new[350 * BS..352 * BS]);
    new[420 * BS..440 * BS].fill(0);
    // Data where old had zeros, and an appended tail.
    rng.fill(&mut new[550 * BS..551 * BS]);
    let mut tail = vec![0u8; 3 * BS + 77];
    rng.fill(&mut tail);
    new.extend_from_slice(&tail);
    (old, new)
}

fn make(dir: &Path, old: &[u8], new: &[u8], opts: &Options) -> (Vec<u8>, Summary) {
    let (po, pn) = (dir.join("old"), dir.join("new"));
    std::fs::write(&po, old).expect("write old");
    std::fs::write(&pn, new).expect("write new");
    let mut out = Vec::new();
    let summary = make_patch(&po, &pn, &mut out, opts, &|_| {}).expect("make_patch");
    (out, summary)
}

/// Reference applier: short and slow. Checks every hash and limit the
/// producer promises, and the in-place flag's claim.
fn apply(old: &[u8], patch: &[u8]) -> Vec<u8> {
    let pre = PreambleRepr::parse(&Preamble::new_checked(patch).expect("preamble")).expect("pre");
    let body_end = PREAMBLE_LEN + pre.header_len as usize;
    let body = &patch[PREAMBLE_LEN..body_end];
    assert_eq!(
        header_hash(&patch[..PREAMBLE_LEN], body)[..],
        patch[body_end..body_end + HASH_LEN]
    );
    assert_eq!(pre.signature_len, 0);
    let header = Header::parse(body, pre.minor).expect("header");
    assert_eq!(header.old_hash, *blake3::hash(old).as_bytes());
    assert_eq!(header.patch_len, patch.len() as u64);
    let trailer = Trailer::parse(&patch[patch.len() - TRAILER_LEN..]).expect("trailer");
    assert_eq!(
        trailer.patch_hash,
        *blake3::hash(&patch[..patch.len() - TRAILER_LEN]).as_bytes()
    );

    let mut pos = body_end + HASH_LEN;
    let mut out = Vec::new();
    let mut next = Some(header.first_page);
    let (mut extents, mut segments, mut segment_max) = (0, 0, 0);
    let mut in_place_safe = true;
    // Decoded data of the codec 0x03 segments so far (format 1.3).
    let mut history: Vec<u8> = Vec::new();
    while let Some(r) = next {
        let bytes = &patch[pos..pos + r.len as usize];
        assert_eq!(*blake3::hash(bytes).as_bytes(), r.hash);
        pos += r.len as usize;
        let (page, content) = page(bytes, pre.required_features);
        for e in &page.extents {
            let start = out.len() as u64;
            extents += 1;
            match *e {
                Extent::Copy { len, delta } => {
                    in_place_safe &= delta >= 0;
                    let src = (start as i64 + delta) as usize;
                    out.extend_from_slice(&old[src..src + len as usize]);
                }
                Extent::Zero { len } => out.resize(out.len() + len as usize, 0),
                Extent::Data(s) => {
                    segments += 1;
                    segment_max = segment_max.max(s.new_len);
                    let (codec, packed) = Codec::split(s.codec).expect("codec");
                    let mut ops = match s.inline_ops {
                        Some(at) => content[at as usize..][..s.ops_len as usize].to_vec(),
                        None => patch[pos..pos + s.ops_len as usize].to_vec(),
                    };
                    pos += s.payload_ops_len() as usize;
                    if packed {
                        assert_ne!(pre.required_features & FEATURE_PACKED_OPS, 0);
                        ops = zstd::bulk::decompress(&ops, 1 << 20).expect("packed ops");
                    }
                    let coded = &patch[pos..pos + s.data_len as usize];
                    pos += s.data_len as usize;
                    let data = match codec {
                        Codec::Stored => coded.to_vec(),
                        Codec::Zstd => {
                            // One frame, single segment, with its content size.
                            assert_eq!(coded[4] & 0x20, 0x20, "single-segment frame");
                            zstd::bulk::decompress(coded, 1 << 22).expect("zstd")
                        }
                        Codec::ZstdPrefix => {
                            assert_ne!(pre.required_features & FEATURE_OLD_PREFIX, 0);
                            let (r, frame) = PrefixRef::parse(coded).expect("prefix ref");
                            let lo = (out.len() as i64 + r.delta) as usize;
                            in_place_safe &= lo >= out.len();
                            let prefix = &old[lo..lo + r.len as usize];
                            let mut dctx = zstd::zstd_safe::DCtx::create();
                            dctx.ref_prefix(prefix).expect("prefix");
                            let mut data = Vec::with_capacity(1 << 22);
                            dctx.decompress(&mut data, frame).expect("zstd with prefix");
                            data
                        }
                        Codec::ZstdHistory => {
                            assert_ne!(pre.required_features & FEATURE_DATA_HISTORY, 0);
                            let n = zstd::zstd_safe::get_frame_content_size(coded)
                                .expect("frame header")
                                .expect("content size")
                                as usize;
                            let keep = history.len().min(MAX_HISTORY_LEN as usize - n);
                            let mut data = Vec::with_capacity(n);
                            {
                                let mut dctx = zstd::zstd_safe::DCtx::create();
                                dctx.ref_prefix(&history[history.len() - keep..])
                                    .expect("history");
                                dctx.decompress(&mut data, coded)
                                    .expect("zstd with history");
                            }
                            assert_eq!(data.len(), n);
                            history.extend_from_slice(&data);
                            data
                        }
                    };
                    let mut d = 0;
                    let seg_start = out.len();
                    for op in OpIter::new(&ops) {
                        let op = op.expect("op");
                        let at = out.len() as i64;
                        let len = op.len() as usize;
                        match op {
                            Op::Copy { delta, .. } => {
                                in_place_safe &= at + delta >= seg_start as i64;
                                let src = (at + delta) as usize;
                                out.extend_from_slice(&old[src..src + len]);
                            }
                            Op::Literal { .. } => {
                                out.extend_from_slice(&data[d..d + len]);
                                d += len;
                            }
                            Op::Delta { delta, .. } => {
                                in_place_safe &= at + delta >= seg_start as i64;
                                let src = (at + delta) as usize;
                                for i in 0..len {
                                    out.push(data[d + i].wrapping_add(old[src + i]));
                                }
                                d += len;
                            }
                            Op::Zero { .. } => out.resize(out.len() + len, 0),
                        }
                    }
                    assert_eq!(d, data.len(), "data block fully used");
                    assert_eq!(out.len() - seg_start, s.new_len as usize);
                    let compact = pre.required_features & FEATURE_COMPACT_PAGES != 0;
                    assert!(s.hash_matches(&out[seg_start..], compact));
                    let carried = if compact { SHORT_HASH_LEN } else { HASH_LEN };
                    assert_eq!(
                        blake3::hash(&out[seg_start..]).as_bytes()[..carried],
                        s.hash[..carried]
                    );
                }
            }
            assert!(
                out.len() as u64 <= header.new_len,
                "extents overrun new_len"
            );
        }
        next = page.next;
    }
    assert_eq!(
        pos,
        patch.len() - TRAILER_LEN,
        "payloads end at the trailer"
    );
    assert_eq!(out.len() as u64, header.new_len, "extents tile new_len");
    assert_eq!(header.extent_count, extents);
    assert_eq!(header.segment_count, segments);
    assert_eq!(header.segment_max, segment_max);
    assert_eq!(header.flags & FLAG_IN_PLACE_SAFE != 0, in_place_safe);
    assert_eq!(header.new_hash, *blake3::hash(&out).as_bytes());
    out
}

#[test]
fn round_trips_every_kind_of_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = pair();
    for level in [Level::Default, Level::Best] {
        let opts = Options {
            threads: 3,
            ..level.options()
        };
        let (patch, _) = make(dir.path(), &old, &new, &opts);
        assert_eq!(apply(&old, &patch), new, "{level:?}");
    }
    // The fast level keeps changes apart, so the summary shows each kind.
    for segment_len in [4096, 3 * 4096 + 1, 1 << 22] {
        let opts = Options {
            threads: 3,
            segment_len,
            ..Level::Fast.options()
        };
        let (patch, s) = make(dir.path(), &old, &new, &opts);
        assert_eq!(apply(&old, &patch), new, "segment_len {segment_len}");
        assert_eq!(s.patch_len, patch.len() as u64);
        assert_eq!(
            s.copied_bytes + s.moved_bytes + s.zero_bytes + s.changed_bytes,
            new.len() as u64
        );
        // 11 moved blocks, 20 zero blocks; the rest of the edits are small.
        assert_eq!(s.moved_bytes, 11 * BS as u64);
        assert!(s.zero_bytes >= 20 * BS as u64);
        assert!(patch.len() < 40 * BS, "patch is {} bytes", patch.len());
        assert!(!s.in_place_safe, "block 50 moved forward to 400");

        let report = inspect(&mut &patch[..]).expect("inspect");
        assert!(report.patch_hash_ok);
        assert_eq!(report.moved.bytes, s.moved_bytes);
        assert_eq!(report.data.extents, s.segments);
        assert!(report.ops.delta > 0 && report.ops.literal > 0);
    }
}

#[test]
fn edge_sizes_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng(7);
    let mut a = vec![0u8; 5000];
    rng.fill(&mut a);
    let cases: [(&[u8], &[u8]); 5] = [
        (&[], &[]),
        (&a, &[]),
        (&[], &a),
        (&a[..10], &a[..11]),
        (&a[..4096], &a[..4096]),
    ];
    for (old, new) in cases {
        let (patch, s) = make(dir.path(), old, new, &Options::default());
        assert_eq!(apply(old, &patch), new);
        assert_eq!(s.new_hash, *blake3::hash(new).as_bytes());
        assert!(inspect(&mut &patch[..]).expect("inspect").patch_hash_ok);
    }
}

#[test]
fn output_does_not_depend_on_thread_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, mut new) = pair();
    // Many changed blocks: one edit in each of the first 550 blocks.
    for k in 0..550 {
        new[k * BS + (k * 13) % BS] ^= 0xFF;
    }
    for data_history in [false, true] {
        let opts = |threads| Options {
            threads,
            segment_len: 4096,
            data_history,
            ..Options::default()
        };
        let (one, _) = make(dir.path(), &old, &new, &opts(1));
        let (four, s) = make(dir.path(), &old, &new, &opts(4));
        assert!(s.segments > 500);
        assert!(one == four, "1 and 4 threads differ");
        assert_eq!(apply(&old, &one), new);
    }
}

#[test]
fn inspect_refuses_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = pair();
    let (patch, _) = make(dir.path(), &old, &new, &Options::default());
    assert!(inspect(&mut &patch[..patch.len() - 1]).is_err());
    let mut bad = patch.clone();
    bad[30] ^= 1; // header body
    assert!(inspect(&mut &bad[..]).is_err());
    let mut bad = patch.clone();
    let n = bad.len();
    bad[n - TRAILER_LEN - 1] ^= 1; // last payload byte: its frame, or the patch hash, catches it
    let refused = inspect(&mut &bad[..]).expect_err("a flipped payload byte");
    assert!(refused.so_far.is_some(), "the report up to the refusal");
}

/// The extents of a patch (all pages).
fn extents(patch: &[u8]) -> Vec<Extent> {
    let pre = PreambleRepr::parse(&Preamble::new_checked(patch).expect("preamble")).expect("pre");
    let body_end = PREAMBLE_LEN + pre.header_len as usize;
    let header = Header::parse(&patch[PREAMBLE_LEN..body_end], pre.minor).expect("header");
    let mut pos = body_end + HASH_LEN;
    let (mut all, mut next) = (Vec::new(), Some(header.first_page));
    while let Some(r) = next {
        let (page, _) = page(&patch[pos..pos + r.len as usize], pre.required_features);
        pos += r.len as usize;
        for e in &page.extents {
            if let Extent::Data(s) = e {
                pos += s.payload_len() as usize;
            }
        }
        all.extend_from_slice(&page.extents);
        next = page.next;
    }
    all
}

#[test]
fn planner_choices() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng(99);
    let mut old = vec![0u8; 16 * BS];
    rng.fill(&mut old[..12 * BS]);
    let mut new = old.clone();
    new[2 * BS + 9] ^= 0x10; // small edit -> delta
    new.copy_within(9 * BS..10 * BS, 6 * BS); // moved block -> copy
    new[12 * BS..].fill(0xEE); // zero run in old replaced: literal
    new[14 * BS..].fill(0); // back to zero: same as old
    new[10 * BS..11 * BS].fill(0); // zeroed block
    let (patch, s) = make(dir.path(), &old, &new, &Level::Fast.options());
    assert_eq!(apply(&old, &patch), new);
    let e = extents(&patch);
    assert_eq!(
        e[0],
        Extent::Copy {
            len: 2 * BS as u64,
            delta: 0
        }
    );
    assert!(matches!(e[1], Extent::Data(d) if d.new_len == BS as u32));
    assert_eq!(
        e[2],
        Extent::Copy {
            len: 3 * BS as u64,
            delta: 0
        }
    );
    assert_eq!(
        e[3],
        Extent::Copy {
            len: BS as u64,
            delta: 3 * BS as i64
        }
    );
    assert_eq!(e[5], Extent::Zero { len: BS as u64 });
    assert!(matches!(e[7], Extent::Data(d) if d.new_len == 2 * BS as u32));
    assert_eq!(e.len(), 9);
    // At fast a literal takes the old bytes around it as history (since
    // f601cbe), which may lie behind it: only a patch made for in place is
    // in-place safe, and it keeps the same copies.
    assert!(!s.in_place_safe, "history behind the literal");
    let in_place = Options {
        in_place: true,
        ..Level::Fast.options()
    };
    let (ip, s) = make(dir.path(), &old, &new, &in_place);
    assert_eq!(apply(&old, &ip), new);
    assert!(s.in_place_safe, "the only move reads ahead (delta > 0)");
    assert_eq!(extents(&ip)[3], e[3]);
    let report = inspect(&mut &patch[..]).expect("inspect");
    assert_eq!((report.ops.delta, report.ops.literal), (1, 1));
}

/// Text-like bytes: words from a small random vocabulary.
fn words(rng: &mut Rng, len: usize) -> Vec<u8> {
    let vocab: Vec<Vec<u8>> = (0..300)
        .map(|_| {
            let mut w = vec![0u8; 3 + (rng.next() % 9) as usize];
            rng.fill(&mut w);
            w
        })
        .collect();
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(&vocab[(rng.next() % 300) as usize]);
    }
    out.truncate(len);
    out
}

#[test]
fn near_matches_use_old_bytes_as_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng(7);
    let old = words(&mut rng, 64 * BS);
    // New: a stretch of old text edited every 40 bytes (too often for the
    // shifted-match search), moved 5 blocks on: only history finds it.
    let mut new = old.clone();
    let (src, dst, len) = (20 * BS + 3, 40 * BS, 8 * BS);
    let mut edited = old[src..src + len].to_vec();
    for i in (0..len).step_by(40) {
        edited[i] ^= 0x5A;
    }
    new[dst..dst + len].copy_from_slice(&edited);
    let sizes: Vec<usize> = [Level::Fast, Level::Default, Level::Best]
        .iter()
        .map(|level| {
            let (patch, _) = make(dir.path(), &old, &new, &level.options());
            assert_eq!(apply(&old, &patch), new, "{level:?}");
            let prefixed = extents(&patch)
                .iter()
                .any(|e| matches!(e, Extent::Data(d) if d.codec == Codec::ZstdPrefix as u8));
            // Every level takes old bytes as history (fast since f601cbe).
            assert!(prefixed, "{level:?}");
            patch.len()
        })
        .collect();
    assert!(
        sizes.iter().all(|&s| s * 2 < len),
        "history should at least halve the edited stretch ({len} bytes): {sizes:?}"
    );
    // In-place patches take history only from at or after the segment.
    let opts = Options {
        in_place: true,
        ..Options::default()
    };
    let (patch, s) = make(dir.path(), &old, &new, &opts);
    assert_eq!(apply(&old, &patch), new);
    assert!(s.in_place_safe);
}

#[test]
fn scattered_edits_share_segments_and_inline_ops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng(11);
    let mut old = vec![0u8; 2048 * BS];
    rng.fill(&mut old);
    let mut new = old.clone();
    for _ in 0..100 {
        let at = (rng.next() % (new.len() as u64 - 4)) as usize;
        rng.fill(&mut new[at..at + 4]);
    }
    let (fast, _) = make(dir.path(), &old, &new, &Level::Fast.options());
    let (default, _) = make(dir.path(), &old, &new, &Options::default());
    assert_eq!(apply(&old, &fast), new);
    assert_eq!(apply(&old, &default), new);
    let segments = |p: &[u8]| -> Vec<u8> {
        extents(p)
            .iter()
            .filter_map(|e| match e {
                Extent::Data(d) => Some(d.codec),
                _ => None,
            })
            .collect()
    };
    // One segment per 4 MiB, not per edit, with its ops inline in the page.
    let codecs = segments(&default);
    assert_eq!(codecs.len(), 2);
    assert!(codecs.iter().all(|c| c & PACKED_OPS == 0));
    assert!(segments(&fast).len() > 50, "{}", segments(&fast).len());
    assert!(
        default.len() * 3 < fast.len(),
        "{} vs {}",
        default.len(),
        fast.len()
    );
}

/// New data that repeats other new data more than a segment away: the
/// data history (format 1.3, `best` only) codes the repeats as matches.
#[test]
fn best_codes_repeated_new_data_with_the_data_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng(11);
    let old = words(&mut rng, 24 << 20);
    let mut new = old.clone();
    // Fresh text, new to the old file, written at three places 6 MiB apart
    // with a few bytes changed each time.
    let fresh = {
        let mut r = Rng(12);
        words(&mut r, 200 << 10)
    };
    for (k, at) in [(0u8, 1 << 20), (1, 7 << 20), (2, 13 << 20)] {
        let mut copy = fresh.clone();
        for i in (k as usize * 7..copy.len()).step_by(4099) {
            copy[i] ^= 0xA5;
        }
        new[at..at + copy.len()].copy_from_slice(&copy);
    }
    let sizes: Vec<(usize, bool)> = [Level::Default, Level::Best]
        .iter()
        .map(|level| {
            let (patch, _) = make(dir.path(), &old, &new, &level.options());
            assert_eq!(apply(&old, &patch), new, "{level:?}");
            let pre = PreambleRepr::parse(&Preamble::new_checked(&patch).expect("preamble"))
                .expect("preamble repr");
            let history = extents(&patch).iter().any(
                |e| matches!(e, Extent::Data(d) if d.codec & !PACKED_OPS == Codec::ZstdHistory as u8),
            );
            assert_eq!(history, pre.required_features & FEATURE_DATA_HISTORY != 0);
            (patch.len(), history)
        })
        .collect();
    assert!(!sizes[0].1, "default never uses the data history");
    assert!(sizes[1].1, "best uses the data history: {sizes:?}");
    // The fresh text costs about once, not three times.
    assert!(
        sizes[1].0 * 2 < sizes[0].0,
        "history should at least halve the patch: {sizes:?}"
    );
}

/// Machine code of `len` bytes: 'functions' of 64..1024 bytes drawn from a
/// skewed byte distribution (as opcodes and small immediates are), each
/// with a 4-byte address every 16 bytes. Returns the code and each
/// function's (start, len).
fn code(rng: &mut Rng, len: usize) -> (Vec<u8>, Vec<(usize, usize)>) {
    const COMMON: [u8; 8] = [0x00, 0x48, 0x89, 0x8b, 0xff, 0xe8, 0x0f, 0x24];
    let mut out = Vec::with_capacity(len);
    let mut funcs = Vec::new();
    while out.len() < len {
        let n = (64 + rng.next() % 960) as usize;
        funcs.push((out.len(), n));
        for i in 0..n {
            let r = rng.next();
            out.push(if i % 16 < 12 && r % 4 != 0 {
                COMMON[(r >> 8) as usize % COMMON.len()]
            } else {
                (r >> 16) as u8
            });
        }
    }
    out.truncate(len);
    (out, funcs)
}

#[test]
fn recompiled_code_is_coded_against_the_old_bytes_not_as_deltas() {
    // A new build of a program: every address moved by 0x40, and every
    // twentieth function grew by a few bytes, so the rest shift at odd
    // offsets. No block matches; at the same or a shifted offset about
    // one byte in six is equal, so bytewise deltas are noise. zstd with
    // the old bytes as history finds each function's unchanged pieces,
    // as `zstd --patch-from` does.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng(21);
    let (old, funcs) = code(&mut rng, 3 << 20);
    let mut new = Vec::with_capacity(old.len() + (64 << 10));
    for (k, &(start, n)) in funcs.iter().enumerate() {
        let f = &old[start..(start + n).min(old.len())];
        for (i, chunk) in f.chunks(16).enumerate() {
            new.extend_from_slice(chunk);
            if chunk.len() == 16 {
                let at = new.len() - 4;
                let addr = u32::from_le_bytes(new[at..].try_into().expect("4 bytes"));
                new[at..].copy_from_slice(&addr.wrapping_add(0x40).to_le_bytes());
            }
            if k % 20 == 0 && i == 1 {
                new.extend_from_slice(&[0x90; 5][..1 + k % 5]);
            }
        }
    }
    // What zstd -19 makes with the whole old file as history.
    let reference = {
        let mut cctx = zstd::zstd_safe::CCtx::create();
        cctx.set_parameter(zstd::zstd_safe::CParameter::CompressionLevel(19))
            .expect("level");
        cctx.set_parameter(zstd::zstd_safe::CParameter::WindowLog(23))
            .expect("window");
        cctx.ref_prefix(&old[..]).expect("prefix");
        let mut frame = Vec::with_capacity(new.len());
        cctx.compress2(&mut frame, &new).expect("compress");
        frame.len()
    };
    for (level, within) in [(Level::Default, 1.25), (Level::Best, 1.02)] {
        let (patch, _) = make(dir.path(), &old, &new, &level.options());
        assert_eq!(apply(&old, &patch), new, "{level:?}");
        let ratio = patch.len() as f64 / reference as f64;
        assert!(
            ratio <= within,
            "{level:?}: {} bytes, {ratio:.2}x zstd -19 with the old file as history ({reference})",
            patch.len()
        );
    }
}

/// A release rebuilt with its code moved: every 8 bytes, 3 bytes (an
/// address) grew by the same amount, so blocks equal their old selves in
/// only 5 of 8 bytes, too few for a delta op without the coding trial.
/// As deltas they are a short repeating pattern; as literals zstd must
/// code a match every 5 bytes. `default`'s trial keeps them as deltas.
#[test]
fn default_codes_less_alike_blocks_as_deltas_when_smaller() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng(11);
    let mut old = vec![0u8; 256 * BS];
    rng.fill(&mut old);
    let mut new = old.clone();
    for at in (0..new.len()).step_by(8) {
        for b in &mut new[at + 5..at + 8] {
            *b = b.wrapping_add(0x10);
        }
    }
    let default = Level::Default.options();
    let (patch, _) = make(dir.path(), &old, &new, &default);
    assert_eq!(apply(&old, &patch), new);
    let without = Options {
        coding_trial: false,
        ..default
    };
    let (plain, _) = make(dir.path(), &old, &new, &without);
    assert_eq!(apply(&old, &plain), new);
    let report = inspect(&mut &patch[..]).expect("inspect");
    assert!(report.ops.delta > 0, "no delta ops: {:?}", report.ops);
    assert!(
        patch.len() * 4 < plain.len(),
        "trial {} bytes, without it {} bytes",
        patch.len(),
        plain.len()
    );
}
