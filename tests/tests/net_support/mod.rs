//! What the network tests share: running the binaries, random images,
//! hashes, and waiting for a condition with a deadline.
#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anypatch_tests::{bin, hex};

pub mod http;

/// Runs `cmd` to its end.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("binary runs")
}

/// Runs `cmd` and insists it succeeds.
pub fn ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// BLAKE3 of a file, hex.
pub fn b3(path: &Path) -> String {
    hex(blake3::hash(&std::fs::read(path).expect("read")).as_bytes())
}

/// `len` bytes that no compressor shrinks, the same for the same `seed`
/// (xorshift64*; a patch between two of them is as long as the file).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes an old and a new image of `len` random bytes each into `dir`
/// and an in-place patch between them at `patch`; returns (old, new).
pub fn noise_pair(
    dir: &Path,
    len: usize,
    patch: &Path,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let (old, new) = (dir.join("old.img"), dir.join("new.img"));
    std::fs::write(&old, noise(1, len)).expect("old");
    std::fs::write(&new, noise(2, len)).expect("new");
    ok(Command::new(bin("mkpatch"))
        .args(["-q", "--in-place"])
        .arg(&old)
        .arg(&new)
        .arg("-o")
        .arg(patch));
    (old, new)
}

/// Polls `what` every 20 ms until it is true; panics after `limit`.
pub fn wait_for(limit: Duration, why: &str, mut what: impl FnMut() -> bool) {
    let start = Instant::now();
    while !what() {
        assert!(start.elapsed() < limit, "waited {limit:?} for {why}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The size of a file, 0 when it does not exist.
pub fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Sends `signal` (a name: KILL, TERM) to process `pid`.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// The processes whose parent is `pid` (from /proc).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// `mkpatch serve` on a loopback port; killed on drop.
pub struct Serve {
    child: Child,
    pub port: u16,
    /// The SHA256:... line it printed, for --server-cert.
    pub fingerprint: String,
    _stdout: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Serve {
    /// Serves `dir` on 127.0.0.1 with its certificate kept in `state`.
    pub fn start(dir: &Path, state: &Path) -> Self {
        Self::start_with(dir, state, "127.0.0.1:0", &[])
    }

    /// Serves `dir` on `listen` (`127.0.0.1:0`: any free port; a fixed
    /// port to restart on the same one) with `extra` flags, e.g. `--access FILE`.
    pub fn start_with(dir: &Path, state: &Path, listen: &str, extra: &[&std::ffi::OsStr]) -> Self {
        let mut child = Command::new(bin("mkpatch"))
            .arg("serve")
            .arg(dir)
            .args(["--listen", listen, "--state-dir"])
            .arg(state)
            .args(extra)
            .stdout(Stdio::piped())
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
            _stdout: lines,
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends the server `sig` (`TERM`, `INT`, ...) and waits for it to end.
    pub fn stop(&mut self, sig: &str) -> std::process::ExitStatus {
        signal(self.child.id(), sig);
        self.child.wait().expect("the server ends")
    }

    /// A field of /proc/PID/status, in bytes (the kernel says kB).
    pub fn status_bytes(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server's /proc status");
        status
            .lines()
            .find_map(|l| {
                l.strip_prefix(field)?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {field} in the server's status"))
            * 1024
    }
}

impl Serve {
    /// `quic://127.0.0.1:PORT/NAME`.
    pub fn url(&self, name: &str) -> String {
        format!("quic://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// OLD (1 MiB) and NEW (`len` random bytes) in `dir`, and a patch between
/// them served over QUIC.
pub struct Served {
    pub old: std::path::PathBuf,
    pub new: std::path::PathBuf,
    pub patch: std::path::PathBuf,
    pub serve: Serve,
    _dirs: [tempfile::TempDir; 2],
}

pub fn served(dir: &Path, len: usize, in_place: bool) -> Served {
    let srv = tempfile::tempdir().expect("served");
    let state = tempfile::tempdir().expect("state");
    let old = dir.join("old.img");
    let new = dir.join("new.img");
    let old_len = if in_place { len } else { 1 << 20 };
    std::fs::write(&old, noise(1, old_len)).expect("old");
    std::fs::write(&new, noise(2, len)).expect("new");
    let patch = srv.path().join("p.anyp");
    let mut cmd = Command::new(bin("mkpatch"));
    cmd.args(["-q", "--level", "fast"]);
    if in_place {
        cmd.arg("--in-place");
    }
    ok(cmd.arg(&old).arg(&new).arg("-o").arg(&patch));
    let serve = Serve::start(srv.path(), state.path());
    Served {
        old,
        new,
        patch,
        serve,
        _dirs: [srv, state],
    }
}

impl Served {
    pub fn apply(&self, old: &Path, args: &[&std::ffi::OsStr]) -> Command {
        let mut cmd = Command::new(bin("applypatch"));
        cmd.arg(old)
            .arg(self.serve.url("p.anyp"))
            .args(args)
            .args(["--server-cert", &self.serve.fingerprint]);
        cmd
    }
}
