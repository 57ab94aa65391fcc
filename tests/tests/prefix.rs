//! Codec 0x02, zstd with old bytes as history (format 1.1): round trips
//! through the engine and the reference applier, and every way a prefix can
//! be wrong: outside the old file, empty or above `MAX_PREFIX_LEN`, before
//! the segment in place, without `FEATURE_OLD_PREFIX`, or with a frame the
//! codec does not allow. Also: 1.0 patches still apply, unknown feature bits
//! are still refused, and a resumed in-place apply does not read the prefix
//! of a segment it skips.

use anypatch_apply::{ApplyError, Config, ErrorClass, ZstdError};
use anypatch_format::{
    header_hash, Codec, Extent, FormatError, Op, PrefixRef, Trailer, FEATURE_OLD_PREFIX, HASH_LEN,
    KNOWN_REQUIRED_FEATURES, MAX_PREFIX_LEN, PREAMBLE_LEN, TRAILER_LEN,
};
use anypatch_tests::builder::{compress_with_prefix, Part, PatchBuilder};
use anypatch_tests::hostile::{drive, in_place_passes, Layout};
use anypatch_tests::{apply_in_memory, drive_memory, reference, vectors::bytes};

const MIB: usize = 1 << 20;

/// An old file of 6 MiB and three prefix segments: 4 MiB of edited old
/// bytes with the largest prefix, ahead of its start (in-place safe); one
/// with a prefix behind its start; and 1 MiB of edited old bytes whose
/// 2 MiB prefix holds them (prefix and segment fit the 4 MiB window).
fn big_pair() -> (Vec<u8>, PatchBuilder) {
    let old = bytes("prefix-old", 6 * MIB);
    let mut first = old[MIB..5 * MIB].to_vec();
    for at in (0..first.len()).step_by(50_000) {
        first[at..at + 8].copy_from_slice(b"changed!");
    }
    let mut second = old[100_000..1_100_000].to_vec();
    second.reverse();
    let mut third = old[2 * MIB..3 * MIB].to_vec();
    for at in (0..third.len()).step_by(40_000) {
        third[at] ^= 0x55;
    }
    let third_start = 4 * MIB + 1_001_000;
    let parts = vec![
        Part::PrefixSegment {
            ops: vec![Op::Literal {
                len: first.len() as u32,
            }],
            data: first,
            prefix: PrefixRef {
                delta: MIB as i64,
                len: MAX_PREFIX_LEN,
            },
        },
        Part::PrefixSegment {
            ops: vec![
                Op::Literal { len: 600_000 },
                Op::Copy {
                    len: 1000,
                    delta: -7,
                },
                Op::Delta {
                    len: 400_000,
                    delta: 10,
                },
            ],
            data: second,
            prefix: PrefixRef {
                delta: -(4 * MIB as i64),
                len: 1_500_000,
            },
        },
        Part::PrefixSegment {
            ops: vec![Op::Literal {
                len: third.len() as u32,
            }],
            data: third,
            prefix: PrefixRef {
                delta: (3 * MIB / 2) as i64 - third_start as i64,
                len: 2 * MIB as u32,
            },
        },
        Part::Copy {
            len: 1000,
            delta: -5000,
        },
    ];
    (old, PatchBuilder::new(parts))
}

#[test]
fn prefix_segments_apply_in_the_engine_and_the_reference() {
    let (old, b) = big_pair();
    let (patch, image) = b.build(&old);
    let new = image.bytes.clone().expect("small enough to keep");
    let l = Layout::walk(&patch).expect("walks");
    assert_eq!(l.preamble.required_features, FEATURE_OLD_PREFIX);
    let Some(Extent::Data(third)) = l.pages[0].0.extents.get(2) else {
        panic!("the third extent is a segment")
    };
    // Alone, its random words would need about 700 KB.
    assert!(
        third.data_len < 350_000,
        "1 MiB found in its prefix codes to {} bytes",
        third.data_len
    );
    assert!(reference::apply(&old, &patch).expect("reference") == new);
    for feed in [1, 4096, patch.len()] {
        if feed == 1 && patch.len() > 200_000 {
            continue; // byte by byte is covered by the small patches below
        }
        let r = apply_in_memory(&old, &patch, Config::new(old.len() as u64), feed)
            .expect("engine applies");
        assert!(r.target == new, "fed {feed}: engine result differs");
        assert_eq!(r.summary.new_hash, Some(image.hash()));
    }
}

