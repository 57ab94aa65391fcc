//! `-o`: the new image written to a path, and the checks on OLD, the patch
//! and the output that come before any work.
//!
//! The output is one of:
//! - a regular file, new or replaced: a temporary file beside it, unnamed
//!   (`O_TMPFILE`) where the file system allows, so even SIGKILL leaves
//!   nothing; written sparse (all-zero blocks stay holes), fsynced, named
//!   and renamed over the path.
//!   A symlink to a regular file is followed: the file it points to is
//!   replaced and the link stays.
//! - a block device: the whole patch is verified against OLD first with
//!   nothing written, then the image is written from offset 0, synced, and
//!   read back and hashed against the new BLAKE3. Bytes of the device after
//!   the image are left as they are; a device smaller than the image is
//!   refused before anything is written.
//!
//! Anything else (a directory, a FIFO, a character device, a socket) is
//! refused before the patch is read, as is an output that is OLD or the
//! patch itself (same device and inode, so links count). Nothing is ever
//! renamed over a path that is not a regular file.
//!
//! A signal handler calls [`interrupted`] to remove the temporary file of a
//! run that is stopped midway.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use anypatch_apply::format::Header;
use anypatch_apply::{Applier, Config, Progress, Summary};
use tempfile::NamedTempFile;

use crate::{
    drive, explain_wrong_base, file_len, io_err, open_old, DriveError, NullSink, PatchSource,
    Policy, Sink,
};

/// New files are written in blocks of this size, aligned to the file's
/// start; a block that is all zeros is not written and stays a hole.
const HOLE_BLOCK: u64 = 0x1000;
/// Zeros written per call where a device cannot zero a range itself.
const ZERO_CHUNK: usize = 0x10_0000;
/// Device bytes hashed per read when reading the written image back.
const READBACK_CHUNK: usize = 0x10_0000;
/// Bytes of the output's name kept in its temporary file's name: with the
/// dots, the random part and the suffix (23 bytes) it stays far below the
/// usual 255-byte limit on a name.
const TEMP_NAME_KEEP: usize = 128;

/// Where `-o` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputTarget {
    /// A regular file at this path (a symlink already resolved), created or
    /// replaced by renaming a temporary file over it.
    File(PathBuf),
    /// A block device, written in place from offset 0.
    Device {
        /// The device node as given.
        path: PathBuf,
        /// The device's size in bytes.
        len: u64,
    },
}

/// What `-o` did.
#[derive(Debug, Clone)]
pub struct Written {
    /// The engine's summary, except `bytes_written`: the bytes the output
    /// actually received (a new file's all-zero blocks are holes and not
    /// counted; a device's zero runs are written and counted).
    pub summary: Summary,
    /// Where the image went.
    pub target: OutputTarget,
}

/// What a signal handler must undo or report before the process exits.
struct Undo {
    /// Temporary files that must not outlive the process.
    temp_files: Vec<PathBuf>,
    /// A device that is being written: it holds part of the new image.
    device: Option<PathBuf>,
    /// The new image is complete and in place (renamed, or written and
    /// read back): a signal can no longer change the outcome.
    committed: bool,
}

static UNDO: Mutex<Undo> = Mutex::new(Undo {
    temp_files: Vec::new(),
    device: None,
    committed: false,
});

/// Set once [`interrupted`] has decided about a signal; the
/// `ANYPATCH_TEST_STOP_AFTER_COMMIT` hook waits for it.
static SIGNAL_DECIDED: AtomicBool = AtomicBool::new(false);

/// What a signal means for this run, as [`interrupted`] decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interruption {
    /// The new image is already complete and in place: the signal came too
    /// late to change anything, so the run goes on and reports success.
    Finished,
    /// End the process now. The temporary file, if any, is removed; each
    /// string is a sentence the user should read.
    Stop(Vec<String>),
}

fn undo() -> MutexGuard<'static, Undo> {
    // A panic elsewhere must not stop the cleanup.
    UNDO.lock().unwrap_or_else(PoisonError::into_inner)
}

/// For a signal handler: decides what a signal does to this run. Once the
/// output is committed the run finishes as if no signal had come
/// ([`Interruption::Finished`]). Before that, it removes the temporary
/// output file, if any, and returns what the user should know; the registry
/// then stays locked, so no new temporary file can be made or renamed
/// afterwards: on [`Interruption::Stop`], exit.
pub fn interrupted() -> Interruption {
    let mut u = undo();
    SIGNAL_DECIDED.store(true, Ordering::SeqCst);
    if u.committed {
        return Interruption::Finished;
    }
    let mut notes = Vec::new();
    for p in u.temp_files.drain(..) {
        if fs::remove_file(&p).is_ok() {
            notes.push(format!("removed the temporary file {}", p.display()));
        }
    }
    if let Some(d) = &u.device {
        notes.push(format!(
            "{} holds part of the new image; run the same command again to write it whole",
            d.display()
        ));
    }
    std::mem::forget(u);
    Interruption::Stop(notes)
}

