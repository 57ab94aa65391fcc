//! `applypatch OLD https://…` and `http://…` against a real nginx (Debian's
//! package, `scripts/setup-deps net`), started here on loopback with a CA
//! and a server certificate made here: `-o`, `--check` and `--in-place` on
//! every small corpus pair; a server not trusted; a transfer broken mid-way
//! (the worker killed) that goes on with a Range request, and, from a
//! server that ignores Range, from the start again; a corrupt patch; plain
//! http:// only for a patch signed by a `--trusted-key`; a server that
//! wants a token (`--token-file`, sent as `Authorization: Bearer`).

mod net_support;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anypatch_tests::{bin, corpus_pairs, corpus_small};
use net_support::{b3, children, noise_pair, ok, run, signal, size, wait_for};

/// A CA and a server certificate it signed, for 127.0.0.1 and localhost.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("pki dir");
        let p = |name: &str| dir.path().join(name);
        std::fs::write(
            p("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("ext.cnf");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        ok(Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .arg("-keyout")
            .arg(p("ca.key"))
            .arg("-out")
            .arg(p("ca.pem"))
            .args(["-days", "2", "-subj", "/CN=anypatch test CA"]));
        ok(Command::new("openssl")
            .arg("req")
            .args(ec)
            .arg("-keyout")
            .arg(p("server.key"))
            .arg("-out")
            .arg(p("server.csr"))
            .args(["-subj", "/CN=localhost"]));
        ok(Command::new("openssl")
            .args(["x509", "-req", "-in"])
            .arg(p("server.csr"))
            .arg("-CA")
            .arg(p("ca.pem"))
            .arg("-CAkey")
            .arg(p("ca.key"))
            .args(["-CAcreateserial", "-days", "2", "-out"])
            .arg(p("server.pem"))
            .arg("-extfile")
            .arg(p("ext.cnf")));
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CA's certificate, for `--ca`.
    fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }
}

/// How the nginx of a test behaves.
#[derive(Clone, Copy, Default)]
struct Site {
    /// HTTPS with the Pki's certificate; plain HTTP otherwise.
    tls: bool,
    /// `max_ranges 0;`: every request gets the whole file (200).
    ignore_ranges: bool,
    /// `limit_rate`, bytes a second per request: a transfer lasts long
    /// enough to be broken mid-way.
    rate: Option<u32>,
    /// Every request without `Authorization: Bearer <this>` gets 403.
    bearer: Option<&'static str>,
}

/// One line of the access log.
#[derive(Debug)]
struct Logged {
    status: u16,
    body_bytes: u64,
    /// The request's Range header, "-" when it had none.
    range: String,
}

/// An nginx serving `served` on a loopback port, stopped on drop.
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    tls: bool,
}

