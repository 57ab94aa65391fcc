//! Pages: the manifest, split into a hash chain so that an applier holds one
//! page at a time. Each page lists extents of the new file in order and names
//! the next page by length and BLAKE3.
//!
//! Two layouts. A *plain* page (1.0) is the postcard encoding of [`Page`].
//! A *compact* page (1.2, [`crate::FEATURE_COMPACT_PAGES`]) is carried as one
//! zstd frame; decoded, it is the same list except that a data entry carries
//! [`SHORT_HASH_LEN`] bytes of its hash and, unless its ops are packed in the
//! payload, its ops block inline. The caller (de)compresses; this module
//! only encodes and decodes the frame's content.

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::{
    Codec, FormatError, Hash, PageRef, MAX_OPS_LEN, MAX_PAGE_EXTENTS, MAX_PAGE_LEN,
    MAX_SEGMENT_LEN, PACKED_OPS,
};

/// Bytes of a segment's BLAKE3 that a compact page carries: its first 16,
/// the 128-bit BLAKE3 output.
pub const SHORT_HASH_LEN: usize = 16;

/// One run of the new file. Extents tile the new file in order, without gaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Extent {
    /// Tag 0: `len` bytes equal to old bytes at `new_offset + delta`.
    /// `delta == 0` means unchanged.
    Copy { len: u64, delta: i64 },
    /// Tag 1: `len` zero bytes.
    Zero { len: u64 },
    /// Tag 2: a data segment; its payload follows the page in patch order.
    Data(SegmentEntry),
}

/// A data segment's manifest entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentEntry {
    /// New bytes the segment produces, 1..=[`MAX_SEGMENT_LEN`].
    pub new_len: u32,
    /// How the data block is coded, a [`Codec`] byte, with
    /// [`crate::PACKED_OPS`] set when the ops block is packed.
    pub codec: u8,
    /// Length of the ops block, 1..=[`MAX_OPS_LEN`].
    pub ops_len: u32,
    /// Length of the coded data block, 0..=[`MAX_SEGMENT_LEN`].
    pub data_len: u32,
    /// BLAKE3 of the `new_len` bytes the segment produces. A compact page
    /// carries only the first [`SHORT_HASH_LEN`] bytes; the rest are zero.
    pub hash: Hash,
    /// Compact pages only: where the segment's ops block starts in the
    /// decoded page, which carries it inline. `None`: the ops block starts
    /// the payload. Not part of the plain encoding.
    #[serde(skip)]
    pub inline_ops: Option<u32>,
}

impl SegmentEntry {
    /// Length of the payload in the patch: the ops block, unless it is
    /// inline in a compact page, then the data block.
    pub fn payload_len(&self) -> u64 {
        self.payload_ops_len() + u64::from(self.data_len)
    }

    /// Bytes of the ops block in the payload: 0 when the ops are inline.
    pub fn payload_ops_len(&self) -> u64 {
        if self.inline_ops.is_some() {
            0
        } else {
            self.ops_len.into()
        }
    }

    /// Whether `output`, the bytes the segment produced, has its hash: all
    /// 32 bytes, or the first [`SHORT_HASH_LEN`] when `short` (a compact page).
    pub fn hash_matches(&self, output: &[u8], short: bool) -> bool {
        let got = blake3::hash(output);
        let n = if short {
            SHORT_HASH_LEN
        } else {
            got.as_bytes().len()
        };
        got.as_bytes()[..n] == self.hash[..n]
    }
}

impl Extent {
    /// New bytes this extent produces.
    pub fn len(&self) -> u64 {
        match *self {
            Extent::Copy { len, .. } | Extent::Zero { len } => len,
            Extent::Data(s) => s.new_len.into(),
        }
    }

