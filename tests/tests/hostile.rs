//! Bad input through the CLI: a clear one-line error, a documented exit code,
//! and no output file left behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anypatch_format::{
    header_hash, Preamble, PreambleRepr, KNOWN_REQUIRED_FEATURES, PREAMBLE_LEN, TRAILER_LEN,
};
use anypatch_tests::{bin, corpus_small};

struct Case {
    work: tempfile::TempDir,
    old: PathBuf,
    patch: Vec<u8>,
}

fn sparse_case() -> Case {
    let dir = corpus_small();
    let work = tempfile::tempdir().expect("tempdir");
    let old = dir.join("sparse.old");
    let p = work.path().join("good.anyp");
    let st = Command::new(bin("mkpatch"))
        .arg(&old)
        .arg(dir.join("sparse.new"))
        .arg("-o")
        .arg(&p)
        .arg("-q")
        .status()
        .expect("runs");
    assert!(st.success());
    Case {
        patch: fs::read(&p).expect("read"),
        work,
        old,
    }
}

/// Applies `patch` to `old` with -o and returns (exit code, stderr). Asserts
/// that a failed apply leaves no output file and prints one line.
fn apply(case: &Case, old: &Path, patch: &[u8], label: &str) -> (i32, String) {
    let p = case.work.path().join(format!("{label}.anyp"));
    fs::write(&p, patch).expect("write");
    let out = case.work.path().join(format!("{label}.out"));
    let o = Command::new(bin("applypatch"))
        .arg(old)
        .arg(&p)
        .arg("-o")
        .arg(&out)
        .output()
        .expect("runs");
    let code = o
        .status
        .code()
        .expect("exited, not killed by a signal (no panic abort)");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    if code != 0 {
        assert!(
            !out.exists(),
            "{label}: a failed apply left {}",
            out.display()
        );
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{label}: error is not one line: {err}"
        );
        assert!(err.starts_with("applypatch: "), "{label}: {err}");
        assert!(!err.contains("panicked"), "{label}: {err}");
        let leftovers: Vec<_> = fs::read_dir(case.work.path())
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("applypatch-tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{label}: temporary files left behind");
    }
    (code, err)
}

fn header_end(patch: &[u8]) -> usize {
    let pre = PreambleRepr::parse(&Preamble::new_checked(patch).expect("len")).expect("valid");
    PREAMBLE_LEN + pre.header_len as usize + 32
}

#[test]
fn truncated_patches_are_refused() {
    let c = sparse_case();
    let n = c.patch.len();
    for cut in [
        0,
        10,
        PREAMBLE_LEN,
        header_end(&c.patch) - 1,
        header_end(&c.patch) + 5,
        n / 2,
        n - TRAILER_LEN,
        n - 1,
    ] {
        let (code, err) = apply(&c, &c.old, &c.patch[..cut], &format!("cut{cut}"));
        assert_eq!(code, 2, "cut at {cut}: {err}");
        assert!(
            err.contains("truncated") || err.contains("corrupt"),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn bit_flips_are_refused_everywhere() {
    let c = sparse_case();
    let n = c.patch.len();
    let he = header_end(&c.patch);
    // In the header body, in the first page, in a data segment, in the trailer hash and magic.
    for (at, what) in [
        (30, "header"),
        (he + 3, "page"),
        (n / 2, "segment"),
        (n - 20, "trailer hash"),
        (n - 3, "trailer magic"),
    ] {
        let mut p = c.patch.clone();
        p[at] ^= 0x10;
        let (code, err) = apply(&c, &c.old, &p, &format!("flip{at}"));
        assert_eq!(code, 2, "flip in {what} at {at}: {err}");
        assert!(err.contains("corrupt"), "flip in {what}: {err}");
    }
    // Extra bytes after the trailer.
    let mut p = c.patch.clone();
    p.push(0);
    assert_eq!(apply(&c, &c.old, &p, "trailing").0, 2);
}

#[test]
fn wrong_base_is_refused_before_writing() {
    let c = sparse_case();
    let other = corpus_small().join("edits.old");
    let (code, err) = apply(&c, &other, &c.patch, "wrongbase");
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("wrong base"), "{err}");
    // A base of another length is refused from the header alone.
    let short = c.work.path().join("short.old");
    fs::write(&short, b"tiny").expect("write");
    let (code, err) = apply(&c, &short, &c.patch, "shortbase");
    assert_eq!(code, 3, "{err}");

    // In place: the target stays exactly as it was.
    let disk = c.work.path().join("disk");
    fs::copy(&other, &disk).expect("copy");
    let p = c.work.path().join("inplace.anyp");
    fs::write(&p, &c.patch).expect("write");
    let o = Command::new(bin("applypatch"))
        .arg("--in-place")
        .arg(&disk)
        .arg(&p)
        .output()
        .expect("runs");
    assert_eq!(o.status.code(), Some(3));
    assert!(
        fs::read(&disk).expect("read") == fs::read(&other).expect("read"),
        "in-place wrong base changed the target"
    );
}

/// Recomputes the header hash and the trailer's patch hash after an edit
/// of the preamble, as a genuine patch from a newer writer would have them.
fn reseal(p: &mut [u8]) {
    let end = header_end(p);
    let h = header_hash(&p[..PREAMBLE_LEN], &p[PREAMBLE_LEN..end - 32]);
    p[end - 32..end].copy_from_slice(&h);
    let n = p.len() - TRAILER_LEN;
    let t = *blake3::hash(&p[..n]).as_bytes();
    p[n..n + 32].copy_from_slice(&t);
}

#[test]
fn unknown_versions_and_features_are_refused() {
    let c = sparse_case();
    let mut p = c.patch.clone();
    p[8] = 2; // major version 2
    reseal(&mut p);
    let (code, err) = apply(&c, &c.old, &p, "major");
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("version 2") && err.contains("newer"), "{err}");

    let mut p = c.patch.clone();
    // The lowest must-understand feature bit no version defines yet.
    let unknown = 1u32 << (!KNOWN_REQUIRED_FEATURES).trailing_zeros();
    let bits = u32::from_le_bytes(p[12..16].try_into().expect("4 bytes")) | unknown;
    p[12..16].copy_from_slice(&bits.to_le_bytes());
    reseal(&mut p);
    let (code, err) = apply(&c, &c.old, &p, "feature");
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("features"), "{err}");

    let mut p = c.patch.clone();
    p[0] = b'P';
    let (code, err) = apply(&c, &c.old, &p, "magic");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not an anypatch patch"), "{err}");
}

