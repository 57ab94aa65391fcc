//! Mutation tests: 1000 random corruptions of valid patches (bit flips,
//! truncations, inserted and deleted bytes, swapped data segments,
//! duplicated pages) are each refused with a clean error, with no panic, no
//! allocation above the engine's stated bound, and the target unchanged; and
//! declared sizes (a 4 GiB segment, a 1 TiB extent, 2^40 extents in a page,
//! huge section lengths, a zstd frame or packed ops claiming a terabyte)
//! are refused cheaply, before anything is allocated for them. The sources
//! include packed ops and codec 0x02 (format 1.1), compact pages (1.2) and
//! codec 0x03 with its data history (1.3), and worst-case patches of each
//! kind are held to the bound. Every byte of the small `data-history`
//! vector is flipped in turn: engine and reference agree on each result.
//! `mkpatch inspect`'s reader refuses every one of these corruptions too,
//! with the engine's sentence wherever the engine needed no old byte.
//!
//! The engine's memory is measured with a counting global allocator
//! (`peakmem-alloc`: the workspace forbids `unsafe`, which a hand-written
//! `GlobalAlloc` needs). It counts every thread, so every test here holds
//! [`SERIAL`] and the measured code allocates nothing of its own: the driver
//! writes into a target sized before the count starts.

use std::fs;
use std::ops::Range;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anypatch_apply::{ApplyError, Config};
use anypatch_format::{
    Codec, Extent, FormatError, Header, Op, Page, PageRef, PrefixRef, SegmentEntry,
    APPLIER_WORST_CASE_MEMORY, FEATURE_COMPACT_PAGES, FEATURE_DATA_HISTORY, FEATURE_PACKED_OPS,
    FLAG_IN_PLACE_SAFE, HASH_LEN, MAX_OPS_LEN, MAX_PAGE_EXTENTS, MAX_PAGE_LEN, MAX_PREFIX_LEN,
    MAX_SEGMENT_LEN, PACKED_OPS, PREAMBLE_LEN,
};
use anypatch_producer::Options;
use anypatch_tests::builder::{stored_frame, Part, PatchBuilder};
use anypatch_tests::hostile::{check_apply, drive, in_place_passes, produce, seal_raw, Layout};
use anypatch_tests::verdict::{both_refuse, same_verdict};
use anypatch_tests::{bin, reference, root, vectors::bytes};
use peakmem_alloc::{PeakMemAlloc, PeakMemAllocTrait, INSTRUMENTED_SYSTEM};

#[global_allocator]
static ALLOC: &PeakMemAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// The allocator counts every thread: tests here run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` and returns its result with the peak of bytes allocated and not
/// yet freed while it ran, above what was allocated when it started.
fn measured<T>(f: impl FnOnce() -> T) -> (T, u64) {
    ALLOC.reset_peak_memory();
    let out = f();
    (out, ALLOC.get_peak_memory() as u64)
}

/// Cheap deterministic randomness (a 64-bit LCG), so a failure names a
/// mutation that the next run makes again.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A valid patch and its base.
struct Source {
    name: String,
    old: Vec<u8>,
    patch: Vec<u8>,
}

/// Where a patch's pages and data segment payloads are, by walking its
/// layout with the format crate: each page as long as the ref that names
/// it, each payload as its entry says (without ops inline in a compact page).
struct Sections {
    /// Each page with its payloads: the page bytes and everything up to the next page.
    pages: Vec<Range<usize>>,
    payloads: Vec<Range<usize>>,
}

fn sections(patch: &[u8]) -> Sections {
    let l = Layout::walk(patch).expect("a valid patch walks");
    let mut at = PREAMBLE_LEN
        + l.preamble.header_len as usize
        + HASH_LEN
        + l.preamble.signature_len as usize;
    let (mut pages, mut payloads) = (Vec::new(), Vec::new());
    let mut len = l.header.first_page.len as usize;
    for (page, _) in &l.pages {
        let start = at;
        at += len;
        for e in &page.extents {
            if let Extent::Data(s) = e {
                let n = s.payload_len() as usize;
                payloads.push(at..at + n);
                at += n;
            }
        }
        pages.push(start..at);
        len = page.next.map_or(0, |r| r.len as usize);
    }
    Sections { pages, payloads }
}

