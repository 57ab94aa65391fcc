//! `applypatch -o` and `--check`: block devices, FIFOs and character
//! devices as the output, the patch as the output, signals, directories,
//! sparse output, FIFOs and directories as OLD, in-place options out of
//! place, `--json` on every outcome, and sizes with units (issue 13,
//! defects 2, 3, 6, 7, 9, 12, 13 and 15).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anypatch_tests::{bin, corpus_small};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn applypatch(args: &[&Path]) -> Output {
    Command::new(bin("applypatch"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run applypatch")
}

/// `timeout 20 applypatch ARGS`: a binary that blocks (on a FIFO, on stdin)
/// exits 124 instead of hanging the test.
fn applypatch_timeout(args: &[&Path], stdin: Stdio) -> Output {
    Command::new("timeout")
        .arg("20")
        .arg(bin("applypatch"))
        .args(args)
        .stdin(stdin)
        .output()
        .expect("run timeout applypatch")
}

fn run_ok(cmd: &mut Command) -> String {
    let o = cmd.output().expect("run");
    assert!(o.status.success(), "{cmd:?}: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// The sparse pair of the small corpus and a patch between them, in `dir`.
fn sparse_pair(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let c = corpus_small();
    let (old, new) = (c.join("sparse.old"), c.join("sparse.new"));
    let patch = dir.join("p.bin");
    make_patch(&old, &new, &patch, &[]);
    (old, new, patch)
}

fn make_patch(old: &Path, new: &Path, patch: &Path, extra: &[&str]) {
    run_ok(
        Command::new(bin("mkpatch"))
            .arg(old)
            .arg(new)
            .arg("-o")
            .arg(patch)
            .args(extra)
            .arg("-q"),
    );
}

/// The one JSON object on stdout: anything more or less fails to parse.
fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not exactly one JSON object ({e}): {:?}; stderr: {}",
            String::from_utf8_lossy(&o.stdout),
            stderr(o)
        )
    })
}

/// Temporary files that `applypatch -o NAME` leaves in `dir`.
fn temp_files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".applypatch-tmp"))
        .collect()
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

    /// A block device node for this loop device inside `dir`, so a binary
    /// that renames a file over it cannot damage /dev.
    fn node_in(&self, dir: &Path, name: &str) -> PathBuf {
        let sys = self.dev.trim_start_matches("/dev/");
        let numbers = fs::read_to_string(format!("/sys/class/block/{sys}/dev"))
            .expect("sysfs names the device numbers");
        let (major, minor) = numbers.trim().split_once(':').expect("MAJOR:MINOR");
        let node = dir.join(name);
        run_ok(Command::new("mknod").arg(&node).args(["b", major, minor]));
        node
    }

    /// The first `len` bytes the device holds.
    fn read(&self, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        fs::File::open(&self.dev)
            .expect("open the loop device")
            .read_exact_at(&mut buf, 0)
            .expect("read the loop device");
        buf
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// A child process killed and reaped when dropped, so a failed assertion
/// never leaves it running.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn filled(len: usize, byte: u8) -> Vec<u8> {
    vec![byte; len]
}

