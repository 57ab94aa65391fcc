//! The `index` fuzz target's check, shared with
//! `tests/tests/index_fuzz_regressions.rs`, which replays every crash file
//! and the seed corpus (`spec/index-vectors/*/index.apidx`) through it.
//!
//! [`check_index`] takes arbitrary bytes. The first byte picks what they
//! are, the rest is the input:
//! - even: an index file, read as it is and re-sealed (its header hash and
//!   trailer made right, so that the fuzzer gets past them): the reader
//!   never panics, never keeps more entries than the file holds, and what
//!   it accepts writes back to the same bytes. An index that is accepted
//!   and small is then given to `make_patch_from_index` with a new file
//!   made from the input: no panic, and a patch that names the index's old
//!   image and the new file's hash.
//! - odd: an old and a new file made by structured edits
//!   ([`hostile::pair_from`]), the old one indexed and a patch made from
//!   its index: the engine and the reference applier give the new file.

use std::fs;
use std::io::Read;

use anypatch_format::{parse_header_section, Preamble, PreambleRepr, HASH_LEN, PREAMBLE_LEN};
use anypatch_index::{
    read_index, Header, IndexReader, IndexWriter, Limits, ENTRY_LEN, HEADER_LEN, MAGIC, TRAILER_LEN,
};
use anypatch_producer::{make_index, make_patch_from_index, IndexOptions, Options};

use crate::hostile;

/// Most blocks the check lets an index declare: a fuzzer's file is small.
const MAX_BLOCKS: u64 = 1 << 16;
/// Largest image an accepted index may describe and still go through the
/// producer (its new file is made to about that size).
const PRODUCE_MAX_LEN: u64 = 1 << 20;

/// See the module docs.
pub fn check_index(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        check_reader(rest);
        let sealed = reseal(rest);
        if sealed != rest {
            check_reader(&sealed);
        }
    } else {
        check_round_trip(rest);
    }
}

/// Reads `bytes` as an index, whole and fed a few bytes at a time.
fn check_reader(bytes: &[u8]) {
    let limits = Limits::default().with_max_blocks(MAX_BLOCKS);
    let whole = read_index(bytes, &limits);
    let dribbled = read_index(Dribble { bytes, step: 7 }, &limits);
    assert_eq!(
        whole.as_ref().map_err(ToString::to_string),
        dribbled.as_ref().map_err(ToString::to_string),
        "the reader's verdict depends on how the file is fed"
    );
    // A streaming reader that stops early keeps only what it read.
    if let Ok(mut r) = IndexReader::new(bytes, &limits) {
        let mut entries = Vec::new();
        while let Ok(n) = r.read_entries(&mut entries) {
            if n == 0 {
                break;
            }
            assert!(
                entries.len() * ENTRY_LEN <= bytes.len(),
                "the reader keeps more entries than the file holds"
            );
        }
    }
    let Ok(index) = whole else {
        return;
    };
    let h = &index.header;
    assert_eq!(index.entries.len() as u64, h.block_count());
    assert_eq!(
        Header::parse(&h.emit()).ok().as_ref(),
        Some(h),
        "an accepted header does not read back the same"
    );
    // What was accepted writes back to the same bytes (the signature block,
    // which needs the key, and the reserved field, which readers ignore,
    // aside).
    let mut w = IndexWriter::new(Vec::new(), &h.clone()).expect("writing to memory");
    w.push(&index.entries).expect("as many entries as declared");
    let written = if h.is_signed() {
        let (mut out, _) = w.finish(Some(&[1; 32])).expect("finish");
        out.truncate(HEADER_LEN + index.entries.len() * ENTRY_LEN + TRAILER_LEN);
        out
    } else {
        w.finish(None).expect("finish").0
    };
    if bytes[0x0C..0x10] == [0; 4] {
        assert!(
            bytes.starts_with(&written),
            "an accepted index does not write back to its own bytes"
        );
    }
    if h.old_len <= PRODUCE_MAX_LEN {
        check_produce(bytes, h);
    }
}

