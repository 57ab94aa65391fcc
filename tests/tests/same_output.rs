//! `mkpatch` makes the same patch, byte for byte, as the commit that
//! recorded `tests/golden/mkpatch-small.tsv`: refactors of the producer
//! (and caches in front of it) must not change its output. The file holds,
//! for each deterministic pair of the small corpus and each level, the
//! BLAKE3 of the inputs and of the patch.
//!
//! A change meant to alter the output records the file anew, naming the
//! commit in the message:
//!
//! ```text
//! ANYPATCH_BLESS=1 cargo test --release -p anypatch-tests --test same_output
//! ```
//!
//! (with `ANYPATCH_TEST_BIN_DIR=DIR` to record another build's output).

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;

use anypatch_tests::{bin, corpus_pairs, corpus_small, hex, root};

/// Each level the test records, as mkpatch arguments.
const LEVELS: [(&str, &[&str]); 4] = [
    ("fast", &["--level", "fast"]),
    ("default", &[]),
    ("best", &["--level", "best"]),
    ("in-place", &["--in-place"]),
];

fn b3(path: &Path) -> String {
    hex(blake3::hash(&fs::read(path).expect("read")).as_bytes())
}

/// One line per pair and level: `pair level old new patch`.
fn make_all() -> String {
    let dir = corpus_small();
    let work = tempfile::tempdir().expect("tempdir");
    let mut out = String::from("# pair\tlevel\told blake3\tnew blake3\tpatch blake3\n");
    // ext4's file system timestamps differ from run to run.
    for name in corpus_pairs(dir).into_iter().filter(|n| n != "ext4") {
        let old = dir.join(format!("{name}.old"));
        let new = dir.join(format!("{name}.new"));
        for (level, args) in LEVELS {
            let patch = work.path().join(format!("{name}-{level}.anyp"));
            let run = Command::new(bin("mkpatch"))
                .args(args)
                .args(["-q", "-j", "2"])
                // A cache of its own, empty: what was computed before must not matter.
                .env("XDG_CACHE_HOME", work.path().join("cache"))
                .arg(&old)
                .arg(&new)
                .arg("-o")
                .arg(&patch)
                .output()
                .expect("mkpatch runs");
            assert!(
                run.status.success(),
                "{name} {level}: {}",
                String::from_utf8_lossy(&run.stderr)
            );
            let _ = writeln!(
                out,
                "{name}\t{level}\t{}\t{}\t{}",
                b3(&old),
                b3(&new),
                b3(&patch)
            );
        }
    }
    out
}

#[test]
fn mkpatch_output_is_unchanged() {
    let golden = root().join("tests/golden/mkpatch-small.tsv");
    let now = make_all();
    if std::env::var_os("ANYPATCH_BLESS").is_some() {
        fs::write(&golden, &now).expect("write the golden file");
        return;
    }
    let want = fs::read_to_string(&golden).expect("tests/golden/mkpatch-small.tsv");
    let (want, now): (Vec<&str>, Vec<&str>) = (want.lines().collect(), now.lines().collect());
    assert_eq!(
        want.len(),
        now.len(),
        "the corpus has other pairs than when recorded"
    );
    for (w, n) in want.iter().zip(&now) {
        let (wf, nf): (Vec<&str>, Vec<&str>) = (w.split('\t').collect(), n.split('\t').collect());
        assert_eq!(
            wf[..4],
            nf[..4],
            "the corpus changed since the golden file was recorded (make-corpus is outside \
             the repository): record it again from the commit before your change"
        );
        assert_eq!(
            wf[4], nf[4],
            "{} at {}: mkpatch's output changed",
            nf[0], nf[1]
        );
    }
}
