//! Phase 3 of a patch from an index: data shifted by any number of bytes.
//!
//! Runs of changed and zero spans (zero blocks inside shifted data split
//! it, and the blocks across them would be lost) are cut into pieces of at
//! most [`PIECE`] bytes (the producer's matcher's work items). In each,
//! a window of one block rolls one byte at a time (Adler-32, the index's
//! weak key); a key that some old block has is confirmed by the strong
//! hash of the window, and the window becomes a copy of that block, after
//! which the search goes on past it. A window may reach up to a block past
//! its piece's end, so a block that straddles two pieces is still found;
//! when joining, the next piece's spans are cut where that match ends. The
//! same holds at a run's end: the block shifted across it, into the
//! unchanged or moved blocks after it (zeros that line up in both files
//! end a run), is found, and the span after the run is cut where it ends.
//! Pieces are independent work items joined in
//! order, so the output does not depend on the thread count. Bytes left
//! unmatched become changed spans, but for zero runs of at least
//! [`ZERO_MIN`] bytes, which become zero spans again.
//!
//! An insertion inside a block leaves that block unmatched between copies
//! of the blocks before and after it, with more bytes than a block between
//! them. Those bytes are the old block with `m` bytes inserted at some
//! offset: every offset is tried (its weak key from prefix sums, in O(1)),
//! and one whose candidate's strong hash is the block's makes the block two
//! copies around the `m` new bytes ([`insertion`]). A deletion or an
//! overwrite inside a block cannot be found so: the bytes that are missing
//! or were replaced are not here to check the block's hash.

use anypatch_index::block::Rolling;
use anypatch_index::BlockHashes;

use crate::exec::map_indexed;
use crate::input::Input;
use crate::shift::{cut, match_ticks, PIECE};
use crate::spans::{push_span, Class, Span};
use crate::zeros::is_zero;
use crate::{ProduceError, Progress};

use super::table::BlockTable;

/// Largest block size for which insertions into a block are looked for.
const INSERT_MAX_BLOCK: usize = 64 << 10;
/// Shortest zero run left unmatched that is sent as zeros.
const ZERO_MIN: usize = 256;

/// Whether a span is searched: changed bytes, and zeros between them.
fn searched(class: Class) -> bool {
    matches!(class, Class::Changed(_) | Class::Zero)
}

