//! The hash cache behind `mkpatch --from-index` (issue 16): what the scan
//! computed about the new file is kept, a second patch from an index with
//! the same seed to the unchanged new file uses it and is byte-identical
//! to one made without a cache, and a new file touched or rewritten in
//! place (its mtime put back) is scanned again.
//!
//! Whether a run used an entry shows in the cache directory, as in
//! `hash_cache.rs`: a hit leaves the entry file as it is (same inode), a
//! miss writes a new one and renames it into place (a new inode).

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anypatch_tests::{bin, corpus_small};

/// Runs mkpatch with `args`; asserts it succeeded.
fn mkpatch(args: &[&dyn AsRef<std::ffi::OsStr>]) {
    let mut cmd = Command::new(bin("mkpatch"));
    cmd.arg("-q");
    for a in args {
        cmd.arg(a);
    }
    let out = cmd.output().expect("mkpatch runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `mkpatch --cache CACHE --from-index INDEX NEW -o OUT`, or with
/// `--no-cache` when `cache` is `None`; returns the patch.
fn from_index(cache: Option<&Path>, index: &Path, new: &Path, out: &Path) -> Vec<u8> {
    match cache {
        Some(c) => mkpatch(&[&"--cache", &c, &"--from-index", &index, &new, &"-o", &out]),
        None => mkpatch(&[&"--no-cache", &"--from-index", &index, &new, &"-o", &out]),
    }
    fs::read(out).expect("the patch")
}

/// Waits until the file's last change is more than the cache's racy
/// margin (2 s) in the past, so that an entry made now is trusted (a
/// precondition, not a timing assertion).
fn settle(path: &Path) {
    let m = fs::metadata(path).expect("stat");
    let t = |s: i64, n: i64| UNIX_EPOCH + Duration::new(s as u64, n as u32);
    let changed = t(m.mtime(), m.mtime_nsec()).max(t(m.ctime(), m.ctime_nsec()));
    if let Ok(wait) = (changed + Duration::from_millis(2200)).duration_since(SystemTime::now()) {
        std::thread::sleep(wait);
    }
}

/// Sets `path`'s mtime to `t` (which also sets its ctime to now).
fn set_mtime(path: &Path, t: SystemTime) {
    fs::File::options()
        .write(true)
        .open(path)
        .expect("open")
        .set_modified(t)
        .expect("set mtime");
}

/// The one entry in the cache, and its inode.
fn the_entry(cache: &Path) -> (PathBuf, u64) {
    let e: Vec<PathBuf> = fs::read_dir(cache)
        .map(|d| d.map(|e| e.expect("dir entry").path()).collect())
        .unwrap_or_default();
    let e: Vec<PathBuf> = e
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "entry"))
        .collect();
    assert_eq!(e.len(), 1, "entries: {e:?}");
    let ino = fs::metadata(&e[0]).expect("stat").ino();
    (e[0].clone(), ino)
}

/// A copy of the small corpus pair `pair`'s new file in `dir`, and the
/// index of its old file.
fn setup(dir: &Path, pair: &str) -> (PathBuf, PathBuf) {
    let c = corpus_small();
    let new = dir.join(format!("{pair}.new"));
    fs::copy(c.join(format!("{pair}.new")), &new).expect("copy");
    let index = dir.join(format!("{pair}.apidx"));
    mkpatch(&[
        &"--no-cache",
        &"index",
        &c.join(format!("{pair}.old")),
        &"-o",
        &index,
    ]);
    (new, index)
}

