//! The state machine behind [`Applier`].

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ops::Range;

use anypatch_format::{
    key_id, parse_header_section, Codec, Extent, FormatError, Hash, Header, Op, OpIter, Page,
    PageRef, Preamble, PreambleRepr, PrefixRef, SegmentEntry, SignatureBlock, Trailer,
    FEATURE_COMPACT_PAGES, FEATURE_DATA_HISTORY, FEATURE_OLD_PREFIX, FEATURE_PACKED_OPS, HASH_LEN,
    MAX_HISTORY_LEN, MAX_OPS_LEN, MAX_PAGE_LEN, MAX_SEGMENT_LEN, PREAMBLE_LEN, SHORT_HASH_LEN,
    SIG_ALG_ED25519, TRAILER_LEN,
};
use ruzstd::decoding::FrameDecoder;

use crate::checkpoint::{At, Checkpoint};
use crate::tree_hash::TreeHasher;
use crate::zstd::ZstdError;
use crate::ApplyError;

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

/// A data segment being executed, op by op.
#[derive(Debug)]
struct SegmentRun {
    entry: SegmentEntry,
    start: u64,
    /// The ops not yet run: a range of the buffer `ops_in` names.
    ops: Range<usize>,
    ops_in: OpsIn,
    data_in_inbuf: Option<usize>,
    out_pos: usize,
    data_pos: usize,
    /// A `Delta` op whose old bytes were just read into `out[range]`.
    delta_pending: Option<Range<usize>>,
}

/// Which buffer holds a segment's ops block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpsIn {
    /// The start of the buffered payload, `inbuf`.
    Payload,
    /// `ops`: the payload's packed frame, decoded.
    Unpacked,
    /// `page_content`: inline in a compact page.
    Page,
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
    /// The section being buffered: header, page, payload or trailer.
    inbuf: Vec<u8>,
    want: usize,
    eof: bool,
    header: Option<Header>,
    /// The preamble's must-understand feature bits.
    required_features: u32,
    page: Option<Page>,
    /// The decoded content of the current page when pages are compact: it
    /// holds the inline ops the page's entries point into.
    page_content: Vec<u8>,
    extent_idx: usize,
    page_no: u64,
    extents_seen: u64,
    segments_seen: u64,
    new_pos: u64,
    patch_hasher: Box<TreeHasher>,
    new_hasher: Option<Box<TreeHasher>>,
    /// The header hash, once the header section is read.
    header_hash: Hash,
    /// Bytes of the header section and signature block.
    header_section_len: u64,
    /// The current page and its patch offset, for checkpoints.
    page_ref: Option<(u64, PageRef)>,
    /// A checkpoint to go on from, once the header section is checked.
    resuming: Option<Box<Checkpoint>>,
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
    progress: Progress,
    written: u64,
    zeroed: u64,
    /// Public keys of which one must have signed the patch; empty: no requirement.
    trusted_keys: Vec<[u8; 32]>,
    /// The header section, kept until the signature block is checked.
    header_section: Vec<u8>,
    signers: Vec<Signer>,
    /// The index and full BLAKE3 of the segment whose output the last
    /// `Write` handed out; see [`Applier::written_segment`].
    written_segment: Option<(u64, Hash)>,
}

/// One signature found in the patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signer {
    /// The signer's Ed25519 public key.
    pub public_key: [u8; 32],
    /// Its short id: the first 8 bytes of its BLAKE3.
    pub key_id: [u8; 8],
    /// The signature verifies over the header section.
    pub valid: bool,
    /// The key is one of the trusted keys given to [`Applier::require_signature`].
    pub trusted: bool,
}

impl Applier {
    /// A new engine. Nothing happens until [`Applier::poll`] is called.
    pub fn new(cfg: Config) -> Self {
        Self {
            cfg,
            state: State::Preamble,
            inbuf: Vec::new(),
            want: PREAMBLE_LEN,
            eof: false,
            header: None,
            required_features: 0,
            page: None,
            page_content: Vec::new(),
            extent_idx: 0,
            page_no: 0,
            extents_seen: 0,
            segments_seen: 0,
            new_pos: 0,
            patch_hasher: Box::default(),
            new_hasher: (!cfg.skip_unchanged && cfg.resume_from == 0).then(Box::default),
            header_hash: [0; 32],
            header_section_len: 0,
            page_ref: None,
            resuming: None,
            out: Vec::new(),
            data: Vec::new(),
            ops: Vec::new(),
            history: Vec::new(),
            copy_filled: None,
            zstd: None,
            progress: Progress::default(),
            written: 0,
            zeroed: 0,
            trusted_keys: Vec::new(),
            header_section: Vec::new(),
            signers: Vec::new(),
            written_segment: None,
        }
    }

    /// Requires a valid Ed25519 signature by one of `trusted_keys` before the
    /// header is reported or any old byte is read. Call before the first
    /// [`Applier::poll`]. An empty list removes the requirement.
    pub fn require_signature(&mut self, trusted_keys: &[[u8; 32]]) {
        self.trusted_keys = trusted_keys.to_vec();
    }

    /// The signatures found in the patch, once [`Event::Header`] has been
    /// reported: each with whether it verifies and whether its key is trusted.
    pub fn signers(&self) -> &[Signer] {
        &self.signers
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
        let n = self.want.saturating_sub(self.inbuf.len()).min(input.len());
        self.inbuf.extend_from_slice(&input[..n]);
        self.progress.patch_consumed += n as u64;
        n
    }

    /// Tells the engine the patch has no more bytes. Call after
    /// [`Event::NeedInput`] when the patch source is exhausted.
    pub fn end_of_input(&mut self) {
        self.eof = true;
    }

