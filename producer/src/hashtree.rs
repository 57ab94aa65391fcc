//! Whole-file BLAKE3 from independently hashed windows.
//!
//! BLAKE3 is a tree: a window of [`WINDOW`] bytes at a multiple of
//! [`WINDOW`] is a complete subtree (1024 chunks), and the last window may be
//! short. Workers hash windows in any order with `blake3::hazmat`; merging
//! their chaining values by the left-complete rule (split at
//! [`left_subtree_len`]) gives exactly `blake3::hash` of the whole file.

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};

use anypatch_format::Hash;

/// Window size: a power of two, and a whole number of BLAKE3 chunks.
pub(crate) const WINDOW: u64 = 1 << 20;

/// Starts hashing window `index` of a file `file_len` bytes long; feed it
/// the window's bytes in order, then call [`window_value`].
pub(crate) fn window_hasher(file_len: u64, index: u64) -> blake3::Hasher {
    let mut hasher = blake3::Hasher::new();
    if file_len > WINDOW {
        hasher.set_input_offset(index * WINDOW);
    }
    hasher
}

/// The value to keep for a window. A file of one window has no tree above
/// its chunks, so its value is the plain hash; otherwise it is the window's
/// chaining value.
pub(crate) fn window_value(file_len: u64, hasher: &blake3::Hasher) -> ChainingValue {
    if file_len <= WINDOW {
        *hasher.finalize().as_bytes()
    } else {
        hasher.finalize_non_root()
    }
}

/// Merges the values from [`window_value`] (one per window, in order) into
/// the BLAKE3 of the whole file.
pub(crate) fn root(file_len: u64, values: &[ChainingValue]) -> Hash {
    if file_len == 0 {
        return *blake3::hash(&[]).as_bytes();
    }
    if file_len <= WINDOW {
        return values[0];
    }
    let left = left_subtree_len(file_len);
    let l = subtree(values, 0, left);
    let r = subtree(values, left, file_len - left);
    *merge_subtrees_root(&l, &r, Mode::Hash).as_bytes()
}

/// Chaining value of the subtree over `[start, start + len)`. `start` is a
/// multiple of a power of two at least `len` rounded up, as the tree requires.
fn subtree(values: &[ChainingValue], start: u64, len: u64) -> ChainingValue {
    if len <= WINDOW {
        return values[(start / WINDOW) as usize];
    }
    let left = left_subtree_len(len);
    let l = subtree(values, start, left);
    let r = subtree(values, start + left, len - left);
    merge_subtrees_non_root(&l, &r, Mode::Hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree_hash(data: &[u8]) -> Hash {
        let len = data.len() as u64;
        let values: Vec<_> = data
            .chunks(WINDOW as usize)
            .enumerate()
            .map(|(i, w)| {
                let mut h = window_hasher(len, i as u64);
                // Two updates, as the scan feeds a window in pieces.
                let (a, b) = w.split_at(w.len() / 3);
                h.update(a);
                h.update(b);
                window_value(len, &h)
            })
            .collect();
        root(len, &values)
    }

    #[test]
    fn equals_blake3_hash() {
        let big: Vec<u8> = (0..8 * WINDOW + 5)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in [
            0,
            1,
            1024,
            1025,
            WINDOW,
            WINDOW + 1,
            2 * WINDOW,
            3 * WINDOW + 5,
            5 * WINDOW - 1,
            8 * WINDOW,
            8 * WINDOW + 5,
        ] {
            let data = &big[..len as usize];
            assert_eq!(tree_hash(data), *blake3::hash(data).as_bytes(), "len {len}");
        }
    }
}
