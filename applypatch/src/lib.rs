//! File adapters over the sans-IO engine: the one applier that the
//! `applypatch` CLI and the initramfs build share.
//!
//! The engine's std layer ([`drive`], from `anypatch_apply::drive`) runs an
//! [`Applier`] to completion against a patch reader, the old file read with
//! `pread`, and a [`Sink`] for verified writes. The three entry points here
//! ([`check`], [`apply_to_new_file`], [`apply_in_place`]) choose the engine
//! configuration and the sink: a new file or device, or the in-place journal.
#![forbid(unsafe_code)]

pub mod inplace;
pub mod output;
pub mod progress;
#[cfg(feature = "net")]
pub mod remote;
#[cfg(feature = "quic-https")]
pub mod sync;

pub use inplace::{apply_in_place, InPlaceOptions};
pub use output::{apply_to_new_file, NewFileSink, OutputTarget, Written};

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use anypatch_apply::drive::DriveError as LayerError;
pub use anypatch_apply::drive::{drive, NullSink, OldSource, Sink, READ_CHUNK};
use anypatch_apply::format::{parse_key_file, Hash, Header, KeyKind};
use anypatch_apply::{Applier, ApplyError, Config, ErrorClass, Progress, Summary};
use anypatch_safe_output::{a_kind, human_bytes_exact};

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
    /// The base is wrong (a wrong-base [`ApplyError`]), and `note` says why:
    /// the target is half-patched by an unfinished in-place apply.
    WrongBase { source: ApplyError, note: String },
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
            Self::WrongBase { source, note } => write!(f, "{source}; {note}"),
        }
    }
}

impl std::error::Error for DriveError {}

impl From<ApplyError> for DriveError {
    fn from(e: ApplyError) -> Self {
        Self::Apply(e)
    }
}

impl From<LayerError> for DriveError {
    fn from(e: LayerError) -> Self {
        match e {
            LayerError::Apply(e) => Self::Apply(e),
            LayerError::ReadPatch(source) => Self::Io {
                action: "cannot read the patch".into(),
                source,
            },
            LayerError::OldShrank { .. } => {
                Self::Refused("the old file got shorter while the patch was applied".into())
            }
            LayerError::ReadOld { offset, source } => Self::Io {
                action: format!("cannot read the old file at offset {offset}"),
                source,
            },
            LayerError::Sink { what, source } => Self::Io {
                action: what,
                source,
            },
        }
    }
}

fn io_err(action: impl Into<String>) -> impl FnOnce(io::Error) -> DriveError {
    let action = action.into();
    move |source| DriveError::Io { action, source }
}

/// Where the patch comes from: a file path, `-` for stdin, or a URL.
#[derive(Debug, Clone)]
pub enum PatchSource {
    Stdin,
    Path(PathBuf),
    /// Fetched as it is applied (`quic://`, `https://`, `http://`).
    #[cfg(feature = "net")]
    Remote(Box<remote::Remote>),
}

impl PatchSource {
    /// How the patch is named to the user.
    pub fn name(&self) -> String {
        match self {
            Self::Stdin => "-".into(),
            Self::Path(p) => p.display().to_string(),
            #[cfg(feature = "net")]
            Self::Remote(r) => r.url.to_string(),
        }
    }

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
            #[cfg(feature = "net")]
            Self::Remote(r) => Box::new(r.open_at(0)?),
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
pub(crate) fn open_old(path: &Path) -> Result<(File, u64), DriveError> {
    let file = open_seekable_input(path)?;
    let len =
        file_len(&file).map_err(io_err(format!("cannot size old file {}", path.display())))?;
    Ok((file, len))
}

/// Checks that `meta` is something applypatch can read at any offset: a
/// regular file or a block device. `what` names it ("old file ...").
fn check_seekable_input(meta: &std::fs::Metadata, what: &str) -> Result<(), DriveError> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_file() || t.is_block_device() {
        return Ok(());
    }
    Err(DriveError::Refused(format!(
        "{what} is {}: applypatch reads the old image at any offset, so it must be a regular file or a block device",
        a_kind(t)
    )))
}

/// Opens OLD for reading without blocking on a FIFO: the type is checked
/// on the path first and again on the open file.
fn open_seekable_input(path: &Path) -> Result<File, DriveError> {
    use std::fs::OpenOptions;
    use std::os::unix::fs::OpenOptionsExt;
    let what = format!("the old file {}", path.display());
    let meta = std::fs::metadata(path)
        .map_err(io_err(format!("cannot open old file {}", path.display())))?;
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
    let old_meta = old_file
        .metadata()
        .map_err(io_err(format!("cannot stat old file {}", old.display())))?;
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
    .map_err(|e| blame_changed_old(e, &old_file, &old_meta, "nothing was written"))
    .map_err(|e| explain_wrong_base(e, old, patch))
}

/// A patch or base failure while OLD changed under the applier (its size,
/// modification or change time differ from `before`, taken when it was
/// opened) is OLD's doing, not the patch's: say so, with `outcome` telling
/// what became of the output. A block device's metadata does not follow
/// its contents, so there this cannot tell.
pub(crate) fn blame_changed_old(
    e: DriveError,
    old_file: &File,
    before: &std::fs::Metadata,
    outcome: &str,
) -> DriveError {
    use std::os::unix::fs::MetadataExt;
    let blames_input = matches!(&e, DriveError::Apply(a)
        if matches!(a.class(), ErrorClass::CorruptPatch | ErrorClass::WrongBase));
    if !blames_input {
        return e;
    }
    let stamp = |m: &std::fs::Metadata| {
        (
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        )
    };
    match old_file.metadata() {
        Ok(now) if stamp(&now) != stamp(before) => {}
        _ => return e,
    }
    DriveError::Refused(format!(
        "the old file changed while it was read (its size or modification time is not what it was when applypatch opened it), so the patch could not be checked against it: {outcome}. The patch was not found at fault ({e}); run again when nothing writes to the old file"
    ))
}

/// A wrong base on an OLD that an unfinished in-place apply half-patched
/// names that apply's state and says how to finish or discard it: a plain
/// "wrong base" would send the user after the wrong file.
pub(crate) fn explain_wrong_base(e: DriveError, old: &Path, patch: &PatchSource) -> DriveError {
    let DriveError::Apply(source @ (ApplyError::BaseHash | ApplyError::BaseLength { .. })) = e
    else {
        return e;
    };
    match inplace::wrong_base_note(old, patch) {
        Some(note) => DriveError::WrongBase { source, note },
        None => DriveError::Apply(source),
    }
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
                "the patch makes an image of {}, above --max-new-size {}; raise the limit if you trust the patch",
                human_bytes_exact(h.new_len),
                human_bytes_exact(max)
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
    anypatch_apply::format::Hex(hash).to_string()
}
