//! [`Lab`]: two namespaces joined by the delay line, with the knobs a test turns.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use crate::delay::{DelayLine, Direction, Stats, DEVICE};
use crate::{cmd, enter, names, shape, Error};

/// The client namespace's address on the link.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The server namespace's address on the link.
pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

/// The MTU of the link: Ethernet's, so QUIC and TCP size packets as on a LAN.
pub const MTU: u32 = 1500;

/// Bytes that may wait in the delay line, each way: 200 ms at 1 Gbit/s
/// fits; more than that is a queue no real path has.
const DELAY_QUEUE: usize = 32 << 20;

/// A network lab: a "client" and a "server" namespace joined by a link
/// whose RTT, rate, loss and state a test sets, with byte counters each
/// way. Dropping it (also while a test panics) kills the processes left
/// in its namespaces, stops the delay line and deletes the namespaces
/// with their devices, qdiscs and nftables tables.
///
/// The client is [`CLIENT_ADDR`], the server [`SERVER_ADDR`]; each
/// namespace also has `lo` up. A new lab has no delay, no rate limit and
/// no loss.
#[derive(Debug)]
pub struct Lab {
    client_ns: String,
    server_ns: String,
    delay: Option<DelayLine>,
    rtt: Duration,
    rate_mbit: Option<f64>,
    queue: Option<Duration>,
}

impl Lab {
    /// Makes a lab; `tag` goes into the namespaces' names (say, the
    /// test's name) so a leftover lab can be traced. Labs are independent:
    /// tests may make them in parallel. Removes stale labs first (see
    /// [`clean`](crate::clean)).
    ///
    /// Fails with [`Error::NotRoot`] unless run as root.
    pub fn new(tag: &str) -> Result<Self, Error> {
        Self::make(tag, true)
    }

    /// Like [`new`](Self::new), but the link carries every wire packet on
    /// its own, without the kernel's GSO batches: loss then strikes single
    /// packets (with batches, a dropped batch is up to 64 KiB of
    /// consecutive segments) and the counters see every packet's headers.
    /// Costs several times the CPU: about one core at 1 Gbit/s.
    pub fn per_packet(tag: &str) -> Result<Self, Error> {
        Self::make(tag, false)
    }

    fn make(tag: &str, offload: bool) -> Result<Self, Error> {
        if !rustix::process::geteuid().is_root() {
            return Err(Error::NotRoot);
        }
        // Best effort: a leftover that cannot be removed is not this lab's problem.
        let _ = names::clean(names::Which::Stale);
        let base = names::fresh(tag);
        let mut lab = Lab {
            client_ns: format!("{base}-c"),
            server_ns: format!("{base}-s"),
            delay: None,
            rtt: Duration::ZERO,
            rate_mbit: None,
            queue: None,
        };
        // From here on, Drop removes whatever was made if a step fails.
        for ns in [&lab.client_ns, &lab.server_ns] {
            cmd::root("ip", &["netns", "add", ns])?;
            cmd::ns(ns, "ip", &["link", "set", "lo", "up"])?;
            // IPv4 only: no router solicitations or MLD reports in the counters.
            cmd::ns(
                ns,
                "sh",
                &["-c", "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6"],
            )?;
        }
        lab.delay = Some(DelayLine::start(
            &lab.client_ns,
            &lab.server_ns,
            Duration::ZERO,
            DELAY_QUEUE,
            offload,
        )?);
        for (ns, local, peer) in [
            (&lab.client_ns, CLIENT_ADDR, SERVER_ADDR),
            (&lab.server_ns, SERVER_ADDR, CLIENT_ADDR),
        ] {
            let (local, peer, mtu) = (local.to_string(), peer.to_string(), MTU.to_string());
            cmd::ns(
                ns,
                "ip",
                &["addr", "add", &local, "peer", &peer, "dev", DEVICE],
            )?;
            cmd::ns(
                ns,
                "ip",
                &[
                    "link",
                    "set",
                    DEVICE,
                    "mtu",
                    &mtu,
                    "txqueuelen",
                    "10000",
                    "up",
                ],
            )?;
            shape::init(ns)?;
        }
        Ok(lab)
    }

    /// The client namespace's name (for `ip netns exec`).
    pub fn client_ns(&self) -> &str {
        &self.client_ns
    }

    /// The server namespace's name (for `ip netns exec`).
    pub fn server_ns(&self) -> &str {
        &self.server_ns
    }

    /// The client's address: [`CLIENT_ADDR`].
    pub fn client_addr(&self) -> Ipv4Addr {
        CLIENT_ADDR
    }

    /// The server's address: [`SERVER_ADDR`].
    pub fn server_addr(&self) -> Ipv4Addr {
        SERVER_ADDR
    }

    /// A command that runs `program` in the client namespace. Processes
    /// still running there when the lab drops are killed.
    pub fn client_cmd(&self, program: &str) -> Command {
        cmd::in_ns(&self.client_ns, program)
    }

    /// A command that runs `program` in the server namespace. Processes
    /// still running there when the lab drops are killed.
    pub fn server_cmd(&self, program: &str) -> Command {
        cmd::in_ns(&self.server_ns, program)
    }

