//! `mkpatch index`: the block index of an image, in one parallel pass.
//!
//! Workers take 1 MiB windows in 64 KiB pieces, feed the BLAKE3 tree and
//! hash every block (weak key and strong hash); one writer takes the
//! windows' entries in order and spools them, since the header, which
//! carries the image's BLAKE3, can only be written when every window has
//! been hashed. Then header, entries and trailer go to the output.
//!
//! With [`IndexOptions::cache`], the entries of an image that has not
//! changed since they were computed come from the hash cache (module
//! `cache`), and nothing of the image is read.

use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anypatch_index::{BlockHashes, Header, IndexWriter, DEFAULT_BLOCK_SIZE};

use crate::cached::{CacheOptions, CacheUse};
use crate::exec::for_each_ordered;
use crate::hashtree::{self, WINDOW};
use crate::input::Input;
use crate::{Phase, ProduceError, Progress, SecretKey};

/// Bytes read at a time within a window.
const PIECE: u64 = 64 << 10;

/// How to make an index. Start from [`IndexOptions::default`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexOptions {
    /// Worker threads; 0 means one per core. The output does not depend on it.
    pub threads: usize,
    /// Block size: a power of two in 512..=1 MiB (default 4096).
    pub block_size: u32,
    /// Seed of the strong hash; `None`: a random one (or the cached index's),
    /// so that nobody who writes data into a later image can aim a hash
    /// collision at the index (spec/INDEX.md section 7.3).
    pub seed: Option<u64>,
    /// Sign the index with this Ed25519 key; `None`: unsigned.
    pub signing_key: Option<SecretKey>,
    /// Where to put the temporary spool file; `None` means `$TMPDIR`.
    pub spool_dir: Option<PathBuf>,
    /// Keep the entries in this hash cache, and take them from it when the
    /// image is unchanged since; `None`: no cache.
    pub cache: Option<CacheOptions>,
}

impl Default for IndexOptions {
    fn default() -> Self {
        Self {
            threads: 0,
            block_size: DEFAULT_BLOCK_SIZE,
            seed: None,
            signing_key: None,
            spool_dir: None,
            cache: None,
        }
    }
}

/// What an index holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSummary {
    pub old_len: u64,
    pub old_hash: [u8; 32],
    pub block_size: u32,
    pub blocks: u64,
    /// The strong hash's seed.
    pub seed: u64,
    /// Length of the index written.
    pub index_len: u64,
    /// What the hash cache did, and its warnings.
    pub cache: CacheUse,
}

/// Makes the index of the image at `old` and writes it to `out` (front to
/// back, not flushed; write to a temporary file and rename it on success).
pub fn make_index(
    old: &Path,
    out: &mut dyn Write,
    opts: &IndexOptions,
    progress: &dyn Fn(Progress),
) -> Result<IndexSummary, ProduceError> {
    // With a progress callback, `make` computes what the cache lacks: never `None`.
    make(old, out, opts, Some(progress)).map(|s| s.unwrap_or_else(|| unreachable!()))
}

/// [`make_index`] only when the hash cache in `opts` has the index of the
/// unchanged image: writes it (reading nothing of the image) and returns
/// `Some`; else writes nothing and returns `None`. For callers that can
/// skip work when the index is one they have already written.
pub fn make_index_from_cache(
    old: &Path,
    out: &mut dyn Write,
    opts: &IndexOptions,
) -> Result<Option<IndexSummary>, ProduceError> {
    make(old, out, opts, None)
}

