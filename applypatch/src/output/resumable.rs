//! `-o NEW` from a remote patch, resumable across a killed process.
//!
//! The new image is written to `.NAME.anypatch-part` beside NEW. Every few
//! MiB of patch, once the part file is synced, an engine checkpoint (spec
//! section 6.4) goes to `.NAME.anypatch-part.resume`, with what it belongs
//! to: the URL, the server's version of the patch, and OLD's identity. Run
//! again with the same command, applypatch goes on from the last checkpoint
//! when all of these are the same, fetching only the header section and
//! what follows the checkpoint; otherwise it starts over. Bytes before the
//! checkpoint were verified when they were written; everything after it is
//! verified as in any apply, the whole-patch and whole-new hashes included.
//! On success the part file is renamed to NEW; nothing appears at NEW
//! before. A patch found corrupt, or a resumed apply that fails its checks,
//! removes the part and the checkpoint, so the next run starts over.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use anypatch_apply::checkpoint::Checkpoint;
use anypatch_apply::drive::{drive_checkpointed, Checkpoints};
use anypatch_apply::{Applier, Config, ErrorClass, Progress, Summary};
use anypatch_net::fetch::Head;
use anypatch_net::{RemotePatch, VersionChanged};
use anypatch_safe_output::{parent_dir, signals, Owner};

use super::{lock_existing, new_file_mode, NewFileSink, OutputTarget, Written};
use crate::remote::Remote;
use crate::{io_err, DriveError, Policy};

/// Patch bytes between two checkpoints. A killed run fetches again at most
/// this, plus what was in flight (the network's 16 MiB of buffers).
const EVERY: u64 = 4 << 20;

const MAGIC: &str = "anypatch-resume 2";

/// What a checkpoint belongs to, and the checkpoint.
#[derive(Debug, PartialEq, Eq)]
struct Saved {
    url: String,
    head: Head,
    old: String,
    /// The part file's device and inode ([`part_stamp`]).
    part: String,
    checkpoint: Vec<u8>,
}

impl Saved {
    fn encode(&self) -> Vec<u8> {
        let mut v = format!(
            "{MAGIC}\nurl {}\nlen {}\ntag {}\nold {}\npart {}\n\n",
            self.url,
            self.head.len.map_or(String::new(), |l| l.to_string()),
            self.head.tag,
            self.old,
            self.part
        )
        .into_bytes();
        v.extend_from_slice(&self.checkpoint);
        let check = blake3::hash(&v);
        v.extend_from_slice(check.as_bytes());
        v
    }

    /// `None` for anything but a whole, intact file of ours.
    fn decode(bytes: &[u8]) -> Option<Self> {
        let (body, check) = bytes.split_at(bytes.len().checked_sub(32)?);
        if blake3::hash(body).as_bytes() != check {
            return None;
        }
        let split = body.windows(2).position(|w| w == b"\n\n")?;
        let text = std::str::from_utf8(&body[..split]).ok()?;
        let mut lines = text.lines();
        if lines.next()? != MAGIC {
            return None;
        }
        let mut field = |name: &str| lines.next()?.strip_prefix(name).map(str::to_owned);
        let url = field("url ")?;
        let len = field("len ")?;
        let tag = field("tag ")?;
        let old = field("old ")?;
        let part = field("part ")?;
        Some(Self {
            url,
            head: Head {
                len: if len.is_empty() {
                    None
                } else {
                    Some(len.parse().ok()?)
                },
                tag,
                skip: 0,
            },
            old,
            part,
            checkpoint: body[split + 2..].to_vec(),
        })
    }
}

