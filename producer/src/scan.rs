//! Phase 1: one parallel pass over both files.
//!
//! Each worker takes 1 MiB windows, reads the old and new window with `pread`
//! into its own buffers, and computes: both windows' BLAKE3 tree values, the
//! xxh3 of every full non-zero old block (for the index), the rolling hash of
//! one [`rolling::KEY_LEN`]-byte window of each such block (for the shift
//! index), and a class for every new block. Results are kept per window and
//! joined in window order.
//!
//! Windows are hashed by pieces (module `pieces`). With what the hash cache
//! knows about the old file ([`Known`], module `cached`), the old file's
//! hash and index entries come from there, and a piece whose new value
//! equals the old piece's cached value is unchanged without reading the
//! old bytes; other pieces are read and compared byte for byte as without
//! a cache, and an old piece read that does not hash to its cached value
//! ends the scan with [`Fail::Stale`].

use blake3::hazmat::ChainingValue;
use xxhash_rust::xxh3::xxh3_64;

use crate::cached::Known;
use crate::exec::map_indexed;
use crate::hashtree;
pub(crate) use crate::hashtree::WINDOW;
use crate::input::{Input, Job};
use crate::pieces;
use crate::rolling;
use crate::spans::{push_run, Class, Run};
use crate::zeros::is_zero;
use crate::{Phase, ProduceError, Progress};

/// What the scan found.
#[derive(Debug)]
pub(crate) struct Scanned {
    pub old_hash: [u8; 32],
    pub new_hash: [u8; 32],
    /// `(xxh3, offset)` of every full, non-zero old block, unsorted.
    pub index_entries: Vec<(u64, u64)>,
    /// Classes of all new blocks; only `Same`, `Zero` and `Changed` so far.
    pub runs: Vec<Run>,
    /// `(block number, xxh3)` of every full `Changed` new block, in order.
    pub changed: Vec<(u64, u64)>,
    /// [`rolling::entry`]s of the full non-zero old blocks, unsorted.
    pub shift_entries: Vec<u64>,
    /// The values of the old file's pieces, when asked for and computed
    /// (not when they came from the cache).
    pub old_pieces: Vec<ChainingValue>,
}

/// Why a scan stopped.
#[derive(Debug)]
pub(crate) enum Fail {
    Produce(ProduceError),
    /// Old bytes read did not hash to their cached piece value: the cache
    /// entry is not this file's. Scan again without it.
    Stale,
}

impl From<ProduceError> for Fail {
    fn from(e: ProduceError) -> Self {
        Fail::Produce(e)
    }
}

#[derive(Debug, Default)]
struct WindowScan {
    old_value: Option<ChainingValue>,
    new_value: Option<ChainingValue>,
    index: Vec<(u64, u64)>,
    shift: Vec<u64>,
    runs: Vec<Run>,
    changed: Vec<(u64, u64)>,
    old_pieces: Vec<ChainingValue>,
}

/// Scans both files on `threads` workers; `keep_pieces` keeps the old
/// pieces' values (for the cache).
pub(crate) fn scan(job: Job<'_>, keep_pieces: bool) -> Result<Scanned, ProduceError> {
    scan_with(job, None, keep_pieces).map_err(|f| match f {
        Fail::Produce(e) => e,
        // Only an old piece read against its cached value is ever stale.
        Fail::Stale => unreachable!("a scan without a cache entry found it stale"),
    })
}

