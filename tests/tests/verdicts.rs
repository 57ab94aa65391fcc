//! `mkpatch inspect` and the engine give the same verdict on hand-made
//! patches whose hash chain is valid but whose content is not: an unknown
//! must-understand feature bit, the zstd reserved bit in each kind of frame,
//! and frames that declare the wrong content size or none. Before the
//! shared layout reader, inspect accepted all of these (exit 0) while every
//! applier refused them. The mutation suite (mutations.rs) holds the two to
//! the same verdict on a thousand corruptions as well.

use std::process::Command;

use anypatch_format::{
    header_hash, Codec, Extent, Op, PrefixRef, KNOWN_REQUIRED_FEATURES, PREAMBLE_LEN, TRAILER_LEN,
};
use anypatch_tests::bin;
use anypatch_tests::builder::{compress_page, stored_frame, Part, PatchBuilder};
use anypatch_tests::hostile::Layout;
use anypatch_tests::vectors::bytes;
use anypatch_tests::verdict::same_verdict;

const DATA_LEN: usize = 3000;

fn old() -> Vec<u8> {
    bytes("verdicts-old", 16 << 10)
}

/// Unchanged, a data segment of `codec`, unchanged again.
fn parts(codec: Codec) -> Vec<Part> {
    vec![
        Part::Copy {
            len: 4096,
            delta: 0,
        },
        Part::Segment {
            ops: vec![Op::Literal {
                len: DATA_LEN as u32,
            }],
            data: bytes("verdicts-data", DATA_LEN),
            codec,
        },
        Part::Copy {
            len: 8192,
            delta: -(DATA_LEN as i64),
        },
    ]
}

/// The same with a codec 0x02 segment whose prefix is the old bytes before it.
fn prefix_parts() -> Vec<Part> {
    vec![
        Part::Copy {
            len: 4096,
            delta: 0,
        },
        Part::PrefixSegment {
            ops: vec![Op::Literal {
                len: DATA_LEN as u32,
            }],
            data: bytes("verdicts-data", DATA_LEN),
            prefix: PrefixRef {
                delta: -4096,
                len: 4096,
            },
        },
    ]
}

