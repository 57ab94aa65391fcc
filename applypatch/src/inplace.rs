//! Crash-safe in-place apply.
//!
//! [`apply_in_place`] rewrites a regular file or a block device into the
//! patch's new image, writing only the bytes that change, and survives a
//! kill or power cut at any point: the same command finishes the job.
//!
//! 1. **The target is locked** for the whole run: an exclusive `flock` on
//!    it (a second run is refused at once, naming the first), and for a
//!    block device an exclusive open (`O_EXCL`), which the kernel refuses
//!    while the device is mounted or claimed through any other node.
//! 2. **A state file names its target**: the target's device and inode (a
//!    block device's device number), its size and the patch's BLAKE3 (which
//!    pins the header, and so both images'). It lives beside a regular file (by its canonical path) as
//!    `.NAME.anypatch-state`, under `/var/lib/anypatch/block-MAJOR:MINOR.anypatch-state`
//!    for a block device, or where `--state` says. A state file of another
//!    target or another patch is never acted on. It stays empty until the
//!    first journal record: an empty one only marks the target as being
//!    written (see [`journal`]).
//! 3. **A fresh apply verifies everything first**, writing nothing to the
//!    target: the base, every segment (whose full BLAKE3 is pinned, spec
//!    section 7), the whole patch and the new hash. Then it
//!    reads the patch again and writes, checking each segment against its
//!    pin before any of its bytes reach the target ([`journal`] says how
//!    the writes survive a crash).
//! 4. **A resume checks the target before writing**: the committed part must
//!    hold the new image, and the rest must make it (the engine is run over
//!    the rest without writing, and all of it hashed against the new
//!    BLAKE3). A target changed since the kill (restored from a backup,
//!    touched) is refused with exit 1 and left as it is. The resumed result
//!    is hashed whole again before the state file is removed. An empty
//!    state file with a target that is no longer the old image is checked
//!    the same way from the start: the patch run over the target as it is
//!    must make the new image.

mod journal;

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anypatch_apply::format::{Hash, Header, FLAG_IN_PLACE_SAFE, TRAILER_LEN};
use anypatch_apply::{Applier, ApplyError, Config, Progress, Summary};

use journal::{Claim, Found, JournaledSink, PinSink, State, TargetWriter};
pub use journal::{Identity, TargetId, BATCH_BYTES};

use anypatch_apply::drive::hash_range;

use crate::{drive, file_len, hex, io_err, DriveError, PatchSource, Policy, Sink, READ_CHUNK};

/// Where the state files of block devices live.
const STATE_DIR: &str = "/var/lib/anypatch";

/// How an in-place apply keeps its crash-recovery state.
#[derive(Debug, Clone)]
pub struct InPlaceOptions {
    /// The state file; `None`: [`default_state_path`].
    pub state: Option<PathBuf>,
    /// Most bytes per journal window: smaller redoes less after a crash and
    /// syncs more often.
    pub batch_bytes: usize,
}

impl Default for InPlaceOptions {
    fn default() -> Self {
        Self {
            state: None,
            batch_bytes: BATCH_BYTES,
        }
    }
}

