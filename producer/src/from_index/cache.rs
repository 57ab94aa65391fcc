//! `mkpatch index`'s entries in the hash cache (crate `anypatch-hash-cache`),
//! so that indexing an unchanged image again reads none of it.
//!
//! An entry is the index as it was computed, without header or trailer:
//! the seed (u64 LE), the image's BLAKE3 (32 bytes), then the 20-byte
//! entries, keyed by the image's identity and the block size. A hit is
//! used only when its length fits the image's length and block size, and,
//! when a seed was asked for, when it was made with that seed; a cached
//! index keeps its seed (the index of an unchanged image is the same
//! index). The trailer and any signature are made anew on every run.

use anypatch_hash_cache::{Cache, FileId, Miss};

use crate::cached::{CacheOptions, CacheUse};
use crate::input::Input;

/// The entries' kind; bump the version when the blob's layout changes.
const KIND: &str = "mkpatch-index-v1";

/// An index computed earlier.
pub(crate) struct Hit {
    pub seed: u64,
    pub old_hash: [u8; 32],
    /// The blob: the entries, `ENTRY_LEN` bytes per block, from offset
    /// [`Hit::ENTRIES_AT`].
    pub blob: Vec<u8>,
}

impl Hit {
    /// Where the entries start in the blob.
    pub const ENTRIES_AT: u64 = 40;
}

/// Where to store what is computed, when it may be stored.
pub(crate) struct Slot {
    cache: Cache,
    id: FileId,
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
    let id = match FileId::of(old.file()) {
        Ok(Some(id)) => id,
        // A block device's contents change without its times changing.
        Ok(None) => return (None, None),
        Err(e) => {
            used.warnings.push(format!(
                "cannot stat {} for the hash cache: {e}; not cached",
                old.path.display()
            ));
            return (None, None);
        }
    };
    let cache = match Cache::open(&opts.dir) {
        Ok(c) => c.with_max_bytes(opts.max_bytes),
        Err(e) => {
            used.warnings.push(e.to_string());
            return (None, None);
        }
    };
    let blocks = old.len.div_ceil(u64::from(block_size));
    let hit = match cache.lookup(&id, KIND, &params(block_size)) {
        Ok(blob) if blob.len() as u64 == 40 + blocks * anypatch_index::ENTRY_LEN as u64 => {
            let mut s = [0u8; 8];
            s.copy_from_slice(&blob[..8]);
            let mut old_hash = [0u8; 32];
            old_hash.copy_from_slice(&blob[8..40]);
            let cached_seed = u64::from_le_bytes(s);
            (seed.is_none() || seed == Some(cached_seed)).then_some(Hit {
                seed: cached_seed,
                old_hash,
                blob,
            })
        }
        Ok(_) => {
            used.warnings.push(format!(
                "ignored the hash cache's index of {}: its length is wrong; it will be rewritten",
                old.path.display()
            ));
            None
        }
        Err(miss @ (Miss::Corrupt { .. } | Miss::Unreadable { .. })) => {
            used.warnings.push(miss.to_string());
            None
        }
        Err(_) => None,
    };
    used.hit = hit.is_some();
    (hit, Some(Slot { cache, id }))
}

/// Stores a computed index, when the image did not change while it was
/// read and its state is not racy.
pub(crate) fn store(
    slot: Slot,
    old: &Input,
    block_size: u32,
    seed: u64,
    old_hash: &[u8; 32],
    entries: &[u8],
    used: &mut CacheUse,
) {
    let unchanged = matches!(FileId::of(old.file()), Ok(Some(now)) if now.same_state(&slot.id));
    // Larger than half the cache: it would only push everything else out.
    if slot.id.is_racy() || !unchanged || 2 * (40 + entries.len() as u64) > slot.cache.max_bytes() {
        return;
    }
    let mut blob = Vec::with_capacity(40 + entries.len());
    blob.extend_from_slice(&seed.to_le_bytes());
    blob.extend_from_slice(old_hash);
    blob.extend_from_slice(entries);
    match slot.cache.store(&slot.id, KIND, &params(block_size), &blob) {
        Ok(()) => used.stored = true,
        Err(e) => used.warnings.push(e.to_string()),
    }
}
