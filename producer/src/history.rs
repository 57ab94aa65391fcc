//! Phase 5b (`--level best`): code data blocks with the data history.
//!
//! Per-segment frames see at most 4 MiB of new bytes, and old bytes as
//! history, so data that repeats *other new data* in a distant segment (new
//! files like other new files, a journal copying fresh metadata) is coded
//! again in full. Format 1.3's codec `ZstdHistory` gives each frame the
//! decoded data of the patch's earlier such segments as history: the last
//! `MAX_HISTORY_LEN - n` bytes of their concatenation, for `n` data bytes.
//!
//! Every segment with data takes part, so the history is simply the data
//! blocks spooled by phase 5a in order, and each frame can be made on its
//! own, in parallel. The pass is kept only when its frames are smaller in
//! total than the data blocks they replace; otherwise the patch is as
//! phase 5a made it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;

use anypatch_format::{Codec, MAX_HISTORY_LEN, PACKED_OPS};

use crate::encode::{encode_workers, zstd_frame, Encoded, TRIAL_HASH_LOG};
use crate::exec::for_each_ordered;
use crate::{Phase, ProduceError, Progress};

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
    file: File,
    blocks: Vec<(usize, u64, u32)>,
}

impl RawData {
    pub(crate) fn new(file: File) -> Self {
        Self {
            file: BufWriter::with_capacity(1 << 20, file),
            blocks: Vec::new(),
            len: 0,
        }
    }

    /// Appends segment `seg`'s data block; empty blocks take no part.
    pub(crate) fn push(&mut self, seg: usize, data: &[u8]) -> Result<(), ProduceError> {
        if data.is_empty() {
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

/// Recodes every data block of `enc` with codec `ZstdHistory` when that is
/// smaller in total, writing the new payloads to `out`. Returns `enc`
/// unchanged otherwise.
pub(crate) fn recode(
    mut enc: Encoded,
    raw: RawSpool,
    level: i32,
    threads: usize,
    out: File,
    progress: &dyn Fn(Progress),
) -> Result<Encoded, ProduceError> {
    let blocks = &raw.blocks;
    let entries = &enc.entries;
    let max = MAX_HISTORY_LEN as usize;
    let workers = encode_workers(threads, level, MAX_HISTORY_LEN, MAX_HISTORY_LEN);
    let total = blocks.len() as u64;
    let mut frames: Vec<Vec<u8>> = Vec::with_capacity(blocks.len());
    let (mut before, mut after) = (0u64, 0u64);
    for_each_ordered(
        workers,
        blocks.len(),
        2 * workers,
        || Ok(Vec::new()),
        |buf: &mut Vec<u8>, j| {
            let (_, at, n) = blocks[j];
            let n = n as usize;
            // The history: the data blocks before this one, at most
            // MAX_HISTORY_LEN - n bytes back.
            let keep = (at as usize).min(max - n) as u64;
            buf.resize(keep as usize + n, 0);
            raw.file
                .read_exact_at(buf, at - keep)
                .map_err(|source| ProduceError::Spool { source })?;
            let (prefix, data) = buf.split_at(keep as usize);
            // Loading 4 MiB of history at a high level costs far more than
            // compressing a small block: a fast trial decides whether the
            // history helps at all. A frame that ignores its history is
            // still a valid codec 0x03 frame.
            let helps = !prefix.is_empty() && {
                let trial = zstd_frame(1, TRIAL_HASH_LOG, prefix, data)?;
                8 * trial.len() <= 7 * data.len()
            };
            let (seg, _, _) = blocks[j];
            let stored = entries[seg].codec & !PACKED_OPS == Codec::Stored as u8;
            match (helps, stored) {
                (true, _) => compress(level, prefix, data),
                // zstd could not shrink it before: raw blocks, quickly.
                (false, true) => compress(1, &[], data),
                (false, false) => compress(level, &[], data),
            }
        },
        |j, frame| {
            let (seg, _, _) = blocks[j];
            before += u64::from(entries[seg].data_len);
            after += frame.len() as u64;
            frames.push(frame);
            progress(Progress {
                phase: Phase::History,
                done: j as u64 + 1,
                total,
            });
            Ok(())
        },
    )?;
    if after >= before {
        return Ok(enc);
    }
    // Rewrite the spool: each segment's ops block, then its new frame.
    let mut w = BufWriter::with_capacity(1 << 20, out);
    let mut frames = blocks.iter().map(|b| b.0).zip(frames).peekable();
    let mut at = 0u64;
    let mut buf = Vec::new();
    for (seg, entry) in enc.entries.iter_mut().enumerate() {
        let (ops_len, data_len) = (entry.ops_len as usize, entry.data_len as usize);
        let keep = match frames.peek() {
            Some((s, _)) if *s == seg => ops_len,
            _ => ops_len + data_len,
        };
        buf.resize(keep, 0);
        enc.spool
            .read_exact_at(&mut buf, at)
            .map_err(|source| ProduceError::Spool { source })?;
        at += (ops_len + data_len) as u64;
        let write = |w: &mut BufWriter<File>, b: &[u8]| {
            w.write_all(b)
                .map_err(|source| ProduceError::Spool { source })
        };
        write(&mut w, &buf)?;
        if keep == ops_len {
            let (_, frame) = frames.next().expect("peeked");
            write(&mut w, &frame)?;
            entry.data_len = frame.len() as u32; // at most a 4 MiB block's bound
            entry.codec = Codec::ZstdHistory as u8 | (entry.codec & PACKED_OPS);
        }
    }
    enc.spool = w.into_inner().map_err(|e| ProduceError::Spool {
        source: e.into_error(),
    })?;
    enc.uses_history = true;
    enc.uses_prefix = enc
        .entries
        .iter()
        .any(|e| e.codec & !PACKED_OPS == Codec::ZstdPrefix as u8);
    Ok(enc)
}

/// One zstd frame of `data` with `prefix` as its history (see
/// [`zstd_frame`]), with the level's own hash table.
fn compress(level: i32, prefix: &[u8], data: &[u8]) -> Result<Vec<u8>, ProduceError> {
    zstd_frame(level, 0, prefix, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zstd::zstd_safe;

    #[test]
    fn frames_declare_their_size_and_decode_against_the_prefix() {
        let prefix: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let data = prefix[50_000..120_000].to_vec();
        let frame = compress(19, &prefix, &data).expect("compress");
        assert!(frame.len() < 200, "history was not used: {}", frame.len());
        let mut dctx = zstd_safe::DCtx::create();
        dctx.ref_prefix(&prefix[..]).expect("prefix");
        let mut out = Vec::with_capacity(data.len());
        dctx.decompress(&mut out, &frame).expect("decompress");
        assert_eq!(out, data);
        assert_eq!(
            zstd_safe::get_frame_content_size(&frame).expect("header"),
            Some(data.len() as u64)
        );
    }
}
