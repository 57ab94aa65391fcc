//! The progress line `applypatch` redraws on a terminal: how far the base
//! check and the new image are, and for a patch fetched over the network,
//! the bytes fetched of the patch, the network's rate, and the time left.
//! Nothing is drawn unless stderr is a terminal (the caller decides).

use std::collections::VecDeque;
use std::io::Write;
use std::time::{Duration, Instant};

use anypatch_apply::Progress;

use crate::PatchSource;

/// How often the line is redrawn at most.
const REDRAW: Duration = Duration::from_millis(200);
/// The network's rate is taken over this much of the recent past, so a
/// stall shows at once and the time left follows the link as it is now.
const RATE_WINDOW: Duration = Duration::from_secs(3);

/// A progress line on stderr; see the module docs.
#[derive(Debug)]
pub struct Meter {
    enabled: bool,
    started: Instant,
    last: Option<Instant>,
    fetch: Option<Fetch>,
}

/// What the meter knows of a fetch.
#[derive(Debug)]
struct Fetch {
    #[cfg(feature = "net")]
    stats: std::sync::Arc<anypatch_net::FetchStats>,
    /// (when, bytes received, patch bytes applied), oldest first, within
    /// [`RATE_WINDOW`].
    samples: VecDeque<(Instant, u64, u64)>,
}

/// The figures of one redraw of a fetch.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Fetched {
    /// Bytes received from the network by this run.
    received: u64,
    /// The patch's length, 0 until the server said it.
    len: u64,
    /// Bytes a second received over the recent past.
    rate: f64,
    /// Patch bytes a second applied over the recent past.
    apply_rate: f64,
}

impl Meter {
    /// A meter for applying `patch`; it draws only when `enabled`.
    pub fn new(enabled: bool, patch: &PatchSource) -> Self {
        let fetch = match patch {
            #[cfg(feature = "net")]
            PatchSource::Remote(r) => Some(Fetch {
                stats: r.opts.totals.clone(),
                samples: VecDeque::new(),
            }),
            _ => None,
        };
        Self {
            enabled,
            started: Instant::now(),
            last: None,
            fetch,
        }
    }

    /// Redraws the line with `p`, at most every [`REDRAW`].
    pub fn show(&mut self, p: Progress) {
        if !self.enabled || self.last.is_some_and(|t| t.elapsed() < REDRAW) {
            return;
        }
        let now = Instant::now();
        self.last = Some(now);
        let line = match self.fetch.as_mut().map(|f| f.sample(now, p.patch_consumed)) {
            Some(f) => remote_line(p, f),
            None => {
                let secs = self.started.elapsed().as_secs_f64().max(0.001);
                let done = p.base_checked + p.new_done;
                format!(
                    "base checked {} MiB, new {} MiB, patch {} MiB read, {:.0} MiB/s",
                    p.base_checked >> 20,
                    p.new_done >> 20,
                    p.patch_consumed >> 20,
                    done as f64 / secs / 1048576.0
                )
            }
        };
        let _ = write!(std::io::stderr(), "\r\x1b[Kapplypatch: {line}");
    }

    /// Erases the line, if one was drawn.
    pub fn clear(&self) {
        if self.enabled && self.last.is_some() {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}

impl Fetch {
    /// The fetch's figures now, with `applied` patch bytes applied, and
    /// a sample for the rates.
    fn sample(&mut self, now: Instant, applied: u64) -> Fetched {
        let (received, len) = self.counts();
        self.samples.push_back((now, received, applied));
        while self
            .samples
            .front()
            .is_some_and(|(t, ..)| now.duration_since(*t) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        let (rate, apply_rate) = match self.samples.front() {
            Some(&(t, r, a)) if now > t => {
                let secs = now.duration_since(t).as_secs_f64();
                (
                    received.saturating_sub(r) as f64 / secs,
                    applied.saturating_sub(a) as f64 / secs,
                )
            }
            _ => (0.0, 0.0),
        };
        Fetched {
            received,
            len,
            rate,
            apply_rate,
        }
    }

    #[cfg(feature = "net")]
    fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.stats.received.load(Relaxed),
            self.stats.len.load(Relaxed),
        )
    }

    #[cfg(not(feature = "net"))]
    fn counts(&self) -> (u64, u64) {
        (0, 0)
    }
}

/// `fetched 12 MiB of 32 MiB, 4.1 MiB/s, applied 10 MiB, ETA 0:05`.
fn remote_line(p: Progress, f: Fetched) -> String {
    let mib = |b: u64| b as f64 / 1048576.0;
    let of = if f.len > 0 {
        format!(" of {:.0} MiB", mib(f.len))
    } else {
        String::new()
    };
    let eta = match eta(p, f) {
        Some(secs) => format!("ETA {}:{:02}", secs / 60, secs % 60),
        None => "ETA ?".into(),
    };
    format!(
        "fetched {:.1} MiB{of}, {:.1} MiB/s, applied {:.1} MiB, {eta}",
        mib(f.received),
        mib(f.rate as u64),
        mib(p.new_done),
    )
}

/// Seconds until the slower of the fetch and the apply is done; `None`
/// while that cannot be told (no length yet, a stalled link).
fn eta(p: Progress, f: Fetched) -> Option<u64> {
    if f.len == 0 {
        return None;
    }
    let secs = |left: u64, rate: f64| match left {
        0 => Some(0.0),
        _ if rate >= 1.0 => Some(left as f64 / rate),
        _ => None,
    };
    // A resumed run starts past byte 0: what it fetched is all past there.
    let fetched = f.received.max(p.patch_consumed);
    let fetch = secs(f.len.saturating_sub(fetched), f.rate)?;
    // Before the engine reads (the header, or a copy for --in-place being
    // fetched) only the fetch can be timed.
    let apply = match p.patch_consumed {
        0 => Some(0.0),
        at => secs(f.len.saturating_sub(at), f.apply_rate),
    };
    Some(fetch.max(apply.unwrap_or(fetch)).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remote_line_says_fetched_rate_applied_and_time_left() {
        let p = Progress {
            base_checked: 0,
            new_done: 10 << 20,
            patch_consumed: 8 << 20,
        };
        let f = Fetched {
            received: 12 << 20,
            len: 32 << 20,
            rate: 4.0 * 1048576.0,
            apply_rate: 8.0 * 1048576.0,
        };
        assert_eq!(
            remote_line(p, f),
            "fetched 12.0 MiB of 32 MiB, 4.0 MiB/s, applied 10.0 MiB, ETA 0:05"
        );
        // An applier slower than the link: its time is what is left.
        let slow = Fetched {
            apply_rate: 1048576.0,
            ..f
        };
        assert!(
            remote_line(p, slow).ends_with("ETA 0:24"),
            "{}",
            remote_line(p, slow)
        );
        let stalled = Fetched { rate: 0.0, ..f };
        assert!(remote_line(p, stalled).ends_with("ETA ?"));
        let unknown = Fetched { len: 0, ..f };
        assert!(remote_line(p, unknown).starts_with("fetched 12.0 MiB, "));
    }
}
