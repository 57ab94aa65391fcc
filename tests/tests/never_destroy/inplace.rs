//! `applypatch --in-place`: state files that name their target, a lock,
//! patches from pipes, a wrong base on a half-patched target, and a target
//! changed between a kill and the resume (issue 13, defects 1, 4, 5, 8, 14).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anypatch_tests::{bin, corpus_small};

use crate::common::{stderr, Loop};

/// A pair of the small corpus with an in-place patch at the fast level
/// (small, separate segments: many journal windows to kill between).
struct Pair {
    name: &'static str,
    dir: tempfile::TempDir,
}

impl Pair {
    fn new(name: &'static str) -> Self {
        let dir = tempfile::tempdir_in(shm()).expect("tempdir");
        let c = corpus_small();
        let o = Command::new(bin("mkpatch"))
            .arg("--in-place")
            .arg(c.join(format!("{name}.old")))
            .arg(c.join(format!("{name}.new")))
            .arg("-o")
            .arg(dir.path().join("p.anyp"))
            .args(["-q", "--level", "fast"])
            .output()
            .expect("mkpatch runs");
        assert!(o.status.success(), "{}", stderr(&o));
        Pair { name, dir }
    }
    fn old(&self) -> Vec<u8> {
        fs::read(corpus_small().join(format!("{}.old", self.name))).expect("old")
    }
    fn new_image(&self) -> Vec<u8> {
        fs::read(corpus_small().join(format!("{}.new", self.name))).expect("new")
    }
    fn patch(&self) -> PathBuf {
        self.dir.path().join("p.anyp")
    }
    /// A copy of the old image in the pair's directory.
    fn disk(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::write(&p, self.old()).expect("write disk");
        p
    }
}

/// tmpfs where there is one: SIGKILL keeps the page cache, and fsyncs are free.
fn shm() -> &'static Path {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        Path::new("/tmp")
    }
}

/// `applypatch --in-place TARGET PATCH -q --journal-batch 4096 EXTRA`,
/// killed by itself at journal step `kill_at`, under `timeout`.
fn in_place(target: &Path, patch: &Path, extra: &[&str], kill_at: Option<u32>) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.arg("60")
        .arg(bin("applypatch"))
        .arg("--in-place")
        .arg(target)
        .arg(patch)
        .args(["-q", "--journal-batch", "4096"])
        .args(extra)
        .stdin(Stdio::null());
    if let Some(k) = kill_at {
        cmd.env("ANYPATCH_TEST_KILL_AT", k.to_string());
    }
    cmd.output().expect("applypatch runs")
}

/// Applies in place to a fresh copy of OLD at `disk`, killed at the first
/// journal step that leaves it neither old nor new; `state` is its state path.
fn kill_midway(p: &Pair, disk: &Path, state: &Path) {
    let (old, new) = (p.old(), p.new_image());
    let half = (1..200).any(|k| {
        fs::write(disk, &old).expect("fresh disk");
        let _ = fs::remove_file(state);
        let o = in_place(disk, &p.patch(), &[], Some(k));
        let now = fs::read(disk).expect("disk");
        killed(&o) && now != old && now != new
    });
    assert!(half, "no kill point left a half-patched target");
}

fn killed(o: &Output) -> bool {
    // `timeout` reports a child killed by a signal as 128 + the signal.
    o.status.code() == Some(128 + 9) || o.status.signal() == Some(9)
}

