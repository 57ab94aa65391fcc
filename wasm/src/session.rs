//! A poll-style session over the engine whose old-range requests can be
//! answered later, after an asynchronous read.
//!
//! The engine hands out the buffer for old bytes only inside the
//! [`Event::ReadOld`] it returns, and expects it filled before the next
//! [`Applier::poll`]. In a browser the bytes come from an awaited
//! `File.slice().arrayBuffer()`, so the answer arrives in a later call. The
//! driver is therefore an `async fn` that keeps the event, and its borrow of
//! the buffer, across a suspension point; [`Session`] polls that future by
//! hand with a no-op waker whenever the caller has supplied what it waits
//! for. There is no executor, no thread and no `unsafe`: this is the engine's
//! own driving loop, written as a coroutine.
#![forbid(unsafe_code)]

use core::cell::RefCell;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};
use std::rc::Rc;

use anypatch_apply::format::Header;
use anypatch_apply::{Applier, ApplyError, Config, Event, Progress, Signer, Summary};

use crate::map::Layout;

/// What the session waits for, or how it ended.
#[derive(Debug, Clone)]
pub enum Request {
    /// Not started: the first [`Session::poll`] starts it.
    Start,
    /// Give patch bytes with [`Session::feed`], or call [`Session::end`].
    NeedInput,
    /// The header is checked (and the signature, if one was required).
    Header,
    /// Give exactly `len` old bytes at `offset` with [`Session::provide_old`].
    ReadOld { offset: u64, len: usize },
    /// Verified bytes for the target at `offset`, in [`Session::write_data`].
    Write { offset: u64, len: usize },
    /// The target's `len` bytes at `offset` must read as zero.
    Zero { offset: u64, len: u64 },
    /// Applied and verified.
    Done(Summary),
    /// Failed; every later poll reports the same failure.
    Failed(Failure),
}

/// Why a session failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The engine refused the patch or the base.
    Apply(ApplyError),
    /// Fewer old bytes were given than asked for.
    ShortOld {
        offset: u64,
        got: usize,
        expected: usize,
    },
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Apply(e) => e.fmt(f),
            // The CLI's sentence for the same case.
            Self::ShortOld { .. } => {
                f.write_str("the old file got shorter while the patch was applied")
            }
        }
    }
}

/// State shared between the session and its driver future. Neither keeps a
/// borrow across a suspension point, so the `RefCell` never conflicts.
#[derive(Debug)]
struct Shared {
    request: Request,
    input: Vec<u8>,
    input_pos: usize,
    eof: bool,
    old: Option<Vec<u8>>,
    report_writes: bool,
    write_data: Vec<u8>,
    progress: Progress,
    header: Option<Header>,
    signers: Vec<Signer>,
    layout: Layout,
}

type Driver = Pin<Box<dyn Future<Output = ()>>>;

/// Zero runs are hashed and reported in pieces of at most this many bytes,
/// so the caller regains control (progress, cancel) about every 15 ms even
/// while a patch's declared terabytes of zeros are hashed.
pub const ZERO_STEP: u64 = 16 << 20;

/// The engine's settings until the first poll builds it.
#[derive(Debug)]
struct Setup {
    cfg: Config,
    trusted: Vec<[u8; 32]>,
}

/// The engine, driven by calls that may come between awaits. See the module docs.
pub struct Session {
    shared: Rc<RefCell<Shared>>,
    /// The settings until the first poll, which builds the engine into the driver.
    setup: Option<Setup>,
    driver: Option<Driver>,
}

impl core::fmt::Debug for Session {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Session")
            .field("shared", &self.shared)
            .field("started", &self.driver.is_some())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session for an old file of `old_len` bytes, verifying the base first.
    /// `map_buckets` sets how finely [`Session::layout`] sums the extents.
    pub fn new(old_len: u64, map_buckets: usize) -> Self {
        Self {
            shared: Rc::new(RefCell::new(Shared {
                request: Request::Start,
                input: Vec::new(),
                input_pos: 0,
                eof: false,
                old: None,
                report_writes: true,
                write_data: Vec::new(),
                progress: Progress::default(),
                header: None,
                signers: Vec::new(),
                layout: Layout::new(map_buckets),
            })),
            setup: Some(Setup {
                cfg: Config {
                    zero_step: ZERO_STEP,
                    ..Config::new(old_len)
                },
                trusted: Vec::new(),
            }),
            driver: None,
        }
    }

