//! Packed ops (format 1.1, bit 0x80 of a segment's codec byte): round trips
//! through the engine and the reference applier, alone and together with
//! codec 0x02, from the builder and from the producer (which, writing
//! compact pages, packs only ops blocks above 16 KiB); and
//! every way a packed ops block can be wrong: without `FEATURE_PACKED_OPS`,
//! a frame that does not decode, declares no or a wrong content size, has a
//! window above `MAX_ZSTD_WINDOW` or bytes after it, decoded ops that are
//! empty, above `MAX_OPS_LEN` or invalid, and unknown codecs with the bit.
//! Also: in-place applies and resumes still work, and a resumed apply does
//! not unpack the ops of a segment it skips.

use anypatch_apply::{ApplyError, Config, ErrorClass};
use anypatch_format::{
    Codec, Extent, FormatError, Op, PrefixRef, FEATURE_COMPACT_PAGES, FEATURE_OLD_PREFIX,
    FEATURE_PACKED_OPS, MAX_OPS_LEN, PACKED_OPS,
};
use anypatch_producer::{Level, Options};
use anypatch_tests::builder::{pack_ops, Part, PatchBuilder};
use anypatch_tests::hostile::{drive, in_place_passes, produce, Layout};
use anypatch_tests::{apply_in_memory, drive_memory, reference, vectors::bytes};
use zstd::zstd_safe::{CCtx, CParameter};

/// The ops of the segment in [`one_segment`], which starts at new offset
/// 100 and produces 2805 bytes from 2300 data bytes.
fn hostile_ops() -> Vec<Op> {
    vec![
        Op::Literal { len: 2000 },
        Op::Copy {
            len: 500,
            delta: 10,
        },
        Op::Zero { len: 5 },
        Op::Delta {
            len: 300,
            delta: -50,
        },
    ]
}

fn encode(ops: &[Op]) -> Vec<u8> {
    let mut b = Vec::new();
    for op in ops {
        op.emit(&mut b);
    }
    b
}

/// A small patch with one packed zstd segment at new offset 100, and its old file.
fn one_segment() -> (Vec<u8>, Layout) {
    let old = bytes("packed-hostile-old", 8192);
    let mut data = old[1000..3000].to_vec();
    data.extend_from_slice(&[3; 300]);
    let parts = vec![
        Part::Copy { len: 100, delta: 0 },
        Part::Segment {
            ops: hostile_ops(),
            data,
            codec: Codec::Zstd,
        }
        .packed(),
    ];
    let patch = PatchBuilder::new(parts).build(&old).0;
    (old, Layout::walk(&patch).expect("walks"))
}

/// `l` with the segment's ops block (as written, packed or not) replaced by `ops_block`.
fn with_ops(l: &Layout, ops_block: &[u8]) -> Vec<u8> {
    let mut l = l.clone();
    let (page, payloads) = &mut l.pages[0];
    let Some(Extent::Data(s)) = page.extents.last_mut() else {
        unreachable!("the last extent is the segment")
    };
    let data = payloads[0][s.ops_len as usize..].to_vec();
    s.ops_len = ops_block.len() as u32;
    payloads[0] = [ops_block, &data[..]].concat();
    l.emit()
}

/// The engine (fresh and in place) and the reference both refuse `patch`;
/// returns the engine's error.
fn refused(what: &str, old: &[u8], patch: &[u8]) -> ApplyError {
    assert!(
        reference::apply(old, patch).is_err(),
        "{what}: the reference accepts it"
    );
    let (verify, _) = in_place_passes(old.len() as u64);
    let e = drive(old, patch, verify, 777, &mut Vec::new())
        .expect_err(&format!("{what}: in place accepts it"));
    let fresh = drive(
        old,
        patch,
        Config::new(old.len() as u64),
        777,
        &mut Vec::new(),
    )
    .expect_err(&format!("{what}: accepted"));
    if !matches!(e, ApplyError::NotInPlaceSafe { .. }) {
        assert_eq!(e, fresh, "{what}: in place and fresh disagree");
    }
    fresh
}

