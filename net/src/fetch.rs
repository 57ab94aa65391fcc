//! One ranged fetch of a remote patch: over QUIC from `mkpatch serve`, or
//! over HTTP(S) from any web server, from a given offset to the end.
//! Without the `quic-https` feature (the static initramfs build), plain
//! `http://` only, through the blocking [`crate::plain_http`] client.

#[cfg(feature = "quic-https")]
use std::net::SocketAddr;
#[cfg(feature = "quic-https")]
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "quic-https")]
use quinn::crypto::rustls::QuicClientConfig;

#[cfg(feature = "quic-https")]
use crate::protocol::{read_line, Answer, Auth, Get, ALPN};
use crate::rt::Bytes;
use crate::tls::Trust;
use crate::token::Token;
use crate::url::{RemoteUrl, Scheme};

/// Per stream and per connection, the bytes a QUIC server may send ahead
/// of what the client has read: half of the client's 16 MiB network budget
/// (the other half is the queue in [`crate::remote`]), and room for
/// 100 Mbit/s at 200 ms RTT (2.5 MB) or 1 Gbit/s at 50 ms (6.25 MB).
pub const RECEIVE_WINDOW: u32 = 8 << 20;

/// How long a connection attempt may take.
#[cfg(feature = "quic-https")]
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// No byte for this long on an open fetch: the link is taken as dead.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(20);

/// What a server said about the file, once per fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The whole file's length, when the server says it.
    pub len: Option<u64>,
    /// What names this version of the file (QUIC tag, HTTP ETag or
    /// Last-Modified); empty when the server gives none.
    pub tag: String,
    /// Bytes of the body before the offset asked for, to be discarded: an
    /// HTTP server that ignores Range sends the file from its start.
    pub skip: u64,
}

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// Retrying cannot help: no such file, a refused certificate, a bad URL.
    Fatal(String),
    /// The link or the server failed; a retry may get further.
    Retry(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fatal(s) | Self::Retry(s) => f.write_str(s),
        }
    }
}

/// The body of one fetch.
#[derive(Debug)]
pub enum Body {
    #[cfg(feature = "quic-https")]
    Quic(quinn::RecvStream),
    #[cfg(feature = "quic-https")]
    Http(reqwest::Response),
    #[cfg(not(feature = "quic-https"))]
    Plain(crate::plain_http::Body),
}

impl Body {
    /// The next bytes; `None` at the end of the body.
    #[cfg(not(feature = "quic-https"))]
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, FetchError> {
        // A blocking read, bounded by the socket's read timeout.
        let Self::Plain(body) = self;
        Ok(body.chunk()?.map(Bytes::from))
    }

    /// The next bytes; `None` at the end of the body.
    #[cfg(feature = "quic-https")]
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, FetchError> {
        let next = async {
            match self {
                Self::Quic(recv) => recv
                    .read_chunk(256 << 10, true)
                    .await
                    .map(|c| c.map(|c| c.bytes))
                    .map_err(|e| FetchError::Retry(format!("the stream broke: {e}"))),
                Self::Http(resp) => resp
                    .chunk()
                    .await
                    .map_err(|e| FetchError::Retry(format!("the download broke: {e}"))),
            }
        };
        tokio::time::timeout(STALL_TIMEOUT, next)
            .await
            .unwrap_or_else(|_| {
                Err(FetchError::Retry(format!(
                    "no byte arrived for {} s",
                    STALL_TIMEOUT.as_secs()
                )))
            })
    }
}

/// Fetches one URL, again and again from other offsets, reusing its
/// connection while it lives.
pub struct Fetcher {
    url: RemoteUrl,
    #[cfg(feature = "quic-https")]
    trust: Trust,
    #[cfg(feature = "quic-https")]
    quic: Option<(quinn::Endpoint, Option<quinn::Connection>)>,
    #[cfg(feature = "quic-https")]
    http: Option<reqwest::Client>,
    #[cfg(feature = "quic-https")]
    token: Option<Token>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

#[cfg(not(feature = "quic-https"))]
impl Fetcher {
    /// A fetcher of a plain `http://` URL (this build has no TLS, so
    /// `trust` can only be the patch's signature).
    pub fn new(url: RemoteUrl, _trust: Trust) -> Result<Self, FetchError> {
        if url.scheme != Scheme::Http {
            return Err(FetchError::Fatal(format!(
                "{url}: this applypatch has no QUIC or TLS (the small build, as in an initramfs): fetch the patch over plain http:// with --trusted-key, or to a file first"
            )));
        }
        Ok(Self { url })
    }

