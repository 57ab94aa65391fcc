//! Makes anypatch patches (format v1, see the `anypatch-format` crate).
//!
//! [`make_patch`] reads an old and a new file with positioned reads (`pread`)
//! and never holds either one whole. It runs in phases:
//!
//! 1. **Scan** (parallel over 1 MiB windows): hashes both files with BLAKE3
//!    (window chaining values merged into the whole-file hash, so the two
//!    files are hashed in the same pass), indexes every non-zero old block
//!    by xxh3 and by a rolling hash of one 64-byte window (from its first
//!    non-zero byte), and classifies each new block as same-as-old, zero or
//!    changed. With [`Options::cache`], what this computes from the old
//!    file alone comes from the hash cache when the old file is unchanged
//!    since (module `cached`), and only old pieces that differ from the new
//!    file are read.
//! 2. **Index**: sorts the old blocks' `(xxh3, offset)` pairs.
//! 3. **Match** (parallel): looks each changed new block up in the index and
//!    verifies hits byte for byte, so moved data becomes a copy. Then the
//!    changed bytes that are left are searched for data shifted by any
//!    number of bytes: a 64-byte rolling window looked up in the second
//!    index, verified and extended byte by byte (module `shift`), so an
//!    insertion or deletion costs about its own bytes.
//!    Short zero or unchanged runs between two copies with the same delta
//!    join them when the old bytes agree (module `coalesce`).
//! 4. **Plan** (sequential): turns the byte spans into extents and data
//!    segments; shifted matches become copy extents, or copy ops when short.
//! 5. **Encode** (parallel, bounded): builds each segment's ops and data,
//!    compresses with zstd, and spools the payloads, in order, to a temporary
//!    file. With [`Options::prefix_search`], a sparse content-defined index
//!    of the whole old file (read again for it, module `anchors`) first says
//!    where each segment's old-byte history should be.
//! 6. **History** (`best`, parallel): codes every data block again with the
//!    data blocks before it as zstd history (module `history`, format 1.3),
//!    and keeps that pass when the patch gets smaller.
//!
//! Then the header, pages, payloads and trailer are written out; with
//! [`Options::verify`] (the default at `best`), through the apply engine
//! as they go (module `verify`), which must accept them.
//!
//! # Determinism
//! Workers write into per-window or per-segment slots and one writer emits
//! them in order, so the output is byte-identical for any thread count.
//!
//! # Memory
//! Peak memory is a few MiB per thread plus, and only these grow with the
//! files:
//! - the old-block index: 16 bytes per 4 KiB old block (0.4% of the old
//!   file, 8 MiB for a 2 GiB image);
//! - the shift index: 8 bytes per 4 KiB old block plus a bitset of at most
//!   4 bytes per block (at most 16 MiB), 12 bytes per block in all (6 MiB
//!   for a 2 GiB image). Its entries are collected during the scan, beside
//!   the xxh3 index, so the peak is 24 bytes per old block plus the bitset;
//! - the spans of the new file: 24 bytes per run of one kind (a shifted
//!   match, a zero run, or changed bytes);
//! - 16 bytes per changed new block (its xxh3 and number) until matched;
//! - the plan: about 50 bytes per extent;
//! - 32 bytes per MiB of each file for the BLAKE3 tree;
//! - with [`Options::prefix_search`] (`fast`), the anchor index (module
//!   `anchors`): 16 bytes per anchor, about one per 256 bytes of a small
//!   old file and about a million (16 MiB) at most on real data, never
//!   over twice that (data made of anchors is thinned per 1 MiB), plus a
//!   directory of 2 bytes per anchor; per encoding worker at most 64 Ki
//!   matches (1.5 MiB).
//!
//! Scanning uses two 64 KiB buffers per thread; shift matching 1 MiB of new
//! bytes and at most 64 KiB of old bytes per thread. Encoding keeps at most
//! `2 × workers` segments (each at most 4 MiB of new data) in flight, and
//! starts only as many workers (each with a zstd context) as fit a 320 MiB
//! budget at the chosen level; finished payloads go to the spool file, not
//! memory. The history pass spools the data blocks uncompressed to a second
//! temporary file and holds, per worker, at most 4 MiB of them and a zstd
//! context with that history, under the same budget. Measured: 20 MiB peak RSS on a 2 GiB pair with 0.1% of blocks
//! changed; 141 MiB at `--level 19 -j 16` on a 256 MiB pair that is mostly
//! changed.
#![forbid(unsafe_code)]

