//! The mkpatch binary: outputs, documented exit codes and error lines.

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn mkpatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mkpatch"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run mkpatch")
}

fn images(dir: &Path) -> (String, String) {
    let old: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut new = old.clone();
    new[123_456] ^= 1;
    let (po, pn) = (dir.join("old.img"), dir.join("new.img"));
    std::fs::write(&po, old).expect("write");
    std::fs::write(&pn, new).expect("write");
    (po.display().to_string(), pn.display().to_string())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn makes_and_inspects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = images(dir.path());
    let out = dir.path().join("p.patch");
    let out = out.to_str().expect("utf-8 path");

    let o = mkpatch(&[&old, &new, "-o", out, "-j", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Not a TTY: the summary line, without the progress line.
    assert!(stderr(&o).starts_with("mkpatch: old "), "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    let stdout = mkpatch(&[&old, &new, "-o", "-"]);
    assert_eq!(stdout.stdout, std::fs::read(out).expect("read"));

    let o = mkpatch(&["inspect", "--json", out]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(v["patch_hash_ok"], true);
    assert_eq!(v["new"]["len"], 300_000);
    assert_eq!(v["in_place_safe"], true);
    assert_eq!(v["extents"]["data"]["extents"], 1);

    let o = mkpatch(&["inspect", out]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("patch hash"));
}

#[test]
fn exit_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = images(dir.path());
    let missing = dir.path().join("missing").display().to_string();

    let o = mkpatch(&[&missing, &new, "-o", "x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("mkpatch: cannot open"));
    assert_eq!(stderr(&o).lines().count(), 1);

    let o = mkpatch(&["-", &new]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cannot be `-`"));

    let o = mkpatch(&[&old]);
    assert_eq!(o.status.code(), Some(1), "usage error");

    let patch = dir.path().join("p");
    let o = mkpatch(&[&old, &new, "-o", patch.to_str().expect("utf-8")]);
    assert!(o.status.success());
    let mut bytes = std::fs::read(&patch).expect("read");
    bytes.truncate(bytes.len() - 3);
    std::fs::write(&patch, &bytes).expect("write");
    let o = mkpatch(&["inspect", patch.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o).lines().count(), 1);

    let o = mkpatch(&["inspect", &missing]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn broken_pipe_stops_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = images(dir.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_mkpatch"))
        .args([&old, &new])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take()); // the reader goes away at once
    let o = child.wait_with_output().expect("wait");
    // The reader chose to stop, as `| head` does: exit 0, nothing on
    // stderr, never a panic (--help says the patch it got is incomplete).
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(o.stderr.is_empty(), "{}", stderr(&o));
}

#[test]
fn levels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = images(dir.path());
    let mut sizes = Vec::new();
    for level in ["fast", "default", "best", "19", "1"] {
        let out = dir.path().join(format!("{level}.patch"));
        let out = out.to_str().expect("utf-8 path");
        let o = mkpatch(&["--level", level, &old, &new, "-o", out]);
        assert!(o.status.success(), "--level {level}: {}", stderr(&o));
        sizes.push(std::fs::metadata(out).expect("patch").len());
    }
    assert!(sizes.iter().all(|&n| n > 0));
    for bad in ["0", "20", "quick", ""] {
        let o = mkpatch(&["--level", bad, &old, &new, "-o", "x"]);
        assert_eq!(o.status.code(), Some(1), "--level {bad:?}");
        assert!(
            stderr(&o).contains("use fast, default, best, or a zstd level 1..=19"),
            "{}",
            stderr(&o)
        );
    }
}
