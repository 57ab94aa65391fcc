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

use crate::common::{run_ok, stderr, Loop, Reaped};

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

/// Waits (at most 20 s) until applypatch `pid` has its temporary output
/// file in `dir`: a named one, or an unnamed (`O_TMPFILE`) one among its
/// open files, which /proc shows as `DIR/#INODE (deleted)`.
fn wait_for_temp(pid: u32, dir: &Path) {
    let unnamed = || {
        fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
            .any(|to| {
                let to = to.to_string_lossy().into_owned();
                to.starts_with(&dir.to_string_lossy().into_owned()) && to.ends_with(" (deleted)")
            })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while temp_files(dir).is_empty() && !unnamed() {
        assert!(Instant::now() < deadline, "no temporary file appeared");
        std::thread::sleep(Duration::from_millis(5));
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
        lo.read_prefix(dev_len) == filled(dev_len, 0xAA),
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
    let got = lo.read_prefix(dev_len);
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
        lo_small.read_prefix(8 << 20) == filled(8 << 20, 0x55),
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
        wait_for_temp(child.0.id(), dir.path());
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

// Hostile-user findings on the fixed `applypatch` (numbered as reported).

/// Runs applypatch with the given stdout and stderr (stdin closed).
fn applypatch_to(args: &[&Path], stdout: Stdio, stderr_to: Stdio) -> Output {
    Command::new(bin("applypatch"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr_to)
        .output()
        .expect("run applypatch")
}

/// A file opened for appending, as a shell's `>> FILE` gives it.
fn appending(path: &Path) -> Stdio {
    fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for appending")
        .into()
}

/// /dev/full opened for writing: every write fails with ENOSPC.
fn dev_full() -> Stdio {
    fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("open /dev/full")
        .into()
}

/// The process state letter from /proc/PID/stat ('T' when stopped), or
/// None once it is gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Waits until `pid` is stopped; panics with `why` if it is not within 20 s
/// or ends first (a zombie is 'Z').
fn wait_stopped(pid: u32, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match proc_state(pid) {
            Some('T') | Some('t') => return,
            Some('Z') | None => panic!("{why}: the process ended instead"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "{why}: it did not stop");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The patch's header section (preamble, header, its hash, signatures):
/// what the applier needs before it checks the base.
fn header_section_len(patch: &[u8]) -> usize {
    let u32_at =
        |at: usize| u32::from_le_bytes(patch[at..at + 4].try_into().expect("4 bytes")) as usize;
    24 + u32_at(0x10) + 32 + u32_at(0x14)
}

/// Bytes read by `pid` so far (rchar in /proc/PID/io), all files together.
fn bytes_read(pid: u32) -> u64 {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A tmpfs of `size` mounted on a new directory, unmounted when dropped.
struct SmallFs {
    dir: PathBuf,
}

impl SmallFs {
    fn mount(parent: &Path, size: &str) -> Self {
        let dir = parent.join("small-fs");
        fs::create_dir(&dir).expect("mkdir");
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={size}"))
                .arg("tmpfs")
                .arg(&dir),
        );
        Self { dir }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// Finding 2 (and 14): `-o` naming a stream (`/dev/stdout`, `/dev/fd/1`,
/// `/proc/self/fd/1`, `/dev/stderr`, `-`) is refused, exit 1, and the file
/// that stdout was opened on keeps its contents; the message never tells
/// the user to remove /dev/stdout.
#[test]
fn output_naming_a_stream_is_refused_and_the_file_behind_stdout_survives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, _, patch) = sparse_pair(dir.path());
    for link in ["/dev/stdout", "/dev/stderr", "/dev/fd"] {
        assert!(
            fs::symlink_metadata(link).is_ok_and(|m| m.file_type().is_symlink()),
            "{link} is not a symlink: this machine's /dev was damaged (by a binary that renames over it?); restore it first"
        );
    }
    let log = dir.path().join("log");
    for out in [
        "/dev/stdout",
        "/dev/fd/1",
        "/proc/self/fd/1",
        "/dev/stderr",
        "-",
    ] {
        fs::write(&log, b"important\n").expect("log");
        // In `dir`, so that a binary that takes `-` for a name litters only there.
        let o = Command::new(bin("applypatch"))
            .args([&old, &patch, Path::new("-o"), Path::new(out)])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(appending(&log))
            .output()
            .expect("run applypatch");
        assert_eq!(o.status.code(), Some(1), "-o {out}: {}", stderr(&o));
        assert!(stderr(&o).contains("stream"), "-o {out}: {}", stderr(&o));
        assert!(!stderr(&o).contains("remove"), "-o {out}: {}", stderr(&o));
        assert_eq!(
            fs::read(&log).expect("log"),
            b"important\n",
            "-o {out} changed the file stdout is on"
        );
        assert!(!dir.path().join("-").exists(), "-o - made a file named '-'");
    }
    // With stdout a pipe too: refused, no advice to remove /dev/stdout.
    let o = applypatch(&[&old, &patch, Path::new("-o"), Path::new("/dev/stdout")]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(!stderr(&o).contains("remove"), "{}", stderr(&o));
    assert_eq!(temp_files(dir.path()), Vec::<String>::new());
}

/// Finding 3: a SIGINT that arrives right after the new image was renamed
/// into place does not turn the run into "interrupted" (exit 130): the
/// output is complete, so the run reports success, exit 0. The test hook
/// `ANYPATCH_TEST_STOP_AFTER_COMMIT` stops the process at exactly that
/// point and waits for the signal handler's decision once continued.
#[test]
fn a_signal_after_the_output_is_renamed_does_not_change_the_outcome() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new, patch) = sparse_pair(dir.path());
    let out = dir.path().join("new.img");
    let mut child = Reaped(
        Command::new(bin("applypatch"))
            .arg(&old)
            .arg(&patch)
            .arg("-o")
            .arg(&out)
            .arg("--json")
            .env("ANYPATCH_TEST_STOP_AFTER_COMMIT", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn applypatch"),
    );
    let pid = child.0.id();
    wait_stopped(
        pid,
        "applypatch should stop itself after the rename (test hook)",
    );
    assert!(
        fs::read(&out).expect("the output is in place") == fs::read(&new).expect("new"),
        "stopped after the commit, the output must hold the new image"
    );
    for signal in ["INT", "CONT"] {
        run_ok(
            Command::new("kill")
                .args(["-s", signal])
                .arg(pid.to_string()),
        );
    }
    let o = child.0.wait_with_output_ref();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let j = json(&o);
    assert_eq!(
        (j["ok"].as_bool(), j["status"].as_str()),
        (Some(true), Some("applied")),
        "{j}"
    );
    assert!(fs::read(&out).expect("out") == fs::read(&new).expect("new"));
}

/// Finding 4: a stderr that cannot be written (/dev/full, a pipe nobody
/// reads) never makes applypatch panic (exit 101): a success stays exit 0
/// with the image written, a failure keeps its exit code, and `--json`
/// still prints its object.
#[test]
fn an_unwritable_stderr_never_panics_and_json_still_comes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new, patch) = sparse_pair(dir.path());
    let out = dir.path().join("x.img");
    let o = applypatch_to(
        &[&old, &patch, Path::new("-o"), &out],
        Stdio::null(),
        dev_full(),
    );
    assert_eq!(o.status.code(), Some(0), "2>/dev/full, success");
    assert!(fs::read(&out).expect("out") == fs::read(&new).expect("new"));

    let missing = dir.path().join("nosuch");
    let o = applypatch_to(
        &[Path::new("--json"), &old, &missing, Path::new("-o"), &out],
        Stdio::piped(),
        dev_full(),
    );
    assert_eq!(o.status.code(), Some(1), "2>/dev/full, a missing patch");
    let j = json(&o);
    assert_eq!(
        (j["ok"].as_bool(), j["exit_code"].as_u64()),
        (Some(false), Some(1)),
        "{j}"
    );

    // stderr a pipe whose reader is gone (`2>&1 | true`): EPIPE.
    for (args, code) in [
        (
            vec![old.as_path(), patch.as_path(), Path::new("-o"), &out],
            0,
        ),
        (
            vec![new.as_path(), patch.as_path(), Path::new("--check")],
            3,
        ),
    ] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let o = applypatch_to(&args, Stdio::null(), writer.into());
        assert_eq!(
            o.status.code(),
            Some(code),
            "{args:?} with a closed stderr pipe"
        );
    }
}

/// Finding 5: `-o` over an existing file keeps that file's permissions and
/// owner; a new file gets OLD's permissions less the umask, so a umask of
/// 077 gives nobody else access.
#[test]
fn output_keeps_an_existing_files_mode_and_owner_and_new_files_follow_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new, patch) = sparse_pair(dir.path());
    let existing = dir.path().join("f.img");
    fs::write(&existing, b"x").expect("f");
    fs::set_permissions(&existing, fs::Permissions::from_mode(0o600)).expect("chmod");
    std::os::unix::fs::chown(&existing, Some(1234), Some(5678)).expect("chown");
    let o = applypatch(&[&old, &patch, Path::new("-o"), &existing]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let m = fs::metadata(&existing).expect("f");
    assert!(fs::read(&existing).expect("f") == fs::read(&new).expect("new"));
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid()),
        (0o600, 1234, 5678),
        "the replaced file lost its mode or owner"
    );

    let fresh = dir.path().join("n.img");
    let o = Command::new("sh")
        .arg("-c")
        .arg("umask 077; exec \"$@\"")
        .arg("sh")
        .arg(bin("applypatch"))
        .arg(&old)
        .arg(&patch)
        .arg("-o")
        .arg(&fresh)
        .output()
        .expect("run applypatch under umask 077");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mode = fs::metadata(&fresh).expect("n").mode() & 0o7777;
    assert_eq!(mode & 0o077, 0, "umask 077 gave a new file mode {mode:o}");
    assert_eq!(mode, fs::metadata(&old).expect("old").mode() & 0o700);
}

