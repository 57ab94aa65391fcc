//! The delay line: a TUN device in each of two namespaces, and threads that
//! carry each IP packet from one to the other after a fixed one-way delay.
//!
//! It works on whole IP packets, so TCP, UDP and ICMP see the same delay.
//! Per direction, one thread reads packets and stamps them with the time
//! they are due; another sleeps until the oldest is due and writes it out.
//! Packets keep their order. The queue in between is bounded in bytes,
//! and a packet that could not be written within [`LATE_LIMIT`] of its
//! time is dropped: when the delay line itself is the bottleneck (the
//! kernel work of writing packets costs more CPU than this machine has),
//! it loses packets as a full link would, instead of growing a queue that
//! would make the RTT a lie. Both are counted.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};

use crate::{enter, Error};

/// The name of the TUN device in each namespace.
pub const DEVICE: &str = "nl0";

/// The largest packet read from a TUN device: a virtio-net header and a
/// 64 KiB GSO packet (offloads let the kernel hand over TCP and UDP
/// segments batched, which divides the syscalls and the receiving stack's
/// per-packet work by up to 40).
const MAX_PACKET: usize = 10 + 65_536;

/// How late a packet may be written before it is dropped instead: more
/// than a busy machine's scheduling delays (which must not turn into
/// loss), far less than the 32 MiB queue could hide.
pub const LATE_LIMIT: Duration = Duration::from_millis(50);

/// How often idle threads look at the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// Which way a packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client namespace to the server namespace.
    ToServer,
    /// From the server namespace to the client namespace.
    ToClient,
}

/// What one direction of the delay line has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets written out after their delay.
    pub packets: u64,
    /// Bytes of those packets (IP headers included).
    pub bytes: u64,
    /// Packets dropped because the queue was full.
    pub queue_drops: u64,
    /// Packets dropped because they were more than [`LATE_LIMIT`] late.
    pub late_drops: u64,
    /// Packets the kernel refused to take (the link was down, for one).
    pub write_errors: u64,
}

/// A running delay line between two namespaces. Dropping it stops its
/// threads and closes the TUN devices (which removes them).
#[derive(Debug)]
pub struct DelayLine {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    one_way_nanos: AtomicU64,
    stop: AtomicBool,
    queue_limit: usize,
    stats: [Counters; 2],
}

#[derive(Debug, Default)]
struct Counters {
    packets: AtomicU64,
    bytes: AtomicU64,
    queue_drops: AtomicU64,
    late_drops: AtomicU64,
    write_errors: AtomicU64,
}

/// Packets of one direction waiting for their time.
#[derive(Debug, Default)]
struct Pipe {
    state: Mutex<Queue>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct Queue {
    packets: VecDeque<(Instant, Vec<u8>)>,
    bytes: usize,
}

impl DelayLine {
    /// Creates TUN device [`DEVICE`] in namespaces `client_ns` and
    /// `server_ns` (names as `ip netns` knows them) and starts carrying
    /// packets between them, each held `one_way` (half the RTT). At most
    /// `queue_limit` bytes wait in each direction. With `offload`, the
    /// kernel hands TCP and UDP over in GSO batches of up to 64 KiB
    /// (virtio-net headers), which costs a tenth of the CPU; without it,
    /// every wire packet is read, delayed and written on its own.
    ///
    /// The devices are created down and without addresses: the caller
    /// configures them (the [`Lab`](crate::Lab) does).
    pub fn start(
        client_ns: &str,
        server_ns: &str,
        one_way: Duration,
        queue_limit: usize,
        offload: bool,
    ) -> Result<Self, Error> {
        let client = Arc::new(create_in(client_ns, offload)?);
        let server = Arc::new(create_in(server_ns, offload)?);
        let shared = Arc::new(Shared {
            one_way_nanos: AtomicU64::new(nanos(one_way)),
            stop: AtomicBool::new(false),
            queue_limit,
            stats: Default::default(),
        });
        let mut line = DelayLine {
            shared,
            threads: Vec::new(),
        };
        for (from, to, dir) in [
            (&client, &server, Direction::ToServer),
            (&server, &client, Direction::ToClient),
        ] {
            let pipe = Arc::new(Pipe::default());
            let (s, p, dev) = (line.shared.clone(), pipe.clone(), from.clone());
            line.threads
                .push(spawn("netlab-read", move || read_loop(&s, &p, &dev, dir))?);
            let (s, p, dev) = (line.shared.clone(), pipe, to.clone());
            line.threads.push(spawn("netlab-write", move || {
                write_loop(&s, &p, &dev, dir)
            })?);
        }
        Ok(line)
    }

    /// Sets the one-way delay (half the RTT) for packets read from now on.
    pub fn set_one_way(&self, one_way: Duration) {
        self.shared
            .one_way_nanos
            .store(nanos(one_way), Ordering::Relaxed);
    }

