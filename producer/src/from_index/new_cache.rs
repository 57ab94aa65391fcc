//! What `mkpatch --from-index` computed about the new file, in the hash
//! cache (crate `anypatch-hash-cache`), so that a second patch from the
//! same index to the same unchanged new file does not read and hash all of
//! it again: a patch made again at another level or in place, or from the
//! index of an unchanged image made again (which comes from the index
//! cache with the same seed, so it is the same index, module `cache`).
//!
//! An entry holds the scan's result: the new file's BLAKE3 and the class
//! of every block against the index (unchanged, zero, moved by how much,
//! changed) as runs, keyed by the new file's identity, the block size and
//! the index's trailer (the BLAKE3 of all its entries): another index is
//! another key. It costs the first run nothing but writing the runs, a few
//! bytes per change (9.4 KiB for the 2 GiB sparse pair), and with it the
//! scan reads nothing; the matcher and the encoder then read only the
//! blocks the index does not have.
//!
//! The entry is trusted under the cache's rules (device, inode, size,
//! mtime and ctime unchanged, and not made within the racy margin of the
//! file's last change). A wrong one would make a patch whose new hash the
//! appliers refuse, never a wrong result.

use crate::cached::{CacheOptions, CacheUse, Slot};
use crate::input::Input;
use crate::spans::{push_run, Class};
use crate::{ProduceError, Progress};

use super::scan::{self, Scanned};
use super::table::BlockTable;

/// The entries' kind; bump the version when the blob's layout changes.
const KIND: &str = "mkpatch-from-index-scan-v1";

/// What an entry depends on besides the file: the block size and the
/// index (its trailer, which hashes its header and every entry).
fn params(block_size: u32, index_sum: &[u8; 32]) -> Vec<u8> {
    let mut p = block_size.to_le_bytes().to_vec();
    p.extend_from_slice(index_sum);
    p
}

// The blob: new_hash [32], then per run: class u8 (0 same, 1 zero,
// 2 changed, 3 moved), blocks u64 LE, and for moved the delta i64 LE.

fn encode(s: &Scanned) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + 17 * s.runs.len());
    out.extend_from_slice(&s.new_hash);
    for r in &s.runs {
        let (tag, delta) = match r.class {
            Class::Same => (0u8, None),
            Class::Zero => (1, None),
            Class::Changed(_) => (2, None),
            Class::Moved(d) => (3, Some(d)),
        };
        out.push(tag);
        out.extend_from_slice(&r.blocks.to_le_bytes());
        if let Some(d) = delta {
            out.extend_from_slice(&d.to_le_bytes());
        }
    }
    out
}

/// The scan in `blob`, if it is whole and its runs tile `blocks` blocks.
fn decode(blob: &[u8], blocks: u64) -> Option<Scanned> {
    let new_hash: [u8; 32] = blob.get(..32)?.try_into().ok()?;
    let mut rest = &blob[32..];
    let mut take = |n: usize| -> Option<[u8; 8]> {
        let (head, tail) = (rest.get(..n)?, rest.get(n..)?);
        rest = tail;
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(head);
        Some(v)
    };
    let mut runs = Vec::new();
    let mut total = 0u64;
    while let Some(tag) = take(1) {
        let n = u64::from_le_bytes(take(8)?);
        let class = match tag[0] {
            0 => Class::Same,
            1 => Class::Zero,
            2 => Class::Changed(0),
            3 => Class::Moved(i64::from_le_bytes(take(8)?)),
            _ => return None,
        };
        total = total.checked_add(n)?;
        push_run(&mut runs, class, n);
    }
    (total == blocks).then_some(Scanned { new_hash, runs })
}

/// Scans `new` against `table` (module `scan`), the index whose trailer is
/// `index_sum`, with the result of an earlier scan of the unchanged file
/// against that index when the cache in `opts` has it, and keeps this
/// one's there otherwise.
pub(crate) fn scan(
    new: &Input,
    table: &BlockTable,
    index_sum: &[u8; 32],
    threads: usize,
    opts: Option<&CacheOptions>,
    progress: &dyn Fn(Progress),
) -> Result<(Scanned, CacheUse), ProduceError> {
    let mut used = CacheUse::default();
    let Some(slot) = opts.and_then(|o| Slot::open(o, new, &mut used)) else {
        return Ok((scan::scan(new, table, threads, progress)?, used));
    };
    let params = params(table.block_size, index_sum);
    let blocks = new.len.div_ceil(u64::from(table.block_size));
    if let Some(blob) = slot.lookup(KIND, &params, &mut used) {
        if let Some(scanned) = decode(&blob, blocks) {
            used.hit = true;
            return Ok((scanned, used));
        }
        slot.inconsistent(new, &mut used);
    }
    let scanned = scan::scan(new, table, threads, progress)?;
    slot.store(new, KIND, &params, &encode(&scanned), &mut used);
    Ok((scanned, used))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::Run;

    #[test]
    fn blobs_round_trip_and_other_tilings_are_refused() {
        let s = Scanned {
            new_hash: [7; 32],
            runs: vec![
                Run {
                    class: Class::Same,
                    blocks: 3,
                },
                Run {
                    class: Class::Moved(-4096),
                    blocks: 2,
                },
                Run {
                    class: Class::Zero,
                    blocks: 1,
                },
                Run {
                    class: Class::Changed(0),
                    blocks: 4,
                },
            ],
        };
        let blob = encode(&s);
        let back = decode(&blob, 10).expect("decodes");
        assert_eq!(back.new_hash, s.new_hash);
        assert_eq!(back.runs, s.runs);
        assert!(decode(&blob, 9).is_none());
        assert!(decode(&blob, 11).is_none());
        for n in 0..blob.len() {
            assert!(decode(&blob[..n], 10).is_none(), "cut at {n}");
        }
        let mut bad = blob.clone();
        bad[32] = 9;
        assert!(decode(&bad, 10).is_none(), "an unknown class");
    }

    #[test]
    fn params_name_the_index_and_block_size() {
        assert_ne!(params(4096, &[1; 32]), params(4096, &[2; 32]));
        assert_ne!(params(4096, &[1; 32]), params(8192, &[1; 32]));
    }
}