#[test]
fn the_state_of_a_block_device_names_the_device_not_the_basename_of_its_path() {
    let p = Pair::new("moved");
    let (a, b) = (
        Loop::attach(&p.disk("a.img")),
        Loop::attach(&p.disk("b.img")),
    );
    // Two devices both reached as `disk`, as /dev/vg0/root and /dev/vg1/root are.
    let root = p.dir.path();
    for (d, l) in [("a", &a), ("b", &b)] {
        fs::create_dir(root.join(d)).expect("mkdir");
        std::os::unix::fs::symlink(&l.dev, root.join(d).join("disk")).expect("symlink");
    }
    // Leftovers of an earlier run of the binaries before the fix.
    let _ = fs::remove_file("/var/lib/anypatch/disk.anypatch-state");
    let first = in_place(&root.join("a/disk"), &p.patch(), &[], Some(12));
    assert!(
        killed(&first),
        "a/disk was not killed mid-way: {}",
        stderr(&first)
    );
    let half_a = a.read();
    assert!(
        half_a != p.old() && half_a != p.new_image(),
        "a/disk is not half-patched"
    );

    // b/disk is another device: a fresh apply of its own, never a "resume" of a's.
    let other = in_place(&root.join("b/disk"), &p.patch(), &[], None);
    assert!(other.status.success(), "b/disk: {}", stderr(&other));
    assert!(
        b.read() == p.new_image(),
        "b/disk was not patched correctly"
    );
    assert!(a.read() == half_a, "patching b/disk changed a/disk");

    // a's state handed to b explicitly: refused, b untouched.
    let c = Loop::attach(&p.disk("c.img"));
    let state_a = a.default_state();
    assert!(state_a.exists(), "no state at {}", state_a.display());
    let o = in_place(
        &c.dev,
        &p.patch(),
        &["--state", &state_a.to_string_lossy()],
        None,
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("belongs to"), "{}", stderr(&o));
    assert!(
        c.read() == p.old(),
        "a state of another device was acted on"
    );

    // And a/disk still finishes.
    let last = in_place(&root.join("a/disk"), &p.patch(), &[], None);
    assert!(last.status.success(), "resume a/disk: {}", stderr(&last));
    assert!(a.read() == p.new_image(), "a/disk did not finish");
    assert!(!state_a.exists(), "state left after success");
}

#[test]
fn a_target_changed_between_the_kill_and_the_resume_is_refused_and_left_as_it_is() {
    let p = Pair::new("moved");
    let disk = p.disk("disk.img");
    let state = p.dir.path().join(".disk.img.anypatch-state");
    let new = p.new_image();
    // Where the target is final after the kill: the first differing byte
    // lies before it, the last after it.
    let first_diff = p
        .old()
        .iter()
        .zip(&new)
        .position(|(a, b)| a != b)
        .expect("differs");
    let last_diff = p
        .old()
        .iter()
        .zip(&new)
        .rposition(|(a, b)| a != b)
        .expect("differs");
    let cases: [(&str, Change<'_>); 3] = [
        (
            "restored from a backup",
            Box::new(|d: &Path| fs::write(d, p.old()).expect("restore")),
        ),
        (
            "a byte touched in the written part",
            Box::new(move |d: &Path| flip(d, first_diff as u64)),
        ),
        (
            "a byte touched in the part still to write",
            Box::new(move |d: &Path| flip(d, last_diff as u64)),
        ),
    ];
    for (what, change) in cases {
        fs::write(&disk, p.old()).expect("fresh disk");
        let _ = fs::remove_file(&state);
        assert!(
            killed(&in_place(&disk, &p.patch(), &[], Some(14))),
            "{what}: not killed"
        );
        assert!(state.exists());
        change(&disk);
        let before = fs::read(&disk).expect("disk");
        let o = in_place(&disk, &p.patch(), &[], None);
        assert_eq!(o.status.code(), Some(1), "{what}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("changed since"),
            "{what}: {}",
            stderr(&o)
        );
        assert!(
            fs::read(&disk).expect("disk") == before,
            "{what}: target was written"
        );
        assert!(state.exists(), "{what}: the state was dropped");
    }
    // Restored to the old image, the message says so; removing the state lets it run.
    fs::write(&disk, p.old()).expect("restore");
    let o = in_place(&disk, &p.patch(), &[], None);
    assert!(stderr(&o).contains("old image again"), "{}", stderr(&o));
    fs::remove_file(&state).expect("remove state");
    assert!(in_place(&disk, &p.patch(), &[], None).status.success());
    assert!(fs::read(&disk).expect("disk") == new);
}

/// A change made to the target between the kill and the resume.
type Change<'a> = Box<dyn Fn(&Path) + 'a>;

fn flip(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).expect("read");
    f.write_all_at(&[b[0] ^ 0x5a], at).expect("write");
}

