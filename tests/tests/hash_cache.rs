//! The hash cache through `mkpatch` (issue 16): a patch made with a cache
//! hit is byte-identical to one made without a cache, and an entry is used
//! only for the unchanged file it was made from.
//!
//! Whether a run used an entry shows in the cache directory: a hit leaves
//! the entry file as it is (same inode), a miss writes a new one and renames
//! it into place (a new inode). Whether a wrong entry would be used shows by
//! poisoning: an entry holding another content's scan, whose stat matches
//! the file; used, it makes a different (wrong) patch.

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anypatch_tests::{bin, corpus_pairs, corpus_small};

/// Runs mkpatch with these arguments and the environment given, and
/// asserts it succeeded.
fn mkpatch_env(args: &[&dyn AsRef<std::ffi::OsStr>], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(bin("mkpatch"));
    cmd.arg("-q");
    for a in args {
        cmd.arg(a);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("mkpatch runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `mkpatch --cache CACHE OLD NEW -o OUT`; returns stderr.
fn cached(cache: &Path, old: &Path, new: &Path, out: &Path) -> String {
    let o = mkpatch_env(&[&"--cache", &cache, &old, &new, &"-o", &out], &[]);
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The patch from `mkpatch --no-cache OLD NEW`.
fn uncached(old: &Path, new: &Path) -> Vec<u8> {
    mkpatch_env(&[&"--no-cache", &old, &new], &[]).stdout
}

/// Waits until the files' last change (mtime and ctime) is more than the
/// cache's racy margin (2 s) in the past, so that an entry made now is
/// trusted. Not a timing assertion: it only lets the clock pass the margin.
fn settle(paths: &[&Path]) {
    let changed = paths
        .iter()
        .map(|p| {
            let m = fs::metadata(p).expect("stat");
            let t = |s: i64, n: i64| UNIX_EPOCH + Duration::new(s as u64, n as u32);
            t(m.mtime(), m.mtime_nsec()).max(t(m.ctime(), m.ctime_nsec()))
        })
        .max()
        .expect("a path");
    let ready = changed + Duration::from_millis(2200);
    if let Ok(wait) = ready.duration_since(SystemTime::now()) {
        std::thread::sleep(wait);
    }
}

/// A copy of `src` in `dir`, as `name`.
fn copy(src: &Path, dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    fs::copy(src, &to).expect("copy");
    to
}

/// The cache's entry files.
fn entries(cache: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(cache)
        .map(|d| d.map(|e| e.expect("dir entry").path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "entry"));
    v.sort();
    v
}

/// The one entry in the cache, and its inode.
fn the_entry(cache: &Path) -> (PathBuf, u64) {
    let e = entries(cache);
    assert_eq!(e.len(), 1, "entries: {e:?}");
    let ino = fs::metadata(&e[0]).expect("stat").ino();
    (e[0].clone(), ino)
}

/// Overwrites `path` in place (same inode, same size) with `bytes`, then
/// sets its mtime back to what it was: only ctime tells.
fn rewrite_keeping_mtime(path: &Path, bytes: &[u8]) {
    let m = fs::metadata(path).expect("stat");
    assert_eq!(m.len(), bytes.len() as u64, "a same-size rewrite");
    let mtime = m.modified().expect("mtime");
    let f = fs::OpenOptions::new().write(true).open(path).expect("open");
    f.write_all_at(bytes, 0).expect("write");
    f.set_modified(mtime).expect("restore mtime");
    let now = fs::metadata(path).expect("stat");
    assert_eq!((now.ino(), now.len()), (m.ino(), m.len()));
    assert_eq!(now.modified().expect("mtime"), mtime);
}

/// Edits an entry file's header (layout in hash-cache's `entry` module:
/// ctime at 0x30, taken at 0x3c, each i64 seconds and u32 nanoseconds)
/// and writes a valid checksum for it: an entry as the cache itself would
/// have written it for that state.
fn set_entry_times(entry: &Path, ctime: (i64, u32), taken: (i64, u32)) {
    let mut b = fs::read(entry).expect("read entry");
    for (at, (s, n)) in [(0x30, ctime), (0x3c, taken)] {
        b[at..at + 8].copy_from_slice(&s.to_le_bytes());
        b[at + 8..at + 12].copy_from_slice(&n.to_le_bytes());
    }
    let body = b.len() - 32;
    let sum = blake3::hash(&b[..body]);
    b[body..].copy_from_slice(sum.as_bytes());
    fs::write(entry, b).expect("write entry");
}

fn ctime(path: &Path) -> (i64, u32) {
    let m = fs::metadata(path).expect("stat");
    (m.ctime(), m.ctime_nsec() as u32)
}

/// The sparse pair of the small corpus (same size, 0.1% of blocks changed).
fn sparse() -> (PathBuf, PathBuf) {
    let c = corpus_small();
    (c.join("sparse.old"), c.join("sparse.new"))
}

#[test]
fn identical_patches_with_and_without_a_cache_on_every_corpus_pair() {
    let dir = corpus_small();
    let pairs = corpus_pairs(dir);
    assert!(pairs.len() >= 7, "make-corpus made only {pairs:?}");
    let olds: Vec<PathBuf> = pairs.iter().map(|n| dir.join(format!("{n}.old"))).collect();
    settle(&olds.iter().map(PathBuf::as_path).collect::<Vec<_>>());
    let work = tempfile::tempdir().expect("tempdir");
    for (name, old) in pairs.iter().zip(&olds) {
        let new = dir.join(format!("{name}.new"));
        // The cache changes only the scan, which no level changes; `best`
        // (slow) on two pairs.
        let levels: &[&str] = match name.as_str() {
            "sparse" | "shift" => &["fast", "default", "best"],
            _ => &["fast", "default"],
        };
        for level in levels {
            let cache = work.path().join(format!("cache-{name}-{level}"));
            let want = mkpatch_env(&[&"--no-cache", &"--level", level, &old, &new], &[]).stdout;
            let (p1, p2) = (work.path().join("p1"), work.path().join("p2"));
            let run = |p: &Path, threads: &str| {
                mkpatch_env(
                    &[
                        &"--cache", &cache, &"--level", level, &"-j", &threads, &old, &new, &"-o",
                        &p,
                    ],
                    &[],
                )
            };
            run(&p1, "2");
            assert!(
                fs::metadata(old).expect("stat").len() > 64 << 10,
                "{name}: too small"
            );
            let (_, ino) = the_entry(&cache);
            run(&p2, "1");
            // The second run used the entry: it did not write another.
            assert_eq!(the_entry(&cache).1, ino, "{name}: the entry was not used");
            assert!(
                fs::read(&p1).expect("p1") == want,
                "{name} {level}: first run differs"
            );
            assert!(
                fs::read(&p2).expect("p2") == want,
                "{name} {level}: cached run differs"
            );
        }
    }
}

#[test]
fn hit_after_an_unchanged_file_miss_after_touch() {
    let work = tempfile::tempdir().expect("tempdir");
    let (old, new) = sparse();
    let old = copy(&old, work.path(), "old");
    settle(&[&old]);
    let cache = work.path().join("cache");
    let want = uncached(&old, &new);
    let p = work.path().join("p");
    cached(&cache, &old, &new, &p);
    let (_, first) = the_entry(&cache);
    cached(&cache, &old, &new, &p);
    assert_eq!(
        the_entry(&cache).1,
        first,
        "unchanged file: the entry is used"
    );
    assert!(fs::read(&p).expect("p") == want);

    // touch: new mtime (and ctime), same bytes. Not trusted; written again.
    let f = fs::OpenOptions::new().write(true).open(&old).expect("open");
    f.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .expect("touch");
    settle(&[&old]);
    cached(&cache, &old, &new, &p);
    let (_, second) = the_entry(&cache);
    assert_ne!(second, first, "after touch the entry must be made again");
    assert!(fs::read(&p).expect("p") == want);
    cached(&cache, &old, &new, &p);
    assert_eq!(the_entry(&cache).1, second, "and then used");
}

#[test]
fn rewrite_in_place_with_the_mtime_restored_is_caught_by_ctime() {
    let work = tempfile::tempdir().expect("tempdir");
    let (old_src, new) = sparse();
    // The file first holds NEW's bytes, and its entry says so.
    let file = copy(&new, work.path(), "file");
    settle(&[&file]);
    let cache = work.path().join("cache");
    let p = work.path().join("p");
    cached(&cache, &file, &new, &p);
    the_entry(&cache);
    // Then OLD's bytes are written over them in place, mtime restored.
    rewrite_keeping_mtime(&file, &fs::read(&old_src).expect("old"));
    let want = uncached(&file, &new);
    cached(&cache, &file, &new, &p);
    assert!(
        fs::read(&p).expect("p") == want,
        "the entry of the file's earlier bytes was used"
    );
}

#[test]
fn a_racy_entry_is_never_trusted() {
    let work = tempfile::tempdir().expect("tempdir");
    let (old_src, new) = sparse();
    let file = copy(&new, work.path(), "file");
    settle(&[&file]);
    let cache = work.path().join("cache");
    let p = work.path().join("p");
    cached(&cache, &file, &new, &p);
    let (entry, _) = the_entry(&cache);
    // A write in the same second as the entry, which left the file's stat
    // as the entry has it (here the entry is made to match the stat).
    rewrite_keeping_mtime(&file, &fs::read(&old_src).expect("old"));
    let c = ctime(&file);
    set_entry_times(&entry, c, c);
    let want = uncached(&file, &new);
    cached(&cache, &file, &new, &p);
    assert!(
        fs::read(&p).expect("p") == want,
        "an entry made in the same second as the file's last change was used"
    );
    // Control: the same entry made three seconds after the change is
    // trusted, and its wrong contents show in the patch.
    let (entry, _) = the_entry(&cache);
    rewrite_keeping_mtime(&file, &fs::read(&new).expect("new"));
    settle(&[&file]);
    cached(&cache, &file, &new, &p); // an entry of NEW's bytes
    let (entry2, _) = the_entry(&cache);
    assert_eq!(entry, entry2);
    rewrite_keeping_mtime(&file, &fs::read(&old_src).expect("old"));
    let c = ctime(&file);
    set_entry_times(&entry, c, (c.0 + 3, c.1));
    cached(&cache, &file, &new, &p);
    assert!(
        fs::read(&p).expect("p") != want,
        "control: a trusted entry of other bytes is used (so the test above can fail)"
    );
}

#[test]
fn a_racy_state_is_not_stored() {
    let work = tempfile::tempdir().expect("tempdir");
    let (old, new) = sparse();
    let old = copy(&old, work.path(), "old");
    settle(&[&old]);
    // An mtime in the future: every entry made now would be racy.
    fs::OpenOptions::new()
        .write(true)
        .open(&old)
        .and_then(|f| f.set_modified(SystemTime::now() + Duration::from_secs(3600)))
        .expect("mtime");
    let cache = work.path().join("cache");
    let p = work.path().join("p");
    cached(&cache, &old, &new, &p);
    assert!(
        entries(&cache).is_empty(),
        "an entry of a racy state was stored"
    );
    assert!(fs::read(&p).expect("p") == uncached(&old, &new));
}

#[test]
fn an_entry_that_does_not_match_the_bytes_read_is_dropped() {
    let work = tempfile::tempdir().expect("tempdir");
    let (old_src, new) = sparse();
    let old_bytes = fs::read(&old_src).expect("old");
    let new_bytes = fs::read(&new).expect("new");
    // Other bytes: OLD with the first block NEW changed changed otherwise,
    // so that piece is read from the file and checked against the entry.
    let at = old_bytes
        .iter()
        .zip(&new_bytes)
        .position(|(a, b)| a != b)
        .expect("the pair differs");
    let mut other = old_bytes.clone();
    other[at] ^= 0x5A;
    let file = work.path().join("file");
    fs::write(&file, &other).expect("write");
    settle(&[&file]);
    let cache = work.path().join("cache");
    let p = work.path().join("p");
    cached(&cache, &file, &new, &p);
    let (entry, _) = the_entry(&cache);
    rewrite_keeping_mtime(&file, &old_bytes);
    let c = ctime(&file);
    set_entry_times(&entry, c, (c.0 + 3, c.1));
    settle(&[&file]); // so that the right entry made next is trusted
    let want = uncached(&file, &new);
    let err = cached(&cache, &file, &new, &p);
    assert!(
        fs::read(&p).expect("p") == want,
        "an entry of other bytes made the patch"
    );
    assert!(err.contains("did not match its bytes"), "stderr: {err}");
    // It was replaced by a right one, which the next run uses.
    let (_, ino) = the_entry(&cache);
    cached(&cache, &file, &new, &p);
    assert_eq!(the_entry(&cache).1, ino);
    assert!(fs::read(&p).expect("p") == want);
}

#[test]
fn a_corrupt_entry_is_ignored_rewritten_and_never_fatal() {
    let work = tempfile::tempdir().expect("tempdir");
    let (old, new) = sparse();
    let old = copy(&old, work.path(), "old");
    settle(&[&old]);
    let want = uncached(&old, &new);
    let cache = work.path().join("cache");
    let p = work.path().join("p");
    cached(&cache, &old, &new, &p);
    let (entry, _) = the_entry(&cache);
    let good = fs::read(&entry).expect("entry");
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x10;
    for bad in [
        flipped,
        good[..good.len() / 3].to_vec(),
        b"garbage".to_vec(),
        Vec::new(),
    ] {
        fs::write(&entry, &bad).expect("corrupt");
        let (_, bad_ino) = the_entry(&cache);
        let err = cached(&cache, &old, &new, &p);
        assert!(fs::read(&p).expect("p") == want);
        assert!(
            err.contains("warning: ignored the damaged cache entry"),
            "stderr: {err}"
        );
        let (_, ino) = the_entry(&cache);
        assert_ne!(ino, bad_ino, "rewritten");
        assert_eq!(
            fs::read(&entry).expect("entry").len(),
            good.len(),
            "rewritten whole"
        );
    }
    let (_, ino) = the_entry(&cache);
    let err = cached(&cache, &old, &new, &p);
    assert_eq!(the_entry(&cache).1, ino, "the rewritten entry is used");
    assert!(!err.contains("warning"), "stderr: {err}");
    assert!(fs::read(&p).expect("p") == want);
}

#[test]
fn an_unusable_cache_dir_is_a_warning() {
    let work = tempfile::tempdir().expect("tempdir");
    let (old, new) = sparse();
    let old = copy(&old, work.path(), "old");
    settle(&[&old]);
    let want = uncached(&old, &new);
    let plain = work.path().join("plain-file");
    fs::write(&plain, b"x").expect("write");
    let p = work.path().join("p");
    for dir in [plain.clone(), plain.join("sub")] {
        let err = cached(&dir, &old, &new, &p);
        assert!(fs::read(&p).expect("p") == want);
        assert!(
            err.contains("warning: cannot use the cache directory"),
            "stderr: {err}"
        );
    }
}

#[test]
fn a_full_cache_evicts_the_oldest_and_holds_its_bound() {
    let work = tempfile::tempdir().expect("tempdir");
    let (old, new) = sparse();
    let old = copy(&old, work.path(), "old");
    settle(&[&old]);
    let cache = work.path().join("cache");
    fs::create_dir(&cache).expect("mkdir");
    // Three 400 MiB entries (sparse files), 3, 2 and 1 hours old: 1.2 GiB,
    // over the 1 GiB bound once another entry comes.
    let filler: Vec<PathBuf> = (1..=3u64)
        .map(|i| {
            let path = cache.join(format!("{:032x}.entry", i));
            let f = fs::File::create(&path).expect("create");
            f.set_len(400 << 20).expect("set_len");
            f.set_modified(SystemTime::now() - Duration::from_secs(3600 * (4 - i)))
                .expect("age");
            path
        })
        .collect();
    let not_ours = cache.join("notes.txt");
    fs::write(&not_ours, b"kept").expect("write");
    let p = work.path().join("p");
    cached(&cache, &old, &new, &p);
    assert!(!filler[0].exists(), "the oldest entry stays");
    assert!(
        filler[1].exists() && filler[2].exists(),
        "more than the oldest went"
    );
    assert!(not_ours.exists(), "a file that is not an entry was removed");
    let total: u64 = entries(&cache)
        .iter()
        .map(|e| fs::metadata(e).expect("stat").len())
        .sum();
    assert!(total <= 1 << 30, "{total} bytes of entries");
    assert_eq!(entries(&cache).len(), 3, "the new entry is there");
    assert!(fs::read(&p).expect("p") == uncached(&old, &new));
}

#[test]
fn runs_at_once_share_the_cache() {
    let work = tempfile::tempdir().expect("tempdir");
    let (old, new) = sparse();
    let old = copy(&old, work.path(), "old");
    settle(&[&old]);
    let want = uncached(&old, &new);
    let cache = work.path().join("cache");
    let children: Vec<_> = (0..4)
        .map(|i| {
            let p = work.path().join(format!("p{i}"));
            let child = Command::new(bin("mkpatch"))
                .args(["-q", "--cache"])
                .arg(&cache)
                .arg(&old)
                .arg(&new)
                .arg("-o")
                .arg(&p)
                .spawn()
                .expect("mkpatch starts");
            (child, p)
        })
        .collect();
    for (mut child, p) in children {
        assert!(child.wait().expect("wait").success());
        assert!(fs::read(&p).expect("p") == want);
    }
    let (_, ino) = the_entry(&cache);
    let names: Vec<_> = fs::read_dir(&cache).expect("list").collect();
    assert_eq!(names.len(), 1, "temporary files left behind");
    let p = work.path().join("p");
    cached(&cache, &old, &new, &p);
    assert_eq!(the_entry(&cache).1, ino, "the entry they left is used");
    assert!(fs::read(&p).expect("p") == want);
}

#[test]
fn no_cache_and_the_default_directory() {
    let work = tempfile::tempdir().expect("tempdir");
    let (old, new) = sparse();
    let old = copy(&old, work.path(), "old");
    settle(&[&old]);
    let xdg = work.path().join("xdg");
    let home = work.path().join("home");
    fs::create_dir_all(&xdg).expect("mkdir");
    fs::create_dir_all(&home).expect("mkdir");
    let p = work.path().join("p");
    let env = [("XDG_CACHE_HOME", xdg.as_path()), ("HOME", home.as_path())];
    mkpatch_env(&[&"--no-cache", &old, &new, &"-o", &p], &env);
    assert!(!xdg.join("anypatch").exists(), "--no-cache made a cache");
    mkpatch_env(&[&old, &new, &"-o", &p], &env);
    assert_eq!(
        entries(&xdg.join("anypatch")).len(),
        1,
        "$XDG_CACHE_HOME/anypatch"
    );
    let env = [("XDG_CACHE_HOME", Path::new("")), ("HOME", home.as_path())];
    mkpatch_env(&[&old, &new, &"-o", &p], &env);
    assert_eq!(
        entries(&home.join(".cache/anypatch")).len(),
        1,
        "~/.cache/anypatch"
    );
    assert!(fs::read(&p).expect("p") == uncached(&old, &new));
}
