//! The load tool of the network tests: N clients fetch one file at once
//! from one `mkpatch serve`, each over its own QUIC connection through
//! [`RemotePatch`] (as `applypatch` does), and each compares every byte with
//! the local copy of the file. Prints one JSON object:
//! `{"clients":N,"ok":N,"failed":0,"bytes":B,"seconds":S,"mb_per_s":R,"retries":T,"notices":[...],"errors":[...]}`
//! (mb_per_s: all clients' bytes together, in 10^6 bytes a second).
//!
//! ```text
//! cargo run --release -p anypatch-net --example quic-load -- \
//!     --url quic://127.0.0.1:4433/p.anyp --server-cert SHA256:... --expect p.anyp --clients 1000
//! ```
//! Exit status 0 when every client got the whole file right, 1 otherwise, 2 on bad arguments.
#![forbid(unsafe_code)]

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use anypatch_net::tls::parse_fingerprint;
use anypatch_net::{RemoteOptions, RemotePatch, RemoteUrl, Trust};

/// Error messages kept in the report (the count is always whole).
const KEEP_ERRORS: usize = 5;

struct Args {
    url: RemoteUrl,
    pin: [u8; 32],
    expect: Arc<Vec<u8>>,
    clients: usize,
}

fn usage(why: &str) -> ! {
    eprintln!(
        "quic-load: {why}\nusage: quic-load --url quic://HOST:PORT/NAME --server-cert SHA256:... --expect FILE --clients N"
    );
    std::process::exit(2)
}

fn args() -> Args {
    let mut it = std::env::args().skip(1);
    let (mut url, mut pin, mut expect, mut clients) = (None, None, None, 1usize);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--url" => url = Some(RemoteUrl::parse(&value).unwrap_or_else(|e| usage(&e))),
            "--server-cert" => pin = Some(parse_fingerprint(&value).unwrap_or_else(|e| usage(&e))),
            "--expect" => {
                expect =
                    Some(std::fs::read(&value).unwrap_or_else(|e| usage(&format!("{value}: {e}"))))
            }
            "--clients" => {
                clients = value
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .unwrap_or_else(|| usage("--clients takes a positive number"))
            }
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    Args {
        url: url.unwrap_or_else(|| usage("--url is required")),
        pin: pin.unwrap_or_else(|| usage("--server-cert is required")),
        expect: Arc::new(expect.unwrap_or_else(|| usage("--expect is required"))),
        clients,
    }
}

/// Retry notices: how many, and the first few.
type Notices = Arc<Mutex<(u64, Vec<String>)>>;

/// Keeps a message in a bounded list that counts them all.
fn keep(list: &Mutex<(u64, Vec<String>)>, message: String) {
    if let Ok(mut l) = list.lock() {
        l.0 += 1;
        if l.1.len() < KEEP_ERRORS {
            l.1.push(message);
        }
    }
}

/// One client: fetches the whole file and compares it; the bytes it got.
fn client(args: &Args, notices: &Notices) -> Result<u64, String> {
    let mut opts = RemoteOptions::new(Trust::Pinned(args.pin));
    let counted = notices.clone();
    // Retries are counted and a few kept, not printed: a thousand clients would flood stderr.
    opts.notice = Arc::new(move |s| keep(&counted, s.to_owned()));
    let mut patch = RemotePatch::open(args.url.clone(), 0, opts).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 64 << 10];
    let mut at = 0usize;
    loop {
        let n = patch
            .read(&mut buf)
            .map_err(|e| format!("at byte {at}: {e}"))?;
        if n == 0 {
            break;
        }
        let want = args
            .expect
            .get(at..at + n)
            .ok_or_else(|| format!("got more than the {} bytes of the file", args.expect.len()))?;
        if want != &buf[..n] {
            return Err(format!("bytes {at}..{} differ from the file", at + n));
        }
        at += n;
    }
    if at != args.expect.len() {
        return Err(format!("ended at byte {at} of {}", args.expect.len()));
    }
    Ok(at as u64)
}

fn main() {
    let args = Arc::new(args());
    let retries: Notices = Arc::default();
    let errors: Notices = Arc::default();
    let bytes = Arc::new(AtomicU64::new(0));
    // All clients start together once their threads exist.
    let start = Arc::new(Barrier::new(args.clients + 1));
    let mut threads = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        let (args, retries, errors, bytes, start) = (
            args.clone(),
            retries.clone(),
            errors.clone(),
            bytes.clone(),
            start.clone(),
        );
        let spawned = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || {
                start.wait();
                match client(&args, &retries) {
                    Ok(n) => {
                        bytes.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => keep(&errors, e),
                }
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                eprintln!("quic-load: cannot start client {}: {e}", threads.len() + 1);
                std::process::exit(1)
            }
        }
    }
    start.wait();
    let began = Instant::now();
    for t in threads {
        let _ = t.join();
    }
    let seconds = began.elapsed().max(Duration::from_micros(1)).as_secs_f64();
    let quoted = |l: &Notices| {
        let (n, kept) = l.lock().map(|e| e.clone()).unwrap_or_default();
        let kept: Vec<String> = kept.iter().map(|e| format!("{e:?}")).collect();
        (n, kept.join(","))
    };
    let (failed, kept) = quoted(&errors);
    let failed = failed as usize;
    let (retries, notices) = quoted(&retries);
    let bytes = bytes.load(Ordering::Relaxed);
    println!(
        "{{\"clients\":{},\"ok\":{},\"failed\":{failed},\"bytes\":{bytes},\"seconds\":{seconds:.3},\"mb_per_s\":{:.1},\"retries\":{retries},\"notices\":[{notices}],\"errors\":[{kept}]}}",
        args.clients,
        args.clients - failed,
        bytes as f64 / seconds / 1e6,
    );
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
