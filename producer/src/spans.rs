//! Spans: the new file cut into runs of one class (same as old, zero,
//! moved, changed), by blocks ([`Run`]) and by bytes ([`Span`]). The scan
//! makes the runs; matching, shift matching and coalescing refine them;
//! the planner turns the spans into extents and segments.

/// What a new block is, relative to the old file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Equal to the old bytes at the same offset.
    Same,
    /// All zero (and not [`Class::Same`]).
    Zero,
    /// Equal to the old bytes at `offset + delta` (found by the matcher).
    Moved(i64),
    /// Anything else: goes into a data segment. The value is a hint for the
    /// encoder: the old bytes at `offset + hint` may be similar enough for a
    /// bytewise delta (0, the same offset, unless a shifted match says
    /// otherwise).
    Changed(i64),
}

/// `blocks` consecutive new blocks of one class. Runs tile the new file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub class: Class,
    pub blocks: u64,
}

/// Appends `blocks` blocks of `class`, extending the last run when it matches.
pub(crate) fn push_run(runs: &mut Vec<Run>, class: Class, blocks: u64) {
    match runs.last_mut() {
        Some(last) if last.class == class => last.blocks += blocks,
        _ if blocks > 0 => runs.push(Run { class, blocks }),
        _ => {}
    }
}

/// `len` consecutive new bytes of one class: the byte-granular form of
/// [`Run`]s that the shift matcher refines. Spans tile the new file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub class: Class,
    pub len: u64,
}

/// Appends `len` bytes of `class`, extending the last span when it matches.
pub(crate) fn push_span(spans: &mut Vec<Span>, class: Class, len: u64) {
    match spans.last_mut() {
        Some(last) if last.class == class => last.len += len,
        _ if len > 0 => spans.push(Span { class, len }),
        _ => {}
    }
}

/// Turns `runs`, which tile `ceil(new_len / block_size)` blocks, into spans
/// that tile `new_len` bytes.
pub(crate) fn spans_of(runs: &[Run], new_len: u64, block_size: u32) -> Vec<Span> {
    let bs = u64::from(block_size);
    let mut spans = Vec::with_capacity(runs.len());
    let mut start = 0u64;
    for run in runs {
        let end = (start + run.blocks * bs).min(new_len);
        push_span(&mut spans, run.class, end - start);
        start = end;
    }
    spans
}
