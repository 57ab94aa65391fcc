//! The old blocks as the matcher needs them: strong hashes by block number,
//! and weak keys in buckets of a hash table (sorted by a mix of the key, with
//! where each bucket starts), behind a bitset so that most misses at a
//! rolling offset cost one bit test and a hit one bucket, not a search.

use std::io::Read;

use anypatch_index::{block, BlockHashes, IndexError, IndexReader};

/// The index's blocks, ready for lookups. 31 bytes per old block.
#[derive(Debug)]
pub(crate) struct BlockTable {
    pub block_size: u32,
    pub old_len: u64,
    pub seed: u64,
    /// Strong hash of block `i`.
    strong: Vec<[u8; 16]>,
    /// Weak key of block `i`.
    weak_of: Vec<u32>,
    /// `weak << 32 | block` of every full, non-zero block, sorted by
    /// `(mix(weak), block)`: equal keys are together, in block order.
    weak: Vec<u64>,
    /// `starts[k]..starts[k + 1]` are the entries of bucket `k`, the keys
    /// whose `mix >> bucket_shift` is `k`: about two per bucket.
    starts: Vec<u32>,
    bucket_shift: u32,
    /// One bit per `mix(weak) >> shift`, about 8 bits per entry.
    bits: Vec<u64>,
    shift: u32,
}

/// Spreads an Adler-32 key over all 32 bits (its sums cluster in real data).
fn mix(weak: u32) -> u32 {
    let h = u64::from(weak).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 32) as u32 ^ h as u32
}

impl BlockTable {
    /// Reads the entries of `reader`, making room for `expect` of them
    /// (a count the caller checked against the bytes there are; the
    /// vectors grow as entries arrive beyond it). Not to be used before
    /// the reader's `finish` succeeds.
    pub fn read<R: Read>(reader: &mut IndexReader<R>, expect: u64) -> Result<Self, IndexError> {
        let header = reader.header().clone();
        let n = header.block_count();
        if n > u64::from(u32::MAX) {
            return Err(IndexError::TooLarge {
                field: "block count",
                got: n,
                max: u64::from(u32::MAX),
            });
        }
        let bs = header.block_size;
        // Zero blocks are found as zeros, never as copies.
        let zero = BlockHashes::of(&vec![0u8; bs as usize], header.seed);
        let expect = expect.min(n) as usize;
        let mut weak = Vec::with_capacity(expect);
        let mut strong = Vec::with_capacity(expect);
        let mut weak_of = Vec::with_capacity(expect);
        let mut batch = Vec::new();
        let mut i = 0u64;
        while reader.read_entries(&mut batch)? > 0 {
            for e in batch.drain(..) {
                if header.block_len(i) == u64::from(bs) && e != zero {
                    weak.push(u64::from(e.weak) << 32 | i);
                }
                strong.push(e.strong);
                weak_of.push(e.weak);
                i += 1;
            }
        }
        weak.sort_unstable_by_key(|e| (mix((e >> 32) as u32), *e));
        weak.shrink_to_fit();
        let nbits = (weak.len() * 8).next_power_of_two().clamp(1 << 12, 1 << 31);
        let buckets = (weak.len() / 2).next_power_of_two().clamp(1 << 8, 1 << 31);
        let bucket_shift = 32 - buckets.trailing_zeros();
        let mut starts = Vec::with_capacity(buckets + 1);
        let mut bits = vec![0u64; nbits / 64];
        let shift = 32 - nbits.trailing_zeros();
        for (i, e) in weak.iter().enumerate() {
            let m = mix((e >> 32) as u32);
            let bit = (m >> shift) as usize;
            bits[bit / 64] |= 1 << (bit % 64);
            // Entries are in bucket order: open every bucket up to this one.
            let bucket = (m >> bucket_shift) as usize;
            while starts.len() <= bucket {
                starts.push(i as u32);
            }
        }
        while starts.len() <= buckets {
            starts.push(weak.len() as u32);
        }
        Ok(Self {
            block_size: bs,
            old_len: header.old_len,
            seed: header.seed,
            strong,
            weak_of,
            weak,
            starts,
            bucket_shift,
            bits,
            shift,
        })
    }

    /// Both hashes of full old block `b`, if there is one.
    pub fn hashes(&self, b: u64) -> Option<BlockHashes> {
        let i = usize::try_from(b).ok()?;
        let bs = u64::from(self.block_size);
        let full = self.old_len.saturating_sub(b.saturating_mul(bs)) >= bs;
        Some(BlockHashes {
            weak: *self.weak_of.get(i).filter(|_| full)?,
            strong: self.strong[i],
        })
    }

    /// Number of old blocks.
    pub fn blocks(&self) -> u64 {
        self.strong.len() as u64
    }

    /// Whether `bytes`, at block `k`'s offset in the new file, equal old
    /// block `k` (same length, same strong hash).
    pub fn same_at(&self, k: u64, strong: &[u8; 16], len: usize) -> bool {
        let bs = u64::from(self.block_size);
        let old_len = self.old_len.saturating_sub(k * bs).min(bs);
        self.strong.get(k as usize) == Some(strong) && old_len == len as u64
    }

    /// Whether some full old block may have weak key `weak` (false: none has).
    #[inline]
    pub fn may_have(&self, weak: u32) -> bool {
        let bit = (mix(weak) >> self.shift) as usize;
        self.bits[bit / 64] & (1 << (bit % 64)) != 0
    }

    /// The old block equal to `window` (a full block of new bytes whose weak
    /// key is `weak`), if any: the one after `prefer` when that one is, else
    /// the lowest; with `min_block`, only blocks from that number on.
    pub fn find(
        &self,
        weak: u32,
        window: &[u8],
        prefer: Option<u64>,
        min_block: u64,
    ) -> Option<u64> {
        if !self.may_have(weak) {
            return None;
        }
        let w = u64::from(weak);
        let bucket = (mix(weak) >> self.bucket_shift) as usize;
        let (lo, hi) = (
            self.starts[bucket] as usize,
            self.starts[bucket + 1] as usize,
        );
        let mut hits = self.weak[lo..hi]
            .iter()
            .filter(|e| *e >> 32 == w)
            .map(|e| e & 0xFFFF_FFFF)
            .filter(|&b| b >= min_block)
            .peekable();
        hits.peek()?;
        let s = block::strong(window, self.seed);
        let mut found = None;
        for b in hits {
            if self.strong[b as usize] == s {
                if Some(b) == prefer {
                    return Some(b);
                }
                found = found.or(Some(b));
            }
        }
        found
    }
}