    /// The header, once [`Event::Header`] has been reported.
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
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

    /// A new engine that goes on from `checkpoint` (spec section 6.4). Feed
    /// it the ranges of [`Checkpoint::feed_plan`], in order. It checks the
    /// header section again (and the signature, with
    /// [`Applier::require_signature`]), reports [`Event::Header`] again,
    /// does not hash the base again, re-reads the current page against the
    /// page chain, and then runs every check an uninterrupted apply would,
    /// the whole-patch and whole-new hashes included. A checkpoint of
    /// another patch, or one that does not fit it, is
    /// [`ApplyError::CheckpointMismatch`]. `cfg` must not resume in place
    /// (`resume_from` 0).
    pub fn resume(cfg: Config, checkpoint: Checkpoint) -> Self {
        let mut a = Self::new(cfg);
        a.resuming = Some(Box::new(checkpoint));
        a
    }

    /// Where the apply stands, if it is at a boundary (before a page, or
    /// before a data segment's payload, possibly partly fed): a checkpoint
    /// to resume from with [`Applier::resume`]. Take it only when every
    /// event so far has been carried out; `None` elsewhere (inside a copy,
    /// a zero run or a segment), before the header, and in an in-place
    /// resume. Costs a copy of the data history (up to 4 MiB) when the
    /// patch uses one.
    pub fn checkpoint(&mut self) -> Option<Checkpoint> {
        if self.cfg.resume_from != 0 || self.resuming.is_some() || self.header_section_len == 0 {
            return None;
        }
        let consumed = self.progress.patch_consumed;
        let (at, resume_at, back) = match &self.state {
            State::NextPage(r) => (
                At::PageStart { page: *r },
                consumed - self.inbuf.len() as u64,
                0,
            ),
            State::Extent | State::Payload(_) => {
                // A payload's extent was taken from the page already.
                let back = u64::from(matches!(self.state, State::Payload(_)));
                if back == 0 && !self.inbuf.is_empty() {
                    return None;
                }
                let (page_at, page) = self.page_ref?;
                let at = At::InPage {
                    page_at,
                    page,
                    extent: u32::try_from(self.extent_idx as u64 - back).ok()?,
                };
                (at, consumed - self.inbuf.len() as u64, back)
            }
            _ => return None,
        };
        Some(Checkpoint {
            header_hash: self.header_hash,
            header_section_len: self.header_section_len,
            resume_at,
            new_pos: self.new_pos,
            at,
            pages_seen: self.page_no,
            extents_seen: self.extents_seen - back,
            segments_seen: self.segments_seen - back,
            written: self.written,
            zeroed: self.zeroed,
            patch_hash: self.patch_hasher.save(),
            new_hash: self.new_hasher.as_mut().map(|h| h.save()),
            history: self.history.clone(),
        })
    }