/// OLD's identity: a checkpoint does not hash the base again, so it is
/// used only while OLD is the file it was taken against.
fn old_stamp(m: &Metadata) -> String {
    format!(
        "{} {} {} {}.{} {}.{}",
        m.dev(),
        m.ino(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    )
}

/// Writes the new image from `remote` to the regular file `new`,
/// continuing a run that was stopped when it can. A patch that changed on
/// the server since the part file was begun cannot be continued: what was
/// written is dropped and the patch applied again from byte 0, once.
pub(super) fn write_remote_file(
    old_file: &File,
    old_len: u64,
    old_meta: &Metadata,
    remote: &Remote,
    new: &Path,
    policy: &Policy,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Written, DriveError> {
    let dir = parent_dir(new);
    let name = new
        .file_name()
        .ok_or_else(|| {
            DriveError::Refused(format!(
                "the output {} names a directory; give the new image's file name",
                new.display()
            ))
        })?
        .to_string_lossy()
        .into_owned();
    let paths = PartPaths {
        part: dir.join(format!(".{name}.anypatch-part")),
        resume: dir.join(format!(".{name}.anypatch-part.resume")),
        dir,
        new: new.to_path_buf(),
    };
    let existing = fs::metadata(new).ok().filter(Metadata::is_file);
    let _held = existing.as_ref().map(|_| lock_existing(new)).transpose()?;
    let part = open_part(&paths, new_file_mode(old_meta))?;
    let _writing = Writing::start(&paths);
    let mut restarted = false;
    loop {
        let result = write_part(
            old_file,
            old_len,
            old_meta,
            remote,
            &paths,
            &part,
            policy,
            on_progress,
        );
        match result {
            Err(e) if !restarted && changed_on_server(&e).is_some() => {
                let why = changed_on_server(&e).map(ToString::to_string);
                let _ = writeln!(
                    io::stderr(),
                    "applypatch: {}; what was fetched of it cannot be continued: starting over from byte 0",
                    why.unwrap_or_default()
                );
                let _ = fs::remove_file(&paths.resume);
                restarted = true;
            }
            Err(e) => return Err(e),
            Ok(summary) => return commit(&paths, &part, existing.as_ref(), summary),
        }
    }
}

/// Where a remote `-o` keeps its work.
struct PartPaths {
    /// NEW's directory.
    dir: PathBuf,
    new: PathBuf,
    /// `.NAME.anypatch-part`: the new image as far as it was written.
    part: PathBuf,
    /// `.NAME.anypatch-part.resume`: the last checkpoint and what it belongs to.
    resume: PathBuf,
}

/// The version change behind a failed read of the patch, if that is the failure.
fn changed_on_server(e: &DriveError) -> Option<&VersionChanged> {
    match e {
        DriveError::Io { source, .. } => VersionChanged::of(source),
        _ => None,
    }
}

/// Opens and locks the part file. Two runs writing one part file would
/// interleave, so a second one is refused. The lock is taken on what the
/// path names after the lock is held: a run that just finished renamed the
/// part file it locked to NEW, and that file must not be written again.
fn open_part(paths: &PartPaths, mode: u32) -> Result<File, DriveError> {
    use rustix::fs::{flock, FlockOperation};
    let shown = paths.part.display();
    for _ in 0..8 {
        let part = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(mode)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&paths.part)
            .map_err(io_err(format!("cannot open {shown}")))?;
        stop_before_part_lock_for_tests();
        match flock(&part, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                return Err(DriveError::Refused(format!(
                    "another applypatch is writing {} ({shown} is locked); wait for it to finish. Nothing was written",
                    paths.new.display(),
                )))
            }
            Err(e) => {
                return Err(DriveError::Io {
                    action: format!("cannot lock {shown}"),
                    source: e.into(),
                })
            }
        }
        let held = part
            .metadata()
            .map_err(io_err(format!("cannot stat {shown}")))?;
        match fs::symlink_metadata(&paths.part) {
            Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => return Ok(part),
            _ => continue, // renamed or removed by the run that held it: open anew
        }
    }
    Err(DriveError::Refused(format!(
        "{shown} keeps being replaced while applypatch opens it; is another program writing {}?",
        paths.new.display()
    )))
}

/// The part file's identity: a checkpoint is only for the file it was
/// taken in (a part file removed and made anew holds none of those bytes).
fn part_stamp(m: &Metadata) -> String {
    format!("{} {}", m.dev(), m.ino())
}

