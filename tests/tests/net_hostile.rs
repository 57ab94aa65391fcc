//! `applypatch OLD URL -o NEW` (and `--in-place` from a URL) as a hostile
//! user would try it, on loopback: two runs on one NEW, a run that finishes
//! while another opens the part file, a checkpoint whose part file was
//! removed, a patch changed on the server between two runs (QUIC and HTTP
//! with If-Range), SIGINT and SIGTERM mid-way, NEW as a FIFO, a symlink,
//! OLD or a block device, and the progress line on a terminal and not in a
//! pipe. Full disks and memory are in net_hostile_limits.rs.

mod net_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anypatch_tests::bin;
use net_support::http::HttpServer;
use net_support::{b3, noise, ok, run, signal, size, wait_for, Serve};

/// Bound on any wait in these tests.
const WAIT: Duration = Duration::from_secs(60);

/// OLD, NEW and a patch between them served by `mkpatch serve`.
struct Fixture {
    work: tempfile::TempDir,
    served: tempfile::TempDir,
    _state: tempfile::TempDir,
    old: PathBuf,
    new: PathBuf,
    serve: Serve,
}

impl Fixture {
    /// A new image of `len` random bytes (a patch of about that size, one
    /// checkpoint per 4 MiB) from a 1 MiB old one.
    fn new(len: usize) -> Self {
        let work = tempfile::tempdir().expect("work");
        let served = tempfile::tempdir().expect("served");
        let state = tempfile::tempdir().expect("state");
        let old = work.path().join("old.img");
        let new = work.path().join("new.img");
        std::fs::write(&old, noise(1, 1 << 20)).expect("old");
        std::fs::write(&new, noise(2, len)).expect("new");
        make_patch(&old, &new, &served.path().join("p.anyp"), &[]);
        let serve = Serve::start(served.path(), state.path());
        Self {
            work,
            served,
            _state: state,
            old,
            new,
            serve,
        }
    }

    fn out(&self) -> PathBuf {
        self.work.path().join("out.img")
    }

    fn part(&self) -> PathBuf {
        self.work.path().join(".out.img.anypatch-part")
    }

    fn resume(&self) -> PathBuf {
        self.work.path().join(".out.img.anypatch-part.resume")
    }

    /// `applypatch OLD quic://…/p.anyp -o OUT --server-cert …`.
    fn apply(&self) -> Command {
        let mut cmd = Command::new(bin("applypatch"));
        cmd.arg(&self.old)
            .arg(self.serve.url("p.anyp"))
            .arg("-o")
            .arg(self.out())
            .args(["--server-cert", &self.serve.fingerprint]);
        cmd
    }

    /// Files of the work directory that a run left behind.
    fn leftovers(&self) -> Vec<PathBuf> {
        leftovers(self.work.path())
    }
}

fn leftovers(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().contains("anypatch-"))
        .collect()
}

fn make_patch(old: &Path, new: &Path, patch: &Path, extra: &[&str]) {
    ok(Command::new(bin("mkpatch"))
        .args(["-q", "--level", "fast"])
        .args(extra)
        .arg(old)
        .arg(new)
        .arg("-o")
        .arg(patch));
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whether process `pid` is stopped (SIGSTOP).
fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s.rsplit_once(')')?.1.split_whitespace().next()? == "T"))
        .unwrap_or(false)
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("applypatch starts")
}

/// A second run on the same NEW while the first one writes is refused at
/// once and says why; the first one finishes, unharmed.
#[test]
fn a_second_run_on_the_same_new_is_refused_while_the_first_writes() {
    let f = Fixture::new(12 << 20);
    // 4 MB/s: the first run lasts about three seconds.
    let first = spawn(f.apply().env("ANYPATCH_TEST_APPLY_RATE", "4000000"));
    wait_for(WAIT, "the first run's part file", || size(&f.part()) > 0);
    let second = run(f.apply().arg("--json"));
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    let said = stderr(&second);
    assert!(
        said.contains("another applypatch is writing") && said.contains("wait for it"),
        "{said}"
    );
    let report: serde_json::Value = serde_json::from_slice(&second.stdout).expect("JSON");
    assert_eq!(report["error_class"], "refused", "{report}");
    let first = first.wait_with_output().expect("first run");
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(b3(&f.out()), b3(&f.new));
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}

