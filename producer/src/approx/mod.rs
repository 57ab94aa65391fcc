//! `--level best`'s encoder: approximate matching against the whole old
//! file, as bsdiff and HDiffPatch do, in place of phase 5a (module
//! `encode`) when the old file fits [`MAX_OLD_LEN`].
//!
//! The per-segment encoder compresses each segment's new bytes with at most
//! 4 MiB of old bytes around it as zstd history. Recompiled code that moved
//! further than that, or whose every function changed a few addresses, is
//! then coded nearly in full. Here every run of changed new bytes is
//! matched against the whole old file through its suffix array (module
//! `suffix`), with bsdiff's extension of matches over mismatches (module
//! `scan`); the near matches become `Delta` ops whose data (the bytewise
//! differences) is mostly zeros, and the rest `Literal` ops. The data
//! blocks then go through the data-history pass (module `history`, codec
//! 0x03), which also finds repeats among the new bytes themselves.
//!
//! # Memory
//! The old file is held whole, with its suffix array: 5 bytes per old
//! byte, at most 2.5 GiB at [`MAX_OLD_LEN`]. A larger old file (or an
//! in-place patch, whose ops may only read ahead, or an empty one) is not
//! indexed: the per-segment encoder runs instead, as before. Encoding
//! workers add what phase 5a's do (its memory budget).
//!
//! # Determinism
//! The suffix array is unique, and each segment is coded from its own
//! bytes and the array alone, so the output does not depend on threads.

mod scan;
mod split;
mod suffix;

use std::fs::File;
use std::io::{BufWriter, Write};

use anypatch_format::{Codec, Op, SegmentEntry, MAX_OPS_LEN, PACKED_OPS};
use zstd::zstd_safe;

use crate::encode::{encode_workers, Encoded, INLINE_OPS_MAX};
use crate::exec::for_each_ordered;
use crate::input::{Input, Job};
use crate::plan::{Part, Plan, SegmentPlan};
use crate::raw_spool::RawData;
use crate::zeros::is_zero;
use crate::{Phase, ProduceError, Progress};

pub(crate) use split::{split, SEGMENT_LEN};
use suffix::Text;

/// Largest old file that gets a suffix array: 512 MiB, so the index stays
/// within 2.5 GiB.
pub(crate) const MAX_OLD_LEN: u64 = 512 << 20;
/// Most `Delta` ops the matcher makes in one segment. With the segment's
/// other ops (at most two per planned part, `plan::MAX_PARTS`) and at most
/// 16 bytes each, its ops block stays under `MAX_OPS_LEN`.
const MAX_MATCH_OPS: usize = 24_000;
/// Shortest delta op kept: a shorter one costs more in ops (an op on each
/// side, about three bytes each compressed) than its matching bytes save.
/// On a postgresql data.tar pair (4 MiB segments) none made 4,910,998
/// bytes, 8: 4,904,329, 16: 4,861,700, 32: 4,840,807, 64: 4,854,521.
const MIN_DELTA: u32 = 32;
/// zstd level of the first pass's frames: the data-history pass (module
/// `history`) codes every data block again at the level asked, and keeps
/// that when smaller, which it nearly always is against these.
const FIRST_PASS_LEVEL: i32 = 3;

/// Reads the whole old file for the index, or `None` when it is not to be
/// indexed (see the module docs).
pub(crate) fn index(old: &Input, in_place: bool) -> Result<Option<Text>, ProduceError> {
    if in_place || old.len == 0 || old.len > MAX_OLD_LEN {
        return Ok(None);
    }
    let mut bytes = vec![0u8; old.len as usize];
    for (i, chunk) in bytes.chunks_mut(1 << 20).enumerate() {
        old.read_exact_at(chunk, (i as u64) << 20)?;
    }
    Ok(Some(Text::build(bytes)))
}

