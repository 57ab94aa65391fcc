//! The state machine behind [`Applier`].

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ops::Range;

use anypatch_format::{
    Codec, Extent, Hash, Header, Op, OpIter, Page, PageRef, Preamble, PreambleRepr, SegmentEntry,
    HASH_LEN, MAX_SEGMENT_LEN, PREAMBLE_LEN, SHORT_HASH_LEN, TRAILER_LEN,
};
use ruzstd::decoding::FrameDecoder;

use crate::checkpoint::{At, Checkpoint};
use crate::layout::frames::{reserve_exactly, sized};
use crate::layout::{read_header_section, read_page, read_trailer, Rules, Signer, Tally};
use crate::tree_hash::TreeHasher;
use crate::zstd::ZstdError;
use crate::ApplyError;
use buffers::hash_zeros;
use segment::{OpsIn, SegmentRun};

mod buffers;
mod layout;
mod ops;
mod resume;
mod segment;
mod signature;

/// Old bytes read per request while hashing the base or copying an extent.
const CHUNK: usize = 0x10_0000;
static ZEROS: [u8; 0x4000] = [0; 0x4000];

/// How the adapter wants the patch applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Length of the old file the adapter will read from.
    pub old_len: u64,
    /// Hash the whole old file and compare it with the header before the first
    /// write. Turn off only when the adapter has just verified the same file
    /// (the second pass of an in-place apply).
    pub verify_base: bool,
    /// Do not produce unchanged extents (`Copy` with delta 0): the target
    /// already holds them. The whole-new hash is then not computed.
    pub skip_unchanged: bool,
    /// Refuse a patch that reads old bytes before the start of the extent
    /// being produced, as an in-place apply would already have overwritten them.
    pub in_place: bool,
    /// Resume an interrupted in-place apply: new bytes before this offset are
    /// already written. Extents wholly before it are skipped (their payloads
    /// are still read and hashed); the whole-new hash is not computed. Must
    /// be a point where a previous run's [`Event::Write`] or [`Event::Zero`]
    /// ended, and is used together with `skip_unchanged`.
    pub resume_from: u64,
    /// Refuse a header whose `new_len` is above this, before any old byte is
    /// read ([`ApplyError::NewTooLarge`]). A patch declares its size and the
    /// work follows it (hashing 2^50 declared zero bytes takes days), so an
    /// adapter that applies patches from untrusted sources sets a limit its
    /// user can raise. Default: no limit (`u64::MAX`).
    pub max_new_len: u64,
    /// Hand out a zero extent that is hashed (see `skip_unchanged`) in
    /// [`Event::Zero`]s of at most this many bytes, each hashed just before
    /// it is returned, so that an adapter regains control (for progress, or
    /// to cancel) while a long zero run is hashed. Default: `u64::MAX`, one
    /// event per extent.
    pub zero_step: u64,
}

impl Config {
    /// Apply to a separate output, verifying the base: the safe default.
    pub fn new(old_len: u64) -> Self {
        Self {
            old_len,
            verify_base: true,
            skip_unchanged: false,
            in_place: false,
            resume_from: 0,
            max_new_len: u64::MAX,
            zero_step: u64::MAX,
        }
    }
}

/// What the adapter must do next. Returned by [`Applier::poll`].
#[derive(Debug)]
pub enum Event<'a> {
    /// Call [`Applier::feed`] with more patch bytes, or [`Applier::end_of_input`].
    NeedInput,
    /// The header is parsed and checked. Reported once, before any old read.
    Header(&'a Header),
    /// Fill all of `buf` with the old file's bytes at `offset`, then poll again.
    ReadOld { offset: u64, buf: &'a mut [u8] },
    /// Write `data` to the target at `offset`. The bytes are verified.
    Write { offset: u64, data: &'a [u8] },
    /// The target's `len` bytes at `offset` must read as zero. A fresh output
    /// file may skip this (leaving a hole); an in-place target must write them.
    Zero { offset: u64, len: u64 },
    /// The patch is applied and verified.
    Done(Summary),
}

impl core::fmt::Debug for Applier {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Applier")
            .field("state", &self.state)
            .field("new_pos", &self.new_pos)
            .field("progress", &self.progress)
            .finish_non_exhaustive()
    }
}

/// What a finished apply produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Length of the new file.
    pub new_len: u64,
    /// BLAKE3 of the new file, checked against the header; `None` when
    /// [`Config::skip_unchanged`] meant it was not computed.
    pub new_hash: Option<Hash>,
    /// BLAKE3 of the patch, checked against the trailer.
    pub patch_hash: Hash,
    /// Bytes handed out in [`Event::Write`]s.
    pub bytes_written: u64,
    /// Bytes announced in [`Event::Zero`]s.
    pub bytes_zeroed: u64,
}