mod anchors;
mod approx;
mod cached;
mod coalesce;
mod encode;
mod error;
mod exec;
mod from_index;
mod hashtree;
mod history;
mod index;
mod input;
mod keys;
mod matching;
mod pieces;
mod plan;
mod raw_spool;
mod rolling;
mod scan;
mod shift;
mod spans;
#[cfg(test)]
mod test_data;
mod verify;
mod write;
mod zeros;
mod zstd_frames;

use std::io::Write;
use std::path::{Path, PathBuf};

use anypatch_format::{Hash, MAX_PREFIX_LEN, MAX_SEGMENT_LEN};

pub use cached::{CacheOptions, CacheUse};
pub use error::ProduceError;
pub use from_index::{
    make_index, make_index_from_cache, make_patch_from_index, IndexOptions, IndexSummary,
};
pub use keys::SecretKey;

/// The producer name written into every header.
pub const PRODUCER: &str = concat!("anypatch-mkpatch ", env!("CARGO_PKG_VERSION"));

/// `fast`'s segments: each has twice its length of old bytes as history,
/// and zstd's tables for them stay smaller. 1 MiB took 10-25% less CPU
/// than 4 MiB on real release archives and executables, for patches 0-2%
/// larger; 512 KiB less again, but its extra segments made the corpus's
/// incompressible `zeros` pair's patch larger.
const FAST_SEGMENT_LEN: u32 = 1 << 20;

/// `fast`'s zstd level for frames with old bytes as history: searching the
/// prefix costs most of the time, and level 3 made 3-5% smaller frames in
/// 25% more CPU.
const FAST_PREFIX_LEVEL: i32 = 1;

/// The anchor index ([`Options::prefix_search`]) is built only when the
/// data segments cover at least 1/this of the old file's length.
const ANCHORS_MIN_DATA_SHARE: u64 = 32;

/// A speed/size trade-off: what `mkpatch --level fast|default|best` picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// zstd level 3, small segments, and the old bytes each one most
    /// resembles as zstd history ([`Options::prefix_search`]), without
    /// trials (see [`Options::trials`]): the least CPU.
    Fast,
    /// zstd level 9, changes up to 1 MiB apart share a segment, and new
    /// data is compressed with the old bytes it most resembles as zstd
    /// history ([`Options::prefix_search`]); near matches are deltas or
    /// literals as a fast trial with that history finds smaller
    /// ([`Options::coding_trial`]).
    Default,
    /// zstd level 19, changes up to 4 MiB apart share a segment, and
    /// earlier segments' data as history too (format 1.3) when smaller.
    Best,
}

impl Level {
    /// The options this level sets; other fields keep their defaults.
    pub fn options(self) -> Options {
        let (level, merge_gap, prefix_len, min_copy) = match self {
            Level::Fast => (3, 16 << 10, MAX_PREFIX_LEN, 0),
            Level::Default => (9, 1 << 20, MAX_PREFIX_LEN, 24),
            Level::Best => (19, MAX_SEGMENT_LEN, MAX_PREFIX_LEN, 24),
        };
        Options {
            level,
            merge_gap,
            prefix_len,
            min_copy,
            data_history: self == Level::Best,
            // Not yet on at `best`: smaller on real archives, larger on the
            // small corpus's scattered edits (bench/results-best.md).
            approx_match: false,
            verify: self == Level::Best,
            trials: self == Level::Best,
            prefix_search: self != Level::Best,
            coding_trial: self == Level::Default,
            shift_sample: self == Level::Fast,
            prefix_level: if self == Level::Fast {
                FAST_PREFIX_LEVEL
            } else {
                level
            },
            segment_len: if self == Level::Fast {
                FAST_SEGMENT_LEN
            } else {
                MAX_SEGMENT_LEN
            },
            ..Options::base()
        }
    }
}

