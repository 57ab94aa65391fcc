//! `mkpatch serve` and `applypatch OLD quic://…` through the real binaries
//! on loopback: `-o`, `--check` and `--in-place` on every small corpus
//! pair, and what is refused before anything is written (a wrong
//! certificate, no way to trust the server, trust flags on a local patch).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use anypatch_tests::{bin, corpus_pairs, corpus_small, hex};

/// A `mkpatch serve` child, killed on drop.
struct Serve {
    child: Child,
    port: u16,
    fingerprint: String,
}

impl Serve {
    fn start(dir: &Path, state: &Path) -> Self {
        let mut child = Command::new(bin("mkpatch"))
            .arg("serve")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0", "--state-dir"])
            .arg(state)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("mkpatch serve starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut next = || lines.next().expect("a line").expect("utf-8");
        let serving = next();
        let port = serving
            .rsplit_once(':')
            .and_then(|(_, p)| p.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no port in {serving:?}"));
        let cert = next();
        let fingerprint = cert
            .strip_prefix("certificate ")
            .unwrap_or_else(|| panic!("no fingerprint in {cert:?}"))
            .to_owned();
        Self {
            child,
            port,
            fingerprint,
        }
    }

    fn url(&self, name: &str) -> String {
        format!("quic://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("binary runs")
}

fn ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn b3(path: &Path) -> String {
    hex(blake3::hash(&std::fs::read(path).expect("read")).as_bytes())
}

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
        ok(Command::new(bin("applypatch"))
            .arg("-q")
            .arg(&old)
            .arg(&url)
            .arg("-o")
            .arg(&out)
            .args(["--server-cert", &serve.fingerprint]));
        assert_eq!(b3(&out), b3(&new), "{name}: -o over QUIC");

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