/// Returns `spans` with every changed span refined into shifted copies
/// (`Moved`) and changed bytes. With `in_place`, only copies whose source
/// is at or after their destination are used (spec section 4.3).
pub(crate) fn find_shifted(
    new: &Input,
    table: &BlockTable,
    spans: Vec<Span>,
    in_place: bool,
    threads: usize,
    progress: &dyn Fn(Progress),
) -> Result<Vec<Span>, ProduceError> {
    let bs = u64::from(table.block_size);
    // Regions: maximal runs of searched spans, at least a block long and
    // not only zeros, as (start, end, index of the first span, span count).
    let mut regions = Vec::new();
    let mut at = 0u64;
    let mut i = 0;
    while i < spans.len() {
        let first = i;
        let start = at;
        let mut changed = false;
        while i < spans.len() && searched(spans[i].class) {
            changed |= spans[i].class != Class::Zero;
            at += spans[i].len;
            i += 1;
        }
        if i == first {
            at += spans[i].len;
            i += 1;
        } else if changed && at - start >= bs {
            regions.push((start, at, first, i - first));
        }
    }
    // Work items: (start, length, end of the region, the old block whose
    // copy ends where the piece starts, when known) of each piece. Regions
    // start on a block boundary, after unchanged or moved blocks.
    let mut pieces = Vec::new();
    let zero = BlockHashes::of(&vec![0u8; bs as usize], table.seed);
    let mut backs = Vec::with_capacity(regions.len());
    for &(start, end, first, count) in &regions {
        let before = first.checked_sub(1).map(|i| spans[i].class);
        let ends_at = match before {
            Some(Class::Same) => Some(start),
            Some(Class::Moved(d)) => start.checked_add_signed(d),
            _ => None,
        };
        let mut prev = ends_at
            .filter(|e| e % bs == 0 && *e >= bs)
            .map(|e| e / bs - 1);
        // After zeros that line up in both files, windows start up to a
        // block before the region: data shifted across its start is found
        // too (the zeros' span is cut where the match starts).
        let back = match (before, prev) {
            (Some(Class::Same), Some(b)) if table.hashes(b) == Some(zero) => {
                prev = None;
                spans[first - 1].len.min(bs - 1)
            }
            _ => 0,
        };
        backs.push(back);
        // Windows may reach up to a block past the region, into the span
        // after it (unchanged or moved blocks, never searched): data
        // shifted across the region's end, e.g. before zeros that line up
        // in both files, is still found, and that span is cut where the
        // match ends.
        let next = spans.get(first + count).map_or(0, |s| s.len);
        let limit = end + next.min(bs - 1);
        pieces.extend(cut(start - back, end).map(|(s, len)| (s, len, limit, prev.take())));
    }
    if pieces.is_empty() {
        return Ok(spans);
    }
    let found = map_indexed(
        threads,
        pieces.len(),
        Vec::new,
        |buf: &mut Vec<u8>, i| {
            let (start, len, limit, prev) = pieces[i];
            let n = (len + bs - 1).min(limit - start) as usize;
            buf.resize(n, 0);
            new.read_exact_at(buf, start)?;
            Ok(piece(table, buf, start, len as usize, prev, in_place))
        },
        &match_ticks(pieces.len() as u64, progress),
    )?;

    let mut out = Vec::with_capacity(spans.len() + found.iter().map(Vec::len).sum::<usize>());
    let mut found = found.into_iter();
    let mut regions = regions.into_iter().zip(backs).peekable();
    let mut i = 0;
    // Bytes of the next span that a match past a region's end covers.
    let mut over = 0;
    // What the span before a region holds, and how much of it is left.
    let mut last = (Class::Same, 0);
    while i < spans.len() {
        let Some(&((at, end, _, count), back)) = regions.peek().filter(|r| r.0 .2 == i) else {
            last = (spans[i].class, spans[i].len - over);
            push_span(&mut out, spans[i].class, spans[i].len - over);
            over = 0;
            i += 1;
            continue;
        };
        regions.next();
        i += count;
        // The first piece starts `back` bytes before the region, in the
        // span before it; what is left of that span is taken back and given
        // again: as copies where the piece matched, else as it was.
        let mut start = at - back;
        let taken = back.min(last.1);
        trim_last(&mut out, taken);
        // New offset up to which spans were emitted for this region.
        let mut done = at - taken;
        while start < end {
            let piece = found.next().expect("one result per piece, in order");
            let mut skip = done - start;
            let mut s_at = start;
            for s in piece {
                let cut = skip.min(s.len);
                skip -= cut;
                let from = s_at + cut;
                s_at += s.len;
                // Unmatched bytes before the region keep the span's class.
                let before = at.saturating_sub(from).min(s.len - cut);
                let class = match s.class {
                    Class::Moved(_) => s.class,
                    _ => last.0,
                };
                push_span(&mut out, class, before);
                push_span(&mut out, s.class, s.len - cut - before);
                done += s.len - cut;
            }
            start += PIECE.min(end - start);
        }
        debug_assert!(done >= end, "a region's pieces tile it");
        over = done - end;
    }
    Ok(out)
}

/// Takes `n` bytes off the end of `out` (whose last span holds them).
fn trim_last(out: &mut Vec<Span>, n: u64) {
    if let Some(last) = out.last_mut() {
        last.len -= n.min(last.len);
        if last.len == 0 {
            out.pop();
        }
    }
}

