//! Compact pages (format 1.2, `FEATURE_COMPACT_PAGES`): patches from the
//! builder whose pages are each one zstd frame, with copy, zero and data
//! extents, ops inline and packed in the payload, codecs 0x00 to 0x02 and
//! several pages, applied by the engine (fresh, in place and resumed) and
//! the reference applier alike; a page of exactly `MAX_PAGE_LEN`; the
//! producer's pages, split by decoded size. And every way a compact page
//! can be wrong, each refused by both with a clear error: a frame that is
//! not zstd, declares no size, 0 or more than `MAX_PAGE_LEN`, decodes to
//! more or less than it declares, names a dictionary, has a window above
//! `MAX_ZSTD_WINDOW` or bytes after it; content with truncated inline ops
//! or trailing bytes; packed ops without `FEATURE_PACKED_OPS`; compact
//! pages without the feature bit and plain ones with it; and a flipped bit
//! in a 16-byte segment hash. The engine's memory on the worst-case compact
//! patch is measured in `mutations.rs`, with the other worst cases.

use anypatch_apply::{ApplyError, Config, ErrorClass};
use anypatch_format::{
    Codec, Extent, FormatError, Op, Page, PrefixRef, FEATURE_COMPACT_PAGES, FEATURE_OLD_PREFIX,
    FEATURE_PACKED_OPS, MAX_PAGE_LEN, PACKED_OPS, SHORT_HASH_LEN,
};
use anypatch_producer::Options;
use anypatch_tests::builder::{compress_page, stored_frame, PageFrame, Part, PatchBuilder};
use anypatch_tests::hostile::{
    applies_everywhere, drive, in_place_passes, produce, refused_everywhere as refused, Layout,
};
use anypatch_tests::{apply_in_memory, drive_memory, reference, vectors::bytes};

/// Every data entry of a walked patch, in order.
fn entries(l: &Layout) -> Vec<anypatch_format::SegmentEntry> {
    l.pages
        .iter()
        .flat_map(|(p, _)| &p.extents)
        .filter_map(|e| match e {
            Extent::Data(s) => Some(*s),
            _ => None,
        })
        .collect()
}

/// The old file of [`hostile`]'s patches.
fn hostile_old() -> Vec<u8> {
    bytes("compact-hostile-old", 8192)
}

/// A small compact patch over [`hostile_old`], its one page turned into
/// bytes by `frame`: a copy, a zero run, a zstd segment with inline ops and
/// a stored one with packed ops.
fn hostile(frame: PageFrame) -> Vec<u8> {
    let old = hostile_old();
    let mut b = PatchBuilder::new(vec![
        Part::Copy {
            len: 1000,
            delta: 0,
        },
        Part::Zero { len: 50 },
        Part::Segment {
            ops: vec![
                Op::Literal { len: 40 },
                Op::Copy {
                    len: 300,
                    delta: 2000,
                },
            ],
            data: bytes("compact-hostile-lit", 40),
            codec: Codec::Zstd,
        },
        Part::Segment {
            ops: vec![Op::Delta {
                len: 100,
                delta: 500,
            }],
            data: vec![1; 100],
            codec: Codec::Stored,
        }
        .packed(),
    ]);
    b.compact = Some(frame);
    b.build(&old).0
}

/// The offset of the first inline ops block in a compact page's content.
fn first_inline(content: &[u8]) -> usize {
    let page = Page::parse_compact(content).expect("the builder's content parses");
    page.extents
        .iter()
        .find_map(|e| match e {
            Extent::Data(s) => s.inline_ops,
            _ => None,
        })
        .expect("a segment with inline ops") as usize
}