    /// Always false for a valid extent; present for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn validate(&self) -> Result<(), FormatError> {
        match self {
            Extent::Copy { len: 0, .. } => Err(FormatError::ZeroLength {
                field: "extent.len",
            }),
            Extent::Zero { len: 0 } => Err(FormatError::ZeroLength {
                field: "extent.len",
            }),
            Extent::Copy { .. } | Extent::Zero { .. } => Ok(()),
            Extent::Data(s) => {
                Codec::split(s.codec)?;
                if s.new_len == 0 {
                    return Err(FormatError::ZeroLength {
                        field: "segment.new_len",
                    });
                }
                if s.ops_len == 0 {
                    return Err(FormatError::ZeroLength {
                        field: "segment.ops_len",
                    });
                }
                let limits = [
                    ("segment.new_len", s.new_len, MAX_SEGMENT_LEN),
                    ("segment.ops_len", s.ops_len, MAX_OPS_LEN),
                    ("segment.data_len", s.data_len, MAX_SEGMENT_LEN),
                ];
                for (field, got, max) in limits {
                    if got > max {
                        return Err(FormatError::TooLarge {
                            field,
                            got: got.into(),
                            max: max.into(),
                        });
                    }
                }
                Ok(())
            }
        }
    }
}

/// A decoded page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// At most [`MAX_PAGE_EXTENTS`] extents.
    pub extents: Vec<Extent>,
    /// The next page, or `None` for the last.
    pub next: Option<PageRef>,
}