#[test]
fn a_second_patch_from_an_index_uses_the_new_files_entry_and_is_identical() {
    let work = tempfile::tempdir().expect("tempdir");
    for pair in ["sparse", "shift", "moved", "ext4"] {
        let (new, index) = setup(work.path(), pair);
        settle(&new);
        let cache = work.path().join(format!("cache-{pair}"));
        let p = work.path().join(format!("{pair}.p"));
        let want = from_index(None, &index, &new, &p);
        let first = from_index(Some(&cache), &index, &new, &p);
        let (_, ino) = the_entry(&cache);
        let second = from_index(Some(&cache), &index, &new, &p);
        assert_eq!(the_entry(&cache).1, ino, "{pair}: the entry was not used");
        assert!(
            first == want && second == want,
            "{pair}: a patch made with the cache differs"
        );
        // In place, from the same entry: the same as without a cache.
        let inplace = |cache: Option<&Path>| {
            let o = work.path().join(format!("{pair}.ip"));
            match cache {
                Some(c) => mkpatch(&[
                    &"--cache",
                    &c,
                    &"--in-place",
                    &"--from-index",
                    &index,
                    &new,
                    &"-o",
                    &o,
                ]),
                None => mkpatch(&[
                    &"--no-cache",
                    &"--in-place",
                    &"--from-index",
                    &index,
                    &new,
                    &"-o",
                    &o,
                ]),
            }
            fs::read(&o).expect("patch")
        };
        assert!(
            inplace(Some(&cache)) == inplace(None),
            "{pair}: --in-place with the cache differs"
        );
        assert_eq!(the_entry(&cache).1, ino, "{pair}: the entry was not used");
    }
}

#[test]
fn a_touched_new_file_is_scanned_again() {
    let work = tempfile::tempdir().expect("tempdir");
    let (new, index) = setup(work.path(), "sparse");
    settle(&new);
    let cache = work.path().join("cache");
    let p = work.path().join("p");
    from_index(Some(&cache), &index, &new, &p);
    let (_, first) = the_entry(&cache);
    // touch: another mtime (and ctime), same bytes.
    set_mtime(&new, SystemTime::now() - Duration::from_secs(3600));
    settle(&new);
    let want = from_index(None, &index, &new, &p);
    assert!(from_index(Some(&cache), &index, &new, &p) == want);
    let (_, second) = the_entry(&cache);
    assert_ne!(second, first, "after touch the entry must be made again");
}

#[test]
fn a_new_file_rewritten_in_place_with_its_mtime_restored_is_caught_by_ctime() {
    let work = tempfile::tempdir().expect("tempdir");
    let (new, index) = setup(work.path(), "sparse");
    settle(&new);
    let cache = work.path().join("cache");
    let p = work.path().join("p");
    let before = from_index(Some(&cache), &index, &new, &p);
    the_entry(&cache);
    // Old's bytes over new's, in place (same inode and size), mtime put
    // back: only ctime tells. The stale entry would make `before` again.
    let m = fs::metadata(&new).expect("stat");
    let old = fs::read(corpus_small().join("sparse.old")).expect("old");
    assert_eq!(old.len() as u64, m.len(), "a same-size rewrite");
    let f = fs::File::options().write(true).open(&new).expect("open");
    f.write_all_at(&old, 0).expect("write");
    f.set_modified(m.modified().expect("mtime"))
        .expect("restore mtime");
    drop(f);
    let now = fs::metadata(&new).expect("stat");
    assert_eq!((now.ino(), now.len()), (m.ino(), m.len()));
    assert_eq!(now.modified().expect("mtime"), m.modified().expect("mtime"));
    let want = from_index(None, &index, &new, &p);
    assert!(want != before, "the rewrite changes the patch");
    assert!(
        from_index(Some(&cache), &index, &new, &p) == want,
        "the entry of the new file's earlier bytes was used"
    );
}

#[test]
fn a_new_file_whose_last_change_is_not_in_the_past_is_not_kept() {
    let work = tempfile::tempdir().expect("tempdir");
    let (new, index) = setup(work.path(), "sparse");
    // An mtime an hour ahead: the file's last change is within the racy
    // margin of any stat taken in the next hour (a write later in the same
    // timestamp tick would not show), so no entry may be kept.
    set_mtime(&new, SystemTime::now() + Duration::from_secs(3600));
    let cache = work.path().join("cache");
    let p = work.path().join("p");
    let want = from_index(None, &index, &new, &p);
    assert!(from_index(Some(&cache), &index, &new, &p) == want);
    let entries = fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0);
    assert_eq!(entries, 0, "a racy state was kept");
    // Its last change an hour ago instead: kept.
    set_mtime(&new, SystemTime::now() - Duration::from_secs(3600));
    settle(&new);
    assert!(from_index(Some(&cache), &index, &new, &p) == want);
    the_entry(&cache);
}
