//! A remote patch as a blocking [`Read`]: a thread runs the fetch, retries
//! it with backoff when the link or the server fails, and goes on from the
//! byte it had reached, after checking that the file is still the same
//! version. The reader and the fetch meet in a bounded queue, so at most
//! [`QUEUE_BYTES`] wait there whatever the patch size.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

// tokio's, or blocking stand-ins in the plain-HTTP build (see rt).
use crate::rt::{mpsc, Bytes};

use crate::fetch::{FetchError, Fetcher, Head};
use crate::tls::Trust;
use crate::token::Token;
use crate::url::RemoteUrl;

/// Piece size in the queue.
const PIECE: usize = 64 << 10;
/// Bytes the queue holds at most. The QUIC receive window
/// ([`crate::fetch::RECEIVE_WINDOW`], 8 MiB) is what buffers the link; the
/// queue only hands bytes from the fetch thread to the reader. With quinn's
/// receive buffer (up to 3 MiB: 32 batches of 64 datagrams) the client's
/// network buffers stay within 16 MiB (tests/tests/net_hostile_memory.rs
/// measures them).
pub const QUEUE_BYTES: usize = 1 << 20;

/// How a remote patch is fetched.
#[derive(Clone)]
pub struct RemoteOptions {
    pub trust: Trust,
    /// Failed attempts in a row before giving up (bytes arriving reset the count).
    pub retries: u32,
    /// First wait after a failure; doubled each time, up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Where notices go ("connection lost at byte N; retrying in 2 s").
    pub notice: Arc<dyn Fn(&str) + Send + Sync>,
    /// The version the bytes before the start offset came from (a copy
    /// kept by an earlier run): the server must still have it.
    pub expect: Option<Head>,
    /// Counts over every fetch made with these options (and their clones):
    /// what a command fetched in all, retries included.
    pub totals: Arc<FetchStats>,
    /// The token the server's access file names for the patch, if any:
    /// sent on `AUTH` over QUIC, as `Authorization: Bearer` over HTTPS.
    pub token: Option<Token>,
}

impl std::fmt::Debug for RemoteOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteOptions")
            .field("trust", &self.trust)
            .field("retries", &self.retries)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl RemoteOptions {
    /// 12 attempts in a row, waits from 0.25 s up to 8 s (a minute of
    /// outage in all), notices on stderr.
    pub fn new(trust: Trust) -> Self {
        Self {
            trust,
            retries: 12,
            backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
            notice: Arc::new(|s| eprintln!("{s}")),
            expect: None,
            totals: Arc::default(),
            token: None,
        }
    }
}

/// What a fetch has done so far, readable while it runs.
#[derive(Debug, Default)]
pub struct FetchStats {
    /// Bytes received from the network, those discarded included.
    pub received: AtomicU64,
    /// Bytes handed to the reader.
    pub delivered: AtomicU64,
    /// The patch's length, once a server said it (0 before).
    pub len: AtomicU64,
    /// Connections or requests made again after a failure.
    pub retries: AtomicU64,
    /// What the server first said about the file.
    pub head: std::sync::Mutex<Option<Head>>,
}

/// The server now has another version of the file than the one a fetch
/// began with, or than the one an earlier run's bytes came from: what was
/// fetched cannot be continued and must be fetched again from byte 0. A
/// [`RemotePatch`] read fails with an [`io::Error`] that holds this
/// ([`VersionChanged::of`] finds it), so a caller can start over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionChanged {
    pub url: String,
    pub was: Head,
    pub now: Head,
}

impl VersionChanged {
    /// The version change inside `e`, if that is what `e` is.
    pub fn of(e: &io::Error) -> Option<&Self> {
        e.get_ref()?.downcast_ref::<Self>()
    }
}

impl std::fmt::Display for VersionChanged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = |h: &Head| h.len.map_or("?".into(), |l| l.to_string());
        write!(
            f,
            "{} changed on the server (it was {} bytes, tag {:?}; now {} bytes, tag {:?})",
            self.url,
            len(&self.was),
            self.was.tag,
            len(&self.now),
            self.now.tag
        )
    }
}