/// Defect 2: `-o` onto a block device writes the image onto the device
/// (the node stays a block device), leaves the bytes after the image as
/// they were, and loses nothing when the patch does not verify or the
/// device is too small.
#[test]
fn output_onto_a_block_device_writes_the_device_and_only_after_verifying() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new, patch) = sparse_pair(dir.path());
    let new_bytes = fs::read(&new).expect("new");
    let dev_len = new_bytes.len() + (4 << 20);

    let backing = dir.path().join("disk.img");
    fs::write(&backing, filled(dev_len, 0xAA)).expect("backing file");
    let lo = Loop::attach(&backing);
    let node = lo.node_in(dir.path(), "disk");

    // A wrong base: refused, the device keeps every old byte.
    let wrong = dir.path().join("wrong.old");
    let mut w = fs::read(&old).expect("old");
    w[12345] ^= 1;
    fs::write(&wrong, &w).expect("wrong old");
    let o = applypatch(&[&wrong, &patch, Path::new("-o"), &node]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        lo.read(dev_len) == filled(dev_len, 0xAA),
        "a wrong base changed the device"
    );

    // The real thing: the device holds the new image, the rest is as it was.
    let o = applypatch(&[&old, &patch, Path::new("-o"), &node, Path::new("--json")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let meta = fs::symlink_metadata(&node).expect("node");
    assert!(
        meta.file_type().is_block_device(),
        "the node was replaced: {meta:?}"
    );
    let got = lo.read(dev_len);
    assert!(
        got[..new_bytes.len()] == new_bytes[..],
        "the device does not hold the new image"
    );
    assert!(
        got[new_bytes.len()..] == filled(4 << 20, 0xAA)[..],
        "bytes after the image changed"
    );
    let j = json(&o);
    assert_eq!(j["output_kind"], "block_device", "{j}");
    assert_eq!(j["device_len"], dev_len as u64, "{j}");
    assert_eq!(temp_files(dir.path()), Vec::<String>::new());

    // A device smaller than the image: refused, untouched.
    let small = dir.path().join("small.img");
    fs::write(&small, filled(8 << 20, 0x55)).expect("small backing file");
    let lo_small = Loop::attach(&small);
    let small_node = lo_small.node_in(dir.path(), "small");
    let o = applypatch(&[&old, &patch, Path::new("-o"), &small_node]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("larger than the block device"),
        "{}",
        stderr(&o)
    );
    assert!(
        lo_small.read(8 << 20) == filled(8 << 20, 0x55),
        "a too-small device changed"
    );
    assert!(fs::symlink_metadata(&small_node)
        .expect("node")
        .file_type()
        .is_block_device());
}

/// Defect 2: a FIFO or a character device as `-o` is refused with exit 1
/// and stays what it was; a symlink to a regular file keeps being a link,
/// and the file it points to gets the new image.
#[test]
fn output_onto_a_fifo_or_char_device_is_refused_and_a_symlink_is_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new, patch) = sparse_pair(dir.path());

    let fifo = dir.path().join("fifo");
    run_ok(Command::new("mkfifo").arg(&fifo));
    let o = applypatch_timeout(&[&old, &patch, Path::new("-o"), &fifo], Stdio::null());
    assert_eq!(o.status.code(), Some(1), "FIFO output: {}", stderr(&o));
    assert!(fs::symlink_metadata(&fifo)
        .expect("fifo")
        .file_type()
        .is_fifo());

    let null = dir.path().join("null");
    run_ok(Command::new("mknod").arg(&null).args(["c", "1", "3"]));
    let o = applypatch(&[&old, &patch, Path::new("-o"), &null]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "char device output: {}",
        stderr(&o)
    );
    assert!(fs::symlink_metadata(&null)
        .expect("null")
        .file_type()
        .is_char_device());

    let target = dir.path().join("images").join("v2.img");
    fs::create_dir(target.parent().expect("parent")).expect("mkdir");
    fs::write(&target, b"previous image").expect("target");
    let link = dir.path().join("current.img");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let o = applypatch(&[&old, &patch, Path::new("-o"), &link]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        fs::symlink_metadata(&link)
            .expect("link")
            .file_type()
            .is_symlink(),
        "the link was replaced"
    );
    assert!(fs::read(&target).expect("target") == fs::read(&new).expect("new"));
    assert_eq!(temp_files(dir.path()), Vec::<String>::new());
    assert_eq!(
        temp_files(target.parent().expect("parent")),
        Vec::<String>::new()
    );
}