/// Marks the new image as complete and in place; call it with the
/// registry's lock held, in the same critical section as the commit.
fn commit(u: &mut Undo) {
    u.committed = true;
    u.device = None;
}

/// Test hook: with `ANYPATCH_TEST_STOP_AFTER_COMMIT=1`, the process stops
/// itself (SIGSTOP) right after the output is committed, so a test can send
/// a signal at exactly that point; once continued, it waits (at most 10 s)
/// for the signal handler to decide, so the outcome does not depend on
/// which thread runs first. Nothing happens otherwise.
fn stop_after_commit_for_tests() {
    if std::env::var_os("ANYPATCH_TEST_STOP_AFTER_COMMIT").is_none() {
        return;
    }
    let me = rustix::process::getpid();
    let _ = rustix::process::kill_process(me, rustix::process::Signal::STOP);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !SIGNAL_DECIDED.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The new image while it is written, in NEW's directory.
enum TempFile {
    /// `O_TMPFILE`: a file without a name, which vanishes with the process
    /// however it ends (SIGKILL, power cut), until `persist` names it.
    Unnamed(File),
    /// Where the file system has no `O_TMPFILE`: a named file, registered
    /// with [`interrupted`].
    Named(NamedTempFile),
}

/// A temporary file for the new image; removed (a named one also
/// unregistered) when dropped.
struct Temp {
    file: Option<TempFile>,
    dir: PathBuf,
    /// `.NAME.`, NAME cut to [`TEMP_NAME_KEEP`] bytes.
    prefix: String,
    /// A named file's path, registered with [`interrupted`].
    path: Option<PathBuf>,
}

impl Temp {
    /// Creates the temporary file in `dir` with permissions `mode` less the
    /// umask: unnamed where the file system allows (`O_TMPFILE`), else as
    /// `.NAME.XXXXXX.applypatch-tmp`, NAME cut to [`TEMP_NAME_KEEP`] bytes so
    /// a name near the file system's limit still has a temporary file.
    /// Creation and registration happen under the registry's lock, so a
    /// signal cannot fall between them.
    fn create(dir: &Path, name: &str, mode: u32) -> Result<Self, DriveError> {
        use rustix::fs::{Mode, OFlags};
        use rustix::io::Errno;
        use std::os::unix::fs::PermissionsExt;
        let mut u = undo();
        let mut keep = name.len().min(TEMP_NAME_KEEP);
        while !name.is_char_boundary(keep) {
            keep -= 1;
        }
        let prefix = format!(".{}.", &name[..keep]);
        let failed = || format!("cannot create a temporary file in {}", dir.display());
        // Naming it at the end goes through /proc/self/fd (see `link`).
        if Path::new("/proc/self/fd").is_dir() {
            let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
            match rustix::fs::open(dir, flags, Mode::from_raw_mode(mode)) {
                Ok(fd) => {
                    return Ok(Self {
                        file: Some(TempFile::Unnamed(File::from(fd))),
                        dir: dir.to_path_buf(),
                        prefix,
                        path: None,
                    })
                }
                // No O_TMPFILE here (the file system or the kernel): a named file.
                Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL | Errno::NOSYS) => {}
                Err(e) => return Err(io_err(failed())(e.into())),
            }
        }
        let file = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(".applypatch-tmp")
            .permissions(fs::Permissions::from_mode(mode))
            .tempfile_in(dir)
            .map_err(io_err(failed()))?;
        let path = file.path().to_path_buf();
        u.temp_files.push(path.clone());
        Ok(Self {
            file: Some(TempFile::Named(file)),
            dir: dir.to_path_buf(),
            prefix,
            path: Some(path),
        })
    }

    fn as_file(&self) -> &File {
        match self
            .file
            .as_ref()
            .expect("the file is only taken by persist, which consumes self")
        {
            TempFile::Unnamed(f) => f,
            TempFile::Named(f) => f.as_file(),
        }
    }

    /// What messages call it: "the temporary file PATH".
    fn describe(&self) -> String {
        match &self.path {
            Some(p) => format!("the temporary file {}", p.display()),
            None => format!("the (unnamed) temporary file in {}", self.dir.display()),
        }
    }

    /// Puts the file at `to`: an unnamed file is linked into its directory
    /// under a temporary name and renamed over `to`, a named one renamed.
    /// Under the registry's lock, so a signal handler either comes before
    /// (and removes a named file) or finds the output committed.
    fn persist(mut self, to: &Path) -> Result<(), DriveError> {
        let mut u = undo();
        let rename_failed = |source| DriveError::Io {
            action: format!("cannot rename the new image into {}", to.display()),
            source,
        };
        let result = match self.file.take().expect("persist runs once") {
            TempFile::Named(file) => file
                .persist(to)
                .map(drop)
                .map_err(|e| rename_failed(e.error)),
            TempFile::Unnamed(file) => self.link(&file).and_then(|named| {
                fs::rename(&named, to).map_err(|e| {
                    let _ = fs::remove_file(&named);
                    rename_failed(e)
                })
            }),
        };
        if let Some(path) = &self.path {
            u.temp_files.retain(|p| p != path);
        }
        if result.is_ok() {
            commit(&mut u);
        }
        result
    }

    /// Gives the unnamed `file` a fresh `.NAME.XXXXXX.applypatch-tmp` name
    /// in its directory: through /proc/self/fd with `AT_SYMLINK_FOLLOW`,
    /// which needs no privilege, or `AT_EMPTY_PATH` (which needs
    /// CAP_DAC_READ_SEARCH) where that fails. The caller holds the
    /// registry's lock, so no signal handler runs while the name exists.
    fn link(&self, file: &File) -> Result<PathBuf, DriveError> {
        use rustix::fs::{linkat, AtFlags, CWD};
        use rustix::io::Errno;
        use std::hash::{BuildHasher, Hasher};
        use std::os::fd::AsRawFd;
        let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
        let mut last = Errno::EXIST;
        for _ in 0..64 {
            // Random enough for a name: the hasher's keys are random.
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            let name = self.dir.join(format!(
                "{}{:06x}.applypatch-tmp",
                self.prefix,
                h.finish() & 0xFF_FFFF
            ));
            let linked =
                linkat(CWD, &proc_path, CWD, &name, AtFlags::SYMLINK_FOLLOW).or_else(|e| match e {
                    Errno::EXIST => Err(e),
                    _ => linkat(file, "", CWD, &name, AtFlags::EMPTY_PATH),
                });
            match linked {
                Ok(()) => return Ok(name),
                Err(Errno::EXIST) => continue,
                Err(e) => {
                    last = e;
                    break;
                }
            }
        }
        Err(DriveError::Io {
            action: format!("cannot give the new image a name in {}", self.dir.display()),
            source: last.into(),
        })
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let mut u = undo();
        drop(self.file.take());
        if let Some(path) = &self.path {
            u.temp_files.retain(|p| p != path);
        }
    }
}

