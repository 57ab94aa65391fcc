//! The QUIC server and the remote reader on loopback: whole and ranged
//! fetches, a pinned certificate, refusals, a server restarted mid-way, and
//! a file changed between two attempts.

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anypatch_net::server::{ServeOptions, Server};
use anypatch_net::tls::{load_or_make, parse_fingerprint};
use anypatch_net::{RemoteOptions, RemotePatch, RemoteUrl, Trust};

/// A server on its own runtime thread; dropping it stops the server.
struct Running {
    addr: SocketAddr,
    fingerprint: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Running {
    fn start(dir: &Path, state: &Path, port: u16) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let identity = load_or_make(state, &["localhost".into()]).expect("identity");
        let fingerprint = identity.fingerprint();
        let opts = ServeOptions::new(dir.to_path_buf(), SocketAddr::from(([127, 0, 0, 1], port)));
        let server = runtime
            .block_on(async { Server::bind(&opts, identity) })
            .expect("bind");
        let addr = server.local_addr().expect("addr");
        runtime.spawn(server.run());
        Self {
            addr,
            fingerprint,
            runtime: Some(runtime),
        }
    }

    fn url(&self, name: &str) -> RemoteUrl {
        RemoteUrl::parse(&format!("quic://127.0.0.1:{}/{name}", self.addr.port())).expect("url")
    }

    fn pinned(&self) -> Trust {
        Trust::Pinned(parse_fingerprint(&self.fingerprint).expect("fingerprint"))
    }

    fn stop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn quiet(trust: Trust) -> (RemoteOptions, Arc<Mutex<Vec<String>>>) {
    let notes = Arc::new(Mutex::new(Vec::new()));
    let sink = notes.clone();
    let mut opts = RemoteOptions::new(trust);
    opts.backoff = Duration::from_millis(50);
    opts.notice = Arc::new(move |s| sink.lock().expect("notes").push(s.to_owned()));
    (opts, notes)
}

fn read_all(mut r: RemotePatch) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    r.read_to_end(&mut out)?;
    Ok(out)
}

#[test]
fn whole_and_ranged_fetches_with_a_pinned_certificate() {
    let (dir, state) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("state"),
    );
    let bytes = data(5 << 20, 1);
    std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
    std::fs::write(dir.path().join("sub/p.patch"), &bytes).expect("write");
    let server = Running::start(dir.path(), state.path(), 0);
    let (opts, _) = quiet(server.pinned());
    let got =
        read_all(RemotePatch::open(server.url("sub/p.patch"), 0, opts.clone()).expect("open"))
            .expect("read");
    assert!(got == bytes, "the fetched bytes differ");
    let got = read_all(RemotePatch::open(server.url("sub/p.patch"), 12345, opts).expect("open"))
        .expect("read");
    assert!(got == bytes[12345..], "the ranged fetch differs");
}

#[test]
fn a_wrong_certificate_and_wrong_names_are_refused_at_once() {
    let (dir, state) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("state"),
    );
    std::fs::write(dir.path().join("p"), b"patch").expect("write");
    let outside = tempfile::tempdir().expect("outside");
    std::fs::write(outside.path().join("secret"), b"secret").expect("write");
    std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("link"))
        .expect("symlink");
    let server = Running::start(dir.path(), state.path(), 0);
    let (opts, notes) = quiet(Trust::Pinned([7; 32]));
    let e = read_all(RemotePatch::open(server.url("p"), 0, opts).expect("open"))
        .expect_err("a wrong pin");
    assert!(e.to_string().contains("not trusted"), "{e}");
    assert!(
        notes.lock().expect("notes").is_empty(),
        "a wrong certificate was retried"
    );
    for (name, why) in [
        ("missing", "no file missing"),
        ("../etc/passwd", "without '..'"),
        ("link", "no file link"),
    ] {
        let (opts, _) = quiet(server.pinned());
        let e =
            read_all(RemotePatch::open(server.url(name), 0, opts).expect("open")).expect_err(name);
        assert!(e.to_string().contains(why), "{name}: {e}");
    }
    let (opts, _) = quiet(server.pinned());
    let e = read_all(RemotePatch::open(server.url("p"), 6, opts).expect("open"))
        .expect_err("past the end");
    assert!(e.to_string().contains("past the end"), "{e}");
}

