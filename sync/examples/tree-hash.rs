//! Hashes an image's tree and prints its BLAKE3, the groups and the time:
//! `cargo run --release -p anypatch-sync --example tree-hash FILE [THREADS]`.
//! For comparing with `b3sum --num-threads N FILE` (bench/).

use std::time::Instant;

use anypatch_sync::tree::{group_values, root};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or_else(|| std::io::Error::other("usage: tree-hash FILE [THREADS]"))?;
    let threads = args.next().and_then(|t| t.parse().ok()).unwrap_or(1);
    let file = std::fs::File::open(&path)?;
    let len = file.metadata()?.len();
    let t0 = Instant::now();
    let leaves = anypatch_sync::hash_leaves(&file, len, threads, |_, _| true)?;
    let groups = group_values(len, &leaves);
    let hash = root(len, &leaves).map(|h| h.to_hex().to_string());
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{}  {path}\n{} leaves, {} groups, {threads} threads, {secs:.3} s, {:.0} MiB/s",
        hash.as_deref().unwrap_or("(one leaf: use b3sum)"),
        leaves.len(),
        groups.len(),
        len as f64 / secs / 1048576.0
    );
    Ok(())
}