/// Defect 3: `-o` naming the patch (directly, through a symlink or a hard
/// link) is refused before any work and the patch survives; `-o OLD` is
/// still refused.
#[test]
fn output_that_is_the_patch_or_old_is_refused_and_both_survive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = corpus_small();
    let old = dir.path().join("a.old");
    fs::copy(c.join("sparse.old"), &old).expect("copy old");
    let patch = dir.path().join("p.bin");
    make_patch(&old, &c.join("sparse.new"), &patch, &[]);
    let patch_bytes = fs::read(&patch).expect("patch");
    let old_bytes = fs::read(&old).expect("old");

    let sym = dir.path().join("p.link");
    std::os::unix::fs::symlink(&patch, &sym).expect("symlink");
    let hard = dir.path().join("p.hard");
    fs::hard_link(&patch, &hard).expect("hard link");
    let old_hard = dir.path().join("a.hard");
    fs::hard_link(&old, &old_hard).expect("hard link");
    for out in [&patch, &sym, &hard] {
        let o = applypatch(&[&old, &patch, Path::new("-o"), out]);
        assert_eq!(
            o.status.code(),
            Some(1),
            "-o {}: {}",
            out.display(),
            stderr(&o)
        );
        assert!(stderr(&o).contains("patch"), "{}", stderr(&o));
        assert!(
            fs::read(&patch).expect("patch") == patch_bytes,
            "-o {} changed the patch",
            out.display()
        );
    }
    for out in [&old, &old_hard] {
        let o = applypatch(&[&old, &patch, Path::new("-o"), out]);
        assert_eq!(
            o.status.code(),
            Some(1),
            "-o {}: {}",
            out.display(),
            stderr(&o)
        );
        assert!(
            fs::read(&old).expect("old") == old_bytes,
            "-o {} changed OLD",
            out.display()
        );
    }
    assert_eq!(temp_files(dir.path()), Vec::<String>::new());
}