/// How to make a patch. Start from [`Options::default`] (or
/// [`Level::options`]) and change fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Worker threads; 0 means one per available core. The output does not
    /// depend on it.
    pub threads: usize,
    /// zstd level for data blocks, 1..=19 (default 9).
    pub level: i32,
    /// Changed regions at most this many bytes apart share one data segment
    /// (the bytes between become ops, not extents). Larger values make
    /// smaller patches of scattered edits; 0 keeps every change apart.
    pub merge_gap: u32,
    /// Compress literal data with up to this many old bytes, around where
    /// the segment's copies read, as zstd history (codec `ZstdPrefix`,
    /// format 1.1), kept per segment when it is smaller; a segment uses at
    /// most its own length plus 1 MiB. 0 turns it off; at most
    /// `MAX_PREFIX_LEN` (4 MiB, the default). More finds more, at more CPU.
    pub prefix_len: u32,
    /// Inside a near match (bytes coded as a delta against similar old
    /// bytes), equal runs of at least this many bytes become copy ops; 0
    /// keeps whole blocks as one delta.
    pub min_copy: u32,
    /// Also code every data block with the earlier data blocks as zstd
    /// history (codec `ZstdHistory`, format 1.3), and keep that when the
    /// patch gets smaller. The segments' data then decode in order, not
    /// each on its own. Costs a second compression pass.
    pub data_history: bool,
    /// With `data_history`: match changed bytes approximately against the
    /// whole old file through its suffix array, as bsdiff does, when the
    /// old file is at most 512 MiB (module `approx`; 5 bytes of memory per
    /// old byte). Off by default (bench/results-best.md says why).
    pub approx_match: bool,
    /// Choose between codings by fast trial compressions ([`Level::Best`]):
    /// whether the old bytes help as history, and whether near matches are
    /// smaller as bytewise deltas or as literals. Off ([`Level::Fast`] and
    /// [`Level::Default`]): with `prefix_len` > 0 every segment with enough
    /// literal data has old bytes as history (its length and a quarter
    /// again, centred on where its data came from, at most `prefix_len`),
    /// only nearly equal blocks are bytewise deltas (but see
    /// `coding_trial`), and that frame is made at `prefix_level` with
    /// tables sized to reach the whole prefix.
    pub trials: bool,
    /// Without `trials` ([`Level::Default`]): also code each segment with
    /// the blocks that are less alike (3/8 of their bytes equal) as deltas,
    /// and with every delta as literals, and keep the coding that a zstd
    /// level 1 trial with the segment's prefix finds smallest. A release
    /// rebuilt with code moved wants the deltas; recompiled code, where
    /// equal bytes come in shifting pieces, wants zstd to find them in the
    /// prefix. Costs up to three fast compressions per segment.
    pub coding_trial: bool,
    /// Look up only a sample of the changed bytes for shifted data (two
    /// blocks of every 32, and two after each match), for the encoder's
    /// prefixes to find the rest ([`Level::Fast`]).
    pub shift_sample: bool,
    /// zstd level of frames with old bytes as history when `trials` is off
    /// (with trials, `level`): 1 at [`Level::Fast`], 9 at
    /// [`Level::Default`].
    pub prefix_level: i32,
    /// Place each segment's old-byte history (`prefix_len`) where a sparse
    /// index of the whole old file (one content-defined anchor in 256 or
    /// more bytes, at most 16 MiB) finds most of its literal bytes, when
    /// that is elsewhere than the matches around it say: data that moved
    /// far, such as a file rewritten to another place in a disk image.
    /// Costs a second read of the old file.
    pub prefix_search: bool,
    /// Most new bytes one data segment produces, 1..=4 MiB (default 4 MiB;
    /// 1 MiB at [`Level::Fast`]).
    /// Smaller values make more, smaller segments (useful in tests).
    pub segment_len: u32,
    /// Matching block size: a power of two in 512..=1 MiB (default 4096).
    pub block_size: u32,
    /// Where to put the temporary spool file; `None` means `$TMPDIR`.
    pub spool_dir: Option<PathBuf>,
    /// Sign the header section with this Ed25519 key; `None`: unsigned.
    pub signing_key: Option<SecretKey>,
    /// Make a patch that can be applied in place: never read old data at an
    /// offset before the one being written (spec section 4.3).
    pub in_place: bool,
    /// Check the patch as it is written with the engine `applypatch` uses
    /// (`anypatch-apply`): every page and data segment decoded and checked
    /// against its hash, without reading unchanged data. A patch the engine
    /// refuses, which only a producer bug makes, is then
    /// [`ProduceError::SelfCheck`] naming the segment, not a patch nobody
    /// can apply. It runs after compression, on the calling thread, at
    /// about 200 MiB of changed data a second: on by default at
    /// [`Level::Best`], where that is 1-3% of the time next to zstd level
    /// 19; off otherwise, where it can add half again to [`Level::Fast`].
    pub verify: bool,
    /// Keep what the scan computed about the old file (its BLAKE3, piece
    /// hashes and block index, about 3.6 MiB per GiB) in this hash cache,
    /// and use it when the old file's device, inode, size, mtime and ctime
    /// are unchanged since (crate `anypatch-hash-cache`). The patch is the
    /// same, byte for byte, with or without it. `None` (the default): no
    /// cache.
    pub cache: Option<CacheOptions>,
}

