//! Live sync of an image over QUIC (spec/SYNC.md section 4): the server's
//! answer to `SYNC`, and the client. Both run `anypatch_sync::drive` on
//! blocking threads over the QUIC streams: the control stream is the
//! request's bidirectional stream, the data stream a unidirectional one the
//! server opens.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anypatch_hash_cache::Cache;
use anypatch_sync::drive::{measure, receive, send, Measured, ReceiveOptions, Received, Target};
use anypatch_sync::growing::GrowingTree;
use anypatch_sync::receiver::SyncError;
use tokio::runtime::Handle;

use crate::fetch::{FetchError, Fetcher};
use crate::protocol::{read_line, Answer};
use crate::{RemoteUrl, Trust};

/// A sync request: `SYNC 0 <name>`, the name being the rest of the line
/// (it may hold spaces, as a `GET`'s does), after an `AUTH <token>` line
/// when the client has a token for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRequest {
    pub name: String,
    /// The client's token for this name, if it has one.
    pub token: Option<String>,
}

impl SyncRequest {
    /// The request: its `AUTH` line if it has a token, then its `SYNC` line.
    pub fn encode(&self) -> Vec<u8> {
        let auth = match &self.token {
            Some(t) => format!("AUTH {t}\n"),
            None => String::new(),
        };
        format!("{auth}SYNC 0 {}\n", self.name).into_bytes()
    }

    /// The request a `SYNC` line is, if it is one at all; its token comes
    /// from the `AUTH` line before it.
    pub fn parse(line: &str) -> Option<Result<Self, String>> {
        let rest = line.strip_prefix("SYNC ")?;
        Some(match rest.split_once(' ') {
            Some(("0", name)) if !name.is_empty() => Ok(Self {
                name: name.to_owned(),
                token: None,
            }),
            Some((v, _)) if v != "0" => Err(format!(
                "sync protocol version {v} is not known here (0 is): update applypatch or mkpatch"
            )),
            _ => Err("the request is not SYNC 0 <name>".to_string()),
        })
    }
}

/// A QUIC receive stream read from a blocking thread.
struct BlockingRecv(Handle, quinn::RecvStream);

impl Read for BlockingRecv {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.block_on(self.1.read(buf)) {
            Ok(Some(n)) => Ok(n),
            Ok(None) => Ok(0),
            Err(e) => Err(io::Error::new(io::ErrorKind::ConnectionReset, e)),
        }
    }
}

/// The data stream, accepted when first read: a stream the server opened
/// is seen by the client only once its first byte arrives, which is after
/// the client asked for something.
struct DataStream {
    handle: Handle,
    conn: quinn::Connection,
    stream: Option<quinn::RecvStream>,
}

impl Read for DataStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let stream = match &mut self.stream {
            Some(s) => s,
            None => {
                let s = self
                    .handle
                    .block_on(self.conn.accept_uni())
                    .map_err(|e| io::Error::new(io::ErrorKind::ConnectionReset, e))?;
                self.stream.insert(s)
            }
        };
        match self.handle.block_on(stream.read(buf)) {
            Ok(Some(n)) => Ok(n),
            Ok(None) => Ok(0),
            Err(e) => Err(io::Error::new(io::ErrorKind::ConnectionReset, e)),
        }
    }
}

/// A QUIC send stream written from a blocking thread; finished when dropped.
struct BlockingSend(Handle, quinn::SendStream);

