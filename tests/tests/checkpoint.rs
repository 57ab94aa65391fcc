//! Stream checkpoints (spec section 6.4): an apply fed in pieces, stopped
//! at random boundaries, saved, restored in a new `Applier` and fed the
//! rest, ends exactly as an uninterrupted apply does; a checkpoint that was
//! altered or belongs to another patch never yields an accepted result.

use std::fs;

use anypatch_apply::checkpoint::Checkpoint;
use anypatch_apply::{Applier, ApplyError, Config, Event, Summary};
use anypatch_producer::{Level, Options, SecretKey};
use anypatch_tests::hostile::produce;
use anypatch_tests::{apply_in_memory, corpus_small};

/// xorshift64*: the same cuts and stops on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Pair {
    old: Vec<u8>,
    new: Vec<u8>,
    patch: Vec<u8>,
}

fn pair(name: &str, opts: &Options) -> Pair {
    let c = corpus_small();
    let old = fs::read(c.join(format!("{name}.old"))).expect("old");
    let new = fs::read(c.join(format!("{name}.new"))).expect("new");
    let patch = produce(&old, &new, opts);
    Pair { old, new, patch }
}

/// How a run went: its summary and output, and how often it was stopped.
struct Run {
    result: Result<Summary, ApplyError>,
    target: Vec<u8>,
    stops: usize,
}

/// Applies `p.patch`, fed in random pieces; at each boundary where the
/// engine waits for input, stops with chance 1 in `stop_one_in`: saves a
/// checkpoint, encodes it, lets `alter` change its bytes, drops the
/// engine, and goes on with a new one restored from the decoded bytes and
/// fed the checkpoint's plan.
fn run(
    p: &Pair,
    cfg: Config,
    keys: &[[u8; 32]],
    rng: &mut Rng,
    stop_one_in: u64,
    alter: &mut dyn FnMut(&mut Vec<u8>),
) -> Run {
    let mut target = Vec::new();
    let mut stops = 0;
    let mut a = Applier::new(cfg);
    a.require_signature(keys);
    // Patch ranges still to feed, in order, and the position in the first.
    let mut plan: Vec<_> = std::iter::once(0..p.patch.len() as u64).collect();
    let result = loop {
        let event = match a.poll() {
            Ok(e) => e,
            Err(e) => break Err(e),
        };
        match event {
            Event::NeedInput => {
                if rng.below(stop_one_in) == 0 {
                    if let Some(cp) = a.checkpoint() {
                        stops += 1;
                        let mut bytes = cp.encode();
                        alter(&mut bytes);
                        let cp = match Checkpoint::decode(&bytes) {
                            Ok(cp) => cp,
                            Err(_) => break Err(ApplyError::CheckpointMismatch),
                        };
                        plan = cp.feed_plan(p.patch.len() as u64);
                        a = Applier::resume(cfg, cp);
                        a.require_signature(keys);
                        continue;
                    }
                }
                while plan.first().is_some_and(|r| r.is_empty()) {
                    plan.remove(0);
                }
                let Some(r) = plan.first_mut() else {
                    a.end_of_input();
                    continue;
                };
                let n = (1 + rng.below(200_000)).min(r.end - r.start);
                let took = a.feed(&p.patch[r.start as usize..(r.start + n) as usize]);
                r.start += took as u64;
            }
            Event::Header(_) => {}
            Event::ReadOld { offset, buf } => {
                let at = offset as usize;
                buf.copy_from_slice(&p.old[at..at + buf.len()]);
            }
            Event::Write { offset, data } => put(&mut target, offset, data),
            Event::Zero { offset, len } => put(&mut target, offset, &vec![0; len as usize]),
            Event::Done(s) => break Ok(s),
        }
    };
    Run {
        result,
        target,
        stops,
    }
}