#[test]
fn small_prefix_segments_apply_byte_by_byte() {
    let old = bytes("prefix-small-old", 20_000);
    let parts = vec![
        Part::Zero { len: 10 },
        Part::PrefixSegment {
            ops: vec![Op::Literal { len: 3000 }, Op::Zero { len: 5 }],
            data: old[5000..8000].to_vec(),
            prefix: PrefixRef {
                delta: 4990,
                len: 3000,
            },
        },
        Part::PrefixSegment {
            ops: vec![Op::Literal { len: 1 }],
            data: vec![7],
            prefix: PrefixRef { delta: 0, len: 1 },
        },
    ];
    let (patch, image) = PatchBuilder::new(parts).build(&old);
    let new = image.bytes.expect("kept");
    assert!(reference::apply(&old, &patch).expect("reference") == new);
    let r = apply_in_memory(&old, &patch, Config::new(old.len() as u64), 1).expect("engine");
    assert!(r.target == new);
}

#[test]
fn in_place_applies_prefixes_ahead_and_refuses_prefixes_behind() {
    let (old, b) = big_pair();
    // The first segment only: its prefix starts after the segment's start.
    let ahead = PatchBuilder::new(b.parts[..1].to_vec());
    let (patch, image) = ahead.build(&old);
    let new = image.bytes.expect("kept");
    let (verify, write) = in_place_passes(old.len() as u64);
    drive(&old, &patch, verify, 1 << 16, &mut Vec::new()).expect("verify pass");
    let mut disk = Vec::with_capacity(old.len());
    drive(&old, &patch, write, 1 << 16, &mut disk).expect("write pass");
    assert!(disk[..new.len()] == new[..] && disk.len() == new.len());

    // The whole patch: the second segment's prefix lies before its start.
    let (patch, _) = b.build(&old);
    let e = drive(&old, &patch, verify, 1 << 16, &mut Vec::new()).expect_err("refused");
    assert_eq!(
        e,
        ApplyError::NotInPlaceSafe {
            new_offset: 4 * MIB as u64,
            source: 0,
        }
    );
    assert_eq!(e.class(), ErrorClass::NotInPlace);
    // The same patch applies to a new file.
    drive(
        &old,
        &patch,
        Config::new(old.len() as u64),
        1 << 16,
        &mut Vec::new(),
    )
    .expect("fresh");
}

/// A small patch with one prefix segment at new offset 100, and its old file.
fn one_segment() -> (Vec<u8>, Layout) {
    let old = bytes("prefix-hostile-old", 8192);
    let parts = vec![
        Part::Copy { len: 100, delta: 0 },
        Part::PrefixSegment {
            ops: vec![Op::Literal { len: 2000 }],
            data: old[1000..3000].to_vec(),
            prefix: PrefixRef {
                delta: 500,
                len: 4000,
            },
        },
    ];
    let patch = PatchBuilder::new(parts).build(&old).0;
    (old, Layout::walk(&patch).expect("walks"))
}

/// `l` with the segment's data block replaced by `block`.
fn with_block(l: &Layout, block: Vec<u8>) -> Vec<u8> {
    let mut l = l.clone();
    let (page, payloads) = &mut l.pages[0];
    let Some(Extent::Data(s)) = page.extents.last_mut() else {
        unreachable!("the last extent is the segment")
    };
    let ops = payloads[0][..s.ops_len as usize].to_vec();
    s.data_len = block.len() as u32;
    payloads[0] = [ops, block].concat();
    l.emit()
}

