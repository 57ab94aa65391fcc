//! The output while it is written, and its commit.

use std::ffi::OsStr;
use std::fmt;
use std::fs::{File, FileType};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{linkat, renameat, unlinkat, AtFlags, Mode, OFlags, CWD};
use rustix::io::Errno;

use crate::signals::registry;

/// How a [`TempFile`] is made and named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TempOptions {
    /// The start of any name the file has before it is committed:
    /// `PREFIX` + six random characters + `SUFFIX`. Such a name exists only
    /// for a named temporary file, and for the moment between linking an
    /// unnamed one and renaming it over an existing file.
    pub prefix: String,
    /// The end of such a name, e.g. `.tmp`.
    pub suffix: String,
    /// The new file's permission bits, less the umask as the kernel applies it.
    pub mode: u32,
    /// Open the file for reading as well as writing.
    pub read: bool,
    /// Open the directory once, and create and name the file in the
    /// directory so opened: [`TempFile::commit`] then refuses
    /// ([`CommitError::DirMoved`]) when the directory's path no longer leads
    /// to it. Without it the directory is looked up by path each time.
    pub pin_dir: bool,
}

/// The output while it is written: a file in the output's directory with no
/// name (`O_TMPFILE`) where the file system and `/proc` allow, so it vanishes
/// with the process however it ends (even SIGKILL or a power cut); else a
/// named temporary file, which [`signals::interrupted`](crate::signals::interrupted)
/// removes on a signal. Dropped without [`commit`](Self::commit), it
/// leaves nothing behind.
#[derive(Debug)]
pub struct TempFile {
    file: Option<Inner>,
    dir: PathBuf,
    dir_fd: Option<OwnedFd>,
    prefix: String,
    suffix: String,
    /// A named file's path, registered with the signal handling.
    path: Option<PathBuf>,
}

#[derive(Debug)]
enum Inner {
    Unnamed(File),
    Named(tempfile::NamedTempFile),
}

/// Why [`TempFile::create`] failed.
#[derive(Debug)]
pub enum CreateError {
    /// The directory could not be opened ([`TempOptions::pin_dir`]).
    OpenDir(io::Error),
    /// No file could be created in it.
    Create(io::Error),
}

/// Why [`TempFile::commit`] did not name the file. The temporary file is
/// removed when the [`TempFile`] is dropped; the path was not touched.
#[derive(Debug)]
pub enum CommitError {
    /// Something other than a regular file is at the path now (it appeared
    /// or changed after the caller looked): renaming over it would destroy
    /// it, so it is left as it is.
    NotRegular(FileType),
    /// The directory was moved or replaced since it was opened
    /// ([`TempOptions::pin_dir`]).
    DirMoved,
    /// Linking the complete file into the directory failed.
    Link(io::Error),
    /// Renaming it over the path failed.
    Rename(io::Error),
}

impl fmt::Display for CommitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotRegular(kind) => write!(
                f,
                "{} appeared under that name, and only a regular file is replaced",
                crate::a_kind(*kind)
            ),
            Self::DirMoved => f.write_str("the directory was moved or replaced"),
            Self::Link(e) => write!(f, "cannot link the file into its directory: {e}"),
            Self::Rename(e) => write!(f, "cannot rename the file into place: {e}"),
        }
    }
}

impl std::error::Error for CommitError {}