impl std::error::Error for VersionChanged {}

/// A patch being fetched; read it like a file, in order.
pub struct RemotePatch {
    queue: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
    done: bool,
    stats: Arc<FetchStats>,
}

impl std::fmt::Debug for RemotePatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemotePatch")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl RemotePatch {
    /// Starts fetching `url` from byte `offset` to its end, on a thread of
    /// its own.
    pub fn open(url: RemoteUrl, offset: u64, opts: RemoteOptions) -> io::Result<Self> {
        Self::open_range(url, offset, None, opts)
    }

    /// Starts fetching `url` from byte `offset` up to `end` (exclusive) or
    /// its end: only those bytes cross the network.
    pub fn open_range(
        url: RemoteUrl,
        offset: u64,
        end: Option<u64>,
        opts: RemoteOptions,
    ) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE_BYTES / PIECE);
        let stats = Arc::new(FetchStats::default());
        let thread_stats = stats.clone();
        let runtime = crate::rt::runtime()?;
        std::thread::Builder::new()
            .name("anypatch-fetch".into())
            .spawn(move || {
                runtime.block_on(fetch_loop(url, offset, end, opts, tx, thread_stats));
            })?;
        Ok(Self {
            queue: rx,
            current: Bytes::new(),
            done: false,
            stats,
        })
    }

    /// The counters of this fetch.
    pub fn stats(&self) -> Arc<FetchStats> {
        self.stats.clone()
    }

    /// What the server said about the file (its length and version), once
    /// it has answered.
    pub fn head(&self) -> Option<Head> {
        self.stats.head.lock().map(|h| h.clone()).unwrap_or(None)
    }
}

