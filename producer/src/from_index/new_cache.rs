//! What `mkpatch --from-index` computed about the new file, in the hash
//! cache (crate `anypatch-hash-cache`), so that a second patch from an
//! index with the same seed to the same unchanged new file does not read
//! and hash all of it again: a patch made again at another level or in
//! place, or from the index of an unchanged image made again (which keeps
//! its seed, module `cache`).
//!
//! An entry holds the new file's BLAKE3 and, for every block of it, the
//! index's two hashes with the index's seed and whether it is all zeros:
//! all the scan needs to class each block against any index with that
//! seed and block size (the key's parameters). With it, the scan reads
//! nothing; the matcher and the encoder then read only the blocks the
//! index does not have. 20 bytes and a bit per block: 5.1 MiB per GiB at
//! 4 KiB blocks.
//!
//! The entry is trusted under the cache's rules (device, inode, size,
//! mtime and ctime unchanged, and not made within the racy margin of the
//! file's last change). A wrong one would make a patch whose new hash the
//! appliers refuse, never a wrong result.

use anypatch_hash_cache::Blob;
use anypatch_index::{BlockHashes, ENTRY_LEN};

use crate::cached::{CacheOptions, CacheUse, Slot};
use crate::input::Input;
use crate::{ProduceError, Progress};

use super::scan::{self, NewBlocks, Scanned};
use super::table::BlockTable;

/// The entries' kind; bump the version when the blob's layout changes.
const KIND: &str = "mkpatch-from-index-new-v1";

/// What an entry depends on besides the file: the block size, the seed,
/// and both block hashes of a fixed block with that seed (a build that
/// computes either differently finds no entry of this one).
fn params(block_size: u32, seed: u64) -> Vec<u8> {
    let sample: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut p = block_size.to_le_bytes().to_vec();
    p.extend_from_slice(&seed.to_le_bytes());
    p.extend_from_slice(&BlockHashes::of(&sample, seed).emit());
    p
}

// The blob: new_hash [32], then ENTRY_LEN bytes per block (weak u32 LE,
// strong [16]), then one bit per block, LSB first: all zeros.

fn encode(new_hash: &[u8; 32], blocks: &NewBlocks) -> Vec<u8> {
    let n = blocks.zero.len();
    let mut out = Vec::with_capacity(32 + blocks.hashes.len() + n.div_ceil(8));
    out.extend_from_slice(new_hash);
    out.extend_from_slice(&blocks.hashes);
    let mut bits = vec![0u8; n.div_ceil(8)];
    for (k, _) in blocks.zero.iter().enumerate().filter(|(_, z)| **z) {
        bits[k / 8] |= 1 << (k % 8);
    }
    out.extend_from_slice(&bits);
    out
}

/// An entry's parts, if its length fits a new file of `blocks` blocks.
struct Known<'a> {
    new_hash: [u8; 32],
    hashes: &'a [u8],
    zero_bits: &'a [u8],
}

fn decode(blob: &[u8], blocks: u64) -> Option<Known<'_>> {
    let n = usize::try_from(blocks).ok()?;
    let hashes_len = n.checked_mul(ENTRY_LEN)?;
    if blob.len()
        != 32usize
            .checked_add(hashes_len)?
            .checked_add(n.div_ceil(8))?
    {
        return None;
    }
    let (head, rest) = blob.split_at(32);
    let (hashes, zero_bits) = rest.split_at(hashes_len);
    Some(Known {
        new_hash: head.try_into().ok()?,
        hashes,
        zero_bits,
    })
}

/// Scans `new` against `table` (module `scan`), with what an earlier scan
/// of the unchanged file with the same seed computed when the cache in
/// `opts` has it, and keeps what this one computed there otherwise.
pub(crate) fn scan(
    new: &Input,
    table: &BlockTable,
    threads: usize,
    opts: Option<&CacheOptions>,
    progress: &dyn Fn(Progress),
) -> Result<(Scanned, CacheUse), ProduceError> {
    let mut used = CacheUse::default();
    let Some(slot) = opts.and_then(|o| Slot::open(o, new, &mut used)) else {
        return Ok((scan::scan(new, table, threads, false, progress)?, used));
    };
    let params = params(table.block_size, table.seed);
    let blocks = new.len.div_ceil(u64::from(table.block_size));
    if let Some(blob) = slot.lookup(KIND, &params, &mut used) {
        if let Some(scanned) = from_entry(&blob, table, new.len, blocks) {
            used.hit = true;
            return Ok((scanned, used));
        }
        slot.inconsistent(new, &mut used);
    }
    let mut scanned = scan::scan(new, table, threads, true, progress)?;
    if let Some(kept) = scanned.blocks.take() {
        slot.store(
            new,
            KIND,
            &params,
            &encode(&scanned.new_hash, &kept),
            &mut used,
        );
    }
    Ok((scanned, used))
}

/// The scan of a new file of `new_len` bytes (`blocks` blocks) from its
/// entry, if the entry fits it.
fn from_entry(blob: &Blob, table: &BlockTable, new_len: u64, blocks: u64) -> Option<Scanned> {
    let known = decode(blob, blocks)?;
    let zero = |k: u64| known.zero_bits[(k / 8) as usize] & (1 << (k % 8)) != 0;
    Some(Scanned {
        new_hash: known.new_hash,
        runs: scan::classify_known(table, new_len, known.hashes, zero),
        blocks: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_and_wrong_lengths_are_refused() {
        let blocks = NewBlocks {
            hashes: (0..3 * ENTRY_LEN as u8).collect(),
            zero: vec![false, true, false],
        };
        let blob = encode(&[7; 32], &blocks);
        let k = decode(&blob, 3).expect("decodes");
        assert_eq!(k.new_hash, [7; 32]);
        assert_eq!(k.hashes, &blocks.hashes[..]);
        assert_eq!(k.zero_bits, &[0b010]);
        assert!(decode(&blob, 2).is_none());
        assert!(decode(&blob, 4).is_none());
        assert!(decode(&blob[..blob.len() - 1], 3).is_none());
        assert!(decode(&[], u64::MAX).is_none());
    }

    #[test]
    fn params_name_the_seed_and_block_size() {
        assert_ne!(params(4096, 1), params(4096, 2));
        assert_ne!(params(4096, 1), params(8192, 1));
        assert_eq!(params(4096, 1), params(4096, 1));
    }
}
