//! What the receiver finds in its own image (spec/SYNC.md section 6).

mod common;
use common::noise;

use anypatch_index::block::strong;
use anypatch_sync::matcher::{Matcher, Source};
use anypatch_sync::tree::{leaf_count, leaf_range, LEAF};
use anypatch_sync::wire::{BlockKey, BLOCK};
use proptest::prelude::*;

const SEED: u64 = 0x5eed;

/// The keys the sender would send for leaf `leaf` of `new`.
fn keys(new: &[u8], leaf: u64) -> Vec<BlockKey> {
    let r = leaf_range(new.len() as u64, leaf);
    new[r.start as usize..r.end as usize]
        .chunks(BLOCK as usize)
        .map(|b| BlockKey::of(b, SEED))
        .collect()
}

fn plan(m: &mut Matcher, old: &[u8], new: &[u8], leaf: u64) -> Vec<Source> {
    m.plan(old, new.len() as u64, leaf, &keys(new, leaf))
        .expect("plan")
}

fn found(sources: &[Source]) -> usize {
    sources
        .iter()
        .filter(|s| matches!(s, Source::Old(_)))
        .count()
}

#[test]
fn unchanged_blocks_are_found_where_they_are() {
    let old = noise(3 * LEAF as usize, 1);
    let mut new = old.clone();
    new[LEAF as usize + 5000] ^= 0xff; // block 1 of leaf 1
    let sources = plan(&mut Matcher::new(SEED), &old, &new, 1);
    let want: Vec<Source> = (0..16)
        .map(|i| {
            if i == 1 {
                Source::Want
            } else {
                Source::Old(LEAF + i * BLOCK)
            }
        })
        .collect();
    assert_eq!(sources, want);
}

#[test]
fn data_shifted_by_a_few_bytes_either_way_is_found() {
    let old = noise(4 * LEAF as usize, 2);
    for shift in [1usize, 100, 4095, 4097] {
        // Inserted: every block of leaf 2 comes from `shift` bytes earlier.
        let mut new = noise(shift, 3);
        new.extend_from_slice(&old);
        let sources = plan(&mut Matcher::new(SEED), &old, &new, 2);
        assert_eq!(found(&sources), 16, "inserted {shift}");
        assert_eq!(sources[0], Source::Old(2 * LEAF - shift as u64));
        // Deleted: from `shift` bytes later.
        let new = &old[shift..];
        let sources = plan(&mut Matcher::new(SEED), &old, new, 1);
        assert_eq!(found(&sources), 16, "deleted {shift}");
        assert_eq!(sources[3], Source::Old(LEAF + 3 * BLOCK + shift as u64));
    }
}

#[test]
fn a_block_moved_from_a_leaf_looked_at_before_is_found_unless_forbidden() {
    let old = noise(8 * LEAF as usize, 4);
    let mut new = old.clone();
    // Leaf 1 changes; leaf 6 gets a block of leaf 1's old bytes.
    let src = (LEAF + 2 * BLOCK) as usize;
    let dst = (6 * LEAF + 7 * BLOCK) as usize;
    new[LEAF as usize..2 * LEAF as usize].copy_from_slice(&noise(LEAF as usize, 50));
    new[dst..dst + BLOCK as usize].copy_from_slice(&old[src..src + BLOCK as usize]);

    let mut m = Matcher::new(SEED);
    assert_eq!(found(&plan(&mut m, &old, &new, 1)), 0);
    assert_eq!(plan(&mut m, &old, &new, 6)[7], Source::Old(src as u64));

    // In place, leaf 1 is rewritten by the time leaf 6 is built.
    let mut m = Matcher::new(SEED);
    plan(&mut m, &old, &new, 1);
    m.forbid_below(5 * LEAF);
    assert_eq!(plan(&mut m, &old, &new, 6)[7], Source::Want);
}