impl Read for RemotePatch {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.queue.blocking_recv() {
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                None => self.done = true, // the fetch ended cleanly
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// One transfer: where it is, where it stops, and where its bytes go.
struct Transfer {
    url: RemoteUrl,
    /// The next byte to hand on.
    at: u64,
    end: Option<u64>,
    /// The server's first answer (or the version expected): later answers
    /// must name the same version.
    first: Option<Head>,
    tx: mpsc::Sender<io::Result<Bytes>>,
    stats: Arc<FetchStats>,
    opts: RemoteOptions,
}

/// Fetches until the end of the patch, a fatal error, too many failures
/// in a row, or the reader going away.
async fn fetch_loop(
    url: RemoteUrl,
    start: u64,
    end: Option<u64>,
    opts: RemoteOptions,
    tx: mpsc::Sender<io::Result<Bytes>>,
    stats: Arc<FetchStats>,
) {
    let fail = |why: String| io::Error::other(why);
    let fetcher = Fetcher::new(url.clone(), opts.trust.clone())
        .and_then(|f| f.with_token(opts.token.clone()));
    let mut fetcher = match fetcher {
        Ok(f) => f,
        Err(e) => {
            let _ = tx.send(Err(fail(e.to_string()))).await;
            return;
        }
    };
    let mut t = Transfer {
        url,
        at: start,
        end,
        first: opts.expect.clone(),
        tx,
        stats,
        opts,
    };
    let mut failures = 0u32;
    loop {
        let before = t.at;
        let why = match fetch_once(&mut fetcher, &mut t).await {
            Ok(()) => return, // done: dropping the sender ends the reader cleanly
            Err(Failed::Changed(c)) => {
                let _ = t.tx.send(Err(io::Error::other(c))).await;
                return;
            }
            Err(Failed::Fetch(FetchError::Fatal(why))) => {
                let _ = t.tx.send(Err(fail(why))).await;
                return;
            }
            Err(Failed::Fetch(FetchError::Retry(_))) if t.tx.is_closed() => return, // the reader went away
            Err(Failed::Fetch(FetchError::Retry(why))) => why,
        };
        // Failures count in a row: an attempt that got bytes starts anew.
        failures = if t.at > before { 1 } else { failures + 1 };
        let (url, at, retries) = (&t.url, t.at, t.opts.retries);
        if failures > retries {
            let _ =
                t.tx.send(Err(fail(format!(
                    "{url}: gave up after {failures} attempts in a row; last: {why}"
                ))))
                .await;
            return;
        }
        let wait = t
            .opts
            .backoff
            .saturating_mul(1 << (failures - 1).min(16))
            .min(t.opts.max_backoff);
        (t.opts.notice)(&format!(
            "{url}: {why}; at byte {at}, retrying in {:.1} s ({failures} of {retries})",
            wait.as_secs_f64(),
        ));
        t.stats.retries.fetch_add(1, Ordering::Relaxed);
        t.opts.totals.retries.fetch_add(1, Ordering::Relaxed);
        crate::rt::sleep(wait).await;
    }
}

/// Why one request ended early.
enum Failed {
    Fetch(FetchError),
    /// Fatal too, but the caller may start over from byte 0.
    Changed(VersionChanged),
}

impl From<FetchError> for Failed {
    fn from(e: FetchError) -> Self {
        Self::Fetch(e)
    }
}

/// One request from `t.at` to `t.end` or the end, handing bytes on as they come.
async fn fetch_once(fetcher: &mut Fetcher, t: &mut Transfer) -> Result<(), Failed> {
    let Transfer {
        url,
        at,
        end,
        first,
        tx,
        stats,
        opts,
    } = t;
    let end = *end;
    let (head, mut body) = fetcher.open(*at, end, first.as_ref()).await?;
    if let Some(len) = head.len {
        stats.len.store(len, Ordering::Relaxed);
        opts.totals.len.store(len, Ordering::Relaxed);
    }
    if let Ok(mut seen) = stats.head.lock() {
        seen.get_or_insert_with(|| head.clone());
    }
    match first {
        None => *first = Some(head.clone()),
        Some(was) if was.len != head.len || was.tag != head.tag => {
            return Err(Failed::Changed(VersionChanged {
                url: url.to_string(),
                was: was.clone(),
                now: head,
            }));
        }
        Some(_) => {}
    }
    let mut skip = head.skip;
    if skip > 0 {
        (opts.notice)(&format!(
            "{url}: the server ignores range requests; fetching from the start again and skipping the {skip} bytes already read"
        ));
    }
    loop {
        let Some(mut chunk) = body.chunk().await? else {
            break;
        };
        stats
            .received
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        opts.totals
            .received
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        if skip > 0 {
            let n = skip.min(chunk.len() as u64) as usize;
            let _ = chunk.split_to(n);
            skip -= n as u64;
        }
        if let Some(end) = end {
            // A server that ignored the range's end sends more: stop there.
            chunk.truncate(end.saturating_sub(*at).min(chunk.len() as u64) as usize);
        }
        while !chunk.is_empty() {
            // A copy: a slice of the chunk would keep the whole receive
            // buffer it came in alive (a QUIC batch of datagrams, or HTTP's
            // read buffer) while it waits in the queue.
            let piece = Bytes::from(chunk.split_to(chunk.len().min(PIECE)).to_vec());
            let n = piece.len() as u64;
            if tx.send(Ok(piece)).await.is_err() {
                return Ok(()); // the reader went away
            }
            *at += n;
            stats.delivered.fetch_add(n, Ordering::Relaxed);
        }
        if end.is_some_and(|e| *at >= e) {
            break;
        }
    }
    let stop = match (head.len, end) {
        (Some(len), Some(end)) => Some(len.min(end)),
        (len, None) => len,
        (None, end) => end,
    };
    match stop {
        Some(stop) if *at < stop => {
            Err(FetchError::Retry(format!("the body ended at byte {at} of {stop}")).into())
        }
        Some(stop) if *at > stop => Err(FetchError::Fatal(format!(
            "{url}: the server sent more than the {stop} bytes asked for"
        ))
        .into()),
        _ => Ok(()),
    }
}
