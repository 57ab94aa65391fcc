//! Phase 3c: join copies that a short run split apart.
//!
//! The scan calls an all-zero new block `Zero`, and a block equal at its
//! own offset `Same`, before the matcher sees it. So a shifted region that
//! crosses a zero run (common in images) comes out as copy, zero, copy:
//! three extents, or three ops, where one copy would do. Here a span of at
//! most [`MAX_JOIN`] bytes between two copies with the same delta joins
//! them when the old bytes at that delta equal its new bytes, which is
//! checked by reading both (a few short reads per shifted region). Likewise
//! zeros that were already zero, inside a zeroed region, join the zero
//! extent around them.

use crate::input::Input;
use crate::spans::{push_span, Class, Span};
use crate::ProduceError;

/// Longest span checked for joining.
const MAX_JOIN: u64 = 1 << 20;

/// The delta of a copy class.
fn delta_of(class: Class) -> Option<i64> {
    match class {
        Class::Same => Some(0),
        Class::Moved(d) => Some(d),
        Class::Zero | Class::Changed(_) => None,
    }
}

fn copy_class(delta: i64) -> Class {
    if delta == 0 {
        Class::Same
    } else {
        Class::Moved(delta)
    }
}

/// Returns `spans` with every short `Zero`, `Same` or `Moved` span between
/// two copies of the same delta made part of them, where the bytes agree.
pub(crate) fn join_copies(
    old: &Input,
    new: &Input,
    spans: Vec<Span>,
) -> Result<Vec<Span>, ProduceError> {
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    let (mut new_buf, mut old_buf) = (Vec::new(), Vec::new());
    let mut at = 0u64;
    for (i, span) in spans.iter().enumerate() {
        let start = at;
        at += span.len;
        let prev = out.last().map(|p| p.class);
        let next = spans.get(i + 1).map(|n| n.class);
        let short = span.len <= MAX_JOIN && !matches!(span.class, Class::Changed(_));
        let joined = match (prev.and_then(delta_of), next.and_then(delta_of)) {
            (Some(d), Some(e)) if short && d == e && delta_of(span.class) != Some(d) => {
                agrees(old, new, start, span.len, d, &mut new_buf, &mut old_buf)?
                    .then(|| copy_class(d))
            }
            // Unchanged zeros inside a zeroed region: one zero extent.
            _ if short && prev == Some(Class::Zero) && next == Some(Class::Zero) => {
                new_buf.resize(span.len as usize, 0);
                new.read_exact_at(&mut new_buf, start)?;
                crate::zeros::is_zero(&new_buf).then_some(Class::Zero)
            }
            _ => None,
        };
        if let Some(class) = joined {
            push_span(&mut out, class, span.len);
            continue;
        }
        // A shifted match with delta 0 is unchanged data: one class for both.
        let class = match span.class {
            Class::Moved(0) => Class::Same,
            c => c,
        };
        push_span(&mut out, class, span.len);
    }
    Ok(out)
}

/// Whether new bytes `[start, start + len)` equal old bytes at `start + delta`.
fn agrees(
    old: &Input,
    new: &Input,
    start: u64,
    len: u64,
    delta: i64,
    new_buf: &mut Vec<u8>,
    old_buf: &mut Vec<u8>,
) -> Result<bool, ProduceError> {
    let Some(src) = start.checked_add_signed(delta) else {
        return Ok(false);
    };
    let len = len as usize;
    if old.read_clamped(old_buf, src, len)? < len {
        return Ok(false);
    }
    new_buf.resize(len, 0);
    new.read_exact_at(new_buf, start)?;
    Ok(new_buf[..] == old_buf[..len])
}
