//! `mkpatch serve` and `applypatch OLD quic://…` through the real binaries
//! on loopback: `-o`, `--check` and `--in-place` on every small corpus
//! pair, and what is refused before anything is written (a wrong
//! certificate, no way to trust the server, trust flags on a local patch).

mod net_support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anypatch_tests::{bin, corpus_pairs, corpus_small};
use net_support::{b3, ok, run, Serve};

#[test]
fn every_pair_applies_over_quic() {
    let corpus = corpus_small();
    let served = tempfile::tempdir().expect("served");
    let state = tempfile::tempdir().expect("state");
    let work = tempfile::tempdir().expect("work");
    let pairs = corpus_pairs(corpus);
    for name in &pairs {
        ok(Command::new(bin("mkpatch"))
            .args(["-q", "--in-place"])
            .arg(corpus.join(format!("{name}.old")))
            .arg(corpus.join(format!("{name}.new")))
            .arg("-o")
            .arg(served.path().join(format!("{name}.anyp"))));
    }
    let serve = Serve::start(served.path(), state.path());
    for name in &pairs {
        let old = corpus.join(format!("{name}.old"));
        let new = corpus.join(format!("{name}.new"));
        let url = serve.url(&format!("{name}.anyp"));
        let out = work.path().join(format!("{name}.out"));
        let applied = ok(Command::new(bin("applypatch"))
            .args(["-q", "--json"])
            .arg(&old)
            .arg(&url)
            .arg("-o")
            .arg(&out)
            .args(["--server-cert", &serve.fingerprint]));
        assert_eq!(b3(&out), b3(&new), "{name}: -o over QUIC");
        let report: serde_json::Value =
            serde_json::from_slice(&applied.stdout).expect("one JSON object");
        let patch_len = std::fs::metadata(served.path().join(format!("{name}.anyp")))
            .expect("patch")
            .len();
        assert_eq!(report["fetched_bytes"], patch_len, "{name}: {report}");
        assert_eq!(report["fetch_retries"], 0, "{name}: {report}");

        let check = ok(Command::new(bin("applypatch"))
            .arg("--check")
            .arg(&old)
            .arg(&url)
            .args(["--server-cert", &serve.fingerprint]));
        let said = String::from_utf8_lossy(&check.stdout);
        assert!(said.contains(&b3(&new)), "{name}: --check said {said}");

        let target = work.path().join(format!("{name}.img"));
        std::fs::copy(&old, &target).expect("copy");
        ok(Command::new(bin("applypatch"))
            .args(["-q", "--in-place"])
            .arg(&target)
            .arg(&url)
            .args(["--server-cert", &serve.fingerprint]));
        assert_eq!(b3(&target), b3(&new), "{name}: --in-place over QUIC");
        let leftovers: Vec<PathBuf> = std::fs::read_dir(work.path())
            .expect("ls")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.to_string_lossy().contains("anypatch-"))
            .collect();
        assert!(leftovers.is_empty(), "{name}: left behind {leftovers:?}");
    }
}

#[test]
fn untrusted_servers_are_refused_before_anything_is_written() {
    let served = tempfile::tempdir().expect("served");
    let state = tempfile::tempdir().expect("state");
    let work = tempfile::tempdir().expect("work");
    let old = work.path().join("old");
    let new = work.path().join("new");
    std::fs::write(&old, vec![1u8; 100_000]).expect("old");
    std::fs::write(&new, vec![2u8; 100_000]).expect("new");
    ok(Command::new(bin("mkpatch"))
        .arg("-q")
        .arg(&old)
        .arg(&new)
        .arg("-o")
        .arg(served.path().join("p.anyp")));
    let serve = Serve::start(served.path(), state.path());
    let out = work.path().join("out");
    let wrong = format!("SHA256:{}", "ab".repeat(32));
    for (what, extra) in [
        ("a wrong certificate", vec!["--server-cert", wrong.as_str()]),
        ("no way to trust the server", vec![]),
    ] {
        let r = run(Command::new(bin("applypatch"))
            .arg(&old)
            .arg(serve.url("p.anyp"))
            .arg("-o")
            .arg(&out)
            .args(&extra));
        assert_eq!(r.status.code(), Some(1), "{what}: {r:?}");
        assert!(!out.exists(), "{what}: the output was written");
    }
    let r = run(Command::new(bin("applypatch"))
        .arg(&old)
        .arg("http://127.0.0.1:9/p.anyp")
        .arg("-o")
        .arg(&out));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("--trusted-key"), "plain http: {err}");
    let r = run(Command::new(bin("applypatch"))
        .arg(&old)
        .arg(served.path().join("p.anyp"))
        .arg("-o")
        .arg(&out)
        .args(["--server-cert", &serve.fingerprint]));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("for a patch URL"), "a local patch: {err}");
    assert!(!out.exists());
}