/// Refused by both, with the same sentence, which contains `expect`.
fn refused(what: &str, patch: &[u8], expect: &str) {
    let e = same_verdict(what, &old(), patch).expect_err(what);
    assert!(e.to_string().contains(expect), "{what}: {e}");
    // And the CLI says so: exit 2 (corrupt) or 4 (needs a newer anypatch).
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("p.anyp");
    std::fs::write(&p, patch).expect("write");
    let out = Command::new(bin("mkpatch"))
        .arg("inspect")
        .arg(&p)
        .output()
        .expect("run mkpatch");
    let code = out.status.code();
    assert!(
        matches!(code, Some(2 | 4)),
        "{what}: mkpatch inspect exited {code:?}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(expect), "{what}: mkpatch inspect said {err}");
}

/// Rewrites the first data segment's payload with `f` (given and returning
/// ops block and data block) and re-seals the chain around it.
fn with_payload(patch: &[u8], f: impl Fn(&mut Vec<u8>, &mut Vec<u8>)) -> Vec<u8> {
    let mut l = Layout::walk(patch).expect("a valid patch walks");
    for (page, payloads) in &mut l.pages {
        let mut payloads = payloads.iter_mut();
        for e in &mut page.extents {
            let Extent::Data(s) = e else { continue };
            let payload = payloads.next().expect("one payload per segment");
            let (mut ops, mut data) = (
                payload[..s.ops_len as usize].to_vec(),
                payload[s.ops_len as usize..].to_vec(),
            );
            f(&mut ops, &mut data);
            s.ops_len = ops.len() as u32;
            s.data_len = data.len() as u32;
            *payload = [ops, data].concat();
            return l.emit();
        }
    }
    panic!("the patch has no data segment")
}

fn reserved_bit(frame: &mut [u8]) {
    frame[4] |= 0x08;
}

#[test]
fn valid_patches_of_every_codec_pass_both() {
    let old = old();
    for (what, builder) in [
        ("zstd", PatchBuilder::new(parts(Codec::Zstd))),
        ("stored", PatchBuilder::new(parts(Codec::Stored))),
        ("history", PatchBuilder::new(parts(Codec::ZstdHistory))),
        ("prefix", PatchBuilder::new(prefix_parts())),
        ("compact", PatchBuilder::new(parts(Codec::Zstd)).compact()),
    ] {
        let (patch, _) = builder.build(&old);
        same_verdict(what, &old, &patch).expect(what);
    }
}

#[test]
fn an_unknown_feature_bit_under_a_valid_hash() {
    let (mut p, _) = PatchBuilder::new(parts(Codec::Zstd)).build(&old());
    let unknown = 1u32 << (!KNOWN_REQUIRED_FEATURES).trailing_zeros();
    let bits = u32::from_le_bytes(p[12..16].try_into().expect("4 bytes")) | unknown;
    p[12..16].copy_from_slice(&bits.to_le_bytes());
    // Re-seal: the header hash covers the preamble, the trailer everything.
    let header_len = u32::from_le_bytes(p[16..20].try_into().expect("4 bytes")) as usize;
    let end = PREAMBLE_LEN + header_len;
    let h = header_hash(&p[..PREAMBLE_LEN], &p[PREAMBLE_LEN..end]);
    p[end..end + 32].copy_from_slice(&h);
    let n = p.len() - TRAILER_LEN;
    let t = *blake3::hash(&p[..n]).as_bytes();
    p[n..n + 32].copy_from_slice(&t);
    refused("unknown feature bit", &p, "feature");
}

#[test]
fn the_zstd_reserved_bit_in_every_kind_of_frame() {
    let old = old();
    let (zstd, _) = PatchBuilder::new(parts(Codec::Zstd)).build(&old);
    let data = with_payload(&zstd, |_, data| reserved_bit(data));
    refused("data frame", &data, "reserved bit");

    let (history, _) = PatchBuilder::new(parts(Codec::ZstdHistory)).build(&old);
    let history = with_payload(&history, |_, data| reserved_bit(data));
    refused("history frame", &history, "reserved bit");

    let (packed, _) = PatchBuilder::new(vec![
        Part::Copy {
            len: 4096,
            delta: 0,
        },
        Part::Segment {
            ops: vec![Op::Literal {
                len: DATA_LEN as u32,
            }],
            data: bytes("verdicts-data", DATA_LEN),
            codec: Codec::Zstd,
        }
        .packed(),
    ])
    .build(&old);
    let packed = with_payload(&packed, |ops, _| reserved_bit(ops));
    refused("packed ops frame", &packed, "reserved bit");

    let mut builder = PatchBuilder::new(parts(Codec::Zstd));
    builder.compact = Some(|content| {
        let mut f = compress_page(content);
        reserved_bit(&mut f);
        f
    });
    let (page, _) = builder.build(&old);
    refused("compact page frame", &page, "reserved bit");

    let (prefix, _) = PatchBuilder::new(prefix_parts()).build(&old);
    let prefix = with_payload(&prefix, |_, block| {
        let at = block.len() - PrefixRef::parse(block).expect("prefix").1.len();
        reserved_bit(&mut block[at..]);
    });
    refused("prefix frame", &prefix, "reserved bit");
}

#[test]
fn frames_that_declare_the_wrong_content_size() {
    let old = old();
    let content = bytes("verdicts-data", DATA_LEN);
    let declared = Some(DATA_LEN as u32 + 1);

    let (zstd, _) = PatchBuilder::new(parts(Codec::Zstd)).build(&old);
    let zstd = with_payload(&zstd, |_, data| *data = stored_frame(&content, declared));
    refused("data frame", &zstd, "declares 3001 bytes");

    let mut builder = PatchBuilder::new(parts(Codec::ZstdHistory));
    builder.history_frame = |data, _| stored_frame(data, Some(data.len() as u32 + 1));
    let (history, _) = builder.build(&old);
    refused("history frame", &history, "declares 3001 bytes");

    builder.history_frame = |data, _| stored_frame(data, None);
    let (history, _) = builder.build(&old);
    refused(
        "history frame without a size",
        &history,
        "does not declare its content size",
    );

    // Codec 0x02: inspect cannot decode it (its history is old bytes), and
    // still finds the lie in its header.
    let (prefix, _) = PatchBuilder::new(prefix_parts()).build(&old);
    let prefix = with_payload(&prefix, |_, block| {
        let frame_len = PrefixRef::parse(block).expect("prefix").1.len();
        block.truncate(block.len() - frame_len);
        block.extend(stored_frame(&content, declared));
    });
    refused("prefix frame", &prefix, "declares 3001 bytes");
}