impl Nginx {
    fn start(served: &Path, pki: &Pki, site: Site) -> Self {
        // A port the system just handed out; nginx binds it a moment later,
        // and another process may take it first: then try another.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            if let Some(n) = Self::try_start(served, pki, site, port) {
                return n;
            }
        }
        panic!("nginx did not start on any of 5 ports");
    }

    fn try_start(served: &Path, pki: &Pki, site: Site, port: u16) -> Option<Self> {
        let dir = tempfile::tempdir().expect("nginx dir");
        let d = dir.path().display();
        let tls = if site.tls {
            format!(
                "listen 127.0.0.1:{port} ssl;\n ssl_certificate {};\n ssl_certificate_key {};",
                pki.path("server.pem").display(),
                pki.path("server.key").display()
            )
        } else {
            format!("listen 127.0.0.1:{port};")
        };
        let ranges = if site.ignore_ranges {
            "max_ranges 0;"
        } else {
            ""
        };
        let rate = site
            .rate
            .map(|r| format!("limit_rate {r};"))
            .unwrap_or_default();
        let bearer = site
            .bearer
            .map(|t| format!("if ($http_authorization != \"Bearer {t}\") {{ return 403; }}"))
            .unwrap_or_default();
        let conf = format!(
            "daemon off;
master_process on;
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
 log_format ranges '$status $body_bytes_sent \"$http_range\"';
 access_log {d}/access.log ranges;
 client_body_temp_path {d}/body;
 proxy_temp_path {d}/proxy;
 fastcgi_temp_path {d}/fastcgi;
 uwsgi_temp_path {d}/uwsgi;
 scgi_temp_path {d}/scgi;
 default_type application/octet-stream;
 server {{
  {tls}
  root {};
  {ranges}
  {rate}
  {bearer}
 }}
}}
",
            served.display()
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).expect("nginx.conf");
        let mut child = Command::new(nginx())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nginx starts");
        let mut up = false;
        wait_for(Duration::from_secs(10), "nginx to listen", || {
            up = TcpStream::connect(("127.0.0.1", port)).is_ok();
            up || matches!(child.try_wait(), Ok(Some(_)))
        });
        if !up {
            let out = child.wait_with_output().expect("nginx output");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("Address already in use"),
                "nginx failed: {err}"
            );
            return None;
        }
        Some(Self {
            child,
            dir,
            port,
            tls: site.tls,
        })
    }

    fn url(&self, name: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/{name}", self.port)
    }

    /// Kills the worker with SIGKILL: its connections break mid-transfer,
    /// and the master starts a new one.
    fn kill_worker(&self) {
        let workers = children(self.child.id());
        assert_eq!(workers.len(), 1, "one nginx worker: {workers:?}");
        signal(workers[0], "KILL");
    }

    /// The access log so far (a killed worker's requests are not in it).
    fn log(&self) -> Vec<Logged> {
        let text = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        text.lines()
            .map(|l| {
                let mut f = l.splitn(3, ' ');
                let mut next = || f.next().unwrap_or_default();
                Logged {
                    status: next().parse().expect("status"),
                    body_bytes: next().parse().expect("bytes"),
                    range: next().trim_matches('"').to_owned(),
                }
            })
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master stops its workers too; SIGKILL would not.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Debian puts nginx in /usr/sbin, which a test's PATH may lack.
fn nginx() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/nginx");
    if sbin.exists() {
        return sbin;
    }
    let found = Command::new("sh")
        .args(["-c", "command -v nginx"])
        .output()
        .expect("sh runs");
    assert!(
        found.status.success(),
        "nginx is missing: run scripts/setup-deps net"
    );
    PathBuf::from(String::from_utf8_lossy(&found.stdout).trim())
}

fn applypatch() -> Command {
    Command::new(bin("applypatch"))
}

/// Files whose names say applypatch left them (temporary or download copies).
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.to_string_lossy().contains("anypatch-") || p.to_string_lossy().contains("applypatch-")
        })
        .collect()
}

#[test]
fn every_pair_round_trips_over_https_with_the_ca() {
    let corpus = corpus_small();
    let pki = Pki::new();
    let served = tempfile::tempdir().expect("served");
    let work = tempfile::tempdir().expect("work");
    let pairs = corpus_pairs(corpus);
    for name in &pairs {
        ok(Command::new(bin("mkpatch"))
            .args(["-q", "--in-place"])
            .arg(corpus.join(format!("{name}.old")))
            .arg(corpus.join(format!("{name}.new")))
            .arg("-o")
            .arg(served.path().join(format!("{name}.anyp"))));
    }
    let nginx = Nginx::start(
        served.path(),
        &pki,
        Site {
            tls: true,
            ..Site::default()
        },
    );
    for name in &pairs {
        let old = corpus.join(format!("{name}.old"));
        let new = corpus.join(format!("{name}.new"));
        let url = nginx.url(&format!("{name}.anyp"));
        let out = work.path().join(format!("{name}.out"));
        ok(applypatch()
            .arg("-q")
            .arg(&old)
            .arg(&url)
            .arg("-o")
            .arg(&out)
            .arg("--ca")
            .arg(pki.ca()));
        assert_eq!(b3(&out), b3(&new), "{name}: -o over HTTPS");

        let check = ok(applypatch()
            .arg("--check")
            .arg(&old)
            .arg(&url)
            .arg("--ca")
            .arg(pki.ca()));
        let said = String::from_utf8_lossy(&check.stdout);
        assert!(said.contains(&b3(&new)), "{name}: --check said {said}");

        let target = work.path().join(format!("{name}.img"));
        std::fs::copy(&old, &target).expect("copy");
        ok(applypatch()
            .args(["-q", "--in-place"])
            .arg(&target)
            .arg(&url)
            .arg("--ca")
            .arg(pki.ca()));
        assert_eq!(b3(&target), b3(&new), "{name}: --in-place over HTTPS");
        assert_eq!(leftovers(work.path()), Vec::<PathBuf>::new(), "{name}");
    }
    // Each of the three fetched each patch once, whole, from nginx.
    let log = nginx.log();
    assert_eq!(log.len(), 3 * pairs.len(), "{log:?}");
    assert!(
        log.iter().all(|l| l.status == 200 && l.range == "-"),
        "{log:?}"
    );
}