    /// Requires a signature by one of `keys`. Call before the first poll;
    /// returns false (and changes nothing) after it.
    pub fn require_signature(&mut self, keys: &[[u8; 32]]) -> bool {
        match self.setup.as_mut() {
            Some(setup) => {
                setup.trusted = keys.to_vec();
                true
            }
            None => false,
        }
    }

    /// Refuses a patch whose new file is larger than `max` bytes, before
    /// the old file is read (the engine's `Config::max_new_len`). Call
    /// before the first poll; returns false (and changes nothing) after it.
    pub fn set_max_new_len(&mut self, max: u64) -> bool {
        match self.setup.as_mut() {
            Some(setup) => {
                setup.cfg.max_new_len = max;
                true
            }
            None => false,
        }
    }

    /// With `false`, verified writes are not reported (verification only):
    /// `poll` then stops only for input, old bytes, the header, zeros and the
    /// end. Zeros are still reported, at most [`ZERO_STEP`] bytes each, as
    /// points where the caller regains control during a long zero run.
    pub fn set_report_writes(&mut self, on: bool) {
        self.shared.borrow_mut().report_writes = on;
    }

    /// Advances until the session needs something, and returns what. Call it
    /// again after answering: [`Request::NeedInput`] with `feed` or `end`,
    /// [`Request::ReadOld`] with `provide_old`; the other requests need no
    /// answer. Returns the same request while it is unanswered.
    pub fn poll(&mut self) -> Request {
        if self.waiting() {
            return self.request();
        }
        if self.driver.is_none() {
            let setup = self
                .setup
                .take()
                .expect("the driver is made once, from the setup");
            let mut applier = Applier::new(setup.cfg);
            applier.require_signature(&setup.trusted);
            self.driver = Some(Box::pin(drive(applier, Rc::clone(&self.shared))));
        }
        let driver = self.driver.as_mut().expect("made above");
        let mut cx = Context::from_waker(Waker::noop());
        // Pending means the driver stopped at a request; Ready means it ended
        // and left its final request (Done or Failed), which stays.
        let _ = driver.as_mut().poll(&mut cx);
        self.request()
    }

    /// True while the current request is unanswered (or final).
    fn waiting(&self) -> bool {
        let s = self.shared.borrow();
        match s.request {
            Request::NeedInput => s.input_pos == s.input.len() && !s.eof,
            Request::ReadOld { .. } => s.old.is_none(),
            Request::Done(_) | Request::Failed(_) => true,
            _ => false,
        }
    }

    /// The current request, as last returned by [`Session::poll`].
    pub fn request(&self) -> Request {
        self.shared.borrow().request.clone()
    }

    /// Gives patch bytes, after `poll` returned [`Request::NeedInput`]. The
    /// session keeps them all and feeds the engine from them before asking
    /// again. Returns false (taking nothing) at any other time.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        let mut s = self.shared.borrow_mut();
        if !matches!(s.request, Request::NeedInput) || s.input_pos < s.input.len() || s.eof {
            return false;
        }
        s.input.clear();
        s.input.extend_from_slice(bytes);
        s.input_pos = 0;
        true
    }

    /// Says the patch has no more bytes, after `poll` returned [`Request::NeedInput`].
    pub fn end(&mut self) -> bool {
        let mut s = self.shared.borrow_mut();
        if !matches!(s.request, Request::NeedInput) || s.input_pos < s.input.len() {
            return false;
        }
        s.eof = true;
        true
    }

    /// Answers [`Request::ReadOld`] with the old bytes. Returns false (taking
    /// nothing) when no old bytes are wanted. Fewer bytes than asked for fail
    /// the session on the next poll.
    pub fn provide_old(&mut self, bytes: Vec<u8>) -> bool {
        let mut s = self.shared.borrow_mut();
        if !matches!(s.request, Request::ReadOld { .. }) || s.old.is_some() {
            return false;
        }
        s.old = Some(bytes);
        true
    }

    /// The bytes of the current [`Request::Write`].
    pub fn write_data(&self) -> core::cell::Ref<'_, [u8]> {
        core::cell::Ref::map(self.shared.borrow(), |s| &s.write_data[..])
    }

    /// How far the apply is.
    pub fn progress(&self) -> Progress {
        self.shared.borrow().progress
    }

    /// The header, once [`Request::Header`] was reported.
    pub fn header(&self) -> Option<Header> {
        self.shared.borrow().header.clone()
    }

    /// The signatures found, once [`Request::Header`] was reported.
    pub fn signers(&self) -> Vec<Signer> {
        self.shared.borrow().signers.clone()
    }

    /// The page chain as read so far: the extents, for the picture.
    pub fn layout(&self) -> core::cell::Ref<'_, Layout> {
        core::cell::Ref::map(self.shared.borrow(), |s| &s.layout)
    }
}

