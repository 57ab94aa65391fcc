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
    let mut backoff = Backoff::default();
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
        if t.at > before {
            backoff.progressed();
        }
        let wait = match backoff.failed(&t.opts) {
            Ok(wait) => wait,
            Err(given_up) => {
                let _ = t.tx.send(Err(fail(given_up.message(&t.url, &why)))).await;
                return;
            }
        };
        (t.opts.notice)(&backoff.notice(&t.url, &why, Some(t.at), wait, &t.opts));
        t.stats.retries.fetch_add(1, Ordering::Relaxed);
        t.opts.totals.retries.fetch_add(1, Ordering::Relaxed);
        crate::rt::sleep(wait).await;
    }
}

/// Failed attempts in a row, and the wait before the next one: the rule
/// of every retry, a patch's fetch and the opening of a sync alike.
/// [`RemoteOptions::backoff`] doubled after each failure up to
/// [`RemoteOptions::max_backoff`], given up after
/// [`RemoteOptions::retries`] failures in a row.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

/// The attempts made when a [`Backoff`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GaveUp(pub u32);

impl GaveUp {
    /// What to tell the user, after `why`, the last failure.
    pub fn message(self, url: &RemoteUrl, why: &str) -> String {
        format!(
            "{url}: gave up after {} attempts in a row; last: {why}",
            self.0
        )
    }
}

impl Backoff {
    /// An attempt got somewhere: the next failure is the first in a row.
    pub fn progressed(&mut self) {
        self.failures = 0;
    }

    /// Counts a failed attempt: how long to wait before the next, or
    /// [`GaveUp`] once `opts.retries` failures came in a row.
    pub fn failed(&mut self, opts: &RemoteOptions) -> Result<Duration, GaveUp> {
        self.failures += 1;
        if self.failures > opts.retries {
            return Err(GaveUp(self.failures));
        }
        Ok(opts
            .backoff
            .saturating_mul(1 << (self.failures - 1).min(16))
            .min(opts.max_backoff))
    }

    /// The notice of a retry after the failure `why`: at byte `at` of a
    /// fetch, if it is one.
    pub fn notice(
        &self,
        url: &RemoteUrl,
        why: &str,
        at: Option<u64>,
        wait: Duration,
        opts: &RemoteOptions,
    ) -> String {
        let at = at.map_or(String::new(), |at| format!(" at byte {at},"));
        format!(
            "{url}: {why};{at} retrying in {:.1} s ({} of {})",
            wait.as_secs_f64(),
            self.failures,
            opts.retries
        )
    }
}

/// Runs `attempt` until it succeeds, fails for a reason `retryable` does
/// not name (a refusal, a wrong certificate), or fails `opts.retries` times
/// in a row ([`Backoff`]); between attempts it waits, counts a retry in
/// `opts.totals` and says so through `opts.notice`, as a fetch does.
/// `gave_up` makes the error for the last case from its message. Blocks
/// the calling thread while it waits.
pub fn with_retries<T, E>(
    url: &RemoteUrl,
    opts: &RemoteOptions,
    mut attempt: impl FnMut() -> Result<T, E>,
    retryable: impl Fn(&E) -> Option<String>,
    gave_up: impl FnOnce(String) -> E,
) -> Result<T, E> {
    let mut backoff = Backoff::default();
    loop {
        let e = match attempt() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let Some(why) = retryable(&e) else {
            return Err(e);
        };
        match backoff.failed(opts) {
            Err(given_up) => return Err(gave_up(given_up.message(url, &why))),
            Ok(wait) => {
                (opts.notice)(&backoff.notice(url, &why, None, wait, opts));
                opts.totals.retries.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(wait);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn opts(notes: &Arc<Mutex<Vec<String>>>) -> RemoteOptions {
        let sink = notes.clone();
        let mut o = RemoteOptions::new(Trust::Signature);
        o.backoff = Duration::from_millis(1);
        o.max_backoff = Duration::from_millis(4);
        o.retries = 3;
        o.notice = Arc::new(move |s| sink.lock().expect("notes").push(s.to_owned()));
        o
    }

    #[test]
    fn waits_double_up_to_the_cap_and_progress_starts_the_count_anew() {
        let o = RemoteOptions::new(Trust::Signature);
        let mut b = Backoff::default();
        let waits: Vec<_> = (0..12).map(|_| b.failed(&o).expect("within 12")).collect();
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(
            ms,
            [250, 500, 1000, 2000, 4000, 8000, 8000, 8000, 8000, 8000, 8000, 8000]
        );
        assert_eq!(b.failed(&o), Err(GaveUp(13)));
        b.progressed();
        assert_eq!(b.failed(&o), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn with_retries_retries_what_may_pass_and_nothing_else() {
        let url = RemoteUrl::parse("quic://h/x").expect("url");
        let retry = |e: &FetchError| match e {
            FetchError::Retry(w) => Some(w.clone()),
            FetchError::Fatal(_) => None,
        };
        // Two failures that may pass, then success: two notices.
        let notes = Arc::default();
        let o = opts(&notes);
        let mut n = 0;
        let r = with_retries(
            &url,
            &o,
            || {
                n += 1;
                if n < 3 {
                    Err(FetchError::Retry("down".into()))
                } else {
                    Ok(n)
                }
            },
            retry,
            FetchError::Fatal,
        );
        assert_eq!(r, Ok(3));
        let seen = notes.lock().expect("notes").clone();
        assert_eq!(
            seen,
            [
                "quic://h/x: down; retrying in 0.0 s (1 of 3)",
                "quic://h/x: down; retrying in 0.0 s (2 of 3)"
            ]
        );
        assert_eq!(o.totals.retries.load(Ordering::Relaxed), 2);
        // A refusal: once, no notice.
        let notes = Arc::default();
        let o = opts(&notes);
        let mut n = 0;
        let r: Result<(), _> = with_retries(
            &url,
            &o,
            || {
                n += 1;
                Err(FetchError::Fatal("refused".into()))
            },
            retry,
            FetchError::Fatal,
        );
        assert_eq!((r, n), (Err(FetchError::Fatal("refused".into())), 1));
        assert!(notes.lock().expect("notes").is_empty());
        // Down for good: retries + 1 attempts, then the give-up message.
        let mut n = 0;
        let r: Result<(), _> = with_retries(
            &url,
            &o,
            || {
                n += 1;
                Err(FetchError::Retry("down".into()))
            },
            retry,
            FetchError::Fatal,
        );
        assert_eq!(n, 4);
        assert_eq!(
            r,
            Err(FetchError::Fatal(
                "quic://h/x: gave up after 4 attempts in a row; last: down".into()
            ))
        );
    }
}