/// The segment's data block: its prefix ref, then the frame.
fn block(prefix: PrefixRef, frame: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    prefix.emit(&mut b);
    b.extend_from_slice(frame);
    b
}

/// The engine (fresh and in place) and the reference both refuse `patch`;
/// returns the engine's error.
fn refused(what: &str, old: &[u8], patch: &[u8]) -> ApplyError {
    assert!(
        reference::apply(old, patch).is_err(),
        "{what}: the reference accepts it"
    );
    let (verify, _) = in_place_passes(old.len() as u64);
    drive(old, patch, verify, 777, &mut Vec::new())
        .expect_err(&format!("{what}: in place accepts it"));
    drive(
        old,
        patch,
        Config::new(old.len() as u64),
        777,
        &mut Vec::new(),
    )
    .expect_err(&format!("{what}: accepted"))
}

#[test]
fn the_unchanged_hostile_base_applies() {
    let (old, l) = one_segment();
    let patch = l.clone().emit();
    reference::apply(&old, &patch).expect("reference");
    drive(&old, &patch, Config::new(8192), 777, &mut Vec::new()).expect("engine");
    // The same frame behind a reencoded, equal prefix ref still applies.
    let frame = compress_with_prefix(&old[1000..3000], &old[600..4600], 3);
    let p = with_block(
        &l,
        block(
            PrefixRef {
                delta: 500,
                len: 4000,
            },
            &frame,
        ),
    );
    drive(&old, &p, Config::new(8192), 777, &mut Vec::new()).expect("engine");
}

#[test]
fn prefixes_outside_the_old_file_are_refused() {
    let (old, l) = one_segment();
    let frame = compress_with_prefix(&old[1000..3000], &old[600..4600], 3);
    // The segment starts at new offset 100.
    for (delta, len) in [
        (-101, 10),
        (-200, 4000),
        (8092 - 3999, 4000),
        (8000, 193),
        (i64::MAX, 1),
        (i64::MIN, 1),
    ] {
        let source = 100 + i128::from(delta);
        let p = with_block(&l, block(PrefixRef { delta, len }, &frame));
        let e = refused(&format!("prefix {delta} + {len}"), &old, &p);
        assert_eq!(
            e,
            ApplyError::SourceOutOfRange {
                new_offset: 100,
                source,
                len: len.into(),
                old_len: 8192,
            },
            "delta {delta}"
        );
        assert_eq!(e.class(), ErrorClass::CorruptPatch);
    }
    // The last byte of the old file is inside.
    let ok = with_block(
        &l,
        block(
            PrefixRef {
                delta: 8092 - 4000,
                len: 4000,
            },
            &compress_with_prefix(&old[1000..3000], &old[4192..], 3),
        ),
    );
    drive(&old, &ok, Config::new(8192), 777, &mut Vec::new()).expect("a prefix ending at old_len");
    reference::apply(&old, &ok).expect("reference");
}

#[test]
fn empty_and_oversized_prefixes_are_refused() {
    let (old, l) = one_segment();
    let frame = compress_with_prefix(&old[1000..3000], &old[600..4600], 3);
    let zero = with_block(&l, block(PrefixRef { delta: 0, len: 0 }, &frame));
    assert_eq!(
        refused("len 0", &old, &zero),
        ApplyError::Format(FormatError::ZeroLength {
            field: "prefix.len"
        })
    );
    let over = with_block(
        &l,
        block(
            PrefixRef {
                delta: 0,
                len: MAX_PREFIX_LEN + 1,
            },
            &frame,
        ),
    );
    assert_eq!(
        refused("len above the limit", &old, &over),
        ApplyError::Format(FormatError::TooLarge {
            field: "prefix.len",
            got: u64::from(MAX_PREFIX_LEN) + 1,
            max: MAX_PREFIX_LEN.into(),
        })
    );
    // A prefix ref that does not decode: a varint cut short, nothing at all.
    for (what, b) in [("cut varint", vec![0x00, 0x80]), ("empty block", vec![])] {
        let p = with_block(&l, b);
        assert_eq!(
            refused(what, &old, &p),
            ApplyError::Format(FormatError::Malformed { what: "prefix ref" }),
            "{what}"
        );
    }
}