/// Applies `p.patch` in 4 KiB pieces and returns the first checkpoint
/// taken once more than `after` patch bytes were fed.
fn checkpoint_after(p: &Pair, cfg: Config, after: usize) -> Checkpoint {
    let mut a = Applier::new(cfg);
    let mut at = 0;
    loop {
        match a.poll().expect("applies") {
            Event::NeedInput => {
                if at > after {
                    if let Some(cp) = a.checkpoint() {
                        return cp;
                    }
                }
                let n = 4096.min(p.patch.len() - at);
                at += a.feed(&p.patch[at..at + n]);
            }
            Event::ReadOld { offset, buf } => {
                let o = offset as usize;
                buf.copy_from_slice(&p.old[o..o + buf.len()]);
            }
            _ => {}
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

#[test]
fn stopped_and_resumed_anywhere_ends_as_an_uninterrupted_apply() {
    let mut rng = Rng(0x0DDB_1A5E_5BAD_5EED);
    let fast = Options {
        threads: 2,
        segment_len: 64 * 1024,
        ..Level::Fast.options()
    };
    let best = Options {
        threads: 2,
        ..Level::Best.options()
    };
    let mut total_stops = 0;
    for (name, opts) in [
        ("sparse", &fast),
        ("edits", &fast),
        ("shift", &fast),
        ("ext4", &best),
        ("grow", &best),
    ] {
        let p = pair(name, opts);
        let cfg = Config::new(p.old.len() as u64);
        let whole = apply_in_memory(&p.old, &p.patch, cfg, 1 << 20).expect("applies");
        assert!(
            whole.target == p.new,
            "{name}: the uninterrupted apply is wrong"
        );
        for round in 0..6 {
            let r = run(&p, cfg, &[], &mut rng, 3, &mut |_| {});
            let s = r
                .result
                .unwrap_or_else(|e| panic!("{name} round {round}: {e}"));
            assert_eq!(s, whole.summary, "{name} round {round}");
            let mut target = r.target;
            target.resize(s.new_len as usize, 0);
            assert!(target == p.new, "{name} round {round}: wrong result");
            total_stops += r.stops;
        }
    }
    assert!(total_stops >= 60, "only {total_stops} stops");
}

#[test]
fn a_resumed_apply_checks_the_signature_again() {
    let key = SecretKey::from_seed([7; 32]);
    let p = pair(
        "sparse",
        &Options {
            threads: 2,
            segment_len: 64 * 1024,
            signing_key: Some(key.clone()),
            ..Level::Fast.options()
        },
    );
    let cfg = Config::new(p.old.len() as u64);
    let mut rng = Rng(42);
    // Trusted before and after every stop: it finishes.
    let r = run(&p, cfg, &[key.public_key()], &mut rng, 2, &mut |_| {});
    assert!(r.stops > 0);
    r.result
        .expect("a signed patch resumes with its key trusted");
    // A resumed engine that trusts another key refuses it at once.
    let cp = checkpoint_after(&p, cfg, p.patch.len() / 2);
    let mut b = Applier::resume(cfg, cp.clone());
    b.require_signature(&[[9; 32]]);
    let header = &p.patch[..cp.header_section_len as usize];
    let mut fed = 0;
    let e = loop {
        match b.poll() {
            Ok(Event::NeedInput) => {
                assert!(fed < header.len(), "the header section was fed whole");
                fed += b.feed(&header[fed..]);
            }
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert!(matches!(e, ApplyError::UntrustedSigner { .. }), "{e}");
}

#[test]
fn an_altered_or_foreign_checkpoint_never_gives_an_accepted_result() {
    let opts = Options {
        threads: 2,
        ..Level::Best.options()
    };
    let p = pair("ext4", &opts);
    let cfg = Config::new(p.old.len() as u64);
    let mut rng = Rng(7);
    // Every byte of a checkpoint is sealed: a flipped one is refused.
    let mut flipped = 0;
    for round in 0..40 {
        let r = run(&p, cfg, &[], &mut rng, 4, &mut |b| {
            let i = (round * 7919) % b.len();
            b[i] ^= 0x10;
        });
        if r.stops > 0 {
            flipped += 1;
            assert_eq!(
                r.result.expect_err("an altered checkpoint is refused"),
                ApplyError::CheckpointMismatch
            );
        }
    }
    assert!(flipped >= 20, "only {flipped} runs were stopped");

    // Altered with its seal made right again (as someone who rewrites the
    // file could): the hashes and the page chain still refuse it.
    let mut refused = 0;
    for field in 0..6 {
        let r = run(&p, cfg, &[], &mut rng, 3, &mut |b| {
            let Ok(mut cp) = Checkpoint::decode(b) else {
                return;
            };
            match field {
                0 => {
                    if let Some(x) = cp.patch_hash.tail.first_mut() {
                        *x ^= 1;
                    }
                }
                1 => {
                    // Nothing of the new file yet: nothing to alter.
                    if let Some(x) = cp.new_hash.as_mut().and_then(|h| h.tail.first_mut()) {
                        *x ^= 1;
                    }
                }
                2 => cp.new_pos += 4096,
                3 => {
                    if let Some(x) = cp.history.first_mut() {
                        *x ^= 1;
                    } else {
                        cp.written += 1;
                    }
                }
                4 => cp.resume_at += 1,
                _ => cp.segments_seen += 1,
            }
            *b = cp.encode();
        });
        match r.result {
            Ok(s) => {
                // Only a change that changes nothing may pass (the summary's
                // counters): the result must still be the new image.
                let mut t = r.target;
                t.resize(s.new_len as usize, 0);
                assert!(
                    t == p.new,
                    "field {field}: an altered checkpoint gave a wrong result"
                );
            }
            Err(_) => refused += 1,
        }
    }
    assert!(
        refused >= 4,
        "only {refused} of 6 altered checkpoints were refused"
    );

    // A checkpoint of another patch.
    let q = pair("edits", &opts);
    let cp = checkpoint_after(&q, Config::new(q.old.len() as u64), 0);
    let mut b = Applier::resume(cfg, cp);
    b.feed(&p.patch[..4096.min(p.patch.len())]);
    let e = loop {
        match b.poll() {
            Ok(Event::NeedInput) => {
                let n = b.progress().patch_consumed as usize;
                let end = (n + 4096).min(p.patch.len());
                b.feed(&p.patch[n..end]);
            }
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert_eq!(e, ApplyError::CheckpointMismatch);
}
