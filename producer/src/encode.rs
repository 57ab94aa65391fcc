//! Phase 5a: build and compress every data segment, in parallel, and spool
//! the payloads in segment order to a temporary file.
//!
//! A changed block becomes a `Delta` op against the old bytes at its hint
//! (the same offset, or the source of the shifted match next to it) when
//! those exist and at least 1/16 of its bytes equal them: small edits then
//! turn into mostly-zero data that zstd shrinks to almost nothing. Otherwise
//! it is a `Literal`. Unchanged bytes between two delta ops with the same
//! source delta join them as zero data: zstd codes a run of zeros in a few
//! bits, less than the copy op and second delta op it replaces.
//!
//! With [`Settings::prefix_len`], a data block with literals is also
//! compressed with the old bytes around the segment's main source as zstd
//! history (codec `ZstdPrefix`), and that frame is kept when smaller.
//!
//! With [`Settings::history`], each segment's data block (before
//! compression) also goes to a second spool (module `raw_spool`), for the
//! data-history pass (module `history`).
//!
//! With either history, a segment with delta ops is coded with literals
//! instead when that compresses smaller on its own: bytes that differ from
//! old ones but repeat other bytes are found by the history as they are,
//! not as differences. In recompiled code, where a function matches its
//! old self only in pieces at shifting offsets, a bytewise delta is noise
//! that zstd cannot shrink, while zstd with the old bytes as history finds
//! the pieces. Such a segment's copy ops may then cost more than the
//! matches zstd would code for them: a fast trial with the prefix decides.

use std::fs::File;
use std::io::{BufWriter, Write};

use anypatch_format::{Codec, Op, PrefixRef, SegmentEntry, MAX_OPS_LEN, PACKED_OPS};
use zstd::zstd_safe;

use crate::anchors::Anchors;
use crate::exec::for_each_ordered;
use crate::input::{Input, Job};
use crate::plan::{Part, Plan, SegmentPlan};
use crate::raw_spool::{RawData, RawSpool};
use crate::zeros::is_zero;
use crate::zstd_frames::{fitted_table_log, zstd_frame, TRIAL_HASH_LOG};
use crate::{Phase, ProduceError, Progress};

/// Rough memory one encoding worker uses besides zstd: the new and old
/// bytes, the data block and the compressed frame, one segment each.
const BUFFERS_PER_WORKER: u64 = 4;
/// Budget for all encoding workers. Workers beyond it are not started, so
/// many cores or a high level cannot push peak memory over 512 MiB.
const ENCODE_MEMORY_BUDGET: u64 = 320 << 20;

/// Sixteenths of a block's bytes that must equal the old bytes at its hint
/// (or the same offset) for a delta op without trials: 12 keeps small edits
/// as deltas (4 to 16 measured: 12 and 13 gave the smallest patches of the
/// small corpus's `edits` pair, and of rustfmt, clippy-driver, cargo and a
/// postgresql data.tar between two releases).
const NEAR_MIN_EQUAL_NO_TRIALS: usize = 12;
/// With [`Settings::coding_trial`]: sixteenths of a block's bytes that
/// must equal the old ones at its hint for a delta op in the second coding
/// tried. 4 to 8 measured on real pairs: 6 made libreoffice-core's patch
/// 11% smaller than the strict coding alone, and postgresql15's the same.
const LOOSE_MIN_EQUAL: usize = 6;
/// zstd level of the coding trials: the data block's own level would cost
/// as much as the frame itself, three times.
const CODING_TRIAL_LEVEL: i32 = 1;
/// Without trials, a prefix covers the segment's length and this fraction
/// of it again: with the prefix placed by the anchor index (module
/// `anchors`), a quarter made chromium's data.tar patch 0.4% larger than
/// a whole segment's length again did, for 5-10% less CPU (its search
/// fills zstd's tables with every prefix byte).
const NO_TRIALS_SLACK_DIV: u32 = 4;
/// Least literal bytes for which a segment tries old bytes as history:
/// below it the frame is too small for the history to pay for its search.
const PREFIX_MIN_LITERALS: usize = 512;
/// Longest ops block carried inline in its compact page, where it shares
/// one zstd frame with the page's other ops and extents. Longer ones are
/// packed into their own frame in the payload, so that a page of inline
/// ops never overflows `MAX_PAGE_LEN`.
pub(crate) const INLINE_OPS_MAX: usize = 16 << 10;
/// Shortest history worth a zstd context: a data block that leaves less of
/// the window is coded without one.
const PREFIX_MIN_LEN: usize = 256 << 10;
/// Old bytes a prefix covers beyond the segment's own length: room for the
/// data to have moved against its main source. Each prefix byte costs the
/// search an insert, so a short segment gets a short prefix.
const PREFIX_SLACK: u32 = 1 << 20;

/// What the encoder does, from the producer's options.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub level: i32,
    /// Old bytes to try as history; 0: none.
    pub prefix_len: u32,
    /// Inside near matches, equal runs this long become copy ops; 0: never.
    pub min_copy: u32,
    pub in_place: bool,
    /// Spool every data block for the data-history pass.
    pub history: bool,
    /// Choose between codings by fast trial compressions. Off: a segment
    /// with enough literal data always has old bytes as history, sized to
    /// the segment, and only its nearly equal blocks are deltas (but see
    /// `coding_trial`); one compression per segment.
    pub trials: bool,
    /// Without `trials`: choose between the strict coding, one with less
    /// alike blocks as deltas too, and one with every delta as literals,
    /// by a fast trial of each with the segment's prefix.
    pub coding_trial: bool,
    /// zstd level of a frame with old bytes as history, without `trials`.
    pub prefix_level: i32,
}

