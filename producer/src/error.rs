//! Why making a patch failed.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why [`crate::make_patch`] failed. Messages name the file and say what to do.
#[non_exhaustive]
#[derive(Debug)]
pub enum ProduceError {
    /// An option is out of range.
    InvalidOption { name: &'static str, reason: String },
    /// An input could not be opened or its size read.
    Open { path: PathBuf, source: io::Error },
    /// An input is not a regular file or block device.
    NotAFile { path: PathBuf },
    /// Reading an input failed.
    Read {
        path: PathBuf,
        offset: u64,
        source: io::Error,
    },
    /// An input got shorter while it was being read.
    Shrank {
        path: PathBuf,
        expected: u64,
        got: u64,
    },
    /// The temporary spool file could not be created, written or read.
    Spool { source: io::Error },
    /// zstd refused to compress (out of memory, usually).
    Compress { source: io::Error },
    /// Writing the patch failed.
    Write { source: io::Error },
    /// An index given to [`crate::make_patch_from_index`] was refused.
    Index {
        path: PathBuf,
        source: anypatch_index::IndexError,
    },
    /// An index is not signed by any of the trusted keys.
    IndexUntrusted { path: PathBuf, signed: bool },
    /// The self-check ([`crate::Options::verify`]) found that the apply
    /// engine refuses the patch just made: a bug in the producer. `segment`
    /// is the data segment (counted from 0 in patch order) when the
    /// engine's error names one.
    SelfCheck {
        segment: Option<u64>,
        source: anypatch_apply::ApplyError,
    },
}

impl fmt::Display for ProduceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidOption { name, reason } => write!(f, "option {name} {reason}"),
            Self::Open { path, source } => {
                write!(f, "cannot open {}: {source}", path.display())
            }
            Self::NotAFile { path } => write!(
                f,
                "{} is not a regular file or block device; give the path of an image file",
                path.display()
            ),
            Self::Read {
                path,
                offset,
                source,
            } => write!(
                f,
                "cannot read {} at offset {offset}: {source}",
                path.display()
            ),
            Self::Shrank {
                path,
                expected,
                got,
            } => write!(
                f,
                "{} shrank while being read (expected {expected} bytes, found {got}); \
                 do not change the inputs while mkpatch runs",
                path.display()
            ),
            Self::Spool { source } => write!(
                f,
                "cannot use the temporary spool file: {source}; check free space in TMPDIR or the output's directory"
            ),
            Self::Compress { source } => write!(f, "zstd compression failed: {source}"),
            Self::Write { source } => write!(f, "cannot write the patch: {source}"),
            Self::Index { path, source } => write!(f, "{}: {source}", path.display()),
            Self::IndexUntrusted { path, signed } => write!(
                f,
                "{} is {}; make the index with `mkpatch index --sign KEY` using the key \
                 whose .pub you trust, or drop --trusted-key",
                path.display(),
                if *signed {
                    "signed, but not by a trusted key"
                } else {
                    "not signed"
                }
            ),
            Self::SelfCheck { segment, source } => {
                write!(f, "self-check failed: ")?;
                if let Some(n) = segment {
                    write!(f, "data segment {n} of ")?;
                }
                write!(
                    f,
                    "the patch just made would be refused by applypatch ({source}). \
                     This is a bug in mkpatch: do not use the patch; please report it with \
                     the command line, and meanwhile try another --level or --segment-len"
                )
            }
        }
    }
}

impl std::error::Error for ProduceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Open { source, .. }
            | Self::Read { source, .. }
            | Self::Spool { source }
            | Self::Compress { source }
            | Self::Write { source } => Some(source),
            Self::SelfCheck { source, .. } => Some(source),
            Self::Index { source, .. } => Some(source),
            _ => None,
        }
    }
}
