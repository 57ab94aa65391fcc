//! Codec 0x03, zstd with the data history (format 1.3,
//! `FEATURE_DATA_HISTORY`): patches from the builder whose 0x03 segments
//! repeat earlier 0x03 segments' data, mixed with codecs 0x00 to 0x02,
//! packed ops and compact pages, applied by the engine (fresh, in place and
//! resumed in the middle of a run of 0x03 segments) and the reference
//! applier alike; a history far longer than `MAX_HISTORY_LEN`; and every
//! way a 0x03 segment can be wrong, each refused by both: no feature bit, a
//! frame without its content size or declaring another one, no data at
//! all, bytes after the frame, a window above `MAX_ZSTD_WINDOW`, a
//! dictionary id, a frame made against another history (one reaching past
//! the allowed history, one counting codec 0x01 data as history). Last, the
//! producer at `Level::Best` codes repeated new data with the history.
//! The engine's memory on a worst-case 0x03 patch is measured in
//! `mutations.rs`, with the other worst cases.

use anypatch_apply::{ApplyError, Config, ErrorClass};
use anypatch_format::{
    Codec, Extent, FormatError, Op, PrefixRef, SegmentEntry, FEATURE_COMPACT_PAGES,
    FEATURE_DATA_HISTORY, FEATURE_OLD_PREFIX, FEATURE_PACKED_OPS, MAX_HISTORY_LEN, PACKED_OPS,
};
use anypatch_producer::{Level, Options};
use anypatch_tests::builder::{
    compress_with_history, compress_with_prefix, stored_frame, HistoryFrame, Part, PatchBuilder,
};
use anypatch_tests::hostile::{self, drive, in_place_passes, produce, Layout};
use anypatch_tests::{apply_in_memory, drive_memory, reference, root, vectors::bytes};

const MIB: usize = 1 << 20;

/// `n` random bytes, which zstd cannot shrink on their own: only a history
/// that holds them can.
/// [`hostile::refused_everywhere`], and the error says the patch is corrupt.
fn refused(what: &str, old: &[u8], patch: &[u8]) -> ApplyError {
    let e = hostile::refused_everywhere(what, old, patch);
    assert_eq!(e.class(), ErrorClass::CorruptPatch, "{what}: {e}");
    e
}

fn noise(key: &str, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    blake3::Hasher::new()
        .update(key.as_bytes())
        .finalize_xof()
        .fill(&mut v);
    v
}

/// Every data entry of a walked patch, in order.
fn entries(l: &Layout) -> Vec<SegmentEntry> {
    l.pages
        .iter()
        .flat_map(|(p, _)| &p.extents)
        .filter_map(|e| match e {
            Extent::Data(s) => Some(*s),
            _ => None,
        })
        .collect()
}

/// `l` with data segment `k`'s data block replaced by `block`.
fn with_block(l: &Layout, k: usize, block: Vec<u8>) -> Vec<u8> {
    let mut l = l.clone();
    let mut seen = 0;
    for (page, payloads) in &mut l.pages {
        let mut p = 0;
        for e in &mut page.extents {
            let Extent::Data(s) = e else { continue };
            if seen == k {
                let ops = payloads[p][..s.ops_len as usize].to_vec();
                s.data_len = block.len() as u32;
                payloads[p] = [ops, block].concat();
                return l.emit();
            }
            seen += 1;
            p += 1;
        }
    }
    panic!("no data segment {k}")
}

