//! The change map: what each extent does to its part of the new file
//! (copies it unchanged, moves it, produces it from data, or zeros it),
//! summed into a fixed number of buckets along the new file.
//!
//! One classification for every picture and count of it: the page's map
//! (wasm), `mkpatch inspect`'s counts and `mkpatch inspect --map`'s SVG.
//! Memory is the buckets, whatever the image size.

use alloc::vec;
use alloc::vec::Vec;

use anypatch_format::Extent;

/// Kind index: copied from the same offset of the old file (unchanged).
pub const UNCHANGED: usize = 0;
/// Kind index: copied from another offset of the old file (moved).
pub const MOVED: usize = 1;
/// Kind index: produced by a data segment (literal, delta or copy ops).
pub const DATA: usize = 2;
/// Kind index: zeros.
pub const ZERO: usize = 3;
/// Number of kinds.
pub const KINDS: usize = 4;
/// Most buckets a map may have (64 Ki buckets, 2 MiB of counters).
pub const MAX_BUCKETS: usize = 0x1_0000;

/// The kind index of an extent: [`UNCHANGED`], [`MOVED`], [`DATA`] or [`ZERO`].
pub fn kind_of(extent: &Extent) -> usize {
    match extent {
        Extent::Copy { delta: 0, .. } => UNCHANGED,
        Extent::Copy { .. } => MOVED,
        Extent::Zero { .. } => ZERO,
        Extent::Data(_) => DATA,
    }
}

/// Bytes of each kind per bucket of the new file. Bucket `b` covers new
/// offsets `ceil(b * new_len / n) .. ceil((b + 1) * new_len / n)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buckets {
    new_len: u64,
    bytes: Vec<[u64; KINDS]>,
    /// Bytes of each kind in the whole new file.
    pub totals: [u64; KINDS],
    /// Extents of each kind.
    pub counts: [u64; KINDS],
}

impl Buckets {
    /// `n` buckets (clamped to 1..=[`MAX_BUCKETS`]) over a new file of `new_len` bytes.
    pub fn new(n: usize, new_len: u64) -> Self {
        Self {
            new_len,
            bytes: vec![[0; KINDS]; n.clamp(1, MAX_BUCKETS)],
            totals: [0; KINDS],
            counts: [0; KINDS],
        }
    }

    fn start(&self, b: usize) -> u64 {
        let n = self.bytes.len() as u128;
        (b as u128 * u128::from(self.new_len)).div_ceil(n) as u64 // <= new_len
    }

    /// Counts `len` bytes of kind index `kind` (below [`KINDS`]) at new
    /// offset `at`; bytes past the new file's end are not put in a bucket.
    pub fn add(&mut self, at: u64, len: u64, kind: usize) {
        let kind = kind.min(KINDS - 1);
        self.totals[kind] = self.totals[kind].saturating_add(len);
        self.counts[kind] += 1;
        let end = at.saturating_add(len).min(self.new_len);
        if at >= end {
            return;
        }
        let n = self.bytes.len();
        let mut b = (u128::from(at) * n as u128 / u128::from(self.new_len)) as usize;
        while b < n && self.start(b) < end {
            let lo = self.start(b).max(at);
            let hi = self.start(b + 1).min(end);
            self.bytes[b][kind] += hi.saturating_sub(lo);
            b += 1;
        }
    }

    /// The bytes of each kind in every bucket, in order.
    pub fn cells(&self) -> &[[u64; KINDS]] {
        &self.bytes
    }

    /// The counters, bucket by bucket, `KINDS` per bucket.
    pub fn flat(&self) -> Vec<f64> {
        self.bytes
            .iter()
            .flat_map(|k| k.iter().map(|&v| v as f64))
            .collect()
    }

    /// The new file's length the buckets divide.
    pub fn new_len(&self) -> u64 {
        self.new_len
    }

    /// Number of buckets.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: there is at least one bucket.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_split_extents_exactly() {
        let mut b = Buckets::new(3, 10); // buckets 0..4, 4..7, 7..10
        b.add(0, 5, UNCHANGED);
        b.add(5, 5, DATA);
        let flat = b.flat();
        assert_eq!(flat[UNCHANGED], 4.0);
        assert_eq!(flat[KINDS + UNCHANGED], 1.0);
        assert_eq!(flat[KINDS + DATA], 2.0);
        assert_eq!(flat[2 * KINDS + DATA], 3.0);
        assert_eq!(b.totals, [5, 0, 5, 0]);
    }

    #[test]
    fn more_buckets_than_bytes() {
        let mut b = Buckets::new(8, 3);
        b.add(0, 3, ZERO);
        let sum: f64 = b.flat().iter().sum();
        assert_eq!(sum, 3.0);
    }
}
