//! `mkpatch`: device nodes and inputs as `-o`, FIFOs and directories as
//! inputs, signals during `-o`, key file names, and a reader that closes the
//! pipe early (issue 13, defects 2, 3, 6, 9, 11 and 12); then what a hostile
//! user found after those fixes: symlinks and /dev/stdout as `-o`, a stderr
//! or stdout that cannot be written, modes and owners, inputs that change
//! while read, SIGKILL, and small CLI traps (findings 1, 4, 5, 6, 9, 12, 15).

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anypatch_tests::{bin, corpus_small};

use crate::common::{run_ok, stderr, Loop, Reaped};

fn mkpatch(args: &[&Path]) -> Output {
    Command::new(bin("mkpatch"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run mkpatch")
}

fn pair(name: &str) -> (PathBuf, PathBuf) {
    let dir = corpus_small();
    (
        dir.join(format!("{name}.old")),
        dir.join(format!("{name}.new")),
    )
}

fn mkfifo(path: &Path) {
    run_ok(Command::new("mkfifo").arg(path));
}

/// A character device like /dev/null (1:3), made where the test can lose it.
fn mknod_null(path: &Path) {
    run_ok(Command::new("mknod").arg(path).args(["c", "1", "3"]));
}

/// Waits until the child has a file open whose path (as /proc shows it)
/// `wanted` accepts: an input it reads, or the patch it writes, which an
/// unnamed file shows as `DIR/#INODE (deleted)`.
fn wait_for_open(child: &mut Reaped, wanted: impl Fn(&Path) -> bool) {
    let fds = PathBuf::from(format!("/proc/{}/fd", child.0.id()));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let open = fs::read_dir(&fds)
            .into_iter()
            .flatten()
            .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
            .any(|target| wanted(&target));
        if open {
            return;
        }
        assert!(
            child.0.try_wait().expect("try_wait").is_none(),
            "mkpatch ended before it opened the file"
        );
        assert!(Instant::now() < deadline, "mkpatch never opened the file");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A character device like /dev/full (1:7): every write fails with ENOSPC.
fn mknod_full(path: &Path) -> fs::File {
    run_ok(Command::new("mknod").arg(path).args(["c", "1", "7"]));
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open the full device")
}

fn symlink(target: impl AsRef<Path>, link: &Path) {
    std::os::unix::fs::symlink(target, link).expect("symlink");
}

/// Defect 2: `-o` onto a block device, a FIFO or a character device must
/// never rename a regular file over the node. A block device is refused (a
/// patch is not an image) and left as it was; a FIFO and a character device
/// are written to directly, as stdout is.
#[test]
fn output_onto_a_device_node_never_replaces_the_node() {
    let (old, new) = pair("sparse");
    let dir = tempfile::tempdir().expect("tempdir");

    // A block device node of a loop device. The node lives in the test's
    // directory, so a binary that renames over it cannot damage /dev.
    let backing = dir.path().join("disk.img");
    let content: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
    fs::write(&backing, &content).expect("write backing file");
    let lo = Loop::attach(&backing);
    let node = dir.path().join("disk");
    let (major, minor) = lo
        .numbers()
        .split_once(':')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .expect("MAJOR:MINOR");
    run_ok(Command::new("mknod").arg(&node).args(["b", &major, &minor]));
    let o = mkpatch(&[&old, &new, Path::new("-o"), &node]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "block device as -o: {}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("block device"), "{}", stderr(&o));
    let kind = fs::symlink_metadata(&node).expect("node").file_type();
    assert!(kind.is_block_device(), "the block device node was replaced");
    let mut on_disk = Vec::new();
    fs::File::open(&node)
        .and_then(|mut f| f.read_to_end(&mut on_disk))
        .expect("read the device");
    assert!(on_disk == content, "the device's bytes changed");

    // A character device (like /dev/null) takes the patch as it comes.
    let null = dir.path().join("null");
    mknod_null(&null);
    let o = mkpatch(&[&old, &new, Path::new("-o"), &null]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "char device as -o: {}",
        stderr(&o)
    );
    let kind = fs::symlink_metadata(&null).expect("node").file_type();
    assert!(kind.is_char_device(), "the char device node was replaced");

    // A FIFO streams the whole patch to its reader.
    let file = dir.path().join("p.file");
    let o = mkpatch(&[&old, &new, Path::new("-o"), &file]);
    assert!(o.status.success(), "{}", stderr(&o));
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    // No `timeout` around cat: the guard must kill cat itself, which waits
    // forever on a FIFO that a buggy mkpatch renamed a file over.
    let mut reader = Reaped(
        Command::new("cat")
            .arg(&fifo)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn cat"),
    );
    let mut stdout = reader.0.stdout.take().expect("piped");
    let o = Command::new("timeout")
        .arg("60")
        .arg(bin("mkpatch"))
        .arg(&old)
        .arg(&new)
        .arg("-o")
        .arg(&fifo)
        .output()
        .expect("run mkpatch");
    assert_eq!(o.status.code(), Some(0), "FIFO as -o: {}", stderr(&o));
    let kind = fs::symlink_metadata(&fifo).expect("node").file_type();
    assert!(kind.is_fifo(), "the FIFO was replaced by a file");
    let mut streamed = Vec::new();
    stdout.read_to_end(&mut streamed).expect("read from cat");
    assert!(
        streamed == fs::read(&file).expect("read"),
        "the FIFO's reader got another patch than -o FILE"
    );
}

/// Defect 3: an output that is one of the inputs (OLD, NEW or the --sign
/// key; also through a symlink or a hard link, or stdout opened on one) is
/// refused before any work, and the input is left as it was.
#[test]
fn output_that_is_an_input_is_refused() {
    let (src_old, src_new) = pair("sparse");
    let dir = tempfile::tempdir().expect("tempdir");
    let at = |name: &str| dir.path().join(name);
    // Copies: a binary with the defect overwrites what it is given.
    fs::copy(&src_old, at("a")).expect("copy");
    fs::copy(&src_new, at("b")).expect("copy");
    std::os::unix::fs::symlink("a", at("link-to-a")).expect("symlink");
    fs::hard_link(at("b"), at("hard-link-to-b")).expect("hard link");
    let o = mkpatch(&[Path::new("keygen"), Path::new("-o"), &at("release.key")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let key_text = fs::read(at("release.key")).expect("key");
    let (old_hash, new_hash) = (
        blake3::hash(&fs::read(&src_old).expect("read")),
        blake3::hash(&fs::read(&src_new).expect("read")),
    );

    let (a, b) = (at("a"), at("b"));
    for out in ["a", "b", "link-to-a", "hard-link-to-b"] {
        let o = mkpatch(&[&a, &b, Path::new("-o"), &at(out)]);
        assert_eq!(o.status.code(), Some(1), "-o {out}: {}", stderr(&o));
        assert!(stderr(&o).contains("same file"), "-o {out}: {}", stderr(&o));
        assert_eq!(
            blake3::hash(&fs::read(&a).expect("read")),
            old_hash,
            "-o {out}"
        );
        assert_eq!(
            blake3::hash(&fs::read(&b).expect("read")),
            new_hash,
            "-o {out}"
        );
    }
    // `mkpatch a b >> a`: stdout opened on an input.
    let append = fs::OpenOptions::new()
        .append(true)
        .open(&a)
        .expect("open a");
    let o = Command::new(bin("mkpatch"))
        .arg(&a)
        .arg(&b)
        .stdin(Stdio::null())
        .stdout(append)
        .stderr(Stdio::piped())
        .output()
        .expect("run mkpatch");
    assert_eq!(o.status.code(), Some(1), ">> a: {}", stderr(&o));
    assert!(stderr(&o).contains("same file"), ">> a: {}", stderr(&o));
    assert_eq!(blake3::hash(&fs::read(&a).expect("read")), old_hash, ">> a");

    let key = at("release.key");
    let o = mkpatch(&[Path::new("--sign"), &key, &a, &b, Path::new("-o"), &key]);
    assert_eq!(o.status.code(), Some(1), "-o the key: {}", stderr(&o));
    assert!(stderr(&o).contains("same file"), "{}", stderr(&o));
    assert_eq!(
        fs::read(&key).expect("key"),
        key_text,
        "the key was overwritten"
    );
}

/// Defect 6: SIGINT, SIGTERM and SIGHUP during `mkpatch -o` leave no
/// temporary or spool file, and mkpatch exits with 128 + the signal number.
#[test]
fn signals_during_output_leave_no_temporary_file() {
    // The largest pair at the slowest settings, so the run is still busy
    // when the signal comes.
    let (old, new) = pair("ext4");
    for (signal, number) in [("INT", 2), ("TERM", 15), ("HUP", 1)] {
        let dir = tempfile::tempdir().expect("tempdir");
        // `env --default-signal`: a shell's background job starts with SIGINT
        // ignored, and mkpatch rightly keeps an ignored signal ignored.
        let child = Command::new("env")
            .arg("--default-signal=INT,TERM,HUP")
            .arg(bin("mkpatch"))
            .args(["--level", "best", "-j", "1"])
            .arg(&old)
            .arg(&new)
            .arg("-o")
            .arg(dir.path().join("p"))
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mkpatch");
        let mut child = Reaped(child);
        // The patch being written is open in the directory, named or not.
        wait_for_open(&mut child, |target| target.starts_with(dir.path()));
        assert!(
            child.0.try_wait().expect("try_wait").is_none(),
            "mkpatch finished before SIG{signal}: give this test a larger input"
        );
        run_ok(
            Command::new("kill")
                .args(["-s", signal])
                .arg(child.0.id().to_string()),
        );
        let status = child.0.wait().expect("wait");
        assert_eq!(status.code(), Some(128 + number), "SIG{signal}: {status}");
        let mut said = String::new();
        if let Some(mut err) = child.0.stderr.take() {
            err.read_to_string(&mut said).expect("stderr");
        }
        assert!(
            said.contains(&format!("interrupted by SIG{signal}; no patch was written")),
            "SIG{signal} ended mkpatch without saying so: {said:?}"
        );
        let left: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(left.is_empty(), "SIG{signal} left {left:?}");
    }
}

/// Defect 6: `-o` into an existing directory, or into a directory that does
/// not exist, fails before any work: before the inputs are even opened.
#[test]
fn output_into_a_directory_fails_before_any_work() {
    let (old, new) = pair("sparse");
    let dir = tempfile::tempdir().expect("tempdir");
    let o = mkpatch(&[&old, &new, Path::new("-o"), dir.path()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let shown = format!("-o {} is a directory", dir.path().display());
    assert!(stderr(&o).contains(&shown), "{}", stderr(&o));
    assert!(
        fs::read_dir(dir.path()).expect("list").next().is_none(),
        "left a file"
    );

    // Checked before OLD is opened: the missing OLD is not what it reports.
    let missing_old = dir.path().join("missing.old");
    let o = mkpatch(&[&missing_old, &new, Path::new("-o"), dir.path()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains(&shown), "{}", stderr(&o));

    let nowhere = dir.path().join("no-such-dir").join("p");
    let o = mkpatch(&[&missing_old, &new, Path::new("-o"), &nowhere]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
}

/// Defect 9: a FIFO as OLD or NEW is refused at once instead of hanging; a
/// directory or a character device is refused with a message that names
/// what it is. Nothing is written.
#[test]
fn fifo_directory_or_char_device_as_input_is_refused() {
    let (old, new) = pair("sparse");
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let null = dir.path().join("null");
    mknod_null(&null);
    let out = dir.path().join("p");
    let cases: [(&Path, &Path, &str); 4] = [
        (&fifo, &new, "FIFO"),
        (&old, &fifo, "FIFO"),
        (dir.path(), &new, "is a directory"),
        (&old, &null, "character device"),
    ];
    for (a, b, says) in cases {
        // A FIFO with no writer blocks the open forever: `timeout` turns a
        // hang into exit 124.
        let o = Command::new("timeout")
            .arg("20")
            .arg(bin("mkpatch"))
            .arg(a)
            .arg(b)
            .arg("-o")
            .arg(&out)
            .stdin(Stdio::null())
            .output()
            .expect("run mkpatch");
        let what = format!("mkpatch {} {}", a.display(), b.display());
        assert_eq!(o.status.code(), Some(1), "{what}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{what}: {}", stderr(&o));
        assert!(!out.exists(), "{what} wrote a patch");
    }
}

/// Defect 11: `keygen -o NAME.pub` would put the secret key where the public
/// one belongs: refused, nothing written. `--sign` with a key file others
/// can read warns (and says how to fix it) but still signs.
#[test]
fn keygen_refuses_a_pub_name_and_sign_warns_on_a_readable_key() {
    let (old, new) = pair("sparse");
    let dir = tempfile::tempdir().expect("tempdir");
    let at = |name: &str| dir.path().join(name);
    let o = mkpatch(&[Path::new("keygen"), Path::new("-o"), &at("release.pub")]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains(".pub"), "{}", stderr(&o));
    assert!(
        fs::read_dir(dir.path()).expect("list").next().is_none(),
        "wrote a key"
    );

    let key = at("release.key");
    let o = mkpatch(&[Path::new("keygen"), Path::new("-o"), &key]);
    assert!(o.status.success(), "{}", stderr(&o));
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod");
    let sign = |out: &str| {
        mkpatch(&[
            Path::new("--sign"),
            &key,
            &old,
            &new,
            Path::new("-o"),
            &at(out),
        ])
    };
    let o = sign("p1");
    assert!(
        o.status.success(),
        "a readable key still signs: {}",
        stderr(&o)
    );
    let fix = format!("chmod 600 {}", key.display());
    assert!(
        stderr(&o).contains("warning") && stderr(&o).contains(&fix),
        "{}",
        stderr(&o)
    );

    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod");
    let o = sign("p2");
    assert!(o.status.success(), "{}", stderr(&o));
    // The summary line is printed (issue 20); no warning is.
    assert!(
        !stderr(&o).contains("warning"),
        "a private key needs no warning: {}",
        stderr(&o)
    );
}

/// Defect 12: a reader that closes the pipe early (`| true`, `| head -c 100`)
/// made that choice: mkpatch exits 0 without a message, as --help says, and
/// --help says the patch the reader got is incomplete.
#[test]
fn a_reader_that_closes_the_pipe_early_ends_mkpatch_quietly() {
    // A patch far larger than a pipe's buffer, so writes meet the closed end.
    let (old, new) = pair("ext4");
    let whole = mkpatch(&[&old, &new, Path::new("-o"), Path::new("-")]);
    assert!(whole.status.success(), "{}", stderr(&whole));
    assert!(
        whole.stdout.len() > 1 << 18,
        "patch of {} bytes",
        whole.stdout.len()
    );
    for reader in [&["true"][..], &["head", "-c", "100"][..]] {
        let mut producer = Command::new(bin("mkpatch"))
            .arg(&old)
            .arg(&new)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mkpatch");
        let pipe = producer.stdout.take().expect("piped");
        let got = Command::new(reader[0])
            .args(&reader[1..])
            .stdin(pipe)
            .output()
            .expect("run the reader");
        let o = producer.wait_with_output().expect("wait");
        let what = reader.join(" ");
        assert_eq!(o.status.code(), Some(0), "mkpatch | {what}: {}", stderr(&o));
        assert!(o.stderr.is_empty(), "mkpatch | {what}: {}", stderr(&o));
        assert!(whole.stdout.starts_with(&got.stdout), "mkpatch | {what}");
    }
    let help = Command::new(bin("mkpatch"))
        .arg("--help")
        .output()
        .expect("help");
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("incomplete patch"),
        "--help says nothing of the incomplete patch"
    );
}

/// Finding 1: `-o` through a symlink never replaces the link. A link to
/// /proc/self/fd/1 (what /dev/stdout and /dev/fd/1 are) is mkpatch's own
/// stdout, written as it is: `> file` gets the patch and `>> file` appends
/// to it. A link to a regular file replaces that file and stays a link. A
/// link to nothing and a loop of links are refused, and nothing is made.
/// (Links live in the test's directory: /dev is never touched.)
#[test]
fn output_through_a_symlink_never_replaces_the_link() {
    let (old, new) = pair("sparse");
    let dir = tempfile::tempdir().expect("tempdir");
    let at = |name: &str| dir.path().join(name);
    let o = mkpatch(&[&old, &new, Path::new("-o"), &at("reference")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let patch = fs::read(at("reference")).expect("read");

    symlink("/proc/self/fd/1", &at("stdout"));
    symlink("stdout", &at("stdout-again"));
    symlink("/proc/self/fd", &at("fd"));
    let is_link_to = |name: &str, target: &str| {
        fs::symlink_metadata(at(name)).is_ok_and(|m| m.file_type().is_symlink())
            && fs::read_link(at(name)).is_ok_and(|t| t == Path::new(target))
    };
    for (out, appended) in [
        ("stdout", false),
        ("stdout-again", false),
        ("fd/1", false),
        ("stdout", true),
    ] {
        let captured = at("captured");
        fs::write(&captured, b"important\n").expect("write");
        let file = if appended {
            fs::OpenOptions::new().append(true).open(&captured)
        } else {
            fs::File::create(&captured)
        }
        .expect("open the capture file");
        let o = Command::new(bin("mkpatch"))
            .arg(&old)
            .arg(&new)
            .arg("-o")
            .arg(at(out))
            .stdin(Stdio::null())
            .stdout(file)
            .output()
            .expect("run mkpatch");
        let what = format!("-o {out} {}", if appended { ">>" } else { ">" });
        assert_eq!(o.status.code(), Some(0), "{what}: {}", stderr(&o));
        let mut expected = if appended {
            b"important\n".to_vec()
        } else {
            Vec::new()
        };
        expected.extend_from_slice(&patch);
        assert!(
            fs::read(&captured).expect("read") == expected,
            "{what}: stdout did not get the patch"
        );
        assert!(
            is_link_to("stdout", "/proc/self/fd/1"),
            "{what}: the link was replaced"
        );
        assert!(
            is_link_to("stdout-again", "stdout"),
            "{what}: the link was replaced"
        );
        assert!(
            is_link_to("fd", "/proc/self/fd"),
            "{what}: the link was replaced"
        );
    }

    // A link to a regular file: the file is replaced, the link stays.
    fs::write(at("target"), b"x").expect("write");
    symlink("target", &at("link"));
    let o = mkpatch(&[&old, &new, Path::new("-o"), &at("link")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        is_link_to("link", "target"),
        "the link to a file was replaced"
    );
    assert!(
        fs::read(at("target")).expect("read") == patch,
        "the link's file did not get the patch"
    );

    // A link to nothing, and two links to each other: refused, nothing made.
    symlink("nothing", &at("dangling"));
    symlink("loop-b", &at("loop-a"));
    symlink("loop-a", &at("loop-b"));
    for (out, says) in [("dangling", "points to nothing"), ("loop-a", "loop")] {
        let o = mkpatch(&[&old, &new, Path::new("-o"), &at(out)]);
        assert_eq!(o.status.code(), Some(1), "-o {out}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "-o {out}: {}", stderr(&o));
    }
    assert!(is_link_to("dangling", "nothing") && !at("nothing").exists());
    assert!(is_link_to("loop-a", "loop-b") && is_link_to("loop-b", "loop-a"));
}

/// Finding 4: a stderr that cannot be written (a full device, a reader that
/// went away) never makes mkpatch panic (exit 101): a refused run still
/// exits 1, keygen still writes its keys and exits 0, and `inspect --json`
/// still prints its one JSON object on stdout.
#[test]
fn unwritable_stderr_never_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let at = |name: &str| dir.path().join(name);
    let (old, _) = pair("sparse");
    let full = at("full");
    mknod_full(&full);
    let run = |args: &[&Path], stderr: Stdio| {
        Command::new(bin("mkpatch"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .output()
            .expect("run mkpatch")
    };
    let to_full = || {
        Stdio::from(
            fs::OpenOptions::new()
                .write(true)
                .open(&full)
                .expect("open"),
        )
    };
    let missing = at("missing");
    let o = run(&[&old, &missing, Path::new("-o"), &at("p")], to_full());
    assert_eq!(o.status.code(), Some(1), "a missing NEW, 2>full");

    let o = run(
        &[Path::new("keygen"), Path::new("-o"), &at("k.key")],
        to_full(),
    );
    assert_eq!(o.status.code(), Some(0), "keygen 2>full");
    assert!(
        at("k.key").is_file() && at("k.pub").is_file(),
        "keygen 2>full wrote no keys"
    );

    let o = run(
        &[Path::new("inspect"), Path::new("--json"), &missing],
        to_full(),
    );
    assert_eq!(o.status.code(), Some(1), "inspect --json 2>full");
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("one JSON object on stdout");
    assert_eq!(v["ok"], false);

    // A pipe whose reader is gone: writes fail with EPIPE.
    let mut child = Command::new(bin("mkpatch"))
        .arg(&old)
        .arg(&missing)
        .arg("-o")
        .arg(at("p"))
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mkpatch");
    drop(child.stderr.take());
    let status = child.wait().expect("wait");
    assert_eq!(
        status.code(),
        Some(1),
        "a missing NEW, stderr closed by its reader"
    );
    assert!(!at("p").exists());
}

/// Finding 5: a new patch file gets 0666 less the umask (0600 under umask
/// 077, as keygen's public key does), never a fixed 0644; a patch written
/// over an existing file keeps that file's mode and owner.
#[test]
fn outputs_honour_the_umask_and_keep_an_existing_files_mode_and_owner() {
    let (old, new) = pair("sparse");
    let dir = tempfile::tempdir().expect("tempdir");
    let at = |name: &str| dir.path().join(name);
    let under_umask = |umask: &str, args: &[&Path]| {
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!("umask {umask} && exec \"$@\""))
            .arg("sh")
            .arg(bin("mkpatch"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run mkpatch");
        assert!(o.status.success(), "umask {umask}: {}", stderr(&o));
    };
    let mode = |name: &str| fs::metadata(at(name)).expect("stat").mode() & 0o7777;
    under_umask("077", &[&old, &new, Path::new("-o"), &at("private")]);
    assert_eq!(mode("private"), 0o600, "umask 077");
    under_umask("027", &[&old, &new, Path::new("-o"), &at("group")]);
    assert_eq!(mode("group"), 0o640, "umask 027");
    under_umask("077", &[Path::new("keygen"), Path::new("-o"), &at("k.key")]);
    assert_eq!(
        (mode("k.key"), mode("k.pub")),
        (0o600, 0o600),
        "keygen, umask 077"
    );

    // An existing output keeps its mode and owner (the test runs as root).
    fs::write(at("kept"), b"x").expect("write");
    fs::set_permissions(at("kept"), fs::Permissions::from_mode(0o604)).expect("chmod");
    std::os::unix::fs::chown(at("kept"), Some(1234), Some(4321)).expect("chown");
    under_umask("022", &[&old, &new, Path::new("-o"), &at("kept")]);
    let meta = fs::metadata(at("kept")).expect("stat");
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o604, 1234, 4321)
    );
    assert!(fs::read(at("kept")).expect("read") == fs::read(at("private")).expect("read"));
}

/// Finding 6: an input written while mkpatch reads it (same size, same
/// inode) fails the run, exit 1, naming the input, with nothing written:
/// the patch would mix old and new bytes and not apply. The write is made
/// once mkpatch has the input open and counted only if mkpatch was still
/// running after it, so the test cannot pass without exercising the check.
#[test]
fn an_input_changed_while_read_fails_the_run_and_writes_nothing() {
    let (src_old, src_new) = pair("ext4");
    for what in ["OLD", "NEW"] {
        let mut interleaved = false;
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let (a, b, out) = (
                dir.path().join("a"),
                dir.path().join("b"),
                dir.path().join("out"),
            );
            fs::copy(&src_old, &a).expect("copy");
            fs::copy(&src_new, &b).expect("copy");
            fs::create_dir(&out).expect("mkdir");
            let victim = if what == "OLD" { &a } else { &b };
            let child = Command::new(bin("mkpatch"))
                .args(["--level", "best", "-j", "1"])
                .arg(&a)
                .arg(&b)
                .arg("-o")
                .arg(out.join("p"))
                .stdin(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn mkpatch");
            let mut child = Reaped(child);
            wait_for_open(&mut child, |target| target == victim.as_path());
            // Invert 4 KiB in the middle: same size, same inode, other bytes.
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(victim)
                .expect("open");
            let at = file.metadata().expect("stat").len() / 2;
            let mut block = vec![0u8; 4096];
            file.read_exact_at(&mut block, at).expect("read");
            block.iter_mut().for_each(|b| *b = !*b);
            file.write_all_at(&block, at).expect("write");
            drop(file);
            if child.0.try_wait().expect("try_wait").is_some() {
                continue; // it ended before the write: try again
            }
            interleaved = true;
            let mut err = String::new();
            child
                .0
                .stderr
                .take()
                .expect("piped")
                .read_to_string(&mut err)
                .expect("read");
            let status = child.0.wait().expect("wait");
            assert_eq!(status.code(), Some(1), "{what} changed: {err}");
            assert!(
                err.contains(&format!("{what} {}", victim.display())),
                "{err}"
            );
            assert!(err.contains("changed while mkpatch read it"), "{err}");
            let left: Vec<_> = fs::read_dir(&out).expect("list").collect();
            assert!(left.is_empty(), "{what} changed: left {left:?}");
            break;
        }
        assert!(
            interleaved,
            "mkpatch always ended before {what} could be changed"
        );
    }
}

/// Finding 9: a stdout that cannot take what mkpatch writes there is an
/// error, exit 1: the patch stream (also as `-o` through a link to
/// /proc/self/fd/1), `inspect`'s report, and `--help` and `--version`.
#[test]
fn a_stdout_that_cannot_be_written_fails_the_run() {
    let (old, new) = pair("sparse");
    let dir = tempfile::tempdir().expect("tempdir");
    let at = |name: &str| dir.path().join(name);
    let full = at("full");
    drop(mknod_full(&full));
    let o = mkpatch(&[&old, &new, Path::new("-o"), &at("p")]);
    assert!(o.status.success(), "{}", stderr(&o));
    symlink("/proc/self/fd/1", &at("stdout"));
    let cases: [&[&Path]; 6] = [
        &[&old, &new],
        &[&old, &new, Path::new("-o"), &at("stdout")],
        &[Path::new("inspect"), &at("p")],
        &[Path::new("inspect"), Path::new("--json"), &at("p")],
        &[Path::new("--help")],
        &[Path::new("--version")],
    ];
    for args in cases {
        let o = Command::new(bin("mkpatch"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(
                fs::OpenOptions::new()
                    .write(true)
                    .open(&full)
                    .expect("open"),
            )
            .output()
            .expect("run mkpatch");
        assert_eq!(o.status.code(), Some(1), "{args:?} >full: {}", stderr(&o));
        assert!(
            stderr(&o).contains("No space left"),
            "{args:?} >full: {}",
            stderr(&o)
        );
    }
    assert!(fs::symlink_metadata(at("stdout"))
        .expect("link")
        .file_type()
        .is_symlink());
}

/// Finding 12: SIGKILL, which no handler sees, during `mkpatch -o` leaves
/// nothing in the output's directory: the patch has no name until it is
/// complete.
#[test]
fn sigkill_during_output_leaves_no_file() {
    let (old, new) = pair("ext4");
    let dir = tempfile::tempdir().expect("tempdir");
    let child = Command::new(bin("mkpatch"))
        .args(["--level", "best", "-j", "1"])
        .arg(&old)
        .arg(&new)
        .arg("-o")
        .arg(dir.path().join("p"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mkpatch");
    let mut child = Reaped(child);
    wait_for_open(&mut child, |target| target.starts_with(dir.path()));
    child.0.kill().expect("SIGKILL");
    let status = child.0.wait().expect("wait");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "mkpatch ended before SIGKILL: {status}"
    );
    let left: Vec<_> = fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "SIGKILL left {left:?}");
}

/// Finding 15: `--segment-len 0` names the flag as typed, not the library's
/// field (`option segment_len`).
#[test]
fn segment_len_out_of_range_names_the_flag() {
    let (old, new) = pair("sparse");
    let dir = tempfile::tempdir().expect("tempdir");
    for bad in ["0", "4194305"] {
        let o = mkpatch(&[
            Path::new("--segment-len"),
            Path::new(bad),
            &old,
            &new,
            Path::new("-o"),
            &dir.path().join("p"),
        ]);
        assert_eq!(o.status.code(), Some(1), "--segment-len {bad}");
        assert!(stderr(&o).contains("--segment-len"), "{}", stderr(&o));
        assert!(!stderr(&o).contains("segment_len"), "{}", stderr(&o));
    }
}

/// Finding 15: a subcommand after a global flag (`mkpatch -q keygen -o
/// k.key`) runs the subcommand instead of taking `keygen` for OLD; a flag
/// that only making a patch uses is refused with a subcommand.
#[test]
fn subcommands_work_after_global_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("k.key");
    let o = mkpatch(&[Path::new("-q"), Path::new("keygen"), Path::new("-o"), &key]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(o.stderr.is_empty(), "-q: {}", stderr(&o));
    assert!(key.is_file() && dir.path().join("k.pub").is_file());
    let o = mkpatch(&[
        Path::new("--level"),
        Path::new("best"),
        Path::new("inspect"),
        &key,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("--level"), "{}", stderr(&o));
}

/// Finding 15: `-o` onto an existing anypatch key file (`-o release.pub`
/// typed for `-o release.patch`) is refused, and the key is left as it was.
#[test]
fn output_onto_a_key_file_is_refused() {
    let (old, new) = pair("sparse");
    let dir = tempfile::tempdir().expect("tempdir");
    let at = |name: &str| dir.path().join(name);
    let o = mkpatch(&[Path::new("keygen"), Path::new("-o"), &at("release.key")]);
    assert!(o.status.success(), "{}", stderr(&o));
    for key in ["release.pub", "release.key"] {
        let text = fs::read(at(key)).expect("key");
        let o = mkpatch(&[&old, &new, Path::new("-o"), &at(key)]);
        assert_eq!(o.status.code(), Some(1), "-o {key}: {}", stderr(&o));
        assert!(stderr(&o).contains("key"), "-o {key}: {}", stderr(&o));
        assert_eq!(
            fs::read(at(key)).expect("key"),
            text,
            "-o {key} overwrote the key"
        );
    }
}

/// Finding 15: `inspect --json` prints exactly one JSON object on stdout
/// on an error too, with `ok: false`, the exit code and the error.
#[test]
fn inspect_json_prints_one_object_on_errors() {
    let (old, new) = pair("sparse");
    let dir = tempfile::tempdir().expect("tempdir");
    let at = |name: &str| dir.path().join(name);
    let o = mkpatch(&[&old, &new, Path::new("-o"), &at("p")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut bytes = fs::read(at("p")).expect("read");
    bytes.truncate(bytes.len() - 3);
    fs::write(at("cut"), bytes).expect("write");
    let cases: [(&[&Path], i32); 3] = [
        (
            &[Path::new("inspect"), Path::new("--json"), &at("missing")],
            1,
        ),
        (&[Path::new("inspect"), Path::new("--json"), &at("cut")], 2),
        (&[Path::new("inspect"), Path::new("--json")], 1),
    ];
    for (args, code) in cases {
        let o = mkpatch(args);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: not one JSON object ({e}): {:?}",
                String::from_utf8_lossy(&o.stdout)
            )
        });
        assert_eq!(v["ok"], false, "{args:?}");
        assert_eq!(v["exit_code"], code, "{args:?}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{args:?}: {v}"
        );
    }
}

/// Finding 12: the output's directory renamed while mkpatch runs: the run
/// fails, exit 1, saying so, and leaves nothing in the directory under its
/// new name (no temporary file) nor a patch anywhere.
#[test]
fn output_directory_moved_during_the_run_leaves_nothing() {
    let (old, new) = pair("ext4");
    let root = tempfile::tempdir().expect("tempdir");
    let (dir, moved) = (root.path().join("out"), root.path().join("moved"));
    fs::create_dir(&dir).expect("mkdir");
    let child = Command::new(bin("mkpatch"))
        .args(["--level", "best", "-j", "1"])
        .arg(&old)
        .arg(&new)
        .arg("-o")
        .arg(dir.join("p"))
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mkpatch");
    let mut child = Reaped(child);
    wait_for_open(&mut child, |target| target.starts_with(&dir));
    fs::rename(&dir, &moved).expect("rename the directory");
    assert!(
        child.0.try_wait().expect("try_wait").is_none(),
        "mkpatch finished before its directory moved: give this test a larger input"
    );
    let mut err = String::new();
    child
        .0
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut err)
        .expect("read");
    let status = child.0.wait().expect("wait");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("moved"), "{err}");
    let left: Vec<_> = fs::read_dir(&moved)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "left {left:?} in the moved directory");
    assert!(!dir.exists(), "a new directory appeared at the old name");
}

/// Defect 3, through a loop device: the file that backs a loop device given
/// as OLD or NEW holds that input's bytes, so it is refused as `-o` like the
/// input itself, before any work.
#[test]
fn output_that_backs_a_loop_device_given_as_an_input_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = pair("sparse");
    for (what, original) in [("NEW", &new), ("OLD", &old)] {
        let backing = dir.path().join(format!("{what}.img"));
        fs::copy(original, &backing).expect("copy");
        let lo = Loop::attach(&backing);
        let (a, b) = if what == "NEW" {
            (old.as_path(), lo.dev.as_path())
        } else {
            (lo.dev.as_path(), new.as_path())
        };
        let o = mkpatch(&[a, b, Path::new("-o"), &backing]);
        assert_eq!(o.status.code(), Some(1), "{what}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("loop device over"),
            "{what}: {}",
            stderr(&o)
        );
        assert!(
            fs::read(&backing).expect("backing") == fs::read(original).expect("input"),
            "{what}: the file behind the loop device changed"
        );
    }
}