struct Worker {
    /// For the data blocks, at [`FIRST_PASS_LEVEL`].
    zstd: zstd::bulk::Compressor<'static>,
    /// For packed ops blocks, at the level asked: the history pass keeps them.
    ops_zstd: zstd::bulk::Compressor<'static>,
    new_buf: Vec<u8>,
    data: Vec<u8>,
}

/// Phase 5a with approximate matching: encodes every segment of `plan` and
/// spools the payloads (and, for the data-history pass, the data blocks).
pub(crate) fn encode_all(
    job: Job<'_>,
    text: &Text,
    plan: &Plan,
    level: i32,
    spool: File,
    raw_spool: File,
) -> Result<Encoded, ProduceError> {
    let Job {
        new,
        threads,
        progress,
        ..
    } = job;
    let segment_max = plan.segments.iter().map(|s| s.len).max().unwrap_or(1);
    let workers = encode_workers(threads, level, segment_max, 0);
    let total = plan.segments.len() as u64;
    let mut entries = Vec::with_capacity(plan.segments.len());
    let (mut in_place_safe, mut packs_ops) = (true, false);
    let mut spool = BufWriter::with_capacity(1 << 20, spool);
    let mut raw = RawData::new(raw_spool);
    let compress_err = |source| ProduceError::Compress { source };
    for_each_ordered(
        workers,
        plan.segments.len(),
        2 * workers,
        || {
            let compressor = |level| {
                let mut zstd = zstd::bulk::Compressor::new(level).map_err(compress_err)?;
                zstd.include_contentsize(true).map_err(compress_err)?;
                zstd.include_checksum(false).map_err(compress_err)?;
                zstd.include_dictid(false).map_err(compress_err)?;
                Ok(zstd)
            };
            Ok(Worker {
                zstd: compressor(level.min(FIRST_PASS_LEVEL))?,
                ops_zstd: compressor(level)?,
                new_buf: Vec::new(),
                data: Vec::new(),
            })
        },
        |w, i| {
            let (entry, payload, safe) = segment(text, new, &plan.segments[i], w)?;
            Ok((entry, payload, safe, w.data.clone()))
        },
        |i, (entry, payload, safe, data)| {
            spool
                .write_all(&payload)
                .map_err(|source| ProduceError::Spool { source })?;
            raw.push(i, &data, entry.codec & !PACKED_OPS == Codec::Stored as u8)?;
            packs_ops |= entry.codec & PACKED_OPS != 0;
            entries.push(entry);
            in_place_safe &= safe;
            progress(Progress {
                phase: Phase::Encode,
                done: i as u64 + 1,
                total,
            });
            Ok(())
        },
    )?;
    let spool = spool.into_inner().map_err(|e| ProduceError::Spool {
        source: e.into_error(),
    })?;
    Ok(Encoded {
        entries,
        spool,
        in_place_safe,
        uses_prefix: false,
        packs_ops,
        uses_history: false,
        raw: Some(raw.finish()?),
    })
}

