//! `mkpatch index`'s entries in the hash cache (crate `anypatch-hash-cache`),
//! so that indexing an unchanged image again reads none of it.
//!
//! An entry is the index as it was computed: the seed (u64 LE), the image's
//! BLAKE3 (32 bytes), the trailer of the unsigned and of the signed index
//! (32 bytes each: what a hit writes without hashing the entries again),
//! then the 20-byte entries, keyed by the image's identity and the block
//! size. A hit is used only when its length fits the image's length and
//! block size, and, when a seed was asked for, when it was made with that
//! seed; a cached index keeps its seed (the index of an unchanged image is
//! the same index). Signatures are made anew on every run.

use anypatch_hash_cache::Blob;
use anypatch_index::{content_hash, Header};

use crate::cached::{CacheOptions, CacheUse, Slot};
use crate::input::Input;

/// The entries' kind; bump the version when the blob's layout changes.
const KIND: &str = "mkpatch-index-v2";

/// An index computed earlier.
pub(crate) struct Hit {
    pub seed: u64,
    pub old_hash: [u8; 32],
    /// The trailers of the unsigned and the signed index.
    sums: [[u8; 32]; 2],
    /// The blob: the entries, `ENTRY_LEN` bytes per block, from offset
    /// [`Hit::ENTRIES_AT`].
    blob: Blob,
}

impl Hit {
    /// Where the entries start in the blob.
    const ENTRIES_AT: usize = 8 + 32 + 2 * 32;

    /// The encoded entries.
    pub fn entries(&self) -> &[u8] {
        &self.blob[Self::ENTRIES_AT..]
    }

    /// The trailer of the index with this header (signed or not).
    pub fn content_hash(&self, header: &Header) -> [u8; 32] {
        self.sums[usize::from(header.is_signed())]
    }
}

fn params(block_size: u32) -> Vec<u8> {
    // The hashes of a fixed block too: a build that computes either
    // differently finds no entry of this one.
    let sample: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut p = block_size.to_le_bytes().to_vec();
    p.extend_from_slice(&anypatch_index::BlockHashes::of(&sample, 1).emit());
    p
}

/// Looks the image up. Returns the hit, if trusted, and where to store a
/// new entry; problems are warnings in `used`, never errors.
pub(crate) fn lookup(
    opts: &CacheOptions,
    old: &Input,
    block_size: u32,
    seed: Option<u64>,
    used: &mut CacheUse,
) -> (Option<Hit>, Option<Slot>) {
    let Some(slot) = Slot::open(opts, old, used) else {
        return (None, None);
    };
    let blocks = old.len.div_ceil(u64::from(block_size));
    let want = Hit::ENTRIES_AT as u64 + blocks * anypatch_index::ENTRY_LEN as u64;
    let hit = match slot.lookup(KIND, &params(block_size), used) {
        Some(blob) if blob.len() as u64 == want => {
            let field = |at: usize| -> [u8; 32] {
                let mut v = [0u8; 32];
                v.copy_from_slice(&blob[at..at + 32]);
                v
            };
            let mut s = [0u8; 8];
            s.copy_from_slice(&blob[..8]);
            let cached_seed = u64::from_le_bytes(s);
            let (old_hash, sums) = (field(8), [field(40), field(72)]);
            (seed.is_none() || seed == Some(cached_seed)).then_some(Hit {
                seed: cached_seed,
                old_hash,
                sums,
                blob,
            })
        }
        Some(_) => {
            slot.inconsistent(old, used);
            None
        }
        None => None,
    };
    used.hit = hit.is_some();
    (hit, Some(slot))
}

/// Stores a computed index (`header`, signed or not, its encoded `entries`
/// and its trailer `sum`) when the image did not change while it was read
/// and its state is not racy.
pub(crate) fn store(
    slot: Slot,
    old: &Input,
    header: &Header,
    entries: &[u8],
    sum: [u8; 32],
    used: &mut CacheUse,
) {
    let mut blob = Vec::with_capacity(Hit::ENTRIES_AT + entries.len());
    blob.extend_from_slice(&header.seed.to_le_bytes());
    blob.extend_from_slice(&header.old_hash);
    // The other variant's trailer is hashed here, once.
    let other = Header::new(
        header.old_len,
        header.old_hash,
        header.block_size,
        header.seed,
        !header.is_signed(),
    );
    let other_sum = content_hash(&other, entries);
    let sums = if header.is_signed() {
        [other_sum, sum]
    } else {
        [sum, other_sum]
    };
    for s in sums {
        blob.extend_from_slice(&s);
    }
    blob.extend_from_slice(entries);
    slot.store(old, KIND, &params(header.block_size), &blob, used);
}