/// Matches one piece: `bytes` start at new offset `start`; windows start in
/// `0..len` and end within `bytes`; `prev` is the old block copied just
/// before `start`, if any. Returns spans that tile `bytes` from 0 to the end
/// of the last match or `len`, whichever is later.
fn piece(
    table: &BlockTable,
    bytes: &[u8],
    start: u64,
    len: usize,
    prev: Option<u64>,
    in_place: bool,
) -> Vec<Span> {
    let bs = table.block_size as usize;
    let mut out = Vec::new();
    let mut pos = 0; // start of the bytes not yet emitted
    let mut p = 0;
    let mut last = prev; // the last copied old block
    let mut roll = (bytes.len() >= bs).then(|| Rolling::new(&bytes[..bs]));
    while let Some(r) = roll.as_mut() {
        if p >= len || p + bs > bytes.len() {
            break;
        }
        let window = &bytes[p..p + bs];
        let dst = start + p as u64;
        // With in_place, a copy must not read before where it writes.
        let min_block = if in_place { dst.div_ceil(bs as u64) } else { 0 };
        if bytes[p] == 0 && is_zero(window) {
            // Skip to the first window that ends on a non-zero byte.
            let Some(nz) = bytes[p + bs..].iter().position(|&b| b != 0) else {
                break;
            };
            p += nz + 1;
            if p >= len {
                break;
            }
            *r = Rolling::new(&bytes[p..p + bs]);
            continue;
        }
        let hit = if !table.may_have(r.value()) {
            None
        } else {
            table.find(r.value(), window, last.map(|b| b + 1), min_block)
        };
        if let Some(b) = hit {
            let split = match last {
                Some(a) if b == a + 2 => insertion(table, b - 1, &bytes[pos..p]),
                _ => None,
            };
            match split {
                Some((i, m)) => {
                    let delta = delta_to(table, b - 1, start + pos as u64);
                    push_span(&mut out, Class::Moved(delta), i as u64);
                    unmatched(&mut out, &bytes[pos + i..pos + i + m]);
                    let tail = (p - pos - i - m) as u64;
                    push_span(&mut out, Class::Moved(delta - m as i64), tail);
                }
                None => unmatched(&mut out, &bytes[pos..p]),
            }
            // Offsets are below 2^63 (the index and the file system say so).
            let delta = (b * bs as u64) as i64 - dst as i64;
            push_span(&mut out, Class::Moved(delta), bs as u64);
            last = Some(b);
            p += bs;
            pos = p;
            if p + bs <= bytes.len() {
                *r = Rolling::new(&bytes[p..p + bs]);
            }
            continue;
        }
        if p + bs == bytes.len() {
            break;
        }
        r.roll(bytes[p], bytes[p + bs]);
        p += 1;
    }
    if pos < len {
        unmatched(&mut out, &bytes[pos..len]);
    }
    out
}

/// The delta of a copy of old block `b` to new offset `at`.
fn delta_to(table: &BlockTable, b: u64, at: u64) -> i64 {
    // Offsets are below 2^63 (the index and the file system say so).
    (b * u64::from(table.block_size)) as i64 - at as i64
}

/// Whether `gap` (new bytes between copies of old blocks `b - 1`
/// and `b + 1`) is old block `b` with bytes inserted: returns `(i, m)` when
/// `gap[..i]` and `gap[i + m..]` together are block `b` (weak key and strong
/// hash), trying every `i` from the front. With in-place patches the
/// copies keep the deltas of their neighbours, which were allowed.
fn insertion(table: &BlockTable, b: u64, gap: &[u8]) -> Option<(usize, usize)> {
    const MOD: u64 = 65521;
    let bs = table.block_size as usize;
    let want = table.hashes(b)?;
    let l = gap.len();
    // At most a block inserted: longer gaps are more than one edit. Huge
    // blocks are not tried: the prefix sums would take 32 bytes per byte.
    if l <= bs || l > 2 * bs || bs > INSERT_MAX_BLOCK {
        return None;
    }
    let m = l - bs;
    // p[k] = Σ gap[..k], q[k] = Σ t·gap[t] for t < k.
    let mut p = vec![0u64; l + 1];
    let mut q = vec![0u64; l + 1];
    for (t, &x) in gap.iter().enumerate() {
        p[t + 1] = p[t] + u64::from(x);
        q[t + 1] = q[t] + t as u64 * u64::from(x);
    }
    let n = bs as u64;
    let mut candidate = vec![0u8; bs];
    for i in 0..=bs {
        let j = i + m;
        let a = (1 + p[i] + p[l] - p[j]) % MOD;
        // Byte t of the head weighs n - t; byte t of the tail, n + m - t.
        let head = (n * p[i] - q[i]) % MOD;
        let tail = ((n + m as u64) * (p[l] - p[j]) - (q[l] - q[j])) % MOD;
        let bsum = (n + head + tail) % MOD;
        if (bsum << 16 | a) as u32 != want.weak {
            continue;
        }
        candidate[..i].copy_from_slice(&gap[..i]);
        candidate[i..].copy_from_slice(&gap[j..]);
        if anypatch_index::block::strong(&candidate, table.seed) == want.strong {
            return Some((i, m));
        }
    }
    None
}