/// Marks `path` as being written while alive, for [`interrupted`]'s note.
struct DeviceWriting;

impl DeviceWriting {
    fn start(path: &Path) -> Self {
        undo().device = Some(path.to_path_buf());
        Self
    }
}

impl Drop for DeviceWriting {
    fn drop(&mut self) {
        undo().device = None;
    }
}

/// Checks that `meta` is something applypatch can read at any offset: a
/// regular file or a block device. `what` names it ("old file ...").
pub(crate) fn check_seekable_input(meta: &Metadata, what: &str) -> Result<(), DriveError> {
    let t = meta.file_type();
    let kind = if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_socket() {
        "a socket"
    } else {
        return Ok(());
    };
    Err(DriveError::Refused(format!(
        "{what} is {kind}: applypatch reads the old image at any offset, so it must be a regular file or a block device"
    )))
}

/// Opens OLD for reading without blocking on a FIFO: the type is checked
/// on the path first and again on the open file.
pub(crate) fn open_seekable_input(path: &Path) -> Result<File, DriveError> {
    let what = format!("the old file {}", path.display());
    let meta =
        fs::metadata(path).map_err(io_err(format!("cannot open old file {}", path.display())))?;
    check_seekable_input(&meta, &what)?;
    // O_NONBLOCK: if the path became a FIFO since the check, opening it
    // must not wait for a writer; the check on the open file refuses it.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(io_err(format!("cannot open old file {}", path.display())))?;
    let meta = file
        .metadata()
        .map_err(io_err(format!("cannot stat old file {}", path.display())))?;
    check_seekable_input(&meta, &what)?;
    let flags = rustix::fs::fcntl_getfl(&file)
        .and_then(|f| rustix::fs::fcntl_setfl(&file, f - rustix::fs::OFlags::NONBLOCK))
        .map_err(io::Error::from);
    flags.map_err(io_err(format!("cannot open old file {}", path.display())))?;
    Ok(file)
}

/// What a file is, for telling whether two paths are the same file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    /// The device a block device node stands for: two nodes of one disk
    /// have different inodes but the same `rdev`.
    block_rdev: Option<u64>,
}

impl FileId {
    fn of(meta: &Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            block_rdev: meta.file_type().is_block_device().then(|| meta.rdev()),
        }
    }

    fn same(&self, other: &Self) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
            || (self.block_rdev.is_some() && self.block_rdev == other.block_rdev)
    }
}

impl PatchSource {
    /// The patch's metadata: the file's for a path, stdin's for `-`.
    fn metadata(&self) -> Result<Metadata, DriveError> {
        match self {
            Self::Path(p) => {
                fs::metadata(p).map_err(io_err(format!("cannot open patch {}", p.display())))
            }
            Self::Stdin => io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .map(File::from)
                .and_then(|f| f.metadata())
                .map_err(io_err("cannot stat stdin")),
        }
    }
}

