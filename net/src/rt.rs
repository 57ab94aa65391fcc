//! What the fetch loop ([`crate::remote`]) needs of an async runtime: a
//! byte buffer, a bounded queue to the reader, a sleep and a runtime to
//! run on. With the `quic-https` feature these are tokio's and `bytes`';
//! without it (the static initramfs build, where tokio does not fit in
//! 2 MiB), blocking stand-ins over std: there every fetch is a blocking
//! plain-HTTP read, so every future the loop awaits is ready when first
//! polled, and the same loop runs on one thread without a reactor.

#[cfg(feature = "quic-https")]
pub use bytes::Bytes;
#[cfg(feature = "quic-https")]
pub use tokio::sync::mpsc;
#[cfg(feature = "quic-https")]
pub use tokio::time::sleep;

/// A runtime for one fetch loop, on the thread that calls `block_on`.
#[cfg(feature = "quic-https")]
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

#[cfg(not(feature = "quic-https"))]
pub use plain::{mpsc, runtime, sleep, Bytes};

#[cfg(not(feature = "quic-https"))]
mod plain {
    use std::future::Future;
    use std::ops::Deref;
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    /// A cheaply split slice of a shared buffer (the part of `bytes::Bytes`
    /// the fetch loop uses).
    #[derive(Debug, Clone, Default)]
    pub struct Bytes {
        buf: Arc<Vec<u8>>,
        start: usize,
        end: usize,
    }

    impl Bytes {
        pub fn new() -> Self {
            Self::default()
        }

        /// The first `at` bytes; `self` keeps the rest.
        pub fn split_to(&mut self, at: usize) -> Self {
            let at = at.min(self.len());
            let head = Self {
                buf: self.buf.clone(),
                start: self.start,
                end: self.start + at,
            };
            self.start += at;
            head
        }

        /// Keeps the first `len` bytes.
        pub fn truncate(&mut self, len: usize) {
            self.end = self.end.min(self.start + len);
        }
    }

    impl From<Vec<u8>> for Bytes {
        fn from(v: Vec<u8>) -> Self {
            let end = v.len();
            Self {
                buf: Arc::new(v),
                start: 0,
                end,
            }
        }
    }

    impl Deref for Bytes {
        type Target = [u8];
        fn deref(&self) -> &[u8] {
            &self.buf[self.start..self.end]
        }
    }

    /// Waits on the calling thread.
    pub async fn sleep(d: Duration) {
        std::thread::sleep(d);
    }

    /// Runs a future to its end on the calling thread.
    #[derive(Debug)]
    pub struct Runtime;

    pub fn runtime() -> std::io::Result<Runtime> {
        Ok(Runtime)
    }

    impl Runtime {
        pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
            let mut fut = std::pin::pin!(fut);
            let mut cx = Context::from_waker(Waker::noop());
            loop {
                // Everything awaited blocks instead of pending, so this
                // returns at the first poll; the loop is only a guard.
                if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
                    return out;
                }
                std::thread::yield_now();
            }
        }
    }

    /// A bounded queue between the fetch thread and the reader: `send`
    /// blocks while it is full, `blocking_recv` while it is empty.
    pub mod mpsc {
        use std::collections::VecDeque;
        use std::sync::{Arc, Condvar, Mutex, MutexGuard};

        struct State<T> {
            queue: VecDeque<T>,
            cap: usize,
            sender: bool,
            receiver: bool,
        }

        struct Shared<T> {
            state: Mutex<State<T>>,
            changed: Condvar,
        }

        impl<T> Shared<T> {
            fn lock(&self) -> MutexGuard<'_, State<T>> {
                // A panic elsewhere cannot leave the queue inconsistent.
                self.state.lock().unwrap_or_else(|e| e.into_inner())
            }
        }

        /// The value a closed queue did not take.
        #[derive(Debug)]
        pub struct SendError<T>(pub T);

        pub struct Sender<T>(Arc<Shared<T>>);
        pub struct Receiver<T>(Arc<Shared<T>>);

        impl<T> std::fmt::Debug for Sender<T> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("Sender")
            }
        }

        impl<T> std::fmt::Debug for Receiver<T> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("Receiver")
            }
        }

        /// A queue of at most `cap` values (at least one).
        pub fn channel<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
            let shared = Arc::new(Shared {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    cap: cap.max(1),
                    sender: true,
                    receiver: true,
                }),
                changed: Condvar::new(),
            });
            (Sender(shared.clone()), Receiver(shared))
        }

        impl<T> Sender<T> {
            /// Queues `v`, waiting for room; fails when the receiver is gone.
            pub async fn send(&self, v: T) -> Result<(), SendError<T>> {
                let mut s = self.0.lock();
                while s.receiver && s.queue.len() >= s.cap {
                    s = self.0.changed.wait(s).unwrap_or_else(|e| e.into_inner());
                }
                if !s.receiver {
                    return Err(SendError(v));
                }
                s.queue.push_back(v);
                self.0.changed.notify_all();
                Ok(())
            }

            /// Whether the receiver is gone.
            pub fn is_closed(&self) -> bool {
                !self.0.lock().receiver
            }
        }

        impl<T> Drop for Sender<T> {
            fn drop(&mut self) {
                self.0.lock().sender = false;
                self.0.changed.notify_all();
            }
        }

        impl<T> Receiver<T> {
            /// The next value, waiting for one; `None` once the sender is
            /// gone and the queue is empty.
            pub fn blocking_recv(&mut self) -> Option<T> {
                let mut s = self.0.lock();
                loop {
                    if let Some(v) = s.queue.pop_front() {
                        self.0.changed.notify_all();
                        return Some(v);
                    }
                    if !s.sender {
                        return None;
                    }
                    s = self.0.changed.wait(s).unwrap_or_else(|e| e.into_inner());
                }
            }
        }

        impl<T> Drop for Receiver<T> {
            fn drop(&mut self) {
                let mut s = self.0.lock();
                s.receiver = false;
                s.queue.clear();
                self.0.changed.notify_all();
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn bytes_split_and_truncate() {
            let mut b = Bytes::from(b"abcdef".to_vec());
            let head = b.split_to(2);
            assert_eq!((&*head, &*b), (&b"ab"[..], &b"cdef"[..]));
            b.truncate(3);
            assert_eq!(&*b, b"cde");
            assert_eq!(&*b.split_to(10), b"cde");
            assert!(b.is_empty());
        }

        #[test]
        fn queue_hands_on_in_order_and_ends() {
            let (tx, mut rx) = mpsc::channel(2);
            let rt = runtime().expect("runtime");
            let t = std::thread::spawn(move || {
                rt.block_on(async {
                    for i in 0..100u32 {
                        tx.send(i).await.expect("receiver alive");
                    }
                })
            });
            let got: Vec<u32> = std::iter::from_fn(|| rx.blocking_recv()).collect();
            t.join().expect("sender");
            assert_eq!(got, (0..100).collect::<Vec<_>>());
        }

        #[test]
        fn a_gone_receiver_fails_the_sender() {
            let (tx, rx) = mpsc::channel::<u8>(1);
            drop(rx);
            assert!(tx.is_closed());
            let r = runtime().expect("runtime").block_on(tx.send(1));
            assert!(r.is_err());
        }
    }
}