/// Applies a patch to `target` in place, surviving a crash at any point.
///
/// A fresh apply verifies the entire patch first (base, every segment, the
/// whole-patch and new hashes) with nothing written, then rewrites only
/// the bytes that change. When a state file for this target and patch
/// exists, the interrupted apply is checked and resumed instead. The patch
/// must be a regular file: it is read more than once. See the module docs.
pub fn apply_in_place(
    target: &Path,
    patch: &PatchSource,
    policy: &Policy,
    opts: &InPlaceOptions,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Summary, DriveError> {
    #[cfg(feature = "net")]
    if let PatchSource::Remote(remote) = patch {
        return from_remote(target, remote, policy, opts, on_progress);
    }
    let result = run(target, patch, policy, opts, on_progress);
    report_io_for_tests(&result);
    result
}

/// A remote patch is fetched to a local copy first (the in-place apply
/// reads its patch more than once), which a rerun goes on filling, then
/// applied from there. The copy is removed once it is applied, or when it
/// turns out corrupt (so that the next run fetches it anew).
#[cfg(feature = "net")]
fn from_remote(
    target: &Path,
    remote: &crate::remote::Remote,
    policy: &Policy,
    opts: &InPlaceOptions,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Summary, DriveError> {
    let spool = crate::remote::download_path(target, opts.state.as_deref());
    remote.apply_spooled(&spool, on_progress, |local, on_progress| {
        apply_in_place(target, local, policy, opts, on_progress)
    })
}

fn run(
    target: &Path,
    patch: &PatchSource,
    policy: &Policy,
    opts: &InPlaceOptions,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Summary, DriveError> {
    let patch_path = seekable_patch(patch)?;
    let t = Target::open(target)?;
    let state_path = opts
        .state
        .clone()
        .unwrap_or_else(|| default_state_path(&t.canonical, t.id));
    let claim = match State::open(&state_path)? {
        Found::Nothing => None,
        Found::Interrupted(claim) => Some(claim),
        Found::Unfinished(mut state) => {
            if state.identity.target != t.id {
                let belongs = DriveError::Refused(format!(
                    "the state file {} belongs to an unfinished in-place apply of {}, not of {} ({}); nothing was written. Finish that apply by running the same command on that target, or give this one its own --state",
                    state_path.display(),
                    state.identity.target,
                    target.display(),
                    t.id
                ));
                if hash_patch_file(patch_path)? != state.identity.patch_hash {
                    return Err(belongs);
                }
                // The same patch: this may be the same image under another
                // device number (a loop device attached anew, a file system
                // mounted from another device). Its content decides.
                let header = read_header(patch_path)?;
                match check_before_resuming(&mut state, &t, &header, patch, policy, on_progress) {
                    Ok(()) => {}
                    // Already new is no proof that this is that target: its
                    // state is left for it.
                    Err(DriveError::AlreadyApplied | DriveError::Refused(_)) => {
                        return Err(belongs)
                    }
                    Err(e) => return Err(e),
                }
                // This target holds what the interrupted apply left, but the
                // target the state names may still exist (this may be a
                // copy of it): go on with a copy of the state, and leave the
                // original for its own target. Only a state at this target's
                // own path (the file replaced at its name) is taken over.
                let own = default_state_path(&t.canonical, t.id);
                if own == state_path && !matches!(t.id, TargetId::File { .. }) {
                    // A device number reused for another image: its state
                    // is never taken.
                    return Err(belongs);
                }
                if own != state_path {
                    if own.exists() {
                        return Err(DriveError::Refused(format!(
                            "{} has a state file of its own, {}; finish with that one (or remove it if it is stale), nothing was written",
                            target.display(),
                            own.display()
                        )));
                    }
                    state = state.copy_for(&own, t.id, t.len)?;
                }
            }
            return resume(state, &t, patch, patch_path, policy, opts, on_progress);
        }
    };
    fresh(&t, &state_path, claim, patch, policy, opts, on_progress)
}

/// `--in-place` reads the patch more than once, so it must be a regular file.
fn seekable_patch(patch: &PatchSource) -> Result<&Path, DriveError> {
    let refuse = |what: &str| {
        DriveError::Refused(format!(
            "--in-place needs the patch as a regular file, not {what}: it reads the patch once to verify everything before the first write, again to write, and again to resume after a crash. Save it to a file first (e.g. `cat > p.anyp`)"
        ))
    };
    let PatchSource::Path(path) = patch else {
        return Err(refuse("stdin or a URL"));
    };
    let meta =
        std::fs::metadata(path).map_err(io_err(format!("cannot open patch {}", path.display())))?;
    if meta.is_file() {
        Ok(path)
    } else if meta.file_type().is_fifo() || meta.file_type().is_socket() {
        Err(refuse("a pipe"))
    } else if meta.is_dir() {
        Err(refuse("a directory"))
    } else {
        Err(refuse("a device"))
    }
}

/// The target, open for reading and writing and locked.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) file: File,
    path: PathBuf,
    canonical: PathBuf,
    id: TargetId,
    len: u64,
    is_regular: bool,
    /// For a loop device, the file behind it, held locked for the run.
    _backing_lock: Option<File>,
}

impl Target {
    pub(crate) fn open(path: &Path) -> Result<Self, DriveError> {
        let meta =
            std::fs::metadata(path).map_err(io_err(format!("cannot open {}", path.display())))?;
        let ft = meta.file_type();
        let is_block = ft.is_block_device();
        if !meta.is_file() && !is_block {
            return Err(DriveError::Refused(format!(
                "{} is {}: --in-place rewrites a regular file or a block device",
                path.display(),
                anypatch_safe_output::a_kind(ft)
            )));
        }
        if !is_block {
            refuse_behind_a_busy_loop_device(path, &meta)?;
        }
        let mut oo = OpenOptions::new();
        oo.read(true).write(true);
        if is_block {
            // An exclusive open: refused while the device is mounted, or
            // claimed by another applypatch through any of its nodes.
            oo.custom_flags(rustix::fs::OFlags::EXCL.bits() as i32);
        }
        let file = oo.open(path).map_err(|e| {
            if is_block && e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) {
                DriveError::Refused(format!(
                    "{} is in use ({}); nothing was written. Wait for it to finish, or unmount the device",
                    path.display(),
                    device_users(meta.rdev())
                ))
            } else {
                DriveError::Io {
                    action: format!("cannot open {} for writing", path.display()),
                    source: e,
                }
            }
        })?;
        let meta = file
            .metadata()
            .map_err(io_err(format!("cannot stat {}", path.display())))?;
        if meta.file_type().is_block_device() != is_block {
            return Err(DriveError::Refused(format!(
                "{} changed while it was opened; run again",
                path.display()
            )));
        }
        lock_target(&file, path, &meta)?;
        // A loop device and the file behind it are one image under two
        // names: a run through either locks the file too, so two runs can
        // never write it at once.
        let backing_lock = match is_block
            .then(|| anypatch_safe_output::identity::loop_backing(meta.rdev()))
            .flatten()
        {
            Some((_, backing)) => {
                let b = File::open(&backing).map_err(io_err(format!(
                    "cannot open {backing}, behind {}",
                    path.display()
                )))?;
                let bm = b
                    .metadata()
                    .map_err(io_err(format!("cannot stat {backing}")))?;
                lock_target(&b, Path::new(&backing), &bm)?;
                Some(b)
            }
            None => None,
        };
        let id = if is_block {
            block_id(meta.rdev())
        } else {
            TargetId::File {
                dev: meta.dev(),
                ino: meta.ino(),
            }
        };
        let len = file_len(&file).map_err(io_err(format!("cannot size {}", path.display())))?;
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        Ok(Self {
            file,
            path: path.to_path_buf(),
            canonical,
            id,
            len,
            is_regular: !is_block,
            _backing_lock: backing_lock,
        })
    }

    fn writer(&self) -> TargetWriter<'_> {
        TargetWriter::new(&self.file, &self.path, self.is_regular)
    }
}

