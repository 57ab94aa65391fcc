//! The network test bench of anypatch: a [`Lab`] is two network namespaces,
//! "client" and "server", joined by a link whose RTT, rate, loss and state
//! a test sets, with byte counters each way.
//!
//! ```no_run
//! let mut lab = anypatch_netlab::Lab::new("my_test")?;
//! lab.set_rtt(50.0)?;
//! lab.set_rate(100.0)?;
//! let server = lab.server_cmd("iperf3").args(["-s", "-1"]).spawn();
//! // ... run a client with lab.client_cmd(..) against lab.server_addr() ...
//! println!("{} bytes to the client", lab.bytes_to_client()?);
//! # Ok::<(), anypatch_netlab::Error>(())
//! ```
//!
//! # How the link is made
//! This kernel has no netem, so the link is built from parts:
//! - RTT: a userspace delay line ([`DelayLine`]): a TUN device in each
//!   namespace, and threads of this process that carry each IP packet
//!   across after half the RTT. TCP, UDP and ICMP alike.
//! - Rate: tbf on an ifb device that takes what enters each namespace,
//!   so the bottleneck queue is on the path, not in the sender's stack.
//! - Loss: an nftables `numgen random` rule where packets enter.
//! - Outage: `ip link set down` on both TUN devices.
//! - Counters: an nftables counter where packets enter each namespace.
//!
//! Needs root, iproute2 and nftables (`scripts/setup-deps net`).
#![forbid(unsafe_code)]

mod cmd;
pub mod delay;
mod enter;
mod error;
mod lab;
mod names;
mod shape;

pub use delay::{DelayLine, Direction, Stats, LATE_LIMIT};
pub use error::Error;
pub use lab::{Lab, CLIENT_ADDR, MTU, SERVER_ADDR};
pub use names::{clean, Which, PREFIX, STALE_AFTER};
