//! BLAKE3 by pieces: the value of each piece of a file (an aligned run of
//! [`piece_len`] bytes, the last one maybe short), from which the window
//! values of module `hashtree`, and so the whole-file hash, are merged.
//!
//! A piece is a complete BLAKE3 subtree: its length is a power of two and
//! a multiple of the chunk length, and it starts at a multiple of it, so in
//! a file longer than one piece its chaining value depends only on its
//! bytes and offset. Two pieces at the same offset with equal values hold
//! equal bytes (BLAKE3's collision resistance, 128-bit security): that is
//! what lets a cached old piece value stand for the old bytes. Hashing a
//! piece in one `update` uses the full SIMD width, as hashing the window
//! did.

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};

use crate::hashtree::WINDOW;

/// The piece length for a block size: 64 KiB, small enough that the copy
/// out of the page cache is still in L2 when it is hashed, compared and
/// indexed, or the block when larger, so a block never straddles two
/// pieces. Divides [`WINDOW`]; the scan reads a piece at a time.
pub(crate) fn piece_len(block_size: u32) -> u64 {
    (64u64 << 10).max(u64::from(block_size))
}

/// The value of the piece of a file `file_len` bytes long that starts at
/// `offset` and holds `bytes`: its chaining value, or the plain hash when
/// the piece is the whole file.
pub(crate) fn piece_value(file_len: u64, piece: u64, offset: u64, bytes: &[u8]) -> ChainingValue {
    if file_len <= piece {
        return *blake3::hash(bytes).as_bytes();
    }
    let mut h = blake3::Hasher::new();
    h.set_input_offset(offset);
    h.update(bytes);
    h.finalize_non_root()
}

/// The value `hashtree` keeps for window `start / WINDOW`, from the values
/// of its pieces in order.
pub(crate) fn window_value(
    file_len: u64,
    piece: u64,
    start: u64,
    values: &[ChainingValue],
) -> ChainingValue {
    if file_len <= piece {
        return values[0];
    }
    if file_len <= WINDOW {
        return merge(piece, values, file_len, true);
    }
    merge(piece, values, WINDOW.min(file_len - start), false)
}

/// The whole-file hash from the values of all pieces of a file longer than
/// one piece.
pub(crate) fn root(file_len: u64, piece: u64, values: &[ChainingValue]) -> ChainingValue {
    merge(piece, values, file_len, true)
}

/// The value of the subtree over `len` bytes whose leaves' values are
/// `values` (leaves of `leaf` bytes, the last maybe short). A root needs
/// `len > leaf`. The caller passes as many values as `len` spans.
fn merge(leaf: u64, values: &[ChainingValue], len: u64, root: bool) -> ChainingValue {
    if len <= leaf {
        return values[0];
    }
    let left = left_subtree_len(len);
    let split = (left / leaf) as usize;
    let l = merge(leaf, &values[..split], left, false);
    let r = merge(leaf, &values[split..], len - left, false);
    if root {
        *merge_subtrees_root(&l, &r, Mode::Hash).as_bytes()
    } else {
        merge_subtrees_non_root(&l, &r, Mode::Hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hashtree;

    fn values(data: &[u8], piece: u64) -> Vec<ChainingValue> {
        let len = data.len() as u64;
        data.chunks(piece as usize)
            .enumerate()
            .map(|(i, p)| piece_value(len, piece, i as u64 * piece, p))
            .collect()
    }

    #[test]
    fn windows_and_root_equal_blake3() {
        let big: Vec<u8> = (0..3 * WINDOW + 5)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for piece in [piece_len(4096), piece_len(1 << 20)] {
            for len in [
                0,
                1,
                piece - 1,
                piece,
                piece + 1,
                WINDOW - 1,
                WINDOW,
                WINDOW + 1,
                2 * WINDOW + 64 * 1024 + 3,
                3 * WINDOW + 5,
            ] {
                let data = &big[..len as usize];
                let want = *blake3::hash(data).as_bytes();
                let v = if len == 0 {
                    vec![piece_value(0, piece, 0, &[])]
                } else {
                    values(data, piece)
                };
                let per_window = (WINDOW / piece) as usize;
                let windows: Vec<_> = v
                    .chunks(per_window)
                    .enumerate()
                    .map(|(i, w)| window_value(len, piece, i as u64 * WINDOW, w))
                    .collect();
                assert_eq!(
                    hashtree::root(len, &windows),
                    want,
                    "len {len} piece {piece}"
                );
                if len > piece {
                    assert_eq!(root(len, piece, &v), want, "len {len} piece {piece}");
                }
            }
        }
    }

    #[test]
    fn equal_values_need_equal_bytes_and_offset() {
        let a = vec![5u8; 64 << 10];
        let mut b = a.clone();
        b[100] ^= 1;
        let len = 4 << 20;
        let p = piece_len(4096);
        assert_eq!(piece_value(len, p, p, &a), piece_value(len, p, p, &a));
        assert_ne!(piece_value(len, p, p, &a), piece_value(len, p, p, &b));
        assert_ne!(piece_value(len, p, p, &a), piece_value(len, p, 2 * p, &a));
        assert_ne!(
            piece_value(len, p, p, &a),
            piece_value(len, p, p, &a[..a.len() - 1])
        );
    }
}