#[test]
fn a_server_restarted_mid_way_is_resumed_from_where_it_broke() {
    let (dir, state) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("state"),
    );
    let bytes = data(24 << 20, 2);
    std::fs::write(dir.path().join("p"), &bytes).expect("write");
    let mut server = Running::start(dir.path(), state.path(), 0);
    let port = server.addr.port();
    let (opts, notes) = quiet(server.pinned());
    let mut r = RemotePatch::open(server.url("p"), 0, opts).expect("open");
    let stats = r.stats();
    let mut got = vec![0u8; 4 << 20];
    r.read_exact(&mut got).expect("the first 4 MiB");
    server.stop(); // mid-way
    std::thread::sleep(Duration::from_millis(300));
    let _again = Running::start(dir.path(), state.path(), port);
    r.read_to_end(&mut got).expect("the rest, after a retry");
    assert!(got == bytes, "the resumed bytes differ");
    let received = stats.received.load(std::sync::atomic::Ordering::Relaxed);
    assert!(stats.retries.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    assert!(
        received <= bytes.len() as u64 * 11 / 10,
        "{received} bytes received for {}",
        bytes.len()
    );
    assert!(
        !notes.lock().expect("notes").is_empty(),
        "no notice of the retry"
    );
}

#[test]
fn a_file_changed_between_attempts_is_not_spliced() {
    let (dir, state) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("state"),
    );
    let bytes = data(24 << 20, 3);
    std::fs::write(dir.path().join("p"), &bytes).expect("write");
    let mut server = Running::start(dir.path(), state.path(), 0);
    let port = server.addr.port();
    let (opts, _) = quiet(server.pinned());
    let mut r = RemotePatch::open(server.url("p"), 0, opts).expect("open");
    let mut got = vec![0u8; 4 << 20];
    r.read_exact(&mut got).expect("the first 4 MiB");
    server.stop();
    // Another version of the file under the same name.
    std::fs::write(dir.path().join("p.new"), data(24 << 20, 4)).expect("write");
    std::fs::rename(dir.path().join("p.new"), dir.path().join("p")).expect("rename");
    let _again = Running::start(dir.path(), state.path(), port);
    let e = r.read_to_end(&mut got).expect_err("a changed file");
    assert!(e.to_string().contains("changed on the server"), "{e}");
}

/// Bytes that neither compress nor repeat.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn an_image_syncs_over_quic_in_place_and_to_a_new_file() {
    use anypatch_net::sync::{SyncFailure, SyncSession};
    use anypatch_sync::drive::{ReceiveOptions, Target};

    let dir = tempfile::tempdir().expect("tempdir");
    let served = dir.path().join("served");
    std::fs::create_dir(&served).expect("mkdir");
    let old = noise(6 << 20, 1);
    let mut new = old.clone();
    for i in 0..12 {
        let at = i * 500_000 + 77;
        new[at..at + 300].copy_from_slice(&noise(300, 100 + i as u64));
    }
    new.splice(3_000_000..3_000_000, noise(777, 9));
    std::fs::write(served.join("vm.img"), &new).expect("write new");
    let server = Running::start(&served, &dir.path().join("state"), 0);
    let opts = ReceiveOptions {
        threads: 2,
        cache: None,
        ..ReceiveOptions::default()
    };
    let session = |name: &str| SyncSession::open(&server.url(name), server.pinned(), None);

    // To a new file.
    let old_path = dir.path().join("old.img");
    std::fs::write(&old_path, &old).expect("write old");
    let out_path = dir.path().join("out.img");
    let old_file = std::fs::File::open(&old_path).expect("old");
    let out = std::fs::File::create(&out_path).expect("out");
    let s = session("vm.img").unwrap_or_else(|e| panic!("open: {e}"));
    assert_eq!(s.len, new.len() as u64);
    let r = s
        .run(&old_file, Target::Copy(&out), &opts)
        .unwrap_or_else(|e| panic!("sync to a new file: {e}"));
    assert!(std::fs::read(&out_path).expect("read") == new);
    // 12 changed places of 300 bytes (two blocks at most each) and the
    // leaf of the insertion, shifted after it: found in the old image.
    assert!(r.bytes_down < 12 * 2 * 4096 + 200_000, "{r:?}");

    // In place.
    let target = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&old_path)
        .expect("target");
    let r = session("vm.img")
        .and_then(|s| s.run(&target, Target::InPlace(&target), &opts))
        .unwrap_or_else(|e| panic!("sync in place: {e}"));
    assert!(std::fs::read(&old_path).expect("read") == new);
    // Only the changed blocks: those of the places changed before the
    // insertion, and everything after it (shifted by 777 bytes).
    let after = (new.len() - 3_000_000) as u64;
    assert!(r.bytes_written <= after + 6 * 2 * 4096 + 4096, "{r:?}");

    // A name that is not there is refused before anything is written.
    let e = session("nope.img").expect_err("no such image");
    assert!(e.to_string().contains("refused"), "{e}");

    // A patch is fetched, not synced.
    let mut patch = vec![0x89, 0x41, 0x4E, 0x59, 0x50, 0x54, 0x0D, 0x0A];
    patch.extend(noise(5000, 3));
    std::fs::write(served.join("a.patch"), &patch).expect("write patch");
    assert!(matches!(session("a.patch"), Err(SyncFailure::IsPatch)));
}