/// Finding 7: OLD written to while `-o` reads it (after the base check,
/// before the copies from it) is reported as a changed old file, exit 1,
/// not blamed on the patch (exit 2), and nothing is created.
#[test]
fn old_changed_while_read_is_not_blamed_on_the_patch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = corpus_small();
    let old = dir.path().join("a.old");
    fs::copy(c.join("sparse.old"), &old).expect("copy");
    let new = c.join("sparse.new");
    let patch = dir.path().join("p.bin");
    make_patch(&old, &new, &patch, &[]);
    let patch_bytes = fs::read(&patch).expect("patch");
    let old_bytes = fs::read(&old).expect("old");
    let new_bytes = fs::read(&new).expect("new");
    let old_len = old_bytes.len() as u64;
    // A byte the patch copies from OLD unchanged.
    let at = (0..old_bytes.len())
        .rev()
        .find(|&i| old_bytes[i] == new_bytes[i])
        .expect("an unchanged byte");
    let out = dir.path().join("new.img");
    let mut child = Reaped(
        Command::new(bin("applypatch"))
            .arg(&old)
            .arg("-")
            .arg("-o")
            .arg(&out)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn applypatch"),
    );
    let mut stdin = child.0.stdin.take().expect("stdin");
    let head = header_section_len(&patch_bytes);
    stdin
        .write_all(&patch_bytes[..head])
        .expect("feed the header");
    // The header lets it check the base (all of OLD); then it waits for
    // the manifest, which reads OLD again for every unchanged extent.
    let deadline = Instant::now() + Duration::from_secs(20);
    while bytes_read(child.0.id()) < old_len + head as u64 {
        assert!(
            Instant::now() < deadline,
            "applypatch never checked the base"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&old)
        .expect("open old");
    f.write_all_at(&[old_bytes[at] ^ 0xFF], at as u64)
        .expect("change old");
    drop(f);
    stdin
        .write_all(&patch_bytes[head..])
        .expect("feed the rest");
    drop(stdin);
    let o = child.0.wait_with_output_ref();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("old file changed while it was read"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
    assert_eq!(temp_files(dir.path()), Vec::<String>::new());
}

/// Finding 8: loop devices are other names for the files behind them.
/// Refused as `-o`, exit 1, with OLD and the patch intact: (a) a second
/// loop device over the file behind OLD's loop device, (b) a loop device
/// over the patch, (c) the file behind OLD's loop device.
#[test]
fn loop_devices_over_old_or_the_patch_are_refused_as_outputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = corpus_small();
    let backing = dir.path().join("s5.img");
    fs::copy(c.join("sparse.old"), &backing).expect("copy old");
    let patch = dir.path().join("p.bin");
    make_patch(&backing, &c.join("sparse.new"), &patch, &[]);
    let old_bytes = fs::read(&backing).expect("old");
    let patch_bytes = fs::read(&patch).expect("patch");
    let l5 = Loop::attach(&backing);
    let l6 = Loop::attach(&backing);
    let lp = Loop::attach(&patch);
    let old_node = l5.node_in(dir.path(), "old-dev");
    let cases = [
        (l6.node_in(dir.path(), "same-backing"), "the old image"),
        (lp.node_in(dir.path(), "over-patch"), "the patch"),
        (backing.clone(), "the old image"),
    ];
    for (out, what) in &cases {
        let o = applypatch(&[&old_node, &patch, Path::new("-o"), out]);
        assert_eq!(
            o.status.code(),
            Some(1),
            "-o {}: {}",
            out.display(),
            stderr(&o)
        );
        assert!(
            stderr(&o).contains(&format!("is {what} under another name")),
            "{}",
            stderr(&o)
        );
        assert!(
            fs::read(&backing).expect("old") == old_bytes,
            "-o {} changed OLD",
            out.display()
        );
        assert!(
            fs::read(&patch).expect("patch") == patch_bytes,
            "-o {} changed the patch",
            out.display()
        );
    }
    assert_eq!(temp_files(dir.path()), Vec::<String>::new());
}