    /// Refuses a token: this build fetches plain `http://` only, where the
    /// token would cross the network in the clear.
    pub fn with_token(self, token: Option<Token>) -> Result<Self, FetchError> {
        match token {
            None => Ok(self),
            Some(_) => Err(FetchError::Fatal(format!(
                "{}: a token is never sent over plain http:// (anyone on the way could read it); use https:// or quic://",
                self.url
            ))),
        }
    }

    /// Fetches the patch from byte `offset` up to `end` (exclusive) or its end.
    pub async fn open(
        &mut self,
        offset: u64,
        end: Option<u64>,
        known: Option<&Head>,
    ) -> Result<(Head, Body), FetchError> {
        let tag = known.map(|h| h.tag.as_str());
        let (resp, body) = crate::plain_http::get(&self.url, offset, end, tag)?;
        let tag = resp.etag.clone().or(resp.last_modified.clone());
        let head = http_head(
            &self.url,
            offset,
            resp.status,
            resp.content_length,
            resp.content_range.as_deref(),
            tag,
        )
        .map_err(|e| match (&e, &resp.location) {
            (FetchError::Fatal(why), Some(to)) if (300..400).contains(&resp.status) => {
                FetchError::Fatal(format!("{why} (to {to}): give that URL"))
            }
            _ => e,
        })?;
        Ok((head, Body::Plain(body)))
    }
}

#[cfg(feature = "quic-https")]
impl Fetcher {
    /// A fetcher of `url` trusting servers as `trust` says (ignored for
    /// `http://`, which has no TLS). Call inside a tokio runtime.
    pub fn new(url: RemoteUrl, trust: Trust) -> Result<Self, FetchError> {
        let http = match url.scheme {
            Scheme::Quic => None,
            Scheme::Https | Scheme::Http => Some(
                reqwest::Client::builder()
                    .use_preconfigured_tls(trust.client_config(&[b"http/1.1"]))
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(STALL_TIMEOUT)
                    .no_proxy()
                    .build()
                    .map_err(|e| FetchError::Fatal(format!("cannot set up HTTP: {e}")))?,
            ),
        };
        Ok(Self {
            url,
            trust,
            quic: None,
            http,
            token: None,
        })
    }

    /// Sends `token` with every request: on an `AUTH` line before the
    /// request over QUIC, as `Authorization: Bearer` over HTTPS. Refused
    /// for plain `http://`, where anyone on the way could read it.
    pub fn with_token(mut self, token: Option<Token>) -> Result<Self, FetchError> {
        if token.is_some() && self.url.scheme == Scheme::Http {
            return Err(FetchError::Fatal(format!(
                "{}: a token is never sent over plain http:// (anyone on the way could read it); use https:// or quic://",
                self.url
            )));
        }
        self.token = token;
        Ok(self)
    }

    /// Fetches the patch from byte `offset` up to `end` (exclusive) or its end.
    pub async fn open(
        &mut self,
        offset: u64,
        end: Option<u64>,
        known: Option<&Head>,
    ) -> Result<(Head, Body), FetchError> {
        match self.url.scheme {
            Scheme::Quic => self.open_quic(offset, end).await,
            Scheme::Https | Scheme::Http => self.open_http(offset, end, known).await,
        }
    }

    async fn open_quic(
        &mut self,
        offset: u64,
        end: Option<u64>,
    ) -> Result<(Head, Body), FetchError> {
        let conn = self.quic_connection().await?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(connection_error)?;
        let get = Get {
            offset,
            end,
            name: self.url.path.clone(),
        };
        let retry = |e: std::io::Error| FetchError::Retry(format!("the request failed: {e}"));
        let mut request = match &self.token {
            Some(t) => Auth::encode(t),
            None => Vec::new(),
        };
        request.extend_from_slice(&get.encode());
        send.write_all(&request)
            .await
            .map_err(|e| retry(e.into()))?;
        let _ = send.finish();
        let line = tokio::time::timeout(STALL_TIMEOUT, read_line(&mut recv))
            .await
            .map_err(|_| FetchError::Retry("the server did not answer within 20 s".into()))?
            .map_err(retry)?;
        match Answer::parse(&line).map_err(FetchError::Fatal)? {
            Answer::Ok { len, tag } => Ok((
                Head {
                    len: Some(len),
                    tag,
                    skip: 0,
                },
                Body::Quic(recv),
            )),
            Answer::Err { code, message } if code >= 500 => {
                Err(FetchError::Retry(format!("the server failed: {message}")))
            }
            Answer::Err { message, .. } => Err(FetchError::Fatal(format!(
                "{} refused: {message}",
                self.url
            ))),
        }
    }

