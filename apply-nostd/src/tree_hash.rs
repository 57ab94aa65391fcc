//! BLAKE3 of a stream, with a state that can be saved and restored: the
//! running hashes of a checkpoint (spec section 6.4).
//!
//! A `blake3::Hasher` keeps the chaining values of the complete subtrees
//! it has hashed, but does not let them out. [`TreeHasher`] keeps them
//! itself, with the `hazmat` tools of the blake3 crate: input is gathered
//! into aligned subtrees of up to [`BLOCK`] bytes (large enough for the
//! SIMD paths), each hashed to its chaining value as soon as more input
//! follows it (so it cannot be the root), and equal neighbours are joined,
//! as in section 2.1 of the BLAKE3 paper. [`TreeHasher::save`] turns the
//! state into one chaining value per complete subtree and the last 1 to
//! 1024 bytes (a chunk), a few hundred bytes at most; the result always
//! equals `blake3::hash` of the whole input.

use alloc::vec::Vec;

use blake3::hazmat::{
    merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};
use blake3::{Hasher, CHUNK_LEN};

/// The largest subtree gathered before it is hashed: 16 chunks, what the
/// widest SIMD path hashes at once; two hashers keep 32 KiB in all.
pub const BLOCK: usize = 16 * CHUNK_LEN;

/// A BLAKE3 hasher whose state can be saved at any point.
#[derive(Debug, Clone, Default)]
pub struct TreeHasher {
    /// Chaining values of the complete subtrees before `done`, largest
    /// first: one per 1 bit of `done / CHUNK_LEN`.
    stack: Vec<ChainingValue>,
    /// Bytes hashed into `stack`: a multiple of [`CHUNK_LEN`].
    done: u64,
    /// Bytes from `done` on, not hashed yet: at most [`TreeHasher::cap`].
    open: Vec<u8>,
}

/// A saved [`TreeHasher`]: what a checkpoint keeps of a running hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedHash {
    /// Bytes covered by `stack`: a multiple of 1024.
    pub done: u64,
    /// One chaining value per 1 bit of `done / 1024`, largest subtree first.
    pub stack: Vec<ChainingValue>,
    /// The input after `done`: 1 to 1024 bytes (none only when nothing
    /// was hashed at all).
    pub tail: Vec<u8>,
}

/// A saved hash state that is not one [`TreeHasher::save`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadSavedHash;

impl TreeHasher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.done + self.open.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The largest subtree that can start at `done`: [`BLOCK`], or less
    /// where `done` is aligned to less.
    fn cap(&self) -> usize {
        match self.done.trailing_zeros() {
            64 => BLOCK,
            z => (1u64 << z.min(32)).min(BLOCK as u64) as usize,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let cap = self.cap();
            if self.open.len() == cap {
                // More input follows: the open subtree is complete, not the root.
                let open = core::mem::take(&mut self.open);
                self.push_subtree(&open);
                self.open = open;
                self.open.clear();
                continue;
            }
            if self.open.is_empty() && data.len() > cap {
                // A whole subtree with input after it, straight from `data`.
                self.push_subtree(&data[..cap]);
                data = &data[cap..];
                continue;
            }
            let n = (cap - self.open.len()).min(data.len());
            self.open.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
    }

    /// Hashes `bytes`, a complete aligned subtree at `done` that is not the
    /// root, onto the stack, joining equal neighbours.
    fn push_subtree(&mut self, bytes: &[u8]) {
        let mut cv = Hasher::new()
            .set_input_offset(self.done)
            .update(bytes)
            .finalize_non_root();
        // The stack holds one subtree per 1 bit of `before`, the smallest
        // last; the new one is aligned to its size, so it joins its left
        // neighbour while that is as large as it is.
        let mut before = self.done / CHUNK_LEN as u64;
        let mut size = bytes.len() as u64 / CHUNK_LEN as u64;
        self.done += bytes.len() as u64;
        while before != 0 && before & before.wrapping_neg() == size {
            let left = self.stack.pop().expect("one subtree per 1 bit");
            cv = merge_subtrees_non_root(&left, &cv, Mode::Hash);
            before -= size;
            size <<= 1;
        }
        self.stack.push(cv);
    }

    /// The BLAKE3 of everything given to [`TreeHasher::update`].
    pub fn finalize(&self) -> [u8; 32] {
        if self.stack.is_empty() {
            return *Hasher::new().update(&self.open).finalize().as_bytes();
        }
        // `open` holds at least one byte after the stack (saved states keep
        // a tail, and a subtree is pushed only when input follows it).
        let mut right = Hasher::new()
            .set_input_offset(self.done)
            .update(&self.open)
            .finalize_non_root();
        let (first, rest) = self.stack.split_first().expect("not empty");
        for left in rest.iter().rev() {
            right = merge_subtrees_non_root(left, &right, Mode::Hash);
        }
        *merge_subtrees_root(first, &right, Mode::Hash).as_bytes()
    }

    /// The state, as a checkpoint keeps it: the open bytes but the last
    /// 1 to 1024 are hashed onto the stack first.
    pub fn save(&mut self) -> SavedHash {
        let len = self.open.len();
        let tail = match len % CHUNK_LEN {
            0 => len.min(CHUNK_LEN),
            r => r,
        };
        let open = core::mem::take(&mut self.open);
        let mut at = 0;
        while at < len - tail {
            // The largest aligned power of two that fits before the tail.
            let fits = 1usize << (usize::BITS - 1 - (len - tail - at).leading_zeros());
            let n = fits.min(self.cap());
            self.push_subtree(&open[at..at + n]);
            at += n;
        }
        self.open = open[at..].to_vec();
        SavedHash {
            done: self.done,
            stack: self.stack.clone(),
            tail: self.open.clone(),
        }
    }

    /// A hasher in the state `saved` records.
    pub fn restore(saved: &SavedHash) -> Result<Self, BadSavedHash> {
        let chunks = saved.done / CHUNK_LEN as u64;
        let well_formed = saved.done % CHUNK_LEN as u64 == 0
            && saved.stack.len() == chunks.count_ones() as usize
            && saved.tail.len() <= CHUNK_LEN
            && (saved.done == 0 || !saved.tail.is_empty());
        if !well_formed {
            return Err(BadSavedHash);
        }
        Ok(Self {
            stack: saved.stack.clone(),
            done: saved.done,
            open: saved.tail.clone(),
        })
    }
}