#[test]
fn compact_patches_apply_in_the_engine_and_the_reference() {
    let old = bytes("compact-old", 200_000);
    let mut ahead = old[60_000..90_000].to_vec();
    for at in (0..ahead.len()).step_by(997) {
        ahead[at] ^= 0x33;
    }
    let mut scattered = Vec::new();
    for i in 0..300u32 {
        scattered.push(Op::Copy {
            len: 40,
            delta: i64::from(i % 7) * 11,
        });
        scattered.push(Op::Literal { len: 3 });
    }
    let every_op = vec![
        Op::Copy {
            len: 700,
            delta: -5000,
        },
        Op::Literal { len: 100 },
        Op::Delta {
            len: 400,
            delta: 123,
        },
        Op::Zero { len: 77 },
    ];
    let data: Vec<u8> = (0..500u32).map(|i| (i % 13) as u8).collect();
    let parts = vec![
        Part::Copy {
            len: 20_000,
            delta: 0,
        },
        Part::Segment {
            ops: every_op.clone(),
            data: data.clone(),
            codec: Codec::Zstd,
        },
        Part::Zero { len: 4321 },
        Part::Segment {
            ops: every_op,
            data,
            codec: Codec::Stored,
        },
        Part::Copy {
            len: 9000,
            delta: 30_000,
        },
        Part::Segment {
            ops: scattered.clone(),
            data: bytes("compact-literals", 900),
            codec: Codec::Zstd,
        }
        .packed(),
        // Codec 0x02 with inline ops, and with packed ones.
        Part::PrefixSegment {
            ops: vec![Op::Literal { len: 30_000 }],
            data: ahead.clone(),
            prefix: PrefixRef {
                delta: 20_000,
                len: 40_000,
            },
        },
        Part::PrefixSegment {
            ops: vec![
                Op::Literal { len: 10_000 },
                Op::Delta {
                    len: 5000,
                    delta: -1000,
                },
            ],
            data: [&ahead[..10_000], &[7; 5000][..]].concat(),
            prefix: PrefixRef {
                delta: -30_000,
                len: 35_000,
            },
        }
        .packed(),
        Part::Segment {
            ops: scattered,
            data: bytes("compact-literals-2", 900),
            codec: Codec::Stored,
        }
        .packed(),
        Part::Copy {
            len: 1000,
            delta: -70_000,
        },
    ];
    for per_page in [4096, 3, 1] {
        let mut b = PatchBuilder::new(parts.clone()).compact();
        b.extents_per_page = per_page;
        let (patch, image) = b.build(&old);
        let new = image.bytes.expect("kept");
        let l = Layout::walk(&patch).expect("walks");
        assert_eq!(
            l.preamble.required_features,
            FEATURE_COMPACT_PAGES | FEATURE_PACKED_OPS | FEATURE_OLD_PREFIX
        );
        assert_eq!(l.pages.len(), parts.len().div_ceil(per_page));
        let placement: Vec<(u8, bool)> = entries(&l)
            .iter()
            .map(|s| (s.codec, s.inline_ops.is_some()))
            .collect();
        assert_eq!(
            placement,
            [
                (0x01, true),
                (0x00, true),
                (0x81, false),
                (0x02, true),
                (0x82, false),
                (0x80, false)
            ]
        );
        // A compact page carries 16 bytes of each segment's hash.
        for s in entries(&l) {
            assert_eq!(s.hash[SHORT_HASH_LEN..], [0; 32 - SHORT_HASH_LEN]);
        }
        applies_everywhere(&format!("{per_page} per page"), &old, &patch, &new);
    }
}

#[test]
fn compact_patches_apply_in_place_and_resume() {
    let old = bytes("compact-resume-old", 60_000);
    // Three segments, each reading only old bytes at or after its start:
    // ops inline, packed, and inline with codec 0x02.
    let ops = || {
        vec![
            Op::Copy {
                len: 4000,
                delta: 17,
            },
            Op::Literal { len: 6000 },
        ]
    };
    let data = |at: usize| old[at + 5003..at + 11_003].to_vec();
    let parts = vec![
        Part::Segment {
            ops: ops(),
            data: data(0),
            codec: Codec::Zstd,
        },
        Part::Segment {
            ops: ops(),
            data: data(10_000),
            codec: Codec::Zstd,
        }
        .packed(),
        Part::PrefixSegment {
            ops: ops(),
            data: data(20_000),
            prefix: PrefixRef {
                delta: 1000,
                len: 20_000,
            },
        },
    ];
    let mut b = PatchBuilder::new(parts).compact();
    b.extents_per_page = 2;
    let (patch, image) = b.build(&old);
    let new = image.bytes.expect("kept");
    applies_everywhere("in place", &old, &patch, &new);
    let (_, write) = in_place_passes(old.len() as u64);
    for (killed_after, resume_from, left) in [(1, 10_000, 2), (2, 20_000, 1)] {
        let mut disk = old.clone();
        let killed =
            drive_memory(None, &mut disk, &patch, write, 4096, killed_after).expect("writes");
        assert_eq!(killed.write_ends.last(), Some(&resume_from));
        let resume = Config {
            resume_from,
            ..write
        };
        let run = drive_memory(None, &mut disk, &patch, resume, 4096, usize::MAX).expect("resume");
        assert_eq!(run.write_ends.len(), left);
        disk.truncate(new.len());
        assert!(disk == new, "resumed from {resume_from}");
    }
}