/// The parts of [`mixed`]: 0x03 segments that repeat earlier 0x03 data,
/// between segments with codecs 0x00 to 0x02, copies and zeros, with
/// inline and packed ops.
fn mixed_parts(old: &[u8]) -> Vec<Part> {
    let a = noise("history-a", 20_000);
    let b = noise("history-b", 10_000);
    let mut again = a[3000..18_000].to_vec();
    for at in (0..again.len()).step_by(1111) {
        again[at] ^= 0x5A;
    }
    // Scattered short ops, which pack well, taking small pieces of `a`.
    let mut scattered = Vec::new();
    let mut pieces = Vec::new();
    for i in 0..200usize {
        scattered.push(Op::Copy {
            len: 20,
            delta: (i % 9) as i64,
        });
        scattered.push(Op::Literal { len: 30 });
        pieces.extend_from_slice(&a[i * 97..i * 97 + 30]);
    }
    let mut ahead = old[60_000..65_000].to_vec();
    ahead[100..104].copy_from_slice(b"1.3!");
    vec![
        Part::Copy {
            len: 10_000,
            delta: 0,
        },
        // New offset 10_000: the history starts with `a`.
        Part::Segment {
            ops: vec![
                Op::Literal { len: 20_000 },
                Op::Copy {
                    len: 1000,
                    delta: 5,
                },
            ],
            data: a.clone(),
            codec: Codec::ZstdHistory,
        },
        // Codec 0x01 data is not history.
        Part::Segment {
            ops: vec![Op::Literal { len: 10_000 }],
            data: b.clone(),
            codec: Codec::Zstd,
        },
        Part::Zero { len: 500 },
        // New offset 41_500: 15_000 bytes of `a`, edited, and a delta.
        Part::Segment {
            ops: vec![
                Op::Literal { len: 15_000 },
                Op::Delta {
                    len: 2000,
                    delta: -100,
                },
            ],
            data: [again.clone(), vec![1; 2000]].concat(),
            codec: Codec::ZstdHistory,
        }
        .packed(),
        // New offset 58_500.
        Part::PrefixSegment {
            ops: vec![Op::Literal { len: 5000 }],
            data: ahead,
            prefix: PrefixRef {
                delta: 0,
                len: 20_000,
            },
        },
        Part::Segment {
            ops: vec![Op::Literal { len: 100 }],
            data: b[..100].to_vec(),
            codec: Codec::Stored,
        },
        // The end of `a`, all of `b` (coded afresh) and the start of `again`.
        Part::Segment {
            ops: vec![Op::Literal { len: 30_000 }],
            data: [&a[10_000..], &b[..], &again[..10_000]].concat(),
            codec: Codec::ZstdHistory,
        },
        Part::Segment {
            ops: scattered,
            data: pieces,
            codec: Codec::ZstdHistory,
        }
        .packed(),
        Part::Copy {
            len: 1000,
            delta: -20_000,
        },
    ]
}

/// A builder of [`mixed_parts`] over a 200 KB old file.
fn mixed() -> (Vec<u8>, PatchBuilder) {
    let old = bytes("history-old", 200_000);
    let parts = mixed_parts(&old);
    (old, PatchBuilder::new(parts))
}

#[test]
fn history_segments_apply_in_the_engine_and_the_reference() {
    let (old, base) = mixed();
    for compact in [false, true] {
        for per_page in [4096, 3, 1] {
            let what = format!("compact {compact}, {per_page} per page");
            let mut b = if compact {
                base.clone().compact()
            } else {
                base.clone()
            };
            b.extents_per_page = per_page;
            let (patch, image) = b.build(&old);
            let new = image.bytes.expect("kept");
            let l = Layout::walk(&patch).expect("walks");
            let compact_bit = if compact { FEATURE_COMPACT_PAGES } else { 0 };
            assert_eq!(
                l.preamble.required_features,
                FEATURE_DATA_HISTORY | FEATURE_PACKED_OPS | FEATURE_OLD_PREFIX | compact_bit,
                "{what}"
            );
            let e = entries(&l);
            let codecs: Vec<u8> = e.iter().map(|s| s.codec).collect();
            assert_eq!(codecs, [0x03, 0x01, 0x83, 0x02, 0x00, 0x03, 0x83], "{what}");
            // 15_000 random bytes found in the history cost next to nothing;
            // alone they would take all 15_000.
            assert!(e[2].data_len < 2000, "{what}: {}", e[2].data_len);
            // `b`, seen only as codec 0x01 data, costs its 10_000 bytes; the
            // other 20_000 come from the history.
            assert!(
                (10_000..12_000).contains(&e[5].data_len),
                "{what}: {}",
                e[5].data_len
            );
            assert!(e[6].data_len < 3000, "{what}: {}", e[6].data_len);
            hostile::applies_everywhere(&what, &old, &patch, &new);
        }
    }
}

