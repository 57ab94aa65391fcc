//! Phase 2 of a patch from an index: one parallel pass over the new file.
//!
//! Each worker takes 1 MiB windows, reads them in 64 KiB pieces, feeds the
//! BLAKE3 tree, and classes every block: `Same` when its strong hash equals
//! the old block's at that offset, `Zero`, `Moved` when a full block's weak
//! key and strong hash name another old block, else `Changed`.

use anypatch_index::block;

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
}

/// Scans `new` on `threads` workers.
pub(crate) fn scan(
    new: &Input,
    table: &BlockTable,
    threads: usize,
    progress: &dyn Fn(Progress),
) -> Result<Scanned, ProduceError> {
    let windows = new.len.div_ceil(WINDOW) as usize;
    let results = map_indexed(
        threads,
        windows,
        Vec::new,
        |buf: &mut Vec<u8>, i| scan_window(new, table, i as u64, buf),
        &crate::scan::window_ticks(new.len, progress),
    )?;
    let mut values = Vec::with_capacity(windows);
    let mut runs = Vec::new();
    for (value, window_runs) in results {
        values.push(value);
        for run in window_runs {
            push_run(&mut runs, run.class, run.blocks);
        }
    }
    Ok(Scanned {
        new_hash: hashtree::root(new.len, &values),
        runs,
    })
}

fn scan_window(
    new: &Input,
    table: &BlockTable,
    index: u64,
    buf: &mut Vec<u8>,
) -> Result<(blake3::hazmat::ChainingValue, Vec<Run>), ProduceError> {
    let bs = table.block_size as usize;
    let start = index * WINDOW;
    let end = (start + WINDOW).min(new.len);
    let piece = PIECE.max(bs as u64);
    let mut hasher = hashtree::window_hasher(new.len, index);
    let mut runs = Vec::new();
    let mut at = start;
    while at < end {
        let n = new.read_clamped(buf, at, piece.min(end - at) as usize)?;
        let bytes = &buf[..n];
        hasher.update(bytes);
        let first = at / bs as u64;
        for (k, b) in bytes.chunks(bs).enumerate() {
            let k = first + k as u64;
            let class = classify(table, k, b);
            push_run(&mut runs, class, 1);
        }
        at += n as u64;
    }
    Ok((hashtree::window_value(new.len, &hasher), runs))
}

/// The class of new block `k`, whose bytes are `b`.
fn classify(table: &BlockTable, k: u64, b: &[u8]) -> Class {
    let bs = table.block_size as usize;
    let strong = (k < table.blocks()).then(|| block::strong(b, table.seed));
    if strong.is_some_and(|s| table.same_at(k, &s, b.len())) {
        return Class::Same;
    }
    if is_zero(b) {
        return Class::Zero;
    }
    if b.len() == bs {
        if let Some(src) = table.find(block::weak(b), b, None, 0) {
            // Offsets are below 2^63 (the index and the file system say so).
            return Class::Moved((src * bs as u64) as i64 - (k * bs as u64) as i64);
        }
    }
    Class::Changed(0)
}
