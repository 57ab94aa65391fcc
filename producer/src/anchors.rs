//! A sparse, content-defined index of the whole old file, for choosing
//! where each segment's old-byte history (codec `ZstdPrefix`) reads.
//!
//! A segment's prefix is one contiguous range of old bytes. Placed only by
//! the matches around the segment, it misses where the segment's new data
//! really came from when that is far away: an upgraded library written to
//! free space in a disk image, whose old version lies elsewhere. zstd's
//! long-distance matcher finds such data anywhere in the old file; this
//! index lets the encoder point the prefix at it.
//!
//! A gear hash (FastCDC's) rolls over every byte; a position whose hash has
//! its top [`Anchors::bits`] bits zero is an anchor, which depends only on
//! the [`WINDOW`] bytes that end there, never on where reading started. The
//! index keeps every old anchor's hash and position (16 bytes each), with
//! `bits` chosen so that there are about [`TARGET_ENTRIES`] at most (16 MiB
//! whatever the file's size; each 1 MiB chunk keeps at most twice its
//! expected share, so data made of anchors cannot grow it further). A segment hashes its literal bytes the same
//! way, looks its anchors up, and votes for the old range that holds most
//! of their matches ([`Anchors::best_window`]).

use crate::exec::map_indexed;
use crate::input::Input;
use crate::ProduceError;

/// Bytes a gear hash depends on: each byte's contribution is shifted out
/// after 64 steps.
pub(crate) const WINDOW: usize = 64;
/// About this many old anchors at most: 16 MiB of index.
const TARGET_ENTRIES: u64 = 1 << 20;
/// Fewest anchor bits: one anchor in 256 bytes on average, for small files.
const MIN_BITS: u32 = 8;
/// Old bytes per parallel work item while building.
const CHUNK: u64 = 1 << 20;
/// Keys with more old positions than this are repeated data (padding,
/// tables) that says nothing about where a segment came from.
const MAX_SAME_KEY: usize = 4;
/// A segment's literal bytes are looked up in stretches of SAMPLE_TAKE
/// bytes, one every SAMPLE_EVERY: on chromium's data.tar, hashing all of
/// them made the patch 0.5% smaller for about 8% more CPU.
const SAMPLE_EVERY: usize = 64 << 10;
const SAMPLE_TAKE: usize = 16 << 10;
/// Most old anchors kept per chunk, in multiples of the number expected
/// (`CHUNK >> bits`): data made to be all anchors cannot grow the index
/// past twice its usual size (32 MiB).
const CHUNK_CAP_FACTOR: usize = 2;
/// Most matches one segment collects: far more than real data gives
/// (about a thousand), and 1 MiB of them.
const MAX_HITS: usize = 1 << 16;

/// Per-byte random values of the gear hash (splitmix64 of the byte).
const GEAR: [u64; 256] = gear_table();

const fn gear_table() -> [u64; 256] {
    let mut t = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut z = (i as u64)
            .wrapping_add(1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        t[i] = z ^ (z >> 31);
        i += 1;
    }
    t
}

/// Calls `found(start, key)` for every anchor whose [`WINDOW`]-byte window
/// lies in `bytes` and starts at or after `from`: `start` is the window's
/// offset in `bytes`. Windows of one repeated byte are skipped.
fn each_anchor(bytes: &[u8], from: usize, bits: u32, mut found: impl FnMut(usize, u64)) {
    if bytes.len() < WINDOW {
        return;
    }
    let mask = !(u64::MAX >> bits);
    let mut h = 0u64;
    for (i, &b) in bytes.iter().enumerate() {
        h = (h << 1).wrapping_add(GEAR[b as usize]);
        if h & mask == 0 && i + 1 >= WINDOW {
            let start = i + 1 - WINDOW;
            let w = &bytes[start..=i];
            if start >= from && w.iter().any(|&x| x != w[0]) {
                found(start, h);
            }
        }
    }
}

