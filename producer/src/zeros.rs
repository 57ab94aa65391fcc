//! The all-zero test every phase uses.

use crate::hashtree::WINDOW;

/// All-zero bytes to compare blocks against (`memcmp` is the fastest test).
static ZEROS: [u8; WINDOW as usize] = [0; WINDOW as usize];

/// Whether `bytes` (at most [`WINDOW`] of them) are all zero.
pub(crate) fn is_zero(bytes: &[u8]) -> bool {
    bytes == &ZEROS[..bytes.len()]
}