#[test]
fn https_without_the_ca_is_refused_before_anything_is_written() {
    let corpus = corpus_small();
    let pki = Pki::new();
    let served = tempfile::tempdir().expect("served");
    let work = tempfile::tempdir().expect("work");
    let old = corpus.join("sparse.old");
    ok(Command::new(bin("mkpatch"))
        .args(["-q", "--in-place"])
        .arg(&old)
        .arg(corpus.join("sparse.new"))
        .arg("-o")
        .arg(served.path().join("p.anyp")));
    let nginx = Nginx::start(
        served.path(),
        &pki,
        Site {
            tls: true,
            ..Site::default()
        },
    );
    let out = work.path().join("out");
    let r = run(applypatch()
        .arg(&old)
        .arg(nginx.url("p.anyp"))
        .arg("-o")
        .arg(&out));
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    // Said at once: a refused certificate is not a dropped link to retry.
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(!err.contains("retrying"), "{err}");
    assert!(!out.exists(), "the output was written");

    // --in-place neither touches the target nor keeps a download.
    let target = work.path().join("t.img");
    std::fs::copy(&old, &target).expect("copy");
    let r = run(applypatch()
        .arg("--in-place")
        .arg(&target)
        .arg(nginx.url("p.anyp")));
    assert_eq!(r.status.code(), Some(1), "{r:?}");
    assert_eq!(b3(&target), b3(&old));
    // Nothing was served: the handshake failed before any request.
    assert!(nginx.log().is_empty(), "{:?}", nginx.log());
    assert_eq!(leftovers(work.path()), Vec::<PathBuf>::new());
}

/// A 4 MiB patch at 1 MB/s, the worker killed once the client has 1 MiB:
/// what the client says, and what nginx then served.
fn broken_transfer(ignore_ranges: bool) -> (String, Vec<Logged>, u64) {
    let pki = Pki::new();
    let served = tempfile::tempdir().expect("served");
    let work = tempfile::tempdir().expect("work");
    let patch = served.path().join("big.anyp");
    let (old, new) = noise_pair(work.path(), 4 << 20, &patch);
    let len = size(&patch);
    let nginx = Nginx::start(
        served.path(),
        &pki,
        Site {
            tls: true,
            ignore_ranges,
            rate: Some(1 << 20),
            ..Site::default()
        },
    );
    let target = work.path().join("t.img");
    std::fs::copy(&old, &target).expect("copy");
    let client = applypatch()
        .args(["-q", "--in-place"])
        .arg(&target)
        .arg(nginx.url("big.anyp"))
        .arg("--ca")
        .arg(pki.ca())
        .stderr(Stdio::piped())
        .spawn()
        .expect("applypatch starts");
    let download = work.path().join(".t.img.anypatch-download");
    wait_for(Duration::from_secs(20), "1 MiB downloaded", || {
        size(&download) >= 1 << 20
    });
    nginx.kill_worker();
    let out = client.wait_with_output().expect("applypatch ends");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert_eq!(b3(&target), b3(&new), "the target after a broken transfer");
    assert!(!download.exists(), "the download copy was left behind");
    (err, nginx.log(), len)
}

