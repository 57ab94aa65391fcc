//! Replays every `index` fuzz regression file (`fuzz/regressions/index/`)
//! and that target's seed corpus (the index vectors of
//! `spec/index-vectors/`, as indexes and as pairs) through
//! `anypatch_tests::hostile_index::check_index`, the fuzz target's own
//! check, so a crash once found stays fixed under plain `cargo test`.

use std::fs;
use std::path::PathBuf;

use anypatch_index::{read_index, Limits};
use anypatch_tests::{fuzz_regressions, hostile_index::check_index, root};

/// The index vectors, as `scripts/fuzz-soak` seeds the target with them:
/// mode byte 0 (read as an index) and 1 (read as a pair).
fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut vectors: Vec<PathBuf> = fs::read_dir(root().join("spec/index-vectors"))
        .expect("spec/index-vectors")
        .map(|e| e.expect("directory entry").path().join("index.apidx"))
        .filter(|p| p.is_file())
        .collect();
    vectors.sort();
    let mut seeds = Vec::new();
    for v in vectors {
        let bytes = fs::read(&v).unwrap_or_else(|e| panic!("{}: {e}", v.display()));
        for mode in [0u8, 1] {
            let mut s = vec![mode];
            s.extend_from_slice(&bytes);
            seeds.push((format!("{} (mode {mode})", v.display()), s));
        }
    }
    seeds
}

#[test]
fn index_regressions_and_seeds() {
    let mut inputs: Vec<(String, Vec<u8>)> = fuzz_regressions("index")
        .into_iter()
        .map(|p| {
            let data = fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.display().to_string(), data)
        })
        .collect();
    inputs.extend(seeds());
    let mut failed = Vec::new();
    for (name, data) in &inputs {
        if let Err(panic) = std::panic::catch_unwind(|| check_index(data)) {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            failed.push(format!("{name} fails its check: {msg}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} inputs fail:\n{}",
        failed.len(),
        inputs.len(),
        failed.join("\n")
    );
    assert!(
        inputs.len() >= 6,
        "replayed only {} inputs: the seed corpus is missing",
        inputs.len()
    );
}

/// The seeds reach past the reader's checks: every vector is accepted as it
/// is, so the replay above runs the write-back and producer checks too.
#[test]
fn index_seeds_are_accepted_indexes() {
    let seeds = seeds();
    let accepted = seeds
        .iter()
        .filter(|(_, s)| s[0] == 0 && read_index(&s[1..], &Limits::default()).is_ok())
        .count();
    assert_eq!(accepted, seeds.len() / 2, "a vector is not a valid index");
}
