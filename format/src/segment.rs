//! A data segment's payload: an ops block, then a data block.
//!
//! The ops block is a sequence of postcard-encoded [`Op`]s, `ops_len` bytes in
//! all. The data block, once decoded by its [`Codec`], holds the bytes that
//! `Literal` and `Delta` ops consume, in op order.

use serde::{Deserialize, Serialize};

use crate::{FormatError, MAX_PREFIX_LEN};

/// Bit of a segment entry's codec byte (version 1.1,
/// [`crate::FEATURE_PACKED_OPS`]): the `ops_len` bytes of the ops block are
/// one zstd frame (window at most [`crate::MAX_ZSTD_WINDOW`]) that decodes
/// to the ops, at most [`crate::MAX_OPS_LEN`] bytes. The other seven bits
/// are the data block's [`Codec`].
pub const PACKED_OPS: u8 = 0x80;

/// How a data block is coded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    /// 0x00: the bytes as they are.
    Stored = 0x00,
    /// 0x01: one standard zstd frame, window at most [`crate::MAX_ZSTD_WINDOW`].
    Zstd = 0x01,
    /// 0x02 (version 1.1, [`crate::FEATURE_OLD_PREFIX`]): a [`PrefixRef`],
    /// then one zstd frame whose history is those old bytes, as with the
    /// reference encoder's `ZSTD_CCtx_refPrefix`.
    ZstdPrefix = 0x02,
    /// 0x03 (version 1.3, [`crate::FEATURE_DATA_HISTORY`]): one zstd frame
    /// that declares its content size, whose history is the last bytes of
    /// the data history: the decoded data of the patch's earlier codec 0x03
    /// segments, at most [`crate::MAX_HISTORY_LEN`] minus this frame's size.
    ZstdHistory = 0x03,
}

impl Codec {
    /// The data codec and whether the ops block is packed, from a segment
    /// entry's codec byte.
    pub fn split(byte: u8) -> Result<(Self, bool), FormatError> {
        Ok((Self::try_from(byte & !PACKED_OPS)?, byte & PACKED_OPS != 0))
    }
}

impl TryFrom<u8> for Codec {
    type Error = FormatError;
    fn try_from(v: u8) -> Result<Self, FormatError> {
        match v {
            0x00 => Ok(Codec::Stored),
            0x01 => Ok(Codec::Zstd),
            0x02 => Ok(Codec::ZstdPrefix),
            0x03 => Ok(Codec::ZstdHistory),
            got => Err(FormatError::UnknownCodec { got }),
        }
    }
}

/// The head of a [`Codec::ZstdPrefix`] data block: the frame after it is
/// decoded with old bytes `[segment_offset + delta, + len)` as its prefix
/// (a raw-content dictionary with the default repeat offsets 1, 4, 8).
/// Encoded as postcard: `delta` zigzag varint, then `len` varint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixRef {
    pub delta: i64,
    /// 1..=[`MAX_PREFIX_LEN`].
    pub len: u32,
}

impl PrefixRef {
    /// Appends the encoding to `out`.
    pub fn emit(&self, out: &mut alloc::vec::Vec<u8>) {
        let mut buf = [0u8; 16];
        let used = postcard::to_slice(self, &mut buf).expect("a prefix ref encodes in 15 bytes");
        out.extend_from_slice(used);
    }

    /// Splits a `ZstdPrefix` data block into its prefix ref and the frame.
    pub fn parse(block: &[u8]) -> Result<(Self, &[u8]), FormatError> {
        let (r, frame) = postcard::take_from_bytes::<Self>(block)
            .map_err(|_| FormatError::Malformed { what: "prefix ref" })?;
        if r.len == 0 {
            return Err(FormatError::ZeroLength {
                field: "prefix.len",
            });
        }
        if r.len > MAX_PREFIX_LEN {
            return Err(FormatError::TooLarge {
                field: "prefix.len",
                got: r.len.into(),
                max: MAX_PREFIX_LEN.into(),
            });
        }
        Ok((r, frame))
    }
}

/// One operation of a data segment. Sources are `op_offset + delta`, where
/// `op_offset` is the new-file offset of the op's first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Tag 0: copy `len` old bytes.
    Copy { len: u32, delta: i64 },
    /// Tag 1: take `len` bytes from the data block.
    Literal { len: u32 },
    /// Tag 2: take `len` bytes from the data block and add old bytes to them,
    /// bytewise, wrapping (bsdiff's trick: near matches become mostly zeros).
    Delta { len: u32, delta: i64 },
    /// Tag 3: `len` zero bytes.
    Zero { len: u32 },
}

