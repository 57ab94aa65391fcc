//! Phase 3b: find data that shifted by any number of bytes (rsync's idea,
//! with a short key).
//!
//! The scan hashes [`KEY_LEN`] bytes of every full old block, from its first
//! non-zero byte (its anchor), with the rolling key (module `rolling`);
//! [`ShiftIndex`] keeps those keys sorted, with a bitset in front so that
//! most misses cost one bit test. Here the changed
//! spans of the new file are cut into pieces of at most [`PIECE`] bytes, and
//! a [`KEY_LEN`]-byte window rolls over each piece one byte at a time. When
//! the window's key names an old block, the old bytes are compared (a hash
//! only proposes), the match is extended forwards and backwards byte by
//! byte, and becomes a `Moved` span with a byte-granular delta; the window
//! restarts after it. Hashing only one window per block keeps the scan at
//! hashing speed (64 bytes of every 4 KiB) and also finds matches shorter
//! than a block, as long as they cover an old block's anchor. Windows that
//! start with a zero byte are never anchors, so they skip the lookup.
//!
//! Runs of at least [`ZERO_MIN`] zero bytes inside changed data become
//! `Zero` spans. What stays changed carries the delta of the nearest match
//! as a hint, so the encoder can code a small edit inside shifted data as a
//! bytewise delta against the shifted old bytes.
//!
//! Pieces are independent work items, and their results are joined in
//! order, so the output does not depend on the thread count. A match never
//! crosses a piece boundary; the next piece's first match extends backwards
//! to its start, so a long shifted run is cut, not lost.

use crate::exec::map_indexed;
use crate::input::{Input, Job};
use crate::rolling::{anchor, hash, key, roll, KEY_LEN};
use crate::spans::{push_span, Class, Span};
use crate::zeros::is_zero;
use crate::{Phase, ProduceError, Progress};

/// Shortest shifted match used: a copy op costs up to 16 bytes, and shorter
/// matches in structured data are mostly coincidences that zstd would have
/// coded as well.
const MIN_MATCH: usize = 2 * KEY_LEN;
/// Shortest match that a later match may not shorten by extending back.
const LONG_MATCH: usize = 8 << 10;
/// Shortest zero run inside changed data sent as a zero op.
const ZERO_MIN: usize = 256;
/// Most new bytes per work item.
pub(crate) const PIECE: u64 = 1 << 20;

/// `start..end` cut into work items of at most [`PIECE`] bytes, as
/// `(start, length)`: the matchers' unit of parallel work.
pub(crate) fn cut(start: u64, end: u64) -> impl Iterator<Item = (u64, u64)> {
    (start..end)
        .step_by(PIECE as usize)
        .map(move |s| (s, PIECE.min(end - s)))
}

/// Progress of a matching pass over `total` work items, as
/// [`map_indexed`]'s `tick` (which counts the items done).
pub(crate) fn match_ticks(total: u64, progress: &dyn Fn(Progress)) -> impl Fn(u64) + '_ {
    move |done| {
        progress(Progress {
            phase: Phase::Match,
            done,
            total,
        })
    }
}
/// First read when checking a candidate (most are short or false), and the
/// size of later reads while a match goes on.
const FIRST_READ: usize = 4 << 10;
const NEXT_READ: usize = 64 << 10;

/// Bits of the index's bitset per entry: about 3% of them are set, so 97%
/// of the windows that name no old block stop at one bit test. With 8 bits
/// (12% set), the binary searches of the false hits took most of the
/// matcher's time on recompiled code.
const BITS_PER_ENTRY: usize = 32;

/// Old blocks by key: a sorted `Vec<u64>` of [`rolling::entry`](crate::rolling::entry)s, one per key (the
/// lowest block wins, so the scan's order does not matter), behind a bitset
/// of about [`BITS_PER_ENTRY`] bits per entry. 12 bytes per indexed old
/// block in all.
#[derive(Debug)]
pub(crate) struct ShiftIndex {
    entries: Vec<u64>,
    bits: Vec<u64>,
    /// `key >> shift` is a bit number.
    shift: u32,
}

impl ShiftIndex {
    pub fn build(mut entries: Vec<u64>) -> Self {
        entries.sort_unstable();
        entries.dedup_by_key(|e| *e >> 32);
        entries.shrink_to_fit();
        let nbits = (entries.len() * BITS_PER_ENTRY)
            .next_power_of_two()
            .clamp(1 << 12, 1 << 27);
        let mut index = Self {
            bits: vec![0; nbits / 64],
            shift: 32 - nbits.trailing_zeros(),
            entries,
        };
        for i in 0..index.entries.len() {
            let bit = (index.entries[i] >> 32) as usize >> index.shift;
            index.bits[bit / 64] |= 1 << (bit % 64);
        }
        index
    }

