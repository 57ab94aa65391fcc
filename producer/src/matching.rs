//! Phase 3: find changed new blocks elsewhere in the old file.
//!
//! Each full changed block's xxh3 is looked up in the [`OldIndex`]; a hit is
//! read back from both files and compared, so a hash collision can never
//! corrupt a patch. Verified blocks become [`Class::Moved`].

use crate::exec::map_indexed;
use crate::index::OldIndex;
use crate::input::Job;
use crate::spans::{push_run, Class, Run};
use crate::{Phase, ProduceError, Progress};

/// Changed blocks per work item.
const BATCH: usize = 1024;

/// Returns `runs` with the changed blocks that were found in the old file
/// turned into `Moved` runs. `changed` lists `(block, xxh3)` of the full
/// changed blocks in block order.
pub(crate) fn find_moves(
    job: Job<'_>,
    index: &OldIndex,
    runs: Vec<Run>,
    changed: &[(u64, u64)],
) -> Result<Vec<Run>, ProduceError> {
    let Job {
        old,
        new,
        block_size,
        threads,
        progress,
    } = job;
    let bs = block_size as usize;
    let batches = changed.len().div_ceil(BATCH);
    let total = changed.len() as u64;
    let tick = |done: u64| {
        progress(Progress {
            phase: Phase::Match,
            done: (done * BATCH as u64).min(total),
            total,
        })
    };
    let found = map_indexed(
        threads,
        batches,
        || (vec![0u8; bs], vec![0u8; bs]),
        |(new_buf, old_buf): &mut (Vec<u8>, Vec<u8>), i| {
            let mut moves = Vec::new();
            for &(block, hash) in &changed[i * BATCH..((i + 1) * BATCH).min(changed.len())] {
                let Some(src) = index.lookup(hash) else {
                    continue;
                };
                let dst = block * block_size as u64;
                new.read_exact_at(new_buf, dst)?;
                old.read_exact_at(old_buf, src)?;
                if new_buf == old_buf {
                    // Offsets are below 2^63 (file sizes are i64 in Unix).
                    moves.push((block, src as i64 - dst as i64));
                }
            }
            Ok(moves)
        },
        &tick,
    )?;
    let mut moves = found.into_iter().flatten().peekable();
    if moves.peek().is_none() {
        return Ok(runs);
    }

    let mut out = Vec::with_capacity(runs.len());
    let mut block = 0u64;
    for run in runs {
        let end = block + run.blocks;
        if let Class::Changed(_) = run.class {
            while let Some(&(b, delta)) = moves.peek() {
                if b >= end {
                    break;
                }
                push_run(&mut out, Class::Changed(0), b - block);
                push_run(&mut out, Class::Moved(delta), 1);
                block = b + 1;
                moves.next();
            }
        }
        push_run(&mut out, run.class, end - block);
        block = end;
    }
    Ok(out)
}
