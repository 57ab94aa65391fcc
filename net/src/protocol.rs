//! The QUIC protocol of `mkpatch serve` (ALPN [`ALPN`]).
//!
//! One bidirectional stream per request. The client sends one line and
//! finishes its side:
//!
//! ```text
//! GET <start>-[<end>] <name>\n
//! ```
//!
//! A client with a token (`applypatch --token-file`) sends it on a line of
//! its own first, `AUTH <token>\n`; the request line follows. The server's
//! access file decides with it, as for `SYNC`, and never echoes it.
//!
//! `name` is a path relative to the served directory (UTF-8, no newline);
//! `start` and `end` decimal byte offsets (no `end`: to the end of the
//! file). The server answers with one line, then, on success, the file's
//! bytes from `start` up to `end` or its end, then finishes:
//!
//! ```text
//! OK <length> <tag>\n<bytes>      length of the whole file; tag names this version of it
//! ERR <code> <message>\n          400 bad request, 403 refused, 404 no such file,
//!                                 416 offset past the end, 500 server error
//! ```
//!
//! A client that reconnects sends the offset it had reached and compares
//! the length and tag with the first answer: if they differ the file
//! changed, and the bytes would not continue the stream it has.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::token::Token;

/// The ALPN protocol name of this protocol, version 1.
pub const ALPN: &[u8] = b"anypatch/1";

/// Longest request or response line, newline included.
pub const MAX_LINE: usize = 4096;

/// A client's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Get {
    pub offset: u64,
    /// Where to stop (exclusive); `None`: at the end of the file.
    pub end: Option<u64>,
    pub name: String,
}

impl Get {
    /// The request line.
    pub fn encode(&self) -> Vec<u8> {
        let end = self.end.map_or(String::new(), |e| e.to_string());
        format!("GET {}-{end} {}\n", self.offset, self.name).into_bytes()
    }

    /// Parses a request line (without its newline).
    pub fn parse(line: &str) -> Result<Self, String> {
        let usage = "the request is not GET <start>-[<end>] <name>";
        let rest = line.strip_prefix("GET ").ok_or(usage)?;
        let (range, name) = rest.split_once(' ').ok_or(usage)?;
        let (offset, end) = range.split_once('-').ok_or(usage)?;
        let number = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| "an offset is not a decimal number")
        };
        let offset = number(offset)?;
        let end = if end.is_empty() {
            None
        } else {
            Some(number(end)?)
                .filter(|&e| e >= offset)
                .ok_or("the range ends before it starts")
                .map(Some)?
        };
        if name.is_empty() {
            return Err("the request names no file".into());
        }
        Ok(Self {
            offset,
            end,
            name: name.to_owned(),
        })
    }
}

/// The line that carries a client's token before its request.
#[derive(Debug, Clone, Copy)]
pub struct Auth;

impl Auth {
    /// `AUTH <token>\n`.
    pub fn encode(token: &Token) -> Vec<u8> {
        format!("AUTH {}\n", token.expose()).into_bytes()
    }

    /// The token a line gives, if it is an `AUTH` line at all.
    pub fn parse(line: &str) -> Option<Result<Token, String>> {
        line.strip_prefix("AUTH ")
            .map(|t| Token::new(t).map_err(|why| format!("the AUTH line is refused: {why}")))
    }
}

/// The server's answer line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The bytes follow: `len` is the whole file's length, `tag` names
    /// this version of it.
    Ok { len: u64, tag: String },
    /// Refused, with an HTTP-like code and a sentence for the user.
    Err { code: u16, message: String },
}

impl Answer {
    /// The answer line.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Ok { len, tag } => format!("OK {len} {tag}\n"),
            Self::Err { code, message } => {
                let message: String = message.chars().filter(|&c| c != '\n').take(1000).collect();
                format!("ERR {code} {message}\n")
            }
        }
        .into_bytes()
    }

    /// Parses an answer line (without its newline).
    pub fn parse(line: &str) -> Result<Self, String> {
        let bad = || format!("the server's answer is not one of ours: {line:?}");
        if let Some(rest) = line.strip_prefix("OK ") {
            let (len, tag) = rest.split_once(' ').ok_or_else(bad)?;
            let len = len.parse().map_err(|_| bad())?;
            if tag.is_empty() || tag.contains(' ') {
                return Err(bad());
            }
            return Ok(Self::Ok {
                len,
                tag: tag.to_owned(),
            });
        }
        let rest = line.strip_prefix("ERR ").ok_or_else(bad)?;
        let (code, message) = rest.split_once(' ').unwrap_or((rest, ""));
        Ok(Self::Err {
            code: code.parse().map_err(|_| bad())?,
            message: message.to_owned(),
        })
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes, without its newline.
/// Reads byte by byte, so nothing after the line is consumed.
pub async fn read_line<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<String> {
    let mut line = Vec::with_capacity(64);
    loop {
        let b = r.read_u8().await?;
        if b == b'\n' {
            break;
        }
        if line.len() + 1 >= MAX_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a protocol line is longer than 4096 bytes",
            ));
        }
        line.push(b);
    }
    String::from_utf8(line)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a protocol line is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        for end in [None, Some(123), Some(4096)] {
            let g = Get {
                offset: 123,
                end,
                name: "dir/a b.patch".into(),
            };
            let line = String::from_utf8(g.encode()).expect("utf-8");
            assert_eq!(Get::parse(line.trim_end_matches('\n')), Ok(g));
        }
        for a in [
            Answer::Ok {
                len: 9,
                tag: "abc".into(),
            },
            Answer::Err {
                code: 404,
                message: "no such patch".into(),
            },
        ] {
            let line = String::from_utf8(a.encode()).expect("utf-8");
            assert_eq!(Answer::parse(line.trim_end_matches('\n')), Ok(a));
        }
        for bad in [
            "GET",
            "GET x y",
            "GET 1- ",
            "GET 1 a",
            "GET 5-4 a",
            "PUT 1- a",
        ] {
            assert!(Get::parse(bad).is_err(), "{bad}");
        }
        let t = Token::new("s3cret").expect("token");
        let line = String::from_utf8(Auth::encode(&t)).expect("utf-8");
        assert_eq!(Auth::parse(line.trim_end_matches('\n')), Some(Ok(t)));
        assert_eq!(Auth::parse("GET 0- a"), None);
        let e = Auth::parse("AUTH two words")
            .expect("an AUTH line")
            .expect_err("spaces");
        assert!(!e.contains("two words"), "{e}");
        for bad in ["OK", "OK 1", "OK x t", "ERR", "HELLO"] {
            assert!(Answer::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_line_longer_than_the_limit_is_refused() {
        let long = vec![b'a'; MAX_LINE + 10];
        let e = read_line(&mut &long[..]).await.expect_err("too long");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let ok = b"GET 0 p\nrest";
        let mut r = &ok[..];
        assert_eq!(read_line(&mut r).await.expect("line"), "GET 0 p");
        assert_eq!(r, b"rest");
    }
}