/// How far the apply is, for progress displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Old bytes hashed so far while verifying the base.
    pub base_checked: u64,
    /// New bytes produced so far.
    pub new_done: u64,
    /// Patch bytes consumed so far.
    pub patch_consumed: u64,
}

#[derive(Debug)]
enum State {
    Preamble,
    HeaderBody(PreambleRepr),
    Signature,
    AnnounceHeader,
    VerifyBase {
        pos: u64,
        hasher: Box<blake3::Hasher>,
    },
    NextPage(PageRef),
    /// Resuming inside a page: the page is read again (not hashed into the
    /// patch hash again), and its extents from `extent` on are produced.
    RestorePage {
        page: PageRef,
        extent: u32,
        resume_at: u64,
    },
    Extent,
    Copy {
        dst: u64,
        src: u64,
        remaining: u64,
    },
    /// A hashed zero extent handed out in steps of `Config::zero_step`.
    Zero {
        offset: u64,
        remaining: u64,
    },
    Payload(SegmentEntry),
    /// A `ZstdPrefix` segment whose ops are checked and whose prefix (old
    /// bytes) is being read into `out`; its frame, at `frame_at` in `inbuf`,
    /// is decoded next.
    Prefix {
        entry: SegmentEntry,
        ops_in: OpsIn,
        data_needed: u64,
        frame_at: usize,
    },
    /// A data segment before the resume point: read and hash, do not run.
    SkipPayload(SegmentEntry),
    Segment(SegmentRun),
    Trailer,
    AwaitEof(Hash),
    Done,
    Failed(ApplyError),
}

/// What `step` asks the adapter to do; turned into an [`Event`] by `poll`.
enum Action {
    NeedInput,
    Header,
    ReadOld { offset: u64, range: Range<usize> },
    Write { offset: u64, range: Range<usize> },
    Zero { offset: u64, len: u64 },
    Done(Summary),
}

/// The apply engine. See the crate docs for the driving loop.
pub struct Applier {
    cfg: Config,
    state: State,
    input: Input,
    walk: Walk,
    hashes: Hashes,
    bufs: Buffers,
    trust: Trust,
    /// A checkpoint to go on from, once the header section is checked.
    resuming: Option<Box<Checkpoint>>,
    /// New bytes produced so far (where the next write starts).
    new_pos: u64,
    progress: Progress,
    written: u64,
    zeroed: u64,
    /// The index and full BLAKE3 of the segment whose output the last
    /// `Write` handed out; see [`Applier::written_segment`].
    written_segment: Option<(u64, Hash)>,
}

/// The patch section being buffered: header, page, payload or trailer.
#[derive(Debug, Default)]
struct Input {
    buf: Vec<u8>,
    /// Bytes the section needs.
    want: usize,
    /// The adapter said the patch has no more bytes.
    eof: bool,
}

/// Where the walk of the layout is (`crate::layout` does the checks).
#[derive(Debug, Default)]
struct Walk {
    header: Option<Header>,
    /// The feature bits, old length and in-place flag every check reads.
    rules: Rules,
    page: Option<Page>,
    /// The decoded content of the current page when pages are compact: it
    /// holds the inline ops the page's entries point into.
    page_content: Vec<u8>,
    /// The current page and its patch offset, for checkpoints.
    page_ref: Option<(u64, PageRef)>,
    extent_idx: usize,
    /// Pages read, extents and segments taken from them.
    tally: Tally,
}

/// The running hashes, and what a checkpoint pins of the header section.
#[derive(Debug, Default)]
struct Hashes {
    patch: Box<TreeHasher>,
    new: Option<Box<TreeHasher>>,
    /// The header hash, once the header section is read.
    header_hash: Hash,
    /// Bytes of the header section and signature block.
    section_len: u64,
}