/// Defect 6: SIGINT, SIGTERM and SIGHUP during `-o` remove the temporary
/// file and exit 128 + the signal number (with `--json`: one object saying
/// so); `-o` into a directory or a missing directory is refused before the
/// patch is read.
#[test]
fn signals_during_output_remove_the_temporary_file_and_dirs_fail_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, _, patch) = sparse_pair(dir.path());
    let patch_bytes = fs::read(&patch).expect("patch");
    for (signal, code) in [("INT", 130), ("TERM", 143), ("HUP", 129)] {
        let out = dir.path().join(format!("new-{signal}.img"));
        // The patch comes through stdin, and only its first bytes: the
        // applier is mid-way, waiting for more, when the signal comes.
        let mut child = Reaped(
            Command::new(bin("applypatch"))
                .arg(&old)
                .arg("-")
                .arg("-o")
                .arg(&out)
                .arg("--json")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn applypatch"),
        );
        let mut stdin = child.0.stdin.take().expect("stdin");
        stdin
            .write_all(&patch_bytes[..64])
            .expect("feed the patch's start");
        let deadline = Instant::now() + Duration::from_secs(20);
        while temp_files(dir.path()).is_empty() {
            assert!(Instant::now() < deadline, "no temporary file appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
        run_ok(
            Command::new("kill")
                .args(["-s", signal])
                .arg(child.0.id().to_string()),
        );
        let o = child.0.wait_with_output_ref();
        drop(stdin);
        assert_eq!(o.status.code(), Some(code), "SIG{signal}: {}", stderr(&o));
        assert_eq!(
            temp_files(dir.path()),
            Vec::<String>::new(),
            "SIG{signal} left a temporary file"
        );
        assert!(!out.exists());
        let j = json(&o);
        assert_eq!(j["error_class"], "interrupted", "{j}");
        assert_eq!(j["exit_code"], code, "{j}");
    }

    // A directory as -o, or a missing one: refused without reading the
    // patch (stdin stays open and silent; reading it would block).
    let existing = dir.path().join("images");
    fs::create_dir(&existing).expect("mkdir");
    for out in [existing.clone(), dir.path().join("missing").join("new.img")] {
        let (_writer, reader) = std::io::pipe().expect("pipe");
        let o = applypatch_timeout(
            &[&old, Path::new("-"), Path::new("-o"), &out],
            reader.into(),
        );
        assert_eq!(
            o.status.code(),
            Some(1),
            "-o {}: {}",
            out.display(),
            stderr(&o)
        );
        assert!(stderr(&o).contains("director"), "{}", stderr(&o));
    }
    assert!(fs::read_dir(&existing).expect("dir").next().is_none());
}

/// `wait_with_output` for a child we must keep owning (it is `Reaped`).
trait WaitRef {
    fn wait_with_output_ref(&mut self) -> Output;
}

impl WaitRef for Child {
    fn wait_with_output_ref(&mut self) -> Output {
        use std::io::Read;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        if let Some(mut s) = self.stdout.take() {
            let _ = s.read_to_end(&mut out);
        }
        if let Some(mut s) = self.stderr.take() {
            let _ = s.read_to_end(&mut err);
        }
        let status = self.wait().expect("wait");
        Output {
            status,
            stdout: out,
            stderr: err,
        }
    }
}

/// Defect 7: `-o` keeps zero runs as holes: unchanged zero regions copied
/// from a sparse OLD and all-zero blocks inside new data alike.
#[test]
fn output_is_sparse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = (
        dir.path().join("sparse64.old"),
        dir.path().join("sparse64.new"),
    );
    let len = 64u64 << 20;
    let noise = |seed: u64, n: usize| -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    // OLD: 64 MiB, 64 KiB of data every 8 MiB, holes between.
    let f = fs::File::create(&old).expect("old");
    f.set_len(len).expect("size");
    for i in 0..8u64 {
        f.write_all_at(&noise(i + 1, 64 << 10), i * (8 << 20))
            .expect("write");
    }
    drop(f);
    // NEW: the same, and at 40 MiB a changed 3 MiB region whose middle
    // 2 MiB are zeros: 512 KiB data, 2 MiB zeros, 512 KiB data.
    fs::copy(&old, &new).expect("copy");
    let f = fs::OpenOptions::new().write(true).open(&new).expect("new");
    let mut region = noise(99, 3 << 20);
    region[512 << 10..(512 + 2048) << 10].fill(0);
    f.write_all_at(&region, 40 << 20).expect("write");
    drop(f);
    let patch = dir.path().join("p.bin");
    make_patch(&old, &new, &patch, &[]);

    let out = dir.path().join("out.img");
    let o = applypatch(&[&old, &patch, Path::new("-o"), &out]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(fs::read(&out).expect("out") == fs::read(&new).expect("new"));
    // 1.5 MiB of data: 512 KiB in OLD's chunks, 1 MiB in the new region.
    let allocated = fs::metadata(&out).expect("meta").blocks() * 512;
    assert!(
        allocated <= 3 << 20,
        "a 64 MiB image with 1.5 MiB of data takes {allocated} bytes on disk"
    );
}

/// Defect 9: a FIFO, a directory or a character device as OLD is refused
/// with exit 1 (a FIFO without hanging), in `--check` and `-o` alike; a
/// directory as the patch too.
#[test]
fn fifo_directory_and_char_device_as_old_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, _, patch) = sparse_pair(dir.path());
    let fifo = dir.path().join("fifo");
    run_ok(Command::new("mkfifo").arg(&fifo));
    let zero = dir.path().join("zero");
    run_ok(Command::new("mknod").arg(&zero).args(["c", "1", "5"]));
    let subdir = dir.path().join("d");
    fs::create_dir(&subdir).expect("mkdir");
    let out = dir.path().join("out.img");
    for (bad_old, word) in [
        (&fifo, "FIFO"),
        (&subdir, "directory"),
        (&zero, "character device"),
    ] {
        for mode in [&[Path::new("--check")][..], &[Path::new("-o"), &out][..]] {
            let mut args = vec![bad_old.as_path(), patch.as_path()];
            args.extend_from_slice(mode);
            let o = applypatch_timeout(&args, Stdio::null());
            assert_eq!(
                o.status.code(),
                Some(1),
                "OLD {word} {mode:?}: {}",
                stderr(&o)
            );
            assert!(stderr(&o).contains(word), "{}", stderr(&o));
        }
    }
    let o = applypatch(&[&old, &subdir, Path::new("--check")]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("the patch {} is a directory", subdir.display())),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
    assert_eq!(temp_files(dir.path()), Vec::<String>::new());
}