#[test]
fn a_second_apply_on_the_same_target_is_refused_at_once_naming_the_first() {
    let p = Pair::new("sparse");
    let backing = p.disk("d.img");
    let l = Loop::attach(&backing);
    // The first run stops itself (SIGSTOP) at a journal step, holding its locks.
    let first = stopped_in_place(&l.dev, &p.patch(), 5);
    let pid = first.id();
    let half = l.read();
    let second = in_place(&l.dev, &p.patch(), &[], None);
    // Through another node of the same device, too.
    let node = l.node_in(p.dir.path(), "node");
    let third = in_place(&node, &p.patch(), &[], None);
    // And through the file behind the loop device: the same image.
    let fourth = in_place(&backing, &p.patch(), &[], None);
    let after = l.read();
    let _ = Command::new("kill")
        .arg("-CONT")
        .arg(pid.to_string())
        .status();
    let first = first.wait_with_output().expect("first run");
    assert_eq!(second.status.code(), Some(1), "second: {}", stderr(&second));
    assert!(
        stderr(&second).contains(&format!("pid {pid}")),
        "the second run does not name the first: {}",
        stderr(&second)
    );
    assert_eq!(
        third.status.code(),
        Some(1),
        "another node: {}",
        stderr(&third)
    );
    assert_eq!(
        fourth.status.code(),
        Some(1),
        "the file behind the device: {}",
        stderr(&fourth)
    );
    assert!(
        stderr(&fourth).contains(&format!("pid {pid}")),
        "the run on the file does not name the first: {}",
        stderr(&fourth)
    );
    assert!(after == half, "a refused run wrote to the device");
    assert!(first.status.success(), "first: {}", stderr(&first));
    assert!(
        l.read() == p.new_image(),
        "the first run did not finish correctly"
    );
}

#[test]
fn a_patch_from_a_pipe_is_refused_up_front_and_leaves_no_state() {
    let p = Pair::new("sparse");
    let disk = p.disk("disk.img");
    let state = p.dir.path().join(".disk.img.anypatch-state");
    let o = Command::new("timeout")
        .arg("60")
        .arg("bash")
        .arg("-c")
        .arg(format!(
            "exec {} --in-place {} <(cat {})",
            bin("applypatch").display(),
            disk.display(),
            p.patch().display()
        ))
        .stdin(Stdio::null())
        .output()
        .expect("bash");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("regular file"), "{}", stderr(&o));
    assert!(!state.exists(), "a state file was left");
    assert!(
        fs::read(&disk).expect("disk") == p.old(),
        "the target was written"
    );
    // Nothing blocks the next try with the patch as a file.
    assert!(in_place(&disk, &p.patch(), &[], None).status.success());
    assert!(fs::read(&disk).expect("disk") == p.new_image());
}

