//! An image's leaf values kept in the hash cache (crate
//! `anypatch-hash-cache`), so that neither side hashes an image again when
//! it has not changed since it was hashed (spec/SYNC.md section 7).
//!
//! The entry is trusted by the cache's rule: the file's device, inode,
//! size, mtime and ctime are what they were when the entry's stat was
//! taken, and that stat was not racy. An image touched since (even with its
//! mtime set back, which changes its ctime) is hashed again. The values
//! stand for the bytes only where they are compared: a receiver whose
//! cached values were wrong asks for leaves it did not need, or builds a
//! leaf that then fails its check against the sender's value; the final
//! root, computed from the leaves as built, is what ends a session.

use std::fs::File;
use std::io;

use anypatch_hash_cache::{Cache, FileId};

use crate::tree::{leaf_count, Value};

/// The entries' kind; bump the version when the blob's layout or the
/// tree changes.
const KIND: &str = "sync-leaf-values-v1";

/// The leaf values of `file` (of `len` bytes, stat taken as `id`) that
/// `cache` holds, if it holds them for this state of the file.
pub fn lookup(cache: &Cache, id: &FileId, len: u64) -> Option<Vec<Value>> {
    let blob = cache.lookup(id, KIND, &params(len)).ok()?;
    let count = usize::try_from(leaf_count(len)).ok()?;
    if blob.len() != count * 32 {
        return None;
    }
    Some(
        blob.chunks_exact(32)
            .map(|c| c.try_into().expect("32-byte chunks"))
            .collect(),
    )
}

/// Keeps `leaves` as the values of `file`, whose stat before they were
/// computed was `before`: only if the file has not changed since (a
/// warning at most when the cache cannot be written).
pub fn store(cache: &Cache, file: &File, before: &FileId, len: u64, leaves: &[Value]) {
    let unchanged = FileId::of(file)
        .ok()
        .flatten()
        .is_some_and(|now| now.same_state(before));
    if !unchanged || leaves.len() as u64 != leaf_count(len) {
        return;
    }
    let blob: Vec<u8> = leaves.iter().flatten().copied().collect();
    if let Err(e) = cache.store(before, KIND, &params(len), &blob) {
        eprintln!("anypatch: the hash cache was not updated: {e}");
    }
}

/// The parameters an entry depends on: the tree's shape and the length.
fn params(len: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&(crate::tree::LEAF as u32).to_le_bytes());
    p.extend_from_slice(&len.to_le_bytes());
    p
}

/// The identity of `file` for the cache, taken before its bytes are read;
/// `None` for what has none (a block device).
pub fn identity(file: &File) -> io::Result<Option<FileId>> {
    FileId::of(file)
}