/// One pass at the part file: from the saved checkpoint when it belongs to
/// this command, OLD and part file, else from byte 0.
#[allow(clippy::too_many_arguments)]
fn write_part(
    old_file: &File,
    old_len: u64,
    old_meta: &Metadata,
    remote: &Remote,
    paths: &PartPaths,
    part: &File,
    policy: &Policy,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Summary, DriveError> {
    let resume_path = &paths.resume;
    let shown = paths.part.display().to_string();
    let part_meta = part
        .metadata()
        .map_err(io_err(format!("cannot stat {shown}")))?;
    let stamp = old_stamp(old_meta);
    let part_id = part_stamp(&part_meta);
    let saved = fs::read(resume_path)
        .ok()
        .and_then(|b| Saved::decode(&b))
        .filter(|s| s.url == remote.url.text && s.old == stamp && s.part == part_id)
        .and_then(|s| Some((Checkpoint::decode(&s.checkpoint).ok()?, s.head)))
        .filter(|(cp, _)| cp.new_pos <= part_meta.len());
    let head = Arc::new(Mutex::new(None));
    let (mut applier, reader, sink_start) = match saved {
        Some((cp, was)) if was.len.is_some() => {
            let len = was.len.expect("checked");
            part.set_len(cp.new_pos)
                .map_err(io_err(format!("cannot resume {shown}")))?;
            say_resuming(&paths.new, cp.resume_at, len);
            let mut opts = remote.opts.clone();
            opts.expect = Some(was.clone());
            *head.lock().unwrap_or_else(|e| e.into_inner()) = Some(was);
            let reader = Ranges::new(remote, opts, cp.feed_plan(len), head.clone());
            let start = cp.new_pos;
            (Applier::resume(Config::new(old_len), cp), reader, start)
        }
        _ => {
            part.set_len(0)
                .map_err(io_err(format!("cannot write {shown}")))?;
            let _ = fs::remove_file(resume_path);
            let whole = std::iter::once(0..u64::MAX).collect();
            let reader = Ranges::new(remote, remote.opts.clone(), whole, head.clone());
            (Applier::new(Config::new(old_len)), reader, 0)
        }
    };
    let resumed = reader.resumed();
    let mut reader = SlowForTests::new(reader);
    applier.require_signature(&policy.trusted_keys);
    let mut sink = NewFileSink::resumed(part, sink_start).named(shown.clone());
    let url = remote.url.text.clone();
    let mut save = |cp: Checkpoint| -> io::Result<()> {
        // What the server said: known once the first bytes came.
        let Some(head) = head.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return Ok(());
        };
        part.sync_data()?;
        let saved = Saved {
            url: url.clone(),
            head,
            old: stamp.clone(),
            part: part_id.clone(),
            checkpoint: cp.encode(),
        };
        write_atomically(resume_path, &saved.encode())?;
        killed_after_checkpoint_for_tests();
        Ok(())
    };
    let result = drive_checkpointed(
        &mut applier,
        &mut reader,
        old_file,
        &mut sink,
        &mut |h| policy.check_header(h),
        on_progress,
        Checkpoints {
            every: EVERY,
            save: &mut save,
        },
    );
    match result {
        Ok(summary) => Ok(Summary {
            bytes_written: sink.written(),
            ..summary
        }),
        Err(e) => {
            let start_over = matches!(&e, DriveError::Apply(a)
                if matches!(a.class(), ErrorClass::CorruptPatch | ErrorClass::WrongBase))
                || (resumed && matches!(e, DriveError::Apply(_)));
            if start_over {
                let _ = fs::remove_file(resume_path);
                let _ = fs::remove_file(&paths.part);
                return Err(e);
            }
            if changed_on_server(&e).is_some() {
                return Err(e); // the caller starts over or gives up
            }
            if !resume_path.exists() {
                // No checkpoint yet: nothing a rerun could go on from.
                let _ = fs::remove_file(&paths.part);
                return Err(note(e, &paths.new, false));
            }
            Err(note(e, &paths.new, true))
        }
    }
}

/// Names the finished part file NEW. A signal that comes during this waits
/// for it, and then finds the output in place (see [`on_signal`]).
fn commit(
    paths: &PartPaths,
    part: &File,
    existing: Option<&Metadata>,
    summary: Summary,
) -> Result<Written, DriveError> {
    let shown = paths.part.display();
    part.set_len(summary.new_len)
        .and_then(|()| {
            if let Some(m) = existing {
                let _ = Owner::of(m).restore(part);
            }
            part.sync_all()
        })
        .map_err(io_err(format!("cannot flush {shown} to disk")))?;
    {
        let mut writing = WRITING.lock().unwrap_or_else(PoisonError::into_inner);
        fs::rename(&paths.part, &paths.new).map_err(io_err(format!(
            "cannot rename {shown} to {}",
            paths.new.display()
        )))?;
        signals::mark_committed();
        *writing = None;
    }
    let _ = fs::remove_file(&paths.resume);
    if let Ok(d) = File::open(&paths.dir) {
        let _ = d.sync_all();
    }
    Ok(Written {
        summary,
        target: OutputTarget::File(paths.new.clone()),
    })
}

