//! `mkpatch`: device nodes and inputs as `-o`, FIFOs and directories as
//! inputs, signals during `-o`, key file names, and a reader that closes the
//! pipe early (issue 13, defects 2, 3, 6, 9, 11 and 12).

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anypatch_tests::{bin, corpus_small};

fn mkpatch(args: &[&Path]) -> Output {
    Command::new(bin("mkpatch"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run mkpatch")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn pair(name: &str) -> (PathBuf, PathBuf) {
    let dir = corpus_small();
    (
        dir.join(format!("{name}.old")),
        dir.join(format!("{name}.new")),
    )
}

fn run_ok(cmd: &mut Command) -> String {
    let o = cmd.output().expect("run");
    assert!(o.status.success(), "{cmd:?}: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn mkfifo(path: &Path) {
    run_ok(Command::new("mkfifo").arg(path));
}

/// A character device like /dev/null (1:3), made where the test can lose it.
fn mknod_null(path: &Path) {
    run_ok(Command::new("mknod").arg(path).args(["c", "1", "3"]));
}

/// A loop device over a file, detached when dropped.
struct Loop {
    dev: String,
}

impl Loop {
    fn attach(file: &Path) -> Self {
        let dev = run_ok(Command::new("losetup").args(["-f", "--show"]).arg(file));
        assert!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
        Self { dev }
    }

    /// "MAJOR:MINOR" of the device.
    fn numbers(&self) -> String {
        let name = self.dev.trim_start_matches("/dev/");
        fs::read_to_string(format!("/sys/class/block/{name}/dev"))
            .expect("sysfs names the device numbers")
            .trim()
            .to_owned()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// A child process killed and reaped when dropped, so a failed assertion
/// never leaves it waiting on a FIFO.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
        let deadline = Instant::now() + Duration::from_secs(60);
        while fs::read_dir(dir.path()).expect("list").next().is_none() {
            assert!(Instant::now() < deadline, "no temporary file appeared");
            std::thread::sleep(Duration::from_millis(2));
        }
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
    assert!(
        o.stderr.is_empty(),
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
