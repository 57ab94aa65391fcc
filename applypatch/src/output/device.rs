//! `-o` onto a block device: verified whole first, then written in place
//! from offset 0, synced, and read back.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use anypatch_apply::format::Header;
use anypatch_apply::{Applier, Config, Progress, Summary};
use anypatch_safe_output::{human_bytes, signals};

use super::sink::{write_zeros, HOLE_BLOCK};
use super::{stop_after_commit_for_tests, OutputTarget, Written};
use crate::{drive, file_len, io_err, DriveError, NullSink, PatchSource, Policy, Sink};

/// A device that is being written: it holds part of the new image, which
/// [`super::interrupted`] tells the user.
static WRITING: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The device being written, if one is.
pub(super) fn being_written() -> Option<PathBuf> {
    WRITING
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// Marks `path` as being written while alive, for [`super::interrupted`]'s note.
struct DeviceWriting;

impl DeviceWriting {
    fn start(path: &Path) -> Self {
        *WRITING.lock().unwrap_or_else(PoisonError::into_inner) = Some(path.to_path_buf());
        Self
    }
}

impl Drop for DeviceWriting {
    fn drop(&mut self) {
        *WRITING.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

pub(super) fn write_device(
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
    let is_file =
        matches!(patch, PatchSource::Path(_)) && patch.metadata()?.is_some_and(|m| m.is_file());
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
    // The lock an in-place apply holds, on the device and, for a loop
    // device, on the file behind it: the same image under another name.
    let _locks = lock_device_and_backing(&dev, device, meta.rdev())?;

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
    let got = anypatch_apply::drive::hash_range(&dev, 0, summary.new_len)
        .map_err(io_err(format!("cannot read {shown} back")))?;
    if got != new_hash {
        return Err(DriveError::Refused(format!(
            "{shown} reads back different bytes than were written (BLAKE3 {}, expected {}): the device may be failing",
            crate::hex(&got),
            crate::hex(&new_hash)
        )));
    }
    signals::mark_committed();
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

/// Takes the in-place lock on `dev` and on the file behind it when it is a
/// loop device; refused at once if another run holds either.
fn lock_device_and_backing(dev: &File, shown: &Path, rdev: u64) -> Result<Vec<File>, DriveError> {
    use rustix::fs::{flock, FlockOperation};
    let busy = |what: &str| {
        DriveError::Refused(format!(
            "{what} is locked by another run (an in-place apply rewriting it); nothing was written. Wait for it to finish, or write the new image elsewhere"
        ))
    };
    let mut held = Vec::new();
    if flock(dev, FlockOperation::NonBlockingLockExclusive) == Err(rustix::io::Errno::WOULDBLOCK) {
        return Err(busy(&shown.display().to_string()));
    }
    if let Some((_, backing)) = anypatch_safe_output::identity::loop_backing(rdev) {
        if let Ok(b) = File::open(&backing) {
            if flock(&b, FlockOperation::NonBlockingLockExclusive)
                == Err(rustix::io::Errno::WOULDBLOCK)
            {
                return Err(busy(&format!(
                    "{backing}, the file behind {}",
                    shown.display()
                )));
            }
            held.push(b);
        }
    }
    Ok(held)
}

/// Whether the block device `rdev` is read-only (sysfs `ro`). Opening such
/// a device for writing succeeds; its first write fails, which would come
/// only after the whole patch was verified.
fn read_only(rdev: u64) -> bool {
    let (major, minor) = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
    fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/ro")).is_ok_and(|s| s.trim() == "1")
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
