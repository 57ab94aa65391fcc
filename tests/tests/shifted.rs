//! Data shifted by any number of bytes (issue 5): one byte prepended and
//! small inserts and deletes become copies with byte-granular deltas, so
//! the patch holds little more than the inserted bytes. Checked through the
//! engine and the reference applier, in place, and across thread counts.

use std::fs;

use anypatch_apply::Config;
use anypatch_producer::{make_patch, Level, Options, Summary};
use anypatch_tests::{apply_in_memory, reference, vectors::bytes};

/// Random old bytes with zero runs (as in images), and a new file with one
/// byte prepended, then inserts and deletes of 1..=100 bytes.
fn shifted_pair() -> (Vec<u8>, Vec<u8>, usize) {
    let mut old = bytes("shifted-old", 600_000);
    for k in 0..40 {
        let at = k * 14_000 + 3_000;
        old[at..at + 900 + k * 37].fill(0);
    }
    let mut new = old.clone();
    new.insert(0, b'!');
    let mut inserted = 1;
    for k in 0..12usize {
        let at = 20_000 + k * 45_000 + k * k * 13;
        let n = 1 + k * 8;
        if k % 2 == 0 {
            new.splice(at..at, bytes(&format!("ins-{k}"), n));
            inserted += n;
        } else {
            new.drain(at..at + n);
        }
    }
    (old, new, inserted)
}

fn produce(old: &[u8], new: &[u8], opts: &Options) -> (Vec<u8>, Summary) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (o, n) = (dir.path().join("old"), dir.path().join("new"));
    fs::write(&o, old).expect("write");
    fs::write(&n, new).expect("write");
    let mut patch = Vec::new();
    let summary = make_patch(&o, &n, &mut patch, opts, &|_| {}).expect("make_patch");
    (patch, summary)
}

fn check_applies(old: &[u8], new: &[u8], patch: &[u8]) {
    let got = apply_in_memory(old, patch, Config::new(old.len() as u64), 1 << 20)
        .expect("engine applies");
    assert!(got.target == new, "engine output differs");
    let r = reference::apply(old, patch).expect("reference applies");
    assert!(r == new, "reference output differs");
}

#[test]
fn shifted_data_becomes_copies() {
    let (old, new, inserted) = shifted_pair();
    // The fast level keeps changes more than 16 KiB apart in separate
    // segments, so the long shifted runs between them show as copy extents
    // (its sampling shift matcher still finds them: see real_levels.rs).
    let (fast, summary) = produce(&old, &new, &Level::Fast.options());
    check_applies(&old, &new, &fast);
    // Without shift matching nearly all of the 600 KB would be data.
    assert!(
        summary.moved_bytes > new.len() as u64 * 9 / 10,
        "{summary:?}"
    );
    assert!(
        fast.len() < inserted + 2_000,
        "patch of {} bytes for {inserted} inserted bytes",
        fast.len()
    );
    // The default level merges nearby changes into segments whose copies are
    // ops, not extents; it still applies, and is no larger.
    let (patch, _) = produce(&old, &new, &Options::default());
    check_applies(&old, &new, &patch);
    assert!(
        patch.len() <= fast.len(),
        "default level {} bytes, fast {}",
        patch.len(),
        fast.len()
    );
}

#[test]
fn in_place_patches_never_copy_backwards() {
    let (old, new, _) = shifted_pair();
    let opts = Options {
        in_place: true,
        ..Options::default()
    };
    let (patch, summary) = produce(&old, &new, &opts);
    assert!(summary.in_place_safe);
    check_applies(&old, &new, &patch);
    let in_place = Config {
        in_place: true,
        skip_unchanged: true,
        ..Config::new(old.len() as u64)
    };
    let got = apply_in_memory(&old, &patch, in_place, 1 << 20).expect("applies in place");
    assert!(got.target == new, "in-place output differs");

    // Deleting bytes shifts data towards the start: copies from later
    // offsets, which in-place patches keep.
    let mut shorter = old.clone();
    shorter.drain(..7);
    shorter.drain(300_000..300_050);
    let (patch, summary) = produce(&old, &shorter, &opts);
    assert!(summary.in_place_safe);
    assert!(summary.moved_bytes > shorter.len() as u64 * 9 / 10);
    let got = apply_in_memory(&old, &patch, in_place, 1 << 20).expect("applies in place");
    assert!(got.target == shorter, "in-place output differs");
}

#[test]
fn same_bytes_for_any_thread_count_and_segment_len() {
    let (old, new, _) = shifted_pair();
    for segment_len in [4096, 50_000, 4 << 20] {
        let one = produce(
            &old,
            &new,
            &Options {
                threads: 1,
                segment_len,
                ..Options::default()
            },
        )
        .0;
        let three = produce(
            &old,
            &new,
            &Options {
                threads: 3,
                segment_len,
                ..Options::default()
            },
        )
        .0;
        assert!(one == three, "segment_len {segment_len}");
        check_applies(&old, &new, &one);
    }
}