    /// Takes up `cp` once the header section has been checked against it.
    fn restore(&mut self, cp: Checkpoint) -> Result<(), ApplyError> {
        if cp.header_section_len != self.header_section_len
            || self.new_hasher.is_some() != cp.new_hash.is_some()
            || cp.new_pos > self.header_ref().new_len
        {
            return Err(ApplyError::CheckpointMismatch);
        }
        let bad = |_| ApplyError::CheckpointMismatch;
        *self.patch_hasher = TreeHasher::restore(&cp.patch_hash).map_err(bad)?;
        if let Some(h) = &cp.new_hash {
            self.new_hasher = Some(Box::new(TreeHasher::restore(h).map_err(bad)?));
        }
        self.history = cp.history;
        self.new_pos = cp.new_pos;
        self.page_no = cp.pages_seen;
        self.extents_seen = cp.extents_seen;
        self.segments_seen = cp.segments_seen;
        self.written = cp.written;
        self.zeroed = cp.zeroed;
        match cp.at {
            At::InPage {
                page_at,
                page,
                extent,
            } => {
                self.page_ref = Some((page_at, page));
                self.expect_input(
                    State::RestorePage {
                        page,
                        extent,
                        resume_at: cp.resume_at,
                    },
                    page.len as usize,
                );
            }
            At::PageStart { page } => {
                self.progress.patch_consumed = cp.resume_at;
                self.expect_input(State::NextPage(page), page.len as usize);
            }
        }
        Ok(())
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
                self.header
                    .as_ref()
                    .expect("Header is announced after parsing"),
            ),
            Action::ReadOld { offset, range } => Event::ReadOld {
                offset,
                buf: &mut self.out[range],
            },
            Action::Write { offset, range } => Event::Write {
                offset,
                data: &self.out[range],
            },
            Action::Zero { offset, len } => Event::Zero { offset, len },
            Action::Done(s) => Event::Done(s),
        })
    }

    fn header_ref(&self) -> &Header {
        self.header
            .as_ref()
            .expect("states after HeaderBody have a header")
    }

    /// Starts buffering a section of `len` patch bytes.
    fn expect_input(&mut self, state: State, len: usize) {
        reserve_exactly(&mut self.inbuf, len);
        self.inbuf.clear();
        self.want = len;
        self.state = state;
    }

    /// True when the current section is fully buffered.
    fn section_ready(&self, section: &'static str) -> Result<bool, ApplyError> {
        if self.inbuf.len() >= self.want {
            Ok(true)
        } else if self.eof {
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
                    let repr = PreambleRepr::parse(&Preamble::new_checked(&self.inbuf[..])?)?;
                    self.want = PREAMBLE_LEN + repr.header_len as usize + HASH_LEN;
                    self.state = State::HeaderBody(repr);
                }
                State::HeaderBody(repr) => {
                    self.state = State::HeaderBody(repr);
                    if !self.section_ready("header")? {
                        return Ok(Action::NeedInput);
                    }
                    // Hash first: a damaged version or feature field is damage.
                    let (repr, header) = parse_header_section(&self.inbuf)?;
                    self.required_features = repr.required_features;
                    self.check_codec_feature(header.codec, "codec")?;
                    let end = self.inbuf.len();
                    self.header_hash
                        .copy_from_slice(&self.inbuf[end - HASH_LEN..]);
                    match &self.resuming {
                        // Counted in the checkpoint's patch hash already.
                        Some(cp) if cp.header_hash != self.header_hash => {
                            return Err(ApplyError::CheckpointMismatch)
                        }
                        Some(_) => {}
                        None => self.patch_hasher.update(&self.inbuf),
                    }
                    self.header = Some(header);
                    // Keep the header section: signatures are over it.
                    self.header_section = core::mem::take(&mut self.inbuf);
                    self.expect_input(State::Signature, repr.signature_len as usize);
                }
                State::Signature => {
                    self.state = State::Signature;
                    if !self.section_ready("signature block")? {
                        return Ok(Action::NeedInput);
                    }
                    if self.resuming.is_none() {
                        self.patch_hasher.update(&self.inbuf);
                    }
                    self.header_section_len = self.progress.patch_consumed;
                    self.check_signatures()?;
                    self.inbuf.clear();
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
                        hasher.update(&self.out[..(pos - hashed) as usize]);
                        self.progress.base_checked = pos;
                    }
                    let old_len = self.cfg.old_len;
                    if pos < old_len {
                        let n = (old_len - pos).min(CHUNK as u64) as usize;
                        if self.out.len() < n {
                            sized(&mut self.out, n);
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
                    if *blake3::hash(&self.inbuf).as_bytes() != r.hash {
                        return Err(ApplyError::PageHash { page: self.page_no });
                    }
                    self.patch_hasher.update(&self.inbuf);
                    let page_at = self.progress.patch_consumed - self.inbuf.len() as u64;
                    self.page_ref = Some((page_at, r));
                    self.page = Some(if self.compact_pages() {
                        self.unpack_page()?;
                        Page::parse_compact(&self.page_content)?
                    } else {
                        Page::parse(&self.inbuf)?
                    });
                    self.page_no += 1;
                    self.extent_idx = 0;
                    self.inbuf.clear();
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
                    if *blake3::hash(&self.inbuf).as_bytes() != page.hash {
                        return Err(ApplyError::PageHash {
                            page: self.page_no.saturating_sub(1),
                        });
                    }
                    let parsed = if self.compact_pages() {
                        self.unpack_page()?;
                        Page::parse_compact(&self.page_content)?
                    } else {
                        Page::parse(&self.inbuf)?
                    };
                    if extent as usize > parsed.extents.len() {
                        return Err(ApplyError::CheckpointMismatch);
                    }
                    self.page = Some(parsed);
                    self.extent_idx = extent as usize;
                    self.progress.patch_consumed = resume_at;
                    self.inbuf.clear();
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
                    if let Some(n) = self.copy_filled.take() {
                        if let Some(h) = self.new_hasher.as_mut() {
                            h.update(&self.out[..n]);
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
                    if self.out.len() < n {
                        sized(&mut self.out, n);
                    }
                    self.copy_filled = Some(n);
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
                    hash_zeros(self.new_hasher.as_deref_mut(), n);
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
                    self.patch_hasher.update(&self.inbuf);
                    let (codec, packed) = self.segment_codec(entry.codec)?;
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
                        sized(&mut self.out, len);
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
                    let prefix = core::mem::take(&mut self.out);
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
                    self.patch_hasher.update(&self.inbuf);
                    if self.segment_codec(entry.codec)?.0 == Codec::ZstdHistory {
                        // Later segments' history includes this one's data.
                        self.skip_history_frame(&entry)?;
                    }
                    self.inbuf.clear();
                    self.new_pos += u64::from(entry.new_len);
                    self.state = State::Extent;
                }
                State::Trailer => {
                    self.state = State::Trailer;
                    if !self.section_ready("trailer")? {
                        return Ok(Action::NeedInput);
                    }
                    let trailer = Trailer::parse(&self.inbuf)?;
                    let patch_hash = self.patch_hasher.finalize();
                    if trailer.patch_hash != patch_hash {
                        return Err(ApplyError::PatchHash);
                    }
                    let header = self.header_ref();
                    if self.progress.patch_consumed != header.patch_len {
                        return Err(ApplyError::LengthMismatch {
                            field: "patch_len",
                            got: self.progress.patch_consumed,
                            expected: header.patch_len,
                        });
                    }
                    if let Some(h) = &self.new_hasher {
                        if h.finalize() != header.new_hash {
                            return Err(ApplyError::NewHash);
                        }
                    }
                    self.inbuf = Vec::new();
                    self.state = State::AwaitEof(patch_hash);
                }
                State::AwaitEof(patch_hash) => {
                    self.state = State::AwaitEof(patch_hash);
                    if !self.eof {
                        return Ok(Action::NeedInput);
                    }
                    self.state = State::Done;
                    // Release the buffers: the engine holds no memory once done.
                    self.out = Vec::new();
                    self.data = Vec::new();
                    self.ops = Vec::new();
                    self.history = Vec::new();
                    self.page_content = Vec::new();
                    self.zstd = None;
                    let header = self.header_ref();
                    return Ok(Action::Done(Summary {
                        new_len: header.new_len,
                        new_hash: self.new_hasher.as_ref().map(|_| header.new_hash),
                        patch_hash,
                        bytes_written: self.written,
                        bytes_zeroed: self.zeroed,
                    }));
                }
            }
        }
    }

    /// Verifies every signature in the buffered signature block over the
    /// header section and, when trusted keys were given, requires one of them.
    fn check_signatures(&mut self) -> Result<(), ApplyError> {
        let block = SignatureBlock::parse(&self.inbuf)?;
        let section = core::mem::take(&mut self.header_section);
        self.signers = block
            .entries
            .iter()
            .map(|e| Signer {
                public_key: e.public_key,
                key_id: key_id(&e.public_key),
                valid: e.verifies(&section),
                trusted: self.trusted_keys.contains(&e.public_key),
            })
            .collect();
        // A known algorithm's signature that fails means the patch was
        // altered after signing: refused, trusted keys or not. An entry of an
        // algorithm this applier does not know is only not counted (3.4).
        if let Some(bad) = block
            .entries
            .iter()
            .zip(&self.signers)
            .find(|(e, s)| e.algorithm == SIG_ALG_ED25519 && !s.valid)
        {
            return Err(ApplyError::BadSignature {
                key_id: bad.1.key_id,
            });
        }
        if self.trusted_keys.is_empty() || self.signers.iter().any(|s| s.valid && s.trusted) {
            return Ok(());
        }
        Err(
            match self
                .signers
                .iter()
                .find(|s| s.trusted)
                .or(self.signers.first())
            {
                None => ApplyError::Unsigned,
                Some(s) if s.trusted => ApplyError::BadSignature { key_id: s.key_id },
                Some(s) => ApplyError::UntrustedSigner { key_id: s.key_id },
            },
        )
    }

    /// Dispatches the next extent of the current page, or moves to the next
    /// page or the trailer. Returns an action when the adapter must act.
    fn next_extent(&mut self) -> Result<Option<Action>, ApplyError> {
        let page = self
            .page
            .as_ref()
            .expect("Extent state follows a parsed page");
        let Some(&extent) = page.extents.get(self.extent_idx) else {
            match page.next {
                Some(r) => self.expect_input(State::NextPage(r), r.len as usize),
                None => self.finish_extents()?,
            }
            return Ok(None);
        };
        self.extent_idx += 1;
        self.extents_seen += 1;
        let header = self.header_ref();
        let start = self.new_pos;
        let len = extent.len();
        if start
            .checked_add(len)
            .is_none_or(|end| end > header.new_len)
        {
            return Err(ApplyError::LengthMismatch {
                field: "sum of extent lengths",
                got: start.saturating_add(len),
                expected: header.new_len,
            });
        }
        // Resuming: what ends before the resume point is already written.
        let resume = self.cfg.resume_from;
        if start + len <= resume && resume > 0 {
            if let Extent::Data(entry) = extent {
                self.segments_seen += 1;
                let n = usize::try_from(entry.payload_len()).expect("payload is capped at 5 MiB");
                self.expect_input(State::SkipPayload(entry), n);
            } else {
                self.new_pos += len;
                self.state = State::Extent;
            }
            return Ok(None);
        }
        let done = resume.saturating_sub(start); // > 0 only for the extent the resume point is in
        match extent {
            Extent::Copy { len, delta } if done > 0 => {
                let src = self.source(start, delta, len, start)?;
                if delta == 0 && self.cfg.skip_unchanged {
                    self.new_pos += len;
                    self.state = State::Extent;
                    return Ok(None);
                }
                self.new_pos += done;
                self.state = State::Copy {
                    dst: start + done,
                    src: src + done,
                    remaining: len - done,
                };
                Ok(None)
            }
            Extent::Zero { len } if done > 0 => {
                self.new_pos += len;
                self.zeroed += len - done;
                self.state = State::Extent;
                Ok(Some(Action::Zero {
                    offset: start + done,
                    len: len - done,
                }))
            }
            Extent::Copy { len, delta } => {
                let src = self.source(start, delta, len, start)?;
                if delta == 0 && self.cfg.skip_unchanged {
                    self.new_pos += len;
                    self.state = State::Extent;
                } else {
                    self.state = State::Copy {
                        dst: start,
                        src,
                        remaining: len,
                    };
                }
                Ok(None)
            }
            Extent::Zero { len } => {
                self.zeroed += len;
                if self.new_hasher.is_some() && len > self.cfg.zero_step {
                    // Hashed in steps, each returned to the adapter.
                    self.state = State::Zero {
                        offset: start,
                        remaining: len,
                    };
                    return Ok(None);
                }
                hash_zeros(self.new_hasher.as_deref_mut(), len);
                self.new_pos += len;
                self.state = State::Extent;
                Ok(Some(Action::Zero { offset: start, len }))
            }
            Extent::Data(entry) => {
                if entry.new_len > header.segment_max {
                    return Err(ApplyError::LengthMismatch {
                        field: "segment.new_len above segment_max",
                        got: entry.new_len.into(),
                        expected: header.segment_max.into(),
                    });
                }
                self.segments_seen += 1;
                let len = usize::try_from(entry.payload_len()).expect("payload is capped at 5 MiB");
                self.expect_input(State::Payload(entry), len);
                Ok(None)
            }
        }
    }

    /// Checks the totals once the last page is done.
    fn finish_extents(&mut self) -> Result<(), ApplyError> {
        let h = self.header_ref();
        let checks = [
            ("sum of extent lengths", self.new_pos, h.new_len),
            ("extent_count", self.extents_seen, h.extent_count),
            ("segment_count", self.segments_seen, h.segment_count),
        ];
        for (field, got, expected) in checks {
            if got != expected {
                return Err(ApplyError::LengthMismatch {
                    field,
                    got,
                    expected,
                });
            }
        }
        self.page = None;
        self.expect_input(State::Trailer, TRAILER_LEN);
        Ok(())
    }

    /// The old offset `new_offset + delta`, checked to lie in the old file and,
    /// for in-place applies, at or after `floor` (the extent's start).
    fn source(&self, new_offset: u64, delta: i64, len: u64, floor: u64) -> Result<u64, ApplyError> {
        let source = i128::from(new_offset) + i128::from(delta);
        let old_len = self.cfg.old_len;
        if source < 0 || source + i128::from(len) > i128::from(old_len) {
            return Err(ApplyError::SourceOutOfRange {
                new_offset,
                source,
                len,
                old_len,
            });
        }
        let source = source as u64; // in 0..=old_len, checked above
        if self.cfg.in_place && source < floor {
            return Err(ApplyError::NotInPlaceSafe { new_offset, source });
        }
        Ok(source)
    }

    /// Refuses codec 0x02 in a patch whose preamble lacks `FEATURE_OLD_PREFIX`,
    /// and codec 0x03 in one that lacks `FEATURE_DATA_HISTORY`.
    fn check_codec_feature(&self, codec: u8, field: &'static str) -> Result<(), ApplyError> {
        if codec == Codec::ZstdPrefix as u8 && self.required_features & FEATURE_OLD_PREFIX == 0 {
            return Err(FormatError::Invalid {
                field,
                reason: "is 0x02 (zstd with an old prefix), but required_features lacks FEATURE_OLD_PREFIX (0x1)",
            }
            .into());
        }
        if codec == Codec::ZstdHistory as u8 && self.required_features & FEATURE_DATA_HISTORY == 0 {
            return Err(FormatError::Invalid {
                field,
                reason: "is 0x03 (zstd with the data history), but required_features lacks FEATURE_DATA_HISTORY (0x8)",
            }
            .into());
        }
        Ok(())
    }

    /// Decodes a codec 0x03 frame of `n` bytes into `data`, with the last
    /// `MAX_HISTORY_LEN - n` bytes of the data history as its prefix, then
    /// appends the bytes to the history. The frame must declare `n`.
    fn decode_with_history(&mut self, frame: Range<usize>, n: usize) -> Result<(), ApplyError> {
        let segment = self.segments_seen - 1;
        let keep = self.history.len().min(MAX_HISTORY_LEN as usize - n);
        // The prefix goes to the decoder in `out`'s buffer, as for codec
        // 0x02: the decoder copies it, and `out` is sized anew afterwards.
        let mut prefix = core::mem::take(&mut self.out);
        reserve_exactly(&mut prefix, keep);
        prefix.clear();
        prefix.extend_from_slice(&self.history[self.history.len() - keep..]);
        sized(&mut self.data, n);
        // A fresh decoder, dropped after this frame, as for codec 0x02.
        self.zstd = None;
        let mut dec = FrameDecoder::new();
        crate::zstd::decode_sized_frame(
            &mut dec,
            &self.inbuf[frame],
            &mut self.data,
            (keep > 0).then_some(prefix),
        )
        .map_err(|why| ApplyError::Decode { segment, why })?;
        drop(dec); // its window and prefix copy, before the history grows
        self.push_history();
        Ok(())
    }

    /// Appends the decoded data in `data` to the history, keeping its last
    /// `MAX_HISTORY_LEN` bytes in a buffer that grows (by doubling) only as
    /// far as the history does, and never past that.
    fn push_history(&mut self) {
        let max = MAX_HISTORY_LEN as usize;
        let n = self.data.len(); // at most MAX_SEGMENT_LEN = MAX_HISTORY_LEN
        let excess = (self.history.len() + n).saturating_sub(max);
        self.history.drain(..excess);
        let need = self.history.len() + n;
        if self.history.capacity() < need {
            let want = need.max(2 * self.history.capacity()).min(max);
            self.history.reserve_exact(want - self.history.len());
        }
        self.history.extend_from_slice(&self.data);
    }

    /// A codec 0x03 segment before the resume point: decodes its frame only
    /// to extend the history, taking its size from the frame's header.
    fn skip_history_frame(&mut self, entry: &SegmentEntry) -> Result<(), ApplyError> {
        let segment = self.segments_seen - 1;
        let ops_len = entry.payload_ops_len() as usize;
        let n = crate::zstd::declared_size(&self.inbuf[ops_len..])
            .filter(|&n| (1..=u64::from(MAX_SEGMENT_LEN)).contains(&n))
            .ok_or(ApplyError::Decode {
                segment,
                why: ZstdError::NoContentSize,
            })?;
        self.decode_with_history(ops_len..self.inbuf.len(), n as usize) // n <= 4 MiB
    }

    /// A segment entry's data codec and whether its ops are packed, from
    /// its codec byte. Refuses codec 0x02 without `FEATURE_OLD_PREFIX` and
    /// packed ops without `FEATURE_PACKED_OPS`, as a corrupt patch: the bits
    /// are what tells an older applier that it cannot read the patch.
    fn segment_codec(&self, byte: u8) -> Result<(Codec, bool), ApplyError> {
        let (codec, packed) = Codec::split(byte)?;
        self.check_codec_feature(codec as u8, "segment.codec")?;
        if packed && self.required_features & FEATURE_PACKED_OPS == 0 {
            return Err(FormatError::Invalid {
                field: "segment.codec",
                reason: "has bit 0x80 (packed ops), but required_features lacks FEATURE_PACKED_OPS (0x2)",
            }
            .into());
        }
        Ok((codec, packed))
    }

    /// Decodes a packed segment's ops block, the one zstd frame that is the
    /// first `ops_len` bytes of its buffered payload, into `ops`. The frame
    /// must declare its content size, 1..=`MAX_OPS_LEN`, which is checked
    /// before `ops` is sized to it; its window is capped like a data frame's.
    fn unpack_ops(&mut self, entry: &SegmentEntry) -> Result<(), ApplyError> {
        let segment = self.segments_seen - 1;
        let dec = self
            .zstd
            .get_or_insert_with(|| Box::new(FrameDecoder::new()));
        unpack_sized(
            dec,
            &self.inbuf[..entry.ops_len as usize],
            &mut self.ops,
            SizedFrame {
                field: "packed ops frame",
                reason: "declares no content size, or 0; it must declare the ops block's length",
                size_field: "packed ops content size",
                max: MAX_OPS_LEN,
                corrupt: Box::new(move |why| ApplyError::Decode { segment, why }),
            },
        )
    }

    /// A buffered segment's ops block, from the buffer `ops_in` names.
    fn ops_block(&self, entry: &SegmentEntry, ops_in: OpsIn) -> &[u8] {
        match ops_in {
            OpsIn::Payload => &self.inbuf[..entry.ops_len as usize],
            OpsIn::Unpacked => &self.ops,
            OpsIn::Page => {
                let at = entry.inline_ops.expect("inline ops have an offset") as usize;
                // In the page: Page::parse_compact checked the range.
                &self.page_content[at..at + entry.ops_len as usize]
            }
        }
    }

    /// Whether the patch's pages are compact (format 1.2).
    fn compact_pages(&self) -> bool {
        self.required_features & FEATURE_COMPACT_PAGES != 0
    }

    /// Decodes a compact page, the one zstd frame buffered in `inbuf`, into
    /// `page_content`. The frame must declare its content size,
    /// 1..=`MAX_PAGE_LEN`, which is checked before the buffer is sized.
    fn unpack_page(&mut self) -> Result<(), ApplyError> {
        let page = self.page_no;
        let dec = self
            .zstd
            .get_or_insert_with(|| Box::new(FrameDecoder::new()));
        unpack_sized(
            dec,
            &self.inbuf,
            &mut self.page_content,
            SizedFrame {
                field: "compact page frame",
                reason: "declares no content size, or 0; it must declare the page's decoded length",
                size_field: "page content size",
                max: MAX_PAGE_LEN,
                corrupt: Box::new(move |why| ApplyError::PageDecode { page, why }),
            },
        )
    }

    /// Checks a buffered payload's ops: every length and source, before any
    /// read. Returns how many data bytes they take.
    fn check_ops(&self, entry: &SegmentEntry, ops_in: OpsIn) -> Result<u64, ApplyError> {
        let start = self.new_pos;
        // One pass over the ops checks every length and source before any read.
        let (mut produced, mut data_needed) = (0u64, 0u64);
        for op in OpIter::new(self.ops_block(entry, ops_in)) {
            let op = op?;
            let at = start + produced;
            if let Op::Copy { len, delta } | Op::Delta { len, delta } = op {
                self.source(at, delta, len.into(), start)?;
            }
            produced += u64::from(op.len());
            data_needed += u64::from(op.data_len());
            if produced > entry.new_len.into() {
                break;
            }
        }
        if produced != u64::from(entry.new_len) {
            return Err(ApplyError::LengthMismatch {
                field: "sum of op lengths",
                got: produced,
                expected: entry.new_len.into(),
            });
        }
        Ok(data_needed)
    }

    /// A `ZstdPrefix` segment's prefix: its old offset and length, checked
    /// like an op source (in the old file and, in place, at or after the
    /// segment's start), and where its frame starts in `inbuf`.
    fn prefix_range(&self, entry: &SegmentEntry) -> Result<(u64, usize, usize), ApplyError> {
        let ops_len = entry.payload_ops_len() as usize;
        let block = &self.inbuf[ops_len..];
        let (prefix, frame) = PrefixRef::parse(block)?;
        let start = self.new_pos;
        let offset = self.source(start, prefix.delta, prefix.len.into(), start)?;
        let frame_at = self.inbuf.len() - frame.len();
        Ok((offset, prefix.len as usize, frame_at)) // len is at most MAX_PREFIX_LEN
    }

    /// Decodes a checked payload's data block; for `ZstdPrefix`, `prefix`
    /// holds the old bytes just read and where the frame starts.
    fn start_segment(
        &mut self,
        entry: SegmentEntry,
        codec: Codec,
        ops_in: OpsIn,
        data_needed: u64,
        prefix: Option<(Vec<u8>, usize)>,
    ) -> Result<SegmentRun, ApplyError> {
        let segment = self.segments_seen - 1;
        let start = self.new_pos;
        let ops_len = entry.payload_ops_len() as usize; // 0 when inline
        let data_block = &self.inbuf[ops_len..];
        let data_in_inbuf = match codec {
            Codec::Stored => {
                if data_block.len() as u64 != data_needed {
                    return Err(ApplyError::LengthMismatch {
                        field: "stored data_len",
                        got: data_block.len() as u64,
                        expected: data_needed,
                    });
                }
                Some(ops_len)
            }
            Codec::Zstd => {
                let needed = data_needed as usize; // at most new_len, capped at 4 MiB
                sized(&mut self.data, needed);
                let dec = self
                    .zstd
                    .get_or_insert_with(|| Box::new(FrameDecoder::new()));
                crate::zstd::decode_frame(dec, data_block, &mut self.data, None)
                    .map_err(|why| ApplyError::Decode { segment, why })?;
                None
            }
            Codec::ZstdHistory => {
                if data_needed == 0 {
                    // Spec 3.8.1: a frame whose segment takes no data is refused.
                    return Err(ApplyError::Decode {
                        segment,
                        why: ZstdError::Length { expected: 0 },
                    });
                }
                self.decode_with_history(ops_len..self.inbuf.len(), data_needed as usize)?;
                None
            }
            Codec::ZstdPrefix => {
                let (prefix, frame_at) =
                    prefix.expect("a ZstdPrefix segment reads its prefix before it starts");
                sized(&mut self.data, data_needed as usize); // at most new_len, capped at 4 MiB
                                                             // A fresh decoder, dropped after this frame: the dictionary
                                                             // copy it makes is sized exactly and outlives no segment.
                self.zstd = None;
                let mut dec = FrameDecoder::new();
                crate::zstd::decode_frame(
                    &mut dec,
                    &self.inbuf[frame_at..],
                    &mut self.data,
                    Some(prefix),
                )
                .map_err(|why| ApplyError::Decode { segment, why })?;
                None
            }
        };
        sized(&mut self.out, entry.new_len as usize);
        Ok(SegmentRun {
            entry,
            start,
            ops: match ops_in {
                OpsIn::Page => {
                    let at = entry.inline_ops.expect("inline ops have an offset") as usize;
                    at..at + entry.ops_len as usize
                }
                OpsIn::Payload | OpsIn::Unpacked => 0..self.ops_block(&entry, ops_in).len(),
            },
            ops_in,
            data_in_inbuf,
            out_pos: 0,
            data_pos: 0,
            delta_pending: None,
        })
    }

    /// Runs a segment's ops until one needs old bytes, then verifies and
    /// writes its output.
    fn run_segment(&mut self, mut run: SegmentRun) -> Result<Option<Action>, ApplyError> {
        let data: &[u8] = match run.data_in_inbuf {
            Some(at) => &self.inbuf[at..],
            None => &self.data,
        };
        if let Some(range) = run.delta_pending.take() {
            let add = &data[run.data_pos..run.data_pos + range.len()];
            for (o, d) in self.out[range.clone()].iter_mut().zip(add) {
                *o = o.wrapping_add(*d);
            }
            run.data_pos += range.len();
        }
        let block = match run.ops_in {
            OpsIn::Payload => &self.inbuf,
            OpsIn::Unpacked => &self.ops,
            OpsIn::Page => &self.page_content,
        };
        let mut ops = OpIter::new(&block[run.ops.clone()]);
        while let Some(op) = ops.next() {
            let op = op.expect("ops were validated in start_segment");
            run.ops.start = run.ops.end - ops.remaining();
            let len = op.len() as usize;
            let at = run.out_pos;
            run.out_pos += len;
            match op {
                Op::Literal { .. } => {
                    self.out[at..at + len].copy_from_slice(&data[run.data_pos..run.data_pos + len]);
                    run.data_pos += len;
                }
                Op::Zero { .. } => self.out[at..at + len].fill(0),
                Op::Copy { delta, .. } | Op::Delta { delta, .. } => {
                    let offset =
                        self.source(run.start + at as u64, delta, len as u64, run.start)?;
                    if matches!(op, Op::Delta { .. }) {
                        run.delta_pending = Some(at..at + len);
                    }
                    self.state = State::Segment(run);
                    return Ok(Some(Action::ReadOld {
                        offset,
                        range: at..at + len,
                    }));
                }
            }
        }
        let new_len = run.entry.new_len as usize;
        // One hash: its prefix checks the entry, all of it is reported.
        let full = *blake3::hash(&self.out[..new_len]).as_bytes();
        let checked = if self.compact_pages() {
            SHORT_HASH_LEN
        } else {
            HASH_LEN
        };
        if full[..checked] != run.entry.hash[..checked] {
            return Err(ApplyError::SegmentHash {
                segment: self.segments_seen - 1,
                new_offset: run.start,
            });
        }
        if let Some(h) = self.new_hasher.as_mut() {
            h.update(&self.out[..new_len]);
        }
        self.new_pos += new_len as u64;
        self.written += new_len as u64;
        self.written_segment = Some((self.segments_seen - 1, full));
        self.inbuf.clear();
        self.state = State::Extent;
        Ok(Some(Action::Write {
            offset: run.start,
            range: 0..new_len,
        }))
    }
}

