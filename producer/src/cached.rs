//! The old file's scan, kept in the hash cache (crate
//! `anypatch-hash-cache`) so that a second patch from the same unchanged
//! old file does not read and hash all of it again.
//!
//! An entry holds everything the scan computes from the old bytes alone:
//! the whole-file BLAKE3, the BLAKE3 value of every piece (module
//! `pieces`: 64 KiB at the default block size), and the index entries
//! (the xxh3 and rolling key of every full non-zero block). With it, the
//! scan reads only the old pieces whose value differs from the new file's
//! piece at the same offset, and compares those byte for byte as it does
//! without a cache. Equal values stand for equal bytes (a 256-bit BLAKE3
//! chaining value per piece); every index hit is still checked against the
//! old bytes by the matcher, and every old piece that is read is checked
//! against its cached value, so an entry that is not the file's makes the
//! scan start again without it ([`scan::Fail::Stale`]).
//!
//! Size: per GiB of old file at 4 KiB blocks, 512 KiB of piece values,
//! 2 MiB of xxh3 and 1 MiB of rolling keys for non-zero blocks, and 64 KiB
//! of bitmaps: about 3.6 MiB (0.35%), less for sparse images.

use std::path::PathBuf;

use anypatch_hash_cache::{Blob, Cache, FileId, Miss};
use blake3::hazmat::ChainingValue;
use xxhash_rust::xxh3::xxh3_64;

use crate::input::{Input, Job};
use crate::pieces::{piece_len, root};
use crate::rolling::{self, KEY_LEN};
use crate::scan::{self, Fail, Scanned};
use crate::ProduceError;

/// The entries' kind; bump the version when the blob's layout changes.
const KIND: &str = "mkpatch-old-scan-v1";

/// Where [`crate::make_patch`] keeps what it computed about the old file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheOptions {
    /// The cache directory, created (mode 0700) when missing.
    pub dir: PathBuf,
    /// The most bytes its entries may take; least recently used go first.
    pub max_bytes: u64,
}

impl CacheOptions {
    /// The cache in `dir`, with the default bound (1 GiB).
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            max_bytes: anypatch_hash_cache::DEFAULT_MAX_BYTES,
        }
    }

    /// The default cache directory: `$XDG_CACHE_HOME/anypatch`, else
    /// `~/.cache/anypatch`; `None` without a home directory.
    pub fn default_dir() -> Option<PathBuf> {
        Cache::default_dir()
    }
}

/// What the hash cache did in one run. Its problems never fail a run: they
/// are `warnings`, to be shown to the user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheUse {
    /// The old file's scan came from the cache.
    pub hit: bool,
    /// The old file's scan was stored in the cache.
    pub stored: bool,
    /// What went wrong with the cache, one sentence each.
    pub warnings: Vec<String>,
}

/// What the cache knows about an old file: all the scan takes from the old
/// bytes alone.
#[derive(Debug)]
pub(crate) struct Known {
    pub old_hash: ChainingValue,
    pub pieces: Vec<ChainingValue>,
    pub index_entries: Vec<(u64, u64)>,
    pub shift_entries: Vec<u64>,
}

/// Scans both files, with the old file's scan from the cache in `opts`
/// when it has a trusted entry, and stores it there when computed.
pub(crate) fn scan(
    job: Job<'_>,
    opts: Option<&CacheOptions>,
) -> Result<(Scanned, CacheUse), ProduceError> {
    let mut used = CacheUse::default();
    let plain = |used| Ok((scan::scan(job, false)?, used));
    let Some(opts) = opts else {
        return plain(used);
    };
    // A file of one piece is hashed as a root: nothing to compare, or to gain.
    if job.old.len <= piece_len(job.block_size) {
        return plain(used);
    }
    let Some(slot) = Slot::open(opts, job.old, &mut used) else {
        return plain(used);
    };
    let params = params(job.block_size);
    if let Some(blob) = slot.lookup(KIND, &params, &mut used) {
        match decode(&blob, job.old.len, job.block_size) {
            Some(known) => {
                drop(blob);
                match scan::scan_with(job, Some(known), false) {
                    Ok(s) => {
                        used.hit = true;
                        return Ok((s, used));
                    }
                    Err(Fail::Produce(e)) => return Err(e),
                    Err(Fail::Stale) => used.warnings.push(format!(
                        "the hash cache's entry for {} did not match its bytes (was it \
                         changed without changing its times?); it was hashed again",
                        job.old.path.display()
                    )),
                }
            }
            None => slot.inconsistent(job.old, &mut used),
        }
    }
    let scanned = scan::scan(job, true)?;
    slot.store(
        job.old,
        KIND,
        &params,
        &encode(&scanned, job.old.len, job.block_size),
        &mut used,
    );
    Ok((scanned, used))
}