/// [`make_index`]; without `progress`, only from the cache (see
/// [`make_index_from_cache`]).
fn make(
    old: &Path,
    out: &mut dyn Write,
    opts: &IndexOptions,
    progress: Option<&dyn Fn(Progress)>,
) -> Result<Option<IndexSummary>, ProduceError> {
    let bs = opts.block_size;
    if !bs.is_power_of_two()
        || !(anypatch_index::MIN_BLOCK_SIZE..=anypatch_index::MAX_BLOCK_SIZE).contains(&bs)
    {
        return Err(ProduceError::InvalidOption {
            name: "block_size",
            reason: format!("is {bs}; use a power of two in 512..=1048576"),
        });
    }
    let threads = if opts.threads > 0 {
        opts.threads
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    };
    let old = Input::open(old)?;
    let mut used = CacheUse::default();
    let (hit, slot) = match &opts.cache {
        Some(c) => super::cache::lookup(c, &old, bs, opts.seed, &mut used),
        None => (None, None),
    };
    let spool_err = |source| ProduceError::Spool { source };
    let header_for =
        |seed, old_hash| Header::new(old.len, old_hash, bs, seed, opts.signing_key.is_some());
    let index_err = |e| match e {
        anypatch_index::IndexError::Io(source) => ProduceError::Write { source },
        source => ProduceError::Index {
            path: PathBuf::from("(the index being written)"),
            source,
        },
    };
    let mut counted = Counted { out, written: 0 };
    let signing_seed = opts.signing_key.as_ref().map(SecretKey::seed);
    let (header, keep) = match (hit, progress) {
        // From the cache: written as it is, nothing of the image read and
        // nothing hashed again.
        (Some(hit), _) => {
            let header = header_for(hit.seed, hit.old_hash);
            let mut writer =
                IndexWriter::with_content_hash(&mut counted, &header, hit.content_hash(&header))
                    .map_err(index_err)?;
            writer.push_encoded(hit.entries()).map_err(index_err)?;
            writer.finish(signing_seed).map_err(index_err)?;
            (header, None)
        }
        (None, None) => return Ok(None),
        (None, Some(progress)) => {
            let seed = match opts.seed {
                Some(seed) => seed,
                None => random_seed()?,
            };
            let (old_hash, mut spool) = hash_image(&old, bs, seed, threads, opts, progress)?;
            let header = header_for(seed, old_hash);
            let mut writer = IndexWriter::new(&mut counted, &header).map_err(index_err)?;
            // What is written is kept for the cache, when there is one to fill.
            let mut keep = slot.is_some().then(Vec::new);
            let mut batch = vec![0u8; 4096 * anypatch_index::ENTRY_LEN];
            let mut left = header.block_count();
            while left > 0 {
                let n = left.min(4096) as usize;
                let bytes = &mut batch[..n * anypatch_index::ENTRY_LEN];
                spool.read_exact(bytes).map_err(spool_err)?;
                writer.push_encoded(bytes).map_err(index_err)?;
                if let Some(keep) = keep.as_mut() {
                    keep.extend_from_slice(bytes);
                }
                left -= n as u64;
            }
            let (_, sum) = writer.finish(signing_seed).map_err(index_err)?;
            (header, keep.map(|entries| (entries, sum)))
        }
    };
    if let (Some(slot), Some((entries, sum))) = (slot, keep) {
        super::cache::store(slot, &old, &header, &entries, sum, &mut used);
    }
    Ok(Some(IndexSummary {
        old_len: old.len,
        old_hash: header.old_hash,
        block_size: bs,
        blocks: old.len.div_ceil(u64::from(bs)),
        seed: header.seed,
        index_len: counted.written,
        cache: used,
    }))
}

/// Hashes the whole image on `threads` workers: its BLAKE3, and its entries
/// spooled in block order to a temporary file, rewound.
fn hash_image(
    old: &Input,
    bs: u32,
    seed: u64,
    threads: usize,
    opts: &IndexOptions,
    progress: &dyn Fn(Progress),
) -> Result<([u8; 32], std::fs::File), ProduceError> {
    let spool_err = |source| ProduceError::Spool { source };
    let spool = crate::spool_file(opts.spool_dir.as_deref())?;
    let mut spooled = BufWriter::with_capacity(1 << 20, spool);
    let windows = old.len.div_ceil(WINDOW) as usize;
    let mut values = Vec::with_capacity(windows);
    for_each_ordered(
        threads,
        windows,
        2 * threads,
        || Ok(Vec::new()),
        |buf: &mut Vec<u8>, i| hash_window(old, bs, seed, i as u64, buf),
        |i, (value, entries): (_, Vec<u8>)| {
            values.push(value);
            spooled.write_all(&entries).map_err(spool_err)?;
            progress(Progress {
                phase: Phase::Scan,
                done: ((i as u64 + 1) * WINDOW).min(old.len),
                total: old.len,
            });
            Ok(())
        },
    )?;
    let old_hash = hashtree::root(old.len, &values);
    let mut spool = spooled
        .into_inner()
        .map_err(|e| spool_err(e.into_error()))?;
    spool.seek(SeekFrom::Start(0)).map_err(spool_err)?;
    Ok((old_hash, spool))
}

/// A seed from the operating system's random source.
fn random_seed() -> Result<u64, ProduceError> {
    let mut seed = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|source| ProduceError::Open {
            path: PathBuf::from("/dev/urandom"),
            source,
        })?;
    Ok(u64::from_le_bytes(seed))
}

/// Hashes window `index`: its BLAKE3 tree value and its blocks' entries.
fn hash_window(
    old: &Input,
    bs: u32,
    seed: u64,
    index: u64,
    buf: &mut Vec<u8>,
) -> Result<(blake3::hazmat::ChainingValue, Vec<u8>), ProduceError> {
    let start = index * WINDOW;
    let end = (start + WINDOW).min(old.len);
    let piece = PIECE.max(u64::from(bs));
    let mut hasher = hashtree::window_hasher(old.len, index);
    let blocks = (end - start).div_ceil(u64::from(bs)) as usize;
    let mut entries = Vec::with_capacity(blocks * anypatch_index::ENTRY_LEN);
    let mut at = start;
    while at < end {
        let n = old.read_clamped(buf, at, piece.min(end - at) as usize)?;
        let bytes = &buf[..n];
        hasher.update(bytes);
        for b in bytes.chunks(bs as usize) {
            entries.extend_from_slice(&BlockHashes::of(b, seed).emit());
        }
        at += n as u64;
    }
    Ok((hashtree::window_value(old.len, &hasher), entries))
}

/// Counts the bytes written through it.
struct Counted<'a> {
    out: &'a mut dyn Write,
    written: u64,
}

impl Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
