//! A data segment's payload: an ops block, then a data block.
//!
//! The ops block is a sequence of postcard-encoded [`Op`]s, `ops_len` bytes in
//! all. The data block, once decoded by its [`Codec`], holds the bytes that
//! `Literal` and `Delta` ops consume, in op order.

use serde::{Deserialize, Serialize};

use crate::FormatError;

/// How a data block is coded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    /// 0x00: the bytes as they are.
    Stored = 0x00,
    /// 0x01: one standard zstd frame, window at most [`crate::MAX_ZSTD_WINDOW`].
    Zstd = 0x01,
}

impl TryFrom<u8> for Codec {
    type Error = FormatError;
    fn try_from(v: u8) -> Result<Self, FormatError> {
        match v {
            0x00 => Ok(Codec::Stored),
            0x01 => Ok(Codec::Zstd),
            got => Err(FormatError::UnknownCodec { got }),
        }
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
            Codec::try_from(2),
            Err(FormatError::UnknownCodec { got: 2 })
        );
    }
}