/// Issue 13, defect 10: the header hash covers the preamble, so one flipped
/// bit in the version or a feature field is damage (exit 2), not "needs a
/// newer version of anypatch" (exit 4).
#[test]
fn a_flipped_bit_in_the_preamble_is_damage_not_a_newer_format() {
    let c = sparse_case();
    for (at, bit) in [(8, 0x02), (9, 0x80), (12, 0x40), (15, 0x80)] {
        let mut p = c.patch.clone();
        p[at] ^= bit;
        let (code, err) = apply(&c, &c.old, &p, &format!("preamble{at}"));
        assert_eq!(code, 2, "flip at byte {at}: {err}");
        assert!(err.contains("corrupt"), "flip at byte {at}: {err}");
    }
}

#[test]
fn missing_files_and_bad_usage_are_clear() {
    let c = sparse_case();
    let missing = c.work.path().join("nope");
    let (code, err) = apply(&c, &missing, &c.patch, "missing-old");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot open old file") && err.contains("nope"),
        "{err}"
    );

    let o = Command::new(bin("applypatch"))
        .arg(&c.old)
        .arg(&missing)
        .arg("-o")
        .arg(c.work.path().join("x"))
        .output()
        .expect("runs");
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot open patch"));

    let o = Command::new(bin("mkpatch"))
        .arg(&missing)
        .arg(&c.old)
        .arg("-o")
        .arg(c.work.path().join("y"))
        .output()
        .expect("runs");
    assert_ne!(o.status.code(), Some(0));
    assert!(!c.work.path().join("y").exists());

    // Neither -o, --check nor --in-place: a usage error, not a silent no-op.
    let o = Command::new(bin("applypatch"))
        .arg(&c.old)
        .arg(&missing)
        .output()
        .expect("runs");
    assert_eq!(
        o.status.code(),
        Some(1),
        "usage errors exit 1, not clap's 2 (2 means a corrupt patch)"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("--output"));
}

#[test]
fn max_new_size_refuses_large_images_before_reading_old() {
    let c = sparse_case();
    let p = c.work.path().join("limit.anyp");
    fs::write(&p, &c.patch).expect("write");
    for mode in [&["--check"][..], &["-o", "limited.out"][..]] {
        let o = Command::new(bin("applypatch"))
            .current_dir(c.work.path())
            .args(["--max-new-size", "1000"])
            .args(mode)
            .arg(&c.old)
            .arg(&p)
            .output()
            .expect("runs");
        assert_eq!(
            o.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(String::from_utf8_lossy(&o.stderr).contains("--max-new-size"));
        assert!(!c.work.path().join("limited.out").exists());
    }
    // A limit the image fits in changes nothing.
    let o = Command::new(bin("applypatch"))
        .args(["--max-new-size", "16777216", "--check"])
        .arg(&c.old)
        .arg(&p)
        .output()
        .expect("runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
