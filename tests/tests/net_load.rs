//! One `mkpatch serve` holds 1,000 concurrent QUIC clients on loopback
//! (the load tool `net/examples/quic-load.rs`, each client a `RemotePatch`
//! over its own connection, every byte compared with the file): none
//! fails, and the server's peak RSS (VmHWM) stays within 256 MiB. Prints
//! the aggregate throughput beside one client's alone.
//!
//! Bounded: a 1 MiB patch, and the load tool is killed after 5 minutes.

mod net_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anypatch_tests::{root, without_test_package_env};
use net_support::{noise_pair, Serve};

const CLIENTS: usize = 1000;
const MAX_SERVER_RSS: u64 = 256 << 20;
const LIMIT: Duration = Duration::from_secs(300);

/// The load tool, built once with the release profile.
fn quic_load() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let status = without_test_package_env(&mut Command::new(env!("CARGO")))
                .current_dir(root())
                .args(["build", "-q", "--release", "-p", "anypatch-net"])
                .args(["--example", "quic-load"])
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building the load tool failed");
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root().join("target"));
            target.join("release/examples/quic-load")
        })
        .clone()
}

/// Runs the load tool with `clients` clients; its JSON report.
fn load(serve: &Serve, patch: &Path, clients: usize) -> serde_json::Value {
    let mut child = Command::new(quic_load())
        .arg("--url")
        .arg(format!("quic://127.0.0.1:{}/p.anyp", serve.port))
        .args(["--server-cert", &serve.fingerprint])
        .arg("--expect")
        .arg(patch)
        .args(["--clients", &clients.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("quic-load starts");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{clients} clients did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("quic-load output");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "quic-load ({}) printed no report ({e}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn one_server_holds_a_thousand_clients() {
    let served = tempfile::tempdir().expect("served");
    let state = tempfile::tempdir().expect("state");
    let work = tempfile::tempdir().expect("work");
    let patch = served.path().join("p.anyp");
    noise_pair(work.path(), 1 << 20, &patch);
    let serve = Serve::start(served.path(), state.path());

    let one = load(&serve, &patch, 1);
    assert_eq!(one["failed"], 0, "one client: {one}");
    let rss_one = serve.status_bytes("VmHWM:");

    let many = load(&serve, &patch, CLIENTS);
    let peak = serve.status_bytes("VmHWM:");
    eprintln!(
        "one client: {} MB/s ({} s); {CLIENTS} clients: {} MB/s in all ({} s, {} bytes, {} retries); server peak RSS {:.1} MiB (after one client {:.1} MiB)",
        one["mb_per_s"],
        one["seconds"],
        many["mb_per_s"],
        many["seconds"],
        many["bytes"],
        many["retries"],
        peak as f64 / (1 << 20) as f64,
        rss_one as f64 / (1 << 20) as f64,
    );
    eprintln!("retry notices, the first few: {}", many["notices"]);
    assert_eq!(many["ok"], CLIENTS, "{many}");
    assert_eq!(many["failed"], 0, "{many}");
    assert_eq!(
        many["bytes"].as_u64(),
        Some(CLIENTS as u64 * std::fs::metadata(&patch).expect("patch").len()),
        "{many}"
    );
    assert!(
        peak <= MAX_SERVER_RSS,
        "the server's peak RSS was {peak} bytes, over {MAX_SERVER_RSS}"
    );
}
