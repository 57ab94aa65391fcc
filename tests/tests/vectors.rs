//! The checked-in test vectors are fresh, and both appliers agree with them.

use std::fs;

use anypatch_apply::Config;
use anypatch_tests::{apply_in_memory, reference, root, vectors};

#[test]
fn checked_in_vectors_are_fresh() {
    let fresh = tempfile::tempdir().expect("tempdir");
    vectors::write_all(fresh.path()).expect("generate vectors");
    let checked_in = root().join("spec/vectors");
    let mut files = Vec::new();
    for entry in walk(fresh.path()) {
        let rel = entry
            .strip_prefix(fresh.path())
            .expect("inside")
            .to_path_buf();
        let theirs = fs::read(checked_in.join(&rel)).unwrap_or_else(|_| {
            panic!(
                "spec/vectors/{} is missing: run `cargo run -p anypatch-tests --bin gen-vectors`",
                rel.display()
            )
        });
        assert!(
            fs::read(&entry).expect("read") == theirs,
            "spec/vectors/{} is stale: run `cargo run -p anypatch-tests --bin gen-vectors`",
            rel.display()
        );
        files.push(rel);
    }
    let extra: Vec<_> = walk(&checked_in)
        .into_iter()
        .map(|p| p.strip_prefix(&checked_in).expect("inside").to_path_buf())
        .filter(|p| !files.contains(p) && p.file_name().is_some_and(|n| n != "README.md"))
        .collect();
    assert!(
        extra.is_empty(),
        "spec/vectors has files the generator does not make: {extra:?}"
    );
    assert!(files.iter().filter(|p| p.ends_with("patch.anyp")).count() >= 8);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn every_vector_applies_in_engine_and_reference() {
    for v in vectors::all() {
        // Feed in odd slices to exercise the engine's buffering.
        for feed in [1 << 20, 7] {
            if feed == 7 && v.new_len > 1 << 20 {
                continue;
            }
            let got = apply_in_memory(&v.old, &v.patch, Config::new(v.old.len() as u64), feed)
                .unwrap_or_else(|e| panic!("{}: engine refused: {e}", v.name));
            assert_eq!(got.summary.new_len, v.new_len, "{}", v.name);
            assert_eq!(got.summary.new_hash, Some(v.new_hash), "{}", v.name);
            if let Some(new) = &v.new {
                assert!(got.target == *new, "{}: engine output differs", v.name);
            }
        }
        if let Some(new) = &v.new {
            let r = reference::apply(&v.old, &v.patch)
                .unwrap_or_else(|e| panic!("{}: reference refused: {e}", v.name));
            assert!(r == *new, "{}: reference output differs", v.name);
        }
    }
}
