//! The old-block index: where each distinct old block content first occurs.
//!
//! A sorted `Vec<(xxh3, offset)>`: 16 bytes per indexed 4 KiB old block, no
//! per-entry allocation, and a binary search per lookup. xxh3 only proposes a
//! match; the matcher compares the bytes before using one.

/// Sorted, one entry per distinct hash.
#[derive(Debug)]
pub(crate) struct OldIndex {
    entries: Vec<(u64, u64)>,
}

impl OldIndex {
    /// Sorts `entries` and keeps, for each hash, the lowest offset, so the
    /// index does not depend on the order the scan produced them in.
    pub fn build(mut entries: Vec<(u64, u64)>) -> Self {
        entries.sort_unstable();
        entries.dedup_by_key(|e| e.0);
        entries.shrink_to_fit();
        Self { entries }
    }

    /// The old offset of a block hashing to `hash`, if any.
    pub fn lookup(&self, hash: u64) -> Option<u64> {
        self.entries
            .binary_search_by_key(&hash, |e| e.0)
            .ok()
            .map(|i| self.entries[i].1)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_lowest_offset_and_finds() {
        let idx = OldIndex::build(vec![(7, 8192), (3, 0), (7, 4096), (9, 12288), (7, 16384)]);
        assert_eq!(idx.len(), 3);
        assert_eq!(idx.lookup(7), Some(4096));
        assert_eq!(idx.lookup(3), Some(0));
        assert_eq!(idx.lookup(9), Some(12288));
        assert_eq!(idx.lookup(5), None);
    }
}
