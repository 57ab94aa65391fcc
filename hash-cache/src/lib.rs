//! A bounded on-disk cache of what was computed about a file: block hashes,
//! an index, a whole-file BLAKE3. It lets `mkpatch` skip reading and
//! hashing an old image it has seen before and that has not changed since.
//!
//! # What it trusts
//! An entry is a blob stored under a *file identity* ([`FileId`]: device,
//! inode, size, mtime, ctime, and when that stat was taken), a *kind* (what
//! the blob is, e.g. `"mkpatch-scan-v1"`) and *parameters* (e.g. the block
//! size). [`Cache::lookup`] returns the blob only when
//! - the file's device, inode, size, mtime and ctime now are all what they
//!   were when the entry's stat was taken, and
//! - that stat was not racy: the file's last change (mtime and ctime) was
//!   at least [`RACY_MARGIN`] older than the moment the stat was taken
//!   (git's rule: a write in the same timestamp tick as the previous one
//!   can leave the stat unchanged, so an entry made in that tick proves
//!   nothing), and
//! - the entry file is whole: its magic, version, lengths and BLAKE3
//!   checksum are right, and it names the same kind and parameters.
//!
//! Anything else is a [`Miss`], and the caller recomputes. A corrupt entry
//! is never trusted and never fatal: it is a miss, and the next
//! [`Cache::store`] for that file replaces it. Only regular files have
//! identities ([`FileId::of`] gives `None` for a block device, whose bytes
//! change without its times changing).
//!
//! # Using it
//! ```no_run
//! # fn compute(_: &std::fs::File) -> Vec<u8> { Vec::new() }
//! use anypatch_hash_cache::{Cache, FileId};
//! let file = std::fs::File::open("disk.img")?;
//! // Stat first, then read: the identity must be no younger than the bytes.
//! let id = FileId::of(&file)?.expect("a regular file");
//! let cache = Cache::open(&Cache::default_dir().expect("a home directory"))?;
//! let params = 4096u32.to_le_bytes();
//! let blob = match cache.lookup(&id, "my-index-v1", &params) {
//!     Ok(blob) => blob.to_vec(),
//!     Err(_miss) => {
//!         let blob = compute(&file);
//!         // Store only what was computed from an unchanged file.
//!         if FileId::of(&file)?.is_some_and(|now| now.same_state(&id)) {
//!             let _ = cache.store(&id, "my-index-v1", &params, &blob); // a warning at most
//!         }
//!         blob
//!     }
//! };
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//! Put a version in the kind and change it whenever the blob's layout or
//! the way it is computed changes; put everything else the blob depends on
//! in the parameters.
//!
//! # On disk
//! One file per (device, inode, kind, parameters), named by a BLAKE3 of
//! them: a changed file's entry is replaced, not added beside. Each is
//! written to a temporary file in the cache directory and renamed into
//! place, so a reader sees a whole entry or none, and two runs storing at
//! once both leave a valid one. After each store the directory is brought
//! under its bound ([`Cache::max_bytes`], default
//! [`DEFAULT_MAX_BYTES`]): least recently used entries are removed first
//! (an entry's mtime is set when it is written and when it is used). The
//! layout of an entry is in the `entry` module.
//!
//! # Memory
//! A lookup reads the entry whole: at most its file's size, which is at
//! most the bound, plus the blob it returns.
#![forbid(unsafe_code)]

mod entry;
mod evict;
mod file_id;

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub use file_id::{FileId, Time, RACY_MARGIN};

/// The default bound on the cache directory's entries, 1 GiB: the entries
/// of about 280 GiB of images at mkpatch's default block size.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

const ENTRY_SUFFIX: &str = ".entry";
const TEMP_PREFIX: &str = ".new-";
const TEMP_SUFFIX: &str = ".tmp";

/// A cache directory and its size bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    dir: PathBuf,
    max_bytes: u64,
}

/// A blob [`Cache::lookup`] found: the bytes it was stored with (see
/// [`Blob::as_slice`], or deref it to `[u8]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// The entry file's bytes; the blob is `range` of them.
    bytes: Vec<u8>,
    range: std::ops::Range<usize>,
}

