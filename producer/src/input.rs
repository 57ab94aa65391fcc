//! An input image: a regular file or block device read with `pread`.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use crate::{ProduceError, Progress};

/// What every phase needs: both inputs and how to run.
#[derive(Clone, Copy)]
pub(crate) struct Job<'a> {
    pub old: &'a Input,
    pub new: &'a Input,
    pub block_size: u32,
    pub threads: usize,
    pub progress: &'a dyn Fn(Progress),
}

/// An open input and its length, fixed when opened.
#[derive(Debug)]
pub(crate) struct Input {
    pub path: PathBuf,
    pub len: u64,
    file: File,
}

impl Input {
    /// Opens `path`, refusing anything that is not a regular file or block
    /// device (a pipe cannot be read at offsets, a directory has no bytes).
    pub fn open(path: &Path) -> Result<Self, ProduceError> {
        let open_err = |source| ProduceError::Open {
            path: path.to_owned(),
            source,
        };
        let not_a_file = || ProduceError::NotAFile {
            path: path.to_owned(),
        };
        // Look before opening: opening a FIFO waits for a writer, forever
        // if none comes.
        if !is_image(std::fs::metadata(path).map_err(open_err)?.file_type()) {
            return Err(not_a_file());
        }
        let mut file = File::open(path).map_err(open_err)?;
        // Look again at what was opened: the path may have been replaced.
        if !is_image(file.metadata().map_err(open_err)?.file_type()) {
            return Err(not_a_file());
        }
        // A block device's metadata length is 0; seeking to the end works for both.
        let len = file.seek(SeekFrom::End(0)).map_err(open_err)?;
        Ok(Self {
            path: path.to_owned(),
            len,
            file,
        })
    }

    /// An input with no bytes: the old file of a patch made from an index,
    /// where only the index is here. Every read past its end finds nothing,
    /// so the encoder codes no deltas and uses no old bytes as history.
    pub fn absent() -> Result<Self, ProduceError> {
        let file = tempfile::tempfile().map_err(|source| ProduceError::Spool { source })?;
        Ok(Self {
            path: PathBuf::from("(no old file: patch made from an index)"),
            len: 0,
            file,
        })
    }

    /// The open file, for its `fstat` (the hash cache's file identity):
    /// the file read, not whatever the path names now.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Fills `buf` from `offset`. The caller keeps `offset + buf.len()`
    /// within `len`, so a short read means the file shrank.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ProduceError> {
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            match self.file.read_at(&mut buf[done..], at) {
                Ok(0) => {
                    return Err(ProduceError::Shrank {
                        path: self.path.clone(),
                        expected: self.len,
                        got: at,
                    })
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(ProduceError::Read {
                        path: self.path.clone(),
                        offset: at,
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// Reads the part of `[offset, offset + want)` that lies inside the file
    /// into the front of `buf` (grown if needed, never shrunk, so a reused
    /// buffer is not zeroed again) and returns how many bytes that was.
    pub fn read_clamped(
        &self,
        buf: &mut Vec<u8>,
        offset: u64,
        want: usize,
    ) -> Result<usize, ProduceError> {
        let n = self.len.saturating_sub(offset).min(want as u64) as usize;
        if buf.len() < n {
            buf.resize(n, 0);
        }
        self.read_exact_at(&mut buf[..n], offset)?;
        Ok(n)
    }
}

/// Whether a file of this type can be read as an image: at any offset, with
/// a length that does not change while it is read.
fn is_image(kind: std::fs::FileType) -> bool {
    kind.is_file() || kind.is_block_device()
}
