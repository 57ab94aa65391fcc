//! Property tests: random pairs through the producer, then the engine and the
//! reference applier; random corruptions of valid patches are refused.

use std::fs;

use anypatch_apply::Config;
use anypatch_producer::{make_patch, Options};
use anypatch_tests::{apply_in_memory, reference, vectors::bytes};
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
                let ends = write_ends(&old, &patch, in_place);
                let cut = ends.get((seed as usize) % ends.len().max(1)).copied();
                if let Some((units, resume_from)) = cut {
                    let mut target = old.clone();
                    replay_writes(&old, &patch, in_place, units, &mut target);
                    let resumed = Config { verify_base: false, resume_from, ..in_place };
                    let done = apply_over(&mut target, &patch, resumed).expect("resume applies");
                    prop_assert_eq!(done.new_len, new.len() as u64);
                    target.resize(new.len(), 0);
                    prop_assert!(target == new, "resumed in-place output differs");
                }
            }
            Err(e) => prop_assert_eq!(e.class(), anypatch_apply::ErrorClass::NotInPlace),
        }
    }
}

/// Runs the engine over `target` in place (reads come from the target itself).
fn apply_over(
    target: &mut Vec<u8>,
    patch: &[u8],
    cfg: Config,
) -> Result<anypatch_apply::Summary, anypatch_apply::ApplyError> {
    apply_events(target, patch, cfg, usize::MAX).map(|(s, _)| s.expect("ran to the end"))
}

/// (number of write units, new offset where that many units end), for every prefix.
fn write_ends(old: &[u8], patch: &[u8], cfg: Config) -> Vec<(usize, u64)> {
    let mut target = old.to_vec();
    let (_, ends) = apply_events(&mut target, patch, cfg, usize::MAX).expect("applies");
    ends.into_iter()
        .enumerate()
        .map(|(i, e)| (i + 1, e))
        .collect()
}

/// Applies only the first `units` writes, as if killed right after them.
fn replay_writes(_old: &[u8], patch: &[u8], cfg: Config, units: usize, target: &mut Vec<u8>) {
    apply_events(target, patch, cfg, units).expect("applies");
}

/// Drives the engine in place over `target`, stopping after `max_units`
/// writes. Returns the summary (when it ran to the end) and where each write ended.
fn apply_events(
    target: &mut Vec<u8>,
    patch: &[u8],
    cfg: Config,
    max_units: usize,
) -> Result<(Option<anypatch_apply::Summary>, Vec<u64>), anypatch_apply::ApplyError> {
    use anypatch_apply::{Applier, Event};
    let mut a = Applier::new(cfg);
    let (mut at, mut ends) = (0, Vec::new());
    loop {
        if ends.len() == max_units {
            return Ok((None, ends));
        }
        match a.poll()? {
            Event::NeedInput if at == patch.len() => a.end_of_input(),
            Event::NeedInput => at += a.feed(&patch[at..]),
            Event::Header(_) => {}
            Event::ReadOld { offset, buf } => {
                let o = offset as usize;
                let have = target.len().min(o + buf.len());
                buf[..have.saturating_sub(o)].copy_from_slice(&target[o.min(have)..have]);
            }
            Event::Write { offset, data } => {
                put(target, offset, data);
                ends.push(offset + data.len() as u64);
            }
            Event::Zero { offset, len } => {
                put(target, offset, &vec![0; len as usize]);
                ends.push(offset + len);
            }
            Event::Done(s) => return Ok((Some(s), ends)),
        }
    }
}

fn put(target: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if target.len() < end {
        target.resize(end, 0);
    }
    target[offset as usize..end].copy_from_slice(data);
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