/// Stops the driver once; the next poll of the driver resumes it.
struct Suspend(bool);

impl Future for Suspend {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            Poll::Pending
        }
    }
}

fn suspend() -> Suspend {
    Suspend(false)
}

/// The engine's driving loop (see the crate docs of `anypatch-apply`), with
/// each request to the caller as a suspension.
async fn drive(mut applier: Applier, shared: Rc<RefCell<Shared>>) {
    let end = loop {
        shared.borrow_mut().progress = applier.progress();
        let event = match applier.poll() {
            Ok(event) => event,
            Err(e) => break Request::Failed(Failure::Apply(e)),
        };
        match event {
            Event::NeedInput => loop {
                let answered = {
                    let mut guard = shared.borrow_mut();
                    let s = &mut *guard;
                    if s.input_pos < s.input.len() {
                        let at = applier.progress().patch_consumed;
                        let n = applier.feed(&s.input[s.input_pos..]);
                        s.layout.give(at, &s.input[s.input_pos..s.input_pos + n]);
                        s.input_pos += n;
                        true
                    } else if s.eof {
                        applier.end_of_input();
                        true
                    } else {
                        s.request = Request::NeedInput;
                        false
                    }
                };
                if answered {
                    break;
                }
                suspend().await;
            },
            Event::Header(h) => {
                let h = h.clone();
                {
                    let mut s = shared.borrow_mut();
                    s.header = Some(h);
                    s.signers = applier.signers().to_vec();
                    s.request = Request::Header;
                }
                suspend().await;
            }
            Event::ReadOld { offset, buf } => {
                let len = buf.len();
                shared.borrow_mut().request = Request::ReadOld { offset, len };
                let data = loop {
                    if let Some(d) = shared.borrow_mut().old.take() {
                        break d;
                    }
                    suspend().await;
                };
                if data.len() != len {
                    break Request::Failed(Failure::ShortOld {
                        offset,
                        got: data.len(),
                        expected: len,
                    });
                }
                buf.copy_from_slice(&data);
            }
            Event::Write { offset, data } => {
                let report = {
                    let mut s = shared.borrow_mut();
                    if s.report_writes {
                        s.write_data.clear();
                        s.write_data.extend_from_slice(data);
                        s.request = Request::Write {
                            offset,
                            len: data.len(),
                        };
                    }
                    s.report_writes
                };
                if report {
                    suspend().await;
                }
            }
            Event::Zero { offset, len } => {
                // Reported even when verifying only: a zero run is hashed
                // in pieces, and the caller regains control after each.
                {
                    let mut s = shared.borrow_mut();
                    s.request = Request::Zero { offset, len };
                    s.progress = applier.progress();
                }
                suspend().await;
            }
            Event::Done(summary) => break Request::Done(summary),
        }
    };
    let mut s = shared.borrow_mut();
    s.progress = applier.progress();
    s.write_data = Vec::new();
    s.input = Vec::new();
    s.input_pos = 0;
    s.request = end;
}

#[cfg(test)]
mod tests {
    use super::*;
    use anypatch_apply::layout::map::{DATA, KINDS, MOVED, UNCHANGED, ZERO};

    const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/vectors");

