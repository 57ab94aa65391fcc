//! `netlab`: the network test bench by hand, for benchmarks and debugging.
//!
//! `netlab up` makes a lab (two namespaces joined by the delay line) and
//! holds it until a signal or its time is up; `netlab clean` removes labs
//! that dead or stuck processes left behind.
#![forbid(unsafe_code)]

use std::io::Write;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result};
use anypatch_netlab::{Direction, Lab, Which};
use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// The network test bench: two network namespaces joined by a userspace
/// delay line, with rate, loss and byte counters.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Make a lab and hold it until SIGINT/SIGTERM or `--for` has passed.
    ///
    /// Prints `client_ns=.. server_ns=.. client_addr=.. server_addr=..`
    /// on one line once the lab is ready; run programs in it with
    /// `ip netns exec NS ...`. On exit, prints what the delay line
    /// carried to stderr and removes the lab.
    Up {
        /// A word in the namespaces' names.
        #[arg(long, default_value = "up")]
        tag: String,
        /// Round-trip time in milliseconds (half of it each way).
        #[arg(long, default_value_t = 0.0)]
        rtt: f64,
        /// Rate limit in Mbit/s each way (none if absent).
        #[arg(long)]
        rate: Option<f64>,
        /// The rate limiter's queue in milliseconds at the rate (default: the RTT, at least 10).
        #[arg(long)]
        queue: Option<f64>,
        /// Packets dropped at random each way, in percent.
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Carry every wire packet on its own, without GSO batches (see Lab::per_packet).
        #[arg(long)]
        per_packet: bool,
        /// Tear the lab down after this many seconds at most.
        #[arg(long = "for", default_value_t = 600)]
        seconds: u64,
    },
    /// Remove labs whose owner is dead or that are older than 30 minutes.
    Clean {
        /// Remove every lab, in use or not (except this process's).
        #[arg(long)]
        all: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Up {
            tag,
            rtt,
            rate,
            queue,
            loss,
            per_packet,
            seconds,
        } => up(
            &tag,
            rtt,
            rate,
            queue,
            loss,
            per_packet,
            Duration::from_secs(seconds),
        ),
        Cmd::Clean { all } => {
            let which = if all { Which::All } else { Which::Stale };
            for ns in anypatch_netlab::clean(which).context("cleaning labs")? {
                println!("removed {ns}");
            }
            Ok(())
        }
    }
}

fn up(
    tag: &str,
    rtt: f64,
    rate: Option<f64>,
    queue: Option<f64>,
    loss: f64,
    per_packet: bool,
    hold: Duration,
) -> Result<()> {
    // Listen for signals before the lab exists, so none is missed.
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).context("installing signal handlers")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let _ = tx.send(sig);
        }
    });

    let mut lab = if per_packet {
        Lab::per_packet(tag)
    } else {
        Lab::new(tag)
    }
    .context("making the lab")?;
    lab.set_rtt(rtt)?;
    if let Some(ms) = queue {
        lab.set_queue(ms)?;
    }
    if let Some(mbit) = rate {
        lab.set_rate(mbit)?;
    }
    lab.set_loss(loss)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "client_ns={} server_ns={} client_addr={} server_addr={}",
        lab.client_ns(),
        lab.server_ns(),
        lab.client_addr(),
        lab.server_addr()
    )?;
    out.flush()?;
    drop(out);

    let why = match rx.recv_timeout(hold) {
        Ok(sig) => format!("signal {sig}"),
        Err(_) => format!("{} s passed", hold.as_secs()),
    };
    for (dir, name) in [
        (Direction::ToServer, "to server"),
        (Direction::ToClient, "to client"),
    ] {
        let s = lab.delay_stats(dir);
        eprintln!(
            "netlab: {name}: {} packets, {} bytes, {} dropped (queue full), {} dropped (over 50 ms late: the delay line was the bottleneck), {} refused (link down)",
            s.packets, s.bytes, s.queue_drops, s.late_drops, s.write_errors
        );
    }
    eprintln!("netlab: lab removed ({why})");
    Ok(())
}