impl SavedHash {
    /// `done` (8 bytes LE), the number of chaining values (1 byte), them,
    /// the tail's length (2 bytes LE) and the tail.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.done.to_le_bytes());
        out.push(self.stack.len() as u8); // at most 54: the 1 bits of a u64 / 1024
        for cv in &self.stack {
            out.extend_from_slice(cv);
        }
        out.extend_from_slice(&(self.tail.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.tail);
    }

    /// Decodes what [`SavedHash::encode`] wrote at the start of `input`,
    /// which is advanced past it; checked as [`TreeHasher::restore`] does.
    pub fn decode(input: &mut &[u8]) -> Result<Self, BadSavedHash> {
        fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], BadSavedHash> {
            let (head, rest) = input.split_at_checked(n).ok_or(BadSavedHash)?;
            *input = rest;
            Ok(head)
        }
        let done = u64::from_le_bytes(take(input, 8)?.try_into().map_err(|_| BadSavedHash)?);
        let m = usize::from(take(input, 1)?[0]);
        let mut stack = Vec::with_capacity(m.min(64));
        for _ in 0..m {
            stack.push(take(input, 32)?.try_into().map_err(|_| BadSavedHash)?);
        }
        let t = u16::from_le_bytes(take(input, 2)?.try_into().map_err(|_| BadSavedHash)?);
        let tail = take(input, usize::from(t))?.to_vec();
        let saved = Self { done, stack, tail };
        TreeHasher::restore(&saved)?;
        Ok(saved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// xorshift64*: the same "random" bytes and cuts on every run.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn input(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn equals_blake3_at_the_edges_of_chunks_and_blocks() {
        for len in [
            0,
            1,
            1023,
            1024,
            1025,
            2048,
            3 * 1024 + 7,
            BLOCK - 1,
            BLOCK,
            BLOCK + 1,
            2 * BLOCK,
            3 * BLOCK + 1024,
            5 * BLOCK + 1,
            16 * BLOCK,
            16 * BLOCK + 1,
        ] {
            let data = input(len);
            let mut h = TreeHasher::new();
            h.update(&data);
            assert_eq!(h.finalize(), *blake3::hash(&data).as_bytes(), "len {len}");
        }
    }

    #[test]
    fn saved_and_restored_at_random_points_equals_blake3() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..300 {
            let len = match round % 3 {
                0 => rng.below(4 * CHUNK_LEN),
                1 => rng.below(3 * BLOCK),
                _ => rng.below(40 * BLOCK),
            };
            let data = input(len);
            let mut h = TreeHasher::new();
            let mut at = 0;
            while at < len {
                let n = (1 + rng.below(3 * BLOCK)).min(len - at);
                h.update(&data[at..at + n]);
                at += n;
                if rng.below(3) == 0 {
                    // What a checkpoint does: save, encode, decode, restore.
                    let saved = h.save();
                    let mut bytes = Vec::new();
                    saved.encode(&mut bytes);
                    let mut rest = &bytes[..];
                    let back = SavedHash::decode(&mut rest).expect("decodes");
                    assert!(rest.is_empty());
                    assert_eq!(back, saved);
                    assert!(bytes.len() <= 8 + 1 + 32 * 54 + 2 + CHUNK_LEN);
                    h = TreeHasher::restore(&back).expect("restores");
                    assert_eq!(h.len(), at as u64);
                }
            }
            assert_eq!(
                h.finalize(),
                *blake3::hash(&data).as_bytes(),
                "round {round}, len {len}"
            );
        }
    }

    #[test]
    fn a_saved_state_that_save_never_makes_is_refused() {
        let mut h = TreeHasher::new();
        h.update(&input(5 * CHUNK_LEN + 3));
        let good = h.save();
        assert!(TreeHasher::restore(&good).is_ok());
        let bad = [
            SavedHash {
                done: good.done + 1,
                ..good.clone()
            },
            SavedHash {
                stack: vec![[0; 32]; 5],
                ..good.clone()
            },
            SavedHash {
                tail: vec![],
                ..good.clone()
            },
            SavedHash {
                tail: vec![0; CHUNK_LEN + 1],
                ..good.clone()
            },
        ];
        for b in bad {
            assert_eq!(
                TreeHasher::restore(&b).expect_err("refused"),
                BadSavedHash,
                "{b:?}"
            );
        }
        // Truncated encodings.
        let mut bytes = Vec::new();
        good.encode(&mut bytes);
        for cut in 0..bytes.len() {
            assert!(SavedHash::decode(&mut &bytes[..cut]).is_err(), "cut {cut}");
        }
    }
}
