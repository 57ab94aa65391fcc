//! Reading an index front to back with bounded memory.
//!
//! [`IndexReader::new`] reads and checks the header; [`IndexReader::read_entries`]
//! hands out entries in batches; [`IndexReader::finish`] checks the trailer,
//! the signatures and that nothing follows. Memory is a fixed 64 KiB buffer
//! plus what the caller keeps: no allocation is sized from a count in the
//! file, and [`Limits`] refuses a block count over the caller's cap before
//! any entry is read.

use std::io::Read;

use anypatch_format::{SignatureBlock, MAX_SIGNATURES, SIGNATURE_ENTRY_LEN, SIG_ALG_ED25519};

use crate::{signed_message, BlockHashes, Header, IndexError, ENTRY_LEN, HEADER_LEN, TRAILER_LEN};

/// Entries decoded per read: 64 KiB of the file.
const BATCH: usize = 3276;

/// What a reader accepts. Start from [`Limits::default`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most blocks (entries) accepted.
    pub max_blocks: u64,
}

impl Limits {
    /// The default cap: 2^28 blocks, an image of 1 TiB at 4 KiB blocks, whose
    /// entries take 5 GiB.
    pub const DEFAULT_MAX_BLOCKS: u64 = 1 << 28;

    /// These limits with `max_blocks` set.
    pub fn with_max_blocks(self, max_blocks: u64) -> Self {
        Self { max_blocks }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_blocks: Self::DEFAULT_MAX_BLOCKS,
        }
    }
}

/// What [`IndexReader::finish`] checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The trailer: BLAKE3 of the header and every entry.
    pub content_hash: [u8; 32],
    /// Public keys of the signatures, all of which verified (empty when unsigned).
    pub signers: Vec<[u8; 32]>,
}

impl Verified {
    /// Whether `public_key` signed the index.
    pub fn signed_by(&self, public_key: &[u8; 32]) -> bool {
        self.signers.contains(public_key)
    }
}

/// A streaming reader over an index file.
#[derive(Debug)]
pub struct IndexReader<R> {
    inner: R,
    header: Header,
    header_bytes: [u8; HEADER_LEN],
    hasher: blake3::Hasher,
    /// Entries not yet read.
    remaining: u64,
    buf: Vec<u8>,
}

impl<R: Read> IndexReader<R> {
    /// Reads and checks the header (see [`Header::parse`]) and the block
    /// count against `limits`.
    pub fn new(mut inner: R, limits: &Limits) -> Result<Self, IndexError> {
        let mut header_bytes = [0u8; HEADER_LEN];
        let n = read_full(&mut inner, &mut header_bytes)?;
        if n < HEADER_LEN {
            // Cut short: a truncated index if what is there starts as one.
            let m = n.min(8);
            return Err(if header_bytes[..m] == crate::MAGIC[..m] {
                IndexError::Truncated { section: "header" }
            } else {
                IndexError::NotAnIndex
            });
        }
        let header = Header::parse(&header_bytes)?;
        let count = header.block_count();
        if count > limits.max_blocks {
            return Err(IndexError::TooLarge {
                field: "block count",
                got: count,
                max: limits.max_blocks,
            });
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update(&header_bytes);
        Ok(Self {
            inner,
            header,
            header_bytes,
            hasher,
            remaining: count,
            buf: vec![0u8; BATCH * ENTRY_LEN],
        })
    }

    /// The checked header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Entries not yet read.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Appends the next entries (at most a 64 KiB batch) to `out` and
    /// returns how many; 0 when all were read. Entries are not trusted
    /// until [`IndexReader::finish`] succeeds.
    pub fn read_entries(&mut self, out: &mut Vec<BlockHashes>) -> Result<usize, IndexError> {
        let n = self.remaining.min(BATCH as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        let bytes = &mut self.buf[..n * ENTRY_LEN];
        if read_full(&mut self.inner, bytes)? < bytes.len() {
            return Err(IndexError::Truncated { section: "entries" });
        }
        self.hasher.update(bytes);
        out.extend(bytes.chunks_exact(ENTRY_LEN).map(|e| {
            let mut entry = [0u8; ENTRY_LEN];
            entry.copy_from_slice(e);
            BlockHashes::parse(&entry)
        }));
        self.remaining -= n as u64;
        Ok(n)
    }

    /// Checks the trailer against what was read, every signature, and that
    /// the file ends there. Call after [`IndexReader::read_entries`] returned 0.
    pub fn finish(mut self) -> Result<Verified, IndexError> {
        if self.remaining > 0 {
            return Err(IndexError::Misuse {
                reason: "finish called before every entry was read",
            });
        }
        let mut trailer = [0u8; TRAILER_LEN];
        if read_full(&mut self.inner, &mut trailer)? < TRAILER_LEN {
            return Err(IndexError::Truncated { section: "trailer" });
        }
        let content_hash = *self.hasher.finalize().as_bytes();
        if trailer != content_hash {
            return Err(IndexError::ContentHash);
        }
        let mut signers = Vec::new();
        if self.header.is_signed() {
            let mut count = [0u8; 1];
            if read_full(&mut self.inner, &mut count)? < 1 {
                return Err(IndexError::Truncated {
                    section: "signature block",
                });
            }
            let n = usize::from(count[0]);
            if n == 0 || n > MAX_SIGNATURES {
                return Err(IndexError::Invalid {
                    field: "signature count",
                    reason: format!("is {n}; must be 1..={MAX_SIGNATURES}"),
                });
            }
            let mut block = vec![0u8; 1 + n * SIGNATURE_ENTRY_LEN];
            block[0] = count[0];
            if read_full(&mut self.inner, &mut block[1..])? < n * SIGNATURE_ENTRY_LEN {
                return Err(IndexError::Truncated {
                    section: "signature block",
                });
            }
            let parsed = SignatureBlock::parse(&block).map_err(|_| IndexError::BadSignature)?;
            let message = signed_message(&self.header_bytes, &content_hash);
            for e in &parsed.entries {
                let ok = e.algorithm == SIG_ALG_ED25519
                    && ed25519_dalek::VerifyingKey::from_bytes(&e.public_key).is_ok_and(|k| {
                        k.verify_strict(
                            &message,
                            &ed25519_dalek::Signature::from_bytes(&e.signature),
                        )
                        .is_ok()
                    });
                if !ok {
                    return Err(IndexError::BadSignature);
                }
                signers.push(e.public_key);
            }
        }
        let mut extra = [0u8; 1];
        if read_full(&mut self.inner, &mut extra)? > 0 {
            return Err(IndexError::TrailingBytes);
        }
        Ok(Verified {
            content_hash,
            signers,
        })
    }
}

/// A whole index, read and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    pub header: Header,
    /// One per block, in order.
    pub entries: Vec<BlockHashes>,
    pub verified: Verified,
}

/// Reads and verifies a whole index. The entries' vector grows only as
/// entries arrive (never from the declared count), up to `limits`.
pub fn read_index(r: impl Read, limits: &Limits) -> Result<Index, IndexError> {
    let mut reader = IndexReader::new(r, limits)?;
    let mut entries = Vec::new();
    while reader.read_entries(&mut entries)? > 0 {}
    let header = reader.header().clone();
    let verified = reader.finish()?;
    Ok(Index {
        header,
        entries,
        verified,
    })
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize, IndexError> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(IndexError::Io(e)),
        }
    }
    Ok(done)
}
