//! The patch's layout, for the picture: walks the header and the page chain
//! and sorts every extent of the new file into four kinds, summed into a
//! fixed number of buckets.
//!
//! This reads the same wire format as the engine, with the format crate's
//! parsers, but applies nothing: it only learns where pages are and what
//! their extents say. It checks each page against the hash that named it,
//! so the picture shows what the verified apply will do. Compact pages
//! (format 1.2) are decoded with ruzstd under the engine's limits. Memory is
//! one page (with its decoded content and, while it decodes, a zstd window
//! of at most `MAX_ZSTD_WINDOW`) and the buckets, whatever the image size.
//!
//! A [`Layout`] is driven in one of two ways:
//! - by seeking: ask [`Layout::wanted`] for the next byte range, read it, and
//!   hand it to [`Layout::give`]. Only the header and the pages are read,
//!   never a payload, so a multi-GB patch is mapped in a few small reads.
//! - by teeing: hand it every patch byte the engine consumes, in order, with
//!   its offset; it keeps what it wants and ignores the rest.
#![forbid(unsafe_code)]

use anypatch_apply::format::{
    parse_header_section, Extent, FormatError, Header, Page, PageRef, Preamble, PreambleRepr,
    FEATURE_COMPACT_PAGES, HASH_LEN, MAX_PAGE_LEN, MAX_ZSTD_WINDOW, PREAMBLE_LEN,
};
use anypatch_apply::{ApplyError, ZstdError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};
use ruzstd::io::Read;

/// Kind index: copied from the same offset of the old file (unchanged).
pub const UNCHANGED: usize = 0;
/// Kind index: copied from another offset of the old file (moved).
pub const MOVED: usize = 1;
/// Kind index: produced by a data segment (literal, delta or copy ops).
pub const DATA: usize = 2;
/// Kind index: zeros.
pub const ZERO: usize = 3;
/// Number of kinds.
pub const KINDS: usize = 4;
/// Most buckets a map may have (64 Ki buckets, 2 MiB of counters).
pub const MAX_BUCKETS: usize = 0x1_0000;

/// Bytes of each kind per bucket of the new file. Bucket `b` covers new
/// offsets `ceil(b * new_len / n) .. ceil((b + 1) * new_len / n)`.
#[derive(Debug, Clone)]
pub struct Buckets {
    new_len: u64,
    bytes: Vec<[u64; KINDS]>,
    /// Bytes of each kind in the whole new file.
    pub totals: [u64; KINDS],
    /// Extents of each kind.
    pub counts: [u64; KINDS],
}

impl Buckets {
    /// `n` buckets (clamped to 1..=[`MAX_BUCKETS`]) over a new file of `new_len` bytes.
    pub fn new(n: usize, new_len: u64) -> Self {
        Self {
            new_len,
            bytes: vec![[0; KINDS]; n.clamp(1, MAX_BUCKETS)],
            totals: [0; KINDS],
            counts: [0; KINDS],
        }
    }

    fn start(&self, b: usize) -> u64 {
        let n = self.bytes.len() as u128;
        (b as u128 * u128::from(self.new_len)).div_ceil(n) as u64 // <= new_len
    }

    /// Counts `len` bytes of `kind` at new offset `at`.
    pub fn add(&mut self, at: u64, len: u64, kind: usize) {
        self.totals[kind] += len;
        self.counts[kind] += 1;
        let end = at.saturating_add(len).min(self.new_len);
        if at >= end {
            return;
        }
        let n = self.bytes.len();
        let mut b = (u128::from(at) * n as u128 / u128::from(self.new_len)) as usize;
        while b < n && self.start(b) < end {
            let lo = self.start(b).max(at);
            let hi = self.start(b + 1).min(end);
            self.bytes[b][kind] += hi.saturating_sub(lo);
            b += 1;
        }
    }

