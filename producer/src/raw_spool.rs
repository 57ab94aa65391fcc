//! The data blocks of phase 5a, spooled uncompressed to a temporary file
//! for the data-history pass (module `history`), which reads them back at
//! any offset as the history of the frames after them.

use std::fs::File;
use std::io::{BufWriter, Write};

use anypatch_format::MAX_SEGMENT_LEN;
use zstd::zstd_safe;

use crate::ProduceError;

/// Every data block of phase 5a, uncompressed, back to back in segment order.
#[derive(Debug)]
pub(crate) struct RawData {
    file: BufWriter<File>,
    /// (segment, offset in the file, length) for each segment with data.
    blocks: Vec<(usize, u64, u32)>,
    len: u64,
}

/// [`RawData`] once written: readable at any offset.
#[derive(Debug)]
pub(crate) struct RawSpool {
    /// The data blocks, back to back.
    pub file: File,
    /// (segment, offset in `file`, length) for each segment with data.
    pub blocks: Vec<(usize, u64, u32)>,
}

impl RawData {
    pub(crate) fn new(file: File) -> Self {
        Self {
            file: BufWriter::with_capacity(1 << 20, file),
            blocks: Vec::new(),
            len: 0,
        }
    }

    /// Appends segment `seg`'s data block, which phase 5a coded `stored`
    /// or not, when it takes part (see [`takes_part`]).
    pub(crate) fn push(
        &mut self,
        seg: usize,
        data: &[u8],
        stored: bool,
    ) -> Result<(), ProduceError> {
        if !takes_part(data.len(), stored) {
            return Ok(());
        }
        self.file
            .write_all(data)
            .map_err(|source| ProduceError::Spool { source })?;
        self.blocks.push((seg, self.len, data.len() as u32)); // at most 4 MiB
        self.len += data.len() as u64;
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<RawSpool, ProduceError> {
        let file = self.file.into_inner().map_err(|e| ProduceError::Spool {
            source: e.into_error(),
        })?;
        Ok(RawSpool {
            file,
            blocks: self.blocks,
        })
    }
}

/// Whether a data block of `n` bytes that phase 5a coded as stored (zstd
/// could not shrink it) or not takes part in the data history.
///
/// An empty block cannot: codec 0x03 needs data. A codec 0x03 block is a
/// zstd frame, and a frame of bytes zstd cannot shrink is longer than they
/// are (3 bytes per 128 KiB block, and its header): for a stored block near
/// 4 MiB that is over the format's limit on `data_len`, so such a block
/// keeps its stored coding and stays out of the history, for the frames
/// after it too. A block that zstd did shrink takes part at any size.
pub(crate) fn takes_part(n: usize, stored: bool) -> bool {
    n > 0 && (!stored || zstd_safe::compress_bound(n) <= MAX_SEGMENT_LEN as usize)
}