#[test]
fn a_broken_transfer_goes_on_with_a_range_request() {
    let (err, log, len) = broken_transfer(false);
    assert!(err.contains("retrying"), "{err}");
    assert!(!err.contains("ignores range"), "{err}");
    // The killed request is not logged; the one after it asked for the rest.
    assert_eq!(log.len(), 1, "{log:?}");
    let from: u64 = log[0]
        .range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("not a range from an offset: {log:?}"));
    assert!(from >= 1 << 20, "resumed from byte {from}");
    assert_eq!(log[0].status, 206, "{log:?}");
    assert_eq!(log[0].body_bytes, len - from, "{log:?}");
    eprintln!(
        "patch {len} bytes; nginx's worker killed, the rest ({} bytes) fetched from byte {from}",
        len - from
    );
}

#[test]
fn a_server_that_ignores_range_is_fetched_from_the_start_again() {
    let (err, log, len) = broken_transfer(true);
    assert!(
        err.contains("ignores range requests; fetching from the start again"),
        "{err}"
    );
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(log[0].range.starts_with("bytes="), "{log:?}");
    assert_eq!(log[0].status, 200, "{log:?}");
    assert_eq!(log[0].body_bytes, len, "{log:?}");
}

#[test]
fn a_corrupt_patch_is_refused_before_anything_is_written() {
    let corpus = corpus_small();
    let pki = Pki::new();
    let served = tempfile::tempdir().expect("served");
    let work = tempfile::tempdir().expect("work");
    let name = corpus_pairs(corpus)
        .into_iter()
        .next()
        .expect("a corpus pair");
    let old = corpus.join(format!("{name}.old"));
    let patch = served.path().join("p.anyp");
    ok(Command::new(bin("mkpatch"))
        .args(["-q", "--in-place"])
        .arg(&old)
        .arg(corpus.join(format!("{name}.new")))
        .arg("-o")
        .arg(&patch));
    let mut bytes = std::fs::read(&patch).expect("patch");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&patch, bytes).expect("flip");
    let nginx = Nginx::start(
        served.path(),
        &pki,
        Site {
            tls: true,
            ..Site::default()
        },
    );
    let url = nginx.url("p.anyp");
    let out = work.path().join("out");
    let r = run(applypatch()
        .arg(&old)
        .arg(&url)
        .arg("-o")
        .arg(&out)
        .arg("--ca")
        .arg(pki.ca()));
    assert_eq!(r.status.code(), Some(2), "-o: {r:?}");
    assert!(!out.exists(), "-o wrote its output");
    let r = run(applypatch()
        .arg("--check")
        .arg(&old)
        .arg(&url)
        .arg("--ca")
        .arg(pki.ca()));
    assert_eq!(r.status.code(), Some(2), "--check: {r:?}");
    let target = work.path().join("t.img");
    std::fs::copy(&old, &target).expect("copy");
    let r = run(applypatch()
        .arg("--in-place")
        .arg(&target)
        .arg(&url)
        .arg("--ca")
        .arg(pki.ca()));
    assert_eq!(r.status.code(), Some(2), "--in-place: {r:?}");
    assert_eq!(b3(&target), b3(&old), "--in-place changed the target");
    assert_eq!(leftovers(work.path()), Vec::<PathBuf>::new());
}