    /// The counters, bucket by bucket, `KINDS` per bucket.
    pub fn flat(&self) -> Vec<f64> {
        self.bytes
            .iter()
            .flat_map(|k| k.iter().map(|&v| v as f64))
            .collect()
    }

    /// Number of buckets.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: there is at least one bucket.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[derive(Debug, Clone, Copy)]
enum Section {
    Preamble,
    Header,
    Page(PageRef),
    Done,
}

/// Walks a patch's page chain. See the module docs.
#[derive(Debug)]
pub struct Layout {
    section: Section,
    /// Patch offset and length of the section being collected.
    want_at: u64,
    want_len: usize,
    buf: Vec<u8>,
    n_buckets: usize,
    preamble: Option<PreambleRepr>,
    preamble_bytes: [u8; PREAMBLE_LEN],
    header: Option<Header>,
    buckets: Option<Buckets>,
    pages: u64,
    new_pos: u64,
    error: Option<String>,
}

impl Layout {
    /// A walker that will sum extents into `n_buckets` buckets.
    pub fn new(n_buckets: usize) -> Self {
        Self {
            section: Section::Preamble,
            want_at: 0,
            want_len: PREAMBLE_LEN,
            buf: Vec::new(),
            n_buckets,
            preamble: None,
            preamble_bytes: [0; PREAMBLE_LEN],
            header: None,
            buckets: None,
            pages: 0,
            new_pos: 0,
            error: None,
        }
    }

    /// The byte range `(offset, len)` of the patch wanted next, or `None`
    /// when the walk is over (finished or failed).
    pub fn wanted(&self) -> Option<(u64, usize)> {
        match self.section {
            Section::Done => None,
            _ => Some((
                self.want_at + self.buf.len() as u64,
                self.want_len - self.buf.len(),
            )),
        }
    }

    /// True when every page was read.
    pub fn finished(&self) -> bool {
        matches!(self.section, Section::Done) && self.error.is_none()
    }

    /// Why the walk stopped early: the same sentence the engine would give.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// The preamble, once read.
    pub fn preamble(&self) -> Option<&PreambleRepr> {
        self.preamble.as_ref()
    }

    /// The header, once read and checked against its hash.
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    /// The extents seen so far, summed into buckets; `None` before the header.
    pub fn buckets(&self) -> Option<&Buckets> {
        self.buckets.as_ref()
    }

    /// Pages read so far.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Gives patch bytes that start at patch offset `at`. Bytes outside the
    /// wanted range are ignored, so any slice of the patch may be given.
    pub fn give(&mut self, at: u64, bytes: &[u8]) {
        let end = at + bytes.len() as u64;
        while let Some((want, left)) = self.wanted() {
            if want < at || want >= end {
                return; // before this slice (a gap) or after it
            }
            let from = (want - at) as usize; // < bytes.len()
            let take = left.min(bytes.len() - from);
            self.buf.extend_from_slice(&bytes[from..from + take]);
            if take == left {
                if let Err(e) = self.section_done() {
                    self.error = Some(e.to_string());
                    self.section = Section::Done;
                }
            }
        }
    }

    /// Says the patch ends before the wanted range: the walk fails with the
    /// engine's sentence for a patch cut short in that section.
    pub fn truncated(&mut self) {
        let section = match self.section {
            Section::Preamble => "preamble",
            Section::Header => "header",
            Section::Page(_) => "manifest page",
            Section::Done => return,
        };
        self.error = Some(ApplyError::Truncated { section }.to_string());
        self.section = Section::Done;
    }

    fn expect(&mut self, section: Section, at: u64, len: usize) {
        self.section = section;
        self.want_at = at;
        self.want_len = len;
        self.buf.clear();
    }

