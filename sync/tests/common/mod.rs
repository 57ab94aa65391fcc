//! What the sync tests share: test images and their leaves.
#![allow(dead_code)] // each test file uses its own part

use anypatch_sync::tree::{leaf_count, leaf_range, leaf_value, Value};

/// Bytes that look random (xorshift): they neither compress nor repeat.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The values of the leaves of `bytes`, computed leaf by leaf.
pub fn leaves_of(bytes: &[u8]) -> Vec<Value> {
    let len = bytes.len() as u64;
    (0..leaf_count(len))
        .map(|l| {
            let r = leaf_range(len, l);
            leaf_value(r.start, &bytes[r.start as usize..r.end as usize])
        })
        .collect()
}