#[test]
fn codec_2_needs_the_feature_bit() {
    let (old, mut l) = one_segment();
    l.preamble.required_features = 0;
    let e = refused("no feature bit", &old, &l.clone().emit());
    assert_eq!(
        e,
        ApplyError::Format(FormatError::Invalid {
            field: "segment.codec",
            reason: "is 0x02 (zstd with an old prefix), but required_features lacks FEATURE_OLD_PREFIX (0x1)",
        })
    );
    assert_eq!(e.class(), ErrorClass::CorruptPatch);
    assert!(e.to_string().contains("FEATURE_OLD_PREFIX"), "{e}");

    // In the header too: a patch without the bit may not name codec 2.
    let (old, plain) = {
        let old = bytes("prefix-header-old", 4096);
        let parts = vec![Part::Copy {
            len: 4096,
            delta: 0,
        }];
        let patch = PatchBuilder::new(parts).build(&old).0;
        (old, Layout::walk(&patch).expect("walks"))
    };
    let mut h2 = plain.clone();
    h2.header.codec = Codec::ZstdPrefix as u8;
    let e = refused("header codec 2 without the bit", &old, &h2.clone().emit());
    assert!(
        matches!(
            e,
            ApplyError::Format(FormatError::Invalid { field: "codec", .. })
        ),
        "{e:?}"
    );
    // With the bit, a header may name codec 2 (informational).
    h2.preamble.required_features = FEATURE_OLD_PREFIX;
    let p = h2.emit();
    drive(&old, &p, Config::new(4096), 100, &mut Vec::new()).expect("engine");
    reference::apply(&old, &p).expect("reference");
}

#[test]
fn unknown_feature_bits_are_still_refused() {
    let (old, l) = one_segment();
    let unknown = !KNOWN_REQUIRED_FEATURES;
    let lowest = unknown & unknown.wrapping_neg();
    for bits in [
        lowest,
        lowest | FEATURE_OLD_PREFIX,
        0x8000_0000,
        0xFFFF_FFFF,
    ] {
        let mut x = l.clone();
        x.preamble.required_features = bits;
        let p = x.emit();
        let e = refused(&format!("bits {bits:#x}"), &old, &p);
        assert_eq!(
            e,
            ApplyError::Format(FormatError::UnknownRequiredFeatures {
                bits: bits & unknown
            })
        );
        assert_eq!(e.class(), ErrorClass::Unsupported);
    }
}

/// Hand-made frames: raw blocks after a header that sets the window and
/// whether a dictionary id follows.
fn frame(descriptor: u8, window: u8, dict_id: &[u8], content: &[u8]) -> Vec<u8> {
    let mut f = vec![0x28, 0xB5, 0x2F, 0xFD, descriptor, window];
    f.extend_from_slice(dict_id);
    let header = 1 | (content.len() as u32) << 3; // last block, raw
    f.extend_from_slice(&header.to_le_bytes()[..3]);
    f.extend_from_slice(content);
    f
}