impl Page {
    /// Parses and validates an encoded page. The caller has already checked
    /// its BLAKE3 against the [`PageRef`] that named it.
    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() > MAX_PAGE_LEN as usize {
            return Err(FormatError::TooLarge {
                field: "page.len",
                got: bytes.len() as u64,
                max: MAX_PAGE_LEN.into(),
            });
        }
        // The count comes first; check it before decoding so a hostile count
        // cannot make the decoder reserve memory.
        let (count, _): (u32, _) = postcard::take_from_bytes(bytes)
            .map_err(|_| FormatError::Malformed { what: "page" })?;
        if count as usize > MAX_PAGE_EXTENTS {
            return Err(FormatError::TooLarge {
                field: "page.extent_count",
                got: count.into(),
                max: MAX_PAGE_EXTENTS as u64,
            });
        }
        let (page, rest): (Page, &[u8]) = postcard::take_from_bytes(bytes)
            .map_err(|_| FormatError::Malformed { what: "page" })?;
        if !rest.is_empty() {
            return Err(FormatError::TrailingBytes {
                what: "page",
                count: rest.len() as u64,
            });
        }
        for e in &page.extents {
            e.validate()?;
        }
        page.validate_next()?;
        Ok(page)
    }

    /// Encodes the page.
    pub fn emit(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("serializing into a Vec cannot fail")
    }

    /// Length of [`Page::emit`]'s output.
    pub fn encoded_len(&self) -> usize {
        self.emit().len()
    }

    /// Parses and validates the decoded content of a compact page. Data
    /// entries whose ops are inline get [`SegmentEntry::inline_ops`], an
    /// offset into `bytes`: the caller keeps `bytes` while it runs them.
    pub fn parse_compact(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() > MAX_PAGE_LEN as usize {
            return Err(FormatError::TooLarge {
                field: "page content size",
                got: bytes.len() as u64,
                max: MAX_PAGE_LEN.into(),
            });
        }
        let mut r = Reader { bytes, pos: 0 };
        let count: u32 = r.take()?;
        if count as usize > MAX_PAGE_EXTENTS {
            return Err(FormatError::TooLarge {
                field: "page.extent_count",
                got: count.into(),
                max: MAX_PAGE_EXTENTS as u64,
            });
        }
        // Every extent takes at least two bytes, so `count` is also bounded
        // by the input: the reservation is at most a constant times its length.
        let mut extents = Vec::with_capacity((count as usize).min(bytes.len() / 2));
        for _ in 0..count {
            let extent = match r.take::<u32>()? {
                0 => Extent::Copy {
                    len: r.take()?,
                    delta: r.take()?,
                },
                1 => Extent::Zero { len: r.take()? },
                2 => {
                    let new_len = r.take()?;
                    let codec: u8 = r.take()?;
                    let ops_len: u32 = r.take()?;
                    let inline_ops = if codec & PACKED_OPS == 0 {
                        let at = r.pos;
                        r.skip(ops_len as usize)?;
                        Some(at as u32) // below MAX_PAGE_LEN, checked above
                    } else {
                        None
                    };
                    let data_len = r.take()?;
                    let mut hash = [0u8; 32];
                    hash[..SHORT_HASH_LEN].copy_from_slice(r.skip(SHORT_HASH_LEN)?);
                    Extent::Data(SegmentEntry {
                        new_len,
                        codec,
                        ops_len,
                        data_len,
                        hash,
                        inline_ops,
                    })
                }
                _ => return Err(FormatError::Malformed { what: "page" }),
            };
            extent.validate()?;
            extents.push(extent);
        }
        let next = match r.take::<u8>()? {
            0 => None,
            1 => {
                let len = r.take()?;
                let mut hash = [0u8; 32];
                hash.copy_from_slice(r.skip(32)?);
                Some(PageRef { len, hash })
            }
            _ => return Err(FormatError::Malformed { what: "page" }),
        };
        if r.pos != bytes.len() {
            return Err(FormatError::TrailingBytes {
                what: "page",
                count: (bytes.len() - r.pos) as u64,
            });
        }
        let page = Page { extents, next };
        page.validate_next()?;
        Ok(page)
    }

    /// Encodes the content of a compact page. A data entry with
    /// `inline_ops` = `Some(at)` carries `ops_pool[at..at + ops_len]` inline;
    /// one with `None` must have [`PACKED_OPS`] in its codec byte.
    ///
    /// # Panics
    /// If an inline range lies outside `ops_pool`, or an entry's inline
    /// state and its codec byte disagree: both are the caller's bugs.
    pub fn emit_compact(&self, ops_pool: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put(&mut out, &(self.extents.len() as u32));
        for e in &self.extents {
            match *e {
                Extent::Copy { len, delta } => {
                    put(&mut out, &0u32);
                    put(&mut out, &len);
                    put(&mut out, &delta);
                }
                Extent::Zero { len } => {
                    put(&mut out, &1u32);
                    put(&mut out, &len);
                }
                Extent::Data(s) => {
                    put(&mut out, &2u32);
                    put(&mut out, &s.new_len);
                    out.push(s.codec);
                    put(&mut out, &s.ops_len);
                    match s.inline_ops {
                        Some(at) => {
                            assert_eq!(s.codec & PACKED_OPS, 0, "inline ops are not packed");
                            let at = at as usize;
                            out.extend_from_slice(&ops_pool[at..at + s.ops_len as usize]);
                        }
                        None => assert_ne!(s.codec & PACKED_OPS, 0, "payload ops are packed"),
                    }
                    put(&mut out, &s.data_len);
                    out.extend_from_slice(&s.hash[..SHORT_HASH_LEN]);
                }
            }
        }
        put(&mut out, &self.next);
        out
    }

    fn validate_next(&self) -> Result<(), FormatError> {
        if let Some(next) = self.next {
            if next.len == 0 {
                return Err(FormatError::ZeroLength {
                    field: "page.next.len",
                });
            }
            if next.len > MAX_PAGE_LEN {
                return Err(FormatError::TooLarge {
                    field: "page.next.len",
                    got: next.len.into(),
                    max: MAX_PAGE_LEN.into(),
                });
            }
        }
        Ok(())
    }
}

/// Appends the postcard encoding of one value.
fn put<T: Serialize>(out: &mut Vec<u8>, value: &T) {
    let mut buf = [0u8; 48];
    let used = postcard::to_slice(value, &mut buf).expect("a field encodes in at most 48 bytes");
    out.extend_from_slice(used);
}

