//! Property tests: random pairs through the producer, then the engine and the
//! reference applier; random corruptions of valid patches are refused.

use std::fs;

use anypatch_apply::Config;
use anypatch_producer::{make_patch, Options};
use anypatch_tests::{apply_in_memory, drive_memory, reference, vectors::bytes};
use proptest::prelude::*;

/// An edit that turns old into new.
#[derive(Debug, Clone)]
enum Edit {
    /// Overwrite at a fraction of the length with fresh bytes.
    Overwrite(f64, usize),
    /// Insert fresh bytes.
    Insert(f64, usize),
    /// Delete bytes.
    Delete(f64, usize),
    /// Zero a run.
    Zero(f64, usize),
    /// Copy a run of old from one place to another.
    Move(f64, f64, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let at = 0.0..1.0f64;
    prop_oneof![
        (at.clone(), 1..5000usize).prop_map(|(a, n)| Edit::Overwrite(a, n)),
        (at.clone(), 1..3000usize).prop_map(|(a, n)| Edit::Insert(a, n)),
        (at.clone(), 1..3000usize).prop_map(|(a, n)| Edit::Delete(a, n)),
        (at.clone(), 1..20000usize).prop_map(|(a, n)| Edit::Zero(a, n)),
        (at.clone(), at, 1..12000usize).prop_map(|(a, b, n)| Edit::Move(a, b, n)),
    ]
}

fn apply_edits(old: &[u8], edits: &[Edit], seed: u64) -> Vec<u8> {
    let mut new = old.to_vec();
    for (i, e) in edits.iter().enumerate() {
        let pos = |f: f64, len: usize| ((f * len as f64) as usize).min(len);
        let fresh = |n: usize| bytes(&format!("{seed}-{i}"), n);
        match *e {
            Edit::Overwrite(a, n) => {
                let p = pos(a, new.len());
                let end = (p + n).min(new.len());
                new[p..end].copy_from_slice(&fresh(end - p));
            }
            Edit::Insert(a, n) => {
                let p = pos(a, new.len());
                new.splice(p..p, fresh(n));
            }
            Edit::Delete(a, n) => {
                let p = pos(a, new.len());
                let end = (p + n).min(new.len());
                new.drain(p..end);
            }
            Edit::Zero(a, n) => {
                let p = pos(a, new.len());
                let end = (p + n).min(new.len());
                new[p..end].fill(0);
            }
            Edit::Move(a, b, n) => {
                let s = pos(a, old.len());
                let run = &old[s..(s + n).min(old.len())];
                let d = pos(b, new.len());
                let end = (d + run.len()).min(new.len());
                new[d..end].copy_from_slice(&run[..end - d]);
            }
        }
    }
    new
}

fn produce(old: &[u8], new: &[u8], opts: &Options) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let (o, n) = (dir.path().join("old"), dir.path().join("new"));
    fs::write(&o, old).expect("write");
    fs::write(&n, new).expect("write");
    let mut patch = Vec::new();
    make_patch(&o, &n, &mut patch, opts, &|_| {}).expect("producer succeeds on any pair");
    patch
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_pairs_round_trip(
        old_len in 0usize..200_000,
        edits in prop::collection::vec(edit(), 0..12),
        seed in any::<u64>(),
        segment_len in prop_oneof![Just(4096u32), Just(10_000u32), Just(4 << 20)],
        threads in 1usize..4,
        feed in prop_oneof![Just(1usize << 20), 1usize..5000],
    ) {
        let old = bytes(&format!("old-{seed}"), old_len);
        let new = apply_edits(&old, &edits, seed);
        let opts = Options { threads, segment_len, ..Options::default() };
        let patch = produce(&old, &new, &opts);

        let got = apply_in_memory(&old, &patch, Config::new(old.len() as u64), feed).expect("engine applies");
        prop_assert!(got.target == new, "engine output differs");
        let r = reference::apply(&old, &patch).expect("reference applies");
        prop_assert!(r == new, "reference output differs");

        // A patch the producer marks in-place safe really is: applied over the
        // old bytes themselves, skipping unchanged extents, it gives new.
        let in_place = Config { in_place: true, skip_unchanged: true, ..Config::new(old.len() as u64) };
        match apply_in_memory(&old, &patch, in_place, 1 << 20) {
            Ok(ip) => {
                prop_assert!(ip.target == new, "in-place output differs");
                // Killed after some writes, then resumed from the last write's
                // end: the result is still exact.
                let ends = drive_memory(None, &mut old.clone(), &patch, in_place, 1 << 20, usize::MAX)
                    .expect("applies")
                    .write_ends;
                if !ends.is_empty() {
                    let units = 1 + (seed as usize) % ends.len();
                    let mut target = old.clone();
                    drive_memory(None, &mut target, &patch, in_place, 1 << 20, units).expect("applies");
                    let resumed = Config { verify_base: false, resume_from: ends[units - 1], ..in_place };
                    let done = drive_memory(None, &mut target, &patch, resumed, 1 << 20, usize::MAX)
                        .expect("resume applies")
                        .summary
                        .expect("runs to the end");
                    prop_assert_eq!(done.new_len, new.len() as u64);
                    target.resize(new.len(), 0);
                    prop_assert!(target == new, "resumed in-place output differs");
                }
            }
            Err(e) => prop_assert_eq!(e.class(), anypatch_apply::ErrorClass::NotInPlace),
        }
    }
}

/// Cheap deterministic randomness for the corruption test.
fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

#[test]
fn corrupted_patches_are_refused_without_panic() {
    let old = bytes("corrupt-old", 300_000);
    let edits = [
        Edit::Overwrite(0.1, 3000),
        Edit::Zero(0.5, 9000),
        Edit::Move(0.7, 0.2, 8192),
        Edit::Insert(0.9, 10),
    ];
    let new = apply_edits(&old, &edits, 7);
    let patch = produce(
        &old,
        &new,
        &Options {
            segment_len: 4096,
            ..Options::default()
        },
    );
    let mut rng = 42u64;
    for i in 0..400 {
        let mut p = patch.clone();
        match i % 5 {
            0 => {
                let at = lcg(&mut rng) as usize % p.len();
                p[at] ^= 1 << (lcg(&mut rng) % 8);
            }
            1 => p.truncate(lcg(&mut rng) as usize % p.len()),
            2 => {
                let at = lcg(&mut rng) as usize % p.len();
                p.insert(at, lcg(&mut rng) as u8);
            }
            3 => {
                let at = lcg(&mut rng) as usize % p.len();
                p.remove(at);
            }
            _ => {
                let (a, b) = (
                    lcg(&mut rng) as usize % p.len(),
                    lcg(&mut rng) as usize % p.len(),
                );
                let n = (lcg(&mut rng) as usize % 64).min(p.len() - a.max(b));
                for k in 0..n {
                    p.swap(a + k, b + k);
                }
                if p == patch {
                    continue;
                }
            }
        }
        let res = apply_in_memory(&old, &p, Config::new(old.len() as u64), 1 + i * 97 % 9000);
        assert!(res.is_err(), "mutation {i} was accepted");
        assert!(
            reference::apply(&old, &p).is_err(),
            "mutation {i} accepted by the reference"
        );
    }
}
