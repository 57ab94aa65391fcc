//! The QUIC server behind `mkpatch serve`: hands out the files of one
//! directory, from any offset, to many clients at once. Read-only: nothing
//! a client sends is written anywhere.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use anypatch_hash_cache::Cache;

use crate::access::{Access, Denied};
use crate::protocol::{read_line, Answer, Auth, Get, ALPN};
use crate::sync::{self, SyncRequest, Trees};
use crate::tls::{provider, Identity};
use crate::token::Token;

mod beneath;
use beneath::Root;

/// Bytes read from a file per send. With 1,000 clients, 64 MiB in all.
const CHUNK: usize = 64 << 10;

/// At most, the bytes the server keeps unacknowledged or queued per
/// connection: the client's receive window
/// ([`crate::fetch::RECEIVE_WINDOW`]), which caps a long fat link anyway.
/// A fixed 4 MiB held 1 Gbit/s at 200 ms RTT to 171 Mbit/s (`bench/net`).
pub const SEND_WINDOW: u64 = crate::fetch::RECEIVE_WINDOW as u64;

/// At least, the bytes a connection may have queued: the fixed window of
/// before. A 1 MiB floor raised the server's peak RSS in the 1,000-client
/// load test (1 MiB patches) to 248 MiB, near its 256 MiB bound; with
/// 4 MiB it was 208 MiB.
const MIN_SEND_WINDOW: u64 = 4 << 20;

/// The send window for a connection whose congestion window is `cwnd`:
/// twice it (the next round is always queued, so the window can go on
/// growing), in steps of 256 KiB, within [`MIN_SEND_WINDOW`] and
/// [`SEND_WINDOW`]. Sized to the link as the congestion controller finds
/// it, a slow or short link never makes the server hold 8 MiB for it:
/// memory follows what is in flight.
fn send_window_for(cwnd: u64) -> u64 {
    cwnd.saturating_mul(2)
        .min(SEND_WINDOW)
        .next_multiple_of(256 << 10)
        .clamp(MIN_SEND_WINDOW, SEND_WINDOW)
}

/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection with no traffic for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// What to serve, where.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The directory whose files are served (subdirectories included).
    pub dir: PathBuf,
    pub listen: SocketAddr,
    /// Who may sync (or fetch) which names.
    pub access: Access,
    /// Where the trees of synced images are kept between runs.
    pub cache: Option<Cache>,
}

impl ServeOptions {
    /// `dir` on `listen`, open to everyone, without a cache.
    pub fn new(dir: PathBuf, listen: SocketAddr) -> Self {
        Self {
            dir,
            listen,
            access: Access::open(),
            cache: None,
        }
    }
}

/// A bound server, ready to [`Server::run`].
#[derive(Debug)]
pub struct Server {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
}

/// What every request's task reads.
#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    /// The same directory, held open: every name is opened beneath it.
    root: Arc<Root>,
    access: Access,
    trees: Trees,
}

impl Server {
    /// Binds `opts.listen` with `identity`'s certificate. Call inside a
    /// tokio runtime.
    pub fn bind(opts: &ServeOptions, identity: Identity) -> std::io::Result<Self> {
        let dir = opts.dir.canonicalize().map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot serve {}: {e}", opts.dir.display()),
            )
        })?;
        if !dir.is_dir() {
            return Err(std::io::Error::other(format!(
                "cannot serve {}: not a directory",
                opts.dir.display()
            )));
        }
        let root = Root::open(&dir).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot serve {}: {e}", dir.display()))
        })?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(std::io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(vec![identity.cert], identity.key)
            .map_err(|e| std::io::Error::other(format!("the server's certificate: {e}")))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = QuicServerConfig::try_from(tls).map_err(std::io::Error::other)?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(16u32.into())
            .max_concurrent_uni_streams(0u32.into())
            .send_window(MIN_SEND_WINDOW)
            .max_idle_timeout(Some(
                IDLE_TIMEOUT
                    .try_into()
                    .expect("30 s is a valid idle timeout"),
            ));
        config.transport_config(Arc::new(transport));
        let endpoint = quinn::Endpoint::server(config, opts.listen).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", opts.listen))
        })?;
        Ok(Self {
            endpoint,
            shared: Arc::new(Shared {
                dir,
                root: Arc::new(root),
                access: opts.access.clone(),
                trees: Trees::new(opts.cache.clone()),
            }),
        })
    }

    /// The address it listens on (with the port the system chose for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Serves until the endpoint is closed.
    pub async fn run(self) {
        self.run_until(std::future::pending()).await;
    }

    /// Serves until the endpoint is closed or `stop` gives a reason. Then
    /// every client is told that reason in its connection's close, so none
    /// waits out the idle timeout to learn the server went away, and the
    /// server waits up to [`CLOSE_WAIT`] for them to hear it.
    pub async fn run_until(self, stop: impl std::future::Future<Output = String>) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else {
                        return;
                    };
                    let shared = self.shared.clone();
                    tokio::spawn(async move {
                        let Ok(conn) = incoming.await else {
                            return; // a failed handshake: the client hears why
                        };
                        while let Ok((send, recv)) = conn.accept_bi().await {
                            tokio::spawn(serve_stream(conn.clone(), send, recv, shared.clone()));
                        }
                    });
                }
                why = &mut stop => {
                    self.endpoint.close(STOPPING.into(), why.as_bytes());
                    let _ = tokio::time::timeout(CLOSE_WAIT, self.endpoint.wait_idle()).await;
                    return;
                }
            }
        }
    }
}