/// Appends spans for unmatched `bytes`: zero runs of at least [`ZERO_MIN`]
/// bytes as zeros, the rest as changed.
fn unmatched(out: &mut Vec<Span>, bytes: &[u8]) {
    let mut from = 0; // start of the bytes not yet emitted
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != 0 {
            i += 1;
            continue;
        }
        let run = bytes[i..].iter().take_while(|&&b| b == 0).count();
        if run >= ZERO_MIN {
            push_span(out, Class::Changed(0), (i - from) as u64);
            push_span(out, Class::Zero, run as u64);
            from = i + run;
        }
        i += run;
    }
    push_span(out, Class::Changed(0), (bytes.len() - from) as u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of the index of `image` at 512-byte blocks.
    fn table_of(image: &[u8]) -> BlockTable {
        let bytes = anypatch_index::vectors::index_of(image, 512, 3, None);
        let mut reader =
            anypatch_index::IndexReader::new(&bytes[..], &anypatch_index::Limits::default())
                .expect("header");
        let table = BlockTable::read(&mut reader, 0).expect("entries");
        reader.finish().expect("verified");
        table
    }

    fn noise(len: usize) -> Vec<u8> {
        let mut x = 0x1234_5678_9ABC_DEF1u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn an_insertion_into_a_block_is_found_at_its_offset() {
        let image = noise(4 * 512);
        let table = table_of(&image);
        let block = &image[512..1024];
        for (at, m) in [(0usize, 1usize), (7, 30), (300, 512), (512, 5)] {
            let mut gap = block[..at].to_vec();
            gap.extend(std::iter::repeat_n(0xAB, m));
            gap.extend_from_slice(&block[at..]);
            let (i, found_m) = insertion(&table, 1, &gap).expect("found");
            assert_eq!(found_m, m);
            // Another offset is right too when the inserted bytes repeat
            // the block's: what matters is that the split rebuilds it.
            let mut rebuilt = gap[..i].to_vec();
            rebuilt.extend_from_slice(&gap[i + m..]);
            assert_eq!(rebuilt, block, "at {at}, +{m}");
        }
        // Not an insertion: a byte changed, or more than a block inserted.
        let mut changed = block.to_vec();
        changed[100] ^= 1;
        changed.push(9);
        assert_eq!(insertion(&table, 1, &changed), None);
        let long = [block, &[1u8; 513][..]].concat();
        assert_eq!(insertion(&table, 1, &long), None);
    }

    #[test]
    fn unmatched_bytes_keep_long_zero_runs_as_zeros() {
        let mut bytes = vec![5u8; 10];
        bytes.extend([0u8; ZERO_MIN]);
        bytes.extend([7u8; 3]);
        bytes.extend([0u8; ZERO_MIN - 1]);
        let mut out = Vec::new();
        unmatched(&mut out, &bytes);
        let got: Vec<_> = out.iter().map(|s| (s.class, s.len)).collect();
        assert_eq!(
            got,
            [
                (Class::Changed(0), 10),
                (Class::Zero, ZERO_MIN as u64),
                (Class::Changed(0), 3 + ZERO_MIN as u64 - 1),
            ]
        );
    }

    #[test]
    fn a_piece_tiles_its_bytes_and_finds_a_shifted_block() {
        let image = noise(8 * 512);
        let table = table_of(&image);
        // Old blocks 2..6 shifted by 3 bytes behind other bytes.
        let mut new = vec![9u8; 3];
        new.extend_from_slice(&image[1024..3072]);
        let spans = piece(&table, &new, 1000, new.len(), None, false);
        let total: u64 = spans.iter().map(|s| s.len).sum();
        assert_eq!(total, new.len() as u64);
        assert_eq!(
            spans[0],
            Span {
                class: Class::Changed(0),
                len: 3
            }
        );
        assert_eq!(
            spans[1],
            Span {
                class: Class::Moved(1024 - 1003),
                len: 2048
            }
        );
        // In place, a copy may not read before where it writes.
        let spans = piece(&table, &new, 5000, new.len(), None, true);
        assert!(spans
            .iter()
            .all(|s| !matches!(s.class, Class::Moved(d) if d < 0)));
    }
}
