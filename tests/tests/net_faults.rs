//! `applypatch OLD quic://…` across a netlab link that breaks: a 32 MiB
//! patch at 50 Mbit/s (about 5 s of transfer) survives the server killed
//! and restarted twice, the link down for 5 s, 1% loss each way, and the
//! client killed during `--in-place` and run again; each result equals
//! NEW and the bytes the link carried to the client (nftables counters, IP
//! headers included) stay within 1.1x the patch. A server whose file is cut
//! short, before or during a transfer, is refused with nothing written.
//!
//! Needs root and `scripts/setup-deps net`.

mod net_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anypatch_netlab::Lab;
use anypatch_tests::bin;
use net_support::{b3, noise_pair, size, wait_for};

/// The patch's size: large enough that a transfer at [`RATE_MBIT`] lasts
/// several seconds, so a fault lands mid-way.
const IMAGE: usize = 32 << 20;
const RATE_MBIT: f64 = 50.0;
/// Bytes carried to the client, over the patch's size, that a broken
/// transfer may cost (the bound, headers and retransmissions included).
const MAX_OVERHEAD: f64 = 1.1;
/// Bound on any one wait: a transfer that stalls fails the test instead of hanging.
const WAIT: Duration = Duration::from_secs(120);

/// A lab with `mkpatch serve` in its server namespace, serving a patch
/// between two random images, and a work directory for the client.
struct Bench {
    lab: Lab,
    served: tempfile::TempDir,
    state: tempfile::TempDir,
    work: tempfile::TempDir,
    old: PathBuf,
    new: PathBuf,
    patch_len: u64,
    server: Option<Child>,
    /// Kept open while the server runs: it may write to its stdout.
    server_out: Option<std::io::Lines<BufReader<std::process::ChildStdout>>>,
    fingerprint: String,
}

const PORT: u16 = 4433;

impl Bench {
    fn new(tag: &str) -> Self {
        // Packet by packet: loss strikes single wire packets, and the
        // counters see every packet's headers.
        let lab = Lab::per_packet(tag).unwrap_or_else(|e| panic!("cannot make a network lab: {e}"));
        let served = tempfile::tempdir().expect("served");
        let work = tempfile::tempdir().expect("work");
        let patch = served.path().join("p.anyp");
        let (old, new) = noise_pair(work.path(), IMAGE, &patch);
        let mut bench = Self {
            lab,
            served,
            state: tempfile::tempdir().expect("state"),
            work,
            old,
            new,
            patch_len: size(&patch),
            server: None,
            server_out: None,
            fingerprint: String::new(),
        };
        bench.start_server();
        bench.lab.set_rate(RATE_MBIT).expect("rate");
        bench
    }

