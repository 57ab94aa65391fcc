//! Phase 5b (`--level best`): code data blocks with the data history.
//!
//! Per-segment frames see at most 4 MiB of new bytes, and old bytes as
//! history, so data that repeats *other new data* in a distant segment (new
//! files like other new files, a journal copying fresh metadata) is coded
//! again in full. Format 1.3's codec `ZstdHistory` gives each frame the
//! decoded data of the patch's earlier such segments as history: the last
//! `MAX_HISTORY_LEN - n` bytes of their concatenation, for `n` data bytes.
//!
//! Every segment with data takes part (but see [`takes_part`](crate::raw_spool::takes_part)), so the
//! history is simply the data blocks spooled by phase 5a in order, and each
//! frame can be made on its own, in parallel. The pass is kept only when its
//! frames are smaller in total than the data blocks they replace, and each
//! fits the format's limits; otherwise the patch is as phase 5a made it.
//!
//! Segments without data (only copies and zeros) take no part: codec 0x03
//! needs at least one byte of data (spec section 3.8.1), so they keep their
//! coding, and the rewrite below matches frames to segments by number.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;

use crate::encode::{encode_workers, Encoded};
use crate::exec::for_each_ordered;
use crate::raw_spool::RawSpool;
use crate::zstd_frames::{zstd_frame, TRIAL_HASH_LOG};
use crate::{Phase, ProduceError, Progress};
use anypatch_format::{Codec, MAX_HISTORY_LEN, MAX_SEGMENT_LEN, PACKED_OPS};

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
                let trial = zstd_frame(1, TRIAL_HASH_LOG, 0, prefix, data)?;
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
    // A frame over the format's limit (zstd made a block that it had
    // shrunk before larger than 4 MiB) cannot be written, and the frames
    // after it took its data as history: the whole pass goes.
    let too_long = frames.iter().any(|f| f.len() > MAX_SEGMENT_LEN as usize);
    if after >= before || too_long {
        return Ok(enc);
    }
    // Rewrite the spool: each segment's ops block, then its new frame, or
    // its data block as it was when it takes no part.
    let mut w = BufWriter::with_capacity(1 << 20, out);
    let mut frames = blocks.iter().map(|b| b.0).zip(frames).peekable();
    let mut at = 0u64;
    let mut buf = Vec::new();
    for (seg, entry) in enc.entries.iter_mut().enumerate() {
        let (ops_len, data_len) = (entry.ops_len as usize, entry.data_len as usize);
        let frame = frames.next_if(|(s, _)| *s == seg).map(|(_, f)| f);
        let keep = if frame.is_some() {
            ops_len
        } else {
            ops_len + data_len
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
        if let Some(frame) = frame {
            write(&mut w, &frame)?;
            entry.data_len = frame.len() as u32; // at most MAX_SEGMENT_LEN, checked above
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
    zstd_frame(level, 0, 0, prefix, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw_spool::RawData;
    use crate::test_data::noise;
    use anypatch_format::SegmentEntry;
    use zstd::zstd_safe;

    /// One segment of a hand-made phase 5a result: its ops block (opaque
    /// here), its data, and whether 5a stored the data or compressed it.
    struct Seg {
        ops: Vec<u8>,
        data: Vec<u8>,
        stored: bool,
    }

    /// Phase 5a's spools and entries for `segs`, run through [`recode`] at
    /// level 3; returns the entries and each segment's data block after it.
    fn recode_segments(segs: &[Seg]) -> (Vec<SegmentEntry>, Vec<Vec<u8>>) {
        let mut spool = tempfile::tempfile().expect("spool");
        let mut raw = RawData::new(tempfile::tempfile().expect("raw spool"));
        let mut entries = Vec::new();
        for (i, seg) in segs.iter().enumerate() {
            let (block, codec) = if seg.stored || seg.data.is_empty() {
                (seg.data.clone(), Codec::Stored)
            } else {
                (
                    zstd::bulk::compress(&seg.data, 3).expect("zstd"),
                    Codec::Zstd,
                )
            };
            spool.write_all(&seg.ops).expect("write");
            spool.write_all(&block).expect("write");
            raw.push(i, &seg.data, codec == Codec::Stored)
                .expect("push");
            entries.push(SegmentEntry {
                new_len: seg.data.len().max(1) as u32,
                codec: codec as u8,
                ops_len: seg.ops.len() as u32,
                data_len: block.len() as u32,
                hash: [0; 32],
                inline_ops: Some(0),
            });
        }
        let enc = Encoded {
            entries,
            spool,
            in_place_safe: true,
            uses_prefix: false,
            packs_ops: false,
            uses_history: false,
            raw: None,
        };
        let raw = raw.finish().expect("finish");
        let enc =
            recode(enc, raw, 3, 1, tempfile::tempfile().expect("out"), &|_| {}).expect("recode");
        assert!(enc.uses_history, "the pass was not kept");
        let mut blocks = Vec::new();
        let mut at = 0u64;
        for (e, seg) in enc.entries.iter().zip(segs) {
            let mut ops = vec![0; e.ops_len as usize];
            enc.spool.read_exact_at(&mut ops, at).expect("read");
            assert_eq!(ops, seg.ops, "the ops block moved");
            let mut block = vec![0; e.data_len as usize];
            enc.spool
                .read_exact_at(&mut block, at + u64::from(e.ops_len))
                .expect("read");
            at += u64::from(e.ops_len) + u64::from(e.data_len);
            blocks.push(block);
        }
        (enc.entries, blocks)
    }

    /// Decodes a codec 0x03 frame with `history` as its prefix.
    fn decode(frame: &[u8], history: &[u8], n: usize) -> Vec<u8> {
        let mut dctx = zstd_safe::DCtx::create();
        if !history.is_empty() {
            dctx.ref_prefix(history).expect("prefix");
        }
        let mut out = Vec::with_capacity(n);
        dctx.decompress(&mut out, frame).expect("decompress");
        out
    }

    /// Found by fuzzing: a segment of copies and zeros only, before or after
    /// the segments with data, took the next segment's frame (making codec
    /// 0x03 with no data, which the engine refuses) or, when none was left,
    /// panicked.
    #[test]
    fn segments_without_data_keep_their_coding() {
        let text = noise(1, 20_000);
        let no_data = |op: u8| Seg {
            ops: vec![op; 3],
            data: Vec::new(),
            stored: true,
        };
        let segs = [
            no_data(1),
            Seg {
                ops: vec![2; 5],
                data: text.clone(),
                stored: true,
            },
            no_data(3),
            Seg {
                ops: vec![4; 5],
                data: text.clone(),
                stored: true,
            },
            no_data(5),
        ];
        let (entries, blocks) = recode_segments(&segs);
        for i in [0, 2, 4] {
            assert_eq!(entries[i].codec, Codec::Stored as u8, "segment {i}");
            assert_eq!(entries[i].data_len, 0, "segment {i}");
        }
        assert_eq!(entries[1].codec, Codec::ZstdHistory as u8);
        assert_eq!(entries[3].codec, Codec::ZstdHistory as u8);
        assert_eq!(decode(&blocks[1], &[], text.len()), text);
        assert!(blocks[3].len() < 100, "no history: {}", blocks[3].len());
        assert_eq!(decode(&blocks[3], &text, text.len()), text);
    }

    /// A stored block near 4 MiB made a codec 0x03 frame longer than
    /// `MAX_SEGMENT_LEN`, which no applier reads: it stays stored, and out
    /// of the history of the frames after it.
    #[test]
    fn a_stored_block_near_4_mib_stays_stored_and_out_of_the_history() {
        let big = noise(2, MAX_SEGMENT_LEN as usize);
        let text = noise(3, 30_000);
        let segs = [
            Seg {
                ops: vec![1; 4],
                data: text.clone(),
                stored: true,
            },
            Seg {
                ops: vec![2; 4],
                data: big.clone(),
                stored: true,
            },
            Seg {
                ops: vec![3; 4],
                data: text.clone(),
                stored: true,
            },
        ];
        let (entries, blocks) = recode_segments(&segs);
        for (i, e) in entries.iter().enumerate() {
            assert!(e.data_len <= MAX_SEGMENT_LEN, "segment {i}: {}", e.data_len);
        }
        assert_eq!(entries[1].codec, Codec::Stored as u8);
        assert_eq!(blocks[1], big);
        assert_eq!(entries[2].codec, Codec::ZstdHistory as u8);
        // Its history is segment 0's data alone, as an applier's is.
        assert_eq!(decode(&blocks[2], &text, text.len()), text);
        assert!(blocks[2].len() < 100, "no history: {}", blocks[2].len());
    }
}
