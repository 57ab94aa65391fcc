//! The fixed 24-byte preamble.
//!
//! | offset | size | field             | encoding  |
//! |--------|------|-------------------|-----------|
//! | 0x00   | 8    | magic             | [`MAGIC`] |
//! | 0x08   | 2    | major             | u16 LE    |
//! | 0x0A   | 2    | minor             | u16 LE    |
//! | 0x0C   | 4    | required_features | u32 LE    |
//! | 0x10   | 4    | header_len        | u32 LE    |
//! | 0x14   | 4    | signature_len     | u32 LE    |

use crate::{
    FormatError, KNOWN_REQUIRED_FEATURES, MAGIC, MAX_HEADER_LEN, MAX_SIGNATURE_LEN, PREAMBLE_LEN,
    VERSION_MAJOR,
};

mod field {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0x00..0x08;
    pub const MAJOR: Range<usize> = 0x08..0x0A;
    pub const MINOR: Range<usize> = 0x0A..0x0C;
    pub const REQUIRED: Range<usize> = 0x0C..0x10;
    pub const HEADER_LEN: Range<usize> = 0x10..0x14;
    pub const SIGNATURE_LEN: Range<usize> = 0x14..0x18;
}

/// A checked view over the preamble bytes. After [`Preamble::new_checked`]
/// succeeds, no accessor panics.
#[derive(Debug, Clone, Copy)]
pub struct Preamble<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Preamble<T> {
    /// Wraps `buffer` after checking it holds at least [`PREAMBLE_LEN`] bytes.
    /// Extra bytes after the preamble are ignored by the accessors.
    pub fn new_checked(buffer: T) -> Result<Self, FormatError> {
        let got = buffer.as_ref().len();
        if got < PREAMBLE_LEN {
            return Err(FormatError::Truncated {
                what: "preamble",
                needed: PREAMBLE_LEN as u64,
                got: got as u64,
            });
        }
        Ok(Self { buffer })
    }

    fn array<const N: usize>(&self, range: core::ops::Range<usize>) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buffer.as_ref()[range]);
        out
    }

    pub fn magic(&self) -> [u8; 8] {
        self.array(field::MAGIC)
    }
    pub fn major(&self) -> u16 {
        u16::from_le_bytes(self.array(field::MAJOR))
    }
    pub fn minor(&self) -> u16 {
        u16::from_le_bytes(self.array(field::MINOR))
    }
    pub fn required_features(&self) -> u32 {
        u32::from_le_bytes(self.array(field::REQUIRED))
    }
    pub fn header_len(&self) -> u32 {
        u32::from_le_bytes(self.array(field::HEADER_LEN))
    }
    pub fn signature_len(&self) -> u32 {
        u32::from_le_bytes(self.array(field::SIGNATURE_LEN))
    }
}

/// The preamble's fields, owned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreambleRepr {
    pub major: u16,
    pub minor: u16,
    pub required_features: u32,
    pub header_len: u32,
    pub signature_len: u32,
}

impl PreambleRepr {
    /// Parses a preamble and checks what is needed to find the end of the
    /// header section: the magic, then `header_len` and `signature_len`
    /// within their limits. The major version and the must-understand
    /// features are **not** checked here: the header hash covers them, so
    /// they are interpreted only after it matched ([`PreambleRepr::check_version`],
    /// called by [`crate::parse_header_section`]). A damaged version byte is
    /// then reported as damage, not as a patch from the future.
    ///
    /// A length beyond this version's limits in a patch of another major is
    /// reported as [`FormatError::UnsupportedMajor`]: another major may have
    /// other limits, and without the section its hash cannot be checked.
    pub fn parse<T: AsRef<[u8]>>(view: &Preamble<T>) -> Result<Self, FormatError> {
        if view.magic() != MAGIC {
            return Err(FormatError::BadMagic { got: view.magic() });
        }
        let repr = Self {
            major: view.major(),
            minor: view.minor(),
            required_features: view.required_features(),
            header_len: view.header_len(),
            signature_len: view.signature_len(),
        };
        let limit = |e: FormatError| {
            if repr.major == VERSION_MAJOR {
                e
            } else {
                FormatError::UnsupportedMajor {
                    got: repr.major,
                    supported: VERSION_MAJOR,
                }
            }
        };
        if repr.header_len == 0 {
            return Err(limit(FormatError::ZeroLength {
                field: "header_len",
            }));
        }
        if repr.header_len > MAX_HEADER_LEN {
            return Err(limit(FormatError::TooLarge {
                field: "header_len",
                got: repr.header_len.into(),
                max: MAX_HEADER_LEN.into(),
            }));
        }
        if repr.signature_len > MAX_SIGNATURE_LEN {
            return Err(limit(FormatError::TooLarge {
                field: "signature_len",
                got: repr.signature_len.into(),
                max: MAX_SIGNATURE_LEN.into(),
            }));
        }
        Ok(repr)
    }