    /// The live connection, or a new one.
    pub(crate) async fn quic_connection(&mut self) -> Result<quinn::Connection, FetchError> {
        if let Some((_, Some(conn))) = &self.quic {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
        }
        let authority = self.url.authority();
        let addr: SocketAddr = tokio::net::lookup_host(&authority)
            .await
            .map_err(|e| FetchError::Retry(format!("cannot resolve {authority}: {e}")))?
            .next()
            .ok_or_else(|| FetchError::Retry(format!("{authority} resolves to no address")))?;
        if self.quic.is_none() {
            let bind: SocketAddr = if addr.is_ipv6() {
                "[::]:0".parse().expect("an address")
            } else {
                "0.0.0.0:0".parse().expect("an address")
            };
            let mut endpoint = client_endpoint(bind)
                .map_err(|e| FetchError::Fatal(format!("cannot open a UDP socket: {e}")))?;
            endpoint.set_default_client_config(client_config(&self.trust)?);
            self.quic = Some((endpoint, None));
        }
        let (endpoint, slot) = self.quic.as_mut().expect("made above");
        let connecting = endpoint
            .connect(addr, &self.url.host)
            .map_err(|e| FetchError::Fatal(format!("cannot connect to {authority}: {e}")))?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| FetchError::Retry(format!("{authority} did not answer within 10 s")))?
            .map_err(connection_error)?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    async fn open_http(
        &mut self,
        offset: u64,
        end: Option<u64>,
        known: Option<&Head>,
    ) -> Result<(Head, Body), FetchError> {
        let client = self.http.as_ref().expect("made for http URLs");
        let mut req = client.get(&self.url.text);
        if let Some(t) = &self.token {
            // reqwest drops it on a redirect to another host.
            let mut value =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {}", t.expose())).map_err(
                    |_| FetchError::Fatal("the token is not a valid HTTP header value".into()),
                )?;
            value.set_sensitive(true);
            req = req.header(reqwest::header::AUTHORIZATION, value);
        }
        if offset > 0 || end.is_some() {
            let last = end.map_or(String::new(), |e| e.saturating_sub(1).to_string());
            req = req.header(reqwest::header::RANGE, format!("bytes={offset}-{last}"));
            // Only the same version may continue what we have.
            if let Some(tag) = known.map(|h| &h.tag).filter(|t| !t.is_empty()) {
                req = req.header(reqwest::header::IF_RANGE, tag.as_str());
            }
        }
        let resp = req.send().await.map_err(|e| {
            if let Some(tls) = tls_refusal(&e) {
                // A refused certificate is not a dropped link: say it at once.
                return FetchError::Fatal(format!(
                    "{}: the server is not trusted: {tls}",
                    self.url
                ));
            }
            let why = format!("cannot fetch {}: {}", self.url, chain(&e));
            if e.is_connect() || e.is_timeout() || e.is_request() {
                FetchError::Retry(why)
            } else {
                FetchError::Fatal(why)
            }
        })?;
        let header = |name: reqwest::header::HeaderName| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let tag = header(reqwest::header::ETAG).or_else(|| header(reqwest::header::LAST_MODIFIED));
        let range = header(reqwest::header::CONTENT_RANGE);
        let head = http_head(
            &self.url,
            offset,
            resp.status().as_u16(),
            resp.content_length(),
            range.as_deref(),
            tag,
        )?;
        Ok((head, Body::Http(resp)))
    }
}