/// Finding 9: a result that stdout cannot take (/dev/full) is an error,
/// exit 1: `--check`'s BLAKE3 and `--json`'s object are what the caller
/// asked for. With `-o` the image is still in place, and stderr says so.
#[test]
fn a_result_that_stdout_cannot_take_is_exit_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new, patch) = sparse_pair(dir.path());
    let o = applypatch_to(
        &[Path::new("--check"), &old, &patch],
        dev_full(),
        Stdio::piped(),
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "--check >/dev/full: {}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("stdout"), "{}", stderr(&o));

    let out = dir.path().join("x.img");
    let o = applypatch_to(
        &[Path::new("--json"), &old, &patch, Path::new("-o"), &out],
        dev_full(),
        Stdio::piped(),
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "--json >/dev/full: {}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("was written"), "{}", stderr(&o));
    assert!(fs::read(&out).expect("out") == fs::read(&new).expect("new"));
}

/// Finding 10: a signal ignored by the parent (`nohup` ignores SIGHUP)
/// stays ignored during `-o`: SIGHUP does not stop the run, which ends with
/// the new image, exit 0.
#[test]
fn signals_ignored_by_the_parent_stay_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new, patch) = sparse_pair(dir.path());
    let patch_bytes = fs::read(&patch).expect("patch");
    let out = dir.path().join("new.img");
    let mut child = Reaped(
        Command::new("nohup")
            .arg(bin("applypatch"))
            .arg(&old)
            .arg("-")
            .arg("-o")
            .arg(&out)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nohup applypatch"),
    );
    let pid = child.0.id();
    let mut stdin = child.0.stdin.take().expect("stdin");
    stdin.write_all(&patch_bytes[..64]).expect("feed the start");
    // The temporary file comes after the signal handlers are set up.
    wait_for_temp(pid, dir.path());
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .expect("signal mask")
    };
    assert_eq!(
        mask("SigCgt:") & 1,
        0,
        "applypatch catches SIGHUP that nohup ignored"
    );
    assert_eq!(mask("SigIgn:") & 1, 1, "SIGHUP is no longer ignored");
    run_ok(
        Command::new("kill")
            .args(["-s", "HUP"])
            .arg(pid.to_string()),
    );
    stdin.write_all(&patch_bytes[64..]).expect("feed the rest");
    drop(stdin);
    let o = child.0.wait_with_output_ref();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(fs::read(&out).expect("out") == fs::read(&new).expect("new"));
}