fn sources() -> Vec<Source> {
    let mut out = Vec::new();
    // The producer with small segments: many segments, moved data, zeros.
    let old = bytes("mutations-old", 400_000);
    let mut new = old.clone();
    new[10_000..13_000].copy_from_slice(&bytes("mutations-a", 3000));
    new[150_000..170_000].fill(0);
    new.copy_within(300_000..320_000, 60_000);
    new.splice(390_000..390_000, bytes("mutations-b", 777));
    let opts = Options {
        threads: 2,
        segment_len: 4096,
        ..Options::default()
    };
    out.push(Source {
        name: "producer-moved".into(),
        patch: produce(&old, &new, &opts),
        old: old.clone(),
    });
    // The producer in place on an in-place-safe pair (edits and zeros, no moves).
    let mut new = old.clone();
    for (i, at) in [5_000usize, 77_777, 200_000, 333_333]
        .into_iter()
        .enumerate()
    {
        new[at..at + 2500].copy_from_slice(&bytes(&format!("mutations-ip-{i}"), 2500));
    }
    new[250_000..270_000].fill(0);
    // In-place mode keeps codec 0x02 prefixes at or after their segment, and
    // no merging keeps the edits in separate segments.
    let in_place = Options {
        in_place: true,
        merge_gap: 0,
        ..opts.clone()
    };
    let patch = produce(&old, &new, &in_place);
    let l = Layout::walk(&patch).expect("walks");
    assert!(
        l.header.flags & FLAG_IN_PLACE_SAFE != 0,
        "the in-place source must be in-place safe"
    );
    assert!(l.header.segment_count >= 4, "want several segments");
    out.push(Source {
        name: "producer-in-place".into(),
        patch,
        old: old.clone(),
    });
    // The producer with full 4 MiB segments, so the corruptions also meet the
    // engine at its largest buffers.
    let big_old = bytes("mutations-big-old", 6 << 20);
    let mut big_new = big_old.clone();
    big_new[1 << 20..(11 << 19)].copy_from_slice(&bytes("mutations-big-new", 9 << 19));
    out.push(Source {
        name: "producer-4mib-segments".into(),
        patch: produce(&big_old, &big_new, &Options::default()),
        old: big_old,
    });
    // Built: every op kind, both codecs, two extents per page (many pages).
    let small = bytes("mutations-small", 30_000);
    let seg = |k: usize, codec| Part::Segment {
        ops: vec![
            Op::Copy {
                len: 500,
                delta: 100,
            },
            Op::Literal { len: 300 },
            Op::Delta {
                len: 200,
                delta: -(k as i64) * 10,
            },
            Op::Zero { len: 50 },
        ],
        data: bytes(&format!("mutations-seg-{k}"), 500),
        codec,
    };
    let parts = vec![
        Part::Copy {
            len: 4000,
            delta: 0,
        },
        seg(1, Codec::Zstd),
        Part::Zero { len: 3000 },
        seg(2, Codec::Stored),
        Part::Copy {
            len: 2000,
            delta: 5000,
        },
        seg(3, Codec::Zstd),
        seg(4, Codec::Stored),
        Part::Copy {
            len: 1000,
            delta: 0,
        },
    ];
    let mut b = PatchBuilder::new(parts);
    b.extents_per_page = 2;
    out.push(Source {
        name: "built-pages".into(),
        patch: b.build(&small).0,
        old: small.clone(),
    });
    // Built: codec 0x02 segments with prefixes behind, at and ahead of their
    // start, between copies and zeros (format 1.1).
    let pseg = |k: usize, delta: i64, len: u32| {
        let mut data = small[8000 + k * 1000..8000 + k * 1000 + 1500].to_vec();
        data[100..110].copy_from_slice(b"0123456789");
        Part::PrefixSegment {
            ops: vec![
                Op::Literal { len: 1200 },
                Op::Copy {
                    len: 100,
                    delta: 10,
                },
                Op::Delta {
                    len: 300,
                    delta: -20,
                },
            ],
            data,
            prefix: PrefixRef { delta, len },
        }
    };
    let parts = vec![
        pseg(1, 500, 6000),
        Part::Copy {
            len: 3000,
            delta: 0,
        },
        pseg(2, -4000, 4000),
        Part::Zero { len: 2000 },
        pseg(3, 0, 1),
        pseg(4, 1000, 19_000),
    ];
    out.push(Source {
        name: "built-prefix".into(),
        patch: PatchBuilder::new(parts).build(&small).0,
        old: small.clone(),
    });
    // Built: packed ops (format 1.1) with every data codec, beside a plain
    // segment, three extents per page.
    let mut many = Vec::new();
    for i in 0..150u32 {
        many.push(Op::Copy {
            len: 30,
            delta: i64::from(i) * 7,
        });
        many.push(Op::Literal { len: 5 });
    }
    let parts = vec![
        seg(5, Codec::Zstd).packed(),
        Part::Zero { len: 100 },
        Part::Segment {
            ops: many,
            data: bytes("mutations-packed", 750),
            codec: Codec::Stored,
        }
        .packed(),
        pseg(6, 700, 5000).packed(),
        seg(7, Codec::Stored),
        Part::Copy { len: 500, delta: 0 },
    ];
    let mut b = PatchBuilder::new(parts);
    b.extents_per_page = 3;
    out.push(Source {
        name: "built-packed".into(),
        patch: b.build(&small).0,
        old: small.clone(),
    });
    // Built: compact pages (format 1.2), two extents each, with inline and
    // packed ops and codec 0x02.
    let parts = vec![
        seg(8, Codec::Zstd),
        Part::Zero { len: 200 },
        seg(9, Codec::Stored).packed(),
        pseg(7, 300, 4000),
        Part::Copy { len: 700, delta: 0 },
        seg(10, Codec::Stored),
    ];
    let mut b = PatchBuilder::new(parts).compact();
    b.extents_per_page = 2;
    out.push(Source {
        name: "built-compact".into(),
        patch: b.build(&small).0,
        old: small.clone(),
    });
    // Built: codec 0x03 segments (format 1.3) that repeat each other, with
    // inline and packed ops, beside 0x01 and 0x02, compact pages of two.
    let hseg = |k: usize| {
        let mut data = small[k * 3000..k * 3000 + 2000].to_vec();
        data.extend_from_slice(&bytes("mutations-history", 1000));
        data[k * 10] ^= 0x10;
        Part::Segment {
            ops: vec![
                Op::Literal { len: 2500 },
                Op::Copy {
                    len: 100,
                    delta: 10,
                },
                Op::Delta {
                    len: 500,
                    delta: -30,
                },
            ],
            data,
            codec: Codec::ZstdHistory,
        }
    };
    let parts = vec![
        hseg(1),
        seg(11, Codec::Zstd),
        hseg(2).packed(),
        Part::Zero { len: 300 },
        pseg(8, 200, 3000),
        hseg(3),
        Part::Copy { len: 400, delta: 0 },
        hseg(4).packed(),
    ];
    let mut b = PatchBuilder::new(parts).compact();
    b.extents_per_page = 2;
    let patch = b.build(&small).0;
    let features = Layout::walk(&patch)
        .expect("walks")
        .preamble
        .required_features;
    assert!(features & FEATURE_DATA_HISTORY != 0);
    out.push(Source {
        name: "built-history".into(),
        patch,
        old: small,
    });
    // The producer writes compact pages at every level.
    for s in out.iter().filter(|s| s.name.starts_with("producer")) {
        let features = u32::from_le_bytes(s.patch[0x0C..0x10].try_into().expect("4 bytes"));
        assert!(
            features & FEATURE_COMPACT_PAGES != 0,
            "{}: pages not compact",
            s.name
        );
    }
    // The spec's vectors with a checked-in new file.
    let mut dirs: Vec<_> = fs::read_dir(root().join("spec/vectors"))
        .expect("spec/vectors")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("new.bin").exists())
        .collect();
    dirs.sort();
    for d in dirs {
        out.push(Source {
            name: format!("vector {}", d.file_name().expect("name").to_string_lossy()),
            old: fs::read(d.join("old.bin")).expect("old.bin"),
            patch: fs::read(d.join("patch.anyp")).expect("patch.anyp"),
        });
    }
    out
}

/// One random corruption of `patch`; `None` when the kind does not apply
/// (fewer than two segments) or the result equals the original.
fn mutate(patch: &[u8], kind: usize, rng: &mut Rng) -> Option<(Vec<u8>, String)> {
    let mut p = patch.to_vec();
    let n = p.len();
    let what = match kind {
        0 => {
            let at = rng.below(n);
            let bit = rng.below(8);
            p[at] ^= 1 << bit;
            format!("bit {bit} flipped at {at}")
        }
        1 => {
            let at = rng.below(n);
            p.truncate(at);
            format!("truncated to {at}")
        }
        2 => {
            let at = rng.below(n + 1);
            let k = 1 + rng.below(16);
            let ins: Vec<u8> = (0..k).map(|_| rng.next() as u8).collect();
            p.splice(at..at, ins);
            format!("{k} bytes inserted at {at}")
        }
        3 => {
            let at = rng.below(n);
            let k = (1 + rng.below(16)).min(n - at);
            p.drain(at..at + k);
            format!("{k} bytes deleted at {at}")
        }
        4 => {
            let s = sections(patch);
            if s.payloads.len() < 2 {
                return None;
            }
            let i = rng.below(s.payloads.len());
            let j = (i + 1 + rng.below(s.payloads.len() - 1)) % s.payloads.len();
            let (a, b) = if i < j {
                (s.payloads[i].clone(), s.payloads[j].clone())
            } else {
                (s.payloads[j].clone(), s.payloads[i].clone())
            };
            p = [
                &patch[..a.start],
                &patch[b.clone()],
                &patch[a.end..b.start],
                &patch[a.clone()],
                &patch[b.end..],
            ]
            .concat();
            format!("data segments at {a:?} and {b:?} swapped")
        }
        _ => {
            let s = sections(patch);
            let r = s.pages[rng.below(s.pages.len())].clone();
            p.splice(r.end..r.end, patch[r.clone()].iter().copied());
            format!("page with its payloads at {r:?} duplicated")
        }
    };
    (p != patch).then_some((p, what))
}

