//! The hash tree both sides of a sync compare (spec/SYNC.md section 3).
//!
//! Its leaves are 64 KiB and its values are BLAKE3's own chaining values:
//! a leaf's value is the value of that leaf as a subtree of the image's
//! BLAKE3 tree, and a group's (1 MiB) is the merge of its leaves'. So the
//! values compared are the ones the whole-file hash is made of, and
//! [`root`] turns the leaf values back into the image's BLAKE3 without
//! reading a byte again.

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};
/// The BLAKE3 of a whole image.
pub use blake3::Hash;

/// Bytes in a leaf: a power of two multiple of BLAKE3's 1 KiB chunk, so a
/// full leaf at a multiple of it is a complete subtree of any image.
pub const LEAF: u64 = 1 << 16;

/// Leaves in a group: the level the sender sends first (1 MiB each).
pub const GROUP_LEAVES: usize = 16;

/// Bytes in a group.
pub const GROUP: u64 = LEAF * GROUP_LEAVES as u64;

/// A BLAKE3 chaining value: the non-root hash of a subtree.
pub type Value = ChainingValue;

/// The number of leaves of an image of `len` bytes (an empty image has
/// none; the last leaf holds what is left).
pub fn leaf_count(len: u64) -> u64 {
    len.div_ceil(LEAF)
}

/// The number of groups of an image of `len` bytes.
pub fn group_count(len: u64) -> u64 {
    len.div_ceil(GROUP)
}

/// The bytes leaf `leaf` covers in an image of `len` bytes.
pub fn leaf_range(len: u64, leaf: u64) -> std::ops::Range<u64> {
    let start = leaf.saturating_mul(LEAF).min(len);
    start..start.saturating_add(LEAF).min(len)
}

/// The value of one leaf: `bytes` are the leaf starting at `offset` (a
/// multiple of [`LEAF`]), all of it (1 to [`LEAF`] bytes).
///
/// # Panics
/// If `bytes` is empty or longer than a leaf, or `offset` is not a leaf
/// boundary: the callers cut leaves with [`leaf_range`], never from input.
pub fn leaf_value(offset: u64, bytes: &[u8]) -> Value {
    assert!(
        offset % LEAF == 0 && !bytes.is_empty() && bytes.len() as u64 <= LEAF,
        "a leaf is 1..=LEAF bytes at a multiple of LEAF"
    );
    blake3::Hasher::new()
        .set_input_offset(offset)
        .update(bytes)
        .finalize_non_root()
}

/// The value of the subtree of `len` bytes (`len > 0`) that starts at a
/// leaf boundary and whose leaves' values are `leaves`, merged as BLAKE3
/// merges: the left part is the largest power of two number of chunks
/// below `len`, which for `len > LEAF` is a whole number of leaves.
fn subtree(len: u64, leaves: &[Value]) -> Value {
    if len <= LEAF {
        return leaves[0];
    }
    let (left, right) = split(len, leaves);
    merge_subtrees_non_root(
        &subtree(left.0, left.1),
        &subtree(right.0, right.1),
        Mode::Hash,
    )
}

type Part<'a> = (u64, &'a [Value]);

fn split(len: u64, leaves: &[Value]) -> (Part<'_>, Part<'_>) {
    let left = left_subtree_len(len);
    let (l, r) = leaves.split_at((left / LEAF) as usize);
    ((left, l), (len - left, r))
}

/// The BLAKE3 of an image of `len` bytes from its leaves' values, or
/// `None` when `len <= LEAF`: then the only leaf is the root, whose hash is
/// not a function of its non-root value (hash those bytes with
/// `blake3::hash`). `leaves` must be [`leaf_count`]`(len)` values.
pub fn root(len: u64, leaves: &[Value]) -> Option<blake3::Hash> {
    if len <= LEAF || leaves.len() as u64 != leaf_count(len) {
        return None;
    }
    let (left, right) = split(len, leaves);
    Some(merge_subtrees_root(
        &subtree(left.0, left.1),
        &subtree(right.0, right.1),
        Mode::Hash,
    ))
}

/// The BLAKE3 of an image from its leaves' values given one at a time, in
/// order, holding O(log n) values (BLAKE3's own stack of subtrees: a leaf
/// is merged into it only when the next one arrives, as the last merge
/// is the root's).
#[derive(Debug, Default, Clone)]
pub struct RootBuilder {
    stack: Vec<Value>,
    /// The latest leaf, not yet merged.
    last: Option<Value>,
    leaves: u64,
}

impl RootBuilder {
    /// The next leaf's value.
    pub fn push(&mut self, value: Value) {
        if let Some(mut cv) = self.last.take() {
            // `leaves` counts the leaves merged so far, this one included.
            let mut total = self.leaves;
            while total & 1 == 0 {
                let Some(left) = self.stack.pop() else { break };
                cv = merge_subtrees_non_root(&left, &cv, Mode::Hash);
                total >>= 1;
            }
            self.stack.push(cv);
        }
        self.last = Some(value);
        self.leaves += 1;
    }

    /// The root, or `None` for an image of at most one leaf (hash its
    /// bytes instead).
    pub fn finish(&self) -> Option<blake3::Hash> {
        let mut right = self.last?;
        let (&first, rest) = self.stack.split_first()?;
        for left in rest.iter().rev() {
            right = merge_subtrees_non_root(left, &right, Mode::Hash);
        }
        Some(merge_subtrees_root(&first, &right, Mode::Hash))
    }
}

/// The value of each group of an image of `len` bytes, from its leaves'.
/// `leaves` must be [`leaf_count`]`(len)` values.
pub fn group_values(len: u64, leaves: &[Value]) -> Vec<Value> {
    leaves
        .chunks(GROUP_LEAVES)
        .enumerate()
        .map(|(g, group)| {
            let start = g as u64 * GROUP;
            subtree((len - start).min(GROUP), group)
        })
        .collect()
}

/// The value of group `g` of an image of `len` bytes, from the values
/// of its leaves (`leaves` starts at the group's first leaf and holds at
/// least its leaves). `None` if the image has no such group.
pub fn group_value(len: u64, g: u64, leaves: &[Value]) -> Option<Value> {
    let start = g.checked_mul(GROUP).filter(|&s| s < len)?;
    let group_len = (len - start).min(GROUP);
    let n = leaf_count(group_len) as usize;
    leaves.get(..n).map(|l| subtree(group_len, l))
}

/// The first 16 bytes of a value: what goes on the wire (the final check
/// uses whole values).
pub fn value16(value: &Value) -> [u8; 16] {
    let mut out = [0; 16];
    out.copy_from_slice(&value[..16]);
    out
}

/// The groups whose values differ between two trees, in order. A group
/// present in only one of them (the images' lengths differ) differs.
pub fn differing(ours: &[Value], theirs: &[[u8; 16]]) -> Vec<u64> {
    (0..ours.len().max(theirs.len()))
        .filter(|&g| match (ours.get(g), theirs.get(g)) {
            (Some(a), Some(b)) => value16(a) != *b,
            _ => true,
        })
        .map(|g| g as u64)
        .collect()
}