/// Fewest more anchor matches the whole-file index must find for a range
/// than the matches around the segment point at, to move the prefix there.
const MOVE_PREFIX_MIN: usize = 2;

/// The spooled payloads and their manifest entries.
#[derive(Debug)]
pub(crate) struct Encoded {
    /// One per segment, in plan order. An entry whose ops go inline in its
    /// page has `inline_ops` = `Some(0)`; the writer sets the real offset.
    pub entries: Vec<SegmentEntry>,
    /// Each segment's ops block then data block, in segment order: the
    /// payload, with the inline ops in front of it.
    pub spool: File,
    /// Whether every op reads old bytes at or after its segment's start.
    pub in_place_safe: bool,
    /// Whether some segment uses `ZstdPrefix` (format 1.1's feature bit).
    pub uses_prefix: bool,
    /// Whether some segment's ops block is packed (another 1.1 feature bit).
    pub packs_ops: bool,
    /// Whether some segment uses `ZstdHistory` (format 1.3's feature bit).
    pub uses_history: bool,
    /// With [`Settings::history`]: the data blocks, uncompressed.
    pub raw: Option<RawSpool>,
}

/// A rough upper bound of a zstd compression context at `level` for a
/// frame of at most 4 MiB.
fn zstd_context_memory(level: i32) -> u64 {
    match level {
        ..=5 => 8 << 20,
        6..=12 => 24 << 20,
        13..=16 => 48 << 20,
        _ => 96 << 20,
    }
}

/// How many encoding workers fit the memory budget (at least one). A
/// worker trying a prefix holds the old bytes and a second zstd context.
pub(crate) fn encode_workers(
    threads: usize,
    level: i32,
    segment_len: u32,
    prefix_len: u32,
) -> usize {
    let per_worker = BUFFERS_PER_WORKER * u64::from(segment_len)
        + zstd_context_memory(level)
        + if prefix_len > 0 {
            u64::from(prefix_len) + 2 * zstd_context_memory(level)
        } else {
            0
        };
    let fit = (ENCODE_MEMORY_BUDGET / per_worker).max(1);
    threads.min(fit as usize).max(1)
}

struct Worker {
    zstd: zstd::bulk::Compressor<'static>,
    new_buf: Vec<u8>,
    old_buf: Vec<u8>,
    /// Old bytes at a changed part's hint, when it is not 0.
    hint_buf: Vec<u8>,
    data: Vec<u8>,
    /// Old bytes used as history for a `ZstdPrefix` frame.
    prefix_buf: Vec<u8>,
    /// A fast context that compares the delta and literal codings of a
    /// segment (with [`Settings::history`]).
    trial: Option<zstd::bulk::Compressor<'static>>,
    /// Old offsets of the literal bytes' anchors (with an [`Anchors`] index).
    hits: Vec<(u64, usize)>,
    hit_offsets: Vec<u64>,
    /// The data block of the second coding tried ([`Settings::coding_trial`]).
    loose_data: Vec<u8>,
}

