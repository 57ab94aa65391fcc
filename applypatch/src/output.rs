//! `-o`: the new image written to a path, and the checks on OLD, the patch
//! and the output that come before any work.
//!
//! The output is one of:
//! - a regular file, new or replaced: a temporary file beside it, unnamed
//!   (`O_TMPFILE`) where the file system allows, so even SIGKILL leaves
//!   nothing; written sparse (all-zero blocks stay holes), fsynced, named
//!   and renamed over the path ([`anypatch_safe_output::TempFile`]).
//!   A symlink to a regular file is followed: the file it points to is
//!   replaced and the link stays.
//! - a block device ([`device`]): the whole patch is verified against OLD first with
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

mod device;
#[cfg(feature = "net")]
mod resumable;
mod sink;

pub use sink::NewFileSink;

use std::fs::{self, File, Metadata};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anypatch_apply::{Applier, Config, Progress, Summary};
use anypatch_safe_output::identity::{device_holds, shared, stores, through_fd_link, Holds};
use anypatch_safe_output::{a_kind, parent_dir, signals, CommitError, FileId, Owner};
use anypatch_safe_output::{CreateError, LockError, OutputLock, TempFile, TempOptions};

use crate::{drive, explain_wrong_base, io_err, open_old, DriveError, PatchSource, Policy};

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

/// For a signal handler: decides what a signal does to this run. Once the
/// output is committed the run finishes as if no signal had come
/// ([`Interruption::Finished`]). Before that, it removes the temporary
/// output file, if any, and returns what the user should know; the
/// temporary files' registry then stays locked, so no new temporary file can
/// be made or renamed afterwards: on [`Interruption::Stop`], exit.
pub fn interrupted() -> Interruption {
    // Taken first: a remote -o renames its part file while holding it.
    #[cfg(feature = "net")]
    let remote = resumable::on_signal();
    let decided = signals::interrupted();
    SIGNAL_DECIDED.store(true, Ordering::SeqCst);
    let signals::Interruption::Stop { removed } = decided else {
        return Interruption::Finished;
    };
    let mut notes: Vec<String> = removed
        .iter()
        .map(|p| format!("removed the temporary file {}", p.display()))
        .collect();
    #[cfg(feature = "net")]
    notes.extend(remote.stop());
    if let Some(d) = device::being_written() {
        notes.push(format!(
            "{} holds part of the new image; run the same command again to write it whole",
            d.display()
        ));
    }
    Interruption::Stop(notes)
}

/// Test hook: with `ANYPATCH_TEST_STOP_AFTER_COMMIT=1`, the process stops
/// itself (SIGSTOP) right after the output is committed, so a test can send
/// a signal at exactly that point; once continued, it waits (at most 10 s)
/// for the signal handler to decide, so the outcome does not depend on
/// which thread runs first. Nothing happens otherwise, and nothing at all
/// without the `test-hooks` feature.
#[cfg(not(feature = "test-hooks"))]
fn stop_after_commit_for_tests() {}

#[cfg(feature = "test-hooks")]
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

