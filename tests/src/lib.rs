//! Shared pieces of the end-to-end tests: the reference applier, a patch
//! builder for shapes the producer never makes, an in-memory driver for the
//! engine, and helpers that run the real binaries on corpus pairs.

pub mod builder;
pub mod hostile;
pub mod hostile_index;
pub mod reference;
pub mod vectors;
pub mod verdict;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anypatch_apply::{Applier, ApplyError, Config, Event, Summary};

/// What an in-memory apply did.
#[derive(Debug)]
pub struct MemoryApply {
    pub target: Vec<u8>,
    pub summary: Summary,
    /// Bytes written by `Write` events and zeroed by `Zero` events.
    pub bytes_touched: u64,
    pub old_reads: u64,
}

/// Drives the engine over in-memory buffers, feeding the patch in slices of
/// `feed` bytes. `target` starts as the old bytes when `cfg.skip_unchanged`
/// (in-place), else empty.
pub fn apply_in_memory(
    old: &[u8],
    patch: &[u8],
    cfg: Config,
    feed: usize,
) -> Result<MemoryApply, ApplyError> {
    let in_place = cfg.skip_unchanged;
    let mut target = if in_place { old.to_vec() } else { Vec::new() };
    let run = drive_memory(
        (!in_place).then_some(old),
        &mut target,
        patch,
        cfg,
        feed,
        usize::MAX,
    )?;
    let summary = run.summary.expect("an unlimited run ends with Done");
    target.truncate(summary.new_len as usize);
    target.resize(summary.new_len as usize, 0);
    Ok(MemoryApply {
        target,
        summary,
        bytes_touched: run.bytes_touched,
        old_reads: run.old_reads,
    })
}

/// What [`drive_memory`] saw.
#[derive(Debug, Default)]
pub struct MemoryRun {
    /// The summary, when the run reached `Done`.
    pub summary: Option<Summary>,
    /// Where each `Write` or `Zero` event ended, in order.
    pub write_ends: Vec<u64>,
    pub bytes_touched: u64,
    pub old_reads: u64,
}

/// The engine's event loop over memory. Old bytes come from `old`, or from
/// `target` itself when `old` is `None` (in place). Stops after `max_writes`
/// writes, as if the process were killed right there.
pub fn drive_memory(
    old: Option<&[u8]>,
    target: &mut Vec<u8>,
    patch: &[u8],
    cfg: Config,
    feed: usize,
    max_writes: usize,
) -> Result<MemoryRun, ApplyError> {
    let mut a = Applier::new(cfg);
    let mut run = MemoryRun::default();
    let mut at = 0usize;
    while run.write_ends.len() < max_writes {
        match a.poll()? {
            Event::NeedInput if at == patch.len() => a.end_of_input(),
            Event::NeedInput => {
                let end = (at + feed.max(1)).min(patch.len());
                at += a.feed(&patch[at..end]);
            }
            Event::Header(_) => {}
            Event::ReadOld { offset, buf } => {
                run.old_reads += 1;
                let src: &[u8] = old.unwrap_or(target);
                buf.copy_from_slice(&src[offset as usize..offset as usize + buf.len()]);
            }
            Event::Write { offset, data } => {
                put(target, offset, data);
                run.bytes_touched += data.len() as u64;
                run.write_ends.push(offset + data.len() as u64);
            }
            Event::Zero { offset, len } => {
                put(target, offset, &vec![0; len as usize]);
                run.bytes_touched += len;
                run.write_ends.push(offset + len);
            }
            Event::Done(summary) => {
                run.summary = Some(summary);
                break;
            }
        }
    }
    Ok(run)
}

fn put(target: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if target.len() < end {
        target.resize(end, 0);
    }
    target[offset as usize..end].copy_from_slice(data);
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// Path of a workspace binary built by the same `cargo test` profile. Cargo
/// builds every binary of the workspace before running integration tests
/// only for the package's own bins, so build the others here once.
///
/// `ANYPATCH_TEST_BIN_DIR` points the tests at other binaries instead, for
/// example those of the commit before a fix, to show that a test fails there.
pub fn bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("ANYPATCH_TEST_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let release = cfg!(not(debug_assertions));
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(root()).args([
            "build",
            "-q",
            "-p",
            "anypatch-producer",
            "-p",
            "anypatch-applypatch",
            // Its crash-test hooks (ANYPATCH_TEST_KILL_AT, ...).
            "--features",
            "anypatch-applypatch/test-hooks",
        ]);
        if release {
            cmd.arg("--release");
        }
        without_test_package_env(&mut cmd);
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "building mkpatch and applypatch failed");
    });
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    target_dir().join(profile).join(name)
}

/// Removes from `cmd`'s environment the variables cargo gives a running
/// test about its own package (`CARGO_PKG_*`, `CARGO_MANIFEST_*`, ...), for
/// a command that runs cargo (directly or through a script). ring's build
/// script asks to rerun when they change, so passing them on made every
/// such build and every top-level one rebuild ring in turn, a minute or
/// more each time.
pub fn without_test_package_env(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
            ]
            .contains(&key.as_ref())
        {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, or `target` in the repository.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// The files of `fuzz/regressions/<target>/` (inputs a fuzz target once
/// failed on), without the README and dotfiles, sorted.
pub fn fuzz_regressions(target: &str) -> Vec<PathBuf> {
    let dir = root().join("fuzz/regressions").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            p.is_file() && !name.starts_with('.') && !name.ends_with(".md")
        })
        .collect();
    files.sort();
    files
}

/// A directory holding `make-corpus --scale small` pairs: made once, under
/// the target directory, and reused by every test binary and later run
/// until make-corpus changes.
/// (A `TempDir` in a static is never dropped, so each run would leave
/// 330 MB in the temporary directory.) It is written under a private name
/// and renamed into place whole, so a run stopped midway leaves no
/// half-made corpus behind to be reused.
pub fn corpus_small() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = root().join("../shared/corpus/make-corpus");
        let text = std::fs::read(&script).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; CI must have ../shared beside the repository",
                script.display()
            )
        });
        // A changed make-corpus makes a new corpus, not reuse the old one.
        let version = hex(&blake3::hash(&text).as_bytes()[..6]);
        let dir = target_dir().join(format!("corpus-small-{version}"));
        if dir.join("MANIFEST.tsv").exists() {
            return dir;
        }
        std::fs::create_dir_all(target_dir()).expect("target dir");
        let work = tempfile::tempdir_in(target_dir()).expect("tempdir in target");
        let out = Command::new("python3")
            .arg(&script)
            .arg(work.path())
            .args(["--scale", "small"])
            .output()
            .expect("python3 runs make-corpus");
        assert!(
            out.status.success(),
            "make-corpus failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Another run may have finished first; its corpus is as good.
        if std::fs::rename(work.path(), &dir).is_err() && !dir.join("MANIFEST.tsv").exists() {
            panic!("cannot move the corpus to {}", dir.display());
        }
        dir
    })
}

/// The pair names make-corpus wrote (from its MANIFEST.tsv).
pub fn corpus_pairs(dir: &Path) -> Vec<String> {
    let manifest = std::fs::read_to_string(dir.join("MANIFEST.tsv")).expect("MANIFEST.tsv");
    manifest
        .lines()
        .skip(1)
        .filter_map(|l| l.split('\t').next())
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    anypatch_format::Hex(bytes).to_string()
}