/// Decides where `-o new` writes, refusing what would destroy OLD, the
/// patch or something that is not an image file, before any work.
pub fn resolve_output(
    new: &Path,
    old: &Metadata,
    patch: &PatchSource,
) -> Result<OutputTarget, DriveError> {
    let shown = new.display();
    if new == Path::new("-") || through_fd_link(new) {
        return Err(DriveError::Refused(format!(
            "the output {shown} is a stream (stdout, or another open file descriptor): applypatch writes the image at any offset and cannot write to a stream. Give a file or device path. Nothing was written"
        )));
    }
    if new.as_os_str().as_encoded_bytes().ends_with(b"/") || new.file_name().is_none() {
        return Err(DriveError::Refused(format!(
            "the output {shown} names a directory; give the new image's file name"
        )));
    }
    let (path, meta) = match fs::symlink_metadata(new) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let dir = parent_dir(new);
            return match fs::metadata(&dir) {
                Ok(m) if m.is_dir() => Ok(OutputTarget::File(new.to_path_buf())),
                Ok(_) => Err(DriveError::Refused(format!(
                    "cannot write {shown}: {} is not a directory",
                    dir.display()
                ))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Err(DriveError::Refused(format!(
                    "cannot write {shown}: the directory {} does not exist; create it first",
                    dir.display()
                ))),
                Err(e) => Err(DriveError::Io {
                    action: format!("cannot use the directory {}", dir.display()),
                    source: e,
                }),
            };
        }
        Err(e) => {
            return Err(DriveError::Io {
                action: format!("cannot stat the output {shown}"),
                source: e,
            })
        }
        Ok(m) if m.file_type().is_symlink() => {
            // Replace the file the link points to; the link stays a link.
            let real = fs::canonicalize(new).map_err(|e| {
                DriveError::Refused(format!(
                    "the output {shown} is a symlink that does not lead to a file ({e}); remove it or give another path"
                ))
            })?;
            let meta = fs::metadata(&real)
                .map_err(io_err(format!("cannot stat the output {}", real.display())))?;
            (real, meta)
        }
        Ok(m) => (new.to_path_buf(), m),
    };
    let id = FileId::of(&meta);
    if id.same(&FileId::of(old)) {
        return Err(DriveError::Refused(
            "the output is the old file itself; use --in-place to patch a file in place".into(),
        ));
    }
    if id.same(&FileId::of(&patch.metadata()?)) {
        return Err(DriveError::Refused(format!(
            "the output {shown} is the patch file itself; writing it would destroy the patch: give another -o path"
        )));
    }
    let t = meta.file_type();
    if t.is_block_device() {
        if let Some(why) = device_holds_old(meta.rdev(), old) {
            return Err(DriveError::Refused(format!(
                "the output {shown} {why}: writing it would destroy the old image while it is read. Nothing was written"
            )));
        }
    }
    if t.is_file() || t.is_block_device() {
        // The same bytes under another name: a loop device and the file
        // behind it, or two loop devices over one file.
        let out = stores(&meta);
        if let Some(why) = shared(&out, &stores(old)) {
            return Err(DriveError::Refused(format!(
                "the output {shown} is the old image under another name ({why}): writing it would destroy the old image while it is read. Nothing was written"
            )));
        }
        if let Some(why) = shared(&out, &stores(&patch.metadata()?)) {
            return Err(DriveError::Refused(format!(
                "the output {shown} is the patch under another name ({why}): writing it would destroy the patch while it is read. Nothing was written"
            )));
        }
    }
    if t.is_file() {
        return Ok(OutputTarget::File(path));
    }
    if t.is_block_device() {
        return Ok(OutputTarget::Device {
            path,
            len: 0, // sized when opened for writing
        });
    }
    let kind = if t.is_dir() {
        return Err(DriveError::Refused(format!(
            "the output {shown} is a directory; give the new image's file name, e.g. {}",
            new.join("new.img").display()
        )));
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else {
        "a socket"
    };
    Err(DriveError::Refused(format!(
        "the output {shown} is {kind}; -o writes a regular file or a block device. Nothing was written"
    )))
}

/// Whether the block device `rdev` holds OLD's bytes under another name:
/// OLD is a partition of it or the disk it is a partition of, OLD is a
/// file on a file system on it (or on one of its partitions), or it is a
/// loop device backed by OLD. Each of these passes the same-file check,
/// and writing would overwrite OLD while it is read. Read from sysfs; where
/// sysfs is missing, only the same-file check applies.
fn device_holds_old(rdev: u64, old: &Metadata) -> Option<&'static str> {
    let sys = |dev: u64| {
        let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
        fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()
    };
    let out = sys(rdev)?;
    // A partition's sysfs directory lies inside its disk's.
    let overlaps = |dev: u64| sys(dev).is_some_and(|d| d.starts_with(&out) || out.starts_with(&d));
    if old.file_type().is_block_device() {
        return overlaps(old.rdev())
            .then_some("is the disk or a partition that holds the old image");
    }
    if overlaps(old.dev()) {
        return Some("holds the file system the old image is on");
    }
    let backing = fs::read_to_string(out.join("loop/backing_file")).ok()?;
    let backing = fs::metadata(backing.trim_end_matches('\n')).ok()?;
    ((backing.dev(), backing.ino()) == (old.dev(), old.ino()))
        .then_some("is a loop device backed by the old image")
}