/// A frame that must declare its content size, and the errors that name it.
struct SizedFrame {
    field: &'static str,
    reason: &'static str,
    size_field: &'static str,
    max: u32,
    /// The error when the frame itself does not decode.
    corrupt: Box<dyn Fn(ZstdError) -> ApplyError>,
}

/// Decodes one zstd frame that declares its content size, 1..=`max`, into
/// `out`, which is sized to it only after that check.
fn unpack_sized(
    dec: &mut FrameDecoder,
    mut frame: &[u8],
    out: &mut Vec<u8>,
    f: SizedFrame,
) -> Result<(), ApplyError> {
    let len = crate::zstd::start_frame(dec, &mut frame).map_err(&f.corrupt)?;
    if len == 0 {
        return Err(FormatError::Invalid {
            field: f.field,
            reason: f.reason,
        }
        .into());
    }
    if len > u64::from(f.max) {
        return Err(FormatError::TooLarge {
            field: f.size_field,
            got: len,
            max: f.max.into(),
        }
        .into());
    }
    sized(out, len as usize); // at most `max`, checked above
    crate::zstd::finish_frame(dec, frame, out).map_err(&f.corrupt)
}

/// Makes `buf`'s capacity at least `len` without the amortized doubling of
/// `Vec` growth, freeing the old allocation first, so that the engine's
/// peak memory is the sum of its buffers' limits and never more.
fn reserve_exactly(buf: &mut Vec<u8>, len: usize) {
    if buf.capacity() < len {
        *buf = Vec::new();
        buf.reserve_exact(len);
    }
}