impl Op {
    /// New bytes this op produces.
    pub fn len(&self) -> u32 {
        match *self {
            Op::Copy { len, .. }
            | Op::Literal { len }
            | Op::Delta { len, .. }
            | Op::Zero { len } => len,
        }
    }

    /// Always false for a valid op; present for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes this op takes from the data block.
    pub fn data_len(&self) -> u32 {
        match *self {
            Op::Literal { len } | Op::Delta { len, .. } => len,
            Op::Copy { .. } | Op::Zero { .. } => 0,
        }
    }

    /// Appends the op's encoding to `out`.
    pub fn emit(&self, out: &mut alloc::vec::Vec<u8>) {
        let mut buf = [0u8; 24];
        let used = postcard::to_slice(self, &mut buf).expect("an op encodes in at most 16 bytes");
        out.extend_from_slice(used);
    }
}

/// Iterates over an ops block without allocating. Yields an error, then
/// stops, at the first op that does not decode or has zero length.
#[derive(Debug, Clone)]
pub struct OpIter<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> OpIter<'a> {
    pub fn new(ops_block: &'a [u8]) -> Self {
        Self {
            rest: ops_block,
            failed: false,
        }
    }

    /// Bytes of the ops block not yet decoded.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }
}

impl Iterator for OpIter<'_> {
    type Item = Result<Op, FormatError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        let item = match postcard::take_from_bytes::<Op>(self.rest) {
            Ok((op, rest)) if !op.is_empty() => {
                self.rest = rest;
                Ok(op)
            }
            Ok(_) => Err(FormatError::ZeroLength { field: "op.len" }),
            Err(_) => Err(FormatError::Malformed { what: "ops block" }),
        };
        self.failed = item.is_err();
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn byte_table() {
        let mut out = Vec::new();
        Op::Copy { len: 1, delta: 1 }.emit(&mut out);
        Op::Literal { len: 300 }.emit(&mut out);
        Op::Delta { len: 2, delta: -2 }.emit(&mut out);
        Op::Zero { len: 5 }.emit(&mut out);
        assert_eq!(
            out,
            [0x00, 0x01, 0x02, 0x01, 0xAC, 0x02, 0x02, 0x02, 0x03, 0x03, 0x05]
        );
        let ops: Result<Vec<_>, _> = OpIter::new(&out).collect();
        assert_eq!(ops.expect("valid").len(), 4);
    }

    #[test]
    fn refuses_bad_ops() {
        assert!(OpIter::new(&[0x01, 0x00]).any(|r| r.is_err()));
        assert!(OpIter::new(&[0x07, 0x01]).any(|r| r.is_err()));
        assert!(OpIter::new(&[0x00]).any(|r| r.is_err()));
        assert_eq!(
            Codec::try_from(4),
            Err(FormatError::UnknownCodec { got: 4 })
        );
    }

    #[test]
    fn codec_byte_splits() {
        assert_eq!(Codec::split(0x01), Ok((Codec::Zstd, false)));
        assert_eq!(Codec::split(0x82), Ok((Codec::ZstdPrefix, true)));
        assert_eq!(Codec::split(0x83), Ok((Codec::ZstdHistory, true)));
        assert!(Codec::split(0x84).is_err());
        assert!(Codec::try_from(0x80).is_err());
    }

    #[test]
    fn prefix_ref_byte_table() {
        let mut out = Vec::new();
        PrefixRef {
            delta: -1,
            len: 300,
        }
        .emit(&mut out);
        out.push(0x28);
        assert_eq!(out, [0x01, 0xAC, 0x02, 0x28]);
        let (r, rest) = PrefixRef::parse(&out).expect("valid");
        assert_eq!((r.delta, r.len, rest), (-1, 300, &[0x28][..]));
        assert!(PrefixRef::parse(&[0x00, 0x00]).is_err());
        assert!(PrefixRef::parse(&[0x00, 0x81, 0x80, 0x80, 0x02]).is_err()); // 4 MiB + 1
        assert!(PrefixRef::parse(&[0x00]).is_err());
    }
}