/// The part file being written, for a signal handler: see [`on_signal`].
static WRITING: Mutex<Option<(PathBuf, PathBuf)>> = Mutex::new(None);

/// Marks a part file as being written while alive.
struct Writing;

impl Writing {
    fn start(paths: &PartPaths) -> Self {
        *WRITING.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((paths.part.clone(), paths.resume.clone()));
        Self
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        *WRITING.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// For the signal handler, before it decides: holds off the rename of a
/// finished part file until the process ends or the handler lets go, so a
/// signal comes either before NEW is in place or after it is committed.
pub(super) struct OnSignal(MutexGuard<'static, Option<(PathBuf, PathBuf)>>);

/// See [`OnSignal`].
pub(super) fn on_signal() -> OnSignal {
    OnSignal(WRITING.lock().unwrap_or_else(PoisonError::into_inner))
}

impl OnSignal {
    /// The process is about to end: a part file with a checkpoint is kept
    /// for the same command to go on from; one without is removed. Holds
    /// the lock for good, so nothing is renamed to NEW any more.
    pub(super) fn stop(self) -> Vec<String> {
        let notes = match &*self.0 {
            Some((part, resume)) if resume.exists() => vec![format!(
                "kept {} and its checkpoint {}: run the same command again to go on from there; nothing was written to the output",
                part.display(),
                resume.display()
            )],
            Some((part, _)) => {
                let _ = fs::remove_file(part);
                vec![format!(
                    "removed {} (no checkpoint yet); nothing was written to the output",
                    part.display()
                )]
            }
            None => Vec::new(),
        };
        std::mem::forget(self);
        notes
    }
}

#[cfg(not(feature = "test-hooks"))]
fn killed_after_checkpoint_for_tests() {}

/// `ANYPATCH_TEST_KILL_AFTER_CHECKPOINTS=N`: the process kills itself
/// (SIGKILL, as a power cut or the OOM killer would) right after saving its
/// Nth checkpoint, so a test can run the same command again.
#[cfg(feature = "test-hooks")]
fn killed_after_checkpoint_for_tests() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SAVED: AtomicU64 = AtomicU64::new(0);
    let Some(n) = std::env::var("ANYPATCH_TEST_KILL_AFTER_CHECKPOINTS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    if SAVED.fetch_add(1, Ordering::SeqCst) + 1 >= n {
        let me = rustix::process::getpid();
        let _ = rustix::process::kill_process(me, rustix::process::Signal::KILL);
    }
}

/// `ANYPATCH_TEST_STOP_BEFORE_PART_LOCK=1`: the process stops itself
/// (SIGSTOP) between opening the part file and locking it, the first time,
/// so a test can finish another run on the same NEW in that gap.
#[cfg(feature = "test-hooks")]
fn stop_before_part_lock_for_tests() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static DONE: AtomicBool = AtomicBool::new(false);
    if std::env::var_os("ANYPATCH_TEST_STOP_BEFORE_PART_LOCK").is_some()
        && !DONE.swap(true, Ordering::SeqCst)
    {
        let me = rustix::process::getpid();
        let _ = rustix::process::kill_process(me, rustix::process::Signal::STOP);
    }
}

#[cfg(not(feature = "test-hooks"))]
fn stop_before_part_lock_for_tests() {}

/// The patch reader, slowed to `ANYPATCH_TEST_APPLY_RATE` bytes a second
/// with the `test-hooks` feature: an applier slower than the network, so a
/// test sees what the network buffers hold when they are full.
struct SlowForTests<R> {
    inner: R,
    #[cfg(feature = "test-hooks")]
    rate: Option<(f64, std::time::Instant, u64)>,
}

impl<R: Read> SlowForTests<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            #[cfg(feature = "test-hooks")]
            rate: std::env::var("ANYPATCH_TEST_APPLY_RATE")
                .ok()
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|r| *r > 0.0)
                .map(|r| (r, std::time::Instant::now(), 0)),
        }
    }
}