/// Finding 11: stdout opened on OLD or on the patch (`--json ... >> old`,
/// `--check ... >> patch`) is refused before any work, exit 1, and both
/// stay as they were: the result would have been written into them.
#[test]
fn stdout_onto_old_or_the_patch_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = corpus_small();
    let old = dir.path().join("sa.old");
    fs::copy(c.join("sparse.old"), &old).expect("copy");
    let patch = dir.path().join("p.bin");
    make_patch(&old, &c.join("sparse.new"), &patch, &[]);
    let old_bytes = fs::read(&old).expect("old");
    let patch_bytes = fs::read(&patch).expect("patch");
    let out = dir.path().join("y.img");
    let cases: [(Vec<&Path>, &Path); 3] = [
        (
            vec![Path::new("--json"), &old, &patch, Path::new("-o"), &out],
            &old,
        ),
        (vec![Path::new("--check"), &old, &patch], &patch),
        (
            vec![Path::new("--check"), Path::new("--json"), &old, &patch],
            &old,
        ),
    ];
    for (args, stdout_on) in cases {
        let o = applypatch_to(&args, appending(stdout_on), Stdio::piped());
        assert_eq!(
            o.status.code(),
            Some(1),
            "{args:?} >> {}: {}",
            stdout_on.display(),
            stderr(&o)
        );
        assert!(stderr(&o).contains("stdout is"), "{}", stderr(&o));
        assert!(
            fs::read(&old).expect("old") == old_bytes,
            "{args:?} changed OLD"
        );
        assert!(
            fs::read(&patch).expect("patch") == patch_bytes,
            "{args:?} changed the patch"
        );
        assert!(!out.exists());
    }
}