/// The engine at several feed sizes and the reference give the same bytes.
fn applies_everywhere(what: &str, old: &[u8], patch: &[u8], new: &[u8]) {
    let r = reference::apply(old, patch).unwrap_or_else(|e| panic!("{what}: reference: {e}"));
    assert!(r == new, "{what}: the reference's result differs");
    for feed in [1, 4096, patch.len()] {
        if feed == 1 && patch.len() > 200_000 {
            continue;
        }
        let got = apply_in_memory(old, patch, Config::new(old.len() as u64), feed)
            .unwrap_or_else(|e| panic!("{what}: engine, fed {feed}: {e}"));
        assert!(
            got.target == new,
            "{what}: engine result differs, fed {feed}"
        );
    }
}

/// A zstd frame of `content` without its content size.
fn frame_without_size(content: &[u8]) -> Vec<u8> {
    let mut c = CCtx::create();
    c.set_parameter(CParameter::ContentSizeFlag(false))
        .expect("parameter");
    let mut out = Vec::with_capacity(content.len() + 64);
    c.compress2(&mut out, content).expect("compress");
    assert!(
        matches!(zstd::zstd_safe::get_frame_content_size(&out), Ok(None)),
        "the frame must not declare its size"
    );
    out
}

/// A hand-made frame: descriptor and window bytes, a 4-byte content size
/// field saying `declared`, and one raw block of `content`.
fn raw_frame(window: u8, declared: usize, content: &[u8]) -> Vec<u8> {
    let mut f = vec![0x28, 0xB5, 0x2F, 0xFD, 0x80, window];
    f.extend_from_slice(&(declared as u32).to_le_bytes());
    let header = 1 | (content.len() as u32) << 3; // last block, raw
    f.extend_from_slice(&header.to_le_bytes()[..3]);
    f.extend_from_slice(content);
    f
}

#[test]
fn packed_segments_apply_in_the_engine_and_the_reference() {
    let old = bytes("packed-old", 300_000);
    let mut edited = old[50_000..80_000].to_vec();
    for at in (0..edited.len()).step_by(1000) {
        edited[at] ^= 0x5A;
    }
    // Many small ops, as scattered edits make: packing shrinks them.
    let mut scattered = Vec::new();
    for i in 0..400u32 {
        scattered.push(Op::Copy {
            len: 90,
            delta: i64::from(i) * 3,
        });
        scattered.push(Op::Literal { len: 10 });
    }
    let literals = bytes("packed-literals", 4000);
    let parts = vec![
        Part::Copy {
            len: 10_000,
            delta: 0,
        },
        Part::Segment {
            ops: scattered.clone(),
            data: literals.clone(),
            codec: Codec::Zstd,
        }
        .packed(),
        Part::Zero { len: 777 },
        Part::Segment {
            ops: scattered.clone(),
            data: literals.clone(),
            codec: Codec::Stored,
        }
        .packed(),
        // Packed ops with codec 0x02: history from old bytes ahead.
        Part::PrefixSegment {
            ops: vec![
                Op::Literal { len: 20_000 },
                Op::Delta {
                    len: 10_000,
                    delta: 500,
                },
            ],
            data: edited,
            prefix: PrefixRef {
                delta: 0,
                len: 100_000,
            },
        }
        .packed(),
        // An unpacked segment in the same patch.
        Part::Segment {
            ops: vec![Op::Literal { len: 3 }],
            data: b"end".to_vec(),
            codec: Codec::Stored,
        },
    ];
    let (patch, image) = PatchBuilder::new(parts).build(&old);
    let new = image.bytes.expect("kept");
    let l = Layout::walk(&patch).expect("walks");
    assert_eq!(
        l.preamble.required_features,
        FEATURE_OLD_PREFIX | FEATURE_PACKED_OPS
    );
    let codecs: Vec<u8> = l.pages[0]
        .0
        .extents
        .iter()
        .filter_map(|e| match e {
            Extent::Data(s) => Some(s.codec),
            _ => None,
        })
        .collect();
    assert_eq!(codecs, [0x81, 0x80, 0x82, 0x00]);
    let Some(Extent::Data(first)) = l.pages[0].0.extents.get(1) else {
        panic!("the second extent is a segment")
    };
    assert!(
        (first.ops_len as usize) < encode(&scattered).len() / 4,
        "800 ops packed to {} bytes",
        first.ops_len
    );
    applies_everywhere("built", &old, &patch, &new);
}

