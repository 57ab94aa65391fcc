//! `--level best`'s approximate matching against the whole old file
//! (issue 19; producer module `approx`): recompiled code whose old self lies
//! further away than any segment's history is found through the old
//! file's suffix array, extended over the bytes that changed, and coded as
//! bytewise deltas that compress to almost nothing, as bsdiff and
//! HDiffPatch do. Also: the patch is the same for any thread count, and
//! data made of one repeated pattern (where every search runs long) is
//! coded correctly.

use std::fs;

use anypatch_apply::Config;
use anypatch_producer::{make_patch, Level, Options};
use anypatch_tests::{apply_in_memory, reference};

/// `n` bytes of noise (xorshift64*), which zstd cannot shrink on its own.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        out.extend_from_slice(&s.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(n);
    out
}

fn produce(old: &[u8], new: &[u8], opts: &Options) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let (o, n) = (dir.path().join("old"), dir.path().join("new"));
    fs::write(&o, old).expect("write");
    fs::write(&n, new).expect("write");
    let mut patch = Vec::new();
    make_patch(&o, &n, &mut patch, opts, &|_| {}).expect("make_patch");
    patch
}

fn check_applies(old: &[u8], new: &[u8], patch: &[u8]) {
    let got = apply_in_memory(old, patch, Config::new(old.len() as u64), 1 << 20)
        .expect("engine applies");
    assert!(got.target == new, "engine output differs");
    let r = reference::apply(old, patch).expect("reference applies");
    assert!(r == new, "reference output differs");
}

/// `best` with approximate matching (not yet its default).
fn approx() -> Options {
    Options {
        approx_match: true,
        ..Level::Best.options()
    }
}

/// `x` "recompiled": one byte of every 16 changed, as addresses that moved.
fn recompiled(x: &[u8]) -> Vec<u8> {
    x.iter()
        .enumerate()
        .map(|(i, &b)| if i % 16 == 5 { b.wrapping_add(0x40) } else { b })
        .collect()
}

/// Three 3 MiB pieces of code A, B, C become C', A', B': every block
/// differs, and C' starts 6 MiB before its old self, beyond the old bytes
/// a segment takes as history.
fn moved_recompiled_pair() -> (Vec<u8>, Vec<u8>) {
    let old = noise(7, 9 << 20);
    let third = 3 << 20;
    let mut new = recompiled(&old[2 * third..]);
    new.extend(recompiled(&old[..2 * third]));
    (old, new)
}

#[test]
fn recompiled_code_moved_far_becomes_small_deltas() {
    let (old, new) = moved_recompiled_pair();
    let patch = produce(&old, &new, &approx());
    check_applies(&old, &new, &patch);
    // The differences are one byte in 16, always the same: almost nothing.
    assert!(
        patch.len() < new.len() / 50,
        "best made {} bytes for {} new bytes",
        patch.len(),
        new.len()
    );
    // Without the whole-file match the pieces are near-random literals.
    let per_segment = Options {
        approx_match: false,
        ..Level::Best.options()
    };
    let without = produce(&old, &new, &per_segment);
    check_applies(&old, &new, &without);
    assert!(
        without.len() > 10 * patch.len(),
        "with approximate matching {} bytes, without {}",
        patch.len(),
        without.len()
    );
}

#[test]
fn best_is_the_same_for_any_thread_count() {
    let old = noise(11, 3 << 20);
    let mut new = recompiled(&old[1 << 20..]);
    new.extend_from_slice(&noise(12, 300_000));
    new.extend(recompiled(&old[..1 << 20]));
    let opts = |threads| Options {
        threads,
        ..approx()
    };
    let one = produce(&old, &new, &opts(1));
    check_applies(&old, &new, &one);
    for threads in [2, 5] {
        assert!(
            produce(&old, &new, &opts(threads)) == one,
            "{threads} threads made other bytes than one"
        );
    }
}

#[test]
fn one_repeated_pattern_is_coded_correctly() {
    // Every suffix shares long prefixes with many others: searches and
    // extensions run to their caps. The patch must still be right.
    let old: Vec<u8> = b"abcd".iter().copied().cycle().take(2 << 20).collect();
    let mut new: Vec<u8> = b"abce".iter().copied().cycle().take(2 << 20).collect();
    for i in (0..new.len()).step_by(4099) {
        new[i] = 0;
    }
    new.extend_from_slice(&[0; 100_000]);
    let patch = produce(&old, &new, &approx());
    check_applies(&old, &new, &patch);
    assert!(patch.len() < 64 << 10, "{} bytes", patch.len());
}
