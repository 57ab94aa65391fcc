//! A small HTTP/1.1 file server on loopback for the client's hostile
//! cases: files and their ETags set by the test (a file changed between two
//! runs, two files with one tag), Range and If-Range as RFC 9110 says, an
//! optional rate limit, and a log of what was asked. One thread per
//! connection, `Connection: close`; stopped on drop.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub path: String,
    /// The Range header, if any.
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub status: u16,
}

/// A served file: its bytes and its ETag.
type File = (Arc<Vec<u8>>, String);

#[derive(Default)]
struct Shared {
    files: Mutex<HashMap<String, File>>,
    log: Mutex<Vec<Logged>>,
    /// Bytes a second per response; 0: as fast as the socket takes them.
    rate: AtomicU64,
    stop: AtomicBool,
}

/// The server; see the module docs.
pub struct HttpServer {
    port: u16,
    shared: Arc<Shared>,
}

impl HttpServer {
    /// Listens on 127.0.0.1 on a free port.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().expect("addr").port();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &s);
                });
            }
        });
        Self { port, shared }
    }

    /// Serves `bytes` at `/name` with ETag `tag` (quoted here).
    pub fn set(&self, name: &str, bytes: Vec<u8>, tag: &str) {
        self.shared
            .files
            .lock()
            .expect("files")
            .insert(format!("/{name}"), (Arc::new(bytes), format!("\"{tag}\"")));
    }

    /// Limits each response to `bytes_per_sec` (0: no limit).
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.shared.rate.store(bytes_per_sec, Ordering::SeqCst);
    }

    /// `http://127.0.0.1:PORT/NAME`.
    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    /// The requests so far.
    pub fn log(&self) -> Vec<Logged> {
        self.shared.log.lock().expect("log").clone()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(conn: TcpStream, s: &Shared) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let (mut range, mut if_range) = (None, None);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        let Some((name, value)) = h.split_once(':') else {
            continue;
        };
        let value = Some(value.trim().to_owned());
        match name.trim().to_ascii_lowercase().as_str() {
            "range" => range = value,
            "if-range" => if_range = value,
            _ => {}
        }
    }
    let file = s.files.lock().expect("files").get(&path).cloned();
    let mut out = conn;
    let Some((body, tag)) = file else {
        log(s, &path, &range, &if_range, 404);
        return out.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    };
    let len = body.len() as u64;
    // If-Range with another tag: the whole file, as if no Range had come.
    let ranged = range
        .as_deref()
        .filter(|_| if_range.as_deref().is_none_or(|t| t == tag))
        .and_then(|r| parse_range(r, len));
    let (status, start, end) = match ranged {
        Some((a, b)) => (206, a, b),
        None => (200, 0, len),
    };
    log(s, &path, &range, &if_range, status);
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nETag: {tag}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n",
        if status == 206 { "Partial Content" } else { "OK" },
        end - start
    );
    if status == 206 {
        head.push_str(&format!(
            "Content-Range: bytes {start}-{}/{len}\r\n",
            end - 1
        ));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    let began = Instant::now();
    let mut at = start;
    while at < end {
        let n = (end - at).min(64 << 10);
        out.write_all(&body[at as usize..(at + n) as usize])?;
        at += n;
        let rate = s.rate.load(Ordering::SeqCst);
        if rate > 0 {
            let due = Duration::from_secs_f64((at - start) as f64 / rate as f64);
            std::thread::sleep(due.saturating_sub(began.elapsed()));
        }
    }
    out.flush()
}

fn log(s: &Shared, path: &str, range: &Option<String>, if_range: &Option<String>, status: u16) {
    s.log.lock().expect("log").push(Logged {
        path: path.to_owned(),
        range: range.clone(),
        if_range: if_range.clone(),
        status,
    });
}

/// `bytes=A-` or `bytes=A-B` within `len` → `(A, B + 1)`.
fn parse_range(r: &str, len: u64) -> Option<(u64, u64)> {
    let (a, b) = r.trim().strip_prefix("bytes=")?.split_once('-')?;
    let a: u64 = a.trim().parse().ok()?;
    let b = match b.trim() {
        "" => len,
        b => b.parse::<u64>().ok()?.saturating_add(1).min(len),
    };
    (a < b).then_some((a, b))
}