/// Segments of `patch` whose ops are (inline in their compact page, packed in their payload).
fn ops_placement(patch: &[u8]) -> (usize, usize) {
    let l = Layout::walk(patch).expect("walks");
    let entries = l.pages.iter().flat_map(|(p, _)| &p.extents);
    let (mut inline, mut packed) = (0, 0);
    for e in entries {
        if let Extent::Data(s) = e {
            inline += usize::from(s.inline_ops.is_some());
            packed += usize::from(s.codec & PACKED_OPS != 0);
        }
    }
    (inline, packed)
}

#[test]
fn the_producer_packs_only_long_ops_blocks_and_both_appliers_agree() {
    // Every level writes compact pages (format 1.2): a short ops block goes
    // inline in its page, a long one (above 16 KiB) packed in its payload.
    let old = bytes("packed-producer-old", 3 << 20);
    let edited = |step: usize| {
        let mut new = old.clone();
        for at in (1000..new.len()).step_by(step) {
            new[at..at + 3].copy_from_slice(b"xyz");
        }
        new.copy_within(100_000..200_000, 1_500_000);
        new
    };
    let (sparse, dense) = (edited(7919), edited(499));
    let patch = produce(&old, &sparse, &Options::default());
    let features = Layout::walk(&patch)
        .expect("walks")
        .preamble
        .required_features;
    assert_eq!(
        features & (FEATURE_COMPACT_PAGES | FEATURE_PACKED_OPS),
        FEATURE_COMPACT_PAGES
    );
    let (inline, packed) = ops_placement(&patch);
    assert!(
        inline > 0 && packed == 0,
        "{inline} inline, {packed} packed"
    );
    applies_everywhere("default level, sparse edits", &old, &patch, &sparse);

    let patch = produce(&old, &dense, &Options::default());
    let features = Layout::walk(&patch)
        .expect("walks")
        .preamble
        .required_features;
    assert_eq!(
        features & (FEATURE_COMPACT_PAGES | FEATURE_PACKED_OPS),
        FEATURE_COMPACT_PAGES | FEATURE_PACKED_OPS,
        "the default level packs the ops of dense edits"
    );
    let (_, packed) = ops_placement(&patch);
    assert!(packed > 0, "no packed segment");
    applies_everywhere("default level, dense edits", &old, &patch, &dense);

    // The fast level uses no 1.1 feature, only compact pages.
    let fast = produce(&old, &sparse, &Level::Fast.options());
    let l = Layout::walk(&fast).expect("walks");
    assert_eq!(l.preamble.required_features, FEATURE_COMPACT_PAGES);
    applies_everywhere("fast level", &old, &fast, &sparse);

    // In place, packed too.
    let opts = Options {
        in_place: true,
        ..Options::default()
    };
    let patch = produce(&old, &dense, &opts);
    assert!(ops_placement(&patch).1 > 0, "no packed segment in place");
    let (verify, write) = in_place_passes(old.len() as u64);
    drive(&old, &patch, verify, 1 << 16, &mut Vec::new()).expect("verify pass");
    let mut disk = Vec::with_capacity(old.len());
    drive(&old, &patch, write, 1 << 16, &mut disk).expect("write pass");
    assert!(disk == dense);
}