/// Whether `path`, or a symlink it leads through, names an entry of a
/// process's file descriptor table (`/dev/stdout`, `/dev/fd/N`,
/// `/proc/PID/fd/N`): a stream that is already open, not a place to write a
/// file. Each link's directory is resolved, so other names for those
/// directories count too.
fn through_fd_link(path: &Path) -> bool {
    let mut p = path.to_path_buf();
    // The kernel's own limit on links followed in one lookup.
    for _ in 0..40 {
        let Ok(dir) = fs::canonicalize(parent_dir(&p)) else {
            return false;
        };
        if is_fd_dir(&dir) {
            return true;
        }
        match fs::read_link(&p) {
            Ok(to) => p = dir.join(to),
            Err(_) => return false,
        }
    }
    false
}

/// `/proc/PID/fd` or `/proc/PID/task/TID/fd`.
fn is_fd_dir(dir: &Path) -> bool {
    let parts: Vec<_> = dir.iter().map(|c| c.to_string_lossy()).collect();
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match parts.iter().map(|c| c.as_ref()).collect::<Vec<&str>>()[..] {
        ["/", "proc", pid, "fd"] => number(pid),
        ["/", "proc", pid, "task", tid, "fd"] => number(pid) && number(tid),
        _ => false,
    }
}

/// One place bytes are stored: a file (device and inode), or a block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreId {
    Inode { dev: u64, ino: u64 },
    Block(u64),
}

/// Where writes through a path land: the file itself, the block device it
/// stands for, and, for a loop device (or a partition of one), the file or
/// device behind it, followed down. `via` says how a store was reached.
#[derive(Debug, Clone)]
struct Store {
    id: StoreId,
    via: Option<String>,
}

/// The stores of a file with metadata `meta`, outermost first.
fn stores(meta: &Metadata) -> Vec<Store> {
    let mut out = Vec::new();
    let mut meta = meta.clone();
    let mut via: Option<String> = None;
    // Loop devices over loop devices are rare; a few levels are plenty.
    for _ in 0..8 {
        out.push(Store {
            id: StoreId::Inode {
                dev: meta.dev(),
                ino: meta.ino(),
            },
            via: via.clone(),
        });
        if !meta.file_type().is_block_device() {
            break;
        }
        out.push(Store {
            id: StoreId::Block(meta.rdev()),
            via: via.clone(),
        });
        let Some((device, backing)) = loop_backing(meta.rdev()) else {
            break;
        };
        let Ok(m) = fs::metadata(&backing) else {
            break;
        };
        let step = format!("{device} is a loop device over {backing}");
        via = Some(match via {
            Some(v) => format!("{v}, {step}"),
            None => step,
        });
        meta = m;
    }
    out
}

/// The device's name and the file behind it, when `rdev` is a loop device
/// or a partition of one (from sysfs).
fn loop_backing(rdev: u64) -> Option<(String, String)> {
    let (major, minor) = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
    let sys = fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    // A partition's directory lies inside its disk's, where `loop/` is.
    let found = [Some(sys.as_path()), sys.parent()]
        .into_iter()
        .flatten()
        .find_map(|d| {
            let backing = fs::read_to_string(d.join("loop/backing_file")).ok()?;
            let name = d.file_name()?.to_string_lossy();
            Some((
                format!("/dev/{name}"),
                backing.trim_end_matches('\n').to_owned(),
            ))
        });
    found
}

/// Why two lists of stores share one, if they do.
fn shared(a: &[Store], b: &[Store]) -> Option<String> {
    a.iter().find_map(|x| {
        let y = b.iter().find(|y| y.id == x.id)?;
        let why: Vec<&str> = [&x.via, &y.via]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        Some(if why.is_empty() {
            "the same file".to_owned()
        } else {
            why.join("; ")
        })
    })
}

/// Refuses a stdout that applypatch would write into OLD, the patch or
/// the `-o` output (`--json >> old.img`, `--check >> p.bin`): the same
/// file, or a loop device and the file behind it. Paths that do not exist
/// are left to the run to report.
pub fn check_stdout(
    old: &Path,
    patch: &PatchSource,
    output: Option<&Path>,
) -> Result<(), DriveError> {
    let Ok(out) = io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map(File::from)
        .and_then(|f| f.metadata())
    else {
        return Ok(());
    };
    // A character device (a terminal, /dev/null) or a pipe holds no image.
    if !(out.is_file() || out.file_type().is_block_device()) {
        return Ok(());
    }
    let out = stores(&out);
    let patch_meta = match patch {
        PatchSource::Path(p) => fs::metadata(p).ok(),
        PatchSource::Stdin => None,
    };
    let named = [
        (fs::metadata(old).ok(), "the old file", old),
        (patch_meta, "the patch", patch_path(patch)),
        (
            output.and_then(|o| fs::metadata(o).ok()),
            "the output",
            output.unwrap_or(Path::new("")),
        ),
    ];
    for (meta, what, path) in named {
        let Some(meta) = meta else { continue };
        if let Some(why) = shared(&out, &stores(&meta)) {
            return Err(DriveError::Refused(format!(
                "stdout is {what} {} ({why}): the result printed there would damage it. Redirect stdout elsewhere. Nothing was done",
                path.display()
            )));
        }
    }
    Ok(())
}

