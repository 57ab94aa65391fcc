//! What the receiver finds in its own image for a leaf that differs
//! (spec/SYNC.md section 6): for each 4 KiB block of the new leaf, an old
//! offset whose bytes have the block's keys, or nothing (the block is
//! wanted from the sender).
//!
//! Found, in order: the old block at the same offset; an old block of a
//! leaf looked at before (moved data); a block-sized window anywhere in
//! the old leaf and its two neighbours, keyed by the rolling Adler-32 and
//! confirmed by XXH3-128 (data shifted by any number of bytes). A found
//! block is not yet trusted: the leaf it goes into is checked against the
//! sender's BLAKE3 value before any of it is written.

use std::collections::HashMap;
use std::io;

use anypatch_index::block::{strong, weak};

use crate::tree::{leaf_range, LEAF};
use crate::wire::{BlockKey, BLOCK};

/// Where the receiver reads its old image.
pub trait OldImage {
    /// Its length in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`, all of it.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl OldImage for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let at = usize::try_from(offset).ok();
        let src = at.and_then(|a| self.get(a..a.checked_add(buf.len())?));
        buf.copy_from_slice(src.ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?);
        Ok(())
    }
}

impl OldImage for std::fs::File {
    fn size(&self) -> u64 {
        self.metadata().map_or(0, |m| m.len())
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

/// Where one block of a new leaf comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The old image's bytes from this offset.
    Old(u64),
    /// The sender's.
    Want,
}

/// The receiver's matcher over one sync.
#[derive(Debug)]
pub struct Matcher {
    seed: u64,
    /// Old sources below this offset are not used: in place, the leaves
    /// before it are already rewritten.
    min_source: u64,
    /// Full old blocks looked at so far, by strong hash.
    seen: HashMap<[u8; 16], u64>,
    /// The weak keys of every block-sized window starting in the last few
    /// old leaves searched: a leaf's window overlaps its neighbours', and
    /// differing leaves come in runs, so each old byte is rolled over once
    /// rather than three times.
    /// (leaf, first offset in it keyed, keys by offset in the leaf).
    weak_keys: std::collections::VecDeque<(u64, usize, Vec<u32>)>,
    /// Wide searches in a row that found nothing.
    wide_misses: u32,
    /// Wide searches skipped since the last one done.
    wide_skipped: u32,
    /// Old positions tested against a leaf's pending keys, for the summary.
    tested: u64,
}

/// Wide searches that may find nothing in a row before they are thinned.
const FREE_MISSES: u32 = 4;

/// At most this many wide searches are skipped between two done: a shift
/// that starts after a long run of fresh data is found at most this many
/// differing leaves late (1 MiB of new image sent that could be copied).
const MAX_SKIP: u32 = 16;

/// Old leaves whose weak keys are kept (256 KiB each).
const WEAK_LEAVES: usize = 4;

/// Adler-32's modulus (spec/INDEX.md section 3.2).
const MOD: u32 = 65521;

/// How many old blocks [`Matcher`] remembers for moved data: 256 MiB of
/// differing old image, in a table of about 3 MiB.
const MAX_SEEN: usize = 1 << 16;

impl Matcher {
    /// A matcher for keys made with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            min_source: 0,
            seen: HashMap::new(),
            weak_keys: std::collections::VecDeque::new(),
            wide_misses: 0,
            wide_skipped: 0,
            tested: 0,
        }
    }

    /// How many old positions the rolling search has tested so far (one
    /// per position and leaf whose search covered it).
    pub fn positions_tested(&self) -> u64 {
        self.tested
    }

    /// From now on, no source below `offset` (in place: what the writer
    /// has already rewritten, less what it still holds in memory).
    pub fn forbid_below(&mut self, offset: u64) {
        self.min_source = self.min_source.max(offset);
    }

    /// The source of each block of leaf `leaf` of a new image of `new_len`
    /// bytes, whose keys are `keys` (one per block of the leaf).
    pub fn plan(
        &mut self,
        old: &(impl OldImage + ?Sized),
        new_len: u64,
        leaf: u64,
        keys: &[BlockKey],
    ) -> io::Result<Vec<Source>> {
        let range = leaf_range(new_len, leaf);
        let blocks = (range.end - range.start).div_ceil(BLOCK);
        if keys.len() as u64 != blocks || blocks == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the sender sent {} block keys for leaf {leaf}, which has {blocks} blocks",
                    keys.len()
                ),
            ));
        }
        let leaf_at = range.start;
        let old_len = old.size();
        // The old leaf and its neighbours, as far as they may be read.
        let start = leaf_at
            .saturating_sub(LEAF)
            .max(self.min_source)
            .min(old_len);
        let end = leaf_at.saturating_add(2 * LEAF).min(old_len);
        let mut window = vec![0; (end.max(start) - start) as usize];
        old.read_at(&mut window, start)?;
        let old_block = |at: u64, len: u64| -> Option<&[u8]> {
            let from = at.checked_sub(start)? as usize;
            window.get(from..from + len as usize)
        };

        let block_len = |i: usize| (new_len - leaf_at - i as u64 * BLOCK).min(BLOCK);
        let mut sources = vec![Source::Want; keys.len()];
        let mut aligned = vec![false; keys.len()];
        for (i, key) in keys.iter().enumerate() {
            let at = leaf_at + i as u64 * BLOCK;
            let len = block_len(i);
            if old_block(at, len).is_some_and(|b| strong(b, self.seed) == key.strong) {
                sources[i] = Source::Old(at);
                aligned[i] = true;
            } else if let Some(&o) = self
                .seen
                .get(&key.strong)
                .filter(|&&o| o >= self.min_source)
            {
                sources[i] = Source::Old(o);
            }
        }
        self.remember(&window, start);
        if window.len() as u64 >= BLOCK {
            let mut regions = search_regions(&sources, &aligned, leaf_at, start, window.len());
            let wide = regions.iter().any(|r| r.wide);
            if wide && !self.wide_search_now() {
                regions.retain(|r| !r.wide);
            }
            let before = sources.iter().filter(|s| **s != Source::Want).count();
            let mut pending: HashMap<u32, Vec<usize>> = HashMap::new();
            for (i, key) in keys.iter().enumerate() {
                let searchable = regions.iter().any(|r| r.blocks.contains(&i));
                if sources[i] == Source::Want && block_len(i) == BLOCK && searchable {
                    pending.entry(key.weak).or_default().push(i);
                }
            }
            for r in &regions {
                if pending.is_empty() {
                    break;
                }
                self.search(
                    &window,
                    start,
                    r.bytes.clone(),
                    keys,
                    &mut pending,
                    &mut sources,
                );
            }
            if regions.iter().any(|r| r.wide) {
                let found = sources.iter().filter(|s| **s != Source::Want).count() > before;
                self.wide_misses = if found { 0 } else { self.wide_misses + 1 };
                self.wide_skipped = 0;
            }
        }
        Ok(sources)
    }

    /// Whether to do this leaf's wide search (a run of blocks at an edge
    /// of the leaf, searched against the old leaf and its neighbour: 128 to
    /// 192 KiB of positions). Fresh data (a file system's new files) fills
    /// whole leaves that such a search rolls over for nothing: on the
    /// VM-upgrade pair 1.15 G positions found 45 blocks, two thirds of the
    /// receiver's CPU. Once [`FREE_MISSES`] in a row found nothing, only
    /// one in 2, 4, ... up to [`MAX_SKIP`] + 1 is done; one that finds
    /// something makes every next one count again.
    fn wide_search_now(&mut self) -> bool {
        let skip = match self.wide_misses.checked_sub(FREE_MISSES) {
            None => 0,
            Some(n) => (1u32 << n.min(8)).min(MAX_SKIP),
        };
        if self.wide_skipped >= skip {
            return true;
        }
        self.wide_skipped += 1;
        false
    }

    /// Keys every block-sized window of `window[within]` (`window` is old
    /// bytes from `start`) and takes the first whose strong hash confirms a
    /// pending block.
    fn search(
        &mut self,
        window: &[u8],
        start: u64,
        within: std::ops::Range<usize>,
        keys: &[BlockKey],
        pending: &mut HashMap<u32, Vec<usize>>,
        sources: &mut [Source],
    ) {
        let b = BLOCK as usize;
        if within.len() < b {
            return;
        }
        // Most positions match no pending key: a 64 Kibit filter answers
        // those without hashing the key (a leaf has at most 16 pending).
        let mut filter = vec![0u64; 1 << 10];
        let slot = |v: u32| ((v ^ (v >> 16)) & 0xFFFF) as usize;
        for &v in pending.keys() {
            filter[slot(v) >> 6] |= 1 << (slot(v) & 63);
        }
        // Positions, old leaf by old leaf: each leaf's keys are computed
        // once and kept for the next leaves' searches.
        let last = within.end - b;
        let seed = self.seed;
        let mut p = within.start;
        while p <= last {
            let abs = start + p as u64;
            let leaf = abs / LEAF;
            let seg_end = (((leaf + 1) * LEAF - start) as usize - 1).min(last);
            self.tested += (seg_end - p + 1) as u64;
            let Some(weak_keys) = self.weak_keys_of(leaf, window, start) else {
                return;
            };
            let from = (abs - leaf * LEAF) as usize;
            for (i, &v) in weak_keys[from..=from + (seg_end - p)].iter().enumerate() {
                if filter[slot(v) >> 6] & (1 << (slot(v) & 63)) == 0 {
                    continue;
                }
                let Some(waiting) = pending.get_mut(&v) else {
                    continue;
                };
                let at = p + i;
                let hash = strong(&window[at..at + b], seed);
                waiting.retain(|&k| {
                    let hit = keys[k].strong == hash;
                    if hit {
                        sources[k] = Source::Old(start + at as u64);
                    }
                    !hit
                });
                if waiting.is_empty() {
                    pending.remove(&v);
                    if pending.is_empty() {
                        return;
                    }
                }
            }
            p = seg_end + 1;
        }
    }

    /// The weak keys of the block-sized windows that start in old leaf
    /// `leaf` and end inside `window` (old bytes from `start`), kept for
    /// the next searches. A window is never read twice: the last
    /// [`WEAK_LEAVES`] leaves' keys are kept, and a leaf the writer may
    /// have rewritten since is below the matcher's `min_source`, so never
    /// searched again.
    fn weak_keys_of(&mut self, leaf: u64, window: &[u8], start: u64) -> Option<&[u32]> {
        let b = BLOCK as usize;
        let lo = (leaf * LEAF).max(start);
        let from = (lo - start) as usize;
        // Windows that start in the leaf and end in the window.
        let to = (((leaf + 1) * LEAF).saturating_sub(start) as usize)
            .min(window.len().checked_sub(b)? + 1);
        if from >= to {
            return None;
        }
        let offset = (lo - leaf * LEAF) as usize;
        let need = offset + (to - from);
        // A leaf first seen from its middle (the window's start) is keyed
        // from there; one seen to where a window ended, up to there, and
        // extended when a later window reaches further.
        let kept = self
            .weak_keys
            .iter()
            .position(|(l, valid, k)| *l == leaf && *valid <= offset && k.len() >= offset);
        let at = match kept {
            Some(i) => i,
            None => {
                if let Some(i) = self.weak_keys.iter().position(|(l, ..)| *l == leaf) {
                    self.weak_keys.remove(i);
                }
                if self.weak_keys.len() == WEAK_LEAVES {
                    self.weak_keys.pop_front();
                }
                self.weak_keys.push_back((leaf, offset, vec![0; offset]));
                self.weak_keys.len() - 1
            }
        };
        let keys = &mut self.weak_keys[at].2;
        if keys.len() < need {
            // Adler-32 rolled on from the first window not keyed, with a
            // table for the byte that leaves.
            let first = (leaf * LEAF + keys.len() as u64 - start) as usize;
            let sub: Vec<u32> = (0..256u32)
                .map(|out| ((b as u32 % MOD) * out + 1) % MOD)
                .collect();
            let v = weak(&window[first..first + b]);
            let (mut a, mut bb) = (v & 0xFFFF, v >> 16);
            keys.reserve(to - first);
            keys.push(v);
            for q in first + 1..to {
                let (out, inp) = (u32::from(window[q - 1]), u32::from(window[q - 1 + b]));
                a += MOD - out + inp;
                a -= if a >= MOD { MOD } else { 0 };
                a -= if a >= MOD { MOD } else { 0 };
                bb += a + MOD - sub[out as usize];
                bb -= if bb >= MOD { MOD } else { 0 };
                bb -= if bb >= MOD { MOD } else { 0 };
                keys.push(bb << 16 | a);
            }
        }
        Some(&self.weak_keys[at].2)
    }

    /// Remembers the full, block-aligned old blocks of `window` for moved
    /// data, up to [`MAX_SEEN`] of them.
    fn remember(&mut self, window: &[u8], start: u64) {
        let first = start.div_ceil(BLOCK) * BLOCK;
        let mut at = first;
        while at + BLOCK <= start + window.len() as u64 && self.seen.len() < MAX_SEEN {
            let from = (at - start) as usize;
            self.seen
                .entry(strong(&window[from..from + BLOCK as usize], self.seed))
                .or_insert(at);
            at += BLOCK;
        }
    }
}