/// Applies `patch` to a fresh output and through the in-place verify pass,
/// as `applypatch` does, and returns the errors and the larger allocation
/// peak. The target is sized before the count starts.
fn refused(
    old: &[u8],
    patch: &[u8],
    feed: usize,
    target: &mut Vec<u8>,
) -> (ApplyError, ApplyError, u64) {
    let old_len = old.len() as u64;
    let (fresh, peak_fresh) = measured(|| drive(old, patch, Config::new(old_len), feed, target));
    let (verify, _) = in_place_passes(old_len);
    // Pass 1 writes nothing (a NullSink); pass 2 would run only on success.
    let (checked, peak_verify) = measured(|| drive(old, patch, verify, feed, &mut Vec::new()));
    let fresh = fresh.expect_err("a corrupt patch applied to a fresh output");
    let checked = checked.expect_err("a corrupt patch passed the in-place verify pass");
    (fresh, checked, peak_fresh.max(peak_verify))
}

#[test]
fn a_thousand_corruptions_are_refused_within_the_memory_bound() {
    let _serial = serial();
    let sources = sources();
    let cap = sources.iter().map(|s| s.old.len()).max().expect("sources") + (1 << 20);
    let mut target = Vec::with_capacity(cap);

    // The counter works: a valid apply of 4 MiB segments allocates their
    // buffers, and stays in bound.
    let big = sources
        .iter()
        .find(|s| s.name == "producer-4mib-segments")
        .expect("source");
    let (run, valid_peak) = measured(|| {
        drive(
            &big.old,
            &big.patch,
            Config::new(big.old.len() as u64),
            1 << 16,
            &mut target,
        )
    });
    assert!(run.expect("the valid source applies").stored);
    assert!(
        (4 << 20..=APPLIER_WORST_CASE_MEMORY).contains(&valid_peak),
        "a valid apply of 4 MiB segments peaked at {valid_peak} bytes"
    );

    let mut rng = Rng(0x5EED_0003);
    let (mut done, mut worst, mut kinds) = (0usize, 0u64, [0usize; 6]);
    // Segment swaps need two segments: draw their sources from those that have them.
    let multi: Vec<&Source> = sources
        .iter()
        .filter(|s| sections(&s.patch).payloads.len() >= 2)
        .collect();
    assert!(
        multi.len() >= 3,
        "few sources with two or more data segments"
    );
    let all: Vec<&Source> = sources.iter().collect();
    let mut attempt = 0usize;
    while done < 1000 {
        attempt += 1;
        assert!(attempt < 5000, "too few mutations apply");
        let kind = attempt % 6;
        let pool = if kind == 4 { &multi } else { &all };
        let src = pool[attempt / 6 % pool.len()];
        let Some((p, what)) = mutate(&src.patch, kind, &mut rng) else {
            continue;
        };
        let feed = 1 + (attempt * 977) % 20_000;
        let (fresh, checked, peak) = refused(&src.old, &p, feed, &mut target);
        assert!(
            peak <= APPLIER_WORST_CASE_MEMORY,
            "{}: {what}: the engine allocated {peak} bytes, above APPLIER_WORST_CASE_MEMORY",
            src.name
        );
        for e in [&fresh, &checked] {
            assert!(!e.to_string().is_empty());
        }
        assert!(
            reference::apply(&src.old, &p).is_err(),
            "{}: {what}: the reference accepts it",
            src.name
        );
        both_refuse(&format!("{}: {what}", src.name), &fresh, &p);
        worst = worst.max(peak);
        kinds[kind] += 1;
        done += 1;
    }
    println!(
        "1000 corruptions refused (bit flips, truncations, inserts, deletes, swapped segments, duplicated pages: {kinds:?}); \
         engine peak allocation {worst} bytes ({:.1} MiB) of the {APPLIER_WORST_CASE_MEMORY}-byte bound; a valid apply peaked at {valid_peak}",
        worst as f64 / f64::from(1 << 20)
    );
    assert!(
        kinds.iter().all(|&k| k >= 100),
        "every kind of corruption ran: {kinds:?}"
    );
}

/// A hundred corruptions through the real `applypatch --in-place`: each exits
/// with a documented error code and leaves the target byte-identical.
#[test]
fn in_place_cli_leaves_the_target_unchanged() {
    let _serial = serial();
    let src = sources()
        .into_iter()
        .find(|s| s.name == "producer-in-place")
        .expect("source");
    let work = tempfile::tempdir().expect("tempdir");
    let disk = work.path().join("disk.img");
    let patch_path = work.path().join("p.anyp");

    // The uncorrupted patch does apply in place, so refusals below are real.
    fs::write(&disk, &src.old).expect("write");
    fs::write(&patch_path, &src.patch).expect("write");
    let ok = Command::new(bin("applypatch"))
        .arg("--in-place")
        .arg(&disk)
        .arg(&patch_path)
        .output()
        .expect("applypatch runs");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(fs::read(&disk).expect("read") != src.old);

    let mut rng = Rng(0x0C11);
    let mut runs = 0;
    for i in 0.. {
        if runs == 100 {
            break;
        }
        let Some((p, what)) = mutate(&src.patch, i % 6, &mut rng) else {
            continue;
        };
        fs::write(&disk, &src.old).expect("write");
        fs::write(&patch_path, &p).expect("write");
        let o = Command::new(bin("applypatch"))
            .arg("--in-place")
            .arg(&disk)
            .arg(&patch_path)
            .output()
            .expect("applypatch runs");
        let err = String::from_utf8_lossy(&o.stderr);
        let code = o
            .status
            .code()
            .unwrap_or_else(|| panic!("{what}: killed by a signal: {err}"));
        assert!((2..=5).contains(&code), "{what}: exit {code}: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert!(
            fs::read(&disk).expect("read") == src.old,
            "{what}: the target changed"
        );
        let mut left: Vec<String> = fs::read_dir(work.path())
            .expect("work dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["disk.img", "p.anyp"],
            "{what}: files left beside the target"
        );
        runs += 1;
    }
}

