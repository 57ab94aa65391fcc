//! Sixteen live syncs at once against one `mkpatch serve` on loopback: each
//! receiver holds another old version of one 24 MiB image (its own MiB
//! rewritten, and one block in every 4 MiB), all end with exactly NEW, and
//! the server's peak resident memory stays under a bound: a sync must not
//! cost the server a copy of the image, nor per-receiver buffers that grow
//! with it.

mod net_support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anypatch_tests::{bin, hex};
use net_support::{b3, noise, Serve};
use serde_json::Value;

const IMAGE: usize = 24 << 20;
const RECEIVERS: usize = 16;
/// The server's peak RSS (VmHWM) with all sixteen at once: measured at
/// 29 MiB (6.5 MiB idle) on 2026-12-07; the bound leaves twice that for
/// allocator and scheduling noise and is far below one image per receiver
/// (16 x 24 MiB).
const MAX_SERVER_RSS: u64 = 64 << 20;
/// Bound on the whole run: a stalled receiver fails the test instead of hanging.
const WAIT: Duration = Duration::from_secs(120);

/// OLD for receiver `i`: NEW with MiB `i` rewritten and one 4 KiB block
/// changed in every 4 MiB (at an offset of its own).
fn old_for(new: &[u8], i: usize) -> Vec<u8> {
    let mut old = new.to_vec();
    let mib = 1 << 20;
    old[i * mib..(i + 1) * mib].copy_from_slice(&noise(100 + i as u64, mib));
    let mut at = (i * 4096 * 7) % (4 << 20);
    while at + 4096 <= old.len() {
        old[at..at + 4096].copy_from_slice(&noise(1000 + (at + i) as u64, 4096));
        at += 4 << 20;
    }
    old
}

#[test]
fn sixteen_receivers_at_once_all_exact_in_bounded_server_memory() {
    let served = tempfile::tempdir().expect("served");
    let state = tempfile::tempdir().expect("state");
    let work = tempfile::tempdir().expect("work");
    let new = noise(7, IMAGE);
    let want = hex(blake3::hash(&new).as_bytes());
    std::fs::write(served.path().join("new.img"), &new).expect("new");
    let serve = Serve::start(served.path(), state.path());
    let idle = serve.status_bytes("VmRSS:");

    let targets: Vec<PathBuf> = (0..RECEIVERS)
        .map(|i| {
            let path = work.path().join(format!("t{i}.img"));
            std::fs::write(&path, old_for(&new, i)).expect("old");
            path
        })
        .collect();
    drop(new);
    let start = Instant::now();
    let children: Vec<Child> = targets
        .iter()
        .map(|t| {
            Command::new(bin("applypatch"))
                .args(["--in-place", "--json", "--no-cache"])
                .arg(t)
                .arg(serve.url("new.img"))
                .args(["--server-cert", &serve.fingerprint])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("applypatch starts")
        })
        .collect();
    let mut down = Vec::new();
    for (i, mut child) in children.into_iter().enumerate() {
        while child.try_wait().expect("wait").is_none() {
            if start.elapsed() > WAIT {
                let _ = child.kill();
                panic!("receiver {i} did not finish within {WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("applypatch ends");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "receiver {i} failed ({}): {text} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let j: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(j["status"], "synced", "{j}");
        down.push(j["bytes_down"].as_u64().unwrap_or(u64::MAX));
    }
    let took = start.elapsed();
    for (i, t) in targets.iter().enumerate() {
        assert_eq!(b3(t), want, "receiver {i}: the target is NEW");
    }
    let peak = serve.status_bytes("VmHWM:");
    eprintln!(
        "{RECEIVERS} receivers of a {} MiB image in {:.1} s; server RSS idle {} KiB, peak {} KiB; bytes down per receiver {:?}",
        IMAGE >> 20,
        took.as_secs_f64(),
        idle >> 10,
        peak >> 10,
        down
    );
    // Each receiver lacks about 1 MiB and 6 blocks: it must not fetch the image.
    for (i, d) in down.iter().enumerate() {
        assert!(*d < (IMAGE / 8) as u64, "receiver {i} carried {d} bytes");
    }
    assert!(
        peak <= MAX_SERVER_RSS,
        "the server's peak RSS {} KiB is over {} KiB",
        peak >> 10,
        MAX_SERVER_RSS >> 10
    );
}