/// Defect 12: `--journal-batch 0` is refused (the help says 1..=4194304),
/// and `--state` or `--journal-batch` with `-o` or `--check` is refused
/// instead of silently ignored; nothing is written.
#[test]
fn journal_batch_zero_and_in_place_options_out_of_place_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = corpus_small();
    let disk = dir.path().join("disk.img");
    fs::copy(c.join("sparse.old"), &disk).expect("copy");
    let patch = dir.path().join("p.bin");
    make_patch(&disk, &c.join("sparse.new"), &patch, &["--in-place"]);
    let before = fs::read(&disk).expect("disk");
    let out = dir.path().join("out.img");
    let state = dir.path().join("s.state");
    let cases: [&[&Path]; 6] = [
        &[
            Path::new("--in-place"),
            &disk,
            &patch,
            Path::new("--journal-batch"),
            Path::new("0"),
        ],
        &[
            Path::new("--in-place"),
            &disk,
            &patch,
            Path::new("--journal-batch"),
            Path::new("4194305"),
        ],
        &[
            &disk,
            &patch,
            Path::new("-o"),
            &out,
            Path::new("--state"),
            &state,
        ],
        &[
            &disk,
            &patch,
            Path::new("-o"),
            &out,
            Path::new("--journal-batch"),
            Path::new("4096"),
        ],
        &[
            Path::new("--check"),
            &disk,
            &patch,
            Path::new("--state"),
            &state,
        ],
        &[
            Path::new("--check"),
            &disk,
            &patch,
            Path::new("--journal-batch"),
            Path::new("4096"),
        ],
    ];
    for args in cases {
        let o = applypatch(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(
            fs::read(&disk).expect("disk") == before,
            "{args:?} changed the disk"
        );
        assert!(!out.exists() && !state.exists(), "{args:?} wrote something");
    }
}

/// Defect 13: with `--json`, stdout is exactly one JSON object for a
/// success, a check (without `bytes_written`), each error class and an
/// already-applied target.
#[test]
fn json_is_one_object_for_every_outcome() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new, patch) = sparse_pair(dir.path());
    let j_ = Path::new("--json");
    let out = dir.path().join("out.img");

    let o = applypatch(&[&old, &patch, Path::new("-o"), &out, j_]);
    let j = json(&o);
    assert_eq!(
        (j["ok"].as_bool(), j["exit_code"].as_u64()),
        (Some(true), Some(0)),
        "{j}"
    );
    assert_eq!(j["status"], "applied", "{j}");
    assert!(j["bytes_written"].is_u64(), "{j}");
    assert_eq!(
        j["new_blake3"],
        anypatch_tests::hex(blake3::hash(&fs::read(&new).expect("new")).as_bytes())
    );

    let o = applypatch(&[Path::new("--check"), &old, &patch, j_]);
    let j = json(&o);
    assert_eq!(
        (j["ok"].as_bool(), j["status"].as_str()),
        (Some(true), Some("verified")),
        "{j}"
    );
    assert!(
        j.get("bytes_written").is_none() && j.get("bytes_zeroed").is_none(),
        "--check wrote nothing: {j}"
    );

    // Errors: wrong base (3), corrupt patch (2), refused (1), usage (1).
    let corrupt = dir.path().join("corrupt.bin");
    let mut bytes = fs::read(&patch).expect("patch");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    fs::write(&corrupt, &bytes).expect("corrupt");
    let missing = dir.path().join("missing.old");
    let journal = Path::new("--journal-batch");
    let cases: [(&[&Path], u64, &str); 4] = [
        (&[&new, &patch, Path::new("--check"), j_], 3, "wrong_base"),
        (
            &[&old, &corrupt, Path::new("--check"), j_],
            2,
            "corrupt_patch",
        ),
        (&[&missing, &patch, Path::new("--check"), j_], 1, "io"),
        (
            &[
                Path::new("--in-place"),
                &old,
                &patch,
                journal,
                Path::new("0"),
                j_,
            ],
            1,
            "usage",
        ),
    ];
    for (args, code, class) in cases {
        let o = applypatch(args);
        assert_eq!(
            o.status.code(),
            Some(code as i32),
            "{args:?}: {}",
            stderr(&o)
        );
        let j = json(&o);
        assert_eq!(j["ok"], false, "{j}");
        assert_eq!(j["exit_code"], code, "{j}");
        assert_eq!(j["error_class"], class, "{j}");
        assert!(j["error"].as_str().is_some_and(|e| !e.is_empty()), "{j}");
    }

    // Already applied: an in-place target that already is the new image.
    let disk = dir.path().join("disk.img");
    fs::copy(&new, &disk).expect("copy");
    let in_place_patch = dir.path().join("ip.bin");
    make_patch(&old, &new, &in_place_patch, &["--in-place"]);
    let o = applypatch(&[Path::new("--in-place"), &disk, &in_place_patch, j_]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let j = json(&o);
    assert_eq!(
        (j["ok"].as_bool(), j["status"].as_str()),
        (Some(true), Some("already_applied")),
        "{j}"
    );
}

