//! Phase 5b: write the patch front to back: header, then each page followed
//! by its segments' payloads (copied from the spool), then the trailer.
//!
//! Pages are compact (format 1.2): each is one zstd frame holding its
//! extents and the inline ops of its segments, read back from the spool.
//! Each page names the next by length and hash, so pages are built back to
//! front first and kept, compressed, until they are written.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

use anypatch_format::{
    Codec, Extent, Hash, Header, Page, PageRef, SignatureBlock, Trailer, FEATURE_COMPACT_PAGES,
    FLAG_IN_PLACE_SAFE, MAX_PAGE_LEN, TRAILER_LEN,
};

use crate::encode::Encoded;
use crate::plan::{Item, Plan};
use crate::{Phase, ProduceError, Progress, SecretKey, Summary, PRODUCER};

/// Most extents per page: well under `MAX_PAGE_EXTENTS`.
pub(crate) const PAGE_EXTENTS: usize = 4096;
/// Most decoded bytes per page: `MAX_PAGE_LEN` less room for the frame's
/// overhead, so that even an incompressible page's frame fits the limit.
const PAGE_CONTENT_BUDGET: usize = MAX_PAGE_LEN as usize - (4 << 10);
/// Most bytes an extent's compact encoding takes besides inline ops, and
/// what the count and the next page's reference take.
const EXTENT_MAX_LEN: usize = 1 + 5 + 1 + 5 + 5 + anypatch_format::SHORT_HASH_LEN + 10;
const PAGE_OVERHEAD: usize = 5 + 1 + 5 + 32;

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
    page_level: i32,
    signer: Option<&SecretKey>,
    out: &mut dyn Write,
    progress: &dyn Fn(Progress),
) -> Result<Summary, ProduceError> {
    let Encoded {
        entries,
        spool,
        in_place_safe,
        uses_prefix,
        packs_ops,
        uses_history,
        raw: _,
    } = encoded;
    let required_features = FEATURE_COMPACT_PAGES
        | if uses_prefix {
            anypatch_format::FEATURE_OLD_PREFIX
        } else {
            0
        }
        | if uses_history {
            anypatch_format::FEATURE_DATA_HISTORY
        } else {
            0
        }
        | if packs_ops {
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
        cache: crate::CacheUse::default(),
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

    // Where each segment's ops block starts in the spool (its data follows).
    let mut spooled = Vec::with_capacity(entries.len());
    let mut at = 0u64;
    for e in &entries {
        spooled.push(at);
        at += u64::from(e.ops_len) + u64::from(e.data_len);
    }
    let chunks = page_chunks(&extents);
    // The index of each page's first segment.
    let first_seg: Vec<usize> = chunks
        .iter()
        .scan(0, |seen, c| {
            let first = *seen;
            *seen += extents[c.clone()]
                .iter()
                .filter(|e| matches!(e, Extent::Data(_)))
                .count();
            Some(first)
        })
        .collect();
    let mut pages: Vec<Vec<u8>> = vec![Vec::new(); chunks.len()];
    let mut next = None;
    let mut zstd = page_compressor(page_level)?;
    for k in (0..chunks.len()).rev() {
        let mut pool = Vec::new();
        let mut page = Page {
            extents: extents[chunks[k].clone()].to_vec(),
            next,
        };
        let mut seg = first_seg[k];
        for e in &mut page.extents {
            if let Extent::Data(entry) = e {
                if entry.inline_ops.is_some() {
                    entry.inline_ops = Some(pool.len() as u32); // under PAGE_CONTENT_BUDGET
                    let start = pool.len();
                    pool.resize(start + entry.ops_len as usize, 0);
                    spool
                        .read_exact_at(&mut pool[start..], spooled[seg])
                        .map_err(|source| ProduceError::Spool { source })?;
                }
                seg += 1;
            }
        }
        let content = page.emit_compact(&pool);
        let frame = zstd
            .compress(&content)
            .map_err(|source| ProduceError::Compress { source })?;
        assert!(
            content.len() <= MAX_PAGE_LEN as usize && frame.len() <= MAX_PAGE_LEN as usize,
            "page_chunks keeps every page within MAX_PAGE_LEN"
        );
        next = Some(PageRef {
            len: frame.len() as u32,
            hash: *blake3::hash(&frame).as_bytes(),
        });
        pages[k] = frame;
    }
    let first_page = next.expect("there is at least one page");

    let pages_len: u64 = pages.iter().map(|p| p.len() as u64).sum();
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
    let sig_len = SignatureBlock::encoded_len_for(usize::from(signer.is_some()));
    let header_bytes =
        header.settle_patch_len(required_features, sig_len as u32, pages_len + payloads_len);
    summary.patch_len = header.patch_len;

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
    let mut seg = 0;
    for (k, page) in pages.iter().enumerate() {
        w.put(page)?;
        for extent in &extents[chunks[k].clone()] {
            if let Extent::Data(entry) = extent {
                // The payload: the spooled segment without its inline ops.
                let from = spooled[seg] + u64::from(entry.ops_len) - entry.payload_ops_len();
                copy_payload(&spool, from, &mut w, entry.payload_len(), &mut buf)?;
                seg += 1;
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

/// Splits the extents into pages: at most [`PAGE_EXTENTS`] each, and at
/// most [`PAGE_CONTENT_BUDGET`] decoded bytes with their inline ops. An
/// empty new file still has one (empty) page.
fn page_chunks(extents: &[Extent]) -> Vec<std::ops::Range<usize>> {
    let mut chunks = Vec::new();
    let (mut start, mut size) = (0, PAGE_OVERHEAD);
    for (i, e) in extents.iter().enumerate() {
        let len = EXTENT_MAX_LEN
            + match e {
                Extent::Data(s) if s.inline_ops.is_some() => s.ops_len as usize,
                _ => 0,
            };
        if i > start && (i - start == PAGE_EXTENTS || size + len > PAGE_CONTENT_BUDGET) {
            chunks.push(start..i);
            (start, size) = (i, PAGE_OVERHEAD);
        }
        size += len;
    }
    chunks.push(start..extents.len());
    chunks
}

/// A zstd context for pages: one frame with its content size, no checksum
/// (the page hash covers it) and no dictionary id.
fn page_compressor(level: i32) -> Result<zstd::bulk::Compressor<'static>, ProduceError> {
    let err = |source| ProduceError::Compress { source };
    let mut z = zstd::bulk::Compressor::new(level).map_err(err)?;
    z.include_contentsize(true).map_err(err)?;
    z.include_checksum(false).map_err(err)?;
    z.include_dictid(false).map_err(err)?;
    Ok(z)
}

fn copy_payload(
    spool: &File,
    mut from: u64,
    w: &mut HashingWriter<'_>,
    mut len: u64,
    buf: &mut [u8],
) -> Result<(), ProduceError> {
    while len > 0 {
        let n = len.min(buf.len() as u64) as usize;
        spool
            .read_exact_at(&mut buf[..n], from)
            .map_err(|source| ProduceError::Spool { source })?;
        w.put(&buf[..n])?;
        from += n as u64;
        len -= n as u64;
    }
    Ok(())
}
