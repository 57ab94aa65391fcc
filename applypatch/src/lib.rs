//! File adapters over the sans-IO engine: the one applier that the
//! `applypatch` CLI and the initramfs build share.
//!
//! [`drive`] runs an [`Applier`] to completion against a patch reader, an old
//! file read with `pread`, and a [`Sink`] for verified writes. The three entry
//! points ([`check`], [`apply_to_new_file`], [`apply_in_place`]) choose the
//! engine configuration and the sink.
#![forbid(unsafe_code)]

pub mod inplace;
pub mod output;

pub use output::{apply_to_new_file, NewFileSink, OutputTarget, Written};

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anypatch_apply::format::{
    parse_key_file, Hash, Header, KeyKind, FLAG_IN_PLACE_SAFE, TRAILER_LEN,
};
use anypatch_apply::{Applier, ApplyError, Config, Event, Progress, Summary};

/// Patch bytes read per `read` call.
const READ_CHUNK: usize = 0x4_0000;

/// Why an apply did not finish.
#[derive(Debug)]
pub enum DriveError {
    /// The patch or the base is wrong; the engine says how.
    Apply(ApplyError),
    /// Reading or writing a file failed.
    Io { action: String, source: io::Error },
    /// The request cannot be carried out as asked.
    Refused(String),
    /// The patch was not made to be applied in place.
    NotInPlace(String),
    /// In place: the target already is the patch's new image. Not a failure.
    AlreadyApplied,
}

impl fmt::Display for DriveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Apply(e) => e.fmt(f),
            Self::Io { action, source } => write!(f, "{action}: {source}"),
            Self::Refused(why) | Self::NotInPlace(why) => f.write_str(why),
            Self::AlreadyApplied => {
                f.write_str("the target already is the patch's new image; nothing to do")
            }
        }
    }
}

impl std::error::Error for DriveError {}

impl From<ApplyError> for DriveError {
    fn from(e: ApplyError) -> Self {
        Self::Apply(e)
    }
}

fn io_err(action: impl Into<String>) -> impl FnOnce(io::Error) -> DriveError {
    let action = action.into();
    move |source| DriveError::Io { action, source }
}

