//! Segments with less data for the approximate encoder. Each codec 0x03 frame's
//! history is the last `MAX_HISTORY_LEN - n` bytes of data before it, for
//! `n` bytes of its own: a segment of 4 MiB of data sees almost none,
//! while one of 512 KiB sees the 3.5 MiB before it, close to one stream
//! with a 4 MiB window. On a postgresql data.tar pair, segments of 4 MiB
//! of new bytes (cut by new bytes, not changed ones, then) made
//! 4,840,807 bytes, 2 MiB 4,739,097, 1 MiB 4,688,018, 512 KiB 4,649,375,
//! 256 KiB 4,668,026 (each segment costs an entry and splits ops).

use crate::plan::{Item, Part, Plan, SegmentPlan};

/// Most changed bytes (those the encoder codes as data) in one segment of
/// the approximate encoder.
pub(crate) const SEGMENT_LEN: u32 = 512 << 10;

/// `plan` with every segment that has more than `max` changed bytes cut
/// into segments of at most `max` changed bytes each, at the same place
/// among the extents. Copies and zeros inside a segment count for nothing:
/// a segment of scattered small edits stays whole, since each segment
/// costs an entry and a hash.
pub(crate) fn split(plan: Plan, max: u32) -> Plan {
    let mut out = Plan::default();
    let max = max.max(1);
    for item in plan.items {
        let Item::Segment(k) = item else {
            out.items.push(item);
            continue;
        };
        let seg = &plan.segments[k];
        let mut cur = SegmentPlan {
            start: seg.start,
            len: 0,
            parts: Vec::new(),
        };
        let mut changed = 0u32;
        for &part in &seg.parts {
            let mut part = part;
            loop {
                let is_changed = matches!(part, Part::Changed { .. });
                if is_changed && changed == max {
                    let next = SegmentPlan {
                        start: cur.start + u64::from(cur.len),
                        len: 0,
                        parts: Vec::new(),
                    };
                    out.items.push(Item::Segment(out.segments.len()));
                    out.segments.push(std::mem::replace(&mut cur, next));
                    changed = 0;
                }
                let take = if is_changed {
                    part.len().min(max - changed)
                } else {
                    part.len()
                };
                let (head, rest) = cut(part, take);
                cur.parts.push(head);
                cur.len += take;
                if is_changed {
                    changed += take;
                }
                match rest {
                    Some(r) => part = r,
                    None => break,
                }
            }
        }
        if cur.len > 0 {
            out.items.push(Item::Segment(out.segments.len()));
            out.segments.push(cur);
        }
    }
    out
}

/// `part`'s first `take` bytes (`take` ≥ 1), and the rest if any. A copy's
/// rest reads `take` bytes further on: its delta stays the same.
fn cut(part: Part, take: u32) -> (Part, Option<Part>) {
    let rest = part.len() - take;
    let (head, tail) = match part {
        Part::Changed { hint, .. } => (
            Part::Changed { len: take, hint },
            Part::Changed { len: rest, hint },
        ),
        Part::Copy { delta, .. } => (
            Part::Copy { len: take, delta },
            Part::Copy { len: rest, delta },
        ),
        Part::Zero(_) => (Part::Zero(take), Part::Zero(rest)),
    };
    (head, (rest > 0).then_some(tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_segments_at_max_and_keeps_the_extents() {
        let plan = Plan {
            items: vec![
                Item::Copy { len: 10, delta: 0 },
                Item::Segment(0),
                Item::Zero { len: 5 },
                Item::Segment(1),
            ],
            segments: vec![
                SegmentPlan {
                    start: 10,
                    len: 25,
                    parts: vec![
                        Part::Changed { len: 7, hint: 3 },
                        Part::Copy { len: 12, delta: -4 },
                        Part::Zero(6),
                    ],
                },
                SegmentPlan {
                    start: 40,
                    len: 4,
                    parts: vec![Part::Changed { len: 4, hint: 0 }],
                },
            ],
        };
        let out = split(plan, 5);
        assert_eq!(
            out.items,
            [
                Item::Copy { len: 10, delta: 0 },
                Item::Segment(0),
                Item::Segment(1),
                Item::Zero { len: 5 },
                Item::Segment(2),
            ]
        );
        let lens: Vec<(u64, u32)> = out.segments.iter().map(|s| (s.start, s.len)).collect();
        assert_eq!(lens, [(10, 5), (15, 20), (40, 4)]);
        assert_eq!(out.segments[0].parts, [Part::Changed { len: 5, hint: 3 }]);
        assert_eq!(
            out.segments[1].parts,
            [
                Part::Changed { len: 2, hint: 3 },
                Part::Copy { len: 12, delta: -4 },
                Part::Zero(6)
            ]
        );
        assert_eq!(out.segments[2].parts, [Part::Changed { len: 4, hint: 0 }]);
    }
}