impl TempFile {
    /// Creates the file in `dir`, the directory of the output, before any
    /// work is written. Call [`signals::on_signals`](crate::signals::on_signals)
    /// first, so a named fallback file is removed on a signal. Creation and
    /// registration with the signal handling happen under one lock, so a
    /// signal cannot fall between them.
    pub fn create(dir: &Path, opts: TempOptions) -> Result<Self, CreateError> {
        let mut r = registry();
        let dir_fd = if opts.pin_dir {
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
            let fd = rustix::fs::open(dir, flags, Mode::empty())
                .map_err(|e| CreateError::OpenDir(e.into()))?;
            Some(fd)
        } else {
            None
        };
        let mut temp = Self {
            file: None,
            dir: dir.to_path_buf(),
            dir_fd,
            prefix: opts.prefix,
            suffix: opts.suffix,
            path: None,
        };
        // Naming it at the end goes through /proc/self/fd (see `link`).
        if Path::new("/proc/self/fd").is_dir() {
            let access = if opts.read {
                OFlags::RDWR
            } else {
                OFlags::WRONLY
            };
            let flags = OFlags::TMPFILE | access | OFlags::CLOEXEC;
            let mode = Mode::from_raw_mode(opts.mode);
            let opened = match &temp.dir_fd {
                Some(fd) => rustix::fs::openat(fd, ".", flags, mode),
                None => rustix::fs::open(dir, flags, mode),
            };
            match opened {
                Ok(fd) => {
                    temp.file = Some(Inner::Unnamed(File::from(fd)));
                    return Ok(temp);
                }
                // No O_TMPFILE here (the file system or the kernel): a named file.
                Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL | Errno::NOSYS) => {}
                Err(e) => return Err(CreateError::Create(e.into())),
            }
        }
        use std::os::unix::fs::PermissionsExt;
        let file = tempfile::Builder::new()
            .prefix(&temp.prefix)
            .suffix(&temp.suffix)
            .permissions(std::fs::Permissions::from_mode(opts.mode))
            .tempfile_in(dir)
            .map_err(CreateError::Create)?;
        let path = file.path().to_path_buf();
        r.temp_files.push(path.clone());
        temp.path = Some(path);
        temp.file = Some(Inner::Named(file));
        Ok(temp)
    }

    /// The open file, to write the output into.
    pub fn file(&self) -> &File {
        match self
            .file
            .as_ref()
            .expect("the file is only taken by commit, which consumes self")
        {
            Inner::Unnamed(f) => f,
            Inner::Named(f) => f.as_file(),
        }
    }

    /// Whether the file has no name (`O_TMPFILE`).
    pub fn is_unnamed(&self) -> bool {
        matches!(self.file, Some(Inner::Unnamed(_)))
    }

    /// The directory as opened with [`TempOptions::pin_dir`], for other
    /// files that must go in the same directory (through
    /// `/proc/self/fd/N`); `None` without it.
    pub fn dir_fd(&self) -> Option<BorrowedFd<'_>> {
        self.dir_fd.as_ref().map(AsFd::as_fd)
    }

    /// What messages call the file: "the temporary file PATH", or "the
    /// (unnamed) temporary file in DIR".
    pub fn describe(&self) -> String {
        match &self.path {
            Some(p) => format!("the temporary file {}", p.display()),
            None => format!("the (unnamed) temporary file in {}", self.dir.display()),
        }
    }

    /// Names the complete file `name` in its directory; call it last, after
    /// the file is written, given its owner and mode, and synced. A new name
    /// is linked directly, so no temporary name ever exists; an existing
    /// regular file is replaced atomically by linking under a temporary
    /// name and renaming over it. Anything else at `name` is left alone
    /// ([`CommitError::NotRegular`]). Under the signal handling's lock, so a
    /// signal is handled either before (a named file is removed) or after
    /// (the output is complete, [`Interruption::Finished`]).
    ///
    /// [`Interruption::Finished`]: crate::signals::Interruption::Finished
    pub fn commit(mut self, name: &OsStr) -> Result<(), CommitError> {
        let mut r = registry();
        let target = self.dir.join(name);
        if let Ok(meta) = std::fs::symlink_metadata(&target) {
            if !meta.is_file() {
                return Err(CommitError::NotRegular(meta.file_type()));
            }
        }
        if let Some(fd) = &self.dir_fd {
            let opened = rustix::fs::fstat(fd).map(|s| (s.st_dev, s.st_ino));
            let now = std::fs::metadata(&self.dir).map(|m| (m.dev(), m.ino()));
            if opened.ok() != now.ok() {
                return Err(CommitError::DirMoved);
            }
        }
        let result = match self.file.take().expect("commit runs once") {
            Inner::Named(file) => file
                .persist(&target)
                .map(drop)
                .map_err(|e| CommitError::Rename(e.error)),
            Inner::Unnamed(file) => self.name_unnamed(&file, name),
        };
        if let Some(path) = &self.path {
            r.temp_files.retain(|p| p != path);
        }
        if result.is_ok() {
            r.committed = true;
        }
        result
    }

    /// Where a name in the directory is: relative to the opened directory,
    /// or a path.
    fn at<'a>(&'a self, name: &'a OsStr) -> (BorrowedFd<'a>, PathBuf) {
        match &self.dir_fd {
            Some(fd) => (fd.as_fd(), PathBuf::from(name)),
            None => (CWD, self.dir.join(name)),
        }
    }

    fn name_unnamed(&self, file: &File, name: &OsStr) -> Result<(), CommitError> {
        let (at, target) = self.at(name);
        match link(file, at, &target) {
            Err(Errno::EXIST) => {}
            done => return done.map_err(|e| CommitError::Link(e.into())),
        }
        // The name appeared since the caller looked: still never rename
        // over anything but a regular file.
        if let Ok(meta) = std::fs::symlink_metadata(self.dir.join(name)) {
            if !meta.is_file() {
                return Err(CommitError::NotRegular(meta.file_type()));
            }
        }
        // Only a SIGKILL between the link and the rename leaves the temporary name.
        let mut last = Errno::EXIST;
        for _ in 0..64 {
            let temp_name = format!("{}{:06x}{}", self.prefix, random24(), self.suffix);
            let (_, temp) = self.at(OsStr::new(&temp_name));
            match link(file, at, &temp) {
                Err(Errno::EXIST) => continue,
                Err(e) => {
                    last = e;
                    break;
                }
                Ok(()) => {}
            }
            return renameat(at, &temp, at, &target).map_err(|e| {
                let _ = unlinkat(at, &temp, AtFlags::empty());
                CommitError::Rename(e.into())
            });
        }
        Err(CommitError::Link(last.into()))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let mut r = registry();
        drop(self.file.take());
        if let Some(path) = &self.path {
            r.temp_files.retain(|p| p != path);
        }
    }
}

