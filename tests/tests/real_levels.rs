//! `--level fast` on data like real release archives of compiled code
//! (issue 19): in recompiled code nearly every block differs a little from
//! its old self, at offsets that drift, so neither block matching nor the
//! shift matcher finds it; `fast` codes it with the old bytes around it as
//! zstd history, as `zstd --patch-from` does. Also: the shift matcher's
//! sampling at `fast` still finds data shifted by many small insertions;
//! `fast` finds recompiled code whose old self lies far away (a sparse
//! index of the whole old file places the history); and `fast` makes the
//! same bytes for any thread count.

use std::fs;

use anypatch_apply::Config;
use anypatch_producer::{make_patch, Level, Options, Summary};
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

/// Old bytes, and new ones "recompiled": one byte of every 16 changed (an
/// address that moved) and one byte inserted every 997 (code that grew),
/// so no 64-byte run is unchanged and the offsets drift.
fn recompiled_pair() -> (Vec<u8>, Vec<u8>) {
    let old = noise(1, 3 << 19);
    let mut new = Vec::with_capacity(old.len() + old.len() / 997 + 1);
    for (i, &b) in old.iter().enumerate() {
        new.push(if i % 16 == 7 { b.wrapping_add(1) } else { b });
        if i % 997 == 996 {
            new.push((i / 997) as u8);
        }
    }
    (old, new)
}

/// Old: 6 MiB of other data, then a 1.5 MiB "library"; new: that library
/// recompiled (one byte of every 100 changed, so equal runs are too short
/// for the shift matcher's 128 bytes but hold 64-byte anchors) at offset 0,
/// where the old file holds the other data: as an upgraded file written to
/// another place of a disk image.
fn moved_far_pair() -> (Vec<u8>, Vec<u8>) {
    let mut old = noise(4, 6 << 20);
    let lib = noise(5, 3 << 19);
    old.extend_from_slice(&lib);
    let new = lib
        .iter()
        .enumerate()
        .map(|(i, &b)| if i % 100 == 50 { b ^ 0x5A } else { b })
        .collect();
    (old, new)
}

/// Noise with zero runs (as in images and archives), one byte prepended,
/// then insertions and deletions of 1 to 100 bytes every 40,000 bytes: the
/// corpus's `shift` pair, 4 MiB long.
fn inserts_pair() -> (Vec<u8>, Vec<u8>, usize) {
    let mut old = noise(2, 4 << 20);
    for at in (3_000..old.len() - 2_000).step_by(14_000) {
        old[at..at + 1_000].fill(0);
    }
    let mut new = vec![b'!'];
    let mut inserted = 1;
    for (k, piece) in old.chunks(40_000).enumerate() {
        let n = 1 + k * 37 % 100;
        if k % 2 == 0 {
            new.extend_from_slice(piece);
            new.extend_from_slice(&noise(k as u64 + 3, n));
            inserted += n;
        } else {
            new.extend_from_slice(&piece[n.min(piece.len())..]);
        }
    }
    (old, new, inserted)
}

#[test]
fn fast_codes_recompiled_code_against_the_old_bytes() {
    let (old, new) = recompiled_pair();
    let (patch, summary) = produce(&old, &new, &Level::Fast.options());
    check_applies(&old, &new, &patch);
    // No block or 64-byte window is unchanged: it is all data.
    assert!(
        summary.changed_bytes > new.len() as u64 * 9 / 10,
        "{summary:?}"
    );
    // Alone, noise with one byte of 16 changed does not compress; with the
    // old bytes as history only the changed bytes and the matches cost.
    // Without them this patch was as large as the new file.
    assert!(
        patch.len() < new.len() / 4,
        "fast: {} bytes for {} new bytes",
        patch.len(),
        new.len()
    );
}

#[test]
fn fast_finds_the_history_of_code_that_moved_far() {
    let (old, new) = moved_far_pair();
    let (patch, summary) = produce(&old, &new, &Level::Fast.options());
    check_applies(&old, &new, &patch);
    assert!(
        summary.changed_bytes > new.len() as u64 * 9 / 10,
        "{summary:?}"
    );
    // With the old library as history only the changed bytes and the
    // matches cost; the history the matches around the data pointed at
    // (the same offset) holds nothing like it.
    assert!(
        patch.len() < new.len() / 8,
        "fast: {} bytes for {} new bytes",
        patch.len(),
        new.len()
    );
    let without = Options {
        prefix_search: false,
        ..Level::Fast.options()
    };
    let (plain, _) = produce(&old, &new, &without);
    assert!(
        plain.len() > new.len() / 2,
        "without the search the history is elsewhere: {} bytes",
        plain.len()
    );
}

#[test]
fn fast_finds_data_shifted_by_many_insertions() {
    let (old, new, inserted) = inserts_pair();
    let (patch, summary) = produce(&old, &new, &Level::Fast.options());
    check_applies(&old, &new, &patch);
    // The matcher samples the changed bytes at `fast`, but looks on after
    // each match, where the data goes on at the next shift: without that
    // the bytes up to the next sample were data at a stale offset (59% of
    // the new bytes were copies instead of all but the inserted ones).
    assert!(
        summary.moved_bytes > new.len() as u64 * 9 / 10,
        "{summary:?}"
    );
    assert!(
        patch.len() < 4 * inserted,
        "fast: {} bytes for {inserted} inserted bytes",
        patch.len()
    );
}

#[test]
fn fast_makes_the_same_bytes_for_any_thread_count() {
    let (old, new) = recompiled_pair();
    let (old2, new2, _) = inserts_pair();
    let (old3, new3) = moved_far_pair();
    for (old, new) in [(&old, &new), (&old2, &new2), (&old3, &new3)] {
        let patches: Vec<Vec<u8>> = [1, 2, 5]
            .into_iter()
            .map(|threads| {
                let opts = Options {
                    threads,
                    ..Level::Fast.options()
                };
                produce(old, new, &opts).0
            })
            .collect();
        assert!(
            patches.windows(2).all(|w| w[0] == w[1]),
            "fast: patch bytes depend on the thread count"
        );
    }
}
