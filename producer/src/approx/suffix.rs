//! The suffix array of the whole old file, and the longest-match search
//! over it that the approximate matcher (module `scan`) asks at new
//! positions.
//!
//! The array is built by `divsufsort` (4 bytes per old byte, `i32`
//! positions) beside the old bytes themselves (1 byte per old byte), so the
//! index costs 5 bytes per old byte: callers cap the old file's length
//! ([`super::MAX_OLD_LEN`]) before building one. A table of where each
//! two-byte prefix starts in the array (256 KiB) skips the first sixteen
//! steps of every search.

/// Longest match a search reports: matches go on being extended byte by
/// byte by the scan, so a cap only bounds each search's cost on data made
/// of one repeated pattern, where every comparison would run to its end.
pub(crate) const MAX_MATCH: usize = 1 << 12;

/// The old file's bytes and their sorted suffixes.
pub(crate) struct Text {
    pub old: Vec<u8>,
    sa: Vec<i32>,
    /// `bucket[k]..bucket[k + 1]`: the suffixes whose first two bytes are
    /// `k` (big endian); a one-byte suffix `b` counts as `b, 0`.
    bucket: Vec<u32>,
}

impl Text {
    /// Sorts the suffixes of `old`, which must be shorter than 2 GiB.
    pub fn build(old: Vec<u8>) -> Self {
        debug_assert!(old.len() < i32::MAX as usize);
        let mut sa = vec![0i32; old.len()];
        if !old.is_empty() {
            divsufsort::sort_in_place(&old, &mut sa);
        }
        let mut bucket = vec![0u32; (1 << 16) + 1];
        for &p in &sa {
            bucket[key(&old[p as usize..]) + 1] += 1;
        }
        for k in 0..1 << 16 {
            bucket[k + 1] += bucket[k];
        }
        Self { old, sa, bucket }
    }

    /// The longest prefix of `pat` (at most [`MAX_MATCH`] bytes) found in
    /// the old file: `(length, old position)`, length 0 when not even its
    /// first two bytes are there.
    pub fn longest(&self, pat: &[u8]) -> (usize, usize) {
        let pat = &pat[..pat.len().min(MAX_MATCH)];
        if pat.len() < 2 || self.sa.is_empty() {
            return (0, 0);
        }
        let k = key(pat);
        let (mut l, mut r) = (self.bucket[k] as usize, self.bucket[k + 1] as usize);
        let (lo, hi) = (l, r);
        if l == r {
            return (0, 0);
        }
        // Binary search for where `pat` sorts, skipping the prefix known to
        // be shared with both bounds.
        let (mut llcp, mut rlcp) = (2usize, 2usize);
        while l < r {
            let m = l + (r - l) / 2;
            let s = self.suffix(m);
            let from = llcp.min(rlcp).min(s.len());
            let k = from + common(&s[from..], &pat[from..]);
            if k == pat.len() {
                return (k, self.sa[m] as usize);
            }
            if k == s.len() || s[k] < pat[k] {
                l = m + 1;
                llcp = k;
            } else {
                r = m;
                rlcp = k;
            }
        }
        let mut best = (0, 0);
        for i in [l.wrapping_sub(1), l] {
            if (lo..hi).contains(&i) {
                let n = common(self.suffix(i), pat);
                if n > best.0 {
                    best = (n, self.sa[i] as usize);
                }
            }
        }
        best
    }

    fn suffix(&self, i: usize) -> &[u8] {
        &self.old[self.sa[i] as usize..]
    }
}

/// The bucket of a suffix: its first two bytes, big endian.
fn key(s: &[u8]) -> usize {
    (usize::from(s[0]) << 8) | usize::from(s.get(1).copied().unwrap_or(0))
}

/// Length of the common prefix of `a` and `b`, eight bytes at a time.
pub(crate) fn common(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n {
        let x = u64::from_le_bytes(a[i..i + 8].try_into().expect("8 bytes"));
        let y = u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if x != y {
            return i + ((x ^ y).trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The longest match by brute force.
    fn naive(old: &[u8], pat: &[u8]) -> usize {
        (0..old.len())
            .map(|p| common(&old[p..], pat))
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn finds_the_longest_match() {
        let mut x = 12345u32;
        let mut old: Vec<u8> = (0..5000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                b"abcd"[(x >> 16) as usize % 4]
            })
            .collect();
        old.extend_from_slice(&[0; 300]);
        let text = Text::build(old.clone());
        for start in (0..old.len()).step_by(97) {
            let mut pat = old[start..(start + 40).min(old.len())].to_vec();
            if let Some(b) = pat.get_mut(25) {
                *b = b'z';
            }
            let (len, pos) = text.longest(&pat);
            assert_eq!(len, naive(&old, &pat), "at {start}");
            assert_eq!(common(&old[pos..], &pat), len);
        }
        assert_eq!(text.longest(b"zz"), (0, 0));
        assert_eq!(text.longest(&[0; 5000]).0, 300);
    }

    #[test]
    fn one_byte_suffix_and_empty_text() {
        let text = Text::build(b"ba".to_vec());
        assert_eq!(text.longest(b"a\0"), (1, 1));
        assert_eq!(Text::build(Vec::new()).longest(b"ab"), (0, 0));
    }
}