/// Sorts one chunk's anchors and keeps at most `cap` of them, and of a key
/// seen more than [`MAX_SAME_KEY`] times (never used, see `lookup`) one
/// more than that, which keeps it unused.
fn thin(out: &mut Vec<(u64, u64)>, cap: usize) {
    out.sort_unstable();
    let mut kept = 0;
    for i in 0..out.len() {
        if !(kept > MAX_SAME_KEY && out[kept - MAX_SAME_KEY - 1].0 == out[i].0) {
            out[kept] = out[i];
            kept += 1;
        }
    }
    out.truncate(kept.min(cap));
}

/// The old file's anchors, sorted by key then position.
#[derive(Debug)]
pub(crate) struct Anchors {
    /// `(key, old offset of the anchor's window)`.
    entries: Vec<(u64, u64)>,
    bits: u32,
    /// `dir[j]` is the first entry whose key's [`Anchors::slot`] is `j` or
    /// more: a lookup reads one or two entries, not a binary search's
    /// twenty cache lines.
    dir: Vec<u32>,
    dir_bits: u32,
}

impl Anchors {
    /// Reads the whole old file (in parallel, `threads` workers) and
    /// indexes its anchors.
    pub fn build(old: &Input, threads: usize) -> Result<Self, ProduceError> {
        let wanted = (old.len / TARGET_ENTRIES).max(1);
        let bits = (64 - (wanted - 1).leading_zeros()).max(MIN_BITS);
        let chunks = old.len.div_ceil(CHUNK) as usize;
        let found = map_indexed(
            threads,
            chunks,
            Vec::new,
            |buf: &mut Vec<u8>, i| {
                // From WINDOW - 1 bytes before the chunk: this chunk has the
                // anchors whose windows end in it.
                let start = i as u64 * CHUNK;
                let lo = start.saturating_sub(WINDOW as u64 - 1);
                let n = old.read_clamped(buf, lo, (start + CHUNK - lo) as usize)?;
                let cap = CHUNK_CAP_FACTOR * (CHUNK >> bits) as usize;
                let mut out = Vec::new();
                each_anchor(&buf[..n], 0, bits, |at, key| {
                    if out.len() < 4 * cap {
                        out.push((key, lo + at as u64));
                    }
                });
                thin(&mut out, cap);
                Ok(out)
            },
            &|_| {},
        )?;
        let mut entries: Vec<(u64, u64)> = found.into_iter().flatten().collect();
        entries.sort_unstable();
        let dir_bits = (usize::BITS - entries.len().leading_zeros())
            .saturating_sub(1)
            .clamp(1, 22);
        let mut index = Self {
            entries,
            bits,
            dir: Vec::new(),
            dir_bits,
        };
        let mut dir = vec![0u32; (1 << dir_bits) + 1];
        let mut i = 0usize;
        for (j, d) in dir.iter_mut().enumerate() {
            while i < index.entries.len() && index.slot(index.entries[i].0) < j {
                i += 1;
            }
            *d = i as u32;
        }
        index.dir = dir;
        Ok(index)
    }

    /// The directory slot of `key`: its top bits below the anchor bits
    /// (which are zero in every key).
    fn slot(&self, key: u64) -> usize {
        ((key << self.bits) >> (64 - self.dir_bits)) as usize
    }

    /// The old offsets of the anchors in `new` (bytes of a segment) whose
    /// windows start inside one of `ranges` (offsets in `new`), as
    /// `(old offset, offset in new)`, skipping keys found too often in the
    /// old file.
    pub fn matches(&self, new: &[u8], ranges: &[(usize, usize)], out: &mut Vec<(u64, usize)>) {
        out.clear();
        for &(lo, hi) in ranges {
            // Only the first SAMPLE_TAKE bytes of every SAMPLE_EVERY: enough
            // votes to place a prefix, at a quarter of the hashing.
            let mut s = lo / SAMPLE_EVERY * SAMPLE_EVERY;
            while s < hi {
                let (a, b) = (s.max(lo), (s + SAMPLE_TAKE).min(hi));
                if a < b {
                    self.lookup(new, a, b, out);
                }
                s += SAMPLE_EVERY;
            }
        }
    }