/// A run that opened the part file just before another run finished (and
/// renamed that part file to NEW) must not lock and write the file that is
/// now NEW: it opens a part file of its own and finishes too. Before the
/// fix it locked NEW's inode, truncated NEW, and failed at the rename.
#[test]
fn a_run_that_finishes_while_another_opens_the_part_file_is_not_written_over() {
    let f = Fixture::new(6 << 20);
    let late = spawn(f.apply().env("ANYPATCH_TEST_STOP_BEFORE_PART_LOCK", "1"));
    let pid = late.id();
    wait_for(WAIT, "the late run to stop before its lock", || {
        stopped(pid)
    });
    ok(&mut f.apply());
    let done = std::fs::metadata(f.out()).expect("NEW");
    signal(pid, "CONT");
    let late = late.wait_with_output().expect("late run");
    assert!(late.status.success(), "{}", stderr(&late));
    assert_eq!(b3(&f.out()), b3(&f.new));
    use std::os::unix::fs::MetadataExt;
    let now = std::fs::metadata(f.out()).expect("NEW");
    assert_ne!(
        now.ino(),
        done.ino(),
        "the late run wrote the finished NEW's inode"
    );
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}

/// A checkpoint whose part file was removed (someone tidied up) describes
/// bytes that are gone: going on from it would leave zeros where the new
/// image's start should be, under a hash check that trusts the checkpoint.
/// The rerun starts over instead.
#[test]
fn a_checkpoint_without_its_part_file_is_not_used() {
    let f = Fixture::new(12 << 20);
    let killed = run(f.apply().env("ANYPATCH_TEST_KILL_AFTER_CHECKPOINTS", "2"));
    assert_eq!(killed.status.code(), None, "not killed: {killed:?}");
    assert!(f.resume().exists());
    std::fs::remove_file(f.part()).expect("rm part");
    let again = ok(&mut f.apply());
    let said = stderr(&again);
    assert!(!said.contains("going on with"), "resumed: {said}");
    assert_eq!(b3(&f.out()), b3(&f.new));
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}

/// The patch replaced on the QUIC server between a killed run and its
/// rerun: the rerun sees another tag, says so, and applies the new patch
/// from byte 0 (it makes another image, so splicing would show).
#[test]
fn a_patch_changed_on_the_quic_server_between_runs_is_applied_from_the_start() {
    let f = Fixture::new(12 << 20);
    let killed = run(f.apply().env("ANYPATCH_TEST_KILL_AFTER_CHECKPOINTS", "2"));
    assert_eq!(killed.status.code(), None, "not killed: {killed:?}");
    let other = f.work.path().join("other.img");
    std::fs::write(&other, noise(3, 12 << 20)).expect("other");
    let next = f.work.path().join("next.anyp");
    make_patch(&f.old, &other, &next, &[]);
    std::fs::rename(&next, f.served.path().join("p.anyp")).expect("replace the patch");
    let again = ok(f.apply().arg("--json"));
    let said = stderr(&again);
    assert!(
        said.contains("changed on the server") && said.contains("starting over from byte 0"),
        "{said}"
    );
    assert_eq!(b3(&f.out()), b3(&other));
    let report: serde_json::Value = serde_json::from_slice(&again.stdout).expect("JSON");
    let fetched = report["fetched_bytes"].as_u64().expect("fetched_bytes");
    assert!(fetched >= size(&f.served.path().join("p.anyp")), "{report}");
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}