/// Gives the unnamed `file` the name `to` (relative to `at`): through
/// /proc/self/fd with `AT_SYMLINK_FOLLOW`, which needs no privilege, or
/// `AT_EMPTY_PATH` (which needs CAP_DAC_READ_SEARCH) where that fails.
fn link(file: &File, at: BorrowedFd<'_>, to: &Path) -> Result<(), Errno> {
    let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    linkat(CWD, &proc_path, at, to, AtFlags::SYMLINK_FOLLOW).or_else(|e| match e {
        Errno::EXIST => Err(e),
        _ => linkat(file, "", at, to, AtFlags::EMPTY_PATH),
    })
}

/// 24 random bits for a temporary name: the std hasher's keys are random.
fn random24() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish() & 0xFF_FFFF
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn opts(pin_dir: bool) -> TempOptions {
        TempOptions {
            prefix: ".out.".into(),
            suffix: ".tmp".into(),
            mode: 0o640,
            read: true,
            pin_dir,
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn nothing_is_named_until_commit() {
        for pin in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let t = TempFile::create(dir.path(), opts(pin)).expect("create");
            assert!(t.is_unnamed(), "O_TMPFILE works on the test's file system");
            assert_eq!(t.dir_fd().is_some(), pin);
            t.file().write_all(b"whole").expect("write");
            assert!(names(dir.path()).is_empty());
            drop(t);
            assert!(
                names(dir.path()).is_empty(),
                "a dropped temp leaves nothing"
            );
        }
    }

    #[test]
    fn commit_creates_or_replaces_a_regular_file() {
        for pin in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let t = TempFile::create(dir.path(), opts(pin)).expect("create");
            t.file().write_all(b"one").expect("write");
            t.commit(OsStr::new("out")).expect("commit new");
            let out = dir.path().join("out");
            assert_eq!(std::fs::read(&out).expect("read"), b"one");
            let umask_applied = std::fs::metadata(&out).expect("stat").mode() & 0o777;
            assert_eq!(umask_applied & !0o640, 0, "mode 0640 less the umask");

            let t = TempFile::create(dir.path(), opts(pin)).expect("create");
            t.file().write_all(b"two").expect("write");
            t.commit(OsStr::new("out")).expect("commit over");
            assert_eq!(std::fs::read(&out).expect("read"), b"two");
            assert_eq!(names(dir.path()), ["out"], "no temporary name is left");
        }
    }

    #[test]
    fn commit_leaves_anything_but_a_regular_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").expect("write");
        std::os::unix::fs::symlink(&target, dir.path().join("link")).expect("symlink");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        for name in ["link", "sub"] {
            let t = TempFile::create(dir.path(), opts(false)).expect("create");
            let err = t.commit(OsStr::new(name)).expect_err("refused");
            assert!(matches!(err, CommitError::NotRegular(_)), "{name}: {err}");
        }
        assert!(std::fs::symlink_metadata(dir.path().join("link"))
            .expect("stat")
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&target).expect("read"), b"keep");
        assert_eq!(names(dir.path()), ["link", "sub", "target"]);
    }

    #[test]
    fn a_pinned_directory_that_moved_is_refused() {
        let top = tempfile::tempdir().expect("tempdir");
        let dir = top.path().join("d");
        std::fs::create_dir(&dir).expect("mkdir");
        let t = TempFile::create(&dir, opts(true)).expect("create");
        std::fs::rename(&dir, top.path().join("moved")).expect("move");
        std::fs::create_dir(&dir).expect("mkdir again");
        let err = t.commit(OsStr::new("out")).expect_err("refused");
        assert!(matches!(err, CommitError::DirMoved), "{err}");
        assert!(names(&dir).is_empty() && names(&top.path().join("moved")).is_empty());
    }

    #[test]
    fn the_mode_is_given_at_creation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut o = opts(false);
        o.mode = 0o600;
        let t = TempFile::create(dir.path(), o).expect("create");
        let mode = t.file().metadata().expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode & !0o600, 0);
    }
}