/// A client killed mid-way (SIGKILL right after a checkpoint) and run again
/// with the same command goes on from the checkpoint: the output is right,
/// nothing appeared at NEW before, and the part file and checkpoint are gone
/// after. A different OLD or a damaged checkpoint makes it start over.
#[test]
fn a_killed_client_goes_on_from_its_last_checkpoint() {
    let served = tempfile::tempdir().expect("served");
    let state = tempfile::tempdir().expect("state");
    let work = tempfile::tempdir().expect("work");
    let old = work.path().join("old");
    let new = work.path().join("new");
    // 24 MiB of new data that does not compress: a patch of about 24 MiB,
    // six checkpoints (one per 4 MiB).
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let bytes: Vec<u8> = (0..24 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&old, &bytes[..1 << 20]).expect("old");
    std::fs::write(&new, &bytes).expect("new");
    ok(Command::new(bin("mkpatch"))
        .args(["-q", "--level", "fast"])
        .arg(&old)
        .arg(&new)
        .arg("-o")
        .arg(served.path().join("p.anyp")));
    let serve = Serve::start(served.path(), state.path());
    let out = work.path().join("out.img");
    let part = work.path().join(".out.img.anypatch-part");
    let resume = work.path().join(".out.img.anypatch-part.resume");
    let apply = |kill_after: Option<&str>| {
        let mut cmd = Command::new(bin("applypatch"));
        cmd.arg(&old)
            .arg(serve.url("p.anyp"))
            .arg("-o")
            .arg(&out)
            .args(["--server-cert", &serve.fingerprint]);
        if let Some(n) = kill_after {
            cmd.env("ANYPATCH_TEST_KILL_AFTER_CHECKPOINTS", n);
        }
        run(&mut cmd)
    };
    let first = apply(Some("3"));
    assert_eq!(first.status.code(), None, "not killed: {first:?}");
    assert!(!out.exists(), "NEW appeared before the apply finished");
    assert!(
        part.exists() && resume.exists(),
        "no part file or checkpoint kept"
    );
    let second = run(Command::new(bin("applypatch"))
        .arg("--json")
        .arg(&old)
        .arg(serve.url("p.anyp"))
        .arg("-o")
        .arg(&out)
        .args(["--server-cert", &serve.fingerprint]));
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{said}");
    assert!(said.contains("going on with"), "did not resume: {said}");
    assert_eq!(b3(&out), b3(&new));
    // Only what followed the checkpoint (the third, at 12 MiB or more), and
    // the header section, crossed the network again.
    let report: serde_json::Value = serde_json::from_slice(&second.stdout).expect("JSON");
    let patch_len = std::fs::metadata(served.path().join("p.anyp"))
        .expect("patch")
        .len();
    let fetched = report["fetched_bytes"].as_u64().expect("fetched_bytes");
    assert!(
        fetched > 0 && fetched <= patch_len / 2 + (1 << 20),
        "the rerun fetched {fetched} of {patch_len} bytes"
    );
    assert!(
        !part.exists() && !resume.exists(),
        "left the part file behind"
    );

    // A damaged checkpoint is not trusted: the run starts over and succeeds.
    std::fs::remove_file(&out).expect("rm");
    let killed = apply(Some("2"));
    assert_eq!(killed.status.code(), None);
    let mut damaged = std::fs::read(&resume).expect("checkpoint");
    let at = damaged.len() / 2;
    damaged[at] ^= 0x40;
    std::fs::write(&resume, damaged).expect("write");
    let again = apply(None);
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{said}");
    assert!(
        !said.contains("going on with"),
        "resumed from a damaged checkpoint: {said}"
    );
    assert_eq!(b3(&out), b3(&new));
}

/// The server keeps serving when whoever started it stops reading its
/// stdout after the first line (it used to die on the broken pipe).
#[test]
fn the_server_outlives_a_closed_stdout() {
    let served = tempfile::tempdir().expect("served");
    let state = tempfile::tempdir().expect("state");
    let work = tempfile::tempdir().expect("work");
    let old = work.path().join("old");
    std::fs::write(&old, b"old").expect("old");
    std::fs::write(work.path().join("new"), b"new").expect("new");
    ok(Command::new(bin("mkpatch"))
        .arg("-q")
        .arg(&old)
        .arg(work.path().join("new"))
        .arg("-o")
        .arg(served.path().join("p.anyp")));
    let mut child = Command::new(bin("mkpatch"))
        .arg("serve")
        .arg(served.path())
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let mut first = String::new();
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    stdout.read_line(&mut first).expect("first line");
    drop(stdout);
    let port: u16 = first
        .rsplit_once(':')
        .and_then(|(_, p)| p.split_whitespace().next()?.parse().ok())
        .expect("port");
    // The fingerprint went unread: trust the signature-less way is refused,
    // so pin a wrong one and expect a certificate refusal, which needs a
    // live server to answer the handshake.
    let wrong = format!("SHA256:{}", "cd".repeat(32));
    let r = run(Command::new(bin("applypatch"))
        .arg("--check")
        .arg(&old)
        .arg(format!("quic://127.0.0.1:{port}/p.anyp"))
        .args(["--server-cert", &wrong]));
    let err = String::from_utf8_lossy(&r.stderr);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        err.contains("not trusted"),
        "the server did not answer: {err}"
    );
}
