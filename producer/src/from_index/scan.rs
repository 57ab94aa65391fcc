//! Phase 2 of a patch from an index: one parallel pass over the new file.
//!
//! Each worker takes 1 MiB windows, reads them in 64 KiB pieces, feeds the
//! BLAKE3 tree, and classes every block: `Same` when its strong hash equals
//! the old block's at that offset, `Zero`, `Moved` when a full block's weak
//! key and strong hash name another old block, else `Changed`.
//!
//! Asked to keep them, the scan also returns every new block's hashes and
//! whether it is zero ([`NewBlocks`]), for the hash cache (module
//! `new_cache`); from those, [`classify_known`] classes the blocks the same
//! way without reading the new file.

use anypatch_index::{block, BlockHashes, ENTRY_LEN};

use crate::exec::map_indexed;
use crate::hashtree::{self, WINDOW};
use crate::input::Input;
use crate::spans::{push_run, Class, Run};
use crate::zeros::is_zero;
use crate::{ProduceError, Progress};

use super::table::BlockTable;

/// Bytes read at a time within a window (see the producer's scan).
const PIECE: u64 = 64 << 10;

/// What the scan found.
#[derive(Debug)]
pub(crate) struct Scanned {
    pub new_hash: [u8; 32],
    /// Classes of all new blocks, in order.
    pub runs: Vec<Run>,
    /// Every new block's hashes, when asked for.
    pub blocks: Option<NewBlocks>,
}

/// What the scan computes about each new block, with the index's seed:
/// all it needs to class the block against any index with that seed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct NewBlocks {
    /// [`BlockHashes`] of every block, encoded, in order.
    pub hashes: Vec<u8>,
    /// Whether each block is all zeros.
    pub zero: Vec<bool>,
}

/// One window's result.
type WindowScan = (blake3::hazmat::ChainingValue, Vec<Run>, NewBlocks);

/// Scans `new` on `threads` workers; with `keep`, also returns every
/// block's hashes ([`Scanned::blocks`]).
pub(crate) fn scan(
    new: &Input,
    table: &BlockTable,
    threads: usize,
    keep: bool,
    progress: &dyn Fn(Progress),
) -> Result<Scanned, ProduceError> {
    let windows = new.len.div_ceil(WINDOW) as usize;
    let results = map_indexed(
        threads,
        windows,
        Vec::new,
        |buf: &mut Vec<u8>, i| scan_window(new, table, i as u64, keep, buf),
        &crate::scan::window_ticks(new.len, progress),
    )?;
    let mut values = Vec::with_capacity(windows);
    let mut runs = Vec::new();
    let mut blocks = keep.then(NewBlocks::default);
    for (value, window_runs, window_blocks) in results {
        values.push(value);
        for run in window_runs {
            push_run(&mut runs, run.class, run.blocks);
        }
        if let Some(b) = blocks.as_mut() {
            b.hashes.extend_from_slice(&window_blocks.hashes);
            b.zero.extend_from_slice(&window_blocks.zero);
        }
    }
    Ok(Scanned {
        new_hash: hashtree::root(new.len, &values),
        runs,
        blocks,
    })
}

fn scan_window(
    new: &Input,
    table: &BlockTable,
    index: u64,
    keep: bool,
    buf: &mut Vec<u8>,
) -> Result<WindowScan, ProduceError> {
    let bs = table.block_size as usize;
    let start = index * WINDOW;
    let end = (start + WINDOW).min(new.len);
    let piece = PIECE.max(bs as u64);
    let mut hasher = hashtree::window_hasher(new.len, index);
    let mut runs = Vec::new();
    let mut kept = NewBlocks::default();
    let mut at = start;
    while at < end {
        let n = new.read_clamped(buf, at, piece.min(end - at) as usize)?;
        let bytes = &buf[..n];
        hasher.update(bytes);
        let first = at / bs as u64;
        for (k, b) in bytes.chunks(bs).enumerate() {
            let k = first + k as u64;
            let class = if keep {
                let h = BlockHashes::of(b, table.seed);
                let zero = is_zero(b);
                kept.hashes.extend_from_slice(&h.emit());
                kept.zero.push(zero);
                classify(table, k, b.len(), || h.strong, || zero, || h.weak)
            } else {
                classify(
                    table,
                    k,
                    b.len(),
                    || block::strong(b, table.seed),
                    || is_zero(b),
                    || block::weak(b),
                )
            };
            push_run(&mut runs, class, 1);
        }
        at += n as u64;
    }
    Ok((hashtree::window_value(new.len, &hasher), runs, kept))
}

/// The classes of the blocks of a new file of `new_len` bytes from what an
/// earlier scan kept about them ([`NewBlocks`], as encoded hashes and zero
/// flags), without reading it: the same classes as [`scan`] gives.
pub(crate) fn classify_known(
    table: &BlockTable,
    new_len: u64,
    hashes: &[u8],
    zero: impl Fn(u64) -> bool,
) -> Vec<Run> {
    let bs = u64::from(table.block_size);
    let mut runs = Vec::new();
    for (k, e) in hashes.chunks_exact(ENTRY_LEN).enumerate() {
        let k = k as u64;
        let mut entry = [0u8; ENTRY_LEN];
        entry.copy_from_slice(e);
        let h = BlockHashes::parse(&entry);
        let len = new_len.saturating_sub(k * bs).min(bs) as usize;
        let class = classify(table, k, len, || h.strong, || zero(k), || h.weak);
        push_run(&mut runs, class, 1);
    }
    runs
}

/// The class of new block `k`, `len` bytes whose strong hash, zeroness
/// and weak key the closures give (each computed only when needed).
fn classify(
    table: &BlockTable,
    k: u64,
    len: usize,
    strong: impl Fn() -> [u8; 16],
    is_zero: impl FnOnce() -> bool,
    weak: impl FnOnce() -> u32,
) -> Class {
    let bs = table.block_size as usize;
    if k < table.blocks() && table.same_at(k, &strong(), len) {
        return Class::Same;
    }
    if is_zero() {
        return Class::Zero;
    }
    if len == bs {
        if let Some(src) = table.find_with(weak(), &strong, None, 0) {
            // Offsets are below 2^63 (the index and the file system say so).
            return Class::Moved((src * bs as u64) as i64 - (k * bs as u64) as i64);
        }
    }
    Class::Changed(0)
}