    /// The old block whose key is `key`, if any.
    fn lookup(&self, key: u32) -> Option<u64> {
        let bit = key as usize >> self.shift;
        if self.bits[bit / 64] & (1 << (bit % 64)) == 0 {
            return None;
        }
        let i = self
            .entries
            .partition_point(|e| (*e >> 32) < u64::from(key));
        match self.entries.get(i) {
            Some(e) if (*e >> 32) as u32 == key => Some(*e & 0xFFFF_FFFF),
            _ => None,
        }
    }
}

/// Returns `spans` with every changed span refined into shifted matches
/// (`Moved`), zero runs and changed bytes with a delta hint. With
/// `in_place`, only matches whose source is at or after their destination
/// are used (spec section 4.3).
pub(crate) fn find_shifted(
    job: Job<'_>,
    index: &ShiftIndex,
    spans: Vec<Span>,
    in_place: bool,
    sample: Option<Sample>,
) -> Result<Vec<Span>, ProduceError> {
    let Job {
        old,
        new,
        block_size,
        threads,
        progress,
    } = job;
    // Work items: (new offset, length) pieces of every changed span.
    let mut pieces = Vec::new();
    let mut at = 0u64;
    for span in &spans {
        if let Class::Changed(_) = span.class {
            pieces.extend(cut(at, at + span.len).map(|(s, len)| (s, len as usize)));
        }
        at += span.len;
    }
    if pieces.is_empty() {
        return Ok(spans);
    }
    let found = map_indexed(
        threads,
        pieces.len(),
        || Matcher {
            old,
            index,
            bs: u64::from(block_size),
            in_place,
            new_buf: Vec::new(),
            old_buf: Vec::new(),
            old_at: 0,
            sample,
        },
        |m: &mut Matcher<'_>, i| {
            let (start, len) = pieces[i];
            m.new_buf.resize(len, 0);
            new.read_exact_at(&mut m.new_buf, start)?;
            m.piece(start)
        },
        &match_ticks(pieces.len() as u64, progress),
    )?;

    let mut out = Vec::with_capacity(spans.len() + found.iter().map(Vec::len).sum::<usize>());
    let mut found = found.into_iter();
    for span in spans {
        if let Class::Changed(_) = span.class {
            let mut covered = 0;
            while covered < span.len {
                let piece = found.next().expect("one result per piece, in order");
                for s in piece {
                    covered += s.len;
                    push_span(&mut out, s.class, s.len);
                }
            }
        } else {
            push_span(&mut out, span.class, span.len);
        }
    }
    Ok(out)
}

/// One worker's state: the piece being matched and a window of old bytes.
struct Matcher<'a> {
    old: &'a Input,
    index: &'a ShiftIndex,
    bs: u64,
    in_place: bool,
    new_buf: Vec<u8>,
    /// Old bytes `[old_at, old_at + old_buf.len())`.
    old_buf: Vec<u8>,
    old_at: u64,
    sample: Option<Sample>,
}

/// Which windows of a piece the matcher looks up: those that start in the
/// first `len` bytes of every `every` bytes, or less than `len` bytes after
/// the end of a match (where shifted data often goes on at another shift,
/// after an insertion). The bytes between stay changed, with the last
/// match's delta as their hint, for the encoder's prefix to find in old
/// bytes (see [`Options::trials`](crate::Options::trials)). Without the
/// stretches after matches, a file of noise with an insertion every 80 KiB
/// made a 22x larger patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample {
    pub len: usize,
    pub every: usize,
}

impl Sample {
    /// Two blocks of every 32. A stretch must hold a whole old block, so
    /// that data shifted from one always holds that block's anchor: with
    /// half a block of every 8, long moved runs were missed (a 193 MB
    /// archive's patch grew from 8.4 to 20.9 MB); one block of every 16 or
    /// 8 made patches 0-5% larger or smaller for no less time.
    pub fn of_blocks(block_size: u32) -> Self {
        let bs = block_size as usize;
        Self {
            len: 2 * bs,
            every: 32 * bs,
        }
    }
}