impl Write for BlockingSend {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .block_on(self.1.write_all(buf))
            .map(|()| buf.len())
            .map_err(|e| io::Error::new(io::ErrorKind::ConnectionReset, e))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for BlockingSend {
    fn drop(&mut self) {
        let _ = self.1.finish();
    }
}

/// The trees of the images served, each computed once per version of its
/// file and shared by every session that syncs it: sessions that start
/// while it is being hashed send its groups as the one hashing pass gives
/// them (16 receivers of one image hash it once), sessions that start
/// later have it whole at once. Kept in the hash cache too, so that a
/// restarted server does not hash an unchanged image again.
#[derive(Debug)]
pub(crate) struct Trees {
    cache: Option<Cache>,
    /// By path: the version's tag, and its tree.
    slots: Mutex<HashMap<PathBuf, (String, Arc<GrowingTree>)>>,
}

impl Trees {
    pub(crate) fn new(cache: Option<Cache>) -> Self {
        Self {
            cache,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The tree of the file at `path`, version `tag`: hashing starts (on
    /// its own threads) when no session asked for this version before, or
    /// when its last hashing failed.
    fn get(&self, path: &Path, tag: &str, file: &File, len: u64) -> io::Result<Arc<GrowingTree>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((t, tree)) = slots.get(path) {
            // A new version replaces the old one's tree.
            if t == tag && !tree.failed() {
                return Ok(tree.clone());
            }
        }
        let tree = GrowingTree::new(len);
        let file = file.try_clone()?;
        let cache = self.cache.clone();
        let filling = tree.clone();
        std::thread::Builder::new()
            .name("anypatch-hash".into())
            .spawn(move || {
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                filling.fill(&file, threads, cache.as_ref());
            })?;
        slots.insert(path.to_owned(), (tag.to_owned(), tree.clone()));
        Ok(tree)
    }
}

/// Whether `file` is a patch (it starts with the patch format's magic):
/// a patch is fetched, not synced.
pub(crate) fn is_patch(file: &File) -> bool {
    use std::os::unix::fs::FileExt;
    let mut magic = [0u8; 8];
    file.read_exact_at(&mut magic, 0).is_ok() && magic == anypatch_format::MAGIC
}

/// Serves one sync of the image `file` (at `path`, version `tag`, `len`
/// bytes) on a request's streams: answers `OK` at once, then runs the
/// sender, which sends the image's tree as it is hashed, until the client
/// is done or goes away.
pub(crate) async fn serve(
    conn: quinn::Connection,
    mut control: quinn::SendStream,
    recv: quinn::RecvStream,
    (path, file, len, tag): (PathBuf, File, u64, String),
    trees: &Trees,
) -> io::Result<()> {
    let tree = match trees.get(&path, &tag, &file, len) {
        Ok(t) => t,
        Err(why) => {
            let refusal = Answer::Err {
                code: 500,
                message: format!("cannot hash the image: {why}"),
            };
            control.write_all(&refusal.encode()).await?;
            let _ = control.finish();
            return Ok(());
        }
    };
    control.write_all(&Answer::Ok { len, tag }.encode()).await?;
    let data = conn.open_uni().await.map_err(io::Error::other)?;
    let handle = Handle::current();
    let seed = session_seed();
    tokio::task::spawn_blocking(move || {
        send(
            &file,
            &tree,
            seed,
            BlockingRecv(handle.clone(), recv),
            BlockingSend(handle.clone(), control),
            BlockingSend(handle, data),
        )
    })
    .await
    .map_err(io::Error::other)?
    .map(|_| ())
}

/// A seed drawn per session, so that no image can be made in advance to
/// collide with its block keys.
fn session_seed() -> u64 {
    let mut b = [0u8; 8];
    // ring's system random source; the clock only if that fails.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        b = (t.as_nanos() as u64).to_le_bytes();
    }
    u64::from_le_bytes(b)
}

/// Why a sync failed on the client.
#[derive(Debug)]
pub enum SyncFailure {
    /// Connecting or asking failed; `Retry` ones may pass.
    Fetch(FetchError),
    /// The server says the name is a patch: fetch and apply it instead.
    IsPatch,
    /// The session failed.
    Session(SyncError),
}

impl std::fmt::Display for SyncFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fetch(e) => write!(f, "{e}"),
            Self::IsPatch => write!(f, "the name is a patch, not an image"),
            Self::Session(e) => write!(f, "{e}"),
        }
    }
}

/// The answer code for a name that is a patch (spec/SYNC.md section 4).
pub const IS_A_PATCH: u16 = 409;

/// A client's sync of one image: connected and answered, ready to run.
pub struct SyncSession {
    rt: tokio::runtime::Runtime,
    conn: quinn::Connection,
    control: quinn::SendStream,
    recv: quinn::RecvStream,
    /// The new image's length, as the server announced it.
    pub len: u64,
    _fetcher: Fetcher,
}