#[test]
fn a_wrong_base_on_a_half_patched_target_names_its_unfinished_state() {
    let p = Pair::new("moved");
    let disk = p.disk("disk.img");
    let state = p.dir.path().join(".disk.img.anypatch-state");
    assert!(killed(&in_place(&disk, &p.patch(), &[], Some(12))));
    assert!(state.exists());
    // The same file under another name (a hard link): its own default state
    // path is empty, and the base is wrong because the file is half-patched.
    let alias = p.dir.path().join("alias.img");
    fs::hard_link(&disk, &alias).expect("link");
    let before = fs::read(&disk).expect("disk");
    let o = in_place(&alias, &p.patch(), &[], None);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&state.display().to_string()),
        "the state is not named: {err}"
    );
    assert!(
        err.contains("--state") && err.contains("rm "),
        "no way to finish or discard it: {err}"
    );
    assert!(fs::read(&disk).expect("disk") == before);
    // `-o` and `--check` on the half-patched file say the same.
    for args in [vec!["--check"], vec!["-o", "elsewhere.img"]] {
        let o = Command::new(bin("applypatch"))
            .current_dir(p.dir.path())
            .args(&args)
            .arg(&alias)
            .arg(p.patch())
            .output()
            .expect("runs");
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(3), "{args:?}: {err}");
        assert!(
            err.contains(&state.display().to_string()) && err.contains("--state"),
            "{args:?} does not name the state: {err}"
        );
        assert_eq!(
            err.matches("records an unfinished").count(),
            1,
            "{args:?} names the state more than once: {err}"
        );
    }
    // What it says to do works.
    let o = in_place(
        &alias,
        &p.patch(),
        &["--state", &state.to_string_lossy()],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(fs::read(&disk).expect("disk") == p.new_image());
    let _ = fs::set_permissions(&disk, fs::Permissions::from_mode(0o644));
}

/// Unmounts on drop, so a failed assertion never leaves a mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Defect 5, another way to have two writers: the file behind a mounted
/// loop device. The file system on it would see its blocks change under
/// it, so `--in-place` on the file is refused, naming the mount, and the
/// file is left as it is.
#[test]
fn a_file_behind_a_mounted_loop_device_is_refused() {
    let dir = tempfile::tempdir_in(shm()).expect("tempdir");
    let img = dir.path().join("fs.img");
    let st = Command::new("truncate")
        .args(["-s", "16M"])
        .arg(&img)
        .status()
        .expect("truncate");
    assert!(st.success());
    let o = Command::new("mkfs.ext4")
        .arg("-q")
        .arg(&img)
        .output()
        .expect("mkfs.ext4 (e2fsprogs, installed by scripts/setup-deps)");
    assert!(o.status.success(), "mkfs.ext4: {}", stderr(&o));
    let mut new = fs::read(&img).expect("image");
    new[15 << 20..(15 << 20) + 3].copy_from_slice(b"xyz");
    let new_img = dir.path().join("new.img");
    fs::write(&new_img, &new).expect("new image");
    let patch = dir.path().join("p.anyp");
    let o = Command::new(bin("mkpatch"))
        .arg("--in-place")
        .arg(&img)
        .arg(&new_img)
        .arg("-o")
        .arg(&patch)
        .arg("-q")
        .output()
        .expect("mkpatch");
    assert!(o.status.success(), "{}", stderr(&o));
    let l = Loop::attach(&img);
    let at = dir.path().join("mnt");
    fs::create_dir(&at).expect("mount point");
    let o = Command::new("mount")
        .arg(&l.dev)
        .arg(&at)
        .output()
        .expect("mount");
    assert!(o.status.success(), "mount: {}", stderr(&o));
    let mounted = Mounted(at.clone());
    let before = fs::read(&img).expect("image");
    let o = in_place(&img, &patch, &[], None);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("in use") && err.contains(&at.display().to_string()),
        "the refusal does not name the mount: {err}"
    );
    assert!(fs::read(&img).expect("image") == before, "the file changed");
    drop(mounted);
}

