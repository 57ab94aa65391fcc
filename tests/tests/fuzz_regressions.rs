//! Replays every fuzz regression file (`fuzz/regressions/<target>/`) and the
//! seed corpus (`spec/vectors/*/patch.anyp`) through the same checks as the
//! cargo-fuzz targets (`anypatch_tests::hostile`), so a crash once found
//! stays fixed under plain `cargo test`.

use std::fs;
use std::path::PathBuf;

use anypatch_apply::Config;
use anypatch_tests::{hostile, root};

/// The files of `fuzz/regressions/<target>/`, without the README and dotfiles.
fn regressions(target: &str) -> Vec<PathBuf> {
    anypatch_tests::fuzz_regressions(target)
}

/// The seed corpus: every test vector's patch.
fn seeds() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(root().join("spec/vectors"))
        .expect("spec/vectors")
        .map(|e| e.expect("directory entry").path().join("patch.anyp"))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `check` on each file and fails naming every file that fails, with
/// its message (one bug often fails many files, in more than one way);
/// returns how many ran.
fn replay(files: &[PathBuf], check: fn(&[u8])) -> usize {
    let mut failed = Vec::new();
    for f in files {
        let data = fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            failed.push(format!("{} fails its check: {msg}", f.display()));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} files fail:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
    files.len()
}

#[test]
fn parse_regressions_and_seeds() {
    let n = replay(&regressions("parse"), hostile::check_parse)
        + replay(&seeds(), hostile::check_parse);
    assert!(
        n >= 10,
        "replayed only {n} files: the seed corpus is missing"
    );
}

#[test]
fn apply_regressions_and_seeds() {
    let n = replay(&regressions("apply"), hostile::check_apply)
        + replay(&seeds(), hostile::check_apply);
    assert!(
        n >= 10,
        "replayed only {n} files: the seed corpus is missing"
    );
}

#[test]
fn differential_regressions_and_seeds() {
    // The seeds are arbitrary bytes to this target too: each makes a pair.
    let n = replay(&regressions("differential"), hostile::check_differential)
        + replay(&seeds(), hostile::check_differential);
    assert!(
        n >= 10,
        "replayed only {n} files: the seed corpus is missing"
    );
}

/// The seeds really reach the engine: every vector applies to its own base
/// through the checked driver and gives its new file, and re-sealing it
/// changes nothing, so the replay above cannot pass vacuously.
#[test]
fn seeds_apply_cleanly() {
    let mut applied = 0;
    for patch_path in seeds() {
        let dir = patch_path.parent().expect("a vector directory");
        let patch = fs::read(&patch_path).expect("patch.anyp");
        let old = fs::read(dir.join("old.bin")).expect("old.bin");
        let layout = hostile::Layout::walk(&patch)
            .unwrap_or_else(|| panic!("{}: the layout does not parse", dir.display()));
        assert!(
            layout.clone().seal(&old) == patch,
            "{}: re-sealing a valid patch changes it",
            dir.display()
        );
        if layout.is_big() {
            continue; // over-4gib: its new file is not checked in
        }
        let new = fs::read(dir.join("new.bin")).expect("new.bin");
        let mut out = Vec::with_capacity(new.len());
        hostile::drive(&old, &patch, Config::new(old.len() as u64), 4096, &mut out)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        assert!(out == new, "{}: wrong result", dir.display());
        applied += 1;
    }
    assert!(applied >= 8, "only {applied} vectors applied");
}