#[test]
fn history_survives_in_place_resumes() {
    let old = bytes("history-resume-old", 60_000);
    let x = noise("history-resume-x", 8000);
    let mut x1 = x.clone();
    x1[4000..4010].copy_from_slice(b"resumed!!!");
    let x3 = x[1000..7000].to_vec();
    // Every segment reads old bytes at or after its start: in-place safe.
    let parts = vec![
        Part::Copy {
            len: 5000,
            delta: 0,
        },
        Part::Segment {
            ops: vec![Op::Literal { len: 8000 }],
            data: x.clone(),
            codec: Codec::ZstdHistory,
        },
        Part::Segment {
            ops: vec![Op::Literal { len: 8000 }],
            data: x1.clone(),
            codec: Codec::ZstdHistory,
        },
        Part::Segment {
            ops: vec![Op::Literal { len: 3000 }],
            data: noise("history-resume-y", 3000),
            codec: Codec::Zstd,
        },
        Part::Zero { len: 1000 },
        Part::Segment {
            ops: vec![
                Op::Literal { len: 6000 },
                Op::Copy {
                    len: 2000,
                    delta: 100,
                },
            ],
            data: x3.clone(),
            codec: Codec::ZstdHistory,
        }
        .packed(),
        Part::Segment {
            ops: vec![Op::Literal { len: 8000 }],
            data: [&x1[4000..], &x3[..4000]].concat(),
            codec: Codec::ZstdHistory,
        },
        Part::Copy {
            len: 3000,
            delta: 0,
        },
    ];
    for compact in [false, true] {
        let mut b = PatchBuilder::new(parts.clone());
        if compact {
            b = b.compact();
            b.extents_per_page = 2;
        }
        let (patch, image) = b.build(&old);
        let new = image.bytes.expect("kept");
        let l = Layout::walk(&patch).expect("walks");
        for s in &entries(&l)[1..] {
            if s.codec & !PACKED_OPS == Codec::ZstdHistory as u8 {
                assert!(s.data_len < 1000, "a repeat not found in the history");
            }
        }
        hostile::applies_everywhere(&format!("compact {compact}"), &old, &patch, &new);
        let (_, write) = in_place_passes(old.len() as u64);
        let mut disk = old.clone();
        let full =
            drive_memory(None, &mut disk, &patch, write, 4096, usize::MAX).expect("write pass");
        // Writes end after each segment and the zero run: 13_000 is between
        // the first two 0x03 segments, 21_000 right after them.
        assert_eq!(
            full.write_ends,
            [13_000, 21_000, 24_000, 25_000, 33_000, 41_000],
            "compact {compact}"
        );
        for (killed_after, &resume_from) in full.write_ends.iter().enumerate() {
            let killed_after = killed_after + 1;
            if killed_after == full.write_ends.len() {
                break;
            }
            let mut disk = old.clone();
            let killed = drive_memory(None, &mut disk, &patch, write, 4096, killed_after)
                .expect("writes until killed");
            assert_eq!(killed.write_ends.last(), Some(&resume_from));
            let resume = Config {
                resume_from,
                ..write
            };
            let run = drive_memory(None, &mut disk, &patch, resume, 4096, usize::MAX)
                .unwrap_or_else(|e| panic!("compact {compact}, resumed from {resume_from}: {e}"));
            assert_eq!(run.write_ends[..], full.write_ends[killed_after..]);
            disk.truncate(new.len());
            assert!(disk == new, "compact {compact}, resumed from {resume_from}");
        }
    }
}