    /// Starts `mkpatch serve` on the server's address (again, after a
    /// kill: same port, same state directory, so the same certificate).
    fn start_server(&mut self) {
        let mut child = self
            .lab
            .server_cmd(bin("mkpatch").to_str().expect("utf-8 path"))
            .arg("serve")
            .arg(self.served.path())
            .arg("--listen")
            .arg(format!("{}:{PORT}", self.lab.server_addr()))
            .arg("--state-dir")
            .arg(self.state.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("mkpatch serve starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut next = || lines.next().expect("a line").expect("utf-8");
        let serving = next();
        assert!(serving.starts_with("serving "), "{serving}");
        let cert = next();
        let fingerprint = cert
            .strip_prefix("certificate ")
            .unwrap_or_else(|| panic!("no fingerprint in {cert:?}"))
            .to_owned();
        if !self.fingerprint.is_empty() {
            assert_eq!(fingerprint, self.fingerprint, "the kept certificate");
        }
        self.fingerprint = fingerprint;
        self.server = Some(child);
        self.server_out = Some(lines);
    }

    fn kill_server(&mut self) {
        let mut child = self.server.take().expect("a server runs");
        child.kill().expect("SIGKILL the server");
        let _ = child.wait();
    }

    fn url(&self) -> String {
        format!("quic://{}:{PORT}/p.anyp", self.lab.server_addr())
    }

    /// `applypatch OLD URL ARGS... --server-cert FP` in the client namespace.
    fn client(&self, old: &Path, args: &[&std::ffi::OsStr]) -> Command {
        let mut cmd = self
            .lab
            .client_cmd(bin("applypatch").to_str().expect("utf-8 path"));
        cmd.arg("-q")
            .arg(old)
            .arg(self.url())
            .args(args)
            .args(["--server-cert", &self.fingerprint])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn to_client(&self) -> u64 {
        self.lab.bytes_to_client().expect("nft counter")
    }

    /// Waits until the link has carried `share` of the patch to the client.
    fn wait_share(&self, share: f64) {
        let want = (self.patch_len as f64 * share) as u64;
        wait_for(WAIT, &format!("{want} bytes to the client"), || {
            self.to_client() >= want
        });
    }

    /// The bytes carried to the client, checked against the bound.
    fn check_bytes(&self, what: &str, start: Instant) {
        let got = self.to_client();
        let ratio = got as f64 / self.patch_len as f64;
        eprintln!(
            "{what}: patch {} bytes, {got} bytes to the client ({ratio:.3}x), {} to the server, {:.1} s",
            self.patch_len,
            self.lab.bytes_to_server().expect("nft counter"),
            start.elapsed().as_secs_f64()
        );
        assert!(
            ratio <= MAX_OVERHEAD,
            "{what}: {got} bytes for a {} byte patch ({ratio:.3}x > {MAX_OVERHEAD}x)",
            self.patch_len
        );
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits for a client (at most [`WAIT`]; then it is killed) and insists it succeeded.
fn finish(mut child: Child) -> Output {
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > WAIT {
            let _ = child.kill();
            let out = child.wait_with_output().expect("applypatch ends");
            panic!(
                "applypatch did not finish within {WAIT:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("applypatch ends");
    assert!(
        out.status.success(),
        "applypatch failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `-o` while `fault` breaks the transfer; the output must equal NEW.
fn output_through(tag: &str, fault: impl FnOnce(&mut Bench)) -> (Bench, String) {
    let mut bench = Bench::new(tag);
    let out = bench.work.path().join("out.img");
    let start = Instant::now();
    let child = bench
        .client(&bench.old, &["-o".as_ref(), out.as_os_str()])
        .spawn()
        .expect("applypatch starts");
    fault(&mut bench);
    let done = finish(child);
    assert_eq!(b3(&out), b3(&bench.new), "{tag}: the output");
    bench.check_bytes(tag, start);
    (bench, String::from_utf8_lossy(&done.stderr).into_owned())
}

#[test]
fn server_killed_twice_and_restarted() {
    let (_, said) = output_through("server_killed", |b| {
        for share in [0.3, 0.6] {
            b.wait_share(share);
            b.kill_server();
            b.start_server();
        }
    });
    // Each restart was a new connection that asked for the rest.
    let retries = said.matches("retrying").count();
    assert!(retries >= 2, "{said}");
}

#[test]
fn link_down_for_5_s() {
    output_through("link_down", |b| {
        b.wait_share(0.3);
        b.lab.link_down().expect("down");
        // Packets the delay line already held (one RTT and its queue) may
        // still come out; after that the outage must be total.
        std::thread::sleep(Duration::from_secs(1));
        let before = b.to_client();
        std::thread::sleep(Duration::from_secs(4));
        // The outage was real: nothing came through it.
        assert_eq!(b.to_client(), before, "bytes crossed a link that was down");
        b.lab.link_up().expect("up");
    });
}

#[test]
fn one_percent_loss() {
    output_through("loss", |b| {
        b.lab.set_loss(1.0).expect("loss");
    });
}

#[test]
fn client_killed_during_in_place_goes_on_from_its_download() {
    let bench = Bench::new("client_killed");
    let target = bench.work.path().join("t.img");
    std::fs::copy(&bench.old, &target).expect("copy");
    let download = bench.work.path().join(".t.img.anypatch-download");
    let start = Instant::now();
    let in_place = |b: &Bench| {
        b.client(&target, &["--in-place".as_ref()])
            .spawn()
            .expect("applypatch starts")
    };
    let mut first = in_place(&bench);
    wait_for(WAIT, "a third of the patch downloaded", || {
        size(&download) >= bench.patch_len / 3
    });
    first.kill().expect("SIGKILL the client");
    let _ = first.wait();
    let kept = size(&download);
    let before_rerun = bench.to_client();
    assert!(kept < bench.patch_len, "the download was complete already");
    assert_eq!(
        b3(&target),
        b3(&bench.old),
        "the target changed before the patch was whole"
    );
    finish(in_place(&bench));
    assert_eq!(b3(&target), b3(&bench.new), "the target after the rerun");
    assert!(!download.exists(), "the download copy was left behind");
    // The rerun fetched what the copy lacked, not the whole patch.
    let rerun = bench.to_client() - before_rerun;
    eprintln!("client_killed: kept {kept} bytes; the rerun fetched {rerun}");
    assert!(
        (rerun as f64) < (bench.patch_len - kept) as f64 * MAX_OVERHEAD,
        "the rerun fetched {rerun} bytes; {} were missing",
        bench.patch_len - kept
    );
    bench.check_bytes("client_killed", start);
}

#[test]
fn a_patch_cut_short_on_the_server_is_refused() {
    let bench = Bench::new("cut_short");
    let patch = bench.served.path().join("p.anyp");
    let out = bench.work.path().join("out.img");
    // Cut while it is fetched: the server ends the stream early, and the
    // file the client goes on with is no longer the one it began.
    let child = bench
        .client(&bench.old, &["-o".as_ref(), out.as_os_str()])
        .spawn()
        .expect("applypatch starts");
    bench.wait_share(0.2);
    let half = bench.patch_len / 2;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&patch)
        .and_then(|f| f.set_len(half))
        .expect("truncate the served patch");
    let r = child.wait_with_output().expect("applypatch ends");
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        matches!(r.status.code(), Some(1 | 2)),
        "{}: {err}",
        r.status
    );
    assert!(!out.exists(), "an output from a cut patch");
    assert!(
        err.contains("changed on the server") || err.contains("past the end"),
        "{err}"
    );
    // A file shorter than the patch from the start: the stream ends cleanly,
    // and the engine refuses a truncated patch. (Another output: the first
    // run kept its checkpoint beside out.img for a rerun.)
    let out = bench.work.path().join("out2.img");
    let r = bench
        .client(&bench.old, &["-o".as_ref(), out.as_os_str()])
        .output()
        .expect("applypatch runs");
    assert_eq!(
        r.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(!out.exists(), "an output from a truncated patch");
}