#[test]
fn ops_decoding_to_exactly_max_ops_len_apply() {
    let old = bytes("packed-max-old", 4096);
    let n = MAX_OPS_LEN as usize / 2; // Op::Zero { len: 1 } encodes in 2 bytes
    let parts = vec![Part::Segment {
        ops: vec![Op::Zero { len: 1 }; n],
        data: Vec::new(),
        codec: Codec::Stored,
    }
    .packed()];
    let (patch, image) = PatchBuilder::new(parts).build(&old);
    let l = Layout::walk(&patch).expect("walks");
    let Some(Extent::Data(s)) = l.pages[0].0.extents.first() else {
        panic!("one segment")
    };
    assert!(s.ops_len < 1000, "a megabyte of zero ops packs small");
    applies_everywhere("MAX_OPS_LEN", &old, &patch, &image.bytes.expect("kept"));

    // Two more bytes of ops: declared, and refused before anything is sized.
    let over = pack_ops(&encode(&vec![Op::Zero { len: 1 }; n + 1]), 3);
    let e = refused("above MAX_OPS_LEN", &old, &with_ops(&l, &over));
    assert_eq!(
        e,
        ApplyError::Format(FormatError::TooLarge {
            field: "packed ops content size",
            got: u64::from(MAX_OPS_LEN) + 2,
            max: MAX_OPS_LEN.into(),
        })
    );
    assert_eq!(e.class(), ErrorClass::CorruptPatch);
}

#[test]
fn packed_ops_need_the_feature_bit() {
    let (old, mut l) = one_segment();
    assert_eq!(l.preamble.required_features, FEATURE_PACKED_OPS);
    let p = l.clone().emit();
    drive(&old, &p, Config::new(8192), 777, &mut Vec::new()).expect("engine");
    reference::apply(&old, &p).expect("reference");
    for bits in [0, FEATURE_OLD_PREFIX] {
        l.preamble.required_features = bits;
        let e = refused(&format!("bits {bits:#x}"), &old, &l.clone().emit());
        assert_eq!(
            e,
            ApplyError::Format(FormatError::Invalid {
                field: "segment.codec",
                reason: "has bit 0x80 (packed ops), but required_features lacks FEATURE_PACKED_OPS (0x2)",
            })
        );
        assert_eq!(e.class(), ErrorClass::CorruptPatch);
        assert!(e.to_string().contains("FEATURE_PACKED_OPS"), "{e}");
    }

    // A packed codec 0x02 segment needs both bits.
    let old = bytes("packed-prefix-bits-old", 10_000);
    let parts = vec![Part::PrefixSegment {
        ops: vec![Op::Literal { len: 1000 }],
        data: old[2000..3000].to_vec(),
        prefix: PrefixRef {
            delta: 1000,
            len: 3000,
        },
    }
    .packed()];
    let mut l = Layout::walk(&PatchBuilder::new(parts).build(&old).0).expect("walks");
    for (bits, feature) in [
        (FEATURE_OLD_PREFIX, "FEATURE_PACKED_OPS"),
        (FEATURE_PACKED_OPS, "FEATURE_OLD_PREFIX"),
    ] {
        l.preamble.required_features = bits;
        let e = refused(feature, &old, &l.clone().emit());
        assert!(
            matches!(
                e,
                ApplyError::Format(FormatError::Invalid {
                    field: "segment.codec",
                    ..
                })
            ) && e.to_string().contains(feature),
            "without {feature}: {e:?}"
        );
    }
}

#[test]
fn unknown_codecs_with_the_packed_bit_are_unsupported() {
    let (old, l) = one_segment();
    for byte in [0x84u8, 0xFF] {
        let mut m = l.clone();
        let Some(Extent::Data(s)) = m.pages[0].0.extents.last_mut() else {
            unreachable!("the last extent is the segment")
        };
        s.codec = byte;
        let e = refused(&format!("codec {byte:#x}"), &old, &m.emit());
        assert_eq!(
            e,
            ApplyError::Format(FormatError::UnknownCodec {
                got: byte & !PACKED_OPS
            })
        );
        assert_eq!(e.class(), ErrorClass::Unsupported);
    }
    // The header's codec names a data codec: the bit is not one there.
    let mut m = l.clone();
    m.header.codec = 0x81;
    let e = refused("header codec 0x81", &old, &m.emit());
    assert_eq!(
        e,
        ApplyError::Format(FormatError::UnknownCodec { got: 0x81 })
    );
}