    /// Runs `f` on a thread inside the client namespace and returns its
    /// result. Sockets `f` opens stay in the namespace and may be used from
    /// any thread: `lab.in_client(|| TcpStream::connect(..))`.
    pub fn in_client<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
        enter::run_in(&self.client_ns, f)
    }

    /// Runs `f` on a thread inside the server namespace and returns its
    /// result: `lab.in_server(|| TcpListener::bind((SERVER_ADDR, 0)))`.
    pub fn in_server<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
        enter::run_in(&self.server_ns, f)
    }

    /// Sets the round-trip time: each packet is held `ms / 2` each way.
    /// Applies to packets sent from now on.
    pub fn set_rtt(&mut self, ms: f64) -> Result<(), Error> {
        if !(ms.is_finite() && (0.0..=10_000.0).contains(&ms)) {
            return Err(Error::BadValue {
                knob: "set_rtt",
                got: format!("{ms} ms"),
                expected: "0 to 10000 ms",
            });
        }
        self.rtt = Duration::from_secs_f64(ms / 1000.0);
        if let Some(d) = &self.delay {
            d.set_one_way(self.rtt / 2);
        }
        // The rate limiter's queue is sized to the RTT.
        if let Some(mbit) = self.rate_mbit {
            self.set_rate(mbit)?;
        }
        Ok(())
    }

    /// The round-trip time set (the delay line's part; the kernel adds
    /// some tens of microseconds).
    pub fn rtt(&self) -> Duration {
        self.rtt
    }

    /// Limits the link to `mbit` Mbit/s each way (IP bytes), with a
    /// bottleneck queue of one RTT at that rate (at least 10 ms; see
    /// [`set_queue`](Self::set_queue)). Packets beyond the queue are
    /// dropped, as on a real path.
    pub fn set_rate(&mut self, mbit: f64) -> Result<(), Error> {
        if !(mbit.is_finite() && (0.01..=100_000.0).contains(&mbit)) {
            return Err(Error::BadValue {
                knob: "set_rate",
                got: format!("{mbit} Mbit/s"),
                expected: "0.01 to 100000 Mbit/s",
            });
        }
        let queue = self
            .queue
            .unwrap_or_else(|| self.rtt.max(Duration::from_millis(10)));
        for ns in [&self.client_ns, &self.server_ns] {
            shape::set_rate(ns, mbit, queue)?;
        }
        self.rate_mbit = Some(mbit);
        Ok(())
    }

    /// Sets the bottleneck queue of the rate limit to `ms` milliseconds of
    /// packets at the set rate, instead of one RTT. A deeper queue lets a
    /// loss-based congestion controller keep a long link full; a shallow
    /// one makes it lose more. Applies now if a rate is set, else with it.
    pub fn set_queue(&mut self, ms: f64) -> Result<(), Error> {
        if !(ms.is_finite() && (0.0..=10_000.0).contains(&ms)) {
            return Err(Error::BadValue {
                knob: "set_queue",
                got: format!("{ms} ms"),
                expected: "0 to 10000 ms",
            });
        }
        self.queue = Some(Duration::from_secs_f64(ms / 1000.0));
        match self.rate_mbit {
            Some(mbit) => self.set_rate(mbit),
            None => Ok(()),
        }
    }

    /// Removes the rate limit.
    pub fn clear_rate(&mut self) -> Result<(), Error> {
        for ns in [&self.client_ns, &self.server_ns] {
            shape::clear_rate(ns)?;
        }
        self.rate_mbit = None;
        Ok(())
    }

    /// Drops `percent` % of the packets each way, at random (resolution
    /// 0.01 %). 0 turns loss off.
    pub fn set_loss(&mut self, percent: f64) -> Result<(), Error> {
        if !(percent.is_finite() && (0.0..=100.0).contains(&percent)) {
            return Err(Error::BadValue {
                knob: "set_loss",
                got: format!("{percent} %"),
                expected: "0 to 100 %",
            });
        }
        let per_10000 = (percent * 100.0).round() as u32;
        for ns in [&self.client_ns, &self.server_ns] {
            shape::set_loss(ns, per_10000)?;
        }
        Ok(())
    }

    /// Takes the link down on both sides (`ip link set down`): packets in
    /// flight are lost, and senders get "network unreachable" until
    /// [`link_up`](Self::link_up).
    pub fn link_down(&self) -> Result<(), Error> {
        self.set_link("down")
    }

    /// Brings the link back up; its routes come back with it.
    pub fn link_up(&self) -> Result<(), Error> {
        self.set_link("up")
    }

    /// Bytes (IP packets, headers included) the link delivered into the
    /// server namespace so far: after the rate limiter, before loss.
    pub fn bytes_to_server(&self) -> Result<u64, Error> {
        shape::bytes_in(&self.server_ns)
    }

    /// Bytes (IP packets, headers included) the link delivered into the
    /// client namespace so far: after the rate limiter, before loss.
    pub fn bytes_to_client(&self) -> Result<u64, Error> {
        shape::bytes_in(&self.client_ns)
    }

    /// What the delay line has carried in direction `dir`.
    pub fn delay_stats(&self, dir: Direction) -> Stats {
        self.delay
            .as_ref()
            .map(|d| d.stats(dir))
            .unwrap_or_default()
    }

    fn set_link(&self, state: &str) -> Result<(), Error> {
        for ns in [&self.client_ns, &self.server_ns] {
            cmd::ns(ns, "ip", &["link", "set", DEVICE, state])?;
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Processes first: they keep a namespace alive after `ip netns del`.
        names::kill_inside(&self.client_ns);
        names::kill_inside(&self.server_ns);
        // Then the delay line: its threads stop and its TUN devices close.
        self.delay = None;
        for ns in [&self.client_ns, &self.server_ns] {
            if names::path(ns).exists() {
                if let Err(e) = names::remove(ns) {
                    // Drop cannot fail; `netlab clean` removes it later.
                    eprintln!("netlab: could not remove namespace {ns}: {e}");
                }
            }
        }
    }
}
