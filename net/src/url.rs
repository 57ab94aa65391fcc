//! The URLs a patch can be fetched from.

use std::fmt;

/// How a remote patch is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `mkpatch serve` over QUIC (default port [`QUIC_PORT`]).
    Quic,
    /// Any web server or CDN, over TLS.
    Https,
    /// Any web server, in the clear: only for signed patches.
    Http,
}

/// The port `quic://host/name` means.
pub const QUIC_PORT: u16 = 4433;

/// A parsed `quic://`, `https://` or `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteUrl {
    pub scheme: Scheme,
    /// Host name or address, without brackets for IPv6.
    pub host: String,
    pub port: u16,
    /// The path after the host, without the leading `/` (for QUIC: the name
    /// in the served directory).
    pub path: String,
    /// The URL as given.
    pub text: String,
}

impl RemoteUrl {
    /// Whether `arg` looks like a URL this crate fetches (rather than a
    /// file path): it starts with one of the three schemes.
    pub fn is_remote(arg: &str) -> bool {
        ["quic://", "https://", "http://"]
            .iter()
            .any(|s| arg.len() > s.len() && arg[..s.len()].eq_ignore_ascii_case(s))
    }

    /// Parses `text`, refusing what cannot name a patch.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("{text}: {why}");
        let (scheme, rest, default_port) = if let Some(r) = strip(text, "quic://") {
            (Scheme::Quic, r, QUIC_PORT)
        } else if let Some(r) = strip(text, "https://") {
            (Scheme::Https, r, 443)
        } else if let Some(r) = strip(text, "http://") {
            (Scheme::Http, r, 80)
        } else {
            return Err(bad("not a quic://, https:// or http:// URL"));
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.contains('@') {
            return Err(bad("user names in URLs are not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address needs its closing ]"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => default_port,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad("the port is not a number 1..=65535"))?,
        };
        if path.is_empty() {
            return Err(bad("no patch name after the host"));
        }
        // A newline would end the request line early and name another file.
        if path.chars().any(char::is_control) {
            return Err(bad(
                "the name has a control character (a newline, a tab, ...)",
            ));
        }
        Ok(Self {
            scheme,
            host: host.to_owned(),
            port,
            path: path.to_owned(),
            text: text.to_owned(),
        })
    }

    /// `host:port`, with brackets around an IPv6 address.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn strip<'a>(text: &'a str, scheme: &str) -> Option<&'a str> {
    let n = scheme.len();
    (text.len() >= n && text[..n].eq_ignore_ascii_case(scheme)).then(|| &text[n..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_schemes() {
        let u = RemoteUrl::parse("quic://host:4433/update.patch").expect("quic");
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port),
            (Scheme::Quic, "host", 4433)
        );
        assert_eq!(u.path, "update.patch");
        let u = RemoteUrl::parse("quic://10.0.0.1/a/b.patch").expect("default port");
        assert_eq!((u.port, u.path.as_str()), (QUIC_PORT, "a/b.patch"));
        let u = RemoteUrl::parse("https://cdn.example/x/u.patch?v=1").expect("https");
        assert_eq!((u.scheme, u.port), (Scheme::Https, 443));
        let u = RemoteUrl::parse("http://[::1]:8080/p").expect("v6");
        assert_eq!(
            (u.host.as_str(), u.port, u.authority()),
            ("::1", 8080, "[::1]:8080".into())
        );
    }

    #[test]
    fn refuses_what_names_no_patch() {
        for bad in [
            "ftp://h/p",
            "quic://",
            "quic://host",
            "quic://host/",
            "quic://host:0/p",
            "quic://host:99999/p",
            "quic://u@host/p",
            "quic://[::1/p",
            "quic://host/a\nGET 0- b",
            "quic://host/a\tb",
        ] {
            assert!(RemoteUrl::parse(bad).is_err(), "{bad}");
        }
        assert!(RemoteUrl::is_remote("QUIC://h/p"));
        assert!(!RemoteUrl::is_remote("./quic://h/p"));
        assert!(!RemoteUrl::is_remote("update.patch"));
    }
}