    /// Handles a fully collected section and names the next one.
    fn section_done(&mut self) -> Result<(), ApplyError> {
        let end = self.want_at + self.want_len as u64;
        match self.section {
            Section::Preamble => {
                let repr = PreambleRepr::parse(&Preamble::new_checked(&self.buf[..])?)?;
                self.preamble = Some(repr);
                self.preamble_bytes.copy_from_slice(&self.buf);
                let len = repr.header_len as usize + HASH_LEN;
                self.expect(Section::Header, end, len);
            }
            Section::Header => {
                // The one header-section parser: hash before version.
                let section = [&self.preamble_bytes[..], &self.buf[..]].concat();
                let (repr, header) = parse_header_section(&section)?;
                let first = header.first_page;
                self.buckets = Some(Buckets::new(self.n_buckets, header.new_len));
                self.header = Some(header);
                let page_at = end + u64::from(repr.signature_len);
                self.expect(Section::Page(first), page_at, first.len as usize);
            }
            Section::Page(r) => {
                if *blake3::hash(&self.buf).as_bytes() != r.hash {
                    return Err(ApplyError::PageHash { page: self.pages });
                }
                let compact = self
                    .preamble
                    .is_some_and(|p| p.required_features & FEATURE_COMPACT_PAGES != 0);
                let page = if compact {
                    Page::parse_compact(&unpack_page(&self.buf, self.pages)?)?
                } else {
                    Page::parse(&self.buf)?
                };
                self.pages += 1;
                let buckets = self
                    .buckets
                    .as_mut()
                    .expect("pages come after the header, which makes the buckets");
                let mut payloads = 0u64;
                for extent in &page.extents {
                    let len = extent.len();
                    let kind = match *extent {
                        Extent::Copy { delta: 0, .. } => UNCHANGED,
                        Extent::Copy { .. } => MOVED,
                        Extent::Zero { .. } => ZERO,
                        Extent::Data(s) => {
                            payloads += s.payload_len();
                            DATA
                        }
                    };
                    buckets.add(self.new_pos, len, kind);
                    self.new_pos = self.new_pos.saturating_add(len);
                }
                match page.next {
                    Some(next) => {
                        self.expect(Section::Page(next), end + payloads, next.len as usize)
                    }
                    None => self.expect(Section::Done, end, 0),
                }
            }
            Section::Done => {}
        }
        Ok(())
    }
}

/// Decodes compact page `page` (counting from 0), one zstd frame, as the
/// engine does: the frame must declare its content size, 1..=
/// [`MAX_PAGE_LEN`], checked before anything is sized for it, have a window
/// of at most [`MAX_ZSTD_WINDOW`] and no dictionary, and decode to exactly
/// that size with no byte left over. Errors are the engine's.
fn unpack_page(frame: &[u8], page: u64) -> Result<Vec<u8>, ApplyError> {
    let corrupt = |why| ApplyError::PageDecode { page, why };
    // RFC 8878 3.1.1.1.1: the reserved bit must be clear (ruzstd ignores it).
    if frame
        .get(4)
        .is_some_and(|descriptor| descriptor & 0x08 != 0)
    {
        return Err(corrupt(ZstdError::ReservedBit));
    }
    let mut input = frame;
    let mut dec = FrameDecoder::new();
    dec.set_max_window_size(MAX_ZSTD_WINDOW);
    dec.init(&mut input)
        .map_err(|_| corrupt(ZstdError::Header))?;
    let len = dec.content_size();
    if len == 0 {
        return Err(FormatError::Invalid {
            field: "compact page frame",
            reason: "declares no content size, or 0; it must declare the page's decoded length",
        }
        .into());
    }
    if len > u64::from(MAX_PAGE_LEN) {
        return Err(FormatError::TooLarge {
            field: "page content size",
            got: len,
            max: MAX_PAGE_LEN.into(),
        }
        .into());
    }
    let mut out = vec![0; len as usize]; // at most MAX_PAGE_LEN, checked above
    let mut written = 0;
    loop {
        // A block at a time, so a frame that decodes to more than it
        // declares is caught with at most a block of it buffered.
        let finished = dec
            .decode_blocks(&mut input, BlockDecodingStrategy::UptoBytes(0x2_0000))
            .map_err(|_| corrupt(ZstdError::Block))?;
        loop {
            let Some(target) = out.get_mut(written..) else {
                return Err(corrupt(ZstdError::Length { expected: len }));
            };
            let n = dec.read(target).map_err(|_| corrupt(ZstdError::Block))?;
            written += n;
            if n == 0 {
                break;
            }
        }
        if dec.can_collect() != 0 {
            return Err(corrupt(ZstdError::Length { expected: len })); // more than declared
        }
        if finished {
            break;
        }
    }
    if written != out.len() {
        return Err(corrupt(ZstdError::Length { expected: len }));
    }
    if !input.is_empty() {
        return Err(corrupt(ZstdError::TrailingInput));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_split_extents_exactly() {
        let mut b = Buckets::new(3, 10); // buckets 0..4, 4..7, 7..10
        b.add(0, 5, UNCHANGED);
        b.add(5, 5, DATA);
        let flat = b.flat();
        assert_eq!(flat[UNCHANGED], 4.0);
        assert_eq!(flat[KINDS + UNCHANGED], 1.0);
        assert_eq!(flat[KINDS + DATA], 2.0);
        assert_eq!(flat[2 * KINDS + DATA], 3.0);
        assert_eq!(b.totals, [5, 0, 5, 0]);
    }

    #[test]
    fn more_buckets_than_bytes() {
        let mut b = Buckets::new(8, 3);
        b.add(0, 3, ZERO);
        let sum: f64 = b.flat().iter().sum();
        assert_eq!(sum, 3.0);
    }

    /// A frame of `content` in raw blocks, with a 1 MiB window and, when
    /// `declared` is given, a 4-byte content size field.
    fn stored_frame(content: &[u8], declared: Option<u32>) -> Vec<u8> {
        let mut f = vec![0x28, 0xB5, 0x2F, 0xFD];
        match declared {
            Some(n) => {
                f.extend_from_slice(&[0x80, 0x50]);
                f.extend_from_slice(&n.to_le_bytes());
            }
            None => f.extend_from_slice(&[0x00, 0x50]),
        }
        let last = 1 | (content.len() as u32) << 3; // one raw block
        f.extend_from_slice(&last.to_le_bytes()[..3]);
        f.extend_from_slice(content);
        f
    }

    #[test]
    fn compact_pages_decode_within_the_engines_limits() {
        let content = b"a compact page's content";
        let n = content.len() as u32;
        let good = stored_frame(content, Some(n));
        assert_eq!(unpack_page(&good, 0).as_deref(), Ok(&content[..]));
        for (what, frame) in [
            ("not a frame", content.to_vec()),
            ("cut short", good[..good.len() - 1].to_vec()),
            ("a byte after it", [&good[..], &[0]].concat()),
            ("more than declared", stored_frame(content, Some(n - 1))),
            ("less than declared", stored_frame(content, Some(n + 1))),
        ] {
            let e = unpack_page(&frame, 3).expect_err(what);
            assert!(
                matches!(e, ApplyError::PageDecode { page: 3, .. }),
                "{what}: {e:?}"
            );
        }
        let no_size = unpack_page(&stored_frame(content, None), 0).expect_err("no size");
        assert!(
            matches!(no_size, ApplyError::Format(FormatError::Invalid { .. })),
            "{no_size:?}"
        );
        let e =
            unpack_page(&stored_frame(content, Some(MAX_PAGE_LEN + 1)), 0).expect_err("too large");
        assert_eq!(
            e.to_string(),
            ApplyError::from(FormatError::TooLarge {
                field: "page content size",
                got: u64::from(MAX_PAGE_LEN) + 1,
                max: MAX_PAGE_LEN.into(),
            })
            .to_string()
        );
    }
}