/// A hash cache and the identity of one file in it: where what was
/// computed about that file is looked up and stored. Problems are
/// warnings in a [`CacheUse`], never errors.
pub(crate) struct Slot {
    cache: Cache,
    id: FileId,
}

impl Slot {
    /// The cache `opts` names, for `file` as it is now; `None` when `file`
    /// cannot be cached (a block device, whose contents change without its
    /// times changing) or the cache cannot be opened.
    pub(crate) fn open(opts: &CacheOptions, file: &Input, used: &mut CacheUse) -> Option<Slot> {
        let id = match FileId::of(file.file()) {
            Ok(Some(id)) => id,
            Ok(None) => return None,
            Err(e) => {
                used.warnings.push(format!(
                    "cannot stat {} for the hash cache: {e}; not cached",
                    file.path.display()
                ));
                return None;
            }
        };
        match Cache::open(&opts.dir) {
            Ok(c) => Some(Slot {
                cache: c.with_max_bytes(opts.max_bytes),
                id,
            }),
            Err(e) => {
                used.warnings.push(e.to_string());
                None
            }
        }
    }

    /// The trusted blob of this kind and parameters, if there is one. A
    /// damaged or unreadable entry is a warning (the next store replaces it).
    pub(crate) fn lookup(&self, kind: &str, params: &[u8], used: &mut CacheUse) -> Option<Blob> {
        match self.cache.lookup(&self.id, kind, params) {
            Ok(blob) => Some(blob),
            Err(miss @ (Miss::Corrupt { .. } | Miss::Unreadable { .. })) => {
                used.warnings.push(miss.to_string());
                None
            }
            Err(_) => None,
        }
    }

    /// Warns that a blob found for `file` does not hold together; the next
    /// store replaces it.
    pub(crate) fn inconsistent(&self, file: &Input, used: &mut CacheUse) {
        used.warnings.push(format!(
            "ignored the hash cache's entry for {}: its contents are inconsistent; it \
             will be rewritten",
            file.path.display()
        ));
    }

    /// Stores `blob`, computed from `file`, when that cannot mislead: only
    /// a state that any later write would change (not racy), only if the
    /// file did not change while it was read, and only a blob of at most
    /// half the cache's bound (a larger one would push everything else out).
    pub(crate) fn store(
        &self,
        file: &Input,
        kind: &str,
        params: &[u8],
        blob: &[u8],
        used: &mut CacheUse,
    ) {
        let unchanged =
            matches!(FileId::of(file.file()), Ok(Some(now)) if now.same_state(&self.id));
        if self.id.is_racy() || !unchanged || 2 * blob.len() as u64 > self.cache.max_bytes() {
            return;
        }
        match self.cache.store(&self.id, kind, params, blob) {
            Ok(()) => used.stored = true,
            Err(e) => used.warnings.push(e.to_string()),
        }
    }
}

/// What an entry depends on besides the file: the block and piece sizes,
/// and the two block hashes, fingerprinted on a fixed block so that a
/// build that computes either differently finds no entry of this one.
fn params(block_size: u32) -> Vec<u8> {
    let sample: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut p = Vec::with_capacity(32);
    p.extend_from_slice(&block_size.to_le_bytes());
    p.extend_from_slice(&piece_len(block_size).to_le_bytes());
    p.extend_from_slice(&(KEY_LEN as u32).to_le_bytes());
    p.extend_from_slice(&xxh3_64(&sample).to_le_bytes());
    p.extend_from_slice(&rolling::entry(&sample, 1).unwrap_or(0).to_le_bytes());
    p
}

// The blob, integers little-endian:
//   old_len u64, block_size u32, old_hash [32]
//   piece count u64 (= ceil(old_len / piece)), then 32 bytes per piece
//   full block count u64 (= old_len / block_size)
//   indexed bitmap, anchored bitmap: one bit per full block, LSB first
//   indexed count u64, then its xxh3s (u64 each), in block order
//   anchored count u64, then its rolling keys (u32 each), in block order
// An indexed block is a full non-zero old block; an anchored one also has
// a rolling key (module `rolling`), and a number below 2^32.

