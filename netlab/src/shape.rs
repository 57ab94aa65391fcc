//! The link's conditions as tc and nftables see them: rate (tbf behind an
//! ifb on the receiving side), loss and byte counters (an nftables table).
//!
//! Everything acts where packets *enter* a namespace, after the delay
//! line, as a router on the path would: a sender never sees its own
//! socket pushed back or its sends refused, it sees loss and queueing.

use std::time::Duration;

use crate::delay::DEVICE;
use crate::{cmd, Error};

/// The ifb device in each namespace that holds the rate limiter.
const IFB: &str = "nlq";

/// The nftables table in each namespace.
const TABLE: &str = "anpnl";

/// Creates the ifb device and the nftables table (counter, no loss) in `ns`.
pub(crate) fn init(ns: &str) -> Result<(), Error> {
    cmd::ns(ns, "ip", &["link", "add", IFB, "type", "ifb"])?;
    cmd::ns(ns, "ip", &["link", "set", IFB, "txqueuelen", "10000", "up"])?;
    let ruleset = format!(
        "table inet {TABLE} {{\n\
         \tcounter rx {{ }}\n\
         \tchain pre {{\n\
         \t\ttype filter hook prerouting priority -300; policy accept;\n\
         {}\
         \t}}\n\
         }}\n",
        rules(0)
    );
    cmd::run_with_input(nft(ns, &["-f", "-"]), &ruleset)?;
    Ok(())
}

/// Limits the rate of packets entering `ns` to `mbit` Mbit/s, with a
/// queue that holds `queue` worth of packets at that rate (at least 16 KiB).
pub(crate) fn set_rate(ns: &str, mbit: f64, queue: Duration) -> Result<(), Error> {
    let bytes_per_sec = mbit * 1e6 / 8.0;
    // Enough burst that the timer's granularity does not cost rate, and
    // never less than two full-size packets.
    let burst = (bytes_per_sec * 0.002).max(16.0 * 1024.0) as u64;
    let queue = (bytes_per_sec * queue.as_secs_f64()).max(16.0 * 1024.0) as u64;
    let rate = format!("{}bit", (mbit * 1e6) as u64);
    // tbf's limit is the bytes that may wait for tokens: the queue.
    let (burst, limit) = (burst.to_string(), queue.to_string());
    cmd::ns(
        ns,
        "tc",
        &[
            "qdisc", "replace", "dev", IFB, "root", "tbf", "rate", &rate, "burst", &burst, "limit",
            &limit,
        ],
    )?;
    // Redirect what enters the TUN device through the ifb (once).
    let ingress = cmd::ns(ns, "tc", &["qdisc", "show", "dev", DEVICE, "ingress"])?;
    if ingress.trim().is_empty() {
        cmd::ns(
            ns,
            "tc",
            &["qdisc", "add", "dev", DEVICE, "handle", "ffff:", "ingress"],
        )?;
        cmd::ns(
            ns,
            "tc",
            &[
                "filter", "add", "dev", DEVICE, "parent", "ffff:", "protocol", "all", "u32",
                "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", IFB,
            ],
        )?;
    }
    Ok(())
}

/// Removes the rate limit on packets entering `ns`.
pub(crate) fn clear_rate(ns: &str) -> Result<(), Error> {
    let ingress = cmd::ns(ns, "tc", &["qdisc", "show", "dev", DEVICE, "ingress"])?;
    if !ingress.trim().is_empty() {
        cmd::ns(ns, "tc", &["qdisc", "del", "dev", DEVICE, "ingress"])?;
    }
    Ok(())
}

/// Drops `per_10000` in 10,000 packets entering `ns`, at random.
pub(crate) fn set_loss(ns: &str, per_10000: u32) -> Result<(), Error> {
    let script = format!(
        "flush chain inet {TABLE} pre\n{}",
        rules(per_10000)
            .lines()
            .map(|r| format!("add rule inet {TABLE} pre {}\n", r.trim()))
            .collect::<String>()
    );
    cmd::run_with_input(nft(ns, &["-f", "-"]), &script)?;
    Ok(())
}

/// Bytes (IP headers included) that entered `ns` through the link, after
/// the rate limiter and before the loss rule.
pub(crate) fn bytes_in(ns: &str) -> Result<u64, Error> {
    let out = cmd::run(nft(ns, &["list", "counter", "inet", TABLE, "rx"]))?;
    parse_bytes(&out).ok_or_else(|| Error::Counter {
        namespace: ns.into(),
        output: out,
    })
}

/// The rules of the prerouting chain: count, then drop at random.
fn rules(per_10000: u32) -> String {
    let mut r = format!("\t\tiifname \"{DEVICE}\" counter name \"rx\"\n");
    if per_10000 > 0 {
        r.push_str(&format!(
            "\t\tiifname \"{DEVICE}\" numgen random mod 10000 < {per_10000} drop\n"
        ));
    }
    r
}

fn nft(ns: &str, args: &[&str]) -> std::process::Command {
    let mut c = cmd::in_ns(ns, "nft");
    c.args(args);
    c
}

/// The byte count in `nft list counter` output ("packets N bytes M").
fn parse_bytes(out: &str) -> Option<u64> {
    let mut words = out.split_whitespace();
    while let Some(w) = words.next() {
        if w == "bytes" {
            return words.next()?.parse().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_output_is_read() {
        let out = "table inet anpnl {\n\tcounter rx {\n\t\tpackets 12 bytes 3456\n\t}\n}\n";
        assert_eq!(parse_bytes(out), Some(3456));
        assert_eq!(parse_bytes("table inet anpnl { }"), None);
    }

    #[test]
    fn loss_rule_only_when_asked() {
        assert!(!rules(0).contains("numgen"));
        assert!(rules(150).contains("numgen random mod 10000 < 150 drop"));
    }
}