#[test]
fn packed_frames_that_do_not_decode_are_refused() {
    let (old, l) = one_segment();
    let ops = encode(&hostile_ops());
    let good = pack_ops(&ops, 3);
    // The unchanged frame, re-packed at another level, and a hand-made one
    // with a 4 MiB window all apply.
    for (what, f) in [
        ("level 19", pack_ops(&ops, 19)),
        ("4 MiB window", raw_frame(0x60, ops.len(), &ops)),
    ] {
        let p = with_ops(&l, &f);
        drive(&old, &p, Config::new(8192), 777, &mut Vec::new())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        reference::apply(&old, &p).unwrap_or_else(|e| panic!("{what}: reference: {e}"));
    }
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xFF;
    let cases = [
        ("not a frame", ops.clone()),
        ("cut frame", good[..good.len() - 1].to_vec()),
        ("trailing byte", [&good[..], &[0]].concat()),
        ("two frames", [&good[..], &good[..]].concat()),
        ("8 MiB window", raw_frame(0x68, ops.len(), &ops)),
        (
            "decodes to more than declared",
            raw_frame(0x50, ops.len() - 1, &ops),
        ),
        (
            "decodes to less than declared",
            raw_frame(0x50, ops.len() + 1, &ops),
        ),
        ("names a dictionary", {
            // Single segment, dictionary id 1 (one byte), content size (one byte).
            let mut f = vec![0x28, 0xB5, 0x2F, 0xFD, 0x21, 0x01, ops.len() as u8];
            let header = 1 | (ops.len() as u32) << 3;
            f.extend_from_slice(&header.to_le_bytes()[..3]);
            f.extend_from_slice(&ops);
            f
        }),
    ];
    for (what, f) in cases {
        let e = refused(what, &old, &with_ops(&l, &f));
        assert!(matches!(e, ApplyError::Decode { segment: 0, .. }), "{what}");
    }
    // A corrupted frame: refused, as a decode error or as ops that do not check.
    let e = refused("flipped byte", &old, &with_ops(&l, &flipped));
    assert_eq!(e.class(), ErrorClass::CorruptPatch, "{e:?}");
}

#[test]
fn packed_frames_must_declare_a_content_size() {
    let (old, l) = one_segment();
    let ops = encode(&hostile_ops());
    let want = ApplyError::Format(FormatError::Invalid {
        field: "packed ops frame",
        reason: "declares no content size, or 0; it must declare the ops block's length",
    });
    for (what, f) in [
        ("no content size", frame_without_size(&ops)),
        ("content size 0", pack_ops(&[], 3)),
    ] {
        let e = refused(what, &old, &with_ops(&l, &f));
        assert_eq!(e, want, "{what}");
        assert_eq!(e.class(), ErrorClass::CorruptPatch);
    }
}

#[test]
fn packed_ops_are_checked_like_plain_ones() {
    let (old, l) = one_segment();
    let mut zero_len = encode(&[Op::Literal { len: 0 }]);
    zero_len.extend(encode(&hostile_ops()));
    let mut short = hostile_ops();
    short[2] = Op::Zero { len: 4 };
    let mut long = hostile_ops();
    long.push(Op::Zero { len: 1 });
    let out_of_range = vec![
        Op::Literal { len: 2000 },
        Op::Copy {
            len: 505,
            delta: 6000,
        },
        Op::Delta {
            len: 300,
            delta: -50,
        },
    ];
    let cases: [(&str, Vec<u8>, ApplyError); 5] = [
        (
            "zero-length op",
            zero_len,
            FormatError::ZeroLength { field: "op.len" }.into(),
        ),
        (
            "ops that do not decode",
            [&encode(&hostile_ops())[..], &[0x07]].concat(),
            FormatError::Malformed { what: "ops block" }.into(),
        ),
        (
            "ops one byte short",
            encode(&short),
            ApplyError::LengthMismatch {
                field: "sum of op lengths",
                got: 2804,
                expected: 2805,
            },
        ),
        (
            "ops one byte long",
            encode(&long),
            ApplyError::LengthMismatch {
                field: "sum of op lengths",
                got: 2806,
                expected: 2805,
            },
        ),
        (
            "copy outside the old file",
            encode(&out_of_range),
            ApplyError::SourceOutOfRange {
                new_offset: 2100,
                source: 8100,
                len: 505,
                old_len: 8192,
            },
        ),
    ];
    for (what, ops, want) in cases {
        // Packed and plain, the same error.
        let mut plain = l.clone();
        let Some(Extent::Data(s)) = plain.pages[0].0.extents.last_mut() else {
            unreachable!("the last extent is the segment")
        };
        s.codec &= !PACKED_OPS;
        for (how, layout, block) in [
            ("packed", &l, pack_ops(&ops, 3)),
            ("plain", &plain, ops.clone()),
        ] {
            let e = refused(&format!("{what}, {how}"), &old, &with_ops(layout, &block));
            assert_eq!(e, want, "{what}, {how}");
        }
    }
}