    /// Refuses a major version or a must-understand feature this version
    /// does not know, major first. Call only after the header hash matched.
    pub fn check_version(&self) -> Result<(), FormatError> {
        if self.major != VERSION_MAJOR {
            return Err(FormatError::UnsupportedMajor {
                got: self.major,
                supported: VERSION_MAJOR,
            });
        }
        let unknown = self.required_features & !KNOWN_REQUIRED_FEATURES;
        if unknown != 0 {
            return Err(FormatError::UnknownRequiredFeatures { bits: unknown });
        }
        Ok(())
    }

    /// Always [`PREAMBLE_LEN`].
    pub const fn encoded_len(&self) -> usize {
        PREAMBLE_LEN
    }

    /// Writes the preamble into the first [`PREAMBLE_LEN`] bytes of `out`.
    pub fn emit(&self, out: &mut [u8; PREAMBLE_LEN]) {
        out[field::MAGIC].copy_from_slice(&MAGIC);
        out[field::MAJOR].copy_from_slice(&self.major.to_le_bytes());
        out[field::MINOR].copy_from_slice(&self.minor.to_le_bytes());
        out[field::REQUIRED].copy_from_slice(&self.required_features.to_le_bytes());
        out[field::HEADER_LEN].copy_from_slice(&self.header_len.to_le_bytes());
        out[field::SIGNATURE_LEN].copy_from_slice(&self.signature_len.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_byte_table() {
        let repr = PreambleRepr {
            major: 1,
            minor: 0,
            required_features: 0,
            header_len: 0x0123,
            signature_len: 0,
        };
        let mut out = [0u8; PREAMBLE_LEN];
        repr.emit(&mut out);
        assert_eq!(&out[..8], &MAGIC);
        assert_eq!(&out[8..12], &[0x01, 0x00, 0x00, 0x00]);
        assert_eq!(&out[16..20], &[0x23, 0x01, 0x00, 0x00]);
        let view = Preamble::new_checked(&out[..]).expect("24 bytes");
        assert_eq!(PreambleRepr::parse(&view), Ok(repr));
    }

    #[test]
    fn version_is_checked_apart_from_the_lengths() {
        let repr = PreambleRepr {
            major: 2,
            minor: 0,
            required_features: 0x80,
            header_len: 10,
            signature_len: 0,
        };
        let mut out = [0u8; PREAMBLE_LEN];
        repr.emit(&mut out);
        // The lengths are in limits: parse finds the section, the version waits.
        let view = Preamble::new_checked(&out[..]).expect("24 bytes");
        let parsed = PreambleRepr::parse(&view).expect("lengths in limits");
        assert_eq!(
            parsed.check_version(),
            Err(FormatError::UnsupportedMajor {
                got: 2,
                supported: 1
            })
        );
        let one = PreambleRepr { major: 1, ..repr };
        assert_eq!(
            one.check_version(),
            Err(FormatError::UnknownRequiredFeatures { bits: 0x80 })
        );
        // Out-of-limit lengths: damage in a major we know, "too new" otherwise.
        out[0x10..0x14].copy_from_slice(&(MAX_HEADER_LEN + 1).to_le_bytes());
        let view = Preamble::new_checked(&out[..]).expect("24 bytes");
        assert!(matches!(
            PreambleRepr::parse(&view),
            Err(FormatError::UnsupportedMajor { got: 2, .. })
        ));
        out[8] = 1;
        let view = Preamble::new_checked(&out[..]).expect("24 bytes");
        assert!(matches!(
            PreambleRepr::parse(&view),
            Err(FormatError::TooLarge {
                field: "header_len",
                ..
            })
        ));
        assert!(Preamble::new_checked(&out[..23]).is_err());
    }
}