/// Adds `len` zero bytes to `hasher`, if there is one.
fn hash_zeros(hasher: Option<&mut TreeHasher>, len: u64) {
    if let Some(h) = hasher {
        let mut left = len;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64) as usize;
            h.update(&ZEROS[..n]);
            left -= n as u64;
        }
    }
}

/// `buf` resized to `len` zero bytes, grown with [`reserve_exactly`].
fn sized(buf: &mut Vec<u8>, len: usize) {
    reserve_exactly(buf, len);
    buf.clear();
    buf.resize(len, 0);
}

#[cfg(test)]
mod tests {
    use alloc::string::String;
    use alloc::vec;

    use anypatch_format::{PageRef, TRAILER_LEN};

    use super::*;

    /// An unsigned patch for an empty old file whose new file is one zero
    /// extent of `len` bytes: a header, one plain page and a trailer.
    fn zero_patch(len: u64) -> Vec<u8> {
        let page = Page {
            extents: vec![Extent::Zero { len }],
            next: None,
        }
        .emit();
        let mut zeros = TreeHasher::new();
        hash_zeros(Some(&mut zeros), if len <= 1 << 24 { len } else { 0 });
        let mut header = Header {
            old_len: 0,
            new_len: len,
            old_hash: *blake3::hash(b"").as_bytes(),
            new_hash: zeros.finalize(),
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
            producer: String::from("engine test"),
        };
        // patch_len is inside the header it measures: settle it.
        let mut section = header.emit(0, 0);
        while header.patch_len != (section.len() + page.len() + TRAILER_LEN) as u64 {
            header.patch_len = (section.len() + page.len() + TRAILER_LEN) as u64;
            section = header.emit(0, 0);
        }
        let mut patch = section;
        patch.extend_from_slice(&page);
        let mut trailer = [0u8; TRAILER_LEN];
        Trailer {
            patch_hash: *blake3::hash(&patch).as_bytes(),
        }
        .emit(&mut trailer);
        patch.extend_from_slice(&trailer);
        patch
    }