fn patch_path(patch: &PatchSource) -> &Path {
    match patch {
        PatchSource::Path(p) => p,
        PatchSource::Stdin => Path::new("-"),
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Applies a patch to `old`, writing the new image to `new`: a regular file
/// (atomically: on any error nothing appears at `new`, and an existing file
/// there is left as it was) or a block device (see the module docs). Every
/// refusal about the kinds of the three paths comes before the patch is read.
pub fn apply_to_new_file(
    old: &Path,
    patch: &PatchSource,
    new: &Path,
    policy: &Policy,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Written, DriveError> {
    let (old_file, old_len) = open_old(old)?;
    let old_meta = old_file
        .metadata()
        .map_err(io_err(format!("cannot stat old file {}", old.display())))?;
    match resolve_output(new, &old_meta, patch)? {
        OutputTarget::File(path) => write_file(
            &old_file,
            old_len,
            &old_meta,
            patch,
            &path,
            policy,
            on_progress,
        ),
        OutputTarget::Device { path, .. } => write_device(
            &old_file,
            old_len,
            &old_meta,
            patch,
            &path,
            policy,
            on_progress,
        ),
    }
    .map_err(|e| explain_wrong_base(e, old, patch))
}

fn write_file(
    old_file: &File,
    old_len: u64,
    old_meta: &Metadata,
    patch: &PatchSource,
    new: &Path,
    policy: &Policy,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Written, DriveError> {
    let dir = parent_dir(new);
    let name = new
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A file that is replaced keeps its owner and permissions. A new one
    // gets OLD's permission bits (rw for everyone when OLD is a device),
    // less the umask, as the kernel applies it when the file is created.
    let existing = fs::metadata(new).ok().filter(Metadata::is_file);
    let mode = if old_meta.is_file() {
        old_meta.mode() & 0o777
    } else {
        0o666
    };
    let tmp = Temp::create(&dir, &name, mode)?;
    // Errors from here on are about the temporary file; say that NEW was
    // not touched, so nobody goes looking for damage there.
    let untouched = match &existing {
        Some(_) => format!("{} was left as it was", new.display()),
        None => format!("nothing was created at {}", new.display()),
    };
    let note = |e: DriveError| match e {
        DriveError::Io { action, source } => DriveError::Io {
            action,
            source: io::Error::new(
                source.kind(),
                format!("{source}; the temporary file was removed and {untouched}"),
            ),
        },
        other => other,
    };
    let mut reader = patch.open()?;
    let mut applier = Applier::new(Config::new(old_len));
    applier.require_signature(&policy.trusted_keys);
    let mut sink = NewFileSink::new(tmp.as_file()).named(tmp.describe());
    let summary = drive(
        &mut applier,
        &mut reader,
        old_file,
        &mut sink,
        &mut |h| policy.check_header(h),
        on_progress,
    )
    .map_err(|e| crate::blame_changed_old(e, old_file, old_meta, &untouched))
    .map_err(note)?;
    let written = sink.written;
    let f = tmp.as_file();
    let shown = tmp.describe();
    f.set_len(summary.new_len)
        .map_err(io_err(format!("cannot size {shown}")))
        .map_err(note)?;
    if let Some(m) = &existing {
        // Owner first: a change of owner clears set-id bits. Best effort:
        // only root may give a file away, and a user replacing a file
        // they may write but do not own gets it as their own.
        let _ = std::os::unix::fs::fchown(f, Some(m.uid()), Some(m.gid()));
        let _ = f.set_permissions(m.permissions());
    }
    f.sync_all()
        .map_err(io_err(format!("cannot flush {shown} to disk")))
        .map_err(note)?;
    tmp.persist(new)?;
    stop_after_commit_for_tests();
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all(); // make the rename durable where the file system allows
    }
    Ok(Written {
        summary: Summary {
            bytes_written: written,
            ..summary
        },
        target: OutputTarget::File(new.to_path_buf()),
    })
}

fn write_device(
    old_file: &File,
    old_len: u64,
    old_meta: &Metadata,
    patch: &PatchSource,
    device: &Path,
    policy: &Policy,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Written, DriveError> {
    let shown = device.display();
    // The patch is read twice: verified whole, then written.
    let is_file = matches!(patch, PatchSource::Path(_)) && patch.metadata()?.is_file();
    if !is_file {
        return Err(DriveError::Refused(format!(
            "writing onto the block device {shown} needs the patch as a regular file: it is verified whole before the device is touched, then read again to write. Save the patch to a file first"
        )));
    }
    let meta = fs::metadata(device).map_err(io_err(format!("cannot stat {shown}")))?;
    if read_only(meta.rdev()) {
        return Err(DriveError::Refused(format!(
            "the block device {shown} is read-only; make it writable first (blockdev --setrw {shown}) or give another output. Nothing was written"
        )));
    }
    // O_EXCL on a block device: refused while it is mounted or claimed.
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32)
        .open(device)
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) {
                DriveError::Refused(format!(
                    "the block device {shown} is in use (mounted, or held by another program); unmount it first. Nothing was written"
                ))
            } else {
                DriveError::Io {
                    action: format!("cannot open {shown} for writing"),
                    source: e,
                }
            }
        })?;
    let dev_len = file_len(&dev).map_err(io_err(format!("cannot size {shown}")))?;

    // Pass 1: verify everything against OLD, write nothing.
    let mut first_header: Option<Header> = None;
    let mut applier = Applier::new(Config::new(old_len));
    applier.require_signature(&policy.trusted_keys);
    let verified = drive(
        &mut applier,
        &mut patch.open()?,
        old_file,
        &mut NullSink,
        &mut |h| {
            policy.check_header(h)?;
            if h.new_len > dev_len {
                return Err(DriveError::Refused(format!(
                    "the new image is {} ({} bytes), larger than the block device {shown} ({}, {dev_len} bytes). Nothing was written",
                    human_bytes(h.new_len),
                    h.new_len,
                    human_bytes(dev_len),
                )));
            }
            first_header = Some(h.clone());
            Ok(())
        },
        on_progress,
    )
    .map_err(|e| {
        crate::blame_changed_old(e, old_file, old_meta, &format!("{shown} was left as it was"))
    })?;
    let new_hash = verified
        .new_hash
        .expect("a full verifying pass computes the new hash");

    // Pass 2: the same patch again, writing. The engine checks the base
    // again before its first write, so OLD cannot have changed in between.
    let writing = DeviceWriting::start(device);
    let mut applier = Applier::new(Config::new(old_len));
    applier.require_signature(&policy.trusted_keys);
    let mut sink = DeviceSink {
        file: &dev,
        written: 0,
    };
    let summary = drive(
        &mut applier,
        &mut patch.open()?,
        old_file,
        &mut sink,
        &mut |h| {
            if first_header.as_ref() != Some(h) {
                return Err(DriveError::Refused(format!(
                    "the patch file changed while it was being applied; {shown} holds part of an image: apply a patch again"
                )));
            }
            Ok(())
        },
        on_progress,
    )
    .map_err(|e| {
        let partly = format!("{shown} holds part of the new image");
        crate::blame_changed_old(e, old_file, old_meta, &partly)
    })?;
    dev.sync_all()
        .map_err(io_err(format!("cannot flush {shown} to disk")))?;
    // Read back what the device holds, not what the page cache remembers.
    let _ = rustix::fs::fadvise(&dev, 0, None, rustix::fs::Advice::DontNeed);
    let got =
        hash_prefix(&dev, summary.new_len).map_err(io_err(format!("cannot read {shown} back")))?;
    if got != new_hash {
        return Err(DriveError::Refused(format!(
            "{shown} reads back different bytes than were written (BLAKE3 {}, expected {}): the device may be failing",
            crate::hex(&got),
            crate::hex(&new_hash)
        )));
    }
    commit(&mut undo());
    drop(writing);
    stop_after_commit_for_tests();
    Ok(Written {
        summary: Summary {
            bytes_written: sink.written,
            new_hash: Some(new_hash),
            ..summary
        },
        target: OutputTarget::Device {
            path: device.to_path_buf(),
            len: dev_len,
        },
    })
}