/// The id of block device `rdev`: for a loop device, with a digest of the
/// file behind it, so a state is never taken for another file's image
/// attached under the same number.
fn block_id(rdev: u64) -> TargetId {
    let backing = anypatch_safe_output::identity::loop_backing(rdev)
        .and_then(|(_, file)| std::fs::metadata(file).ok())
        .map_or(0, |m| {
            let mut h = blake3::Hasher::new();
            h.update(&m.dev().to_le_bytes());
            h.update(&m.ino().to_le_bytes());
            let d = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"));
            d.max(1)
        });
    TargetId::Block { rdev, backing }
}

/// Takes an exclusive `flock` on the target for the whole run. Another
/// applypatch holding it is named and refused at once; another program
/// (udev probing a device) is waited for, briefly.
fn lock_target(file: &File, path: &Path, meta: &std::fs::Metadata) -> Result<(), DriveError> {
    use rustix::fs::{flock, FlockOperation};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match flock(file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(()),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {}
            Err(e) => {
                return Err(DriveError::Io {
                    action: format!("cannot lock {}", path.display()),
                    source: e.into(),
                })
            }
        }
        let holder = lock_holder(meta.dev(), meta.ino());
        let ours = holder
            .as_ref()
            .is_some_and(|(_, cmd)| cmd.contains("applypatch"));
        if ours || std::time::Instant::now() >= deadline {
            let who = match holder {
                Some((pid, cmd)) => format!("pid {pid}: {cmd}"),
                None => "a process this one cannot see".into(),
            };
            return Err(DriveError::Refused(format!(
                "{} is locked by another run ({who}); nothing was written. Wait for it to finish (if it was killed, run the same command again afterwards to resume it)",
                path.display()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Refuses a file behind a loop device that is mounted or claimed: the
/// file system on it would see its blocks change underneath it. A loop
/// device that is only attached is no obstacle (and a run through it locks
/// this file, see [`Target::open`]).
fn refuse_behind_a_busy_loop_device(
    path: &Path,
    meta: &std::fs::Metadata,
) -> Result<(), DriveError> {
    for (device, rdev) in anypatch_safe_output::identity::loop_devices_over(meta) {
        let busy = OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32)
            .open(&device)
            .is_err_and(|e| e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()));
        if busy {
            return Err(DriveError::Refused(format!(
                "{} is the file behind {device}, which is in use ({}); nothing was written. Wait for that to end, or unmount it",
                path.display(),
                device_users(rdev)
            )));
        }
    }
    Ok(())
}

/// Who holds block device `rdev` open or mounted, for a refusal message.
fn device_users(rdev: u64) -> String {
    use rustix::fs::{major, minor};
    let mut who = Vec::new();
    let dev = format!("{}:{}", major(rdev), minor(rdev));
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(2) == Some(&dev.as_str()) {
                if let Some(at) = f.get(4) {
                    who.push(format!("mounted at {at}"));
                }
            }
        }
    }
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let holds = std::fs::read_dir(entry.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| {
                std::fs::metadata(fd.path())
                    .is_ok_and(|m| m.file_type().is_block_device() && m.rdev() == rdev)
            });
        if holds {
            who.push(format!(
                "open by another run, pid {pid}: {}",
                command_line(pid)
            ));
        }
    }
    if who.is_empty() {
        "opened exclusively by the kernel or another program".into()
    } else {
        who.join("; ")
    }
}

pub(crate) fn command_line(pid: u32) -> String {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    if cmd.is_empty() {
        "?".into()
    } else {
        cmd
    }
}

/// The process holding a `flock` on the inode `ino` of device `dev`, from
/// /proc/locks, with its command line.
fn lock_holder(dev: u64, ino: u64) -> Option<(u32, String)> {
    use rustix::fs::{major, minor};
    let want = format!("{:02x}:{:02x}:{ino}", major(dev), minor(dev));
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let pid: u32 = locks.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&want.as_str()))
            .then(|| f.get(4)?.parse().ok())
            .flatten()
    })?;
    Some((pid, command_line(pid)))
}