/// What segments and copies decode into; each sized exactly, within the
/// format's limits.
#[derive(Default)]
struct Buffers {
    /// Old bytes, copy chunks, or a segment's output.
    out: Vec<u8>,
    /// A segment's decoded data block.
    data: Vec<u8>,
    /// A packed segment's decoded ops block.
    ops: Vec<u8>,
    /// The data history (format 1.3): the last decoded bytes, at most
    /// `MAX_HISTORY_LEN`, of the patch's codec 0x03 segments so far.
    history: Vec<u8>,
    /// Old bytes of the chunk in `out` that a `Copy` extent is about to write.
    copy_filled: Option<usize>,
    zstd: Option<Box<FrameDecoder>>,
}

/// Signatures: the keys required, and what the patch carries.
#[derive(Debug, Default)]
struct Trust {
    /// Public keys of which one must have signed the patch; empty: no requirement.
    keys: Vec<[u8; 32]>,
    /// The header section, kept until the signature block is checked.
    section: Vec<u8>,
    signers: Vec<Signer>,
}

impl Applier {
    /// A new engine. Nothing happens until [`Applier::poll`] is called.
    pub fn new(cfg: Config) -> Self {
        Self {
            cfg,
            state: State::Preamble,
            input: Input {
                want: PREAMBLE_LEN,
                ..Input::default()
            },
            walk: Walk {
                rules: Rules {
                    required_features: 0,
                    old_len: cfg.old_len,
                    in_place: cfg.in_place,
                },
                ..Walk::default()
            },
            hashes: Hashes {
                new: (!cfg.skip_unchanged && cfg.resume_from == 0).then(Box::default),
                ..Hashes::default()
            },
            bufs: Buffers::default(),
            trust: Trust::default(),
            resuming: None,
            new_pos: 0,
            progress: Progress::default(),
            written: 0,
            zeroed: 0,
            written_segment: None,
        }
    }

    /// Requires a valid Ed25519 signature by one of `trusted_keys` before the
    /// header is reported or any old byte is read. Call before the first
    /// [`Applier::poll`]. An empty list removes the requirement.
    pub fn require_signature(&mut self, trusted_keys: &[[u8; 32]]) {
        self.trust.keys = trusted_keys.to_vec();
    }

    /// The signatures found in the patch, once [`Event::Header`] has been
    /// reported: each with whether it verifies and whether its key is trusted.
    pub fn signers(&self) -> &[Signer] {
        &self.trust.signers
    }

    /// Gives the engine patch bytes. Call after [`Event::NeedInput`]. Returns
    /// how many bytes were taken: keep the rest and feed them again after the
    /// next `NeedInput`. Bytes fed after the trailer make the apply fail.
    pub fn feed(&mut self, input: &[u8]) -> usize {
        if let State::AwaitEof(_) = self.state {
            if !input.is_empty() {
                self.state = State::Failed(ApplyError::TrailingBytes);
            }
            return input.len();
        }
        if matches!(self.state, State::Done | State::Failed(_)) {
            return 0;
        }
        let n = self
            .input
            .want
            .saturating_sub(self.input.buf.len())
            .min(input.len());
        self.input.buf.extend_from_slice(&input[..n]);
        self.progress.patch_consumed += n as u64;
        n
    }

    /// Tells the engine the patch has no more bytes. Call after
    /// [`Event::NeedInput`] when the patch source is exhausted.
    pub fn end_of_input(&mut self) {
        self.input.eof = true;
    }

    /// The header, once [`Event::Header`] has been reported.
    pub fn header(&self) -> Option<&Header> {
        self.walk.header.as_ref()
    }

    /// Right after an [`Event::Write`] of a data segment's output, until the
    /// next [`Applier::poll`]: the segment's index (in patch order, from 0)
    /// and the full 256-bit BLAKE3 of its output; `None` after any other
    /// event. Compact pages pin only 128 bits of a segment's hash (spec
    /// section 7): an adapter that reads the patch twice records these in
    /// its first read and compares them in the second, before writing.
    pub fn written_segment(&self) -> Option<(u64, Hash)> {
        self.written_segment
    }

    /// How far the apply is. May be called at any time.
    pub fn progress(&self) -> Progress {
        Progress {
            new_done: self.new_pos,
            ..self.progress
        }
    }