impl Blob {
    /// The blob's bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[self.range.clone()]
    }
}

impl std::ops::Deref for Blob {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

/// Why [`Cache::lookup`] returned no blob. Every case means: compute it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Miss {
    /// No entry for this file, kind and parameters.
    Absent,
    /// The entry was made when the file's device, inode, size, mtime or
    /// ctime were different.
    Changed,
    /// The entry was made within [`RACY_MARGIN`] of the file's last change.
    Racy,
    /// The entry file is damaged or not an entry; it was ignored.
    Corrupt { path: PathBuf, reason: String },
    /// The entry file could not be read.
    Unreadable { path: PathBuf, source: io::Error },
}

impl fmt::Display for Miss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Absent => write!(f, "no cache entry"),
            Self::Changed => write!(f, "the file changed since its cache entry was made"),
            Self::Racy => write!(
                f,
                "the cache entry was made too soon after the file's last change to be trusted"
            ),
            Self::Corrupt { path, reason } => write!(
                f,
                "ignored the damaged cache entry {} ({reason}); it will be rewritten",
                path.display()
            ),
            Self::Unreadable { path, source } => {
                write!(
                    f,
                    "cannot read the cache entry {}: {source}",
                    path.display()
                )
            }
        }
    }
}

/// Why the cache could not be opened or an entry not stored. Never a
/// reason to fail the work the cache was for: say it and go on.
#[derive(Debug)]
#[non_exhaustive]
pub enum CacheError {
    /// The cache directory could not be created or is not a directory.
    Dir { dir: PathBuf, source: io::Error },
    /// Writing, renaming or evicting in the cache directory failed.
    Write { dir: PathBuf, source: io::Error },
    /// The entry would be larger than the whole cache may be.
    TooLarge { len: u64, max_bytes: u64 },
    /// The kind or parameters are longer than an entry can name (64 KiB, 4 GiB).
    KeyTooLong,
}

impl fmt::Display for CacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dir { dir, source } => write!(
                f,
                "cannot use the cache directory {}: {source}; give another with --cache DIR, \
                 or --no-cache",
                dir.display()
            ),
            Self::Write { dir, source } => write!(
                f,
                "cannot write to the cache directory {}: {source}; the next run will compute \
                 it again (check its permissions and free space, or use --no-cache)",
                dir.display()
            ),
            Self::TooLarge { len, max_bytes } => write!(
                f,
                "the cache entry ({len} bytes) is larger than the cache's bound \
                 ({max_bytes} bytes), so it was not kept"
            ),
            Self::KeyTooLong => write!(f, "the cache entry's kind or parameters are too long"),
        }
    }
}

