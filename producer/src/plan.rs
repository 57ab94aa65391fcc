//! Phase 4: turn classified spans into extents and data segments (sequential
//! and cheap: it only looks at spans, never at file bytes).
//!
//! Same spans become `Copy { delta: 0 }`, moved spans `Copy { delta }`, zero
//! spans `Zero`, and changed spans data segments of at most `segment_len`
//! new bytes. Two changed regions at most `merge_gap` bytes apart (and
//! never less than [`MIN_MERGE_GAP_BLOCKS`] blocks) share a segment, the
//! gap becoming copy or zero ops: a separate segment costs a 32-byte hash,
//! its entry, an extent and a zstd frame, while a copy op costs about 5
//! bytes. So a shifted match shorter than the gap becomes a copy op, a
//! longer one a copy extent. Larger gaps cost the applier reads of
//! unchanged bytes that an in-place apply could otherwise skip.

use crate::spans::{Class, Span};

/// Changed regions closer than this many blocks are always merged.
pub(crate) const MIN_MERGE_GAP_BLOCKS: u64 = 4;
/// Most parts in one segment. A part becomes at most `2 + len / block_size`
/// ops of at most 16 bytes, so with 4 MiB of 512-byte blocks the ops block
/// stays under `2 × 16384 × 16 + 8192 × 16` bytes, well within `MAX_OPS_LEN`.
pub(crate) const MAX_PARTS: usize = 16384;

/// One extent of the new file, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Item {
    Copy {
        len: u64,
        delta: i64,
    },
    Zero {
        len: u64,
    },
    /// Index into [`Plan::segments`].
    Segment(usize),
}

/// Part of a data segment, in order. Lengths are at most the segment length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// New bytes to encode as literal or delta ops; `hint` is the delta of
    /// old bytes that may be similar (see [`Class::Changed`]).
    Changed {
        len: u32,
        hint: i64,
    },
    Copy {
        len: u32,
        delta: i64,
    },
    Zero(u32),
}

impl Part {
    pub fn len(&self) -> u32 {
        match *self {
            Part::Changed { len, .. } | Part::Copy { len, .. } | Part::Zero(len) => len,
        }
    }
}

/// A data segment to encode: new bytes `[start, start + len)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentPlan {
    pub start: u64,
    pub len: u32,
    pub parts: Vec<Part>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub items: Vec<Item>,
    pub segments: Vec<SegmentPlan>,
}

/// A span placed in the new file: bytes `[start, end)`.
#[derive(Debug, Clone, Copy)]
struct Placed {
    class: Class,
    start: u64,
    end: u64,
}

/// Builds the plan. `spans` tile the new file.
pub(crate) fn plan(spans: &[Span], block_size: u32, segment_len: u32, merge_gap: u32) -> Plan {
    let max_gap = u64::from(merge_gap).max(MIN_MERGE_GAP_BLOCKS * u64::from(block_size));
    let mut b = Builder {
        plan: Plan::default(),
        pending: None,
        gap: Vec::new(),
        gap_len: 0,
        segment_len: u64::from(segment_len),
    };
    let mut start = 0u64;
    for span in spans {
        let placed = Placed {
            class: span.class,
            start,
            end: start + span.len,
        };
        start = placed.end;
        if let Class::Changed(hint) = span.class {
            b.changed(placed, hint);
        } else if b.pending.is_some() {
            b.gap.push(placed);
            b.gap_len += placed.end - placed.start;
            let seg_end = b.pending.as_ref().map_or(0, |s| s.start + b.segment_len);
            if b.gap_len >= max_gap || b.gap.len() >= MAX_PARTS / 4 || placed.end >= seg_end {
                b.flush();
            }
        } else {
            b.extent(placed);
        }
    }
    b.flush();
    b.plan
}

struct Builder {
    plan: Plan,
    /// The open segment, which may still absorb a gap and more changes.
    pending: Option<SegmentPlan>,
    /// Unchanged spans after `pending`, not yet committed to either side.
    gap: Vec<Placed>,
    /// Bytes in `gap`.
    gap_len: u64,
    segment_len: u64,
}

impl Builder {
    /// Closes the open segment and emits the gap after it as extents.
    fn flush(&mut self) {
        if let Some(seg) = self.pending.take() {
            self.plan
                .items
                .push(Item::Segment(self.plan.segments.len()));
            self.plan.segments.push(seg);
        }
        self.gap_len = 0;
        for span in std::mem::take(&mut self.gap) {
            self.extent(span);
        }
    }

    fn extent(&mut self, span: Placed) {
        let len = span.end - span.start;
        let item = match span.class {
            Class::Same => Item::Copy { len, delta: 0 },
            Class::Moved(delta) => Item::Copy { len, delta },
            Class::Zero => Item::Zero { len },
            Class::Changed(_) => unreachable!("changed spans go to segments"),
        };
        match (self.plan.items.last_mut(), item) {
            (Some(Item::Copy { len: l, delta: d }), Item::Copy { len, delta }) if *d == delta => {
                *l += len
            }
            (Some(Item::Zero { len: l }), Item::Zero { len }) => *l += len,
            _ => self.plan.items.push(item),
        }
    }