impl PatchSource {
    /// The patch's metadata: the file's for a path, stdin's for `-`.
    /// `None` for a remote patch, which is no file here.
    fn metadata(&self) -> Result<Option<Metadata>, DriveError> {
        Ok(Some(match self {
            #[cfg(feature = "net")]
            Self::Remote(_) => return Ok(None),
            Self::Path(p) => {
                fs::metadata(p).map_err(io_err(format!("cannot open patch {}", p.display())))?
            }
            Self::Stdin => io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .map(File::from)
                .and_then(|f| f.metadata())
                .map_err(io_err("cannot stat stdin"))?,
        }))
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
    if patch.metadata()?.is_some_and(|m| id.same(&FileId::of(&m))) {
        return Err(DriveError::Refused(format!(
            "the output {shown} is the patch file itself; writing it would destroy the patch: give another -o path"
        )));
    }
    let t = meta.file_type();
    if t.is_block_device() {
        if let Some(how) = device_holds(meta.rdev(), old) {
            // Each of these passes the same-file check, and writing would
            // overwrite OLD while it is read.
            let why = match how {
                Holds::DiskOrPartition => "is the disk or a partition that holds the old image",
                Holds::FileSystem => "holds the file system the old image is on",
                Holds::LoopBacking => "is a loop device backed by the old image",
            };
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
        let patch_shared = patch.metadata()?.and_then(|m| shared(&out, &stores(&m)));
        if let Some(why) = patch_shared {
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
    if t.is_dir() {
        return Err(DriveError::Refused(format!(
            "the output {shown} is a directory; give the new image's file name, e.g. {}",
            new.join("new.img").display()
        )));
    }
    Err(DriveError::Refused(format!(
        "the output {shown} is {}; -o writes a regular file or a block device. Nothing was written",
        a_kind(t)
    )))
}

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
        _ => None,
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
        _ => Path::new("-"),
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
        #[cfg(feature = "net")]
        OutputTarget::File(path) if matches!(patch, PatchSource::Remote(_)) => {
            let PatchSource::Remote(remote) = patch else {
                unreachable!("matched above")
            };
            resumable::write_remote_file(
                &old_file,
                old_len,
                &old_meta,
                remote,
                &path,
                policy,
                on_progress,
            )
        }
        OutputTarget::File(path) => write_file(
            &old_file,
            old_len,
            &old_meta,
            patch,
            &path,
            policy,
            on_progress,
        ),
        // Verified whole before the device is touched, then read again:
        // from a local copy, which a rerun goes on filling.
        #[cfg(feature = "net")]
        OutputTarget::Device { path, .. } if matches!(patch, PatchSource::Remote(_)) => {
            let PatchSource::Remote(remote) = patch else {
                unreachable!("matched above")
            };
            let spool = crate::remote::download_path(&path, None);
            remote.apply_spooled(&spool, on_progress, |local, on_progress| {
                device::write_device(
                    &old_file,
                    old_len,
                    &old_meta,
                    local,
                    &path,
                    policy,
                    on_progress,
                )
            })
        }
        OutputTarget::Device { path, .. } => device::write_device(
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
    let (summary, written) = fill_new_file(new, old_meta, |f, shown, untouched| {
        let mut reader = patch.open()?;
        let mut applier = Applier::new(Config::new(old_len));
        applier.require_signature(&policy.trusted_keys);
        let mut sink = NewFileSink::new(f).named(shown.to_owned());
        let summary = drive(
            &mut applier,
            &mut reader,
            old_file,
            &mut sink,
            &mut |h| policy.check_header(h),
            on_progress,
        )
        .map_err(|e| crate::blame_changed_old(e, old_file, old_meta, untouched))?;
        Ok(((summary, sink.written()), summary.new_len))
    })?;
    Ok(Written {
        summary: Summary {
            bytes_written: written,
            ..summary
        },
        target: OutputTarget::File(new.to_path_buf()),
    })
}

/// Makes the regular file `new` (OLD's metadata `old_meta`) from what
/// `fill` writes into a temporary file beside it: `fill` gets the file,
/// its name for messages and a sentence saying NEW was not touched, and
/// returns its result and the image's length. The file is then sized,
/// given the replaced file's owner, fsynced and renamed over `new`;
/// anything that fails before the rename leaves `new` as it was and
/// removes the temporary file.
pub fn fill_new_file<T>(
    new: &Path,
    old_meta: &Metadata,
    fill: impl FnOnce(&File, &str, &str) -> Result<(T, u64), DriveError>,
) -> Result<T, DriveError> {
    let dir = parent_dir(new);
    let Some(file_name) = new.file_name() else {
        return Err(DriveError::Refused(format!(
            "the output {} names a directory; give the new image's file name",
            new.display()
        )));
    };
    // A file that is replaced keeps its owner and permissions. A new one
    // gets OLD's permission bits (rw for everyone when OLD is a device),
    // less the umask, as the kernel applies it when the file is created.
    // Another run writing NEW too would build its own temporary file, and
    // the last rename would win: refused. Held until the rename.
    let _writing = lock_output(new)?;
    let existing = fs::metadata(new).ok().filter(Metadata::is_file);
    // An in-place apply rewriting NEW holds its lock: refuse rather than
    // rename over a file it is writing (it would report success for a file
    // that is no longer there). Held until the rename, so none starts on it.
    let _held = existing.as_ref().map(|_| lock_existing(new)).transpose()?;
    let mode = new_file_mode(old_meta);
    let tmp = create_temp(&dir, &file_name.to_string_lossy(), mode)?;
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
    let f = tmp.file();
    let shown = tmp.describe();
    let (result, new_len) = fill(f, &shown, &untouched).map_err(note)?;
    f.set_len(new_len)
        .map_err(io_err(format!("cannot size {shown}")))
        .map_err(note)?;
    if let Some(m) = &existing {
        // Best effort: only root may give a file away, and a user replacing
        // a file they may write but do not own gets it as their own.
        let _ = Owner::of(m).restore(f);
    }
    f.sync_all()
        .map_err(io_err(format!("cannot flush {shown} to disk")))
        .map_err(note)?;
    tmp.commit(file_name).map_err(|e| match e {
        CommitError::Link(source) => DriveError::Io {
            action: format!("cannot give the new image a name in {}", dir.display()),
            source,
        },
        CommitError::Rename(source) => DriveError::Io {
            action: format!("cannot rename the new image into {}", new.display()),
            source,
        },
        CommitError::NotRegular(kind) => DriveError::Refused(format!(
            "the output {} became {} while applypatch ran; it was left as it is and the temporary file was removed",
            new.display(),
            a_kind(kind)
        )),
        CommitError::DirMoved => DriveError::Refused(format!(
            "the directory {} was moved or replaced while applypatch ran; the temporary file was removed",
            dir.display()
        )),
    })?;
    stop_after_commit_for_tests();
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all(); // make the rename durable where the file system allows
    }
    Ok(result)
}

/// The permission bits a new NEW is created with (less the umask): OLD's,
/// or rw for everyone when OLD is a device. A NEW that replaces a file
/// takes that file's owner and mode afterwards ([`Owner::restore`]).
fn new_file_mode(old_meta: &Metadata) -> u32 {
    if old_meta.is_file() {
        old_meta.mode() & 0o777
    } else {
        0o666
    }
}

/// Locks the output `new` against other runs writing it (`-o` from a
/// patch, a URL or a live sync alike), whether or not it exists yet:
/// refused at once, naming the run that holds it.
pub(crate) fn lock_output(new: &Path) -> Result<OutputLock, DriveError> {
    let name = new.file_name().map(|n| n.to_string_lossy().into_owned());
    let name = name.unwrap_or_default();
    OutputLock::take(&parent_dir(new), &name).map_err(|e| match e {
        LockError::Held { pid } => {
            let who = match pid {
                Some(pid) => format!("pid {pid}: {}", crate::inplace::command_line(pid)),
                None => "a process this one cannot see".into(),
            };
            DriveError::Refused(format!(
                "{} is being written by another run ({who}); nothing was written. Wait for it to finish, or write the new image elsewhere",
                new.display()
            ))
        }
        LockError::Io(source) => DriveError::Io {
            action: format!("cannot lock the output {}", new.display()),
            source,
        },
    })
}

/// Takes the same lock as `applypatch --in-place` on the existing file at
/// `new`: refused at once if another run holds it. `None` when the file
/// cannot be opened for reading (the rename decides then).
fn lock_existing(new: &Path) -> Result<Option<File>, DriveError> {
    use rustix::fs::{flock, FlockOperation};
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(f) = fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(new)
    else {
        return Ok(None);
    };
    match flock(&f, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(f)),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(DriveError::Refused(format!(
            "{} is locked by another run (an in-place apply rewriting it); nothing was written. Wait for it to finish, or write the new image elsewhere",
            new.display()
        ))),
        Err(_) => Ok(Some(f)), // a file system without flock: nothing to respect
    }
}

/// The temporary file for the new image in `dir`, with permissions `mode`
/// less the umask: unnamed where the file system allows (`O_TMPFILE`), else
/// `.NAME.XXXXXX.applypatch-tmp`, NAME cut to [`TEMP_NAME_KEEP`] bytes so a
/// name near the file system's limit still has a temporary file.
fn create_temp(dir: &Path, name: &str, mode: u32) -> Result<TempFile, DriveError> {
    let mut keep = name.len().min(TEMP_NAME_KEEP);
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    let opts = TempOptions {
        prefix: format!(".{}.", &name[..keep]),
        suffix: ".applypatch-tmp".into(),
        mode,
        read: true,
        // NEW's directory is looked up by path, at the start and at the rename.
        pin_dir: false,
    };
    TempFile::create(dir, opts).map_err(|e| DriveError::Io {
        action: format!("cannot create a temporary file in {}", dir.display()),
        source: match e {
            CreateError::OpenDir(e) | CreateError::Create(e) => e,
        },
    })
}