#[test]
fn prefix_frames_keep_the_zstd_rules() {
    let (old, l) = one_segment();
    let want = &old[1000..3000];
    let r = PrefixRef {
        delta: 500,
        len: 4000,
    };
    // A 4 MiB window is allowed, 8 MiB is not.
    let ok = with_block(&l, block(r, &frame(0x00, 0x60, &[], want)));
    drive(&old, &ok, Config::new(8192), 777, &mut Vec::new()).expect("4 MiB window");
    reference::apply(&old, &ok).expect("reference, 4 MiB window");
    let wide = with_block(&l, block(r, &frame(0x00, 0x68, &[], want)));
    let e = refused("8 MiB window", &old, &wide);
    assert_eq!(
        e,
        ApplyError::Decode {
            segment: 0,
            why: ZstdError::Header
        }
    );
    // A frame that names a dictionary, whatever its id.
    for id in [1u8, 2, 0xFF] {
        let named = with_block(&l, block(r, &frame(0x01, 0x60, &[id], want)));
        let e = refused(&format!("dictionary id {id}"), &old, &named);
        assert_eq!(
            e,
            ApplyError::Decode {
                segment: 0,
                why: ZstdError::Header
            }
        );
    }
    // Bytes after the frame, a second frame, a frame cut short.
    let good = compress_with_prefix(want, &old[600..4600], 3);
    for (what, f) in [
        ("trailing byte", [&good[..], &[0]].concat()),
        ("two frames", [&good[..], &good[..]].concat()),
        ("cut frame", good[..good.len() - 1].to_vec()),
    ] {
        let p = with_block(&l, block(r, &f));
        let e = refused(what, &old, &p);
        assert!(matches!(e, ApplyError::Decode { segment: 0, .. }), "{what}");
    }
    // The frame decoded against another prefix gives other bytes.
    let shifted = with_block(
        &l,
        block(
            PrefixRef {
                delta: 501,
                len: 4000,
            },
            &good,
        ),
    );
    let e = refused("another prefix", &old, &shifted);
    assert!(
        matches!(
            e,
            ApplyError::SegmentHash { .. } | ApplyError::Decode { .. }
        ),
        "{e:?}"
    );
}

/// A data frame, with codec 0x02 as with 0x01, must decode to the content
/// size it declares (RFC 8878), as C zstd, the reference's decoder,
/// requires: one that declares more or less than it holds is refused even
/// when what it holds is what the ops take. The engine accepted such frames
/// until the apply fuzzer found one: `fuzz/regressions/apply/`
/// `frame-declares-another-size-…`.
#[test]
fn frames_must_decode_to_the_size_they_declare() {
    let (old, l) = one_segment();
    let want = &old[1000..3000];
    let n = want.len() as u32;
    // Descriptor 0x80: a 4-byte content size field after the window byte.
    let declaring = |size: u32| {
        let mut f = frame(0x80, 0x60, &[], want);
        f.splice(6..6, size.to_le_bytes());
        f
    };
    let r = PrefixRef {
        delta: 500,
        len: 4000,
    };
    for codec in [Codec::ZstdPrefix, Codec::Zstd] {
        let mut l = l.clone();
        let Some(Extent::Data(s)) = l.pages[0].0.extents.last_mut() else {
            unreachable!("the last extent is the segment")
        };
        s.codec = codec as u8;
        let data_block = |f: &[u8]| match codec {
            Codec::ZstdPrefix => block(r, f),
            _ => f.to_vec(),
        };
        for (what, f) in [
            ("its size", declaring(n)),
            ("no size", frame(0x00, 0x60, &[], want)),
        ] {
            let p = with_block(&l, data_block(&f));
            drive(&old, &p, Config::new(8192), 777, &mut Vec::new())
                .unwrap_or_else(|e| panic!("{codec:?}, {what}: {e}"));
            reference::apply(&old, &p).unwrap_or_else(|e| panic!("{codec:?}, {what}: {e}"));
        }
        for (what, size) in [("more", n + 1), ("less", n - 1), ("0", 0)] {
            let p = with_block(&l, data_block(&declaring(size)));
            let e = refused(&format!("{codec:?} declaring {what}"), &old, &p);
            assert_eq!(
                e,
                ApplyError::Decode {
                    segment: 0,
                    why: ZstdError::ContentSize {
                        declared: size as u64,
                        expected: n as u64
                    }
                },
                "{codec:?} declaring {what}"
            );
        }
    }
}