/// A small valid patch to make hostile variants of: one data segment, a
/// zero run and a copy, against a 4 KiB old file.
fn small() -> (Vec<u8>, Layout) {
    let old = bytes("hostile-sizes", 4096);
    let parts = vec![
        Part::Segment {
            ops: vec![Op::Literal { len: 100 }, Op::Copy { len: 100, delta: 0 }],
            data: bytes("hostile-lit", 100),
            codec: Codec::Zstd,
        },
        Part::Zero { len: 1000 },
        Part::Copy {
            len: 1000,
            delta: 0,
        },
    ];
    let patch = PatchBuilder::new(parts).build(&old).0;
    let layout = Layout::walk(&patch).expect("walks");
    (old, layout)
}

/// Asserts the patch is refused, fast and with little memory, and returns
/// the error.
fn refused_cheaply(what: &str, old: &[u8], patch: &[u8]) -> ApplyError {
    let t0 = Instant::now();
    let (res, peak) = measured(|| {
        drive(
            old,
            patch,
            Config::new(old.len() as u64),
            1 << 16,
            &mut Vec::new(),
        )
    });
    let took = t0.elapsed();
    let e = res.err().unwrap_or_else(|| panic!("{what}: accepted"));
    assert!(
        peak < 1 << 20,
        "{what}: the engine allocated {peak} bytes before refusing ({e})"
    );
    assert!(
        took < Duration::from_secs(1),
        "{what}: took {took:?} to refuse ({e})"
    );
    e
}

fn with_segment(l: &Layout, f: impl Fn(&mut SegmentEntry)) -> Vec<u8> {
    let mut l = l.clone();
    for e in &mut l.pages[0].0.extents {
        if let Extent::Data(s) = e {
            f(s);
        }
    }
    l.emit()
}

#[test]
fn declared_segment_sizes_are_capped() {
    let _serial = serial();
    let (old, l) = small();
    for (field, set) in [
        (
            "segment.new_len",
            &(|s: &mut SegmentEntry| s.new_len = u32::MAX) as &dyn Fn(&mut SegmentEntry),
        ),
        ("segment.new_len", &|s: &mut SegmentEntry| {
            s.new_len = MAX_SEGMENT_LEN + 1
        }),
        ("segment.ops_len", &|s: &mut SegmentEntry| {
            s.ops_len = u32::MAX
        }),
        ("segment.data_len", &|s: &mut SegmentEntry| {
            s.data_len = u32::MAX
        }),
    ] {
        let p = with_segment(&l, set);
        let e = refused_cheaply(field, &old, &p);
        assert!(
            matches!(e, ApplyError::Format(FormatError::TooLarge { field: f, .. }) if f == field),
            "{field}: {e:?}"
        );
    }
    // A segment within MAX_SEGMENT_LEN but above the header's segment_max.
    let p = with_segment(&l, |s| s.new_len = MAX_SEGMENT_LEN);
    let e = refused_cheaply("new_len above segment_max", &old, &p);
    assert!(matches!(e, ApplyError::LengthMismatch { .. }), "{e:?}");
}

#[test]
fn terabyte_extents_and_ops_are_refused_before_use() {
    let _serial = serial();
    let (old, l) = small();
    const TIB: u64 = 1 << 40;
    // A copy or zero extent of 1 TiB in a 2200-byte new file.
    for extent in [
        Extent::Copy { len: TIB, delta: 0 },
        Extent::Zero { len: TIB },
    ] {
        let mut m = l.clone();
        m.pages[0].0.extents.insert(0, extent);
        let e = refused_cheaply("1 TiB extent", &old, &m.emit());
        assert!(
            matches!(e, ApplyError::LengthMismatch { .. }),
            "{extent:?}: {e:?}"
        );
    }
    // A 1 TiB new file whose 1 TiB copy reads outside the 4 KiB old file.
    let mut m = l.clone();
    m.header.new_len = TIB;
    m.pages[0].0.extents = vec![Extent::Copy { len: TIB, delta: 0 }];
    m.header.extent_count = 1;
    m.header.segment_count = 0;
    m.pages[0].1.clear();
    let e = refused_cheaply("1 TiB copy", &old, &m.emit());
    assert!(matches!(e, ApplyError::SourceOutOfRange { .. }), "{e:?}");
    // An op that claims 4 GiB in a 200-byte segment, and one whose source is 1 TiB away.
    for (what, op) in [
        ("4 GiB literal", Op::Literal { len: u32::MAX }),
        ("4 GiB zeros", Op::Zero { len: u32::MAX }),
        (
            "1 TiB away",
            Op::Copy {
                len: 100,
                delta: TIB as i64,
            },
        ),
    ] {
        let mut m = l.clone();
        let mut ops = Vec::new();
        op.emit(&mut ops);
        let (page, payloads) = &mut m.pages[0];
        let Extent::Data(s) = &mut page.extents[0] else {
            unreachable!("the first extent is the segment")
        };
        let payload = &mut payloads[0];
        let data = payload.split_off(s.ops_len as usize);
        s.ops_len = ops.len() as u32;
        *payload = [ops, data].concat();
        let e = refused_cheaply(what, &old, &m.emit());
        assert!(
            matches!(
                e,
                ApplyError::LengthMismatch { .. } | ApplyError::SourceOutOfRange { .. }
            ),
            "{what}: {e:?}"
        );
    }
    // Header counts of 2^40 are checked against what the pages hold, never allocated.
    let mut m = l.clone();
    m.header.extent_count = TIB;
    m.header.segment_count = TIB;
    let e = refused_cheaply("2^40 extents in the header", &old, &m.emit());
    assert!(
        matches!(
            e,
            ApplyError::LengthMismatch {
                field: "extent_count",
                ..
            }
        ),
        "{e:?}"
    );
}

/// A varint, as postcard writes lengths and counts.
fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

#[test]
fn page_extent_counts_are_capped_before_decoding() {
    let _serial = serial();
    let (old, l) = small();
    for count in [1u64 << 40, u64::from(u32::MAX), MAX_PAGE_EXTENTS as u64 + 1] {
        // A page that claims `count` extents, followed by one real extent.
        let mut page = varint(count);
        page.extend_from_slice(&[0x01, 0x01]); // Zero { len: 1 }
        let mut h: Header = l.header.clone();
        h.first_page = PageRef {
            len: page.len() as u32,
            hash: *blake3::hash(&page).as_bytes(),
        };
        let p = seal_raw(&mut h, 0, &[], &page);
        let e = refused_cheaply("page extent count", &old, &p);
        assert!(
            matches!(
                e,
                ApplyError::Format(FormatError::TooLarge { .. } | FormatError::Malformed { .. })
            ),
            "count {count}: {e:?}"
        );
    }
}