/// One segment: its entry, payload (ops block, then data block) and
/// whether every op reads old bytes at or after the segment's start.
fn segment(
    text: &Text,
    new: &Input,
    seg: &SegmentPlan,
    w: &mut Worker,
) -> Result<(SegmentEntry, Vec<u8>, bool), ProduceError> {
    let len = seg.len as usize;
    w.new_buf.resize(len, 0);
    new.read_exact_at(&mut w.new_buf[..len], seg.start)?;
    let new_bytes = &w.new_buf[..len];
    let mut ops = tidy(&ops_of(text, seg, new_bytes));
    data_of(&ops, &text.old, new_bytes, seg.start, &mut w.data);
    let mut payload = Vec::new();
    for op in &ops {
        op.emit(&mut payload);
    }
    if payload.len() > MAX_OPS_LEN as usize {
        // Cannot happen with the op limits above; a literal segment is
        // always valid.
        ops = vec![Op::Literal { len: seg.len }];
        w.data.clear();
        w.data.extend_from_slice(new_bytes);
        payload.clear();
        ops[0].emit(&mut payload);
    }
    let safe = sources_from(&ops, seg.start);
    let inline = payload.len() <= INLINE_OPS_MAX;
    if !inline {
        let mut frame = Vec::with_capacity(zstd_safe::compress_bound(payload.len()));
        w.ops_zstd
            .compress_to_buffer(&payload[..], &mut frame)
            .map_err(|source| ProduceError::Compress { source })?;
        payload = frame;
    }
    let ops_len = payload.len() as u32;
    let codec = if w.data.is_empty() {
        Codec::Stored
    } else {
        let mut frame = Vec::with_capacity(zstd_safe::compress_bound(w.data.len()));
        w.zstd
            .compress_to_buffer(&w.data, &mut frame)
            .map_err(|source| ProduceError::Compress { source })?;
        if frame.len() < w.data.len() {
            payload.extend_from_slice(&frame);
            Codec::Zstd
        } else {
            payload.extend_from_slice(&w.data);
            Codec::Stored
        }
    };
    let entry = SegmentEntry {
        new_len: seg.len,
        codec: codec as u8 | if inline { 0 } else { PACKED_OPS },
        ops_len,
        data_len: (payload.len() as u32) - ops_len,
        hash: *blake3::hash(new_bytes).as_bytes(),
        inline_ops: inline.then_some(0),
    };
    Ok((entry, payload, safe))
}

/// The segment's ops.
fn ops_of(text: &Text, seg: &SegmentPlan, new_bytes: &[u8]) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut at = 0usize;
    for part in &seg.parts {
        let n = part.len() as usize;
        let pos = seg.start + at as u64;
        match *part {
            Part::Copy { len, delta } => ops.push(Op::Copy { len, delta }),
            Part::Zero(len) => {
                // Zeros that are zeros in the old file too are unchanged.
                let old = text.old.get(pos as usize..pos as usize + n);
                if old.is_some_and(is_zero) {
                    ops.push(Op::Copy { len, delta: 0 });
                } else {
                    ops.push(Op::Zero { len });
                }
            }
            Part::Changed { hint, .. } => {
                let max = MAX_MATCH_OPS;
                scan::diff(text, &new_bytes[at..at + n], pos, hint, max, &mut ops);
            }
        }
        at += n;
    }
    ops
}

/// `ops` with deltas shorter than [`MIN_DELTA`] turned into literals.
fn tidy(ops: &[Op]) -> Vec<Op> {
    let mut out: Vec<Op> = Vec::with_capacity(ops.len());
    for &op in ops {
        let op = match op {
            Op::Delta { len, .. } if len < MIN_DELTA => Op::Literal { len },
            op => op,
        };
        match (out.last_mut(), op) {
            (Some(Op::Literal { len: l }), Op::Literal { len }) => *l += len,
            _ => out.push(op),
        }
    }
    out
}

/// The data block `ops` take: literal bytes, and the bytewise differences
/// of delta ops.
fn data_of(ops: &[Op], old: &[u8], new_bytes: &[u8], start: u64, data: &mut Vec<u8>) {
    data.clear();
    let mut at = 0usize;
    for op in ops {
        let n = op.len() as usize;
        match *op {
            Op::Literal { .. } => data.extend_from_slice(&new_bytes[at..at + n]),
            Op::Delta { delta, .. } => {
                let o = (start + at as u64).wrapping_add_signed(delta) as usize;
                let pairs = new_bytes[at..at + n].iter().zip(&old[o..o + n]);
                data.extend(pairs.map(|(a, b)| a.wrapping_sub(*b)));
            }
            _ => {}
        }
        at += n;
    }
}

/// Whether every op that reads old bytes reads them at or after `start`.
fn sources_from(ops: &[Op], start: u64) -> bool {
    let mut at = start;
    ops.iter().all(|op| {
        let ok = match *op {
            Op::Copy { delta, .. } | Op::Delta { delta, .. } => {
                at.checked_add_signed(delta).is_some_and(|src| src >= start)
            }
            _ => true,
        };
        at += u64::from(op.len());
        ok
    })
}