/// [`scan`], and with `known` the old file's hash and index come from it,
/// and only old pieces that differ from the new ones are read.
pub(crate) fn scan_with(
    job: Job<'_>,
    known: Option<Known>,
    keep_pieces: bool,
) -> Result<Scanned, Fail> {
    let Job {
        old,
        new,
        block_size,
        threads,
        progress,
    } = job;
    let total = old.len.max(new.len);
    let windows = total.div_ceil(WINDOW) as usize;
    let results = map_indexed(
        threads,
        windows,
        || (Vec::new(), Vec::new()),
        |(old_buf, new_buf): &mut (Vec<u8>, Vec<u8>), i| {
            let at = Window {
                bs: block_size as usize,
                index: i as u64,
                known: known.as_ref(),
                keep_pieces,
            };
            scan_window(old, new, at, old_buf, new_buf)
        },
        &window_ticks(total, progress),
    )?;

    let mut old_values = Vec::with_capacity(windows);
    let mut new_values = Vec::with_capacity(windows);
    let mut scanned = Scanned {
        old_hash: [0; 32],
        new_hash: [0; 32],
        index_entries: Vec::with_capacity(results.iter().map(|w| w.index.len()).sum()),
        runs: Vec::new(),
        changed: Vec::with_capacity(results.iter().map(|w| w.changed.len()).sum()),
        shift_entries: Vec::with_capacity(results.iter().map(|w| w.shift.len()).sum()),
        old_pieces: Vec::with_capacity(results.iter().map(|w| w.old_pieces.len()).sum()),
    };
    for w in results {
        old_values.extend(w.old_value);
        new_values.extend(w.new_value);
        scanned.index_entries.extend_from_slice(&w.index);
        for run in w.runs {
            push_run(&mut scanned.runs, run.class, run.blocks);
        }
        scanned.changed.extend_from_slice(&w.changed);
        scanned.shift_entries.extend_from_slice(&w.shift);
        scanned.old_pieces.extend_from_slice(&w.old_pieces);
    }
    scanned.new_hash = hashtree::root(new.len, &new_values);
    match known {
        Some(known) => {
            scanned.old_hash = known.old_hash;
            scanned.index_entries = known.index_entries;
            scanned.shift_entries = known.shift_entries;
        }
        None => scanned.old_hash = hashtree::root(old.len, &old_values),
    }
    Ok(scanned)
}

/// Progress of a pass over `total` bytes in [`WINDOW`]s, as
/// [`map_indexed`]'s `tick` (which counts the windows done).
pub(crate) fn window_ticks(total: u64, progress: &dyn Fn(Progress)) -> impl Fn(u64) + '_ {
    move |done| {
        progress(Progress {
            phase: Phase::Scan,
            done: (done * WINDOW).min(total),
            total,
        })
    }
}

/// Which window to scan, and how.
#[derive(Clone, Copy)]
struct Window<'a> {
    bs: usize,
    index: u64,
    known: Option<&'a Known>,
    keep_pieces: bool,
}

fn scan_window(
    old: &Input,
    new: &Input,
    at: Window<'_>,
    old_buf: &mut Vec<u8>,
    new_buf: &mut Vec<u8>,
) -> Result<WindowScan, Fail> {
    let Window {
        bs,
        index,
        known,
        keep_pieces,
    } = at;
    let start = index * WINDOW;
    let end = (start + WINDOW).min(old.len.max(new.len));
    // A multiple of the block size, so blocks never straddle pieces.
    let piece = pieces::piece_len(bs as u32);
    let (mut old_values, mut new_values) = (Vec::new(), Vec::new());
    let mut w = WindowScan::default();
    let mut at = start;
    while at < end {
        let want = piece.min(end - at) as usize;
        let new_n = new.read_clamped(new_buf, at, want)?;
        let new_bytes = &new_buf[..new_n];
        let new_value = (new_n > 0).then(|| pieces::piece_value(new.len, piece, at, new_bytes));
        new_values.extend(new_value);
        let Some(known) = known else {
            let old_n = old.read_clamped(old_buf, at, want)?;
            let old_bytes = &old_buf[..old_n];
            if old_n > 0 {
                old_values.push(pieces::piece_value(old.len, piece, at, old_bytes));
            }
            index_piece(&mut w, at, bs, old_bytes);
            classify_piece(&mut w, at, bs, old_bytes, new_bytes);
            at += want as u64;
            continue;
        };
        let cached = known.pieces.get((at / piece) as usize);
        let old_n = old.len.saturating_sub(at).min(want as u64) as usize;
        // Values are comparable only as chaining values, in files longer
        // than a piece (the cache is used only for such old files).
        if new.len > piece && new_n == old_n && cached.is_some() && cached == new_value.as_ref() {
            push_run(&mut w.runs, Class::Same, new_n.div_ceil(bs) as u64);
        } else {
            let old_n = old.read_clamped(old_buf, at, want)?;
            let old_bytes = &old_buf[..old_n];
            if old_n > 0 && cached != Some(&pieces::piece_value(old.len, piece, at, old_bytes)) {
                return Err(Fail::Stale);
            }
            classify_piece(&mut w, at, bs, old_bytes, new_bytes);
        }
        at += want as u64;
    }
    if start < old.len && known.is_none() {
        w.old_value = Some(pieces::window_value(old.len, piece, start, &old_values));
    }
    if start < new.len {
        w.new_value = Some(pieces::window_value(new.len, piece, start, &new_values));
    }
    if keep_pieces {
        w.old_pieces = old_values;
    }
    Ok(w)
}

