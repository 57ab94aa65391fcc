//! The claims spec/SYNC.md section 3 makes about the hash tree.

mod common;
use common::leaves_of;

use std::io::Write;

use anypatch_sync::hash_leaves;
use anypatch_sync::tree::{
    differing, group_count, group_values, leaf_value, root, value16, GROUP, LEAF,
};
use proptest::prelude::*;

/// Deterministic bytes that differ from leaf to leaf.
fn image(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8 ^ seed)
        .collect()
}

/// The root of the leaves, or the hash of the bytes for a one-leaf image.
fn tree_root(bytes: &[u8]) -> blake3::Hash {
    root(bytes.len() as u64, &leaves_of(bytes)).unwrap_or_else(|| blake3::hash(bytes))
}

#[test]
fn root_is_the_images_blake3_around_every_boundary() {
    let chunk = 1024;
    let mut lens = vec![0, 1, chunk - 1, chunk, chunk + 1];
    for base in [
        LEAF,
        2 * LEAF,
        3 * LEAF,
        GROUP,
        GROUP + LEAF,
        2 * GROUP,
        5 * GROUP + 3 * LEAF,
    ] {
        lens.extend([base - chunk, base - 1, base, base + 1, base + chunk]);
    }
    for len in lens {
        let bytes = image(len, 7);
        assert_eq!(tree_root(&bytes), blake3::hash(&bytes), "len {len}");
    }
}

#[test]
fn root_needs_the_bytes_only_for_one_leaf() {
    let bytes = image(LEAF, 1);
    assert_eq!(root(LEAF, &leaves_of(&bytes)), None);
    let bytes = image(LEAF + 1, 1);
    assert_eq!(
        root(LEAF + 1, &leaves_of(&bytes)),
        Some(blake3::hash(&bytes))
    );
    // The wrong number of values is no root, not a wrong one.
    assert_eq!(root(LEAF + 1, &leaves_of(&bytes)[..1]), None);
}

#[test]
fn a_full_leaf_or_group_has_the_same_value_in_images_of_any_length() {
    let long = image(7 * GROUP + 12345, 3);
    let short = &long[..3 * GROUP as usize + 5];
    let (a, b) = (leaves_of(&long), leaves_of(short));
    assert_eq!(a[..3 * 16], b[..3 * 16]);
    let (ga, gb) = (
        group_values(long.len() as u64, &a),
        group_values(short.len() as u64, &b),
    );
    assert_eq!(ga[..3], gb[..3]);
    // The short image's last group is partial: it differs, as it should.
    assert_ne!(ga[3], gb[3]);
    assert_eq!(
        differing(&ga, &gb.iter().map(value16).collect::<Vec<_>>()),
        (3..8).collect::<Vec<_>>()
    );
}

#[test]
fn one_changed_byte_changes_exactly_its_leaf_and_group() {
    let old = image(4 * GROUP + 999, 9);
    let mut new = old.clone();
    let at = 2 * GROUP as usize + 5 * LEAF as usize + 17;
    new[at] ^= 1;
    let (lo, ln) = (leaves_of(&old), leaves_of(&new));
    let changed: Vec<usize> = (0..lo.len()).filter(|&i| lo[i] != ln[i]).collect();
    assert_eq!(changed, vec![at / LEAF as usize]);
    let len = old.len() as u64;
    let theirs: Vec<[u8; 16]> = group_values(len, &ln).iter().map(value16).collect();
    assert_eq!(differing(&group_values(len, &lo), &theirs), vec![2]);
}

#[test]
fn the_same_offset_is_part_of_a_leafs_value() {
    // Equal bytes at another leaf boundary are another subtree.
    let bytes = image(LEAF, 5);
    assert_ne!(leaf_value(0, &bytes), leaf_value(LEAF, &bytes));
}

#[test]
fn hashing_a_file_gives_the_leaves_in_order_on_any_thread_count() {
    let len = 9 * GROUP + 3 * LEAF + 77;
    let bytes = image(len, 11);
    let mut file = tempfile::tempfile().expect("temporary file");
    file.write_all(&bytes).expect("write");
    let want = leaves_of(&bytes);
    for threads in [1, 2, 5] {
        let mut seen = Vec::new();
        let got = hash_leaves(&file, len, threads, |g, values| {
            seen.push(g);
            assert_eq!(
                values,
                &want[g as usize * 16..(g as usize * 16 + values.len())]
            );
            true
        })
        .expect("hash");
        assert_eq!(got, want, "{threads} threads");
        assert_eq!(seen, (0..group_count(len)).collect::<Vec<_>>());
    }
}

#[test]
fn a_file_shorter_than_its_stated_length_is_an_error() {
    let bytes = image(3 * GROUP, 2);
    let mut file = tempfile::tempfile().expect("temporary file");
    file.write_all(&bytes).expect("write");
    let err = hash_leaves(&file, 3 * GROUP + 1, 2, |_, _| true).expect_err("short file");
    assert!(
        err.to_string().contains("changed while it was hashed"),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn root_matches_blake3_on_random_lengths(len in 0u64..(3 * GROUP + 2 * LEAF), seed: u8) {
        let bytes = image(len, seed);
        prop_assert_eq!(tree_root(&bytes), blake3::hash(&bytes));
    }
}

#[test]
fn the_root_built_leaf_by_leaf_is_the_images_blake3() {
    use anypatch_sync::tree::RootBuilder;
    for leaves in [0u64, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100] {
        for extra in [0, 1, LEAF / 2] {
            let len = (leaves * LEAF + extra).saturating_sub(if extra == 0 { 0 } else { LEAF });
            let bytes = image(len, leaves as u8);
            let mut b = RootBuilder::default();
            leaves_of(&bytes).into_iter().for_each(|v| b.push(v));
            let want = (len > LEAF).then(|| blake3::hash(&bytes));
            assert_eq!(b.finish(), want, "len {len}");
        }
    }
}