/// The same over HTTP: the rerun's Range request carries If-Range with the
/// old ETag, the server answers 200 with the whole new file, and the client
/// starts over from byte 0 instead of failing on every rerun.
#[test]
fn a_patch_changed_on_the_http_server_between_runs_is_applied_from_the_start() {
    let work = tempfile::tempdir().expect("work");
    let key = work.path().join("k.key");
    ok(Command::new(bin("mkpatch"))
        .args(["-q", "keygen", "-o"])
        .arg(&key));
    let old = work.path().join("old.img");
    std::fs::write(&old, noise(1, 1 << 20)).expect("old");
    let (a, b) = (work.path().join("a.img"), work.path().join("b.img"));
    std::fs::write(&a, noise(2, 12 << 20)).expect("a");
    std::fs::write(&b, noise(3, 12 << 20)).expect("b");
    let sign = ["--sign", key.to_str().expect("utf-8")];
    make_patch(&old, &a, &work.path().join("a.anyp"), &sign);
    make_patch(&old, &b, &work.path().join("b.anyp"), &sign);
    let server = HttpServer::start();
    server.set(
        "p.anyp",
        std::fs::read(work.path().join("a.anyp")).expect("a"),
        "v1",
    );
    let out = work.path().join("out.img");
    let apply = || {
        let mut cmd = Command::new(bin("applypatch"));
        cmd.arg(&old)
            .arg(server.url("p.anyp"))
            .arg("-o")
            .arg(&out)
            .arg("--trusted-key")
            .arg(work.path().join("k.pub"));
        cmd
    };
    let killed = run(apply().env("ANYPATCH_TEST_KILL_AFTER_CHECKPOINTS", "2"));
    assert_eq!(killed.status.code(), None, "not killed: {killed:?}");
    server.set(
        "p.anyp",
        std::fs::read(work.path().join("b.anyp")).expect("b"),
        "v2",
    );
    let again = ok(&mut apply());
    let said = stderr(&again);
    assert!(said.contains("starting over from byte 0"), "{said}");
    assert_eq!(b3(&out), b3(&b));
    let log = server.log();
    assert!(
        log.iter()
            .any(|l| l.if_range.as_deref() == Some("\"v1\"") && l.status == 200),
        "no If-Range with the old tag answered whole: {log:?}"
    );
    assert!(leftovers(work.path()).is_empty());
}

/// SIGTERM after a checkpoint: exit 143, NEW absent, the part file and its
/// checkpoint kept and named, and the same command goes on from there.
/// SIGINT before any checkpoint: exit 130 and nothing left behind.
#[test]
fn a_signal_mid_way_leaves_what_the_same_command_goes_on_from() {
    let f = Fixture::new(12 << 20);
    let child = spawn(f.apply().env("ANYPATCH_TEST_APPLY_RATE", "4000000"));
    wait_for(WAIT, "a checkpoint", || f.resume().exists());
    signal(child.id(), "TERM");
    let stopped = child.wait_with_output().expect("run");
    assert_eq!(stopped.status.code(), Some(143), "{}", stderr(&stopped));
    let said = stderr(&stopped);
    assert!(
        said.contains("interrupted by SIGTERM") && said.contains("run the same command again"),
        "{said}"
    );
    assert!(!f.out().exists(), "NEW appeared");
    assert!(f.part().exists() && f.resume().exists());
    let again = ok(&mut f.apply());
    assert!(
        stderr(&again).contains("going on with"),
        "{}",
        stderr(&again)
    );
    assert_eq!(b3(&f.out()), b3(&f.new));
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());

    std::fs::remove_file(f.out()).expect("rm");
    // 200 kB/s: no checkpoint (one per 4 MiB) for 20 s; the part file is
    // made after the signal handlers are set up.
    let child = spawn(f.apply().env("ANYPATCH_TEST_APPLY_RATE", "200000"));
    wait_for(WAIT, "the part file", || f.part().exists());
    signal(child.id(), "INT");
    let stopped = child.wait_with_output().expect("run");
    assert_eq!(stopped.status.code(), Some(130), "{}", stderr(&stopped));
    assert!(
        stderr(&stopped).contains("no checkpoint yet"),
        "{}",
        stderr(&stopped)
    );
    assert!(!f.out().exists());
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}

/// NEW that is a FIFO or OLD (also through a symlink) is refused before
/// anything is fetched; a symlink to a file is followed (the file is
/// replaced, the link stays, the part file goes beside the file).
#[test]
fn new_as_a_fifo_a_symlink_or_old() {
    let f = Fixture::new(1 << 20);
    let fifo = f.work.path().join("fifo");
    ok(Command::new("mkfifo").arg(&fifo));
    let link_to_old = f.work.path().join("old-link");
    std::os::unix::fs::symlink(&f.old, &link_to_old).expect("symlink");
    let old_b3 = b3(&f.old);
    for (what, out) in [
        ("a FIFO", &fifo),
        ("OLD", &f.old),
        ("a link to OLD", &link_to_old),
    ] {
        let r = run(Command::new(bin("applypatch"))
            .arg(&f.old)
            .arg(f.serve.url("p.anyp"))
            .arg("-o")
            .arg(out)
            .args(["--server-cert", &f.serve.fingerprint]));
        assert_eq!(r.status.code(), Some(1), "{what}: {r:?}");
        let said = stderr(&r);
        assert!(
            said.contains("Nothing was written") || said.contains("the old file itself"),
            "{what}: {said}"
        );
    }
    assert_eq!(b3(&f.old), old_b3);
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());

    let real_dir = f.work.path().join("real");
    std::fs::create_dir(&real_dir).expect("dir");
    let real = real_dir.join("img");
    std::fs::write(&real, b"before").expect("real");
    let link = f.work.path().join("link");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    ok(Command::new(bin("applypatch"))
        .arg(&f.old)
        .arg(f.serve.url("p.anyp"))
        .arg("-o")
        .arg(&link)
        .args(["--server-cert", &f.serve.fingerprint]));
    assert!(std::fs::symlink_metadata(&link)
        .expect("link")
        .file_type()
        .is_symlink());
    assert_eq!(b3(&real), b3(&f.new));
    assert!(leftovers(&real_dir).is_empty() && f.leftovers().is_empty());
}

