//! The rolling key of the shift matcher (rsync's weak hash, after
//! Rabin–Karp): a polynomial hash of a [`KEY_LEN`]-byte window that slides
//! one byte at a time, and the index entry of an old block, which keys the
//! window at its first non-zero byte (its anchor).

use crate::zeros::is_zero;

/// Bytes the rolling window and each old block's key cover.
pub(crate) const KEY_LEN: usize = 64;

/// The Rabin–Karp base: odd, so no byte's contribution is ever lost.
const BASE: u64 = 0x9E37_79B9_7F4A_7C15;
/// `BASE^KEY_LEN`: the weight a byte has when it leaves the window.
const BASE_OUT: u64 = pow(BASE, KEY_LEN);

const fn pow(mut b: u64, mut e: usize) -> u64 {
    let mut r = 1u64;
    while e > 0 {
        if e & 1 == 1 {
            r = r.wrapping_mul(b);
        }
        b = b.wrapping_mul(b);
        e >>= 1;
    }
    r
}

/// The rolling hash of `bytes`: `Σ bytes[i] · BASE^(len-1-i) mod 2^64`.
pub(crate) fn hash(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0, |h, &b| h.wrapping_mul(BASE).wrapping_add(u64::from(b)))
}

/// Slides the window one byte: drops `out`, takes `inp`.
pub(crate) fn roll(h: u64, out: u8, inp: u8) -> u64 {
    h.wrapping_mul(BASE)
        .wrapping_add(u64::from(inp))
        .wrapping_sub(u64::from(out).wrapping_mul(BASE_OUT))
}

/// 32 well-mixed bits of a window hash (the polynomial's low bits only see
/// the bytes' low bits, so fold and multiply first).
pub(crate) fn key(h: u64) -> u32 {
    ((h ^ (h >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9) >> 32) as u32
}

/// Where a block's key window starts: at its first non-zero byte, so that
/// blocks which start inside a zero run (common in images) are still found.
/// `None` when fewer than [`KEY_LEN`] bytes follow it.
pub(crate) fn anchor(block: &[u8]) -> Option<usize> {
    let chunk = block.chunks(KEY_LEN).position(|c| !is_zero(c))?;
    let j = chunk * KEY_LEN + block[chunk * KEY_LEN..].iter().position(|&b| b != 0)?;
    (j + KEY_LEN <= block.len()).then_some(j)
}

/// The index entry of a full old block: the key of its anchor window in the
/// high half, its number in the low half. `None` for blocks with no anchor
/// and past `u32::MAX`.
pub(crate) fn entry(block: &[u8], number: u64) -> Option<u64> {
    let number = u32::try_from(number).ok()?;
    let j = anchor(block)?;
    Some(u64::from(key(hash(&block[j..j + KEY_LEN]))) << 32 | u64::from(number))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_equals_direct() {
        let bytes: Vec<u8> = (0..300u32).map(|i| (i * 7919 % 251) as u8).collect();
        let mut h = hash(&bytes[..KEY_LEN]);
        for p in 1..=bytes.len() - KEY_LEN {
            h = roll(h, bytes[p - 1], bytes[p - 1 + KEY_LEN]);
            assert_eq!(h, hash(&bytes[p..p + KEY_LEN]), "at {p}");
        }
    }

    #[test]
    fn anchors_at_the_first_non_zero_byte() {
        let mut late = [0u8; 2 * KEY_LEN];
        late[KEY_LEN - 1] = 5;
        assert_eq!(anchor(&late), Some(KEY_LEN - 1));
        late[KEY_LEN - 1] = 0;
        late[KEY_LEN + 1] = 5;
        assert_eq!(anchor(&late), None);
        assert_eq!(entry(&[1u8; KEY_LEN], 1 << 32), None);
    }
}