impl std::error::Error for CacheError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Dir { source, .. } | Self::Write { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl Cache {
    /// `$XDG_CACHE_HOME/anypatch`, or `$HOME/.cache/anypatch` when
    /// `XDG_CACHE_HOME` is unset, empty or relative (as the XDG base
    /// directory specification says); `None` without either.
    pub fn default_dir() -> Option<PathBuf> {
        default_dir_from(std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
    }

    /// Opens the cache in `dir`, creating it (mode 0700) when missing,
    /// with the bound [`DEFAULT_MAX_BYTES`].
    pub fn open(dir: &Path) -> Result<Self, CacheError> {
        use std::os::unix::fs::DirBuilderExt;
        let err = |source| CacheError::Dir {
            dir: dir.to_owned(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
        if !std::fs::metadata(dir).map_err(err)?.is_dir() {
            return Err(err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            )));
        }
        Ok(Self {
            dir: dir.to_owned(),
            max_bytes: DEFAULT_MAX_BYTES,
        })
    }

    /// The same cache with another bound on its entries' total size.
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// The bound on the total size of the entries, in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of the entry for this file, kind and parameters (it may not
    /// exist). Exposed so that tools and tests can find an entry.
    pub fn entry_path(&self, file: &FileId, kind: &str, params: &[u8]) -> PathBuf {
        let mut h = blake3::Hasher::new_derive_key("anypatch hash-cache 2026-12-06 entry name");
        h.update(&file.dev.to_le_bytes());
        h.update(&file.ino.to_le_bytes());
        h.update(&(kind.len() as u64).to_le_bytes());
        h.update(kind.as_bytes());
        h.update(params);
        let hex = h.finalize().to_hex();
        self.dir.join(format!("{}{ENTRY_SUFFIX}", &hex[..32]))
    }

    /// The blob stored for `file` (its state now, from [`FileId::of`]),
    /// `kind` and `params`, if the entry is trusted (see the crate docs).
    /// A hit marks the entry as recently used.
    pub fn lookup(&self, file: &FileId, kind: &str, params: &[u8]) -> Result<Blob, Miss> {
        let path = self.entry_path(file, kind, params);
        let corrupt = |reason: String| Miss::Corrupt {
            path: path.clone(),
            reason,
        };
        let unreadable = |source| Miss::Unreadable {
            path: path.clone(),
            source,
        };
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Miss::Absent),
            Err(e) => return Err(unreadable(e)),
        };
        let len = f.metadata().map_err(unreadable)?.len();
        if len > self.max_bytes {
            return Err(corrupt(format!(
                "{len} bytes, more than the cache's bound of {}",
                self.max_bytes
            )));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        // Read no more than the length seen: a file growing meanwhile cannot
        // make this allocate more.
        (&mut f)
            .take(len)
            .read_to_end(&mut bytes)
            .map_err(unreadable)?;
        let e = entry::decode(&bytes).map_err(|c| corrupt(c.to_string()))?;
        if e.kind != kind.as_bytes() || e.params != params {
            return Err(corrupt("made for another kind or parameters".into()));
        }
        if !e.file.same_state(file) {
            return Err(Miss::Changed);
        }
        if e.file.is_racy() {
            return Err(Miss::Racy);
        }
        // The blob stays where it was read: an index's entries are 5 MiB
        // per GiB of image, and copying them out would cost a cached
        // `mkpatch index` as much again as reading them.
        let range = entry::blob_range(bytes.len(), e.blob.len());
        // Least recently used goes first; a failure here costs nothing but order.
        let _ = f.set_modified(SystemTime::now());
        Ok(Blob { bytes, range })
    }