#[test]
fn a_page_of_exactly_max_page_len_applies_and_one_more_byte_is_refused() {
    let old = hostile_old();
    // One segment of 2-byte zero ops and one 3-byte one: the content is
    // count 1, tag 1, new_len 3, codec 1, ops_len 3, the ops, data_len 1,
    // hash 16 and next 1 bytes, 2n + 30 in all.
    let n = (MAX_PAGE_LEN as usize - 30) / 2;
    let mut ops = vec![Op::Zero { len: 1 }; n];
    ops.push(Op::Zero { len: 200 });
    let parts = vec![Part::Segment {
        ops,
        data: Vec::new(),
        codec: Codec::Stored,
    }];
    let b = PatchBuilder::new(parts.clone()).compact();
    let (patch, image) = b.build(&old);
    let l = Layout::walk(&patch).expect("walks");
    let frame = &patch[patch.len() - 40 - l.header.first_page.len as usize..];
    let size = zstd::zstd_safe::get_frame_content_size(frame).expect("a frame header");
    assert_eq!(size, Some(u64::from(MAX_PAGE_LEN)));
    applies_everywhere("MAX_PAGE_LEN", &old, &patch, &image.bytes.expect("kept"));

    let mut b = PatchBuilder::new(parts);
    b.compact = Some(|content| compress_page(&[content, &[0]].concat()));
    let e = refused("MAX_PAGE_LEN + 1", &old, &b.build(&old).0);
    assert_eq!(
        e,
        ApplyError::Format(FormatError::TooLarge {
            field: "page content size",
            got: u64::from(MAX_PAGE_LEN) + 1,
            max: MAX_PAGE_LEN.into(),
        })
    );
}

#[test]
fn frames_that_do_not_decode_are_refused() {
    let old = hostile_old();
    // The builder's frame, and hand-made ones of raw blocks that declare
    // their size or a window up to MAX_ZSTD_WINDOW, apply.
    let good: [(&str, PageFrame); 3] = [
        ("compressed", compress_page),
        ("raw blocks", |c| stored_frame(c, Some(c.len() as u32))),
        ("4 MiB window", |c| {
            let mut f = stored_frame(c, Some(c.len() as u32));
            f[5] = 0x60;
            f
        }),
    ];
    for (what, frame) in good {
        let patch = hostile(frame);
        drive(&old, &patch, Config::new(8192), 777, &mut Vec::new())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        reference::apply(&old, &patch).unwrap_or_else(|e| panic!("{what}: reference: {e}"));
    }
    let cases: [(&str, PageFrame); 9] = [
        ("not a zstd frame", |c| c.to_vec()),
        ("a skippable frame", |c| {
            let mut f = vec![0x50, 0x2A, 0x4D, 0x18];
            f.extend_from_slice(&(c.len() as u32).to_le_bytes());
            f.extend_from_slice(c);
            f
        }),
        ("cut short", |c| {
            let f = compress_page(c);
            f[..f.len() - 1].to_vec()
        }),
        ("a byte after the frame", |c| {
            [&compress_page(c)[..], &[0]].concat()
        }),
        ("two frames", |c| {
            let f = compress_page(c);
            [&f[..], &f[..]].concat()
        }),
        ("decodes to more than it declares", |c| {
            stored_frame(c, Some(c.len() as u32 - 1))
        }),
        ("decodes to less than it declares", |c| {
            stored_frame(c, Some(c.len() as u32 + 1))
        }),
        ("8 MiB window", |c| {
            let mut f = stored_frame(c, Some(c.len() as u32));
            f[5] = 0x68;
            f
        }),
        ("names a dictionary", |c| {
            // Dictionary id 1 (one byte) after the descriptor and window.
            let f = stored_frame(c, Some(c.len() as u32));
            [&f[..4], &[0x81, 0x50, 0x01], &f[6..]].concat()
        }),
    ];
    for (what, frame) in cases {
        let e = refused(what, &old, &hostile(frame));
        assert!(
            matches!(e, ApplyError::PageDecode { page: 0, .. }),
            "{what}"
        );
        assert_eq!(e.class(), ErrorClass::CorruptPatch);
        assert!(
            e.to_string()
                .starts_with("patch is corrupt: manifest page 0 does not decompress ("),
            "{what}: {e}"
        );
    }
    // A frame with a flipped byte: refused, whatever it then decodes to.
    let e = refused(
        "flipped byte",
        &old,
        &hostile(|c| {
            let mut f = compress_page(c);
            let mid = f.len() / 2;
            f[mid] ^= 0xFF;
            f
        }),
    );
    assert_eq!(e.class(), ErrorClass::CorruptPatch, "{e:?}");
}

