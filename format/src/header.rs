//! The header: everything an applier needs to know before it reads old data.
//!
//! The header section is `preamble | body | header_hash`, where `body` is the
//! postcard encoding of [`Header`] (field order below is the wire order) and
//! `header_hash` is BLAKE3 of the preamble and body together.

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::{
    Codec, FormatError, Hash, Preamble, PreambleRepr, HASH_LEN, MAX_PAGE_LEN, MAX_PRODUCER_LEN,
    MAX_SEGMENT_LEN, PREAMBLE_LEN, TRAILER_LEN, VERSION_MAJOR, VERSION_MINOR,
};

/// Where the next page is and what it must hash to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRef {
    /// Encoded length of the page, 1..=[`MAX_PAGE_LEN`].
    pub len: u32,
    /// BLAKE3 of the encoded page.
    pub hash: Hash,
}

/// The header body. Field order is wire order; later minor versions may only
/// append fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Length of the old (base) file in bytes.
    pub old_len: u64,
    /// Length of the new file in bytes.
    pub new_len: u64,
    /// BLAKE3 of the whole old file.
    pub old_hash: Hash,
    /// BLAKE3 of the whole new file.
    pub new_hash: Hash,
    /// The block size the producer matched with (a power of two, informational).
    pub block_size: u32,
    /// The largest `new_len` of any data segment in this patch.
    pub segment_max: u32,
    /// The codec most data segments use, as a [`Codec`] byte. Must be a known codec.
    pub codec: u8,
    /// Optional flags, such as [`crate::FLAG_IN_PLACE_SAFE`]. Unknown bits are ignored.
    pub flags: u32,
    /// Length of the whole patch file, trailer included.
    pub patch_len: u64,
    /// Number of extents in all pages.
    pub extent_count: u64,
    /// Number of data segments in all pages.
    pub segment_count: u64,
    /// The first page.
    pub first_page: PageRef,
    /// Producer name and version, such as `anypatch-mkpatch 0.1.0`.
    pub producer: String,
}

impl Header {
    /// Parses a header body. A body from the same or an older minor version
    /// must end exactly; a newer minor may have appended fields, which are skipped.
    pub fn parse(body: &[u8], minor: u16) -> Result<Self, FormatError> {
        let (header, rest): (Header, &[u8]) =
            postcard::take_from_bytes(body).map_err(|_| FormatError::Malformed {
                what: "header body",
            })?;
        // Written so it stays right when VERSION_MINOR grows.
        #[allow(clippy::absurd_extreme_comparisons)]
        let same_or_older = minor <= VERSION_MINOR;
        if !rest.is_empty() && same_or_older {
            return Err(FormatError::TrailingBytes {
                what: "header body",
                count: rest.len() as u64,
            });
        }
        header.validate()?;
        Ok(header)
    }

    /// Checks the limits the spec puts on header fields.
    pub fn validate(&self) -> Result<(), FormatError> {
        if !self.block_size.is_power_of_two() || !(0x200..=0x10_0000).contains(&self.block_size) {
            return Err(FormatError::Invalid {
                field: "block_size",
                reason: "is not a power of two in 512..=1 MiB",
            });
        }
        if self.segment_max > MAX_SEGMENT_LEN {
            return Err(FormatError::TooLarge {
                field: "segment_max",
                got: self.segment_max.into(),
                max: MAX_SEGMENT_LEN.into(),
            });
        }
        Codec::try_from(self.codec)?;
        if self.first_page.len == 0 {
            return Err(FormatError::ZeroLength {
                field: "first_page.len",
            });
        }
        if self.first_page.len > MAX_PAGE_LEN {
            return Err(FormatError::TooLarge {
                field: "first_page.len",
                got: self.first_page.len.into(),
                max: MAX_PAGE_LEN.into(),
            });
        }
        if self.producer.len() > MAX_PRODUCER_LEN {
            return Err(FormatError::TooLarge {
                field: "producer",
                got: self.producer.len() as u64,
                max: MAX_PRODUCER_LEN as u64,
            });
        }
        if self.segment_count > self.extent_count {
            return Err(FormatError::Invalid {
                field: "segment_count",
                reason: "is larger than extent_count",
            });
        }
        Ok(())
    }

    /// Length of the postcard body.
    pub fn encoded_len(&self) -> usize {
        self.body().len()
    }

    fn body(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("serializing into a Vec cannot fail")
    }

    /// Emits the whole header section: preamble, body and header hash.
    /// `signature_len` is the length of the signature block that follows.
    pub fn emit(&self, required_features: u32, signature_len: u32) -> Vec<u8> {
        let body = self.body();
        let preamble = PreambleRepr {
            major: VERSION_MAJOR,
            minor: VERSION_MINOR,
            required_features,
            header_len: u32::try_from(body.len()).expect("a header body is far below 4 GiB"),
            signature_len,
        };
        let mut pre = [0u8; PREAMBLE_LEN];
        preamble.emit(&mut pre);
        let mut out = Vec::with_capacity(PREAMBLE_LEN + body.len() + HASH_LEN);
        out.extend_from_slice(&pre);
        out.extend_from_slice(&body);
        let check = header_hash(&pre, &body);
        out.extend_from_slice(&check);
        out
    }

