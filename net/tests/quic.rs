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
        let opts = ServeOptions {
            dir: dir.to_path_buf(),
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
        };
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