/// Three segments of 3 MiB: 9 MiB of history, of which each later segment
/// may use only the last `MAX_HISTORY_LEN` - 3 MiB = 1 MiB. Each starts
/// with exactly that last MiB, so an applier that keeps less history than
/// allowed fails, and one that drops the wrong end gives other bytes.
#[test]
fn a_history_longer_than_max_history_len_applies() {
    let old = bytes("history-long-old", 4096);
    let n = 3 * MIB;
    let allowed = MAX_HISTORY_LEN as usize - n;
    let s1 = noise("history-long-1", n);
    let s2 = [
        &s1[n - allowed..],
        &noise("history-long-2", n - allowed)[..],
    ]
    .concat();
    let s3 = [
        &s2[n - allowed..],
        &noise("history-long-3", n - allowed)[..],
    ]
    .concat();
    let parts: Vec<Part> = [s1, s2, s3]
        .into_iter()
        .map(|data| Part::Segment {
            ops: vec![Op::Literal { len: n as u32 }],
            data,
            codec: Codec::ZstdHistory,
        })
        .collect();
    for compact in [false, true] {
        let mut b = PatchBuilder::new(parts.clone());
        if compact {
            b = b.compact();
        }
        let (patch, image) = b.build(&old);
        let new = image.bytes.expect("kept");
        let l = Layout::walk(&patch).expect("walks");
        let e = entries(&l);
        assert!(e[0].data_len as usize > n, "random data does not shrink");
        for s in &e[1..] {
            assert!(
                (s.data_len as usize) < n - allowed + allowed / 10,
                "the allowed MiB of history is found: {}",
                s.data_len
            );
        }
        hostile::applies_everywhere(&format!("compact {compact}"), &old, &patch, &new);
    }
}

/// Frames that use more of the history than `MAX_HISTORY_LEN` - n allows,
/// here the first MiB of a 3 MiB history for a 2 MiB segment, are refused.
#[test]
fn frames_reaching_past_the_allowed_history_are_refused() {
    let old = bytes("history-past-old", 4096);
    let s1 = noise("history-past-1", 3 * MIB);
    let s2 = [&s1[..MIB], &noise("history-past-2", MIB)[..]].concat();
    let parts = vec![
        Part::Segment {
            ops: vec![Op::Literal {
                len: s1.len() as u32,
            }],
            data: s1.clone(),
            codec: Codec::ZstdHistory,
        },
        Part::Segment {
            ops: vec![Op::Literal {
                len: s2.len() as u32,
            }],
            data: s2.clone(),
            codec: Codec::ZstdHistory,
        },
    ];
    let (patch, image) = PatchBuilder::new(parts).build(&old);
    let new = image.bytes.expect("kept");
    let l = Layout::walk(&patch).expect("walks");
    // Built right, the first MiB of s2 is outside the history it may use.
    assert!(entries(&l)[1].data_len as usize > 2 * MIB);
    hostile::applies_everywhere("built right", &old, &patch, &new);
    // Made against all 3 MiB, the frame finds that MiB (level 19 keeps
    // track of the whole prefix; level 3's tables forget its start)...
    let far = compress_with_prefix(&s2, &s1, 19);
    assert!(far.len() < MIB + MIB / 10, "{}", far.len());
    let mut back = Vec::with_capacity(s2.len());
    let mut d = zstd::zstd_safe::DCtx::create();
    d.ref_prefix(&s1[..]).expect("prefix");
    d.decompress(&mut back, &far)
        .expect("decodes with all 3 MiB");
    drop(d);
    assert!(back == s2);
    // ...which an applier may not give it.
    let e = refused("history past the limit", &old, &with_block(&l, 1, far));
    assert!(
        matches!(
            e,
            ApplyError::Decode { segment: 1, .. } | ApplyError::SegmentHash { segment: 1, .. }
        ),
        "{e:?}"
    );
}

/// A small patch with two 0x03 segments (the second repeating the first)
/// after a copy, against an 8 KiB old file; its 0x03 frames made by `frame`.
fn small(frame: HistoryFrame) -> (Vec<u8>, Vec<u8>) {
    let old = bytes("history-hostile-old", 8192);
    let x = noise("history-hostile-x", 2000);
    let mut again = x[200..1700].to_vec();
    again[700] ^= 1;
    let mut b = PatchBuilder::new(vec![
        Part::Copy { len: 100, delta: 0 },
        Part::Segment {
            ops: vec![Op::Literal { len: 2000 }],
            data: x,
            codec: Codec::ZstdHistory,
        },
        Part::Segment {
            ops: vec![Op::Literal { len: 1500 }, Op::Zero { len: 10 }],
            data: again,
            codec: Codec::ZstdHistory,
        },
    ]);
    b.history_frame = frame;
    let patch = b.build(&old).0;
    (old, patch)
}

