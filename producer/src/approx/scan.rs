//! bsdiff's approximate matching (Colin Percival, "Naive differences of
//! executable code", 2003) over one run of changed new bytes: find a long
//! exact match anywhere in the old file through the suffix array, then
//! extend the previous match forwards and this one backwards while at
//! least half the bytes agree. The extended region becomes a `Delta` op
//! (new = old + d, bytewise): in recompiled code, where only addresses and
//! offsets changed, `d` is mostly zeros and compresses to almost nothing.
//! What lies between two extended matches becomes a `Literal`.
//!
//! Unlike bsdiff, no search is made at positions the current match already
//! covers well (at most 2 of the next 32 bytes differ): on a postgresql
//! data.tar pair that took a quarter of the matching time off for a patch
//! no larger.

use anypatch_format::Op;

use super::suffix::Text;

/// A new match is taken when it is this many bytes longer than what the
/// current offset already matches over the same bytes (bsdiff's 8).
const BETTER_BY: usize = 8;
/// The current offset "covers well" a position when the next
/// [`COVER_PROBE`] bytes match at it with at most [`COVER_MISSES`]
/// differences; no search is made there.
const COVER_PROBE: usize = 32;
const COVER_MISSES: usize = 2;

/// Ops for new bytes `new` (the new file's bytes from `at`), appended to
/// `ops` (their data is the caller's to make). `hint` is where old bytes that may match
/// start, as a delta (old offset minus new offset), from the spans around.
/// Stops making matches after `max_ops` ops in `ops`: the rest is literal.
pub(crate) fn diff(text: &Text, new: &[u8], at: u64, hint: i64, max_ops: usize, ops: &mut Vec<Op>) {
    let old = &text.old[..];
    let (olen, nlen) = (old.len() as i64, new.len() as i64);
    let at = at as i64;
    // Old position minus position in `new` of the current match.
    let mut lastoffset = (at + hint).clamp(0, olen);
    let (mut scan, mut len, mut pos) = (0i64, 0i64, 0i64);
    let (mut lastscan, mut lastpos) = (0i64, lastoffset);
    let eq = |n: i64, o: i64| o >= 0 && o < olen && old[o as usize] == new[n as usize];
    while scan < nlen {
        let mut oldscore = 0i64;
        scan += len;
        let mut scsc = scan;
        while scan < nlen {
            if covered(old, new, scan, lastoffset) {
                len = 0;
                let by = COVER_PROBE / 4;
                step(&mut scan, &mut scsc, &mut oldscore, by, &eq, lastoffset);
                continue;
            }
            let (l, p) = text.longest(&new[scan as usize..]);
            (len, pos) = (l as i64, p as i64);
            while scsc < scan + len {
                oldscore += i64::from(eq(scsc, scsc + lastoffset));
                scsc += 1;
            }
            if (len == oldscore && len != 0) || len > oldscore + BETTER_BY as i64 {
                break;
            }
            step(&mut scan, &mut scsc, &mut oldscore, 1, &eq, lastoffset);
        }
        if scan >= nlen {
            scan = nlen;
            len = 0;
        }
        if len == oldscore && scan < nlen {
            continue;
        }
        // Extend the previous match forwards while half its bytes agree.
        let (mut s, mut best, mut lenf) = (0i64, 0i64, 0i64);
        let mut i = 0i64;
        while lastscan + i < scan && lastpos + i < olen {
            s += i64::from(old[(lastpos + i) as usize] == new[(lastscan + i) as usize]);
            i += 1;
            if s * 2 - i > best * 2 - lenf {
                best = s;
                lenf = i;
            }
        }
        // And this one backwards.
        let mut lenb = 0i64;
        if scan < nlen {
            let (mut s, mut best) = (0i64, 0i64);
            let mut i = 1i64;
            while scan >= lastscan + i && pos >= i {
                s += i64::from(old[(pos - i) as usize] == new[(scan - i) as usize]);
                if s * 2 - i > best * 2 - lenb {
                    best = s;
                    lenb = i;
                }
                i += 1;
            }
        }
        if lastscan + lenf > scan - lenb {
            // They overlap: split where the most bytes agree.
            let overlap = (lastscan + lenf) - (scan - lenb);
            let (mut s, mut best, mut lens) = (0i64, 0i64, 0i64);
            for i in 0..overlap {
                let n = lastscan + lenf - overlap + i;
                s += i64::from(new[n as usize] == old[(lastpos + lenf - overlap + i) as usize]);
                let n = scan - lenb + i;
                s -= i64::from(new[n as usize] == old[(pos - lenb + i) as usize]);
                if s > best {
                    best = s;
                    lens = i + 1;
                }
            }
            lenf += lens - overlap;
            lenb -= lens;
        }
        if lenf > 0 && ops.len() < max_ops {
            push(
                ops,
                Op::Delta {
                    len: lenf as u32,
                    delta: lastpos - (at + lastscan),
                },
            );
        } else {
            lenf = 0;
        }
        let lit = (scan - lenb) - (lastscan + lenf);
        if lit > 0 {
            push(ops, Op::Literal { len: lit as u32 });
        }
        lastscan = scan - lenb;
        lastpos = pos - lenb;
        lastoffset = pos - scan;
    }
}

/// Moves the scan on by `by` bytes, keeping `oldscore` the number of bytes
/// in `scan..scsc` that match at `lastoffset`.
fn step(
    scan: &mut i64,
    scsc: &mut i64,
    oldscore: &mut i64,
    by: usize,
    eq: &impl Fn(i64, i64) -> bool,
    lastoffset: i64,
) {
    for _ in 0..by {
        if *scan < *scsc && eq(*scan, *scan + lastoffset) {
            *oldscore -= 1;
        }
        *scan += 1;
    }
    if *scsc < *scan {
        *scsc = *scan;
    }
}

/// Whether the old bytes at `lastoffset` match the new bytes from `scan`
/// so well that a search there cannot find a better match.
fn covered(old: &[u8], new: &[u8], scan: i64, lastoffset: i64) -> bool {
    let (n0, o0) = (scan as usize, (scan + lastoffset) as usize);
    if scan + lastoffset < 0 || n0 + COVER_PROBE > new.len() || o0 + COVER_PROBE > old.len() {
        return false;
    }
    let misses = new[n0..n0 + COVER_PROBE]
        .iter()
        .zip(&old[o0..o0 + COVER_PROBE])
        .filter(|(a, b)| a != b)
        .count();
    misses <= COVER_MISSES
}

fn push(ops: &mut Vec<Op>, op: Op) {
    match (ops.last_mut(), op) {
        (Some(Op::Literal { len: l }), Op::Literal { len }) => *l += len,
        (Some(Op::Delta { len: l, delta: d }), Op::Delta { len, delta }) if *d == delta => {
            *l += len
        }
        _ => ops.push(op),
    }
}
