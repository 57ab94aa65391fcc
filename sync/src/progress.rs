//! How far a receiver's session is, readable from another thread while it
//! runs (a progress line): relaxed atomic counters, no locks, so the
//! session's loop pays a few uncontended atomic stores per event.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::drive::Received;
use crate::receiver::Ready;
use crate::tree::{leaf_range, LEAF};

/// The counters of one session; [`SyncProgress::now`] reads them. Each
/// only grows within a session; a reader may see one a moment behind
/// another.
#[derive(Debug, Default)]
pub struct SyncProgress {
    old_len: AtomicU64,
    hashed: AtomicU64,
    new_len: AtomicU64,
    settled: AtomicU64,
    down: AtomicU64,
    up: AtomicU64,
    written: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The old image's length.
    pub old_len: u64,
    /// Bytes of the old image hashed (or vouched for by the cache).
    pub hashed: u64,
    /// The new image's length; 0 until the sender said it.
    pub new_len: u64,
    /// Bytes of the new image settled: compared and found unchanged, or
    /// built, verified and written.
    pub settled: u64,
    /// Bytes of messages received from the sender.
    pub down: u64,
    /// Bytes of messages sent to it.
    pub up: u64,
    /// Bytes written to the target.
    pub written: u64,
}

impl SyncProgress {
    /// A session over an old image of `old_len` bytes begins.
    pub(crate) fn start(&self, old_len: u64) {
        self.old_len.store(old_len, Relaxed);
    }

    /// One more group of `leaves` leaves of the old image hashed.
    pub(crate) fn hashed(&self, leaves: usize) {
        self.hashed.fetch_add(leaves as u64 * LEAF, Relaxed);
    }

    /// One leaf of a new image of `new_len` bytes settled.
    pub(crate) fn settled(&self, new_len: u64, ready: &Ready) {
        let len = match ready {
            Ready::Unchanged { leaf } => {
                let r = leaf_range(new_len, *leaf);
                r.end - r.start
            }
            Ready::Changed { bytes, .. } => bytes.len() as u64,
        };
        self.settled.fetch_add(len, Relaxed);
    }

    /// The session's totals so far.
    pub(crate) fn update(&self, new_len: u64, done: &Received) {
        self.new_len.store(new_len, Relaxed);
        self.down.store(done.bytes_down, Relaxed);
        self.up.store(done.bytes_up, Relaxed);
        self.written.store(done.bytes_written, Relaxed);
    }

    /// The counters now.
    pub fn now(&self) -> Snapshot {
        let old_len = self.old_len.load(Relaxed);
        let new_len = self.new_len.load(Relaxed);
        Snapshot {
            old_len,
            // The last leaf is counted whole.
            hashed: self.hashed.load(Relaxed).min(old_len),
            new_len,
            settled: self.settled.load(Relaxed).min(new_len),
            down: self.down.load(Relaxed),
            up: self.up.load(Relaxed),
            written: self.written.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up_and_stay_within_the_images() {
        let p = SyncProgress::default();
        p.start(LEAF * 3 - 10);
        p.hashed(2);
        assert_eq!(p.now().hashed, 2 * LEAF);
        p.hashed(2);
        assert_eq!(p.now().hashed, LEAF * 3 - 10, "capped at the old length");
        let new_len = LEAF + 100;
        let done = Received {
            bytes_down: 7,
            bytes_up: 3,
            bytes_written: 100,
            ..Received::default()
        };
        p.update(new_len, &done);
        p.settled(new_len, &Ready::Unchanged { leaf: 0 });
        p.settled(
            new_len,
            &Ready::Changed {
                leaf: 1,
                offset: LEAF,
                bytes: vec![0; 100],
            },
        );
        let s = p.now();
        assert_eq!((s.new_len, s.settled), (new_len, new_len));
        assert_eq!((s.down, s.up, s.written), (7, 3, 100));
    }
}