    /// Stores `blob` for `file` (as it was before the blob was computed
    /// from it), `kind` and `params`, replacing any entry there, then
    /// removes least recently used entries until the cache is within its
    /// bound. Atomic: the entry is written to a temporary file in the cache
    /// directory and renamed into place.
    ///
    /// Call it only for a blob computed from the file in the state `file`
    /// describes: take [`FileId::of`] before reading and check
    /// [`FileId::same_state`] after. A racy `file` is stored as given but
    /// will never be trusted; callers may skip storing it.
    pub fn store(
        &self,
        file: &FileId,
        kind: &str,
        params: &[u8],
        blob: &[u8],
    ) -> Result<(), CacheError> {
        let bytes = entry::encode(&entry::Entry {
            file: *file,
            kind: kind.as_bytes(),
            params,
            blob,
        })
        .ok_or(CacheError::KeyTooLong)?;
        if bytes.len() as u64 > self.max_bytes {
            return Err(CacheError::TooLarge {
                len: bytes.len() as u64,
                max_bytes: self.max_bytes,
            });
        }
        let err = |source| CacheError::Write {
            dir: self.dir.clone(),
            source,
        };
        let path = self.entry_path(file, kind, params);
        let mut temp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .suffix(TEMP_SUFFIX)
            .tempfile_in(&self.dir)
            .map_err(err)?;
        // No fsync: an entry torn by a crash fails its checksum and is a miss.
        temp.write_all(&bytes).map_err(err)?;
        temp.persist(&path).map_err(|e| err(e.error))?;
        evict::evict(&self.dir, self.max_bytes, &path).map_err(err)
    }
}

/// [`Cache::default_dir`] from the values of `XDG_CACHE_HOME` and `HOME`.
fn default_dir_from(
    xdg_cache_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    if let Some(xdg) = xdg_cache_home.and_then(absolute) {
        return Some(xdg.join("anypatch"));
    }
    home.and_then(absolute)
        .map(|home| home.join(".cache").join("anypatch"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A file last changed an hour ago, and its identity taken now.
    fn settled_file(dir: &Path, name: &str, bytes: &[u8]) -> (PathBuf, FileId) {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write");
        let id = FileId::of(&File::open(&path).expect("open"))
            .expect("stat")
            .expect("regular");
        // ctime cannot be set back; an identity taken later than the change
        // is what makes an entry trusted, so move `taken` forward instead.
        let id = FileId {
            taken: Time::of(SystemTime::now() + Duration::from_secs(3)),
            ..id
        };
        (path, id)
    }

    fn cache(dir: &Path) -> Cache {
        Cache::open(&dir.join("cache")).expect("open cache")
    }

    #[test]
    fn hit_after_store() {
        let d = tempfile::tempdir().expect("tempdir");
        let (_, id) = settled_file(d.path(), "f", b"abc");
        let c = cache(d.path());
        assert!(matches!(c.lookup(&id, "k", b"p"), Err(Miss::Absent)));
        c.store(&id, "k", b"p", b"blob").expect("store");
        assert_eq!(&*c.lookup(&id, "k", b"p").expect("hit"), b"blob");
        // Another kind or parameters is another entry.
        assert!(matches!(c.lookup(&id, "k2", b"p"), Err(Miss::Absent)));
        assert!(matches!(c.lookup(&id, "k", b"q"), Err(Miss::Absent)));
    }

    #[test]
    fn any_stat_field_changed_is_a_miss() {
        let d = tempfile::tempdir().expect("tempdir");
        let (_, id) = settled_file(d.path(), "f", b"abc");
        let c = cache(d.path());
        c.store(&id, "k", b"", b"blob").expect("store");
        let later = |t: Time| Time {
            secs: t.secs + 1,
            ..t
        };
        for now in [
            FileId {
                size: id.size + 1,
                ..id
            },
            FileId {
                mtime: later(id.mtime),
                ..id
            },
            FileId {
                ctime: later(id.ctime),
                ..id
            },
        ] {
            assert!(
                matches!(c.lookup(&now, "k", b""), Err(Miss::Changed)),
                "{now:?}"
            );
        }
        // dev and inode name the entry: another file finds none.
        let other = FileId {
            ino: id.ino + 1,
            ..id
        };
        assert!(matches!(c.lookup(&other, "k", b""), Err(Miss::Absent)));
    }

    #[test]
    fn racy_entry_is_not_trusted() {
        let d = tempfile::tempdir().expect("tempdir");
        let (_, id) = settled_file(d.path(), "f", b"abc");
        let racy = FileId {
            taken: id.mtime.max(id.ctime),
            ..id
        };
        let c = cache(d.path());
        c.store(&racy, "k", b"", b"blob").expect("store");
        assert!(matches!(c.lookup(&id, "k", b""), Err(Miss::Racy)));
    }

    #[test]
    fn corrupt_entry_is_ignored_and_rewritten() {
        let d = tempfile::tempdir().expect("tempdir");
        let (_, id) = settled_file(d.path(), "f", b"abc");
        let c = cache(d.path());
        c.store(&id, "k", b"", b"blob").expect("store");
        let path = c.entry_path(&id, "k", b"");
        let mut bytes = std::fs::read(&path).expect("read");
        let n = bytes.len();
        bytes[n - 40] ^= 1;
        std::fs::write(&path, &bytes).expect("write");
        assert!(matches!(c.lookup(&id, "k", b""), Err(Miss::Corrupt { .. })));
        std::fs::write(&path, b"garbage").expect("write");
        assert!(matches!(c.lookup(&id, "k", b""), Err(Miss::Corrupt { .. })));
        c.store(&id, "k", b"", b"blob").expect("store again");
        assert_eq!(&*c.lookup(&id, "k", b"").expect("hit"), b"blob");
    }

    #[test]
    fn oversized_entry_file_is_not_read() {
        let d = tempfile::tempdir().expect("tempdir");
        let (_, id) = settled_file(d.path(), "f", b"abc");
        let c = cache(d.path()).with_max_bytes(1000);
        let path = c.entry_path(&id, "k", b"");
        File::create(&path)
            .and_then(|f| f.set_len(1 << 40))
            .expect("sparse file");
        assert!(matches!(c.lookup(&id, "k", b""), Err(Miss::Corrupt { .. })));
        assert!(matches!(
            c.store(&id, "k", b"", &[0; 2000]),
            Err(CacheError::TooLarge { .. })
        ));
    }

    #[test]
    fn full_cache_evicts_least_recently_used() {
        let d = tempfile::tempdir().expect("tempdir");
        let blob = vec![7u8; 1000];
        let ids: Vec<FileId> = (0..4)
            .map(|i| settled_file(d.path(), &format!("f{i}"), &[i]).1)
            .collect();
        let entry_len = 0x48 + 2 + 1 + 4 + 8 + blob.len() as u64 + 32;
        let c = cache(d.path()).with_max_bytes(3 * entry_len);
        let set_age = |id: &FileId, secs| {
            File::options()
                .write(true)
                .open(c.entry_path(id, "k", b""))
                .and_then(|f| f.set_modified(SystemTime::now() - Duration::from_secs(secs)))
                .expect("age");
        };
        for (age, id) in [30, 20, 10].into_iter().zip(&ids) {
            c.store(id, "k", b"", &blob).expect("store");
            set_age(id, age);
        }
        // Using the oldest makes it the most recent.
        c.lookup(&ids[0], "k", b"").expect("hit");
        c.store(&ids[3], "k", b"", &blob).expect("store");
        let kept: Vec<bool> = ids
            .iter()
            .map(|id| c.entry_path(id, "k", b"").exists())
            .collect();
        assert_eq!(kept, [true, false, true, true]);
        let total: u64 = std::fs::read_dir(c.dir())
            .expect("list")
            .map(|e| e.expect("entry").metadata().expect("stat").len())
            .sum();
        assert!(total <= c.max_bytes(), "{total}");
    }

    #[test]
    fn unwritable_dir_is_an_error_not_a_panic() {
        let d = tempfile::tempdir().expect("tempdir");
        let file = d.path().join("plain");
        std::fs::write(&file, b"x").expect("write");
        assert!(matches!(Cache::open(&file), Err(CacheError::Dir { .. })));
        assert!(matches!(
            Cache::open(&file.join("sub")),
            Err(CacheError::Dir { .. })
        ));
    }

    #[test]
    fn two_stores_at_once_leave_one_whole_entry() {
        let d = tempfile::tempdir().expect("tempdir");
        let (_, id) = settled_file(d.path(), "f", b"abc");
        let c = cache(d.path());
        let blobs: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 1 << 20]).collect();
        std::thread::scope(|s| {
            for b in &blobs {
                let (c, blobs) = (&c, &blobs);
                s.spawn(move || {
                    for _ in 0..4 {
                        c.store(&id, "k", b"", b).expect("store");
                        // A reader sees the old entry or the new one, whole:
                        // never a torn (corrupt) one.
                        match c.lookup(&id, "k", b"") {
                            Ok(got) => {
                                assert!(blobs.contains(&got.to_vec()), "a wrong blob was read")
                            }
                            Err(miss) => panic!("a store made a reader miss: {miss}"),
                        }
                    }
                });
            }
        });
        let got = c.lookup(&id, "k", b"").expect("hit");
        assert!(blobs.contains(&got.to_vec()));
        let names: Vec<_> = std::fs::read_dir(c.dir()).expect("list").collect();
        assert_eq!(names.len(), 1, "temporaries left behind");
    }

    #[test]
    fn default_dir_follows_xdg() {
        let d = |x: Option<&str>, h: Option<&str>| {
            default_dir_from(x.map(Into::into), h.map(Into::into))
        };
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(d(Some("/x"), Some("/h")), p("/x/anypatch"));
        assert_eq!(d(Some(""), Some("/h")), p("/h/.cache/anypatch"));
        assert_eq!(d(Some("rel"), Some("/h")), p("/h/.cache/anypatch"));
        assert_eq!(d(None, Some("/h")), p("/h/.cache/anypatch"));
        assert_eq!(d(None, Some("")), None);
        assert_eq!(d(None, None), None);
    }
}
