//! A small blocking HTTP/1.1 client over `std::net::TcpStream`, for plain
//! `http://` only: one GET from an offset (`Range`, with `If-Range` so only
//! the same version continues), the body as it arrives. It is what the
//! static initramfs `applypatch` fetches with, where tokio, rustls and
//! reqwest do not fit in 2 MiB; with no TLS, a patch's signature by a
//! `--trusted-key` is what is trusted.
//!
//! Host names need glibc's resolver, which a static binary would carry
//! whole (177 KB measured, more than the room left under 2 MiB): the URL
//! names the server by its IP address.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::fetch::{FetchError, STALL_TIMEOUT};
use crate::url::RemoteUrl;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of status line and headers accepted at most.
const MAX_HEAD: usize = 64 << 10;
/// Bytes read from the socket per chunk handed on.
const READ: usize = 64 << 10;

/// What a response said, before its body.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_length: Option<u64>,
    pub content_range: Option<String>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub location: Option<String>,
    chunked: bool,
}

/// A response's body: as long as Content-Length says, chunked, or up to
/// the end of the connection.
#[derive(Debug)]
pub struct Body {
    conn: BufReader<TcpStream>,
    framing: Framing,
}

#[derive(Debug)]
enum Framing {
    Length(u64),
    /// Bytes left in the current chunk; `None` before a chunk's size line.
    Chunked(Option<u64>),
    Close,
    Done,
}

/// Sends `GET url` for bytes `offset..end` (to the end without `end`),
/// with `If-Range: tag` when a tag is given; returns the response's head
/// and its body.
pub fn get(
    url: &RemoteUrl,
    offset: u64,
    end: Option<u64>,
    tag: Option<&str>,
) -> Result<(Response, Body), FetchError> {
    let addr = address(url)?;
    let retry = |what: &str, e: io::Error| FetchError::Retry(format!("{url}: {what}: {e}"));
    let mut conn = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|e| retry(&format!("cannot connect to {addr}"), e))?;
    conn.set_read_timeout(Some(STALL_TIMEOUT))
        .and_then(|()| conn.set_write_timeout(Some(STALL_TIMEOUT)))
        .map_err(|e| retry("cannot set timeouts", e))?;
    let mut request = format!(
        "GET /{} HTTP/1.1\r\nHost: {}\r\nUser-Agent: applypatch\r\nAccept-Encoding: identity\r\nConnection: close\r\n",
        url.path,
        url.authority()
    );
    if offset > 0 || end.is_some() {
        let last = end.map_or(String::new(), |e| e.saturating_sub(1).to_string());
        request.push_str(&format!("Range: bytes={offset}-{last}\r\n"));
        if let Some(tag) = tag.filter(|t| !t.is_empty()) {
            request.push_str(&format!("If-Range: {tag}\r\n"));
        }
    }
    request.push_str("\r\n");
    conn.write_all(request.as_bytes())
        .map_err(|e| retry("the request failed", e))?;
    let mut conn = BufReader::with_capacity(READ, conn);
    let head = read_head(&mut conn).map_err(|e| match e.kind() {
        io::ErrorKind::InvalidData => FetchError::Fatal(format!("{url}: {e}")),
        _ => retry("no answer", e),
    })?;
    let framing = if head.chunked {
        Framing::Chunked(None)
    } else if let Some(len) = head.content_length {
        Framing::Length(len)
    } else {
        Framing::Close
    };
    Ok((head, Body { conn, framing }))
}

/// The server's address: the URL's host must be an IP address here.
fn address(url: &RemoteUrl) -> Result<SocketAddr, FetchError> {
    let ip: IpAddr = url.host.parse().map_err(|_| {
        FetchError::Fatal(format!(
            "{url}: this applypatch (the small build, as in an initramfs) cannot look up host names; give the server's IP address in the URL"
        ))
    })?;
    Ok(SocketAddr::new(ip, url.port))
}

/// Reads the status line and the headers (up to the blank line).
fn read_head(conn: &mut impl BufRead) -> io::Result<Response> {
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    let mut used = 0;
    let mut line = String::new();
    let mut next = |line: &mut String| -> io::Result<()> {
        line.clear();
        let n = conn
            .by_ref()
            .take((MAX_HEAD - used) as u64 + 1)
            .read_line(line)?;
        used += n;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection before answering",
            ));
        }
        if used > MAX_HEAD {
            return Err(bad(format!(
                "the server's headers are longer than {MAX_HEAD} bytes"
            )));
        }
        Ok(())
    };
    next(&mut line)?;
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| bad(format!("not an HTTP/1 status line: {:?}", line.trim_end())))?;
    let mut head = Response {
        status,
        ..Response::default()
    };
    loop {
        next(&mut line)?;
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            return Ok(head);
        }
        let Some((name, value)) = l.split_once(':') else {
            return Err(bad(format!("not a header line: {l:?}")));
        };
        let value = value.trim().to_owned();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                let len = value
                    .parse()
                    .map_err(|_| bad(format!("Content-Length {value:?} is not a number")))?;
                head.content_length = Some(len);
            }
            "transfer-encoding" => head.chunked = value.to_ascii_lowercase().contains("chunked"),
            "content-range" => head.content_range = Some(value),
            "etag" => head.etag = Some(value),
            "last-modified" => head.last_modified = Some(value),
            "location" => head.location = Some(value),
            _ => {}
        }
    }
}