    /// Sets [`Header::patch_len`] for a patch whose signature block is
    /// `signature_len` bytes and whose pages and payloads are `body_len`
    /// bytes in all, and returns the header section emitted with it (as
    /// [`Header::emit`]). Every writer of patches calls this: `patch_len` is
    /// a varint inside the header it measures, so its own length counts, and
    /// only a fixed point is right. The length only grows from 0, so this
    /// takes two or three rounds, and the same inputs always give the same
    /// bytes.
    pub fn settle_patch_len(
        &mut self,
        required_features: u32,
        signature_len: u32,
        body_len: u64,
    ) -> Vec<u8> {
        self.patch_len = 0;
        loop {
            let bytes = self.emit(required_features, signature_len);
            let total = ((bytes.len() + TRAILER_LEN) as u64)
                .saturating_add(u64::from(signature_len))
                .saturating_add(body_len);
            if total == self.patch_len {
                return bytes;
            }
            self.patch_len = total;
        }
    }
}

/// Parses a whole header section (preamble, header body, header hash) in
/// the order of spec section 6.1: the preamble's lengths, the header hash,
/// then the major version and must-understand features, then the body.
/// `section` must be exactly the section's bytes. This is the one place
/// that decides whether a header is intact and understood.
pub fn parse_header_section(section: &[u8]) -> Result<(PreambleRepr, Header), FormatError> {
    let pre = PreambleRepr::parse(&Preamble::new_checked(section)?)?;
    let body_end = PREAMBLE_LEN + pre.header_len as usize;
    let want = body_end + HASH_LEN;
    if section.len() != want {
        return Err(FormatError::Truncated {
            what: "header section",
            needed: want as u64,
            got: section.len() as u64,
        });
    }
    if header_hash(&section[..PREAMBLE_LEN], &section[PREAMBLE_LEN..body_end])[..]
        != section[body_end..]
    {
        return Err(FormatError::HeaderHashMismatch);
    }
    pre.check_version()?;
    let header = Header::parse(&section[PREAMBLE_LEN..body_end], pre.minor)?;
    Ok((pre, header))
}

/// BLAKE3 over the preamble and header body: the header hash field.
pub fn header_hash(preamble: &[u8], body: &[u8]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(preamble);
    h.update(body);
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Preamble, MAGIC};

    pub(crate) fn sample() -> Header {
        Header {
            old_len: 5 << 30,
            new_len: 3,
            old_hash: [1; 32],
            new_hash: [2; 32],
            block_size: 4096,
            segment_max: 0,
            codec: 1,
            flags: 0,
            patch_len: 200,
            extent_count: 1,
            segment_count: 0,
            first_page: PageRef {
                len: 4,
                hash: [3; 32],
            },
            producer: "test 1".into(),
        }
    }

    #[test]
    fn round_trip() {
        let h = sample();
        let bytes = h.emit(0, 0);
        assert_eq!(&bytes[..8], &MAGIC);
        let pre = PreambleRepr::parse(&Preamble::new_checked(&bytes[..]).expect("long enough"))
            .expect("valid");
        let body = &bytes[PREAMBLE_LEN..PREAMBLE_LEN + pre.header_len as usize];
        assert_eq!(Header::parse(body, pre.minor), Ok(h.clone()));
        assert_eq!(body.len(), h.encoded_len());
        // old_len 5 GiB is a five-byte varint: 0x80 0x80 0x80 0x80 0x14.
        assert_eq!(&body[..5], &[0x80, 0x80, 0x80, 0x80, 0x14]);
    }

    /// Found while merging the three copies of this loop: two fixed rounds
    /// (what the test builders did) leave `patch_len` one byte short when
    /// the second round pushes its varint over a length boundary.
    #[test]
    fn patch_len_counts_its_own_varint() {
        let mut h = sample();
        let sig = 72;
        let fixed = h.emit(0, sig).len() as u64 - 1 + u64::from(sig) + TRAILER_LEN as u64;
        // Bodies around the 2- to 3-byte (2^14) and 3- to 4-byte (2^21)
        // varint boundaries of the whole length, and far from them.
        for edge in [1u64 << 14, 1 << 21, 1 << 28] {
            for body in edge.saturating_sub(fixed + 8)..edge.saturating_sub(fixed) + 8 {
                let bytes = h.settle_patch_len(0, sig, body);
                assert_eq!(bytes, h.emit(0, sig), "the bytes carry the settled length");
                let total = bytes.len() as u64 + u64::from(sig) + body + TRAILER_LEN as u64;
                assert_eq!(h.patch_len, total, "body {body}");
            }
        }
        h.settle_patch_len(0, 0, 1 << 40);
        let again = h.clone().settle_patch_len(0, 0, 1 << 40);
        assert_eq!(h.emit(0, 0), again, "deterministic");
    }

    #[test]
    fn trailing_bytes_only_from_newer_minor() {
        let mut body = postcard::to_allocvec(&sample()).expect("vec");
        body.push(0);
        assert!(matches!(
            Header::parse(&body, VERSION_MINOR),
            Err(FormatError::TrailingBytes { .. })
        ));
        assert!(Header::parse(&body, VERSION_MINOR + 1).is_ok());
    }
}