/// What one `GET` of `name` on `fetcher`'s connection gives: the bytes, or
/// the server's refusal.
async fn get_once(
    fetcher: &mut anypatch_net::fetch::Fetcher,
) -> Result<Vec<u8>, anypatch_net::fetch::FetchError> {
    let (_, mut body) = fetcher.open(0, None, None).await?;
    let mut got = Vec::new();
    while let Some(chunk) = body.chunk().await? {
        got.extend_from_slice(&chunk);
    }
    Ok(got)
}

/// A served directory that others may write to: `sub` is swapped, again
/// and again and atomically (`RENAME_EXCHANGE`), with a link to a
/// directory outside, while a client asks for `sub/x` thousands of times.
/// A server that checks the path and then opens it serves the outside
/// file whenever the swap falls between the two; opened beneath the
/// directory in one step, every answer is the inside file or a refusal.
#[test]
fn a_directory_swapped_for_a_link_during_requests_never_leads_out() {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let top = tempfile::tempdir().expect("dir");
    let (served, outside) = (top.path().join("served"), top.path().join("outside"));
    std::fs::create_dir_all(served.join("sub")).expect("sub");
    std::fs::create_dir(&outside).expect("outside");
    std::fs::write(served.join("sub/x"), b"inside").expect("inside");
    std::fs::write(outside.join("x"), b"SECRET").expect("outside");
    std::os::unix::fs::symlink(&outside, served.join("flip")).expect("link");
    let server = Running::start(&served, &top.path().join("state"), 0);

    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let swapper = {
        let (stop, swaps) = (stop.clone(), swaps.clone());
        let (a, b) = (served.join("sub"), served.join("flip"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                renameat_with(CWD, &a, CWD, &b, RenameFlags::EXCHANGE).expect("exchange");
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (mut inside, mut refused, mut leaked) = (0u32, 0u32, 0u32);
    rt.block_on(async {
        let mut fetcher = anypatch_net::fetch::Fetcher::new(server.url("sub/x"), server.pinned())
            .expect("fetcher");
        for _ in 0..3000 {
            match get_once(&mut fetcher).await {
                Ok(b) if b == b"inside" => inside += 1,
                Ok(b) if b == b"SECRET" => leaked += 1,
                Ok(b) => panic!("unexpected bytes {b:?}"),
                Err(e) if e.to_string().contains("no file sub/x") => refused += 1,
                Err(e) => panic!("unexpected failure: {e}"),
            }
        }
    });
    stop.store(true, Ordering::Relaxed);
    swapper.join().expect("swapper");
    assert_eq!(
        leaked, 0,
        "the outside file was served {leaked} times ({inside} inside, {refused} refused)"
    );
    // The swap really raced the requests: both outcomes happened.
    assert!(
        inside > 0 && refused > 0,
        "{inside} inside, {refused} refused, {} swaps",
        swaps.load(Ordering::Relaxed)
    );
}