/// Where the state of an in-place apply of `canonical` lives by default:
/// beside a regular file; for a block device, under /var/lib/anypatch,
/// named by its device number (so /dev/vg0/root and /dev/vg1/root, or two
/// symlinks named `disk`, never share one).
pub fn default_state_path(canonical: &Path, id: TargetId) -> PathBuf {
    match id {
        TargetId::Block { rdev, .. } => {
            use rustix::fs::{major, minor};
            PathBuf::from(STATE_DIR).join(format!(
                "block-{}:{}.anypatch-state",
                major(rdev),
                minor(rdev)
            ))
        }
        TargetId::File { .. } => {
            let name = canonical
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "target".into());
            canonical.with_file_name(format!(".{name}.anypatch-state"))
        }
    }
}

/// A fresh apply: verify everything (pinning segments), then write.
///
/// With `claim` (the empty state file of an apply that was interrupted
/// before it journaled anything), a target that is no longer the old image
/// may hold some of that apply's direct writes: it is checked by running
/// the patch over it as it is, and written only if that makes the new image.
fn fresh(
    t: &Target,
    state_path: &Path,
    claim: Option<Claim>,
    patch: &PatchSource,
    policy: &Policy,
    opts: &InPlaceOptions,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Summary, DriveError> {
    let interrupted = claim.is_some();
    let mut claim = claim;
    // Pass 1: verify everything, write nothing to the target.
    let state: RefCell<Option<State>> = RefCell::new(None);
    let mut header: Option<Header> = None;
    let mut verified = verify(
        t,
        patch,
        policy,
        true,
        (&state, &mut claim, state_path),
        &mut header,
        on_progress,
    );
    // Not the old image: unless it is the new image already, see whether
    // the patch makes the new image from it as it is. That finishes an
    // apply that was interrupted before it journaled anything, whether or
    // not its empty state file is still there (another target's run may
    // have taken it, or its path changed); the result is verified either way.
    let redo = matches!(
        verified,
        Err(DriveError::Apply(
            ApplyError::BaseHash | ApplyError::BaseLength { .. }
        ))
    ) && header.as_ref().is_some_and(|h| {
        // An interrupted apply never writes past the new length, nor
        // grows a block device: a longer target (a footer added) is a
        // wrong base, never redone.
        t.len <= h.old_len.max(h.new_len) && !is_image(&t.file, h.new_len, &h.new_hash)
    });
    let mut wrong_base = None;
    if redo {
        if let Some(s) = state.borrow_mut().as_mut() {
            s.clear_pins();
        }
        wrong_base = verified.err();
        let old_len = header.as_ref().map_or(0, |h| h.old_len);
        verified = if t.len < old_len {
            // Shorter than the old image: some old bytes are gone.
            Err(DriveError::Apply(ApplyError::BaseLength {
                got: t.len,
                expected: old_len,
            }))
        } else {
            verify(
                t,
                patch,
                policy,
                false,
                (&state, &mut claim, state_path),
                &mut header,
                on_progress,
            )
        };
    }
    let state = state.into_inner();
    let verified = match verified {
        Ok(v) => v,
        Err(e) => {
            let why = Failure {
                error: e,
                wrong_base,
                interrupted,
            };
            return Err(give_up(why, state, claim, t, header.as_ref(), patch));
        }
    };
    let mut state = state.expect("the header comes before the end of a successful pass");
    let header = header.expect("the header comes before the end of a successful pass");
    let new_hash = verified
        .new_hash
        .expect("a verifying pass computes the new hash");
    state.verified(verified.patch_hash);

    // Pass 2: the same patch again, now writing. The header must be the one
    // just verified; its hash chain pins the pages, the pins each segment.
    let mut written = 0;
    let summary = write_pass(
        &mut state,
        t,
        &header,
        patch,
        policy,
        opts,
        &mut written,
        &mut |h| {
            if *h != header {
                return Err(DriveError::Refused(
                    "the patch file changed while it was being applied; get it again and run the same command".into(),
                ));
            }
            Ok(())
        },
        on_progress,
    )?;
    // After a redo, the result is hashed whole, as after any resume.
    finish(state, t, &header, redo)?;
    if redo && !interrupted {
        // Not the old image, and no mark of an interrupted apply: say so,
        // although the result is exactly the new image.
        eprintln!(
            "applypatch: note: {} was not the patch's old image (an interrupted apply, or changes in bytes the patch replaces); the patch made the new image from it, verified whole",
            t.path.display()
        );
    }
    Ok(Summary {
        bytes_written: written,
        new_hash: Some(new_hash),
        ..summary
    })
}

/// A verifying pass over the target as it is, writing nothing to it:
/// checks the header, creates (or takes over) the state file, pins every
/// segment. `verify_base: false` skips the base hash: only every segment
/// and the new hash then say the target makes the new image.
fn verify(
    t: &Target,
    patch: &PatchSource,
    policy: &Policy,
    verify_base: bool,
    (state, claim, state_path): (&RefCell<Option<State>>, &mut Option<Claim>, &Path),
    header: &mut Option<Header>,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Summary, DriveError> {
    let old_len = match (verify_base, header.as_ref()) {
        (false, Some(h)) => h.old_len,
        _ => t.len,
    };
    let mut applier = Applier::new(Config {
        verify_base,
        in_place: true,
        ..Config::new(old_len)
    });
    applier.require_signature(&policy.trusted_keys);
    drive(
        &mut applier,
        &mut patch.open()?,
        &t.file,
        &mut PinSink { state },
        &mut |h| {
            if let Some(first) = header.as_ref() {
                // A second pass: the header must be the one checked.
                return if first == h {
                    Ok(())
                } else {
                    Err(DriveError::Refused(
                        "the patch file changed while it was being applied; get it again and run the same command".into(),
                    ))
                };
            }
            policy.check_header(h)?;
            // Refuse from the header alone, before hashing the whole base.
            if h.flags & FLAG_IN_PLACE_SAFE == 0 {
                return Err(DriveError::NotInPlace(
                    "this patch is not marked safe to apply in place (it reads data it would overwrite); make it with mkpatch --in-place, or apply it with -o".into(),
                ));
            }
            if !t.is_regular && h.new_len != t.len {
                return Err(DriveError::Refused(format!(
                    "the patch changes the size from {} to {} bytes, which a block device cannot do",
                    t.len, h.new_len
                )));
            }
            *header = Some(h.clone());
            *state.borrow_mut() = Some(State::create(
                state_path,
                Identity {
                    patch_hash: [0; 32],
                    new_len: h.new_len,
                    target: t.id,
                    target_len: t.len,
                },
                claim.take(),
            )?);
            Ok(())
        },
        on_progress,
    )
}

/// After a failed verifying pass, nothing was written: the state file goes,
/// unless it marks an interrupted apply that this run could not finish.
fn give_up(
    why: Failure,
    state: Option<State>,
    claim: Option<Claim>,
    t: &Target,
    header: Option<&Header>,
    patch: &PatchSource,
) -> DriveError {
    let path = state.as_ref().map(|s| s.path().to_path_buf());
    let Failure {
        error: e,
        wrong_base,
        interrupted,
    } = why;
    let already = header.is_some_and(|h| is_image(&t.file, h.new_len, &h.new_hash));
    // Without a mark of an interrupted apply, a failed redo is just the
    // wrong base it started from.
    let (e, redo) = match wrong_base {
        Some(first) if !interrupted => (first, false),
        Some(_) => (e, true),
        None => (e, false),
    };
    if !redo || already {
        let removed = match (state, claim) {
            (Some(s), _) => s.remove(),
            (None, Some(c)) => c.remove(),
            (None, None) => Ok(()),
        };
        if let Err(r) = removed {
            return r;
        }
        return explain_failure(e, t, header, patch);
    }
    let path = path.map_or_else(String::new, |p| p.display().to_string());
    match e {
        DriveError::Apply(
            ApplyError::NewHash | ApplyError::SegmentHash { .. } | ApplyError::BaseLength { .. },
        ) => DriveError::Refused(format!(
            "{} is not the patch's old image, and the patch run over it does not make the new image either. An in-place apply to it was interrupted ({path} marks it): either that apply was of another patch (finish it with that patch: the same command), or the target was changed since. Nothing was written; the target is left as it is. If it was restored from a backup, remove {path} and run again",
            t.path.display()
        )),
        e => e,
    }
}

/// Why a fresh apply's verifying pass failed.
struct Failure {
    error: DriveError,
    /// The wrong base found first, when the patch was then run over the
    /// target as it is and `error` is why that failed too.
    wrong_base: Option<DriveError>,
    /// An empty state file marked an interrupted apply.
    interrupted: bool,
}

/// Says more about a failed verifying pass: an already-applied target is not
/// an error, and a wrong base that is a half-patched target names its state.
fn explain_failure(
    e: DriveError,
    t: &Target,
    header: Option<&Header>,
    patch: &PatchSource,
) -> DriveError {
    let DriveError::Apply(source @ (ApplyError::BaseHash | ApplyError::BaseLength { .. })) = e
    else {
        return e;
    };
    if let Some(h) = header {
        if is_image(&t.file, h.new_len, &h.new_hash) {
            return DriveError::AlreadyApplied;
        }
    }
    match half_patched_note(&t.path, &t.canonical, t.id, patch) {
        Some(note) => DriveError::WrongBase { source, note },
        None => DriveError::Apply(source),
    }
}

/// For a wrong base on any command (`--in-place`, `-o`, `--check`): when
/// `path` is the target of an unfinished in-place apply, a note that names
/// its state and says how to finish or discard it.
pub(crate) fn wrong_base_note(path: &Path, patch: &PatchSource) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let id = if meta.file_type().is_block_device() {
        block_id(meta.rdev())
    } else {
        TargetId::File {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    };
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    half_patched_note(path, &canonical, id, patch)
}

fn half_patched_note(
    path: &Path,
    canonical: &Path,
    id: TargetId,
    patch: &PatchSource,
) -> Option<String> {
    // Failing those, states of this very patch, whatever target they name:
    // the same image under another device number (a loop device attached anew).
    let mut found = unfinished_states(path, canonical, id, None);
    if found.is_empty() {
        if let PatchSource::Path(p) = patch {
            found = unfinished_states(path, canonical, id, hash_patch_file(p).ok());
        }
    }
    let patch_name = match patch {
        PatchSource::Stdin => "PATCH".into(),
        other => other.name(),
    };
    if found.is_empty() {
        // An empty state file where the default one goes: an apply that
        // was interrupted before it journaled anything.
        let marker = default_state_path(canonical, id);
        return matches!(journal::peek_identity(&marker), Some(None)).then(|| format!(
            "the target may be half-patched: {} marks an in-place apply to it that was interrupted before it journaled anything. To finish it, run: applypatch --in-place {} {patch_name} (with the patch it was applying); to discard it, only if the target holds the old image again: rm {}.",
            marker.display(),
            path.display(),
            marker.display()
        ));
    }
    let mut note = String::from("the target is half-patched:");
    for (state, sid, done) in found {
        if sid.target != id {
            note.push_str(&format!(
                " {} records an unfinished in-place apply of this patch to {} ({done} of {} bytes final); if that is this image under another device number, finish it with: applypatch --in-place {} {} --state {} (the target's content is checked first).",
                state.display(),
                sid.target,
                sid.new_len,
                path.display(),
                patch_name,
                state.display(),
            ));
            continue;
        }
        note.push_str(&format!(
            " {} records an unfinished in-place apply to it ({done} of {} bytes final) of the patch with BLAKE3 {}. To finish it, run: applypatch --in-place {} {} --state {} (with that patch); to discard it, only if the target was restored from a backup: rm {}.",
            state.display(),
            sid.new_len,
            &hex(&sid.patch_hash)[..16],
            path.display(),
            patch_name,
            state.display(),
            state.display()
        ));
    }
    Some(note)
}

/// State files in the usual places (beside the target as given and as
/// resolved, and under /var/lib/anypatch) that record an unfinished write
/// to this very target, or of the patch whose hash is `patch_hash`.
fn unfinished_states(
    path: &Path,
    canonical: &Path,
    target: TargetId,
    patch_hash: Option<Hash>,
) -> Vec<(PathBuf, Identity, u64)> {
    let mut dirs: Vec<PathBuf> = vec![PathBuf::from(STATE_DIR)];
    for p in [path, canonical] {
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // `.` and the directory's full name are one directory: list it once.
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    let mut found = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.to_string_lossy().ends_with(".anypatch-state") {
                continue;
            }
            if let Some(Some((id, done))) = journal::peek_identity(&path) {
                if id.target == target || Some(id.patch_hash) == patch_hash {
                    found.push((path, id, done));
                }
            }
        }
    }
    found
}

/// Finishes an interrupted in-place apply recorded in `state`, after
/// checking that the target is as the interrupted run left it.
fn resume(
    mut state: State,
    t: &Target,
    patch: &PatchSource,
    patch_path: &Path,
    policy: &Policy,
    opts: &InPlaceOptions,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Summary, DriveError> {
    let identity = state.identity;
    if hash_patch_file(patch_path)? != identity.patch_hash {
        return Err(DriveError::Refused(format!(
            "{} records an unfinished in-place apply of a different patch (BLAKE3 {}); finish it with that patch first (or, if the target was restored from a backup, remove the state file)",
            state.path().display(),
            &hex(&identity.patch_hash)[..16],
        )));
    }
    if let TargetId::Block { .. } = identity.target {
        if t.len != identity.target_len {
            return Err(DriveError::Refused(format!(
                "{} is {} bytes, but the unfinished apply in {} began on {} bytes; nothing was written",
                t.path.display(),
                t.len,
                state.path().display(),
                identity.target_len
            )));
        }
    }
    // The patch hash pins the header: the images' lengths and hashes.
    let header = read_header(patch_path)?;
    if header.new_len != identity.new_len {
        return Err(DriveError::Refused(format!(
            "{} does not match the patch it names; nothing was written. If the target was restored from a backup, remove it and run again",
            state.path().display()
        )));
    }
    match check_before_resuming(&mut state, t, &header, patch, policy, on_progress) {
        Err(DriveError::AlreadyApplied) => {
            state.remove()?;
            return Err(DriveError::AlreadyApplied);
        }
        r => r?,
    }
    state.replay(&mut t.writer())?;
    let mut written = 0;
    let summary = write_pass(
        &mut state,
        t,
        &header,
        patch,
        policy,
        opts,
        &mut written,
        &mut same_header(&header),
        on_progress,
    )?;
    finish(state, t, &header, true)?;
    Ok(Summary {
        bytes_written: written,
        new_hash: Some(header.new_hash),
        ..summary
    })
}

fn same_header(header: &Header) -> impl FnMut(&Header) -> Result<(), DriveError> + '_ {
    move |h| {
        if h != header {
            return Err(DriveError::Refused(
                "the patch file changed while it was being applied; get it again and run the same command".into(),
            ));
        }
        Ok(())
    }
}

/// The header of the patch file at `path`, checked against its hash.
fn read_header(path: &Path) -> Result<Header, DriveError> {
    use anypatch_apply::format::{
        parse_header_section, Preamble, PreambleRepr, HASH_LEN, PREAMBLE_LEN,
    };
    let f = File::open(path).map_err(io_err(format!("cannot open patch {}", path.display())))?;
    let bad = |e: anypatch_apply::format::FormatError| DriveError::Apply(ApplyError::from(e));
    let mut pre = [0u8; PREAMBLE_LEN];
    f.read_exact_at(&mut pre, 0)
        .map_err(io_err("cannot read the patch"))?;
    let repr = PreambleRepr::parse(&Preamble::new_checked(&pre[..]).map_err(bad)?).map_err(bad)?;
    let mut section = vec![0u8; PREAMBLE_LEN + repr.header_len as usize + HASH_LEN];
    f.read_exact_at(&mut section, 0)
        .map_err(io_err("cannot read the patch"))?;
    Ok(parse_header_section(&section).map_err(bad)?.1)
}

/// Before a resume writes anything: the target must be what the interrupted
/// run left. Its committed part (with an uncommitted journal's runs laid
/// over it) followed by what the engine makes from the rest, without
/// writing, must hash to the new image's BLAKE3. Refuses otherwise, with
/// the target untouched.
fn check_before_resuming(
    state: &mut State,
    t: &Target,
    header: &Header,
    patch: &PatchSource,
    policy: &Policy,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<(), DriveError> {
    state.clear_pins();
    let pending = state.pending_journal()?;
    let (from, runs) = match &pending {
        Some(p) => (
            p.end,
            p.runs()
                .map_err(io_err(format!("cannot read {}", state.path().display())))?,
        ),
        None => (state.done, Vec::new()),
    };
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut at = 0;
    while at < from {
        let n = (from - at).min(buf.len() as u64) as usize;
        journal::read_up_to(&t.file, &mut buf[..n], at)
            .map_err(io_err(format!("cannot read {}", t.path.display())))?;
        for (offset, data) in &runs {
            // Lay the journaled runs over what the target holds.
            let (s, e) = (*offset, *offset + data.len() as u64);
            let (lo, hi) = (s.max(at), e.min(at + n as u64));
            if lo < hi {
                buf[(lo - at) as usize..(hi - at) as usize]
                    .copy_from_slice(&data[(lo - s) as usize..(hi - s) as usize]);
            }
        }
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    let mut applier = Applier::new(Config {
        verify_base: false,
        in_place: true,
        resume_from: from,
        ..Config::new(header.old_len)
    });
    applier.require_signature(&policy.trusted_keys);
    let state_path = state.path().to_path_buf();
    let mut sink = HashSink {
        hasher,
        next: from,
        state,
        gap: false,
    };
    let made = drive(
        &mut applier,
        &mut patch.open()?,
        &t.file,
        &mut sink,
        &mut same_header(header),
        on_progress,
    );
    let changed = match made {
        Ok(_) => sink.gap || *sink.hasher.finalize().as_bytes() != header.new_hash,
        // A segment that fails its hash: the old bytes it reads changed; a
        // read past the end: the target got shorter.
        Err(DriveError::Apply(ApplyError::SegmentHash { .. })) => true,
        Err(DriveError::Refused(_)) if file_len(&t.file).is_ok_and(|n| n < header.old_len) => true,
        Err(e) => return Err(e),
    };
    if !changed {
        return Ok(());
    }
    if is_image(&t.file, header.new_len, &header.new_hash) {
        // Finished after all (the kill came after the last write).
        return Err(DriveError::AlreadyApplied);
    }
    let what = if is_image(&t.file, header.old_len, &header.old_hash) {
        "it is the patch's old image again (restored from a backup?)"
    } else {
        "it is neither the old image nor what the interrupted apply left (restored, or written to by something else?)"
    };
    Err(DriveError::Refused(format!(
        "{} changed since the interrupted in-place apply recorded in {}: {what}. Nothing was written; the target is left as it is. If it holds the old image, remove {} and run again; otherwise restore it from a backup first",
        t.path.display(),
        state_path.display(),
        state_path.display()
    )))
}

/// Hashes what the engine makes, in order, pinning each segment for the
/// writing pass.
struct HashSink<'a> {
    hasher: blake3::Hasher,
    next: u64,
    state: &'a mut State,
    /// Output was not contiguous: cannot be the new image.
    gap: bool,
}

impl Sink for HashSink<'_> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.gap |= offset != self.next;
        self.hasher.update(data);
        self.next = offset + data.len() as u64;
        Ok(())
    }
    fn zero(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.gap |= offset != self.next;
        let zeros = [0u8; 0x4000];
        let mut left = len;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            self.hasher.update(&zeros[..n]);
            left -= n as u64;
        }
        self.next = offset + len;
        Ok(())
    }
    fn segment_written(&mut self, index: u64, hash: &Hash) -> io::Result<()> {
        self.state.pin(index, hash)
    }
    fn describe(&self) -> String {
        format!(
            "the state file {} (segment pins)",
            self.state.path().display()
        )
    }
}