    /// Drives `patch` to the end or to an error; returns the `Zero` events
    /// and the outcome.
    fn run(cfg: Config, patch: &[u8]) -> (Vec<(u64, u64)>, Result<Summary, ApplyError>) {
        let mut a = Applier::new(cfg);
        let mut zeros = Vec::new();
        let mut fed = 0;
        loop {
            match a.poll() {
                Err(e) => return (zeros, Err(e)),
                Ok(Event::NeedInput) if fed < patch.len() => fed += a.feed(&patch[fed..]),
                Ok(Event::NeedInput) => a.end_of_input(),
                Ok(Event::Zero { offset, len }) => zeros.push((offset, len)),
                Ok(Event::Done(s)) => return (zeros, Ok(s)),
                Ok(Event::ReadOld { .. } | Event::Write { .. } | Event::Header(_)) => {}
            }
        }
    }

    #[test]
    fn max_new_len_refuses_before_any_work() {
        let patch = zero_patch(1 << 50);
        let cfg = Config {
            max_new_len: 64 << 30,
            ..Config::new(0)
        };
        let (zeros, got) = run(cfg, &patch);
        assert_eq!(
            got,
            Err(ApplyError::NewTooLarge {
                got: 1 << 50,
                max: 64 << 30
            })
        );
        assert!(zeros.is_empty(), "refused before any zero was handed out");
        assert_eq!(
            got.expect_err("refused").class(),
            crate::ErrorClass::Untrusted
        );
        // At the limit it applies.
        let patch = zero_patch(1 << 20);
        let cfg = Config {
            max_new_len: 1 << 20,
            ..Config::new(0)
        };
        assert!(run(cfg, &patch).1.is_ok());
    }

