//! `applypatch` from a URL against the machine's limits: a full file
//! system under the part file, under the checkpoint and under the copy
//! `--in-place` fetches first (each refused clearly, and a rerun after
//! space is freed finishes); and the copies of two URLs kept apart. The
//! client's memory is in net_hostile_memory.rs.
//!
//! Needs root (tmpfs mounts).

mod net_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anypatch_tests::bin;
use net_support::http::HttpServer;
use net_support::{b3, noise, ok, run, served, signal, size, wait_for};

const WAIT: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;

/// A tmpfs of limited size (and inodes), unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(opts: &str) -> Self {
        let dir = tempfile::tempdir().expect("mount point");
        ok(Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(dir.path()));
        Self { dir }
    }

    /// Gives it more room, as a user who freed space would.
    fn remount(&self, opts: &str) {
        ok(Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(self.dir.path()));
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn leftovers(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().contains("anypatch-"))
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The part file does not fit: exit 1, the message names the file and
/// the lack of space and says what to do; NEW does not appear. After
/// space is freed, the same command goes on from the last checkpoint.
#[test]
fn a_full_disk_under_the_part_file() {
    let work = tempfile::tempdir().expect("work");
    let s = served(work.path(), 12 << 20, false);
    let fs = Tmpfs::mount("size=6m");
    let out = fs.path().join("out.img");
    let full = run(&mut s.apply(&s.old, &["--json".as_ref(), "-o".as_ref(), out.as_os_str()]));
    assert_eq!(full.status.code(), Some(1), "{}", stderr(&full));
    let said = stderr(&full);
    assert!(
        said.contains("No space left")
            && said.contains(".out.img.anypatch-part")
            && said.contains("free space on that file system")
            && said.contains("Run the same command again"),
        "{said}"
    );
    let report: serde_json::Value = serde_json::from_slice(&full.stdout).expect("JSON");
    assert_eq!(report["error_class"], "io", "{report}");
    assert!(!out.exists());
    fs.remount("size=32m");
    let again = ok(&mut s.apply(&s.old, &["-o".as_ref(), out.as_os_str()]));
    assert!(
        stderr(&again).contains("going on with"),
        "{}",
        stderr(&again)
    );
    assert_eq!(b3(&out), b3(&s.new));
    assert!(
        leftovers(fs.path()).is_empty(),
        "{:?}",
        leftovers(fs.path())
    );
}

/// The checkpoint cannot be saved (no inode left for it): exit 1, said
/// clearly, no part file left (nothing a rerun could use), and the rerun
/// after space is freed finishes.
#[test]
fn a_full_disk_under_the_checkpoint() {
    let work = tempfile::tempdir().expect("work");
    let s = served(work.path(), 12 << 20, false);
    // The root directory and the part file: no inode for the checkpoint.
    let fs = Tmpfs::mount("size=64m,nr_inodes=2");
    let out = fs.path().join("out.img");
    let full = run(&mut s.apply(&s.old, &["-o".as_ref(), out.as_os_str()]));
    assert_eq!(full.status.code(), Some(1), "{}", stderr(&full));
    let said = stderr(&full);
    assert!(
        said.contains("cannot save a checkpoint") && said.contains("No space left"),
        "{said}"
    );
    assert!(!out.exists());
    assert!(
        leftovers(fs.path()).is_empty(),
        "{:?}",
        leftovers(fs.path())
    );
    fs.remount("nr_inodes=16");
    ok(&mut s.apply(&s.old, &["-o".as_ref(), out.as_os_str()]));
    assert_eq!(b3(&out), b3(&s.new));
    assert!(
        leftovers(fs.path()).is_empty(),
        "{:?}",
        leftovers(fs.path())
    );
}

/// `--in-place` from a URL fetches the whole patch beside the target
/// first. When it does not fit: exit 1, said with what to do, the target
/// untouched; after space is freed the same command goes on fetching from
/// where the copy ended (less than the patch crosses the network again),
/// applies it and removes the copy.
#[test]
fn a_full_disk_under_the_in_place_copy() {
    let fs = Tmpfs::mount("size=20m");
    let work = tempfile::tempdir().expect("work");
    let s = served(work.path(), 12 << 20, true);
    let target = fs.path().join("disk.img");
    std::fs::copy(&s.old, &target).expect("target");
    let before = b3(&target);
    let full = run(&mut s.apply(&target, &["--in-place".as_ref()]));
    assert_eq!(full.status.code(), Some(1), "{}", stderr(&full));
    let said = stderr(&full);
    assert!(
        said.contains("No space left")
            && said.contains(".disk.img.anypatch-download")
            && said.contains("Free space there"),
        "{said}"
    );
    assert_eq!(b3(&target), before, "the target changed");
    let had = size(&fs.path().join(".disk.img.anypatch-download"));
    assert!(had > 0, "nothing of the copy kept");
    fs.remount("size=40m");
    let again = ok(&mut s.apply(&target, &["--in-place".as_ref(), "--json".as_ref()]));
    assert_eq!(b3(&target), b3(&s.new));
    let report: serde_json::Value = serde_json::from_slice(&again.stdout).expect("JSON");
    let fetched = report["fetched_bytes"].as_u64().expect("fetched_bytes");
    assert!(
        fetched <= size(&s.patch) - had + MIB,
        "fetched {fetched} again with {had} kept: {report}"
    );
    assert!(
        leftovers(fs.path()).is_empty(),
        "{:?}",
        leftovers(fs.path())
    );
}

/// A copy for `--in-place` that a kill cut short is continued by the same
/// command (a Range request from where it ended) and only by it: run with
/// another URL whose server gives the same ETag, it is fetched anew
/// instead of spliced (before the fix that run failed, and so did every
/// rerun).
#[test]
fn an_in_place_copy_is_continued_only_from_its_own_url() {
    let work = tempfile::tempdir().expect("work");
    let key = work.path().join("k.key");
    ok(Command::new(bin("mkpatch"))
        .args(["-q", "keygen", "-o"])
        .arg(&key));
    let old = work.path().join("old.img");
    std::fs::write(&old, noise(1, 8 << 20)).expect("old");
    let server = HttpServer::start();
    let mut news = Vec::new();
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        let new = work.path().join(format!("{name}.img"));
        std::fs::write(&new, noise(2 + i as u64, 8 << 20)).expect("new");
        let patch = work.path().join(format!("{name}.anyp"));
        ok(Command::new(bin("mkpatch"))
            .args(["-q", "--level", "fast", "--in-place", "--sign"])
            .arg(&key)
            .arg(&old)
            .arg(&new)
            .arg("-o")
            .arg(&patch));
        server.set(
            &format!("{name}.anyp"),
            std::fs::read(&patch).expect("patch"),
            "same",
        );
        news.push(new);
    }
    let target = work.path().join("disk.img");
    let copy = work.path().join(".disk.img.anypatch-download");
    let apply = |name: &str| {
        let mut cmd = Command::new(bin("applypatch"));
        cmd.arg("--in-place")
            .arg(&target)
            .arg(server.url(&format!("{name}.anyp")))
            .arg("--trusted-key")
            .arg(work.path().join("k.pub"));
        cmd
    };
    let killed_mid_copy = |name: &str| {
        server.set_rate(2_000_000);
        let mut child = apply(name)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("applypatch");
        wait_for(WAIT, "part of the copy", || size(&copy) > 2 * MIB);
        signal(child.id(), "KILL");
        let _ = child.wait();
        server.set_rate(0);
        size(&copy)
    };

    std::fs::copy(&old, &target).expect("target");
    let had = killed_mid_copy("a");
    ok(&mut apply("a"));
    assert_eq!(b3(&target), b3(&news[0]));
    let log = server.log();
    let last = log.last().expect("a request");
    assert_eq!(last.status, 206, "{log:?}");
    let from: u64 = last
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
        .unwrap_or_else(|| panic!("not a range request: {last:?}"));
    assert!(from > 0 && from <= had, "continued from {from}, had {had}");
    assert!(!copy.exists());

    std::fs::copy(&old, &target).expect("target");
    killed_mid_copy("a");
    let other = run(&mut apply("b"));
    assert!(other.status.success(), "{}", stderr(&other));
    assert_eq!(b3(&target), b3(&news[1]));
    assert!(
        leftovers(work.path()).is_empty(),
        "{:?}",
        leftovers(work.path())
    );
}