    /// Advances the apply until the adapter has something to do. Call it
    /// again after doing what the returned [`Event`] asks. After an error,
    /// every call returns the same error.
    pub fn poll(&mut self) -> Result<Event<'_>, ApplyError> {
        self.written_segment = None;
        let action = match self.step() {
            Ok(a) => a,
            Err(e) => {
                self.state = State::Failed(e.clone());
                return Err(e);
            }
        };
        Ok(match action {
            Action::NeedInput => Event::NeedInput,
            Action::Header => Event::Header(
                self.walk
                    .header
                    .as_ref()
                    .expect("Header is announced after parsing"),
            ),
            Action::ReadOld { offset, range } => Event::ReadOld {
                offset,
                buf: &mut self.bufs.out[range],
            },
            Action::Write { offset, range } => Event::Write {
                offset,
                data: &self.bufs.out[range],
            },
            Action::Zero { offset, len } => Event::Zero { offset, len },
            Action::Done(s) => Event::Done(s),
        })
    }

    fn header_ref(&self) -> &Header {
        self.walk
            .header
            .as_ref()
            .expect("states after HeaderBody have a header")
    }

    /// Starts buffering a section of `len` patch bytes.
    fn expect_input(&mut self, state: State, len: usize) {
        reserve_exactly(&mut self.input.buf, len);
        self.input.buf.clear();
        self.input.want = len;
        self.state = state;
    }

    /// True when the current section is fully buffered.
    fn section_ready(&self, section: &'static str) -> Result<bool, ApplyError> {
        if self.input.buf.len() >= self.input.want {
            Ok(true)
        } else if self.input.eof {
            Err(ApplyError::Truncated { section })
        } else {
            Ok(false)
        }
    }

    fn step(&mut self) -> Result<Action, ApplyError> {
        loop {
            match core::mem::replace(&mut self.state, State::Done) {
                State::Failed(e) => {
                    self.state = State::Failed(e.clone());
                    return Err(e);
                }
                State::Done => return Err(ApplyError::TrailingBytes),
                State::Preamble => {
                    self.state = State::Preamble;
                    if !self.section_ready("preamble")? {
                        return Ok(Action::NeedInput);
                    }
                    let repr = PreambleRepr::parse(&Preamble::new_checked(&self.input.buf[..])?)?;
                    self.input.want = PREAMBLE_LEN + repr.header_len as usize + HASH_LEN;
                    self.state = State::HeaderBody(repr);
                }
                State::HeaderBody(repr) => {
                    self.state = State::HeaderBody(repr);
                    if !self.section_ready("header")? {
                        return Ok(Action::NeedInput);
                    }
                    // Hash first: a damaged version or feature field is damage.
                    let (repr, header) = read_header_section(&self.input.buf)?;
                    self.walk.rules.required_features = repr.required_features;
                    let end = self.input.buf.len();
                    self.hashes
                        .header_hash
                        .copy_from_slice(&self.input.buf[end - HASH_LEN..]);
                    match &self.resuming {
                        // Counted in the checkpoint's patch hash already.
                        Some(cp) if cp.header_hash != self.hashes.header_hash => {
                            return Err(ApplyError::CheckpointMismatch)
                        }
                        Some(_) => {}
                        None => self.hashes.patch.update(&self.input.buf),
                    }
                    self.walk.header = Some(header);
                    // Keep the header section: signatures are over it.
                    self.trust.section = core::mem::take(&mut self.input.buf);
                    self.expect_input(State::Signature, repr.signature_len as usize);
                }
                State::Signature => {
                    self.state = State::Signature;
                    if !self.section_ready("signature block")? {
                        return Ok(Action::NeedInput);
                    }
                    if self.resuming.is_none() {
                        self.hashes.patch.update(&self.input.buf);
                    }
                    self.hashes.section_len = self.progress.patch_consumed;
                    self.check_signatures()?;
                    self.input.buf.clear();
                    self.state = State::AnnounceHeader;
                    return Ok(Action::Header);
                }
                State::AnnounceHeader => {
                    let h = self.header_ref();
                    if h.new_len > self.cfg.max_new_len {
                        return Err(ApplyError::NewTooLarge {
                            got: h.new_len,
                            max: self.cfg.max_new_len,
                        });
                    }
                    if h.old_len != self.cfg.old_len {
                        return Err(ApplyError::BaseLength {
                            got: self.cfg.old_len,
                            expected: h.old_len,
                        });
                    }
                    let first = h.first_page;
                    if let Some(cp) = self.resuming.take() {
                        self.restore(*cp)?;
                    } else if self.cfg.verify_base {
                        self.state = State::VerifyBase {
                            pos: 0,
                            hasher: Box::new(blake3::Hasher::new()),
                        };
                    } else {
                        self.expect_input(State::NextPage(first), first.len as usize);
                    }
                }
                State::VerifyBase { pos, mut hasher } => {
                    // `pos` counts bytes already requested; the chunk before it is in `out`.
                    let hashed = self.progress.base_checked;
                    if hashed < pos {
                        hasher.update(&self.bufs.out[..(pos - hashed) as usize]);
                        self.progress.base_checked = pos;
                    }
                    let old_len = self.cfg.old_len;
                    if pos < old_len {
                        let n = (old_len - pos).min(CHUNK as u64) as usize;
                        if self.bufs.out.len() < n {
                            sized(&mut self.bufs.out, n);
                        }
                        self.state = State::VerifyBase {
                            pos: pos + n as u64,
                            hasher,
                        };
                        return Ok(Action::ReadOld {
                            offset: pos,
                            range: 0..n,
                        });
                    }
                    if *hasher.finalize().as_bytes() != self.header_ref().old_hash {
                        return Err(ApplyError::BaseHash);
                    }
                    let first = self.header_ref().first_page;
                    self.expect_input(State::NextPage(first), first.len as usize);
                }
                State::NextPage(r) => {
                    self.state = State::NextPage(r);
                    if !self.section_ready("manifest page")? {
                        return Ok(Action::NeedInput);
                    }
                    let page = self.read_page(&r, self.walk.tally.pages)?;
                    self.hashes.patch.update(&self.input.buf);
                    let page_at = self.progress.patch_consumed - self.input.buf.len() as u64;
                    self.walk.page_ref = Some((page_at, r));
                    self.walk.page = Some(page);
                    self.walk.tally.pages += 1;
                    self.walk.extent_idx = 0;
                    self.input.buf.clear();
                    self.state = State::Extent;
                }
                State::RestorePage {
                    page,
                    extent,
                    resume_at,
                } => {
                    self.state = State::RestorePage {
                        page,
                        extent,
                        resume_at,
                    };
                    if !self.section_ready("manifest page")? {
                        return Ok(Action::NeedInput);
                    }
                    // The chain pins the page: the checkpoint only says where it is.
                    let parsed = self.read_page(&page, self.walk.tally.pages.saturating_sub(1))?;
                    if extent as usize > parsed.extents.len() {
                        return Err(ApplyError::CheckpointMismatch);
                    }
                    self.walk.page = Some(parsed);
                    self.walk.extent_idx = extent as usize;
                    self.progress.patch_consumed = resume_at;
                    self.input.buf.clear();
                    self.state = State::Extent;
                }
                State::Extent => {
                    if let Some(action) = self.next_extent()? {
                        return Ok(action);
                    }
                }
                State::Copy {
                    dst,
                    src,
                    remaining,
                } => {
                    if let Some(n) = self.bufs.copy_filled.take() {
                        if let Some(h) = self.hashes.new.as_mut() {
                            h.update(&self.bufs.out[..n]);
                        }
                        self.written += n as u64;
                        self.state = State::Copy {
                            dst: dst + n as u64,
                            src: src + n as u64,
                            remaining,
                        };
                        return Ok(Action::Write {
                            offset: dst,
                            range: 0..n,
                        });
                    }
                    if remaining == 0 {
                        self.state = State::Extent;
                        continue;
                    }
                    let n = remaining.min(CHUNK as u64) as usize;
                    if self.bufs.out.len() < n {
                        sized(&mut self.bufs.out, n);
                    }
                    self.bufs.copy_filled = Some(n);
                    self.new_pos += n as u64;
                    self.state = State::Copy {
                        dst,
                        src,
                        remaining: remaining - n as u64,
                    };
                    return Ok(Action::ReadOld {
                        offset: src,
                        range: 0..n,
                    });
                }
                State::Zero { offset, remaining } => {
                    if remaining == 0 {
                        self.state = State::Extent;
                        continue;
                    }
                    let n = remaining.min(self.cfg.zero_step.max(1));
                    hash_zeros(self.hashes.new.as_deref_mut(), n);
                    self.new_pos += n;
                    self.state = State::Zero {
                        offset: offset + n,
                        remaining: remaining - n,
                    };
                    return Ok(Action::Zero { offset, len: n });
                }
                State::Payload(entry) => {
                    self.state = State::Payload(entry);
                    if !self.section_ready("data segment")? {
                        return Ok(Action::NeedInput);
                    }
                    self.hashes.patch.update(&self.input.buf);
                    let (codec, packed) = self.walk.rules.segment_codec(entry.codec)?;
                    let ops_in = if entry.inline_ops.is_some() {
                        OpsIn::Page
                    } else if packed {
                        self.unpack_ops(&entry)?;
                        OpsIn::Unpacked
                    } else {
                        OpsIn::Payload
                    };
                    let data_needed = self.check_ops(&entry, ops_in)?;
                    if codec == Codec::ZstdPrefix {
                        // The frame's history is old bytes: read them first.
                        let (offset, len, frame_at) = self.prefix_range(&entry)?;
                        sized(&mut self.bufs.out, len);
                        self.state = State::Prefix {
                            entry,
                            ops_in,
                            data_needed,
                            frame_at,
                        };
                        return Ok(Action::ReadOld {
                            offset,
                            range: 0..len,
                        });
                    }
                    let run = self.start_segment(entry, codec, ops_in, data_needed, None)?;
                    self.state = State::Segment(run);
                }
                State::Prefix {
                    entry,
                    ops_in,
                    data_needed,
                    frame_at,
                } => {
                    let prefix = core::mem::take(&mut self.bufs.out);
                    let run = self.start_segment(
                        entry,
                        Codec::ZstdPrefix,
                        ops_in,
                        data_needed,
                        Some((prefix, frame_at)),
                    )?;
                    self.state = State::Segment(run);
                }
                State::Segment(run) => {
                    if let Some(action) = self.run_segment(run)? {
                        return Ok(action);
                    }
                }
                State::SkipPayload(entry) => {
                    self.state = State::SkipPayload(entry);
                    if !self.section_ready("data segment")? {
                        return Ok(Action::NeedInput);
                    }
                    self.hashes.patch.update(&self.input.buf);
                    if self.walk.rules.segment_codec(entry.codec)?.0 == Codec::ZstdHistory {
                        // Later segments' history includes this one's data.
                        self.skip_history_frame(&entry)?;
                    }
                    self.input.buf.clear();
                    self.new_pos += u64::from(entry.new_len);
                    self.state = State::Extent;
                }
                State::Trailer => {
                    self.state = State::Trailer;
                    if !self.section_ready("trailer")? {
                        return Ok(Action::NeedInput);
                    }
                    let header = self
                        .walk
                        .header
                        .as_ref()
                        .expect("the trailer follows the header");
                    let patch_hash = read_trailer(
                        &self.input.buf,
                        self.hashes.patch.finalize(),
                        self.progress.patch_consumed,
                        header,
                    )?;
                    if let Some(h) = &self.hashes.new {
                        if h.finalize() != header.new_hash {
                            return Err(ApplyError::NewHash);
                        }
                    }
                    self.input.buf = Vec::new();
                    self.state = State::AwaitEof(patch_hash);
                }
                State::AwaitEof(patch_hash) => {
                    self.state = State::AwaitEof(patch_hash);
                    if !self.input.eof {
                        return Ok(Action::NeedInput);
                    }
                    self.state = State::Done;
                    // Release the buffers: the engine holds no memory once done.
                    self.bufs.out = Vec::new();
                    self.bufs.data = Vec::new();
                    self.bufs.ops = Vec::new();
                    self.bufs.history = Vec::new();
                    self.walk.page_content = Vec::new();
                    self.bufs.zstd = None;
                    let header = self.header_ref();
                    return Ok(Action::Done(Summary {
                        new_len: header.new_len,
                        new_hash: self.hashes.new.as_ref().map(|_| header.new_hash),
                        patch_hash,
                        bytes_written: self.written,
                        bytes_zeroed: self.zeroed,
                    }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
