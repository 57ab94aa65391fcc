//! Live sync of an image over QUIC (spec/SYNC.md section 4): the server's
//! answer to `SYNC`, and the client. Both run `anypatch_sync::drive` on
//! blocking threads over the QUIC streams: the control stream is the
//! request's bidirectional stream, the data stream a unidirectional one the
//! server opens.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;
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

/// A stream's error with its causes: quinn's "connection lost" alone
/// would hide why, such as the reason a stopping server closed with.
fn lost(e: impl std::error::Error + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, crate::fetch::chain(&e))
}

/// A QUIC receive stream read from a blocking thread.
struct BlockingRecv(Handle, quinn::RecvStream);

impl Read for BlockingRecv {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.block_on(self.1.read(buf)) {
            Ok(Some(n)) => Ok(n),
            Ok(None) => Ok(0),
            Err(e) => Err(lost(e)),
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
                let s = self.handle.block_on(self.conn.accept_uni()).map_err(lost)?;
                self.stream.insert(s)
            }
        };
        match self.handle.block_on(stream.read(buf)) {
            Ok(Some(n)) => Ok(n),
            Ok(None) => Ok(0),
            Err(e) => Err(lost(e)),
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
            .map_err(lost)
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
///
/// Keyed by the file, not its name: two names of one file (a link) share
/// one tree and one hashing pass.
#[derive(Debug)]
pub(crate) struct Trees {
    cache: Option<Cache>,
    /// By file (device, inode): its version and its tree.
    slots: Mutex<HashMap<(u64, u64), Slot>>,
    /// Sessions served so far, to tell which slot was used last.
    uses: std::sync::atomic::AtomicU64,
}

/// One file's tree.
#[derive(Debug)]
struct Slot {
    version: Version,
    tree: Arc<GrowingTree>,
    /// When it was last asked for (in [`Trees::uses`]).
    used: u64,
}

/// What says a file is still the one that was hashed, as the hash cache
/// has it: its size, mtime and ctime (a write, even with the mtime set
/// back, changes the ctime).
type Version = (u64, i64, i64, i64, i64);

/// Trees kept for files no session is syncing: the least recently asked
/// for beyond these go (the hash cache still holds them).
const IDLE_TREES: usize = 16;

impl Trees {
    pub(crate) fn new(cache: Option<Cache>) -> Self {
        Self {
            cache,
            slots: Mutex::new(HashMap::new()),
            uses: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The tree of `file` (`len` bytes) as it is now: hashing starts (on
    /// its own threads) when no session asked for this version of this
    /// file before, under any of its names, or when its last hashing
    /// failed.
    fn get(&self, file: &File, len: u64) -> io::Result<Arc<GrowingTree>> {
        use std::os::unix::fs::MetadataExt;
        let m = file.metadata()?;
        let key = (m.dev(), m.ino());
        let version = (len, m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec());
        let used = self.uses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.get_mut(&key) {
            // A new version replaces the old one's tree.
            if slot.version == version && !slot.tree.failed() {
                slot.used = used;
                return Ok(slot.tree.clone());
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
        slots.insert(
            key,
            Slot {
                version,
                tree: tree.clone(),
                used,
            },
        );
        forget_idle(&mut slots);
        Ok(tree)
    }
}

/// Drops the least recently asked for trees no session holds, beyond
/// [`IDLE_TREES`]: a file replaced by a new one (a new inode) leaves its
/// old tree behind, which nothing would ask for again.
fn forget_idle(slots: &mut HashMap<(u64, u64), Slot>) {
    let mut idle: Vec<((u64, u64), u64)> = slots
        .iter()
        .filter(|(_, s)| Arc::strong_count(&s.tree) == 1)
        .map(|(k, s)| (*k, s.used))
        .collect();
    if idle.len() > IDLE_TREES {
        idle.sort_by_key(|&(_, used)| used);
        for (k, _) in &idle[..idle.len() - IDLE_TREES] {
            slots.remove(k);
        }
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
    (_path, file, len, tag): (PathBuf, File, u64, String),
    trees: &Trees,
) -> io::Result<()> {
    let tree = match trees.get(&file, len) {
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
    use super::{SyncRequest, Trees, IDLE_TREES};
    use std::fs::File;
    use std::sync::Arc;

    /// A served directory with `a.img` of `len` bytes.
    fn served(len: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(dir.path().join("a.img"), bytes).expect("write");
        dir
    }

    fn tree_of(trees: &Trees, path: &std::path::Path) -> Arc<anypatch_sync::growing::GrowingTree> {
        let f = File::open(path).expect("open");
        let len = f.metadata().expect("stat").len();
        trees.get(&f, len).expect("tree")
    }

    #[test]
    fn a_name_and_links_to_it_share_one_tree() {
        let dir = served(300_000);
        let a = dir.path().join("a.img");
        std::fs::hard_link(&a, dir.path().join("hard.img")).expect("link");
        std::os::unix::fs::symlink("a.img", dir.path().join("soft.img")).expect("symlink");
        let trees = Trees::new(None);
        let first = tree_of(&trees, &a);
        for name in ["hard.img", "soft.img", "a.img"] {
            let other = tree_of(&trees, &dir.path().join(name));
            assert!(Arc::ptr_eq(&first, &other), "{name} got a tree of its own");
        }
    }

    #[test]
    fn a_file_written_since_gets_a_new_tree() {
        let dir = served(300_000);
        let a = dir.path().join("a.img");
        let trees = Trees::new(None);
        let first = tree_of(&trees, &a);
        assert!(Arc::ptr_eq(&first, &tree_of(&trees, &a)));
        // Same length, and the mtime set back: the ctime still moves.
        let mtime = std::fs::metadata(&a)
            .expect("stat")
            .modified()
            .expect("mtime");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&a)
            .expect("open");
        std::os::unix::fs::FileExt::write_all_at(&f, b"changed", 1000).expect("write");
        f.set_modified(mtime).expect("set mtime");
        drop(f);
        assert!(!Arc::ptr_eq(&first, &tree_of(&trees, &a)));
    }

    #[test]
    fn trees_no_session_holds_are_forgotten_beyond_a_few() {
        let dir = tempfile::tempdir().expect("tempdir");
        let trees = Trees::new(None);
        let held = {
            std::fs::write(dir.path().join("held.img"), b"held").expect("write");
            tree_of(&trees, &dir.path().join("held.img"))
        };
        for i in 0..IDLE_TREES + 10 {
            let p = dir.path().join(format!("{i}.img"));
            std::fs::write(&p, i.to_string()).expect("write");
            let t = tree_of(&trees, &p);
            // Hashed (a few bytes): the hashing thread lets go of it, and
            // only the slot and this test hold it.
            while t.finished().is_none() {
                std::thread::yield_now();
            }
            while Arc::strong_count(&t) > 2 {
                std::thread::yield_now();
            }
        }
        let slots = trees.slots.lock().expect("slots");
        assert!(slots.len() <= IDLE_TREES + 2, "{} trees kept", slots.len());
        assert!(slots.values().any(|s| Arc::ptr_eq(&s.tree, &held)));
    }

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