#[test]
fn frames_must_declare_a_size_within_max_page_len() {
    let old = hostile_old();
    let no_size = ApplyError::Format(FormatError::Invalid {
        field: "compact page frame",
        reason: "declares no content size, or 0; it must declare the page's decoded length",
    });
    let cases: [(&str, PageFrame, ApplyError); 4] = [
        (
            "no content size",
            |c| stored_frame(c, None),
            no_size.clone(),
        ),
        ("content size 0", |_| compress_page(&[]), no_size.clone()),
        (
            "content size MAX_PAGE_LEN + 1",
            |c| stored_frame(c, Some(MAX_PAGE_LEN + 1)),
            ApplyError::Format(FormatError::TooLarge {
                field: "page content size",
                got: u64::from(MAX_PAGE_LEN) + 1,
                max: MAX_PAGE_LEN.into(),
            }),
        ),
        (
            "content size 4 GiB - 1",
            |c| stored_frame(c, Some(u32::MAX)),
            ApplyError::Format(FormatError::TooLarge {
                field: "page content size",
                got: u32::MAX.into(),
                max: MAX_PAGE_LEN.into(),
            }),
        ),
    ];
    for (what, frame, want) in cases {
        let e = refused(what, &old, &hostile(frame));
        assert_eq!(e, want, "{what}");
        assert_eq!(e.class(), ErrorClass::CorruptPatch);
    }
}

#[test]
fn content_that_does_not_parse_is_refused() {
    let old = hostile_old();
    let cases: [(&str, PageFrame, FormatError); 4] = [
        (
            "inline ops cut short",
            |c| compress_page(&c[..first_inline(c) + 1]),
            FormatError::Malformed { what: "page" },
        ),
        (
            "ops_len beyond the page",
            |c| {
                // The byte before the inline ops is ops_len (< 128): say 127.
                let at = first_inline(c);
                let mut c = c.to_vec();
                c[at - 1] = 0x7F;
                compress_page(&c)
            },
            FormatError::Malformed { what: "page" },
        ),
        (
            "a byte after the content",
            |c| compress_page(&[c, &[0]].concat()),
            FormatError::TrailingBytes {
                what: "page",
                count: 1,
            },
        ),
        (
            "an unknown extent tag",
            |c| {
                // Count, then the first extent's tag.
                let mut c = c.to_vec();
                c[1] = 3;
                compress_page(&c)
            },
            FormatError::Malformed { what: "page" },
        ),
    ];
    for (what, frame, want) in cases {
        let e = refused(what, &old, &hostile(frame));
        assert_eq!(e, ApplyError::Format(want), "{what}");
    }
}