/// Whether the block device `rdev` is read-only (sysfs `ro`). Opening such
/// a device for writing succeeds; its first write fails, which would come
/// only after the whole patch was verified.
fn read_only(rdev: u64) -> bool {
    let (major, minor) = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
    fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/ro")).is_ok_and(|s| s.trim() == "1")
}

fn hash_prefix(file: &File, len: u64) -> io::Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; READBACK_CHUNK];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(*h.finalize().as_bytes())
}

/// Writes a new file with positional writes. The file starts empty and is
/// sized at the end, so zero runs, and every aligned block of
/// [`HOLE_BLOCK`] bytes that is all zeros, are left as holes.
#[derive(Debug)]
pub struct NewFileSink<'a> {
    file: &'a File,
    /// What error messages call the file.
    name: String,
    /// Everything before this offset has been written or left as a hole.
    end: u64,
    /// Bytes actually written.
    written: u64,
}

impl<'a> NewFileSink<'a> {
    /// A sink over `file`, which must be empty.
    pub fn new(file: &'a File) -> Self {
        Self {
            file,
            name: "the new file".into(),
            end: 0,
            written: 0,
        }
    }

    /// Calls the file `name` in error messages ("the temporary file X").
    pub fn named(mut self, name: String) -> Self {
        self.name = name;
        self
    }

    /// Bytes written so far: the new image's bytes less the holes.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn put(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)?;
        self.written += data.len() as u64;
        Ok(())
    }
}

