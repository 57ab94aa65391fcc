//! Writing an index front to back.

use std::io::Write;

use anypatch_format::{SignatureBlock, SignatureEntry, SIG_ALG_ED25519};
use ed25519_dalek::Signer as _;

use crate::{signed_message, BlockHashes, Header, IndexError, HEADER_LEN};

/// Writes an index: the header at once, entries as they come, the trailer
/// (and signature) at [`IndexWriter::finish`].
#[derive(Debug)]
pub struct IndexWriter<W: Write> {
    out: W,
    header_bytes: [u8; HEADER_LEN],
    signed: bool,
    sum: Sum,
    /// Entries still to come.
    remaining: u64,
}

/// How the trailer is made.
#[derive(Debug)]
enum Sum {
    /// Hashed from what is written.
    Hashing(Box<blake3::Hasher>),
    /// Given by the caller, who computed it before (see
    /// [`IndexWriter::with_content_hash`]).
    Known([u8; 32]),
}

impl<W: Write> IndexWriter<W> {
    /// Writes `header`. Exactly `header.block_count()` entries must follow.
    pub fn new(out: W, header: &Header) -> Result<Self, IndexError> {
        let header_bytes = header.emit();
        let mut hasher = blake3::Hasher::new();
        hasher.update(&header_bytes);
        Self::start(out, header, Sum::Hashing(Box::new(hasher)))
    }

    /// Writes `header`, for entries whose trailer, [`content_hash`] of this
    /// header and all of them, the caller computed before and kept where
    /// it cannot have changed (a checked cache entry): the entries are
    /// written without being hashed again. A wrong `content_hash` makes an
    /// index that every reader refuses, never a wrong one.
    pub fn with_content_hash(
        out: W,
        header: &Header,
        content_hash: [u8; 32],
    ) -> Result<Self, IndexError> {
        Self::start(out, header, Sum::Known(content_hash))
    }

    fn start(mut out: W, header: &Header, sum: Sum) -> Result<Self, IndexError> {
        let header_bytes = header.emit();
        out.write_all(&header_bytes)?;
        Ok(Self {
            out,
            header_bytes,
            signed: header.is_signed(),
            sum,
            remaining: header.block_count(),
        })
    }

    /// Writes the next entries, in block order.
    pub fn push(&mut self, entries: &[BlockHashes]) -> Result<(), IndexError> {
        let mut bytes = Vec::with_capacity(entries.len() * crate::ENTRY_LEN);
        for e in entries {
            bytes.extend_from_slice(&e.emit());
        }
        self.push_encoded(&bytes)
    }

    /// Writes the next entries already encoded ([`BlockHashes::emit`], in
    /// block order), as a cache keeps them: `bytes` is a whole number of
    /// entries.
    pub fn push_encoded(&mut self, bytes: &[u8]) -> Result<(), IndexError> {
        let n = (bytes.len() / crate::ENTRY_LEN) as u64;
        if bytes.len() % crate::ENTRY_LEN != 0 {
            return Err(IndexError::Misuse {
                reason: "encoded entries are a whole number of entries",
            });
        }
        if n > self.remaining {
            return Err(IndexError::Misuse {
                reason: "more entries than the header's block count",
            });
        }
        self.out.write_all(bytes)?;
        if let Sum::Hashing(h) = &mut self.sum {
            h.update(bytes);
        }
        self.remaining -= n;
        Ok(())
    }

    /// Writes the trailer and, for a signed header, the signature by the
    /// Ed25519 key with this 32-byte `seed`; returns the output and the
    /// trailer. Not flushed.
    pub fn finish(mut self, signing_seed: Option<&[u8; 32]>) -> Result<(W, [u8; 32]), IndexError> {
        if self.remaining != 0 {
            return Err(IndexError::Misuse {
                reason: "fewer entries than the header's block count",
            });
        }
        if self.signed != signing_seed.is_some() {
            return Err(IndexError::Misuse {
                reason: "a signing key is needed exactly when the header says signed",
            });
        }
        let content_hash = match &self.sum {
            Sum::Hashing(h) => *h.finalize().as_bytes(),
            Sum::Known(sum) => *sum,
        };
        self.out.write_all(&content_hash)?;
        if let Some(seed) = signing_seed {
            let key = ed25519_dalek::SigningKey::from_bytes(seed);
            let signature = key.sign(&signed_message(&self.header_bytes, &content_hash));
            let block = SignatureBlock {
                entries: vec![SignatureEntry {
                    algorithm: SIG_ALG_ED25519,
                    public_key: key.verifying_key().to_bytes(),
                    signature: signature.to_bytes(),
                }],
            };
            self.out.write_all(&block.emit())?;
        }
        Ok((self.out, content_hash))
    }
}

/// The trailer of an index with this `header` and these encoded `entries`:
/// BLAKE3 of both (spec/INDEX.md section 3.4).
pub fn content_hash(header: &Header, entries: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&header.emit());
    h.update(entries);
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{read_index, Limits};

    #[test]
    fn written_index_reads_back() {
        let image: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let seed = 5;
        let h = Header::new(
            image.len() as u64,
            *blake3::hash(&image).as_bytes(),
            4096,
            seed,
            true,
        );
        let entries: Vec<_> = image
            .chunks(4096)
            .map(|b| BlockHashes::of(b, seed))
            .collect();
        let mut w = IndexWriter::new(Vec::new(), &h).expect("header");
        w.push(&entries).expect("entries");
        let (bytes, _) = w.finish(Some(&[3; 32])).expect("finish");
        assert_eq!(bytes.len(), 128 + 3 * 20 + 32 + 98);
        let index = read_index(&bytes[..], &Limits::default()).expect("reads");
        assert_eq!(index.entries, entries);
        assert_eq!(index.header, h);
        assert_eq!(index.verified.signers.len(), 1);

        // The same index from a trailer computed beforehand.
        let encoded: Vec<u8> = entries.iter().flat_map(|e| e.emit()).collect();
        let mut w = IndexWriter::with_content_hash(Vec::new(), &h, content_hash(&h, &encoded))
            .expect("header");
        w.push_encoded(&encoded).expect("entries");
        assert_eq!(w.finish(Some(&[3; 32])).expect("finish").0, bytes);
    }
}