fn encode(s: &Scanned, old_len: u64, block_size: u32) -> Vec<u8> {
    let bs = u64::from(block_size);
    let full = old_len / bs;
    let bitmap = full.div_ceil(8) as usize;
    let mut out = Vec::with_capacity(
        64 + 32 * s.old_pieces.len()
            + 2 * bitmap
            + 8 * s.index_entries.len()
            + 4 * s.shift_entries.len(),
    );
    out.extend_from_slice(&old_len.to_le_bytes());
    out.extend_from_slice(&block_size.to_le_bytes());
    out.extend_from_slice(&s.old_hash);
    out.extend_from_slice(&(s.old_pieces.len() as u64).to_le_bytes());
    for v in &s.old_pieces {
        out.extend_from_slice(v);
    }
    out.extend_from_slice(&full.to_le_bytes());
    let mut indexed = vec![0u8; bitmap];
    for &(_, offset) in &s.index_entries {
        let b = (offset / bs) as usize;
        indexed[b / 8] |= 1 << (b % 8);
    }
    let mut anchored = vec![0u8; bitmap];
    for &e in &s.shift_entries {
        let b = (e & 0xFFFF_FFFF) as usize;
        anchored[b / 8] |= 1 << (b % 8);
    }
    out.extend_from_slice(&indexed);
    out.extend_from_slice(&anchored);
    out.extend_from_slice(&(s.index_entries.len() as u64).to_le_bytes());
    for &(h, _) in &s.index_entries {
        out.extend_from_slice(&h.to_le_bytes());
    }
    out.extend_from_slice(&(s.shift_entries.len() as u64).to_le_bytes());
    for &e in &s.shift_entries {
        out.extend_from_slice(&((e >> 32) as u32).to_le_bytes());
    }
    out
}

/// The entry's contents, if they are consistent with each other and with
/// an old file of `old_len` bytes: every count and length is checked, and
/// the piece values must merge to the stored whole-file hash. `None`
/// otherwise. Allocates at most about twice the blob's length.
fn decode(blob: &[u8], old_len: u64, block_size: u32) -> Option<Known> {
    let mut r = Reader(blob);
    if r.u64()? != old_len || r.u32()? != block_size {
        return None;
    }
    let old_hash: ChainingValue = r.take(32)?.try_into().ok()?;
    let piece = piece_len(block_size);
    // Entries are made only for files longer than a piece (see `scan`).
    if old_len <= piece {
        return None;
    }
    let n_pieces = r.u64()?;
    if n_pieces != old_len.div_ceil(piece) {
        return None;
    }
    let pieces: Vec<ChainingValue> = r
        .take(usize::try_from(n_pieces).ok()?.checked_mul(32)?)?
        .chunks_exact(32)
        .map(|c| c.try_into().expect("chunks of 32 bytes"))
        .collect();
    if root(old_len, piece, &pieces) != old_hash {
        return None;
    }
    let bs = u64::from(block_size);
    let full = r.u64()?;
    if full != old_len / bs {
        return None;
    }
    let bitmap = usize::try_from(full.div_ceil(8)).ok()?;
    let indexed = r.take(bitmap)?;
    let anchored = r.take(bitmap)?;
    let n_indexed = usize::try_from(r.u64()?).ok()?;
    let hashes = r.take(n_indexed.checked_mul(8)?)?;
    let n_anchored = usize::try_from(r.u64()?).ok()?;
    let keys = r.take(n_anchored.checked_mul(4)?)?;
    if !r.0.is_empty() {
        return None;
    }
    let set = |map| set_bits(map, full);
    let index_entries: Vec<(u64, u64)> = set(indexed)
        .zip(hashes.chunks_exact(8))
        .map(|(b, h)| (u64::from_le_bytes(h.try_into().expect("8 bytes")), b * bs))
        .collect();
    let shift_entries: Vec<u64> = set(anchored)
        .zip(keys.chunks_exact(4))
        .map(|(b, k)| {
            let key = u32::from_le_bytes(k.try_into().expect("4 bytes"));
            Some(u64::from(key) << 32 | u64::from(u32::try_from(b).ok()?))
        })
        .collect::<Option<_>>()?;
    // Each list has exactly one value per set bit.
    let counts = |map: &[u8]| map.iter().map(|b| b.count_ones() as usize).sum::<usize>();
    if index_entries.len() != n_indexed
        || counts(indexed) != n_indexed
        || shift_entries.len() != n_anchored
        || counts(anchored) != n_anchored
    {
        return None;
    }
    Some(Known {
        old_hash,
        pieces,
        index_entries,
        shift_entries,
    })
}

/// The numbers of the bits set among the first `n` of `map` (LSB first);
/// `map` holds at least `n` bits.
fn set_bits(map: &[u8], n: u64) -> impl Iterator<Item = u64> + '_ {
    (0..n).filter(move |&b| map[(b / 8) as usize] & (1 << (b % 8)) != 0)
}