/// Defect 15: `--max-new-size` takes sizes as users type them (IEC and SI,
/// fractions), and the summary on stderr is in MiB with the time.
#[test]
fn max_new_size_takes_units_and_the_summary_reads_in_mib() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new, patch) = sparse_pair(dir.path());
    let new_len = fs::metadata(&new).expect("new").len();
    assert_eq!(new_len, 16 << 20, "the sparse pair is 16 MiB");
    let out = dir.path().join("out.img");
    for (size, ok) in [
        ("16M", true),
        ("16MiB", true),
        ("1G", true),
        ("0.5g", true),
        ("1.5G", true),
        ("2T", true),
        ("64GB", true),
        ("15.9M", false),
        ("16MB", false), // 16,000,000 bytes < 16 MiB
        ("16777215", false),
    ] {
        let o = applypatch(&[
            &old,
            &patch,
            Path::new("--check"),
            Path::new("--max-new-size"),
            Path::new(size),
        ]);
        assert_eq!(
            o.status.code(),
            Some(if ok { 0 } else { 1 }),
            "--max-new-size {size}: {}",
            stderr(&o)
        );
        if !ok {
            assert!(
                stderr(&o).contains("above --max-new-size"),
                "{size}: {}",
                stderr(&o)
            );
        }
    }
    let o = applypatch(&[&old, &patch, Path::new("-o"), &out]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let line = stderr(&o);
    let prefix = format!("applypatch: wrote {}: 16.0 MiB (", out.display());
    assert!(line.starts_with(&prefix), "{line}");
    assert!(
        line.contains(" written) in ") && line.contains(" s, BLAKE3 "),
        "{line}"
    );
    let hash = line.trim_end().rsplit(' ').next().expect("hash");
    assert_eq!(
        hash,
        anypatch_tests::hex(blake3::hash(&fs::read(&new).expect("new")).as_bytes())
    );
}

/// Defect 2, another name for OLD: a loop device backed by the old image
/// passes the same-file check (its node is another inode), and writing it
/// would overwrite OLD while it is read. Refused before any work; OLD and
/// the node stay as they were.
#[test]
fn output_onto_a_loop_device_backed_by_old_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = corpus_small();
    let old = dir.path().join("a.old");
    fs::copy(c.join("sparse.old"), &old).expect("copy old");
    let patch = dir.path().join("p.bin");
    make_patch(&old, &c.join("sparse.new"), &patch, &[]);
    let old_bytes = fs::read(&old).expect("old");
    let dev = Loop::attach(&old);
    let node = dev.node_in(dir.path(), "backed-by-old");
    let o = applypatch(&[&old, &patch, Path::new("-o"), &node]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("loop device backed by the old image"),
        "{}",
        stderr(&o)
    );
    assert!(fs::read(&old).expect("old") == old_bytes, "OLD changed");
    assert!(
        fs::symlink_metadata(&node)
            .expect("node")
            .file_type()
            .is_block_device(),
        "the node was replaced"
    );
}