#[test]
fn pages_and_feature_bits_must_agree() {
    let old = hostile_old();
    let patch = hostile(compress_page);
    let l = Layout::walk(&patch).expect("walks");
    assert!(l.compact);
    assert_eq!(
        l.preamble.required_features,
        FEATURE_COMPACT_PAGES | FEATURE_PACKED_OPS
    );
    assert!(
        l.clone().emit() == patch,
        "re-emitting a walked patch changes it"
    );

    // Compact pages in a patch without the bit are not plain pages.
    let mut m = l.clone();
    m.preamble.required_features = FEATURE_PACKED_OPS;
    let e = refused("compact pages without the bit", &old, &m.emit());
    assert_eq!(
        e,
        ApplyError::Format(FormatError::Malformed { what: "page" })
    );
    // Plain pages in a patch with it are not zstd frames.
    let mut m = l.clone();
    m.compact = false;
    let e = refused("plain pages with the bit", &old, &m.emit());
    assert!(matches!(e, ApplyError::PageDecode { page: 0, .. }), "{e:?}");

    // Bit 0x80 (the packed segment) needs FEATURE_PACKED_OPS here too.
    let mut m = l.clone();
    m.preamble.required_features = FEATURE_COMPACT_PAGES;
    let e = refused("packed ops without their bit", &old, &m.emit());
    assert_eq!(
        e,
        ApplyError::Format(FormatError::Invalid {
            field: "segment.codec",
            reason:
                "has bit 0x80 (packed ops), but required_features lacks FEATURE_PACKED_OPS (0x2)",
        })
    );
    // With the packed bit cleared, the packed frame goes inline, where it
    // does not decode as ops.
    let mut m = l.clone();
    for (page, _) in &mut m.pages {
        for e in &mut page.extents {
            if let Extent::Data(s) = e {
                s.codec &= !PACKED_OPS;
            }
        }
    }
    let unpacked = m.emit();
    assert!(entries(&Layout::walk(&unpacked).expect("walks"))
        .iter()
        .all(|s| s.inline_ops.is_some()));
    let e = refused("a packed frame as inline ops", &old, &unpacked);
    assert_eq!(e.class(), ErrorClass::CorruptPatch, "{e:?}");
}

#[test]
fn segment_hashes_are_16_bytes_and_each_is_checked() {
    let old = hostile_old();
    let patch = hostile(compress_page);
    let l = Layout::walk(&patch).expect("walks");
    for segment in 0..2 {
        for bit in [0, 7 * 8 + 3, SHORT_HASH_LEN * 8 - 1] {
            let mut m = l.clone();
            let mut k = 0;
            for (page, _) in &mut m.pages {
                for e in &mut page.extents {
                    if let Extent::Data(s) = e {
                        if k == segment {
                            s.hash[bit / 8] ^= 1 << (bit % 8);
                        }
                        k += 1;
                    }
                }
            }
            let what = format!("segment {segment}, hash bit {bit} flipped");
            let e = refused(&what, &old, &m.emit());
            assert_eq!(
                e,
                ApplyError::SegmentHash {
                    segment,
                    new_offset: [1050, 1390][segment as usize],
                },
                "{what}"
            );
            assert!(e.to_string().contains("segment"), "{e}");
        }
    }
    // The other 16 bytes are not carried: changing them changes no byte.
    let mut m = l.clone();
    for (page, _) in &mut m.pages {
        for e in &mut page.extents {
            if let Extent::Data(s) = e {
                s.hash[SHORT_HASH_LEN..].fill(0xFF);
            }
        }
    }
    assert!(m.emit() == patch);
}

#[test]
fn the_producer_splits_pages_by_their_decoded_size() {
    // A byte changed every 40: 4 KiB segments of many ops, all inline,
    // more than MAX_PAGE_LEN of them in all, so 1024 extents need pages
    // well below MAX_PAGE_EXTENTS.
    let old = bytes("compact-producer-old", 4 << 20);
    let mut new = old.clone();
    for at in (0..new.len()).step_by(40) {
        new[at] ^= 0x55;
    }
    let opts = Options {
        segment_len: 4096,
        threads: 4,
        ..Options::default()
    };
    let patch = produce(&old, &new, &opts);
    let l = Layout::walk(&patch).expect("walks");
    let inline: u64 = entries(&l)
        .iter()
        .filter(|s| s.inline_ops.is_some())
        .map(|s| u64::from(s.ops_len))
        .sum();
    assert!(
        inline > 2 * u64::from(MAX_PAGE_LEN) && l.pages.len() >= 3,
        "{inline} bytes of inline ops in {} pages",
        l.pages.len()
    );
    let r = reference::apply(&old, &patch).expect("reference");
    assert!(r == new, "the reference's result differs");
    let got =
        apply_in_memory(&old, &patch, Config::new(old.len() as u64), 1 << 16).expect("engine");
    assert!(got.target == new, "the engine's result differs");
}