    fn changed(&mut self, span: Placed, hint: i64) {
        let mut start = span.start;
        if let Some(seg) = &self.pending {
            let room = (seg.start + self.segment_len).saturating_sub(span.start);
            if room > 0 && seg.parts.len() + self.gap.len() < MAX_PARTS {
                // Absorb the (short) gap and as much of the change as fits.
                let gap = std::mem::take(&mut self.gap);
                self.gap_len = 0;
                let take = room.min(span.end - span.start);
                let seg = self.pending.as_mut().expect("checked above");
                for g in gap {
                    let len = (g.end - g.start) as u32;
                    push_part(
                        &mut seg.parts,
                        match g.class {
                            Class::Same => Part::Copy { len, delta: 0 },
                            Class::Moved(delta) => Part::Copy { len, delta },
                            _ => Part::Zero(len),
                        },
                    );
                }
                push_part(
                    &mut seg.parts,
                    Part::Changed {
                        len: take as u32,
                        hint,
                    },
                );
                seg.len = (span.start + take - seg.start) as u32;
                start += take;
            }
        }
        while start < span.end {
            self.flush();
            let len = self.segment_len.min(span.end - start);
            self.pending = Some(SegmentPlan {
                start,
                len: len as u32,
                parts: vec![Part::Changed {
                    len: len as u32,
                    hint,
                }],
            });
            start += len;
        }
    }
}

fn push_part(parts: &mut Vec<Part>, part: Part) {
    match (parts.last_mut(), part) {
        (Some(Part::Zero(l)), Part::Zero(len)) => *l += len,
        (Some(Part::Changed { len: l, hint: h }), Part::Changed { len, hint })
        | (Some(Part::Copy { len: l, delta: h }), Part::Copy { len, delta: hint })
            if *h == hint =>
        {
            *l += len
        }
        _ => parts.push(part),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::spans::{spans_of, Run};

    fn runs(list: &[(Class, u64)]) -> Vec<Run> {
        list.iter()
            .map(|&(class, blocks)| Run { class, blocks })
            .collect()
    }

    fn plan_runs(runs: &[Run], new_len: u64, block_size: u32, segment_len: u32) -> Plan {
        plan(
            &spans_of(runs, new_len, block_size),
            block_size,
            segment_len,
            0,
        )
    }

    #[test]
    fn extents_from_classes() {
        let r = runs(&[
            (Class::Same, 2),
            (Class::Moved(-4096), 3),
            (Class::Zero, 5),
            (Class::Same, 1),
        ]);
        let p = plan_runs(&r, 11 * 4096 - 10, 4096, 1 << 22);
        assert_eq!(
            p.items,
            [
                Item::Copy {
                    len: 8192,
                    delta: 0
                },
                Item::Copy {
                    len: 3 * 4096,
                    delta: -4096
                },
                Item::Zero { len: 5 * 4096 },
                Item::Copy {
                    len: 4096 - 10,
                    delta: 0
                },
            ]
        );
        assert!(p.segments.is_empty());
    }

    #[test]
    fn close_changes_share_a_segment() {
        let r = runs(&[
            (Class::Changed(0), 1),
            (Class::Same, 2),
            (Class::Zero, 1),
            (Class::Changed(0), 1),
            (Class::Same, 4),
            (Class::Changed(0), 1),
        ]);
        let p = plan_runs(&r, 10 * 4096, 4096, 1 << 22);
        assert_eq!(
            p.items,
            [
                Item::Segment(0),
                Item::Copy {
                    len: 4 * 4096,
                    delta: 0
                },
                Item::Segment(1)
            ]
        );
        assert_eq!(
            p.segments[0].parts,
            [
                Part::Changed { len: 4096, hint: 0 },
                Part::Copy {
                    len: 8192,
                    delta: 0
                },
                Part::Zero(4096),
                Part::Changed { len: 4096, hint: 0 }
            ]
        );
        assert_eq!(p.segments[0].len, 5 * 4096);
        assert_eq!(p.segments[1].start, 9 * 4096);
    }

    #[test]
    fn long_changes_split_at_segment_len() {
        let r = runs(&[
            (Class::Changed(0), 3),
            (Class::Same, 1),
            (Class::Changed(0), 2),
        ]);
        let p = plan_runs(&r, 6 * 4096 - 1, 4096, 4096);
        assert_eq!(p.segments.len(), 5);
        assert!(p.segments.iter().all(|s| s.len <= 4096));
        assert_eq!(p.segments[4].len, 4095);
        let total: u64 = p
            .items
            .iter()
            .map(|i| match *i {
                Item::Copy { len, .. } | Item::Zero { len } => len,
                Item::Segment(k) => p.segments[k].len.into(),
            })
            .sum();
        assert_eq!(total, 6 * 4096 - 1);
    }
}
