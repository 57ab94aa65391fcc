//! How hard the sender compresses `DATA` (spec/SYNC.md section 5): as
//! hard as it can without being what the session waits for. Each window
//! of data it compares the time it spent compressing with the time it
//! waited for the data stream to take the result (a slow link, or a
//! receiver that does not read faster): waiting much, it compresses
//! harder, since the link is the limit and fewer bytes cross it sooner;
//! hardly waiting, it compresses faster, since it is itself the limit.

use std::time::Duration;

use crate::packing::LEVELS;

/// Raw bytes of `DATA` between two decisions: a change of level starts a
/// new zstd frame, without the history before it.
pub const WINDOW: u64 = 8 << 20;

/// The sender's time over the current window.
#[derive(Debug, Default, Clone)]
pub struct Pace {
    /// Raw bytes compressed.
    raw: u64,
    /// Time spent compressing them.
    busy: Duration,
    /// Time spent waiting for the data stream to take them.
    waited: Duration,
}

impl Pace {
    /// `raw` bytes were compressed in `took`.
    pub fn packed(&mut self, raw: u64, took: Duration) {
        self.raw += raw;
        self.busy += took;
    }

    /// Writing compressed data to the data stream took `took`.
    pub fn wrote(&mut self, took: Duration) {
        self.waited += took;
    }

    /// The level to compress at next, now at `level`: once a window is
    /// full, one up when the sender waited more than half as long as it
    /// compressed, one down when it waited less than an eighth of it.
    pub fn next_level(&mut self, level: i32) -> i32 {
        if self.raw < WINDOW {
            return level;
        }
        let (busy, waited) = (self.busy, self.waited);
        *self = Self::default();
        let next = if waited * 2 > busy {
            level + 1
        } else if waited * 8 < busy {
            level - 1
        } else {
            level
        };
        next.clamp(*LEVELS.start(), *LEVELS.end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(pace: &mut Pace, busy_ms: u64, waited_ms: u64) {
        pace.packed(WINDOW, Duration::from_millis(busy_ms));
        pace.wrote(Duration::from_millis(waited_ms));
    }

    #[test]
    fn waiting_on_the_link_compresses_harder_and_being_the_limit_faster() {
        let mut pace = Pace::default();
        // Less than a window: no change.
        pace.packed(WINDOW - 1, Duration::from_millis(100));
        assert_eq!(pace.next_level(3), 3);
        pace.packed(1, Duration::ZERO);
        assert_eq!(pace.next_level(3), 2, "never waited");
        window(&mut pace, 100, 60);
        assert_eq!(
            pace.next_level(3),
            4,
            "waited 60% of the time it compressed"
        );
        window(&mut pace, 100, 30);
        assert_eq!(pace.next_level(3), 3, "in between");
        window(&mut pace, 100, 0);
        assert_eq!(pace.next_level(2), 2, "the fastest level is the floor");
        window(&mut pace, 100, 1000);
        assert_eq!(pace.next_level(6), 6, "the hardest level is the ceiling");
    }
}