impl Matcher<'_> {
    /// Matches the piece in `new_buf`, which starts at new offset `start`;
    /// returns spans that tile it.
    fn piece(&mut self, start: u64) -> Result<Vec<Span>, ProduceError> {
        let n = self.new_buf.len();
        let mut out = Vec::new();
        // Start of the bytes not yet emitted, and the last match's delta.
        let mut pos = 0usize;
        let mut last: Option<i64> = None;
        // End of the last long match: a later match may extend back over
        // the spans after it (zeros, changes, and short matches, which are
        // often coincidences in repetitive data), not into it.
        let mut floor = 0usize;
        // Windows before this are looked up whatever the sample says: a
        // shifted run that ends may go on at another shift just after.
        let mut resync = 0usize;
        let emit_changed = |out: &mut Vec<Span>, len: usize, hint: Option<i64>| {
            push_span(out, Class::Changed(hint.unwrap_or(0)), len as u64);
        };
        let mut p = 0usize;
        let mut h = if n >= KEY_LEN {
            hash(&self.new_buf[..KEY_LEN])
        } else {
            0
        };
        while p + KEY_LEN <= n {
            if let Some(Sample { len, every }) = self.sample {
                if p % every >= len && p >= resync {
                    // Past the sampled stretch: on to the next one.
                    p = (p / every + 1) * every;
                    if p + KEY_LEN > n {
                        break;
                    }
                    h = hash(&self.new_buf[p..p + KEY_LEN]);
                    continue;
                }
            }
            let found = if self.new_buf[p] == 0 {
                let buf = &self.new_buf;
                if h == 0 && is_zero(&buf[p..p + KEY_LEN]) {
                    let end = p + buf[p..].iter().take_while(|&&b| b == 0).count();
                    let begin = p - buf[pos..p].iter().rev().take_while(|&&b| b == 0).count();
                    (end - begin >= ZERO_MIN).then_some((begin, end, Class::Zero))
                } else {
                    None
                }
            } else {
                self.candidate(start, p, floor, h, last)?
                    .map(|(begin, end, delta)| (begin, end, Class::Moved(delta)))
            };
            if let Some((begin, end, class)) = found {
                // Bytes before a piece's first match lean on that match.
                let hint = match class {
                    Class::Moved(delta) => last.or(Some(delta)),
                    _ => last,
                };
                if begin < pos {
                    cut_back(&mut out, (pos - begin) as u64);
                } else {
                    emit_changed(&mut out, begin - pos, hint);
                }
                push_span(&mut out, class, (end - begin) as u64);
                if let Class::Moved(delta) = class {
                    last = Some(delta);
                    if end - begin >= LONG_MATCH {
                        floor = end;
                    }
                }
                pos = end;
                p = end;
                resync = end + self.sample.map_or(0, |s| s.len);
                if p + KEY_LEN <= n {
                    h = hash(&self.new_buf[p..p + KEY_LEN]);
                }
                continue;
            }
            if p + KEY_LEN == n {
                break;
            }
            h = roll(h, self.new_buf[p], self.new_buf[p + KEY_LEN]);
            p += 1;
        }
        emit_changed(&mut out, n - pos, last);
        Ok(out)
    }

    /// Looks the window at `p` (hash `h`) up and, on a verified hit, returns
    /// the longest match `(begin, end, delta)` in piece offsets, extended
    /// back to at most `floor`. A hit also tries the last match's delta and
    /// the same offset, which win ties: repeated data then continues the
    /// copy it is in, or stays in place, rather than jumping to the first
    /// old copy of it.
    fn candidate(
        &mut self,
        start: u64,
        p: usize,
        floor: usize,
        h: u64,
        last: Option<i64>,
    ) -> Result<Option<(usize, usize, i64)>, ProduceError> {
        let Some(block) = self.index.lookup(key(h)) else {
            return Ok(None);
        };
        // The block is full and non-zero (the scan indexed it); find its
        // anchor again rather than store it.
        let at = block * self.bs;
        let bs = self.bs as usize;
        self.load(at, bs)?;
        let off = (at - self.old_at) as usize;
        let Some(j) = anchor(&self.old_buf[off..off + bs]) else {
            return Ok(None);
        };
        let dst = start + p as u64;
        let tries = [
            last.and_then(|d| dst.checked_add_signed(d)),
            Some(dst),
            Some(at + j as u64),
        ];
        let mut best: Option<(usize, usize, i64)> = None;
        for (k, src) in tries.into_iter().enumerate() {
            let Some(src) = src else { continue };
            if (self.in_place && src < dst) || tries[..k].contains(&Some(src)) {
                continue;
            }
            let fwd = self.forward(src, p)?;
            if fwd < KEY_LEN {
                continue;
            }
            let back = self.backward(src, p, floor)?;
            if fwd + back >= MIN_MATCH && best.is_none_or(|(b, e, _)| fwd + back > e - b) {
                // Offsets are below 2^63 (file sizes are i64 in Unix).
                best = Some((p - back, p + fwd, src as i64 - dst as i64));
            }
        }
        Ok(best)
    }

    /// Makes `old_buf` hold at least `want` old bytes from `at` (fewer only
    /// at the end of the file), reading them only when it does not already,
    /// and returns how many it holds from there.
    fn load(&mut self, at: u64, want: usize) -> Result<usize, ProduceError> {
        let n = self.old.len.saturating_sub(at).min(want as u64) as usize;
        let have = self.old_at..self.old_at + self.old_buf.len() as u64;
        if !have.contains(&at) || have.end - at < n as u64 {
            self.old_buf.resize(n, 0);
            self.old.read_exact_at(&mut self.old_buf, at)?;
            self.old_at = at;
        }
        Ok((self.old_at + self.old_buf.len() as u64 - at) as usize)
    }

    /// How many bytes of the piece from `p` equal the old bytes from `src`.
    fn forward(&mut self, src: u64, p: usize) -> Result<usize, ProduceError> {
        let mut done = 0;
        let mut read = FIRST_READ;
        loop {
            let want_len = self.new_buf.len() - p - done;
            let at = src + done as u64;
            if want_len == 0 || at >= self.old.len {
                return Ok(done);
            }
            let have = self.load(at, read.min(want_len))?;
            let off = (at - self.old_at) as usize;
            let old = &self.old_buf[off..off + have.min(want_len)];
            let m = common_prefix(old, &self.new_buf[p + done..]);
            done += m;
            if m < old.len() {
                return Ok(done);
            }
            read = NEXT_READ;
        }
    }

    /// How many bytes of the piece before `p`, down to `floor`, equal the
    /// old bytes before `src`.
    fn backward(&mut self, src: u64, p: usize, floor: usize) -> Result<usize, ProduceError> {
        let mut done = 0;
        let mut read = FIRST_READ;
        loop {
            let want_len = (p - floor - done).min(read) as u64;
            let end = src - done as u64;
            let len = want_len.min(end) as usize;
            if len == 0 {
                return Ok(done);
            }
            let at = end - len as u64;
            self.load(at, len)?;
            let off = (at - self.old_at) as usize;
            let old = &self.old_buf[off..off + len];
            let want = &self.new_buf[p - done - len..p - done];
            let m = common_suffix(old, want);
            done += m;
            if m < len {
                return Ok(done);
            }
            read = NEXT_READ;
        }
    }
}

