//! The one executor behind every parallel phase.
//!
//! Workers take item numbers from an atomic counter and keep per-worker
//! state (buffers, a zstd context). Results are put back in item order
//! before anyone sees them, so the thread count never changes the output.
//! The calling thread only waits, reports progress and (for
//! [`for_each_ordered`]) consumes results in order.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

/// How often the calling thread wakes to report progress.
const TICK: Duration = Duration::from_millis(100);

/// Runs `work(state, i)` for every `i` in `0..count` on `threads` workers and
/// returns the results in item order. `tick(done)` reports finished items.
/// Stops at the first error.
pub(crate) fn map_indexed<S, R, E>(
    threads: usize,
    count: usize,
    init: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, usize) -> Result<R, E> + Sync,
    tick: &dyn Fn(u64),
) -> Result<Vec<R>, E>
where
    R: Send,
    E: Send,
{
    let next = AtomicUsize::new(0);
    let done = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let finished = AtomicUsize::new(0);
    let workers = threads.clamp(1, count.max(1));
    let caller = std::thread::current();
    let per_worker: Vec<Result<Vec<(usize, R)>, E>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    // Wake the caller when this worker ends, however it ends.
                    struct Wake<'a>(&'a AtomicUsize, std::thread::Thread);
                    impl Drop for Wake<'_> {
                        fn drop(&mut self) {
                            self.0.fetch_add(1, Ordering::Release);
                            self.1.unpark();
                        }
                    }
                    let _wake = Wake(&finished, caller.clone());
                    let mut state = init();
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count || failed.load(Ordering::Relaxed) {
                            return Ok(out);
                        }
                        match work(&mut state, i) {
                            Ok(r) => out.push((i, r)),
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        while finished.load(Ordering::Acquire) < workers {
            tick(done.load(Ordering::Relaxed));
            std::thread::park_timeout(TICK);
        }
        tick(done.load(Ordering::Relaxed));
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut all = Vec::with_capacity(count);
    for r in per_worker {
        all.extend(r?);
    }
    all.sort_unstable_by_key(|&(i, _)| i);
    Ok(all.into_iter().map(|(_, r)| r).collect())
}

struct Shared<R, E> {
    ready: BTreeMap<usize, R>,
    /// The next item `sink` will consume.
    next_out: usize,
    error: Option<E>,
    /// Set on the first error or when the sink is done: workers return.
    stop: bool,
}

/// Runs `work(state, i)` for every `i` in `0..count` on `threads` workers and
/// hands each result to `sink` on the calling thread, in item order. At most
/// `in_flight` items are taken ahead of `sink`, which bounds memory.
pub(crate) fn for_each_ordered<S, R, E>(
    threads: usize,
    count: usize,
    in_flight: usize,
    init: impl Fn() -> Result<S, E> + Sync,
    work: impl Fn(&mut S, usize) -> Result<R, E> + Sync,
    mut sink: impl FnMut(usize, R) -> Result<(), E>,
) -> Result<(), E>
where
    R: Send,
    E: Send,
{
    let in_flight = in_flight.max(1);
    let next = AtomicUsize::new(0);
    let shared = Mutex::new(Shared {
        ready: BTreeMap::new(),
        next_out: 0,
        error: None,
        stop: false,
    });
    let cond = Condvar::new();
    let lock = || shared.lock().unwrap_or_else(PoisonError::into_inner);
    let workers = threads.clamp(1, count.max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                let fail = |e: E| {
                    let mut g = lock();
                    g.error.get_or_insert(e);
                    g.stop = true;
                    cond.notify_all();
                };
                // A worker that panics must still stop the others and wake
                // the caller, or the caller waits for its item for ever; the
                // scope then passes the panic on.
                struct StopOnPanic<F: Fn()>(F);
                impl<F: Fn()> Drop for StopOnPanic<F> {
                    fn drop(&mut self) {
                        if std::thread::panicking() {
                            (self.0)();
                        }
                    }
                }
                let _stop = StopOnPanic(|| {
                    let mut g = lock();
                    g.stop = true;
                    cond.notify_all();
                });
                let mut state = match init() {
                    Ok(state) => state,
                    Err(e) => return fail(e),
                };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return;
                    }
                    // Wait until the sink is close enough. The smallest
                    // unfinished item never waits, so this cannot deadlock.
                    {
                        let mut g = lock();
                        while i >= g.next_out + in_flight && !g.stop {
                            g = cond.wait(g).unwrap_or_else(PoisonError::into_inner);
                        }
                        if g.stop {
                            return;
                        }
                    }
                    match work(&mut state, i) {
                        Ok(r) => {
                            let mut g = lock();
                            g.ready.insert(i, r);
                            cond.notify_all();
                        }
                        Err(e) => return fail(e),
                    }
                }
            });
        }
        let mut g = lock();
        loop {
            if g.stop || g.next_out == count {
                break;
            }
            let i = g.next_out;
            if let Some(r) = g.ready.remove(&i) {
                drop(g);
                let result = sink(i, r);
                g = lock();
                if let Err(e) = result {
                    g.error.get_or_insert(e);
                    g.stop = true;
                }
                g.next_out += 1;
                cond.notify_all();
            } else {
                g = cond.wait(g).unwrap_or_else(PoisonError::into_inner);
            }
        }
        // Wake waiting workers so they see the stop and return.
        g.stop = true;
        cond.notify_all();
        let error = g.error.take();
        drop(g);
        match error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_order() {
        for threads in [1, 3, 8] {
            let got: Result<Vec<usize>, ()> =
                map_indexed(threads, 100, || (), |_, i| Ok(i * 2), &|_| {});
            assert_eq!(got, Ok((0..100).map(|i| i * 2).collect()));
            let mut seen = Vec::new();
            let r: Result<(), ()> = for_each_ordered(
                threads,
                50,
                2,
                || Ok(()),
                |_, i| Ok(i),
                |i, r| {
                    assert_eq!(i, r);
                    seen.push(r);
                    Ok(())
                },
            );
            assert_eq!(r, Ok(()));
            assert_eq!(seen, (0..50).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_panicking_worker_ends_the_run_with_its_panic_not_a_hang() {
        for threads in [1, 3] {
            let run = std::panic::catch_unwind(|| {
                let _: Result<(), ()> = for_each_ordered(
                    threads,
                    20,
                    2,
                    || Ok(()),
                    |_, i| {
                        assert!(i != 5, "item 5 is a bug");
                        Ok(i)
                    },
                    |_, _| Ok(()),
                );
            });
            assert!(run.is_err(), "{threads} threads: the panic was lost");
        }
    }

    #[test]
    fn errors_stop_the_run() {
        let got: Result<Vec<usize>, usize> = map_indexed(
            4,
            100,
            || (),
            |_, i| if i == 7 { Err(i) } else { Ok(i) },
            &|_| {},
        );
        assert_eq!(got, Err(7));
        let r: Result<(), usize> = for_each_ordered(
            4,
            100,
            4,
            || Ok(()),
            |_, i| if i == 9 { Err(i) } else { Ok(i) },
            |_, _| Ok(()),
        );
        assert_eq!(r, Err(9));
    }
}
