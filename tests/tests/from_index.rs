//! Patches made without the old file, from its block index
//! (`mkpatch --from-index`): they apply with applypatch like any patch, in
//! place too, find moved and shifted data, and stay small.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anypatch_tests::{bin, corpus_pairs, corpus_small};

fn run(cmd: &mut Command) -> Output {
    let o = cmd.output().expect("runs");
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn mkpatch() -> Command {
    Command::new(bin("mkpatch"))
}

/// Indexes `old`, without the user's hash cache.
fn index(old: &Path, out: &Path) {
    run(mkpatch()
        .args(["index", "--no-cache"])
        .arg(old)
        .arg("-o")
        .arg(out));
}

/// `mkpatch --from-index`, without the user's hash cache.
fn from_index(index: &Path, new: &Path, out: &Path, extra: &[&str]) {
    run(mkpatch()
        .args(["--no-cache", "--from-index"])
        .arg(index)
        .args(extra)
        .arg(new)
        .arg("-o")
        .arg(out));
}

/// `applypatch OLD PATCH -o OUT` gives NEW; OUT is removed after.
fn applies(old: &Path, patch: &Path, new: &Path, out: &Path, what: &str) {
    run(Command::new(bin("applypatch"))
        .arg(old)
        .arg(patch)
        .arg("-o")
        .arg(out));
    assert!(same_file(out, new), "{what}: -o made another file");
    fs::remove_file(out).expect("rm");
}

fn len(p: &Path) -> u64 {
    fs::metadata(p).expect("stat").len()
}

fn same_file(a: &Path, b: &Path) -> bool {
    fs::read(a).expect("read") == fs::read(b).expect("read")
}

/// Sizes of one pair's patches: from the index, `--level fast` with the
/// old file, and `rdiff delta`.
struct Sizes {
    from_index: u64,
    fast: u64,
    rdiff: u64,
}

fn round_trip(dir: &Path, corpus: &Path, pair: &str) -> Sizes {
    let (old, new) = (
        corpus.join(format!("{pair}.old")),
        corpus.join(format!("{pair}.new")),
    );
    let p = |s: &str| dir.join(format!("{pair}.{s}"));
    index(&old, &p("apidx"));
    from_index(&p("apidx"), &new, &p("patch"), &[]);
    applies(&old, &p("patch"), &new, &p("out"), pair);

    // In place: on a copy of old, which becomes new.
    from_index(&p("apidx"), &new, &p("inplace"), &["--in-place"]);
    fs::copy(&old, p("target")).expect("copy");
    run(Command::new(bin("applypatch"))
        .arg("--in-place")
        .arg(p("target"))
        .arg(p("inplace")));
    assert!(
        same_file(&p("target"), &new),
        "{pair}: --in-place made another file"
    );
    fs::remove_file(p("target")).expect("rm");

    run(mkpatch()
        .args(["--level", "fast"])
        .arg(&old)
        .arg(&new)
        .arg("-o")
        .arg(p("fast")));
    run(Command::new("rdiff")
        .arg("signature")
        .arg(&old)
        .arg(p("sig")));
    run(Command::new("rdiff")
        .arg("delta")
        .arg(p("sig"))
        .arg(&new)
        .arg(p("rdiff")));
    Sizes {
        from_index: len(&p("patch")),
        fast: len(&p("fast")),
        rdiff: len(&p("rdiff")),
    }
}

#[test]
fn every_corpus_pair_round_trips_from_its_index_and_stays_small() {
    let corpus = corpus_small();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut report = String::new();
    for pair in corpus_pairs(corpus) {
        let s = round_trip(dir.path(), corpus, &pair);
        let ratio = s.from_index as f64 / s.fast as f64;
        report += &format!(
            "{pair}: from index {} bytes, fast {} ({ratio:.3}x), rdiff {}\n",
            s.from_index, s.fast, s.rdiff
        );
        // Always smaller than rdiff, which also has only block signatures.
        assert!(s.from_index < s.rdiff, "{report}");
        // Within 1.15x of a patch made with the old file where data is
        // unchanged, moved, zeroed or appended. Edits inside a block cost
        // the block without the old bytes (ext4's in-place file edits,
        // shift's inserts and deletes, edits): see spec/INDEX.md.
        let bound = match pair.as_str() {
            "sparse" | "moved" | "append" | "zeros" | "grow" => 1.15,
            "ext4" => 1.2,
            _ => f64::INFINITY,
        };
        assert!(ratio <= bound, "{pair} over {bound}x:\n{report}");
    }
    eprintln!("{report}");
}

/// Deterministic incompressible bytes.
fn noise(len: usize, mut x: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn data_shifted_by_any_number_of_bytes_is_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |s: &str| dir.path().join(s);
    // 3 MiB of incompressible data: whatever is not found costs its size.
    let old = noise(3 << 20, 7);
    fs::write(p("old"), &old).expect("write");
    index(&p("old"), &p("apidx"));
    // Inserts and deletes of 1 to 4095 bytes, one of them across the
    // boundary of the matcher's 1 MiB pieces.
    for (at, insert, delete) in [
        (0usize, 1usize, 0usize),
        (1 << 20, 4095, 0),
        ((1 << 20) - 10, 0, 77),
        (1_500_000, 333, 1000),
        // Inside a block: found as the block with bytes inserted.
        (1_000_003, 50, 0),
        (2_000_000, 4000, 0),
    ] {
        let mut new = old[..at].to_vec();
        new.extend(noise(insert, at as u64 + 1));
        new.extend_from_slice(&old[at + delete..]);
        fs::write(p("new"), &new).expect("write");
        from_index(&p("apidx"), &p("new"), &p("patch"), &[]);
        // The block around the edit and the inserted bytes are sent (only
        // the inserted bytes for an insertion); the 3 MiB around them are
        // copies.
        let size = len(&p("patch"));
        let edited_block = if delete == 0 { 0 } else { 3 * 4096 };
        assert!(
            size < edited_block + insert as u64 + 2048,
            "at {at}, +{insert} -{delete}: {size} bytes"
        );
        applies(
            &p("old"),
            &p("patch"),
            &p("new"),
            &p("out"),
            "a shifted pair",
        );
    }
}

/// Real pairs, not made by the corpus: this repository's source as two
/// release tarballs (`git archive` of two commits of issue 16: members
/// edited, added and shifted by tar's 512-byte alignment), and two real
/// compiled programs that share their dependencies' code (the release
/// `applypatch` to `mkpatch`). Each round trips through its index and is
/// smaller than rdiff's delta and than the new file.
#[test]
fn real_pairs_round_trip_from_their_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |s: &str| dir.path().join(s);
    for (name, commit) in [("a", "8e6ce84"), ("b", "200c37c")] {
        let o = Command::new("git")
            .current_dir(anypatch_tests::root())
            .args(["archive", "--format=tar", "-o"])
            .arg(p(&format!("src-{name}.tar")))
            .arg(commit)
            .output()
            .expect("git runs");
        assert!(
            o.status.success(),
            "git archive {commit} (the test needs the repository's history): {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let pairs = [
        ("source tarballs", p("src-a.tar"), p("src-b.tar")),
        ("programs", bin("applypatch"), bin("mkpatch")),
    ];
    for (what, old, new) in pairs {
        index(&old, &p("apidx"));
        from_index(&p("apidx"), &new, &p("patch"), &[]);
        applies(&old, &p("patch"), &new, &p("out"), what);
        for f in ["sig", "rdiff"] {
            let _ = fs::remove_file(p(f));
        }
        run(Command::new("rdiff")
            .arg("signature")
            .arg(&old)
            .arg(p("sig")));
        run(Command::new("rdiff")
            .arg("delta")
            .arg(p("sig"))
            .arg(&new)
            .arg(p("rdiff")));
        let (size, rdiff) = (len(&p("patch")), len(&p("rdiff")));
        assert!(
            size < rdiff && size < len(&new),
            "{what}: {size} bytes, rdiff {rdiff}, new {}",
            len(&new)
        );
        eprintln!(
            "{what}: from the index {size} bytes, rdiff {rdiff}, new {}",
            len(&new)
        );
    }
}

#[test]
fn data_shifted_across_zeros_that_line_up_in_both_files_is_found() {
    // Noise with a zero run of 3 blocks every 40 KiB, one byte prepended:
    // where the runs overlap in both files, whole zero blocks are unchanged
    // at their offsets and cut the shifted data into pieces; the blocks
    // shifted across each piece's start and end are still copies.
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |s: &str| dir.path().join(s);
    for bs in [4096usize, 1024] {
        let mut old = noise(4 << 20, bs as u64);
        for at in (10_000..old.len() - 3 * bs).step_by(40 << 10) {
            old[at..at + 3 * bs].fill(0);
        }
        let mut new = vec![b'!'];
        new.extend_from_slice(&old);
        fs::write(p("old"), &old).expect("write");
        fs::write(p("new"), &new).expect("write");
        run(mkpatch()
            .args(["index", "--no-cache", "--block-size", &bs.to_string()])
            .arg(p("old"))
            .arg("-o")
            .arg(p("apidx")));
        from_index(&p("apidx"), &p("new"), &p("patch"), &[]);
        // Without it: a block of noise sent around each of the 102 runs.
        let size = len(&p("patch"));
        assert!(size < 8192, "blocks of {bs}: {size} bytes");
        applies(
            &p("old"),
            &p("patch"),
            &p("new"),
            &p("out"),
            "a shifted pair",
        );
    }
}

#[test]
fn the_patch_does_not_depend_on_the_thread_count() {
    let corpus = corpus_small();
    let dir = tempfile::tempdir().expect("tempdir");
    for pair in ["shift", "ext4"] {
        let apidx = dir.path().join(format!("{pair}.apidx"));
        index(&corpus.join(format!("{pair}.old")), &apidx);
        let outs: Vec<PathBuf> = ["1", "3"]
            .iter()
            .map(|j| {
                let out = dir.path().join(format!("{pair}.{j}"));
                from_index(
                    &apidx,
                    &corpus.join(format!("{pair}.new")),
                    &out,
                    &["-j", j],
                );
                out
            })
            .collect();
        assert!(
            same_file(&outs[0], &outs[1]),
            "{pair}: -j 1 and -j 3 differ"
        );
    }
}

#[test]
fn from_index_takes_only_new_and_no_verify() {
    let corpus = corpus_small();
    let dir = tempfile::tempdir().expect("tempdir");
    let apidx = dir.path().join("i");
    index(&corpus.join("append.old"), &apidx);
    let o = mkpatch()
        .arg("--from-index")
        .arg(&apidx)
        .arg(corpus.join("append.old"))
        .arg(corpus.join("append.new"))
        .arg("-o")
        .arg(dir.path().join("p"))
        .output()
        .expect("runs");
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("give only NEW"));
    let o = mkpatch()
        .args(["--verify", "--from-index"])
        .arg(&apidx)
        .arg(corpus.join("append.new"))
        .arg("-o")
        .arg(dir.path().join("p"))
        .output()
        .expect("runs");
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--verify needs the old image"));
    assert!(!dir.path().join("p").exists());
}