/// What an HTTP response's status and headers say about the file, for a
/// request from byte `offset`: a 200 is the whole file (the bytes before
/// `offset` are skipped), a 206 must start at `offset`; 408, 429 and 5xx
/// may pass, any other status is final.
fn http_head(
    url: &RemoteUrl,
    offset: u64,
    status: u16,
    content_length: Option<u64>,
    content_range: Option<&str>,
    tag: Option<String>,
) -> Result<Head, FetchError> {
    let tag = tag.unwrap_or_default();
    match status {
        200 => Ok(Head {
            len: content_length,
            tag,
            skip: offset,
        }),
        206 => {
            let range = content_range.unwrap_or_default();
            let (start, total) = parse_content_range(range).ok_or_else(|| {
                FetchError::Fatal(format!(
                    "{url}: the server's Content-Range {range:?} is not bytes START-END/TOTAL"
                ))
            })?;
            if start != offset {
                return Err(FetchError::Fatal(format!(
                    "{url}: asked for bytes from {offset}, the server sent them from {start}"
                )));
            }
            Ok(Head {
                len: Some(total),
                tag,
                skip: 0,
            })
        }
        408 | 429 | 500..=599 => Err(FetchError::Retry(format!(
            "{url}: the server said {status}"
        ))),
        _ => Err(FetchError::Fatal(format!(
            "{url}: the server said {status}"
        ))),
    }
}

#[cfg(feature = "quic-https")]
/// The TLS refusal (a certificate not trusted, a handshake refused)
/// somewhere in an HTTP error's causes, if there is one.
fn tls_refusal(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls.to_string());
    }
    // io::Error's source() skips the error it wraps: look inside it too.
    let inner = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|inner| tls_refusal(inner));
    inner.or_else(|| e.source().and_then(tls_refusal))
}

#[cfg(feature = "quic-https")]
/// An error with its causes, as one line: reqwest's own message alone
/// ("error sending request") does not say what went wrong.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

/// `bytes START-END/TOTAL` → `(START, TOTAL)`.
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()?))
}

#[cfg(feature = "quic-https")]
/// A client endpoint on `bind` whose UDP socket may hold a whole receive
/// window. With the system's default (about 200 KiB, a millisecond and a
/// half at 1 Gbit/s), datagrams that arrive while the fetch thread is busy
/// overflow it, and each drop cuts the sending rate: 1 Gbit/s at 50 ms
/// RTT fell to about 250 Mbit/s. The bytes in it are bounded by
/// [`RECEIVE_WINDOW`] all the same (the server may not send more than the
/// client has not read), so this adds nothing to the network budget; the
/// system caps the size at `net.core.rmem_max`.
fn client_endpoint(bind: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer costs rate, never correctness.
    let _ = socket.set_recv_buffer_size(RECEIVE_WINDOW as usize);
    socket.bind(&bind.into())?;
    let runtime =
        quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime"))?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket.into(),
        runtime,
    )
}

#[cfg(feature = "quic-https")]
/// The client's QUIC configuration: ALPN, trust, and windows sized for
/// long fat links within the 16 MiB budget.
fn client_config(trust: &Trust) -> Result<quinn::ClientConfig, FetchError> {
    let tls = trust.client_config(&[ALPN]);
    let crypto = QuicClientConfig::try_from(tls)
        .map_err(|e| FetchError::Fatal(format!("cannot set up QUIC's TLS: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .stream_receive_window(RECEIVE_WINDOW.into())
        .receive_window(RECEIVE_WINDOW.into())
        .keep_alive_interval(Some(Duration::from_secs(2)))
        .max_idle_timeout(Some(
            Duration::from_secs(15)
                .try_into()
                .expect("15 s is a valid idle timeout"),
        ));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

#[cfg(feature = "quic-https")]
/// A refused certificate or protocol is fatal; anything else may pass.
fn connection_error(e: quinn::ConnectionError) -> FetchError {
    use quinn::ConnectionError as C;
    let crypto = |code: quinn::TransportErrorCode| {
        let code = u64::from(code);
        (0x100..0x200).contains(&code)
    };
    match &e {
        C::TransportError(t) if crypto(t.code) => {
            FetchError::Fatal(format!("the server is not trusted: {}", t.reason))
        }
        C::ConnectionClosed(c) if crypto(c.error_code) => FetchError::Fatal(format!(
            "the server refused the connection: {}",
            String::from_utf8_lossy(&c.reason)
        )),
        C::VersionMismatch => FetchError::Fatal("the server speaks another QUIC version".into()),
        _ => FetchError::Retry(format!("the connection failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 100-199/1000"), Some((100, 1000)));
        assert_eq!(parse_content_range("bytes 0-0/1"), Some((0, 1)));
        assert_eq!(parse_content_range("bytes */1000"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