/// Where in a leaf shifted data can be, and the old bytes to search for it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Region {
    /// Blocks of the leaf that may be old data shifted.
    blocks: std::ops::Range<usize>,
    /// The old bytes that may hold them, as offsets into the window.
    bytes: std::ops::Range<usize>,
    /// Not an edit inside the leaf: it reaches into a neighbour.
    wide: bool,
}

/// The runs of blocks not found that may hold shifted old data. A run
/// between two blocks found at their own offset is an edit that ended
/// where it began: only its inner blocks can be old bytes moved by the
/// edit (its first block holds the insertion, its last the deletion), and
/// they are within the run's own old bytes, a block either side. A run at
/// an edge of the leaf may continue a shift from the next leaf: all of it,
/// against the window up to that edge. Searching only there keeps a leaf
/// with a few rewritten blocks (most of a file system's changes) from
/// rolling over 192 KiB of old image for nothing.
fn search_regions(
    sources: &[Source],
    aligned: &[bool],
    leaf_at: u64,
    start: u64,
    window_len: usize,
) -> Vec<Region> {
    let b = BLOCK as usize;
    let mut out: Vec<Region> = Vec::new();
    let mut i = 0;
    while i < sources.len() {
        if sources[i] != Source::Want {
            i += 1;
            continue;
        }
        let first = i;
        while i < sources.len() && sources[i] == Source::Want {
            i += 1;
        }
        let end = i;
        let left_bordered = first > 0 && aligned[first - 1];
        let right_bordered = end < sources.len() && aligned[end];
        let blocks = match (left_bordered, right_bordered) {
            (true, true) => first + 1..end.saturating_sub(1).max(first + 1),
            _ => first..end,
        };
        if blocks.is_empty() {
            continue;
        }
        // Offsets into the window (which starts at old offset `start`).
        let rel = |block: usize| (leaf_at + (block * b) as u64).saturating_sub(start) as usize;
        let lo = if left_bordered {
            rel(first).saturating_sub(b)
        } else {
            0
        };
        let hi = if right_bordered {
            rel(end) + b
        } else {
            window_len
        };
        let bytes = lo.min(window_len)..hi.min(window_len);
        if bytes.len() < b {
            continue;
        }
        let wide = !(left_bordered && right_bordered);
        match out.last_mut() {
            Some(last) if last.bytes.end >= bytes.start => {
                last.bytes.end = last.bytes.end.max(bytes.end);
                last.blocks.end = blocks.end;
                last.wide |= wide;
            }
            _ => out.push(Region {
                blocks,
                bytes,
                wide,
            }),
        }
    }
    out
}
