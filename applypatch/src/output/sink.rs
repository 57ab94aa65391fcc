//! The sink that writes a new file sparse.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::Sink;

/// New files are written in blocks of this size, aligned to the file's
/// start; a block that is all zeros is not written and stays a hole.
pub(super) const HOLE_BLOCK: u64 = 0x1000;
/// Zeros written per call where a device cannot zero a range itself.
const ZERO_CHUNK: usize = 0x10_0000;

/// Writes a new file with positional writes. The file starts empty and is
/// sized at the end, so zero runs, and every aligned block of
/// [`HOLE_BLOCK`] bytes that is all zeros, are left as holes.
#[derive(Debug)]
pub struct NewFileSink<'a> {
    file: &'a File,
    /// What error messages call the file.
    name: String,
    /// Everything before this offset has been written or left as a hole.
    end: u64,
    /// Bytes actually written.
    written: u64,
}

impl<'a> NewFileSink<'a> {
    /// A sink over `file`, which must be empty.
    pub fn new(file: &'a File) -> Self {
        Self {
            file,
            name: "the new file".into(),
            end: 0,
            written: 0,
        }
    }

    /// A sink over `file` that holds the new image's first `at` bytes
    /// already, and nothing after them (a resumed apply).
    pub fn resumed(file: &'a File, at: u64) -> Self {
        Self {
            end: at,
            ..Self::new(file)
        }
    }

    /// Calls the file `name` in error messages ("the temporary file X").
    pub fn named(mut self, name: String) -> Self {
        self.name = name;
        self
    }

    /// Bytes written so far: the new image's bytes less the holes.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn put(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)?;
        self.written += data.len() as u64;
        Ok(())
    }
}

impl Sink for NewFileSink<'_> {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset + data.len() as u64;
        if offset < self.end {
            // Rewriting bytes already placed: a skipped zero would leave
            // the earlier bytes, so write everything.
            self.put(offset, data)?;
            self.end = self.end.max(end);
            return Ok(());
        }
        // Past `self.end` the file reads as zeros, so only blocks (aligned
        // to the file's start) with a non-zero byte need writing.
        let mut run: Option<usize> = None;
        let mut at = 0usize;
        while at < data.len() {
            let pos = offset + at as u64;
            let n = ((HOLE_BLOCK - pos % HOLE_BLOCK) as usize).min(data.len() - at);
            if is_zero(&data[at..at + n]) {
                if let Some(start) = run.take() {
                    self.put(offset + start as u64, &data[start..at])?;
                }
            } else if run.is_none() {
                run = Some(at);
            }
            at += n;
        }
        if let Some(start) = run {
            self.put(offset + start as u64, &data[start..])?;
        }
        self.end = end;
        Ok(())
    }

    fn zero(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if offset < self.end {
            write_zeros(self.file, offset, len)?;
            self.written += len;
        }
        self.end = self.end.max(offset + len);
        Ok(())
    }
}

/// Writes `len` zero bytes at `offset`, in chunks.
pub(super) fn write_zeros(file: &File, offset: u64, len: u64) -> io::Result<()> {
    // Made at run time: a static array would add its whole size to the
    // static initramfs binary (it did: 1 MiB, over build-static's limit).
    let zeros = vec![0u8; (len.min(ZERO_CHUNK as u64)) as usize];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(ZERO_CHUNK as u64) as usize;
        file.write_all_at(&zeros[..n], offset + at)?;
        at += n as u64;
    }
    Ok(())
}

fn is_zero(data: &[u8]) -> bool {
    // Fixed-size chunks OR-ed together vectorize; an early exit per byte does not.
    let mut chunks = data.chunks_exact(64);
    let body = chunks
        .by_ref()
        .all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0);
    body && chunks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_file_sink_leaves_zero_blocks_as_holes() {
        let f = tempfile::tempfile().expect("tempfile");
        let mut s = NewFileSink::new(&f);
        let mut data = vec![0u8; 5 * HOLE_BLOCK as usize];
        data[10] = 1; // block 0 (offset 100 + 10)
        data[3 * HOLE_BLOCK as usize] = 2; // block 3
        s.write_at(100, &data).expect("write");
        s.zero(100 + data.len() as u64, 8192).expect("zero");
        f.set_len(100 + data.len() as u64 + 8192).expect("len");
        // Block 0 from 100 to 4096, and block 3 (data offset 3*4096 lies in file block 3).
        assert_eq!(s.written(), (HOLE_BLOCK - 100) + HOLE_BLOCK);
        let mut back = vec![0u8; data.len()];
        f.read_exact_at(&mut back, 100).expect("read");
        assert!(back == data);
        // A rewrite of placed bytes writes zeros too.
        s.write_at(100, &[0u8; 16]).expect("rewrite");
        let mut b = [1u8; 16];
        f.read_exact_at(&mut b, 100).expect("read");
        assert_eq!(b, [0u8; 16]);
    }

    #[test]
    fn is_zero_sees_every_byte() {
        for len in [0, 1, 63, 64, 65, 200] {
            let mut v = vec![0u8; len];
            assert!(is_zero(&v));
            for i in 0..len {
                v[i] = 1;
                assert!(!is_zero(&v), "len {len} byte {i}");
                v[i] = 0;
            }
        }
    }
}