/// Encodes every segment of `plan` and spools the payloads.
pub(crate) fn encode_all(
    job: Job<'_>,
    plan: &Plan,
    settings: Settings,
    spool: File,
    raw_spool: Option<File>,
    anchors: Option<&Anchors>,
) -> Result<Encoded, ProduceError> {
    let level = settings.level;
    let Job {
        old,
        new,
        block_size,
        threads,
        progress,
    } = job;
    let segment_max = plan.segments.iter().map(|s| s.len).max().unwrap_or(1);
    let workers = encode_workers(threads, level, segment_max, settings.prefix_len);
    let total = plan.segments.len() as u64;
    let mut entries = Vec::with_capacity(plan.segments.len());
    let mut in_place_safe = true;
    let mut uses_prefix = false;
    let mut packs_ops = false;
    let mut spool = BufWriter::with_capacity(1 << 20, spool);
    let mut raw = raw_spool.map(RawData::new);
    let compress_err = |source| ProduceError::Compress { source };
    for_each_ordered(
        workers,
        plan.segments.len(),
        2 * workers,
        || {
            let mut zstd = zstd::bulk::Compressor::new(level).map_err(compress_err)?;
            // One frame with its content size; no checksum (the segment
            // hash covers the output) and no dictionary id.
            zstd.include_contentsize(true).map_err(compress_err)?;
            zstd.include_checksum(false).map_err(compress_err)?;
            zstd.include_dictid(false).map_err(compress_err)?;
            Ok(Worker {
                zstd,
                new_buf: Vec::new(),
                old_buf: Vec::new(),
                hint_buf: Vec::new(),
                data: Vec::new(),
                prefix_buf: Vec::new(),
                trial: None,
                hits: Vec::new(),
                hit_offsets: Vec::new(),
                loose_data: Vec::new(),
            })
        },
        |w, i| {
            let (entry, payload, safe) = encode_segment(
                old,
                new,
                &plan.segments[i],
                block_size,
                settings,
                anchors,
                w,
            )?;
            let data = settings.history.then(|| w.data.clone());
            Ok((entry, payload, safe, data))
        },
        |i, (entry, payload, safe, data)| {
            spool
                .write_all(&payload)
                .map_err(|source| ProduceError::Spool { source })?;
            if let (Some(raw), Some(data)) = (raw.as_mut(), data) {
                raw.push(i, &data, entry.codec & !PACKED_OPS == Codec::Stored as u8)?;
            }
            uses_prefix |= entry.codec & !PACKED_OPS == Codec::ZstdPrefix as u8;
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
    let raw = raw.map(RawData::finish).transpose()?;
    Ok(Encoded {
        entries,
        spool,
        in_place_safe,
        uses_prefix,
        packs_ops,
        uses_history: false,
        raw,
    })
}

/// Builds one segment: returns its entry, payload (ops block then data
/// block) and whether it is in-place safe.
fn encode_segment(
    old: &Input,
    new: &Input,
    seg: &SegmentPlan,
    block_size: u32,
    settings: Settings,
    anchors: Option<&Anchors>,
    w: &mut Worker,
) -> Result<(SegmentEntry, Vec<u8>, bool), ProduceError> {
    let len = seg.len as usize;
    w.new_buf.resize(len, 0);
    new.read_exact_at(&mut w.new_buf[..len], seg.start)?;
    let old_n = old.read_clamped(&mut w.old_buf, seg.start, len)?;
    let (new_bytes, old_bytes) = (&w.new_buf[..len], &w.old_buf[..old_n]);

    // Sixteenths of a block's bytes that must equal old ones for a delta
    // op. Without trials and with a prefix, only nearly equal blocks (small
    // edits, whose delta is mostly zeros) are deltas: the prefix holds the
    // old bytes too, and in recompiled code zstd finds shifted pieces of
    // them where a delta is noise.
    let min_equal = if settings.trials || settings.prefix_len == 0 {
        1
    } else {
        NEAR_MIN_EQUAL_NO_TRIALS
    };
    let coder = Coder {
        old,
        seg,
        new_bytes,
        old_bytes,
        block_size,
        settings,
    };
    let (ops, votes, mut safe) = coder.code(min_equal, &mut w.hint_buf, &mut w.data)?;
    let mut ops = tidy(&ops, &mut w.data, new_bytes, old_bytes);
    // The old bytes to try as history: centred where the ops read before
    // any of them become literals, and covering the segment plus slack.
    // Without trials every segment with data has them, so a short segment
    // (a small edit) gets a short prefix: its slack is its own length.
    let slack = if settings.trials {
        PREFIX_SLACK
    } else {
        (seg.len / NO_TRIALS_SLACK_DIV).min(PREFIX_SLACK)
    };
    let prefix_len = settings.prefix_len.min(seg.len.saturating_add(slack));
    let long_enough = !settings.trials || prefix_len as usize >= PREFIX_MIN_LEN;
    let mut window = (prefix_len > 0 && long_enough)
        .then(|| prefix_window(&ops, &votes, seg, old.len, prefix_len, settings.in_place))
        .flatten();
    if let (Some(anchors), Some(w0)) = (anchors, window) {
        window = Some(prefix_from_anchors(
            anchors,
            &ops,
            new_bytes,
            seg,
            old.len,
            settings.in_place,
            w0,
            (&mut w.hits, &mut w.hit_offsets),
        ));
    }
    let some_history = settings.history || window.is_some();
    let has_delta = ops.iter().any(|op| matches!(op, Op::Delta { .. }));
    if some_history && has_delta && settings.trials {
        ops = literal_if_smaller(ops, &mut w.data, new_bytes, &mut w.trial)?;
    }
    let literals = literal_bytes(&ops);
    let prefix = match window {
        Some((lo, len)) if literals >= PREFIX_MIN_LITERALS => {
            let n = old.read_clamped(&mut w.prefix_buf, lo, len as usize)?;
            Some((lo, &w.prefix_buf[..n]))
        }
        _ => None,
    };
    if settings.coding_trial && !settings.trials {
        // Without a prefix (few literals), the trials go without history.
        let prefix = prefix.map_or(&[][..], |(_, p)| p);
        let loose = {
            let data = &mut w.loose_data;
            let (ops, _, safe) = coder.code(LOOSE_MIN_EQUAL, &mut w.hint_buf, data)?;
            Coding {
                ops: tidy(&ops, data, new_bytes, old_bytes),
                safe,
            }
        };
        let strict = Coding { ops, safe };
        (ops, safe) = choose_coding(
            strict,
            &mut w.data,
            loose,
            &mut w.loose_data,
            new_bytes,
            prefix,
        )?
        .into_parts();
    }
    // Worth its two trials at `best` only: it saves ops, not much data.
    if let (Some((lo, prefix)), true) = (prefix, settings.history) {
        ops = copies_to_literals_if_smaller(ops, &mut w.data, new_bytes, seg.start, lo, prefix)?;
    }

    let mut payload = Vec::new();
    for op in &ops {
        op.emit(&mut payload);
    }
    // The planner's part limit keeps every ops block within the format's.
    assert!(
        payload.len() <= MAX_OPS_LEN as usize,
        "ops block over MAX_OPS_LEN"
    );
    let inline = payload.len() <= INLINE_OPS_MAX;
    if !inline {
        let mut frame = Vec::with_capacity(zstd_safe::compress_bound(payload.len()));
        w.zstd
            .compress_to_buffer(&payload[..], &mut frame)
            .map_err(|source| ProduceError::Compress { source })?;
        // Ops blocks stay under 640 KiB (the planner's part limit), so
        // even an incompressible one's frame is within MAX_OPS_LEN.
        assert!(
            frame.len() <= MAX_OPS_LEN as usize,
            "packed ops over MAX_OPS_LEN"
        );
        payload = frame;
    }
    let ops_len = payload.len() as u32;
    let codec = if w.data.is_empty() {
        Codec::Stored
    } else {
        // One frame at the level: with the old bytes as history when a fast
        // trial says they help, since each costs as much as the data.
        let (frame, codec, reads_from) = match prefix {
            Some((lo, prefix)) if !settings.trials || prefix_helps(prefix, &w.data)? => {
                let block = prefix_block(seg.start, lo, prefix, settings, &w.data)?;
                (block, Codec::ZstdPrefix, lo)
            }
            _ => {
                let mut frame = Vec::with_capacity(zstd_safe::compress_bound(w.data.len()));
                w.zstd
                    .compress_to_buffer(&w.data, &mut frame)
                    .map_err(|source| ProduceError::Compress { source })?;
                (frame, Codec::Zstd, seg.start)
            }
        };
        // Stored when zstd does not help, so data_len <= new_len always.
        if frame.len() < w.data.len() {
            safe &= reads_from >= seg.start;
            payload.extend_from_slice(&frame);
            codec
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

/// What coding a segment's parts needs besides a threshold.
struct Coder<'a> {
    old: &'a Input,
    seg: &'a SegmentPlan,
    new_bytes: &'a [u8],
    old_bytes: &'a [u8],
    block_size: u32,
    settings: Settings,
}

impl Coder<'_> {
    /// Codes the segment's parts as ops into `data`, with blocks of at
    /// least `min_equal`/16 bytes equal to old ones at their hint (or the
    /// same offset) as deltas. Returns the ops, the literal bytes per hint
    /// (without trials) and whether every op is in-place safe.
    #[allow(clippy::type_complexity)]
    fn code(
        &self,
        min_equal: usize,
        hint_buf: &mut Vec<u8>,
        data: &mut Vec<u8>,
    ) -> Result<(Vec<Op>, Vec<(i64, u64)>, bool), ProduceError> {
        let Coder {
            old,
            seg,
            new_bytes,
            old_bytes,
            block_size,
            settings,
        } = *self;
        let bs = u64::from(block_size);
        let mut ops: Vec<Op> = Vec::new();
        let mut safe = true;
        data.clear();
        let mut pos = seg.start;
        let mut votes: Vec<(i64, u64)> = Vec::new();
        for part in &seg.parts {
            match *part {
                Part::Copy { len, delta } => {
                    safe &= pos
                        .checked_add_signed(delta)
                        .is_some_and(|src| src >= seg.start);
                    push_op(&mut ops, Op::Copy { len, delta });
                }
                Part::Zero(len) => {
                    // Zeros that are zeros in the old file too are unchanged
                    // bytes: a copy, which joins the copies around it.
                    let at = (pos - seg.start) as usize;
                    let unchanged = old_bytes.get(at..at + len as usize).is_some_and(is_zero);
                    if unchanged {
                        push_op(&mut ops, Op::Copy { len, delta: 0 });
                    } else {
                        push_op(&mut ops, Op::Zero { len });
                    }
                }
                Part::Changed { len, hint } => {
                    let end = pos + u64::from(len);
                    // `near[i]` is the old byte for new offset `base + i`: the
                    // same offset, or the shifted match's source for a hint.
                    let (base, near) = if hint == 0 {
                        (seg.start, old_bytes)
                    } else {
                        let lo = pos.saturating_add_signed(hint).min(old.len);
                        let hi = end.saturating_add_signed(hint).clamp(lo, old.len);
                        let n = old.read_clamped(hint_buf, lo, (hi - lo) as usize)?;
                        match lo.checked_add_signed(hint.wrapping_neg()) {
                            Some(base) => (base, &hint_buf[..n]),
                            None => (pos, &hint_buf[..0]),
                        }
                    };
                    let mut a = pos;
                    // One decision per block, so a local edit stays a delta.
                    while a < end {
                        let b = ((a / bs + 1) * bs).min(end);
                        let n = &new_bytes[(a - seg.start) as usize..(b - seg.start) as usize];
                        let piece = (b - a) as u32;
                        // The hint or the same offset, whichever has more
                        // equal bytes: both are near matches to an edited block
                        // whose zero runs also match some far hint.
                        let at_hint = similar(n, a, base, near, min_equal).map(|o| (o, hint));
                        let at_same = (hint != 0)
                            .then(|| similar(n, a, seg.start, old_bytes, min_equal).map(|o| (o, 0)))
                            .flatten();
                        let found = match (at_hint, at_same) {
                            (Some(h), Some(s)) if equal_bytes(n, h.0) <= equal_bytes(n, s.0) => {
                                Some(s)
                            }
                            (h, s) => h.or(s),
                        };
                        match found {
                            Some((o, delta)) => {
                                safe &= a
                                    .checked_add_signed(delta)
                                    .is_some_and(|src| src >= seg.start);
                                let near = Near {
                                    delta,
                                    seg_start: seg.start,
                                    old_bytes,
                                    min_copy: settings.min_copy,
                                };
                                near.push(&mut ops, data, a, n, o);
                            }
                            None => {
                                data.extend_from_slice(n);
                                push_op(&mut ops, Op::Literal { len: piece });
                                if !settings.trials {
                                    // Where the prefix goes, as a delta op's
                                    // source would say.
                                    match votes.iter_mut().find(|(d, _)| *d == hint) {
                                        Some((_, v)) => *v += u64::from(piece),
                                        None => votes.push((hint, u64::from(piece))),
                                    }
                                }
                            }
                        }
                        a = b;
                    }
                }
            }
            pos += u64::from(part.len());
        }
        Ok((ops, votes, safe))
    }
}

/// `ops` with every delta op turned into a literal, and `data` to match,
/// when that data compresses smaller (at a fast level, on its own).
fn literal_if_smaller(
    ops: Vec<Op>,
    data: &mut Vec<u8>,
    new_bytes: &[u8],
    trial: &mut Option<zstd::bulk::Compressor<'static>>,
) -> Result<Vec<Op>, ProduceError> {
    let compress_err = |source| ProduceError::Compress { source };
    let (literal_ops, literal_data) =
        as_literals(&ops, new_bytes, |_, op| matches!(op, Op::Delta { .. }));
    let trial = match trial {
        Some(t) => t,
        None => trial.insert(zstd::bulk::Compressor::new(3).map_err(compress_err)?),
    };
    let as_delta = trial.compress(data).map_err(compress_err)?.len();
    let as_literal = trial.compress(&literal_data).map_err(compress_err)?.len();
    if as_literal < as_delta {
        *data = literal_data;
        Ok(literal_ops)
    } else {
        Ok(ops)
    }
}

/// A segment's ops and whether they are in-place safe; the data block goes
/// beside it.
struct Coding {
    ops: Vec<Op>,
    safe: bool,
}

impl Coding {
    fn into_parts(self) -> (Vec<Op>, bool) {
        (self.ops, self.safe)
    }
}

/// Of the segment coded with only nearly equal blocks as deltas (`strict`,
/// with `data`), with less alike blocks as deltas too (`loose`, with
/// `loose_data`), and with every delta as literals, the one whose ops and
/// data a zstd level 1 trial with `prefix` as history codes in the fewest
/// bytes (`prefix` may be empty); `data` is left holding its data block.
/// The data block is coded
/// at a higher level afterwards, but deltas against the old bytes and
/// literals that zstd finds in the prefix compare alike at both.
fn choose_coding(
    strict: Coding,
    data: &mut Vec<u8>,
    loose: Coding,
    loose_data: &mut Vec<u8>,
    new_bytes: &[u8],
    prefix: &[u8],
) -> Result<Coding, ProduceError> {
    let has_delta = |ops: &[Op]| ops.iter().any(|op| matches!(op, Op::Delta { .. }));
    if !has_delta(&strict.ops) && !has_delta(&loose.ops) {
        return Ok(strict);
    }
    let cost = |ops: &[Op], data: &[u8]| -> Result<usize, ProduceError> {
        let mut emitted = Vec::new();
        for op in ops {
            op.emit(&mut emitted);
        }
        let ops_len = zstd_frame(CODING_TRIAL_LEVEL, 0, 0, &[], &emitted)?.len();
        let tables = fitted_table_log(prefix, data);
        Ok(ops_len + zstd_frame(CODING_TRIAL_LEVEL, tables, tables, prefix, data)?.len())
    };
    let mut best = cost(&strict.ops, data)?;
    let mut chosen = strict;
    if has_delta(&loose.ops) && loose.ops != chosen.ops {
        let c = cost(&loose.ops, loose_data)?;
        if c < best {
            best = c;
            chosen = loose;
            std::mem::swap(data, loose_data);
        }
    }
    let (ops, literal_data) = as_literals(&chosen.ops, new_bytes, |_, op| {
        matches!(op, Op::Delta { .. })
    });
    if cost(&ops, &literal_data)? < best {
        *data = literal_data;
        chosen.ops = ops;
    }
    Ok(chosen)
}

/// `ops` with their literals and the ops `convert` picks (given each op's
/// offset in the segment) sent as literals, and the data block to match.
/// Every op with data must be a literal or picked.
fn as_literals(
    ops: &[Op],
    new_bytes: &[u8],
    convert: impl Fn(usize, Op) -> bool,
) -> (Vec<Op>, Vec<u8>) {
    let mut out_ops = Vec::with_capacity(ops.len());
    let mut out_data = Vec::new();
    let mut at = 0;
    for &op in ops {
        let len = op.len();
        if matches!(op, Op::Literal { .. }) || convert(at, op) {
            out_data.extend_from_slice(&new_bytes[at..at + len as usize]);
            push_op(&mut out_ops, Op::Literal { len });
        } else {
            debug_assert_eq!(op.data_len(), 0, "an op with data must become a literal");
            push_op(&mut out_ops, op);
        }
        at += len as usize;
    }
    (out_ops, out_data)
}

/// Whether `prefix` as history makes `data` smaller, by a fast trial with
/// and without it on (at most) the middle 1 MiB of `data`. Data zstd cannot
/// shrink by an eighth on its own is taken to be compressed or random,
/// which old bytes do not predict either.
fn prefix_helps(prefix: &[u8], data: &[u8]) -> Result<bool, ProduceError> {
    const SAMPLE: usize = 1 << 20;
    let skip = data.len().saturating_sub(SAMPLE) / 2;
    let data = &data[skip..data.len() - skip];
    let alone = zstd_frame(1, 0, 0, &[], data)?.len();
    Ok(
        8 * alone <= 7 * data.len()
            && zstd_frame(1, TRIAL_HASH_LOG, 0, prefix, data)?.len() < alone,
    )
}

/// Bytes of new data that `ops` send as literals.
fn literal_bytes(ops: &[Op]) -> usize {
    ops.iter()
        .map(|op| match op {
            Op::Literal { len } => *len as usize,
            _ => 0,
        })
        .sum()
}

/// `ops` (literals, copies and zeros) with the copies that read inside
/// `prefix` (old bytes at `lo`) turned into literals, and `data` to match,
/// when a fast trial with the prefix as history codes them in fewer bytes
/// than the copy ops and the literal ops they split. Tried only where the
/// copies are at most as many bytes as the literals: mostly new data, with
/// pieces the block matcher found.
fn copies_to_literals_if_smaller(
    ops: Vec<Op>,
    data: &mut Vec<u8>,
    new_bytes: &[u8],
    seg_start: u64,
    lo: u64,
    prefix: &[u8],
) -> Result<Vec<Op>, ProduceError> {
    let hi = lo + prefix.len() as u64;
    let mut at = seg_start;
    let inside = |at: u64, len: u32, delta: i64| {
        at.checked_add_signed(delta)
            .is_some_and(|src| src >= lo && src + u64::from(len) <= hi)
    };
    let (mut copied, mut literal) = (0u64, 0u64);
    for op in &ops {
        match *op {
            Op::Delta { .. } => return Ok(ops),
            Op::Copy { len, delta } if inside(at, len, delta) => copied += u64::from(len),
            Op::Literal { len } => literal += u64::from(len),
            _ => {}
        }
        at += u64::from(op.len());
    }
    if copied == 0 || copied > literal {
        return Ok(ops);
    }
    let (new_ops, new_data) = as_literals(&ops, new_bytes, |at, op| match op {
        Op::Copy { len, delta } => inside(seg_start + at as u64, len, delta),
        _ => false,
    });
    let cost = |ops: &[Op], data: &[u8]| -> Result<usize, ProduceError> {
        let mut emitted = Vec::new();
        for op in ops {
            op.emit(&mut emitted);
        }
        let ops_len = zstd_frame(1, 0, 0, &[], &emitted)?.len();
        Ok(ops_len + zstd_frame(1, TRIAL_HASH_LOG, 0, prefix, data)?.len())
    };
    if cost(&new_ops, &new_data)? < cost(&ops, data)? {
        *data = new_data;
        Ok(new_ops)
    } else {
        Ok(ops)
    }
}

/// New bytes coded against similar old bytes at `delta`.
struct Near<'o> {
    delta: i64,
    seg_start: u64,
    /// Old bytes from `seg_start` at the same offset.
    old_bytes: &'o [u8],
    /// Equal runs at least this long become copy ops; 0: never.
    min_copy: u32,
}

impl Near<'_> {
    /// Codes new bytes `n` at offset `at` against old bytes `o`: equal runs
    /// of at least `min_copy` bytes as copies, the rest as delta ops.
    fn push(&self, ops: &mut Vec<Op>, data: &mut Vec<u8>, at: u64, n: &[u8], o: &[u8]) {
        let min = self.min_copy as usize;
        let mut from = 0; // start of the bytes not yet coded
        let mut i = 0;
        while min > 0 && i < n.len() {
            if n[i] != o[i] {
                i += 1;
                continue;
            }
            let run = n[i..]
                .iter()
                .zip(&o[i..])
                .take_while(|(x, y)| x == y)
                .count();
            if run >= min {
                self.delta_op(ops, data, at + from as u64, &n[from..i], &o[from..i]);
                push_op(
                    ops,
                    Op::Copy {
                        len: run as u32,
                        delta: self.delta,
                    },
                );
                from = i + run;
            }
            i += run;
        }
        self.delta_op(ops, data, at + from as u64, &n[from..], &o[from..]);
    }

    /// Appends a delta op for `n` at `at` (nothing when empty). When the ops
    /// end with a delta op of the same delta and then a short copy with that
    /// delta, or zeros over old zeros, that gap joins the delta as zero data:
    /// zstd codes a run of zeros in a few bits, less than two ops.
    fn delta_op(&self, ops: &mut Vec<Op>, data: &mut Vec<u8>, at: u64, n: &[u8], o: &[u8]) {
        if n.is_empty() {
            return;
        }
        if let [.., Op::Delta { delta: d, .. }, gap] = ops.as_slice() {
            let len = gap.len();
            let short = self.min_copy == 0 || len < self.min_copy;
            let joins = *d == self.delta
                && short
                && match *gap {
                    Op::Copy { delta: g, .. } => g == self.delta,
                    Op::Zero { .. } if self.delta == 0 => {
                        let lo = (at - self.seg_start) as usize - len as usize;
                        self.old_bytes
                            .get(lo..lo + len as usize)
                            .is_some_and(is_zero)
                    }
                    _ => false,
                };
            if joins {
                ops.pop();
                data.resize(data.len() + len as usize, 0);
                push_op(
                    ops,
                    Op::Delta {
                        len,
                        delta: self.delta,
                    },
                );
            }
        }
        data.extend(n.iter().zip(o).map(|(x, y)| x.wrapping_sub(*y)));
        push_op(
            ops,
            Op::Delta {
                len: n.len() as u32,
                delta: self.delta,
            },
        );
    }
}

/// The old range (offset, length) to use as history: `prefix_len` bytes
/// centred on where the segment's copy and delta ops, and the literal
/// bytes in `votes` (per delta hint), read most (the same offset when they
/// read nothing), inside the old file and, for in-place patches, not
/// before the segment.
fn prefix_window(
    ops: &[Op],
    votes: &[(i64, u64)],
    seg: &SegmentPlan,
    old_len: u64,
    prefix_len: u32,
    in_place: bool,
) -> Option<(u64, u32)> {
    let mut by_delta: Vec<(i64, u64)> = votes.to_vec();
    for op in ops {
        if let Op::Copy { len, delta } | Op::Delta { len, delta } = *op {
            match by_delta.iter_mut().find(|(d, _)| *d == delta) {
                Some((_, n)) => *n += u64::from(len),
                None => by_delta.push((delta, u64::from(len))),
            }
        }
    }
    let delta = by_delta
        .iter()
        .max_by_key(|(d, n)| (*n, std::cmp::Reverse(d.unsigned_abs())))
        .map_or(0, |(d, _)| *d);
    let len = u64::from(prefix_len).min(old_len);
    let centre = seg.start.saturating_add_signed(delta) + u64::from(seg.len) / 2;
    let mut lo = centre.saturating_sub(len / 2).min(old_len - len);
    if in_place {
        lo = lo.max(seg.start);
    }
    let len = len.min(old_len.saturating_sub(lo));
    (len > 0).then_some((lo, len as u32))
}

/// The prefix range `(offset, length)` that holds the most old anchors of
/// the segment's literal bytes ([`Anchors`]), when it holds clearly more of
/// them than `window` (placed by the ops around them) does; else `window`.
#[allow(clippy::too_many_arguments)]
fn prefix_from_anchors(
    anchors: &Anchors,
    ops: &[Op],
    new_bytes: &[u8],
    seg: &SegmentPlan,
    old_len: u64,
    in_place: bool,
    window: (u64, u32),
    (matches, hit_offsets): (&mut Vec<(u64, usize)>, &mut Vec<u64>),
) -> (u64, u32) {
    if literal_bytes(ops) < PREFIX_MIN_LITERALS {
        return window;
    }
    let mut ranges = Vec::new();
    let mut at = 0usize;
    for op in ops {
        let len = op.len() as usize;
        if let Op::Literal { .. } = op {
            ranges.push((at, at + len));
        }
        at += len;
    }
    anchors.matches(new_bytes, &ranges, matches);
    hit_offsets.clear();
    hit_offsets.extend(
        matches
            .iter()
            .map(|h| h.0)
            .filter(|&o| !in_place || o >= seg.start),
    );
    hit_offsets.sort_unstable();
    let (lo, len) = window;
    let len64 = u64::from(len);
    let hits = &*hit_offsets;
    let inside = |from: u64| {
        let a = hits.partition_point(|&o| o < from);
        let b = hits.partition_point(|&o| o < from + len64);
        b - a
    };
    let now = inside(lo);
    match Anchors::best_window(hits, len64, old_len) {
        Some((best, _)) => {
            let best = if in_place { best.max(seg.start) } else { best };
            if inside(best) >= now + MOVE_PREFIX_MIN && best + len64 <= old_len {
                (best, len)
            } else {
                window
            }
        }
        None => window,
    }
}

/// The data block of codec `ZstdPrefix`: the prefix ref for old bytes
/// `prefix` at `lo`, then `data`'s frame with them as history.
fn prefix_block(
    seg_start: u64,
    lo: u64,
    prefix: &[u8],
    settings: Settings,
    data: &[u8],
) -> Result<Vec<u8>, ProduceError> {
    let mut block = Vec::with_capacity(16 + zstd_safe::compress_bound(data.len()));
    PrefixRef {
        delta: (lo as i128 - seg_start as i128) as i64,
        len: prefix.len() as u32,
    }
    .emit(&mut block);
    // Without trials (at zstd's fast levels), tables that reach the whole
    // prefix; with them, the level's own (a higher level's search reaches).
    let tables = if settings.trials {
        0
    } else {
        fitted_table_log(prefix, data)
    };
    let level = if settings.trials {
        settings.level
    } else {
        settings.prefix_level
    };
    block.extend_from_slice(&zstd_frame(level, tables, tables, prefix, data)?);
    Ok(block)
}

/// The old bytes for new bytes `n` at offset `a`, where `near[i]` is the
/// old byte for new offset `base + i`, if they exist and at least
/// `sixteenths`/16 of them are equal.
fn similar<'o>(n: &[u8], a: u64, base: u64, near: &'o [u8], sixteenths: usize) -> Option<&'o [u8]> {
    let ra = usize::try_from(a.checked_sub(base)?).ok()?;
    let o = near.get(ra..ra + n.len())?;
    (16 * equal_bytes(n, o) >= sixteenths * n.len()).then_some(o)
}