/// Reads postcard fields one at a time, for layouts serde cannot describe.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, FormatError> {
        let (v, rest) = postcard::take_from_bytes::<T>(&self.bytes[self.pos..])
            .map_err(|_| FormatError::Malformed { what: "page" })?;
        self.pos = self.bytes.len() - rest.len();
        Ok(v)
    }

    fn skip(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(FormatError::Malformed { what: "page" })?;
        let at = self.pos;
        self.pos = end;
        Ok(&self.bytes[at..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table() {
        let page = Page {
            extents: alloc::vec![
                Extent::Copy {
                    len: 4096,
                    delta: -1
                },
                Extent::Zero { len: 1 },
                Extent::Data(SegmentEntry {
                    new_len: 2,
                    codec: 0,
                    ops_len: 2,
                    data_len: 2,
                    hash: [0xAA; 32],
                    inline_ops: None,
                }),
            ],
            next: None,
        };
        let bytes = page.emit();
        // count 3 | tag 0, len 4096 = 0x80 0x20, delta -1 = zigzag 1 | tag 1, len 1 | tag 2 ...
        assert_eq!(
            &bytes[..8],
            &[0x03, 0x00, 0x80, 0x20, 0x01, 0x01, 0x01, 0x02]
        );
        assert_eq!(&bytes[8..12], &[0x02, 0x00, 0x02, 0x02]);
        assert_eq!(&bytes[12..44], &[0xAA; 32]);
        assert_eq!(&bytes[44..], &[0x00]);
        assert_eq!(Page::parse(&bytes), Ok(page));
    }

    #[test]
    fn compact_byte_table() {
        let mut hash = [0u8; 32];
        hash[..SHORT_HASH_LEN].copy_from_slice(&[0xBB; SHORT_HASH_LEN]);
        let inline = SegmentEntry {
            new_len: 5,
            codec: 0x01,
            ops_len: 2,
            data_len: 9,
            hash,
            inline_ops: Some(1),
        };
        let packed = SegmentEntry {
            codec: 0x81,
            inline_ops: None,
            ..inline
        };
        let page = Page {
            extents: alloc::vec![
                Extent::Zero { len: 1 },
                Extent::Data(inline),
                Extent::Data(packed)
            ],
            next: None,
        };
        // The pool holds the first segment's ops, `Literal { len: 5 }`, at 1.
        let bytes = page.emit_compact(&[0xFF, 0x01, 0x05]);
        // count 3 | tag 1, len 1 | tag 2, new_len 5, codec 0x01, ops_len 2, ops 01 05, data_len 9, hash
        assert_eq!(
            &bytes[..10],
            &[0x03, 0x01, 0x01, 0x02, 0x05, 0x01, 0x02, 0x01, 0x05, 0x09]
        );
        assert_eq!(&bytes[10..26], &[0xBB; 16]);
        // tag 2, new_len 5, codec 0x81, ops_len 2 (in the payload), data_len 9, hash | next none
        assert_eq!(&bytes[26..31], &[0x02, 0x05, 0x81, 0x02, 0x09]);
        assert_eq!(&bytes[31..47], &[0xBB; 16]);
        assert_eq!(&bytes[47..], &[0x00]);
        let parsed = Page::parse_compact(&bytes).expect("valid");
        let Extent::Data(first) = parsed.extents[1] else {
            panic!("a data extent")
        };
        assert_eq!(first.inline_ops, Some(7));
        assert_eq!(&bytes[7..9], &[0x01, 0x05]);
        assert_eq!((first.payload_len(), packed.payload_len()), (9, 11));
        assert_eq!(parsed.extents[2], Extent::Data(packed));
        // Truncated inline ops, a bad tag and trailing bytes are refused.
        assert!(Page::parse_compact(&bytes[..8]).is_err());
        assert!(Page::parse_compact(&[0x01, 0x04, 0x01, 0x00]).is_err());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            Page::parse_compact(&trailing),
            Err(FormatError::TrailingBytes { .. })
        ));
    }

    #[test]
    fn refuses_hostile_counts_and_zero_lengths() {
        // A count of 2^32-1 is refused before any decoding.
        let bytes = [0xFF, 0xFF, 0xFF, 0xFF, 0x0F];
        assert!(matches!(
            Page::parse(&bytes),
            Err(FormatError::TooLarge { .. })
        ));
        let zero = Page {
            extents: alloc::vec![Extent::Zero { len: 0 }],
            next: None,
        }
        .emit();
        assert!(matches!(
            Page::parse(&zero),
            Err(FormatError::ZeroLength { .. })
        ));
        let mut trailing = Page {
            extents: alloc::vec![],
            next: None,
        }
        .emit();
        trailing.push(0);
        assert!(matches!(
            Page::parse(&trailing),
            Err(FormatError::TrailingBytes { .. })
        ));
    }
}