/// Rewrites a patch's preamble minor and re-seals the header hash and trailer.
fn with_minor(patch: &[u8], minor: u16) -> Vec<u8> {
    let mut p = patch.to_vec();
    p[0x0A..0x0C].copy_from_slice(&minor.to_le_bytes());
    let header_len = u32::from_le_bytes(p[0x10..0x14].try_into().expect("4 bytes")) as usize;
    let body_end = PREAMBLE_LEN + header_len;
    let h = header_hash(&p[..PREAMBLE_LEN], &p[PREAMBLE_LEN..body_end]);
    p[body_end..body_end + HASH_LEN].copy_from_slice(&h);
    let n = p.len() - TRAILER_LEN;
    let mut t = [0u8; TRAILER_LEN];
    Trailer {
        patch_hash: *blake3::hash(&p[..n]).as_bytes(),
    }
    .emit(&mut t);
    p[n..].copy_from_slice(&t);
    p
}

#[test]
fn version_1_0_patches_still_apply() {
    let old = bytes("prefix-v10-old", 50_000);
    let mut data = old[1000..2000].to_vec();
    data[0] ^= 1;
    let parts = vec![
        Part::Segment {
            ops: vec![Op::Literal { len: 1000 }, Op::Delta { len: 10, delta: 0 }],
            data: [data, vec![1; 10]].concat(),
            codec: Codec::Zstd,
        },
        Part::Copy {
            len: 40_000,
            delta: 5000,
        },
    ];
    let (patch, image) = PatchBuilder::new(parts).build(&old);
    let new = image.bytes.expect("kept");
    assert_eq!(patch[0x0C..0x10], [0; 4], "no feature bit without codec 2");
    let v10 = with_minor(&patch, 0);
    assert_eq!(Layout::walk(&v10).expect("walks").preamble.minor, 0);
    let r = apply_in_memory(&old, &v10, Config::new(old.len() as u64), 100).expect("1.0 patch");
    assert!(r.target == new);
    assert!(reference::apply(&old, &v10).expect("reference") == new);
    // A later minor with appended header fields is read as well.
    let v12 = with_minor(&patch, 2);
    apply_in_memory(&old, &v12, Config::new(old.len() as u64), 100).expect("1.2 patch");
}

#[test]
fn a_resumed_apply_does_not_read_skipped_prefixes() {
    let old = bytes("prefix-resume-old", 100_000);
    let seg = |at: usize| Part::PrefixSegment {
        ops: vec![Op::Literal { len: 10_000 }],
        data: old[at + 3..at + 10_003].to_vec(),
        prefix: PrefixRef {
            delta: 0,
            len: 20_000,
        },
    };
    let parts = vec![seg(0), seg(10_000), seg(20_000)];
    let (patch, image) = PatchBuilder::new(parts).build(&old);
    let new = image.bytes.expect("kept");
    let (verify, write) = in_place_passes(old.len() as u64);
    drive(&old, &patch, verify, 4096, &mut Vec::new()).expect("in-place safe");
    // A full write pass reads three prefixes and writes three segments.
    let mut disk = old.clone();
    let run = drive_memory(None, &mut disk, &patch, write, 4096, usize::MAX).expect("write");
    assert_eq!(run.old_reads, 3);
    disk.truncate(new.len());
    assert!(disk == new);
    // Killed after the first segment's write, then resumed: the second and
    // third segments read their prefixes (from the half-rewritten disk,
    // where they are still old bytes); the first is skipped unread.
    let mut disk = old.clone();
    let killed = drive_memory(None, &mut disk, &patch, write, 4096, 1).expect("first write");
    assert_eq!(killed.write_ends, [10_000]);
    let resume = Config {
        resume_from: 10_000,
        ..write
    };
    let run = drive_memory(None, &mut disk, &patch, resume, 4096, usize::MAX).expect("resume");
    assert_eq!(run.old_reads, 2, "the skipped segment's prefix was read");
    assert_eq!(run.write_ends, [20_000, 30_000]);
    disk.truncate(new.len());
    assert!(disk == new);
}
