//! Round trips through the real binaries on every make-corpus small pair.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use anypatch_tests::{bin, corpus_pairs, corpus_small, hex, reference};

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("binary runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn b3(path: &Path) -> String {
    hex(blake3::hash(&fs::read(path).expect("read")).as_bytes())
}

/// Peak RSS in KiB of a command, measured by GNU time.
fn peak_rss_kib(args: &[&std::ffi::OsStr]) -> u64 {
    let out = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .args(args)
        .output()
        .expect("/usr/bin/time runs (scripts/setup-deps installs it)");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .expect("time prints peak RSS")
}

#[test]
fn every_pair_round_trips_and_matches_the_reference() {
    let dir = corpus_small();
    let pairs = corpus_pairs(dir);
    assert!(pairs.len() >= 7, "make-corpus made only {pairs:?}");
    let work = tempfile::tempdir().expect("tempdir");
    for name in pairs {
        let old = dir.join(format!("{name}.old"));
        let new = dir.join(format!("{name}.new"));
        let patch = work.path().join(format!("{name}.anyp"));
        let out = work.path().join(format!("{name}.out"));
        run(Command::new(bin("mkpatch"))
            .arg(&old)
            .arg(&new)
            .arg("-o")
            .arg(&patch)
            .arg("-q"));
        run(Command::new(bin("applypatch"))
            .arg(&old)
            .arg(&patch)
            .arg("-o")
            .arg(&out)
            .arg("-q"));
        assert_eq!(
            b3(&out),
            b3(&new),
            "{name}: applypatch -o result differs from new"
        );

        // --check writes nothing and prints the verified hash.
        let check = run(Command::new(bin("applypatch"))
            .arg("--check")
            .arg(&old)
            .arg(&patch)
            .arg("-q"));
        assert_eq!(
            String::from_utf8_lossy(&check.stdout).trim(),
            b3(&new),
            "{name}: --check hash"
        );

        // The patch read from stdin gives the same result.
        let piped = work.path().join(format!("{name}.piped"));
        run(Command::new(bin("applypatch"))
            .arg(&old)
            .arg("-")
            .arg("-o")
            .arg(&piped)
            .arg("-q")
            .stdin(fs::File::open(&patch).expect("open patch")));
        assert_eq!(b3(&piped), b3(&new), "{name}: stdin apply");

        // The independent reference applier agrees.
        let r = reference::apply(
            &fs::read(&old).expect("old"),
            &fs::read(&patch).expect("patch"),
        )
        .unwrap_or_else(|e| panic!("{name}: reference applier refused: {e}"));
        assert_eq!(
            hex(blake3::hash(&r).as_bytes()),
            b3(&new),
            "{name}: reference result"
        );

        // inspect --json describes the patch.
        let inspect = run(Command::new(bin("mkpatch"))
            .arg("inspect")
            .arg(&patch)
            .arg("--json"));
        let j: serde_json::Value =
            serde_json::from_slice(&inspect.stdout).expect("inspect --json is JSON");
        let text = j.to_string();
        assert!(
            text.contains(&b3(&new)),
            "{name}: inspect shows the new hash: {text}"
        );
        assert!(
            text.contains(&fs::metadata(&new).expect("meta").len().to_string()),
            "{name}: inspect shows new size"
        );

        // In place, on a copy of old: either exact, or refused with the copy untouched.
        let disk = work.path().join(format!("{name}.disk"));
        fs::copy(&old, &disk).expect("copy old");
        let ip = Command::new(bin("applypatch"))
            .arg("--in-place")
            .arg(&disk)
            .arg(&patch)
            .arg("-q")
            .output()
            .expect("runs");
        match ip.status.code() {
            Some(0) => assert_eq!(b3(&disk), b3(&new), "{name}: in-place result"),
            Some(5) => assert_eq!(
                b3(&disk),
                b3(&old),
                "{name}: refused in-place must leave the target untouched"
            ),
            other => panic!(
                "{name}: --in-place exit {other:?}: {}",
                String::from_utf8_lossy(&ip.stderr)
            ),
        }
        if ["sparse", "edits", "zeros", "append"].contains(&name.as_str()) {
            assert_eq!(
                ip.status.code(),
                Some(0),
                "{name}: same-offset changes must apply in place"
            );
        }

        // The applier's peak memory is small and fixed.
        let rss = peak_rss_kib(&[
            bin("applypatch").as_os_str(),
            old.as_os_str(),
            patch.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
            "-q".as_ref(),
        ]);
        assert!(
            rss <= 32 * 1024,
            "{name}: applypatch peak RSS {rss} KiB is above 32 MiB"
        );
        for f in [&out, &piped, &disk, &patch] {
            let _ = fs::remove_file(f);
        }
    }
}

#[test]
fn output_is_identical_for_any_thread_count() {
    let dir = corpus_small();
    let work = tempfile::tempdir().expect("tempdir");
    for name in ["shift", "moved", "ext4"] {
        let (old, new) = (
            dir.join(format!("{name}.old")),
            dir.join(format!("{name}.new")),
        );
        if !old.exists() {
            continue; // ext4 needs root; the corpus test above checks the set
        }
        let mut patches = Vec::new();
        for j in ["1", "2", "5"] {
            let p = work.path().join(format!("{name}.{j}"));
            run(Command::new(bin("mkpatch"))
                .arg(&old)
                .arg(&new)
                .arg("-o")
                .arg(&p)
                .args(["-q", "-j", j]));
            patches.push(fs::read(&p).expect("read patch"));
        }
        assert!(
            patches.windows(2).all(|w| w[0] == w[1]),
            "{name}: patch bytes depend on -j"
        );
    }
}