    /// Drives a session the way the page does, feeding the patch in `slice`-byte
    /// pieces; returns the output (zeros as holes) or the failure.
    fn run(old: &[u8], patch: &[u8], slice: usize) -> (Session, Result<Vec<u8>, Failure>) {
        let mut s = Session::new(old.len() as u64, 64);
        let mut out = Vec::new();
        let mut pos = 0;
        let result = loop {
            match s.poll() {
                Request::Start => unreachable!("poll starts the session"),
                Request::NeedInput => {
                    if pos == patch.len() {
                        assert!(s.end());
                    } else {
                        let n = slice.min(patch.len() - pos);
                        assert!(s.feed(&patch[pos..pos + n]));
                        pos += n;
                    }
                }
                Request::Header => assert!(s.header().is_some()),
                Request::ReadOld { offset, len } => {
                    let at = offset as usize;
                    // Asking again before answering gives the same request.
                    assert!(matches!(s.poll(), Request::ReadOld { .. }));
                    assert!(s.provide_old(old[at..at + len].to_vec()));
                }
                Request::Write { offset, len } => {
                    let end = offset as usize + len;
                    if out.len() < end {
                        out.resize(end, 0);
                    }
                    out[offset as usize..end].copy_from_slice(&s.write_data());
                }
                Request::Zero { .. } => {}
                Request::Done(summary) => {
                    out.resize(summary.new_len as usize, 0);
                    break Ok(out);
                }
                Request::Failed(f) => break Err(f),
            }
        };
        (s, result)
    }

    /// (name, old, patch, new) of every vector that has its new file.
    type Vector = (String, Vec<u8>, Vec<u8>, Vec<u8>);

    fn vectors() -> Vec<Vector> {
        let mut v = Vec::new();
        for entry in std::fs::read_dir(VECTORS).expect("spec/vectors exists") {
            let dir = entry.expect("readable").path();
            let Ok(new) = std::fs::read(dir.join("new.bin")) else {
                continue; // vectors too big to check in keep only the patch
            };
            let old = std::fs::read(dir.join("old.bin")).unwrap_or_default();
            let patch = std::fs::read(dir.join("patch.anyp")).expect("every vector has a patch");
            let name = dir
                .file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned();
            v.push((name, old, patch, new));
        }
        assert!(v.len() >= 8, "found only {} vectors", v.len());
        v
    }

    #[test]
    fn every_vector_applies_with_any_slice_size() {
        for (name, old, patch, new) in vectors() {
            for slice in [1, 7, 4096, usize::MAX] {
                let (s, got) = run(&old, &patch, slice);
                assert_eq!(got.as_deref(), Ok(&new[..]), "{name}, slices of {slice}");
                let layout = s.layout();
                assert!(layout.finished(), "{name}: the map read every page");
                let b = layout.buckets().expect("header seen");
                assert_eq!(b.totals.iter().sum::<u64>(), new.len() as u64, "{name}");
                let flat: f64 = b.flat().iter().sum();
                assert_eq!(flat as u64, new.len() as u64, "{name}: buckets add up");
            }
        }
    }

    #[test]
    fn map_sees_every_kind() {
        let mut seen = [0u64; KINDS];
        for (_, old, patch, _) in vectors() {
            let (s, _) = run(&old, &patch, 1 << 16);
            let layout = s.layout();
            for (k, t) in layout
                .buckets()
                .expect("header seen")
                .totals
                .iter()
                .enumerate()
            {
                seen[k] += t;
            }
        }
        for k in [UNCHANGED, MOVED, DATA, ZERO] {
            assert!(seen[k] > 0, "kind {k} appears in some vector");
        }
    }

    #[test]
    fn seeking_map_reads_only_pages() {
        for (name, old, patch, _) in vectors() {
            let (s, _) = run(&old, &patch, usize::MAX);
            let mut m = Layout::new(64);
            let mut read = 0;
            while let Some((at, len)) = m.wanted() {
                let at = at as usize;
                m.give(at as u64, &patch[at..at + len]);
                read += len;
            }
            assert!(m.finished(), "{name}: {:?}", m.error());
            assert_eq!(m.pages(), s.layout().pages(), "{name}");
            let (a, b) = (m.buckets().expect("header"), s.layout());
            assert_eq!(a.flat(), b.buckets().expect("header").flat(), "{name}");
            assert!(read <= patch.len(), "{name}");
        }
    }

    #[test]
    fn wrong_base_and_corrupt_patch_fail_with_the_cli_sentences() {
        let (_, old, patch, _) = vectors()
            .into_iter()
            .find(|v| v.0 == "small-edits")
            .expect("small-edits vector");
        let mut wrong = old.clone();
        wrong[0] ^= 1;
        let (_, got) = run(&wrong, &patch, 1000);
        let Err(Failure::Apply(e)) = got else {
            panic!("a wrong base fails: {got:?}")
        };
        assert_eq!(e, ApplyError::BaseHash);
        assert!(e.to_string().starts_with("wrong base:"));

        let mut bad = patch.clone();
        let at = bad.len() - 100;
        bad[at] ^= 0x40;
        let (_, got) = run(&old, &bad, 1000);
        let Err(Failure::Apply(e)) = got else {
            panic!("a corrupt patch fails: {got:?}")
        };
        assert_eq!(e.class(), anypatch_apply::ErrorClass::CorruptPatch, "{e}");
    }

