//! The static initramfs `applypatch` (scripts/build-static) fetches a
//! signed patch over plain `http://` (its only network: no TLS, no QUIC, no
//! name lookups), from a small server in this test that breaks the first
//! transfer mid-way: the client goes on with a Range request from the byte
//! it had reached (with If-Range, so only the same version continues), and
//! the result is NEW. Without `--trusted-key`, for an unsigned patch, for
//! https:// or quic:// and for a host name it refuses, writing nothing.

mod net_support;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anypatch_tests::{bin, root, without_test_package_env};
use net_support::{b3, noise, ok, run};

/// The static binary, built once by scripts/build-static (as the boot test does).
fn static_applypatch() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = without_test_package_env(&mut Command::new("bash"))
            .arg(root().join("scripts/build-static"))
            .output()
            .expect("scripts/build-static runs");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "scripts/build-static failed: {said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(said.lines().last().expect("the binary's path").trim())
    })
}

/// What the test server got: each request's Range and If-Range headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Request {
    path: String,
    range: Option<String>,
    if_range: Option<String>,
}

/// An HTTP/1.1 server on loopback for the files in `files`; the first
/// response to a request without Range is cut after `cut` body bytes (the
/// connection closed, as a dropped link would).
struct Server {
    port: u16,
    log: Arc<Mutex<Vec<Request>>>,
}

const ETAG: &str = "\"v1\"";

impl Server {
    fn start(files: Vec<(String, Vec<u8>)>, cut: Option<usize>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let seen = log.clone();
        std::thread::spawn(move || {
            let mut cut = cut;
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let req = answer(conn, &files, &mut cut);
                seen.lock().expect("log").push(req);
            }
        });
        Self { port, log }
    }

    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    fn log(&self) -> Vec<Request> {
        self.log.lock().expect("log").clone()
    }
}

/// Answers one request: 200 (cut once if asked), 206 for a Range, 404.
fn answer(conn: TcpStream, files: &[(String, Vec<u8>)], cut: &mut Option<usize>) -> Request {
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut r = BufReader::new(conn.try_clone().expect("clone"));
    let mut req = Request::default();
    let mut line = String::new();
    while r.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
        let l = line.trim_end();
        if let Some(rest) = l.strip_prefix("GET /") {
            req.path = rest.split(' ').next().unwrap_or_default().to_owned();
        } else if let Some((name, value)) = l.split_once(':') {
            match name.to_ascii_lowercase().as_str() {
                "range" => req.range = Some(value.trim().to_owned()),
                "if-range" => req.if_range = Some(value.trim().to_owned()),
                _ => {}
            }
        }
        line.clear();
    }
    let mut w = conn;
    let Some((_, body)) = files.iter().find(|(n, _)| *n == req.path) else {
        let _ = w.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        return req;
    };
    let from = req
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse::<usize>().ok());
    let head = match from {
        Some(from) => format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {from}-{}/{}\r\nContent-Length: {}\r\nETag: {ETAG}\r\n\r\n",
            body.len() - 1,
            body.len(),
            body.len() - from
        ),
        None => format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: {ETAG}\r\n\r\n",
            body.len()
        ),
    };
    let mut send = &body[from.unwrap_or(0)..];
    if from.is_none() {
        if let Some(n) = cut.take() {
            send = &send[..n];
        }
    }
    let _ = w
        .write_all(head.as_bytes())
        .and_then(|()| w.write_all(send));
    req
}

/// Old and new images, a signed and an unsigned patch between them, and
/// the keys, in `dir`.
struct Pair {
    old: PathBuf,
    new: PathBuf,
    signed: Vec<u8>,
    unsigned: Vec<u8>,
    key: PathBuf,
}

fn pair(dir: &Path) -> Pair {
    let (old, new) = (dir.join("old.img"), dir.join("new.img"));
    std::fs::write(&old, noise(1, 3 << 20)).expect("old");
    std::fs::write(&new, noise(2, 3 << 20)).expect("new");
    let secret = dir.join("release.key");
    ok(Command::new(bin("mkpatch"))
        .args(["-q", "keygen", "-o"])
        .arg(&secret));
    let make = |name: &str, sign: bool| {
        let out = dir.join(name);
        let mut cmd = Command::new(bin("mkpatch"));
        cmd.arg("-q").arg(&old).arg(&new).arg("-o").arg(&out);
        if sign {
            cmd.arg("--sign").arg(&secret);
        }
        ok(&mut cmd);
        std::fs::read(&out).expect("patch")
    };
    Pair {
        signed: make("signed.anyp", true),
        unsigned: make("unsigned.anyp", false),
        key: dir.join("release.pub"),
        old,
        new,
    }
}

fn apply(args: &[&str], p: &Pair, out: &Path, trusted: bool) -> Output {
    let mut cmd = Command::new(static_applypatch());
    cmd.arg(&p.old).args(args).arg("-o").arg(out);
    if trusted {
        cmd.arg("--trusted-key").arg(&p.key);
    }
    run(&mut cmd)
}

#[test]
fn a_signed_patch_over_plain_http_resumes_with_a_range_request() {
    let dir = tempfile::tempdir().expect("dir");
    let p = pair(dir.path());
    let cut = p.signed.len() / 3;
    let server = Server::start(vec![("p.anyp".into(), p.signed.clone())], Some(cut));
    let out = dir.path().join("out.img");
    let r = apply(&[&server.url("p.anyp")], &p, &out, true);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert_eq!(b3(&out), b3(&p.new), "the output is NEW");
    assert!(err.contains("retrying"), "{err}");
    // The first request was cut at `cut`; the second asked for the rest,
    // for the same version only.
    let log = server.log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0].range, None, "{log:?}");
    assert_eq!(log[1].range, Some(format!("bytes={cut}-")), "{log:?}");
    assert_eq!(log[1].if_range.as_deref(), Some(ETAG), "{log:?}");
}

#[test]
fn the_static_build_refuses_what_it_cannot_trust_or_reach() {
    let dir = tempfile::tempdir().expect("dir");
    let p = pair(dir.path());
    let server = Server::start(
        vec![
            ("signed.anyp".into(), p.signed.clone()),
            ("unsigned.anyp".into(), p.unsigned.clone()),
        ],
        None,
    );
    let out = dir.path().join("out.img");
    let refused = |args: &[&str], trusted: bool, code: i32, says: &str| {
        let r = apply(args, &p, &out, trusted);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} wrote its output");
    };
    // Plain http proves nothing about the sender without a signature.
    refused(&[&server.url("signed.anyp")], false, 1, "--trusted-key");
    // An unsigned patch is not applied, though fetched.
    refused(&[&server.url("unsigned.anyp")], true, 6, "");
    // No TLS, no QUIC, no resolver in this build: said, not retried.
    let https = format!("https://127.0.0.1:{}/signed.anyp", server.port);
    let quic = format!("quic://127.0.0.1:{}/signed.anyp", server.port);
    refused(&[&https], true, 1, "no QUIC or TLS");
    refused(&[&quic], true, 1, "no QUIC or TLS");
    let named = format!("http://localhost:{}/signed.anyp", server.port);
    refused(&[&named], true, 1, "IP address");
    // Only the unsigned patch was requested.
    let log = server.log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].path, "unsigned.anyp", "{log:?}");
}