    #[test]
    fn zero_step_hands_out_a_hashed_zero_run_in_pieces() {
        let len = (5 << 20) + 7;
        let patch = zero_patch(len);
        let (whole, got) = run(Config::new(0), &patch);
        assert_eq!(whole, [(0, len)]);
        assert!(got.is_ok(), "{got:?}");
        let cfg = Config {
            zero_step: 1 << 20,
            ..Config::new(0)
        };
        let (pieces, got) = run(cfg, &patch);
        let summary = got.expect("the pieces hash to the header's new_hash");
        assert_eq!(pieces.len(), 6);
        assert!(pieces.iter().all(|&(_, n)| n <= 1 << 20));
        let mut end = 0;
        for &(offset, n) in &pieces {
            assert_eq!(offset, end, "in order, without gaps");
            end += n;
        }
        assert_eq!((end, summary.bytes_zeroed), (len, len));
    }

    #[test]
    fn zero_step_returns_control_during_a_huge_zero_run() {
        // 2^50 declared zeros: each poll hashes one step and returns.
        let patch = zero_patch(1 << 50);
        let mut a = Applier::new(Config {
            zero_step: 1 << 20,
            ..Config::new(0)
        });
        let mut fed = 0;
        let mut zeros = 0;
        while zeros < 3 {
            match a.poll().expect("no error before the end") {
                Event::NeedInput => fed += a.feed(&patch[fed..]),
                Event::Zero { offset, len } => {
                    assert_eq!((offset, len), (zeros << 20, 1 << 20));
                    zeros += 1;
                }
                _ => {}
            }
        }
        assert_eq!(a.progress().new_done, 3 << 20);
    }
}