/// A frame of raw blocks: descriptor, window byte, dictionary id, then a
/// 4-byte content size of `declared` when the descriptor asks for one.
fn hand_frame(
    descriptor: u8,
    window: u8,
    dict_id: &[u8],
    declared: usize,
    content: &[u8],
) -> Vec<u8> {
    let mut f = vec![0x28, 0xB5, 0x2F, 0xFD, descriptor, window];
    f.extend_from_slice(dict_id);
    if descriptor & 0xC0 == 0x80 {
        f.extend_from_slice(&(declared as u32).to_le_bytes());
    }
    let header = 1 | (content.len() as u32) << 3; // last block, raw
    f.extend_from_slice(&header.to_le_bytes()[..3]);
    f.extend_from_slice(content);
    f
}

#[test]
fn the_unchanged_small_patch_applies() {
    let (old, patch) = small(compress_with_history);
    let l = Layout::walk(&patch).expect("walks");
    assert_eq!(l.preamble.required_features, FEATURE_DATA_HISTORY);
    assert!(entries(&l)[1].data_len < 200, "the repeat uses the history");
    let new = reference::apply(&old, &patch).expect("reference");
    hostile::applies_everywhere("small", &old, &patch, &new);
    // Hand-made frames of raw blocks, with their sizes and a 4 MiB window,
    // are valid too: a history need not be used.
    let (old, raw) = small(|d, _| hand_frame(0x80, 0x60, &[], d.len(), d));
    hostile::applies_everywhere("raw frames", &old, &raw, &new);
}

