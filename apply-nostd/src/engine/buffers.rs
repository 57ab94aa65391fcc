//! Zero runs hashed without a buffer of their own. (Buffers are sized
//! exactly with `crate::layout::frames::{sized, reserve_exactly}`.)

use super::*;

/// Adds `len` zero bytes to `hasher`, if there is one.
pub(super) fn hash_zeros(hasher: Option<&mut TreeHasher>, len: u64) {
    if let Some(h) = hasher {
        let mut left = len;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64) as usize;
            h.update(&ZEROS[..n]);
            left -= n as u64;
        }
    }
}