/// Indexes the full non-zero old blocks of one piece starting at `start`,
/// a multiple of the block size.
fn index_piece(w: &mut WindowScan, start: u64, bs: usize, old_bytes: &[u8]) {
    let first_block = start / bs as u64;
    for (k, block) in old_bytes.chunks_exact(bs).enumerate() {
        if !is_zero(block) {
            w.index.push((xxh3_64(block), start + (k * bs) as u64));
            w.shift
                .extend(rolling::entry(block, first_block + k as u64));
        }
    }
}

/// Classifies the new blocks of one piece against the old bytes at the
/// same offsets.
fn classify_piece(w: &mut WindowScan, start: u64, bs: usize, old_bytes: &[u8], new_bytes: &[u8]) {
    let first_block = start / bs as u64;
    for (k, block) in new_bytes.chunks(bs).enumerate() {
        let at = k * bs;
        let class = if old_bytes.get(at..at + block.len()) == Some(block) {
            Class::Same
        } else if is_zero(block) {
            Class::Zero
        } else {
            if block.len() == bs {
                w.changed.push((first_block + k as u64, xxh3_64(block)));
            }
            Class::Changed(0)
        };
        push_run(&mut w.runs, class, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_blocks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bs = 4096;
        let mut old = vec![7u8; 5 * bs + 100];
        old[bs..2 * bs].fill(1);
        let mut new = old.clone();
        new[bs..2 * bs].fill(0); // zero
        new[3 * bs + 5] = 9; // changed
        new.truncate(5 * bs + 50); // short last block, equal to old's range
        new.extend_from_slice(&[3; 10]); // ...now changed
        let (po, pn) = (dir.path().join("old"), dir.path().join("new"));
        std::fs::write(&po, &old).expect("write");
        std::fs::write(&pn, &new).expect("write");
        let (o, n) = (
            Input::open(&po).expect("open"),
            Input::open(&pn).expect("open"),
        );
        let s = scan(
            Job {
                old: &o,
                new: &n,
                block_size: bs as u32,
                threads: 2,
                progress: &|_| {},
            },
            false,
        )
        .expect("scan");
        let classes: Vec<_> = s.runs.iter().map(|r| (r.class, r.blocks)).collect();
        assert_eq!(
            classes,
            [
                (Class::Same, 1),
                (Class::Zero, 1),
                (Class::Same, 1),
                (Class::Changed(0), 1),
                (Class::Same, 1),
                (Class::Changed(0), 1),
            ]
        );
        assert_eq!(s.changed.len(), 1);
        assert_eq!(s.changed[0].0, 3);
        // Old blocks 0, 2, 3, 4 hold 7s and block 1 holds 1s: all indexed.
        assert_eq!(s.index_entries.len(), 5);
        assert_eq!(s.shift_entries.len(), 5);
        assert_eq!(s.old_hash, *blake3::hash(&old).as_bytes());
        assert_eq!(s.new_hash, *blake3::hash(&new).as_bytes());
    }
}