impl std::fmt::Debug for SyncSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncSession")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl SyncSession {
    /// Asks the server at `url` to sync its image: [`SyncFailure::IsPatch`]
    /// when the name is a patch (nothing else was sent or written).
    pub fn open(url: &RemoteUrl, trust: Trust, token: Option<&str>) -> Result<Self, SyncFailure> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| {
                SyncFailure::Fetch(FetchError::Fatal(format!(
                    "cannot start the network runtime: {e}"
                )))
            })?;
        let request = SyncRequest {
            name: url.path.clone(),
            token: token.map(str::to_owned),
        };
        let opened = rt.block_on(async {
            let mut fetcher = Fetcher::new(url.clone(), trust).map_err(SyncFailure::Fetch)?;
            let conn = fetcher
                .quic_connection()
                .await
                .map_err(SyncFailure::Fetch)?;
            let retry = |e: String| SyncFailure::Fetch(FetchError::Retry(e));
            let (mut control, mut recv) = conn.open_bi().await.map_err(|e| retry(e.to_string()))?;
            control
                .write_all(&request.encode())
                .await
                .map_err(|e| retry(format!("the request failed: {e}")))?;
            let line = read_line(&mut recv)
                .await
                .map_err(|e| retry(format!("no answer: {e}")))?;
            match Answer::parse(&line).map_err(|e| SyncFailure::Fetch(FetchError::Fatal(e)))? {
                Answer::Ok { len, .. } => Ok((fetcher, conn, control, recv, len)),
                Answer::Err { code, .. } if code == IS_A_PATCH => Err(SyncFailure::IsPatch),
                Answer::Err { code, message } if code >= 500 => {
                    Err(retry(format!("the server failed: {message}")))
                }
                Answer::Err { message, .. } => Err(SyncFailure::Fetch(FetchError::Fatal(format!(
                    "{url} refused: {message}"
                )))),
            }
        });
        let (fetcher, conn, control, recv, len) = opened?;
        Ok(Self {
            rt,
            conn,
            control,
            recv,
            len,
            _fetcher: fetcher,
        })
    }

    /// Syncs `old` into `target`. Blocks until the new image is whole and
    /// its BLAKE3 matched the server's, or the session failed.
    pub fn run(
        self,
        old: &File,
        target: Target<'_>,
        opts: &ReceiveOptions,
    ) -> Result<Received, SyncFailure> {
        self.over_streams(|recv, data, control| receive(old, target, recv, data, control, opts))
    }

    /// A dry run of [`SyncSession::run`] for `old` in place
    /// (`applypatch --check`): what a sync would send each way and how
    /// long it would take; nothing is written.
    pub fn measure(self, old: &File, opts: &ReceiveOptions) -> Result<Measured, SyncFailure> {
        self.over_streams(|recv, data, control| measure(old, recv, data, control, opts))
    }

    /// Runs a receiving side over the session's streams, read and written
    /// from this blocking thread, and closes the connection after it.
    fn over_streams<T>(
        self,
        side: impl FnOnce(BlockingRecv, DataStream, BlockingSend) -> Result<T, SyncError>,
    ) -> Result<T, SyncFailure> {
        let handle = self.rt.handle().clone();
        let data = DataStream {
            handle: handle.clone(),
            conn: self.conn.clone(),
            stream: None,
        };
        let r = side(
            BlockingRecv(handle.clone(), self.recv),
            data,
            BlockingSend(handle, self.control),
        )
        .map_err(SyncFailure::Session);
        close(&self.conn);
        r
    }
}

fn close(conn: &quinn::Connection) {
    // Ends the readers still waiting on the streams (their reads fail
    // at once on a closed connection), and lets the server see the
    // session end now rather than at its idle timeout.
    conn.close(0u32.into(), b"done");
}

#[cfg(test)]
mod tests {
    use super::SyncRequest;

    #[test]
    fn a_request_carries_names_with_spaces_and_its_token_on_an_auth_line() {
        let req = SyncRequest {
            name: "my vm.img".into(),
            token: Some("s3cret".into()),
        };
        let wire = String::from_utf8(req.encode()).expect("text");
        assert_eq!(wire, "AUTH s3cret\nSYNC 0 my vm.img\n");
        let line = wire.lines().nth(1).expect("the SYNC line");
        let back = SyncRequest::parse(line)
            .expect("a SYNC line")
            .expect("valid");
        assert_eq!(back.name, "my vm.img");
        assert_eq!(back.token, None, "the token is the AUTH line's");
    }

    #[test]
    fn malformed_sync_lines_are_refused() {
        assert_eq!(SyncRequest::parse("GET 0- a"), None);
        for bad in ["SYNC ", "SYNC 0", "SYNC 0 ", "SYNC x"] {
            assert!(
                matches!(SyncRequest::parse(bad), Some(Err(_))),
                "{bad:?} was accepted"
            );
        }
        let e = SyncRequest::parse("SYNC 1 a").expect("a SYNC line");
        assert!(e.expect_err("version 1").contains("version 1"));
    }
}
