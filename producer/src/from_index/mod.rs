//! Patches without the old file: the block index of an image
//! ([`make_index`], `mkpatch index`) and patches made from it
//! ([`make_patch_from_index`], `mkpatch --from-index`). The index format
//! itself is the `anypatch-index` crate (spec/INDEX.md).
//!
//! Making a patch from an index runs the producer's own phases with the
//! old bytes replaced by the index:
//!
//! 1. **Read** the index whole and check it (header, trailer, signatures)
//!    before anything else, so a patch is never made from an index that
//!    does not match what it claims; keep the strong hashes by block and
//!    the weak keys sorted ([`table::BlockTable`]).
//! 2. **Scan** the new file (parallel over 1 MiB windows, module `scan`):
//!    its BLAKE3, and a class for every block: the same as the old block at
//!    its offset (strong hashes equal), zero, found elsewhere (weak key hit
//!    confirmed by the strong hash), or changed. With [`Options::cache`],
//!    the scan's result is kept in the hash cache, and a later patch from
//!    the same index to the unchanged file does not scan it (module
//!    `new_cache`).
//! 3. **Shift** (parallel, module `shift`): a block-sized window rolls over
//!    every byte offset of the changed regions; a weak hit confirmed by the
//!    strong hash is a copy of that old block, so data shifted by any
//!    number of bytes is found.
//! 4. **Plan, encode, write**: the producer's own planner, encoder and
//!    writer, with no old bytes for the encoder (no deltas, no old-byte
//!    history: what is not a copy or zeros is new data, zstd on all cores).
//!    The header's old length and hash come from the index.
//!
//! # Memory
//! 31 bytes per old block, from reading the index to the end of matching
//! (16 for its strong hash, 4 for its weak key, 8 for the weak key and
//! number in hash-table order, about 2 for where the buckets start and 1
//! for the bitset in front of them: 15.5 MiB for a 2 GiB image at 4 KiB
//! blocks), plus the producer's own
//! per-thread buffers, spans and plan. Making an index holds 32 bytes per
//! MiB of the image and a few windows' entries; the entries go to a spool
//! file, not memory.

mod cache;
mod make;
mod new_cache;
mod scan;
mod shift;
mod table;

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::Path;

use anypatch_index::{Header, IndexError, IndexReader, Limits, ENTRY_LEN, HEADER_LEN, TRAILER_LEN};

use crate::input::{Input, Job};
use crate::spans::{Class, Span};
use crate::{encode, history, plan, spans, write};
use crate::{Options, ProduceError, Progress, Summary};

pub use make::{make_index, make_index_from_cache, IndexOptions, IndexSummary};

/// Least mean data segment length for which `default` uses the data history.
const HISTORY_MIN_MEAN: u64 = 256 << 10;