/// The QUIC application error code of a server that stops.
const STOPPING: u32 = 1;

/// How long a stopping server waits for its clients to hear it close.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The first SIGTERM, SIGINT or SIGHUP, as the reason a server stops;
/// for [`Server::run_until`]. Call it inside the runtime.
pub fn stop_signals() -> std::io::Result<impl std::future::Future<Output = String>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = hup.recv() => "SIGHUP",
        };
        format!("the server is stopping ({name}); run the same command again once it is back")
    })
}

/// Answers one request.
async fn serve_stream(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shared: Arc<Shared>,
) {
    let answer = match tokio::time::timeout(REQUEST_TIMEOUT, request(&mut recv)).await {
        Err(_) => Err(refuse(400, "no request line within 10 s")),
        Ok(Err(refusal)) => Err(refusal),
        // A sync of an image (spec/SYNC.md) on this stream.
        Ok(Ok((token, line))) => match SyncRequest::parse(&line) {
            Some(Ok(req)) => {
                // The token comes on the AUTH line before the SYNC line.
                let req = SyncRequest {
                    token: token.as_ref().map(|t| t.expose().to_owned()),
                    ..req
                };
                match open_image(&shared, &req).await {
                    Ok(image) => {
                        let _ = sync::serve(conn, send, recv, image, &shared.trees).await;
                        return;
                    }
                    Err(refusal) => Err(refusal),
                }
            }
            Some(Err(e)) => Err(refuse(400, &e)),
            None => match Get::parse(&line) {
                Err(e) => Err(refuse(400, &e)),
                Ok(get) => match shared
                    .access
                    .check(&get.name, token.as_ref().map(Token::expose))
                {
                    Err(denied) => Err(denial(&get.name, &denied)),
                    Ok(()) => open(&shared.root, &get).await,
                },
            },
        },
    };
    let (mut file, offset, stop, len, tag) = match answer {
        Ok(found) => found,
        Err(refusal) => {
            let _ = send.write_all(&refusal.encode()).await;
            let _ = send.finish();
            return;
        }
    };
    if send
        .write_all(&Answer::Ok { len, tag }.encode())
        .await
        .is_err()
    {
        return;
    }
    let mut buf = vec![0u8; CHUNK];
    let mut at = offset;
    let mut sized = MIN_SEND_WINDOW;
    // Up to the length announced: bytes appended since are not this version.
    while at < stop {
        let want = (stop - at).min(CHUNK as u64) as usize;
        match file.read(&mut buf[..want]).await {
            Ok(0) | Err(_) => {
                // Shorter than announced: reset, so the client sees a broken
                // stream rather than a clean end.
                let _ = send.reset(1u32.into());
                return;
            }
            Ok(n) => {
                if send.write_all(&buf[..n]).await.is_err() {
                    return; // the client went away
                }
                at += n as u64;
                let window = send_window_for(conn.stats().path.cwnd);
                if window != sized {
                    conn.set_send_window(window);
                    sized = window;
                }
            }
        }
    }
    let _ = send.finish();
    // Keep the stream until the client has it all, or goes away.
    let _ = send.stopped().await;
}