    /// The one-way delay now.
    pub fn one_way(&self) -> Duration {
        Duration::from_nanos(self.shared.one_way_nanos.load(Ordering::Relaxed))
    }

    /// What direction `dir` has done so far.
    pub fn stats(&self, dir: Direction) -> Stats {
        let c = &self.shared.stats[dir as usize];
        Stats {
            packets: c.packets.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            queue_drops: c.queue_drops.load(Ordering::Relaxed),
            late_drops: c.late_drops.load(Ordering::Relaxed),
            write_errors: c.write_errors.load(Ordering::Relaxed),
        }
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            // A panicked thread has nothing left to clean.
            let _ = t.join();
        }
    }
}

/// Creates the TUN device in namespace `ns`, from a thread that enters it
/// (a device is born in the namespace of the thread that opens it).
fn create_in(ns: &str, offload: bool) -> Result<tun_rs::SyncDevice, Error> {
    enter::run_in(ns, || {
        // Addresses and state are set with `ip` by the caller. Both devices
        // have the same offloads, so a packet read from one (virtio-net
        // header included) is written to the other as it is.
        let dev = tun_rs::DeviceBuilder::new()
            .name(DEVICE)
            .offload(offload)
            .build_sync()
            .map_err(|source| Error::Io {
                what: format!("creating TUN device {DEVICE} in namespace {ns}"),
                source,
            })?;
        dev.set_nonblocking(true).map_err(|source| Error::Io {
            what: format!("making TUN device {DEVICE} in {ns} non-blocking"),
            source,
        })?;
        Ok(dev)
    })?
}

/// Reads packets from `dev` and queues each with the time it is due.
fn read_loop(shared: &Shared, pipe: &Pipe, dev: &tun_rs::SyncDevice, dir: Direction) {
    let mut buf = vec![0u8; MAX_PACKET];
    let counters = &shared.stats[dir as usize];
    while !shared.stop.load(Ordering::Relaxed) {
        // Non-blocking first: under load this is one syscall a packet.
        let got = match dev.recv(&mut buf) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let mut fds = [PollFd::new(dev, PollFlags::IN)];
                let timeout = Timespec::try_from(POLL).expect("50 ms is a valid timespec");
                match poll(&mut fds, Some(&timeout)) {
                    Ok(0) => continue,
                    Ok(_) => dev.recv(&mut buf),
                    Err(e) => Err(e.into()),
                }
            }
            other => other,
        };
        let n = match got {
            Ok(n) => n,
            Err(e) if is_transient(&e) => continue,
            Err(_) => {
                // The device is gone or broken; nothing more will come.
                break;
            }
        };
        let due =
            Instant::now() + Duration::from_nanos(shared.one_way_nanos.load(Ordering::Relaxed));
        let mut q = lock(&pipe.state);
        if q.bytes + n > shared.queue_limit {
            counters.queue_drops.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let was_empty = q.packets.is_empty();
        q.packets.push_back((due, buf[..n].to_vec()));
        q.bytes += n;
        drop(q);
        // When the queue had packets, the writer already sleeps until the
        // oldest is due, which is no later than this one.
        if was_empty {
            pipe.wake.notify_one();
        }
    }
}

/// Writes each queued packet to `dev` once it is due.
fn write_loop(shared: &Shared, pipe: &Pipe, dev: &tun_rs::SyncDevice, dir: Direction) {
    let counters = &shared.stats[dir as usize];
    let mut due_now = Vec::new();
    let mut q = lock(&pipe.state);
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        match q.packets.front() {
            None => q = wait(&pipe.wake, q, POLL),
            Some((due, _)) if *due > now => {
                let left = (*due - now).min(POLL);
                q = wait(&pipe.wake, q, left);
            }
            Some(_) => {
                while q.packets.front().is_some_and(|(due, _)| *due <= now) {
                    if let Some((due, p)) = q.packets.pop_front() {
                        q.bytes -= p.len();
                        if now - due > LATE_LIMIT {
                            counters.late_drops.fetch_add(1, Ordering::Relaxed);
                        } else {
                            due_now.push(p);
                        }
                    }
                }
                drop(q);
                for p in due_now.drain(..) {
                    match dev.send(&p) {
                        Ok(_) => {
                            counters.packets.fetch_add(1, Ordering::Relaxed);
                            counters.bytes.fetch_add(p.len() as u64, Ordering::Relaxed);
                        }
                        Err(_) => {
                            counters.write_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                q = lock(&pipe.state);
            }
        }
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// Locks the queue; a poisoned lock still holds a consistent queue (every
/// update is a push or pop with its byte count), so it is used as it is.
fn lock(m: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn wait<'a>(cv: &Condvar, q: MutexGuard<'a, Queue>, d: Duration) -> MutexGuard<'a, Queue> {
    cv.wait_timeout(q, d)
        .map(|(g, _)| g)
        .unwrap_or_else(|e| e.into_inner().0)
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, Error> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|source| Error::Io {
            what: "starting a delay-line thread".into(),
            source,
        })
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
