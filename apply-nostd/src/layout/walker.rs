//! A sans-IO walk over a patch's layout for readers that apply nothing:
//! `mkpatch inspect` (every byte, every check that needs no old byte) and
//! the page's change map (the header and the pages only).

use alloc::boxed::Box;
use alloc::vec::Vec;

use anypatch_format::{
    Codec, Extent, Hash, Header, Page, PageRef, Preamble, PreambleRepr, SegmentEntry, HASH_LEN,
    MAX_SEGMENT_LEN, PREAMBLE_LEN, TRAILER_LEN,
};
use ruzstd::decoding::FrameDecoder;

use super::frames::{sized, unpack_ops};
use super::rules::{OpTally, Rules, Tally};
use super::sections::{read_header_section, read_page, read_signatures, read_trailer, Signer};
use crate::history::decode_with_history;
use crate::zstd::{check_frame_header, decode_frame, ZstdError};
use crate::ApplyError;

/// What a [`Walker`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every byte, in order: the header section, the signatures, pages,
    /// every payload (ops checked, data frames decoded where no old byte is
    /// needed), the trailer and the end of the input. What `inspect` does.
    Full,
    /// The header section and the pages only, skipping payloads by their
    /// declared lengths: a multi-GB patch is mapped in a few small reads.
    Pages,
}

/// What the walker has to report, or needs. Returned by [`Walker::poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Give the patch bytes from offset `at` ([`Walker::give`]; `len` more
    /// are wanted), or call [`Walker::end`] if the patch ends before them.
    Want { at: u64, len: usize },
    /// The header section is checked (and, in [`Mode::Full`], the
    /// signatures): see [`Walker::header`] and [`Walker::signers`].
    Header,
    /// Page `number` (from 0), `len` bytes, is checked against its hash.
    Page { number: u64, len: u32 },
    /// The next extent of the new file, checked against the header.
    Extent { new_offset: u64, extent: Extent },
    /// In [`Mode::Full`], after the [`Step::Extent`] of a data segment:
    /// its payload, checked.
    Segment(SegmentReport),
    /// The walk is over: every page (and in [`Mode::Full`], the trailer
    /// and the end of input) checked.
    Done {
        patch_len: u64,
        patch_hash: Option<Hash>,
    },
}

/// A data segment's payload as [`Mode::Full`] found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentReport {
    pub entry: SegmentEntry,
    pub codec: Codec,
    /// The ops block is a zstd frame in the payload (format 1.1).
    pub packed: bool,
    /// Its ops, counted, and whether any reads old bytes.
    pub ops: OpTally,
    /// Whether the data block was decoded and found to be exactly the bytes
    /// the ops take. False only for codec 0x02, whose frame has old bytes
    /// as history: then its header alone was checked.
    pub decoded: bool,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Preamble,
    HeaderSection,
    Signatures,
    AnnounceHeader,
    Page(PageRef),
    Extents,
    Payload { entry: SegmentEntry, start: u64 },
    Trailer,
    AwaitEnd,
    Done,
}

/// Walks a patch's layout. Feed it by seeking (read what [`Step::Want`]
/// asks) or by teeing (give it every byte of the patch in order, with its
/// offset: it keeps what it wants and ignores the rest).
pub struct Walker {
    mode: Mode,
    state: State,
    /// Patch offset and length of the section being collected, and its bytes.
    want_at: u64,
    want_len: usize,
    buf: Vec<u8>,
    failed: Option<ApplyError>,
    preamble: Option<PreambleRepr>,
    header: Option<Header>,
    section: Vec<u8>,
    signers: Vec<Signer>,
    rules: Rules,
    tally: Tally,
    page: Option<Page>,
    extent_idx: usize,
    /// Patch offset after the page and the payloads taken so far.
    next_at: u64,
    /// What [`Mode::Full`] needs: the patch hash and the decoding buffers.
    hasher: blake3::Hasher,
    dec: Option<Box<FrameDecoder>>,
    content: Vec<u8>,
    ops: Vec<u8>,
    data: Vec<u8>,
    scratch: Vec<u8>,
    history: Vec<u8>,
}

impl core::fmt::Debug for Walker {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Walker")
            .field("mode", &self.mode)
            .field("state", &self.state)
            .field("tally", &self.tally)
            .finish_non_exhaustive()
    }
}