impl Default for Options {
    fn default() -> Self {
        Level::Default.options()
    }
}

impl Options {
    /// Every field at its default except those the level sets.
    fn base() -> Self {
        Self {
            threads: 0,
            level: 9,
            merge_gap: 1 << 20,
            prefix_len: MAX_PREFIX_LEN,
            min_copy: 24,
            data_history: false,
            approx_match: false,
            trials: true,
            prefix_search: false,
            coding_trial: false,
            shift_sample: false,
            prefix_level: 9,
            segment_len: MAX_SEGMENT_LEN,
            block_size: 4096,
            spool_dir: None,
            signing_key: None,
            in_place: false,
            verify: false,
            cache: None,
        }
    }

    /// The thread count to use: `threads`, or the number of cores when 0.
    pub fn effective_threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    fn validate(&self) -> Result<(), ProduceError> {
        if !(1..=19).contains(&self.level) {
            return Err(ProduceError::InvalidOption {
                name: "level",
                reason: format!("is {}; use a zstd level in 1..=19", self.level),
            });
        }
        if !(1..=19).contains(&self.prefix_level) {
            return Err(ProduceError::InvalidOption {
                name: "prefix_level",
                reason: format!("is {}; use a zstd level in 1..=19", self.prefix_level),
            });
        }
        if self.prefix_len > MAX_PREFIX_LEN {
            return Err(ProduceError::InvalidOption {
                name: "prefix_len",
                reason: format!("is {}; use 0..={MAX_PREFIX_LEN}", self.prefix_len),
            });
        }
        if !(1..=MAX_SEGMENT_LEN).contains(&self.segment_len) {
            return Err(ProduceError::InvalidOption {
                name: "segment_len",
                reason: format!("is {}; use 1..={MAX_SEGMENT_LEN}", self.segment_len),
            });
        }
        if !self.block_size.is_power_of_two()
            || !(512..=scan::WINDOW).contains(&u64::from(self.block_size))
        {
            return Err(ProduceError::InvalidOption {
                name: "block_size",
                reason: format!(
                    "is {}; use a power of two in 512..=1048576",
                    self.block_size
                ),
            });
        }
        Ok(())
    }
}

/// Which phase a [`Progress`] report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Hashing and classifying both files; units are bytes of the longer file.
    Scan,
    /// Looking changed blocks up in the old index; units are blocks.
    Match,
    /// Building and compressing data segments; units are segments.
    Encode,
    /// Coding data blocks again with the data history (`best`); units are
    /// data blocks.
    History,
    /// Writing the patch; units are bytes.
    Write,
}

/// A progress report. Reports come from the calling thread only, a few times
/// a second at most per phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub phase: Phase,
    pub done: u64,
    pub total: u64,
}

/// What a patch contains. Byte counts are new-file bytes each kind covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub old_len: u64,
    pub new_len: u64,
    pub old_hash: Hash,
    pub new_hash: Hash,
    /// Length of the patch written, trailer included.
    pub patch_len: u64,
    pub extents: u64,
    pub segments: u64,
    /// Bytes unchanged at the same offset (copy extents with delta 0).
    pub copied_bytes: u64,
    /// Bytes found elsewhere in the old file (copy extents with delta != 0).
    pub moved_bytes: u64,
    /// Bytes covered by zero extents.
    pub zero_bytes: u64,
    /// Bytes produced by data segments.
    pub changed_bytes: u64,
    /// Whether the header carries `FLAG_IN_PLACE_SAFE`.
    pub in_place_safe: bool,
    /// What the hash cache did ([`Options::cache`]), and its warnings.
    pub cache: CacheUse,
}

