//! The all-zero test every phase uses.

use crate::hashtree::WINDOW;

/// All-zero bytes to compare blocks against (`memcmp` is the fastest test).
static ZEROS: [u8; WINDOW as usize] = [0; WINDOW as usize];

/// Whether `bytes`, of any length, are all zero.
pub(crate) fn is_zero(bytes: &[u8]) -> bool {
    // Callers pass gaps of any length (a zero run between two deltas can
    // be longer than a window): compare a window at a time.
    bytes.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_length_is_tested_whole() {
        let w = WINDOW as usize;
        for len in [0, 1, w - 1, w, w + 1, 3 * w + 17] {
            let mut v = vec![0u8; len];
            assert!(is_zero(&v), "{len}");
            if len > 0 {
                *v.last_mut().expect("not empty") = 1;
                assert!(!is_zero(&v), "{len}: the last byte was not looked at");
            }
        }
    }
}