/// Makes a patch from the old image's index at `index` (made by
/// [`make_index`]) to the file `new`, and writes it to `out`, as
/// [`crate::make_patch`] does. The index is read whole and verified first
/// (and, when `trusted` is not empty, must be signed by one of those
/// Ed25519 public keys). There are no near-match deltas (no old bytes to
/// subtract), and a `prefix_len` above 0 (old bytes as zstd history, at
/// `default` and `best`) turns on the data history instead
/// ([`Options::data_history`], format 1.3), kept only when it makes the
/// patch smaller. `verify` is refused: it needs the old file.
pub fn make_patch_from_index(
    index: &Path,
    new: &Path,
    trusted: &[[u8; 32]],
    out: &mut dyn Write,
    opts: &Options,
    progress: &dyn Fn(Progress),
) -> Result<Summary, ProduceError> {
    opts.validate()?;
    if opts.verify {
        return Err(ProduceError::InvalidOption {
            name: "verify",
            reason: "needs the old file, which a patch made from an index does not have".into(),
        });
    }
    let (header, table, index_sum) = read_table(index, trusted)?;
    let threads = opts.effective_threads();
    let new = Input::open(new)?;
    let old = Input::absent()?;
    let block_size = header.block_size;
    let job = Job {
        old: &old,
        new: &new,
        block_size,
        threads,
        progress,
    };

    let (scanned, cache_use) = new_cache::scan(
        &new,
        &table,
        &index_sum,
        threads,
        opts.cache.as_ref(),
        progress,
    )?;
    let mut runs = scanned.runs;
    if opts.in_place {
        crate::make_in_place_safe(&mut runs);
    }
    let spans = spans::spans_of(&runs, new.len, block_size);
    drop(runs);
    let spans = shift::find_shifted(&new, &table, spans, opts.in_place, threads, progress)?;
    drop(table);
    let spans: Vec<Span> = spans
        .into_iter()
        .map(|s| match s.class {
            Class::Moved(0) => Span {
                class: Class::Same,
                ..s
            },
            _ => s,
        })
        .collect();
    let plan = plan::plan(&spans, block_size, opts.segment_len, opts.merge_gap);
    drop(spans);

    let spool_file = || crate::spool_file(opts.spool_dir.as_deref());
    // Old bytes as history (`prefix_len`, at `default` and `best`) become
    // the data history here: earlier new data is the only history there is.
    // Each data block then loads up to 4 MiB of history, which pays only
    // when the blocks are long enough to use it (scattered small changes:
    // many short segments, whose history loads would cost more than all
    // of their compression).
    let data = plan.segments.iter().map(|s| u64::from(s.len)).sum::<u64>();
    let long_segments = data >= HISTORY_MIN_MEAN * plan.segments.len() as u64;
    // `fast` (no trials) keeps to one compression per segment. Without old
    // bytes there is no prefix to try codings with: `default` has the
    // trials instead.
    let trials = opts.trials || opts.coding_trial;
    let data_history = opts.data_history || (opts.prefix_len > 0 && trials && long_segments);
    let raw_spool = data_history.then(spool_file).transpose()?;
    let mut encoded = encode::encode_all(
        job,
        &plan,
        encode::Settings {
            level: opts.level,
            // The old bytes are not here to be history.
            prefix_len: 0,
            min_copy: opts.min_copy,
            in_place: opts.in_place,
            history: data_history,
            trials,
            coding_trial: false,
            prefix_level: opts.prefix_level,
        },
        spool_file()?,
        raw_spool,
        None,
    )?;
    if let Some(raw) = encoded.raw.take() {
        encoded = history::recode(encoded, raw, opts.level, threads, spool_file()?, progress)?;
    }
    let id = write::Identity {
        old_len: header.old_len,
        new_len: new.len,
        old_hash: header.old_hash,
        new_hash: scanned.new_hash,
        block_size,
    };
    let mut summary = write::write_patch(
        &plan,
        encoded,
        id,
        opts.level,
        opts.signing_key.as_ref(),
        out,
        progress,
    )?;
    summary.cache = cache_use;
    Ok(summary)
}

/// Reads and checks the index at `path` (signed by one of `trusted`, when
/// there are any) into the table the matcher uses; also returns its
/// trailer (the BLAKE3 of its header and entries).
fn read_table(
    path: &Path,
    trusted: &[[u8; 32]],
) -> Result<(Header, table::BlockTable, [u8; 32]), ProduceError> {
    let index_err = |source| ProduceError::Index {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(|source| ProduceError::Open {
        path: path.to_owned(),
        source,
    })?;
    // A regular file's length says how many entries are there: room is
    // made for them at once, and a cut file is refused before any is read.
    let file_len = file
        .metadata()
        .ok()
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.len());
    let mut reader = IndexReader::new(BufReader::with_capacity(1 << 16, file), &Limits::default())
        .map_err(index_err)?;
    let header = reader.header().clone();
    let blocks = header.block_count();
    let least = (HEADER_LEN + TRAILER_LEN) as u64 + blocks.saturating_mul(ENTRY_LEN as u64);
    let expect = match file_len {
        Some(len) if len < least => {
            return Err(index_err(IndexError::Truncated { section: "entries" }))
        }
        Some(_) => blocks,
        None => 0,
    };
    let table = table::BlockTable::read(&mut reader, expect).map_err(index_err)?;
    let verified = reader.finish().map_err(index_err)?;
    if !trusted.is_empty() && !trusted.iter().any(|k| verified.signed_by(k)) {
        return Err(ProduceError::IndexUntrusted {
            path: path.to_owned(),
            signed: !verified.signers.is_empty(),
        });
    }
    Ok((header, table, verified.content_hash))
}