/// The request line, and the token an `AUTH` line before it gave.
async fn request(recv: &mut quinn::RecvStream) -> Result<(Option<Token>, String), Answer> {
    let unreadable = |e: std::io::Error| refuse(400, &format!("unreadable request: {e}"));
    let line = read_line(recv).await.map_err(unreadable)?;
    match Auth::parse(&line) {
        None => Ok((None, line)),
        Some(Err(why)) => Err(refuse(400, &why)),
        Some(Ok(token)) => {
            let line = read_line(recv).await.map_err(unreadable)?;
            Ok((Some(token), line))
        }
    }
}

/// The image a sync asks for, once the client may have it: its path,
/// file, length and version tag.
async fn open_image(
    shared: &Shared,
    req: &SyncRequest,
) -> Result<(PathBuf, std::fs::File, u64, String), Answer> {
    shared
        .access
        .check(&req.name, req.token.as_deref())
        .map_err(|d| denial(&req.name, &d))?;
    let get = Get {
        offset: 0,
        end: None,
        name: req.name.clone(),
    };
    let (file, _, _, len, tag) = open(&shared.root, &get).await?;
    let path = shared.dir.join(&req.name);
    let file = file.into_std().await;
    let (file, patch) = tokio::task::spawn_blocking(move || {
        let patch = sync::is_patch(&file);
        (file, patch)
    })
    .await
    .map_err(|e| refuse(500, &format!("cannot read {}: {e}", req.name)))?;
    if patch {
        return Err(refuse(
            sync::IS_A_PATCH,
            &format!("{} is a patch, not an image: fetch it", req.name),
        ));
    }
    Ok((path, file, len, tag))
}

/// The answer to a client the access rules refuse.
fn denial(name: &str, denied: &Denied) -> Answer {
    match denied {
        Denied::NotListed => refuse(403, &format!("{name} is not open to anyone here")),
        Denied::BadToken => refuse(
            403,
            &format!("{name} needs its token: give the one its server's access file names for it (applypatch --token-file)"),
        ),
    }
}

fn refuse(code: u16, message: &str) -> Answer {
    Answer::Err {
        code,
        message: message.to_owned(),
    }
}

/// Opens the file a request names, beneath the served directory (see
/// [`beneath`]), at its offset: the file, the offset, where to stop, its
/// length and its tag.
async fn open(
    root: &Arc<Root>,
    get: &Get,
) -> Result<(tokio::fs::File, u64, u64, u64, String), Answer> {
    let rel = PathBuf::from(&get.name);
    if get.name.contains('\0') || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(refuse(
            400,
            "a name is a path inside the served directory, without '..' or a leading '/'",
        ));
    }
    let not_found = || refuse(404, &format!("no file {} is served here", get.name));
    let root = root.clone();
    let file = tokio::task::spawn_blocking(move || root.open_file(&rel))
        .await
        .map_err(|e| refuse(500, &format!("cannot open {}: {e}", get.name)))?
        .map_err(|_| not_found())?;
    let file = tokio::fs::File::from_std(file);
    let meta = file.metadata().await.map_err(|_| not_found())?;
    if !meta.is_file() {
        return Err(refuse(403, &format!("{} is not a regular file", get.name)));
    }
    let len = meta.len();
    if get.offset > len {
        return Err(refuse(
            416,
            &format!(
                "offset {} is past the end of {} ({len} bytes)",
                get.offset, get.name
            ),
        ));
    }
    let tag = format!(
        "{:x}-{:x}-{:x}.{:x}",
        meta.ino(),
        len,
        meta.mtime(),
        meta.mtime_nsec()
    );
    let mut file = file;
    file.seek(std::io::SeekFrom::Start(get.offset))
        .await
        .map_err(|e| refuse(500, &format!("cannot read {}: {e}", get.name)))?;
    let stop = get.end.map_or(len, |e| e.min(len));
    Ok((file, get.offset, stop, len, tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_window_follows_the_congestion_window() {
        // A fresh connection (about 14 KB of window) gets the floor.
        assert_eq!(send_window_for(14_720), MIN_SEND_WINDOW);
        assert_eq!(send_window_for(2 << 20), MIN_SEND_WINDOW);
        // 100 Mbit/s at 200 ms: 2.5 MB in flight, 5 MB queued behind it.
        assert_eq!(send_window_for(2_500_000), 5 << 20);
        assert_eq!(send_window_for(3 << 20), 6 << 20);
        // Beyond the client's window there is nothing to gain.
        assert_eq!(send_window_for(100 << 20), SEND_WINDOW);
        assert_eq!(send_window_for(u64::MAX), SEND_WINDOW);
    }
}