/// `make_patch_from_index` with an accepted index: never a panic; a patch
/// names the index's image as its base.
fn check_produce(index: &[u8], h: &Header) {
    let dir = tempdir();
    let (ip, np) = (dir.path().join("index"), dir.path().join("new"));
    fs::write(&ip, index).expect("write index");
    // A new file of about the image's size, from the index's own bytes, so
    // that some of its blocks may be the ones the entries describe.
    let len = (h.old_len as usize).min(index.len() * 8);
    let new: Vec<u8> = index.iter().copied().cycle().take(len).collect();
    fs::write(&np, &new).expect("write new");
    let opts = Options {
        threads: 2,
        spool_dir: Some(dir.path().to_path_buf()),
        ..Options::default()
    };
    let mut patch = Vec::new();
    if make_patch_from_index(&ip, &np, &[], &mut patch, &opts, &|_| {}).is_err() {
        return;
    }
    let header = patch_header(&patch)
        .unwrap_or_else(|e| panic!("a patch made from an index does not parse: {e}"));
    assert_eq!(header.old_len, h.old_len, "the patch's old length");
    assert_eq!(header.old_hash, h.old_hash, "the patch's old hash");
    assert_eq!(header.new_len, new.len() as u64, "the patch's new length");
    assert_eq!(
        header.new_hash,
        *blake3::hash(&new).as_bytes(),
        "the patch's new hash"
    );
}

/// The header of a patch.
fn patch_header(patch: &[u8]) -> Result<anypatch_format::Header, anypatch_format::FormatError> {
    let pre = PreambleRepr::parse(&Preamble::new_checked(patch)?)?;
    let end = (PREAMBLE_LEN + pre.header_len as usize + HASH_LEN).min(patch.len());
    Ok(parse_header_section(&patch[..end])?.1)
}

/// A pair from the input, the old file's index, a patch from it: applied
/// to the old file it gives the new one.
fn check_round_trip(data: &[u8]) {
    let (old, new, opts) = hostile::pair_from(data);
    let block_size = [4096, 512, 1024, 2048][data.len() % 4];
    let dir = tempdir();
    let (op, np, ip) = (
        dir.path().join("old"),
        dir.path().join("new"),
        dir.path().join("index"),
    );
    fs::write(&op, &old).expect("write old");
    fs::write(&np, &new).expect("write new");
    let mut index = Vec::new();
    let iopts = IndexOptions {
        threads: opts.threads,
        block_size,
        seed: Some(u64::from(data.first().copied().unwrap_or(0))),
        spool_dir: Some(dir.path().to_path_buf()),
        ..IndexOptions::default()
    };
    make_index(&op, &mut index, &iopts, &|_| {}).expect("indexing a file succeeds");
    fs::write(&ip, &index).expect("write index");
    let opts = Options {
        verify: false,
        spool_dir: Some(dir.path().to_path_buf()),
        ..opts
    };
    let mut patch = Vec::new();
    make_patch_from_index(&ip, &np, &[], &mut patch, &opts, &|_| {})
        .unwrap_or_else(|e| panic!("a patch from a good index fails: {e}"));
    hostile::applies_everywhere("patch from an index", &old, &patch, &new);
}

/// `bytes` with the header hash and the trailer made right for what they
/// hold, where the file is long enough to have them.
fn reseal(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if out.len() < HEADER_LEN || out[..8] != MAGIC {
        return out;
    }
    let hash = blake3::hash(&out[..0x60]);
    out[0x60..0x80].copy_from_slice(hash.as_bytes());
    let count = u64::from_le_bytes(out[0x58..0x60].try_into().expect("8 bytes"));
    let body = count
        .checked_mul(ENTRY_LEN as u64)
        .and_then(|n| n.checked_add(HEADER_LEN as u64))
        .and_then(|n| usize::try_from(n).ok());
    if let Some(body) = body.filter(|&b| b + TRAILER_LEN <= out.len()) {
        let sum = blake3::hash(&out[..body]);
        out[body..body + TRAILER_LEN].copy_from_slice(sum.as_bytes());
    }
    out
}

/// A reader that hands out at most `step` bytes per read.
struct Dribble<'a> {
    bytes: &'a [u8],
    step: usize,
}

impl Read for Dribble<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.step).min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

/// A temporary directory, in `/dev/shm` where there is one.
fn tempdir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("tempdir")
}