#[test]
fn packed_segments_apply_in_place_and_resume() {
    let old = bytes("packed-resume-old", 100_000);
    // Three packed segments, each reading only old bytes at or after its start.
    let seg = |at: usize, prefix: bool| {
        let ops = vec![
            Op::Copy {
                len: 4000,
                delta: 17,
            },
            Op::Literal { len: 6000 },
        ];
        let data = old[at + 5003..at + 11_003].to_vec();
        if prefix {
            Part::PrefixSegment {
                ops,
                data,
                prefix: PrefixRef {
                    delta: 1000,
                    len: 20_000,
                },
            }
            .packed()
        } else {
            Part::Segment {
                ops,
                data,
                codec: Codec::Zstd,
            }
            .packed()
        }
    };
    let parts = vec![seg(0, false), seg(10_000, true), seg(20_000, false)];
    let (patch, image) = PatchBuilder::new(parts).build(&old);
    let new = image.bytes.expect("kept");
    let (verify, write) = in_place_passes(old.len() as u64);
    drive(&old, &patch, verify, 4096, &mut Vec::new()).expect("in-place safe");
    let mut disk = old.clone();
    let run = drive_memory(None, &mut disk, &patch, write, 4096, usize::MAX).expect("write");
    assert_eq!(run.write_ends, [10_000, 20_000, 30_000]);
    disk.truncate(new.len());
    assert!(disk == new);

    // Killed after the first segment's write, then resumed.
    let mut disk = old.clone();
    let killed = drive_memory(None, &mut disk, &patch, write, 4096, 1).expect("first write");
    assert_eq!(killed.write_ends, [10_000]);
    let resume = Config {
        resume_from: 10_000,
        ..write
    };
    let mut resumed = disk.clone();
    let run = drive_memory(None, &mut resumed, &patch, resume, 4096, usize::MAX).expect("resume");
    assert_eq!(run.write_ends, [20_000, 30_000]);
    resumed.truncate(new.len());
    assert!(resumed == new);

    // A resumed apply only reads and hashes a skipped segment's payload: it
    // does not unpack its ops. With that frame spoiled (and the trailer
    // resealed), the resumed apply still finishes, while a full pass, such
    // as the verify pass every in-place apply starts with, refuses it.
    let mut l = Layout::walk(&patch).expect("walks");
    let Some(Extent::Data(s)) = l.pages[0].0.extents.first() else {
        unreachable!("the first extent is a segment")
    };
    let n = s.ops_len as usize;
    l.pages[0].1[0][..n].fill(0xEE);
    let spoiled = l.emit();
    let e = drive(&old, &spoiled, verify, 4096, &mut Vec::new()).expect_err("verify refuses");
    assert!(matches!(e, ApplyError::Decode { segment: 0, .. }), "{e:?}");
    drive_memory(None, &mut disk, &spoiled, resume, 4096, usize::MAX)
        .expect("the skipped segment is not unpacked");
    disk.truncate(new.len());
    assert!(disk == new);
}