/// Makes a patch from `old` to `new` and writes it to `out`.
///
/// `out` receives the patch strictly front to back and is not flushed; a
/// failed call may have written part of a patch, so write to a temporary
/// file and rename it when the call succeeds. `progress` is called from the
/// calling thread only.
pub fn make_patch(
    old: &Path,
    new: &Path,
    out: &mut dyn Write,
    opts: &Options,
    progress: &dyn Fn(Progress),
) -> Result<Summary, ProduceError> {
    opts.validate()?;
    let threads = opts.effective_threads();
    let old = input::Input::open(old)?;
    let new = input::Input::open(new)?;

    let job = input::Job {
        old: &old,
        new: &new,
        block_size: opts.block_size,
        threads,
        progress,
    };

    let (scanned, cache_use) = cached::scan(job, opts.cache.as_ref())?;
    let index = index::OldIndex::build(scanned.index_entries);
    let mut runs = matching::find_moves(job, &index, scanned.runs, &scanned.changed)?;
    drop(index);
    drop(scanned.changed);
    if opts.in_place {
        make_in_place_safe(&mut runs);
    }
    let spans = spans::spans_of(&runs, new.len, opts.block_size);
    drop(runs);
    let shift_index = shift::ShiftIndex::build(scanned.shift_entries);
    // At `fast`, the encoder's prefixes find most shifted data: the matcher
    // only samples, for copies of long runs and where the prefixes go.
    let sample = opts
        .shift_sample
        .then(|| shift::Sample::of_blocks(opts.block_size));
    let spans = shift::find_shifted(job, &shift_index, spans, opts.in_place, sample)?;
    drop(shift_index);
    let spans = coalesce::join_copies(&old, &new, spans)?;
    let plan = plan::plan(&spans, opts.block_size, opts.segment_len, opts.merge_gap);
    drop(spans);

    let spool_file = || spool_file(opts.spool_dir.as_deref());
    let raw_spool = opts.data_history.then(spool_file).transpose()?;
    // The index reads the whole old file again: worth it only when there
    // is enough data to encode (a sparse change took 3.7x the time of
    // hashing both files with it, 1.2x without).
    let data_len: u64 = plan.segments.iter().map(|s| u64::from(s.len)).sum();
    let anchors = (opts.prefix_search
        && opts.prefix_len > 0
        && data_len.saturating_mul(ANCHORS_MIN_DATA_SHARE) >= old.len)
        .then(|| anchors::Anchors::build(&old, threads))
        .transpose()?;
    // `best`: approximate matching against the whole old file (module approx).
    let text = (opts.approx_match && raw_spool.is_some())
        .then(|| approx::index(&old, opts.in_place))
        .transpose()?
        .flatten();
    let plan = match &text {
        Some(_) => approx::split(plan, approx::SEGMENT_LEN.min(opts.segment_len)),
        None => plan,
    };
    let mut encoded = match (&text, raw_spool) {
        (Some(text), Some(raw)) => {
            approx::encode_all(job, text, &plan, opts.level, spool_file()?, raw)?
        }
        (_, raw_spool) => encode::encode_all(
            job,
            &plan,
            encode::Settings {
                level: opts.level,
                prefix_len: opts.prefix_len,
                min_copy: opts.min_copy,
                in_place: opts.in_place,
                history: opts.data_history,
                trials: opts.trials,
                coding_trial: opts.coding_trial,
                prefix_level: opts.prefix_level,
            },
            spool_file()?,
            raw_spool,
            anchors.as_ref(),
        )?,
    };
    drop(text);
    if let Some(raw) = encoded.raw.take() {
        encoded = history::recode(
            encoded,
            raw,
            opts.level,
            job.threads,
            spool_file()?,
            progress,
        )?;
    }
    #[cfg(test)]
    verify::fault::inject(&encoded)?;
    let id = write::Identity {
        old_len: old.len,
        new_len: new.len,
        old_hash: scanned.old_hash,
        new_hash: scanned.new_hash,
        block_size: opts.block_size,
    };
    let key = opts.signing_key.as_ref();
    let mut summary = if !opts.verify {
        write::write_patch(&plan, encoded, id, opts.level, key, out, progress)?
    } else {
        let mut checked = verify::Checked::new(out, &old);
        let summary =
            write::write_patch(&plan, encoded, id, opts.level, key, &mut checked, progress)?;
        checked.finish()?;
        summary
    };
    summary.cache = cache_use;
    Ok(summary)
}

/// Applied in place, in new-file order, a block that moved backwards (its
/// source lies before its destination) would be read after something else
/// may have overwritten its source. Sending such blocks as changed data
/// breaks every copy cycle, such as two swapped regions, at a bounded cost:
/// at most the moved bytes, compressed. Blocks that moved forwards, and
/// same-offset deltas, stay as they are.
fn make_in_place_safe(runs: &mut [spans::Run]) {
    for run in runs.iter_mut() {
        if let spans::Class::Moved(delta) = run.class {
            if delta < 0 {
                run.class = spans::Class::Changed(0);
            }
        }
    }
}

/// A temporary spool file in `dir`, else in `$TMPDIR`: removed by the
/// system when closed.
pub(crate) fn spool_file(dir: Option<&std::path::Path>) -> Result<std::fs::File, ProduceError> {
    match dir {
        Some(dir) => tempfile::tempfile_in(dir),
        None => tempfile::tempfile(),
    }
    .map_err(|source| ProduceError::Spool { source })
}