impl<R: Read> Read for SlowForTests<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        #[cfg(feature = "test-hooks")]
        if let Some((rate, start, done)) = &mut self.rate {
            let due = std::time::Duration::from_secs_f64(*done as f64 / *rate);
            std::thread::sleep(due.saturating_sub(start.elapsed()));
            let want = buf.len().min(64 << 10);
            let n = self.inner.read(&mut buf[..want])?;
            *done += n as u64;
            return Ok(n);
        }
        self.inner.read(buf)
    }
}

fn say_resuming(new: &Path, at: u64, len: u64) {
    let _ = writeln!(
        io::stderr(),
        "applypatch: going on with {} from byte {at} of {len} of the patch, where a previous run stopped",
        new.display()
    );
}

/// Says what became of a failed run and how to go on: with a checkpoint
/// `kept`, the same command goes on from it; a full file system is named
/// as the thing to fix first.
fn note(e: DriveError, new: &Path, kept: bool) -> DriveError {
    let DriveError::Io { action, source } = e else {
        return e;
    };
    let full = source.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error());
    let mut text = format!("{source}; nothing was written to {}", new.display());
    if full {
        text.push_str(". The new image is written beside it first: free space on that file system");
    }
    if kept {
        text.push_str(". Run the same command again to go on from the last checkpoint");
    } else if full {
        text.push_str(", then run the same command again");
    }
    DriveError::Io {
        action,
        source: io::Error::new(source.kind(), text),
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = PathBuf::from(path);
    tmp.set_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// The patch ranges of a resume plan, read one after the other: each is a
/// fetch from its start, read up to its end.
struct Ranges<'a> {
    remote: &'a Remote,
    opts: anypatch_net::RemoteOptions,
    plan: std::vec::IntoIter<std::ops::Range<u64>>,
    current: Option<(RemotePatch, u64)>,
    resumed: bool,
    /// What the server said about the patch, once it has.
    head: Arc<Mutex<Option<Head>>>,
}

impl<'a> Ranges<'a> {
    fn new(
        remote: &'a Remote,
        opts: anypatch_net::RemoteOptions,
        plan: Vec<std::ops::Range<u64>>,
        head: Arc<Mutex<Option<Head>>>,
    ) -> Self {
        let resumed = plan.len() > 1;
        Self {
            remote,
            opts,
            plan: plan.into_iter(),
            current: None,
            resumed,
            head,
        }
    }

    fn resumed(&self) -> bool {
        self.resumed
    }
}

impl Read for Ranges<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.current.is_none() {
                let Some(range) = self.plan.next() else {
                    return Ok(0);
                };
                // The last range runs to the end; the others are bounded, so
                // nothing past them crosses the network.
                let end = (self.plan.len() > 0).then_some(range.end);
                let reader = RemotePatch::open_range(
                    self.remote.url.clone(),
                    range.start,
                    end,
                    self.opts.clone(),
                )?;
                self.current = Some((reader, range.end - range.start));
            }
            let (reader, left) = self.current.as_mut().expect("opened above");
            if *left == 0 {
                self.current = None;
                continue;
            }
            let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
            let n = reader.read(&mut buf[..want])?;
            if let Some(seen) = reader.head() {
                let mut head = self.head.lock().unwrap_or_else(|e| e.into_inner());
                head.get_or_insert(seen);
            }
            if n == 0 {
                // The end of the patch (the last range is open-ended).
                self.current = None;
                if self.plan.len() == 0 {
                    return Ok(0);
                }
                continue;
            }
            *left -= n as u64;
            return Ok(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_checkpoints_read_back_and_refuse_damage() {
        let s = Saved {
            url: "quic://h:1/p".into(),
            head: Head {
                len: Some(1234),
                tag: "1-2-3.4".into(),
                skip: 0,
            },
            old: "1 2 3 4.5 6.7".into(),
            part: "8 9".into(),
            checkpoint: vec![9, 8, 7, 0, 10, 10],
        };
        let bytes = s.encode();
        assert_eq!(Saved::decode(&bytes), Some(s));
        for at in 0..bytes.len() {
            let mut b = bytes.clone();
            b[at] ^= 1;
            assert_eq!(Saved::decode(&b), None, "flip at {at}");
        }
        assert_eq!(Saved::decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(Saved::decode(b""), None);
    }
}