/// Where verified new bytes go.
pub trait Sink {
    /// Writes verified bytes at `offset`.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes `len` bytes at `offset` read as zero.
    fn zero(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// Makes everything written so far final. Called once, before the
    /// apply reports success.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Discards everything: verification only.
#[derive(Debug, Default)]
pub struct NullSink;

impl Sink for NullSink {
    fn write_at(&mut self, _: u64, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn zero(&mut self, _: u64, _: u64) -> io::Result<()> {
        Ok(())
    }
}

/// Runs `applier` to the end. `on_header` sees the header before any old
/// byte is read and may refuse it; `on_progress` is called often and cheaply.
pub fn drive(
    applier: &mut Applier,
    patch: &mut dyn Read,
    old: &File,
    sink: &mut dyn Sink,
    on_header: &mut dyn FnMut(&Header) -> Result<(), DriveError>,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Summary, DriveError> {
    let mut buf = vec![0u8; READ_CHUNK];
    let (mut start, mut end) = (0, 0);
    loop {
        match applier.poll()? {
            Event::NeedInput => {
                if start == end {
                    let n =
                        read_retrying(patch, &mut buf).map_err(io_err("cannot read the patch"))?;
                    if n == 0 {
                        applier.end_of_input();
                        continue;
                    }
                    (start, end) = (0, n);
                }
                start += applier.feed(&buf[start..end]);
            }
            Event::Header(h) => on_header(h)?,
            Event::ReadOld { offset, buf } => {
                old.read_exact_at(buf, offset).map_err(|e| {
                    if e.kind() == io::ErrorKind::UnexpectedEof {
                        DriveError::Refused(
                            "the old file got shorter while the patch was applied".into(),
                        )
                    } else {
                        DriveError::Io {
                            action: format!("cannot read the old file at offset {offset}"),
                            source: e,
                        }
                    }
                })?;
                // Reported after old reads too, so base checking shows progress.
                on_progress(applier.progress());
            }
            Event::Write { offset, data } => {
                sink.write_at(offset, data).map_err(io_err(format!(
                    "cannot write the target at offset {offset}"
                )))?;
                on_progress(applier.progress());
            }
            Event::Zero { offset, len } => {
                sink.zero(offset, len).map_err(io_err(format!(
                    "cannot write zeros to the target at offset {offset}"
                )))?;
            }
            Event::Done(summary) => {
                sink.flush().map_err(io_err("cannot write the target"))?;
                return Ok(summary);
            }
        }
    }
}

fn read_retrying(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Where the patch comes from: a file path, or `-` for stdin.
#[derive(Debug, Clone)]
pub enum PatchSource {
    Stdin,
    Path(PathBuf),
}

impl PatchSource {
    pub fn parse(arg: &Path) -> Self {
        if arg == Path::new("-") {
            Self::Stdin
        } else {
            Self::Path(arg.to_path_buf())
        }
    }

    fn open(&self) -> Result<Box<dyn Read>, DriveError> {
        Ok(match self {
            Self::Stdin => Box::new(io::stdin().lock()),
            Self::Path(p) => {
                // A pipe is a fine patch (it is read in order); a directory is not.
                if std::fs::metadata(p).is_ok_and(|m| m.is_dir()) {
                    return Err(DriveError::Refused(format!(
                        "the patch {} is a directory; give the patch file",
                        p.display()
                    )));
                }
                Box::new(
                    File::open(p).map_err(io_err(format!("cannot open patch {}", p.display())))?,
                )
            }
        })
    }
}

/// Opens OLD: a regular file or a block device (a FIFO, a directory or a
/// character device is refused without blocking).
fn open_old(path: &Path) -> Result<(File, u64), DriveError> {
    let file = output::open_seekable_input(path)?;
    let len =
        file_len(&file).map_err(io_err(format!("cannot size old file {}", path.display())))?;
    Ok((file, len))
}

/// The length of a regular file or a block device.
pub fn file_len(file: &File) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let meta = file.metadata()?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    // Block devices report length 0 in metadata; seeking to the end tells.
    let mut f = file;
    let len = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(len)
}

/// Verifies a patch against `old` completely, writing nothing. Returns the
/// summary, whose `new_hash` is the verified BLAKE3 of the new image.
pub fn check(
    old: &Path,
    patch: &PatchSource,
    policy: &Policy,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Summary, DriveError> {
    let (old_file, old_len) = open_old(old)?;
    let mut reader = patch.open()?;
    let mut applier = Applier::new(Config::new(old_len));
    applier.require_signature(&policy.trusted_keys);
    drive(
        &mut applier,
        &mut reader,
        &old_file,
        &mut NullSink,
        &mut |h| policy.check_header(h),
        on_progress,
    )
}

/// How an in-place apply keeps its crash-recovery state.
#[derive(Debug, Clone)]
pub struct InPlaceOptions {
    /// The state file; `None`: [`inplace::default_state_path`].
    pub state: Option<PathBuf>,
    /// Most bytes per journal batch: smaller redoes less after a crash and
    /// syncs more often.
    pub batch_bytes: usize,
}

impl Default for InPlaceOptions {
    fn default() -> Self {
        Self {
            state: None,
            batch_bytes: inplace::BATCH_BYTES,
        }
    }
}

/// Applies a patch to `target` in place, surviving a crash at any point.
///
/// A fresh apply verifies the entire patch first (base, every segment, the
/// whole-patch and new hashes) with nothing written, then records a state
/// file (`state`, or [`inplace::default_state_path`]) and rewrites only the
/// bytes that change, through the journal protocol of [`inplace`]. When a
/// state file for this patch exists, the interrupted apply is resumed
/// instead, and the whole target is hashed against the new BLAKE3 at the end.
/// The patch must be a file: it is read more than once.
pub fn apply_in_place(
    target: &Path,
    patch: &PatchSource,
    policy: &Policy,
    opts: &InPlaceOptions,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Summary, DriveError> {
    let PatchSource::Path(patch_path) = patch else {
        return Err(DriveError::Refused(
            "--in-place needs the patch as a file, not stdin: it verifies the whole patch before the first write".into(),
        ));
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(target)
        .map_err(io_err(format!(
            "cannot open {} for writing",
            target.display()
        )))?;
    let old_len = file_len(&file).map_err(io_err(format!("cannot size {}", target.display())))?;
    let is_regular = file.metadata().map(|m| m.is_file()).unwrap_or(false);
    let state_path = opts
        .state
        .clone()
        .unwrap_or_else(|| inplace::default_state_path(target, is_regular));
    let mut t = inplace::InPlaceTarget::new(&file, target, is_regular);

    if let Some(state) = inplace::State::open(&state_path)? {
        return resume(state, &mut t, patch, patch_path, policy, opts, on_progress);
    }

    // Pass 1: verify everything, write nothing.
    let mut first_header: Option<Header> = None;
    let mut applier = Applier::new(Config {
        in_place: true,
        ..Config::new(old_len)
    });
    applier.require_signature(&policy.trusted_keys);
    let verified = drive(
        &mut applier,
        &mut patch.open()?,
        &file,
        &mut NullSink,
        &mut |h| {
            policy.check_header(h)?;
            // Refuse from the header alone, before hashing the whole base.
            if h.flags & FLAG_IN_PLACE_SAFE == 0 {
                return Err(DriveError::NotInPlace(
                    "this patch is not marked safe to apply in place (it reads data it would overwrite); make it with mkpatch --in-place, or apply it with -o".into(),
                ));
            }
            if !is_regular && h.new_len != old_len {
                return Err(DriveError::Refused(format!(
                    "the patch changes the size from {} to {} bytes, which a block device cannot do",
                    old_len, h.new_len
                )));
            }
            first_header = Some(h.clone());
            Ok(())
        },
        on_progress,
    );
    let verified = match verified {
        // Run again after it finished: say so instead of "wrong base".
        Err(DriveError::Apply(ApplyError::BaseHash | ApplyError::BaseLength { .. }))
            if first_header
                .as_ref()
                .is_some_and(|h| is_new_image(&file, h)) =>
        {
            return Err(DriveError::AlreadyApplied);
        }
        other => other?,
    };
    let new_hash = verified
        .new_hash
        .expect("a verifying pass computes the new hash");

    // Pass 2: the same patch again, now writing through the journal. The
    // header must be the one just verified; its hash chain pins the rest.
    let identity = inplace::Identity {
        patch_hash: verified.patch_hash,
        new_hash,
        old_len,
        new_len: verified.new_len,
    };
    let mut state = inplace::State::create(&state_path, identity)?;
    let summary = write_pass(
        &mut state,
        &mut t,
        patch,
        policy,
        opts,
        &mut |h| {
            if first_header.as_ref() != Some(h) {
                return Err(DriveError::Refused(
                    "the patch file changed while it was being applied".into(),
                ));
            }
            Ok(())
        },
        on_progress,
    )?;
    finish(state, &mut t, &identity, false)?;
    Ok(Summary {
        bytes_written: t.bytes_written,
        new_hash: Some(new_hash),
        ..summary
    })
}

/// Whether `file` holds exactly the new image `header` describes.
fn is_new_image(file: &File, header: &Header) -> bool {
    if file_len(file).ok() != Some(header.new_len) {
        return false;
    }
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut at = 0;
    while at < header.new_len {
        let n = (header.new_len - at).min(buf.len() as u64) as usize;
        if file.read_exact_at(&mut buf[..n], at).is_err() {
            return false;
        }
        h.update(&buf[..n]);
        at += n as u64;
    }
    *h.finalize().as_bytes() == header.new_hash
}

/// Finishes an interrupted in-place apply recorded in `state`.
fn resume(
    mut state: inplace::State,
    t: &mut inplace::InPlaceTarget<'_>,
    patch: &PatchSource,
    patch_path: &Path,
    policy: &Policy,
    opts: &InPlaceOptions,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Summary, DriveError> {
    let identity = state.identity;
    if hash_patch_file(patch_path)? != identity.patch_hash {
        return Err(DriveError::Refused(format!(
            "{} records an unfinished in-place apply of a different patch; finish it with that patch first (or, if the target was restored from a backup, remove the state file)",
            state.path().display()
        )));
    }
    state.replay(t)?;
    let summary = write_pass(
        &mut state,
        t,
        patch,
        policy,
        opts,
        &mut |h| {
            if h.new_hash != identity.new_hash || h.old_len != identity.old_len {
                return Err(DriveError::Refused(
                    "the patch does not match the recorded apply".into(),
                ));
            }
            Ok(())
        },
        on_progress,
    )?;
    finish(state, t, &identity, true)?;
    Ok(Summary {
        bytes_written: t.bytes_written,
        new_hash: Some(identity.new_hash),
        ..summary
    })
}

/// The writing pass, from where the state says the target is final, through the journal.
fn write_pass(
    state: &mut inplace::State,
    t: &mut inplace::InPlaceTarget<'_>,
    patch: &PatchSource,
    policy: &Policy,
    opts: &InPlaceOptions,
    on_header: &mut dyn FnMut(&Header) -> Result<(), DriveError>,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Summary, DriveError> {
    let cfg = Config {
        verify_base: false,
        skip_unchanged: true,
        in_place: true,
        resume_from: state.done,
        ..Config::new(state.identity.old_len)
    };
    let mut applier = Applier::new(cfg);
    applier.require_signature(&policy.trusted_keys);
    let file = t.file;
    let mut sink = inplace::JournaledSink::new(
        state,
        inplace::InPlaceTarget::new(t.file, t.path, t.is_regular),
        opts.batch_bytes,
    );
    let result = drive(
        &mut applier,
        &mut patch.open()?,
        file,
        &mut sink,
        on_header,
        on_progress,
    );
    let (written, error) = sink.into_parts();
    t.bytes_written += written;
    match (result, error) {
        (Err(_), Some(e)) => Err(e),
        (r, _) => r,
    }
}

/// Sets the final length, flushes, checks a resumed result, removes the state.
fn finish(
    state: inplace::State,
    t: &mut inplace::InPlaceTarget<'_>,
    identity: &inplace::Identity,
    resumed: bool,
) -> Result<(), DriveError> {
    if t.is_regular {
        t.file
            .set_len(identity.new_len)
            .map_err(io_err("cannot set the target's final length"))?;
    }
    t.file
        .sync_all()
        .map_err(io_err("cannot flush the target to disk"))?;
    if resumed {
        // The part after the resume point was never re-verified against the
        // base, so check the whole result before declaring success.
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; READ_CHUNK];
        let mut at = 0;
        while at < identity.new_len {
            let n = (identity.new_len - at).min(buf.len() as u64) as usize;
            t.file
                .read_exact_at(&mut buf[..n], at)
                .map_err(io_err("cannot read the target back"))?;
            h.update(&buf[..n]);
            at += n as u64;
        }
        if *h.finalize().as_bytes() != identity.new_hash {
            return Err(DriveError::Refused(format!(
                "the resumed target does not match the patch's new BLAKE3: it was changed outside applypatch; the state is kept in {}",
                state.path().display()
            )));
        }
    }
    state.remove()
}

/// BLAKE3 of the patch file without its trailer: the patch hash that the
/// trailer, the engine's summary and the state file record.
fn hash_patch_file(path: &Path) -> Result<Hash, DriveError> {
    let f = File::open(path).map_err(io_err(format!("cannot open patch {}", path.display())))?;
    let len = f.metadata().map_err(io_err("cannot size the patch"))?.len();
    let end = len.saturating_sub(TRAILER_LEN as u64);
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut at = 0;
    while at < end {
        let n = (end - at).min(buf.len() as u64) as usize;
        f.read_exact_at(&mut buf[..n], at)
            .map_err(io_err("cannot read the patch"))?;
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(*h.finalize().as_bytes())
}

/// What an applier accepts, decided from the header before any old byte
/// is read or anything written.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Public keys of which one must have signed the patch; empty: any patch.
    pub trusted_keys: Vec<[u8; 32]>,
    /// Refuse patches whose new image is larger than this. An unsigned
    /// patch costs work in proportion to the size it declares.
    pub max_new_len: Option<u64>,
}

impl Policy {
    /// Refuses a header this policy does not accept.
    pub fn check_header(&self, h: &Header) -> Result<(), DriveError> {
        match self.max_new_len {
            Some(max) if h.new_len > max => Err(DriveError::Refused(format!(
                "the patch makes a {} image ({} bytes), above --max-new-size {} ({max} bytes)",
                output::human_bytes(h.new_len),
                h.new_len,
                output::human_bytes(max)
            ))),
            _ => Ok(()),
        }
    }
}

/// Reads public key files given with `--trusted-key`.
pub fn read_trusted_keys(paths: &[PathBuf]) -> Result<Vec<[u8; 32]>, DriveError> {
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p)
                .map_err(io_err(format!("cannot read key file {}", p.display())))?;
            parse_key_file(&text, KeyKind::Public)
                .map_err(|e| DriveError::Refused(format!("{}: {e}", p.display())))
        })
        .collect()
}

/// Lowercase hex of a hash.
pub fn hex(hash: &Hash) -> String {
    use std::fmt::Write as _;
    hash.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