fn equal_bytes(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x == y).count()
}

/// Rewrites a segment's ops where a cheaper equal form exists, and `data`
/// to match: a delta op whose data is all zeros is a copy; a copy or delta
/// op at another delta whose bytes also (better) match the same offset
/// reads there instead. Block-by-block coding leaves such ops at part
/// edges, and the shift matcher finds zero runs at far offsets.
fn tidy(ops: &[Op], data: &mut Vec<u8>, new: &[u8], old: &[u8]) -> Vec<Op> {
    let mut out_ops = Vec::with_capacity(ops.len());
    let mut out_data = Vec::with_capacity(data.len());
    let (mut at, mut d) = (0usize, 0usize); // offsets in the segment and in `data`
    for &op in ops {
        let len = op.len() as usize;
        let taken = op.data_len() as usize;
        let n = &new[at..at + len];
        let same = old.get(at..at + len);
        let op = match op {
            Op::Copy { delta, .. } if delta != 0 => match same.and_then(|o| unequal_middle(n, o)) {
                // Equal at the same offset but for a few bytes: those few as
                // literals cost less than a far delta, and the copies on
                // either side join their neighbours.
                Some((a, b)) => {
                    let head = Op::Copy {
                        len: a as u32,
                        delta: 0,
                    };
                    let tail = Op::Copy {
                        len: (len - b) as u32,
                        delta: 0,
                    };
                    if a > 0 {
                        push_op(&mut out_ops, head);
                    }
                    if b > a {
                        out_data.extend_from_slice(&n[a..b]);
                        push_op(
                            &mut out_ops,
                            Op::Literal {
                                len: (b - a) as u32,
                            },
                        );
                    }
                    at += len;
                    if b < len {
                        push_op(&mut out_ops, tail);
                    }
                    continue;
                }
                None => op,
            },
            Op::Delta { delta, .. } => {
                let mut bytes = &data[d..d + len];
                let mut op = op;
                if let Some(o) = same.filter(|o| delta != 0 && equal_bytes(n, o) > zeros(bytes)) {
                    out_data.extend(n.iter().zip(o).map(|(x, y)| x.wrapping_sub(*y)));
                    bytes = &out_data[out_data.len() - len..];
                    op = Op::Delta {
                        len: len as u32,
                        delta: 0,
                    };
                } else {
                    out_data.extend_from_slice(bytes);
                    bytes = &out_data[out_data.len() - len..];
                }
                if zeros(bytes) == len {
                    out_data.truncate(out_data.len() - len);
                    let Op::Delta { delta, .. } = op else {
                        unreachable!("op is a delta op")
                    };
                    op = Op::Copy {
                        len: len as u32,
                        delta,
                    };
                }
                op
            }
            Op::Literal { .. } => {
                out_data.extend_from_slice(&data[d..d + len]);
                op
            }
            op => op,
        };
        d += taken;
        push_op(&mut out_ops, op);
        at += len;
    }
    *data = out_data;
    out_ops
}

