//! The test vectors in `spec/vectors/`: their definitions and the code that
//! writes them. `gen-vectors` writes them; a test regenerates them in a
//! temporary directory and fails when the checked-in files differ.

use std::fs;
use std::path::Path;

use anypatch_format::{Codec, Op, PrefixRef};
use anypatch_producer::{make_patch, Options};

use crate::builder::{Part, PatchBuilder};
use crate::hex;

/// One vector: inputs, the patch, and the expected result.
#[derive(Debug)]
pub struct Vector {
    pub name: &'static str,
    pub description: &'static str,
    pub made_by: &'static str,
    pub old: Vec<u8>,
    pub patch: Vec<u8>,
    pub new_len: u64,
    pub new_hash: [u8; 32],
    /// The new file, when small enough to check in.
    pub new: Option<Vec<u8>>,
}

/// Deterministic bytes: xorshift64*, seeded by name, with runs of repeated
/// words so that zstd has something to find.
pub fn bytes(seed: &str, n: usize) -> Vec<u8> {
    let mut s = seed.bytes().fold(0x9E37_79B9_7F4A_7C15u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    });
    let mut next = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        s.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut out = Vec::with_capacity(n + 64);
    while out.len() < n {
        let r = next();
        if r % 3 == 0 {
            out.extend_from_slice(b"the quick brown fox ");
        } else {
            out.extend_from_slice(&r.to_le_bytes());
        }
    }
    out.truncate(n);
    out
}

fn produced(
    name: &'static str,
    description: &'static str,
    old: Vec<u8>,
    new: Vec<u8>,
    tweak: impl Fn(&mut Options),
) -> Vector {
    let dir = tempfile::tempdir().expect("tempdir");
    let (o, n) = (dir.path().join("old"), dir.path().join("new"));
    fs::write(&o, &old).expect("write old");
    fs::write(&n, &new).expect("write new");
    let mut opts = Options {
        threads: 1,
        ..Options::default()
    };
    tweak(&mut opts);
    let mut patch = Vec::new();
    make_patch(&o, &n, &mut patch, &opts, &|_| {}).expect("mkpatch on a vector");
    Vector {
        name,
        description,
        made_by: "mkpatch",
        old,
        patch,
        new_len: new.len() as u64,
        new_hash: *blake3::hash(&new).as_bytes(),
        new: Some(new),
    }
}

fn built(name: &'static str, description: &'static str, old: Vec<u8>, b: PatchBuilder) -> Vector {
    let (patch, image) = b.build(&old);
    Vector {
        name,
        description,
        made_by: "builder",
        old,
        patch,
        new_len: image.len,
        new_hash: image.hash(),
        new: image.bytes,
    }
}

