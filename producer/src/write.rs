//! Phase 5b: write the patch front to back: header, then each page followed
//! by its segments' payloads (copied from the spool), then the trailer.
//!
//! Each page names the next by length and hash, so page refs are computed
//! back to front first; pages are then encoded again while writing, which
//! keeps only the extent list in memory, not the encoded pages.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

use anypatch_format::{
    Codec, Extent, Hash, Header, Page, PageRef, SignatureBlock, Trailer, FLAG_IN_PLACE_SAFE,
    TRAILER_LEN,
};

use crate::encode::Encoded;
use crate::plan::{Item, Plan};
use crate::{Phase, ProduceError, Progress, SecretKey, Summary, PRODUCER};

/// Extents per page: well under `MAX_PAGE_EXTENTS`, and 4096 of the largest
/// extent (a data entry, under 50 bytes) stay under `MAX_PAGE_LEN`.
pub(crate) const PAGE_EXTENTS: usize = 4096;

/// What the header says about the two files.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Identity {
    pub old_len: u64,
    pub new_len: u64,
    pub old_hash: Hash,
    pub new_hash: Hash,
    pub block_size: u32,
}

/// Hashes and counts everything written, for the trailer.
struct HashingWriter<'a> {
    inner: &'a mut dyn Write,
    hasher: blake3::Hasher,
    written: u64,
}

impl HashingWriter<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), ProduceError> {
        self.inner
            .write_all(bytes)
            .map_err(|source| ProduceError::Write { source })?;
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }
}

/// Writes the patch for `plan` to `out` and returns its summary.
pub(crate) fn write_patch(
    plan: &Plan,
    encoded: Encoded,
    id: Identity,
    signer: Option<&SecretKey>,
    out: &mut dyn Write,
    progress: &dyn Fn(Progress),
) -> Result<Summary, ProduceError> {
    let Encoded {
        entries,
        mut spool,
        in_place_safe,
        uses_prefix,
        packs_ops,
    } = encoded;
    let required_features = if uses_prefix {
        anypatch_format::FEATURE_OLD_PREFIX
    } else {
        0
    } | if packs_ops {
        anypatch_format::FEATURE_PACKED_OPS
    } else {
        0
    };
    let mut summary = Summary {
        old_len: id.old_len,
        new_len: id.new_len,
        old_hash: id.old_hash,
        new_hash: id.new_hash,
        patch_len: 0,
        extents: plan.items.len() as u64,
        segments: entries.len() as u64,
        copied_bytes: 0,
        moved_bytes: 0,
        zero_bytes: 0,
        changed_bytes: 0,
        in_place_safe: true,
    };
    let extents: Vec<Extent> = plan
        .items
        .iter()
        .map(|item| match *item {
            Item::Copy { len, delta } => {
                summary.in_place_safe &= delta >= 0;
                if delta == 0 {
                    summary.copied_bytes += len;
                } else {
                    summary.moved_bytes += len;
                }
                Extent::Copy { len, delta }
            }
            Item::Zero { len } => {
                summary.zero_bytes += len;
                Extent::Zero { len }
            }
            Item::Segment(k) => {
                summary.changed_bytes += u64::from(entries[k].new_len);
                Extent::Data(entries[k])
            }
        })
        .collect();
    summary.in_place_safe &= in_place_safe;

    // An empty new file still has one (empty) page.
    let chunks: Vec<&[Extent]> = if extents.is_empty() {
        vec![&[]]
    } else {
        extents.chunks(PAGE_EXTENTS).collect()
    };
    let page = |k: usize, next: Option<PageRef>| Page {
        extents: chunks[k].to_vec(),
        next,
    };
    let mut refs = vec![None; chunks.len() + 1];
    for k in (0..chunks.len()).rev() {
        let bytes = page(k, refs[k + 1]).emit();
        refs[k] = Some(PageRef {
            len: u32::try_from(bytes.len()).expect("a page of 4096 extents is under 256 KiB"),
            hash: *blake3::hash(&bytes).as_bytes(),
        });
    }
    let first_page = refs[0].expect("there is at least one page");

    let pages_len: u64 = refs.iter().flatten().map(|r| u64::from(r.len)).sum();
    let payloads_len: u64 = entries.iter().map(|e| e.payload_len()).sum();
    let mut header = Header {
        old_len: id.old_len,
        new_len: id.new_len,
        old_hash: id.old_hash,
        new_hash: id.new_hash,
        block_size: id.block_size,
        segment_max: entries.iter().map(|e| e.new_len).max().unwrap_or(0),
        codec: Codec::Zstd as u8,
        flags: if summary.in_place_safe {
            FLAG_IN_PLACE_SAFE
        } else {
            0
        },
        patch_len: 0,
        extent_count: extents.len() as u64,
        segment_count: entries.len() as u64,
        first_page,
        producer: PRODUCER.into(),
    };
    // patch_len is a varint inside the header it measures: iterate to the
    // fixed point (two or three rounds; the length only grows).
    let sig_len = SignatureBlock::encoded_len_for(usize::from(signer.is_some()));
    let header_bytes = loop {
        let bytes = header.emit(required_features, sig_len as u32);
        let total = (bytes.len() + sig_len) as u64 + pages_len + payloads_len + TRAILER_LEN as u64;
        if total == header.patch_len {
            break bytes;
        }
        header.patch_len = total;
    };
    summary.patch_len = header.patch_len;

    spool
        .seek(SeekFrom::Start(0))
        .map_err(|source| ProduceError::Spool { source })?;
    let mut w = HashingWriter {
        inner: out,
        hasher: blake3::Hasher::new(),
        written: 0,
    };
    w.put(&header_bytes)?;
    if let Some(key) = signer {
        let block = key.sign_header_section(&header_bytes).emit();
        debug_assert_eq!(block.len(), sig_len);
        w.put(&block)?;
    }
    let mut buf = vec![0u8; 1 << 20];
    for k in 0..chunks.len() {
        w.put(&page(k, refs[k + 1]).emit())?;
        for extent in chunks[k] {
            if let Extent::Data(entry) = extent {
                copy_payload(&mut spool, &mut w, entry.payload_len(), &mut buf)?;
            }
        }
        progress(Progress {
            phase: Phase::Write,
            done: w.written,
            total: header.patch_len,
        });
    }
    let mut trailer = [0u8; TRAILER_LEN];
    Trailer {
        patch_hash: *w.hasher.finalize().as_bytes(),
    }
    .emit(&mut trailer);
    w.put(&trailer)?;
    debug_assert_eq!(w.written, header.patch_len);
    Ok(summary)
}

fn copy_payload(
    spool: &mut File,
    w: &mut HashingWriter<'_>,
    mut len: u64,
    buf: &mut [u8],
) -> Result<(), ProduceError> {
    while len > 0 {
        let n = len.min(buf.len() as u64) as usize;
        spool
            .read_exact(&mut buf[..n])
            .map_err(|source| ProduceError::Spool { source })?;
        w.put(&buf[..n])?;
        len -= n as u64;
    }
    Ok(())
}
