//! mkpatch's report on stderr: one summary line (sizes, the patch as a
//! share of the new image, the time) whether or not stderr is a terminal;
//! the progress line only on a terminal; nothing with `-q`, and nothing
//! but the patch when the patch itself goes to stderr.

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use anypatch_tests::bin;

/// A 3 MiB pseudo-random old image and a new one with 4 KiB changed.
fn pair(dir: &Path) -> (String, String) {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let old: Vec<u8> = (0..3 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut new = old.clone();
    new[1 << 20..(1 << 20) + 4096].fill(0x5a);
    let (o, n) = (dir.join("old.img"), dir.join("new.img"));
    fs::write(&o, old).expect("write old");
    fs::write(&n, new).expect("write new");
    (o.display().to_string(), n.display().to_string())
}

fn mkpatch(args: &[&str]) -> Output {
    Command::new(bin("mkpatch"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run mkpatch")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The summary line says the sizes, the patch's share of the new image
/// (checked against the patch written) and the time, and carries no
/// terminal control characters when stderr is a pipe.
#[test]
fn summary_without_a_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = pair(dir.path());
    let patch = dir.path().join("p.bin").display().to_string();
    let o = mkpatch(&[&old, &new, "-o", &patch]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one summary line expected: {err:?}");
    let line = lines[0];
    assert!(
        !line.contains(['\r', '\x1b']),
        "progress or escapes on a pipe: {line:?}"
    );
    assert!(
        line.starts_with("mkpatch: old 3.0 MiB, new 3.0 MiB -> patch "),
        "{line}"
    );
    let patch_len = fs::metadata(&patch).expect("patch").len();
    let share = format!(
        "({:.2}% of new",
        patch_len as f64 * 100.0 / (3 << 20) as f64
    );
    assert!(line.contains(&share), "{line} does not say {share}");
    let secs = line
        .rsplit_once(" in ")
        .and_then(|(_, t)| t.strip_suffix(" s"))
        .and_then(|t| t.parse::<f64>().ok());
    assert!(secs.is_some(), "no time at the end: {line}");

    // mkpatch index reports the same way.
    let index = dir.path().join("old.apidx").display().to_string();
    let o = mkpatch(&["index", &old, "-o", &index]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(
        err.starts_with("mkpatch: image 3.0 MiB -> index ") && !err.contains('\x1b'),
        "{err:?}"
    );
}

/// `-q` prints nothing; `-o /dev/stderr` puts the patch, and only the
/// patch, on stderr.
#[test]
fn quiet_and_patch_on_stderr() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = pair(dir.path());
    let patch = dir.path().join("p.bin").display().to_string();
    let o = mkpatch(&["-q", &old, &new, "-o", &patch]);
    assert!(o.status.success());
    assert!(o.stderr.is_empty(), "-q: {}", text(&o.stderr));

    let o = mkpatch(&[&old, &new, "-o", "/dev/stderr"]);
    assert!(o.status.success());
    assert!(
        o.stderr == fs::read(&patch).expect("patch"),
        "stderr is not exactly the patch"
    );
}

/// On a terminal (util-linux `script` gives mkpatch a pseudo-terminal),
/// the progress line comes first, each state erasing the last, and the
/// summary erases it.
#[test]
fn progress_only_on_a_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = pair(dir.path());
    let patch = dir.path().join("p.bin").display().to_string();
    let command = format!(
        "'{}' '{old}' '{new}' -o '{patch}'",
        bin("mkpatch").display()
    );
    let o = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("run script (util-linux's bsdutils)");
    let shown = text(&o.stdout);
    assert!(o.status.success(), "{shown}");
    let erase = "\r\x1b[2K";
    assert!(
        shown.starts_with(&format!("{erase}mkpatch: scanning ")),
        "no progress line first: {shown:?}"
    );
    assert!(
        shown.contains(&format!(
            "{erase}mkpatch: old 3.0 MiB, new 3.0 MiB -> patch "
        )),
        "the summary does not erase the progress line: {shown:?}"
    );
}