#[test]
fn fresh_leaves_are_not_all_searched_and_a_shift_after_them_is_still_found() {
    // 40 leaves of fresh data, then the old image from leaf 40 shifted by
    // a deletion of 100 bytes (as a file system's new files, then an edit).
    let leaves = 80;
    let old = noise(leaves * LEAF as usize, 11);
    let fresh = 40;
    let mut new = noise(fresh * LEAF as usize, 12);
    new.extend_from_slice(&old[fresh * LEAF as usize + 100..]);
    let mut m = Matcher::new(SEED);
    for leaf in 0..fresh as u64 {
        assert_eq!(found(&plan(&mut m, &old, &new, leaf)), 0, "leaf {leaf}");
    }
    // Every one of them searched would be 40 x 192 KiB of positions.
    let full = fresh as u64 * 3 * LEAF;
    assert!(
        m.positions_tested() < full / 3,
        "{} positions tested in fresh data (all: {full})",
        m.positions_tested()
    );
    // The shift is found within 17 leaves, and in every full leaf after.
    let first = (fresh as u64..leaf_count(new.len() as u64))
        .find(|&leaf| found(&plan(&mut m, &old, &new, leaf)) == 16)
        .expect("the shift is found");
    assert!(first <= fresh as u64 + 16, "found from leaf {first}");
    for leaf in first + 1..leaf_count(new.len() as u64) - 1 {
        let sources = plan(&mut m, &old, &new, leaf);
        assert_eq!(found(&sources), 16, "leaf {leaf}");
        assert_eq!(sources[0], Source::Old(leaf * LEAF + 100));
    }
}

#[test]
fn the_short_last_block_is_found_only_where_it_was() {
    let old = noise(LEAF as usize + 1000, 6);
    let new = old.clone();
    let sources = plan(&mut Matcher::new(SEED), &old, &new, 1);
    assert_eq!(sources, vec![Source::Old(LEAF)]);
    let mut other = noise(1, 7);
    other.extend_from_slice(&old);
    let sources = plan(&mut Matcher::new(SEED), &old, &other, 1);
    assert_eq!(sources, vec![Source::Want]);
}

#[test]
fn keys_that_do_not_fit_the_leaf_are_refused() {
    let old = noise(2 * LEAF as usize, 8);
    let k = keys(&old, 0);
    let err = Matcher::new(SEED)
        .plan(&old[..], 2 * LEAF, 0, &k[..15])
        .expect_err("15 keys");
    assert!(
        err.to_string()
            .contains("15 block keys for leaf 0, which has 16"),
        "{err}"
    );
    let err = Matcher::new(SEED)
        .plan(&old[..], 2 * LEAF, 2, &k)
        .expect_err("no leaf 2");
    assert!(err.to_string().contains("has 0 blocks"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Whatever the edits, every block found is a window of the old image
    /// with that block's bytes' strong hash, inside the image.
    #[test]
    fn every_source_found_has_the_blocks_hash(
        seed: u64,
        edits in proptest::collection::vec((0usize..(3 * LEAF as usize), 0usize..300, any::<bool>()), 0..12),
    ) {
        let old = noise(3 * LEAF as usize, seed);
        let mut new = old.clone();
        for (at, n, insert) in edits {
            let at = at.min(new.len());
            if insert {
                let bytes = noise(n, seed ^ at as u64);
                new.splice(at..at, bytes);
            } else {
                let end = (at + n).min(new.len());
                new.drain(at..end);
            }
        }
        let mut m = Matcher::new(SEED);
        for leaf in 0..leaf_count(new.len() as u64) {
            let k = keys(&new, leaf);
            let sources = m.plan(&old[..], new.len() as u64, leaf, &k).expect("plan");
            let start = leaf_range(new.len() as u64, leaf).start;
            for (i, s) in sources.iter().enumerate() {
                if let Source::Old(o) = *s {
                    let len = (new.len() as u64 - start - i as u64 * BLOCK).min(BLOCK) as usize;
                    let o = o as usize;
                    prop_assert!(o + len <= old.len());
                    prop_assert_eq!(strong(&old[o..o + len], SEED), k[i].strong);
                }
            }
        }
    }
}

#[test]
fn a_window_with_the_same_rolling_key_is_not_taken_without_its_strong_hash() {
    let mut old = noise(3 * LEAF as usize, 9);
    // +1, -2, +1 on three bytes in a row keeps both Adler-32 sums.
    let at = (LEAF + 3 * BLOCK + 100) as usize;
    old[at..at + 3].copy_from_slice(&[10, 10, 10]);
    let mut new = old.clone();
    new[at..at + 3].copy_from_slice(&[11, 8, 11]);
    let block = (LEAF + 3 * BLOCK) as usize..(LEAF + 4 * BLOCK) as usize;
    assert_eq!(
        BlockKey::of(&old[block.clone()], SEED).weak,
        BlockKey::of(&new[block], SEED).weak,
        "the test needs a collision of the rolling key"
    );
    let sources = plan(&mut Matcher::new(SEED), &old, &new, 1);
    assert_eq!(sources[3], Source::Want);
    assert_eq!(found(&sources), 15);
}
