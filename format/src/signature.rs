//! The signature block: Ed25519 signatures over the header section.
//!
//! The block follows the header hash and is `signature_len` bytes long
//! (zero in an unsigned patch). Its layout:
//!
//! | offset         | size | field        |
//! |----------------|------|--------------|
//! | 0x00           | 1    | count, 1..=[`MAX_SIGNATURES`] |
//! | 0x01 + 97·i    | 1    | algorithm, [`SIG_ALG_ED25519`] |
//! | 0x02 + 97·i    | 32   | public key   |
//! | 0x22 + 97·i    | 64   | signature    |
//!
//! Each signature is over [`SIGNATURE_CONTEXT`] followed by the whole header
//! section (preamble, header body, header hash). The header holds the hash
//! of the first page, each page the hash of the next and of every data
//! segment's output, so one signature pins every byte the apply produces.

use alloc::vec::Vec;

use crate::FormatError;

/// Algorithm byte for Ed25519 (RFC 8032, verified strictly).
pub const SIG_ALG_ED25519: u8 = 0x01;
/// Most signatures in one block.
pub const MAX_SIGNATURES: usize = 0x08;
/// Length of one entry: algorithm, public key, signature.
pub const SIGNATURE_ENTRY_LEN: usize = 1 + 32 + 64;
/// Domain separation: signed messages start with these bytes, so a patch
/// signature can never be mistaken for a signature over anything else.
pub const SIGNATURE_CONTEXT: &[u8] = b"anypatch-v1 header signature\0";

/// One signature entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignatureEntry {
    pub algorithm: u8,
    pub public_key: [u8; 32],
    pub signature: [u8; 64],
}

/// A decoded signature block.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SignatureBlock {
    pub entries: Vec<SignatureEntry>,
}

impl SignatureBlock {
    /// Length of the block that holds `count` signatures.
    pub const fn encoded_len_for(count: usize) -> usize {
        if count == 0 {
            0
        } else {
            1 + count * SIGNATURE_ENTRY_LEN
        }
    }

    /// Parses a signature block. An empty block means an unsigned patch.
    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        let Some((&count, rest)) = bytes.split_first() else {
            return Ok(Self::default());
        };
        let count = count as usize;
        if count == 0 {
            return Err(FormatError::ZeroLength {
                field: "signature count",
            });
        }
        if count > MAX_SIGNATURES {
            return Err(FormatError::TooLarge {
                field: "signature count",
                got: count as u64,
                max: MAX_SIGNATURES as u64,
            });
        }
        if rest.len() != count * SIGNATURE_ENTRY_LEN {
            return Err(FormatError::Invalid {
                field: "signature_len",
                reason: "does not match the signature count",
            });
        }
        let entries = rest
            .chunks_exact(SIGNATURE_ENTRY_LEN)
            .map(|e| {
                let mut public_key = [0u8; 32];
                let mut signature = [0u8; 64];
                public_key.copy_from_slice(&e[1..33]);
                signature.copy_from_slice(&e[33..]);
                SignatureEntry {
                    algorithm: e[0],
                    public_key,
                    signature,
                }
            })
            .collect();
        Ok(Self { entries })
    }

    /// Length of [`SignatureBlock::emit`]'s output.
    pub fn encoded_len(&self) -> usize {
        Self::encoded_len_for(self.entries.len())
    }

    /// Encodes the block; nothing for an unsigned patch.
    pub fn emit(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        if self.entries.is_empty() {
            return out;
        }
        out.push(self.entries.len() as u8);
        for e in &self.entries {
            out.push(e.algorithm);
            out.extend_from_slice(&e.public_key);
            out.extend_from_slice(&e.signature);
        }
        out
    }
}

impl SignatureEntry {
    /// Whether this is a valid Ed25519 signature (verified strictly: no
    /// malleable or small-order encodings) over [`signed_message`] of `header_section`.
    pub fn verifies(&self, header_section: &[u8]) -> bool {
        self.algorithm == SIG_ALG_ED25519
            && ed25519_dalek::VerifyingKey::from_bytes(&self.public_key).is_ok_and(|key| {
                key.verify_strict(
                    &signed_message(header_section),
                    &ed25519_dalek::Signature::from_bytes(&self.signature),
                )
                .is_ok()
            })
    }
}

/// The bytes a signature is over: [`SIGNATURE_CONTEXT`], then the header section.
pub fn signed_message(header_section: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNATURE_CONTEXT.len() + header_section.len());
    message.extend_from_slice(SIGNATURE_CONTEXT);
    message.extend_from_slice(header_section);
    message
}

/// A short, stable name for a public key: hex of the first 8 bytes of its BLAKE3.
pub fn key_id(public_key: &[u8; 32]) -> [u8; 8] {
    let mut id = [0u8; 8];
    id.copy_from_slice(&blake3::hash(public_key).as_bytes()[..8]);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let block = SignatureBlock {
            entries: alloc::vec![SignatureEntry {
                algorithm: SIG_ALG_ED25519,
                public_key: [7; 32],
                signature: [9; 64]
            }],
        };
        let bytes = block.emit();
        assert_eq!(bytes.len(), 98);
        assert_eq!(&bytes[..3], &[0x01, 0x01, 0x07]);
        assert_eq!(SignatureBlock::parse(&bytes), Ok(block));
        assert!(SignatureBlock::parse(&bytes[..97]).is_err());
        assert!(SignatureBlock::parse(&[0x00]).is_err());
        assert!(SignatureBlock::parse(&[0x09]).is_err());
        assert_eq!(SignatureBlock::parse(&[]), Ok(SignatureBlock::default()));
    }
}