/// Takes fields off the front of a slice; `None` when it runs out.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        (n <= self.0.len()).then(|| {
            let (head, tail) = self.0.split_at(n);
            self.0 = tail;
            head
        })
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanned(old: &[u8], new: &[u8], bs: u32, known: Option<Known>) -> Result<Scanned, Fail> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (po, pn) = (dir.path().join("old"), dir.path().join("new"));
        std::fs::write(&po, old).expect("write");
        std::fs::write(&pn, new).expect("write");
        let (o, n) = (
            Input::open(&po).expect("open"),
            Input::open(&pn).expect("open"),
        );
        let job = Job {
            old: &o,
            new: &n,
            block_size: bs,
            threads: 3,
            progress: &|_| {},
        };
        scan::scan_with(job, known, true)
    }

    /// Old and new of 3 MiB and a bit, with zero blocks, equal and changed
    /// pieces, and a short tail.
    fn pair() -> (Vec<u8>, Vec<u8>) {
        let len = 3 * (1 << 20) + 5000;
        let mut old: Vec<u8> = (0..len as u64)
            .map(|i| (i.wrapping_mul(0x9E37_79B9) >> 17) as u8)
            .collect();
        old[8192..16384].fill(0);
        old[100_000..100_000 + KEY_LEN].fill(0);
        let mut new = old.clone();
        new[70_000] ^= 1;
        new[2_000_000..2_000_100].fill(3);
        new.truncate(len - 700);
        (old, new)
    }

    #[test]
    fn round_trip_and_same_scan_with_the_entry() {
        let (old, new) = pair();
        for bs in [4096, 1 << 20] {
            let first = scanned(&old, &new, bs, None).expect("scan");
            let blob = encode(&first, old.len() as u64, bs);
            let known = decode(&blob, old.len() as u64, bs).expect("decode");
            assert_eq!(known.index_entries, first.index_entries);
            assert_eq!(known.shift_entries, first.shift_entries);
            assert_eq!(known.pieces, first.old_pieces);
            let second = scanned(&old, &new, bs, Some(known)).expect("scan with entry");
            assert_eq!(second.old_hash, first.old_hash);
            assert_eq!(second.new_hash, first.new_hash);
            assert_eq!(second.runs, first.runs);
            assert_eq!(second.changed, first.changed);
            assert_eq!(second.index_entries, first.index_entries);
            assert_eq!(second.shift_entries, first.shift_entries);
            assert_eq!(first.old_hash, *blake3::hash(&old).as_bytes());
        }
    }

    #[test]
    fn an_entry_of_other_bytes_is_caught_where_old_is_read() {
        let (old, new) = pair();
        let mut other = old.clone();
        other[70_000] ^= 2; // a piece the new file also changed: it is read
        let first = scanned(&other, &new, 4096, None).expect("scan");
        let known = decode(
            &encode(&first, old.len() as u64, 4096),
            old.len() as u64,
            4096,
        )
        .expect("decode");
        assert!(matches!(
            scanned(&old, &new, 4096, Some(known)),
            Err(Fail::Stale)
        ));
    }

    #[test]
    fn inconsistent_blobs_are_refused() {
        let (old, new) = pair();
        let len = old.len() as u64;
        let first = scanned(&old, &new, 4096, None).expect("scan");
        let blob = encode(&first, len, 4096);
        assert!(decode(&blob, len, 4096).is_some());
        assert!(decode(&blob, len + 1, 4096).is_none(), "other length");
        assert!(decode(&blob, len, 8192).is_none(), "other block size");
        let empty = Scanned {
            old_hash: [0; 32],
            new_hash: [0; 32],
            index_entries: Vec::new(),
            runs: Vec::new(),
            changed: Vec::new(),
            shift_entries: Vec::new(),
            old_pieces: Vec::new(),
        };
        assert!(
            decode(&encode(&empty, 0, 4096), 0, 4096).is_none(),
            "an empty file"
        );
        for n in 0..blob.len() {
            assert!(decode(&blob[..n], len, 4096).is_none(), "cut at {n}");
        }
        // A flipped piece value no longer merges to the whole-file hash.
        let mut b = blob.clone();
        b[12 + 32 + 8 + 5] ^= 1;
        assert!(decode(&b, len, 4096).is_none());
        // A bit set in a bitmap without its value.
        let pieces = 12 + 32 + 8 + 32 * first.old_pieces.len() + 8;
        let mut b = blob.clone();
        b[pieces + 1] ^= 0x01; // block 8, a zero block: not indexed
        assert!(decode(&b, len, 4096).is_none());
        let mut longer = blob;
        longer.push(0);
        assert!(decode(&longer, len, 4096).is_none());
    }

    #[test]
    fn params_name_the_block_size() {
        assert_ne!(params(4096), params(8192));
        assert_eq!(params(4096), params(4096));
    }
}