    /// An unsigned patch for an empty old file whose new file is one zero
    /// extent of `len` bytes (its `new_hash` that of no bytes: these tests
    /// never reach the end).
    fn zero_patch(len: u64) -> Vec<u8> {
        use anypatch_apply::format::{Codec, Extent, Page, PageRef, Trailer, TRAILER_LEN};
        let page = Page {
            extents: vec![Extent::Zero { len }],
            next: None,
        }
        .emit();
        let mut header = Header {
            old_len: 0,
            new_len: len,
            old_hash: *blake3::hash(b"").as_bytes(),
            new_hash: *blake3::hash(b"").as_bytes(),
            block_size: 4096,
            segment_max: 0,
            codec: Codec::Zstd as u8,
            flags: 0,
            patch_len: 0,
            extent_count: 1,
            segment_count: 0,
            first_page: PageRef {
                len: page.len() as u32,
                hash: *blake3::hash(&page).as_bytes(),
            },
            producer: "session test".into(),
        };
        let mut patch = header.emit(0, 0);
        while header.patch_len != (patch.len() + page.len() + TRAILER_LEN) as u64 {
            header.patch_len = (patch.len() + page.len() + TRAILER_LEN) as u64;
            patch = header.emit(0, 0);
        }
        patch.extend_from_slice(&page);
        let mut trailer = [0u8; TRAILER_LEN];
        Trailer {
            patch_hash: *blake3::hash(&patch).as_bytes(),
        }
        .emit(&mut trailer);
        patch.extend_from_slice(&trailer);
        patch
    }

    #[test]
    fn a_huge_zero_run_returns_control_in_steps_even_when_verifying_only() {
        let patch = zero_patch(1 << 50);
        let mut s = Session::new(0, 4);
        s.set_report_writes(false);
        let mut steps = Vec::new();
        while steps.len() < 3 {
            match s.poll() {
                Request::NeedInput => assert!(s.feed(&patch)),
                Request::Zero { offset, len } => steps.push((offset, len)),
                Request::Header | Request::ReadOld { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            steps,
            [
                (0, ZERO_STEP),
                (ZERO_STEP, ZERO_STEP),
                (2 * ZERO_STEP, ZERO_STEP)
            ]
        );
        assert_eq!(s.progress().new_done, 3 * ZERO_STEP);
    }

    #[test]
    fn a_size_limit_refuses_before_the_old_file_is_read() {
        let patch = zero_patch(1 << 50);
        let mut s = Session::new(0, 4);
        assert!(s.set_max_new_len(64 << 30));
        let got = loop {
            match s.poll() {
                Request::NeedInput => assert!(s.feed(&patch)),
                Request::Header => {}
                Request::Failed(f) => break f,
                other => panic!("nothing happens past the header: {other:?}"),
            }
        };
        assert_eq!(
            got,
            Failure::Apply(ApplyError::NewTooLarge {
                got: 1 << 50,
                max: 64 << 30
            })
        );
        // Too late to change once running.
        assert!(!s.set_max_new_len(u64::MAX));
        assert!(!s.require_signature(&[[0; 32]]));
    }

    #[test]
    fn short_old_read_fails_the_session() {
        let (_, old, patch, _) = vectors()
            .into_iter()
            .find(|v| !v.1.is_empty())
            .expect("a vector with an old file");
        let mut s = Session::new(old.len() as u64, 4);
        let got = loop {
            match s.poll() {
                Request::NeedInput => assert!(s.feed(&patch)),
                Request::ReadOld { .. } => assert!(s.provide_old(vec![0; 1])),
                Request::Failed(f) => break f,
                Request::Done(_) => panic!("a short read cannot verify"),
                _ => {}
            }
        };
        assert!(
            matches!(got, Failure::ShortOld { .. } | Failure::Apply(_)),
            "{got:?}"
        );
        // Misuse is refused without changing anything.
        assert!(!s.feed(b"x"));
        assert!(!s.provide_old(Vec::new()));
    }
}