impl Body {
    /// The next bytes of the body; `None` at its end.
    pub fn chunk(&mut self) -> Result<Option<Vec<u8>>, FetchError> {
        self.next().map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => FetchError::Fatal(format!("the body is malformed: {e}")),
            _ => FetchError::Retry(format!("the download broke: {e}")),
        })
    }

    fn next(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            let want = match self.framing {
                Framing::Done => return Ok(None),
                Framing::Length(0) => {
                    self.framing = Framing::Done;
                    return Ok(None);
                }
                Framing::Length(left) | Framing::Chunked(Some(left)) => left.min(READ as u64),
                Framing::Close => READ as u64,
                Framing::Chunked(None) => {
                    let size = self.chunk_size()?;
                    self.framing = if size == 0 {
                        // Trailers are not read: the connection closes.
                        Framing::Done
                    } else {
                        Framing::Chunked(Some(size))
                    };
                    continue;
                }
            };
            let mut buf = vec![0u8; want as usize];
            let n = self.conn.read(&mut buf)?;
            buf.truncate(n);
            if n == 0 {
                // The end of a close-delimited body, or a body cut short:
                // then the caller sees fewer bytes than announced.
                self.framing = Framing::Done;
                return Ok(None);
            }
            match &mut self.framing {
                Framing::Length(left) => *left -= n as u64,
                Framing::Chunked(Some(left)) => {
                    *left -= n as u64;
                    if *left == 0 {
                        let mut crlf = [0u8; 2];
                        self.conn.read_exact(&mut crlf)?;
                        self.framing = Framing::Chunked(None);
                    }
                }
                _ => {}
            }
            return Ok(Some(buf));
        }
    }

    /// A chunk's size line (hex, extensions ignored), bounded in length.
    fn chunk_size(&mut self) -> io::Result<u64> {
        let mut line = String::new();
        self.conn.by_ref().take(1024).read_line(&mut line)?;
        let hex = line.split(';').next().unwrap_or("").trim();
        u64::from_str_radix(hex, 16).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not a chunk size: {:?}", line.trim_end()),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A server that answers one connection with `answer` and returns the
    /// request it got.
    fn serve_once(answer: Vec<u8>) -> (u16, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let mut req = String::new();
            loop {
                let mut line = String::new();
                r.read_line(&mut line).expect("request");
                req.push_str(&line);
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let _ = s.write_all(&answer);
            req
        });
        (port, t)
    }

    fn fetch(answer: &[u8], offset: u64, tag: Option<&str>) -> (String, Response, Vec<u8>) {
        let (port, t) = serve_once(answer.to_vec());
        let url = RemoteUrl::parse(&format!("http://127.0.0.1:{port}/dir/p.anyp")).expect("url");
        let (head, mut body) = get(&url, offset, None, tag).expect("get");
        let mut got = Vec::new();
        while let Some(c) = body.chunk().expect("body") {
            got.extend_from_slice(&c);
        }
        (t.join().expect("server"), head, got)
    }

    #[test]
    fn a_whole_file_by_its_length() {
        let (req, head, body) = fetch(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"v1\"\r\n\r\nhello and more",
            0,
            None,
        );
        assert!(req.starts_with("GET /dir/p.anyp HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("\r\nHost: 127.0.0.1:"), "{req}");
        assert!(!req.contains("Range"), "{req}");
        assert_eq!(head.status, 200);
        assert_eq!(head.etag.as_deref(), Some("\"v1\""));
        assert_eq!(body, b"hello");
    }

    #[test]
    fn a_range_with_its_version() {
        let (req, head, body) = fetch(
            b"HTTP/1.1 206 Partial Content\r\ncontent-range: bytes 3-4/5\r\ncontent-length: 2\r\n\r\nlo",
            3,
            Some("\"v1\""),
        );
        assert!(req.contains("\r\nRange: bytes=3-\r\n"), "{req}");
        assert!(req.contains("\r\nIf-Range: \"v1\"\r\n"), "{req}");
        assert_eq!(head.status, 206);
        assert_eq!(head.content_range.as_deref(), Some("bytes 3-4/5"));
        assert_eq!(body, b"lo");
    }

    #[test]
    fn chunked_and_close_delimited_bodies() {
        let (_, _, body) = fetch(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            0,
            None,
        );
        assert_eq!(body, b"abcde");
        let (_, _, body) = fetch(b"HTTP/1.0 200 OK\r\n\r\nuntil the end", 0, None);
        assert_eq!(body, b"until the end");
    }

    #[test]
    fn a_body_cut_short_ends_early_for_the_caller_to_see() {
        let (_, head, body) = fetch(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 0, None);
        assert_eq!(head.content_length, Some(10));
        assert_eq!(body, b"abc");
    }

    #[test]
    fn nonsense_is_refused_not_retried() {
        for answer in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        ] {
            let (port, t) = serve_once(answer.to_vec());
            let url = RemoteUrl::parse(&format!("http://127.0.0.1:{port}/p")).expect("url");
            let e = get(&url, 0, None, None).expect_err("refused");
            assert!(matches!(e, FetchError::Fatal(_)), "{e}");
            t.join().expect("server");
        }
        // Endless headers stop at the bound.
        let mut long = b"HTTP/1.1 200 OK\r\n".to_vec();
        while long.len() <= MAX_HEAD {
            long.extend_from_slice(
                b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
        }
        let (port, t) = serve_once(long);
        let url = RemoteUrl::parse(&format!("http://127.0.0.1:{port}/p")).expect("url");
        let e = get(&url, 0, None, None).expect_err("refused");
        assert!(e.to_string().contains("longer than"), "{e}");
        t.join().expect("server");
    }

    #[test]
    fn host_names_are_refused_with_what_to_do() {
        let url = RemoteUrl::parse("http://updates.example/p.anyp").expect("url");
        let e = get(&url, 0, None, None).expect_err("refused");
        assert!(
            matches!(&e, FetchError::Fatal(m) if m.contains("IP address")),
            "{e}"
        );
    }
}
