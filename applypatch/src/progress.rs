//! The progress line `applypatch` redraws on a terminal: how far the base
//! check and the new image are, and for a patch fetched over the network,
//! the bytes fetched of the patch, the network's rate, and the time left.
//! Nothing is drawn unless stderr is a terminal (the caller decides).
//! A live sync has its own line ([`SyncMeter`]), drawn by a thread of its
//! own from the session's counters.

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

/// The line of a live sync, redrawn every [`REDRAW`] by a thread of its
/// own from the session's counters until [`SyncMeter::stop`].
#[cfg(feature = "quic-https")]
#[derive(Debug)]
pub struct SyncMeter {
    stop: std::sync::mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[cfg(feature = "quic-https")]
impl SyncMeter {
    /// Starts drawing what `progress` says on stderr.
    pub fn start(progress: std::sync::Arc<anypatch_sync::progress::SyncProgress>) -> Self {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("anypatch-progress".into())
            .spawn(move || {
                let mut samples = VecDeque::new();
                // Drawn at once, then every REDRAW until told to stop.
                loop {
                    let line = sync_sample(&mut samples, Instant::now(), progress.now());
                    let _ = write!(std::io::stderr(), "\r\x1b[Kapplypatch: {line}");
                    if !matches!(
                        stopped.recv_timeout(REDRAW),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                    ) {
                        return;
                    }
                }
            })
            .ok();
        Self { stop, thread }
    }

    /// Stops drawing and erases the line.
    pub fn stop(mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}

/// The counters `now` with a sample kept for the rates; the line to draw.
#[cfg(feature = "quic-https")]
fn sync_sample(
    samples: &mut VecDeque<(Instant, anypatch_sync::progress::Snapshot)>,
    at: Instant,
    now: anypatch_sync::progress::Snapshot,
) -> String {
    samples.push_back((at, now));
    while samples
        .front()
        .is_some_and(|(t, _)| at.duration_since(*t) > RATE_WINDOW)
    {
        samples.pop_front();
    }
    let (down_rate, settle_rate) = match samples.front() {
        Some(&(t, then)) if at > t => {
            let secs = at.duration_since(t).as_secs_f64();
            (
                now.down.saturating_sub(then.down) as f64 / secs,
                now.settled.saturating_sub(then.settled) as f64 / secs,
            )
        }
        _ => (0.0, 0.0),
    };
    sync_line(now, down_rate, settle_rate)
}

/// `hashed 512/1024 MiB, compared 300/1024 MiB, received 12.3 MiB at
/// 4.1 MiB/s, written 10.2 MiB, ETA 0:05`: the old image hashed, the new
/// one settled (compared, and fetched where it differs), the network, the
/// writes, and the time left at the rate the new image settles now.
#[cfg(feature = "quic-https")]
fn sync_line(s: anypatch_sync::progress::Snapshot, down_rate: f64, settle_rate: f64) -> String {
    let mib = |b: u64| b as f64 / 1048576.0;
    let new_len = match s.new_len {
        0 => "?".to_string(),
        n => format!("{:.0}", mib(n)),
    };
    let left = s.new_len.saturating_sub(s.settled);
    let eta = match (s.new_len, left) {
        (0, _) => "ETA ?".to_string(),
        (_, 0) => "ETA 0:00".to_string(),
        _ if settle_rate >= 1.0 => {
            let secs = (left as f64 / settle_rate).round() as u64;
            format!("ETA {}:{:02}", secs / 60, secs % 60)
        }
        _ => "ETA ?".to_string(),
    };
    format!(
        "hashed {:.0}/{:.0} MiB, compared {:.0}/{new_len} MiB, received {:.1} MiB at {:.1} MiB/s, sent {:.1} MiB, written {:.1} MiB, {eta}",
        mib(s.hashed),
        mib(s.old_len),
        mib(s.settled),
        mib(s.down),
        mib(down_rate as u64),
        mib(s.up),
        mib(s.written),
    )
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

    #[cfg(feature = "quic-https")]
    #[test]
    fn the_sync_line_says_hashed_compared_received_written_and_time_left() {
        use anypatch_sync::progress::Snapshot;
        let s = Snapshot {
            old_len: 1024 << 20,
            hashed: 512 << 20,
            new_len: 1024 << 20,
            settled: 1000 << 20,
            down: 12 << 20,
            up: 1 << 20,
            written: 10 << 20,
        };
        assert_eq!(
            sync_line(s, 4.0 * 1048576.0, 8.0 * 1048576.0),
            "hashed 512/1024 MiB, compared 1000/1024 MiB, received 12.0 MiB at 4.0 MiB/s, sent 1.0 MiB, written 10.0 MiB, ETA 0:03"
        );
        assert!(sync_line(s, 0.0, 0.0).ends_with("ETA ?"));
        let unknown = Snapshot { new_len: 0, ..s };
        assert!(sync_line(unknown, 1.0, 1.0).contains("compared 1000/? MiB"));
        assert!(sync_line(unknown, 1.0, 1.0).ends_with("ETA ?"));
        // Rates over the recent past, from the samples kept.
        let mut samples = VecDeque::new();
        let t0 = Instant::now();
        sync_sample(
            &mut samples,
            t0,
            Snapshot {
                down: 0,
                settled: 0,
                ..s
            },
        );
        let line = sync_sample(&mut samples, t0 + Duration::from_secs(2), s);
        assert!(line.contains("received 12.0 MiB at 6.0 MiB/s"), "{line}");
    }
}