/// A block device as NEW from a URL: as with a local patch, verified whole
/// before the device is touched, then written and read back. The patch is
/// fetched to a copy under /var/lib/anypatch (named by the device number),
/// which is removed after.
#[test]
fn a_block_device_as_new_from_a_url() {
    let f = Fixture::new(3 << 20);
    let backing = f.work.path().join("disk");
    std::fs::write(&backing, vec![0xEEu8; 4 << 20]).expect("disk");
    let dev = Loop::attach(&backing);
    let r = ok(Command::new(bin("applypatch"))
        .arg("--json")
        .arg(&f.old)
        .arg(f.serve.url("p.anyp"))
        .arg("-o")
        .arg(&dev.0)
        .args(["--server-cert", &f.serve.fingerprint]));
    let report: serde_json::Value = serde_json::from_slice(&r.stdout).expect("JSON");
    assert_eq!(report["output_kind"], "block_device", "{report}");
    let disk = std::fs::read(&backing).expect("disk");
    let new = std::fs::read(&f.new).expect("new");
    assert_eq!(&disk[..new.len()], &new[..]);
    assert!(
        disk[new.len()..].iter().all(|&b| b == 0xEE),
        "bytes after the image"
    );
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(&dev.0).expect("dev").rdev();
    let spool = format!(
        "/var/lib/anypatch/block-{}:{}.anypatch-download",
        rdev >> 8 & 0xfff,
        (rdev & 0xff) | (rdev >> 12 & 0xfff00)
    );
    assert!(!Path::new(&spool).exists(), "{spool} left behind");
}

/// A loop device over a file; detached on drop.
struct Loop(PathBuf);

impl Loop {
    fn attach(file: &Path) -> Self {
        let out = ok(Command::new("losetup").args(["--find", "--show"]).arg(file));
        Self(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// On a terminal the progress line shows the bytes fetched of the patch,
/// the network's rate, what was applied and the time left; in a pipe
/// nothing but the summary is printed.
#[test]
fn progress_shows_on_a_terminal_and_not_in_a_pipe() {
    let f = Fixture::new(8 << 20);
    let command = format!(
        "{} {} {} -o {} --server-cert {}",
        bin("applypatch").display(),
        f.old.display(),
        f.serve.url("p.anyp"),
        f.out().display(),
        f.serve.fingerprint
    );
    // `script` gives the command a terminal and copies what it printed.
    let typed = ok(Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env("ANYPATCH_TEST_APPLY_RATE", "8000000")
        .stdin(Stdio::null()));
    let screen = String::from_utf8_lossy(&typed.stdout);
    let line = screen
        .split('\r')
        .find(|l| l.contains("fetched") && l.contains("ETA") && !l.contains("ETA ?"))
        .unwrap_or_else(|| panic!("no progress line: {screen:?}"));
    for word in [" of ", "MiB/s", "applied", "ETA "] {
        assert!(line.contains(word), "{word} missing in {line:?}");
    }
    assert_eq!(b3(&f.out()), b3(&f.new));
    std::fs::remove_file(f.out()).expect("rm");

    let piped = ok(f.apply().env("ANYPATCH_TEST_APPLY_RATE", "8000000"));
    let said = stderr(&piped);
    assert!(!said.contains('\r') && !said.contains("ETA"), "{said:?}");
    assert!(said.contains("applypatch: fetched"), "{said}");
    assert!(said.contains("applypatch: wrote"), "{said}");
    assert!(piped.stdout.is_empty());
}