#[test]
fn section_lengths_are_capped_before_buffering() {
    let _serial = serial();
    let (old, l) = small();
    let good = l.clone().emit();
    // header_len and signature_len in the preamble: no hash covers them
    // before they are used, so a plain edit reaches the limit check.
    for (at, what) in [(0x10, "header_len"), (0x14, "signature_len")] {
        let mut p = good.clone();
        p[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = refused_cheaply(what, &old, &p);
        assert!(
            matches!(e, ApplyError::Format(FormatError::TooLarge { field, .. }) if field == what),
            "{what}: {e:?}"
        );
    }
    // first_page.len in the header, and a page's next.len, both hashed.
    let mut h = l.header.clone();
    h.first_page.len = u32::MAX;
    let p = seal_raw(&mut h, 0, &[], &[]);
    let e = refused_cheaply("first_page.len", &old, &p);
    assert!(
        matches!(e, ApplyError::Format(FormatError::TooLarge { .. })),
        "{e:?}"
    );

    let mut m = l.clone();
    let body: Vec<u8> = {
        let (page, pays) = &mut m.pages[0];
        page.next = Some(PageRef {
            len: u32::MAX,
            hash: [0; 32],
        });
        [page.emit(), pays.concat()].concat()
    };
    m.header.first_page = PageRef {
        len: m.pages[0].0.encoded_len() as u32,
        hash: *blake3::hash(&m.pages[0].0.emit()).as_bytes(),
    };
    let p = seal_raw(&mut m.header, 0, &[], &body);
    let e = refused_cheaply("page.next.len", &old, &p);
    assert!(
        matches!(e, ApplyError::Format(FormatError::TooLarge { .. })),
        "{e:?}"
    );
}

#[test]
fn zstd_frames_claiming_terabytes_are_refused() {
    let _serial = serial();
    let old = bytes("hostile-zstd", 4096);
    // A single-segment frame whose content size (and so window) is 1 TiB,
    // then one raw 4-byte block; and a frame whose window descriptor says 2 TiB.
    let mut huge_content = vec![0x28, 0xB5, 0x2F, 0xFD, 0xE0];
    huge_content.extend_from_slice(&(1u64 << 40).to_le_bytes());
    huge_content.extend_from_slice(&[0x21, 0x00, 0x00, b'a', b'b', b'c', b'd']);
    let huge_window = vec![
        0x28, 0xB5, 0x2F, 0xFD, 0x00, 0xF8, 0x21, 0x00, 0x00, b'a', b'b', b'c', b'd',
    ];
    for (what, frame) in [
        ("1 TiB content", huge_content),
        ("2 TiB window", huge_window),
    ] {
        let mut ops = Vec::new();
        Op::Literal { len: 4 }.emit(&mut ops);
        let out = b"abcd";
        let entry = SegmentEntry {
            new_len: 4,
            codec: Codec::Zstd as u8,
            ops_len: ops.len() as u32,
            data_len: frame.len() as u32,
            hash: *blake3::hash(out).as_bytes(),
            inline_ops: None,
        };
        let page = Page {
            extents: vec![Extent::Data(entry)],
            next: None,
        }
        .emit();
        let mut h = small().1.header;
        h.old_len = old.len() as u64;
        h.old_hash = *blake3::hash(&old).as_bytes();
        h.new_len = 4;
        h.new_hash = *blake3::hash(out).as_bytes();
        h.extent_count = 1;
        h.segment_count = 1;
        h.segment_max = 4;
        h.first_page = PageRef {
            len: page.len() as u32,
            hash: *blake3::hash(&page).as_bytes(),
        };
        let p = seal_raw(&mut h, 0, &[], &[page, ops, frame].concat());
        let e = refused_cheaply(what, &old, &p);
        assert!(matches!(e, ApplyError::Decode { .. }), "{what}: {e:?}");
    }
}

/// The driver itself: a valid patch through both in-place passes gives new,
/// so the refusals above are the engine's, not the harness's.
#[test]
fn the_in_place_flow_applies_a_valid_patch() {
    let _serial = serial();
    let src = sources()
        .into_iter()
        .find(|s| s.name == "producer-in-place")
        .expect("source");
    let (verify, write) = in_place_passes(src.old.len() as u64);
    drive(&src.old, &src.patch, verify, 4096, &mut Vec::new()).expect("verify pass");
    let mut disk = Vec::with_capacity(src.old.len() + 4096);
    let run = drive(&src.old, &src.patch, write, 4096, &mut disk).expect("write pass");
    let want = reference::apply(&src.old, &src.patch).expect("reference");
    assert!(disk == want);
    assert!(
        run.bytes_touched < want.len() as u64 / 4,
        "in place rewrote {} bytes",
        run.bytes_touched
    );
}

/// The largest buffers a valid patch can make the engine hold at once: a
/// page of 8192 extents, then a 4 MiB segment whose payload is near the
/// 5 MiB limit (a 1 MiB ops block and an incompressible zstd frame with a
/// 4 MiB window), fed in small pieces so every buffer grows step by step.
/// The peak must stay within `APPLIER_WORST_CASE_MEMORY`.
#[test]
fn worst_case_patch_stays_within_the_stated_bound() {
    let _serial = serial();
    let old = bytes("worst-case-old", 4096);
    let zeros = 524_000usize; // Op::Zero { len: 1 } encodes in 2 bytes
    let literal = MAX_SEGMENT_LEN as usize - zeros;
    let mut data = vec![0u8; literal];
    blake3::Hasher::new().finalize_xof().fill(&mut data);
    let mut ops = vec![Op::Zero { len: 1 }; zeros];
    ops.push(Op::Literal {
        len: literal as u32,
    });
    let mut parts = vec![Part::Zero { len: 1 }; MAX_PAGE_EXTENTS - 1];
    parts.push(Part::Segment {
        ops,
        data: data.clone(),
        codec: Codec::Stored,
    });
    let mut b = PatchBuilder::new(parts);
    b.extents_per_page = MAX_PAGE_EXTENTS;
    let mut l = Layout::walk(&b.build(&old).0).expect("walks");
    // Swap the stored data block for a zstd frame with a 4 MiB window.
    let frame = {
        let mut c = zstd::bulk::Compressor::new(19).expect("zstd");
        c.set_parameter(zstd::zstd_safe::CParameter::WindowLog(22))
            .expect("window log");
        c.compress(&data).expect("compress")
    };
    let (page, payloads) = &mut l.pages[0];
    let Some(Extent::Data(s)) = page.extents.last_mut() else {
        unreachable!("the last extent is the segment")
    };
    let ops_block = payloads[0][..s.ops_len as usize].to_vec();
    assert!(s.ops_len > 1_000_000 && frame.len() > 3 << 20);
    s.codec = Codec::Zstd as u8;
    s.data_len = frame.len() as u32;
    payloads[0] = [ops_block, frame].concat();
    let patch = l.emit();
    reference::apply(&old, &patch).expect("the reference applies the worst case");

    assert_peak_within_bound("worst-case patch", &old, &patch, MAX_SEGMENT_LEN as usize);
}

/// The worst case with codec 0x02: a page of 8192 extents, then a 4 MiB
/// segment with a 1 MiB ops block and a frame of about 4 MiB that uses a
/// 4 MiB prefix. The prefix is read into the output buffer, handed to the
/// decoder (which copies it) and freed, so the peak stays within
/// `APPLIER_WORST_CASE_MEMORY`, which counts the prefix once.
#[test]
fn worst_case_prefix_patch_stays_within_the_stated_bound() {
    let _serial = serial();
    let max = MAX_SEGMENT_LEN as usize;
    let mut old = vec![0u8; MAX_PREFIX_LEN as usize + 4096];
    blake3::Hasher::new()
        .update(b"worst-prefix-old")
        .finalize_xof()
        .fill(&mut old);
    let zeros = 524_000usize; // Op::Zero { len: 1 } encodes in 2 bytes
    let literal = max - zeros;
    let mut data = vec![0u8; literal];
    blake3::Hasher::new().finalize_xof().fill(&mut data);
    data[..100_000].copy_from_slice(&old[1000..101_000]); // something to find in the prefix
    let mut ops = vec![Op::Zero { len: 1 }; zeros];
    ops.push(Op::Literal {
        len: literal as u32,
    });
    let mut parts = vec![Part::Zero { len: 1 }; MAX_PAGE_EXTENTS - 1];
    parts.push(Part::PrefixSegment {
        ops,
        data,
        prefix: PrefixRef {
            delta: -((MAX_PAGE_EXTENTS - 1) as i64),
            len: MAX_PREFIX_LEN,
        },
    });
    let mut b = PatchBuilder::new(parts);
    b.extents_per_page = MAX_PAGE_EXTENTS;
    let patch = b.build(&old).0;
    let l = Layout::walk(&patch).expect("walks");
    let Some(Extent::Data(s)) = l.pages[0].0.extents.last() else {
        unreachable!("the last extent is the segment")
    };
    assert!(s.ops_len > 1_000_000 && s.data_len > 3 << 20 && s.codec == 2);
    reference::apply(&old, &patch).expect("the reference applies the worst case");

    assert_peak_within_bound("worst-case prefix patch", &old, &patch, max);
}

/// An old file of `MAX_PREFIX_LEN` + 4 KiB random bytes, for the worst
/// cases with a 4 MiB prefix.
fn prefix_old(key: &str) -> Vec<u8> {
    let mut old = vec![0u8; MAX_PREFIX_LEN as usize + 4096];
    blake3::Hasher::new()
        .update(key.as_bytes())
        .finalize_xof()
        .fill(&mut old);
    old
}

/// Copy ops of 1 to 3 bytes from random old offsets, for a segment at new
/// offset `start`, until they encode in at least `budget` bytes. Returns
/// the ops, their encoded length and the bytes they produce.
fn random_copies(
    old_len: usize,
    start: usize,
    budget: usize,
    rng: &mut Rng,
) -> (Vec<Op>, usize, usize) {
    let (mut ops, mut ops_len, mut produced) = (Vec::new(), 0usize, 0usize);
    let mut enc = Vec::new();
    while ops_len < budget {
        let len = 1 + rng.below(3);
        let source = rng.below(old_len - len);
        let op = Op::Copy {
            len: len as u32,
            delta: source as i64 - (start + produced) as i64,
        };
        enc.clear();
        op.emit(&mut enc);
        ops_len += enc.len();
        produced += len;
        ops.push(op);
    }
    (ops, ops_len, produced)
}

/// The packed worst-case segment at new offset `start` over a
/// [`prefix_old`]: 4 MiB of new bytes with codec 0x02 and a 4 MiB prefix,
/// whose packed ops decode to almost `MAX_OPS_LEN` (1 MiB) from a frame of
/// several hundred KiB (copies with random lengths and sources), beside a
/// frame of almost 4 MiB. Returns the part and its ops' unpacked length.
fn worst_packed_segment(old: &[u8], start: usize) -> (Part, usize) {
    let max = MAX_SEGMENT_LEN as usize;
    let mut rng = Rng(0x9ACC_ED00);
    let (mut ops, ops_len, produced) =
        random_copies(old.len(), start, MAX_OPS_LEN as usize - 64, &mut rng);
    let literal = max - produced;
    let mut data = vec![0u8; literal];
    blake3::Hasher::new().finalize_xof().fill(&mut data);
    ops.push(Op::Literal {
        len: literal as u32,
    });
    let part = Part::PrefixSegment {
        ops,
        data,
        prefix: PrefixRef {
            delta: -(start as i64),
            len: MAX_PREFIX_LEN,
        },
    }
    .packed();
    (part, ops_len)
}

/// The worst case with packed ops: a page of 8192 extents, then
/// [`worst_packed_segment`]. The decoded ops are held while the prefix is
/// read and the data decoded, so this meets every buffer the bound counts.
#[test]
fn worst_case_packed_patch_stays_within_the_stated_bound() {
    let _serial = serial();
    let old = prefix_old("worst-packed-old");
    let start = MAX_PAGE_EXTENTS - 1; // the segment's new offset
    let (segment, ops_len) = worst_packed_segment(&old, start);
    let mut parts = vec![Part::Zero { len: 1 }; start];
    parts.push(segment);
    let mut b = PatchBuilder::new(parts);
    b.extents_per_page = MAX_PAGE_EXTENTS;
    let patch = b.build(&old).0;
    let l = Layout::walk(&patch).expect("walks");
    let Some(Extent::Data(s)) = l.pages[0].0.extents.last() else {
        unreachable!("the last extent is the segment")
    };
    assert_eq!(s.codec, 0x02 | PACKED_OPS);
    assert!(
        s.ops_len > 300_000 && s.data_len > 3 << 20,
        "ops frame {} bytes, data {} bytes",
        s.ops_len,
        s.data_len
    );
    assert!(ops_len > MAX_OPS_LEN as usize - 100 && ops_len <= MAX_OPS_LEN as usize);
    reference::apply(&old, &patch).expect("the reference applies the worst case");

    let label = format!(
        "worst-case packed patch ({ops_len} bytes of ops packed in {})",
        s.ops_len
    );
    assert_peak_within_bound(&label, &old, &patch, MAX_SEGMENT_LEN as usize);
}

/// The worst case with compact pages (format 1.2): one compact page at its
/// limits, a frame of raw blocks (which zstd does not shrink) that decodes
/// to almost `MAX_PAGE_LEN`, so the page is held twice over, with 8192
/// extents: zero runs, a segment whose ops (about 240 KiB) are inline, and
/// [`worst_packed_segment`]. The decoded page is held while that runs.
#[test]
fn worst_case_compact_patch_stays_within_the_stated_bound() {
    let _serial = serial();
    let old = prefix_old("worst-compact-old");
    let zeros = MAX_PAGE_EXTENTS - 2;
    // The page: 2 bytes of count, 2 per zero run, under 60 per data entry
    // and 1 of next; the frame adds 15 (header and 3 block headers).
    let inline_budget = MAX_PAGE_LEN as usize - 2 - 2 * zeros - 2 * 60 - 1 - 15;
    let mut rng = Rng(0xC0_3BAC);
    let (inline_ops, _, inline_len) = random_copies(old.len(), zeros, inline_budget, &mut rng);
    let (packed, _) = worst_packed_segment(&old, zeros + inline_len);
    let mut parts = vec![Part::Zero { len: 1 }; zeros];
    parts.push(Part::Segment {
        ops: inline_ops,
        data: Vec::new(),
        codec: Codec::Stored,
    });
    parts.push(packed);
    let mut b = PatchBuilder::new(parts);
    b.extents_per_page = MAX_PAGE_EXTENTS;
    b.compact = Some(|content| stored_frame(content, Some(content.len() as u32)));
    let patch = b.build(&old).0;
    let l = Layout::walk(&patch).expect("walks");
    let page_len = l.header.first_page.len;
    assert!(
        page_len > MAX_PAGE_LEN - 200 && page_len <= MAX_PAGE_LEN,
        "page of {page_len} bytes"
    );
    let Some(Extent::Data(s)) = l.pages[0].0.extents.last() else {
        unreachable!("the last extent is the packed segment")
    };
    assert!(s.inline_ops.is_none() && s.ops_len > 300_000 && s.data_len > 3 << 20);
    reference::apply(&old, &patch).expect("the reference applies the worst case");

    let label = format!("worst-case compact patch (a {page_len}-byte page)");
    assert_peak_within_bound(&label, &old, &patch, MAX_SEGMENT_LEN as usize);
}

/// The worst case with codec 0x03 (format 1.3): one compact page at its
/// limits as in the compact worst case, then three 0x03 segments. The
/// first fills the data history with 4 MiB; the second is
/// [`worst_packed_segment`]'s shape with the history as its prefix (about
/// 0.5 MiB of it next to 3.5 MiB of data); the third's packed ops take one
/// data byte, so its frame gets 4 MiB - 1 bytes of history. The
/// engine keeps the history between segments and hands its end to the
/// decoder, which copies it: the bound counts both.
#[test]
fn worst_case_history_patch_stays_within_the_stated_bound() {
    let _serial = serial();
    let old = prefix_old("worst-history-old");
    let max = MAX_SEGMENT_LEN as usize;
    let zeros = MAX_PAGE_EXTENTS - 4;
    let inline_budget = MAX_PAGE_LEN as usize - 2 - 2 * zeros - 4 * 60 - 1 - 15;
    let mut rng = Rng(0x0004_1570);
    let (inline_ops, _, inline_len) = random_copies(old.len(), zeros, inline_budget, &mut rng);
    let mut start = zeros + inline_len;
    // Random bytes with every 16th zeroed: a 4 MiB frame of them stays
    // under the 4 MiB data_len limit.
    let mut first = vec![0u8; max];
    blake3::Hasher::new()
        .update(b"worst-history-first")
        .finalize_xof()
        .fill(&mut first);
    first.iter_mut().step_by(16).for_each(|b| *b = 0);
    let first = Part::Segment {
        ops: vec![Op::Literal { len: max as u32 }],
        data: first,
        codec: Codec::ZstdHistory,
    };
    start += max;
    let (mut second_ops, _, produced) =
        random_copies(old.len(), start, MAX_OPS_LEN as usize - 64, &mut rng);
    let literal = max - produced;
    let mut second_data = vec![0u8; literal];
    blake3::Hasher::new()
        .update(b"worst-history-second")
        .finalize_xof()
        .fill(&mut second_data);
    second_ops.push(Op::Literal {
        len: literal as u32,
    });
    let second = Part::Segment {
        ops: second_ops,
        data: second_data,
        codec: Codec::ZstdHistory,
    }
    .packed();
    start += max;
    let (mut third_ops, _, produced) =
        random_copies(old.len(), start, MAX_OPS_LEN as usize - 64, &mut rng);
    assert!(produced < max);
    third_ops.push(Op::Literal { len: 1 });
    let third = Part::Segment {
        ops: third_ops,
        data: vec![0x33],
        codec: Codec::ZstdHistory,
    }
    .packed();
    let mut parts = vec![Part::Zero { len: 1 }; zeros];
    parts.push(Part::Segment {
        ops: inline_ops,
        data: Vec::new(),
        codec: Codec::Stored,
    });
    parts.extend([first, second, third]);
    let mut b = PatchBuilder::new(parts);
    b.extents_per_page = MAX_PAGE_EXTENTS;
    b.compact = Some(|content| stored_frame(content, Some(content.len() as u32)));
    let patch = b.build(&old).0;
    let l = Layout::walk(&patch).expect("walks");
    let page_len = l.header.first_page.len;
    assert!(
        page_len > MAX_PAGE_LEN - 400 && page_len <= MAX_PAGE_LEN,
        "page of {page_len} bytes"
    );
    let segs: Vec<SegmentEntry> = l.pages[0]
        .0
        .extents
        .iter()
        .filter_map(|e| match e {
            Extent::Data(s) => Some(*s),
            _ => None,
        })
        .collect();
    assert_eq!(segs.len(), 4);
    assert_eq!(segs[1].codec, 0x03);
    assert!(segs[1].data_len > 3 << 20 && segs[1].new_len == MAX_SEGMENT_LEN);
    for s in &segs[2..] {
        assert_eq!(s.codec, 0x03 | PACKED_OPS);
        assert!(s.ops_len > 300_000, "ops frame of {} bytes", s.ops_len);
    }
    assert!(segs[2].data_len > 3 << 20 && segs[2].new_len == MAX_SEGMENT_LEN);
    reference::apply(&old, &patch).expect("the reference applies the worst case");

    let label = format!("worst-case history patch (a {page_len}-byte page)");
    assert_peak_within_bound(&label, &old, &patch, 4 * max);
}

/// Every byte of the `data-history` vector's patch, flipped in turn (one
/// bit, a different one at each offset): the patch as it is and re-sealed
/// (hashes recomputed, so the edit meets the engine's deeper checks) go
/// through [`check_apply`], which panics when the engine panics, breaks its
/// contract, or disagrees with the reference on whether to accept and on
/// the bytes it produces. As it is, each is refused.
#[test]
fn every_byte_of_a_history_patch_is_flipped() {
    let _serial = serial();
    let dir = root().join("spec/vectors/data-history");
    let old = fs::read(dir.join("old.bin")).expect("old.bin");
    let patch = fs::read(dir.join("patch.anyp")).expect("patch.anyp");
    let mut resealed_ok = 0;
    for at in 0..patch.len() {
        let mut p = patch.clone();
        p[at] ^= 1 << (at % 8);
        assert!(
            reference::apply(&old, &p).is_err(),
            "flip at {at}: the reference accepts it"
        );
        drive(
            &old,
            &p,
            Config::new(old.len() as u64),
            4096,
            &mut Vec::new(),
        )
        .expect_err(&format!("flip at {at}: the engine accepts it"));
        check_apply(&p);
        if let Some(l) = Layout::walk(&p) {
            let sealed = l.seal(&old);
            let verdict = same_verdict(&format!("flip at {at}, re-sealed"), &old, &sealed);
            if reference::apply(&old, &sealed).is_ok() {
                assert!(
                    verdict.is_ok(),
                    "flip at {at}: only the reference applies it"
                );
                resealed_ok += 1;
            }
        }
    }
    println!(
        "{} flips of the data-history vector checked; {resealed_ok} re-sealed ones apply",
        patch.len()
    );
}

/// Packed ops frames that declare a terabyte of content, or a window of
/// 2 TiB, are refused before anything is sized for them.
#[test]
fn packed_ops_claiming_terabytes_are_refused() {
    let _serial = serial();
    let (old, l) = small();
    let mut ops = Vec::new();
    Op::Literal { len: 100 }.emit(&mut ops);
    Op::Copy { len: 100, delta: 0 }.emit(&mut ops);
    let block = |mut frame: Vec<u8>| {
        let header = 1 | (ops.len() as u32) << 3; // last block, raw
        frame.extend_from_slice(&header.to_le_bytes()[..3]);
        frame.extend_from_slice(&ops);
        frame
    };
    // Window 1 MiB, 8-byte content size 1 TiB; window descriptor 2 TiB.
    let mut content = vec![0x28, 0xB5, 0x2F, 0xFD, 0xC0, 0x50];
    content.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let window = vec![0x28, 0xB5, 0x2F, 0xFD, 0x00, 0xF8];
    for (what, frame, tib) in [
        ("1 TiB of ops", block(content), true),
        ("2 TiB window", block(window), false),
    ] {
        let mut m = l.clone();
        m.preamble.required_features |= FEATURE_PACKED_OPS;
        let (page, payloads) = &mut m.pages[0];
        let Some(Extent::Data(s)) = page.extents.first_mut() else {
            unreachable!("the first extent is the segment")
        };
        let data = payloads[0][s.ops_len as usize..].to_vec();
        s.codec |= PACKED_OPS;
        s.ops_len = frame.len() as u32;
        payloads[0] = [frame, data].concat();
        let e = refused_cheaply(what, &old, &m.emit());
        if tib {
            assert_eq!(
                e,
                ApplyError::Format(FormatError::TooLarge {
                    field: "packed ops content size",
                    got: 1 << 40,
                    max: MAX_OPS_LEN.into(),
                }),
                "{what}"
            );
        } else {
            assert!(matches!(e, ApplyError::Decode { segment: 0, .. }), "{what}");
        }
    }
}

/// Two valid segments, the first one byte short of 4 MiB and the second a
/// full 4 MiB: buffers sized for the first must grow for the second. A
/// `Vec` that grows by doubling would then reserve almost 8 MiB where 4 MiB
/// is needed, and the peak would pass the stated bound.
#[test]
fn growing_segment_buffers_stay_within_the_stated_bound() {
    let _serial = serial();
    let old = bytes("growth-old", 4096);
    // Random bytes with every 16th zeroed: a 4 MiB zstd frame of them stays
    // under the 4 MiB data_len limit.
    let noise = |n: usize, key: &str| {
        let mut v = vec![0u8; n];
        blake3::Hasher::new()
            .update(key.as_bytes())
            .finalize_xof()
            .fill(&mut v);
        v.iter_mut().step_by(16).for_each(|b| *b = 0);
        v
    };
    let max = MAX_SEGMENT_LEN as usize;
    let parts = vec![
        Part::Segment {
            ops: vec![Op::Literal {
                len: (max - 1) as u32,
            }],
            data: noise(max - 1, "first"),
            codec: Codec::Zstd,
        },
        Part::Segment {
            ops: vec![Op::Literal { len: max as u32 }],
            data: noise(max, "second"),
            codec: Codec::Zstd,
        },
    ];
    let patch = PatchBuilder::new(parts).build(&old).0;
    let mut peaks = Vec::new();
    for feed in [4096, patch.len()] {
        let mut target = Vec::with_capacity(2 * max);
        let (run, peak) = measured(|| {
            drive(
                &old,
                &patch,
                Config::new(old.len() as u64),
                feed,
                &mut target,
            )
        });
        run.expect("the engine applies both segments");
        println!(
            "growing segments, fed {feed} bytes at a time: engine peak {peak} bytes ({:.1} MiB), bound {APPLIER_WORST_CASE_MEMORY}",
            peak as f64 / f64::from(1 << 20)
        );
        peaks.push((feed, peak));
    }
    assert!(
        peaks.iter().all(|&(_, p)| p <= APPLIER_WORST_CASE_MEMORY),
        "the engine allocated above APPLIER_WORST_CASE_MEMORY ({APPLIER_WORST_CASE_MEMORY}): (feed, peak) {peaks:?}"
    );
}

/// Drives `patch` over `old` fed 4 KiB, 1 MiB and all at a time, and checks
/// that the engine's peak allocation stays within
/// `APPLIER_WORST_CASE_MEMORY`; `max` sizes the target buffer.
fn assert_peak_within_bound(label: &str, old: &[u8], patch: &[u8], max: usize) {
    for feed in [4096, 1 << 20, patch.len()] {
        let mut target = Vec::with_capacity(max + MAX_PAGE_EXTENTS);
        let (run, peak) =
            measured(|| drive(old, patch, Config::new(old.len() as u64), feed, &mut target));
        run.expect("the engine applies the worst case");
        println!(
            "{label}, fed {feed} bytes at a time: engine peak {peak} bytes ({:.1} MiB), bound {APPLIER_WORST_CASE_MEMORY}",
            peak as f64 / f64::from(1 << 20)
        );
        assert!(
            peak <= APPLIER_WORST_CASE_MEMORY,
            "{label}, fed {feed} bytes at a time: the engine allocated {peak} bytes, above APPLIER_WORST_CASE_MEMORY ({APPLIER_WORST_CASE_MEMORY})"
        );
    }
}