impl Sink for NewFileSink<'_> {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset + data.len() as u64;
        if offset < self.end {
            // Rewriting bytes already placed: a skipped zero would leave
            // the earlier bytes, so write everything.
            self.put(offset, data)?;
            self.end = self.end.max(end);
            return Ok(());
        }
        // Past `self.end` the file reads as zeros, so only blocks (aligned
        // to the file's start) with a non-zero byte need writing.
        let mut run: Option<usize> = None;
        let mut at = 0usize;
        while at < data.len() {
            let pos = offset + at as u64;
            let n = ((HOLE_BLOCK - pos % HOLE_BLOCK) as usize).min(data.len() - at);
            if is_zero(&data[at..at + n]) {
                if let Some(start) = run.take() {
                    self.put(offset + start as u64, &data[start..at])?;
                }
            } else if run.is_none() {
                run = Some(at);
            }
            at += n;
        }
        if let Some(start) = run {
            self.put(offset + start as u64, &data[start..])?;
        }
        self.end = end;
        Ok(())
    }

    fn zero(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if offset < self.end {
            write_zeros(self.file, offset, len)?;
            self.written += len;
        }
        self.end = self.end.max(offset + len);
        Ok(())
    }
}

/// Writes a block device in place; zero runs are zeroed by the device
/// where it can, written as zeros where it cannot.
struct DeviceSink<'a> {
    file: &'a File,
    written: u64,
}

impl Sink for DeviceSink<'_> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)?;
        self.written += data.len() as u64;
        Ok(())
    }

    fn zero(&mut self, offset: u64, len: u64) -> io::Result<()> {
        use rustix::fs::{fallocate, FallocateFlags};
        // Whole pages only: the kernel drops the page cache of the range.
        let aligned = offset % HOLE_BLOCK == 0 && len % HOLE_BLOCK == 0;
        let zeroed = aligned
            && fallocate(
                self.file,
                FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE,
                offset,
                len,
            )
            .is_ok();
        if !zeroed {
            write_zeros(self.file, offset, len)?;
        }
        self.written += len;
        Ok(())
    }
}

fn write_zeros(file: &File, offset: u64, len: u64) -> io::Result<()> {
    static ZEROS: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(ZERO_CHUNK as u64) as usize;
        file.write_all_at(&ZEROS[..n], offset + at)?;
        at += n as u64;
    }
    Ok(())
}

fn is_zero(data: &[u8]) -> bool {
    // Fixed-size chunks OR-ed together vectorize; an early exit per byte does not.
    let mut chunks = data.chunks_exact(64);
    let body = chunks
        .by_ref()
        .all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0);
    body && chunks.remainder().iter().all(|&b| b == 0)
}

/// `n` bytes for people, rounded down so a size never reads larger than it
/// is: "512 bytes", "1.5 KiB", "64.0 MiB", "2.0 GiB", "15.9 MiB" for one
/// byte less than 16 MiB.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{:.1} {}", (v * 10.0).floor() / 10.0, UNITS[unit])
}

/// [`human_bytes`] and, where that rounds, the exact count:
/// "512 bytes", "16.0 MiB (16777216 bytes)".
pub fn human_bytes_exact(n: u64) -> String {
    if n < 1024 {
        human_bytes(n)
    } else {
        format!("{} ({n} bytes)", human_bytes(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(0), "0 bytes");
        assert_eq!(human_bytes(1023), "1023 bytes");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_bytes((16 << 20) - 1), "15.9 MiB");
        assert_eq!(human_bytes_exact(0), "0 bytes");
        assert_eq!(human_bytes_exact(16 << 20), "16.0 MiB (16777216 bytes)");
    }

    #[test]
    fn new_file_sink_leaves_zero_blocks_as_holes() {
        let f = tempfile::tempfile().expect("tempfile");
        let mut s = NewFileSink::new(&f);
        let mut data = vec![0u8; 5 * HOLE_BLOCK as usize];
        data[10] = 1; // block 0 (offset 100 + 10)
        data[3 * HOLE_BLOCK as usize] = 2; // block 3
        s.write_at(100, &data).expect("write");
        s.zero(100 + data.len() as u64, 8192).expect("zero");
        f.set_len(100 + data.len() as u64 + 8192).expect("len");
        // Block 0 from 100 to 4096, and block 3 (data offset 3*4096 lies in file block 3).
        assert_eq!(s.written(), (HOLE_BLOCK - 100) + HOLE_BLOCK);
        let mut back = vec![0u8; data.len()];
        f.read_exact_at(&mut back, 100).expect("read");
        assert!(back == data);
        // A rewrite of placed bytes writes zeros too.
        s.write_at(100, &[0u8; 16]).expect("rewrite");
        let mut b = [1u8; 16];
        f.read_exact_at(&mut b, 100).expect("read");
        assert_eq!(b, [0u8; 16]);
    }

    #[test]
    fn is_zero_sees_every_byte() {
        for len in [0, 1, 63, 64, 65, 200] {
            let mut v = vec![0u8; len];
            assert!(is_zero(&v));
            for i in 0..len {
                v[i] = 1;
                assert!(!is_zero(&v), "len {len} byte {i}");
                v[i] = 0;
            }
        }
    }
}