impl Walker {
    /// A walk from the start of a patch.
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            state: State::Preamble,
            want_at: 0,
            want_len: PREAMBLE_LEN,
            buf: Vec::new(),
            failed: None,
            preamble: None,
            header: None,
            section: Vec::new(),
            signers: Vec::new(),
            rules: Rules::default(),
            tally: Tally::default(),
            page: None,
            extent_idx: 0,
            next_at: 0,
            hasher: blake3::Hasher::new(),
            dec: None,
            content: Vec::new(),
            ops: Vec::new(),
            data: Vec::new(),
            scratch: Vec::new(),
            history: Vec::new(),
        }
    }

    /// The preamble, once read.
    pub fn preamble(&self) -> Option<&PreambleRepr> {
        self.preamble.as_ref()
    }

    /// The header, once [`Step::Header`] was reported.
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    /// The signatures, each checked over the header section; in
    /// [`Mode::Full`] only (the pages walk skips the block).
    pub fn signers(&self) -> &[Signer] {
        &self.signers
    }

    /// Pages read, extents and segments taken, and where the next extent starts.
    pub fn tally(&self) -> Tally {
        self.tally
    }

    /// The byte range wanted next, or `None` when none is.
    pub fn wanted(&self) -> Option<(u64, usize)> {
        (self.failed.is_none() && self.buf.len() < self.want_len).then(|| {
            (
                self.want_at + self.buf.len() as u64,
                self.want_len - self.buf.len(),
            )
        })
    }

    /// Gives patch bytes that start at patch offset `at`. Only the wanted
    /// range is kept, so any slice of the patch may be given; give the
    /// rest after the next [`Walker::poll`].
    pub fn give(&mut self, at: u64, bytes: &[u8]) {
        let Some((want, left)) = self.wanted() else {
            return;
        };
        let end = at + bytes.len() as u64;
        if want < at || want >= end {
            return; // before this slice (a gap) or after it
        }
        if matches!(self.state, State::AwaitEnd) {
            self.failed = Some(ApplyError::TrailingBytes);
            return;
        }
        let from = (want - at) as usize; // < bytes.len()
        let take = left.min(bytes.len() - from);
        self.buf.extend_from_slice(&bytes[from..from + take]);
    }

    /// Says the patch has no bytes at the wanted offset: the walk fails
    /// with the engine's sentence for a patch cut short there, or, after
    /// the trailer, ends.
    pub fn end(&mut self) {
        let section = match self.state {
            State::Preamble => "preamble",
            State::HeaderSection => "header",
            State::Signatures => "signature block",
            State::Page(_) => "manifest page",
            State::Payload { .. } => "data segment",
            State::Trailer => "trailer",
            State::AwaitEnd => {
                self.want_len = 0;
                return;
            }
            State::AnnounceHeader | State::Extents | State::Done => return,
        };
        if self.buf.len() < self.want_len && self.failed.is_none() {
            self.failed = Some(ApplyError::Truncated { section });
        }
    }

    /// Advances the walk. After an error, every call returns it again.
    pub fn poll(&mut self) -> Result<Step, ApplyError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.step().inspect_err(|e| self.failed = Some(e.clone()))
    }

    fn expect(&mut self, state: State, at: u64, len: usize) {
        self.state = state;
        self.want_at = at;
        self.want_len = len;
        self.buf.clear();
    }

    fn full(&self) -> bool {
        self.mode == Mode::Full
    }

    fn header_ref(&self) -> &Header {
        self.header
            .as_ref()
            .expect("states after the header have one")
    }

    fn step(&mut self) -> Result<Step, ApplyError> {
        loop {
            if let Some((at, len)) = self.wanted() {
                return Ok(Step::Want { at, len });
            }
            let end = self.want_at + self.want_len as u64;
            match self.state {
                State::Preamble => {
                    let repr = PreambleRepr::parse(&Preamble::new_checked(&self.buf[..])?)?;
                    self.preamble = Some(repr);
                    self.section = core::mem::take(&mut self.buf);
                    let len = repr.header_len as usize + HASH_LEN;
                    self.expect(State::HeaderSection, end, len);
                }
                State::HeaderSection => {
                    self.section.extend_from_slice(&self.buf);
                    let (repr, header) = read_header_section(&self.section)?;
                    self.rules = Rules {
                        required_features: repr.required_features,
                        old_len: header.old_len,
                        in_place: false,
                    };
                    self.header = Some(header);
                    self.hasher.update(&self.section);
                    let sigs = repr.signature_len as usize;
                    if self.full() {
                        self.expect(State::Signatures, end, sigs);
                    } else {
                        self.section = Vec::new();
                        self.expect(State::AnnounceHeader, end + sigs as u64, 0);
                    }
                }
                State::Signatures => {
                    self.hasher.update(&self.buf);
                    self.signers = read_signatures(&self.buf, &self.section, &[])?;
                    self.section = Vec::new();
                    self.expect(State::AnnounceHeader, end, 0);
                }
                State::AnnounceHeader => {
                    let first = self.header_ref().first_page;
                    self.expect(State::Page(first), self.want_at, first.len as usize);
                    return Ok(Step::Header);
                }
                State::Page(named) => {
                    let number = self.tally.pages;
                    let dec = self.dec.get_or_insert_with(Default::default);
                    let page = read_page(
                        &self.buf,
                        &named,
                        number,
                        &self.rules,
                        dec,
                        &mut self.content,
                    )?;
                    if self.full() {
                        self.hasher.update(&self.buf);
                    }
                    self.tally.pages += 1;
                    self.page = Some(page);
                    self.extent_idx = 0;
                    self.next_at = end;
                    self.expect(State::Extents, end, 0);
                    return Ok(Step::Page {
                        number,
                        len: named.len,
                    });
                }
                State::Extents => return self.next_extent(),
                State::Payload { entry, start } => {
                    self.hasher.update(&self.buf);
                    let report = self.check_payload(entry, start)?;
                    self.next_at = end;
                    self.expect(State::Extents, end, 0);
                    return Ok(Step::Segment(report));
                }
                State::Trailer => {
                    let header = self
                        .header
                        .as_ref()
                        .expect("the trailer follows the header");
                    let hash = *self.hasher.finalize().as_bytes();
                    let consumed = self.hasher.count() + TRAILER_LEN as u64;
                    read_trailer(&self.buf, hash, consumed, header)?;
                    // One more byte is wanted: the input must end here.
                    self.expect(State::AwaitEnd, end, 1);
                }
                State::AwaitEnd => {
                    self.state = State::Done;
                }
                State::Done => {
                    let patch_len = if self.full() {
                        self.hasher.count() + TRAILER_LEN as u64
                    } else {
                        self.next_at
                    };
                    let patch_hash = self.full().then(|| *self.hasher.finalize().as_bytes());
                    return Ok(Step::Done {
                        patch_len,
                        patch_hash,
                    });
                }
            }
        }
    }

    /// Takes the next extent of the current page, or moves on.
    fn next_extent(&mut self) -> Result<Step, ApplyError> {
        let page = self.page.as_ref().expect("extents follow a page");
        let Some(&extent) = page.extents.get(self.extent_idx) else {
            let at = self.next_at;
            match page.next {
                Some(next) => self.expect(State::Page(next), at, next.len as usize),
                None => {
                    self.tally.finish(self.header_ref())?;
                    self.page = None;
                    if self.full() {
                        self.expect(State::Trailer, at, TRAILER_LEN);
                    } else {
                        self.expect(State::Done, at, 0);
                    }
                }
            }
            return self.step();
        };
        self.extent_idx += 1;
        let header = self.header.as_ref().expect("extents follow the header");
        let new_offset = self.tally.take(&extent, header)?;
        match extent {
            Extent::Copy { len, delta } => {
                self.rules.source(new_offset, delta, len, new_offset)?;
            }
            Extent::Data(entry) => {
                self.rules.segment_codec(entry.codec)?;
                let len = entry.payload_len();
                if self.full() {
                    let len = usize::try_from(len).expect("payload is capped at 5 MiB");
                    let at = self.next_at;
                    self.expect(
                        State::Payload {
                            entry,
                            start: new_offset,
                        },
                        at,
                        len,
                    );
                } else {
                    self.next_at = self.next_at.saturating_add(len);
                }
            }
            Extent::Zero { .. } => {}
        }
        Ok(Step::Extent { new_offset, extent })
    }

    /// Checks a buffered payload: its ops, and its data block as far as it
    /// can be checked without old bytes.
    fn check_payload(
        &mut self,
        entry: SegmentEntry,
        start: u64,
    ) -> Result<SegmentReport, ApplyError> {
        let segment = self.tally.segments - 1;
        let (codec, packed) = self.rules.segment_codec(entry.codec)?;
        let ops_len = entry.payload_ops_len() as usize;
        let (ops_block, data_block) = self.buf.split_at(ops_len);
        let ops: &[u8] = if let Some(at) = entry.inline_ops {
            let at = at as usize; // Page::parse_compact checked the range
            &self.content[at..at + entry.ops_len as usize]
        } else if packed {
            let dec = self.dec.get_or_insert_with(Default::default);
            unpack_ops(dec, ops_block, &mut self.ops, segment)?;
            &self.ops
        } else {
            ops_block
        };
        let tally = self.rules.check_ops(ops, &entry, start)?;
        let needed = tally.data_needed;
        let corrupt = |why| ApplyError::Decode { segment, why };
        let decoded = match codec {
            Codec::Stored => {
                if data_block.len() as u64 != needed {
                    return Err(ApplyError::LengthMismatch {
                        field: "stored data_len",
                        got: data_block.len() as u64,
                        expected: needed,
                    });
                }
                true
            }
            Codec::Zstd => {
                sized(&mut self.data, needed as usize); // at most new_len, capped at 4 MiB
                let dec = self.dec.get_or_insert_with(Default::default);
                decode_frame(dec, data_block, &mut self.data, None).map_err(corrupt)?;
                true
            }
            Codec::ZstdHistory => {
                if needed == 0 || needed > u64::from(MAX_SEGMENT_LEN) {
                    // Spec 3.8.1: a frame whose segment takes no data is refused.
                    return Err(corrupt(ZstdError::Length { expected: needed }));
                }
                self.dec = None; // its window, before the history's frame gets one
                decode_with_history(
                    &mut self.history,
                    data_block,
                    needed as usize,
                    &mut self.data,
                    &mut self.scratch,
                )
                .map_err(corrupt)?;
                true
            }
            Codec::ZstdPrefix => {
                let (_, _, frame) = self.rules.prefix(data_block, start)?;
                check_frame_header(frame, needed).map_err(corrupt)?;
                false
            }
        };
        Ok(SegmentReport {
            entry,
            codec,
            packed,
            ops: tally,
            decoded,
        })
    }
}