#[test]
fn a_killed_apply_that_journals_nothing_is_rerun_only_if_the_patch_still_makes_the_new_image() {
    // sparse is all literal segments: every write is direct, so its state
    // file stays empty, and a kill leaves the old image with some of the
    // new bytes written. The next run checks that the patch, run over the
    // target as it is, makes the new image, and only then writes.
    let p = Pair::new("sparse");
    let disk = p.dir.path().join("disk.img");
    let state = p.dir.path().join(".disk.img.anypatch-state");
    let (old, new) = (p.old(), p.new_image());
    kill_midway(&p, &disk, &state);
    assert_eq!(
        fs::metadata(&state)
            .expect("the state file marks the run")
            .len(),
        0,
        "an apply that journals nothing wrote state"
    );
    let half_done = fs::read(&disk).expect("disk");

    // A byte in the middle of the longest unchanged stretch: no write of
    // the patch covers it, so changing it changes the result.
    let (mut best, mut run_start, mut best_at) = (0, 0, 0);
    for i in 0..=old.len() {
        if i == old.len() || old[i] != new[i] {
            if i - run_start > best {
                (best, best_at) = (i - run_start, run_start + (i - run_start) / 2);
            }
            run_start = i + 1;
        }
    }
    flip(&disk, best_at as u64);
    let touched = fs::read(&disk).expect("disk");
    let o = in_place(&disk, &p.patch(), &[], None);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("does not make the new image") && stderr(&o).contains("interrupted"),
        "{}",
        stderr(&o)
    );
    assert!(
        fs::read(&disk).expect("disk") == touched,
        "target was written"
    );
    assert!(
        state.exists(),
        "the mark of the interrupted apply was dropped"
    );

    // --check names the mark and says how to finish or discard it.
    let o = Command::new(bin("applypatch"))
        .arg("--check")
        .arg(&disk)
        .arg(p.patch())
        .output()
        .expect("runs");
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&state.display().to_string()) && stderr(&o).contains("rm "),
        "{}",
        stderr(&o)
    );

    // As the kill left it, the rerun finishes it, exactly.
    fs::write(&disk, &half_done).expect("undo the touch");
    let o = in_place(&disk, &p.patch(), &[], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(fs::read(&disk).expect("disk") == new, "wrong result");
    assert!(!state.exists(), "state left after success");

    // Restored from a backup after such a kill: an ordinary fresh apply.
    fs::write(&disk, &half_done).expect("half done again");
    fs::write(&state, b"").expect("mark");
    fs::write(&disk, &old).expect("restore");
    let o = in_place(&disk, &p.patch(), &[], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(fs::read(&disk).expect("disk") == new, "wrong result");
    assert!(!state.exists(), "state left after success");
}

#[test]
fn a_run_killed_on_an_already_patched_target_leaves_nothing_to_redo() {
    // The killed run leaves its empty state file; the next run finds the
    // new image there and says so, instead of running the patch over it.
    let p = Pair::new("moved");
    let disk = p.disk("disk.img");
    let state = p.dir.path().join(".disk.img.anypatch-state");
    assert!(in_place(&disk, &p.patch(), &[], None).status.success());
    assert!(killed(&in_place(&disk, &p.patch(), &[], Some(1))));
    assert!(state.exists(), "the killed run left no mark");
    let o = in_place(&disk, &p.patch(), &[], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(fs::read(&disk).expect("disk") == p.new_image());
    assert!(!state.exists(), "the mark was left");
}

#[test]
fn a_state_path_that_is_not_a_state_file_is_never_written_or_removed() {
    // A raw disk image's first bytes are often zero; a device node, a
    // FIFO or a symlink is not a state file either. Each is refused before
    // anything is written, and left exactly as it was.
    let p = Pair::new("edits");
    let dir = p.dir.path();
    let disk = p.disk("disk.img");
    let image = dir.join("backup.img");
    let mut zero_head = vec![0u8; 4096];
    zero_head.extend_from_slice(b"the data of another disk image");
    fs::write(&image, &zero_head).expect("write");
    let node = dir.join("null");
    assert!(Command::new("mknod")
        .arg(&node)
        .args(["c", "1", "3"])
        .status()
        .expect("mknod runs (tests run as root)")
        .success());
    let fifo = dir.join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo")
        .success());
    let link = dir.join("link");
    std::os::unix::fs::symlink(&image, &link).expect("symlink");
    for (what, state) in [
        ("a file with other data", &image),
        ("a character device", &node),
        ("a FIFO", &fifo),
        ("a symlink", &link),
        ("the target itself", &disk),
        ("the patch", &p.patch()),
    ] {
        let before = fs::read(&disk).expect("disk");
        let o = in_place(
            &disk,
            &p.patch(),
            &["--state", &state.to_string_lossy()],
            None,
        );
        assert_eq!(o.status.code(), Some(1), "{what}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("not an anypatch state file"),
            "{what}: {}",
            stderr(&o)
        );
        assert!(
            fs::read(&disk).expect("disk") == before,
            "{what}: target written"
        );
        assert!(
            fs::symlink_metadata(state).is_ok(),
            "{what}: {} was removed",
            state.display()
        );
    }
    assert!(
        fs::read(&image).expect("image") == zero_head,
        "the image behind the link changed"
    );
    // And at the default path: a symlink there is refused too.
    let default = dir.join(".disk.img.anypatch-state");
    std::os::unix::fs::symlink(&image, &default).expect("symlink");
    let o = in_place(&disk, &p.patch(), &[], None);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(fs::read(&image).expect("image") == zero_head);
    assert!(
        fs::symlink_metadata(&default).is_ok(),
        "the link was removed"
    );
}

#[test]
fn a_journal_free_apply_is_finished_even_when_its_mark_is_gone() {
    // The mark (an empty state file) can be deleted, or taken by a run on
    // another target through --state: the patch run over the target as it
    // is still proves that it makes the new image.
    let p = Pair::new("sparse");
    let a = p.disk("a.img");
    let b = p.disk("b.img");
    let mark = p.dir.path().join(".a.img.anypatch-state");
    let (old, new) = (p.old(), p.new_image());
    kill_midway(&p, &a, &mark);
    // b.img takes a's mark and finishes its own apply.
    let o = in_place(&b, &p.patch(), &["--state", &mark.to_string_lossy()], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!mark.exists());
    // a.img, with no mark left, is still finished by the same command.
    let o = in_place(&a, &p.patch(), &[], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(fs::read(&a).expect("a") == new, "wrong result");
    // A target that is simply another file is still a plain wrong base.
    let other = p.dir.path().join("other.img");
    let mut junk = old.clone();
    junk[0] ^= 1;
    junk[old.len() / 2] ^= 1;
    fs::write(&other, &junk).expect("write");
    let o = in_place(&other, &p.patch(), &[], None);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(fs::read(&other).expect("other") == junk);
    assert!(!p.dir.path().join(".other.img.anypatch-state").exists());
}

#[test]
fn a_target_that_got_a_new_inode_resumes_when_its_content_is_what_the_kill_left() {
    // As after a loop device is attached under another number, or the file
    // is copied back: the state names another device and inode, but the
    // same patch, and the content proves it is the same half-patched image.
    let p = Pair::new("moved");
    let disk = p.disk("disk.img");
    let state = p.dir.path().join(".disk.img.anypatch-state");
    assert!(killed(&in_place(&disk, &p.patch(), &[], Some(14))));
    assert!(
        fs::metadata(&state).expect("state").len() > 0,
        "no journaled state"
    );
    let copy = p.dir.path().join("copy.img");
    fs::copy(&disk, &copy).expect("copy");
    fs::rename(&copy, &disk).expect("rename"); // a new inode at the same path
    let o = in_place(&disk, &p.patch(), &[], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        fs::read(&disk).expect("disk") == p.new_image(),
        "wrong result"
    );
    assert!(!state.exists());
    // With the content changed as well, it is refused and left as it is.
    let disk2 = p.disk("disk2.img");
    let state2 = p.dir.path().join(".disk2.img.anypatch-state");
    assert!(killed(&in_place(&disk2, &p.patch(), &[], Some(14))));
    let copy = p.dir.path().join("copy2.img");
    fs::copy(&disk2, &copy).expect("copy");
    flip(&copy, p.old().len() as u64 - 1);
    fs::rename(&copy, &disk2).expect("rename");
    let before = fs::read(&disk2).expect("disk2");
    let o = in_place(&disk2, &p.patch(), &[], None);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("belongs to"), "{}", stderr(&o));
    assert!(fs::read(&disk2).expect("disk2") == before);
    assert!(state2.exists());
}

/// Starts `applypatch --in-place TARGET PATCH` stopped (SIGSTOP) at journal
/// step `at`, holding its locks; returns it once it is stopped.
fn stopped_in_place(target: &Path, patch: &Path, at: u32) -> std::process::Child {
    let mut child = Command::new(bin("applypatch"))
        .arg("--in-place")
        .arg(target)
        .arg(patch)
        .args(["-q", "--journal-batch", "4096"])
        .env("ANYPATCH_TEST_STOP_AT", at.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('T'))
        {
            return child;
        }
        let finished = child.try_wait().expect("try_wait").is_some();
        assert!(
            !finished && Instant::now() < deadline,
            "the run ended before it could be paused mid-apply"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn output_onto_a_target_being_rewritten_in_place_is_refused_and_a_replaced_target_is_not_success() {
    let p = Pair::new("sparse");
    let disk = p.disk("disk.img");
    let old = corpus_small().join("sparse.old");
    // -o onto the file an in-place run holds: refused, the run finishes.
    let first = stopped_in_place(&disk, &p.patch(), 3);
    let o = Command::new(bin("applypatch"))
        .arg(&old)
        .arg(p.patch())
        .arg("-o")
        .arg(&disk)
        .output()
        .expect("runs");
    let _ = Command::new("kill")
        .arg("-CONT")
        .arg(first.id().to_string())
        .status();
    let first = first.wait_with_output().expect("first");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("locked by another run"),
        "{}",
        stderr(&o)
    );
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(fs::read(&disk).expect("disk") == p.new_image());

    // A file renamed over the target while the run is stopped: the run
    // does not report success for a file that is no longer at the path.
    let disk = p.disk("disk2.img");
    let run = stopped_in_place(&disk, &p.patch(), 3);
    let other = p.dir.path().join("other.img");
    fs::write(&other, b"something else").expect("write");
    fs::rename(&other, &disk).expect("rename over the target");
    let _ = Command::new("kill")
        .arg("-CONT")
        .arg(run.id().to_string())
        .status();
    let run = run.wait_with_output().expect("run");
    assert_eq!(run.status.code(), Some(1), "{}", stderr(&run));
    assert!(stderr(&run).contains("was replaced"), "{}", stderr(&run));
    assert!(fs::read(&disk).expect("disk") == b"something else");
}

#[test]
fn a_journaled_state_with_the_target_already_new_or_cut_short_is_told_apart() {
    let p = Pair::new("moved");
    let disk = p.disk("disk.img");
    let state = p.dir.path().join(".disk.img.anypatch-state");
    // Already the new image (the kill came late, or it was finished by
    // other means): done, and the state goes.
    assert!(killed(&in_place(&disk, &p.patch(), &[], Some(14))));
    assert!(fs::metadata(&state).expect("state").len() > 0);
    fs::write(&disk, p.new_image()).expect("new");
    let o = in_place(&disk, &p.patch(), &[], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).is_empty() || !stderr(&o).contains("neither"),
        "{}",
        stderr(&o)
    );
    assert!(!state.exists(), "the state was left");
    // Cut short: named as a changed target, left as it is.
    fs::write(&disk, p.old()).expect("old");
    assert!(killed(&in_place(&disk, &p.patch(), &[], Some(14))));
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .expect("open");
    f.set_len(p.old().len() as u64 / 2).expect("truncate");
    drop(f);
    let before = fs::read(&disk).expect("disk");
    let o = in_place(&disk, &p.patch(), &[], None);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("changed since"), "{}", stderr(&o));
    assert!(fs::read(&disk).expect("disk") == before);
    assert!(state.exists());
}

