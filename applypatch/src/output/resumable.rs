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
use std::sync::{Arc, Mutex};

use anypatch_apply::checkpoint::Checkpoint;
use anypatch_apply::drive::{drive_checkpointed, Checkpoints};
use anypatch_apply::{Applier, Config, ErrorClass, Progress, Summary};
use anypatch_net::fetch::Head;
use anypatch_net::RemotePatch;
use anypatch_safe_output::{parent_dir, Owner};

use super::{lock_existing, new_file_mode, NewFileSink, OutputTarget, Written};
use crate::remote::Remote;
use crate::{io_err, DriveError, Policy};

/// Patch bytes between two checkpoints. A killed run fetches again at most
/// this, plus what was in flight (the network's 16 MiB of buffers).
const EVERY: u64 = 4 << 20;

const MAGIC: &str = "anypatch-resume 1";

/// What a checkpoint belongs to, and the checkpoint.
#[derive(Debug, PartialEq, Eq)]
struct Saved {
    url: String,
    head: Head,
    old: String,
    checkpoint: Vec<u8>,
}

impl Saved {
    fn encode(&self) -> Vec<u8> {
        let mut v = format!(
            "{MAGIC}\nurl {}\nlen {}\ntag {}\nold {}\n\n",
            self.url,
            self.head.len.map_or(String::new(), |l| l.to_string()),
            self.head.tag,
            self.old
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
/// continuing a run that was stopped when it can.
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
    let part_path = dir.join(format!(".{name}.anypatch-part"));
    let resume_path = dir.join(format!(".{name}.anypatch-part.resume"));
    let existing = fs::metadata(new).ok().filter(Metadata::is_file);
    let _held = existing.as_ref().map(|_| lock_existing(new)).transpose()?;
    let mode = new_file_mode(old_meta);
    let part = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(mode)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&part_path)
        .map_err(io_err(format!("cannot open {}", part_path.display())))?;
    // Two runs writing one part file would interleave: the second is refused.
    rustix::fs::flock(&part, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
        |_| {
            DriveError::Refused(format!(
                "another applypatch is writing {} ({} is locked); wait for it to finish",
                new.display(),
                part_path.display()
            ))
        },
    )?;
    let stamp = old_stamp(old_meta);
    let saved = fs::read(&resume_path)
        .ok()
        .and_then(|b| Saved::decode(&b))
        .filter(|s| s.url == remote.url.text && s.old == stamp)
        .and_then(|s| Some((Checkpoint::decode(&s.checkpoint).ok()?, s.head)));
    let shown = part_path.display().to_string();
    let head = Arc::new(Mutex::new(None));
    let (mut applier, mut reader, sink_start) = match saved {
        Some((cp, was)) if was.len.is_some() => {
            let len = was.len.expect("checked");
            part.set_len(cp.new_pos)
                .map_err(io_err(format!("cannot resume {shown}")))?;
            say_resuming(new, cp.resume_at, len);
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
            let _ = fs::remove_file(&resume_path);
            let whole = std::iter::once(0..u64::MAX).collect();
            let reader = Ranges::new(remote, remote.opts.clone(), whole, head.clone());
            (Applier::new(Config::new(old_len)), reader, 0)
        }
    };
    let resumed = reader.resumed();
    applier.require_signature(&policy.trusted_keys);
    let mut sink = NewFileSink::resumed(&part, sink_start).named(shown.clone());
    let url = remote.url.text.clone();
    let part_for_save = &part;
    let mut save = |cp: Checkpoint| -> io::Result<()> {
        // What the server said: known once the first bytes came.
        let Some(head) = head.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return Ok(());
        };
        part_for_save.sync_data()?;
        let saved = Saved {
            url: url.clone(),
            head,
            old: stamp.clone(),
            checkpoint: cp.encode(),
        };
        write_atomically(&resume_path, &saved.encode())?;
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
    let summary: Summary = match result {
        Ok(s) => s,
        Err(e) => {
            let start_over = matches!(&e, DriveError::Apply(a)
                if matches!(a.class(), ErrorClass::CorruptPatch | ErrorClass::WrongBase))
                || (resumed && matches!(e, DriveError::Apply(_)));
            if start_over {
                let _ = fs::remove_file(&resume_path);
                let _ = fs::remove_file(&part_path);
                return Err(e);
            }
            if !resume_path.exists() {
                // No checkpoint yet: nothing a rerun could go on from.
                let _ = fs::remove_file(&part_path);
                return Err(e);
            }
            return Err(keep_note(e, new));
        }
    };
    let written = sink.written();
    part.set_len(summary.new_len)
        .and_then(|()| {
            if let Some(m) = &existing {
                let _ = Owner::of(m).restore(&part);
            }
            part.sync_all()
        })
        .map_err(io_err(format!("cannot flush {shown} to disk")))?;
    fs::rename(&part_path, new).map_err(io_err(format!(
        "cannot rename {shown} to {}",
        new.display()
    )))?;
    let _ = fs::remove_file(&resume_path);
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(Written {
        summary: Summary {
            bytes_written: written,
            ..summary
        },
        target: OutputTarget::File(new.to_path_buf()),
    })
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

fn say_resuming(new: &Path, at: u64, len: u64) {
    let _ = writeln!(
        io::stderr(),
        "applypatch: going on with {} from byte {at} of {len} of the patch, where a previous run stopped",
        new.display()
    );
}

/// A failed fetch keeps the part and the checkpoint: say how to go on.
fn keep_note(e: DriveError, new: &Path) -> DriveError {
    match e {
        DriveError::Io { action, source } => DriveError::Io {
            action,
            source: io::Error::new(
                source.kind(),
                format!(
                    "{source}; nothing was written to {}. Run the same command again to go on from the last checkpoint",
                    new.display()
                ),
            ),
        },
        other => other,
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