/// Every vector, in a fixed order.
pub fn all() -> Vec<Vector> {
    const B: usize = 4096;
    let base = bytes("base", 16 * B);
    let mut v = Vec::new();

    v.push(produced(
        "empty-old",
        "old is empty: everything is literal data",
        Vec::new(),
        bytes("empty-old", 20_000),
        |_| {},
    ));
    v.push(produced(
        "empty-new",
        "new is empty: one page with no extents",
        bytes("empty-new", 10_000),
        Vec::new(),
        |_| {},
    ));
    v.push(produced(
        "identical",
        "old equals new: one unchanged copy extent",
        base.clone(),
        base.clone(),
        |_| {},
    ));

    let mut moved = Vec::new();
    for i in [3usize, 2, 1, 0, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 15, 14] {
        moved.extend_from_slice(&base[i * B..(i + 1) * B]);
    }
    v.push(produced(
        "moved-blocks",
        "old blocks reordered: copy extents with positive and negative deltas",
        base.clone(),
        moved,
        |_| {},
    ));

    let mut zeros = base.clone();
    zeros[4 * B..8 * B].fill(0);
    zeros.extend_from_slice(&[0; 3 * B]);
    v.push(produced(
        "zero-runs",
        "a zeroed region and appended zeros: zero extents",
        base.clone(),
        zeros,
        |_| {},
    ));

    let mut edits = base.clone();
    for at in [100, 5000, 9001, 30_000, 60_000] {
        edits[at..at + 4].copy_from_slice(b"EDIT");
    }
    v.push(produced(
        "small-edits",
        "4-byte edits, without old-byte history: delta and copy ops in one merged segment",
        base.clone(),
        edits,
        // With a history, or with `default`'s coding trial, the repeated
        // `EDIT` compresses smaller as literals; this vector is for deltas.
        |o| {
            o.prefix_len = 0;
            o.coding_trial = false;
        },
    ));

    let mut scattered = base.clone();
    for at in (50..scattered.len() - 3).step_by(613) {
        scattered[at..at + 3].copy_from_slice(b"1.1");
    }
    v.push(produced(
        "scattered-edits",
        "107 3-byte edits: 215 copy and literal ops in one merged segment, inline in its compact page (format 1.2)",
        base.clone(),
        scattered,
        |_| {},
    ));

    let mut appended = base.clone();
    appended.push(b'0');
    v.push(produced(
        "append",
        "one byte appended: a copy extent and a one-byte segment",
        base.clone(),
        appended,
        |_| {},
    ));

    let multi = bytes("multi-segment", 12 * B);
    v.push(produced(
        "multi-segment",
        "new mostly different, segment_len 4096: many data segments",
        base[..12 * B].to_vec(),
        multi,
        |o| o.segment_len = 4096,
    ));

    let small = bytes("over-4gib", B);
    let big = PatchBuilder::new(vec![
        Part::Copy {
            len: B as u64,
            delta: 0,
        },
        Part::Zero { len: 5 << 30 },
        Part::Segment {
            ops: vec![Op::Literal { len: 5 }],
            data: b"tail!".to_vec(),
            codec: Codec::Stored,
        },
    ]);
    v.push(built(
        "over-4gib",
        "new is 5 GiB + 4101 bytes: 64-bit sizes in the header (new.bin not stored)",
        small,
        big,
    ));

    let old = bytes("all-ops", 4 * B);
    let data: Vec<u8> = (0..300u32).map(|i| (i % 7) as u8).collect();
    let mut pages = PatchBuilder::new(vec![
        Part::Copy {
            len: 1000,
            delta: 2000,
        },
        Part::Segment {
            ops: vec![
                Op::Copy {
                    len: 10,
                    delta: -1000,
                },
                Op::Literal { len: 100 },
                Op::Delta { len: 200, delta: 5 },
                Op::Zero { len: 50 },
            ],
            data: data.clone(),
            codec: Codec::Zstd,
        },
        Part::Zero { len: 7 },
        Part::Segment {
            ops: vec![Op::Delta { len: 300, delta: 0 }],
            data,
            codec: Codec::Stored,
        },
        Part::Copy {
            len: 2000,
            delta: -1667,
        },
    ]);
    pages.extents_per_page = 2;
    v.push(built(
        "all-ops-pages",
        "every extent and op kind, both codecs, three chained pages",
        old,
        pages,
    ));

    let old = bytes("old-prefix", 8 * B);
    let mut ahead = old[2 * B..5 * B].to_vec();
    for at in [10, 3000, 9000] {
        ahead[at..at + 4].copy_from_slice(b"1.1!");
    }
    let prefixed = PatchBuilder::new(vec![
        Part::Copy {
            len: B as u64,
            delta: 0,
        },
        Part::PrefixSegment {
            ops: vec![Op::Literal { len: 3 * B as u32 }],
            data: ahead,
            prefix: PrefixRef {
                delta: B as i64,
                len: 4 * B as u32,
            },
        },
        Part::PrefixSegment {
            ops: vec![
                Op::Literal { len: 600 },
                Op::Copy {
                    len: 50,
                    delta: -3000,
                },
            ],
            data: old[B..B + 600].iter().rev().copied().collect(),
            prefix: PrefixRef {
                delta: -3 * B as i64,
                len: 1000,
            },
        },
    ]);
    v.push(built(
        "old-prefix",
        "codec 0x02: zstd frames with old bytes ahead of and behind the segment as history",
        old,
        prefixed,
    ));

    let old = bytes("packed-ops", 8 * B);
    // Scattered edits: many short ops, which pack well.
    let mut scattered = Vec::new();
    for i in 0..40u32 {
        scattered.push(Op::Copy {
            len: 90,
            delta: i64::from(i % 4) * 8,
        });
        scattered.push(Op::Literal { len: 10 });
    }
    let mut edited = old[3 * B..5 * B].to_vec();
    for at in [7, 2000, 5000] {
        edited[at..at + 4].copy_from_slice(b"1.1!");
    }
    let packed = PatchBuilder::new(vec![
        Part::Copy {
            len: B as u64,
            delta: 0,
        },
        Part::Segment {
            ops: scattered,
            data: bytes("packed-ops-literals", 400),
            codec: Codec::Zstd,
        }
        .packed(),
        Part::PrefixSegment {
            ops: vec![
                Op::Literal { len: 2 * B as u32 },
                Op::Delta {
                    len: 1000,
                    delta: -(B as i64),
                },
            ],
            data: [edited, vec![1; 1000]].concat(),
            prefix: PrefixRef {
                delta: B as i64,
                len: 2 * B as u32,
            },
        }
        .packed(),
        Part::Segment {
            ops: vec![Op::Zero { len: 100 }, Op::Literal { len: 5 }],
            data: b"1.1!!".to_vec(),
            codec: Codec::Stored,
        }
        .packed(),
    ]);
    v.push(built(
        "packed-ops",
        "packed ops blocks (codec bit 0x80) with codecs 0x01, 0x02 and 0x00",
        old,
        packed,
    ));

    let old = bytes("compact-pages", 4 * B);
    let mut literals = b"format 1.2 compact pages".to_vec();
    literals.extend_from_slice(&[2; 300]);
    // Short ops, as scattered edits make: packed in the payload.
    let mut scattered = Vec::new();
    for i in 0..30u32 {
        scattered.push(Op::Copy {
            len: 60,
            delta: -(i64::from(i) * 5),
        });
        scattered.push(Op::Literal { len: 4 });
    }
    let mut compact = PatchBuilder::new(vec![
        Part::Copy {
            len: B as u64,
            delta: 0,
        },
        Part::Zero { len: 100 },
        Part::Segment {
            ops: vec![
                Op::Copy {
                    len: 500,
                    delta: -2000,
                },
                Op::Literal { len: 24 },
                Op::Delta {
                    len: 300,
                    delta: 1000,
                },
            ],
            data: literals,
            codec: Codec::Zstd,
        },
        Part::Segment {
            ops: scattered,
            data: bytes("compact-pages-literals", 120),
            codec: Codec::Stored,
        }
        .packed(),
        Part::Copy {
            len: 1000,
            delta: -1500,
        },
    ])
    .compact();
    compact.extents_per_page = 3;
    v.push(built(
        "compact-pages",
        "compact pages (format 1.2): two zstd-framed pages, a segment with inline ops and one with packed ops in its payload",
        old,
        compact,
    ));

    let old = bytes("data-history", 4 * B);
    let fresh = bytes("data-history-fresh", 3000);
    let mut again = fresh.clone();
    for at in [10, 1500, 2900] {
        again[at..at + 4].copy_from_slice(b"1.3!");
    }
    // Codec 0x01 data, which is not part of the data history.
    let other = bytes("data-history-other", 1000);
    let mut history = PatchBuilder::new(vec![
        Part::Copy {
            len: B as u64,
            delta: 0,
        },
        Part::Segment {
            ops: vec![Op::Literal { len: 3000 }],
            data: fresh,
            codec: Codec::ZstdHistory,
        },
        Part::Segment {
            ops: vec![
                Op::Literal { len: 1000 },
                Op::Copy {
                    len: 500,
                    delta: -2000,
                },
            ],
            data: other.clone(),
            codec: Codec::Zstd,
        },
        Part::Zero { len: 100 },
        Part::Segment {
            ops: vec![Op::Literal { len: 3000 }],
            data: again,
            codec: Codec::ZstdHistory,
        },
        Part::Segment {
            ops: vec![
                Op::Literal { len: 1000 },
                Op::Delta {
                    len: 500,
                    delta: -(B as i64),
                },
            ],
            data: [other, vec![1; 500]].concat(),
            codec: Codec::ZstdHistory,
        }
        .packed(),
        Part::Copy {
            len: 1000,
            delta: -1500,
        },
    ])
    .compact();
    history.extents_per_page = 3;
    v.push(built(
        "data-history",
        "codec 0x03 (format 1.3): zstd frames whose history is the data of the earlier 0x03 segments; the second repeats the first with three edits, and the third's data, taken before by a 0x01 segment (not history), is coded afresh",
        old,
        history,
    ));
    v
}

/// Writes every vector into `dir`: `NAME/old.bin`, `NAME/patch.anyp`,
/// `NAME/new.bin` (when small) and `index.json` with the expected results.
pub fn write_all(dir: &Path) -> std::io::Result<()> {
    let mut index = Vec::new();
    for v in all() {
        let d = dir.join(v.name);
        fs::create_dir_all(&d)?;
        fs::write(d.join("old.bin"), &v.old)?;
        fs::write(d.join("patch.anyp"), &v.patch)?;
        if let Some(new) = &v.new {
            fs::write(d.join("new.bin"), new)?;
        }
        index.push(serde_json::json!({
            "name": v.name,
            "description": v.description,
            "made_by": v.made_by,
            "old_len": v.old.len(),
            "old_blake3": hex(blake3::hash(&v.old).as_bytes()),
            "new_len": v.new_len,
            "new_blake3": hex(&v.new_hash),
            "new_bin": v.new.is_some(),
            "patch_len": v.patch.len(),
            "patch_blake3": hex(blake3::hash(&v.patch).as_bytes()),
        }));
    }
    let text = serde_json::to_string_pretty(&index).expect("json") + "\n";
    fs::write(dir.join("index.json"), text)
}