/// Finding 13: an output name near the 255-byte limit still gets its
/// temporary file (the temporary name keeps only part of it).
#[test]
fn a_long_output_name_gets_a_temporary_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new, patch) = sparse_pair(dir.path());
    let out = dir.path().join("y".repeat(250));
    let o = applypatch(&[&old, &patch, Path::new("-o"), &out]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(fs::read(&out).expect("out") == fs::read(&new).expect("new"));
    assert_eq!(temp_files(dir.path()), Vec::<String>::new());
}

/// Finding 15: `--max-new-size` messages give exact bytes where the
/// rounded size would mislead (a limit one byte under 16 MiB must not read
/// "16.0 MiB" like the image), never "0 bytes (0 bytes)", and a fraction
/// of a byte is named as such.
#[test]
fn max_new_size_messages_are_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, _, patch) = sparse_pair(dir.path());
    let size = |s: &str| {
        applypatch(&[
            &old,
            &patch,
            Path::new("--check"),
            Path::new("--max-new-size"),
            Path::new(s),
        ])
    };
    let o = size("0");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(!stderr(&o).contains("(0 bytes)"), "{}", stderr(&o));
    let o = size("16777215");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("16777215 bytes") && e.contains("16777216 bytes"),
        "{e}"
    );
    assert!(
        !e.contains("16.0 MiB (16777215"),
        "the limit reads like the image: {e}"
    );
    let o = size("0.5");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("fraction of a byte"), "{}", stderr(&o));
}

/// Finding 15: out of space while writing `-o`, the message names the
/// temporary file (not "the target") and says that NEW was left as it
/// was; NEW keeps its contents.
#[test]
fn out_of_space_names_the_temporary_file_and_leaves_new_as_it_was() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, _, patch) = sparse_pair(dir.path());
    let small = SmallFs::mount(dir.path(), "1m");
    let out = small.dir.join("new.img");
    let o = applypatch(&[&old, &patch, Path::new("-o"), &out]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("temporary file"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("nothing was created at"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());

    fs::write(&out, b"previous image").expect("existing NEW");
    let o = applypatch(&[&old, &patch, Path::new("-o"), &out]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("was left as it was"), "{}", stderr(&o));
    assert_eq!(fs::read(&out).expect("NEW"), b"previous image");
    assert_eq!(temp_files(&small.dir), Vec::<String>::new());
}

/// Finding 15: a read-only block device as `-o` is refused when it is
/// opened, before the patch is verified: even with a wrong OLD the answer
/// is "read-only" (exit 1), not the verify pass's "wrong base".
#[test]
fn a_read_only_device_is_refused_before_verifying() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, _, patch) = sparse_pair(dir.path());
    let disk = dir.path().join("ro.img");
    let len = (16 << 20) + (1 << 20);
    fs::write(&disk, filled(len, 0xAA)).expect("backing file");
    let lo = Loop::attach_read_only(&disk);
    let node = lo.node_in(dir.path(), "ro-disk");
    let wrong = dir.path().join("wrong.old");
    let mut w = fs::read(&old).expect("old");
    w[4321] ^= 1;
    fs::write(&wrong, &w).expect("wrong old");
    for base in [&wrong, &old] {
        let o = applypatch(&[base, &patch, Path::new("-o"), &node]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(stderr(&o).contains("read-only"), "{}", stderr(&o));
    }
    assert!(
        lo.read_prefix(len) == filled(len, 0xAA),
        "the device changed"
    );
}

/// Finding 12: applypatch killed with SIGKILL mid-way leaves nothing in
/// NEW's directory (the temporary file has no name until it is complete,
/// `O_TMPFILE`), and a later run still writes NEW.
#[test]
fn a_killed_output_run_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new, patch) = sparse_pair(dir.path());
    let patch_bytes = fs::read(&patch).expect("patch");
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).expect("mkdir");
    let out = out_dir.join("new.img");
    let mut child = Reaped(
        Command::new(bin("applypatch"))
            .arg(&old)
            .arg("-")
            .arg("-o")
            .arg(&out)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn applypatch"),
    );
    let mut stdin = child.0.stdin.take().expect("stdin");
    // All but the last byte: the image is written, the run not finished.
    let last = patch_bytes.len() - 1;
    stdin
        .write_all(&patch_bytes[..last])
        .expect("feed the patch");
    wait_for_temp(child.0.id(), &out_dir);
    child.0.kill().expect("SIGKILL");
    let _ = child.0.wait();
    drop(stdin);
    let left: Vec<_> = fs::read_dir(&out_dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "SIGKILL left {left:?}");
    let o = applypatch(&[&old, &patch, Path::new("-o"), &out]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(fs::read(&out).expect("out") == fs::read(&new).expect("new"));
}
