//! Pages: the manifest, split into a hash chain so that an applier holds one
//! page at a time. Each page lists extents of the new file in order and names
//! the next page by length and BLAKE3.

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::{
    Codec, FormatError, Hash, PageRef, MAX_OPS_LEN, MAX_PAGE_EXTENTS, MAX_PAGE_LEN, MAX_SEGMENT_LEN,
};

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
    /// BLAKE3 of the `new_len` bytes the segment produces.
    pub hash: Hash,
}

impl SegmentEntry {
    /// Length of the payload in the patch: ops block then data block.
    pub fn payload_len(&self) -> u64 {
        u64::from(self.ops_len) + u64::from(self.data_len)
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
        if let Some(next) = page.next {
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
                    hash: [0xAA; 32]
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