/// Removes the last `len` bytes from `spans`.
fn cut_back(spans: &mut Vec<Span>, mut len: u64) {
    while len > 0 {
        let last = spans.last_mut().expect("cut within the emitted spans");
        if last.len > len {
            last.len -= len;
            return;
        }
        len -= last.len;
        spans.pop();
    }
}

/// Length of the longest common prefix of `a` and `b`.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 32 <= n && a[i..i + 32] == b[i..i + 32] {
        i += 32;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// Length of the longest common suffix of `a` and `b`.
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    let (a, b) = (
        &a[a.len().saturating_sub(b.len())..],
        &b[b.len().saturating_sub(a.len())..],
    );
    let n = a.len();
    let mut i = 0;
    while i + 32 <= n && a[n - i - 32..n - i] == b[n - i - 32..n - i] {
        i += 32;
    }
    while i < n && a[n - i - 1] == b[n - i - 1] {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rolling::entry;

    #[test]
    fn index_finds_lowest_block_per_key() {
        let a = [1u8; KEY_LEN];
        let b = [2u8; KEY_LEN];
        let entries = vec![
            entry(&a, 9).expect("small"),
            entry(&b, 4).expect("small"),
            entry(&a, 3).expect("small"),
        ];
        let idx = ShiftIndex::build(entries);
        assert_eq!(idx.lookup(key(hash(&a))), Some(3));
        assert_eq!(idx.lookup(key(hash(&b))), Some(4));
        assert_eq!(idx.lookup(key(hash(&[3u8; KEY_LEN]))), None);
    }

    #[test]
    fn common_ends() {
        assert_eq!(common_prefix(b"abcdef", b"abcxef"), 3);
        assert_eq!(common_prefix(&[5; 100], &[5; 70]), 70);
        assert_eq!(common_suffix(b"xxabc", b"zabc"), 3);
        let (mut a, b) = (vec![9u8; 100], vec![9u8; 100]);
        a[10] = 0;
        assert_eq!(common_suffix(&a, &b), 89);
    }
}