#[test]
fn plain_http_needs_a_patch_signed_by_a_trusted_key() {
    let corpus = corpus_small();
    let pki = Pki::new();
    let served = tempfile::tempdir().expect("served");
    let work = tempfile::tempdir().expect("work");
    let key = |n: &str| work.path().join(n);
    for name in ["release", "other"] {
        ok(Command::new(bin("mkpatch"))
            .arg("keygen")
            .arg("-o")
            .arg(key(&format!("{name}.key"))));
    }
    let (old, new) = (corpus.join("sparse.old"), corpus.join("sparse.new"));
    for (file, sign) in [("signed.anyp", true), ("unsigned.anyp", false)] {
        let mut cmd = Command::new(bin("mkpatch"));
        cmd.arg("-q")
            .arg(&old)
            .arg(&new)
            .arg("-o")
            .arg(served.path().join(file));
        if sign {
            cmd.arg("--sign").arg(key("release.key"));
        }
        ok(&mut cmd);
    }
    let nginx = Nginx::start(served.path(), &pki, Site::default());
    let out = work.path().join("out");

    ok(applypatch()
        .arg(&old)
        .arg(nginx.url("signed.anyp"))
        .arg("-o")
        .arg(&out)
        .arg("--trusted-key")
        .arg(key("release.pub")));
    assert_eq!(b3(&out), b3(&new));
    std::fs::remove_file(&out).expect("rm");

    let r = run(applypatch()
        .arg(&old)
        .arg(nginx.url("signed.anyp"))
        .arg("-o")
        .arg(&out));
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("--trusted-key"), "{err}");
    for (what, file, trusted) in [
        ("an unsigned patch", "unsigned.anyp", "release.pub"),
        ("a patch signed by another key", "signed.anyp", "other.pub"),
    ] {
        let r = run(applypatch()
            .arg(&old)
            .arg(nginx.url(file))
            .arg("-o")
            .arg(&out)
            .arg("--trusted-key")
            .arg(key(trusted)));
        assert_eq!(r.status.code(), Some(6), "{what}: {r:?}");
        assert!(!out.exists(), "{what}: the output was written");
    }
    // The refused plain fetch never reached the server; the others did.
    // nginx logs a request when it ends it, which can come after a client
    // that refused the patch has exited.
    wait_for(
        std::time::Duration::from_secs(10),
        "nginx to log the three fetches",
        || nginx.log().len() >= 3,
    );
    assert_eq!(nginx.log().len(), 3, "{:?}", nginx.log());
}

#[test]
fn a_token_file_is_sent_as_a_bearer_token_over_https() {
    use std::os::unix::fs::PermissionsExt;
    let corpus = corpus_small();
    let pki = Pki::new();
    let served = tempfile::tempdir().expect("served");
    let work = tempfile::tempdir().expect("work");
    let (old, new) = (corpus.join("sparse.old"), corpus.join("sparse.new"));
    ok(Command::new(bin("mkpatch"))
        .arg("-q")
        .arg(&old)
        .arg(&new)
        .arg("-o")
        .arg(served.path().join("p.anyp")));
    let nginx = Nginx::start(
        served.path(),
        &pki,
        Site {
            tls: true,
            bearer: Some("Be4rer-t0ken"),
            ..Site::default()
        },
    );
    let token = |name: &str, text: &str| {
        let path = work.path().join(name);
        std::fs::write(&path, text).expect("token file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    };
    let (right, wrong) = (
        token("right", "Be4rer-t0ken\n"),
        token("wrong", "Be4rer-t0keN\n"),
    );
    let out = work.path().join("out");
    let fetch = |token: Option<&Path>| {
        let mut cmd = applypatch();
        cmd.arg(&old)
            .arg(nginx.url("p.anyp"))
            .arg("-o")
            .arg(&out)
            .arg("--ca")
            .arg(pki.ca());
        if let Some(t) = token {
            cmd.arg("--token-file").arg(t);
        }
        run(&mut cmd)
    };
    for (what, t) in [("no token", None), ("a wrong token", Some(wrong.as_path()))] {
        let r = fetch(t);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{what}: {err}");
        assert!(err.contains("403"), "{what}: {err}");
        assert!(!err.contains("t0ke"), "{what}: the token shown: {err}");
        assert!(!out.exists(), "{what}: the output was written");
    }
    let r = fetch(Some(&right));
    assert!(r.status.success(), "the right token: {r:?}");
    assert!(
        !String::from_utf8_lossy(&r.stderr).contains("t0ke"),
        "{r:?}"
    );
    assert_eq!(b3(&out), b3(&new));
    let log = nginx.log();
    assert_eq!(
        log.iter().map(|l| l.status).collect::<Vec<_>>(),
        [403, 403, 200],
        "{log:?}"
    );
}
