//! OLD and NEW: refused before any work when they cannot be read as
//! images, and checked after it for changes made meanwhile.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use anypatch_safe_output::kind_name;

use crate::Failure;

/// What tells whether an input changed without reading it: if any of it
/// differs after the run, the file was written (or replaced) while mkpatch
/// read it, and the patch may mix old and new contents.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    what: &'static str,
    path: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    pub(crate) fn of(what: &'static str, path: &Path) -> Result<Self, Failure> {
        use std::os::unix::fs::MetadataExt;
        let m =
            std::fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self {
            what,
            path: path.to_owned(),
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// Fails when an input is no longer what it was before the first read.
/// `left` says what became of the output.
pub(crate) fn unchanged(before: &[Stamp], left: &str) -> Result<(), Failure> {
    for stamp in before {
        if Stamp::of(stamp.what, &stamp.path).ok().as_ref() != Some(stamp) {
            return Err(anyhow!(
                "{} {} changed while mkpatch read it; the patch would not apply ({left}). \
                 Run again when it is stable",
                stamp.what,
                stamp.path.display()
            )
            .into());
        }
    }
    Ok(())
}

/// Refuses an input that cannot be read as an image, before any work: a
/// FIFO would hang the run (opening it waits for a writer), a directory has
/// no bytes, a character device cannot be read at offsets.
pub(crate) fn check_input(what: &str, path: &Path) -> Result<(), Failure> {
    let kind = std::fs::metadata(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .file_type();
    if kind.is_file() || kind.is_block_device() {
        return Ok(());
    }
    let what_to_do = if kind.is_dir() {
        "give the path of an image file"
    } else {
        "mkpatch reads images at random offsets, so it needs a regular file or a block \
         device; save the data to a file first"
    };
    Err(anyhow!(
        "{what} {} is a {}: {what_to_do}",
        path.display(),
        kind_name(kind)
    )
    .into())
}
