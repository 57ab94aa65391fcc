//! A whole sync between two files on this machine, over socket pairs,
//! timed: `sync-local OLD NEW (-o OUT | --in-place) [THREADS]`. The
//! sender's tree is made first (a server keeps it), then the clock runs
//! from the receiver's first hash to its last write. For measuring the
//! pipeline without a network (bench/); it changes OLD with --in-place.

use std::fs::{File, OpenOptions};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use anypatch_sync::drive::{receive, send, ReceiveOptions, Target};
use anypatch_sync::growing::GrowingTree;
use anypatch_sync::hash_leaves;
use anypatch_sync::sender::image_root;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: sync-local OLD NEW (-o OUT | --in-place) [THREADS]";
    let (old_p, new_p, mode) = match args.as_slice() {
        [o, n, m, rest @ ..] if m == "--in-place" || (m == "-o" && !rest.is_empty()) => {
            (o, n, m.as_str())
        }
        _ => return Err(usage.into()),
    };
    let threads: usize = args.last().and_then(|t| t.parse().ok()).unwrap_or(2);

    let image = File::open(new_p)?;
    let len = image.metadata()?.len();
    let t0 = Instant::now();
    let leaves = hash_leaves(&image, len, threads, |_, _| true)?;
    let root = image_root(&image, len, &leaves)?;
    let tree = GrowingTree::whole(len, leaves, root);
    eprintln!(
        "sender's tree: {:.3} s (kept by a server between syncs)",
        t0.elapsed().as_secs_f64()
    );

    let (control_s, control_r) = UnixStream::pair()?;
    let (mut data_s, data_r) = UnixStream::pair()?;
    let old = OpenOptions::new()
        .read(true)
        .write(mode == "--in-place")
        .open(old_p)?;
    let out = match mode {
        "-o" => Some(File::create(&args[3])?),
        _ => None,
    };
    let target = match &out {
        Some(f) => Target::Copy(f),
        None => Target::InPlace(&old),
    };
    let t1 = Instant::now();
    let (received, sent) = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            send(
                &image,
                &tree,
                rand_seed(),
                control_s.try_clone()?,
                &control_s,
                &mut data_s,
            )
        });
        let r = receive(
            &old,
            target,
            control_r.try_clone().expect("clone"),
            data_r,
            &control_r,
            &ReceiveOptions {
                threads,
                cache: None,
                ..ReceiveOptions::default()
            },
        );
        (r, sender.join())
    });
    let received = received?;
    let secs = t1.elapsed().as_secs_f64();
    let sent = sent.map_err(|_| "the sender panicked")??;
    println!(
        "{secs:.3} s, {} bytes up, {} bytes down, {} bytes written, {:?}, sender finished: {}",
        received.bytes_up,
        received.bytes_down,
        received.bytes_written,
        received.counts,
        sent.finished
    );
    Ok(())
}

/// A seed no image could have been made to collide with in advance.
fn rand_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
}