#[test]
fn a_copy_of_a_half_patched_image_finishes_on_a_copy_of_the_state_and_the_original_still_can() {
    let p = Pair::new("moved");
    let a = p.disk("a.img");
    let state = p.dir.path().join(".a.img.anypatch-state");
    assert!(killed(&in_place(&a, &p.patch(), &[], Some(14))));
    assert!(fs::metadata(&state).expect("state").len() > 0);
    let copy = p.dir.path().join("a.try");
    fs::copy(&a, &copy).expect("copy");
    let o = in_place(
        &copy,
        &p.patch(),
        &["--state", &state.to_string_lossy()],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(fs::read(&copy).expect("copy") == p.new_image());
    assert!(state.exists(), "the original's state was taken");
    let o = in_place(&a, &p.patch(), &[], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(fs::read(&a).expect("a") == p.new_image());
    assert!(!state.exists());
}

#[test]
fn a_target_longer_than_both_images_is_a_wrong_base_not_redone() {
    // A raw image with a footer (a fixed VHD): never cut to the new length.
    let p = Pair::new("sparse");
    let t = p.dir.path().join("footer.img");
    let mut bytes = p.old();
    bytes.extend_from_slice(&[0x5a; 512]);
    fs::write(&t, &bytes).expect("write");
    let o = in_place(&t, &p.patch(), &[], None);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(fs::read(&t).expect("t") == bytes, "the target was changed");
}

#[test]
fn output_onto_a_loop_device_over_a_target_being_rewritten_is_refused() {
    let p = Pair::new("sparse");
    let img = p.disk("img");
    let first = stopped_in_place(&img, &p.patch(), 3);
    let l = Loop::attach(&img);
    let o = Command::new(bin("applypatch"))
        .arg(corpus_small().join("sparse.old"))
        .arg(p.patch())
        .arg("-o")
        .arg(&l.dev)
        .output()
        .expect("runs");
    let _ = Command::new("kill")
        .arg("-CONT")
        .arg(first.id().to_string())
        .status();
    let first = first.wait_with_output().expect("first");
    drop(l);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("locked by another run"),
        "{}",
        stderr(&o)
    );
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(fs::read(&img).expect("img") == p.new_image());
}

#[test]
fn a_loop_number_reused_for_another_file_never_takes_the_first_files_state() {
    // A run on /dev/loopN over a.img is killed; loopN is then attached to
    // b.img (an untouched old image), as after a reboot. b's run must not
    // resume a's apply (which would leave a.img unfinishable for good).
    let p = Pair::new("moved");
    let a = p.disk("a.img");
    let b = p.disk("b.img");
    let first = Loop::attach(&a);
    let dev = first.dev.clone();
    let state = first.default_state();
    assert!(killed(&in_place(&dev, &p.patch(), &[], Some(14))));
    assert!(fs::metadata(&state).expect("state").len() > 0);
    let half_a = fs::read(&a).expect("a");
    // Detach a's device and put b.img on the same number.
    assert!(Command::new("losetup")
        .arg("-d")
        .arg(&dev)
        .status()
        .expect("losetup")
        .success());
    std::mem::forget(first); // its Drop would remove the state under test
    let attached = Command::new("losetup")
        .arg(&dev)
        .arg(&b)
        .status()
        .expect("losetup");
    assert!(
        attached.success(),
        "cannot attach b.img to {}",
        dev.display()
    );
    // Detached by hand below: Loop's Drop would remove the state under test.
    let o = in_place(&dev, &p.patch(), &[], None);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("belongs to"), "{}", stderr(&o));
    assert!(state.exists(), "a's state was taken");
    assert!(fs::read(&b).expect("b") == p.old(), "b.img was written");
    // a.img, attached again, finishes.
    let _ = Command::new("losetup").arg("-d").arg(&dev).status();
    assert!(fs::read(&a).expect("a") == half_a);
    let again = Loop::attach(&a);
    let o = in_place(
        &again.dev,
        &p.patch(),
        &["--state", &state.to_string_lossy()],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(again.read() == p.new_image(), "a.img did not finish");
    let _ = fs::remove_file(&state);
}