/// Where `n` and `o` differ: the range between their longest equal head and
/// tail, when it is at most `FEW` bytes (empty when they are equal).
fn unequal_middle(n: &[u8], o: &[u8]) -> Option<(usize, usize)> {
    const FEW: usize = 8;
    let head = n.iter().zip(o).take_while(|(x, y)| x == y).count();
    if head == n.len() {
        return Some((head, head));
    }
    let tail = n
        .iter()
        .rev()
        .zip(o.iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let end = n.len() - tail;
    (end - head <= FEW).then_some((head, end))
}

fn zeros(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == 0).count()
}

/// Appends `op`, merging it into the last op when they are the same kind
/// (and delta), which keeps the ops block short.
fn push_op(ops: &mut Vec<Op>, op: Op) {
    let merged = match (ops.last_mut(), op) {
        (Some(Op::Literal { len: l }), Op::Literal { len })
        | (Some(Op::Zero { len: l }), Op::Zero { len }) => l.checked_add(len).map(|s| *l = s),
        (Some(Op::Copy { len: l, delta: d }), Op::Copy { len, delta })
        | (Some(Op::Delta { len: l, delta: d }), Op::Delta { len, delta })
            if *d == delta =>
        {
            l.checked_add(len).map(|s| *l = s)
        }
        _ => None,
    };
    if merged.is_none() {
        ops.push(op);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_merge_by_kind_and_delta() {
        let mut ops = Vec::new();
        push_op(&mut ops, Op::Literal { len: 1 });
        push_op(&mut ops, Op::Literal { len: 2 });
        push_op(&mut ops, Op::Delta { len: 3, delta: 0 });
        push_op(&mut ops, Op::Delta { len: 3, delta: 0 });
        push_op(&mut ops, Op::Copy { len: 1, delta: 5 });
        push_op(&mut ops, Op::Copy { len: 1, delta: 6 });
        assert_eq!(
            ops,
            [
                Op::Literal { len: 3 },
                Op::Delta { len: 6, delta: 0 },
                Op::Copy { len: 1, delta: 5 },
                Op::Copy { len: 1, delta: 6 },
            ]
        );
    }

    #[test]
    fn tidy_rewrites_ops_to_cheaper_equal_forms() {
        let old: Vec<u8> = (0..64u8).collect();
        let mut new = old.clone();
        new[20] = 0xEE;
        // A far copy over bytes that equal the same offset but for one; an
        // all-zero delta; a delta at a far offset that matches worse than
        // the same offset does.
        let ops = [
            Op::Copy { len: 24, delta: 7 },
            Op::Delta { len: 8, delta: 0 },
            Op::Delta { len: 32, delta: -3 },
        ];
        let mut data = vec![0u8; 8];
        data.extend(new[32..].iter().map(|x| x.wrapping_sub(x.wrapping_sub(3))));
        let ops = tidy(&ops, &mut data, &new, &old);
        assert_eq!(
            ops,
            [
                Op::Copy { len: 20, delta: 0 },
                Op::Literal { len: 1 },
                Op::Copy { len: 43, delta: 0 },
            ]
        );
        assert_eq!(data, [0xEE]);
        assert_eq!(unequal_middle(b"abcXYdef", b"abc__def"), Some((3, 5)));
        assert_eq!(unequal_middle(b"abc", b"abc"), Some((3, 3)));
        assert_eq!(unequal_middle(&[1; 20], &[2; 20]), None);
    }

    #[test]
    fn workers_fit_the_budget() {
        assert_eq!(encode_workers(2, 9, 4 << 20, 1 << 20), 2);
        assert!(encode_workers(256, 19, 4 << 20, 0) * (16 + 96) <= 320);
        assert!(encode_workers(256, 19, 4 << 20, 4 << 20) * (16 + 4 + 3 * 96) <= 320);
        assert_eq!(encode_workers(0, 19, 4 << 20, 4 << 20), 1);
    }
}