/// The writing pass, from where the state says the target is final.
#[allow(clippy::too_many_arguments)]
fn write_pass(
    state: &mut State,
    t: &Target,
    header: &Header,
    patch: &PatchSource,
    policy: &Policy,
    opts: &InPlaceOptions,
    written: &mut u64,
    on_header: &mut dyn FnMut(&Header) -> Result<(), DriveError>,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Summary, DriveError> {
    let cfg = Config {
        verify_base: false,
        skip_unchanged: true,
        in_place: true,
        resume_from: state.done,
        ..Config::new(header.old_len)
    };
    let mut applier = Applier::new(cfg);
    applier.require_signature(&policy.trusted_keys);
    let mut sink = JournaledSink::new(state, t.writer(), opts.batch_bytes);
    let result = drive(
        &mut applier,
        &mut patch.open()?,
        &t.file,
        &mut sink,
        on_header,
        on_progress,
    );
    let (bytes, error) = sink.into_parts();
    *written += bytes;
    match (result, error) {
        (Err(_), Some(e)) => Err(e),
        // Everything was verified in the first pass: a segment that now
        // fails was read from a patch file or a target that changed since.
        (Err(DriveError::Apply(ApplyError::SegmentHash { segment, .. } | ApplyError::Decode { segment, .. })), _) => {
            Err(DriveError::Refused(format!(
                "data segment {segment} makes other bytes than when it was verified: the patch file or {} changed while applypatch ran (something that ignores its lock?). The target is partly written and safe: its state is kept in {}; get the patch again if it changed, and run the same command",
                t.path.display(),
                state.path().display()
            )))
        }
        (r, _) => r,
    }
}

/// Sets the final length, flushes, checks a resumed result, removes the state.
fn finish(state: State, t: &Target, header: &Header, resumed: bool) -> Result<(), DriveError> {
    if t.is_regular {
        if file_len(&t.file).is_ok_and(|len| len > header.new_len) {
            // Cutting old bytes off is final: what was written before must
            // be on disk first, or a power cut could leave a target that
            // is neither image and cannot be redone.
            t.file
                .sync_data()
                .map_err(io_err("cannot flush the target to disk"))?;
        }
        t.file
            .set_len(header.new_len)
            .map_err(io_err("cannot set the target's final length"))?;
    }
    t.file
        .sync_all()
        .map_err(io_err("cannot flush the target to disk"))?;
    // Something that ignores the lock (a rename over the path) may have put
    // another file where the target was: the result is not at the path then.
    let now = std::fs::metadata(&t.path).map(|m| match t.id {
        TargetId::File { .. } => TargetId::File {
            dev: m.dev(),
            ino: m.ino(),
        },
        TargetId::Block { .. } => block_id(m.rdev()),
    });
    if now.ok() != Some(t.id) {
        return Err(DriveError::Refused(format!(
            "{} was replaced by another file while applypatch rewrote it: the new image went to the file that was there, which no longer has that name. The state is kept in {}",
            t.path.display(),
            state.path().display()
        )));
    }
    // A resumed result is checked whole before success is declared.
    if resumed && !is_image(&t.file, header.new_len, &header.new_hash) {
        return Err(DriveError::Refused(format!(
            "the resumed target does not match the patch's new BLAKE3: it was changed outside applypatch; the state is kept in {}",
            state.path().display()
        )));
    }
    state.remove()
}

/// Whether `file` holds exactly `len` bytes hashing to `hash`.
fn is_image(file: &File, len: u64, hash: &Hash) -> bool {
    file_len(file).ok() == Some(len) && hash_range(file, 0, len).is_ok_and(|h| h == *hash)
}

/// BLAKE3 of the patch file without its trailer: the patch hash that the
/// trailer, the engine's summary and the state file record.
fn hash_patch_file(path: &Path) -> Result<Hash, DriveError> {
    let f = File::open(path).map_err(io_err(format!("cannot open patch {}", path.display())))?;
    let len = f.metadata().map_err(io_err("cannot size the patch"))?.len();
    hash_range(&f, 0, len.saturating_sub(TRAILER_LEN as u64))
        .map_err(io_err("cannot read the patch"))
}

/// Test hook: with `ANYPATCH_TEST_IO_REPORT=FILE`, writes to FILE what this
/// process wrote (`wchar` from /proc/self/io: every byte of every write
/// call, to the target, the state file or anywhere) and the part of it that
/// went to state files, so a test can measure write amplification.
#[cfg(not(feature = "test-hooks"))]
fn report_io_for_tests(_: &Result<Summary, DriveError>) {}

/// See above; only with the `test-hooks` feature.
#[cfg(feature = "test-hooks")]
fn report_io_for_tests(result: &Result<Summary, DriveError>) {
    let Some(path) = std::env::var_os("ANYPATCH_TEST_IO_REPORT") else {
        return;
    };
    let wchar = std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("wchar:").map(|v| v.trim().parse::<u64>()))
        })
        .and_then(Result::ok);
    let state = journal::STATE_BYTES.load(std::sync::atomic::Ordering::Relaxed);
    let target = result.as_ref().map_or(0, |s| s.bytes_written);
    let _ = std::fs::write(
        path,
        format!(
            "{{\"wchar\":{},\"state_bytes\":{state},\"target_bytes\":{target}}}\n",
            wchar.map_or("null".into(), |w| w.to_string())
        ),
    );
}
