//! Hashing an image's leaves on all cores, handing the groups out in
//! order as they complete, so that a side can compare and ask while it is
//! still hashing (spec/SYNC.md section 7).

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use crate::tree::{group_count, leaf_range, leaf_value, Value, GROUP, GROUP_LEAVES};

/// Groups a worker may run ahead of the first one not yet handed out:
/// bounds the memory held for reordering to this many 1 MiB buffers per
/// worker and their values.
const AHEAD: u64 = 8;

/// Hashes the first `len` bytes of `file` on `threads` threads (at least
/// one) and calls `on_group(g, leaves)` for every group in order, with
/// the values of its leaves; `on_group` returning false stops the hashing
/// (an error of kind `Interrupted`). Returns the values of all leaves.
///
/// A short read (the file shrank under us) is an error, not a shorter
/// tree: the tree must describe exactly `len` bytes.
pub fn hash_leaves(
    file: &File,
    len: u64,
    threads: usize,
    mut on_group: impl FnMut(u64, &[Value]) -> bool,
) -> io::Result<Vec<Value>> {
    let groups = group_count(len);
    let next = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let done: Mutex<Done> = Mutex::new(Done::default());
    let progressed = Condvar::new();
    let mut leaves = Vec::new();

    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let mut buf = vec![0; GROUP as usize];
                loop {
                    let g = next.fetch_add(1, Ordering::Relaxed);
                    if g >= groups || failed.load(Ordering::Relaxed) {
                        break;
                    }
                    // Wait until the group is within AHEAD of the consumer.
                    let mut guard = lock(&done);
                    while g >= guard.handed + AHEAD * threads as u64
                        && !failed.load(Ordering::Relaxed)
                    {
                        guard = progressed.wait(guard).unwrap_or_else(|e| e.into_inner());
                    }
                    drop(guard);
                    let result = hash_group(file, len, g, &mut buf);
                    let mut guard = lock(&done);
                    match result {
                        Ok(values) => {
                            guard.ready.insert(g, values);
                        }
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            guard.error.get_or_insert(e);
                        }
                    }
                    progressed.notify_all();
                }
            });
        }

        // This thread hands the groups out in order.
        let mut guard = lock(&done);
        while guard.handed < groups && guard.error.is_none() {
            let g = guard.handed;
            if let Some(values) = guard.ready.remove(&g) {
                drop(guard);
                let go_on = on_group(g, &values);
                leaves.extend_from_slice(&values);
                guard = lock(&done);
                if !go_on {
                    guard.error.get_or_insert(io::Error::new(
                        io::ErrorKind::Interrupted,
                        "hashing stopped",
                    ));
                    break;
                }
                guard.handed += 1;
                progressed.notify_all();
            } else {
                guard = progressed.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
        }
        if guard.error.is_some() {
            failed.store(true, Ordering::Relaxed);
            progressed.notify_all();
        }
    });

    match done.into_inner().unwrap_or_else(|e| e.into_inner()).error {
        Some(e) => Err(e),
        None => Ok(leaves),
    }
}

#[derive(Default)]
struct Done {
    /// Groups handed to the caller so far (all below this number).
    handed: u64,
    /// Hashed groups waiting for their turn.
    ready: BTreeMap<u64, Vec<Value>>,
    error: Option<io::Error>,
}

fn lock(m: &Mutex<Done>) -> std::sync::MutexGuard<'_, Done> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads group `g` and returns its leaves' values.
fn hash_group(file: &File, len: u64, g: u64, buf: &mut [u8]) -> io::Result<Vec<Value>> {
    let start = g * GROUP;
    let end = (start + GROUP).min(len);
    let bytes = &mut buf[..(end - start) as usize];
    file.read_exact_at(bytes, start).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(
                e.kind(),
                format!("the image ended before {len} bytes: it changed while it was hashed"),
            )
        } else {
            e
        }
    })?;
    let first = g * GROUP_LEAVES as u64;
    Ok((first..)
        .map(|leaf| leaf_range(len, leaf))
        .take_while(|r| r.start < end)
        .map(|r| {
            let at = (r.start - start) as usize;
            leaf_value(r.start, &bytes[at..at + (r.end - r.start) as usize])
        })
        .collect())
}