#[test]
fn codec_3_needs_the_feature_bit() {
    let (old, patch) = small(compress_with_history);
    let mut l = Layout::walk(&patch).expect("walks");
    l.preamble.required_features = 0;
    let e = refused("no feature bit", &old, &l.emit());
    assert!(
        matches!(
            e,
            ApplyError::Format(FormatError::Invalid {
                field: "segment.codec",
                ..
            })
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("FEATURE_DATA_HISTORY"), "{e}");
    // Packed, with FEATURE_PACKED_OPS but not the history bit.
    let b = PatchBuilder::new(vec![Part::Segment {
        ops: vec![Op::Literal { len: 10 }],
        data: vec![3; 10],
        codec: Codec::ZstdHistory,
    }
    .packed()]);
    let mut l = Layout::walk(&b.build(&old).0).expect("walks");
    l.preamble.required_features = FEATURE_PACKED_OPS;
    let e = refused("packed, no feature bit", &old, &l.emit());
    assert!(
        matches!(
            e,
            ApplyError::Format(FormatError::Invalid {
                field: "segment.codec",
                ..
            })
        ),
        "{e:?}"
    );

    // The header may not name codec 3 without the bit either.
    let plain = PatchBuilder::new(vec![Part::Copy {
        len: 8192,
        delta: 0,
    }])
    .build(&old)
    .0;
    let mut h3 = Layout::walk(&plain).expect("walks");
    h3.header.codec = Codec::ZstdHistory as u8;
    let e = refused("header codec 3 without the bit", &old, &h3.clone().emit());
    assert!(
        matches!(
            e,
            ApplyError::Format(FormatError::Invalid { field: "codec", .. })
        ),
        "{e:?}"
    );
    // With the bit, it may (informational).
    h3.preamble.required_features = FEATURE_DATA_HISTORY;
    let p = h3.emit();
    drive(&old, &p, Config::new(8192), 100, &mut Vec::new()).expect("engine");
    reference::apply(&old, &p).expect("reference");
}

#[test]
fn history_frames_must_declare_their_exact_size() {
    type Case = (&'static str, HistoryFrame);
    let cases: [Case; 4] = [
        ("no content size", |d, _| stored_frame(d, None)),
        ("one more", |d, _| stored_frame(d, Some(d.len() as u32 + 1))),
        ("one less", |d, _| stored_frame(d, Some(d.len() as u32 - 1))),
        ("no size, 4 MiB window", |d, _| {
            hand_frame(0x00, 0x60, &[], 0, d)
        }),
    ];
    for (what, frame) in cases {
        let (old, patch) = small(frame);
        let e = refused(what, &old, &patch);
        assert!(matches!(e, ApplyError::Decode { segment: 0, .. }), "{what}");
    }
    // Declaring the right size, the same raw blocks apply.
    let (old, patch) = small(|d, _| stored_frame(d, Some(d.len() as u32)));
    let new = reference::apply(&old, &patch).expect("reference");
    hostile::applies_everywhere("declared", &old, &patch, &new);
}

#[test]
fn history_segments_must_take_data() {
    let old = bytes("history-empty-old", 4096);
    // Ops that take no data: the frame declares 0, or there is no frame.
    let parts = vec![
        Part::Copy { len: 100, delta: 0 },
        Part::Segment {
            ops: vec![Op::Zero { len: 10 }, Op::Copy { len: 10, delta: 0 }],
            data: Vec::new(),
            codec: Codec::ZstdHistory,
        },
    ];
    let b = PatchBuilder::new(parts);
    let (patch, _) = b.build(&old);
    let e = refused("a frame of 0 bytes", &old, &patch);
    assert!(matches!(e, ApplyError::Decode { segment: 0, .. }), "{e:?}");
    let l = Layout::walk(&patch).expect("walks");
    let e = refused("no frame", &old, &with_block(&l, 0, Vec::new()));
    assert!(matches!(e, ApplyError::Decode { segment: 0, .. }), "{e:?}");
    let mut c = b.compact();
    c.extents_per_page = 1;
    let (patch, _) = c.build(&old);
    let e = refused("a frame of 0 bytes, compact", &old, &patch);
    assert!(matches!(e, ApplyError::Decode { segment: 0, .. }), "{e:?}");
}

#[test]
fn history_frames_keep_the_zstd_rules() {
    type Case = (&'static str, HistoryFrame);
    let cases: [Case; 6] = [
        ("trailing byte", |d, h| {
            [compress_with_history(d, h), vec![0]].concat()
        }),
        ("two frames", |d, h| {
            let f = compress_with_history(d, h);
            [f.clone(), f].concat()
        }),
        ("cut frame", |d, h| {
            let f = compress_with_history(d, h);
            f[..f.len() - 1].to_vec()
        }),
        ("8 MiB window", |d, _| {
            hand_frame(0x80, 0x68, &[], d.len(), d)
        }),
        ("dictionary id 1", |d, _| {
            hand_frame(0x81, 0x60, &[1], d.len(), d)
        }),
        ("dictionary id 0xFF", |d, _| {
            hand_frame(0x81, 0x60, &[0xFF], d.len(), d)
        }),
    ];
    for (what, frame) in cases {
        let (old, patch) = small(frame);
        let e = refused(what, &old, &patch);
        assert!(matches!(e, ApplyError::Decode { segment: 0, .. }), "{what}");
    }
    // A skippable frame is not a zstd frame with data.
    let (old, patch) = small(|d, h| {
        let mut f = vec![0x50, 0x2A, 0x4D, 0x18, 0, 0, 0, 0];
        f.extend(compress_with_history(d, h));
        f
    });
    let e = refused("skippable frame first", &old, &patch);
    assert!(matches!(e, ApplyError::Decode { segment: 0, .. }), "{e:?}");
}

#[test]
fn frames_made_against_another_history_are_refused() {
    // One byte less history: every match lands one byte off.
    let (old, patch) = small(|d, h| compress_with_prefix(d, &h[..h.len().saturating_sub(1)], 3));
    let e = refused("a shifted history", &old, &patch);
    assert!(
        matches!(
            e,
            ApplyError::Decode { segment: 1, .. } | ApplyError::SegmentHash { segment: 1, .. }
        ),
        "{e:?}"
    );
    // The second segment's frame made with no history decodes the same
    // (it never refers back): this one is fine.
    let (old, ok) = small(|d, _| compress_with_history(d, &[]));
    let new = reference::apply(&old, &ok).expect("reference");
    hostile::applies_everywhere("no history used", &old, &ok, &new);

    // Codec 0x01 data is not history: a 0x03 frame that counts it is refused.
    let x = noise("history-not-01", 3000);
    let mut again = x.clone();
    again[1234] ^= 0x10;
    let parts = vec![
        Part::Segment {
            ops: vec![Op::Literal { len: 3000 }],
            data: x.clone(),
            codec: Codec::Zstd,
        },
        Part::Segment {
            ops: vec![Op::Literal { len: 3000 }],
            data: again.clone(),
            codec: Codec::ZstdHistory,
        },
    ];
    let (patch, image) = PatchBuilder::new(parts).build(&old);
    let l = Layout::walk(&patch).expect("walks");
    assert!(
        entries(&l)[1].data_len > 3000,
        "nothing to find in an empty history"
    );
    hostile::applies_everywhere("0x01 then 0x03", &old, &patch, &image.bytes.expect("kept"));
    let counted = compress_with_prefix(&again, &x, 3);
    assert!(counted.len() < 300);
    let e = refused("0x01 data as history", &old, &with_block(&l, 1, counted));
    assert!(
        matches!(
            e,
            ApplyError::Decode { segment: 1, .. } | ApplyError::SegmentHash { segment: 1, .. }
        ),
        "{e:?}"
    );
}

/// The checked-in `data-history` vector is what it says: compact pages,
/// codec 0x03 three times, the repeat coded in a few bytes.
#[test]
fn the_data_history_vector_uses_the_history() {
    let patch = std::fs::read(root().join("spec/vectors/data-history/patch.anyp"))
        .expect("spec/vectors/data-history");
    let l = Layout::walk(&patch).expect("walks");
    assert_eq!(
        l.preamble.required_features,
        FEATURE_DATA_HISTORY | FEATURE_PACKED_OPS | FEATURE_COMPACT_PAGES
    );
    assert_eq!(l.preamble.minor, 3);
    let e = entries(&l);
    let codecs: Vec<u8> = e.iter().map(|s| s.codec).collect();
    assert_eq!(codecs, [0x03, 0x01, 0x03, 0x83]);
    assert!(
        e[2].data_len * 10 < e[0].data_len,
        "{} vs {}",
        e[2].data_len,
        e[0].data_len
    );
    assert!(l.pages.len() >= 2, "the history crosses pages");
}

/// The producer at `Level::Best` on a 24 MiB pair whose new file writes
/// two 600 KiB chunks of fresh random data at several places more than
/// 4 MiB apart: each repeat lies in another segment, beyond any one
/// segment's reach, and the data history codes it as a match.
#[test]
fn best_codes_distant_repeats_with_the_data_history() {
    let old = bytes("history-mkpatch-old", 24 * MIB);
    let mut new = old.clone();
    let chunk = 600 << 10;
    let a = noise("history-mkpatch-a", chunk);
    let b = noise("history-mkpatch-b", chunk);
    for j in 0..5 {
        let at = MIB + j * (4 * MIB + 300_000);
        new[at..at + chunk].copy_from_slice(&a);
    }
    for j in 0..4 {
        let at = 3 * MIB + j * (4 * MIB + 100_000);
        new[at..at + chunk].copy_from_slice(&b);
    }
    let patch = produce(
        &old,
        &new,
        &Options {
            threads: 2,
            ..Level::Best.options()
        },
    );
    let l = Layout::walk(&patch).expect("walks");
    let history = entries(&l)
        .iter()
        .filter(|s| s.codec & !PACKED_OPS == Codec::ZstdHistory as u8)
        .count();
    assert!(
        history > 0,
        "best uses no codec 0x03 segment ({} bytes)",
        patch.len()
    );
    assert!(l.preamble.required_features & FEATURE_DATA_HISTORY != 0);
    // Nine chunks of random data, two of them distinct: the patch holds
    // about two, not nine.
    assert!(
        patch.len() < 3 * chunk,
        "{} bytes for 2 distinct chunks of {chunk}",
        patch.len()
    );
    let r = reference::apply(&old, &patch).expect("reference");
    assert!(r == new, "the reference's result differs");
    let got = apply_in_memory(&old, &patch, Config::new(old.len() as u64), MIB).expect("engine");
    assert!(got.target == new, "the engine's result differs");
}