    /// [`Anchors::matches`] for the windows that start in `lo..hi`.
    fn lookup(&self, new: &[u8], lo: usize, hi: usize, out: &mut Vec<(u64, usize)>) {
        let from = lo.saturating_sub(WINDOW - 1);
        let end = (hi + WINDOW - 1).min(new.len());
        each_anchor(&new[from..end], lo - from, self.bits, |at, key| {
            if from + at >= hi || out.len() >= MAX_HITS {
                return;
            }
            let slot = self.slot(key);
            let (a, b) = (self.dir[slot] as usize, self.dir[slot + 1] as usize);
            let run = &self.entries[a..b];
            let i = a + run.partition_point(|e| e.0 < key);
            let same = self.entries[i..b].iter().take_while(|e| e.0 == key);
            if same.clone().nth(MAX_SAME_KEY).is_none() {
                out.extend(same.map(|e| (e.1, from + at)));
            }
        });
    }

    /// The start of the `len`-byte old range holding the most anchors of
    /// `hits` (old offsets, sorted), centred on them, inside `0..old_len`,
    /// and how many it holds. `None` without hits.
    pub fn best_window(hits: &[u64], len: u64, old_len: u64) -> Option<(u64, usize)> {
        let (mut best, mut best_n) = (0usize, 0usize);
        let mut j = 0;
        for i in 0..hits.len() {
            while j < hits.len() && hits[j] < hits[i] + len {
                j += 1;
            }
            if j - i > best_n {
                (best, best_n) = (i, j - i);
            }
        }
        if best_n == 0 {
            return None;
        }
        let span = hits[best + best_n - 1] - hits[best] + WINDOW as u64;
        let lo = hits[best].saturating_sub(len.saturating_sub(span) / 2);
        Some((lo.min(old_len.saturating_sub(len)), best_n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn anchors_depend_only_on_their_window() {
        let bytes = noise(1 << 16, 7);
        let mut whole = Vec::new();
        each_anchor(&bytes, 0, 8, |at, key| whole.push((at, key)));
        assert!(whole.len() > 100, "about one anchor in 256 bytes");
        // The same anchors from a slice that starts elsewhere, shifted.
        let mut part = Vec::new();
        each_anchor(&bytes[1000..], 0, 8, |at, key| part.push((at + 1000, key)));
        let tail: Vec<_> = whole
            .iter()
            .filter(|(at, _)| *at >= 1000)
            .copied()
            .collect();
        assert_eq!(part, tail);
    }

    #[test]
    fn chunks_keep_few_of_a_common_key_and_at_most_their_cap() {
        let mut out: Vec<(u64, u64)> = (0..100).map(|i| (7, i)).collect();
        out.push((3, 1));
        thin(&mut out, 1000);
        assert_eq!(out.len(), 1 + MAX_SAME_KEY + 1);
        assert_eq!(out[0], (3, 1));
        let mut out: Vec<(u64, u64)> = (0..100).map(|i| (i, i)).collect();
        thin(&mut out, 10);
        assert_eq!(out, (0..10).map(|i| (i, i)).collect::<Vec<_>>());
    }

    #[test]
    fn best_window_holds_most_hits() {
        let hits = [10, 5000, 5100, 5200, 90_000];
        assert_eq!(Anchors::best_window(&hits, 1000, 100_000), Some((4632, 3)));
        assert_eq!(Anchors::best_window(&[], 1000, 100_000), None);
        // Clamped so that the range stays inside the old file.
        assert_eq!(
            Anchors::best_window(&[99_990], 1000, 100_000),
            Some((99_000, 1))
        );
    }
}
